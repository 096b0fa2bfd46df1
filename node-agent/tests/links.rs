//! `links` against the kernel: each test builds its own network namespace
//! (`bhl<pid><tag>`, deleted on drop, even when the test fails) and runs the
//! code under test on a dedicated thread that has entered it with `setns`.
//! Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and `ip` (iproute2).

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::net::IpAddr;
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use bulkhead_agent::links::{self, LinksError, PodLink};
use nix::sched::{CloneFlags, setns};
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(5);

/// A named network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("bhl{}{tag}", std::process::id());
        // A namespace left behind by an earlier process with the same id.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["netns", "add", &name]);
        let ns = Self { name };
        // Creates the local table, without which `via … onlink` is refused.
        ns.ip("link set lo up");
        ns
    }

    /// Runs `ip -n <ns> <args>`; panics with ip's stderr on failure.
    fn ip(&self, args: &str) {
        let mut argv = vec!["-n", &self.name];
        argv.extend(args.split_whitespace());
        run(&argv);
    }

    /// A veth `host` (peer `peer`), both ends up.
    fn veth(&self, host: &str, peer: &str) {
        self.ip(&format!("link add {host} type veth peer name {peer}"));
        self.ip(&format!("link set {host} up"));
        self.ip(&format!("link set {peer} up"));
    }

    /// An up link of a kind other than veth: a dummy, or a bridge where the
    /// kernel has no dummy driver.
    fn non_veth(&self, name: &str) {
        let out = Command::new("ip")
            .args(["-n", &self.name, "link", "add", name, "type", "dummy"])
            .output()
            .unwrap();
        if !out.status.success() {
            self.ip(&format!("link add {name} type bridge"));
        }
        self.ip(&format!("link set {name} up"));
    }

    /// Runs `f` on a new thread inside the namespace.
    fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let file = File::open(format!("/var/run/netns/{}", self.name)).unwrap();
        thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).unwrap();
            drop(file);
            f()
        })
    }

    fn dump(&self, prefix: Option<&'static str>) -> Vec<PodLink> {
        self.spawn(move || links::dump_blocking(prefix))
            .join()
            .unwrap()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Waits until `rx` holds `want`, at most `DEADLINE`.
fn wait_for(rx: &mut watch::Receiver<Vec<PodLink>>, want: Vec<PodLink>) {
    let reached = runtime().block_on(async {
        tokio::time::timeout(DEADLINE, rx.wait_for(|links| *links == want))
            .await
            .map(|r| r.unwrap().clone())
    });
    assert!(
        reached.is_ok(),
        "no {want:?} within {DEADLINE:?}, last {:?}",
        *rx.borrow()
    );
}

fn mk_link(ifname: &str, addrs: &[&str]) -> PodLink {
    PodLink {
        ifname: ifname.into(),
        addrs: addrs.iter().map(|a| a.parse::<IpAddr>().unwrap()).collect(),
    }
}

#[test]
fn dump_lists_veths_with_host_routes() {
    let ns = Netns::new("d");
    // A pod: a /32 and a /128, the /32 twice (another metric), and a /32 in
    // another table (not counted).
    ns.veth("bhv1", "bhp1");
    ns.ip("route add 10.0.1.1/32 dev bhv1");
    ns.ip("route add 10.0.1.1/32 dev bhv1 metric 10");
    ns.ip("route add fd00::1/128 dev bhv1");
    ns.ip("route add 10.0.1.9/32 dev bhv1 table 100");
    // A veth with a subnet route only: not a pod link.
    ns.veth("bhv2", "bhp2");
    ns.ip("route add 10.0.2.0/24 dev bhv2");
    // A dummy (or bridge) with a host route: not a veth.
    ns.non_veth("d0");
    ns.ip("route add 10.0.3.1/32 dev d0");
    // Routes with a gateway don't count: bhv4 keeps only its direct route,
    // bhv5 has none.
    ns.veth("bhv4", "bhp4");
    ns.ip("route add 10.0.4.1/32 via 10.9.9.9 dev bhv4 onlink");
    ns.ip("route add 10.0.4.2/32 dev bhv4");
    ns.ip("route add fd00::4/128 via fe80::1 dev bhv4");
    ns.veth("bhv5", "bhp5");
    ns.ip("route add 10.0.5.1/32 via 10.9.9.9 dev bhv5 onlink");
    ns.ip("route add fd00::5/128 via fe80::1 dev bhv5");
    // Another CNI's naming, for the prefix filter.
    ns.veth("cali7", "calp7");
    ns.ip("route add 10.0.7.1/32 dev cali7");

    let bhv1 = mk_link("bhv1", &["10.0.1.1", "fd00::1"]);
    let bhv4 = mk_link("bhv4", &["10.0.4.2"]);
    let cali7 = mk_link("cali7", &["10.0.7.1"]);
    assert_eq!(
        ns.dump(None),
        vec![bhv1.clone(), bhv4.clone(), cali7.clone()]
    );
    assert_eq!(ns.dump(Some("bhv")), vec![bhv1, bhv4]);
    assert_eq!(ns.dump(Some("cali")), vec![cali7]);
    assert_eq!(ns.dump(Some("eth")), vec![]);
}

#[test]
fn dump_of_an_empty_namespace_is_empty() {
    let ns = Netns::new("e");
    assert_eq!(ns.dump(None), vec![]);
}

#[test]
fn watch_follows_routes_and_links() {
    let ns = Netns::new("w");
    ns.veth("bhv1", "bhp1");
    ns.ip("route add 10.0.1.1/32 dev bhv1");

    let (tx, mut rx) = watch::channel(Vec::new());
    let (done_tx, done_rx) = mpsc::channel();
    let _watcher = ns.spawn(move || {
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(LinksError::Runtime)
            .and_then(|rt| rt.block_on(links::watch(Some("bhv".into()), tx)));
        let _ = done_tx.send(result);
    });

    // The first dump.
    let bhv1 = mk_link("bhv1", &["10.0.1.1"]);
    wait_for(&mut rx, vec![bhv1.clone()]);

    // Every value published from here on, as seen by a receiver that is
    // always waiting, until the last state.
    let bhv2_v4 = mk_link("bhv2", &["10.0.2.1"]);
    let bhv2 = mk_link("bhv2", &["10.0.2.1", "fd00::2"]);
    let last = vec![mk_link("bhv2", &["10.0.2.1"])];
    let observer = {
        let mut rx = rx.clone();
        let last = last.clone();
        thread::spawn(move || {
            runtime().block_on(async {
                let mut seen = Vec::new();
                while let Ok(Ok(())) = tokio::time::timeout(DEADLINE, rx.changed()).await {
                    let links = rx.borrow_and_update().clone();
                    seen.push(links.clone());
                    if links == last {
                        break;
                    }
                }
                seen
            })
        })
    };

    // A new pod: its veth, then its routes; cali9 is filtered out.
    ns.veth("bhv2", "bhp2");
    ns.ip("route add 10.0.2.1/32 dev bhv2");
    ns.ip("route add fd00::2/128 dev bhv2");
    ns.veth("cali9", "calp9");
    ns.ip("route add 10.0.9.1/32 dev cali9");
    // Changes that leave the list as it is.
    ns.non_veth("d0");
    ns.ip("route add 10.0.3.1/32 dev d0");
    ns.ip("route add 10.0.2.0/24 dev bhv2");
    // A pod gone: deleting the veth removes its IPv4 route without a route
    // notification.
    ns.ip("link del bhv1");
    wait_for(&mut rx, vec![bhv2.clone()]);
    // A route removed.
    ns.ip("route del fd00::2/128 dev bhv2");

    let seen = observer.join().unwrap();
    assert_eq!(seen.last(), Some(&last), "seen: {seen:?}");
    // Only states the namespace went through (bursts may be coalesced), and
    // each one published once: equal values wake nobody.
    let states = [
        vec![bhv1.clone(), bhv2_v4.clone()],
        vec![bhv1.clone(), bhv2.clone()],
        vec![bhv2.clone()],
        last,
    ];
    let mut previous = vec![bhv1];
    for links in &seen {
        assert!(states.contains(links), "unexpected {links:?} in {seen:?}");
        assert_ne!(*links, previous, "published twice, in {seen:?}");
        previous = links.clone();
    }

    // The last receiver gone, watch returns.
    drop(rx);
    let result = done_rx
        .recv_timeout(DEADLINE)
        .expect("watch returns once the receivers are gone");
    assert!(result.is_ok(), "{result:?}");
}
