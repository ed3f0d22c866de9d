//! End to end: the built server binary, driven by the real `qdrant-client`, through the
//! calls the chatbot's memory makes, including restarts on the same data dir.

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use qdrant_client::qdrant::{
    point_id::PointIdOptions, Condition, CountPointsBuilder, CreateCollectionBuilder,
    CreateFieldIndexCollectionBuilder, DeletePointsBuilder, Direction, Distance, FieldType, Filter,
    GetPointsBuilder, OrderByBuilder, PayloadSchemaType, PointId, PointStruct, PointsIdsList, Query,
    QueryPointsBuilder, RecommendPointsBuilder, ScoredPoint, ScrollPointsBuilder, SearchPointsBuilder,
    UpsertPointsBuilder, VectorParamsBuilder,
};
use qdrant_client::{Qdrant, QdrantError};
use serde_json::json;
use uuid::Uuid;

mod common;

use common::{Server, STEP};

const COLLECTION: &str = "memories";

/// Awaits one client call with a deadline and fails the test on error.
async fn step<T>(what: &str, call: impl Future<Output = Result<T, QdrantError>>) -> T {
    match tokio::time::timeout(STEP, call).await {
        Ok(Ok(value)) => value,
        Ok(Err(err)) => panic!("{what} failed: {err}"),
        Err(_) => panic!("{what} did not finish within {STEP:?}"),
    }
}

/// The product's point ids: UUID v5 of message id + role.
fn point_id(message_id: &str, role: &str) -> String {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("{message_id}:{role}").as_bytes()).to_string()
}

struct Memory {
    message_id: &'static str,
    role: &'static str,
    user: &'static str,
    conversation: &'static str,
    vector: [f32; 4],
}

const MEMORIES: [Memory; 5] = [
    Memory { message_id: "m1", role: "user", user: "a", conversation: "c1", vector: [1.0, 0.0, 0.0, 0.0] },
    Memory {
        message_id: "m1",
        role: "assistant",
        user: "a",
        conversation: "c1",
        vector: [0.8, 0.2, 0.0, 0.0],
    },
    Memory { message_id: "m2", role: "user", user: "a", conversation: "c2", vector: [0.0, 0.0, 1.0, 0.0] },
    // User b holds the best match of all: a filter that leaks would rank it first.
    Memory { message_id: "m3", role: "user", user: "b", conversation: "c3", vector: [1.0, 0.0, 0.0, 0.0] },
    Memory { message_id: "m4", role: "user", user: "b", conversation: "c3", vector: [0.9, 0.1, 0.0, 0.0] },
];

fn id_of(m: &Memory) -> String {
    point_id(m.message_id, m.role)
}

fn points() -> Vec<PointStruct> {
    MEMORIES
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let payload = json!({
                "conversation_id": m.conversation,
                "user_id": m.user,
                "role": m.role,
                "text": format!("text of {} {}", m.message_id, m.role),
                "ts": 1_700_000_000 + i as i64,
                "message_id": m.message_id,
            });
            PointStruct::new(
                id_of(m),
                m.vector.to_vec(),
                qdrant_client::Payload::try_from(payload).expect("payload is an object"),
            )
        })
        .collect()
}

fn uuid_of(id: &Option<PointId>) -> String {
    match id.as_ref().and_then(|id| id.point_id_options.clone()) {
        Some(PointIdOptions::Uuid(uuid)) => uuid,
        other => panic!("expected a UUID point id, got {other:?}"),
    }
}

fn user_filter(user: &str) -> Filter {
    Filter::must([Condition::matches("user_id", user.to_string())])
}

fn payload_str(point: &ScoredPoint, key: &str) -> String {
    point
        .payload
        .get(key)
        .and_then(|v| v.as_str().cloned())
        .unwrap_or_else(|| panic!("payload of {:?} has no string {key}", point.id))
}

async fn count(client: &Qdrant, filter: Option<Filter>) -> u64 {
    let mut request = CountPointsBuilder::new(COLLECTION).exact(true);
    if let Some(filter) = filter {
        request = request.filter(filter);
    }
    step("count", client.count(request)).await.result.expect("count result").count
}

/// Nearest to [1,0,0,0] among user a's memories.
async fn query_user_a(client: &Qdrant) -> Vec<ScoredPoint> {
    let request = QueryPointsBuilder::new(COLLECTION)
        .query(Query::new_nearest(vec![1.0, 0.0, 0.0, 0.0]))
        .filter(user_filter("a"))
        .limit(10)
        .with_payload(true);
    step("filtered query", client.query(request)).await.result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_calls_round_trip_and_survive_restarts() {
    let data = tempfile::tempdir().expect("temp dir");
    let server = Server::start(data.path());
    let client = server.client();

    let health = step("health check", client.health_check()).await;
    assert!(!health.version.is_empty(), "health check reports a version");

    step(
        "create collection",
        client.create_collection(
            CreateCollectionBuilder::new(COLLECTION)
                .vectors_config(VectorParamsBuilder::new(4, Distance::Cosine)),
        ),
    )
    .await;
    assert!(step("collection_exists", client.collection_exists(COLLECTION)).await);
    assert!(!step("collection_exists (missing)", client.collection_exists("nope")).await);
    let again = client
        .create_collection(
            CreateCollectionBuilder::new(COLLECTION)
                .vectors_config(VectorParamsBuilder::new(4, Distance::Cosine)),
        )
        .await;
    assert!(again.is_err(), "creating an existing collection must fail");

    // Keyword indexes for the filters, an integer one for ordering by time.
    let indexes = [
        ("conversation_id", FieldType::Keyword),
        ("user_id", FieldType::Keyword),
        ("ts", FieldType::Integer),
    ];
    for (field, kind) in indexes {
        step(
            "create field index",
            client.create_field_index(
                CreateFieldIndexCollectionBuilder::new(COLLECTION, field, kind).wait(true),
            ),
        )
        .await;
    }

    step("upsert", client.upsert_points(UpsertPointsBuilder::new(COLLECTION, points()).wait(true))).await;
    // Upserting the same ids again overwrites instead of duplicating.
    step("re-upsert", client.upsert_points(UpsertPointsBuilder::new(COLLECTION, points()).wait(true))).await;

    let info =
        step("collection info", client.collection_info(COLLECTION)).await.result.expect("collection info");
    assert_eq!(info.points_count, Some(5));
    assert!(info.indexed_vectors_count.is_some() && info.segments_count > 0);
    assert!(info.optimizer_status.as_ref().is_some_and(|s| s.ok));
    // Clients in other languages reject an info without these (a real Qdrant always
    // sets them).
    let config = info.config.as_ref().expect("config");
    let params = config.params.as_ref().expect("params");
    assert!(params.vectors_config.is_some() && params.shard_number == 1);
    let hnsw = config.hnsw_config.as_ref().expect("hnsw_config");
    assert!(hnsw.m.is_some() && hnsw.ef_construct.is_some() && hnsw.full_scan_threshold.is_some());
    let optimizer = config.optimizer_config.as_ref().expect("optimizer_config");
    assert!(optimizer.deleted_threshold.is_some() && optimizer.vacuum_min_vector_number.is_some());
    assert!(optimizer.default_segment_number.is_some() && optimizer.flush_interval_sec.is_some());
    let wal = config.wal_config.as_ref().expect("wal_config");
    assert!(wal.wal_capacity_mb.is_some() && wal.wal_segments_ahead.is_some());
    for (field, kind) in indexes {
        let schema = info
            .payload_schema
            .get(field)
            .unwrap_or_else(|| panic!("no payload index on {field}: {:?}", info.payload_schema));
        let expected = match kind {
            FieldType::Integer => PayloadSchemaType::Integer,
            _ => PayloadSchemaType::Keyword,
        };
        assert_eq!(schema.data_type, expected as i32, "index type of {field}");
    }

    // Filtered query: only user a, best match first.
    let hits = query_user_a(&client).await;
    let expected: Vec<String> = MEMORIES[..3].iter().map(id_of).collect();
    let got: Vec<String> = hits.iter().map(|p| uuid_of(&p.id)).collect();
    assert_eq!(got, expected, "user a's memories ranked by similarity");
    assert!(hits.iter().all(|p| payload_str(p, "user_id") == "a"));
    assert!((hits[0].score - 1.0).abs() < 1e-4, "identical vector scores 1");
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    assert_eq!(payload_str(&hits[0], "text"), "text of m1 user");

    // Limit, offset and score threshold are honoured.
    let page = step(
        "query with offset",
        client.query(
            QueryPointsBuilder::new(COLLECTION)
                .query(Query::new_nearest(vec![1.0, 0.0, 0.0, 0.0]))
                .filter(user_filter("a"))
                .limit(1)
                .offset(1),
        ),
    )
    .await
    .result;
    assert_eq!(page.iter().map(|p| uuid_of(&p.id)).collect::<Vec<_>>(), vec![id_of(&MEMORIES[1])]);
    assert!(page[0].payload.is_empty(), "query returns no payload unless asked");
    let close = step(
        "query with score threshold",
        client.query(
            QueryPointsBuilder::new(COLLECTION)
                .query(Query::new_nearest(vec![1.0, 0.0, 0.0, 0.0]))
                .filter(user_filter("a"))
                .score_threshold(0.5),
        ),
    )
    .await
    .result;
    assert_eq!(close.len(), 2, "the orthogonal memory is below the threshold");

    // The older Search call goes through the same engine path.
    let searched = step(
        "search",
        client.search_points(
            SearchPointsBuilder::new(COLLECTION, vec![1.0, 0.0, 0.0, 0.0], 2)
                .filter(user_filter("b"))
                .with_payload(true),
        ),
    )
    .await
    .result;
    assert_eq!(
        searched.iter().map(|p| uuid_of(&p.id)).collect::<Vec<_>>(),
        vec![id_of(&MEMORIES[3]), id_of(&MEMORIES[4])]
    );

    assert_eq!(count(&client, None).await, 5);
    assert_eq!(count(&client, Some(user_filter("a"))).await, 3);
    let c1_of_a = Filter::must([
        Condition::matches("user_id", "a".to_string()),
        Condition::matches("conversation_id", "c1".to_string()),
    ]);
    assert_eq!(count(&client, Some(c1_of_a)).await, 2);
    let not_assistant = Filter::must_not([Condition::matches("role", "assistant".to_string())]);
    assert_eq!(count(&client, Some(not_assistant)).await, 4);

    // Scroll a conversation one point per page, following next_page_offset.
    let conversation = Filter::must([Condition::matches("conversation_id", "c3".to_string())]);
    let mut seen = HashSet::new();
    let mut offset: Option<PointId> = None;
    for _ in 0..5 {
        let mut request =
            ScrollPointsBuilder::new(COLLECTION).filter(conversation.clone()).limit(1).with_payload(true);
        if let Some(offset) = offset.take() {
            request = request.offset(offset);
        }
        let page = step("scroll", client.scroll(request)).await;
        for point in &page.result {
            assert_eq!(
                point.payload.get("conversation_id").and_then(|v| v.as_str().cloned()),
                Some("c3".to_string())
            );
            assert!(seen.insert(uuid_of(&point.id)), "scroll pages do not repeat");
        }
        match page.next_page_offset {
            Some(next) => offset = Some(next),
            None => break,
        }
    }
    let expected: HashSet<String> = MEMORIES[3..].iter().map(id_of).collect();
    assert_eq!(seen, expected, "scroll returns exactly the conversation's points");

    // A conversation's recent turns: newest first, by the integer-indexed `ts`.
    let recent = step(
        "scroll ordered by ts",
        client.scroll(
            ScrollPointsBuilder::new(COLLECTION)
                .filter(Filter::must([Condition::matches("conversation_id", "c1".to_string())]))
                .order_by(OrderByBuilder::new("ts").direction(Direction::Desc as i32))
                .limit(10)
                .with_payload(true),
        ),
    )
    .await
    .result;
    assert_eq!(
        recent.iter().map(|p| uuid_of(&p.id)).collect::<Vec<_>>(),
        vec![id_of(&MEMORIES[1]), id_of(&MEMORIES[0])],
        "newest turn first"
    );
    // The same through Query: an order_by query, and a query-less one (a filtered scroll).
    let newest = step(
        "query ordered by ts",
        client.query(
            QueryPointsBuilder::new(COLLECTION)
                .query(Query::new_order_by(OrderByBuilder::new("ts").direction(Direction::Desc as i32)))
                .filter(Filter::must([Condition::matches("conversation_id", "c1".to_string())]))
                .limit(1),
        ),
    )
    .await
    .result;
    assert_eq!(newest.iter().map(|p| uuid_of(&p.id)).collect::<Vec<_>>(), vec![id_of(&MEMORIES[1])]);
    let all_of_a = step(
        "query without a query",
        client.query(QueryPointsBuilder::new(COLLECTION).filter(user_filter("a")).limit(10)),
    )
    .await
    .result;
    let all_of_a: HashSet<String> = all_of_a.iter().map(|p| uuid_of(&p.id)).collect();
    assert_eq!(all_of_a, MEMORIES[..3].iter().map(id_of).collect::<HashSet<_>>());

    // Get by id, with payload.
    let got = step(
        "get points",
        client.get_points(
            GetPointsBuilder::new(COLLECTION, vec![PointId::from(id_of(&MEMORIES[2]))]).with_payload(true),
        ),
    )
    .await
    .result;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload.get("message_id").and_then(|v| v.as_str().cloned()), Some("m2".to_string()));

    // Delete one point by id, and user b's points by filter.
    step(
        "delete by id",
        client.delete_points(
            DeletePointsBuilder::new(COLLECTION)
                .points(PointsIdsList::from(vec![PointId::from(id_of(&MEMORIES[2]))]))
                .wait(true),
        ),
    )
    .await;
    step(
        "delete by filter",
        client.delete_points(DeletePointsBuilder::new(COLLECTION).points(user_filter("b")).wait(true)),
    )
    .await;
    assert_eq!(count(&client, None).await, 2);
    assert_eq!(count(&client, Some(user_filter("b"))).await, 0);

    // Methods outside the supported subset say so.
    let refused =
        client.recommend(RecommendPointsBuilder::new(COLLECTION, 3).add_positive(PointId::from(1_u64))).await;
    match refused {
        Err(QdrantError::ResponseError { status }) => {
            assert_eq!(status.code(), tonic::Code::Unimplemented);
            assert!(status.message().contains("Recommend"), "{}", status.message());
        }
        other => panic!("recommend must be unimplemented, got {other:?}"),
    }

    // A clean stop flushes; a restart on the same data dir sees the same data. The
    // client stays connected, as the product's does when the server restarts under it.
    let stopping = Instant::now();
    let status = server.stop();
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "an idle client connection must not hold up shutdown (took {:?})",
        stopping.elapsed()
    );
    drop(client);
    assert!(status.success(), "server exits cleanly on SIGTERM: {status}");

    let server = Server::start(data.path());
    let client = server.client();
    assert!(step("collection_exists after restart", client.collection_exists(COLLECTION)).await);
    assert_eq!(count(&client, None).await, 2);
    let hits = query_user_a(&client).await;
    let expected: Vec<String> = MEMORIES[..2].iter().map(id_of).collect();
    assert_eq!(hits.iter().map(|p| uuid_of(&p.id)).collect::<Vec<_>>(), expected);
    assert_eq!(payload_str(&hits[1], "role"), "assistant");
    let info = step("collection info after restart", client.collection_info(COLLECTION))
        .await
        .result
        .expect("collection info");
    assert!(info.payload_schema.contains_key("user_id"), "payload index survives restart");

    // An acknowledged write survives even a kill -9: it is flushed before the reply.
    let late = PointStruct::new(
        point_id("m5", "user"),
        vec![0.0, 1.0, 0.0, 0.0],
        qdrant_client::Payload::try_from(json!({"user_id": "a", "conversation_id": "c1"}))
            .expect("payload is an object"),
    );
    step(
        "upsert after restart",
        client.upsert_points(UpsertPointsBuilder::new(COLLECTION, vec![late]).wait(true)),
    )
    .await;
    drop(client);
    drop(server); // SIGKILL

    let server = Server::start(data.path());
    let client = server.client();
    assert_eq!(count(&client, Some(user_filter("a"))).await, 3);

    step("delete collection", client.delete_collection(COLLECTION)).await;
    assert!(!step("collection_exists after delete", client.collection_exists(COLLECTION)).await);
    let names = step("list collections", client.list_collections()).await;
    assert!(names.collections.is_empty(), "{:?}", names.collections);
    drop(client);
    assert!(server.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_leave_the_server_working() {
    let data = tempfile::tempdir().expect("temp dir");
    let server = Server::start(data.path());
    let client = server.client();
    step(
        "create collection",
        client.create_collection(
            CreateCollectionBuilder::new(COLLECTION)
                .vectors_config(VectorParamsBuilder::new(4, Distance::Dot)),
        ),
    )
    .await;

    let code_of = |result: Result<_, QdrantError>| match result {
        Err(QdrantError::ResponseError { status }) => status.code(),
        Err(other) => panic!("expected a gRPC status, got {other}"),
        Ok(_) => panic!("expected an error"),
    };

    let wrong_size = PointStruct::new(1_u64, vec![1.0, 2.0], qdrant_client::Payload::new());
    let upsert =
        client.upsert_points(UpsertPointsBuilder::new(COLLECTION, vec![wrong_size]).wait(true)).await;
    assert_eq!(code_of(upsert.map(|_| ())), tonic::Code::InvalidArgument, "wrong vector size");

    let query = client.query(QueryPointsBuilder::new(COLLECTION).query(Query::new_nearest(vec![1.0]))).await;
    assert_eq!(code_of(query.map(|_| ())), tonic::Code::InvalidArgument, "wrong query size");

    let missing = client.count(CountPointsBuilder::new("missing")).await;
    assert_eq!(code_of(missing.map(|_| ())), tonic::Code::NotFound, "unknown collection");

    let bad_name = client
        .create_collection(
            CreateCollectionBuilder::new("../escape")
                .vectors_config(VectorParamsBuilder::new(4, Distance::Dot)),
        )
        .await;
    assert_eq!(code_of(bad_name.map(|_| ())), tonic::Code::InvalidArgument, "path-like name");
    assert!(!data.path().parent().expect("temp dir has a parent").join("escape").exists());

    let unordered =
        client.scroll(ScrollPointsBuilder::new(COLLECTION).order_by(OrderByBuilder::new("ts"))).await;
    assert_eq!(code_of(unordered.map(|_| ())), tonic::Code::InvalidArgument, "order_by needs an index");

    // Still serving: a valid write and read go through.
    let good = PointStruct::new(1_u64, vec![1.0, 0.0, 0.0, 0.0], qdrant_client::Payload::new());
    step("upsert", client.upsert_points(UpsertPointsBuilder::new(COLLECTION, vec![good]).wait(true))).await;
    assert_eq!(count(&client, None).await, 1);
    drop(client);
    assert!(server.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_and_reads_are_all_applied() {
    let data = tempfile::tempdir().expect("temp dir");
    let server = Server::start(data.path());
    let client = std::sync::Arc::new(server.client());
    step(
        "create collection",
        client.create_collection(
            CreateCollectionBuilder::new(COLLECTION)
                .vectors_config(VectorParamsBuilder::new(4, Distance::Cosine)),
        ),
    )
    .await;

    const WRITERS: u64 = 4;
    const PER_WRITER: u64 = 25;
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                let id = writer * PER_WRITER + i;
                let payload = json!({ "user_id": format!("u{writer}"), "n": id });
                let point = PointStruct::new(
                    id,
                    vec![1.0, id as f32, 0.5, 0.0],
                    qdrant_client::Payload::try_from(payload).expect("payload is an object"),
                );
                step(
                    "concurrent upsert",
                    client.upsert_points(UpsertPointsBuilder::new(COLLECTION, vec![point])),
                )
                .await;
                // Reads interleave with the writes of the other tasks.
                let mine = count(&client, Some(user_filter(&format!("u{writer}")))).await;
                assert_eq!(mine, i + 1, "writer {writer} sees each of its writes at once");
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("writers finish within 120 s")
            .expect("writer task succeeded");
    }
    assert_eq!(count(&client, None).await, WRITERS * PER_WRITER);
    drop(client);
    assert!(server.stop().success());
}
