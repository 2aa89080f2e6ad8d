//! Encoding envelopes to bytes and decoding them back.
//!
//! MessagePack with named fields (`rmp_serde::to_vec_named`) is the default; JSON is accepted
//! and produced where the AMQP `content-type` says `application/json`.
//!
//! [`decode`] reads in three steps, so that every failure says what is actually wrong:
//! 1. only `schema_version`: a message from another contract version is reported as
//!    [`DecodeError::UnsupportedVersion`] even when the rest of it has a different shape;
//! 2. only `message.type`: an unknown type is [`DecodeError::UnknownType`];
//! 3. the whole envelope: anything else that does not fit is [`DecodeError::Malformed`].

use std::io::Cursor;
use std::str::FromStr;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::{Envelope, Message, SCHEMA_VERSION};

/// The body formats Stowage reads and writes, named by AMQP `content-type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ContentType {
    /// `application/msgpack`: MessagePack, structs as maps with named fields. The default.
    #[default]
    MessagePack,
    /// `application/json`: UTF-8 JSON.
    Json,
}

as_str! {
    /// The canonical `content-type` value.
    ContentType {
        MessagePack => "application/msgpack",
        Json => "application/json",
    }
}

impl FromStr for ContentType {
    type Err = UnknownContentType;

    /// Reads a `content-type` value, ignoring case and parameters (`; charset=utf-8`).
    /// MessagePack is also recognised as `application/x-msgpack` and `application/vnd.msgpack`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let essence = s.split(';').next().unwrap_or_default().trim();
        match essence.to_ascii_lowercase().as_str() {
            "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => {
                Ok(ContentType::MessagePack)
            }
            "application/json" => Ok(ContentType::Json),
            _ => Err(UnknownContentType(s.to_owned())),
        }
    }
}

/// A `content-type` Stowage does not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unsupported content-type `{0}`: send application/msgpack (MessagePack with named fields) \
     or application/json"
)]
pub struct UnknownContentType(pub String);

/// Why a body could not be decoded into an [`Envelope`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The body is not a valid envelope in the declared format.
    #[error(
        "body is not a valid Stowage envelope ({content_type}): {reason}; send a map with \
         message_id, schema_version, job_id, created_at and message {{type, payload}} \
         (see schemas/json/envelope.schema.json)"
    )]
    Malformed {
        /// The format the body was read as.
        content_type: ContentType,
        /// What did not fit, as reported by the decoder.
        reason: String,
    },
    /// The body was written for another version of the contract.
    #[error(
        "unsupported schema_version {found}: this worker speaks version {supported}; upgrade \
         the workers or re-submit the message with schema_version {supported}"
    )]
    UnsupportedVersion {
        /// The version in the body.
        found: u16,
        /// The version this build speaks ([`SCHEMA_VERSION`]).
        supported: u16,
    },
    /// The message type is not one this build knows.
    #[error("unknown message type `{kind}`: expected one of {}", Message::KINDS.join(", "))]
    UnknownType {
        /// The `message.type` in the body.
        kind: String,
    },
}

/// Encodes an envelope as MessagePack with named fields (the default content type).
pub fn encode(env: &Envelope) -> Vec<u8> {
    encode_as(env, ContentType::MessagePack)
}

/// Encodes an envelope in the given format.
///
/// Cannot fail: every type in an envelope serializes to strings, integers, booleans, sequences
/// and maps with string keys, which both serializers accept, and no `Serialize` impl in this
/// crate returns an error.
pub fn encode_as(env: &Envelope, ct: ContentType) -> Vec<u8> {
    const INFALLIBLE: &str =
        "envelopes hold only strings, integers, booleans, sequences and string-keyed maps";
    match ct {
        ContentType::MessagePack => rmp_serde::to_vec_named(env).expect(INFALLIBLE),
        ContentType::Json => serde_json::to_vec(env).expect(INFALLIBLE),
    }
}

/// Decodes a body of the given content type into an envelope, checking the schema version and
/// the message type before the rest (see the module docs).
pub fn decode(bytes: &[u8], ct: ContentType) -> Result<Envelope, DecodeError> {
    /// Step 1: nothing but the version.
    #[derive(Deserialize)]
    #[serde(
        expecting = "an envelope: a map with schema_version, message_id, job_id, created_at and message"
    )]
    struct VersionProbe {
        schema_version: u16,
    }

    /// Step 2: nothing but the message type.
    #[derive(Deserialize)]
    #[serde(
        expecting = "an envelope: a map with schema_version, message_id, job_id, created_at and message"
    )]
    struct TypeProbe {
        message: KindProbe,
    }

    #[derive(Deserialize)]
    #[serde(expecting = "a message: a map with type and payload")]
    struct KindProbe {
        #[serde(rename = "type")]
        kind: String,
    }

    if starts_with_sequence(bytes, ct) {
        return Err(DecodeError::Malformed {
            content_type: ct,
            reason: "the body: expected an envelope: a map with schema_version, message_id, \
                     job_id, created_at and message, got a sequence (write structs as maps with \
                     named fields: MessagePack from a dict or object, or rmp_serde::to_vec_named, \
                     not a positional array)"
                .to_owned(),
        });
    }
    let VersionProbe { schema_version } = read(bytes, ct)?;
    if schema_version != SCHEMA_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: schema_version,
            supported: SCHEMA_VERSION,
        });
    }
    let TypeProbe {
        message: KindProbe { kind },
    } = read(bytes, ct)?;
    if !Message::KINDS.contains(&kind.as_str()) {
        return Err(DecodeError::UnknownType { kind });
    }
    match read(bytes, ct) {
        Err(DecodeError::Malformed { reason, .. }) if reason.starts_with("message: ") => {
            Err(DecodeError::Malformed {
                content_type: ct,
                reason: payload_error(bytes, ct, &kind).unwrap_or(reason),
            })
        }
        result => result,
    }
}

/// The ids an envelope-shaped body names, read leniently: each field on its own, kept only when
/// it is a string, so that a body [`decode`] refuses (a wrong type elsewhere, a timestamp
/// without an offset, a field missing) still tells an operator which message it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvelopeIds {
    /// `message_id`, as written.
    pub message_id: Option<String>,
    /// `message.type`, e.g. `job.snapshot`.
    pub kind: Option<String>,
    /// `job_id`, as written.
    pub job_id: Option<String>,
    /// `cluster`, as written.
    pub cluster: Option<String>,
    /// `created_at`, when it is an RFC 3339 timestamp with an offset.
    pub created_at: Option<jiff::Timestamp>,
}

/// Reads [`EnvelopeIds`] from a body of content type `ct`; all `None` when the body is not a
/// map at all. Never fails, never reads more than [`MAX_DEPTH`] levels deep.
pub fn probe_ids(bytes: &[u8], ct: ContentType) -> EnvelopeIds {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Probe {
        message_id: Loose,
        job_id: Loose,
        cluster: Loose,
        created_at: Loose,
        message: LooseKind,
    }

    let probe: Option<Probe> = match ct {
        ContentType::MessagePack => {
            let mut de = rmp_serde::Deserializer::new(Cursor::new(bytes));
            de.set_max_depth(MAX_DEPTH);
            Probe::deserialize(&mut de).ok()
        }
        ContentType::Json => serde_json::from_slice(bytes).ok(),
    };
    let probe = probe.unwrap_or_default();
    EnvelopeIds {
        message_id: probe.message_id.0,
        kind: probe.message.kind.0,
        job_id: probe.job_id.0,
        cluster: probe.cluster.0,
        created_at: probe.created_at.0.and_then(|s| s.parse().ok()),
    }
}

/// The `type` of a `message` map; `None` for anything else.
#[derive(Default)]
struct LooseKind {
    kind: Loose,
}

impl<'de> Deserialize<'de> for LooseKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Loose::visit(deserializer, Some(|key| key == "type"))
            .map(|kind| LooseKind { kind: Loose(kind) })
    }
}

/// Any value; a string is kept, everything else (numbers, maps, extension values) is skipped.
#[derive(Default)]
struct Loose(Option<String>);

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Loose::visit(deserializer, None).map(Loose)
    }
}

impl Loose {
    /// Reads any value. Without `pick`, a string is returned; with it, only a map counts, and
    /// the value of its first key `pick` accepts is read as a string. Everything else is
    /// skipped and gives `None`.
    fn visit<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
        pick: Option<fn(&str) -> bool>,
    ) -> Result<Option<String>, D::Error> {
        use serde::de::{self, IgnoredAny};

        struct Visitor(Option<fn(&str) -> bool>);

        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Option<String>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any value")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(self.0.is_none().then(|| s.to_owned()))
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_some<D: serde::Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<Self::Value, D::Error> {
                Loose::visit(d, self.0)
            }

            fn visit_newtype_struct<D: serde::Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<Self::Value, D::Error> {
                IgnoredAny::deserialize(d).map(|_| None)
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(None)
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut found = None;
                while let Some(key) = map.next_key::<Loose>()? {
                    let wanted = self
                        .0
                        .is_some_and(|pick| key.0.as_deref().is_some_and(pick));
                    if found.is_none() && wanted {
                        found = map.next_value::<Loose>()?.0;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(found)
            }
        }

        deserializer.deserialize_any(Visitor(pick))
    }
}

/// Whether the body is an array at the top level (a struct written positionally, e.g. by
/// `rmp_serde::to_vec`), which no envelope is.
fn starts_with_sequence(bytes: &[u8], ct: ContentType) -> bool {
    match ct {
        ContentType::MessagePack => {
            matches!(bytes.first(), Some(0x90..=0x9f | 0xdc | 0xdd))
        }
        ContentType::Json => bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'['),
    }
}

/// Names the field of a payload that did not fit, when the body put `payload` before `type`.
///
/// serde then buffers the payload before it knows its type and reports its errors against
/// `message` alone. The payload is read again on its own, as JSON after `type`, to find the
/// path inside it. `None` if that reading succeeds or fails for another reason.
fn payload_error(bytes: &[u8], ct: ContentType, kind: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Outer {
        message: Inner,
    }

    #[derive(Deserialize)]
    struct Inner {
        payload: serde_json::Value,
    }

    let Outer {
        message: Inner { payload },
    } = read(bytes, ct).ok()?;
    let text = format!(
        "{{\"type\":{},\"payload\":{}}}",
        serde_json::to_string(kind).ok()?,
        serde_json::to_string(&payload).ok()?
    );
    let mut de = serde_json::Deserializer::from_str(&text);
    let err = serde_path_to_error::deserialize::<_, Message>(&mut de).err()?;
    let path = err.path().to_string();
    let text = err.into_inner().to_string();
    let text = text.split(" at line ").next().unwrap_or_default();
    Some(field_error(&format!("message.{path}"), text))
}

/// The deepest nesting of arrays and maps a MessagePack body may have. An envelope nests about
/// six levels deep; the bound keeps a hostile body from recursing the decoder off the stack
/// (serde_json has its own bound of 128).
pub const MAX_DEPTH: usize = 32;

/// Reads one value of `T` filling the whole body. A refusal names the field it is about
/// (`message.payload.instance: expected a string, got a sequence`), see [`field_error`].
fn read<T: DeserializeOwned>(bytes: &[u8], ct: ContentType) -> Result<T, DecodeError> {
    let malformed = |reason: String| DecodeError::Malformed {
        content_type: ct,
        reason,
    };
    match ct {
        ContentType::MessagePack => {
            let mut de = rmp_serde::Deserializer::new(Cursor::new(bytes));
            de.set_max_depth(MAX_DEPTH);
            let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
                let path = err.path().to_string();
                let text = err.inner().to_string();
                // rmp_serde words some refusals in MessagePack's terms (`wrong msgpack marker
                // FixStr(1)`), naming neither the form expected nor what came: read the body
                // again as plain data to have serde phrase the same refusal.
                use rmp_serde::decode::Error as Rmp;
                let text = match err.inner() {
                    Rmp::TypeMismatch(_) | Rmp::LengthMismatch(_) | Rmp::OutOfRange => {
                        rephrase::<T>(bytes).unwrap_or(text)
                    }
                    _ => text,
                };
                malformed(field_error(&path, &text))
            })?;
            let used = de.position();
            if used != bytes.len() as u64 {
                return Err(malformed(format!(
                    "{} trailing bytes after the envelope",
                    bytes.len() as u64 - used
                )));
            }
            Ok(value)
        }
        ContentType::Json => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
                let path = err.path().to_string();
                let inner = err.into_inner();
                let at = if inner.line() > 0 {
                    format!(" (at line {} column {})", inner.line(), inner.column())
                } else {
                    String::new()
                };
                let text = inner.to_string();
                let text = text.split(" at line ").next().unwrap_or_default();
                malformed(format!("{}{at}", field_error(&path, text)))
            })?;
            de.end()
                .map_err(|err| malformed(format!("after the envelope: {err}")))?;
            Ok(value)
        }
    }
}

/// The refusal of reading `T` from a MessagePack `body` converted to plain data first, in
/// serde's words (`invalid type: string "1", expected u16`); `None` when the body cannot be
/// converted (extension values, binary) or reads fine that way.
fn rephrase<T: DeserializeOwned>(bytes: &[u8]) -> Option<String> {
    let mut de = rmp_serde::Deserializer::new(Cursor::new(bytes));
    de.set_max_depth(MAX_DEPTH);
    let value: serde_json::Value = Deserialize::deserialize(&mut de).ok()?;
    let err = serde_path_to_error::deserialize::<_, T>(value).err()?;
    Some(err.into_inner().to_string())
}

/// Phrases a deserializer's complaint about the field at `path` (dotted, `.` for the whole
/// body) as `<path>: expected <form>, got <what was there>`, without Rust type names.
///
/// serde words a type mismatch `invalid type: sequence, expected a string`; this turns it into
/// `payload.instance: expected a string, got a sequence`, and names integer types by their
/// range. Other complaints (missing fields, custom messages) are kept, prefixed by the path.
pub fn field_error(path: &str, message: &str) -> String {
    let message = message.trim();
    let phrased = ["invalid type: ", "invalid value: ", "invalid length "]
        .iter()
        .find_map(|prefix| {
            let rest = message.strip_prefix(prefix)?;
            let (got, expected) = rest.rsplit_once(", expected ")?;
            let got = if *prefix == "invalid length " {
                format!("length {got}")
            } else {
                article(got)
            };
            Some(format!("expected {}, got {got}", plain_type(expected)))
        })
        .unwrap_or_else(|| plain_type(message));
    if path.is_empty() || path == "." {
        format!("the body: {phrased}")
    } else {
        format!("{path}: {phrased}")
    }
}

/// `sequence` → `a sequence`, `map` → `a map`; values such as ``integer `5` `` are kept.
fn article(what: &str) -> String {
    match what {
        "sequence" | "map" | "boolean" | "string" | "unit value" | "newtype struct"
        | "unit variant" | "newtype variant" | "tuple variant" | "struct variant" | "option" => {
            let what = match what {
                "newtype struct" => {
                    "MessagePack extension value (such as msgpack's own timestamp type; send timestamps as RFC 3339 strings)"
                }
                "unit value" => "null",
                other => other,
            };
            if what == "null" {
                what.to_owned()
            } else if what.starts_with(['a', 'e', 'i', 'o', 'u']) {
                format!("an {what}")
            } else {
                format!("a {what}")
            }
        }
        other => other.to_owned(),
    }
}

/// Replaces Rust type names in an `expected …` phrase by the form they take on the wire.
fn plain_type(expected: &str) -> String {
    let integer = |t: &str| -> Option<&'static str> {
        Some(match t {
            "u8" => "an integer from 0 to 255",
            "u16" => "an integer from 0 to 65535",
            "u32" => "an integer from 0 to 4294967295",
            "u64" => "an integer from 0 to 18446744073709551615",
            "i32" => "an integer from -2147483648 to 2147483647",
            "i64" => "an integer from -9223372036854775808 to 9223372036854775807",
            "a boolean" => "true or false",
            _ => return None,
        })
    };
    if let Some(text) = integer(expected) {
        return text.to_owned();
    }
    // `struct SnapshotJob`, `adjacently tagged enum Message`, `internally tagged enum Trigger`.
    for (marker, form) in [
        ("struct ", "a map of fields"),
        ("adjacently tagged enum ", "a map with `type` and `payload`"),
        ("internally tagged enum ", "a map with a `kind` field"),
    ] {
        if let Some(at) = expected.find(marker) {
            let name_end = expected[at + marker.len()..]
                .find(|c: char| !c.is_alphanumeric() && c != '_')
                .map_or(expected.len(), |end| at + marker.len() + end);
            return format!("{}{form}{}", &expected[..at], &expected[name_end..]);
        }
    }
    expected.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_parse_leniently() {
        for (text, ct) in [
            ("application/msgpack", ContentType::MessagePack),
            ("application/x-msgpack", ContentType::MessagePack),
            ("application/vnd.msgpack", ContentType::MessagePack),
            ("Application/MsgPack", ContentType::MessagePack),
            ("application/json", ContentType::Json),
            ("application/json; charset=utf-8", ContentType::Json),
        ] {
            assert_eq!(text.parse::<ContentType>(), Ok(ct), "{text}");
        }
        assert!("text/plain".parse::<ContentType>().is_err());
        assert_eq!(ContentType::default(), ContentType::MessagePack);
        for ct in [ContentType::MessagePack, ContentType::Json] {
            assert_eq!(ct.as_str().parse::<ContentType>(), Ok(ct));
        }
    }
}
