//! The flow aggregator: pure, values in, values out. Observations of new
//! connections come in (one per connection attempt, with its verdict and
//! rule); a `FlowReport` comes out per reporting window.
//!
//! ```text
//!  Observation ─▶ key: src, dst, protocol, dst port, verdict, rule, src/dst identity
//!                  ├─ known key:    count += 1, last_seen            (no memory)
//!                  ├─ new key, table below its fill threshold: insert
//!                  └─ otherwise:    sampled 1 in N by a hash of the key, N
//!                                   doubling as the table fills; the rest is
//!                                   counted in `dropped`
//!  drain() ─▶ FlowReport { flows, dropped, sample_rate = the largest N used }
//! ```
//!
//! Memory is bounded: at most `max_flows` entries per window, rule names are
//! interned (at most `max_rules`), and the endpoint table is the node's pods.
//!
//! Identity: a flow is enriched with the pod that held the address WHEN the
//! flow was observed (the endpoint table of the ruleset applied then), and
//! the identity is part of the key, so a new pod that reuses an old pod's
//! address never inherits the old pod's flows or labels.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use bulkhead_core::compile::observe::LogKind;
use bulkhead_proto::v1 as pb;

/// A pod's identity, as flows carry it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub namespace: String,
    pub pod: String,
    pub labels: BTreeMap<String, String>,
}

/// One connection attempt, as the observer read it from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: pb::L4Proto,
    pub dst_port: u16,
    pub kind: LogKind,
    pub rule: String,
    pub unix_millis: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Distinct flows kept per reporting window.
    pub max_flows: usize,
    /// Distinct rule names remembered.
    pub max_rules: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_flows: 16_384,
            max_rules: 4_096,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    protocol: pb::L4Proto,
    dst_port: u16,
    verdict: pb::FlowVerdict,
    rule: Arc<str>,
    // Identity by pointer: equal identities share one Arc (see set_endpoints).
    src_peer: usize,
    dst_peer: usize,
}

#[derive(Clone, Debug)]
struct Stats {
    count: u64,
    first: u64,
    last: u64,
    src_peer: Option<Arc<Peer>>,
    dst_peer: Option<Arc<Peer>>,
}

#[derive(Debug)]
pub struct Aggregator {
    limits: Limits,
    endpoints: HashMap<IpAddr, Arc<Peer>>,
    rules: HashMap<String, Arc<str>>,
    flows: HashMap<Key, Stats>,
    dropped: u64,
    sample_rate: u32,
}

fn verdict_of(kind: LogKind) -> pb::FlowVerdict {
    match kind {
        LogKind::Default | LogKind::Allow => pb::FlowVerdict::Allowed,
        LogKind::Deny => pb::FlowVerdict::Denied,
        LogKind::WouldDeny => pb::FlowVerdict::WouldDeny,
    }
}

fn peer_id(p: Option<&Arc<Peer>>) -> usize {
    p.map_or(0, |a| Arc::as_ptr(a) as usize)
}

impl Aggregator {
    pub fn new(limits: Limits) -> Self {
        Aggregator {
            limits,
            endpoints: HashMap::new(),
            rules: HashMap::new(),
            flows: HashMap::new(),
            dropped: 0,
            sample_rate: 1,
        }
    }

    /// The pods on the node, from the applied ruleset. Flows observed from
    /// now on are enriched with these identities. An unchanged pod keeps
    /// its identity (the same flow key) across rulesets.
    pub fn set_endpoints(&mut self, endpoints: &[pb::Endpoint]) {
        let mut next = HashMap::with_capacity(endpoints.len());
        for e in endpoints {
            let peer = Peer {
                namespace: e.namespace.clone(),
                pod: e.name.clone(),
                labels: e
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            };
            for a in &e.addrs {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    continue;
                };
                let arc = match self.endpoints.get(&ip) {
                    Some(old) if **old == peer => Arc::clone(old),
                    _ => match next.values().find(|p: &&Arc<Peer>| ***p == peer) {
                        Some(same) => Arc::clone(same),
                        None => Arc::new(peer.clone()),
                    },
                };
                next.insert(ip, arc);
            }
        }
        self.endpoints = next;
    }

    /// The sampling rate that applies to a new flow now: 1 below half full,
    /// then 2, 4, 8, ... as each remaining half fills.
    fn current_rate(&self) -> u32 {
        let max = self.limits.max_flows.max(1);
        let free = max - self.flows.len().min(max);
        let mut rate = 1u32;
        let mut threshold = max / 2;
        while free <= threshold && threshold > 0 && rate < (1 << 20) {
            rate *= 2;
            threshold /= 2;
        }
        rate
    }

    fn rule(&mut self, rule: &str) -> Arc<str> {
        if let Some(r) = self.rules.get(rule) {
            return Arc::clone(r);
        }
        if self.rules.len() >= self.limits.max_rules {
            return Arc::from("(rule names over limit)");
        }
        let r: Arc<str> = Arc::from(rule);
        self.rules.insert(rule.to_owned(), Arc::clone(&r));
        r
    }

    /// Counts one connection attempt.
    pub fn record(&mut self, o: &Observation) {
        let src_peer = self.endpoints.get(&o.src).cloned();
        let dst_peer = self.endpoints.get(&o.dst).cloned();
        let rule = self.rule(&o.rule);
        let key = Key {
            src: o.src,
            dst: o.dst,
            protocol: o.protocol,
            dst_port: o.dst_port,
            verdict: verdict_of(o.kind),
            rule,
            src_peer: peer_id(src_peer.as_ref()),
            dst_peer: peer_id(dst_peer.as_ref()),
        };
        if let Some(s) = self.flows.get_mut(&key) {
            s.count += 1;
            s.first = s.first.min(o.unix_millis);
            s.last = s.last.max(o.unix_millis);
            return;
        }
        if self.flows.len() >= self.limits.max_flows {
            self.dropped += 1;
            return;
        }
        let rate = self.current_rate();
        self.sample_rate = self.sample_rate.max(rate);
        if rate > 1 && !sampled(&key, rate) {
            self.dropped += 1;
            return;
        }
        self.flows.insert(
            key,
            Stats {
                count: 1,
                first: o.unix_millis,
                last: o.unix_millis,
                src_peer,
                dst_peer,
            },
        );
    }

    /// Connection attempts the kernel could not hand over (nflog sequence gaps,
    /// a full socket): counted as shed.
    pub fn lost(&mut self, n: u64) {
        self.dropped += n;
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty() && self.dropped == 0
    }

    /// The window's report, sorted; the aggregator starts a new window.
    pub fn drain(&mut self) -> pb::FlowReport {
        let flows = std::mem::take(&mut self.flows);
        let mut out: Vec<pb::Flow> = flows
            .into_iter()
            .map(|(k, s)| pb::Flow {
                src_addr: k.src.to_string(),
                dst_addr: k.dst.to_string(),
                protocol: k.protocol as i32,
                dst_port: u32::from(k.dst_port),
                verdict: k.verdict as i32,
                rule: k.rule.to_string(),
                count: s.count,
                first_seen_unix_millis: s.first,
                last_seen_unix_millis: s.last,
                src: s.src_peer.as_deref().map(flow_peer),
                dst: s.dst_peer.as_deref().map(flow_peer),
            })
            .collect();
        out.sort_by(|a, b| {
            (
                &a.src_addr,
                &a.dst_addr,
                a.protocol,
                a.dst_port,
                a.verdict,
                &a.rule,
            )
                .cmp(&(
                    &b.src_addr,
                    &b.dst_addr,
                    b.protocol,
                    b.dst_port,
                    b.verdict,
                    &b.rule,
                ))
        });
        let report = pb::FlowReport {
            flows: out,
            dropped: self.dropped,
            sample_rate: self.sample_rate,
        };
        self.dropped = 0;
        self.sample_rate = 1;
        // Rule names are few; forget them now and then so a long-gone
        // ruleset's names do not pin the limit.
        if self.rules.len() >= self.limits.max_rules {
            self.rules.clear();
        }
        report
    }
}

fn sampled(key: &Key, rate: u32) -> bool {
    // Sampled by flow, not by packet: a sampled flow's counts are whole.
    let mut h = DefaultHasher::new();
    (key.src, key.dst, key.protocol, key.dst_port, key.verdict).hash(&mut h);
    key.rule.hash(&mut h);
    h.finish().is_multiple_of(u64::from(rate))
}

fn flow_peer(p: &Peer) -> pb::FlowPeer {
    pb::FlowPeer {
        namespace: p.namespace.clone(),
        pod: p.pod.clone(),
        labels: p
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ep(ns: &str, name: &str, addr: &str, app: &str) -> pb::Endpoint {
        pb::Endpoint {
            namespace: ns.into(),
            name: name.into(),
            addrs: vec![addr.into()],
            labels: [("app".to_owned(), app.to_owned())].into_iter().collect(),
        }
    }

    fn obs(src: &str, dst: &str, port: u16, kind: LogKind, t: u64) -> Observation {
        Observation {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: pb::L4Proto::Tcp,
            dst_port: port,
            kind,
            rule: "np a/b ingress[0]".into(),
            unix_millis: t,
        }
    }

    #[test]
    fn aggregates_and_enriches() {
        let mut a = Aggregator::new(Limits::default());
        a.set_endpoints(&[
            ep("a", "web", "10.0.0.1", "web"),
            ep("b", "db", "10.0.0.2", "db"),
        ]);
        for t in 0..5 {
            a.record(&obs("10.0.0.1", "10.0.0.2", 5432, LogKind::Allow, 100 + t));
        }
        a.record(&obs("10.0.0.1", "10.0.0.2", 22, LogKind::Deny, 50));
        a.record(&obs("192.0.2.1", "10.0.0.2", 5432, LogKind::WouldDeny, 7));
        let r = a.drain();
        assert_eq!((r.dropped, r.sample_rate), (0, 1));
        assert_eq!(r.flows.len(), 3);
        let f = r
            .flows
            .iter()
            .find(|f| f.dst_port == 5432 && f.src_addr == "10.0.0.1")
            .unwrap();
        assert_eq!(f.count, 5);
        assert_eq!(
            (f.first_seen_unix_millis, f.last_seen_unix_millis),
            (100, 104)
        );
        assert_eq!(f.verdict, pb::FlowVerdict::Allowed as i32);
        assert_eq!(f.src.as_ref().unwrap().pod, "web");
        assert_eq!(f.dst.as_ref().unwrap().labels["app"], "db");
        let denied = r.flows.iter().find(|f| f.dst_port == 22).unwrap();
        assert_eq!(denied.verdict, pb::FlowVerdict::Denied as i32);
        let outside = r.flows.iter().find(|f| f.src_addr == "192.0.2.1").unwrap();
        assert!(outside.src.is_none());
        assert_eq!(outside.verdict, pb::FlowVerdict::WouldDeny as i32);
        // A new window starts empty.
        assert!(a.is_empty());
        assert!(a.drain().flows.is_empty());
    }

    #[test]
    fn a_reused_address_does_not_inherit_identity() {
        let mut a = Aggregator::new(Limits::default());
        a.set_endpoints(&[ep("a", "old", "10.0.0.1", "old")]);
        a.record(&obs("10.0.0.1", "10.0.0.9", 80, LogKind::Allow, 1));
        // The old pod goes, a new pod gets its address, in the same window.
        a.set_endpoints(&[ep("a", "new", "10.0.0.1", "new")]);
        a.record(&obs("10.0.0.1", "10.0.0.9", 80, LogKind::Allow, 2));
        // And the address is free for a while.
        a.set_endpoints(&[]);
        a.record(&obs("10.0.0.1", "10.0.0.9", 80, LogKind::Allow, 3));
        let r = a.drain();
        let who: Vec<(Option<String>, u64)> = r
            .flows
            .iter()
            .map(|f| {
                (
                    f.src.as_ref().map(|p| p.pod.clone()),
                    f.first_seen_unix_millis,
                )
            })
            .collect();
        assert_eq!(r.flows.len(), 3, "{who:?}");
        assert!(who.contains(&(Some("old".into()), 1)));
        assert!(who.contains(&(Some("new".into()), 2)));
        assert!(who.contains(&(None, 3)));
        let new = r
            .flows
            .iter()
            .find(|f| f.first_seen_unix_millis == 2)
            .unwrap();
        assert_eq!(new.src.as_ref().unwrap().labels["app"], "new");
    }

    #[test]
    fn an_unchanged_pod_keeps_its_flow_across_rulesets() {
        let mut a = Aggregator::new(Limits::default());
        a.set_endpoints(&[ep("a", "web", "10.0.0.1", "web")]);
        a.record(&obs("10.0.0.1", "10.0.0.9", 80, LogKind::Allow, 1));
        a.set_endpoints(&[
            ep("a", "web", "10.0.0.1", "web"),
            ep("a", "x", "10.0.0.3", "x"),
        ]);
        a.record(&obs("10.0.0.1", "10.0.0.9", 80, LogKind::Allow, 2));
        let r = a.drain();
        assert_eq!(r.flows.len(), 1);
        assert_eq!(r.flows[0].count, 2);
    }

    #[test]
    fn memory_is_bounded_and_shedding_is_counted_honestly() {
        let limits = Limits {
            max_flows: 1024,
            max_rules: 16,
        };
        let mut a = Aggregator::new(limits);
        let n: u32 = 100_000;
        for i in 0..n {
            let src = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            let mut o = obs("10.0.0.1", "10.0.0.2", 80, LogKind::Allow, u64::from(i));
            o.src = IpAddr::V4(src);
            o.rule = format!("rule {}", i % 64);
            a.record(&o);
            assert!(a.len() <= limits.max_flows);
            assert!(a.rules.len() <= limits.max_rules);
        }
        let r = a.drain();
        // Every attempt is either in a flow or counted as dropped.
        let counted: u64 = r.flows.iter().map(|f| f.count).sum();
        assert_eq!(counted + r.dropped, u64::from(n));
        assert!(r.flows.len() <= limits.max_flows);
        assert!(r.sample_rate > 1, "shedding must be reported");
        // The reported rate is what was applied: no fewer flows were
        // sampled than 1 in `sample_rate` of the distinct flows offered
        // once the table was past half full.
        assert!(r.flows.len() >= limits.max_flows / 2);
        // A quiet window after an overload reports no shedding.
        a.record(&obs("10.0.0.1", "10.0.0.2", 80, LogKind::Allow, 1));
        let r = a.drain();
        assert_eq!((r.flows.len(), r.dropped, r.sample_rate), (1, 0, 1));
    }

    #[test]
    fn sampling_starts_past_half_full() {
        let mut a = Aggregator::new(Limits {
            max_flows: 100,
            max_rules: 16,
        });
        for i in 0..50u32 {
            let mut o = obs("10.0.0.1", "10.0.0.2", 80, LogKind::Allow, 0);
            o.dst_port = i as u16;
            a.record(&o);
        }
        let r = a.drain();
        assert_eq!((r.flows.len(), r.dropped, r.sample_rate), (50, 0, 1));
    }

    #[test]
    fn kernel_losses_count_as_dropped() {
        let mut a = Aggregator::new(Limits::default());
        a.lost(7);
        assert!(!a.is_empty());
        assert_eq!(a.drain().dropped, 7);
    }
}
