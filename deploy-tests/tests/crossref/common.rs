//! What the sections share: the manifests as the cluster gets them, and our workloads in them.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
    process::Command,
};

use deploy_tests::{
    containers, find, kind, kustomize, name, pod_template, repo_path, run, string_map, yaml_documents,
    yaml_file, yaml_files_in,
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
    keda_dirs(&["keda", "keda/scaledjobs", "keda/secured"])
}

fn keda_dirs(dirs: &[&str]) -> Vec<Value> {
    let mut all = Vec::new();
    for dir in dirs {
        for file in must(yaml_files_in(&repo_path(dir))) {
            all.extend(must(yaml_file(&file)));
        }
    }
    all
}

/// The KEDA objects applied with a variant: keda/ (with the optional ScaledJobs and
/// credentials), for an external Kafka keda/external-kafka/ and keda/secured/, and for
/// vLLM keda/ with keda/vllm/.
pub fn keda_for(variant: &str) -> Vec<Value> {
    match variant {
        "external-kafka" => keda_dirs(&["keda/external-kafka", "keda/secured"]),
        "vllm" => keda_dirs(&["keda", "keda/scaledjobs", "keda/secured", "keda/vllm"]),
        _ => keda(),
    }
}

/// Everything `kubectl apply -k k8s/variants/<variant>` creates.
pub fn k8s_variant(variant: &str) -> Vec<Value> {
    must(yaml_documents(&must(kustomize(&repo_path(&format!("k8s/variants/{variant}"))))))
}

/// `k8s/variants/<variant>` with one more component of k8s/components/ (as a user's own
/// kustomization would combine them), rendered.
pub fn variant_with_component(variant: &str, component: &str) -> Vec<Value> {
    let rendered = must(deploy_tests::kustomize_combined(
        &[&repo_path(&format!("k8s/variants/{variant}"))],
        &[&repo_path(&format!("k8s/components/{component}"))],
        NAMESPACE,
    ));
    must(yaml_documents(&rendered))
}

/// The default (`k8s/` with keda/) and every variant with its KEDA objects, by name.
pub fn every_variant() -> Vec<(String, Vec<Value>)> {
    let mut all = vec![("k8s/".to_string(), all_objects())];
    for v in variant_names() {
        let mut objects = k8s_variant(&v);
        objects.extend(keda_for(&v));
        all.push((v, objects));
    }
    assert!(all.len() >= 6, "expected k8s/ and the five variants");
    all
}

/// The image prefix the deploy overlay is tested with (as the workflow's, with an owner).
pub const PUSHED_PREFIX: &str = "ghcr.io/example/chat-stack-";
/// The docker-registry Secret the overlay wires into our pods (README, "Images from the pipeline").
pub const PULL_SECRET: &str = "ghcr-pull";

/// What `ci/deploy-overlay.sh` writes for one commit, rendered.
pub struct Overlay {
    /// OUT_DIR/k8s: the cluster's objects.
    pub k8s: Vec<Value>,
    /// OUT_DIR/keda: the ScaledObjects.
    pub keda: Vec<Value>,
    /// OUT_DIR/keda-scaledjobs: the optional ScaledJobs (none for an external Kafka).
    pub scaled_jobs: Vec<Value>,
    /// OUT_DIR/init-job-name.
    pub init_job: String,
}

/// Runs `ci/deploy-overlay.sh PUSHED_PREFIX TAG OUT [VARIANT]` and renders what it wrote.
pub fn overlay(tag: &str, variant: Option<&str>) -> Overlay {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new("bash");
    cmd.arg(repo_path("ci/deploy-overlay.sh")).args([PUSHED_PREFIX, tag]).arg(dir.path());
    cmd.args(variant);
    let out = must(run(&mut cmd));
    assert!(out.success, "ci/deploy-overlay.sh failed:\n{out}");
    let render = |sub: &str| {
        let d = dir.path().join(sub);
        if d.exists() {
            must(yaml_documents(&must(kustomize(&d))))
        } else {
            Vec::new()
        }
    };
    Overlay {
        k8s: render("k8s"),
        keda: render("keda"),
        scaled_jobs: render("keda-scaledjobs"),
        init_job: fs::read_to_string(dir.path().join("init-job-name"))
            .expect("init-job-name")
            .trim()
            .to_string(),
    }
}

/// The variants of k8s/variants/ (each applied with `kubectl apply -k k8s/variants/<name>`).
pub fn variant_names() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(repo_path("k8s/variants"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().join("kustomization.yaml").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

pub fn config(objects: &[Value]) -> BTreeMap<String, String> {
    string_map(must(find(objects, "ConfigMap", CONFIG_MAP)), "data")
}

pub fn secret_template() -> BTreeMap<String, String> {
    let docs = must(yaml_file(&repo_path("k8s/secrets.template.yaml")));
    string_map(must(find(&docs, "Secret", SECRET)), "stringData")
}

/// The Secret as a user fills it in: every key of the template, with a real-looking
/// value in place of its placeholder.
pub fn filled_secret() -> BTreeMap<String, String> {
    secret_template()
        .into_keys()
        .map(|key| {
            let value = if key.contains("bootstrap-servers") {
                "broker-1.example.com:9096,broker-2.example.com:9096".to_string()
            } else {
                format!("{key}-value-0123456789abcdef0123456789abcdef")
            };
            (key, value)
        })
        .collect()
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

/// The Rust sources of the binaries and the library they share (what reads settings and
/// exports metrics).
pub fn rust_sources() -> String {
    fn walk(dir: &Path, out: &mut String) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    let mut text = String::new();
    for dir in ["platform/src", "memory-store/src", "gateway/src", "handlers/src"] {
        walk(&repo_path(dir), &mut text);
    }
    assert!(text.len() > 10_000, "no Rust sources found under platform/, gateway/, handlers/");
    text
}
