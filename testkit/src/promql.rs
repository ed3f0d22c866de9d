//! The series selectors of a PromQL expression (metric name and the label names it
//! matches on), so a test can ask a live Prometheus whether each exists: a misspelt
//! metric or label in a dashboard or an alert otherwise shows as "no data" or an alert
//! that never fires. Only what the expressions of this project use is understood:
//! selectors, functions, aggregations with `by`/`without`, binary operators with
//! `on`/`ignoring`/`group_*`, ranges, strings and numbers.

/// One series selector: `metric{label="…", …}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// The metric name.
    pub metric: String,
    /// The label names its matchers use (values are not checked: a label value may
    /// legitimately have no series yet, e.g. `status=~"5.."` in a healthy run).
    pub labels: Vec<String>,
}

const KEYWORDS: [&str; 13] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
];

/// Aggregation operators, which may come before their `by (…)` and their parentheses.
const AGGREGATIONS: [&str; 12] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// The selectors of `expr`, in order of appearance.
pub fn selectors(expr: &str) -> Vec<Selector> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    // After `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`: the next
    // parenthesised list holds label names, not metrics.
    let mut label_list_next = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '#' {
            // A comment, to the end of the line.
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '$' {
            // A Grafana variable ($__rate_interval, ${datasource}).
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_{}".contains(chars[i])) {
                i += 1;
            }
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '(' && label_list_next {
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            i += 1;
            label_list_next = false;
        } else if c == '{' {
            // A selector without a name (`{__name__="x"}`) is not used here.
            let (_, end) = matcher_labels(&chars, i);
            i = end;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let lower = word.to_ascii_lowercase();
            if KEYWORDS.contains(&lower.as_str()) {
                label_list_next = matches!(
                    lower.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                );
            } else if AGGREGATIONS.contains(&lower.as_str()) || (j < chars.len() && chars[j] == '(') {
                // An aggregation or a function.
            } else if j < chars.len() && chars[j] == '{' {
                let (labels, end) = matcher_labels(&chars, j);
                out.push(Selector { metric: word, labels });
                i = end;
            } else {
                out.push(Selector { metric: word, labels: Vec::new() });
            }
        } else if c.is_ascii_digit() || c == '.' {
            // A number or a duration (`5m`, `1e3`): not a name.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The label names of the matchers in the braces opening at `open`, and the index
/// after the closing brace.
fn matcher_labels(chars: &[char], open: usize) -> (Vec<String>, usize) {
    let mut labels = Vec::new();
    let mut i = open + 1;
    let mut expect_name = true;
    while i < chars.len() && chars[i] != '}' {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(chars, i);
            continue;
        }
        if expect_name && (c.is_ascii_alphabetic() || c == '_') {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            labels.push(chars[start..i].iter().collect());
            expect_name = false;
            continue;
        }
        if c == ',' {
            expect_name = true;
        }
        i += 1;
    }
    (labels, i + 1)
}

/// The index after the string literal starting at `open`.
fn skip_string(chars: &[char], open: usize) -> usize {
    let quote = chars[open];
    let mut i = open + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<(String, Vec<String>)> {
        selectors(expr).into_iter().map(|s| (s.metric, s.labels)).collect()
    }

    #[test]
    fn finds_metrics_and_their_matcher_labels_not_functions_or_grouping_labels() {
        let expr = r#"histogram_quantile(0.95, sum by (le, job) (rate(gateway_time_to_first_token_seconds_bucket{job=~"chat-stack/.*"}[5m]))) > 30"#;
        assert_eq!(
            names(expr),
            vec![("gateway_time_to_first_token_seconds_bucket".into(), vec!["job".to_string()])]
        );
        let expr = r#"sum(rate(handler_records_total{handler="responder",outcome=~"retried|dead_lettered"}[10m])) / sum(rate(handler_records_total{handler="responder"}[10m])) > 0.1"#;
        assert_eq!(
            names(expr),
            vec![
                ("handler_records_total".into(), vec!["handler".to_string(), "outcome".to_string()]),
                ("handler_records_total".into(), vec!["handler".to_string()]),
            ]
        );
    }

    #[test]
    fn bare_metrics_binary_operators_and_strings_with_braces() {
        let expr = r#"kube_deployment_status_replicas >= on (deployment) group_left kube_horizontalpodautoscaler_spec_max_replicas or vector(0)"#;
        assert_eq!(
            names(expr),
            vec![
                ("kube_deployment_status_replicas".into(), vec![]),
                ("kube_horizontalpodautoscaler_spec_max_replicas".into(), vec![]),
            ]
        );
        let expr = r#"up{job="a{b}",instance!~"x,y"} offset 5m unless absent(up)"#;
        assert_eq!(
            names(expr),
            vec![("up".into(), vec!["job".to_string(), "instance".to_string()]), ("up".into(), vec![])]
        );
    }
}
