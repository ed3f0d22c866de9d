//! The optional monitoring component (k8s/components/monitoring/): with a variant, its
//! PodMonitors and PrometheusRule match the prometheus-operator's CRDs with unknown
//! fields rejected; each PodMonitor scrapes pods the variant runs, through a `metrics`
//! port those pods declare and the NetworkPolicies open to Prometheus; the alerts pass
//! `promtool check rules` and their unit tests (ci/monitoring/rules.test.yaml); the
//! dashboard is valid PromQL; and every metric the alerts and the dashboard read is one
//! the code exports, or one of KEDA, kube-state-metrics or Prometheus itself.
//!
//! promtool comes from Debian's prometheus package (`ci/deps/prometheus.sh ensure`
//! prints `PROMTOOL`); without it these tests fail, never skip.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use deploy_tests::{
    check_crd_objects, containers, crd_schemas, find, fixture, kind, kubernetes_validate,
    kubernetes_validate_clean, name,
    netpol::{namespace_of, Peer, Policies},
    pod_template, repo_path, run, selects, yaml_file, Outcome,
};
use serde_json::{json, Value};

use crate::common::{keda_for, must, rust_sources, variant_with_component, NAMESPACE};

/// The component, as a user's kustomization adds it to a variant.
const COMPONENT: &str = "monitoring";
/// The PodMonitors, one per binary; Prometheus names their targets' job `chat-stack/<name>`.
const POD_MONITORS: [&str; 3] = ["gateway", "responder", "memory"];
/// The admin port that serves /metrics (the probes stay on the `http` ports).
const METRICS_PORT: (&str, u64) = ("metrics", 9091);
/// Where kube-prometheus-stack's Prometheus runs (k8s/base/networkpolicies.yaml admits it).
const PROMETHEUS_NAMESPACE: &str = "monitoring";
/// Series that KEDA's operator, kube-state-metrics and Prometheus export (the local
/// autoscaler exports KEDA's and kube-state-metrics' names too).
const EXTERNAL_METRICS: [&str; 8] = [
    "keda_scaler_metrics_value",
    "keda_scaler_active",
    "kube_deployment_status_replicas",
    "kube_deployment_status_replicas_available",
    "kube_horizontalpodautoscaler_status_desired_replicas",
    "kube_horizontalpodautoscaler_spec_max_replicas",
    "kube_pod_container_status_restarts_total",
    "up",
];
/// The file the unit tests load (rules.test.yaml's `rule_files`): the rules without runbooks.
const TESTED_RULES: &str = "rules-without-runbooks.yaml";

fn rendered() -> Vec<Value> {
    variant_with_component("ollama", COMPONENT)
}

fn rule(objects: &[Value]) -> Value {
    must(find(objects, "PrometheusRule", "chat-stack")).clone()
}

/// Every rule of a PrometheusRule's groups.
fn rules_of(prometheus_rule: &Value) -> Vec<&Value> {
    prometheus_rule["spec"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect()
}

/// The promtool that CI installs (ci/deps/prometheus.sh sets PROMTOOL).
fn promtool() -> PathBuf {
    let path = std::env::var_os("PROMTOOL").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "PROMTOOL is not set. The monitoring tests need promtool from Debian's prometheus \
             package: run `source ci/lib.sh && use_env ci/deps/prometheus.sh ensure` first \
             (ci/test.sh does)"
        )
    });
    assert!(path.is_file(), "PROMTOOL={} is not a file: run ci/deps/prometheus.sh ensure", path.display());
    path
}

/// `promtool ARGS` in `dir`.
fn run_promtool(dir: &Path, args: &[&str]) -> Outcome {
    let mut cmd = Command::new(promtool());
    cmd.args(args).current_dir(dir);
    must(run(&mut cmd))
}

/// A PrometheusRule's `spec` (its rule groups) as a rules file in `dir`, optionally
/// without the `runbook` annotations.
fn write_rules(prometheus_rule: &Value, dir: &Path, file: &str, with_runbooks: bool) -> PathBuf {
    let mut spec = prometheus_rule["spec"].clone();
    if !with_runbooks {
        for g in spec["groups"].as_array_mut().into_iter().flatten() {
            for r in g["rules"].as_array_mut().into_iter().flatten() {
                if let Some(a) = r["annotations"].as_object_mut() {
                    a.remove("runbook");
                }
            }
        }
    }
    let path = dir.join(file);
    fs::write(&path, serde_yaml::to_string(&spec).expect("rules as YAML")).expect("write rules");
    path
}

#[test]
fn the_component_renders_with_a_variant_and_matches_the_crds_strictly() {
    let objects = rendered();
    let mut custom = Vec::new();
    for n in POD_MONITORS {
        custom.push(must(find(&objects, "PodMonitor", n)).clone());
    }
    custom.push(rule(&objects));
    for o in &custom {
        assert_eq!(o["metadata"]["namespace"], NAMESPACE, "{} {}: namespace", kind(o), name(o));
    }
    let schemas = must(crd_schemas(&repo_path("ci/schemas/prometheus-operator")));
    for k in ["PodMonitor", "ServiceMonitor", "PrometheusRule"] {
        assert!(schemas.contains_key(k), "ci/schemas/prometheus-operator has no {k}");
    }
    let labelled: Vec<(String, Value)> =
        custom.iter().map(|o| (format!("components/{COMPONENT}"), o.clone())).collect();
    let out = must(check_crd_objects(&labelled, &schemas));
    assert!(out.success, "the monitoring objects do not match the prometheus-operator CRDs:\n{out}");
    assert!(out.stdout.contains("[PodMonitor]") && out.stdout.contains("[PrometheusRule]"), "{out}");

    // The check is strict: a misspelt field of a PodMonitor is rejected.
    let mut misspelt = custom[0].clone();
    misspelt["spec"]["podMetricsEndpoints"][0]["prot"] = json!("metrics");
    let out = must(check_crd_objects(&[("misspelt".into(), misspelt)], &schemas));
    assert!(!out.success, "a PodMonitor with an unknown field passed the strict schema:\n{out}");

    // The dashboard's ConfigMap, for Grafana's sidecar, under a fixed name.
    let cm = must(find(&objects, "ConfigMap", "chat-stack-dashboard"));
    assert_eq!(cm["metadata"]["namespace"], NAMESPACE);
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1", "the label Grafana's sidecar looks for");
    let file =
        fs::read_to_string(repo_path("k8s/components/monitoring/dashboard.json")).expect("dashboard.json");
    assert_eq!(
        cm["data"]["chat-stack.json"].as_str(),
        Some(file.as_str()),
        "the ConfigMap carries dashboard.json"
    );
    let tmp = tempfile::NamedTempFile::new().expect("temp file");
    fs::write(tmp.path(), serde_json::to_string(cm).expect("json")).expect("write");
    let out = must(kubernetes_validate(tmp.path()));
    assert!(kubernetes_validate_clean(&out), "the dashboard ConfigMap does not validate strictly:\n{out}");
}

#[test]
fn every_pod_monitor_scrapes_pods_of_the_variant_through_their_metrics_port() {
    let mut objects = rendered();
    // The optional ScaledJobs run the same handler pods: they must serve the port too.
    objects.extend(keda_for("ollama"));
    let policies = Policies::new(&objects);
    let monitors: Vec<&Value> = objects.iter().filter(|o| kind(o) == "PodMonitor").collect();
    let names: BTreeSet<&str> = monitors.iter().map(|m| name(m)).collect();
    assert_eq!(names, BTreeSet::from(POD_MONITORS), "one PodMonitor per binary, named after it");
    let mut problems = Vec::new();
    for m in monitors {
        let label = format!("PodMonitor {}", name(m));
        let spec = &m["spec"];
        let namespaces: Vec<&str> = spec["namespaceSelector"]["matchNames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        // Without a namespaceSelector, a PodMonitor selects pods of its own namespace.
        let in_scope = |ns: &str| {
            if spec["namespaceSelector"]["any"] == json!(true) {
                true
            } else if namespaces.is_empty() {
                ns == namespace_of(m)
            } else {
                namespaces.contains(&ns)
            }
        };
        let selector = &spec["selector"];
        assert!(
            selector["matchLabels"].as_object().is_some_and(|l| !l.is_empty()),
            "{label}: selects by matchLabels (an empty selector would scrape every pod)"
        );
        let selected: Vec<&Value> = objects
            .iter()
            .filter(|o| kind(o) != "PodMonitor" && in_scope(namespace_of(o)))
            .filter(|o| {
                pod_template(o).is_some_and(|t| {
                    t["metadata"]["labels"].as_object().is_some_and(|labels| selects(selector, labels))
                })
            })
            .collect();
        if !selected.iter().any(|o| kind(o) == "Deployment" && name(o) == name(m)) {
            problems.push(format!(
                "{label} selects no pod of the Deployment {} (it selects: {:?})",
                name(m),
                selected.iter().map(|o| format!("{} {}", kind(o), name(o))).collect::<Vec<_>>()
            ));
        }
        let endpoints = spec["podMetricsEndpoints"].as_array().cloned().unwrap_or_default();
        if endpoints.is_empty() {
            problems.push(format!("{label} has no podMetricsEndpoints"));
        }
        for e in &endpoints {
            if e["port"] != METRICS_PORT.0 || e["path"] != "/metrics" {
                problems.push(format!(
                    "{label} scrapes port {} path {}, not the port {:?} at /metrics",
                    e["port"], e["path"], METRICS_PORT.0
                ));
            }
            let Some(port_name) = e["port"].as_str() else { continue };
            for o in &selected {
                let template = pod_template(o).expect("selected for its pod template");
                let declared = containers(&template["spec"])
                    .into_iter()
                    .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
                    .find(|p| p["name"] == port_name);
                let pod = format!("{} {}", kind(o), name(o));
                let Some(declared) = declared else {
                    problems.push(format!(
                        "{label} scrapes the port {port_name:?}, which the pods of {pod} do not declare"
                    ));
                    continue;
                };
                let number = declared["containerPort"].as_u64().unwrap_or(0);
                if number != METRICS_PORT.1 {
                    problems.push(format!(
                        "{pod}: the port {port_name:?} is {number}, not the admin port {}",
                        METRICS_PORT.1
                    ));
                }
                let labels = template["metadata"]["labels"].as_object().cloned().unwrap_or_default();
                let dst = Peer::Pod { namespace: namespace_of(o).to_string(), labels };
                let src = Peer::Namespace(PROMETHEUS_NAMESPACE.to_string());
                let port = u16::try_from(number).unwrap_or(0);
                if !policies.allows(&src, &dst, port, "TCP") {
                    problems.push(format!(
                        "{pod}: the NetworkPolicies do not let Prometheus (namespace {PROMETHEUS_NAMESPACE}) \
                         reach the port {port_name:?} ({number})"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "the PodMonitors cannot scrape what they should:\n{}", problems.join("\n"));
}

#[test]
fn the_alerts_pass_promtool_and_their_unit_tests() {
    let objects = rendered();
    let prometheus_rule = rule(&objects);
    let rules = rules_of(&prometheus_rule);
    assert!(!rules.is_empty(), "the PrometheusRule has no rules");

    // What every alert carries, so that whoever is paged knows what to do.
    let mut severities = BTreeMap::new();
    for r in &rules {
        let alert = r["alert"].as_str().unwrap_or_else(|| panic!("not an alert: {r}"));
        let severity = r["labels"]["severity"].as_str().unwrap_or("");
        assert!(["critical", "warning"].contains(&severity), "{alert}: severity {severity:?}");
        for a in ["summary", "description", "runbook"] {
            let text = r["annotations"][a].as_str().unwrap_or("");
            assert!(!text.trim().is_empty(), "{alert}: no {a} annotation");
        }
        assert!(
            r["annotations"]["runbook"].as_str().is_some_and(|t| t.contains("kubectl")),
            "{alert}: the runbook names no first checks (kubectl commands)"
        );
        assert!(severities.insert(alert.to_string(), severity.to_string()).is_none(), "{alert} twice");
    }

    let dir = tempfile::tempdir().expect("temp dir");
    write_rules(&prometheus_rule, dir.path(), "rules.yaml", true);
    let out = run_promtool(dir.path(), &["check", "rules", "rules.yaml"]);
    assert!(out.success, "promtool check rules rejects the PrometheusRule's groups:\n{out}");
    assert!(
        out.output().contains(&format!("SUCCESS: {} rules found", rules.len())),
        "promtool did not check every rule:\n{out}"
    );

    // The unit tests: one case that fires and one that does not, for every alert.
    let tests_file = repo_path("ci/monitoring/rules.test.yaml");
    let tests = must(yaml_file(&tests_file)).remove(0);
    assert_eq!(
        tests["rule_files"],
        json!([TESTED_RULES]),
        "rules.test.yaml loads the rules this test writes"
    );
    let mut fires: BTreeSet<String> = BTreeSet::new();
    let mut stays_quiet: BTreeSet<String> = BTreeSet::new();
    for t in tests["tests"].as_array().expect("rules.test.yaml: tests") {
        for case in t["alert_rule_test"].as_array().into_iter().flatten() {
            let alert = case["alertname"].as_str().unwrap_or("").to_string();
            let Some(severity) = severities.get(&alert) else {
                panic!("rules.test.yaml tests {alert:?}, which rules.yaml does not have");
            };
            let expected = case["exp_alerts"].as_array().cloned().unwrap_or_default();
            if expected.is_empty() {
                stays_quiet.insert(alert.clone());
            }
            for e in &expected {
                assert_eq!(
                    e["exp_labels"]["severity"].as_str(),
                    Some(severity.as_str()),
                    "rules.test.yaml: {alert} is expected without its severity"
                );
                fires.insert(alert.clone());
            }
        }
    }
    let untested: Vec<String> = severities
        .keys()
        .flat_map(|a| {
            let mut gaps = Vec::new();
            if !fires.contains(a) {
                gaps.push(format!("{a}: no case where it fires"));
            }
            if !stays_quiet.contains(a) {
                gaps.push(format!("{a}: no case where it does not fire"));
            }
            gaps
        })
        .collect();
    assert!(untested.is_empty(), "ci/monitoring/rules.test.yaml misses:\n{}", untested.join("\n"));

    write_rules(&prometheus_rule, dir.path(), TESTED_RULES, false);
    fs::copy(tests_file, dir.path().join("rules.test.yaml")).expect("copy rules.test.yaml");
    let out = run_promtool(dir.path(), &["test", "rules", "rules.test.yaml"]);
    assert!(out.success, "promtool test rules ci/monitoring/rules.test.yaml failed:\n{out}");
    assert!(out.output().contains("SUCCESS"), "{out}");
}

#[test]
fn promtool_check_rejects_a_rule_with_invalid_promql() {
    let file = fixture("broken-rules/prometheusrule.yaml");
    let broken = must(yaml_file(&file)).remove(0);
    // The CRD takes any string as expr: the schema check cannot see this.
    let schemas = must(crd_schemas(&repo_path("ci/schemas/prometheus-operator")));
    let out = must(check_crd_objects(&[(file.display().to_string(), broken.clone())], &schemas));
    assert!(out.success, "the fixture should be schema-valid, broken only as PromQL:\n{out}");

    let dir = tempfile::tempdir().expect("temp dir");
    write_rules(&broken, dir.path(), "rules.yaml", true);
    let out = run_promtool(dir.path(), &["check", "rules", "rules.yaml"]);
    assert!(!out.success, "promtool check rules accepted an invalid expression:\n{out}");
    assert!(out.output().contains("parse error"), "promtool did not report the parse error:\n{out}");
}

#[test]
fn the_dashboard_uses_its_datasource_variable_and_valid_promql() {
    let text =
        fs::read_to_string(repo_path("k8s/components/monitoring/dashboard.json")).expect("dashboard.json");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard.json is JSON");
    assert_eq!(dashboard["uid"], "chat-stack");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 39), "schemaVersion");
    let variables = dashboard["templating"]["list"].as_array().cloned().unwrap_or_default();
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "no Prometheus datasource variable `datasource`"
    );
    let uses_variable = |d: &Value| d["uid"] == "${datasource}";
    let mut queries = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap_or("?");
        assert!(uses_variable(&p["datasource"]), "panel {title:?}: datasource is not ${{datasource}}");
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            assert!(
                uses_variable(&t["datasource"]),
                "panel {title:?}: a query's datasource is not ${{datasource}}"
            );
            queries.push((title.to_string(), t["expr"].as_str().unwrap_or("").to_string()));
        }
    }
    // promtool parses recording rules: one per query, Grafana's interval variables made durations.
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, q))| json!({"record": format!("dashboard:query_{i}"), "expr": grafana_to_promql(q)}))
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = json!({"groups": [{"name": "dashboard", "rules": rules}]});
    fs::write(dir.path().join("dashboard.yaml"), serde_yaml::to_string(&file).expect("yaml")).expect("write");
    let out = run_promtool(dir.path(), &["check", "rules", "dashboard.yaml"]);
    assert!(out.success, "a dashboard query is not valid PromQL:\n{out}\nqueries: {queries:#?}");
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_read_is_exported() {
    let objects = rendered();
    let prometheus_rule = rule(&objects);
    let mut expressions: Vec<(String, String)> = rules_of(&prometheus_rule)
        .iter()
        .map(|r| {
            (format!("alert {}", r["alert"].as_str().unwrap_or("?")), r["expr"].as_str().unwrap_or("").into())
        })
        .collect();
    let text =
        fs::read_to_string(repo_path("k8s/components/monitoring/dashboard.json")).expect("dashboard.json");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard.json is JSON");
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            expressions.push((format!("panel {title:?}"), t["expr"].as_str().unwrap_or("").into()));
        }
    }
    let sources = rust_sources();
    let mut used = 0;
    let mut missing: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (place, expr) in &expressions {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{place}: no metric read from {expr:?}");
        used += names.len();
        for n in names {
            if !is_exported(&n, &sources) {
                missing.entry(n).or_default().insert(place.clone());
            }
        }
    }
    assert!(used > 20, "suspiciously few metric names found ({used})");
    let report: Vec<String> = missing.iter().map(|(n, places)| format!("{n} (in {places:?})")).collect();
    assert!(
        missing.is_empty(),
        "metrics no code of gateway/, handlers/ or platform/ exports and no external exporter provides:\n{}",
        report.join("\n")
    );
}

#[test]
fn the_metric_check_reads_promql_and_reports_a_name_nothing_exports() {
    let expr = r#"histogram_quantile(0.95, sum by (le) (rate(a_bucket{job=~"x/.*", le!="1"}[$__rate_interval])))
        > 30 and on (group) label_replace(max without (pod) (b), "g", "$1", "d", "(.+)")
        or c offset 15m unless sum(d{e="}{"}) @ start() or 60 * deriv((max(f))[10m:1m]) > bool 1e3"#;
    let names: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(names, ["a_bucket", "b", "c", "d", "f"]);
    let sources = rust_sources();
    assert!(is_exported("gateway_open_streams", &sources), "a gauge the gateway sets");
    assert!(is_exported("handler_latency_seconds_bucket", &sources), "a histogram's buckets");
    assert!(is_exported("kube_deployment_status_replicas", &sources), "kube-state-metrics'");
    assert!(!is_exported("gateway_made_up_total", &sources), "a name nothing exports");
    assert!(
        !is_exported("gateway_made_up_seconds_bucket", &sources),
        "buckets of a histogram nothing exports"
    );
}

/// Whether a series name is exported: by an external exporter, or as a string literal
/// of the code (a histogram's `_bucket`, `_sum`, `_count` series by its base name).
fn is_exported(series: &str, sources: &str) -> bool {
    let literal = |n: &str| sources.contains(&format!("\"{n}\""));
    EXTERNAL_METRICS.contains(&series)
        || literal(series)
        || ["_bucket", "_sum", "_count"].iter().any(|s| series.strip_suffix(*s).is_some_and(literal))
}

/// Grafana's interval variables as durations, for promtool.
fn grafana_to_promql(query: &str) -> String {
    query.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$__range", "1h")
}

/// The metric names a PromQL expression reads (`testkit::promql`, which the live check
/// of the local stack uses too).
fn metric_names(expr: &str) -> BTreeSet<String> {
    testkit::promql::selectors(expr).into_iter().map(|s| s.metric).collect()
}
