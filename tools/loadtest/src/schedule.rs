//! The open-loop send schedule: when each message goes out and to which conversation.
//!
//! Message `k` is due at `k / rate` seconds and belongs to conversation `k mod N`, so
//! the total rate is `rate` and each conversation gets `rate / N`. The schedule never
//! waits for replies: a slow system gets the same offered load as a fast one, and its
//! slowness shows up as latency and in-flight messages instead of a lower rate
//! (no coordinated omission).

use std::time::Duration;

use tokio::{sync::watch, time::Instant};

/// One message of the plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Planned {
    /// Position in the plan, 0-based; also the message number shown in its text.
    pub index: usize,
    /// The conversation (0-based) the message belongs to.
    pub conversation: usize,
    /// When it is due, from the start of the run.
    pub at: Duration,
}

/// How many messages a run of `duration` at `rate` sends: every `k` with `k / rate < duration`.
pub fn message_count(rate: f64, duration: Duration) -> usize {
    let exact = rate * duration.as_secs_f64();
    // A product that is an integer up to rounding error (5/s × 5 s) does not gain a message.
    (exact - 1e-9).ceil().max(0.0) as usize
}

/// The whole plan of a run, in due order.
pub fn plan(rate: f64, duration: Duration, conversations: usize) -> Vec<Planned> {
    let conversations = conversations.max(1);
    (0..message_count(rate, duration))
        .map(|index| Planned {
            index,
            conversation: index % conversations,
            at: Duration::from_secs_f64(index as f64 / rate),
        })
        .collect()
}

/// Hands each planned message to `dispatch` at its due time, measured from `start`.
/// `dispatch` must not block (spawn the send): a message that is late because the
/// process was busy goes out at once, and later ones keep their own due times. Stops
/// early when `stop` turns true; returns how many messages were dispatched.
pub async fn drive(
    plan: &[Planned],
    start: Instant,
    mut stop: watch::Receiver<bool>,
    mut dispatch: impl FnMut(Planned),
) -> usize {
    let mut dispatched = 0;
    for planned in plan {
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(start + planned.at) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        dispatch(*planned);
        dispatched += 1;
    }
    dispatched
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn count_covers_the_duration_without_an_extra_message() {
        assert_eq!(message_count(5.0, Duration::from_secs(5)), 25);
        assert_eq!(message_count(0.5, Duration::from_secs(1)), 1);
        assert_eq!(message_count(3.0, Duration::from_millis(1500)), 5); // 0, 1/3 … 4/3
        assert_eq!(message_count(0.1, Duration::from_secs(30)), 3);
        assert_eq!(message_count(10.0, Duration::from_secs_f64(0.05)), 1);
    }

    #[test]
    fn messages_are_evenly_spaced_and_spread_round_robin() {
        let plan = plan(4.0, Duration::from_secs(2), 3);
        assert_eq!(plan.len(), 8);
        for (k, p) in plan.iter().enumerate() {
            assert_eq!(p.index, k);
            assert_eq!(p.conversation, k % 3);
            assert_eq!(p.at, Duration::from_millis(250 * k as u64));
        }
        // Each conversation gets rate / N: its messages are N / rate apart.
        let first: Vec<_> = plan.iter().filter(|p| p.conversation == 0).map(|p| p.at).collect();
        assert_eq!(first, [Duration::ZERO, Duration::from_millis(750), Duration::from_millis(1500)]);
    }

    #[test]
    fn more_conversations_than_messages_leaves_some_unused() {
        let plan = plan(1.0, Duration::from_secs(3), 10);
        assert_eq!(plan.iter().map(|p| p.conversation).collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn drive_keeps_the_schedule_whatever_the_sends_do() {
        let plan = plan(10.0, Duration::from_secs(1), 2);
        let start = Instant::now();
        let (_tx, stop) = watch::channel(false);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let n = drive(&plan, start, stop, move |p| {
            log.lock().unwrap().push((p.index, start.elapsed()));
            // A send that never finishes must not hold up the next one (open loop).
            tokio::spawn(std::future::pending::<()>());
        })
        .await;
        assert_eq!(n, 10);
        let seen = seen.lock().unwrap();
        for (k, (index, at)) in seen.iter().enumerate() {
            assert_eq!(*index, k);
            assert_eq!(*at, Duration::from_millis(100 * k as u64), "message {k} left on time");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_start_catches_up_at_once_then_keeps_due_times() {
        let plan = plan(10.0, Duration::from_secs(1), 1);
        let start = Instant::now();
        tokio::time::advance(Duration::from_millis(350)).await; // the process was busy
        let (_tx, stop) = watch::channel(false);
        let mut at = Vec::new();
        drive(&plan, start, stop, |_| at.push(start.elapsed())).await;
        let ms: Vec<u128> = at.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [350, 350, 350, 350, 400, 500, 600, 700, 800, 900]);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_the_schedule() {
        let plan = plan(1.0, Duration::from_secs(100), 1);
        let (tx, stop) = watch::channel(false);
        let start = Instant::now();
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            tx.send(true).ok();
        });
        let n = drive(&plan, start, stop, |_| {}).await;
        assert_eq!(n, 3); // at 0, 1 and 2 s
        stopper.await.unwrap();
    }
}
