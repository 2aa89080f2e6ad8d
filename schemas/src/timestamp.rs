//! `deserialize_with` helpers for timestamps on the wire, so that a refusal says what form is
//! expected (`expected an RFC 3339 timestamp with an offset, got "2026-11-29T10:00:00"`)
//! instead of naming a library's internal type. The serialized form is jiff's own (RFC 3339,
//! UTC), unchanged.

use std::fmt;

use jiff::Timestamp;
use serde::de::{self, Deserializer};

use crate::id::{deserialize_text, quote};

/// What a timestamp must look like, as quoted in refusals.
pub const EXPECTED: &str = "an RFC 3339 timestamp with an offset";

/// A required timestamp.
pub fn required<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
    let expecting = format_args!("{EXPECTED} (e.g. 2025-01-15T02:00:00Z)");
    deserialize_text(deserializer, expecting, |s| {
        s.parse().map_err(|_| {
            format!(
                "expected {EXPECTED} (e.g. 2025-01-15T02:00:00Z), got {}",
                quote(s)
            )
        })
    })
}

/// An optional timestamp (null or absent: `None`; use with `#[serde(default)]`).
pub fn option<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Timestamp>, D::Error> {
    struct OptionVisitor;

    impl<'de> de::Visitor<'de> for OptionVisitor {
        type Value = Option<Timestamp>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{EXPECTED} or null")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            required(d).map(Some)
        }
    }

    deserializer.deserialize_option(OptionVisitor)
}
