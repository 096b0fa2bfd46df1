//! The objects the lab reads and the files it writes for the controller.
//!
//! Input files are read twice over: by `bulkhead_core`'s loader, which
//! validates them exactly as the controller will (any error and the lab
//! refuses the file), and as plain YAML, so that what the lab writes into the
//! controller's source directory is the object as the user wrote it, with
//! only what the lab decides filled in (a pod's node and addresses, a node's
//! addresses).
//!
//! The source directory holds one file per object, named after it
//! ([`file_name`]): `pod.<namespace>.<name>.yaml`,
//! `networkpolicy.<namespace>.<name>.yaml`, `namespace.<name>.yaml`,
//! `node.<name>.yaml`. Namespace names have no dots, so the names never
//! collide. Files are replaced atomically (a hidden temporary file, then a
//! rename), which is how the controller's directory source wants them.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use bulkhead_core::model::{Object, ObjectId};
use serde_yaml::{Mapping, Value};

/// One object of an input file.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// What the loader made of it.
    pub object: Object,
    /// The document as written, with `apiVersion` and `kind` always present
    /// (items of typed lists inherit them) and, for namespaced kinds,
    /// `metadata.namespace` filled in.
    pub raw: Value,
}

impl Item {
    pub fn id(&self) -> ObjectId {
        self.object.id()
    }

    /// Where the object lives in the source directory.
    pub fn file_name(&self) -> String {
        file_name(&self.id())
    }
}

/// `kind.namespace.name.yaml` or `kind.name.yaml` (kind in lower case).
pub fn file_name(id: &ObjectId) -> String {
    let kind = id.kind.as_str().to_ascii_lowercase();
    match &id.namespace {
        Some(ns) => format!("{kind}.{ns}.{}.yaml", id.name),
        None => format!("{kind}.{}.yaml", id.name),
    }
}

/// `Pod acme/web`, `Namespace acme`.
pub fn describe(id: &ObjectId) -> String {
    id.to_string()
}

/// What reading a file gave: its objects, and the warnings of the loader
/// (kinds Bulkhead does not use, which are skipped).
#[derive(Debug, Clone, Default)]
pub struct Read {
    pub items: Vec<Item>,
    pub warnings: Vec<String>,
}

/// Reads the objects of one file (`name` is used in messages). Fails, with
/// every problem the loader found, unless the whole file is valid.
pub fn read(name: &str, text: &str) -> anyhow::Result<Read> {
    let loaded = bulkhead_core::load_str(name, text);
    let errors: Vec<String> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .collect();
    if !errors.is_empty() {
        bail!(
            "{name} is not valid (nothing was applied):\n{}",
            errors.join("\n")
        );
    }
    let warnings = loaded
        .diagnostics
        .iter()
        .filter(|d| !d.is_error())
        .map(ToString::to_string)
        .collect();
    let raw = raw_items(text).with_context(|| format!("reading {name} as YAML"))?;
    let mut items = Vec::with_capacity(loaded.objects.len());
    for located in &loaded.objects {
        let key = (located.origin.document, located.origin.item);
        let mut raw = raw.get(&key).cloned().with_context(|| {
            format!(
                "{name}: document {} item {:?}: the loader found {} where the YAML has none",
                key.0,
                key.1,
                describe(&located.object.id())
            )
        })?;
        if let Some(ns) = located.object.id().namespace {
            set_path(&mut raw, &["metadata", "namespace"], Value::from(ns));
        }
        items.push(Item {
            object: located.object.clone(),
            raw,
        });
    }
    Ok(Read { items, warnings })
}

/// Every object mapping of a YAML stream by `(document, item)`, numbered as
/// the loader numbers them (documents from 1, list items from 0), with typed
/// lists' `apiVersion` and `kind` passed down to their items.
fn raw_items(text: &str) -> anyhow::Result<BTreeMap<(usize, Option<usize>), Value>> {
    use serde::Deserialize as _;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = BTreeMap::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).context("invalid YAML")?;
        let Value::Mapping(map) = value else {
            continue;
        };
        let get = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_owned);
        let (api, kind) = (get("apiVersion"), get("kind"));
        let is_list = kind
            .as_deref()
            .is_some_and(|k| k == "List" || (k.ends_with("List") && map.contains_key("items")));
        if !is_list {
            out.insert((i + 1, None), Value::Mapping(map));
            continue;
        }
        let item_kind = kind
            .as_deref()
            .and_then(|k| k.strip_suffix("List"))
            .filter(|k| !k.is_empty())
            .map(str::to_owned);
        let Some(Value::Sequence(list)) = map.get("items") else {
            continue;
        };
        for (j, item) in list.iter().enumerate() {
            let mut item = item.clone();
            if let (Some(k), Value::Mapping(m)) = (&item_kind, &mut item) {
                let absent = |m: &Mapping, key: &str| m.get(key).is_none();
                if absent(m, "apiVersion") && absent(m, "kind") {
                    m.insert(
                        "apiVersion".into(),
                        Value::from(api.clone().unwrap_or_default()),
                    );
                    m.insert("kind".into(), Value::from(k.clone()));
                }
            }
            out.insert((i + 1, Some(j)), item);
        }
    }
    Ok(out)
}

/// Sets `path` (creating mappings on the way; replacing what is not one).
pub fn set_path(v: &mut Value, path: &[&str], new: Value) {
    let Some((last, parents)) = path.split_last() else {
        *v = new;
        return;
    };
    let mut cur = v;
    for p in parents {
        if !matches!(cur, Value::Mapping(_)) {
            *cur = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(m) = cur else { return };
        cur = m
            .entry(Value::from(*p))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
    }
    if !matches!(cur, Value::Mapping(_)) {
        *cur = Value::Mapping(Mapping::new());
    }
    if let Value::Mapping(m) = cur {
        m.insert(Value::from(*last), new);
    }
}

/// The value at `path`, if any.
pub fn get_path<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, p| cur.get(*p))
}

/// `raw` with `metadata.labels` replaced by those of `from` (none: removed).
pub fn with_labels_of(raw: &Value, from: &Value) -> Value {
    let mut out = raw.clone();
    match get_path(from, &["metadata", "labels"]) {
        Some(labels) if !labels.is_null() => {
            set_path(&mut out, &["metadata", "labels"], labels.clone());
        }
        _ => {
            if let Some(Value::Mapping(meta)) = out.get_mut("metadata") {
                meta.remove("labels");
            }
        }
    }
    out
}

/// A pod as the lab runs it: on `node`, with `ips` (primary first), Running.
pub fn placed_pod(raw: &Value, node: &str, ips: &[IpAddr]) -> Value {
    let mut out = raw.clone();
    set_path(&mut out, &["spec", "nodeName"], Value::from(node));
    if let Some(first) = ips.first() {
        set_path(
            &mut out,
            &["status", "podIP"],
            Value::from(first.to_string()),
        );
    }
    let list: Vec<Value> = ips
        .iter()
        .map(|ip| {
            let mut m = Mapping::new();
            m.insert("ip".into(), Value::from(ip.to_string()));
            Value::Mapping(m)
        })
        .collect();
    set_path(&mut out, &["status", "podIPs"], Value::Sequence(list));
    if get_path(&out, &["status", "phase"]).is_none() {
        set_path(&mut out, &["status", "phase"], Value::from("Running"));
    }
    out
}

/// A Node with the lab's addresses (the given object's labels are kept).
pub fn lab_node(raw: Option<&Value>, name: &str, addresses: &[IpAddr]) -> Value {
    let mut out = raw.cloned().unwrap_or_else(|| {
        let mut m = Mapping::new();
        m.insert("apiVersion".into(), "v1".into());
        m.insert("kind".into(), "Node".into());
        Value::Mapping(m)
    });
    set_path(&mut out, &["metadata", "name"], Value::from(name));
    let list: Vec<Value> = addresses
        .iter()
        .map(|ip| {
            let mut m = Mapping::new();
            m.insert("type".into(), "InternalIP".into());
            m.insert("address".into(), Value::from(ip.to_string()));
            Value::Mapping(m)
        })
        .collect();
    set_path(&mut out, &["status", "addresses"], Value::Sequence(list));
    out
}

/// The text of a source file holding `raw`.
pub fn render(raw: &Value) -> anyhow::Result<String> {
    let body = serde_yaml::to_string(raw).context("writing YAML")?;
    Ok(format!("---\n{body}"))
}

/// Replaces `dir/name` with `text` atomically: a hidden temporary file in
/// the same directory (which the controller ignores), flushed, renamed.
pub fn write_atomic(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_data())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, &path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(path)
}

/// Writes `text` to `dir/name`'s hidden temporary file, to be renamed into
/// place by [`commit`] (several files can then land within microseconds).
pub fn stage(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_data())
        .with_context(|| format!("writing {}", tmp.display()))?;
    Ok(tmp)
}

/// Renames what [`stage`] wrote into place.
pub fn commit(dir: &Path, name: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    fs::rename(&tmp, &path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Reads back a source file the lab wrote: its one object.
pub fn read_source(dir: &Path, name: &str) -> anyhow::Result<Option<Item>> {
    let path = dir.join(name);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let read = read(name, &text)?;
    let mut items = read.items.into_iter();
    let item = items
        .next()
        .with_context(|| format!("{} holds no object", path.display()))?;
    if items.next().is_some() {
        bail!("{} holds more than one object", path.display());
    }
    Ok(Some(item))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUT: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: acme, labels: {tenant: acme}}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: skipped, namespace: acme}
- apiVersion: v1
  kind: Pod
  metadata: {name: web, namespace: acme, labels: {app: web}}
  spec: {containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: PodList
items:
- metadata: {name: db, namespace: acme}
  spec: {containers: [{name: c, image: i}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny}
spec: {podSelector: {}}
"#;

    #[test]
    fn reads_lists_typed_lists_and_defaults() {
        let r = read("in.yaml", INPUT).unwrap();
        let names: Vec<String> = r.items.iter().map(Item::file_name).collect();
        assert_eq!(
            names,
            [
                "namespace.acme.yaml",
                "pod.acme.web.yaml",
                "pod.acme.db.yaml",
                "networkpolicy.default.deny.yaml"
            ]
        );
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        let db = &r.items[2].raw;
        assert_eq!(get_path(db, &["kind"]).unwrap().as_str(), Some("Pod"));
        let deny = &r.items[3].raw;
        assert_eq!(
            get_path(deny, &["metadata", "namespace"]).unwrap().as_str(),
            Some("default")
        );
    }

    #[test]
    fn placed_pods_and_relabelled_objects_read_back() {
        let r = read("in.yaml", INPUT).unwrap();
        let web = &r.items[1];
        let ips: Vec<IpAddr> = vec!["10.244.0.7".parse().unwrap(), "fd00::7".parse().unwrap()];
        let placed = placed_pod(&web.raw, "node-2", &ips);
        let text = render(&placed).unwrap();
        let back = read("pod.acme.web.yaml", &text).unwrap();
        let Object::Pod(p) = &back.items[0].object else {
            panic!("not a pod")
        };
        assert_eq!(p.node.as_deref(), Some("node-2"));
        assert_eq!(p.ips, ips);
        assert_eq!(p.ports.len(), 1);

        let mut other = web.raw.clone();
        set_path(
            &mut other,
            &["metadata", "labels"],
            serde_yaml::from_str("{app: api, tier: back}").unwrap(),
        );
        let relabelled = with_labels_of(&placed, &other);
        let back = read("x.yaml", &render(&relabelled).unwrap()).unwrap();
        let Object::Pod(p) = &back.items[0].object else {
            panic!("not a pod")
        };
        assert_eq!(p.labels.get("tier").map(String::as_str), Some("back"));
        assert_eq!(p.node.as_deref(), Some("node-2"));
    }

    #[test]
    fn invalid_files_are_refused_with_every_problem() {
        let bad = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b, namespace: x}\nspec:\n  podSelector: {matchExpressions: [{key: a, operator: Equals}]}\n";
        let e = read("bad.yaml", bad).unwrap_err().to_string();
        assert!(e.contains("bad.yaml") && e.contains("Equals"), "{e}");
    }
}
