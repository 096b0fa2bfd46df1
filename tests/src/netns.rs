//! A multi-node "cluster" made of Linux network namespaces on one machine,
//! wired like Calico's routed pod networking, for testing the dataplane.
//!
//! ```text
//!                  fabric netns: bridge br0 172.31.0.254/24, fd31::fe/64
//!                 /  n1                              \  n2
//!     node netns  eth0 172.31.0.1, fd31::1        node netns  eth0 172.31.0.2 ...
//!      bhv0 ── eth0 pod netns (10.0.1.1/32)
//!      bhv1 ── eth0 pod netns (10.0.1.2/32, fd00::2/128)
//! ```
//!
//! - Every namespace is named `bh<pid><kind><counter>` (`kind`: `f`abric,
//!   `n`ode, `p`od), so concurrent test processes, and concurrent topologies
//!   within one, never collide, and namespaces left behind by a process that
//!   died are recognised and swept by the next [`Topology::new`].
//!   [`Topology::with_prefix`] names them `<prefix><kind><counter>` instead,
//!   for a topology that outlives its process: [`Topology::into_parts`] hands
//!   it over as plain data ([`TopologyParts`]) and [`Topology::adopt`] takes
//!   it back (the lab, [`crate::lab`], keeps it in its state file).
//! - Nodes: one namespace each, IP forwarding on (v4 and v6), uplink `eth0`
//!   on the fabric bridge with 172.31.0.<n>/24 and fd31::<n>/64, default
//!   routes to the fabric (172.31.0.254, fd31::fe; the fabric does not
//!   forward, so traffic to unknown addresses dies there).
//! - Pods: one namespace each, `eth0` with the pod's /32 and /128, default
//!   routes `via 169.254.1.1 dev eth0 onlink` and `via fe80::1 dev eth0`. The
//!   node side of the veth, `bhv<index>`, has proxy ARP on (with no delay)
//!   and fe80::1/64, and the node routes `<podIP>/32 dev bhv<index>`; every
//!   other node routes `<podIP>/32 via <node's underlay address>`. The proxy
//!   ARP answer for 169.254.1.1 needs the node to have a route for it that
//!   does not point back at the veth: that is the node's default route.
//! - DAD is off (`accept_dad=0` before any interface exists, `nodad` on every
//!   address), so every address works as soon as it is added.
//! - Every pod with ports runs `bulkhead-lab serve` in its namespace; adding
//!   the pod returns only once the server printed `ready`.
//! - Dropping the [`Topology`] (even while unwinding from a panic) kills every
//!   process in its namespaces and deletes them; [`Topology::destroy`] does the
//!   same and reports what failed.
//!
//! Everything is built incrementally: pods and nodes can be added to a
//! running topology at any time.

use std::ffi::OsStr;
use std::fmt;
use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};

use crate::traffic::{ProbeResult, Target};

/// Every namespace this module creates starts with this.
pub const PREFIX: &str = "bh";
/// A node's uplink to the fabric, inside the node's namespace.
pub const NODE_UPLINK: &str = "eth0";
/// A pod's interface, inside the pod's namespace.
pub const POD_IFACE: &str = "eth0";
/// The fabric bridge, inside the fabric namespace.
pub const FABRIC_BRIDGE: &str = "br0";
/// The pods' IPv4 default gateway (answered by proxy ARP on the node side).
pub const POD_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pods' IPv6 default gateway (an address of the node side of the veth).
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The fabric's addresses: the nodes' default gateways, which go nowhere.
pub const FABRIC_V4: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 254);
pub const FABRIC_V6: Ipv6Addr = Ipv6Addr::new(0xfd31, 0, 0, 0, 0, 0, 0, 0xfe);
/// At most this many nodes (172.31.0.1 to .253).
pub const MAX_NODES: usize = 253;

/// How long a `bulkhead-lab serve` may take to print `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long killed processes may take to leave their namespace.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Names namespaces uniquely within this process.
static COUNTER: AtomicU32 = AtomicU32::new(1);
/// Serialises sweeping and `ip netns add` (iproute2 sets up the /run/netns
/// mount on first use, racily).
static NETNS_LOCK: Mutex<()> = Mutex::new(());

fn netns_lock() -> MutexGuard<'static, ()> {
    NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A node of a [`Topology`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(usize);

/// A pod of a [`Topology`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodId(usize);

/// What a pod is: at least one address, and the ports its server answers on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSpec {
    /// For humans (error messages); need not be unique.
    pub name: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub tcp_ports: Vec<u16>,
    pub udp_ports: Vec<u16>,
}

impl PodSpec {
    /// The pod's addresses, IPv4 first.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.ipv4
            .map(IpAddr::from)
            .into_iter()
            .chain(self.ipv6.map(IpAddr::from))
            .collect()
    }
}

#[derive(Debug)]
struct Node {
    name: String,
    netns: String,
    /// `n` in 172.31.0.<n>.
    n: u8,
}

impl Node {
    fn underlay_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(172, 31, 0, self.n)
    }

    fn underlay_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd31, 0, 0, 0, 0, 0, 0, u16::from(self.n))
    }
}

#[derive(Debug)]
struct Pod {
    spec: PodSpec,
    node: NodeId,
    netns: String,
    veth: String,
    /// Taken away by [`Topology::remove_pod`]: no namespace any more.
    removed: bool,
}

/// A process the topology started and owns.
#[derive(Debug)]
struct Proc {
    what: String,
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
}

/// The cluster. See the module documentation.
#[derive(Debug)]
pub struct Topology {
    lab_bin: PathBuf,
    fabric: String,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    /// Every namespace created, in creation order.
    namespaces: Vec<String>,
    procs: Vec<Proc>,
    /// Names node-side veths; never reused, even after a failed `add_pod`.
    next_pod_index: usize,
    /// The next node's `n` (172.31.0.<n>); never reused either.
    next_node_n: usize,
    /// Namespaces are named `<prefix><kind><counter>` with a counter of the
    /// topology's own ([`Topology::with_prefix`]) instead of
    /// `bh<pid><kind><counter>`.
    prefix: Option<String>,
    /// That counter.
    next_netns: u32,
    /// Whether dropping the topology tears it down (see
    /// [`Topology::into_parts`] and [`Topology::adopt`]).
    armed: bool,
}

/// What a [`Topology`] is made of, as plain data: what
/// [`Topology::into_parts`] hands over (the namespaces and processes keep
/// running) and [`Topology::adopt`] takes back, e.g. across processes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopologyParts {
    pub fabric: String,
    pub nodes: Vec<NodeParts>,
    /// The pods not removed, in order of creation.
    pub pods: Vec<PodParts>,
    /// Every namespace (fabric, nodes, pods), in order of creation.
    pub namespaces: Vec<String>,
    pub next_pod_index: usize,
    pub next_node_n: usize,
    pub prefix: Option<String>,
    pub next_netns: u32,
}

/// A node of [`TopologyParts`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeParts {
    pub name: String,
    pub netns: String,
    /// `n` in `172.31.0.<n>`.
    pub n: u8,
}

/// A pod of [`TopologyParts`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodParts {
    pub name: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub tcp_ports: Vec<u16>,
    pub udp_ports: Vec<u16>,
    /// Index into [`TopologyParts::nodes`].
    pub node: usize,
    pub netns: String,
    pub veth: String,
}

impl Topology {
    /// Sweeps namespaces left by dead processes, then creates the fabric.
    /// `lab_bin` is the `bulkhead-lab` executable: in this package's
    /// integration tests, `env!("CARGO_BIN_EXE_bulkhead-lab")`.
    pub fn new(lab_bin: impl Into<PathBuf>) -> anyhow::Result<Self> {
        Self::create(lab_bin.into(), None)
    }

    /// [`Topology::new`], naming namespaces `<prefix><kind><counter>`
    /// (`kind`: `f`, `n`, `p`) with a counter of the topology's own, which
    /// [`TopologyParts`] carries. Such names are never swept as stale (they
    /// carry no pid): a topology meant to outlive its process (handed over
    /// with [`Topology::into_parts`]) needs them. The caller chooses a
    /// prefix no other topology uses, and that [`netns_owner`] does not
    /// parse (e.g. `bhl-<name>-`).
    pub fn with_prefix(lab_bin: impl Into<PathBuf>, prefix: &str) -> anyhow::Result<Self> {
        ensure!(
            netns_owner(&format!("{prefix}f1")).is_none(),
            "namespace prefix {prefix:?} looks like a per-process name"
        );
        Self::create(lab_bin.into(), Some(prefix.to_owned()))
    }

    fn create(lab_bin: PathBuf, prefix: Option<String>) -> anyhow::Result<Self> {
        ensure!(
            lab_bin.is_file(),
            "the lab binary {} does not exist",
            lab_bin.display()
        );
        // Best effort: garbage must not stop the tests (nor hide: it is told).
        if let Err(e) = sweep_stale() {
            eprintln!("bulkhead-tests netns: sweeping namespaces of dead processes: {e:#}");
        }
        let mut topo = Self {
            lab_bin,
            fabric: String::new(),
            nodes: Vec::new(),
            pods: Vec::new(),
            namespaces: Vec::new(),
            procs: Vec::new(),
            next_pod_index: 0,
            next_node_n: 1,
            prefix,
            next_netns: 1,
            armed: true,
        };
        // From here on, an error drops `topo`, which cleans up.
        let fabric = topo.add_netns('f')?;
        sysctl(
            &fabric,
            &[
                "net.ipv4.ip_forward=0",
                "net.ipv6.conf.all.forwarding=0",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ],
        )?;
        ip_batch(
            &fabric,
            &[
                "link set lo up".to_owned(),
                format!(
                    "link add {FABRIC_BRIDGE} type bridge forward_delay 0 stp_state 0 mcast_snooping 0"
                ),
                format!("link set {FABRIC_BRIDGE} up"),
                format!("addr add {FABRIC_V4}/24 dev {FABRIC_BRIDGE}"),
                format!("addr add {FABRIC_V6}/64 dev {FABRIC_BRIDGE} nodad"),
            ],
        )?;
        topo.fabric = fabric;
        Ok(topo)
    }

    /// Adds a node: a namespace on the fabric, forwarding, routes to every
    /// pod already on other nodes.
    pub fn add_node(&mut self, name: &str) -> anyhow::Result<NodeId> {
        ensure!(
            self.next_node_n <= MAX_NODES,
            "at most {MAX_NODES} nodes in a topology"
        );
        let id = NodeId(self.nodes.len());
        let n = u8::try_from(self.next_node_n).context("too many nodes")?;
        self.next_node_n += 1;
        let netns = self.add_netns('n')?;
        let node = Node {
            name: name.to_owned(),
            netns,
            n,
        };
        let ctx = || format!("setting up node {name:?} ({})", node.netns);
        sysctl(
            &node.netns,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ],
        )
        .with_context(ctx)?;
        let fabric_port = format!("n{n}");
        ip_in(
            &self.fabric,
            &[
                "link",
                "add",
                &fabric_port,
                "type",
                "veth",
                "peer",
                "name",
                NODE_UPLINK,
                "netns",
                &node.netns,
            ],
        )
        .with_context(ctx)?;
        ip_batch(
            &self.fabric,
            &[format!("link set {fabric_port} master {FABRIC_BRIDGE} up")],
        )
        .with_context(ctx)?;
        let mut script = vec![
            "link set lo up".to_owned(),
            format!("link set {NODE_UPLINK} up"),
            format!("addr add {}/24 dev {NODE_UPLINK}", node.underlay_v4()),
            format!("addr add {}/64 dev {NODE_UPLINK} nodad", node.underlay_v6()),
            format!("route add default via {FABRIC_V4} dev {NODE_UPLINK}"),
            format!("route add ::/0 via {FABRIC_V6} dev {NODE_UPLINK}"),
        ];
        for pod in self.pods.iter().filter(|p| !p.removed) {
            let host = &self.nodes[pod.node.0];
            script.extend(remote_pod_routes(
                &pod.spec,
                host.underlay_v4(),
                host.underlay_v6(),
            ));
        }
        ip_batch(&node.netns, &script).with_context(ctx)?;
        self.nodes.push(node);
        Ok(id)
    }

    /// Adds a pod on `node` and, if it has ports, starts its server and
    /// waits until it is ready. After an error the topology may be half
    /// changed (it still cleans up everything): give up on it.
    pub fn add_pod(&mut self, node: NodeId, spec: PodSpec) -> anyhow::Result<PodId> {
        let Some(host) = self.nodes.get(node.0) else {
            bail!("no node {node:?} in this topology");
        };
        ensure!(
            spec.ipv4.is_some() || spec.ipv6.is_some(),
            "pod {:?} has no address",
            spec.name
        );
        for ip in spec.ips() {
            if let Some(other) = self
                .pods
                .iter()
                .find(|p| !p.removed && p.spec.ips().contains(&ip))
            {
                bail!(
                    "pod {:?}: {ip} is already pod {:?}'s",
                    spec.name,
                    other.spec.name
                );
            }
        }
        ensure!(
            !spec.tcp_ports.contains(&0) && !spec.udp_ports.contains(&0),
            "pod {:?}: port 0",
            spec.name
        );
        let node_netns = host.netns.clone();
        let (via_v4, via_v6) = (host.underlay_v4(), host.underlay_v6());
        let veth = format!("bhv{}", self.next_pod_index);
        self.next_pod_index += 1;
        let netns = self.add_netns('p')?;
        let ctx = || format!("setting up pod {:?} ({netns})", spec.name);

        sysctl(
            &netns,
            &[
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ],
        )
        .with_context(ctx)?;
        ip_in(
            &node_netns,
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", POD_IFACE, "netns", &netns,
            ],
        )
        .with_context(ctx)?;
        sysctl(
            &node_netns,
            &[
                &format!("net.ipv4.conf.{veth}.proxy_arp=1"),
                &format!("net.ipv4.neigh.{veth}.proxy_delay=0"),
                &format!("net.ipv6.conf.{veth}.accept_dad=0"),
            ],
        )
        .with_context(ctx)?;

        let mut node_script = vec![
            format!("link set {veth} up"),
            format!("addr add {POD_GATEWAY_V6}/64 dev {veth} nodad"),
        ];
        let mut pod_script = vec![
            "link set lo up".to_owned(),
            format!("link set {POD_IFACE} up"),
        ];
        if let Some(v4) = spec.ipv4 {
            node_script.push(format!("route add {v4}/32 dev {veth}"));
            pod_script.push(format!("addr add {v4}/32 dev {POD_IFACE}"));
            pod_script.push(format!(
                "route add default via {POD_GATEWAY_V4} dev {POD_IFACE} onlink"
            ));
        }
        if let Some(v6) = spec.ipv6 {
            node_script.push(format!("route add {v6}/128 dev {veth}"));
            pod_script.push(format!("addr add {v6}/128 dev {POD_IFACE} nodad"));
            pod_script.push(format!(
                "route add ::/0 via {POD_GATEWAY_V6} dev {POD_IFACE}"
            ));
        }
        ip_batch(&node_netns, &node_script).with_context(ctx)?;
        ip_batch(&netns, &pod_script).with_context(ctx)?;
        for other in self.nodes.iter().filter(|n| n.netns != node_netns) {
            ip_batch(&other.netns, &remote_pod_routes(&spec, via_v4, via_v6))
                .with_context(|| format!("routing to pod {:?} from {}", spec.name, other.name))?;
        }

        if !spec.tcp_ports.is_empty() || !spec.udp_ports.is_empty() {
            let mut args: Vec<String> = vec!["serve".into()];
            if !spec.tcp_ports.is_empty() {
                args.push("--tcp".into());
                args.push(join_ports(&spec.tcp_ports));
            }
            if !spec.udp_ports.is_empty() {
                args.push("--udp".into());
                args.push(join_ports(&spec.udp_ports));
            }
            let mut cmd = netns_command(&netns, &self.lab_bin);
            cmd.args(&args);
            self.start_ready(cmd, format!("bulkhead-lab serve in pod {:?}", spec.name))?;
        }

        let id = PodId(self.pods.len());
        self.pods.push(Pod {
            spec,
            node,
            netns,
            veth,
            removed: false,
        });
        Ok(id)
    }

    /// Runs `bulkhead-lab probe` in `from`'s namespace: every target in
    /// parallel, each within `timeout`. One result per target, in order.
    pub fn probe(
        &self,
        from: PodId,
        targets: &[Target],
        timeout: Duration,
    ) -> anyhow::Result<Vec<ProbeResult>> {
        let pod = self.pod(from)?;
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = netns_command(&pod.netns, &self.lab_bin);
        cmd.arg("probe")
            .arg("--timeout-ms")
            .arg(timeout.as_millis().max(1).to_string())
            .args(targets.iter().map(ToString::to_string));
        // The probes end by themselves; this only guards against a hang.
        let deadline = Instant::now() + timeout + Duration::from_secs(30);
        let out = output_with_deadline(cmd, deadline)
            .with_context(|| format!("probing from pod {:?}", pod.spec.name))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            matches!(out.status.code(), Some(0 | 1)),
            "bulkhead-lab probe in pod {:?} failed ({}):\n{stderr}",
            pod.spec.name,
            out.status
        );
        let results = stdout
            .lines()
            .map(ProbeResult::from_json)
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("bulkhead-lab probe printed:\n{stdout}"))?;
        ensure!(
            results.len() == targets.len()
                && results.iter().zip(targets).all(|(r, t)| r.target == *t),
            "bulkhead-lab probe answered for other targets than asked:\n{stdout}"
        );
        Ok(results)
    }

    /// Runs `args` in namespace `ns` (`ip netns exec NS ARGS...`), with no
    /// stdin, and returns what it did, whatever its exit status.
    pub fn exec<S: AsRef<OsStr>>(&self, ns: &str, args: &[S]) -> anyhow::Result<Output> {
        let (program, rest) = args.split_first().context("exec: no command")?;
        let mut cmd = netns_command(ns, program);
        cmd.args(rest).stdin(Stdio::null());
        cmd.output().with_context(|| format!("running {cmd:?}"))
    }

    /// [`Topology::exec`], failing unless the command succeeds; returns its
    /// stdout.
    pub fn exec_ok<S: AsRef<OsStr>>(&self, ns: &str, args: &[S]) -> anyhow::Result<String> {
        let out = self.exec(ns, args)?;
        check(&out, || {
            format!(
                "in {ns}: {}",
                args.iter()
                    .map(|a| a.as_ref().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        })
    }

    /// Starts `cmd` (its program, arguments, environment and working
    /// directory; not its stdio, nor an `env_clear`) in namespace `ns`, which must be one of this
    /// topology's. The child's stdin is null, its stdout and stderr piped.
    /// The caller owns the child; dropping the topology kills it all the same
    /// (it kills every process in its namespaces).
    pub fn spawn(&self, ns: &str, cmd: Command) -> anyhow::Result<Child> {
        ensure!(
            self.namespaces.iter().any(|n| n == ns),
            "{ns} is not a namespace of this topology"
        );
        let mut wrapped = netns_command(ns, cmd.get_program());
        wrapped.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        wrapped
            .spawn()
            .with_context(|| format!("spawning {wrapped:?}"))
    }

    /// The `bulkhead-lab` executable the topology runs.
    pub fn lab_bin(&self) -> &Path {
        &self.lab_bin
    }

    /// The fabric's namespace.
    pub fn fabric_netns(&self) -> &str {
        &self.fabric
    }

    /// Every node, in order of creation.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + use<> {
        (0..self.nodes.len()).map(NodeId)
    }

    /// Every pod, in order of creation (not those removed).
    pub fn pods(&self) -> impl Iterator<Item = PodId> + use<> {
        let live: Vec<PodId> = (0..self.pods.len())
            .filter(|&i| !self.pods[i].removed)
            .map(PodId)
            .collect();
        live.into_iter()
    }

    /// The node's name, as given to [`Topology::add_node`].
    ///
    /// Panics if `node` is not of this topology (as do the other accessors).
    pub fn node_name(&self, node: NodeId) -> &str {
        &self.nodes[node.0].name
    }

    /// The node's namespace.
    pub fn node_netns(&self, node: NodeId) -> &str {
        &self.nodes[node.0].netns
    }

    /// The node's underlay address, 172.31.0.<n>, on [`NODE_UPLINK`].
    pub fn node_underlay(&self, node: NodeId) -> Ipv4Addr {
        self.nodes[node.0].underlay_v4()
    }

    /// The node's IPv6 underlay address, fd31::<n>.
    pub fn node_underlay_v6(&self, node: NodeId) -> Ipv6Addr {
        self.nodes[node.0].underlay_v6()
    }

    /// What the pod was created with.
    pub fn pod_spec(&self, pod: PodId) -> &PodSpec {
        &self.pods[pod.0].spec
    }

    /// The pod's namespace.
    pub fn pod_netns(&self, pod: PodId) -> &str {
        &self.pods[pod.0].netns
    }

    /// The node side of the pod's veth (`bhv<index>`, in the node's
    /// namespace).
    pub fn pod_veth(&self, pod: PodId) -> &str {
        &self.pods[pod.0].veth
    }

    /// The node the pod runs on.
    pub fn pod_node(&self, pod: PodId) -> NodeId {
        self.pods[pod.0].node
    }

    /// Every namespace of the topology, in order of creation.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The process ids of the servers the topology runs.
    pub fn server_pids(&self) -> Vec<u32> {
        self.procs.iter().map(|p| p.child.id()).collect()
    }

    /// Tears everything down, reporting what failed (dropping does the same
    /// but can only print).
    pub fn destroy(mut self) -> anyhow::Result<()> {
        let errors = self.teardown();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "tearing down the topology:\n{}",
                errors
                    .iter()
                    .map(|e| format!("- {e:#}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ))
        }
    }

    fn pod(&self, pod: PodId) -> anyhow::Result<&Pod> {
        self.pods
            .get(pod.0)
            .with_context(|| format!("no pod {pod:?} in this topology"))
    }

    /// Creates and records a new namespace `bh<pid><kind><counter>` (or
    /// `<prefix><kind><counter>`, see [`Topology::with_prefix`]).
    fn add_netns(&mut self, kind: char) -> anyhow::Result<String> {
        let name = match &self.prefix {
            Some(prefix) => {
                let n = self.next_netns;
                self.next_netns += 1;
                format!("{prefix}{kind}{n}")
            }
            None => format!(
                "{PREFIX}{}{kind}{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ),
        };
        {
            let _guard = netns_lock();
            ip(&["netns", "add", &name])?;
        }
        self.namespaces.push(name.clone());
        Ok(name)
    }

    /// Starts `cmd` (owned by the topology) and waits until it prints
    /// `ready` on stdout.
    fn start_ready(&mut self, mut cmd: Command, what: String) -> anyhow::Result<()> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let stdout = child.stdout.take();
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
        // Owned from now on, so that an error below still kills it.
        self.procs.push(Proc {
            what: what.clone(),
            child,
            stderr,
        });
        let stdout = stdout.context("no stdout pipe")?;
        let (tx, rx) = mpsc::channel();
        // Reads stdout until the process ends, so that it never blocks on a
        // full pipe.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Nobody may listen any more: keep draining all the same.
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.trim() == "ready" => return Ok(()),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    let stderr = self.proc_stderr();
                    bail!(
                        "{what} did not print \"ready\" within {READY_TIMEOUT:?}; stderr:\n{stderr}"
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let proc = self.procs.last_mut().context("no process")?;
                    // Stdout closed: it exited (or is about to).
                    let status = proc.child.wait();
                    let stderr = self.proc_stderr();
                    bail!("{what} ended before it was ready ({status:?}); stderr:\n{stderr}");
                }
            }
        }
    }

    /// What the last started process printed on stderr so far.
    fn proc_stderr(&self) -> String {
        self.procs
            .last()
            .map(|p| {
                String::from_utf8_lossy(&p.stderr.lock().unwrap_or_else(|e| e.into_inner()))
                    .into_owned()
            })
            .unwrap_or_default()
    }

    /// Kills and reaps our processes, kills whatever else runs in our
    /// namespaces, deletes the namespaces. Idempotent.
    fn teardown(&mut self) -> Vec<anyhow::Error> {
        let mut errors = Vec::new();
        for mut p in self.procs.drain(..) {
            // Fails only if it is gone already, which is what we want.
            let _ = p.child.kill();
            if let Err(e) = p.child.wait() {
                errors.push(anyhow!("waiting for {} to end: {e}", p.what));
            }
        }
        // Pods first, then nodes, then the fabric.
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = kill_netns_pids(ns) {
                errors.push(e);
            }
        }
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                errors.push(e);
            }
        }
        self.nodes.clear();
        self.pods.clear();
        errors
    }
}

impl Topology {
    /// What the topology is made of now (it stays as it is).
    pub fn parts(&self) -> TopologyParts {
        // Removed pods are left out: node indexes stay, pod indexes shift.
        let pods = self
            .pods
            .iter()
            .filter(|p| !p.removed)
            .map(|p| PodParts {
                name: p.spec.name.clone(),
                ipv4: p.spec.ipv4,
                ipv6: p.spec.ipv6,
                tcp_ports: p.spec.tcp_ports.clone(),
                udp_ports: p.spec.udp_ports.clone(),
                node: p.node.0,
                netns: p.netns.clone(),
                veth: p.veth.clone(),
            })
            .collect();
        TopologyParts {
            fabric: self.fabric.clone(),
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeParts {
                    name: n.name.clone(),
                    netns: n.netns.clone(),
                    n: n.n,
                })
                .collect(),
            pods,
            namespaces: self.namespaces.clone(),
            next_pod_index: self.next_pod_index,
            next_node_n: self.next_node_n,
            prefix: self.prefix.clone(),
            next_netns: self.next_netns,
        }
    }

    /// Hands the topology over: its namespaces and the servers in them keep
    /// running (the servers are no longer waited for by anyone here), and
    /// nothing is torn down when this returns. [`Topology::adopt`] takes it
    /// back.
    pub fn into_parts(mut self) -> TopologyParts {
        let parts = self.parts();
        self.disarm();
        parts
    }

    /// Dropping the topology no longer tears anything down (its processes
    /// are let go, not killed); [`Topology::destroy`] still does.
    pub fn disarm(&mut self) {
        self.armed = false;
        // Dropping a `Child` neither kills nor waits for it.
        self.procs.clear();
    }

    /// Whether dropping the topology tears it down.
    pub fn is_armed(&self) -> bool {
        self.armed
    }

    /// Takes back a topology handed over with [`Topology::into_parts`] (by
    /// this process or another): it can grow, lose pods, probe and
    /// [`Topology::destroy`] as before, but dropping it tears nothing down
    /// (it is disarmed), and its servers are not its processes (they die
    /// with their namespaces). Every namespace must still exist.
    pub fn adopt(lab_bin: impl Into<PathBuf>, parts: TopologyParts) -> anyhow::Result<Self> {
        let lab_bin = lab_bin.into();
        let existing = netns_list()?;
        for ns in &parts.namespaces {
            ensure!(
                existing.contains(ns),
                "namespace {ns} of the topology no longer exists"
            );
        }
        let nodes = parts
            .nodes
            .into_iter()
            .map(|n| Node {
                name: n.name,
                netns: n.netns,
                n: n.n,
            })
            .collect::<Vec<_>>();
        let mut pods = Vec::with_capacity(parts.pods.len());
        for p in parts.pods {
            ensure!(
                p.node < nodes.len(),
                "pod {:?} is on node #{}, which the topology does not have",
                p.name,
                p.node
            );
            pods.push(Pod {
                spec: PodSpec {
                    name: p.name,
                    ipv4: p.ipv4,
                    ipv6: p.ipv6,
                    tcp_ports: p.tcp_ports,
                    udp_ports: p.udp_ports,
                },
                node: NodeId(p.node),
                netns: p.netns,
                veth: p.veth,
                removed: false,
            });
        }
        Ok(Self {
            lab_bin,
            fabric: parts.fabric,
            nodes,
            pods,
            namespaces: parts.namespaces,
            procs: Vec::new(),
            next_pod_index: parts.next_pod_index,
            next_node_n: parts.next_node_n,
            prefix: parts.prefix,
            next_netns: parts.next_netns,
            armed: false,
        })
    }

    /// Takes a pod away: kills what runs in its namespace, deletes the
    /// namespace (and with it the veth and the node's routes to it), and
    /// the routes of the other nodes to it. Its [`PodId`] is left unused
    /// ([`Topology::pods`] skips it); its addresses can be given again.
    pub fn remove_pod(&mut self, pod: PodId) -> anyhow::Result<()> {
        let p = self.pod(pod)?;
        ensure!(!p.removed, "pod {:?} was removed already", p.spec.name);
        let (netns, host, spec) = (p.netns.clone(), p.node, p.spec.clone());
        let veth = p.veth.clone();
        kill_netns_pids(&netns)?;
        // As a CNI DEL does: the veth (and its host route) goes now, not when
        // the kernel frees the namespace, which a socket still retransmitting
        // a FIN (say, one a quarantine cut) can keep alive for minutes.
        ip_batch(&self.nodes[host.0].netns, &[format!("link del {veth}")])
            .with_context(|| format!("removing the veth of pod {:?}", spec.name))?;
        // Reap what was ours in there (a zombie keeps nothing, but is untidy).
        for proc in &mut self.procs {
            let _ = proc.child.try_wait();
        }
        {
            let _guard = netns_lock();
            ip(&["netns", "del", &netns])?;
        }
        self.namespaces.retain(|n| *n != netns);
        self.pods[pod.0].removed = true;
        let mut errors = Vec::new();
        for (i, other) in self.nodes.iter().enumerate() {
            if i == host.0 {
                continue;
            }
            let mut script = Vec::new();
            if let Some(v4) = spec.ipv4 {
                script.push(format!("route del {v4}/32"));
            }
            if let Some(v6) = spec.ipv6 {
                script.push(format!("route del {v6}/128"));
            }
            if let Err(e) = ip_batch(&other.netns, &script) {
                errors.push(format!("{e:#}"));
            }
        }
        ensure!(
            errors.is_empty(),
            "removing the routes to pod {:?}: {}",
            spec.name,
            errors.join("; ")
        );
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for e in self.teardown() {
            eprintln!("bulkhead-tests netns: tearing down: {e:#}");
        }
    }
}

/// The routes another node needs to reach `pod` on the node with underlay
/// addresses `via_v4` and `via_v6`.
fn remote_pod_routes(pod: &PodSpec, via_v4: Ipv4Addr, via_v6: Ipv6Addr) -> Vec<String> {
    let mut script = Vec::new();
    if let Some(v4) = pod.ipv4 {
        script.push(format!("route add {v4}/32 via {via_v4} dev {NODE_UPLINK}"));
    }
    if let Some(v6) = pod.ipv6 {
        script.push(format!("route add {v6}/128 via {via_v6} dev {NODE_UPLINK}"));
    }
    script
}

fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `ip netns exec NS PROGRAM`: add arguments and stdio, then run it.
pub fn netns_command(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// The namespaces `ip netns list` shows.
pub fn netns_list() -> anyhow::Result<Vec<String>> {
    let out = ip_output(&["netns", "list"])?;
    // Lines are `NAME` or `NAME (id: N)`.
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// The processes in namespace `ns` (`ip netns pids`).
pub fn netns_pids(ns: &str) -> anyhow::Result<Vec<u32>> {
    let out = ip_output(&["netns", "pids", ns])?;
    out.split_whitespace()
        .map(|p| {
            p.parse()
                .with_context(|| format!("ip netns pids {ns}: {p:?} is not a pid"))
        })
        .collect()
}

/// The pid in a name this module gives (`bh<pid><kind><counter>`).
pub fn netns_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let kind_at = rest.find(|c: char| !c.is_ascii_digit())?;
    let (pid, rest) = rest.split_at(kind_at);
    let mut chars = rest.chars();
    let kind = chars.next()?;
    let counter = chars.as_str();
    let well_formed = !pid.is_empty()
        && matches!(kind, 'f' | 'n' | 'p')
        && !counter.is_empty()
        && counter.bytes().all(|b| b.is_ascii_digit());
    if well_formed { pid.parse().ok() } else { None }
}

/// Deletes every namespace of ours whose creating process no longer exists,
/// killing the processes in it first. Returns the names swept.
///
/// Names carrying this process's own id are stale too the first time this
/// runs in a process (a dead process had the same id): namespaces are only
/// created after a sweep. Liveness is `/proc/<pid>` existing, so this must
/// not run in a pid namespace that hides the processes owning namespaces.
pub fn sweep_stale() -> anyhow::Result<Vec<String>> {
    static SWEPT_BEFORE: AtomicBool = AtomicBool::new(false);
    let _guard = netns_lock();
    let first = !SWEPT_BEFORE.swap(true, Ordering::SeqCst);
    let me = std::process::id();
    let mut swept = Vec::new();
    let mut errors = Vec::new();
    for ns in netns_list()? {
        let Some(pid) = netns_owner(&ns) else {
            continue;
        };
        let stale = if pid == me {
            first
        } else {
            !Path::new(&format!("/proc/{pid}")).exists()
        };
        if !stale {
            continue;
        }
        match kill_netns_pids(&ns).and_then(|()| ip(&["netns", "del", &ns])) {
            Ok(()) => swept.push(ns),
            // Another process (another test binary) swept it meanwhile.
            Err(_) if !netns_list()?.contains(&ns) => {}
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    ensure!(errors.is_empty(), "{}", errors.join("; "));
    Ok(swept)
}

/// Kills every process in namespace `ns` and waits until none is left.
fn kill_netns_pids(ns: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        let pids = netns_pids(ns)?;
        if pids.is_empty() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "processes {pids:?} in {ns} survive SIGKILL"
        );
        let mut kill = Command::new("kill");
        kill.arg("-KILL").args(pids.iter().map(u32::to_string));
        // A process may end on its own meanwhile: check again, not the status.
        let _ = kill
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        thread::sleep(Duration::from_millis(5));
    }
}

/// Sets sysctls inside namespace `ns`.
fn sysctl(ns: &str, settings: &[&str]) -> anyhow::Result<()> {
    let mut cmd = netns_command(ns, "sysctl");
    cmd.args(["-q", "-w"]).args(settings).stdin(Stdio::null());
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    check(&out, || format!("in {ns}: sysctl {}", settings.join(" "))).map(drop)
}

/// `ip ARGS`, failing unless it succeeds.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    ip_output(args).map(drop)
}

/// `ip -n NS ARGS`, failing unless it succeeds.
fn ip_in(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

/// `ip ARGS`: its stdout, or an error with its stderr.
fn ip_output(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip (is iproute2 installed?)")?;
    check(&out, || format!("ip {}", args.join(" ")))
}

/// Runs the `ip` commands `script` (one per line) in namespace `ns`, in one
/// `ip -n NS -batch -` process; stops at the first failure.
fn ip_batch(ns: &str, script: &[String]) -> anyhow::Result<()> {
    if script.is_empty() {
        return Ok(());
    }
    let text = script.join("\n") + "\n";
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip (is iproute2 installed?)")?;
    let write = child
        .stdin
        .take()
        .context("no stdin pipe")?
        .write_all(text.as_bytes());
    let out = child.wait_with_output().context("waiting for ip -batch")?;
    write.context("writing to ip -batch")?;
    check(&out, || format!("ip -n {ns} -batch - with:\n{text}")).map(drop)
}

/// Stdout if `out` is a success, else an error naming `what` with stderr.
fn check(out: &Output, what: impl FnOnce() -> String) -> anyhow::Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(anyhow!(
            "{} failed ({}): {}",
            what(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        ))
    }
}

/// Runs `cmd` to completion with stdout and stderr captured, killing it at
/// `deadline`.
fn output_with_deadline(mut cmd: Command, deadline: Instant) -> anyhow::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for a child")? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not end in time; killed");
        }
        thread::sleep(Duration::from_millis(5));
    };
    let stdout = stdout
        .join()
        .map_err(|_| anyhow!("the stdout reader panicked"))?;
    let stderr = stderr
        .join()
        .map_err(|_| anyhow!("the stderr reader panicked"))?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node#{}", self.0)
    }
}

impl fmt::Display for PodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pod#{}", self.0)
    }
}
