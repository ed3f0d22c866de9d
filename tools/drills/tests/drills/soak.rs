//! Drill: a soak. The whole local stack (gateway, responder, memory, tansu, the Qdrant
//! engine server) under a steady open-loop load, sampled at a fixed interval: RSS and
//! open file descriptors of every process, the handler groups' lag (as KEDA computes
//! it), time to first token, and answered/lost counts.
//!
//! The LLM is the scripted instant one (testkit's fake: a fixed reply in three chunks),
//! so that what is soaked is the stack, at a rate the machine sustains, not the model.
//!
//! CI runs it for 2 minutes (samples every 10 s); `tools/drills/soak.sh` runs 30
//! (`SOAK_MINUTES`, one sample a minute) and writes the samples (`soak.csv`), their
//! plot (`soak.svg`) and the load test's own report into `SOAK_OUT`.

use std::{
    fmt::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use drills::{stack::JWT_SECRET, Figures, Stack};
use loadtest::{
    plot::{panels_svg, Panel},
    timeline::TimelineRow,
};
use platform::topics;
use testkit::fake_llm::FakeLlm;

/// Messages per second over all conversations.
const RATE: f64 = 4.0;
/// Concurrent conversations (each with its own stream).
const CONVERSATIONS: usize = 16;
/// RSS and file descriptors may grow this much between a third of the run and its end.
const GROWTH: f64 = 0.10;

/// One sampled moment.
struct Sample {
    t: f64,
    /// Per process, in the order of the run's process list.
    rss_mb: Vec<f64>,
    fds: Vec<usize>,
    lag_responder: i64,
    lag_memory: i64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_steady_load_keeps_memory_descriptors_and_latency_flat() {
    let minutes: f64 = env_or("SOAK_MINUTES", 2.0);
    let every = Duration::from_secs(env_or("SOAK_SAMPLE_SECS", if minutes >= 10.0 { 60 } else { 10 }));
    let out: Option<PathBuf> = std::env::var_os("SOAK_OUT").map(PathBuf::from);
    let secs = minutes * 60.0;

    let llm = FakeLlm::start().await.expect("fake LLM");
    let mut stack = Stack::start(llm.url()).await.expect("stack");
    stack.add_gateway(&[]).expect("gateway");
    stack.add_responder(&[]).expect("responder");
    stack.add_memory(&[]).expect("memory");
    let processes: Vec<(&str, u32)> = vec![
        ("gateway", stack.gateways[0].process.pid()),
        ("responder", stack.responders[0].process.pid()),
        ("memory", stack.memory[0].process.pid()),
        ("tansu", stack.broker.pid()),
        ("qdrant", stack.qdrant.pid().expect("qdrant runs")),
    ];

    let mut args = vec![
        "--url".to_string(),
        stack.gateways[0].url(),
        "--conversations".into(),
        CONVERSATIONS.to_string(),
        "--rate".into(),
        RATE.to_string(),
        "--duration".into(),
        secs.to_string(),
        "--drain-secs".into(),
        "60".into(),
        "--jwt-secret".into(),
        JWT_SECRET.into(),
        "--request-timeout".into(),
        "10".into(),
        "--quiet".into(),
    ];
    if let Some(dir) = &out {
        args.extend(["--out".into(), dir.join("loadtest").display().to_string()]);
    }
    let config = loadtest::cli::config_from_args(args).expect("load test settings");
    let started = Instant::now();
    let load = tokio::spawn(loadtest::run(config));
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    // Samples while the load runs (not in its drain, when streams close).
    while !load.is_finished() {
        tick.tick().await;
        if started.elapsed().as_secs_f64() > secs + 1.0 {
            break;
        }
        let lag = |group| stack.group_lag(group, topics::RESPONDER_TOPICS).unwrap_or(-1);
        samples.push(Sample {
            t: started.elapsed().as_secs_f64(),
            rss_mb: processes.iter().map(|(_, pid)| testkit::rss_mb(*pid)).collect(),
            fds: processes.iter().map(|(_, pid)| testkit::open_fds(*pid)).collect(),
            lag_responder: lag(topics::RESPONDER_GROUP),
            lag_memory: stack.group_lag(topics::MEMORY_GROUP, topics::MEMORY_TOPICS).unwrap_or(-1),
        });
    }
    let report = load.await.expect("load task").expect("load test");

    let table = table(&processes, &samples, &report.timeline, every.as_secs_f64());
    println!("{table}");
    if let Some(dir) = &out {
        write_outputs(dir, &processes, &samples, &table).expect("soak outputs");
    }
    // A third of the way in (warmed up) against the end, as "minute 10 against minute
    // 30" for the 30-minute run.
    let third = samples.iter().position(|s| s.t >= secs / 3.0).expect("a sample a third of the way in");
    let last = samples.len() - 1;
    assert!(last > third, "samples after the third: {}", samples.len());
    let windows = ttft_windows(&samples, &report.timeline, every.as_secs_f64());
    let middle = median(&windows[third..=(third + last) / 2]);
    let end = median(&windows[(third + last) / 2 + 1..=last]);

    let c = &report.counts;
    let mut figures = Figures::new("soak");
    figures.secs("duration", secs).load("", &report).add("samples", samples.len());
    for (i, (name, _)) in processes.iter().enumerate() {
        figures.add(
            &format!("{name}_rss"),
            format!("{:.1}->{:.1}MB", samples[third].rss_mb[i], samples[last].rss_mb[i]),
        );
        figures.add(&format!("{name}_fds"), format!("{}->{}", samples[third].fds[i], samples[last].fds[i]));
    }
    figures.add("ttft_p50_middle", format!("{middle:.0}ms")).add("ttft_p50_end", format!("{end:.0}ms"));
    figures.print();

    assert!(c.accepted as f64 >= RATE * secs * 0.9, "the load was sustained: {}", report.table());
    assert_eq!(c.rejected + c.failed, 0, "nothing refused: {}", report.table());
    assert_eq!(c.unanswered, 0, "nothing lost: {}", report.table());
    assert_eq!(c.answered, c.accepted, "answered, not errored: {}", report.table());
    assert_eq!(report.streams.duplicate_ends, 0, "each message ends once");
    assert_eq!(c.text_mismatches, 0, "no reply shown wrong");
    // Qdrant's memory grows with what it stores (two turns a message): data, not a
    // leak. The others hold nothing that should grow with time.
    for (i, (name, _)) in processes.iter().enumerate().filter(|(_, (n, _))| *n != "qdrant") {
        let (before, after) = (samples[third].rss_mb[i], samples[last].rss_mb[i]);
        // 1 MB on top: page-level noise of a process of a few MB.
        assert!(
            after <= before * (1.0 + GROWTH) + 1.0,
            "{name} RSS grew {before:.1} -> {after:.1} MB\n{table}"
        );
        let (before, after) = (samples[third].fds[i] as f64, samples[last].fds[i] as f64);
        assert!(
            after <= before * (1.0 + GROWTH) + 2.0,
            "{name} open files grew {before} -> {after}\n{table}"
        );
    }
    assert!(end <= middle * 1.5 + 50.0, "time to first token stable: {middle:.0} -> {end:.0} ms\n{table}");
}

/// Per sample, the median of the per-second TTFT p50s in the window before it.
fn ttft_windows(samples: &[Sample], timeline: &[TimelineRow], window: f64) -> Vec<f64> {
    samples
        .iter()
        .map(|s| {
            let p50s: Vec<f64> = timeline
                .iter()
                .filter(|r| r.t > s.t - window && r.t <= s.t)
                .filter_map(|r| r.ttft.p50_ms)
                .collect();
            median(&p50s)
        })
        .collect()
}

fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The samples as a Markdown table, with the load test's counters and TTFT per window.
fn table(processes: &[(&str, u32)], samples: &[Sample], timeline: &[TimelineRow], window: f64) -> String {
    let mut out = String::from("| t (s) |");
    for (name, _) in processes {
        let _ = write!(out, " {name} RSS MB / fds |");
    }
    out.push_str(" lag responder / memory | TTFT p50 / max p99 (ms) | accepted | answered |\n|---|");
    out.push_str(&"---|".repeat(processes.len() + 4));
    out.push('\n');
    for s in samples {
        let rows: Vec<&TimelineRow> = timeline.iter().filter(|r| r.t > s.t - window && r.t <= s.t).collect();
        let p50 = median(&rows.iter().filter_map(|r| r.ttft.p50_ms).collect::<Vec<_>>());
        let p99 = rows.iter().filter_map(|r| r.ttft.p99_ms).fold(0.0, f64::max);
        let at = timeline.iter().rfind(|r| r.t <= s.t);
        let _ = write!(out, "| {:.0} |", s.t);
        for (rss, fds) in s.rss_mb.iter().zip(&s.fds) {
            let _ = write!(out, " {rss:.1} / {fds} |");
        }
        let _ = writeln!(
            out,
            " {} / {} | {p50:.0} / {p99:.0} | {} | {} |",
            s.lag_responder,
            s.lag_memory,
            at.map_or(0, |r| r.counts.accepted),
            at.map_or(0, |r| r.counts.answered),
        );
    }
    out
}

fn write_outputs(
    dir: &std::path::Path,
    processes: &[(&str, u32)],
    samples: &[Sample],
    table: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("soak.md"), table)?;
    let mut csv = String::from("t");
    for (name, _) in processes {
        let _ = write!(csv, ",{name}_rss_mb,{name}_fds");
    }
    csv.push_str(",lag_responder,lag_memory\n");
    for s in samples {
        let _ = write!(csv, "{:.1}", s.t);
        for (rss, fds) in s.rss_mb.iter().zip(&s.fds) {
            let _ = write!(csv, ",{rss:.1},{fds}");
        }
        let _ = writeln!(csv, ",{},{}", s.lag_responder, s.lag_memory);
    }
    std::fs::write(dir.join("soak.csv"), csv)?;
    let lines = |f: &dyn Fn(&Sample, usize) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        processes
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.to_string(), samples.iter().map(|s| (s.t, f(s, i))).collect()))
            .collect()
    };
    let rss = Panel {
        caption: "Resident memory per process".into(),
        y_desc: "MB".into(),
        lines: lines(&|s, i| s.rss_mb[i]),
    };
    let fds = Panel {
        caption: "Open file descriptors per process".into(),
        y_desc: "fds".into(),
        lines: lines(&|s, i| s.fds[i] as f64),
    };
    std::fs::write(dir.join("soak.svg"), panels_svg(&rss, &fds)?)?;
    Ok(())
}
