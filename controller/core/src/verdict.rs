//! The verdict engine: the one function that decides whether a connection is
//! allowed, and why. Every consumer uses it: `explain`, the reachability
//! matrix, the ruleset compiler's tests and the flow log's annotation.
//!
//! A connection is allowed when the source may send it (egress, at the source
//! pod) and the destination may receive it (ingress, at the destination pod).
//! In each direction a pod is isolated when some NetworkPolicy with that policy
//! type selects it; an isolated pod allows what the union of those policies'
//! rules allows. Traffic of a pod to itself and between a pod and its own node
//! is always allowed.

use std::net::IpAddr;

use serde::Serialize;

use crate::cnp::{Action, Tier};
use crate::inventory::{CnpId, Inventory, PodId, PolicyId, TenantId};
use crate::model::{
    Direction, NamespaceScope, Peer, PolicyMode, PortMatch, PortSpec, Protocol, Rule,
};

/// One end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Endpoint {
    Pod(PodId),
    /// An address that is not a pod's: outside the cluster, or a node.
    Ip(IpAddr),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Query {
    pub src: Endpoint,
    pub dst: Endpoint,
    pub protocol: Protocol,
    pub port: u16,
    /// The address family of the connection, when it is known (a pod named
    /// by one of its addresses). `None`: the destination's primary family.
    pub family: Option<Family>,
}

/// An IP address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

impl Query {
    /// A query in the destination's primary address family.
    pub fn new(src: Endpoint, dst: Endpoint, protocol: Protocol, port: u16) -> Self {
        Query {
            src,
            dst,
            protocol,
            port,
            family: None,
        }
    }
}

/// A rule that allowed a connection: `policy`'s rule number `rule` (0-based)
/// in the direction of the side it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct RuleRef {
    pub policy: PolicyId,
    pub rule: usize,
}

/// Why traffic is allowed whatever the policies say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Implicit {
    /// A pod cannot block traffic to itself.
    SamePod,
    /// Traffic between a pod and the node it runs on is always allowed.
    OwnNode,
}

/// The verdict of one direction (egress at the source, or ingress at the
/// destination).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "result")]
pub enum Side {
    /// This end is not a pod: no NetworkPolicy applies here.
    NotAPod,
    /// A host-network pod: NetworkPolicy does not select it.
    HostNetwork,
    Implicit {
        reason: Implicit,
    },
    /// No policy selects the pod in this direction.
    NotIsolated,
    /// Isolated by `isolated_by`; `allowed_by` are the rules that allow it.
    Allowed {
        isolated_by: Vec<PolicyId>,
        allowed_by: Vec<RuleRef>,
    },
    /// Isolated by `isolated_by`, and no rule of theirs allows it.
    Denied {
        isolated_by: Vec<PolicyId>,
    },
    /// Denied by tenant fences: the tenants (ids into `inv.tenants`) whose
    /// fence the connection crosses without an exception, or `own` when the
    /// namespace is untenanted and untenanted namespaces are Isolated.
    Fenced {
        tenants: Vec<TenantId>,
        own: bool,
    },
    /// Decided by a ClusterNetworkPolicy rule's Accept or Deny.
    ClusterPolicy {
        tier: Tier,
        policy: CnpId,
        rule: usize,
        action: Action,
    },
    /// Denied by the API guard: an untrusted pod to a guarded address (see
    /// [`crate::guard`]); `mode` is the guard's (`Enforce` or `Monitor`).
    Guarded {
        target: crate::guard::Target,
        mode: crate::model::GuardMode,
    },
}

impl Side {
    pub fn allows(&self) -> bool {
        !matches!(
            self,
            Side::Denied { .. }
                | Side::Fenced { .. }
                | Side::Guarded { .. }
                | Side::ClusterPolicy {
                    action: Action::Deny,
                    ..
                }
        )
    }
}

/// What happened on the way to a side's decision without deciding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Note {
    /// A Pass rule handed the decision to the next tier.
    Passed {
        direction: Direction,
        tier: Tier,
        policy: CnpId,
        rule: usize,
    },
    /// A tenant's exception (index in its allowFrom or allowTo) let the
    /// connection through the tenant's fence.
    FenceException {
        direction: Direction,
        tenant: TenantId,
        exception: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// What the policies say: both sides allow it.
    pub allowed: bool,
    /// What the dataplane does: a side denies it and that side's namespace is
    /// in `Enforce` mode (see [`dropped_by_modes`]), or a Quarantine denies it.
    pub dropped: bool,
    /// Set when a Quarantine decided (it overrides everything after it,
    /// whatever the namespace modes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<crate::quarantine::QuarantineVerdict>,
    /// At the source.
    pub egress: Side,
    /// At the destination.
    pub ingress: Side,
    /// Passes and fence exceptions on the way, egress first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<Note>,
    /// The mode of the source pod's namespace (`None`: not a pod).
    pub egress_mode: Option<PolicyMode>,
    /// The mode of the destination pod's namespace.
    pub ingress_mode: Option<PolicyMode>,
}

/// What happens to a connection, as flow records name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    Allowed,
    /// Denied and dropped.
    Denied,
    /// Denied by policy, allowed because the denying side's namespace is in
    /// `Learn` or `Monitor` mode.
    WouldDeny,
}

impl Verdict {
    pub fn outcome(&self) -> Outcome {
        match (self.allowed, self.dropped) {
            (true, _) => Outcome::Allowed,
            (false, true) => Outcome::Denied,
            (false, false) => Outcome::WouldDeny,
        }
    }
}

/// Modes decide per side: a side's denial drops the connection only when that
/// side's pod is in an `Enforce` namespace. So a `learn` namespace never has
/// its own policies drop anything, and can never make another namespace's
/// enforced policy let traffic through: egress is the source namespace's
/// business, ingress the destination's.
pub fn dropped_by_modes(
    egress_denies: bool,
    egress_mode: Option<PolicyMode>,
    ingress_denies: bool,
    ingress_mode: Option<PolicyMode>,
) -> bool {
    let enforced = |m: Option<PolicyMode>| m.unwrap_or(PolicyMode::Enforce) == PolicyMode::Enforce;
    (egress_denies && enforced(egress_mode)) || (ingress_denies && enforced(ingress_mode))
}

/// The mode a side's decision is taken in: a namespace's mode governs its
/// own NetworkPolicies; the cluster tiers (tenant fences, Admin and Baseline
/// ClusterNetworkPolicies) belong to the cluster's admins and always enforce.
fn mode_for(side: &Side, namespace_mode: Option<PolicyMode>) -> Option<PolicyMode> {
    match side {
        Side::Fenced { .. } | Side::ClusterPolicy { .. } => Some(PolicyMode::Enforce),
        // The guard has its own mode, whatever the namespace's.
        Side::Guarded { mode, .. } => Some(match mode {
            crate::model::GuardMode::Monitor => PolicyMode::Monitor,
            _ => PolicyMode::Enforce,
        }),
        _ => namespace_mode,
    }
}

fn side_mode(inv: &Inventory, e: Endpoint) -> Option<PolicyMode> {
    match e {
        Endpoint::Pod(p) => Some(inv.namespace_mode(&inv.pods[p].namespace)),
        Endpoint::Ip(_) => None,
    }
}

/// How much the engine records: everything (for `explain`) or just the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Detail {
    Full,
    Answer,
}

/// The verdict for a query, naming every policy and rule that decided it.
pub fn evaluate(inv: &Inventory, q: &Query) -> Verdict {
    let (src_ip, dst_ip) = query_addresses(inv, q);
    let mut notes = Vec::new();
    let egress = side(inv, q, Direction::Egress, dst_ip, Detail::Full, &mut notes);
    let ingress = side(inv, q, Direction::Ingress, src_ip, Detail::Full, &mut notes);
    let (egress_mode, ingress_mode) = (side_mode(inv, q.src), side_mode(inv, q.dst));
    // 1. Quarantine, before everything else; it always drops, whatever the
    // namespace modes: it is an incident response, not a policy to learn.
    let quarantine = crate::quarantine::decide(inv, q, src_ip, dst_ip);
    let (allowed, dropped) = match &quarantine {
        Some(qv) => (qv.allows(), !qv.allows()),
        None => (
            egress.allows() && ingress.allows(),
            dropped_by_modes(
                !egress.allows(),
                mode_for(&egress, egress_mode),
                !ingress.allows(),
                mode_for(&ingress, ingress_mode),
            ),
        ),
    };
    Verdict {
        allowed,
        dropped,
        quarantine,
        egress,
        ingress,
        egress_mode,
        ingress_mode,
        notes,
    }
}

/// Whether the dataplane lets the connection through: the policies allow it,
/// or every side that denies it is in `Learn` or `Monitor` mode.
pub fn passes(inv: &Inventory, q: &Query) -> bool {
    let (src_ip, dst_ip) = query_addresses(inv, q);
    if let Some(qv) = crate::quarantine::decide(inv, q, src_ip, dst_ip) {
        return qv.allows();
    }
    let mut notes = Vec::new();
    let e = side(
        inv,
        q,
        Direction::Egress,
        dst_ip,
        Detail::Answer,
        &mut notes,
    );
    let i = side(
        inv,
        q,
        Direction::Ingress,
        src_ip,
        Detail::Answer,
        &mut notes,
    );
    !dropped_by_modes(
        !e.allows(),
        mode_for(&e, side_mode(inv, q.src)),
        !i.allows(),
        mode_for(&i, side_mode(inv, q.dst)),
    )
}

/// The same decision as [`evaluate`], without collecting the reasons.
pub fn allowed(inv: &Inventory, q: &Query) -> bool {
    let (src_ip, dst_ip) = query_addresses(inv, q);
    if let Some(qv) = crate::quarantine::decide(inv, q, src_ip, dst_ip) {
        return qv.allows();
    }
    let mut notes = Vec::new();
    side(
        inv,
        q,
        Direction::Egress,
        dst_ip,
        Detail::Answer,
        &mut notes,
    )
    .allows()
        && side(
            inv,
            q,
            Direction::Ingress,
            src_ip,
            Detail::Answer,
            &mut notes,
        )
        .allows()
}

/// The addresses the connection of a query uses.
pub fn query_addresses(inv: &Inventory, q: &Query) -> (Option<IpAddr>, Option<IpAddr>) {
    match q.family {
        None => addresses(inv, q.src, q.dst),
        Some(f) => {
            let pick = |e: Endpoint| match e {
                Endpoint::Ip(ip) => Some(ip),
                Endpoint::Pod(p) => pod_ips(inv, p)
                    .iter()
                    .find(|ip| Family::of(ip) == f)
                    .copied(),
            };
            (pick(q.src), pick(q.dst))
        }
    }
}

fn pod_ips(inv: &Inventory, p: PodId) -> &[IpAddr] {
    let pod = &inv.pods[p];
    if pod.host_network {
        pod_host_ips(inv, p)
    } else {
        &pod.ips
    }
}

/// The addresses a connection between two endpoints uses: a pod's address in
/// the family of the other end (the destination's primary family first).
pub fn addresses(
    inv: &Inventory,
    src: Endpoint,
    dst: Endpoint,
) -> (Option<IpAddr>, Option<IpAddr>) {
    let ips = |e: Endpoint| -> &[IpAddr] {
        match e {
            Endpoint::Pod(p) => pod_ips(inv, p),
            Endpoint::Ip(_) => &[],
        }
    };
    match (src, dst) {
        (Endpoint::Ip(s), Endpoint::Ip(d)) => (Some(s), Some(d)),
        (Endpoint::Ip(s), d) => (
            Some(s),
            ips(d)
                .iter()
                .find(|ip| ip.is_ipv4() == s.is_ipv4())
                .copied(),
        ),
        (s, Endpoint::Ip(d)) => (
            ips(s)
                .iter()
                .find(|ip| ip.is_ipv4() == d.is_ipv4())
                .copied(),
            Some(d),
        ),
        (s, d) => {
            let (s, d) = (ips(s), ips(d));
            let families = d
                .first()
                .map(|f| [f.is_ipv4(), !f.is_ipv4()])
                .unwrap_or([true, false]);
            for v4 in families {
                let a = s.iter().find(|ip| ip.is_ipv4() == v4);
                let b = d.iter().find(|ip| ip.is_ipv4() == v4);
                if let (Some(a), Some(b)) = (a, b) {
                    return (Some(*a), Some(*b));
                }
            }
            (s.first().copied(), d.first().copied())
        }
    }
}

fn pod_host_ips(inv: &Inventory, pod: PodId) -> &[IpAddr] {
    match inv.pod_node(pod) {
        Some(node) if !node.addresses.is_empty() => &node.addresses,
        _ => &inv.pods[pod].ips,
    }
}

/// One direction. `dir` names the side: egress is decided at `q.src`, ingress
/// at `q.dst`; `peer_ip` is the address of the other end.
fn side(
    inv: &Inventory,
    q: &Query,
    dir: Direction,
    peer_ip: Option<IpAddr>,
    detail: Detail,
    notes: &mut Vec<Note>,
) -> Side {
    let (this, peer) = match dir {
        Direction::Egress => (q.src, q.dst),
        Direction::Ingress => (q.dst, q.src),
    };
    let Endpoint::Pod(pod) = this else {
        return Side::NotAPod;
    };
    if inv.pods[pod].host_network {
        return Side::HostNetwork;
    }
    if peer == this {
        return Side::Implicit {
            reason: Implicit::SamePod,
        };
    }
    // A host-network pod is, to NetworkPolicy, its node's address.
    let peer = match peer {
        Endpoint::Pod(p) if inv.pods[p].host_network => match peer_ip {
            Some(ip) => Endpoint::Ip(ip),
            None => peer,
        },
        other => other,
    };
    let dst_pod = match q.dst {
        Endpoint::Pod(p) if !inv.pods[p].host_network => Some(p),
        _ => None,
    };
    let at = crate::tiers::At {
        q,
        dir,
        pod,
        peer,
        peer_ip,
        dst_pod,
        detail,
    };
    if let (Endpoint::Ip(ip), Some(node)) = (peer, inv.pod_node(pod))
        && node.addresses.contains(&ip)
    {
        // Between a pod and its own node: allowed, but for the API guard.
        if dir == Direction::Egress
            && let Some(target) = crate::guard::check(inv, pod, Some(ip))
        {
            return crate::tiers::own_node_guarded(inv, &at, target, notes);
        }
        return Side::Implicit {
            reason: Implicit::OwnNode,
        };
    }
    crate::tiers::decide(inv, &at, notes)
}

/// The NetworkPolicy tier of one side: `NotIsolated` when no policy selects
/// the pod in `dir`.
pub(crate) fn np_side(inv: &Inventory, at: &crate::tiers::At<'_>) -> Side {
    let crate::tiers::At {
        q,
        dir,
        pod,
        peer,
        peer_ip,
        dst_pod,
        detail,
    } = *at;
    let selecting = inv.selecting(pod, dir);
    if selecting.is_empty() {
        return Side::NotIsolated;
    }
    let mut allowed_by = Vec::new();
    for &pid in selecting {
        let policy = &inv.policies[pid];
        let rules = policy.rules(dir).unwrap_or_default();
        for (i, rule) in rules.iter().enumerate() {
            if rule_matches(inv, &policy.namespace, rule, peer, peer_ip, dst_pod, q) {
                allowed_by.push(RuleRef {
                    policy: pid,
                    rule: i,
                });
                if detail == Detail::Answer {
                    return Side::Allowed {
                        isolated_by: Vec::new(),
                        allowed_by,
                    };
                }
            }
        }
    }
    if allowed_by.is_empty() {
        Side::Denied {
            isolated_by: selecting.to_vec(),
        }
    } else {
        Side::Allowed {
            isolated_by: selecting.to_vec(),
            allowed_by,
        }
    }
}

pub(crate) fn rule_matches(
    inv: &Inventory,
    policy_ns: &str,
    rule: &Rule,
    peer: Endpoint,
    peer_ip: Option<IpAddr>,
    dst_pod: Option<PodId>,
    q: &Query,
) -> bool {
    let ports_ok =
        rule.ports.is_empty() || rule.ports.iter().any(|p| port_matches(inv, p, dst_pod, q));
    ports_ok
        && (rule.peers.is_empty()
            || rule
                .peers
                .iter()
                .any(|p| peer_matches(inv, policy_ns, p, peer, peer_ip)))
}

/// Whether a rule's port entry matches the connection. Named ports resolve
/// against the destination pod's container ports: the same name may mean a
/// different number on every pod, and nothing outside the cluster.
pub fn port_matches(inv: &Inventory, pm: &PortMatch, dst_pod: Option<PodId>, q: &Query) -> bool {
    if pm.protocol != q.protocol {
        return false;
    }
    match &pm.port {
        PortSpec::Any => true,
        PortSpec::Number(n) => *n == q.port,
        PortSpec::Range(a, b) => (*a..=*b).contains(&q.port),
        PortSpec::Named(name) => {
            dst_pod.and_then(|p| inv.pods[p].named_port(name, q.protocol)) == Some(q.port)
        }
    }
}

/// Whether a peer of a rule of a policy in `policy_ns` matches the other end.
pub fn peer_matches(
    inv: &Inventory,
    policy_ns: &str,
    peer: &Peer,
    other: Endpoint,
    other_ip: Option<IpAddr>,
) -> bool {
    match peer {
        Peer::Pods { namespaces, pods } => {
            let Endpoint::Pod(p) = other else {
                return false;
            };
            let pod = &inv.pods[p];
            let ns_ok = match namespaces {
                NamespaceScope::PolicyNamespace => pod.namespace == policy_ns,
                NamespaceScope::Selected(sel) => sel.matches(inv.pod_namespace_labels(p)),
            };
            ns_ok && pods.matches(&pod.labels)
        }
        Peer::IpBlock { cidr, except } => {
            other_ip.is_some_and(|ip| Peer::ip_block_contains(cidr, except, ip))
        }
    }
}

/// Every pod to every pod, in inventory order (sorted by `namespace/name`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix {
    pub protocol: Protocol,
    pub port: u16,
    /// `allowed[src][dst]`.
    pub allowed: Vec<Vec<bool>>,
}

/// The reachability matrix for one port and protocol.
pub fn reachability(inv: &Inventory, protocol: Protocol, port: u16) -> Matrix {
    let allowed = (0..inv.pods.len())
        .map(|src| reachability_from(inv, Endpoint::Pod(src), protocol, port))
        .collect();
    Matrix {
        protocol,
        port,
        allowed,
    }
}

/// One row of the matrix: from `src` to every pod.
pub fn reachability_from(
    inv: &Inventory,
    src: Endpoint,
    protocol: Protocol,
    port: u16,
) -> Vec<bool> {
    (0..inv.pods.len())
        .map(|dst| allowed(inv, &Query::new(src, Endpoint::Pod(dst), protocol, port)))
        .collect()
}
