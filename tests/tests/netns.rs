//! Tests of the netns lab itself: the topology wires pods together like a
//! routed cluster, cleans up after itself, and lets the dataplane be tested.
//! They need root (network namespaces); they fail, loudly, without it.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bulkhead_tests::netns::{
    NodeId, PodId, PodSpec, Topology, netns_list, netns_owner, netns_pids,
};
use bulkhead_tests::traffic::{ProbeResult, Target};

const LAB: &str = env!("CARGO_BIN_EXE_bulkhead-lab");
const PORTS: [u16; 2] = [80, 8080];
/// Generous for what must pass (it ends at the first answer) ...
const PASS_TIMEOUT: Duration = Duration::from_secs(3);
/// ... short for what must fail by timing out.
const DROP_TIMEOUT: Duration = Duration::from_millis(700);

/// A new topology, after checking that this can work at all.
fn topology() -> Topology {
    preflight();
    Topology::new(LAB).unwrap_or_else(|e| panic!("creating a topology: {e:#}"))
}

fn preflight() {
    bulkhead_tests::require_root();
    if let Err(e) = netns_list() {
        panic!("`ip netns list` does not work, so the netns lab cannot either: {e:#}");
    }
}

fn pod(name: &str, ipv4: Option<&str>, ipv6: Option<&str>) -> PodSpec {
    PodSpec {
        name: name.to_owned(),
        ipv4: ipv4.map(|a| a.parse().unwrap()),
        ipv6: ipv6.map(|a| a.parse().unwrap()),
        tcp_ports: PORTS.to_vec(),
        udp_ports: PORTS.to_vec(),
    }
}

/// Two nodes; on A a v4-only pod and a dual-stack one, on B a dual-stack one.
struct Cluster {
    t: Topology,
    a: NodeId,
    b: NodeId,
    a1: PodId,
    a2: PodId,
    b1: PodId,
}

fn cluster() -> Cluster {
    let mut t = topology();
    let a = t.add_node("node-a").unwrap();
    let b = t.add_node("node-b").unwrap();
    let a1 = t.add_pod(a, pod("a1", Some("10.99.1.1"), None)).unwrap();
    let a2 = t
        .add_pod(a, pod("a2", Some("10.99.1.2"), Some("fd99::1:2")))
        .unwrap();
    let b1 = t
        .add_pod(b, pod("b1", Some("10.99.2.1"), Some("fd99::2:1")))
        .unwrap();
    Cluster {
        t,
        a,
        b,
        a1,
        a2,
        b1,
    }
}

/// Every (proto, address, port) of `to` that `from` can address (same family).
fn targets(t: &Topology, from: PodId, to: PodId) -> Vec<Target> {
    let src = t.pod_spec(from);
    let dst = t.pod_spec(to);
    let mut out = Vec::new();
    for ip in dst.ips() {
        let reachable_family = match ip {
            IpAddr::V4(_) => src.ipv4.is_some(),
            IpAddr::V6(_) => src.ipv6.is_some(),
        };
        if !reachable_family {
            continue;
        }
        out.extend(dst.tcp_ports.iter().map(|&p| Target::tcp(ip, p)));
        out.extend(dst.udp_ports.iter().map(|&p| Target::udp(ip, p)));
    }
    out
}

fn probe(t: &Topology, from: PodId, targets: &[Target], timeout: Duration) -> Vec<ProbeResult> {
    t.probe(from, targets, timeout)
        .unwrap_or_else(|e| panic!("probing from {}: {e:#}", t.pod_spec(from).name))
}

/// Panics, listing the failures, unless every pod reaches every pod
/// (itself included) on every port of every shared family.
#[track_caller]
fn assert_full_mesh(t: &Topology) -> usize {
    let mut failures = Vec::new();
    let mut count = 0;
    for from in t.pods() {
        let all: Vec<Target> = t.pods().flat_map(|to| targets(t, from, to)).collect();
        for r in probe(t, from, &all, PASS_TIMEOUT) {
            count += 1;
            if !r.ok {
                failures.push(format!("{} -> {r}", t.pod_spec(from).name));
            }
        }
    }
    assert!(failures.is_empty(), "unreachable:\n{}", failures.join("\n"));
    count
}

#[test]
fn every_pod_reaches_every_pod() {
    let c = cluster();
    let t = &c.t;
    assert_eq!(t.pod_node(c.a1), c.a);
    assert_eq!(t.pod_node(c.b1), c.b);
    // a1 (v4): 2 pods' v4 + its own; a2 and b1: 3 v4 and 2 v6 addresses;
    // 2 TCP and 2 UDP ports each.
    let probed = assert_full_mesh(t);
    assert_eq!(probed, 4 * (3 + 5 + 5));
    // Same node, cross node, both families, spelled out once more.
    let same_node_v4 = probe(t, c.a1, &targets(t, c.a1, c.a2), PASS_TIMEOUT);
    assert_eq!(same_node_v4.len(), 4);
    let cross_node_v6 = probe(t, c.a2, &targets(t, c.a2, c.b1), PASS_TIMEOUT);
    assert_eq!(cross_node_v6.len(), 8);
    assert!(
        cross_node_v6
            .iter()
            .any(|r| r.target.addr.is_ipv6() && r.ok)
    );
}

#[test]
fn accessors_describe_the_wiring() {
    let c = cluster();
    let t = &c.t;
    assert_eq!(t.node_underlay(c.a), Ipv4Addr::new(172, 31, 0, 1));
    assert_eq!(t.node_underlay(c.b), Ipv4Addr::new(172, 31, 0, 2));
    assert_eq!(
        t.node_underlay_v6(c.b),
        "fd31::2".parse::<Ipv6Addr>().unwrap()
    );
    let pid = std::process::id();
    for ns in t.namespaces() {
        assert_eq!(netns_owner(ns), Some(pid), "{ns}");
    }
    assert!(t.pod_veth(c.a2).len() <= 15);
    // The node side of a2's veth is in node A, with a2's routes on it.
    let routes = t
        .exec_ok(
            t.node_netns(c.a),
            &["ip", "route", "show", "dev", t.pod_veth(c.a2)],
        )
        .unwrap();
    assert!(routes.contains("10.99.1.2"), "{routes}");
    let routes6 = t
        .exec_ok(
            t.node_netns(c.a),
            &["ip", "-6", "route", "show", "fd99::1:2"],
        )
        .unwrap();
    assert!(routes6.contains(t.pod_veth(c.a2)), "{routes6}");
    // Node B reaches a2 through node A's underlay address.
    let via = t
        .exec_ok(t.node_netns(c.b), &["ip", "route", "get", "10.99.1.2"])
        .unwrap();
    assert!(via.contains("via 172.31.0.1"), "{via}");
    // In the pod: eth0 with the /32, default via 169.254.1.1.
    let addrs = t
        .exec_ok(
            t.pod_netns(c.b1),
            &["ip", "-o", "addr", "show", "dev", "eth0"],
        )
        .unwrap();
    assert!(addrs.contains("10.99.2.1/32"), "{addrs}");
    assert!(addrs.contains("fd99::2:1/128"), "{addrs}");
    assert!(!addrs.contains("tentative"), "{addrs}");
    let default = t
        .exec_ok(t.pod_netns(c.b1), &["ip", "route", "show", "default"])
        .unwrap();
    assert!(default.contains("via 169.254.1.1 dev eth0"), "{default}");
}

#[test]
fn pods_and_nodes_added_later_are_wired_in() {
    let mut c = cluster();
    // A v6-only pod next to a2 (same-node IPv6), then a node after the pods.
    let a3 =
        c.t.add_pod(c.a, pod("a3", None, Some("fd99::1:3")))
            .unwrap();
    let d = c.t.add_node("node-d").unwrap();
    let d1 =
        c.t.add_pod(d, pod("d1", Some("10.99.4.1"), Some("fd99::4:1")))
            .unwrap();
    assert_full_mesh(&c.t);
    let same_node_v6 = probe(&c.t, a3, &targets(&c.t, a3, c.a2), PASS_TIMEOUT);
    assert_eq!(same_node_v6.len(), 4);
    assert!(same_node_v6.iter().all(|r| r.ok), "{same_node_v6:?}");
    // The new node routes to a pod that existed before it.
    let via =
        c.t.exec_ok(c.t.node_netns(d), &["ip", "route", "get", "10.99.2.1"])
            .unwrap();
    assert!(via.contains("via 172.31.0.2"), "{via}");
    assert_eq!(c.t.pod_node(d1), d);
}

#[test]
fn a_closed_port_fails_fast() {
    let c = cluster();
    let timeout = Duration::from_secs(5);
    let targets = [
        Target::tcp(Ipv4Addr::new(10, 99, 2, 1), 9),
        Target::tcp("fd99::2:1".parse::<Ipv6Addr>().unwrap(), 9),
        Target::udp(Ipv4Addr::new(10, 99, 2, 1), 9),
        Target::tcp(Ipv4Addr::new(10, 99, 1, 2), 9),
    ];
    let start = Instant::now();
    let results = probe(&c.t, c.a2, &targets, timeout);
    let took = start.elapsed();
    for r in &results {
        assert!(!r.ok, "{r}");
        assert!(r.detail.contains("refused"), "{r}");
    }
    assert!(took < Duration::from_secs(2), "took {took:?}: {results:?}");
}

#[test]
fn an_nftables_drop_rule_in_a_node_blocks_that_pod_only() {
    let c = cluster();
    let t = &c.t;
    let node_b = t.node_netns(c.b);
    for cmd in [
        "add table inet t",
        "add chain inet t filter_fw { type filter hook forward priority 0 ; policy accept ; }",
        "add rule inet t filter_fw ip daddr 10.99.2.1 drop",
    ] {
        t.exec_ok(node_b, &["nft", cmd])
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    let b1_v4: Vec<Target> = targets(t, c.a1, c.b1);
    let a2_v4: Vec<Target> = targets(t, c.a1, c.a2);
    let b1_v6: Vec<Target> = targets(t, c.a2, c.b1)
        .into_iter()
        .filter(|t| t.addr.is_ipv6())
        .collect();
    let start = Instant::now();
    let blocked = probe(t, c.a1, &[b1_v4, a2_v4.clone()].concat(), DROP_TIMEOUT);
    let v6 = probe(t, c.a2, &b1_v6, DROP_TIMEOUT);
    for r in &blocked {
        let to_b1 = r.target.addr.ip() == IpAddr::from([10, 99, 2, 1]);
        assert_eq!(r.ok, !to_b1, "{r}");
    }
    assert!(v6.iter().all(|r| r.ok), "b1's IPv6 is not dropped: {v6:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
    // And without the rule, b1 answers again.
    t.exec_ok(node_b, &["nft", "delete table inet t"]).unwrap();
    let again = probe(t, c.a1, &targets(t, c.a1, c.b1), PASS_TIMEOUT);
    assert!(again.iter().all(|r| r.ok), "{again:?}");
}

fn pid_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; it is no process any more.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn remaining_of(names: &[String]) -> BTreeSet<String> {
    let all: BTreeSet<String> = netns_list().unwrap().into_iter().collect();
    names.iter().filter(|n| all.contains(*n)).cloned().collect()
}

#[test]
fn dropping_the_topology_removes_namespaces_and_processes() {
    let c = cluster();
    let names = c.t.namespaces().to_vec();
    assert_eq!(names.len(), 1 + 2 + 3);
    assert_eq!(remaining_of(&names).len(), names.len());
    let servers = c.t.server_pids();
    assert_eq!(servers.len(), 3);
    assert!(servers.iter().all(|&p| pid_alive(p)));
    // A process a test started in a node: the topology kills it too.
    let mut sleeper =
        c.t.spawn(c.t.node_netns(c.b), {
            let mut cmd = Command::new("sleep");
            cmd.arg("300");
            cmd
        })
        .unwrap();
    assert!(wait_for(|| netns_pids(c.t.node_netns(c.b))
        .unwrap()
        .contains(&sleeper.id())));
    drop(c);
    assert_eq!(remaining_of(&names), BTreeSet::new());
    for p in servers {
        assert!(!pid_alive(p), "server {p} survived");
    }
    let status = sleeper.try_wait().unwrap();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the sleeper survived: {status:?}"
    );
}

#[test]
fn destroy_reports_success_and_cleans_up() {
    let mut t = topology();
    let n = t.add_node("n").unwrap();
    t.add_pod(n, pod("p", Some("10.99.9.9"), None)).unwrap();
    let names = t.namespaces().to_vec();
    t.destroy().unwrap();
    assert_eq!(remaining_of(&names), BTreeSet::new());
}

#[test]
fn a_panicking_test_still_cleans_up() {
    let names = Mutex::new(Vec::new());
    let servers = Mutex::new(Vec::new());
    let outcome = std::panic::catch_unwind(|| {
        let mut t = topology();
        let n = t.add_node("n").unwrap();
        t.add_pod(n, pod("p", Some("10.99.9.9"), None)).unwrap();
        *names.lock().unwrap() = t.namespaces().to_vec();
        *servers.lock().unwrap() = t.server_pids();
        panic!("a test fails with the topology up");
    });
    assert!(outcome.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 3);
    assert_eq!(remaining_of(&names), BTreeSet::new());
    for p in servers.into_inner().unwrap() {
        assert!(!pid_alive(p), "server {p} survived");
    }
}

#[test]
fn namespaces_of_dead_processes_are_swept() {
    preflight();
    // A stand-in for a test process that will die without cleaning up.
    let mut owner = Command::new("sleep")
        .arg("300")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let stale = format!("bh{}n1", owner.id());
    let ours_too = format!("bh{}p7", owner.id());
    let unrelated = format!("bhx{}n1", owner.id());
    for ns in [&stale, &ours_too, &unrelated] {
        ip(&["netns", "add", ns]);
    }
    // A process left running in the stale namespace.
    let mut orphan = Command::new("ip")
        .args(["netns", "exec", &stale, "sleep", "300"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for(|| netns_pids(&stale)
        .unwrap()
        .contains(&orphan.id())));
    // While the owner lives, its namespaces are left alone ...
    let t = topology();
    let names = [stale.clone(), ours_too.clone(), unrelated.clone()];
    assert_eq!(remaining_of(&names).len(), 3);
    drop(t);
    // ... once it is dead, they go.
    owner.kill().unwrap();
    owner.wait().unwrap();
    assert!(!Path::new(&format!("/proc/{}", owner.id())).exists());
    let t = topology();
    let left = remaining_of(&names);
    // Not ours (`bhx...`), so not swept.
    ip(&["netns", "del", &unrelated]);
    assert_eq!(left, BTreeSet::from([unrelated.clone()]));
    let status = orphan.try_wait().unwrap();
    assert!(status.is_some(), "the orphan survived the sweep");
    t.destroy().unwrap();
}

#[test]
fn namespace_names_are_parsed_strictly() {
    assert_eq!(netns_owner("bh123n4"), Some(123));
    assert_eq!(netns_owner("bh123p45"), Some(123));
    assert_eq!(netns_owner("bh1f1"), Some(1));
    for bad in [
        "bh123", "bh123n", "bhn1", "bh123x1", "bh123n1a", "xbh123n1", "bhtest",
    ] {
        assert_eq!(netns_owner(bad), None, "{bad}");
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `cond` until it holds, for at most five seconds.
fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}
