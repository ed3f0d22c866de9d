//! The consumer group: committing what the offset tracker allows, keeping the tracker
//! right across rebalances, and reporting the group's lag.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use platform::{
    lag::{self, OffsetResetPolicy},
    sync::lock,
};
use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol},
    error::KafkaResult,
    ClientContext, Offset, TopicPartitionList,
};
use tokio::sync::watch;

use super::handover::Handover;
use crate::runtime::{
    offsets::{OffsetTracker, Partition},
    settings::RuntimeSettings,
    status::{metric, Status},
};

/// Commits what the tracker allows.
pub(super) fn commit<C: Consumer<GroupContext>>(
    consumer: &C,
    tracker: &Mutex<OffsetTracker>,
    mode: CommitMode,
) {
    let offsets = lock(tracker).to_commit();
    if offsets.is_empty() {
        return;
    }
    match commit_offsets(consumer, &offsets, mode) {
        // An async commit is only queued here: `GroupContext::commit_callback` records
        // it once the broker has accepted it, so a failed one is sent again.
        Ok(()) if matches!(mode, CommitMode::Sync) => {
            let mut t = lock(tracker);
            for (partition, offset) in &offsets {
                t.committed(partition, *offset);
            }
        }
        Ok(()) => {}
        Err(err) => tracing::warn!(error = %err, "commit failed; will retry"),
    }
}

fn commit_offsets<C: Consumer<GroupContext>>(
    consumer: &C,
    offsets: &[(Partition, i64)],
    mode: CommitMode,
) -> anyhow::Result<()> {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in offsets {
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    consumer.commit(&list, mode)?;
    Ok(())
}

/// Keeps the offset tracker right across rebalances. With cooperative assignment a
/// rebalance names only the partitions that move: everything here acts on those alone.
pub(super) struct GroupContext {
    /// What is in flight and what may be committed, per partition.
    pub(super) tracker: Arc<Mutex<OffsetTracker>>,
    /// Where group membership is reported for `/ready`.
    pub(super) status: Arc<Status>,
    /// Whether the loop has paused fetching (`flow`): partitions assigned meanwhile
    /// are paused too, or they would be fetched past the loop's limit.
    pub(super) paused: Arc<AtomicBool>,
    /// How long revoked partitions' running records may finish before they go.
    pub(super) revoke_grace: Duration,
    /// Set at SIGTERM: leaving the group revokes everything, after the drain has
    /// already given running records their grace period.
    pub(super) shutdown: watch::Receiver<bool>,
    /// The partitions' leases (`None`: `HANDLER_HANDOVER_WAIT_SECS` is 0).
    pub(super) handover: Option<Arc<Handover>>,
}

impl GroupContext {
    /// Waits (up to `revoke_grace`) for the records running in `revoked` to finish, so
    /// that they are committed rather than answered again by the partitions' next
    /// owner. Runs in the rebalance callback, on the loop's task: the records settle in
    /// the tracker from their own tasks. Records still waiting in their lanes do not
    /// start any more (their partition is no longer current once revoked).
    fn wait_for_running(&self, revoked: &[Partition]) {
        let running = || lock(&self.tracker).running_in(revoked);
        if self.revoke_grace.is_zero() || *self.shutdown.borrow() || running() == 0 {
            return;
        }
        let started = Instant::now();
        let wait = || {
            while running() > 0 && started.elapsed() < self.revoke_grace {
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        // The callback blocks the loop's thread; let the runtime move its other tasks
        // (the running records among them) to other threads meanwhile.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
        let left = running();
        let waited_ms = started.elapsed().as_millis() as u64;
        if left > 0 {
            tracing::warn!(left, waited_ms, "revoke grace over: the new owner answers these again");
        } else {
            tracing::info!(waited_ms, "records running on revoked partitions finished");
        }
    }

    /// Reports whether the consumer still holds partitions.
    fn report_assigned(&self, consumer: &BaseConsumer<Self>) {
        let held = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        self.status.set_assigned(held > 0);
    }
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Rebalance::Assign(list), Some(handover)) = (rebalance, &self.handover) {
            // Before librdkafka starts fetching them: a partition withheld here is
            // paused as soon as it is assigned.
            handover.assigned(&partitions(list));
        }
        if let Rebalance::Revoke(list) = rebalance {
            let revoked = partitions(list);
            let lost = consumer.assignment_lost();
            if !lost {
                self.wait_for_running(&revoked);
            }
            // Commit what is done before someone else takes over; records still running
            // here will be answered again by the new owner (at-least-once).
            let offsets = lock(&self.tracker).revoke(&revoked);
            if !offsets.is_empty() && !lost {
                if let Err(err) = commit_offsets(consumer, &offsets, CommitMode::Sync) {
                    tracing::warn!(error = %err, "commit on revoke failed");
                }
            }
            // After the last commit: the next owner reads from it.
            if let Some(handover) = &self.handover {
                handover.revoked(&revoked, lost);
            }
            tracing::info!(partitions = revoked.len(), lost, "partitions revoked");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                let mut tracker = lock(&self.tracker);
                for e in offsets.elements() {
                    if let Offset::Offset(offset) = e.offset() {
                        tracker.committed(&(e.topic().to_string(), e.partition()), offset);
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "commit not accepted; will retry"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Error(err) => {
                // librdkafka drops the assignment without a revoke: forget everything, so
                // nothing is committed for partitions this process may no longer own.
                lock(&self.tracker).clear();
                if let Some(handover) = &self.handover {
                    handover.clear();
                }
                self.status.set_assigned(false);
                tracing::warn!(error = %err, "rebalance failed; the assignment was dropped");
            }
            // Eager: nothing is left. Cooperative: the partitions that did not move.
            Rebalance::Revoke(_) => self.report_assigned(consumer),
            Rebalance::Assign(list) => self.assigned(consumer, list),
        }
    }
}

impl GroupContext {
    /// Partitions were added (all of them with eager assignment, only the new ones
    /// with cooperative).
    fn assigned(&self, consumer: &BaseConsumer<Self>, list: &TopicPartitionList) {
        if list.count() > 0 {
            // Withheld partitions are resumed one by one as they are released, the
            // others all together once fetching resumes.
            let to_pause = if self.paused.load(Ordering::SeqCst) {
                list.clone()
            } else {
                self.handover.as_ref().map_or_else(TopicPartitionList::new, |h| h.select(list, true))
            };
            if to_pause.count() > 0 {
                if let Err(err) = consumer.pause(&to_pause) {
                    tracing::warn!(error = %err, "cannot pause the partitions just assigned");
                }
            }
            // Here, before any record of the new partitions reaches the tracker, a
            // commit cannot overtake a later one.
            match commit_start_where_uncommitted(consumer, list) {
                Ok(0) => {}
                Ok(n) => tracing::info!(partitions = n, "committed the start of partitions without a commit"),
                Err(err) => tracing::warn!(
                    error = format!("{err:#}"),
                    "could not commit the start of partitions without a commit; KEDA may see lag that is not there"
                ),
            }
        }
        self.report_assigned(consumer);
        tracing::info!(
            partitions = list.count(),
            held = consumer.assignment().map(|a| a.count()).unwrap_or(0),
            cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative),
            elapsed_ms = self.status.started().elapsed().as_millis() as u64,
            "partitions assigned"
        );
    }
}

/// The partitions of `list`.
fn partitions(list: &TopicPartitionList) -> Vec<Partition> {
    list.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect()
}

/// How long the assignment-time lookups may take (they hold up the first fetch).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Commits, for each partition in `assigned` that the group has no commit for, the
/// position the consumer starts from there (the log start: `auto.offset.reset` is
/// earliest). Without it KEDA counts the partition's whole log-end offset as lag (it
/// does not subtract the log start): once the broker has expired an idle group's
/// commits, an idle partition whose records retention removed would keep a replica up
/// for ever, since nothing there is ever processed and so nothing is committed.
/// Returns how many partitions got a commit.
fn commit_start_where_uncommitted<C: Consumer<GroupContext>>(
    consumer: &C,
    assigned: &TopicPartitionList,
) -> anyhow::Result<usize> {
    let committed = consumer.committed_offsets(assigned.clone(), LOOKUP_TIMEOUT)?;
    let mut starts = TopicPartitionList::new();
    for e in committed.elements() {
        if matches!(e.offset(), Offset::Offset(o) if o >= 0) {
            continue;
        }
        let (log_start, _) = consumer.fetch_watermarks(e.topic(), e.partition(), LOOKUP_TIMEOUT)?;
        starts.add_partition_offset(e.topic(), e.partition(), Offset::Offset(log_start))?;
    }
    if starts.count() > 0 {
        consumer.commit(&starts, CommitMode::Sync)?;
    }
    Ok(starts.count())
}

/// Publishes the group's total lag (as KEDA computes it) every few seconds.
pub(super) async fn report_lag(
    settings: RuntimeSettings,
    group: &'static str,
    topics: &'static [&'static str],
    mut shutdown: watch::Receiver<bool>,
) {
    let client = match settings.kafka.base_consumer(group) {
        Ok(c) => Arc::new(c),
        Err(err) => {
            tracing::warn!(error = format!("{err:#}"), "no lag metric");
            return;
        }
    };
    loop {
        let c = client.clone();
        let measured = tokio::task::spawn_blocking(move || {
            lag::group_lag(&*c, topics, OffsetResetPolicy::Earliest, Duration::from_secs(5))
        })
        .await;
        if let Ok(Ok(lags)) = measured {
            metrics::gauge!(metric::LAG, "group" => group).set(lag::total(&lags) as f64);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.wait_for(|down| *down) => return,
        }
    }
}
