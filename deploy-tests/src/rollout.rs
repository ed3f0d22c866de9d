//! What the API server refuses when one deploy follows another, and what a node needs
//! to pull the pipeline's images: checks of rendered objects, without a cluster.

use serde_json::Value;

use crate::{containers, kind, name, netpol::namespace_of, pod_template};

/// The fields of a kind that the API server refuses to change on an existing object
/// (`field is immutable`; `kubectl apply` fails and `kubectl diff` exits 2). Paths are
/// JSON pointers; a field absent from both versions is no conflict.
fn immutable_fields(kind_: &str) -> &'static [&'static str] {
    match kind_ {
        // A Job's pod template and selector (and completions, unless indexed) are fixed.
        "Job" => &["/spec/template", "/spec/selector", "/spec/completions", "/spec/completionMode"],
        "Deployment" | "ReplicaSet" | "DaemonSet" => &["/spec/selector"],
        "StatefulSet" => &[
            "/spec/selector",
            "/spec/serviceName",
            "/spec/volumeClaimTemplates",
            "/spec/podManagementPolicy",
        ],
        "PersistentVolumeClaim" => &["/spec/accessModes", "/spec/storageClassName", "/spec/volumeMode"],
        "Service" => &["/spec/clusterIP"],
        _ => &[],
    }
}

fn identity(obj: &Value) -> (String, String, String, String) {
    let group = obj["apiVersion"].as_str().unwrap_or("").split('/').next().unwrap_or("").to_string();
    (group, kind(obj).to_string(), namespace_of(obj).to_string(), name(obj).to_string())
}

/// The objects of `next` that exist in `deployed` (same group, kind, namespace and
/// name) with a different immutable field: what applying `next` over `deployed`, or
/// diffing it against them, would fail on. One line per conflict.
pub fn immutable_conflicts(deployed: &[Value], next: &[Value]) -> Vec<String> {
    let mut conflicts = Vec::new();
    for new in next {
        let id = identity(new);
        let Some(old) = deployed.iter().find(|o| identity(o) == id) else { continue };
        for field in immutable_fields(kind(new)) {
            let (a, b) = (old.pointer(field), new.pointer(field));
            let both_absent = a.is_none() && b.is_none();
            if !both_absent && a != b {
                conflicts.push(format!(
                    "{} {}/{}: {field} is immutable and differs between the two deploys",
                    id.1, id.2, id.3
                ));
            }
        }
        if new["immutable"] == Value::Bool(true)
            && (old["data"] != new["data"] || old["binaryData"] != new["binaryData"])
        {
            conflicts.push(format!("{} {}/{}: immutable data differs", id.1, id.2, id.3));
        }
    }
    conflicts
}

/// Every pod of `objects` that still names a `localhost/` image (one no node can
/// pull), or runs an image under `our_prefix` without `pull_secret` among its
/// `imagePullSecrets`. One line per problem.
pub fn pull_secret_problems(objects: &[Value], our_prefix: &str, pull_secret: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for obj in objects {
        let Some(template) = pod_template(obj) else { continue };
        let spec = &template["spec"];
        let has_secret = spec["imagePullSecrets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["name"].as_str() == Some(pull_secret));
        for c in containers(spec) {
            let image = c["image"].as_str().unwrap_or("");
            let label = format!("{} {}/{}", kind(obj), name(obj), c["name"].as_str().unwrap_or(""));
            if image.starts_with("localhost/") {
                problems.push(format!("{label}: {image} is a local image no node can pull"));
            } else if image.starts_with(our_prefix) && !has_secret {
                problems.push(format!("{label}: {image} is pulled without the pull secret {pull_secret}"));
            }
        }
    }
    problems
}
