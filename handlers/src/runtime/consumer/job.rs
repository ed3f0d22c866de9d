//! A record as a job: what was decided for it when it arrived, and how its
//! processing ended.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use platform::sync::lock;
use rdkafka::{message::OwnedMessage, Message};

use crate::runtime::offsets::{OffsetTracker, Partition};

/// Work decided for one record when it arrived.
pub(super) enum Work<I> {
    /// Decoded: hand it to the handler.
    Handle(I),
    /// Cannot be handled (no value, too large, undecodable): dead-letter it, for this
    /// reason.
    DeadLetter(String),
}

/// One record waiting in its lane or running.
pub(super) struct Job<I> {
    /// The record as read.
    pub(super) record: OwnedMessage,
    /// Where it was read from.
    pub(super) partition: Partition,
    /// The partition's assignment when the record arrived.
    pub(super) generation: u64,
    /// What to do with it.
    pub(super) work: Work<I>,
    /// When it arrived (latency is measured from here).
    pub(super) received: Instant,
    tracker: Arc<Mutex<OffsetTracker>>,
}

impl<I> Job<I> {
    /// A job for `record`, read from `partition` in assignment `generation`, arriving now.
    pub(super) fn new(
        record: OwnedMessage,
        partition: Partition,
        generation: u64,
        work: Work<I>,
        tracker: Arc<Mutex<OffsetTracker>>,
    ) -> Self {
        Self { record, partition, generation, work, received: Instant::now(), tracker }
    }

    /// Whether this consumer still owns the record's partition.
    pub(super) fn is_current(&self) -> bool {
        lock(&self.tracker).is_current(&self.partition, self.generation)
    }

    /// Records that the job left its lane's queue and runs.
    pub(super) fn mark_running(&self) {
        lock(&self.tracker).run(&self.partition, self.record.offset(), self.generation);
    }

    /// Records how the job ended, from its own task: a revocation waiting in the
    /// rebalance callback for its partitions' running records sees it without the loop.
    pub(super) fn settle(&self, outcome: Outcome) {
        let mut tracker = lock(&self.tracker);
        match outcome {
            Outcome::Done => tracker.finish(&self.partition, self.record.offset(), self.generation),
            Outcome::Abandoned => tracker.stop(&self.partition, self.record.offset(), self.generation),
        }
    }
}

/// How processing one record ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Handled or dead-lettered: its offset may be committed.
    Done,
    /// Given up at shutdown: must be redelivered.
    Abandoned,
}
