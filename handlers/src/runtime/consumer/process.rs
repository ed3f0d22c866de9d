//! Processing one record: the handler's attempts with backoff, the give-up notice, and
//! dead-lettering until the broker acknowledges. A record counts as done only once
//! every output it produced was acknowledged.

use std::{sync::Arc, time::Duration};

use platform::{otel, trace_context::TraceParent};
use rdkafka::{message::OwnedMessage, producer::FutureProducer, Message};
use tokio::sync::watch;
use tracing::Instrument;

use super::job::{Job, Outcome, Work};
use crate::runtime::{
    dead_letter,
    handler::{Context, Handler, HandlerError, Sink},
    retry::{after_failure, AfterFailure},
    settings::RuntimeSettings,
    status::{metric, Status},
};

/// What every record's task shares.
pub(super) struct Processor<H: Handler> {
    /// The handler.
    pub(super) handler: Arc<H>,
    /// Retries, limits and the produce timeout.
    pub(super) settings: RuntimeSettings,
    sink: Sink,
    producer: FutureProducer,
    status: Arc<Status>,
}

impl<H: Handler> Processor<H> {
    /// Outputs and dead letters go through `producer`; dependency failures are reported
    /// to `status`.
    pub(super) fn new(
        handler: Arc<H>,
        settings: RuntimeSettings,
        producer: FutureProducer,
        status: Arc<Status>,
    ) -> Self {
        let sink = Sink::Kafka { producer: producer.clone(), timeout: settings.kafka.produce_timeout };
        Self { handler, settings, sink, producer, status }
    }

    /// Processes one record to its end: handled, dead-lettered, or abandoned (left
    /// uncommitted for redelivery).
    pub(super) async fn process(&self, job: &Job<H::Input>, mut shutdown: watch::Receiver<bool>) -> Outcome {
        let record = &job.record;
        let span = record_span::<H>(record, self.handler.group());
        let trace = otel::start(&span, TraceParent::from_headers(record.headers()));
        span.record("trace_id", tracing::field::display(trace.trace_id_hex()));
        let input = match &job.work {
            Work::DeadLetter(reason) => {
                return self.dead_letter_until_acked(record, reason, 0, &mut shutdown).instrument(span).await;
            }
            Work::Handle(input) => input,
        };
        let ids = self.handler.ids(input);
        span.record("message_id", tracing::field::display(ids.message_id));
        span.record("conversation_id", tracing::field::display(ids.conversation_id));
        self.handle_with_retries(job, input, trace, shutdown).instrument(span).await
    }

    /// Attempts `input` until it is handled, given up on, or abandoned.
    async fn handle_with_retries(
        &self,
        job: &Job<H::Input>,
        input: &H::Input,
        trace: TraceParent,
        mut shutdown: watch::Receiver<bool>,
    ) -> Outcome {
        let retrying = self.settings.retrying;
        let mut delays = retrying.policy.delays();
        let mut attempt = 0;
        let mut was_unavailable = false;
        loop {
            attempt += 1;
            let span = otel::span("attempt", otel::Kind::Internal);
            otel::set(&span, "chat.attempt", i64::from(attempt));
            let err = match self.attempt(input, trace, attempt).instrument(span.clone()).await {
                Ok(()) => {
                    if was_unavailable {
                        self.status.dependency_recovered();
                    }
                    record_handled::<H, _>(job, attempt);
                    return Outcome::Done;
                }
                Err(err) => {
                    otel::fail(&span, &err);
                    err
                }
            };
            match after_failure(&err, attempt, retrying.max_attempts) {
                AfterFailure::WaitForDependency => {
                    // Not counted as an attempt: the input is fine, the world is not.
                    attempt -= 1;
                    was_unavailable = true;
                    self.status.dependency_failed();
                    tracing::warn!(
                        error = format!("{:#}", err.cause()),
                        "dependency unavailable; will retry, not committing"
                    );
                }
                AfterFailure::Retry => tracing::warn!(attempt, error = %err, "attempt failed; will retry"),
                AfterFailure::GiveUp => {
                    return self.give_up(&job.record, input, &err, trace, attempt, &mut shutdown).await
                }
            }
            metrics::counter!(metric::RECORDS, "handler" => H::NAME, "outcome" => "retried").increment(1);
            if !job.is_current() {
                tracing::info!("partition revoked: leaving the record to its new owner");
                return Outcome::Abandoned;
            }
            if !back_off(delays.next().unwrap_or(retrying.policy.max), &mut shutdown).await {
                metrics::counter!(metric::RECORDS, "handler" => H::NAME, "outcome" => "abandoned")
                    .increment(1);
                return Outcome::Abandoned;
            }
        }
    }

    /// One attempt: the handler, then the acknowledgement of every output it published.
    async fn attempt(&self, input: &H::Input, trace: TraceParent, attempt: u32) -> Result<(), HandlerError> {
        let ctx = Context::new(&self.sink, trace, attempt);
        match self.handler.handle(input, &ctx).await {
            Ok(()) => ctx.flush().await,
            Err(err) => {
                // Outputs already on their way are awaited so a retry starts clean.
                let _ = ctx.flush().await;
                Err(err)
            }
        }
    }

    /// Gives up on `input` after `attempts`: the handler's notice, then the DLQ.
    async fn give_up(
        &self,
        record: &OwnedMessage,
        input: &H::Input,
        err: &HandlerError,
        trace: TraceParent,
        attempts: u32,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Outcome {
        tracing::error!(attempts, error = %err, "giving up: dead-lettering the record");
        if !self.notify_until_acked(input, err, trace, attempts, shutdown).await {
            return Outcome::Abandoned;
        }
        self.dead_letter_until_acked(record, &err.to_string(), attempts, shutdown).await
    }

    /// Publishes the handler's give-up notice (e.g. the user's error event) until the
    /// broker acknowledges it, because it must land before the commit; `false` when
    /// shutdown came first.
    async fn notify_until_acked(
        &self,
        input: &H::Input,
        err: &HandlerError,
        trace: TraceParent,
        attempts: u32,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let policy = self.settings.retrying.policy;
        let mut delays = policy.delays();
        loop {
            let ctx = Context::new(&self.sink, trace, attempts);
            self.handler.give_up(input, err, &ctx).await;
            match ctx.flush().await {
                Ok(()) => return true,
                Err(flush) => {
                    tracing::warn!(error = %flush, "the give-up notice was not acknowledged; retrying")
                }
            }
            if !back_off(delays.next().unwrap_or(policy.max), shutdown).await {
                return false;
            }
        }
    }

    /// Dead-letters a record, retrying until the broker acknowledges or shutdown.
    async fn dead_letter_until_acked(
        &self,
        record: &OwnedMessage,
        error: &str,
        attempts: u32,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Outcome {
        let policy = self.settings.retrying.policy;
        let mut delays = policy.delays();
        loop {
            let sent = dead_letter::send(
                &self.producer,
                record,
                H::NAME,
                error,
                attempts,
                self.settings.kafka.produce_timeout,
            )
            .await;
            match sent {
                Ok(()) => {
                    metrics::counter!(metric::RECORDS, "handler" => H::NAME, "outcome" => "dead_lettered")
                        .increment(1);
                    tracing::warn!(error, "record dead-lettered");
                    return Outcome::Done;
                }
                Err(err) => tracing::warn!(error = format!("{err:#}"), "dead-lettering failed; will retry"),
            }
            if !back_off(delays.next().unwrap_or(policy.max), shutdown).await {
                return Outcome::Abandoned;
            }
        }
    }
}

/// Waits `delay` before the next try; `false` when shutdown came first.
async fn back_off(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = shutdown.wait_for(|down| *down) => false,
    }
}

/// The span every log line about one record carries; the trace and the ids are filled
/// in once known. When traces are exported it is the consumer span of the record
/// (OpenTelemetry's messaging conventions), a child of the span that wrote it.
fn record_span<H: Handler>(record: &OwnedMessage, group: &'static str) -> tracing::Span {
    if otel::exporting() {
        return tracing::info_span!(
            "record",
            otel.name = %format!("process {}", record.topic()),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.destination.name = record.topic(),
            messaging.consumer.group.name = group,
            messaging.destination.partition.id = record.partition(),
            messaging.kafka.offset = record.offset(),
            handler = H::NAME,
            trace_id = tracing::field::Empty,
            message_id = tracing::field::Empty,
            conversation_id = tracing::field::Empty,
        );
    }
    tracing::info_span!(
        "record",
        handler = H::NAME,
        topic = record.topic(),
        partition = record.partition(),
        offset = record.offset(),
        trace_id = tracing::field::Empty,
        message_id = tracing::field::Empty,
        conversation_id = tracing::field::Empty,
    )
}

/// Counts and logs a record handled at attempt `attempt`.
fn record_handled<H: Handler, I>(job: &Job<I>, attempt: u32) {
    let elapsed = job.received.elapsed().as_secs_f64();
    metrics::histogram!(metric::LATENCY, "handler" => H::NAME).record(elapsed);
    metrics::counter!(metric::RECORDS, "handler" => H::NAME, "outcome" => "ok").increment(1);
    tracing::info!(attempt, latency_ms = (elapsed * 1000.0) as u64, "handled");
}
