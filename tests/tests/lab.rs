//! End-to-end tests of the whole system in the lab: the real controller (in
//! the fabric namespace, directory source, mTLS), the real agents (one per
//! node namespace), real connections between pod namespaces.
//!
//! - Policy scenarios: after every change, the probed matrix is exactly what
//!   `bulkhead reachability` says on the controller's own source files.
//! - Failures: the controller killed, an agent killed, a node's link to the
//!   controller cut, a bad policy file. Throughout each, probers keep trying
//!   an allowed and a denied flow: the allowed one never fails, the denied
//!   one never gets through.
//! - The CLI: `up`, `probe`, `apply`, `down`, and `down` after `up` was
//!   killed half way.
//!
//! Every test has its own lab (a unique name, its state in a temporary
//! directory), torn down when the test ends, panics included. They need
//! root; they fail, loudly, without it.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_tests::lab::probe::{Flow, FlowLog};
use bulkhead_tests::lab::{Bins, Input, Lab, LabOptions, Matrix, Watcher, lab_namespaces};
use bulkhead_tests::traffic::Target;

const LAB_BIN: &str = env!("CARGO_BIN_EXE_bulkhead-lab");
/// How long a probe that must fail waits.
const PROBE: Duration = Duration::from_millis(400);

/// A lab and the directory holding its state; the lab goes first.
struct TestLab {
    lab: Lab,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TestLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl std::ops::DerefMut for TestLab {
    fn deref_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }
}

fn bins() -> Bins {
    Bins::for_tests(LAB_BIN).unwrap()
}

fn unique(tag: &str) -> String {
    format!("{tag}-{}", std::process::id())
}

fn up(tag: &str, yaml: &str) -> TestLab {
    let dir = tempfile::Builder::new()
        .prefix("bulkhead-lab-test")
        .tempdir()
        .unwrap();
    let mut opts = LabOptions::new(&unique(tag), bins());
    opts.dir = Some(dir.path().join("state"));
    let lab = Lab::up(&opts, &[Input::new("cluster.yaml", yaml)])
        .unwrap_or_else(|e| panic!("lab {tag} did not come up: {e:#}"));
    TestLab { lab, _dir: dir }
}

fn input(name: &str, yaml: &str) -> Vec<Input> {
    vec![Input::new(name, yaml)]
}

/// Panics with both matrices unless the probes give `bulkhead
/// reachability`'s matrix on the lab's source files. A connection that
/// should pass but timed out is tried again, once, with a longer timeout
/// (a loaded machine can be slow); one that passed but should not fails at
/// once.
#[track_caller]
fn assert_matches_engine(lab: &Lab, port: u16, protocol: &str) -> Matrix {
    let engine = lab.reachability(port, protocol).unwrap();
    let mut probed = lab.probe(port, protocol, PROBE).unwrap();
    let slow_only = |p: &Matrix| {
        p.pods == engine.pods
            && p.allowed
                .iter()
                .flatten()
                .zip(engine.allowed.iter().flatten())
                .all(|(p, e)| p == e || (!p && *e))
    };
    if probed != engine && slow_only(&probed) {
        probed = lab.probe(port, protocol, Duration::from_secs(3)).unwrap();
    }
    let diffs = probed.differences(&engine);
    assert!(
        diffs.is_empty(),
        "{protocol}/{port}: the lab disagrees with bulkhead reachability:\n{}\nprobed:\n{}engine:\n{}",
        diffs.join("\n"),
        probed.to_table(),
        engine.to_table()
    );
    probed
}

#[track_caller]
fn assert_clean(logs: &[FlowLog]) {
    for l in logs {
        assert!(l.attempts > 0, "{}: never tried", l.flow.name);
        assert!(
            l.clean(),
            "{} ({}, expected {}): {} of {} attempts went the other way: {:?}",
            l.flow.name,
            l.flow.target,
            if l.flow.expect { "allowed" } else { "denied" },
            l.unexpected.len(),
            l.attempts,
            l.unexpected
        );
    }
}

/// Without terminal colour sequences.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn secs(n: u64) -> Instant {
    Instant::now() + Duration::from_secs(n)
}

// ------------------------------------------------------ policy scenarios ----

const SCENARIO_CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a, labels: {zone: a}}
---
apiVersion: v1
kind: Node
metadata: {name: node-b, labels: {zone: b}}
---
apiVersion: v1
kind: Namespace
metadata: {name: front, labels: {team: web}}
---
apiVersion: v1
kind: Namespace
metadata: {name: back, labels: {team: api}}
---
apiVersion: v1
kind: Namespace
metadata: {name: ops, labels: {team: platform}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: front, labels: {app: web}}
spec:
  nodeName: node-a
  containers: [{name: c, image: i, ports: [{name: http, containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: canary, namespace: front, labels: {app: web, track: canary}}
spec:
  containers: [{name: c, image: i, ports: [{name: http, containerPort: 80}]}]
status: {podIP: 10.50.0.9}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: back, labels: {app: api}}
spec:
  nodeName: node-b
  containers:
  - name: c
    image: i
    ports:
    - {name: http, containerPort: 80}
    - {name: metrics, containerPort: 9090}
    - {name: dns, containerPort: 53, protocol: UDP}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: back, labels: {app: db}}
spec:
  containers: [{name: c, image: i, ports: [{containerPort: 80}, {name: metrics, containerPort: 9187}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: prom, namespace: ops, labels: {app: prometheus}}
spec:
  containers: [{name: c, image: i}]
"#;

/// `back` isolated: api from `team: web` namespaces on http, db from api;
/// Prometheus into `back` on the named `metrics` port (9090 on api, 9187 on
/// db); UDP 53 on api from anywhere.
const BACK_POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: back}
spec: {podSelector: {}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api, namespace: back}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: web}}}]
    ports: [{port: http}]
  - ports: [{port: 53, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: back}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: scrape, namespace: back}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: platform}}, podSelector: {matchLabels: {app: prometheus}}}]
    ports: [{port: metrics}]
"#;

/// `front` may only talk to `back` on 80 and to anything on UDP 53; the
/// canary may also talk within `front` (egress with an ipBlock).
const FRONT_EGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress, namespace: front}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {team: api}}}]
    ports: [{port: 80}]
  - ports: [{port: 53, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: canary-local, namespace: front}
spec:
  podSelector: {matchLabels: {track: canary}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.50.0.0/16]}}]
"#;

/// The canary becomes stable (a label change in place).
const CANARY_PROMOTED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: canary, namespace: front, labels: {app: web, track: stable}}
spec: {containers: [{name: c, image: i}]}
"#;

/// `ops` loses its team label; a new pod appears in `back`.
const OPS_RELABELLED_AND_A_NEW_POD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: ops, labels: {team: other}}
---
apiVersion: v1
kind: Pod
metadata: {name: worker, namespace: back, labels: {app: api}}
spec:
  containers: [{name: c, image: i, ports: [{name: http, containerPort: 80}, {name: metrics, containerPort: 9090}]}]
"#;

#[test]
fn the_probed_matrix_is_the_engines_through_every_change() {
    let mut t = up("scen", SCENARIO_CLUSTER);
    let pods: Vec<String> = t.pods().into_iter().map(|p| p.key).collect();
    assert_eq!(
        pods,
        [
            "back/api",
            "back/db",
            "front/canary",
            "front/web",
            "ops/prom"
        ]
    );
    // Addresses from the file are kept, the others handed out; pods
    // without a node are spread.
    assert_eq!(
        t.pod("front/canary").unwrap().ips[0].to_string(),
        "10.50.0.9"
    );
    assert_eq!(t.pod("back/api").unwrap().node, "node-b");
    assert_eq!(t.pod("ops/prom").unwrap().tcp_ports, [80]);
    let open = assert_matches_engine(&t, 80, "TCP");
    assert_eq!(open.count_allowed(), 25, "no policy: all open");

    t.apply(&input("back.yaml", BACK_POLICIES)).unwrap();
    let m = assert_matches_engine(&t, 80, "TCP");
    assert_eq!(m.get("front/web", "back/api"), Some(true));
    assert_eq!(m.get("ops/prom", "back/api"), Some(false));
    assert_eq!(m.get("back/api", "back/db"), Some(true));
    let metrics = assert_matches_engine(&t, 9090, "TCP");
    assert_eq!(metrics.get("ops/prom", "back/api"), Some(true));
    let pg = assert_matches_engine(&t, 9187, "TCP");
    assert_eq!(pg.get("ops/prom", "back/db"), Some(true));
    assert_eq!(pg.get("ops/prom", "back/api"), Some(false));
    let dns = assert_matches_engine(&t, 53, "UDP");
    assert_eq!(dns.get("back/db", "back/api"), Some(true));

    t.apply(&input("front.yaml", FRONT_EGRESS)).unwrap();
    let m = assert_matches_engine(&t, 80, "TCP");
    assert_eq!(m.get("front/web", "ops/prom"), Some(false));
    assert_eq!(m.get("front/canary", "ops/prom"), Some(true), "ipBlock");
    assert_eq!(m.get("front/canary", "front/web"), Some(true), "ipBlock");
    assert_matches_engine(&t, 53, "UDP");

    // Labels change in place: same address, node and server.
    let before = t.pod("front/canary").unwrap();
    t.apply(&input("promote.yaml", CANARY_PROMOTED)).unwrap();
    assert_eq!(t.pod("front/canary").unwrap(), before);
    let m = assert_matches_engine(&t, 80, "TCP");
    assert_eq!(m.get("front/canary", "ops/prom"), Some(false));

    t.apply(&input("ops.yaml", OPS_RELABELLED_AND_A_NEW_POD))
        .unwrap();
    assert_eq!(t.pods().len(), 6);
    assert_matches_engine(&t, 80, "TCP");
    let metrics = assert_matches_engine(&t, 9090, "TCP");
    assert_eq!(metrics.get("ops/prom", "back/worker"), Some(false));

    // Deleting: a pod goes with its namespace and server; a namespace goes
    // with its pods; policies go.
    let prom_netns = t.pod("ops/prom").unwrap().netns;
    t.delete(&input("ops.yaml", OPS_RELABELLED_AND_A_NEW_POD))
        .unwrap();
    assert!(t.pod("back/worker").is_err());
    assert!(t.pod("ops/prom").is_err());
    assert!(!t.source_dir().join("pod.back.worker.yaml").exists());
    assert!(!t.source_dir().join("namespace.ops.yaml").exists());
    assert!(!lab_namespaces(t.name()).unwrap().contains(&prom_netns));
    t.delete(&input(
        "all.yaml",
        &format!("{BACK_POLICIES}\n---\n{FRONT_EGRESS}"),
    ))
    .unwrap();
    let m = assert_matches_engine(&t, 80, "TCP");
    assert_eq!(m.count_allowed(), 16, "4 pods, all open again");

    // Applying what is there already changes nothing and still returns.
    let s = t.apply(&input("promote.yaml", CANARY_PROMOTED)).unwrap();
    assert!(s.written.files.is_empty(), "{:?}", s.written.files);
}

// ---------------------------------------------------------- failures ----

const FAIL_CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
---
apiVersion: v1
kind: Node
metadata: {name: node-b}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: x, labels: {app: client}}
spec: {nodeName: node-a, containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: ok, namespace: x, labels: {app: ok}}
spec: {nodeName: node-b, containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: no, namespace: x, labels: {app: no}}
spec: {nodeName: node-b, containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: later-a, namespace: x, labels: {app: later}}
spec: {nodeName: node-a, containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: later-b, namespace: x, labels: {app: later}}
spec: {nodeName: node-b, containers: [{name: c, image: i}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: x}
spec: {podSelector: {}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ok, namespace: x}
spec:
  podSelector: {matchLabels: {app: ok}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]
"#;

/// Lets the client into both `later` pods (one on each node).
const ALLOW_LATER: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-later, namespace: x}
spec:
  podSelector: {matchLabels: {app: later}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]
"#;

/// Probers from the client: to `ok` (must always pass) and `no` (never),
/// both across nodes.
fn watch(lab: &Lab) -> Watcher {
    let client = lab.pod("x/client").unwrap();
    let flows = ["ok", "no"]
        .into_iter()
        .map(|p| {
            let pod = lab.pod(&format!("x/{p}")).unwrap();
            Flow {
                name: format!("x/client -> x/{p}"),
                target: Target::tcp(pod.ips[0], 80),
                expect: p == "ok",
            }
        })
        .collect();
    Watcher::start(&client.netns, flows, Duration::from_millis(300)).unwrap()
}

/// The client's view of the two `later` pods.
fn later(m: &Matrix) -> (Option<bool>, Option<bool>) {
    (
        m.get("x/client", "x/later-a"),
        m.get("x/client", "x/later-b"),
    )
}

#[test]
fn a_killed_controller_changes_nothing_and_catches_up_when_back() {
    let mut t = up("ctl", FAIL_CLUSTER);
    let before = assert_matches_engine(&t, 80, "TCP");
    assert_eq!(later(&before), (Some(false), Some(false)));
    let g0 = t.status().unwrap().generation;
    let w = watch(&t);
    let a = w.attempts();
    w.wait_attempts(&a, 2, secs(10)).unwrap();

    t.kill_controller().unwrap();
    assert!(t.controller_pid().is_none());
    assert!(t.status().is_err(), "nobody answers /status");
    // Enforcement goes on, unchanged.
    let a = w.attempts();
    w.wait_attempts(&a, 3, secs(10)).unwrap();
    // A change while it is down waits in the source directory.
    let written = t.write(&input("later.yaml", ALLOW_LATER)).unwrap();
    assert_eq!(written.revision_before, None);
    assert_eq!(
        t.probe(80, "TCP", PROBE).unwrap(),
        before,
        "applied without a controller?"
    );
    for n in t.node_names() {
        assert!(
            t.kernel_generation(&n).unwrap().is_some(),
            "{n} lost its table"
        );
    }

    t.start_controller().unwrap();
    let s = t.wait_synced().unwrap();
    assert!(
        s.generation > g0,
        "generations go on growing across restarts"
    );
    let after = assert_matches_engine(&t, 80, "TCP");
    assert_eq!(later(&after), (Some(true), Some(true)));
    let a = w.attempts();
    w.wait_attempts(&a, 2, secs(10)).unwrap();
    assert_clean(&w.stop().unwrap());
}

#[test]
fn a_killed_agent_leaves_its_table_and_adopts_it_when_restarted() {
    let mut t = up("agt", FAIL_CLUSTER);
    let before = assert_matches_engine(&t, 80, "TCP");
    let w = watch(&t);
    let b = "node-b".to_owned();
    let g = t.kernel_generation(&b).unwrap().unwrap();
    assert_eq!(
        Some(g),
        t.status().unwrap().nodes[&b].acked_generation,
        "the kernel holds what the agent acked"
    );

    t.kill_agent(&b).unwrap();
    assert!(t.agent_pid(&b).is_none());
    assert_eq!(t.kernel_generation(&b).unwrap(), Some(g), "the table stays");
    let a = w.attempts();
    w.wait_attempts(&a, 3, secs(10)).unwrap();

    // A change meanwhile reaches node-a only.
    let written = t.write(&input("later.yaml", ALLOW_LATER)).unwrap();
    let s = t.wait_written_on(written, &["node-a".to_owned()]).unwrap();
    assert!(!s.status.nodes[&b].connected);
    assert!(!s.status.nodes[&b].synced());
    let m = t.probe(80, "TCP", PROBE).unwrap();
    assert_eq!(
        later(&m),
        (Some(true), Some(false)),
        "node-b kept its table"
    );
    assert_eq!(t.kernel_generation(&b).unwrap(), Some(g));
    let deltas = s.status.nodes[&b].deltas_sent;

    t.start_agent(&b).unwrap();
    let s = t.wait_synced().unwrap();
    let log = strip_ansi(&std::fs::read_to_string(t.agent_log(&b)).unwrap());
    assert!(
        log.lines()
            .any(|l| l.contains("adopting the table") && l.contains(&format!("generation={g}"))),
        "the restarted agent did not say it adopted generation {g}:\n{log}"
    );
    assert!(
        s.nodes[&b].deltas_sent > deltas,
        "the controller sent a snapshot, not a delta from the adopted generation: {:?}",
        s.nodes[&b]
    );
    assert_eq!(
        t.kernel_generation(&b).unwrap(),
        Some(s.nodes[&b].current_generation)
    );
    let after = assert_matches_engine(&t, 80, "TCP");
    assert_ne!(after, before);
    assert_eq!(later(&after), (Some(true), Some(true)));
    assert_clean(&w.stop().unwrap());
}

#[test]
fn a_node_cut_off_the_controller_catches_up_when_the_link_is_back() {
    let mut t = up("cut", FAIL_CLUSTER);
    t.set_sync_timeout(Duration::from_secs(30));
    assert_matches_engine(&t, 80, "TCP");
    let w = watch(&t);
    let b = "node-b".to_owned();
    let g = t.kernel_generation(&b).unwrap().unwrap();

    t.cut_link(&b).unwrap();
    // Only the control traffic is cut: pods across nodes still talk.
    let a = w.attempts();
    w.wait_attempts(&a, 3, secs(10)).unwrap();
    // The change reaches the other node at once (apply leaves node-b out).
    let s = t.apply(&input("later.yaml", ALLOW_LATER)).unwrap();
    assert!(s.status.nodes["node-a"].synced());
    assert!(!s.status.nodes[&b].synced(), "{:?}", s.status.nodes[&b]);
    let m = t.probe(80, "TCP", PROBE).unwrap();
    assert_eq!(later(&m), (Some(true), Some(false)));
    assert_eq!(t.kernel_generation(&b).unwrap(), Some(g));
    // The controller notices the silence.
    t.wait_until_on(&[], secs(30), "node-b to be seen gone", |s, _| {
        !s.nodes[&b].connected
    })
    .unwrap();

    t.restore_link(&b).unwrap();
    let s = t.wait_synced().unwrap();
    assert!(s.nodes[&b].synced());
    let after = assert_matches_engine(&t, 80, "TCP");
    assert_eq!(later(&after), (Some(true), Some(true)));
    assert_clean(&w.stop().unwrap());
}

const TEAM_POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: team, namespace: x}
spec:
  podSelector: {matchLabels: {app: later}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]
"#;

/// The same file, broken: the policy is changed (no longer lets anyone in)
/// and has an invalid operator.
const TEAM_POLICY_BROKEN: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: team, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: app, operator: Equals, values: [later]}]}
"#;

#[test]
fn a_bad_policy_file_changes_nothing_and_is_reported() {
    let mut t = up("bad", FAIL_CLUSTER);
    let w = watch(&t);
    // A good file first, written as it is.
    let s = {
        let w = t.lab.write_raw("team.yaml", TEAM_POLICY).unwrap();
        t.wait_written(w)
    }
    .unwrap();
    assert!(
        s.status.diagnostics.is_empty(),
        "{:?}",
        s.status.diagnostics
    );
    let good = assert_matches_engine(&t, 80, "TCP");
    assert_eq!(later(&good), (Some(true), Some(true)));
    let g = s.status.generation;

    // Broken: its last good content stays in force, and the file is named.
    let s = {
        let w = t.lab.write_raw("team.yaml", TEAM_POLICY_BROKEN).unwrap();
        t.wait_written(w)
    }
    .unwrap();
    assert_eq!(
        s.status.generation, g,
        "a bad file must not make a new generation"
    );
    assert!(
        s.status
            .diagnostics
            .iter()
            .any(|d| d.contains("team.yaml") && d.contains("Equals")),
        "{:?}",
        s.status.diagnostics
    );
    assert_eq!(t.probe(80, "TCP", PROBE).unwrap(), good);

    // Not even YAML: nothing changes either.
    let s = {
        let w = t
            .lab
            .write_raw("garbage.yaml", "kind: [unclosed\n")
            .unwrap();
        t.wait_written(w)
    }
    .unwrap();
    assert_eq!(s.status.generation, g);
    assert!(
        s.status
            .diagnostics
            .iter()
            .any(|d| d.contains("garbage.yaml")),
        "{:?}",
        s.status.diagnostics
    );
    assert_eq!(t.probe(80, "TCP", PROBE).unwrap(), good);

    // The lab itself refuses bad input, naming the problem.
    let e = t
        .apply(&input("team.yaml", TEAM_POLICY_BROKEN))
        .unwrap_err()
        .to_string();
    assert!(e.contains("Equals"), "{e}");

    // Fixed: reported problems go away.
    {
        let w = t.lab.remove_raw("garbage.yaml").unwrap();
        t.wait_written(w)
    }
    .unwrap();
    let s = {
        let w = t.lab.remove_raw("team.yaml").unwrap();
        t.wait_written(w)
    }
    .unwrap();
    assert!(
        s.status.diagnostics.is_empty(),
        "{:?}",
        s.status.diagnostics
    );
    let m = assert_matches_engine(&t, 80, "TCP");
    assert_eq!(later(&m), (Some(false), Some(false)));
    assert_clean(&w.stop().unwrap());
}

// --------------------------------------------------------------- the CLI ----

fn lab_cli(state: &Path, args: &[&str]) -> std::process::Output {
    let b = bins();
    Command::new(LAB_BIN)
        .args(args)
        .env("BULKHEAD_LAB_DIR", state)
        .env("BULKHEAD_BIN", &b.bulkhead)
        .env("BULKHEAD_AGENT_BIN", &b.agent)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[track_caller]
fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Downs lab `name` (state in `state`) when dropped, whatever happened.
struct DownOnDrop(String, PathBuf);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = bulkhead_tests::lab::down_named(&self.0, Some(&self.1));
    }
}

#[test]
fn the_cli_brings_a_lab_up_changes_it_and_takes_it_down_even_after_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("cli");
    let state = tmp.path().join("state");
    let _guard = DownOnDrop(name.clone(), state.clone());
    let files = tmp.path();
    std::fs::write(files.join("cluster.yaml"), FAIL_CLUSTER).unwrap();
    std::fs::write(files.join("later.yaml"), ALLOW_LATER).unwrap();
    let cluster = files.join("cluster.yaml").display().to_string();
    let later_file = files.join("later.yaml").display().to_string();

    let out = ok(&lab_cli(&state, &["up", "-f", &cluster, "--name", &name]));
    assert!(out.contains("is up"), "{out}");
    assert_eq!(lab_namespaces(&name).unwrap().len(), 1 + 2 + 5);
    // A second lab of the same name is refused.
    let again = lab_cli(&state, &["up", "-f", &cluster, "--name", &name]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("up already"));

    // `probe -o json` prints exactly what `bulkhead reachability -o json` does.
    let reach = |source: &Path| {
        let out = Command::new(&bins().bulkhead)
            .args(["reachability", "-o", "json", "-f"])
            .arg(source)
            .output()
            .unwrap();
        ok(&out)
    };
    let source = state.join("source");
    let probed = ok(&lab_cli(
        &state,
        &[
            "probe",
            "--name",
            &name,
            "-o",
            "json",
            "--timeout-ms",
            "400",
        ],
    ));
    assert_eq!(probed, reach(&source));
    ok(&lab_cli(
        &state,
        &["apply", "--name", &name, "-f", &later_file],
    ));
    let probed = ok(&lab_cli(
        &state,
        &[
            "probe",
            "--name",
            &name,
            "-o",
            "json",
            "--timeout-ms",
            "400",
        ],
    ));
    assert_eq!(probed, reach(&source));
    let table = ok(&lab_cli(
        &state,
        &["probe", "--name", &name, "--timeout-ms", "400"],
    ));
    let engine = ok(&Command::new(&bins().bulkhead)
        .args(["reachability", "-f"])
        .arg(&source)
        .output()
        .unwrap());
    assert_eq!(table, engine);

    let lab = Lab::open(&name, Some(&state)).unwrap();
    let controller = lab.controller_pid().unwrap();
    drop(lab);
    ok(&lab_cli(&state, &["down", "--name", &name]));
    assert!(lab_namespaces(&name).unwrap().is_empty());
    assert!(!state.exists());
    assert!(
        !bulkhead_tests::lab::procs::alive(controller, "bulkhead"),
        "the controller survived down"
    );
    let out = ok(&lab_cli(&state, &["down", "--name", &name]));
    assert!(out.contains("nothing to remove"), "{out}");

    // `up` killed half way: `down` still finds and removes everything.
    let mut many = String::new();
    for i in 0..30 {
        many.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: crash}}\nspec: {{containers: [{{name: c, image: i}}]}}\n"
        ));
    }
    std::fs::write(files.join("many.yaml"), many).unwrap();
    let b = bins();
    let mut child = Command::new(LAB_BIN)
        .args(["up", "--name", &name, "-f"])
        .arg(files.join("many.yaml"))
        .env("BULKHEAD_LAB_DIR", &state)
        .env("BULKHEAD_BIN", &b.bulkhead)
        .env("BULKHEAD_AGENT_BIN", &b.agent)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = secs(30);
    loop {
        let pods = std::fs::read_to_string(state.join("lab.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["topology"]["pods"].as_array().map(Vec::len))
            .unwrap_or(0);
        if pods >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "up made no pods");
        assert!(child.try_wait().unwrap().is_none(), "up ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!lab_namespaces(&name).unwrap().is_empty());
    let out = ok(&lab_cli(&state, &["down", "--name", &name]));
    assert!(out.contains("deleted"), "{out}");
    assert!(lab_namespaces(&name).unwrap().is_empty());
    assert!(!state.exists());
}
