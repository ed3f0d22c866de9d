//! Produce/consume against a real broker (tansu, SQLite storage): consumer groups with
//! manual commits resume where they left off, and acknowledged records survive a
//! broker restart.

use std::{collections::BTreeSet, time::Duration};

use platform::{
    bootstrap::{self, Plan},
    events::{decode, UserMessage},
    kafka::{publish, KafkaSettings},
    topics,
    trace_context::TraceParent,
};
use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    Message,
};
use testkit::Broker;
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(10);

async fn prepared_broker() -> (Broker, KafkaSettings) {
    let broker = Broker::start().expect("start tansu");
    let settings = KafkaSettings::plaintext(broker.bootstrap_servers());
    bootstrap::run(&settings, &Plan::stack(3, 1), Duration::from_secs(30)).await.expect("bootstrap");
    (broker, settings)
}

/// Publishes `n` user messages spread over `conversations` conversations.
async fn publish_messages(settings: &KafkaSettings, n: usize, conversations: usize) -> BTreeSet<Uuid> {
    let producer = settings.producer().expect("producer");
    let convs: Vec<Uuid> = (0..conversations).map(|_| Uuid::new_v4()).collect();
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let msg = UserMessage::new(convs[i % conversations], "alice", format!("message {i}"));
        publish(&producer, &msg, &TraceParent::new_root(), TIMEOUT).await.expect("acknowledged");
        ids.insert(msg.message_id);
    }
    ids
}

/// Reads user messages in `group`, committing each one, until `stop_after` were read
/// or nothing arrives for `idle`.
async fn consume(settings: &KafkaSettings, group: &str, stop_after: usize, idle: Duration) -> Vec<Uuid> {
    let consumer: StreamConsumer = settings.stream_consumer(group).expect("consumer");
    consumer.subscribe(&[topics::USER_MESSAGES]).expect("subscribe");
    let mut seen = Vec::new();
    let joining = std::time::Instant::now();
    // The first read includes the group join, which takes seconds.
    let mut wait = Duration::from_secs(30);
    while seen.len() < stop_after {
        let Ok(received) = tokio::time::timeout(wait, consumer.recv()).await else { break };
        let record = received.expect("a record");
        let msg: UserMessage = decode(record.payload().expect("payload")).expect("a user message");
        assert!(TraceParent::from_headers(record.headers()).is_some(), "traceparent header missing");
        if seen.is_empty() {
            eprintln!("group {group}: first record {:?} after subscribing (group join)", joining.elapsed());
        }
        seen.push(msg.message_id);
        consumer.commit_message(&record, CommitMode::Sync).expect("commit");
        wait = idle;
    }
    consumer.unsubscribe();
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_consumer_resumes_after_its_commits_with_nothing_lost() {
    let (_broker, settings) = prepared_broker().await;
    let sent = publish_messages(&settings, 120, 7).await;

    let first = consume(&settings, topics::RESPONDER_GROUP, 50, Duration::from_secs(5)).await;
    assert_eq!(first.len(), 50, "the first consumer read 50");
    let second = consume(&settings, topics::RESPONDER_GROUP, usize::MAX, Duration::from_secs(5)).await;

    let first_set: BTreeSet<Uuid> = first.iter().copied().collect();
    let second_set: BTreeSet<Uuid> = second.iter().copied().collect();
    assert!(first_set.is_disjoint(&second_set), "committed records were delivered again");
    assert_eq!(second.len(), second_set.len(), "duplicates within one consumer");
    let all: BTreeSet<Uuid> = first_set.union(&second_set).copied().collect();
    assert_eq!(all, sent, "lost: {:?}", sent.difference(&all).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_records_and_commits_survive_a_broker_restart() {
    let (mut broker, settings) = prepared_broker().await;
    let before = publish_messages(&settings, 100, 5).await;
    let read = consume(&settings, topics::MEMORY_GROUP, 40, Duration::from_secs(5)).await;
    assert_eq!(read.len(), 40);

    broker.stop().expect("broker stops on SIGINT");
    broker.start_again().expect("broker restarts");

    let after = publish_messages(&settings, 20, 5).await;
    let rest = consume(&settings, topics::MEMORY_GROUP, usize::MAX, Duration::from_secs(5)).await;

    let sent: BTreeSet<Uuid> = before.union(&after).copied().collect();
    let got: BTreeSet<Uuid> = read.iter().chain(rest.iter()).copied().collect();
    assert_eq!(
        read.len() + rest.len(),
        sent.len(),
        "records were redelivered: commits were lost in the restart"
    );
    assert_eq!(got, sent, "lost in the restart: {:?}", sent.difference(&got).count());
}
