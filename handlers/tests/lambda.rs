//! The invoke entry through the AWS Lambda runtime API contract: the `memory` binary
//! runs `lambda` against a stand-in of the runtime API (the real one exists only inside
//! AWS), which hands it API Gateway HTTP events and collects its responses.

mod common;

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::{get, post},
    Router,
};
use common::handler_env;
use platform::{
    events::{memory_point_id, Role, UserMessage},
    topics,
};
use serde_json::{json, Value};
use testkit::{kafka::Kafka, QdrantServer};
use tokio::sync::{mpsc, Mutex};
use uuid::Uuid;

const MEMORY: &str = env!("CARGO_BIN_EXE_memory");

/// Runtime API stand-in: queued events out, responses in.
#[derive(Clone)]
struct RuntimeApi {
    events: Arc<Mutex<mpsc::Receiver<(String, Value)>>>,
    responses: mpsc::Sender<(String, Value)>,
}

async fn next(State(api): State<RuntimeApi>) -> impl IntoResponse {
    let Some((id, event)) = api.events.lock().await.recv().await else {
        return (StatusCode::GONE, HeaderMap::new(), String::new());
    };
    let mut headers = HeaderMap::new();
    let deadline = (std::time::SystemTime::now() + Duration::from_secs(60))
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    headers.insert("lambda-runtime-aws-request-id", id.parse().expect("header"));
    headers.insert("lambda-runtime-deadline-ms", deadline.to_string().parse().expect("header"));
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:eu-west-1:123456789012:function:memory".parse().expect("header"),
    );
    headers.insert(
        "lambda-runtime-trace-id",
        "Root=1-5759e988-bd862e3fe1be46a994272793".parse().expect("header"),
    );
    (StatusCode::OK, headers, event.to_string())
}

async fn respond(State(api): State<RuntimeApi>, Path(id): Path<String>, body: String) -> StatusCode {
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    let _ = api.responses.send((id, value)).await;
    StatusCode::ACCEPTED
}

async fn error(State(api): State<RuntimeApi>, Path(id): Path<String>, body: String) -> StatusCode {
    let _ = api.responses.send((id, json!({"runtime_error": body}))).await;
    StatusCode::ACCEPTED
}

/// An API Gateway HTTP API (payload 2.0) event POSTing `body` to /invoke.
fn http_event(body: &str) -> Value {
    json!({
        "version": "2.0", "routeKey": "POST /invoke", "rawPath": "/invoke", "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": {
            "accountId": "123456789012", "apiId": "api", "domainName": "api.example.com", "domainPrefix": "api",
            "http": {"method": "POST", "path": "/invoke", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "test"},
            "requestId": "r", "routeKey": "POST /invoke", "stage": "$default",
            "time": "25/Nov/2026:18:00:00 +0000", "timeEpoch": 1_790_000_000_000_u64
        },
        "body": body, "isBase64Encoded": false
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lambda_entry_answers_a_batch_through_the_runtime_api() {
    let (kafka, qdrant) = (Kafka::start(1).await, QdrantServer::start().expect("qdrant"));
    let (event_tx, event_rx) = mpsc::channel(4);
    let (response_tx, mut response_rx) = mpsc::channel(4);
    let api = RuntimeApi { events: Arc::new(Mutex::new(event_rx)), responses: response_tx };
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route("/2018-06-01/runtime/invocation/{id}/response", post(respond))
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut env: HashMap<String, String> = handler_env(&kafka, &qdrant.url());
    for (k, v) in [
        ("AWS_LAMBDA_RUNTIME_API", addr.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", "memory".into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        ("HANDLER_MAX_RECORD_BYTES", "2048".into()),
    ] {
        env.insert(k.into(), v);
    }
    let _lambda = common::HandlerProcess::start_with("memory-lambda", MEMORY, &["lambda"], &env, false);

    let msg = UserMessage::new(Uuid::new_v4(), "alice", "I was born in Lisbon.");
    let batch = json!({"records": [
        {"topic": topics::USER_MESSAGES, "key": msg.conversation_id.to_string(), "value": msg,
         "headers": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}},
        {"topic": topics::USER_MESSAGES, "key": "x", "value": {"v": 1, "nonsense": true}},
        {"topic": topics::USER_MESSAGES, "key": "y", "value": {"v": 1, "text": "x".repeat(3000)}},
    ]});
    event_tx.send(("req-1".into(), http_event(&batch.to_string()))).await.expect("queue event");
    let (id, response) = tokio::time::timeout(Duration::from_secs(60), response_rx.recv())
        .await
        .expect("a response within 60 s")
        .expect("response");
    assert_eq!(id, "req-1");
    assert_eq!(response["statusCode"], 200, "{response}");
    assert_eq!(response["isBase64Encoded"], false, "{response}");
    let body: Value = serde_json::from_str(response["body"].as_str().expect("body text")).expect("JSON body");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 3, "{body}");
    assert_eq!(results[0]["status"], "ok", "{body}");
    let output = &results[0]["outputs"][0];
    assert_eq!(output["topic"], topics::MEMORY_EVENTS);
    assert_eq!(output["value"]["point_id"], memory_point_id(msg.message_id, Role::User).to_string());
    assert_eq!(results[1]["status"], "dead_letter", "{body}");
    assert!(results[1]["error"].as_str().expect("error").contains("cannot decode"), "{body}");
    // Over HANDLER_MAX_RECORD_BYTES: refused undecoded, as the Kafka loop refuses it.
    assert_eq!(results[2]["status"], "dead_letter", "{body}");
    assert!(
        results[2]["error"].as_str().expect("error").contains("over HANDLER_MAX_RECORD_BYTES (2048)"),
        "{body}"
    );

    // A malformed batch is the caller's error, said plainly.
    event_tx.send(("req-2".into(), http_event("{\"records\": 5}"))).await.expect("queue event");
    let (_, response) = tokio::time::timeout(Duration::from_secs(30), response_rx.recv())
        .await
        .expect("response")
        .expect("response");
    assert_eq!(response["statusCode"], 400, "{response}");
    assert!(response["body"].as_str().expect("body").contains("invalid_batch"), "{response}");
}
