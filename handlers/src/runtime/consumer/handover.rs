//! Handing a partition from one member to the next without running its records twice.
//!
//! Kafka's cooperative protocol revokes a partition from its owner before it assigns it
//! to anyone else, so the new owner reads an offset the old one committed after its
//! last record. tansu 0.6.0's coordinator does not: it answers each JoinGroup at once,
//! with the members' owned partitions as of their previous join, so the leader can
//! give a new member a partition its owner still consumes (both hold it for ~0.5 s),
//! and the new member reads the committed offset before the owner has finished and
//! committed the records it is running (docs/bench/2026-12-07-rebalance.txt: 28
//! messages answered twice by a 1 → 2 → 4 scale-up).
//!
//! So each partition has a lease naming the member consuming it: the member claims it
//! when it starts reading the partition, renews it every second while it holds it, and
//! releases it after its last commit there (on revoke, after the revoke grace). A
//! member assigned a partition whose lease another member holds withholds it (paused,
//! its records dropped unread) until the lease is released, then reads from the offset
//! committed by then. A member that died never releases: once its lease has not been
//! renewed for `STALE` (or at the latest after `HANDLER_HANDOVER_WAIT_SECS`) the
//! partition is read anyway, from its last commit, so nothing uncommitted is skipped.
//!
//! The lease is kept as the committed "offset" of the same topic-partition in a second
//! group, `<group>.handover`, which no consumer joins. The natural place, the metadata
//! string of the group's own offset commits, does not work on tansu 0.6.0: it stores
//! the metadata but its OffsetFetch always answers an empty one. Nor does telling a
//! dead holder by the group's member list: librdkafka's ListGroups fails against tansu.
//! On Kafka the lease is released before the partition moves, so a hand-over costs a
//! few more round trips to the coordinator and no wait; renewing costs one commit a
//! second per member.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use platform::{kafka::KafkaSettings, sync::lock};
use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext},
    Offset, TopicPartitionList,
};

use crate::runtime::offsets::Partition;

/// How long a lease look-up or write may take (it runs in the rebalance callback or
/// the loop's commit tick).
const LEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a member renews the leases it holds.
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// A lease not renewed for this long belongs to a member that is gone.
const STALE: Duration = Duration::from_secs(5);
/// Bits of a lease's renewal count.
const BEAT_BITS: u32 = 22;

/// Who may read a partition, as stored in the handover group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lease {
    /// Never claimed (or the broker expired it): nobody is reading the partition.
    Free,
    /// Claimed by the member with this token, renewed this many times (modulo
    /// 2^22): it may be running records there.
    Held { owner: u64, beat: u64 },
    /// Given up by the member with this token after its last commit there.
    Released(u64),
}

impl Lease {
    /// Reads a lease from the handover group's committed offset: the owner's token
    /// (40 bits), the renewal count (22 bits), whether released (1 bit).
    fn from_offset(offset: Offset) -> Self {
        match offset {
            Offset::Offset(o) if o > 0 => {
                let o = o as u64;
                let owner = o >> (BEAT_BITS + 1);
                if o & 1 == 1 {
                    Self::Released(owner)
                } else {
                    Self::Held { owner, beat: (o >> 1) & ((1 << BEAT_BITS) - 1) }
                }
            }
            _ => Self::Free,
        }
    }

    /// The committed offset that stores this lease (tokens are below 2^40, so it is
    /// positive).
    fn to_offset(self) -> i64 {
        let word = match self {
            Self::Free => 0,
            Self::Held { owner, beat } => (owner << (BEAT_BITS + 1)) | ((beat & ((1 << BEAT_BITS) - 1)) << 1),
            Self::Released(owner) => (owner << (BEAT_BITS + 1)) | 1,
        };
        word as i64
    }

    /// Whether a member with `token` may start reading a partition under this lease.
    fn lets_in(self, token: u64) -> bool {
        match self {
            Self::Free | Self::Released(_) => true,
            Self::Held { owner, .. } => owner == token,
        }
    }
}

/// A withheld partition: since when, and the last lease seen and since when it has
/// not changed.
struct Waiting {
    since: Instant,
    seen: Option<(Lease, Instant)>,
}

/// A member's side of the leases of the partitions it is assigned.
pub(super) struct Handover {
    /// A client of the handover group, never subscribed: it only commits and reads.
    leases: BaseConsumer,
    /// This member, in the leases it writes; fresh at each start, so a restarted
    /// member does not mistake its predecessor's lease for its own.
    token: u64,
    /// The longest a partition is withheld for a lease that is renewed but not released.
    wait: Duration,
    /// Partitions assigned but withheld.
    withheld: Mutex<HashMap<Partition, Waiting>>,
    /// Partitions whose lease this member holds (and renews). The lock also keeps a
    /// renewal from overwriting a release.
    claimed: Mutex<HashSet<Partition>>,
    /// Renewals so far.
    beat: AtomicU64,
}

/// The group whose commits hold `group`'s leases.
fn lease_group(group: &str) -> String {
    format!("{group}.handover")
}

impl Handover {
    /// Leases for the partitions of `group`; a partition whose lease is not released
    /// is withheld for at most `wait`.
    pub(super) fn new(kafka: &KafkaSettings, group: &str, wait: Duration) -> anyhow::Result<Self> {
        let leases = kafka.base_consumer(&lease_group(group))?;
        let token = (rand::random::<u64>() >> 24).max(1);
        Ok(Self {
            leases,
            token,
            wait,
            withheld: Mutex::new(HashMap::new()),
            claimed: Mutex::new(HashSet::new()),
            beat: AtomicU64::new(0),
        })
    }

    /// Whether `partition`'s records must wait for its previous owner.
    pub(super) fn is_withheld(&self, partition: &Partition) -> bool {
        lock(&self.withheld).contains_key(partition)
    }

    /// Whether any partition waits for its previous owner.
    pub(super) fn any_withheld(&self) -> bool {
        !lock(&self.withheld).is_empty()
    }

    /// The partitions of `list` that wait for their previous owner (`withheld`), or
    /// those that do not.
    pub(super) fn select(&self, list: &TopicPartitionList, withheld: bool) -> TopicPartitionList {
        let waiting = lock(&self.withheld);
        let mut selected = TopicPartitionList::new();
        for e in list.elements() {
            if waiting.contains_key(&(e.topic().to_string(), e.partition())) == withheld {
                selected.add_partition(e.topic(), e.partition());
            }
        }
        selected
    }

    /// Partitions were just assigned: claims those nobody else holds and withholds
    /// the others.
    pub(super) fn assigned(&self, assigned: &[Partition]) {
        let leases = match self.read(assigned) {
            Ok(leases) => leases,
            Err(err) => {
                // Withholding on a failed look-up would stop the partitions for the
                // whole wait; reading them at once is the old behaviour.
                tracing::warn!(
                    error = format!("{err:#}"),
                    "cannot read the partitions' leases; reading them now"
                );
                return;
            }
        };
        let (free, held): (Vec<_>, Vec<_>) =
            leases.into_iter().partition(|(_, lease)| lease.lets_in(self.token));
        self.claim(free.into_iter().map(|(p, _)| p).collect());
        let since = Instant::now();
        let mut withheld = lock(&self.withheld);
        for (partition, lease) in held {
            tracing::info!(
                topic = %partition.0,
                partition = partition.1,
                lease = ?lease,
                "partition withheld until its previous owner releases it"
            );
            withheld.insert(partition, Waiting { since, seen: Some((lease, since)) });
        }
    }

    /// Partitions were revoked: releases the leases this member holds there, after the
    /// last commit (`lost`: the group already gave them away, so the lease is left to
    /// go stale).
    pub(super) fn revoked(&self, revoked: &[Partition], lost: bool) {
        let mut withheld = lock(&self.withheld);
        for p in revoked {
            withheld.remove(p);
        }
        drop(withheld);
        let mut claimed = lock(&self.claimed);
        let ours: Vec<Partition> = revoked.iter().filter(|p| claimed.remove(*p)).cloned().collect();
        if lost || ours.is_empty() {
            return;
        }
        // Still under the lock: a renewal must not land after the release.
        self.write(&ours, Lease::Released(self.token));
    }

    /// The assignment was dropped without a revoke.
    pub(super) fn clear(&self) {
        lock(&self.withheld).clear();
        lock(&self.claimed).clear();
    }

    /// Renews the leases this member holds, so that the next owner of a partition
    /// can tell a live previous owner from a dead one.
    pub(super) fn renew(&self) {
        let claimed = lock(&self.claimed);
        if claimed.is_empty() {
            return;
        }
        let beat = self.beat.fetch_add(1, Ordering::Relaxed) + 1;
        let partitions: Vec<Partition> = claimed.iter().cloned().collect();
        self.write(&partitions, Lease::Held { owner: self.token, beat });
    }

    /// Checks the withheld partitions' leases; claims those released (or whose holder
    /// stopped renewing, or whose wait ran out), moves `consumer` to the offset
    /// committed there by now, and resumes them unless `paused` (fetching is paused
    /// for all, and resumes them with the rest).
    pub(super) fn poll<C: ConsumerContext, K: Consumer<C>>(&self, consumer: &K, paused: bool) {
        let partitions: Vec<Partition> = lock(&self.withheld).keys().cloned().collect();
        if partitions.is_empty() {
            return;
        }
        let leases = match self.read(&partitions) {
            Ok(leases) => leases,
            Err(err) => {
                tracing::warn!(error = format!("{err:#}"), "cannot read the withheld partitions' leases");
                Vec::new()
            }
        };
        let now = Instant::now();
        let mut ready = Vec::new();
        let mut withheld = lock(&self.withheld);
        for (p, lease) in leases {
            let Some(waiting) = withheld.get_mut(&p) else { continue };
            let released = lease.lets_in(self.token);
            // Unchanged since first seen this way: not renewed meanwhile.
            let seen = match waiting.seen {
                Some((before, at)) if before == lease => at,
                _ => now,
            };
            waiting.seen = Some((lease, seen));
            let stale = now.saturating_duration_since(seen) >= STALE;
            let given_up = now.saturating_duration_since(waiting.since) >= self.wait;
            if released || stale || given_up {
                let waited_ms = now.saturating_duration_since(waiting.since).as_millis() as u64;
                let why = if released {
                    "released"
                } else if stale {
                    "previous owner gone (lease not renewed)"
                } else {
                    "wait over, previous owner still renewing"
                };
                tracing::info!(topic = %p.0, partition = p.1, waited_ms, why, lease = ?lease, "partition released: reading it");
                ready.push(p);
            }
        }
        for p in &ready {
            withheld.remove(p);
        }
        drop(withheld);
        if ready.is_empty() {
            return;
        }
        self.claim(ready.clone());
        if let Err(err) = self.seek_to_commit(consumer, &ready) {
            // Read from where librdkafka stands (the commit as of the assignment): some
            // records the previous owner ran may run again, none is skipped.
            tracing::warn!(error = format!("{err:#}"), "cannot move the released partitions to their commit");
        }
        if !paused {
            let resumed = list(&ready).and_then(|l| Ok(consumer.resume(&l)?));
            if let Err(err) = resumed {
                tracing::warn!(error = format!("{err:#}"), "cannot resume the released partitions");
            }
        }
    }

    /// Writes this member's lease on `partitions` and renews it from now on.
    fn claim(&self, partitions: Vec<Partition>) {
        if partitions.is_empty() {
            return;
        }
        let mut claimed = lock(&self.claimed);
        let beat = self.beat.load(Ordering::Relaxed);
        self.write(&partitions, Lease::Held { owner: self.token, beat });
        claimed.extend(partitions);
    }

    /// Seeks `partitions` to the offset their previous owner committed last: records
    /// fetched before are dropped.
    fn seek_to_commit<C: ConsumerContext, K: Consumer<C>>(
        &self,
        consumer: &K,
        partitions: &[Partition],
    ) -> anyhow::Result<()> {
        let committed = consumer.committed_offsets(list(partitions)?, LEASE_TIMEOUT)?;
        for e in committed.elements() {
            // `auto.offset.reset` is earliest: no commit reads from the start.
            let from = match e.offset() {
                Offset::Offset(o) if o >= 0 => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            consumer.seek(e.topic(), e.partition(), from, LEASE_TIMEOUT)?;
        }
        Ok(())
    }

    /// The leases of `partitions`.
    fn read(&self, partitions: &[Partition]) -> anyhow::Result<Vec<(Partition, Lease)>> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let committed = self.leases.committed_offsets(list(partitions)?, LEASE_TIMEOUT)?;
        Ok(committed
            .elements()
            .iter()
            .map(|e| ((e.topic().to_string(), e.partition()), Lease::from_offset(e.offset())))
            .collect())
    }

    /// Writes `lease` for `partitions`. A lease that is not written only makes the next
    /// owner wait longer, or not at all.
    fn write(&self, partitions: &[Partition], lease: Lease) {
        if partitions.is_empty() {
            return;
        }
        let written = list_at(partitions, Offset::Offset(lease.to_offset()))
            .and_then(|l| Ok(self.leases.commit(&l, CommitMode::Sync)?));
        if let Err(err) = written {
            tracing::warn!(error = format!("{err:#}"), lease = ?lease, "cannot write the partitions' lease");
        }
    }
}

/// Renews `handover`'s leases every [`RENEW_EVERY`], off the loop: a member running
/// out a revoke grace blocks its loop in the rebalance callback, and is alive.
pub(super) async fn renew_leases(handover: std::sync::Arc<Handover>) {
    let mut every = tokio::time::interval(RENEW_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let handover = handover.clone();
        // Commits block on the network.
        let _ = tokio::task::spawn_blocking(move || handover.renew()).await;
    }
}

/// `partitions` as a list without offsets.
fn list(partitions: &[Partition]) -> anyhow::Result<TopicPartitionList> {
    list_at(partitions, Offset::Invalid)
}

/// `partitions` as a list, each at `offset`.
fn list_at(partitions: &[Partition], offset: Offset) -> anyhow::Result<TopicPartitionList> {
    let mut l = TopicPartitionList::new();
    for (topic, partition) in partitions {
        l.add_partition_offset(topic, *partition, offset)?;
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_survives_its_offset_and_lets_in_only_whom_it_should() {
        let top = u64::MAX >> 24;
        let leases = [
            Lease::Held { owner: top, beat: (1 << BEAT_BITS) - 1 },
            Lease::Held { owner: 1, beat: 0 },
            Lease::Released(top),
            Lease::Released(7),
        ];
        for lease in leases {
            assert!(lease.to_offset() > 0, "{lease:?}");
            assert_eq!(Lease::from_offset(Offset::Offset(lease.to_offset())), lease);
        }
        let wrapped = Lease::Held { owner: 3, beat: 1 << BEAT_BITS };
        assert_eq!(
            Lease::from_offset(Offset::Offset(wrapped.to_offset())),
            Lease::Held { owner: 3, beat: 0 }
        );
        assert_eq!(Lease::from_offset(Offset::Invalid), Lease::Free);
        assert_eq!(Lease::from_offset(Offset::Offset(0)), Lease::Free);
        assert!(Lease::Free.lets_in(3) && Lease::Released(5).lets_in(3));
        assert!(Lease::Held { owner: 3, beat: 9 }.lets_in(3));
        assert!(
            !Lease::Held { owner: 5, beat: 9 }.lets_in(3),
            "another member may still be running records there"
        );
    }
}
