//! OpenTelemetry traces over OTLP/HTTP, configured by the standard `OTEL_*` variables.
//!
//! Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! is set. When off, [`exporting`] is false and every helper here returns at once
//! (`Span::none()`, the caller's [`TraceParent`]), so the hot path pays one relaxed
//! load. When on, spans come from one of two places, chosen per binary:
//! - [`bridge`]: every `tracing` span becomes an OpenTelemetry span (through
//!   `tracing-opentelemetry`); the handlers, whose spans nest deep inside a record's
//!   work, use it with the `tracing`-based helpers ([`span`], [`start`], [`carry`]…);
//! - [`Direct`]: a span made with the OpenTelemetry SDK itself, its sampling decided
//!   when it starts, before anything is built; the gateway uses only these, so an
//!   unsampled request costs an id and a sampler call, and a sampled one no more than
//!   the SDK's span (its `tracing` spans stay log context).
//!
//! A record's `traceparent` names the span that wrote it, and a batch processor on its
//! own thread exports the spans: a slow or absent collector never blocks or fails a
//! request; a failed export is counted (`otel_export_failures_total`) and logged once
//! per outage.

use std::{
    borrow::Cow,
    sync::{
        atomic::{AtomicBool, Ordering},
        OnceLock,
    },
    time::Duration,
};

use opentelemetry::{
    trace::{
        Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
        Tracer as _, TracerProvider as _,
    },
    KeyValue,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter},
    Resource,
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{filter::LevelFilter, registry::LookupSpan, Layer};

use crate::{
    settings::{Env, SettingsError},
    trace_context::TraceParent,
};

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The tracer of the running export (the first one, if a test starts several).
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Metric: exports the collector did not accept (its spans are lost).
pub const EXPORT_FAILURES: &str = "otel_export_failures_total";
/// Metric: spans handed to the collector.
pub const SPANS_EXPORTED: &str = "otel_spans_exported_total";

/// Whether spans are exported (set once, when logging starts).
#[inline]
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Which traces are recorded (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Every trace.
    AlwaysOn,
    /// None.
    AlwaysOff,
    /// This fraction of trace ids.
    Ratio(f64),
    /// The caller's decision when there is one; `root` otherwise.
    ParentBased(RootSampling),
}

/// How a [`Sampling::ParentBased`] sampler decides for a new trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RootSampling {
    /// Record it.
    AlwaysOn,
    /// Drop it.
    AlwaysOff,
    /// Record this fraction.
    Ratio(f64),
}

/// The trace export's settings, from the standard variables.
#[derive(Debug, Clone, PartialEq)]
pub struct OtelSettings {
    /// Where spans are POSTed (`…/v1/traces`).
    pub endpoint: String,
    /// `service.name` (`OTEL_SERVICE_NAME`, else the binary's name).
    pub service_name: String,
    /// Which traces are kept.
    pub sampling: Sampling,
    /// `OTEL_RESOURCE_ATTRIBUTES`, as key/value pairs.
    pub resource: Vec<(String, String)>,
    /// Longest wait for the collector per export (`OTEL_EXPORTER_OTLP_TIMEOUT`, ms).
    pub timeout: Duration,
}

impl OtelSettings {
    /// Reads the settings; `None` when export is off (no endpoint, `OTEL_SDK_DISABLED=true`
    /// or `OTEL_TRACES_EXPORTER=none`).
    pub fn from_env(env: &Env, service: &str) -> Result<Option<Self>, SettingsError> {
        if env.optional("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        if env.one_of("OTEL_TRACES_EXPORTER", &["otlp", "none"], "otlp")? == "none" {
            return Ok(None);
        }
        let endpoint = match (
            env.optional("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            env.optional("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(traces), _) => checked_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces)?,
            (None, Some(base)) => {
                format!(
                    "{}/v1/traces",
                    checked_url("OTEL_EXPORTER_OTLP_ENDPOINT", base)?.trim_end_matches('/')
                )
            }
            (None, None) => return Ok(None),
        };
        for name in ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] {
            env.one_of(name, &["http/protobuf"], "http/protobuf")?;
        }
        let resource = resource_attributes(env)?;
        let service_name = env
            .optional("OTEL_SERVICE_NAME")
            .or_else(|| resource.iter().find(|(k, _)| k == "service.name").map(|(_, v)| v.clone()))
            .unwrap_or_else(|| service.to_string());
        let timeout_ms: u64 = env.parse_or("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000)?;
        Ok(Some(Self {
            endpoint,
            service_name,
            sampling: sampling(env)?,
            resource,
            timeout: Duration::from_millis(timeout_ms.max(1)),
        }))
    }
}

fn checked_url(name: &str, value: String) -> Result<String, SettingsError> {
    if value.starts_with("http://") || value.starts_with("https://") {
        Ok(value)
    } else {
        Err(SettingsError::invalid(name, &value, "must start with http:// or https:// (OTLP over HTTP)"))
    }
}

fn sampling(env: &Env) -> Result<Sampling, SettingsError> {
    let name = env.one_of(
        "OTEL_TRACES_SAMPLER",
        &[
            "always_on",
            "always_off",
            "traceidratio",
            "parentbased_always_on",
            "parentbased_always_off",
            "parentbased_traceidratio",
        ],
        "parentbased_always_on",
    )?;
    let ratio = || -> Result<f64, SettingsError> {
        let ratio: f64 = env.parse_or("OTEL_TRACES_SAMPLER_ARG", 1.0)?;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(SettingsError::invalid(
                "OTEL_TRACES_SAMPLER_ARG",
                &ratio.to_string(),
                "must be within 0..=1",
            ));
        }
        Ok(ratio)
    };
    Ok(match name.as_str() {
        "always_on" => Sampling::AlwaysOn,
        "always_off" => Sampling::AlwaysOff,
        "traceidratio" => Sampling::Ratio(ratio()?),
        "parentbased_always_off" => Sampling::ParentBased(RootSampling::AlwaysOff),
        "parentbased_traceidratio" => Sampling::ParentBased(RootSampling::Ratio(ratio()?)),
        _ => Sampling::ParentBased(RootSampling::AlwaysOn),
    })
}

fn resource_attributes(env: &Env) -> Result<Vec<(String, String)>, SettingsError> {
    let Some(raw) = env.optional("OTEL_RESOURCE_ATTRIBUTES") else { return Ok(Vec::new()) };
    raw.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
            _ => {
                Err(SettingsError::invalid("OTEL_RESOURCE_ATTRIBUTES", &raw, "expected key=value,key=value"))
            }
        })
        .collect()
}

impl Sampling {
    fn sampler(self) -> Sampler {
        let root = |r: RootSampling| match r {
            RootSampling::AlwaysOn => Sampler::AlwaysOn,
            RootSampling::AlwaysOff => Sampler::AlwaysOff,
            RootSampling::Ratio(r) => Sampler::TraceIdRatioBased(r),
        };
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::Ratio(r) => Sampler::TraceIdRatioBased(r),
            Self::ParentBased(r) => Sampler::ParentBased(Box::new(root(r))),
        }
    }
}

/// The running export; dropping it flushes the spans still queued (bounded wait).
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        EXPORTING.store(false, Ordering::Relaxed);
        if let Err(err) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!(error = %err, "flushing the last spans failed");
        }
    }
}

/// Starts exporting spans under `settings`; marks export as on. Keep the handle until
/// exit.
pub fn export(settings: &OtelSettings) -> Result<Exporter, SettingsError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(&settings.endpoint)
        .with_timeout(settings.timeout)
        .build()
        .map_err(|e| {
            SettingsError::invalid("OTEL_EXPORTER_OTLP_ENDPOINT", &settings.endpoint, e.to_string())
        })?;
    let resource = Resource::builder_empty()
        .with_attributes(settings.resource.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())))
        .with_service_name(settings.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(Counted::new(exporter))
        .with_sampler(settings.sampling.sampler())
        .with_resource(resource)
        .build();
    let _ = TRACER.set(provider.tracer("chatstack"));
    for name in [EXPORT_FAILURES, SPANS_EXPORTED] {
        metrics::counter!(name).absolute(0);
    }
    EXPORTING.store(true, Ordering::Relaxed);
    Ok(Exporter { provider })
}

/// The `tracing` layer that turns every span into an exported OpenTelemetry span;
/// `None` when export is off.
pub fn bridge<S>() -> Option<impl Layer<S>>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let tracer = TRACER.get().filter(|_| exporting())?.clone();
    Some(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            // Nothing here reads OpenTelemetry's current context (`span.context()` is used
            // instead), and activating it on every poll of every instrumented future is
            // the layer's largest cost per request.
            .with_context_activation(false)
            // Info events are in the logs; turning each into a span event cost more per
            // request than the spans. Warnings and errors stay on their spans (the others
            // are counted in `otel.tracing_event_count`).
            .with_counting_event_filter(LevelFilter::WARN),
    )
}

/// Counts what the collector accepted and refused, and logs an outage once.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    failing: AtomicBool,
}

impl<E> Counted<E> {
    fn new(inner: E) -> Self {
        Self { inner, failing: AtomicBool::new(false) }
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                metrics::counter!(SPANS_EXPORTED).increment(spans);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("trace export recovered");
                }
            }
            Err(err) => {
                metrics::counter!(EXPORT_FAILURES).increment(1);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %err,
                        "trace export failed: spans are dropped until the collector answers \
                         (counted in otel_export_failures_total; logged once per outage)"
                    );
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

/// What kind of work a span stands for (OpenTelemetry's span kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Work inside the process.
    Internal,
    /// Answering a request.
    Server,
    /// A call to another service (Qdrant, the LLM).
    Client,
    /// Writing a record.
    Producer,
    /// Processing a record.
    Consumer,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Internal => "internal",
            Self::Server => "server",
            Self::Client => "client",
            Self::Producer => "producer",
            Self::Consumer => "consumer",
        }
    }

    fn span_kind(self) -> SpanKind {
        match self {
            Self::Internal => SpanKind::Internal,
            Self::Server => SpanKind::Server,
            Self::Client => SpanKind::Client,
            Self::Producer => SpanKind::Producer,
            Self::Consumer => SpanKind::Consumer,
        }
    }
}

/// A span made with the OpenTelemetry SDK directly, not through `tracing`. The sampler
/// decides when it starts; an unsampled span is dropped there and only its context is
/// kept, so the setters below cost nothing then (check [`Direct::recording`] before
/// building a costly value). The span ends when dropped.
pub struct Direct {
    span: Option<opentelemetry_sdk::trace::Span>,
    trace: TraceParent,
}

impl Direct {
    /// A span continuing `caller`'s trace, or starting a new one. When not exporting,
    /// its context is a fresh child id of `caller` (or a new trace), as [`start`] gives.
    pub fn continuing(caller: Option<&TraceParent>, name: &'static str, kind: Kind) -> Self {
        Self::start(caller, name, kind).unwrap_or_else(|| Self {
            span: None,
            trace: caller.map(|c| c.child()).unwrap_or_else(TraceParent::new_root),
        })
    }

    /// A span under `parent`. When not exporting, its context is `parent` itself, as
    /// [`carry`] gives.
    pub fn child_of(parent: &TraceParent, name: &'static str, kind: Kind) -> Self {
        Self::start(Some(parent), name, kind).unwrap_or(Self { span: None, trace: *parent })
    }

    fn start(parent: Option<&TraceParent>, name: &'static str, kind: Kind) -> Option<Self> {
        let tracer = TRACER.get().filter(|_| exporting())?;
        let cx = match parent {
            Some(parent) => opentelemetry::Context::new().with_remote_span_context(remote(parent)),
            None => opentelemetry::Context::new(),
        };
        let span = tracer.span_builder(name).with_kind(kind.span_kind()).start_with_context(tracer, &cx);
        let trace = trace_parent(span.span_context())?;
        Some(Self { span: span.is_recording().then_some(span), trace })
    }

    /// The context to log and to hand on (a record's `traceparent`).
    pub fn trace(&self) -> TraceParent {
        self.trace
    }

    /// Whether the span is recorded (exported): only then are names and attributes kept.
    pub fn recording(&self) -> bool {
        self.span.is_some()
    }

    /// Renames the span (e.g. once the route is known).
    pub fn rename(&mut self, name: impl Into<Cow<'static, str>>) {
        if let Some(span) = &mut self.span {
            span.update_name(name);
        }
    }

    /// Sets attribute `key`.
    pub fn set(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(span) = &mut self.span {
            span.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed with `message`.
    pub fn fail(&mut self, message: impl ToString) {
        if let Some(span) = &mut self.span {
            span.set_status(opentelemetry::trace::Status::error(message.to_string()));
        }
    }
}

/// A span named `name` under the current one when exporting; `Span::none()` otherwise.
pub fn span(name: &str, kind: Kind) -> Span {
    if !exporting() {
        return Span::none();
    }
    tracing::info_span!("otel", otel.name = name, otel.kind = kind.as_str())
}

/// A span named `name` under `parent` when exporting; `Span::none()` otherwise.
pub fn span_under(parent: &Span, name: &str, kind: Kind) -> Span {
    if !exporting() {
        return Span::none();
    }
    tracing::info_span!(parent: parent, "otel", otel.name = name, otel.kind = kind.as_str())
}

/// The span of writing one record to `topic` (messaging conventions), when exporting.
pub fn producer_span(topic: &'static str) -> Span {
    if !exporting() {
        return Span::none();
    }
    let span = span(&format!("send {topic}"), Kind::Producer);
    set(&span, "messaging.system", "kafka");
    set(&span, "messaging.operation.type", "send");
    set(&span, "messaging.destination.name", topic);
    span
}

/// Makes `span` (not yet entered) continue `caller`'s trace when one came with the
/// request or record, and returns the trace context of `span` itself: the one to log
/// and to hand on. When not exporting, that is a fresh child id of `caller` (or a new
/// trace), as before.
pub fn start(span: &Span, caller: Option<TraceParent>) -> TraceParent {
    if exporting() {
        if let Some(caller) = caller {
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote(&caller)));
        }
        if let Some(own) = of(span) {
            return own;
        }
    }
    caller.map(|c| c.child()).unwrap_or_else(TraceParent::new_root)
}

/// The `traceparent` a record written inside `span` carries: `span`'s own context when
/// exporting (so the reader's span becomes its child), else `fallback`.
pub fn carry(span: &Span, fallback: &TraceParent) -> TraceParent {
    if exporting() {
        if let Some(own) = of(span) {
            return own;
        }
    }
    *fallback
}

/// Sets attribute `key` of `span` (beyond its declared fields) when exporting.
pub fn set(span: &Span, key: &'static str, value: impl Into<opentelemetry::Value>) {
    if exporting() {
        span.set_attribute(key, value);
    }
}

/// Adds a link from `span` to `other` (a batch span to the records it serves).
pub fn link(span: &Span, other: &Span) {
    if exporting() {
        let cx = other.context();
        span.add_link(cx.span().span_context().clone());
    }
}

/// Marks `span` failed with `message`.
pub fn fail(span: &Span, message: impl ToString) {
    if exporting() {
        span.set_status(opentelemetry::trace::Status::error(message.to_string()));
    }
}

fn remote(parent: &TraceParent) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(parent.trace_id.to_be_bytes()),
        SpanId::from_bytes(parent.span_id.to_be_bytes()),
        TraceFlags::new(parent.flags),
        true,
        TraceState::default(),
    )
}

/// The trace context of `span`, `None` when it has none (filtered out, or no layer).
fn of(span: &Span) -> Option<TraceParent> {
    trace_parent(span.context().span().span_context())
}

fn trace_parent(sc: &SpanContext) -> Option<TraceParent> {
    sc.is_valid().then(|| TraceParent {
        trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
        flags: sc.trace_flags().to_u8(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Option<OtelSettings>, SettingsError> {
        OtelSettings::from_env(&Env::from_pairs(pairs.iter().copied()), "gateway")
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        assert_eq!(settings(&[]).unwrap(), None);
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert_eq!(settings(&[endpoint, ("OTEL_SDK_DISABLED", "true")]).unwrap(), None);
        assert_eq!(settings(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]).unwrap(), None);
    }

    #[test]
    fn reads_the_standard_variables() {
        let on = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod, k8s.namespace.name=chat"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(on.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(on.service_name, "gateway");
        assert_eq!(on.sampling, Sampling::ParentBased(RootSampling::Ratio(0.1)));
        assert_eq!(on.resource[1], ("k8s.namespace.name".to_string(), "chat".to_string()));
        assert_eq!(on.timeout, Duration::from_secs(10));

        let named = settings(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://collector/custom"),
            ("OTEL_SERVICE_NAME", "chat-gateway"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(named.endpoint, "https://collector/custom");
        assert_eq!(named.service_name, "chat-gateway");
        assert_eq!(named.sampling, Sampling::ParentBased(RootSampling::AlwaysOn));
    }

    #[test]
    fn names_the_setting_that_is_wrong() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        for (pairs, name) in [
            (vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")], "OTEL_EXPORTER_OTLP_ENDPOINT"),
            (vec![endpoint, ("OTEL_TRACES_SAMPLER", "sometimes")], "OTEL_TRACES_SAMPLER"),
            (
                vec![endpoint, ("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "2")],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (vec![endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")], "OTEL_EXPORTER_OTLP_PROTOCOL"),
            (vec![endpoint, ("OTEL_RESOURCE_ATTRIBUTES", "novalue")], "OTEL_RESOURCE_ATTRIBUTES"),
        ] {
            let err = settings(&pairs).unwrap_err().to_string();
            assert!(err.contains(name), "{err:?} does not name {name}");
        }
    }

    #[test]
    fn helpers_cost_nothing_and_keep_the_trace_when_not_exporting() {
        assert!(!exporting());
        assert!(span("x", Kind::Internal).is_none());
        assert!(producer_span("user_messages").is_none());
        let caller = TraceParent::new_root();
        let own = start(&Span::none(), Some(caller));
        assert_eq!(own.trace_id, caller.trace_id);
        assert_ne!(own.span_id, caller.span_id);
        assert_eq!(carry(&Span::none(), &own), own);

        let mut server = Direct::continuing(Some(&caller), "request", Kind::Server);
        assert!(!server.recording());
        server.set("http.route", "/chat");
        assert_eq!(server.trace().trace_id, caller.trace_id);
        assert_ne!(server.trace().span_id, caller.span_id);
        assert_eq!(Direct::child_of(&own, "send", Kind::Producer).trace(), own);
    }
}
