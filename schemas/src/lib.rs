//! The Stowage wire contract.
//!
//! Every job and event that travels between the scheduler, the CLI, the workers and any other
//! AMQP producer is an [`Envelope`]: a small versioned header (message id, schema version, job
//! id, recovery-point or restore id, attempt, creation time, trace context) around one typed
//! [`Message`]. On the wire it is MessagePack with named fields (the default) or JSON, as the
//! AMQP `content-type` says; [`codec`] turns bytes into envelopes and back.
//!
//! Modules:
//! - [`jobs`] and [`events`]: the payload of every message type;
//! - [`domain`]: vault, policy, backup instance, recovery point and tier, as stored in a vault;
//! - [`codec`]: encoding, and decoding that checks version and type first;
//! - [`json_schema`]: the JSON Schemas published in `schemas/json/`;
//! - [`samples`]: one canonical envelope per message type, the source of the golden fixtures;
//! - [`id`]: the one rule for instance, recovery-point, job, restore, disk and cluster ids;
//! - [`selector`]: Kubernetes label selectors, parsed and matched (an instance's scope holds
//!   them; collection and the catalog's validation both need them);
//! - [`Retryable`]: whether a failure is worth another try, answered once per error type.
//!
//! How the contract may change without breaking running workers is written down in
//! `schemas/EVOLUTION.md`: unknown fields are ignored, new fields are optional, and anything
//! else bumps [`SCHEMA_VERSION`].

/// `as_str()` for enums with one fixed name per variant (their wire or CLI name), and a
/// `Display` that prints that name.
macro_rules! as_str {
    ($(#[$doc:meta])* $ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            $(#[$doc])*
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// `JsonSchema` for a type that is a string on the wire: the given schema, inlined wherever the
/// type is used, under the type's own name.
macro_rules! string_schema {
    ($ty:ident $schema:tt) => {
        impl ::schemars::JsonSchema for $ty {
            fn inline_schema() -> bool {
                true
            }

            fn schema_name() -> ::std::borrow::Cow<'static, str> {
                stringify!($ty).into()
            }

            fn json_schema(_: &mut ::schemars::SchemaGenerator) -> ::schemars::Schema {
                ::schemars::json_schema!($schema)
            }
        }
    };
}

pub mod codec;
pub mod domain;
mod envelope;
pub mod events;
pub mod id;
mod job_record;
pub mod jobs;
pub mod json_schema;
mod message;
mod retry;
pub mod samples;
pub mod selector;
mod stage;
mod timestamp;

pub use codec::{ContentType, DecodeError, EnvelopeIds, decode, encode, encode_as, probe_ids};
pub use envelope::{Envelope, MessageId, TraceContext};
pub use id::{Id, IdError};
pub use message::{Message, Route};
pub use retry::Retryable;
pub use stage::{Stage, UnknownStage};

/// The version of the wire contract this crate speaks. Bumped by every breaking change
/// (see `schemas/EVOLUTION.md`); a decoder refuses any other version.
pub const SCHEMA_VERSION: u16 = 1;
