//! Log initialisation: JSON lines for clusters, readable text for a terminal.

use tracing_subscriber::{fmt, EnvFilter};

use crate::settings::{Env, SettingsError};

/// Installs the global `tracing` subscriber for `service`.
///
/// `LOG_FORMAT` is `json` (default; one object per line with the current span's
/// fields, so message_id / conversation_id / trace_id reach every line) or `text`.
/// `RUST_LOG` filters as usual and defaults to `info`.
pub fn init(env: &Env, service: &'static str) -> Result<(), SettingsError> {
    let format = env.one_of("LOG_FORMAT", &["json", "text"], "json")?;
    let filter_spec = env.optional("RUST_LOG").unwrap_or_else(|| "info".into());
    let filter = EnvFilter::try_new(&filter_spec).map_err(|e| SettingsError::Invalid {
        name: "RUST_LOG".into(),
        value: filter_spec.clone(),
        reason: e.to_string(),
    })?;
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (e.g. in tests) keeps the first subscriber; that is harmless.
    let _ = if format == "json" {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init()
    } else {
        builder.compact().try_init()
    };
    tracing::debug!(service, "logging initialised");
    Ok(())
}
