//! The gateway's log: the lines of `platform::telemetry` (JSON by default, the fields
//! of every span in scope under `spans`; `LOG_FORMAT=text` for a terminal), written to
//! stderr through a buffer instead of one `write()` per line.
//!
//! Why: every accepted message writes an access-log line, and at ~18 000 messages/s a
//! system call per line was ~2.5 µs of the gateway's ~45 µs of CPU per message
//! (`perf`, docs/PERFORMANCE.md, issue 18). Info lines now wait at most
//! [`FLUSH_EVERY`] and go out in one write per buffer; warnings and errors are
//! written at once, and [`Logs`] writes what is left when it is dropped at exit.

use std::{
    io::{self, BufWriter, Write},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use platform::{
    settings::{Env, SettingsError},
    sync::lock,
    telemetry::{self, Spans, Telemetry},
};
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Longest an info line waits before it is written.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// About 250 access-log lines: at full load a write every ~15 ms.
const BUFFER_BYTES: usize = 64 * 1024;

/// What logging started; keep it until exit: dropping it writes the lines still
/// buffered and flushes the spans still queued.
#[must_use = "dropping it stops logging and trace export"]
pub struct Logs {
    out: Buffered,
    _telemetry: Telemetry,
}

impl Logs {
    /// Writes the lines buffered so far.
    pub fn flush(&self) {
        self.out.flush();
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        self.out.flush();
    }
}

/// Installs the global `tracing` subscriber of `platform::telemetry` (same settings:
/// `LOG_FORMAT`, `RUST_LOG`, `OTEL_*`; only direct spans exported) with the buffered
/// stderr.
pub fn init(env: &Env, service: &'static str) -> Result<Logs, SettingsError> {
    let out = Buffered::new();
    let telemetry = telemetry::init_with_writer(env, service, Spans::Direct, out.clone())?;
    let flusher = out.clone();
    // A thread rather than a task: lines are written while the runtime shuts down too.
    let spawned = std::thread::Builder::new().name("log-flush".into()).spawn(move || loop {
        std::thread::sleep(FLUSH_EVERY);
        flusher.flush();
    });
    if let Err(err) = spawned {
        // Without it lines would wait for a full buffer: write each at once instead.
        out.unbuffer();
        tracing::warn!(error = %err, "no log flush thread; writing each line at once");
    }
    Ok(Logs { out, _telemetry: telemetry })
}

/// Stderr behind one buffer that every thread's lines share.
#[derive(Clone)]
struct Buffered {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    stderr: BufWriter<io::Stderr>,
    /// Flush after every line (no flush thread).
    unbuffered: bool,
}

impl Buffered {
    fn new() -> Self {
        let stderr = BufWriter::with_capacity(BUFFER_BYTES, io::stderr());
        Self { inner: Arc::new(Mutex::new(Inner { stderr, unbuffered: false })) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A line is written whole or not at all under the lock; a panic elsewhere
        // leaves nothing half-done to fear.
        lock(&self.inner)
    }

    fn flush(&self) {
        // Nowhere to report a failed write to stderr.
        let _ = self.lock().stderr.flush();
    }

    fn unbuffer(&self) {
        self.lock().unbuffered = true;
    }
}

/// One line on its way: `tracing_subscriber` formats a whole line, writes it with
/// one `write_all`, then drops the writer.
struct Line<'a> {
    out: &'a Buffered,
    /// Warnings and errors: written at once, not after up to [`FLUSH_EVERY`].
    urgent: bool,
}

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.lock().stderr.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut inner = self.out.lock();
        inner.stderr.write_all(buf)?;
        if self.urgent || inner.unbuffered {
            inner.stderr.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.lock().stderr.flush()
    }
}

impl<'a> MakeWriter<'a> for Buffered {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line { out: self, urgent: true }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        Line { out: self, urgent: *meta.level() <= Level::WARN }
    }
}
