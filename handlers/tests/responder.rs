//! The responder against a real broker, the Qdrant engine server and llama-server with
//! SmolLM2: streamed replies, memory, dead letters, crashes, drains and scale-out.

mod common;

use std::time::Duration;

use common::{done_text, handler_env, has_final, llm_env, replies_of, HandlerProcess};
use platform::{
    events::{ReplyBody, UserMessage},
    topics,
};
use rdkafka::Message;
use testkit::{
    fake_llm::{FakeLlm, Mode},
    kafka::{header, Kafka, Watcher},
    LlamaServer, QdrantServer, Signal,
};
use uuid::Uuid;

const RESPONDER: &str = env!("CARGO_BIN_EXE_responder");
const MEMORY: &str = env!("CARGO_BIN_EXE_memory");
const USER_MESSAGES: &[&str] = &[topics::USER_MESSAGES];
const MINUTE: Duration = Duration::from_secs(60);

fn responder_env(
    kafka: &Kafka,
    qdrant: &str,
    llm: &str,
    max_tokens: u32,
) -> std::collections::HashMap<String, String> {
    let mut env = handler_env(kafka, qdrant);
    env.extend(llm_env(llm, max_tokens));
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_is_answered_as_a_token_stream_then_done_and_committed() {
    let (kafka, qdrant, llm) =
        (Kafka::start(2).await, QdrantServer::start().expect("qdrant"), LlamaServer::chat().expect("llm"));
    let _responder = HandlerProcess::start(
        "responder",
        RESPONDER,
        &responder_env(&kafka, &qdrant.url(), &llm.base_url(), 48),
    );
    let mut replies = kafka.watch(topics::MODEL_RESPONSES);

    let msg = UserMessage::new(Uuid::new_v4(), "alice", "What is the capital of France?");
    let trace = kafka.send(&msg).await;
    let seen = replies.until(MINUTE, |seen| has_final(seen, msg.message_id)).await;

    let events = replies_of(seen, msg.message_id);
    let (tokens, last) = events.split_at(events.len() - 1);
    let ReplyBody::Done { text, finish_reason, token_events, .. } = &last[0].body else {
        panic!("expected done last, got {:?}", last[0].body)
    };
    assert!(tokens.len() >= 2, "a streamed reply has several token events: {events:?}");
    let mut streamed = String::new();
    for (i, e) in tokens.iter().enumerate() {
        match &e.body {
            ReplyBody::Token { seq, delta } => {
                assert_eq!(*seq as usize, i, "token events are numbered in order");
                streamed.push_str(delta);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(e.attempt, last[0].attempt, "one attempt throughout");
    }
    assert_eq!(&streamed, text, "done carries the text the tokens spelled");
    assert_eq!(*token_events as usize, tokens.len());
    assert!(!finish_reason.is_empty());
    assert!(text.contains("Paris"), "{text:?}");
    // The reply continues the gateway's trace.
    let first =
        seen.iter().find(|m| m.key() == Some(msg.conversation_id.to_string().as_bytes())).expect("reply");
    let parent = header(first, "traceparent").expect("traceparent on the reply");
    assert!(parent.contains(&trace.trace_id_hex()), "{parent} continues {}", trace.trace_id_hex());
    kafka.wait_lag_zero(topics::RESPONDER_GROUP, USER_MESSAGES, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_uses_a_fact_from_an_earlier_turn_that_only_memory_holds() {
    let (kafka, qdrant, llm) =
        (Kafka::start(2).await, QdrantServer::start().expect("qdrant"), LlamaServer::chat().expect("llm"));
    let env = responder_env(&kafka, &qdrant.url(), &llm.base_url(), 40);
    let _responder = HandlerProcess::start("responder", RESPONDER, &env);
    let _memory = HandlerProcess::start("memory", MEMORY, &handler_env(&kafka, &qdrant.url()));
    let mut replies = kafka.watch(topics::MODEL_RESPONSES);
    let mut memories = kafka.watch(topics::MEMORY_EVENTS);

    let conversation = Uuid::new_v4();
    let fact = UserMessage::new(conversation, "alice", "My dog is called Biscuit.");
    kafka.send(&fact).await;
    replies.until(MINUTE, |seen| has_final(seen, fact.message_id)).await;
    // Both turns are in memory before the questions are asked.
    memories.until(MINUTE, |seen| common::memories_of(seen, fact.message_id).len() == 2).await;

    // The handlers are stateless: only memory can know the name. Alice gets it back
    // in the same conversation (recent turns) and in a new one (similar memories);
    // Bob, asking the same question, must not.
    let same = UserMessage::new(conversation, "alice", "What is my dog called?");
    let other_conversation = UserMessage::new(Uuid::new_v4(), "alice", "What is my dog called?");
    let bob = UserMessage::new(Uuid::new_v4(), "bob", "What is my dog called?");
    for msg in [&same, &other_conversation, &bob] {
        kafka.send(msg).await;
    }
    let seen = replies
        .until(MINUTE, |seen| {
            [&same, &other_conversation, &bob].iter().all(|m| has_final(seen, m.message_id))
        })
        .await;
    let answer = |m: &UserMessage| done_text(seen, m.message_id).expect("a done reply");
    assert!(answer(&same).contains("Biscuit"), "same conversation: {:?}", answer(&same));
    assert!(
        answer(&other_conversation).contains("Biscuit"),
        "new conversation: {:?}",
        answer(&other_conversation)
    );
    assert!(!answer(&bob).contains("Biscuit"), "another user's memory leaked: {:?}", answer(&bob));
}

/// A responder on a broker with `partitions` per topic, and watchers of the DLQ and the
/// replies, for the dead-letter tests.
/// Bind every field when taking it apart: `..` would stop Qdrant and the LLM at once.
struct DeadLetterRun {
    kafka: Kafka,
    responder: HandlerProcess,
    dlq: Watcher,
    replies: Watcher,
    _qdrant: QdrantServer,
    _llm: LlamaServer,
}

impl DeadLetterRun {
    async fn start(partitions: i32) -> Self {
        let (kafka, qdrant, llm) = (
            Kafka::start(partitions).await,
            QdrantServer::start().expect("qdrant"),
            LlamaServer::chat().expect("llm"),
        );
        let env = responder_env(&kafka, &qdrant.url(), &llm.base_url(), 8);
        let responder = HandlerProcess::start("responder", RESPONDER, &env);
        let dlq = kafka.watch(&topics::dlq(topics::USER_MESSAGES));
        let replies = kafka.watch(topics::MODEL_RESPONSES);
        Self { kafka, responder, dlq, replies, _qdrant: qdrant, _llm: llm }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_record_is_dead_lettered_and_processing_continues() {
    let DeadLetterRun { kafka, responder, mut dlq, mut replies, _qdrant, _llm } =
        DeadLetterRun::start(2).await;

    let conversation = Uuid::new_v4().to_string();
    kafka.send_raw(topics::USER_MESSAGES, &conversation, b"{not json").await;
    let mut newer =
        serde_json::to_value(UserMessage::new(Uuid::new_v4(), "alice", "from the future")).expect("json");
    newer["v"] = 2.into();
    let future_version = newer.to_string().into_bytes();
    kafka.send_raw(topics::USER_MESSAGES, &conversation, &future_version).await;
    let good = UserMessage::new(conversation.parse().expect("uuid"), "alice", "Hello!");
    kafka.send(&good).await;

    let seen = replies.until(MINUTE, |seen| has_final(seen, good.message_id)).await;
    assert!(done_text(seen, good.message_id).is_some(), "the next message is answered, not errored");
    let letters = dlq.until(MINUTE, |seen| seen.len() >= 2).await;
    assert_eq!(letters[0].payload(), Some(&b"{not json"[..]), "original bytes kept");
    assert_eq!(letters[1].payload(), Some(&future_version[..]));
    for letter in letters {
        assert_eq!(header(letter, "dlq.handler").as_deref(), Some("responder"));
        assert!(header(letter, "dlq.source").expect("source").starts_with("user_messages/"));
        assert!(header(letter, "dlq.error").expect("error").contains("cannot decode"));
    }
    let why = header(&letters[1], "dlq.error").expect("error");
    assert!(why.contains("unsupported schema version 2"), "says why: {why}");
    kafka.wait_lag_zero(topics::RESPONDER_GROUP, USER_MESSAGES, Duration::from_secs(10)).await;
    assert_eq!(responder.records("dead_lettered").await, 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_too_large_to_dead_letter_whole_gets_a_pointer_and_processing_continues() {
    let DeadLetterRun { kafka, responder, mut dlq, mut replies, _qdrant, _llm } =
        DeadLetterRun::start(1).await;

    // Just under librdkafka's default message.max.bytes (1 000 000) with its key and
    // framing: it can be written, but not again with the dead letter's headers added.
    let conversation = Uuid::new_v4().to_string();
    let huge = vec![b'x'; 1_000_000 - conversation.len() - 100];
    kafka.send_raw(topics::USER_MESSAGES, &conversation, &huge).await;
    let good = UserMessage::new(conversation.parse().expect("uuid"), "alice", "Hello!");
    kafka.send(&good).await;

    let seen = replies.until(MINUTE, |seen| has_final(seen, good.message_id)).await;
    assert!(done_text(seen, good.message_id).is_some(), "the next message is answered, not errored");
    let letters = dlq.until(MINUTE, |seen| !seen.is_empty()).await;
    let letter = &letters[0];
    assert_eq!(letter.payload(), None, "the payload is left out");
    let omitted = header(letter, "dlq.omitted").expect("says what was left out");
    assert!(omitted.contains(&format!("{} bytes", huge.len())), "{omitted}");
    assert_eq!(header(letter, "dlq.source").as_deref(), Some("user_messages/0/0"), "points at the original");
    assert!(header(letter, "dlq.error").expect("error").contains("HANDLER_MAX_RECORD_BYTES"));
    kafka.wait_lag_zero(topics::RESPONDER_GROUP, USER_MESSAGES, Duration::from_secs(10)).await;
    assert_eq!(responder.records("dead_lettered").await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_responder_killed_mid_answer_is_replaced_and_the_answer_completes() {
    let (kafka, qdrant, llm) =
        (Kafka::start(2).await, QdrantServer::start().expect("qdrant"), LlamaServer::chat().expect("llm"));
    let env = responder_env(&kafka, &qdrant.url(), &llm.base_url(), 200);
    let mut first = HandlerProcess::start("responder-1", RESPONDER, &env);
    let mut replies = kafka.watch(topics::MODEL_RESPONSES);

    let msg = UserMessage::new(
        Uuid::new_v4(),
        "alice",
        "Write a long story about a dragon who learns to bake bread.",
    );
    kafka.send(&msg).await;
    replies.until(MINUTE, |seen| !replies_of(seen, msg.message_id).is_empty()).await;
    first.process.kill();
    // Killed mid-answer: the message must not be committed.
    let lag = kafka.lag(topics::RESPONDER_GROUP, USER_MESSAGES).await;
    assert_eq!(lag, 1, "the unanswered message stays uncommitted");
    let interrupted = replies_of(&replies.seen, msg.message_id);
    assert!(
        !interrupted.iter().any(|r| r.is_final()),
        "killed before the end (raise max tokens if this fails)"
    );

    let _second = HandlerProcess::start("responder-2", RESPONDER, &env);
    let seen = replies.until(Duration::from_secs(120), |seen| has_final(seen, msg.message_id)).await;
    let events = replies_of(seen, msg.message_id);
    let done = events.iter().rev().find(|r| r.is_final()).expect("final");
    assert!(matches!(done.body, ReplyBody::Done { .. }), "{:?}", done.body);
    assert_ne!(done.attempt, interrupted[0].attempt, "the replacement answers as a new attempt");
    kafka.wait_lag_zero(topics::RESPONDER_GROUP, USER_MESSAGES, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_answer_in_flight_commits_and_exits_zero() {
    let (kafka, qdrant, llm) =
        (Kafka::start(2).await, QdrantServer::start().expect("qdrant"), LlamaServer::chat().expect("llm"));
    let mut responder = HandlerProcess::start(
        "responder",
        RESPONDER,
        &responder_env(&kafka, &qdrant.url(), &llm.base_url(), 120),
    );
    let mut replies = kafka.watch(topics::MODEL_RESPONSES);

    let msg = UserMessage::new(Uuid::new_v4(), "alice", "Write a short poem about the sea.");
    kafka.send(&msg).await;
    replies.until(MINUTE, |seen| !replies_of(seen, msg.message_id).is_empty()).await;
    responder.process.signal(Signal::SIGTERM);
    let status = responder.process.wait_exit(Duration::from_secs(40)).expect("exits within the grace period");
    assert!(status.success(), "{status}: {}", responder.process.log_tail());
    let seen = replies.until(Duration::from_secs(5), |seen| has_final(seen, msg.message_id)).await;
    assert!(done_text(seen, msg.message_id).is_some(), "the answer in flight was finished");
    assert_eq!(kafka.lag(topics::RESPONDER_GROUP, USER_MESSAGES).await, 0, "and committed before leaving");
    assert!(responder.process.log_tail().contains("left the group"));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_responders_share_the_partitions_of_one_group() {
    let (kafka, qdrant, llm) =
        (Kafka::start(4).await, QdrantServer::start().expect("qdrant"), LlamaServer::chat().expect("llm"));
    let env = responder_env(&kafka, &qdrant.url(), &llm.base_url(), 4);
    let a = HandlerProcess::start("responder-a", RESPONDER, &env);
    let b = HandlerProcess::start("responder-b", RESPONDER, &env);
    // Both must be through the rebalance b's arrival caused before messages flow: a
    // has given up partitions (with cooperative assignment only those b takes; a keeps
    // consuming the others throughout), and both are ready (hold partitions).
    let settled = || {
        a.process.log().contains("partitions revoked")
            && [a.port, b.port].iter().all(|p| testkit::http_status(*p, "/ready") == Some(200))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !settled() {
        assert!(std::time::Instant::now() < deadline, "no rebalance: {}", a.process.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut replies = kafka.watch(topics::MODEL_RESPONSES);

    let mut messages = Vec::new();
    for partition in 0..4 {
        for _ in 0..2 {
            let msg = UserMessage::new(Uuid::new_v4(), "alice", "Say hi.");
            kafka.send_to(&msg, partition).await;
            messages.push(msg);
        }
    }
    replies
        .until(Duration::from_secs(120), |seen| messages.iter().all(|m| has_final(seen, m.message_id)))
        .await;
    let (handled_a, handled_b) = (a.records("ok").await, b.records("ok").await);
    assert!(handled_a >= 1.0 && handled_b >= 1.0, "both handled records: a={handled_a} b={handled_b}");
    assert!(handled_a + handled_b >= 8.0);
    kafka.wait_lag_zero(topics::RESPONDER_GROUP, USER_MESSAGES, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_joining_responder_takes_a_partition_without_stopping_the_first_or_answering_again() {
    let (kafka, qdrant, llm) =
        (Kafka::start(2).await, QdrantServer::start().expect("qdrant"), LlamaServer::chat().expect("llm"));
    let mut env = responder_env(&kafka, &qdrant.url(), &llm.base_url(), 200);
    // Long enough for both long answers on this machine: the point is that the one on
    // the partition that moves is finished and committed by a, not started over by b.
    env.insert("HANDLER_REVOKE_GRACE_SECS".into(), "90".into());
    let a = HandlerProcess::start("responder-a", RESPONDER, &env);
    let mut replies = kafka.watch(topics::MODEL_RESPONSES);
    let prompt = "Write a long story about a dragon who learns to bake bread.";
    let messages: Vec<UserMessage> =
        (0..2).map(|_| UserMessage::new(Uuid::new_v4(), "alice", prompt)).collect();
    for (partition, msg) in (0..).zip(&messages) {
        kafka.send_to(msg, partition).await;
    }
    replies.until(MINUTE, |seen| messages.iter().any(|m| !replies_of(seen, m.message_id).is_empty())).await;

    // b is ready once it holds a partition: a has given it one, after finishing what
    // was running there.
    let _b = HandlerProcess::start("responder-b", RESPONDER, &env);
    let seen = replies
        .until(Duration::from_secs(180), |seen| messages.iter().all(|m| has_final(seen, m.message_id)))
        .await;
    for msg in &messages {
        let attempts: std::collections::HashSet<Uuid> =
            replies_of(seen, msg.message_id).iter().map(|r| r.attempt).collect();
        assert_eq!(attempts.len(), 1, "answered once, not again by the new owner: {}", a.process.log_tail());
    }
    let log = a.process.log();
    let revoked: Vec<&str> = log.lines().filter(|l| l.contains("partitions revoked")).collect();
    assert!(!revoked.is_empty(), "a hand-over: {}", a.process.log_tail());
    // tansu may hand the partition back and forth once more (its coordinator gives the
    // leader stale owned partitions); a never gives up both.
    for line in revoked {
        assert!(line.contains("\"partitions\":1"), "only the partition b takes: {line}");
    }
    assert!(log.contains("\"cooperative\":true"), "incremental assignment: {}", a.process.log_tail());
    kafka.wait_lag_zero(topics::RESPONDER_GROUP, USER_MESSAGES, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_being_down_degrades_to_answering_without_it() {
    let (kafka, llm) = (Kafka::start(2).await, LlamaServer::chat().expect("llm"));
    let closed = format!("http://127.0.0.1:{}", testkit::free_port().expect("port"));
    let _responder =
        HandlerProcess::start("responder", RESPONDER, &responder_env(&kafka, &closed, &llm.base_url(), 16));
    let mut replies = kafka.watch(topics::MODEL_RESPONSES);
    let msg = UserMessage::new(Uuid::new_v4(), "alice", "Hello!");
    kafka.send(&msg).await;
    let seen = replies.until(MINUTE, |seen| has_final(seen, msg.message_id)).await;
    assert!(done_text(seen, msg.message_id).is_some(), "answered without memory");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_llm_that_keeps_failing_gets_the_user_a_clear_error_and_a_dead_letter() {
    let (kafka, qdrant) = (Kafka::start(2).await, QdrantServer::start().expect("qdrant"));
    // A scripted fake: a real LLM cannot be made to fail on demand.
    let llm = FakeLlm::start().await.expect("fake LLM");
    llm.set(Mode::Fail500);
    let mut env = responder_env(&kafka, &qdrant.url(), llm.url(), 16);
    env.insert("HANDLER_MAX_ATTEMPTS".into(), "3".into());
    let responder = HandlerProcess::start("responder", RESPONDER, &env);
    let mut replies = kafka.watch(topics::MODEL_RESPONSES);
    let mut dlq = kafka.watch(&topics::dlq(topics::USER_MESSAGES));

    let msg = UserMessage::new(Uuid::new_v4(), "alice", "Hello?");
    kafka.send(&msg).await;
    let seen = replies.until(MINUTE, |seen| has_final(seen, msg.message_id)).await;
    let events = replies_of(seen, msg.message_id);
    match &events.last().expect("final").body {
        ReplyBody::Error { code, message } => {
            assert_eq!(code, "llm_unavailable");
            assert!(message.contains("try again"), "{message}");
        }
        other => panic!("expected an error event, got {other:?}"),
    }
    assert_eq!(llm.calls(), 3, "retried up to HANDLER_MAX_ATTEMPTS: {}", responder.process.log_tail());
    let letters = dlq.until(MINUTE, |seen| !seen.is_empty()).await;
    assert_eq!(header(&letters[0], "dlq.attempts").as_deref(), Some("3"));
    assert!(
        header(&letters[0], "dlq.error").expect("error").contains("500"),
        "{:?}",
        header(&letters[0], "dlq.error")
    );
    kafka.wait_lag_zero(topics::RESPONDER_GROUP, USER_MESSAGES, Duration::from_secs(10)).await;
}
