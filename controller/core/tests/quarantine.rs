//! Quarantine in the verdict engine: table tests.
#![allow(clippy::unwrap_used)]

use bulkhead_core::explain;
use bulkhead_core::inventory::Inventory;
use bulkhead_core::model::Object;
use bulkhead_core::quarantine::drop_expired;
use bulkhead_core::verdict::{self, Endpoint, Query};
use bulkhead_core::{Protocol, load_str};

const BASE: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n0}
status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web}}
spec: {nodeName: n0, containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: db}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: forensics, namespace: sec}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.3}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{}]
  egress: [{}]
"#;

const Q_A: &str = r#"
apiVersion: bulkhead.io/v1alpha1
kind: Quarantine
metadata: {name: q1, namespace: x}
spec:
  podName: a
  reason: crypto miner
  allowFrom: [sec/forensics, 203.0.113.0/24]
"#;

fn inv(docs: &[&str]) -> Inventory {
    let text = docs.join("\n---\n");
    let loaded = load_str("t.yaml", &text);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    Inventory::from_loaded(&loaded).0
}

fn pod(inv: &Inventory, key: &str) -> Endpoint {
    let (ns, name) = key.split_once('/').unwrap();
    Endpoint::Pod(inv.pod_id(ns, name).unwrap())
}

fn ip(s: &str) -> Endpoint {
    Endpoint::Ip(s.parse().unwrap())
}

fn q(src: Endpoint, dst: Endpoint) -> Query {
    Query::new(src, dst, Protocol::Tcp, 80)
}

#[test]
fn a_quarantined_pod_sends_and_receives_nothing() {
    let inv = inv(&[BASE, Q_A]);
    let (a, b) = (pod(&inv, "x/a"), pod(&inv, "x/b"));
    // The policy allows everything; the quarantine overrides it.
    for (src, dst) in [(b, a), (a, b), (a, ip("192.0.2.1")), (ip("192.0.2.1"), a)] {
        let v = verdict::evaluate(&inv, &q(src, dst));
        assert!(!v.allowed, "{src:?} -> {dst:?}");
        let qv = v.quarantine.unwrap();
        assert_eq!(inv.quarantines[qv.quarantine].key(), "x/q1");
        assert!(!verdict::allowed(&inv, &q(src, dst)));
    }
    // Its own node too (input and output hooks).
    assert!(!verdict::allowed(&inv, &q(a, ip("192.168.0.1"))));
    assert!(!verdict::allowed(&inv, &q(ip("192.168.0.1"), a)));
    // A pod can still reach itself; others are unaffected.
    assert!(verdict::allowed(&inv, &q(a, a)));
    assert!(verdict::allowed(&inv, &q(b, pod(&inv, "sec/forensics"))));
}

#[test]
fn forensics_sources_still_connect_but_not_the_other_way() {
    let inv = inv(&[BASE, Q_A]);
    let (a, f) = (pod(&inv, "x/a"), pod(&inv, "sec/forensics"));
    let v = verdict::evaluate(&inv, &q(f, a));
    assert!(v.allowed);
    assert_eq!(v.quarantine.as_ref().unwrap().allowed_by, Some(0));
    let v = verdict::evaluate(&inv, &q(ip("203.0.113.9"), a));
    assert!(v.allowed);
    assert_eq!(v.quarantine.as_ref().unwrap().allowed_by, Some(1));
    // The quarantined pod cannot open a connection to its forensics source.
    assert!(!verdict::allowed(&inv, &q(a, f)));
}

#[test]
fn explain_names_the_quarantine() {
    let inv = inv(&[BASE, Q_A]);
    let e = explain::explain(&inv, &q(pod(&inv, "x/b"), pod(&inv, "x/a")));
    assert!(!e.allowed);
    let info = e.quarantine.as_ref().unwrap();
    assert_eq!(info.quarantine, "x/q1");
    assert_eq!(info.pod, "x/a");
    assert_eq!(info.reason, "crypto miner");
    let text = explain::render_text(&e);
    assert!(text.contains("quarantine x/q1: denied"), "{text}");
    assert!(text.contains("crypto miner"), "{text}");
    let e = explain::explain(&inv, &q(pod(&inv, "sec/forensics"), pod(&inv, "x/a")));
    assert_eq!(
        e.quarantine.unwrap().allowed_from.as_deref(),
        Some("sec/forensics")
    );
}

#[test]
fn the_quarantine_follows_the_pod_not_the_address() {
    // Pod a is gone; pod c reuses its address: c is not quarantined.
    let base = BASE.replace("name: a, namespace: x", "name: c, namespace: x");
    let inv = inv(&[&base, Q_A]);
    let (b, c) = (pod(&inv, "x/b"), pod(&inv, "x/c"));
    assert!(verdict::allowed(&inv, &q(b, c)));
    assert!(verdict::allowed(&inv, &q(c, b)));
    assert!(verdict::evaluate(&inv, &q(b, c)).quarantine.is_none());
}

#[test]
fn relabelling_does_not_release_a_captured_pod() {
    let by_selector = r#"
apiVersion: bulkhead.io/v1alpha1
kind: Quarantine
metadata: {name: q2, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  reason: workload compromised
"#;
    let inv1 = inv(&[BASE, by_selector]);
    let a = pod(&inv1, "x/a");
    assert!(!verdict::allowed(&inv1, &q(pod(&inv1, "x/b"), a)));
    // Relabelled: the selector no longer matches, but the controller keeps
    // the pods it captured.
    let relabelled = BASE.replace("labels: {app: web}", "labels: {app: other}");
    let mut objects: Vec<Object> = load_str("t.yaml", &format!("{relabelled}\n---\n{by_selector}"))
        .objects
        .into_iter()
        .map(|l| l.object)
        .collect();
    for o in &mut objects {
        if let Object::Quarantine(q) = o {
            q.captured.push("a".into());
        }
    }
    let (inv2, _) = Inventory::new(objects);
    assert!(!verdict::allowed(
        &inv2,
        &q(pod(&inv2, "x/b"), pod(&inv2, "x/a"))
    ));
}

#[test]
fn a_quarantined_pod_is_nobodys_forensics_source() {
    let both = r#"
apiVersion: bulkhead.io/v1alpha1
kind: Quarantine
metadata: {name: q3, namespace: sec}
spec:
  podName: forensics
  reason: also compromised
"#;
    let inv = inv(&[BASE, Q_A, both]);
    assert!(!verdict::allowed(
        &inv,
        &q(pod(&inv, "sec/forensics"), pod(&inv, "x/a"))
    ));
}

#[test]
fn expired_quarantines_are_dropped_by_the_caller_with_its_now() {
    let expiring = Q_A.replace(
        "reason: crypto miner",
        "reason: crypto miner\n  expires: 2030-01-01T00:00:00Z",
    );
    let objects = || -> Vec<Object> {
        load_str("t.yaml", &format!("{BASE}\n---\n{expiring}"))
            .objects
            .into_iter()
            .map(|l| l.object)
            .collect()
    };
    let mut before = objects();
    let next = drop_expired(&mut before, "2029-12-31T23:59:59Z".parse().unwrap());
    assert_eq!(next, Some("2030-01-01T00:00:00Z".parse().unwrap()));
    assert!(before.iter().any(|o| matches!(o, Object::Quarantine(_))));
    let mut after = objects();
    assert_eq!(
        drop_expired(&mut after, "2030-01-01T00:00:00Z".parse().unwrap()),
        None
    );
    assert!(!after.iter().any(|o| matches!(o, Object::Quarantine(_))));
}

#[test]
fn a_bad_quarantine_is_rejected_naming_its_fields() {
    let bad = r#"
apiVersion: bulkhead.io/v1alpha1
kind: Quarantine
metadata: {name: bad, namespace: x}
spec:
  podName: a
  reason: ""
  allowFrom: [not-a-source]
"#;
    let loaded = load_str("t.yaml", bad);
    let fields: Vec<_> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.field.clone().unwrap_or_default())
        .collect();
    assert_eq!(fields, ["spec.reason", "spec.allowFrom[0]"]);
    assert!(loaded.objects.is_empty());
}

#[test]
fn host_network_pods_cannot_be_quarantined() {
    let host = r#"
apiVersion: v1
kind: Pod
metadata: {name: h, namespace: x}
spec: {nodeName: n0, hostNetwork: true, containers: [{name: c, image: i}]}
status: {podIP: 192.168.0.1}
---
apiVersion: bulkhead.io/v1alpha1
kind: Quarantine
metadata: {name: qh, namespace: x}
spec: {podName: h, reason: r}
"#;
    let loaded = load_str("t.yaml", &format!("{BASE}\n---\n{host}"));
    let (inv, diags) = Inventory::from_loaded(&loaded);
    assert!(
        diags
            .iter()
            .any(|d| d.message.contains("cannot be quarantined")),
        "{diags:?}"
    );
    let h = inv.pod_id("x", "h").unwrap();
    assert!(inv.quarantines_of(h).is_empty());
}
