//! Size limits on what the runtime accepts and writes, so that no message content can make a
//! header exceed the broker's frame (RabbitMQ closes the whole connection on an oversized
//! frame, taking every stage's channel with it) or a log grow with the size of a field.
//!
//! - A message body above [`MAX_BODY_BYTES`] is dead-lettered without being decoded.
//! - Every header value Stowage writes is at most [`MAX_HEADER_VALUE_BYTES`]; an error chain
//!   keeps at most [`MAX_CHAIN_ENTRIES`] causes of at most [`MAX_CHAIN_ENTRY_BYTES`] each; the
//!   headers of a dead letter stay under [`MAX_HEADERS_BYTES`] (foreign headers are dropped
//!   first when they would not).
//! - A log field that echoes message content is at most [`MAX_LOG_FIELD_BYTES`].
//!
//! A truncated value ends in a note of its original size: `… (truncated; 70000 bytes in all)`.

use std::borrow::Cow;

use crate::broker::{HeaderValue, Headers};

/// Largest message body a worker decodes (4 MiB). Envelopes are a few KiB; anything larger is
/// refused by name before it is parsed.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Largest header value Stowage writes (RabbitMQ's default `frame_max` is 128 KiB for all the
/// headers of a message together).
pub const MAX_HEADER_VALUE_BYTES: usize = 4 * 1024;
/// Largest entry of an error-chain header.
pub const MAX_CHAIN_ENTRY_BYTES: usize = 1024;
/// Most causes an error-chain header lists (the rest are summarised in one last entry).
pub const MAX_CHAIN_ENTRIES: usize = 8;
/// Budget for all the headers of a message Stowage republishes (a dead letter).
pub const MAX_HEADERS_BYTES: usize = 32 * 1024;
/// Largest log field that echoes message content.
pub const MAX_LOG_FIELD_BYTES: usize = 512;

/// `s`, cut to at most `max` bytes (at a character boundary) with a note of its original size
/// when it is longer.
pub fn truncate(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let note = format!("… (truncated; {} bytes in all)", s.len());
    let mut cut = max.saturating_sub(note.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}{note}", &s[..cut]))
}

/// A header value: `s` cut to [`MAX_HEADER_VALUE_BYTES`].
pub fn header_str(s: &str) -> HeaderValue {
    HeaderValue::Str(truncate(s, MAX_HEADER_VALUE_BYTES).into_owned())
}

/// An error-chain header: at most [`MAX_CHAIN_ENTRIES`] entries of at most
/// [`MAX_CHAIN_ENTRY_BYTES`] each.
pub fn chain_header(chain: &[String]) -> HeaderValue {
    let mut entries: Vec<HeaderValue> = chain
        .iter()
        .take(MAX_CHAIN_ENTRIES)
        .map(|c| HeaderValue::Str(truncate(c, MAX_CHAIN_ENTRY_BYTES).into_owned()))
        .collect();
    if chain.len() > MAX_CHAIN_ENTRIES {
        entries.push(HeaderValue::Str(format!(
            "… and {} more causes",
            chain.len() - MAX_CHAIN_ENTRIES
        )));
    }
    HeaderValue::List(entries)
}

/// A log field that echoes message content, cut to [`MAX_LOG_FIELD_BYTES`].
pub fn log_field(s: &str) -> Cow<'_, str> {
    truncate(s, MAX_LOG_FIELD_BYTES)
}

/// Roughly how many bytes a header value takes on the wire.
pub fn wire_size(value: &HeaderValue) -> usize {
    match value {
        HeaderValue::Str(s) => 5 + s.len(),
        HeaderValue::Int(_) => 9,
        HeaderValue::Bool(_) => 2,
        HeaderValue::List(items) => 5 + items.iter().map(wire_size).sum::<usize>(),
        HeaderValue::Table(table) => 5 + headers_size(table),
    }
}

/// Roughly how many bytes a header table takes on the wire.
pub fn headers_size(headers: &Headers) -> usize {
    headers
        .iter()
        .map(|(k, v)| 1 + k.len() + wire_size(v))
        .sum()
}

fn bound_value(value: &mut HeaderValue) {
    match value {
        HeaderValue::Str(s) if s.len() > MAX_HEADER_VALUE_BYTES => {
            *s = truncate(s, MAX_HEADER_VALUE_BYTES).into_owned();
        }
        HeaderValue::List(items) => items.iter_mut().for_each(bound_value),
        HeaderValue::Table(table) => table.values_mut().for_each(bound_value),
        _ => {}
    }
}

/// Bound headers copied from a message someone else published before Stowage republishes them:
/// every string value to [`MAX_HEADER_VALUE_BYTES`], and, if the table is still over
/// [`MAX_HEADERS_BYTES`], foreign headers (not `x-stowage-*`, `x-death` or the trace context)
/// dropped, largest first. Returns how many were dropped.
pub fn bound_headers(headers: &mut Headers) -> usize {
    headers.values_mut().for_each(bound_value);
    let mut dropped = 0;
    while headers_size(headers) > MAX_HEADERS_BYTES {
        let largest = headers
            .iter()
            .filter(|(k, _)| {
                !(k.starts_with("x-stowage-")
                    || k.as_str() == "x-death"
                    || k.as_str() == "traceparent"
                    || k.as_str() == "tracestate")
            })
            .max_by_key(|(k, v)| k.len() + wire_size(v))
            .map(|(k, _)| k.clone());
        match largest {
            Some(key) => {
                headers.remove(&key);
                dropped += 1;
            }
            None => break,
        }
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_value_is_cut_with_a_note_of_its_size() {
        let long = "é".repeat(35_000);
        let cut = truncate(&long, MAX_HEADER_VALUE_BYTES);
        assert!(cut.len() <= MAX_HEADER_VALUE_BYTES, "{}", cut.len());
        assert!(cut.ends_with("… (truncated; 70000 bytes in all)"), "{cut}");
        assert_eq!(truncate("short", 10), "short");
    }

    #[test]
    fn chains_and_foreign_headers_stay_bounded() {
        let chain: Vec<String> = (0..100)
            .map(|i| format!("{i}{}", "x".repeat(9000)))
            .collect();
        let header = chain_header(&chain);
        assert!(wire_size(&header) < 12 * 1024, "{}", wire_size(&header));

        let mut headers = Headers::new();
        for i in 0..40 {
            headers.insert(format!("client-{i}"), "y".repeat(3000).into());
        }
        headers.insert("x-stowage-job-id".into(), "z".repeat(100_000).into());
        let dropped = bound_headers(&mut headers);
        assert!(dropped > 0);
        assert!(headers_size(&headers) <= MAX_HEADERS_BYTES);
        assert!(headers["x-stowage-job-id"].as_str().unwrap().len() <= MAX_HEADER_VALUE_BYTES);
    }
}
