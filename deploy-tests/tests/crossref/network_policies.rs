//! NetworkPolicies: they allow the stack's flows and nothing else, and every pod they
//! confine can still resolve names on any cluster's DNS set-up.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use deploy_tests::{
    container_env, containers, find, fixture, kind, name,
    netpol::{dns_problems, namespace_of, strimzi_model, Peer, Policies},
    pod_template, repo_path, resolve_port, selects, string_map, yaml_file, yaml_files_in,
};
use serde_json::{json, Map, Value};

use crate::common::{
    all_objects, every_variant, k8s_variant, must, our_workloads, secret_template, variant_names,
    variant_with_component, Workload, CONFIG_MAP, NAMESPACE, SECRET,
};

/// An address outside the cluster, standing for a remote API or a managed broker.
const PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// A private address, which no egress to "the internet" may reach.
const PRIVATE_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);

#[test]
fn network_policies_allow_the_stack_flows_and_nothing_else() {
    let objects = all_objects();
    let policies: Vec<&Value> = objects.iter().filter(|o| kind(o) == "NetworkPolicy").collect();
    let eval = Policies::new(&objects);
    let deny = policies.iter().find(|p| name(p) == "default-deny-all").expect("a default-deny policy");
    assert_eq!(deny["spec"]["podSelector"], json!({}));
    assert!(deny["spec"]["ingress"].is_null() && deny["spec"]["egress"].is_null());

    // Every workload's pod labels, by app name.
    let mut pods: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for obj in &objects {
        if let Some(t) = pod_template(obj) {
            let labels = t["metadata"]["labels"].as_object().cloned().expect("pod labels");
            let app = labels["app.kubernetes.io/name"].as_str().expect("app.kubernetes.io/name").to_string();
            pods.insert(app, labels);
        }
    }
    let pod = |app: &str| Peer::Pod {
        namespace: NAMESPACE.to_string(),
        labels: pods.get(app).cloned().unwrap_or_else(|| panic!("no pods of {app}")),
    };
    let ns = |n: &str| Peer::Namespace(n.to_string());

    let must_allow = [
        (ns("ingress-nginx"), pod("gateway"), 8080),
        (ns("monitoring"), pod("gateway"), 9091),
        (ns("monitoring"), pod("responder"), 9091),
        (ns("monitoring"), pod("memory"), 9091),
        (ns("monitoring"), pod("qdrant"), 6333),
        (pod("gateway"), pod("kafka"), 9092),
        (pod("responder"), pod("kafka"), 9092),
        (pod("memory"), pod("kafka"), 9092),
        (pod("chat-stack-init"), pod("kafka"), 9092),
        (ns("keda"), pod("kafka"), 9092),
        (pod("responder"), pod("qdrant"), 6334),
        (pod("memory"), pod("qdrant"), 6334),
        // The history and memory routes.
        (pod("gateway"), pod("qdrant"), 6334),
        (pod("responder"), pod("ollama"), 11434),
    ];
    for (src, dst, port) in &must_allow {
        assert!(eval.allows(src, dst, *port, "TCP"), "{src} -> {dst}:{port} must be allowed");
    }
    let must_deny = [
        (pod("gateway"), pod("ollama"), 11434),
        (pod("memory"), pod("ollama"), 11434),
        (pod("ollama"), pod("kafka"), 9092),
        (pod("qdrant"), pod("kafka"), 9092),
        (pod("responder"), pod("gateway"), 8080),
        (ns("ingress-nginx"), pod("kafka"), 9092),
        (ns("ingress-nginx"), pod("qdrant"), 6334),
        (ns("default"), pod("gateway"), 8080),
        (ns("keda"), pod("qdrant"), 6334),
        (pod("chat-stack-init"), pod("qdrant"), 6334),
        // The admin port is Prometheus's alone, and Prometheus gets nothing else.
        (ns("ingress-nginx"), pod("gateway"), 9091),
        (ns("monitoring"), pod("gateway"), 8080),
        (ns("monitoring"), pod("responder"), 9090),
    ];
    for (src, dst, port) in &must_deny {
        assert!(!eval.allows(src, dst, *port, "TCP"), "{src} -> {dst}:{port} must be denied");
    }

    // DNS for every pod (the paths themselves: every_confined_pod_resolves_names_...).
    let dns = policies.iter().find(|p| name(p) == "allow-dns").expect("allow-dns");
    assert_eq!(dns["spec"]["podSelector"], json!({}));
    // Only Ollama may leave the cluster by default (model downloads); allow-dns may
    // reach the link-local resolvers, on port 53 only.
    for p in &policies {
        for rule in p["spec"]["egress"].as_array().into_iter().flatten() {
            let blocks: Vec<&str> = rule["to"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["ipBlock"]["cidr"].as_str())
                .collect();
            if blocks.is_empty() {
                continue;
            }
            if name(p) == "allow-dns" {
                assert!(
                    blocks.iter().all(|c| c.ends_with("/32") && c.starts_with("169.254.")),
                    "allow-dns reaches only the link-local resolvers: {blocks:?}"
                );
                let ports = rule["ports"].as_array().expect("allow-dns names its ports");
                assert!(ports.iter().all(|pt| pt["port"] == 53), "allow-dns: port 53 only");
            } else {
                assert_eq!(name(p), "ollama", "only Ollama reaches outside the cluster by default");
            }
        }
    }
}

#[test]
fn every_confined_pod_resolves_names_under_kube_dns_and_link_local_dns() {
    // kube-dns/CoreDNS pods, NodeLocal DNSCache (169.254.20.10) and GKE's Cloud DNS
    // (169.254.169.254), UDP and TCP: a pod without DNS fails every connection it makes
    // by name, and NetworkPolicies that forget one set-up only fail on those clusters.
    for (variant, mut objects) in every_variant() {
        objects.extend(strimzi_model(&objects));
        let confined = deploy_tests::netpol::pods(&objects)
            .into_iter()
            .filter(|(_, pod)| Policies::new(&objects).isolates(pod, "Egress"))
            .count();
        assert!(confined >= 6, "{variant}: expected every workload to be confined (found {confined})");
        let problems = dns_problems(&objects);
        assert!(problems.is_empty(), "{variant}: pods without DNS:\n{}", problems.join("\n"));
    }
}

/// Where a connection to `host:port` lands: the pods of the Service `host` (by name or
/// `<name>.<namespace>.svc`) on the target port, or an address outside the cluster.
fn destination(objects: &[Value], host: &str, port: u16) -> (Peer, u16) {
    let svc_name = host.strip_suffix(&format!(".{NAMESPACE}.svc")).unwrap_or(host);
    let Some(svc) = objects.iter().find(|o| kind(o) == "Service" && name(o) == svc_name) else {
        assert!(host.contains('.'), "{host}: neither a Service of the stack nor an outside address");
        return (Peer::Ip(PUBLIC_IP), port);
    };
    let svc_port = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["port"].as_u64() == Some(u64::from(port)))
        .unwrap_or_else(|| panic!("Service {svc_name} has no port {port}"));
    let selector = json!({"matchLabels": svc["spec"]["selector"]});
    let pod = objects
        .iter()
        .filter_map(|o| pod_template(o).map(|t| (o, t)))
        .find(|(_, t)| t["metadata"]["labels"].as_object().is_some_and(|l| selects(&selector, l)))
        .unwrap_or_else(|| panic!("Service {svc_name} selects no pod"));
    let target = &svc_port["targetPort"];
    let container_port = containers(&pod.1["spec"])
        .into_iter()
        .find_map(|c| resolve_port(c, target).ok())
        .or_else(|| target.as_u64().and_then(|n| u16::try_from(n).ok()))
        .unwrap_or_else(|| panic!("Service {svc_name}: target port {target} is no container port"));
    let labels = pod.1["metadata"]["labels"].as_object().cloned().unwrap_or_default();
    (Peer::Pod { namespace: namespace_of(pod.0).to_string(), labels }, container_port)
}

/// `host` and port of `http(s)://host[:port]/...` or `host:port`.
/// The pod that workload `w` runs, as a NetworkPolicy sees it (namespace and labels).
fn pod_of(objects: &[Value], w: &Workload) -> Peer {
    let labels = objects
        .iter()
        .filter_map(pod_template)
        .find(|t| t["spec"] == w.pod)
        .and_then(|t| t["metadata"]["labels"].as_object().cloned())
        .expect("pod labels");
    Peer::Pod { namespace: NAMESPACE.to_string(), labels }
}

fn host_port(address: &str) -> (String, u16) {
    let (default, rest) = match address.split_once("://") {
        Some(("https", rest)) => (443, rest),
        Some((_, rest)) => (80, rest),
        None => (0, address),
    };
    let authority = rest.split('/').next().unwrap_or("");
    match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().expect("port")),
        None => (authority.to_string(), default),
    }
}

#[test]
fn every_pod_reaches_each_dependency_it_is_configured_to_use_in_every_variant() {
    // The paths follow the configuration, not a list: the addresses each binary is
    // given (KAFKA_BOOTSTRAP_SERVERS, QDRANT_URL, LLM_BASE_URL) and KEDA's triggers,
    // resolved to the Service's pods and their container port (what a NetworkPolicy
    // matches), or to an address outside the cluster.
    for (variant, mut objects) in every_variant() {
        objects.extend(strimzi_model(&objects));
        let eval = Policies::new(&objects);
        let cm = string_map(must(find(&objects, "ConfigMap", CONFIG_MAP)), "data");
        let config_maps = BTreeMap::from([(CONFIG_MAP.to_string(), cm)]);
        let secrets = BTreeMap::from([(SECRET.to_string(), secret_template())]);
        let mut paths: Vec<(String, Peer, String)> = Vec::new();
        for w in our_workloads(&objects) {
            let root = tempfile::tempdir().expect("temp dir");
            let env = must(container_env(&w.pod, &w.container, &config_maps, &secrets, root.path(), &[]));
            let src = pod_of(&objects, &w);
            let mut wanted: Vec<String> =
                env["KAFKA_BOOTSTRAP_SERVERS"].split(',').map(|s| s.trim().to_string()).collect();
            // Every binary but the bootstrap Job uses Qdrant (the gateway: history).
            if w.container["args"][0] != "init" {
                wanted.push(env["QDRANT_URL"].clone());
            }
            if w.binary == "responder" {
                wanted.push(env["LLM_BASE_URL"].clone());
            }
            paths.extend(wanted.into_iter().map(|a| (w.label.clone(), src.clone(), a)));
        }
        for obj in objects.iter().filter(|o| kind(o) == "ScaledObject" || kind(o) == "ScaledJob") {
            for t in obj["spec"]["triggers"].as_array().into_iter().flatten() {
                let m = &t["metadata"];
                let address = match m["bootstrapServers"].as_str() {
                    Some(a) => a.to_string(),
                    None => {
                        // bootstrapServersFromEnv: the scale target's variable.
                        let var = m["bootstrapServersFromEnv"].as_str().expect("bootstrap servers");
                        let target = obj["spec"]["scaleTargetRef"]["name"].as_str().unwrap_or("");
                        let w = our_workloads(&objects)
                            .into_iter()
                            .find(|w| w.label.starts_with(&format!("Deployment {target}/")))
                            .expect("scale target");
                        let root = tempfile::tempdir().expect("temp dir");
                        let env = must(container_env(
                            &w.pod,
                            &w.container,
                            &config_maps,
                            &secrets,
                            root.path(),
                            &[],
                        ));
                        env[var].clone()
                    }
                };
                for a in address.split(',') {
                    let label = format!("KEDA's operator for {} {}", kind(obj), name(obj));
                    paths.push((label, Peer::Namespace("keda".into()), a.trim().to_string()));
                }
            }
        }
        assert!(paths.len() >= 10, "{variant}: expected the stack's paths, found {}", paths.len());
        for (label, src, address) in paths {
            let (host, port) = host_port(&address);
            let (dst, pod_port) = destination(&objects, &host, port);
            assert!(
                eval.allows(&src, &dst, pod_port, "TCP"),
                "{variant}: {label} cannot reach {address} ({dst}, port {pod_port})"
            );
        }
    }
}

#[test]
fn the_tracing_component_lets_every_service_reach_the_collector_it_names_and_nothing_else_does() {
    let secrets = BTreeMap::from([(SECRET.to_string(), secret_template())]);
    for variant in variant_names() {
        let objects = variant_with_component(&variant, "tracing");
        let eval = Policies::new(&objects);
        let without = k8s_variant(&variant);
        let eval_without = Policies::new(&without);
        let cm = string_map(must(find(&objects, "ConfigMap", CONFIG_MAP)), "data");
        let config_maps = BTreeMap::from([(CONFIG_MAP.to_string(), cm)]);
        let mut exporters = BTreeSet::new();
        for w in our_workloads(&objects) {
            if w.container["args"][0] == "init" {
                continue;
            }
            let root = tempfile::tempdir().expect("temp dir");
            let env = must(container_env(&w.pod, &w.container, &config_maps, &secrets, root.path(), &[]));
            let endpoint = env
                .get("OTEL_EXPORTER_OTLP_ENDPOINT")
                .unwrap_or_else(|| panic!("{variant}: {} gets no OTEL_EXPORTER_OTLP_ENDPOINT", w.label));
            // The collector is a Service of another namespace: <service>.<namespace>.
            let (host, port) = host_port(endpoint);
            let namespace = host.split('.').nth(1).unwrap_or_else(|| panic!("{host}: no namespace"));
            let src = pod_of(&objects, &w);
            let collector = Peer::Namespace(namespace.to_string());
            assert!(
                eval.allows(&src, &collector, port, "TCP"),
                "{variant}: {} cannot reach {endpoint}",
                w.label
            );
            assert!(
                !eval_without.allows(&src, &collector, port, "TCP"),
                "{variant}: {} reaches {endpoint} without the component",
                w.label
            );
            assert!(!eval.allows(&src, &collector, 4317, "TCP"), "{variant}: only OTLP/HTTP is opened");
            exporters.insert(w.binary.clone());
        }
        let expected: BTreeSet<String> = ["gateway", "responder", "memory"].map(String::from).into();
        assert_eq!(exporters, expected, "{variant}: the services that export traces");
    }
}

#[test]
fn each_variant_opens_only_its_own_paths() {
    for (variant, mut objects) in every_variant() {
        objects.extend(strimzi_model(&objects));
        let eval = Policies::new(&objects);
        let pod = |app: &str| {
            let labels = objects
                .iter()
                .filter_map(pod_template)
                .filter_map(|t| t["metadata"]["labels"].as_object())
                .find(|l| l.get("app.kubernetes.io/name") == Some(&json!(app)))
                .cloned()
                .unwrap_or_else(|| panic!("{variant}: no pods of {app}"));
            Peer::Pod { namespace: NAMESPACE.to_string(), labels }
        };
        let denied = |src: &Peer, dst: &Peer, port: u16| {
            assert!(!eval.allows(src, dst, port, "TCP"), "{variant}: {src} -> {dst}:{port} must be denied");
        };
        // Nothing private or link-local for anyone, whatever the variant opens.
        for app in ["gateway", "responder", "memory", "qdrant"] {
            denied(&pod(app), &Peer::Ip(PRIVATE_IP), 443);
            denied(&pod(app), &Peer::Ip(Ipv4Addr::new(169, 254, 169, 254)), 80);
        }
        // The gateway and memory never reach an LLM, wherever it is.
        denied(&pod("gateway"), &Peer::Ip(PUBLIC_IP), 443);
        denied(&pod("memory"), &Peer::Ip(PUBLIC_IP), 443);
        denied(&pod("qdrant"), &Peer::Ip(PUBLIC_IP), 9092);
        match variant.as_str() {
            "vllm" => {
                let vllm = pod("vllm");
                assert!(eval.allows(&pod("responder"), &vllm, 8000, "TCP"));
                denied(&pod("gateway"), &vllm, 8000);
                denied(&pod("memory"), &vllm, 8000);
                denied(&Peer::Namespace("ingress-nginx".into()), &vllm, 8000);
            }
            "remote-openai" => {
                assert!(eval.allows(&pod("responder"), &Peer::Ip(PUBLIC_IP), 443, "TCP"));
                denied(&pod("responder"), &Peer::Ip(PUBLIC_IP), 80);
            }
            "strimzi" => {
                let broker = deploy_tests::netpol::pods(&objects)
                    .into_iter()
                    .find(|(l, _)| l.starts_with("Pod chat-stack-"))
                    .expect("a Strimzi broker")
                    .1;
                denied(&pod("qdrant"), &broker, 9092);
                denied(&Peer::Namespace("ingress-nginx".into()), &broker, 9092);
                assert!(eval.allows(&Peer::Namespace("keda".into()), &broker, 9092, "TCP"));
            }
            _ => {}
        }
        let has = |k: &str, n: &str| objects.iter().any(|o| kind(o) == k && name(o) == n);
        let ollama = !matches!(variant.as_str(), "vllm" | "remote-openai");
        assert_eq!(has("Deployment", "ollama"), ollama, "{variant}: Ollama");
        let own_kafka = !matches!(variant.as_str(), "external-kafka" | "strimzi");
        assert_eq!(has("StatefulSet", "kafka"), own_kafka, "{variant}: the base's Kafka");
    }
}

#[test]
fn the_dns_check_rejects_policies_that_miss_a_set_up() {
    for (file, expected) in [
        ("broken-dns/kube-dns-only.yaml", "NodeLocal DNSCache"),
        ("broken-dns/kube-dns-only.yaml", "GKE Cloud DNS"),
        ("broken-dns/udp-only.yaml", "TCP 53"),
    ] {
        let objects = must(yaml_file(&fixture(file)));
        let problems = dns_problems(&objects);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{file}: the DNS check did not report {expected:?}: {problems:?}"
        );
        if file.ends_with("kube-dns-only.yaml") {
            assert!(
                problems.iter().all(|p| !p.contains("kube-dns pods")),
                "{file}: kube-dns pods are reachable"
            );
        }
    }
}

#[test]
fn kustomization_lists_every_manifest_file() {
    let k = must(yaml_file(&repo_path("k8s/base/kustomization.yaml"))).remove(0);
    let listed: BTreeSet<String> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().unwrap_or("").to_string())
        .collect();
    let on_disk: BTreeSet<String> = must(yaml_files_in(&repo_path("k8s/base")))
        .into_iter()
        .filter_map(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, on_disk, "k8s/base/kustomization.yaml resources vs the files in k8s/base/");
    assert_eq!(k["namespace"], NAMESPACE);
    // k8s/ itself is the default variant: the base and nothing else.
    let top = must(yaml_file(&repo_path("k8s/kustomization.yaml"))).remove(0);
    assert_eq!(top["resources"], json!(["base"]));
    let files: Vec<_> = must(yaml_files_in(&repo_path("k8s")))
        .into_iter()
        .filter_map(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
        .collect();
    assert_eq!(files, ["kustomization.yaml", "secrets.template.yaml"], "k8s/ holds no other manifests");
}
