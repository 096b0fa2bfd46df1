//! Conformance suite for Kubernetes `networking.k8s.io/v1` NetworkPolicy
//! semantics, written from the specification: the API reference for
//! `NetworkPolicySpec`, `NetworkPolicyIngressRule`/`EgressRule`,
//! `NetworkPolicyPeer`, `NetworkPolicyPort` and `IPBlock`, and the "Network
//! Policies" concepts page. Each case cites the text it checks.
//!
//! The model is the upstream netpol e2e model: namespaces `x`, `y`, `z`
//! (labelled `ns=<name>`), each with pods `a`, `b`, `c` (labelled
//! `pod=<name>`), every pod serving TCP 80/81, UDP 80/81 and SCTP 80 on ports
//! named `serve-<port>-<proto>`. One deviation, to make named ports
//! interesting: on `z/c` the names of TCP 80 and TCP 81 are swapped, so
//! `serve-80-tcp` means 81 there. Pods `a` and `b` run on `node-1`, pods `c`
//! on `node-2`.
//!
//! Pod addresses: `x/a` 10.0.1.1, `x/b` 10.0.1.2, `x/c` 10.0.1.3, `y/*`
//! 10.0.2.1-3, `z/*` 10.0.3.1-3. Nodes: `node-1` 192.168.0.1, `node-2`
//! 192.168.0.2. Outside the cluster: 203.0.113.5 and 198.51.100.7.
//!
//! Every case asserts whole reachability matrices (rows are sources, columns
//! destinations, in inventory order x/a x/b x/c y/a ... z/c) and single
//! verdicts with the policy and rule that decided them. Every case is also
//! run with its YAML documents in reverse order, and every matrix cell is
//! cross-checked between `evaluate` and `allowed`.

#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::net::IpAddr;

use bulkhead_core::inventory::Inventory;
use bulkhead_core::verdict::{self, Endpoint, Implicit, Query, RuleRef, Side};
use bulkhead_core::{Protocol, load_str};

use S::{Allowed, AllowedIso, Denied, NotAPod, NotIsolated, OwnNode, SamePod};

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;
const SCTP: Protocol = Protocol::Sctp;

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const POD_NAMES: [&str; 3] = ["a", "b", "c"];
/// Inventory order: sorted by `namespace/name`.
const PODS: [&str; 9] = [
    "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
];
const N: usize = PODS.len();

const NODE1_IP: &str = "192.168.0.1";
const NODE2_IP: &str = "192.168.0.2";

// ---------------------------------------------------------------------------
// The model, as YAML.
// ---------------------------------------------------------------------------

/// The model's documents: namespaces, nodes, pods.
fn model_docs() -> Vec<String> {
    // NetworkPolicy semantics alone: the API guard (which keeps untrusted
    // pods from node addresses) has its own tests.
    let mut docs = vec![
        "apiVersion: bulkhead.io/v1alpha1\nkind: BulkheadConfig\nmetadata: {name: cluster}\nspec: {apiGuard: {mode: \"Off\"}}\n".to_owned(),
    ];
    for ns in NAMESPACES {
        docs.push(format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    ns: {ns}\n"
        ));
    }
    for (name, ip) in [("node-1", NODE1_IP), ("node-2", NODE2_IP)] {
        docs.push(format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nstatus:\n  addresses:\n  - type: InternalIP\n    address: {ip}\n  - type: Hostname\n    address: {name}\n"
        ));
    }
    for (ni, ns) in NAMESPACES.iter().enumerate() {
        for (pi, pod) in POD_NAMES.iter().enumerate() {
            let ip = format!("10.0.{}.{}", ni + 1, pi + 1);
            let node = if *pod == "c" { "node-2" } else { "node-1" };
            // (container name, port name, number, protocol)
            let swapped = *ns == "z" && *pod == "c";
            let ports: [(&str, &str, u16, &str); 5] = [
                (
                    "cont-80-tcp",
                    "serve-80-tcp",
                    if swapped { 81 } else { 80 },
                    "TCP",
                ),
                (
                    "cont-81-tcp",
                    "serve-81-tcp",
                    if swapped { 80 } else { 81 },
                    "TCP",
                ),
                ("cont-80-udp", "serve-80-udp", 80, "UDP"),
                ("cont-81-udp", "serve-81-udp", 81, "UDP"),
                ("cont-80-sctp", "serve-80-sctp", 80, "SCTP"),
            ];
            let mut doc = format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: {ns}\n  labels:\n    pod: {pod}\nspec:\n  nodeName: {node}\n  containers:\n"
            );
            for (cont, port_name, number, proto) in ports {
                write!(
                    doc,
                    "  - name: {cont}\n    image: agnhost\n    ports:\n    - name: {port_name}\n      containerPort: {number}\n      protocol: {proto}\n"
                )
                .unwrap();
            }
            write!(
                doc,
                "status:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n"
            )
            .unwrap();
            docs.push(doc);
        }
    }
    docs
}

/// Removes the common leading indentation, so that YAML can be written
/// indented in the source.
fn dedent(s: &str) -> String {
    let indent = s
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out = String::new();
    for line in s.lines().filter(|l| !l.trim().is_empty()) {
        out.push_str(&line[indent..]);
        out.push('\n');
    }
    out
}

/// A NetworkPolicy document; `spec` is the YAML of its `spec`, at any indentation.
fn np(ns: &str, name: &str, spec: &str) -> String {
    let mut doc = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n"
    );
    for line in dedent(spec).lines() {
        doc.push_str("  ");
        doc.push_str(line);
        doc.push('\n');
    }
    doc
}

// ---------------------------------------------------------------------------
// Expected matrices.
// ---------------------------------------------------------------------------

/// Pods matching a `ns/name` pattern where either part may be `*`.
fn pods_matching(pattern: &str) -> Vec<usize> {
    let (ns, name) = pattern
        .split_once('/')
        .unwrap_or_else(|| panic!("bad pod pattern {pattern:?}"));
    let found: Vec<usize> = PODS
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            let (pns, pname) = p.split_once('/').unwrap();
            (ns == "*" || ns == pns) && (name == "*" || name == pname)
        })
        .map(|(i, _)| i)
        .collect();
    assert!(!found.is_empty(), "pattern {pattern:?} matches no pod");
    found
}

/// An expected reachability matrix, `allowed[src][dst]`. A pod can always
/// reach itself, so the builders never touch the diagonal.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reach(Vec<Vec<bool>>);

impl Reach {
    /// Everything allowed: the Kubernetes default.
    fn all() -> Self {
        Reach(vec![vec![true; N]; N])
    }

    /// Nothing allowed but a pod to itself.
    fn only_self() -> Self {
        Reach((0..N).map(|i| (0..N).map(|j| i == j).collect()).collect())
    }

    fn set(mut self, src: &str, dst: &str, value: bool) -> Self {
        for i in pods_matching(src) {
            for j in pods_matching(dst) {
                if i != j {
                    self.0[i][j] = value;
                }
            }
        }
        self
    }

    fn allow(self, src: &str, dst: &str) -> Self {
        self.set(src, dst, true)
    }

    fn deny(self, src: &str, dst: &str) -> Self {
        self.set(src, dst, false)
    }

    /// Nothing reaches `dst` (but itself).
    fn deny_to(self, dst: &str) -> Self {
        self.deny("*/*", dst)
    }

    /// `src` reaches nothing (but itself).
    fn deny_from(self, src: &str) -> Self {
        self.deny(src, "*/*")
    }

    /// A 9x9 grid, one row per source in inventory order, `.` allowed and
    /// `X` denied. Whitespace and a leading `ns/pod` label are ignored.
    fn grid(text: &str) -> Self {
        let rows: Vec<Vec<bool>> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| {
                let l = match l.split_once(char::is_whitespace) {
                    Some((label, rest)) if label.contains('/') => rest,
                    _ => l,
                };
                l.chars()
                    .filter(|c| !c.is_whitespace())
                    .map(|c| match c {
                        '.' => true,
                        'X' => false,
                        other => panic!("bad grid character {other:?}"),
                    })
                    .collect()
            })
            .collect();
        assert!(
            rows.len() == N && rows.iter().all(|r| r.len() == N),
            "a grid must be {N}x{N}"
        );
        Reach(rows)
    }
}

fn render(m: &[Vec<bool>]) -> String {
    let mut s = String::from("       ");
    for p in PODS {
        write!(s, "{p:>4}").unwrap();
    }
    s.push('\n');
    for (i, row) in m.iter().enumerate() {
        write!(s, "  {:<5}", PODS[i]).unwrap();
        for &ok in row {
            write!(s, "{:>4}", if ok { "." } else { "X" }).unwrap();
        }
        s.push('\n');
    }
    s
}

// ---------------------------------------------------------------------------
// Expected verdicts.
// ---------------------------------------------------------------------------

/// The expected verdict of one side. Policies are named `ns/name`.
#[derive(Clone, Debug)]
enum S {
    NotAPod,
    NotIsolated,
    SamePod,
    OwnNode,
    /// Allowed by exactly these `(policy, rule index)` pairs.
    Allowed(&'static [(&'static str, usize)]),
    /// Isolated by exactly these policies, and allowed by exactly these rules.
    AllowedIso(&'static [&'static str], &'static [(&'static str, usize)]),
    /// Isolated by exactly these policies, none of which allows it.
    Denied(&'static [&'static str]),
}

impl S {
    fn allows(&self) -> bool {
        !matches!(self, S::Denied(_))
    }
}

#[derive(Clone, Debug)]
struct V {
    src: &'static str,
    dst: &'static str,
    protocol: Protocol,
    port: u16,
    egress: S,
    ingress: S,
}

/// Parses `"<src> -> <dst> <PROTO>/<port>"`; `src` and `dst` are `ns/pod`
/// or an IP address.
fn flow(text: &'static str) -> (&'static str, &'static str, Protocol, u16) {
    let parts: Vec<&'static str> = text.split_whitespace().collect();
    let [src, "->", dst, pp] = parts[..] else {
        panic!("bad flow {text:?}")
    };
    let (proto, port) = pp.split_once('/').unwrap();
    (src, dst, proto.parse().unwrap(), port.parse().unwrap())
}

// ---------------------------------------------------------------------------
// Running a case.
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Case {
    /// The NetworkPolicy documents added to the model.
    policies: Vec<String>,
    matrices: Vec<(Protocol, u16, Reach)>,
    verdicts: Vec<V>,
}

fn case(policies: Vec<String>) -> Case {
    Case {
        policies,
        matrices: Vec::new(),
        verdicts: Vec::new(),
    }
}

impl Case {
    fn matrix(mut self, protocol: Protocol, port: u16, reach: Reach) -> Self {
        self.matrices.push((protocol, port, reach));
        self
    }

    /// One verdict: `flow` is `"<src> -> <dst> <PROTO>/<port>"`, e.g.
    /// `"y/a -> x/a TCP/80"` or `"x/a -> 203.0.113.5 UDP/53"`.
    fn verdict(mut self, flow_text: &'static str, egress: S, ingress: S) -> Self {
        let (src, dst, protocol, port) = flow(flow_text);
        self.verdicts.push(V {
            src,
            dst,
            protocol,
            port,
            egress,
            ingress,
        });
        self
    }
}

fn build(docs: &[String]) -> Inventory {
    let yaml = docs.join("---\n");
    let loaded = load_str("conformance.yaml", &yaml);
    assert!(
        loaded.diagnostics.is_empty(),
        "the case's YAML does not load cleanly:\n{}\n{yaml}",
        loaded
            .diagnostics
            .iter()
            .map(|d| format!("  {d}\n"))
            .collect::<String>()
    );
    let (inv, diags) = Inventory::from_loaded(&loaded);
    assert!(diags.is_empty(), "inventory diagnostics: {diags:?}");
    let keys: Vec<String> = inv.pods.iter().map(|p| p.key()).collect();
    assert_eq!(keys, PODS, "inventory pod order");
    inv
}

fn endpoint(inv: &Inventory, s: &str) -> Endpoint {
    match s.split_once('/') {
        Some((ns, name)) => {
            Endpoint::Pod(inv.pod_id(ns, name).unwrap_or_else(|| panic!("no pod {s}")))
        }
        None => Endpoint::Ip(s.parse::<IpAddr>().unwrap()),
    }
}

fn policy_id(inv: &Inventory, key: &str) -> usize {
    inv.policies
        .iter()
        .position(|p| p.key() == key)
        .unwrap_or_else(|| panic!("no policy {key}"))
}

fn policy_ids(inv: &Inventory, keys: &[&str]) -> Vec<usize> {
    let mut ids: Vec<usize> = keys.iter().map(|k| policy_id(inv, k)).collect();
    ids.sort_unstable();
    ids
}

fn rule_refs(inv: &Inventory, rules: &[(&str, usize)]) -> Vec<RuleRef> {
    let mut refs: Vec<RuleRef> = rules
        .iter()
        .map(|(k, r)| RuleRef {
            policy: policy_id(inv, k),
            rule: *r,
        })
        .collect();
    refs.sort_by_key(|r| (r.policy, r.rule));
    refs
}

fn sorted<T: Ord + Clone>(v: &[T]) -> Vec<T> {
    let mut v = v.to_vec();
    v.sort();
    v
}

fn sorted_refs(v: &[RuleRef]) -> Vec<RuleRef> {
    let mut v = v.to_vec();
    v.sort_by_key(|r| (r.policy, r.rule));
    v
}

fn side_matches(inv: &Inventory, got: &Side, want: &S) -> bool {
    match (want, got) {
        (S::NotAPod, Side::NotAPod) | (S::NotIsolated, Side::NotIsolated) => true,
        (S::SamePod, Side::Implicit { reason }) => *reason == Implicit::SamePod,
        (S::OwnNode, Side::Implicit { reason }) => *reason == Implicit::OwnNode,
        (
            S::Allowed(rules),
            Side::Allowed {
                isolated_by,
                allowed_by,
            },
        ) => {
            let want = rule_refs(inv, rules);
            sorted_refs(allowed_by) == want && want.iter().all(|r| isolated_by.contains(&r.policy))
        }
        (
            S::AllowedIso(iso, rules),
            Side::Allowed {
                isolated_by,
                allowed_by,
            },
        ) => {
            sorted(isolated_by) == policy_ids(inv, iso)
                && sorted_refs(allowed_by) == rule_refs(inv, rules)
        }
        (S::Denied(iso), Side::Denied { isolated_by }) => {
            sorted(isolated_by) == policy_ids(inv, iso)
        }
        _ => false,
    }
}

/// Checks one ordering of the documents; returns the failures.
fn check(case: &Case, docs: &[String], label: &str) -> Vec<String> {
    let inv = build(docs);
    let mut failures = Vec::new();
    for (protocol, port, want) in &case.matrices {
        let got = verdict::reachability(&inv, *protocol, *port);
        if got.allowed != want.0 {
            let mut diff = String::new();
            for (i, row) in want.0.iter().enumerate() {
                for (j, &w) in row.iter().enumerate() {
                    if got.allowed[i][j] != w {
                        write!(
                            diff,
                            "{}->{} expected {} ",
                            PODS[i],
                            PODS[j],
                            if w { "allowed" } else { "denied" }
                        )
                        .unwrap();
                    }
                }
            }
            failures.push(format!(
                "[{label}] matrix {protocol}/{port}: {diff}\n expected:\n{} actual:\n{}",
                render(&want.0),
                render(&got.allowed)
            ));
        }
        // The one engine, two entry points: they must agree everywhere.
        for (src, src_name) in PODS.iter().enumerate() {
            for (dst, dst_name) in PODS.iter().enumerate() {
                let q = Query {
                    src: Endpoint::Pod(src),
                    dst: Endpoint::Pod(dst),
                    protocol: *protocol,
                    port: *port,
                    family: None,
                };
                let full = verdict::evaluate(&inv, &q);
                if full.allowed != verdict::allowed(&inv, &q) {
                    failures.push(format!(
                        "[{label}] evaluate and allowed disagree on {}->{} {protocol}/{port}",
                        src_name, dst_name
                    ));
                }
            }
        }
    }
    for want in &case.verdicts {
        let q = Query {
            src: endpoint(&inv, want.src),
            dst: endpoint(&inv, want.dst),
            protocol: want.protocol,
            port: want.port,
            family: None,
        };
        let got = verdict::evaluate(&inv, &q);
        let allowed = want.egress.allows() && want.ingress.allows();
        let ok = got.allowed == allowed
            && verdict::allowed(&inv, &q) == allowed
            && side_matches(&inv, &got.egress, &want.egress)
            && side_matches(&inv, &got.ingress, &want.ingress);
        if !ok {
            let names: Vec<String> = inv.policies.iter().map(|p| p.key()).collect();
            failures.push(format!(
                "[{label}] verdict {} -> {} {}/{}: expected allowed={allowed} egress={:?} ingress={:?}\n  actual {:?}\n  (policy ids: {names:?})",
                want.src, want.dst, want.protocol, want.port, want.egress, want.ingress, got
            ));
        }
    }
    failures
}

fn run(case: Case) {
    let mut docs = model_docs();
    docs.extend(case.policies.iter().cloned());
    let mut failures = check(&case, &docs, "document order");
    docs.reverse();
    failures.extend(check(&case, &docs, "reversed document order"));
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Cases.
// ---------------------------------------------------------------------------

/// Concepts: "By default, pods are non-isolated; they accept traffic from any
/// source." and "By default, if no policies exist in a namespace, then all
/// ingress and egress traffic is allowed to and from pods in that namespace."
#[test]
fn no_policies_everything_allowed() {
    let mut c = case(vec![]);
    for (p, port) in [(TCP, 80), (TCP, 81), (UDP, 80), (UDP, 81), (SCTP, 80)] {
        c = c.matrix(p, port, Reach::all());
    }
    run(c
        .verdict("x/a -> y/b TCP/80", NotIsolated, NotIsolated)
        .verdict("203.0.113.5 -> z/c UDP/53", NotAPod, NotIsolated)
        .verdict("z/c -> 198.51.100.7 SCTP/80", NotIsolated, NotAPod));
}

/// Concepts, "Default deny all ingress traffic": a policy that "selects all
/// pods but does not allow any ingress traffic to those pods ... This policy
/// does not change the default egress isolation behavior."
#[test]
fn default_deny_ingress() {
    let deny = Reach::all().deny_to("x/*");
    run(case(vec![np(
        "x",
        "deny-ingress",
        "
        podSelector: {}
        policyTypes: [Ingress]
        ",
    )])
    .matrix(TCP, 80, deny.clone())
    .matrix(UDP, 81, deny.clone())
    .matrix(SCTP, 80, deny)
    .verdict(
        "y/a -> x/a TCP/80",
        NotIsolated,
        Denied(&["x/deny-ingress"]),
    )
    .verdict(
        "x/b -> x/a TCP/80",
        NotIsolated,
        Denied(&["x/deny-ingress"]),
    )
    .verdict("x/a -> y/a TCP/80", NotIsolated, NotIsolated)
    .verdict(
        "203.0.113.5 -> x/c TCP/443",
        NotAPod,
        Denied(&["x/deny-ingress"]),
    )
    .verdict("x/a -> 203.0.113.5 TCP/443", NotIsolated, NotAPod));
}

/// Concepts, "Default deny all egress traffic": "This ensures that even pods
/// that aren't selected by any other NetworkPolicy will not be allowed egress
/// traffic. This policy does not change the default ingress isolation
/// behavior."
#[test]
fn default_deny_egress() {
    let deny = Reach::all().deny_from("x/*");
    run(case(vec![np(
        "x",
        "deny-egress",
        "
        podSelector: {}
        policyTypes: [Egress]
        ",
    )])
    .matrix(TCP, 80, deny.clone())
    .matrix(UDP, 80, deny.clone())
    .matrix(SCTP, 80, deny)
    .verdict("x/a -> y/a TCP/80", Denied(&["x/deny-egress"]), NotIsolated)
    .verdict("x/a -> x/b TCP/80", Denied(&["x/deny-egress"]), NotIsolated)
    .verdict("y/a -> x/a TCP/80", NotIsolated, NotIsolated)
    .verdict(
        "x/b -> 203.0.113.5 UDP/53",
        Denied(&["x/deny-egress"]),
        NotAPod,
    )
    .verdict("203.0.113.5 -> x/b TCP/80", NotAPod, NotIsolated));
}

/// Concepts, "Default deny all ingress and all egress traffic": "This ensures
/// that even pods that aren't selected by any other NetworkPolicy will not be
/// allowed ingress or egress traffic."
#[test]
fn default_deny_all_both_directions() {
    let deny = Reach::all().deny_to("x/*").deny_from("x/*");
    run(case(vec![np(
        "x",
        "deny-all",
        "
        podSelector: {}
        policyTypes: [Ingress, Egress]
        ",
    )])
    .matrix(TCP, 80, deny.clone())
    .matrix(UDP, 81, deny.clone())
    .matrix(SCTP, 80, deny)
    .verdict(
        "x/a -> x/b TCP/80",
        Denied(&["x/deny-all"]),
        Denied(&["x/deny-all"]),
    )
    .verdict("y/a -> x/a TCP/80", NotIsolated, Denied(&["x/deny-all"]))
    .verdict("x/c -> z/c TCP/80", Denied(&["x/deny-all"]), NotIsolated)
    .verdict("y/a -> z/b TCP/80", NotIsolated, NotIsolated));
}

/// Concepts, "Default allow all ingress traffic": "If you want to allow all
/// traffic to all pods in a namespace (even if policies are added that cause
/// some pods to be treated as "isolated"), you can create a policy that
/// explicitly allows all traffic in that namespace." An empty rule `{}`
/// matches every source and every port; policies are additive, so it wins
/// over a deny-all.
#[test]
fn allow_all_ingress_overrides_deny() {
    run(case(vec![
        np(
            "x",
            "deny-ingress",
            "
            podSelector: {}
            policyTypes: [Ingress]
            ",
        ),
        np(
            "x",
            "allow-all-ingress",
            "
            podSelector: {}
            ingress:
            - {}
            policyTypes: [Ingress]
            ",
        ),
    ])
    .matrix(TCP, 80, Reach::all())
    .matrix(UDP, 81, Reach::all())
    .matrix(SCTP, 80, Reach::all())
    .verdict(
        "y/a -> x/b TCP/80",
        NotIsolated,
        AllowedIso(
            &["x/allow-all-ingress", "x/deny-ingress"],
            &[("x/allow-all-ingress", 0)],
        ),
    )
    .verdict(
        "198.51.100.7 -> x/c UDP/9999",
        NotAPod,
        Allowed(&[("x/allow-all-ingress", 0)]),
    ));
}

/// Concepts, "Default allow all egress traffic": "If you want to allow all
/// traffic from all pods in a namespace (even if policies are added that
/// cause some pods to be treated as "isolated"), you can create a policy that
/// explicitly allows all egress traffic in that namespace."
#[test]
fn allow_all_egress_overrides_deny() {
    run(case(vec![
        np(
            "x",
            "deny-egress",
            "
            podSelector: {}
            policyTypes: [Egress]
            ",
        ),
        np(
            "x",
            "allow-all-egress",
            "
            podSelector: {}
            egress:
            - {}
            policyTypes: [Egress]
            ",
        ),
    ])
    .matrix(TCP, 80, Reach::all())
    .matrix(SCTP, 80, Reach::all())
    .verdict(
        "x/a -> 198.51.100.7 TCP/443",
        AllowedIso(
            &["x/allow-all-egress", "x/deny-egress"],
            &[("x/allow-all-egress", 0)],
        ),
        NotAPod,
    )
    .verdict(
        "x/b -> z/c UDP/81",
        Allowed(&[("x/allow-all-egress", 0)]),
        NotIsolated,
    ));
}

/// `ingress`: "If this field is empty then this NetworkPolicy does not allow
/// any traffic (and serves solely to ensure that the pods it selects are
/// isolated by default)". The second policy has no `policyTypes`, which
/// defaults to `[Ingress]`.
#[test]
fn empty_ingress_list_isolates() {
    let deny = Reach::all().deny_to("x/a").deny_to("y/b");
    run(case(vec![
        np(
            "x",
            "empty",
            "
            podSelector: {matchLabels: {pod: a}}
            policyTypes: [Ingress]
            ingress: []
            ",
        ),
        np(
            "y",
            "empty-defaulted",
            "
            podSelector: {matchLabels: {pod: b}}
            ingress: []
            ",
        ),
    ])
    .matrix(TCP, 80, deny.clone())
    .matrix(UDP, 80, deny)
    .verdict("x/b -> x/a TCP/80", NotIsolated, Denied(&["x/empty"]))
    .verdict(
        "y/a -> y/b TCP/80",
        NotIsolated,
        Denied(&["y/empty-defaulted"]),
    )
    .verdict("x/a -> y/a TCP/80", NotIsolated, NotIsolated));
}

/// `policyTypes`: "If this field is not specified, it will default based on
/// the existence of ingress or egress rules; policies that contain an egress
/// section are assumed to affect egress, and all policies (whether or not
/// they contain an ingress section) are assumed to affect ingress."
/// Here: only ingress rules, so egress is untouched.
#[test]
fn policy_types_absent_with_only_ingress_rules() {
    run(case(vec![np(
        "x",
        "allow-from-b",
        "
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - from:
          - podSelector: {matchLabels: {pod: b}}
        ",
    )])
    .matrix(TCP, 80, Reach::all().deny_to("x/a").allow("x/b", "x/a"))
    .verdict(
        "x/b -> x/a TCP/80",
        NotIsolated,
        Allowed(&[("x/allow-from-b", 0)]),
    )
    .verdict(
        "x/c -> x/a TCP/80",
        NotIsolated,
        Denied(&["x/allow-from-b"]),
    )
    .verdict("x/a -> z/c TCP/80", NotIsolated, NotIsolated)
    .verdict("x/a -> 203.0.113.5 TCP/80", NotIsolated, NotAPod));
}

/// `policyTypes` defaulting with egress rules and no ingress section: the
/// policy affects egress AND ingress ("all policies (whether or not they
/// contain an ingress section) are assumed to affect ingress"), so x/a is
/// isolated for ingress with no ingress rule: nothing may reach it.
#[test]
fn policy_types_absent_with_egress_rules_isolates_both() {
    run(case(vec![np(
        "x",
        "egress-to-y",
        "
        podSelector: {matchLabels: {pod: a}}
        egress:
        - to:
          - namespaceSelector: {matchLabels: {ns: y}}
        ",
    )])
    .matrix(
        TCP,
        80,
        Reach::all()
            .deny_to("x/a")
            .deny_from("x/a")
            .allow("x/a", "y/*"),
    )
    .verdict("y/a -> x/a TCP/80", NotIsolated, Denied(&["x/egress-to-y"]))
    .verdict("x/b -> x/a TCP/80", NotIsolated, Denied(&["x/egress-to-y"]))
    .verdict(
        "x/a -> y/b TCP/80",
        Allowed(&[("x/egress-to-y", 0)]),
        NotIsolated,
    )
    .verdict("x/a -> z/b TCP/80", Denied(&["x/egress-to-y"]), NotIsolated));
}

/// Concepts: "If no `policyTypes` are specified on a NetworkPolicy then by
/// default `Ingress` will always be set and `Egress` will be set if the
/// NetworkPolicy has any egress rules." `egress: []` has none, so the policy
/// is ingress-only (and `policyTypes: []` is the same as absent).
#[test]
fn policy_types_absent_with_empty_egress_list_is_ingress_only() {
    run(case(vec![
        np(
            "x",
            "empty-egress",
            "
            podSelector: {matchLabels: {pod: a}}
            egress: []
            ",
        ),
        np(
            "y",
            "empty-types",
            "
            podSelector: {matchLabels: {pod: a}}
            policyTypes: []
            egress: []
            ",
        ),
    ])
    .matrix(TCP, 80, Reach::all().deny_to("x/a").deny_to("y/a"))
    .verdict("x/a -> z/a TCP/80", NotIsolated, NotIsolated)
    .verdict("y/a -> z/a TCP/80", NotIsolated, NotIsolated)
    .verdict("z/a -> y/a TCP/80", NotIsolated, Denied(&["y/empty-types"]))
    .verdict(
        "z/a -> x/a TCP/80",
        NotIsolated,
        Denied(&["x/empty-egress"]),
    ));
}

/// `policyTypes`: "If you want to write an egress-only policy, you must
/// explicitly specify policyTypes [ "Egress" ]." Ingress rules of such a
/// policy have no effect, and ingress stays non-isolated.
#[test]
fn policy_types_egress_only_leaves_ingress_alone() {
    run(case(vec![np(
        "x",
        "egress-only",
        "
        podSelector: {matchLabels: {pod: a}}
        policyTypes: [Egress]
        ingress:
        - from:
          - podSelector: {matchLabels: {pod: b}}
        egress:
        - to:
          - podSelector: {matchLabels: {pod: c}}
        ",
    )])
    .matrix(TCP, 80, Reach::all().deny_from("x/a").allow("x/a", "x/c"))
    .verdict("y/a -> x/a TCP/80", NotIsolated, NotIsolated)
    .verdict("x/c -> x/a TCP/80", NotIsolated, NotIsolated)
    .verdict(
        "x/a -> x/c TCP/80",
        Allowed(&[("x/egress-only", 0)]),
        NotIsolated,
    )
    .verdict("x/a -> x/b TCP/80", Denied(&["x/egress-only"]), NotIsolated));
}

/// The converse: "The `policyTypes` field indicates whether or not the given
/// policy applies to ingress traffic to selected pod, egress traffic from
/// selected pods, or both." With `[Ingress]`, egress rules have no effect.
#[test]
fn policy_types_ingress_only_leaves_egress_alone() {
    run(case(vec![np(
        "x",
        "ingress-only",
        "
        podSelector: {matchLabels: {pod: a}}
        policyTypes: [Ingress]
        ingress:
        - from:
          - podSelector: {matchLabels: {pod: b}}
        egress:
        - to:
          - podSelector: {matchLabels: {pod: c}}
        ",
    )])
    .matrix(TCP, 80, Reach::all().deny_to("x/a").allow("x/b", "x/a"))
    .verdict("x/a -> y/a TCP/80", NotIsolated, NotIsolated)
    .verdict("x/a -> x/b TCP/80", NotIsolated, NotIsolated));
}

/// `podSelector`: "This field is optional. If it is not specified, it
/// defaults to an empty selector." and "An empty selector matches all pods
/// in the policy's namespace."
#[test]
fn pod_selector_absent_selects_all_pods_of_namespace() {
    run(case(vec![np("x", "no-selector", "policyTypes: [Ingress]")])
        .matrix(TCP, 80, Reach::all().deny_to("x/*"))
        .verdict("y/a -> x/c TCP/80", NotIsolated, Denied(&["x/no-selector"]))
        .verdict("x/a -> y/c TCP/80", NotIsolated, NotIsolated));
}

/// Concepts: "Each NetworkPolicy includes a `podSelector` which selects the
/// grouping of pods to which the policy applies." Other pods of the
/// namespace "will continue to accept all traffic".
#[test]
fn pod_selector_match_labels() {
    run(case(vec![np(
        "x",
        "isolate-b",
        "
        podSelector: {matchLabels: {pod: b}}
        policyTypes: [Ingress, Egress]
        ",
    )])
    .matrix(TCP, 80, Reach::all().deny_to("x/b").deny_from("x/b"))
    .verdict("x/a -> x/c TCP/80", NotIsolated, NotIsolated)
    .verdict("x/a -> x/b TCP/80", NotIsolated, Denied(&["x/isolate-b"]))
    .verdict("x/b -> x/a TCP/80", Denied(&["x/isolate-b"]), NotIsolated));
}

/// Label selector `In`: the label's value is in the set; a pod without the
/// key does not match. Used in the policy's podSelector and in a peer.
#[test]
fn match_expressions_in() {
    run(case(vec![np(
        "x",
        "in",
        "
        podSelector:
          matchExpressions:
          - {key: pod, operator: In, values: [a, b]}
        policyTypes: [Ingress]
        ingress:
        - from:
          - namespaceSelector:
              matchExpressions:
              - {key: ns, operator: In, values: [y, z]}
            podSelector:
              matchExpressions:
              - {key: pod, operator: In, values: [a]}
        ",
    )])
    .matrix(
        TCP,
        80,
        Reach::all()
            .deny_to("x/a")
            .deny_to("x/b")
            .allow("y/a", "x/a")
            .allow("z/a", "x/a")
            .allow("y/a", "x/b")
            .allow("z/a", "x/b"),
    )
    .verdict("z/a -> x/b TCP/80", NotIsolated, Allowed(&[("x/in", 0)]))
    .verdict("y/b -> x/a TCP/80", NotIsolated, Denied(&["x/in"]))
    .verdict("x/a -> x/b TCP/80", NotIsolated, Denied(&["x/in"]))
    .verdict("y/b -> x/c TCP/80", NotIsolated, NotIsolated));
}

/// Label selector `NotIn`: the value is not in the set.
#[test]
fn match_expressions_not_in() {
    run(case(vec![np(
        "x",
        "not-in",
        "
        podSelector:
          matchExpressions:
          - {key: pod, operator: NotIn, values: [a]}
        policyTypes: [Ingress]
        ingress:
        - from:
          - namespaceSelector:
              matchExpressions:
              - {key: ns, operator: NotIn, values: [x, y]}
        ",
    )])
    .matrix(
        TCP,
        80,
        Reach::all()
            .deny_to("x/b")
            .deny_to("x/c")
            .allow("z/*", "x/b")
            .allow("z/*", "x/c"),
    )
    .verdict("y/a -> x/a TCP/80", NotIsolated, NotIsolated)
    .verdict("y/a -> x/b TCP/80", NotIsolated, Denied(&["x/not-in"]))
    .verdict(
        "z/c -> x/c TCP/80",
        NotIsolated,
        Allowed(&[("x/not-in", 0)]),
    ));
}

/// Label selector `NotIn` also matches objects that do not have the key at
/// all. Concepts, "Labels and Selectors": `tier notin (frontend, backend)`
/// selects resources whose `tier` is neither value "and all resources with no
/// labels with the tier key". No pod has a `team` label.
#[test]
fn match_expressions_not_in_matches_pods_without_the_key() {
    run(case(vec![np(
        "y",
        "not-in-team",
        "
        podSelector:
          matchExpressions:
          - {key: team, operator: NotIn, values: [blue]}
        policyTypes: [Ingress]
        ingress:
        - from:
          - podSelector:
              matchExpressions:
              - {key: team, operator: NotIn, values: [red]}
        ",
    )])
    .matrix(TCP, 80, Reach::all().deny_to("y/*").allow("y/*", "y/*"))
    .verdict("x/a -> y/a TCP/80", NotIsolated, Denied(&["y/not-in-team"]))
    .verdict(
        "y/b -> y/a TCP/80",
        NotIsolated,
        Allowed(&[("y/not-in-team", 0)]),
    ));
}

/// Label selector `Exists`: the key is present, whatever its value. A
/// selector on a key no pod has selects nothing and isolates nothing.
#[test]
fn match_expressions_exists() {
    run(case(vec![
        np(
            "x",
            "exists",
            "
            podSelector:
              matchExpressions:
              - {key: pod, operator: Exists}
            policyTypes: [Ingress]
            ingress:
            - from:
              - namespaceSelector:
                  matchExpressions:
                  - {key: ns, operator: Exists}
                podSelector: {matchLabels: {pod: c}}
            ",
        ),
        np(
            "y",
            "team-exists",
            "
            podSelector:
              matchExpressions:
              - {key: team, operator: Exists}
            policyTypes: [Ingress, Egress]
            ",
        ),
    ])
    .matrix(TCP, 80, Reach::all().deny_to("x/*").allow("*/c", "x/*"))
    .verdict(
        "z/c -> x/a TCP/80",
        NotIsolated,
        Allowed(&[("x/exists", 0)]),
    )
    .verdict("z/b -> x/a TCP/80", NotIsolated, Denied(&["x/exists"]))
    .verdict("y/a -> y/b TCP/80", NotIsolated, NotIsolated));
}

/// Label selector `DoesNotExist`: the key is absent. Every pod has `pod`, so
/// `pod DoesNotExist` selects nothing; no pod has `team`, so `team
/// DoesNotExist` selects every pod.
#[test]
fn match_expressions_does_not_exist() {
    run(case(vec![
        np(
            "x",
            "no-team",
            "
            podSelector:
              matchExpressions:
              - {key: team, operator: DoesNotExist}
            policyTypes: [Ingress]
            ingress:
            - from:
              - podSelector:
                  matchExpressions:
                  - {key: team, operator: DoesNotExist}
            ",
        ),
        np(
            "x",
            "no-pod-label",
            "
            podSelector:
              matchExpressions:
              - {key: pod, operator: DoesNotExist}
            policyTypes: [Ingress, Egress]
            ",
        ),
    ])
    .matrix(TCP, 80, Reach::all().deny_to("x/*").allow("x/*", "x/*"))
    .verdict("y/a -> x/a TCP/80", NotIsolated, Denied(&["x/no-team"]))
    .verdict("x/a -> y/a TCP/80", NotIsolated, NotIsolated)
    .verdict(
        "x/c -> x/b TCP/80",
        NotIsolated,
        Allowed(&[("x/no-team", 0)]),
    ));
}

/// LabelSelector: "The result of matchLabels and matchExpressions are
/// ANDed." and "The requirements are ANDed." — `matchLabels` and every
/// `matchExpressions` entry must all hold. `pod=b AND pod in (a,b)` is just b
/// (an OR would give a and b); `pod=c AND pod in (a,b)` is nothing.
#[test]
fn match_labels_and_match_expressions_are_anded() {
    run(case(vec![
        np(
            "x",
            "and",
            "
            podSelector:
              matchLabels: {pod: b}
              matchExpressions:
              - {key: pod, operator: In, values: [a, b]}
            policyTypes: [Ingress]
            ingress:
            - from:
              - namespaceSelector:
                  matchLabels: {ns: y}
                  matchExpressions:
                  - {key: kubernetes.io/metadata.name, operator: In, values: [x, y]}
                podSelector:
                  matchLabels: {pod: a}
                  matchExpressions:
                  - {key: pod, operator: NotIn, values: [b]}
            ",
        ),
        np(
            "x",
            "and-empty",
            "
            podSelector:
              matchLabels: {pod: c}
              matchExpressions:
              - {key: pod, operator: In, values: [a, b]}
            policyTypes: [Ingress, Egress]
            ",
        ),
    ])
    .matrix(TCP, 80, Reach::all().deny_to("x/b").allow("y/a", "x/b"))
    .verdict("x/c -> x/a TCP/80", NotIsolated, NotIsolated)
    .verdict("x/a -> x/b TCP/80", NotIsolated, Denied(&["x/and"]))
    .verdict("y/a -> x/b TCP/80", NotIsolated, Allowed(&[("x/and", 0)]))
    .verdict("x/c -> z/a TCP/80", NotIsolated, NotIsolated));
}

/// Concepts: "podSelector: This selects particular Pods in the same
/// namespace as the NetworkPolicy which should be allowed as ingress sources
/// or egress destinations."
#[test]
fn peer_pod_selector_is_own_namespace_only() {
    run(case(vec![np(
        "x",
        "from-b",
        "
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - from:
          - podSelector: {matchLabels: {pod: b}}
        ",
    )])
    .matrix(TCP, 80, Reach::all().deny_to("x/a").allow("x/b", "x/a"))
    .verdict(
        "x/b -> x/a TCP/80",
        NotIsolated,
        Allowed(&[("x/from-b", 0)]),
    )
    .verdict("y/b -> x/a TCP/80", NotIsolated, Denied(&["x/from-b"]))
    .verdict("z/b -> x/a TCP/80", NotIsolated, Denied(&["x/from-b"])));
}

/// `podSelector` in a peer: "This field follows standard label selector
/// semantics; if present but empty, it selects all pods." — of the policy's
/// own namespace when there is no namespaceSelector.
#[test]
fn peer_empty_pod_selector_is_all_pods_of_own_namespace() {
    run(case(vec![np(
        "x",
        "same-namespace",
        "
        podSelector: {}
        ingress:
        - from:
          - podSelector: {}
        ",
    )])
    .matrix(TCP, 80, Reach::all().deny_to("x/*").allow("x/*", "x/*"))
    .verdict(
        "x/c -> x/a TCP/80",
        NotIsolated,
        Allowed(&[("x/same-namespace", 0)]),
    )
    .verdict(
        "y/a -> x/a TCP/80",
        NotIsolated,
        Denied(&["x/same-namespace"]),
    ));
}

/// Concepts: "namespaceSelector: This selects particular namespaces for which
/// all Pods should be allowed as ingress sources or egress destinations."
/// The policy's own namespace is not implied.
#[test]
fn peer_namespace_selector_selects_all_pods_in_those_namespaces() {
    run(case(vec![np(
        "x",
        "from-y",
        "
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - from:
          - namespaceSelector: {matchLabels: {ns: y}}
        ",
    )])
    .matrix(TCP, 80, Reach::all().deny_to("x/a").allow("y/*", "x/a"))
    .verdict(
        "y/c -> x/a TCP/80",
        NotIsolated,
        Allowed(&[("x/from-y", 0)]),
    )
    .verdict("x/b -> x/a TCP/80", NotIsolated, Denied(&["x/from-y"])));
}

/// Concepts: "A single `to`/`from` entry that specifies both
/// `namespaceSelector` and `podSelector` selects particular Pods within
/// particular namespaces."
#[test]
fn peer_namespace_and_pod_selector_in_one_peer_are_anded() {
    run(case(vec![np(
        "x",
        "and",
        "
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - from:
          - namespaceSelector: {matchLabels: {ns: y}}
            podSelector: {matchLabels: {pod: b}}
        ",
    )])
    .matrix(TCP, 80, Reach::all().deny_to("x/a").allow("y/b", "x/a"))
    .verdict("y/b -> x/a TCP/80", NotIsolated, Allowed(&[("x/and", 0)]))
    .verdict("y/a -> x/a TCP/80", NotIsolated, Denied(&["x/and"]))
    .verdict("x/b -> x/a TCP/80", NotIsolated, Denied(&["x/and"])));
}

/// Concepts: "[this policy] contains two elements in the `from` array, and
/// allows connections from Pods in the local Namespace with the label
/// `role=client`, *or* from any Pod in any namespace with the label
/// `user=alice`."
#[test]
fn peer_namespace_and_pod_selector_as_two_peers_are_ored() {
    run(case(vec![np(
        "x",
        "or",
        "
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - from:
          - namespaceSelector: {matchLabels: {ns: y}}
          - podSelector: {matchLabels: {pod: b}}
        ",
    )])
    .matrix(
        TCP,
        80,
        Reach::all()
            .deny_to("x/a")
            .allow("y/*", "x/a")
            .allow("x/b", "x/a"),
    )
    .verdict("x/b -> x/a TCP/80", NotIsolated, Allowed(&[("x/or", 0)]))
    .verdict("y/a -> x/a TCP/80", NotIsolated, Allowed(&[("x/or", 0)]))
    .verdict("z/b -> x/a TCP/80", NotIsolated, Denied(&["x/or"])));
}

/// `namespaceSelector`: "This field follows standard label selector
/// semantics; if present but empty, it selects all namespaces." It selects
/// pods, never addresses outside the cluster.
#[test]
fn peer_empty_namespace_selector_is_all_namespaces() {
    run(case(vec![
        np(
            "x",
            "all-namespaces",
            "
            podSelector: {matchLabels: {pod: a}}
            ingress:
            - from:
              - namespaceSelector: {}
            ",
        ),
        np(
            "x",
            "all-namespaces-c",
            "
            podSelector: {matchLabels: {pod: b}}
            ingress:
            - from:
              - namespaceSelector: {}
                podSelector: {matchLabels: {pod: c}}
            ",
        ),
    ])
    .matrix(TCP, 80, Reach::all().deny_to("x/b").allow("*/c", "x/b"))
    .verdict(
        "z/c -> x/a TCP/80",
        NotIsolated,
        Allowed(&[("x/all-namespaces", 0)]),
    )
    .verdict(
        "203.0.113.5 -> x/a TCP/80",
        NotAPod,
        Denied(&["x/all-namespaces"]),
    )
    .verdict(
        "y/c -> x/b TCP/80",
        NotIsolated,
        Allowed(&[("x/all-namespaces-c", 0)]),
    )
    .verdict(
        "y/a -> x/b TCP/80",
        NotIsolated,
        Denied(&["x/all-namespaces-c"]),
    ));
}

/// The API server sets the well-known label `kubernetes.io/metadata.name`
/// (value: the namespace's name) on every namespace (Kubernetes 1.22+,
/// KEP-2161), so a namespaceSelector can target a namespace by name. The
/// model's namespaces do not declare it.
#[test]
fn peer_namespace_selector_on_metadata_name_label() {
    run(case(vec![np(
        "x",
        "from-z",
        "
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - from:
          - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}
        ",
    )])
    .matrix(TCP, 80, Reach::all().deny_to("x/a").allow("z/*", "x/a"))
    .verdict(
        "z/b -> x/a TCP/80",
        NotIsolated,
        Allowed(&[("x/from-z", 0)]),
    )
    .verdict("y/b -> x/a TCP/80", NotIsolated, Denied(&["x/from-z"])));
}

/// `from`: "If this field is empty or missing, this rule matches all sources
/// (traffic not restricted by source)." — here missing; all sources includes
/// addresses outside the cluster.
#[test]
fn from_absent_matches_all_sources() {
    run(case(vec![np(
        "x",
        "port-80",
        "
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - ports:
          - {protocol: TCP, port: 80}
        ",
    )])
    .matrix(TCP, 80, Reach::all())
    .matrix(TCP, 81, Reach::all().deny_to("x/a"))
    .verdict(
        "203.0.113.5 -> x/a TCP/80",
        NotAPod,
        Allowed(&[("x/port-80", 0)]),
    )
    .verdict(
        "z/c -> x/a TCP/80",
        NotIsolated,
        Allowed(&[("x/port-80", 0)]),
    )
    .verdict("203.0.113.5 -> x/a TCP/81", NotAPod, Denied(&["x/port-80"])));
}

/// `from`: "If this field is empty or missing, this rule matches all
/// sources" — here empty.
#[test]
fn from_empty_list_matches_all_sources() {
    run(case(vec![np(
        "x",
        "port-80",
        "
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - from: []
          ports:
          - {protocol: TCP, port: 80}
        ",
    )])
    .matrix(TCP, 80, Reach::all())
    .matrix(TCP, 81, Reach::all().deny_to("x/a"))
    .verdict(
        "198.51.100.7 -> x/a TCP/80",
        NotAPod,
        Allowed(&[("x/port-80", 0)]),
    )
    .verdict("y/b -> x/a TCP/81", NotIsolated, Denied(&["x/port-80"])));
}

/// `to`: "If this field is empty or missing, this rule matches all
/// destinations (traffic not restricted by destination)." Rule 0 has `to:
/// []`, rule 1 has no `to`.
#[test]
fn egress_to_absent_or_empty_matches_all_destinations() {
    run(case(vec![np(
        "x",
        "egress",
        "
        podSelector: {matchLabels: {pod: a}}
        policyTypes: [Egress]
        egress:
        - to: []
          ports:
          - {port: 81}
        - ports:
          - {protocol: UDP, port: 80}
        ",
    )])
    .matrix(TCP, 81, Reach::all())
    .matrix(UDP, 80, Reach::all())
    .matrix(TCP, 80, Reach::all().deny_from("x/a"))
    .verdict(
        "x/a -> 203.0.113.5 TCP/81",
        Allowed(&[("x/egress", 0)]),
        NotAPod,
    )
    .verdict(
        "x/a -> 203.0.113.5 UDP/80",
        Allowed(&[("x/egress", 1)]),
        NotAPod,
    )
    .verdict(
        "x/a -> y/c UDP/80",
        Allowed(&[("x/egress", 1)]),
        NotIsolated,
    )
    .verdict("x/a -> 203.0.113.5 TCP/80", Denied(&["x/egress"]), NotAPod));
}

/// The peer rules hold for egress too: `to` entries are ORed, a podSelector
/// alone means the policy's namespace, both selectors in one entry are ANDed.
#[test]
fn egress_peers_pod_and_namespace_selectors() {
    run(case(vec![np(
        "x",
        "egress-peers",
        "
        podSelector: {matchLabels: {pod: a}}
        policyTypes: [Egress]
        egress:
        - to:
          - podSelector: {matchLabels: {pod: b}}
          - namespaceSelector: {matchLabels: {ns: z}}
            podSelector: {matchLabels: {pod: c}}
        ",
    )])
    .matrix(
        TCP,
        80,
        Reach::all()
            .deny_from("x/a")
            .allow("x/a", "x/b")
            .allow("x/a", "z/c"),
    )
    .verdict(
        "x/a -> z/c TCP/80",
        Allowed(&[("x/egress-peers", 0)]),
        NotIsolated,
    )
    .verdict(
        "x/a -> y/b TCP/80",
        Denied(&["x/egress-peers"]),
        NotIsolated,
    )
    .verdict(
        "x/a -> z/b TCP/80",
        Denied(&["x/egress-peers"]),
        NotIsolated,
    ));
}

/// `ports`: "If this field is empty or missing, this rule matches all ports
/// (traffic not restricted by port)." — every number, every protocol.
#[test]
fn ports_absent_matches_all_ports_and_protocols() {
    let reach = Reach::all().deny_to("x/a").allow("x/b", "x/a");
    let mut c = case(vec![np(
        "x",
        "from-b-any-port",
        "
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - from:
          - podSelector: {matchLabels: {pod: b}}
        ",
    )]);
    for (p, port) in [
        (TCP, 80),
        (TCP, 81),
        (TCP, 9999),
        (UDP, 80),
        (UDP, 81),
        (SCTP, 80),
        (SCTP, 65535),
    ] {
        c = c.matrix(p, port, reach.clone());
    }
    run(c
        .verdict(
            "x/b -> x/a SCTP/80",
            NotIsolated,
            Allowed(&[("x/from-b-any-port", 0)]),
        )
        .verdict(
            "x/b -> x/a UDP/1",
            NotIsolated,
            Allowed(&[("x/from-b-any-port", 0)]),
        ));
}

/// `protocol`: "If not specified, this field defaults to TCP."
#[test]
fn protocol_defaults_to_tcp() {
    let deny = Reach::all().deny_to("x/*");
    run(case(vec![np(
        "x",
        "port-81",
        "
        podSelector: {}
        ingress:
        - from:
          - namespaceSelector: {}
          ports:
          - port: 81
        ",
    )])
    .matrix(TCP, 81, Reach::all())
    .matrix(UDP, 81, deny.clone())
    .matrix(SCTP, 81, deny.clone())
    .matrix(TCP, 80, deny)
    .verdict(
        "y/a -> x/a TCP/81",
        NotIsolated,
        Allowed(&[("x/port-81", 0)]),
    )
    .verdict("y/a -> x/a UDP/81", NotIsolated, Denied(&["x/port-81"])));
}

/// `port`: "If present, only traffic on the specified protocol AND port will
/// be matched." A numeric port matches whether or not the pod declares it.
#[test]
fn numeric_port() {
    run(case(vec![np(
        "x",
        "port-8080",
        "
        podSelector: {matchLabels: {pod: c}}
        ingress:
        - ports:
          - {protocol: TCP, port: 8080}
        ",
    )])
    .matrix(TCP, 8080, Reach::all())
    .matrix(TCP, 80, Reach::all().deny_to("x/c"))
    .matrix(TCP, 8081, Reach::all().deny_to("x/c"))
    .verdict(
        "x/a -> x/c TCP/8080",
        NotIsolated,
        Allowed(&[("x/port-8080", 0)]),
    )
    .verdict("x/a -> x/c TCP/8079", NotIsolated, Denied(&["x/port-8080"])));
}

/// `protocol`: "The protocol (TCP, UDP, or SCTP) which traffic must match."
#[test]
fn udp_port() {
    let deny = Reach::all().deny_to("y/*");
    run(case(vec![np(
        "y",
        "udp-81",
        "
        podSelector: {}
        ingress:
        - ports:
          - {protocol: UDP, port: 81}
        ",
    )])
    .matrix(UDP, 81, Reach::all())
    .matrix(UDP, 80, deny.clone())
    .matrix(TCP, 81, deny.clone())
    .matrix(SCTP, 81, deny)
    .verdict(
        "x/a -> y/a UDP/81",
        NotIsolated,
        Allowed(&[("y/udp-81", 0)]),
    )
    .verdict("x/a -> y/a TCP/81", NotIsolated, Denied(&["y/udp-81"])));
}

/// SCTP is a protocol like the others.
#[test]
fn sctp_port() {
    let deny = Reach::all().deny_to("z/*");
    run(case(vec![np(
        "z",
        "sctp-80",
        "
        podSelector: {}
        ingress:
        - ports:
          - {protocol: SCTP, port: 80}
        ",
    )])
    .matrix(SCTP, 80, Reach::all())
    .matrix(SCTP, 81, deny.clone())
    .matrix(TCP, 80, deny.clone())
    .matrix(UDP, 80, deny)
    .verdict(
        "x/a -> z/b SCTP/80",
        NotIsolated,
        Allowed(&[("z/sctp-80", 0)]),
    )
    .verdict("x/a -> z/b TCP/80", NotIsolated, Denied(&["z/sctp-80"])));
}

/// `port`: "If this field is not provided, this matches all port names and
/// numbers." — of the given protocol only.
#[test]
fn protocol_without_port_matches_all_ports_of_that_protocol() {
    let deny = Reach::all().deny_to("x/b");
    run(case(vec![np(
        "x",
        "all-udp",
        "
        podSelector: {matchLabels: {pod: b}}
        ingress:
        - ports:
          - protocol: UDP
        ",
    )])
    .matrix(UDP, 80, Reach::all())
    .matrix(UDP, 81, Reach::all())
    .matrix(UDP, 5353, Reach::all())
    .matrix(TCP, 80, deny.clone())
    .matrix(SCTP, 80, deny)
    .verdict(
        "203.0.113.5 -> x/b UDP/53",
        NotAPod,
        Allowed(&[("x/all-udp", 0)]),
    )
    .verdict("203.0.113.5 -> x/b TCP/53", NotAPod, Denied(&["x/all-udp"])));
}

/// `ports`: "Each item in this list is combined using a logical OR." and
/// NetworkPolicyIngressRule: "The traffic must match both ports and from."
/// Rules of a policy are ORed; the verdict names the rule that allowed.
#[test]
fn ports_are_ored_ports_and_from_are_anded_rules_are_ored() {
    run(case(vec![np(
        "x",
        "multi",
        "
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - from:
          - podSelector: {matchLabels: {pod: b}}
          ports:
          - {port: 80}
          - {protocol: UDP, port: 81}
        - from:
          - namespaceSelector: {matchLabels: {ns: y}}
          ports:
          - {port: 81}
        - from:
          - namespaceSelector: {matchLabels: {ns: z}}
            podSelector: {matchLabels: {pod: c}}
        ",
    )])
    .matrix(
        TCP,
        80,
        Reach::all()
            .deny_to("x/a")
            .allow("x/b", "x/a")
            .allow("z/c", "x/a"),
    )
    .matrix(
        TCP,
        81,
        Reach::all()
            .deny_to("x/a")
            .allow("y/*", "x/a")
            .allow("z/c", "x/a"),
    )
    .matrix(
        UDP,
        81,
        Reach::all()
            .deny_to("x/a")
            .allow("x/b", "x/a")
            .allow("z/c", "x/a"),
    )
    .matrix(UDP, 80, Reach::all().deny_to("x/a").allow("z/c", "x/a"))
    .verdict("x/b -> x/a TCP/80", NotIsolated, Allowed(&[("x/multi", 0)]))
    .verdict("x/b -> x/a UDP/81", NotIsolated, Allowed(&[("x/multi", 0)]))
    .verdict("x/b -> x/a TCP/81", NotIsolated, Denied(&["x/multi"]))
    .verdict("y/b -> x/a TCP/81", NotIsolated, Allowed(&[("x/multi", 1)]))
    .verdict("y/b -> x/a TCP/80", NotIsolated, Denied(&["x/multi"]))
    .verdict("z/c -> x/a UDP/80", NotIsolated, Allowed(&[("x/multi", 2)]))
    .verdict("x/c -> x/a TCP/80", NotIsolated, Denied(&["x/multi"])));
}

/// `endPort`: "indicates that the range of ports from port to endPort if
/// set, inclusive, should be allowed by the policy."
#[test]
fn end_port_range_is_inclusive() {
    let deny = Reach::all().deny_to("x/a");
    run(case(vec![np(
        "x",
        "range",
        "
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - ports:
          - {protocol: TCP, port: 81, endPort: 8080}
          - {protocol: UDP, port: 5000, endPort: 5000}
        ",
    )])
    .matrix(TCP, 80, deny.clone())
    .matrix(TCP, 81, Reach::all())
    .matrix(TCP, 1000, Reach::all())
    .matrix(TCP, 8080, Reach::all())
    .matrix(TCP, 8081, deny.clone())
    .matrix(UDP, 81, deny.clone())
    .matrix(UDP, 4999, deny.clone())
    .matrix(UDP, 5000, Reach::all())
    .matrix(UDP, 5001, deny)
    .verdict(
        "y/a -> x/a TCP/8080",
        NotIsolated,
        Allowed(&[("x/range", 0)]),
    )
    .verdict(
        "y/a -> x/a UDP/5000",
        NotIsolated,
        Allowed(&[("x/range", 0)]),
    )
    .verdict("y/a -> x/a TCP/8081", NotIsolated, Denied(&["x/range"])));
}

/// `port`: "This can either be a numerical or named port on a pod." A named
/// port is resolved against each destination pod's container ports: on z/c,
/// `serve-80-tcp` is 81. Also from outside the cluster: the name still
/// resolves against the destination pod.
#[test]
fn named_port_ingress_resolves_against_each_destination_pod() {
    run(case(vec![np(
        "z",
        "named",
        "
        podSelector: {}
        ingress:
        - ports:
          - port: serve-80-tcp
          - {protocol: UDP, port: serve-81-udp}
        ",
    )])
    .matrix(TCP, 80, Reach::all().deny_to("z/c"))
    .matrix(TCP, 81, Reach::all().deny_to("z/a").deny_to("z/b"))
    .matrix(UDP, 81, Reach::all())
    .matrix(UDP, 80, Reach::all().deny_to("z/*"))
    .matrix(SCTP, 80, Reach::all().deny_to("z/*"))
    .verdict("x/a -> z/c TCP/81", NotIsolated, Allowed(&[("z/named", 0)]))
    .verdict("x/a -> z/c TCP/80", NotIsolated, Denied(&["z/named"]))
    .verdict("x/a -> z/a TCP/80", NotIsolated, Allowed(&[("z/named", 0)]))
    .verdict(
        "203.0.113.5 -> z/c TCP/81",
        NotAPod,
        Allowed(&[("z/named", 0)]),
    )
    .verdict("203.0.113.5 -> z/b TCP/81", NotAPod, Denied(&["z/named"])));
}

/// An egress rule's named port is resolved against the destination pod
/// (upstream e2e "should allow egress access on one named port").
#[test]
fn named_port_egress_resolves_against_destination_pod() {
    run(case(vec![np(
        "x",
        "egress-named",
        "
        podSelector: {matchLabels: {pod: a}}
        policyTypes: [Egress]
        egress:
        - ports:
          - port: serve-81-tcp
        ",
    )])
    .matrix(TCP, 81, Reach::all().deny("x/a", "z/c"))
    .matrix(TCP, 80, Reach::all().deny_from("x/a").allow("x/a", "z/c"))
    .verdict(
        "x/a -> y/b TCP/81",
        Allowed(&[("x/egress-named", 0)]),
        NotIsolated,
    )
    .verdict(
        "x/a -> z/c TCP/80",
        Allowed(&[("x/egress-named", 0)]),
        NotIsolated,
    )
    .verdict(
        "x/a -> z/c TCP/81",
        Denied(&["x/egress-named"]),
        NotIsolated,
    ));
}

/// A named port resolves only against the destination pod's own container
/// ports, by name and protocol: a name the pod does not define matches
/// nothing there (SCTP names work like the others).
#[test]
fn named_port_the_destination_does_not_define_matches_nothing() {
    run(case(vec![np(
        "y",
        "named",
        "
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - ports:
          - port: serve-99-tcp
          - {protocol: SCTP, port: serve-80-sctp}
        ",
    )])
    .matrix(TCP, 80, Reach::all().deny_to("y/a"))
    .matrix(TCP, 99, Reach::all().deny_to("y/a"))
    .matrix(SCTP, 80, Reach::all())
    .matrix(SCTP, 81, Reach::all().deny_to("y/a"))
    .verdict("x/a -> y/a TCP/99", NotIsolated, Denied(&["y/named"]))
    .verdict(
        "x/a -> y/a SCTP/80",
        NotIsolated,
        Allowed(&[("y/named", 0)]),
    ));
}

/// A named port is a port "on a pod": an address outside the cluster (or a
/// node that is not the pod's own) has no named ports, so a rule that names
/// one never matches it.
#[test]
fn named_port_never_matches_ip_outside_cluster() {
    run(case(vec![np(
        "x",
        "egress-named",
        "
        podSelector: {matchLabels: {pod: a}}
        policyTypes: [Egress]
        egress:
        - ports:
          - port: serve-80-tcp
          - {protocol: TCP, port: 443}
        ",
    )])
    .matrix(TCP, 80, Reach::all().deny("x/a", "z/c"))
    .verdict(
        "x/a -> 203.0.113.5 TCP/80",
        Denied(&["x/egress-named"]),
        NotAPod,
    )
    .verdict(
        "x/a -> 192.168.0.2 TCP/80",
        Denied(&["x/egress-named"]),
        NotAPod,
    )
    .verdict(
        "x/a -> 203.0.113.5 TCP/443",
        Allowed(&[("x/egress-named", 0)]),
        NotAPod,
    ));
}

/// `ipBlock` selects addresses; with a CIDR that covers pod addresses it
/// matches those pods (y is 10.0.2.0/24, z is 10.0.3.0/24), for ingress and
/// for egress.
#[test]
fn ip_block_matches_pod_addresses() {
    run(case(vec![
        np(
            "x",
            "from-y-cidr",
            "
            podSelector: {matchLabels: {pod: a}}
            ingress:
            - from:
              - ipBlock: {cidr: 10.0.2.0/24}
            ",
        ),
        np(
            "x",
            "to-z-cidr",
            "
            podSelector: {matchLabels: {pod: b}}
            policyTypes: [Egress]
            egress:
            - to:
              - ipBlock: {cidr: 10.0.3.0/24}
            ",
        ),
    ])
    .matrix(
        TCP,
        80,
        Reach::all()
            .deny_to("x/a")
            .allow("y/*", "x/a")
            .deny_from("x/b")
            .allow("x/b", "z/*"),
    )
    .verdict(
        "y/c -> x/a TCP/80",
        NotIsolated,
        Allowed(&[("x/from-y-cidr", 0)]),
    )
    .verdict("z/a -> x/a TCP/80", NotIsolated, Denied(&["x/from-y-cidr"]))
    .verdict(
        "x/b -> z/b TCP/80",
        Allowed(&[("x/to-z-cidr", 0)]),
        NotIsolated,
    )
    .verdict("x/b -> y/b TCP/80", Denied(&["x/to-z-cidr"]), NotIsolated));
}

/// IPBlock: "except is a slice of CIDRs that should not be included within
/// an IPBlock". Concepts example: "all of 172.17.0.0/16 except
/// 172.17.1.0/24".
#[test]
fn ip_block_except() {
    run(case(vec![np(
        "x",
        "cidr-except",
        "
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - from:
          - ipBlock:
              cidr: 10.0.0.0/16
              except: [10.0.2.0/24, 10.0.3.3/32]
        ",
    )])
    .matrix(
        TCP,
        80,
        Reach::grid(
            "
            x/a  . . . . . . . . .
            x/b  . . . . . . . . .
            x/c  . . . . . . . . .
            y/a  X . . . . . . . .
            y/b  X . . . . . . . .
            y/c  X . . . . . . . .
            z/a  . . . . . . . . .
            z/b  . . . . . . . . .
            z/c  X . . . . . . . .
            ",
        ),
    )
    .verdict(
        "z/b -> x/a TCP/80",
        NotIsolated,
        Allowed(&[("x/cidr-except", 0)]),
    )
    .verdict("z/c -> x/a TCP/80", NotIsolated, Denied(&["x/cidr-except"]))
    .verdict(
        "10.0.200.1 -> x/a TCP/80",
        NotAPod,
        Allowed(&[("x/cidr-except", 0)]),
    )
    .verdict(
        "10.0.2.77 -> x/a TCP/80",
        NotAPod,
        Denied(&["x/cidr-except"]),
    )
    .verdict(
        "203.0.113.5 -> x/a TCP/80",
        NotAPod,
        Denied(&["x/cidr-except"]),
    ));
}

/// Egress to an address outside the cluster is allowed by an ipBlock that
/// contains it and denied otherwise once the pod is isolated for egress;
/// a non-isolated pod may reach it anyway.
#[test]
fn egress_to_external_ip_needs_ip_block() {
    run(case(vec![np(
        "x",
        "to-internet",
        "
        podSelector: {matchLabels: {pod: a}}
        policyTypes: [Egress]
        egress:
        - to:
          - ipBlock: {cidr: 203.0.113.0/24}
        ",
    )])
    .matrix(TCP, 80, Reach::all().deny_from("x/a"))
    .verdict(
        "x/a -> 203.0.113.5 TCP/443",
        Allowed(&[("x/to-internet", 0)]),
        NotAPod,
    )
    .verdict(
        "x/a -> 198.51.100.7 TCP/443",
        Denied(&["x/to-internet"]),
        NotAPod,
    )
    .verdict("x/b -> 198.51.100.7 TCP/443", NotIsolated, NotAPod));
}

/// Ingress from an address outside the cluster: denied by isolation,
/// allowed by an ipBlock that contains the source.
#[test]
fn ingress_from_external_ip() {
    run(case(vec![
        np(
            "x",
            "deny",
            "
            podSelector: {}
            policyTypes: [Ingress]
            ",
        ),
        np(
            "x",
            "from-outside",
            "
            podSelector: {matchLabels: {pod: a}}
            ingress:
            - from:
              - ipBlock: {cidr: 198.51.100.0/24}
            ",
        ),
    ])
    .matrix(TCP, 80, Reach::all().deny_to("x/*"))
    .verdict(
        "198.51.100.7 -> x/a TCP/80",
        NotAPod,
        AllowedIso(&["x/deny", "x/from-outside"], &[("x/from-outside", 0)]),
    )
    .verdict(
        "203.0.113.5 -> x/a TCP/80",
        NotAPod,
        Denied(&["x/deny", "x/from-outside"]),
    )
    .verdict("198.51.100.7 -> x/b TCP/80", NotAPod, Denied(&["x/deny"])));
}

/// Concepts: "Network policies do not conflict; they are additive. If any
/// policy or policies select a pod, the pod is restricted to what is allowed
/// by the union of those policies' ingress/egress rules."
#[test]
fn policies_are_additive() {
    run(case(vec![
        np(
            "x",
            "allow-b-80",
            "
            podSelector: {matchLabels: {pod: a}}
            ingress:
            - from:
              - podSelector: {matchLabels: {pod: b}}
              ports:
              - port: 80
            ",
        ),
        np(
            "x",
            "allow-y-81",
            "
            podSelector: {matchLabels: {pod: a}}
            ingress:
            - from:
              - namespaceSelector: {matchLabels: {ns: y}}
              ports:
              - port: 81
            ",
        ),
        np(
            "x",
            "allow-any-b",
            "
            podSelector: {matchLabels: {pod: a}}
            ingress:
            - from:
              - namespaceSelector: {}
                podSelector: {matchLabels: {pod: b}}
            ",
        ),
    ])
    .matrix(TCP, 80, Reach::all().deny_to("x/a").allow("*/b", "x/a"))
    .matrix(
        TCP,
        81,
        Reach::all()
            .deny_to("x/a")
            .allow("*/b", "x/a")
            .allow("y/*", "x/a"),
    )
    .verdict(
        "x/b -> x/a TCP/80",
        NotIsolated,
        AllowedIso(
            &["x/allow-any-b", "x/allow-b-80", "x/allow-y-81"],
            &[("x/allow-any-b", 0), ("x/allow-b-80", 0)],
        ),
    )
    .verdict(
        "y/b -> x/a TCP/81",
        NotIsolated,
        Allowed(&[("x/allow-any-b", 0), ("x/allow-y-81", 0)]),
    )
    .verdict(
        "y/a -> x/a TCP/81",
        NotIsolated,
        Allowed(&[("x/allow-y-81", 0)]),
    )
    .verdict(
        "y/a -> x/a TCP/80",
        NotIsolated,
        Denied(&["x/allow-any-b", "x/allow-b-80", "x/allow-y-81"]),
    ));
}

/// Concepts: "For a network flow between two pods to be allowed, both the
/// egress policy on the source pod and the ingress policy on the destination
/// pod need to allow the traffic. If either the egress policy on the source,
/// or the ingress policy on the destination denies the traffic, the traffic
/// will be denied."
#[test]
fn connection_needs_egress_at_source_and_ingress_at_destination() {
    run(case(vec![
        np(
            "x",
            "egress-a",
            "
            podSelector: {matchLabels: {pod: a}}
            policyTypes: [Egress]
            egress:
            - to:
              - namespaceSelector: {matchLabels: {ns: y}}
                podSelector:
                  matchExpressions:
                  - {key: pod, operator: In, values: [b, c]}
            ",
        ),
        np(
            "y",
            "ingress-from-x",
            "
            podSelector: {}
            policyTypes: [Ingress]
            ingress:
            - from:
              - namespaceSelector: {matchLabels: {ns: x}}
                podSelector:
                  matchExpressions:
                  - {key: pod, operator: In, values: [a, b]}
            ",
        ),
    ])
    .matrix(
        TCP,
        80,
        Reach::all()
            .deny_to("y/*")
            .allow("x/b", "y/*")
            .deny_from("x/a")
            .allow("x/a", "y/b")
            .allow("x/a", "y/c"),
    )
    .verdict(
        "x/a -> y/b TCP/80",
        Allowed(&[("x/egress-a", 0)]),
        Allowed(&[("y/ingress-from-x", 0)]),
    )
    .verdict(
        "x/a -> y/a TCP/80",
        Denied(&["x/egress-a"]),
        Allowed(&[("y/ingress-from-x", 0)]),
    )
    .verdict(
        "x/c -> y/b TCP/80",
        NotIsolated,
        Denied(&["y/ingress-from-x"]),
    )
    .verdict(
        "x/b -> y/a TCP/80",
        NotIsolated,
        Allowed(&[("y/ingress-from-x", 0)]),
    )
    .verdict("x/a -> z/a TCP/80", Denied(&["x/egress-a"]), NotIsolated));
}

/// Concepts: "Other pods that are allowed (exception: a pod cannot block
/// access to itself)". Deny-all in every namespace leaves only the diagonal.
#[test]
fn pod_can_always_reach_itself() {
    let deny_all = "
        podSelector: {}
        policyTypes: [Ingress, Egress]
        ";
    run(case(vec![
        np("x", "deny-all", deny_all),
        np("y", "deny-all", deny_all),
        np("z", "deny-all", deny_all),
    ])
    .matrix(TCP, 80, Reach::only_self())
    .matrix(TCP, 81, Reach::only_self())
    .matrix(UDP, 80, Reach::only_self())
    .matrix(SCTP, 80, Reach::only_self())
    .verdict("x/a -> x/a TCP/80", SamePod, SamePod)
    .verdict("z/c -> z/c UDP/12345", SamePod, SamePod)
    .verdict(
        "x/a -> x/b TCP/80",
        Denied(&["x/deny-all"]),
        Denied(&["x/deny-all"]),
    )
    .verdict(
        "y/a -> z/a TCP/80",
        Denied(&["y/deny-all"]),
        Denied(&["z/deny-all"]),
    ));
}

/// Concepts: "IP blocks (exception: traffic to and from the node where a Pod
/// is running is always allowed, regardless of the IP address of the Pod or
/// the node)"; `ingress`: "Traffic is allowed to a pod if ... OR if the
/// traffic source is the pod's local node". Another node's address gets no
/// such exception. x/a and x/b run on node-1, x/c on node-2.
#[test]
fn own_node_traffic_always_allowed() {
    run(case(vec![np(
        "x",
        "deny-all",
        "
        podSelector: {}
        policyTypes: [Ingress, Egress]
        ",
    )])
    .matrix(TCP, 80, Reach::all().deny_to("x/*").deny_from("x/*"))
    .verdict("192.168.0.1 -> x/a TCP/80", NotAPod, OwnNode)
    .verdict("192.168.0.1 -> x/b UDP/81", NotAPod, OwnNode)
    .verdict(
        "192.168.0.2 -> x/a TCP/80",
        NotAPod,
        Denied(&["x/deny-all"]),
    )
    .verdict("192.168.0.2 -> x/c SCTP/80", NotAPod, OwnNode)
    .verdict(
        "192.168.0.1 -> x/c TCP/80",
        NotAPod,
        Denied(&["x/deny-all"]),
    )
    .verdict("x/a -> 192.168.0.1 TCP/10250", OwnNode, NotAPod)
    .verdict(
        "x/a -> 192.168.0.2 TCP/10250",
        Denied(&["x/deny-all"]),
        NotAPod,
    )
    .verdict("192.168.0.2 -> y/a TCP/80", NotAPod, NotIsolated));
}

/// Concepts: "Once there is any NetworkPolicy in a namespace selecting a
/// particular pod, that pod will reject any connections that are not allowed
/// by any NetworkPolicy." — a policy selects pods of its own namespace only
/// ("An empty selector matches all pods in the policy's namespace"), so a
/// policy in a namespace without pods isolates nobody.
#[test]
fn policies_do_not_select_pods_in_other_namespaces() {
    run(case(vec![
        np(
            "x",
            "deny-ingress",
            "
            podSelector: {}
            policyTypes: [Ingress]
            ",
        ),
        np(
            "w",
            "deny-all",
            "
            podSelector: {}
            policyTypes: [Ingress, Egress]
            ",
        ),
        np(
            "y",
            "deny-a",
            "
            podSelector: {matchLabels: {pod: a}}
            policyTypes: [Egress]
            ",
        ),
    ])
    .matrix(TCP, 80, Reach::all().deny_to("x/*").deny_from("y/a"))
    .verdict("y/b -> z/a TCP/80", NotIsolated, NotIsolated)
    .verdict("z/a -> y/c TCP/80", NotIsolated, NotIsolated)
    .verdict("x/a -> z/a TCP/80", NotIsolated, NotIsolated)
    .verdict(
        "y/a -> x/a TCP/80",
        Denied(&["y/deny-a"]),
        Denied(&["x/deny-ingress"]),
    ));
}

/// "Pods become isolated by having a NetworkPolicy that selects them." A
/// policy whose podSelector matches no pod isolates nothing.
#[test]
fn selector_selecting_nothing_does_not_isolate() {
    run(case(vec![np(
        "x",
        "selects-nothing",
        "
        podSelector: {matchLabels: {pod: nonexistent}}
        policyTypes: [Ingress, Egress]
        ",
    )])
    .matrix(TCP, 80, Reach::all())
    .matrix(UDP, 80, Reach::all())
    .verdict("x/a -> x/b TCP/80", NotIsolated, NotIsolated)
    .verdict("203.0.113.5 -> x/c TCP/80", NotAPod, NotIsolated));
}

/// Concepts: "Thus, order of evaluation does not affect the policy result."
/// The same objects in several document orders give the same matrices and
/// the same verdicts.
#[test]
fn order_independence() {
    let c = case(vec![
        np(
            "x",
            "deny-all",
            "
            podSelector: {}
            policyTypes: [Ingress, Egress]
            ",
        ),
        np(
            "x",
            "allow-from-y",
            "
            podSelector: {matchLabels: {pod: a}}
            ingress:
            - from:
              - namespaceSelector: {matchLabels: {ns: y}}
              ports:
              - port: serve-80-tcp
            ",
        ),
        np(
            "x",
            "egress-b",
            "
            podSelector: {matchLabels: {pod: b}}
            policyTypes: [Egress]
            egress:
            - to:
              - namespaceSelector: {}
                podSelector: {matchLabels: {pod: c}}
            - to:
              - ipBlock: {cidr: 203.0.113.0/24}
            ",
        ),
        np(
            "z",
            "deny-ingress-c",
            "
            podSelector: {matchLabels: {pod: c}}
            ingress:
            - from:
              - podSelector: {}
            ",
        ),
    ])
    .matrix(
        TCP,
        80,
        Reach::grid(
            "
            x/a  . X X X X X X X X
            x/b  X . X X X . X X X
            x/c  X X . X X X X X X
            y/a  . X X . . . . . X
            y/b  . X X . . . . . X
            y/c  . X X . . . . . X
            z/a  X X X . . . . . .
            z/b  X X X . . . . . .
            z/c  X X X . . . . . .
            ",
        ),
    )
    .matrix(
        TCP,
        81,
        Reach::all()
            .deny_to("x/*")
            .deny_from("x/*")
            .allow("x/b", "y/c")
            .deny("*/*", "z/c")
            .allow("z/*", "z/c"),
    )
    .verdict(
        "y/a -> x/a TCP/80",
        NotIsolated,
        AllowedIso(&["x/allow-from-y", "x/deny-all"], &[("x/allow-from-y", 0)]),
    )
    .verdict(
        "x/b -> y/c TCP/80",
        AllowedIso(&["x/deny-all", "x/egress-b"], &[("x/egress-b", 0)]),
        NotIsolated,
    )
    .verdict(
        "x/b -> 203.0.113.5 TCP/80",
        Allowed(&[("x/egress-b", 1)]),
        NotAPod,
    )
    .verdict(
        "x/b -> z/c TCP/81",
        Allowed(&[("x/egress-b", 0)]),
        Denied(&["z/deny-ingress-c"]),
    );

    // Every permutation below must give the same answers as the listed order.
    let mut docs = model_docs();
    docs.extend(c.policies.iter().cloned());
    let n = docs.len();
    let mut orders: Vec<Vec<usize>> = vec![(0..n).collect(), (0..n).rev().collect()];
    // Policies first, then the objects they select.
    let policies_first: Vec<usize> = (n - c.policies.len()..n)
        .chain(0..n - c.policies.len())
        .collect();
    orders.push(policies_first);
    // Interleaved: odd positions first.
    orders.push(
        (0..n)
            .filter(|i| i % 2 == 1)
            .chain((0..n).filter(|i| i % 2 == 0))
            .collect(),
    );
    // A few deterministic pseudo-random shuffles (Fisher-Yates, LCG).
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..6 {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let j = usize::try_from(seed >> 33).unwrap() % (i + 1);
            order.swap(i, j);
        }
        orders.push(order);
    }
    let mut failures = Vec::new();
    let baseline = build(&docs);
    for (k, order) in orders.iter().enumerate() {
        let shuffled: Vec<String> = order.iter().map(|&i| docs[i].clone()).collect();
        failures.extend(check(&c, &shuffled, &format!("order #{k}")));
        let inv = build(&shuffled);
        for (p, port) in [(TCP, 80), (TCP, 81), (UDP, 80), (SCTP, 80)] {
            if verdict::reachability(&inv, p, port) != verdict::reachability(&baseline, p, port) {
                failures.push(format!(
                    "order #{k}: matrix {p}/{port} differs from the listed order"
                ));
            }
        }
        for (src, src_name) in PODS.iter().enumerate() {
            for (dst, dst_name) in PODS.iter().enumerate() {
                let q = Query {
                    src: Endpoint::Pod(src),
                    dst: Endpoint::Pod(dst),
                    protocol: TCP,
                    port: 80,
                    family: None,
                };
                if verdict::evaluate(&inv, &q) != verdict::evaluate(&baseline, &q) {
                    failures.push(format!(
                        "order #{k}: verdict {}->{} differs from the listed order",
                        src_name, dst_name
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
