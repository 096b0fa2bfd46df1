//! A reference interpreter for rulesets: what the kernel would do with one
//! packet. Pure; used to prove the compiler right against the verdict engine,
//! and by `bulkhead` to explain what a node's ruleset does.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use bulkhead_proto::v1 as pb;
use ipnet::IpNet;
use pb::r#match::Kind as M;
use pb::verdict::Kind as V;

use crate::model::Protocol;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtState {
    New,
    Established,
    Related,
    Invalid,
}

/// The parts of a packet the rule language looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub iif: String,
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub protocol: Protocol,
    pub dport: u16,
    pub ct: CtState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accept,
    Drop,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    pub outcome: Outcome,
    /// The comment of the rule whose verdict decided, or `policy` when the
    /// base chain's policy did.
    pub decided_by: String,
    /// The prefixes of the log statements the packet ran through, in order
    /// (what nflog would receive).
    pub logged: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InterpError {
    #[error("no base chain for hook {0:?}")]
    NoBaseChain(pb::HookType),
    #[error("rule refers to missing {what} {name:?}")]
    Missing { what: &'static str, name: String },
    #[error("malformed {0}")]
    Malformed(String),
    #[error("jumps nest deeper than 16")]
    TooDeep,
}

#[derive(Debug, Default)]
struct SetIndex {
    addrs: HashSet<IpAddr>,
    prefixes: Vec<IpNet>,
    ranges: Vec<(IpAddr, IpAddr)>,
    addr_ports: HashSet<(IpAddr, u16)>,
    ports: HashSet<u16>,
    ifnames: HashSet<String>,
    ifaddrs: HashSet<(String, IpAddr)>,
}

impl SetIndex {
    fn contains_addr(&self, ip: IpAddr) -> bool {
        self.addrs.contains(&ip)
            || self.prefixes.iter().any(|p| p.contains(&ip))
            || self
                .ranges
                .iter()
                .any(|(a, b)| a.is_ipv4() == ip.is_ipv4() && *a <= ip && ip <= *b)
    }
}

/// An indexed ruleset, ready to run packets through.
#[derive(Debug)]
pub struct Interp<'r> {
    sets: HashMap<&'r str, SetIndex>,
    maps: HashMap<&'r str, HashMap<IpAddr, &'r pb::Verdict>>,
    chains: HashMap<&'r str, &'r pb::Chain>,
}

fn parse_ip(s: &str) -> Result<IpAddr, InterpError> {
    s.parse()
        .map_err(|_| InterpError::Malformed(format!("address {s:?}")))
}

fn index_element(idx: &mut SetIndex, e: &pb::Element) -> Result<(), InterpError> {
    use pb::element::Value as E;
    match &e.value {
        Some(E::Addr(a)) => {
            idx.addrs.insert(parse_ip(a)?);
        }
        Some(E::Prefix(p)) => {
            let net = IpNet::new(parse_ip(&p.addr)?, p.len as u8)
                .map_err(|_| InterpError::Malformed(format!("prefix {}/{}", p.addr, p.len)))?;
            idx.prefixes.push(net);
        }
        Some(E::Range(r)) => {
            idx.ranges.push((parse_ip(&r.first)?, parse_ip(&r.last)?));
        }
        Some(E::AddrPort(ap)) => {
            idx.addr_ports.insert((parse_ip(&ap.addr)?, ap.port as u16));
        }
        Some(E::Port(p)) => {
            idx.ports.insert(*p as u16);
        }
        Some(E::Ifname(n)) => {
            idx.ifnames.insert(n.clone());
        }
        Some(E::IfAddr(ia)) => {
            idx.ifaddrs.insert((ia.ifname.clone(), parse_ip(&ia.addr)?));
        }
        None => return Err(InterpError::Malformed("empty element".into())),
    }
    Ok(())
}

enum Flow<'r> {
    Continue,
    Final(Outcome, &'r str),
}

fn is_v4(f: i32) -> bool {
    f == pb::Family::Ipv4 as i32
}

fn family_matches(f: i32, ip: IpAddr) -> bool {
    is_v4(f) == ip.is_ipv4()
}

fn field_addr(field: i32, p: &Packet) -> IpAddr {
    // The interpreter knows no NAT: the original destination is the
    // destination.
    if field == pb::Field::Daddr as i32 || field == pb::Field::CtOriginalDaddr as i32 {
        p.daddr
    } else {
        p.saddr
    }
}

impl<'r> Interp<'r> {
    pub fn new(rs: &'r pb::Ruleset) -> Result<Self, InterpError> {
        let mut sets = HashMap::new();
        for s in &rs.sets {
            let mut idx = SetIndex::default();
            for e in &s.elements {
                index_element(&mut idx, e)?;
            }
            sets.insert(s.name.as_str(), idx);
        }
        let mut maps = HashMap::new();
        for m in &rs.maps {
            let mut entries = HashMap::new();
            for e in &m.entries {
                let key = match e.key.as_ref().and_then(|k| k.value.as_ref()) {
                    Some(pb::element::Value::Addr(a)) => parse_ip(a)?,
                    _ => return Err(InterpError::Malformed(format!("key of map {}", m.name))),
                };
                let v = e
                    .verdict
                    .as_ref()
                    .ok_or_else(|| InterpError::Malformed(format!("verdict in map {}", m.name)))?;
                entries.insert(key, v);
            }
            maps.insert(m.name.as_str(), entries);
        }
        let chains = rs.chains.iter().map(|c| (c.name.as_str(), c)).collect();
        Ok(Self { sets, maps, chains })
    }

    /// Fills an agent-managed set, as the agent does.
    pub fn fill(&mut self, set: &'r str, elements: &[pb::Element]) -> Result<(), InterpError> {
        let mut idx = SetIndex::default();
        for e in elements {
            index_element(&mut idx, e)?;
        }
        self.sets.insert(set, idx);
        Ok(())
    }

    /// Runs a packet through the base chain of `hook`.
    pub fn run(&self, hook: pb::HookType, p: &Packet) -> Result<Trace, InterpError> {
        let base = self
            .chains
            .values()
            .find(|c| c.hook.as_ref().is_some_and(|h| h.hook == hook as i32))
            .ok_or(InterpError::NoBaseChain(hook))?;
        let drop_policy = base.hook.as_ref().is_some_and(|h| h.drop);
        let mut logs = Vec::new();
        let flow = self.chain(base, p, 0, &mut logs)?;
        let logged = logs.into_iter().map(str::to_owned).collect();
        Ok(match flow {
            Flow::Final(outcome, by) => Trace {
                outcome,
                decided_by: by.to_owned(),
                logged,
            },
            Flow::Continue => Trace {
                logged,
                outcome: if drop_policy {
                    Outcome::Drop
                } else {
                    Outcome::Accept
                },
                decided_by: "policy".into(),
            },
        })
    }

    fn chain(
        &self,
        c: &'r pb::Chain,
        p: &Packet,
        depth: usize,
        logs: &mut Vec<&'r str>,
    ) -> Result<Flow<'r>, InterpError> {
        if depth > 16 {
            return Err(InterpError::TooDeep);
        }
        for rule in &c.rules {
            let mut all = true;
            for mt in &rule.matches {
                if !self.matches(mt, p)? {
                    all = false;
                    break;
                }
            }
            if !all {
                continue;
            }
            if let Some(l) = &rule.log {
                logs.push(&l.prefix);
            }
            let Some(v) = rule.verdict.as_ref().and_then(|v| v.kind.as_ref()) else {
                continue;
            };
            let v = match v {
                V::Vmap(l) => {
                    if !family_matches(l.family, field_addr(l.field, p)) {
                        continue;
                    }
                    let map =
                        self.maps
                            .get(l.map.as_str())
                            .ok_or_else(|| InterpError::Missing {
                                what: "map",
                                name: l.map.clone(),
                            })?;
                    match map
                        .get(&field_addr(l.field, p))
                        .and_then(|v| v.kind.as_ref())
                    {
                        Some(v) => v,
                        None => continue,
                    }
                }
                other => other,
            };
            match v {
                V::Accept(_) => return Ok(Flow::Final(Outcome::Accept, &rule.comment)),
                V::Drop(_) => return Ok(Flow::Final(Outcome::Drop, &rule.comment)),
                V::Return(_) => return Ok(Flow::Continue),
                V::Jump(target) => {
                    if let Flow::Final(o, by) =
                        self.chain(self.target(target)?, p, depth + 1, logs)?
                    {
                        return Ok(Flow::Final(o, by));
                    }
                }
                V::Goto(target) => return self.chain(self.target(target)?, p, depth + 1, logs),
                V::Vmap(_) => {
                    return Err(InterpError::Malformed(
                        "a map verdict that is a map lookup".into(),
                    ));
                }
            }
        }
        Ok(Flow::Continue)
    }

    fn target(&self, name: &str) -> Result<&'r pb::Chain, InterpError> {
        self.chains
            .get(name)
            .copied()
            .ok_or_else(|| InterpError::Missing {
                what: "chain",
                name: name.to_owned(),
            })
    }

    fn set(&self, name: &str) -> Result<&SetIndex, InterpError> {
        self.sets.get(name).ok_or_else(|| InterpError::Missing {
            what: "set",
            name: name.to_owned(),
        })
    }

    fn matches(&self, mt: &pb::Match, p: &Packet) -> Result<bool, InterpError> {
        let Some(kind) = &mt.kind else {
            return Err(InterpError::Malformed("empty match".into()));
        };
        Ok(match kind {
            M::AddrInSet(a) => {
                let ip = field_addr(a.field, p);
                family_matches(a.family, ip) && (self.set(&a.set)?.contains_addr(ip) != a.negate)
            }
            M::AddrPortInSet(a) => {
                let ip = field_addr(a.field, p);
                family_matches(a.family, ip)
                    && self.set(&a.set)?.addr_ports.contains(&(ip, p.dport))
            }
            M::L4proto(x) => crate::compile::l4proto(p.protocol) as i32 == *x,
            M::Dport(r) => (r.first..=r.last).contains(&u32::from(p.dport)),
            M::CtState(s) => match p.ct {
                CtState::New => s.new,
                CtState::Established => s.established,
                CtState::Related => s.related,
                CtState::Invalid => s.invalid,
            },
            M::Iifname(i) => {
                let hit = match &i.value {
                    Some(pb::ifname_match::Value::Name(n)) => *n == p.iif,
                    Some(pb::ifname_match::Value::Set(s)) => self.set(s)?.ifnames.contains(&p.iif),
                    None => return Err(InterpError::Malformed("iifname match".into())),
                };
                hit != i.negate
            }
            M::IfaddrInSet(a) => {
                family_matches(a.family, p.saddr)
                    && (self
                        .set(&a.set)?
                        .ifaddrs
                        .contains(&(p.iif.clone(), p.saddr))
                        != a.negate)
            }
            M::AddrInPrefix(a) => {
                let ip = field_addr(a.field, p);
                let pre = a
                    .prefix
                    .as_ref()
                    .ok_or_else(|| InterpError::Malformed("prefix match".into()))?;
                let net = IpNet::new(parse_ip(&pre.addr)?, pre.len as u8).map_err(|_| {
                    InterpError::Malformed(format!("prefix {}/{}", pre.addr, pre.len))
                })?;
                family_matches(
                    if net.addr().is_ipv4() {
                        pb::Family::Ipv4 as i32
                    } else {
                        pb::Family::Ipv6 as i32
                    },
                    ip,
                ) && (net.contains(&ip) != a.negate)
            }
        })
    }
}
