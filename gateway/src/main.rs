//! The chat stack's gateway binary.
//!
//! `gateway init` prepares the broker (topics, dead-letter topics, handler groups'
//! offsets); it runs as a Kubernetes Job on deploy and on every local start.

use std::{process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use platform::{bootstrap, kafka::KafkaSettings, settings::Env, telemetry, topics};

/// The always-on service of the event-driven chat stack.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::from_process();
    if let Err(err) = telemetry::init(&env, "gateway") {
        eprintln!("gateway: configuration error: {err}");
        return ExitCode::from(2);
    }
    match run(cli, &env).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "gateway failed");
            eprintln!("gateway: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, env: &Env) -> anyhow::Result<()> {
    match cli.command {
        Command::Init { partitions, replication, timeout_secs } => {
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
    }
}
