//! The validators, run on the real files and on deliberately broken fixtures
//! (deploy-tests/fixtures/): each must accept the first and reject the second.
//!
//! The tools come from ci/deps/validators.sh (`source ci/lib.sh && use_env
//! ci/deps/validators.sh ensure`); a missing tool fails the test with that instruction.

use std::{ffi::OsStr, fs, path::Path};

use deploy_tests::{
    check_crd_objects, crd_schemas, fixture, kind, kubernetes_validate, kubernetes_validate_clean, kustomize,
    labelled_objects, name, repo_path, run, run_tool, yaml_documents, yaml_file, yaml_files_in,
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

/// Validates rendered objects as strictly as the API server would: the built-in kinds
/// with kubernetes-validate, the custom resources (Strimzi's, KEDA's) against their
/// vendored CRDs. Returns the problems, empty when everything passed.
fn strictly_invalid(label: &str, objects: &[Value]) -> Vec<String> {
    let mut schemas = must(crd_schemas(&repo_path("ci/schemas/keda")));
    schemas.extend(must(crd_schemas(&repo_path("ci/schemas/strimzi"))));
    schemas.extend(must(crd_schemas(&repo_path("ci/schemas/gateway-api"))));
    let custom_group = |o: &Value| {
        let api = o["apiVersion"].as_str().unwrap_or("");
        ["keda.sh/", "kafka.strimzi.io/", "gateway.networking.k8s.io/"].iter().any(|g| api.starts_with(g))
    };
    let (custom, builtin): (Vec<&Value>, Vec<&Value>) = objects.iter().partition(|o| custom_group(o));
    let mut problems = Vec::new();
    let tmp = tempfile::NamedTempFile::new().expect("temp file");
    // As JSON documents: YAML written back from the parsed objects would leave strings
    // such as "off" unquoted, which YAML 1.1 readers take for booleans.
    let text: String =
        builtin.iter().map(|o| format!("---\n{}\n", serde_json::to_string(o).expect("json"))).collect();
    fs::write(tmp.path(), text).expect("write");
    let out = must(kubernetes_validate(tmp.path()));
    if !kubernetes_validate_clean(&out)
        || out.output().matches("passed for resource").count() != builtin.len()
    {
        problems.push(format!("{label}: kubernetes-validate:\n{out}"));
    }
    if !custom.is_empty() {
        let labelled: Vec<(String, Value)> =
            custom.iter().map(|o| (label.to_string(), (*o).clone())).collect();
        let out = must(check_crd_objects(&labelled, &schemas));
        if !out.success {
            problems.push(format!("{label}: the CRD schemas:\n{out}"));
        }
    }
    problems
}

#[test]
fn every_variant_renders_and_is_strictly_valid() {
    let mut names = Vec::new();
    for entry in fs::read_dir(repo_path("k8s/variants")).expect("k8s/variants").flatten() {
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    assert_eq!(names, ["external-kafka", "ollama", "remote-openai", "strimzi", "vllm"]);
    for v in &names {
        let objects = must(yaml_documents(&must(kustomize(&repo_path(&format!("k8s/variants/{v}"))))));
        let problems = strictly_invalid(v, &objects);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        assert!(!objects.iter().any(|o| kind(o) == "Secret"), "{v}: a variant applies no Secret");
    }
    // The strimzi variant's custom resources were among them.
    let strimzi = must(yaml_documents(&must(kustomize(&repo_path("k8s/variants/strimzi")))));
    for expected in ["Kafka", "KafkaNodePool", "KafkaTopic"] {
        assert!(strimzi.iter().any(|o| kind(o) == expected), "the strimzi variant has no {expected}");
    }
}

#[test]
fn the_deploy_overlay_of_every_variant_is_strictly_valid() {
    let mut choices: Vec<Option<String>> = vec![None];
    for entry in fs::read_dir(repo_path("k8s/variants")).expect("k8s/variants").flatten() {
        choices.push(Some(entry.file_name().to_string_lossy().into_owned()));
    }
    for v in choices {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = std::process::Command::new("bash");
        cmd.arg(repo_path("ci/deploy-overlay.sh"))
            .args(["ghcr.io/example/chat-stack-", "0123abc"])
            .arg(dir.path());
        cmd.args(&v);
        let out = must(run(&mut cmd));
        assert!(out.success, "{out}");
        let mut objects = Vec::new();
        for sub in ["k8s", "keda", "keda-scaledjobs"] {
            if dir.path().join(sub).join("kustomization.yaml").exists() {
                objects.extend(must(yaml_documents(&must(kustomize(&dir.path().join(sub))))));
            }
        }
        let problems = strictly_invalid(&format!("overlay {v:?}"), &objects);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}

#[test]
fn the_gateway_api_component_is_strictly_valid() {
    let rendered = must(deploy_tests::kustomize_combined(
        &[&repo_path("k8s/variants/ollama")],
        &[&repo_path("k8s/components/gateway-api")],
        "chat-stack",
    ));
    let objects = must(yaml_documents(&rendered));
    for expected in ["Gateway", "HTTPRoute"] {
        assert!(objects.iter().any(|o| kind(o) == expected), "the component has no {expected}");
    }
    let problems = strictly_invalid("base + components/gateway-api", &objects);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_tracing_component_is_strictly_valid_with_every_variant() {
    for variant in ["ollama", "remote-openai", "vllm", "external-kafka", "strimzi"] {
        let rendered = must(deploy_tests::kustomize_combined(
            &[&repo_path(&format!("k8s/variants/{variant}"))],
            &[&repo_path("k8s/components/tracing")],
            "chat-stack",
        ));
        let objects = must(yaml_documents(&rendered));
        assert!(objects.iter().any(|o| kind(o) == "NetworkPolicy" && name(o) == "allow-otlp-export"));
        let problems = strictly_invalid(&format!("{variant} + components/tracing"), &objects);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}

#[test]
fn the_strimzi_schema_check_rejects_each_broken_object() {
    let schemas = must(crd_schemas(&repo_path("ci/schemas/strimzi")));
    for k in ["Kafka", "KafkaNodePool", "KafkaTopic"] {
        assert!(schemas.contains_key(k), "ci/schemas/strimzi has no {k}");
    }
    let fixtures = must(yaml_files_in(&fixture("broken-strimzi")));
    assert!(fixtures.len() >= 3, "expected the broken Strimzi fixtures");
    for file in fixtures {
        let objects: Vec<(String, Value)> =
            must(yaml_file(&file)).into_iter().map(|o| (file.display().to_string(), o)).collect();
        let out = must(check_crd_objects(&objects, &schemas));
        assert!(!out.success, "{} passed the strict Strimzi schema:\n{out}", file.display());
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
    vec![
        repo_path("keda"),
        repo_path("keda/scaledjobs"),
        repo_path("keda/secured"),
        repo_path("keda/external-kafka"),
        repo_path("keda/vllm"),
    ]
}

#[test]
fn keda_objects_are_valid_against_the_crds_with_unknown_fields_rejected() {
    let schemas = must(crd_schemas(&repo_path("ci/schemas/keda")));
    let mut objects = Vec::new();
    for dir in keda_dirs() {
        objects.extend(must(labelled_objects(&dir)));
    }
    let kinds: Vec<&str> = objects.iter().map(|(_, o)| kind(o)).collect();
    for expected in ["ScaledObject", "ScaledJob", "TriggerAuthentication"] {
        assert!(kinds.contains(&expected), "keda/ has no {expected}");
    }
    let out = must(check_crd_objects(&objects, &schemas));
    assert!(out.success, "KEDA objects do not match the CRDs:\n{out}");
}

#[test]
fn keda_schema_check_rejects_each_broken_object() {
    let schemas = must(crd_schemas(&repo_path("ci/schemas/keda")));
    let fixtures = must(yaml_files_in(&fixture("broken-keda")));
    assert!(fixtures.len() >= 4, "expected the broken KEDA fixtures");
    for file in fixtures {
        let objects: Vec<(String, Value)> =
            must(yaml_file(&file)).into_iter().map(|o| (file.display().to_string(), o)).collect();
        let out = must(check_crd_objects(&objects, &schemas));
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
