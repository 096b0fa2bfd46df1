//! `bulkhead quarantine` / `bulkhead release`, and the quarantine audit trail.
//!
//! ```text
//!  CLI ──put/delete──▶ Store ──dir:  PATH/quarantine.<ns>.<pod>.yaml (temp + rename)
//!   │                        └─kube: the namespaced Quarantine CR (create | replace, delete)
//!   └──record──▶ dir:  PATH/.bulkhead-audit.jsonl ◀──record── controller (Auditor):
//!                kube: an Event regarding the CR             applied (generation), enforced (node, ack time)
//!                                                            (and a log line, target bulkhead::audit)
//! ```
//!
//! In a `dir:` source the audit log is JSON lines, appended by both: the CLI
//! writes who, when and why; the controller writes when it first compiled
//! the quarantine (or its release) and, per node, when that node's agent
//! acked the first generation containing it. `quarantine --list` joins the
//! active Quarantines with the log.
//!
//! In kube mode the trail is where Kubernetes keeps one: who and when in the
//! CR's annotations (and the API server's own audit log), each quarantine and
//! release an Event (`Quarantined` / `Released`) regarding the CR, the nodes
//! that enforce it in the CR's `status.enforcedBy`, and every controller
//! record as a log line of the controller (and in `--audit-log` if given).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use bulkhead_core::crd::{Quarantine, QuarantineSpec};
use bulkhead_core::inventory::Inventory;
use bulkhead_core::model::Object;
use clap::Args;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde::{Deserialize, Serialize};

use crate::cli::{EXIT_BAD_INPUT, Failure};
use crate::events::{EventSpec, Recorder};
use crate::server::NodeStatus;

/// The audit log's file name in a `dir:` source (hidden: not an input file).
pub const AUDIT_FILE: &str = ".bulkhead-audit.jsonl";
/// Who quarantined the pod (on the Quarantine object).
pub const BY_ANNOTATION: &str = "bulkhead.io/quarantined-by";
/// When (RFC 3339).
pub const AT_ANNOTATION: &str = "bulkhead.io/quarantined-at";

fn bad(message: impl Into<String>) -> Failure {
    Failure {
        status: EXIT_BAD_INPUT,
        message: message.into(),
    }
}

fn failed(message: impl Into<String>) -> Failure {
    Failure {
        status: 1,
        message: message.into(),
    }
}

#[derive(Args, Debug)]
pub struct QuarantineArgs {
    /// The pod: `<namespace>/<pod>`. With `--selector`: `<namespace>/<name>`
    /// names the Quarantine, and the selector picks the pods.
    #[arg(required_unless_present = "list", conflicts_with = "list")]
    pub pod: Option<String>,
    /// Quarantines every pod of the namespace with these labels (a whole
    /// workload): `app=web` or `app=web,tier=front`. The pods it matches
    /// stay quarantined when relabelled.
    #[arg(short = 'l', long, conflicts_with = "list")]
    pub selector: Option<String>,
    /// Why (goes into the audit trail). Required to quarantine.
    #[arg(long, required_unless_present = "list")]
    pub reason: Option<String>,
    /// A forensics source that may still connect: `<namespace>/<pod>` or a
    /// CIDR. Repeatable.
    #[arg(long = "allow-from")]
    pub allow_from: Vec<String>,
    /// Ends the quarantine after this long: `90s`, `30m`, `4h`, `2d`.
    #[arg(long)]
    pub expires: Option<String>,
    /// Lists the active quarantines and which nodes enforce them.
    #[arg(long)]
    pub list: bool,
    /// `dir:PATH` (standalone: the controller's source directory) or `kube`.
    #[arg(long, env = "BULKHEAD_SOURCE")]
    pub source: String,
    /// Who does it, for the audit trail (default: $USER).
    #[arg(long = "as")]
    pub as_user: Option<String>,
}

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    /// The pod: `<namespace>/<pod>`.
    pub pod: String,
    /// `dir:PATH` (standalone: the controller's source directory) or `kube`.
    #[arg(long, env = "BULKHEAD_SOURCE")]
    pub source: String,
    /// Why it is released (for the audit trail).
    #[arg(long)]
    pub reason: Option<String>,
    /// Who does it, for the audit trail (default: $USER).
    #[arg(long = "as")]
    pub as_user: Option<String>,
}

/// One line of the audit log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// RFC 3339.
    pub time: String,
    /// `quarantine` / `release` (CLI); `applied` / `released` (controller:
    /// first compiled); `enforced` / `lifted` (controller: a node acked it).
    pub action: String,
    /// `namespace/name` of the Quarantine.
    pub quarantine: String,
    /// `cli` or `controller`.
    pub origin: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// The quarantined pods (controller records).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
    /// The labels of a workload quarantine (`--selector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

/// Standalone mode: one YAML file per Quarantine in the watched directory.
#[derive(Debug)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn file(&self, namespace: &str, name: &str) -> PathBuf {
        self.dir.join(format!("quarantine.{namespace}.{name}.yaml"))
    }
}

/// Appends one record to a JSON-lines audit log.
pub fn append_audit(path: &Path, record: &AuditRecord) -> std::io::Result<()> {
    let mut line = serde_json::to_string(record).map_err(std::io::Error::other)?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(line.as_bytes())
}

impl DirStore {
    fn put(&self, q: &Quarantine) -> Result<(), Failure> {
        let ns = q.metadata.namespace.as_deref().unwrap_or("default");
        let name = q.metadata.name.as_deref().unwrap_or_default();
        let path = self.file(ns, name);
        let text = serde_yaml::to_string(q).map_err(|e| failed(e.to_string()))?;
        // Hidden and not `*.yaml`: the source never reads a half-written file.
        let tmp = self.dir.join(format!(".quarantine.{ns}.{name}.yaml.tmp"));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| failed(format!("writing {}: {e}", path.display())))
    }

    fn delete(&self, namespace: &str, name: &str) -> Result<bool, Failure> {
        let path = self.file(namespace, name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(failed(format!("removing {}: {e}", path.display()))),
        }
    }

    fn list(&self) -> Result<Vec<Quarantine>, Failure> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| failed(format!("reading {}: {e}", self.dir.display())))?;
        let mut out = Vec::new();
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let is_input = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                !n.starts_with('.') && (n.ends_with(".yaml") || n.ends_with(".yml"))
            });
            if !is_input {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let Ok(v) = serde_yaml::Value::deserialize(doc) else {
                    break;
                };
                if v.get("kind").and_then(|k| k.as_str()) == Some("Quarantine")
                    && let Ok(q) = serde_yaml::from_value::<Quarantine>(v)
                {
                    out.push(q);
                }
            }
        }
        Ok(out)
    }

    fn audit(&self, record: &AuditRecord) -> Result<(), Failure> {
        let path = self.dir.join(AUDIT_FILE);
        append_audit(&path, record).map_err(|e| failed(format!("writing {}: {e}", path.display())))
    }

    fn audit_log(&self) -> Result<Vec<AuditRecord>, Failure> {
        Ok(read_audit(&self.dir.join(AUDIT_FILE)))
    }
}

/// Every readable record of an audit log (a missing log is empty).
pub fn read_audit(path: &Path) -> Vec<AuditRecord> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Where Quarantine objects live: the source directory, or the API server.
#[derive(Debug)]
pub enum Store {
    Dir(DirStore),
    Kube(Box<CrStore>),
}

impl Store {
    /// The store a `--source` names (`kube`: the current kubeconfig context,
    /// or the in-cluster service account).
    pub async fn open(source: &str) -> Result<Self, Failure> {
        if let Some(dir) = source.strip_prefix("dir:") {
            let dir = PathBuf::from(dir);
            if !dir.is_dir() {
                return Err(bad(format!("--source {source}: not a directory")));
            }
            return Ok(Self::Dir(DirStore::new(dir)));
        }
        if source == "kube" {
            let client = kube::Client::try_default()
                .await
                .map_err(|e| failed(format!("--source kube: no Kubernetes client: {e}")))?;
            return Ok(Self::Kube(Box::new(CrStore::new(client))));
        }
        Err(bad(format!(
            "--source {source:?}: expected dir:PATH or kube"
        )))
    }

    async fn put(&self, q: &Quarantine) -> Result<(), Failure> {
        match self {
            Self::Dir(d) => d.put(q),
            Self::Kube(k) => k.put(q).await,
        }
    }

    /// `false` when there was none.
    async fn delete(&self, namespace: &str, name: &str) -> Result<bool, Failure> {
        match self {
            Self::Dir(d) => d.delete(namespace, name),
            Self::Kube(k) => k.delete(namespace, name).await,
        }
    }

    async fn list(&self) -> Result<Vec<Quarantine>, Failure> {
        match self {
            Self::Dir(d) => d.list(),
            Self::Kube(k) => k.list().await,
        }
    }

    async fn audit(&self, record: &AuditRecord) -> Result<(), Failure> {
        match self {
            Self::Dir(d) => d.audit(record),
            Self::Kube(k) => k.audit(record).await,
        }
    }

    /// A warning when the pod does not exist (yet): a quarantine of a
    /// misspelt pod would protect nothing. Only the API server can tell.
    async fn missing_pod(&self, namespace: &str, target: &Target<'_>) -> Option<String> {
        match self {
            Self::Dir(_) => None,
            Self::Kube(k) => k.missing_pod(namespace, target).await,
        }
    }

    /// Per node, the generation and the time it first enforced `q` (since
    /// the controller last applied it).
    fn enforcement(&self, q: &Quarantine, log: &[AuditRecord]) -> Vec<(String, u64, String)> {
        match self {
            Self::Dir(_) => enforcement_from_log(&q_key(q), log),
            Self::Kube(_) => q
                .status
                .iter()
                .flat_map(|s| &s.enforced_by)
                .map(|e| (e.node.clone(), e.generation, rfc3339(e.time.0)))
                .collect(),
        }
    }

    async fn audit_log(&self) -> Result<Vec<AuditRecord>, Failure> {
        match self {
            Self::Dir(d) => d.audit_log(),
            Self::Kube(_) => Ok(Vec::new()),
        }
    }
}

/// Kube mode: the namespaced Quarantine CR, and Events as the CLI's audit
/// records.
pub struct CrStore {
    client: kube::Client,
    events: Recorder,
}

impl std::fmt::Debug for CrStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrStore").finish_non_exhaustive()
    }
}

/// What the CLI does through the API in kube mode, as (API group,
/// resource, verb): `manifests/rbac-quarantine.yaml` grants exactly this.
pub const OPERATOR_GRANTS: &[(&str, &str, &str)] = &[
    ("bulkhead.io", "quarantines", "create"),
    ("bulkhead.io", "quarantines", "get"),
    ("bulkhead.io", "quarantines", "update"),
    ("bulkhead.io", "quarantines", "delete"),
    ("bulkhead.io", "quarantines", "list"),
    ("", "pods", "get"),
    ("", "pods", "list"),
    ("events.k8s.io", "events", "create"),
];

/// The `reportingController` of the CLI's Events.
pub const CLI_REPORTER: &str = "bulkhead.io/cli";

fn api_failure(what: &str, e: kube::Error) -> Failure {
    match &e {
        kube::Error::Api(s) if s.code == 403 => bad(format!(
            "{what}: forbidden ({}); the operator needs the bulkhead-quarantine-operator ClusterRole (manifests/rbac-quarantine.yaml)",
            s.message
        )),
        kube::Error::Api(s)
            if s.code == 404 && s.message.contains("could not find the requested resource") =>
        {
            bad(format!(
                "{what}: the Quarantine CRD is not installed (kubectl apply -f manifests/crds.yaml)"
            ))
        }
        _ => failed(format!("{what}: {e}")),
    }
}

impl CrStore {
    pub fn new(client: kube::Client) -> Self {
        let identity = std::env::var("HOSTNAME").unwrap_or_else(|_| "cli".into());
        Self {
            events: Recorder::with_controller(client.clone(), CLI_REPORTER, identity),
            client,
        }
    }

    fn api(&self, namespace: &str) -> Api<Quarantine> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Creates the CR, or replaces the spec and annotations of the one
    /// already there (a quarantine given again: new reason, forensics or
    /// expiry), keeping its status.
    async fn put(&self, q: &Quarantine) -> Result<(), Failure> {
        let ns = q.metadata.namespace.as_deref().unwrap_or("default");
        let name = q.metadata.name.as_deref().unwrap_or_default();
        let what = format!("Quarantine {ns}/{name}");
        let api = self.api(ns);
        match api.create(&PostParams::default(), q).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(api_failure(&what, e)),
        }
        // It exists: replace it, retrying once on a concurrent change.
        for _ in 0..3 {
            let mut cur = api.get(name).await.map_err(|e| api_failure(&what, e))?;
            cur.spec = q.spec.clone();
            let ann = cur
                .metadata
                .annotations
                .get_or_insert_with(Default::default);
            ann.extend(q.metadata.annotations.clone().unwrap_or_default());
            match api.replace(name, &PostParams::default(), &cur).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(api_failure(&what, e)),
            }
        }
        Err(failed(format!("{what}: changed concurrently; try again")))
    }

    async fn delete(&self, namespace: &str, name: &str) -> Result<bool, Failure> {
        match self
            .api(namespace)
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s))
                if s.code == 404
                    && !s.message.contains("could not find the requested resource") =>
            {
                Ok(false)
            }
            Err(e) => Err(api_failure(&format!("Quarantine {namespace}/{name}"), e)),
        }
    }

    async fn list(&self) -> Result<Vec<Quarantine>, Failure> {
        let api: Api<Quarantine> = Api::all(self.client.clone());
        let mut items = api
            .list(&ListParams::default())
            .await
            .map_err(|e| api_failure("listing Quarantines", e))?
            .items;
        items.sort_by_key(q_key);
        Ok(items)
    }

    /// One Event regarding the Quarantine (`Quarantined` / `Released`), the
    /// pod as the related object.
    async fn audit(&self, r: &AuditRecord) -> Result<(), Failure> {
        let (ns, name) = r
            .quarantine
            .split_once('/')
            .unwrap_or(("default", &r.quarantine));
        let (reason, action) = if r.action == "release" {
            ("Released", "Release")
        } else {
            ("Quarantined", "Quarantine")
        };
        let mut note = format!(
            "{} by {}: {}",
            r.action,
            r.by.as_deref().unwrap_or("unknown"),
            r.reason.as_deref().unwrap_or("no reason given")
        );
        if !r.allow_from.is_empty() {
            let _ = write!(note, "; forensics: {}", r.allow_from.join(", "));
        }
        if let Some(e) = &r.expires {
            let _ = write!(note, "; expires {e}");
        }
        if let Some(sel) = &r.selector {
            let _ = write!(note, "; pods with labels {sel}");
        }
        let uid = self
            .api(ns)
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|q| q.metadata.uid);
        let spec = EventSpec {
            regarding: ObjectReference {
                api_version: Some(format!(
                    "{}/{}",
                    bulkhead_core::crd::GROUP,
                    bulkhead_core::crd::VERSION
                )),
                kind: Some("Quarantine".into()),
                namespace: Some(ns.into()),
                name: Some(name.into()),
                uid,
                ..Default::default()
            },
            // The pod, for a one-pod quarantine.
            related: r.selector.is_none().then(|| ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            }),
            type_: if r.action == "release" {
                "Normal"
            } else {
                "Warning"
            }
            .into(),
            reason: reason.into(),
            action: action.into(),
            note,
        };
        self.events.publish(spec).await.map_err(|e| {
            api_failure(
                &format!(
                    "the audit Event of Quarantine {ns}/{name} (the quarantine itself is in place)"
                ),
                e,
            )
        })
    }

    async fn missing_pod(&self, namespace: &str, target: &Target<'_>) -> Option<String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match target {
            Target::Pod(name) => match pods.get_opt(name).await {
                Ok(None) => Some(format!(
                    "warning: no pod {namespace}/{name} exists now; the quarantine applies to a pod of that name when one appears\n"
                )),
                _ => None,
            },
            Target::Selector(sel) => match pods.list(&ListParams::default().labels(sel)).await {
                Ok(l) if l.items.is_empty() => Some(format!(
                    "warning: no pod of {namespace} has the labels {sel} now; the quarantine applies to the pods that get them\n"
                )),
                _ => None,
            },
        }
    }
}

/// What a CLI quarantine targets.
#[derive(Debug)]
enum Target<'a> {
    Pod(&'a str),
    /// `key=value,...`
    Selector(&'a str),
}

fn q_key(q: &Quarantine) -> String {
    format!(
        "{}/{}",
        q.metadata.namespace.as_deref().unwrap_or("default"),
        q.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Per node, the first `enforced` record since the last `applied` one.
fn enforcement_from_log(key: &str, log: &[AuditRecord]) -> Vec<(String, u64, String)> {
    let since = log
        .iter()
        .rposition(|r| r.quarantine == key && r.action == "applied")
        .unwrap_or(0);
    let mut nodes: BTreeMap<&str, &AuditRecord> = BTreeMap::new();
    for r in log[since..]
        .iter()
        .filter(|r| r.quarantine == key && r.action == "enforced")
    {
        if let Some(n) = &r.node {
            nodes.entry(n.as_str()).or_insert(r);
        }
    }
    nodes
        .into_iter()
        .map(|(n, r)| {
            (
                n.to_owned(),
                r.generation.unwrap_or_default(),
                r.time.clone(),
            )
        })
        .collect()
}

/// Runs one CLI command on its own runtime (the CLI is otherwise sync).
fn block_on<T>(f: impl std::future::Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(e.to_string()))?
        .block_on(f)
}

/// `app=web,tier=front` as `matchLabels` (the keys and values are checked
/// by the spec's validation).
fn parse_selector(s: &str) -> Result<LabelSelector, Failure> {
    let mut labels = BTreeMap::new();
    for pair in s.split(',') {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(bad(format!(
                "--selector {s:?}: expected key=value[,key=value...]"
            )));
        };
        labels.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(LabelSelector {
        match_labels: Some(labels),
        match_expressions: None,
    })
}

fn split_pod(pod: &str) -> Result<(&str, &str), Failure> {
    match pod.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns, name))
        }
        _ => Err(bad(format!("{pod:?}: expected <namespace>/<pod>"))),
    }
}

fn who(as_user: &Option<String>) -> String {
    as_user
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// RFC 3339 in whole seconds, UTC.
pub fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `90s`, `30m`, `4h`, `2d`.
pub fn parse_duration(s: &str) -> Result<SignedDuration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit (s, m, h, d), like 30m"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    if n <= 0 {
        return Err(format!("{s:?}: must be positive"));
    }
    n.checked_mul(secs)
        .map(SignedDuration::from_secs)
        .ok_or_else(|| format!("{s:?}: too long"))
}

/// `bulkhead quarantine`.
pub fn quarantine(args: &QuarantineArgs) -> Result<String, Failure> {
    block_on(async { quarantine_in(&Store::open(&args.source).await?, args).await })
}

/// `bulkhead release`.
pub fn release(args: &ReleaseArgs) -> Result<String, Failure> {
    block_on(async { release_in(&Store::open(&args.source).await?, args).await })
}

/// `bulkhead quarantine` against a store (`args.source` is not read).
pub async fn quarantine_in(store: &Store, args: &QuarantineArgs) -> Result<String, Failure> {
    if args.list {
        return list(store).await;
    }
    let pod = args.pod.as_deref().unwrap_or_default();
    let (ns, name) = split_pod(pod)?;
    let now = Timestamp::now();
    let expires = match &args.expires {
        None => None,
        Some(d) => {
            let d = parse_duration(d).map_err(|e| bad(format!("--expires {e}")))?;
            let t = now
                .checked_add(d)
                .map_err(|e| bad(format!("--expires: {e}")))?;
            Some(rfc3339(t))
        }
    };
    let by = who(&args.as_user);
    let pod_selector = args.selector.as_deref().map(parse_selector).transpose()?;
    let spec = QuarantineSpec {
        pod_name: pod_selector.is_none().then(|| name.to_owned()),
        pod_selector,
        reason: args.reason.clone().unwrap_or_default(),
        allow_from: args.allow_from.clone(),
        expires: expires.clone(),
    };
    if let Err(errs) = spec.validate() {
        return Err(bad(format!("Quarantine {ns}/{name}: {errs}")));
    }
    let at = rfc3339(now);
    let q = Quarantine {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.to_owned()),
            annotations: Some(
                [
                    (BY_ANNOTATION.to_owned(), by.clone()),
                    (AT_ANNOTATION.to_owned(), at.clone()),
                ]
                .into_iter()
                .collect(),
            ),
            ..Default::default()
        },
        spec,
        status: None,
    };
    store.put(&q).await?;
    let target = match &args.selector {
        Some(sel) => Target::Selector(sel),
        None => Target::Pod(name),
    };
    let warning = store.missing_pod(ns, &target).await.unwrap_or_default();
    store
        .audit(&AuditRecord {
            time: at,
            action: "quarantine".into(),
            quarantine: format!("{ns}/{name}"),
            origin: "cli".into(),
            by: Some(by),
            reason: Some(q.spec.reason.clone()),
            allow_from: q.spec.allow_from.clone(),
            expires,
            pods: match target {
                Target::Pod(_) => vec![format!("{ns}/{name}")],
                Target::Selector(_) => Vec::new(),
            },
            selector: args.selector.clone(),
            ..Default::default()
        })
        .await?;
    Ok(format!("{warning}quarantine {ns}/{name} written\n"))
}

/// `bulkhead release` against a store (`args.source` is not read).
pub async fn release_in(store: &Store, args: &ReleaseArgs) -> Result<String, Failure> {
    let (ns, name) = split_pod(&args.pod)?;
    let key = format!("{ns}/{name}");
    // What it quarantined, for the record (a pod, or a workload's labels).
    let selector = store
        .list()
        .await?
        .into_iter()
        .find(|q| q_key(q) == key)
        .and_then(|q| q.spec.pod_selector)
        .map(|s| render_selector(&s));
    if !store.delete(ns, name).await? {
        return Err(bad(format!(
            "{ns}/{name} is not quarantined (no Quarantine {ns}/{name})"
        )));
    }
    store
        .audit(&AuditRecord {
            time: rfc3339(Timestamp::now()),
            action: "release".into(),
            quarantine: key.clone(),
            origin: "cli".into(),
            by: Some(who(&args.as_user)),
            reason: args.reason.clone(),
            pods: if selector.is_none() {
                vec![key]
            } else {
                Vec::new()
            },
            selector,
            ..Default::default()
        })
        .await?;
    Ok(format!("quarantine {ns}/{name} released\n"))
}

/// A label selector as `kubectl -l` takes it (`matchLabels` only; a
/// selector with expressions says so).
fn render_selector(s: &LabelSelector) -> String {
    let mut out: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let exprs = s.match_expressions.as_ref().map_or(0, Vec::len);
    if exprs > 0 {
        out.push(format!("(+{exprs} expressions)"));
    }
    out.join(",")
}

/// `quarantine --list`: the active ones, with who, why, and per node the
/// time it acked the first generation that enforced it.
async fn list(store: &Store) -> Result<String, Failure> {
    let qs = store.list().await?;
    let log = store.audit_log().await?;
    let mut out = String::new();
    if qs.is_empty() {
        out.push_str("no active quarantines\n");
        return Ok(out);
    }
    for q in qs {
        let ns = q.metadata.namespace.as_deref().unwrap_or("default");
        let key = q_key(&q);
        let ann = |k: &str| {
            q.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(k).cloned())
                .unwrap_or_else(|| "?".into())
        };
        let target = match (&q.spec.pod_name, &q.spec.pod_selector) {
            (Some(p), _) => format!("pod {ns}/{p}"),
            (None, Some(sel)) => format!("pods of {ns} with labels {}", render_selector(sel)),
            _ => "?".into(),
        };
        let _ = writeln!(
            out,
            "{key}: {target}; reason: {}; by {} at {}; expires {}",
            q.spec.reason,
            ann(BY_ANNOTATION),
            ann(AT_ANNOTATION),
            q.spec.expires.as_deref().unwrap_or("never")
        );
        if !q.spec.allow_from.is_empty() {
            let _ = writeln!(out, "  forensics: {}", q.spec.allow_from.join(", "));
        }
        let nodes = store.enforcement(&q, &log);
        if nodes.is_empty() {
            let _ = writeln!(out, "  enforced: not yet acknowledged by any node");
        }
        for (n, generation, time) in nodes {
            let _ = writeln!(out, "  enforced on {n}: generation {generation} at {time}");
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// The controller's side
// ---------------------------------------------------------------------------

/// The Quarantines in force at `now`: drops expired ones from a loaded
/// snapshot (the core has no clock) and gives selector quarantines the pods
/// they captured before. Returns when to look again (the next expiry).
pub fn prepare(
    loaded: &bulkhead_core::Loaded,
    now: Timestamp,
    captured: &BTreeMap<String, BTreeSet<String>>,
) -> (bulkhead_core::Loaded, Option<Timestamp>) {
    let mut out = loaded.clone();
    out.objects
        .retain(|l| !matches!(&l.object, Object::Quarantine(q) if q.expired(now)));
    let mut next = None;
    for l in &mut out.objects {
        if let Object::Quarantine(q) = &mut l.object {
            if let Some(t) = q.expires_at() {
                next = Some(next.map_or(t, |n: Timestamp| n.min(t)));
            }
            if let Some(c) = captured.get(&q.key()) {
                q.captured = c.iter().cloned().collect();
            }
        }
    }
    (out, next)
}

/// Whether a snapshot needs [`prepare`] at all.
pub fn has_quarantines(loaded: &bulkhead_core::Loaded) -> bool {
    loaded
        .objects
        .iter()
        .any(|l| matches!(l.object, Object::Quarantine(_)))
}

/// One quarantine (or release) waiting for nodes to ack it.
#[derive(Debug)]
struct Pending {
    key: String,
    action: &'static str,
    /// Node → the first generation of that node containing the change.
    nodes: BTreeMap<String, u64>,
}

/// The controller's audit: what it applied, and when each node enforced it.
#[derive(Debug, Default)]
pub struct Auditor {
    path: Option<PathBuf>,
    /// Quarantine → its pods, as last compiled.
    active: BTreeMap<String, Vec<String>>,
    /// Selector quarantines: the pods they matched, kept when relabelled.
    pub captured: BTreeMap<String, BTreeSet<String>>,
    pending: Vec<Pending>,
}

impl Auditor {
    pub fn new(path: Option<PathBuf>) -> Self {
        Self {
            path,
            ..Default::default()
        }
    }

    /// Appends to the audit log (if any) and logs the record (target
    /// `bulkhead::audit`): in kube mode the controller's log is the trail of
    /// what it applied and when each node enforced it.
    fn write(&self, r: AuditRecord) {
        if let Ok(json) = serde_json::to_string(&r) {
            tracing::info!(target: "bulkhead::audit", record = %json, "quarantine audit");
        }
        if let Some(p) = &self.path
            && let Err(e) = append_audit(p, &r)
        {
            tracing::warn!(path = %p.display(), error = %e, "cannot write the audit log");
        }
    }

    /// After the index compiled `inv`; `current` is every node's generation.
    pub fn on_update(&mut self, inv: &Inventory, current: &BTreeMap<String, u64>) {
        let mut now_active: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (qid, q) in inv.quarantines.iter().enumerate() {
            let pods: Vec<String> = (0..inv.pods.len())
                .filter(|&p| inv.quarantines_of(p).contains(&qid))
                .map(|p| inv.pods[p].key())
                .collect();
            if matches!(q.target, bulkhead_core::quarantine::Target::Selector(_)) {
                let c = self.captured.entry(q.key()).or_default();
                c.extend(
                    pods.iter()
                        .filter_map(|k| k.split_once('/').map(|(_, n)| n.to_owned())),
                );
            }
            now_active.insert(q.key(), pods);
        }
        self.captured.retain(|k, _| now_active.contains_key(k));
        let time = rfc3339(Timestamp::now());
        let mut changes: Vec<(String, &'static str, Vec<String>)> = Vec::new();
        for (k, pods) in &now_active {
            if self.active.get(k) != Some(pods) {
                changes.push((k.clone(), "applied", pods.clone()));
            }
        }
        for (k, pods) in &self.active {
            if !now_active.contains_key(k) {
                changes.push((k.clone(), "released", pods.clone()));
            }
        }
        for (key, action, pods) in changes {
            let generation = current.values().max().copied();
            let q = inv.quarantines.iter().find(|q| q.key() == key);
            self.write(AuditRecord {
                time: time.clone(),
                action: action.into(),
                quarantine: key.clone(),
                origin: "controller".into(),
                reason: q.map(|q| q.reason.clone()),
                allow_from: q
                    .map(|q| q.allow_from.iter().map(|s| s.to_string()).collect())
                    .unwrap_or_default(),
                expires: q.and_then(|q| q.expires.clone()),
                pods,
                generation,
                ..Default::default()
            });
            self.pending.retain(|p| p.key != key);
            self.pending.push(Pending {
                key,
                action: if action == "applied" {
                    "enforced"
                } else {
                    "lifted"
                },
                nodes: current.clone(),
            });
        }
        self.active = now_active;
    }

    /// Records the nodes that acked a generation containing a pending change.
    pub fn on_status(&mut self, nodes: &BTreeMap<String, NodeStatus>) {
        let mut records = Vec::new();
        for p in &mut self.pending {
            p.nodes.retain(|node, generation| {
                let Some(s) = nodes.get(node) else {
                    return true;
                };
                match (s.acked_generation, s.acked_at_unix_millis) {
                    (Some(acked), Some(at)) if acked >= *generation => {
                        let time = Timestamp::from_millisecond(at as i64)
                            .map(|t| t.to_string())
                            .unwrap_or_default();
                        records.push(AuditRecord {
                            time,
                            action: p.action.into(),
                            quarantine: p.key.clone(),
                            origin: "controller".into(),
                            node: Some(node.clone()),
                            generation: Some(acked),
                            ..Default::default()
                        });
                        false
                    }
                    _ => true,
                }
            });
        }
        self.pending.retain(|p| !p.nodes.is_empty());
        for r in records {
            self.write(r);
        }
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// The default audit log of a `dir:` source.
pub fn default_audit_path(source: &str) -> Option<PathBuf> {
    source
        .strip_prefix("dir:")
        .map(|d| Path::new(d).join(AUDIT_FILE))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("90s").unwrap(),
            SignedDuration::from_secs(90)
        );
        assert_eq!(
            parse_duration("30m").unwrap(),
            SignedDuration::from_secs(1800)
        );
        assert_eq!(
            parse_duration("2d").unwrap(),
            SignedDuration::from_secs(172_800)
        );
        for bad in ["", "m", "10", "10w", "0s", "-5m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quarantine_and_release_write_files_and_audit_records() {
        let dir = std::env::temp_dir().join(format!("bulkhead-q-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let source = format!("dir:{}", dir.display());
        let args = QuarantineArgs {
            pod: Some("shop/web".into()),
            reason: Some("miner".into()),
            allow_from: vec!["sec/forensics".into(), "10.0.0.0/8".into()],
            expires: Some("1h".into()),
            selector: None,
            list: false,
            source: source.clone(),
            as_user: Some("alice".into()),
        };
        quarantine(&args).unwrap();
        // What the controller reads: a valid Quarantine.
        let text = std::fs::read_to_string(dir.join("quarantine.shop.web.yaml")).unwrap();
        let loaded = bulkhead_core::load_str("q.yaml", &text);
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        let list = quarantine(&QuarantineArgs {
            pod: None,
            reason: None,
            list: true,
            ..args
        })
        .unwrap();
        assert!(
            list.contains("shop/web: pod shop/web; reason: miner; by alice"),
            "{list}"
        );
        assert!(list.contains("not yet acknowledged"), "{list}");
        // A bad forensics source is refused before anything is written.
        let bad = QuarantineArgs {
            pod: Some("shop/db".into()),
            reason: Some("x".into()),
            allow_from: vec!["nonsense".into()],
            expires: None,
            selector: None,
            list: false,
            source: source.clone(),
            as_user: None,
        };
        assert!(quarantine(&bad).is_err());
        assert!(!dir.join("quarantine.shop.db.yaml").exists());
        release(&ReleaseArgs {
            pod: "shop/web".into(),
            source: source.clone(),
            reason: None,
            as_user: Some("bob".into()),
        })
        .unwrap();
        assert!(!dir.join("quarantine.shop.web.yaml").exists());
        let log = read_audit(&dir.join(AUDIT_FILE));
        let actions: Vec<(&str, Option<&str>)> = log
            .iter()
            .map(|r| (r.action.as_str(), r.by.as_deref()))
            .collect();
        assert_eq!(
            actions,
            [("quarantine", Some("alice")), ("release", Some("bob"))]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
