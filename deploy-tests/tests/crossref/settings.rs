//! Settings: every binary accepts the environment its manifest gives it, and every setting in
//! the manifests is one the code reads.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
    process::Command,
};

use deploy_tests::{container_env, containers, find, run, workspace_binary};
use platform::topics;
use serde_json::{json, Value};

use crate::common::{
    config, every_variant, filled_secret, k8s, must, our_workloads, required_secret_keys, rust_sources,
    secret_template, Workload, CONFIG_MAP, MODEL_DIR, SECRET,
};

/// The environment `w` gets in the cluster, with Secret files and the image's model
/// directory mapped into `root`.
fn env_for(
    w: &Workload,
    cm: &BTreeMap<String, String>,
    secret: &BTreeMap<String, String>,
    root: &Path,
) -> BTreeMap<String, String> {
    let model = root.join("model");
    fs::create_dir_all(&model).expect("model dir");
    for (file, content) in [("config.json", "{}"), ("tokenizer.json", "{}"), ("model.safetensors", "")] {
        fs::write(model.join(file), content).expect("stub model file");
    }
    let config_maps = BTreeMap::from([(CONFIG_MAP.to_string(), cm.clone())]);
    let secrets = BTreeMap::from([(SECRET.to_string(), secret.clone())]);
    must(container_env(&w.pod, &w.container, &config_maps, &secrets, root, &[(MODEL_DIR.to_string(), model)]))
}

fn check_config(binary: &Path, env: &BTreeMap<String, String>) -> deploy_tests::Outcome {
    let mut cmd = Command::new(binary);
    cmd.arg("check-config").env_clear().envs(env);
    must(run(&mut cmd))
}

#[test]
fn every_binary_accepts_the_environment_its_manifest_gives_it() {
    for (variant, objects) in every_variant() {
        accepts_its_environment(&variant, &objects);
    }
}

fn accepts_its_environment(variant_name: &str, objects: &[Value]) {
    let cm = config(objects);
    let full_secret = filled_secret();
    let required = required_secret_keys(objects);
    let minimal_secret: BTreeMap<String, String> = full_secret
        .iter()
        .filter(|(k, _)| required.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let workloads: Vec<Workload> = our_workloads(objects)
        .into_iter()
        // `gateway init` (the Job) needs only the KAFKA_* settings; `check-config` checks
        // what `serve` needs. The Job's settings are checked below.
        .filter(|w| w.container["args"][0] != "init")
        .collect();
    let labels: Vec<&str> = workloads.iter().map(|w| w.label.as_str()).collect();
    assert!(
        workloads.len() >= 3,
        "{variant_name}: expected gateway, responder, memory (and the ScaledJobs), found {labels:?}"
    );

    for w in &workloads {
        let binary = must(workspace_binary(&w.binary));
        for (variant, secret) in
            [("every Secret key set", &full_secret), ("only the required keys", &minimal_secret)]
        {
            let root = tempfile::tempdir().expect("temp dir");
            let env = env_for(w, &cm, secret, root.path());
            let out = check_config(&binary, &env);
            assert!(
                out.success && out.stdout.contains("configuration ok"),
                "{variant_name}: {} ({variant}): `{} check-config` rejects the manifest's environment:\n{out}\nenvironment: {:?}",
                w.label,
                w.binary,
                env.keys().collect::<Vec<_>>()
            );
        }
        // The template applied as it is would run with publicly known keys: refused.
        let root = tempfile::tempdir().expect("temp dir");
        let out = check_config(&binary, &env_for(w, &cm, &secret_template(), root.path()));
        assert_eq!(
            out.code,
            Some(2),
            "{variant_name}: {}: check-config with the template's placeholders:\n{out}",
            w.label
        );
        assert!(
            out.output().contains("placeholder of k8s/secrets.template.yaml")
                && !out.output().contains("REPLACE-ME-"),
            "{}: the error must say the Secret is the template's, without echoing it:\n{out}",
            w.label
        );
        // check-config really checks: without the broker address it must name it.
        let root = tempfile::tempdir().expect("temp dir");
        let mut env = env_for(w, &cm, &full_secret, root.path());
        env.remove("KAFKA_BOOTSTRAP_SERVERS");
        let out = check_config(&binary, &env);
        assert_eq!(
            out.code,
            Some(2),
            "{variant_name}: {}: check-config without KAFKA_BOOTSTRAP_SERVERS:\n{out}",
            w.label
        );
        assert!(
            out.output().contains("KAFKA_BOOTSTRAP_SERVERS"),
            "{}: the error must name the variable:\n{out}",
            w.label
        );
    }
}

#[test]
fn bootstrap_job_runs_gateway_init_with_the_kafka_settings() {
    let objects = k8s();
    let job = must(find(&objects, "Job", "chat-stack-init"));
    let spec = &job["spec"]["template"]["spec"];
    let c = &containers(spec)[0];
    assert_eq!(c["image"], "localhost/chat-stack-gateway:dev");
    assert_eq!(c["args"], json!(["init"]));
    assert_eq!(c["envFrom"][0]["configMapRef"]["name"], CONFIG_MAP);
    let cm = config(&objects);
    let partitions: i32 = cm["TOPIC_PARTITIONS"].parse().expect("TOPIC_PARTITIONS is a number");
    assert_eq!(
        partitions,
        topics::DEFAULT_PARTITIONS,
        "the Job creates as many partitions as the code expects"
    );
    for key in ["KAFKA_BOOTSTRAP_SERVERS", "TOPIC_REPLICATION", "INIT_TIMEOUT_SECS"] {
        assert!(cm.contains_key(key), "the ConfigMap lacks {key}, which `gateway init` reads");
    }
}

/// Whether `code` reads the variable `var`: as a literal ("NAME"), as the file variant
/// of a secret ("NAME" for NAME_FILE), or built from a prefix, as platform's
/// `Endpoint::from_env(env, "LLM")` builds LLM_BASE_URL with format!("{prefix}_BASE_URL").
fn code_reads(code: &str, var: &str) -> bool {
    let base = var.strip_suffix("_FILE").unwrap_or(var);
    if code.contains(&format!("\"{var}\"")) || code.contains(&format!("\"{base}\"")) {
        return true;
    }
    base.match_indices('_').any(|(i, _)| {
        let (prefix, suffix) = (&base[..i], &base[i + 1..]);
        code.contains(&format!("\"{prefix}\"")) && code.contains(&format!("}}_{suffix}\""))
    })
}

#[test]
fn every_setting_in_the_manifests_is_one_the_code_reads() {
    // A misspelt variable (HANDLER_CONCURENCY) passes check-config silently: the binary
    // falls back to its default. So every name must appear in the code.
    let code = rust_sources();
    let mut names: BTreeSet<String> = BTreeSet::new();
    for (_, objects) in every_variant() {
        names.extend(config(&objects).keys().cloned());
        for w in our_workloads(&objects) {
            for var in w.container["env"].as_array().into_iter().flatten() {
                names.insert(var["name"].as_str().unwrap_or("").to_string());
            }
        }
    }
    let unknown: Vec<&String> = names.iter().filter(|n| !code_reads(&code, n)).collect();
    assert!(unknown.is_empty(), "settings no binary reads (misspelt?): {unknown:?}");
}
