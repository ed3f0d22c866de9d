//! The Kafka loop (what KEDA scales): consume, decode, handle with per-conversation
//! ordering and bounded concurrency, retry, dead-letter, and commit a record only
//! after every output it produced was acknowledged. The group and its commits live in
//! `group`, pausing in `flow`, a record's life in `job`, `worker` and `process`.

mod flow;
mod group;
mod handover;
mod job;
mod process;
mod worker;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    message::OwnedMessage,
    producer::{FutureProducer, Producer},
    Message,
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use self::{
    flow::Flow,
    group::{commit, report_lag, GroupContext},
    handover::{renew_leases, Handover},
    job::Job,
    process::Processor,
    worker::{Finished, Worker},
};
use super::{
    handler::Handler,
    lanes::Lanes,
    offsets::OffsetTracker,
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
    shutdown: watch::Receiver<bool>,
    options: RunOptions,
) -> anyhow::Result<()> {
    let mut consuming = Consuming::join(handler, settings, status, shutdown).await?;
    let failure = consuming.consume(options).await;
    consuming.drain(settings.shutdown_grace).await;
    consuming.leave();
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

/// What the loop does after one event.
enum Step {
    /// Keep consuming.
    Go,
    /// Stop consuming and drain (shutdown or idleness).
    Stop,
    /// Stop, drain, and end the process with this error.
    Fail(anyhow::Error),
}

/// One member of the handler's group, from joining to leaving.
struct Consuming<H: Handler> {
    consumer: StreamConsumer<GroupContext>,
    producer: FutureProducer,
    tracker: Arc<Mutex<OffsetTracker>>,
    status: Arc<Status>,
    worker: Worker<H>,
    lanes: Lanes<Job<H::Input>>,
    flow: Flow,
    done: mpsc::UnboundedReceiver<Finished>,
    lag_task: JoinHandle<()>,
    /// Renews the leases of the partitions held, while the member lives.
    renew_task: Option<JoinHandle<()>>,
    shutdown: watch::Receiver<bool>,
    last_activity: Instant,
    first_record: bool,
    handover: Option<Arc<Handover>>,
}

impl<H: Handler> Consuming<H> {
    /// Creates the consumer and producer, subscribes, and starts reporting lag.
    async fn join(
        handler: Arc<H>,
        settings: &RuntimeSettings,
        status: Arc<Status>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
        let handover = if settings.handover_wait.is_zero() {
            None
        } else {
            Some(Arc::new(Handover::new(&settings.kafka, handler.group(), settings.handover_wait)?))
        };
        let flow = Flow::for_concurrency(settings.concurrency, handover.clone());
        let context = GroupContext {
            tracker: tracker.clone(),
            status: status.clone(),
            paused: flow.paused(),
            revoke_grace: settings.revoke_grace,
            shutdown: shutdown.clone(),
            handover: handover.clone(),
        };
        let mut config = settings.kafka.consumer_config(handler.group());
        settings.assignment.apply(&mut config);
        let consumer: StreamConsumer<GroupContext> = config
            .create_with_context(context)
            .with_context(|| format!("creating the consumer of group {}", handler.group()))?;
        let producer = settings.kafka.producer()?;
        warm_up(&producer).await;
        consumer.subscribe(handler.topics()).context("subscribing")?;
        let lag_task =
            tokio::spawn(report_lag(settings.clone(), handler.group(), handler.topics(), shutdown.clone()));
        tracing::info!(group = handler.group(), topics = ?handler.topics(), "consuming");
        let renew_task = handover.clone().map(|h| tokio::spawn(renew_leases(h)));
        let (done_tx, done) = mpsc::unbounded_channel();
        let processor = Processor::new(handler, settings.clone(), producer.clone(), status.clone());
        Ok(Self {
            consumer,
            producer,
            tracker,
            status,
            worker: Worker::new(processor, done_tx),
            lanes: Lanes::new(settings.concurrency),
            flow,
            done,
            lag_task,
            renew_task,
            shutdown,
            last_activity: Instant::now(),
            first_record: true,
            handover,
        })
    }

    /// Fetches and runs records until shutdown or idleness (`None`) or a fatal error.
    async fn consume(&mut self, options: RunOptions) -> Option<anyhow::Error> {
        let mut commit_tick = tokio::time::interval(Duration::from_millis(200));
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let step = tokio::select! {
                changed = self.shutdown.changed() => {
                    if changed.is_err() || *self.shutdown.borrow() {
                        tracing::info!("stopping: no more fetching, draining records in flight");
                        Step::Stop
                    } else {
                        Step::Go
                    }
                }
                Some(finished) = self.done.recv() => {
                    self.finished(finished);
                    Step::Go
                }
                received = self.consumer.recv() => match received.map(|message| message.detach()) {
                    Ok(record) => {
                        self.received(record);
                        Step::Go
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "consumer error; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Step::Go
                    }
                },
                _ = commit_tick.tick() => self.tick(options),
            };
            match step {
                Step::Go => self.flow.adjust(&self.consumer, self.lanes.held()),
                Step::Stop => return None,
                Step::Fail(err) => return Some(err),
            }
        }
    }

    /// A job ended: its offset may move on, and its lane's next job starts.
    fn finished(&mut self, finished: Finished) {
        self.last_activity = Instant::now();
        for (key, job) in self.lanes.finish(&finished.key) {
            self.worker.start(key, job, self.shutdown.clone());
        }
    }

    /// A record arrived: it joins its conversation's lane, and starts if the lane was
    /// free.
    fn received(&mut self, record: OwnedMessage) {
        self.last_activity = Instant::now();
        if let Some(handover) = self.handover.as_ref().filter(|h| h.any_withheld()) {
            if handover.is_withheld(&(record.topic().to_string(), record.partition())) {
                // Fetched before the pause took hold; read again, from the previous
                // owner's last commit, once it releases the partition.
                return;
            }
        }
        if self.first_record {
            self.first_record = false;
            let cold = self.status.started().elapsed();
            metrics::gauge!(metric::COLD_START, "handler" => H::NAME).set(cold.as_secs_f64());
            tracing::info!(cold_start_ms = cold.as_millis() as u64, "first record received");
        }
        if let Some((key, job)) = self.worker.accept(record, &self.tracker) {
            if let Some(job) = self.lanes.push(key.clone(), job) {
                self.worker.start(key, job, self.shutdown.clone());
            }
        }
    }

    /// The periodic commit, and the checks that end the loop.
    fn tick(&mut self, options: RunOptions) -> Step {
        commit(&self.consumer, &self.tracker, CommitMode::Async);
        if let Some(handover) = self.handover.as_ref().filter(|h| h.any_withheld()) {
            let (consumer, paused) = (&self.consumer, self.flow.is_paused());
            // Lease and offset look-ups block on the network.
            tokio::task::block_in_place(|| handover.poll(consumer, paused));
        }
        metrics::gauge!(metric::IN_FLIGHT, "handler" => H::NAME).set(self.lanes.held() as f64);
        if let Some(fatal) = self.producer.client().fatal_error() {
            // An idempotent producer in a fatal state never recovers: restart.
            return Step::Fail(anyhow::anyhow!("the Kafka producer failed fatally: {fatal:?}"));
        }
        if !self.status.is_assigned() {
            // Joining the group is not idleness.
            self.last_activity = Instant::now();
        }
        if let Some(idle) = options.exit_when_idle {
            if self.lanes.held() == 0 && self.last_activity.elapsed() >= idle {
                tracing::info!(idle_secs = idle.as_secs(), "idle: exiting");
                return Step::Stop;
            }
        }
        Step::Go
    }

    /// Lets records already running finish within `grace`; records that have not
    /// started stay uncommitted and go to whoever reads the partition next. The loop
    /// keeps polling (paused) so the group keeps seeing a live member.
    async fn drain(&mut self, grace: Duration) {
        self.flow.set(&self.consumer, true);
        let deadline = tokio::time::Instant::now() + grace;
        while self.lanes.running() > 0 {
            tokio::select! {
                finished = self.done.recv() => match finished {
                    Some(finished) => {
                        let _ = self.lanes.finish(&finished.key);
                    }
                    None => break,
                },
                _ = self.consumer.recv() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(abandoned = self.lanes.running(), "grace period over: abandoning records in flight");
                    break;
                }
            }
        }
    }

    /// The last commit, the producer's flush, and leaving the group.
    fn leave(self) {
        self.lag_task.abort();
        if let Some(renewing) = &self.renew_task {
            // Leaving releases every lease held, after the last commits.
            renewing.abort();
        }
        let (consumer, producer, tracker) = (self.consumer, self.producer, self.tracker);
        // These block on the network.
        tokio::task::block_in_place(move || {
            commit(&consumer, &tracker, CommitMode::Sync);
            if producer.flush(Duration::from_secs(5)).is_err() {
                tracing::warn!("producer flush incomplete at shutdown");
            }
            // Leaving the group now hands the partitions over at once instead of after
            // the session timeout.
            consumer.unsubscribe();
            drop(consumer);
        });
        tracing::info!("left the group");
    }
}
