//! NetworkPolicies: they allow the stack's flows and nothing else, and every pod they
//! confine can still resolve names on any cluster's DNS set-up.

use std::collections::{BTreeMap, BTreeSet};

use deploy_tests::{
    fixture, kind, name,
    netpol::{dns_problems, Peer, Policies},
    pod_template, repo_path, yaml_file, yaml_files_in,
};
use serde_json::{json, Map, Value};

use crate::common::{all_objects, must, NAMESPACE};

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
        (ns("monitoring"), pod("gateway"), 8080),
        (ns("monitoring"), pod("responder"), 9090),
        (ns("monitoring"), pod("memory"), 9090),
        (ns("monitoring"), pod("qdrant"), 6333),
        (pod("gateway"), pod("kafka"), 9092),
        (pod("responder"), pod("kafka"), 9092),
        (pod("memory"), pod("kafka"), 9092),
        (pod("chat-stack-init"), pod("kafka"), 9092),
        (ns("keda"), pod("kafka"), 9092),
        (pod("responder"), pod("qdrant"), 6334),
        (pod("memory"), pod("qdrant"), 6334),
        (pod("responder"), pod("ollama"), 11434),
    ];
    for (src, dst, port) in &must_allow {
        assert!(eval.allows(src, dst, *port, "TCP"), "{src} -> {dst}:{port} must be allowed");
    }
    let must_deny = [
        (pod("gateway"), pod("qdrant"), 6334),
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
    let objects = all_objects();
    let confined = deploy_tests::netpol::pods(&objects)
        .into_iter()
        .filter(|(_, pod)| Policies::new(&objects).isolates(pod, "Egress"))
        .count();
    assert!(confined >= 8, "expected every workload to be confined (found {confined})");
    let problems = dns_problems(&objects);
    assert!(problems.is_empty(), "pods without DNS:\n{}", problems.join("\n"));
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
    let k = must(yaml_file(&repo_path("k8s/kustomization.yaml"))).remove(0);
    let listed: BTreeSet<String> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().unwrap_or("").to_string())
        .collect();
    let on_disk: BTreeSet<String> = must(yaml_files_in(&repo_path("k8s")))
        .into_iter()
        .filter_map(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
        .filter(|f| f != "kustomization.yaml" && f != "secrets.template.yaml")
        .collect();
    assert_eq!(listed, on_disk, "k8s/kustomization.yaml resources vs the files in k8s/");
    assert_eq!(k["namespace"], NAMESPACE);
}
