//! An LLM that is not there yet is not a failed answer. With vLLM scaled from zero (or a
//! server still loading its model), the first messages meet a refused connection or a
//! 503 for minutes; treating that as an ordinary failure would spend every attempt and
//! dead-letter the message while the server was on its way. Within the cold-start
//! budget such a failure means "unavailable": the runtime waits without committing or
//! counting attempts. Past the budget the LLM is taken to be down, not starting, and
//! the failure counts as an attempt again, so a wrong URL still ends in an error event
//! and a dead letter instead of a queue that never moves.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use platform::sync::lock;

use crate::runtime::HandlerError;

/// Metric: LLM requests that found no server (refused, unreachable, or 503), by what the
/// responder made of them (`waited` within the budget, `failed` past it).
pub const UNREACHABLE: &str = "responder_llm_unreachable_total";

/// Creates the [`UNREACHABLE`] counters at 0 (a series before the first outage).
pub fn register_metrics() {
    for outcome in ["waited", "failed"] {
        metrics::counter!(UNREACHABLE, "outcome" => outcome).absolute(0);
    }
}

/// How long the LLM may stay unreachable before its failures count as attempts.
#[derive(Debug)]
pub struct ColdStart {
    budget: Duration,
    /// When the LLM was first found unreachable since it last answered.
    down_since: Mutex<Option<Instant>>,
}

impl ColdStart {
    /// A tracker with `budget` (`LLM_COLD_START_SECS`).
    pub fn new(budget: Duration) -> Self {
        Self { budget, down_since: Mutex::new(None) }
    }

    /// The LLM accepted a request: the next outage starts a fresh budget.
    pub fn answered(&self) {
        *lock(&self.down_since) = None;
    }

    /// The LLM could not be reached: `Unavailable` while the outage is younger than the
    /// budget, `Transient` after.
    pub fn unreachable(&self, err: anyhow::Error) -> HandlerError {
        let down_for = lock(&self.down_since).get_or_insert_with(Instant::now).elapsed();
        if down_for < self.budget {
            metrics::counter!(UNREACHABLE, "outcome" => "waited").increment(1);
            HandlerError::Unavailable(err.context(format!(
                "the LLM is not reachable yet ({}s of the {}s cold-start budget)",
                down_for.as_secs(),
                self.budget.as_secs()
            )))
        } else {
            metrics::counter!(UNREACHABLE, "outcome" => "failed").increment(1);
            HandlerError::Transient(err.context(format!(
                "the LLM has been unreachable for {}s, longer than its {}s cold-start budget",
                down_for.as_secs(),
                self.budget.as_secs()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_waits_within_the_budget_counts_after_it_and_resets_on_an_answer() {
        let cold = ColdStart::new(Duration::from_millis(50));
        let err = || anyhow::anyhow!("connection refused");
        assert!(matches!(cold.unreachable(err()), HandlerError::Unavailable(_)));
        std::thread::sleep(Duration::from_millis(60));
        let late = cold.unreachable(err());
        assert!(matches!(late, HandlerError::Transient(_)), "{late}");
        assert!(late.to_string().contains("cold-start budget"), "{late}");
        cold.answered();
        assert!(matches!(cold.unreachable(err()), HandlerError::Unavailable(_)));
    }

    #[test]
    fn a_zero_budget_never_waits() {
        let cold = ColdStart::new(Duration::ZERO);
        assert!(matches!(cold.unreachable(anyhow::anyhow!("refused")), HandlerError::Transient(_)));
    }
}
