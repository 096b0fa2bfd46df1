//! The tiers of one side of a connection (egress at the source pod, ingress
//! at the destination pod), in order. This is the one place the order lives;
//! a new step (the API guard, quarantine) goes in front of the others in
//! [`decide`].
//!
//! ```text
//!   1. tenant fences      deny what crosses a fence without an exception
//!   2. Admin tier         ClusterNetworkPolicy tier Admin, by (priority, name),
//!                         rules in order: Accept / Deny decide, Pass skips the
//!                         rest of the Admin tier
//!   2½. API guard         egress of an untrusted pod to the API server, a node
//!                         or the metadata address: denied (see crate::guard)
//!   3. NetworkPolicy      decides for a pod it isolates in this direction
//!   4. Baseline tier      as Admin; Pass goes to the default
//!   5. default            allow
//! ```
//!
//! Fences come before every Admin ClusterNetworkPolicy so that no cluster
//! policy (whoever wrote it) opens a hole in a tenant boundary by accident:
//! the Tenant's own exceptions are the one way through. An exception only
//! lifts the fence; the tiers after it still apply.

use std::net::IpAddr;

use crate::cnp::{Action, CnpPeer, CnpRule, Tier};
use crate::inventory::{Inventory, PodId, TenantId};
use crate::model::Direction;
use crate::tenant::Fence;
use crate::verdict::{self, Detail, Endpoint, Note, Query, Side};

/// Where a side is decided: the query, the direction, the pod this side
/// belongs to, the other end (a host-network pod already as its address) and
/// the destination pod (for named ports).
#[derive(Clone, Copy, Debug)]
pub(crate) struct At<'q> {
    pub q: &'q Query,
    pub dir: Direction,
    pub pod: PodId,
    pub peer: Endpoint,
    pub peer_ip: Option<IpAddr>,
    pub dst_pod: Option<PodId>,
    pub detail: Detail,
}

/// The decision of one side, through every tier in order.
pub(crate) fn decide(inv: &Inventory, at: &At<'_>, notes: &mut Vec<Note>) -> Side {
    if let Some(denied) = fence(inv, at, notes) {
        return denied;
    }
    if let Some(decided) = cluster_tier(inv, at, Tier::Admin, notes) {
        return decided;
    }
    if at.dir == Direction::Egress
        && let Some(target) = crate::guard::check(inv, at.pod, at.peer_ip)
    {
        return guarded(inv, target);
    }
    match verdict::np_side(inv, at) {
        Side::NotIsolated => {}
        decided => return decided,
    }
    if let Some(decided) = cluster_tier(inv, at, Tier::Baseline, notes) {
        return decided;
    }
    Side::NotIsolated
}

fn guarded(inv: &Inventory, target: crate::guard::Target) -> Side {
    Side::Guarded {
        target,
        mode: inv.config.api_guard.mode,
    }
}

/// A guarded pod to its own node: only an Admin `Accept` (the tier's first
/// matching rule) lets it through; anything else is the guard's.
pub(crate) fn own_node_guarded(
    inv: &Inventory,
    at: &At<'_>,
    target: crate::guard::Target,
    notes: &mut Vec<Note>,
) -> Side {
    match cluster_tier(inv, at, Tier::Admin, notes) {
        Some(
            accepted @ Side::ClusterPolicy {
                action: Action::Accept,
                ..
            },
        ) => accepted,
        _ => guarded(inv, target),
    }
}

/// The first Accept or Deny of the tier's policies for this side; `None`
/// when no rule matches or a Pass hands the decision on.
fn cluster_tier(inv: &Inventory, at: &At<'_>, tier: Tier, notes: &mut Vec<Note>) -> Option<Side> {
    for &cid in inv.cnp_selecting(at.pod, tier, at.dir) {
        for (i, rule) in inv.cnps[cid].rules(at.dir).iter().enumerate() {
            if !cnp_rule_matches(inv, rule, at) {
                continue;
            }
            if rule.action == Action::Pass {
                if at.detail == Detail::Full {
                    notes.push(Note::Passed {
                        direction: at.dir,
                        tier,
                        policy: cid,
                        rule: i,
                    });
                }
                return None;
            }
            return Some(Side::ClusterPolicy {
                tier,
                policy: cid,
                rule: i,
                action: rule.action,
            });
        }
    }
    None
}

/// Whether a ClusterNetworkPolicy rule matches the connection at this side.
pub fn cnp_rule_matches_at(
    inv: &Inventory,
    rule: &CnpRule,
    q: &Query,
    peer: Endpoint,
    peer_ip: Option<IpAddr>,
    dst_pod: Option<PodId>,
) -> bool {
    let ports_ok = rule.ports.is_empty()
        || rule
            .ports
            .iter()
            .any(|p| verdict::port_matches(inv, p, dst_pod, q));
    ports_ok
        && rule.peers.iter().any(|p| match p {
            CnpPeer::Std(p) => verdict::peer_matches(inv, "", p, peer, peer_ip),
            CnpPeer::Nodes(sel) => peer_ip.is_some_and(|ip| {
                inv.nodes
                    .iter()
                    .any(|n| sel.matches(&n.labels) && n.addresses.contains(&ip))
            }),
        })
}

fn cnp_rule_matches(inv: &Inventory, rule: &CnpRule, at: &At<'_>) -> bool {
    cnp_rule_matches_at(inv, rule, at.q, at.peer, at.peer_ip, at.dst_pod)
}

/// The tenant fences of this side: `Some(Fenced)` when the connection
/// crosses one without an exception.
fn fence(inv: &Inventory, at: &At<'_>, notes: &mut Vec<Note>) -> Option<Side> {
    let Endpoint::Pod(peer) = at.peer else {
        return None;
    };
    let peer_ns = inv.pod_namespace_id(peer);
    if *inv.namespace_fence(peer_ns) == Fence::Open {
        return None;
    }
    let this_ns = inv.pod_namespace_id(at.pod);
    match inv.namespace_fence(this_ns) {
        Fence::Open => None,
        Fence::Own if this_ns == peer_ns => None,
        Fence::Own => Some(Side::Fenced {
            tenants: Vec::new(),
            own: true,
        }),
        Fence::Tenants(ts) => {
            let mut denied: Vec<TenantId> = Vec::new();
            let mut lifted = Vec::new();
            for &t in ts {
                if inv.tenant_holds(t, peer_ns) {
                    continue;
                }
                match exception(inv, t, at) {
                    Some(i) => lifted.push((t, i)),
                    None => denied.push(t),
                }
            }
            if denied.is_empty() {
                if at.detail == Detail::Full {
                    notes.extend(lifted.into_iter().map(|(tenant, exception)| {
                        Note::FenceException {
                            direction: at.dir,
                            tenant,
                            exception,
                        }
                    }));
                }
                None
            } else {
                Some(Side::Fenced {
                    tenants: denied,
                    own: false,
                })
            }
        }
    }
}

/// The first exception of tenant `t` (in the direction of this side) that
/// matches, by its index in `allowFrom` / `allowTo`.
fn exception(inv: &Inventory, t: TenantId, at: &At<'_>) -> Option<usize> {
    let d = match at.dir {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    };
    inv.tenant_rules[t][d]
        .iter()
        .find(|(_, rule)| {
            verdict::rule_matches(inv, "", rule, at.peer, at.peer_ip, at.dst_pod, at.q)
        })
        .map(|(i, _)| *i)
}
