//! Time to first token and reply time, for the messages this replica accepted: kept
//! apart from the attempt logic because only the replica that answered `POST /chat`
//! knows when the clock started.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::Instant,
};

use platform::sync::lock;
use uuid::Uuid;

/// Messages remembered at most; the oldest are forgotten first.
const MAX_ACCEPTED: usize = 100_000;

/// When this replica accepted messages whose reply has not ended yet (bounded).
#[derive(Default)]
pub struct ReplyLatency {
    accepted: Mutex<Accepted>,
}

#[derive(Default)]
struct Accepted {
    at: HashMap<Uuid, Instant>,
    order: VecDeque<Uuid>,
}

impl ReplyLatency {
    /// Remembers that this replica accepted `message_id` now.
    pub fn note_accepted(&self, message_id: Uuid) {
        let mut accepted = lock(&self.accepted);
        if accepted.at.insert(message_id, Instant::now()).is_none() {
            accepted.order.push_back(message_id);
        }
        while accepted.order.len() > MAX_ACCEPTED {
            if let Some(old) = accepted.order.pop_front() {
                accepted.at.remove(&old);
            }
        }
    }

    /// Records time to first token (`first`: the reply's first event shown) and reply
    /// time (`last`: its end) when this replica accepted `message_id`.
    pub fn observe(&self, message_id: Uuid, first: bool, last: bool) {
        let mut accepted = lock(&self.accepted);
        let Some(at) = accepted.at.get(&message_id).copied() else { return };
        if first {
            metrics::histogram!("gateway_time_to_first_token_seconds").record(at.elapsed().as_secs_f64());
        }
        if last {
            metrics::histogram!("gateway_reply_seconds").record(at.elapsed().as_secs_f64());
            // The order queue keeps the id until it is evicted; a stale id there is harmless.
            accepted.at.remove(&message_id);
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        lock(&self.accepted).at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_s_end_forgets_its_message() {
        let latency = ReplyLatency::default();
        let id = Uuid::new_v4();
        latency.note_accepted(id);
        latency.observe(Uuid::new_v4(), true, true);
        latency.observe(id, true, false);
        assert_eq!(latency.tracked(), 1);
        latency.observe(id, false, true);
        assert_eq!(latency.tracked(), 0);
    }
}
