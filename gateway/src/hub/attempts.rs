//! Which of a message's attempts its streams are shown: the hub's state machine, pure
//! so that every ordering of attempts, copies and ends can be tested on its own.
//!
//! A redelivered user message may be answered twice. One attempt is shown at a time;
//! when a new attempt starts (the first one died), a `reset` tells the client to drop
//! the partial text, then the new attempt's tokens follow. A superseded attempt's
//! tokens are dropped. The first `done` or `error` of any attempt ends the message;
//! later events for it are dropped. So a client never sees two attempts' tokens mixed.

use uuid::Uuid;

use crate::reply::ReplyKind;

/// What to do with one reply event of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Show it to the message's streams.
    Show {
        /// Send a `reset` first: the event starts an attempt that replaces the one shown.
        reset: bool,
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
    /// write that had been stored); showing it would repeat its text.
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
}

impl Attempts {
    /// Decides what to do with an event of `attempt`, and records it.
    pub fn admit(&mut self, attempt: Uuid, kind: &ReplyKind) -> Verdict {
        if self.finished {
            return Verdict::Drop(Dropped::Finished);
        }
        let last = matches!(kind, ReplyKind::Done { .. } | ReplyKind::Error { .. });
        let first = self.current.is_none();
        let mut reset = false;
        match self.current {
            Some(current) if current == attempt => {}
            // A superseded attempt may still finish first; its final text wins then.
            _ if self.superseded.contains(&attempt) => {
                if !last {
                    return Verdict::Drop(Dropped::Superseded);
                }
            }
            Some(current) => {
                self.superseded.push(current);
                self.current = Some(attempt);
                self.next_seq = 0;
                reset = true;
            }
            None => self.current = Some(attempt),
        }
        if let ReplyKind::Token { seq, .. } = kind {
            if self.current == Some(attempt) {
                if *seq < self.next_seq {
                    return Verdict::Drop(Dropped::Duplicate);
                }
                self.next_seq = seq.saturating_add(1);
            }
        }
        self.finished = last;
        Verdict::Show { reset, first, last }
    }

    /// True once the message has ended.
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(seq: u32) -> ReplyKind {
        ReplyKind::Token { seq, delta: String::new() }
    }

    fn done() -> ReplyKind {
        ReplyKind::Done { text: String::new(), usage: None, finish_reason: "stop".into() }
    }

    const fn show(reset: bool, first: bool, last: bool) -> Verdict {
        Verdict::Show { reset, first, last }
    }

    #[test]
    fn one_attempt_is_shown_from_first_token_to_done() {
        let (mut m, a) = (Attempts::default(), Uuid::new_v4());
        assert_eq!(m.admit(a, &token(0)), show(false, true, false));
        assert_eq!(m.admit(a, &token(1)), show(false, false, false));
        assert_eq!(m.admit(a, &done()), show(false, false, true));
        assert!(m.is_finished());
        assert_eq!(m.admit(a, &token(2)), Verdict::Drop(Dropped::Finished));
    }

    #[test]
    fn a_new_attempt_resets_and_the_old_ones_tokens_are_dropped() {
        let (mut m, a, b) = (Attempts::default(), Uuid::new_v4(), Uuid::new_v4());
        m.admit(a, &token(0));
        m.admit(a, &token(1));
        assert_eq!(m.admit(b, &token(0)), show(true, false, false), "seq restarts for the new attempt");
        assert_eq!(m.admit(a, &token(2)), Verdict::Drop(Dropped::Superseded));
        assert_eq!(m.admit(b, &token(1)), show(false, false, false));
        assert_eq!(m.admit(b, &done()), show(false, false, true));
        assert_eq!(m.admit(a, &done()), Verdict::Drop(Dropped::Finished));
    }

    #[test]
    fn a_superseded_attempt_that_finishes_first_ends_the_message() {
        let (mut m, a, b) = (Attempts::default(), Uuid::new_v4(), Uuid::new_v4());
        m.admit(a, &token(0));
        m.admit(b, &token(0));
        assert_eq!(m.admit(a, &done()), show(false, false, true));
        assert_eq!(m.admit(b, &done()), Verdict::Drop(Dropped::Finished));
    }

    #[test]
    fn second_copies_of_a_token_are_dropped() {
        let (mut m, a) = (Attempts::default(), Uuid::new_v4());
        m.admit(a, &token(0));
        m.admit(a, &token(1));
        assert_eq!(m.admit(a, &token(1)), Verdict::Drop(Dropped::Duplicate));
        assert_eq!(m.admit(a, &token(0)), Verdict::Drop(Dropped::Duplicate));
        assert_eq!(m.admit(a, &token(2)), show(false, false, false));
    }

    #[test]
    fn an_error_ends_the_message_like_done() {
        let (mut m, a) = (Attempts::default(), Uuid::new_v4());
        let error = ReplyKind::Error { code: "llm_unavailable".into(), message: String::new() };
        assert_eq!(m.admit(a, &error), show(false, true, true));
        assert_eq!(m.admit(Uuid::new_v4(), &token(0)), Verdict::Drop(Dropped::Finished));
    }
}
