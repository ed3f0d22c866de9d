//! Remembers recent answers by `Idempotency-Key`, so a retried `POST /chat` returns the
//! first answer and publishes nothing new.
//!
//! Per replica and bounded (count and age). A retry that reaches another replica is
//! still harmless downstream: the message id is derived from the user and the key, so
//! both writes carry the same `message_id`.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use platform::sync::lock;

use crate::intake::Accepted;

/// A bounded, expiring map from (user, key) to the first answer and its request.
pub struct IdempotencyCache {
    capacity: usize,
    ttl: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<(String, String), Entry>,
    order: VecDeque<(Instant, (String, String))>,
}

/// One remembered answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// A fingerprint of the request, to refuse a key reused for another request.
    pub request: u64,
    /// The answer.
    pub answer: Accepted,
}

impl IdempotencyCache {
    /// Keeps at most `capacity` answers for at most `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self { capacity, ttl, inner: Mutex::new(Inner::default()) }
    }

    /// The remembered answer for `(user, key)`, if any.
    pub fn get(&self, user: &str, key: &str) -> Option<Entry> {
        let mut inner = lock(&self.inner);
        self.expire(&mut inner);
        inner.entries.get(&(user.to_string(), key.to_string())).cloned()
    }

    /// Remembers `entry` for `(user, key)`.
    pub fn put(&self, user: &str, key: &str, entry: Entry) {
        let mut inner = lock(&self.inner);
        let k = (user.to_string(), key.to_string());
        if inner.entries.insert(k.clone(), entry).is_none() {
            inner.order.push_back((Instant::now(), k));
        }
        while inner.entries.len() > self.capacity {
            match inner.order.pop_front() {
                Some((_, old)) => {
                    inner.entries.remove(&old);
                }
                None => break,
            }
        }
    }

    fn expire(&self, inner: &mut Inner) {
        while let Some((at, _)) = inner.order.front() {
            if at.elapsed() < self.ttl {
                break;
            }
            if let Some((_, old)) = inner.order.pop_front() {
                inner.entries.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn remembers_per_user_and_key_within_bounds() {
        let cache = IdempotencyCache::new(2, Duration::from_secs(60));
        let e = |n| Entry {
            request: n,
            answer: Accepted { message_id: Uuid::from_u128(n.into()), conversation_id: Uuid::nil() },
        };
        cache.put("alice", "k1", e(1));
        assert_eq!(cache.get("alice", "k1"), Some(e(1)));
        assert_eq!(cache.get("bob", "k1"), None);
        cache.put("alice", "k2", e(2));
        cache.put("alice", "k3", e(3));
        assert_eq!(cache.get("alice", "k1"), None, "oldest evicted at capacity");
        assert_eq!(cache.get("alice", "k3"), Some(e(3)));
    }

    #[test]
    fn forgets_after_the_ttl() {
        let cache = IdempotencyCache::new(10, Duration::ZERO);
        cache.put(
            "alice",
            "k",
            Entry { request: 1, answer: Accepted { message_id: Uuid::nil(), conversation_id: Uuid::nil() } },
        );
        assert_eq!(cache.get("alice", "k"), None);
    }
}
