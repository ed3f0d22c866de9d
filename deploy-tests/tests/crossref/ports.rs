//! Ports and probes: the ones the binaries serve, and an ingress ready for server-sent events.

use std::{collections::BTreeMap, fs};

use deploy_tests::{containers, find, name, pod_template, port_of, repo_path, resolve_port};

use crate::common::{all_objects, config, k8s, must, our_workloads, stage_text};

fn assert_served(routes_dir: &str, paths: &[&str]) {
    let mut code = String::new();
    let mut stack = vec![repo_path(routes_dir)];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                code.push_str(&fs::read_to_string(&p).expect("read source"));
            }
        }
    }
    for path in paths {
        assert!(code.contains(&format!(".route(\"{path}\"")), "{routes_dir} serves no {path}");
    }
}

#[test]
fn ports_and_probe_paths_are_the_ones_the_binaries_serve() {
    let objects = all_objects();
    let cm = config(&objects);
    assert_served("gateway/src", &["/health", "/ready"]);
    assert_served("handlers/src", &["/health", "/ready"]);
    // /metrics is served by platform::prometheus on METRICS_LISTEN_ADDR, the admin port.
    let admin = must(port_of(cm.get("METRICS_LISTEN_ADDR").map_or("0.0.0.0:9091", String::as_str)));
    assert_eq!(admin, platform::prometheus::DEFAULT_PORT);
    let expected: BTreeMap<&str, u16> = BTreeMap::from([
        ("gateway", must(port_of(cm.get("LISTEN_ADDR").map_or("0.0.0.0:8080", String::as_str)))),
        ("responder", must(port_of(cm.get("HANDLER_LISTEN_ADDR").map_or("0.0.0.0:9090", String::as_str)))),
        ("memory", must(port_of(cm.get("HANDLER_LISTEN_ADDR").map_or("0.0.0.0:9090", String::as_str)))),
    ]);
    assert_eq!(expected["gateway"], 8080);
    assert_eq!(expected["responder"], 9090);

    let mut checked = 0;
    for w in our_workloads(&objects) {
        if w.container["args"][0] == "init" {
            assert!(w.container["ports"].is_null(), "{}: the init Job serves nothing", w.label);
            continue;
        }
        let port = expected[w.binary.as_str()];
        let declared: Vec<(&str, u64)> = w.container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["name"].as_str()?, p["containerPort"].as_u64()?)))
            .collect();
        assert_eq!(
            declared,
            vec![("http", u64::from(port)), ("metrics", u64::from(admin))],
            "{}: container ports",
            w.label
        );
        // Job pods (ScaledJob) serve no traffic: only liveness is required there.
        let is_job = w.label.starts_with("ScaledJob");
        for (probe, path) in
            [("livenessProbe", "/health"), ("readinessProbe", "/ready"), ("startupProbe", "/health")]
        {
            if w.container[probe].is_null()
                && (probe == "startupProbe" || (is_job && probe == "readinessProbe"))
            {
                continue;
            }
            let get = &w.container[probe]["httpGet"];
            assert_eq!(get["path"], path, "{}: {probe} path", w.label);
            assert_eq!(must(resolve_port(&w.container, &get["port"])), port, "{}: {probe} port", w.label);
        }
        checked += 1;
    }
    assert!(checked >= 3, "expected the gateway and both handlers");

    // Prometheus annotations point at /metrics on a declared port (ours: the admin port).
    for obj in &objects {
        let Some(template) = pod_template(obj) else { continue };
        let ann = &template["metadata"]["annotations"];
        if ann["prometheus.io/scrape"] != "true" {
            continue;
        }
        let c = &containers(&template["spec"]).into_iter().last().cloned().expect("a container");
        let port: u16 =
            ann["prometheus.io/port"].as_str().and_then(|p| p.parse().ok()).expect("prometheus.io/port");
        let ports: Vec<u64> =
            c["ports"].as_array().into_iter().flatten().filter_map(|p| p["containerPort"].as_u64()).collect();
        assert!(
            ports.contains(&u64::from(port)),
            "{}: prometheus.io/port {port} is not a container port",
            name(obj)
        );
        assert_eq!(ann["prometheus.io/path"], "/metrics", "{}", name(obj));
        if c["image"].as_str().is_some_and(|i| i.starts_with("localhost/chat-stack-")) {
            assert_eq!(port, admin, "{}: our /metrics is on the admin port", name(obj));
        }
    }
    for w in our_workloads(&objects).into_iter().filter(|w| w.container["args"][0] != "init") {
        assert!(
            w.pod["terminationGracePeriodSeconds"].as_u64().is_some(),
            "{}: terminationGracePeriodSeconds must be explicit",
            w.label
        );
    }

    // The Service reaches the gateway's port; the Ingress reaches the Service.
    let svc = must(find(&objects, "Service", "gateway"));
    let gateway = our_workloads(&objects)
        .into_iter()
        .find(|w| w.label.starts_with("Deployment gateway"))
        .expect("gateway");
    assert_eq!(must(resolve_port(&gateway.container, &svc["spec"]["ports"][0]["targetPort"])), 8080);
    let ingress = must(find(&objects, "Ingress", "gateway"));
    let backend = &ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"];
    assert_eq!(backend["name"], "gateway");
    assert_eq!(backend["port"]["name"], svc["spec"]["ports"][0]["name"]);

    // And the images expose the same ports.
    let dockerfile = fs::read_to_string(repo_path("Dockerfile")).expect("Dockerfile");
    for (target, port) in [("gateway", 8080), ("handler-base", 9090)] {
        let stage = stage_text(&dockerfile, target);
        let expose = format!("EXPOSE {port} {admin}");
        assert!(stage.contains(&expose), "Dockerfile stage {target} must {expose}");
    }
}

#[test]
fn ingress_is_ready_for_server_sent_events() {
    let objects = k8s();
    let cm = config(&objects);
    let ingress = must(find(&objects, "Ingress", "gateway"));
    let ann = &ingress["metadata"]["annotations"];
    assert_eq!(ann["nginx.ingress.kubernetes.io/proxy-buffering"], "off", "SSE events must not be buffered");
    let heartbeat: u64 = cm["SSE_HEARTBEAT_SECS"].parse().expect("SSE_HEARTBEAT_SECS");
    for key in
        ["nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout"]
    {
        let secs: u64 = ann[key].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
        assert!(secs >= 300 && secs > heartbeat * 4, "{key} = {secs}s is too short for idle SSE streams");
    }
    assert_eq!(ingress["spec"]["rules"][0]["host"], "chat.local.test");
}
