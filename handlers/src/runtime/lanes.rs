//! Per-key lanes: records with the same key (a conversation) run one after another,
//! records with different keys run side by side, at most `limit` at a time.
//!
//! The scheduler is plain data driven by the consumer loop, so its ordering rules are
//! tested without Kafka.

use std::collections::{HashMap, VecDeque};

/// Lanes of jobs keyed by `Vec<u8>` (the Kafka record key).
#[derive(Debug)]
pub struct Lanes<J> {
    /// A key is present while one of its jobs runs or waits; its deque holds the jobs
    /// not yet started.
    lanes: HashMap<Vec<u8>, VecDeque<J>>,
    /// Keys whose next job waits only for a free slot, oldest first.
    ready: VecDeque<Vec<u8>>,
    running: usize,
    limit: usize,
    held: usize,
}

impl<J> Lanes<J> {
    /// Lanes that run at most `limit` jobs at once (at least one).
    pub fn new(limit: usize) -> Self {
        Self { lanes: HashMap::new(), ready: VecDeque::new(), running: 0, limit: limit.max(1), held: 0 }
    }

    /// Adds a job; returns it back if it may start now.
    pub fn push(&mut self, key: Vec<u8>, job: J) -> Option<J> {
        self.held += 1;
        if let Some(waiting) = self.lanes.get_mut(&key) {
            waiting.push_back(job);
            return None;
        }
        if self.running < self.limit {
            self.lanes.insert(key, VecDeque::new());
            self.running += 1;
            Some(job)
        } else {
            self.lanes.insert(key.clone(), VecDeque::from([job]));
            self.ready.push_back(key);
            None
        }
    }

    /// Marks the running job of `key` finished; returns the jobs that may start now.
    pub fn finish(&mut self, key: &[u8]) -> Vec<(Vec<u8>, J)> {
        self.running = self.running.saturating_sub(1);
        self.held = self.held.saturating_sub(1);
        match self.lanes.get(key) {
            Some(waiting) if !waiting.is_empty() => self.ready.push_back(key.to_vec()),
            Some(_) => {
                self.lanes.remove(key);
            }
            None => {}
        }
        let mut start = Vec::new();
        while self.running < self.limit {
            let Some(next) = self.ready.pop_front() else { break };
            if let Some(job) = self.lanes.get_mut(&next).and_then(VecDeque::pop_front) {
                self.running += 1;
                start.push((next, job));
            }
        }
        start
    }

    /// Jobs held: running or waiting.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_runs_in_order_one_at_a_time() {
        let mut lanes = Lanes::new(4);
        assert_eq!(lanes.push(b"a".to_vec(), 1), Some(1));
        assert_eq!(lanes.push(b"a".to_vec(), 2), None);
        assert_eq!(lanes.push(b"a".to_vec(), 3), None);
        assert_eq!(lanes.held(), 3);
        assert_eq!(lanes.finish(b"a"), vec![(b"a".to_vec(), 2)]);
        assert_eq!(lanes.finish(b"a"), vec![(b"a".to_vec(), 3)]);
        assert_eq!(lanes.finish(b"a"), vec![]);
        assert_eq!((lanes.held(), lanes.running()), (0, 0));
        // The lane is gone: the key starts at once again.
        assert_eq!(lanes.push(b"a".to_vec(), 4), Some(4));
    }

    #[test]
    fn different_keys_run_side_by_side_up_to_the_limit() {
        let mut lanes = Lanes::new(2);
        assert_eq!(lanes.push(b"a".to_vec(), 1), Some(1));
        assert_eq!(lanes.push(b"b".to_vec(), 2), Some(2));
        assert_eq!(lanes.push(b"c".to_vec(), 3), None);
        assert_eq!(lanes.push(b"a".to_vec(), 4), None);
        assert_eq!(lanes.running(), 2);
        // b's slot goes to c, which waited longest; a's next job waits for a's own turn.
        assert_eq!(lanes.finish(b"b"), vec![(b"c".to_vec(), 3)]);
        assert_eq!(lanes.finish(b"a"), vec![(b"a".to_vec(), 4)]);
        assert_eq!(lanes.finish(b"c"), vec![]);
        assert_eq!(lanes.finish(b"a"), vec![]);
        assert_eq!((lanes.held(), lanes.running()), (0, 0));
    }

    #[test]
    fn a_waiting_key_gets_later_jobs_in_order() {
        let mut lanes = Lanes::new(1);
        assert_eq!(lanes.push(b"a".to_vec(), 1), Some(1));
        assert_eq!(lanes.push(b"b".to_vec(), 2), None);
        assert_eq!(lanes.push(b"b".to_vec(), 3), None);
        assert_eq!(lanes.finish(b"a"), vec![(b"b".to_vec(), 2)]);
        assert_eq!(lanes.finish(b"b"), vec![(b"b".to_vec(), 3)]);
        assert_eq!(lanes.finish(b"b"), vec![]);
    }
}
