//! KEDA: the triggers watch the groups and topics of `platform::topics`.

use std::{collections::BTreeSet, fs};

use deploy_tests::{find, kind, name, port_of, repo_path, yaml_files_in};
use platform::topics;
use serde_json::Value;

use crate::common::{config, k8s, keda, must, NAMESPACE};

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
                assert!(
                    deployment["spec"]["replicas"].is_null(),
                    "{label}: KEDA's HPA owns the replicas; a `replicas:` in the manifest is reset by every apply"
                );
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
