//! End-to-end tests of the dataplane with real packets: every node's ruleset
//! compiled, applied by the real `bulkhead-agent` in the node's namespace,
//! and probed with real connections, must give exactly the matrix the verdict
//! engine computes on the same inventory. Plus what the dataplane promises
//! beyond the matrix: anti-spoofing, established connections surviving
//! changes, agent restarts, rejected rulesets and foreign tables.
//!
//! Every test has its own lab: two nodes, pods on both (same-node and
//! cross-node paths). They need root; they fail, loudly, without it.

#![allow(clippy::unwrap_used)]

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bulkhead_core::Protocol;
use bulkhead_core::verdict::reachability;
use bulkhead_tests::cluster::{Cluster, Family, Links, Options};
use bulkhead_tests::traffic::{Proto, Target};

const LAB: &str = env!("CARGO_BIN_EXE_bulkhead-lab");

// ---------------------------------------------------------------- YAML ----

fn namespace(name: &str, labels: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n"
    )
}

/// The lab gives node `n` (in sorted order, from 1) the underlay 172.31.0.<n>.
fn node(name: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n\
         status: {{addresses: [{{type: InternalIP, address: \"{ip}\"}}]}}\n"
    )
}

fn nodes() -> String {
    node("node-a", "172.31.0.1") + &node("node-b", "172.31.0.2")
}

/// A running pod. `ports`: `(name or "", containerPort, protocol)`.
fn pod(
    ns: &str,
    name: &str,
    labels: &str,
    node: &str,
    ips: &[&str],
    ports: &[(&str, u16, &str)],
) -> String {
    let ports: Vec<String> = ports
        .iter()
        .map(|(n, p, proto)| {
            if n.is_empty() {
                format!("{{containerPort: {p}, protocol: {proto}}}")
            } else {
                format!("{{name: {n}, containerPort: {p}, protocol: {proto}}}")
            }
        })
        .collect();
    let pod_ips: Vec<String> = ips.iter().map(|ip| format!("{{ip: \"{ip}\"}}")).collect();
    format!(
        "---\napiVersion: v1\nkind: Pod\n\
         metadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n\
         spec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: lab\n    ports: [{}]\n\
         status: {{phase: Running, podIP: \"{}\", podIPs: [{}]}}\n",
        ports.join(", "),
        ips[0],
        pod_ips.join(", ")
    )
}

/// A NetworkPolicy; `spec` is the body of `spec:`, indented by two spaces.
fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
    )
}

const HTTP: &[(&str, u16, &str)] = &[("http", 80, "TCP")];

// -------------------------------------------------------------- helpers ----

fn start_with(yaml: &str, opts: Options) -> Cluster {
    bulkhead_tests::require_root();
    Cluster::start(LAB, yaml, opts).unwrap_or_else(|e| panic!("starting the cluster: {e:#}"))
}

fn start(yaml: &str) -> Cluster {
    start_with(yaml, Options::default())
}

/// Options serving these TCP ports on every pod.
fn serving_tcp(ports: &[u16]) -> Options {
    Options {
        extra_tcp_ports: ports.to_vec(),
        ..Options::default()
    }
}

/// Asserts the cells `(src, dst, allowed)` of a comparison, by name: the
/// scenario means what it says (the engine agreeing with the probes is
/// checked by the comparison itself).
#[track_caller]
fn expect(c: &bulkhead_tests::cluster::Comparison, cells: &[(&str, &str, bool)]) {
    let mut wrong = String::new();
    for &(s, d, want) in cells {
        let got = c.cell(s, d);
        if got != Some(want) {
            let _ = writeln!(wrong, "{s} -> {d}: want {want}, probed {got:?}");
        }
    }
    assert!(wrong.is_empty(), "{}\n{wrong}{c}", c.what);
}

// ------------------------------------------------------------ scenarios ----

#[test]
fn default_deny_ingress() {
    let yaml = [
        nodes(),
        namespace("alpha", "team: a"),
        namespace("beta", "team: b"),
        pod("alpha", "a1", "app: web", "node-a", &["10.0.1.1"], HTTP),
        pod("alpha", "a2", "app: api", "node-b", &["10.0.2.1"], HTTP),
        pod("alpha", "a3", "app: web", "node-a", &["10.0.1.2"], HTTP),
        pod("beta", "b1", "app: web", "node-b", &["10.0.2.2"], HTTP),
        pod("beta", "b2", "app: db", "node-a", &["10.0.1.3"], HTTP),
        policy(
            "alpha",
            "deny-ingress",
            "  podSelector: {}\n  policyTypes: [Ingress]\n",
        ),
    ]
    .concat();
    let c = start(&yaml);
    // The plain grids first: probes against `verdict::reachability`.
    let probed = c.probe_matrix(80, Proto::Tcp).unwrap();
    let engine = reachability(c.inventory(), Protocol::Tcp, 80).allowed;
    assert_eq!(probed, engine);
    let m = c.assert_matches_engine(80, Proto::Tcp);
    expect(
        &m,
        &[
            ("alpha/a1", "alpha/a3", false), // same node
            ("beta/b1", "alpha/a1", false),  // cross node
            ("alpha/a1", "alpha/a1", true),  // itself
            ("alpha/a1", "beta/b1", true),   // egress is not isolated
            ("beta/b2", "beta/b1", true),
        ],
    );
}

#[test]
fn namespace_isolation() {
    let yaml = [
        nodes(),
        namespace("alpha", "team: a"),
        namespace("beta", "team: b"),
        namespace("gamma", "team: a"),
        pod("alpha", "a1", "app: web", "node-a", &["10.0.1.1"], HTTP),
        pod("alpha", "a2", "app: api", "node-b", &["10.0.2.1"], HTTP),
        pod("beta", "b1", "app: web", "node-a", &["10.0.1.2"], HTTP),
        pod("beta", "b2", "app: mon", "node-b", &["10.0.2.2"], HTTP),
        pod("gamma", "g1", "app: web", "node-b", &["10.0.2.3"], HTTP),
        pod("gamma", "g2", "app: web", "node-a", &["10.0.1.3"], HTTP),
        // alpha: from namespaces of team a, and from beta's monitoring pods
        // only (namespaceSelector AND podSelector in one peer).
        policy(
            "alpha",
            "from-team-a",
            "  podSelector: {}\n  ingress:\n  - from:\n    \
             - namespaceSelector: {matchLabels: {team: a}}\n    \
             - namespaceSelector: {matchLabels: {team: b}}\n      \
               podSelector: {matchLabels: {app: mon}}\n",
        ),
        // beta: from its own namespace only.
        policy(
            "beta",
            "same-namespace",
            "  podSelector: {}\n  ingress:\n  - from: [{podSelector: {}}]\n",
        ),
        // gamma: from monitoring pods of any namespace.
        policy(
            "gamma",
            "from-monitoring",
            "  podSelector: {}\n  ingress:\n  - from:\n    \
             - namespaceSelector: {}\n      podSelector: {matchLabels: {app: mon}}\n",
        ),
    ]
    .concat();
    let c = start(&yaml);
    let m = c.assert_matches_engine(80, Proto::Tcp);
    expect(
        &m,
        &[
            ("gamma/g1", "alpha/a1", true),  // another namespace of team a
            ("alpha/a2", "alpha/a1", true),  // its own namespace (team a)
            ("beta/b1", "alpha/a1", false),  // team b, not a monitoring pod
            ("beta/b2", "alpha/a1", true),   // team b's monitoring pod
            ("beta/b1", "alpha/a2", false),  // cross node too
            ("alpha/a1", "beta/b1", false),  // beta admits beta only
            ("gamma/g2", "beta/b1", false),  // same node
            ("beta/b2", "beta/b1", true),    // cross node, same namespace
            ("beta/b2", "gamma/g1", true),   // a monitoring pod, any namespace
            ("beta/b1", "gamma/g1", false),  // not a monitoring pod
            ("gamma/g2", "gamma/g1", false), // not even from gamma itself
            ("alpha/a1", "gamma/g2", false),
        ],
    );
}

#[test]
fn ip_block_with_except() {
    let yaml = [
        nodes(),
        namespace("web", ""),
        namespace("c", ""),
        pod("web", "w1", "app: web", "node-a", &["10.0.1.10"], HTTP),
        pod("web", "w2", "app: web", "node-b", &["10.0.2.10"], HTTP),
        pod("c", "in-a", "", "node-a", &["10.0.1.20"], HTTP),
        pod("c", "ex-a", "", "node-a", &["10.0.1.200"], HTTP),
        pod("c", "in-b", "", "node-b", &["10.0.2.20"], HTTP),
        pod("c", "ex-b", "", "node-b", &["10.0.2.200"], HTTP),
        pod("c", "out", "role: out", "node-b", &["10.9.0.5"], HTTP),
        policy(
            "web",
            "from-block",
            "  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from:\n    \
             - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.128/25, 10.0.2.192/26]}\n",
        ),
        // Egress by block, with a hole for one pod.
        policy(
            "c",
            "out-to-block",
            "  podSelector: {matchLabels: {role: out}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    \
             - ipBlock: {cidr: 10.0.2.0/24, except: [10.0.2.10/32]}\n",
        ),
    ]
    .concat();
    let c = start(&yaml);
    let m = c.assert_matches_engine(80, Proto::Tcp);
    expect(
        &m,
        &[
            ("c/in-a", "web/w1", true),  // inside, same node
            ("c/ex-a", "web/w1", false), // excepted, same node
            ("c/in-b", "web/w1", true),  // inside, cross node
            ("c/ex-b", "web/w1", false), // excepted, cross node
            ("c/out", "web/w1", false),  // outside the block
            ("c/ex-a", "web/w2", false), // excepted, cross node
            ("web/w1", "web/w2", true),  // inside
            ("c/out", "c/in-b", true),   // egress block, same node
            ("c/out", "c/ex-b", true),   // not excepted from the egress block
            ("c/out", "c/in-a", false),  // egress: outside its block
            ("c/ex-a", "c/out", true),   // nothing isolates out's ingress
        ],
    );
}

#[test]
fn named_ports_mean_different_numbers_on_different_pods() {
    let yaml = [
        nodes(),
        namespace("srv", ""),
        namespace("cli", ""),
        pod(
            "srv",
            "s1",
            "app: srv",
            "node-a",
            &["10.0.1.1"],
            &[
                ("http", 8080, "TCP"),
                ("alt", 9090, "TCP"),
                ("dns", 8080, "UDP"),
            ],
        ),
        pod(
            "srv",
            "s2",
            "app: srv",
            "node-b",
            &["10.0.2.1"],
            &[("http", 9090, "TCP"), ("alt", 8080, "TCP")],
        ),
        pod(
            "srv",
            "s3",
            "app: srv",
            "node-a",
            &["10.0.1.2"],
            &[
                ("http", 9090, "TCP"),
                ("alt", 8080, "TCP"),
                ("dns", 9090, "UDP"),
            ],
        ),
        pod("cli", "c1", "role: client", "node-b", &["10.0.2.2"], &[]),
        pod("cli", "c2", "role: other", "node-a", &["10.0.1.3"], &[]),
        policy(
            "srv",
            "http-only",
            // `http` over UDP names no port: http is TCP everywhere.
            "  podSelector: {matchLabels: {app: srv}}\n  ingress:\n  \
             - ports: [{port: http}, {port: http, protocol: UDP}, {port: dns, protocol: UDP}]\n",
        ),
        // Egress to a named port: resolved on each destination pod.
        policy(
            "cli",
            "egress-http",
            "  podSelector: {matchLabels: {role: client}}\n  policyTypes: [Egress]\n  \
             egress:\n  - ports: [{port: http, protocol: TCP}]\n",
        ),
    ]
    .concat();
    // Every pod serves both numbers, so that a probe tells allowed from denied.
    let c = start_with(
        &yaml,
        Options {
            extra_tcp_ports: vec![8080, 9090],
            extra_udp_ports: vec![8080, 9090],
            ..Options::default()
        },
    );
    let m8080 = c.assert_matches_engine(8080, Proto::Tcp);
    expect(
        &m8080,
        &[
            ("cli/c1", "srv/s1", true),  // http is 8080 on s1
            ("cli/c1", "srv/s2", false), // ... and 9090 on s2
            ("cli/c2", "srv/s1", true),  // same node
            ("cli/c2", "srv/s3", false), // same node, 9090 there
            ("srv/s2", "srv/s1", true),
            ("cli/c1", "cli/c2", false), // c2 has no port named http
            ("cli/c2", "cli/c1", true),
        ],
    );
    let m9090 = c.assert_matches_engine(9090, Proto::Tcp);
    expect(
        &m9090,
        &[
            ("cli/c1", "srv/s1", false),
            ("cli/c1", "srv/s2", true), // same node
            ("cli/c1", "srv/s3", true), // cross node
            ("srv/s1", "srv/s3", true), // same node
            ("srv/s3", "srv/s1", false),
        ],
    );
    let udp8080 = c.assert_matches_engine(8080, Proto::Udp);
    expect(
        &udp8080,
        &[
            ("cli/c2", "srv/s1", true),  // dns is 8080/UDP on s1
            ("cli/c2", "srv/s3", false), // and 9090/UDP on s3
            ("srv/s2", "srv/s1", true),
            ("cli/c1", "srv/s1", false), // c1's egress: http over TCP only
        ],
    );
    let udp9090 = c.assert_matches_engine(9090, Proto::Udp);
    expect(
        &udp9090,
        &[
            ("cli/c2", "srv/s3", true),
            ("cli/c2", "srv/s2", false), // 9090 is http on s2, but over TCP
            ("srv/s1", "srv/s2", false),
            ("cli/c2", "srv/s1", false),
        ],
    );
}

#[test]
fn end_port_ranges() {
    const PORTS: [u16; 5] = [7999, 8000, 8005, 8010, 8011];
    let yaml = [
        nodes(),
        namespace("x", ""),
        pod("x", "s1", "app: srv", "node-a", &["10.0.1.1"], &[]),
        pod("x", "s2", "app: srv", "node-b", &["10.0.2.1"], &[]),
        pod("x", "c1", "role: ranged", "node-a", &["10.0.1.2"], &[]),
        pod("x", "c2", "role: free", "node-b", &["10.0.2.2"], &[]),
        policy(
            "x",
            "srv-range",
            "  podSelector: {matchLabels: {app: srv}}\n  ingress:\n  \
             - ports: [{protocol: TCP, port: 8000, endPort: 8010}]\n",
        ),
        policy(
            "x",
            "ranged-egress",
            "  podSelector: {matchLabels: {role: ranged}}\n  policyTypes: [Egress]\n  egress:\n  \
             - ports: [{protocol: TCP, port: 8005, endPort: 8020}]\n",
        ),
    ]
    .concat();
    let c = start_with(&yaml, serving_tcp(&PORTS));
    // (port, c2 -> s1 (cross node), c1 -> s1 (same node), c1 -> c2)
    let want = [
        (7999, false, false, false), // below both ranges
        (8000, true, false, false),  // first of srv's, below c1's
        (8005, true, true, true),    // inside both
        (8010, true, true, true),    // last of srv's
        (8011, false, false, true),  // past srv's, inside c1's
    ];
    for (port, c2_s1, c1_s1, c1_c2) in want {
        let m = c.assert_matches_engine(port, Proto::Tcp);
        expect(
            &m,
            &[
                ("x/c2", "x/s1", c2_s1),
                ("x/c1", "x/s1", c1_s1),
                ("x/c1", "x/s2", c1_s1),
                ("x/c1", "x/c2", c1_c2),
                ("x/s1", "x/s1", true),
            ],
        );
    }
}

/// Clients, databases and another pod, spread over both nodes.
fn shop(policies: &[String]) -> String {
    let mut yaml = [
        nodes(),
        namespace("shop", ""),
        pod("shop", "c1", "app: client", "node-a", &["10.0.1.1"], &[]),
        pod("shop", "c2", "app: client", "node-b", &["10.0.2.1"], &[]),
        pod("shop", "d1", "app: db", "node-b", &["10.0.2.2"], &[]),
        pod("shop", "d2", "app: db", "node-a", &["10.0.1.2"], &[]),
        pod("shop", "o1", "app: other", "node-a", &["10.0.1.3"], &[]),
    ]
    .concat();
    for p in policies {
        yaml.push_str(p);
    }
    yaml
}

#[test]
fn egress_only_policy() {
    // Two policies select the clients: what they allow adds up.
    let yaml = shop(&[
        policy(
            "shop",
            "clients-to-db",
            "  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress:\n  \
             - to: [{podSelector: {matchLabels: {app: db}}}]\n    ports: [{port: 80}]\n",
        ),
        policy(
            "shop",
            "clients-to-other",
            "  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress:\n  \
             - to: [{podSelector: {matchLabels: {app: other}}}]\n    ports: [{port: 81}]\n",
        ),
    ]);
    let c = start_with(&yaml, serving_tcp(&[80, 81]));
    let m80 = c.assert_matches_engine(80, Proto::Tcp);
    expect(
        &m80,
        &[
            ("shop/c1", "shop/d1", true),  // cross node
            ("shop/c1", "shop/d2", true),  // same node
            ("shop/c1", "shop/o1", false), // not a db
            ("shop/c1", "shop/c2", false),
            ("shop/c1", "shop/c1", true), // itself
            ("shop/o1", "shop/c1", true), // ingress is not isolated
            ("shop/d1", "shop/c2", true),
        ],
    );
    let m81 = c.assert_matches_engine(81, Proto::Tcp);
    expect(
        &m81,
        &[
            ("shop/c1", "shop/d1", false),
            ("shop/c2", "shop/d1", false),
            ("shop/c1", "shop/o1", true), // the other policy
            ("shop/c2", "shop/o1", true), // cross node
            ("shop/o1", "shop/d1", true),
        ],
    );
}

#[test]
fn ingress_only_policy() {
    // policyTypes says Ingress: the egress section must not be enforced.
    let yaml = shop(&[policy(
        "shop",
        "db-from-clients",
        "  podSelector: {matchLabels: {app: db}}\n  policyTypes: [Ingress]\n  ingress:\n  \
         - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{port: 80}]\n  \
         egress:\n  - to: [{podSelector: {matchLabels: {app: nothing}}}]\n",
    )]);
    let c = start_with(&yaml, serving_tcp(&[80, 81]));
    let m80 = c.assert_matches_engine(80, Proto::Tcp);
    expect(
        &m80,
        &[
            ("shop/c1", "shop/d1", true),  // cross node
            ("shop/c1", "shop/d2", true),  // same node
            ("shop/o1", "shop/d1", false), // not a client
            ("shop/o1", "shop/d2", false),
            ("shop/d1", "shop/d2", false),
            ("shop/d1", "shop/o1", true), // egress is not isolated
            ("shop/d2", "shop/c2", true),
        ],
    );
    let m81 = c.assert_matches_engine(81, Proto::Tcp);
    expect(
        &m81,
        &[("shop/c1", "shop/d1", false), ("shop/c1", "shop/o1", true)],
    );
}

#[test]
fn udp_rule_allows_udp_not_tcp() {
    const DNS: &[(&str, u16, &str)] = &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")];
    let yaml = [
        nodes(),
        namespace("dns", ""),
        pod("dns", "n1", "app: dns", "node-a", &["10.0.1.1"], DNS),
        pod("dns", "n2", "app: dns", "node-b", &["10.0.2.1"], DNS),
        pod("dns", "c1", "role: client", "node-a", &["10.0.1.2"], DNS),
        pod("dns", "c2", "role: other", "node-b", &["10.0.2.2"], DNS),
        policy(
            "dns",
            "udp-only",
            "  podSelector: {matchLabels: {app: dns}}\n  ingress:\n  \
             - ports: [{protocol: UDP, port: 53}]\n",
        ),
        policy(
            "dns",
            "client-udp-only",
            "  podSelector: {matchLabels: {role: client}}\n  policyTypes: [Egress]\n  egress:\n  \
             - ports: [{protocol: UDP, port: 53}]\n",
        ),
    ]
    .concat();
    let c = start(&yaml);
    let udp = c.assert_matches_engine(53, Proto::Udp);
    expect(
        &udp,
        &[
            ("dns/c1", "dns/n1", true), // same node
            ("dns/c1", "dns/n2", true), // cross node
            ("dns/c2", "dns/n1", true),
            ("dns/c1", "dns/c2", true),
            ("dns/n1", "dns/n1", true),
        ],
    );
    let tcp = c.assert_matches_engine(53, Proto::Tcp);
    expect(
        &tcp,
        &[
            ("dns/c1", "dns/n1", false), // the rule says UDP
            ("dns/c2", "dns/n1", false),
            ("dns/c2", "dns/n2", false),
            ("dns/c1", "dns/c2", false), // c1's egress says UDP
            ("dns/c2", "dns/c1", true),  // c1's ingress is not isolated
            ("dns/n1", "dns/n1", true),  // itself
        ],
    );
}

#[test]
fn dual_stack_pods_are_judged_per_family() {
    let yaml = [
        nodes(),
        namespace("web", ""),
        namespace("cli", ""),
        pod(
            "web",
            "w1",
            "app: web",
            "node-a",
            &["10.0.1.1", "fd00::1:1"],
            HTTP,
        ),
        pod(
            "web",
            "w2",
            "app: web",
            "node-b",
            &["10.0.2.1", "fd00::2:1"],
            HTTP,
        ),
        pod("cli", "d1", "", "node-a", &["10.0.1.2", "fd00::1:2"], HTTP),
        pod("cli", "d2", "", "node-b", &["10.0.2.2", "fd00::2:2"], HTTP),
        pod(
            "cli",
            "d3",
            "role: v6-out",
            "node-b",
            &["10.0.2.4", "fd00::2:4"],
            HTTP,
        ),
        pod("cli", "v4", "", "node-b", &["10.0.2.3"], HTTP),
        // IPv6 first: its primary address is IPv6.
        pod(
            "cli",
            "v6p",
            "role: friend",
            "node-a",
            &["fd00::1:3", "10.0.1.3"],
            HTTP,
        ),
        // Node A's pods by IPv4, node B's by IPv6 (but d2), friends by
        // label; on the named port.
        policy(
            "web",
            "by-block",
            "  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from:\n    \
             - ipBlock: {cidr: 10.0.1.0/24}\n    \
             - ipBlock: {cidr: \"fd00::2:0/112\", except: [\"fd00::2:2/128\"]}\n    \
             - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: cli}}\n      \
               podSelector: {matchLabels: {role: friend}}\n    \
             ports: [{port: http}]\n",
        ),
        // d3 may talk IPv6 to node A's pods, and nothing else.
        policy(
            "cli",
            "v6-out",
            "  podSelector: {matchLabels: {role: v6-out}}\n  policyTypes: [Egress]\n  egress:\n  \
             - to: [{ipBlock: {cidr: \"fd00::1:0/112\"}}]\n",
        ),
    ]
    .concat();
    let c = start(&yaml);
    let v6 = c.assert_matches_engine_family(80, Proto::Tcp, Some(Family::V6));
    expect(
        &v6,
        &[
            ("cli/d1", "web/w2", false), // fd00::1:2 is not in fd00::2:0/112
            ("cli/d3", "web/w1", true),  // fd00::2:4 is; fd00::1:1 is d3's to
            ("cli/d3", "web/w2", false), // fd00::2:1 is not d3's to
            ("cli/d2", "web/w1", false), // fd00::2:2 is excepted
            ("web/w2", "web/w1", true),
            ("cli/v6p", "web/w2", true), // a friend
            ("cli/d1", "cli/d2", true),
        ],
    );
    assert_eq!(v6.cell("cli/v4", "web/w1"), None, "v4 has no IPv6 address");
    let v4 = c.assert_matches_engine_family(80, Proto::Tcp, Some(Family::V4));
    expect(
        &v4,
        &[
            ("cli/d1", "web/w2", true),  // 10.0.1.2 is in 10.0.1.0/24
            ("cli/d2", "web/w1", false), // 10.0.2.2 is not
            ("cli/v4", "web/w1", false),
            ("cli/d3", "web/w1", false), // no IPv4 in d3's to
            ("cli/v6p", "web/w2", true),
            ("web/w1", "web/w2", true),
        ],
    );
    // The primary addresses: IPv6 towards v6p wherever the source has IPv6.
    let primary = c.assert_matches_engine(80, Proto::Tcp);
    expect(
        &primary,
        &[("cli/d2", "web/w1", false), ("cli/v4", "cli/v6p", true)],
    );
    let to_v6p = primary.probed[c.index("cli/d1").unwrap()][c.index("cli/v6p").unwrap()]
        .as_ref()
        .unwrap();
    assert!(to_v6p.target.addr.is_ipv6(), "{to_v6p}");
}

#[test]
fn relabelled_pods_move_between_allowed_and_denied() {
    let yaml = |f1: &str, x1: &str, d2: &str| {
        [
            nodes(),
            namespace("app", ""),
            pod("app", "d1", "app: db", "node-b", &["10.0.2.1"], HTTP),
            pod("app", "d2", d2, "node-a", &["10.0.1.1"], HTTP),
            pod("app", "f1", f1, "node-a", &["10.0.1.2"], HTTP),
            pod("app", "x1", x1, "node-b", &["10.0.2.2"], HTTP),
            pod("app", "x2", "role: other", "node-a", &["10.0.1.3"], HTTP),
            policy(
                "app",
                "db-from-frontends",
                "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  \
                 - from:\n    \
                   - podSelector: {matchExpressions: [{key: role, operator: In, values: [frontend]}]}\n",
            ),
        ]
        .concat()
    };
    let before = yaml("role: frontend", "role: other", "app: db");
    let mut c = start(&before);
    let m = c.assert_matches_engine(80, Proto::Tcp);
    let was = [
        ("app/f1", "app/d1", true),
        ("app/f1", "app/d2", true),
        ("app/x1", "app/d1", false),
        ("app/x2", "app/d2", false),
    ];
    expect(&m, &was);

    // f1 and x1 swap roles; d2 stops being a database. As deltas.
    c.apply_delta(&yaml("role: other", "role: frontend", "app: cache"))
        .unwrap();
    for node in c.node_names() {
        assert_eq!(c.kernel_generation(&node).unwrap(), Some(2), "{node}");
    }
    let m = c.assert_matches_engine(80, Proto::Tcp);
    expect(
        &m,
        &[
            ("app/f1", "app/d1", false),
            ("app/x1", "app/d1", true), // same node
            ("app/x1", "app/d2", true), // d2 is no longer isolated
            ("app/x2", "app/d2", true),
            ("app/x2", "app/d1", false),
        ],
    );

    // And back, as whole rulesets.
    c.apply(&before).unwrap();
    for node in c.node_names() {
        assert_eq!(c.kernel_generation(&node).unwrap(), Some(3), "{node}");
    }
    let m = c.assert_matches_engine(80, Proto::Tcp);
    expect(&m, &was);
}

// ------------------------------------------------------------ behaviours ----

/// Polls `cond` every few milliseconds until it holds or `within` passed.
fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `bulkhead-agent apply --ruleset FILE --links LINKS` on `node`: a fresh
/// agent process.
fn agent_apply(c: &Cluster, node: &str, file: &Path, links: &str) -> Output {
    let args: [&OsStr; 5] = [
        "apply".as_ref(),
        "--ruleset".as_ref(),
        file.as_os_str(),
        "--links".as_ref(),
        links.as_ref(),
    ];
    c.agent(node, &args).unwrap()
}

fn nft(c: &Cluster, ns: &str, cmd: &str) {
    c.topology()
        .exec_ok(ns, &["nft", cmd])
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// An observation table in pod `key`'s namespace: one counter of UDP packets
/// to `port` per source, named by its comment. Made anew (counters at 0).
fn observe_udp(c: &Cluster, key: &str, port: u16, sources: &[(&str, IpAddr)]) {
    let ns = c.pod_netns(key).unwrap();
    // Gone already (the first time) is fine.
    let _ = c.topology().exec(ns, &["nft", "delete table inet obs"]);
    nft(c, ns, "add table inet obs");
    nft(
        c,
        ns,
        "add chain inet obs in { type filter hook input priority 0; policy accept; }",
    );
    for (name, ip) in sources {
        let fam = if ip.is_ipv4() { "ip" } else { "ip6" };
        nft(
            c,
            ns,
            &format!(
                "add rule inet obs in {fam} saddr {ip} udp dport {port} counter comment \"{name}\""
            ),
        );
    }
}

/// The counters of [`observe_udp`], by name.
fn observed(c: &Cluster, key: &str) -> std::collections::BTreeMap<String, u64> {
    let ns = c.pod_netns(key).unwrap();
    let text = c
        .topology()
        .exec_ok(ns, &["nft", "-j", "list", "table", "inet", "obs"])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for o in v["nftables"].as_array().unwrap() {
        let Some(rule) = o.get("rule") else { continue };
        let name = rule["comment"].as_str().unwrap().to_owned();
        let packets = rule["expr"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|e| e.get("counter"))
            .and_then(|c| c["packets"].as_u64())
            .unwrap();
        out.insert(name, packets);
    }
    out
}

/// `bulkhead-lab send-udp` in pod `from`: `count` datagrams from `src`.
fn send_udp(c: &Cluster, from: &str, src: IpAddr, to: SocketAddr, count: u32) {
    let ns = c.pod_netns(from).unwrap();
    let lab = c.topology().lab_bin().to_str().unwrap().to_owned();
    let out = c
        .topology()
        .exec_ok(
            ns,
            &[
                lab.as_str(),
                "send-udp",
                "--bind-src",
                &src.to_string(),
                "--to",
                &to.to_string(),
                "--count",
                &count.to_string(),
            ],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.starts_with(&format!("sent {count} from ")), "{out}");
}

#[test]
fn spoofed_sources_are_dropped() {
    const PORT: u16 = 5000;
    const COUNT: u32 = 3;
    let yaml = [
        nodes(),
        namespace("app", ""),
        pod(
            "app",
            "attacker",
            "role: client",
            "node-a",
            &["10.0.1.1", "fd00::1:1"],
            &[],
        ),
        pod(
            "app",
            "trusted",
            "role: client",
            "node-a",
            &["10.0.1.2", "fd00::1:2"],
            &[],
        ),
        pod(
            "app",
            "remote",
            "role: client",
            "node-b",
            &["10.0.2.2", "fd00::2:2"],
            &[],
        ),
        pod(
            "app",
            "sink",
            "app: sink",
            "node-b",
            &["10.0.2.1", "fd00::2:1"],
            &[],
        ),
        pod(
            "app",
            "sink-a",
            "app: sink",
            "node-a",
            &["10.0.1.3", "fd00::1:3"],
            &[],
        ),
        // Every source used below is allowed by policy: only anti-spoofing
        // can stop the spoofed ones.
        policy(
            "app",
            "sink-from-clients",
            "  podSelector: {matchLabels: {app: sink}}\n  ingress:\n  - from:\n    \
             - podSelector: {matchLabels: {role: client}}\n    \
             - ipBlock: {cidr: 10.0.9.0/24}\n    - ipBlock: {cidr: \"fd00:9::/64\"}\n    \
             ports: [{protocol: UDP, port: 5000}]\n",
        ),
    ]
    .concat();
    // First without anti-spoofing entries: the control that spoofed packets
    // are routed to the sinks at all (no reverse-path filter in the way).
    let c = start_with(
        &yaml,
        Options {
            links: Links::None,
            ..Options::default()
        },
    );
    for node in c.node_names() {
        let ns = c.node_netns(&node).unwrap();
        c.topology()
            .exec_ok(
                ns,
                &[
                    "sh",
                    "-c",
                    "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done",
                ],
            )
            .unwrap();
    }
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let real = [("real4", ip("10.0.1.1")), ("real6", ip("fd00::1:1"))];
    let spoofed = [
        ("same-node4", ip("10.0.1.2")),
        ("same-node6", ip("fd00::1:2")),
        ("remote4", ip("10.0.2.2")),
        ("remote6", ip("fd00::2:2")),
        ("nobody4", ip("10.0.9.9")),
        ("nobody6", ip("fd00:9::9")),
    ];
    let sources: Vec<(&str, IpAddr)> = real.iter().chain(&spoofed).copied().collect();
    let sinks = ["app/sink", "app/sink-a"];
    let send_all = |c: &Cluster, which: &[(&str, IpAddr)]| {
        for sink in sinks {
            for &(_, src) in which {
                let f = if src.is_ipv4() {
                    Family::V4
                } else {
                    Family::V6
                };
                let to = SocketAddr::new(c.ip(sink, f).unwrap(), PORT);
                send_udp(c, "app/attacker", src, to, COUNT);
            }
        }
    };
    let all_arrived = |c: &Cluster, names: &[(&str, IpAddr)]| {
        sinks.iter().all(|sink| {
            let seen = observed(c, sink);
            names.iter().all(|(n, _)| seen[*n] >= u64::from(COUNT))
        })
    };

    for sink in sinks {
        observe_udp(&c, sink, PORT, &sources);
    }
    send_all(&c, &sources);
    assert!(
        wait_until(Duration::from_secs(5), || all_arrived(&c, &sources)),
        "without anti-spoofing entries, every datagram should arrive: {:?}",
        sinks.map(|s| observed(&c, s))
    );

    // Now with the pod interfaces learnt: a fresh agent run on each node.
    for node in c.node_names() {
        let (_, file) = c.ruleset(&node).unwrap();
        let out = agent_apply(&c, &node, file, "auto");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Forget the flows of the control: everything below is new.
        let ns = c.node_netns(&node).unwrap();
        let _ = c.topology().exec(ns, &["conntrack", "-F"]);
    }
    for sink in sinks {
        observe_udp(&c, sink, PORT, &sources);
    }
    send_all(&c, &spoofed);
    send_all(&c, &real);
    assert!(
        wait_until(Duration::from_secs(5), || all_arrived(&c, &real)),
        "datagrams from the attacker's own addresses should arrive: {:?}",
        sinks.map(|s| observed(&c, s))
    );
    for sink in sinks {
        let seen = observed(&c, sink);
        for (name, src) in spoofed {
            assert_eq!(
                seen[name], 0,
                "{sink} received datagrams from {src} sent by the attacker: {seen:?}"
            );
        }
    }
}

/// The sequence number of a `bulkhead-lab hold` line `echo SEQ MICROS`.
fn echo_seq(line: &str) -> Option<(u64, u64)> {
    let mut w = line.strip_prefix("echo ")?.split_whitespace();
    Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
}

#[test]
fn an_established_connection_survives_ruleset_changes() {
    const ECHO: u16 = 7000;
    // `echo_ports`: what the client may open to the echo pod.
    let yaml = |echo_ports: &str, extra: &[&String]| {
        let mut y = [
            nodes(),
            namespace("app", ""),
            pod("app", "echo", "app: echo", "node-b", &["10.0.2.1"], HTTP),
            pod(
                "app",
                "client",
                "role: client",
                "node-a",
                &["10.0.1.1"],
                HTTP,
            ),
            pod("app", "o1", "app: o1", "node-a", &["10.0.1.2"], HTTP),
            pod("app", "o2", "app: o2", "node-b", &["10.0.2.2"], HTTP),
            policy(
                "app",
                "echo-from-clients",
                &format!(
                    "  podSelector: {{matchLabels: {{app: echo}}}}\n  ingress:\n  \
                     - from: [{{podSelector: {{matchLabels: {{role: client}}}}}}]\n    \
                     ports: {echo_ports}\n"
                ),
            ),
            // The echoes flow back only as part of the established
            // connection: a new connection echo -> client is denied both at
            // the echo's egress and at the client's ingress.
            policy(
                "app",
                "echo-no-egress",
                "  podSelector: {matchLabels: {app: echo}}\n  policyTypes: [Egress]\n",
            ),
            policy(
                "app",
                "client-no-ingress",
                "  podSelector: {matchLabels: {role: client}}\n  policyTypes: [Ingress]\n",
            ),
        ]
        .concat();
        for p in extra {
            y.push_str(p);
        }
        y
    };
    let lock_o2 = policy(
        "app",
        "lock-o2",
        "  podSelector: {matchLabels: {app: o2}}\n  policyTypes: [Ingress]\n",
    );
    let lock_o1 = policy(
        "app",
        "lock-o1",
        "  podSelector: {matchLabels: {app: o1}}\n  policyTypes: [Egress]\n",
    );
    let both = "[{port: 80}, {port: 7000}]";
    let mut c = start(&yaml(both, &[]));
    let deadline = || Instant::now() + Duration::from_secs(10);
    let mut server = c
        .spawn_lab("app/echo", &["serve", "--tcp-echo", &ECHO.to_string()])
        .unwrap();
    server.wait_line(deadline(), |l| l == "ready").unwrap();
    let echo_addr = SocketAddr::new(c.ip("app/echo", Family::V4).unwrap(), ECHO);
    let mut hold = c
        .spawn_lab(
            "app/client",
            &[
                "hold",
                "--to",
                &echo_addr.to_string(),
                "--interval-ms",
                "10",
                "--timeout-ms",
                "2000",
            ],
        )
        .unwrap();
    hold.wait_line(deadline(), |l| l.starts_with("connected "))
        .unwrap();
    hold.wait_line(deadline(), |l| echo_seq(l).is_some_and(|(s, _)| s >= 5))
        .unwrap();
    // A new connection to the echo port: does it connect at all? (The echo
    // server says nothing first, so the probe itself never passes.)
    let connects = |c: &Cluster| {
        let r = c
            .topology()
            .probe(
                c.pod("app/client").unwrap(),
                &[Target::tcp(echo_addr.ip(), ECHO)],
                Duration::from_millis(700),
            )
            .unwrap()
            .remove(0);
        assert!(!r.detail.contains("refused"), "{r}");
        !r.detail.starts_with("connect:")
    };
    assert!(connects(&c));

    // Unrelated changes: one on node B (the echo's node), as whole
    // rulesets; one on node A (the client's), as deltas. Then one that
    // revokes the held flow itself for new connections: established
    // connections are accepted before any policy (only a quarantine cuts
    // them), so the held one goes on all the same.
    let changes = [
        ("lock o2 (whole rulesets)", yaml(both, &[&lock_o2]), false),
        ("lock o1 (deltas)", yaml(both, &[&lock_o2, &lock_o1]), true),
        (
            "revoke port 7000 (deltas)",
            yaml("[{port: 80}]", &[&lock_o2, &lock_o1]),
            true,
        ),
    ];
    for (what, next, delta) in &changes {
        let last = hold
            .lines()
            .iter()
            .filter_map(|l| echo_seq(l))
            .map(|(s, _)| s)
            .max()
            .unwrap();
        if *delta {
            c.apply_delta(next).unwrap();
        } else {
            c.apply(next).unwrap();
        }
        hold.wait_line(deadline(), |l| {
            echo_seq(l).is_some_and(|(s, _)| s >= last + 10)
        })
        .unwrap_or_else(|e| panic!("after {what}: {e:#}"));
    }
    assert_eq!(hold.try_status().unwrap(), None, "{}", hold.stderr());
    let lines = hold.lines().to_vec();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("connected")).count(),
        1
    );
    let echoes: Vec<(u64, u64)> = lines.iter().filter_map(|l| echo_seq(l)).collect();
    assert_eq!(
        echoes.len(),
        lines.len() - 1,
        "only echoes after connecting: {lines:?}"
    );
    for (i, (seq, _)) in echoes.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "round trips are contiguous: {lines:?}");
    }
    let slowest = echoes.iter().map(|&(_, us)| us).max().unwrap();
    eprintln!(
        "{} round trips across {} ruleset changes; the slowest took {slowest} µs",
        echoes.len(),
        changes.len()
    );

    // The changes did take effect, for new connections.
    assert!(
        !connects(&c),
        "a new connection to port {ECHO} is denied now"
    );
    let m = c.assert_matches_engine(80, Proto::Tcp);
    expect(
        &m,
        &[
            ("app/client", "app/echo", true),
            ("app/echo", "app/client", false),
            ("app/client", "app/o2", false), // lock-o2
            ("app/o1", "app/client", false), // lock-o1 (and client-no-ingress)
            ("app/o1", "app/o2", false),
            ("app/o2", "app/o1", true),
        ],
    );
}

#[test]
fn restarting_the_agent_neither_drops_nor_admits() {
    let yaml = [
        nodes(),
        namespace("app", ""),
        pod("app", "c1", "role: client", "node-a", &["10.0.1.1"], HTTP),
        pod("app", "s1", "app: srv", "node-b", &["10.0.2.1"], HTTP),
        pod("app", "s2", "app: srv", "node-a", &["10.0.1.2"], HTTP),
        pod("app", "l1", "app: locked", "node-b", &["10.0.2.2"], HTTP),
        pod("app", "l2", "app: locked", "node-a", &["10.0.1.3"], HTTP),
        policy(
            "app",
            "srv-from-clients",
            "  podSelector: {matchLabels: {app: srv}}\n  ingress:\n  \
             - from: [{podSelector: {matchLabels: {role: client}}}]\n",
        ),
        policy(
            "app",
            "locked",
            "  podSelector: {matchLabels: {app: locked}}\n  policyTypes: [Ingress]\n",
        ),
    ]
    .concat();
    let c = start(&yaml);
    let ip = |k: &str| c.ip(k, Family::V4).unwrap();
    let allowed = [Target::tcp(ip("app/s1"), 80), Target::tcp(ip("app/s2"), 80)];
    let denied = [Target::tcp(ip("app/l1"), 80), Target::tcp(ip("app/l2"), 80)];
    let from = c.pod("app/c1").unwrap();
    let t = c.topology();
    // Before anything: what the probers must keep seeing.
    let m = c.assert_matches_engine(80, Proto::Tcp);
    expect(
        &m,
        &[
            ("app/c1", "app/s1", true),
            ("app/c1", "app/s2", true),
            ("app/c1", "app/l1", false),
            ("app/c1", "app/l2", false),
        ],
    );

    let stop = AtomicBool::new(false);
    let rounds = [
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ];
    let wrong = std::sync::Mutex::new(Vec::<String>::new());
    let runs = 5;
    std::thread::scope(|s| {
        // One prober of what is allowed (fast: it ends at the answer), two
        // of what is denied (each waits out its timeout), so that probes
        // start all the time.
        let probers = [
            (&allowed[..], true, 1000),
            (&denied[..], false, 300),
            (&denied[..], false, 300),
        ];
        for (i, (targets, want, timeout_ms)) in probers.into_iter().enumerate() {
            let (stop, rounds, wrong) = (&stop, &rounds[i], &wrong);
            s.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let results = t
                        .probe(from, targets, Duration::from_millis(timeout_ms))
                        .unwrap_or_else(|e| panic!("{e:#}"));
                    for r in results {
                        if r.ok != want || (!want && r.detail.contains("refused")) {
                            wrong.lock().unwrap().push(r.to_string());
                        }
                    }
                    rounds.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        let progressed = |from: [usize; 3], by: usize| {
            wait_until(Duration::from_secs(10), || {
                rounds
                    .iter()
                    .zip(from)
                    .all(|(r, f)| r.load(Ordering::SeqCst) >= f + by)
            })
        };
        assert!(progressed([0; 3], 1), "the probers do not run");
        for run in 0..runs {
            for node in c.node_names() {
                let (_, file) = c.ruleset(&node).unwrap();
                let out = agent_apply(&c, &node, file, "auto");
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success() && stdout.contains("applied generation 1"),
                    "run {run} on {node}: {stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(c.kernel_generation(&node).unwrap(), Some(1), "{node}");
            }
        }
        // Probes that started after the last run, too.
        let now = rounds.each_ref().map(|r| r.load(Ordering::SeqCst));
        assert!(progressed(now, 2), "the probers stopped");
        stop.store(true, Ordering::SeqCst);
    });
    let wrong = wrong.into_inner().unwrap();
    let rounds = rounds.map(AtomicUsize::into_inner);
    assert!(
        wrong.is_empty(),
        "while the agent was re-run {runs} times per node ({rounds:?} rounds):\n{}",
        wrong.join("\n")
    );
    eprintln!("{runs} agent runs per node; prober rounds {rounds:?}");
}

/// A JSON ruleset with the first rule of a NetworkPolicy chain that matches
/// an address set pointed at a set that does not exist; returns the rule's
/// comment.
fn break_a_rule(rs: &mut serde_json::Value) -> String {
    for chain in rs["chains"].as_array_mut().unwrap() {
        for rule in chain["rules"].as_array_mut().unwrap() {
            let comment = rule["comment"].as_str().unwrap_or("").to_owned();
            if !comment.starts_with("np ") {
                continue;
            }
            for m in rule["matches"].as_array_mut().unwrap() {
                if let Some(set) = m["kind"].get_mut("addrInSet") {
                    set["set"] = "no_such_set".into();
                    return comment;
                }
            }
        }
    }
    panic!("no NetworkPolicy rule matches an address set:\n{rs:#}");
}

#[test]
fn a_rejected_ruleset_or_a_foreign_table_changes_nothing() {
    let base = [policy(
        "shop",
        "db-from-clients",
        "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  \
         - from: [{podSelector: {matchLabels: {app: client}}}]\n",
    )];
    let yaml = shop(&base);
    let c = start_with(&yaml, serving_tcp(&[80]));
    let before = c.assert_matches_engine(80, Proto::Tcp);
    expect(
        &before,
        &[("shop/c1", "shop/d1", true), ("shop/o1", "shop/d1", false)],
    );

    // Generation 2 would isolate every pod of node B: had any of it taken
    // effect, the matrix would change.
    let lockdown = shop(&[
        base[0].clone(),
        policy(
            "shop",
            "deny-all",
            "  podSelector: {}\n  policyTypes: [Ingress]\n",
        ),
    ]);
    let inv2 = bulkhead_tests::cluster::inventory(&lockdown).unwrap();
    let rs2 = bulkhead_core::compile::compile_node(&inv2, "node-b", 2);
    let mut json = serde_json::to_value(&rs2).unwrap();
    let comment = break_a_rule(&mut json);
    let bad = c.write_json("node-b.bad.json", &json).unwrap();
    let out = agent_apply(&c, "node-b", &bad, "auto");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the kernel refuses it: {stderr}"
    );
    assert!(
        stderr.contains(&comment),
        "the error names the rule {comment:?}: {stderr}"
    );
    eprintln!("the agent said: {stderr}");
    assert_eq!(c.kernel_generation("node-b").unwrap(), Some(1));
    let after = c.assert_matches_engine(80, Proto::Tcp);
    assert_eq!(after.probed_grid(), before.probed_grid(), "{after}");

    // A table of that name the agent did not write: refused, left alone,
    // still in force.
    let ns = c.node_netns("node-b").unwrap();
    nft(&c, ns, "delete table inet bulkhead");
    nft(&c, ns, "add table inet bulkhead");
    nft(
        &c,
        ns,
        "add chain inet bulkhead forward { type filter hook forward priority 0; policy accept; }",
    );
    nft(
        &c,
        ns,
        "add rule inet bulkhead forward ip daddr 10.0.2.2 tcp dport 80 drop comment \"not bulkhead's\"",
    );
    let list = || {
        let text = c
            .topology()
            .exec_ok(
                ns,
                &["nft", "-s", "-j", "list", "table", "inet", "bulkhead"],
            )
            .unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    let foreign = list();
    let (_, good) = c.ruleset("node-b").unwrap();
    let out = agent_apply(&c, "node-b", good, "auto");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("inet bulkhead"), "{stderr}");
    assert_eq!(list(), foreign, "the foreign table was touched");
    let shown = c.show("node-b").unwrap();
    assert_eq!(shown["kernel"]["state"], "foreign", "{shown:#}");
    // Its rule is what decides: c1 -> d1 (10.0.2.2) dropped, c1 -> c2 not.
    let c1 = c.pod("shop/c1").unwrap();
    let probes = c
        .topology()
        .probe(
            c1,
            &[
                Target::tcp(c.ip("shop/d1", Family::V4).unwrap(), 80),
                Target::tcp(c.ip("shop/c2", Family::V4).unwrap(), 80),
            ],
            Duration::from_millis(700),
        )
        .unwrap();
    assert!(!probes[0].ok && probes[1].ok, "{probes:?}");
}
