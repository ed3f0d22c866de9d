//! What to do after a failed attempt: the one retry decision the Kafka loop and the
//! HTTP invoke entry share (each reacts to it in its own way).

use super::handler::HandlerError;

/// The next step after attempt `attempt` of an input failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// A dependency is down, not the input: try again without counting the attempt.
    WaitForDependency,
    /// Try again after a backoff; the attempt counts.
    Retry,
    /// Retrying cannot help, or every attempt is spent: give up on the input.
    GiveUp,
}

/// Decides what follows a failed attempt (`attempt` counts from 1).
pub fn after_failure(error: &HandlerError, attempt: u32, max_attempts: u32) -> AfterFailure {
    match error {
        HandlerError::Unavailable(_) => AfterFailure::WaitForDependency,
        HandlerError::Transient(_) if attempt < max_attempts => AfterFailure::Retry,
        HandlerError::Transient(_) | HandlerError::Invalid(_) => AfterFailure::GiveUp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient() -> HandlerError {
        HandlerError::Transient(anyhow::anyhow!("LLM 503"))
    }

    #[test]
    fn transient_failures_retry_until_the_last_attempt() {
        assert_eq!(after_failure(&transient(), 1, 3), AfterFailure::Retry);
        assert_eq!(after_failure(&transient(), 2, 3), AfterFailure::Retry);
        assert_eq!(after_failure(&transient(), 3, 3), AfterFailure::GiveUp);
        assert_eq!(after_failure(&transient(), 1, 1), AfterFailure::GiveUp);
    }

    #[test]
    fn invalid_input_gives_up_at_once() {
        let invalid = HandlerError::Invalid(anyhow::anyhow!("rejected"));
        assert_eq!(after_failure(&invalid, 1, 5), AfterFailure::GiveUp);
    }

    #[test]
    fn an_unavailable_dependency_is_waited_for_whatever_the_count() {
        let down = HandlerError::Unavailable(anyhow::anyhow!("Qdrant down"));
        assert_eq!(after_failure(&down, 1, 5), AfterFailure::WaitForDependency);
        assert_eq!(after_failure(&down, 99, 5), AfterFailure::WaitForDependency);
    }
}
