//! `bulkhead-lab bench`: propagation of changes through the whole system.
//!
//! A lab of `nodes` nodes and `pods` pods in namespace `bench`, every pod
//! isolated for ingress (`default-deny`), plus one policy `allow-marked`:
//! pods labelled `inbound: open` accept port 80 from pods labelled
//! `outbound: open` (only `p0` is). Then `changes` successive changes, each
//! of which newly allows exactly one flow, alternately:
//!
//! - a label change: pod `pD` gets `inbound: open` (flow `p0 -> pD`);
//! - a policy change: a new policy lets `pY` into `pX` (flow `pY -> pX`).
//!
//! Every pod in those flows is used once, and the pods of a flow are on
//! different nodes (pods are spread round-robin). For each change:
//!
//! - a prober in the flow's source pod starts before the write: 8 threads
//!   each retrying a new TCP connection with a 16 ms timeout (so the first
//!   success is seen within about 2 ms of the first packet getting
//!   through); it must have failed at least once before the write;
//! - the write is one file, renamed into the source directory;
//! - "ack": from the write to the last agent's ack, by the controller's
//!   clock (`ackedAtUnixMillis` on `/status`, millisecond resolution);
//! - "packet": from the write to the prober's first connection.
//!
//! Plus the peak resident memory (VmHWM) of the controller and each agent.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, anyhow, bail, ensure};

use super::{Bins, Input, Lab, LabOptions, PodInfo, lab_namespaces, netio};

/// The section of `docs/BENCHMARKS.md` the bench writes.
pub const SECTION: &str = "## Sync and propagation (issue 5)";

/// Prober threads per flow, and each attempt's timeout.
const PROBER_THREADS: usize = 8;
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(16);

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub name: String,
    pub nodes: usize,
    pub pods: usize,
    pub changes: usize,
    /// Where to add the results (`None`: print only).
    pub doc: Option<PathBuf>,
    pub bins: Bins,
}

/// One change's figures.
#[derive(Debug, Clone)]
pub struct Sample {
    /// `label` or `policy`.
    pub kind: &'static str,
    pub flow: String,
    /// Write to the last agent's ack.
    pub ack_ms: f64,
    /// Write to the first connection of the new flow.
    pub packet_ms: f64,
    /// The longest apply of the agents that acked (their own measure).
    pub apply_ms: f64,
}

#[derive(Debug, Clone)]
pub struct BenchResult {
    pub samples: Vec<Sample>,
    /// `(what, KiB)`.
    pub memory: Vec<(String, u64)>,
    pub setup: Duration,
    pub markdown: String,
}

fn pod_name(i: usize) -> String {
    format!("p{i}")
}

fn cluster_yaml(pods: usize) -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: bench, labels: {purpose: bench}}\n",
    );
    for i in 0..pods {
        let extra = if i == 0 { ", outbound: open" } else { "" };
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {n}, namespace: bench, labels: {{app: bench, name: {n}{extra}}}}}\n\
             spec: {{containers: [{{name: c, image: lab, ports: [{{containerPort: 80}}]}}]}}\n",
            n = pod_name(i)
        );
    }
    y.push_str(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: default-deny, namespace: bench}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n\
         ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: allow-marked, namespace: bench}\n\
         spec:\n  podSelector: {matchLabels: {inbound: open}}\n  ingress:\n  \
         - from: [{podSelector: {matchLabels: {outbound: open}}}]\n    ports: [{port: 80, protocol: TCP}]\n",
    );
    y
}

fn label_change(d: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {n}, namespace: bench, labels: {{app: bench, name: {n}, inbound: open}}}}\n\
         spec: {{containers: [{{name: c, image: lab, ports: [{{containerPort: 80}}]}}]}}\n",
        n = pod_name(d)
    )
}

fn policy_change(k: usize, src: usize, dst: usize) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: allow-{k}, namespace: bench}}\n\
         spec:\n  podSelector: {{matchLabels: {{name: {d}}}}}\n  ingress:\n  \
         - from: [{{podSelector: {{matchLabels: {{name: {s}}}}}}}]\n    ports: [{{port: 80, protocol: TCP}}]\n",
        d = pod_name(dst),
        s = pod_name(src)
    )
}

/// A prober retrying one connection from a pod until the first success.
struct FirstConnect {
    done: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
    success: Arc<Mutex<Option<SystemTime>>>,
    threads: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl FirstConnect {
    fn start(ns: &str, to: SocketAddr) -> anyhow::Result<Self> {
        let done = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicU64::new(0));
        let success = Arc::new(Mutex::new(None));
        let mut threads = Vec::new();
        for _ in 0..PROBER_THREADS {
            let (done, failures, success) = (
                Arc::clone(&done),
                Arc::clone(&failures),
                Arc::clone(&success),
            );
            threads.push(netio::spawn_in(ns, "bench probe", move || {
                while !done.load(Ordering::SeqCst) {
                    match TcpStream::connect_timeout(&to, ATTEMPT_TIMEOUT) {
                        Ok(_) => {
                            let now = SystemTime::now();
                            let mut s = success.lock().unwrap_or_else(|e| e.into_inner());
                            if s.is_none_or(|t| now < t) {
                                *s = Some(now);
                            }
                            done.store(true, Ordering::SeqCst);
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                Ok(())
            })?);
        }
        Ok(Self {
            done,
            failures,
            success,
            threads,
        })
    }

    fn success(&self) -> Option<SystemTime> {
        *self.success.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the flow failed `n` times, failing if it got through.
    fn wait_denied(&self, n: u64, deadline: Instant) -> anyhow::Result<()> {
        loop {
            ensure!(
                self.success().is_none(),
                "the flow got through before the change"
            );
            if self.failures.load(Ordering::SeqCst) >= n {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "the prober made no attempt");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits for the first success.
    fn wait(mut self, deadline: Instant) -> anyhow::Result<SystemTime> {
        let result = loop {
            if let Some(t) = self.success() {
                break Ok(t);
            }
            if Instant::now() >= deadline {
                break Err(anyhow!("the new flow did not get through in time"));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        self.done.store(true, Ordering::SeqCst);
        for t in std::mem::take(&mut self.threads) {
            t.join()
                .map_err(|_| anyhow!("a prober thread panicked"))??;
        }
        result
    }
}

impl Drop for FirstConnect {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

fn bench_pod(lab: &Lab, i: usize) -> anyhow::Result<PodInfo> {
    lab.pod(&format!("bench/{}", pod_name(i)))
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn stats(values: impl Iterator<Item = f64>) -> (f64, f64, f64) {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    (
        percentile(&v, 50.0),
        percentile(&v, 99.0),
        v.last().copied().unwrap_or(f64::NAN),
    )
}

/// `YYYY-MM-DD` (UTC) of `t`.
fn date(t: SystemTime) -> String {
    let days = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or_default() as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Runs the bench; prints and (with a `doc`) records the results.
pub fn run(o: &BenchOptions) -> anyhow::Result<BenchResult> {
    ensure!(o.nodes >= 2, "the bench needs at least 2 nodes");
    // Label changes use one pod each, policy changes two.
    let needed = 1 + o.changes.div_ceil(2) + 2 * (o.changes / 2);
    ensure!(
        o.pods >= needed,
        "{} changes need at least {needed} pods",
        o.changes
    );
    let leftovers = lab_namespaces(&o.name)?;
    ensure!(
        leftovers.is_empty(),
        "a lab named {} exists: `bulkhead-lab down --name {}` first",
        o.name,
        o.name
    );
    let mut opts = LabOptions::new(&o.name, o.bins.clone());
    opts.nodes = o.nodes;
    opts.up_timeout = Duration::from_secs(600);
    opts.sync_timeout = Duration::from_secs(10);
    eprintln!(
        "bench: bringing up {} nodes and {} pods (a while: every pod is a namespace with a server)...",
        o.nodes, o.pods
    );
    let started = Instant::now();
    let mut lab = Lab::up(&opts, &[Input::new("bench.yaml", &cluster_yaml(o.pods))])?;
    let setup = started.elapsed();
    eprintln!("bench: up in {:.1} s", setup.as_secs_f64());
    let pods = lab.pods();

    // Pods are spread round-robin in order, so consecutive indexes are on
    // different nodes.
    let mut next = 1usize;
    let mut samples = Vec::with_capacity(o.changes);
    for k in 0..o.changes {
        let (kind, src, dst, text) = if k % 2 == 0 {
            let d = next;
            next += 1;
            ("label", 0, d, label_change(d))
        } else {
            let (s, d) = (next, next + 1);
            next += 2;
            ("policy", s, d, policy_change(k, s, d))
        };
        let (s, d) = (bench_pod(&lab, src)?, bench_pod(&lab, dst)?);
        ensure!(s.node != d.node || o.nodes == 1, "flow on one node");
        let ip = d
            .ips
            .iter()
            .find(|ip| matches!(ip, IpAddr::V4(_)))
            .copied()
            .context("a pod without IPv4")?;
        let flow = format!("{} -> {}", s.key, d.key);
        let prober = FirstConnect::start(&s.netns, SocketAddr::new(ip, 80))?;
        prober
            .wait_denied(
                PROBER_THREADS as u64,
                Instant::now() + Duration::from_secs(5),
            )
            .with_context(|| format!("change {k} ({kind}): {flow}"))?;
        let synced = lab
            .apply(&[Input::new(&format!("change-{k}.yaml"), &text)])
            .with_context(|| format!("change {k} ({kind}): {flow}"))?;
        let through = prober
            .wait(Instant::now() + Duration::from_secs(10))
            .with_context(|| format!("change {k} ({kind}): {flow}"))?;
        let at = synced.written.at;
        let packet_ms = through
            .duration_since(at)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        let Some(ack_ms) = synced.last_ack_ms() else {
            bail!("change {k} ({kind}, {flow}): no agent acked anything new");
        };
        eprintln!(
            "bench: change {k:>3} ({kind:<6}) {flow:<22} ack {ack_ms:>4} ms, first packet {packet_ms:>7.1} ms"
        );
        samples.push(Sample {
            kind,
            flow,
            ack_ms: ack_ms as f64,
            packet_ms,
            apply_ms: synced.apply_ms().unwrap_or(f64::NAN),
        });
    }
    let memory = lab.peak_memory();
    let nodes = lab.node_names().len();
    let npods = pods.len();
    lab.down()?;

    let markdown = render(o, &samples, &memory, setup, nodes, npods);
    println!("{markdown}");
    if let Some(doc) = &o.doc {
        record(doc, &markdown)?;
        eprintln!("bench: results recorded in {}", doc.display());
    }
    Ok(BenchResult {
        samples,
        memory,
        setup,
        markdown,
    })
}

fn render(
    o: &BenchOptions,
    samples: &[Sample],
    memory: &[(String, u64)],
    setup: Duration,
    nodes: usize,
    pods: usize,
) -> String {
    let profile = if o
        .bins
        .bulkhead
        .components()
        .any(|c| c.as_os_str() == "release")
    {
        "release"
    } else {
        "debug"
    };
    let mut md = String::new();
    let _ = writeln!(md, "{SECTION}\n");
    let defaults = (o.nodes, o.pods, o.changes) == (3, 300, 100);
    let flags = if defaults {
        String::new()
    } else {
        format!(
            " --nodes {} --pods {} --changes {}",
            o.nodes, o.pods, o.changes
        )
    };
    let _ = writeln!(
        md,
        "Command: `cargo build --release && target/release/bulkhead-lab bench{flags}` (as root)\n"
    );
    let _ = writeln!(
        md,
        "The whole system in the netns lab: the controller (directory source, mTLS gRPC) in the \
         fabric namespace, one agent per node. {nodes} nodes, {pods} pods in one namespace, all \
         isolated for ingress; {} successive changes, alternately a label change (pod `pD` gets \
         `inbound: open`, which a standing policy lets `p0` into) and a policy change (a new \
         NetworkPolicy lets `pY` into `pX`); each newly allows exactly one cross-node flow. \
         Per change: from the file's rename into the source directory to the last agent's ack \
         (the controller's `ackedAtUnixMillis`, 1 ms resolution), and to the first TCP \
         connection of the new flow (8 prober threads in the source pod retrying with 16 ms \
         timeouts, started before the write and seen failing first: about 2 ms resolution). \
         {profile} build, 2-core machine, {} (setup of the lab: {:.0} s).\n",
        samples.len(),
        date(SystemTime::now()),
        setup.as_secs_f64()
    );
    let _ = writeln!(md, "| what | p50 | p99 | max | target |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    let row = |md: &mut String, what: &str, v: (f64, f64, f64), target: &str| {
        let _ = writeln!(
            md,
            "| {what} | {:.1} ms | {:.1} ms | {:.1} ms | {target} |",
            v.0, v.1, v.2
        );
    };
    row(
        &mut md,
        &format!("write → last agent ack, all {} changes", samples.len()),
        stats(samples.iter().map(|s| s.ack_ms)),
        "p99 < 100 ms",
    );
    row(
        &mut md,
        "write → first packet of the new flow, all changes",
        stats(samples.iter().map(|s| s.packet_ms)),
        "p99 < 100 ms",
    );
    row(
        &mut md,
        "of which the agent's apply (its own measure, in the ack)",
        stats(samples.iter().map(|s| s.apply_ms)),
        "",
    );
    for kind in ["label", "policy"] {
        let of = || samples.iter().filter(move |s| s.kind == kind);
        if of().next().is_none() {
            continue;
        }
        row(
            &mut md,
            &format!("write → last agent ack, {kind} changes"),
            stats(of().map(|s| s.ack_ms)),
            "",
        );
        row(
            &mut md,
            &format!("write → first packet, {kind} changes"),
            stats(of().map(|s| s.packet_ms)),
            "",
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Where the time goes: the controller's directory source waits 20 ms after the first \
         inotify event before it reads (its debounce, so that a burst of writes is read once); \
         then it loads the changed file, recompiles and sends each changed node a delta; the \
         agent applies it with one `nft` transaction (the row above) and acks. The first packet \
         gets through a little before the ack is recorded.\n"
    );
    let _ = writeln!(md, "| process | peak memory (VmHWM) |");
    let _ = writeln!(md, "|---|---|");
    for (what, kib) in memory {
        let _ = writeln!(md, "| {what} | {:.1} MiB |", *kib as f64 / 1024.0);
    }
    md
}

/// Replaces (or appends) [`SECTION`] of `doc` with `markdown`; the other
/// sections stay as they are.
pub fn record(doc: &std::path::Path, markdown: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(doc).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
    let new = replace_section(&text, markdown);
    std::fs::write(doc, new).with_context(|| format!("writing {}", doc.display()))
}

/// `text` with the section starting at [`SECTION`] (up to the next `## `
/// heading) replaced by `section`, or `section` appended.
pub fn replace_section(text: &str, section: &str) -> String {
    let section = section.trim_end();
    match text.find(SECTION) {
        Some(start) => {
            let after = start + SECTION.len();
            let end = text[after..]
                .find("\n## ")
                .map_or(text.len(), |i| after + i + 1);
            format!("{}{section}\n\n{}", &text[..start], &text[end..])
                .trim_end()
                .to_owned()
                + "\n"
        }
        None => format!("{}\n\n{section}\n", text.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn the_section_is_replaced_or_appended() {
        let doc = "# B\n\n## A\n\na\n";
        let one = replace_section(doc, &format!("{SECTION}\n\nx\n"));
        assert_eq!(one, format!("# B\n\n## A\n\na\n\n{SECTION}\n\nx\n"));
        let two = replace_section(&format!("{one}\n## C\n\nc\n"), &format!("{SECTION}\n\ny\n"));
        assert_eq!(
            two,
            format!("# B\n\n## A\n\na\n\n{SECTION}\n\ny\n\n## C\n\nc\n")
        );
    }

    #[test]
    fn dates() {
        assert_eq!(date(SystemTime::UNIX_EPOCH), "1970-01-01");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_164_800);
        assert_eq!(date(t), "2024-02-29");
    }
}
