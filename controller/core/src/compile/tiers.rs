//! The tiers in the dataplane: tenant fences, Admin ClusterNetworkPolicies,
//! NetworkPolicy, Baseline ClusterNetworkPolicies, default allow — the order
//! of [`crate::tiers::decide`], per direction, for the pods of one node.
//!
//! ```text
//!  egress4/ingress4 vmap ─▶ e_/i_<profile>   (pods with the same profile share it)
//!      jump f_<tenant>      per tenant fence: exceptions `return`, then
//!                           `peer @fenced drop`
//!      admin rules          Accept: allow, Deny: drop, Pass: goto rest
//!      goto e_/i_<rest>
//!  e_/i_<rest>              NetworkPolicy rules then drop (pod isolated), or
//!                           Baseline rules (Pass: allow) then allow
//! ```
//!
//! Allow is `return` at egress (back to the forward chain, on to ingress
//! dispatch) and `accept` at ingress. A pod whose profile is only a rest
//! chain maps straight to it; a pod with no profile has no map entry.
//! Chains are keyed by the policies involved, never by pods: rule count
//! grows with policies, tenants and distinct profiles, not with pods.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use bulkhead_proto::v1 as pb;
use pb::r#match::Kind as M;
use pb::verdict::Kind as V;

use super::observe::{self, LogKind};
use super::{
    Compiler, FAMILIES, PeerSel, RuleCtx, addr_element, addr_set_type, fam_digit, group_chain_name,
    m, names, rule, set, verdict,
};
use crate::cnp::{Action, CnpPeer, Tier};
use crate::inventory::{CnpId, NamespaceId, PodId, PolicyId, TenantId};
use crate::model::{Direction, Peer, PortMatch, Rule};
use crate::tenant::Fence;

/// What decides a pod's traffic in one direction, before the NetworkPolicy
/// tier (`head`) and from it on (`rest`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Profile {
    dir: Direction,
    fence: FenceKey,
    admin: Vec<CnpId>,
    /// Egress of a pod the API guard keeps away from the API server, the
    /// nodes and the metadata address (see `compile::guard`).
    guard: bool,
    rest: Rest,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum FenceKey {
    None,
    Own(NamespaceId),
    Tenants(Vec<TenantId>),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rest {
    dir: Direction,
    nps: Vec<PolicyId>,
    /// Only when `nps` is empty: Baseline applies to pods no NetworkPolicy
    /// isolates.
    baseline: Vec<CnpId>,
}

impl Profile {
    /// Nothing but the API guard decides: no fence, Admin, NetworkPolicy
    /// or Baseline (the pod has no rest chain).
    fn guard_only(&self) -> bool {
        self.guard
            && self.fence == FenceKey::None
            && self.admin.is_empty()
            && self.rest.nps.is_empty()
            && self.rest.baseline.is_empty()
    }
}

fn allow(dir: Direction) -> V {
    match dir {
        Direction::Egress => V::Return(pb::Empty {}),
        Direction::Ingress => V::Accept(pb::Empty {}),
    }
}

fn peer_field(dir: Direction) -> pb::Field {
    match dir {
        Direction::Ingress => pb::Field::Saddr,
        Direction::Egress => pb::Field::Daddr,
    }
}

impl<'a> Compiler<'a> {
    fn profile(&self, p: PodId, dir: Direction) -> Option<Profile> {
        let inv = self.inv;
        let fence = match inv.pod_fence(p) {
            Fence::Open => FenceKey::None,
            Fence::Own => FenceKey::Own(inv.pod_namespace_id(p)),
            Fence::Tenants(ts) => FenceKey::Tenants(ts.clone()),
        };
        let nps = inv.selecting(p, dir).to_vec();
        let baseline = if nps.is_empty() {
            inv.cnp_selecting(p, Tier::Baseline, dir).to_vec()
        } else {
            Vec::new()
        };
        let admin = inv.cnp_selecting(p, Tier::Admin, dir).to_vec();
        let profile = Profile {
            dir,
            fence,
            admin,
            guard: dir == Direction::Egress && inv.guarded(p),
            rest: Rest { dir, nps, baseline },
        };
        let empty = profile.fence == FenceKey::None
            && profile.admin.is_empty()
            && !profile.guard
            && profile.rest.nps.is_empty()
            && profile.rest.baseline.is_empty();
        (!empty).then_some(profile)
    }

    /// The chains of every profile of the local pods, and their map entries.
    pub(super) fn tier_chains(
        &mut self,
        local: &[PodId],
        sets: &mut BTreeMap<String, pb::Set>,
        chains: &mut Vec<pb::Chain>,
        entries: &mut BTreeMap<&'static str, Vec<pb::MapEntry>>,
    ) {
        let inv = self.inv;
        let mut profiles: BTreeMap<Profile, Vec<PodId>> = BTreeMap::new();
        let mut rests: BTreeMap<Rest, Vec<PodId>> = BTreeMap::new();
        let mut fences: BTreeMap<(Direction, FenceKey), Vec<PodId>> = BTreeMap::new();
        for &p in local {
            for dir in [Direction::Egress, Direction::Ingress] {
                if let Some(pr) = self.profile(p, dir) {
                    if !pr.guard_only() {
                        rests.entry(pr.rest.clone()).or_default().push(p);
                    }
                    match &pr.fence {
                        FenceKey::None => {}
                        FenceKey::Own(_) => {
                            fences.entry((dir, pr.fence.clone())).or_default().push(p);
                        }
                        FenceKey::Tenants(ts) => {
                            for &t in ts {
                                fences
                                    .entry((dir, FenceKey::Tenants(vec![t])))
                                    .or_default()
                                    .push(p);
                            }
                        }
                    }
                    profiles.entry(pr).or_default().push(p);
                }
            }
        }
        let mut rest_names = BTreeMap::new();
        for (rest, members) in &rests {
            let name = self.rest_chain_name(rest);
            let rules = self.rest_rules(rest, members, &name, sets);
            rest_names.insert(rest.clone(), name.clone());
            chains.push(pb::Chain {
                name,
                hook: None,
                rules,
            });
        }
        let mut fence_names = BTreeMap::new();
        for ((dir, key), members) in &fences {
            let name = fence_chain_name(inv, *dir, key);
            let rules = self.fence_rules(*dir, key, members, &name, sets);
            fence_names.insert((*dir, key.clone()), name.clone());
            chains.push(pb::Chain {
                name,
                hook: None,
                rules,
            });
        }
        let mut guard_names: BTreeMap<String, String> = BTreeMap::new();
        for (pr, members) in &profiles {
            let mut rest = rest_names.get(&pr.rest).cloned().unwrap_or_default();
            if pr.guard {
                // The guard sits between the Admin tier and the rest.
                rest = match guard_names.get(&rest) {
                    Some(g) => g.clone(),
                    None => {
                        let g = names::hashed("g_", &rest);
                        chains.push(pb::Chain {
                            name: g.clone(),
                            hook: None,
                            // Guard only: past it, back to the forward
                            // chain, whose tail observes "not isolated".
                            rules: self.guard_rules((!rest.is_empty()).then_some(rest.as_str())),
                        });
                        guard_names.insert(rest.clone(), g.clone());
                        g
                    }
                };
            }
            let target = if pr.fence == FenceKey::None && pr.admin.is_empty() {
                rest
            } else {
                let name = head_chain_name(inv, pr);
                let mut rules = Vec::new();
                let fence_keys: Vec<FenceKey> = match &pr.fence {
                    FenceKey::None => Vec::new(),
                    FenceKey::Own(_) => vec![pr.fence.clone()],
                    FenceKey::Tenants(ts) => {
                        ts.iter().map(|t| FenceKey::Tenants(vec![*t])).collect()
                    }
                };
                for k in fence_keys {
                    if let Some(f) = fence_names.get(&(pr.dir, k)) {
                        rules.push(rule(vec![], V::Jump(f.clone()), "tenant fence"));
                    }
                }
                let admin = self.cnp_rules(pr.dir, &pr.admin, members, &name, &rest, sets);
                rules.extend(admin);
                rules.push(rule(vec![], V::Goto(rest), "to NetworkPolicy"));
                chains.push(pb::Chain {
                    name: name.clone(),
                    hook: None,
                    rules,
                });
                name
            };
            let (maps, v) = match pr.dir {
                Direction::Egress => ([names::EGRESS4, names::EGRESS6], V::Jump(target)),
                Direction::Ingress => ([names::INGRESS4, names::INGRESS6], V::Goto(target)),
            };
            for &p in members {
                self.map_pod(p, maps, &v, entries);
            }
        }
    }

    fn rest_chain_name(&self, rest: &Rest) -> String {
        if rest.baseline.is_empty() {
            return group_chain_name(self.inv, rest.dir, &rest.nps);
        }
        let keys: Vec<&str> = rest
            .baseline
            .iter()
            .map(|&c| self.inv.cnps[c].name.as_str())
            .collect();
        let prefix = match rest.dir {
            Direction::Ingress => "i_",
            Direction::Egress => "e_",
        };
        names::hashed(prefix, &format!("baseline|{}", keys.join(",")))
    }

    fn rest_rules(
        &mut self,
        rest: &Rest,
        members: &[PodId],
        chain: &str,
        sets: &mut BTreeMap<String, pb::Set>,
    ) -> Vec<pb::Rule> {
        if !rest.nps.is_empty() {
            return self.group_rules(rest.dir, &rest.nps, members, chain, sets);
        }
        // Pass in the Baseline tier goes to the default: allow.
        let mut rules = self.cnp_rules(rest.dir, &rest.baseline, members, chain, "", sets);
        let mut default = rule(vec![], allow(rest.dir), "default allow");
        default.log = observe::log(LogKind::Default, &default.comment);
        rules.push(default);
        rules
    }

    /// The rules of ClusterNetworkPolicies, in precedence order. A Pass goes
    /// to `pass_to` (the rest chain), or allows when `pass_to` is empty.
    pub(super) fn cnp_rules(
        &mut self,
        dir: Direction,
        cnps: &[CnpId],
        members: &[PodId],
        chain: &str,
        pass_to: &str,
        sets: &mut BTreeMap<String, pb::Set>,
    ) -> Vec<pb::Rule> {
        let inv = self.inv;
        let mut out = Vec::new();
        for &cid in cnps {
            let c = &inv.cnps[cid];
            for (i, r) in c.rules(dir).iter().enumerate() {
                let v = match r.action {
                    Action::Accept => allow(dir),
                    Action::Deny => V::Drop(pb::Empty {}),
                    Action::Pass if pass_to.is_empty() => allow(dir),
                    Action::Pass => V::Goto(pass_to.to_owned()),
                };
                let comment = format!("cnp {} {}[{}] {}", c.name, dir, i, r.action);
                // Observation: the rules that decide log it; a Pass to the
                // next tier does not (the next tier's rule will).
                let log = match r.action {
                    Action::Accept => observe::log(LogKind::Allow, &comment),
                    Action::Deny => observe::log(LogKind::Deny, &comment),
                    Action::Pass if pass_to.is_empty() => observe::log(LogKind::Default, &comment),
                    Action::Pass => None,
                };
                let ports: Vec<Option<&PortMatch>> = if r.ports.is_empty() {
                    vec![None]
                } else {
                    r.ports.iter().map(Some).collect()
                };
                for peer in &r.peers {
                    let sel = match peer {
                        CnpPeer::Std(p @ Peer::Pods { .. }) => PeerSel::Pods(p),
                        CnpPeer::Std(Peer::IpBlock { cidr, except }) => {
                            PeerSel::Block(cidr, except)
                        }
                        CnpPeer::Nodes(s) => PeerSel::Nodes(s),
                    };
                    for port in &ports {
                        for f in FAMILIES {
                            let ctx = RuleCtx {
                                dir,
                                policy_ns: "",
                                chain,
                                members,
                                family: f,
                            };
                            if let Some(matches) = self.rule_matches(&ctx, sel, *port, sets) {
                                let mut x = rule(matches, v.clone(), comment.clone());
                                x.log = log.clone();
                                out.push(x);
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// A fence chain: the exceptions `return` (the fence is lifted, the
    /// tiers after it still apply), then what lies behind the fence drops.
    fn fence_rules(
        &mut self,
        dir: Direction,
        key: &FenceKey,
        members: &[PodId],
        chain: &str,
        sets: &mut BTreeMap<String, pb::Set>,
    ) -> Vec<pb::Rule> {
        let inv = self.inv;
        let mut out = Vec::new();
        let (label, inside): (String, Box<dyn Fn(NamespaceId) -> bool>) = match key {
            FenceKey::Own(ns) => {
                let ns = *ns;
                (
                    format!("namespace {} (isolated)", inv.namespaces[ns].name),
                    Box::new(move |n| n == ns),
                )
            }
            FenceKey::Tenants(ts) => {
                let t = ts.first().copied().unwrap_or_default();
                let rules: Vec<(usize, Rule)> = inv
                    .tenant_rules
                    .get(t)
                    .map(|r| match dir {
                        Direction::Ingress => r[0].clone(),
                        Direction::Egress => r[1].clone(),
                    })
                    .unwrap_or_default();
                let list = match dir {
                    Direction::Ingress => "allowFrom",
                    Direction::Egress => "allowTo",
                };
                let name = inv
                    .tenants
                    .get(t)
                    .map(|x| x.name.clone())
                    .unwrap_or_default();
                for (i, r) in &rules {
                    let comment = format!("tenant {name} {list}[{i}]");
                    let ports: Vec<Option<&PortMatch>> = if r.ports.is_empty() {
                        vec![None]
                    } else {
                        r.ports.iter().map(Some).collect()
                    };
                    for peer in &r.peers {
                        let sel = match peer {
                            Peer::IpBlock { cidr, except } => PeerSel::Block(cidr, except),
                            p => PeerSel::Pods(p),
                        };
                        for port in &ports {
                            for f in FAMILIES {
                                let ctx = RuleCtx {
                                    dir,
                                    policy_ns: "",
                                    chain,
                                    members,
                                    family: f,
                                };
                                if let Some(matches) = self.rule_matches(&ctx, sel, *port, sets) {
                                    out.push(rule(
                                        matches,
                                        V::Return(pb::Empty {}),
                                        comment.clone(),
                                    ));
                                }
                            }
                        }
                    }
                }
                (
                    format!("tenant {name}"),
                    Box::new(move |n| inv.tenant_holds(t, n)),
                )
            }
            FenceKey::None => return out,
        };
        // Behind the fence: pods of namespaces that are neither Open nor inside.
        for f in FAMILIES {
            let mut addrs: BTreeSet<IpAddr> = BTreeSet::new();
            for p in 0..inv.pods.len() {
                let ns = inv.pod_namespace_id(p);
                if *inv.namespace_fence(ns) != Fence::Open
                    && !inside(ns)
                    && let Some(ip) = self.addr_of(p, f)
                {
                    addrs.insert(ip);
                }
            }
            let set_name = names::hashed(&format!("t{}_", fam_digit(f)), &format!("{dir}|{chain}"));
            let elements = addrs.into_iter().map(addr_element).collect();
            sets.insert(set_name.clone(), set(&set_name, addr_set_type(f), elements));
            out.push(pb::Rule {
                matches: vec![m(M::AddrInSet(pb::AddrInSet {
                    field: peer_field(dir) as i32,
                    family: f as i32,
                    set: set_name,
                    negate: false,
                }))],
                counter: true,
                log: observe::log(LogKind::Deny, &format!("fence of {label}")),
                verdict: verdict(V::Drop(pb::Empty {})),
                comment: format!("fence of {label}"),
            });
        }
        out
    }
}

fn fence_chain_name(inv: &crate::inventory::Inventory, dir: Direction, key: &FenceKey) -> String {
    let desc = match key {
        FenceKey::None => String::new(),
        FenceKey::Own(ns) => format!("own|{}", inv.namespaces[*ns].name),
        FenceKey::Tenants(ts) => format!(
            "tenant|{}",
            ts.iter()
                .map(|&t| inv.tenants[t].name.as_str())
                .collect::<Vec<_>>()
                .join(",")
        ),
    };
    names::hashed(&format!("f{}_", &dir.as_str()[..1]), &desc)
}

fn head_chain_name(inv: &crate::inventory::Inventory, pr: &Profile) -> String {
    let admin: Vec<&str> = pr
        .admin
        .iter()
        .map(|&c| inv.cnps[c].name.as_str())
        .collect();
    let nps: Vec<String> = pr.rest.nps.iter().map(|&p| inv.policies[p].key()).collect();
    let baseline: Vec<&str> = pr
        .rest
        .baseline
        .iter()
        .map(|&c| inv.cnps[c].name.as_str())
        .collect();
    let prefix = match pr.dir {
        Direction::Ingress => "i_",
        Direction::Egress => "e_",
    };
    names::hashed(
        prefix,
        &format!(
            "head|{}|{}|{}|{}{}",
            fence_chain_name(inv, pr.dir, &pr.fence),
            admin.join(","),
            nps.join(","),
            baseline.join(","),
            if pr.guard { "|guard" } else { "" }
        ),
    )
}
