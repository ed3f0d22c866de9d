//! End to end over REST: the built server binary, driven with a real HTTP client and
//! the request bodies of Qdrant's own documentation (quickstart, points, filtering,
//! search and collections pages), checked against Qdrant's JSON shapes and status
//! codes; plus the same data written over gRPC and read over REST, and back.

mod common;

use qdrant_client::qdrant::{
    CreateCollectionBuilder, Distance, GetPointsBuilder, PointStruct, UpsertPointsBuilder,
    VectorParamsBuilder,
};
use qdrant_client::Payload;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use common::{Server, STEP};

/// A REST client of one server.
struct Rest {
    http: reqwest::Client,
    base: String,
}

impl Rest {
    fn of(server: &Server) -> Rest {
        let http = reqwest::Client::builder().timeout(STEP).build().expect("build HTTP client");
        Rest { http, base: server.rest_url.clone() }
    }

    /// Sends a request (with a JSON body when given) and returns the status and body.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap_or_else(|err| panic!("{method} {path}: {err}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_else(|err| panic!("{method} {path}: body: {err}"));
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    /// A request that must succeed with Qdrant's envelope; returns its `result`.
    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, answer) = self.call(method.clone(), path, body).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {answer}");
        assert_eq!(answer["status"], "ok", "{method} {path}: {answer}");
        assert!(answer["time"].is_f64(), "{method} {path} has no time: {answer}");
        answer["result"].clone()
    }

    /// A request that must fail with `expected` and Qdrant's error body; returns the message.
    async fn fails(&self, method: Method, path: &str, body: Option<Value>, expected: StatusCode) -> String {
        let (status, answer) = self.call(method.clone(), path, body).await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
        assert!(answer["time"].is_number(), "{method} {path} error has no time: {answer}");
        answer["status"]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path}: not Qdrant's error shape: {answer}"))
            .to_owned()
    }
}

/// The value of a gRPC call that must succeed.
fn done<T>(what: &str, result: Result<T, qdrant_client::QdrantError>) -> T {
    result.unwrap_or_else(|err| panic!("gRPC {what}: {err}"))
}

/// The ids of a list of points.
fn ids(points: &Value) -> Vec<Value> {
    points
        .as_array()
        .unwrap_or_else(|| panic!("not a list of points: {points}"))
        .iter()
        .map(|p| p["id"].clone())
        .collect()
}

/// The six cities of Qdrant's quickstart.
fn quickstart_points() -> Value {
    json!({
        "points": [
            {"id": 1, "vector": [0.05, 0.61, 0.76, 0.74], "payload": {"city": "Berlin"}},
            {"id": 2, "vector": [0.19, 0.81, 0.75, 0.11], "payload": {"city": "London"}},
            {"id": 3, "vector": [0.36, 0.55, 0.47, 0.94], "payload": {"city": "Moscow"}},
            {"id": 4, "vector": [0.18, 0.01, 0.85, 0.80], "payload": {"city": "New York"}},
            {"id": 5, "vector": [0.24, 0.18, 0.22, 0.44], "payload": {"city": "Beijing"}},
            {"id": 6, "vector": [0.35, 0.08, 0.11, 0.44], "payload": {"city": "Mumbai"}}
        ]
    })
}

fn london() -> Value {
    json!({"must": [{"key": "city", "match": {"value": "London"}}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn qdrant_quickstart_runs_over_rest() {
    let data = tempfile::tempdir().expect("temp dir");
    let server = Server::start(data.path());
    let rest = Rest::of(&server);

    // Service routes: the version clients check, and the Kubernetes probes.
    let (status, root) = rest.call(Method::GET, "/", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(root["version"].as_str().is_some_and(|v| v.starts_with("1.")), "{root}");
    assert!(root["title"].is_string(), "{root}");
    for probe in ["/healthz", "/readyz", "/livez"] {
        let (status, _) = rest.call(Method::GET, probe, None).await;
        assert_eq!(status, StatusCode::OK, "{probe}");
    }

    let created = rest
        .ok(
            Method::PUT,
            "/collections/test_collection",
            Some(json!({"vectors": {"size": 4, "distance": "Dot"}})),
        )
        .await;
    assert_eq!(created, json!(true));
    let listed = rest.ok(Method::GET, "/collections", None).await;
    assert_eq!(listed, json!({"collections": [{"name": "test_collection"}]}));
    let exists = rest.ok(Method::GET, "/collections/test_collection/exists", None).await;
    assert_eq!(exists, json!({"exists": true}));

    let upserted = rest
        .ok(Method::PUT, "/collections/test_collection/points?wait=true", Some(quickstart_points()))
        .await;
    assert_eq!(upserted["status"], "completed");
    assert!(upserted["operation_id"].is_u64(), "{upserted}");

    // The collection info carries every field strict clients require.
    let info = rest.ok(Method::GET, "/collections/test_collection", None).await;
    assert_eq!(info["status"], "green");
    assert_eq!(info["optimizer_status"], "ok");
    assert_eq!(info["points_count"], 6);
    assert!(info["indexed_vectors_count"].is_u64() && info["segments_count"].as_u64() > Some(0), "{info}");
    assert_eq!(info["payload_schema"], json!({}));
    let config = &info["config"];
    assert_eq!(config["params"]["vectors"], json!({"size": 4, "distance": "Dot"}));
    for key in ["shard_number", "replication_factor", "write_consistency_factor", "on_disk_payload"] {
        assert!(!config["params"][key].is_null(), "params.{key} missing: {config}");
    }
    for key in ["m", "ef_construct", "full_scan_threshold", "max_indexing_threads", "on_disk"] {
        assert!(!config["hnsw_config"][key].is_null(), "hnsw_config.{key} missing: {config}");
    }
    for key in
        ["deleted_threshold", "vacuum_min_vector_number", "default_segment_number", "flush_interval_sec"]
    {
        assert!(!config["optimizer_config"][key].is_null(), "optimizer_config.{key} missing: {config}");
    }
    for key in ["wal_capacity_mb", "wal_segments_ahead"] {
        assert!(!config["wal_config"][key].is_null(), "wal_config.{key} missing: {config}");
    }

    // Quickstart query: the three best dot products, best first.
    let query = json!({"query": [0.2, 0.1, 0.9, 0.7], "limit": 3});
    let found = rest.ok(Method::POST, "/collections/test_collection/points/query", Some(query)).await;
    assert_eq!(ids(&found["points"]), vec![json!(4), json!(1), json!(3)]);
    let best = &found["points"][0];
    assert!((best["score"].as_f64().expect("score") - 1.362).abs() < 1e-3, "{best}");
    assert!(best.get("payload").is_none() && best.get("vector").is_none(), "not asked for: {best}");
    assert!(best["version"].is_u64(), "{best}");

    // Quickstart query with a filter and the payload.
    let query = json!({"query": [0.2, 0.1, 0.9, 0.7], "filter": london(), "with_payload": true, "limit": 3});
    let found = rest.ok(Method::POST, "/collections/test_collection/points/query", Some(query)).await;
    assert_eq!(ids(&found["points"]), vec![json!(2)]);
    assert_eq!(found["points"][0]["payload"], json!({"city": "London"}));

    // The search API, with the docs' search params (tuning, accepted).
    let search = json!({
        "filter": london(),
        "params": {"hnsw_ef": 128, "exact": false},
        "vector": [0.2, 0.1, 0.9, 0.7],
        "limit": 3
    });
    let hits = rest.ok(Method::POST, "/collections/test_collection/points/search", Some(search)).await;
    assert_eq!(ids(&hits), vec![json!(2)]);
    assert!((hits[0]["score"].as_f64().expect("score") - 0.871).abs() < 1e-3, "{hits}");

    // `{"nearest": …}` and `order_by` forms of the query API, and no query at all.
    let nearest = json!({"query": {"nearest": [0.2, 0.1, 0.9, 0.7]}, "limit": 1});
    let found = rest.ok(Method::POST, "/collections/test_collection/points/query", Some(nearest)).await;
    assert_eq!(ids(&found["points"]), vec![json!(4)]);
    let unscored = json!({"limit": 2});
    let found = rest.ok(Method::POST, "/collections/test_collection/points/query", Some(unscored)).await;
    assert_eq!(ids(&found["points"]), vec![json!(1), json!(2)]);

    // Count, all and filtered.
    let all = rest
        .ok(Method::POST, "/collections/test_collection/points/count", Some(json!({"exact": true})))
        .await;
    assert_eq!(all, json!({"count": 6}));
    let in_london = json!({"filter": london(), "exact": true});
    let counted = rest.ok(Method::POST, "/collections/test_collection/points/count", Some(in_london)).await;
    assert_eq!(counted, json!({"count": 1}));

    // Scroll pages in id order, following next_page_offset.
    let page = json!({"limit": 4, "with_payload": true, "with_vector": false});
    let first = rest.ok(Method::POST, "/collections/test_collection/points/scroll", Some(page)).await;
    assert_eq!(ids(&first["points"]), vec![json!(1), json!(2), json!(3), json!(4)]);
    assert_eq!(first["points"][0], json!({"id": 1, "payload": {"city": "Berlin"}}));
    assert_eq!(first["next_page_offset"], json!(5));
    let next = json!({"limit": 4, "offset": 5});
    let second = rest.ok(Method::POST, "/collections/test_collection/points/scroll", Some(next)).await;
    assert_eq!(ids(&second["points"]), vec![json!(5), json!(6)]);
    assert_eq!(second["next_page_offset"], Value::Null);

    // Get one point (payload and vector), and several (missing ids left out).
    let one = rest.ok(Method::GET, "/collections/test_collection/points/1", None).await;
    assert_eq!(one["payload"], json!({"city": "Berlin"}));
    assert_eq!(one["vector"].as_array().map(Vec::len), Some(4), "{one}");
    let some =
        rest.ok(Method::POST, "/collections/test_collection/points", Some(json!({"ids": [1, 3, 100]}))).await;
    let mut got = ids(&some);
    got.sort_by_key(|id| id.as_u64());
    assert_eq!(got, vec![json!(1), json!(3)]);
    assert!(some[0]["payload"]["city"].is_string(), "payload by default: {some}");

    // Delete by ids and by filter.
    let deleted = rest
        .ok(
            Method::POST,
            "/collections/test_collection/points/delete?wait=true",
            Some(json!({"points": [5, 6]})),
        )
        .await;
    assert_eq!(deleted["status"], "completed");
    let by_filter = json!({"filter": london()});
    rest.ok(Method::POST, "/collections/test_collection/points/delete", Some(by_filter)).await;
    let left = rest.ok(Method::POST, "/collections/test_collection/points/count", None).await;
    assert_eq!(left, json!({"count": 3}));

    // Delete the collection; deleting it again answers false, as Qdrant does.
    assert_eq!(rest.ok(Method::DELETE, "/collections/test_collection", None).await, json!(true));
    assert_eq!(rest.ok(Method::DELETE, "/collections/test_collection", None).await, json!(false));
    let exists = rest.ok(Method::GET, "/collections/test_collection/exists", None).await;
    assert_eq!(exists, json!({"exists": false}));
    assert!(server.stop().success());
}

/// A stored chat turn, as the memory worker writes it.
fn turn(id: &str, user: &str, conversation: &str, role: &str, ts: u64, vector: [f32; 4]) -> Value {
    json!({
        "id": id,
        "vector": vector,
        "payload": {
            "conversation_id": conversation,
            "user_id": user,
            "role": role,
            "text": format!("{role} says hi in {conversation}"),
            "ts": ts,
            "message_id": format!("m{ts}"),
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_scroll_lists_one_users_turns() {
    let data = tempfile::tempdir().expect("temp dir");
    let server = Server::start(data.path());
    let rest = Rest::of(&server);

    let create = json!({"vectors": {"size": 4, "distance": "Cosine"}});
    rest.ok(Method::PUT, "/collections/chat_memory", Some(create)).await;
    // Qdrant's docs' payload index request, on the field the scroll filters by.
    let index = json!({"field_name": "user_id", "field_schema": "keyword"});
    let indexed = rest.ok(Method::PUT, "/collections/chat_memory/index?wait=true", Some(index)).await;
    assert_eq!(indexed["status"], "completed");
    let turns = json!({"points": [
        turn("5c56c793-69f3-4fbf-87e6-c4bf54c28c26", "alice", "c1", "user", 1, [1.0, 0.0, 0.0, 0.0]),
        turn("2b2f8f5a-9c3e-4d5f-8a61-0c4b3a2e1d00", "alice", "c1", "assistant", 2, [0.9, 0.1, 0.0, 0.0]),
        turn("0e1a7c3b-5d4e-4f60-9a8b-7c6d5e4f3a21", "bob", "c2", "user", 3, [1.0, 0.0, 0.0, 0.0]),
    ]});
    rest.ok(Method::PUT, "/collections/chat_memory/points?wait=true", Some(turns)).await;

    // The README's body, verbatim but for the user.
    let readme = json!({"filter": {"must": [{"key": "user_id", "match": {"value": "alice"}}]}, "limit": 20, "with_payload": true});
    let page = rest.ok(Method::POST, "/collections/chat_memory/points/scroll", Some(readme)).await;
    let points = page["points"].as_array().expect("points");
    assert_eq!(points.len(), 2, "{page}");
    for point in points {
        let payload = &point["payload"];
        assert_eq!(payload["user_id"], "alice");
        for key in ["conversation_id", "role", "text", "ts", "message_id"] {
            assert!(!payload[key].is_null(), "{key} missing: {point}");
        }
        assert!(
            point["id"].as_str().is_some_and(|id| id.len() == 36),
            "UUID ids come back as strings: {point}"
        );
    }
    assert_eq!(page["next_page_offset"], Value::Null);

    // The index shows in the info, with the points it holds.
    let info = rest.ok(Method::GET, "/collections/chat_memory", None).await;
    assert_eq!(info["payload_schema"]["user_id"], json!({"data_type": "keyword", "points": 3}));

    // The docs' batch form of upsert works too.
    let batch = json!({"batch": {
        "ids": [10, 11],
        "payloads": [{"user_id": "carol"}, {"user_id": "carol"}],
        "vectors": [[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]]
    }});
    rest.ok(Method::PUT, "/collections/chat_memory/points", Some(batch)).await;
    let carol = json!({"filter": {"must": [{"key": "user_id", "match": {"value": "carol"}}]}});
    assert_eq!(
        rest.ok(Method::POST, "/collections/chat_memory/points/count", Some(carol)).await,
        json!({"count": 2})
    );
    assert!(server.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn what_grpc_writes_rest_reads_and_back() {
    let data = tempfile::tempdir().expect("temp dir");
    let server = Server::start(data.path());
    let rest = Rest::of(&server);
    let client = server.client();

    done(
        "create",
        client
            .create_collection(
                CreateCollectionBuilder::new("memories")
                    .vectors_config(VectorParamsBuilder::new(4, Distance::Cosine)),
            )
            .await,
    );
    let payload =
        |user: &str| Payload::try_from(json!({"user_id": user, "text": "hello"})).expect("payload object");
    let points = vec![
        PointStruct::new(1, vec![1.0, 0.0, 0.0, 0.0], payload("a")),
        PointStruct::new(2, vec![0.0, 1.0, 0.0, 0.0], payload("b")),
    ];
    done("upsert", client.upsert_points(UpsertPointsBuilder::new("memories", points).wait(true)).await);

    // Over REST: the same collection, config, points and payloads.
    let info = rest.ok(Method::GET, "/collections/memories", None).await;
    assert_eq!(info["points_count"], 2);
    assert_eq!(info["config"]["params"]["vectors"], json!({"size": 4, "distance": "Cosine"}));
    let scroll =
        json!({"filter": {"must": [{"key": "user_id", "match": {"value": "a"}}]}, "with_vector": true});
    let page = rest.ok(Method::POST, "/collections/memories/points/scroll", Some(scroll)).await;
    assert_eq!(
        page["points"],
        json!([{"id": 1, "payload": {"user_id": "a", "text": "hello"}, "vector": [1.0, 0.0, 0.0, 0.0]}])
    );
    let hits = rest
        .ok(
            Method::POST,
            "/collections/memories/points/search",
            Some(json!({"vector": [0.0, 1.0, 0.0, 0.0], "limit": 1})),
        )
        .await;
    assert_eq!(ids(&hits), vec![json!(2)]);

    // And back: written over REST, read over gRPC.
    let more = json!({"points": [{"id": 3, "vector": [0.0, 0.0, 1.0, 0.0], "payload": {"user_id": "c"}}]});
    rest.ok(Method::PUT, "/collections/memories/points?wait=true", Some(more)).await;
    let got = done(
        "get",
        client.get_points(GetPointsBuilder::new("memories", vec![3.into()]).with_payload(true)).await,
    );
    assert_eq!(got.result.len(), 1);
    assert_eq!(got.result[0].payload.get("user_id").and_then(|v| v.as_str()).map(String::as_str), Some("c"));
    let info = done("info", client.collection_info("memories").await).result.expect("info");
    assert_eq!(info.points_count, Some(3));
    assert!(server.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_answered_as_qdrant_answers_them() {
    let data = tempfile::tempdir().expect("temp dir");
    let server = Server::start(data.path());
    let rest = Rest::of(&server);

    // A missing collection is a 404 with Qdrant's message, on every route.
    let missing = "Not found: Collection `nope` doesn't exist!";
    assert_eq!(rest.fails(Method::GET, "/collections/nope", None, StatusCode::NOT_FOUND).await, missing);
    let scroll =
        rest.fails(Method::POST, "/collections/nope/points/scroll", Some(json!({})), StatusCode::NOT_FOUND);
    assert_eq!(scroll.await, missing);
    let upsert = json!({"points": [{"id": 1, "vector": [1.0], "payload": {}}]});
    assert_eq!(
        rest.fails(Method::PUT, "/collections/nope/points", Some(upsert), StatusCode::NOT_FOUND).await,
        missing
    );

    rest.ok(Method::PUT, "/collections/c", Some(json!({"vectors": {"size": 3, "distance": "Cosine"}}))).await;
    let again = rest
        .fails(
            Method::PUT,
            "/collections/c",
            Some(json!({"vectors": {"size": 3, "distance": "Cosine"}})),
            StatusCode::CONFLICT,
        )
        .await;
    assert!(again.contains("already exists"), "{again}");

    // A missing point is a 404; a bad id a 400.
    let point = rest.fails(Method::GET, "/collections/c/points/7", None, StatusCode::NOT_FOUND).await;
    assert!(point.contains("Point with id 7"), "{point}");
    rest.fails(Method::GET, "/collections/c/points/not-an-id", None, StatusCode::BAD_REQUEST).await;

    // Malformed bodies are 400s that say what is wrong.
    let (status, answer) = rest.call(Method::POST, "/collections/c/points/scroll", None).await;
    assert_eq!(status, StatusCode::OK, "an empty scroll body is `{{}}`: {answer}");
    let broken =
        rest.http.post(format!("{}/collections/c/points/count", rest.base)).body("{\"filter\": ").send();
    let broken = broken.await.expect("send broken JSON");
    assert_eq!(broken.status(), StatusCode::BAD_REQUEST);
    let body: Value = broken.json().await.expect("error body is JSON");
    assert!(body["status"]["error"].as_str().is_some_and(|e| e.contains("Json deserialize error")), "{body}");
    let no_vectors =
        rest.fails(Method::PUT, "/collections/d", Some(json!({"size": 3})), StatusCode::BAD_REQUEST).await;
    assert!(no_vectors.contains("vectors"), "{no_vectors}");
    let bad_distance = json!({"vectors": {"size": 3, "distance": "Hamming"}});
    let message =
        rest.fails(Method::PUT, "/collections/d", Some(bad_distance), StatusCode::BAD_REQUEST).await;
    assert!(message.contains("Hamming"), "{message}");
    let no_limit = json!({"vector": [1.0, 0.0, 0.0]});
    let message = rest
        .fails(Method::POST, "/collections/c/points/search", Some(no_limit), StatusCode::BAD_REQUEST)
        .await;
    assert!(message.contains("limit"), "{message}");
    let zero = json!({"limit": 0});
    rest.fails(Method::POST, "/collections/c/points/scroll", Some(zero), StatusCode::BAD_REQUEST).await;
    let bad_filter = json!({"filter": {"must": [{"key": "user_id", "match": {"valu": "a"}}]}});
    rest.fails(Method::POST, "/collections/c/points/count", Some(bad_filter), StatusCode::BAD_REQUEST).await;
    let wrong_size = json!({"points": [{"id": 1, "vector": [1.0, 2.0], "payload": {}}]});
    let message =
        rest.fails(Method::PUT, "/collections/c/points", Some(wrong_size), StatusCode::BAD_REQUEST).await;
    assert!(message.contains("dimension"), "{message}");

    // What this server leaves out is refused by name, never answered wrongly.
    let recommend = json!({"query": {"recommend": {"positive": [1]}}});
    let message = rest
        .fails(Method::POST, "/collections/c/points/query", Some(recommend), StatusCode::NOT_IMPLEMENTED)
        .await;
    assert!(message.contains("recommend"), "{message}");
    let message = rest.fails(Method::GET, "/snapshots", None, StatusCode::NOT_FOUND).await;
    assert!(message.contains("/snapshots"), "{message}");
    let message = rest.fails(Method::PATCH, "/collections/c", None, StatusCode::METHOD_NOT_ALLOWED).await;
    assert!(message.contains("PATCH"), "{message}");

    // The server still works.
    let point = json!({"points": [{"id": 1, "vector": [1.0, 0.0, 0.0], "payload": {"ok": true}}]});
    rest.ok(Method::PUT, "/collections/c/points", Some(point)).await;
    assert_eq!(
        rest.ok(Method::POST, "/collections/c/points/count", Some(json!({}))).await,
        json!({"count": 1})
    );
    assert!(server.stop().success());
}
