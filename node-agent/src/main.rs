//! `bulkhead-agent`: the node agent. Its dataplane (nftables rulesets, sync
//! with the controller, flow observation) is not implemented yet; this binary
//! only reports that, so that nobody deploys it believing it enforces anything.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "bulkhead-agent {}: the node dataplane is not implemented yet; nothing is enforced",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}
