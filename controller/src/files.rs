//! Reading Kubernetes YAML from files and directories.

use std::path::{Path, PathBuf};

use bulkhead_core::diag::{Diagnostic, Severity};
use bulkhead_core::{Inventory, Loaded};

/// The files `-f` names: a file as given, a directory's `*.yaml` and `*.yml`
/// (not recursive), sorted so that every run reads them in the same order.
/// A file named twice (directly, or also through its directory) is read once.
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, (PathBuf, std::io::Error)> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut push = |out: &mut Vec<PathBuf>, f: PathBuf| {
        let key = std::fs::canonicalize(&f).unwrap_or_else(|_| f.clone());
        if seen.insert(key) {
            out.push(f);
        }
    };
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| (p.clone(), e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && f.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect();
            files.sort();
            for f in files {
                push(&mut out, f);
            }
        } else {
            push(&mut out, p.clone());
        }
    }
    Ok(out)
}

/// Loads every file; an unreadable file is an error diagnostic, not a failure.
pub fn load(paths: &[PathBuf]) -> Loaded {
    let mut loaded = Loaded::default();
    let files = match expand(paths) {
        Ok(f) => f,
        Err((path, e)) => {
            loaded.diagnostics.push(io_error(&path, &e));
            return loaded;
        }
    };
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) => loaded.extend(bulkhead_core::load_str(&f.display().to_string(), &text)),
            Err(e) => loaded.diagnostics.push(io_error(&f, &e)),
        }
    }
    loaded
}

fn io_error(path: &Path, e: &std::io::Error) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        origin: None,
        object: None,
        field: None,
        message: format!("cannot read {}: {e}", path.display()),
    }
}

/// Loads and indexes; returns the inventory and every diagnostic (the
/// loader's and the inventory's).
pub fn inventory(paths: &[PathBuf]) -> (Inventory, Vec<Diagnostic>) {
    let loaded = load(paths);
    let (inv, more) = Inventory::from_loaded(&loaded);
    let mut diags = loaded.diagnostics;
    diags.extend(more);
    (inv, diags)
}
