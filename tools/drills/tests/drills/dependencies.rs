//! Drill 4: Qdrant down, and an LLM that fails, answers garbage, hangs or drops the
//! connection — then each comes back.

use std::time::{Duration, Instant};

use drills::{
    stack::{load, wait_for},
    Figures, Stack,
};
use platform::topics;
use testkit::{
    fake_llm::{FakeLlm, Mode},
    LlamaServer,
};

#[tokio::test(flavor = "multi_thread")]
async fn with_qdrant_down_answers_go_on_without_memory_and_memory_catches_up_after() {
    let llm = LlamaServer::chat().expect("llama-server");
    let mut stack = Stack::start(llm.base_url()).await.expect("stack");
    let gateway = stack.add_gateway(&[]).expect("gateway").url();
    stack.add_responder(&[]).expect("responder");
    stack.add_memory(&[]).expect("memory");

    let run = tokio::spawn(async move { load(&gateway, 4, 1.5, 14.0, 90.0).await });
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| stack.qdrant.stop()).expect("qdrant stops");
    let down = Instant::now();
    // The memory worker turns unready once a write has failed: within the outage.
    let noticed = wait_for("memory /ready turns 503", Duration::from_secs(6), async || {
        stack.memory[0].ready() == Some(503)
    })
    .await;
    let memory_ready_while_down = if noticed.is_ok() { Some(503) } else { stack.memory[0].ready() };
    let responder_ready_while_down = stack.responders[0].ready();
    tokio::time::sleep(Duration::from_secs(7).saturating_sub(down.elapsed())).await;
    tokio::task::block_in_place(|| stack.qdrant.start_again()).expect("qdrant starts again");
    let up = Instant::now();
    let report = run.await.expect("load task").expect("load test");

    let (group, topics) = topics::HANDLER_GROUPS
        .into_iter()
        .find(|(g, _)| *g == topics::MEMORY_GROUP)
        .expect("the memory group");
    let caught_up = wait_for("memory catches up", Duration::from_secs(120), async || {
        stack.group_lag(group, topics).is_ok_and(|lag| lag == 0)
    })
    .await;
    let catch_up = up.elapsed().as_secs_f64();
    let responder = &stack.responders[0];
    let recall_failures = |part: &'static str| async move {
        responder
            .metric_with("responder_recall_failures_total", &format!("part=\"{part}\""))
            .await
            .expect("metrics")
    };
    let (without_recent, without_similar) =
        (recall_failures("recent_turns").await, recall_failures("similar").await);
    let stored = stack.records_in(topics::MEMORY_EVENTS).unwrap_or(-1);

    let c = &report.counts;
    let mut figures = Figures::new("qdrant-down");
    figures
        .load("", &report)
        .add("answers_without_recent_turns", without_recent)
        .add("answers_without_similar_memories", without_similar)
        .add("memory_ready_while_down", memory_ready_while_down.unwrap_or(0))
        .add("responder_ready_while_down", responder_ready_while_down.unwrap_or(0))
        .secs("memory_caught_up_after", catch_up)
        .add("memories_stored", stored);
    figures.print();
    assert_eq!(c.unanswered, 0, "every accepted message is answered: {}", report.table());
    assert_eq!(c.answered, c.accepted, "answered without memory, not errored: {}", figures.line());
    assert!(
        without_recent > 0.0 && without_similar > 0.0,
        "the degraded answers are counted: {}",
        figures.line()
    );
    assert_eq!(memory_ready_while_down, Some(503), "the memory worker reports its dependency down");
    assert_eq!(responder_ready_while_down, Some(200), "memory is optional for the responder");
    caught_up.unwrap_or_else(|e| panic!("{e:#}: {}\n{}", figures.line(), stack.memory[0].process.log_tail()));
    // Both turns of every answered message end up stored and announced.
    assert_eq!(stored, 2 * c.answered as i64, "{}", figures.line());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_llm_that_fails_garbles_hangs_or_drops_gets_users_an_error_and_a_dead_letter_then_recovers() {
    let llm = FakeLlm::start().await.expect("fake LLM");
    let mut stack = Stack::start(llm.url()).await.expect("stack");
    let gateway = stack.add_gateway(&[]).expect("gateway").url();
    stack.add_responder(&[("HANDLER_MAX_ATTEMPTS", "3"), ("LLM_TIMEOUT_SECS", "2")]).expect("responder");
    let dlq = topics::dlq(topics::USER_MESSAGES);

    let mut figures = Figures::new("llm-failures");
    let mut errored = 0;
    for mode in [Mode::Fail500, Mode::Garbage, Mode::Hang, Mode::Drop] {
        llm.set(mode);
        let calls = llm.calls();
        let started = Instant::now();
        let report = load(&gateway, 2, 4.0, 1.0, 60.0).await.expect("load test");
        let c = &report.counts;
        let name = format!("{mode:?}").to_lowercase();
        figures
            .add(&format!("{name}.accepted"), c.accepted)
            .add(&format!("{name}.errored"), c.errored)
            .add(&format!("{name}.codes"), format!("{:?}", c.errors_by))
            .add(&format!("{name}.llm_calls"), llm.calls() - calls)
            .secs(&format!("{name}.to_error"), started.elapsed().as_secs_f64());
        assert!(c.accepted >= 2, "{name}: {}", report.table());
        assert_eq!(c.errored, c.accepted, "{name}: every message ends in an error event: {}", report.table());
        assert_eq!(c.unanswered, 0, "{name}: no client is left hanging: {}", report.table());
        assert_eq!(
            llm.calls() - calls,
            3 * c.accepted as usize,
            "{name}: HANDLER_MAX_ATTEMPTS (3) calls each"
        );
        assert_eq!(c.errors_by.get("llm_unavailable").copied(), Some(c.accepted), "{name}: the error code");
        errored += c.errored;
    }
    // Every exhausted message is dead-lettered.
    let lettered = wait_for("dead letters", Duration::from_secs(30), async || {
        stack.records_in(&dlq).is_ok_and(|n| n >= errored as i64)
    })
    .await;

    llm.set(Mode::Answer);
    let report = load(&gateway, 2, 4.0, 1.0, 60.0).await.expect("load test");
    figures
        .add("recovered.answered", report.counts.answered)
        .add("dead_letters", stack.records_in(&dlq).unwrap_or(-1));
    figures.print();
    lettered.unwrap_or_else(|e| panic!("{e:#}: {}", figures.line()));
    assert_eq!(stack.records_in(&dlq).expect("count"), errored as i64, "one dead letter per failed message");
    let c = &report.counts;
    assert!(c.accepted >= 2 && c.answered == c.accepted, "answers resume: {}", report.table());
}
