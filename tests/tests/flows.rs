//! Flow observation and modes with real packets: the real agent applies the
//! compiled rulesets in the lab's node namespaces, an nflog observer (the
//! agent's own code) runs in each node's namespace, and real connections
//! between pods must come out as flow records with the right verdict, rule
//! and pod identity. A namespace in `learn` mode drops nothing, and its
//! would-be denials are recorded as such. Needs root.

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use bulkhead_agent::flows::observer::{Observer, Reader};
use bulkhead_agent::flows::{Flows, Limits};
use bulkhead_core::compile::observe::LOG_GROUP;
use bulkhead_proto::v1 as pb;
use bulkhead_tests::cluster::{Cluster, Family, Options};
use bulkhead_tests::traffic::{Proto, Target};
use nix::sched::{CloneFlags, setns};

const LAB: &str = env!("CARGO_BIN_EXE_bulkhead-lab");
const DEADLINE: Duration = Duration::from_secs(10);

fn namespace(name: &str, labels: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n"
    )
}

fn node(name: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n\
         status: {{addresses: [{{type: InternalIP, address: \"{ip}\"}}]}}\n"
    )
}

fn pod(ns: &str, name: &str, app: &str, node: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\n\
         metadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\n\
         spec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: lab\n    \
         ports: [{{name: http, containerPort: 80, protocol: TCP}}]\n\
         status: {{phase: Running, podIP: \"{ip}\", podIPs: [{{ip: \"{ip}\"}}]}}\n"
    )
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
    )
}

/// An observer bound in a node's namespace, polled by its own thread until
/// dropped.
struct NodeObserver {
    flows: Flows,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl NodeObserver {
    fn start(netns: &str) -> Self {
        let file = File::open(format!("/var/run/netns/{netns}")).unwrap();
        let flows = Flows::new(Limits::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (f, s) = (flows.clone(), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).unwrap();
            drop(file);
            let obs = match Observer::bind(LOG_GROUP) {
                Ok(o) => o,
                Err(e) => {
                    tx.send(Err(e.to_string())).unwrap();
                    return;
                }
            };
            tx.send(Ok(())).unwrap();
            let mut reader = Reader::default();
            while !s.load(Ordering::Relaxed) {
                obs.poll(&mut reader, &f).unwrap();
                thread::sleep(Duration::from_millis(5));
            }
        });
        rx.recv().unwrap().unwrap();
        NodeObserver {
            flows,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for NodeObserver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Collects flow reports from observers until `want` holds or the deadline.
fn wait_for(
    observers: &[&NodeObserver],
    mut want: impl FnMut(&[pb::Flow]) -> bool,
) -> Vec<pb::Flow> {
    let deadline = Instant::now() + DEADLINE;
    let mut all = Vec::new();
    loop {
        for o in observers {
            if let Some(r) = o.flows.drain() {
                all.extend(r.flows);
            }
        }
        if want(&all) || Instant::now() > deadline {
            return all;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn connect(c: &Cluster, from: &str, to: &str) -> bool {
    let ip: IpAddr = c.ip(to, Family::V4).unwrap();
    let r = c
        .topology()
        .probe(
            c.pod(from).unwrap(),
            &[Target::new(Proto::Tcp, ip, 80)],
            Duration::from_secs(2),
        )
        .unwrap();
    r[0].ok
}

fn find<'a>(flows: &'a [pb::Flow], src: &str, dst: &str) -> Option<&'a pb::Flow> {
    flows
        .iter()
        .find(|f| f.src_addr == src && f.dst_addr == dst && f.dst_port == 80)
}

#[test]
fn real_connections_become_flow_records_and_learn_mode_drops_nothing() {
    let yaml = [
        node("node-a", "172.31.0.1"),
        node("node-b", "172.31.0.2"),
        namespace("prod", ""),
        namespace("dev", "bulkhead.io/mode: learn"),
        pod("prod", "client", "client", "node-a", "10.0.1.1"),
        pod("prod", "other", "other", "node-a", "10.0.1.2"),
        pod("prod", "server", "server", "node-b", "10.0.2.1"),
        pod("dev", "db", "db", "node-a", "10.0.1.3"),
        policy(
            "prod",
            "server-from-client",
            "  podSelector: {matchLabels: {app: server}}\n  ingress:\n  - from:\n    \
             - podSelector: {matchLabels: {app: client}}\n    ports: [{port: 80}]\n",
        ),
        policy(
            "dev",
            "deny-all",
            "  podSelector: {}\n  policyTypes: [Ingress]\n",
        ),
    ]
    .concat();
    let c = Cluster::start(LAB, &yaml, Options::default()).unwrap();
    let a = NodeObserver::start(c.node_netns("node-a").unwrap());
    let b = NodeObserver::start(c.node_netns("node-b").unwrap());
    // What the agent does with every ruleset it applies.
    for (o, n) in [(&a, "node-a"), (&b, "node-b")] {
        o.flows.set_endpoints(&c.ruleset(n).unwrap().0.endpoints);
    }

    // Allowed, cross node: the ingress rule at node-b decides.
    assert!(connect(&c, "prod/client", "prod/server"));
    // Denied, cross node: no rule allows it at node-b.
    assert!(!connect(&c, "prod/other", "prod/server"));
    // Learn mode, same node: dev/db denies all ingress, but is in learn
    // mode: the connection goes through, recorded as a would-be denial.
    assert!(connect(&c, "prod/client", "dev/db"));

    let flows = wait_for(&[&a, &b], |f| {
        find(f, "10.0.1.1", "10.0.2.1").is_some_and(|x| x.dst.is_some())
            && find(f, "10.0.1.2", "10.0.2.1").is_some_and(|x| x.dst.is_some())
            && find(f, "10.0.1.1", "10.0.1.3").is_some()
    });
    let show = || format!("{flows:#?}");

    let allowed = flows
        .iter()
        .find(|f| f.src_addr == "10.0.1.1" && f.dst_addr == "10.0.2.1" && f.dst.is_some())
        .unwrap_or_else(|| panic!("no allowed flow at node-b: {}", show()));
    assert_eq!(
        allowed.verdict,
        pb::FlowVerdict::Allowed as i32,
        "{}",
        show()
    );
    assert_eq!(allowed.rule, "np prod/server-from-client ingress[0]");
    assert_eq!(allowed.protocol, pb::L4Proto::Tcp as i32);
    let dst = allowed.dst.as_ref().unwrap();
    assert_eq!(
        (dst.namespace.as_str(), dst.pod.as_str()),
        ("prod", "server")
    );
    assert_eq!(dst.labels["app"], "server");
    assert!(allowed.count >= 1);

    let denied = flows
        .iter()
        .find(|f| f.src_addr == "10.0.1.2" && f.dst_addr == "10.0.2.1" && f.dst.is_some())
        .unwrap_or_else(|| panic!("no denied flow at node-b: {}", show()));
    assert_eq!(denied.verdict, pb::FlowVerdict::Denied as i32, "{}", show());
    assert_eq!(denied.rule, "np isolated for ingress: no rule allows");

    let learn = find(&flows, "10.0.1.1", "10.0.1.3")
        .unwrap_or_else(|| panic!("no learn-mode flow at node-a: {}", show()));
    assert_eq!(
        learn.verdict,
        pb::FlowVerdict::WouldDeny as i32,
        "{}",
        show()
    );
    assert_eq!(learn.rule, "np isolated for ingress: no rule allows");
    assert_eq!(learn.src.as_ref().unwrap().pod, "client");
    assert_eq!(learn.dst.as_ref().unwrap().namespace, "dev");

    // Source side (node-a) saw the prod flows leave, allowed by default
    // (prod/client and prod/other are not isolated for egress).
    let egress = flows
        .iter()
        .find(|f| f.src_addr == "10.0.1.2" && f.dst_addr == "10.0.2.1" && f.src.is_some())
        .unwrap_or_else(|| panic!("node-a did not see prod/other leave: {}", show()));
    assert_eq!(egress.verdict, pb::FlowVerdict::Allowed as i32);
    assert_eq!(egress.rule, "not isolated");

    // Now enforce dev: the same connection is dropped, and recorded so.
    let enforced = yaml.replace("bulkhead.io/mode: learn", "bulkhead.io/mode: enforce");
    let mut c = c;
    c.apply(&enforced).unwrap();
    assert!(!connect(&c, "prod/client", "dev/db"));
    let flows = wait_for(&[&a], |f| {
        find(f, "10.0.1.1", "10.0.1.3").is_some_and(|x| x.verdict == pb::FlowVerdict::Denied as i32)
    });
    let d = find(&flows, "10.0.1.1", "10.0.1.3")
        .unwrap_or_else(|| panic!("no enforced flow: {flows:#?}"));
    assert_eq!(d.verdict, pb::FlowVerdict::Denied as i32, "{flows:#?}");
}
