//! Element-only deltas as one nf_tables netlink batch, sent by the agent
//! itself: no nft process, and no dump of the kernel's table first (nft
//! fetches its cache of our whole table before any batch that names it, which
//! is what makes a small delta cost tens of milliseconds).
//!
//! Only what changes set elements, verdict-map entries and the generation
//! record (the one element of set `bhmeta`) goes this way; a delta that
//! adds, replaces or deletes chains, sets or maps goes through nft. The batch
//! is `BATCH_BEGIN, DELSETELEM/NEWSETELEM..., DELSETELEM bhmeta (flush),
//! NEWSETELEM bhmeta, BATCH_END`, one `sendmsg`: the kernel applies all of it
//! or, on any error, aborts the transaction, and the error names the set and
//! the element. No rule changes: a new rule (or a verdict-map element that
//! jumps to a chain) makes the kernel validate the whole table at commit,
//! ~4 ms against this project's largest bench table.
//!
//! The encodings are those nft uses (read from nftables' `src/intervals.c`,
//! `src/netlink.c` and the kernel's `include/uapi/linux/netfilter/nf_tables.h`):
//! addresses in network order, ports as 2 big-endian bytes, `ifname` as the
//! name padded with zeros to 16 bytes, each field of a concatenation padded to
//! a multiple of 4 bytes; verdicts as `NFTA_DATA_VERDICT` (code, and chain
//! for jump and goto). Interval sets are left to nft (see [`set_elems`]).
//! The record's comment is libnftnl's user data: type
//! `NFTNL_UDATA_SET_ELEM_COMMENT` (0), one length byte, the comment with its
//! NUL.
//!
//! Pure: [`plan`] and [`Plan::encode`] turn values into bytes; [`Conn`] does
//! the I/O.

use std::collections::HashMap;
use std::net::IpAddr;

use bulkhead_core::compile::names;
use bulkhead_proto::v1 as pb;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CREATE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_netfilter::nftables::{
    DataAttribute, ListAttribute, NfTablesMessage, SetAttribute, SetElementAttribute,
    SetElementFlags, SetElementList, SetElementMessage, SetFlags, SetMessage, Verdict,
    VerdictAttribute,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{Socket, constants::NETLINK_NETFILTER};

use super::DataplaneError;
use super::render::RenderError;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NF_DROP` / `NF_ACCEPT` (linux/netfilter.h).
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const IFNAMSIZ: usize = 16;
/// libnftnl's `NFTNL_UDATA_SET_ELEM_COMMENT`.
const UDATA_COMMENT: u8 = 0;
/// `NFTA_SET_ELEM_LIST_ELEMENTS` is a nest whose length is 16 bits: keep each
/// message's elements well under 64 KiB (nft splits the same way).
const MAX_ELEMENTS_BYTES: usize = 48 * 1024;
/// `NLMSG_ERROR` and the extended-ack attributes (linux/netlink.h).
const NLMSG_ERROR: u16 = 2;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_OFFS: u16 = 2;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;

fn bad(what: impl Into<String>, problem: impl Into<String>) -> RenderError {
    RenderError {
        what: what.into(),
        problem: problem.into(),
    }
}

/// A verdict-map entry's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KVerdict {
    Code(u32),
    Chain(Verdict, String),
}

/// One element as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KElem {
    pub key: Vec<u8>,
    /// `NFT_SET_ELEM_INTERVAL_END`.
    pub end: bool,
    pub verdict: Option<KVerdict>,
    /// The delta's element it comes from, for error messages.
    pub what: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    AddElems {
        set: String,
        elems: Vec<KElem>,
    },
    DelElems {
        set: String,
        elems: Vec<KElem>,
    },
    /// `DELSETELEM` without elements: the kernel flushes the set.
    FlushSet {
        set: String,
    },
    /// The generation record (schema 2): the one element of set `bhmeta`,
    /// key [`RECORD_KEY`](super::render::RECORD_KEY), with this comment.
    /// Follows a [`Op::FlushSet`] of `bhmeta`.
    Record {
        comment: String,
    },
}

/// What one batch does, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<Op>,
}

/// A key as bytes, or an interval (a prefix or a range).
enum KeyVal {
    One(Vec<u8>),
    Interval,
}

fn ip(s: &str) -> Result<IpAddr, String> {
    s.parse::<IpAddr>()
        .map_err(|_| format!("{s:?} is not an IP address"))
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn ifname(n: &str) -> Result<Vec<u8>, String> {
    if n.is_empty() || n.len() >= IFNAMSIZ || n.contains('\0') {
        return Err(format!("{n:?} is not an interface name"));
    }
    let mut b = n.as_bytes().to_vec();
    b.resize(IFNAMSIZ, 0);
    Ok(b)
}

fn port(p: u32) -> Result<[u8; 2], String> {
    u16::try_from(p)
        .map(u16::to_be_bytes)
        .map_err(|_| format!("{p} is not a port"))
}

/// `addr . port` with the port padded to 4 bytes, as nft concatenates.
fn concat(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    out
}

/// An element's key.
fn key_of(e: &pb::Element) -> Result<KeyVal, String> {
    use pb::element::Value as E;
    Ok(match &e.value {
        Some(E::Addr(a)) => KeyVal::One(octets(ip(a)?)),
        // Intervals: only for interval sets, which nft encodes.
        Some(E::Prefix(_)) | Some(E::Range(_)) => KeyVal::Interval,
        Some(E::AddrPort(ap)) => KeyVal::One(concat(&[&octets(ip(&ap.addr)?), &port(ap.port)?])),
        Some(E::Port(p)) => KeyVal::One(port(*p)?.to_vec()),
        Some(E::Ifname(n)) => KeyVal::One(ifname(n)?),
        Some(E::IfAddr(ia)) => KeyVal::One(concat(&[&ifname(&ia.ifname)?, &octets(ip(&ia.addr)?)])),
        None => return Err("empty element".into()),
    })
}

fn describe(e: &pb::Element) -> String {
    use pb::element::Value as E;
    match &e.value {
        Some(E::Addr(a)) => a.clone(),
        Some(E::Prefix(p)) => format!("{}/{}", p.addr, p.len),
        Some(E::Range(r)) => format!("{}-{}", r.first, r.last),
        Some(E::AddrPort(ap)) => format!("{} . {}", ap.addr, ap.port),
        Some(E::Port(p)) => p.to_string(),
        Some(E::Ifname(n)) => n.clone(),
        Some(E::IfAddr(ia)) => format!("{} . {}", ia.ifname, ia.addr),
        None => "(empty)".into(),
    }
}

/// The kernel elements of `elems` for a plain (not interval) set.
/// `Ok(None)`: nft must encode these. That is every element of an interval
/// set: nft drops the end element of a range that the next one continues
/// (and adds a zero end element to an empty set), so which elements the
/// kernel holds for a prefix, and thus what deleting it takes, depends on
/// the set's contents, which only nft's cache knows. The compiler never
/// changes the elements of an interval set (`b4_`/`b6_` are named by their
/// contents), so this costs nothing in practice.
fn set_elems(
    set: &str,
    interval: bool,
    elems: &[pb::Element],
) -> Result<Option<Vec<KElem>>, RenderError> {
    if interval {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(elems.len());
    for e in elems {
        match key_of(e).map_err(|p| bad(format!("element {} of {set}", describe(e)), p))? {
            KeyVal::One(key) => out.push(KElem {
                key,
                end: false,
                verdict: None,
                what: describe(e),
            }),
            KeyVal::Interval => return Ok(None),
        }
    }
    Ok(Some(out))
}

fn map_verdict(v: &pb::Verdict, what: &str) -> Result<KVerdict, RenderError> {
    use pb::verdict::Kind as V;
    Ok(match &v.kind {
        Some(V::Accept(_)) => KVerdict::Code(NF_ACCEPT),
        Some(V::Drop(_)) => KVerdict::Code(NF_DROP),
        Some(V::Return(_)) => KVerdict::Code(Verdict::Return.into()),
        Some(V::Jump(t)) => KVerdict::Chain(Verdict::Jump, t.clone()),
        Some(V::Goto(t)) => KVerdict::Chain(Verdict::Goto, t.clone()),
        _ => {
            return Err(bad(
                what.to_owned(),
                "a map verdict must be accept, drop, return, jump or goto",
            ));
        }
    })
}

fn map_key(map: &str, k: &pb::Element) -> Result<Option<Vec<u8>>, RenderError> {
    match key_of(k).map_err(|p| bad(format!("key {} of map {map}", describe(k)), p))? {
        KeyVal::One(key) => Ok(Some(key)),
        KeyVal::Interval => Ok(None),
    }
}

/// What changes in one batch.
#[derive(Debug, Default)]
pub struct Changes<'a> {
    /// Element changes, applied in order: removals, then additions, per set.
    pub sets: Vec<&'a pb::SetChange>,
    pub maps: &'a [pb::MapChange],
    /// Sets to flush and refill with these elements (after `sets`).
    pub refill: Vec<(&'a str, &'a [pb::Element])>,
    /// The generation record to write: `(node, generation)`.
    pub meta: Option<(&'a str, u64)>,
}

/// The batch for `c`, given whether each named set is an interval set.
/// `Ok(None)`: something in it is for nft to encode (a set we do not know
/// the flags of, a range in a plain set, a concatenated interval).
pub fn plan(
    c: &Changes<'_>,
    interval: &HashMap<String, bool>,
) -> Result<Option<Plan>, RenderError> {
    let mut p = Plan::default();
    let elems = |set: &str, es: &[pb::Element]| -> Result<Option<Vec<KElem>>, RenderError> {
        match interval.get(set) {
            Some(iv) => set_elems(set, *iv, es),
            None => Ok(None),
        }
    };
    for sc in &c.sets {
        if !sc.remove.is_empty() {
            let Some(e) = elems(&sc.set, &sc.remove)? else {
                return Ok(None);
            };
            p.ops.push(Op::DelElems {
                set: sc.set.clone(),
                elems: e,
            });
        }
        if !sc.add.is_empty() {
            let Some(e) = elems(&sc.set, &sc.add)? else {
                return Ok(None);
            };
            p.ops.push(Op::AddElems {
                set: sc.set.clone(),
                elems: e,
            });
        }
    }
    for mc in c.maps {
        if !mc.remove.is_empty() {
            let mut out = Vec::with_capacity(mc.remove.len());
            for k in &mc.remove {
                let Some(key) = map_key(&mc.map, k)? else {
                    return Ok(None);
                };
                out.push(KElem {
                    key,
                    end: false,
                    verdict: None,
                    what: describe(k),
                });
            }
            p.ops.push(Op::DelElems {
                set: mc.map.clone(),
                elems: out,
            });
        }
        if !mc.add.is_empty() {
            let mut out = Vec::with_capacity(mc.add.len());
            for e in &mc.add {
                let what = format!("entries of map {}", mc.map);
                let k = e
                    .key
                    .as_ref()
                    .ok_or_else(|| bad(&what, "entry without key"))?;
                let v = e
                    .verdict
                    .as_ref()
                    .ok_or_else(|| bad(&what, "entry without verdict"))?;
                let Some(key) = map_key(&mc.map, k)? else {
                    return Ok(None);
                };
                out.push(KElem {
                    key,
                    end: false,
                    verdict: Some(map_verdict(v, &what)?),
                    what: describe(k),
                });
            }
            p.ops.push(Op::AddElems {
                set: mc.map.clone(),
                elems: out,
            });
        }
    }
    for (set, es) in &c.refill {
        p.ops.push(Op::FlushSet {
            set: (*set).to_owned(),
        });
        if !es.is_empty() {
            let Some(e) = elems(set, es)? else {
                return Ok(None);
            };
            p.ops.push(Op::AddElems {
                set: (*set).to_owned(),
                elems: e,
            });
        }
    }
    if let Some((node, generation)) = c.meta {
        let comment = super::render::meta_comment(node, generation);
        // nft caps comments at 128 bytes; leave longer ones to nft's error.
        if comment.len() > 128 {
            return Ok(None);
        }
        p.ops.push(Op::FlushSet {
            set: names::META.to_owned(),
        });
        p.ops.push(Op::Record { comment });
    }
    Ok(Some(p))
}

/// Whether a delta changes only set elements, map entries and the
/// generation record.
pub fn elements_only(d: &pb::RulesetDelta) -> bool {
    d.add_sets.is_empty()
        && d.delete_sets.is_empty()
        && d.add_maps.is_empty()
        && d.delete_maps.is_empty()
        && d.add_chains.is_empty()
        && d.replace_chains.is_empty()
        && d.delete_chains.is_empty()
}

/// How the agent-managed sets must change from what we last wrote.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentChange {
    /// They already hold exactly this.
    Same,
    /// Element changes, per set.
    Diff(Vec<pb::SetChange>),
    /// We do not know what they hold: flush and refill.
    Refill,
}

fn elem_id(e: &pb::Element) -> String {
    format!("{:?}", e.value)
}

/// What turns `before` (what we last wrote, `None`: unknown) into `now`.
/// Sets not named in `now` are left alone, as a refill leaves them.
pub fn agent_change(
    before: Option<&[(String, Vec<pb::Element>)]>,
    now: &[(String, Vec<pb::Element>)],
) -> AgentChange {
    let Some(before) = before else {
        return AgentChange::Refill;
    };
    let mut diffs = Vec::new();
    for (name, elems) in now {
        let old: &[pb::Element] = before
            .iter()
            .find(|(n, _)| n == name)
            .map_or(&[], |(_, e)| e.as_slice());
        if old == elems.as_slice() {
            continue;
        }
        let old_ids: std::collections::HashSet<String> = old.iter().map(elem_id).collect();
        let new_ids: std::collections::HashSet<String> = elems.iter().map(elem_id).collect();
        let sc = pb::SetChange {
            set: name.clone(),
            add: elems
                .iter()
                .filter(|e| !old_ids.contains(&elem_id(e)))
                .cloned()
                .collect(),
            remove: old
                .iter()
                .filter(|e| !new_ids.contains(&elem_id(e)))
                .cloned()
                .collect(),
        };
        if !sc.add.is_empty() || !sc.remove.is_empty() {
            diffs.push(sc);
        }
    }
    if diffs.is_empty() {
        AgentChange::Same
    } else {
        AgentChange::Diff(diffs)
    }
}

fn nf(msg: NfTablesMessage, flags: u16, seq: u32) -> NetlinkMessage<NetfilterMessage> {
    let mut m = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0),
            msg,
        )),
    );
    m.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    m.header.sequence_number = seq;
    m.finalize();
    m
}

fn control(msg: ControlMessage, seq: u32) -> NetlinkMessage<NetfilterMessage> {
    let mut m = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
            NetfilterMessageInner::None(msg),
        )),
    );
    m.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    m.header.sequence_number = seq;
    m.finalize();
    m
}

/// A comment as libnftnl's user data: type `NFTNL_UDATA_SET_ELEM_COMMENT`,
/// one length byte, the text and its NUL.
fn comment_udata(comment: &str) -> Vec<u8> {
    let mut udata = vec![UDATA_COMMENT, (comment.len() + 1) as u8];
    udata.extend_from_slice(comment.as_bytes());
    udata.push(0);
    udata
}

fn elem_attr(e: &KElem) -> ListAttribute<SetElementAttribute> {
    let mut attrs = vec![SetElementAttribute::Key(DataAttribute::Value(
        e.key.clone(),
    ))];
    if e.end {
        attrs.push(SetElementAttribute::Flags(SetElementFlags::IntervalEnd));
    }
    match &e.verdict {
        Some(KVerdict::Code(c)) => {
            attrs.push(SetElementAttribute::Data(DataAttribute::Verdict(vec![
                VerdictAttribute::Code(Verdict::from(*c)),
            ])))
        }
        Some(KVerdict::Chain(v, chain)) => {
            attrs.push(SetElementAttribute::Data(DataAttribute::Verdict(vec![
                VerdictAttribute::Code(*v),
                VerdictAttribute::Chain(chain.clone()),
            ])))
        }
        None => {}
    }
    ListAttribute::Element(attrs)
}

/// What one message of a batch stands for.
#[derive(Debug, Clone)]
struct MsgInfo {
    seq: u32,
    what: String,
    /// The elements, in the order of the message's element list.
    elems: Vec<String>,
}

/// A batch ready to send.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    msgs: Vec<MsgInfo>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// One batch: `BATCH_BEGIN`, the operations, `BATCH_END`; every message
    /// asks for an ack. Element lists longer than fits in one netlink nest
    /// are split over several messages of the same batch.
    pub fn encode(&self) -> Encoded {
        let mut out = Vec::new();
        let mut msgs = Vec::new();
        let mut seq = 0u32;
        let mut push = |m: NetlinkMessage<NetfilterMessage>,
                        what: String,
                        elems: Vec<String>,
                        out: &mut Vec<u8>| {
            let mut buf = vec![0u8; m.buffer_len()];
            m.serialize(&mut buf);
            out.extend_from_slice(&buf);
            msgs.push(MsgInfo {
                seq: m.header.sequence_number,
                what,
                elems,
            });
        };
        let table = names::TABLE.to_owned();
        push(
            control(ControlMessage::BatchBegin, seq),
            "begin the batch".into(),
            vec![],
            &mut out,
        );
        for op in &self.ops {
            match op {
                Op::AddElems { set, elems } | Op::DelElems { set, elems } => {
                    let add = matches!(op, Op::AddElems { .. });
                    let mut chunk: Vec<ListAttribute<SetElementAttribute>> = Vec::new();
                    let mut names_ = Vec::new();
                    let mut size = 0;
                    let mut flush = |chunk: &mut Vec<ListAttribute<SetElementAttribute>>,
                                     names_: &mut Vec<String>,
                                     out: &mut Vec<u8>| {
                        if chunk.is_empty() {
                            return;
                        }
                        seq += 1;
                        let body = SetElementMessage {
                            attributes: vec![
                                SetElementList::Table(table.clone()),
                                SetElementList::Set(set.clone()),
                                SetElementList::Elements(std::mem::take(chunk)),
                            ],
                        };
                        let (msg, flags, verb) = if add {
                            (NfTablesMessage::NewSetElement(body), NLM_F_CREATE, "add")
                        } else {
                            (NfTablesMessage::DeleteSetElement(body), 0, "delete")
                        };
                        push(
                            nf(msg, flags, seq),
                            format!("{verb} elements of {set}"),
                            std::mem::take(names_),
                            out,
                        );
                    };
                    for e in elems {
                        let a = elem_attr(e);
                        let len = netlink_packet_core::Emitable::buffer_len(&a);
                        if size + len > MAX_ELEMENTS_BYTES {
                            flush(&mut chunk, &mut names_, &mut out);
                            size = 0;
                        }
                        size += len;
                        chunk.push(a);
                        names_.push(e.what.clone());
                    }
                    flush(&mut chunk, &mut names_, &mut out);
                }
                Op::FlushSet { set } => {
                    seq += 1;
                    push(
                        nf(
                            NfTablesMessage::DeleteSetElement(SetElementMessage {
                                attributes: vec![
                                    SetElementList::Table(table.clone()),
                                    SetElementList::Set(set.clone()),
                                ],
                            }),
                            0,
                            seq,
                        ),
                        format!("flush set {set}"),
                        vec![],
                        &mut out,
                    );
                }
                Op::Record { comment } => {
                    seq += 1;
                    let attrs = vec![
                        SetElementAttribute::Key(DataAttribute::Value(
                            super::render::RECORD_KEY.to_ne_bytes().to_vec(),
                        )),
                        SetElementAttribute::UserData(comment_udata(comment)),
                    ];
                    push(
                        nf(
                            NfTablesMessage::NewSetElement(SetElementMessage {
                                attributes: vec![
                                    SetElementList::Table(table.clone()),
                                    SetElementList::Set(names::META.to_owned()),
                                    SetElementList::Elements(vec![ListAttribute::Element(attrs)]),
                                ],
                            }),
                            NLM_F_CREATE,
                            seq,
                        ),
                        format!("write the generation record ({comment:?})"),
                        vec![comment.clone()],
                        &mut out,
                    );
                }
            }
        }
        seq += 1;
        push(
            control(ControlMessage::BatchEnd, seq),
            "commit the batch".into(),
            vec![],
            &mut out,
        );
        Encoded { bytes: out, msgs }
    }
}

fn u16_ne(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn u32_ne(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

/// `(offset, length)` of each element attribute of the message at `start`,
/// offsets counted from the message's start (as the kernel's extended ack).
fn element_spans(bytes: &[u8], start: usize) -> Vec<(usize, usize)> {
    let Some(len) = u32_ne(bytes, start) else {
        return vec![];
    };
    let end = (start + len as usize).min(bytes.len());
    let mut at = start + 16 + 4;
    let mut spans = Vec::new();
    while at + 4 <= end {
        let (Some(l), Some(t)) = (u16_ne(bytes, at), u16_ne(bytes, at + 2)) else {
            break;
        };
        let l = l as usize;
        if l < 4 {
            break;
        }
        if t & NLA_TYPE_MASK == NFTA_SET_ELEM_LIST_ELEMENTS {
            let mut e = at + 4;
            while e + 4 <= at + l {
                let Some(el) = u16_ne(bytes, e).map(usize::from) else {
                    break;
                };
                if el < 4 {
                    break;
                }
                spans.push((e - start, el));
                e += el.next_multiple_of(4);
            }
        }
        at += l.next_multiple_of(4);
    }
    spans
}

/// One answer of the kernel to one message of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    seq: u32,
    code: i32,
    msg: Option<String>,
    offset: Option<u32>,
}

/// Parses the `NLMSG_ERROR` messages (acks and errors) in `buf`.
fn answers(buf: &[u8]) -> Vec<Answer> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= buf.len() {
        let (Some(len), Some(ty), Some(flags)) =
            (u32_ne(buf, at), u16_ne(buf, at + 4), u16_ne(buf, at + 6))
        else {
            break;
        };
        let len = len as usize;
        if len < 16 || at + len > buf.len() {
            break;
        }
        if ty == NLMSG_ERROR && len >= 16 + 4 + 16 {
            let code = u32_ne(buf, at + 16).unwrap_or(0) as i32;
            let orig_len = u32_ne(buf, at + 20).unwrap_or(0) as usize;
            let seq = u32_ne(buf, at + 28).unwrap_or(0);
            let mut a = Answer {
                seq,
                code,
                msg: None,
                offset: None,
            };
            if flags & NLM_F_ACK_TLVS != 0 {
                // After the original header, and its payload unless capped.
                let capped = flags & netlink_packet_core::NLM_F_CAPPED != 0;
                let mut t = at + 20 + if capped || code == 0 { 16 } else { orig_len };
                t = t.next_multiple_of(4);
                while t + 4 <= at + len {
                    let (Some(l), Some(k)) = (u16_ne(buf, t), u16_ne(buf, t + 2)) else {
                        break;
                    };
                    let l = l as usize;
                    if l < 4 || t + l > at + len {
                        break;
                    }
                    let v = &buf[t + 4..t + l];
                    match k & NLA_TYPE_MASK {
                        NLMSGERR_ATTR_MSG => {
                            let s = v.split(|b| *b == 0).next().unwrap_or_default();
                            a.msg = Some(String::from_utf8_lossy(s).into_owned());
                        }
                        NLMSGERR_ATTR_OFFS => a.offset = u32_ne(v, 0),
                        _ => {}
                    }
                    t += l.next_multiple_of(4);
                }
            }
            out.push(a);
        }
        at += len.next_multiple_of(4);
    }
    out
}

impl Encoded {
    /// The message with `seq`: its start in `bytes` and what it stands for.
    fn message(&self, seq: u32) -> Option<(usize, &MsgInfo)> {
        let mut at = 0;
        for m in &self.msgs {
            if m.seq == seq {
                return Some((at, m));
            }
            at += u32_ne(&self.bytes, at)? as usize;
        }
        None
    }

    /// The refusal in words: `delete elements of p4_x: element 10.0.0.1: No
    /// such file or directory`.
    fn explain(&self, a: &Answer) -> String {
        let err = std::io::Error::from_raw_os_error(-a.code).to_string();
        let Some((start, m)) = self.message(a.seq) else {
            return err;
        };
        let mut s = m.what.clone();
        if let Some(off) = a.offset {
            let spans = element_spans(&self.bytes, start);
            if let Some(i) = spans
                .iter()
                .position(|(o, l)| (*o..*o + *l).contains(&(off as usize)))
                && let Some(e) = m.elems.get(i)
            {
                s.push_str(&format!(": element {e}"));
            }
        }
        s.push_str(&format!(": {err}"));
        if let Some(msg) = &a.msg
            && !msg.is_empty()
        {
            s.push_str(&format!(" ({msg})"));
        }
        s
    }
}

/// A netlink socket to nf_tables in the calling thread's network namespace.
#[derive(Debug)]
pub struct Conn {
    sock: Socket,
}

fn io(op: &str) -> impl Fn(std::io::Error) -> DataplaneError + '_ {
    move |e| DataplaneError::Netlink {
        op: op.to_owned(),
        error: e.to_string(),
    }
}

impl Conn {
    pub fn open() -> Result<Self, DataplaneError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(io("open a netlink socket"))?;
        sock.bind_auto().map_err(io("bind the netlink socket"))?;
        // Errors name the refused attribute, and do not echo our messages.
        sock.set_ext_ack(true).map_err(io("set NETLINK_EXT_ACK"))?;
        sock.set_cap_ack(true).map_err(io("set NETLINK_CAP_ACK"))?;
        Ok(Self { sock })
    }

    /// Discards what is queued on the socket: nothing left over from an
    /// earlier exchange (the socket is reused) may be taken for an answer.
    fn drain(&self) {
        let mut junk = vec![0u8; 1 << 16];
        while let Ok(n) = self.sock.recv(&mut &mut junk[..], libc_dontwait()) {
            if n == 0 {
                break;
            }
        }
    }

    /// Sends one batch and reads the kernel's answers. The kernel handles a
    /// batch inside `sendmsg`: when it returns, every answer is queued.
    pub fn apply(&self, op: &str, batch: &Encoded) -> Result<(), DataplaneError> {
        self.drain();
        if batch.bytes.len() + 4096 > 212_992 {
            let size = batch.bytes.len() + 65_536;
            nix::sys::socket::setsockopt(&self.sock, nix::sys::socket::sockopt::SndBufForce, &size)
                .map_err(|e| DataplaneError::Netlink {
                    op: "enlarge the netlink send buffer".into(),
                    error: e.to_string(),
                })?;
        }
        let sent = self.sock.send(&batch.bytes, 0).map_err(io(op))?;
        if sent != batch.bytes.len() {
            return Err(DataplaneError::Netlink {
                op: op.to_owned(),
                error: format!("sent {sent} of {} bytes", batch.bytes.len()),
            });
        }
        let mut got: Vec<Answer> = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match self.sock.recv(&mut &mut buf[..], libc_dontwait()) {
                Ok(0) => break,
                Ok(n) => got.extend(answers(&buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(io(op)(e)),
            }
        }
        let refused: Vec<String> = got
            .iter()
            .filter(|a| a.code != 0)
            .map(|a| batch.explain(a))
            .collect();
        if !refused.is_empty() {
            return Err(DataplaneError::Nft {
                op: op.to_owned(),
                stderr: refused.join("; "),
            });
        }
        // Every message but the batch's end must have been acked (older
        // kernels do not ack the end).
        let acked = batch.msgs[..batch.msgs.len().saturating_sub(1)]
            .iter()
            .all(|m| got.iter().any(|a| a.seq == m.seq));
        if acked {
            Ok(())
        } else {
            Err(DataplaneError::Netlink {
                op: op.to_owned(),
                error: format!(
                    "the kernel answered {} of {} messages",
                    got.len(),
                    batch.msgs.len()
                ),
            })
        }
    }

    /// Whether set `name` of our table has `flags interval`; `None` when the
    /// kernel has no such set.
    pub fn set_is_interval(&self, name: &str) -> Result<Option<bool>, DataplaneError> {
        self.drain();
        let op = format!("read set {name}");
        let mut m = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0),
                NfTablesMessage::GetSet(SetMessage {
                    attributes: vec![
                        SetAttribute::Table(names::TABLE.to_owned()),
                        SetAttribute::Name(name.to_owned()),
                    ],
                }),
            )),
        );
        m.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        m.header.sequence_number = 1;
        m.finalize();
        let mut out = vec![0u8; m.buffer_len()];
        m.serialize(&mut out);
        self.sock.send(&out, 0).map_err(io(&op))?;
        let mut buf = vec![0u8; 1 << 16];
        let mut flags = None;
        // The set, then the ack (or only an error).
        for _ in 0..8 {
            let n = self.sock.recv(&mut &mut buf[..], 0).map_err(io(&op))?;
            let mut at = 0;
            while at < n {
                let Ok(msg) = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[at..n]) else {
                    break;
                };
                let len = msg.header.length as usize;
                match msg.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(flags),
                            Some(c) if c.get() == -2 => Ok(None),
                            Some(c) => Err(DataplaneError::Netlink {
                                op,
                                error: std::io::Error::from_raw_os_error(-c.get()).to_string(),
                            }),
                        };
                    }
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::NfTables(NfTablesMessage::NewSet(s)),
                        ..
                    }) => {
                        flags = Some(s.attributes.iter().any(|a| {
                            matches!(a, SetAttribute::Flags(f) if f.contains(SetFlags::Interval))
                        }));
                    }
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                at += len.next_multiple_of(4);
            }
        }
        Err(DataplaneError::Netlink {
            op,
            error: "no answer from the kernel".into(),
        })
    }
}

/// `MSG_DONTWAIT`, without a dependency on libc for one constant.
fn libc_dontwait() -> i32 {
    nix::sys::socket::MsgFlags::MSG_DONTWAIT.bits()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::element::Value as E;

    fn el(v: E) -> pb::Element {
        pb::Element { value: Some(v) }
    }

    #[test]
    fn plain_keys_are_encoded_as_nft_does() {
        let es = [
            el(E::Addr("10.1.2.3".into())),
            el(E::Port(443)),
            el(E::AddrPort(pb::AddrPort {
                addr: "10.0.0.1".into(),
                port: 8080,
            })),
            el(E::Ifname("veth1".into())),
            el(E::IfAddr(pb::IfAddr {
                ifname: "veth1".into(),
                addr: "10.0.0.2".into(),
            })),
            el(E::Addr("fd00::1".into())),
        ];
        let got = set_elems("s", false, &es).unwrap().unwrap();
        assert_eq!(got[0].key, vec![10, 1, 2, 3]);
        assert_eq!(got[1].key, vec![0x01, 0xbb]);
        // The port is padded to 4 bytes after its two bytes.
        assert_eq!(got[2].key, vec![10, 0, 0, 1, 0x1f, 0x90, 0, 0]);
        assert_eq!(got[3].key.len(), 16);
        assert_eq!(&got[3].key[..6], b"veth1\0");
        assert_eq!(got[4].key.len(), 20);
        assert_eq!(&got[4].key[16..], &[10, 0, 0, 2]);
        assert_eq!(got[5].key.len(), 16);
        assert!(got.iter().all(|e| !e.end && e.verdict.is_none()));
    }

    #[test]
    fn bad_elements_are_refused_and_named() {
        let e = set_elems("p4_x", false, &[el(E::Addr("10.0.0.256".into()))]).unwrap_err();
        assert!(
            e.what.contains("10.0.0.256") && e.what.contains("p4_x"),
            "{e}"
        );
        assert!(set_elems("s", false, &[el(E::Port(70000))]).is_err());
        assert!(set_elems("s", false, &[el(E::Ifname("a-very-long-ifname".into()))]).is_err());
        // A range in a plain set, or anything in an interval set: nft's.
        let r = el(E::Range(pb::AddrRange {
            first: "10.0.0.1".into(),
            last: "10.0.0.2".into(),
        }));
        assert_eq!(set_elems("s", false, &[r]).unwrap(), None);
        let a = el(E::Addr("10.0.0.1".into()));
        assert_eq!(set_elems("b4_x", true, &[a]).unwrap(), None);
    }

    #[test]
    fn unknown_sets_and_structural_changes_are_left_to_nft() {
        let sc = pb::SetChange {
            set: "p4_x".into(),
            add: vec![el(E::Addr("10.0.0.1".into()))],
            remove: vec![],
        };
        let c = Changes {
            sets: vec![&sc],
            ..Default::default()
        };
        assert_eq!(plan(&c, &HashMap::new()).unwrap(), None);
        let known = HashMap::from([("p4_x".to_owned(), false)]);
        let p = plan(&c, &known).unwrap().unwrap();
        assert_eq!(p.ops.len(), 1);
    }

    #[test]
    fn agent_sets_change_by_their_difference_only() {
        let a = |s: &str| el(E::Ifname(s.into()));
        let before = vec![("pod_ifaces".to_owned(), vec![a("v1"), a("v2")])];
        assert_eq!(agent_change(None, &before), AgentChange::Refill);
        assert_eq!(agent_change(Some(&before), &before), AgentChange::Same);
        let now = vec![("pod_ifaces".to_owned(), vec![a("v2"), a("v3")])];
        assert_eq!(
            agent_change(Some(&before), &now),
            AgentChange::Diff(vec![pb::SetChange {
                set: "pod_ifaces".into(),
                add: vec![a("v3")],
                remove: vec![a("v1")],
            }])
        );
        // The same elements in another order: nothing to do.
        let swapped = vec![("pod_ifaces".to_owned(), vec![a("v2"), a("v1")])];
        assert_eq!(agent_change(Some(&before), &swapped), AgentChange::Same);
    }

    fn parse_all(bytes: &[u8]) -> Vec<NetlinkMessage<NetfilterMessage>> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let m = NetlinkMessage::<NetfilterMessage>::deserialize(&bytes[at..]).unwrap();
            at += (m.header.length as usize).next_multiple_of(4);
            out.push(m);
        }
        out
    }

    #[test]
    fn a_delta_is_one_batch_in_order_with_acks() {
        let sc = pb::SetChange {
            set: "p4_x".into(),
            add: vec![el(E::Addr("10.0.0.1".into()))],
            remove: vec![el(E::Addr("10.0.0.2".into()))],
        };
        let mc = [pb::MapChange {
            map: "ingress4".into(),
            add: vec![pb::MapEntry {
                key: Some(el(E::Addr("10.0.0.1".into()))),
                verdict: Some(pb::Verdict {
                    kind: Some(pb::verdict::Kind::Goto("i_abc".into())),
                }),
            }],
            remove: vec![el(E::Addr("10.0.0.2".into()))],
        }];
        let c = Changes {
            sets: vec![&sc],
            maps: &mc,
            refill: vec![],
            meta: Some(("node-0", 7)),
        };
        let known = HashMap::from([("p4_x".to_owned(), false)]);
        let enc = plan(&c, &known).unwrap().unwrap().encode();
        let msgs = parse_all(&enc.bytes);
        let kinds: Vec<String> = msgs
            .iter()
            .map(|m| match &m.payload {
                NetlinkPayload::InnerMessage(NetfilterMessage { inner, .. }) => match inner {
                    NetfilterMessageInner::None(c) => format!("{c:?}"),
                    NetfilterMessageInner::NfTables(n) => format!("{:?}", n.message_type()),
                    other => format!("{other:?}"),
                },
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "BatchBegin",
                "DeleteSetElement",
                "NewSetElement",
                "DeleteSetElement",
                "NewSetElement",
                "DeleteSetElement",
                "NewSetElement",
                "BatchEnd"
            ]
        );
        assert!(msgs.iter().all(|m| m.header.flags & NLM_F_ACK != 0));
        let seqs: Vec<u32> = msgs.iter().map(|m| m.header.sequence_number).collect();
        assert_eq!(seqs, (0..8).collect::<Vec<_>>());
        // The map entry carries a goto verdict naming the chain.
        let NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::NfTables(NfTablesMessage::NewSetElement(m)),
            ..
        }) = &msgs[4].payload
        else {
            panic!("not a NEWSETELEM: {:?}", msgs[4]);
        };
        let SetElementList::Elements(es) = &m.attributes[2] else {
            panic!("no elements: {m:?}");
        };
        let ListAttribute::Element(attrs) = &es[0] else {
            panic!("{es:?}");
        };
        assert!(
            attrs.contains(&SetElementAttribute::Data(DataAttribute::Verdict(vec![
                VerdictAttribute::Code(Verdict::Goto),
                VerdictAttribute::Chain("i_abc".into())
            ])))
        );
        // The generation record: set bhmeta flushed (no elements), then its
        // one element, whose comment is libnftnl user data. No rule changes.
        let NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::NfTables(NfTablesMessage::DeleteSetElement(f)),
            ..
        }) = &msgs[5].payload
        else {
            panic!("not a DELSETELEM: {:?}", msgs[5]);
        };
        assert_eq!(
            f.attributes,
            vec![
                SetElementList::Table(names::TABLE.into()),
                SetElementList::Set(names::META.into())
            ]
        );
        let NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::NfTables(NfTablesMessage::NewSetElement(r)),
            ..
        }) = &msgs[6].payload
        else {
            panic!("not a NEWSETELEM");
        };
        assert_eq!(r.attributes[1], SetElementList::Set(names::META.into()));
        let SetElementList::Elements(es) = &r.attributes[2] else {
            panic!("no elements: {r:?}");
        };
        let ListAttribute::Element(attrs) = &es[0] else {
            panic!("{es:?}");
        };
        let comment = "bulkhead schema=2 generation=7 node=node-0";
        let mut ud = vec![0u8, comment.len() as u8 + 1];
        ud.extend_from_slice(comment.as_bytes());
        ud.push(0);
        assert!(
            attrs.contains(&SetElementAttribute::UserData(ud)),
            "{attrs:?}"
        );
    }

    #[test]
    fn long_element_lists_are_split_and_errors_point_at_the_element() {
        let es: Vec<pb::Element> = (0..9000u32)
            .map(|i| {
                el(E::IfAddr(pb::IfAddr {
                    ifname: format!("veth{i}"),
                    addr: format!("10.{}.{}.1", i / 256, i % 256),
                }))
            })
            .collect();
        let c = Changes {
            refill: vec![("pod_ifaddr4", &es)],
            ..Default::default()
        };
        let known = HashMap::from([("pod_ifaddr4".to_owned(), false)]);
        let enc = plan(&c, &known).unwrap().unwrap().encode();
        let msgs = parse_all(&enc.bytes);
        assert!(msgs.len() > 4, "split over several messages");
        let mut total = 0;
        for (i, m) in enc.msgs.iter().enumerate() {
            let start: usize = enc.msgs[..i]
                .iter()
                .enumerate()
                .map(|(j, _)| msgs[j].header.length as usize)
                .sum();
            let spans = element_spans(&enc.bytes, start);
            assert_eq!(spans.len(), m.elems.len());
            total += spans.len();
            if m.elems.len() > 10 {
                // An extended ack pointing into element 10 names it.
                let a = Answer {
                    seq: m.seq,
                    code: -17,
                    msg: None,
                    offset: Some((spans[10].0 + 6) as u32),
                };
                let s = enc.explain(&a);
                assert!(s.contains(&m.elems[10]) && s.contains("pod_ifaddr4"), "{s}");
            }
        }
        assert_eq!(total, 9000);
    }

    #[test]
    fn answers_are_parsed_with_their_extended_ack() {
        // NLMSG_ERROR, flags CAPPED|ACK_TLVS, error -2, original header with
        // seq 5, then OFFS = 40 and MSG "x".
        let mut b = Vec::new();
        let body_len = 16 + 4 + 16 + 8 + 8;
        b.extend_from_slice(&(body_len as u32).to_ne_bytes());
        b.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        b.extend_from_slice(&(0x100u16 | 0x200).to_ne_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&(-2i32).to_ne_bytes());
        b.extend_from_slice(&60u32.to_ne_bytes());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&5u32.to_ne_bytes());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&8u16.to_ne_bytes());
        b.extend_from_slice(&NLMSGERR_ATTR_OFFS.to_ne_bytes());
        b.extend_from_slice(&40u32.to_ne_bytes());
        b.extend_from_slice(&6u16.to_ne_bytes());
        b.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        b.extend_from_slice(b"x\0\0\0");
        assert_eq!(
            answers(&b),
            vec![Answer {
                seq: 5,
                code: -2,
                msg: Some("x".into()),
                offset: Some(40),
            }]
        );
    }
}
