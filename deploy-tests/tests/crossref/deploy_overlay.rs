//! The pipeline's deploy overlay (ci/deploy-overlay.sh): a pull request's `kubectl diff`
//! works right after a deploy to main, and every pod it sends can pull its image.

use std::fs;

use deploy_tests::{
    find, fixture, kustomize, pod_template, repo_path,
    rollout::{immutable_conflicts, pull_secret_problems},
    yaml_documents, yaml_file,
};
use serde_json::Value;

use crate::common::{must, overlay, variant_names, Overlay, PULL_SECRET, PUSHED_PREFIX};

/// The default (k8s/) and every variant, as the overlay's VARIANT argument.
fn deploy_choices() -> Vec<Option<String>> {
    let mut all = vec![None];
    all.extend(variant_names().into_iter().map(Some));
    all
}

fn everything(o: &Overlay) -> Vec<Value> {
    o.k8s.iter().chain(&o.keda).chain(&o.scaled_jobs).cloned().collect()
}

#[test]
fn a_pull_request_diff_right_after_a_deploy_changes_no_immutable_field() {
    // main deployed commit A (its finished bootstrap Job lives on for
    // ttlSecondsAfterFinished); a pull request diffs commit B against it. An object of
    // B that exists in A with another immutable field makes `kubectl diff` exit 2.
    for variant in deploy_choices() {
        let v = variant.as_deref();
        let deployed = overlay("1111111111111111111111111111111111111111", v);
        let next = overlay("2222222222222222222222222222222222222222", v);
        let conflicts = immutable_conflicts(&everything(&deployed), &everything(&next));
        assert!(conflicts.is_empty(), "{v:?}: kubectl diff would fail:\n{}", conflicts.join("\n"));
        // The Job is there, once, under the name the workflow waits for.
        assert_ne!(deployed.init_job, next.init_job, "{v:?}: the bootstrap Job is named per commit");
        for o in [&deployed, &next] {
            let job = must(find(&o.k8s, "Job", &o.init_job));
            assert!(job["spec"]["ttlSecondsAfterFinished"].as_u64().is_some(), "{v:?}: finished Jobs expire");
            assert!(o.init_job.len() <= 63, "{v:?}: a Job name goes into a 63-character label");
        }
    }
}

#[test]
fn the_immutability_check_rejects_a_job_whose_template_follows_the_commit() {
    let render = |sub: &str| must(yaml_documents(&must(kustomize(&fixture(sub)))));
    let conflicts = immutable_conflicts(&render("immutable-job/deployed"), &render("immutable-job/next"));
    assert!(
        conflicts.iter().any(|c| c.contains("Job broken/init") && c.contains("/spec/template")),
        "the check must report the Job's template: {conflicts:?}"
    );
}

#[test]
fn the_workflow_diffs_and_applies_only_what_the_overlay_rendered() {
    let text = fs::read_to_string(repo_path(".github/workflows/ci.yml")).expect("workflow");
    let workflow = must(yaml_documents(&text)).remove(0);
    let mut commands = Vec::new();
    for job in workflow["jobs"].as_object().expect("jobs").values() {
        for step in job["steps"].as_array().into_iter().flatten() {
            for line in step["run"].as_str().unwrap_or("").lines().map(str::trim) {
                let is_command = !line.starts_with('#') && !line.starts_with("echo");
                if is_command && (line.contains("kubectl diff") || line.contains("kubectl apply")) {
                    commands.push(line.to_string());
                }
            }
        }
    }
    assert!(commands.len() >= 4, "expected the diff and apply commands: {commands:?}");
    for c in &commands {
        assert!(
            c.contains("-k \"$RUNNER_TEMP/overlay/k8s\"") || c.contains("-k \"$RUNNER_TEMP/overlay/keda\""),
            "{c:?}: the pipeline must send the overlay (pushed images, pull secret, per-commit Job)"
        );
    }
    assert!(
        text.contains("job=$(cat \"$RUNNER_TEMP/overlay/init-job-name\")") && text.contains("\"job/$job\""),
        "the apply waits for this commit's bootstrap Job"
    );
    assert!(!text.contains("delete job"), "nothing needs deleting before an apply any more");
}

#[test]
fn every_pod_the_overlay_sends_pulls_a_pushed_image_with_the_pull_secret() {
    for variant in deploy_choices() {
        let o = overlay("0123456789abcdef", variant.as_deref());
        let all = everything(&o);
        let problems = pull_secret_problems(&all, PUSHED_PREFIX, PULL_SECRET);
        assert!(problems.is_empty(), "{variant:?}:\n{}", problems.join("\n"));
        // The ScaledJobs are covered too (they are not in k8s/).
        let ours = o
            .scaled_jobs
            .iter()
            .filter(|obj| {
                pod_template(obj).is_some_and(|t| t["spec"]["imagePullSecrets"][0]["name"] == PULL_SECRET)
            })
            .count();
        let expected = if variant.as_deref() == Some("external-kafka") { 0 } else { 2 };
        assert_eq!(ours, expected, "{variant:?}: both ScaledJobs (if any) get the pull secret");
        let scales_vllm = o.keda.iter().any(|obj| obj["spec"]["scaleTargetRef"]["name"] == "vllm");
        assert_eq!(scales_vllm, variant.as_deref() == Some("vllm"), "{variant:?}: keda/vllm/ with vllm only");
    }
    let readme = fs::read_to_string(repo_path("README.md")).expect("README.md");
    assert!(
        readme.contains(&format!("create secret docker-registry {PULL_SECRET}")),
        "README must show how to create the pull secret {PULL_SECRET}"
    );
}

#[test]
fn the_pull_secret_check_rejects_a_local_image_and_a_private_image_without_secret() {
    let objects = must(yaml_file(&fixture("broken-pull-secret/objects.yaml")));
    let problems = pull_secret_problems(&objects, PUSHED_PREFIX, PULL_SECRET);
    for expected in ["Deployment gateway/gateway", "ScaledJob responder/responder"] {
        assert!(problems.iter().any(|p| p.starts_with(expected)), "{expected} not reported: {problems:?}");
    }
    assert!(problems.iter().any(|p| p.contains("local image")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("without the pull secret")), "{problems:?}");
}

/// Plural resource name of a kind, as RBAC rules name it.
fn resource_of(kind_: &str) -> String {
    let lower = kind_.to_lowercase();
    let consonant_y = lower.ends_with('y') && !["ay", "ey", "oy", "uy"].iter().any(|v| lower.ends_with(v));
    if consonant_y {
        format!("{}ies", &lower[..lower.len() - 1])
    } else if lower.ends_with('s') {
        format!("{lower}es")
    } else {
        format!("{lower}s")
    }
}

#[test]
fn the_diff_identity_can_diff_everything_the_overlay_renders_and_nothing_more() {
    let rbac = must(yaml_file(&repo_path("k8s/optional/ci-diff-rbac.yaml")));
    let role = must(find(&rbac, "Role", "ci-diff"));
    let cluster_role = rbac.iter().find(|o| o["kind"] == "ClusterRole").expect("a ClusterRole");
    for rule in role["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(cluster_role["rules"].as_array().into_iter().flatten())
    {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(
                !rule[field].as_array().into_iter().flatten().any(|v| v == "*"),
                "no wildcards in the diff identity's rules: {rule}"
            );
        }
        for verb in rule["verbs"].as_array().into_iter().flatten() {
            assert!(["get", "list", "create", "patch"].contains(&verb.as_str().unwrap_or("")), "verb {verb}");
        }
        assert!(!rule["resources"].as_array().into_iter().flatten().any(|r| r == "secrets"), "no Secrets");
    }
    let allows = |rules: &Value, group: &str, resource: &str, verb: &str, name_: Option<&str>| {
        rules.as_array().into_iter().flatten().any(|r| {
            let has = |f: &str, v: &str| r[f].as_array().into_iter().flatten().any(|x| x == v);
            has("apiGroups", group)
                && has("resources", resource)
                && has("verbs", verb)
                && (r["resourceNames"].is_null() || name_.is_some_and(|n| has("resourceNames", n)))
        })
    };
    let mut objects: Vec<Value> = Vec::new();
    for variant in deploy_choices() {
        objects.extend(everything(&overlay("0123abc", variant.as_deref())));
    }
    objects.extend(crate::common::variant_with_component("ollama", "gateway-api"));
    for obj in &objects {
        let api = obj["apiVersion"].as_str().unwrap_or("");
        let group = api.rsplit_once('/').map_or("", |(g, _)| g);
        let resource = resource_of(obj["kind"].as_str().unwrap_or(""));
        for verb in ["get", "create", "patch"] {
            let ok = if obj["kind"] == "Namespace" {
                verb == "create"
                    || allows(
                        &cluster_role["rules"],
                        group,
                        &resource,
                        verb,
                        obj["metadata"]["name"].as_str(),
                    )
            } else {
                allows(&role["rules"], group, &resource, verb, None)
            };
            assert!(ok, "the diff identity cannot {verb} {group}/{resource} ({})", obj["metadata"]["name"]);
        }
    }
}

/// What lets a pull request's code near the deploy credential, or hides a failing
/// install: the deploy kubeconfig (secret KUBECONFIG) used outside a job that runs only
/// for pushes to main behind an environment, and `eval "$(… ensure)"`.
fn credential_problems(workflow_text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if workflow_text.contains("eval \"$(") {
        problems.push("`eval \"$(… ensure)\"` hides a failing install: use ci/lib.sh's use_env".into());
    }
    let workflow = must(yaml_documents(workflow_text)).remove(0);
    for (id, job) in workflow["jobs"].as_object().into_iter().flatten() {
        let text = serde_yaml::to_string(job).unwrap_or_default();
        if !text.contains("secrets.KUBECONFIG }}") {
            continue;
        }
        let cond = job["if"].as_str().unwrap_or("");
        if !(cond.contains("github.event_name == 'push'") && cond.contains("refs/heads/main")) {
            problems.push(format!("job {id}: the deploy credential outside pushes to main (if: {cond:?})"));
        }
        let env_name = job["environment"].as_str().or_else(|| job["environment"]["name"].as_str());
        if env_name.is_none() {
            problems
                .push(format!("job {id}: the deploy credential without an environment (required reviewers)"));
        }
    }
    problems
}

#[test]
fn the_deploy_credential_is_behind_an_environment_and_never_in_a_pull_request() {
    let text = fs::read_to_string(repo_path(".github/workflows/ci.yml")).expect("workflow");
    let problems = credential_problems(&text);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let workflow = must(yaml_documents(&text)).remove(0);
    let diff = &workflow["jobs"]["diff"];
    assert_eq!(diff["if"], "github.event_name == 'pull_request'");
    assert_eq!(diff["environment"], "cluster-diff");
    assert!(serde_yaml::to_string(diff).unwrap_or_default().contains("secrets.KUBECONFIG_DIFF }}"));
    assert_eq!(workflow["jobs"]["deploy"]["environment"], "production");
    let readme = fs::read_to_string(repo_path("README.md")).expect("README.md");
    for needed in ["KUBECONFIG_DIFF", "cluster-diff", "production", "k8s/optional/ci-diff-rbac.yaml"] {
        assert!(readme.contains(needed), "README must explain {needed}");
    }
}

#[test]
fn the_credential_check_rejects_a_pull_request_job_with_the_deploy_kubeconfig() {
    let text = fs::read_to_string(fixture("broken-workflow-deploy.yml")).expect("fixture");
    let problems = credential_problems(&text);
    for expected in ["eval", "outside pushes to main", "without an environment"] {
        assert!(problems.iter().any(|p| p.contains(expected)), "{expected:?} not reported: {problems:?}");
    }
}
