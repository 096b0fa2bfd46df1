//! `explain` for the tiers: tenant fences and ClusterNetworkPolicy rules in
//! words and JSON (the NetworkPolicy tier is in [`crate::explain`]).

use std::fmt::Write as _;

use crate::cnp::{self, Action};
use crate::explain::{ClusterRuleInfo, SideInfo};
use crate::inventory::Inventory;
use crate::model::Direction;
use crate::verdict::{Note, Side};

/// The explanation of a side decided by a fence or a ClusterNetworkPolicy;
/// `None` for the other sides.
pub(crate) fn side_info(
    inv: &Inventory,
    side: &Side,
    dir: Direction,
    this: &str,
    peer: &str,
    what: &str,
) -> Option<SideInfo> {
    let toward = match dir {
        Direction::Egress => "to",
        Direction::Ingress => "from",
    };
    match side {
        Side::Fenced { tenants, own } => {
            let names: Vec<String> = tenants
                .iter()
                .map(|&t| inv.tenants[t].name.clone())
                .collect();
            let list = match dir {
                Direction::Egress => "allowTo",
                Direction::Ingress => "allowFrom",
            };
            let summary = if *own {
                format!(
                    "{this} is in a namespace of no Tenant and untenanted namespaces are Isolated: its {dir} {toward} {peer} in another namespace is fenced off"
                )
            } else {
                format!(
                    "tenant fence: {what} {toward} {peer} crosses the fence of Tenant {} and no {list} exception lets it through",
                    names.join(" and Tenant ")
                )
            };
            Some(SideInfo {
                verdict: "denied",
                reason: "tenantFence",
                isolated_by: Vec::new(),
                allowed_by: Vec::new(),
                summary,
                tier: "tenantFence",
                cluster_rule: None,
                fenced_by: names,
                notes: Vec::new(),
            })
        }
        Side::ClusterPolicy {
            tier,
            policy,
            rule,
            action,
        } => {
            let p = &inv.cnps[*policy];
            let r = p.rules(dir).get(*rule);
            let info = ClusterRuleInfo {
                policy: p.name.clone(),
                tier: tier.to_string(),
                priority: p.priority,
                rule: *rule,
                name: r.and_then(|r| r.name.clone()),
                action: action.to_string(),
                description: r.map(|r| cnp::describe_rule(r, dir)).unwrap_or_default(),
            };
            let verb = match action {
                Action::Accept => "accepts",
                _ => "denies",
            };
            let summary = format!(
                "ClusterNetworkPolicy {} ({tier} tier, priority {}) {dir} rule {rule} {verb} {what} {toward} {peer}",
                p.name, p.priority
            );
            Some(SideInfo {
                verdict: if side.allows() { "allowed" } else { "denied" },
                reason: match action {
                    Action::Accept => "clusterPolicyAccept",
                    _ => "clusterPolicyDeny",
                },
                isolated_by: Vec::new(),
                allowed_by: Vec::new(),
                summary,
                tier: tier.as_str(),
                cluster_rule: Some(info),
                fenced_by: Vec::new(),
                notes: Vec::new(),
            })
        }
        _ => None,
    }
}

/// A note in words, with the direction it belongs to.
pub(crate) fn note(inv: &Inventory, n: &Note) -> (Direction, String) {
    match *n {
        Note::Passed {
            direction,
            tier,
            policy,
            rule,
        } => {
            let p = &inv.cnps[policy];
            let next = match tier {
                cnp::Tier::Admin => "NetworkPolicy",
                cnp::Tier::Baseline => "the default",
            };
            (
                direction,
                format!(
                    "passed by ClusterNetworkPolicy {} ({tier} tier, priority {}) {direction} rule {rule} to {next}: {}",
                    p.name,
                    p.priority,
                    p.rules(direction)
                        .get(rule)
                        .map(|r| cnp::describe_rule(r, direction))
                        .unwrap_or_default()
                ),
            )
        }
        Note::FenceException {
            direction,
            tenant,
            exception,
        } => {
            let t = &inv.tenants[tenant];
            let list = match direction {
                Direction::Egress => "allowTo",
                Direction::Ingress => "allowFrom",
            };
            (
                direction,
                format!(
                    "through the fence of Tenant {} by {list}[{exception}]: {}",
                    t.name,
                    t.exceptions(direction)
                        .get(exception)
                        .map(|e| e.to_string())
                        .unwrap_or_default()
                ),
            )
        }
    }
}

/// The tier lines of a side in `explain`'s text form.
pub(crate) fn render_side(out: &mut String, s: &SideInfo) {
    let _ = writeln!(out, "    decided in tier: {}", s.tier);
    if let Some(r) = &s.cluster_rule {
        let _ = writeln!(
            out,
            "    {} by ClusterNetworkPolicy {} rule {}: {}",
            r.action, r.policy, r.rule, r.description
        );
    }
    if !s.fenced_by.is_empty() {
        let _ = writeln!(out, "    fenced by Tenant: {}", s.fenced_by.join(", "));
    }
    for n in &s.notes {
        let _ = writeln!(out, "    {n}");
    }
}
