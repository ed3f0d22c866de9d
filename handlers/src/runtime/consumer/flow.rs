//! Flow control: how many records the loop fetches ahead of the workers, and pausing
//! and resuming the partitions around that number.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use rdkafka::{consumer::Consumer, TopicPartitionList};

use super::{group::GroupContext, handover::Handover};

/// The fewest records fetched ahead before pausing: a few user messages' worth of
/// memory, and enough that a resume (a new fetch) serves many records.
const MIN_FETCHED_AHEAD: usize = 64;

/// Pauses fetching when `capacity` records are held and resumes it once half of them
/// have been handled. librdkafka resumes each partition after the last record handed
/// to the loop.
pub(super) struct Flow {
    capacity: usize,
    /// Shared with the group's rebalance callback, which pauses partitions assigned
    /// while fetching is paused.
    paused: Arc<AtomicBool>,
    /// Partitions waiting for their previous owner stay paused when fetching resumes.
    handover: Option<Arc<Handover>>,
}

impl Flow {
    /// Flow control for a loop running `concurrency` records at once.
    ///
    /// Records fetched ahead of the workers; at this many the partitions are paused
    /// (the loop keeps polling, so the group sees a live member and rebalances go
    /// through) until half have been handled. Every resume makes librdkafka fetch
    /// again from the last record handed out, which took ~180 ms against tansu:
    /// resuming at each freed slot held one responder at 4 messages/s
    /// (BENCH_ONLY=throughput in handlers/benches/pipeline.rs), the hysteresis lets it
    /// run at the handler's pace.
    pub(super) fn for_concurrency(concurrency: usize, handover: Option<Arc<Handover>>) -> Self {
        Self {
            capacity: (concurrency * 4).max(MIN_FETCHED_AHEAD),
            paused: Arc::new(AtomicBool::new(false)),
            handover,
        }
    }

    /// Whether fetching is paused for every partition.
    pub(super) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// The paused flag, for the group's rebalance callback.
    pub(super) fn paused(&self) -> Arc<AtomicBool> {
        self.paused.clone()
    }

    /// Pauses or resumes for `held` records waiting or running.
    pub(super) fn adjust<C: Consumer<GroupContext>>(&mut self, consumer: &C, held: usize) {
        let paused = self.paused.load(Ordering::SeqCst);
        if !paused && held >= self.capacity {
            self.set(consumer, true);
        } else if paused && held <= self.capacity / 2 {
            self.set(consumer, false);
        }
    }

    /// Pauses (`true`) or resumes (`false`) every assigned partition.
    pub(super) fn set<C: Consumer<GroupContext>>(&mut self, consumer: &C, pause: bool) {
        if pause == self.paused.load(Ordering::SeqCst) {
            return;
        }
        let assignment = match consumer.assignment() {
            Ok(a) => a,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the assignment");
                return;
            }
        };
        let result =
            if pause { consumer.pause(&assignment) } else { consumer.resume(&self.resumable(&assignment)) };
        match result {
            Ok(()) => {
                self.paused.store(pause, Ordering::SeqCst);
                tracing::debug!(
                    partitions = assignment.count(),
                    "fetching {}",
                    if pause { "paused" } else { "resumed" }
                );
            }
            Err(err) => tracing::warn!(error = %err, paused = pause, "cannot pause or resume fetching"),
        }
    }

    /// `assignment` without the partitions withheld for their previous owner.
    fn resumable(&self, assignment: &TopicPartitionList) -> TopicPartitionList {
        match self.handover.as_ref().filter(|h| h.any_withheld()) {
            Some(handover) => handover.select(assignment, false),
            None => assignment.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetches_four_times_the_concurrency_ahead_but_never_fewer_than_the_minimum() {
        assert_eq!(Flow::for_concurrency(1, None).capacity, MIN_FETCHED_AHEAD);
        assert_eq!(Flow::for_concurrency(32, None).capacity, 128);
        assert!(!Flow::for_concurrency(8, None).is_paused());
    }
}
