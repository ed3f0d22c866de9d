//! Reads every partition of `model_responses` from the log end and hands each reply
//! event to the hub.
//!
//! No consumer group: each replica must see every reply (a client's stream may be on
//! any replica), so the relay assigns itself all partitions and never commits. A
//! replica that starts late misses only replies produced before it was ready.

use std::{sync::atomic::Ordering, time::Duration};

use anyhow::Context;
use platform::{
    events::{decode, ModelResponse},
    kafka::{self, KafkaSettings},
    topics,
};
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    Message, Offset, TopicPartitionList,
};
use tokio::sync::watch;

use crate::{reply::EventId, state::AppState};

/// Runs until `shutdown` flips; retries (with backoff) until the topic can be assigned.
pub async fn run(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let consumer = loop {
        match assign(&state.intake.kafka).await {
            Ok(consumer) => break consumer,
            Err(err) => {
                tracing::warn!(error = format!("{err:#}"), "reply relay not assigned yet, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    state.relay_ready.store(true, Ordering::SeqCst);
    tracing::info!(topic = topics::MODEL_RESPONSES, "reply relay assigned to every partition");
    loop {
        let received = tokio::select! {
            received = consumer.recv() => received,
            _ = shutdown.changed() => break,
        };
        match received {
            Ok(record) => {
                let id = EventId::record(record.partition(), record.offset());
                match record.payload().map(decode::<ModelResponse>) {
                    Some(Ok(response)) => {
                        metrics::counter!("gateway_relay_events_total").increment(1);
                        state.hub.publish(id, response);
                    }
                    // The handlers dead-letter bad records; the relay only skips them.
                    Some(Err(err)) => {
                        metrics::counter!("gateway_relay_undecodable_total").increment(1);
                        tracing::warn!(%id, error = %err, "undecodable reply event skipped");
                    }
                    None => metrics::counter!("gateway_relay_undecodable_total").increment(1),
                }
            }
            Err(err) => {
                metrics::counter!("gateway_relay_errors_total").increment(1);
                tracing::warn!(error = %err, "reading model_responses failed; librdkafka retries");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn assign(kafka: &KafkaSettings) -> anyhow::Result<StreamConsumer> {
    // The handlers' consumer settings (manual commits, fetch tuning); the group id is
    // only a label here: nothing subscribes or commits with it.
    let mut config = kafka.consumer_config(&format!("gateway-relay-{}", uuid::Uuid::new_v4()));
    config.set("auto.offset.reset", "latest");
    let consumer: StreamConsumer = config.create().context("creating the reply relay consumer")?;
    let consumer = tokio::task::spawn_blocking(move || -> anyhow::Result<StreamConsumer> {
        let partitions = kafka::partitions(&consumer, topics::MODEL_RESPONSES, Duration::from_secs(5))?;
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            // The log end as a number, not `Offset::End`: that one is resolved lazily,
            // and a reply produced in between would be skipped after /ready said yes.
            let (_, high) = consumer.fetch_watermarks(topics::MODEL_RESPONSES, p, Duration::from_secs(5))?;
            tpl.add_partition_offset(topics::MODEL_RESPONSES, p, Offset::Offset(high))?;
        }
        consumer.assign(&tpl).context("assigning model_responses")?;
        Ok(consumer)
    })
    .await
    .context("relay assignment task panicked")??;
    Ok(consumer)
}
