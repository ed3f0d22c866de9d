//! The HTTP server loop: HTTP/1.1 and cleartext HTTP/2 (h2c, prior knowledge) on one
//! port, with graceful shutdown.
//!
//! Why not `axum::serve`: it detects the protocol by reading the first bytes of every
//! connection into a side buffer and replaying them into hyper, which makes hyper's
//! HTTP/1.1 read buffer grow from 8 to 16 KiB on its second read. That buffer lives as
//! long as the connection, and an SSE stream is a connection that lives long: measured
//! with heaptrack, it was the largest single cost of 10 000 open streams. Here the
//! protocol is decided by *peeking* at the socket, so hyper reads the request itself.
//! HTTP/2 lets a proxy (Envoy, a service mesh) multiplex thousands of streams over a
//! few connections, which costs far less per stream again.

use std::{future::Future, io, time::Duration};

use axum::Router;
use hyper::server::conn::{http1, http2};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::net::{TcpListener, TcpStream};

/// What an HTTP/2 client sends first (RFC 9113, section 3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A client must send a request head (or the HTTP/2 preface) within this time, also on
/// an idle keep-alive connection. Longer than the usual proxy upstream keep-alive (60 s
/// in ingress-nginx), so the proxy, not the gateway, closes idle pooled connections.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(90);

/// On shutdown, connections still open after this long are dropped: within the pod's
/// termination grace (30 s) minus the preStop sleep and the producer flush.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Serves `app` on `listener` until `shutdown` completes, then lets open connections
/// finish (idle HTTP/1.1 connections close, HTTP/2 ones get GOAWAY) within the grace.
pub async fn serve(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new());
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        let (h1, h2) = (h1.clone(), h2.clone());
        tokio::spawn(async move {
            let result = match tokio::time::timeout(HEADER_READ_TIMEOUT, speaks_http2(&stream)).await {
                Ok(Ok(true)) => watcher.watch(h2.serve_connection(TokioIo::new(stream), service)).await,
                Ok(Ok(false)) => watcher.watch(h1.serve_connection(TokioIo::new(stream), service)).await,
                // Closed, failed or silent before sending anything.
                Ok(Err(_)) | Err(_) => return,
            };
            if let Err(err) = result {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            grace_secs = SHUTDOWN_GRACE.as_secs(),
            "connections still open after the grace; dropping them"
        );
    }
}

/// Whether the client opened with the HTTP/2 preface, without consuming any bytes.
async fn speaks_http2(stream: &TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; HTTP2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 || buf[..n] != HTTP2_PREFACE[..n] {
            return Ok(false);
        }
        if n == HTTP2_PREFACE.len() {
            return Ok(true);
        }
        // Only part of the preface has arrived (rare): `peek` would return the same
        // bytes at once, so wait a little before looking again.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    async fn sniff(chunks: &[&[u8]]) -> bool {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        let client = tokio::spawn(async move {
            let mut socket = TcpStream::connect(address).await.expect("connect");
            for chunk in chunks {
                socket.write_all(&chunk).await.expect("write");
                socket.flush().await.expect("flush");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            socket
        });
        let (stream, _) = listener.accept().await.expect("accept");
        let answer = speaks_http2(&stream).await.expect("peek");
        drop(client.await);
        answer
    }

    #[tokio::test]
    async fn the_preface_means_http2_even_when_it_arrives_in_pieces() {
        assert!(sniff(&[HTTP2_PREFACE]).await);
        assert!(sniff(&[b"PRI * HTTP", b"/2.0\r\n\r\nSM\r\n\r\n"]).await);
    }

    #[tokio::test]
    async fn anything_else_is_http1() {
        assert!(!sniff(&[b"POST /chat HTTP/1.1\r\n"]).await);
        assert!(!sniff(&[b"P", b"OST /chat HTTP/1.1\r\n"]).await);
        assert!(!sniff(&[b"GET / HTTP/1.1\r\n\r\n"]).await);
    }
}
