//! `autoscaler`: KEDA's Kafka scaling on a laptop. See `autoscaler --help`.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use autoscaler::Options;
use clap::Parser;
use platform::{
    kafka::KafkaSettings,
    settings::{exit_code, Env},
    shutdown::wait_for_signal,
    telemetry,
};
use tokio::sync::watch;

/// Scales handler processes from zero on Kafka lag, driven by the ScaledObjects in
/// keda/ (a development stand-in for KEDA; in a cluster KEDA does this). Kafka settings
/// come from KAFKA_*; replicas inherit the environment.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Folder with the ScaledObjects.
    #[arg(long, default_value = "keda")]
    keda_dir: PathBuf,
    /// A scale target and its binary, e.g. `--handler responder=target/debug/responder` (repeat).
    #[arg(long = "handler", value_name = "NAME=PATH", required = true)]
    handlers: Vec<String>,
    /// Address of GET /status.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// Folder for replica logs (`<name>-<n>.log`).
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// File to keep the replicas' /metrics addresses in, for Prometheus's
    /// `file_sd_configs` (job `chat-stack/<handler>`).
    #[arg(long)]
    targets_file: Option<PathBuf>,
    /// Seconds a replica gets to drain after SIGTERM.
    #[arg(long, default_value_t = 30)]
    grace_secs: u64,
    /// Override every ScaledObject's pollingInterval (seconds, fractions allowed).
    #[arg(long)]
    polling_secs: Option<f64>,
    /// Override every cooldownPeriod (seconds).
    #[arg(long)]
    cooldown_secs: Option<f64>,
    /// Override every scale-down stabilization window (seconds).
    #[arg(long)]
    scale_down_window_secs: Option<f64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::from_process();
    // Held to the end of main: dropping it flushes the spans still queued.
    let _telemetry = match telemetry::init(&env, "autoscaler", telemetry::Spans::FromTracing) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            return exit_code("autoscaler", Err(anyhow::Error::new(err).context("configuration error")))
        }
    };
    exit_code("autoscaler", run(cli, &env).await)
}

async fn run(cli: Cli, env: &Env) -> anyhow::Result<()> {
    let kafka = KafkaSettings::from_env(env, "autoscaler").context("configuration error")?;
    let mut programs = HashMap::new();
    for spec in &cli.handlers {
        let (name, path) =
            spec.split_once('=').with_context(|| format!("--handler {spec:?}: expected NAME=PATH"))?;
        let path = PathBuf::from(path);
        if !path.is_file() {
            anyhow::bail!(
                "--handler {name}: {} is not a file (build it: cargo build -p handlers)",
                path.display()
            );
        }
        programs.insert(name.to_string(), path);
    }
    let secs = |s: Option<f64>| s.map(Duration::from_secs_f64);
    let options = Options {
        keda_dir: cli.keda_dir,
        programs,
        listen: cli.listen,
        log_dir: cli.log_dir,
        targets_file: cli.targets_file,
        grace: Duration::from_secs(cli.grace_secs),
        polling: secs(cli.polling_secs),
        cooldown: secs(cli.cooldown_secs),
        scale_down_window: secs(cli.scale_down_window_secs),
    };
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stopping: every replica gets SIGTERM and its grace period");
        let _ = tx.send(true);
    });
    autoscaler::run(options, kafka, rx).await
}
