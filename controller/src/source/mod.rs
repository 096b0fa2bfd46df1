//! Cluster sources: where the controller learns what is in the cluster.
//!
//! A source watches its input and publishes the objects in force as a
//! [`SourceSnapshot`] on a `tokio::sync::watch` channel ([`SnapshotRx`]).
//! Everything downstream (inventory, node index, gRPC server) reads only
//! that channel, so the standalone directory source ([`dir`]) and a
//! Kubernetes API source are interchangeable.
//!
//! ```text
//!  directory of YAML ──notify──▶ DirSource ─┐
//!  Kubernetes API ──watch──▶ (kube source) ─┴─▶ watch<Arc<SourceSnapshot>> ──▶ Inventory::from_loaded ──▶ …
//! ```
//!
//! Publication rules shared by every source: the first snapshot (revision 1)
//! is in the channel before the source hands out its receiver; `revision`
//! grows by one per publication; a result equal to the one published wakes
//! nobody; bad input never removes the last good objects, it is reported in
//! `diagnostics` instead.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use bulkhead_core::{Diagnostic, Loaded};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod dir;
pub mod kube;

pub use dir::{DirOptions, DirSource};
pub use kube::{KubeOptions, KubeSource};

/// The receiving end of a source: always holds the latest snapshot.
pub type SnapshotRx = watch::Receiver<Arc<SourceSnapshot>>;

/// A running source: its snapshots, and the task that produces them. The task
/// ends by itself when every receiver is dropped.
pub type Running = (SnapshotRx, JoinHandle<()>);

/// What every cluster source provides: start it (inside a tokio runtime), get
/// the first snapshot at once and every later one on the channel. (The
/// Kubernetes source resolves once every kind has been listed.)
pub trait ClusterSource {
    fn start(self) -> impl Future<Output = Result<Running, SourceError>> + Send;
}

/// What a source knows about the cluster at one revision.
#[derive(Clone, Debug, Default)]
pub struct SourceSnapshot {
    /// 1 for the first snapshot, one more for each publication.
    pub revision: u64,
    /// The objects in force, in a stable order (file by file, in name order,
    /// for the directory source), and the loader's diagnostics for the input
    /// as it is now. An object defined in two places appears twice here;
    /// `Inventory::from_loaded` ignores both copies and says so.
    pub loaded: Loaded,
    /// Every current problem: the source's own (e.g. a directory that went
    /// away), then `loaded.diagnostics`, then what `Inventory::from_loaded`
    /// says about `loaded` (objects defined twice, ...).
    pub diagnostics: Vec<Diagnostic>,
    /// Per input file (keyed by its name in the directory); empty for
    /// sources without files.
    pub files: BTreeMap<String, FileState>,
    /// For sources backed by the Kubernetes API: the object behind each
    /// origin label (`Origin::file`), for Events and status conditions.
    /// Empty for the directory source.
    pub refs: BTreeMap<String, ObjectRef>,
}

/// Which Kubernetes object an origin stands for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    /// The resource's plural name (`networkpolicies`).
    pub plural: String,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: Option<String>,
    pub generation: Option<i64>,
}

impl ObjectRef {
    /// `namespace/name`, or `name` when cluster-scoped.
    pub fn display_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

impl SourceSnapshot {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// The same content: everything but the revision.
    pub fn same_content(&self, other: &SourceSnapshot) -> bool {
        self.loaded.objects == other.loaded.objects
            && self.loaded.diagnostics == other.loaded.diagnostics
            && self.diagnostics == other.diagnostics
            && self.files == other.files
            && self.refs == other.refs
    }
}

/// How one input file stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileStatus {
    /// Its current content loaded without errors and is in force.
    Current,
    /// Its current content has errors or cannot be read: the objects of its
    /// last good content stay in force.
    Stale,
    /// It has not loaded without errors since the source started: nothing
    /// from it is in force.
    Rejected,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileState {
    pub status: FileStatus,
    /// How many of its objects are in force.
    pub objects: usize,
    /// Error diagnostics about its current content.
    pub errors: usize,
    /// Warning diagnostics about its current content (e.g. kinds bulkhead
    /// does not use); they do not make a file bad.
    pub warnings: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("directory {} does not exist", path.display())]
    Missing { path: PathBuf },
    #[error("{} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("cannot read directory {}: {source}", path.display())]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot watch directory {}: {source}", path.display())]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
    #[error("a source must be started inside a tokio runtime")]
    NoRuntime,
}
