//! A mock Kubernetes API server for tests: a `tower::Service` that kube's
//! `Client` talks to, serving the API's real JSON for list, watch, get,
//! create, replace (with `resourceVersion` conflicts), delete and
//! merge-patch of `status`, scripted per test.
//!
//! ```text
//!  test ──apply / delete / bookmark / expire_watches──▶ MockApi (objects, event log, open watches)
//!  kube::Client("a") ──tower::Service──▶ MockApi ──▶ list JSON | watch stream (ADDED/MODIFIED/DELETED/BOOKMARK/ERROR 410)
//!                                                  └──▶ write log (who, what, lease holder at that moment)
//! ```
//!
//! Collections are keyed by their URL (`api/v1/pods`,
//! `apis/bulkhead.io/v1alpha1/quarantines`); a collection that is not
//! installed answers 404, like a CRD that is absent. Every mutation gets
//! the next global `resourceVersion` and is kept in an event log, so a
//! watch started at version R first receives every change after R. After
//! [`MockApi::expire_watches`], every open watch receives an `ERROR` event
//! with a Status of code 410 and ends, and a watch from an older version is
//! refused the same way (the client must relist).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::StreamBody;
use kube::api::ApiResource;
use serde_json::{Value, json};
use tokio::sync::mpsc;

type Body = StreamBody<BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

fn full(bytes: Vec<u8>) -> Body {
    StreamBody::new(
        futures::stream::once(async move { Ok(Frame::data(Bytes::from(bytes))) }).boxed(),
    )
}

/// One installed collection.
#[derive(Debug, Default)]
struct Collection {
    api_version: String,
    kind: String,
    namespaced: bool,
    objects: BTreeMap<(String, String), Value>,
    /// (resourceVersion, type, object)
    events: Vec<(u64, &'static str, Value)>,
    /// Watches from a version below this get 410 Gone.
    compacted: u64,
}

#[derive(Debug)]
struct WatchConn {
    coll: String,
    filter: Filter,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Clone, Debug, Default)]
struct Filter {
    namespace: Option<String>,
    label: Option<(String, String)>,
    name: Option<String>,
}

impl Filter {
    fn matches(&self, o: &Value) -> bool {
        let meta = &o["metadata"];
        if let Some(ns) = &self.namespace
            && meta["namespace"].as_str() != Some(ns)
        {
            return false;
        }
        if let Some(n) = &self.name
            && meta["name"].as_str() != Some(n)
        {
            return false;
        }
        if let Some((k, v)) = &self.label
            && meta["labels"][k].as_str() != Some(v)
        {
            return false;
        }
        true
    }
}

/// One request that changed something (not the lease's own requests).
#[derive(Clone, Debug)]
pub struct Write {
    /// The client that sent it (`MockApi::client(who)`).
    pub who: String,
    pub method: String,
    pub path: String,
    pub body: Value,
    /// The Lease holders at that moment (`namespace/name` → holder).
    pub lease_holders: BTreeMap<String, Option<String>>,
}

#[derive(Clone, Debug)]
pub struct Logged {
    pub who: String,
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub status: u16,
    pub at: std::time::Instant,
}

#[derive(Debug, Default)]
struct State {
    rv: u64,
    uid: u64,
    collections: BTreeMap<String, Collection>,
    watches: Vec<WatchConn>,
    writes: Vec<Write>,
    requests: Vec<Logged>,
    /// Clients whose lease requests fail (a partition between them and the API).
    lease_blocked: Vec<String>,
    /// How long list requests take (a slow relist).
    list_delay: std::time::Duration,
}

/// The mock API; clones share the same state.
#[derive(Clone, Debug, Default)]
pub struct MockApi {
    state: Arc<Mutex<State>>,
}

pub fn collection_key(r: &ApiResource) -> String {
    if r.group.is_empty() {
        format!("api/{}/{}", r.version, r.plural)
    } else {
        format!("apis/{}/{}/{}", r.group, r.version, r.plural)
    }
}

fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// What a path names.
struct Target {
    coll: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (prefix, rest) = match *parts.first()? {
        "api" => (format!("api/{}", parts.get(1)?), &parts[2..]),
        "apis" => (
            format!("apis/{}/{}", parts.get(1)?, parts.get(2)?),
            &parts[3..],
        ),
        _ => return None,
    };
    let (namespace, rest) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (Some(rest[1].to_owned()), &rest[2..])
    } else {
        (None, rest)
    };
    Some(Target {
        coll: format!("{prefix}/{}", rest.first()?),
        namespace,
        name: rest.get(1).map(|s| (*s).to_owned()),
        sub: rest.get(2).map(|s| (*s).to_owned()),
    })
}

/// RFC 7386 merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl MockApi {
    /// The built-in kinds the controller reads and writes; no CRDs.
    pub fn new() -> Self {
        let api = Self::default();
        for (av, kind, plural, namespaced) in [
            ("v1", "Namespace", "namespaces", false),
            ("v1", "Pod", "pods", true),
            ("v1", "Node", "nodes", false),
            ("v1", "Service", "services", true),
            (
                "networking.k8s.io/v1",
                "NetworkPolicy",
                "networkpolicies",
                true,
            ),
            (
                "discovery.k8s.io/v1",
                "EndpointSlice",
                "endpointslices",
                true,
            ),
            ("coordination.k8s.io/v1", "Lease", "leases", true),
            ("events.k8s.io/v1", "Event", "events", true),
        ] {
            api.install_kind(av, kind, plural, namespaced);
        }
        api
    }

    /// Installs a collection (as a CRD would).
    pub fn install(&self, r: &ApiResource, namespaced: bool) {
        self.install_kind(&r.api_version, &r.kind, &r.plural, namespaced);
    }

    fn install_kind(&self, api_version: &str, kind: &str, plural: &str, namespaced: bool) {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let r = ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: api_version.into(),
            kind: kind.into(),
            plural: plural.into(),
        };
        self.state.lock().unwrap().collections.insert(
            collection_key(&r),
            Collection {
                api_version: api_version.into(),
                kind: kind.into(),
                namespaced,
                ..Collection::default()
            },
        );
    }

    /// Removes a collection and its objects (a CRD deleted; or, for a
    /// built-in kind, an API server that cannot serve it yet).
    pub fn uninstall(&self, coll: &str) {
        self.state.lock().unwrap().collections.remove(coll);
    }

    /// Installs a collection by its key and type.
    pub fn reinstall(&self, coll: &str, api_version: &str, kind: &str, namespaced: bool) {
        self.state.lock().unwrap().collections.insert(
            coll.to_owned(),
            Collection {
                api_version: api_version.into(),
                kind: kind.into(),
                namespaced,
                ..Collection::default()
            },
        );
    }

    /// A client whose requests are logged as `who`'s.
    pub fn client(&self, who: &str) -> kube::Client {
        let api = self.clone();
        let who = who.to_owned();
        let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
            let api = api.clone();
            let who = who.clone();
            async move { Ok::<_, Infallible>(api.serve(&who, req).await) }
        });
        kube::Client::new(svc, "default")
    }

    fn key_of(&self, o: &Value) -> (String, (String, String)) {
        let api_version = o["apiVersion"].as_str().unwrap();
        let kind = o["kind"].as_str().unwrap();
        let st = self.state.lock().unwrap();
        let coll = st
            .collections
            .iter()
            .find(|(_, c)| c.api_version == api_version && c.kind == kind)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| panic!("{api_version} {kind} is not installed"));
        let ns = o["metadata"]["namespace"].as_str().unwrap_or("").to_owned();
        let name = o["metadata"]["name"].as_str().unwrap().to_owned();
        (coll, (ns, name))
    }

    /// Creates or replaces an object (as another client would), notifying
    /// the watches: ADDED or MODIFIED.
    pub fn apply(&self, o: Value) {
        let (coll, key) = self.key_of(&o);
        let mut st = self.state.lock().unwrap();
        st.store(&coll, key, o);
    }

    /// Applies an object given as YAML.
    pub fn apply_yaml(&self, yaml: &str) {
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if !v.is_null() {
                self.apply(v);
            }
        }
    }

    /// Deletes an object, notifying the watches: DELETED.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) {
        let (coll, key) = self.key_of(&json!({
            "apiVersion": api_version, "kind": kind,
            "metadata": {"namespace": namespace, "name": name}
        }));
        self.state.lock().unwrap().remove(&coll, key);
    }

    /// The current object, if any.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let (coll, key) = self.key_of(&json!({
            "apiVersion": api_version, "kind": kind,
            "metadata": {"namespace": namespace, "name": name}
        }));
        self.state.lock().unwrap().collections[&coll]
            .objects
            .get(&key)
            .cloned()
    }

    /// Sends a BOOKMARK with the current resourceVersion on every open watch.
    pub fn bookmark(&self) {
        let mut st = self.state.lock().unwrap();
        let rv = st.rv.to_string();
        let colls: Vec<(String, String, String)> = st
            .collections
            .iter()
            .map(|(k, c)| (k.clone(), c.api_version.clone(), c.kind.clone()))
            .collect();
        st.watches.retain(|w| {
            let (_, av, kind) = colls.iter().find(|(k, _, _)| *k == w.coll).unwrap();
            let line = json!({"type": "BOOKMARK", "object": {
                "apiVersion": av, "kind": kind, "metadata": {"resourceVersion": rv}
            }});
            w.tx.send(line_bytes(&line)).is_ok()
        });
    }

    /// Compacts history: every open watch gets an ERROR event with a 410
    /// Gone Status and ends; watching from an older version is refused the
    /// same way, so every client must relist.
    pub fn expire_watches(&self) {
        let mut st = self.state.lock().unwrap();
        let rv = st.rv;
        for c in st.collections.values_mut() {
            c.compacted = rv + 1;
        }
        let gone = json!({"type": "ERROR", "object": status_json(410, "Expired", "too old resource version")});
        for w in st.watches.drain(..) {
            let _ = w.tx.send(line_bytes(&gone));
        }
    }

    /// Ends every open watch without an error (the client resumes from its
    /// last version).
    pub fn drop_watches(&self) {
        self.state.lock().unwrap().watches.clear();
    }

    /// How many watches are open on a collection.
    pub fn open_watches(&self, coll: &str) -> usize {
        let mut st = self.state.lock().unwrap();
        st.watches.retain(|w| !w.tx.is_closed());
        st.watches.iter().filter(|w| w.coll == coll).count()
    }

    /// Makes `who`'s lease requests fail (500) or work again.
    pub fn block_leases(&self, who: &str, blocked: bool) {
        let mut st = self.state.lock().unwrap();
        st.lease_blocked.retain(|w| w != who);
        if blocked {
            st.lease_blocked.push(who.to_owned());
        }
    }

    /// Makes every list request take this long to answer.
    pub fn set_list_delay(&self, d: std::time::Duration) {
        self.state.lock().unwrap().list_delay = d;
    }

    pub fn writes(&self) -> Vec<Write> {
        self.state.lock().unwrap().writes.clone()
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.state.lock().unwrap().requests.clone()
    }

    async fn serve(&self, who: &str, req: Request<kube::client::Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let bytes = body.collect_bytes().await.unwrap_or_default();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        let uri = parts.uri.to_string();
        let is_list = parts.method == Method::GET
            && parse_path(parts.uri.path()).is_some_and(|t| t.name.is_none())
            && !uri.contains("watch=");
        let delay = self.state.lock().unwrap().list_delay;
        if is_list && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let (code, resp) = self.handle(who, &parts.method, &parts.uri, body);
        self.state.lock().unwrap().requests.push(Logged {
            who: who.to_owned(),
            method: parts.method.to_string(),
            uri,
            status: code.as_u16(),
            at: std::time::Instant::now(),
        });
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(resp)
            .unwrap()
    }

    fn handle(
        &self,
        who: &str,
        method: &Method,
        uri: &http::Uri,
        body: Value,
    ) -> (StatusCode, Body) {
        let err = |code: u16, reason: &str, msg: &str| {
            (
                StatusCode::from_u16(code).unwrap(),
                full(serde_json::to_vec(&status_json(code, reason, msg)).unwrap()),
            )
        };
        let ok = |v: &Value| (StatusCode::OK, full(serde_json::to_vec(v).unwrap()));
        let Some(t) = parse_path(uri.path()) else {
            return err(404, "NotFound", "no such path");
        };
        let query: BTreeMap<String, String> = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|s| !s.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        let mut st = self.state.lock().unwrap();
        if t.coll.ends_with("/leases") && st.lease_blocked.iter().any(|w| w == who) {
            return err(
                500,
                "InternalError",
                "the lease is unreachable from this client",
            );
        }
        if !st.collections.contains_key(&t.coll) {
            return err(
                404,
                "NotFound",
                &format!(
                    "the server could not find the requested resource ({})",
                    t.coll
                ),
            );
        }
        let is_lease = t.coll.ends_with("/leases");
        match (method.clone(), &t.name) {
            (Method::GET, None) => {
                let mut filter = Filter {
                    namespace: t.namespace.clone(),
                    ..Filter::default()
                };
                if let Some(l) = query.get("labelSelector") {
                    let (k, v) = l.split_once('=').unwrap();
                    filter.label = Some((k.into(), v.into()));
                }
                if let Some(f) = query.get("fieldSelector") {
                    filter.name = Some(f.strip_prefix("metadata.name=").unwrap().into());
                }
                let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
                let c = &st.collections[&t.coll];
                if !watch {
                    let items: Vec<Value> = c
                        .objects
                        .values()
                        .filter(|o| filter.matches(o))
                        .map(|o| {
                            // Items of a list carry no type, as the API server sends them.
                            let mut o = o.clone();
                            let m = o.as_object_mut().unwrap();
                            m.remove("apiVersion");
                            m.remove("kind");
                            o
                        })
                        .collect();
                    return ok(&json!({
                        "apiVersion": c.api_version,
                        "kind": format!("{}List", c.kind),
                        "metadata": {"resourceVersion": st.rv.to_string()},
                        "items": items,
                    }));
                }
                let from: u64 = query
                    .get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let (tx, rx) = mpsc::unbounded_channel();
                if from + 1 < c.compacted {
                    let gone = json!({"type": "ERROR", "object": status_json(410, "Expired", "too old resource version")});
                    let _ = tx.send(line_bytes(&gone));
                } else {
                    for (rv, ty, o) in &c.events {
                        if *rv > from && filter.matches(o) {
                            let _ = tx.send(line_bytes(&json!({"type": ty, "object": o})));
                        }
                    }
                    st.watches.push(WatchConn {
                        coll: t.coll.clone(),
                        filter,
                        tx,
                    });
                }
                let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
                    .map(|b| Ok(Frame::data(b)))
                    .boxed();
                (StatusCode::OK, StreamBody::new(stream))
            }
            (Method::GET, Some(name)) => {
                let key = (t.namespace.clone().unwrap_or_default(), name.clone());
                match st.collections[&t.coll].objects.get(&key) {
                    Some(o) => ok(o),
                    None => err(404, "NotFound", &format!("{name} not found")),
                }
            }
            (Method::POST, None) => {
                let mut o = body.clone();
                let name = o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let ns = t.namespace.clone().unwrap_or_default();
                if !ns.is_empty() {
                    o["metadata"]["namespace"] = json!(ns);
                }
                let key = (ns, name.clone());
                if st.collections[&t.coll].objects.contains_key(&key) {
                    return err(409, "AlreadyExists", &format!("{name} already exists"));
                }
                if !is_lease {
                    st.record_write(who, "POST", uri.path(), body);
                }
                let o = st.store(&t.coll, key.clone(), o);
                (StatusCode::CREATED, full(serde_json::to_vec(&o).unwrap()))
            }
            (Method::PUT, Some(name)) if t.sub.is_none() => {
                let key = (t.namespace.clone().unwrap_or_default(), name.clone());
                let Some(cur) = st.collections[&t.coll].objects.get(&key) else {
                    return err(404, "NotFound", &format!("{name} not found"));
                };
                if body["metadata"]["resourceVersion"] != cur["metadata"]["resourceVersion"] {
                    return err(
                        409,
                        "Conflict",
                        "the object has been modified; please apply your changes to the latest version and try again",
                    );
                }
                if !is_lease {
                    st.record_write(who, "PUT", uri.path(), body.clone());
                }
                let o = st.store(&t.coll, key, body);
                ok(&o)
            }
            (Method::PATCH, Some(name)) if t.sub.as_deref() == Some("status") => {
                let key = (t.namespace.clone().unwrap_or_default(), name.clone());
                let Some(mut o) = st.collections[&t.coll].objects.get(&key).cloned() else {
                    return err(404, "NotFound", &format!("{name} not found"));
                };
                st.record_write(who, "PATCH", uri.path(), body.clone());
                let status = body.get("status").cloned().unwrap_or(Value::Null);
                merge(&mut o["status"], &status);
                let o = st.store(&t.coll, key, o);
                ok(&o)
            }
            (Method::DELETE, Some(name)) if t.sub.is_none() => {
                let key = (t.namespace.clone().unwrap_or_default(), name.clone());
                if !st.collections[&t.coll].objects.contains_key(&key) {
                    return err(404, "NotFound", &format!("{name} not found"));
                }
                st.record_write(who, "DELETE", uri.path(), body);
                match st.remove(&t.coll, key) {
                    Some(o) => ok(&o),
                    None => err(404, "NotFound", &format!("{name} not found")),
                }
            }
            _ => err(405, "MethodNotAllowed", "not implemented by the mock"),
        }
    }
}

fn line_bytes(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap();
    b.push(b'\n');
    Bytes::from(b)
}

impl State {
    /// Stores an object under the next resourceVersion; ADDED or MODIFIED.
    fn store(&mut self, coll: &str, key: (String, String), mut o: Value) -> Value {
        self.rv += 1;
        let rv = self.rv;
        let c = self.collections.get_mut(coll).unwrap();
        o["apiVersion"] = json!(c.api_version);
        o["kind"] = json!(c.kind);
        let existing = c.objects.get(&key).cloned();
        let ty = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let uid = match existing
            .as_ref()
            .and_then(|e| e["metadata"]["uid"].as_str())
        {
            Some(u) => u.to_owned(),
            None => {
                self.uid += 1;
                format!("uid-{}", self.uid)
            }
        };
        let c = self.collections.get_mut(coll).unwrap();
        o["metadata"]["uid"] = json!(uid);
        o["metadata"]["resourceVersion"] = json!(rv.to_string());
        if o["metadata"]["generation"].is_null() {
            o["metadata"]["generation"] = json!(1);
        }
        c.objects.insert(key, o.clone());
        c.events.push((rv, ty, o.clone()));
        self.notify(coll, ty, &o);
        o
    }

    /// Removes an object under the next resourceVersion; DELETED.
    fn remove(&mut self, coll: &str, key: (String, String)) -> Option<Value> {
        self.rv += 1;
        let rv = self.rv;
        let c = self.collections.get_mut(coll).unwrap();
        let mut o = c.objects.remove(&key)?;
        o["metadata"]["resourceVersion"] = json!(rv.to_string());
        c.events.push((rv, "DELETED", o.clone()));
        self.notify(coll, "DELETED", &o);
        Some(o)
    }

    fn notify(&mut self, coll: &str, ty: &str, o: &Value) {
        let line = line_bytes(&json!({"type": ty, "object": o}));
        self.watches
            .retain(|w| w.coll != coll || !w.filter.matches(o) || w.tx.send(line.clone()).is_ok());
    }

    fn record_write(&mut self, who: &str, method: &str, path: &str, body: Value) {
        let lease_holders = self
            .collections
            .get("apis/coordination.k8s.io/v1/leases")
            .map(|c| {
                c.objects
                    .iter()
                    .map(|((ns, name), l)| {
                        (
                            format!("{ns}/{name}"),
                            l["spec"]["holderIdentity"].as_str().map(str::to_owned),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.writes.push(Write {
            who: who.to_owned(),
            method: method.to_owned(),
            path: path.to_owned(),
            body,
            lease_holders,
        });
    }
}
