//! W3C Trace Context (`traceparent`) carried in Kafka record headers.
//!
//! One trace spans gateway → responder → gateway: the gateway starts a trace for each
//! chat message, every record it and the handlers write carries a `traceparent`
//! header, and a handler continues the trace of the record it is processing. Only the
//! header format is needed to carry a trace across Kafka, so this is the format alone
//! (<https://www.w3.org/TR/trace-context/#traceparent-header>), not a tracing SDK.

use std::{fmt, str::FromStr};

use rand::Rng;
use rdkafka::message::{Header, Headers, OwnedHeaders};

/// The Kafka header (and HTTP header) name.
pub const HEADER: &str = "traceparent";

/// A parsed `traceparent`: the trace, the caller's span, and the sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// 16-byte trace id, never all zeros.
    pub trace_id: u128,
    /// 8-byte id of the parent span, never all zeros.
    pub span_id: u64,
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

/// Why a `traceparent` value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid traceparent {value:?}: {reason}")]
pub struct TraceParentError {
    value: String,
    reason: &'static str,
}

impl TraceParent {
    /// Starts a new, sampled trace.
    pub fn new_root() -> Self {
        let mut rng = rand::rng();
        Self { trace_id: rng.random_range(1..=u128::MAX), span_id: rng.random_range(1..=u64::MAX), flags: 1 }
    }

    /// A new span in the same trace, to put on records this span writes.
    pub fn child(&self) -> Self {
        Self { span_id: rand::rng().random_range(1..=u64::MAX), ..*self }
    }

    /// The trace id as 32 lower-case hex digits, as log fields show it.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// Reads the `traceparent` header of a record; `None` if absent or invalid (an
    /// invalid header starts a new trace rather than failing the record).
    pub fn from_headers<H: Headers>(headers: Option<&H>) -> Option<Self> {
        let headers = headers?;
        headers
            .iter()
            .find(|h| h.key == HEADER)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
    }

    /// Adds this as the `traceparent` header.
    pub fn to_headers(&self, headers: OwnedHeaders) -> OwnedHeaders {
        let value = self.to_string();
        headers.insert(Header { key: HEADER, value: Some(&value) })
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

impl FromStr for TraceParent {
    type Err = TraceParentError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let err = |reason| TraceParentError { value: value.chars().take(64).collect(), reason };
        let parts: Vec<&str> = value.trim().split('-').collect();
        let [version, trace, span, flags, ..] = parts[..] else {
            return Err(err("expected version-traceid-parentid-flags"));
        };
        let is_hex =
            |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !is_hex(version, 2) || version == "ff" {
            return Err(err("bad version"));
        }
        // Version 00 has exactly four fields; later versions may append more.
        if version == "00" && parts.len() != 4 {
            return Err(err("version 00 has exactly four fields"));
        }
        if !is_hex(trace, 32) || !is_hex(span, 16) || !is_hex(flags, 2) {
            return Err(err("fields must be lower-case hex of 32, 16 and 2 digits"));
        }
        let trace_id = u128::from_str_radix(trace, 16).map_err(|_| err("bad trace id"))?;
        let span_id = u64::from_str_radix(span, 16).map_err(|_| err("bad parent id"))?;
        let flags = u8::from_str_radix(flags, 16).map_err(|_| err("bad flags"))?;
        if trace_id == 0 || span_id == 0 {
            return Err(err("all-zero ids are invalid"));
        }
        Ok(Self { trace_id, span_id, flags })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_prints_the_spec_example() {
        let tp: TraceParent = SPEC_EXAMPLE.parse().unwrap();
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.span_id, 0x00f067aa0ba902b7);
        assert_eq!(tp.flags, 1);
        assert_eq!(tp.to_string(), SPEC_EXAMPLE);
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(bad.parse::<TraceParent>().is_err(), "accepted {bad:?}");
        }
        // A future version may carry more fields.
        assert!("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
            .parse::<TraceParent>()
            .is_ok());
    }

    #[test]
    fn children_keep_the_trace_and_change_the_span() {
        let root = TraceParent::new_root();
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
        assert_eq!(root.to_string().parse::<TraceParent>().unwrap(), root);
    }

    #[test]
    fn round_trips_through_kafka_headers() {
        let tp = TraceParent::new_root();
        let headers = tp.to_headers(OwnedHeaders::new().insert(Header { key: "other", value: Some("x") }));
        assert_eq!(TraceParent::from_headers(Some(&headers)), Some(tp));
        assert_eq!(TraceParent::from_headers::<OwnedHeaders>(None), None);
        let garbage = OwnedHeaders::new().insert(Header { key: HEADER, value: Some("nope") });
        assert_eq!(TraceParent::from_headers(Some(&garbage)), None);
    }
}
