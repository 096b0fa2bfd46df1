//! `<state>/lab.json`: everything `bulkhead-lab` needs to find a running lab
//! again from another process, written as things are created (so that
//! `down` can clean up after `up` crashed half way).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use serde::{Deserialize, Serialize};

use super::objects::write_atomic;
use crate::netns::TopologyParts;

/// The file in the state directory.
pub const STATE_FILE: &str = "lab.json";
/// Bumped when the format changes.
pub const FORMAT: u32 = 1;

/// The executables a lab runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bins {
    /// `bulkhead-lab` (the pods' servers).
    pub lab: PathBuf,
    /// `bulkhead` (controller, certificates, reachability).
    pub bulkhead: PathBuf,
    /// `bulkhead-agent`.
    pub agent: PathBuf,
}

/// A process the lab started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcState {
    pub pid: u32,
    /// A string its command line contains (tells a reused pid apart).
    pub marker: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub format: u32,
    pub name: String,
    /// Every namespace of the lab is named `<prefix><kind><n>`.
    pub prefix: String,
    pub bins: Bins,
    pub keepalive_ms: u64,
    /// `None` until the fabric exists.
    pub topology: Option<TopologyParts>,
    pub controller: Option<ProcState>,
    pub agents: BTreeMap<String, ProcState>,
    /// Nodes whose link to the controller is cut.
    pub cut: BTreeSet<String>,
    /// Round-robin position for pods without `spec.nodeName`.
    pub next_node: usize,
    /// The next host number tried in 10.244.0.0/16.
    pub next_address: u32,
    /// `up` finished.
    pub complete: bool,
}

impl State {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self).context("serializing the lab state")?;
        write_atomic(dir, STATE_FILE, &text).map(drop)
    }

    /// `None` when there is no state file.
    pub fn load(dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let state: State = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a lab state", path.display()))?;
        ensure!(
            state.format == FORMAT,
            "{} has format {}, this bulkhead-lab reads {FORMAT}",
            path.display(),
            state.format
        );
        Ok(Some(state))
    }
}
