//! Starts the stack's real dependencies for integration tests.
//!
//! Each service runs through the same `ci/deps/*.sh run …` script that the local stack
//! uses, so tests and users start it the same way. Every process gets a free loopback
//! port and a temporary directory, is waited on with a bounded health check, and is
//! stopped when its handle is dropped. The binaries are built by `ci/test.sh`, which
//! exports their paths (`TANSU_BIN`, `LLAMA_SERVER_BIN`, …); without them a test fails
//! with a message saying so instead of being skipped. [`kafka`] is what the tests do on
//! the broker: publish events, read a topic until a condition holds, measure lag.
//! [`otlp`] receives the traces the binaries export.

pub mod fake_llm;
pub mod kafka;
pub mod otlp;
pub mod promql;

use std::{
    collections::BTreeSet,
    fs::File,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
pub use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

/// The repository root (testkit lives one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// A binary of another package of this workspace. Only a package's own tests get
/// `CARGO_BIN_EXE_*`; the others sit next to the test executable's `deps/` directory
/// once built (`cargo nextest run --workspace`, as ci/test.sh runs it, builds them all).
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("the test executable's path")?;
    let dir = exe.parent().and_then(Path::parent).context("target/<profile>/deps/<test>")?;
    let binary = dir.join(name);
    if !binary.is_file() {
        bail!(
            "{name} is not built at {}: build the workspace first (`cargo build --workspace`)",
            binary.display()
        );
    }
    Ok(binary)
}

/// Raises this process's open-file limit to its hard limit (children inherit it): tests
/// that hold thousands of connections need more than a default soft limit of 1024.
pub fn raise_open_file_limit() -> anyhow::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising RLIMIT_NOFILE")?;
    Ok(hard)
}

/// A TCP port on 127.0.0.1 that was free a moment ago, and never one this process was
/// given before: the kernel may hand the port just released straight back, so two calls
/// in a row (a service's port and its admin port) could otherwise get the same one.
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..64 {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
        let port = listener.local_addr()?.port();
        if GIVEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(port) {
            return Ok(port);
        }
    }
    bail!("the kernel gave back only ports this process already used (64 tries)")
}

/// Fails unless the environment variables a service needs are set.
pub fn require_env(vars: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = vars.iter().copied().filter(|v| std::env::var_os(v).is_none()).collect();
    if !missing.is_empty() {
        bail!(
            "{} not set: run the tests through ci/test.sh, which builds the real dependencies and exports their paths",
            missing.join(", ")
        );
    }
    Ok(())
}

/// A running child process, stopped with `stop_signal` (then SIGKILL) on drop.
pub struct Process {
    name: String,
    child: Child,
    stop_signal: Signal,
    log: PathBuf,
}

impl Process {
    /// Runs `ci/deps/<script> <args…>` with output to `log`.
    pub fn spawn_script(
        name: &str,
        script: &str,
        args: &[String],
        log: PathBuf,
        stop_signal: Signal,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new("bash");
        command.arg(repo_root().join("ci/deps").join(script)).args(args);
        Self::spawn(name, command, log, stop_signal)
    }

    /// Runs `command` with output to `log`.
    pub fn spawn(
        name: &str,
        mut command: Command,
        log: PathBuf,
        stop_signal: Signal,
    ) -> anyhow::Result<Self> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self { name: name.to_string(), child, stop_signal, log })
    }

    /// Waits up to `timeout` for the process to exit by itself; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} still running after {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` without waiting.
    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), signal);
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines the process wrote, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = std::env::var("TESTKIT_LOG_LINES").ok().and_then(|n| n.parse().ok()).unwrap_or(30);
        lines[lines.len().saturating_sub(tail)..].join("\n")
    }

    /// Fails with the log tail if the process has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early ({status}); its log:\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// Waits until `ready()` holds, failing after `timeout` or if the process exits.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            self.check_alive()?;
            if ready() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!("{} not ready after {timeout:?}; its log:\n{}", self.name, self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` and waits up to `grace` for the exit, then kills.
    pub fn stop_with(&mut self, signal: Signal, grace: Duration) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, signal);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        bail!("{} ignored {signal} for {grace:?} and was killed", self.name)
    }

    /// Stops the process with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.stop_with(self.stop_signal, Duration::from_secs(10));
    }
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// The resident set size of process `pid` in MB (0 if it cannot be read).
pub fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The number of open file descriptors of process `pid` (0 if it cannot be read).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// The first `n` lines of `log` that carry a warning, an error or a panic.
pub fn problem_lines(log: &str, n: usize) -> String {
    let problems = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panic"));
    problems.take(n).collect::<Vec<_>>().join("\n")
}

/// The path of `program` on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(program)).find(|p| p.is_file())
}

/// CPU time (user + system) used so far by this process's children that have exited and
/// been waited for, in seconds.
pub fn children_cpu_secs() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_CHILDREN).map_or(0.0, |u| {
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        secs(u.user_time()) + secs(u.system_time())
    })
}

/// CPU time (user + system) process `pid` has used so far, in seconds (0 if unknown).
/// Linux reports it in clock ticks, 100 per second on every platform Rust targets.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3: utime and
    // stime are fields 14 and 15.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The sum of every series of Prometheus metric `name` in a `/metrics` text (e.g.
/// `x_seconds_sum` over all its labels).
pub fn metric_total(metrics: &str, name: &str) -> f64 {
    metric_with(metrics, name, "")
}

/// The sum of the series of metric `name` whose line holds `label` (e.g.
/// `outcome="ok"`).
pub fn metric_with(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        // Not `sum()`: an empty f64 sum is -0.0, which reads "-0" in a drill's figures.
        .fold(0.0, |total, v| total + v)
}

/// The HTTP status of `GET path` on 127.0.0.1:`port`, if anything answers.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut head = [0u8; 32];
    let n = stream.read(&mut head).ok()?;
    let line = std::str::from_utf8(&head[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `ci/deps/<script> run PORT DIR/data` and waits (bounded) until it listens.
fn run_listening(name: &str, script: &str, port: u16, dir: &Path, stop: Signal) -> anyhow::Result<Process> {
    let data = dir.join("data").to_string_lossy().to_string();
    let log = dir.join(format!("{name}.log"));
    let mut process =
        Process::spawn_script(name, script, &["run".into(), port.to_string(), data], log, stop)?;
    process.wait_until(Duration::from_secs(30), || port_open(port))?;
    Ok(process)
}

/// A real Kafka-protocol broker (tansu, SQLite storage unless `TANSU_ENGINE=memory`) on a
/// free port.
pub struct Broker {
    process: Option<Process>,
    port: u16,
    dir: TempDir,
}

impl Broker {
    /// Starts a broker with empty storage.
    pub fn start() -> anyhow::Result<Self> {
        require_env(&["TANSU_BIN"])?;
        let mut broker = Self { process: None, port: free_port()?, dir: tempfile::tempdir()? };
        broker.start_process()?;
        Ok(broker)
    }

    fn start_process(&mut self) -> anyhow::Result<()> {
        // SIGINT: tansu's SQLite engine shuts down cleanly on it; SIGTERM loses writes.
        let process = run_listening("tansu", "tansu.sh", self.port, self.dir.path(), Signal::SIGINT)?;
        self.process = Some(process);
        Ok(())
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's process id (0 while it is stopped), for CPU and memory readings.
    pub fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, Process::pid)
    }

    /// The storage engine `ci/deps/tansu.sh` runs: `sqlite` or `memory` (`TANSU_ENGINE`).
    pub fn engine() -> String {
        std::env::var("TANSU_ENGINE").ok().filter(|e| !e.is_empty()).unwrap_or_else(|| "sqlite".into())
    }

    /// The last lines of the broker's log.
    pub fn log_tail(&self) -> String {
        self.process.as_ref().map(Process::log_tail).unwrap_or_default()
    }

    /// The first `n` warnings, errors and panics in the log of the broker process running
    /// now: what went wrong first.
    pub fn first_problems(&self, n: usize) -> String {
        problem_lines(&self.process.as_ref().map(Process::log).unwrap_or_default(), n)
    }

    /// Stops the broker with SIGINT (a clean shutdown) and keeps its storage.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut p) = self.process.take() {
            p.stop_with(Signal::SIGINT, Duration::from_secs(15))?;
        }
        Ok(())
    }

    /// Starts the broker again on the same port and storage.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.process.is_none() {
            self.start_process()?;
        }
        Ok(())
    }
}

/// The Qdrant engine server (dev/qdrant-dev-server) on free ports: gRPC, and Qdrant's
/// REST API.
pub struct QdrantServer {
    process: Option<Process>,
    port: u16,
    rest_port: u16,
    dir: TempDir,
}

impl QdrantServer {
    /// Starts a server with an empty data directory.
    pub fn start() -> anyhow::Result<Self> {
        require_env(&["QDRANT_DEV_SERVER_BIN"])?;
        let mut server =
            Self { process: None, port: free_port()?, rest_port: free_port()?, dir: tempfile::tempdir()? };
        server.start_process()?;
        Ok(server)
    }

    fn start_process(&mut self) -> anyhow::Result<()> {
        let data = self.dir.path().join("data").to_string_lossy().to_string();
        let log = self.dir.path().join("qdrant-dev-server.log");
        let args = ["run".into(), self.port.to_string(), data, self.rest_port.to_string()];
        let mut process =
            Process::spawn_script("qdrant-dev-server", "qdrant.sh", &args, log, Signal::SIGTERM)?;
        // Both listeners open before the server accepts anything.
        let (port, rest_port) = (self.port, self.rest_port);
        process.wait_until(Duration::from_secs(30), || port_open(port) && port_open(rest_port))?;
        self.process = Some(process);
        Ok(())
    }

    /// The gRPC URL for `qdrant-client`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The base URL of Qdrant's REST API (`curl`, REST clients).
    pub fn rest_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rest_port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// Stops the server (SIGTERM) and starts it again on the same data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.start_process()
    }

    /// Stops the server (SIGTERM); [`QdrantServer::start_again`] brings it back.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut p) = self.process.take() {
            p.stop_with(Signal::SIGTERM, Duration::from_secs(15))?;
        }
        Ok(())
    }

    /// Starts a stopped server on the same port and data.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.start_process()
    }
}

/// llama.cpp's llama-server with a real tiny model, on a free port.
pub struct LlamaServer {
    _process: Process,
    port: u16,
    _dir: TempDir,
    /// How long the model took to load.
    pub startup: Duration,
}

impl LlamaServer {
    /// Serves SmolLM2-135M-Instruct for chat completions (model name `smollm2`).
    pub fn chat() -> anyhow::Result<Self> {
        Self::chat_on(free_port()?)
    }

    /// Serves chat on `port`: for a test whose clients were told the address before the
    /// server existed (an LLM that starts late).
    pub fn chat_on(port: u16) -> anyhow::Result<Self> {
        Self::start("run-chat", &["LLAMA_SERVER_BIN", "CHAT_MODEL_GGUF"], port)
    }

    /// Serves all-MiniLM-L6-v2 for `/v1/embeddings` (model name `all-minilm-l6-v2`).
    pub fn embeddings() -> anyhow::Result<Self> {
        Self::start("run-embed", &["LLAMA_SERVER_BIN", "EMBED_MODEL_GGUF"], free_port()?)
    }

    fn start(mode: &str, vars: &[&str], port: u16) -> anyhow::Result<Self> {
        require_env(vars)?;
        let dir = tempfile::tempdir()?;
        let mut process = Process::spawn_script(
            "llama-server",
            "llama.sh",
            &[mode.into(), port.to_string()],
            dir.path().join("llama.log"),
            Signal::SIGTERM,
        )?;
        // /health answers 503 while the model loads and 200 once it can serve.
        let startup =
            process.wait_until(Duration::from_secs(60), || http_status(port, "/health") == Some(200))?;
        Ok(Self { _process: process, port, _dir: dir, startup })
    }

    /// The OpenAI-compatible base URL (with `/v1`).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_never_repeat_within_a_process() {
        // The kernel picks bind(0) ports at random from ~14 000 odd ones: 500 draws
        // without the bookkeeping repeat one almost surely.
        let ports: Vec<u16> = (0..500).map(|_| free_port().expect("a port")).collect();
        let distinct: BTreeSet<&u16> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
    }
}
