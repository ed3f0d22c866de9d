//! What the hub no longer holds, kept small so that it can still answer two questions
//! after the details are gone: "could a stream resuming after this event have missed
//! something?" (per partition, the newest offset the hub cannot replay) and "has this
//! message already ended?" (the ids of recently finished messages whose state was
//! dropped, so a late retry of one is not shown as a new reply).

use std::collections::{HashMap, HashSet, VecDeque};

use uuid::Uuid;

use crate::reply::EventId;

/// The hub's memory of what it dropped or never read.
#[derive(Debug)]
pub struct Forgotten {
    /// Per partition, the newest offset whose events may be missing from the hub: the
    /// relay started after it, skipped it, or its conversation was forgotten.
    horizon: HashMap<i32, i64>,
    finished: VecDeque<Uuid>,
    finished_set: HashSet<Uuid>,
    finished_capacity: usize,
}

impl Forgotten {
    /// Remembers up to `finished_capacity` finished messages (the oldest go first).
    pub fn new(finished_capacity: usize) -> Self {
        Self {
            horizon: HashMap::new(),
            finished: VecDeque::new(),
            finished_set: HashSet::new(),
            finished_capacity,
        }
    }

    /// Events of `partition` up to `offset` may be missing from now on.
    pub fn raise(&mut self, partition: i32, offset: i64) {
        let horizon = self.horizon.entry(partition).or_insert(offset);
        *horizon = (*horizon).max(offset);
    }

    /// The newest event of `partition` that may be missing, if any.
    pub fn horizon(&self, partition: i32) -> Option<EventId> {
        self.horizon.get(&partition).map(|&offset| EventId::record(partition, offset))
    }

    /// `message_id` has ended and its state is being dropped.
    pub fn finish(&mut self, message_id: Uuid) {
        if self.finished_capacity == 0 || !self.finished_set.insert(message_id) {
            return;
        }
        if self.finished.len() == self.finished_capacity {
            if let Some(oldest) = self.finished.pop_front() {
                self.finished_set.remove(&oldest);
            }
        }
        self.finished.push_back(message_id);
    }

    /// True when `message_id` ended and its state was dropped.
    pub fn is_finished(&self, message_id: &Uuid) -> bool {
        self.finished_set.contains(message_id)
    }
}

/// The later of two optional events of the same partition (`b` wins across partitions).
pub fn newest(a: Option<EventId>, b: Option<EventId>) -> Option<EventId> {
    match (a, b) {
        (Some(a), Some(b)) if a.partition == b.partition && a.is_after(&b) => Some(a),
        (a, None) => a,
        (_, b) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_horizon_only_moves_forward() {
        let mut f = Forgotten::new(4);
        assert_eq!(f.horizon(1), None);
        f.raise(1, 10);
        f.raise(1, 7);
        assert_eq!(f.horizon(1), Some(EventId::record(1, 10)));
        assert_eq!(f.horizon(2), None);
    }

    #[test]
    fn finished_messages_are_remembered_up_to_the_capacity() {
        let mut f = Forgotten::new(2);
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            f.finish(*id);
        }
        f.finish(ids[2]);
        assert!(!f.is_finished(&ids[0]), "the oldest went first");
        assert!(f.is_finished(&ids[1]) && f.is_finished(&ids[2]));
    }

    #[test]
    fn newest_keeps_the_later_event() {
        let (a, b) = (EventId::record(0, 5), EventId::record(0, 9));
        assert_eq!(newest(Some(a), Some(b)), Some(b));
        assert_eq!(newest(Some(b), Some(a)), Some(b));
        assert_eq!(newest(Some(a), None), Some(a));
        assert_eq!(newest(None, Some(a)), Some(a));
    }
}
