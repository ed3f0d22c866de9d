//! qdrant-dev-server: a dev/test stand-in that serves the part of Qdrant's gRPC API the
//! chatbot stack uses, on top of Qdrant's own engine (the `qdrant-edge` crate), so the
//! product's real `qdrant-client` can run without a Qdrant server binary.
//!
//! Not for production: set `QDRANT_URL` to a real Qdrant there.

mod collections;
mod convert;
mod filter;
mod health;
mod points;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use qdrant_client::qdrant::collections_server::CollectionsServer;
use qdrant_client::qdrant::points_server::PointsServer;
use qdrant_client::qdrant::qdrant_server::QdrantServer;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::collections::CollectionsService;
use crate::points::PointsService;
use crate::store::Store;

/// How long in-flight requests get to finish after a shutdown signal before the data
/// is flushed anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Largest gRPC message accepted or sent; Qdrant's own default (batch upserts of
/// large vectors exceed tonic's 4 MiB default).
const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Serves Qdrant's gRPC API (collections, points, health) over the qdrant-edge engine.
/// For development and tests only.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on for gRPC (port 0 picks a free port; the startup line
    /// shows the one chosen).
    #[arg(long, env = "QDRANT_DEV_LISTEN", default_value = "127.0.0.1:6334")]
    listen: SocketAddr,

    /// Directory holding the collections, one subdirectory each; created if missing.
    /// Data in it survives restarts.
    #[arg(long, env = "QDRANT_DEV_DATA_DIR")]
    data_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging()?;
    let mut signals = ShutdownSignals::listen()?;

    let data_dir = args.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&data_dir))
        .await
        .context("loading the data dir panicked")??;
    let store = Arc::new(store);
    let loaded = store.names().await;

    let listener =
        TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr().context("cannot read the listening address")?;
    // Tests and scripts wait for this exact line (and read the port from it).
    println!(
        "qdrant-dev-server listening on {address} (gRPC), data dir {}, {} collection(s) loaded",
        args.data_dir.display(),
        loaded.len()
    );

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        .add_service(QdrantServer::new(health::HealthService))
        .add_service(
            CollectionsServer::new(CollectionsService::new(store.clone()))
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        )
        .add_service(
            PointsServer::new(PointsService::new(store.clone()))
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        )
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
            // A dropped sender also means stop.
            let _ = stop_rx.await;
        });
    let mut server = tokio::spawn(server);

    tokio::select! {
        signal = signals.recv() => {
            tracing::info!(signal, "shutting down");
            let _ = stop_tx.send(());
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(result) => result.context("gRPC server task failed")?.context("gRPC server failed")?,
                Err(_) => {
                    tracing::warn!("requests still running after {SHUTDOWN_GRACE:?}; flushing anyway");
                    server.abort();
                }
            }
        }
        result = &mut server => {
            result.context("gRPC server task failed")?.context("gRPC server failed")?;
        }
    }

    store.close().await;
    tracing::info!("data flushed; bye");
    Ok(())
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
fn init_logging() -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // qdrant-edge warns on every start that process-wide settings a Qdrant server
    // initialises (feature flags, a multi-mmap probe) were not set. They live in a
    // private module, so nothing outside the crate can set them, and the defaults it
    // falls back to suit a single local shard: the warnings are noise here.
    for quiet in ["qdrant_edge::common::flags=error", "qdrant_edge::common::mmap=error"] {
        filter = filter.add_directive(quiet.parse().context("built-in log directive")?);
    }
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    Ok(())
}

/// SIGINT and SIGTERM, listened for from the start so that a signal arriving while
/// the server is still starting up is not lost (or fatal: the default action would
/// kill the process without the final flush).
struct ShutdownSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl ShutdownSignals {
    fn listen() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
        })
    }

    /// Resolves with the name of the first signal received.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}
