//! The Kubernetes API guard in the verdict engine, the loader and explain.
#![allow(clippy::unwrap_used)]

mod common;

use bulkhead_core::guard::Target;
use bulkhead_core::inventory::Inventory;
use bulkhead_core::model::{GuardMode, Protocol};
use bulkhead_core::verdict::{self, Endpoint, Outcome, Query, Side};
use bulkhead_core::{explain, load_str};

const TCP: Protocol = Protocol::Tcp;

/// Two nodes; pods in `app` (untrusted), `kube-system` (trusted by default)
/// and `mon` (trusted by ServiceAccount in `TRUST_MON`); the API server at
/// VIP 10.96.0.1 with an endpoint on n1 (192.168.0.2:6443) and one outside
/// the nodes (203.0.113.10).
const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: app}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system, labels: {kubernetes.io/metadata.name: kube-system}}
---
apiVersion: v1
kind: Namespace
metadata: {name: mon}
---
apiVersion: v1
kind: Node
metadata: {name: n0}
status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: app, labels: {app: web}}
spec: {nodeName: n0, containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: app, labels: {app: db}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {nodeName: n0, containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: prom, namespace: mon, labels: {app: prom}}
spec: {nodeName: n0, serviceAccountName: scraper, containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.4}
---
apiVersion: v1
kind: Pod
metadata: {name: apiserver, namespace: kube-system}
spec: {nodeName: n1, hostNetwork: true, containers: [{name: c, image: i}]}
status: {podIP: 192.168.0.2}
---
apiVersion: v1
kind: Service
metadata: {name: kubernetes, namespace: default}
spec: {clusterIP: 10.96.0.1, clusterIPs: [10.96.0.1], ports: [{name: https, port: 443, targetPort: 6443}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kubernetes, namespace: default, labels: {kubernetes.io/service-name: kubernetes}}
addressType: IPv4
endpoints: [{addresses: [192.168.0.2]}, {addresses: [203.0.113.10]}]
ports: [{name: https, port: 6443, protocol: TCP}]
"#;

fn config(spec: &str) -> String {
    format!(
        "---\napiVersion: bulkhead.io/v1alpha1\nkind: BulkheadConfig\nmetadata: {{name: cluster}}\nspec: {spec}\n"
    )
}

fn cluster(extra: &str) -> Inventory {
    common::load_clean(&format!("{BASE}{extra}"))
}

fn query(inv: &Inventory, from: &str, to: &str, port: u16) -> Query {
    let ep = |s: &str| match s.split_once('/') {
        Some((ns, name)) => Endpoint::Pod(inv.pod_id(ns, name).unwrap()),
        None => Endpoint::Ip(s.parse().unwrap()),
    };
    Query::new(ep(from), ep(to), TCP, port)
}

fn eval(inv: &Inventory, from: &str, to: &str, port: u16) -> verdict::Verdict {
    let q = query(inv, from, to, port);
    let v = verdict::evaluate(inv, &q);
    assert_eq!(verdict::allowed(inv, &q), v.allowed, "{from} -> {to}");
    assert_eq!(verdict::passes(inv, &q), !v.dropped, "{from} -> {to}");
    v
}

fn guarded_by(v: &verdict::Verdict) -> Option<Target> {
    match &v.egress {
        Side::Guarded { target, .. } => Some(target.clone()),
        _ => None,
    }
}

#[test]
fn untrusted_pods_cannot_reach_the_api_nodes_or_metadata() {
    let inv = cluster("");
    for (to, port, target) in [
        ("10.96.0.1", 443, Target::ServiceVip),
        ("203.0.113.10", 6443, Target::ApiEndpoint),
        ("192.168.0.2", 6443, Target::ApiEndpoint),
        ("192.168.0.1", 10250, Target::Node { name: "n0".into() }),
        ("169.254.169.254", 80, Target::Metadata),
        // A host-network pod is its node's address.
        ("kube-system/apiserver", 6443, Target::ApiEndpoint),
    ] {
        let v = eval(&inv, "app/web", to, port);
        assert!(!v.allowed && v.dropped, "app/web -> {to}: {v:?}");
        assert_eq!(guarded_by(&v), Some(target), "app/web -> {to}");
    }
    // The pod's own node too (the kubelet on n0), which is otherwise always
    // reachable.
    let v = eval(&inv, "app/web", "192.168.0.1", 10250);
    assert!(v.dropped);
    // Other addresses and pods are not the guard's.
    assert!(eval(&inv, "app/web", "198.51.100.7", 443).allowed);
    assert!(eval(&inv, "app/web", "app/db", 80).allowed);
}

#[test]
fn trusted_pods_pass_kube_system_by_default() {
    let inv = cluster("");
    for to in ["10.96.0.1", "192.168.0.1", "192.168.0.2", "169.254.169.254"] {
        let v = eval(&inv, "kube-system/coredns", to, 443);
        assert!(v.allowed, "kube-system/coredns -> {to}: {v:?}");
    }
    // The mon namespace is not trusted by default.
    assert!(!eval(&inv, "mon/prom", "192.168.0.2", 10250).allowed);
}

#[test]
fn trusted_by_service_account_and_by_pod_selector() {
    let inv = cluster(&config(
        "{apiGuard: {trusted: [{serviceAccounts: [mon/scraper]}, {namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}]}}",
    ));
    assert!(eval(&inv, "mon/prom", "192.168.0.2", 10250).allowed);
    assert!(eval(&inv, "app/db", "10.96.0.1", 443).allowed);
    assert!(!eval(&inv, "app/web", "10.96.0.1", 443).allowed);
    // Listing trusted pods replaces the default: kube-system is not in it.
    assert!(!eval(&inv, "kube-system/coredns", "10.96.0.1", 443).allowed);
}

#[test]
fn a_networkpolicy_cannot_open_the_guard() {
    let inv = cluster(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: all, namespace: app}\nspec: {podSelector: {}, policyTypes: [Egress], egress: [{}]}\n",
    );
    let v = eval(&inv, "app/web", "192.168.0.2", 10250);
    assert!(!v.allowed);
    assert!(guarded_by(&v).is_some());
}

fn admin(action: &str, port: u16) -> String {
    format!(
        "---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: kubelet-{action}}}\nspec:\n  tier: Admin\n  priority: 10\n  subject: {{namespaces: {{matchLabels: {{kubernetes.io/metadata.name: app}}}}}}\n  egress:\n  - action: {action}\n    to: [{{nodes: {{}}}}]\n    protocols: [{{tcp: {{destinationPort: {{number: {port}}}}}}}]\n"
    )
}

#[test]
fn an_admin_accept_is_the_escape_hatch() {
    let inv = cluster(&admin("Accept", 10250));
    // Granted, to other nodes and to the pod's own node alike.
    for node in ["192.168.0.1", "192.168.0.2"] {
        let v = eval(&inv, "app/web", node, 10250);
        assert!(v.allowed, "{node}: {v:?}");
        assert!(matches!(v.egress, Side::ClusterPolicy { .. }), "{v:?}");
    }
    // Only what the rule accepts.
    assert!(!eval(&inv, "app/web", "192.168.0.2", 10255).allowed);
    assert!(!eval(&inv, "app/web", "10.96.0.1", 443).allowed);
}

#[test]
fn an_admin_deny_or_pass_does_not_open_it() {
    let inv = cluster(&admin("Pass", 10250));
    let v = eval(&inv, "app/web", "192.168.0.2", 10250);
    assert!(!v.allowed && guarded_by(&v).is_some(), "{v:?}");
    let inv = cluster(&admin("Deny", 10250));
    let v = eval(&inv, "app/web", "192.168.0.2", 10250);
    assert!(!v.allowed && v.dropped, "{v:?}");
    // To the own node, an Admin Deny is the guard's denial.
    let v = eval(&inv, "app/web", "192.168.0.1", 10250);
    assert!(!v.allowed && guarded_by(&v).is_some(), "{v:?}");
}

#[test]
fn monitor_logs_and_lets_through_off_does_nothing() {
    let inv = cluster(&config("{apiGuard: {mode: Monitor}}"));
    let v = eval(&inv, "app/web", "10.96.0.1", 443);
    assert!(!v.allowed && !v.dropped, "{v:?}");
    assert_eq!(v.outcome(), Outcome::WouldDeny);
    assert!(matches!(
        v.egress,
        Side::Guarded {
            mode: GuardMode::Monitor,
            ..
        }
    ));
    let inv = cluster(&config("{apiGuard: {mode: \"Off\"}}"));
    for to in ["10.96.0.1", "192.168.0.1", "192.168.0.2", "169.254.169.254"] {
        assert!(eval(&inv, "app/web", to, 443).allowed, "{to}");
    }
}

#[test]
fn explain_names_the_guard() {
    let inv = cluster("");
    let e = explain::explain(&inv, &query(&inv, "app/web", "10.96.0.1", 443));
    assert!(!e.allowed);
    assert_eq!(e.egress.tier, "apiGuard");
    assert_eq!(e.egress.reason, "apiGuard");
    let text = explain::render_text(&e);
    assert!(
        text.contains("Kubernetes API guard") && text.contains("Service VIP"),
        "{text}"
    );
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["egress"]["tier"], "apiGuard");
}

#[test]
fn the_loader_reads_only_the_kubernetes_service_and_its_slices() {
    let inv = cluster(
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: app}\nspec: {clusterIP: 10.96.5.5}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: app, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}]\n",
    );
    assert_eq!(
        inv.api_vips,
        vec!["10.96.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(inv.api_endpoints.len(), 2);
    // A bad address names the object and the field; the rest stays.
    let loaded = load_str(
        "t.yaml",
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: kubernetes, namespace: default, labels: {kubernetes.io/service-name: kubernetes}}\naddressType: IPv4\nendpoints: [{addresses: [not-an-ip]}]\n",
    );
    let d = loaded
        .diagnostics
        .iter()
        .find(|d| d.is_error())
        .expect("an error");
    assert_eq!(d.field.as_deref(), Some("endpoints[0].addresses[0]"));
    assert!(d.to_string().contains("default/kubernetes"), "{d}");
}
