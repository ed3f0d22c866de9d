//! `init` against a real broker: idempotent, and KEDA's lag is exact from the first
//! message on.

use std::time::Duration;

use platform::{
    bootstrap::{self, Plan},
    events::UserMessage,
    kafka::{self, publish, KafkaSettings},
    lag::{self, OffsetResetPolicy},
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

fn total_lag(settings: &KafkaSettings, group: &str, topics: &[&str], policy: OffsetResetPolicy) -> i64 {
    let client = settings.base_consumer(group).expect("client");
    lag::total(&lag::group_lag(&client, topics, policy, TIMEOUT).expect("lag"))
}

#[tokio::test(flavor = "multi_thread")]
async fn init_is_idempotent_and_makes_kedas_lag_exact() {
    let broker = Broker::start().expect("start tansu");
    let settings = KafkaSettings::plaintext(broker.bootstrap_servers());
    let plan = Plan::stack(6, 1);

    let first = bootstrap::run(&settings, &plan, Duration::from_secs(30)).await.expect("first init");
    assert_eq!(first.created.len(), 6, "{first:?}");
    // responder: 6 partitions of user_messages; memory: 6 of user_messages + 6 of model_responses.
    assert_eq!(first.initialised.len(), 18, "{first:?}");

    let client = settings.base_consumer("inspect").expect("client");
    for topic in topics::all_with_dlq() {
        assert_eq!(kafka::partitions(&client, &topic, TIMEOUT).expect("metadata").len(), 6, "{topic}");
    }

    // The pitfall init avoids: a group without commits shows lag 1 per partition under
    // `latest`, so KEDA would never scale it to zero.
    assert_eq!(
        total_lag(&settings, "never-initialised", &[topics::USER_MESSAGES], OffsetResetPolicy::Latest),
        6
    );
    for policy in [OffsetResetPolicy::Latest, OffsetResetPolicy::Earliest] {
        assert_eq!(total_lag(&settings, topics::RESPONDER_GROUP, &[topics::USER_MESSAGES], policy), 0);
        assert_eq!(
            total_lag(
                &settings,
                topics::MEMORY_GROUP,
                &[topics::USER_MESSAGES, topics::MODEL_RESPONSES],
                policy
            ),
            0
        );
    }

    let producer = settings.producer().expect("producer");
    for i in 0..5 {
        let msg = UserMessage::new(Uuid::new_v4(), "bob", format!("hello {i}"));
        publish(&producer, &msg, &TraceParent::new_root(), TIMEOUT).await.expect("acknowledged");
    }
    assert_eq!(
        total_lag(&settings, topics::RESPONDER_GROUP, &[topics::USER_MESSAGES], OffsetResetPolicy::Latest),
        5
    );

    // A second init changes nothing: no topic created, no offset moved past unread records.
    let second = bootstrap::run(&settings, &plan, Duration::from_secs(30)).await.expect("second init");
    assert!(second.created.is_empty(), "{second:?}");
    assert_eq!(second.existing.len(), 6);
    assert!(second.initialised.is_empty(), "{second:?}");
    assert_eq!(
        total_lag(&settings, topics::RESPONDER_GROUP, &[topics::USER_MESSAGES], OffsetResetPolicy::Latest),
        5
    );

    // Consuming and committing brings the lag back to zero, which lets KEDA scale to zero.
    let consumer: StreamConsumer = settings.stream_consumer(topics::RESPONDER_GROUP).expect("consumer");
    consumer.subscribe(&[topics::USER_MESSAGES]).expect("subscribe");
    for _ in 0..5 {
        let record = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("a record within 30 s")
            .expect("a record");
        assert!(record.payload().is_some());
        consumer.commit_message(&record, CommitMode::Sync).expect("commit");
    }
    assert_eq!(
        total_lag(&settings, topics::RESPONDER_GROUP, &[topics::USER_MESSAGES], OffsetResetPolicy::Latest),
        0
    );
}
