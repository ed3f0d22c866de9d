//! Scale-up under load (issue 18, part 2): does adding responders add throughput, or
//! stall the group while it rebalances?
//!
//! A backlog of user messages waits on `user_messages` (6 partitions, as many on each);
//! the LLM is a scripted endpoint in this process that streams `BENCH_TOKENS` tokens,
//! one every `BENCH_TOKEN_MS`, so the responders, not the LLM, set the pace. One
//! responder starts, then the group is stepped 1 → 2 → 4 (two at once), each step
//! `BENCH_PHASE_SECS` after the last. Afterwards `model_responses` is read back and,
//! from each `done` event's `ts`:
//! - the longest stretch with no answer finished, after each scale step and in the
//!   steady first phase (for reference);
//! - messages answered more than once (re-run: more than one `attempt`);
//! - answered/s at 1, 2 and 4 replicas, from the step's last new member being ready
//!   (`/ready`: it holds partitions) to the next step;
//! - the join time of each step: from the new member's subscribe to its first
//!   partitions (its log), and from its spawn to `/ready`.
//!
//! Real processes: tansu (a fresh broker per run: tansu keeps a group's protocol for
//! good), the Qdrant engine server, the release `responder` binaries. Run:
//! `ci/bench.sh rebalance`. Knobs: BENCH_ASSIGNMENT (eager, cooperative; default both),
//! BENCH_REVOKE_GRACE_SECS (a list, default "0 10": how long a revoked partition's
//! running records may finish, `HANDLER_REVOKE_GRACE_SECS`), BENCH_HANDOVER_WAIT_SECS
//! (a list, default "30": how long a new owner waits at most for the previous owner's release,
//! `HANDLER_HANDOVER_WAIT_SECS`, 0 for no leases), BENCH_CONCURRENCY (4),
//! BENCH_TOKENS (10), BENCH_TOKEN_MS (100), BENCH_PHASE_SECS (15), TANSU_ENGINE.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use common::{handler_env, llm_env, HandlerProcess};
use platform::events::{decode, ModelResponse, ReplyBody, UserMessage};
use platform::topics;
use rdkafka::Message;
use serde_json::json;
use testkit::{kafka::Kafka, QdrantServer};

const RESPONDER: &str = env!("CARGO_BIN_EXE_responder");
const PARTITIONS: i32 = 6;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The pace of the scripted LLM and of the scale steps.
#[derive(Clone, Copy)]
struct Pace {
    tokens: usize,
    token_ms: u64,
    concurrency: usize,
    phase: Duration,
}

/// A scripted OpenAI-compatible endpoint streaming `tokens` tokens, one every
/// `token_ms`, on its own runtime (the benchmark's waits cannot slow it down).
fn paced_llm(pace: Pace) -> String {
    use axum::{body::Body, http::header, routing::post, Router};
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("LLM runtime");
        runtime.block_on(async move {
            let app = Router::new().route(
                "/v1/chat/completions",
                post(move || async move {
                    ([(header::CONTENT_TYPE, "text/event-stream")], Body::from_stream(reply(pace)))
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("hand over the address");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    format!("http://{}/v1", rx.recv().expect("LLM address"))
}

/// One streamed reply: a token every `token_ms`, the usage, `[DONE]`.
fn reply(pace: Pace) -> impl futures::Stream<Item = Result<String, std::convert::Infallible>> {
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        json!({"id": "paced", "object": "chat.completion.chunk", "created": 0, "model": "paced",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    futures::stream::unfold(0, move |i| async move {
        let event = if i < pace.tokens {
            tokio::time::sleep(Duration::from_millis(pace.token_ms)).await;
            let delta = if i == 0 {
                json!({"role": "assistant", "content": "w0"})
            } else {
                json!({"content": format!(" w{i}")})
            };
            format!("data: {}\n\n", chunk(delta, None))
        } else if i == pace.tokens {
            let mut usage = chunk(json!({}), Some("stop"));
            let n = pace.tokens;
            usage["usage"] = json!({"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1});
            format!("data: {usage}\n\n")
        } else if i == pace.tokens + 1 {
            "data: [DONE]\n\n".to_string()
        } else {
            return None;
        };
        Some((Ok(event), i + 1))
    })
}

/// One responder added by a scale step.
struct Member {
    process: HandlerProcess,
    spawned: DateTime<Utc>,
    ready: DateTime<Utc>,
}

impl Member {
    fn start(name: String, env: HashMap<String, String>) -> Self {
        let spawned = Utc::now();
        let process = HandlerProcess::start(&name, RESPONDER, &env);
        Self { process, spawned, ready: Utc::now() }
    }

    /// How long each partition it was handed waited for its previous owner's release
    /// (ms), and how many it took without one (the owner stopped renewing its lease,
    /// or the wait ran out).
    fn handover_waits(&self) -> (Vec<f64>, usize) {
        let log = self.process.process.log();
        let released: Vec<serde_json::Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| {
                l.get("message").and_then(serde_json::Value::as_str) == Some("partition released: reading it")
            })
            .collect();
        let waits = released.iter().filter_map(|l| l.get("waited_ms")?.as_f64()).collect();
        let without =
            released.iter().filter(|l| l.get("why").and_then(serde_json::Value::as_str) != Some("released"));
        (waits, without.count())
    }

    /// From its subscribe to its first partitions, per its own log, in ms.
    fn join_ms(&self) -> Option<f64> {
        let log = self.process.process.log();
        let at = |message: &str| {
            log.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find_map(|l| {
                let held = l.get("held").and_then(serde_json::Value::as_u64).unwrap_or(1);
                (l.get("message")?.as_str()? == message && held > 0)
                    .then(|| l.get("timestamp")?.as_str()?.parse::<DateTime<Utc>>().ok())
                    .flatten()
            })
        };
        Some((at("partitions assigned")? - at("consuming")?).num_milliseconds() as f64)
    }
}

/// Starts `n` responders at once; returns when all are ready.
async fn scale_by(n: usize, first: usize, env: &HashMap<String, String>) -> Vec<Member> {
    let starting: Vec<_> = (first..first + n)
        .map(|i| {
            let env = env.clone();
            tokio::task::spawn_blocking(move || Member::start(format!("responder-{i}"), env))
        })
        .collect();
    let mut members = Vec::new();
    for s in starting {
        members.push(s.await.expect("responder start"));
    }
    members
}

/// One event of a reply: which message, which attempt, when, and whether it is the
/// `done` (the answer delivered).
struct Event {
    message_id: uuid::Uuid,
    attempt: uuid::Uuid,
    at: DateTime<Utc>,
    done: bool,
}

/// What one run measured.
struct Run {
    label: String,
    steps: Vec<Step>,
    steady_gap_ms: f64,
    rerun: usize,
    answered_twice: usize,
    answered: usize,
    backlog: usize,
    /// Hand-over waits for a previous owner's release (ms), and waits that ran out.
    handover_waits: Vec<f64>,
    waited_out: usize,
}

/// One scale step (1, 1 → 2, 2 → 4) and the phase after it.
struct Step {
    replicas: usize,
    join_ms: f64,
    ready_ms: f64,
    longest_gap_ms: f64,
    rate: f64,
}

fn ms(d: chrono::TimeDelta) -> f64 {
    d.num_milliseconds() as f64
}

/// The longest stretch without an answer within `[from, to)` (edges included).
fn longest_gap(done: &[DateTime<Utc>], from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    let mut last = from;
    let mut longest = 0.0f64;
    for &t in done.iter().filter(|t| **t >= from && **t < to) {
        longest = longest.max(ms(t - last));
        last = t;
    }
    longest.max(ms(to - last))
}

async fn run(
    label: &str,
    kafka: &Kafka,
    qdrant: &QdrantServer,
    llm: &str,
    pace: Pace,
    extra: &[(&str, String)],
) -> Run {
    // Enough that every partition still has a backlog at the end of the last phase
    // (four replicas: two members hold one partition each and drain it alone).
    let per_second = pace.concurrency as f64 * 1e3 / (pace.tokens as f64 * pace.token_ms as f64);
    let per_partition = (per_second * pace.phase.as_secs_f64() * 1.5) as usize + 40;
    let mut backlog = Vec::new();
    for partition in 0..PARTITIONS {
        for i in 0..per_partition {
            let msg =
                UserMessage::new(uuid::Uuid::new_v4(), format!("user-{}", i % 50), format!("Message {i}"));
            backlog.push((msg, partition));
        }
    }
    let sends = backlog.iter().map(|(m, p)| kafka.send_to(m, *p));
    futures::future::join_all(sends).await;

    let mut env = handler_env(kafka, &qdrant.url());
    env.extend(llm_env(llm, pace.tokens as u32));
    env.insert("MEMORY_TOP_K".into(), "0".into());
    env.insert("RECENT_TURNS".into(), "0".into());
    env.insert("HANDLER_CONCURRENCY".into(), pace.concurrency.to_string());
    env.insert("RUST_LOG".into(), "warn,handlers::runtime=info".into());
    for (k, v) in extra {
        env.insert((*k).into(), v.clone());
    }
    let mut members = Vec::new();
    let mut marks = Vec::new();
    for (replicas, add) in [(1, 1), (2, 1), (4, 2)] {
        let first = members.len();
        members.extend(scale_by(add, first, &env).await);
        let added = &members[first..];
        let spawned = added.iter().map(|m| m.spawned).min().expect("a member");
        let ready = added.iter().map(|m| m.ready).max().expect("a member");
        let join_ms = added.iter().filter_map(Member::join_ms).fold(0.0, f64::max);
        marks.push((replicas, spawned, ready, join_ms));
        let phase_end = spawned + pace.phase;
        tokio::time::sleep((phase_end - Utc::now()).to_std().unwrap_or_default()).await;
    }
    let end = Utc::now();
    // Stop them all at once (SIGTERM: each drains, commits and leaves) before reading
    // back what they wrote.
    let (mut handover_waits, mut waited_out) = (Vec::new(), 0);
    for m in &members {
        let (waits, out) = m.handover_waits();
        handover_waits.extend(waits);
        waited_out += out;
    }
    let started_stopping = Instant::now();
    let stops: Vec<_> = members.into_iter().map(|m| tokio::task::spawn_blocking(move || drop(m))).collect();
    for stop in stops {
        stop.await.expect("responder stop");
    }
    let stopping = started_stopping.elapsed();

    let events = read_events(kafka).await;
    let mut done: Vec<DateTime<Utc>> = events.iter().filter(|e| e.done).map(|e| e.at).collect();
    done.sort();
    // Attempts started during the run (stopping the group is not a scale step).
    let mut attempts: HashMap<uuid::Uuid, HashSet<uuid::Uuid>> = HashMap::new();
    let mut finals: HashMap<uuid::Uuid, usize> = HashMap::new();
    for e in &events {
        if e.done {
            *finals.entry(e.message_id).or_default() += 1;
        }
        if e.at < end {
            attempts.entry(e.message_id).or_default().insert(e.attempt);
        }
    }
    let mut steps = Vec::new();
    for (i, &(replicas, spawned, ready, join_ms)) in marks.iter().enumerate() {
        let next = marks.get(i + 1).map_or(end, |m| m.1);
        let answered = done.iter().filter(|t| **t >= ready && **t < next).count();
        let window = ms(next - ready).max(1.0) / 1e3;
        steps.push(Step {
            replicas,
            join_ms,
            ready_ms: ms(ready - spawned),
            // The first member has nothing to stall: its gap is the cold start.
            longest_gap_ms: if i == 0 { f64::NAN } else { longest_gap(&done, spawned, next) },
            rate: answered as f64 / window,
        });
    }
    // The steady single-replica phase, for reference: from the first answer to the
    // first scale step.
    let steady_gap_ms = match (done.first(), marks.get(1)) {
        (Some(&first), Some(m)) => longest_gap(&done, first, m.1),
        _ => f64::NAN,
    };
    if stopping > Duration::from_secs(15) {
        println!("note: stopping the responders took {stopping:?}");
    }
    Run {
        label: label.into(),
        steps,
        steady_gap_ms,
        rerun: attempts.values().filter(|a| a.len() > 1).count(),
        answered_twice: finals.values().filter(|n| **n > 1).count(),
        answered: finals.len(),
        backlog: backlog.len(),
        handover_waits,
        waited_out,
    }
}

/// Every event on `model_responses` (`token` events too: an attempt interrupted by a
/// rebalance leaves tokens and no `done`).
async fn read_events(kafka: &Kafka) -> Vec<Event> {
    let mut watcher = kafka.watch(topics::MODEL_RESPONSES);
    let mut seen = 0;
    loop {
        let now = watcher.drain(Duration::from_secs(3)).await.len();
        if now == seen && now > 0 {
            break;
        }
        seen = now;
    }
    watcher
        .seen
        .iter()
        .filter_map(|m| decode::<ModelResponse>(m.payload()?).ok())
        .map(|r| Event {
            message_id: r.message_id,
            attempt: r.attempt,
            at: r.ts,
            done: matches!(r.body, ReplyBody::Done { .. }),
        })
        .collect()
}

fn print(run: &Run) {
    println!("{}", run.label);
    println!(
        "  {:<10} {:>14} {:>14} {:>22} {:>12}",
        "replicas", "join ms (log)", "spawn→ready ms", "longest stall ms", "answered/s"
    );
    for s in &run.steps {
        let gap =
            if s.longest_gap_ms.is_nan() { "-".to_string() } else { format!("{:.0}", s.longest_gap_ms) };
        println!(
            "  {:<10} {:>14.0} {:>14.0} {:>22} {:>12.1}",
            s.replicas, s.join_ms, s.ready_ms, gap, s.rate
        );
    }
    println!(
        "  steady 1-replica longest gap {:.0} ms; answered {} of {} backlog; re-run (more than one attempt) {}; answered twice {}",
        run.steady_gap_ms, run.answered, run.backlog, run.rerun, run.answered_twice
    );
    let longest = run.handover_waits.iter().copied().fold(0.0, f64::max);
    println!(
        "  partitions withheld for their previous owner {} (longest wait {longest:.0} ms), taken without a release {}",
        run.handover_waits.len(),
        run.waited_out
    );
}

#[tokio::main]
async fn main() {
    let pace = Pace {
        tokens: env_or("BENCH_TOKENS", 10),
        token_ms: env_or("BENCH_TOKEN_MS", 100),
        concurrency: env_or("BENCH_CONCURRENCY", 4),
        phase: Duration::from_secs(env_or("BENCH_PHASE_SECS", 15)),
    };
    let assignments: Vec<String> = std::env::var("BENCH_ASSIGNMENT")
        .unwrap_or_else(|_| "eager cooperative".into())
        .split([' ', ','])
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let graces: Vec<u64> = std::env::var("BENCH_REVOKE_GRACE_SECS")
        .unwrap_or_else(|_| "0 10".into())
        .split([' ', ','])
        .filter_map(|s| s.parse().ok())
        .collect();
    let handover_waits: Vec<u64> = std::env::var("BENCH_HANDOVER_WAIT_SECS")
        .unwrap_or_else(|_| "30".into())
        .split([' ', ','])
        .filter_map(|s| s.parse().ok())
        .collect();
    println!(
        "rebalance benchmark: tansu {} engine, {PARTITIONS} partitions, scripted LLM {} tokens × {} ms, \
         HANDLER_CONCURRENCY {}, replicas 1 → 2 → 4 every {} s",
        testkit::Broker::engine(),
        pace.tokens,
        pace.token_ms,
        pace.concurrency,
        pace.phase.as_secs()
    );
    let qdrant = QdrantServer::start().expect("qdrant");
    let llm = paced_llm(pace);
    for assignment in &assignments {
        for grace in &graces {
            for wait in &handover_waits {
                // A fresh broker per run: tansu keeps the protocol a group was formed with.
                let kafka = Kafka::start(PARTITIONS).await;
                let label =
                    format!("assignment {assignment}, revoke grace {grace} s, hand-over wait {wait} s");
                let extra = [
                    ("HANDLER_PARTITION_ASSIGNMENT", assignment.clone()),
                    ("HANDLER_REVOKE_GRACE_SECS", grace.to_string()),
                    ("HANDLER_HANDOVER_WAIT_SECS", wait.to_string()),
                ];
                let result = run(&label, &kafka, &qdrant, &llm, pace, &extra).await;
                print(&result);
            }
        }
    }
}
