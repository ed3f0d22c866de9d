//! How the handler's group hands partitions over when members come and go
//! (`HANDLER_PARTITION_ASSIGNMENT`, `HANDLER_REVOKE_GRACE_SECS`).

use std::time::Duration;

use platform::settings::{Env, SettingsError};
use rdkafka::ClientConfig;

/// The partition assignment protocol of the handler's group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// `cooperative-sticky` (the default): a joining member takes partitions from the
    /// others while they keep consuming the rest; only the partitions that move stop.
    Cooperative,
    /// `range,roundrobin` (librdkafka's default): every rebalance stops every member.
    /// For a tansu group first formed that way (tansu keeps a group's protocol for
    /// good, even once the group is empty, and refuses members offering another one),
    /// and for tansu groups of more than two members: its coordinator answers each
    /// JoinGroup at once instead of waiting for every member to rejoin, so the leader's
    /// cooperative assignor can see stale owned partitions and hand a partition to a
    /// new member while its owner still consumes it (answered twice,
    /// docs/bench/2026-12-07-rebalance.txt). Hand-over leases
    /// (`HANDLER_HANDOVER_WAIT_SECS`, which the local stack sets) close that gap too.
    Eager,
}

impl Assignment {
    /// Reads `HANDLER_PARTITION_ASSIGNMENT` (`cooperative`, the default, or `eager`).
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let name = "HANDLER_PARTITION_ASSIGNMENT";
        match env.one_of(name, &["cooperative", "eager"], "cooperative")?.as_str() {
            "eager" => Ok(Self::Eager),
            _ => Ok(Self::Cooperative),
        }
    }

    /// Sets librdkafka's `partition.assignment.strategy` for this protocol.
    pub fn apply(self, config: &mut ClientConfig) {
        let strategy = match self {
            Self::Cooperative => "cooperative-sticky",
            Self::Eager => "range,roundrobin",
        };
        config.set("partition.assignment.strategy", strategy);
    }
}

/// Reads `HANDLER_REVOKE_GRACE_SECS` (default 10): how long a member whose partitions
/// are taken away lets the records already running there finish, so that they are
/// committed instead of answered a second time by the new owner. 0 hands them over at
/// once. Only the partitions that move wait (with cooperative assignment); an eager
/// rebalance holds the whole group for it.
pub fn revoke_grace_from_env(env: &Env) -> Result<Duration, SettingsError> {
    Ok(Duration::from_secs(env.parse_or("HANDLER_REVOKE_GRACE_SECS", 10)?))
}

/// Reads `HANDLER_HANDOVER_WAIT_SECS` (default 0: no leases): the longest a member
/// assigned a partition whose previous owner has not released it yet (tansu's
/// coordinator assigns before it revokes) withholds it while that owner keeps renewing
/// its lease, before reading it from its last commit anyway. The local stack on tansu
/// sets 30: above the revoke grace plus the time a live owner takes to learn of the
/// revoke (a heartbeat and a JoinGroup), so that only an owner stuck without releasing
/// is waited out; a dead owner's lease goes stale in 5 s. Off by default because Kafka
/// revokes before it reassigns, where the leases would only add a commit per second
/// per member.
pub fn handover_wait_from_env(env: &Env) -> Result<Duration, SettingsError> {
    Ok(Duration::from_secs(env.parse_or("HANDLER_HANDOVER_WAIT_SECS", 0)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooperative_by_default_eager_on_request_and_nothing_else() {
        let read = |pairs: &[(&str, &str)]| Assignment::from_env(&Env::from_pairs(pairs.iter().copied()));
        assert_eq!(read(&[]).expect("default"), Assignment::Cooperative);
        assert_eq!(read(&[("HANDLER_PARTITION_ASSIGNMENT", "eager")]).expect("eager"), Assignment::Eager);
        let err = read(&[("HANDLER_PARTITION_ASSIGNMENT", "sticky")]).expect_err("unknown");
        assert!(err.to_string().contains("HANDLER_PARTITION_ASSIGNMENT"), "{err}");
        let mut config = ClientConfig::new();
        Assignment::Eager.apply(&mut config);
        assert_eq!(config.get("partition.assignment.strategy"), Some("range,roundrobin"));
    }
}
