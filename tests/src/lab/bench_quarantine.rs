//! `bulkhead-lab bench-quarantine`: from `bulkhead quarantine` returning to
//! the moment the pod's live TCP connection stops passing packets.
//!
//! A lab of `nodes` nodes; the victim and its peer on different nodes; an
//! echo server in the victim; per round a fresh TCP session from the peer
//! with a round trip every `interval` (1 ms), then `bulkhead quarantine`,
//! timed from the moment the command returns to the last round trip that
//! came back (the next one, at most one interval plus a round trip later,
//! does not). Then `bulkhead release`, and the next round once a new session
//! passes again.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};

use super::quarantine::{echo_server, tcp_session};
use super::{Bins, Input, Lab, LabOptions, lab_namespaces};

#[derive(Debug, Clone)]
pub struct QuarantineBenchOptions {
    pub name: String,
    pub nodes: usize,
    pub rounds: usize,
    pub bins: Bins,
}

const ECHO: u16 = 7000;
const INTERVAL: Duration = Duration::from_millis(1);

fn cluster(nodes: usize) -> String {
    let mut y = String::new();
    for n in 1..=nodes {
        y.push_str(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: node-{n}}}\n---\n"
        ));
    }
    y.push_str(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: victim, namespace: bench}\n\
         spec: {nodeName: node-1, containers: [{name: c, image: i}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: peer, namespace: bench}\n\
         spec: {nodeName: node-2, containers: [{name: c, image: i}]}\n",
    );
    y
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs the bench and prints the results (milliseconds).
pub fn run(o: &QuarantineBenchOptions) -> anyhow::Result<Vec<f64>> {
    ensure!(o.nodes >= 2, "the bench needs at least 2 nodes");
    ensure!(
        lab_namespaces(&o.name)?.is_empty(),
        "a lab named {} exists: `bulkhead-lab down --name {}` first",
        o.name,
        o.name
    );
    let mut opts = LabOptions::new(&o.name, o.bins.clone());
    opts.nodes = o.nodes;
    let lab = Lab::up(&opts, &[Input::new("bench.yaml", &cluster(o.nodes))])?;
    let victim = lab.pod("bench/victim")?;
    let peer = lab.pod("bench/peer")?;
    let _echo = echo_server(&lab, &victim.netns, ECHO)?;
    let to = SocketAddr::new(victim.ips[0], ECHO);
    let mut ms = Vec::with_capacity(o.rounds);
    for round in 0..o.rounds {
        // A session that passes (after the previous release propagated).
        let deadline = Instant::now() + Duration::from_secs(20);
        let session = loop {
            let s = tcp_session(&peer.netns, to, INTERVAL, Duration::from_millis(300))?;
            if s.wait_oks(20, Instant::now() + Duration::from_secs(2))
                .is_ok()
            {
                break s;
            }
            ensure!(
                Instant::now() < deadline,
                "round {round}: no session after release"
            );
        };
        lab.quarantine("bench/victim", "bench", &[])?;
        let returned = Instant::now();
        let deadline = returned + Duration::from_secs(20);
        while session.ended().is_none() {
            ensure!(
                Instant::now() < deadline,
                "round {round}: the session was not cut"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        let last = session.last_ok().context("no round trip at all")?;
        let cut = last.saturating_duration_since(returned);
        ms.push(cut.as_secs_f64() * 1000.0);
        eprintln!("round {round}: {:.1} ms", cut.as_secs_f64() * 1000.0);
        drop(session);
        lab.release("bench/victim")?;
    }
    let mut sorted = ms.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "quarantine cut over {} rounds ({} nodes): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        sorted.len(),
        o.nodes,
        percentile(&sorted, 50.0),
        percentile(&sorted, 99.0),
        sorted.last().copied().unwrap_or(f64::NAN)
    );
    lab.down()?;
    Ok(ms)
}
