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

display_as_str!(ContentType);

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
    struct VersionProbe {
        schema_version: u16,
    }

    /// Step 2: nothing but the message type.
    #[derive(Deserialize)]
    struct TypeProbe {
        message: KindProbe,
    }

    #[derive(Deserialize)]
    struct KindProbe {
        #[serde(rename = "type")]
        kind: String,
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
    read(bytes, ct)
}

/// Reads one value of `T` filling the whole body.
fn read<T: DeserializeOwned>(bytes: &[u8], ct: ContentType) -> Result<T, DecodeError> {
    let malformed = |reason: String| DecodeError::Malformed {
        content_type: ct,
        reason,
    };
    match ct {
        ContentType::MessagePack => {
            let mut de = rmp_serde::Deserializer::new(Cursor::new(bytes));
            let value = T::deserialize(&mut de).map_err(|err| malformed(err.to_string()))?;
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
            serde_json::from_slice(bytes).map_err(|err| malformed(err.to_string()))
        }
    }
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
