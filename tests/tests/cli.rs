//! End-to-end tests of the `bulkhead` binary's offline subcommands,
//! `reachability` and `explain`, run as a user would run them.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use bulkhead_tests::{Run, Table, bulkhead, example, write_file};
use serde_json::{Value, json};

const BAD_INPUT: i32 = 2;

const SHOP_PODS: [&str; 5] = [
    "monitoring/prometheus",
    "payments/payments-api",
    "shop/api",
    "shop/db",
    "shop/frontend",
];

fn shop() -> &'static Path {
    static SHOP: LazyLock<PathBuf> = LazyLock::new(|| example("shop"));
    &SHOP
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `bulkhead reachability -f F... EXTRA... -o json`, checked for its shape.
fn matrix(files: &[&Path], extra: &[&str]) -> Value {
    let mut args = vec!["reachability".to_owned()];
    for f in files {
        args.extend(["-f".to_owned(), s(f).to_owned()]);
    }
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args.extend(["-o".to_owned(), "json".to_owned()]);
    let run = bulkhead(&args);
    let v = run.json();
    check_matrix_shape(&v, &run);
    v
}

/// Exactly `port`, `protocol`, `allowed`; `allowed` is square: every pod is
/// a key at both levels and every cell is a boolean.
fn check_matrix_shape(v: &Value, run: &Run) {
    let top: BTreeSet<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object\n{run}"))
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        top,
        BTreeSet::from(["allowed", "port", "protocol"]),
        "{run}"
    );
    assert!(v["port"].is_u64(), "{run}");
    assert!(v["protocol"].is_string(), "{run}");
    let allowed = v["allowed"].as_object().unwrap();
    let pods: BTreeSet<&String> = allowed.keys().collect();
    for (src, row) in allowed {
        let row = row
            .as_object()
            .unwrap_or_else(|| panic!("row {src} is not an object\n{run}"));
        let dsts: BTreeSet<&String> = row.keys().collect();
        assert_eq!(dsts, pods, "row {src} does not have every pod\n{run}");
        for (dst, cell) in row {
            assert!(cell.is_boolean(), "cell {src} -> {dst} is {cell}\n{run}");
        }
    }
}

fn pods_of(m: &Value) -> Vec<String> {
    m["allowed"].as_object().unwrap().keys().cloned().collect()
}

#[track_caller]
fn cell(m: &Value, from: &str, to: &str) -> bool {
    m["allowed"][from][to]
        .as_bool()
        .unwrap_or_else(|| panic!("no cell {from} -> {to} in {m:#}"))
}

fn explain(files: &[&Path], from: &str, to: &str, port: u16, extra: &[&str]) -> Run {
    let port = port.to_string();
    let mut args = vec!["explain"];
    for f in files {
        args.extend(["-f", s(f)]);
    }
    args.extend(["--from", from, "--to", to, "--port", &port]);
    args.extend(extra);
    bulkhead(&args)
}

fn explain_json(from: &str, to: &str, port: u16, extra: &[&str]) -> Value {
    let mut extra = extra.to_vec();
    extra.extend(["-o", "json"]);
    let run = explain(&[shop()], from, to, port, &extra);
    let v = run.json();
    let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "allowed",
            "egress",
            "egressMode",
            "from",
            "ingress",
            "ingressMode",
            "outcome",
            "port",
            "protocol",
            "to"
        ]),
        "{run}"
    );
    v
}

// ---------------------------------------------------------------- reachability

#[test]
fn reachability_json_shop_tcp_80_is_the_whole_expected_matrix() {
    let m = matrix(&[shop()], &[]);
    assert_eq!(m["port"], 80);
    assert_eq!(m["protocol"], "TCP");
    assert_eq!(pods_of(&m), SHOP_PODS);
    // Rows are sources, in SHOP_PODS order; a pod always reaches itself.
    let expected = [
        // prometheus: no policy; api only takes it on "metrics" (9090).
        "..XX.", // payments-api: no policy at all.
        "..XX.", // api: egress to payments (TCP 80) and db (5432) only.
        "X..XX", // db: egress only DNS.
        "XXX.X", // frontend: egress to api on "http" only.
        "XX.X.",
    ];
    for (i, src) in SHOP_PODS.iter().enumerate() {
        let row: String = SHOP_PODS
            .iter()
            .map(|dst| if cell(&m, src, dst) { '.' } else { 'X' })
            .collect();
        assert_eq!(row, expected[i], "row {src}");
    }
}

#[test]
fn reachability_json_shop_specific_cells() {
    let m = matrix(&[shop()], &[]);
    assert!(cell(&m, "shop/frontend", "shop/api"));
    assert!(!cell(&m, "shop/frontend", "shop/db"));
    assert!(cell(&m, "shop/api", "payments/payments-api"));
    assert!(!cell(&m, "payments/payments-api", "shop/api"));

    let m = matrix(&[shop()], &["--port", "5432"]);
    assert_eq!(m["port"], 5432);
    assert!(
        cell(&m, "shop/api", "shop/db"),
        "via the named port postgres"
    );
    assert!(!cell(&m, "shop/frontend", "shop/db"));
    assert!(!cell(&m, "monitoring/prometheus", "shop/db"));

    // "metrics" is a named port: 9090 on shop/api only.
    let m = matrix(&[shop()], &["--port", "9090"]);
    assert!(cell(&m, "monitoring/prometheus", "shop/api"));
    assert!(!cell(&m, "shop/frontend", "shop/api"));
    assert!(!cell(&m, "payments/payments-api", "shop/api"));
    let m = matrix(&[shop()], &["--port", "9091"]);
    assert!(!cell(&m, "monitoring/prometheus", "shop/api"));
    // The named port is a TCP port.
    let m = matrix(&[shop()], &["--port", "9090", "--protocol", "UDP"]);
    assert!(!cell(&m, "monitoring/prometheus", "shop/api"));
}

#[test]
fn reachability_protocol_is_case_insensitive() {
    for (given, canonical) in [
        ("udp", "UDP"),
        ("Udp", "UDP"),
        ("UDP", "UDP"),
        ("sctp", "SCTP"),
        ("tcp", "TCP"),
    ] {
        let m = matrix(&[shop()], &["--protocol", given, "--port", "53"]);
        assert_eq!(m["protocol"], canonical, "--protocol {given}");
        assert_eq!(m["port"], 53);
        assert_eq!(pods_of(&m), SHOP_PODS);
    }
    // Case does not change the verdicts either.
    assert_eq!(
        matrix(&[shop()], &["--protocol", "udp", "--port", "53"]),
        matrix(&[shop()], &["--protocol", "UDP", "--port", "53"]),
    );
    // shop's pods may only send DNS to kube-system, which has no pods here.
    let m = matrix(&[shop()], &["--protocol", "udp", "--port", "53"]);
    assert!(!cell(&m, "shop/api", "payments/payments-api"));
    assert!(cell(&m, "payments/payments-api", "monitoring/prometheus"));
}

#[test]
fn reachability_table_agrees_with_json_cell_by_cell() {
    for extra in [
        &["--port", "80"][..],
        &["--port", "5432"],
        &["--port", "9090"],
        &["--port", "53", "--protocol", "udp"],
        &["--port", "53", "--protocol", "SCTP"],
    ] {
        let m = matrix(&[shop()], extra);
        let mut args = vec!["reachability", "-f", s(shop()), "-o", "table"];
        args.extend(extra);
        let run = bulkhead(&args);
        let t = Table::parse(run.ok()).unwrap_or_else(|e| panic!("{e:#}\n{run}"));
        let proto = m["protocol"].as_str().unwrap();
        let port = &m["port"];
        assert!(
            t.header
                .starts_with(&format!("reachability {proto}/{port}:")),
            "header {:?}",
            t.header
        );
        assert!(t.header.contains("'.' allowed") && t.header.contains("'X' denied"));
        assert_eq!(t.pods.len(), SHOP_PODS.len(), "one row per pod\n{run}");
        let mut sorted = t.pods.clone();
        sorted.sort();
        assert_eq!(sorted, SHOP_PODS, "{run}");
        for (i, src) in t.pods.iter().enumerate() {
            for (j, dst) in t.pods.iter().enumerate() {
                assert_eq!(
                    t.cells[i][j],
                    cell(&m, src, dst),
                    "{src} -> {dst} with {extra:?}\n{run}"
                );
            }
        }
    }
}

#[test]
fn reachability_table_is_the_default_output() {
    let default = bulkhead(["reachability", "-f", s(shop())]);
    let table = bulkhead(["reachability", "-f", s(shop()), "-o", "table"]);
    assert_eq!(default.ok(), table.ok());
}

/// With ten pods or more the column numbers have two digits, written
/// vertically; the parser checks they stand above their cells.
#[test]
fn reachability_table_with_many_pods() {
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::new();
    for i in 0..12 {
        let lonely = if i == 7 { "lonely" } else { "no" };
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\n\
             metadata: {{name: p{i:02}, namespace: big, labels: {{lonely: '{lonely}'}}}}\n\
             spec: {{containers: [{{name: c, image: i}}]}}\n\
             status: {{phase: Running, podIP: 10.7.0.{}}}\n",
            i + 1
        ));
    }
    yaml.push_str(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: lonely, namespace: big}\n\
         spec: {podSelector: {matchLabels: {lonely: lonely}}, policyTypes: [Ingress]}\n",
    );
    let f = write_file(dir.path(), "big.yaml", &yaml);
    let m = matrix(&[&f], &[]);
    let run = bulkhead(["reachability", "-f", s(&f)]);
    let t = Table::parse(run.ok()).unwrap_or_else(|e| panic!("{e:#}\n{run}"));
    assert_eq!(t.pods.len(), 12, "{run}");
    for (i, src) in t.pods.iter().enumerate() {
        for (j, dst) in t.pods.iter().enumerate() {
            let want = i == j || dst != "big/p07";
            assert_eq!(cell(&m, src, dst), want, "json {src} -> {dst}");
            assert_eq!(t.cells[i][j], want, "table {src} -> {dst}\n{run}");
        }
    }
}

#[test]
fn reachability_of_no_pods() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(dir.path(), "empty.yaml", "");
    let m = matrix(&[&f], &[]);
    assert_eq!(m["allowed"], json!({}));
    let run = bulkhead(["reachability", "-f", s(&f)]);
    assert_eq!(Table::parse(run.ok()).unwrap().pods.len(), 0);
}

// --------------------------------------------------------------------- explain

#[test]
fn explain_text_allowed() {
    let run = explain(&[shop()], "shop/frontend", "shop/api", 80, &[]);
    let out = run.ok();
    assert_eq!(
        out.lines().next().unwrap(),
        "TCP/80 from shop/frontend (10.0.1.10) to shop/api (10.0.1.11): ALLOWED",
        "{run}"
    );
    assert!(
        out.contains("allowed by shop/frontend egress rule 0"),
        "{run}"
    );
    assert!(out.contains("allowed by shop/api ingress rule 0"), "{run}");
    assert!(
        out.contains("isolated by: shop/api, shop/default-deny"),
        "{run}"
    );
    assert_eq!(run.stderr, "", "{run}");
    // -o text is the default.
    let text = explain(&[shop()], "shop/frontend", "shop/api", 80, &["-o", "text"]);
    assert_eq!(text.ok(), out);
}

#[test]
fn explain_text_denied() {
    let run = explain(&[shop()], "shop/frontend", "shop/db", 5432, &[]);
    let out = run.ok();
    assert_eq!(
        out.lines().next().unwrap(),
        "TCP/5432 from shop/frontend (10.0.1.10) to shop/db (10.0.2.20): DENIED",
        "{run}"
    );
    assert!(
        out.contains("isolated by: shop/db, shop/default-deny"),
        "{run}"
    );
    assert!(!out.contains("allowed by"), "{run}");
}

#[test]
fn explain_json_allowed_names_policies_and_rules() {
    let v = explain_json("shop/frontend", "shop/api", 80, &[]);
    assert_eq!(v["allowed"], true);
    assert_eq!(v["port"], 80);
    assert_eq!(v["protocol"], "TCP");
    assert_eq!(
        v["from"],
        json!({"pod": "shop/frontend", "ip": "10.0.1.10"})
    );
    assert_eq!(v["to"], json!({"pod": "shop/api", "ip": "10.0.1.11"}));

    let eg = &v["egress"];
    assert_eq!(eg["verdict"], "allowed");
    assert_eq!(eg["reason"], "allowedByRule");
    assert_eq!(
        eg["isolatedBy"],
        json!(["shop/allow-dns", "shop/default-deny", "shop/frontend"])
    );
    assert_eq!(eg["allowedBy"].as_array().unwrap().len(), 1);
    assert_eq!(eg["allowedBy"][0]["policy"], "shop/frontend");
    assert_eq!(eg["allowedBy"][0]["direction"], "egress");
    assert_eq!(eg["allowedBy"][0]["rule"], 0);

    let ing = &v["ingress"];
    assert_eq!(ing["verdict"], "allowed");
    assert_eq!(ing["isolatedBy"], json!(["shop/api", "shop/default-deny"]));
    assert_eq!(ing["allowedBy"].as_array().unwrap().len(), 1);
    assert_eq!(ing["allowedBy"][0]["policy"], "shop/api");
    assert_eq!(ing["allowedBy"][0]["direction"], "ingress");
    assert_eq!(ing["allowedBy"][0]["rule"], 0);
}

#[test]
fn explain_json_rule_index_counts_within_the_direction() {
    // shop/api's second ingress rule takes monitoring on "metrics".
    let v = explain_json("monitoring/prometheus", "shop/api", 9090, &[]);
    assert_eq!(v["allowed"], true);
    assert_eq!(v["egress"]["verdict"], "allowed");
    assert_eq!(v["egress"]["reason"], "notIsolated");
    assert_eq!(v["egress"]["isolatedBy"], json!([]));
    assert_eq!(v["egress"]["allowedBy"], json!([]));
    assert_eq!(v["ingress"]["allowedBy"][0]["policy"], "shop/api");
    assert_eq!(v["ingress"]["allowedBy"][0]["rule"], 1);

    // shop/api's egress: rule 0 is the database, rule 1 the payments namespace.
    let v = explain_json("shop/api", "shop/db", 5432, &[]);
    assert_eq!(v["allowed"], true);
    assert_eq!(v["egress"]["allowedBy"][0]["policy"], "shop/api");
    assert_eq!(v["egress"]["allowedBy"][0]["rule"], 0);
    assert_eq!(v["ingress"]["allowedBy"][0]["policy"], "shop/db");
    assert_eq!(v["ingress"]["allowedBy"][0]["rule"], 0);
    let v = explain_json("shop/api", "payments/payments-api", 80, &[]);
    assert_eq!(v["allowed"], true);
    assert_eq!(v["egress"]["allowedBy"][0]["policy"], "shop/api");
    assert_eq!(v["egress"]["allowedBy"][0]["rule"], 1);
    assert_eq!(v["ingress"]["reason"], "notIsolated");
}

#[test]
fn explain_json_denied() {
    let v = explain_json("shop/frontend", "shop/db", 5432, &[]);
    assert_eq!(v["allowed"], false);
    // No mode label and no cluster config: enforced, so dropped.
    assert_eq!(v["outcome"], "denied");
    assert_eq!(v["egressMode"], "Enforce");
    assert_eq!(v["ingressMode"], "Enforce");
    for (side, isolated) in [
        (
            "egress",
            json!(["shop/allow-dns", "shop/default-deny", "shop/frontend"]),
        ),
        ("ingress", json!(["shop/db", "shop/default-deny"])),
    ] {
        assert_eq!(v[side]["verdict"], "denied", "{side}");
        assert_eq!(v[side]["reason"], "noRuleAllows", "{side}");
        assert_eq!(v[side]["isolatedBy"], isolated, "{side}");
        assert_eq!(v[side]["allowedBy"], json!([]), "{side}");
    }
    // Denied on one side only is still denied.
    let v = explain_json("monitoring/prometheus", "shop/api", 80, &[]);
    assert_eq!(v["allowed"], false);
    assert_eq!(v["egress"]["verdict"], "allowed");
    assert_eq!(v["ingress"]["verdict"], "denied");
    // The protocol matters, and is normalised.
    let v = explain_json("shop/frontend", "shop/api", 80, &["--protocol", "udp"]);
    assert_eq!(v["protocol"], "UDP");
    assert_eq!(v["allowed"], false);
}

#[test]
fn explain_ip_addresses_resolve_to_their_pods() {
    for output in ["json", "text"] {
        let by_name = explain(&[shop()], "shop/frontend", "shop/api", 80, &["-o", output]);
        let by_ip = explain(&[shop()], "10.0.1.10", "10.0.1.11", 80, &["-o", output]);
        assert_eq!(by_ip.ok(), by_name.ok(), "-o {output}");
        let mixed = explain(&[shop()], "10.0.1.10", "shop/api", 80, &["-o", output]);
        assert_eq!(mixed.ok(), by_name.ok(), "-o {output}");
    }
    let v = explain_json("10.0.2.30", "10.0.1.40", 80, &[]);
    assert_eq!(v["from"]["pod"], "payments/payments-api");
    assert_eq!(v["to"]["pod"], "monitoring/prometheus");
}

#[test]
fn explain_addresses_outside_the_cluster() {
    let v = explain_json("shop/frontend", "8.8.8.8", 443, &[]);
    assert_eq!(v["to"], json!({"ip": "8.8.8.8"}));
    assert_eq!(v["allowed"], false);
    assert_eq!(v["egress"]["verdict"], "denied");
    assert_eq!(v["ingress"]["reason"], "notAPod");

    // frontend's ingress rule has no `from`: anyone, even outside the cluster.
    let v = explain_json("192.0.2.1", "shop/frontend", 80, &[]);
    assert_eq!(v["from"], json!({"ip": "192.0.2.1"}));
    assert_eq!(v["allowed"], true);
    assert_eq!(v["egress"]["reason"], "notAPod");
    assert_eq!(v["ingress"]["allowedBy"][0]["policy"], "shop/frontend");
    let v = explain_json("192.0.2.1", "shop/db", 5432, &[]);
    assert_eq!(v["allowed"], false);
}

/// `explain` and `reachability` come from one verdict engine: they must agree
/// on every pair.
#[test]
fn explain_agrees_with_reachability_on_every_pair() {
    for port in [80_u16, 5432, 9090] {
        let m = matrix(&[shop()], &["--port", &port.to_string()]);
        for from in SHOP_PODS {
            for to in SHOP_PODS {
                let v = explain_json(from, to, port, &[]);
                assert_eq!(
                    v["allowed"].as_bool().unwrap(),
                    cell(&m, from, to),
                    "{from} -> {to} on TCP/{port}"
                );
                let sides =
                    v["egress"]["verdict"] == "allowed" && v["ingress"]["verdict"] == "allowed";
                assert_eq!(v["allowed"].as_bool().unwrap(), sides, "{v:#}");
            }
        }
    }
}

// ---------------------------------------------------------------------- input

#[test]
fn a_directory_reads_the_same_as_its_files() {
    let cluster = shop().join("cluster.yaml");
    let policies = shop().join("policies.yaml");
    for output in ["json", "table"] {
        let dir = bulkhead(["reachability", "-f", s(shop()), "-o", output]);
        let files = bulkhead([
            "reachability",
            "-f",
            s(&cluster),
            "-f",
            s(&policies),
            "-o",
            output,
        ]);
        let reversed = bulkhead([
            "reachability",
            "-f",
            s(&policies),
            "-f",
            s(&cluster),
            "-o",
            output,
        ]);
        assert_eq!(dir.ok(), files.ok(), "-o {output}");
        assert_eq!(dir.ok(), reversed.ok(), "-o {output}: order of -f");
    }
    let dir = explain(&[shop()], "shop/api", "shop/db", 5432, &["-o", "json"]);
    let files = explain(
        &[&cluster, &policies],
        "shop/api",
        "shop/db",
        5432,
        &["-o", "json"],
    );
    assert_eq!(dir.ok(), files.ok());
}

#[test]
fn a_directory_reads_only_its_yaml_and_yml_files() {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "a.yaml", &tiny(Form::Documents));
    // Another policy, in a `.yml` file: it must be read.
    write_file(
        dir.path(),
        "b.yml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: b-closed, namespace: b}\n\
         spec: {podSelector: {}, policyTypes: [Ingress]}\n",
    );
    // Neither of these is read: not YAML by name, and not at the top level.
    write_file(dir.path(), "notes.txt", "kind: [ this is not yaml");
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    write_file(&dir.path().join("sub"), "c.yaml", "kind: [ broken");
    let m = matrix(&[dir.path()], &["--port", "8080"]);
    assert_eq!(pods_of(&m), TINY_PODS);
    assert!(!cell(&m, "a/web", "b/client"), "b.yml was not read");
    assert!(cell(&m, "b/client", "a/web"));
}

/// A small cluster: namespaces a and b; a/web takes namespace b on its named
/// port `http` (8080); a/db takes nothing.
const TINY: [(&str, &str, &str); 6] = [
    ("v1", "Namespace", "metadata: {name: a, labels: {team: a}}"),
    ("v1", "Namespace", "metadata: {name: b, labels: {team: b}}"),
    (
        "v1",
        "Pod",
        "metadata: {name: web, namespace: a, labels: {app: web}}\n\
         spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}\n\
         status: {phase: Running, podIP: 10.1.0.1, podIPs: [{ip: 10.1.0.1}]}",
    ),
    (
        "v1",
        "Pod",
        "metadata: {name: db, namespace: a, labels: {app: db}}\n\
         spec: {containers: [{name: c, image: i}]}\n\
         status: {phase: Running, podIP: 10.1.0.2, podIPs: [{ip: 10.1.0.2}]}",
    ),
    (
        "networking.k8s.io/v1",
        "NetworkPolicy",
        "metadata: {name: web, namespace: a}\n\
         spec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  \
         - from: [{namespaceSelector: {matchLabels: {team: b}}}]\n    ports: [{port: http}]",
    ),
    (
        "networking.k8s.io/v1",
        "NetworkPolicy",
        "metadata: {name: db, namespace: a}\n\
         spec: {podSelector: {matchLabels: {app: db}}, ingress: []}",
    ),
];

/// `b/client` comes separately, so that it can be in another file.
const TINY_CLIENT: (&str, &str, &str) = (
    "v1",
    "Pod",
    "metadata: {name: client, namespace: b, labels: {app: client}}\n\
     spec: {containers: [{name: c, image: i}]}\n\
     status: {phase: Running, podIP: 10.2.0.1, podIPs: [{ip: 10.2.0.1}]}",
);

const TINY_PODS: [&str; 3] = ["a/db", "a/web", "b/client"];

#[derive(Clone, Copy, Debug)]
enum Form {
    /// One object per YAML document.
    Documents,
    /// One `kind: List` holding every object.
    List,
    /// One typed list per kind (`PodList`, ...), whose items carry no kind.
    TypedLists,
}

fn indent(body: &str, first: &str) -> String {
    body.lines()
        .enumerate()
        .map(|(i, l)| format!("{}{l}\n", if i == 0 { first } else { "  " }))
        .collect()
}

fn tiny(form: Form) -> String {
    let objects: Vec<_> = TINY.iter().chain([&TINY_CLIENT]).collect();
    match form {
        Form::Documents => objects
            .iter()
            .map(|(v, k, body)| format!("---\napiVersion: {v}\nkind: {k}\n{body}\n"))
            .collect(),
        Form::List => {
            let mut out = "apiVersion: v1\nkind: List\nitems:\n".to_owned();
            for (v, k, body) in objects {
                out.push_str(&format!("- apiVersion: {v}\n  kind: {k}\n"));
                out.push_str(&indent(body, "  "));
            }
            out
        }
        Form::TypedLists => {
            let mut out = String::new();
            let mut kinds: Vec<(&str, &str)> = vec![];
            for (v, k, _) in &objects {
                if !kinds.contains(&(v, k)) {
                    kinds.push((v, k));
                }
            }
            // Pods first: the order of documents does not matter.
            kinds.reverse();
            for (v, k) in kinds {
                out.push_str(&format!("---\napiVersion: {v}\nkind: {k}List\nitems:\n"));
                for (_, _, body) in objects.iter().filter(|o| o.0 == v && o.1 == k) {
                    out.push_str(&indent(body, "- "));
                }
            }
            out
        }
    }
}

fn check_tiny(m: &Value) {
    assert_eq!(pods_of(m), TINY_PODS);
    assert_eq!(m["port"], 8080);
    assert!(cell(m, "b/client", "a/web"), "namespace b, named port http");
    assert!(!cell(m, "a/db", "a/web"), "namespace a is not team=b");
    assert!(!cell(m, "b/client", "a/db"), "a/db takes nothing");
    assert!(cell(m, "a/web", "b/client"));
    assert!(cell(m, "a/db", "a/db"));
}

#[test]
fn multi_document_files_lists_and_typed_lists_load_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = vec![];
    for form in [Form::Documents, Form::List, Form::TypedLists] {
        let f = write_file(dir.path(), &format!("{form:?}.yaml"), &tiny(form));
        let m = matrix(&[&f], &["--port", "8080"]);
        check_tiny(&m);
        let run = bulkhead(["reachability", "-f", s(&f), "--port", "8080"]);
        assert_eq!(run.stderr, "", "no warnings for {form:?}\n{run}");
        outputs.push((form, m, run.ok().to_owned()));
    }
    for (form, m, table) in &outputs[1..] {
        assert_eq!(*m, outputs[0].1, "{form:?} vs documents");
        assert_eq!(*table, outputs[0].2, "{form:?} vs documents");
    }
}

#[test]
fn a_typed_pod_list_loads_alongside_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let rest: String = TINY
        .iter()
        .map(|(v, k, body)| format!("---\napiVersion: {v}\nkind: {k}\n{body}\n"))
        .collect();
    let rest = write_file(dir.path(), "rest.yaml", &rest);
    let pods = write_file(
        dir.path(),
        "pods.yaml",
        &format!(
            "apiVersion: v1\nkind: PodList\nitems:\n{}",
            indent(TINY_CLIENT.2, "- ")
        ),
    );
    let m = matrix(&[&rest, &pods], &["--port", "8080"]);
    check_tiny(&m);
    let v = bulkhead([
        "explain",
        "-f",
        s(&rest),
        "-f",
        s(&pods),
        "--from",
        "10.2.0.1",
        "--to",
        "a/web",
        "--port",
        "8080",
        "-o",
        "json",
    ])
    .json();
    assert_eq!(v["from"]["pod"], "b/client");
    assert_eq!(v["allowed"], true);
    assert_eq!(v["ingress"]["allowedBy"][0]["policy"], "a/web");
}

// ------------------------------------------------------------------ bad input

fn bad_example() -> PathBuf {
    example("bad").join("bad-policy.yaml")
}

#[track_caller]
fn expect_bad_input(run: &Run) {
    run.expect_code(BAD_INPUT);
    assert_eq!(run.stdout, "", "nothing on stdout\n{run}");
}

#[test]
fn bad_example_reports_every_problem_and_evaluates_nothing() {
    let file = bad_example();
    let f = s(&file);
    let prefix = format!("error: {f}: document 1: NetworkPolicy shop/broken: ");
    for run in [
        bulkhead(["reachability", "-f", f]),
        bulkhead(["reachability", "-f", f, "-o", "json"]),
        // The directory, and with good input beside it.
        bulkhead(["reachability", "-f", s(&example("bad")), "-f", s(shop())]),
        bulkhead([
            "explain", "-f", f, "--from", "1.2.3.4", "--to", "5.6.7.8", "--port", "80",
        ]),
    ] {
        expect_bad_input(&run);
        for (field, words) in [
            (
                "spec.podSelector.matchExpressions[0].operator",
                &["Equals"][..],
            ),
            (
                "spec.ingress[0].from[0].ipBlock.except[0]",
                &["10.1.0.0/24", "10.0.0.0/16"],
            ),
            ("spec.ingress[0].ports[0].endPort", &["80", "8080"]),
            ("spec.ingress[0].ports[1].protocol", &["ICMP"]),
        ] {
            let start = format!("{prefix}{field}: ");
            let line = run
                .stderr
                .lines()
                .find(|l| l.starts_with(&start))
                .unwrap_or_else(|| panic!("no line starting {start:?}\n{run}"));
            for w in words {
                assert!(line.contains(w), "{line:?} should mention {w}");
            }
        }
        let errors = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .count();
        assert_eq!(errors, 4, "{run}");
        // The Deployment beside them is only a warning.
        assert!(
            run.stderr.lines().any(|l| l.starts_with(&format!(
                "warning: {f}: document 2: skipped: kind Deployment"
            ))),
            "{run}"
        );
    }
}

#[test]
fn problems_in_several_files_and_list_items_are_all_reported() {
    let dir = tempfile::tempdir().unwrap();
    let list = write_file(
        dir.path(),
        "list.yaml",
        "apiVersion: v1\nkind: List\nitems:\n\
         - apiVersion: v1\n  kind: Namespace\n  metadata: {name: x}\n\
         - apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  \
           metadata: {name: p, namespace: x}\n  \
           spec: {podSelector: {}, ingress: [{ports: [{protocol: GRE}]}]}\n",
    );
    let typed = write_file(
        dir.path(),
        "typed.yaml",
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: y}\n\
         ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicyList\nitems:\n\
         - metadata: {name: ok, namespace: y}\n  spec: {podSelector: {}}\n\
         - metadata: {name: q, namespace: y}\n  \
           spec: {podSelector: {}, egress: [{ports: [{port: 70000}]}]}\n",
    );
    let run = bulkhead([
        "reachability",
        "-f",
        s(&list),
        "-f",
        s(&bad_example()),
        "-f",
        s(&typed),
    ]);
    expect_bad_input(&run);
    let l = s(&list);
    let t = s(&typed);
    for start in [
        format!(
            "error: {l}: document 1, items[1]: NetworkPolicy x/p: spec.ingress[0].ports[0].protocol: "
        ),
        format!(
            "error: {t}: document 2, items[1]: NetworkPolicy y/q: spec.egress[0].ports[0].port"
        ),
    ] {
        assert!(
            run.stderr.lines().any(|line| line.starts_with(&start)),
            "no line starting {start:?}\n{run}"
        );
    }
    let errors = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .count();
    assert_eq!(errors, 6, "{run}");
    assert!(run.stderr.contains("6 errors"), "{run}");
}

#[test]
fn an_unknown_kind_only_warns() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(
        dir.path(),
        "deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: shop}\n",
    );
    let alone = bulkhead(["reachability", "-f", s(&f)]);
    alone.expect_code(0);
    let warning = format!("warning: {}: document 1: skipped: kind Deployment", s(&f));
    assert!(alone.stderr.starts_with(&warning), "{alone}");
    assert!(!alone.stderr.contains("error"), "{alone}");

    // Inside a List, the warning names the item.
    let list = write_file(
        dir.path(),
        "list.yaml",
        "apiVersion: v1\nkind: List\nitems:\n\
         - apiVersion: v1\n  kind: Namespace\n  metadata: {name: x}\n\
         - apiVersion: v1\n  kind: Service\n  metadata: {name: s, namespace: x}\n",
    );
    let run = bulkhead(["reachability", "-f", s(&list)]);
    run.expect_code(0);
    assert!(
        run.stderr.starts_with(&format!(
            "warning: {}: document 1, items[1]: skipped: kind Service",
            s(&list)
        )),
        "{run}"
    );

    let plain = bulkhead(["reachability", "-f", s(shop()), "-o", "json"]);
    let with = bulkhead(["reachability", "-f", s(shop()), "-f", s(&f), "-o", "json"]);
    assert_eq!(with.ok(), plain.ok(), "the Deployment changes nothing");
    assert!(with.stderr.contains(&warning), "{with}");
}

#[test]
fn invalid_yaml_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(dir.path(), "syntax.yaml", "kind: [\n  foo: {\n");
    for cmd in [
        &["reachability"][..],
        &[
            "explain", "--from", "1.1.1.1", "--to", "2.2.2.2", "--port", "1",
        ],
    ] {
        let mut args = cmd.to_vec();
        args.extend(["-f", s(&f)]);
        let run = bulkhead(&args);
        expect_bad_input(&run);
        assert!(
            run.stderr
                .starts_with(&format!("error: {}: document 1: ", s(&f))),
            "{run}"
        );
    }
    // One broken document among good ones still fails the whole input.
    let g = write_file(
        dir.path(),
        "second.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n---\n: : :\n  - [\n",
    );
    let run = bulkhead(["reachability", "-f", s(shop()), "-f", s(&g)]);
    expect_bad_input(&run);
    assert!(run.stderr.contains(s(&g)), "{run}");
    // Not an object at all.
    let h = write_file(dir.path(), "scalar.yaml", "just a string\n");
    let run = bulkhead(["reachability", "-f", s(&h)]);
    expect_bad_input(&run);
    assert!(
        run.stderr.contains(&format!("{}: document 1", s(&h))),
        "{run}"
    );
}

#[test]
fn a_missing_file_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let run = bulkhead(["reachability", "-f", s(&missing)]);
    expect_bad_input(&run);
    assert!(run.stderr.contains(s(&missing)), "{run}");
    // Even beside good input.
    let run = bulkhead(["reachability", "-f", s(shop()), "-f", s(&missing)]);
    expect_bad_input(&run);
    let run = explain(&[shop(), &missing], "shop/api", "shop/db", 5432, &[]);
    expect_bad_input(&run);
}

#[test]
fn unknown_endpoints_are_bad_input() {
    for (from, to, names) in [
        ("shop/nope", "shop/api", "shop/nope"),
        ("shop/api", "nope/db", "nope/db"),
        ("no-slash", "shop/api", "no-slash"),
        ("shop/api", "10.0.1.300", "10.0.1.300"),
    ] {
        let run = explain(&[shop()], from, to, 80, &[]);
        expect_bad_input(&run);
        assert!(run.stderr.contains(names), "{run}");
    }
}

#[test]
fn bad_arguments_are_bad_input() {
    for extra in [
        &["--protocol", "ICMP"][..],
        &["--port", "70000"],
        &["--port", "http"],
        &["-o", "yaml"],
    ] {
        let mut args = vec!["reachability", "-f", s(shop())];
        args.extend(extra);
        let run = bulkhead(&args);
        expect_bad_input(&run);
    }
    // -f is required, and explain needs --from, --to and --port.
    expect_bad_input(&bulkhead(["reachability"]));
    expect_bad_input(&bulkhead([
        "explain",
        "-f",
        s(shop()),
        "--from",
        "shop/api",
        "--to",
        "shop/db",
    ]));
}

#[test]
fn an_object_defined_twice_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.yaml");
    std::fs::copy(shop().join("policies.yaml"), &copy).unwrap();
    let run = bulkhead(["reachability", "-f", s(shop()), "-f", s(&copy)]);
    expect_bad_input(&run);
    assert!(run.stderr.contains("defined twice"), "{run}");
    assert!(
        run.stderr.lines().any(|l| l.starts_with(&format!(
            "error: {}: document 4: NetworkPolicy shop/api: ",
            s(&copy)
        )) && l.contains("defined twice")),
        "{run}"
    );

    // A pod twice, in two forms of the same file set.
    let a = write_file(dir.path(), "a.yaml", &tiny(Form::Documents));
    let b = write_file(
        dir.path(),
        "b.yaml",
        &format!(
            "apiVersion: v1\nkind: PodList\nitems:\n{}",
            indent(TINY_CLIENT.2, "- ")
        ),
    );
    let run = bulkhead(["reachability", "-f", s(&a), "-f", s(&b)]);
    expect_bad_input(&run);
    assert!(run.stderr.contains("b/client"), "{run}");
    assert!(run.stderr.contains("defined twice"), "{run}");
}

/// YAML allows a byte order mark at the start of a stream, and editors on
/// Windows write one.
#[test]
fn a_byte_order_mark_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let plain = tiny(Form::Documents);
    let f = write_file(dir.path(), "plain.yaml", &plain);
    let g = write_file(dir.path(), "bom.yaml", &format!("\u{feff}{plain}"));
    let want = matrix(&[&f], &["--port", "8080"]);
    let run = bulkhead(["reachability", "-f", s(&g), "--port", "8080", "-o", "json"]);
    assert_eq!(run.json(), want, "{run}");
}

/// Port 0 is no port.
#[test]
fn port_zero_is_refused() {
    let run = bulkhead(["reachability", "-f", s(&example("shop")), "--port", "0"]);
    assert_eq!(run.code(), 2, "{run}");
    assert!(run.stderr.contains("--port"), "{run}");
}

/// A dual-stack pod named by its IPv6 address: the connection is IPv6, and
/// an IPv4-only ipBlock cannot match it.
#[test]
fn explain_keeps_the_address_family_it_was_given() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(
        dir.path(),
        "dual.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: src, namespace: a}\n\
         spec: {containers: [{name: c, image: i}]}\n\
         status: {phase: Running, podIP: 10.5.0.1, podIPs: [{ip: 10.5.0.1}, {ip: 'fd00::1'}]}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {name: dst, namespace: a, labels: {app: dst}}\n\
         spec: {containers: [{name: c, image: i}]}\n\
         status: {phase: Running, podIP: 10.5.0.2, podIPs: [{ip: 10.5.0.2}, {ip: 'fd00::2'}]}\n\
         ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: v4-only, namespace: a}\n\
         spec: {podSelector: {matchLabels: {app: dst}}, ingress: [{from: [{ipBlock: {cidr: 10.5.0.0/16}}]}]}\n",
    );
    // Sanity: by name (IPv4, the primary family) it is allowed.
    let v4 = explain(&[&f], "a/src", "a/dst", 80, &["-o", "json"]).json();
    assert_eq!(v4["allowed"], true);
    assert_eq!(v4["from"]["ip"], "10.5.0.1");

    let v6 = explain(&[&f], "fd00::1", "a/dst", 80, &["-o", "json"]).json();
    assert_eq!(v6["from"], json!({"pod": "a/src", "ip": "fd00::1"}));
    assert_eq!(v6["to"], json!({"pod": "a/dst", "ip": "fd00::2"}));
    assert_eq!(v6["allowed"], false, "{v6:#}");
    assert_eq!(v6["ingress"]["verdict"], "denied");
}
