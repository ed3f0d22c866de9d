//! The integration tests' Kafka harness: a broker with the stack's topics, and the
//! writing and reading the tests do on it — events published (acknowledged), records
//! read from a topic until a condition holds or a deadline passes, a group's lag as
//! KEDA computes it. Every wait is bounded and fails the test with what it saw.

use std::time::{Duration, Instant};

use platform::{
    bootstrap::{self, Plan},
    events::{decode, encode, Event},
    kafka::{publish, KafkaSettings},
    lag::{self, OffsetResetPolicy},
    trace_context::TraceParent,
};
use rdkafka::{
    admin::{AdminClient, AdminOptions},
    client::DefaultClientContext,
    consumer::{Consumer, StreamConsumer},
    message::{Headers, OwnedMessage},
    producer::FutureRecord,
    Message,
};
use uuid::Uuid;

use crate::Broker;

/// A broker with the stack's topics and initialised handler groups.
pub struct Kafka {
    /// The broker process (stopped on drop).
    pub broker: Broker,
    /// Client settings that reach it.
    pub settings: KafkaSettings,
}

impl Kafka {
    /// `partitions` per topic.
    pub async fn start(partitions: i32) -> Self {
        let broker = Broker::start().expect("start tansu");
        let settings = KafkaSettings::plaintext(broker.bootstrap_servers());
        bootstrap::run(&settings, &Plan::stack(partitions, 1), Duration::from_secs(30))
            .await
            .expect("bootstrap");
        Self { broker, settings }
    }

    /// Publishes an event (acknowledged) with a fresh trace; returns the trace.
    pub async fn send<E: Event>(&self, event: &E) -> TraceParent {
        let trace = TraceParent::new_root();
        let producer = self.settings.producer().expect("producer");
        publish(&producer, event, &trace, Duration::from_secs(10)).await.expect("acknowledged");
        trace
    }

    /// Publishes events one after another through one producer, each acknowledged
    /// before the next is sent and each with a fresh trace.
    pub async fn send_in_order<E: Event>(&self, events: &[E]) {
        let producer = self.settings.producer().expect("producer");
        for event in events {
            publish(&producer, event, &TraceParent::new_root(), Duration::from_secs(10)).await.expect("ack");
        }
    }

    /// Publishes many events through one producer, all in flight at once.
    pub async fn send_all<E: Event>(&self, events: &[E]) {
        let producer = self.settings.producer().expect("producer");
        let trace = TraceParent::new_root();
        let sends = events.iter().map(|e| publish(&producer, e, &trace, Duration::from_secs(30)));
        for result in futures::future::join_all(sends).await {
            result.expect("acknowledged");
        }
    }

    /// Publishes an event to an explicit partition.
    pub async fn send_to<E: Event>(&self, event: &E, partition: i32) {
        let producer = self.settings.producer().expect("producer");
        let (key, payload) = (event.key(), encode(event));
        let record = FutureRecord::to(E::TOPIC).key(&key).payload(&payload).partition(partition);
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("acknowledged");
    }

    /// Publishes raw bytes to `topic`.
    pub async fn send_raw(&self, topic: &str, key: &str, payload: &[u8]) {
        let producer = self.settings.producer().expect("producer");
        let record = FutureRecord::to(topic).key(key).payload(payload);
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("acknowledged");
    }

    /// The first event in `E`'s topic, read in the fresh consumer group `group` (fails
    /// after 20 s).
    pub async fn first<E: Event>(&self, group: &str) -> E {
        let consumer: StreamConsumer = self.settings.stream_consumer(group).expect("consumer");
        consumer.subscribe(&[E::TOPIC]).expect("subscribe");
        let record = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("a record in {} within 20 s", E::TOPIC))
            .expect("record");
        decode(record.payload().expect("payload")).unwrap_or_else(|e| panic!("an event of {}: {e}", E::TOPIC))
    }

    /// Reads `topic` from the beginning (a fresh group per watcher).
    pub fn watch(&self, topic: &str) -> Watcher {
        let consumer: StreamConsumer =
            self.settings.stream_consumer(&format!("test-watch-{}", Uuid::new_v4())).expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        Watcher { consumer, seen: Vec::new() }
    }

    /// The group's total lag as KEDA computes it.
    pub async fn lag(&self, group: &'static str, topics: &'static [&'static str]) -> i64 {
        let client = self.settings.base_consumer(group).expect("client");
        tokio::task::spawn_blocking(move || {
            lag::group_lag(&client, topics, OffsetResetPolicy::Earliest, Duration::from_secs(5))
                .map(|l| lag::total(&l))
        })
        .await
        .expect("lag task")
        .expect("lag")
    }

    /// The group's committed offset per partition of `topics` (`None`: no commit).
    pub async fn committed(
        &self,
        group: &'static str,
        topics: &'static [&'static str],
    ) -> Vec<(String, i32, Option<i64>)> {
        let client = self.settings.base_consumer(group).expect("client");
        tokio::task::spawn_blocking(move || lag::committed_offsets(&client, topics, Duration::from_secs(5)))
            .await
            .expect("committed task")
            .expect("committed offsets")
    }

    /// Deletes `group` and its committed offsets, as the broker does once an empty
    /// group's offsets outlive `offsets.retention.minutes`.
    pub async fn delete_group(&self, group: &str) {
        let admin: AdminClient<DefaultClientContext> =
            self.settings.base_config().create().expect("admin client");
        let results = admin
            .delete_groups(&[group], &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))))
            .await
            .expect("DeleteGroups answered");
        for result in results {
            result.unwrap_or_else(|(g, e)| panic!("deleting group {g}: {e}"));
        }
    }

    /// Waits until the group's lag is 0 (fails after `timeout`).
    pub async fn wait_lag_zero(
        &self,
        group: &'static str,
        topics: &'static [&'static str],
        timeout: Duration,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let lag = self.lag(group, topics).await;
            if lag == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "group {group} still has lag {lag} after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Everything read from one topic so far.
pub struct Watcher {
    consumer: StreamConsumer,
    /// The records read, oldest first.
    pub seen: Vec<OwnedMessage>,
}

impl Watcher {
    /// Reads until `done(seen)` holds; fails after `timeout` with what was seen.
    pub async fn until(
        &mut self,
        timeout: Duration,
        done: impl Fn(&[OwnedMessage]) -> bool,
    ) -> &[OwnedMessage] {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(&self.seen) {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(m)) => self.seen.push(m.detach()),
                Ok(Err(e)) => panic!("consumer error: {e}"),
                Err(_) => panic!(
                    "condition not met within {timeout:?}; saw {} records: {:#?}",
                    self.seen.len(),
                    self.seen.iter().map(payload_text).collect::<Vec<_>>()
                ),
            }
        }
        &self.seen
    }

    /// Reads whatever arrives within `window`.
    pub async fn drain(&mut self, window: Duration) -> &[OwnedMessage] {
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Ok(m)) = tokio::time::timeout_at(deadline, self.consumer.recv()).await {
            self.seen.push(m.detach());
        }
        &self.seen
    }
}

/// A record's payload as text.
pub fn payload_text(m: &OwnedMessage) -> String {
    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()
}

/// A header's value as text.
pub fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    let headers = m.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}
