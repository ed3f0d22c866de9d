//! Drill 6: thousands of SSE clients that never read, then thousands that hang up
//! abruptly: the gateway's memory stays bounded and every stream is released.

use std::time::Duration;

use drills::{
    stack::{wait_for, JWT_SECRET},
    Figures, Service, Stack,
};
use platform::{
    events::{ModelResponse, ReplyBody, UserMessage},
    kafka::publish,
    trace_context::TraceParent,
};
use tokio::{io::AsyncWriteExt, net::TcpSocket, net::TcpStream};
use uuid::Uuid;

/// Conversations the streams are spread over.
const CONVERSATIONS: usize = 10;
/// Clients that never read.
const STUCK: usize = 1000;
/// Token events per conversation per wave: more than STREAM_BUFFER (256), so every
/// stuck stream overflows.
const EVENTS: u32 = 400;
/// Bytes per token event.
const DELTA: usize = 1024;

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_never_read_or_hang_up_do_not_grow_the_gateways_memory() {
    testkit::raise_open_file_limit().expect("open-file limit");
    let mut stack = Stack::start("http://127.0.0.1:9/v1").await.expect("stack");
    stack.add_gateway(&[]).expect("gateway");
    let token = loadtest::auth::mint(JWT_SECRET, "slow", Duration::from_secs(3600)).expect("token");
    let gateway = &stack.gateways[0];
    let mut conversations = Vec::new();
    for _ in 0..CONVERSATIONS {
        conversations.push(gateway.post_message(&token, "stream me a lot").await.expect("202"));
    }
    let pid = gateway.process.pid();
    let idle = testkit::rss_mb(pid);

    let mut stuck = Vec::new();
    for i in 0..STUCK {
        stuck.push(open_stream(gateway, &token, conversations[i % CONVERSATIONS].0, true).await);
    }
    wait_open_streams(gateway, STUCK as f64).await;
    let holding = testkit::rss_mb(pid);

    let producer = stack.kafka().producer().expect("producer");
    let mut after_wave = Vec::new();
    for wave in 0..2 {
        let before = gateway.metric("gateway_relay_events_total").await.expect("metrics");
        let events: Vec<ModelResponse> = conversations
            .iter()
            .flat_map(|(conversation, message)| {
                let mut user_message = UserMessage::new(*conversation, "slow", "stream me a lot");
                user_message.message_id = *message;
                let attempt = Uuid::new_v4();
                (0..EVENTS).map(move |seq| {
                    let delta = "x".repeat(DELTA);
                    ModelResponse::for_message(
                        &user_message,
                        attempt,
                        ReplyBody::Token { seq: wave * EVENTS + seq, delta },
                    )
                })
            })
            .collect();
        let trace = TraceParent::new_root();
        futures::future::join_all(
            events.iter().map(|event| publish(&producer, event, &trace, Duration::from_secs(30))),
        )
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .expect("events stored");
        let total = before + (CONVERSATIONS * EVENTS as usize) as f64;
        wait_for("the relay delivered the wave", Duration::from_secs(60), async || {
            gateway.metric("gateway_relay_events_total").await.is_ok_and(|n| n >= total)
        })
        .await
        .expect("relayed");
        tokio::time::sleep(Duration::from_secs(1)).await;
        after_wave.push(testkit::rss_mb(pid));
    }
    let cut = gateway.metric("gateway_slow_streams_cut_total").await.expect("metrics");

    // Hang up on all of them at once (RST), then three rounds of connect-and-vanish.
    drop(stuck);
    let released = wait_open_streams(gateway, 0.0).await;
    let mut after_round = Vec::new();
    for _ in 0..3 {
        let mut round = Vec::new();
        for i in 0..STUCK {
            round.push(open_stream(gateway, &token, conversations[i % CONVERSATIONS].0, false).await);
        }
        wait_open_streams(gateway, STUCK as f64).await;
        drop(round);
        wait_open_streams(gateway, 0.0).await;
        after_round.push(testkit::rss_mb(pid));
    }

    let mut figures = Figures::new("slow-clients");
    figures
        .add("stuck_streams", STUCK)
        .add("events_per_stream", 2 * EVENTS)
        .add("bytes_per_stream_kib", 2 * EVENTS as usize * DELTA / 1024)
        .add("rss_idle_mb", format!("{idle:.0}"))
        .add("rss_holding_mb", format!("{holding:.0}"))
        .add("rss_after_wave1_mb", format!("{:.0}", after_wave[0]))
        .add("rss_after_wave2_mb", format!("{:.0}", after_wave[1]))
        .add("slow_streams_cut", cut)
        .secs("released_after_hangup", released.as_secs_f64())
        .add("rss_after_hangup_rounds_mb", format!("{:.0?}", after_round));
    figures.print();
    // Loopback send buffers grow to megabytes, so some streams swallow a whole wave into
    // the kernel before the gateway ever waits on them (that memory is the kernel's, not
    // the gateway's); most overflow and are cut.
    assert!(
        idle > 0.0 && after_round.iter().all(|rss| *rss > 0.0),
        "the gateway is alive: {}",
        figures.line()
    );
    assert!(cut >= 0.5 * STUCK as f64, "streams that stopped reading were cut: {}", figures.line());
    assert!(
        after_wave[1] - after_wave[0] < 20.0,
        "a second wave of events (the streams already cut, the replay window full) does not grow memory: {}",
        figures.line()
    );
    assert!(after_wave[1] < holding + 150.0, "stuck clients cost bounded memory: {}", figures.line());
    assert!(
        after_round[2] < after_round[0] + 15.0,
        "abrupt disconnects leave nothing behind: {}",
        figures.line()
    );
}

/// Opens `GET /stream` on a raw socket that will never be read. `small_window`: a tiny
/// receive buffer, so the gateway's writes back up at once.
async fn open_stream(gateway: &Service, token: &str, conversation: Uuid, small_window: bool) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    if small_window {
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    }
    let mut stream = socket.connect(([127, 0, 0, 1], gateway.port).into()).await.expect("connect");
    // Closing must reset the connection (RST), as a client that vanishes does.
    stream.set_zero_linger().expect("SO_LINGER");
    let request = format!(
        "GET /stream?conversation_id={conversation} HTTP/1.1\r\nHost: drills\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("request");
    stream
}

/// Waits (bounded) until the gateway reports `n` open streams; how long it took.
async fn wait_open_streams(gateway: &Service, n: f64) -> Duration {
    wait_for(&format!("{n} open streams"), Duration::from_secs(60), async || {
        gateway.metric("gateway_open_streams").await.is_ok_and(|open| open == n)
    })
    .await
    .expect("open streams")
}
