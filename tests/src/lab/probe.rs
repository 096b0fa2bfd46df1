//! Real connections in the lab: the whole matrix ([`probe_matrix`], printed
//! exactly like `bulkhead reachability`), and continuous probers
//! ([`Watcher`]) that keep trying a few flows while something else happens.
//!
//! Probes run on threads moved into the source pod's namespace (see
//! [`super::netio`]) and use the traffic tools of [`crate::traffic`]. A
//! probe counts as "allowed" when the packets reached the destination pod:
//! it was answered, or refused (TCP reset, ICMP port unreachable: nothing
//! serves that port there, but the policy let the packet through; the
//! dataplane never rejects, it drops). "Denied" is silence until the
//! timeout.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use bulkhead_core::Inventory;
use bulkhead_core::labels::Labels;
use bulkhead_core::model::{Object, Pod};
use bulkhead_core::verdict::{self, Endpoint};

use super::{Lab, netio, split_key};
use crate::traffic::{ProbeResult, Proto, Target, probe, probe_all};

/// How many source pods probe at once.
const PARALLEL_SOURCES: usize = 16;

/// A reachability matrix: `allowed[src][dst]`, pods sorted by namespace
/// and name (the order `bulkhead reachability` uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    pub port: u16,
    /// `TCP`, `UDP`.
    pub protocol: String,
    pub pods: Vec<String>,
    pub allowed: Vec<Vec<bool>>,
}

/// `TCP`/`UDP` (any case) as the lab's protocol; SCTP cannot be probed.
pub fn parse_protocol(s: &str) -> anyhow::Result<(Proto, &'static str)> {
    match s.to_ascii_uppercase().as_str() {
        "TCP" => Ok((Proto::Tcp, "TCP")),
        "UDP" => Ok((Proto::Udp, "UDP")),
        "SCTP" => bail!("the lab cannot probe SCTP (its servers speak TCP and UDP)"),
        _ => bail!("unknown protocol {s:?}: expected TCP or UDP"),
    }
}

/// Whether a probe's packets reached the destination (see the module
/// documentation).
pub fn reached(r: &ProbeResult) -> bool {
    r.ok || r.detail.contains("Connection refused")
}

impl Matrix {
    /// Parses `bulkhead reachability -o json`.
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
        let port = v["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .context("no port")?;
        let protocol = v["protocol"].as_str().context("no protocol")?.to_owned();
        let rows = v["allowed"].as_object().context("no \"allowed\" object")?;
        let mut pods: Vec<String> = rows.keys().cloned().collect();
        pods.sort_by(|a, b| split_key(a).cmp(&split_key(b)));
        let mut allowed = Vec::with_capacity(pods.len());
        for s in &pods {
            let row = rows[s]
                .as_object()
                .with_context(|| format!("row {s} is not an object"))?;
            ensure!(row.len() == pods.len(), "row {s} has {} cells", row.len());
            let mut r = Vec::with_capacity(pods.len());
            for d in &pods {
                r.push(
                    row.get(d)
                        .and_then(serde_json::Value::as_bool)
                        .with_context(|| format!("no boolean for {s} -> {d}"))?,
                );
            }
            allowed.push(r);
        }
        Ok(Self {
            port,
            protocol,
            pods,
            allowed,
        })
    }

    /// Exactly what `bulkhead reachability -o json` prints.
    pub fn to_json(&self) -> String {
        bulkhead_core::explain::matrix_json(&self.protocol, self.port, &self.pods, &self.allowed)
    }

    /// Exactly what `bulkhead reachability -o table` prints.
    pub fn to_table(&self) -> String {
        bulkhead_core::explain::matrix_table(&self.protocol, self.port, &self.pods, &self.allowed)
    }

    /// How many cells are allowed.
    pub fn count_allowed(&self) -> usize {
        self.allowed.iter().flatten().filter(|&&a| a).count()
    }

    /// The cell `src -> dst` (`namespace/name`).
    pub fn get(&self, src: &str, dst: &str) -> Option<bool> {
        let s = self.pods.iter().position(|p| p == src)?;
        let d = self.pods.iter().position(|p| p == dst)?;
        Some(self.allowed[s][d])
    }

    /// The cells where `self` and `other` differ, `(src, dst, self's,
    /// other's)`; a different set of pods or port is one difference too.
    pub fn differences(&self, other: &Matrix) -> Vec<String> {
        let mut out = Vec::new();
        if (self.port, &self.protocol) != (other.port, &other.protocol) {
            out.push(format!(
                "{}/{} vs {}/{}",
                self.protocol, self.port, other.protocol, other.port
            ));
        }
        if self.pods != other.pods {
            out.push(format!("pods {:?} vs {:?}", self.pods, other.pods));
            return out;
        }
        for (s, (a, b)) in self.allowed.iter().zip(&other.allowed).enumerate() {
            for (d, (x, y)) in a.iter().zip(b).enumerate() {
                if x != y {
                    out.push(format!(
                        "{} -> {}: {} vs {}",
                        self.pods[s],
                        self.pods[d],
                        word(*x),
                        word(*y)
                    ));
                }
            }
        }
        out
    }
}

fn word(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "denied" }
}

/// Probes `protocol`/`port` from every pod of the lab to every pod, at the
/// destination address the engine uses for that pair (the destination's
/// primary family first), every source in parallel, each probe within
/// `timeout`.
pub fn probe_matrix(
    lab: &Lab,
    port: u16,
    protocol: &str,
    timeout: Duration,
) -> anyhow::Result<Matrix> {
    let (proto, name) = parse_protocol(protocol)?;
    ensure!(port > 0, "port 0");
    let pods = lab.pods();
    // An inventory of the pods alone: the engine's order and address choice.
    let objects = pods.iter().map(|p| {
        let (ns, n) = split_key(&p.key);
        Object::Pod(Pod {
            namespace: ns.to_owned(),
            name: n.to_owned(),
            labels: Labels::new(),
            ips: p.ips.clone(),
            node: Some(p.node.clone()),
            ports: Vec::new(),
            host_network: false,
            service_account: String::new(),
        })
    });
    let (inv, _) = Inventory::new(objects);
    let keys: Vec<String> = inv
        .pods
        .iter()
        .map(bulkhead_core::model::Pod::key)
        .collect();
    let netns: BTreeMap<&str, &str> = pods
        .iter()
        .map(|p| (p.key.as_str(), p.netns.as_str()))
        .collect();
    let n = keys.len();
    // (source index, destination addresses) per source.
    let mut jobs: Vec<(usize, String, Vec<Option<IpAddr>>)> = Vec::with_capacity(n);
    for (s, key) in keys.iter().enumerate() {
        let addrs = (0..n)
            .map(
                |d| match verdict::addresses(&inv, Endpoint::Pod(s), Endpoint::Pod(d)) {
                    (Some(a), Some(b)) if a.is_ipv4() == b.is_ipv4() => Some(b),
                    _ => None,
                },
            )
            .collect();
        let ns = netns
            .get(key.as_str())
            .with_context(|| format!("no namespace for pod {key}"))?;
        jobs.push((s, (*ns).to_owned(), addrs));
    }
    let mut allowed = vec![vec![false; n]; n];
    for chunk in jobs.chunks(PARALLEL_SOURCES) {
        let mut handles = Vec::new();
        for (s, ns, addrs) in chunk {
            let targets: Vec<Target> = addrs
                .iter()
                .flatten()
                .map(|&ip| Target::new(proto, ip, port))
                .collect();
            let h = netio::spawn_in(ns, "probe", move || Ok(probe_all(&targets, timeout)))?;
            handles.push((*s, addrs.clone(), h));
        }
        for (s, addrs, h) in handles {
            let results = h
                .join()
                .map_err(|_| anyhow!("a prober thread panicked"))?
                .with_context(|| format!("probing from {}", keys[s]))?;
            let mut results = results.iter();
            for (d, a) in addrs.iter().enumerate() {
                if a.is_some() {
                    let r = results.next().context("a probe result is missing")?;
                    allowed[s][d] = reached(r);
                }
            }
        }
    }
    Ok(Matrix {
        port,
        protocol: name.to_owned(),
        pods: keys,
        allowed,
    })
}

/// One flow a [`Watcher`] keeps trying.
#[derive(Debug, Clone)]
pub struct Flow {
    /// For messages: `acme/web -> acme/db`.
    pub name: String,
    pub target: Target,
    /// Whether it must get through (`true`) or never (`false`).
    pub expect: bool,
}

/// What a [`Watcher`] saw of one flow.
#[derive(Debug, Clone)]
pub struct FlowLog {
    pub flow: Flow,
    pub attempts: u64,
    /// Every attempt that did not give the expected result: when (since the
    /// watcher started) and what happened.
    pub unexpected: Vec<(Duration, String)>,
}

impl FlowLog {
    pub fn clean(&self) -> bool {
        self.unexpected.is_empty()
    }
}

/// Probers that keep trying flows from one pod, one thread per flow, each
/// attempt a new connection within a timeout, until stopped.
#[derive(Debug)]
pub struct Watcher {
    stop: Arc<AtomicBool>,
    counts: Vec<Arc<AtomicU64>>,
    threads: Vec<JoinHandle<anyhow::Result<FlowLog>>>,
}

impl Watcher {
    /// Starts trying `flows` from namespace `ns`: each attempt of a flow
    /// that must not pass waits `timeout`; one that must pass may take four
    /// times that (it ends as soon as it is answered).
    pub fn start(ns: &str, flows: Vec<Flow>, timeout: Duration) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut counts = Vec::new();
        let mut threads = Vec::new();
        for flow in flows {
            let count = Arc::new(AtomicU64::new(0));
            counts.push(Arc::clone(&count));
            let stop = Arc::clone(&stop);
            let h = netio::spawn_in(ns, "watch", move || {
                let mut log = FlowLog {
                    flow,
                    attempts: 0,
                    unexpected: Vec::new(),
                };
                let timeout = if log.flow.expect {
                    timeout * 4
                } else {
                    timeout
                };
                while !stop.load(Ordering::SeqCst) {
                    let r = probe(log.flow.target, timeout);
                    log.attempts += 1;
                    count.fetch_add(1, Ordering::SeqCst);
                    if reached(&r) != log.flow.expect {
                        log.unexpected.push((started.elapsed(), r.to_string()));
                    }
                }
                Ok(log)
            })?;
            threads.push(h);
        }
        Ok(Self {
            stop,
            counts,
            threads,
        })
    }

    /// Attempts so far, per flow.
    pub fn attempts(&self) -> Vec<u64> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect()
    }

    /// Waits until every flow made `more` attempts beyond `since` (what
    /// [`Watcher::attempts`] said), or fails at `deadline`.
    pub fn wait_attempts(&self, since: &[u64], more: u64, deadline: Instant) -> anyhow::Result<()> {
        loop {
            let now = self.attempts();
            if now.iter().zip(since).all(|(n, s)| *n >= s + more) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the probers made {now:?} attempts, not {more} more than {since:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops and returns what every flow saw.
    pub fn stop(mut self) -> anyhow::Result<Vec<FlowLog>> {
        self.stop.store(true, Ordering::SeqCst);
        std::mem::take(&mut self.threads)
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("a prober thread panicked"))?)
            .collect()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
