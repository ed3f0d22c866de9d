//! What the internet sees: the Ingress (and the Gateway API alternative) serve the
//! public routes over TLS, and never the operators' endpoints.

use deploy_tests::{find, fixture, kind, name, yaml_file};
use serde_json::Value;

use crate::common::{all_objects, every_variant, must, variant_with_component};

/// What the gateway serves to clients (gateway/src/routes).
const PUBLIC: [&str; 12] = [
    "/",
    "/app.js",
    "/markdown.js",
    "/style.css",
    "/favicon.svg",
    "/chat",
    "/stream",
    "/openapi.json",
    "/v1/chat/completions",
    "/conversations",
    "/conversations/00000000-0000-0000-0000-000000000000/messages",
    "/memories",
];
/// What it serves to Prometheus and the kubelet only.
const PRIVATE: [&str; 3] = ["/metrics", "/health", "/ready"];

/// Whether a route of `path_type` (Ingress: Exact/Prefix; HTTPRoute: Exact/PathPrefix)
/// for `path` takes requests for `request`.
fn matches(path_type: &str, path: &str, request: &str) -> bool {
    match path_type {
        "Exact" => path == request,
        // Prefix matching is per path element: /v1 takes /v1/x, not /v1x.
        "Prefix" | "PathPrefix" | "ImplementationSpecific" => {
            let p = path.trim_end_matches('/');
            p.is_empty() || request == p || request.starts_with(&format!("{p}/"))
        }
        _ => true, // unknown: assume the worst
    }
}

/// The (path type, path) pairs through which the outside reaches the gateway.
fn routes(objects: &[Value]) -> Vec<(String, String, String)> {
    let mut all = Vec::new();
    for o in objects {
        let label = format!("{} {}", kind(o), name(o));
        match kind(o) {
            "Ingress" => {
                for rule in o["spec"]["rules"].as_array().into_iter().flatten() {
                    for p in rule["http"]["paths"].as_array().into_iter().flatten() {
                        let t = p["pathType"].as_str().unwrap_or("").to_string();
                        all.push((label.clone(), t, p["path"].as_str().unwrap_or("/").to_string()));
                    }
                }
                if o["spec"]["defaultBackend"].is_object() {
                    all.push((label.clone(), "Prefix".into(), "/".into()));
                }
            }
            "HTTPRoute" => {
                for rule in o["spec"]["rules"].as_array().into_iter().flatten() {
                    let ms = rule["matches"].as_array().cloned().unwrap_or_default();
                    if ms.is_empty() {
                        all.push((label.clone(), "PathPrefix".into(), "/".into()));
                        // no match: everything
                    }
                    for m in ms {
                        let t = m["path"]["type"].as_str().unwrap_or("PathPrefix").to_string();
                        all.push((label.clone(), t, m["path"]["value"].as_str().unwrap_or("/").to_string()));
                    }
                }
            }
            _ => {}
        }
    }
    all
}

/// Seconds of a Gateway API duration ("1h", "30m", "1h30m", "500ms").
fn seconds(duration: &str) -> f64 {
    let mut total = 0.0;
    let mut number = String::new();
    let mut chars = duration.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: f64 = number.parse().unwrap_or(0.0);
        number.clear();
        total += match (c, chars.peek()) {
            ('m', Some('s')) => {
                chars.next();
                n / 1000.0
            }
            ('h', _) => n * 3600.0,
            ('m', _) => n * 60.0,
            _ => n,
        };
    }
    total
}

/// Everything wrong with how `objects` expose the gateway: a private endpoint routed,
/// a public one missing, no TLS, SSE timeouts too short. One line per problem.
fn exposure_problems(objects: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let routes = routes(objects);
    if routes.is_empty() {
        problems.push("nothing routes to the gateway".into());
    }
    for request in PRIVATE {
        for (label, t, path) in routes.iter().filter(|(_, t, p)| matches(t, p, request)) {
            problems.push(format!("{label}: {t} {path} exposes {request}"));
        }
    }
    for request in PUBLIC {
        if !routes.iter().any(|(_, t, p)| matches(t, p, request)) {
            problems.push(format!("{request} is not routed"));
        }
    }
    for o in objects {
        match kind(o) {
            "Ingress" => {
                let hosts: Vec<&Value> =
                    o["spec"]["rules"].as_array().into_iter().flatten().map(|r| &r["host"]).collect();
                let tls = o["spec"]["tls"].as_array().cloned().unwrap_or_default();
                for h in hosts {
                    let covered = tls.iter().any(|t| {
                        t["secretName"].is_string() && t["hosts"].as_array().is_some_and(|hs| hs.contains(h))
                    });
                    if !covered {
                        problems.push(format!("Ingress {}: host {h} without a TLS Secret", name(o)));
                    }
                }
            }
            "Gateway" => {
                for l in o["spec"]["listeners"].as_array().into_iter().flatten() {
                    if l["protocol"] != "HTTPS" || l["tls"]["certificateRefs"][0]["name"].as_str().is_none() {
                        problems.push(format!("Gateway {}: listener {} without TLS", name(o), l["name"]));
                    }
                }
            }
            "HTTPRoute" => {
                for rule in o["spec"]["rules"].as_array().into_iter().flatten() {
                    let streams = rule["matches"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|m| m["path"]["value"] == "/stream");
                    let t = &rule["timeouts"];
                    let request = t["request"].as_str().map(seconds);
                    let backend = t["backendRequest"].as_str().map(seconds);
                    if let (Some(r), Some(b)) = (request, backend) {
                        if r != 0.0 && b > r {
                            problems.push(format!("HTTPRoute {}: backendRequest > request", name(o)));
                        }
                    }
                    if streams && !request.is_some_and(|r| r == 0.0 || r >= 300.0) {
                        problems.push(format!(
                            "HTTPRoute {}: /stream needs a request timeout of at least 300 s (got {})",
                            name(o),
                            t["request"]
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    problems
}

#[test]
fn the_ingress_serves_the_public_routes_over_tls_and_never_metrics() {
    for (variant, objects) in every_variant() {
        let problems = exposure_problems(&objects);
        assert!(problems.is_empty(), "{variant}:\n{}", problems.join("\n"));
    }
    let ingress = must(find(&all_objects(), "Ingress", "gateway")).clone();
    assert_eq!(ingress["spec"]["tls"][0]["secretName"], "gateway-tls", "the Secret the README names");
}

#[test]
fn the_gateway_api_alternative_routes_the_same_with_sse_safe_timeouts() {
    let objects = variant_with_component("ollama", "gateway-api");
    assert!(!objects.iter().any(|o| kind(o) == "Ingress"), "the HTTPRoute replaces the Ingress");
    let route = must(find(&objects, "HTTPRoute", "gateway"));
    let gw = must(find(&objects, "Gateway", "chat-stack"));
    assert_eq!(route["spec"]["parentRefs"][0]["name"], name(gw));
    assert_eq!(gw["spec"]["listeners"][0]["tls"]["certificateRefs"][0]["name"], "gateway-tls");
    for rule in route["spec"]["rules"].as_array().expect("rules") {
        for b in rule["backendRefs"].as_array().expect("backendRefs") {
            assert_eq!(b["name"], "gateway");
            assert_eq!(b["port"], 80, "the Service's port");
        }
    }
    let problems = exposure_problems(&objects);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_exposure_check_rejects_a_catch_all_route_without_tls() {
    let objects = must(yaml_file(&fixture("broken-exposure.yaml")));
    let problems = exposure_problems(&objects);
    for expected in
        ["exposes /metrics", "without a TLS Secret", "needs a request timeout", "backendRequest > request"]
    {
        assert!(problems.iter().any(|p| p.contains(expected)), "{expected:?} not reported: {problems:?}");
    }
}
