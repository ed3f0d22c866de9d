//! NetworkPolicies: they allow the stack's flows and nothing else.

use std::collections::{BTreeMap, BTreeSet};

use deploy_tests::{kind, name, pod_template, repo_path, selects, yaml_file, yaml_files_in};
use serde_json::{json, Map, Value};

use crate::common::{all_objects, must, NAMESPACE};

/// A peer of a connection: a pod in the stack's namespace (by its labels) or any pod of
/// another namespace.
#[derive(Clone, Debug)]
enum Peer {
    Pod(Map<String, Value>),
    Namespace(&'static str),
}

fn peer_matches(from: &Value, peer: &Peer) -> bool {
    let ns_sel = &from["namespaceSelector"];
    let pod_sel = &from["podSelector"];
    if !from["ipBlock"].is_null() {
        return false; // only used for the internet; never matches a pod here
    }
    match peer {
        Peer::Pod(labels) => ns_sel.is_null() && selects(pod_sel, labels),
        Peer::Namespace(ns) => {
            let ns_labels = json!({"kubernetes.io/metadata.name": ns});
            !ns_sel.is_null()
                && selects(ns_sel, ns_labels.as_object().expect("object"))
                // a podSelector beside a namespaceSelector narrows to some pods there;
                // treat the namespace's pods as matching only if it selects everything
                && (pod_sel.is_null() || pod_sel["matchLabels"].as_object().is_none_or(|m| m.is_empty()))
        }
    }
}

fn port_allowed(rule: &Value, port: u16) -> bool {
    match rule["ports"].as_array() {
        None => true,
        Some(ports) => ports.iter().any(|p| p["port"].as_u64() == Some(u64::from(port))),
    }
}

fn policies_for<'a>(
    policies: &'a [&'a Value],
    labels: &Map<String, Value>,
    direction: &str,
) -> Vec<&'a Value> {
    policies
        .iter()
        .copied()
        .filter(|p| {
            selects(&p["spec"]["podSelector"], labels)
                && p["spec"]["policyTypes"].as_array().is_some_and(|t| t.iter().any(|x| x == direction))
        })
        .collect()
}

/// Whether the policies let `src` open a connection to `dst`:`port` (both directions
/// must allow it when both ends are pods of the namespace).
fn allowed(policies: &[&Value], src: &Peer, dst: &Peer, port: u16) -> bool {
    let egress_ok = match src {
        Peer::Namespace(_) => true, // other namespaces' egress is not ours to decide
        Peer::Pod(labels) => policies_for(policies, labels, "Egress").iter().any(|p| {
            p["spec"]["egress"].as_array().into_iter().flatten().any(|rule| {
                port_allowed(rule, port)
                    && rule["to"].as_array().into_iter().flatten().any(|to| peer_matches(to, dst))
            })
        }),
    };
    let ingress_ok = match dst {
        Peer::Namespace(_) => true,
        Peer::Pod(labels) => policies_for(policies, labels, "Ingress").iter().any(|p| {
            p["spec"]["ingress"].as_array().into_iter().flatten().any(|rule| {
                port_allowed(rule, port)
                    && rule["from"].as_array().into_iter().flatten().any(|from| peer_matches(from, src))
            })
        }),
    };
    egress_ok && ingress_ok
}

#[test]
fn network_policies_allow_the_stack_flows_and_nothing_else() {
    let objects = all_objects();
    let policies: Vec<&Value> = objects.iter().filter(|o| kind(o) == "NetworkPolicy").collect();
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
    let pod = |app: &str| Peer::Pod(pods.get(app).cloned().unwrap_or_else(|| panic!("no pods of {app}")));
    let ns = Peer::Namespace;

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
        assert!(allowed(&policies, src, dst, *port), "{src:?} -> {dst:?}:{port} must be allowed");
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
        assert!(!allowed(&policies, src, dst, *port), "{src:?} -> {dst:?}:{port} must be denied");
    }

    // DNS for every pod.
    let dns = policies.iter().find(|p| name(p) == "allow-dns").expect("allow-dns");
    assert_eq!(dns["spec"]["podSelector"], json!({}));
    // Only Ollama may leave the cluster by default (model downloads).
    for p in &policies {
        let has_ip_block = p["spec"]["egress"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["to"].as_array().into_iter().flatten().any(|t| !t["ipBlock"].is_null()));
        if has_ip_block {
            assert_eq!(name(p), "ollama", "only Ollama reaches outside the cluster by default");
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
