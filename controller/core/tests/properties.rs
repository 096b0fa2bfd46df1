//! Property tests of the verdict engine: an independent, index-free oracle
//! written straight from the NetworkPolicy specification must agree with the
//! engine on random clusters, and the engine must have the algebraic
//! properties the specification implies.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;

use bulkhead_core::inventory::Inventory;
use bulkhead_core::labels::Labels;
use bulkhead_core::model::{
    Direction, NamespaceScope, NetworkPolicy, Object, Peer, Pod, PortSpec, Protocol,
};
use bulkhead_core::verdict::{self, Endpoint, Query, Side};
use common::*;
use proptest::prelude::*;

// ---- the oracle: a direct reading of the specification, no indexes ----

fn oracle(objects: &[Object], inv: &Inventory, q: &Query) -> bool {
    let pod = |e: Endpoint| match e {
        Endpoint::Pod(p) => Some(&inv.pods[p]),
        Endpoint::Ip(_) => None,
    };
    let ip = |e: Endpoint| match e {
        Endpoint::Pod(p) => inv.pods[p].ips[0],
        Endpoint::Ip(ip) => ip,
    };
    let ns_labels = |name: &str| -> Labels {
        objects
            .iter()
            .find_map(|o| match o {
                Object::Namespace(n) if n.name == name => Some(n.labels.clone()),
                _ => None,
            })
            .unwrap()
    };
    let node_ips = |p: &Pod| -> Vec<IpAddr> {
        objects
            .iter()
            .filter_map(|o| match o {
                Object::Node(n) if Some(&n.name) == p.node.as_ref() => Some(n.addresses.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    };
    let policies: Vec<&NetworkPolicy> = objects
        .iter()
        .filter_map(|o| match o {
            Object::NetworkPolicy(p) => Some(p),
            _ => None,
        })
        .collect();
    // Is `this` allowed to talk to `other` in direction `dir`?
    let side = |dir: Direction, this: Endpoint, other: Endpoint| -> bool {
        let Some(p) = pod(this) else { return true };
        if this == other || node_ips(p).contains(&ip(other)) {
            return true;
        }
        let dst = pod(q.dst);
        let mut isolated = false;
        for pol in &policies {
            if pol.namespace != p.namespace || !pol.pod_selector.matches(&p.labels) {
                continue;
            }
            let Some(rules) = pol.rules(dir) else {
                continue;
            };
            isolated = true;
            for r in rules {
                let port_ok = r.ports.is_empty()
                    || r.ports.iter().any(|pm| {
                        pm.protocol == q.protocol
                            && match &pm.port {
                                PortSpec::Any => true,
                                PortSpec::Number(n) => *n == q.port,
                                PortSpec::Range(a, b) => *a <= q.port && q.port <= *b,
                                PortSpec::Named(name) => dst
                                    .and_then(|d| {
                                        d.ports.iter().find(|c| {
                                            c.name.as_deref() == Some(name)
                                                && c.protocol == q.protocol
                                        })
                                    })
                                    .is_some_and(|c| c.port == q.port),
                            }
                    });
                let peer_ok = r.peers.is_empty()
                    || r.peers.iter().any(|peer| match peer {
                        Peer::Pods { namespaces, pods } => pod(other).is_some_and(|o| {
                            let ns_ok = match namespaces {
                                NamespaceScope::PolicyNamespace => o.namespace == pol.namespace,
                                NamespaceScope::Selected(s) => s.matches(&ns_labels(&o.namespace)),
                            };
                            ns_ok && pods.matches(&o.labels)
                        }),
                        Peer::IpBlock { cidr, except } => {
                            let a = ip(other);
                            cidr.contains(&a) && !except.iter().any(|e| e.contains(&a))
                        }
                    });
                if port_ok && peer_ok {
                    return true;
                }
            }
        }
        !isolated
    };
    side(Direction::Egress, q.src, q.dst) && side(Direction::Ingress, q.dst, q.src)
}

fn matrix(inv: &Inventory) -> Vec<bool> {
    queries(inv)
        .iter()
        .map(|q| verdict::allowed(inv, q))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// The indexed engine agrees with the specification read naively, and the
    /// fast path agrees with the full evaluation.
    #[test]
    fn engine_agrees_with_oracle(c in arb_cluster().prop_map(guard_off)) {
        let (inv, _) = Inventory::new(c.objects.clone());
        for q in queries(&inv) {
            let full = verdict::evaluate(&inv, &q);
            prop_assert_eq!(full.allowed, verdict::allowed(&inv, &q), "fast path differs for {:?}", q);
            prop_assert_eq!(full.allowed, oracle(&c.objects, &inv, &q), "oracle differs for {:?}: {:?}", q, full);
        }
    }

    /// Adding an allow rule to a policy never removes an allowed flow.
    #[test]
    fn adding_a_rule_never_removes_a_flow(c in arb_cluster(), rule in arb_rule(), pick in any::<prop::sample::Index>(), egress in any::<bool>()) {
        let (before, _) = Inventory::new(c.objects.clone());
        let mut objects = c.objects.clone();
        let candidates: Vec<usize> = objects.iter().enumerate().filter_map(|(i, o)| match o {
            Object::NetworkPolicy(p) if (if egress { p.egress.is_some() } else { p.ingress.is_some() }) => Some(i),
            _ => None,
        }).collect();
        prop_assume!(!candidates.is_empty());
        if let Object::NetworkPolicy(p) = &mut objects[*pick.get(&candidates)] {
            let rules = if egress { p.egress.as_mut() } else { p.ingress.as_mut() };
            rules.unwrap().push(rule);
        }
        let (after, _) = Inventory::new(objects);
        for (q, (was, now)) in queries(&before).iter().zip(matrix(&before).into_iter().zip(matrix(&after))) {
            prop_assert!(!was || now, "adding a rule removed {:?}", q);
        }
    }

    /// A pod no policy selects in a direction is not isolated in it, and a pod
    /// that is selected is reported as isolated by exactly those policies.
    #[test]
    fn isolation_is_selection(c in arb_cluster()) {
        let (inv, _) = Inventory::new(c.objects.clone());
        let outside: IpAddr = "192.0.2.9".parse().unwrap();
        for pod in 0..inv.pods.len() {
            for dir in [Direction::Ingress, Direction::Egress] {
                let selected: Vec<String> = inv.policies.iter()
                    .filter(|p| p.namespace == inv.pods[pod].namespace && p.pod_selector.matches(&inv.pods[pod].labels) && p.rules(dir).is_some())
                    .map(|p| p.key())
                    .collect();
                let q = match dir {
                    Direction::Egress => Query { src: Endpoint::Pod(pod), dst: Endpoint::Ip(outside), protocol: Protocol::Tcp, port: 80, family: None },
                    Direction::Ingress => Query { src: Endpoint::Ip(outside), dst: Endpoint::Pod(pod), protocol: Protocol::Tcp, port: 80, family: None },
                };
                let v = verdict::evaluate(&inv, &q);
                let side = if dir == Direction::Egress { v.egress } else { v.ingress };
                match side {
                    Side::NotIsolated => prop_assert!(selected.is_empty()),
                    Side::Allowed { isolated_by, .. } | Side::Denied { isolated_by } => {
                        let names: Vec<String> = isolated_by.iter().map(|&i| inv.policies[i].key()).collect();
                        prop_assert_eq!(names, selected);
                    }
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
        }
    }

    /// The result never depends on the order of the objects.
    #[test]
    fn order_does_not_matter(c in arb_cluster(), seed in any::<u64>()) {
        let (a, _) = Inventory::new(c.objects.clone());
        let mut shuffled = c.objects.clone();
        let mut rng = bulkhead_core::synth::Rng::new(seed);
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, rng.below(i + 1));
        }
        let (b, _) = Inventory::new(shuffled);
        prop_assert_eq!(matrix(&a), matrix(&b));
        for q in queries(&a) {
            prop_assert_eq!(verdict::evaluate(&a, &q), verdict::evaluate(&b, &q));
        }
    }
}
