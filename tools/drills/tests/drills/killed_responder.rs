//! Drill 1: a responder SIGKILLed again and again while conversations stream.

use std::time::{Duration, Instant};

use drills::{
    stack::{load, wait_for},
    Figures, Stack,
};
use testkit::{LlamaServer, Signal};

/// Kills of the responder during the run.
const KILLS: usize = 3;

#[tokio::test(flavor = "multi_thread")]
async fn a_responder_killed_mid_answer_again_and_again_loses_and_mixes_nothing() {
    let llm = LlamaServer::chat().expect("llama-server");
    let mut stack = Stack::start(llm.base_url()).await.expect("stack");
    let gateway = stack.add_gateway(&[]).expect("gateway").url();
    stack.add_responder(&[]).expect("responder");

    // Long enough that every kill (3 s apart, ~7 s for each replacement to hold the
    // partitions) still finds a backlog.
    let run = tokio::spawn(load_run(gateway));
    let started = Instant::now();
    let mut replaced = Vec::new();
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_secs(3)).await;
        // Kill it mid-answer: a reply has its first token out but is not finished. (A
        // record merely in flight may still be queued for the LLM, and its retry would
        // look like a first attempt to the client.)
        let busy = wait_for("the responder is mid-answer", Duration::from_secs(10), async || {
            let responder = stack.responders.last().expect("a responder");
            let count = async |name: &str| responder.metric(&format!("{name}_count")).await.unwrap_or(0.0);
            count("responder_llm_first_token_seconds").await > count("responder_llm_reply_seconds").await
        })
        .await;
        busy.expect("an answer streaming");
        let victim = stack.responders.last_mut().expect("a responder");
        victim.process.signal(Signal::SIGKILL);
        let _ = victim.process.wait_exit(Duration::from_secs(5));
        let at = Instant::now();
        // Like a Deployment's replacement pod: a new process, the same group.
        stack.add_responder(&[]).expect("replacement responder");
        replaced.push(at.elapsed().as_secs_f64());
    }
    let report = run.await.expect("load task").expect("load test");

    let c = &report.counts;
    let mut figures = Figures::new("killed-responder");
    figures
        .add("kills", KILLS)
        .load("", &report)
        .secs("replacement_ready_max", replaced.iter().copied().fold(0.0, f64::max))
        .secs("elapsed", started.elapsed().as_secs_f64());
    figures.print();
    assert!(c.accepted >= 20, "the gateway took the load: {}", figures.line());
    assert_eq!(c.unanswered, 0, "every accepted message is answered: {}", report.table());
    assert_eq!(c.answered, c.accepted, "answered, not errored: {}", figures.line());
    assert_eq!(report.streams.duplicate_ends, 0, "each message ends once for its client");
    assert_eq!(c.text_mismatches, 0, "no reply mixes the killed attempt's tokens with the new one's");
    assert!(c.retried >= 1, "at least one kill hit an answer in flight: {}", figures.line());
}

async fn load_run(gateway: String) -> anyhow::Result<loadtest::Report> {
    load(&gateway, 6, 2.0, 20.0, 90.0).await
}
