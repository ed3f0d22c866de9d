//! Secrets: created as the README says.

use std::fs;

use deploy_tests::{containers, name, pod_template, repo_path};

use crate::common::{all_objects, required_secret_keys, secret_template, NAMESPACE, SECRET};

#[test]
fn secrets_are_created_as_the_readme_says() {
    let objects = all_objects();
    let template = secret_template();
    let readme = fs::read_to_string(repo_path("README.md")).expect("README.md");
    let command = format!("kubectl -n {NAMESPACE} create secret generic {SECRET}");
    assert!(readme.contains(&command), "README must show `{command}`");
    for key in required_secret_keys(&objects) {
        assert!(template.contains_key(&key), "secrets.template.yaml lacks the required key {key}");
        assert!(readme.contains(&format!("--from-literal={key}=")), "README's command must create {key}");
    }
    for obj in &objects {
        let Some(t) = pod_template(obj) else { continue };
        for c in containers(&t["spec"]) {
            for var in c["env"].as_array().into_iter().flatten() {
                let r = &var["valueFrom"]["secretKeyRef"];
                if r.is_object() {
                    assert_eq!(r["name"], SECRET, "{}: one Secret for the stack", name(obj));
                    let key = r["key"].as_str().unwrap_or("");
                    assert!(
                        template.contains_key(key),
                        "{}: Secret key {key} is not in the template",
                        name(obj)
                    );
                }
            }
        }
    }
    let kustomization = fs::read_to_string(repo_path("k8s/kustomization.yaml")).expect("kustomization");
    let resources: Vec<&str> = kustomization.lines().filter(|l| l.trim_start().starts_with("- ")).collect();
    assert!(
        !resources.iter().any(|l| l.contains("secrets.template.yaml")),
        "the template must not be applied"
    );
}
