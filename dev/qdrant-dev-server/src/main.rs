//! qdrant-dev-server: a dev/test stand-in that serves the part of Qdrant's gRPC API the
//! chatbot stack uses, on top of Qdrant's own engine (the `qdrant-edge` crate), so the
//! product's real `qdrant-client` can run without a Qdrant server binary; and, on a
//! second listener, the part of Qdrant's REST API people and scripts use, over the same
//! data.
//!
//! Not for production: set `QDRANT_URL` to a real Qdrant there.

mod collection_info;
mod collections;
mod convert;
mod filter;
mod health;
mod point_ops;
mod points;
mod rest;
mod store;

use std::future::IntoFuture as _;
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
use crate::point_ops::PointOps;
use crate::points::PointsService;
use crate::store::Store;

/// How long in-flight requests get to finish after a shutdown signal before the data
/// is flushed anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Largest gRPC message accepted or sent; Qdrant's own default (batch upserts of
/// large vectors exceed tonic's 4 MiB default).
const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Serves Qdrant's gRPC API (collections, points, health) and a subset of its REST API
/// over the qdrant-edge engine. For development and tests only.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on for gRPC (port 0 picks a free port; the startup line
    /// shows the one chosen).
    #[arg(long, env = "QDRANT_DEV_LISTEN", default_value = "127.0.0.1:6334")]
    listen: SocketAddr,

    /// Address to listen on for Qdrant's REST API (port 0 picks a free port; the
    /// startup line shows the one chosen).
    #[arg(long, env = "QDRANT_DEV_REST_LISTEN", default_value = "127.0.0.1:6333")]
    rest_listen: SocketAddr,

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

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (gRPC)", args.listen))?;
    let address = listener.local_addr().context("cannot read the gRPC listening address")?;
    let rest_listener = TcpListener::bind(args.rest_listen).await.with_context(|| {
        format!("cannot listen on {} (REST; set --rest-listen or QDRANT_DEV_REST_LISTEN)", args.rest_listen)
    })?;
    let rest_address = rest_listener.local_addr().context("cannot read the REST listening address")?;
    // Tests and scripts wait for this exact line (and read the ports from it).
    println!(
        "qdrant-dev-server listening on {address} (gRPC) and {rest_address} (REST), data dir {}, \
         {} collection(s) loaded",
        args.data_dir.display(),
        loaded.len()
    );

    let ops = Arc::new(PointOps::new(store.clone()));
    // Both servers stop on the same signal; a dropped sender also means stop.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let stopped = |mut rx: tokio::sync::watch::Receiver<()>| async move {
        let _ = rx.changed().await;
    };
    let grpc = Server::builder()
        .add_service(QdrantServer::new(health::HealthService))
        .add_service(
            CollectionsServer::new(CollectionsService::new(store.clone()))
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        )
        .add_service(
            PointsServer::new(PointsService::new(ops.clone()))
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        )
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), stopped(stop_rx.clone()));
    let rest =
        axum::serve(rest_listener, rest::router(store.clone(), ops)).with_graceful_shutdown(stopped(stop_rx));
    let mut grpc = tokio::spawn(grpc);
    let mut rest = tokio::spawn(rest.into_future());

    let outcome = tokio::select! {
        signal = signals.recv() => {
            tracing::info!(signal, "shutting down");
            let _ = stop_tx.send(());
            let both = async { (grpc_outcome((&mut grpc).await), rest_outcome((&mut rest).await)) };
            match tokio::time::timeout(SHUTDOWN_GRACE, both).await {
                Ok((grpc, rest)) => grpc.and(rest),
                Err(_) => {
                    tracing::warn!("requests still running after {SHUTDOWN_GRACE:?}; flushing anyway");
                    grpc.abort();
                    rest.abort();
                    Ok(())
                }
            }
        }
        // Either server ending on its own is a failure; the data is flushed all the same.
        result = &mut grpc => {
            rest.abort();
            grpc_outcome(result).and_then(|()| Err(anyhow::anyhow!("gRPC server stopped unexpectedly")))
        }
        result = &mut rest => {
            grpc.abort();
            rest_outcome(result).and_then(|()| Err(anyhow::anyhow!("REST server stopped unexpectedly")))
        }
    };

    store.close().await;
    tracing::info!("data flushed; bye");
    outcome
}

type Joined<T> = Result<T, tokio::task::JoinError>;

fn grpc_outcome(result: Joined<Result<(), tonic::transport::Error>>) -> anyhow::Result<()> {
    result.context("gRPC server task failed")?.context("gRPC server failed")
}

fn rest_outcome(result: Joined<std::io::Result<()>>) -> anyhow::Result<()> {
    result.context("REST server task failed")?.context("REST server failed")
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
