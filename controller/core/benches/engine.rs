//! `cargo bench -p bulkhead-core --bench engine`: the issue-3 targets on a
//! synthetic cluster of 10,000 pods in 100 namespaces with 2,000 policies.
//! Prints medians; figures are recorded in docs/BENCHMARKS.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bulkhead_core::explain;
use bulkhead_core::inventory::Inventory;
use bulkhead_core::synth::{self, Rng, Shape};
use bulkhead_core::verdict::{self, Endpoint, Query};
use bulkhead_core::{Protocol, load_str};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
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
    println!(
        "synthetic cluster: {} pods, {} namespaces, {} policies, {} nodes, {:.1} MiB of YAML",
        shape.pods,
        shape.namespaces,
        shape.policies,
        shape.nodes,
        yaml.len() as f64 / (1 << 20) as f64
    );

    let mut load_times = Vec::new();
    let mut index_times = Vec::new();
    let mut inv = None;
    for _ in 0..5 {
        let t = Instant::now();
        let loaded = load_str("synthetic.yaml", &yaml);
        let parsed = t.elapsed();
        let (i, diags) = Inventory::from_loaded(&loaded);
        let total = t.elapsed();
        assert!(
            diags
                .iter()
                .chain(&loaded.diagnostics)
                .all(|d| !d.is_error()),
            "generator made bad input: {:?}",
            diags.first()
        );
        load_times.push(parsed);
        index_times.push(total - parsed);
        inv = Some(i);
    }
    let Some(inv) = inv else { return };
    let load = median(load_times.clone());
    let index = median(index_times.clone());
    println!(
        "| load (parse + validate YAML) | {:.1} ms |",
        load.as_secs_f64() * 1e3
    );
    println!(
        "| index (inventory + selection) | {:.1} ms |",
        index.as_secs_f64() * 1e3
    );
    println!(
        "| load + index | {:.1} ms |",
        (load + index).as_secs_f64() * 1e3
    );

    let mut rng = Rng::new(42);
    let n = inv.pods.len();
    let queries: Vec<Query> = (0..20_000)
        .map(|_| Query {
            src: Endpoint::Pod(rng.below(n)),
            dst: Endpoint::Pod(rng.below(n)),
            protocol: Protocol::Tcp,
            port: *rng.pick(&[80, 443, 5432, 8080, 9090]),
            family: None,
        })
        .collect();
    for (name, f) in [
        ("verdict::evaluate (one query, all reasons)", 0),
        ("explain (evaluate + names + words)", 1),
    ] {
        let mut times = Vec::with_capacity(queries.len());
        for q in &queries {
            let t = Instant::now();
            if f == 0 {
                black_box(verdict::evaluate(&inv, black_box(q)));
            } else {
                black_box(explain::explain(&inv, black_box(q)));
            }
            times.push(t.elapsed());
        }
        println!(
            "| {name} | median {:.2} µs, p99 {:.2} µs |",
            median(times.clone()).as_secs_f64() * 1e6,
            pct(&times, 0.99).as_secs_f64() * 1e6
        );
    }
    let allowed = queries.iter().filter(|q| verdict::allowed(&inv, q)).count();
    println!(
        "  ({allowed} of {} sampled queries allowed; {} policies loaded)",
        queries.len(),
        inv.policies.len()
    );

    let mut times = Vec::new();
    for _ in 0..100 {
        let src = Endpoint::Pod(rng.below(n));
        let t = Instant::now();
        black_box(verdict::reachability_from(&inv, src, Protocol::Tcp, 8080));
        times.push(t.elapsed());
    }
    println!(
        "| reachability of one source to all {n} pods | median {:.2} ms, p99 {:.2} ms |",
        median(times.clone()).as_secs_f64() * 1e3,
        pct(&times, 0.99).as_secs_f64() * 1e3
    );
}
