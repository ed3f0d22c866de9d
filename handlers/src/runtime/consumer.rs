//! The Kafka loop (what KEDA scales): consume, decode, handle with per-conversation
//! ordering and bounded concurrency, retry, dead-letter, and commit a record only
//! after every output it produced was acknowledged.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use platform::{
    lag::{self, OffsetResetPolicy},
    sync::lock,
    trace_context::TraceParent,
};
use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    error::KafkaResult,
    message::OwnedMessage,
    producer::{FutureProducer, Producer},
    ClientContext, Message, Offset, TopicPartitionList,
};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::{
    dead_letter,
    handler::{Context, Handler, HandlerError, Sink},
    lanes::Lanes,
    offsets::{OffsetTracker, Partition},
    settings::RuntimeSettings,
    status::{metric, Status},
};

/// How `run` ends besides SIGTERM.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Drain and exit after this long without records (ScaledJob-style runs).
    pub exit_when_idle: Option<Duration>,
}

/// Consumes the handler's topics until `shutdown` turns true (or the process has been
/// idle for `exit_when_idle`), then drains within the grace period, commits and leaves
/// the group.
pub async fn run<H: Handler>(
    handler: Arc<H>,
    settings: &RuntimeSettings,
    status: Arc<Status>,
    mut shutdown: watch::Receiver<bool>,
    options: RunOptions,
) -> anyhow::Result<()> {
    let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
    let context = GroupContext { tracker: tracker.clone(), status: status.clone() };
    let consumer: StreamConsumer<GroupContext> = settings
        .kafka
        .consumer_config(handler.group())
        .create_with_context(context)
        .with_context(|| format!("creating the consumer of group {}", handler.group()))?;
    let producer = settings.kafka.producer()?;
    warm_up(&producer).await;
    consumer.subscribe(handler.topics()).context("subscribing")?;
    let sink = Arc::new(Sink::Kafka { producer: producer.clone(), timeout: settings.kafka.produce_timeout });
    let lag_task =
        tokio::spawn(report_lag(settings.clone(), handler.group(), handler.topics(), shutdown.clone()));
    tracing::info!(group = handler.group(), topics = ?handler.topics(), "consuming");

    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
    let worker = Worker {
        handler,
        sink,
        producer: producer.clone(),
        settings: settings.clone(),
        status,
        done: done_tx,
    };
    let mut lanes: Lanes<Job<H::Input>> = Lanes::new(settings.concurrency);
    // Records fetched ahead of the workers; at this many the partitions are paused (the
    // loop keeps polling, so the group sees a live member and rebalances go through)
    // until half have been handled. Every resume makes librdkafka fetch again from the
    // last record handed out, which took ~180 ms against tansu: resuming at each freed
    // slot held one responder at 4 messages/s (BENCH_ONLY=throughput in
    // handlers/benches/pipeline.rs), the hysteresis lets it run at the handler's pace.
    let mut flow = Flow::new((settings.concurrency * 4).max(MIN_FETCHED_AHEAD));
    let mut commit_tick = tokio::time::interval(Duration::from_millis(200));
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_activity = Instant::now();
    let mut first_record = true;
    let mut failure = None;

    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    tracing::info!("stopping: no more fetching, draining records in flight");
                    break;
                }
            }
            Some(finished) = done_rx.recv() => {
                last_activity = Instant::now();
                finished.apply(&tracker);
                for (key, job) in lanes.finish(&finished.key) {
                    worker.start(key, job, shutdown.clone());
                }
            }
            received = consumer.recv() => {
                match received {
                    Ok(message) => {
                        last_activity = Instant::now();
                        if first_record {
                            first_record = false;
                            let cold = worker.status.started().elapsed();
                            metrics::gauge!(metric::COLD_START, "handler" => H::NAME).set(cold.as_secs_f64());
                            tracing::info!(cold_start_ms = cold.as_millis() as u64, "first record received");
                        }
                        if let Some((key, job)) = worker.accept(message.detach(), &tracker) {
                            if let Some(job) = lanes.push(key.clone(), job) {
                                worker.start(key, job, shutdown.clone());
                            }
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "consumer error; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            _ = commit_tick.tick() => {
                commit(&consumer, &tracker, CommitMode::Async);
                metrics::gauge!(metric::IN_FLIGHT, "handler" => H::NAME).set(lanes.held() as f64);
                if let Some(fatal) = producer.client().fatal_error() {
                    // An idempotent producer in a fatal state never recovers: restart.
                    failure = Some(anyhow::anyhow!("the Kafka producer failed fatally: {fatal:?}"));
                    break;
                }
                if !worker.status.is_assigned() {
                    // Joining the group is not idleness.
                    last_activity = Instant::now();
                }
                if let Some(idle) = options.exit_when_idle {
                    if lanes.held() == 0 && last_activity.elapsed() >= idle {
                        tracing::info!(idle_secs = idle.as_secs(), "idle: exiting");
                        break;
                    }
                }
            }
        }
        flow.adjust(&consumer, lanes.held());
    }

    // Drain: records already running may finish within the grace period; records that
    // have not started stay uncommitted and go to whoever reads the partition next. The
    // loop keeps polling (paused) so the group keeps seeing a live member.
    flow.set(&consumer, true);
    let deadline = tokio::time::Instant::now() + settings.shutdown_grace;
    while lanes.running() > 0 {
        tokio::select! {
            finished = done_rx.recv() => match finished {
                Some(finished) => {
                    finished.apply(&tracker);
                    let _ = lanes.finish(&finished.key);
                }
                None => break,
            },
            _ = consumer.recv() => {}
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(abandoned = lanes.running(), "grace period over: abandoning records in flight");
                break;
            }
        }
    }
    lag_task.abort();
    // The last commit, the producer's flush and leaving the group block on the network.
    tokio::task::block_in_place(move || {
        commit(&consumer, &tracker, CommitMode::Sync);
        if producer.flush(Duration::from_secs(5)).is_err() {
            tracing::warn!("producer flush incomplete at shutdown");
        }
        // Leaving the group now hands the partitions over at once instead of after the
        // session timeout.
        consumer.unsubscribe();
        drop(consumer);
    });
    tracing::info!("left the group");
    match failure {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// Connects the producer and loads the topics' metadata before the first record
/// arrives: a cold producer adds most of a second to the first record's outputs.
async fn warm_up(producer: &FutureProducer) {
    let producer = producer.clone();
    let started = Instant::now();
    let warmed =
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, Duration::from_secs(5)))
            .await;
    match warmed {
        Ok(Ok(_)) => tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "producer connected"),
        _ => tracing::warn!("producer not connected yet; the first outputs will wait for it"),
    }
}

/// The fewest records fetched ahead before pausing: a few user messages' worth of
/// memory, and enough that a resume (a new fetch) serves many records.
const MIN_FETCHED_AHEAD: usize = 64;

/// Pauses fetching when `capacity` records are held and resumes it once half of them
/// have been handled. librdkafka resumes each partition after the last record handed
/// to the loop.
struct Flow {
    capacity: usize,
    paused: bool,
}

impl Flow {
    fn new(capacity: usize) -> Self {
        Self { capacity, paused: false }
    }

    /// Pauses or resumes for `held` records waiting or running.
    fn adjust<C: Consumer<GroupContext>>(&mut self, consumer: &C, held: usize) {
        if !self.paused && held >= self.capacity {
            self.set(consumer, true);
        } else if self.paused && held <= self.capacity / 2 {
            self.set(consumer, false);
        }
    }

    fn set<C: Consumer<GroupContext>>(&mut self, consumer: &C, pause: bool) {
        if pause == self.paused {
            return;
        }
        let assignment = match consumer.assignment() {
            Ok(a) => a,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the assignment");
                return;
            }
        };
        let result = if pause { consumer.pause(&assignment) } else { consumer.resume(&assignment) };
        match result {
            Ok(()) => {
                self.paused = pause;
                tracing::debug!(
                    partitions = assignment.count(),
                    "fetching {}",
                    if pause { "paused" } else { "resumed" }
                );
            }
            Err(err) => tracing::warn!(error = %err, paused = pause, "cannot pause or resume fetching"),
        }
    }
}

/// Work decided for one record when it arrived.
enum Work<I> {
    Handle(I),
    DeadLetter(String),
}

struct Job<I> {
    record: OwnedMessage,
    partition: Partition,
    generation: u64,
    work: Work<I>,
    received: Instant,
    tracker: Arc<Mutex<OffsetTracker>>,
}

impl<I> Job<I> {
    /// Whether this consumer still owns the record's partition.
    fn is_current(&self) -> bool {
        lock(&self.tracker).is_current(&self.partition, self.generation)
    }
}

/// How processing one record ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Handled or dead-lettered: its offset may be committed.
    Done,
    /// Given up at shutdown: must be redelivered.
    Abandoned,
}

struct Finished {
    key: Vec<u8>,
    partition: Partition,
    offset: i64,
    generation: u64,
    outcome: Outcome,
}

impl Finished {
    fn apply(&self, tracker: &Mutex<OffsetTracker>) {
        if self.outcome == Outcome::Done {
            lock(tracker).finish(&self.partition, self.offset, self.generation);
        }
    }
}

struct Worker<H: Handler> {
    handler: Arc<H>,
    sink: Arc<Sink>,
    producer: FutureProducer,
    settings: RuntimeSettings,
    status: Arc<Status>,
    done: mpsc::UnboundedSender<Finished>,
}

impl<H: Handler> Worker<H> {
    /// Registers a record and decodes it; returns its lane key and job unless there is
    /// nothing to do.
    fn accept(
        &self,
        record: OwnedMessage,
        tracker: &Arc<Mutex<OffsetTracker>>,
    ) -> Option<(Vec<u8>, Job<H::Input>)> {
        let partition = (record.topic().to_string(), record.partition());
        let generation = lock(tracker).start(&partition, record.offset());
        let work = match record.payload() {
            None => Work::DeadLetter("record has no value".into()),
            Some(payload) if payload.len() > self.settings.max_record_bytes => Work::DeadLetter(format!(
                "record of {} bytes is over HANDLER_MAX_RECORD_BYTES ({})",
                payload.len(),
                self.settings.max_record_bytes
            )),
            Some(payload) => match self.handler.decode(record.topic(), payload) {
                Ok(Some(input)) => Work::Handle(input),
                Ok(None) => {
                    lock(tracker).finish(&partition, record.offset(), generation);
                    metrics::counter!(metric::RECORDS, "handler" => H::NAME, "outcome" => "skipped")
                        .increment(1);
                    return None;
                }
                Err(err) => Work::DeadLetter(format!("cannot decode: {err}")),
            },
        };
        let key = record.key().map(<[u8]>::to_vec).unwrap_or_default();
        Some((
            key,
            Job { record, partition, generation, work, received: Instant::now(), tracker: tracker.clone() },
        ))
    }

    /// Runs a job on its own task; reports back on `done`.
    fn start(&self, key: Vec<u8>, job: Job<H::Input>, shutdown: watch::Receiver<bool>) {
        let finished = |outcome| Finished {
            key: key.clone(),
            partition: job.partition.clone(),
            offset: job.record.offset(),
            generation: job.generation,
            outcome,
        };
        if !job.is_current() {
            // The partition was revoked while this job waited: its new owner reads it.
            let _ = self.done.send(finished(Outcome::Abandoned));
            return;
        }
        let report = finished(Outcome::Done);
        let (handler, sink, producer, settings, status, done) = (
            self.handler.clone(),
            self.sink.clone(),
            self.producer.clone(),
            self.settings.clone(),
            self.status.clone(),
            self.done.clone(),
        );
        tokio::spawn(async move {
            let outcome = process(&*handler, &sink, &producer, &settings, &status, &job, shutdown).await;
            let _ = done.send(Finished { outcome, ..report });
        });
    }
}

async fn process<H: Handler>(
    handler: &H,
    sink: &Sink,
    producer: &FutureProducer,
    settings: &RuntimeSettings,
    status: &Status,
    job: &Job<H::Input>,
    mut shutdown: watch::Receiver<bool>,
) -> Outcome {
    let record = &job.record;
    let trace =
        TraceParent::from_headers(record.headers()).map(|t| t.child()).unwrap_or_else(TraceParent::new_root);
    let span = tracing::info_span!(
        "record",
        handler = H::NAME,
        topic = record.topic(),
        partition = record.partition(),
        offset = record.offset(),
        trace_id = %trace.trace_id_hex(),
        message_id = tracing::field::Empty,
        conversation_id = tracing::field::Empty,
    );
    let input = match &job.work {
        Work::DeadLetter(reason) => {
            return dead_letter_until_acked(H::NAME, producer, settings, record, reason, 0, &mut shutdown)
                .instrument(span)
                .await;
        }
        Work::Handle(input) => input,
    };
    let (message_id, conversation_id) = handler.ids(input);
    span.record("message_id", tracing::field::display(message_id));
    span.record("conversation_id", tracing::field::display(conversation_id));
    async move {
        let mut delays = settings.retrying.policy.delays();
        let mut attempt = 0;
        let mut was_unavailable = false;
        loop {
            attempt += 1;
            let ctx = Context::new(sink, trace, attempt);
            let result = match handler.handle(input, &ctx).await {
                Ok(()) => ctx.flush().await,
                Err(err) => {
                    // Outputs already on their way are awaited so a retry starts clean.
                    let _ = ctx.flush().await;
                    Err(err)
                }
            };
            let error = match result {
                Ok(()) => {
                    if was_unavailable {
                        status.dependency_recovered();
                    }
                    let elapsed = job.received.elapsed().as_secs_f64();
                    metrics::histogram!(metric::LATENCY, "handler" => H::NAME).record(elapsed);
                    metrics::counter!(metric::RECORDS, "handler" => H::NAME, "outcome" => "ok").increment(1);
                    tracing::info!(attempt, latency_ms = (elapsed * 1000.0) as u64, "handled");
                    return Outcome::Done;
                }
                Err(HandlerError::Unavailable(err)) => {
                    // Not counted as an attempt: the input is fine, the world is not.
                    attempt -= 1;
                    was_unavailable = true;
                    status.dependency_failed();
                    tracing::warn!(error = format!("{err:#}"), "dependency unavailable; will retry, not committing");
                    None
                }
                Err(err @ HandlerError::Transient(_)) if attempt < settings.retrying.max_attempts => {
                    tracing::warn!(attempt, error = %err, "attempt failed; will retry");
                    None
                }
                Err(err) => Some(err),
            };
            if let Some(err) = error {
                tracing::error!(attempts = attempt, error = %err, "giving up: dead-lettering the record");
                // The notice (e.g. the user's error event) must land before the commit.
                let mut notice_delays = settings.retrying.policy.delays();
                loop {
                    let ctx = Context::new(sink, trace, attempt);
                    handler.give_up(input, &err, &ctx).await;
                    match ctx.flush().await {
                        Ok(()) => break,
                        Err(flush) => tracing::warn!(error = %flush, "the give-up notice was not acknowledged; retrying"),
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(notice_delays.next().unwrap_or(settings.retrying.policy.max)) => {}
                        _ = shutdown.wait_for(|down| *down) => return Outcome::Abandoned,
                    }
                }
                return dead_letter_until_acked(
                    H::NAME,
                    producer,
                    settings,
                    record,
                    &err.to_string(),
                    attempt,
                    &mut shutdown,
                )
                .await;
            }
            metrics::counter!(metric::RECORDS, "handler" => H::NAME, "outcome" => "retried").increment(1);
            if !job.is_current() {
                tracing::info!("partition revoked: leaving the record to its new owner");
                return Outcome::Abandoned;
            }
            let delay = delays.next().unwrap_or(settings.retrying.policy.max);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait_for(|down| *down) => {
                    metrics::counter!(metric::RECORDS, "handler" => H::NAME, "outcome" => "abandoned").increment(1);
                    return Outcome::Abandoned;
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Dead-letters a record, retrying until the broker acknowledges or shutdown.
async fn dead_letter_until_acked(
    handler: &'static str,
    producer: &FutureProducer,
    settings: &RuntimeSettings,
    record: &OwnedMessage,
    error: &str,
    attempts: u32,
    shutdown: &mut watch::Receiver<bool>,
) -> Outcome {
    let mut delays = settings.retrying.policy.delays();
    loop {
        match dead_letter::send(producer, record, handler, error, attempts, settings.kafka.produce_timeout)
            .await
        {
            Ok(()) => {
                metrics::counter!(metric::RECORDS, "handler" => handler, "outcome" => "dead_lettered")
                    .increment(1);
                tracing::warn!(error, "record dead-lettered");
                return Outcome::Done;
            }
            Err(err) => tracing::warn!(error = format!("{err:#}"), "dead-lettering failed; will retry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delays.next().unwrap_or(settings.retrying.policy.max)) => {}
            _ = shutdown.wait_for(|down| *down) => return Outcome::Abandoned,
        }
    }
}

/// Commits what the tracker allows.
fn commit<C: Consumer<GroupContext>>(consumer: &C, tracker: &Mutex<OffsetTracker>, mode: CommitMode) {
    let offsets = lock(tracker).to_commit();
    if offsets.is_empty() {
        return;
    }
    match commit_offsets(consumer, &offsets, mode) {
        // An async commit is only queued here: `GroupContext::commit_callback` records
        // it once the broker has accepted it, so a failed one is sent again.
        Ok(()) if matches!(mode, CommitMode::Sync) => {
            let mut t = lock(tracker);
            for (partition, offset) in &offsets {
                t.committed(partition, *offset);
            }
        }
        Ok(()) => {}
        Err(err) => tracing::warn!(error = %err, "commit failed; will retry"),
    }
}

fn commit_offsets<C: Consumer<GroupContext>>(
    consumer: &C,
    offsets: &[(Partition, i64)],
    mode: CommitMode,
) -> anyhow::Result<()> {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in offsets {
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    consumer.commit(&list, mode)?;
    Ok(())
}

/// Keeps the offset tracker right across rebalances.
struct GroupContext {
    tracker: Arc<Mutex<OffsetTracker>>,
    status: Arc<Status>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let revoked: Vec<Partition> =
                list.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
            // Commit what is done before someone else takes over; records still running
            // here will be answered again by the new owner (at-least-once).
            let offsets = lock(&self.tracker).revoke(&revoked);
            if !offsets.is_empty() {
                if let Err(err) = commit_offsets(consumer, &offsets, CommitMode::Sync) {
                    tracing::warn!(error = %err, "commit on revoke failed");
                }
            }
            self.status.set_assigned(false);
            tracing::info!(partitions = revoked.len(), "partitions revoked");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                let mut tracker = lock(&self.tracker);
                for e in offsets.elements() {
                    if let Offset::Offset(offset) = e.offset() {
                        tracker.committed(&(e.topic().to_string(), e.partition()), offset);
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "commit not accepted; will retry"),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Error(err) = rebalance {
            // librdkafka drops the assignment without a revoke: forget everything, so
            // nothing is committed for partitions this process may no longer own.
            lock(&self.tracker).clear();
            self.status.set_assigned(false);
            tracing::warn!(error = %err, "rebalance failed; the assignment was dropped");
        }
        if let Rebalance::Assign(list) = rebalance {
            self.status.set_assigned(true);
            tracing::info!(
                partitions = list.count(),
                elapsed_ms = self.status.started().elapsed().as_millis() as u64,
                "partitions assigned"
            );
        }
    }
}

/// Publishes the group's total lag (as KEDA computes it) every few seconds.
async fn report_lag(
    settings: RuntimeSettings,
    group: &'static str,
    topics: &'static [&'static str],
    mut shutdown: watch::Receiver<bool>,
) {
    let client = match settings.kafka.base_consumer(group) {
        Ok(c) => Arc::new(c),
        Err(err) => {
            tracing::warn!(error = format!("{err:#}"), "no lag metric");
            return;
        }
    };
    loop {
        let c = client.clone();
        let measured = tokio::task::spawn_blocking(move || {
            lag::group_lag(&*c, topics, OffsetResetPolicy::Earliest, Duration::from_secs(5))
        })
        .await;
        if let Ok(Ok(lags)) = measured {
            metrics::gauge!(metric::LAG, "group" => group).set(lag::total(&lags) as f64);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.wait_for(|down| *down) => return,
        }
    }
}
