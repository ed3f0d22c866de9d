//! An OTLP/HTTP trace collector for tests: it accepts `POST /v1/traces` in the OTLP
//! protobuf encoding (the protocol's own message definitions, from
//! `opentelemetry-proto`) and keeps every span it receives, so a test can assert what
//! real binaries exported. No collector binary installs from the registries this
//! project may use (the OpenTelemetry Collector ships as a Go binary or a container
//! image), hence this one, which implements only the receiving end of the protocol.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context;
use axum::{body::Bytes, extract::State, http::StatusCode, response::IntoResponse, routing::post, Router};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::{any_value, AnyValue, KeyValue},
};
use prost::Message;
use tokio::sync::oneshot;

/// OpenTelemetry's span kinds, as the protocol numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// Not set.
    Unspecified,
    /// Internal work.
    Internal,
    /// Serving a request.
    Server,
    /// Calling another service.
    Client,
    /// Writing a message.
    Producer,
    /// Processing a message.
    Consumer,
}

impl SpanKind {
    fn from_proto(kind: i32) -> Self {
        match kind {
            1 => Self::Internal,
            2 => Self::Server,
            3 => Self::Client,
            4 => Self::Producer,
            5 => Self::Consumer,
            _ => Self::Unspecified,
        }
    }
}

/// One received span, with its ids as lower-case hex.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The exporting process's `service.name`.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// Its kind.
    pub kind: SpanKind,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits; `None` for a root span.
    pub parent_span_id: Option<String>,
    /// Attributes, values rendered as text.
    pub attributes: BTreeMap<String, String>,
    /// The span ids this span links to.
    pub links: Vec<String>,
    /// Whether its status is "error".
    pub failed: bool,
}

impl ReceivedSpan {
    /// Attribute `key`, if set.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// A running collector; stops when dropped.
pub struct Collector {
    port: u16,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Collector {
    /// Starts a collector on a free loopback port, on a thread of its own (so it serves
    /// whatever runtime, if any, the test uses).
    pub fn start() -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the collector")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let state = spans.clone();
        let thread = std::thread::Builder::new().name("otlp-collector".into()).spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                let app = Router::new().route("/v1/traces", post(receive)).with_state(state);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await;
            })
        })?;
        Ok(Self { port, spans, stop: Some(stop), thread: Some(thread) })
    }

    /// The base URL to set as `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until `done` holds for the spans received, polling every 100 ms; the spans,
    /// or an error after `timeout` that lists what arrived.
    pub fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> anyhow::Result<Vec<ReceivedSpan>> {
        let started = Instant::now();
        loop {
            let spans = self.spans();
            if done(&spans) {
                return Ok(spans);
            }
            if started.elapsed() > timeout {
                anyhow::bail!(
                    "the spans expected did not arrive within {timeout:?}; received:\n{}",
                    outline(&spans)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One line per span (service, name, kind, ids), for failure messages.
pub fn outline(spans: &[ReceivedSpan]) -> String {
    let mut out = String::new();
    for s in spans {
        let _ = writeln!(
            out,
            "  {:<10} {:<32} {:<9} trace={} span={} parent={}",
            s.service,
            s.name,
            format!("{:?}", s.kind),
            s.trace_id,
            s.span_id,
            s.parent_span_id.as_deref().unwrap_or("-")
        );
    }
    out
}

async fn receive(State(spans): State<Arc<Mutex<Vec<ReceivedSpan>>>>, body: Bytes) -> impl IntoResponse {
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(request) => request,
        Err(err) => {
            return (StatusCode::BAD_REQUEST, format!("not an OTLP trace request: {err}")).into_response()
        }
    };
    let received = flatten(request);
    if let Ok(mut spans) = spans.lock() {
        spans.extend(received);
    }
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    (StatusCode::OK, [("content-type", "application/x-protobuf")], answer).into_response()
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.map(|r| r.attributes).unwrap_or_default();
        let service = attributes(&resource).remove("service.name").unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    kind: SpanKind::from_proto(span.kind),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty()).then(|| hex(&span.parent_span_id)),
                    attributes: attributes(&span.attributes),
                    links: span.links.iter().map(|l| hex(&l.span_id)).collect(),
                    // StatusCode 2 is "error".
                    failed: span.status.is_some_and(|s| s.code == 2),
                });
            }
        }
    }
    out
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(text).unwrap_or_default())).collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
