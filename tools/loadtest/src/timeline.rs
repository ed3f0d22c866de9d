//! The run second by second: counters, lag, replicas and per-second latency
//! percentiles; the progress line and `timeline.csv` are made from it.

use std::{collections::BTreeSet, fmt::Write as _, time::Duration};

use serde::Serialize;

use crate::{
    report::Percentiles,
    sample::{GroupLag, Scaling},
    tracker::{MessageRecord, Snapshot},
};

/// One row per second of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TimelineRow {
    /// Seconds since the start of the run.
    pub t: f64,
    /// Counters at `t`.
    #[serde(flatten)]
    pub counts: Snapshot,
    /// Accepted messages not answered yet at `t`.
    pub in_flight: u64,
    /// Total lag per handler group (KEDA's computation), when sampled.
    pub lag: Option<GroupLag>,
    /// The autoscaler's view per handler, when sampled.
    pub scaling: Option<Scaling>,
    /// Time to first token of the first tokens that arrived since the previous row.
    pub ttft: Percentiles,
    /// Full-reply latency of the replies that ended since the previous row.
    pub reply: Percentiles,
}

impl TimelineRow {
    /// A row at `t` with the counters and samples known then.
    pub fn new(t: Duration, counts: Snapshot, lag: Option<GroupLag>, scaling: Option<Scaling>) -> Self {
        Self {
            t: t.as_secs_f64(),
            counts,
            in_flight: counts.in_flight(),
            lag,
            scaling,
            ttft: Percentiles::default(),
            reply: Percentiles::default(),
        }
    }

    /// The progress line printed once a second.
    pub fn progress_line(&self) -> String {
        let c = &self.counts;
        let mut line = format!(
            "[{:>5.0}s] sent {:>6}  answered {:>6}  in flight {:>5}",
            self.t, c.sent, c.answered, self.in_flight
        );
        if c.rejected + c.failed + c.errored > 0 {
            let _ = write!(line, "  rejected {} failed {} errors {}", c.rejected, c.failed, c.errored);
        }
        if let Some(lag) = &self.lag {
            line.push_str("  | lag");
            for (group, total) in lag {
                let _ = write!(line, " {group} {total}");
            }
        }
        if let Some(scaling) = &self.scaling {
            line.push_str("  | replicas");
            for (name, s) in scaling {
                let _ = write!(line, " {name} {}", s.replicas);
                if let Some(desired) = s.desired.filter(|d| *d != s.replicas) {
                    let _ = write!(line, "→{desired}");
                }
            }
        }
        line
    }
}

/// Fills each row's latency percentiles from the replies whose first token (TTFT) or
/// `done` (full reply) fell between the previous row and this one.
pub fn fill_windows(rows: &mut [TimelineRow], records: &[MessageRecord]) {
    let mut ttft: Vec<(f64, Duration)> =
        records.iter().filter_map(|r| Some((r.first_token?.as_secs_f64(), r.ttft()?))).collect();
    let mut reply: Vec<(f64, Duration)> = records
        .iter()
        .filter_map(|r| Some((r.finished.as_ref()?.0.as_secs_f64(), r.reply_latency()?)))
        .collect();
    ttft.sort_by(|a, b| a.0.total_cmp(&b.0));
    reply.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut i, mut j) = (0, 0);
    for row in rows.iter_mut() {
        let start = i;
        while i < ttft.len() && ttft[i].0 <= row.t {
            i += 1;
        }
        row.ttft = Percentiles::of(ttft[start..i].iter().map(|s| s.1));
        let start = j;
        while j < reply.len() && reply[j].0 <= row.t {
            j += 1;
        }
        row.reply = Percentiles::of(reply[start..j].iter().map(|s| s.1));
    }
}

/// Every group and handler name that appears in `rows`, sorted.
pub fn names(rows: &[TimelineRow]) -> (Vec<String>, Vec<String>) {
    let groups: BTreeSet<&String> =
        rows.iter().filter_map(|r| r.lag.as_ref()).flat_map(|l| l.keys()).collect();
    let handlers: BTreeSet<&String> =
        rows.iter().filter_map(|r| r.scaling.as_ref()).flat_map(|s| s.keys()).collect();
    (groups.into_iter().cloned().collect(), handlers.into_iter().cloned().collect())
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_default()
}

/// `timeline.csv`: one line per row; lag and replica columns per group and handler;
/// empty cells where nothing was sampled.
pub fn csv(rows: &[TimelineRow]) -> String {
    let (groups, handlers) = names(rows);
    let mut out = String::from("t_secs,sent,accepted,rejected,failed,answered,errored,in_flight");
    for g in &groups {
        let _ = write!(out, ",lag_{g}");
    }
    for h in &handlers {
        let _ = write!(out, ",replicas_{h},desired_{h}");
    }
    out.push_str(",ttft_p50_ms,ttft_p99_ms,reply_p50_ms,reply_p99_ms\n");
    for r in rows {
        let c = &r.counts;
        let _ = write!(
            out,
            "{:.3},{},{},{},{},{},{},{}",
            r.t, c.sent, c.accepted, c.rejected, c.failed, c.answered, c.errored, r.in_flight
        );
        for g in &groups {
            let _ = write!(out, ",{}", opt(r.lag.as_ref().and_then(|l| l.get(g))));
        }
        for h in &handlers {
            let s = r.scaling.as_ref().and_then(|s| s.get(h));
            let _ = write!(out, ",{},{}", opt(s.map(|s| s.replicas)), opt(s.and_then(|s| s.desired)));
        }
        let _ = writeln!(
            out,
            ",{},{},{},{}",
            ms(r.ttft.p50_ms),
            ms(r.ttft.p99_ms),
            ms(r.reply.p50_ms),
            ms(r.reply.p99_ms)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::sample::ScaledObjectStatus;

    fn row(t: u64, lag: Option<i64>, replicas: Option<u32>) -> TimelineRow {
        let counts = Snapshot { sent: t * 2, accepted: t * 2, answered: t, ..Snapshot::default() };
        TimelineRow::new(
            Duration::from_secs(t),
            counts,
            lag.map(|l| BTreeMap::from([("responder".to_string(), l)])),
            replicas.map(|r| {
                BTreeMap::from([(
                    "responder".to_string(),
                    ScaledObjectStatus {
                        name: "responder".into(),
                        replicas: r,
                        desired: Some(2),
                        lag: None,
                        active: None,
                    },
                )])
            }),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn latency_windows_hold_what_ended_since_the_previous_row() {
        use crate::{
            schedule::plan,
            tracker::{EventKind, ReplyEvent, Tracker},
        };
        use tokio::time::{advance, Instant};
        use uuid::Uuid;

        let t = Tracker::new(Instant::now(), &plan(1.0, Duration::from_secs(2), 1));
        let ids = [Uuid::new_v4(), Uuid::new_v4()];
        let event = |i: usize, kind| ReplyEvent { message_id: ids[i], attempt: None, kind };
        let mut rows = Vec::new();
        t.sent(0);
        t.accepted(0, ids[0]);
        advance(Duration::from_millis(300)).await;
        t.event(event(0, EventKind::Token { delta: "a".into() }));
        rows.push(TimelineRow::new(t.elapsed(), t.snapshot(), None, None)); // 0.3 s: a first token
        advance(Duration::from_millis(900)).await;
        t.event(event(0, EventKind::Done { text: "a".into() }));
        t.sent(1);
        t.accepted(1, ids[1]);
        advance(Duration::from_millis(100)).await;
        t.event(event(1, EventKind::Token { delta: "b".into() }));
        t.event(event(1, EventKind::Done { text: "b".into() }));
        rows.push(TimelineRow::new(t.elapsed(), t.snapshot(), None, None)); // 1.3 s: the rest
        rows.push(TimelineRow::new(t.elapsed(), t.snapshot(), None, None)); // nothing new
        let (records, _, _) = t.finish();
        fill_windows(&mut rows, &records);
        assert_eq!((rows[0].ttft.count, rows[0].reply.count), (1, 0));
        assert_eq!(rows[0].ttft.max_ms, Some(300.0));
        assert_eq!((rows[1].ttft.count, rows[1].reply.count), (1, 2));
        assert_eq!(rows[1].ttft.max_ms, Some(100.0));
        assert_eq!(rows[1].reply.max_ms, Some(1200.0));
        assert_eq!((rows[2].ttft.count, rows[2].reply.count), (0, 0));
    }

    #[test]
    fn progress_line_shows_counts_lag_and_replicas() {
        let line = row(3, Some(7), Some(1)).progress_line();
        assert!(line.contains("sent      6"), "{line}");
        assert!(line.contains("in flight     3"), "{line}");
        assert!(line.contains("lag responder 7"), "{line}");
        assert!(line.contains("replicas responder 1→2"), "{line}");
        assert!(!row(1, None, None).progress_line().contains("lag"));
    }

    #[test]
    fn csv_has_a_column_per_group_and_handler_and_blanks_for_unknowns() {
        let text = csv(&[row(1, None, None), row(2, Some(4), Some(1))]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "t_secs,sent,accepted,rejected,failed,answered,errored,in_flight,lag_responder,replicas_responder,desired_responder,ttft_p50_ms,ttft_p99_ms,reply_p50_ms,reply_p99_ms"
        );
        assert_eq!(lines[1], "1.000,2,2,0,0,1,0,1,,,,,,,");
        assert_eq!(lines[2], "2.000,4,4,0,0,2,0,2,4,1,2,,,,");
    }
}
