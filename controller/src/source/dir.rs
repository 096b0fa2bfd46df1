//! The standalone source: a directory of Kubernetes YAML, watched with
//! inotify (the `notify` crate), published as [`SourceSnapshot`]s.
//!
//! ```text
//!  inotify ─notify thread─▶ Pending { names, writing, rescan, dir_gone } ─wake─▶ task
//!                                                                               │ debounce; take what
//!                                                                               │ is not being written
//!        spawn_blocking: stat + read + hash + load_str (changed files only) ◀───┘
//!                                  │ Observed per file
//!                                  ▼
//!  DirState: per file { last seen hash/fingerprint, current diagnostics, last good objects }
//!                                  │ snapshot(): objects in force + diagnostics
//!                                  ▼
//!                  watch::Sender::send_if_modified (equal ⇒ nobody wakes)
//! ```
//!
//! Input files are the directory's `*.yaml` and `*.yml` (not recursive);
//! hidden files and editor leftovers are ignored. A file open for writing
//! (modified, not yet closed) is read when it is closed, so that half a file
//! is never published. Each file keeps its last good content in force while
//! its current content has errors. The directory
//! is re-listed after an inotify overflow or error, when a Kubernetes
//! ConfigMap volume swaps its `..data` link, and every
//! [`DirOptions::resync`]. If the directory goes away the last state stays
//! in force, with a diagnostic, and the source tries to watch it again every
//! [`DirOptions::rewatch`].

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use bulkhead_core::diag::{Diagnostic, Severity};
use bulkhead_core::{Inventory, Loaded, Located};
use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{Instrument, debug, info, warn};

use super::{
    ClusterSource, FileState, FileStatus, Running, SnapshotRx, SourceError, SourceSnapshot,
};

/// How many times in a row a file that changes while it is read is read
/// again before what was read is taken.
const MAX_RETRIES: u32 = 5;

/// A file whose modification time is closer than this to the moment it was
/// read may still change without its fingerprint changing (timestamps are
/// coarse): a rescan reads it again instead of trusting the fingerprint.
const RACY: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirOptions {
    /// How long to wait after an event before reading, so that a burst of
    /// writes is read once.
    pub debounce: Duration,
    /// How often to re-list the whole directory, in case an event was lost.
    pub resync: Duration,
    /// How often to try to watch the directory again after it went away.
    pub rewatch: Duration,
    /// How long a file that is open for writing (modified, not closed) is
    /// left alone before it is read anyway. Files renamed into place are
    /// read at once.
    pub write_timeout: Duration,
}

impl Default for DirOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(20),
            resync: Duration::from_secs(30),
            rewatch: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
        }
    }
}

/// The directory source. [`DirSource::spawn`] starts it.
#[derive(Clone, Debug)]
pub struct DirSource {
    pub path: PathBuf,
    pub options: DirOptions,
}

impl ClusterSource for DirSource {
    async fn start(self) -> Result<Running, SourceError> {
        Self::spawn(self.path, self.options)
    }
}

impl DirSource {
    /// Watches `path`, reads it, and starts the task that keeps the snapshot
    /// current. The first snapshot (revision 1) is in the receiver when this
    /// returns. Must be called inside a tokio runtime; it reads the directory
    /// synchronously (a start-up cost). The task stops when every receiver
    /// is dropped, or when the handle is aborted.
    pub fn spawn(
        path: PathBuf,
        options: DirOptions,
    ) -> Result<(SnapshotRx, JoinHandle<()>), SourceError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SourceError::NoRuntime)?;
        let span = tracing::info_span!("dir_source", dir = %path.display());
        let entered = span.enter();

        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SourceError::Missing { path });
            }
            Err(source) => return Err(SourceError::ReadDir { path, source }),
        };
        if !meta.is_dir() {
            return Err(SourceError::NotADirectory { path });
        }
        // notify reports absolute paths: the watched path joined to the
        // working directory.
        let absolute = match std::path::absolute(&path) {
            Ok(a) => a,
            Err(source) => return Err(SourceError::ReadDir { path, source }),
        };

        let shared = Arc::new(Shared::default());
        let handler = {
            let shared = shared.clone();
            let absolute = absolute.clone();
            move |event| shared.queue(&absolute, event)
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(source) => return Err(SourceError::Watch { path, source }),
        };
        // Watch first, then read: nothing written in between is missed.
        if let Err(source) = watcher.watch(&path, RecursiveMode::NonRecursive) {
            return Err(SourceError::Watch { path, source });
        }
        let scanned = match scan(&path, &Targets::All, &BTreeMap::new()) {
            Ok(s) => s,
            Err(source) => return Err(SourceError::ReadDir { path, source }),
        };

        let watched = scanned.dir;
        let mut state = DirState::new(path.clone());
        for (name, observed) in scanned.observed {
            state.apply(name, observed);
        }
        let (mut first, extra) = state.snapshot();
        first.revision = 1;
        info!(
            files = first.files.len(),
            objects = first.loaded.objects.len(),
            errors = first.diagnostics.iter().filter(|d| d.is_error()).count(),
            "directory read"
        );
        log_new(&[], &extra);
        let (tx, rx) = watch::channel(Arc::new(first));
        drop(entered);

        let worker = Worker {
            dir: path,
            options,
            shared,
            watcher,
            watched: Some(watched),
            state,
            extra,
            retries: BTreeMap::new(),
            tx,
        };
        let task = runtime.spawn(worker.run().instrument(span));
        Ok((rx, task))
    }
}

/// Whether a directory entry is an input file: `*.yaml` or `*.yml`, not
/// hidden (which also leaves out Emacs' `.#x.yaml` locks); editor backups
/// (`x.yaml~`), swap files (`.x.yaml.swp`) and temporary files
/// (`x.yaml.tmp`) do not end in `.yaml`.
pub fn is_input_name(name: &str) -> bool {
    let stem = name
        .strip_suffix(".yaml")
        .or_else(|| name.strip_suffix(".yml"));
    !name.starts_with('.') && !name.starts_with('#') && stem.is_some_and(|s| !s.is_empty())
}

/// What the watcher thread has seen since the task last looked.
#[derive(Debug, Default)]
struct Pending {
    /// Input files to read again.
    names: BTreeSet<String>,
    /// Input files open for writing (modified and not closed yet), since
    /// when: reading them now could see half a file.
    writing: BTreeMap<String, std::time::Instant>,
    rescan: bool,
    dir_gone: bool,
}

impl Pending {
    /// Takes what can be read now: every name but those still being written
    /// (for less than `patience`), which stay; and the moment the first of
    /// those runs out of patience.
    fn take_ready(
        &mut self,
        now: std::time::Instant,
        patience: Duration,
    ) -> (Pending, Option<std::time::Instant>) {
        let mut ready = Pending {
            rescan: std::mem::take(&mut self.rescan),
            dir_gone: std::mem::take(&mut self.dir_gone),
            ..Pending::default()
        };
        let mut next: Option<std::time::Instant> = None;
        for name in std::mem::take(&mut self.names) {
            match self.writing.get(&name).map(|since| *since + patience) {
                Some(until) if now < until => {
                    next = Some(next.map_or(until, |n| n.min(until)));
                    self.names.insert(name);
                }
                Some(_) => {
                    // Open for too long: read it as it is, and start
                    // counting again at its next write.
                    self.writing.remove(&name);
                    ready.names.insert(name);
                }
                None => {
                    ready.names.insert(name);
                }
            }
        }
        (ready, next)
    }

    /// Whether a file was being written at `now` (so what was just read of
    /// it may be half a file).
    fn is_writing(&self, name: &str, now: std::time::Instant, patience: Duration) -> bool {
        self.writing
            .get(name)
            .is_some_and(|since| now < *since + patience)
    }
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<Pending>,
    wake: tokio::sync::Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // The critical sections cannot panic half-way; a poisoned lock still
        // holds a consistent value.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Called on notify's thread for every event.
    fn queue(&self, dir: &Path, event: notify::Result<notify::Event>) {
        let wake = {
            let mut pending = self.lock();
            classify(dir, event, std::time::Instant::now(), &mut pending)
        };
        if wake {
            self.wake.notify_one();
        }
    }
}

/// Records what an event means for the task; true if it has work to do.
fn classify(
    dir: &Path,
    event: notify::Result<notify::Event>,
    now: std::time::Instant,
    pending: &mut Pending,
) -> bool {
    let event = match event {
        Ok(e) => e,
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "watch error; the directory will be re-listed");
            pending.rescan = true;
            return true;
        }
    };
    if event.need_rescan() {
        debug!(dir = %dir.display(), "events were lost; the directory will be re-listed");
        pending.rescan = true;
        return true;
    }
    /// What an event says about a file being written.
    enum Writing {
        Starts,
        Ends,
        Unknown,
    }
    let writing = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Writing::Ends,
        // Opens and reads, ours included, change nothing.
        EventKind::Access(_) => return false,
        // Truncated, written, or created by `open` (closed when written).
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => {
            Writing::Starts
        }
        // Renamed or removed: the name now stands for another file, or none.
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)) => Writing::Ends,
        _ => Writing::Unknown,
    };
    let mut wake = false;
    for path in &event.paths {
        if path == dir {
            if matches!(
                event.kind,
                EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
            ) {
                pending.dir_gone = true;
                wake = true;
            }
            continue;
        }
        if path.parent() != Some(dir) {
            pending.rescan = true;
            wake = true;
            continue;
        }
        match path.file_name().and_then(|n| n.to_str()) {
            Some(name) if is_input_name(name) => {
                match writing {
                    Writing::Starts => {
                        pending.writing.entry(name.to_owned()).or_insert(now);
                    }
                    Writing::Ends => {
                        pending.writing.remove(name);
                    }
                    Writing::Unknown => {}
                }
                pending.names.insert(name.to_owned());
                wake = true;
            }
            // A ConfigMap volume updates its files by swapping the `..data`
            // link: the files' own names see no event.
            Some(name) if name.starts_with("..") => {
                pending.rescan = true;
                wake = true;
            }
            _ => {}
        }
    }
    wake
}

/// The identity of a directory, to notice one replaced by another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DirId {
    dev: u64,
    ino: u64,
}

impl DirId {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// What `stat` says about a file; equal fingerprints (when trusted) let a
/// rescan skip reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    ctime: (i64, i64),
    dev: u64,
    ino: u64,
}

impl Fingerprint {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// The last time a file was read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Seen {
    /// Of the content; `None` when it could not be read.
    hash: Option<u64>,
    fingerprint: Option<Fingerprint>,
    /// Whether the fingerprint can stand for the content (see [`RACY`]).
    trusted: bool,
}

/// What reading one file found.
#[derive(Debug)]
enum Observed {
    /// Not there (or not a regular file).
    Gone,
    /// The same content as last time.
    Same(Seen),
    Unreadable {
        seen: Seen,
        error: String,
    },
    Changed {
        seen: Seen,
        loaded: Loaded,
    },
}

#[derive(Debug)]
enum Targets {
    All,
    Names(BTreeSet<String>),
}

#[derive(Debug)]
struct Scan {
    dir: DirId,
    observed: Vec<(String, Observed)>,
}

/// Reads what changed: every input file (skipping those whose trusted
/// fingerprint is unchanged) or the named ones. Blocking. An error means the
/// directory itself cannot be read.
fn scan(dir: &Path, targets: &Targets, known: &BTreeMap<String, Seen>) -> io::Result<Scan> {
    let meta = std::fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        ));
    }
    let mut observed = Vec::new();
    match targets {
        Targets::All => {
            let mut present = BTreeSet::new();
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                if !is_input_name(&name) {
                    continue;
                }
                if let Some(o) = observe(dir, &name, known.get(&name), true) {
                    observed.push((name.clone(), o));
                }
                present.insert(name);
            }
            for name in known.keys().filter(|n| !present.contains(*n)) {
                observed.push((name.clone(), Observed::Gone));
            }
        }
        Targets::Names(names) => {
            for name in names {
                if let Some(o) = observe(dir, name, known.get(name), false) {
                    observed.push((name.clone(), o));
                }
            }
        }
    }
    Ok(Scan {
        dir: DirId::of(&meta),
        observed,
    })
}

/// Reads one file; `None` when a trusted fingerprint says it did not change
/// and `may_skip` allows believing it.
fn observe(dir: &Path, name: &str, known: Option<&Seen>, may_skip: bool) -> Option<Observed> {
    let path = dir.join(name);
    let unreadable = |fingerprint: Option<Fingerprint>, e: io::Error| Observed::Unreadable {
        seen: Seen {
            hash: None,
            fingerprint,
            trusted: false,
        },
        error: e.to_string(),
    };
    // Follows symbolic links, as reading does.
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Some(Observed::Gone),
        Err(e) => return Some(unreadable(None, e)),
    };
    if !meta.is_file() {
        return Some(Observed::Gone);
    }
    let fingerprint = Fingerprint::of(&meta);
    if may_skip && known.is_some_and(|k| k.trusted && k.fingerprint == Some(fingerprint)) {
        return None;
    }
    let read_at = SystemTime::now();
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Some(Observed::Gone),
        Err(e) => return Some(unreadable(Some(fingerprint), e)),
    };
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(&bytes);
    let seen = Seen {
        hash: Some(hasher.finish()),
        fingerprint: Some(fingerprint),
        trusted: fingerprint
            .modified
            .and_then(|m| read_at.duration_since(m).ok())
            .is_some_and(|age| age >= RACY),
    };
    if known.and_then(|k| k.hash) == seen.hash {
        return Some(Observed::Same(seen));
    }
    let file = path.display().to_string();
    let loaded = match std::str::from_utf8(&bytes) {
        Ok(text) => bulkhead_core::load_str(&file, text),
        Err(e) => Loaded {
            objects: Vec::new(),
            diagnostics: vec![error(format!("cannot read {file}: not UTF-8 text ({e})"))],
        },
    };
    Some(Observed::Changed { seen, loaded })
}

fn error(message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        origin: None,
        object: None,
        field: None,
        message,
    }
}

/// One input file as the source knows it.
#[derive(Debug)]
struct Entry {
    seen: Seen,
    /// About the current content.
    diagnostics: Vec<Diagnostic>,
    /// The objects of the last content without errors.
    good: Option<Vec<Located>>,
}

impl Entry {
    fn is_bad(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// The files and what is in force: a state machine fed by [`Observed`]s.
#[derive(Debug)]
struct DirState {
    dir: PathBuf,
    files: BTreeMap<String, Entry>,
    /// Why the directory is not being watched, when it is not.
    lost: Option<String>,
}

impl DirState {
    fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            files: BTreeMap::new(),
            lost: None,
        }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn seen(&self) -> BTreeMap<String, Seen> {
        self.files
            .iter()
            .map(|(name, e)| (name.clone(), e.seen))
            .collect()
    }

    fn apply(&mut self, name: String, observed: Observed) {
        let file = self.file(&name);
        match observed {
            Observed::Gone => {
                if let Some(e) = self.files.remove(&name) {
                    info!(
                        file = %file,
                        objects = e.good.as_ref().map_or(0, Vec::len),
                        "file removed; its objects are gone"
                    );
                }
            }
            Observed::Same(seen) => {
                if let Some(e) = self.files.get_mut(&name) {
                    e.seen = seen;
                }
            }
            Observed::Unreadable { seen, error: e } => {
                let loaded = Loaded {
                    objects: Vec::new(),
                    diagnostics: vec![error(format!("cannot read {file}: {e}"))],
                };
                self.set(name, &file, seen, loaded);
            }
            Observed::Changed { seen, loaded } => self.set(name, &file, seen, loaded),
        }
    }

    fn set(&mut self, name: String, file: &str, seen: Seen, loaded: Loaded) {
        let entry = self.files.entry(name).or_insert_with(|| Entry {
            seen,
            diagnostics: Vec::new(),
            good: None,
        });
        let was_bad = entry.is_bad();
        let old = std::mem::replace(&mut entry.diagnostics, loaded.diagnostics);
        entry.seen = seen;
        if entry.is_bad() {
            let kept = entry.good.as_ref().map(Vec::len);
            for d in entry.diagnostics.iter().filter(|d| d.is_error()) {
                if old.contains(d) {
                    continue;
                }
                match kept {
                    Some(n) => warn!(
                        file = %file,
                        error = %d,
                        kept = n,
                        "file rejected; its last good objects stay in force"
                    ),
                    None => warn!(
                        file = %file,
                        error = %d,
                        "file rejected; nothing from it is in force"
                    ),
                }
            }
        } else {
            let warnings = entry.diagnostics.len();
            if warnings > 0 {
                debug!(file = %file, warnings, "file has warnings (e.g. kinds bulkhead does not use)");
            }
            if was_bad {
                info!(file = %file, objects = loaded.objects.len(), "file fixed; its new objects are in force");
            } else {
                debug!(file = %file, objects = loaded.objects.len(), "file loaded");
            }
            entry.good = Some(loaded.objects);
        }
    }

    /// What is in force now, with revision 0 (the publisher numbers it), and
    /// the diagnostics in it that are not about one file's content (the
    /// directory's own and the inventory's).
    fn snapshot(&self) -> (SourceSnapshot, Vec<Diagnostic>) {
        let mut loaded = Loaded::default();
        let mut files = BTreeMap::new();
        for (name, e) in &self.files {
            let objects = e.good.as_deref().unwrap_or_default();
            loaded.objects.extend(objects.iter().cloned());
            loaded.diagnostics.extend(e.diagnostics.iter().cloned());
            let errors = e.diagnostics.iter().filter(|d| d.is_error()).count();
            let status = match (errors, &e.good) {
                (0, _) => FileStatus::Current,
                (_, Some(_)) => FileStatus::Stale,
                (_, None) => FileStatus::Rejected,
            };
            files.insert(
                name.clone(),
                FileState {
                    status,
                    objects: objects.len(),
                    errors,
                    warnings: e.diagnostics.len() - errors,
                },
            );
        }
        let lost = self.lost.as_ref().map(|why| {
            error(format!(
                "directory {}: {why}; the last state stays in force until it can be watched again",
                self.dir.display()
            ))
        });
        let (_, inventory) = Inventory::from_loaded(&loaded);
        let extra: Vec<Diagnostic> = lost.into_iter().chain(inventory).collect();
        let (head, tail) = extra.split_at(usize::from(self.lost.is_some()));
        let mut diagnostics = head.to_vec();
        diagnostics.extend(loaded.diagnostics.iter().cloned());
        diagnostics.extend(tail.iter().cloned());
        let snapshot = SourceSnapshot {
            revision: 0,
            loaded,
            diagnostics,
            files,
            refs: BTreeMap::new(),
        };
        (snapshot, extra)
    }
}

/// Logs the errors about objects (e.g. defined in two files) among `new`
/// that are not in `old`. (A lost directory is logged when it is lost.)
fn log_new(old: &[Diagnostic], new: &[Diagnostic]) {
    for d in new.iter().filter(|d| d.is_error() && !old.contains(d)) {
        if let Some(origin) = &d.origin {
            warn!(file = %origin.file, error = %d, "object rejected");
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Events,
    Deferred,
    Resync,
    Rewatch,
    Closed,
}

struct Worker {
    dir: PathBuf,
    options: DirOptions,
    shared: Arc<Shared>,
    watcher: RecommendedWatcher,
    /// The directory being watched; `None` while it is gone.
    watched: Option<DirId>,
    state: DirState,
    /// The published diagnostics that are not about one file (for logging).
    extra: Vec<Diagnostic>,
    /// How many times in a row what was read of a file was dropped because
    /// the file changed meanwhile.
    retries: BTreeMap<String, u32>,
    tx: watch::Sender<Arc<SourceSnapshot>>,
}

impl Worker {
    async fn run(mut self) {
        let start = Instant::now();
        let resync_every = self.options.resync.max(Duration::from_millis(1));
        let rewatch_every = self.options.rewatch.max(Duration::from_millis(1));
        let mut resync = tokio::time::interval_at(start + resync_every, resync_every);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut rewatch = tokio::time::interval_at(start + rewatch_every, rewatch_every);
        rewatch.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // When a file still being written runs out of patience.
        let mut deferred: Option<Instant> = None;
        loop {
            let lost = self.watched.is_none();
            let wake = tokio::select! {
                () = self.tx.closed() => Wake::Closed,
                () = self.shared.wake.notified() => Wake::Events,
                _ = resync.tick() => Wake::Resync,
                _ = rewatch.tick(), if lost => Wake::Rewatch,
                () = sleep_until_some(deferred), if deferred.is_some() => Wake::Deferred,
            };
            let mut rescan = false;
            match wake {
                Wake::Closed => {
                    debug!("every receiver is gone; stopping");
                    return;
                }
                // Let the burst finish; what comes meanwhile is read too.
                Wake::Events => tokio::time::sleep(self.options.debounce).await,
                Wake::Deferred => {}
                Wake::Resync => rescan = true,
                Wake::Rewatch => {
                    if !self.rewatch() {
                        continue;
                    }
                    rescan = true;
                }
            }
            let (mut ready, next) = self
                .shared
                .lock()
                .take_ready(std::time::Instant::now(), self.options.write_timeout);
            deferred = next.map(Instant::from_std);
            ready.rescan |= rescan;
            self.process(ready).await;
        }
    }

    /// Tries to watch the directory again; true once it is watched.
    fn rewatch(&mut self) -> bool {
        let meta = match std::fs::metadata(&self.dir) {
            Ok(m) if m.is_dir() => m,
            _ => return false,
        };
        if std::fs::read_dir(&self.dir).is_err() {
            return false;
        }
        // A watch on a directory that was moved away is still registered.
        let _ = self.watcher.unwatch(&self.dir);
        match self.watcher.watch(&self.dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                info!("watching the directory again");
                self.watched = Some(DirId::of(&meta));
                true
            }
            Err(e) => {
                debug!(error = %e, "cannot watch the directory yet");
                false
            }
        }
    }

    fn lose(&mut self, why: String) {
        if self.watched.take().is_some() {
            warn!(
                error = %why,
                "lost the directory; the last state stays in force, retrying"
            );
            let _ = self.watcher.unwatch(&self.dir);
        }
        self.state.lost = Some(why);
    }

    async fn process(&mut self, pending: Pending) {
        if pending.dir_gone {
            self.lose("it was removed or moved".into());
        }
        // Events from a directory that went away are not trusted: its files
        // keep their last state until the directory can be read again.
        if self.watched.is_some() && (pending.rescan || !pending.names.is_empty()) {
            let targets = if pending.rescan {
                Targets::All
            } else {
                Targets::Names(pending.names)
            };
            let full = matches!(targets, Targets::All);
            tracing::trace!(?targets, "reading");
            let dir = self.dir.clone();
            let known = self.state.seen();
            match tokio::task::spawn_blocking(move || scan(&dir, &targets, &known)).await {
                Err(e) => {
                    // Not expected (reading does not panic); try again at
                    // the next wake or resync.
                    warn!(error = %e, "reading the directory failed; it will be re-listed");
                    self.shared.lock().rescan = true;
                }
                Ok(Err(e)) => self.lose(format!("cannot read it: {e}")),
                Ok(Ok(mut scanned)) => {
                    // Events for what happened during the read (a writer
                    // truncating a file, then writing it) are delivered a
                    // little later: give them time to arrive.
                    tokio::time::sleep(self.options.debounce).await;
                    self.drop_torn(&mut scanned.observed);
                    if self.watched != Some(scanned.dir) {
                        // Another directory now has the name: watch it.
                        self.lose("it was replaced".into());
                        if self.rewatch() && !full {
                            self.shared.lock().rescan = true;
                            self.shared.wake.notify_one();
                        }
                    }
                    if self.watched.is_some() {
                        self.state.lost = None;
                    }
                    for (name, observed) in scanned.observed {
                        self.state.apply(name, observed);
                    }
                }
            }
        }
        self.publish();
    }

    /// Drops what was read of a file that changed again while it was read
    /// (it may be half a file, e.g. truncated and not yet written): it is
    /// queued, and read again next time. A file that changes every time is
    /// taken as read after a few tries.
    fn drop_torn(&mut self, observed: &mut Vec<(String, Observed)>) {
        let pending = self.shared.lock();
        let now = std::time::Instant::now();
        let patience = self.options.write_timeout;
        let retries = &mut self.retries;
        observed.retain(|(name, _)| {
            let torn = pending.names.contains(name) || pending.is_writing(name, now, patience);
            let tries = retries.entry(name.clone()).or_default();
            if torn && *tries < MAX_RETRIES {
                *tries += 1;
                debug!(file = %name, "changed while read; reading it again");
                false
            } else {
                retries.remove(name);
                true
            }
        });
    }

    fn publish(&mut self) {
        let (mut next, extra) = self.state.snapshot();
        let published = self.tx.send_if_modified(|current| {
            if current.same_content(&next) {
                return false;
            }
            next.revision = current.revision + 1;
            debug!(
                revision = next.revision,
                objects = next.loaded.objects.len(),
                diagnostics = next.diagnostics.len(),
                "publishing"
            );
            *current = Arc::new(next);
            true
        });
        if published {
            log_new(&self.extra, &extra);
            self.extra = extra;
        }
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, DataChange, RemoveKind};
    use notify::{Event, event::Flag};

    use super::*;

    #[test]
    fn input_names() {
        for name in ["a.yaml", "a.yml", "x.y.yaml", "-.yaml"] {
            assert!(is_input_name(name), "{name}");
        }
        for name in [
            ".yaml",
            ".a.yaml",
            ".#a.yaml",
            "#a.yaml#",
            "a.yaml~",
            ".a.yaml.swp",
            "a.yaml.tmp",
            "a.json",
            "a.YAML",
            "..data",
            "yaml",
        ] {
            assert!(!is_input_name(name), "{name}");
        }
    }

    fn ev(kind: EventKind, paths: &[&str]) -> notify::Result<Event> {
        Ok(Event {
            kind,
            paths: paths.iter().map(PathBuf::from).collect(),
            attrs: Default::default(),
        })
    }

    #[test]
    fn classify_events() {
        let dir = Path::new("/d");
        let t0 = std::time::Instant::now();
        let mut p = Pending::default();
        // Our own reads, and files that are not input, change nothing.
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        assert!(!classify(dir, ev(open, &["/d/a.yaml"]), t0, &mut p));
        let data = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert!(!classify(dir, ev(data, &["/d/.a.yaml.swp"]), t0, &mut p));
        assert!(p.names.is_empty() && !p.rescan);

        // A write opens a window that the close ends.
        assert!(classify(dir, ev(data, &["/d/a.yaml"]), t0, &mut p));
        assert!(p.names.contains("a.yaml") && p.writing.contains_key("a.yaml"));
        let close = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(classify(dir, ev(close, &["/d/a.yaml"]), t0, &mut p));
        assert!(p.writing.is_empty());
        let create = EventKind::Create(CreateKind::File);
        assert!(classify(dir, ev(create, &["/d/b.yml"]), t0, &mut p));
        assert!(p.writing.contains_key("b.yml"));
        let moved = EventKind::Modify(ModifyKind::Name(notify::event::RenameMode::Both));
        assert!(classify(
            dir,
            ev(moved, &["/d/b.yml", "/d/c.yaml"]),
            t0,
            &mut p
        ));
        assert!(p.writing.is_empty());
        assert_eq!(p.names.len(), 3);

        // The directory itself, overflows and ConfigMap swaps.
        let remove = EventKind::Remove(RemoveKind::Folder);
        assert!(classify(dir, ev(remove, &["/d"]), t0, &mut p));
        assert!(p.dir_gone);
        assert!(!p.rescan);
        let overflow = Ok(Event::new(EventKind::Other).set_flag(Flag::Rescan));
        assert!(classify(dir, overflow, t0, &mut p));
        assert!(p.rescan);
        let mut p = Pending::default();
        let swap = EventKind::Modify(ModifyKind::Name(notify::event::RenameMode::To));
        assert!(classify(dir, ev(swap, &["/d/..data"]), t0, &mut p));
        assert!(p.rescan);
        let mut p = Pending::default();
        assert!(classify(
            dir,
            Err(notify::Error::generic("boom")),
            t0,
            &mut p
        ));
        assert!(p.rescan);
    }

    #[test]
    fn files_being_written_wait() {
        let dir = Path::new("/d");
        let t0 = std::time::Instant::now();
        let patience = Duration::from_secs(1);
        let mut p = Pending::default();
        let data = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        classify(dir, ev(data, &["/d/a.yaml"]), t0, &mut p);
        let close = EventKind::Access(AccessKind::Close(AccessMode::Write));
        classify(dir, ev(close, &["/d/b.yaml"]), t0, &mut p);

        let (ready, next) = p.take_ready(t0, patience);
        assert_eq!(ready.names, BTreeSet::from(["b.yaml".to_owned()]));
        assert_eq!(next, Some(t0 + patience));
        assert!(p.names.contains("a.yaml"));

        let (ready, next) = p.take_ready(t0 + patience, patience);
        assert_eq!(ready.names, BTreeSet::from(["a.yaml".to_owned()]));
        assert_eq!(next, None);
        assert!(p.names.is_empty() && p.writing.is_empty());
    }
}
