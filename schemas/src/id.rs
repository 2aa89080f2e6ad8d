//! Identifiers: one rule for every name Stowage puts in a key, a message or a flag.
//!
//! Instance names, recovery-point ids, job ids, restore ids, disk ids and cluster names all
//! follow [the id rule](RULE):
//!
//! - 1 to [`MAX_ID_LEN`] (253) bytes, the length of a Kubernetes DNS-subdomain name;
//! - ASCII letters (either case), digits, `-`, `_` and `.`;
//! - starting and ending with a letter or digit.
//!
//! Why this rule: an id becomes a vault key component (`jobs/<job-id>.json`), a file name in
//! a local-folder vault or disk root, a disk name and a log field. `/` would move an object into
//! another folder and `..` could escape a local folder, so neither can be expressed; `#` and `%`
//! are reserved by the vault layout; a leading `.` would hide a file. Upper case is allowed
//! because Stowage's own time stamps use it (`sched-shop-20250115T0200Z`).
//!
//! Every id Stowage generates satisfies it: `sched-<instance>-<yyyymmddThhmmZ>` (a scheduled
//! job and its recovery point), `backup-<instance>-<yyyymmddThhmmssZ>-<hex>`,
//! `ondemand-<instance>-<stamp>-<hex>`,
//! `retention-<instance>-<yyyymmdd>`, `<stage>-<uuid>`, `restore-<rp>-<hex>` and
//! `staging-<restore>-<volume>`. So that the ids built from an instance name stay within the
//! limit, an instance name is at most [`MAX_INSTANCE_NAME_LEN`] (63) bytes (the catalog checks
//! it where instances are created).
//!
//! [`Id`] is validated whenever it is built or deserialized, so a bad id is refused where it
//! enters: a CLI flag, a job file, a message decode. On the wire it is a plain string. The
//! wire structs keep `String` fields and check them with the [`fields`] helpers,
//! which apply the same rule while deserializing.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// The longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 253;

/// The longest backup-instance name accepted, in bytes, so that the job ids built from it
/// (`backup-<instance>-<stamp>-<hex>` adds 31 bytes) stay within [`MAX_ID_LEN`].
pub const MAX_INSTANCE_NAME_LEN: usize = 63;

/// The id rule in one sentence, quoted by every refusal.
pub const RULE: &str = "1 to 253 ASCII letters, digits, '-', '_' and '.', starting and ending \
                        with a letter or digit";

/// The id rule as a regular expression (as published in the JSON Schemas).
pub const PATTERN: &str = "^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$";

/// The most characters of a refused value quoted back in an error.
const QUOTE_LIMIT: usize = 64;

/// An id that breaks [the rule](RULE).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} is not a valid id: {reason}; an id is {RULE}", quote(value))]
pub struct IdError {
    /// The refused value, cut to its first 64 characters (with a note of its length).
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Quotes `value` for an error message, cut to [`QUOTE_LIMIT`] characters with a note of the
/// original length, so that a megabyte-long value never makes a megabyte-long error.
pub fn quote(value: &str) -> String {
    if value.chars().count() <= QUOTE_LIMIT {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(QUOTE_LIMIT).collect();
        format!("{head:?}… ({} bytes in all)", value.len())
    }
}

/// Checks `value` against [the rule](RULE).
pub fn validate(value: &str) -> Result<(), IdError> {
    let refuse = |reason| {
        Err(IdError {
            value: if value.chars().count() <= QUOTE_LIMIT {
                value.to_owned()
            } else {
                value.chars().take(QUOTE_LIMIT).collect::<String>() + "…"
            },
            reason,
        })
    };
    let bytes = value.as_bytes();
    let Some((&first, _)) = bytes.split_first() else {
        return refuse("it is empty");
    };
    if bytes.len() > MAX_ID_LEN {
        return refuse("it is longer than 253 bytes");
    }
    if value.contains('/') || value.contains('\\') {
        return refuse("it contains a path separator");
    }
    if let Some(bad) = value
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return refuse(if bad.is_whitespace() || bad.is_control() {
            "it contains whitespace or a control character"
        } else {
            "it contains a character outside the allowed set"
        });
    }
    let last = bytes[bytes.len() - 1];
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return refuse("it does not start and end with a letter or digit");
    }
    Ok(())
}

/// A validated identifier (see the [module docs](self) for the rule). Serialized as a plain
/// string; dereferences to `str`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(String);

impl Id {
    /// Validates `value` as an id.
    pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        validate(&value)?;
        Ok(Self(value))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl Deref for Id {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Id {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Id {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Id {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for Id {
    type Error = IdError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<&str> for Id {
    type Error = IdError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Id> for String {
    fn from(id: Id) -> Self {
        id.0
    }
}

impl PartialEq<str> for Id {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Id {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Reads a string and checks it against the rule; anything but a string is refused as
/// "expected an id string".
impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_text(deserializer, format_args!("an id string ({RULE})"), |s| {
            Id::new(s)
        })
    }
}

/// Deserializes a value written as a string (ids, timestamps): `parse` turns the text into the
/// value or says why not. MessagePack `bin` holding UTF-8 is read as that text; anything else
/// is refused as "expected `expecting`".
pub(crate) fn deserialize_text<'de, D, T, M>(
    deserializer: D,
    expecting: fmt::Arguments<'_>,
    parse: impl FnOnce(&str) -> Result<T, M>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    M: fmt::Display,
{
    struct Text<'a, F>(fmt::Arguments<'a>, F);

    impl<T, M, F> de::Visitor<'_> for Text<'_, F>
    where
        M: fmt::Display,
        F: FnOnce(&str) -> Result<T, M>,
    {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_fmt(self.0)
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
            (self.1)(s).map_err(E::custom)
        }

        fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<T, E> {
            match std::str::from_utf8(b) {
                Ok(s) => self.visit_str(s),
                Err(_) => Err(E::invalid_type(de::Unexpected::Bytes(b), &self)),
            }
        }
    }

    deserializer.deserialize_str(Text(expecting, parse))
}

string_schema!(Id {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_ID_LEN,
    "pattern": PATTERN
});

/// `deserialize_with` helpers for `String` fields that hold ids: they apply the rule while
/// deserializing, so the wire structs can keep plain strings.
pub mod fields {
    use serde::{Deserialize, Deserializer};

    use super::Id;

    /// An id in a `String` field.
    pub fn string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
        Id::deserialize(deserializer).map(Id::into_string)
    }

    /// An optional id in an `Option<String>` field (null or absent: `None`).
    pub fn option<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
        Option::<Id>::deserialize(deserializer).map(|id| id.map(Id::into_string))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_fit_the_rule() {
        let instance = "a".repeat(MAX_INSTANCE_NAME_LEN);
        for id in [
            "shop-prod".to_owned(),
            format!("sched-{instance}-20250115T0200Z"),
            format!("backup-{instance}-20250115T020000Z-0a1b2c"),
            format!("ondemand-{instance}-20250115T020000Z-0a1b2c"),
            format!("retention-{instance}-20250115"),
            "snapshot-01946a4c-8e00-7000-8000-000000000001".to_owned(),
            format!("restore-sched-{instance}-20250115T0200Z-8000a1b2c3d4"),
            "staging-restore-7f3a-vol-5d1c".to_owned(),
            "rp-2026-11-22-0300".to_owned(),
            "a".into(),
            "A.b_c-9".into(),
        ] {
            assert!(validate(&id).is_ok(), "{id}: {:?}", validate(&id));
            assert!(id.len() <= MAX_ID_LEN);
        }
    }

    #[test]
    fn bad_ids_are_refused_with_the_rule() {
        for bad in [
            "", ".", "..", "../../x", "a/b", "a\\b", ".hidden", "x-", "-x", "a b", "a#1", "a%2F",
            "ünï", "a\nb",
        ] {
            let err = validate(bad).unwrap_err().to_string();
            assert!(err.contains(RULE), "{bad:?}: {err}");
        }
        let long = "a".repeat(MAX_ID_LEN + 1);
        let err = validate(&long).unwrap_err().to_string();
        assert!(err.contains("longer than 253"), "{err}");
        assert!(err.len() < 400, "the error quotes a cut value: {err}");
        assert!(validate(&"a".repeat(MAX_ID_LEN)).is_ok());
    }

    #[test]
    fn an_id_is_a_plain_string_on_the_wire() {
        let id = Id::new("rp-1").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"rp-1\"");
        let packed = rmp_serde::to_vec_named(&id).unwrap();
        assert_eq!(packed, rmp_serde::to_vec("rp-1").unwrap());
        assert_eq!(rmp_serde::from_slice::<Id>(&packed).unwrap(), id);
        let err = serde_json::from_str::<Id>("\"../x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("path separator"), "{err}");
        let err = serde_json::from_str::<Id>("[1]").unwrap_err().to_string();
        assert!(err.contains("expected an id string"), "{err}");
        assert_eq!(&*id, "rp-1");
        assert_eq!(id, "rp-1");
    }
}
