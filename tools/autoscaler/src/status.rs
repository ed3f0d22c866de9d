//! What the autoscaler sees and did: `GET /status` for people and for the load test,
//! `GET /metrics` with the series a cluster's KEDA operator and kube-state-metrics
//! export (so the dashboard and the alerts of k8s/components/monitoring work unchanged
//! on the local stack), and a Prometheus file-discovery list of the replicas' admin
//! ports.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::Context;
use axum::{extract::State, routing::get, Json, Router};
use platform::sync::lock;
use serde::Serialize;
use tokio::{net::TcpListener, sync::watch};

/// The namespace the manifests use, as a cluster's series would carry it.
const NAMESPACE: &str = "chat-stack";

/// One trigger's latest reading.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TriggerStatus {
    /// The topic it watches.
    pub topic: String,
    /// The metric handed to the HPA (the lag, capped as KEDA caps it).
    pub metric: i64,
    /// Whether it wakes the target.
    pub active: bool,
}

/// One ScaledObject's latest state.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TargetStatus {
    /// The ScaledObject's name.
    pub name: String,
    /// The Deployment it scales.
    pub target: String,
    /// Processes running.
    pub replicas: u32,
    /// What the HPA wanted on the last poll.
    pub desired: u32,
    /// `maxReplicaCount`.
    pub max_replicas: u32,
    /// Total lag of its triggers on the last poll.
    pub lag: i64,
    /// Whether a trigger was active.
    pub active: bool,
    /// Each trigger, in the ScaledObject's order.
    pub triggers: Vec<TriggerStatus>,
    /// Replicas that exited without being told to.
    pub restarts: u64,
    /// `host:port` of each running replica's `/metrics`.
    pub metrics_targets: Vec<String>,
}

/// The body of `/status`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Status {
    /// One entry per ScaledObject.
    pub scaled_objects: Vec<TargetStatus>,
}

/// Shared, updated by the scaling loops.
pub type Shared = Arc<Mutex<Status>>;

/// Serves `/health`, `/status` and `/metrics` on `listen` until `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    status: Shared,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen} (--listen)"))?;
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/status", get(|State(s): State<Shared>| async move { Json(lock(&s).clone()) }))
        .route("/metrics", get(|State(s): State<Shared>| async move { render(&lock(&s)) }))
        .with_state(status);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|down| *down).await;
        })
        .await
        .context("serving /status")
}

/// The Prometheus text of `status`, under the names KEDA and kube-state-metrics use.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    let each = |f: &dyn Fn(&TargetStatus) -> Vec<(String, String)>| -> Vec<(String, String)> {
        status.scaled_objects.iter().flat_map(f).collect()
    };
    let scaler = |t: &TargetStatus, i: usize, topic: &str| {
        format!(
            "namespace=\"{NAMESPACE}\",scaledObject=\"{}\",scaler=\"kafkaScaler\",triggerIndex=\"{i}\",metric=\"s{i}-kafka-{topic}\",type=\"scaledobject\"",
            t.name
        )
    };
    family(
        "keda_scaler_metrics_value",
        "gauge",
        "The metric each trigger hands the HPA (Kafka: the group's lag, capped as KEDA caps it).",
        each(&|t| {
            t.triggers
                .iter()
                .enumerate()
                .map(|(i, tr)| (scaler(t, i, &tr.topic), tr.metric.to_string()))
                .collect()
        }),
    );
    family(
        "keda_scaler_active",
        "gauge",
        "Whether the trigger wakes its target (lag above activationLagThreshold).",
        each(&|t| {
            t.triggers
                .iter()
                .enumerate()
                .map(|(i, tr)| (scaler(t, i, &tr.topic), u8::from(tr.active).to_string()))
                .collect()
        }),
    );
    let deployment = |t: &TargetStatus| format!("namespace=\"{NAMESPACE}\",deployment=\"{}\"", t.target);
    let hpa = |t: &TargetStatus| {
        format!("namespace=\"{NAMESPACE}\",horizontalpodautoscaler=\"keda-hpa-{}\"", t.name)
    };
    family(
        "kube_deployment_status_replicas",
        "gauge",
        "Replicas running.",
        each(&|t| vec![(deployment(t), t.replicas.to_string())]),
    );
    family(
        "kube_deployment_status_replicas_available",
        "gauge",
        "Replicas running (locally, a running process counts as available).",
        each(&|t| vec![(deployment(t), t.replicas.to_string())]),
    );
    family(
        "kube_horizontalpodautoscaler_status_desired_replicas",
        "gauge",
        "Replicas the HPA wants on the last poll.",
        each(&|t| vec![(hpa(t), t.desired.to_string())]),
    );
    family(
        "kube_horizontalpodautoscaler_spec_max_replicas",
        "gauge",
        "maxReplicaCount.",
        each(&|t| vec![(hpa(t), t.max_replicas.to_string())]),
    );
    family(
        "kube_pod_container_status_restarts_total",
        "counter",
        "Replicas that exited by themselves (one series per target, not per pod).",
        each(&|t| {
            vec![(
                format!("namespace=\"{NAMESPACE}\",pod=\"{}\",container=\"{}\"", t.target, t.target),
                t.restarts.to_string(),
            )]
        }),
    );
    out
}

/// Writes the replicas' admin ports to `path` as a Prometheus `file_sd_configs` list
/// (job `chat-stack/<target>`, as a PodMonitor names it), replacing the file whole so
/// Prometheus never reads half of it.
pub fn write_targets(path: &Path, status: &Status) -> anyhow::Result<()> {
    let groups: Vec<serde_json::Value> = status
        .scaled_objects
        .iter()
        .map(|t| {
            serde_json::json!({
                "targets": t.metrics_targets,
                "labels": {"job": format!("{NAMESPACE}/{}", t.target), "namespace": NAMESPACE},
            })
        })
        .collect();
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&groups)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Status {
        Status {
            scaled_objects: vec![TargetStatus {
                name: "memory".into(),
                target: "memory".into(),
                replicas: 2,
                desired: 3,
                max_replicas: 6,
                lag: 70,
                active: true,
                triggers: vec![
                    TriggerStatus { topic: "user_messages".into(), metric: 60, active: true },
                    TriggerStatus { topic: "model_responses".into(), metric: 10, active: true },
                ],
                restarts: 1,
                metrics_targets: vec!["127.0.0.1:40001".into(), "127.0.0.1:40002".into()],
            }],
        }
    }

    #[test]
    fn renders_the_series_a_cluster_would_export() {
        let text = render(&status());
        for line in [
            r#"keda_scaler_metrics_value{namespace="chat-stack",scaledObject="memory",scaler="kafkaScaler",triggerIndex="1",metric="s1-kafka-model_responses",type="scaledobject"} 10"#,
            r#"keda_scaler_active{namespace="chat-stack",scaledObject="memory",scaler="kafkaScaler",triggerIndex="0",metric="s0-kafka-user_messages",type="scaledobject"} 1"#,
            r#"kube_deployment_status_replicas{namespace="chat-stack",deployment="memory"} 2"#,
            r#"kube_horizontalpodautoscaler_status_desired_replicas{namespace="chat-stack",horizontalpodautoscaler="keda-hpa-memory"} 3"#,
            r#"kube_horizontalpodautoscaler_spec_max_replicas{namespace="chat-stack",horizontalpodautoscaler="keda-hpa-memory"} 6"#,
            r#"kube_pod_container_status_restarts_total{namespace="chat-stack",pod="memory",container="memory"} 1"#,
            "# TYPE kube_pod_container_status_restarts_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn lists_each_targets_replicas_for_file_discovery() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("targets.json");
        write_targets(&path, &status()).expect("written");
        let groups: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("JSON");
        assert_eq!(groups[0]["targets"], serde_json::json!(["127.0.0.1:40001", "127.0.0.1:40002"]));
        assert_eq!(groups[0]["labels"]["job"], "chat-stack/memory");
    }
}
