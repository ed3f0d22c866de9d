//! Log initialisation (JSON lines for clusters, readable text for a terminal) and, when
//! an OTLP endpoint is set, trace export ([`crate::otel`]).

mod json_line;

use tracing_subscriber::{
    fmt,
    fmt::{format::JsonFields, MakeWriter},
    layer::SubscriberExt,
    util::SubscriberInitExt,
    EnvFilter, Layer,
};

use crate::{
    otel::{self, OtelSettings},
    settings::{Env, SettingsError},
};

/// What logging started; keep it until exit: dropping it flushes the spans still queued.
#[must_use = "dropping it stops trace export"]
pub struct Telemetry {
    _exporter: Option<otel::Exporter>,
}

/// Where a binary's exported spans come from (see [`otel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spans {
    /// Every `tracing` span becomes an OpenTelemetry span.
    FromTracing,
    /// Only [`otel::Direct`] spans are exported; `tracing` spans stay log context.
    Direct,
}

/// Installs the global `tracing` subscriber for `service`.
///
/// `LOG_FORMAT` is `json` (default; one object per line with the fields of every span
/// in scope under `spans`, so message_id / conversation_id / trace_id reach every line)
/// or `text`.
/// `RUST_LOG` filters as usual and defaults to `info`; it filters exported spans too
/// (ours are at `info`). The `OTEL_*` variables of [`OtelSettings`] turn trace export on;
/// `spans` says which spans it exports.
pub fn init(env: &Env, service: &'static str, spans: Spans) -> Result<Telemetry, SettingsError> {
    init_with_writer(env, service, spans, std::io::stderr)
}

/// As [`init`], with the log lines written by `writer` instead of straight to stderr
/// (the gateway buffers them: one `write()` per line was a visible share of its CPU).
pub fn init_with_writer<W>(
    env: &Env,
    service: &'static str,
    spans: Spans,
    writer: W,
) -> Result<Telemetry, SettingsError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let format = env.one_of("LOG_FORMAT", &["json", "text"], "json")?;
    let filter_spec = env.optional("RUST_LOG").unwrap_or_else(|| "info".into());
    let filter = EnvFilter::try_new(&filter_spec).map_err(|e| SettingsError::Invalid {
        name: "RUST_LOG".into(),
        value: filter_spec.clone(),
        reason: e.to_string(),
    })?;
    let otel_settings = OtelSettings::from_env(env, service)?;
    let logs = fmt::layer().with_writer(writer);
    let logs = if format == "json" {
        // Every span in scope, outermost first: the request's or record's span (with
        // trace_id) is seldom the innermost one. The lines are those of
        // tracing-subscriber's `json().flatten_event(true).with_current_span(false)
        // .with_span_list(true)`, written without re-parsing the span fields (json_line).
        logs.with_ansi(false).fmt_fields(JsonFields::new()).event_format(json_line::JsonLine).boxed()
    } else {
        logs.compact().boxed()
    };
    let exporter = otel_settings.as_ref().map(otel::export).transpose()?;
    let traces = (spans == Spans::FromTracing).then(otel::bridge).flatten();
    // A second init (e.g. in tests) keeps the first subscriber; that is harmless.
    let _ = tracing_subscriber::registry().with(filter).with(logs).with(traces).try_init();
    match &otel_settings {
        Some(settings) => tracing::info!(
            service = %settings.service_name,
            endpoint = %settings.endpoint,
            sampling = ?settings.sampling,
            "exporting traces over OTLP"
        ),
        None => {
            tracing::debug!(service, "logging initialised; trace export off (no OTEL_EXPORTER_OTLP_ENDPOINT)")
        }
    }
    Ok(Telemetry { _exporter: exporter })
}
