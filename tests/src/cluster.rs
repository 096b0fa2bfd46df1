//! A whole cluster in the lab: Kubernetes YAML in, a [`Topology`] out with
//! every node's compiled ruleset applied by the real `bulkhead-agent`, and
//! real probes compared with what the verdict engine says.
//!
//! ```text
//!  YAML ─load─▶ Inventory ─┬─ one lab node per node name, one lab pod per pod
//!                          │  (its addresses; its TCP/UDP containerPorts served)
//!                          ├─ compile_node(node, generation) ─▶ N.json
//!                          │     └─ ip netns exec <node> bulkhead-agent apply
//!                          └─ verdict::reachability ─▶ engine grid
//!  probes: every pod ─▶ every pod (itself too), in parallel ─▶ probed grid
//! ```
//!
//! The probe of a cell goes from the source pod to the destination's address
//! in the family the engine uses for that pair ([`verdict::addresses`]: the
//! destination's primary family first), or, with [`Cluster::compare_family`],
//! in one given family. A probe is "allowed" when it is answered, "denied"
//! when it times out. A port that is not served answers "refused", which
//! tells nothing about policy (the packet got through): that makes the
//! comparison fail with a message saying to serve the port (a containerPort,
//! or [`Options::extra_tcp_ports`]).
//!
//! [`Cluster::apply`] and [`Cluster::apply_delta`] change policies and labels
//! in place: pods keep their addresses, nodes and servers.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead as _, BufReader, Read as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use bulkhead_core::compile::{self, diff};
use bulkhead_core::explain;
pub use bulkhead_core::verdict::Family;
use bulkhead_core::verdict::{self, Endpoint, Query};
use bulkhead_core::{Inventory, Protocol};
use bulkhead_proto::v1 as pb;

use crate::netns::{NodeId, PodId, PodSpec, Topology};
use crate::traffic::{ProbeResult, Proto, Target};

/// How long a probe that must fail waits (one that passes ends at once).
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(700);

/// How the agent learns pod interfaces (`bulkhead-agent apply --links`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// From rtnetlink: anti-spoofing on.
    Auto,
    /// None: anti-spoofing has nothing to check against.
    None,
}

impl Links {
    fn arg(self) -> &'static str {
        match self {
            Links::Auto => "auto",
            Links::None => "none",
        }
    }
}

/// How [`Cluster`] installs a new state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// `bulkhead-agent apply --ruleset`: the whole ruleset.
    Full,
    /// `bulkhead-agent apply --delta`: the difference from what is applied.
    Delta,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// `--links` of every `bulkhead-agent apply`.
    pub links: Links,
    /// Served on every pod, besides its containerPorts.
    pub extra_tcp_ports: Vec<u16>,
    pub extra_udp_ports: Vec<u16>,
    /// How long each probe of a comparison may take.
    pub probe_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            links: Links::Auto,
            extra_tcp_ports: Vec::new(),
            extra_udp_ports: Vec::new(),
            probe_timeout: PROBE_TIMEOUT,
        }
    }
}

/// The cluster. See the module documentation.
#[derive(Debug)]
pub struct Cluster {
    topo: Topology,
    agent: PathBuf,
    dir: tempfile::TempDir,
    opts: Options,
    inv: Inventory,
    /// `pods[i]` is inventory pod `i` in the lab.
    pods: Vec<PodId>,
    nodes: BTreeMap<String, NodeId>,
    /// The last generation installed.
    generation: u64,
    /// What is applied on each node, and the file holding it.
    applied: BTreeMap<String, (pb::Ruleset, PathBuf)>,
}

/// Loads YAML into an inventory, failing on any error the loader reports.
pub fn inventory(yaml: &str) -> anyhow::Result<Inventory> {
    let loaded = bulkhead_core::load_str("cluster.yaml", yaml);
    let (inv, mut diags) = Inventory::from_loaded(&loaded);
    diags.extend(loaded.diagnostics.iter().cloned());
    let errors: Vec<String> = diags
        .iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .collect();
    ensure!(
        errors.is_empty(),
        "the YAML does not load:\n{}",
        errors.join("\n")
    );
    Ok(inv)
}

fn protocol(p: Proto) -> Protocol {
    match p {
        Proto::Tcp => Protocol::Tcp,
        Proto::Udp => Protocol::Udp,
    }
}

fn union(a: impl IntoIterator<Item = u16>, b: &[u16]) -> Vec<u16> {
    let all: BTreeSet<u16> = a.into_iter().chain(b.iter().copied()).collect();
    all.into_iter().collect()
}

impl Cluster {
    /// Builds the lab for `yaml` (every pod needs a node and an address, at
    /// most one per family, and no host network) and applies every node's
    /// ruleset at generation 1. `lab_bin` is the `bulkhead-lab` executable
    /// (`env!("CARGO_BIN_EXE_bulkhead-lab")`).
    pub fn start(lab_bin: impl Into<PathBuf>, yaml: &str, opts: Options) -> anyhow::Result<Self> {
        let inv = inventory(yaml)?;
        let agent = crate::agent_bin()?.to_path_buf();
        let mut topo = Topology::new(lab_bin)?;
        let mut nodes = BTreeMap::new();
        for name in compile::node_names(&inv) {
            let id = topo.add_node(&name)?;
            nodes.insert(name, id);
        }
        let mut pods = Vec::with_capacity(inv.pods.len());
        for p in &inv.pods {
            let key = p.key();
            ensure!(!p.host_network, "pod {key}: host network is not supported");
            let node = p
                .node
                .as_ref()
                .with_context(|| format!("pod {key} has no spec.nodeName"))?;
            let node = *nodes
                .get(node)
                .with_context(|| format!("pod {key}: no node {node}"))?;
            ensure!(!p.ips.is_empty(), "pod {key} has no address");
            let mut spec = PodSpec {
                name: key.clone(),
                ..PodSpec::default()
            };
            for ip in &p.ips {
                match ip {
                    IpAddr::V4(v4) if spec.ipv4.is_none() => spec.ipv4 = Some(*v4),
                    IpAddr::V6(v6) if spec.ipv6.is_none() => spec.ipv6 = Some(*v6),
                    _ => bail!("pod {key}: the lab gives a pod one address per family"),
                }
            }
            spec.tcp_ports = union(
                p.ports
                    .iter()
                    .filter(|c| c.protocol == Protocol::Tcp)
                    .map(|c| c.port),
                &opts.extra_tcp_ports,
            );
            spec.udp_ports = union(
                p.ports
                    .iter()
                    .filter(|c| c.protocol == Protocol::Udp)
                    .map(|c| c.port),
                &opts.extra_udp_ports,
            );
            pods.push(topo.add_pod(node, spec)?);
        }
        let dir = tempfile::Builder::new()
            .prefix("bulkhead-cluster")
            .tempdir()
            .context("creating a temporary directory")?;
        let mut cluster = Self {
            topo,
            agent,
            dir,
            opts,
            inv,
            pods,
            nodes,
            generation: 0,
            applied: BTreeMap::new(),
        };
        cluster.install(ApplyMode::Full)?;
        Ok(cluster)
    }

    /// Replaces the policies, labels and namespaces with those of `yaml`
    /// (the same pods, with the same addresses on the same nodes), compiles
    /// and applies every node's whole ruleset at the next generation.
    pub fn apply(&mut self, yaml: &str) -> anyhow::Result<()> {
        self.replace(yaml, ApplyMode::Full)
    }

    /// [`Cluster::apply`], applying deltas from what is applied instead.
    pub fn apply_delta(&mut self, yaml: &str) -> anyhow::Result<()> {
        self.replace(yaml, ApplyMode::Delta)
    }

    fn replace(&mut self, yaml: &str, mode: ApplyMode) -> anyhow::Result<()> {
        let inv = inventory(yaml)?;
        let shape = |inv: &Inventory| -> Vec<(String, Vec<IpAddr>, Option<String>)> {
            inv.pods
                .iter()
                .map(|p| (p.key(), p.ips.clone(), p.node.clone()))
                .collect()
        };
        ensure!(
            shape(&inv) == shape(&self.inv)
                && compile::node_names(&inv) == compile::node_names(&self.inv),
            "apply changes policies, labels and namespaces only: the pods (names, \
             addresses, nodes) and the nodes must stay the same"
        );
        self.inv = inv;
        self.install(mode)
    }

    /// Compiles every node's ruleset at the next generation and applies it.
    fn install(&mut self, mode: ApplyMode) -> anyhow::Result<()> {
        let generation = self.generation + 1;
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in names {
            let rs = compile::compile_node(&self.inv, &name, generation);
            let file = self.write_json(&format!("{name}.g{generation}.json"), &rs)?;
            let args: Vec<OsString> = match (mode, self.applied.get(&name)) {
                (ApplyMode::Delta, Some((old, _))) => {
                    let d = diff::diff(old, &rs);
                    let delta = self.write_json(&format!("{name}.g{generation}.delta.json"), &d)?;
                    vec!["--delta".into(), delta.into()]
                }
                _ => vec!["--ruleset".into(), file.clone().into()],
            };
            let mut all: Vec<OsString> = vec!["apply".into()];
            all.extend(args);
            all.extend(["--links".into(), self.opts.links.arg().into()]);
            let out = self.agent(&name, &all)?;
            ensure!(
                out.status.success(),
                "bulkhead-agent apply on node {name} (generation {generation}) failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            self.applied.insert(name, (rs, file));
        }
        self.generation = generation;
        Ok(())
    }

    /// Writes `value` as JSON to `name` in the cluster's directory.
    pub fn write_json<T: serde::Serialize>(
        &self,
        name: &str,
        value: &T,
    ) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        let text = serde_json::to_string_pretty(value).context("serializing to JSON")?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Runs `bulkhead-agent ARGS` in `node`'s namespace; whatever its exit
    /// status, returns what it did.
    pub fn agent<S: AsRef<std::ffi::OsStr>>(
        &self,
        node: &str,
        args: &[S],
    ) -> anyhow::Result<Output> {
        let ns = self.topo.node_netns(self.node(node)?);
        let mut all: Vec<OsString> = vec![self.agent.clone().into()];
        all.extend(args.iter().map(|a| a.as_ref().to_owned()));
        self.topo.exec(ns, &all)
    }

    /// `bulkhead-agent show -o json` in `node`'s namespace.
    pub fn show(&self, node: &str) -> anyhow::Result<serde_json::Value> {
        let out = self.agent(node, &["show", "-o", "json"])?;
        ensure!(
            out.status.success(),
            "bulkhead-agent show on node {node} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "bulkhead-agent show printed no JSON:\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// The generation `bulkhead-agent show` reports for `node` (`None`: no
    /// table of ours).
    pub fn kernel_generation(&self, node: &str) -> anyhow::Result<Option<u64>> {
        let v = self.show(node)?;
        Ok(match v["kernel"]["state"].as_str() {
            Some("ours") => Some(
                v["kernel"]["generation"]
                    .as_u64()
                    .with_context(|| format!("no generation in {v}"))?,
            ),
            _ => None,
        })
    }

    /// The last generation installed on every node.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The ruleset applied on `node`, and the file holding it.
    pub fn ruleset(&self, node: &str) -> anyhow::Result<(&pb::Ruleset, &Path)> {
        self.applied
            .get(node)
            .map(|(rs, p)| (rs, p.as_path()))
            .with_context(|| format!("nothing applied on node {node}"))
    }

    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inv
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// The cluster's scratch directory (rulesets, deltas).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The node names, sorted.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    /// The lab node of a node name.
    pub fn node(&self, name: &str) -> anyhow::Result<NodeId> {
        self.nodes
            .get(name)
            .copied()
            .with_context(|| format!("no node {name}"))
    }

    /// `namespace/name` of every pod, in inventory (and grid) order.
    pub fn pod_keys(&self) -> Vec<String> {
        self.inv.pods.iter().map(|p| p.key()).collect()
    }

    /// The inventory index of pod `namespace/name` (its row and column).
    pub fn index(&self, key: &str) -> anyhow::Result<usize> {
        let (ns, name) = key
            .split_once('/')
            .with_context(|| format!("{key:?} is not namespace/name"))?;
        self.inv
            .pod_id(ns, name)
            .with_context(|| format!("no pod {key}"))
    }

    /// The lab pod of pod `namespace/name`.
    pub fn pod(&self, key: &str) -> anyhow::Result<PodId> {
        Ok(self.pods[self.index(key)?])
    }

    /// The namespace of pod `namespace/name`.
    pub fn pod_netns(&self, key: &str) -> anyhow::Result<&str> {
        Ok(self.topo.pod_netns(self.pod(key)?))
    }

    /// The namespace of node `name`.
    pub fn node_netns(&self, name: &str) -> anyhow::Result<&str> {
        Ok(self.topo.node_netns(self.node(name)?))
    }

    /// The addresses of pod `namespace/name`, primary first.
    pub fn ips(&self, key: &str) -> anyhow::Result<&[IpAddr]> {
        Ok(&self.inv.pods[self.index(key)?].ips)
    }

    /// The address of pod `key` in family `f`.
    pub fn ip(&self, key: &str, f: Family) -> anyhow::Result<IpAddr> {
        self.ips(key)?
            .iter()
            .find(|ip| Family::of(ip) == f)
            .copied()
            .with_context(|| format!("pod {key} has no {f:?} address"))
    }

    /// The destination address a probe from pod `src` to pod `dst` uses (see
    /// the module documentation), or `None` when the two share no family.
    fn probe_addr(&self, src: usize, dst: usize, family: Option<Family>) -> Option<IpAddr> {
        match family {
            None => match verdict::addresses(&self.inv, Endpoint::Pod(src), Endpoint::Pod(dst)) {
                (Some(s), Some(d)) if s.is_ipv4() == d.is_ipv4() => Some(d),
                _ => None,
            },
            Some(f) => {
                let has = |p: usize| self.inv.pods[p].ips.iter().find(|ip| Family::of(ip) == f);
                has(src).and(has(dst)).copied()
            }
        }
    }

    /// Probes `proto`/`port` from every pod to every pod (itself included),
    /// every source in parallel. `None` where the two share no family.
    pub fn probe_cells(
        &self,
        port: u16,
        proto: Proto,
        family: Option<Family>,
    ) -> anyhow::Result<Vec<Vec<Option<ProbeResult>>>> {
        let n = self.pods.len();
        let timeout = self.opts.probe_timeout;
        thread::scope(|s| {
            let rows: Vec<_> = (0..n)
                .map(|src| {
                    s.spawn(move || -> anyhow::Result<Vec<Option<ProbeResult>>> {
                        let addrs: Vec<Option<IpAddr>> = (0..n)
                            .map(|dst| self.probe_addr(src, dst, family))
                            .collect();
                        let targets: Vec<Target> = addrs
                            .iter()
                            .flatten()
                            .map(|&ip| Target::new(proto, ip, port))
                            .collect();
                        let mut results = self
                            .topo
                            .probe(self.pods[src], &targets, timeout)?
                            .into_iter();
                        Ok(addrs
                            .iter()
                            .map(|a| a.and_then(|_| results.next()))
                            .collect())
                    })
                })
                .collect();
            rows.into_iter()
                .map(|h| h.join().map_err(|_| anyhow!("a prober thread panicked"))?)
                .collect()
        })
    }

    /// Probes `proto`/`port` from every pod to every pod's primary address;
    /// `[src][dst]` in inventory order, like [`verdict::reachability`].
    pub fn probe_matrix(&self, port: u16, proto: Proto) -> anyhow::Result<Vec<Vec<bool>>> {
        let cells = self.probe_cells(port, proto, None)?;
        let keys = self.pod_keys();
        cells
            .into_iter()
            .enumerate()
            .map(|(s, row)| {
                row.into_iter()
                    .enumerate()
                    .map(|(d, c)| {
                        c.map(|r| r.ok).with_context(|| {
                            format!("{} and {} share no address family", keys[s], keys[d])
                        })
                    })
                    .collect()
            })
            .collect()
    }

    /// The query of one cell.
    fn query(
        &self,
        src: usize,
        dst: usize,
        port: u16,
        proto: Proto,
        family: Option<Family>,
    ) -> Query {
        let mut q = Query::new(
            Endpoint::Pod(src),
            Endpoint::Pod(dst),
            protocol(proto),
            port,
        );
        q.family = family;
        q
    }

    /// What the engine says for the cells [`Cluster::probe_cells`] probes:
    /// [`verdict::reachability`] for the primary addresses, or the verdict
    /// of each pair in `family`.
    pub fn engine_cells(
        &self,
        port: u16,
        proto: Proto,
        family: Option<Family>,
    ) -> Vec<Vec<Option<bool>>> {
        let n = self.pods.len();
        let matrix = verdict::reachability(&self.inv, protocol(proto), port);
        (0..n)
            .map(|s| {
                (0..n)
                    .map(|d| {
                        self.probe_addr(s, d, family)?;
                        Some(match family {
                            None => matrix.allowed[s][d],
                            Some(_) => {
                                verdict::allowed(&self.inv, &self.query(s, d, port, proto, family))
                            }
                        })
                    })
                    .collect()
            })
            .collect()
    }

    /// Probes every pod to every pod's primary address and compares with the
    /// engine. An error means the probes could not tell (see the module
    /// documentation), not a mismatch: see [`Comparison::is_match`].
    pub fn compare(&self, port: u16, proto: Proto) -> anyhow::Result<Comparison> {
        self.compare_family(port, proto, None)
    }

    /// [`Cluster::compare`] in one address family (`None`: the primary
    /// addresses), over the pairs of pods that both have one.
    pub fn compare_family(
        &self,
        port: u16,
        proto: Proto,
        family: Option<Family>,
    ) -> anyhow::Result<Comparison> {
        let probed = self.probe_cells(port, proto, family)?;
        let engine = self.engine_cells(port, proto, family);
        let pods = self.pod_keys();
        let mut refused = Vec::new();
        for (s, row) in probed.iter().enumerate() {
            for r in row.iter().flatten() {
                if r.detail.contains("refused") {
                    refused.push(format!("{} -> {r}", pods[s]));
                }
            }
        }
        ensure!(
            refused.is_empty(),
            "these probes were refused: the port is not served there, so the probe \
             cannot tell allowed from denied (serve it: a containerPort, or \
             Options::extra_*_ports):\n{}",
            refused.join("\n")
        );
        let mut explanations = BTreeMap::new();
        for (s, row) in probed.iter().enumerate() {
            for (d, r) in row.iter().enumerate() {
                if let (Some(r), Some(e)) = (r, engine[s][d])
                    && r.ok != e
                {
                    let q = self.query(s, d, port, proto, family);
                    let text = explain::render_text(&explain::explain(&self.inv, &q));
                    explanations.insert((s, d), text);
                }
            }
        }
        let what = format!(
            "{}/{port} ({})",
            protocol(proto),
            match family {
                None => "primary addresses".to_owned(),
                Some(f) => format!("{f:?} addresses"),
            }
        );
        Ok(Comparison {
            what,
            pods,
            probed,
            engine,
            explanations,
        })
    }

    /// [`Cluster::compare`], panicking with both grids and the differing
    /// cells unless the probes give exactly the engine's matrix.
    #[track_caller]
    pub fn assert_matches_engine(&self, port: u16, proto: Proto) -> Comparison {
        self.assert_matches_engine_family(port, proto, None)
    }

    /// [`Cluster::assert_matches_engine`] in one address family.
    #[track_caller]
    pub fn assert_matches_engine_family(
        &self,
        port: u16,
        proto: Proto,
        family: Option<Family>,
    ) -> Comparison {
        let c = self
            .compare_family(port, proto, family)
            .unwrap_or_else(|e| panic!("probing {proto}/{port}: {e:#}"));
        assert!(c.is_match(), "the dataplane disagrees with the engine\n{c}");
        c
    }

    /// Starts `bulkhead-lab ARGS` in pod `key`'s namespace, reading its
    /// output line by line.
    pub fn spawn_lab<S: AsRef<std::ffi::OsStr>>(
        &self,
        key: &str,
        args: &[S],
    ) -> anyhow::Result<Spawned> {
        let ns = self.pod_netns(key)?;
        let mut cmd = Command::new(self.topo.lab_bin());
        cmd.args(args);
        let what = format!(
            "bulkhead-lab {} in pod {key}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let child = self.topo.spawn(ns, cmd)?;
        Ok(Spawned::new(what, child))
    }
}

/// Probes against the engine, cell by cell. Its `Display` shows both grids
/// and, for every differing cell, the probe and the engine's explanation.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// `TCP/80 (primary addresses)`.
    pub what: String,
    /// Row `i` and column `i` name pod `pods[i]`.
    pub pods: Vec<String>,
    /// `None` where the pair shares no family (not probed).
    pub probed: Vec<Vec<Option<ProbeResult>>>,
    pub engine: Vec<Vec<Option<bool>>>,
    /// The engine's explanation of every differing cell.
    explanations: BTreeMap<(usize, usize), String>,
}

impl Comparison {
    /// The probed grid: `Some(answered)`, `None` where not probed.
    pub fn probed_grid(&self) -> Vec<Vec<Option<bool>>> {
        self.probed
            .iter()
            .map(|row| row.iter().map(|r| r.as_ref().map(|r| r.ok)).collect())
            .collect()
    }

    /// The cells `(src, dst)` where the probes and the engine differ.
    pub fn mismatches(&self) -> Vec<(usize, usize)> {
        self.explanations.keys().copied().collect()
    }

    pub fn is_match(&self) -> bool {
        self.explanations.is_empty()
    }

    /// What the probe from pod `src` to pod `dst` (`namespace/name`) said.
    pub fn cell(&self, src: &str, dst: &str) -> Option<bool> {
        let s = self.pods.iter().position(|p| p == src)?;
        let d = self.pods.iter().position(|p| p == dst)?;
        self.probed[s][d].as_ref().map(|r| r.ok)
    }

    /// How many probed cells were answered (`true`) or not (`false`).
    pub fn count(&self, allowed: bool) -> usize {
        self.probed
            .iter()
            .flatten()
            .flatten()
            .filter(|r| r.ok == allowed)
            .count()
    }

    fn grid(
        &self,
        f: &mut fmt::Formatter<'_>,
        title: &str,
        cells: &[Vec<Option<bool>>],
    ) -> fmt::Result {
        let n = self.pods.len();
        let idx_w = n.saturating_sub(1).to_string().len();
        let name_w = self.pods.iter().map(String::len).max().unwrap_or(0);
        writeln!(
            f,
            "{title}, {}: rows are sources, columns destinations; '.' allowed, 'X' denied, '-' not probed",
            self.what
        )?;
        for digit in 0..idx_w {
            write!(f, "{:w$} ", "", w = idx_w + 1 + name_w)?;
            for d in 0..n {
                let s = format!("{d:>idx_w$}");
                write!(f, " {}", &s[digit..=digit])?;
            }
            writeln!(f)?;
        }
        for (s, row) in cells.iter().enumerate() {
            write!(f, "{s:>idx_w$} {:<name_w$} ", self.pods[s])?;
            for c in row {
                let ch = match c {
                    Some(true) => '.',
                    Some(false) => 'X',
                    None => '-',
                };
                write!(f, " {ch}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.grid(f, "probes", &self.probed_grid())?;
        self.grid(f, "engine", &self.engine)?;
        if self.is_match() {
            return writeln!(f, "no differences");
        }
        writeln!(f, "{} differing cells:", self.explanations.len())?;
        for ((s, d), text) in &self.explanations {
            let probe = self.probed[*s][*d]
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            let engine = match self.engine[*s][*d] {
                Some(true) => "allowed",
                Some(false) => "denied",
                None => "-",
            };
            writeln!(
                f,
                "- [{s}][{d}] {} -> {}: probe {probe}; engine says {engine}:",
                self.pods[*s], self.pods[*d]
            )?;
            for line in text.lines() {
                writeln!(f, "    {line}")?;
            }
        }
        Ok(())
    }
}

/// A process started in a namespace whose stdout is read line by line.
/// Dropping it kills it.
#[derive(Debug)]
pub struct Spawned {
    what: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Spawned {
    /// Takes over `child` (stdout and stderr piped).
    pub fn new(what: String, mut child: Child) -> Self {
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut err) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&buf[..n]);
                }
            });
        }
        Self {
            what,
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Every line printed so far.
    pub fn lines(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Waits, until `deadline`, for a line (printed after those already
    /// seen) that satisfies `pred`; returns it.
    pub fn wait_line(
        &mut self,
        deadline: Instant,
        mut pred: impl FnMut(&str) -> bool,
    ) -> anyhow::Result<String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!(
                    "{}: no such line in time; printed:\n{}\nstderr:\n{}",
                    self.what,
                    self.seen.join("\n"),
                    self.stderr()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait();
                    bail!(
                        "{}: ended ({status:?}) without such a line; printed:\n{}\nstderr:\n{}",
                        self.what,
                        self.seen.join("\n"),
                        self.stderr()
                    )
                }
            }
        }
    }

    /// Its exit status, if it ended.
    pub fn try_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("waiting for {}", self.what))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // Gone already is fine.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
