//! Reads every partition of `model_responses` from the log end and hands each reply
//! event to the hub.
//!
//! No consumer group: each replica must see every reply (a client's stream may be on
//! any replica), so the relay assigns itself all partitions and never commits. A
//! starting replica reads the last `RELAY_LOOKBACK_SECS` of the log first, so that a
//! client moved to it by a rollout resumes a reply begun before it started; the hub
//! knows where the relay started, so a client resuming from before then is told
//! (`gap`).
//!
//! The relay never skips records silently: a position that falls out of its partition's
//! log (records deleted before they were read, or a log cut back under it) is not
//! reset by librdkafka (`auto.offset.reset=error`) but here, to the nearest offset the
//! log still has; the jump is counted (`gateway_relay_offset_resets_total`), logged,
//! and every message of that partition being shown gets a `gap`. Kafka reports such a
//! position when it is fetched; tansu does not (a fetch past its log end just waits),
//! so the relay also compares its positions with the log's bounds every
//! [`CHECK_EVERY`].

use std::{collections::BTreeMap, sync::atomic::Ordering, sync::Arc, time::Duration};

use anyhow::Context;
use platform::{
    events::{decode, ModelResponse, ReplyBody},
    kafka::{self, KafkaSettings},
    otel, topics,
    trace_context::TraceParent,
};
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    error::KafkaError,
    message::BorrowedMessage,
    types::RDKafkaErrorCode,
    Message, Offset, TopicPartitionList,
};
use tokio::sync::watch;

use crate::{hub::Hub, reply::EventId, state::AppState};

const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the relay checks its positions against each partition's log bounds.
const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Runs until `shutdown` flips; retries (with backoff) until the topic can be assigned.
pub async fn run(state: AppState, lookback: Duration, mut shutdown: watch::Receiver<bool>) {
    let (consumer, mut positions) = loop {
        match assign(&state.intake.kafka, Start::Lookback(lookback)).await {
            Ok(assigned) => break assigned,
            Err(err) => {
                tracing::warn!(error = format!("{err:#}"), "reply relay not assigned yet, retrying");
                if pause(&mut shutdown, Duration::from_secs(1)).await {
                    return;
                }
            }
        }
    };
    for (&partition, &offset) in &positions {
        state.hub.relay_from(partition, offset);
    }
    state.relay_ready.store(true, Ordering::SeqCst);
    tracing::info!(topic = topics::MODEL_RESPONSES, "reply relay assigned to every partition");
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let received = tokio::select! {
            received = consumer.recv() => received,
            _ = check.tick() => {
                if let Err(err) = realign_and_tell(&consumer, &mut positions, &state.hub, false).await {
                    tracing::warn!(error = format!("{err:#}"), "checking the reply relay's positions failed");
                }
                continue;
            }
            _ = shutdown.changed() => break,
        };
        match received {
            Ok(record) => {
                positions.insert(record.partition(), record.offset() + 1);
                let id = EventId::record(record.partition(), record.offset());
                match record.payload().map(decode::<ModelResponse>) {
                    Some(Ok(response)) => {
                        metrics::counter!("gateway_relay_events_total").increment(1);
                        // Ends (is exported) once the event is handed on.
                        let _span = relay_span(&record, &response.body);
                        // Only an error shows its trace: the others skip the header lookup.
                        let trace_id = matches!(response.body, ReplyBody::Error { .. })
                            .then(|| TraceParent::from_headers(record.headers()).map(|t| t.trace_id))
                            .flatten();
                        state.hub.publish_traced(id, response, trace_id);
                    }
                    // The handlers dead-letter bad records; the relay only skips them.
                    Some(Err(err)) => {
                        metrics::counter!("gateway_relay_undecodable_total").increment(1);
                        tracing::warn!(%id, error = %err, "undecodable reply event skipped");
                    }
                    None => metrics::counter!("gateway_relay_undecodable_total").increment(1),
                }
            }
            Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)) => {
                // librdkafka stopped fetching the partition: nothing moves until realigned.
                while let Err(err) = realign_and_tell(&consumer, &mut positions, &state.hub, true).await {
                    tracing::warn!(error = format!("{err:#}"), "realigning the reply relay failed, retrying");
                    if pause(&mut shutdown, Duration::from_secs(1)).await {
                        return;
                    }
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

/// When traces are exported, the span of handing the first token, the `done` or the
/// `error` of a reply to its streams (a child of the responder's write); none for the
/// tokens in between, which would only add volume.
fn relay_span(record: &BorrowedMessage<'_>, body: &ReplyBody) -> Option<otel::Direct> {
    if !otel::exporting() {
        return None;
    }
    let event = match body {
        ReplyBody::Token { seq: 0, .. } => "first_token",
        ReplyBody::Done { .. } => "done",
        ReplyBody::Error { .. } => "error",
        _ => return None,
    };
    let writer = TraceParent::from_headers(record.headers())?;
    let mut span = otel::Direct::child_of(&writer, "relay model_responses", otel::Kind::Consumer);
    span.set("messaging.system", "kafka");
    span.set("messaging.destination.name", topics::MODEL_RESPONSES);
    span.set("chat.reply.event", event);
    Some(span)
}

/// Sleeps for `wait`; true when shutdown came first.
async fn pause(shutdown: &mut watch::Receiver<bool>, wait: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = shutdown.changed() => true,
    }
}

/// The next offset to read, per partition.
type Positions = BTreeMap<i32, i64>;

/// Where the relay starts reading each partition.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// At the first record written less than this long ago (the log end if none).
    Lookback(Duration),
    /// This many records past the log end (tests: a position the log no longer has).
    #[cfg(test)]
    PastTheEnd(i64),
}

/// A relay consumer assigned to every partition at `start`.
async fn assign(kafka: &KafkaSettings, start: Start) -> anyhow::Result<(Arc<StreamConsumer>, Positions)> {
    // The handlers' consumer settings (manual commits, fetch tuning); the group id is
    // only a label here: nothing subscribes or commits with it.
    let mut config = kafka.consumer_config(&format!("gateway-relay-{}", uuid::Uuid::new_v4()));
    config.set("auto.offset.reset", "error");
    let consumer: StreamConsumer = config.create().context("creating the reply relay consumer")?;
    let consumer = Arc::new(consumer);
    let assigning = consumer.clone();
    let positions = tokio::task::spawn_blocking(move || -> anyhow::Result<Positions> {
        let partitions = kafka::partitions(&*assigning, topics::MODEL_RESPONSES, METADATA_TIMEOUT)?;
        let since = match start {
            Start::Lookback(lookback) if !lookback.is_zero() => {
                // Without the lookback a new replica still works: it only cannot
                // replay what came before it (and says so with `gap`).
                offsets_since(&assigning, &partitions, lookback).unwrap_or_else(|err| {
                    tracing::warn!(error = format!("{err:#}"), "reply relay starts at the log end");
                    Positions::new()
                })
            }
            _ => Positions::new(),
        };
        let mut positions = Positions::new();
        for p in partitions {
            // The log end as a number, not `Offset::End`: that one is resolved lazily,
            // and a reply produced in between would be skipped after /ready said yes.
            let (low, high) = assigning.fetch_watermarks(topics::MODEL_RESPONSES, p, METADATA_TIMEOUT)?;
            let at = match start {
                Start::Lookback(_) => since.get(&p).map_or(high, |&at| at.max(low).min(high)),
                #[cfg(test)]
                Start::PastTheEnd(n) => high + n,
            };
            positions.insert(p, at);
        }
        assign_at(&assigning, &positions)?;
        Ok(positions)
    })
    .await
    .context("relay assignment task panicked")??;
    Ok((consumer, positions))
}

/// Per partition, the offset of the first record written at most `lookback` ago; a
/// partition without one is left out (it starts at its log end).
fn offsets_since(
    consumer: &StreamConsumer,
    partitions: &[i32],
    lookback: Duration,
) -> anyhow::Result<Positions> {
    let since = std::time::SystemTime::now()
        .checked_sub(lookback)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut query = TopicPartitionList::new();
    for &p in partitions {
        query.add_partition_offset(topics::MODEL_RESPONSES, p, Offset::Offset(since))?;
    }
    let found = consumer
        .offsets_for_times(query, METADATA_TIMEOUT)
        .context("looking up model_responses offsets by time")?;
    Ok(found
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) if e.error().is_ok() => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

fn assign_at(consumer: &StreamConsumer, positions: &Positions) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    for (&p, &offset) in positions {
        tpl.add_partition_offset(topics::MODEL_RESPONSES, p, Offset::Offset(offset))?;
    }
    consumer.assign(&tpl).context("assigning model_responses")
}

/// A partition whose position fell out of its log, and where it goes on.
#[derive(Debug, PartialEq, Eq)]
struct Jump {
    partition: i32,
    from: i64,
    to: i64,
}

async fn realign_and_tell(
    consumer: &Arc<StreamConsumer>,
    positions: &mut Positions,
    hub: &Hub,
    stopped: bool,
) -> anyhow::Result<()> {
    for Jump { partition, from, to } in realign(consumer, positions, stopped).await? {
        metrics::counter!("gateway_relay_offset_resets_total").increment(1);
        let told = hub.relay_skipped(partition, from, to);
        // Below the log start: records deleted before they were read. Above its end:
        // the log was cut back (a broker that lost data), so offsets restart lower.
        tracing::warn!(
            topic = topics::MODEL_RESPONSES,
            partition,
            from,
            to,
            messages_told = told,
            "reply relay position out of the log; moved to the nearest offset it has"
        );
    }
    Ok(())
}

/// Moves every position outside its partition's log to the nearest end of it and
/// reassigns if any moved, or if librdkafka `stopped` a partition (after its
/// out-of-range error it waits for a new assignment, even when the position is in
/// range again); the other partitions resume where they were. Returns the jumps.
async fn realign(
    consumer: &Arc<StreamConsumer>,
    positions: &mut Positions,
    stopped: bool,
) -> anyhow::Result<Vec<Jump>> {
    let consumer = consumer.clone();
    let mut next = positions.clone();
    let (jumps, next) = tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<Jump>, Positions)> {
        let mut jumps = Vec::new();
        for (&partition, position) in next.iter_mut() {
            let (low, high) =
                consumer.fetch_watermarks(topics::MODEL_RESPONSES, partition, METADATA_TIMEOUT)?;
            let to = (*position).min(high).max(low);
            if to != *position {
                jumps.push(Jump { partition, from: *position, to });
                *position = to;
            }
        }
        if stopped || !jumps.is_empty() {
            assign_at(&consumer, &next)?;
        }
        Ok((jumps, next))
    })
    .await
    .context("relay realignment task panicked")??;
    *positions = next;
    Ok(jumps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use platform::events::UserMessage;
    use testkit::kafka::Kafka;
    use uuid::Uuid;

    #[tokio::test]
    async fn a_position_past_the_log_end_is_reported_and_realigned_not_skipped() {
        let kafka = Kafka::start(1).await;
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        let token =
            |seq| ModelResponse::for_message(&msg, Uuid::nil(), ReplyBody::Token { seq, delta: "x".into() });
        kafka.send_in_order(&[token(0), token(1)]).await;

        // As after a broker that lost its log: the relay's position is beyond the end.
        // Kafka answers its fetch with an out-of-range error, which `run` handles by
        // realigning; tansu lets the fetch wait, and `run`'s periodic check realigns.
        let (consumer, mut positions) = assign(&kafka.settings, Start::PastTheEnd(5)).await.expect("assign");
        let jumps = realign(&consumer, &mut positions, false).await.expect("realign");
        assert_eq!(jumps, [Jump { partition: 0, from: 7, to: 2 }]);
        assert!(realign(&consumer, &mut positions, false).await.expect("realign").is_empty(), "in range now");

        kafka.send(&token(2)).await;
        let record = tokio::time::timeout(Duration::from_secs(15), consumer.recv())
            .await
            .expect("reading resumes")
            .expect("a record");
        assert_eq!(record.offset(), 2, "the record written after the jump is read, not skipped");
    }

    #[tokio::test]
    async fn a_starting_relay_reads_the_lookback_window_first() {
        let kafka = Kafka::start(1).await;
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "hi");
        let token =
            |seq| ModelResponse::for_message(&msg, Uuid::nil(), ReplyBody::Token { seq, delta: "x".into() });
        kafka.send_in_order(&[token(0), token(1), token(2)]).await;

        let (_, from_end) = assign(&kafka.settings, Start::Lookback(Duration::ZERO)).await.expect("assign");
        assert_eq!(from_end.get(&0), Some(&3), "no lookback: the log end");
        let (consumer, recent) =
            assign(&kafka.settings, Start::Lookback(Duration::from_secs(60))).await.expect("assign");
        assert_eq!(recent.get(&0), Some(&0), "every record of the last minute");
        let record = tokio::time::timeout(Duration::from_secs(15), consumer.recv())
            .await
            .expect("a record")
            .expect("a record");
        assert_eq!(record.offset(), 0);
    }
}
