//! Which offsets may be committed: a partition's commit point never passes a record
//! that is still being handled, even when later records of other conversations in
//! the same partition finished first.

use std::collections::{BTreeSet, HashMap};

/// A topic-partition.
pub type Partition = (String, i32);

#[derive(Debug, Default)]
struct PartitionState {
    /// Bumped when the partition is revoked, so late completions are ignored.
    generation: u64,
    in_flight: BTreeSet<i64>,
    /// The records of `in_flight` running now (the others wait in their lanes).
    running: BTreeSet<i64>,
    /// One past the highest offset seen.
    next: Option<i64>,
    /// The last offset committed (the next offset to read).
    committed: Option<i64>,
}

impl PartitionState {
    fn commit_point(&self) -> Option<i64> {
        self.in_flight.first().copied().or(self.next)
    }
}

/// Offsets in flight per partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<Partition, PartitionState>,
    generations: u64,
}

impl OffsetTracker {
    /// Records that `offset` of `partition` is being handled; returns the partition's
    /// generation, to be passed back to [`OffsetTracker::finish`].
    pub fn start(&mut self, partition: &Partition, offset: i64) -> u64 {
        let fresh = self.generations + 1;
        let state = self
            .partitions
            .entry(partition.clone())
            .or_insert_with(|| PartitionState { generation: fresh, ..Default::default() });
        if state.generation == fresh {
            self.generations = fresh;
        }
        state.in_flight.insert(offset);
        state.next = Some(state.next.map_or(offset + 1, |next| next.max(offset + 1)));
        state.generation
    }

    /// Records that `offset` started running (it left its lane's queue).
    pub fn run(&mut self, partition: &Partition, offset: i64, generation: u64) {
        if let Some(state) = self.current(partition, generation) {
            state.running.insert(offset);
        }
    }

    /// Records that `offset` is done (its outputs acknowledged). A completion from
    /// before a revocation is ignored: someone else owns that partition now.
    pub fn finish(&mut self, partition: &Partition, offset: i64, generation: u64) {
        if let Some(state) = self.current(partition, generation) {
            state.in_flight.remove(&offset);
            state.running.remove(&offset);
        }
    }

    /// Records that `offset` stopped running without being done (it must be
    /// redelivered, so it stays in flight).
    pub fn stop(&mut self, partition: &Partition, offset: i64, generation: u64) {
        if let Some(state) = self.current(partition, generation) {
            state.running.remove(&offset);
        }
    }

    /// Records running now in `partitions`.
    pub fn running_in(&self, partitions: &[Partition]) -> usize {
        partitions.iter().filter_map(|p| self.partitions.get(p)).map(|s| s.running.len()).sum()
    }

    fn current(&mut self, partition: &Partition, generation: u64) -> Option<&mut PartitionState> {
        self.partitions.get_mut(partition).filter(|s| s.generation == generation)
    }

    /// Whether work started under `generation` still belongs to this consumer.
    pub fn is_current(&self, partition: &Partition, generation: u64) -> bool {
        self.partitions.get(partition).is_some_and(|s| s.generation == generation)
    }

    /// The offsets to commit now (next offset to read), per partition that moved.
    pub fn to_commit(&self) -> Vec<(Partition, i64)> {
        self.partitions
            .iter()
            .filter_map(|(p, s)| {
                let point = s.commit_point()?;
                (s.committed != Some(point)).then(|| (p.clone(), point))
            })
            .collect()
    }

    /// Records a successful commit.
    pub fn committed(&mut self, partition: &Partition, offset: i64) {
        if let Some(state) = self.partitions.get_mut(partition) {
            state.committed = Some(state.committed.map_or(offset, |c| c.max(offset)));
        }
    }

    /// Forgets revoked partitions (and only them) and returns the offsets still worth committing for them.
    pub fn revoke(&mut self, revoked: &[Partition]) -> Vec<(Partition, i64)> {
        let mut out = Vec::new();
        for p in revoked {
            if let Some(state) = self.partitions.remove(p) {
                if let Some(point) = state.commit_point().filter(|point| state.committed != Some(*point)) {
                    out.push((p.clone(), point));
                }
            }
        }
        out
    }

    /// Forgets every partition (the assignment was lost).
    pub fn clear(&mut self) {
        self.partitions.clear();
    }

    /// Records in flight across partitions. Only the tests ask: the loop counts its
    /// lanes instead.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|s| s.in_flight.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> Partition {
        ("user_messages".to_string(), n)
    }

    #[test]
    fn the_commit_point_waits_for_the_oldest_record_in_flight() {
        let mut t = OffsetTracker::default();
        let g = t.start(&p(0), 10);
        t.start(&p(0), 11);
        t.start(&p(0), 12);
        t.finish(&p(0), 11, g);
        t.finish(&p(0), 12, g);
        assert_eq!(t.to_commit(), vec![(p(0), 10)]);
        t.committed(&p(0), 10);
        assert_eq!(t.to_commit(), vec![]);
        t.finish(&p(0), 10, g);
        assert_eq!(t.to_commit(), vec![(p(0), 13)]);
        t.committed(&p(0), 13);
        assert_eq!((t.to_commit(), t.in_flight()), (vec![], 0));
    }

    #[test]
    fn completions_from_before_a_revocation_are_ignored() {
        let mut t = OffsetTracker::default();
        let old = t.start(&p(1), 5);
        t.start(&p(1), 6);
        t.finish(&p(1), 6, old);
        // Offset 5 is still running: nothing past it may be committed.
        assert_eq!(t.revoke(&[p(1)]), vec![(p(1), 5)]);
        assert!(!t.is_current(&p(1), old));
        let new = t.start(&p(1), 5);
        assert_ne!(new, old);
        t.finish(&p(1), 5, old);
        assert_eq!(t.in_flight(), 1, "a stale completion must not count");
        t.finish(&p(1), 5, new);
        assert_eq!(t.to_commit(), vec![(p(1), 6)]);
    }

    #[test]
    fn a_revocation_forgets_only_the_revoked_partitions() {
        let mut t = OffsetTracker::default();
        let (g0, g1) = (t.start(&p(0), 1), t.start(&p(1), 7));
        t.start(&p(1), 8);
        t.finish(&p(1), 7, g1);
        // Cooperative assignment revokes partition 1 alone; partition 0 keeps going.
        assert_eq!(t.revoke(&[p(1)]), vec![(p(1), 8)]);
        assert!(t.is_current(&p(0), g0));
        t.finish(&p(0), 1, g0);
        assert_eq!(t.to_commit(), vec![(p(0), 2)]);
    }

    #[test]
    fn running_records_are_told_from_queued_ones() {
        let mut t = OffsetTracker::default();
        let g = t.start(&p(0), 1);
        t.start(&p(0), 2);
        t.run(&p(0), 1, g);
        assert_eq!(t.running_in(&[p(0)]), 1, "offset 2 only waits in its lane");
        t.stop(&p(0), 1, g);
        assert_eq!((t.running_in(&[p(0)]), t.in_flight()), (0, 2), "stopped is not done");
        t.run(&p(0), 2, g);
        t.finish(&p(0), 2, g);
        assert_eq!((t.running_in(&[p(0), p(1)]), t.to_commit()), (0, vec![(p(0), 1)]));
    }
}
