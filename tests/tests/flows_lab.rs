//! Issue 8 end to end, in the lab: a namespace learns a realistic traffic
//! pattern (a frontend calling an API calling a database, plus a job), the
//! controller restarts in the middle and keeps the baseline, `bulkhead
//! recommend` turns the baseline into NetworkPolicies, they are applied and
//! the namespace enforces: the same pattern passes, an unobserved flow is
//! dropped and an alert names it.
//!
//! Needs root (network namespaces) and the agent's flow reports.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use bulkhead_tests::lab::netio;
use bulkhead_tests::lab::{Bins, Input, Lab, LabOptions};
use bulkhead_tests::traffic::{self, Target};

const LAB_BIN: &str = env!("CARGO_BIN_EXE_bulkhead-lab");

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
kind: Namespace
metadata: {name: shop, labels: {bulkhead.io/mode: learn}}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend-7d9f8b6c5d-x2x4q, namespace: shop, labels: {app: frontend, pod-template-hash: 7d9f8b6c5d}}
spec: {nodeName: node-a, containers: [{name: c, image: i, ports: [{name: http, containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: api-6c8d9f7b4-zq9r2, namespace: shop, labels: {app: api, pod-template-hash: 6c8d9f7b4}}
spec: {nodeName: node-b, containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: shop, labels: {app: db}}
spec: {nodeName: node-a, containers: [{name: c, image: i, ports: [{name: pg, containerPort: 5432}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: report-x7x8z, namespace: shop, labels: {job-name: report}}
spec: {nodeName: node-b, containers: [{name: c, image: i}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
"#;

const ENFORCE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {bulkhead.io/mode: enforce}}
"#;

const FRONTEND: &str = "shop/frontend-7d9f8b6c5d-x2x4q";
const API: &str = "shop/api-6c8d9f7b4-zq9r2";
const DB: &str = "shop/db-0";
const REPORT: &str = "shop/report-x7x8z";

/// (source pod, destination pod, port, source workload, destination workload)
const PATTERN: [(&str, &str, u16, &str, &str); 3] = [
    (FRONTEND, API, 8080, "frontend", "api"),
    (API, DB, 5432, "api", "db"),
    (REPORT, API, 8080, "report", "api"),
];

fn secs(n: u64) -> Instant {
    Instant::now() + Duration::from_secs(n)
}

/// One TCP connection from `src` to `dst`:`port`, from inside `src`'s namespace.
fn connect(lab: &Lab, src: &str, dst: &str, port: u16, timeout: Duration) -> traffic::ProbeResult {
    let s = lab.pod(src).unwrap();
    let d = lab.pod(dst).unwrap();
    let ip: IpAddr = d.ips[0];
    netio::run_in(&s.netns, move || {
        Ok(traffic::probe(Target::tcp(ip, port), timeout))
    })
    .unwrap()
}

fn drive_pattern(lab: &Lab) {
    for (src, dst, port, ..) in PATTERN {
        let r = connect(lab, src, dst, port, Duration::from_secs(3));
        assert!(
            r.ok,
            "{src} -> {dst}:{port} failed: {}\n{}",
            r.detail,
            lab.log_tails(30)
        );
    }
}

/// The learned edges between workloads of `shop`, as (src, dst, port).
fn learned(graph: &serde_json::Value) -> Vec<(String, String, u64)> {
    let mut out: Vec<(String, String, u64)> = graph["edges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e["learned"] == true
                && e["src"]["namespace"] == "shop"
                && e["dst"]["namespace"] == "shop"
        })
        .map(|e| {
            (
                e["src"]["name"].as_str().unwrap_or_default().to_owned(),
                e["dst"]["name"].as_str().unwrap_or_default().to_owned(),
                e["port"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

fn expected_edges() -> Vec<(String, String, u64)> {
    let mut v: Vec<_> = PATTERN
        .iter()
        .map(|(_, _, port, s, d)| (s.to_string(), d.to_string(), u64::from(*port)))
        .collect();
    v.sort();
    v
}

fn wait_for<T>(deadline: Instant, what: &str, lab: &Lab, mut f: impl FnMut() -> Option<T>) -> T {
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            lab.log_tails(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn learn_restart_recommend_enforce_and_alert() {
    let dir = tempfile::Builder::new()
        .prefix("bulkhead-lab-test")
        .tempdir()
        .unwrap();
    let mut opts = LabOptions::new(
        &format!("flows-{}", std::process::id()),
        Bins::for_tests(LAB_BIN).unwrap(),
    );
    opts.dir = Some(dir.path().join("state"));
    let mut lab = Lab::up(&opts, &[Input::new("cluster.yaml", CLUSTER)])
        .unwrap_or_else(|e| panic!("lab did not come up: {e:#}"));

    // Learn: the default-deny policy does not drop anything in learn mode.
    drive_pattern(&lab);
    let want = expected_edges();
    wait_for(secs(30), "the pattern learned in /flows", &lab, || {
        (learned(&lab.flows().ok()?) == want).then_some(())
    });
    // ... and saved in the state directory (the controller is killed, not
    // stopped: only what was saved before survives).
    let state = lab.controller_state_dir().join("flows.json");
    wait_for(secs(10), "the baseline saved", &lab, || {
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&state).ok()?).ok()?;
        (learned(&doc) == want).then_some(())
    });

    // The controller crashes and comes back: the baseline is still there,
    // before any new traffic.
    lab.kill_controller().unwrap();
    lab.start_controller().unwrap();
    lab.wait_synced().unwrap();
    assert_eq!(
        learned(&lab.flows().unwrap()),
        want,
        "the baseline did not survive the restart"
    );

    // Recommend, apply, enforce.
    let out = Command::new(&lab.bins().bulkhead)
        .args(["recommend", "-n", "shop", "--state-dir"])
        .arg(lab.controller_state_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "recommend failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    for name in ["frontend", "api", "db", "report"] {
        assert!(
            yaml.contains(&format!("name: bulkhead-learned-{name}")),
            "no policy for {name}:\n{yaml}"
        );
    }
    assert!(
        yaml.contains("port: http") && yaml.contains("port: pg"),
        "named ports:\n{yaml}"
    );
    lab.apply(&[Input::new("recommended.yaml", &yaml)]).unwrap();
    lab.apply(&[Input::new("enforce.yaml", ENFORCE)]).unwrap();

    // The same pattern passes.
    drive_pattern(&lab);
    // An unobserved flow is dropped ...
    let tried = bulkhead_tests::lab::unix_millis(std::time::SystemTime::now());
    let r = connect(&lab, FRONTEND, DB, 5432, Duration::from_millis(500));
    assert!(
        !r.ok,
        "frontend -> db passed in enforce: {}\n{yaml}",
        r.detail
    );
    // ... and an alert names it.
    let log = lab.controller_log();
    let alert = wait_for(secs(15), "an alert for frontend -> db", &lab, || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.lines()
            .find(|l| {
                l.contains("bulkhead::alert")
                    && l.contains("\"srcWorkload\":\"shop/frontend\"")
                    && l.contains("\"dstWorkload\":\"shop/db\"")
                    && l.contains("\"port\":5432")
            })
            .map(str::to_owned)
    });
    assert!(alert.contains("\"verdict\":\"DENIED\""), "{alert}");
    // Within 2 s of the report (the agent reports every second).
    let json: serde_json::Value =
        serde_json::from_str(&alert[alert.find('{').unwrap()..alert.rfind('}').unwrap() + 1])
            .unwrap();
    let at = json["unixMillis"].as_u64().unwrap();
    assert!(
        at >= tried && at - tried < 3_000,
        "alert {} ms after the attempt",
        at.saturating_sub(tried)
    );
    // No alert for a learned edge.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text
            .lines()
            .any(|l| l.contains("bulkhead::alert") && l.contains("\"srcWorkload\":\"shop/api\"")),
        "a learned edge raised an alert:\n{text}"
    );
    // The flow log has the flows, in JSON lines.
    let flows = std::fs::read_to_string(lab.logs_dir().join("flows.log")).unwrap();
    assert!(
        flows
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
    );
    assert!(
        flows.lines().any(|l| l.contains("\"mode\":\"learn\"")),
        "{flows}"
    );
    assert!(
        flows.lines().any(|l| l.contains("\"mode\":\"enforce\"")),
        "{flows}"
    );
}
