//! What `/ready` reports and the metrics every handler exports.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// Shared health of one handler process.
#[derive(Debug)]
pub struct Status {
    started: Instant,
    assigned: AtomicBool,
    /// Milliseconds since `started` of the last "dependency unavailable" failure (0: none).
    unavailable_at: AtomicU64,
}

/// Metric names (Prometheus).
pub mod metric {
    /// Records by outcome: ok, retried, dead_lettered, skipped, abandoned.
    pub const RECORDS: &str = "handler_records_total";
    /// Seconds from receiving a record to its outputs being acknowledged.
    pub const LATENCY: &str = "handler_latency_seconds";
    /// Records received but not finished.
    pub const IN_FLIGHT: &str = "handler_records_in_flight";
    /// The whole group's total lag, as KEDA computes it (every replica reports the same
    /// number: take the max across replicas, not the sum).
    pub const LAG: &str = "handler_consumer_lag";
    /// Seconds from process start to the first record received.
    pub const COLD_START: &str = "handler_cold_start_seconds";
    /// Records dead-lettered without their value (too large with the DLQ headers).
    pub const DEAD_LETTERS_WITHOUT_PAYLOAD: &str = "handler_dead_letters_without_payload_total";
    /// Every `outcome` of [`RECORDS`].
    pub const OUTCOMES: [&str; 5] = ["ok", "retried", "dead_lettered", "skipped", "abandoned"];

    /// Creates `handler`'s counters at 0, so that a dashboard or an alert on, say,
    /// dead letters sees a series (and a rate of 0) before the first one happens.
    pub fn register(handler: &'static str) {
        for outcome in OUTCOMES {
            metrics::counter!(RECORDS, "handler" => handler, "outcome" => outcome).absolute(0);
        }
        metrics::counter!(DEAD_LETTERS_WITHOUT_PAYLOAD, "handler" => handler).absolute(0);
    }
}

impl Status {
    /// A fresh status (not yet assigned partitions).
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            assigned: AtomicBool::new(false),
            unavailable_at: AtomicU64::new(0),
        })
    }

    /// When the process started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Records whether the consumer holds partitions (or, for the invoke entry, is up).
    pub fn set_assigned(&self, assigned: bool) {
        self.assigned.store(assigned, Ordering::Relaxed);
    }

    /// Whether the consumer holds its partitions now.
    pub fn is_assigned(&self) -> bool {
        self.assigned.load(Ordering::Relaxed)
    }

    /// Records that a dependency was unavailable just now.
    pub fn dependency_failed(&self) {
        let ms = self.started.elapsed().as_millis().max(1) as u64;
        self.unavailable_at.store(ms, Ordering::Relaxed);
    }

    /// Records that the dependencies answered again.
    pub fn dependency_recovered(&self) {
        self.unavailable_at.store(0, Ordering::Relaxed);
    }

    /// Ready: in the group, and no dependency failure in the last 10 seconds.
    pub fn ready(&self) -> Result<(), &'static str> {
        if !self.assigned.load(Ordering::Relaxed) {
            return Err("not yet in the consumer group");
        }
        let at = self.unavailable_at.load(Ordering::Relaxed);
        if at != 0
            && self.started.elapsed().saturating_sub(Duration::from_millis(at)) < Duration::from_secs(10)
        {
            return Err("a dependency is unavailable");
        }
        Ok(())
    }
}
