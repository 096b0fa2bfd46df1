//! Incremental compilation of pod changes: for random clusters and random
//! sequences of pod changes (relabel, move, readdress, ports, host network,
//! add, remove), every node's previous ruleset with the incremental delta
//! applied (strictly, by `diff::apply`) equals a fresh compile of the new
//! inventory, and the state the compiler keeps equals it too, in the
//! compiler's own order.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;

use bulkhead_core::compile::incremental::{Incremental, Path, PodChange, normalize_delta};
use bulkhead_core::compile::{compile_all, compile_node, diff};
use bulkhead_core::inventory::Inventory;
use bulkhead_core::model::{
    ContainerPort, NetworkPolicy, Object, Pod, PortMatch, PortSpec, Protocol, Rule,
};
use bulkhead_core::quarantine::{Quarantine, Source, Target};
use bulkhead_proto::v1 as pb;
use common::*;
use proptest::prelude::*;

fn with_quarantines(c: Cluster) -> impl Strategy<Value = Cluster> {
    let source = prop_oneof![
        (prop::sample::select(NAMESPACES.to_vec()), 0usize..8).prop_map(|(ns, i)| Source::Pod {
            namespace: ns.to_owned(),
            name: format!("pod{i}")
        }),
        Just(Source::Cidr("10.0.0.0/30".parse().unwrap())),
    ];
    let target = prop_oneof![
        (0usize..8).prop_map(|i| Target::Pod(format!("pod{i}"))),
        arb_selector(&["app", "tier"]).prop_map(Target::Selector),
    ];
    let quarantine = (
        prop::sample::select(NAMESPACES.to_vec()),
        target,
        prop::collection::vec(source, 0..3),
    );
    prop::collection::vec(quarantine, 0..2).prop_map(move |qs| {
        let mut c = c.clone();
        for (i, (ns, target, allow_from)) in qs.into_iter().enumerate() {
            c.objects.push(Object::Quarantine(Quarantine {
                namespace: ns.to_owned(),
                name: format!("q{i}"),
                target,
                reason: "test".into(),
                allow_from,
                expires: None,
                captured: Vec::new(),
            }));
        }
        c
    })
}

/// Adds a policy whose rules use named ports (egress: on remote pods, by
/// pod selector, ipBlock or any peer; ingress: on the selected pods), so
/// that the `r4_`/`l4_` sets are exercised often.
fn with_named_ports(c: Cluster) -> impl Strategy<Value = Cluster> {
    let named = || {
        prop::sample::select(vec![
            PortMatch {
                protocol: Protocol::Tcp,
                port: PortSpec::Named("http".into()),
            },
            PortMatch {
                protocol: Protocol::Udp,
                port: PortSpec::Named("dns".into()),
            },
        ])
    };
    let rule = move || {
        (prop::collection::vec(arb_peer(), 0..3), named()).prop_map(|(peers, port)| Rule {
            peers,
            ports: vec![port],
        })
    };
    (
        prop::sample::select(NAMESPACES.to_vec()),
        arb_selector(&["app", "tier"]),
        prop::collection::vec(rule(), 1..3),
        prop::collection::vec(rule(), 0..2),
    )
        .prop_map(move |(ns, pod_selector, egress, ingress)| {
            let mut c = c.clone();
            c.objects.push(Object::NetworkPolicy(NetworkPolicy {
                namespace: ns.to_owned(),
                name: "named".into(),
                pod_selector,
                ingress: Some(ingress),
                egress: Some(egress),
            }));
            c
        })
}

/// A change to the pod picked by `pick` (or a new pod).
#[derive(Clone, Debug)]
enum Edit {
    Relabel(prop::sample::Index, String, String),
    Move(prop::sample::Index, u8),
    Readdress(prop::sample::Index, u8, bool),
    Ports(prop::sample::Index, bool, u16),
    HostNetwork(prop::sample::Index),
    Remove(prop::sample::Index),
    Add(u8, String, String, u8, u8),
}

fn arb_edit() -> impl Strategy<Value = Edit> {
    let idx = any::<prop::sample::Index>;
    prop_oneof![
        6 => (idx(), arb_value(), arb_value()).prop_map(|(i, a, t)| Edit::Relabel(i, a, t)),
        1 => (idx(), 0u8..3).prop_map(|(i, n)| Edit::Move(i, n)),
        1 => (idx(), 1u8..12, any::<bool>()).prop_map(|(i, a, v6)| Edit::Readdress(i, a, v6)),
        1 => (idx(), any::<bool>(), prop::sample::select(vec![80u16, 81])).prop_map(|(i, d, h)| Edit::Ports(i, d, h)),
        1 => idx().prop_map(Edit::HostNetwork),
        1 => idx().prop_map(Edit::Remove),
        2 => (0u8..4, arb_value(), arb_value(), 1u8..12, 0u8..3).prop_map(|(ns, a, t, ip, n)| Edit::Add(ns, a, t, ip, n)),
    ]
}

/// Applies `e` to `objects`; returns the change for the incremental compiler.
fn apply_edit(objects: &mut Vec<Object>, e: &Edit, serial: usize) -> Option<PodChange> {
    let pods: Vec<usize> = (0..objects.len())
        .filter(|&i| matches!(objects[i], Object::Pod(_)))
        .collect();
    let pick = |i: &prop::sample::Index| -> Option<usize> {
        (!pods.is_empty()).then(|| pods[i.index(pods.len())])
    };
    let mut edit_pod = |i: &prop::sample::Index, f: &dyn Fn(&mut Pod)| -> Option<PodChange> {
        let at = pick(i)?;
        let Object::Pod(p) = &mut objects[at] else {
            unreachable!()
        };
        f(p);
        Some(PodChange::Upsert(p.clone()))
    };
    match e {
        Edit::Relabel(i, app, tier) => edit_pod(i, &|p| {
            p.labels.insert("app".into(), app.clone());
            p.labels.insert("tier".into(), tier.clone());
        }),
        Edit::Move(i, n) => edit_pod(i, &|p| p.node = Some(format!("n{n}"))),
        Edit::Readdress(i, a, v6) => edit_pod(i, &|p| {
            let ip: IpAddr = if *v6 {
                format!("fd00::{a:x}").parse().unwrap()
            } else {
                format!("10.0.0.{a}").parse().unwrap()
            };
            p.ips = vec![ip];
        }),
        Edit::Ports(i, dns, http) => edit_pod(i, &|p| {
            p.ports = vec![ContainerPort {
                name: Some("http".into()),
                port: *http,
                protocol: Protocol::Tcp,
            }];
            if *dns {
                p.ports.push(ContainerPort {
                    name: Some("dns".into()),
                    port: 53,
                    protocol: Protocol::Udp,
                });
            }
        }),
        Edit::HostNetwork(i) => edit_pod(i, &|p| p.host_network = !p.host_network),
        Edit::Remove(i) => {
            let at = pick(i)?;
            let Object::Pod(p) = objects.remove(at) else {
                unreachable!()
            };
            Some(PodChange::Remove {
                namespace: p.namespace,
                name: p.name,
            })
        }
        Edit::Add(ns, app, tier, ip, node) => {
            let p = Pod {
                namespace: ["x", "y", "z", "w"][usize::from(*ns) % 4].to_owned(),
                name: format!("new{serial}"),
                labels: labels(&[("app", app), ("tier", tier)]),
                ips: vec![format!("10.0.0.{ip}").parse().unwrap()],
                node: Some(format!("n{node}")),
                ports: vec![ContainerPort {
                    name: Some("http".into()),
                    port: 80,
                    protocol: Protocol::Tcp,
                }],
                host_network: false,
                service_account: "default".into(),
            };
            objects.push(Object::Pod(p.clone()));
            Some(PodChange::Upsert(p))
        }
    }
}

/// The ruleset without its generation, its parts sorted.
fn canon(rs: &pb::Ruleset) -> pb::Ruleset {
    let mut rs = rs.clone();
    rs.generation = 0;
    diff::normalize(&mut rs);
    rs
}

fn strip(rs: &pb::Ruleset) -> pb::Ruleset {
    pb::Ruleset {
        generation: 0,
        ..rs.clone()
    }
}

/// Runs `edits` through an `Incremental` and checks every step against a
/// fresh compile. Returns the paths taken.
fn check(objects: Vec<Object>, edits: &[Edit]) -> Result<Vec<Path>, TestCaseError> {
    let mut objects = objects;
    let (inv, _) = Inventory::new(objects.clone());
    let mut inc = Incremental::new(inv, 1);
    // What an agent would hold: the first rulesets, then each delta applied.
    let mut held: BTreeMap<String, pb::Ruleset> = inc.rulesets().clone();
    let mut paths = Vec::new();
    for (serial, e) in edits.iter().enumerate() {
        let Some(change) = apply_edit(&mut objects, e, serial) else {
            continue;
        };
        let out = inc.pod_changed(change.clone());
        paths.push(out.path);
        let (fresh_inv, _) = Inventory::new(objects.clone());
        let fresh = compile_all(&fresh_inv, 0);
        for (node, d) in &out.deltas {
            prop_assert!(!diff::is_empty(d), "{node}: empty delta");
            let base = held.get(node);
            prop_assert!(base.is_some(), "{node}: delta for a node never sent");
            let next = diff::apply(base.unwrap(), d);
            prop_assert!(next.is_ok(), "{node}: {:?} ({:?})", next.err(), change);
            held.insert(node.clone(), next.unwrap());
        }
        for (node, rs) in &out.added {
            prop_assert!(!held.contains_key(node), "{node}: added twice");
            held.insert(node.clone(), rs.clone());
        }
        for (node, want) in &fresh {
            let got = held.get(node);
            prop_assert!(got.is_some(), "{node}: no ruleset");
            prop_assert_eq!(
                canon(got.unwrap()),
                canon(want),
                "{} after {:?} (path {:?})",
                node,
                change,
                out.path
            );
            // The kept state is the compiler's, in its order.
            prop_assert_eq!(strip(&inc.rulesets()[node]), strip(want), "kept {}", node);
        }
        for (node, got) in &held {
            if !fresh.contains_key(node) {
                // A node without pods now: the ruleset of an empty node.
                prop_assert_eq!(canon(got), canon(&compile_node(&fresh_inv, node, 0)));
            }
        }
    }
    Ok(paths)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 800, ..ProptestConfig::default() })]

    #[test]
    fn incremental_deltas_equal_a_full_recompile(
        c in prop_oneof![3 => arb_cluster(), 1 => arb_tiered_cluster()]
            .prop_flat_map(|c| (Just(c), any::<bool>(), any::<bool>()))
            .prop_flat_map(|(c, v6, q)| {
                let c = if v6 { dual_stack(c) } else { c };
                if q { with_quarantines(c).boxed() } else { Just(c).boxed() }
            })
            .prop_flat_map(|c| prop_oneof![Just(c.clone()), with_named_ports(c)]),
        guard in (0u8..3, 0u8..3),
        edits in prop::collection::vec(arb_edit(), 1..5),
    ) {
        let c = with_guard(c, guard.0, guard.1);
        check(c.objects, &edits)?;
    }
}

/// A small cluster: pods `a` (app a) and `b` (app b) on n0, `c` (app a) on
/// n1; policy `pa` selects app a, `pb` app b; `pa` allows ingress from app b
/// on the named port http, `pb` egress to app a.
fn small() -> Vec<Object> {
    let text = r#"
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
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: n0, containers: [{name: c, image: i, ports: [{name: http, containerPort: 80}]}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {nodeName: n0, containers: [{name: c, image: i, ports: [{name: http, containerPort: 81}]}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {app: a}}
spec: {nodeName: n1, containers: [{name: c, image: i, ports: [{name: http, containerPort: 80}]}]}
status: {podIP: 10.0.0.3}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: pa, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: http}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: pb, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: a}}}]}]
"#;
    let loaded = bulkhead_core::load_str("t.yaml", text);
    assert!(loaded.diagnostics.iter().all(|d| !d.is_error()));
    loaded.objects.into_iter().map(|l| l.object).collect()
}

fn pod_of(objects: &[Object], name: &str) -> Pod {
    objects
        .iter()
        .find_map(|o| match o {
            Object::Pod(p) if p.name == name => Some(p.clone()),
            _ => None,
        })
        .unwrap()
}

/// The paths: a pod moving into a group its node has takes the element
/// path; into a group its node lacks, one node is recompiled; with a tier
/// the fast path does not know, every node.
#[test]
fn paths_taken() {
    let objects = small();
    let relabel = |name: &str, app: &str| {
        let mut p = pod_of(&objects, name);
        p.labels.insert("app".into(), app.into());
        p
    };
    // b becomes app a: group pa exists on n0 (pod a), pb loses its only pod.
    let (inv, _) = Inventory::new(objects.clone());
    let mut inc = Incremental::new(inv, 1);
    let out = inc.pod_changed(PodChange::Upsert(relabel("b", "a")));
    assert_eq!(out.path, Path::Nodes(1), "{out:?}");
    // c (n1) becomes app b: n1 has no pb chain.
    let (inv, _) = Inventory::new(objects.clone());
    let mut inc = Incremental::new(inv, 1);
    let out = inc.pod_changed(PodChange::Upsert(relabel("c", "b")));
    assert_eq!(out.path, Path::Nodes(1));
    // A new app-a pod on n1 next to c: elements only, on both nodes (its
    // address joins pb's peer set on n0).
    let (inv, _) = Inventory::new(objects.clone());
    let mut inc = Incremental::new(inv, 1);
    let mut d = pod_of(&objects, "c");
    d.name = "d".into();
    d.ips = vec!["10.0.0.4".parse().unwrap()];
    let out = inc.pod_changed(PodChange::Upsert(d));
    assert_eq!(out.path, Path::Elements);
    assert_eq!(
        out.deltas.keys().collect::<Vec<_>>(),
        ["n0", "n1"],
        "{out:?}"
    );
    let n0 = &out.deltas["n0"];
    assert!(n0.add_chains.is_empty() && n0.replace_chains.is_empty() && n0.add_sets.is_empty());
    // A label change that changes nothing in any ruleset but the endpoint.
    let (inv, _) = Inventory::new(objects.clone());
    let mut inc = Incremental::new(inv, 1);
    let mut a = pod_of(&objects, "a");
    a.labels.insert("extra".into(), "1".into());
    let out = inc.pod_changed(PodChange::Upsert(a));
    assert_eq!(out.path, Path::Elements);
    assert_eq!(out.deltas.keys().collect::<Vec<_>>(), ["n0"]);
    assert!(out.deltas["n0"].set_changes.is_empty() && out.deltas["n0"].endpoints.is_some());
}

/// The element path's deltas are the very deltas a full recompile gives
/// (not only equivalent ones), up to order.
#[test]
fn element_deltas_are_the_full_recompile_diffs() {
    let objects = small();
    let (inv, _) = Inventory::new(objects.clone());
    let before = compile_all(&inv, 1);
    let mut inc = Incremental::new(inv, 1);
    let mut d = pod_of(&objects, "c");
    d.name = "d".into();
    d.ips = vec!["10.0.0.4".parse().unwrap()];
    let mut after_objects = objects.clone();
    after_objects.push(Object::Pod(d.clone()));
    let out = inc.pod_changed(PodChange::Upsert(d));
    assert_eq!(out.path, Path::Elements);
    let (after, _) = Inventory::new(after_objects);
    let after = compile_all(&after, 2);
    for (node, rs) in &after {
        let mut want = diff::diff(&before[node], rs);
        if diff::is_empty(&want) {
            assert!(!out.deltas.contains_key(node));
            continue;
        }
        let mut got = out.deltas[node].clone();
        normalize_delta(&mut got);
        normalize_delta(&mut want);
        assert_eq!(got, want, "{node}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Two inventories that differ in pods only: `pod_changes` lists the
    /// changes, and applied together under one generation to the state of
    /// the first (built from its compiled rulesets), they give the second's
    /// rulesets.
    #[test]
    fn pod_changes_between_snapshots(
        c in prop_oneof![arb_cluster(), arb_tiered_cluster()],
        guard in (0u8..3, 0u8..3),
        edits in prop::collection::vec(arb_edit(), 1..6),
    ) {
        let c = with_guard(c, guard.0, guard.1);
        let mut objects = c.objects.clone();
        for (serial, e) in edits.iter().enumerate() {
            apply_edit(&mut objects, e, serial);
        }
        let (a, _) = Inventory::new(c.objects);
        let (b, _) = Inventory::new(objects);
        let changes = bulkhead_core::compile::incremental::pod_changes(&a, &b);
        // A pod in a namespace of its own makes a namespace: not pods only.
        prop_assert_eq!(changes.is_some(), a.namespaces == b.namespaces);
        let Some(changes) = changes else { return Ok(()) };
        let mut inc = Incremental::from_compiled(a.clone(), compile_all(&a, 1), 1);
        for ch in changes {
            inc.pod_changed_at(ch, 2);
        }
        for (node, want) in compile_all(&b, 2) {
            prop_assert_eq!(strip(&inc.rulesets()[&node]), strip(&want), "{}", node);
        }
    }
}
