//! The parts of a KEDA `ScaledObject` with Kafka triggers that scaling depends on, read
//! from the same YAML files `kubectl apply -f keda/` applies, with KEDA's defaults.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{bail, Context};
use serde::Deserialize;

/// One ScaledObject, as scaling needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaledObject {
    /// `metadata.name`.
    pub name: String,
    /// `spec.scaleTargetRef.name`: the Deployment (here: the handler binary) it scales.
    pub target: String,
    /// How often lag is read (`pollingInterval`, default 30 s).
    pub polling_interval: Duration,
    /// How long without activity before scaling to zero (`cooldownPeriod`, default 300 s).
    pub cooldown: Duration,
    /// `minReplicaCount` (default 0).
    pub min_replicas: u32,
    /// `maxReplicaCount` (default 100).
    pub max_replicas: u32,
    /// The HPA's scale-down stabilization window (default 300 s).
    pub scale_down_window: Duration,
    /// Kafka triggers.
    pub triggers: Vec<KafkaTrigger>,
}

/// One `type: kafka` trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaTrigger {
    /// `consumerGroup`.
    pub group: String,
    /// `topic`.
    pub topic: String,
    /// `lagThreshold` (default 10): the lag one replica is meant to absorb.
    pub lag_threshold: i64,
    /// `activationLagThreshold` (default 0): lag above this wakes the target from zero.
    pub activation_lag_threshold: i64,
    /// `offsetResetPolicy` (default latest).
    pub earliest: bool,
    /// `allowIdleConsumers` (default false).
    pub allow_idle_consumers: bool,
    /// `limitToPartitionsWithLag` (default false).
    pub limit_to_partitions_with_lag: bool,
    /// `scaleToZeroOnInvalidOffset` (default false).
    pub scale_to_zero_on_invalid_offset: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    kind: String,
    metadata: RawMeta,
    spec: RawSpec,
}

#[derive(Deserialize)]
struct RawMeta {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    scale_target_ref: RawTarget,
    polling_interval: Option<u64>,
    cooldown_period: Option<u64>,
    min_replica_count: Option<u32>,
    max_replica_count: Option<u32>,
    advanced: Option<serde_yaml::Value>,
    triggers: Vec<RawTrigger>,
}

#[derive(Deserialize)]
struct RawTarget {
    name: String,
}

#[derive(Deserialize)]
struct RawTrigger {
    #[serde(rename = "type")]
    kind: String,
    metadata: BTreeMap<String, String>,
}

impl ScaledObject {
    /// Reads every ScaledObject in the YAML files directly inside `dir` (not its
    /// subfolders, like `kubectl apply -f dir`).
    pub fn load_dir(dir: &Path) -> anyhow::Result<Vec<Self>> {
        let mut found = Vec::new();
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        paths.sort();
        for path in paths {
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            found.extend(Self::parse(&text).with_context(|| format!("in {}", path.display()))?);
        }
        if found.is_empty() {
            bail!("no ScaledObject in {}", dir.display());
        }
        Ok(found)
    }

    /// Reads the ScaledObjects among the YAML documents of `text`.
    pub fn parse(text: &str) -> anyhow::Result<Vec<Self>> {
        let mut out = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = serde_yaml::Value::deserialize(doc).context("not YAML")?;
            if value.get("kind").and_then(|k| k.as_str()) != Some("ScaledObject") {
                continue;
            }
            let raw: Raw = serde_yaml::from_value(value).context("not a ScaledObject")?;
            debug_assert_eq!(raw.kind, "ScaledObject");
            out.push(Self::from_raw(raw)?);
        }
        Ok(out)
    }

    fn from_raw(raw: Raw) -> anyhow::Result<Self> {
        let name = raw.metadata.name;
        let window = raw
            .spec
            .advanced
            .as_ref()
            .and_then(|a| a.get("horizontalPodAutoscalerConfig"))
            .and_then(|h| h.get("behavior"))
            .and_then(|b| b.get("scaleDown"))
            .and_then(|s| s.get("stabilizationWindowSeconds"))
            .and_then(|w| w.as_u64())
            .unwrap_or(300);
        let triggers = raw
            .spec
            .triggers
            .into_iter()
            .filter(|t| t.kind == "kafka")
            .map(|t| KafkaTrigger::from_metadata(&t.metadata))
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("ScaledObject {name}"))?;
        if triggers.is_empty() {
            bail!("ScaledObject {name} has no kafka trigger");
        }
        Ok(Self {
            target: raw.spec.scale_target_ref.name,
            polling_interval: Duration::from_secs(raw.spec.polling_interval.unwrap_or(30)),
            cooldown: Duration::from_secs(raw.spec.cooldown_period.unwrap_or(300)),
            min_replicas: raw.spec.min_replica_count.unwrap_or(0),
            max_replicas: raw.spec.max_replica_count.unwrap_or(100),
            scale_down_window: Duration::from_secs(window),
            triggers,
            name,
        })
    }
}

impl KafkaTrigger {
    fn from_metadata(m: &BTreeMap<String, String>) -> anyhow::Result<Self> {
        let text = |k: &str| m.get(k).map(String::as_str);
        let required =
            |k: &str| text(k).map(str::to_string).with_context(|| format!("kafka trigger without {k}"));
        let number = |k: &str, default: i64| -> anyhow::Result<i64> {
            text(k).map_or(Ok(default), |v| v.parse().with_context(|| format!("{k}: {v:?} is not a number")))
        };
        let flag = |k: &str| text(k).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let lag_threshold = number("lagThreshold", 10)?;
        if lag_threshold <= 0 {
            bail!("lagThreshold must be above 0");
        }
        Ok(Self {
            group: required("consumerGroup")?,
            topic: required("topic")?,
            lag_threshold,
            activation_lag_threshold: number("activationLagThreshold", 0)?,
            earliest: text("offsetResetPolicy") == Some("earliest"),
            allow_idle_consumers: flag("allowIdleConsumers"),
            limit_to_partitions_with_lag: flag("limitToPartitionsWithLag"),
            scale_to_zero_on_invalid_offset: flag("scaleToZeroOnInvalidOffset"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_repositorys_scaled_objects_with_their_values() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../keda");
        let objects = ScaledObject::load_dir(&dir).expect("keda/ parses");
        let names: Vec<_> = objects.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["memory", "responder"]);
        let memory = &objects[0];
        assert_eq!(memory.triggers.len(), 2, "memory scales on two topics");
        let responder = &objects[1];
        assert_eq!(responder.target, "responder");
        assert_eq!(responder.min_replicas, 0);
        assert!(responder.max_replicas >= 2);
        let t = &responder.triggers[0];
        assert_eq!((t.group.as_str(), t.topic.as_str()), ("responder", "user_messages"));
        assert!(t.earliest && t.lag_threshold > 0);
    }

    #[test]
    fn keda_defaults_apply_when_fields_are_missing() {
        let yaml = "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: x}\nspec:\n  scaleTargetRef: {name: x}\n  triggers:\n  - type: kafka\n    metadata: {consumerGroup: g, topic: t}\n---\nkind: ConfigMap\nmetadata: {name: y}\n";
        let objects = ScaledObject::parse(yaml).expect("parses");
        assert_eq!(objects.len(), 1, "other kinds are skipped");
        let o = &objects[0];
        assert_eq!(
            (o.polling_interval.as_secs(), o.cooldown.as_secs(), o.min_replicas, o.max_replicas),
            (30, 300, 0, 100)
        );
        assert_eq!(o.triggers[0].lag_threshold, 10);
        assert!(!o.triggers[0].earliest, "offsetResetPolicy defaults to latest");
    }

    #[test]
    fn a_bad_threshold_is_named() {
        let yaml = "kind: ScaledObject\nmetadata: {name: x}\nspec:\n  scaleTargetRef: {name: x}\n  triggers:\n  - type: kafka\n    metadata: {consumerGroup: g, topic: t, lagThreshold: ten}\n";
        let err = ScaledObject::parse(yaml).expect_err("rejected");
        assert!(format!("{err:#}").contains("lagThreshold"), "{err:#}");
    }
}
