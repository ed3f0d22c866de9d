//! NetworkPolicies evaluated the way a CNI that enforces them would: which connections
//! they let through, between pods of any namespace and addresses outside the pod network.
//!
//! Only what these manifests use is modelled: `matchLabels` selectors (a
//! `matchExpressions` selector never matches, so an unknown form can only make a check
//! stricter), `ipBlock` with `except`, numeric ports with `endPort`, and the protocols.
//! Pod addresses are not known here, so an `ipBlock` never matches a pod (the Kubernetes
//! documentation leaves that case to the implementation); it matches [`Peer::Ip`].

use std::{fmt, net::Ipv4Addr};

use serde_json::{json, Map, Value};

use crate::{kind, pod_template, selects};

/// One end of a connection.
#[derive(Clone, Debug)]
pub enum Peer {
    /// A pod, by its namespace and labels.
    Pod {
        /// The pod's namespace.
        namespace: String,
        /// The pod's labels.
        labels: Map<String, Value>,
    },
    /// Some pod of a namespace whose pods' labels are not ours to know (the ingress
    /// controller's, Prometheus'): only a rule that admits the whole namespace matches.
    Namespace(String),
    /// An address outside the pod network: a node-local or link-local service, a
    /// managed broker, the internet.
    Ip(Ipv4Addr),
}

impl Peer {
    /// A pod of `namespace` with `labels` (`[(key, value)]`).
    pub fn pod(namespace: &str, labels: &[(&str, &str)]) -> Self {
        Peer::Pod {
            namespace: namespace.to_string(),
            labels: labels.iter().map(|(k, v)| ((*k).to_string(), json!(v))).collect(),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Pod { namespace, labels } => {
                let app = labels
                    .get("app.kubernetes.io/name")
                    .or_else(|| labels.get("k8s-app"))
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                write!(f, "pod {namespace}/{app}")
            }
            Peer::Namespace(ns) => write!(f, "namespace {ns}"),
            Peer::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// `"a.b.c.d/n"` contains `ip`.
pub fn cidr_contains(cidr: &str, ip: Ipv4Addr) -> bool {
    let Some((net, bits)) = cidr.split_once('/') else { return false };
    let (Ok(net), Ok(bits)) = (net.parse::<Ipv4Addr>(), bits.parse::<u32>()) else { return false };
    if bits > 32 {
        return false;
    }
    let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
    (u32::from(net) & mask) == (u32::from(ip) & mask)
}

fn namespace_labels(ns: &str) -> Map<String, Value> {
    Map::from_iter([("kubernetes.io/metadata.name".to_string(), json!(ns))])
}

/// Whether one `to`/`from` entry of a rule in a policy of `policy_ns` matches `peer`.
fn entry_matches(entry: &Value, policy_ns: &str, peer: &Peer) -> bool {
    let block = &entry["ipBlock"];
    if !block.is_null() {
        let Peer::Ip(ip) = peer else { return false };
        let inside = block["cidr"].as_str().is_some_and(|c| cidr_contains(c, *ip));
        let excepted = block["except"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e.as_str().is_some_and(|c| cidr_contains(c, *ip)));
        return inside && !excepted;
    }
    let ns_sel = &entry["namespaceSelector"];
    let pod_sel = &entry["podSelector"];
    match peer {
        Peer::Ip(_) => false,
        Peer::Pod { namespace, labels } => {
            let ns_ok = if ns_sel.is_null() {
                namespace == policy_ns
            } else {
                selects(ns_sel, &namespace_labels(namespace))
            };
            ns_ok && (pod_sel.is_null() || selects(pod_sel, labels))
        }
        Peer::Namespace(ns) => {
            !ns_sel.is_null()
                && selects(ns_sel, &namespace_labels(ns))
                && (pod_sel.is_null() || pod_sel["matchLabels"].as_object().is_none_or(Map::is_empty))
                && pod_sel["matchExpressions"].as_array().is_none_or(Vec::is_empty)
        }
    }
}

/// Whether a rule's `ports` admit `port`/`protocol` (no `ports`: every port).
fn ports_match(rule: &Value, port: u16, protocol: &str) -> bool {
    let Some(ports) = rule["ports"].as_array() else { return true };
    ports.iter().any(|p| {
        let proto = p["protocol"].as_str().unwrap_or("TCP");
        if proto != protocol {
            return false;
        }
        match &p["port"] {
            Value::Null => true,
            Value::Number(n) => {
                let start = n.as_u64().unwrap_or(0);
                let end = p["endPort"].as_u64().unwrap_or(start);
                (start..=end).contains(&u64::from(port))
            }
            // A named port needs the destination's container ports; not used here.
            _ => false,
        }
    })
}

/// The NetworkPolicies among a set of objects.
pub struct Policies<'a> {
    list: Vec<&'a Value>,
}

/// `metadata.namespace`, or "default" when the object does not say.
pub fn namespace_of(obj: &Value) -> &str {
    obj["metadata"]["namespace"].as_str().unwrap_or("default")
}

impl<'a> Policies<'a> {
    /// Every NetworkPolicy of `objects`.
    pub fn new(objects: &'a [Value]) -> Self {
        Policies { list: objects.iter().filter(|o| kind(o) == "NetworkPolicy").collect() }
    }

    /// The policies that select `pod` for `direction` ("Ingress" or "Egress").
    pub fn selecting(&self, pod: &Peer, direction: &str) -> Vec<&'a Value> {
        let Peer::Pod { namespace, labels } = pod else { return Vec::new() };
        self.list
            .iter()
            .copied()
            .filter(|p| {
                namespace_of(p) == namespace
                    && selects(&p["spec"]["podSelector"], labels)
                    && p["spec"]["policyTypes"].as_array().is_some_and(|t| t.iter().any(|x| x == direction))
            })
            .collect()
    }

    /// Whether some policy isolates `pod` for `direction` (then only what a policy
    /// allows gets through).
    pub fn isolates(&self, pod: &Peer, direction: &str) -> bool {
        !self.selecting(pod, direction).is_empty()
    }

    fn side_allows(&self, own: &Peer, other: &Peer, direction: &str, port: u16, protocol: &str) -> bool {
        let (rules_key, peers_key) =
            if direction == "Egress" { ("egress", "to") } else { ("ingress", "from") };
        let selecting = self.selecting(own, direction);
        if selecting.is_empty() {
            return true; // not isolated: everything is allowed
        }
        selecting.iter().any(|p| {
            let policy_ns = namespace_of(p);
            p["spec"][rules_key].as_array().into_iter().flatten().any(|rule| {
                ports_match(rule, port, protocol)
                    && match rule[peers_key].as_array() {
                        None => true, // no `to`/`from`: every peer
                        Some(entries) => entries.iter().any(|e| entry_matches(e, policy_ns, other)),
                    }
            })
        })
    }

    /// Whether `src` may open a connection to `dst` on `port`/`protocol`: the source's
    /// egress and the destination's ingress must both allow it. Peers that are not pods
    /// ([`Peer::Namespace`], [`Peer::Ip`]) have no policies of ours on their side.
    pub fn allows(&self, src: &Peer, dst: &Peer, port: u16, protocol: &str) -> bool {
        self.side_allows(src, dst, "Egress", port, protocol)
            && self.side_allows(dst, src, "Ingress", port, protocol)
    }
}

/// Every pod the objects run, labelled for messages: `(label, pod)`.
pub fn pods(objects: &[Value]) -> Vec<(String, Peer)> {
    objects
        .iter()
        .filter_map(|obj| {
            let template = pod_template(obj)?;
            let labels = template["metadata"]["labels"].as_object().cloned().unwrap_or_default();
            let label = format!("{} {}", kind(obj), crate::name(obj));
            Some((label, Peer::Pod { namespace: namespace_of(obj).to_string(), labels }))
        })
        .collect()
}

/// Where a pod's DNS queries go, one entry per cluster set-up the policies must work on.
pub fn dns_servers() -> Vec<(&'static str, Peer)> {
    vec![
        // kube-proxy sends the kube-dns Service's address to CoreDNS/kube-dns pods.
        (
            "kube-dns pods (kube-system, k8s-app=kube-dns)",
            Peer::pod("kube-system", &[("k8s-app", "kube-dns")]),
        ),
        // NodeLocal DNSCache: a hostNetwork cache on every node, on a link-local address.
        ("NodeLocal DNSCache (169.254.20.10)", Peer::Ip(Ipv4Addr::new(169, 254, 20, 10))),
        // GKE Cloud DNS and Autopilot: the node's metadata server answers DNS.
        ("GKE Cloud DNS / metadata server (169.254.169.254)", Peer::Ip(Ipv4Addr::new(169, 254, 169, 254))),
    ]
}

/// Every pod whose egress some policy restricts must reach DNS on UDP and TCP port 53
/// (TCP for answers too large for UDP) under every set-up of [`dns_servers`]. Returns
/// one line per missing path.
pub fn dns_problems(objects: &[Value]) -> Vec<String> {
    let policies = Policies::new(objects);
    let mut problems = Vec::new();
    for (label, pod) in pods(objects) {
        if !policies.isolates(&pod, "Egress") {
            continue;
        }
        for (setup, server) in dns_servers() {
            for protocol in ["UDP", "TCP"] {
                if !policies.allows(&pod, &server, 53, protocol) {
                    problems
                        .push(format!("{label}: no DNS under {setup}: {protocol} 53 to {server} is denied"));
                }
            }
        }
    }
    problems
}

/// The pods and NetworkPolicies the Strimzi operator creates for the `Kafka` and
/// `KafkaNodePool` objects among `objects`, as far as connections go: one broker pod
/// per node pool (its labels as Strimzi sets them), and a policy per cluster that lets
/// each listener's `networkPolicyPeers` in on its port, and the cluster's own pods in
/// on the control-plane and replication ports (9090, 9091). Synthetic objects of kind
/// `Pod` and `NetworkPolicy`, to add to the objects before evaluating paths.
pub fn strimzi_model(objects: &[Value]) -> Vec<Value> {
    let mut model = Vec::new();
    for kafka in objects.iter().filter(|o| kind(o) == "Kafka") {
        let cluster = crate::name(kafka);
        let ns = namespace_of(kafka);
        for pool in objects.iter().filter(|o| {
            kind(o) == "KafkaNodePool" && o["metadata"]["labels"]["strimzi.io/cluster"] == json!(cluster)
        }) {
            let roles: Vec<&str> =
                pool["spec"]["roles"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            model.push(json!({
                "kind": "Pod",
                "metadata": {
                    "name": format!("{cluster}-{}-0", crate::name(pool)),
                    "namespace": ns,
                    "labels": {
                        "strimzi.io/cluster": cluster,
                        "strimzi.io/kind": "Kafka",
                        "strimzi.io/name": format!("{cluster}-kafka"),
                        "strimzi.io/pool-name": crate::name(pool),
                        "strimzi.io/broker-role": roles.contains(&"broker").to_string(),
                        "strimzi.io/controller-role": roles.contains(&"controller").to_string(),
                    }
                },
                "spec": {}
            }));
        }
        let mut ingress = vec![json!({
            "from": [{"podSelector": {"matchLabels": {"strimzi.io/cluster": cluster}}}],
            "ports": [{"port": 9090, "protocol": "TCP"}, {"port": 9091, "protocol": "TCP"}]
        })];
        for listener in kafka["spec"]["kafka"]["listeners"].as_array().into_iter().flatten() {
            let mut rule = json!({"ports": [{"port": listener["port"], "protocol": "TCP"}]});
            if let Some(peers) = listener["networkPolicyPeers"].as_array() {
                rule["from"] = Value::Array(peers.clone());
            }
            ingress.push(rule);
        }
        model.push(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": format!("{cluster}-network-policy-kafka"), "namespace": ns},
            "spec": {
                "podSelector": {"matchLabels": {
                    "strimzi.io/cluster": cluster,
                    "strimzi.io/kind": "Kafka",
                    "strimzi.io/name": format!("{cluster}-kafka")
                }},
                "policyTypes": ["Ingress"],
                "ingress": ingress
            }
        }));
    }
    model
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let ip = Ipv4Addr::new(169, 254, 20, 10);
        assert!(cidr_contains("169.254.20.10/32", ip));
        assert!(cidr_contains("169.254.0.0/16", ip));
        assert!(cidr_contains("0.0.0.0/0", ip));
        assert!(!cidr_contains("169.254.169.254/32", ip));
        assert!(!cidr_contains("10.0.0.0/8", ip));
        assert!(!cidr_contains("nonsense", ip));
    }
}
