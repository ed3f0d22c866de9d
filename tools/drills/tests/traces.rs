//! One chat message is one trace across the real binaries: the gateway, the responder
//! and the memory worker export their spans over OTLP to testkit's collector, and the
//! spans of the message link up as docs/ARCHITECTURE.md ("Traces") draws them: the
//! HTTP server span → the Kafka write → the responder's processing → recall, the LLM
//! call and each write → the memory worker's embed and upsert → the gateway relaying
//! the first token and `done`.

use std::{collections::HashMap, time::Duration};

use drills::{stack::JWT_SECRET, Stack};
use platform::trace_context::TraceParent;
use testkit::{
    otlp::{outline, Collector, ReceivedSpan, SpanKind},
    LlamaServer,
};

/// The spans of one trace, by id, with the questions the test asks of them.
struct Trace<'a> {
    spans: Vec<&'a ReceivedSpan>,
    by_id: HashMap<&'a str, &'a ReceivedSpan>,
}

impl<'a> Trace<'a> {
    fn of(all: &'a [ReceivedSpan], trace_id: &str) -> Self {
        let spans: Vec<&ReceivedSpan> = all.iter().filter(|s| s.trace_id == trace_id).collect();
        let by_id = spans.iter().map(|s| (s.span_id.as_str(), *s)).collect();
        Self { spans, by_id }
    }

    /// The spans of `service` named `name`.
    fn named(&self, service: &str, name: &str) -> Vec<&'a ReceivedSpan> {
        self.spans.iter().copied().filter(|s| s.service == service && s.name == name).collect()
    }

    /// The only span of `service` named `name`.
    fn one(&self, service: &str, name: &str) -> &'a ReceivedSpan {
        let found = self.named(service, name);
        assert_eq!(found.len(), 1, "one {service} span {name:?} in the trace:\n{}", self.outline());
        found[0]
    }

    /// Whether `span` descends from the span `ancestor` (by parent links).
    fn is_under(&self, span: &ReceivedSpan, ancestor: &str) -> bool {
        let mut parent = span.parent_span_id.as_deref();
        while let Some(id) = parent {
            if id == ancestor {
                return true;
            }
            parent = self.by_id.get(id).and_then(|s| s.parent_span_id.as_deref());
        }
        false
    }

    fn outline(&self) -> String {
        outline(&self.spans.iter().map(|s| (*s).clone()).collect::<Vec<_>>())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_message_is_one_trace_from_the_request_to_the_stream_and_memory() {
    let collector = Collector::start().expect("collector");
    let llm = tokio::task::block_in_place(LlamaServer::chat).expect("llama-server");
    let mut stack = Stack::start(llm.base_url()).await.expect("stack");
    let endpoint = collector.endpoint();
    let otel = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let gateway = stack.add_gateway(&otel).expect("gateway").url();
    stack.add_responder(&otel).expect("responder");
    stack.add_memory(&otel).expect("memory");
    let token = loadtest::auth::mint(JWT_SECRET, "tracer", Duration::from_secs(3600)).expect("token");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");

    // The first message makes the memory collection, so the second one's recall reads
    // Qdrant; the second is the one followed, under a trace the caller started.
    let mut conversation: Option<String> = None;
    let mut caller = TraceParent::new_root();
    for text in ["My name is Ada.", "What is my name?"] {
        caller = TraceParent::new_root();
        let mut body = serde_json::json!({"text": text});
        if let Some(id) = &conversation {
            body["conversation_id"] = serde_json::Value::String(id.clone());
        }
        let response = client
            .post(format!("{gateway}/chat"))
            .bearer_auth(&token)
            .header("traceparent", caller.to_string())
            .json(&body)
            .send()
            .await
            .expect("POST /chat");
        assert_eq!(response.status(), 202);
        let trace_header =
            response.headers().get("x-trace-id").and_then(|v| v.to_str().ok()).map(String::from);
        assert_eq!(
            trace_header.as_deref(),
            Some(caller.trace_id_hex().as_str()),
            "the caller's trace continues"
        );
        let accepted: serde_json::Value = response.json().await.expect("202 body");
        conversation = accepted["conversation_id"].as_str().map(String::from);
        let trace_id = caller.trace_id_hex();
        let received = tokio::task::block_in_place(|| {
            collector.wait_for(Duration::from_secs(60), |spans| {
                let trace = Trace::of(spans, &trace_id);
                let relayed_done = trace
                    .named("gateway", "relay model_responses")
                    .iter()
                    .any(|s| s.attribute("chat.reply.event") == Some("done"));
                relayed_done && trace.named("memory", "send memory_events").len() >= 2
            })
        });
        received.unwrap_or_else(|e| panic!("{e:#}"));
    }

    // The exporters send in batches: give stragglers of the second trace a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = collector.spans();
    let trace = Trace::of(&all, &caller.trace_id_hex());
    let show = trace.outline();

    // The gateway: the server span continues the caller's span; the write is under it.
    let server = trace.one("gateway", "POST /chat");
    assert_eq!(server.kind, SpanKind::Server);
    assert_eq!(server.parent_span_id, Some(format!("{:016x}", caller.span_id)), "{show}");
    assert_eq!(server.attribute("http.route"), Some("/chat"));
    assert_eq!(server.attribute("http.response.status_code"), Some("202"));
    let sent = trace.one("gateway", "send user_messages");
    assert_eq!(sent.kind, SpanKind::Producer);
    assert!(trace.is_under(sent, &server.span_id), "the write is part of the request:\n{show}");

    // The responder: processing is a child of the gateway's write; recall, the LLM call
    // and the reply's writes are under it.
    let processed = trace.one("responder", "process user_messages");
    assert_eq!(processed.kind, SpanKind::Consumer);
    assert_eq!(processed.parent_span_id.as_deref(), Some(sent.span_id.as_str()), "{show}");
    let attempt = trace.one("responder", "attempt");
    assert!(trace.is_under(attempt, &processed.span_id), "{show}");
    let recall = trace.one("responder", "recall");
    assert!(trace.is_under(recall, &attempt.span_id), "{show}");
    for name in ["embed", "query chat_memory", "scroll chat_memory"] {
        let step = trace.one("responder", name);
        assert!(trace.is_under(step, &recall.span_id), "{name} is part of recall:\n{show}");
    }
    let chat = trace.one("responder", "chat smollm2");
    assert_eq!(chat.kind, SpanKind::Client);
    assert!(trace.is_under(chat, &attempt.span_id), "{show}");
    assert_eq!(chat.attribute("gen_ai.request.model"), Some("smollm2"));
    let output_tokens: u64 =
        chat.attribute("gen_ai.usage.output_tokens").and_then(|t| t.parse().ok()).unwrap_or(0);
    assert!(output_tokens > 0, "token usage on the LLM span: {:?}", chat.attributes);
    assert!(chat.attribute("gen_ai.server.time_to_first_token").is_some(), "{:?}", chat.attributes);
    let replies = trace.named("responder", "send model_responses");
    assert!(replies.len() >= 2, "a token and `done` at least:\n{show}");
    assert!(
        replies.iter().all(|r| trace.is_under(r, &chat.span_id)),
        "each write is under the LLM call:\n{show}"
    );
    let reply_ids: Vec<&str> = replies.iter().map(|r| r.span_id.as_str()).collect();

    // The gateway relays the first token and `done`, each a child of the write it read.
    let relayed = trace.named("gateway", "relay model_responses");
    for event in ["first_token", "done"] {
        let relay = relayed
            .iter()
            .find(|s| s.attribute("chat.reply.event") == Some(event))
            .unwrap_or_else(|| panic!("no relay span for {event}:\n{show}"));
        assert_eq!(relay.kind, SpanKind::Consumer);
        assert!(reply_ids.contains(&relay.parent_span_id.as_deref().unwrap_or("")), "{show}");
    }

    // The memory worker stores both turns: each processing is a child of the write it
    // read, and the embed and upsert of each are under its store batch.
    let stored_user = trace.one("memory", "process user_messages");
    assert_eq!(stored_user.parent_span_id.as_deref(), Some(sent.span_id.as_str()), "{show}");
    let stored_reply = trace.one("memory", "process model_responses");
    assert!(reply_ids.contains(&stored_reply.parent_span_id.as_deref().unwrap_or("")), "{show}");
    for batch in trace.named("memory", "store batch") {
        assert!(
            trace.is_under(batch, &stored_user.span_id) || trace.is_under(batch, &stored_reply.span_id),
            "{show}"
        );
        for name in ["embed", "upsert chat_memory"] {
            let under: Vec<_> = trace
                .named("memory", name)
                .into_iter()
                .filter(|s| trace.is_under(s, &batch.span_id))
                .collect();
            assert_eq!(under.len(), 1, "one {name} under each store batch:\n{show}");
        }
    }
    assert!(!trace.named("memory", "store batch").is_empty(), "{show}");

    // One trace: every span of the message's processing is in it, none failed, and the
    // three services took part.
    for (service, name) in [("responder", "process user_messages"), ("memory", "process user_messages")] {
        let everywhere = all.iter().filter(|s| s.service == service && s.name == name).count();
        assert_eq!(everywhere, 2, "{service} processed each of the two messages once, each in its own trace");
    }
    assert!(trace.spans.iter().all(|s| !s.failed), "no span failed:\n{show}");
    for service in ["gateway", "responder", "memory"] {
        assert!(trace.spans.iter().any(|s| s.service == service), "{service} is in the trace:\n{show}");
    }
    println!("the second message's trace, {} spans:\n{show}", trace.spans.len());
}
