//! A partition handed to a new member while its previous owner may still be running
//! records there (tansu's coordinator assigns before it revokes): the new member waits
//! for the owner's release and reads from the owner's last commit, so nothing the owner
//! ran is run again; an owner that died without releasing (its lease is no longer
//! renewed) is not waited for long, and nothing uncommitted is skipped. The previous
//! owner is played by the test, through the partition's lease (`<group>.handover`,
//! renewed while it lives) and the group's committed offset.

mod common;

use std::time::Duration;

use common::{handler_env, has_final, llm_env, replies_of, HandlerProcess};
use platform::{events::UserMessage, topics};
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer},
    Offset, TopicPartitionList,
};
use testkit::{fake_llm::FakeLlm, kafka::Kafka, QdrantServer};
use uuid::Uuid;

const RESPONDER: &str = env!("CARGO_BIN_EXE_responder");
const MINUTE: Duration = Duration::from_secs(60);
/// The previous owner's token. A lease is the owner's token, 22 bits of renewal
/// count and a released bit.
const OTHER_OWNER: i64 = 12_345;

fn held(beat: i64) -> i64 {
    (OTHER_OWNER << 23) | (beat << 1)
}

fn released() -> i64 {
    (OTHER_OWNER << 23) | 1
}

/// Commits `offset` for partition 0 of `user_messages` in `group`.
fn commit(kafka: &Kafka, group: &str, offset: i64) {
    let client: BaseConsumer = kafka.settings.base_consumer(group).expect("client");
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topics::USER_MESSAGES, 0, Offset::Offset(offset)).expect("partition");
    client.commit(&list, CommitMode::Sync).expect("commit");
}

fn lease_group() -> String {
    format!("{}.handover", topics::RESPONDER_GROUP)
}

/// The previous owner, alive: renews its lease twice a second until the flag is set.
fn live_owner(kafka: &Kafka) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let client: BaseConsumer = kafka.settings.base_consumer(&lease_group()).expect("client");
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let renewing = std::thread::spawn(move || {
        let mut beat = 1;
        while !stopping.load(Ordering::SeqCst) {
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(topics::USER_MESSAGES, 0, Offset::Offset(held(beat)))
                .expect("partition");
            client.commit(&list, CommitMode::Sync).expect("renew");
            beat += 1;
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    (stop, renewing)
}

/// A one-partition broker, the Qdrant engine server, the fake LLM and the responder's
/// environment (`HANDLER_HANDOVER_WAIT_SECS` = `wait_secs`).
async fn setup(wait_secs: u64) -> (Kafka, QdrantServer, FakeLlm, std::collections::HashMap<String, String>) {
    let (kafka, qdrant) = (Kafka::start(1).await, QdrantServer::start().expect("qdrant"));
    let llm = FakeLlm::start().await.expect("fake LLM");
    let mut env = handler_env(&kafka, &qdrant.url());
    env.extend(llm_env(llm.url(), 16));
    env.insert("MEMORY_TOP_K".into(), "0".into());
    env.insert("RECENT_TURNS".into(), "0".into());
    env.insert("HANDLER_HANDOVER_WAIT_SECS".into(), wait_secs.to_string());
    (kafka, qdrant, llm, env)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_its_owner_still_holds_is_read_only_after_the_release_from_its_last_commit() {
    let (kafka, _qdrant, llm, env) = setup(120).await;
    let mut replies = kafka.watch(topics::MODEL_RESPONSES);
    // The previous owner is running `running` (offset 0) and holds the partition.
    let running = UserMessage::new(Uuid::new_v4(), "alice", "Hello?");
    kafka.send_to(&running, 0).await;
    commit(&kafka, topics::RESPONDER_GROUP, 0);
    let (stop_owner, owner) = live_owner(&kafka);

    let responder = HandlerProcess::start("responder", RESPONDER, &env);
    let withheld = "partition withheld until its previous owner releases it";
    let deadline = std::time::Instant::now() + MINUTE;
    while !responder.process.log().contains(withheld) {
        assert!(std::time::Instant::now() < deadline, "not withheld: {}", responder.process.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(llm.calls(), 0, "nothing read while the owner holds it: {}", responder.process.log_tail());

    // The owner finishes `running`, commits past it, and releases the partition.
    let next = UserMessage::new(Uuid::new_v4(), "alice", "And now?");
    kafka.send_to(&next, 0).await;
    commit(&kafka, topics::RESPONDER_GROUP, 1);
    stop_owner.store(true, Ordering::SeqCst);
    owner.join().expect("owner stopped");
    commit(&kafka, &lease_group(), released());

    let deadline = std::time::Instant::now() + MINUTE;
    while !has_final(&replies.seen, next.message_id) {
        assert!(std::time::Instant::now() < deadline, "not answered: {}", responder.process.log_tail());
        replies.drain(Duration::from_millis(500)).await;
    }
    let seen = &replies.seen;
    assert!(replies_of(seen, running.message_id).is_empty(), "the owner's record is not run again");
    assert_eq!(llm.calls(), 1, "{}", responder.process.log_tail());
    assert!(responder.process.log().contains("\"why\":\"released\""), "{}", responder.process.log_tail());
    kafka.wait_lag_zero(topics::RESPONDER_GROUP, &[topics::USER_MESSAGES], Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_owner_that_died_without_releasing_is_waited_for_briefly_and_its_uncommitted_record_is_run() {
    let (kafka, _qdrant, _llm, env) = setup(120).await;
    let mut replies = kafka.watch(topics::MODEL_RESPONSES);
    // The owner died while running `orphan`: held, never committed past it.
    let orphan = UserMessage::new(Uuid::new_v4(), "alice", "Anyone there?");
    kafka.send_to(&orphan, 0).await;
    commit(&kafka, topics::RESPONDER_GROUP, 0);
    commit(&kafka, &lease_group(), held(7));

    let responder = HandlerProcess::start("responder", RESPONDER, &env);
    // Its lease goes stale in seconds: well within the 120 s wait.
    let started = std::time::Instant::now();
    let deadline = started + Duration::from_secs(30);
    while !has_final(&replies.seen, orphan.message_id) {
        assert!(std::time::Instant::now() < deadline, "not answered: {}", responder.process.log_tail());
        replies.drain(Duration::from_millis(500)).await;
    }
    let seen = &replies.seen;
    assert_eq!(
        replies_of(seen, orphan.message_id).iter().filter(|r| r.is_final()).count(),
        1,
        "answered once"
    );
    let log = responder.process.log();
    assert!(log.contains("previous owner gone (lease not renewed)"), "{}", responder.process.log_tail());
    kafka.wait_lag_zero(topics::RESPONDER_GROUP, &[topics::USER_MESSAGES], Duration::from_secs(10)).await;
}
