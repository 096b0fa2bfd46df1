//! `cargo bench -p bulkhead-tests --bench dataplane` (as root): new TCP
//! connections per second between two pods of one lab node, under
//!
//! - A: no table at all in the node;
//! - A+ct: a table that only turns conntrack on (`ct state established,related
//!   accept`, `ct state invalid drop`): the part of B and C that every
//!   stateful firewall has, shown so that B's own cost can be told apart;
//! - B: the node's bulkhead ruleset, compiled from a synthetic cluster in
//!   which ~1,000 NetworkPolicies select pods of this node (the server is
//!   isolated for ingress, one policy allows the client), applied by the
//!   agent's `Nft::apply_full`;
//! - C: the naive layout of the same allowed semantics: one rule per allowed
//!   (source pod, destination pod) pair in a forward-hook chain, then one
//!   drop rule per isolated pod, the client's rule last among the pairs.
//!
//! Conditions are interleaved (A, A+ct, B, C, A, ...) in one run; each round
//! measures `BULKHEAD_BENCH_SECONDS` (default 3) of connect + close
//! (SO_LINGER 0: an RST, so that no TIME_WAIT exhausts the ports) from one
//! thread in the client pod's namespace to an accept-and-close loop on a
//! thread in the server pod's namespace, for `BULKHEAD_BENCH_ROUNDS` (default
//! 7) rounds. Both threads enter their namespace with `setns`; traffic runs
//! only between namespaces of the lab topology. Before each measurement the
//! condition is checked: the client connects, and a pod the policies deny
//! does not (in B and C) or does (in A, A+ct).
//!
//! Prints markdown table rows for docs/BENCHMARKS.md.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bulkhead_agent::dataplane::Dataplane as _;
use bulkhead_agent::dataplane::nft::Nft;
use bulkhead_core::compile::{anti_spoof_elements, compile_node, names};
use bulkhead_core::inventory::{Inventory, PodId};
use bulkhead_core::synth::{self, Shape};
use bulkhead_core::verdict::{self, Endpoint, Query};
use bulkhead_core::{Direction, Protocol, load_str};
use bulkhead_proto::v1 as pb;
use bulkhead_tests::netns::{PodSpec, Topology};
use nix::sched::{CloneFlags, setns};
use nix::sys::resource::{UsageWho, getrusage};
use socket2::{Domain, SockRef, Socket, Type};

const NODE: &str = "node-0";
const FILLERS: usize = 8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// The synthetic cluster and what the bench takes from it.
struct Scenario {
    inv: Inventory,
    ruleset: pb::Ruleset,
    client: PodId,
    server: PodId,
    /// A local pod the server's policies do not allow.
    denied: PodId,
    fillers: Vec<PodId>,
    port: u16,
    /// Policies that select at least one pod of the node.
    local_policies: usize,
    /// The naive table, as nft text, and its rule counts.
    naive: String,
    pair_rules: usize,
    drop_rules: usize,
}

fn v4(inv: &Inventory, p: PodId) -> Option<Ipv4Addr> {
    inv.pods[p].ips.iter().find_map(|ip| match ip {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    })
}

fn tcp_ports(inv: &Inventory, p: PodId) -> Vec<u16> {
    let mut v: Vec<u16> = inv.pods[p]
        .ports
        .iter()
        .filter(|cp| cp.protocol == Protocol::Tcp)
        .map(|cp| cp.port)
        .collect();
    if v.is_empty() {
        v.push(80);
    }
    v
}

fn allowed(inv: &Inventory, s: PodId, d: PodId, port: u16) -> bool {
    verdict::allowed(
        inv,
        &Query::new(Endpoint::Pod(s), Endpoint::Pod(d), Protocol::Tcp, port),
    )
}

fn scenario() -> anyhow::Result<Scenario> {
    // 1,100 pods on 11 nodes (100 on ours, from every namespace); of the
    // policies that load, about 1,000 select pods of node-0.
    let shape = Shape {
        namespaces: 50,
        pods: 1_100,
        policies: 2_000,
        nodes: 11,
        seed: 7,
    };
    let yaml = synth::cluster_yaml(&shape);
    let (inv, _) = Inventory::from_loaded(&load_str("synthetic.yaml", &yaml));
    let local: Vec<PodId> = (0..inv.pods.len())
        .filter(|&p| inv.pods[p].node.as_deref() == Some(NODE) && v4(&inv, p).is_some())
        .collect();
    let isolated = |p: PodId, d: Direction| !inv.selecting(p, d).is_empty();
    let mut local_policies = BTreeSet::new();
    for &p in &local {
        for d in [Direction::Ingress, Direction::Egress] {
            local_policies.extend(inv.selecting(p, d).iter().copied());
        }
    }

    // Server: isolated for ingress. Client: a local pod allowed to reach it
    // on its first TCP port, isolated for egress too if there is one (then
    // both the egress and the ingress dispatch run policy chains).
    let mut pick = None;
    'found: for egress_isolated in [true, false] {
        for &d in &local {
            if !isolated(d, Direction::Ingress) || inv.pods[d].ports.is_empty() {
                continue;
            }
            let port = tcp_ports(&inv, d)[0];
            for &s in &local {
                if s != d
                    && isolated(s, Direction::Egress) == egress_isolated
                    && allowed(&inv, s, d, port)
                {
                    pick = Some((s, d, port));
                    break 'found;
                }
            }
        }
    }
    let (client, server, port) = pick.context("no allowed client/server pair on the node")?;
    let denied = local
        .iter()
        .copied()
        .find(|&s| s != client && s != server && !allowed(&inv, s, server, port))
        .context("no local pod that the server's policies deny")?;
    let fillers: Vec<PodId> = local
        .iter()
        .copied()
        .filter(|&p| p != client && p != server && p != denied)
        .take(FILLERS)
        .collect();

    // The naive layout: every allowed (source, destination) pair where the
    // destination is a local pod isolated for ingress, or the source a local
    // pod isolated for egress; then a drop per isolated local pod.
    let mut pairs: Vec<(PodId, PodId)> = Vec::new();
    let mut seen = BTreeSet::new();
    let all: Vec<PodId> = (0..inv.pods.len())
        .filter(|&p| v4(&inv, p).is_some())
        .collect();
    for &d in &local {
        if isolated(d, Direction::Ingress) {
            for &s in &all {
                if tcp_ports(&inv, d).iter().any(|&pt| allowed(&inv, s, d, pt))
                    && seen.insert((s, d))
                {
                    pairs.push((s, d));
                }
            }
        }
    }
    for &s in &local {
        if isolated(s, Direction::Egress) {
            for &d in &all {
                if tcp_ports(&inv, d).iter().any(|&pt| allowed(&inv, s, d, pt))
                    && seen.insert((s, d))
                {
                    pairs.push((s, d));
                }
            }
        }
    }
    pairs.retain(|&pr| pr != (client, server));
    pairs.push((client, server));
    let mut naive = String::from(
        "table inet naive {\n chain forward {\n  type filter hook forward priority 0; policy accept;\n  ct state established,related accept\n  ct state invalid drop\n",
    );
    for &(s, d) in &pairs {
        let (Some(sa), Some(da)) = (v4(&inv, s), v4(&inv, d)) else {
            continue;
        };
        naive.push_str(&format!("  ip saddr {sa} ip daddr {da} accept\n"));
    }
    let mut drop_rules = 0;
    for &p in &local {
        let Some(a) = v4(&inv, p) else { continue };
        if isolated(p, Direction::Ingress) {
            naive.push_str(&format!("  ip daddr {a} drop\n"));
            drop_rules += 1;
        }
        if isolated(p, Direction::Egress) {
            naive.push_str(&format!("  ip saddr {a} drop\n"));
            drop_rules += 1;
        }
    }
    naive.push_str(" }\n}\n");

    let ruleset = compile_node(&inv, NODE, 1);
    Ok(Scenario {
        ruleset,
        client,
        server,
        denied,
        fillers,
        port,
        local_policies: local_policies.len(),
        naive,
        pair_rules: pairs.len(),
        drop_rules,
        inv,
    })
}

/// Runs `f` on a new thread inside network namespace `ns`, and waits for it.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let file = File::open(format!("/run/netns/{ns}")).with_context(|| format!("opening {ns}"))?;
    let ns = ns.to_owned();
    thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {ns}"))?;
        drop(file);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// `nft -f -` with `script`, from a thread in `ns`.
fn nft_script(ns: &str, script: String) -> anyhow::Result<()> {
    in_netns(ns, move || {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft")?;
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(script.as_bytes())
            .context("writing to nft")?;
        let out = child.wait_with_output().context("waiting for nft")?;
        ensure!(
            out.status.success(),
            "nft -f failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    })
}

/// The accept-and-close loop in the server pod, until `stop`.
fn start_server(
    ns: &str,
    port: u16,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
) -> anyhow::Result<thread::JoinHandle<anyhow::Result<()>>> {
    let file = File::open(format!("/run/netns/{ns}")).with_context(|| format!("opening {ns}"))?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = thread::spawn(move || -> anyhow::Result<()> {
        setns(&file, CloneFlags::CLONE_NEWNET).context("setns into the server pod")?;
        // A deep accept queue: a server thread kept off the CPU for a while
        // (this machine is shared) must not make the kernel drop SYNs.
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        sock.set_reuse_address(true)?;
        sock.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
            .with_context(|| format!("binding port {port}"))?;
        sock.listen(4096)?;
        let listener: TcpListener = sock.into();
        // accept() honours SO_RCVTIMEO: wake up now and then to see `stop`.
        SockRef::from(&listener).set_read_timeout(Some(Duration::from_millis(100)))?;
        let _ = ready_tx.send(());
        while !stop.load(Ordering::Relaxed) {
            if let Ok((s, _)) = listener.accept() {
                drop(s);
                accepted.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    });
    if ready_rx.recv_timeout(Duration::from_secs(5)).is_err() {
        return match handle.join() {
            Ok(Err(e)) => Err(e),
            _ => bail!("the server thread did not start"),
        };
    }
    Ok(handle)
}

/// One connection attempt from a thread in `ns`.
fn probe(ns: &str, to: SocketAddr) -> anyhow::Result<bool> {
    in_netns(ns, move || {
        Ok(TcpStream::connect_timeout(&to, PROBE_TIMEOUT)
            .map(close_with_rst)
            .is_ok())
    })
}

/// CPU time of this process so far (every thread; the kernel's packet
/// processing mostly runs in the sending thread's context, so it counts).
fn cpu_time() -> anyhow::Result<Duration> {
    let u = getrusage(UsageWho::RUSAGE_SELF).context("getrusage")?;
    let us = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec().max(0) as u64)
            + Duration::from_micros(t.tv_usec().max(0) as u64)
    };
    Ok(us(u.user_time()) + us(u.system_time()))
}

fn close_with_rst(s: TcpStream) {
    // Abortive close: no TIME_WAIT, so the client's ports never run out.
    let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
}

/// Connect + close in a loop for `dur` from a thread in `ns`:
/// `(connections, failures, elapsed)`.
fn conn_loop(ns: &str, to: SocketAddr, dur: Duration) -> anyhow::Result<(u64, u64, Duration)> {
    in_netns(ns, move || {
        let start = Instant::now();
        let (mut ok, mut failed) = (0u64, 0u64);
        while start.elapsed() < dur {
            match TcpStream::connect_timeout(&to, CONNECT_TIMEOUT) {
                Ok(s) => {
                    close_with_rst(s);
                    ok += 1;
                }
                Err(_) => failed += 1,
            }
        }
        Ok((ok, failed, start.elapsed()))
    })
}

/// One measurement: connections per second of wall-clock time, and per
/// second of CPU time of this process (less disturbed by other load).
#[derive(Clone, Copy, Debug)]
struct Sample {
    rate: f64,
    per_cpu: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cond {
    A,
    Act,
    B,
    C,
}

impl Cond {
    fn name(self) -> &'static str {
        match self {
            Cond::A => "A: no table",
            Cond::Act => "A+ct: conntrack only",
            Cond::B => "B: bulkhead ruleset",
            Cond::C => "C: naive per-pair rules",
        }
    }

    fn enforces(self) -> bool {
        matches!(self, Cond::B | Cond::C)
    }
}

const CONNTRACK_ONLY: &str = "table inet ctonly {\n chain forward {\n  type filter hook forward priority 0; policy accept;\n  ct state established,related accept\n  ct state invalid drop\n }\n}\n";

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let seconds = env_number("BULKHEAD_BENCH_SECONDS", 3);
    let rounds = env_number("BULKHEAD_BENCH_ROUNDS", 7) as usize;
    let sc = scenario()?;
    let inv = &sc.inv;
    let rs = &sc.ruleset;
    let rules: usize = rs.chains.iter().map(|c| c.rules.len()).sum();
    let elements: usize = rs.sets.iter().map(|s| s.elements.len()).sum();
    println!(
        "cluster: {} pods, {} policies; {NODE}: {} pods, {} policies select them",
        inv.pods.len(),
        inv.policies.len(),
        rs.endpoints.len(),
        sc.local_policies
    );
    let chain_of = |map: &str, p: PodId| -> Option<(String, usize)> {
        let ip = v4(inv, p)?.to_string();
        let m = rs.maps.iter().find(|m| m.name == map)?;
        let e = m.entries.iter().find(|e| {
            matches!(e.key.as_ref().and_then(|k| k.value.as_ref()),
                Some(pb::element::Value::Addr(a)) if *a == ip)
        })?;
        let name = match e.verdict.as_ref()?.kind.as_ref()? {
            pb::verdict::Kind::Jump(c) | pb::verdict::Kind::Goto(c) => c.clone(),
            _ => return None,
        };
        let n = rs.chains.iter().find(|c| c.name == name)?.rules.len();
        Some((name, n))
    };
    println!(
        "B: {} sets with {elements} elements, {} chains with {rules} rules; client's egress chain {:?}, server's ingress chain {:?} (name, rules)",
        rs.sets.len(),
        rs.chains.len(),
        chain_of(names::EGRESS4, sc.client),
        chain_of(names::INGRESS4, sc.server),
    );
    println!(
        "C: {} rules: 2 conntrack rules, {} per-pair accepts (the client's last), {} per-pod drops",
        2 + sc.pair_rules + sc.drop_rules,
        sc.pair_rules,
        sc.drop_rules
    );
    let server_ip = v4(inv, sc.server).context("server address")?;
    println!(
        "client {} ({}), server {} ({server_ip}:{}), denied {}",
        inv.pods[sc.client].key(),
        v4(inv, sc.client).context("client address")?,
        inv.pods[sc.server].key(),
        sc.port,
        inv.pods[sc.denied].key()
    );

    // The lab: one node, the client, the server, the denied pod, fillers.
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_bulkhead-lab"))?;
    let node = topo.add_node(NODE)?;
    let mut lab_pods = Vec::new();
    for &p in [sc.client, sc.server, sc.denied].iter().chain(&sc.fillers) {
        let id = topo.add_pod(
            node,
            PodSpec {
                name: inv.pods[p].key(),
                ipv4: v4(inv, p),
                ..Default::default()
            },
        )?;
        lab_pods.push(id);
    }
    let (client_ns, server_ns, denied_ns) = (
        topo.pod_netns(lab_pods[0]).to_owned(),
        topo.pod_netns(lab_pods[1]).to_owned(),
        topo.pod_netns(lab_pods[2]).to_owned(),
    );
    let node_ns = topo.node_netns(node).to_owned();
    // What the agent would learn from the node's links.
    let links: Vec<(String, Vec<IpAddr>)> = lab_pods
        .iter()
        .map(|&id| (topo.pod_veth(id).to_owned(), topo.pod_spec(id).ips()))
        .collect();
    let agent = anti_spoof_elements(&links).to_vec();

    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let server = start_server(
        &server_ns,
        sc.port,
        Arc::clone(&stop),
        Arc::clone(&accepted),
    )?;
    let to = SocketAddr::from((server_ip, sc.port));

    let result = (|| -> anyhow::Result<Vec<(Cond, Vec<Sample>)>> {
        let conds = [Cond::A, Cond::Act, Cond::B, Cond::C];
        let mut rates: Vec<(Cond, Vec<Sample>)> = conds.iter().map(|&c| (c, Vec::new())).collect();
        for round in 0..rounds {
            for (i, &cond) in conds.iter().enumerate() {
                match cond {
                    Cond::A => {}
                    Cond::Act => nft_script(&node_ns, CONNTRACK_ONLY.to_owned())?,
                    Cond::B => {
                        let (rs, agent) = (rs.clone(), agent.clone());
                        in_netns(&node_ns, move || {
                            Nft::new("nft")
                                .apply_full(&rs, &agent)
                                .context("applying the bulkhead ruleset")
                        })?;
                    }
                    Cond::C => nft_script(&node_ns, sc.naive.clone())?,
                }
                ensure!(
                    probe(&client_ns, to)?,
                    "{}: the client cannot connect",
                    cond.name()
                );
                let denied_connects = probe(&denied_ns, to)?;
                ensure!(
                    denied_connects != cond.enforces(),
                    "{}: the denied pod {}",
                    cond.name(),
                    if denied_connects {
                        "connects"
                    } else {
                        "cannot connect"
                    }
                );
                // Warm up, then measure.
                conn_loop(&client_ns, to, Duration::from_millis(300))?;
                let cpu0 = cpu_time()?;
                let (ok, failed, took) = conn_loop(&client_ns, to, Duration::from_secs(seconds))?;
                let cpu = cpu_time()? - cpu0;
                let rate = ok as f64 / took.as_secs_f64();
                let per_cpu = ok as f64 / cpu.as_secs_f64().max(1e-9);
                println!(
                    "round {}: {:<26} {:>8.0} conn/s, {:>8.0} conn per CPU-second{}",
                    round + 1,
                    cond.name(),
                    rate,
                    per_cpu,
                    if failed > 0 {
                        format!(" ({failed} connects failed)")
                    } else {
                        String::new()
                    }
                );
                rates[i].1.push(Sample { rate, per_cpu });
                let table = match cond {
                    Cond::A => None,
                    Cond::Act => Some("ctonly"),
                    Cond::B => Some(names::TABLE),
                    Cond::C => Some("naive"),
                };
                if let Some(t) = table {
                    nft_script(&node_ns, format!("delete table inet {t}\n"))?;
                }
            }
        }
        Ok(rates)
    })();

    stop.store(true, Ordering::Relaxed);
    match server.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("server: {e:#}"),
        Err(_) => eprintln!("server thread panicked"),
    }
    let rates = result?;
    topo.destroy()?;

    let a = &rates[0].1;
    let of = |f: fn(&Sample) -> f64, r: &[Sample]| -> Vec<f64> { r.iter().map(f).collect() };
    let rate = |x: &Sample| x.rate;
    let cpu = |x: &Sample| x.per_cpu;
    let base = median(&of(rate, a));
    let base_cpu = median(&of(cpu, a));
    println!();
    println!(
        "| condition | forward-path rules | conn/s, median of {rounds} × {seconds} s (min–max) | vs A (ratio of medians; median of per-round ratios) | conn per CPU-second, median | vs A |"
    );
    println!("|---|---|---|---|---|---|");
    let mut b_ratio = (0.0, 0.0, 0.0);
    let mut act_ratio = (1.0, 1.0);
    for (cond, r) in &rates {
        let rs_ = of(rate, r);
        let min = rs_.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rs_.iter().copied().fold(0.0, f64::max);
        // Each round's figure against the same round's A.
        let per_round: Vec<f64> = r.iter().zip(a).map(|(x, y)| x.rate / y.rate).collect();
        let size = match cond {
            Cond::A => "none".to_owned(),
            Cond::Act => "2".to_owned(),
            Cond::B => format!(
                "{rules} rules in {} chains, {elements} set elements",
                rs.chains.len()
            ),
            Cond::C => format!("{}", 2 + sc.pair_rules + sc.drop_rules),
        };
        let ratios = (
            median(&rs_) / base,
            median(&per_round),
            median(&of(cpu, r)) / base_cpu,
        );
        if *cond == Cond::B {
            b_ratio = ratios;
        }
        if *cond == Cond::Act {
            act_ratio = (ratios.0, ratios.2);
        }
        println!(
            "| {} | {size} | {:.0} ({:.0}–{:.0}) | {:.1}%; {:.1}% | {:.0} | {:.1}% |",
            cond.name(),
            median(&rs_),
            min,
            max,
            100.0 * ratios.0,
            100.0 * ratios.1,
            median(&of(cpu, r)),
            100.0 * ratios.2,
        );
    }
    let verdict = |x: f64| if x >= 0.9 { "met" } else { "NOT met" };
    println!(
        "B/A = {:.1}% by medians ({}), {:.1}% by per-round ratios ({}), {:.1}% per CPU-second ({}); target >= 90%.",
        100.0 * b_ratio.0,
        verdict(b_ratio.0),
        100.0 * b_ratio.1,
        verdict(b_ratio.1),
        100.0 * b_ratio.2,
        verdict(b_ratio.2),
    );
    println!(
        "B/(A+ct) = {:.1}% by medians, {:.1}% per CPU-second. The server accepted {} connections in all.",
        100.0 * b_ratio.0 / act_ratio.0,
        100.0 * b_ratio.2 / act_ratio.1,
        accepted.load(Ordering::Relaxed)
    );
    Ok(())
}
