//! The standalone directory source, against real directories and inotify.
//! Every wait has a deadline; sleeping only ever proves that nothing happens.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bulkhead::source::{
    DirOptions, DirSource, FileStatus, SnapshotRx, SourceError, SourceSnapshot,
};
use bulkhead_core::Object;
use tempfile::TempDir;
use tokio::time::{Instant, timeout, timeout_at};

const DEADLINE: Duration = Duration::from_secs(5);
/// How long "nothing happens" is watched for: many debounce periods.
const QUIET: Duration = Duration::from_millis(300);

fn opts() -> DirOptions {
    DirOptions {
        debounce: Duration::from_millis(20),
        // Long enough that only events drive these tests.
        resync: Duration::from_secs(600),
        rewatch: Duration::from_millis(50),
        ..DirOptions::default()
    }
}

fn mk_pod(name: &str, app: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  namespace: shop
  name: {name}
  labels:
    app: {app}
spec:
  nodeName: n1
"
    )
}

fn mk_policy(name: &str, operator: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  namespace: shop
  name: {name}
spec:
  podSelector:
    matchExpressions:
    - key: app
      operator: {operator}
      values: [web]
  ingress:
  - from:
    - podSelector: {{}}
"
    )
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// Writes a temporary file next to the target and renames it into place,
/// as editors, `kubectl … > tmp && mv` and config management tools do.
fn write_atomic(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn start(dir: &Path) -> SnapshotRx {
    let (rx, _task) = DirSource::spawn(dir.to_path_buf(), opts()).unwrap();
    rx
}

/// `Kind namespace/name` of every object in force.
fn ids(s: &SourceSnapshot) -> BTreeSet<String> {
    s.loaded
        .objects
        .iter()
        .map(|l| l.object.id().to_string())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn app_label(s: &SourceSnapshot, pod: &str) -> Option<String> {
    s.loaded.objects.iter().find_map(|l| match &l.object {
        Object::Pod(p) if p.name == pod => p.labels.get("app").cloned(),
        _ => None,
    })
}

fn file_names(s: &SourceSnapshot) -> BTreeSet<String> {
    s.files.keys().cloned().collect()
}

/// The diagnostics that name `file` (in their origin or their message).
fn naming<'a>(s: &'a SourceSnapshot, file: &str) -> Vec<&'a bulkhead_core::Diagnostic> {
    s.diagnostics
        .iter()
        .filter(|d| {
            d.origin.as_ref().is_some_and(|o| o.file.ends_with(file)) || d.message.contains(file)
        })
        .collect()
}

/// Waits, with a deadline, for a snapshot that satisfies `pred`.
async fn wait_for(
    rx: &mut SnapshotRx,
    what: &str,
    pred: impl Fn(&SourceSnapshot) -> bool,
) -> Arc<SourceSnapshot> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let s = rx.borrow_and_update().clone();
        if pred(&s) {
            return s;
        }
        match timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("the source stopped while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}; last snapshot: {s:#?}"),
        }
    }
}

/// Proves that nothing is published for a while.
async fn assert_quiet(rx: &mut SnapshotRx) {
    let before = rx.borrow_and_update().revision;
    let r = timeout(QUIET, rx.changed()).await;
    assert!(
        r.is_err(),
        "expected no publication after revision {before}, got {:#?}",
        rx.borrow()
    );
}

#[tokio::test]
async fn initial_load_is_there_at_once() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "a.yaml", &mk_pod("a", "web"));
    write(
        dir.path(),
        "b.yml",
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\n{}",
            mk_pod("b", "db")
        ),
    );
    let rx = start(dir.path());
    let s = rx.borrow().clone();
    assert_eq!(s.revision, 1);
    assert_eq!(
        ids(&s),
        set(&["Namespace shop", "Pod shop/a", "Pod shop/b"])
    );
    assert_eq!(file_names(&s), set(&["a.yaml", "b.yml"]));
    assert!(s.diagnostics.is_empty(), "{:#?}", s.diagnostics);
    assert!(s.files.values().all(|f| f.status == FileStatus::Current));
    // Origins name the file as the CLI does: the directory joined with it.
    let a = s
        .loaded
        .objects
        .iter()
        .find(|l| l.object.id().to_string() == "Pod shop/a")
        .unwrap();
    assert_eq!(
        a.origin.file,
        dir.path().join("a.yaml").display().to_string()
    );
}

#[tokio::test]
async fn a_new_file_brings_its_objects() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "a.yaml", &mk_pod("a", "web"));
    let mut rx = start(dir.path());
    write(dir.path(), "b.yaml", &mk_pod("b", "db"));
    let s = wait_for(&mut rx, "pod b", |s| ids(s).contains("Pod shop/b")).await;
    assert!(s.revision >= 2);
    assert_eq!(ids(&s), set(&["Pod shop/a", "Pod shop/b"]));
    assert_eq!(s.files["b.yaml"].objects, 1);
}

#[tokio::test]
async fn a_changed_label_is_published() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "a.yaml", &mk_pod("a", "web"));
    let mut rx = start(dir.path());
    assert_eq!(app_label(&rx.borrow(), "a").as_deref(), Some("web"));
    write(dir.path(), "a.yaml", &mk_pod("a", "api"));
    let s = wait_for(&mut rx, "label api", |s| {
        app_label(s, "a").as_deref() == Some("api")
    })
    .await;
    assert_eq!(ids(&s), set(&["Pod shop/a"]));
}

#[tokio::test]
async fn atomic_rename_writes_are_seen() {
    let dir = TempDir::new().unwrap();
    let elsewhere = TempDir::new().unwrap();
    write(dir.path(), "a.yaml", &mk_pod("a", "web"));
    let mut rx = start(dir.path());

    write_atomic(dir.path(), "a.yaml", &mk_pod("a", "api"));
    let s = wait_for(&mut rx, "label api", |s| {
        app_label(s, "a").as_deref() == Some("api")
    })
    .await;
    assert_eq!(
        file_names(&s),
        set(&["a.yaml"]),
        "the temporary file is not input"
    );

    // Moved in from another directory: only a MOVED_TO event.
    write(elsewhere.path(), "b.yaml", &mk_pod("b", "db"));
    std::fs::rename(elsewhere.path().join("b.yaml"), dir.path().join("b.yaml")).unwrap();
    wait_for(&mut rx, "pod b moved in", |s| ids(s).contains("Pod shop/b")).await;

    // Moved out: only a MOVED_FROM event.
    std::fs::rename(dir.path().join("b.yaml"), elsewhere.path().join("b.yaml")).unwrap();
    let s = wait_for(&mut rx, "pod b moved out", |s| {
        !ids(s).contains("Pod shop/b")
    })
    .await;
    assert_eq!(file_names(&s), set(&["a.yaml"]));

    // Renamed within the directory: from one input name to another.
    std::fs::rename(dir.path().join("a.yaml"), dir.path().join("c.yml")).unwrap();
    let s = wait_for(&mut rx, "a.yaml renamed", |s| {
        file_names(s) == set(&["c.yml"])
    })
    .await;
    assert_eq!(ids(&s), set(&["Pod shop/a"]));
}

#[tokio::test]
async fn a_file_being_written_is_read_once_closed() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "a.yaml", &mk_pod("a", "web"));
    let mut rx = start(dir.path());
    let text = mk_pod("a", "api");
    let (head, tail) = text.split_at(text.len() / 2);
    {
        let mut f = std::fs::File::create(dir.path().join("a.yaml")).unwrap();
        f.write_all(head.as_bytes()).unwrap();
        // A slow writer: half a file for many debounce periods.
        assert_quiet(&mut rx).await;
        f.write_all(tail.as_bytes()).unwrap();
    }
    let s = wait_for(&mut rx, "label api", |s| {
        app_label(s, "a").as_deref() == Some("api")
    })
    .await;
    assert_eq!(s.revision, 2, "one publication, of the whole file");
    assert!(!s.has_errors(), "{:#?}", s.diagnostics);
}

#[tokio::test]
async fn a_file_left_open_is_read_after_the_write_timeout() {
    let dir = TempDir::new().unwrap();
    let options = DirOptions {
        write_timeout: Duration::from_millis(100),
        ..opts()
    };
    let (mut rx, _task) = DirSource::spawn(dir.path().to_path_buf(), options).unwrap();
    let mut f = std::fs::File::create(dir.path().join("a.yaml")).unwrap();
    f.write_all(mk_pod("a", "web").as_bytes()).unwrap();
    let s = wait_for(&mut rx, "the open file read", |s| {
        ids(s).contains("Pod shop/a")
    })
    .await;
    assert_eq!(s.files["a.yaml"].status, FileStatus::Current);
    drop(f);
}

#[tokio::test]
async fn a_deleted_file_takes_its_objects() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "a.yaml", &mk_pod("a", "web"));
    write(dir.path(), "b.yaml", &mk_pod("b", "db"));
    let mut rx = start(dir.path());
    std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
    let s = wait_for(&mut rx, "pod b gone", |s| !ids(s).contains("Pod shop/b")).await;
    assert_eq!(ids(&s), set(&["Pod shop/a"]));
    assert_eq!(file_names(&s), set(&["a.yaml"]));
}

#[tokio::test]
async fn invalid_yaml_keeps_the_last_good_objects_until_fixed() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "a.yaml", &mk_pod("a", "web"));
    write(dir.path(), "b.yaml", &mk_pod("b", "db"));
    let mut rx = start(dir.path());

    write(
        dir.path(),
        "a.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: [unclosed\n",
    );
    let s = wait_for(&mut rx, "a.yaml rejected", |s| s.has_errors()).await;
    assert_eq!(s.files["a.yaml"].status, FileStatus::Stale);
    assert_eq!(s.files["a.yaml"].objects, 1);
    assert_eq!(s.files["b.yaml"].status, FileStatus::Current);
    assert_eq!(
        ids(&s),
        set(&["Pod shop/a", "Pod shop/b"]),
        "last good objects stay"
    );
    assert_eq!(app_label(&s, "a").as_deref(), Some("web"));
    let named = naming(&s, "a.yaml");
    assert!(!named.is_empty(), "{:#?}", s.diagnostics);
    assert!(
        named
            .iter()
            .any(|d| d.is_error() && d.message.contains("YAML"))
    );
    assert!(naming(&s, "b.yaml").is_empty());

    write(dir.path(), "a.yaml", &mk_pod("a", "api"));
    let s = wait_for(&mut rx, "a.yaml fixed", |s| !s.has_errors()).await;
    assert!(s.diagnostics.is_empty(), "{:#?}", s.diagnostics);
    assert_eq!(s.files["a.yaml"].status, FileStatus::Current);
    assert_eq!(app_label(&s, "a").as_deref(), Some("api"));
}

#[tokio::test]
async fn an_invalid_operator_keeps_the_last_good_policy_until_fixed() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "pol.yaml", &mk_policy("web", "In"));
    let mut rx = start(dir.path());
    let good = rx.borrow().loaded.objects.clone();
    assert_eq!(ids(&rx.borrow()), set(&["NetworkPolicy shop/web"]));

    write(dir.path(), "pol.yaml", &mk_policy("web", "Like"));
    let s = wait_for(&mut rx, "pol.yaml rejected", |s| s.has_errors()).await;
    assert_eq!(s.files["pol.yaml"].status, FileStatus::Stale);
    assert_eq!(s.loaded.objects, good, "the previous policy stays in force");
    let named = naming(&s, "pol.yaml");
    assert_eq!(named.len(), 1, "{:#?}", s.diagnostics);
    let d = named[0];
    assert!(d.is_error());
    assert_eq!(d.object.as_deref(), Some("NetworkPolicy shop/web"));
    assert_eq!(
        d.field.as_deref(),
        Some("spec.podSelector.matchExpressions[0].operator")
    );
    assert!(d.message.contains("Like"), "{d}");

    write(dir.path(), "pol.yaml", &mk_policy("web", "NotIn"));
    let s = wait_for(&mut rx, "pol.yaml fixed", |s| !s.has_errors()).await;
    assert!(s.diagnostics.is_empty(), "{:#?}", s.diagnostics);
    assert_eq!(s.files["pol.yaml"].status, FileStatus::Current);
    assert_ne!(
        s.loaded.objects, good,
        "the fixed policy replaced the old one"
    );
}

#[tokio::test]
async fn a_bad_new_file_contributes_nothing() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "a.yaml", &mk_pod("a", "web"));
    let mut rx = start(dir.path());
    // A good pod and a bad policy in one file: the whole file is rejected.
    write(
        dir.path(),
        "bad.yaml",
        &format!("{}---\n{}", mk_pod("b", "db"), mk_policy("p", "Like")),
    );
    let s = wait_for(&mut rx, "bad.yaml rejected", |s| {
        s.files.contains_key("bad.yaml")
    })
    .await;
    assert_eq!(s.files["bad.yaml"].status, FileStatus::Rejected);
    assert_eq!(s.files["bad.yaml"].objects, 0);
    assert_eq!(s.files["bad.yaml"].errors, 1);
    assert_eq!(ids(&s), set(&["Pod shop/a"]));
    assert!(!naming(&s, "bad.yaml").is_empty());

    // Removing it clears its diagnostics.
    std::fs::remove_file(dir.path().join("bad.yaml")).unwrap();
    let s = wait_for(&mut rx, "bad.yaml removed", |s| s.diagnostics.is_empty()).await;
    assert_eq!(file_names(&s), set(&["a.yaml"]));
}

#[tokio::test]
async fn warnings_do_not_make_a_file_bad() {
    let dir = TempDir::new().unwrap();
    let mut rx = start(dir.path());
    write(
        dir.path(),
        "mixed.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n---\n{}",
            mk_pod("a", "web")
        ),
    );
    let s = wait_for(&mut rx, "mixed.yaml", |s| ids(s).contains("Pod shop/a")).await;
    assert_eq!(s.files["mixed.yaml"].status, FileStatus::Current);
    assert_eq!(s.files["mixed.yaml"].warnings, 1);
    assert!(!s.has_errors());
    assert_eq!(naming(&s, "mixed.yaml").len(), 1, "{:#?}", s.diagnostics);
}

#[tokio::test]
async fn an_object_in_two_files_is_an_error_not_a_crash() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "a.yaml", &mk_pod("x", "web"));
    let mut rx = start(dir.path());
    write(dir.path(), "b.yaml", &mk_pod("x", "db"));
    let s = wait_for(&mut rx, "the duplicate", |s| s.has_errors()).await;
    assert!(
        s.diagnostics
            .iter()
            .any(|d| d.is_error() && d.message.contains("defined twice")),
        "{:#?}",
        s.diagnostics
    );
    // Both files are fine on their own.
    assert!(s.files.values().all(|f| f.status == FileStatus::Current));

    std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
    let s = wait_for(&mut rx, "the duplicate gone", |s| !s.has_errors()).await;
    assert_eq!(app_label(&s, "x").as_deref(), Some("web"));
}

#[tokio::test]
async fn a_burst_of_writes_is_read_a_few_times() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "a.yaml", &mk_pod("a", "v0"));
    let mut rx = start(dir.path());
    let first = rx.borrow_and_update().revision;
    for i in 1..=50 {
        write(dir.path(), "a.yaml", &mk_pod("a", &format!("v{i}")));
    }
    let s = wait_for(&mut rx, "the last write", |s| {
        app_label(s, "a").as_deref() == Some("v50")
    })
    .await;
    let revisions = s.revision - first;
    assert!(revisions <= 10, "50 writes made {revisions} revisions");
    assert!(!s.has_errors(), "{:#?}", s.diagnostics);
    assert_quiet(&mut rx).await;
}

#[tokio::test]
async fn a_burst_of_new_files_is_read_a_few_times() {
    let dir = TempDir::new().unwrap();
    let mut rx = start(dir.path());
    let first = rx.borrow_and_update().revision;
    for i in 0..50 {
        write_atomic(
            dir.path(),
            &format!("p{i:02}.yaml"),
            &mk_pod(&format!("p{i}"), "web"),
        );
    }
    let s = wait_for(&mut rx, "50 pods", |s| s.loaded.objects.len() == 50).await;
    let revisions = s.revision - first;
    assert!(revisions <= 10, "50 new files made {revisions} revisions");
    assert_eq!(s.files.len(), 50);
    assert!(s.diagnostics.is_empty(), "{:#?}", s.diagnostics);
    assert_quiet(&mut rx).await;
}

#[tokio::test]
async fn an_equal_rewrite_wakes_nobody() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "a.yaml", &mk_pod("a", "web"));
    let mut rx = start(dir.path());
    write(dir.path(), "a.yaml", &mk_pod("a", "web"));
    write_atomic(dir.path(), "a.yaml", &mk_pod("a", "web"));
    // A change that loads to the same objects: a comment.
    write(
        dir.path(),
        "a.yaml",
        &format!("# owner: shop\n{}", mk_pod("a", "web")),
    );
    assert_quiet(&mut rx).await;
    assert_eq!(rx.borrow().revision, 1);
}

#[tokio::test]
async fn other_files_are_ignored() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "a.yaml", &mk_pod("a", "web"));
    let mut rx = start(dir.path());
    let pod = mk_pod("ignored", "x");
    for name in [
        "notes.txt",
        "a.json",
        ".hidden.yaml",
        ".#a.yaml",
        "#a.yaml#",
        "a.yaml~",
        ".a.yaml.swp",
        "a.yaml.tmp",
        ".yaml",
    ] {
        write(dir.path(), name, &pod);
    }
    std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
    write(&dir.path().join("sub.yaml"), "x.yaml", &pod);
    assert_quiet(&mut rx).await;
    assert_eq!(rx.borrow().revision, 1);

    // Events come in order: once this file is read, the others were seen.
    write(dir.path(), "z.yaml", &mk_pod("z", "web"));
    let s = wait_for(&mut rx, "z.yaml", |s| s.files.contains_key("z.yaml")).await;
    assert_eq!(ids(&s), set(&["Pod shop/a", "Pod shop/z"]));
    assert_eq!(file_names(&s), set(&["a.yaml", "z.yaml"]));

    // The same at start-up.
    drop(rx);
    let rx = start(dir.path());
    assert_eq!(file_names(&rx.borrow()), set(&["a.yaml", "z.yaml"]));
}

#[tokio::test]
async fn a_missing_directory_is_a_clear_error() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("nope");
    let err = DirSource::spawn(missing.clone(), opts()).unwrap_err();
    assert!(matches!(err, SourceError::Missing { .. }), "{err:?}");
    assert!(err.to_string().contains("nope"), "{err}");

    write(dir.path(), "a.yaml", "");
    let err = DirSource::spawn(dir.path().join("a.yaml"), opts()).unwrap_err();
    assert!(matches!(err, SourceError::NotADirectory { .. }), "{err:?}");
}

#[tokio::test]
async fn a_vanished_directory_keeps_the_last_state_and_is_watched_again() {
    let root = TempDir::new().unwrap();
    let dir = root.path().join("cluster");
    std::fs::create_dir(&dir).unwrap();
    write(&dir, "a.yaml", &mk_pod("a", "web"));
    let mut rx = start(&dir);

    // Moved away whole: the files are not deleted, the state stays.
    std::fs::rename(&dir, root.path().join("old")).unwrap();
    let s = wait_for(&mut rx, "the directory reported lost", |s| s.has_errors()).await;
    assert_eq!(ids(&s), set(&["Pod shop/a"]), "the last state stays");
    assert!(
        s.diagnostics.iter().any(|d| d.message.contains("cluster")),
        "{:#?}",
        s.diagnostics
    );

    // A new directory under the name is watched and read.
    let fresh = root.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    write(&fresh, "b.yaml", &mk_pod("b", "db"));
    std::fs::rename(&fresh, &dir).unwrap();
    let s = wait_for(&mut rx, "the new directory", |s| {
        !s.has_errors() && ids(s) == set(&["Pod shop/b"])
    })
    .await;
    assert_eq!(file_names(&s), set(&["b.yaml"]));

    // And its events are seen.
    write(&dir, "c.yaml", &mk_pod("c", "db"));
    wait_for(&mut rx, "pod c", |s| ids(s).contains("Pod shop/c")).await;
}

#[tokio::test]
async fn the_task_ends_with_its_last_receiver() {
    let dir = TempDir::new().unwrap();
    let (rx, task) = DirSource::spawn(dir.path().to_path_buf(), opts()).unwrap();
    drop(rx);
    timeout(DEADLINE, task).await.unwrap().unwrap();
}
