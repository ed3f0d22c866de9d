//! Drill: the LLM is not there when the first messages arrive (vLLM scaled from zero, a
//! model still loading) and starts a minute later (`DRILL_LLM_DELAY_SECS`, default 60).
//! Every message is answered once it is up, in one attempt; none fails, none is
//! dead-lettered, and the users' streams stay open through the wait.

use std::time::{Duration, Instant};

use drills::{
    stack::{load, wait_for},
    Figures, Stack,
};
use platform::topics;
use testkit::{free_port, LlamaServer};

#[tokio::test(flavor = "multi_thread")]
async fn messages_sent_before_the_llm_is_up_are_answered_once_it_is_and_none_is_dead_lettered() {
    let delay: u64 = std::env::var("DRILL_LLM_DELAY_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let llm_port = free_port().expect("port");
    let mut stack = Stack::start(format!("http://127.0.0.1:{llm_port}/v1")).await.expect("stack");
    let gateway = stack.add_gateway(&[]).expect("gateway").url();
    stack.add_responder(&[("LLM_COLD_START_SECS", "300"), ("HANDLER_MAX_ATTEMPTS", "3")]).expect("responder");
    let dlq = topics::dlq(topics::USER_MESSAGES);

    // 5 messages over the first 10 s, then up to the delay and 90 s more for answers.
    let run = tokio::spawn(async move { load(&gateway, 4, 0.5, 10.0, delay as f64 + 90.0).await });
    tokio::time::sleep(Duration::from_secs(delay)).await;
    let waiting_ready = stack.responders[0].ready();
    let llm = tokio::task::block_in_place(|| LlamaServer::chat_on(llm_port)).expect("llama-server");
    let up = Instant::now();
    let report = run.await.expect("load task").expect("load test");
    let answered_after_up = up.elapsed().as_secs_f64();
    let caught_up = wait_for("responder lag 0", Duration::from_secs(30), async || {
        stack.group_lag(topics::RESPONDER_GROUP, &[topics::USER_MESSAGES]).is_ok_and(|lag| lag == 0)
    })
    .await;
    let responder = &stack.responders[0];
    let metric = "responder_llm_unreachable_total";
    let waited = responder.metric_with(metric, r#"outcome="waited""#).await.expect("metrics");
    let failed = responder.metric_with(metric, r#"outcome="failed""#).await.expect("metrics");
    let dead_letters = stack.records_in(&dlq).unwrap_or(-1);

    let c = &report.counts;
    let mut figures = Figures::new("llm-cold-start");
    figures
        .add("llm_started_after_s", delay)
        .secs("llm_load", llm.startup.as_secs_f64())
        .load("", &report)
        .secs("last_answer_after_llm_up", answered_after_up)
        .add("responder_ready_while_waiting", waiting_ready.unwrap_or(0))
        .add("unreachable_waited", waited)
        .add("unreachable_failed", failed)
        .add("dead_letters", dead_letters);
    figures.print();
    assert!(c.accepted >= 4, "{}", report.table());
    assert_eq!(c.answered, c.accepted, "every message answered once the LLM is up: {}", report.table());
    assert_eq!(
        (c.errored, c.unanswered, c.retried),
        (0, 0, 0),
        "no error, no loss, one attempt each: {}",
        report.table()
    );
    assert_eq!(dead_letters, 0, "nothing dead-lettered: {}", figures.line());
    assert!(waited >= 1.0 && failed == 0.0, "the wait is counted as such: {}", figures.line());
    assert_eq!(waiting_ready, Some(503), "the responder reports its LLM unreachable while it waits");
    caught_up.unwrap_or_else(|e| panic!("{e:#}: {}", figures.line()));
}
