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
