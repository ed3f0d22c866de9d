//! Waiting for the signal that stops a binary: SIGTERM (Kubernetes, the autoscaler) or
//! Ctrl-C (a terminal).

use tokio::signal::unix::{signal, SignalKind};

/// The signal that asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM.
    Terminate,
    /// SIGINT (Ctrl-C).
    Interrupt,
}

/// Waits for SIGTERM or Ctrl-C. When SIGTERM cannot be listened for, says so and waits
/// for Ctrl-C alone, so the process can still be stopped from a terminal.
pub async fn wait_for_signal() -> Signal {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return Signal::Interrupt;
        }
    };
    tokio::select! {
        _ = term.recv() => Signal::Terminate,
        _ = tokio::signal::ctrl_c() => Signal::Interrupt,
    }
}
