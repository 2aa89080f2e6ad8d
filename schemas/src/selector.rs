//! Kubernetes label selectors: parsing the string form and matching labels against it.
//!
//! The sandbox uses this to answer `?labelSelector=` on lists, and the collector to check a
//! scope's selectors. The grammar is Kubernetes' own: requirements separated by commas, all of
//! which must hold (AND):
//!
//! | form | holds when |
//! |---|---|
//! | `key`, `!key` | the label exists / does not exist |
//! | `key=value`, `key==value`, `key!=value` | equality / inequality (`!=` also holds when the label is absent) |
//! | `key in (a,b)`, `key notin (a,b)` | set membership (`notin` also holds when the label is absent) |

use std::collections::BTreeMap;
use std::fmt;

/// A parsed label selector: every requirement must hold. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` or `key==value`.
    Equals(String, String),
    /// `key!=value`.
    NotEquals(String, String),
    /// `key in (v1,v2)`.
    In(String, Vec<String>),
    /// `key notin (v1,v2)`.
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

/// A label selector that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {}: {reason}", crate::id::quote(selector))]
pub struct SelectorError {
    /// The selector as given.
    pub selector: String,
    /// What is wrong with it.
    pub reason: String,
}

impl LabelSelector {
    /// Parses the string form, e.g. `app=web,tier in (front,back),!canary`.
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let error = |reason: String| SelectorError {
            selector: selector.to_owned(),
            reason,
        };
        let mut requirements = Vec::new();
        for part in split_top_level(selector).map_err(error)? {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(part).map_err(error)?);
        }
        Ok(Self { requirements })
    }

    /// The requirements, all of which must hold.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether the selector has no requirements (and so matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether the labels of a Kubernetes object (as JSON, `metadata.labels`) satisfy the selector.
    pub fn matches_object(&self, object: &serde_json::Value) -> bool {
        let labels: BTreeMap<String, String> = object
            .pointer("/metadata/labels")
            .and_then(|l| l.as_object())
            .map(|l| {
                l.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        self.matches(&labels)
    }
}

impl Requirement {
    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Self::Equals(k, v) => labels.get(k) == Some(v),
            Self::NotEquals(k, v) => labels.get(k) != Some(v),
            Self::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Self::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Self::Exists(k) => labels.contains_key(k),
            Self::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::Equals(k, v) => write!(f, "{k}={v}")?,
                Requirement::NotEquals(k, v) => write!(f, "{k}!={v}")?,
                Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(","))?,
                Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(","))?,
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::DoesNotExist(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(selector: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0u32;
    let mut start = 0;
    for (i, c) in selector.char_indices() {
        match c {
            '(' if depth > 0 => return Err("nested parentheses".into()),
            '(' => depth += 1,
            ')' if depth == 0 => return Err("unbalanced ')'".into()),
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unclosed '('".into());
    }
    parts.push(&selector[start..]);
    Ok(parts)
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key_checked(key)?));
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(key_checked(k)?, value_checked(v)?));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::Equals(key_checked(k)?, value_checked(v)?));
    }
    if let Some(open) = part.find('(') {
        let head = part[..open].trim();
        let close = part
            .rfind(')')
            .filter(|&c| c > open && part[c + 1..].trim().is_empty())
            .ok_or_else(|| format!("{part:?}: expected a value list ending in ')'"))?;
        let values = part[open + 1..close]
            .split(',')
            .map(value_checked)
            .collect::<Result<Vec<_>, _>>()?;
        let (key, op) = head
            .rsplit_once(char::is_whitespace)
            .ok_or_else(|| format!("{part:?}: expected 'key in (...)' or 'key notin (...)'"))?;
        let key = key_checked(key)?;
        return match op {
            "in" => Ok(Requirement::In(key, values)),
            "notin" => Ok(Requirement::NotIn(key, values)),
            other => Err(format!("{part:?}: unknown operator {other:?}")),
        };
    }
    Ok(Requirement::Exists(key_checked(part)?))
}

/// The longest label name (the part after the optional `prefix/`), and the longest value.
pub const MAX_LABEL_NAME_LEN: usize = 63;
/// The longest label-key prefix (a DNS subdomain).
pub const MAX_LABEL_PREFIX_LEN: usize = 253;

/// A label name or value: at most 63 characters of ASCII letters, digits, `-`, `_` and `.`,
/// starting and ending with a letter or digit (a value may also be empty).
fn is_label_name(name: &str) -> bool {
    name.len() <= MAX_LABEL_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A DNS subdomain: at most 253 characters, dot-separated [DNS labels](is_dns_label).
fn is_dns_subdomain(prefix: &str) -> bool {
    prefix.len() <= MAX_LABEL_PREFIX_LEN && prefix.split('.').all(is_dns_label)
}

/// A DNS label (RFC 1123), the form of a Kubernetes namespace name: at most 63 lowercase
/// letters, digits and `-`, starting and ending with a letter or digit.
pub fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

fn key_checked(key: &str) -> Result<String, String> {
    let key = key.trim();
    let shown = crate::id::quote(key);
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && !is_dns_subdomain(prefix)
    {
        return Err(format!(
            "{shown} is not a valid label key: its prefix must be a DNS subdomain (at most \
             {MAX_LABEL_PREFIX_LEN} characters of lowercase letters, digits, '-' and '.')"
        ));
    }
    if !is_label_name(name) {
        return Err(format!(
            "{shown} is not a valid label key: a key is an optional DNS-subdomain prefix (at most \
             {MAX_LABEL_PREFIX_LEN} characters) and '/', then a name of at most \
             {MAX_LABEL_NAME_LEN} ASCII letters, digits, '-', '_' and '.', starting and ending \
             with a letter or digit"
        ));
    }
    Ok(key.to_owned())
}

fn value_checked(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() || is_label_name(value) {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{} is not a valid label value: a value is empty or at most {MAX_LABEL_NAME_LEN} \
             ASCII letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
            crate::id::quote(value)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn every_operator_matches_like_kubernetes() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let db = labels(&[("app", "db")]);
        let cases = [
            ("", true, true),
            ("app=web", true, false),
            ("app==web", true, false),
            ("app!=web", false, true),
            ("tier!=front", false, true),
            ("app in (web, cache)", true, false),
            ("app notin (web)", false, true),
            ("tier notin (front)", false, true),
            ("tier", true, false),
            ("!tier", false, true),
            ("app in (web,db),!tier", false, true),
            ("app=web,tier=front", true, false),
        ];
        for (selector, on_web, on_db) in cases {
            let s = LabelSelector::parse(selector).unwrap();
            assert_eq!(s.matches(&web), on_web, "{selector} on web");
            assert_eq!(s.matches(&db), on_db, "{selector} on db");
        }
    }

    #[test]
    fn display_round_trips() {
        let s = LabelSelector::parse("a=b, c!=d,e in (f,g),h notin (i),j,!k").unwrap();
        assert_eq!(s.to_string(), "a=b,c!=d,e in (f,g),h notin (i),j,!k");
        assert_eq!(LabelSelector::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn malformed_selectors_are_refused() {
        for bad in ["app in (web", "app=we b", "app ni (x)", "=x", "a in ((b))"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dns_labels_are_namespace_names() {
        let longest = "a".repeat(63);
        for good in ["shop", "a", "a-1", "0x", &longest] {
            assert!(is_dns_label(good), "{good}");
        }
        let too_long = "a".repeat(64);
        for bad in ["", "Shop", "-a", "a-", "a.b", "a_b", &too_long] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn label_keys_and_values_follow_kubernetes_lengths() {
        let long_key = "k".repeat(300);
        let err = LabelSelector::parse(&format!("{long_key}=x")).unwrap_err();
        assert!(err.reason.contains("is not a valid label key"), "{err}");
        assert!(err.reason.contains("at most 63"), "{err}");
        assert!(
            err.to_string().len() < 1000,
            "the error quotes a cut key: {err}"
        );
        let long_prefix = format!("{}/app", "a".repeat(254));
        let err = LabelSelector::parse(&long_prefix).unwrap_err();
        assert!(err.reason.contains("DNS subdomain"), "{err}");
        for bad in [
            "Example.com/app",
            "/app",
            "a/",
            "-app",
            "app-=x",
            &format!("a={}", "v".repeat(64)),
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
        let prefix = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(61));
        assert_eq!(prefix.len(), 253);
        let longest = format!("{prefix}/{}={}", "n".repeat(63), "v".repeat(63));
        for good in [
            "app.kubernetes.io/name=web",
            "k8s.io/x",
            &longest,
            "tier=",
            "A_b.c-9",
        ] {
            assert!(
                LabelSelector::parse(good).is_ok(),
                "{good}: {:?}",
                LabelSelector::parse(good)
            );
        }
    }
}
