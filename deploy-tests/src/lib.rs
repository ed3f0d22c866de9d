//! Helpers for the tests of what a cluster and the pipeline get: `k8s/`, `keda/`, the
//! `Dockerfile` and `.github/workflows/`.
//!
//! The validators are external programs from PyPI (see `ci/deps/validators.sh`); the
//! tests find them on `PATH` and fail, never skip, when one is missing. Manifests are
//! read as YAML into `serde_json::Value`s, so the tests can follow references between
//! objects (ConfigMap keys, Secret keys, labels, ports) the way the cluster would.

use std::{
    collections::BTreeMap,
    env,
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use testkit::repo_root;

pub mod netpol;
pub mod rollout;

/// A path inside the repository.
pub fn repo_path(relative: &str) -> PathBuf {
    repo_root().join(relative)
}

/// A file of `deploy-tests/fixtures/`.
pub fn fixture(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(relative)
}

/// The full path of a validator on `PATH`, or an error that says how to get it.
pub fn tool(name: &str) -> Result<PathBuf> {
    testkit::which(name).ok_or_else(|| {
        anyhow!(
            "`{name}` is not on PATH. The manifest tests need the validators from \
                 ci/deps/validators.sh: run `source ci/lib.sh && use_env ci/deps/validators.sh ensure` \
                 first (ci/test.sh and ci/validate.sh do)"
        )
    })
}

/// What a finished command printed and how it ended.
#[derive(Debug)]
pub struct Outcome {
    /// The command line, for messages.
    pub command: String,
    /// True when it exited 0.
    pub success: bool,
    /// Its exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Outcome {
    /// Standard output and standard error together.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited with {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}

/// Runs a validator found on `PATH` with `args` (in the repository's root).
pub fn run_tool<I, S>(name: &str, args: I) -> Result<Outcome>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(tool(name)?);
    cmd.args(args).current_dir(repo_root());
    run(&mut cmd)
}

/// Runs `cmd` to completion and captures its output.
pub fn run(cmd: &mut Command) -> Result<Outcome> {
    let command = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
    );
    let out = cmd.output().with_context(|| format!("cannot run {command}"))?;
    Ok(Outcome {
        command,
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Every non-empty document of a (multi-document) YAML text.
pub fn yaml_documents(text: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).context("invalid YAML")?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Every non-empty document of a YAML file.
pub fn yaml_file(path: &Path) -> Result<Vec<Value>> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    yaml_documents(&text).with_context(|| format!("in {}", path.display()))
}

/// The `.yaml`/`.yml` files directly in `dir` (not in subdirectories), sorted.
pub fn yaml_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let is_yaml = matches!(path.extension().and_then(OsStr::to_str), Some("yaml" | "yml"));
        if path.is_file() && is_yaml {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// `kubectl kustomize DIR`: the objects `kubectl apply -k DIR` would send.
pub fn kustomize(dir: &Path) -> Result<String> {
    let out = run_tool("kubectl", [OsStr::new("kustomize"), dir.as_os_str()])?;
    if !out.success {
        bail!("kubectl kustomize failed:\n{out}");
    }
    Ok(out.stdout)
}

/// `kubectl kustomize` of a kustomization (written to a temp dir) that combines
/// `resources` (kustomization directories) and `components` in `namespace`, as a
/// user's own kustomization would.
pub fn kustomize_combined(resources: &[&Path], components: &[&Path], namespace: &str) -> Result<String> {
    let dir = tempfile::tempdir().context("temp dir")?;
    // kustomize takes relative paths only: from the temp dir up to / and down again.
    let up = "../".repeat(dir.path().components().count().saturating_sub(1));
    let rel = |p: &Path| format!("{up}{}", p.to_string_lossy().trim_start_matches('/').trim_end_matches('/'));
    let mut text = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: {namespace}\nresources:\n"
    );
    for r in resources {
        text.push_str(&format!("  - {}\n", rel(r)));
    }
    text.push_str("components:\n");
    for c in components {
        text.push_str(&format!("  - {}\n", rel(c)));
    }
    fs::write(dir.path().join("kustomization.yaml"), text)?;
    kustomize(dir.path())
}

/// `kubernetes-validate --strict` on `file`; an unknown kind (only a warning for the
/// tool) is a failure here, as it would be for `kubectl apply` without its CRD.
pub fn kubernetes_validate(file: &Path) -> Result<Outcome> {
    let out = run_tool(
        "kubernetes-validate",
        [OsStr::new("--strict"), OsStr::new("--kubernetes-version"), OsStr::new("1.37.0"), file.as_os_str()],
    )?;
    Ok(out)
}

/// True when a `kubernetes-validate` run found nothing wrong (no error, no warning).
pub fn kubernetes_validate_clean(out: &Outcome) -> bool {
    let text = out.output();
    out.success && !text.contains("ERROR") && !text.contains("WARN")
}

/// `kind` of a Kubernetes object.
pub fn kind(obj: &Value) -> &str {
    obj["kind"].as_str().unwrap_or("")
}

/// `metadata.name` of a Kubernetes object.
pub fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

/// The object of `kind` named `name`.
pub fn find<'a>(objects: &'a [Value], kind_: &str, name_: &str) -> Result<&'a Value> {
    objects
        .iter()
        .find(|o| kind(o) == kind_ && name(o) == name_)
        .ok_or_else(|| anyhow!("no {kind_} named {name_:?}"))
}

/// A workload's pod template (`metadata` + `spec`): Deployments, StatefulSets, Jobs,
/// DaemonSets and KEDA ScaledJobs.
pub fn pod_template(obj: &Value) -> Option<&Value> {
    match kind(obj) {
        "Deployment" | "StatefulSet" | "Job" | "DaemonSet" | "ReplicaSet" => Some(&obj["spec"]["template"]),
        "ScaledJob" => Some(&obj["spec"]["jobTargetRef"]["template"]),
        "CronJob" => Some(&obj["spec"]["jobTemplate"]["spec"]["template"]),
        // A pod of its own (the pods an operator creates, modelled by the tests).
        "Pod" => Some(obj),
        _ => None,
    }
}

/// Every container of a pod spec, init containers first.
pub fn containers(pod_spec: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for key in ["initContainers", "containers"] {
        if let Some(list) = pod_spec[key].as_array() {
            all.extend(list.iter());
        }
    }
    all
}

/// The string map under `data` (ConfigMap) or `stringData` (Secret template).
pub fn string_map(obj: &Value, field: &str) -> BTreeMap<String, String> {
    obj[field]
        .as_object()
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------
// Custom resources (KEDA's, Strimzi's) against their CRDs
// ---------------------------------------------------------------------------------

/// The JSON Schema of the objects a CRD defines, as strict as the API server's
/// strict field validation: `additionalProperties: false` wherever the CRD lists
/// `properties` and neither allows other keys nor preserves unknown fields.
/// Returns the kind and its schema (of the served storage version).
pub fn crd_json_schema(crd: &Value) -> Result<(String, Value)> {
    let group = crd["spec"]["group"].as_str().context("CRD without spec.group")?;
    let kind_ = crd["spec"]["names"]["kind"].as_str().context("CRD without spec.names.kind")?;
    let versions = crd["spec"]["versions"].as_array().context("CRD without spec.versions")?;
    let version = versions
        .iter()
        .find(|v| v["storage"] == json!(true) && v["served"] == json!(true))
        .context("CRD without a served storage version")?;
    let version_name = version["name"].as_str().context("CRD version without a name")?;
    let mut schema = version["schema"]["openAPIV3Schema"].clone();
    if !schema.is_object() {
        bail!("{kind_}: no openAPIV3Schema");
    }
    make_strict(&mut schema);
    let root = schema.as_object_mut().context("schema root is not an object")?;
    let props = root.entry("properties").or_insert_with(|| json!({}));
    props["apiVersion"] = json!({"const": format!("{group}/{version_name}")});
    props["kind"] = json!({"const": kind_});
    // ObjectMeta, as far as manifests use it: a name, the namespace, labels, annotations.
    props["metadata"] = json!({
        "type": "object",
        "required": ["name"],
        "additionalProperties": false,
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "namespace": {"type": "string", "minLength": 1},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}}
        }
    });
    let mut required: Vec<Value> =
        root.get("required").and_then(Value::as_array).cloned().unwrap_or_default();
    for field in ["apiVersion", "kind", "metadata"] {
        if !required.contains(&json!(field)) {
            required.push(json!(field));
        }
    }
    root.insert("required".into(), Value::Array(required));
    root.insert("additionalProperties".into(), json!(false));
    root.insert("$schema".into(), json!("https://json-schema.org/draft/2020-12/schema"));
    Ok((kind_.to_string(), schema))
}

/// Adds `additionalProperties: false` to every object schema that lists its
/// properties, turns OpenAPI's `nullable` into JSON Schema, drops the inline flags of
/// Go regexes, and recurses into
/// sub-schemas (and only into sub-schemas: a property may be named "properties").
fn make_strict(schema: &mut Value) {
    let Some(map) = schema.as_object_mut() else { return };
    let preserves = map.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    if map.contains_key("properties") && !map.contains_key("additionalProperties") && !preserves {
        map.insert("additionalProperties".into(), json!(false));
    }
    // CRD patterns are Go (RE2) regexes; ECMAScript's, which check-jsonschema reads
    // them as, has no inline flags, and refuses the whole schema over one. Without the
    // flag a pattern is only stricter (case-sensitive) than the API server's.
    if let Some(Value::String(pattern)) = map.get_mut("pattern") {
        if pattern.contains("(?i)") {
            *pattern = pattern.replace("(?i)", "");
        }
    }
    if map.get("nullable") == Some(&json!(true)) {
        if let Some(Value::String(t)) = map.get("type").cloned() {
            map.insert("type".into(), json!([t, "null"]));
        }
    }
    if let Some(Value::Object(props)) = map.get_mut("properties") {
        props.values_mut().for_each(make_strict);
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(sub) = map.get_mut(key) {
            if sub.is_object() {
                make_strict(sub);
            }
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(subs)) = map.get_mut(key) {
            subs.iter_mut().for_each(make_strict);
        }
    }
}

/// The strict JSON Schemas of every kind the CRDs in `dir` define (ci/schemas/keda/,
/// ci/schemas/strimzi/).
pub fn crd_schemas(dir: &Path) -> Result<BTreeMap<String, Value>> {
    let mut schemas = BTreeMap::new();
    for file in yaml_files_in(dir)? {
        for crd in yaml_file(&file)? {
            if kind(&crd) == "CustomResourceDefinition" {
                let (k, schema) = crd_json_schema(&crd).with_context(|| format!("in {}", file.display()))?;
                schemas.insert(k, schema);
            }
        }
    }
    if schemas.is_empty() {
        bail!("no CRDs in {}", dir.display());
    }
    Ok(schemas)
}

/// Validates custom resources (KEDA's, Strimzi's) against the strict CRD schemas with
/// `check-jsonschema`. `objects` pairs each object with a label (its file) for
/// messages. Every object must be of a kind the CRDs define.
pub fn check_crd_objects(objects: &[(String, Value)], schemas: &BTreeMap<String, Value>) -> Result<Outcome> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let mut by_kind: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for (i, (label, obj)) in objects.iter().enumerate() {
        let k = kind(obj);
        if !schemas.contains_key(k) {
            bail!(
                "{label}: {k:?} is not a kind of these CRDs (known: {:?})",
                schemas.keys().collect::<Vec<_>>()
            );
        }
        let safe: String = label.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        let path = dir.path().join(format!("{i:02}-{safe}-{}.json", name(obj)));
        fs::write(&path, serde_json::to_vec_pretty(obj)?)?;
        by_kind.entry(k.to_string()).or_default().push(path);
    }
    let mut combined = Outcome {
        command: "check-jsonschema (per CRD kind)".into(),
        success: true,
        code: Some(0),
        stdout: String::new(),
        stderr: String::new(),
    };
    for (k, files) in by_kind {
        let schema_path = dir.path().join(format!("schema-{k}.json"));
        fs::write(&schema_path, serde_json::to_vec(&schemas[&k])?)?;
        let mut args = vec![
            "--schemafile".as_ref(),
            schema_path.as_os_str(),
            "--output-format".as_ref(),
            "text".as_ref(),
        ];
        args.extend(files.iter().map(|f| f.as_os_str()));
        let out = run_tool("check-jsonschema", args)?;
        combined.success &= out.success;
        if !out.success {
            combined.code = out.code;
        }
        combined.stdout.push_str(&format!("[{k}] {}", out.stdout));
        combined.stderr.push_str(&out.stderr);
    }
    Ok(combined)
}

/// Every object of every YAML file directly in `dir`, labelled with its file name.
pub fn labelled_objects(dir: &Path) -> Result<Vec<(String, Value)>> {
    let mut all = Vec::new();
    for file in yaml_files_in(dir)? {
        let label = file.strip_prefix(repo_root()).unwrap_or(&file).display().to_string();
        for obj in yaml_file(&file)? {
            all.push((label.clone(), obj));
        }
    }
    Ok(all)
}

// ---------------------------------------------------------------------------------
// A container's environment, as the kubelet would build it
// ---------------------------------------------------------------------------------

/// The environment a container gets from `envFrom` ConfigMaps and `env` (values,
/// ConfigMap and Secret references), with files under mounted Secret volumes and under
/// `path_map` prefixes written to (or mapped into) `root`.
///
/// `secrets` holds the Secret data by name; a missing optional key leaves its variable
/// unset, a missing required one is an error (the pod would not start). Values that
/// point into a mounted Secret volume are rewritten to the file written under `root`;
/// values under a `path_map` prefix (paths an image provides) are rewritten likewise.
pub fn container_env(
    pod_spec: &Value,
    container: &Value,
    config_maps: &BTreeMap<String, BTreeMap<String, String>>,
    secrets: &BTreeMap<String, BTreeMap<String, String>>,
    root: &Path,
    path_map: &[(String, PathBuf)],
) -> Result<BTreeMap<String, String>> {
    let mut env_vars = BTreeMap::new();
    for source in container["envFrom"].as_array().into_iter().flatten() {
        if let Some(cm) = source["configMapRef"]["name"].as_str() {
            let data =
                config_maps.get(cm).ok_or_else(|| anyhow!("envFrom names a missing ConfigMap {cm:?}"))?;
            env_vars.extend(data.clone());
        } else if let Some(secret) = source["secretRef"]["name"].as_str() {
            let data =
                secrets.get(secret).ok_or_else(|| anyhow!("envFrom names a missing Secret {secret:?}"))?;
            env_vars.extend(data.clone());
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let var_name = var["name"].as_str().context("env entry without a name")?.to_string();
        if let Some(value) = var["value"].as_str() {
            env_vars.insert(var_name, value.to_string());
            continue;
        }
        let from = &var["valueFrom"];
        let (refs, store, what) = if from["secretKeyRef"].is_object() {
            (&from["secretKeyRef"], secrets, "Secret")
        } else if from["configMapKeyRef"].is_object() {
            (&from["configMapKeyRef"], config_maps, "ConfigMap")
        } else {
            continue; // fieldRef / resourceFieldRef: set by the kubelet, not settings
        };
        let obj_name = refs["name"].as_str().unwrap_or("");
        let key = refs["key"].as_str().unwrap_or("");
        let optional = refs["optional"] == json!(true);
        match store.get(obj_name).and_then(|d| d.get(key)) {
            Some(value) => {
                env_vars.insert(var_name, value.clone());
            }
            None if optional => {}
            None => bail!("{var_name}: required key {key:?} of {what} {obj_name:?} is missing"),
        }
    }

    // Secret volumes mounted into this container: write their files.
    let mut mounted: Vec<(String, PathBuf)> = path_map.to_vec();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let vol_name = mount["name"].as_str().unwrap_or("");
        let mount_path = mount["mountPath"].as_str().unwrap_or("");
        let Some(volume) = pod_spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"].as_str() == Some(vol_name))
        else {
            bail!("volumeMount {vol_name:?} names no volume");
        };
        let Some(secret_name) = volume["secret"]["secretName"].as_str() else { continue };
        let optional = volume["secret"]["optional"] == json!(true);
        let data = secrets.get(secret_name);
        let dir = root.join(format!("secret-{vol_name}"));
        fs::create_dir_all(&dir)?;
        let items: Vec<(String, String)> = match volume["secret"]["items"].as_array() {
            Some(items) => items
                .iter()
                .map(|i| {
                    (
                        i["key"].as_str().unwrap_or("").to_string(),
                        i["path"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect(),
            None => data.map(|d| d.keys().map(|k| (k.clone(), k.clone())).collect()).unwrap_or_default(),
        };
        for (key, path) in items {
            match data.and_then(|d| d.get(&key)) {
                Some(value) => fs::write(dir.join(&path), value)?,
                None if optional => {}
                None => bail!("volume {vol_name:?}: key {key:?} of Secret {secret_name:?} is missing"),
            }
        }
        mounted.push((mount_path.to_string(), dir));
    }
    for value in env_vars.values_mut() {
        for (prefix, local) in &mounted {
            if let Some(rest) = value.strip_prefix(prefix.as_str()) {
                if rest.is_empty() || rest.starts_with('/') {
                    *value = format!("{}{}", local.display(), rest);
                    break;
                }
            }
        }
    }
    Ok(env_vars)
}

/// The built binary `name` beside the test executables (`target/<profile>/<name>`),
/// which `cargo test --workspace` / `cargo nextest run --workspace` build.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = env::current_exe().context("current_exe")?;
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test executable location {}", exe.display()))?;
    let bin = profile_dir.join(name);
    if !bin.is_file() {
        bail!(
            "{} is not built. Build the binaries first: `cargo build -p gateway -p handlers --bins` \
             (or run the whole workspace: `cargo nextest run --workspace`, as ci/test.sh does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Port of a `host:port` address.
pub fn port_of(addr: &str) -> Result<u16> {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| anyhow!("{addr:?} is not host:port"))
}

/// The numeric container port a probe or Service port refers to (a number or a name).
pub fn resolve_port(container: &Value, port: &Value) -> Result<u16> {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).context("port out of range");
    }
    let port_name = port.as_str().context("port is neither a number nor a name")?;
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"].as_str() == Some(port_name))
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| anyhow!("no container port named {port_name:?}"))
}

/// `true` when the label selector `selector` (`matchLabels` and `matchExpressions`)
/// selects `labels`.
pub fn selects(selector: &Value, labels: &Map<String, Value>) -> bool {
    let by_labels = selector["matchLabels"]
        .as_object()
        .map(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)))
        .unwrap_or(true);
    let by_expressions = selector["matchExpressions"].as_array().into_iter().flatten().all(|e| {
        let value = e["key"].as_str().and_then(|k| labels.get(k));
        let listed = || e["values"].as_array().is_some_and(|vs| value.is_some_and(|v| vs.contains(v)));
        match e["operator"].as_str() {
            Some("In") => listed(),
            Some("NotIn") => !listed(),
            Some("Exists") => value.is_some(),
            Some("DoesNotExist") => value.is_none(),
            // Never treat an unknown operator as a match.
            _ => false,
        }
    });
    by_labels && by_expressions
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors_match_labels_and_expressions_as_kubernetes_does() {
        let labels = json!({"app.kubernetes.io/name": "gateway", "tier": "web"});
        let labels = labels.as_object().expect("labels");
        let yes = |selector: Value| assert!(selects(&selector, labels), "{selector} should select");
        let no = |selector: Value| assert!(!selects(&selector, labels), "{selector} should not select");
        yes(json!({}));
        yes(json!({"matchLabels": {"tier": "web"}}));
        no(json!({"matchLabels": {"tier": "db"}}));
        let expr = |op: &str, key: &str, values: Value| json!({"matchExpressions": [{"key": key, "operator": op, "values": values}]});
        yes(expr("In", "app.kubernetes.io/name", json!(["gateway", "memory"])));
        no(expr("In", "app.kubernetes.io/name", json!(["responder"])));
        yes(expr("NotIn", "app.kubernetes.io/name", json!(["responder"])));
        no(expr("NotIn", "app.kubernetes.io/name", json!(["gateway"])));
        yes(expr("NotIn", "missing", json!(["x"])));
        yes(expr("Exists", "tier", Value::Null));
        no(expr("Exists", "missing", Value::Null));
        yes(expr("DoesNotExist", "missing", Value::Null));
        no(expr("Gt", "tier", json!(["1"])));
        no(
            json!({"matchLabels": {"tier": "web"}, "matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}),
        );
    }
}
