//! `/openapi.json` documents exactly the routes served and every error code.

use testkit::kafka::Kafka;

use crate::common::Gateway;

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_matches_the_routes_served() {
    let kafka = Kafka::start(2).await;
    let gateway = Gateway::start(&kafka, &[]);
    let client = reqwest::Client::new();
    let response = client.get(gateway.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let doc: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    let served = [
        ("/chat", "post"),
        ("/stream", "get"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/openapi.json", "get"),
        ("/", "get"),
        ("/v1/chat/completions", "post"),
        ("/conversations", "get"),
        ("/conversations/{conversation_id}/messages", "get"),
        ("/conversations/{conversation_id}", "delete"),
        ("/memories", "get"),
        ("/memories", "delete"),
    ];
    let distinct: std::collections::BTreeSet<&str> = served.iter().map(|(p, _)| *p).collect();
    assert_eq!(paths.len(), distinct.len(), "documented paths: {:?}", paths.keys().collect::<Vec<_>>());
    for (path, method) in served {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} is not documented");
        // And the router serves it (unauthenticated calls get 401, not 404/405).
        let status = client
            .request(method.to_uppercase().parse().unwrap(), gateway.url(path))
            .send()
            .await
            .unwrap()
            .status();
        assert!(status != 404 && status != 405, "{method} {path} answered {status}");
    }
    let codes: Vec<&str> = doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
        ["enum"]
        .as_array()
        .expect("error codes")
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    for code in [
        "malformed_json",
        "invalid_body",
        "empty_text",
        "text_too_long",
        "body_too_large",
        "unauthorized",
        "unknown_conversation",
        "rate_limited",
        "unavailable",
        "invalid_cursor",
        "history_unavailable",
        "search_unavailable",
    ] {
        assert!(codes.contains(&code), "error code {code} is not documented");
    }
    // Metrics are on the admin port only, where no public route leads.
    let public = client.get(gateway.url("/metrics")).send().await.unwrap().status();
    assert_eq!(public, 404, "/metrics is not a public route");
    let admin = client.get(&gateway.metrics_url).send().await.unwrap();
    assert_eq!(admin.status(), 200);
    assert!(admin.text().await.unwrap().contains("gateway_http_requests_total"));
}
