//! Pod interfaces and their addresses, learned with rtnetlink.
//!
//! Pod networking is routed (as in Calico): each pod has a veth whose host
//! side lives in the node's namespace, and the node has a host route to the
//! pod's address through it (`10.0.1.5/32 dev bhv3 scope link`,
//! `fd00::5/128 dev bhv3`). So a *pod link* is a link of kind `veth`
//! (`IFLA_LINKINFO`) that is the output interface (`RTA_OIF`) of at least one
//! unicast route of the main table whose destination is a full-length prefix
//! and which has no gateway. Its addresses are those destinations.
//!
//! ```text
//!  RTM_NEWLINK ──veth_link──▶ index → name ─┐
//!                                            ├─▶ pod_links ─▶ [PodLink { ifname, addrs }]
//!  RTM_NEWROUTE ─host_route─▶ (oif, addr) ──┘    (sorted by name, addrs sorted, deduplicated)
//! ```
//!
//! [`dump`] reads the kernel's state once; [`watch`] subscribes to link and
//! route notifications, then dumps, and dumps again after each burst of
//! notifications (the kernel does not notify every consequence of a change:
//! deleting a veth silently removes its IPv4 routes, so events are triggers
//! for a re-dump, never applied as deltas).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::{Handle, MulticastGroup, RouteMessageBuilder};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A pod's interface on the node and the addresses routed to it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PodLink {
    pub ifname: String,
    /// Destinations of the host routes through `ifname`; sorted, no
    /// duplicates, never empty.
    pub addrs: Vec<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum LinksError {
    /// A netlink socket could not be opened or subscribed.
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The kernel refused a dump, or the connection went away during it.
    #[error("netlink dump of {what}: {source}")]
    Dump {
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    /// The private thread or runtime of [`dump_blocking`] could not be
    /// started.
    #[error("tokio runtime: {0}")]
    Runtime(#[source] io::Error),
}

/// The multicast groups [`watch`] listens to: everything that can change the
/// set of veths or the host routes through them.
const GROUPS: [MulticastGroup; 3] = [
    MulticastGroup::Link,
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv6Route,
];

/// Back-off between attempts to recover a broken watch.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The pod links of the namespace `handle` talks to, sorted by name; only
/// links whose name starts with `prefix`, if given.
pub async fn dump(handle: &Handle, prefix: Option<&str>) -> Result<Vec<PodLink>, LinksError> {
    let links = collect("links", handle.link().get().execute()).await?;
    let v4 = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build());
    let v4 = collect("IPv4 routes", v4.execute()).await?;
    let v6 = handle
        .route()
        .get(RouteMessageBuilder::<Ipv6Addr>::new().build());
    let v6 = collect("IPv6 routes", v6.execute()).await?;
    Ok(pod_links(
        links.iter().filter_map(|l| veth_link(l, prefix)),
        v4.iter().chain(&v6).filter_map(host_route),
    ))
}

/// Collects one dump, naming it in the error.
async fn collect<T>(
    what: &'static str,
    dump: impl Stream<Item = Result<T, rtnetlink::Error>>,
) -> Result<Vec<T>, LinksError> {
    dump.try_collect()
        .await
        .map_err(|source| LinksError::Dump { what, source })
}

/// One dump of the pod links, from a fresh connection on a private
/// current-thread runtime, in the network namespace of the calling thread.
/// For synchronous callers (CLI, tests on a thread that did `setns`); from
/// async code use [`dump`]. Blocks; callable from anywhere, including inside
/// a runtime, as it runs on a thread of its own (a new thread starts in its
/// creator's network namespace).
pub fn dump_blocking(prefix: Option<&str>) -> Result<Vec<PodLink>, LinksError> {
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("links-dump".into())
            .spawn_scoped(scope, || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(LinksError::Runtime)?;
                rt.block_on(async {
                    let (conn, handle, _) =
                        rtnetlink::new_connection().map_err(LinksError::Socket)?;
                    let _conn = AbortOnDrop(tokio::spawn(conn));
                    dump(&handle, prefix).await
                })
            })
            .map_err(LinksError::Runtime)?;
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Publishes the pod links on `tx` and keeps them current until `tx` has no
/// receivers left.
///
/// Subscribes to link and IPv4/IPv6 route notifications first, then dumps,
/// so nothing that happens after the dump is missed. Each notification that
/// may matter triggers a fresh dump; a burst is coalesced (what is already
/// queued is drained before dumping). A lost notification (socket buffer
/// overrun) also triggers a dump, and a dead subscription is replaced, then
/// followed by a dump. Values are published with `send_if_modified`, so
/// receivers wake only when the list changes; compare against the channel's
/// initial value, which is not overwritten when the first dump equals it.
///
/// Returns an error if the first subscription or the first dump fails (no
/// permission, no netlink). Later failures keep the last published value and
/// are retried with back-off, the connections opened anew.
///
/// Runs in the network namespace of the runtime's threads; to watch another
/// namespace, run it on a runtime whose only thread has done `setns`.
pub async fn watch(
    prefix: Option<String>,
    tx: watch::Sender<Vec<PodLink>>,
) -> Result<(), LinksError> {
    let prefix = prefix.as_deref();
    let mut session = Session::open()?;
    publish(&tx, dump(&session.handle, prefix).await?);
    let mut retry = RETRY_MIN;
    loop {
        let outcome = tokio::select! {
            () = tx.closed() => return Ok(()),
            outcome = session.next_change() => outcome,
        };
        let result = match outcome {
            Change::Changed => dump(&session.handle, prefix).await,
            Change::Lost => {
                // The subscription is gone: wait a little (it may keep
                // failing), subscribe again, then catch up with a dump.
                tokio::select! {
                    () = tx.closed() => return Ok(()),
                    () = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
                match Session::open() {
                    Ok(s) => {
                        session = s;
                        dump(&session.handle, prefix).await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(links) => {
                publish(&tx, links);
                if outcome == Change::Changed {
                    retry = RETRY_MIN;
                }
            }
            // Keep the last good value; rebuild both connections.
            Err(error) => {
                tracing::warn!(%error, ?retry, "pod links: resync failed; retrying");
                session.lost = true;
            }
        }
    }
}

/// Replaces the published list if it differs; wakes receivers only then.
fn publish(tx: &watch::Sender<Vec<PodLink>>, links: Vec<PodLink>) {
    tx.send_if_modified(|current| {
        if *current == links {
            false
        } else {
            *current = links;
            true
        }
    });
}

/// What the subscription reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    /// Something relevant changed, or notifications were lost: dump again.
    Changed,
    /// The subscription (or the dump connection) is broken: reopen.
    Lost,
}

type Events = futures::channel::mpsc::UnboundedReceiver<(
    NetlinkMessage<RouteNetlinkMessage>,
    rtnetlink::sys::SocketAddr,
)>;

/// A subscribed socket and a separate one for dumps.
///
/// The dump requests do not share the subscribed socket: netlink-proto routes
/// a message to a pending request by (sequence number, sender port), and a
/// notification caused by another process's request carries that process's
/// sequence number, which could then be taken for the end of our dump.
struct Session {
    events: Events,
    handle: Handle,
    lost: bool,
    _tasks: [AbortOnDrop; 2],
}

impl Session {
    fn open() -> Result<Self, LinksError> {
        // Binds the socket to the groups' bit mask (RTNLGRP_x is bit x - 1),
        // which is what `new_connection()` followed by
        // `conn.socket_mut().socket_mut().bind(&SocketAddr::new(0, mask))`
        // does.
        let (events_conn, _, events) =
            rtnetlink::new_multicast_connection(&GROUPS).map_err(LinksError::Socket)?;
        let (dump_conn, handle, _) = rtnetlink::new_connection().map_err(LinksError::Socket)?;
        Ok(Self {
            events,
            handle,
            lost: false,
            _tasks: [
                AbortOnDrop(tokio::spawn(events_conn)),
                AbortOnDrop(tokio::spawn(dump_conn)),
            ],
        })
    }

    /// Waits for a relevant notification, then drains the ones already
    /// queued, so a burst costs one dump.
    async fn next_change(&mut self) -> Change {
        if self.lost {
            return Change::Lost;
        }
        loop {
            match self.events.next().await {
                None => {
                    tracing::warn!("pod links: netlink subscription closed; resubscribing");
                    return self.set_lost();
                }
                Some((msg, _)) if relevant(&msg) => break,
                Some(_) => {}
            }
        }
        // Let the connection task move what the socket already holds into
        // the channel, then take all of it.
        tokio::task::yield_now().await;
        while let Some(next) = self.events.next().now_or_never() {
            if next.is_none() {
                return self.set_lost();
            }
        }
        Change::Changed
    }

    fn set_lost(&mut self) -> Change {
        self.lost = true;
        Change::Lost
    }
}

/// Whether a notification may change the pod links. Overruns and anything
/// unexpected count: they call for a resync.
fn relevant(msg: &NetlinkMessage<RouteNetlinkMessage>) -> bool {
    match &msg.payload {
        NetlinkPayload::InnerMessage(inner) => match inner {
            RouteNetlinkMessage::NewLink(link) | RouteNetlinkMessage::DelLink(link) => {
                // A link of another kind never is a pod link; its events
                // (counters, carrier) need no dump. Unknown kind: dump.
                link_kind(link).is_none_or(|kind| *kind == InfoKind::Veth)
            }
            RouteNetlinkMessage::NewRoute(route) | RouteNetlinkMessage::DelRoute(route) => {
                host_route(route).is_some()
            }
            _ => true,
        },
        NetlinkPayload::Noop | NetlinkPayload::Done(_) => false,
        _ => true,
    }
}

/// `(index, name)` of a veth whose name starts with `prefix`.
fn veth_link(link: &LinkMessage, prefix: Option<&str>) -> Option<(u32, String)> {
    if link_kind(link) != Some(&InfoKind::Veth) {
        return None;
    }
    let name = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name),
        _ => None,
    })?;
    if !prefix.is_none_or(|p| name.starts_with(p)) {
        return None;
    }
    Some((link.header.index, name.clone()))
}

fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => Some(infos),
            _ => None,
        })
        .flatten()
        .find_map(|info| match info {
            LinkInfo::Kind(kind) => Some(kind),
            _ => None,
        })
}

/// `(output interface, destination)` of a host route: a unicast route of the
/// main table to a full-length prefix, through an interface, with no gateway.
fn host_route(route: &RouteMessage) -> Option<(u32, IpAddr)> {
    if route.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(route.header.table);
    let mut oif = None;
    let mut dst = None;
    for attr in &route.attributes {
        match attr {
            // The header's field is 8 bits; RTA_TABLE has the real id.
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
            RouteAttribute::Gateway(_) | RouteAttribute::Via(_) | RouteAttribute::MultiPath(_) => {
                return None;
            }
            _ => {}
        }
    }
    let dst = dst?;
    let full = match dst {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    (table == u32::from(RouteHeader::RT_TABLE_MAIN)
        && route.header.destination_prefix_length == full)
        .then_some((oif?, dst))
}

/// Joins veths and host routes: the veths with at least one host route,
/// sorted by name, each with its destinations sorted and deduplicated.
fn pod_links(
    veths: impl IntoIterator<Item = (u32, String)>,
    routes: impl IntoIterator<Item = (u32, IpAddr)>,
) -> Vec<PodLink> {
    let names: HashMap<u32, String> = veths.into_iter().collect();
    let mut by_name: BTreeMap<&str, BTreeSet<IpAddr>> = BTreeMap::new();
    for (oif, addr) in routes {
        if let Some(name) = names.get(&oif) {
            by_name.entry(name).or_default().insert(addr);
        }
    }
    by_name
        .into_iter()
        .map(|(name, addrs)| PodLink {
            ifname: name.to_owned(),
            addrs: addrs.into_iter().collect(),
        })
        .collect()
}

/// Aborts a spawned connection task when its owner goes away.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::AddressFamily;
    use netlink_packet_route::route::RouteVia;

    fn mk_link(index: u32, name: &str, kind: Option<InfoKind>) -> LinkMessage {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.attributes.push(LinkAttribute::IfName(name.into()));
        if let Some(kind) = kind {
            link.attributes
                .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(kind)]));
        }
        link
    }

    fn mk_route(dst: IpAddr, len: u8, oif: u32) -> RouteMessage {
        let mut route = RouteMessage::default();
        route.header.address_family = match dst {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        route.header.destination_prefix_length = len;
        route.header.table = RouteHeader::RT_TABLE_MAIN;
        route.header.kind = RouteType::Unicast;
        route
            .attributes
            .push(RouteAttribute::Table(RouteHeader::RT_TABLE_MAIN.into()));
        route
            .attributes
            .push(RouteAttribute::Destination(dst.into()));
        route.attributes.push(RouteAttribute::Oif(oif));
        route
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn veth_link_needs_kind_veth_and_prefix() {
        let veth = mk_link(3, "cali1", Some(InfoKind::Veth));
        assert_eq!(veth_link(&veth, None), Some((3, "cali1".into())));
        assert_eq!(veth_link(&veth, Some("cali")), Some((3, "cali1".into())));
        assert_eq!(veth_link(&veth, Some("bh")), None);
        assert_eq!(
            veth_link(&mk_link(4, "d0", Some(InfoKind::Dummy)), None),
            None
        );
        assert_eq!(veth_link(&mk_link(1, "lo", None), None), None);
    }

    #[test]
    fn host_route_is_full_length_main_table_without_gateway() {
        assert_eq!(
            host_route(&mk_route(ip("10.0.1.5"), 32, 3)),
            Some((3, ip("10.0.1.5")))
        );
        assert_eq!(
            host_route(&mk_route(ip("fd00::5"), 128, 3)),
            Some((3, ip("fd00::5")))
        );
        assert_eq!(host_route(&mk_route(ip("10.0.1.0"), 24, 3)), None);
        assert_eq!(host_route(&mk_route(ip("fd00::"), 64, 3)), None);

        let mut gw = mk_route(ip("10.0.1.6"), 32, 3);
        gw.attributes
            .push(RouteAttribute::Gateway(ip("10.0.0.1").into()));
        assert_eq!(host_route(&gw), None);

        let mut via = mk_route(ip("10.0.1.6"), 32, 3);
        via.attributes.push(RouteAttribute::Via(RouteVia::Inet6(
            "fe80::1".parse().expect("v6"),
        )));
        assert_eq!(host_route(&via), None);

        let mut other_table = mk_route(ip("10.0.1.7"), 32, 3);
        other_table.header.table = 100;
        other_table
            .attributes
            .retain(|a| !matches!(a, RouteAttribute::Table(_)));
        other_table.attributes.push(RouteAttribute::Table(100));
        assert_eq!(host_route(&other_table), None);

        // A table id above 255: the header says RT_TABLE_COMPAT (252).
        let mut big_table = mk_route(ip("10.0.1.8"), 32, 3);
        big_table.header.table = 252;
        big_table
            .attributes
            .retain(|a| !matches!(a, RouteAttribute::Table(_)));
        big_table.attributes.push(RouteAttribute::Table(1000));
        assert_eq!(host_route(&big_table), None);

        let mut local = mk_route(ip("10.0.1.9"), 32, 3);
        local.header.kind = RouteType::Local;
        assert_eq!(host_route(&local), None);

        let mut no_oif = mk_route(ip("10.0.1.10"), 32, 3);
        no_oif
            .attributes
            .retain(|a| !matches!(a, RouteAttribute::Oif(_)));
        assert_eq!(host_route(&no_oif), None);
    }

    #[test]
    fn pod_links_join_sort_and_dedup() {
        let links = pod_links(
            [
                (5, "bhv5".to_string()),
                (3, "bhv3".to_string()),
                (9, "bhv9".to_string()),
            ],
            [
                (5, ip("fd00::5")),
                (5, ip("10.0.1.5")),
                (3, ip("10.0.1.3")),
                (5, ip("10.0.1.5")),
                (7, ip("10.0.1.7")), // not a veth
            ],
        );
        assert_eq!(
            links,
            vec![
                PodLink {
                    ifname: "bhv3".into(),
                    addrs: vec![ip("10.0.1.3")],
                },
                PodLink {
                    ifname: "bhv5".into(),
                    addrs: vec![ip("10.0.1.5"), ip("fd00::5")],
                },
            ]
        );
    }

    #[test]
    fn relevance_of_notifications() {
        let msg = |m| NetlinkMessage::from(m);
        assert!(relevant(&msg(RouteNetlinkMessage::DelLink(mk_link(
            3,
            "bhv3",
            Some(InfoKind::Veth)
        )))));
        assert!(relevant(&msg(RouteNetlinkMessage::NewLink(mk_link(
            3, "x", None
        )))));
        assert!(!relevant(&msg(RouteNetlinkMessage::NewLink(mk_link(
            4,
            "d0",
            Some(InfoKind::Dummy)
        )))));
        assert!(relevant(&msg(RouteNetlinkMessage::NewRoute(mk_route(
            ip("10.0.1.5"),
            32,
            3
        )))));
        assert!(!relevant(&msg(RouteNetlinkMessage::DelRoute(mk_route(
            ip("10.0.1.0"),
            24,
            3
        )))));
        let overrun: NetlinkMessage<RouteNetlinkMessage> =
            NetlinkMessage::new(Default::default(), NetlinkPayload::Overrun(Vec::new()));
        assert!(relevant(&overrun));
    }

    #[test]
    fn publish_wakes_only_on_change() {
        let (tx, mut rx) = watch::channel(Vec::new());
        rx.borrow_and_update();
        publish(&tx, Vec::new());
        assert!(!rx.has_changed().expect("sender alive"));
        let one = vec![PodLink {
            ifname: "bhv3".into(),
            addrs: vec![ip("10.0.1.3")],
        }];
        publish(&tx, one.clone());
        assert!(rx.has_changed().expect("sender alive"));
        assert_eq!(*rx.borrow_and_update(), one);
        publish(&tx, one);
        assert!(!rx.has_changed().expect("sender alive"));
    }

    #[test]
    fn futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let (tx, _rx) = watch::channel(Vec::new());
        assert_send(&watch(None, tx));
    }

    #[test]
    fn dump_blocking_works_inside_a_runtime() {
        // Dumping needs no privilege; this reads the namespace of the test.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let links = rt.block_on(async { dump_blocking(None) }).expect("dump");
        assert!(links.windows(2).all(|w| w[0].ifname < w[1].ifname));
        assert!(links.iter().all(|l| !l.addrs.is_empty()));
    }
}
