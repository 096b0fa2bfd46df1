//! The lab: a multi-node cluster on one machine, with the real controller
//! and agents, driven by Kubernetes YAML. `bulkhead-lab up|apply|delete|
//! probe|down|demo|bench` are thin wrappers around [`Lab`].
//!
//! ```text
//!  root namespace: bulkhead-lab (never sends a packet from here)
//!  ┌─ fabric netns <prefix>f1 ─────────────────────────────────────────────┐
//!  │ br0 172.31.0.254   bulkhead controller --source dir:<state>/source     │
//!  │                      gRPC (mTLS) 172.31.0.254:7443, HTTP 127.0.0.1:9443│
//!  └──┬─────────────────────────────┬──────────────────────────────────────┘
//!  node netns <prefix>n2         node netns <prefix>n3          ...
//!   172.31.0.1                    172.31.0.2
//!   bulkhead-agent run            bulkhead-agent run  (table inet bulkhead)
//!   ├ pod netns <prefix>p4        ├ pod netns ...
//!   │  10.244.0.1, bulkhead-lab serve on its container ports
//! ```
//!
//! - The state directory (`$BULKHEAD_LAB_DIR`, else
//!   `/run/bulkhead-lab/<name>`) holds `lab.json` (see [`state`]), the
//!   controller's `source/` directory (one file per object, see
//!   [`objects`]), `certs/` (a CA, the controller's certificate with IP SAN
//!   172.31.0.254, one per node) and `logs/`.
//! - Namespaces are named `bhl-<name>-<kind><n>`: unique per lab, found
//!   again by name after a crash, and never mistaken by
//!   [`crate::netns::sweep_stale`] for a dead test process's.
//! - A [`Lab`] made by [`Lab::up`] owns everything: dropping it (even while
//!   unwinding) tears it all down. [`Lab::persist`] hands it over to the
//!   state directory instead (what `bulkhead-lab up` does), and
//!   [`Lab::open`] takes it back (dropping that one leaves the lab running).
//! - Every change ([`Lab::apply`], [`Lab::delete`]) is written to the source
//!   directory atomically and waited for: the controller's source revision
//!   must move past the one before the write, and then every node's agent
//!   must have acked its current generation ([`Status::synced`]).
//! - Talking to the controller's HTTP endpoint (`/status`) and probing
//!   happen on threads moved into the right namespace ([`netio`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail, ensure};
use bulkhead_core::model::{Kind, Object, ObjectId, Protocol};
use serde::Deserialize;

use crate::netns::{
    FABRIC_V4, NodeId, PodId, PodSpec, Topology, netns_command, netns_list, netns_pids,
};

pub mod bench;
pub mod bench_quarantine;
pub mod cli;
pub mod demo;
pub mod flowbench;
pub mod netio;
pub mod objects;
pub mod probe;
pub mod procs;
pub mod quarantine;
pub mod state;

use objects::Item;
pub use probe::{Matrix, Watcher};
pub use state::Bins;
use state::{FORMAT, ProcState, State};

/// The controller's gRPC port, on the fabric's 172.31.0.254.
pub const GRPC_PORT: u16 = 7443;
/// The controller's HTTP port, on 127.0.0.1 inside the fabric namespace.
pub const HTTP_PORT: u16 = 9443;
/// The name in the controller's certificate.
pub const SERVER_NAME: &str = "bulkhead-controller";
/// The port a pod serves when it names no container port.
pub const DEFAULT_PORT: u16 = 80;
/// Where pods without an address get one: 10.244.0.0/16.
pub const POD_NET: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 0);
/// What every lab's namespaces start with (then `<name>-`).
pub const NETNS_PREFIX: &str = "bhl-";
/// Where labs keep their state unless `$BULKHEAD_LAB_DIR` says otherwise.
pub const STATE_ROOT: &str = "/run/bulkhead-lab";

/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(5);
/// How long one HTTP request to the controller may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// `[a-z0-9-]`, at most 40 characters, starting with a letter or digit.
    pub name: String,
    /// The state directory; `None`: `$BULKHEAD_LAB_DIR`, else
    /// `/run/bulkhead-lab/<name>`.
    pub dir: Option<PathBuf>,
    /// How many nodes (`node-1`, ...) when the files name none.
    pub nodes: usize,
    /// Keepalive of the controller and the agents (`--keepalive-ms`).
    pub keepalive_ms: u64,
    /// How long `up` waits for every agent to ack.
    pub up_timeout: Duration,
    /// How long a change may take to be acked by every agent.
    pub sync_timeout: Duration,
    pub bins: Bins,
}

impl LabOptions {
    pub fn new(name: &str, bins: Bins) -> Self {
        Self {
            name: name.to_owned(),
            dir: None,
            nodes: 2,
            keepalive_ms: 1000,
            up_timeout: Duration::from_secs(60),
            sync_timeout: Duration::from_secs(10),
            bins,
        }
    }
}

impl Bins {
    /// For this package's tests: `lab` is
    /// `env!("CARGO_BIN_EXE_bulkhead-lab")`; `bulkhead` and
    /// `bulkhead-agent` are built by cargo (or `$BULKHEAD_BIN`,
    /// `$BULKHEAD_AGENT_BIN`).
    pub fn for_tests(lab: impl Into<PathBuf>) -> anyhow::Result<Self> {
        Ok(Self {
            lab: lab.into(),
            bulkhead: crate::bulkhead_bin().to_path_buf(),
            agent: crate::agent_bin()?.to_path_buf(),
        })
    }

    /// For the `bulkhead-lab` CLI: this executable, and `bulkhead` and
    /// `bulkhead-agent` from `$BULKHEAD_BIN` and `$BULKHEAD_AGENT_BIN`, else
    /// next to this executable (`target/<profile>/`), else built by cargo.
    pub fn beside_current_exe() -> anyhow::Result<Self> {
        let lab = std::env::current_exe().context("finding this executable")?;
        let dir = lab
            .parent()
            .context("this executable has no directory")?
            .to_path_buf();
        let find = |env: &str, name: &str| -> anyhow::Result<PathBuf> {
            if let Some(p) = std::env::var_os(env) {
                return Ok(PathBuf::from(p));
            }
            let beside = dir.join(name);
            if beside.is_file() {
                return Ok(beside);
            }
            Ok(match name {
                "bulkhead" => crate::bulkhead_bin().to_path_buf(),
                _ => crate::agent_bin()?.to_path_buf(),
            })
        };
        Ok(Self {
            bulkhead: find("BULKHEAD_BIN", "bulkhead")?,
            agent: find("BULKHEAD_AGENT_BIN", "bulkhead-agent")?,
            lab,
        })
    }
}

/// An input file: a name for messages and its text.
#[derive(Debug, Clone)]
pub struct Input {
    pub name: String,
    pub text: String,
}

impl Input {
    pub fn new(name: &str, text: &str) -> Self {
        Self {
            name: name.to_owned(),
            text: text.to_owned(),
        }
    }

    /// Files as given; directories: their `*.yaml` and `*.yml`, sorted.
    pub fn read_paths(paths: &[PathBuf]) -> anyhow::Result<Vec<Self>> {
        let mut out = Vec::new();
        for p in paths {
            if p.is_dir() {
                let mut files: Vec<PathBuf> = fs::read_dir(p)
                    .with_context(|| format!("reading directory {}", p.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| {
                        f.is_file() && f.extension().is_some_and(|x| x == "yaml" || x == "yml")
                    })
                    .collect();
                files.sort();
                for f in files {
                    out.push(Self::read_file(&f)?);
                }
            } else {
                out.push(Self::read_file(p)?);
            }
        }
        Ok(out)
    }

    fn read_file(p: &Path) -> anyhow::Result<Self> {
        let text = fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        Ok(Self {
            name: p.display().to_string(),
            text,
        })
    }
}

/// What the controller says on `/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Status {
    pub ready: bool,
    pub generation: u64,
    pub source_revision: u64,
    pub diagnostics: Vec<String>,
    pub nodes: BTreeMap<String, NodeStatus>,
}

/// One node on `/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeStatus {
    pub connected: bool,
    pub agent_version: String,
    pub current_generation: u64,
    pub sent_generation: Option<u64>,
    pub acked_generation: Option<u64>,
    pub acked_at_unix_millis: Option<u64>,
    /// How long the agent's last apply took (its own measure).
    pub last_apply_micros: Option<u64>,
    pub last_error: Option<String>,
    pub nacks: u64,
    pub connects: u64,
    pub snapshots_sent: u64,
    pub deltas_sent: u64,
}

impl NodeStatus {
    /// Its agent acked the generation it should have.
    pub fn synced(&self) -> bool {
        self.current_generation > 0 && self.acked_generation == Some(self.current_generation)
    }
}

impl Status {
    /// Every one of `nodes` acked its current generation.
    pub fn synced<S: AsRef<str>>(&self, nodes: &[S]) -> bool {
        nodes
            .iter()
            .all(|n| self.nodes.get(n.as_ref()).is_some_and(NodeStatus::synced))
    }

    /// For messages: how each of `nodes` stands.
    pub fn describe<S: AsRef<str>>(&self, nodes: &[S]) -> String {
        let mut out = format!(
            "ready {}, generation {}, source revision {}",
            self.ready, self.generation, self.source_revision
        );
        for n in nodes {
            let n = n.as_ref();
            match self.nodes.get(n) {
                None => out.push_str(&format!("\n  {n}: never seen")),
                Some(s) => out.push_str(&format!(
                    "\n  {n}: connected {}, current {}, sent {:?}, acked {:?}, nacks {}, last error {:?}",
                    s.connected,
                    s.current_generation,
                    s.sent_generation,
                    s.acked_generation,
                    s.nacks,
                    s.last_error
                )),
            }
        }
        if !self.diagnostics.is_empty() {
            out.push_str("\n  diagnostics:");
            for d in &self.diagnostics {
                out.push_str(&format!("\n    {d}"));
            }
        }
        out
    }
}

/// A change written to the source directory, not yet waited for.
#[derive(Debug, Clone)]
pub struct Written {
    /// The controller's source revision just before the write (`None`: the
    /// controller did not answer).
    pub revision_before: Option<u64>,
    /// Just before the first file landed.
    pub at: SystemTime,
    /// Whether the controller must see a new revision (some object or
    /// some file's diagnostics changed).
    pub expect_revision: bool,
    /// The files written or removed.
    pub files: Vec<String>,
    /// Things worth telling (objects not found, kinds skipped, ...).
    pub warnings: Vec<String>,
}

/// A change, acked.
#[derive(Debug, Clone)]
pub struct Synced {
    pub written: Written,
    /// The controller's state once every agent acked.
    pub status: Status,
    /// From the write until every agent's ack was seen.
    pub elapsed: Duration,
}

impl Synced {
    /// The longest apply (the agents' own measure, milliseconds) among the
    /// nodes that acked after the write.
    pub fn apply_ms(&self) -> Option<f64> {
        let at = unix_millis(self.written.at);
        self.status
            .nodes
            .values()
            .filter(|n| n.acked_at_unix_millis.is_some_and(|t| t >= at))
            .filter_map(|n| n.last_apply_micros)
            .max()
            .map(|us| us as f64 / 1000.0)
    }

    /// Milliseconds from the write to the last ack of a node that acked
    /// after it (from the controller's `ackedAtUnixMillis`); `None` when no
    /// node had anything new to ack.
    pub fn last_ack_ms(&self) -> Option<u64> {
        let at = unix_millis(self.written.at);
        self.status
            .nodes
            .values()
            .filter_map(|n| n.acked_at_unix_millis)
            .filter(|&t| t >= at)
            .max()
            .map(|t| t - at)
    }
}

/// Milliseconds since the epoch.
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// A pod of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// `namespace/name`.
    pub key: String,
    pub node: String,
    pub netns: String,
    /// Primary first.
    pub ips: Vec<IpAddr>,
    pub tcp_ports: Vec<u16>,
    pub udp_ports: Vec<u16>,
}

/// The state directory of lab `name` (see [`LabOptions::dir`]).
pub fn state_dir(name: &str, dir: Option<&Path>) -> PathBuf {
    match dir {
        Some(d) => d.to_path_buf(),
        None => match std::env::var_os("BULKHEAD_LAB_DIR") {
            Some(d) => PathBuf::from(d),
            None => Path::new(STATE_ROOT).join(name),
        },
    }
}

/// Fails unless this process runs as root (the lab creates namespaces).
pub fn ensure_root() -> anyhow::Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .context("no Uid in /proc/self/status")?;
    ensure!(
        euid == "0",
        "the lab creates network namespaces and nftables tables: run it as root"
    );
    Ok(())
}

/// Checks a lab name: `[a-z0-9-]`, 1 to 40 characters, starting with a
/// letter or digit.
pub fn validate_name(name: &str) -> anyhow::Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= 40
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-'),
        "lab name {name:?}: use 1 to 40 characters of a-z, 0-9 and '-', not starting with '-'"
    );
    Ok(())
}

/// `bhl-<name>-`.
pub fn netns_prefix(name: &str) -> String {
    format!("{NETNS_PREFIX}{name}-")
}

/// Whether namespace `ns` is one of lab `name`'s (`<prefix><f|n|p><n>`).
pub fn is_lab_netns(name: &str, ns: &str) -> bool {
    let Some(rest) = ns.strip_prefix(&netns_prefix(name)) else {
        return false;
    };
    let mut chars = rest.chars();
    matches!(chars.next(), Some('f' | 'n' | 'p'))
        && !chars.as_str().is_empty()
        && chars.as_str().bytes().all(|b| b.is_ascii_digit())
}

/// The namespaces of lab `name` that exist now.
pub fn lab_namespaces(name: &str) -> anyhow::Result<Vec<String>> {
    Ok(netns_list()?
        .into_iter()
        .filter(|ns| is_lab_netns(name, ns))
        .collect())
}

/// The lab. See the module documentation.
#[derive(Debug)]
pub struct Lab {
    dir: PathBuf,
    state: State,
    /// `None` only once torn down.
    topo: Option<Topology>,
    sync_timeout: Duration,
    /// The processes this lab object started: `controller`, `agent/<node>`.
    children: BTreeMap<String, Child>,
    /// Dropping tears everything down.
    owned: bool,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        for e in self.teardown() {
            eprintln!("bulkhead-lab {}: tearing down: {e:#}", self.state.name);
        }
    }
}

impl Lab {
    /// Builds the lab of `inputs`, starts the controller and the agents, and
    /// returns once every agent acked. On failure everything made so far is
    /// torn down, and the error ends with the logs' last lines.
    pub fn up(opts: &LabOptions, inputs: &[Input]) -> anyhow::Result<Self> {
        ensure_root()?;
        validate_name(&opts.name)?;
        let dir = state_dir(&opts.name, opts.dir.as_deref());
        if State::load(&dir)?.is_some() {
            bail!(
                "a lab named {} is up already (its state is in {}): `bulkhead-lab down --name {}` first",
                opts.name,
                dir.display(),
                opts.name
            );
        }
        let leftovers = lab_namespaces(&opts.name)?;
        ensure!(
            leftovers.is_empty(),
            "namespaces of a lab named {} exist ({}): `bulkhead-lab down --name {}` first",
            opts.name,
            leftovers.join(", "),
            opts.name
        );
        ensure!(opts.nodes >= 1, "--nodes must be at least 1");
        for (what, p) in [
            ("bulkhead-lab", &opts.bins.lab),
            ("bulkhead", &opts.bins.bulkhead),
            ("bulkhead-agent", &opts.bins.agent),
        ] {
            ensure!(p.is_file(), "{what} executable {} not found", p.display());
        }
        let mut items = Vec::new();
        let mut warnings = Vec::new();
        for input in inputs {
            let read = objects::read(&input.name, &input.text)?;
            items.extend(read.items);
            warnings.extend(read.warnings);
        }
        for w in &warnings {
            eprintln!("bulkhead-lab: {w}");
        }
        let mut seen = BTreeSet::new();
        for i in &items {
            ensure!(
                seen.insert(i.id()),
                "{} is defined twice in the input",
                objects::describe(&i.id())
            );
        }

        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for sub in ["source", "logs", "certs"] {
            let p = dir.join(sub);
            if p.exists() {
                fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
            }
            fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        }
        let state = State {
            format: FORMAT,
            name: opts.name.clone(),
            prefix: netns_prefix(&opts.name),
            bins: opts.bins.clone(),
            keepalive_ms: opts.keepalive_ms,
            topology: None,
            controller: None,
            agents: BTreeMap::new(),
            cut: BTreeSet::new(),
            next_node: 0,
            next_address: 1,
            complete: false,
        };
        state.save(&dir)?;
        let topo = match Topology::with_prefix(&opts.bins.lab, &state.prefix) {
            Ok(t) => t,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e.context("creating the fabric"));
            }
        };
        let mut lab = Lab {
            dir,
            state,
            topo: Some(topo),
            sync_timeout: opts.sync_timeout,
            children: BTreeMap::new(),
            owned: true,
        };
        // From here on an error drops `lab`, which tears everything down.
        lab.save()?;
        lab.build(opts, &items)
            .with_context(|| format!("bringing up lab {}", opts.name))?;
        lab.state.complete = true;
        lab.save()?;
        Ok(lab)
    }

    fn build(&mut self, opts: &LabOptions, items: &[Item]) -> anyhow::Result<()> {
        // Nodes: Node objects, else the pods' nodeNames, else node-1..N.
        let mut names: BTreeSet<String> = BTreeSet::new();
        for i in items {
            match &i.object {
                Object::Node(n) => {
                    names.insert(n.name.clone());
                }
                Object::Pod(p) => names.extend(p.node.clone()),
                _ => {}
            }
        }
        if names.is_empty() {
            names.extend((1..=opts.nodes).map(|i| format!("node-{i}")));
        }
        for name in &names {
            self.topo_mut()?
                .add_node(name)
                .with_context(|| format!("adding node {name}"))?;
            self.save()?;
        }

        // Addresses the files give are taken before any is handed out.
        let mut used: BTreeSet<IpAddr> = BTreeSet::new();
        for i in items {
            if let Object::Pod(p) = &i.object {
                used.extend(p.ips.iter().copied());
            }
        }
        for i in items {
            if let Object::Pod(_) = &i.object {
                self.create_pod(i, &mut used)?;
                self.save()?;
            }
        }

        // The source: the objects as the lab made them.
        let source = self.source_dir();
        let node_raw: BTreeMap<String, &Item> = items
            .iter()
            .filter_map(|i| match &i.object {
                Object::Node(n) => Some((n.name.clone(), i)),
                _ => None,
            })
            .collect();
        for name in &names {
            let raw = objects::lab_node(
                node_raw.get(name).map(|i| &i.raw),
                name,
                &self.node_addresses(name)?,
            );
            let id = ObjectId {
                kind: Kind::Node,
                namespace: None,
                name: name.clone(),
            };
            objects::write_atomic(&source, &objects::file_name(&id), &objects::render(&raw)?)?;
        }
        for i in items {
            let raw = match &i.object {
                Object::Node(_) => continue,
                Object::Pod(_) => self.placed(i)?,
                _ => i.raw.clone(),
            };
            objects::write_atomic(&source, &i.file_name(), &objects::render(&raw)?)?;
        }

        self.make_certs(&names)?;
        self.start_controller()?;
        for name in &names {
            self.start_agent(name)?;
        }
        let deadline = Instant::now() + opts.up_timeout;
        self.wait_until(
            deadline,
            "every agent to ack its first ruleset",
            |s, nodes| {
                s.ready
                    && s.synced(nodes)
                    && nodes
                        .iter()
                        .all(|n| s.nodes.get(n).is_some_and(|x| x.connected))
            },
        )?;
        Ok(())
    }

    /// Hands the lab over to its state directory: everything keeps running
    /// after this process ends; [`Lab::open`] finds it again.
    pub fn persist(mut self) -> anyhow::Result<PathBuf> {
        self.save()?;
        self.owned = false;
        if let Some(t) = self.topo.as_mut() {
            t.disarm();
        }
        // Dropping a `Child` neither kills nor waits for it.
        self.children.clear();
        Ok(self.dir.clone())
    }

    /// The running lab `name` (state in `dir`, see [`state_dir`]). Dropping
    /// the value leaves the lab running.
    pub fn open(name: &str, dir: Option<&Path>) -> anyhow::Result<Self> {
        validate_name(name)?;
        let dir = state_dir(name, dir);
        let state = State::load(&dir)?.with_context(|| {
            format!(
                "no lab named {name} is up (no {})",
                State::path(&dir).display()
            )
        })?;
        ensure!(
            state.name == name,
            "{} is the state of lab {}, not {name}",
            dir.display(),
            state.name
        );
        ensure!(
            state.complete,
            "lab {name} did not finish coming up: `bulkhead-lab down --name {name}`, then up again"
        );
        let parts = state
            .topology
            .clone()
            .context("the lab state has no topology")?;
        let topo = Topology::adopt(&state.bins.lab, parts)
            .with_context(|| format!("lab {name} is broken: `bulkhead-lab down --name {name}`"))?;
        Ok(Lab {
            dir,
            state,
            topo: Some(topo),
            sync_timeout: Duration::from_secs(10),
            children: BTreeMap::new(),
            owned: false,
        })
    }

    /// Sets how long [`Lab::apply`] and friends wait for the acks.
    pub fn set_sync_timeout(&mut self, t: Duration) {
        self.sync_timeout = t;
    }

    /// Tears the lab down and reports what failed.
    pub fn down(mut self) -> anyhow::Result<()> {
        let errors = self.teardown();
        self.owned = false;
        ensure!(
            errors.is_empty(),
            "tearing down lab {}:\n{}",
            self.state.name,
            errors
                .iter()
                .map(|e| format!("- {e:#}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        Ok(())
    }

    fn teardown(&mut self) -> Vec<anyhow::Error> {
        let mut errors = Vec::new();
        for (what, mut child) in std::mem::take(&mut self.children) {
            let _ = child.kill();
            if let Err(e) = child.wait() {
                errors.push(anyhow!("waiting for {what}: {e}"));
            }
        }
        if let Some(t) = self.topo.take()
            && let Err(e) = t.destroy()
        {
            errors.push(e);
        }
        match down_named(&self.state.name, Some(&self.dir)) {
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
        errors
    }

    fn save(&mut self) -> anyhow::Result<()> {
        if let Some(t) = &self.topo {
            self.state.topology = Some(t.parts());
        }
        self.state.save(&self.dir)
    }

    fn topo(&self) -> anyhow::Result<&Topology> {
        self.topo.as_ref().context("the lab was torn down")
    }

    fn topo_mut(&mut self) -> anyhow::Result<&mut Topology> {
        self.topo.as_mut().context("the lab was torn down")
    }

    // ------------------------------------------------------------ facts ----

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The controller's source directory.
    pub fn source_dir(&self) -> PathBuf {
        self.dir.join("source")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    pub fn certs_dir(&self) -> PathBuf {
        self.dir.join("certs")
    }

    pub fn bins(&self) -> &Bins {
        &self.state.bins
    }

    pub fn fabric_netns(&self) -> anyhow::Result<String> {
        Ok(self.topo()?.fabric_netns().to_owned())
    }

    /// The nodes, in order of creation (sorted by name).
    pub fn node_names(&self) -> Vec<String> {
        self.topo
            .as_ref()
            .map(|t| t.nodes().map(|n| t.node_name(n).to_owned()).collect())
            .unwrap_or_default()
    }

    fn node_id(&self, name: &str) -> anyhow::Result<NodeId> {
        let t = self.topo()?;
        t.nodes()
            .find(|&n| t.node_name(n) == name)
            .with_context(|| format!("lab {} has no node {name}", self.state.name))
    }

    pub fn node_netns(&self, name: &str) -> anyhow::Result<String> {
        let id = self.node_id(name)?;
        Ok(self.topo()?.node_netns(id).to_owned())
    }

    /// The node's underlay addresses (`172.31.0.<n>`, `fd31::<n>`).
    pub fn node_addresses(&self, name: &str) -> anyhow::Result<Vec<IpAddr>> {
        let id = self.node_id(name)?;
        let t = self.topo()?;
        Ok(vec![
            t.node_underlay(id).into(),
            t.node_underlay_v6(id).into(),
        ])
    }

    /// Every pod, sorted by namespace and name.
    pub fn pods(&self) -> Vec<PodInfo> {
        let Some(t) = &self.topo else {
            return Vec::new();
        };
        let mut pods: Vec<PodInfo> = t
            .pods()
            .map(|p| {
                let spec = t.pod_spec(p);
                PodInfo {
                    key: spec.name.clone(),
                    node: t.node_name(t.pod_node(p)).to_owned(),
                    netns: t.pod_netns(p).to_owned(),
                    ips: spec.ips(),
                    tcp_ports: spec.tcp_ports.clone(),
                    udp_ports: spec.udp_ports.clone(),
                }
            })
            .collect();
        pods.sort_by(|a, b| split_key(&a.key).cmp(&split_key(&b.key)));
        pods
    }

    /// The pod `namespace/name`.
    pub fn pod(&self, key: &str) -> anyhow::Result<PodInfo> {
        self.pods()
            .into_iter()
            .find(|p| p.key == key)
            .with_context(|| format!("lab {} has no pod {key}", self.state.name))
    }

    fn pod_id(&self, key: &str) -> anyhow::Result<Option<PodId>> {
        let t = self.topo()?;
        Ok(t.pods().find(|&p| t.pod_spec(p).name == key))
    }

    // ------------------------------------------------------------- pods ----

    /// Creates pod `item` in the topology: its node (spec.nodeName, else
    /// the next node round-robin), its addresses (from the file, else the
    /// next free one in 10.244.0.0/16), its servers (its TCP and UDP
    /// container ports; TCP 80 if it names none).
    fn create_pod(&mut self, item: &Item, used: &mut BTreeSet<IpAddr>) -> anyhow::Result<()> {
        let Object::Pod(p) = &item.object else {
            bail!("{} is not a pod", objects::describe(&item.id()));
        };
        let key = p.key();
        ensure!(
            !p.host_network,
            "pod {key}: host-network pods are not supported by the lab"
        );
        let nodes = self.node_names();
        ensure!(!nodes.is_empty(), "the lab has no node");
        let node = match &p.node {
            Some(n) => {
                ensure!(
                    nodes.contains(n),
                    "pod {key}: spec.nodeName {n} is not a node of the lab ({})",
                    nodes.join(", ")
                );
                n.clone()
            }
            None => {
                let n = nodes[self.state.next_node % nodes.len()].clone();
                self.state.next_node += 1;
                n
            }
        };
        let mut spec = PodSpec {
            name: key.clone(),
            ..PodSpec::default()
        };
        for ip in &p.ips {
            match ip {
                IpAddr::V4(v4) if spec.ipv4.is_none() => spec.ipv4 = Some(*v4),
                IpAddr::V6(v6) if spec.ipv6.is_none() => spec.ipv6 = Some(*v6),
                _ => bail!("pod {key}: the lab gives a pod at most one address per family"),
            }
        }
        if p.ips.is_empty() {
            spec.ipv4 = Some(self.next_address(used)?);
        }
        used.extend(spec.ips());
        let ports = |proto: Protocol| -> Vec<u16> {
            let set: BTreeSet<u16> = p
                .ports
                .iter()
                .filter(|c| c.protocol == proto)
                .map(|c| c.port)
                .collect();
            set.into_iter().collect()
        };
        spec.tcp_ports = ports(Protocol::Tcp);
        spec.udp_ports = ports(Protocol::Udp);
        if spec.tcp_ports.is_empty() && spec.udp_ports.is_empty() {
            spec.tcp_ports = vec![DEFAULT_PORT];
        }
        let node_id = self.node_id(&node)?;
        self.topo_mut()?
            .add_pod(node_id, spec)
            .with_context(|| format!("creating pod {key} on {node}"))?;
        Ok(())
    }

    fn next_address(&mut self, used: &BTreeSet<IpAddr>) -> anyhow::Result<Ipv4Addr> {
        let base = u32::from(POD_NET);
        while self.state.next_address < 0xffff {
            let a = self.state.next_address;
            self.state.next_address += 1;
            // Skip .0 and .255: legal for /32s, but confusing to read.
            if a & 0xff == 0 || a & 0xff == 0xff {
                continue;
            }
            let ip = Ipv4Addr::from(base + a);
            if !used.contains(&IpAddr::V4(ip)) {
                return Ok(ip);
            }
        }
        bail!("10.244.0.0/16 is exhausted")
    }

    /// Pod `item` as the lab runs it (node and addresses filled in).
    fn placed(&self, item: &Item) -> anyhow::Result<serde_yaml::Value> {
        let Object::Pod(p) = &item.object else {
            bail!("{} is not a pod", objects::describe(&item.id()));
        };
        let info = self.pod(&p.key())?;
        Ok(objects::placed_pod(&item.raw, &info.node, &info.ips))
    }

    // -------------------------------------------------------- processes ----

    fn run_bulkhead(&self, args: &[String]) -> anyhow::Result<String> {
        let out = Command::new(&self.state.bins.bulkhead)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running bulkhead {}", args.join(" ")))?;
        ensure!(
            out.status.success(),
            "bulkhead {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn make_certs(&self, nodes: &BTreeSet<String>) -> anyhow::Result<()> {
        let dir = self.certs_dir().display().to_string();
        let s = |x: &str| x.to_owned();
        self.run_bulkhead(&[s("certs"), s("init"), s("--dir"), dir.clone()])?;
        self.run_bulkhead(&[
            s("certs"),
            s("issue"),
            s("--dir"),
            dir.clone(),
            s("--server"),
            s(SERVER_NAME),
            s("--ip"),
            FABRIC_V4.to_string(),
        ])?;
        for n in nodes {
            self.run_bulkhead(&[
                s("certs"),
                s("issue"),
                s("--dir"),
                dir.clone(),
                s("--node"),
                n.clone(),
            ])?;
        }
        Ok(())
    }

    /// The controller's `--state-dir` (its learned flow graph, `flows.json`).
    pub fn controller_state_dir(&self) -> PathBuf {
        self.dir().join("controller")
    }

    /// `GET /flows` from the controller: the learned service graph.
    pub fn flows(&self) -> anyhow::Result<serde_json::Value> {
        let fabric = self.fabric_netns()?;
        let r = netio::http_get(
            &fabric,
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), HTTP_PORT),
            "/flows",
            HTTP_TIMEOUT,
        )?;
        ensure!(r.status == 200, "/flows answered {}: {}", r.status, r.body);
        serde_json::from_str(&r.body).with_context(|| format!("/flows is not JSON: {}", r.body))
    }

    pub fn controller_log(&self) -> PathBuf {
        self.logs_dir().join("controller.log")
    }

    pub fn agent_log(&self, node: &str) -> PathBuf {
        self.logs_dir().join(format!("agent-{node}.log"))
    }

    fn controller_marker(&self) -> String {
        format!("--source dir:{}", self.source_dir().display())
    }

    fn agent_marker(&self, node: &str) -> String {
        format!("--tls-dir {} --node {node} ", self.certs_dir().display())
    }

    /// Starts the controller in the fabric namespace (it must not run).
    pub fn start_controller(&mut self) -> anyhow::Result<()> {
        ensure!(
            self.controller_pid().is_none(),
            "the controller of lab {} runs already",
            self.state.name
        );
        let args = vec![
            "controller".to_owned(),
            "--source".to_owned(),
            format!("dir:{}", self.source_dir().display()),
            "--listen".to_owned(),
            SocketAddr::new(FABRIC_V4.into(), GRPC_PORT).to_string(),
            "--http".to_owned(),
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), HTTP_PORT).to_string(),
            "--tls-dir".to_owned(),
            self.certs_dir().display().to_string(),
            "--server-name".to_owned(),
            SERVER_NAME.to_owned(),
            "--keepalive-ms".to_owned(),
            self.state.keepalive_ms.to_string(),
            "--state-dir".to_owned(),
            self.controller_state_dir().display().to_string(),
            "--flow-log".to_owned(),
            self.logs_dir().join("flows.log").display().to_string(),
        ];
        let fabric = self.fabric_netns()?;
        let child = procs::spawn_detached(
            &fabric,
            &self.state.bins.bulkhead,
            &args,
            &self.controller_log(),
        )?;
        self.state.controller = Some(ProcState {
            pid: child.id(),
            marker: self.controller_marker(),
        });
        self.children.insert("controller".to_owned(), child);
        self.save()
    }

    /// Starts node `node`'s agent in its namespace (it must not run).
    pub fn start_agent(&mut self, node: &str) -> anyhow::Result<()> {
        ensure!(
            self.agent_pid(node).is_none(),
            "the agent of node {node} runs already"
        );
        let ns = self.node_netns(node)?;
        // `--tls-dir` and `--node` stay together: that is the marker.
        let args = vec![
            "run".to_owned(),
            "--controller".to_owned(),
            format!("https://{}", SocketAddr::new(FABRIC_V4.into(), GRPC_PORT)),
            "--tls-dir".to_owned(),
            self.certs_dir().display().to_string(),
            "--node".to_owned(),
            node.to_owned(),
            "--server-name".to_owned(),
            SERVER_NAME.to_owned(),
            "--links".to_owned(),
            "auto".to_owned(),
            "--keepalive-ms".to_owned(),
            self.state.keepalive_ms.to_string(),
        ];
        let child =
            procs::spawn_detached(&ns, &self.state.bins.agent, &args, &self.agent_log(node))?;
        self.state.agents.insert(
            node.to_owned(),
            ProcState {
                pid: child.id(),
                marker: self.agent_marker(node),
            },
        );
        self.children.insert(format!("agent/{node}"), child);
        self.save()
    }

    /// The controller's pid, if it runs.
    pub fn controller_pid(&self) -> Option<u32> {
        self.state
            .controller
            .as_ref()
            .filter(|p| procs::alive(p.pid, &p.marker))
            .map(|p| p.pid)
    }

    /// Node `node`'s agent's pid, if it runs.
    pub fn agent_pid(&self, node: &str) -> Option<u32> {
        self.state
            .agents
            .get(node)
            .filter(|p| procs::alive(p.pid, &p.marker))
            .map(|p| p.pid)
    }

    /// Kills the controller with SIGKILL (a crash: nothing is cleaned up).
    pub fn kill_controller(&mut self) -> anyhow::Result<()> {
        if let Some(p) = self.state.controller.take() {
            procs::kill(p.pid, &p.marker)?;
        }
        if let Some(mut c) = self.children.remove("controller") {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.save()
    }

    /// Kills node `node`'s agent with SIGKILL (its table stays in force).
    pub fn kill_agent(&mut self, node: &str) -> anyhow::Result<()> {
        if let Some(p) = self.state.agents.remove(node) {
            procs::kill(p.pid, &p.marker)?;
        }
        if let Some(mut c) = self.children.remove(&format!("agent/{node}")) {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.save()
    }

    /// Peak resident memory (VmHWM, KiB) of the controller and each agent
    /// (`controller`, `agent <node>`), of those running.
    pub fn peak_memory(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        if let Some(kib) = self.controller_pid().and_then(procs::peak_rss_kib) {
            out.push(("controller".to_owned(), kib));
        }
        for n in self.node_names() {
            if let Some(kib) = self.agent_pid(&n).and_then(procs::peak_rss_kib) {
                out.push((format!("agent {n}"), kib));
            }
        }
        out
    }

    /// The last `n` lines of every log, for error messages.
    pub fn log_tails(&self, n: usize) -> String {
        let mut out = String::new();
        let mut logs = vec![self.controller_log()];
        logs.extend(self.node_names().iter().map(|n| self.agent_log(n)));
        for l in logs {
            if l.exists() {
                out.push_str(&format!(
                    "--- {} (last {n} lines) ---\n{}\n",
                    l.display(),
                    procs::tail(&l, n)
                ));
            }
        }
        out
    }

    /// `bulkhead-agent show -o json` in node `node`'s namespace.
    pub fn agent_show(&self, node: &str) -> anyhow::Result<serde_json::Value> {
        let ns = self.node_netns(node)?;
        let out = netns_command(&ns, &self.state.bins.agent)
            .args(["show", "-o", "json"])
            .stdin(Stdio::null())
            .output()
            .context("running bulkhead-agent show")?;
        ensure!(
            out.status.success(),
            "bulkhead-agent show on node {node} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
        serde_json::from_slice(&out.stdout).context("bulkhead-agent show printed no JSON")
    }

    /// The generation of the table in node `node`'s kernel (`None`: no
    /// table of ours).
    pub fn kernel_generation(&self, node: &str) -> anyhow::Result<Option<u64>> {
        let v = self.agent_show(node)?;
        Ok(match v["kernel"]["state"].as_str() {
            Some("ours") => v["kernel"]["generation"].as_u64(),
            _ => None,
        })
    }

    // ---------------------------------------------------- the controller ----

    /// `GET /status` from the controller (inside the fabric namespace).
    pub fn status(&self) -> anyhow::Result<Status> {
        let fabric = self.fabric_netns()?;
        let r = netio::http_get(
            &fabric,
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), HTTP_PORT),
            "/status",
            HTTP_TIMEOUT,
        )?;
        ensure!(r.status == 200, "/status answered {}: {}", r.status, r.body);
        serde_json::from_str(&r.body).with_context(|| format!("/status is not JSON: {}", r.body))
    }

    /// Polls `/status` until `done(status, nodes)` holds for the lab's nodes
    /// (not those cut off, see [`Lab::cut_link`]), or fails at `deadline`
    /// with the last status and the logs' last lines. Fails at once if the
    /// controller is not running.
    pub fn wait_until(
        &self,
        deadline: Instant,
        what: &str,
        done: impl FnMut(&Status, &[String]) -> bool,
    ) -> anyhow::Result<Status> {
        self.wait_until_on(&self.reachable_nodes(), deadline, what, done)
    }

    /// The nodes whose link to the controller is not cut.
    pub fn reachable_nodes(&self) -> Vec<String> {
        self.node_names()
            .into_iter()
            .filter(|n| !self.state.cut.contains(n))
            .collect()
    }

    /// [`Lab::wait_until`] for the given nodes.
    pub fn wait_until_on(
        &self,
        nodes: &[String],
        deadline: Instant,
        what: &str,
        mut done: impl FnMut(&Status, &[String]) -> bool,
    ) -> anyhow::Result<Status> {
        loop {
            if self.controller_pid().is_none() {
                bail!(
                    "waiting for {what}: the controller is not running\n{}",
                    self.log_tails(20)
                );
            }
            let s = self.status();
            if let Ok(s) = &s
                && done(s, nodes)
            {
                return Ok(s.clone());
            }
            if Instant::now() >= deadline {
                let last = match s {
                    Ok(s) => s.describe(nodes),
                    Err(e) => format!("{e:#}"),
                };
                bail!(
                    "timed out waiting for {what}; the controller says: {last}\n{}",
                    self.log_tails(20)
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Waits until the controller is ready and every node (but those cut
    /// off) acked its current generation.
    pub fn wait_synced(&self) -> anyhow::Result<Status> {
        let deadline = Instant::now() + self.sync_timeout;
        self.wait_until(deadline, "every agent to ack", |s, nodes| {
            s.ready && s.synced(nodes)
        })
    }

    /// Waits for the change `w` to be acked by every node (but those cut off).
    pub fn wait_written(&self, w: Written) -> anyhow::Result<Synced> {
        self.wait_written_on(w, &self.reachable_nodes())
    }

    /// Waits for the change `w` to be read by the controller and acked by
    /// the agents of `nodes`.
    pub fn wait_written_on(&self, w: Written, nodes: &[String]) -> anyhow::Result<Synced> {
        let deadline = Instant::now() + self.sync_timeout;
        let before = w.revision_before;
        let expect = w.expect_revision;
        let status = self.wait_until_on(
            nodes,
            deadline,
            &format!(
                "the controller to read and every agent to ack {:?}",
                w.files
            ),
            |s, nodes| {
                let read = match (expect, before) {
                    (true, Some(r)) => s.source_revision > r,
                    _ => true,
                };
                s.ready && read && s.synced(nodes)
            },
        )?;
        let elapsed = w.at.elapsed().unwrap_or_default();
        Ok(Synced {
            written: w,
            status,
            elapsed,
        })
    }

    // ------------------------------------------------------- changes ----

    /// Puts the objects of `inputs` into the source and waits until every
    /// agent acked: a Pod, Namespace or Node that exists gets the new labels
    /// (a pod keeps its namespace, node, addresses and servers); a new pod is
    /// created; policies are written as given.
    pub fn apply(&mut self, inputs: &[Input]) -> anyhow::Result<Synced> {
        let w = self.write(inputs)?;
        self.wait_written(w)
    }

    /// [`Lab::apply`] without waiting.
    pub fn write(&mut self, inputs: &[Input]) -> anyhow::Result<Written> {
        let mut items = Vec::new();
        let mut warnings = Vec::new();
        for input in inputs {
            let read = objects::read(&input.name, &input.text)?;
            items.extend(read.items);
            warnings.extend(read.warnings);
        }
        let source = self.source_dir();
        let mut used: BTreeSet<IpAddr> = self.pods().iter().flat_map(|p| p.ips.clone()).collect();
        for i in &items {
            if let Object::Pod(p) = &i.object
                && self.pod_id(&p.key())?.is_none()
            {
                used.extend(p.ips.iter().copied());
            }
        }
        let mut files: Vec<(String, String)> = Vec::new();
        let mut expect = false;
        for i in &items {
            let name = i.file_name();
            let existing = objects::read_source(&source, &name)?;
            let raw = match (&i.object, &existing) {
                (Object::Pod(p), _) if self.pod_id(&p.key())?.is_some() => {
                    let old = existing.as_ref().with_context(|| {
                        format!("pod {} runs but has no file in the source", p.key())
                    })?;
                    objects::with_labels_of(&old.raw, &i.raw)
                }
                (Object::Pod(_), _) => {
                    self.create_pod(i, &mut used)?;
                    self.save()?;
                    self.placed(i)?
                }
                (Object::Namespace(_), Some(old)) => objects::with_labels_of(&old.raw, &i.raw),
                (Object::Node(_), Some(old)) => objects::with_labels_of(&old.raw, &i.raw),
                (Object::Node(n), None) => {
                    bail!("the lab cannot add node {} after it is up", n.name)
                }
                _ => i.raw.clone(),
            };
            let text = objects::render(&raw)?;
            let old_text = fs::read_to_string(source.join(&name)).ok();
            if old_text.as_deref() == Some(text.as_str()) {
                continue;
            }
            let new_object = objects::read(&name, &text)?
                .items
                .into_iter()
                .next()
                .map(|i| i.object);
            if existing.map(|e| e.object) != new_object {
                expect = true;
            }
            files.push((name, text));
        }
        let mut w = self.commit(files.iter().map(|(n, t)| (n.clone(), Some(t.clone()))))?;
        w.expect_revision = expect;
        w.warnings = warnings;
        Ok(w)
    }

    /// Removes the objects of `inputs` (policies; pods with their
    /// namespaces and servers; namespaces with their pods and policies)
    /// and waits until every agent acked.
    pub fn delete(&mut self, inputs: &[Input]) -> anyhow::Result<Synced> {
        let mut items = Vec::new();
        for input in inputs {
            items.extend(objects::read(&input.name, &input.text)?.items);
        }
        let source = self.source_dir();
        let mut files: BTreeSet<String> = BTreeSet::new();
        let mut pods: BTreeSet<String> = BTreeSet::new();
        let mut warnings = Vec::new();
        for i in &items {
            let id = i.id();
            match &i.object {
                Object::Node(n) => bail!("the lab cannot delete node {}", n.name),
                Object::Pod(p) => {
                    pods.insert(p.key());
                }
                Object::Namespace(ns) => {
                    for p in self.pods() {
                        if split_key(&p.key).0 == ns.name {
                            pods.insert(p.key);
                        }
                    }
                    let policy_prefix = format!("networkpolicy.{}.", ns.name);
                    for e in fs::read_dir(&source)
                        .with_context(|| format!("reading {}", source.display()))?
                    {
                        let name = e?.file_name().to_string_lossy().into_owned();
                        if name.starts_with(&policy_prefix) {
                            files.insert(name);
                        }
                    }
                }
                _ => {} // policies, settings: their own file, removed below
            }
            let name = i.file_name();
            if source.join(&name).exists() {
                files.insert(name);
            } else if !matches!(i.object, Object::Pod(_)) {
                warnings.push(format!("{} is not in the lab", objects::describe(&id)));
            }
        }
        for p in &pods {
            let id = ObjectId {
                kind: Kind::Pod,
                namespace: Some(split_key(p).0.to_owned()),
                name: split_key(p).1.to_owned(),
            };
            let name = objects::file_name(&id);
            if source.join(&name).exists() {
                files.insert(name);
            }
            if self.pod_id(p)?.is_none() {
                warnings.push(format!("pod {p} is not in the lab"));
            }
        }
        let mut w = self.commit(files.into_iter().map(|n| (n, None)))?;
        w.expect_revision = !w.files.is_empty();
        w.warnings = warnings;
        let synced = self.wait_written(w);
        // The pods go once no ruleset names them any more (or the wait failed).
        for p in &pods {
            if let Some(id) = self.pod_id(p)? {
                self.topo_mut()?.remove_pod(id)?;
                self.save()?;
            }
        }
        synced
    }

    /// Writes `text` into the source directory as file `name`, as it is:
    /// no validation (to see what the controller makes of bad input).
    pub fn write_raw(&mut self, name: &str, text: &str) -> anyhow::Result<Written> {
        ensure!(
            !name.contains('/') && !name.starts_with('.'),
            "{name:?}: a plain file name, please"
        );
        let mut w = self.commit([(name.to_owned(), Some(text.to_owned()))])?;
        w.expect_revision = true;
        Ok(w)
    }

    /// Removes file `name` from the source directory.
    pub fn remove_raw(&mut self, name: &str) -> anyhow::Result<Written> {
        let mut w = self.commit([(name.to_owned(), None)])?;
        w.expect_revision = true;
        Ok(w)
    }

    /// Writes (`Some`) or removes (`None`) source files: every new content
    /// is staged first, then the renames and removals happen back to back.
    fn commit(
        &mut self,
        files: impl IntoIterator<Item = (String, Option<String>)>,
    ) -> anyhow::Result<Written> {
        let source = self.source_dir();
        let files: Vec<(String, Option<String>)> = files.into_iter().collect();
        for (name, text) in &files {
            if let Some(text) = text {
                objects::stage(&source, name, text)?;
            }
        }
        let revision_before = self.status().ok().map(|s| s.source_revision);
        let at = SystemTime::now();
        for (name, text) in &files {
            match text {
                Some(_) => objects::commit(&source, name)?,
                None => match fs::remove_file(source.join(name)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).with_context(|| format!("removing {name}")),
                },
            }
        }
        Ok(Written {
            revision_before,
            at,
            expect_revision: !files.is_empty(),
            files: files.into_iter().map(|(n, _)| n).collect(),
            warnings: Vec::new(),
        })
    }

    // ------------------------------------------------------ the links ----

    /// Cuts node `node` off the controller: in the fabric namespace, drops
    /// its packets to the gRPC port and the controller's packets to it.
    /// Pod traffic (bridged, never to the fabric's own address) is not
    /// touched. [`Lab::wait_synced`] and friends leave the node out.
    pub fn cut_link(&mut self, node: &str) -> anyhow::Result<()> {
        self.node_id(node)?;
        self.state.cut.insert(node.to_owned());
        self.sync_cuts()?;
        self.save()
    }

    /// Undoes [`Lab::cut_link`].
    pub fn restore_link(&mut self, node: &str) -> anyhow::Result<()> {
        self.state.cut.remove(node);
        self.sync_cuts()?;
        self.save()
    }

    /// Makes table `inet bulkhead-lab` of the fabric drop exactly the cut
    /// nodes' control traffic, in one transaction.
    fn sync_cuts(&self) -> anyhow::Result<()> {
        let mut addrs = Vec::new();
        for n in &self.state.cut {
            let id = self.node_id(n)?;
            addrs.push(self.topo()?.node_underlay(id).to_string());
        }
        let mut script =
            String::from("table inet bulkhead-lab {}\ndelete table inet bulkhead-lab\n");
        if !addrs.is_empty() {
            let set = addrs.join(", ");
            script.push_str(&format!(
                "table inet bulkhead-lab {{\n\
                 \tchain input {{ type filter hook input priority 0; policy accept;\n\
                 \t\tip saddr {{ {set} }} tcp dport {GRPC_PORT} drop comment \"lab: link cut\"\n\t}}\n\
                 \tchain output {{ type filter hook output priority 0; policy accept;\n\
                 \t\tip daddr {{ {set} }} tcp sport {GRPC_PORT} drop comment \"lab: link cut\"\n\t}}\n\
                 }}\n"
            ));
        }
        let fabric = self.fabric_netns()?;
        let mut child = netns_command(&fabric, "nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft (is nftables installed?)")?;
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().context("no stdin pipe")?;
            stdin
                .write_all(script.as_bytes())
                .context("writing to nft")?;
        }
        let out = child.wait_with_output().context("waiting for nft")?;
        ensure!(
            out.status.success(),
            "nft in {fabric} failed ({}): {}\n{script}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
        Ok(())
    }

    // ---------------------------------------------------- the verdicts ----

    /// `bulkhead reachability` on the lab's source directory.
    pub fn reachability(&self, port: u16, protocol: &str) -> anyhow::Result<Matrix> {
        let out = self.run_bulkhead(&[
            "reachability".to_owned(),
            "-f".to_owned(),
            self.source_dir().display().to_string(),
            "--port".to_owned(),
            port.to_string(),
            "--protocol".to_owned(),
            protocol.to_owned(),
            "-o".to_owned(),
            "json".to_owned(),
        ])?;
        Matrix::from_json(&out)
    }

    /// Real connections from every pod to every pod (see [`probe`]).
    pub fn probe(&self, port: u16, protocol: &str, timeout: Duration) -> anyhow::Result<Matrix> {
        probe::probe_matrix(self, port, protocol, timeout)
    }
}

/// `(namespace, name)` of `namespace/name`.
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

/// What [`down_named`] did.
#[derive(Debug, Clone, Default)]
pub struct DownReport {
    pub killed: Vec<u32>,
    pub namespaces: Vec<String>,
    pub removed_dir: Option<PathBuf>,
}

impl fmt::Display for DownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.killed.is_empty() && self.namespaces.is_empty() && self.removed_dir.is_none() {
            return write!(f, "nothing to remove");
        }
        write!(
            f,
            "stopped {} processes, deleted {} namespaces",
            self.killed.len(),
            self.namespaces.len()
        )?;
        if let Some(d) = &self.removed_dir {
            write!(f, ", removed {}", d.display())?;
        }
        Ok(())
    }
}

/// Removes lab `name` whatever state it is in: kills the controller and the
/// agents it recorded, everything running in its namespaces (those it
/// recorded and any other found by name), deletes the namespaces, removes
/// the state directory. Idempotent.
pub fn down_named(name: &str, dir: Option<&Path>) -> anyhow::Result<DownReport> {
    validate_name(name)?;
    let dir = state_dir(name, dir);
    let mut report = DownReport::default();
    let mut errors = Vec::new();
    let state = match State::load(&dir) {
        Ok(s) => s,
        Err(e) => {
            errors.push(format!("{e:#} (cleaning up by name)"));
            None
        }
    };
    let mut namespaces: Vec<String> = Vec::new();
    if let Some(s) = &state {
        let procs = s.controller.iter().chain(s.agents.values());
        for p in procs {
            if procs::alive(p.pid, &p.marker) {
                match procs::kill(p.pid, &p.marker) {
                    Ok(()) => report.killed.push(p.pid),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
        }
        if let Some(t) = &s.topology {
            namespaces.extend(t.namespaces.iter().cloned());
        }
    }
    let existing = netns_list()?;
    namespaces.retain(|ns| existing.contains(ns));
    for ns in existing {
        if is_lab_netns(name, &ns) && !namespaces.contains(&ns) {
            namespaces.push(ns);
        }
    }
    // Pods first, then nodes, then the fabric.
    let rank = |ns: &str| match ns.rsplit('-').next().and_then(|k| k.chars().next()) {
        Some('p') => 0,
        Some('n') => 1,
        _ => 2,
    };
    namespaces.sort_by_key(|ns| rank(ns));
    for ns in &namespaces {
        if let Err(e) = kill_netns(ns, &mut report.killed) {
            errors.push(format!("{e:#}"));
        }
    }
    for ns in namespaces {
        let out = Command::new("ip")
            .args(["netns", "del", &ns])
            .stdin(Stdio::null())
            .output()
            .context("running ip")?;
        if out.status.success() {
            report.namespaces.push(ns);
        } else if netns_list()?.contains(&ns) {
            errors.push(format!(
                "ip netns del {ns}: {}",
                String::from_utf8_lossy(&out.stderr).trim_end()
            ));
        }
    }
    if dir.exists() {
        match fs::remove_dir_all(&dir) {
            Ok(()) => report.removed_dir = Some(dir),
            Err(e) => errors.push(format!("removing {}: {e}", dir.display())),
        }
    }
    ensure!(errors.is_empty(), "{}", errors.join("\n"));
    Ok(report)
}

/// Kills everything in namespace `ns` and waits until nothing is left.
fn kill_netns(ns: &str, killed: &mut Vec<u32>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = netns_pids(ns)?;
        if pids.is_empty() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "processes {pids:?} in {ns} survive SIGKILL"
        );
        for p in pids {
            if procs::signal(p, "KILL") && !killed.contains(&p) {
                killed.push(p);
            }
        }
        thread::sleep(POLL);
    }
}
