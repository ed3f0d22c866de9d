//! One load-test run from start to report: send on schedule, follow the streams,
//! sample once a second, drain, optionally watch the scale-down, then write the files.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context};
use platform::sync::lock;
use reqwest::Url;
use tokio::{sync::watch, task::JoinSet, time::Instant};

use crate::{
    auth,
    cli::Config,
    conversation::{Conversation, Shared},
    plot,
    report::{Report, RunFacts, Target},
    sample::{self, GroupLag, Latest, Scaling},
    schedule,
    timeline::{self, TimelineRow},
    tracker::Tracker,
};

/// Runs larger than this many messages are refused (the records live in memory).
pub const MAX_MESSAGES: usize = 10_000_000;

/// How long the samplers get to take their first sample before the run starts.
const FIRST_SAMPLE_WAIT: Duration = Duration::from_secs(3);

/// Runs the load test described by `config` and returns its report; writes the report
/// files when `config.out` is set. Fails only when the run cannot start (bad output
/// directory, gateway unreachable) or its files cannot be written: what goes wrong
/// with individual messages is counted in the report.
pub async fn run(config: Config) -> anyhow::Result<Report> {
    let plan = schedule::plan(config.rate, config.duration, config.conversations);
    if plan.len() > MAX_MESSAGES {
        bail!("{} messages planned: at most {MAX_MESSAGES} per run (lower --rate or --duration)", plan.len());
    }
    let tokens =
        auth::tokens(&config.auth, config.conversations, config.duration + config.drain + config.tail)?;
    if let Some(dir) = &config.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the output directory {}", dir.display()))?;
    }
    let post_client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(config.request_timeout)
        .build()
        .context("building the HTTP client")?;
    let sse_client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(config.stream_idle_timeout)
        .build()
        .context("building the SSE client")?;
    check_gateway(&post_client, &config.url).await?;

    let (stop_tx, stop) = watch::channel(false);
    let (halt_tx, halt) = watch::channel(false);
    let mut background = JoinSet::new();
    let lag = Arc::new(Latest::<GroupLag>::new());
    let scaling = Arc::new(Latest::<Scaling>::new());
    if let Some(bootstrap) = &config.kafka {
        background.spawn(sample::lag_sampler(bootstrap.clone(), lag.clone(), stop.clone()));
    }
    if let Some(url) = &config.autoscaler_url {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(2))
            .build()
            .context("building the autoscaler client")?;
        background.spawn(sample::autoscaler_sampler(client, url.clone(), scaling.clone(), stop.clone()));
    }
    let waited = Instant::now();
    while waited.elapsed() < FIRST_SAMPLE_WAIT
        && (config.kafka.is_some() && !lag.sampled() || config.autoscaler_url.is_some() && !scaling.sampled())
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if config.handle_ctrl_c {
        background.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: no more sends; writing the report");
                halt_tx.send(true).ok();
            }
        });
    } else {
        // Keep the channel open for the whole run.
        background.spawn(async move {
            halt_tx.closed().await;
        });
    }

    if config.progress {
        println!(
            "loadtest: {} messages to {} at {:.2} msg/s for {:.1} s over {} conversations",
            plan.len(),
            config.url,
            config.rate,
            config.duration.as_secs_f64(),
            config.conversations.min(plan.len())
        );
    }
    let start = Instant::now();
    let tracker = Arc::new(Tracker::new(start, &plan));
    let rows = Arc::new(Mutex::new(Vec::new()));
    let ticker = tokio::spawn(tick(
        tracker.clone(),
        lag.clone(),
        scaling.clone(),
        rows.clone(),
        stop.clone(),
        config.progress,
    ));
    let conversations: Vec<Arc<Conversation>> =
        tokens.into_iter().enumerate().map(|(i, token)| Arc::new(Conversation::new(i, token))).collect();
    let shared = Arc::new(Shared {
        post_client,
        sse_client,
        base: config.url.clone(),
        text: config.text.clone(),
        tracker: tracker.clone(),
        stop: stop.clone(),
    });

    // Send on schedule, never waiting for replies.
    let mut sends = JoinSet::new();
    schedule::drive(&plan, start, halt.clone(), |planned| {
        let conversation = conversations[planned.conversation].clone();
        let shared = shared.clone();
        sends.spawn(async move { conversation.send(&shared, planned).await });
        while sends.try_join_next().is_some() {}
    })
    .await;
    let sending_ended = Instant::now();

    // Drain: until every POST is answered and every accepted message has its ending.
    let deadline = sending_ended + config.drain;
    let mut halt_drain = halt.clone();
    let drained = loop {
        while sends.try_join_next().is_some() {}
        let counts = tracker.snapshot();
        // A dispatched send may not have reached its POST yet: wait for the task too.
        if sends.is_empty() && counts.posting == 0 && counts.in_flight() == 0 {
            break true;
        }
        if Instant::now() >= deadline || *halt_drain.borrow() {
            break false;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = halt_drain.wait_for(|h| *h) => {}
        }
    };
    let drain = sending_ended.elapsed();
    sends.abort_all();

    // Tail: watch the scale-down.
    let tail_end = Instant::now() + config.tail;
    let mut halt_tail = halt.clone();
    while Instant::now() < tail_end && !*halt_tail.borrow() {
        if scaling.fresh().is_some_and(|s| !s.is_empty() && s.values().all(|s| s.replicas == 0)) {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1).min(tail_end.saturating_duration_since(Instant::now()))) => {}
            _ = halt_tail.wait_for(|h| *h) => {}
        }
    }

    stop_tx.send(true).ok();
    ticker.await.context("the progress ticker failed")?;
    for conversation in &conversations {
        conversation.close(Duration::from_secs(2)).await;
    }
    background.abort_all();

    let (records, streams, unmatched) = tracker.finish();
    let mut rows = std::mem::take(&mut *lock(&rows));
    timeline::fill_windows(&mut rows, &records);
    let sampling_errors = [("kafka lag", lag.first_error()), ("autoscaler", scaling.first_error())]
        .into_iter()
        .filter_map(|(what, e)| Some(format!("{what}: {}", e?)))
        .collect();
    let facts = RunFacts {
        target: Target {
            url: config.url.to_string(),
            conversations: config.conversations,
            rate: config.rate,
            duration_secs: config.duration.as_secs_f64(),
            drain_secs: config.drain.as_secs_f64(),
            tail_secs: config.tail.as_secs_f64(),
        },
        elapsed: start.elapsed(),
        drain,
        drained,
        sampling_errors,
        interrupted: *halt.borrow(),
    };
    let report = Report::build(facts, &records, streams, unmatched, rows);
    if let Some(dir) = &config.out {
        let written = write_outputs(&report, dir)?;
        if config.progress {
            for path in written {
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(report)
}

/// Fails with a clear message unless the gateway answers `GET /health` with 200.
async fn check_gateway(client: &reqwest::Client, base: &Url) -> anyhow::Result<()> {
    let mut url = base.clone();
    url.set_path("/health");
    let response = client
        .get(url.clone())
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .with_context(|| format!("the gateway is not reachable at {base} (GET {url})"))?;
    if !response.status().is_success() {
        bail!("the gateway at {base} is not healthy: GET {url} answered {}", response.status());
    }
    Ok(())
}

/// Takes a timeline row every second (and one at the end), printing each as a progress line.
async fn tick(
    tracker: Arc<Tracker>,
    lag: Arc<Latest<GroupLag>>,
    scaling: Arc<Latest<Scaling>>,
    rows: Arc<Mutex<Vec<TimelineRow>>>,
    mut stop: watch::Receiver<bool>,
    progress: bool,
) {
    let mut ticks = tokio::time::interval_at(tracker.start(), sample::INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut reported = [false; 2];
    loop {
        let last = tokio::select! {
            _ = ticks.tick() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        let row = TimelineRow::new(tracker.elapsed(), tracker.snapshot(), lag.fresh(), scaling.fresh());
        if progress {
            println!("{}", row.progress_line());
            for (i, (what, error)) in
                [("kafka lag", lag.error()), ("autoscaler", scaling.error())].into_iter().enumerate()
            {
                if let (Some(e), false) = (error, reported[i]) {
                    eprintln!("sampling {what} failed (shown as unknown until it works): {e}");
                    reported[i] = true;
                }
            }
        }
        lock(&rows).push(row);
        if last {
            return;
        }
    }
}

/// Writes `report.json`, `timeline.csv`, `scaling.svg` and `latency.svg` into `dir`.
pub fn write_outputs(report: &Report, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_vec_pretty(report).context("serialising the report")?;
    let files: [(&str, Vec<u8>); 4] = [
        ("report.json", json),
        ("timeline.csv", timeline::csv(&report.timeline).into_bytes()),
        ("scaling.svg", plot::scaling_svg(&report.timeline).context("plotting scaling.svg")?.into_bytes()),
        ("latency.svg", plot::latency_svg(&report.timeline).context("plotting latency.svg")?.into_bytes()),
    ];
    files
        .into_iter()
        .map(|(name, bytes)| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        })
        .collect()
}
