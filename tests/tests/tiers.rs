//! The tiers with real packets: `examples/tiers` (tenant fences, Admin and
//! Baseline ClusterNetworkPolicies, NetworkPolicies) compiled for each node,
//! applied by the real `bulkhead-agent` in a two-node lab, and probed with
//! real connections. Each probed matrix must equal the verdict engine's, and
//! the cells that show each tier at work are asserted by name.
//!
//! Plus the `bulkhead tenants` and `explain` subcommands on the same files.
//! The lab tests need root; they fail, loudly, without it.

#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;

use bulkhead_core::Protocol;
use bulkhead_core::verdict::reachability;
use bulkhead_tests::cluster::{Cluster, Comparison, Options};
use bulkhead_tests::traffic::Proto;
use bulkhead_tests::{bulkhead, example};

const LAB: &str = env!("CARGO_BIN_EXE_bulkhead-lab");

fn yaml() -> String {
    let dir = example("tiers");
    let mut y = String::new();
    for f in ["cluster.yaml", "policies.yaml"] {
        y.push_str(&std::fs::read_to_string(dir.join(f)).unwrap());
        y.push_str("\n---\n");
    }
    y
}

#[track_caller]
fn expect(c: &Comparison, cells: &[(&str, &str, bool, &str)]) {
    let mut wrong = String::new();
    for &(s, d, want, why) in cells {
        let got = c.cell(s, d);
        if got != Some(want) {
            let _ = writeln!(wrong, "{s} -> {d} ({why}): want {want}, probed {got:?}");
        }
    }
    assert!(wrong.is_empty(), "{}\n{wrong}{c}", c.what);
}

#[test]
fn tiers_and_tenant_fences_with_real_packets() {
    bulkhead_tests::require_root();
    let c = Cluster::start(LAB, &yaml(), Options::default())
        .unwrap_or_else(|e| panic!("starting the cluster: {e:#}"));
    // The plain grid first: every probe against `verdict::reachability`.
    let probed = c.probe_matrix(80, Proto::Tcp).unwrap();
    let engine = reachability(c.inventory(), Protocol::Tcp, 80).allowed;
    assert_eq!(probed, engine, "TCP/80: probes differ from the engine");

    let m80 = c.assert_matches_engine(80, Proto::Tcp);
    expect(
        &m80,
        &[
            (
                "infra/scanner",
                "team-a/web",
                false,
                "Admin Deny beats the NetworkPolicy that allows all",
            ),
            (
                "infra/monitor",
                "team-a/web",
                true,
                "Admin Pass defers to the NetworkPolicy, which allows",
            ),
            (
                "infra/monitor",
                "team-a/db",
                false,
                "Admin Pass defers to the NetworkPolicy, which denies",
            ),
            ("team-a/web", "team-a/db", true, "the NetworkPolicy allows"),
            (
                "team-a/web",
                "infra/monitor",
                false,
                "Baseline Deny: monitor is not isolated",
            ),
            (
                "team-a/web",
                "infra/dns",
                true,
                "Baseline does not apply: dns is isolated by a NetworkPolicy",
            ),
            ("team-a/web", "team-b/api", false, "tenant fence"),
            ("team-b/api", "team-a/web", false, "tenant fence"),
            ("infra/scanner", "team-b/api", true, "infra is shared"),
        ],
    );
    let m8080 = c.assert_matches_engine(8080, Proto::Tcp);
    expect(
        &m8080,
        &[
            (
                "team-a/web",
                "team-b/api",
                true,
                "the exception: a allowTo b and b allowFrom a on 8080",
            ),
            (
                "team-a/db",
                "team-b/api",
                true,
                "the exception covers every namespace of tenant a",
            ),
            ("team-b/api", "team-a/web", false, "no exception b -> a"),
            ("infra/scanner", "team-a/web", false, "Admin Deny"),
        ],
    );
}

#[test]
fn tenants_and_explain_subcommands() {
    let dir = example("tiers");
    let f = dir.to_str().unwrap();
    let out = bulkhead(["tenants", "-f", f]);
    let text = out.ok();
    assert!(text.contains("Tenant a (namespaces tenant=a)"), "{out}");
    assert!(text.contains("allowTo: tenant b (TCP/8080)"), "{out}");
    assert!(text.contains("allowFrom: tenant a (TCP/8080)"), "{out}");
    assert!(
        text.contains("untenanted namespaces (Shared): infra"),
        "{out}"
    );
    let v = bulkhead(["tenants", "-f", f, "-o", "json"]).json();
    assert_eq!(v["tenants"][0]["name"], "a");
    assert_eq!(v["tenants"][0]["namespaces"][0], "team-a");
    assert_eq!(v["untenanted"]["mode"], "Shared");

    let run = bulkhead([
        "explain",
        "-f",
        f,
        "--from",
        "infra/scanner",
        "--to",
        "team-a/web",
        "--port",
        "80",
    ]);
    let text = run.ok();
    assert!(text.contains("DENIED"), "{run}");
    assert!(
        text.contains("ClusterNetworkPolicy deny-infra (Admin tier, priority 20) ingress rule 0"),
        "{run}"
    );
    let run = bulkhead([
        "explain",
        "-f",
        f,
        "--from",
        "team-b/api",
        "--to",
        "team-a/web",
        "--port",
        "8080",
        "-o",
        "json",
    ]);
    let v = run.json();
    assert_eq!(v["allowed"], false, "{run}");
    assert_eq!(v["egress"]["tier"], "tenantFence", "{run}");
    assert_eq!(v["egress"]["fencedBy"][0], "b", "{run}");
    let run = bulkhead([
        "explain",
        "-f",
        f,
        "--from",
        "infra/monitor",
        "--to",
        "team-a/db",
        "--port",
        "80",
    ]);
    assert!(
        run.ok()
            .contains("passed by ClusterNetworkPolicy pass-monitor"),
        "{run}"
    );
}
