//! Quarantine end to end, with real packets: a live TCP session and a UDP
//! stream between pods on different nodes are cut by `bulkhead quarantine`;
//! new attempts fail; the forensics source still connects; after `bulkhead
//! release` traffic flows again; a new pod reusing the address is not
//! quarantined. Needs root (network namespaces), like every lab test.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bulkhead_tests::lab::netio::run_in;
use bulkhead_tests::lab::quarantine::{echo_server, tcp_session, udp_stream};
use bulkhead_tests::lab::{Bins, Input, Lab, LabOptions};
use bulkhead_tests::traffic::{Target, probe};

const LAB_BIN: &str = env!("CARGO_BIN_EXE_bulkhead-lab");
const ECHO: u16 = 7000;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
---
apiVersion: v1
kind: Node
metadata: {name: node-b}
---
apiVersion: v1
kind: Node
metadata: {name: node-c}
---
apiVersion: v1
kind: Pod
metadata: {name: victim, namespace: x, labels: {app: web}}
spec:
  nodeName: node-a
  containers: [{name: c, image: i, ports: [{containerPort: 80}, {containerPort: 5353, protocol: UDP}]}]
status: {podIP: 10.244.9.9}
---
apiVersion: v1
kind: Pod
metadata: {name: peer, namespace: x, labels: {app: client}}
spec:
  nodeName: node-b
  containers: [{name: c, image: i, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: forensics, namespace: sec}
spec:
  nodeName: node-c
  containers: [{name: c, image: i, ports: [{containerPort: 80}]}]
"#;

/// The victim gone, a newcomer on another node with its address.
const NEWCOMER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: newcomer, namespace: x, labels: {app: web}}
spec:
  nodeName: node-c
  containers: [{name: c, image: i, ports: [{containerPort: 80}]}]
status: {podIP: 10.244.9.9}
"#;

const VICTIM: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: victim, namespace: x, labels: {app: web}}
spec:
  nodeName: node-a
  containers: [{name: c, image: i, ports: [{containerPort: 80}, {containerPort: 5353, protocol: UDP}]}]
status: {podIP: 10.244.9.9}
"#;

/// Waits until namespace `netns` has no TCP socket but listeners and
/// TIME-WAIT ones.
fn wait_no_connections(netns: &str) {
    let deadline = secs(30);
    loop {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", netns, "ss", "-Htan"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let busy: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("LISTEN") && !l.starts_with("TIME-WAIT"))
            .collect();
        if out.status.success() && busy.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sockets still open in {netns}: {busy:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn secs(n: u64) -> Instant {
    Instant::now() + Duration::from_secs(n)
}

/// A TCP connection from pod `from` to `to`:80, within 400 ms.
fn connects(lab: &Lab, from: &str, to: &str) -> bool {
    let from = lab.pod(from).unwrap();
    let to = lab.pod(to).unwrap();
    let t = Target::tcp(to.ips[0], 80);
    run_in(&from.netns, move || {
        Ok(probe(t, Duration::from_millis(400)).ok)
    })
    .unwrap()
}

/// Waits until `connects` gives `want` (the controller picks the change up
/// from the directory, then every agent applies it).
fn wait_connects(lab: &Lab, from: &str, to: &str, want: bool) {
    let deadline = secs(20);
    while connects(lab, from, to) != want {
        assert!(
            Instant::now() < deadline,
            "{from} -> {to}: still {} after 20s\n{}",
            !want,
            lab.log_tails(30)
        );
    }
}

#[test]
fn quarantine_cuts_live_sessions_keeps_forensics_and_release_restores() {
    let dir = tempfile::Builder::new()
        .prefix("bulkhead-quar-test")
        .tempdir()
        .unwrap();
    let mut opts = LabOptions::new(
        &format!("quar-{}", std::process::id()),
        Bins::for_tests(LAB_BIN).unwrap(),
    );
    opts.dir = Some(dir.path().join("state"));
    let mut lab = Lab::up(&opts, &[Input::new("cluster.yaml", CLUSTER)]).unwrap();

    let victim = lab.pod("x/victim").unwrap();
    let peer = lab.pod("x/peer").unwrap();
    assert_ne!(victim.node, peer.node);
    let echo = echo_server(&lab, &victim.netns, ECHO).unwrap();
    let tcp = tcp_session(
        &peer.netns,
        SocketAddr::new(victim.ips[0], ECHO),
        Duration::from_millis(20),
        Duration::from_millis(500),
    )
    .unwrap();
    let udp = udp_stream(
        &peer.netns,
        SocketAddr::new(victim.ips[0], 5353),
        Duration::from_millis(20),
    )
    .unwrap();
    tcp.wait_oks(5, secs(10)).unwrap();
    udp.wait_oks(5, secs(10)).unwrap();
    assert!(connects(&lab, "sec/forensics", "x/victim"));

    // Quarantine: both live flows stop, new attempts fail both ways.
    lab.quarantine("x/victim", "lab test", &["sec/forensics"])
        .unwrap();
    let deadline = secs(20);
    while tcp.ended().is_none() {
        assert!(
            Instant::now() < deadline,
            "the TCP session was not cut\n{}",
            lab.log_tails(30)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    udp.wait_silent(Duration::from_secs(1), secs(20)).unwrap();
    let udp_oks = udp.oks();
    assert!(!connects(&lab, "x/peer", "x/victim"));
    assert!(!connects(&lab, "x/victim", "x/peer"));
    assert!(!connects(&lab, "x/victim", "sec/forensics"));
    // The forensics source still connects.
    assert!(connects(&lab, "sec/forensics", "x/victim"));
    assert_eq!(udp.oks(), udp_oks, "the UDP stream came back");
    // The victim's own node's agent cut its conntrack entries.
    let agent_log = std::fs::read_to_string(lab.agent_log(&victim.node)).unwrap();
    assert!(
        agent_log.contains("quarantine: connections cut"),
        "{agent_log}"
    );

    // --list shows it, with the nodes that enforce it.
    let deadline = secs(10);
    loop {
        let list = lab.bulkhead_cli(&["quarantine", "--list"]).unwrap();
        assert!(list.contains("x/victim"), "{list}");
        assert!(
            list.contains("reason: lab test") && list.contains("by lab"),
            "{list}"
        );
        if ["node-a", "node-b", "node-c"]
            .iter()
            .all(|n| list.contains(&format!("enforced on {n}")))
        {
            break;
        }
        assert!(Instant::now() < deadline, "not enforced everywhere: {list}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Release: traffic flows again, the same UDP stream included.
    lab.release("x/victim").unwrap();
    wait_connects(&lab, "x/peer", "x/victim", true);
    assert!(connects(&lab, "x/victim", "x/peer"));
    udp.wait_oks(3, secs(10)).unwrap();
    let tcp2 = tcp_session(
        &peer.netns,
        SocketAddr::new(victim.ips[0], ECHO),
        Duration::from_millis(20),
        Duration::from_millis(500),
    )
    .unwrap();
    tcp2.wait_oks(3, secs(10)).unwrap();
    let audit = std::fs::read_to_string(lab.source_dir().join(".bulkhead-audit.jsonl")).unwrap();
    for action in [
        "\"quarantine\"",
        "\"applied\"",
        "\"enforced\"",
        "\"release\"",
        "\"released\"",
    ] {
        assert!(audit.contains(action), "no {action} record: {audit}");
    }
    drop((tcp, tcp2, udp, echo));
    // Let the victim's connections close before it is quarantined again
    // (once quarantined, their FINs would be dropped).
    wait_no_connections(&victim.netns);

    // IP reuse: quarantined again, the victim goes, a newcomer takes its
    // address: the newcomer is not quarantined.
    lab.quarantine("x/victim", "again", &[]).unwrap();
    wait_connects(&lab, "x/peer", "x/victim", false);
    lab.delete(&[Input::new("victim.yaml", VICTIM)]).unwrap();
    // The kernel tears a namespace (and the veth, and its route) down
    // after `ip netns del` returns.
    let node_ns = lab.node_netns(&victim.node).unwrap();
    let deadline = secs(60);
    loop {
        let out = std::process::Command::new("ip")
            .args(["-n", &node_ns, "route", "show", "10.244.9.9/32"])
            .output()
            .unwrap();
        if out.status.success() && out.stdout.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the route to the removed victim stays"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    lab.apply(&[Input::new("newcomer.yaml", NEWCOMER)]).unwrap();
    assert_eq!(lab.pod("x/newcomer").unwrap().ips, victim.ips);
    wait_connects(&lab, "x/peer", "x/newcomer", true);
    assert!(connects(&lab, "x/newcomer", "x/peer"));
    lab.down().unwrap();
}
