//! Records as jobs: registering and decoding a record when it arrives, running it on
//! its own task, and reporting back how it ended so its offset can be committed.

use std::sync::{Arc, Mutex};

use platform::sync::lock;
use rdkafka::{message::OwnedMessage, Message};
use tokio::sync::{mpsc, watch};

use super::{
    job::{Job, Work},
    process::Processor,
};
use crate::runtime::{handler::Handler, offsets::OffsetTracker, status::metric};

/// A job's report to the loop (the job has already settled its offset in the tracker).
pub(super) struct Finished {
    /// The lane it ran in.
    pub(super) key: Vec<u8>,
}

/// Turns records into jobs and runs them.
pub(super) struct Worker<H: Handler> {
    processor: Arc<Processor<H>>,
    done: mpsc::UnboundedSender<Finished>,
}

impl<H: Handler> Worker<H> {
    /// A worker running jobs with `processor`, reporting each end on `done`.
    pub(super) fn new(processor: Processor<H>, done: mpsc::UnboundedSender<Finished>) -> Self {
        Self { processor: Arc::new(processor), done }
    }

    /// Registers a record and decodes it; returns its lane key and job unless there is
    /// nothing to do.
    pub(super) fn accept(
        &self,
        record: OwnedMessage,
        tracker: &Arc<Mutex<OffsetTracker>>,
    ) -> Option<(Vec<u8>, Job<H::Input>)> {
        let partition = (record.topic().to_string(), record.partition());
        let generation = lock(tracker).start(&partition, record.offset());
        let limit = self.processor.settings.record_limit;
        let too_large = record.payload().and_then(|payload| limit.refusal(payload.len()));
        let work = match (record.payload(), too_large) {
            (None, _) => Work::DeadLetter("record has no value".into()),
            (Some(_), Some(reason)) => Work::DeadLetter(reason),
            (Some(payload), None) => match self.processor.handler.decode(record.topic(), payload) {
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
        Some((key, Job::new(record, partition, generation, work, tracker.clone())))
    }

    /// Runs a job on its own task; reports back on `done`.
    pub(super) fn start(&self, key: Vec<u8>, job: Job<H::Input>, shutdown: watch::Receiver<bool>) {
        if !job.is_current() {
            // The partition was revoked while this job waited: its new owner reads it.
            let _ = self.done.send(Finished { key });
            return;
        }
        job.mark_running();
        let (processor, done) = (self.processor.clone(), self.done.clone());
        tokio::spawn(async move {
            let outcome = processor.process(&job, shutdown).await;
            job.settle(outcome);
            let _ = done.send(Finished { key });
        });
    }
}
