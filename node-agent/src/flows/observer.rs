//! The nflog reader: binds the node's nflog group, reads batches of logged
//! packets on a dedicated thread (blocking reads, never on the async
//! runtime), folds the records one packet left into one observation, and
//! hands them to the aggregator.
//!
//! The kernel side is configured to be cheap and never to slow the
//! dataplane: only the first 80 bytes of each packet are copied (the IP and
//! transport headers), messages are batched (up to 64 per netlink message or
//! 20 ms), and when our socket is full the kernel drops log messages, not
//! packets. Per-instance sequence numbers (`NFULNL_CFG_F_SEQ`) show the gaps,
//! which are counted as shed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulkhead_core::compile::observe::{self, LogKind};
use bulkhead_proto::v1 as pb;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{
    ConfigCmd, ConfigFlags, ConfigMode, ConfigNla, PacketNla, Timeout, ULogMessage, config_request,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{Socket, constants::NETLINK_NETFILTER};
use tracing::{info, warn};

use super::{Flows, Observation};

/// Linux's ENOBUFS: the socket's receive queue overflowed.
const ENOBUFS: i32 = 105;
/// Bytes of each packet copied to us: enough for IPv4 with options or IPv6,
/// plus the ports.
const COPY_RANGE: u32 = 80;
const QUEUE_THRESHOLD: u32 = 64;
const FLUSH: Duration = Duration::from_millis(20);
const RCVBUF: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("nflog socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("nflog group {group}: the kernel refused {what}: error {code}")]
    Refused {
        group: u16,
        what: &'static str,
        code: i32,
    },
    #[error("nflog group {group}: no answer to {what}")]
    NoAnswer { group: u16, what: &'static str },
}

/// A bound nflog group.
#[derive(Debug)]
pub struct Observer {
    sock: Socket,
    group: u16,
}

impl Observer {
    /// Binds `group` in this network namespace. Fails when another process
    /// already listens on it, or without CAP_NET_ADMIN.
    pub fn bind(group: u16) -> Result<Self, ObserveError> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        // Best effort: a larger queue absorbs bursts; what still overflows is counted.
        if let Err(e) = sock.set_rx_buf_sz(RCVBUF) {
            warn!(error = %e, "could not enlarge the nflog socket buffer");
        }
        let obs = Observer { sock, group };
        obs.config("bind", vec![ConfigCmd::Bind.into()])?;
        obs.config(
            "configure",
            vec![
                ConfigMode::new_packet(COPY_RANGE).into(),
                ConfigNla::QThresh(QUEUE_THRESHOLD),
                Timeout::from(FLUSH).into(),
                ConfigFlags::SEQ.into(),
            ],
        )?;
        Ok(obs)
    }

    fn config(&self, what: &'static str, nlas: Vec<ConfigNla>) -> Result<(), ObserveError> {
        let msg = config_request(NetfilterProtoFamily::IPv4, self.group, nlas);
        let mut buf = vec![0; msg.header.length as usize];
        msg.serialize(&mut buf[..]);
        self.sock.send(&buf, 0)?;
        let mut rx = vec![0u8; 8192];
        // The ack may follow logged packets already queued: skip those.
        for _ in 0..64 {
            let n = self.sock.recv(&mut &mut rx[..], 0)?;
            let mut off = 0;
            while off < n {
                let Ok(m) = NetlinkMessage::<NetfilterMessage>::deserialize(&rx[off..n]) else {
                    break;
                };
                let len = m.header.length as usize;
                if let NetlinkPayload::Error(e) = &m.payload {
                    return match e.code {
                        None => Ok(()),
                        Some(code) => Err(ObserveError::Refused {
                            group: self.group,
                            what,
                            code: code.get(),
                        }),
                    };
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
        Err(ObserveError::NoAnswer {
            group: self.group,
            what,
        })
    }

    /// Reads what is queued now, without waiting (for tests and tools that
    /// drive the observer themselves); returns the observations recorded.
    pub fn poll(&self, reader: &mut Reader, flows: &Flows) -> std::io::Result<usize> {
        self.sock.set_non_blocking(true)?;
        let mut buf = vec![0u8; 1 << 17];
        let mut total = 0;
        loop {
            let n = match self.sock.recv(&mut &mut buf[..], 0) {
                Ok(n) => n.min(buf.len()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(total),
                Err(e) if e.raw_os_error() == Some(ENOBUFS) => {
                    flows.counters.overruns.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let mut batch = Vec::new();
            let (messages, lost) = reader.read(&buf[..n], now, &mut batch);
            flows
                .counters
                .messages
                .fetch_add(messages, Ordering::Relaxed);
            if lost > 0 {
                flows.lost(lost);
            }
            flows.record_all(&batch);
            total += batch.len();
        }
    }

    /// Reads until the socket fails; meant for a dedicated thread.
    pub fn run(self, flows: Flows) {
        info!(group = self.group, "observing flows (nflog)");
        let mut buf = vec![0u8; 1 << 17];
        let mut reader = Reader::default();
        let mut batch = Vec::with_capacity(256);
        loop {
            let n = match self.sock.recv(&mut &mut buf[..], 0) {
                Ok(n) => n.min(buf.len()),
                Err(e) if e.raw_os_error() == Some(ENOBUFS) => {
                    flows.counters.overruns.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(error = %e, "the nflog socket failed; flows are no longer observed");
                    return;
                }
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            batch.clear();
            let (messages, lost) = reader.read(&buf[..n], now, &mut batch);
            flows
                .counters
                .messages
                .fetch_add(messages, Ordering::Relaxed);
            if lost > 0 {
                flows.lost(lost);
            }
            flows.record_all(&batch);
        }
    }
}

/// Parses buffers of nflog messages; remembers the sequence number.
#[derive(Debug, Default)]
pub struct Reader {
    next_seq: Option<u32>,
}

/// The headers of a logged packet, with its source port so that the records
/// of one packet can be told from another connection's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Headers {
    src: IpAddr,
    dst: IpAddr,
    protocol: pb::L4Proto,
    src_port: u16,
    dst_port: u16,
}

impl Reader {
    /// Reads one buffer: appends an observation per packet to `out`;
    /// returns (messages read, messages lost before them).
    pub fn read(&mut self, buf: &[u8], now: u64, out: &mut Vec<Observation>) -> (u64, u64) {
        let mut messages = 0;
        let mut lost = 0u64;
        // Records of the packets in this buffer, in order; one packet's
        // records (egress, then ingress or the tail) are next to each other.
        let mut pending: Vec<(Headers, Vec<(LogKind, String)>)> = Vec::new();
        let mut off = 0;
        while off < buf.len() {
            let Ok(m) = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[off..]) else {
                break;
            };
            let len = m.header.length as usize;
            if len == 0 {
                break;
            }
            off += (len + 3) & !3;
            let NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
                ..
            }) = m.payload
            else {
                continue;
            };
            messages += 1;
            let mut prefix = None;
            let mut headers = None;
            for nla in nlas {
                match nla {
                    PacketNla::Prefix(p) => prefix = p.to_str().ok().map(str::to_owned),
                    PacketNla::Payload(p) => headers = parse_headers(&p),
                    PacketNla::Seq(seq) => {
                        if let Some(want) = self.next_seq {
                            let gap = seq.wrapping_sub(want);
                            if gap > 0 && gap < (1 << 31) {
                                lost += u64::from(gap);
                            }
                        }
                        self.next_seq = Some(seq.wrapping_add(1));
                    }
                    _ => {}
                }
            }
            let (Some(prefix), Some(h)) = (prefix, headers) else {
                continue;
            };
            let Some((kind, rule)) = observe::parse_prefix(&prefix) else {
                continue;
            };
            let rec = (kind, rule.to_owned());
            match pending.iter_mut().rev().take(8).find(|(ph, _)| *ph == h) {
                Some((_, recs)) => recs.push(rec),
                None => pending.push((h, vec![rec])),
            }
        }
        for (h, recs) in &pending {
            if let Some((kind, rule)) = observe::merge(recs.iter().map(|(k, r)| (*k, r.as_str()))) {
                out.push(Observation {
                    src: h.src,
                    dst: h.dst,
                    protocol: h.protocol,
                    dst_port: h.dst_port,
                    kind,
                    rule: rule.to_owned(),
                    unix_millis: now,
                });
            }
        }
        (messages, lost)
    }
}

fn l4(proto: u8) -> pb::L4Proto {
    match proto {
        6 => pb::L4Proto::Tcp,
        17 => pb::L4Proto::Udp,
        132 => pb::L4Proto::Sctp,
        _ => pb::L4Proto::Unspecified,
    }
}

fn ports(proto: pb::L4Proto, l4: &[u8]) -> (u16, u16) {
    if proto == pb::L4Proto::Unspecified || l4.len() < 4 {
        return (0, 0);
    }
    (
        u16::from_be_bytes([l4[0], l4[1]]),
        u16::from_be_bytes([l4[2], l4[3]]),
    )
}

/// The addresses, protocol and ports of an IPv4 or IPv6 packet.
fn parse_headers(p: &[u8]) -> Option<Headers> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let proto = l4(p[9]);
            let src = IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19]));
            let frag_offset = (u16::from(p[6] & 0x1f) << 8) | u16::from(p[7]);
            let (src_port, dst_port) = if frag_offset == 0 {
                ports(proto, p.get(ihl..).unwrap_or_default())
            } else {
                (0, 0)
            };
            Some(Headers {
                src,
                dst,
                protocol: proto,
                src_port,
                dst_port,
            })
        }
        6 if p.len() >= 40 => {
            let proto = l4(p[6]);
            let a = |i: usize| -> Option<IpAddr> {
                let b: [u8; 16] = p.get(i..i + 16)?.try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(b)))
            };
            let (src_port, dst_port) = ports(proto, &p[40..]);
            Some(Headers {
                src: a(8)?,
                dst: a(24)?,
                protocol: proto,
                src_port,
                dst_port,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn v4_tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[9] = 6;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    fn parses_ipv4_and_ipv6_headers() {
        let h = parse_headers(&v4_tcp([10, 0, 0, 1], [10, 0, 0, 2], 40000, 80)).unwrap();
        assert_eq!(h.src, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            (h.protocol, h.src_port, h.dst_port),
            (pb::L4Proto::Tcp, 40000, 80)
        );
        let mut p6 = vec![0u8; 48];
        p6[0] = 0x60;
        p6[6] = 17;
        p6[23] = 1;
        p6[39] = 2;
        p6[42..44].copy_from_slice(&53u16.to_be_bytes());
        let h = parse_headers(&p6).unwrap();
        assert_eq!(h.dst, "::2".parse::<IpAddr>().unwrap());
        assert_eq!((h.protocol, h.dst_port), (pb::L4Proto::Udp, 53));
        assert_eq!(parse_headers(&[0x45, 0, 0]), None);
        assert_eq!(parse_headers(&[]), None);
    }

    fn nflog_msg(payload: Vec<u8>, prefix: &str, seq: u32) -> Vec<u8> {
        use netlink_packet_core::NetlinkHeader;
        use netlink_packet_netfilter::NetfilterHeader;
        let nlas = vec![
            PacketNla::Prefix(std::ffi::CString::new(prefix).unwrap()),
            PacketNla::Seq(seq),
            PacketNla::Payload(payload),
        ];
        let mut m = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, LOG_GROUP_FOR_TEST),
                ULogMessage::Packet(nlas),
            )),
        );
        m.finalize();
        let mut buf = vec![0; m.header.length as usize];
        m.serialize(&mut buf);
        while !buf.len().is_multiple_of(4) {
            buf.push(0);
        }
        buf
    }

    const LOG_GROUP_FOR_TEST: u16 = observe::LOG_GROUP;

    #[test]
    fn one_packet_s_records_merge_and_gaps_count_as_lost() {
        let a = v4_tcp([10, 0, 0, 1], [10, 0, 0, 2], 40000, 80);
        let b = v4_tcp([10, 0, 0, 1], [10, 0, 0, 2], 40001, 80);
        let mut buf = Vec::new();
        // Packet a: allowed at egress, denied at ingress.
        buf.extend(nflog_msg(a.clone(), "bh A np x/e egress[0]", 1));
        buf.extend(nflog_msg(
            a,
            "bh D np isolated for ingress: no rule allows",
            2,
        ));
        // Packet b: allowed at egress, then by default; two messages lost before it.
        buf.extend(nflog_msg(b.clone(), "bh A np x/e egress[0]", 5));
        buf.extend(nflog_msg(b, "bh N not isolated", 6));
        let mut r = Reader::default();
        let mut out = Vec::new();
        let (messages, lost) = r.read(&buf, 7, &mut out);
        assert_eq!((messages, lost), (4, 2));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].kind, LogKind::Deny);
        assert_eq!(out[0].rule, "np isolated for ingress: no rule allows");
        assert_eq!(out[1].kind, LogKind::Allow);
        assert_eq!(out[1].rule, "np x/e egress[0]");
        assert_eq!((out[1].dst_port, out[1].unix_millis), (80, 7));
    }
}
