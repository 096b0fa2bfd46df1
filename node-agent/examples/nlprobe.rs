//! One-off probe (run as root inside a fresh netns, release build):
//! `ip netns add bhp && ip netns exec bhp target/release/examples/nlprobe`.
//! Applies the apply bench's synthetic ruleset, then times single nf_tables
//! netlink batches of each kind: user space (socket, encode) apart from the
//! kernel (sendmsg to the last ack). `PROBE_DUMP=FILE`: only write the full
//! batch as nft reads it. `PROBE_REUSE=1 PROBE_LOOP=N PROBE_CASE=I`: on the
//! table already there, apply case I N times (for `perf record`).

// A one-off measuring tool, not the agent: it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bulkhead_agent::dataplane::Dataplane;
use bulkhead_agent::dataplane::nfnl::{Conn, KElem, KVerdict, Op, Plan};
use bulkhead_agent::dataplane::nft::Nft;
use bulkhead_core::compile::{anti_spoof_elements, compile_node};
use bulkhead_core::inventory::Inventory;
use bulkhead_core::load_str;
use bulkhead_core::model::Object;
use bulkhead_core::synth::{self, Shape};
use bulkhead_proto::v1 as pb;
use netlink_packet_netfilter::nftables::Verdict;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let shape = Shape {
        namespaces: 240,
        pods: 4_000,
        policies: 4_800,
        nodes: 1,
        seed: 7,
    };
    let yaml = synth::cluster_yaml(&shape);
    let loaded = load_str("synthetic.yaml", &yaml);
    let objects: Vec<Object> = loaded.objects.iter().map(|l| l.object.clone()).collect();
    let inv = Inventory::new(objects.iter().cloned()).0;
    let mut rs = compile_node(&inv, "node-0", 1);
    let links: Vec<(String, Vec<IpAddr>)> = inv
        .pods
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("bhv{i}"), p.ips.clone()))
        .collect();
    let agent: Vec<(String, Vec<pb::Element>)> = anti_spoof_elements(&links).to_vec();
    let only = std::env::args().nth(1);
    if only.as_deref() == Some("small") {
        // Drop the rules: keep chains/sets/maps only.
        for c in &mut rs.chains {
            c.rules.clear();
        }
    }
    if let Some(path) = std::env::var_os("PROBE_DUMP") {
        let b = bulkhead_agent::dataplane::render::full(&rs, &agent).unwrap();
        std::fs::write(path, b.to_json()).unwrap();
        println!("dumped");
        return;
    }
    let mut dp = Nft::new("nft");
    let reuse = std::env::var_os("PROBE_REUSE").is_some();
    if !reuse {
        let t = Instant::now();
        dp.apply_full(&rs, &agent).expect("full apply");
        println!("full apply: {}", ms(t.elapsed()));
    }

    let plain = rs
        .sets
        .iter()
        .find(|s| !s.interval && !s.agent_managed && s.name.starts_with("p4_"))
        .expect("a plain ipv4 set")
        .name
        .clone();
    let (map, entry_key, entry_verdict) = rs
        .maps
        .iter()
        .find_map(|m| {
            m.entries.iter().find_map(|e| {
                let v = e.verdict.as_ref()?;
                let chain = match &v.kind {
                    Some(pb::verdict::Kind::Goto(c)) => (Verdict::Goto, c.clone()),
                    Some(pb::verdict::Kind::Jump(c)) => (Verdict::Jump, c.clone()),
                    _ => return None,
                };
                let key = match &e.key.as_ref()?.value {
                    Some(pb::element::Value::Addr(a)) => a.parse::<IpAddr>().ok()?,
                    _ => return None,
                };
                Some((m.name.clone(), key, chain))
            })
        })
        .expect("a map entry with a chain verdict");
    println!("plain set {plain}; map {map} key {entry_key} -> {entry_verdict:?}");
    let oct = |a: IpAddr| match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    };
    let el = |key: Vec<u8>, verdict: Option<KVerdict>| KElem {
        key,
        end: false,
        verdict,
        what: "probe".into(),
    };
    let probe_addr: IpAddr = "10.127.255.250".parse().unwrap();
    let conn = Conn::open().unwrap();
    let mut cases: Vec<(&str, Box<dyn Fn(usize) -> Plan>)> = Vec::new();
    cases.push(("empty batch (BEGIN, END)", Box::new(|_| Plan::default())));
    // Schema 1's record, `DELRULE bhmeta` + `NEWRULE bhmeta return comment
    // "..."`, was timed by this probe at commit 910bc41 (its ops are gone).
    {
        let plain = plain.clone();
        cases.push((
            "plain set element add / delete",
            Box::new(move |i| Plan {
                ops: vec![if i % 2 == 0 {
                    Op::AddElems {
                        set: plain.clone(),
                        elems: vec![el(oct(probe_addr), None)],
                    }
                } else {
                    Op::DelElems {
                        set: plain.clone(),
                        elems: vec![el(oct(probe_addr), None)],
                    }
                }],
            }),
        ));
    }
    {
        let map = map.clone();
        let (v, c) = entry_verdict.clone();
        cases.push((
            "vmap entry delete + re-add (goto chain)",
            Box::new(move |_| Plan {
                ops: vec![
                    Op::DelElems {
                        set: map.clone(),
                        elems: vec![el(oct(entry_key), None)],
                    },
                    Op::AddElems {
                        set: map.clone(),
                        elems: vec![el(oct(entry_key), Some(KVerdict::Chain(v, c.clone())))],
                    },
                ],
            }),
        ));
    }
    {
        let map = map.clone();
        cases.push((
            "vmap entry add / delete (drop verdict)",
            Box::new(move |i| Plan {
                ops: vec![if i % 2 == 0 {
                    Op::AddElems {
                        set: map.clone(),
                        elems: vec![el(oct(probe_addr), Some(KVerdict::Code(0)))],
                    }
                } else {
                    Op::DelElems {
                        set: map.clone(),
                        elems: vec![el(oct(probe_addr), None)],
                    }
                }],
            }),
        ));
    }
    cases.push((
        "generation element: flush set bhmeta + add its element (same key, new comment)",
        Box::new(|i| Plan {
            ops: vec![
                Op::FlushSet {
                    set: "bhmeta".into(),
                },
                Op::Record {
                    comment: format!("bulkhead schema=2 generation={i} node=node-0"),
                },
            ],
        }),
    ));
    let runs = if reuse { 0 } else { 50 };
    for (what, mk) in &cases {
        if runs == 0 {
            break;
        }
        let mut enc_t = Vec::new();
        let mut kern = Vec::new();
        for i in 0..runs {
            let t = Instant::now();
            let e = mk(i).encode();
            enc_t.push(t.elapsed());
            let t = Instant::now();
            conn.apply(what, &e)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            kern.push(t.elapsed());
        }
        println!(
            "{what}: encode {} / sendmsg..acks {}",
            ms(median(enc_t)),
            ms(median(kern))
        );
    }
    let mut open_t = vec![Duration::ZERO];
    let mut q = vec![Duration::ZERO];
    for _ in 0..runs {
        let t = Instant::now();
        let c = Conn::open().unwrap();
        open_t.push(t.elapsed());
        let t = Instant::now();
        c.set_is_interval(&plain).unwrap();
        q.push(t.elapsed());
    }
    println!(
        "Conn::open {} ; set_is_interval {}",
        ms(median(open_t)),
        ms(median(q))
    );
    if let Some(n) = std::env::var("PROBE_LOOP")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
    {
        let which = std::env::var("PROBE_CASE")
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(1);
        let (what, mk) = &cases[which];
        eprintln!("looping {n} x {what}");
        let t = Instant::now();
        for i in 0..n {
            conn.apply(what, &mk(i).encode()).unwrap();
        }
        eprintln!("loop: {} per batch", ms(t.elapsed() / n as u32));
    }
}
