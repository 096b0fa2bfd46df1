//! `cargo bench -p bulkhead-core --bench compile`: the issue-4 compiler
//! targets on the synthetic cluster of the engine bench (10,000 pods in 100
//! namespaces, 2,000 policies, 50 nodes).
//!
//! - every node's ruleset (`compile_all`), median of 3; target < 1 s;
//! - one pod's label change turned into its deltas for every node: re-index,
//!   recompile every node, `diff` each against the one before; target < 5 ms.
//!   A full recompile cannot meet that: the bench also measures what
//!   recompiling only the nodes whose ruleset actually changes would cost,
//!   and the element-level incremental path (`compile::incremental`) on the
//!   same change, checked equal to the full recompile's diffs.
//!
//! Prints markdown table rows for docs/BENCHMARKS.md.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bulkhead_core::compile::incremental::{Incremental, Path, PodChange, normalize_delta};
use bulkhead_core::compile::{self, Compiler, diff::diff};
use bulkhead_core::inventory::Inventory;
use bulkhead_core::load_str;
use bulkhead_core::model::Object;
use bulkhead_core::model::{NamespaceScope, Peer, Pod};
use bulkhead_core::synth::{self, Shape};
use bulkhead_proto::v1 as pb;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Sets, elements, chains and rules of a ruleset.
fn sizes(rs: &pb::Ruleset) -> [usize; 4] {
    [
        rs.sets.len(),
        rs.sets.iter().map(|s| s.elements.len()).sum::<usize>()
            + rs.maps.iter().map(|m| m.entries.len()).sum::<usize>(),
        rs.chains.len(),
        rs.chains.iter().map(|c| c.rules.len()).sum(),
    ]
}

/// Element adds + removes, and chain adds + replaces + deletes, of a delta.
fn delta_size(d: &pb::RulesetDelta) -> (usize, usize) {
    let elements = d
        .set_changes
        .iter()
        .map(|c| c.add.len() + c.remove.len())
        .sum::<usize>()
        + d.map_changes
            .iter()
            .map(|c| c.add.len() + c.remove.len())
            .sum::<usize>()
        + d.add_sets.iter().map(|s| s.elements.len()).sum::<usize>();
    let chains = d.add_chains.len() + d.replace_chains.len() + d.delete_chains.len();
    (elements, chains)
}

fn main() {
    let shape = Shape {
        namespaces: 100,
        pods: 10_000,
        policies: 2_000,
        nodes: 50,
        seed: 7,
    };
    let yaml = synth::cluster_yaml(&shape);
    let loaded = load_str("synthetic.yaml", &yaml);
    let (inv, diags) = Inventory::from_loaded(&loaded);
    assert!(
        diags.iter().all(|d| !d.is_error()),
        "generator made bad input: {:?}",
        diags.first()
    );
    let rejected = loaded.diagnostics.iter().filter(|d| d.is_error()).count();
    if let Some(d) = loaded.diagnostics.iter().find(|d| d.is_error()) {
        println!(
            "  e.g. {}: {}",
            d.object.as_deref().unwrap_or("?"),
            d.message
        );
    }
    println!(
        "synthetic cluster: {} pods, {} namespaces, {} policies ({} generated; {} rejected by the loader), {} nodes",
        inv.pods.len(),
        inv.namespaces.len(),
        inv.policies.len(),
        shape.policies,
        rejected,
        inv.nodes.len()
    );

    // 1. Every node's ruleset.
    let mut times = Vec::new();
    let mut before = BTreeMap::new();
    for _ in 0..3 {
        let t = Instant::now();
        before = black_box(compile::compile_all(&inv, 1));
        times.push(t.elapsed());
    }
    let all = median(times);
    let per_node: Vec<[usize; 4]> = before.values().map(sizes).collect();
    let avg = |i: usize| per_node.iter().map(|s| s[i]).sum::<usize>() / per_node.len().max(1);
    let max = |i: usize| per_node.iter().map(|s| s[i]).max().unwrap_or(0);
    println!(
        "  per node: sets avg {} (max {}), set+map elements avg {} (max {}), chains avg {} (max {}), rules avg {} (max {})",
        avg(0),
        max(0),
        avg(1),
        max(1),
        avg(2),
        max(2),
        avg(3),
        max(3)
    );
    println!(
        "| compile_all: {} node rulesets, 10,000 pods / 2,000 policies (median of 3) | {} | < 1 s | {} |",
        before.len(),
        ms(all),
        if all < Duration::from_secs(1) {
            "met"
        } else {
            "NOT met"
        }
    );

    // 2. One pod's label change: an app-1 pod (tier api) becomes app-2
    // (tier db), picked so that the policies selecting it change too (not
    // only the peer sets that hold it).
    let relabel = |p: &Pod| {
        let mut p = p.clone();
        p.labels.insert("app".into(), "app-2".into());
        p.labels.insert("tier".into(), "db".into());
        p
    };
    let selection_changes = |p: &Pod| {
        let q = relabel(p);
        inv.namespace_policies(&p.namespace).iter().any(|&id| {
            let sel = &inv.policies[id].pod_selector;
            sel.matches(&p.labels) != sel.matches(&q.labels)
        })
    };
    let objects: Vec<Object> = loaded.objects.iter().map(|l| l.object.clone()).collect();
    let pod_index = objects
        .iter()
        .position(|o| {
            matches!(o, Object::Pod(p)
                if p.labels.get("app").map(String::as_str) == Some("app-1") && selection_changes(p))
        })
        .expect("an app-1 pod whose selection changes with its labels");
    let mut changed = objects.clone();
    let pod_key = match &mut changed[pod_index] {
        Object::Pod(p) => {
            *p = relabel(p);
            p.key()
        }
        _ => unreachable!("position() found a pod"),
    };
    let states = [objects, changed];
    let pod_at = |state: usize| match &states[state][pod_index] {
        Object::Pod(p) => p.clone(),
        _ => unreachable!("position() found a pod"),
    };

    // The incremental compiler's state, built once.
    let t = Instant::now();
    let mut inc = Incremental::new(inv.clone(), 1);
    let inc_build = t.elapsed();
    let mut elem_times = Vec::new();
    let mut paths = Vec::new();
    // A delta without its generations, its parts sorted.
    let canon = |d: &pb::RulesetDelta| {
        let mut d = d.clone();
        d.base_generation = 0;
        d.generation = 0;
        normalize_delta(&mut d);
        d
    };

    // Forward and back, so that each step is a real change.
    let mut index_times = Vec::new();
    let mut full_times = Vec::new();
    let mut diff_times = Vec::new();
    let mut incr_times = Vec::new();
    let mut affected_counts = Vec::new();
    let mut delta_elems = 0;
    let mut delta_chains = 0;
    let mut old = before;
    let mut prev_inv = inv.clone();
    let mut snapshot_times = Vec::new();
    let mut generation = 1;
    for step in 0..6 {
        let objs = states[(step + 1) % 2].clone();
        let t = Instant::now();
        let (new_inv, _) = Inventory::new(objs);
        let indexed = t.elapsed();
        generation += 1;
        let t = Instant::now();
        let new = compile::compile_all(&new_inv, generation);
        let compiled = t.elapsed();
        let deltas: BTreeMap<&String, pb::RulesetDelta> =
            new.iter().map(|(n, rs)| (n, diff(&old[n], rs))).collect();
        full_times.push(t.elapsed());
        diff_times.push(t.elapsed() - compiled);
        index_times.push(indexed);

        // What recompiling only the nodes whose ruleset changed would cost
        // (the nodes are known here from the full run; an incremental
        // compiler would have to find them from its indexes).
        let affected: Vec<&String> = deltas
            .iter()
            .filter(|(_, d)| !compile::diff::is_empty(d))
            .map(|(n, _)| *n)
            .collect();
        // The incremental path: the pod's new state in, the deltas out; the
        // same deltas as the full recompile's.
        let change = PodChange::Upsert(pod_at((step + 1) % 2));
        let t = Instant::now();
        let out = black_box(inc.pod_changed(change));
        elem_times.push(t.elapsed());
        paths.push(out.path);
        let want: BTreeMap<&String, pb::RulesetDelta> = deltas
            .iter()
            .filter(|(_, d)| !compile::diff::is_empty(d))
            .map(|(n, d)| (*n, canon(d)))
            .collect();
        let got: BTreeMap<&String, pb::RulesetDelta> =
            out.deltas.iter().map(|(n, d)| (n, canon(d))).collect();
        assert!(
            got == want && out.added.is_empty(),
            "step {step}: the incremental deltas differ from the full recompile's"
        );

        let t = Instant::now();
        let mut c = Compiler::new(&new_inv);
        for n in &affected {
            let rs = c.node(n, generation);
            black_box(diff(&old[*n], &rs));
        }
        incr_times.push(t.elapsed());
        affected_counts.push(affected.len());
        if step == 0 {
            for n in &affected {
                let (e, c) = delta_size(&deltas[n]);
                delta_elems += e;
                delta_chains += c;
            }
        }
        // What the controller's NodeIndex adds in front: finding that two
        // snapshots differ in this one pod only.
        let t = Instant::now();
        let changes = black_box(compile::incremental::pod_changes(&prev_inv, &new_inv));
        snapshot_times.push(t.elapsed());
        assert_eq!(changes.map(|c| c.len()), Some(1));
        prev_inv = new_inv;
        old = new;
    }
    // The work an element-level incremental compiler could not avoid: match
    // the pod's old and new labels against every policy's podSelector in its
    // namespace and against every pod peer of every rule.
    let (old_pod, new_pod) = match (&states[0][pod_index], &states[1][pod_index]) {
        (Object::Pod(a), Object::Pod(b)) => (a.clone(), b.clone()),
        _ => unreachable!("position() found a pod"),
    };
    let ns_labels = inv
        .namespace(&old_pod.namespace)
        .map(|n| n.labels.clone())
        .unwrap_or_default();
    let mut scan_times = Vec::new();
    let mut evaluated = 0;
    for _ in 0..101 {
        let t = Instant::now();
        let mut hits = 0usize;
        evaluated = 0;
        for labels in [&old_pod.labels, &new_pod.labels] {
            for pol in &inv.policies {
                if pol.namespace == old_pod.namespace {
                    evaluated += 1;
                    hits += usize::from(pol.pod_selector.matches(labels));
                }
                for rule in pol.ingress.iter().chain(&pol.egress).flatten() {
                    for peer in &rule.peers {
                        if let Peer::Pods { namespaces, pods } = peer {
                            evaluated += 1;
                            let ns_ok = match namespaces {
                                NamespaceScope::PolicyNamespace => {
                                    pol.namespace == old_pod.namespace
                                }
                                NamespaceScope::Selected(sel) => sel.matches(&ns_labels),
                            };
                            hits += usize::from(ns_ok && pods.matches(labels));
                        }
                    }
                }
            }
        }
        black_box(hits);
        scan_times.push(t.elapsed());
    }
    let scan = median(scan_times);

    let index = median(index_times);
    let full = median(full_times);
    let incr = median(incr_times);
    let diffs = median(diff_times);
    let affected = affected_counts.iter().max().copied().unwrap_or(0);
    println!(
        "  label change of pod {pod_key} (app-1/api -> app-2/db, which changes the policies selecting it): {affected} of {} nodes' rulesets change; \
         over all nodes the delta is {delta_elems} element adds/removes and {delta_chains} chain adds/replaces/deletes",
        old.len()
    );
    let verdict = |d: Duration| {
        if d < Duration::from_millis(5) {
            "met"
        } else {
            "NOT met"
        }
    };
    println!(
        "| one pod's label change: re-index the inventory (Inventory::new) | {} | | |",
        ms(index)
    );
    println!(
        "| one pod's label change: recompile all {} nodes + diff each (median of 6; the diffs take {}) | {} | < 5 ms | {} |",
        old.len(),
        ms(diffs),
        ms(full),
        verdict(full)
    );
    println!(
        "| one pod's label change: recompile + diff only the {affected} nodes whose ruleset changes (median of 6) | {} | < 5 ms | {} |",
        ms(incr),
        verdict(incr)
    );
    println!(
        "| one pod's label change: only matching its old and new labels against every podSelector and pod peer ({evaluated} selectors; a lower bound for element-level incremental compilation) | {:.1} µs | | |",
        scan.as_secs_f64() * 1e6
    );
    println!(
        "| one pod's label change, end to end (re-index + recompile all + diff) | {} | < 5 ms | {} |",
        ms(index + full),
        verdict(index + full)
    );
    let elem = median(elem_times);
    assert!(
        paths.iter().all(|p| *p == Path::Elements),
        "the change left the element path: {paths:?}"
    );
    println!(
        "| one pod's label change, incremental (`Incremental::pod_changed`: inventory updated in place, element deltas for the {affected} nodes; equal to the full path's diffs, checked), median of 6 | {:.3} ms ({:.0}x faster than end to end) | < 5 ms | {} |",
        elem.as_secs_f64() * 1e3,
        (index + full).as_secs_f64() / elem.as_secs_f64(),
        verdict(elem)
    );
    println!(
        "| the controller's hook (`NodeIndex::update`): `pod_changes` between two snapshot inventories (comparing 2,000 policies, 10,000 pods), median of 6 | {:.3} ms | | |",
        median(snapshot_times).as_secs_f64() * 1e3
    );
    println!(
        "| incremental state: `Incremental::new` (compile_all + indexes), once | {} | | |",
        ms(inc_build)
    );
}
