//! Kafka client configuration from the environment, with the stack's defaults.
//!
//! Producers are idempotent with `acks=all`, so an acknowledged write is stored once
//! and a 202 from the gateway means the message is safe. Consumers commit manually
//! (a handler commits only after its outputs were acknowledged) and are tuned for
//! latency: a chat reply is a few hundred small records that should not wait in
//! batches.

use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::{
    consumer::{BaseConsumer, Consumer, StreamConsumer},
    message::OwnedHeaders,
    producer::{FutureProducer, FutureRecord},
    ClientConfig,
};
use secrecy::{ExposeSecret, SecretString};

use crate::{
    events::{encode, Event},
    otel,
    settings::{Env, SettingsError},
    trace_context::TraceParent,
};

/// How to reach the brokers; read from `KAFKA_*` variables.
#[derive(Clone)]
pub struct KafkaSettings {
    /// `KAFKA_BOOTSTRAP_SERVERS`: comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// `KAFKA_SECURITY_PROTOCOL`: plaintext, ssl, sasl_plaintext or sasl_ssl.
    pub security_protocol: String,
    /// `KAFKA_SASL_MECHANISM`: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL only).
    pub sasl_mechanism: Option<String>,
    /// `KAFKA_SASL_USERNAME` (SASL only).
    pub sasl_username: Option<String>,
    /// `KAFKA_SASL_PASSWORD` or `KAFKA_SASL_PASSWORD_FILE` (SASL only).
    pub sasl_password: Option<SecretString>,
    /// `KAFKA_SSL_CA_LOCATION`: CA bundle to verify the brokers (SSL only).
    pub ssl_ca_location: Option<String>,
    /// `KAFKA_SSL_CERTIFICATE_LOCATION` and `KAFKA_SSL_KEY_LOCATION`: client certificate (mTLS).
    pub ssl_client_cert: Option<(String, String)>,
    /// `KAFKA_PRODUCE_TIMEOUT_MS`: how long a write may wait for the broker's ack.
    pub produce_timeout: Duration,
    /// `KAFKA_CLIENT_ID`: shown in broker logs and metrics.
    pub client_id: String,
    /// `KAFKA_IDEMPOTENCE` (default true). Only for brokers that mishandle idempotent
    /// producers: tansu 0.6.0 panics on the first write after a producer's epoch bump
    /// (which follows any write that timed out), see docs/DEPENDENCIES.md.
    pub idempotence: bool,
    /// `KAFKA_LINGER_MS` (default 2): how long the producer waits to batch records.
    pub linger_ms: u32,
    /// `KAFKA_FETCH_WAIT_MAX_MS` (default 10): how long the broker may hold a fetch
    /// that has no data yet. Every record that arrives at an idle partition waits for
    /// the current fetch to return, so this bounds the latency a Kafka hop adds
    /// (librdkafka's default is 500 ms; docs/PERFORMANCE.md shows the effect).
    pub fetch_wait_max_ms: u32,
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hand-written so the SASL password can never be printed, even redacted-by-type.
        f.debug_struct("KafkaSettings")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("produce_timeout", &self.produce_timeout)
            .field("client_id", &self.client_id)
            .field("idempotence", &self.idempotence)
            .field("linger_ms", &self.linger_ms)
            .field("fetch_wait_max_ms", &self.fetch_wait_max_ms)
            .finish_non_exhaustive()
    }
}

impl KafkaSettings {
    /// Reads and validates the `KAFKA_*` variables; `client_id` defaults to `service`.
    pub fn from_env(env: &Env, service: &str) -> Result<Self, SettingsError> {
        let bootstrap_servers = env.required(
            "KAFKA_BOOTSTRAP_SERVERS",
            "comma-separated host:port list of Kafka brokers, e.g. 127.0.0.1:9092",
        )?;
        if let Some(bad) = bootstrap_servers.split(',').map(str::trim).find(|s| !is_host_port(s)) {
            return Err(SettingsError::Invalid {
                name: "KAFKA_BOOTSTRAP_SERVERS".into(),
                value: bootstrap_servers.clone(),
                reason: format!("{bad:?} is not host:port"),
            });
        }
        let security_protocol = env.one_of(
            "KAFKA_SECURITY_PROTOCOL",
            &["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"],
            "plaintext",
        )?;
        let sasl = security_protocol.starts_with("sasl");
        let (sasl_mechanism, sasl_username, sasl_password) = if sasl {
            let mechanism = env
                .one_of("KAFKA_SASL_MECHANISM", &["plain", "scram-sha-256", "scram-sha-512"], "plain")?
                .to_uppercase();
            let username =
                env.required("KAFKA_SASL_USERNAME", "SASL user name (KAFKA_SECURITY_PROTOCOL is SASL)")?;
            let password = env
                .required_secret("KAFKA_SASL_PASSWORD", "SASL password (KAFKA_SECURITY_PROTOCOL is SASL)")?;
            (Some(mechanism), Some(username), Some(password))
        } else {
            (None, None, None)
        };
        let ssl_client_cert =
            match (env.optional("KAFKA_SSL_CERTIFICATE_LOCATION"), env.optional("KAFKA_SSL_KEY_LOCATION")) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(SettingsError::Missing {
                        name: "KAFKA_SSL_KEY_LOCATION".into(),
                        help: "the client key that goes with KAFKA_SSL_CERTIFICATE_LOCATION".into(),
                    })
                }
                (None, Some(_)) => {
                    return Err(SettingsError::Missing {
                        name: "KAFKA_SSL_CERTIFICATE_LOCATION".into(),
                        help: "the client certificate that goes with KAFKA_SSL_KEY_LOCATION".into(),
                    })
                }
            };
        let produce_timeout_ms: u64 = env.parse_or("KAFKA_PRODUCE_TIMEOUT_MS", 5_000)?;
        if produce_timeout_ms == 0 {
            return Err(SettingsError::Invalid {
                name: "KAFKA_PRODUCE_TIMEOUT_MS".into(),
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(Self {
            bootstrap_servers,
            security_protocol,
            sasl_mechanism,
            sasl_username,
            sasl_password,
            ssl_ca_location: env.optional("KAFKA_SSL_CA_LOCATION"),
            ssl_client_cert,
            produce_timeout: Duration::from_millis(produce_timeout_ms),
            client_id: env.optional("KAFKA_CLIENT_ID").unwrap_or_else(|| service.to_string()),
            idempotence: env.parse_or("KAFKA_IDEMPOTENCE", true)?,
            linger_ms: env.parse_or("KAFKA_LINGER_MS", 2)?,
            fetch_wait_max_ms: env.parse_or("KAFKA_FETCH_WAIT_MAX_MS", 10)?,
        })
    }

    /// Plain settings for a broker on `bootstrap_servers` (tests and tools).
    pub fn plaintext(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            security_protocol: "plaintext".into(),
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            ssl_client_cert: None,
            produce_timeout: Duration::from_secs(5),
            client_id: "chat-stack".into(),
            idempotence: true,
            linger_ms: 2,
            fetch_wait_max_ms: 10,
        }
    }

    /// Connection and security settings shared by every client.
    pub fn base_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", &self.client_id)
            .set("security.protocol", &self.security_protocol)
            // Fail fast and retry often: a pod that cannot reach Kafka should say so in
            // seconds, and recover in seconds once the broker is back.
            .set("socket.connection.setup.timeout.ms", "5000")
            .set("reconnect.backoff.ms", "50")
            .set("reconnect.backoff.max.ms", "2000");
        if let (Some(mechanism), Some(user), Some(password)) =
            (&self.sasl_mechanism, &self.sasl_username, &self.sasl_password)
        {
            c.set("sasl.mechanism", mechanism)
                .set("sasl.username", user)
                .set("sasl.password", password.expose_secret());
        }
        if let Some(ca) = &self.ssl_ca_location {
            c.set("ssl.ca.location", ca);
        }
        if let Some((cert, key)) = &self.ssl_client_cert {
            c.set("ssl.certificate.location", cert).set("ssl.key.location", key);
        }
        c
    }

    /// An idempotent `acks=all` producer whose writes give up after `produce_timeout`.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.base_config();
        c.set("enable.idempotence", self.idempotence.to_string())
            .set("acks", "all")
            // A couple of milliseconds of batching lifts throughput under load at a
            // latency cost far below an LLM's first token.
            .set("linger.ms", self.linger_ms.to_string())
            .set("compression.type", "lz4")
            .set("message.timeout.ms", self.produce_timeout.as_millis().to_string());
        if !self.idempotence {
            // Without idempotence, one request in flight keeps retries in order.
            c.set("max.in.flight.requests.per.connection", "1");
        }
        c
    }

    /// A consumer in `group` that commits only when told to, reading from the earliest
    /// offset when the group has none (`init` gives every handler group offsets), with
    /// incremental (cooperative-sticky) partition assignment.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut c = self.base_config();
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // Short sessions make a killed handler's partitions move on in seconds, and
            // make the first JoinGroup fast (it waits about session.timeout.ms / 2).
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .set("fetch.wait.max.ms", self.fetch_wait_max_ms.to_string())
            .set("fetch.min.bytes", "1")
            .set("enable.partition.eof", "false")
            // A member joining (KEDA scaling up) takes partitions from the others while
            // they keep consuming the rest; with librdkafka's default (range, eager)
            // every member stops and drops all its partitions at every scale step.
            // Every member of a group must offer the same protocol type, so this is the
            // default of every group consumer here.
            .set("partition.assignment.strategy", "cooperative-sticky");
        c
    }

    /// Creates an idempotent producer.
    pub fn producer(&self) -> anyhow::Result<FutureProducer> {
        self.producer_config().create().context("creating the Kafka producer")
    }

    /// Creates a streaming consumer in `group` (not yet subscribed).
    pub fn stream_consumer(&self, group: &str) -> anyhow::Result<StreamConsumer> {
        self.consumer_config(group)
            .create()
            .with_context(|| format!("creating a Kafka consumer for group {group}"))
    }

    /// Creates a polling consumer in `group`, for offset and watermark queries.
    pub fn base_consumer(&self, group: &str) -> anyhow::Result<BaseConsumer> {
        self.consumer_config(group)
            .create()
            .with_context(|| format!("creating a Kafka client for group {group}"))
    }
}

fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

/// Writes `event` to its topic, keyed by conversation, with `traceparent` in the
/// headers, and waits for the broker's acknowledgement. When traces are exported, the
/// write is a producer span under `trace` and the record names that span.
pub async fn publish<E: Event>(
    producer: &FutureProducer,
    event: &E,
    trace: &TraceParent,
    timeout: Duration,
) -> Result<(i32, i64), rdkafka::error::KafkaError> {
    let payload = encode(event);
    let key = event.key();
    let mut span = otel::Direct::child_of(trace, "send", otel::Kind::Producer);
    if span.recording() {
        span.rename(format!("send {}", E::TOPIC));
        span.set("messaging.system", "kafka");
        span.set("messaging.operation.type", "send");
        span.set("messaging.destination.name", E::TOPIC);
    }
    let record = FutureRecord::to(E::TOPIC)
        .key(&key)
        .payload(&payload)
        .headers(span.trace().to_headers(OwnedHeaders::new()));
    let delivered = producer.send(record, timeout).await;
    if let Err((err, _)) = &delivered {
        span.fail(err);
    }
    delivered.map(|delivery| (delivery.partition, delivery.offset)).map_err(|(err, _)| err)
}

/// The partition numbers of `topic`, from the broker's metadata.
pub fn partitions(consumer: &impl Consumer, topic: &str, timeout: Duration) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("fetching metadata of topic {topic}"))?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        bail!("topic {topic} is not in the broker's metadata");
    };
    if let Some(err) = t.error() {
        bail!("topic {topic}: {}", rdkafka::types::RDKafkaErrorCode::from(err));
    }
    Ok(t.partitions().iter().map(|p| p.id()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(c: &'a ClientConfig, key: &str) -> Option<&'a str> {
        c.get(key)
    }

    #[test]
    fn plaintext_from_env() {
        let env = Env::from_pairs([("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092, kafka-0.kafka:9092")]);
        let s = KafkaSettings::from_env(&env, "gateway").unwrap();
        assert_eq!(s.client_id, "gateway");
        let p = s.producer_config();
        assert_eq!(get(&p, "acks"), Some("all"));
        assert_eq!(get(&p, "enable.idempotence"), Some("true"));
        assert_eq!(get(&p, "message.timeout.ms"), Some("5000"));
        let c = s.consumer_config("responder");
        assert_eq!(get(&c, "group.id"), Some("responder"));
        assert_eq!(get(&c, "enable.auto.commit"), Some("false"));
        assert_eq!(get(&c, "partition.assignment.strategy"), Some("cooperative-sticky"));
        assert!(get(&c, "sasl.password").is_none());
    }

    #[test]
    fn idempotence_can_be_turned_off_for_brokers_that_mishandle_it() {
        let env = Env::from_pairs([("KAFKA_BOOTSTRAP_SERVERS", "b:9092"), ("KAFKA_IDEMPOTENCE", "false")]);
        let p = KafkaSettings::from_env(&env, "x").unwrap().producer_config();
        assert_eq!(get(&p, "enable.idempotence"), Some("false"));
        assert_eq!(get(&p, "acks"), Some("all"));
        assert_eq!(get(&p, "max.in.flight.requests.per.connection"), Some("1"));
        let env = Env::from_pairs([("KAFKA_BOOTSTRAP_SERVERS", "b:9092"), ("KAFKA_IDEMPOTENCE", "maybe")]);
        assert!(KafkaSettings::from_env(&env, "x").is_err());
    }

    #[test]
    fn bootstrap_servers_are_required_and_checked() {
        let err = KafkaSettings::from_env(&Env::default(), "x").unwrap_err();
        assert!(err.to_string().starts_with("KAFKA_BOOTSTRAP_SERVERS is required"), "{err}");
        let env = Env::from_pairs([("KAFKA_BOOTSTRAP_SERVERS", "kafka")]);
        let err = KafkaSettings::from_env(&env, "x").unwrap_err();
        assert!(err.to_string().contains("\"kafka\" is not host:port"), "{err}");
    }

    #[test]
    fn sasl_needs_credentials_and_keeps_the_password_out_of_debug() {
        let env = Env::from_pairs([
            ("KAFKA_BOOTSTRAP_SERVERS", "b:9093"),
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM", "scram-sha-512"),
        ]);
        let err = KafkaSettings::from_env(&env, "x").unwrap_err();
        assert!(err.to_string().starts_with("KAFKA_SASL_USERNAME is required"), "{err}");

        let env = Env::from_pairs([
            ("KAFKA_BOOTSTRAP_SERVERS", "b:9093"),
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM", "scram-sha-512"),
            ("KAFKA_SASL_USERNAME", "chat"),
            ("KAFKA_SASL_PASSWORD", "hunter2"),
        ]);
        let s = KafkaSettings::from_env(&env, "x").unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        let c = s.base_config();
        assert_eq!(get(&c, "sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(get(&c, "security.protocol"), Some("sasl_ssl"));
        assert_eq!(get(&c, "sasl.password"), Some("hunter2"));
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let env = Env::from_pairs([
            ("KAFKA_BOOTSTRAP_SERVERS", "b:9093"),
            ("KAFKA_SSL_CERTIFICATE_LOCATION", "/certs/tls.crt"),
        ]);
        let err = KafkaSettings::from_env(&env, "x").unwrap_err();
        assert!(err.to_string().starts_with("KAFKA_SSL_KEY_LOCATION is required"), "{err}");
    }
}
