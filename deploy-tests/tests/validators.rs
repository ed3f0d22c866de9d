//! The validators, run on the real files and on deliberately broken fixtures
//! (deploy-tests/fixtures/): each must accept the first and reject the second.
//!
//! The tools come from ci/deps/validators.sh (`eval "$(ci/deps/validators.sh ensure)"`);
//! a missing tool fails the test with that instruction.

use std::{ffi::OsStr, fs, path::Path};

use deploy_tests::{
    check_keda_objects, fixture, keda_schemas, kind, kubernetes_validate, kubernetes_validate_clean,
    kustomize, labelled_objects, name, repo_path, run_tool, yaml_documents, yaml_file, yaml_files_in,
};
use serde_json::Value;

fn must<T>(result: anyhow::Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Renders a kustomization into a temp file and validates it strictly.
fn validate_kustomization(dir: &Path) -> (String, deploy_tests::Outcome) {
    let rendered = must(kustomize(dir));
    let tmp = tempfile::NamedTempFile::new().expect("temp file");
    fs::write(tmp.path(), &rendered).expect("write rendered manifests");
    (rendered, must(kubernetes_validate(tmp.path())))
}

#[test]
fn k8s_kustomization_is_strictly_valid() {
    let (rendered, out) = validate_kustomization(&repo_path("k8s"));
    assert!(kubernetes_validate_clean(&out), "k8s/ does not validate strictly:\n{out}");
    let objects = must(yaml_documents(&rendered));
    // One "passed" line per object: nothing was skipped.
    let passed = out.output().matches("passed for resource").count();
    assert_eq!(passed, objects.len(), "not every object was validated:\n{out}");
    for expected in [
        "Namespace",
        "ConfigMap",
        "Deployment",
        "StatefulSet",
        "Job",
        "Service",
        "Ingress",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
        "NetworkPolicy",
    ] {
        assert!(objects.iter().any(|o| kind(o) == expected), "k8s/ renders no {expected}");
    }
    assert!(
        !objects.iter().any(|o| kind(o) == "Secret"),
        "k8s/ must not apply a Secret (placeholders would overwrite the real values)"
    );
}

#[test]
fn secret_template_and_optional_objects_are_strictly_valid() {
    let mut files = vec![repo_path("k8s/secrets.template.yaml")];
    files.extend(must(yaml_files_in(&repo_path("k8s/optional"))));
    for file in files {
        let out = must(kubernetes_validate(&file));
        assert!(kubernetes_validate_clean(&out), "{} does not validate strictly:\n{out}", file.display());
    }
}

#[test]
fn kubernetes_validate_rejects_a_broken_manifest() {
    let (_, out) = validate_kustomization(&fixture("broken-k8s"));
    assert!(!kubernetes_validate_clean(&out), "the broken fixture passed:\n{out}");
    let text = out.output();
    assert!(text.contains("imagePullPolicyy"), "the misspelt field was not reported:\n{out}");
    assert!(text.contains("two"), "the wrong type was not reported:\n{out}");
}

#[test]
fn kubernetes_validate_unknown_kind_counts_as_failure() {
    let out = must(kubernetes_validate(&fixture("unknown-kind.yaml")));
    assert!(out.output().contains("WARN"), "expected the tool's unknown-kind warning:\n{out}");
    assert!(!kubernetes_validate_clean(&out), "an unknown kind must fail validation:\n{out}");
}

fn keda_dirs() -> Vec<std::path::PathBuf> {
    vec![repo_path("keda"), repo_path("keda/scaledjobs"), repo_path("keda/secured")]
}

#[test]
fn keda_objects_are_valid_against_the_crds_with_unknown_fields_rejected() {
    let schemas = must(keda_schemas(&repo_path("ci/schemas/keda")));
    let mut objects = Vec::new();
    for dir in keda_dirs() {
        objects.extend(must(labelled_objects(&dir)));
    }
    let kinds: Vec<&str> = objects.iter().map(|(_, o)| kind(o)).collect();
    for expected in ["ScaledObject", "ScaledJob", "TriggerAuthentication"] {
        assert!(kinds.contains(&expected), "keda/ has no {expected}");
    }
    let out = must(check_keda_objects(&objects, &schemas));
    assert!(out.success, "KEDA objects do not match the CRDs:\n{out}");
}

#[test]
fn keda_schema_check_rejects_each_broken_object() {
    let schemas = must(keda_schemas(&repo_path("ci/schemas/keda")));
    let fixtures = must(yaml_files_in(&fixture("broken-keda")));
    assert!(fixtures.len() >= 4, "expected the broken KEDA fixtures");
    for file in fixtures {
        let objects: Vec<(String, Value)> =
            must(yaml_file(&file)).into_iter().map(|o| (file.display().to_string(), o)).collect();
        let out = must(check_keda_objects(&objects, &schemas));
        assert!(!out.success, "{} passed the strict KEDA schema:\n{out}", file.display());
    }
}

#[test]
fn keda_objects_apply_with_kubectl_apply_f() {
    // `kubectl apply -f keda/` sends every object of every file in keda/ (not its
    // subdirectories): plain object lists with their namespace, no kustomization.
    for dir in keda_dirs() {
        assert!(!dir.join("kustomization.yaml").exists(), "{} must not be a kustomization", dir.display());
        for (file, obj) in must(labelled_objects(&dir)) {
            assert_eq!(obj["apiVersion"], "keda.sh/v1alpha1", "{file}: not a KEDA object");
            assert!(!name(&obj).is_empty(), "{file}: object without a name");
            assert_eq!(
                obj["metadata"]["namespace"],
                "chat-stack",
                "{file}: {} must name its namespace (kubectl apply -f has no kustomization to add it)",
                name(&obj)
            );
        }
    }
    let top: Vec<_> = must(labelled_objects(&repo_path("keda"))).into_iter().map(|(_, o)| o).collect();
    assert!(
        top.iter().all(|o| kind(o) == "ScaledObject"),
        "keda/ itself holds only the ScaledObjects; ScaledJobs and the TriggerAuthentication are opt-in subfolders"
    );
}

#[test]
fn dockerfile_passes_hadolint() {
    let out = must(run_tool("hadolint", ["Dockerfile"]));
    assert!(out.success, "hadolint found problems in the Dockerfile:\n{out}");
}

#[test]
fn hadolint_rejects_a_broken_dockerfile() {
    let out = must(run_tool("hadolint", [fixture("broken.Dockerfile")]));
    assert!(!out.success, "hadolint accepted the broken Dockerfile:\n{out}");
    assert!(out.output().contains("DL3004"), "expected the sudo rule (DL3004):\n{out}");
}

fn workflows() -> Vec<std::path::PathBuf> {
    must(yaml_files_in(&repo_path(".github/workflows")))
}

#[test]
fn workflow_passes_actionlint_with_shellcheck() {
    // actionlint skips the `run:` scripts silently when shellcheck is missing.
    must(deploy_tests::tool("shellcheck"));
    let mut args: Vec<std::ffi::OsString> =
        vec!["-shellcheck".into(), must(deploy_tests::tool("shellcheck")).into()];
    args.extend(workflows().into_iter().map(Into::into));
    let out = must(run_tool("actionlint", args));
    assert!(out.success, "actionlint found problems:\n{out}");
}

#[test]
fn actionlint_and_shellcheck_reject_a_broken_workflow() {
    let shellcheck = must(deploy_tests::tool("shellcheck"));
    let out = must(run_tool(
        "actionlint",
        [
            OsStr::new("-shellcheck"),
            shellcheck.as_os_str(),
            fixture("broken-workflow-actionlint.yml").as_os_str(),
        ],
    ));
    assert!(!out.success, "actionlint accepted the broken workflow:\n{out}");
    let text = out.output();
    assert!(text.contains("[job-needs]"), "the undefined job was not reported:\n{out}");
    assert!(text.contains("no_such_property"), "the unknown property was not reported:\n{out}");
    assert!(text.contains("SC2086"), "ShellCheck did not run on the `run:` script:\n{out}");
}

#[test]
fn workflow_passes_zizmor_offline() {
    let mut args: Vec<std::ffi::OsString> = vec!["--offline".into(), "--no-progress".into()];
    args.extend(workflows().into_iter().map(Into::into));
    let out = must(run_tool("zizmor", args));
    assert!(out.success, "zizmor found problems:\n{out}");
}

#[test]
fn zizmor_rejects_an_insecure_workflow() {
    let out = must(run_tool(
        "zizmor",
        [
            OsStr::new("--offline"),
            OsStr::new("--no-progress"),
            fixture("broken-workflow-zizmor.yml").as_os_str(),
        ],
    ));
    assert!(!out.success, "zizmor accepted the insecure workflow:\n{out}");
    let text = out.output();
    for audit in ["template-injection", "dangerous-triggers", "unpinned-uses"] {
        assert!(text.contains(audit), "zizmor did not report {audit}:\n{out}");
    }
}

#[test]
fn workflow_actions_are_pinned_to_full_commit_shas() {
    for file in workflows() {
        let text = fs::read_to_string(&file).expect("read workflow");
        for line in text
            .lines()
            .filter(|l| l.trim_start().starts_with("- uses:") || l.trim_start().starts_with("uses:"))
        {
            let reference = line.split("uses:").nth(1).unwrap_or("").trim();
            let (action, rest) = reference.split_once('@').unwrap_or((reference, ""));
            let sha = rest.split_whitespace().next().unwrap_or("");
            assert!(
                action.starts_with("./") || (sha.len() == 40 && sha.chars().all(|c| c.is_ascii_hexdigit())),
                "{}: {line:?} is not pinned to a full commit SHA",
                file.display()
            );
            assert!(
                rest.contains("# v"),
                "{}: {line:?} should name its release in a comment",
                file.display()
            );
        }
    }
}

fn yamllint(paths: &[std::path::PathBuf]) -> deploy_tests::Outcome {
    let mut args: Vec<std::ffi::OsString> =
        vec!["--strict".into(), "-c".into(), repo_path("deploy-tests/yamllint.yaml").into()];
    args.extend(paths.iter().cloned().map(Into::into));
    must(run_tool("yamllint", args))
}

#[test]
fn manifests_and_workflow_pass_yamllint() {
    let out = yamllint(&[repo_path("k8s"), repo_path("keda"), repo_path(".github")]);
    assert!(out.success, "yamllint found problems:\n{out}");
}

#[test]
fn yamllint_rejects_a_duplicated_key() {
    let out = yamllint(&[fixture("broken-yaml.yaml")]);
    assert!(!out.success, "yamllint accepted a duplicated key:\n{out}");
    assert!(out.output().contains("key-duplicates"), "expected key-duplicates:\n{out}");
}
