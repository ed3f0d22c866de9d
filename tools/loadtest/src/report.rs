//! The result of a run: counts, latency percentiles (HdrHistogram), the timeline, the
//! table printed at the end and `report.json`.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use hdrhistogram::Histogram;
use serde::Serialize;
use uuid::Uuid;

use crate::{
    sample::{GroupLag, Scaling},
    timeline::TimelineRow,
    tracker::{MessageRecord, PostOutcome, ReplyEnd, StreamStats},
};

/// Percentiles of a set of durations, in milliseconds (`None` when there were none).
/// Values are HdrHistogram's with 3 significant digits (capped at the maximum, which is exact).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// How many samples.
    pub count: u64,
    /// Median.
    pub p50_ms: Option<f64>,
    /// 90th percentile.
    pub p90_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Largest sample.
    pub max_ms: Option<f64>,
    /// Mean.
    pub mean_ms: Option<f64>,
}

impl Percentiles {
    /// The percentiles of `samples`.
    pub fn of(samples: impl IntoIterator<Item = Duration>) -> Self {
        // Microseconds, auto-resizing, 3 significant digits: no sample is ever refused.
        let mut histogram = Histogram::<u64>::new(3).expect("3 significant digits is a valid precision");
        let mut max = Duration::ZERO;
        for s in samples {
            max = max.max(s);
            let micros = u64::try_from(s.as_micros()).unwrap_or(u64::MAX);
            // `record` grows the histogram as needed; only a value beyond what any
            // histogram can hold is clamped.
            if histogram.record(micros).is_err() {
                histogram.saturating_record(micros);
            }
        }
        if histogram.is_empty() {
            return Self::default();
        }
        // HdrHistogram answers the top of a value's bucket; never above the real maximum.
        let max_ms = max.as_secs_f64() * 1000.0;
        let at = |q: f64| Some((histogram.value_at_quantile(q) as f64 / 1000.0).min(max_ms));
        Self {
            count: histogram.len(),
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            max_ms: Some(max_ms),
            mean_ms: Some(histogram.mean() / 1000.0),
        }
    }
}

/// What was asked of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// The gateway.
    pub url: String,
    /// Conversations asked for.
    pub conversations: usize,
    /// Target messages per second.
    pub rate: f64,
    /// Sending time.
    pub duration_secs: f64,
    /// Longest wait for outstanding replies.
    pub drain_secs: f64,
    /// Extra sampling after the drain.
    pub tail_secs: f64,
}

/// What happened to the messages.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Messages in the schedule.
    pub planned: u64,
    /// POSTs sent.
    pub sent: u64,
    /// Not sent because the run was stopped.
    pub not_sent: u64,
    /// 202.
    pub accepted: u64,
    /// Any other HTTP status.
    pub rejected: u64,
    /// No HTTP answer.
    pub failed: u64,
    /// `done` seen.
    pub answered: u64,
    /// `error` seen.
    pub errored: u64,
    /// Accepted, and neither `done` nor `error` before the end: lost (or slower than the drain).
    pub unanswered: u64,
    /// Rejections by `status code` (`429 rate_limited`).
    pub rejected_by: BTreeMap<String, u64>,
    /// Transport failures by kind.
    pub failed_by: BTreeMap<String, u64>,
    /// `error` events by code.
    pub errors_by: BTreeMap<String, u64>,
    /// Messages answered in more than one attempt (`reset` seen).
    pub retried: u64,
    /// Replies whose `done` text is not the concatenation of the shown attempt's tokens
    /// (with no `gap` to explain it): mixed attempts or lost tokens.
    pub text_mismatches: u64,
    /// Reply events for messages no 202 of this run named.
    pub unmatched_events: u64,
}

/// Latency percentiles of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latencies {
    /// POST sent → first `token` event.
    pub ttft: Percentiles,
    /// POST sent → `done` event.
    pub reply: Percentiles,
    /// POST sent → its HTTP answer.
    pub post: Percentiles,
    /// Due time → POST sent: how far the load generator itself fell behind its schedule.
    pub send_delay: Percentiles,
    /// Per reply, the longest silence between two of its events (reconnects show here).
    pub pause: Percentiles,
}

/// An accepted message that got no `done`/`error`.
#[derive(Debug, Clone, Serialize)]
pub struct Unanswered {
    /// Position in the plan.
    pub index: usize,
    /// Conversation number (0-based).
    pub conversation: usize,
    /// The gateway's id for it.
    pub message_id: Option<Uuid>,
    /// When it was sent, seconds from the start.
    pub sent_secs: Option<f64>,
    /// Tokens seen for it.
    pub tokens: u32,
}

/// The most unanswered messages listed in the report.
const MAX_UNANSWERED_LISTED: usize = 100;

/// Everything a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was asked.
    pub target: Target,
    /// Conversations that got at least one message.
    pub conversations_used: usize,
    /// Seconds from the start to the end of sampling.
    pub elapsed_secs: f64,
    /// Seconds from the first to the last send.
    pub send_span_secs: f64,
    /// Messages sent per second over the send span.
    pub achieved_rate: Option<f64>,
    /// `done` events per second, from the first send to the last `done`.
    pub reply_rate: Option<f64>,
    /// Stopped early by Ctrl-C: the rest of the schedule was not sent, the drain was cut short.
    pub interrupted: bool,
    /// Every accepted message got its `done`/`error` before the drain ended.
    pub drained: bool,
    /// Seconds from the last send until the last reply ended (or the drain gave up).
    pub drain_secs: f64,
    /// Message counts.
    pub counts: Counts,
    /// Latency percentiles over the run.
    pub latency: Latencies,
    /// Stream happenings.
    pub streams: StreamStats,
    /// Highest total lag sampled per group.
    pub peak_lag: GroupLag,
    /// Most replicas sampled per handler.
    pub peak_replicas: BTreeMap<String, u32>,
    /// Replicas per handler at the last sample.
    pub final_replicas: BTreeMap<String, u32>,
    /// Sampling problems (first error of each sampler).
    pub sampling_errors: Vec<String>,
    /// Accepted messages without a reply (at most 100 listed).
    pub unanswered: Vec<Unanswered>,
    /// One row per second.
    pub timeline: Vec<TimelineRow>,
}

/// What the runner knows beyond the records.
pub struct RunFacts {
    /// What was asked.
    pub target: Target,
    /// Seconds from the start to the end of sampling.
    pub elapsed: Duration,
    /// Seconds from the last send to the end of the drain.
    pub drain: Duration,
    /// Every accepted message got an ending before the drain ended.
    pub drained: bool,
    /// Sampling problems.
    pub sampling_errors: Vec<String>,
    /// Stopped early by Ctrl-C.
    pub interrupted: bool,
}

fn failure_kind(error: &str) -> String {
    error.split(':').next().unwrap_or(error).trim().to_string()
}

impl Report {
    /// Builds the report from the message records, stream statistics and timeline.
    pub fn build(
        facts: RunFacts,
        records: &[MessageRecord],
        streams: StreamStats,
        unmatched_events: u64,
        timeline: Vec<TimelineRow>,
    ) -> Self {
        let mut counts = Counts { planned: records.len() as u64, unmatched_events, ..Counts::default() };
        for r in records {
            match &r.post {
                PostOutcome::NotSent => counts.not_sent += 1,
                PostOutcome::Pending => counts.sent += 1,
                PostOutcome::Accepted => {
                    counts.sent += 1;
                    counts.accepted += 1;
                }
                PostOutcome::Rejected { status, code } => {
                    counts.sent += 1;
                    counts.rejected += 1;
                    let key = format!("{status} {}", code.as_deref().unwrap_or("-"));
                    *counts.rejected_by.entry(key).or_default() += 1;
                }
                PostOutcome::Failed(error) => {
                    counts.sent += 1;
                    counts.failed += 1;
                    *counts.failed_by.entry(failure_kind(error)).or_default() += 1;
                }
            }
            match &r.finished {
                Some((_, ReplyEnd::Done)) => counts.answered += 1,
                Some((_, ReplyEnd::Error(code))) => {
                    counts.errored += 1;
                    *counts.errors_by.entry(code.clone()).or_default() += 1;
                }
                None if r.unanswered() => counts.unanswered += 1,
                None => {}
            }
            counts.retried += u64::from(r.attempts > 1);
            counts.text_mismatches += u64::from(r.text_mismatch);
        }

        let sent: Vec<Duration> = records.iter().filter_map(|r| r.sent).collect();
        let first_sent = sent.iter().min().copied();
        let last_sent = sent.iter().max().copied();
        let send_span = match (first_sent, last_sent) {
            (Some(a), Some(b)) => b - a,
            _ => Duration::ZERO,
        };
        let achieved_rate = (sent.len() >= 2 && !send_span.is_zero())
            .then(|| (sent.len() - 1) as f64 / send_span.as_secs_f64());
        let last_done = records
            .iter()
            .filter_map(|r| match &r.finished {
                Some((at, ReplyEnd::Done)) => Some(*at),
                _ => None,
            })
            .max();
        let reply_rate = match (first_sent, last_done) {
            (Some(a), Some(b)) if b > a => Some(counts.answered as f64 / (b - a).as_secs_f64()),
            _ => None,
        };

        let mut peak_lag = GroupLag::new();
        let mut peak_replicas = BTreeMap::new();
        for row in &timeline {
            for (group, lag) in row.lag.iter().flatten() {
                let peak = peak_lag.entry(group.clone()).or_insert(*lag);
                *peak = (*peak).max(*lag);
            }
            for (name, s) in row.scaling.iter().flatten() {
                let peak = peak_replicas.entry(name.clone()).or_insert(s.replicas);
                *peak = (*peak).max(s.replicas);
            }
        }
        let final_replicas = timeline
            .iter()
            .rev()
            .find_map(|r| r.scaling.as_ref())
            .map(|s: &Scaling| s.iter().map(|(n, s)| (n.clone(), s.replicas)).collect())
            .unwrap_or_default();

        let conversations_used =
            records.iter().map(|r| r.conversation).collect::<std::collections::BTreeSet<_>>().len();
        Self {
            target: facts.target,
            conversations_used,
            elapsed_secs: facts.elapsed.as_secs_f64(),
            send_span_secs: send_span.as_secs_f64(),
            achieved_rate,
            reply_rate,
            interrupted: facts.interrupted,
            drained: facts.drained,
            drain_secs: facts.drain.as_secs_f64(),
            latency: Latencies {
                ttft: Percentiles::of(records.iter().filter_map(MessageRecord::ttft)),
                reply: Percentiles::of(records.iter().filter_map(MessageRecord::reply_latency)),
                post: Percentiles::of(records.iter().filter_map(MessageRecord::post_latency)),
                send_delay: Percentiles::of(records.iter().filter_map(MessageRecord::send_delay)),
                pause: Percentiles::of(records.iter().filter_map(|r| r.longest_pause)),
            },
            unanswered: records
                .iter()
                .filter(|r| r.unanswered())
                .take(MAX_UNANSWERED_LISTED)
                .map(|r| Unanswered {
                    index: r.index,
                    conversation: r.conversation,
                    message_id: r.message_id,
                    sent_secs: r.sent.map(|s| s.as_secs_f64()),
                    tokens: r.tokens,
                })
                .collect(),
            counts,
            streams,
            peak_lag,
            peak_replicas,
            final_replicas,
            sampling_errors: facts.sampling_errors,
            timeline,
        }
    }

    /// The summary table printed at the end of a run.
    pub fn table(&self) -> String {
        let c = &self.counts;
        let t = &self.target;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nloadtest {}: {} conversations ({} used), target {:.2} msg/s for {:.0} s",
            t.url, t.conversations, self.conversations_used, t.rate, t.duration_secs
        );
        let _ = writeln!(
            out,
            "\n{:<12}{:>9}{:>10}{:>10}{:>9}{:>10}{:>9}{:>12}",
            "messages", "sent", "accepted", "rejected", "failed", "answered", "errored", "unanswered"
        );
        let _ = writeln!(
            out,
            "{:<12}{:>9}{:>10}{:>10}{:>9}{:>10}{:>9}{:>12}",
            "", c.sent, c.accepted, c.rejected, c.failed, c.answered, c.errored, c.unanswered
        );
        if c.not_sent > 0 {
            let why = if self.interrupted { "interrupted" } else { "stopped early" };
            let _ = writeln!(out, "  not sent ({why}): {} of {} planned", c.not_sent, c.planned);
        }
        for (label, by) in [("rejected", &c.rejected_by), ("failed", &c.failed_by), ("errors", &c.errors_by)]
        {
            if !by.is_empty() {
                let parts: Vec<String> = by.iter().map(|(k, n)| format!("{k}: {n}")).collect();
                let _ = writeln!(out, "  {label}: {}", parts.join(", "));
            }
        }
        let _ = writeln!(
            out,
            "\n{:<22}{:>7}{:>10}{:>10}{:>10}{:>10}",
            "latency (ms)", "count", "p50", "p90", "p99", "max"
        );
        let l = &self.latency;
        for (label, p) in [
            ("time to first token", &l.ttft),
            ("full reply", &l.reply),
            ("POST /chat", &l.post),
            ("send delay", &l.send_delay),
            ("longest pause", &l.pause),
        ] {
            let cell = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "{:<22}{:>7}{:>10}{:>10}{:>10}{:>10}",
                label,
                p.count,
                cell(p.p50_ms),
                cell(p.p90_ms),
                cell(p.p99_ms),
                cell(p.max_ms)
            );
        }
        let rate = |r: Option<f64>| r.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "\nachieved rate {} msg/s (target {:.2}), replies {} /s; {} {:.1} s after the last send",
            rate(self.achieved_rate),
            t.rate,
            rate(self.reply_rate),
            if self.drained { "every reply in" } else { "NOT drained: gave up" },
            self.drain_secs
        );
        let s = &self.streams;
        let _ = writeln!(
            out,
            "streams: {} reconnect attempts, {} gaps, {} shutdowns, {} refused; {} retried replies, {} duplicate ends, {} text mismatches, {} unmatched events",
            s.reconnects,
            s.gaps,
            s.shutdowns,
            s.refused.values().sum::<u64>(),
            c.retried,
            s.duplicate_ends,
            c.text_mismatches,
            c.unmatched_events
        );
        if !self.peak_lag.is_empty() {
            let parts: Vec<String> = self.peak_lag.iter().map(|(g, l)| format!("{g} {l}")).collect();
            let _ = writeln!(out, "peak lag: {}", parts.join(", "));
        }
        if !self.peak_replicas.is_empty() {
            let parts: Vec<String> = self
                .peak_replicas
                .iter()
                .map(|(n, r)| format!("{n} {r} (last {})", self.final_replicas.get(n).copied().unwrap_or(0)))
                .collect();
            let _ = writeln!(out, "peak replicas: {}", parts.join(", "));
        }
        for e in &self.sampling_errors {
            let _ = writeln!(out, "sampling: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;
    use crate::{
        schedule::plan,
        tracker::{EventKind, ReplyEvent, Tracker},
    };

    #[test]
    fn percentiles_of_nothing_are_empty() {
        assert_eq!(Percentiles::of([]), Percentiles::default());
    }

    #[test]
    fn percentiles_match_a_known_distribution() {
        // 1 ms … 1000 ms.
        let p = Percentiles::of((1..=1000).map(Duration::from_millis));
        assert_eq!(p.count, 1000);
        let close = |v: Option<f64>, want: f64| (v.unwrap() - want).abs() <= want * 0.002;
        assert!(close(p.p50_ms, 500.0), "{p:?}");
        assert!(close(p.p90_ms, 900.0), "{p:?}");
        assert!(close(p.p99_ms, 990.0), "{p:?}");
        assert_eq!(p.max_ms, Some(1000.0));
        assert!(close(p.mean_ms, 500.5), "{p:?}");
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let p = Percentiles::of([Duration::from_micros(12_345)]);
        assert_eq!(p.count, 1);
        assert!((p.p50_ms.unwrap() - 12.345).abs() < 0.02 && p.p99_ms == p.p50_ms, "{p:?}");
        assert_eq!(p.max_ms, Some(12.345));
    }

    fn target() -> Target {
        Target {
            url: "http://gw".into(),
            conversations: 2,
            rate: 2.0,
            duration_secs: 2.0,
            drain_secs: 10.0,
            tail_secs: 0.0,
        }
    }

    /// Four messages: answered, errored, rejected, unanswered.
    async fn run_of_four() -> Report {
        let start = Instant::now();
        let t = Tracker::new(start, &plan(2.0, Duration::from_secs(2), 2));
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        let a = Some(Uuid::new_v4());
        for (i, id) in ids.iter().enumerate() {
            tokio::time::sleep_until(start + Duration::from_millis(500 * i as u64)).await;
            t.sent(i);
            if i == 2 {
                t.rejected(i, 429, Some("rate_limited".into()));
            } else {
                t.accepted(i, *id);
            }
        }
        tokio::time::advance(Duration::from_millis(200)).await;
        t.event(ReplyEvent { message_id: ids[0], attempt: a, kind: EventKind::Token { delta: "hi".into() } });
        tokio::time::advance(Duration::from_millis(100)).await;
        t.event(ReplyEvent { message_id: ids[0], attempt: a, kind: EventKind::Done { text: "hi".into() } });
        t.event(ReplyEvent { message_id: ids[1], attempt: a, kind: EventKind::Error { code: "llm".into() } });
        let (records, streams, unmatched) = t.finish();
        let facts = RunFacts {
            target: target(),
            elapsed: start.elapsed(),
            drain: Duration::from_secs(10),
            drained: false,
            sampling_errors: vec![],
            interrupted: false,
        };
        let mut timeline = vec![TimelineRow::new(start.elapsed(), t.snapshot(), None, None)];
        crate::timeline::fill_windows(&mut timeline, &records);
        Report::build(facts, &records, streams, unmatched, timeline)
    }

    #[tokio::test(start_paused = true)]
    async fn counts_rates_and_latencies_come_from_the_records() {
        let r = run_of_four().await;
        let c = &r.counts;
        assert_eq!((c.planned, c.sent, c.accepted, c.rejected, c.failed), (4, 4, 3, 1, 0));
        assert_eq!((c.answered, c.errored, c.unanswered), (1, 1, 1));
        assert_eq!(c.rejected_by.get("429 rate_limited"), Some(&1));
        assert_eq!(c.errors_by.get("llm"), Some(&1));
        assert_eq!(r.achieved_rate, Some(2.0)); // 4 sends, 0.5 s apart
        assert_eq!(r.latency.ttft.count, 1);
        assert_eq!(r.latency.reply.count, 1);
        assert!((r.latency.ttft.max_ms.unwrap() - 1700.0).abs() < 1e-6); // sent at 0, token at 1.7 s
        assert_eq!(r.unanswered.len(), 1);
        assert_eq!(r.unanswered[0].index, 3);
        assert_eq!(r.timeline[0].ttft.count, 1, "the window holds the one first token");
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_names_every_count_and_percentile() {
        let table = run_of_four().await.table();
        for word in [
            "sent",
            "accepted",
            "answered",
            "errored",
            "unanswered",
            "time to first token",
            "full reply",
            "p50",
            "p90",
            "p99",
            "max",
            "achieved rate",
            "429 rate_limited",
            "NOT drained",
        ] {
            assert!(table.contains(word), "{word} missing from\n{table}");
        }
        let json = serde_json::to_value(run_of_four().await).expect("json");
        assert_eq!(json["counts"]["unanswered"], 1);
        assert!(json["latency"]["ttft"]["p50_ms"].is_number());
    }
}
