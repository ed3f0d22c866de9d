//! Drill 3: two gateways and a responder group that grows to two and shrinks back to
//! one under load.

use std::time::{Duration, Instant};

use drills::{stack::load, Figures, Stack};
use testkit::{LlamaServer, Signal};

#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_and_a_rebalancing_responder_group_answer_everything() {
    let llm = LlamaServer::chat().expect("llama-server");
    let mut stack = Stack::start(llm.base_url()).await.expect("stack");
    let first = stack.add_gateway(&[]).expect("gateway 1").url();
    let second = stack.add_gateway(&[]).expect("gateway 2").url();
    stack.add_responder(&[]).expect("responder 1");

    // 4 users on each gateway, 1.5 messages/s each for 16 s.
    let on_first = tokio::spawn(async move { load(&first, 4, 1.5, 16.0, 90.0).await });
    let on_second = tokio::spawn(async move { load(&second, 4, 1.5, 16.0, 90.0).await });
    tokio::time::sleep(Duration::from_secs(4)).await;
    let joined = Instant::now();
    stack.add_responder(&[]).expect("responder 2 joins the group");
    let join_secs = joined.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The first responder leaves as a scale-down would stop it: SIGTERM, drain, leave.
    let leaving = &mut stack.responders[0].process;
    let left = Instant::now();
    leaving.stop_with(Signal::SIGTERM, Duration::from_secs(30)).expect("responder 1 drains and exits");
    let leave_secs = left.elapsed().as_secs_f64();

    let first = on_first.await.expect("load task").expect("load on gateway 1");
    let second = on_second.await.expect("load task").expect("load on gateway 2");
    let handled: Vec<f64> = {
        let mut handled = Vec::new();
        for r in &stack.responders[1..] {
            handled.push(r.metric("handler_records_total").await.expect("responder 2 metrics"));
        }
        handled
    };

    let mut figures = Figures::new("scale-out");
    figures
        .load("gw1", &first)
        .load("gw2", &second)
        .secs("join", join_secs)
        .secs("drain_and_leave", leave_secs)
        .add("records_by_responder2", handled.first().copied().unwrap_or(0.0));
    figures.print();
    for (name, report) in [("gateway 1", &first), ("gateway 2", &second)] {
        let c = &report.counts;
        assert!(c.accepted >= 20, "{name} took its load: {}", figures.line());
        assert_eq!(c.unanswered, 0, "{name}: every accepted message answered: {}", report.table());
        assert_eq!(c.answered, c.accepted, "{name}: answered, not errored: {}", report.table());
        assert_eq!(report.streams.duplicate_ends, 0, "{name}: each message ends once");
        assert_eq!(c.text_mismatches, 0, "{name}: no reply mixes two attempts");
    }
    assert!(handled[0] > 0.0, "the second responder took part of the load: {}", figures.line());
}
