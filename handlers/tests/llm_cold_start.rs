//! An LLM that is not there yet (vLLM scaled from zero, llama-server still loading)
//! against a real broker and a real llama-server started late: the message waits
//! uncommitted and is answered once the server is up, nothing dead-lettered; past the
//! cold-start budget the user gets an error and the record a dead letter. Also the
//! group's start commit on assignment, for partitions the group has no commit for.

mod common;

use std::time::{Duration, Instant};

use common::{handler_env, has_final, llm_env, replies_of, HandlerProcess};
use platform::{
    events::{ReplyBody, UserMessage},
    topics,
};
use testkit::{
    kafka::{header, Kafka},
    LlamaServer,
};
use uuid::Uuid;

const RESPONDER: &str = env!("CARGO_BIN_EXE_responder");
const USER_MESSAGES: &[&str] = &[topics::USER_MESSAGES];
const MINUTE: Duration = Duration::from_secs(60);

/// A responder whose LLM is `127.0.0.1:port`, with `budget_secs` of cold start; Qdrant
/// is left out (memory is optional for an answer).
fn responder_env(kafka: &Kafka, port: u16, budget_secs: u64) -> std::collections::HashMap<String, String> {
    let closed = format!("http://127.0.0.1:{}", testkit::free_port().expect("port"));
    let mut env = handler_env(kafka, &closed);
    env.extend(llm_env(&format!("http://127.0.0.1:{port}/v1"), 16));
    env.insert("LLM_COLD_START_SECS".into(), budget_secs.to_string());
    env.insert("HANDLER_MAX_ATTEMPTS".into(), "2".into());
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_sent_before_the_llm_is_up_is_answered_once_it_is_and_nothing_is_dead_lettered() {
    let kafka = Kafka::start(2).await;
    // The group as the broker leaves it once its commits expired: no commit anywhere.
    kafka.delete_group(topics::RESPONDER_GROUP).await;
    assert!(
        kafka.committed(topics::RESPONDER_GROUP, USER_MESSAGES).await.iter().all(|(_, _, c)| c.is_none()),
        "the group's offsets are gone"
    );
    let llm_port = testkit::free_port().expect("port");
    let responder = HandlerProcess::start("responder", RESPONDER, &responder_env(&kafka, llm_port, 120));

    // On assignment the responder committed where it starts on every partition, so the
    // lag KEDA reads is what is really there to do (0 on this idle topic), not the log.
    let committed = kafka.committed(topics::RESPONDER_GROUP, USER_MESSAGES).await;
    assert!(
        committed.iter().all(|(_, _, c)| *c == Some(0)),
        "a start commit on every partition: {committed:?}\n{}",
        responder.process.log_tail()
    );
    assert_eq!(kafka.lag(topics::RESPONDER_GROUP, USER_MESSAGES).await, 0);

    let mut replies = kafka.watch(topics::MODEL_RESPONSES);
    let mut dlq = kafka.watch(&topics::dlq(topics::USER_MESSAGES));
    let msg = UserMessage::new(Uuid::new_v4(), "alice", "Hello, are you there?");
    kafka.send(&msg).await;
    let sent = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    // Still waiting: not answered, not failed, not committed.
    assert!(replies_of(replies.drain(Duration::from_millis(500)).await, msg.message_id).is_empty());
    assert_eq!(kafka.lag(topics::RESPONDER_GROUP, USER_MESSAGES).await, 1, "the message waits uncommitted");
    assert_eq!(
        testkit::http_status(responder.port, "/ready"),
        Some(503),
        "unready while its LLM is unreachable"
    );

    let _llm = tokio::task::block_in_place(|| LlamaServer::chat_on(llm_port)).expect("llama-server");
    let seen = replies.until(MINUTE, |seen| has_final(seen, msg.message_id)).await;
    let answered_after = sent.elapsed();
    let events = replies_of(seen, msg.message_id);
    let finals: Vec<_> = events.iter().filter(|e| e.is_final()).collect();
    assert_eq!(finals.len(), 1, "one final event: {events:?}");
    assert!(matches!(finals[0].body, ReplyBody::Done { .. }), "answered, not errored: {events:?}");
    kafka.wait_lag_zero(topics::RESPONDER_GROUP, USER_MESSAGES, Duration::from_secs(10)).await;
    assert!(dlq.drain(Duration::from_secs(1)).await.is_empty(), "nothing dead-lettered");
    let metrics = responder.metrics().await;
    assert!(
        testkit::metric_with(&metrics, "responder_llm_unreachable_total", "outcome=\"waited\"") >= 1.0,
        "the wait is counted"
    );
    assert_eq!(testkit::metric_with(&metrics, "responder_llm_unreachable_total", "outcome=\"failed\""), 0.0);
    println!("answered {:.1}s after it was sent, the LLM started after 8s", answered_after.as_secs_f64());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_llm_unreachable_past_its_cold_start_budget_gets_the_user_an_error_and_a_dead_letter() {
    let kafka = Kafka::start(2).await;
    let llm_port = testkit::free_port().expect("port");
    let responder = HandlerProcess::start("responder", RESPONDER, &responder_env(&kafka, llm_port, 3));
    let mut replies = kafka.watch(topics::MODEL_RESPONSES);
    let mut dlq = kafka.watch(&topics::dlq(topics::USER_MESSAGES));

    let msg = UserMessage::new(Uuid::new_v4(), "alice", "Anyone?");
    kafka.send(&msg).await;
    let sent = Instant::now();
    let seen = replies.until(MINUTE, |seen| has_final(seen, msg.message_id)).await;
    let waited = sent.elapsed();
    match &replies_of(seen, msg.message_id).last().expect("final").body {
        ReplyBody::Error { code, .. } => assert_eq!(code, "llm_unavailable"),
        other => panic!("expected an error event, got {other:?}"),
    }
    assert!(waited >= Duration::from_secs(3), "waited out the 3 s budget first: {waited:?}");
    let letters = dlq.until(MINUTE, |seen| !seen.is_empty()).await;
    let error = header(&letters[0], "dlq.error").expect("dlq.error");
    assert!(error.contains("cold-start budget"), "{error}");
    kafka.wait_lag_zero(topics::RESPONDER_GROUP, USER_MESSAGES, Duration::from_secs(10)).await;
    let metrics = responder.metrics().await;
    assert!(testkit::metric_with(&metrics, "responder_llm_unreachable_total", "outcome=\"failed\"") >= 2.0);
}
