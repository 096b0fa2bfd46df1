//! `bulkhead-lab bench-flows`: what flow observation costs at a given rate of
//! new connections through one node.
//!
//! One node, two pods on it (`bench/client`, `bench/server`), a policy that
//! lets the client into the server on UDP 9000 to 9000 + `ports` - 1 (so every
//! connection is decided by a policy rule and logged). The observer runs
//! alone in its own process in the node's namespace (`bulkhead-agent
//! observe`): the agent's nflog reader, aggregator and one-second report
//! drain, and nothing else. The client sends UDP datagrams, each from a fresh
//! source port (every one a NEW conntrack entry, so a new connection), paced
//! at `rate` per second, to the destination ports in turn; a sink in the
//! server counts what arrives.
//!
//! The agent's aggregation key is (source, destination, protocol,
//! destination port, verdict, rule, identities): the source port is not in
//! it, so the destination ports are what makes flows distinct. With the
//! default 4,096 ports, every one-second report carries up to 4,096 distinct
//! flows, and the aggregation table holds that many.
//!
//! Reported: connections sent and received (the dataplane must lose none),
//! attempts reported + shed (must add up to what was sent: honest
//! sampling), the largest sample rate reported, kernel losses, and the
//! observer process's CPU (cores) and peak memory.

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use crate::cluster::{Cluster, Options};

pub const SECTION: &str = "## Flow observation (issue 8)";

/// The first destination port; the bench uses `ports` of them from here.
/// With 64,000 source ports each, enough distinct 5-tuples that none is
/// reused within a run (no conntrack entry reused).
pub const FIRST_PORT: u16 = 9000;
/// The default number of destination ports (distinct flow keys).
pub const DEFAULT_PORTS: u16 = 4096;
const FIRST_SPORT: u16 = 1024;
const SPORTS: u32 = 64_000;

#[derive(Debug, Clone)]
pub struct FlowBenchOptions {
    pub rate: u32,
    pub seconds: u64,
    pub flows_max: usize,
    /// Destination ports (distinct flow keys), from [`FIRST_PORT`].
    pub ports: u16,
}

fn port_range(ports: u16) -> anyhow::Result<std::ops::RangeInclusive<u16>> {
    ensure!(
        ports >= 1 && u32::from(FIRST_PORT) + u32::from(ports) <= 65_536,
        "--ports {ports}: 1 to {}",
        65_536 - u32::from(FIRST_PORT)
    );
    Ok(FIRST_PORT..=FIRST_PORT + (ports - 1))
}

/// Sends `rate` datagrams a second for `seconds`, each from a new source
/// port, to the `ports` destination ports in turn; returns how many were
/// sent.
pub fn flood(to: std::net::IpAddr, rate: u32, seconds: u64, ports: u16) -> anyhow::Result<u64> {
    let range = port_range(ports)?;
    let nports = u64::from(ports);
    let total = u64::from(rate) * seconds;
    ensure!(
        total <= u64::from(SPORTS) * nports,
        "at most {} distinct connections per run",
        u64::from(SPORTS) * nports
    );
    let start = Instant::now();
    let mut sent = 0u64;
    let mut failed = 0u64;
    // Pace in 1 ms slots.
    let per_slot = (f64::from(rate) / 1000.0).max(0.001);
    while sent + failed < total {
        let slot_due = ((sent + failed) as f64 / per_slot) as u64;
        let due = start + Duration::from_millis(slot_due);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let i = sent + failed;
        // Every port in turn; a new source port once every port had one.
        let dport = range.start() + (i % nports) as u16;
        let sport = FIRST_SPORT as u32 + ((i / nports) % u64::from(SPORTS)) as u32;
        let ok = UdpSocket::bind(SocketAddr::new(
            std::net::Ipv4Addr::UNSPECIFIED.into(),
            sport as u16,
        ))
        .and_then(|s| s.send_to(b"x", SocketAddr::new(to, dport)));
        match ok {
            Ok(_) => sent += 1,
            Err(_) => failed += 1,
        }
    }
    if failed > 0 {
        eprintln!("flood: {failed} datagrams could not be sent (source port busy)");
    }
    Ok(sent)
}

/// Counts datagrams on the bench ports (a few readers polling non-blocking
/// sockets, one per port) until
/// `idle_seconds` of silence after the first one, or `limit` seconds in all;
/// prints `ready` once bound. Returns (received, datagrams the kernel
/// dropped because a socket's buffer was full: `RcvbufErrors` of this
/// namespace), so that a slow sink is not mistaken for dataplane loss.
pub fn sink(idle_seconds: u64, limit: u64, ports: u16) -> anyhow::Result<(u64, u64)> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let socks: Vec<UdpSocket> = port_range(ports)?
        .map(|p| {
            let s = UdpSocket::bind(SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), p))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect::<std::io::Result<_>>()
        .context("binding the sink ports")?;
    let before = rcvbuf_errors();
    let n = Arc::new(AtomicU64::new(0));
    let last = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut threads = Vec::new();
    // Few readers, each polling its sockets and then pausing: with one
    // socket per port, a blocking reader each would be thousands of threads,
    // and readers that never pause would take the cores the measured
    // observer needs. The socket buffers hold what arrives meanwhile (they
    // are checked: `RcvbufErrors`).
    let readers = socks.len().clamp(1, 2);
    let mut groups: Vec<Vec<UdpSocket>> = (0..readers).map(|_| Vec::new()).collect();
    for (i, s) in socks.into_iter().enumerate() {
        groups[i % readers].push(s);
    }
    for group in groups {
        let (n, last) = (Arc::clone(&n), Arc::clone(&last));
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            loop {
                let mut got_any = false;
                for s in &group {
                    while s.recv(&mut buf).is_ok() {
                        got_any = true;
                        n.fetch_add(1, Ordering::Relaxed);
                        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
                if !got_any {
                    let got = n.load(Ordering::Relaxed);
                    let idle = start.elapsed().as_millis() as u64
                        - last
                            .load(Ordering::Relaxed)
                            .min(start.elapsed().as_millis() as u64);
                    if (got > 0 && idle > idle_seconds * 1000)
                        || start.elapsed() > Duration::from_secs(limit)
                    {
                        return;
                    }
                }
            }
        }));
    }
    println!("ready");
    for t in threads {
        let _ = t.join();
    }
    Ok((
        n.load(Ordering::Relaxed),
        rcvbuf_errors().saturating_sub(before),
    ))
}

/// `Udp: ... RcvbufErrors` of this network namespace.
fn rcvbuf_errors() -> u64 {
    let Ok(snmp) = std::fs::read_to_string("/proc/net/snmp") else {
        return 0;
    };
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn yaml(ports: u16) -> String {
    "---\napiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n\
     status: {addresses: [{type: InternalIP, address: \"172.31.0.1\"}]}\n\
     ---\napiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n\
     ---\napiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: bench, labels: {app: client}}\n\
     spec: {nodeName: node-a, containers: [{name: c, image: lab}]}\n\
     status: {phase: Running, podIP: \"10.0.1.1\", podIPs: [{ip: \"10.0.1.1\"}]}\n\
     ---\napiVersion: v1\nkind: Pod\nmetadata: {name: server, namespace: bench, labels: {app: server}}\n\
     spec: {nodeName: node-a, containers: [{name: c, image: lab}]}\n\
     status: {phase: Running, podIP: \"10.0.1.2\", podIPs: [{ip: \"10.0.1.2\"}]}\n\
     ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server, namespace: bench}\n\
     spec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {app: client}}\n    \
     ports: [{protocol: UDP, port: 9000, endPort: LAST}]\n"
        .replace("LAST", &(FIRST_PORT + (ports - 1)).to_string())
}

fn wait_ready(
    child: &mut Child,
    what: &str,
) -> anyhow::Result<BufReader<std::process::ChildStdout>> {
    let out = child.stdout.take().context("no stdout")?;
    let mut r = BufReader::new(out);
    let mut line = String::new();
    r.read_line(&mut line)?;
    if line.trim() != "ready" {
        let mut err = String::new();
        if let Some(e) = child.stderr.as_mut() {
            let _ = e.read_to_string(&mut err);
        }
        bail!("{what} did not start: {line}{err}");
    }
    Ok(r)
}

fn finish(
    child: Child,
    mut out: BufReader<std::process::ChildStdout>,
    what: &str,
) -> anyhow::Result<String> {
    let mut s = String::new();
    out.read_to_string(&mut s)?;
    let o = child.wait_with_output()?;
    ensure!(
        o.status.success(),
        "{what} failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(s)
}

/// Runs the bench; returns the markdown of the results.
pub fn run(lab_bin: std::path::PathBuf, opts: &FlowBenchOptions) -> anyhow::Result<String> {
    port_range(opts.ports)?;
    let c = Cluster::start(&lab_bin, &yaml(opts.ports), Options::default())?;
    let topo = c.topology();
    let agent = crate::agent_bin()?;
    // Slack for a load generator slowed down by a busy machine.
    let observe_secs = opts.seconds * 2 + 5;
    let node_ns = c.node_netns("node-a")?.to_owned();

    let mut obs_cmd = Command::new(agent);
    obs_cmd.args([
        "observe",
        "--seconds",
        &observe_secs.to_string(),
        "--flows-max",
        &opts.flows_max.to_string(),
    ]);
    let mut obs = topo.spawn(&node_ns, obs_cmd)?;
    let obs_out = wait_ready(&mut obs, "the observer")?;

    let mut sink_cmd = Command::new(&lab_bin);
    sink_cmd.args([
        "flow-sink",
        "--idle-seconds",
        "2",
        "--limit-seconds",
        &(opts.seconds + 30).to_string(),
        "--ports",
        &opts.ports.to_string(),
    ]);
    let mut sink = topo.spawn(c.pod_netns("bench/server")?, sink_cmd)?;
    let sink_out = wait_ready(&mut sink, "the sink")?;

    let mut flood_cmd = Command::new(&lab_bin);
    flood_cmd.args([
        "flood",
        "--to",
        "10.0.1.2",
        "--rate",
        &opts.rate.to_string(),
        "--seconds",
        &opts.seconds.to_string(),
        "--ports",
        &opts.ports.to_string(),
    ]);
    let t = Instant::now();
    let flood = topo.spawn(c.pod_netns("bench/client")?, flood_cmd)?;
    let fo = flood.wait_with_output()?;
    let flood_secs = t.elapsed().as_secs_f64();
    ensure!(
        fo.status.success(),
        "flood failed: {}",
        String::from_utf8_lossy(&fo.stderr)
    );
    ensure!(
        flood_secs + 2.0 <= observe_secs as f64,
        "the load took {flood_secs:.1} s, longer than the observer's {observe_secs} s window: lower --rate or --ports"
    );
    let sent: u64 = String::from_utf8_lossy(&fo.stdout)
        .trim()
        .parse()
        .context("flood output")?;
    let sink_says = finish(sink, sink_out, "the sink")?;
    let mut words = sink_says.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(received)), Some(Ok(sink_overflow))) = (words.next(), words.next()) else {
        bail!("the sink printed {sink_says:?}");
    };
    let summary: serde_json::Value =
        serde_json::from_str(finish(obs, obs_out, "the observer")?.trim())
            .context("observer output")?;

    let g = |k: &str| summary[k].as_f64().unwrap_or(f64::NAN);
    let reported = g("reportedAttempts");
    let dropped = g("dropped");
    let cores = g("cpuSeconds") / flood_secs;
    let mut md = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(md, "{SECTION}\n");
    let _ = writeln!(
        md,
        "`bulkhead-lab bench-flows --rate {} --seconds {} --ports {} --flows-max {}` (one node, client and server pods on it, \
         every datagram from a new source port to the {} destination ports in turn: a new connection, allowed by a policy rule and logged, \
         {} distinct flow keys; observer alone: `bulkhead-agent observe`; debug build unless noted)\n",
        opts.rate, opts.seconds, opts.ports, opts.flows_max, opts.ports, opts.ports
    );
    let _ = writeln!(md, "| measure | value |\n|---|---|");
    let _ = writeln!(
        md,
        "| new connections sent | {sent} in {flood_secs:.1} s ({:.0}/s) |",
        sent as f64 / flood_secs
    );
    let _ = writeln!(
        md,
        "| received by the server / dropped by the server's full socket buffer | {received} / {sink_overflow} |"
    );
    let _ = writeln!(
        md,
        "| lost in the dataplane (sent - received - socket overflow) | {} |",
        sent.saturating_sub(received + sink_overflow)
    );
    let _ = writeln!(
        md,
        "| attempts reported + shed | {reported} + {dropped} = {} |",
        reported + dropped
    );
    let _ = writeln!(
        md,
        "| largest sample rate reported | {} |",
        summary["maxSampleRate"]
    );
    let _ = writeln!(
        md,
        "| nflog messages / kernel losses / overruns | {} / {} / {} |",
        summary["nflogMessages"], summary["lost"], summary["overruns"]
    );
    let _ = writeln!(
        md,
        "| observer CPU | {:.3} s = {cores:.3} cores |",
        g("cpuSeconds")
    );
    let _ = writeln!(
        md,
        "| observer peak memory (VmHWM) | {:.1} MiB |",
        g("maxRssKib") / 1024.0
    );
    let _ = writeln!(
        md,
        "| flow records reported | {} in {} reports |",
        summary["reportedFlows"], summary["reports"]
    );
    Ok(md)
}
