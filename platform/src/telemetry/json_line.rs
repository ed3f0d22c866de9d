//! The JSON log line: one object per event, the same keys and values as
//! tracing-subscriber's JSON formatter with `flatten_event(true)`,
//! `with_current_span(false)` and `with_span_list(true)`:
//!
//! `{"timestamp":"…","level":"INFO",<the event's fields, message included>,"target":"…","spans":[{<span fields>,"name":"…"},…]}`
//!
//! with the spans in scope outermost first, and `spans` left out when no span is.
//!
//! Why a formatter of our own: tracing-subscriber's parses every span's stored fields
//! back from their JSON text with serde_json for every line, and allocates the parsed
//! values and the timestamp. The gateway writes a line per accepted message, inside the
//! request span, and that formatting was ~6 % of its CPU (docs/PERFORMANCE.md, issue
//! 18). The stored fields are already a JSON object (written by [`JsonFields`] when the
//! span was created or recorded), so this formatter copies them into the line as they
//! are and writes everything else straight into the line's buffer.

use std::fmt::{self, Write};

use tracing::{
    field::{Field, Visit},
    Event, Subscriber,
};
use tracing_log::NormalizeEvent;
use tracing_subscriber::{
    fmt::{
        format::{JsonFields, Writer},
        time::{FormatTime, SystemTime},
        FmtContext, FormatEvent, FormattedFields,
    },
    registry::LookupSpan,
};

/// Formats an event as one JSON object per line (see the module's doc); span fields
/// must be formatted by [`JsonFields`].
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLine;

impl<S> FormatEvent<S, JsonFields> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Records from the `log` crate carry their own level and target.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());

        writer.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut Writer::new(&mut Escaped(&mut writer)))?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(meta.level().as_str())?;
        writer.write_char('"')?;

        let mut fields = Fields { out: &mut writer, result: Ok(()) };
        event.record(&mut fields);
        fields.result?;

        writer.write_str(",\"target\":")?;
        write_string(&mut writer, meta.target())?;

        // As tracing-subscriber does: the list is there when the event has a parent
        // (explicit or current), and it lists the current span's scope.
        let current = ctx.lookup_current();
        if current.is_some() || event.parent().and_then(|id| ctx.span(id)).is_some() {
            writer.write_str(",\"spans\":[")?;
            if let Some(leaf) = current {
                for (i, span) in leaf.scope().from_root().enumerate() {
                    if i > 0 {
                        writer.write_char(',')?;
                    }
                    writer.write_char('{')?;
                    let extensions = span.extensions();
                    let stored = extensions.get::<FormattedFields<JsonFields>>();
                    match stored.map(|fields| object_members(fields.as_str())) {
                        Some(Some("")) | None => {}
                        Some(Some(members)) => {
                            writer.write_str(members)?;
                            writer.write_char(',')?;
                        }
                        // JsonFields writes objects only; say so (in tracing-subscriber's
                        // words) rather than break the line.
                        Some(None) => writer.write_str("\"field_error\":\"field was no a valid object\",")?,
                    }
                    writer.write_str("\"name\":")?;
                    write_string(&mut writer, span.metadata().name())?;
                    writer.write_char('}')?;
                }
            }
            writer.write_char(']')?;
        }
        writer.write_str("}\n")
    }
}

/// What is between the braces of a JSON object's text (`None` if it is not one).
fn object_members(object: &str) -> Option<&str> {
    object.strip_prefix('{')?.strip_suffix('}')
}

/// Writes an event's fields as `,"name":value` members, as tracing-serde's map
/// visitor serializes them (the `Visit` defaults turn the rest into `record_debug`).
struct Fields<'a, 'w> {
    out: &'a mut Writer<'w>,
    /// The first error; later fields are skipped.
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn member(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = write_member(self.out, field, value);
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |out| {
            out.write_char('"')?;
            write!(Escaped(out), "{value:?}")?;
            out.write_char('"')
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |out| write_string(out, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // serde_json's own float text (and `null` for NaN and infinities).
        self.member(field, |out| write!(out, "{}", serde_json::Value::from(value)));
    }
}

/// `,"name":value`.
fn write_member(
    out: &mut Writer<'_>,
    field: &Field,
    value: impl FnOnce(&mut Writer<'_>) -> fmt::Result,
) -> fmt::Result {
    out.write_char(',')?;
    write_string(out, field.name())?;
    out.write_char(':')?;
    value(out)
}

/// `value` as a JSON string, quotes included.
fn write_string(out: &mut impl Write, value: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaped(out).write_str(value)?;
    out.write_char('"')
}

/// Escapes what is written through it as the inside of a JSON string, as serde_json
/// does: `"` and `\`, short escapes for \b \t \n \f \r, `\u00XX` for other control
/// characters; everything else (all non-ASCII included) as it is.
struct Escaped<'a, W: Write + ?Sized>(&'a mut W);

impl<W: Write + ?Sized> Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain_from = 0;
        for (i, byte) in s.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0x00..=0x1f => "",
                _ => continue,
            };
            // Every byte escaped is ASCII, so `i` is a char boundary.
            self.0.write_str(&s[plain_from..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain_from = i + 1;
        }
        self.0.write_str(&s[plain_from..])
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    use serde_json::Value;
    use tracing_subscriber::{fmt::MakeWriter, layer::SubscriberExt};

    use super::*;

    /// Lines written to memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().map_err(|_| io::Error::other("poisoned"))?.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    impl Lines {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("lines").clone()).expect("UTF-8")
        }
    }

    /// Runs `emit` under tracing-subscriber's JSON formatter (as telemetry set it up
    /// before) and under [`JsonLine`]; returns both outputs.
    fn both(emit: impl Fn()) -> (String, String) {
        let theirs = Lines::default();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(theirs.clone())
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(true),
        );
        tracing::subscriber::with_default(subscriber, &emit);
        let ours = Lines::default();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(ours.clone())
                .with_ansi(false)
                .fmt_fields(JsonFields::new())
                .event_format(JsonLine),
        );
        tracing::subscriber::with_default(subscriber, &emit);
        (theirs.text(), ours.text())
    }

    /// The lines as JSON values, timestamps checked for shape and then removed.
    fn parsed(text: &str) -> Vec<Value> {
        text.lines()
            .map(|line| {
                let mut value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                let object = value.as_object_mut().expect("an object");
                let stamp = object.remove("timestamp").expect("a timestamp");
                let stamp = stamp.as_str().expect("a string");
                assert!(stamp.len() == 27 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T', "{stamp}");
                value
            })
            .collect()
    }

    /// Both formatters' lines for `emit`: the same values, keys in the same order.
    fn assert_same(emit: impl Fn()) -> Vec<Value> {
        let (theirs, ours) = both(emit);
        assert!(!theirs.is_empty());
        let (theirs_parsed, ours_parsed) = (parsed(&theirs), parsed(&ours));
        assert_eq!(theirs_parsed, ours_parsed, "\ntheirs: {theirs}\nours:   {ours}");
        // Key order and number text too: only the timestamps may differ.
        let without_stamps = |text: &str| -> Vec<String> {
            text.lines()
                .map(|l| l.split_once(",\"level\"").map(|(_, rest)| rest.to_string()).unwrap_or_default())
                .collect()
        };
        assert_eq!(without_stamps(&theirs), without_stamps(&ours), "\ntheirs: {theirs}\nours:   {ours}");
        assert!(ours.ends_with('\n'));
        ours_parsed
    }

    #[test]
    fn an_event_outside_spans_has_no_span_list() {
        let lines = assert_same(|| tracing::info!(answer = 42, "plain"));
        assert_eq!(lines[0]["message"], "plain");
        assert!(lines[0].get("spans").is_none());
    }

    #[test]
    fn the_access_log_line_in_nested_spans() {
        let lines = assert_same(|| {
            let request = tracing::info_span!("request", trace_id = "4bf92f3577b34da6a3ce929d0e0e4736");
            let _request = request.enter();
            let inner = tracing::info_span!("intake", user = %"alice", n = 3u64);
            let _inner = inner.enter();
            let message_id = uuid::Uuid::nil();
            tracing::info!(%message_id, conversation_id = %"c-1", "message accepted");
        });
        let spans = lines[0]["spans"].as_array().expect("spans");
        assert_eq!(spans[0]["name"], "request");
        assert_eq!(spans[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(spans[1]["n"], 3);
    }

    #[test]
    fn quotes_newlines_and_control_characters_are_escaped() {
        assert_same(|| {
            let span =
                tracing::info_span!("odd \"span\"", text = "a \"quoted\"\nline\t\\ é ✓ \u{1}\u{1f}\u{7f}");
            let _span = span.enter();
            tracing::warn!(
                text = "a \"quoted\"\nline\t\\ é ✓ \u{0}\u{8}\u{c}\r",
                debug = ?("tuple \"x\"", '\n'),
                "message with \"quotes\"\nand a newline {}",
                "\u{1b}[0m"
            );
        });
    }

    #[test]
    fn every_kind_of_field_value() {
        #[derive(Debug)]
        #[allow(dead_code)] // read by Debug only
        struct Point {
            x: i32,
            label: &'static str,
        }
        let error = std::io::Error::other("disk \"full\"");
        assert_same(|| {
            let span = tracing::debug_span!(
                "kinds",
                float = 1.5e300,
                whole = 1.0,
                nan = f64::NAN,
                negative = -7i64,
                flag = true,
                point = ?Point { x: 1, label: "p" },
                later = tracing::field::Empty,
            );
            let _span = span.enter();
            span.record("later", "recorded after");
            tracing::error!(
                float = 0.1,
                big = 1e21,
                infinite = f64::INFINITY,
                negative = -7i64,
                unsigned = u64::MAX,
                wide = i128::MIN,
                flag = false,
                point = ?Point { x: -1, label: "q\"" },
                error = &error as &(dyn std::error::Error + 'static),
                r#type = "raw",
            );
            tracing::info!(only = 1);
        });
    }

    #[test]
    fn an_explicit_parent_outside_the_current_span() {
        assert_same(|| {
            let parent = tracing::info_span!("parent", id = 1);
            tracing::info!(parent: &parent, "explicit, no current span");
            let current = tracing::info_span!("current", id = 2);
            let _current = current.enter();
            tracing::info!(parent: &parent, "explicit, another span current");
            tracing::info!(parent: None, "a root event inside a span");
        });
    }

    #[test]
    fn a_record_of_the_log_crate_has_its_own_level_and_target() {
        let lines = assert_same(|| {
            let span = tracing::info_span!("request", trace_id = "t");
            let _span = span.enter();
            let code = 1;
            // One statement: the record borrows the temporary arguments.
            tracing_log::format_trace(
                &log::Record::builder()
                    .args(format_args!("from librdkafka: \"{code}\""))
                    .level(log::Level::Warn)
                    .target("rdkafka::client")
                    .module_path_static(Some("rdkafka::client"))
                    .file_static(Some("src/client.rs"))
                    .line(Some(7))
                    .build(),
            )
            .expect("dispatched");
        });
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(lines[0]["target"], "rdkafka::client");
    }

    #[test]
    fn a_span_without_fields() {
        let lines = assert_same(|| {
            let outer = tracing::info_span!("outer");
            let _outer = outer.enter();
            tracing::info!("inside");
        });
        assert_eq!(lines[0]["spans"], serde_json::json!([{"name": "outer"}]));
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut every: String = (0u8..=0x7f).map(char::from).collect();
        every.push_str("é✓\u{2028}\u{10ffff}");
        for text in [every.as_str(), "", "plain", "\"", "end\\"] {
            let mut ours = String::new();
            write_string(&mut ours, text).expect("written");
            assert_eq!(ours, serde_json::to_string(text).expect("serialized"), "{text:?}");
        }
    }
}
