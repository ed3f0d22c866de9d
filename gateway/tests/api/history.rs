//! The history and memory routes against a real broker, the Qdrant engine server and
//! (for deletion) the real memory worker: what a user sees and in which order, pages,
//! search, other users' 404s, bad input, Qdrant being unreachable, and deletion that
//! stays final while turns are still in flight through Kafka.

use std::time::{Duration, Instant};

use memory_store::{
    embed::{Embedder, EmbedderSettings},
    store::{Memory, MemoryStore, StoreSettings},
};
use platform::{
    events::{memory_point_id, ReplyBody, Role, UserMessage},
    topics,
};
use qdrant_client::{
    qdrant::{Condition, Filter, ScrollPointsBuilder},
    Qdrant,
};
use serde_json::{json, Value};
use testkit::{free_port, kafka::Kafka, QdrantServer};
use uuid::Uuid;

use crate::{
    common::{memory_worker, post_chat, reply_bodies, token, FakeResponder, Gateway},
    helpers::stored_messages,
};

/// How long after a deletion was answered its turns may still sit in Qdrant itself
/// (never shown: reads filter through the tombstones); docs/ARCHITECTURE.md states it.
const DELETION_BOUND: Duration = Duration::from_secs(5);

fn model_dir() -> String {
    testkit::require_env(&["EMBED_MODEL_DIR"]).expect("EMBED_MODEL_DIR");
    std::env::var("EMBED_MODEL_DIR").unwrap_or_default()
}

/// A gateway reading history from `qdrant`.
fn gateway(kafka: &Kafka, qdrant_url: &str) -> Gateway {
    let dir = model_dir();
    Gateway::start(
        kafka,
        &[("QDRANT_URL", qdrant_url), ("EMBED_MODEL_DIR", dir.as_str()), ("RATE_LIMIT_PER_MINUTE", "0")],
    )
}

async fn get(client: &reqwest::Client, gateway: &Gateway, token: &str, path: &str) -> (u16, Value) {
    let response = client.get(gateway.url(path)).bearer_auth(token).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn delete(client: &reqwest::Client, gateway: &Gateway, token: &str, path: &str) -> (u16, Value) {
    let response = client.delete(gateway.url(path)).bearer_auth(token).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A conversation id the gateway issued to the caller (its first message is posted
/// but, without a memory worker, never stored).
async fn new_conversation(client: &reqwest::Client, gateway: &Gateway, token: &str) -> Uuid {
    let (status, body) = post_chat(client, gateway, token, json!({"text": "hello"})).await;
    assert_eq!(status, 202, "{body}");
    body["conversation_id"].as_str().and_then(|s| s.parse().ok()).expect("conversation_id")
}

fn turn(user: &str, conversation_id: Uuid, role: Role, text: &str, ts_ms: i64) -> Memory {
    let message_id = Uuid::new_v4();
    Memory {
        point_id: memory_point_id(message_id, role),
        conversation_id,
        user_id: user.into(),
        role,
        text: text.into(),
        ts_ms,
        message_ts_ms: ts_ms,
        message_id,
    }
}

/// Stores turns as the memory worker would, with real embeddings.
async fn seed(url: &str, turns: Vec<Memory>) {
    let store = MemoryStore::new(
        &StoreSettings { url: url.into(), api_key: None, collection: "chat_memory".into() },
        Duration::from_secs(30),
    )
    .expect("store");
    let embedder =
        Embedder::build(EmbedderSettings::Local { model_dir: model_dir().into() }).await.expect("embedder");
    let vectors = embedder.embed(turns.iter().map(|m| m.text.clone()).collect()).await.expect("embed");
    let dropped = store.upsert(&turns.into_iter().zip(vectors).collect::<Vec<_>>()).await.expect("upsert");
    assert!(dropped.point_ids.is_empty());
}

fn texts(body: &Value, list: &str) -> Vec<String> {
    body[list]
        .as_array()
        .expect(list)
        .iter()
        .map(|m| m["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread")]
async fn history_pages_searches_and_shows_each_user_only_their_own() {
    let (kafka, qdrant) = (Kafka::start(2).await, QdrantServer::start().expect("qdrant"));
    let gateway = gateway(&kafka, &qdrant.url());
    let client = reqwest::Client::new();
    let (alice, bob) = (token("alice"), token("bob"));
    let long_chat = new_conversation(&client, &gateway, &alice).await;
    let bee_chat = new_conversation(&client, &gateway, &alice).await;
    let bobs_chat = new_conversation(&client, &gateway, &bob).await;

    // 200 turns an hour ago, then a newer conversation with a long first message.
    let t0 = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let mut turns = Vec::new();
    for i in 0..100 {
        let at = t0 + i * 2_000;
        turns.push(turn("alice", long_chat, Role::User, &format!("question {i} about the weather"), at));
        turns.push(turn("alice", long_chat, Role::Assistant, &format!("answer {i}: sunny"), at + 1_000));
    }
    let bee_question = format!("Tell me about bees: {}", "buzz ".repeat(40));
    turns.push(turn("alice", bee_chat, Role::User, &bee_question, t0 + 1_000_000));
    turns.push(turn("alice", bee_chat, Role::Assistant, "Bees make honey and keep hives.", t0 + 1_001_000));
    turns.push(turn("bob", bobs_chat, Role::User, "My cat is called Whiskers.", t0 + 2_000_000));
    seed(&qdrant.url(), turns).await;

    // The list: newest first, titled by the first message, with turn counts; paged.
    let (status, list) = get(&client, &gateway, &alice, "/conversations").await;
    assert_eq!(status, 200, "{list}");
    let conversations = list["conversations"].as_array().expect("conversations");
    assert_eq!(conversations.len(), 2, "{list}");
    assert_eq!(conversations[0]["conversation_id"], bee_chat.to_string());
    assert_eq!(conversations[0]["turns"], 2);
    let title = conversations[0]["title"].as_str().expect("title");
    assert!(title.starts_with("Tell me about bees: buzz") && title.ends_with('…'), "{title}");
    assert_eq!(title.chars().count(), 80);
    assert_eq!(conversations[1]["conversation_id"], long_chat.to_string());
    assert_eq!(conversations[1]["turns"], 200);
    assert_eq!(conversations[1]["title"], "question 0 about the weather");
    let last_ts = conversations[1]["last_ts"].as_str().expect("last_ts");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(last_ts).expect("RFC 3339").timestamp_millis(),
        t0 + 199_000
    );
    assert!(list["next_cursor"].is_null());
    let (_, first) = get(&client, &gateway, &alice, "/conversations?limit=1").await;
    assert_eq!(first["conversations"][0]["conversation_id"], bee_chat.to_string());
    let cursor = first["next_cursor"].as_str().expect("a cursor to the next page");
    let (_, second) =
        get(&client, &gateway, &alice, &format!("/conversations?limit=1&cursor={cursor}")).await;
    assert_eq!(second["conversations"][0]["conversation_id"], long_chat.to_string());
    assert!(second["next_cursor"].is_null(), "{second}");

    // The turns, oldest first, page by page, and all at once.
    let mut seen = Vec::new();
    let mut path = format!("/conversations/{long_chat}/messages");
    loop {
        let (status, page) = get(&client, &gateway, &alice, &path).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["conversation_id"], long_chat.to_string());
        for m in page["messages"].as_array().expect("messages") {
            assert_eq!(m["status"], "complete");
            seen.push((
                m["role"].as_str().unwrap_or_default().to_string(),
                m["text"].as_str().unwrap_or_default().to_string(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/conversations/{long_chat}/messages?cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 200);
    assert_eq!(seen[0], ("user".to_string(), "question 0 about the weather".to_string()));
    assert_eq!(seen[1], ("assistant".to_string(), "answer 0: sunny".to_string()));
    assert_eq!(seen[199].1, "answer 99: sunny");

    // Search: the caller's own memories by meaning, with scores; never another user's.
    let (status, found) = get(&client, &gateway, &alice, "/memories?q=honey%20bees&limit=3").await;
    assert_eq!(status, 200, "{found}");
    let memories = found["memories"].as_array().expect("memories");
    assert_eq!(memories.len(), 3);
    assert!(
        texts(&found, "memories")[0].contains("Bees") || texts(&found, "memories")[0].contains("bees"),
        "{found}"
    );
    assert!(memories.iter().all(|m| m["score"].is_f64()), "{found}");
    let (_, cats) = get(&client, &gateway, &alice, "/memories?q=what%20is%20my%20cat%20called").await;
    assert!(texts(&cats, "memories").iter().all(|t| !t.contains("Whiskers")), "bob's memory leaked: {cats}");
    let (_, latest) = get(&client, &gateway, &alice, "/memories?limit=2").await;
    assert_eq!(texts(&latest, "memories"), ["Bees make honey and keep hives.", bee_question.as_str()]);
    assert!(latest["memories"][0]["score"].is_null());

    // Another user's conversation is unknown; so is a made-up one.
    for path in [
        format!("/conversations/{long_chat}/messages"),
        format!("/conversations/{}/messages", Uuid::new_v4()),
    ] {
        let (status, body) = get(&client, &gateway, &bob, &path).await;
        assert_eq!((status, body["error"]["code"].as_str()), (404, Some("unknown_conversation")), "{body}");
    }
    let (status, _) = delete(&client, &gateway, &bob, &format!("/conversations/{long_chat}")).await;
    assert_eq!(status, 404);
    let (_, bobs) = get(&client, &gateway, &bob, "/conversations").await;
    assert_eq!(bobs["conversations"].as_array().map(Vec::len), Some(1), "{bobs}");
    assert_eq!(bobs["conversations"][0]["conversation_id"], bobs_chat.to_string());

    // Bad parameters are 400 with a message.
    for path in [
        "/conversations?limit=0".to_string(),
        "/conversations?limit=101".to_string(),
        "/conversations?limit=ten".to_string(),
        "/conversations?cursor=nonsense".to_string(),
        format!("/conversations/{long_chat}/messages?limit=501"),
        format!("/conversations/{long_chat}/messages?cursor=c1_2"),
        "/memories?limit=51".to_string(),
    ] {
        let (status, body) = get(&client, &gateway, &alice, &path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{path}: {body}");
    }
    let (status, _) = get(&client, &gateway, &alice, "/conversations/not-a-uuid/messages").await;
    assert_eq!(status, 404);

    // A reply on its way is shown as streaming, never as half a text.
    let mut asked = UserMessage::new(bee_chat, "alice", "and wasps?");
    asked.ts = chrono::Utc::now();
    let attempt = Uuid::new_v4();
    kafka.reply(&asked, attempt, vec![ReplyBody::Token { seq: 0, delta: "Wasps ".into() }]).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let streaming = loop {
        let (_, page) = get(&client, &gateway, &alice, &format!("/conversations/{bee_chat}/messages")).await;
        let last = page["messages"].as_array().and_then(|m| m.last().cloned()).unwrap_or_default();
        if last["status"] == "streaming" {
            break last;
        }
        assert!(Instant::now() < deadline, "no streaming entry: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(streaming["role"], "assistant");
    assert_eq!(streaming["text"], "");
    assert_eq!(streaming["message_id"], asked.message_id.to_string());
    let (_, bobs_view) = get(&client, &gateway, &bob, &format!("/conversations/{bee_chat}/messages")).await;
    assert_eq!(bobs_view["error"]["code"], "unknown_conversation");
    kafka.reply(&asked, attempt, reply_bodies(&["Wasps ", "sting."]).split_off(1)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, page) = get(&client, &gateway, &alice, &format!("/conversations/{bee_chat}/messages")).await;
        if page["messages"].as_array().is_some_and(|m| m.iter().all(|m| m["status"] == "complete")) {
            break;
        }
        assert!(Instant::now() < deadline, "the finished reply is still streaming: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Latency of reading a 200-turn conversation in one page, as a client would.
    let path = format!("/conversations/{long_chat}/messages?limit=200");
    let mut took = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        let (status, _) = get(&client, &gateway, &alice, &path).await;
        took.push(started.elapsed());
        assert_eq!(status, 200);
    }
    took.sort();
    eprintln!(
        "MEASURE history 200-turn conversation, one page, 200 sequential calls: p50 {:?} p99 {:?} max {:?}",
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        took[took.len() - 1]
    );
}

/// The points Qdrant itself holds for a user (and conversation), read directly.
async fn raw_points(qdrant: &Qdrant, user: &str, conversation: Option<Uuid>) -> Vec<String> {
    let mut conditions = vec![Condition::matches("user_id", user.to_string())];
    if let Some(c) = conversation {
        conditions.push(Condition::matches("conversation_id", c.to_string()));
    }
    let response = qdrant
        .scroll(
            ScrollPointsBuilder::new("chat_memory")
                .filter(Filter::must(conditions))
                .limit(1000)
                .with_payload(true),
        )
        .await;
    let Ok(response) = response else { return Vec::new() }; // no collection yet
    response
        .result
        .iter()
        .filter_map(|p| match p.payload.get("text")?.kind.as_ref()? {
            qdrant_client::qdrant::value::Kind::StringValue(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// Everything the API shows alice: her conversation's turns and her search results.
async fn shown(client: &reqwest::Client, gateway: &Gateway, alice: &str, chat: Uuid) -> Vec<String> {
    let (status, page) =
        get(client, gateway, alice, &format!("/conversations/{chat}/messages?limit=500")).await;
    assert_eq!(status, 200, "{page}");
    let mut all = texts(&page, "messages");
    let (status, found) = get(client, gateway, alice, "/memories?q=secret%20number&limit=50").await;
    assert_eq!(status, 200, "{found}");
    all.extend(texts(&found, "memories"));
    let (_, latest) = get(client, gateway, alice, "/memories?limit=50").await;
    all.extend(texts(&latest, "memories"));
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn deletion_is_final_even_for_turns_still_in_flight() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (kafka, qdrant) = (Kafka::start(2).await, QdrantServer::start().expect("qdrant"));
    let _worker = memory_worker(
        &kafka,
        &qdrant.url(),
        &model_dir(),
        dir.path(),
        &[("HANDLER_RETRY_BASE_MS", "50"), ("HANDLER_RETRY_MAX_MS", "500")],
    );
    let gateway = gateway(&kafka, &qdrant.url());
    let raw = Qdrant::from_url(&qdrant.url()).build().expect("qdrant client");
    let client = reqwest::Client::new();
    let (alice, bob) = (token("alice"), token("bob"));

    // A conversation that stays, and bob's, both stored before anything is deleted.
    let (_, kept) = post_chat(&client, &gateway, &alice, json!({"text": "keep: I like tea"})).await;
    let kept_chat: Uuid = kept["conversation_id"].as_str().and_then(|s| s.parse().ok()).expect("id");
    post_chat(&client, &gateway, &bob, json!({"text": "bob's secret number is 7"})).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while raw_points(&raw, "alice", Some(kept_chat)).await.is_empty()
        || raw_points(&raw, "bob", None).await.is_empty()
    {
        assert!(Instant::now() < deadline, "the worker stored nothing within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Twenty messages, then the deletion at once: the worker is still on them.
    let (_, first) =
        post_chat(&client, &gateway, &alice, json!({"text": "doomed 0: my secret number is 41"})).await;
    let chat: Uuid = first["conversation_id"].as_str().and_then(|s| s.parse().ok()).expect("id");
    for i in 1..20 {
        let text = format!("doomed {i}: my secret number is {}", 41 + i);
        let (status, _) =
            post_chat(&client, &gateway, &alice, json!({"conversation_id": chat, "text": text})).await;
        assert_eq!(status, 202);
    }
    let asked = Instant::now();
    let (status, deleted) = delete(&client, &gateway, &alice, &format!("/conversations/{chat}")).await;
    let answered = Instant::now();
    assert_eq!(status, 202, "{deleted}");
    assert_eq!(deleted["conversation_id"], chat.to_string());
    assert!(deleted["deletion_id"].as_str().and_then(|s| s.parse::<Uuid>().ok()).is_some(), "{deleted}");
    eprintln!("MEASURE DELETE /conversations/{{id}} answered in {:?}", answered - asked);
    let repeated = delete(&client, &gateway, &alice, &format!("/conversations/{chat}")).await;
    assert_eq!(repeated.0, 202, "deleting again is fine");

    // Still in flight after the answer: replies to those messages finishing now, and
    // messages from before the deletion that reach Kafka late (a producer's retry).
    let doomed: Vec<UserMessage> =
        stored_messages(&kafka, 22).await.into_iter().filter(|m| m.conversation_id == chat).collect();
    assert_eq!(doomed.len(), 20);
    for m in doomed.iter().take(5) {
        kafka.reply(m, Uuid::new_v4(), reply_bodies(&["doomed reply: the secret ", "number"])).await;
    }
    let mut late = UserMessage::new(chat, "alice", "doomed late: my secret number is 99");
    late.ts = doomed[0].ts;
    kafka.send(&late).await;
    // A message after the deletion is a new turn of the conversation, and is kept.
    let (status, _) = post_chat(
        &client,
        &gateway,
        &alice,
        json!({"conversation_id": chat, "text": "after: a fresh start"}),
    )
    .await;
    assert_eq!(status, 202);

    // From the answer on, nothing deleted is ever shown, while the worker catches up.
    let mut caught_up = None;
    let mut stored_clean = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let everything = shown(&client, &gateway, &alice, chat).await;
        assert!(everything.iter().all(|t| !t.contains("doomed")), "deleted content shown: {everything:?}");
        if caught_up.is_none() && kafka.lag(topics::MEMORY_GROUP, topics::MEMORY_TOPICS).await == 0 {
            caught_up = Some(Instant::now());
            eprintln!(
                "MEASURE the memory worker caught up {:?} after the deletion was answered",
                answered.elapsed()
            );
        }
        let clean = raw_points(&raw, "alice", Some(chat)).await.iter().all(|t| !t.contains("doomed"));
        match (clean, stored_clean) {
            (true, None) if caught_up.is_some() => stored_clean = caught_up,
            (false, _) => stored_clean = None,
            _ => {}
        }
        if caught_up.is_some_and(|at| at.elapsed() > DELETION_BOUND) {
            break;
        }
        assert!(Instant::now() < deadline, "the memory worker did not catch up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And Qdrant itself holds none of it: no turn was stored back.
    assert!(stored_clean.is_some(), "Qdrant held deleted turns after the worker caught up");
    let stored = raw_points(&raw, "alice", Some(chat)).await;
    assert_eq!(stored, ["after: a fresh start"], "Qdrant holds deleted turns");
    assert_eq!(raw_points(&raw, "alice", Some(kept_chat)).await, ["keep: I like tea"]);
    let (_, page) = get(&client, &gateway, &alice, &format!("/conversations/{chat}/messages")).await;
    assert_eq!(texts(&page, "messages"), ["after: a fresh start"]);

    // Forget me: everything of alice goes, bob's stays.
    let (status, forgot) = delete(&client, &gateway, &alice, "/memories").await;
    assert_eq!(status, 202, "{forgot}");
    assert!(forgot["deletion_id"].is_string());
    let (_, list) = get(&client, &gateway, &alice, "/conversations").await;
    assert_eq!(list["conversations"], json!([]), "{list}");
    assert!(raw_points(&raw, "alice", None).await.is_empty());
    assert_eq!(raw_points(&raw, "bob", None).await, ["bob's secret number is 7"]);
    let (_, bobs) = get(&client, &gateway, &bob, "/memories?q=secret%20number").await;
    assert_eq!(texts(&bobs, "memories"), ["bob's secret number is 7"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_qdrant_history_answers_503_and_chat_goes_on() {
    let kafka = Kafka::start(2).await;
    let nothing_there = format!("http://127.0.0.1:{}", free_port().expect("port"));
    let unreachable = gateway(&kafka, &nothing_there);
    let unset = Gateway::start(&kafka, &[]);
    let client = reqwest::Client::new();
    let alice = token("alice");
    let chat = new_conversation(&client, &unreachable, &alice).await;
    for gateway in [&unreachable, &unset] {
        for (method, path) in [
            ("GET", "/conversations".to_string()),
            ("GET", format!("/conversations/{chat}/messages")),
            ("DELETE", format!("/conversations/{chat}")),
            ("GET", "/memories?q=tea".to_string()),
            ("DELETE", "/memories".to_string()),
        ] {
            let request = match method {
                "GET" => client.get(gateway.url(&path)),
                _ => client.delete(gateway.url(&path)),
            };
            let response = request.bearer_auth(&alice).send().await.expect("request");
            assert_eq!(response.status(), 503, "{method} {path}");
            assert!(response.headers().contains_key("retry-after"), "{method} {path}");
            let body: Value = response.json().await.expect("JSON error");
            assert_eq!(body["error"]["code"], "history_unavailable", "{method} {path}: {body}");
        }
        // The chat goes on.
        let (status, body) = post_chat(&client, gateway, &alice, json!({"text": "still there?"})).await;
        assert_eq!(status, 202, "{body}");
    }
    let (_, body) = get(&client, &unset, &alice, "/conversations").await;
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("QDRANT_URL")), "{body}");
}
