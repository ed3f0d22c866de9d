//! The built server binary as a test fixture, shared by the integration tests.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use qdrant_client::Qdrant;

/// Upper bound for any single step, so a broken server fails the test instead of hanging it.
pub const STEP: Duration = Duration::from_secs(30);

/// A running server process; killed when dropped, so a failing test leaves nothing behind.
pub struct Server {
    child: Child,
    /// The gRPC URL, for `qdrant-client`.
    pub url: String,
    /// The REST API's base URL.
    pub rest_url: String,
}

impl Server {
    /// Starts the binary on free loopback ports (gRPC and REST) and waits for its
    /// startup line.
    pub fn start(data_dir: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_qdrant-dev-server"))
            .args(["--listen", "127.0.0.1:0", "--rest-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start qdrant-dev-server");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep reading to the end so the server never blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        // The server is built to print this before it accepts connections:
        // "qdrant-dev-server listening on <gRPC> (gRPC) and <REST> (REST), ...".
        let mut server = Server { child, url: String::new(), rest_url: String::new() };
        let line =
            rx.recv_timeout(Duration::from_secs(60)).expect("server printed no startup line within 60 s");
        let words: Vec<&str> = line
            .strip_prefix("qdrant-dev-server listening on ")
            .unwrap_or_else(|| panic!("unexpected startup line: {line}"))
            .split_whitespace()
            .collect();
        match words.as_slice() {
            [grpc, "(gRPC)", "and", rest, "(REST),", ..] => {
                server.url = format!("http://{grpc}");
                server.rest_url = format!("http://{rest}");
            }
            _ => panic!("unexpected startup line: {line}"),
        }
        server
    }

    /// A gRPC client of the server.
    pub fn client(&self) -> Qdrant {
        Qdrant::from_url(&self.url)
            .timeout(STEP)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("build client")
    }

    /// Asks the server to stop with SIGTERM and waits (bounded) for it to exit.
    pub fn stop(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for server") {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit within {STEP:?} of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
