//! The Kubernetes source: kube-rs watchers on the API server, published as
//! [`SourceSnapshot`]s through the same loader as the directory source.
//!
//! ```text
//!  watcher(Namespaces) ─┐  (list, then watch; 410 Gone ⇒ relist; bookmarks;
//!  watcher(Pods)       ─┤   errors retried with kube's default backoff)
//!  watcher(…)          ─┴─select_all─▶ task: per kind { store, relist buffer }
//!                                          │ every object: load_object (the core loader)
//!                                          │ debounce; every kind listed?
//!                                          ▼
//!                   watch<Arc<SourceSnapshot>> (send_if_modified: equal ⇒ nobody wakes)
//! ```
//!
//! Every kind is watched as a [`DynamicObject`] and handed to the core
//! loader as one document: a malformed object (a NetworkPolicy with a bad
//! port) becomes a diagnostic naming the object and the field, and never
//! stops a watch (a typed watcher would fail the whole list on it).
//!
//! Consistency: a relist (`Event::Init` … `InitApply` … `InitDone`, after a
//! 410 Gone or a restarted watch) is buffered and replaces the kind's store
//! only at `InitDone`, so the previous complete state stays published until
//! the new one is complete; nothing is published before every kind has
//! completed its first list. The objects are sorted by kind, namespace and
//! name, so the same cluster content always gives the same snapshot.
//!
//! Kinds served by a CRD (ClusterNetworkPolicy, Bulkhead's own) may be
//! absent: a 404 on their first list counts as "listed, empty" (logged once),
//! and their watcher keeps retrying with backoff, so that installing the CRD
//! later brings them in.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_core::crd::{BulkheadConfig, Quarantine, Tenant};
use bulkhead_core::diag::{Diagnostic, Origin, Severity};
use bulkhead_core::{Inventory, Loaded, load_object};
use futures::stream::{BoxStream, SelectAll};
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as net;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, TypeMeta};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

use super::{ObjectRef, Running, SourceError, SourceSnapshot};

/// One kind the source watches.
#[derive(Clone, Debug)]
pub struct Watched {
    pub resource: ApiResource,
    /// `Some` to watch one namespace only.
    pub namespace: Option<String>,
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    /// Served by a CRD that may not be installed: a 404 means "none".
    pub optional: bool,
}

impl Watched {
    fn of(resource: ApiResource) -> Self {
        Self {
            resource,
            namespace: None,
            label_selector: None,
            field_selector: None,
            optional: false,
        }
    }

    /// `Kind` or `Kind in namespace`, for logs.
    fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} in {ns}", self.resource.kind),
            None => self.resource.kind.clone(),
        }
    }
}

/// `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy (cluster-scoped).
pub fn cluster_network_policy() -> ApiResource {
    ApiResource {
        group: "policy.networking.k8s.io".into(),
        version: "v1alpha2".into(),
        api_version: "policy.networking.k8s.io/v1alpha2".into(),
        kind: "ClusterNetworkPolicy".into(),
        plural: "clusternetworkpolicies".into(),
    }
}

/// Everything the source watches. The RBAC in `manifests/rbac.yaml` grants
/// `get`, `list` and `watch` on exactly these (a test checks it).
pub fn watched() -> Vec<Watched> {
    let mut slices = Watched::of(ApiResource::erase::<discovery::EndpointSlice>(&()));
    slices.namespace = Some("default".into());
    slices.label_selector = Some("kubernetes.io/service-name=kubernetes".into());
    let mut service = Watched::of(ApiResource::erase::<core::Service>(&()));
    service.namespace = Some("default".into());
    service.field_selector = Some("metadata.name=kubernetes".into());
    let optional = |resource| Watched {
        optional: true,
        ..Watched::of(resource)
    };
    vec![
        Watched::of(ApiResource::erase::<core::Namespace>(&())),
        Watched::of(ApiResource::erase::<core::Pod>(&())),
        Watched::of(ApiResource::erase::<core::Node>(&())),
        Watched::of(ApiResource::erase::<net::NetworkPolicy>(&())),
        slices,
        service,
        optional(cluster_network_policy()),
        optional(ApiResource::erase::<Quarantine>(&())),
        optional(ApiResource::erase::<Tenant>(&())),
        optional(ApiResource::erase::<BulkheadConfig>(&())),
    ]
}

#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// How long to gather a burst of watch events before publishing.
    pub debounce: Duration,
    /// How often to say which kinds the first snapshot still waits for.
    pub waiting_log: Duration,
    /// Receives every published snapshot, in order (tests assert over all
    /// of them; the watch channel keeps only the latest).
    pub tap: Option<tokio::sync::mpsc::UnboundedSender<Arc<SourceSnapshot>>>,
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(50),
            waiting_log: Duration::from_secs(10),
            tap: None,
        }
    }
}

/// The Kubernetes source. [`KubeSource::spawn`] starts it.
#[derive(Clone)]
pub struct KubeSource {
    pub client: Client,
    pub watched: Vec<Watched>,
    pub options: KubeOptions,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("watched", &self.watched)
            .field("options", &self.options)
            .finish()
    }
}

impl super::ClusterSource for KubeSource {
    async fn start(self) -> Result<Running, SourceError> {
        self.spawn().await
    }
}

/// The label of an object in diagnostics (`Origin::file`) and the key of
/// [`SourceSnapshot::refs`]: `kube:<plural>/<namespace>/<name>` (no
/// namespace segment for cluster-scoped objects).
pub fn origin_label(plural: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if !ns.is_empty() => format!("kube:{plural}/{ns}/{name}"),
        _ => format!("kube:{plural}/{name}"),
    }
}

type Key = (String, String);

/// One object as the source keeps it: what the loader made of it.
#[derive(Clone, Debug)]
struct Entry {
    loaded: Loaded,
    label: String,
    object: ObjectRef,
}

#[derive(Debug, Default)]
struct KindState {
    /// Whether the first list completed (or the kind is absent).
    listed: bool,
    absent: bool,
    store: BTreeMap<Key, Entry>,
    /// A relist in progress: replaces `store` at `InitDone`.
    relist: Option<BTreeMap<Key, Entry>>,
    /// The last error logged, so that a retried failure is logged once.
    last_error: Option<String>,
}

type Events = SelectAll<BoxStream<'static, (usize, Result<Event<DynamicObject>, watcher::Error>)>>;

struct Worker {
    watched: Vec<Watched>,
    kinds: Vec<KindState>,
    events: Events,
    options: KubeOptions,
}

impl KubeSource {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            watched: watched(),
            options: KubeOptions::default(),
        }
    }

    /// Starts every watcher and returns once every kind has completed its
    /// first list, with that first snapshot (revision 1) in the receiver.
    /// Until then nothing is published (an incomplete inventory would tell
    /// nodes that pods do not exist). The task stops when every receiver is
    /// dropped.
    pub async fn spawn(self) -> Result<Running, SourceError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SourceError::NoRuntime)?;
        let Self {
            client,
            watched,
            options,
        } = self;
        let mut streams: Vec<BoxStream<'static, _>> = Vec::new();
        for (i, w) in watched.iter().enumerate() {
            let api: Api<DynamicObject> = match &w.namespace {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &w.resource),
                None => Api::all_with(client.clone(), &w.resource),
            };
            let mut config = watcher::Config::default();
            if let Some(l) = &w.label_selector {
                config = config.labels(l);
            }
            if let Some(f) = &w.field_selector {
                config = config.fields(f);
            }
            streams.push(
                watcher::watcher(api, config)
                    .default_backoff()
                    .map(move |r| (i, r))
                    .boxed(),
            );
        }
        let span = tracing::info_span!("kube_source");
        let mut worker = Worker {
            kinds: watched.iter().map(|_| KindState::default()).collect(),
            watched,
            events: stream::select_all(streams),
            options,
        };
        worker.initial_sync().instrument(span.clone()).await;
        let mut first = worker.snapshot();
        first.revision = 1;
        info!(
            objects = first.loaded.objects.len(),
            errors = first.diagnostics.iter().filter(|d| d.is_error()).count(),
            "cluster listed"
        );
        log_new(&[], &first.diagnostics);
        let first = Arc::new(first);
        if let Some(tap) = &worker.options.tap {
            let _ = tap.send(Arc::clone(&first));
        }
        let (tx, rx) = watch::channel(first);
        let task = runtime.spawn(worker.run(tx).instrument(span));
        Ok((rx, task))
    }
}

impl Worker {
    async fn initial_sync(&mut self) {
        let mut next_log = Instant::now() + self.options.waiting_log;
        while !self.kinds.iter().all(|k| k.listed) {
            tokio::select! {
                ev = self.events.next() => match ev {
                    Some((i, r)) => { self.handle(i, r); }
                    // The watchers never end.
                    None => return,
                },
                () = tokio::time::sleep_until(next_log) => {
                    let waiting: Vec<String> = self
                        .watched
                        .iter()
                        .zip(&self.kinds)
                        .filter(|(_, k)| !k.listed)
                        .map(|(w, _)| w.describe())
                        .collect();
                    info!(?waiting, "waiting for the first list of every kind; nothing is served until then");
                    next_log = Instant::now() + self.options.waiting_log;
                }
            }
        }
    }

    async fn run(mut self, tx: watch::Sender<Arc<SourceSnapshot>>) {
        let mut deadline: Option<Instant> = None;
        loop {
            tokio::select! {
                () = tx.closed() => return,
                ev = self.events.next() => match ev {
                    Some((i, r)) => {
                        if self.handle(i, r) && deadline.is_none() {
                            deadline = Some(Instant::now() + self.options.debounce);
                        }
                    }
                    None => return,
                },
                () = sleep_until_some(deadline) => {
                    deadline = None;
                    self.publish(&tx);
                }
            }
        }
    }

    /// Applies one watcher event; true if the objects in force changed.
    fn handle(&mut self, i: usize, r: Result<Event<DynamicObject>, watcher::Error>) -> bool {
        let (Some(w), Some(k)) = (self.watched.get(i), self.kinds.get_mut(i)) else {
            return false;
        };
        match r {
            Ok(Event::Init) => {
                debug!(kind = %w.describe(), "listing");
                k.relist = Some(BTreeMap::new());
                false
            }
            Ok(Event::InitApply(o)) => {
                let (key, entry) = entry(w, o);
                k.relist
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key, entry);
                false
            }
            Ok(Event::InitDone) => {
                let store = k.relist.take().unwrap_or_default();
                if !k.listed || k.absent {
                    info!(kind = %w.describe(), objects = store.len(), "listed");
                } else {
                    debug!(kind = %w.describe(), objects = store.len(), "relisted");
                }
                k.store = store;
                k.listed = true;
                k.absent = false;
                k.last_error = None;
                true
            }
            Ok(Event::Apply(o)) => {
                let (key, entry) = entry(w, o);
                k.last_error = None;
                k.store.insert(key, entry);
                true
            }
            Ok(Event::Delete(o)) => {
                k.last_error = None;
                k.store.remove(&key_of(&o)).is_some()
            }
            Err(e) => {
                if w.optional && !k.listed && is_not_found(&e) {
                    k.listed = true;
                    k.absent = true;
                    info!(kind = %w.describe(), api = %w.resource.api_version, "not served by this cluster (no CRD); carrying on without it");
                    return true;
                }
                if k.absent && is_not_found(&e) {
                    return false;
                }
                let text = e.to_string();
                if k.last_error.as_deref() != Some(text.as_str()) {
                    warn!(kind = %w.describe(), error = %text, "watch failed; retrying with backoff, the last listed state stays in force");
                    k.last_error = Some(text);
                } else {
                    debug!(kind = %w.describe(), error = %text, "watch failed again");
                }
                false
            }
        }
    }

    /// What is in force now, with revision 0 (the publisher numbers it).
    fn snapshot(&self) -> SourceSnapshot {
        let mut entries: Vec<(&str, &Key, &Entry)> = self
            .watched
            .iter()
            .zip(&self.kinds)
            .flat_map(|(w, k)| {
                k.store
                    .iter()
                    .map(move |(key, e)| (w.resource.kind.as_str(), key, e))
            })
            .collect();
        entries.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut loaded = Loaded::default();
        let mut refs = BTreeMap::new();
        for (_, _, e) in entries {
            loaded.extend(e.loaded.clone());
            refs.insert(e.label.clone(), e.object.clone());
        }
        let (_, inventory) = Inventory::from_loaded(&loaded);
        let mut diagnostics = loaded.diagnostics.clone();
        diagnostics.extend(inventory);
        SourceSnapshot {
            revision: 0,
            loaded,
            diagnostics,
            files: BTreeMap::new(),
            refs,
        }
    }

    fn publish(&self, tx: &watch::Sender<Arc<SourceSnapshot>>) {
        let mut next = self.snapshot();
        let mut old: Vec<Diagnostic> = Vec::new();
        let published = tx.send_if_modified(|current| {
            if current.same_content(&next) {
                return false;
            }
            next.revision = current.revision + 1;
            old = current.diagnostics.clone();
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
            let current = Arc::clone(&tx.borrow());
            log_new(&old, &current.diagnostics);
            if let Some(tap) = &self.options.tap {
                let _ = tap.send(current);
            }
        }
    }
}

fn key_of(o: &DynamicObject) -> Key {
    (
        o.metadata.namespace.clone().unwrap_or_default(),
        o.metadata.name.clone().unwrap_or_default(),
    )
}

/// Loads one object from the API as one document of a file would be.
fn entry(w: &Watched, mut o: DynamicObject) -> (Key, Entry) {
    let key = key_of(&o);
    let label = origin_label(&w.resource.plural, Some(&key.0), &key.1);
    // List items carry no type; the loader dispatches on it.
    o.types = Some(TypeMeta {
        api_version: w.resource.api_version.clone(),
        kind: w.resource.kind.clone(),
    });
    // Large and never read.
    o.metadata.managed_fields = None;
    let object = ObjectRef {
        api_version: w.resource.api_version.clone(),
        kind: w.resource.kind.clone(),
        plural: w.resource.plural.clone(),
        namespace: o.metadata.namespace.clone().filter(|n| !n.is_empty()),
        name: key.1.clone(),
        uid: o.metadata.uid.clone(),
        generation: o.metadata.generation,
    };
    let origin = Origin {
        file: label.clone(),
        document: 1,
        item: None,
    };
    let loaded = match serde_yaml::to_value(&o) {
        Ok(value) => load_object(origin, value),
        Err(e) => Loaded {
            objects: Vec::new(),
            diagnostics: vec![Diagnostic {
                severity: Severity::Error,
                origin: Some(origin),
                object: Some(format!("{} {}", object.kind, object.display_name())),
                field: None,
                message: format!("cannot read the object: {e}"),
            }],
        },
    };
    (
        key,
        Entry {
            loaded,
            label,
            object,
        },
    )
}

fn is_not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 404,
        watcher::Error::WatchError(s) => s.code == 404,
        _ => false,
    }
}

/// Logs the error diagnostics of `new` that are not in `old`.
fn log_new(old: &[Diagnostic], new: &[Diagnostic]) {
    for d in new.iter().filter(|d| d.is_error() && !old.contains(d)) {
        warn!(error = %d, "object rejected; the rest stays in force");
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
