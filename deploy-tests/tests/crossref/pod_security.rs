//! Pod security, resources, shutdown: every pod is locked down, and handlers get more time to
//! stop than their drain.

use deploy_tests::{containers, find, kind, name, pod_template};
use serde_json::{json, Value};

use crate::common::{all_objects, config, every_variant, must, our_workloads, NAMESPACE};

#[test]
fn every_pod_is_non_root_read_only_and_confined() {
    for (variant, objects) in every_variant() {
        confined(&variant, &objects);
    }
}

fn confined(variant: &str, objects: &[Value]) {
    let namespace = must(find(objects, "Namespace", NAMESPACE));
    assert_eq!(namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted");
    let mut pods = 0;
    for obj in objects {
        let Some(template) = pod_template(obj) else { continue };
        pods += 1;
        let spec = &template["spec"];
        let label = format!("{variant}: {} {}", kind(obj), name(obj));
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
    assert!(pods >= 6, "{variant}: expected every workload (found {pods})");
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
