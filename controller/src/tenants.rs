//! `bulkhead tenants`: the Tenants of the input, their namespaces, their
//! exceptions and their conflicts.

use std::fmt::Write as _;

use bulkhead_core::model::UntenantedNamespaces;
use clap::Args;

use crate::cli::{ExplainFormat, Failure, Input, load};

#[derive(Args, Debug)]
pub struct TenantsArgs {
    #[command(flatten)]
    pub input: Input,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ExplainFormat::Text)]
    pub output: ExplainFormat,
}

/// Runs `tenants`, returning what goes to stdout.
pub fn tenants(args: &TenantsArgs, stderr: &mut String) -> Result<String, Failure> {
    let inv = load(&args.input, stderr)?;
    let reports = inv.tenant_reports();
    let untenanted: Vec<&str> = inv
        .namespaces
        .iter()
        .filter(|n| !reports.iter().any(|r| r.namespaces.contains(&n.name)))
        .map(|n| n.name.as_str())
        .collect();
    let mode = match inv.config.untenanted {
        UntenantedNamespaces::Shared => "Shared",
        UntenantedNamespaces::Isolated => "Isolated",
    };
    if args.output == ExplainFormat::Json {
        let tenants: Vec<serde_json::Value> = inv
            .tenants
            .iter()
            .zip(&reports)
            .map(|(t, r)| {
                serde_json::json!({
                    "name": t.name,
                    "namespaceSelector": t.namespaces.to_string(),
                    "namespaces": r.namespaces,
                    "allowFrom": t.allow_from.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                    "allowTo": t.allow_to.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                    "conflicts": r.conflicts,
                })
            })
            .collect();
        let v = serde_json::json!({
            "tenants": tenants,
            "untenanted": { "mode": mode, "namespaces": untenanted },
        });
        let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
        s.push('\n');
        return Ok(s);
    }
    let mut out = String::new();
    if inv.tenants.is_empty() {
        let _ = writeln!(out, "no Tenants");
    }
    for (t, r) in inv.tenants.iter().zip(&reports) {
        let _ = writeln!(out, "Tenant {} (namespaces {})", t.name, t.namespaces);
        let list = |v: &[String]| {
            if v.is_empty() {
                "(none)".to_owned()
            } else {
                v.join(", ")
            }
        };
        let _ = writeln!(out, "  namespaces: {}", list(&r.namespaces));
        for (word, ex) in [("allowFrom", &t.allow_from), ("allowTo", &t.allow_to)] {
            let items: Vec<String> = ex.iter().map(|e| e.to_string()).collect();
            let _ = writeln!(out, "  {word}: {}", list(&items));
        }
        for c in &r.conflicts {
            let _ = writeln!(
                out,
                "  CONFLICT: namespace {} is also in Tenant {} (every one of their fences applies)",
                c.namespace,
                c.other_tenants.join(", Tenant ")
            );
        }
    }
    let _ = writeln!(
        out,
        "untenanted namespaces ({mode}): {}",
        if untenanted.is_empty() {
            "(none)".to_owned()
        } else {
            untenanted.join(", ")
        }
    );
    Ok(out)
}
