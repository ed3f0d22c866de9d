//! KEDA's Kafka scaler and the HPA it drives, as pure functions and a small state
//! machine, so the local autoscaler makes the decisions a cluster would.
//!
//! Per trigger (KEDA `kafka_scaler.go`): each partition's lag is `log end − committed`;
//! a partition without a commit counts 1 under `latest` (0 with
//! `scaleToZeroOnInvalidOffset`) and its whole log under `earliest`. The trigger is
//! active when the total lag exceeds `activationLagThreshold`. Unless idle consumers
//! are allowed, the metric is capped at `lagThreshold ×` the partitions (or, with
//! `limitToPartitionsWithLag`, the partitions that have lag), so the HPA never asks
//! for consumers that would sit idle. The HPA wants `ceil(metric / lagThreshold)`
//! replicas per trigger and takes the largest, within `[max(1, min), max]`; it scales
//! up at once and down to the highest wish of the stabilization window. KEDA scales
//! from zero when any trigger is active and back to `minReplicaCount` (0) after
//! `cooldownPeriod` without activity.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use crate::scaled_object::{KafkaTrigger, ScaledObject};

/// One partition as read from the broker: the group's commit and the log end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// Committed offset, `None` when the group has none.
    pub committed: Option<i64>,
    /// High watermark.
    pub log_end: i64,
}

/// What one trigger reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TriggerReading {
    /// Total lag across partitions.
    pub lag: i64,
    /// The metric handed to the HPA (the lag, capped).
    pub metric: i64,
    /// Whether the trigger wakes the target.
    pub active: bool,
    /// `lagThreshold`, the HPA's target per replica.
    pub threshold: i64,
}

/// KEDA's lag for one partition.
pub fn partition_lag(trigger: &KafkaTrigger, p: PartitionOffsets) -> i64 {
    match p.committed {
        None if trigger.earliest => p.log_end,
        None if trigger.scale_to_zero_on_invalid_offset => 0,
        None => 1,
        Some(committed) => (p.log_end - committed).max(0),
    }
}

/// KEDA's reading of one trigger from its topic's partitions.
pub fn read_trigger(trigger: &KafkaTrigger, partitions: &[PartitionOffsets]) -> TriggerReading {
    let lags: Vec<i64> = partitions.iter().map(|p| partition_lag(trigger, *p)).collect();
    let lag: i64 = lags.iter().sum();
    let mut metric = lag;
    if !trigger.allow_idle_consumers || trigger.limit_to_partitions_with_lag {
        let upper = if trigger.limit_to_partitions_with_lag {
            lags.iter().filter(|l| **l > 0).count() as i64
        } else {
            partitions.len() as i64
        };
        if lag / trigger.lag_threshold > upper {
            metric = upper * trigger.lag_threshold;
        }
    }
    TriggerReading {
        lag,
        metric,
        active: lag > trigger.activation_lag_threshold,
        threshold: trigger.lag_threshold,
    }
}

/// What the scaler decided on one poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Replicas to run now.
    pub replicas: u32,
    /// What the HPA wanted before stabilization.
    pub desired: u32,
    /// Whether any trigger was active.
    pub active: bool,
    /// Total lag across triggers.
    pub lag: i64,
}

/// The scaling state of one ScaledObject.
#[derive(Debug)]
pub struct Scaler {
    min: u32,
    max: u32,
    cooldown: Duration,
    window: Duration,
    replicas: u32,
    last_active: Option<Instant>,
    /// The HPA's recent wishes, for scale-down stabilization.
    wishes: VecDeque<(Instant, u32)>,
}

impl Scaler {
    /// A scaler for `so`, starting at `minReplicaCount`.
    pub fn new(so: &ScaledObject) -> Self {
        Self {
            min: so.min_replicas,
            max: so.max_replicas.max(1),
            cooldown: so.cooldown,
            window: so.scale_down_window,
            replicas: so.min_replicas,
            last_active: None,
            wishes: VecDeque::new(),
        }
    }

    /// Replicas running now.
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// Decides the replica count from this poll's readings at `now`.
    pub fn decide(&mut self, now: Instant, readings: &[TriggerReading]) -> Decision {
        let active = readings.iter().any(|r| r.active);
        let lag = readings.iter().map(|r| r.lag).sum();
        let wish = readings
            .iter()
            .map(|r| (r.metric.max(0) as u64).div_ceil(r.threshold as u64) as u32)
            .max()
            .unwrap_or(0)
            .clamp(self.min.max(1), self.max);
        if active {
            self.last_active = Some(now);
        }
        self.wishes.push_back((now, wish));
        while self.wishes.front().is_some_and(|(t, _)| now.duration_since(*t) > self.window) {
            self.wishes.pop_front();
        }
        let cooled = self.last_active.is_none_or(|t| now.duration_since(t) >= self.cooldown);
        self.replicas = if self.replicas == 0 {
            // KEDA wakes the target; the HPA's first wish follows at once here (in a
            // cluster it comes with the HPA's next sync, within 15 s).
            if active {
                wish
            } else {
                0
            }
        } else if !active && cooled && self.min == 0 {
            self.wishes.clear();
            0
        } else if wish >= self.replicas {
            wish
        } else {
            // Scale down only to the highest wish of the stabilization window.
            let stabilized = self.wishes.iter().map(|(_, w)| *w).max().unwrap_or(wish);
            stabilized.min(self.replicas)
        };
        Decision { replicas: self.replicas, desired: wish, active, lag }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger(threshold: i64) -> KafkaTrigger {
        KafkaTrigger {
            group: "responder".into(),
            topic: "user_messages".into(),
            lag_threshold: threshold,
            activation_lag_threshold: 0,
            earliest: true,
            allow_idle_consumers: false,
            limit_to_partitions_with_lag: false,
            scale_to_zero_on_invalid_offset: false,
        }
    }

    fn at(committed: Option<i64>, log_end: i64) -> PartitionOffsets {
        PartitionOffsets { committed, log_end }
    }

    #[test]
    fn partitions_without_a_commit_follow_the_offset_reset_policy() {
        let mut t = trigger(10);
        assert_eq!(partition_lag(&t, at(None, 40)), 40, "earliest: the whole log");
        t.earliest = false;
        assert_eq!(partition_lag(&t, at(None, 40)), 1, "latest: 1");
        t.scale_to_zero_on_invalid_offset = true;
        assert_eq!(partition_lag(&t, at(None, 40)), 0);
        assert_eq!(partition_lag(&t, at(Some(30), 40)), 10);
    }

    #[test]
    fn the_metric_is_capped_by_partitions_or_partitions_with_lag() {
        let mut t = trigger(5);
        let parts = [at(Some(0), 100), at(Some(0), 0), at(Some(0), 0)];
        let r = read_trigger(&t, &parts);
        assert_eq!((r.lag, r.metric), (100, 15), "3 partitions × 5");
        t.limit_to_partitions_with_lag = true;
        assert_eq!(read_trigger(&t, &parts).metric, 5, "only one partition has lag");
        t.limit_to_partitions_with_lag = false;
        t.allow_idle_consumers = true;
        assert_eq!(read_trigger(&t, &parts).metric, 100);
        assert!(!read_trigger(&t, &[at(Some(3), 3)]).active);
    }

    fn so(cooldown: u64, window: u64) -> ScaledObject {
        ScaledObject {
            name: "responder".into(),
            target: "responder".into(),
            polling_interval: Duration::from_secs(1),
            cooldown: Duration::from_secs(cooldown),
            min_replicas: 0,
            max_replicas: 4,
            scale_down_window: Duration::from_secs(window),
            triggers: vec![trigger(8)],
        }
    }

    fn reading(lag: i64) -> TriggerReading {
        read_trigger(
            &trigger(8),
            &[at(Some(0), lag), at(Some(0), 0), at(Some(0), 0), at(Some(0), 0), at(Some(0), 0)],
        )
    }

    #[test]
    fn from_zero_up_to_the_cap_and_back_to_zero_after_the_cooldown() {
        let mut s = Scaler::new(&so(10, 5));
        let t0 = Instant::now();
        let sec = |n| t0 + Duration::from_secs(n);
        assert_eq!(s.decide(sec(0), &[reading(0)]).replicas, 0, "no lag, stays at zero");
        assert_eq!(s.decide(sec(1), &[reading(1)]).replicas, 1, "any lag wakes it");
        assert_eq!(s.decide(sec(2), &[reading(17)]).replicas, 3, "ceil(17 / 8)");
        assert_eq!(s.decide(sec(3), &[reading(100)]).replicas, 4, "capped by maxReplicaCount");
        // Lag gone: the HPA wants 1, held at 4 for the stabilization window, then 1.
        assert_eq!(s.decide(sec(4), &[reading(0)]).replicas, 4);
        assert_eq!(s.decide(sec(9), &[reading(0)]).replicas, 1, "window over");
        // Inactive since second 3: zero only once the cooldown (10 s) has passed.
        assert_eq!(s.decide(sec(12), &[reading(0)]).replicas, 1);
        assert_eq!(s.decide(sec(13), &[reading(0)]).replicas, 0);
        assert_eq!(s.decide(sec(14), &[reading(0)]).replicas, 0);
    }

    #[test]
    fn the_largest_trigger_wins() {
        let mut s = Scaler::new(&so(10, 0));
        let small = reading(8);
        let large = reading(30);
        assert_eq!(s.decide(Instant::now(), &[small, large]).replicas, 4);
    }
}
