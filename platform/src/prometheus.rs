//! Prometheus metrics on an admin port of their own (`METRICS_LISTEN_ADDR`, default
//! `0.0.0.0:9091`), apart from the ports that Services, the Ingress and the probes use:
//! what a public route can reach never includes them, and a NetworkPolicy can open
//! the admin port to Prometheus alone.

use std::net::SocketAddr;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::settings::{Env, SettingsError};

/// The admin port's default.
pub const DEFAULT_PORT: u16 = 9091;

/// `METRICS_LISTEN_ADDR`.
pub fn listen_addr(env: &Env) -> Result<SocketAddr, SettingsError> {
    env.parse_or("METRICS_LISTEN_ADDR", SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))
}

/// Installs the process's metrics recorder, with `buckets` for every histogram, and
/// serves it in Prometheus's text format on `listen` from the current tokio runtime.
/// A port that cannot be bound fails here, before anything else starts.
pub fn serve(listen: SocketAddr, buckets: &[f64]) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .set_buckets(buckets)
        .context("metrics buckets")?
        .with_http_listener(listen)
        .install()
        .with_context(|| format!("cannot serve metrics on {listen} (METRICS_LISTEN_ADDR)"))?;
    tracing::info!(address = %listen, "metrics listening");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_port_is_9091_unless_set() {
        assert_eq!(listen_addr(&Env::default()).expect("default").port(), DEFAULT_PORT);
        let env = Env::from_pairs([("METRICS_LISTEN_ADDR", "127.0.0.1:7000")]);
        assert_eq!(listen_addr(&env).expect("set").to_string(), "127.0.0.1:7000");
        let env = Env::from_pairs([("METRICS_LISTEN_ADDR", "nine")]);
        assert!(listen_addr(&env).expect_err("invalid").to_string().contains("METRICS_LISTEN_ADDR"));
    }
}
