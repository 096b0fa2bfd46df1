//! The proof that the compiler is right: for random clusters, every
//! connection, run through the compiled rulesets of the nodes it crosses by
//! the reference interpreter, gets the verdict engine's answer. Plus: deltas
//! turn one ruleset into the next, and pod churn touches elements only.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;

use bulkhead_core::compile::interp::{CtState, Interp, Outcome, Packet};
use bulkhead_core::compile::observe::{self, LogKind};
use bulkhead_core::compile::{anti_spoof_elements, compile_all, diff};
use bulkhead_core::inventory::{Inventory, MODE_LABEL, PodId};
use bulkhead_core::model::{Object, PolicyMode};
use bulkhead_core::verdict::{self, Endpoint, Query};
use bulkhead_proto::v1 as pb;
use common::*;
use proptest::prelude::*;

const UNDERLAY: &str = "underlay";

fn veth(p: PodId) -> String {
    format!("veth{p}")
}

/// Puts namespaces in modes: `modes[i]` for namespace `i` (0: no label, 1:
/// learn, 2: monitor, 3: enforce), and the last entry picks the default mode.
fn with_modes(mut c: Cluster, modes: &[u8]) -> Cluster {
    let mut i = 0;
    for o in &mut c.objects {
        if let Object::Namespace(ns) = o {
            let v = match modes.get(i).copied().unwrap_or(0) {
                1 => Some("learn"),
                2 => Some("monitor"),
                3 => Some("enforce"),
                _ => None,
            };
            if let Some(v) = v {
                ns.labels.insert(MODE_LABEL.to_owned(), v.to_owned());
            }
            i += 1;
        }
    }
    config_mut(&mut c).default_mode = match modes.last().copied().unwrap_or(0) {
        1 => PolicyMode::Learn,
        2 => PolicyMode::Monitor,
        _ => PolicyMode::Enforce,
    };
    c
}

/// Adds up to two Quarantines (by name or by selector, with pod and CIDR
/// forensics sources), so that the quarantine chain is exercised.
fn with_quarantines(c: Cluster) -> impl Strategy<Value = Cluster> {
    use bulkhead_core::quarantine::{Quarantine, Source, Target};
    let source = prop_oneof![
        (prop::sample::select(NAMESPACES.to_vec()), 0usize..6).prop_map(|(ns, i)| Source::Pod {
            namespace: ns.to_owned(),
            name: format!("pod{i}")
        }),
        prop::sample::select(vec![
            "10.0.0.0/30",
            "192.168.0.0/24",
            "192.0.2.0/24",
            "fd00::/124",
            "10.0.0.4/32"
        ])
        .prop_map(|c| Source::Cidr(c.parse().unwrap())),
    ];
    let target = prop_oneof![
        (0usize..6).prop_map(|i| Target::Pod(format!("pod{i}"))),
        arb_selector(&["app", "tier"]).prop_map(Target::Selector),
    ];
    let quarantine = (
        prop::sample::select(NAMESPACES.to_vec()),
        target,
        prop::collection::vec(source, 0..3),
        prop::collection::vec(0usize..6, 0..2),
    );
    prop::collection::vec(quarantine, 0..3).prop_map(move |qs| {
        let mut c = c.clone();
        for (i, (ns, target, allow_from, captured)) in qs.into_iter().enumerate() {
            c.objects.push(Object::Quarantine(Quarantine {
                namespace: ns.to_owned(),
                name: format!("q{i}"),
                target,
                reason: "test".into(),
                allow_from,
                expires: None,
                captured: captured.into_iter().map(|p| format!("pod{p}")).collect(),
            }));
        }
        c
    })
}

struct Nodes<'r> {
    interps: BTreeMap<String, Interp<'r>>,
}

fn nodes<'r>(inv: &Inventory, rulesets: &'r BTreeMap<String, pb::Ruleset>) -> Nodes<'r> {
    let mut interps = BTreeMap::new();
    for (name, rs) in rulesets {
        let mut it = Interp::new(rs).unwrap();
        let links: Vec<(String, Vec<IpAddr>)> = (0..inv.pods.len())
            .filter(|&p| inv.pods[p].node.as_deref() == Some(name.as_str()))
            .map(|p| (veth(p), inv.pods[p].ips.clone()))
            .collect();
        for (set, elements) in anti_spoof_elements(&links) {
            let set: &'r str = &rs.sets.iter().find(|s| s.name == set).unwrap().name;
            it.fill(set, &elements).unwrap();
        }
        interps.insert(name.clone(), it);
    }
    Nodes { interps }
}

fn hook(
    n: &Nodes<'_>,
    hook: pb::HookType,
    node: &str,
    iif: &str,
    s: IpAddr,
    d: IpAddr,
    q: &Query,
) -> Outcome {
    trace(n, hook, node, iif, s, d, q).outcome
}

fn trace(
    n: &Nodes<'_>,
    hook: pb::HookType,
    node: &str,
    iif: &str,
    s: IpAddr,
    d: IpAddr,
    q: &Query,
) -> bulkhead_core::compile::interp::Trace {
    let p = Packet {
        iif: iif.to_owned(),
        saddr: s,
        daddr: d,
        protocol: q.protocol,
        dport: q.port,
        ct: CtState::New,
    };
    n.interps[node].run(hook, &p).unwrap()
}

/// What happens to the first packet of a connection.
enum Path {
    /// It crosses forward hooks, which accept it or not, and log it.
    Forward(bool, Vec<String>),
    /// It goes between a pod and its own node, through the node's input or
    /// output hook (these are not observed).
    Host(bool),
    /// It never crosses a hook: it stays in a pod. The engine must allow it.
    Local,
    /// There is no such packet: an end has no address of the other's family.
    Impossible,
}

fn dataplane(inv: &Inventory, n: &Nodes<'_>, q: &Query) -> Path {
    let (Some(s), Some(d)) = verdict::addresses(inv, q.src, q.dst) else {
        return Path::Impossible;
    };
    if s.is_ipv4() != d.is_ipv4() {
        return Path::Impossible;
    }
    let node_of = |e: Endpoint| match e {
        Endpoint::Pod(p) => inv.pods[p].node.clone(),
        Endpoint::Ip(_) => None,
    };
    let is_node_addr = |node: &Option<String>, ip: IpAddr| {
        node.as_ref()
            .and_then(|n| inv.nodes.iter().find(|x| &x.name == n))
            .is_some_and(|x| x.addresses.contains(&ip))
    };
    let (sn, dn) = (node_of(q.src), node_of(q.dst));
    if q.src == q.dst {
        return Path::Local;
    }
    // Between a pod and its own node: the input hook (pod to node) or the
    // output hook (node to pod) of that node.
    if let (Endpoint::Pod(sp), Some(node)) = (q.src, &sn)
        && is_node_addr(&sn, d)
    {
        return Path::Host(
            hook(n, pb::HookType::Input, node, &veth(sp), s, d, q) == Outcome::Accept,
        );
    }
    if let Some(node) = &dn
        && is_node_addr(&dn, s)
    {
        return Path::Host(hook(n, pb::HookType::Output, node, "", s, d, q) == Outcome::Accept);
    }
    let mut ok = true;
    let mut logged = Vec::new();
    if let (Endpoint::Pod(sp), Some(sn)) = (q.src, &sn) {
        let t = trace(n, pb::HookType::Forward, sn, &veth(sp), s, d, q);
        ok &= t.outcome == Outcome::Accept;
        logged.extend(t.logged);
    }
    if let Some(dn) = &dn
        && sn.as_ref() != Some(dn)
        && ok
    {
        let t = trace(n, pb::HookType::Forward, dn, UNDERLAY, s, d, q);
        ok &= t.outcome == Outcome::Accept;
        logged.extend(t.logged);
    }
    Path::Forward(ok, logged)
}

fn all_queries(inv: &Inventory) -> Vec<Query> {
    let mut qs = queries(inv);
    let v6: IpAddr = "fd00::99".parse().unwrap();
    for p in 0..inv.pods.len() {
        for (src, dst) in [
            (Endpoint::Pod(p), Endpoint::Ip(v6)),
            (Endpoint::Ip(v6), Endpoint::Pod(p)),
        ] {
            for port in PORTS {
                qs.push(Query {
                    src,
                    dst,
                    protocol: bulkhead_core::Protocol::Tcp,
                    port,
                    family: None,
                });
            }
        }
    }
    qs
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn compiled_rulesets_agree_with_the_engine(
        c in prop_oneof![arb_cluster(), arb_tiered_cluster()].prop_map(dual_stack).prop_flat_map(with_quarantines),
        modes in prop::collection::vec(0u8..4, 4),
        guard in (0u8..3, 0u8..3),
    ) {
        let c = with_guard(with_modes(c, &modes), guard.0, guard.1);
        let (inv, _) = Inventory::new(c.objects.clone());
        let rulesets = compile_all(&inv, 1);
        let n = nodes(&inv, &rulesets);
        for q in all_queries(&inv) {
            let engine = verdict::passes(&inv, &q);
            match dataplane(&inv, &n, &q) {
                Path::Forward(dp, logged) => {
                    let v = verdict::evaluate(&inv, &q);
                    prop_assert_eq!(dp, engine, "{:?}: engine {:?}", q, v);
                    prop_assert_eq!(!v.dropped, engine);
                    // Observation: the packet left records, and together
                    // they name the engine's outcome.
                    let records: Vec<(LogKind, &str)> = logged
                        .iter()
                        .map(|l| observe::parse_prefix(l).unwrap())
                        .collect();
                    let merged = observe::merge(records.iter().copied());
                    prop_assert!(merged.is_some(), "{:?} crossed a node unobserved", q);
                    let (kind, _) = merged.unwrap();
                    prop_assert_eq!(kind.outcome(), v.outcome(), "{:?}: records {:?}, engine {:?}", q, logged, v);
                }
                Path::Host(dp) => prop_assert_eq!(dp, engine, "{:?}: engine {:?}", q, verdict::evaluate(&inv, &q)),
                Path::Local => prop_assert!(verdict::allowed(&inv, &q), "{:?} never reaches a forward hook but the engine denies it", q),
                Path::Impossible => {}
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Applying `diff(a, b)` to `a` gives `b`.
    #[test]
    fn deltas_round_trip(a in arb_cluster(), b in arb_cluster()) {
        let (ia, _) = Inventory::new(a.objects);
        let (ib, _) = Inventory::new(b.objects);
        let ra = compile_all(&ia, 1);
        let rb = compile_all(&ib, 2);
        for node in ["n0", "n1"] {
            let d = diff::diff(&ra[node], &rb[node]);
            let mut got = diff::apply(&ra[node], &d).unwrap();
            let mut want = rb[node].clone();
            diff::normalize(&mut got);
            diff::normalize(&mut want);
            prop_assert_eq!(got, want);
            // And a delta on the wrong base is refused.
            prop_assert!(diff::apply(&rb[node], &d).is_err());
        }
    }

    /// A new pod like an existing one, or a pod going away, changes set and
    /// map elements only: no chain is added, replaced or deleted.
    #[test]
    fn pod_churn_changes_elements_only(c in arb_cluster(), pick in any::<prop::sample::Index>()) {
        let (before, _) = Inventory::new(c.objects.clone());
        let pods: Vec<&Object> = c.objects.iter().filter(|o| matches!(o, Object::Pod(_))).collect();
        let Object::Pod(model) = pick.get(&pods) else { unreachable!() };
        let mut twin = (*model).clone();
        twin.name = format!("{}-twin", twin.name);
        twin.ips = vec!["10.0.0.200".parse().unwrap()];
        let mut objects = c.objects.clone();
        objects.push(Object::Pod(twin));
        let (after, _) = Inventory::new(objects);
        let ra = compile_all(&before, 1);
        let rb = compile_all(&after, 2);
        for node in ["n0", "n1"] {
            for d in [diff::diff(&ra[node], &rb[node]), diff::diff(&rb[node], &ra[node])] {
                prop_assert!(d.add_chains.is_empty() && d.replace_chains.is_empty() && d.delete_chains.is_empty(),
                    "pod churn rewrote chains: {:?}", d);
                prop_assert!(d.add_sets.is_empty() && d.delete_sets.is_empty(), "pod churn changed sets: {:?}", d);
            }
        }
    }
}

#[test]
fn spoofed_sources_are_dropped() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec: {nodeName: n0, containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x}
spec: {nodeName: n0, containers: [{name: c, image: i}]}
status: {podIPs: [{ip: 10.0.0.2}, {ip: "fd00::2"}]}
---
apiVersion: v1
kind: Node
metadata: {name: n0}
status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}
---
apiVersion: bulkhead.io/v1alpha1
kind: BulkheadConfig
metadata: {name: cluster}
spec: {apiGuard: {mode: "Off"}}
"#;
    let loaded = bulkhead_core::load_str("t.yaml", yaml);
    let (inv, _) = Inventory::from_loaded(&loaded);
    let rs = compile_all(&inv, 1);
    let n = nodes(&inv, &rs);
    let pkt = |iif: &str, s: &str, d: &str| Packet {
        iif: iif.into(),
        saddr: s.parse().unwrap(),
        daddr: d.parse().unwrap(),
        protocol: bulkhead_core::Protocol::Tcp,
        dport: 80,
        ct: CtState::New,
    };
    let a = inv.pod_id("x", "a").unwrap();
    let b = inv.pod_id("x", "b").unwrap();
    let it = &n.interps["n0"];
    let run = |h, p: &Packet| it.run(h, p).unwrap().outcome;
    // Its own address passes; another pod's, or an invented one, does not.
    assert_eq!(
        run(
            pb::HookType::Forward,
            &pkt(&veth(a), "10.0.0.1", "10.0.0.2")
        ),
        Outcome::Accept
    );
    assert_eq!(
        run(
            pb::HookType::Forward,
            &pkt(&veth(a), "10.0.0.2", "10.0.0.9")
        ),
        Outcome::Drop
    );
    assert_eq!(
        run(
            pb::HookType::Forward,
            &pkt(&veth(a), "10.9.9.9", "10.0.0.2")
        ),
        Outcome::Drop
    );
    assert_eq!(
        run(
            pb::HookType::Input,
            &pkt(&veth(a), "10.0.0.2", "192.168.0.1")
        ),
        Outcome::Drop
    );
    assert_eq!(
        run(
            pb::HookType::Input,
            &pkt(&veth(a), "10.0.0.1", "192.168.0.1")
        ),
        Outcome::Accept
    );
    // IPv6: its own address and link-local pass, another address does not.
    assert_eq!(
        run(pb::HookType::Forward, &pkt(&veth(b), "fd00::2", "fd00::9")),
        Outcome::Accept
    );
    assert_eq!(
        run(pb::HookType::Forward, &pkt(&veth(b), "fd00::3", "fd00::9")),
        Outcome::Drop
    );
    assert_eq!(
        run(pb::HookType::Input, &pkt(&veth(b), "fe80::1234", "fe80::1")),
        Outcome::Accept
    );
    // A pod with no IPv6 address cannot send IPv6 from a global address.
    assert_eq!(
        run(pb::HookType::Forward, &pkt(&veth(a), "fd00::1", "fd00::2")),
        Outcome::Drop
    );
    // Traffic from the underlay is not a pod's and is not checked for spoofing.
    assert_eq!(
        run(
            pb::HookType::Forward,
            &pkt(UNDERLAY, "10.0.0.2", "10.0.0.1")
        ),
        Outcome::Accept
    );
}

#[test]
fn rule_count_does_not_grow_with_pods() {
    use bulkhead_core::synth::{Shape, cluster_yaml};
    let yaml = cluster_yaml(&Shape {
        namespaces: 5,
        pods: 2000,
        policies: 50,
        nodes: 2,
        seed: 1,
    });
    let loaded = bulkhead_core::load_str("s.yaml", &yaml);
    assert!(loaded.diagnostics.iter().all(|d| !d.is_error()));
    let objects: Vec<Object> = loaded.objects.into_iter().map(|l| l.object).collect();
    // Three times the pods, with the labels, nodes and ports pods already
    // have: only addresses are new.
    let mut more = objects.clone();
    let mut n: u32 = 0;
    for o in &objects {
        if let Object::Pod(p) = o {
            for copy in 0..2 {
                let mut q = p.clone();
                q.name = format!("{}-copy{copy}", q.name);
                n += 1;
                q.ips = vec![IpAddr::V4(std::net::Ipv4Addr::from(0x0a80_0000 + n))];
                more.push(Object::Pod(q));
            }
        }
    }
    let count = |objects: Vec<Object>| {
        let (inv, _) = Inventory::new(objects);
        let rs = compile_all(&inv, 1);
        let rules: usize = rs["node-0"].chains.iter().map(|c| c.rules.len()).sum();
        let elements: usize = rs["node-0"].sets.iter().map(|s| s.elements.len()).sum();
        (rules, elements)
    };
    let (r1, e1) = count(objects);
    let (r2, e2) = count(more);
    assert_eq!(r1, r2, "rules grew with pods");
    assert!(e2 > 2 * e1, "elements should grow with pods: {e1} -> {e2}");
}

/// A synthetic cluster with every kind of tier: the compiled rulesets agree
/// with the engine on a sample of connections, and tripling the pods adds
/// set elements, not rules.
#[test]
fn synthetic_tiers_agree_and_rules_do_not_grow_with_pods() {
    use bulkhead_core::synth::{Shape, Tiers, cluster_yaml, tiers_yaml};
    let shape = Shape {
        namespaces: 10,
        pods: 120,
        policies: 20,
        nodes: 2,
        seed: 3,
    };
    let tiers = Tiers {
        cluster_policies: 12,
        tenants: 4,
    };
    let yaml = format!("{}{}", cluster_yaml(&shape), tiers_yaml(&shape, &tiers));
    let loaded = bulkhead_core::load_str("s.yaml", &yaml);
    assert!(loaded.diagnostics.iter().all(|d| !d.is_error()));
    let objects: Vec<Object> = loaded.objects.into_iter().map(|l| l.object).collect();
    let (inv, _) = Inventory::new(objects.clone());
    assert!(!inv.cnps.is_empty() && !inv.tenants.is_empty());
    let rulesets = compile_all(&inv, 1);
    let n = nodes(&inv, &rulesets);
    let mut checked = 0;
    let mut denied = 0;
    let ports = [53u16, 80, 443, 5432, 8080, 9100, 10250, 31000];
    for s in (0..inv.pods.len()).step_by(7) {
        for d in (0..inv.pods.len()).step_by(5) {
            for (i, port) in ports.iter().enumerate() {
                let protocol = if i % 3 == 0 {
                    bulkhead_core::Protocol::Udp
                } else {
                    bulkhead_core::Protocol::Tcp
                };
                let q = Query::new(Endpoint::Pod(s), Endpoint::Pod(d), protocol, *port);
                let engine = verdict::allowed(&inv, &q);
                if let Path::Forward(dp, _) = dataplane(&inv, &n, &q) {
                    assert_eq!(dp, engine, "{q:?}: {:?}", verdict::evaluate(&inv, &q));
                    checked += 1;
                    denied += usize::from(!engine);
                }
            }
        }
        for ip in ["8.8.8.8", "192.168.0.2"] {
            let q = Query::new(
                Endpoint::Pod(s),
                Endpoint::Ip(ip.parse().unwrap()),
                bulkhead_core::Protocol::Tcp,
                443,
            );
            if let Path::Forward(dp, _) = dataplane(&inv, &n, &q) {
                assert_eq!(dp, verdict::allowed(&inv, &q), "{q:?}");
            }
        }
    }
    assert!(
        checked > 500 && denied > 0,
        "{checked} checked, {denied} denied"
    );

    let mut more = objects.clone();
    let mut k: u32 = 0;
    for o in &objects {
        if let Object::Pod(p) = o {
            for copy in 0..2 {
                let mut q = p.clone();
                q.name = format!("{}-copy{copy}", q.name);
                k += 1;
                q.ips = vec![IpAddr::V4(std::net::Ipv4Addr::from(0x0a80_0000 + k))];
                more.push(Object::Pod(q));
            }
        }
    }
    let rules = |objects: Vec<Object>| {
        let (inv, _) = Inventory::new(objects);
        let rs = compile_all(&inv, 1);
        rs["node-0"]
            .chains
            .iter()
            .map(|c| c.rules.len())
            .sum::<usize>()
    };
    assert_eq!(rules(objects), rules(more), "rules grew with pods");
}
