//! Real handler processes standing in for a Deployment's pods: started with `run`,
//! stopped with SIGTERM (the handlers drain and commit) and SIGKILL after the grace
//! period, newest first, as a ReplicaSet scales down.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context;
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use tokio::process::{Child, Command};

/// One running process and the admin port its `/metrics` is on.
struct Replica {
    child: Child,
    metrics_port: u16,
}

/// The processes of one scale target.
pub struct Replicas {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log_dir: Option<PathBuf>,
    grace: Duration,
    running: Vec<Replica>,
    started: u64,
    exited: u64,
}

impl Replicas {
    /// Replicas of `program args…`; logs go to `log_dir/<name>-<n>.log` (or are dropped).
    pub fn new(
        name: &str,
        program: PathBuf,
        args: Vec<String>,
        log_dir: Option<PathBuf>,
        grace: Duration,
    ) -> Self {
        Self { name: name.into(), program, args, log_dir, grace, running: Vec::new(), started: 0, exited: 0 }
    }

    /// Processes alive now (exited ones are reaped and reported).
    pub fn count(&mut self) -> usize {
        let (name, exited) = (&self.name, &mut self.exited);
        self.running.retain_mut(|Replica { child, .. }| match child.try_wait() {
            Ok(Some(status)) => {
                tracing::warn!(target_name = %name, pid = ?child.id(), %status, "a replica exited by itself");
                *exited += 1;
                false
            }
            _ => true,
        });
        self.running.len()
    }

    /// Starts or stops processes until `n` run.
    pub fn scale_to(&mut self, n: usize) -> anyhow::Result<()> {
        while self.count() < n {
            self.start_one()?;
        }
        while self.running.len() > n {
            if let Some(replica) = self.running.pop() {
                self.stop_in_background(replica.child);
            }
        }
        Ok(())
    }

    fn start_one(&mut self) -> anyhow::Result<()> {
        self.started += 1;
        let mut command = Command::new(&self.program);
        // Port 0: each replica picks its own free port for /health. The admin port is
        // chosen here, so that it can be listed for Prometheus (`metrics_targets`).
        let metrics_port = free_port()?;
        command
            .args(&self.args)
            .env("HANDLER_LISTEN_ADDR", "127.0.0.1:0")
            .env("METRICS_LISTEN_ADDR", format!("127.0.0.1:{metrics_port}"))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match &self.log_dir {
            Some(dir) => {
                let path = dir.join(format!("{}-{}.log", self.name, self.started));
                let log =
                    std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
                command.stdout(log.try_clone()?).stderr(log);
            }
            None => {
                command.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = command.spawn().with_context(|| format!("starting {}", self.program.display()))?;
        tracing::info!(target_name = %self.name, pid = ?child.id(), "replica started");
        self.running.push(Replica { child, metrics_port });
        Ok(())
    }

    fn stop_in_background(&self, mut child: Child) {
        let (name, grace) = (self.name.clone(), self.grace);
        tokio::spawn(async move {
            let status = stop(&mut child, grace).await;
            tracing::info!(target_name = %name, pid = ?child.id(), status = ?status, "replica stopped");
        });
    }

    /// Stops every process (SIGTERM to all, SIGKILL to those still running after the
    /// grace period) and waits for them.
    pub async fn stop_all(&mut self) {
        for Replica { child, .. } in &self.running {
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
        }
        let deadline = tokio::time::Instant::now() + self.grace;
        for Replica { mut child, .. } in self.running.drain(..) {
            if tokio::time::timeout_at(deadline, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }

    /// Replicas that exited without being told to (a pod's container restarts).
    pub fn exited_by_themselves(&self) -> u64 {
        self.exited
    }

    /// The `host:port` of every running replica's `/metrics`.
    pub fn metrics_targets(&self) -> Vec<String> {
        self.running.iter().map(|r| format!("127.0.0.1:{}", r.metrics_port)).collect()
    }
}

/// A loopback port free right now (the replica binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

async fn stop(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    match tokio::time::timeout_at(deadline.into(), child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = child.kill().await;
            child.wait().await.ok()
        }
    }
}
