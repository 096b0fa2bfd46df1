//! Namespace modes: `bulkhead.io/mode` and the cluster default decide whether
//! a denial drops, per side.
#![allow(clippy::unwrap_used)]

use bulkhead_core::explain::{explain, render_text};
use bulkhead_core::inventory::Inventory;
use bulkhead_core::model::{PolicyMode, Protocol};
use bulkhead_core::verdict::{self, Endpoint, Outcome, Query};

/// `a/client` -> `b/server`: b denies all ingress; a denies all egress when
/// `egress_deny`.
fn cluster(
    a_mode: Option<&str>,
    b_mode: Option<&str>,
    egress_deny: bool,
    default: &str,
) -> Inventory {
    let label = |m: Option<&str>| {
        m.map(|m| format!("labels: {{bulkhead.io/mode: {m}}}"))
            .unwrap_or_default()
    };
    let mut yaml = format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: a, {}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: b, {}}}
---
apiVersion: bulkhead.io/v1alpha1
kind: BulkheadConfig
metadata: {{name: cluster}}
spec: {{defaultMode: {default}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: a}}
spec: {{nodeName: n0, containers: [{{name: c, image: i}}]}}
status: {{podIP: 10.0.0.1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: b}}
spec: {{nodeName: n0, containers: [{{name: c, image: i}}]}}
status: {{podIP: 10.0.0.2}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: deny-in, namespace: b}}
spec: {{podSelector: {{}}, policyTypes: [Ingress]}}
"#,
        label(a_mode),
        label(b_mode)
    );
    if egress_deny {
        yaml.push_str(
            r#"---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-out, namespace: a}
spec: {podSelector: {}, policyTypes: [Egress]}
"#,
        );
    }
    let loaded = bulkhead_core::load_str("t.yaml", &yaml);
    let errors: Vec<_> = loaded.diagnostics.iter().filter(|d| d.is_error()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let (inv, _) = Inventory::from_loaded(&loaded);
    inv
}

fn query(inv: &Inventory) -> Query {
    Query::new(
        Endpoint::Pod(inv.pod_id("a", "client").unwrap()),
        Endpoint::Pod(inv.pod_id("b", "server").unwrap()),
        Protocol::Tcp,
        80,
    )
}

#[test]
fn the_denying_side_s_mode_decides() {
    // (a's mode, b's mode, a denies egress too, default) -> outcome
    let cases = [
        (None, None, false, "Enforce", Outcome::Denied),
        (None, None, false, "Learn", Outcome::WouldDeny),
        (None, None, false, "Monitor", Outcome::WouldDeny),
        (None, Some("learn"), false, "Enforce", Outcome::WouldDeny),
        (None, Some("monitor"), false, "Enforce", Outcome::WouldDeny),
        (None, Some("enforce"), false, "Learn", Outcome::Denied),
        // Only b denies: a's learn mode cannot open b's ingress.
        (Some("learn"), None, false, "Enforce", Outcome::Denied),
        // Both deny: dropped if either denying side enforces.
        (
            Some("learn"),
            Some("learn"),
            true,
            "Enforce",
            Outcome::WouldDeny,
        ),
        (
            Some("learn"),
            Some("enforce"),
            true,
            "Enforce",
            Outcome::Denied,
        ),
        (
            Some("enforce"),
            Some("learn"),
            true,
            "Enforce",
            Outcome::Denied,
        ),
        // An unknown mode enforces.
        (None, Some("lern"), false, "Learn", Outcome::Denied),
    ];
    for (a, b, eg, default, want) in cases {
        let inv = cluster(a, b, eg, default);
        let q = query(&inv);
        let v = verdict::evaluate(&inv, &q);
        assert!(!v.allowed);
        assert_eq!(v.outcome(), want, "{a:?} {b:?} {eg} {default}");
        assert_eq!(verdict::passes(&inv, &q), want != Outcome::Denied);
    }
}

#[test]
fn modes_are_read_from_the_label_or_the_default() {
    let inv = cluster(Some("monitor"), None, false, "Learn");
    assert_eq!(inv.namespace_mode("a"), PolicyMode::Monitor);
    assert_eq!(inv.namespace_mode("b"), PolicyMode::Learn);
    let bad = cluster(None, Some("lern"), false, "Learn");
    assert_eq!(bad.namespace_mode("b"), PolicyMode::Enforce);
}

#[test]
fn a_bad_mode_label_is_reported_by_name() {
    let inv_yaml =
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: b, labels: {bulkhead.io/mode: lern}}\n";
    let loaded = bulkhead_core::load_str("t.yaml", inv_yaml);
    let (_, diags) = Inventory::from_loaded(&loaded);
    assert!(
        diags
            .iter()
            .any(|d| d.message.contains("Namespace b") && d.message.contains("bulkhead.io/mode")),
        "{diags:?}"
    );
}

#[test]
fn explain_shows_a_would_be_denial() {
    let inv = cluster(None, Some("learn"), false, "Enforce");
    let e = explain(&inv, &query(&inv));
    assert_eq!(e.outcome, Outcome::WouldDeny);
    let text = render_text(&e);
    assert!(text.contains("WOULD DENY"), "{text}");
    assert!(text.contains("destination namespace mode: Learn"), "{text}");
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["outcome"], "wouldDeny");
}
