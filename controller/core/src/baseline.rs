//! The flow graph as `FlowBaseline` objects (kube mode's persistence), and
//! the merge of two graphs. Pure.
//!
//! ```text
//!  FlowGraph ──split──▶ namespace → FlowBaselineSpec (≤ MAX_BASELINE_EDGES edges each)
//!  FlowBaselineSpec* ──join──▶ FlowGraph          merge(a, b): a join (idempotent,
//!                                                  commutative), so re-merging what
//!                                                  was written changes nothing
//! ```
//!
//! An edge belongs to the namespace of its destination when the destination
//! is a workload, else to its source's; an edge with no workload end is not
//! kept (no namespace holds it, and no policy could name it).

use std::collections::BTreeMap;

use crate::crd::{
    BaselineEdge, BaselineEnd, BaselineWorkload, FlowBaselineSpec, MAX_BASELINE_EDGES,
    MAX_BASELINE_RULE_LEN,
};
use crate::flows::{
    EdgeKey, EdgeStats, FlowGraph, GRAPH_VERSION, VerdictCounts, Vertex, WorkloadId,
};
use crate::labels::Labels;
use crate::model::Protocol;

/// The namespace whose FlowBaseline holds an edge.
pub fn home_namespace(k: &EdgeKey) -> Option<&str> {
    k.dst.namespace().or_else(|| k.src.namespace())
}

fn end_of(v: &Vertex) -> BaselineEnd {
    match v {
        Vertex::Workload { namespace, name } => BaselineEnd {
            namespace: Some(namespace.clone()),
            workload: Some(name.clone()),
            cidr: None,
        },
        Vertex::External { cidr } => BaselineEnd {
            cidr: Some(cidr.to_string()),
            ..BaselineEnd::default()
        },
    }
}

fn vertex_of(e: &BaselineEnd, field: &str) -> Result<Vertex, String> {
    match (&e.namespace, &e.workload, &e.cidr) {
        (Some(ns), Some(w), None) if !ns.is_empty() && !w.is_empty() => Ok(Vertex::Workload {
            namespace: ns.clone(),
            name: w.clone(),
        }),
        (None, None, Some(c)) => c
            .parse()
            .map(|cidr| Vertex::External { cidr })
            .map_err(|_| format!("{field}.cidr: {c:?} is not a CIDR")),
        _ => Err(format!(
            "{field}: give namespace and workload, or cidr alone"
        )),
    }
}

fn cut(rule: &str) -> String {
    if rule.len() <= MAX_BASELINE_RULE_LEN {
        return rule.to_owned();
    }
    let mut end = MAX_BASELINE_RULE_LEN;
    while !rule.is_char_boundary(end) {
        end -= 1;
    }
    rule[..end].to_owned()
}

/// The graph as one FlowBaseline spec per namespace, each with at most
/// [`MAX_BASELINE_EDGES`] edges: learned edges first, then the most recently
/// seen, then in key order; the rest counted in `omittedEdges`. Sorted, so
/// the same graph gives the same specs.
pub fn split(graph: &FlowGraph) -> BTreeMap<String, FlowBaselineSpec> {
    let mut per_ns: BTreeMap<&str, Vec<(&EdgeKey, &EdgeStats)>> = BTreeMap::new();
    for (k, e) in &graph.edges {
        if let Some(ns) = home_namespace(k) {
            per_ns.entry(ns).or_default().push((k, e));
        }
    }
    let mut out = BTreeMap::new();
    for (ns, mut edges) in per_ns {
        let total = edges.len();
        if total > MAX_BASELINE_EDGES {
            edges.sort_by(|a, b| {
                (b.1.learned, b.1.last_seen_unix_millis)
                    .cmp(&(a.1.learned, a.1.last_seen_unix_millis))
                    .then_with(|| a.0.cmp(b.0))
            });
            edges.truncate(MAX_BASELINE_EDGES);
            edges.sort_by(|a, b| a.0.cmp(b.0));
        }
        let mut workloads: BTreeMap<WorkloadId, Labels> = BTreeMap::new();
        for (k, _) in &edges {
            for w in [k.src.workload(), k.dst.workload()].into_iter().flatten() {
                let sel = graph.workloads.get(&w).cloned().unwrap_or_default();
                workloads.insert(w, sel);
            }
        }
        let spec = FlowBaselineSpec {
            version: GRAPH_VERSION,
            workloads: workloads
                .into_iter()
                .map(|(w, selector)| BaselineWorkload {
                    namespace: w.namespace,
                    name: w.name,
                    selector,
                })
                .collect(),
            edge_count: u32::try_from(edges.len()).unwrap_or(u32::MAX),
            omitted_edges: (total - edges.len()) as u64,
            edges: edges
                .into_iter()
                .map(|(k, e)| BaselineEdge {
                    src: end_of(&k.src),
                    dst: end_of(&k.dst),
                    protocol: k.protocol.as_str().to_owned(),
                    port: k.port,
                    count: e.count,
                    first_seen_unix_millis: e.first_seen_unix_millis,
                    last_seen_unix_millis: e.last_seen_unix_millis,
                    allowed: e.verdicts.allowed,
                    denied: e.verdicts.denied,
                    would_deny: e.verdicts.would_deny,
                    learned: e.learned,
                    alerted: e.alerted,
                    port_name: e.port_name.clone(),
                    last_rule: cut(&e.last_rule),
                })
                .collect(),
        };
        out.insert(ns.to_owned(), spec);
    }
    out
}

/// The graph one spec holds; `Err` names the first bad field
/// (`spec.edges[3].port`).
pub fn graph_of(spec: &FlowBaselineSpec) -> Result<FlowGraph, String> {
    if spec.version != GRAPH_VERSION {
        return Err(format!(
            "spec.version: {} is not a flow graph version this controller reads ({GRAPH_VERSION})",
            spec.version
        ));
    }
    let mut g = FlowGraph::default();
    for w in &spec.workloads {
        g.workloads.insert(
            WorkloadId {
                namespace: w.namespace.clone(),
                name: w.name.clone(),
            },
            w.selector.clone(),
        );
    }
    for (i, e) in spec.edges.iter().enumerate() {
        let at = format!("spec.edges[{i}]");
        let protocol: Protocol = e
            .protocol
            .parse()
            .map_err(|m| format!("{at}.protocol: {m}"))?;
        if e.port == 0 {
            return Err(format!("{at}.port: 0 is not a port"));
        }
        let key = EdgeKey {
            src: vertex_of(&e.src, &format!("{at}.src"))?,
            dst: vertex_of(&e.dst, &format!("{at}.dst"))?,
            protocol,
            port: e.port,
        };
        let stats = EdgeStats {
            count: e.count,
            first_seen_unix_millis: e.first_seen_unix_millis,
            last_seen_unix_millis: e.last_seen_unix_millis,
            verdicts: VerdictCounts {
                allowed: e.allowed,
                denied: e.denied,
                would_deny: e.would_deny,
            },
            learned: e.learned,
            port_name: e.port_name.clone(),
            last_rule: e.last_rule.clone(),
            alerted: e.alerted,
        };
        merge_edge(g.edges.entry(key).or_default(), &stats);
    }
    Ok(g)
}

fn merge_edge(a: &mut EdgeStats, b: &EdgeStats) {
    if a.count == 0 && a.last_seen_unix_millis == 0 {
        *a = b.clone();
        return;
    }
    if b.last_seen_unix_millis > a.last_seen_unix_millis
        || (b.last_seen_unix_millis == a.last_seen_unix_millis && b.last_rule > a.last_rule)
    {
        a.last_rule.clone_from(&b.last_rule);
    }
    a.count = a.count.max(b.count);
    a.first_seen_unix_millis = a.first_seen_unix_millis.min(b.first_seen_unix_millis);
    a.last_seen_unix_millis = a.last_seen_unix_millis.max(b.last_seen_unix_millis);
    a.verdicts.allowed = a.verdicts.allowed.max(b.verdicts.allowed);
    a.verdicts.denied = a.verdicts.denied.max(b.verdicts.denied);
    a.verdicts.would_deny = a.verdicts.would_deny.max(b.verdicts.would_deny);
    a.learned |= b.learned;
    a.alerted |= b.alerted;
    if a.port_name != b.port_name {
        // The observations disagree: the number is what is known.
        a.port_name = None;
    }
}

/// Merges `other` into `into`: the union of edges; for an edge in both, the
/// larger counts (each graph counts its own observations plus what it
/// loaded, so a sum would count twice), the earliest first and latest last
/// seen, learned or alerted in either, the port name if both agree. A
/// workload selector in both is what both agree on. Idempotent and
/// commutative (up to `lastRule` ties, broken by value).
pub fn merge(into: &mut FlowGraph, other: &FlowGraph) {
    for (w, sel) in &other.workloads {
        match into.workloads.get_mut(w) {
            Some(mine) => mine.retain(|k, v| sel.get(k) == Some(v)),
            None => {
                into.workloads.insert(w.clone(), sel.clone());
            }
        }
    }
    for (k, e) in &other.edges {
        merge_edge(into.edges.entry(k.clone()).or_default(), e);
    }
    into.shed = into.shed.max(other.shed);
    into.malformed = into.malformed.max(other.malformed);
}

/// A spec without what changes with every observation (counts, times, the
/// last rule): two specs with the same skeleton differ only in statistics,
/// which may wait; a different skeleton (a new edge, newly learned or
/// alerted) should be written at once.
pub fn skeleton(spec: &FlowBaselineSpec) -> FlowBaselineSpec {
    let mut s = spec.clone();
    for e in &mut s.edges {
        e.count = 0;
        e.first_seen_unix_millis = 0;
        e.last_seen_unix_millis = 0;
        e.allowed = 0;
        e.denied = 0;
        e.would_deny = 0;
        e.last_rule.clear();
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn w(ns: &str, name: &str) -> Vertex {
        Vertex::Workload {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn mk_edge(g: &mut FlowGraph, src: Vertex, dst: Vertex, port: u16, last: u64, learned: bool) {
        for v in [&src, &dst] {
            if let Some(id) = v.workload() {
                g.workloads
                    .insert(id.clone(), Labels::from([("app".to_owned(), id.name)]));
            }
        }
        g.edges.insert(
            EdgeKey {
                src,
                dst,
                protocol: Protocol::Tcp,
                port,
            },
            EdgeStats {
                count: 3,
                first_seen_unix_millis: 1,
                last_seen_unix_millis: last,
                learned,
                last_rule: "r".into(),
                ..EdgeStats::default()
            },
        );
    }

    #[test]
    fn split_then_join_is_the_graph() {
        let mut g = FlowGraph::default();
        mk_edge(&mut g, w("a", "web"), w("a", "api"), 80, 5, true);
        mk_edge(&mut g, w("b", "job"), w("a", "api"), 80, 6, false);
        mk_edge(&mut g, w("a", "api"), w("b", "db"), 5432, 7, true);
        mk_edge(
            &mut g,
            w("b", "db"),
            Vertex::External {
                cidr: "203.0.113.7/32".parse().unwrap(),
            },
            443,
            8,
            true,
        );
        let specs = split(&g);
        assert_eq!(specs.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(specs["a"].edges.len(), 2);
        assert_eq!(specs["b"].edges.len(), 2);
        let mut back = FlowGraph::default();
        for s in specs.values() {
            merge(&mut back, &graph_of(s).unwrap());
        }
        assert_eq!(back, g);
        // Merging again changes nothing (idempotent).
        let before = back.clone();
        merge(&mut back, &g);
        assert_eq!(back, before);
    }

    #[test]
    fn an_object_holds_at_most_the_cap_learned_and_recent_first() {
        let mut g = FlowGraph::default();
        let n = MAX_BASELINE_EDGES + 10;
        for i in 0..n {
            let port = u16::try_from(1000 + i).unwrap();
            // The 5 oldest unlearned edges and ... learned ones are kept.
            mk_edge(
                &mut g,
                w("a", "c"),
                w("a", "s"),
                port,
                i as u64,
                i % 100 == 0,
            );
        }
        let spec = &split(&g)["a"];
        assert_eq!(spec.edges.len(), MAX_BASELINE_EDGES);
        assert_eq!(spec.edge_count as usize, MAX_BASELINE_EDGES);
        assert_eq!(spec.omitted_edges, 10);
        // Every learned edge is kept; the oldest unlearned ones go.
        assert!(spec.edges.iter().filter(|e| e.learned).count() == n.div_ceil(100));
        assert!(!spec.edges.iter().any(|e| e.port == 1001));
        assert!(spec.edges.iter().any(|e| e.port == 1000));
        assert!(
            spec.edges
                .iter()
                .any(|e| e.port == u16::try_from(999 + n).unwrap())
        );
    }

    #[test]
    fn merge_keeps_the_larger_counts_and_the_union() {
        let mut a = FlowGraph::default();
        mk_edge(&mut a, w("a", "web"), w("a", "api"), 80, 5, false);
        let mut b = FlowGraph::default();
        mk_edge(&mut b, w("a", "web"), w("a", "api"), 80, 9, true);
        mk_edge(&mut b, w("a", "web"), w("a", "db"), 5432, 9, false);
        b.edges.values_mut().for_each(|e| e.count = 7);
        let mut ab = a.clone();
        merge(&mut ab, &b);
        let mut ba = b.clone();
        merge(&mut ba, &a);
        assert_eq!(ab, ba, "commutative");
        assert_eq!(ab.edges.len(), 2);
        let e = ab.edges.values().next().unwrap();
        assert_eq!((e.count, e.last_seen_unix_millis, e.learned), (7, 9, true));
    }

    #[test]
    fn a_bad_spec_names_the_field() {
        let mut g = FlowGraph::default();
        mk_edge(&mut g, w("a", "web"), w("a", "api"), 80, 5, false);
        let mut spec = split(&g)["a"].clone();
        spec.edges[0].dst.cidr = Some("x".into());
        assert_eq!(
            graph_of(&spec).unwrap_err(),
            "spec.edges[0].dst: give namespace and workload, or cidr alone"
        );
        spec.edges[0].dst = BaselineEnd {
            cidr: Some("nope".into()),
            ..BaselineEnd::default()
        };
        assert!(
            graph_of(&spec)
                .unwrap_err()
                .contains("spec.edges[0].dst.cidr")
        );
        spec.version = 9;
        assert!(graph_of(&spec).unwrap_err().starts_with("spec.version"));
    }
}
