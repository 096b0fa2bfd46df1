//! The quarantine chain: first in every base chain, before the
//! `ct state established,related accept` fast path.
//!
//! ```text
//!  forward / input / output:  jump quarantine   (rule 0)
//!  chain quarantine:
//!    per Quarantine q, per family (only when q covers a pod and has sources):
//!      ip saddr @qf4_<q> ip daddr @qt4_<q> ct state new log "bh A ..." accept   forensics in
//!      ip saddr @qf4_<q> ip daddr @qt4_<q> accept
//!      ip saddr @qt4_<q> ip daddr @qf4_<q> ct state established,related accept  their replies
//!    ip saddr @qpods4 ct state new log "bh D quarantine" drop ; ip saddr @qpods4 drop
//!    the same for daddr                                  (and ip6 @qpods6)
//! ```
//!
//! The first packet of a connection is logged (flow observation); the
//! packets of a live connection being cut are dropped silently.
//!
//! ```text
//! ```
//!
//! Every node carries every quarantined pod (they are few): a node drops the
//! traffic of a quarantined pod whichever end it hosts. `qt_` holds the
//! quarantine's pods, `qf_` its forensics sources (CIDRs and pod addresses,
//! aggregated, minus every quarantined address: a quarantined pod is nobody's
//! forensics source). Rules grow with Quarantines (incidents), not with pods.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use bulkhead_proto::v1 as pb;
use ipnet::IpNet;
use pb::verdict::Kind as V;

use super::observe::{self, LogKind};
use super::{
    Compiler, FAMILIES, addr_in_set, addr_set_type, block_prefixes, ct_state, fam_digit,
    insert_addr_set, names, prefix_element, rule, set,
};
use crate::quarantine::Source;

/// The rule twice: first for new connections, logged as `kind` (flow
/// observation), then for every other packet, silent (a cut connection's
/// packets must not flood the log).
fn observed(
    out: &mut Vec<pb::Rule>,
    matches: Vec<pb::Match>,
    v: V,
    kind: LogKind,
    comment: String,
) {
    let mut first = rule(
        [matches.clone(), vec![ct_state(true, false, false, false)]].concat(),
        v.clone(),
        comment.clone(),
    );
    first.log = observe::log(kind, &comment);
    out.push(first);
    out.push(rule(matches, v, comment));
}

fn host_prefix(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

impl Compiler<'_> {
    /// The quarantine chain and its sets (added to `sets`).
    pub(super) fn quarantine_chain(&self, sets: &mut BTreeMap<String, pb::Set>) -> pb::Chain {
        let inv = self.inv;
        // Per quarantine, its addressable pods.
        let mut covered: Vec<Vec<usize>> = vec![Vec::new(); inv.quarantines.len()];
        for p in 0..inv.pods.len() {
            if self.addressable(p) {
                for &q in inv.quarantines_of(p) {
                    covered[q].push(p);
                }
            }
        }
        let mut rules = Vec::new();
        for f in FAMILIES {
            let all: BTreeSet<IpAddr> = covered
                .iter()
                .flatten()
                .filter_map(|&p| self.addr_of(p, f))
                .collect();
            for (qid, pods) in covered.iter().enumerate() {
                let qr = &inv.quarantines[qid];
                let targets: BTreeSet<IpAddr> =
                    pods.iter().filter_map(|&p| self.addr_of(p, f)).collect();
                let sources = self.forensics_prefixes(&qr.allow_from, f, &all);
                if targets.is_empty() || sources.is_empty() {
                    continue;
                }
                let qt = names::hashed(&format!("qt{}_", fam_digit(f)), &qr.key());
                let qf = names::hashed(&format!("qf{}_", fam_digit(f)), &qr.key());
                insert_addr_set(sets, &qt, f, targets);
                let elements = sources
                    .into_iter()
                    .map(|(addr, len)| prefix_element(addr, len))
                    .collect();
                sets.insert(
                    qf.clone(),
                    pb::Set {
                        interval: true,
                        ..set(&qf, addr_set_type(f), elements)
                    },
                );
                observed(
                    &mut rules,
                    vec![
                        addr_in_set(pb::Field::Saddr, f, &qf, false),
                        addr_in_set(pb::Field::Daddr, f, &qt, false),
                    ],
                    V::Accept(pb::Empty {}),
                    LogKind::Allow,
                    format!("quarantine {} forensics", qr.key()),
                );
                rules.push(rule(
                    vec![
                        addr_in_set(pb::Field::Saddr, f, &qt, false),
                        addr_in_set(pb::Field::Daddr, f, &qf, false),
                        ct_state(false, true, true, false),
                    ],
                    V::Accept(pb::Empty {}),
                    format!("quarantine {} forensics replies", qr.key()),
                ));
            }
            let qpods = match f {
                pb::Family::Ipv6 => names::QPODS6,
                _ => names::QPODS4,
            };
            insert_addr_set(sets, qpods, f, all);
            for field in [pb::Field::Saddr, pb::Field::Daddr] {
                observed(
                    &mut rules,
                    vec![addr_in_set(field, f, qpods, false)],
                    V::Drop(pb::Empty {}),
                    LogKind::Deny,
                    "quarantine".to_owned(),
                );
            }
        }
        pb::Chain {
            name: names::QUARANTINE.to_owned(),
            hook: None,
            rules,
        }
    }

    /// A quarantine's forensics sources in family `f`, as disjoint prefixes,
    /// without any quarantined address.
    fn forensics_prefixes(
        &self,
        sources: &[Source],
        f: pb::Family,
        quarantined: &BTreeSet<IpAddr>,
    ) -> Vec<(IpAddr, u8)> {
        let v4 = f != pb::Family::Ipv6;
        let mut nets: Vec<IpNet> = Vec::new();
        for s in sources {
            match s {
                Source::Cidr(net) if net.addr().is_ipv4() == v4 => nets.push(*net),
                Source::Cidr(_) => {}
                Source::Pod { namespace, name } => {
                    if let Some(p) = self.inv.pod_id(namespace, name)
                        && self.addressable(p)
                        && let Some(ip) = self.addr_of(p, f)
                    {
                        nets.push(host_prefix(ip));
                    }
                }
            }
        }
        let mut out = Vec::new();
        for net in IpNet::aggregate(&nets) {
            let except: Vec<IpNet> = quarantined
                .iter()
                .filter(|ip| net.contains(*ip))
                .map(|ip| host_prefix(*ip))
                .collect();
            if except.contains(&net) {
                continue;
            }
            out.extend(block_prefixes(&net, &except));
        }
        out
    }
}

/// Puts `jump quarantine` first in the forward and input chains and adds the
/// output chain (host to pod) that carries only that jump.
pub(super) fn hook_base_chains(chains: &mut Vec<pb::Chain>) {
    let jump = || {
        rule(
            vec![],
            V::Jump(names::QUARANTINE.to_owned()),
            "quarantine".to_owned(),
        )
    };
    for c in chains.iter_mut() {
        if c.name == names::FORWARD || c.name == names::INPUT {
            c.rules.insert(0, jump());
        }
    }
    chains.push(pb::Chain {
        name: names::OUTPUT.to_owned(),
        hook: Some(pb::Hook {
            hook: pb::HookType::Output as i32,
            priority: 0,
            drop: false,
        }),
        rules: vec![jump()],
    });
}
