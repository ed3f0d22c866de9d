//! Every answer names its trace, so a user's bug report leads to the logs of the
//! request: the `x-trace-id` header on every route, `error.trace_id` in JSON error
//! bodies, a caller's `traceparent` continued into the message's record and its log
//! lines, and the message's trace in an SSE `error` event.

use std::time::Duration;

use platform::{
    events::{ModelResponse, ReplyBody, UserMessage},
    kafka::publish,
    topics,
    trace_context::TraceParent,
};
use serde_json::json;
use testkit::kafka::{header, Kafka};

use crate::common::{next_event, open_stream, token, Gateway};

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn trace_id_of(response: &reqwest::Response) -> String {
    let value = response.headers().get("x-trace-id").expect("an x-trace-id header");
    let id = value.to_str().expect("ASCII").to_string();
    assert!(id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn every_answer_and_every_error_names_the_requests_trace() {
    let kafka = Kafka::start(2).await;
    let gateway = Gateway::start(&kafka, &[]);
    let client = reqwest::Client::new();
    let alice = token("alice");

    let malformed = client
        .post(gateway.url("/chat"))
        .bearer_auth(&alice)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("POST /chat");
    assert_eq!(malformed.status(), 400);
    let id = trace_id_of(&malformed);
    let body: serde_json::Value = malformed.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "malformed_json");
    assert_eq!(body["error"]["trace_id"], id, "the body names the header's trace");

    let anonymous = client.get(gateway.url("/stream?conversation_id=x")).send().await.expect("GET");
    assert_eq!(anonymous.status(), 401);
    let id = trace_id_of(&anonymous);
    let body: serde_json::Value = anonymous.json().await.expect("JSON");
    assert_eq!(body["error"]["trace_id"], id);

    for path in ["/health", "/", "/openapi.json", "/no-such-route"] {
        let response = client.get(gateway.url(path)).send().await.expect("GET");
        trace_id_of(&response);
    }
    let first = trace_id_of(&client.get(gateway.url("/health")).send().await.expect("GET"));
    let second = trace_id_of(&client.get(gateway.url("/health")).send().await.expect("GET"));
    assert_ne!(first, second, "a request without traceparent starts its own trace");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callers_trace_reaches_the_record_and_the_error_event_of_its_message() {
    let kafka = Kafka::start(2).await;
    let gateway = Gateway::start(&kafka, &[]);
    let client = reqwest::Client::new();
    let alice = token("alice");
    let mut stored = kafka.watch(topics::USER_MESSAGES);

    let accepted = client
        .post(gateway.url("/chat"))
        .bearer_auth(&alice)
        .header("traceparent", CALLER)
        .json(&json!({"text": "Hello"}))
        .send()
        .await
        .expect("POST /chat");
    assert_eq!(accepted.status(), 202);
    assert_eq!(trace_id_of(&accepted), CALLER_TRACE, "the caller's trace is continued");
    let body: serde_json::Value = accepted.json().await.expect("JSON");
    let conversation_id = body["conversation_id"].as_str().expect("conversation_id").to_string();

    let records = stored.until(Duration::from_secs(20), |seen| !seen.is_empty()).await;
    let traceparent = header(&records[0], "traceparent").expect("a traceparent header");
    let record_trace: TraceParent = traceparent.parse().expect("a valid traceparent");
    assert_eq!(record_trace.trace_id_hex(), CALLER_TRACE, "the message's record carries the trace on");
    let message: UserMessage =
        platform::events::decode(rdkafka::Message::payload(&records[0]).expect("payload")).expect("event");

    // The JSON log line of the accepted message carries the trace, though it is
    // written in a span nested under the request's.
    // Info lines are buffered (up to 100 ms, gateway/src/logs.rs).
    let mut accepted_line = None;
    for _ in 0..50 {
        accepted_line = gateway
            .process
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["message"] == "message accepted");
        if accepted_line.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let accepted_line = accepted_line
        .unwrap_or_else(|| panic!("no JSON line `message accepted`:\n{}", gateway.process.log()));
    assert!(accepted_line.to_string().contains(CALLER_TRACE), "{accepted_line}");

    // A handler's error event, written in the message's trace, shows it to the user.
    let mut stream = open_stream(&client, &gateway, &alice, &conversation_id, None).await;
    let error = ModelResponse::for_message(
        &message,
        uuid::Uuid::new_v4(),
        ReplyBody::Error { code: "llm_unavailable".into(), message: "try again".into() },
    );
    let producer = kafka.settings.producer().expect("producer");
    publish(&producer, &error, &record_trace.child(), Duration::from_secs(10)).await.expect("published");
    let event = next_event(&mut stream).await;
    assert_eq!(event.event, "error");
    let data: serde_json::Value = serde_json::from_str(&event.data).expect("JSON data");
    assert_eq!(data["trace_id"], CALLER_TRACE, "{data}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_is_down_fails_no_request_and_is_logged_once_and_counted() {
    let kafka = Kafka::start(2).await;
    // Nothing listens on this port: every export is refused.
    let closed = testkit::free_port().expect("port");
    let endpoint = format!("http://127.0.0.1:{closed}");
    let gateway = Gateway::start(
        &kafka,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("RATE_LIMIT_PER_MINUTE", "0"),
        ],
    );
    let client = reqwest::Client::new();
    let alice = token("alice");
    for i in 0..20 {
        let started = std::time::Instant::now();
        let response = client
            .post(gateway.url("/chat"))
            .bearer_auth(&alice)
            .json(&json!({"text": format!("message {i}")}))
            .send()
            .await
            .expect("POST /chat");
        assert_eq!(response.status(), 202, "an export failure never fails a request");
        assert!(started.elapsed() < Duration::from_secs(2), "nor waits for the collector");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics_url = gateway.metrics_url.clone();
    let mut failures = 0.0;
    for _ in 0..100 {
        let text = client.get(&metrics_url).send().await.expect("metrics").text().await.expect("text");
        failures = testkit::metric_total(&text, "otel_export_failures_total");
        if failures >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failures >= 2.0, "failed exports are counted: {failures}");
    let log = gateway.process.log();
    let logged = log.lines().filter(|l| l.contains("trace export failed")).count();
    assert_eq!(logged, 1, "the outage is logged once:\n{log}");
}
