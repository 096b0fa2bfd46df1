//! Table tests for the tiers: `ClusterNetworkPolicy` (policy.networking.k8s.io
//! /v1alpha2, network-policy-api v0.2.0; each case cites the upstream Go
//! type documentation it checks) and Bulkhead's `Tenant` fences. Every case
//! goes through the loader from YAML and asserts the verdict and what
//! decided it, so that each fails on a bug in the loader or the engine; the
//! compiled rulesets are checked against the same verdicts by the
//! differential test (`dataplane.rs`).
//!
//! The cluster: namespaces `a1`, `a2` (label `tenant=a`), `b1` (`tenant=b`),
//! `shared`; pods `a1/web` 10.0.1.1 (app=web; named ports http=8080/TCP,
//! dns=53/UDP), `a1/db` 10.0.1.2 (app=db; http=80/TCP), `a2/api` 10.0.2.1
//! (app=api; http=9090/TCP), `b1/api` 10.0.3.1 (app=api), `shared/dns`
//! 10.0.4.1 (app=dns), `b1/host` (host network on n1). Nodes `n0`
//! 192.168.0.1 (zone=a), `n1` 192.168.0.2 (zone=b).

#![allow(clippy::unwrap_used)]

mod common;

use bulkhead_core::cnp::{Action, Tier};
use bulkhead_core::explain;
use bulkhead_core::inventory::Inventory;
use bulkhead_core::verdict::{self, Endpoint, Note, Query, Side};
use bulkhead_core::{Protocol, load_str};
use proptest::prelude::*;

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: a1, labels: {tenant: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: a2, labels: {tenant: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: b1, labels: {tenant: b}}
---
apiVersion: v1
kind: Namespace
metadata: {name: shared}
---
apiVersion: v1
kind: Node
metadata: {name: n0, labels: {zone: a}}
status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {zone: b}}
status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: a1, labels: {app: web}}
spec:
  nodeName: n0
  containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]}]
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: a1, labels: {app: db}}
spec:
  nodeName: n1
  containers: [{name: c, image: i, ports: [{name: http, containerPort: 80}]}]
status: {podIP: 10.0.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: a2, labels: {app: api}}
spec:
  nodeName: n1
  containers: [{name: c, image: i, ports: [{name: http, containerPort: 9090}]}]
status: {podIP: 10.0.2.1}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: b1, labels: {app: api}}
spec: {nodeName: n0, containers: [{name: c, image: i}]}
status: {podIP: 10.0.3.1}
---
apiVersion: v1
kind: Pod
metadata: {name: dns, namespace: shared, labels: {app: dns}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {podIP: 10.0.4.1}
---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: b1, labels: {app: host}}
spec: {nodeName: n1, hostNetwork: true, containers: [{name: c, image: i}]}
status: {podIP: 192.168.0.2}
"#;

const GUARD_OFF: &str = "apiVersion: bulkhead.io/v1alpha1\nkind: BulkheadConfig\nmetadata: {name: cluster}\nspec: {apiGuard: {mode: \"Off\"}}\n---\n";

fn cluster(extra: &str) -> Inventory {
    common::load_clean(&format!("{BASE}---\n{extra}"))
}

fn ep(inv: &Inventory, s: &str) -> Endpoint {
    match s.split_once('/') {
        Some((ns, name)) => Endpoint::Pod(inv.pod_id(ns, name).unwrap()),
        None => Endpoint::Ip(s.parse().unwrap()),
    }
}

fn q(inv: &Inventory, from: &str, to: &str, proto: Protocol, port: u16) -> Query {
    Query::new(ep(inv, from), ep(inv, to), proto, port)
}

fn eval(inv: &Inventory, from: &str, to: &str, proto: Protocol, port: u16) -> verdict::Verdict {
    let query = q(inv, from, to, proto, port);
    let v = verdict::evaluate(inv, &query);
    // The fast path must agree with the full one.
    assert_eq!(verdict::allowed(inv, &query), v.allowed, "{from} -> {to}");
    v
}

fn ok(inv: &Inventory, from: &str, to: &str, proto: Protocol, port: u16) -> bool {
    eval(inv, from, to, proto, port).allowed
}

/// The ClusterNetworkPolicy rule that decided a side: (policy, rule, action).
fn cnp_of(inv: &Inventory, s: &Side) -> Option<(String, usize, Action)> {
    match s {
        Side::ClusterPolicy {
            policy,
            rule,
            action,
            ..
        } => Some((inv.cnps[*policy].name.clone(), *rule, *action)),
        _ => None,
    }
}

fn cnp(name: &str, tier: &str, priority: u32, body: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  tier: {tier}\n  priority: {priority}\n{body}\n---\n"
    )
}

const ALL_NS: &str = "  subject: {namespaces: {}}\n";

fn np_allow_all_ingress(ns: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: allow-all, namespace: {ns}}}\nspec:\n  podSelector: {{}}\n  ingress: [{{}}]\n---\n"
    )
}

fn np_deny_all_ingress(ns: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny-all, namespace: {ns}}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Ingress]\n---\n"
    )
}

const DENY_FROM_B: &str =
    "  ingress:\n  - action: Deny\n    from: [{namespaces: {matchLabels: {tenant: b}}}]\n";
const ACCEPT_FROM_B: &str =
    "  ingress:\n  - action: Accept\n    from: [{namespaces: {matchLabels: {tenant: b}}}]\n";
const PASS_FROM_B: &str =
    "  ingress:\n  - action: Pass\n    from: [{namespaces: {matchLabels: {tenant: b}}}]\n";

// ---- priority ordering ----

/// "Policies with lower priority values have higher precedence, and are
/// checked before policies with higher priority values in the same tier."
#[test]
fn lower_priority_value_wins() {
    for (deny, accept, want) in [(10, 20, false), (20, 10, true)] {
        let inv = cluster(&format!(
            "{}{}",
            cnp("deny", "Admin", deny, &format!("{ALL_NS}{DENY_FROM_B}")),
            cnp(
                "accept",
                "Admin",
                accept,
                &format!("{ALL_NS}{ACCEPT_FROM_B}")
            )
        ));
        let v = eval(&inv, "b1/api", "a1/web", TCP, 80);
        assert_eq!(v.allowed, want, "deny at {deny}, accept at {accept}");
        let winner = if want { "accept" } else { "deny" };
        assert_eq!(cnp_of(&inv, &v.ingress).unwrap().0, winner);
    }
}

/// Upstream leaves equal priorities undefined; Bulkhead breaks ties by name.
#[test]
fn equal_priorities_are_ordered_by_name() {
    for (first, second, want) in [("a-deny", "b-accept", false), ("b-deny", "a-accept", true)] {
        let inv = cluster(&format!(
            "{}{}",
            cnp(first, "Admin", 5, &format!("{ALL_NS}{DENY_FROM_B}")),
            cnp(second, "Admin", 5, &format!("{ALL_NS}{ACCEPT_FROM_B}"))
        ));
        assert_eq!(
            ok(&inv, "b1/api", "a1/web", TCP, 80),
            want,
            "{first} vs {second}"
        );
    }
}

/// "The relative precedence of ingress rules within a single CNP object ...
/// will be determined by the order in which the rule is written."
#[test]
fn rules_apply_in_written_order() {
    let both = |a: &str, b: &str| {
        format!(
            "{ALL_NS}  ingress:\n  - action: {a}\n    from: [{{namespaces: {{matchLabels: {{tenant: b}}}}}}]\n  - action: {b}\n    from: [{{namespaces: {{}}}}]\n"
        )
    };
    let inv = cluster(&cnp("p", "Admin", 1, &both("Accept", "Deny")));
    let v = eval(&inv, "b1/api", "a1/web", TCP, 80);
    assert!(v.allowed);
    assert_eq!(
        cnp_of(&inv, &v.ingress),
        Some(("p".into(), 0, Action::Accept))
    );
    // Traffic the first rule does not match falls to the second.
    let v = eval(&inv, "a2/api", "a1/web", TCP, 80);
    assert_eq!(
        cnp_of(&inv, &v.ingress),
        Some(("p".into(), 1, Action::Deny))
    );
    let inv = cluster(&cnp("p", "Admin", 1, &both("Deny", "Accept")));
    assert!(!ok(&inv, "b1/api", "a1/web", TCP, 80));
    assert!(ok(&inv, "a2/api", "a1/web", TCP, 80));
}

// ---- Admin vs NetworkPolicy ----

/// "The Admin tier takes precedence over all other policies ... that cannot
/// be overridden in the other tiers."
#[test]
fn admin_deny_beats_networkpolicy_allow() {
    let inv = cluster(&format!(
        "{}{}",
        np_allow_all_ingress("a1"),
        cnp("deny", "Admin", 10, &format!("{ALL_NS}{DENY_FROM_B}"))
    ));
    let v = eval(&inv, "b1/api", "a1/web", TCP, 80);
    assert!(!v.allowed);
    assert!(matches!(
        v.ingress,
        Side::ClusterPolicy {
            tier: Tier::Admin,
            action: Action::Deny,
            ..
        }
    ));
    // Other sources are still decided by the NetworkPolicy.
    assert!(ok(&inv, "a2/api", "a1/web", TCP, 80));
}

/// "Accept: ... No further ingress ClusterNetworkPolicy or NetworkPolicy
/// rules will be processed."
#[test]
fn admin_accept_beats_networkpolicy_deny() {
    let inv = cluster(&format!(
        "{}{}",
        np_deny_all_ingress("a1"),
        cnp("accept", "Admin", 10, &format!("{ALL_NS}{ACCEPT_FROM_B}"))
    ));
    assert!(ok(&inv, "b1/api", "a1/web", TCP, 80));
    assert!(!ok(&inv, "a2/api", "a1/web", TCP, 80));
}

/// Egress "Accept: No further egress ClusterNetworkPolicy or NetworkPolicy
/// rules will be processed but any ingress rules at the destination do apply."
#[test]
fn admin_egress_accept_leaves_ingress_to_the_destination() {
    let inv = cluster(&format!(
        "{}{}",
        np_deny_all_ingress("a1"),
        cnp(
            "out",
            "Admin",
            1,
            "  subject: {namespaces: {matchLabels: {tenant: b}}}\n  egress:\n  - action: Accept\n    to: [{namespaces: {}}]\n"
        )
    ));
    let v = eval(&inv, "b1/api", "a1/web", TCP, 80);
    assert!(matches!(
        v.egress,
        Side::ClusterPolicy {
            action: Action::Accept,
            ..
        }
    ));
    assert!(matches!(v.ingress, Side::Denied { .. }));
    assert!(!v.allowed);
}

/// "Pass: Skips all further ClusterNetworkPolicy rules in the current tier
/// ... and passes evaluation to the next tier."
#[test]
fn admin_pass_defers_to_networkpolicy() {
    // Pass, then a lower-precedence Admin Deny that must be skipped.
    let admin = format!(
        "{}{}",
        cnp("pass", "Admin", 1, &format!("{ALL_NS}{PASS_FROM_B}")),
        cnp("deny", "Admin", 2, &format!("{ALL_NS}{DENY_FROM_B}"))
    );
    // No NetworkPolicy: the default allows.
    let inv = cluster(&admin);
    let v = eval(&inv, "b1/api", "a1/web", TCP, 80);
    assert!(v.allowed);
    assert!(v.notes.iter().any(|n| matches!(
        n,
        Note::Passed {
            tier: Tier::Admin,
            ..
        }
    )));
    // A NetworkPolicy that denies decides after the Pass.
    let inv = cluster(&format!("{admin}{}", np_deny_all_ingress("a1")));
    let v = eval(&inv, "b1/api", "a1/web", TCP, 80);
    assert!(matches!(v.ingress, Side::Denied { .. }), "{:?}", v.ingress);
    // And without the Pass, the Admin Deny decides.
    let inv = cluster(&cnp("deny", "Admin", 2, &format!("{ALL_NS}{DENY_FROM_B}")));
    assert!(!ok(&inv, "b1/api", "a1/web", TCP, 80));
}

// ---- Baseline ----

/// "Baseline tier is a cluster-wide policy that can be overridden by the
/// v1.NetworkPolicy ... Further evaluation only happens for Pods not selected
/// by a v1.NetworkPolicy."
#[test]
fn baseline_applies_only_where_no_networkpolicy_isolates() {
    let base = cnp("base", "Baseline", 1, &format!("{ALL_NS}{DENY_FROM_B}"));
    let inv = cluster(&format!("{base}{}", np_allow_all_ingress("a1")));
    // a1 pods are isolated by a NetworkPolicy that allows: Baseline is moot.
    assert!(ok(&inv, "b1/api", "a1/web", TCP, 80));
    // a2 pods are not isolated: the Baseline Deny applies.
    let v = eval(&inv, "b1/api", "a2/api", TCP, 80);
    assert!(!v.allowed);
    assert!(matches!(
        v.ingress,
        Side::ClusterPolicy {
            tier: Tier::Baseline,
            ..
        }
    ));
    // An egress-only NetworkPolicy does not isolate ingress.
    let egress_np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: e, namespace: a2}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{}]\n---\n";
    let inv = cluster(&format!("{base}{egress_np}"));
    assert!(!ok(&inv, "b1/api", "a2/api", TCP, 80));
}

#[test]
fn baseline_pass_goes_to_the_default() {
    let inv = cluster(&format!(
        "{}{}",
        cnp("pass", "Baseline", 1, &format!("{ALL_NS}{PASS_FROM_B}")),
        cnp(
            "deny",
            "Baseline",
            2,
            "  subject: {namespaces: {}}\n  ingress:\n  - action: Deny\n    from: [{namespaces: {}}]\n"
        )
    ));
    assert!(ok(&inv, "b1/api", "a1/web", TCP, 80));
    assert!(!ok(&inv, "a2/api", "a1/web", TCP, 80));
}

/// Admin decides before Baseline even for pods no NetworkPolicy selects.
#[test]
fn admin_before_baseline() {
    let inv = cluster(&format!(
        "{}{}",
        cnp(
            "base-deny",
            "Baseline",
            0,
            &format!("{ALL_NS}{DENY_FROM_B}")
        ),
        cnp(
            "admin-accept",
            "Admin",
            1000,
            &format!("{ALL_NS}{ACCEPT_FROM_B}")
        )
    ));
    assert!(ok(&inv, "b1/api", "a1/web", TCP, 80));
}

// ---- subjects ----

#[test]
fn subject_by_namespaces_or_by_pods() {
    let by_ns = cnp(
        "ns",
        "Admin",
        1,
        "  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: a1}}}\n  ingress:\n  - action: Deny\n    from: [{namespaces: {}}]\n",
    );
    let inv = cluster(&by_ns);
    assert!(!ok(&inv, "b1/api", "a1/web", TCP, 80));
    assert!(!ok(&inv, "b1/api", "a1/db", TCP, 80));
    assert!(ok(&inv, "b1/api", "a2/api", TCP, 80));
    let by_pods = cnp(
        "pods",
        "Admin",
        1,
        "  subject:\n    pods:\n      namespaceSelector: {matchLabels: {tenant: a}}\n      podSelector: {matchLabels: {app: db}}\n  ingress:\n  - action: Deny\n    from: [{namespaces: {}}]\n",
    );
    let inv = cluster(&by_pods);
    assert!(ok(&inv, "b1/api", "a1/web", TCP, 80));
    assert!(!ok(&inv, "b1/api", "a1/db", TCP, 80));
    assert!(ok(&inv, "b1/api", "a2/api", TCP, 80));
}

/// "Note that host-networked pods are not included in subject selection."
#[test]
fn host_network_pods_are_not_subjects() {
    let inv = cluster(&cnp(
        "deny-out",
        "Admin",
        1,
        "  subject: {namespaces: {matchLabels: {tenant: b}}}\n  egress:\n  - action: Deny\n    to: [{networks: [0.0.0.0/0]}]\n",
    ));
    assert!(!ok(&inv, "b1/api", "203.0.113.9", TCP, 443));
    assert!(ok(&inv, "b1/host", "203.0.113.9", TCP, 443));
}

// ---- ingress vs egress ----

/// "CNPs with no ingress rules do not affect ingress traffic" (and egress).
#[test]
fn ingress_and_egress_rules_are_separate() {
    let inv = cluster(&cnp(
        "egress-only",
        "Admin",
        1,
        "  subject: {namespaces: {matchLabels: {tenant: a}}}\n  egress:\n  - action: Deny\n    to: [{namespaces: {matchLabels: {tenant: b}}}]\n",
    ));
    // a -> b: denied at a's egress.
    let v = eval(&inv, "a1/web", "b1/api", TCP, 80);
    assert!(!v.allowed && v.ingress.allows());
    assert!(!v.egress.allows());
    // b -> a: a's ingress is untouched.
    assert!(ok(&inv, "b1/api", "a1/web", TCP, 80));
}

// ---- ports ----

#[test]
fn ports_numbers_and_ranges() {
    let inv = cluster(&cnp(
        "ports",
        "Admin",
        1,
        "  subject: {namespaces: {}}\n  ingress:\n  - action: Deny\n    from: [{namespaces: {}}]\n    protocols:\n    - tcp: {destinationPort: {number: 22}}\n    - udp: {destinationPort: {range: {start: 1000, end: 2000}}}\n",
    ));
    assert!(!ok(&inv, "b1/api", "a1/web", TCP, 22));
    assert!(ok(&inv, "b1/api", "a1/web", UDP, 22));
    assert!(ok(&inv, "b1/api", "a1/web", TCP, 1500));
    for (port, want) in [
        (999, true),
        (1000, false),
        (1500, false),
        (2000, false),
        (2001, true),
    ] {
        assert_eq!(ok(&inv, "b1/api", "a1/web", UDP, port), want, "UDP {port}");
    }
}

/// "DestinationNamedPort selects a destination port on a pod based on the
/// ContainerPort name": the number and protocol come from the destination.
#[test]
fn named_ports_resolve_on_the_destination() {
    let inv = cluster(&cnp(
        "named",
        "Admin",
        1,
        "  subject: {namespaces: {}}\n  ingress:\n  - action: Deny\n    from: [{namespaces: {}}]\n    protocols: [{destinationNamedPort: http}]\n  - action: Deny\n    from: [{namespaces: {}}]\n    protocols: [{destinationNamedPort: dns}]\n",
    ));
    // http is 8080 on a1/web, 80 on a1/db, 9090 on a2/api.
    assert!(!ok(&inv, "b1/api", "a1/web", TCP, 8080));
    assert!(ok(&inv, "b1/api", "a1/web", TCP, 80));
    assert!(!ok(&inv, "b1/api", "a1/db", TCP, 80));
    assert!(!ok(&inv, "b1/api", "a2/api", TCP, 9090));
    assert!(ok(&inv, "b1/api", "a2/api", TCP, 8080));
    // dns is UDP 53 on a1/web only: TCP 53 is another port.
    assert!(!ok(&inv, "b1/api", "a1/web", UDP, 53));
    assert!(ok(&inv, "b1/api", "a1/web", TCP, 53));
    // A pod without the name: nothing matches.
    assert!(ok(&inv, "a1/web", "b1/api", TCP, 8080));
}

// ---- networks and nodes ----

/// "Networks ... note that cluster-internal traffic will be checked against
/// the rule as well."
#[test]
fn networks_match_outside_and_inside_addresses() {
    let inv = cluster(&cnp(
        "nets",
        "Admin",
        1,
        "  subject: {namespaces: {matchLabels: {tenant: a}}}\n  egress:\n  - action: Deny\n    to: [{networks: [203.0.113.0/24, 10.0.3.0/24]}]\n",
    ));
    assert!(!ok(&inv, "a1/web", "203.0.113.9", TCP, 443));
    assert!(ok(&inv, "a1/web", "198.51.100.1", TCP, 443));
    // b1/api is 10.0.3.1: a pod inside the network.
    assert!(!ok(&inv, "a1/web", "b1/api", TCP, 80));
    assert!(ok(&inv, "a1/web", "shared/dns", TCP, 80));
}

/// "Nodes ... selects the nodeIPs as the peer type by matching on the IPs
/// present in the node.Status.Addresses field of the node."
#[test]
fn nodes_peer_selects_node_addresses_by_label() {
    // The API guard (on by default) would deny every node address to these
    // untrusted pods: this test is about the tier alone (see guard.rs).
    let inv = cluster(&format!(
        "{GUARD_OFF}{}",
        cnp(
            "nodes",
            "Admin",
            1,
            "  subject: {namespaces: {matchLabels: {tenant: b}}}\n  egress:\n  - action: Deny\n    to: [{nodes: {matchLabels: {zone: b}}}]\n",
        )
    ));
    // b1/api runs on n0; n1 (zone b) is another node.
    assert!(!ok(&inv, "b1/api", "192.168.0.2", TCP, 10250));
    assert!(ok(&inv, "b1/api", "192.0.2.1", TCP, 10250));
    // A host-network pod on n1 is n1's address.
    assert!(!ok(&inv, "b1/api", "b1/host", TCP, 10250));
    // n0 is the pod's own node: always allowed; and zone a is not selected.
    assert!(ok(&inv, "b1/api", "192.168.0.1", TCP, 10250));
}

// ---- explain ----

#[test]
fn explain_names_tier_policy_and_rule() {
    let inv = cluster(&format!(
        "{}{}",
        np_allow_all_ingress("a1"),
        cnp(
            "deny-b",
            "Admin",
            7,
            &format!(
                "{ALL_NS}  ingress:\n  - name: no-b\n    action: Deny\n    from: [{{namespaces: {{matchLabels: {{tenant: b}}}}}}]\n"
            )
        )
    ));
    let e = explain::explain(&inv, &q(&inv, "b1/api", "a1/web", TCP, 80));
    assert!(!e.allowed);
    assert_eq!(e.ingress.tier, "Admin");
    let r = e.ingress.cluster_rule.as_ref().unwrap();
    assert_eq!(
        (r.policy.as_str(), r.rule, r.action.as_str(), r.priority),
        ("deny-b", 0, "Deny", 7)
    );
    assert_eq!(r.name.as_deref(), Some("no-b"));
    let text = explain::render_text(&e);
    assert!(
        text.contains("ClusterNetworkPolicy deny-b (Admin tier, priority 7) ingress rule 0 denies"),
        "{text}"
    );
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["ingress"]["clusterRule"]["policy"], "deny-b");
    assert_eq!(json["ingress"]["tier"], "Admin");
    assert_eq!(json["egress"]["tier"], "default");
}

// ---- limits and validation: field-named errors ----

fn errors(doc: &str) -> Vec<(String, String)> {
    let loaded = load_str("t.yaml", doc);
    loaded
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| (d.field.clone().unwrap_or_default(), d.message.clone()))
        .collect()
}

fn has_error(doc: &str, field: &str, words: &str) {
    let errs = errors(doc);
    assert!(
        errs.iter().any(|(f, m)| f == field && m.contains(words)),
        "want {field}: {words}; got {errs:#?}"
    );
}

#[test]
fn limits_are_enforced_with_field_names() {
    let rule = "  - action: Deny\n    from: [{namespaces: {}}]\n";
    let rules = |n: usize| format!("{ALL_NS}  ingress:\n{}", rule.repeat(n));
    assert!(errors(&cnp("ok", "Admin", 1, &rules(25))).is_empty());
    has_error(
        &cnp("x", "Admin", 1, &rules(26)),
        "spec.ingress",
        "at most 25",
    );
    let peers = |n: usize| {
        format!(
            "{ALL_NS}  egress:\n  - action: Deny\n    to: [{}]\n",
            vec!["{namespaces: {}}"; n].join(", ")
        )
    };
    assert!(errors(&cnp("ok", "Admin", 1, &peers(25))).is_empty());
    has_error(
        &cnp("x", "Admin", 1, &peers(26)),
        "spec.egress[0].to",
        "at most 25",
    );
    let nets: Vec<String> = (0..26).map(|i| format!("10.{i}.0.0/16")).collect();
    has_error(
        &cnp(
            "x",
            "Admin",
            1,
            &format!(
                "{ALL_NS}  egress:\n  - action: Deny\n    to: [{{networks: [{}]}}]\n",
                nets.join(", ")
            ),
        ),
        "spec.egress[0].to[0].networks",
        "at most 25",
    );
    has_error(
        &cnp("x", "Admin", 1001, &rules(1)),
        "spec.priority",
        "0 to 1000",
    );
    has_error(
        &cnp(
            "x",
            "Admin",
            1,
            &format!("{ALL_NS}  ingress:\n  - action: Deny\n    from: []\n"),
        ),
        "spec.ingress[0].from",
        "at least one",
    );
    has_error(
        &cnp("x", "Middle", 1, &rules(1)),
        "spec.tier",
        "Admin or Baseline",
    );
    has_error(
        &cnp(
            "x",
            "Admin",
            1,
            &format!("{ALL_NS}  ingress:\n  - action: Allow\n    from: [{{namespaces: {{}}}}]\n"),
        ),
        "spec.ingress[0].action",
        "Accept, Deny or Pass",
    );
    has_error(
        &cnp(
            "x",
            "Admin",
            1,
            "  subject: {namespaces: {}, pods: {podSelector: {}}}\n",
        ),
        "spec.subject",
        "exactly one",
    );
    has_error(
        &cnp(
            "x",
            "Admin",
            1,
            &format!(
                "{ALL_NS}  ingress:\n  - action: Deny\n    from: [{{networks: [10.0.0.0/8]}}]\n"
            ),
        ),
        "spec.ingress[0].from[0].networks",
        "egress peer only",
    );
    has_error(
        &cnp(
            "x",
            "Admin",
            1,
            &format!(
                "{ALL_NS}  egress:\n  - action: Deny\n    to: [{{networks: [10.0.0.0/8]}}]\n    protocols: [{{destinationNamedPort: http}}]\n"
            ),
        ),
        "spec.egress[0].protocols[0].destinationNamedPort",
        "no named ports",
    );
    has_error(
        &cnp(
            "x",
            "Admin",
            1,
            &format!(
                "{ALL_NS}  ingress:\n  - action: Deny\n    from: [{{namespaces: {{}}}}]\n    protocols: [{{tcp: {{destinationPort: {{number: 1}}}}, udp: {{destinationPort: {{number: 1}}}}}}]\n"
            ),
        ),
        "spec.ingress[0].protocols[0]",
        "exactly one",
    );
    has_error(
        &cnp(
            "x",
            "Admin",
            1,
            &format!(
                "{ALL_NS}  ingress:\n  - action: Deny\n    from: [{{namespaces: {{}}}}]\n    protocols: [{{tcp: {{destinationPort: {{range: {{start: 90, end: 90}}}}}}}}]\n"
            ),
        ),
        "spec.ingress[0].protocols[0].tcp.destinationPort.range",
        "less than",
    );
    has_error(
        &cnp(
            "x",
            "Admin",
            1,
            &format!(
                "{ALL_NS}  egress:\n  - action: Deny\n    to: [{{networks: [10.0.0.300/8]}}]\n"
            ),
        ),
        "spec.egress[0].to[0].networks[0]",
        "invalid CIDR",
    );
    has_error(
        &cnp(
            "x",
            "Admin",
            1,
            &format!(
                "{ALL_NS}  ingress:\n  - name: {}\n    action: Deny\n    from: [{{namespaces: {{}}}}]\n",
                "n".repeat(101)
            ),
        ),
        "spec.ingress[0].name",
        "at most 100",
    );
    // A rejected policy is not half-applied: nothing of it loads.
    let loaded = load_str("t.yaml", &cnp("x", "Admin", 1, &rules(26)));
    assert!(loaded.objects.is_empty());
}

// ---- tenants ----

fn tenant(name: &str, body: &str) -> String {
    format!(
        "apiVersion: bulkhead.io/v1alpha1\nkind: Tenant\nmetadata: {{name: {name}}}\nspec:\n{body}\n---\n"
    )
}

fn tenants_ab(a_extra: &str, b_extra: &str) -> String {
    format!(
        "{}{}",
        tenant(
            "a",
            &format!("  namespaceSelector: {{matchLabels: {{tenant: a}}}}\n{a_extra}")
        ),
        tenant(
            "b",
            &format!("  namespaceSelector: {{matchLabels: {{tenant: b}}}}\n{b_extra}")
        )
    )
}

#[test]
fn tenants_cannot_talk_across_the_fence() {
    let inv = cluster(&tenants_ab("", ""));
    // Inside a tenant, across its namespaces: allowed.
    assert!(ok(&inv, "a1/web", "a2/api", TCP, 80));
    // Across tenants, both ways: denied, at both sides.
    let v = eval(&inv, "a1/web", "b1/api", TCP, 80);
    assert!(!v.allowed);
    assert!(
        matches!(&v.egress, Side::Fenced { tenants, .. } if inv.tenants[tenants[0]].name == "a")
    );
    assert!(
        matches!(&v.ingress, Side::Fenced { tenants, .. } if inv.tenants[tenants[0]].name == "b")
    );
    assert!(!ok(&inv, "b1/api", "a2/api", TCP, 80));
    // Shared (the default for untenanted namespaces): open both ways.
    assert!(ok(&inv, "a1/web", "shared/dns", UDP, 53));
    assert!(ok(&inv, "shared/dns", "b1/api", TCP, 80));
    // Addresses that are not pods are not behind the fence.
    assert!(ok(&inv, "a1/web", "203.0.113.9", TCP, 443));
    // A host-network pod is its node's address: not behind the fence, but
    // the API guard (on by default) keeps untrusted pods from the kubelet.
    let v = eval(&inv, "a1/web", "b1/host", TCP, 10250);
    assert!(matches!(v.egress, Side::Guarded { .. }), "{v:?}");
}

#[test]
fn networkpolicy_and_admin_accept_cannot_undo_a_fence() {
    let inv = cluster(&format!(
        "{}{}{}",
        tenants_ab("", ""),
        np_allow_all_ingress("a1"),
        cnp(
            "accept-all",
            "Admin",
            0,
            "  subject: {namespaces: {}}\n  ingress:\n  - action: Accept\n    from: [{namespaces: {}}]\n  egress:\n  - action: Accept\n    to: [{namespaces: {}}]\n"
        )
    ));
    let v = eval(&inv, "b1/api", "a1/web", TCP, 80);
    assert!(!v.allowed);
    assert!(matches!(v.egress, Side::Fenced { .. }));
    assert!(matches!(v.ingress, Side::Fenced { .. }));
}

#[test]
fn exceptions_let_through_only_what_they_name() {
    let inv = cluster(&tenants_ab(
        "  allowFrom:\n  - tenant: b\n    ports: [{port: 8080}]\n",
        "  allowTo:\n  - namespace: a1\n    ports: [{port: 8080}]\n",
    ));
    // b1 -> a1 on 8080: b's allowTo and a's allowFrom both match.
    let v = eval(&inv, "b1/api", "a1/web", TCP, 8080);
    assert!(v.allowed, "{v:?}");
    assert_eq!(v.notes.len(), 2);
    // Another port: fenced.
    assert!(!ok(&inv, "b1/api", "a1/web", TCP, 80));
    // a2 is in tenant a, but b's allowTo names only namespace a1.
    let v = eval(&inv, "b1/api", "a2/api", TCP, 8080);
    assert!(matches!(v.egress, Side::Fenced { .. }) && v.ingress.allows());
    // The other way needs a's allowTo, which it does not have.
    assert!(!ok(&inv, "a1/web", "b1/api", TCP, 8080));
}

#[test]
fn exceptions_lift_the_fence_but_later_tiers_still_apply() {
    let inv = cluster(&format!(
        "{}{}",
        tenants_ab("  allowFrom: [{tenant: b}]\n", "  allowTo: [{tenant: a}]\n"),
        np_deny_all_ingress("a1")
    ));
    assert!(!ok(&inv, "b1/api", "a1/web", TCP, 80));
    assert!(ok(&inv, "b1/api", "a2/api", TCP, 80));
}

#[test]
fn cidr_and_named_port_exceptions() {
    let inv = cluster(&tenants_ab(
        "  allowFrom:\n  - cidr: 10.0.3.0/24\n    ports: [{port: http}]\n",
        "  allowTo: [{cidr: 10.0.1.1/32}]\n",
    ));
    // http is 8080 on a1/web.
    assert!(ok(&inv, "b1/api", "a1/web", TCP, 8080));
    assert!(!ok(&inv, "b1/api", "a1/web", TCP, 80));
    // a1/db (10.0.1.2) is not in b's allowTo.
    assert!(!ok(&inv, "b1/api", "a1/db", TCP, 80));
}

#[test]
fn untenanted_isolated_namespaces_are_fenced_too() {
    let config = "apiVersion: bulkhead.io/v1alpha1\nkind: BulkheadConfig\nmetadata: {name: cluster}\nspec: {untenantedNamespaces: Isolated}\n---\n";
    let inv = cluster(&format!(
        "{}{config}",
        tenants_ab("  allowTo: [{namespace: shared}]\n", "")
    ));
    // shared is isolated: nobody in or out, even with a's allowTo (shared's
    // own fence has no exceptions).
    let v = eval(&inv, "a1/web", "shared/dns", UDP, 53);
    assert!(v.egress.allows());
    assert!(matches!(v.ingress, Side::Fenced { own: true, .. }));
    assert!(!ok(&inv, "shared/dns", "b1/api", TCP, 80));
    let e = explain::explain(&inv, &q(&inv, "a1/web", "shared/dns", UDP, 53));
    assert_eq!(e.ingress.tier, "tenantFence");
    assert!(e.ingress.summary.contains("Isolated"));
}

#[test]
fn a_namespace_in_two_tenants_is_a_conflict_and_both_fences_apply() {
    let extra = format!(
        "{}{}",
        tenants_ab("", ""),
        tenant(
            "c",
            "  namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: a1}}\n  allowFrom: [{tenant: b}]\n"
        )
    );
    let text = format!("{BASE}---\n{extra}");
    let loaded = load_str("t.yaml", &text);
    let (inv, diags) = Inventory::from_loaded(&loaded);
    let conflict: Vec<_> = diags
        .iter()
        .filter(|d| d.message.contains("namespace a1"))
        .collect();
    assert_eq!(conflict.len(), 1, "{diags:#?}");
    assert!(
        conflict[0].message.contains("Tenants a and c"),
        "{}",
        conflict[0]
    );
    let reports = inv.tenant_reports();
    let a = reports.iter().find(|r| r.name == "a").unwrap();
    assert_eq!(a.namespaces, ["a1", "a2"]);
    assert_eq!(a.conflicts.len(), 1);
    assert_eq!(a.conflicts[0].other_tenants, ["c"]);
    let c = reports.iter().find(|r| r.name == "c").unwrap();
    assert_eq!(c.conflicts[0].namespace, "a1");
    // a1 is in a and c: a2 (only in a) is outside c's fence, so a1 -> a2 is
    // fenced by c — the stricter outcome.
    let v = eval(&inv, "a1/web", "a2/api", TCP, 80);
    assert!(
        matches!(&v.egress, Side::Fenced { tenants, .. } if tenants.iter().map(|&t| inv.tenants[t].name.as_str()).collect::<Vec<_>>() == ["c"])
    );
    // c's allowFrom b does not lift a's fence.
    assert!(!ok(&inv, "b1/api", "a1/web", TCP, 80));
    let e = explain::explain(&inv, &q(&inv, "a1/web", "a2/api", TCP, 80));
    assert_eq!(e.egress.fenced_by, ["c"]);
    assert!(explain::render_text(&e).contains("fenced by Tenant: c"));
}

#[test]
fn tenant_validation_names_fields() {
    has_error(
        &tenant("t", "  namespaceSelector: {}\n"),
        "spec.namespaceSelector",
        "every namespace",
    );
    has_error(
        &tenant(
            "t",
            "  namespaceSelector: {matchLabels: {a: b}}\n  allowFrom: [{tenant: x, namespace: y}]\n",
        ),
        "spec.allowFrom[0]",
        "exactly one",
    );
    has_error(
        &tenant(
            "t",
            "  namespaceSelector: {matchLabels: {a: b}}\n  allowTo: [{cidr: 10.0.0.0/33}]\n",
        ),
        "spec.allowTo[0].cidr",
        "CIDR",
    );
}

// ---- the engine against an index-free oracle of the tiers ----

mod oracle {
    use super::*;
    use bulkhead_core::cnp::{ClusterNetworkPolicy, CnpPeer};
    use bulkhead_core::model::{Direction, Object, Peer, PortSpec, UntenantedNamespaces};
    use bulkhead_core::tenant::{ExceptionPeer, Tenant};

    /// Straight from the tier order: fences, Admin by (priority, name),
    /// NetworkPolicy, Baseline, allow. Uses only the object list and the
    /// engine's NetworkPolicy tier (tested by its own oracle elsewhere) via a
    /// cluster without tiers.
    /// The cluster without tiers: the NetworkPolicy tier alone.
    pub fn plain(objects: &[Object]) -> Inventory {
        let plain: Vec<Object> = objects
            .iter()
            .filter(|o| {
                !matches!(
                    o,
                    Object::ClusterNetworkPolicy(_) | Object::Tenant(_) | Object::Config(_)
                )
            })
            .cloned()
            .chain([Object::Config(bulkhead_core::model::ClusterConfig {
                api_guard: bulkhead_core::model::ApiGuard {
                    mode: bulkhead_core::model::GuardMode::Off,
                    ..Default::default()
                },
                ..Default::default()
            })])
            .collect();
        Inventory::new(plain).0
    }

    pub fn allowed(objects: &[Object], inv: &Inventory, np_inv: &Inventory, q: &Query) -> bool {
        let np_verdict = verdict::evaluate(np_inv, q);
        let mut cnps: Vec<&ClusterNetworkPolicy> = objects
            .iter()
            .filter_map(|o| match o {
                Object::ClusterNetworkPolicy(c) => Some(c),
                _ => None,
            })
            .collect();
        cnps.sort_by_key(|c| (c.tier, c.priority, c.name.clone()));
        let tenants: Vec<&Tenant> = objects
            .iter()
            .filter_map(|o| match o {
                Object::Tenant(t) => Some(t),
                _ => None,
            })
            .collect();
        let isolated = objects.iter().any(
            |o| matches!(o, Object::Config(c) if c.untenanted == UntenantedNamespaces::Isolated),
        );
        let (sip, dip) = verdict::query_addresses(inv, q);
        let side = |dir: Direction, np: &Side| -> bool {
            let (this, other, other_ip) = match dir {
                Direction::Egress => (q.src, q.dst, dip),
                Direction::Ingress => (q.dst, q.src, sip),
            };
            // Sides the tiers do not reach: what the NetworkPolicy tier says.
            let Endpoint::Pod(p) = this else {
                return np.allows();
            };
            if matches!(np, Side::HostNetwork | Side::Implicit { .. }) {
                return true;
            }
            let pod = &inv.pods[p];
            let other_pod = match other {
                Endpoint::Pod(o) if !inv.pods[o].host_network => Some(o),
                _ => None,
            };
            let ns_labels = |n: &str| inv.namespace(n).unwrap().labels.clone();
            // 1. fences
            if let Some(o) = other_pod {
                let other_ns = &inv.pods[o].namespace;
                let in_tenants = |ns: &str| -> Vec<&Tenant> {
                    tenants
                        .iter()
                        .copied()
                        .filter(|t| t.namespaces.matches(&ns_labels(ns)))
                        .collect()
                };
                let mine = in_tenants(&pod.namespace);
                let theirs = in_tenants(other_ns);
                let other_open = theirs.is_empty() && !isolated;
                if !other_open {
                    if mine.is_empty() {
                        if isolated && pod.namespace != *other_ns {
                            return false;
                        }
                    } else {
                        for t in &mine {
                            if t.namespaces.matches(&ns_labels(other_ns)) {
                                continue;
                            }
                            let through = t.exceptions(dir).iter().any(|e| {
                                let peer_ok = match &e.peer {
                                    ExceptionPeer::Tenant(n) => tenants.iter().any(|x| {
                                        x.name == *n && x.namespaces.matches(&ns_labels(other_ns))
                                    }),
                                    ExceptionPeer::Namespace(n) => n == other_ns,
                                    ExceptionPeer::Cidr(c) => {
                                        other_ip.is_some_and(|ip| c.contains(&ip))
                                    }
                                };
                                peer_ok
                                    && (e.ports.is_empty()
                                        || e.ports.iter().any(|pm| port_ok(inv, pm, q)))
                            });
                            if !through {
                                return false;
                            }
                        }
                    }
                }
            }
            // 2.-4. tiers
            let selects = |c: &ClusterNetworkPolicy| match &c.subject {
                bulkhead_core::cnp::Subject::Namespaces(s) => s.matches(&ns_labels(&pod.namespace)),
                bulkhead_core::cnp::Subject::Pods { namespaces, pods } => {
                    namespaces.matches(&ns_labels(&pod.namespace)) && pods.matches(&pod.labels)
                }
            };
            let tier_says = |tier: Tier| -> Option<Action> {
                for c in cnps.iter().filter(|c| c.tier == tier && selects(c)) {
                    for r in c.rules(dir) {
                        let peer_ok = r.peers.iter().any(|p| match p {
                            CnpPeer::Std(Peer::Pods { namespaces, pods }) => {
                                other_pod.is_some_and(|o| {
                                    let op = &inv.pods[o];
                                    let nsok = match namespaces {
                                        bulkhead_core::model::NamespaceScope::Selected(s) => {
                                            s.matches(&ns_labels(&op.namespace))
                                        }
                                        bulkhead_core::model::NamespaceScope::PolicyNamespace => {
                                            false
                                        }
                                    };
                                    nsok && pods.matches(&op.labels)
                                })
                            }
                            CnpPeer::Std(Peer::IpBlock { cidr, .. }) => {
                                other_ip.is_some_and(|ip| cidr.contains(&ip))
                            }
                            CnpPeer::Nodes(s) => other_ip.is_some_and(|ip| {
                                inv.nodes
                                    .iter()
                                    .any(|n| s.matches(&n.labels) && n.addresses.contains(&ip))
                            }),
                        });
                        let ports_ok =
                            r.ports.is_empty() || r.ports.iter().any(|pm| port_ok(inv, pm, q));
                        if peer_ok && ports_ok {
                            return Some(r.action);
                        }
                    }
                }
                None
            };
            match tier_says(Tier::Admin) {
                Some(Action::Accept) => return true,
                Some(Action::Deny) => return false,
                _ => {}
            }
            if !matches!(np, Side::NotIsolated) {
                return np.allows();
            }
            !matches!(tier_says(Tier::Baseline), Some(Action::Deny))
        };
        side(Direction::Egress, &np_verdict.egress) && side(Direction::Ingress, &np_verdict.ingress)
    }

    fn port_ok(inv: &Inventory, pm: &bulkhead_core::model::PortMatch, q: &Query) -> bool {
        pm.protocol == q.protocol
            && match &pm.port {
                PortSpec::Any => true,
                PortSpec::Number(n) => *n == q.port,
                PortSpec::Range(a, b) => (*a..=*b).contains(&q.port),
                PortSpec::Named(name) => match q.dst {
                    Endpoint::Pod(d) if !inv.pods[d].host_network => {
                        inv.pods[d].ports.iter().any(|c| {
                            c.name.as_deref() == Some(name)
                                && c.protocol == q.protocol
                                && c.port == q.port
                        })
                    }
                    _ => false,
                },
            }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn engine_agrees_with_the_tier_oracle(c in common::arb_tiered_cluster()) {
        let (inv, _) = Inventory::new(c.objects.clone());
        let np_inv = oracle::plain(&c.objects);
        for query in common::queries(&inv) {
            let want = oracle::allowed(&c.objects, &inv, &np_inv, &query);
            prop_assert_eq!(verdict::allowed(&inv, &query), want, "{:?}: {:?}", query, verdict::evaluate(&inv, &query));
        }
    }
}
