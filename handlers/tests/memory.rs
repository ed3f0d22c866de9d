//! The memory worker against a real broker and the Qdrant engine server, embedding
//! in-process with all-MiniLM-L6-v2.

mod common;

use std::time::Duration;

use common::{handler_env, memories_of, HandlerProcess};
use platform::{
    events::{memory_point_id, ModelResponse, ReplyBody, Role, UserMessage},
    topics,
};
use qdrant_client::{
    qdrant::{CountPointsBuilder, GetPointsBuilder, PointId},
    Qdrant,
};
use rdkafka::Message;
use testkit::{
    http_status,
    kafka::{header, Kafka},
    QdrantServer,
};
use uuid::Uuid;

const MEMORY: &str = env!("CARGO_BIN_EXE_memory");
const INPUTS: &[&str] = &[topics::USER_MESSAGES, topics::MODEL_RESPONSES];
const MINUTE: Duration = Duration::from_secs(60);

async fn count(client: &Qdrant) -> u64 {
    client
        .count(CountPointsBuilder::new("chat_memory").exact(true))
        .await
        .expect("count")
        .result
        .expect("count result")
        .count
}

#[tokio::test(flavor = "multi_thread")]
async fn both_turns_are_stored_under_deterministic_ids_and_announced() {
    let (kafka, qdrant) = (Kafka::start(2).await, QdrantServer::start().expect("qdrant"));
    let _memory = HandlerProcess::start("memory", MEMORY, &handler_env(&kafka, &qdrant.url()));
    let mut events = kafka.watch(topics::MEMORY_EVENTS);

    let msg = UserMessage::new(Uuid::new_v4(), "alice", "I keep bees on my roof.");
    kafka.send(&msg).await;
    let attempt = Uuid::new_v4();
    // Tokens are not memories; only the finished reply is.
    kafka
        .send(&ModelResponse::for_message(&msg, attempt, ReplyBody::Token { seq: 0, delta: "How ".into() }))
        .await;
    let done = ReplyBody::Done {
        text: "How lovely!".into(),
        usage: None,
        finish_reason: "stop".into(),
        token_events: 1,
    };
    kafka.send(&ModelResponse::for_message(&msg, attempt, done)).await;

    let seen = events.until(MINUTE, |seen| memories_of(seen, msg.message_id).len() == 2).await;
    let mut stored = memories_of(seen, msg.message_id);
    stored.sort_by_key(|e| e.role == Role::Assistant);
    assert_eq!(stored[0].point_id, memory_point_id(msg.message_id, Role::User));
    assert_eq!(stored[1].point_id, memory_point_id(msg.message_id, Role::Assistant));
    assert!(stored.iter().all(|e| e.collection == "chat_memory" && e.user_id == "alice"));

    let client = Qdrant::from_url(&qdrant.url()).build().expect("client");
    let point = client
        .get_points(
            GetPointsBuilder::new("chat_memory", vec![PointId::from(stored[0].point_id.to_string())])
                .with_payload(true),
        )
        .await
        .expect("get")
        .result;
    let payload = &point[0].payload;
    for field in ["conversation_id", "user_id", "role", "text", "ts", "message_id"] {
        assert!(payload.contains_key(field), "payload has {field}: {payload:?}");
    }
    assert_eq!(count(&client).await, 2);

    // Redelivery overwrites instead of duplicating.
    kafka.send(&msg).await;
    events.until(MINUTE, |seen| memories_of(seen, msg.message_id).len() == 3).await;
    assert_eq!(count(&client).await, 2);
    kafka.wait_lag_zero(topics::MEMORY_GROUP, INPUTS, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_qdrant_outage_is_retried_without_committing_or_crashing() {
    let (kafka, mut qdrant) = (Kafka::start(2).await, QdrantServer::start().expect("qdrant"));
    let mut memory = HandlerProcess::start("memory", MEMORY, &handler_env(&kafka, &qdrant.url()));
    let mut events = kafka.watch(topics::MEMORY_EVENTS);
    qdrant.stop().expect("stop qdrant");

    let msg = UserMessage::new(Uuid::new_v4(), "alice", "Remember this while Qdrant is down.");
    kafka.send(&msg).await;
    events.drain(Duration::from_secs(4)).await;
    assert!(memories_of(&events.seen, msg.message_id).is_empty(), "nothing stored while Qdrant is down");
    assert_eq!(kafka.lag(topics::MEMORY_GROUP, INPUTS).await, 1, "and nothing committed");
    assert_eq!(http_status(memory.port, "/ready"), Some(503), "not ready while a dependency is down");
    assert!(memory.process.wait_exit(Duration::from_millis(10)).is_err(), "still running: no crash loop");
    assert_eq!(memory.records("dead_lettered").await, 0.0, "an outage is not the record's fault");

    qdrant.start_again().expect("start qdrant");
    events.until(MINUTE, |seen| memories_of(seen, msg.message_id).len() == 1).await;
    kafka.wait_lag_zero(topics::MEMORY_GROUP, INPUTS, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_undecodable_reply_event_is_dead_lettered() {
    let (kafka, qdrant) = (Kafka::start(2).await, QdrantServer::start().expect("qdrant"));
    let _memory = HandlerProcess::start("memory", MEMORY, &handler_env(&kafka, &qdrant.url()));
    let mut dlq = kafka.watch(&topics::dlq(topics::MODEL_RESPONSES));
    kafka.send_raw(topics::MODEL_RESPONSES, "c1", b"\x00\x01 binary").await;
    let letters = dlq.until(MINUTE, |seen| !seen.is_empty()).await;
    assert_eq!(letters[0].payload(), Some(&b"\x00\x01 binary"[..]));
    assert_eq!(header(&letters[0], "dlq.handler").as_deref(), Some("memory"));
    kafka.wait_lag_zero(topics::MEMORY_GROUP, INPUTS, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_when_idle_drains_commits_and_exits_zero() {
    let (kafka, qdrant) = (Kafka::start(2).await, QdrantServer::start().expect("qdrant"));
    let msg = UserMessage::new(Uuid::new_v4(), "alice", "A ScaledJob run handles what is there, then stops.");
    kafka.send(&msg).await;
    let mut memory = HandlerProcess::start_with(
        "memory-job",
        MEMORY,
        &["run", "--exit-when-idle", "2"],
        &handler_env(&kafka, &qdrant.url()),
        false,
    );
    let status = memory.process.wait_exit(MINUTE).expect("exits by itself once idle");
    assert!(status.success(), "{status}: {}", memory.process.log_tail());
    assert!(memory.process.log_tail().contains("idle: exiting"));
    assert_eq!(kafka.lag(topics::MEMORY_GROUP, INPUTS).await, 0, "what it handled is committed");
    let mut events = kafka.watch(topics::MEMORY_EVENTS);
    events.until(Duration::from_secs(10), |seen| memories_of(seen, msg.message_id).len() == 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_worker_pauses_fetching_and_still_handles_everything() {
    let (kafka, qdrant) = (Kafka::start(2).await, QdrantServer::start().expect("qdrant"));
    let mut env = handler_env(&kafka, &qdrant.url());
    // One record at a time; 64 held at most, then paused until 32 are left.
    env.insert("HANDLER_CONCURRENCY".into(), "1".into());
    env.insert("RUST_LOG".into(), "info,handlers::runtime::consumer=debug".into());
    // 150 records waiting before the worker starts: it fills up at once.
    let messages: Vec<_> =
        (0..150).map(|i| UserMessage::new(Uuid::new_v4(), "alice", format!("Fact number {i}."))).collect();
    kafka.send_all(&messages).await;
    let memory = HandlerProcess::start("memory", MEMORY, &env);
    let mut events = kafka.watch(topics::MEMORY_EVENTS);
    events.until(MINUTE, |seen| messages.iter().all(|m| memories_of(seen, m.message_id).len() == 1)).await;
    kafka.wait_lag_zero(topics::MEMORY_GROUP, INPUTS, Duration::from_secs(10)).await;
    let log = memory.process.log();
    assert!(
        log.contains("fetching paused") && log.contains("fetching resumed"),
        "{}",
        memory.process.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collection_of_another_vector_size_is_refused_into_the_dlq_not_retried_forever() {
    use qdrant_client::qdrant::{CreateCollectionBuilder, Distance, VectorParamsBuilder};
    let (kafka, qdrant) = (Kafka::start(2).await, QdrantServer::start().expect("qdrant"));
    let client = Qdrant::from_url(&qdrant.url()).build().expect("client");
    client
        .create_collection(
            CreateCollectionBuilder::new("chat_memory")
                .vectors_config(VectorParamsBuilder::new(4, Distance::Cosine)),
        )
        .await
        .expect("a collection made for another embedder");
    let mut env = handler_env(&kafka, &qdrant.url());
    env.insert("HANDLER_MAX_ATTEMPTS".into(), "2".into());
    let _memory = HandlerProcess::start("memory", MEMORY, &env);
    let mut dlq = kafka.watch(&topics::dlq(topics::USER_MESSAGES));
    kafka.send(&UserMessage::new(Uuid::new_v4(), "alice", "This cannot be stored.")).await;
    let letters = dlq.until(MINUTE, |seen| !seen.is_empty()).await;
    let why = header(&letters[0], "dlq.error").expect("error");
    assert!(why.contains("4-dimensional") && why.contains("384"), "{why}");
    kafka.wait_lag_zero(topics::MEMORY_GROUP, INPUTS, Duration::from_secs(10)).await;
}
