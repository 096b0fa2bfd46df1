//! The API guard in the dataplane (see [`crate::guard`]).
//!
//! ```text
//!  sets   gvip4/6   the kubernetes Service's cluster IPs
//!         gdst4/6   every node address, the API endpoints, the metadata address
//!  forward, egress of a guarded pod (its profile has `guard`):
//!    e_<head>:  fence jumps, Admin rules (Pass: goto g_<rest>), goto g_<rest>
//!    g_<rest>:  ct original ip daddr @gvip4  log "bh D api guard ..." drop
//!               ip daddr @gdst4              log "bh D api guard ..." drop
//!               goto <rest>                  (NetworkPolicy, Baseline, default)
//!  input (a pod to its own node), after anti-spoofing:
//!    ip saddr vmap @guardin4   guarded local pod → jump ga_<admin> | jump g_input
//!    ga_<admin>: the pod's Admin egress rules: Accept returns (the escape
//!                hatch), Deny and Pass goto g_input; then goto g_input
//!    g_input:    the guard rules above, without the goto
//! ```
//!
//! In `monitor` mode the guard rules log `W` and `return` instead of
//! dropping. The VIP is matched on the conntrack original destination, so
//! the rule holds after kube-proxy's DNAT has rewritten the destination to
//! an endpoint. Rules grow with distinct Admin profiles, never with pods.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use bulkhead_proto::v1 as pb;
use pb::verdict::Kind as V;

use super::observe::{self, LogKind};
use super::{Compiler, FAMILIES, addr_in_set, insert_addr_set, names, rule, verdict};
use crate::cnp::Tier;
use crate::inventory::{CnpId, PodId};
use crate::model::{Direction, GuardMode};

fn sets_of(f: pb::Family) -> (&'static str, &'static str) {
    match f {
        pb::Family::Ipv6 => (names::GUARD_VIP6, names::GUARD_DST6),
        _ => (names::GUARD_VIP4, names::GUARD_DST4),
    }
}

impl Compiler<'_> {
    /// The guard's sets: empty when the guard is off.
    pub(super) fn guard_sets(&self, sets: &mut BTreeMap<String, pb::Set>) {
        let inv = self.inv;
        let on = inv.config.api_guard.mode != GuardMode::Off;
        for f in FAMILIES {
            let of_family = |ip: &&IpAddr| on && super::family_of(ip) == f;
            let vips: BTreeSet<IpAddr> = inv.api_vips.iter().filter(of_family).copied().collect();
            let dsts: BTreeSet<IpAddr> = inv
                .nodes
                .iter()
                .flat_map(|n| n.addresses.iter())
                .chain(inv.api_endpoints.iter())
                .chain(crate::guard::METADATA.iter())
                .filter(of_family)
                .copied()
                .collect();
            let (vip, dst) = sets_of(f);
            insert_addr_set(sets, vip, f, vips);
            insert_addr_set(sets, dst, f, dsts);
        }
    }

    /// The guard's rules, then `goto then` when given.
    pub(super) fn guard_rules(&self, then: Option<&str>) -> Vec<pb::Rule> {
        let mode = self.inv.config.api_guard.mode;
        let mut out = Vec::new();
        if mode != GuardMode::Off {
            for f in FAMILIES {
                let (vip, dst) = sets_of(f);
                for (field, set, what) in [
                    (pb::Field::CtOriginalDaddr, vip, "kubernetes Service"),
                    (pb::Field::Daddr, dst, "node, API endpoint or metadata"),
                ] {
                    let comment = format!("api guard: {what}");
                    let (v, kind) = match mode {
                        GuardMode::Monitor => (V::Return(pb::Empty {}), LogKind::WouldDeny),
                        _ => (V::Drop(pb::Empty {}), LogKind::Deny),
                    };
                    let mut r = rule(vec![addr_in_set(field, f, set, false)], v, comment);
                    r.counter = true;
                    r.log = observe::log(kind, &r.comment);
                    out.push(r);
                }
            }
        }
        if let Some(then) = then {
            out.push(rule(vec![], V::Goto(then.to_owned()), "past the api guard"));
        }
        out
    }

    /// The input hook's guard: the `g_input` chain, one `ga_` chain per
    /// distinct Admin egress profile of the guarded local pods, and their
    /// `guardin4/6` map entries.
    pub(super) fn guard_input(
        &mut self,
        local: &[PodId],
        sets: &mut BTreeMap<String, pb::Set>,
        chains: &mut Vec<pb::Chain>,
        entries: &mut BTreeMap<&'static str, Vec<pb::MapEntry>>,
    ) {
        let inv = self.inv;
        chains.push(pb::Chain {
            name: names::GUARD_INPUT.to_owned(),
            hook: None,
            rules: self.guard_rules(None),
        });
        let mut by_admin: BTreeMap<Vec<CnpId>, Vec<PodId>> = BTreeMap::new();
        for &p in local {
            if inv.guarded(p) {
                let admin = inv.cnp_selecting(p, Tier::Admin, Direction::Egress);
                by_admin.entry(admin.to_vec()).or_default().push(p);
            }
        }
        for (admin, members) in &by_admin {
            let target = if admin.is_empty() {
                names::GUARD_INPUT.to_owned()
            } else {
                let keys: Vec<&str> = admin.iter().map(|&c| inv.cnps[c].name.as_str()).collect();
                let name = names::hashed("ga_", &keys.join(","));
                // Accept returns (granted); a Deny or a Pass is the guard's.
                let mut rules = self.cnp_rules(
                    Direction::Egress,
                    admin,
                    members,
                    &name,
                    names::GUARD_INPUT,
                    sets,
                );
                for r in &mut rules {
                    if matches!(
                        r.verdict.as_ref().and_then(|v| v.kind.as_ref()),
                        Some(V::Drop(_))
                    ) {
                        r.verdict = verdict(V::Goto(names::GUARD_INPUT.to_owned()));
                        r.log = None;
                    }
                }
                rules.push(rule(
                    vec![],
                    V::Goto(names::GUARD_INPUT.to_owned()),
                    "api guard",
                ));
                chains.push(pb::Chain {
                    name: name.clone(),
                    hook: None,
                    rules,
                });
                name
            };
            let jump = V::Jump(target);
            for &p in members {
                self.map_pod(p, [names::GUARD_IN4, names::GUARD_IN6], &jump, entries);
            }
        }
    }
}
