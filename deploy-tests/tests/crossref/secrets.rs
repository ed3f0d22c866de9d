//! Secrets: created as the README says.

use std::{collections::BTreeMap, fs};

use deploy_tests::{containers, name, pod_template, repo_path};
use serde_json::Value;

use crate::common::{every_variant, required_secret_keys, secret_template, NAMESPACE, SECRET};

#[test]
fn secrets_are_created_as_the_readme_says() {
    let template = secret_template();
    let readme = fs::read_to_string(repo_path("README.md")).expect("README.md");
    let command = format!("kubectl -n {NAMESPACE} create secret generic {SECRET}");
    assert!(readme.contains(&command), "README must show `{command}`");
    for (variant, objects) in every_variant() {
        secrets_of(&variant, &objects, &template, &readme);
    }
    let kustomization = fs::read_to_string(repo_path("k8s/base/kustomization.yaml")).expect("kustomization");
    let resources: Vec<&str> = kustomization.lines().filter(|l| l.trim_start().starts_with("- ")).collect();
    assert!(
        !resources.iter().any(|l| l.contains("secrets.template.yaml")),
        "the template must not be applied"
    );
}

fn secrets_of(variant: &str, objects: &[Value], template: &BTreeMap<String, String>, readme: &str) {
    for key in required_secret_keys(objects) {
        assert!(template.contains_key(&key), "{variant}: secrets.template.yaml lacks the required key {key}");
        assert!(
            readme.contains(&format!("--from-literal={key}=")),
            "{variant}: the README's commands must create {key}"
        );
    }
    for obj in objects {
        let Some(t) = pod_template(obj) else { continue };
        for c in containers(&t["spec"]) {
            for var in c["env"].as_array().into_iter().flatten() {
                let r = &var["valueFrom"]["secretKeyRef"];
                if r.is_object() {
                    assert_eq!(r["name"], SECRET, "{variant}: {}: one Secret for the stack", name(obj));
                    let key = r["key"].as_str().unwrap_or("");
                    assert!(
                        template.contains_key(key),
                        "{variant}: {}: Secret key {key} is not in the template",
                        name(obj)
                    );
                }
            }
        }
    }
}
