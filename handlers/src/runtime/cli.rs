//! The command line every handler binary shares: `run`, `lambda`, `check-config`.

use std::{future::Future, process::ExitCode, sync::Arc, time::Duration};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use platform::{
    settings::{exit_code, is_config_error, Env, SettingsError},
    shutdown::{wait_for_signal, Signal},
};
use tokio::sync::watch;

use super::{
    consumer::{self, RunOptions},
    handler::Handler,
    invoke, server,
    settings::{RecordLimit, Retrying, RuntimeSettings},
    status::{metric, Status},
};

/// A handler that can be configured from the environment and built.
pub trait App: Handler + Sized {
    /// The handler's own settings.
    type Settings: Send + 'static;

    /// Reads and validates the settings; no network, no model loading.
    fn settings(env: &Env) -> Result<Self::Settings, SettingsError>;

    /// Connects and loads what the handler needs.
    fn build(settings: Self::Settings) -> impl Future<Output = anyhow::Result<Self>> + Send;
}

#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume from Kafka until SIGTERM (what KEDA scales); settings from the environment.
    Run {
        /// Drain and exit 0 after this many seconds without records (ScaledJob runs).
        #[arg(long, value_name = "SECS")]
        exit_when_idle: Option<u64>,
    },
    /// Serve the invoke entry on the AWS Lambda runtime API (AWS_LAMBDA_RUNTIME_API).
    Lambda,
    /// Validate the settings from the environment and exit (no network, no model).
    CheckConfig,
}

/// Parses the command line and runs the handler `A`; `about` is the `--help` text.
pub fn main<A: App>(about: &'static str) -> ExitCode {
    let matches = Cli::command().name(A::NAME).bin_name(A::NAME).about(about).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let env = Env::from_process();
    // Held to the end of main: dropping it flushes the spans still queued.
    let _telemetry = match platform::telemetry::init(&env, A::NAME, platform::telemetry::Spans::FromTracing) {
        Ok(telemetry) => telemetry,
        Err(err) => return exit_code(A::NAME, Err(anyhow::Error::new(err).context("configuration error"))),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("{}: cannot start the async runtime: {err}", A::NAME);
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::CheckConfig => check_config::<A>(&env),
            Command::Run { exit_when_idle } => run::<A>(&env, exit_when_idle.map(Duration::from_secs)).await,
            Command::Lambda => lambda::<A>(&env).await,
        }
    });
    // Tasks still waiting on the network must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    // Settings errors arrive bare (handlers read settings without context): say what
    // they are, as every binary of the stack does.
    let result =
        result.map_err(|err| if is_config_error(&err) { err.context("configuration error") } else { err });
    exit_code(A::NAME, result)
}

fn check_config<A: App>(env: &Env) -> anyhow::Result<()> {
    RuntimeSettings::from_env(env, A::NAME, A::DEFAULT_CONCURRENCY)?;
    A::settings(env)?;
    println!("{}: configuration ok", A::NAME);
    Ok(())
}

async fn run<A: App>(env: &Env, exit_when_idle: Option<Duration>) -> anyhow::Result<()> {
    let settings = RuntimeSettings::from_env(env, A::NAME, A::DEFAULT_CONCURRENCY)?;
    let app_settings = A::settings(env)?;
    let status = Status::new();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // A port that cannot be bound is a configuration problem: say so before connecting.
    platform::prometheus::serve(settings.metrics_listen, &server::BUCKETS)?;
    metric::register(A::NAME);
    let listener = server::bind(settings.listen).await?;
    let server = tokio::spawn(server::serve(listener, status.clone(), shutdown_rx.clone()));
    let shutdown_for_signal = shutdown_tx.clone();
    tokio::spawn(async move {
        match wait_for_signal().await {
            Signal::Terminate => tracing::info!("SIGTERM received"),
            Signal::Interrupt => tracing::info!("interrupt received"),
        }
        let _ = shutdown_for_signal.send(true);
    });
    let handler = Arc::new(A::build(app_settings).await?);
    tracing::info!(
        elapsed_ms = status.started().elapsed().as_millis() as u64,
        "handler built (models loaded)"
    );
    let result = consumer::run(handler, &settings, status, shutdown_rx, RunOptions { exit_when_idle }).await;
    let _ = shutdown_tx.send(true);
    let _ = server.await;
    result
}

async fn lambda<A: App>(env: &Env) -> anyhow::Result<()> {
    // lambda_runtime panics without these; name the missing one instead.
    for name in [
        "AWS_LAMBDA_RUNTIME_API",
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_LAMBDA_FUNCTION_VERSION",
    ] {
        env.required(name, "set by the Lambda runtime (or an emulator) in lambda mode")?;
    }
    let (retrying, limit) = (Retrying::from_env(env)?, RecordLimit::from_env(env)?);
    let handler = Arc::new(A::build(A::settings(env)?).await?);
    tracing::info!("serving the invoke entry on the Lambda runtime API");
    lambda_http::run(lambda_http::service_fn(move |request| {
        let handler = handler.clone();
        async move { Ok::<_, std::convert::Infallible>(invoke::invoke(&*handler, retrying, limit, request).await) }
    }))
    .await
    .map_err(|err| anyhow::anyhow!("Lambda runtime: {err}"))
}
