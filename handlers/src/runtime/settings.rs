//! The runtime's settings (`HANDLER_*` and `KAFKA_*`).

use std::{net::SocketAddr, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use platform::{
    kafka::KafkaSettings,
    settings::{Env, SettingsError},
};

use super::assignment::{self, Assignment};

/// How the runtime consumes, retries and shuts down.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// Kafka connection and security.
    pub kafka: KafkaSettings,
    /// Address of `/health` and `/ready`.
    pub listen: SocketAddr,
    /// Address of `/metrics` (`METRICS_LISTEN_ADDR`).
    pub metrics_listen: SocketAddr,
    /// Records handled at once (each conversation's records one after another).
    pub concurrency: usize,
    /// Retries of failing records.
    pub retrying: Retrying,
    /// How long SIGTERM waits for records in flight.
    pub shutdown_grace: Duration,
    /// The largest record handled.
    pub record_limit: RecordLimit,
    /// How partitions move between members (`HANDLER_PARTITION_ASSIGNMENT`).
    pub assignment: Assignment,
    /// How long a revoked partition's running records may finish (`HANDLER_REVOKE_GRACE_SECS`).
    pub revoke_grace: Duration,
    /// How long a partition its previous owner has not released waits for it
    /// (`HANDLER_HANDOVER_WAIT_SECS`; 0: no leases).
    pub handover_wait: Duration,
}

/// `HANDLER_MAX_RECORD_BYTES`: larger records are dead-lettered undecoded, from Kafka and
/// through the invoke entry alike. No producer of ours writes one (the gateway caps a
/// message at `MAX_MESSAGE_BYTES`), and a huge one would reach the embedder and the LLM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLimit(usize);

impl RecordLimit {
    /// Reads `HANDLER_MAX_RECORD_BYTES` (default 256 KiB).
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let bytes = env.parse_or("HANDLER_MAX_RECORD_BYTES", 256 * 1024)?;
        Ok(Self(at_least_one("HANDLER_MAX_RECORD_BYTES", bytes)?))
    }

    /// Why a record value of `len` bytes is refused, or `None` when it is within the limit.
    pub fn refusal(self, len: usize) -> Option<String> {
        (len > self.0).then(|| format!("record of {len} bytes is over HANDLER_MAX_RECORD_BYTES ({})", self.0))
    }
}

/// How often and how patiently a failing record is retried.
#[derive(Debug, Clone, Copy)]
pub struct Retrying {
    /// Attempts before a record that keeps failing goes to the DLQ.
    pub max_attempts: u32,
    /// Backoff between attempts.
    pub policy: RetryPolicy,
}

impl Retrying {
    /// Reads `HANDLER_MAX_ATTEMPTS`, `HANDLER_RETRY_BASE_MS` and `HANDLER_RETRY_MAX_MS`.
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let base_ms: u64 = env.parse_or("HANDLER_RETRY_BASE_MS", 250)?;
        let max_ms: u64 = env.parse_or("HANDLER_RETRY_MAX_MS", 10_000)?;
        if base_ms == 0 || max_ms < base_ms {
            return Err(SettingsError::Invalid {
                name: "HANDLER_RETRY_MAX_MS".into(),
                value: max_ms.to_string(),
                reason: format!("must be at least HANDLER_RETRY_BASE_MS ({base_ms}), which must be above 0"),
            });
        }
        Ok(Self {
            max_attempts: at_least_one("HANDLER_MAX_ATTEMPTS", env.parse_or("HANDLER_MAX_ATTEMPTS", 5)?)?,
            policy: RetryPolicy { base: Duration::from_millis(base_ms), max: Duration::from_millis(max_ms) },
        })
    }
}

/// Exponential backoff with full jitter between `base` and `max`.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// First delay.
    pub base: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl RetryPolicy {
    /// An endless series of delays (callers decide when to stop).
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        let max = self.max;
        ExponentialBuilder::default()
            .with_min_delay(self.base)
            .with_max_delay(self.max)
            .with_jitter()
            .without_max_times()
            .build()
            .map(move |d| d.min(max))
    }
}

impl RuntimeSettings {
    /// Reads the settings; `service` names the Kafka client, `concurrency` is the
    /// handler's default for `HANDLER_CONCURRENCY`.
    pub fn from_env(env: &Env, service: &str, concurrency: usize) -> Result<Self, SettingsError> {
        Ok(Self {
            kafka: KafkaSettings::from_env(env, service)?,
            listen: env.parse_or("HANDLER_LISTEN_ADDR", SocketAddr::from(([0, 0, 0, 0], 9090)))?,
            metrics_listen: platform::prometheus::listen_addr(env)?,
            concurrency: at_least_one(
                "HANDLER_CONCURRENCY",
                env.parse_or("HANDLER_CONCURRENCY", concurrency)?,
            )?,
            retrying: Retrying::from_env(env)?,
            shutdown_grace: Duration::from_secs(env.parse_or("HANDLER_SHUTDOWN_GRACE_SECS", 20)?),
            record_limit: RecordLimit::from_env(env)?,
            assignment: Assignment::from_env(env)?,
            revoke_grace: assignment::revoke_grace_from_env(env)?,
            handover_wait: assignment::handover_wait_from_env(env)?,
        })
    }
}

fn at_least_one<T: PartialOrd + From<u8> + ToString>(name: &str, value: T) -> Result<T, SettingsError> {
    if value < T::from(1) {
        return Err(SettingsError::Invalid {
            name: name.into(),
            value: value.to_string(),
            reason: "must be at least 1".into(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_the_variable() {
        let env = Env::from_pairs([("KAFKA_BOOTSTRAP_SERVERS", "k:9092")]);
        let s = RuntimeSettings::from_env(&env, "responder", 8).expect("defaults are valid");
        assert_eq!((s.concurrency, s.retrying.max_attempts, s.listen.port()), (8, 5, 9090));
        let env = Env::from_pairs([("KAFKA_BOOTSTRAP_SERVERS", "k:9092"), ("HANDLER_CONCURRENCY", "0")]);
        let err = RuntimeSettings::from_env(&env, "responder", 8).expect_err("0 is rejected");
        assert!(err.to_string().contains("HANDLER_CONCURRENCY"), "{err}");
    }

    #[test]
    fn records_over_the_limit_are_refused_with_the_reason() {
        let limit =
            RecordLimit::from_env(&Env::from_pairs([("HANDLER_MAX_RECORD_BYTES", "10")])).expect("valid");
        assert_eq!(limit.refusal(10), None);
        assert_eq!(
            limit.refusal(11).as_deref(),
            Some("record of 11 bytes is over HANDLER_MAX_RECORD_BYTES (10)")
        );
        let zero = RecordLimit::from_env(&Env::from_pairs([("HANDLER_MAX_RECORD_BYTES", "0")]));
        assert!(zero.expect_err("0 is rejected").to_string().contains("HANDLER_MAX_RECORD_BYTES"));
    }

    #[test]
    fn delays_grow_with_jitter_and_stay_under_the_cap() {
        let policy = RetryPolicy { base: Duration::from_millis(100), max: Duration::from_millis(800) };
        let delays: Vec<_> = policy.delays().take(8).collect();
        assert_eq!(delays.len(), 8);
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(800)), "{delays:?}");
        assert!(delays[0] >= Duration::from_millis(100), "{delays:?}");
        assert!(delays[7] >= Duration::from_millis(400), "late delays back off: {delays:?}");
    }
}
