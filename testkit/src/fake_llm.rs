//! A scripted fake OpenAI-compatible chat endpoint, for the failures a real
//! llama-server cannot produce on demand: HTTP 500s, a body that is not the streaming
//! format, a request that never gets an answer, a connection dropped unanswered. In
//! [`Mode::Answer`] it streams a fixed reply, so a drill can show recovery.
//!
//! It speaks HTTP/1.1 by hand with `Connection: close` on every answer: it must be able
//! to drop a connection without answering, which an HTTP server library will not do.

use std::sync::{
    atomic::{AtomicU8, AtomicUsize, Ordering},
    Arc,
};

use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// How the fake answers the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Streams the reply [`REPLY`] as three chunks, then `[DONE]`.
    Answer,
    /// HTTP 500 with an OpenAI-style error body.
    Fail500,
    /// HTTP 200 `text/event-stream` whose events are not JSON.
    Garbage,
    /// Reads the request and never answers.
    Hang,
    /// Reads the request and closes the connection without a byte.
    Drop,
}

/// The text [`Mode::Answer`] streams.
pub const REPLY: &str = "Hello from the fake.";

/// A running fake; it stops with the test's runtime.
pub struct FakeLlm {
    url: String,
    mode: Arc<AtomicU8>,
    calls: Arc<AtomicUsize>,
}

impl FakeLlm {
    /// Serves on a free loopback port, in [`Mode::Answer`].
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/v1", listener.local_addr()?);
        let mode = Arc::new(AtomicU8::new(Mode::Answer as u8));
        let calls = Arc::new(AtomicUsize::new(0));
        let (m, c) = (mode.clone(), calls.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let mode = decode(m.load(Ordering::SeqCst));
                tokio::spawn(answer(socket, mode, c.clone()));
            }
        });
        Ok(Self { url, mode, calls })
    }

    /// The base URL (with `/v1`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Answers the next requests in `mode`.
    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Requests received so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn decode(mode: u8) -> Mode {
    [Mode::Answer, Mode::Fail500, Mode::Garbage, Mode::Hang, Mode::Drop]
        .into_iter()
        .find(|m| *m as u8 == mode)
        .unwrap_or(Mode::Answer)
}

async fn answer(mut socket: TcpStream, mode: Mode, calls: Arc<AtomicUsize>) {
    if read_request(&mut socket).await.is_err() {
        return;
    }
    calls.fetch_add(1, Ordering::SeqCst);
    let response = match mode {
        Mode::Answer => http(200, "text/event-stream", &stream_body()),
        Mode::Fail500 => http(
            500,
            "application/json",
            r#"{"error":{"message":"scripted failure","type":"server_error","param":null,"code":null}}"#,
        ),
        Mode::Garbage => {
            http(200, "text/event-stream", "data: <html>not json</html>\n\ndata: {\"choices\": 7\n\n")
        }
        Mode::Hang => {
            // Hold the connection open until the client gives up.
            let mut sink = [0u8; 1024];
            while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
            return;
        }
        Mode::Drop => return,
    };
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}

/// Reads one request's head and its `Content-Length` body.
async fn read_request(socket: &mut TcpStream) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..n]);
        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if buffer.len() >= end + 4 + length {
            return Ok(());
        }
    }
}

fn http(status: u16, content_type: &str, body: &str) -> String {
    let reason = if status == 200 { "OK" } else { "Internal Server Error" };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn stream_body() -> String {
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        json!({"id": "fake", "object": "chat.completion.chunk", "created": 0, "model": "fake",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut last = chunk(json!({}), Some("stop"));
    last["usage"] = json!({"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4});
    [
        chunk(json!({"role": "assistant", "content": "Hello"}), None),
        chunk(json!({"content": " from"}), None),
        chunk(json!({"content": " the fake."}), None),
        last,
    ]
    .iter()
    .map(|c| format!("data: {c}\n\n"))
    .chain(std::iter::once("data: [DONE]\n\n".to_string()))
    .collect()
}
