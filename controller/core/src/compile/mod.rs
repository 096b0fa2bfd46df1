//! The ruleset compiler: inventory in, the ruleset of one node out.
//!
//! ```text
//!  local pod ──selected by {P1,P2} for ingress──▶ group ──▶ chain i_<hash>
//!        │                                                   │ one rule per
//!        └─ ingress4 map: 10.0.1.5 : goto i_<hash>            │ (policy rule × peer × port × family)
//!                                                            ▼
//!        peers ──▶ sets p4_/p6_ (pod addresses), b4_/b6_ (ipBlocks minus except),
//!                  r4_/r6_ (address . port of a named port on remote pods),
//!                  l4_/l6_ (address . port of a named port on the group's local pods)
//! ```
//!
//! Rule count grows with distinct policies and groups, never with pods: a pod
//! that appears, disappears or moves between existing groups changes set and
//! map elements only. See `proto/bulkhead/v1/ruleset.proto` for the layout.

pub mod diff;
mod guard;
pub mod incremental;
pub mod interp;
pub mod names;
pub mod observe;
mod quarantine;
pub mod tiers;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::ops::Range;
use std::rc::Rc;

use bulkhead_proto::v1 as pb;
use ipnet::IpNet;
use pb::r#match::Kind as M;
use pb::verdict::Kind as V;

use crate::inventory::{Inventory, PodId, PolicyId};
use crate::model::{Direction, NamespaceScope, Peer, PolicyMode, PortMatch, PortSpec, Protocol};
use observe::LogKind;

/// Compiles rulesets for nodes, sharing the work that is the same on every
/// node (which pods a peer selects) between them.
#[derive(Debug)]
pub struct Compiler<'a> {
    inv: &'a Inventory,
    ns_pods: HashMap<&'a str, Range<usize>>,
    peer_pods: HashMap<String, Rc<Vec<PodId>>>,
}

/// The node names a cluster has: every Node object and every pod's node.
pub fn node_names(inv: &Inventory) -> Vec<String> {
    let mut names: BTreeSet<String> = inv.nodes.iter().map(|n| n.name.clone()).collect();
    names.extend(inv.pods.iter().filter_map(|p| p.node.clone()));
    names.into_iter().collect()
}

/// Every node's ruleset, by node name.
pub fn compile_all(inv: &Inventory, generation: u64) -> BTreeMap<String, pb::Ruleset> {
    let mut c = Compiler::new(inv);
    node_names(inv)
        .into_iter()
        .map(|n| {
            let rs = c.node(&n, generation);
            (n, rs)
        })
        .collect()
}

/// One node's ruleset.
pub fn compile_node(inv: &Inventory, node: &str, generation: u64) -> pb::Ruleset {
    Compiler::new(inv).node(node, generation)
}

fn family_of(ip: &IpAddr) -> pb::Family {
    if ip.is_ipv4() {
        pb::Family::Ipv4
    } else {
        pb::Family::Ipv6
    }
}

fn fam_digit(f: pb::Family) -> &'static str {
    match f {
        pb::Family::Ipv6 => "6",
        _ => "4",
    }
}

pub fn l4proto(p: Protocol) -> pb::L4Proto {
    match p {
        Protocol::Tcp => pb::L4Proto::Tcp,
        Protocol::Udp => pb::L4Proto::Udp,
        Protocol::Sctp => pb::L4Proto::Sctp,
    }
}

pub fn m(kind: M) -> pb::Match {
    pb::Match { kind: Some(kind) }
}

pub fn verdict(kind: V) -> Option<pb::Verdict> {
    Some(pb::Verdict { kind: Some(kind) })
}

pub fn addr_element(ip: IpAddr) -> pb::Element {
    pb::Element {
        value: Some(pb::element::Value::Addr(ip.to_string())),
    }
}

/// A rule that neither counts nor logs.
pub(super) fn rule(matches: Vec<pb::Match>, v: V, comment: impl Into<String>) -> pb::Rule {
    pb::Rule {
        matches,
        counter: false,
        log: None,
        verdict: verdict(v),
        comment: comment.into(),
    }
}

/// `<field> [!=] @set` for addresses of family `f`.
pub(super) fn addr_in_set(field: pb::Field, f: pb::Family, set: &str, negate: bool) -> pb::Match {
    m(M::AddrInSet(pb::AddrInSet {
        field: field as i32,
        family: f as i32,
        set: set.to_owned(),
        negate,
    }))
}

/// `ct state` holding exactly the states given.
pub(super) fn ct_state(new: bool, established: bool, related: bool, invalid: bool) -> pb::Match {
    m(M::CtState(pb::CtStates {
        established,
        related,
        new,
        invalid,
    }))
}

/// An interval-set element: `addr/len`.
pub(super) fn prefix_element(addr: IpAddr, len: u8) -> pb::Element {
    pb::Element {
        value: Some(pb::element::Value::Prefix(pb::Prefix {
            addr: addr.to_string(),
            len: u32::from(len),
        })),
    }
}

/// Adds the address set `name` of family `f` holding `addrs`.
pub(super) fn insert_addr_set(
    sets: &mut BTreeMap<String, pb::Set>,
    name: &str,
    f: pb::Family,
    addrs: BTreeSet<IpAddr>,
) {
    sets.insert(
        name.to_owned(),
        set(
            name,
            addr_set_type(f),
            addrs.into_iter().map(addr_element).collect(),
        ),
    );
}

fn set(name: &str, ty: pb::SetType, elements: Vec<pb::Element>) -> pb::Set {
    pb::Set {
        name: name.to_owned(),
        r#type: ty as i32,
        interval: false,
        elements,
        agent_managed: false,
    }
}

fn addr_set_type(f: pb::Family) -> pb::SetType {
    match f {
        pb::Family::Ipv6 => pb::SetType::Ipv6Addr,
        _ => pb::SetType::Ipv4Addr,
    }
}

fn addr_service_type(f: pb::Family) -> pb::SetType {
    match f {
        pb::Family::Ipv6 => pb::SetType::Ipv6AddrService,
        _ => pb::SetType::Ipv4AddrService,
    }
}

const FAMILIES: [pb::Family; 2] = [pb::Family::Ipv4, pb::Family::Ipv6];

/// A rule's peer, as the compiler sees it.
#[derive(Clone, Copy)]
enum PeerSel<'p> {
    Any,
    Pods(&'p Peer),
    Block(&'p IpNet, &'p [IpNet]),
    /// The addresses of the Nodes a selector matches (ClusterNetworkPolicy).
    Nodes(&'p crate::labels::Selector),
}

impl<'a> Compiler<'a> {
    pub fn new(inv: &'a Inventory) -> Self {
        // Pods are sorted by namespace/name: each namespace is one range.
        let mut ns_pods: HashMap<&'a str, Range<usize>> = HashMap::new();
        for (i, p) in inv.pods.iter().enumerate() {
            ns_pods
                .entry(p.namespace.as_str())
                .and_modify(|r| r.end = i + 1)
                .or_insert(i..i + 1);
        }
        Self {
            inv,
            ns_pods,
            peer_pods: HashMap::new(),
        }
    }

    /// Whether a pod takes part in the dataplane: it has an address of its own.
    fn addressable(&self, p: PodId) -> bool {
        let pod = &self.inv.pods[p];
        !pod.host_network && !pod.ips.is_empty()
    }

    /// The address of `p` in family `f`, unless another pod owns it (the
    /// inventory's owner wins, as in the verdict engine).
    fn addr_of(&self, p: PodId, f: pb::Family) -> Option<IpAddr> {
        self.inv.pods[p]
            .ips
            .iter()
            .find(|ip| family_of(ip) == f && self.inv.pod_by_ip(**ip) == Some(p))
            .copied()
    }

    /// Adds `address → v` to `maps[0]` (IPv4) or `maps[1]` (IPv6) for each
    /// address of pod `p`.
    fn map_pod(
        &self,
        p: PodId,
        maps: [&'static str; 2],
        v: &V,
        entries: &mut BTreeMap<&'static str, Vec<pb::MapEntry>>,
    ) {
        for (f, map) in FAMILIES.into_iter().zip(maps) {
            if let Some(ip) = self.addr_of(p, f) {
                entries.entry(map).or_default().push(pb::MapEntry {
                    key: Some(addr_element(ip)),
                    verdict: verdict(v.clone()),
                });
            }
        }
    }

    /// The pods a `Pods` peer of a policy in `policy_ns` selects.
    fn pods_of_peer(&mut self, policy_ns: &str, peer: &Peer) -> Rc<Vec<PodId>> {
        let key = peer_key(policy_ns, peer);
        if let Some(v) = self.peer_pods.get(&key) {
            return Rc::clone(v);
        }
        let mut out = Vec::new();
        if let Peer::Pods { namespaces, pods } = peer {
            let namespaces: Vec<&str> = match namespaces {
                NamespaceScope::PolicyNamespace => vec![policy_ns],
                NamespaceScope::Selected(sel) => self
                    .inv
                    .namespaces
                    .iter()
                    .filter(|n| sel.matches(&n.labels))
                    .map(|n| n.name.as_str())
                    .collect(),
            };
            for ns in namespaces {
                for p in self.ns_pods.get(ns).cloned().unwrap_or(0..0) {
                    if self.addressable(p) && pods.matches(&self.inv.pods[p].labels) {
                        out.push(p);
                    }
                }
            }
        }
        let v = Rc::new(out);
        self.peer_pods.insert(key, Rc::clone(&v));
        v
    }

    /// Compiles the ruleset of `node`.
    pub fn node(&mut self, node: &str, generation: u64) -> pb::Ruleset {
        let inv = self.inv;
        let local: Vec<PodId> = (0..inv.pods.len())
            .filter(|&p| inv.pods[p].node.as_deref() == Some(node) && self.addressable(p))
            .collect();

        let mut sets: BTreeMap<String, pb::Set> = BTreeMap::new();
        let mut chains = Vec::new();
        let mut entries: BTreeMap<&'static str, Vec<pb::MapEntry>> = BTreeMap::new();
        // Per direction, pods with the same tiers (fences, cluster policies,
        // NetworkPolicies) share chains: see `tiers.rs`.
        self.tier_chains(&local, &mut sets, &mut chains, &mut entries);
        self.guard_sets(&mut sets);
        self.guard_input(&local, &mut sets, &mut chains, &mut entries);

        let maps = [
            (names::EGRESS4, pb::Family::Ipv4),
            (names::EGRESS6, pb::Family::Ipv6),
            (names::INGRESS4, pb::Family::Ipv4),
            (names::INGRESS6, pb::Family::Ipv6),
            (names::GUARD_IN4, pb::Family::Ipv4),
            (names::GUARD_IN6, pb::Family::Ipv6),
        ]
        .into_iter()
        .map(|(name, f)| {
            let mut e = entries.remove(name).unwrap_or_default();
            e.sort_by_key(|entry| element_addr(entry.key.as_ref()));
            pb::Map {
                name: name.to_owned(),
                key_type: addr_set_type(f) as i32,
                entries: e,
            }
        })
        .collect();

        // The node's pod addresses, for the observation rules at the end of
        // the forward chain (elements grow with pods, rules do not).
        for f in FAMILIES {
            let addrs: BTreeSet<IpAddr> =
                local.iter().filter_map(|&p| self.addr_of(p, f)).collect();
            let name = match f {
                pb::Family::Ipv6 => names::LOCAL6,
                _ => names::LOCAL4,
            };
            insert_addr_set(&mut sets, name, f, addrs);
        }

        for (name, ty) in [
            (names::POD_IFACES, pb::SetType::Ifname),
            (names::POD_IFADDR4, pb::SetType::IfnameIpv4Addr),
            (names::POD_IFADDR6, pb::SetType::IfnameIpv6Addr),
        ] {
            sets.insert(
                name.to_owned(),
                pb::Set {
                    agent_managed: true,
                    ..set(name, ty, Vec::new())
                },
            );
        }

        let mut all_chains = base_chains();
        quarantine::hook_base_chains(&mut all_chains);
        all_chains.push(self.quarantine_chain(&mut sets));
        all_chains.extend(chains);
        all_chains.sort_by(|a, b| a.name.cmp(&b.name));

        let endpoints = local.iter().map(|&p| endpoint(&inv.pods[p])).collect();

        pb::Ruleset {
            node: node.to_owned(),
            generation,
            sets: sets.into_values().collect(),
            maps,
            chains: all_chains,
            endpoints,
        }
    }

    fn group_rules(
        &mut self,
        dir: Direction,
        policies: &[PolicyId],
        members: &[PodId],
        chain: &str,
        sets: &mut BTreeMap<String, pb::Set>,
    ) -> Vec<pb::Rule> {
        let inv = self.inv;
        let allow = match dir {
            Direction::Egress => V::Return(pb::Empty {}),
            Direction::Ingress => V::Accept(pb::Empty {}),
        };
        // A group's policies all live in its pods' namespace: one mode per chain.
        let mode = policies
            .first()
            .map(|&p| inv.namespace_mode(&inv.policies[p].namespace))
            .unwrap_or_default();
        let mut rules = Vec::new();
        for &pid in policies {
            let pol = &inv.policies[pid];
            for (i, r) in pol.rules(dir).unwrap_or_default().iter().enumerate() {
                let comment = format!("np {}/{} {}[{}]", pol.namespace, pol.name, dir, i);
                let peers: Vec<PeerSel> = if r.peers.is_empty() {
                    vec![PeerSel::Any]
                } else {
                    r.peers
                        .iter()
                        .map(|p| match p {
                            Peer::IpBlock { cidr, except } => PeerSel::Block(cidr, except),
                            other => PeerSel::Pods(other),
                        })
                        .collect()
                };
                let ports: Vec<Option<&PortMatch>> = if r.ports.is_empty() {
                    vec![None]
                } else {
                    r.ports.iter().map(Some).collect()
                };
                for peer in &peers {
                    for port in &ports {
                        for f in FAMILIES {
                            let ctx = RuleCtx {
                                dir,
                                policy_ns: &pol.namespace,
                                chain,
                                members,
                                family: f,
                            };
                            if let Some(matches) = self.rule_matches(&ctx, *peer, *port, sets) {
                                rules.push(pb::Rule {
                                    matches,
                                    counter: false,
                                    log: observe::log(LogKind::Allow, &comment),
                                    verdict: verdict(allow.clone()),
                                    comment: comment.clone(),
                                });
                            }
                        }
                    }
                }
            }
        }
        // Learn and monitor: a denial is logged and let through (see
        // `verdict::dropped_by_modes`); enforce: it drops.
        let comment = format!("np isolated for {dir}: no rule allows");
        let (kind, last) = match mode {
            PolicyMode::Enforce => (LogKind::Deny, V::Drop(pb::Empty {})),
            PolicyMode::Learn | PolicyMode::Monitor => (LogKind::WouldDeny, allow),
        };
        rules.push(pb::Rule {
            matches: Vec::new(),
            counter: true,
            log: observe::log(kind, &comment),
            verdict: verdict(last),
            comment,
        });
        rules
    }

    /// The matches of one (peer, port, family) combination of a rule; `None`
    /// when it cannot match in that family.
    fn rule_matches(
        &mut self,
        ctx: &RuleCtx<'_>,
        peer: PeerSel<'_>,
        port: Option<&PortMatch>,
        sets: &mut BTreeMap<String, pb::Set>,
    ) -> Option<Vec<pb::Match>> {
        let f = ctx.family;
        if let PeerSel::Block(cidr, _) = peer {
            let block_family = if cidr.addr().is_ipv4() {
                pb::Family::Ipv4
            } else {
                pb::Family::Ipv6
            };
            if block_family != f {
                return None;
            }
        }
        let peer_field = match ctx.dir {
            Direction::Ingress => pb::Field::Saddr,
            Direction::Egress => pb::Field::Daddr,
        };
        let mut matches = Vec::new();
        let mut named = None;
        if let Some(pm) = port {
            matches.push(m(M::L4proto(l4proto(pm.protocol) as i32)));
            match &pm.port {
                PortSpec::Any => {}
                PortSpec::Number(n) => matches.push(dport(*n, *n)),
                PortSpec::Range(a, b) => matches.push(dport(*a, *b)),
                PortSpec::Named(name) => named = Some((pm.protocol, name.as_str())),
            }
        }
        match (ctx.dir, named) {
            (Direction::Egress, Some((proto, name))) => {
                // The destination's named port: address . port of every pod
                // the peer covers that names the port.
                let set = self.remote_named_set(ctx.policy_ns, peer, proto, name, f, sets);
                matches.push(m(M::AddrPortInSet(pb::AddrPortInSet {
                    field: pb::Field::Daddr as i32,
                    family: f as i32,
                    set,
                })));
            }
            (dir, named) => {
                if let Some(set) = self.peer_set(ctx.policy_ns, peer, f, sets) {
                    matches.push(m(M::AddrInSet(pb::AddrInSet {
                        field: peer_field as i32,
                        family: f as i32,
                        set,
                        negate: false,
                    })));
                }
                if let (Direction::Ingress, Some((proto, name))) = (dir, named) {
                    // The named port of the destination, a local pod of the group.
                    let set = self.local_named_set(ctx.chain, ctx.members, proto, name, f, sets);
                    matches.push(m(M::AddrPortInSet(pb::AddrPortInSet {
                        field: pb::Field::Daddr as i32,
                        family: f as i32,
                        set,
                    })));
                }
            }
        }
        Some(matches)
    }

    /// The set of a peer's addresses in family `f`; `None` for any peer.
    fn peer_set(
        &mut self,
        policy_ns: &str,
        peer: PeerSel<'_>,
        f: pb::Family,
        sets: &mut BTreeMap<String, pb::Set>,
    ) -> Option<String> {
        match peer {
            PeerSel::Any => None,
            PeerSel::Pods(p) => {
                let name = names::hashed(&format!("p{}_", fam_digit(f)), &peer_key(policy_ns, p));
                if !sets.contains_key(&name) {
                    let pods = self.pods_of_peer(policy_ns, p);
                    let addrs: BTreeSet<IpAddr> =
                        pods.iter().filter_map(|&q| self.addr_of(q, f)).collect();
                    let elements = addrs.into_iter().map(addr_element).collect();
                    sets.insert(name.clone(), set(&name, addr_set_type(f), elements));
                }
                Some(name)
            }
            PeerSel::Nodes(sel) => {
                let name = names::hashed(&format!("n{}_", fam_digit(f)), &format!("{sel:?}"));
                if !sets.contains_key(&name) {
                    let addrs: BTreeSet<IpAddr> = self
                        .inv
                        .nodes
                        .iter()
                        .filter(|n| sel.matches(&n.labels))
                        .flat_map(|n| n.addresses.iter().copied())
                        .filter(|ip| family_of(ip) == f)
                        .collect();
                    let elements = addrs.into_iter().map(addr_element).collect();
                    sets.insert(name.clone(), set(&name, addr_set_type(f), elements));
                }
                Some(name)
            }
            PeerSel::Block(cidr, except) => {
                let name = names::hashed(&format!("b{}_", fam_digit(f)), &block_key(cidr, except));
                if !sets.contains_key(&name) {
                    let elements = block_prefixes(cidr, except)
                        .into_iter()
                        .map(|(addr, len)| prefix_element(addr, len))
                        .collect();
                    sets.insert(
                        name.clone(),
                        pb::Set {
                            interval: true,
                            ..set(&name, addr_set_type(f), elements)
                        },
                    );
                }
                Some(name)
            }
        }
    }

    fn remote_named_set(
        &mut self,
        policy_ns: &str,
        peer: PeerSel<'_>,
        proto: Protocol,
        port_name: &str,
        f: pb::Family,
        sets: &mut BTreeMap<String, pb::Set>,
    ) -> String {
        let peer_desc = match peer {
            PeerSel::Any => "any".to_owned(),
            PeerSel::Pods(p) => peer_key(policy_ns, p),
            PeerSel::Block(c, e) => block_key(c, e),
            PeerSel::Nodes(s) => format!("nodes {s}"),
        };
        let name = names::hashed(
            &format!("r{}_", fam_digit(f)),
            &format!("{peer_desc}|{proto}|{port_name}"),
        );
        if sets.contains_key(&name) {
            return name;
        }
        let pods: Vec<PodId> = match peer {
            // Nodes have no named ports (the loader rejects the combination).
            PeerSel::Nodes(_) => Vec::new(),
            PeerSel::Any => (0..self.inv.pods.len())
                .filter(|&p| self.addressable(p))
                .collect(),
            PeerSel::Pods(p) => self.pods_of_peer(policy_ns, p).to_vec(),
            PeerSel::Block(cidr, except) => (0..self.inv.pods.len())
                .filter(|&p| {
                    self.addressable(p)
                        && self
                            .addr_of(p, f)
                            .is_some_and(|ip| Peer::ip_block_contains(cidr, except, ip))
                })
                .collect(),
        };
        let elements = self.addr_ports(&pods, proto, port_name, f);
        sets.insert(name.clone(), set(&name, addr_service_type(f), elements));
        name
    }

    fn local_named_set(
        &mut self,
        chain: &str,
        members: &[PodId],
        proto: Protocol,
        port_name: &str,
        f: pb::Family,
        sets: &mut BTreeMap<String, pb::Set>,
    ) -> String {
        let name = names::hashed(
            &format!("l{}_", fam_digit(f)),
            &format!("{chain}|{proto}|{port_name}"),
        );
        if !sets.contains_key(&name) {
            let elements = self.addr_ports(members, proto, port_name, f);
            sets.insert(name.clone(), set(&name, addr_service_type(f), elements));
        }
        name
    }

    fn addr_ports(
        &self,
        pods: &[PodId],
        proto: Protocol,
        port_name: &str,
        f: pb::Family,
    ) -> Vec<pb::Element> {
        let mut out: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
        for &p in pods {
            if let (Some(ip), Some(port)) = (
                self.addr_of(p, f),
                self.inv.pods[p].named_port(port_name, proto),
            ) {
                out.insert((ip, port));
            }
        }
        out.into_iter()
            .map(|(ip, port)| pb::Element {
                value: Some(pb::element::Value::AddrPort(pb::AddrPort {
                    addr: ip.to_string(),
                    port: u32::from(port),
                })),
            })
            .collect()
    }
}

struct RuleCtx<'c> {
    dir: Direction,
    policy_ns: &'c str,
    chain: &'c str,
    members: &'c [PodId],
    family: pb::Family,
}

fn dport(a: u16, b: u16) -> pb::Match {
    m(M::Dport(pb::PortRange {
        first: u32::from(a),
        last: u32::from(b),
    }))
}

/// A canonical description of a pod peer, relative to its policy's namespace.
fn peer_key(policy_ns: &str, peer: &Peer) -> String {
    let scope = match peer {
        Peer::Pods {
            namespaces: NamespaceScope::PolicyNamespace,
            ..
        } => policy_ns,
        _ => "",
    };
    format!(
        "{scope}|{}",
        serde_json::to_string(peer).unwrap_or_default()
    )
}

fn block_key(cidr: &IpNet, except: &[IpNet]) -> String {
    let mut e: Vec<String> = except.iter().map(|x| x.to_string()).collect();
    e.sort();
    format!("{cidr}-{}", e.join(","))
}

/// The chain of a group: named after its direction and policies.
pub fn group_chain_name(inv: &Inventory, dir: Direction, policies: &[PolicyId]) -> String {
    let keys: Vec<String> = policies.iter().map(|&p| inv.policies[p].key()).collect();
    let prefix = match dir {
        Direction::Ingress => "i_",
        Direction::Egress => "e_",
    };
    names::hashed(prefix, &keys.join(","))
}

fn element_addr(e: Option<&pb::Element>) -> Option<IpAddr> {
    match e.and_then(|e| e.value.as_ref()) {
        Some(pb::element::Value::Addr(a)) => a.parse().ok(),
        _ => None,
    }
}

/// The fixed base chains (see the module docs and the .proto).
fn base_chains() -> Vec<pb::Chain> {
    let ct = |established, related, invalid| ct_state(false, established, related, invalid);
    let from_pod = || {
        m(M::Iifname(pb::IfnameMatch {
            value: Some(pb::ifname_match::Value::Set(names::POD_IFACES.to_owned())),
            negate: false,
        }))
    };
    let spoofed = |f: pb::Family, set: &str| {
        m(M::IfaddrInSet(pb::IfAddrInSet {
            family: f as i32,
            set: set.to_owned(),
            negate: true,
        }))
    };
    let not_prefix = |addr: &str, len: u32| {
        m(M::AddrInPrefix(pb::AddrInPrefix {
            field: pb::Field::Saddr as i32,
            prefix: Some(pb::Prefix {
                addr: addr.to_owned(),
                len,
            }),
            negate: true,
        }))
    };
    let drop = || V::Drop(pb::Empty {});
    let anti_spoof = || {
        vec![
            rule(
                vec![from_pod(), spoofed(pb::Family::Ipv4, names::POD_IFADDR4)],
                drop(),
                "anti-spoofing: source is not the pod's address",
            ),
            rule(
                vec![
                    from_pod(),
                    not_prefix("fe80::", 10),
                    not_prefix("::", 128),
                    spoofed(pb::Family::Ipv6, names::POD_IFADDR6),
                ],
                drop(),
                "anti-spoofing: source is not the pod's address",
            ),
        ]
    };
    let vmap = |field: pb::Field, f: pb::Family, map: &str, comment: &str| {
        rule(
            vec![],
            V::Vmap(pb::VmapLookup {
                field: field as i32,
                family: f as i32,
                map: map.to_owned(),
            }),
            comment,
        )
    };
    let mut forward = vec![
        rule(
            vec![ct(true, true, false)],
            V::Accept(pb::Empty {}),
            "established",
        ),
        rule(vec![ct(false, false, true)], drop(), "invalid"),
    ];
    forward.extend(anti_spoof());
    forward.extend(
        [
            (
                pb::Field::Saddr,
                pb::Family::Ipv4,
                names::EGRESS4,
                "egress dispatch",
            ),
            (
                pb::Field::Saddr,
                pb::Family::Ipv6,
                names::EGRESS6,
                "egress dispatch",
            ),
            (
                pb::Field::Daddr,
                pb::Family::Ipv4,
                names::INGRESS4,
                "ingress dispatch",
            ),
            (
                pb::Field::Daddr,
                pb::Family::Ipv6,
                names::INGRESS6,
                "ingress dispatch",
            ),
        ]
        .map(|(field, f, map, comment)| vmap(field, f, map, comment)),
    );
    // Observation: a new connection from or to a local pod that no group
    // chain decided is allowed by default; log it (no verdict: the chain
    // policy accepts).
    for (f, set) in [
        (pb::Family::Ipv4, names::LOCAL4),
        (pb::Family::Ipv6, names::LOCAL6),
    ] {
        let in_set = |field: pb::Field, negate: bool| addr_in_set(field, f, set, negate);
        let new = ct_state(true, false, false, false);
        let comment = "not isolated";
        forward.push(pb::Rule {
            matches: vec![new.clone(), in_set(pb::Field::Saddr, false)],
            counter: false,
            log: observe::log(LogKind::Default, comment),
            verdict: None,
            comment: format!("observe: {comment}, from a local pod"),
        });
        forward.push(pb::Rule {
            matches: vec![
                new,
                in_set(pb::Field::Saddr, true),
                in_set(pb::Field::Daddr, false),
            ],
            counter: false,
            log: observe::log(LogKind::Default, comment),
            verdict: None,
            comment: format!("observe: {comment}, to a local pod"),
        });
    }
    let mut input = vec![rule(
        vec![ct(true, true, false)],
        V::Accept(pb::Empty {}),
        "established",
    )];
    input.extend(anti_spoof());
    // The API guard: a guarded pod to its own node (see `guard.rs`).
    input.extend(
        [
            (pb::Family::Ipv4, names::GUARD_IN4),
            (pb::Family::Ipv6, names::GUARD_IN6),
        ]
        .map(|(f, map)| vmap(pb::Field::Saddr, f, map, "api guard dispatch")),
    );
    let hook = |h: pb::HookType| {
        Some(pb::Hook {
            hook: h as i32,
            priority: 0,
            drop: false,
        })
    };
    vec![
        pb::Chain {
            name: names::FORWARD.to_owned(),
            hook: hook(pb::HookType::Forward),
            rules: forward,
        },
        pb::Chain {
            name: names::INPUT.to_owned(),
            hook: hook(pb::HookType::Input),
            rules: input,
        },
    ]
}

/// The anti-spoofing elements for the agent-managed sets, from the pod
/// interfaces and addresses an agent sees: `(pod_ifaces, pod_ifaddr4, pod_ifaddr6)`.
pub fn anti_spoof_elements(links: &[(String, Vec<IpAddr>)]) -> [(String, Vec<pb::Element>); 3] {
    let mut ifaces = BTreeSet::new();
    let mut v4 = BTreeSet::new();
    let mut v6 = BTreeSet::new();
    for (ifname, addrs) in links {
        ifaces.insert(ifname.clone());
        for a in addrs {
            if a.is_ipv4() {
                v4.insert((ifname.clone(), *a));
            } else {
                v6.insert((ifname.clone(), *a));
            }
        }
    }
    let ifaddr = |s: BTreeSet<(String, IpAddr)>| {
        s.into_iter()
            .map(|(ifname, a)| pb::Element {
                value: Some(pb::element::Value::IfAddr(pb::IfAddr {
                    ifname,
                    addr: a.to_string(),
                })),
            })
            .collect()
    };
    [
        (
            names::POD_IFACES.to_owned(),
            ifaces
                .into_iter()
                .map(|i| pb::Element {
                    value: Some(pb::element::Value::Ifname(i)),
                })
                .collect(),
        ),
        (names::POD_IFADDR4.to_owned(), ifaddr(v4)),
        (names::POD_IFADDR6.to_owned(), ifaddr(v6)),
    ]
}

/// `cidr` minus every `except`, as the fewest non-overlapping prefixes.
pub fn block_prefixes(cidr: &IpNet, except: &[IpNet]) -> Vec<(IpAddr, u8)> {
    let bits: u32 = if cidr.addr().is_ipv4() { 32 } else { 128 };
    let to_u = |ip: IpAddr| -> u128 {
        match ip {
            IpAddr::V4(v) => u128::from(u32::from(v)),
            IpAddr::V6(v) => u128::from(v),
        }
    };
    let from_u = |x: u128| -> IpAddr {
        if bits == 32 {
            IpAddr::V4(std::net::Ipv4Addr::from(x as u32))
        } else {
            IpAddr::V6(std::net::Ipv6Addr::from(x))
        }
    };
    let mut ranges = vec![(to_u(cidr.network()), to_u(cidr.broadcast()))];
    let mut ex: Vec<(u128, u128)> = except
        .iter()
        .filter(|e| e.addr().is_ipv4() == cidr.addr().is_ipv4())
        .map(|e| (to_u(e.network()), to_u(e.broadcast())))
        .collect();
    ex.sort();
    for (es, ee) in ex {
        let mut next = Vec::new();
        for (s, e) in ranges {
            if ee < s || es > e {
                next.push((s, e));
                continue;
            }
            if es > s {
                next.push((s, es - 1));
            }
            if ee < e {
                next.push((ee + 1, e));
            }
        }
        ranges = next;
    }
    let mask = |h: u32| {
        if h >= 128 {
            u128::MAX
        } else {
            (1u128 << h) - 1
        }
    };
    let mut out = Vec::new();
    for (mut s, e) in ranges {
        loop {
            let mut h = if s == 0 {
                bits
            } else {
                s.trailing_zeros().min(bits)
            };
            while h > 0 && (s | mask(h)) > e {
                h -= 1;
            }
            out.push((from_u(s), (bits - h) as u8));
            let last = s | mask(h);
            if last >= e {
                break;
            }
            s = last + 1;
        }
    }
    out
}

/// A pod as the ruleset's endpoint list names it (for flow observation).
pub(crate) fn endpoint(pod: &crate::model::Pod) -> pb::Endpoint {
    pb::Endpoint {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        addrs: pod.ips.iter().map(|i| i.to_string()).collect(),
        labels: pod
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_minus_except() {
        let c: IpNet = "10.0.0.0/24".parse().unwrap();
        let e: IpNet = "10.0.0.128/25".parse().unwrap();
        assert_eq!(
            block_prefixes(&c, &[e]),
            vec![("10.0.0.0".parse().unwrap(), 25)]
        );
        let e2: IpNet = "10.0.0.4/30".parse().unwrap();
        let got = block_prefixes(&c, &[e2]);
        assert_eq!(
            got,
            vec![
                ("10.0.0.0".parse().unwrap(), 30),
                ("10.0.0.8".parse().unwrap(), 29),
                ("10.0.0.16".parse().unwrap(), 28),
                ("10.0.0.32".parse().unwrap(), 27),
                ("10.0.0.64".parse().unwrap(), 26),
                ("10.0.0.128".parse().unwrap(), 25),
            ]
        );
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert_eq!(
            block_prefixes(&all, &[]),
            vec![("0.0.0.0".parse().unwrap(), 0)]
        );
        let all6: IpNet = "::/0".parse().unwrap();
        assert_eq!(block_prefixes(&all6, &[]), vec![("::".parse().unwrap(), 0)]);
        let one: IpNet = "10.0.0.0/31".parse().unwrap();
        let e3: IpNet = "10.0.0.1/32".parse().unwrap();
        assert_eq!(
            block_prefixes(&one, &[e3]),
            vec![("10.0.0.0".parse().unwrap(), 32)]
        );
    }
}
