//! Which of a message's attempts its streams are shown: the hub's state machine, pure
//! so that every ordering of attempts, copies, gaps and ends can be tested on its own.
//!
//! A redelivered user message may be answered twice. One attempt is shown at a time;
//! when a new attempt starts (the first one died), a `reset` tells the client to drop
//! the partial text, then the new attempt's tokens follow. A superseded attempt's
//! tokens are dropped. The first `done` or `error` of any attempt ends the message;
//! later events for it are dropped. A client is never shown text that differs from the
//! final one without being told: a superseded attempt's `done` comes after a `reset`,
//! and tokens that never arrived (a `seq` skipped, or fewer than `done` counts) are
//! announced by a `gap`, after which the `done` text replaces what was shown.

use uuid::Uuid;

use platform::events::ReplyBody;

use crate::reply::ReplyKind;

/// What to do with one reply event of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Show it to the message's streams.
    Show {
        /// Send a `reset` first: the event's attempt replaces the text shown so far.
        reset: bool,
        /// Send a `gap` first (after any `reset`): tokens of the attempt are missing.
        gap: bool,
        /// The message's first event shown.
        first: bool,
        /// The message's final event (`done` or `error`).
        last: bool,
    },
    /// Drop it.
    Drop(Dropped),
}

/// Why an event was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The message has already ended.
    Finished,
    /// Its attempt was replaced by a newer one (and the event does not end the message).
    Superseded,
    /// A second copy of a token already shown (a producer without idempotence retried a
    /// write that had been stored), or a token that arrived after later ones; showing it
    /// would repeat or misplace its text.
    Duplicate,
}

/// The attempts of one message seen so far.
#[derive(Debug, Default)]
pub struct Attempts {
    current: Option<Uuid>,
    superseded: Vec<Uuid>,
    finished: bool,
    /// The `seq` the current attempt's next token should have.
    next_seq: u32,
    /// Events were lost and a `gap` already said so (the relay skipped records): the
    /// next token sets `next_seq` anew instead of announcing a second gap.
    gap_announced: bool,
}

impl Attempts {
    /// Decides what to do with an event of `attempt`, and records it.
    pub fn admit(&mut self, attempt: Uuid, kind: &ReplyKind) -> Verdict {
        if self.finished {
            return Verdict::Drop(Dropped::Finished);
        }
        let last = matches!(kind, ReplyKind::Reply(ReplyBody::Done { .. } | ReplyBody::Error { .. }));
        let first = self.current.is_none();
        let mut reset = false;
        match self.current {
            Some(current) if current == attempt => {}
            // A superseded attempt may still finish first: its final text wins then, and
            // replaces the newer attempt's tokens already shown.
            _ if self.superseded.contains(&attempt) => {
                if !last {
                    return Verdict::Drop(Dropped::Superseded);
                }
                reset = true;
            }
            Some(current) => {
                self.superseded.push(current);
                self.current = Some(attempt);
                self.next_seq = 0;
                self.gap_announced = false;
                reset = true;
            }
            None => self.current = Some(attempt),
        }
        let shown = self.current == Some(attempt);
        let gap = match kind {
            ReplyKind::Reply(ReplyBody::Token { seq, .. }) => {
                if *seq < self.next_seq {
                    return Verdict::Drop(Dropped::Duplicate);
                }
                let skipped = *seq > self.next_seq && !self.gap_announced;
                self.next_seq = seq.saturating_add(1);
                self.gap_announced = false;
                skipped
            }
            // Tokens announced by an earlier `gap` are counted in `next_seq` already.
            ReplyKind::Reply(ReplyBody::Done { token_events, .. }) => {
                shown && !self.gap_announced && *token_events != self.next_seq
            }
            _ => false,
        };
        self.finished = last;
        Verdict::Show { reset, gap, first, last }
    }

    /// True once the message has ended.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Records that some of the message's events were lost (the relay skipped records
    /// it could no longer read) and returns the attempt whose streams must be told with
    /// a `gap`; `None` when nothing was shown yet or the message has ended.
    pub fn lose_events(&mut self) -> Option<Uuid> {
        if self.finished {
            return None;
        }
        self.gap_announced = self.current.is_some();
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(seq: u32) -> ReplyKind {
        ReplyKind::Reply(ReplyBody::Token { seq, delta: String::new() })
    }

    fn done(token_events: u32) -> ReplyKind {
        ReplyKind::Reply(ReplyBody::Done {
            text: String::new(),
            usage: None,
            finish_reason: "stop".into(),
            token_events,
        })
    }

    const SHOW: Verdict = Verdict::Show { reset: false, gap: false, first: false, last: false };

    fn show(reset: bool, gap: bool, first: bool, last: bool) -> Verdict {
        Verdict::Show { reset, gap, first, last }
    }

    #[test]
    fn one_attempt_is_shown_from_first_token_to_done() {
        let (mut m, a) = (Attempts::default(), Uuid::new_v4());
        assert_eq!(m.admit(a, &token(0)), show(false, false, true, false));
        assert_eq!(m.admit(a, &token(1)), SHOW);
        assert_eq!(m.admit(a, &done(2)), show(false, false, false, true));
        assert!(m.is_finished());
        assert_eq!(m.admit(a, &token(2)), Verdict::Drop(Dropped::Finished));
    }

    #[test]
    fn a_new_attempt_resets_and_the_old_ones_tokens_are_dropped() {
        let (mut m, a, b) = (Attempts::default(), Uuid::new_v4(), Uuid::new_v4());
        m.admit(a, &token(0));
        m.admit(a, &token(1));
        assert_eq!(
            m.admit(b, &token(0)),
            show(true, false, false, false),
            "seq restarts for the new attempt"
        );
        assert_eq!(m.admit(a, &token(2)), Verdict::Drop(Dropped::Superseded));
        assert_eq!(m.admit(b, &token(1)), SHOW);
        assert_eq!(m.admit(b, &done(2)), show(false, false, false, true));
        assert_eq!(m.admit(a, &done(3)), Verdict::Drop(Dropped::Finished));
    }

    #[test]
    fn a_superseded_attempt_that_finishes_first_resets_the_newer_ones_text() {
        let (mut m, a, b) = (Attempts::default(), Uuid::new_v4(), Uuid::new_v4());
        m.admit(a, &token(0));
        m.admit(b, &token(0));
        assert_eq!(m.admit(a, &done(5)), show(true, false, false, true));
        assert_eq!(m.admit(b, &done(1)), Verdict::Drop(Dropped::Finished));
    }

    #[test]
    fn second_copies_and_late_tokens_are_dropped() {
        let (mut m, a) = (Attempts::default(), Uuid::new_v4());
        m.admit(a, &token(0));
        m.admit(a, &token(1));
        assert_eq!(m.admit(a, &token(1)), Verdict::Drop(Dropped::Duplicate));
        assert_eq!(m.admit(a, &token(0)), Verdict::Drop(Dropped::Duplicate));
        assert_eq!(m.admit(a, &token(2)), SHOW);
    }

    #[test]
    fn a_skipped_seq_is_announced_by_a_gap_once() {
        let (mut m, a) = (Attempts::default(), Uuid::new_v4());
        m.admit(a, &token(0));
        assert_eq!(m.admit(a, &token(3)), show(false, true, false, false), "tokens 1 and 2 never came");
        assert_eq!(m.admit(a, &token(2)), Verdict::Drop(Dropped::Duplicate), "too late to place");
        assert_eq!(m.admit(a, &token(4)), SHOW);
        assert_eq!(m.admit(a, &done(5)), show(false, false, false, true), "already announced");
    }

    #[test]
    fn a_done_that_counts_more_tokens_than_arrived_is_preceded_by_a_gap() {
        let (mut m, a) = (Attempts::default(), Uuid::new_v4());
        m.admit(a, &token(0));
        assert_eq!(m.admit(a, &done(3)), show(false, true, false, true));

        let (mut m, b) = (Attempts::default(), Uuid::new_v4());
        assert_eq!(m.admit(b, &done(2)), show(false, true, true, true), "every token lost");
        let (mut m, c) = (Attempts::default(), Uuid::new_v4());
        assert_eq!(m.admit(c, &done(0)), show(false, false, true, true), "a reply without tokens");
    }

    #[test]
    fn a_new_attempt_seen_from_its_middle_gets_a_reset_and_a_gap() {
        let (mut m, a, b) = (Attempts::default(), Uuid::new_v4(), Uuid::new_v4());
        m.admit(a, &token(0));
        assert_eq!(m.admit(b, &token(2)), show(true, true, false, false));
        let (mut m, c) = (Attempts::default(), Uuid::new_v4());
        assert_eq!(m.admit(c, &token(1)), show(false, true, true, false));
    }

    #[test]
    fn events_lost_by_the_relay_are_announced_once() {
        let (mut m, a) = (Attempts::default(), Uuid::new_v4());
        assert_eq!(m.lose_events(), None, "nothing shown yet: its first token says it");
        m.admit(a, &token(0));
        assert_eq!(m.lose_events(), Some(a));
        assert_eq!(m.admit(a, &token(4)), SHOW, "already announced");
        assert_eq!(m.admit(a, &token(6)), show(false, true, false, false), "a new loss");
        m.lose_events();
        assert_eq!(m.admit(a, &done(9)), show(false, false, false, true));
        assert_eq!(m.lose_events(), None, "an ended message lost nothing");
    }

    #[test]
    fn an_error_ends_the_message_like_done() {
        let (mut m, a) = (Attempts::default(), Uuid::new_v4());
        let error =
            ReplyKind::Reply(ReplyBody::Error { code: "llm_unavailable".into(), message: String::new() });
        assert_eq!(m.admit(a, &error), show(false, false, true, true));
        assert_eq!(m.admit(Uuid::new_v4(), &token(0)), Verdict::Drop(Dropped::Finished));
    }
}
