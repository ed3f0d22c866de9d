//! Consumer lag measured the way KEDA's Kafka scaler measures it.
//!
//! KEDA reads, per partition, the log-end offset (high watermark) and the group's
//! committed offset. A partition without a committed offset counts as lag 1 under
//! `offsetResetPolicy: latest` and as the whole log under `earliest` — which is why
//! `init` commits offsets for every handler group before the first message.

use std::time::Duration;

use anyhow::Context;
use rdkafka::{consumer::Consumer, Offset, TopicPartitionList};

use crate::kafka::partitions;

/// What KEDA assumes a consumer does when its group has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetResetPolicy {
    /// Start at the end of the log: KEDA counts lag 1 for such a partition.
    Latest,
    /// Start at the beginning: KEDA counts the whole log as lag.
    Earliest,
}

/// The lag of one partition for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// The group's committed offset, `None` when it has none.
    pub committed: Option<i64>,
    /// The partition's log-end offset (high watermark).
    pub log_end: i64,
    /// The lag KEDA would compute for this partition.
    pub lag: i64,
}

/// The lag KEDA computes for one partition.
pub fn keda_partition_lag(committed: Option<i64>, log_end: i64, policy: OffsetResetPolicy) -> i64 {
    match (committed, policy) {
        (None, OffsetResetPolicy::Latest) => 1,
        (None, OffsetResetPolicy::Earliest) => log_end,
        (Some(c), _) => (log_end - c).max(0),
    }
}

/// The committed offsets of `consumer`'s group for every partition of `topics`.
pub fn committed_offsets(
    consumer: &impl Consumer,
    topics: &[&str],
    timeout: Duration,
) -> anyhow::Result<Vec<(String, i32, Option<i64>)>> {
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        for p in partitions(consumer, topic, timeout)? {
            tpl.add_partition(topic, p);
        }
    }
    let committed =
        consumer.committed_offsets(tpl, timeout).context("fetching the group's committed offsets")?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) if o >= 0 => Some(o),
                _ => None,
            };
            (e.topic().to_string(), e.partition(), offset)
        })
        .collect())
}

/// The lag of `consumer`'s group on every partition of `topics`, as KEDA sees it.
pub fn group_lag(
    consumer: &impl Consumer,
    topics: &[&str],
    policy: OffsetResetPolicy,
    timeout: Duration,
) -> anyhow::Result<Vec<PartitionLag>> {
    committed_offsets(consumer, topics, timeout)?
        .into_iter()
        .map(|(topic, partition, committed)| {
            let (_, log_end) = consumer
                .fetch_watermarks(&topic, partition, timeout)
                .with_context(|| format!("fetching watermarks of {topic}/{partition}"))?;
            let lag = keda_partition_lag(committed, log_end, policy);
            Ok(PartitionLag { topic, partition, committed, log_end, lag })
        })
        .collect()
}

/// The sum of the lags, KEDA's "total lag".
pub fn total(lags: &[PartitionLag]) -> i64 {
    lags.iter().map(|l| l.lag).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_offsets_follow_kedas_rules() {
        assert_eq!(keda_partition_lag(None, 0, OffsetResetPolicy::Latest), 1);
        assert_eq!(keda_partition_lag(None, 40, OffsetResetPolicy::Latest), 1);
        assert_eq!(keda_partition_lag(None, 40, OffsetResetPolicy::Earliest), 40);
        assert_eq!(keda_partition_lag(Some(35), 40, OffsetResetPolicy::Earliest), 5);
        assert_eq!(keda_partition_lag(Some(40), 40, OffsetResetPolicy::Latest), 0);
    }

    #[test]
    fn lag_never_goes_negative() {
        // A committed offset past the watermark (e.g. a truncated log) is not negative lag.
        assert_eq!(keda_partition_lag(Some(50), 40, OffsetResetPolicy::Latest), 0);
    }
}
