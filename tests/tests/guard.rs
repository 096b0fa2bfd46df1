//! The Kubernetes API guard with real packets: a two-node lab where node-b
//! plays the host-network API server (6443) and both nodes a kubelet
//! (10250), node-a holds the metadata address, and node-a's kube-proxy
//! stand-in DNATs the `kubernetes` Service VIP to a decoy pod — an address
//! the guard does not otherwise know, so only the conntrack original
//! destination can stop it. Untrusted pods are cut off from all of it,
//! trusted ones are not, an Admin ClusterNetworkPolicy Accept opens the
//! kubelet (the escape hatch), and `monitor` lets everything through.
//! Every probe is also checked against the verdict engine.
//! The lab tests need root; they fail, loudly, without it.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Child, Command};
use std::time::Duration;

use bulkhead_core::Protocol;
use bulkhead_core::verdict::{self, Endpoint, Query};
use bulkhead_tests::cluster::{Cluster, Options};
use bulkhead_tests::traffic::{Proto, Target};

const LAB: &str = env!("CARGO_BIN_EXE_bulkhead-lab");
const VIP: &str = "10.96.0.1";
const METADATA: &str = "169.254.169.254";
const NODE_A: &str = "172.31.0.1";
const NODE_B: &str = "172.31.0.2";

fn yaml(extra: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: app}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: kube-system}}
---
apiVersion: v1
kind: Node
metadata: {{name: node-a}}
status: {{addresses: [{{type: InternalIP, address: {NODE_A}}}]}}
---
apiVersion: v1
kind: Node
metadata: {{name: node-b}}
status: {{addresses: [{{type: InternalIP, address: {NODE_B}}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: app, labels: {{app: web}}}}
spec: {{nodeName: node-a, containers: [{{name: c, image: i}}]}}
status: {{podIP: 10.60.0.1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: agent, namespace: kube-system, labels: {{app: agent}}}}
spec: {{nodeName: node-a, containers: [{{name: c, image: i}}]}}
status: {{podIP: 10.60.0.2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: decoy, namespace: app, labels: {{app: decoy}}}}
spec: {{nodeName: node-b, containers: [{{name: c, image: i, ports: [{{containerPort: 443}}]}}]}}
status: {{podIP: 10.60.0.3}}
---
apiVersion: v1
kind: Service
metadata: {{name: kubernetes, namespace: default}}
spec: {{clusterIP: {VIP}, ports: [{{port: 443, targetPort: 6443}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: kubernetes, namespace: default, labels: {{kubernetes.io/service-name: kubernetes}}}}
addressType: IPv4
endpoints: [{{addresses: [{NODE_B}]}}]
ports: [{{port: 6443, protocol: TCP}}]
{extra}"#
    )
}

const ADMIN_ACCEPT_KUBELET: &str = r#"---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: kubelet-for-app}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: app}}}
  egress:
  - action: Accept
    to: [{nodes: {}}]
    protocols: [{tcp: {destinationPort: {number: 10250}}}]
"#;

const MONITOR: &str = r#"---
apiVersion: bulkhead.io/v1alpha1
kind: BulkheadConfig
metadata: {name: cluster}
spec: {apiGuard: {mode: Monitor}}
"#;

/// A server in a node's namespace, stopped when dropped.
struct NodeServer(Child);

impl Drop for NodeServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `bulkhead-lab serve` in a node's namespace (a host-network server),
/// once it says it is ready.
fn serve_on_node(c: &Cluster, node: &str, tcp: &str) -> NodeServer {
    let mut cmd = Command::new(LAB);
    cmd.args(["serve", "--tcp", tcp]);
    let ns = c.node_netns(node).unwrap().to_owned();
    let mut server = NodeServer(c.topology().spawn(&ns, cmd).unwrap());
    let mut line = String::new();
    BufReader::new(server.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "serve on {node}");
    server
}

/// Probes TCP `to` from pod `from`; asserts the verdict engine says the same.
fn reach(c: &Cluster, from: &str, to: &str, port: u16) -> bool {
    let ip: IpAddr = to.parse().unwrap();
    let got = c
        .topology()
        .probe(
            c.pod(from).unwrap(),
            &[Target::new(Proto::Tcp, ip, port)],
            Duration::from_millis(700),
        )
        .unwrap()
        .remove(0);
    let inv = c.inventory();
    let (ns, name) = from.split_once('/').unwrap();
    let q = Query::new(
        Endpoint::Pod(inv.pod_id(ns, name).unwrap()),
        Endpoint::Ip(ip),
        Protocol::Tcp,
        port,
    );
    assert_eq!(
        got.ok,
        verdict::passes(inv, &q),
        "{from} -> {to}:{port}: probed {} ({}), engine {:?}",
        got.ok,
        got.detail,
        verdict::evaluate(inv, &q)
    );
    got.ok
}

#[test]
fn the_api_guard_with_real_packets() {
    bulkhead_tests::require_root();
    let mut c = Cluster::start(LAB, &yaml(""), Options::default())
        .unwrap_or_else(|e| panic!("starting the cluster: {e:#}"));
    // The lab numbers node underlays 172.31.0.N in name order.
    for (node, want) in [("node-a", NODE_A), ("node-b", NODE_B)] {
        let id = c.node(node).unwrap();
        assert_eq!(c.topology().node_underlay(id).to_string(), want);
    }
    let node_a = c.node_netns("node-a").unwrap().to_owned();
    // The metadata address lives on node-a; kube-proxy's DNAT of the VIP.
    let topo = c.topology();
    topo.exec_ok(
        &node_a,
        &["ip", "addr", "add", &format!("{METADATA}/32"), "dev", "lo"],
    )
    .unwrap();
    topo.exec_ok(
        &node_a,
        &[
            "nft",
            &format!(
                "add table ip bhlabnat; add chain ip bhlabnat pre {{ type nat hook prerouting priority -100; }}; add rule ip bhlabnat pre ip daddr {VIP} tcp dport 443 dnat to 10.60.0.3:443"
            ),
        ],
    )
    .unwrap();
    let _kubelet_a = serve_on_node(&c, "node-a", "10250,80");
    let _apiserver_b = serve_on_node(&c, "node-b", "6443,10250");

    // The trusted pod (kube-system) reaches all of it: the servers are up.
    for (to, port) in [
        (VIP, 443),
        (NODE_B, 6443),
        (NODE_B, 10250),
        (NODE_A, 10250),
        (METADATA, 80),
    ] {
        assert!(
            reach(&c, "kube-system/agent", to, port),
            "agent -> {to}:{port}"
        );
    }
    // The untrusted one reaches none of it, whatever NetworkPolicy says...
    for (to, port) in [
        (VIP, 443),
        (NODE_B, 6443),
        (NODE_B, 10250),
        (NODE_A, 10250),
        (METADATA, 80),
    ] {
        assert!(!reach(&c, "app/web", to, port), "web -> {to}:{port}");
    }
    // ...but the decoy pod behind the VIP is an ordinary pod: the VIP was
    // stopped by its original destination, not by the pod's address.
    assert!(reach(&c, "app/web", "10.60.0.3", 443));

    // The escape hatch: an Admin Accept opens the kubelet on every node
    // (the own node through the input hook), and nothing else.
    c.apply(&yaml(ADMIN_ACCEPT_KUBELET)).unwrap();
    assert!(reach(&c, "app/web", NODE_A, 10250));
    assert!(reach(&c, "app/web", NODE_B, 10250));
    assert!(!reach(&c, "app/web", NODE_B, 6443));
    assert!(!reach(&c, "app/web", VIP, 443));

    // Monitor: logged, not dropped.
    c.apply(&yaml(MONITOR)).unwrap();
    for (to, port) in [(VIP, 443), (NODE_B, 6443), (NODE_A, 10250), (METADATA, 80)] {
        assert!(
            reach(&c, "app/web", to, port),
            "monitor: web -> {to}:{port}"
        );
    }
}
