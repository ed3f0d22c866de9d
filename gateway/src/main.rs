//! The chat stack's gateway: the only always-on service.
//!
//! `gateway serve` takes chat messages (`POST /chat`), writes them to `user_messages`,
//! and streams replies (`GET /stream`, SSE) that it relays from `model_responses`.
//! `gateway init` prepares the broker (topics, dead-letter topics, handler groups'
//! offsets); it runs as a Kubernetes Job on deploy and on every local start.

mod auth;
mod conversation_id;
mod error;
mod history;
mod hub;
mod idempotency;
mod intake;
mod logs;
mod relay;
mod reply;
mod routes;
mod serve;
mod settings;
mod sse;
mod state;

use std::{process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use platform::{
    bootstrap,
    kafka::KafkaSettings,
    prometheus,
    settings::{exit_code, Env},
    shutdown::wait_for_signal,
    topics,
};
use rdkafka::producer::Producer;
use tokio::{net::TcpListener, sync::watch};

use crate::{
    auth::Authenticator,
    history::History,
    settings::{GatewaySettings, HistorySettings},
    state::AppState,
};

/// The always-on service of the event-driven chat stack.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (settings from the environment; see the README).
    Serve,
    /// Create the stack's topics and give the handler groups committed offsets (idempotent).
    ///
    /// Reads KAFKA_BOOTSTRAP_SERVERS and the other KAFKA_* settings.
    Init {
        /// Partitions of each topic created (existing topics are kept as they are).
        #[arg(long, env = "TOPIC_PARTITIONS", default_value_t = topics::DEFAULT_PARTITIONS)]
        partitions: i32,
        /// Replication factor of each topic created.
        #[arg(long, env = "TOPIC_REPLICATION", default_value_t = 1)]
        replication: i32,
        /// How long to keep retrying while the broker is unreachable.
        #[arg(long, env = "INIT_TIMEOUT_SECS", default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Validate the `serve` settings from the environment and exit (no network).
    CheckConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::from_process();
    // Held to the end of main: dropping it writes the lines still buffered and flushes
    // the spans still queued.
    let logs = match logs::init(&env, "gateway") {
        Ok(logs) => logs,
        Err(err) => return exit_code("gateway", Err(anyhow::Error::new(err).context("configuration error"))),
    };
    let result = match cli.command {
        Command::Serve => serve(&env).await,
        Command::CheckConfig => check_config(&env),
        Command::Init { partitions, replication, timeout_secs } => {
            init(&env, partitions, replication, timeout_secs).await
        }
    };
    // The buffered lines before exit_code's own report of a failure.
    logs.flush();
    exit_code("gateway", result)
}

fn check_config(env: &Env) -> anyhow::Result<()> {
    GatewaySettings::from_env(env).context("configuration error")?;
    Authenticator::from_env(env).context("configuration error")?;
    println!("gateway: configuration ok");
    Ok(())
}

async fn init(env: &Env, partitions: i32, replication: i32, timeout_secs: u64) -> anyhow::Result<()> {
    let kafka = KafkaSettings::from_env(env, "gateway-init").context("configuration error")?;
    let plan = bootstrap::Plan::stack(partitions, replication);
    let report = bootstrap::run(&kafka, &plan, Duration::from_secs(timeout_secs)).await?;
    tracing::info!(
        created = ?report.created,
        existing = ?report.existing,
        initialised_partitions = report.initialised.len(),
        "broker ready for the chat stack"
    );
    Ok(())
}

async fn serve(env: &Env) -> anyhow::Result<()> {
    let settings = GatewaySettings::from_env(env).context("configuration error")?;
    let auth = Authenticator::from_env(env).context("configuration error")?;
    if auth.is_disabled() {
        tracing::warn!("AUTH=disabled: every request acts as user 'anonymous'; never run this way outside local development");
    }
    prometheus::serve(
        settings.metrics_listen,
        &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
    )?;
    register_metrics();
    let producer = settings.kafka.producer()?;
    let history = match &settings.history {
        HistorySettings::Off => {
            tracing::warn!("QDRANT_URL is not set: /conversations and /memories answer 503");
            None
        }
        HistorySettings::On { store, embedder } => {
            if let Err(why) = embedder {
                tracing::warn!(reason = %why, "no embedder: GET /memories?q= answers 503");
            }
            Some(History::new(store, embedder.clone()).context("configuration error")?)
        }
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = AppState::new(&settings, auth, producer.clone(), history, shutdown_rx.clone());

    let relay = tokio::spawn(relay::run(state.clone(), settings.relay_lookback, shutdown_rx.clone()));
    tokio::spawn(sweep(state.clone(), shutdown_rx.clone()));

    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    tracing::info!(address = %settings.listen, "gateway listening");
    let app = routes::router(state, settings.request_timeout);
    let mut shutdown_signal = shutdown_rx.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: no new connections, streams end with a final event");
        let _ = shutdown_tx.send(true);
    });
    serve::serve(listener, app, async move {
        let _ = shutdown_signal.wait_for(|down| *down).await;
    })
    .await;
    let _ = relay.await;
    tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5)))
        .await
        .context("flush task panicked")?
        .context("flushing the producer")?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Counters that only move when something goes wrong, created at 0 so that a dashboard
/// or an alert on them sees a series (and a rate of 0) before the first event.
const COUNTERS: [&str; 15] = [
    "gateway_chat_requests_total",
    "gateway_chat_unavailable_total",
    "gateway_rate_limited_total",
    "gateway_openai_requests_total",
    "gateway_openai_mismatched_streams_total",
    "gateway_openai_unfinished_streams_total",
    "gateway_relay_events_total",
    "gateway_relay_errors_total",
    "gateway_relay_undecodable_total",
    "gateway_relay_offset_resets_total",
    "gateway_token_gaps_total",
    "gateway_attempt_resets_total",
    "gateway_duplicate_tokens_dropped_total",
    "gateway_finished_events_dropped_total",
    "gateway_slow_streams_cut_total",
];

fn register_metrics() {
    for name in COUNTERS {
        metrics::counter!(name).absolute(0);
    }
    metrics::gauge!("gateway_open_streams").set(0.0);
    metrics::gauge!("gateway_conversations_tracked").set(0.0);
}

/// Forgets idle conversations and idle rate-limit keys, so memory stays bounded, and
/// reports how many conversations are tracked.
async fn sweep(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        state.hub.sweep();
        metrics::gauge!("gateway_conversations_tracked").set(state.hub.conversations() as f64);
        if let Some(limiter) = &state.intake.rate_limiter {
            limiter.retain_recent();
        }
    }
}
