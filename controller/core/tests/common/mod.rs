//! Random clusters for property tests, shared by the test files.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};

use bulkhead_core::inventory::Inventory;
use bulkhead_core::labels::{Labels, Op, Requirement, Selector};
use bulkhead_core::model::{
    ContainerPort, Namespace, NamespaceScope, NetworkPolicy, Node, Object, Peer, Pod, PortMatch,
    PortSpec, Protocol, Rule,
};
use bulkhead_core::verdict::{Endpoint, Query};
use ipnet::IpNet;
use proptest::prelude::*;

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PORTS: [u16; 3] = [53, 80, 81];

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn arb_value() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_owned)
}

pub fn arb_requirement(keys: &'static [&'static str]) -> impl Strategy<Value = Requirement> {
    let key = prop::sample::select(keys.to_vec()).prop_map(str::to_owned);
    let op = prop_oneof![
        arb_value().prop_map(Op::Equals),
        prop::collection::vec(arb_value(), 1..3).prop_map(Op::In),
        prop::collection::vec(arb_value(), 1..3).prop_map(Op::NotIn),
        Just(Op::Exists),
        Just(Op::DoesNotExist),
    ];
    (key, op).prop_map(|(key, op)| Requirement { key, op })
}

pub fn arb_selector(keys: &'static [&'static str]) -> impl Strategy<Value = Selector> {
    prop::collection::vec(arb_requirement(keys), 0..3)
        .prop_map(|requirements| Selector { requirements })
}

pub fn arb_peer() -> impl Strategy<Value = Peer> {
    let pods = (
        prop_oneof![
            Just(NamespaceScope::PolicyNamespace),
            arb_selector(&["team"]).prop_map(NamespaceScope::Selected),
        ],
        arb_selector(&["app", "tier"]),
    )
        .prop_map(|(namespaces, pods)| Peer::Pods { namespaces, pods });
    let block = (
        prop::sample::select(vec![24u8, 28, 29, 30]),
        any::<bool>(),
        0u8..8,
    )
        .prop_map(|(len, with_except, at)| {
            let cidr: IpNet = format!("10.0.0.0/{len}").parse().unwrap();
            let except = if with_except {
                vec![format!("10.0.0.{}/31", at * 2).parse::<IpNet>().unwrap()]
                    .into_iter()
                    .filter(|e| cidr.contains(e) && e.prefix_len() > cidr.prefix_len())
                    .collect()
            } else {
                vec![]
            };
            Peer::IpBlock { cidr, except }
        });
    let external = Just(Peer::IpBlock {
        cidr: "192.0.2.0/24".parse().unwrap(),
        except: vec![],
    });
    prop_oneof![4 => pods, 2 => block, 1 => external]
}

pub fn arb_protocol() -> impl Strategy<Value = Protocol> {
    prop::sample::select(Protocol::ALL.to_vec())
}

pub fn arb_port() -> impl Strategy<Value = PortMatch> {
    let spec = prop_oneof![
        Just(PortSpec::Any),
        prop::sample::select(PORTS.to_vec()).prop_map(PortSpec::Number),
        Just(PortSpec::Range(80, 81)),
        prop::sample::select(vec!["http", "dns"]).prop_map(|n| PortSpec::Named(n.to_owned())),
    ];
    (arb_protocol(), spec).prop_map(|(protocol, port)| PortMatch { protocol, port })
}

pub fn arb_rule() -> impl Strategy<Value = Rule> {
    (
        prop::collection::vec(arb_peer(), 0..3),
        prop::collection::vec(arb_port(), 0..3),
    )
        .prop_map(|(peers, ports)| Rule { peers, ports })
}

pub fn arb_rules() -> impl Strategy<Value = Option<Vec<Rule>>> {
    prop::option::of(prop::collection::vec(arb_rule(), 0..3))
}

pub fn arb_policy(i: usize) -> impl Strategy<Value = NetworkPolicy> {
    (
        prop::sample::select(NAMESPACES.to_vec()),
        arb_selector(&["app", "tier"]),
        arb_rules(),
        arb_rules(),
    )
        .prop_map(move |(ns, pod_selector, ingress, egress)| NetworkPolicy {
            namespace: ns.to_owned(),
            name: format!("p{i}"),
            pod_selector,
            ingress,
            egress,
        })
}

pub fn arb_pod(i: usize) -> impl Strategy<Value = Pod> {
    (
        prop::sample::select(NAMESPACES.to_vec()),
        arb_value(),
        arb_value(),
        any::<bool>(),
        prop::sample::select(vec![80u16, 81]),
    )
        .prop_map(move |(ns, app, tier, dns, http)| {
            let mut ports = vec![ContainerPort {
                name: Some("http".into()),
                port: http,
                protocol: Protocol::Tcp,
            }];
            if dns {
                ports.push(ContainerPort {
                    name: Some("dns".into()),
                    port: 53,
                    protocol: Protocol::Udp,
                });
            }
            Pod {
                namespace: ns.to_owned(),
                name: format!("pod{i}"),
                labels: labels(&[("app", &app), ("tier", &tier)]),
                ips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1))],
                node: Some(format!("n{}", i % 2)),
                ports,
                host_network: false,
                service_account: "default".into(),
            }
        })
}

/// The inventory of `text`, which must load without errors.
pub fn load_clean(text: &str) -> Inventory {
    let loaded = bulkhead_core::load_str("t.yaml", text);
    let errors: Vec<String> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    Inventory::from_loaded(&loaded).0
}

#[derive(Clone, Debug)]
pub struct Cluster {
    pub objects: Vec<Object>,
}

pub fn arb_cluster() -> impl Strategy<Value = Cluster> {
    let pods: Vec<_> = (0..6).map(arb_pod).collect();
    let policies = (0usize..6).prop_flat_map(|n| (0..n).map(arb_policy).collect::<Vec<_>>());
    let teams = prop::collection::vec(prop::sample::select(vec!["a", "b"]), 3);
    (pods, policies, teams).prop_map(|(pods, policies, teams)| {
        let mut objects: Vec<Object> = NAMESPACES
            .iter()
            .zip(teams)
            .map(|(ns, team)| Object::Namespace(Namespace::new(ns, labels(&[("team", team)]))))
            .collect();
        for n in 0..2u8 {
            objects.push(Object::Node(Node {
                name: format!("n{n}"),
                labels: Labels::new(),
                addresses: vec![IpAddr::V4(Ipv4Addr::new(192, 168, 0, n + 1))],
            }));
        }
        objects.extend(pods.into_iter().map(Object::Pod));
        objects.extend(policies.into_iter().map(Object::NetworkPolicy));
        Cluster { objects }
    })
}

/// Every endpoint worth asking about: the pods, the nodes, an address inside
/// the pod range that no pod owns, and one outside the cluster.
pub fn endpoints(inv: &Inventory) -> Vec<Endpoint> {
    let mut e: Vec<Endpoint> = (0..inv.pods.len()).map(Endpoint::Pod).collect();
    // 10.96.0.1 and 192.0.2.9 are the API server's VIP and endpoint in
    // clusters `with_guard` made; 169.254.169.254 is the metadata address.
    for ip in [
        "192.168.0.1",
        "10.0.0.7",
        "192.0.2.9",
        "10.96.0.1",
        "169.254.169.254",
    ] {
        e.push(Endpoint::Ip(ip.parse().unwrap()));
    }
    e
}

pub fn queries(inv: &Inventory) -> Vec<Query> {
    let eps = endpoints(inv);
    let mut out = Vec::new();
    for &src in &eps {
        for &dst in &eps {
            if matches!((src, dst), (Endpoint::Ip(_), Endpoint::Ip(_))) {
                continue;
            }
            for protocol in Protocol::ALL {
                for port in PORTS {
                    out.push(Query {
                        src,
                        dst,
                        protocol,
                        port,
                        family: None,
                    });
                }
            }
        }
    }
    out
}

// ---- tiers: ClusterNetworkPolicies and Tenants ----

use bulkhead_core::cnp::{Action, ClusterNetworkPolicy, CnpPeer, CnpRule, Subject, Tier};
use bulkhead_core::model::{
    ApiServer, ClusterConfig, GuardMode, Kind, TrustedPods, UntenantedNamespaces,
};
use bulkhead_core::tenant::{Exception, ExceptionPeer, Tenant};

pub fn arb_action() -> impl Strategy<Value = Action> {
    prop::sample::select(vec![Action::Accept, Action::Deny, Action::Pass])
}

pub fn arb_cnp_peer(egress: bool) -> BoxedStrategy<CnpPeer> {
    let pods = (arb_selector(&["team"]), arb_selector(&["app", "tier"])).prop_map(|(ns, pods)| {
        CnpPeer::Std(Peer::Pods {
            namespaces: NamespaceScope::Selected(ns),
            pods,
        })
    });
    if !egress {
        return pods.boxed();
    }
    let network = prop::sample::select(vec![
        "10.0.0.0/29",
        "10.0.0.4/30",
        "192.0.2.0/24",
        "192.168.0.0/31",
        "0.0.0.0/0",
    ])
    .prop_map(|c| {
        CnpPeer::Std(Peer::IpBlock {
            cidr: c.parse().unwrap(),
            except: vec![],
        })
    });
    let nodes = arb_selector(&["zone"]).prop_map(CnpPeer::Nodes);
    prop_oneof![3 => pods, 2 => network, 1 => nodes].boxed()
}

pub fn arb_cnp_rule(egress: bool) -> impl Strategy<Value = CnpRule> {
    (
        arb_action(),
        prop::collection::vec(arb_cnp_peer(egress), 1..3),
        prop::collection::vec(arb_port(), 0..3),
    )
        .prop_map(|(action, peers, ports)| CnpRule {
            name: None,
            action,
            peers,
            ports,
        })
}

pub fn arb_cnp(i: usize) -> impl Strategy<Value = ClusterNetworkPolicy> {
    let subject = prop_oneof![
        arb_selector(&["team"]).prop_map(Subject::Namespaces),
        (arb_selector(&["team"]), arb_selector(&["app", "tier"]))
            .prop_map(|(namespaces, pods)| Subject::Pods { namespaces, pods }),
    ];
    (
        prop::sample::select(vec![Tier::Admin, Tier::Baseline]),
        prop::sample::select(vec![0u16, 10, 10, 1000]),
        subject,
        prop::collection::vec(arb_cnp_rule(false), 0..3),
        prop::collection::vec(arb_cnp_rule(true), 0..3),
    )
        .prop_map(
            move |(tier, priority, subject, ingress, egress)| ClusterNetworkPolicy {
                name: format!("c{i}"),
                tier,
                priority,
                subject,
                ingress,
                egress,
            },
        )
}

pub fn arb_exception() -> impl Strategy<Value = Exception> {
    let peer = prop_oneof![
        prop::sample::select(vec!["t0", "t1", "t9"]).prop_map(|t| ExceptionPeer::Tenant(t.into())),
        prop::sample::select(NAMESPACES.to_vec()).prop_map(|n| ExceptionPeer::Namespace(n.into())),
        prop::sample::select(vec!["10.0.0.0/30", "10.0.0.0/24"])
            .prop_map(|c| ExceptionPeer::Cidr(c.parse().unwrap())),
    ];
    (peer, prop::collection::vec(arb_port(), 0..2))
        .prop_map(|(peer, ports)| Exception { peer, ports })
}

pub fn arb_tenant(i: usize) -> impl Strategy<Value = Tenant> {
    let namespaces = prop_oneof![
        arb_value().prop_map(|_| Selector::from_pairs([("team", "a")])),
        prop::sample::select(NAMESPACES.to_vec())
            .prop_map(|n| Selector::from_pairs([("kubernetes.io/metadata.name", n)])),
    ];
    (
        namespaces,
        prop::collection::vec(arb_exception(), 0..3),
        prop::collection::vec(arb_exception(), 0..3),
    )
        .prop_map(move |(namespaces, allow_from, allow_to)| Tenant {
            name: format!("t{i}"),
            namespaces,
            allow_from,
            allow_to,
        })
}

/// A random cluster with ClusterNetworkPolicies, Tenants (conflicts
/// included) and either setting for untenanted namespaces; nodes carry a
/// `zone` label for `nodes` peers.
pub fn arb_tiered_cluster() -> impl Strategy<Value = Cluster> {
    let cnps = (0usize..5).prop_flat_map(|n| (0..n).map(arb_cnp).collect::<Vec<_>>());
    let tenants = (0usize..3).prop_flat_map(|n| (0..n).map(arb_tenant).collect::<Vec<_>>());
    (arb_cluster(), cnps, tenants, any::<bool>()).prop_map(|(mut c, cnps, tenants, isolated)| {
        for o in &mut c.objects {
            if let Object::Node(n) = o {
                let zone = if n.name == "n0" { "a" } else { "b" };
                n.labels = labels(&[("zone", zone)]);
            }
        }
        c.objects
            .extend(cnps.into_iter().map(Object::ClusterNetworkPolicy));
        c.objects.extend(tenants.into_iter().map(Object::Tenant));
        let config = config_mut(&mut c);
        config.untenanted = if isolated {
            UntenantedNamespaces::Isolated
        } else {
            UntenantedNamespaces::Shared
        };
        // The tiers alone: the API guard has its own tests.
        config.api_guard.mode = GuardMode::Off;
        c
    })
}

/// The cluster's `BulkheadConfig`, added when there is none.
pub fn config_mut(c: &mut Cluster) -> &mut ClusterConfig {
    if !c.objects.iter().any(|o| matches!(o, Object::Config(_))) {
        c.objects.push(Object::Config(ClusterConfig::default()));
    }
    c.objects
        .iter_mut()
        .rev()
        .find_map(|o| match o {
            Object::Config(c) => Some(c),
            _ => None,
        })
        .unwrap()
}

/// The cluster without the API guard: plain NetworkPolicy semantics.
pub fn guard_off(mut c: Cluster) -> Cluster {
    config_mut(&mut c).api_guard.mode = GuardMode::Off;
    c
}

/// The API guard in `mode` (0 off, 1 monitor, 2 enforce) trusting `trusted`
/// (0: the default, kube-system, so no pod here; 1: namespaces of team a;
/// 2: pods with app a), with the API server at VIP 10.96.0.1 and endpoint
/// 192.0.2.9.
pub fn with_guard(mut c: Cluster, mode: u8, trusted: u8) -> Cluster {
    let config = config_mut(&mut c);
    config.api_guard.mode = match mode {
        0 => GuardMode::Off,
        1 => GuardMode::Monitor,
        _ => GuardMode::Enforce,
    };
    let entry = |ns: Option<Selector>, pod: Option<Selector>| TrustedPods {
        namespace_selector: ns,
        pod_selector: pod,
        service_accounts: Vec::new(),
    };
    match trusted {
        0 => {}
        1 => {
            config.api_guard.trusted =
                vec![entry(Some(Selector::from_pairs([("team", "a")])), None)]
        }
        _ => {
            config.api_guard.trusted = vec![entry(None, Some(Selector::from_pairs([("app", "a")])))]
        }
    }
    for (kind, ip) in [
        (Kind::Service, "10.96.0.1"),
        (Kind::EndpointSlice, "192.0.2.9"),
    ] {
        c.objects.push(Object::ApiServer(ApiServer {
            kind,
            namespace: "default".into(),
            name: "kubernetes".into(),
            addresses: vec![ip.parse().unwrap()],
        }));
    }
    c
}

/// Makes every other pod dual-stack and adds an IPv6 block peer now and then,
/// so that both families are exercised.
pub fn dual_stack(mut c: Cluster) -> Cluster {
    let mut i = 0;
    for o in &mut c.objects {
        match o {
            Object::Pod(p) => {
                if i % 2 == 0 {
                    let n = p.name.trim_start_matches("pod").parse::<u16>().unwrap_or(0);
                    p.ips.push(format!("fd00::{:x}", n + 1).parse().unwrap());
                }
                i += 1;
            }
            Object::NetworkPolicy(pol) => {
                if let Some(r) = pol.ingress.as_mut().and_then(|r| r.first_mut())
                    && r.peers.iter().any(|p| matches!(p, Peer::IpBlock { .. }))
                {
                    r.peers.push(Peer::IpBlock {
                        cidr: "fd00::/120".parse().unwrap(),
                        except: vec!["fd00::4/126".parse().unwrap()],
                    });
                }
            }
            _ => {}
        }
    }
    c
}
