//! What the sections share: the manifests as the cluster gets them, and our workloads in them.

use std::collections::{BTreeMap, BTreeSet};

use deploy_tests::{
    containers, find, kind, kustomize, name, pod_template, repo_path, string_map, yaml_documents, yaml_file,
    yaml_files_in,
};
use serde_json::{json, Value};

pub const NAMESPACE: &str = "chat-stack";
pub const CONFIG_MAP: &str = "chat-stack-config";
pub const SECRET: &str = "chat-stack-secrets";
/// The images' binaries, one per Dockerfile target.
pub const TARGETS: [&str; 3] = ["gateway", "responder", "memory"];
/// Where the handler images carry the embedding model (Dockerfile, stage `model`).
pub const MODEL_DIR: &str = "/models/all-MiniLM-L6-v2";

pub fn must<T>(result: anyhow::Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Everything `kubectl apply -k k8s/` creates.
pub fn k8s() -> Vec<Value> {
    must(yaml_documents(&must(kustomize(&repo_path("k8s")))))
}

/// Every object under keda/ (ScaledObjects, the optional ScaledJobs and TriggerAuthentication).
pub fn keda() -> Vec<Value> {
    let mut all = Vec::new();
    for dir in ["keda", "keda/scaledjobs", "keda/secured"] {
        for file in must(yaml_files_in(&repo_path(dir))) {
            all.extend(must(yaml_file(&file)));
        }
    }
    all
}

pub fn config(objects: &[Value]) -> BTreeMap<String, String> {
    string_map(must(find(objects, "ConfigMap", CONFIG_MAP)), "data")
}

pub fn secret_template() -> BTreeMap<String, String> {
    let docs = must(yaml_file(&repo_path("k8s/secrets.template.yaml")));
    string_map(must(find(&docs, "Secret", SECRET)), "stringData")
}

/// A container running one of our binaries, with where it comes from.
pub struct Workload {
    pub label: String,
    pub binary: String,
    pub pod: Value,
    pub container: Value,
}

/// Every container of ours (image localhost/chat-stack-<target>) in k8s/ and keda/.
pub fn our_workloads(objects: &[Value]) -> Vec<Workload> {
    let mut found = Vec::new();
    for obj in objects {
        let Some(template) = pod_template(obj) else { continue };
        for c in containers(&template["spec"]) {
            let image = c["image"].as_str().unwrap_or("");
            if let Some(rest) = image.strip_prefix("localhost/chat-stack-") {
                let binary = rest.split(':').next().unwrap_or("").to_string();
                found.push(Workload {
                    label: format!("{} {}/{}", kind(obj), name(obj), c["name"].as_str().unwrap_or("")),
                    binary,
                    pod: template["spec"].clone(),
                    container: c.clone(),
                });
            }
        }
    }
    found
}

pub fn all_objects() -> Vec<Value> {
    let mut all = k8s();
    all.extend(keda());
    all
}

/// Only the Secret keys no pod can start without (volume items and non-optional refs).
pub fn required_secret_keys(objects: &[Value]) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for obj in objects {
        let Some(template) = pod_template(obj) else { continue };
        for volume in template["spec"]["volumes"].as_array().into_iter().flatten() {
            if volume["secret"]["secretName"] == SECRET && volume["secret"]["optional"] != json!(true) {
                for item in volume["secret"]["items"].as_array().into_iter().flatten() {
                    keys.insert(item["key"].as_str().unwrap_or("").to_string());
                }
            }
        }
        for c in containers(&template["spec"]) {
            for var in c["env"].as_array().into_iter().flatten() {
                let r = &var["valueFrom"]["secretKeyRef"];
                if r["name"] == SECRET && r["optional"] != json!(true) {
                    keys.insert(r["key"].as_str().unwrap_or("").to_string());
                }
            }
        }
    }
    keys
}

/// The text of one Dockerfile stage (`FROM ... AS name` up to the next FROM).
pub fn stage_text<'a>(dockerfile: &'a str, stage: &str) -> &'a str {
    let marker = format!(" AS {stage}\n");
    let start = dockerfile.find(&marker).unwrap_or_else(|| panic!("Dockerfile has no stage {stage}"));
    let rest = &dockerfile[start..];
    let end = rest[1..].find("\nFROM ").map_or(rest.len(), |i| i + 1);
    &rest[..end]
}
