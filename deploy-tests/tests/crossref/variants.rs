//! The variants of k8s/variants/: each is the base plus one component, and each wires
//! the LLM or Kafka it chooses the way the binaries and KEDA read it.

use std::collections::BTreeSet;

use deploy_tests::{containers, find, kind, name, repo_path, resolve_port, yaml_file};
use platform::topics;
use serde_json::{json, Value};

use crate::common::{
    config, k8s_variant, keda_for, must, our_workloads, secret_template, variant_names,
    variant_with_component, NAMESPACE, SECRET,
};

const VARIANTS: [&str; 5] = ["external-kafka", "ollama", "remote-openai", "strimzi", "vllm"];

fn env_var<'a>(container: &'a Value, var: &str) -> Option<&'a Value> {
    container["env"].as_array().into_iter().flatten().find(|e| e["name"] == var)
}

/// The Secret key a container's `var` comes from, if it must be there (not optional).
fn required_secret(container: &Value, var: &str) -> Option<String> {
    let r = &env_var(container, var)?["valueFrom"]["secretKeyRef"];
    (r["name"] == SECRET && r["optional"] != json!(true)).then(|| r["key"].as_str().unwrap_or("").to_string())
}

#[test]
fn every_variant_is_the_base_plus_components_in_the_stack_namespace() {
    assert_eq!(variant_names(), VARIANTS, "k8s/variants/");
    for v in VARIANTS {
        let k = must(yaml_file(&repo_path(&format!("k8s/variants/{v}/kustomization.yaml")))).remove(0);
        assert_eq!(k["resources"], json!(["../../base"]), "{v}: the base, unedited");
        if v == "ollama" {
            assert!(k["components"].is_null(), "ollama is the base as it is");
        } else {
            assert_eq!(k["components"], json!([format!("../../components/{v}")]), "{v}");
            assert_eq!(k["namespace"], NAMESPACE, "{v}: the component's own objects too");
        }
        for obj in k8s_variant(v) {
            if kind(&obj) != "Namespace" {
                assert_eq!(obj["metadata"]["namespace"], NAMESPACE, "{v}: {} {}", kind(&obj), name(&obj));
            }
        }
    }
}

#[test]
fn the_llm_variants_point_the_responder_at_their_llm_with_the_key_from_the_secret() {
    for v in ["vllm", "remote-openai"] {
        let objects = k8s_variant(v);
        let cm = config(&objects);
        let responder = our_workloads(&objects)
            .into_iter()
            .find(|w| w.label.starts_with("Deployment responder/"))
            .expect("responder");
        assert_eq!(
            required_secret(&responder.container, "LLM_API_KEY").as_deref(),
            Some("llm-api-key"),
            "{v}: the responder's LLM_API_KEY comes from the Secret and is required"
        );
        assert!(!objects.iter().any(|o| name(o).starts_with("ollama")), "{v}: no Ollama object left");
        if v == "remote-openai" {
            assert!(cm["LLM_BASE_URL"].starts_with("https://"), "{v}: a remote API over HTTPS");
            continue;
        }
        // vllm: the server the responder is pointed at, served on pod port 8000.
        assert_eq!(cm["LLM_BASE_URL"], "http://vllm:8000/v1");
        let deploy = must(find(&objects, "Deployment", "vllm"));
        let spec = &deploy["spec"]["template"]["spec"];
        let c = &containers(spec)[0];
        let image = c["image"].as_str().unwrap_or("");
        let tag = image.strip_prefix("vllm/vllm-openai:").expect("the vllm/vllm-openai image");
        assert!(tag.starts_with('v') && tag != "latest", "{v}: vLLM's image pinned to a release: {image}");
        assert_eq!(
            required_secret(c, "VLLM_API_KEY").as_deref(),
            Some("llm-api-key"),
            "vLLM's API key (--api-key) and the responder's are the same Secret key"
        );
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1", "a GPU");
        assert!(
            c["resources"]["requests"]["memory"].is_string() && c["resources"]["requests"]["cpu"].is_string()
        );
        for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
            assert_eq!(c[probe]["httpGet"]["path"], "/health", "vllm {probe}");
            assert_eq!(must(resolve_port(c, &c[probe]["httpGet"]["port"])), 8000, "vllm {probe} port");
        }
        let models = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|vol| !vol["persistentVolumeClaim"].is_null())
            .expect("a PVC for the model cache");
        let claim = models["persistentVolumeClaim"]["claimName"].as_str().unwrap_or("");
        must(find(&objects, "PersistentVolumeClaim", claim));
        let args: Vec<&str> = c["args"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let download = args.iter().find_map(|a| a.strip_prefix("--download-dir=")).expect("--download-dir");
        assert!(
            c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["name"] == models["name"] && m["mountPath"] == download),
            "the models are downloaded into the PVC"
        );
        assert!(args.contains(&"--served-model-name=$(LLM_MODEL)"), "vLLM serves the model under LLM_MODEL");
        assert_eq!(c["env"][0]["valueFrom"]["configMapKeyRef"]["key"], "LLM_MODEL");
    }
}

#[test]
fn the_vllm_variant_lets_keda_scale_vllm_from_zero_and_the_responder_wait_for_it() {
    let objects = k8s_variant("vllm");
    let keda = keda_for("vllm");
    let scaled = |target: &str| {
        keda.iter()
            .find(|o| kind(o) == "ScaledObject" && o["spec"]["scaleTargetRef"]["name"] == target)
            .unwrap_or_else(|| panic!("a ScaledObject for {target} with the vllm variant"))
    };
    let (vllm, responder) = (scaled("vllm"), scaled("responder"));
    let deploy = must(find(&objects, "Deployment", "vllm"));
    assert!(deploy["spec"]["replicas"].is_null(), "KEDA owns vLLM's replicas; an apply must not reset them");
    assert_eq!(vllm["spec"]["minReplicaCount"], 0, "an idle stack holds no GPU");
    // Woken by the same lag as the responder, so a message wakes both.
    let trigger = |o: &Value| o["spec"]["triggers"][0]["metadata"].clone();
    let (t, r) = (trigger(vllm), trigger(responder));
    for key in ["bootstrapServers", "consumerGroup", "topic", "offsetResetPolicy"] {
        assert_eq!(t[key], r[key], "vLLM's trigger {key} is the responder's");
    }
    assert_eq!(t["consumerGroup"], topics::RESPONDER_GROUP);
    assert_eq!(t["activationLagThreshold"], "0", "the first message wakes vLLM");
    let cooldown = |o: &Value| o["spec"]["cooldownPeriod"].as_i64().expect("cooldownPeriod");
    assert!(
        cooldown(vllm) >= cooldown(responder),
        "vLLM (a cold start of minutes) stays up at least as long as the responder"
    );
    // The responder waits for a cold vLLM instead of failing the message: a budget well
    // above the default, which is sized for Ollama.
    let budget: u64 = config(&objects)["LLM_COLD_START_SECS"].parse().expect("LLM_COLD_START_SECS");
    let base: u64 = config(&k8s_variant("ollama"))["LLM_COLD_START_SECS"].parse().expect("base budget");
    assert!(budget >= 600 && budget > base, "vllm's cold-start budget ({budget}s) covers a GPU cold start");
}

#[test]
fn the_external_kafka_variant_takes_the_brokers_and_credentials_from_the_secret() {
    let objects = k8s_variant("external-kafka");
    let cm = config(&objects);
    assert!(!cm.contains_key("KAFKA_BOOTSTRAP_SERVERS"), "no in-cluster address left in the ConfigMap");
    assert_eq!(cm["KAFKA_SECURITY_PROTOCOL"], "sasl_ssl");
    let clients = our_workloads(&objects);
    assert_eq!(clients.len(), 4, "gateway, responder, memory, the init Job");
    for w in &clients {
        for (var, key) in [
            ("KAFKA_BOOTSTRAP_SERVERS", "kafka-bootstrap-servers"),
            ("KAFKA_SASL_USERNAME", "kafka-sasl-username"),
            ("KAFKA_SASL_PASSWORD", "kafka-sasl-password"),
        ] {
            assert_eq!(required_secret(&w.container, var).as_deref(), Some(key), "{}: {var}", w.label);
        }
    }
    // KEDA: the same ScaledObjects as keda/, reading the address from the target's
    // environment and authenticating with keda/secured/.
    for n in ["responder", "memory"] {
        let plain = must(yaml_file(&repo_path(&format!("keda/{n}.yaml")))).remove(0);
        let mut external = must(yaml_file(&repo_path(&format!("keda/external-kafka/{n}.yaml")))).remove(0);
        for t in external["spec"]["triggers"].as_array_mut().expect("triggers") {
            assert_eq!(t["authenticationRef"], json!({"name": "kafka-auth"}), "keda/external-kafka/{n}.yaml");
            let m = t["metadata"].as_object_mut().expect("metadata");
            assert_eq!(m.remove("bootstrapServersFromEnv"), Some(json!("KAFKA_BOOTSTRAP_SERVERS")));
            m.insert("bootstrapServers".into(), json!(format!("kafka.{NAMESPACE}.svc:9092")));
            t.as_object_mut().expect("trigger").remove("authenticationRef");
        }
        assert_eq!(
            external, plain,
            "keda/external-kafka/{n}.yaml differs from keda/{n}.yaml in more than the broker"
        );
    }
    let auth = must(yaml_file(&repo_path("keda/secured/kafka-auth.yaml"))).remove(0);
    assert_eq!(name(&auth), "kafka-auth");
}

#[test]
fn the_private_ca_component_gives_every_kafka_client_the_ca_from_the_secret() {
    let objects = variant_with_component("external-kafka", "kafka-private-ca");
    assert!(secret_template().contains_key("kafka-ca.crt"), "the template names the CA's key");
    let clients = our_workloads(&objects);
    assert_eq!(clients.len(), 4, "gateway, both handlers and the bootstrap Job");
    for w in clients {
        let path = env_var(&w.container, "KAFKA_SSL_CA_LOCATION")
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("{}: KAFKA_SSL_CA_LOCATION", w.label));
        let (dir, file) = path.rsplit_once('/').expect("a file path");
        let mount = w.container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["mountPath"] == dir)
            .unwrap_or_else(|| panic!("{}: nothing mounted at {dir}", w.label));
        let volume = w.pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("{}: no volume {}", w.label, mount["name"]));
        assert_eq!(volume["secret"]["secretName"], SECRET, "{}", w.label);
        assert_eq!(
            volume["secret"]["items"],
            json!([{"key": "kafka-ca.crt", "path": file}]),
            "{}: the CA file is the Secret's kafka-ca.crt",
            w.label
        );
        assert!(volume["secret"]["optional"].is_null(), "{}: a missing CA stops the pod at start", w.label);
    }
}

#[test]
fn the_strimzi_variant_declares_every_topic_of_the_code() {
    let objects = k8s_variant("strimzi");
    let cm = config(&objects);
    let kafka = objects.iter().find(|o| kind(o) == "Kafka").expect("a Kafka");
    let pools: Vec<&Value> = objects.iter().filter(|o| kind(o) == "KafkaNodePool").collect();
    assert!(!pools.is_empty(), "KRaft needs node pools");
    let roles: BTreeSet<&str> = pools
        .iter()
        .flat_map(|p| p["spec"]["roles"].as_array().into_iter().flatten().filter_map(Value::as_str))
        .collect();
    assert_eq!(roles, BTreeSet::from(["broker", "controller"]), "KRaft: controllers and brokers");
    for p in &pools {
        assert_eq!(p["metadata"]["labels"]["strimzi.io/cluster"], json!(name(kafka)));
    }
    let partitions: u64 = cm["TOPIC_PARTITIONS"].parse().expect("TOPIC_PARTITIONS");
    let replication: u64 = cm["TOPIC_REPLICATION"].parse().expect("TOPIC_REPLICATION");
    let mut declared = BTreeSet::new();
    for t in objects.iter().filter(|o| kind(o) == "KafkaTopic") {
        assert_eq!(t["metadata"]["labels"]["strimzi.io/cluster"], json!(name(kafka)), "{}", name(t));
        assert_eq!(t["spec"]["partitions"], json!(partitions), "{}: TOPIC_PARTITIONS", name(t));
        assert_eq!(t["spec"]["replicas"], json!(replication), "{}: TOPIC_REPLICATION", name(t));
        declared.insert(t["spec"]["topicName"].as_str().expect("topicName").to_string());
    }
    let wanted: BTreeSet<String> = topics::all_with_dlq().into_iter().collect();
    assert_eq!(declared, wanted, "the topics and dead-letter topics of platform::topics");
    // The clients and KEDA keep `kafka:9092`: the Service selects the brokers.
    let svc = must(find(&objects, "Service", "kafka"));
    assert_eq!(svc["spec"]["selector"]["strimzi.io/cluster"], json!(name(kafka)));
    assert_eq!(svc["spec"]["selector"]["strimzi.io/broker-role"], "true");
    assert!(!objects.iter().any(|o| kind(o) == "StatefulSet" && name(o) == "kafka"));
    // (The strict schema check of these objects is in validators.rs.)
}

#[test]
fn committed_offsets_outlive_the_log_in_every_kafka_we_ship() {
    // An idle group whose commits expired (offsets.retention.minutes) makes KEDA count
    // the whole log-end offset as lag: keep commits far longer than records.
    let base = k8s_variant("ollama");
    let props = must(find(&base, "ConfigMap", "kafka-config"))["data"]["server.properties"]
        .as_str()
        .expect("server.properties")
        .to_string();
    let prop = |key: &str| -> u64 {
        props
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("server.properties sets no {key}"))
    };
    let strimzi = k8s_variant("strimzi");
    let config = &strimzi.iter().find(|o| kind(o) == "Kafka").expect("Kafka")["spec"]["kafka"]["config"];
    for (label, log_hours, offsets_minutes) in [
        ("k8s/base/kafka.yaml", prop("log.retention.hours"), prop("offsets.retention.minutes")),
        (
            "the strimzi Kafka",
            config["log.retention.hours"].as_u64().expect("log.retention.hours"),
            config["offsets.retention.minutes"].as_u64().expect("offsets.retention.minutes"),
        ),
    ] {
        assert!(
            offsets_minutes >= 4 * log_hours * 60,
            "{label}: offsets kept {offsets_minutes} min, records {log_hours} h: commits must outlive the log"
        );
    }
}
