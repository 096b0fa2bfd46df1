//! Cutting a quarantined pod's connections: its conntrack entries (either
//! direction) are deleted over ctnetlink, right after the nft transaction that
//! put its address in the quarantine set committed. Without this, entries
//! created before the quarantine would let a reply through the forensics
//! rule; with it, the next packet of a cut connection is a new one and meets
//! the quarantine chain.
//!
//! `netlink-packet-netfilter` parses and emits conntrack messages; the socket
//! is `netlink-sys`'s, blocking, in the agent's network namespace. One dump
//! per address family (`IPCTNL_MSG_CT_GET` + `NLM_F_DUMP`), then one
//! `IPCTNL_MSG_CT_DELETE` per matching entry, by its original tuple. An entry
//! that is gone by then (`ENOENT`) is not an error.
//!
//! The decision of which addresses are new is pure ([`Quarantined`]).

use std::collections::BTreeSet;
use std::net::IpAddr;

use bulkhead_core::compile::names;
use bulkhead_proto::v1 as pb;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ConntrackMessage, IPTuple, Tuple};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("ctnetlink socket: {0}")]
    Socket(std::io::Error),
    #[error("ctnetlink {op}: {error}")]
    Io {
        op: &'static str,
        error: std::io::Error,
    },
    #[error("ctnetlink: cannot read the kernel's answer: {0}")]
    Decode(String),
}

/// The quarantined addresses the agent knows, from the rulesets it applied.
#[derive(Debug, Default, Clone)]
pub struct Quarantined {
    known: BTreeSet<IpAddr>,
}

fn addrs(elements: &[pb::Element]) -> impl Iterator<Item = IpAddr> + '_ {
    elements.iter().filter_map(|e| match &e.value {
        Some(pb::element::Value::Addr(a)) => a.parse().ok(),
        _ => None,
    })
}

fn is_qpods(name: &str) -> bool {
    name == names::QPODS4 || name == names::QPODS6
}

impl Quarantined {
    /// After a full ruleset applied: the addresses that entered quarantine.
    pub fn after_full(&mut self, rs: &pb::Ruleset) -> Vec<IpAddr> {
        let now: BTreeSet<IpAddr> = rs
            .sets
            .iter()
            .filter(|s| is_qpods(&s.name))
            .flat_map(|s| addrs(&s.elements))
            .collect();
        let new = now.difference(&self.known).copied().collect();
        self.known = now;
        new
    }

    /// After a delta applied: the addresses that entered quarantine.
    pub fn after_delta(&mut self, d: &pb::RulesetDelta) -> Vec<IpAddr> {
        let mut new = Vec::new();
        for s in d.add_sets.iter().filter(|s| is_qpods(&s.name)) {
            for a in addrs(&s.elements) {
                if self.known.insert(a) {
                    new.push(a);
                }
            }
        }
        for c in d.set_changes.iter().filter(|c| is_qpods(&c.set)) {
            for a in addrs(&c.remove) {
                self.known.remove(&a);
            }
            for a in addrs(&c.add) {
                if self.known.insert(a) {
                    new.push(a);
                }
            }
        }
        new
    }
}

fn family(ip: &IpAddr) -> NetfilterProtoFamily {
    if ip.is_ipv4() {
        NetfilterProtoFamily::IPv4
    } else {
        NetfilterProtoFamily::IPv6
    }
}

fn request(family: NetfilterProtoFamily, msg: ConntrackMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = flags;
    hdr.sequence_number = seq;
    let mut packet = NetlinkMessage::new(
        hdr,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            msg,
        )),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

/// The addresses of a tuple list (`CTA_TUPLE_ORIG` or `CTA_TUPLE_REPLY`).
fn tuple_addrs(tuple: &[Tuple]) -> impl Iterator<Item = IpAddr> + '_ {
    tuple.iter().flat_map(|t| match t {
        Tuple::Ip(ips) => ips
            .iter()
            .filter_map(|i| match i {
                IPTuple::SourceAddress(a) | IPTuple::DestinationAddress(a) => Some(*a),
                _ => None,
            })
            .collect::<Vec<_>>(),
        _ => Vec::new(),
    })
}

/// Deletes every conntrack entry with one of `addrs` at either end, in either
/// direction. Returns how many were deleted.
pub fn cut(addrs: &[IpAddr]) -> Result<usize, ConntrackError> {
    if addrs.is_empty() {
        return Ok(0);
    }
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(ConntrackError::Socket)?;
    socket.bind_auto().map_err(ConntrackError::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(ConntrackError::Socket)?;
    let wanted: BTreeSet<IpAddr> = addrs.iter().copied().collect();
    let mut families: Vec<NetfilterProtoFamily> = Vec::new();
    for f in addrs.iter().map(family) {
        if !families.contains(&f) {
            families.push(f);
        }
    }
    let mut seq = 1u32;
    let mut doomed: Vec<(NetfilterProtoFamily, Vec<Tuple>)> = Vec::new();
    for f in families {
        seq += 1;
        let buf = request(
            f,
            ConntrackMessage::Get(vec![]),
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
        );
        socket
            .send(&buf, 0)
            .map_err(|error| ConntrackError::Io { op: "dump", error })?;
        'dump: loop {
            let (data, _) = socket
                .recv_from_full()
                .map_err(|error| ConntrackError::Io { op: "dump", error })?;
            let mut offset = 0;
            while offset < data.len() {
                let msg = <NetlinkMessage<NetfilterMessage>>::deserialize(&data[offset..])
                    .map_err(|e| ConntrackError::Decode(e.to_string()))?;
                let len = msg.header.length as usize;
                match msg.payload {
                    NetlinkPayload::Done(_) => break 'dump,
                    NetlinkPayload::Error(e) => {
                        return Err(ConntrackError::Io {
                            op: "dump",
                            error: e.to_io(),
                        });
                    }
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)),
                        ..
                    }) => {
                        let hit = attrs.iter().any(|a| match a {
                            ConntrackAttribute::CtaTupleOrig(t)
                            | ConntrackAttribute::CtaTupleReply(t) => {
                                tuple_addrs(t).any(|ip| wanted.contains(&ip))
                            }
                            _ => false,
                        });
                        if hit
                            && let Some(orig) = attrs.into_iter().find_map(|a| match a {
                                ConntrackAttribute::CtaTupleOrig(t) => Some(t),
                                _ => None,
                            })
                        {
                            doomed.push((f, orig));
                        }
                    }
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }
    let mut deleted = 0;
    for (f, orig) in doomed {
        seq += 1;
        let buf = request(
            f,
            ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(orig)]),
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
        );
        socket.send(&buf, 0).map_err(|error| ConntrackError::Io {
            op: "delete",
            error,
        })?;
        let (data, _) = socket
            .recv_from_full()
            .map_err(|error| ConntrackError::Io {
                op: "delete",
                error,
            })?;
        let msg = <NetlinkMessage<NetfilterMessage>>::deserialize(&data)
            .map_err(|e| ConntrackError::Decode(e.to_string()))?;
        match msg.payload {
            NetlinkPayload::Error(e) if e.code.is_some() => {
                let error = e.to_io();
                // Gone already (timed out, or deleted with its other half).
                if error.raw_os_error() != Some(libc_enoent()) {
                    return Err(ConntrackError::Io {
                        op: "delete",
                        error,
                    });
                }
            }
            _ => deleted += 1,
        }
    }
    Ok(deleted)
}

/// `ENOENT` (2 on Linux).
fn libc_enoent() -> i32 {
    2
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn addr(a: &str) -> pb::Element {
        pb::Element {
            value: Some(pb::element::Value::Addr(a.into())),
        }
    }

    #[test]
    fn only_addresses_entering_quarantine_are_cut() {
        let mut q = Quarantined::default();
        let rs = pb::Ruleset {
            sets: vec![pb::Set {
                name: names::QPODS4.into(),
                elements: vec![addr("10.0.0.1")],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            q.after_full(&rs),
            vec!["10.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert!(q.after_full(&rs).is_empty());
        let d = pb::RulesetDelta {
            set_changes: vec![pb::SetChange {
                set: names::QPODS4.into(),
                add: vec![addr("10.0.0.2")],
                remove: vec![addr("10.0.0.1")],
            }],
            ..Default::default()
        };
        assert_eq!(
            q.after_delta(&d),
            vec!["10.0.0.2".parse::<IpAddr>().unwrap()]
        );
        // 10.0.0.1 left: quarantined again later, it is cut again.
        let again = pb::RulesetDelta {
            set_changes: vec![pb::SetChange {
                set: names::QPODS4.into(),
                add: vec![addr("10.0.0.1")],
                remove: vec![],
            }],
            ..Default::default()
        };
        assert_eq!(
            q.after_delta(&again),
            vec!["10.0.0.1".parse::<IpAddr>().unwrap()]
        );
    }
}
