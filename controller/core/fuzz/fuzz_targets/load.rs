//! Arbitrary bytes as YAML: the loader never panics, and whatever loads can be
//! indexed, queried and explained.
#![no_main]

use bulkhead_core::inventory::Inventory;
use bulkhead_core::verdict::{Endpoint, Query};
use bulkhead_core::{Protocol, explain, load_str, verdict};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let loaded = load_str("fuzz.yaml", text);
    let (inv, _) = Inventory::from_loaded(&loaded);
    let n = inv.pods.len().min(8);
    let mut eps: Vec<Endpoint> = (0..n).map(Endpoint::Pod).collect();
    eps.push(Endpoint::Ip([10, 0, 0, 1].into()));
    for &src in &eps {
        for &dst in &eps {
            for protocol in Protocol::ALL {
                let q = Query { src, dst, protocol, port: 80, family: None };
                let v = verdict::evaluate(&inv, &q);
                assert_eq!(v.allowed, verdict::allowed(&inv, &q));
                let _ = explain::explain(&inv, &q);
            }
        }
    }
});
