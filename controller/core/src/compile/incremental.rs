//! Element-level incremental compilation of pod changes: a pod added,
//! removed, relabelled, moved or readdressed becomes the per-node deltas
//! [`super::diff::diff`] would give after a full recompile, without one.
//!
//! ```text
//!  Incremental { inventory (updated in place), every node's ruleset,
//!                set → nodes holding it, every distinct pod peer (p4_/p6_)
//!                and named-port peer (r4_/r6_) of the NetworkPolicies }
//!  pod_changed(change):
//!    what the pod puts into rulesets before ──┐   its node: map entries
//!    what it puts into rulesets after ────────┤   (egress/ingress/guardin),
//!                                             │   local4/6, l4_/l6_ of its
//!                                             │   group; every node holding
//!                                             │   a peer set that covers it
//!    the two differences ──▶ element adds/removes per node
//!    a group chain its node lacks, or one no pod of its old node uses now
//!      ──▶ recompile that node alone and diff
//!    anything else (see `refusal`) ──▶ recompile every node and diff
//! ```
//!
//! What a pod puts into a ruleset is exact because every element it adds
//! carries one of its own addresses, and an address belongs to one pod (a
//! shared address takes the slow path). Chains do not depend on which pods
//! use them, only on the policies: a pod moving between groups its node
//! already has changes elements only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use bulkhead_proto::v1 as pb;
use ipnet::IpNet;
use pb::verdict::Kind as V;

use super::{
    Compiler, FAMILIES, addr_element, block_key, diff, fam_digit, group_chain_name, names,
    node_names, peer_key, verdict,
};
use crate::inventory::{Inventory, PodId, PolicyId};
use crate::labels::{Labels, Selector};
use crate::model::{Direction, NamespaceScope, Peer, Pod, PortSpec, Protocol};
use crate::quarantine::Source;
use crate::tenant::Fence;

/// A change to one pod.
#[derive(Clone, Debug)]
pub enum PodChange {
    /// A new pod, or new contents for the pod of that namespace and name.
    Upsert(Pod),
    Remove {
        namespace: String,
        name: String,
    },
}

/// How a change was compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Element adds and removes only.
    Elements,
    /// Element adds and removes, and this many nodes recompiled (a group
    /// chain appears or goes on the pod's node, or the node is new).
    Nodes(usize),
    /// Every node recompiled, for the reason given.
    Full(&'static str),
}

/// The result of a change.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Per node whose ruleset changed, the delta from its previous ruleset.
    pub deltas: BTreeMap<String, pb::RulesetDelta>,
    /// Nodes that had no ruleset before, with their first one.
    pub added: BTreeMap<String, pb::Ruleset>,
    pub path: Path,
}

/// A pod peer of a NetworkPolicy rule, and its sets `p4_`, `p6_`.
#[derive(Debug)]
struct PodPeer {
    policy_ns: String,
    scope: NamespaceScope,
    pods: Selector,
    /// Its canonical description (see `super::peer_key`).
    key: String,
    sets: [String; 2],
}

#[derive(Debug)]
enum RemoteSel {
    Any,
    /// An index in `peers`.
    Pods(usize),
    Block(IpNet, Vec<IpNet>),
}

/// An egress rule's named port on a peer, and its sets `r4_`, `r6_`.
#[derive(Debug)]
struct Remote {
    sel: RemoteSel,
    proto: Protocol,
    port: String,
    sets: [String; 2],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Elem {
    Addr(IpAddr),
    AddrPort(IpAddr, u16),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Disp {
    Jump(String),
    Goto(String),
}

/// One thing a pod puts into a node's ruleset.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    Set(String, Elem),
    Map(&'static str, IpAddr, Disp),
}

/// A group chain a pod's map entries lead to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ChainKey {
    /// The NetworkPolicy chain of these policies.
    Rest(Direction, Vec<PolicyId>),
    /// The API guard's chain in front of the egress chain of these policies
    /// (none when empty).
    Guard(Vec<PolicyId>),
}

/// What a pod puts into its node's ruleset.
#[derive(Debug)]
struct Local {
    node: String,
    items: BTreeSet<Item>,
    chains: BTreeSet<ChainKey>,
    endpoint: pb::Endpoint,
}

/// Long-lived compiler state for pod changes (see the module docs).
#[derive(Debug)]
pub struct Incremental {
    inv: Inventory,
    generation: u64,
    rulesets: BTreeMap<String, pb::Ruleset>,
    set_nodes: HashMap<String, Vec<String>>,
    peers: Vec<PodPeer>,
    remotes: Vec<Remote>,
    /// How many pods claim each address.
    claims: HashMap<IpAddr, u32>,
    /// No ClusterNetworkPolicy and no fenced namespace: the only tier is
    /// NetworkPolicy (plus the API guard).
    simple: bool,
}

fn dir_maps(dir: Direction) -> [&'static str; 2] {
    match dir {
        Direction::Egress => [names::EGRESS4, names::EGRESS6],
        Direction::Ingress => [names::INGRESS4, names::INGRESS6],
    }
}

fn claimed(p: &Pod) -> BTreeSet<IpAddr> {
    if p.host_network {
        BTreeSet::new()
    } else {
        p.ips.iter().copied().collect()
    }
}

fn addressable(p: &Pod) -> bool {
    !p.host_network && !p.ips.is_empty()
}

fn elem(e: Elem) -> pb::Element {
    match e {
        Elem::Addr(ip) => addr_element(ip),
        Elem::AddrPort(ip, port) => pb::Element {
            value: Some(pb::element::Value::AddrPort(pb::AddrPort {
                addr: ip.to_string(),
                port: u32::from(port),
            })),
        },
    }
}

/// The order the compiler gives elements and map keys: by address, then port.
fn order_key(e: Option<&pb::Element>) -> (Option<IpAddr>, u32) {
    match e.and_then(|e| e.value.as_ref()) {
        Some(pb::element::Value::Addr(a)) => (a.parse().ok(), 0),
        Some(pb::element::Value::AddrPort(ap)) => (ap.addr.parse().ok(), ap.port),
        _ => (None, 0),
    }
}

fn has_set(rs: &pb::Ruleset, name: &str) -> bool {
    rs.sets
        .binary_search_by(|s| s.name.as_str().cmp(name))
        .is_ok()
}

fn has_chain(rs: &pb::Ruleset, name: &str) -> bool {
    rs.chains
        .binary_search_by(|c| c.name.as_str().cmp(name))
        .is_ok()
}

/// Sorts a delta's parts, so that two deltas that do the same compare equal.
pub fn normalize_delta(d: &mut pb::RulesetDelta) {
    let key = diff::element_key;
    d.set_changes.sort_by(|a, b| a.set.cmp(&b.set));
    for c in &mut d.set_changes {
        c.add.sort_by_key(key);
        c.remove.sort_by_key(key);
    }
    d.map_changes.sort_by(|a, b| a.map.cmp(&b.map));
    for c in &mut d.map_changes {
        c.add.sort_by_key(|e| e.key.as_ref().map(key));
        c.remove.sort_by_key(key);
    }
    d.add_sets.sort_by(|a, b| a.name.cmp(&b.name));
    d.delete_sets.sort();
    d.add_maps.sort_by(|a, b| a.name.cmp(&b.name));
    d.delete_maps.sort();
    d.add_chains.sort_by(|a, b| a.name.cmp(&b.name));
    d.replace_chains.sort_by(|a, b| a.name.cmp(&b.name));
    d.delete_chains.sort();
}

impl Incremental {
    /// Compiles every node of `inv` at `generation` and indexes what pod
    /// changes need.
    pub fn new(inv: Inventory, generation: u64) -> Self {
        let rulesets = super::compile_all(&inv, generation);
        Self::from_compiled(inv, rulesets, generation)
    }

    /// The state for rulesets already compiled from `inv` (what
    /// [`super::compile_all`] gives, in its order, at any generations; extra
    /// nodes are kept and followed), last changed at `generation`.
    pub fn from_compiled(
        inv: Inventory,
        rulesets: BTreeMap<String, pb::Ruleset>,
        generation: u64,
    ) -> Self {
        let mut s = Self {
            inv,
            generation,
            rulesets,
            set_nodes: HashMap::new(),
            peers: Vec::new(),
            remotes: Vec::new(),
            claims: HashMap::new(),
            simple: false,
        };
        s.index();
        s
    }

    /// Builds every index from `inv` and `rulesets`.
    fn index(&mut self) {
        let inv = &self.inv;
        self.simple = inv.cnps.is_empty()
            && (0..inv.namespaces.len()).all(|n| *inv.namespace_fence(n) == Fence::Open);
        self.set_nodes.clear();
        for (node, rs) in &self.rulesets {
            for s in &rs.sets {
                self.set_nodes
                    .entry(s.name.clone())
                    .or_default()
                    .push(node.clone());
            }
        }
        self.claims.clear();
        for p in &inv.pods {
            for ip in claimed(p) {
                *self.claims.entry(ip).or_default() += 1;
            }
        }
        let mut peers: Vec<PodPeer> = Vec::new();
        let mut peer_ids: HashMap<String, usize> = HashMap::new();
        let mut remotes: Vec<Remote> = Vec::new();
        let mut remote_ids: BTreeSet<String> = BTreeSet::new();
        let hashed_pair = |prefix: char, canonical: &str| {
            FAMILIES.map(|f| names::hashed(&format!("{prefix}{}_", fam_digit(f)), canonical))
        };
        for pol in &inv.policies {
            for dir in [Direction::Ingress, Direction::Egress] {
                for r in pol.rules(dir).unwrap_or_default() {
                    let mut sels: Vec<RemoteSel> = Vec::new();
                    for peer in &r.peers {
                        match peer {
                            Peer::Pods { namespaces, pods } => {
                                let key = peer_key(&pol.namespace, peer);
                                let id = *peer_ids.entry(key.clone()).or_insert_with(|| {
                                    peers.push(PodPeer {
                                        policy_ns: pol.namespace.clone(),
                                        scope: namespaces.clone(),
                                        pods: pods.clone(),
                                        sets: hashed_pair('p', &key),
                                        key: key.clone(),
                                    });
                                    peers.len() - 1
                                });
                                sels.push(RemoteSel::Pods(id));
                            }
                            Peer::IpBlock { cidr, except } => {
                                sels.push(RemoteSel::Block(*cidr, except.clone()));
                            }
                        }
                    }
                    if dir != Direction::Egress {
                        continue;
                    }
                    if r.peers.is_empty() {
                        sels.push(RemoteSel::Any);
                    }
                    for pm in &r.ports {
                        let PortSpec::Named(port) = &pm.port else {
                            continue;
                        };
                        for sel in &sels {
                            let desc = match sel {
                                RemoteSel::Any => "any".to_owned(),
                                RemoteSel::Pods(i) => peers[*i].key.clone(),
                                RemoteSel::Block(c, e) => block_key(c, e),
                            };
                            let sets = hashed_pair('r', &format!("{desc}|{}|{port}", pm.protocol));
                            if remote_ids.insert(sets[0].clone()) {
                                remotes.push(Remote {
                                    sel: match sel {
                                        RemoteSel::Any => RemoteSel::Any,
                                        RemoteSel::Pods(i) => RemoteSel::Pods(*i),
                                        RemoteSel::Block(c, e) => RemoteSel::Block(*c, e.clone()),
                                    },
                                    proto: pm.protocol,
                                    port: port.clone(),
                                    sets,
                                });
                            }
                        }
                    }
                }
            }
        }
        self.peers = peers;
        self.remotes = remotes;
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inv
    }

    /// Every node's ruleset as it stands, in the compiler's order.
    pub fn rulesets(&self) -> &BTreeMap<String, pb::Ruleset> {
        &self.rulesets
    }

    /// The generation of the last change that changed a ruleset.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The addresses of pod `p` by family, as the compiler uses them (owned).
    fn addrs(&self, p: PodId) -> [Option<IpAddr>; 2] {
        let pod = &self.inv.pods[p];
        FAMILIES.map(|f| {
            pod.ips
                .iter()
                .find(|ip| super::family_of(ip) == f && self.inv.pod_by_ip(**ip) == Some(p))
                .copied()
        })
    }

    fn peer_matches(peer: &PodPeer, pod: &Pod, ns_labels: &Labels) -> bool {
        let in_scope = match &peer.scope {
            NamespaceScope::PolicyNamespace => pod.namespace == peer.policy_ns,
            NamespaceScope::Selected(sel) => sel.matches(ns_labels),
        };
        in_scope && peer.pods.matches(&pod.labels)
    }

    /// What pod `p` puts into peer sets (`p4_`, `p6_`, `r4_`, `r6_`), on
    /// whichever nodes hold them.
    fn global(&self, p: PodId) -> BTreeSet<(String, Elem)> {
        let mut out = BTreeSet::new();
        let pod = &self.inv.pods[p];
        if !addressable(pod) {
            return out;
        }
        let addrs = self.addrs(p);
        let ns_labels = self.inv.pod_namespace_labels(p);
        let matched: Vec<bool> = self
            .peers
            .iter()
            .map(|peer| Self::peer_matches(peer, pod, ns_labels))
            .collect();
        for (peer, _) in self.peers.iter().zip(&matched).filter(|(_, m)| **m) {
            for (set, ip) in peer.sets.iter().zip(addrs) {
                if let Some(ip) = ip {
                    out.insert((set.clone(), Elem::Addr(ip)));
                }
            }
        }
        for r in &self.remotes {
            let Some(port) = pod.named_port(&r.port, r.proto) else {
                continue;
            };
            for (set, ip) in r.sets.iter().zip(addrs) {
                let Some(ip) = ip else { continue };
                let covers = match &r.sel {
                    RemoteSel::Any => true,
                    RemoteSel::Pods(i) => matched[*i],
                    RemoteSel::Block(cidr, except) => Peer::ip_block_contains(cidr, except, ip),
                };
                if covers {
                    out.insert((set.clone(), Elem::AddrPort(ip, port)));
                }
            }
        }
        out
    }

    /// The group chains pod `p` uses on its node.
    fn chain_keys(&self, p: PodId) -> BTreeSet<ChainKey> {
        let mut out = BTreeSet::new();
        for dir in [Direction::Egress, Direction::Ingress] {
            let nps = self.inv.selecting(p, dir);
            if !nps.is_empty() {
                out.insert(ChainKey::Rest(dir, nps.to_vec()));
            }
            if dir == Direction::Egress && self.inv.guarded(p) {
                out.insert(ChainKey::Guard(nps.to_vec()));
            }
        }
        out
    }

    fn chain_name(&self, k: &ChainKey) -> String {
        match k {
            ChainKey::Rest(dir, nps) => group_chain_name(&self.inv, *dir, nps),
            ChainKey::Guard(nps) => {
                let rest = if nps.is_empty() {
                    String::new()
                } else {
                    group_chain_name(&self.inv, Direction::Egress, nps)
                };
                names::hashed("g_", &rest)
            }
        }
    }

    /// What pod `p` puts into its node's ruleset; `None` when it has no
    /// node or no address of its own.
    fn local(&self, p: PodId) -> Option<Local> {
        let inv = &self.inv;
        let pod = &inv.pods[p];
        let node = pod.node.clone()?;
        if !addressable(pod) {
            return None;
        }
        let rs = self.rulesets.get(&node);
        let addrs = self.addrs(p);
        let mut items = BTreeSet::new();
        for (set, ip) in [names::LOCAL4, names::LOCAL6].into_iter().zip(addrs) {
            if let Some(ip) = ip {
                items.insert(Item::Set(set.to_owned(), Elem::Addr(ip)));
            }
        }
        let chains = self.chain_keys(p);
        for dir in [Direction::Egress, Direction::Ingress] {
            let nps = inv.selecting(p, dir);
            let rest = (!nps.is_empty()).then(|| group_chain_name(inv, dir, nps));
            let guard = dir == Direction::Egress && inv.guarded(p);
            let target = if guard {
                names::hashed("g_", rest.as_deref().unwrap_or_default())
            } else if let Some(r) = &rest {
                r.clone()
            } else {
                continue;
            };
            let disp = match dir {
                Direction::Egress => Disp::Jump(target),
                Direction::Ingress => Disp::Goto(target),
            };
            for (map, ip) in dir_maps(dir).into_iter().zip(addrs) {
                if let Some(ip) = ip {
                    items.insert(Item::Map(map, ip, disp.clone()));
                }
            }
            // The named ports of the group's own pods (ingress only).
            if let (Direction::Ingress, Some(rest), Some(rs)) = (dir, &rest, rs) {
                for &pid in nps {
                    for r in inv.policies[pid].ingress.iter().flatten() {
                        for pm in &r.ports {
                            let PortSpec::Named(name) = &pm.port else {
                                continue;
                            };
                            let Some(port) = pod.named_port(name, pm.protocol) else {
                                continue;
                            };
                            for (f, ip) in FAMILIES.into_iter().zip(addrs) {
                                let set = names::hashed(
                                    &format!("l{}_", fam_digit(f)),
                                    &format!("{rest}|{}|{name}", pm.protocol),
                                );
                                if let Some(ip) = ip
                                    && has_set(rs, &set)
                                {
                                    items.insert(Item::Set(set, Elem::AddrPort(ip, port)));
                                }
                            }
                        }
                    }
                }
            }
        }
        if inv.guarded(p) {
            // No Admin tier here: a guarded pod's input goes to the guard.
            for (map, ip) in [names::GUARD_IN4, names::GUARD_IN6].into_iter().zip(addrs) {
                if let Some(ip) = ip {
                    items.insert(Item::Map(
                        map,
                        ip,
                        Disp::Jump(names::GUARD_INPUT.to_owned()),
                    ));
                }
            }
        }
        Some(Local {
            node,
            items,
            chains,
            endpoint: super::endpoint(pod),
        })
    }

    /// Why the change cannot take the element path, if it cannot.
    fn refusal(&self, old: Option<PodId>, new: Option<&Pod>) -> Option<&'static str> {
        let inv = &self.inv;
        if !self.simple {
            return Some("ClusterNetworkPolicies or tenant fences");
        }
        let old_pod = old.map(|p| &inv.pods[p]);
        if let Some(n) = new
            && inv.namespace(&n.namespace).is_none()
        {
            return Some("a new namespace");
        }
        // Addresses: each must be the pod's alone, before and after.
        let old_ips = old_pod.map(claimed).unwrap_or_default();
        let new_ips = new.map(claimed).unwrap_or_default();
        for ip in old_ips.iter().chain(&new_ips) {
            let all = self.claims.get(ip).copied().unwrap_or(0);
            if all > u32::from(old_ips.contains(ip)) {
                return Some("an address another pod claims");
            }
        }
        // Quarantines: what covers the pod, and forensics sources naming it.
        let new_cov: Vec<usize> = match new {
            Some(n) if !n.host_network => (0..inv.quarantines.len())
                .filter(|&q| inv.quarantines[q].covers(n))
                .collect(),
            _ => Vec::new(),
        };
        let old_cov = old.map(|p| inv.quarantines_of(p)).unwrap_or_default();
        let same_addressing =
            old_pod.map(|p| (addressable(p), &p.ips)) == new.map(|p| (addressable(p), &p.ips));
        if old_cov != new_cov.as_slice() || (!old_cov.is_empty() && !same_addressing) {
            return Some("a quarantine");
        }
        if !same_addressing {
            let named = |p: &Pod| {
                inv.quarantines.iter().any(|q| {
                    q.allow_from.iter().any(|s| {
                        matches!(s, Source::Pod { namespace, name }
                            if *namespace == p.namespace && *name == p.name)
                    })
                })
            };
            if old_pod.is_some_and(named) || new.is_some_and(named) {
                return Some("a quarantine's forensics source");
            }
        }
        None
    }

    /// Applies a pod change and returns the deltas of the nodes it changes,
    /// under the next generation.
    pub fn pod_changed(&mut self, change: PodChange) -> Outcome {
        self.pod_changed_at(change, self.generation + 1)
    }

    /// [`Incremental::pod_changed`], stamping `next` on the rulesets that
    /// change (several changes may share one generation: then a node's
    /// second delta has `next` for base).
    pub fn pod_changed_at(&mut self, change: PodChange, next: u64) -> Outcome {
        let (namespace, name) = match &change {
            PodChange::Upsert(p) => (p.namespace.clone(), p.name.clone()),
            PodChange::Remove { namespace, name } => (namespace.clone(), name.clone()),
        };
        let old = self.inv.pod_id(&namespace, &name);
        let new_pod = match &change {
            PodChange::Upsert(p) => Some(p),
            PodChange::Remove { .. } => None,
        };
        if old.is_none() && new_pod.is_none() {
            return Outcome {
                deltas: BTreeMap::new(),
                added: BTreeMap::new(),
                path: Path::Elements,
            };
        }
        if let Some(reason) = self.refusal(old, new_pod) {
            self.apply_to_inventory(change);
            self.index();
            return self.recompile(None, Path::Full(reason), next);
        }
        let new_node = new_pod.and_then(|p| p.node.clone());
        let old_local = old.and_then(|p| self.local(p));
        let old_global = old.map(|p| self.global(p)).unwrap_or_default();
        self.apply_to_inventory(change);
        let new = self.inv.pod_id(&namespace, &name);
        let new_local = new.and_then(|p| self.local(p));
        let new_global = new.map(|p| self.global(p)).unwrap_or_default();

        // Nodes whose group chains change: recompiled alone.
        let mut recompile: BTreeSet<String> = BTreeSet::new();
        if let Some(n) = new_node
            && !self.rulesets.contains_key(&n)
        {
            recompile.insert(n);
        }
        if let Some(nl) = &new_local {
            match self.rulesets.get(&nl.node) {
                Some(rs) if nl.chains.iter().all(|c| has_chain(rs, &self.chain_name(c))) => {}
                _ => {
                    recompile.insert(nl.node.clone());
                }
            }
        }
        if let Some(ol) = &old_local {
            let kept = match &new_local {
                Some(nl) if nl.node == ol.node => nl.chains.clone(),
                _ => BTreeSet::new(),
            };
            let lost: Vec<&ChainKey> = ol.chains.difference(&kept).collect();
            if !lost.is_empty() && !self.still_used(&ol.node, (&namespace, &name), &lost) {
                recompile.insert(ol.node.clone());
            }
        }

        let mut adds: BTreeMap<String, BTreeSet<Item>> = BTreeMap::new();
        let mut removes: BTreeMap<String, BTreeSet<Item>> = BTreeMap::new();
        for (set, e) in old_global.difference(&new_global) {
            for n in self.set_nodes.get(set).into_iter().flatten() {
                removes
                    .entry(n.clone())
                    .or_default()
                    .insert(Item::Set(set.clone(), *e));
            }
        }
        for (set, e) in new_global.difference(&old_global) {
            for n in self.set_nodes.get(set).into_iter().flatten() {
                adds.entry(n.clone())
                    .or_default()
                    .insert(Item::Set(set.clone(), *e));
            }
        }
        let none = BTreeSet::new();
        let old_items = old_local.as_ref().map_or(&none, |l| &l.items);
        let new_items = new_local.as_ref().map_or(&none, |l| &l.items);
        let same_node = match (&old_local, &new_local) {
            (Some(o), Some(n)) => o.node == n.node,
            _ => false,
        };
        if let Some(ol) = &old_local {
            let gone = old_items
                .iter()
                .filter(|i| !same_node || !new_items.contains(i));
            removes
                .entry(ol.node.clone())
                .or_default()
                .extend(gone.cloned());
        }
        if let Some(nl) = &new_local {
            let came = new_items
                .iter()
                .filter(|i| !same_node || !old_items.contains(i));
            adds.entry(nl.node.clone())
                .or_default()
                .extend(came.cloned());
        }
        let mut endpoint_nodes: BTreeSet<&str> = BTreeSet::new();
        let old_ep = old_local.as_ref().map(|l| (l.node.as_str(), &l.endpoint));
        let new_ep = new_local.as_ref().map(|l| (l.node.as_str(), &l.endpoint));
        if old_ep != new_ep {
            endpoint_nodes.extend(old_ep.map(|e| e.0));
            endpoint_nodes.extend(new_ep.map(|e| e.0));
        }

        let mut deltas = BTreeMap::new();
        let touched: BTreeSet<String> = adds
            .keys()
            .chain(removes.keys())
            .cloned()
            .chain(endpoint_nodes.iter().map(|n| (*n).to_owned()))
            .filter(|n| !recompile.contains(n))
            .collect();
        for node in touched {
            let Some(rs) = self.rulesets.get_mut(&node) else {
                continue;
            };
            let d = element_delta(
                rs,
                next,
                adds.get(&node).unwrap_or(&none),
                removes.get(&node).unwrap_or(&none),
                endpoint_nodes.contains(node.as_str()).then_some((
                    &namespace,
                    &name,
                    new_local.as_ref().filter(|l| l.node == node),
                )),
            );
            if !diff::is_empty(&d) {
                apply_in_place(rs, &d);
                deltas.insert(node, d);
            }
        }
        let path = if recompile.is_empty() {
            Path::Elements
        } else {
            Path::Nodes(recompile.len())
        };
        let mut out = self.recompile(Some(&recompile), path, next);
        out.deltas.extend(deltas);
        if !out.deltas.is_empty() || !out.added.is_empty() {
            self.generation = self.generation.max(next);
        }
        out
    }

    /// Whether another pod of `node` than `except` uses each of `chains`.
    fn still_used(&self, node: &str, except: (&str, &str), chains: &[&ChainKey]) -> bool {
        let inv = &self.inv;
        chains.iter().all(|k| {
            inv.pods.iter().enumerate().any(|(q, pod)| {
                pod.node.as_deref() == Some(node)
                    && addressable(pod)
                    && (pod.namespace.as_str(), pod.name.as_str()) != except
                    && match k {
                        ChainKey::Rest(dir, nps) => inv.selecting(q, *dir) == nps.as_slice(),
                        ChainKey::Guard(nps) => {
                            inv.guarded(q) && inv.selecting(q, Direction::Egress) == nps.as_slice()
                        }
                    }
            })
        })
    }

    fn apply_to_inventory(&mut self, change: PodChange) {
        let old = match &change {
            PodChange::Upsert(p) => self.inv.pod_id(&p.namespace, &p.name),
            PodChange::Remove { namespace, name } => self.inv.pod_id(namespace, name),
        };
        if let Some(p) = old {
            for ip in claimed(&self.inv.pods[p]) {
                if let Some(c) = self.claims.get_mut(&ip) {
                    *c = c.saturating_sub(1);
                }
            }
        }
        match change {
            PodChange::Upsert(p) => {
                for ip in claimed(&p) {
                    *self.claims.entry(ip).or_default() += 1;
                }
                if let Err(p) = self.inv.upsert_pod(p) {
                    // A namespace of its own: rebuild (indexes shift).
                    let mut objects = self.inv.objects();
                    objects.push(crate::model::Object::Pod(*p));
                    self.inv = Inventory::new(objects).0;
                }
            }
            PodChange::Remove { namespace, name } => {
                self.inv.remove_pod(&namespace, &name);
            }
        }
    }

    /// Recompiles `only` these nodes (every node, and nodes the inventory
    /// now has, when `None`) and diffs them against what they had.
    fn recompile(&mut self, only: Option<&BTreeSet<String>>, path: Path, next: u64) -> Outcome {
        let mut out = Outcome {
            deltas: BTreeMap::new(),
            added: BTreeMap::new(),
            path,
        };
        let nodes: BTreeSet<String> = match only {
            Some(n) => n.clone(),
            None => node_names(&self.inv)
                .into_iter()
                .chain(self.rulesets.keys().cloned())
                .collect(),
        };
        if nodes.is_empty() {
            return out;
        }
        let mut c = Compiler::new(&self.inv);
        for node in nodes {
            let rs = c.node(&node, next);
            match self.rulesets.get(&node) {
                Some(old) => {
                    let d = diff::diff(old, &rs);
                    if diff::is_empty(&d) {
                        continue;
                    }
                    for s in &old.sets {
                        if let Some(v) = self.set_nodes.get_mut(&s.name) {
                            v.retain(|n| *n != node);
                        }
                    }
                    out.deltas.insert(node.clone(), d);
                }
                None => {
                    out.added.insert(node.clone(), rs.clone());
                }
            }
            for s in &rs.sets {
                self.set_nodes
                    .entry(s.name.clone())
                    .or_default()
                    .push(node.clone());
            }
            self.rulesets.insert(node, rs);
        }
        if only.is_none() && (!out.deltas.is_empty() || !out.added.is_empty()) {
            self.generation = self.generation.max(next);
        }
        out
    }
}

fn map_disp(d: &Disp) -> Option<pb::Verdict> {
    verdict(match d {
        Disp::Jump(t) => V::Jump(t.clone()),
        Disp::Goto(t) => V::Goto(t.clone()),
    })
}

/// The delta of element adds and removes on `rs` (and, when `endpoint` is
/// given, the pod's endpoint replaced by the one of its new local state).
fn element_delta(
    rs: &pb::Ruleset,
    generation: u64,
    adds: &BTreeSet<Item>,
    removes: &BTreeSet<Item>,
    endpoint: Option<(&String, &String, Option<&Local>)>,
) -> pb::RulesetDelta {
    let mut d = pb::RulesetDelta {
        node: rs.node.clone(),
        base_generation: rs.generation,
        generation,
        ..Default::default()
    };
    let mut sets: BTreeMap<&str, pb::SetChange> = BTreeMap::new();
    let mut maps: BTreeMap<&str, pb::MapChange> = BTreeMap::new();
    for (item, add) in removes
        .iter()
        .map(|i| (i, false))
        .chain(adds.iter().map(|i| (i, true)))
    {
        match item {
            Item::Set(set, e) => {
                let c = sets.entry(set).or_insert_with(|| pb::SetChange {
                    set: set.clone(),
                    ..Default::default()
                });
                if add {
                    c.add.push(elem(*e));
                } else {
                    c.remove.push(elem(*e));
                }
            }
            Item::Map(map, ip, disp) => {
                let c = maps.entry(map).or_insert_with(|| pb::MapChange {
                    map: (*map).to_owned(),
                    ..Default::default()
                });
                if add {
                    c.add.push(pb::MapEntry {
                        key: Some(addr_element(*ip)),
                        verdict: map_disp(disp),
                    });
                } else {
                    c.remove.push(addr_element(*ip));
                }
            }
        }
    }
    d.set_changes = sets.into_values().collect();
    d.map_changes = maps.into_values().collect();
    if let Some((namespace, name, local)) = endpoint {
        let mut eps = rs.endpoints.clone();
        eps.retain(|e| (&e.namespace, &e.name) != (namespace, name));
        if let Some(l) = local {
            let at = eps.partition_point(|e| {
                (e.namespace.as_str(), e.name.as_str()) < (namespace.as_str(), name.as_str())
            });
            eps.insert(at, l.endpoint.clone());
        }
        if eps != rs.endpoints {
            d.endpoints = Some(pb::EndpointList { endpoints: eps });
        }
    }
    d
}

/// Applies an element delta (set and map changes, endpoints) in place,
/// keeping the compiler's order.
fn apply_in_place(rs: &mut pb::Ruleset, d: &pb::RulesetDelta) {
    rs.generation = d.generation;
    for c in &d.set_changes {
        let Ok(i) = rs.sets.binary_search_by(|s| s.name.as_str().cmp(&c.set)) else {
            continue;
        };
        let els = &mut rs.sets[i].elements;
        for e in &c.remove {
            els.retain(|x| x != e);
        }
        for e in &c.add {
            let k = order_key(Some(e));
            let at = els.partition_point(|x| order_key(Some(x)) < k);
            els.insert(at, e.clone());
        }
    }
    for c in &d.map_changes {
        let Some(m) = rs.maps.iter_mut().find(|m| m.name == c.map) else {
            continue;
        };
        for k in &c.remove {
            m.entries.retain(|x| x.key.as_ref() != Some(k));
        }
        for e in &c.add {
            let k = order_key(e.key.as_ref());
            let at = m.entries.partition_point(|x| order_key(x.key.as_ref()) < k);
            m.entries.insert(at, e.clone());
        }
    }
    if let Some(e) = &d.endpoints {
        rs.endpoints = e.endpoints.clone();
    }
}

fn key(p: &Pod) -> (&str, &str) {
    (p.namespace.as_str(), p.name.as_str())
}

/// The pod changes that turn `old` into `new`, when nothing but pods differs
/// between them; `None` otherwise.
pub fn pod_changes(old: &Inventory, new: &Inventory) -> Option<Vec<PodChange>> {
    let same = old.namespaces == new.namespaces
        && old.nodes == new.nodes
        && old.policies == new.policies
        && old.config == new.config
        && old.cnps == new.cnps
        && old.tenants == new.tenants
        && old.quarantines == new.quarantines
        && old.api_vips == new.api_vips
        && old.api_endpoints == new.api_endpoints;
    if !same {
        return None;
    }
    let mut out = Vec::new();
    let (mut a, mut b) = (old.pods.iter().peekable(), new.pods.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(o), Some(n)) if key(o) == key(n) => {
                if o != n {
                    out.push(PodChange::Upsert((*n).clone()));
                }
                a.next();
                b.next();
            }
            (Some(o), Some(n)) if key(o) < key(n) => {
                out.push(PodChange::Remove {
                    namespace: o.namespace.clone(),
                    name: o.name.clone(),
                });
                a.next();
            }
            (Some(o), None) => {
                out.push(PodChange::Remove {
                    namespace: o.namespace.clone(),
                    name: o.name.clone(),
                });
                a.next();
            }
            (_, Some(n)) => {
                out.push(PodChange::Upsert((*n).clone()));
                b.next();
            }
        }
    }
    Some(out)
}
