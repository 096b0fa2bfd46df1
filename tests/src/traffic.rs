//! The traffic tools of the netns lab: a server that answers on TCP and UDP
//! ports, and a prober that checks which targets answer. The
//! `bulkhead-lab serve` and `bulkhead-lab probe` subcommands are thin wrappers
//! around [`Server`] and [`probe_all`]; the topology in [`crate::netns`] runs
//! them inside the pods' network namespaces.
//!
//! The protocol is deliberately trivial:
//! - TCP: the server accepts, writes one line `<port>\n` and closes. A probe is
//!   ok when it connects and reads back exactly that line.
//! - UDP: the server echoes every datagram to its sender. A probe is ok when
//!   its own datagram comes back before the timeout; it sends several over
//!   the timeout window, so one lost datagram is not a failure.
//! - TCP echo ports (`serve --tcp-echo`): everything a connection sends comes
//!   back on it, until the client closes. [`hold`] keeps one such connection
//!   and checks every round trip; [`send_udp`] sends datagrams from any source
//!   address (one the namespace does not own, too: `IP_FREEBIND`,
//!   `IP_TRANSPARENT`).

use std::fmt;
use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A transport protocol the lab speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to probe: `tcp:10.0.0.1:80`, `udp:[fd00::1]:53`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub proto: Proto,
    pub addr: SocketAddr,
}

impl Target {
    pub fn new(proto: Proto, ip: impl Into<std::net::IpAddr>, port: u16) -> Self {
        Self {
            proto,
            addr: SocketAddr::new(ip.into(), port),
        }
    }

    pub fn tcp(ip: impl Into<std::net::IpAddr>, port: u16) -> Self {
        Self::new(Proto::Tcp, ip, port)
    }

    pub fn udp(ip: impl Into<std::net::IpAddr>, port: u16) -> Self {
        Self::new(Proto::Udp, ip, port)
    }
}

impl fmt::Display for Target {
    /// `tcp:10.0.0.1:80`, `tcp:[fd00::1]:80`: what [`FromStr`] parses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.proto, self.addr)
    }
}

impl FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (proto, addr) = s
            .split_once(':')
            .with_context(|| format!("{s:?}: expected tcp:ADDR:PORT or udp:ADDR:PORT"))?;
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            other => bail!("{s:?}: unknown protocol {other:?} (expected tcp or udp)"),
        };
        let addr: SocketAddr = addr.parse().with_context(|| {
            format!("{s:?}: {addr:?} is not ADDR:PORT (write IPv6 as [fd00::1]:80)")
        })?;
        if addr.port() == 0 {
            bail!("{s:?}: port 0");
        }
        Ok(Self { proto, addr })
    }
}

/// The outcome of probing one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub target: Target,
    pub ok: bool,
    /// What happened, for humans: `read "80"`, `connect: Connection refused
    /// (os error 111)`, `no echo within 1000ms`, ...
    pub detail: String,
}

impl ProbeResult {
    /// One line of `bulkhead-lab probe` output:
    /// `{"target":"tcp:10.0.0.1:80","ok":true,"detail":"..."}`.
    pub fn to_json(&self) -> String {
        // Written by hand to keep the keys in this order (a `json!` map
        // sorts them).
        format!(
            "{{\"target\":{},\"ok\":{},\"detail\":{}}}",
            json_string(&self.target.to_string()),
            self.ok,
            json_string(&self.detail)
        )
    }

    /// Parses what [`ProbeResult::to_json`] writes.
    pub fn from_json(line: &str) -> anyhow::Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("not JSON: {line:?}"))?;
        let target = v["target"]
            .as_str()
            .with_context(|| format!("no \"target\" string in {line:?}"))?
            .parse()?;
        let ok = v["ok"]
            .as_bool()
            .with_context(|| format!("no \"ok\" boolean in {line:?}"))?;
        let detail = v["detail"]
            .as_str()
            .with_context(|| format!("no \"detail\" string in {line:?}"))?
            .to_owned();
        Ok(Self { target, ok, detail })
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

impl fmt::Display for ProbeResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.ok { "ok" } else { "FAIL" };
        write!(f, "{} {verdict} ({})", self.target, self.detail)
    }
}

/// Probes every target at once, one thread each, each within `timeout`;
/// the results come in the order of `targets`.
pub fn probe_all(targets: &[Target], timeout: Duration) -> Vec<ProbeResult> {
    thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|&t| (t, s.spawn(move || probe(t, timeout))))
            .collect();
        handles
            .into_iter()
            .map(|(target, h)| {
                h.join().unwrap_or_else(|_| ProbeResult {
                    target,
                    ok: false,
                    detail: "the probe thread panicked".to_owned(),
                })
            })
            .collect()
    })
}

/// Probes one target within `timeout`.
pub fn probe(target: Target, timeout: Duration) -> ProbeResult {
    let deadline = Instant::now() + timeout;
    let (ok, detail) = match target.proto {
        Proto::Tcp => probe_tcp(target.addr, deadline, timeout),
        Proto::Udp => probe_udp(target.addr, deadline, timeout),
    };
    ProbeResult { target, ok, detail }
}

/// How long is left before `deadline`, or `None` when it has passed.
fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

fn probe_tcp(addr: SocketAddr, deadline: Instant, timeout: Duration) -> (bool, String) {
    let mut stream = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => return (false, format!("connect: {e}")),
    };
    let expected = format!("{}\n", addr.port());
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        let Some(left) = remaining(deadline) else {
            return (
                false,
                format!(
                    "connected, but no complete answer within {}ms (read {:?})",
                    timeout.as_millis(),
                    String::from_utf8_lossy(&got)
                ),
            );
        };
        if let Err(e) = stream.set_read_timeout(Some(left)) {
            return (false, format!("set_read_timeout: {e}"));
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.len() > expected.len() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {}
            Err(e) => {
                return (
                    false,
                    format!(
                        "connected, then read: {e} (read {:?})",
                        String::from_utf8_lossy(&got)
                    ),
                );
            }
        }
    }
    let text = String::from_utf8_lossy(&got);
    if got == expected.as_bytes() {
        (true, format!("read {:?}", text.trim_end()))
    } else {
        (
            false,
            format!(
                "connected, but read {text:?} instead of {:?}",
                expected.trim_end()
            ),
        )
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// How many datagrams a UDP probe sends over its timeout window.
const UDP_SENDS: u32 = 4;

fn probe_udp(addr: SocketAddr, deadline: Instant, timeout: Duration) -> (bool, String) {
    static NONCE: AtomicU64 = AtomicU64::new(0);
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = match UdpSocket::bind(local) {
        Ok(s) => s,
        Err(e) => return (false, format!("bind {local}: {e}")),
    };
    // Connected: only the target's answers come in, and an ICMP port
    // unreachable surfaces as ECONNREFUSED, so a closed port fails fast.
    if let Err(e) = sock.connect(addr) {
        return (false, format!("connect: {e}"));
    }
    let payload = format!(
        "bulkhead-lab probe {} {} {addr}",
        std::process::id(),
        NONCE.fetch_add(1, Ordering::Relaxed)
    );
    let interval = timeout / UDP_SENDS;
    let mut sent = 0u32;
    let mut next_send = Instant::now();
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        if now >= deadline {
            let what = if sent == 1 { "datagram" } else { "datagrams" };
            return (
                false,
                format!(
                    "no echo within {}ms ({sent} {what} sent)",
                    timeout.as_millis()
                ),
            );
        }
        if now >= next_send && sent < UDP_SENDS {
            match sock.send(payload.as_bytes()) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    return (false, format!("send: {e} (ICMP unreachable)"));
                }
                Err(e) => return (false, format!("send: {e}")),
            }
            sent += 1;
            next_send = now + interval;
        }
        let wake = if sent < UDP_SENDS {
            next_send.min(deadline)
        } else {
            deadline
        };
        let Some(wait) = remaining(wake) else {
            continue;
        };
        if let Err(e) = sock.set_read_timeout(Some(wait)) {
            return (false, format!("set_read_timeout: {e}"));
        }
        match sock.recv(&mut buf) {
            Ok(n) if buf[..n] == *payload.as_bytes() => {
                return (true, format!("echo after {sent} sent"));
            }
            Ok(_) => {} // not ours; keep waiting
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return (false, format!("recv: {e} (ICMP unreachable)"));
            }
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (false, format!("recv: {e}")),
        }
    }
}

/// The sockets of `bulkhead-lab serve`, bound on every address (IPv4 and
/// IPv6) of the namespace. Binding is separate from serving so that the caller
/// can announce readiness in between.
#[derive(Debug)]
pub struct Server {
    tcp: Vec<(u16, TcpListener)>,
    udp: Vec<(u16, UdpSocket)>,
    echo: Vec<(u16, TcpListener)>,
}

impl Server {
    /// Binds every port on `[::]` and `0.0.0.0`. Linux's default
    /// (`net.ipv6.bindv6only = 0`) makes the `[::]` socket dual-stack, and the
    /// `0.0.0.0` bind then fails with "address in use", which is fine; with
    /// `bindv6only = 1` both sockets are kept; without IPv6 in the kernel only
    /// the IPv4 one.
    pub fn bind(tcp_ports: &[u16], udp_ports: &[u16]) -> anyhow::Result<Self> {
        let mut server = Self {
            tcp: Vec::new(),
            udp: Vec::new(),
            echo: Vec::new(),
        };
        for &port in tcp_ports {
            for l in bind_dual(port, TcpListener::bind)
                .with_context(|| format!("binding TCP port {port}"))?
            {
                server.tcp.push((port, l));
            }
        }
        for &port in udp_ports {
            for s in bind_dual(port, UdpSocket::bind)
                .with_context(|| format!("binding UDP port {port}"))?
            {
                server.udp.push((port, s));
            }
        }
        Ok(server)
    }

    /// Also binds TCP echo ports (see the module documentation).
    pub fn with_tcp_echo(mut self, ports: &[u16]) -> anyhow::Result<Self> {
        for &port in ports {
            for l in bind_dual(port, TcpListener::bind)
                .with_context(|| format!("binding TCP echo port {port}"))?
            {
                self.echo.push((port, l));
            }
        }
        Ok(self)
    }

    /// The bound local addresses, e.g. for a log line.
    pub fn local_addrs(&self) -> Vec<(Proto, SocketAddr)> {
        let tcp = self
            .tcp
            .iter()
            .filter_map(|(_, l)| l.local_addr().ok().map(|a| (Proto::Tcp, a)));
        let udp = self
            .udp
            .iter()
            .filter_map(|(_, s)| s.local_addr().ok().map(|a| (Proto::Udp, a)));
        let echo = self
            .echo
            .iter()
            .filter_map(|(_, l)| l.local_addr().ok().map(|a| (Proto::Tcp, a)));
        tcp.chain(udp).chain(echo).collect()
    }

    /// Serves forever, one thread per socket; returns only when a socket
    /// fails beyond repair.
    pub fn run(self) -> anyhow::Result<()> {
        if self.tcp.is_empty() && self.udp.is_empty() && self.echo.is_empty() {
            // Nothing to serve, but "runs until killed" all the same.
            loop {
                thread::park();
            }
        }
        let (tx, rx) = std::sync::mpsc::channel::<anyhow::Error>();
        for (port, listener) in self.tcp {
            let tx = tx.clone();
            thread::Builder::new()
                .name(format!("tcp-{port}"))
                .spawn(move || {
                    let e = serve_tcp(port, &listener);
                    let _ = tx.send(e.context(format!("TCP port {port}")));
                })
                .context("spawning a server thread")?;
        }
        for (port, socket) in self.udp {
            let tx = tx.clone();
            thread::Builder::new()
                .name(format!("udp-{port}"))
                .spawn(move || {
                    let e = serve_udp(&socket);
                    let _ = tx.send(e.context(format!("UDP port {port}")));
                })
                .context("spawning a server thread")?;
        }
        for (port, listener) in self.echo {
            let tx = tx.clone();
            thread::Builder::new()
                .name(format!("echo-{port}"))
                .spawn(move || {
                    let e = serve_tcp_echo(&listener);
                    let _ = tx.send(e.context(format!("TCP echo port {port}")));
                })
                .context("spawning a server thread")?;
        }
        drop(tx);
        match rx.recv() {
            Ok(e) => Err(e),
            Err(_) => bail!("every server thread ended"),
        }
    }
}

/// Binds `[::]:port` and `0.0.0.0:port` (see [`Server::bind`]).
fn bind_dual<S>(port: u16, bind: impl Fn(SocketAddr) -> io::Result<S>) -> anyhow::Result<Vec<S>> {
    let v6: SocketAddr = (Ipv6Addr::UNSPECIFIED, port).into();
    let v4: SocketAddr = (Ipv4Addr::UNSPECIFIED, port).into();
    let mut out = Vec::new();
    let have_v6 = match bind(v6) {
        Ok(s) => {
            out.push(s);
            true
        }
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            return Err(e).with_context(|| format!("bind {v6}"));
        }
        // No IPv6 here: serve IPv4 alone.
        Err(_) => false,
    };
    match bind(v4) {
        Ok(s) => out.push(s),
        // Our dual-stack [::] socket already covers IPv4.
        Err(e) if have_v6 && e.kind() == io::ErrorKind::AddrInUse => {}
        Err(e) => return Err(e).with_context(|| format!("bind {v4}")),
    }
    Ok(out)
}

/// Accepts forever, answering each connection with `<port>\n`.
fn serve_tcp(port: u16, listener: &TcpListener) -> anyhow::Error {
    let line = format!("{port}\n");
    let mut consecutive_errors = 0u32;
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                consecutive_errors = 0;
                // A client gone already is its own problem, not the server's.
                let _ = stream.write_all(line.as_bytes());
                let _ = stream.shutdown(std::net::Shutdown::Write);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // ECONNABORTED and friends are per connection; only a socket
                // that keeps failing is broken.
                consecutive_errors += 1;
                if consecutive_errors > 100 {
                    return anyhow::Error::new(e).context("accept keeps failing");
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Accepts forever; every connection gets a thread that echoes what it reads.
fn serve_tcp_echo(listener: &TcpListener) -> anyhow::Error {
    let mut consecutive_errors = 0u32;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                consecutive_errors = 0;
                // No thread, no echo for this one: the client will notice.
                let _ = thread::Builder::new()
                    .name("echo-conn".to_owned())
                    .spawn(move || echo_connection(stream));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                consecutive_errors += 1;
                if consecutive_errors > 100 {
                    return anyhow::Error::new(e).context("accept keeps failing");
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Writes back everything read, until the peer closes or the connection fails.
fn echo_connection(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Sends `count` UDP datagrams to `to` from `bind_src` (port chosen by the
/// kernel), whether or not this namespace owns that address: the socket is
/// `IP_FREEBIND` and `IP_TRANSPARENT` (which needs `CAP_NET_ADMIN`). Each datagram says `bulkhead-lab send-udp <i>`. Returns the
/// local address used.
pub fn send_udp(bind_src: IpAddr, to: SocketAddr, count: u32) -> anyhow::Result<SocketAddr> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    anyhow::ensure!(
        bind_src.is_ipv4() == to.is_ipv4(),
        "source {bind_src} and destination {to} are of different families"
    );
    let sock = Socket::new(Domain::for_address(to), Type::DGRAM, Some(Protocol::UDP))
        .context("creating a UDP socket")?;
    // FREEBIND lets the socket bind the address; TRANSPARENT (root only)
    // lets the kernel route what it sends from there (without it, sending
    // from an address no interface has fails with "network unreachable").
    if bind_src.is_ipv4() {
        sock.set_freebind_v4(true)
            .and_then(|()| sock.set_ip_transparent_v4(true))
    } else {
        sock.set_freebind_v6(true)
            .and_then(|()| sock.set_ip_transparent_v6(true))
    }
    .context("setting IP_FREEBIND and IP_TRANSPARENT")?;
    let local = SocketAddr::new(bind_src, 0);
    sock.bind(&SockAddr::from(local))
        .with_context(|| format!("binding {local}"))?;
    let dest = SockAddr::from(to);
    for i in 0..count {
        let payload = format!("bulkhead-lab send-udp {i}");
        sock.send_to(payload.as_bytes(), &dest)
            .with_context(|| format!("sending datagram {i} to {to}"))?;
    }
    sock.local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .context("reading the local address")
}

/// What [`hold`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldEvent {
    /// Connected from `local` (the connection is then held).
    Connected { local: SocketAddr },
    /// Round trip `seq` came back intact after `micros`.
    Echo { seq: u64, micros: u128 },
}

/// Connects to the echo port `to` and keeps the connection: every `interval`
/// sends the line `<seq>` and waits (at most `timeout`) for it to come back,
/// reporting each step to `report`. Runs until a round trip fails (the error
/// says which and how) or `report` returns false (then `Ok`).
pub fn hold(
    to: SocketAddr,
    interval: Duration,
    timeout: Duration,
    mut report: impl FnMut(HoldEvent) -> bool,
) -> anyhow::Result<()> {
    let stream =
        TcpStream::connect_timeout(&to, timeout).with_context(|| format!("connecting to {to}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    stream
        .set_read_timeout(Some(timeout))
        .context("setting the read timeout")?;
    let local = stream.local_addr().context("reading the local address")?;
    if !report(HoldEvent::Connected { local }) {
        return Ok(());
    }
    let mut writer = stream.try_clone().context("cloning the stream")?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    for seq in 1u64.. {
        let start = Instant::now();
        writer
            .write_all(format!("{seq}\n").as_bytes())
            .with_context(|| format!("round trip {seq}: writing"))?;
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => bail!("round trip {seq}: the server closed the connection"),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {
                bail!("round trip {seq}: no echo within {}ms", timeout.as_millis())
            }
            Err(e) => bail!("round trip {seq}: reading: {e}"),
        }
        if line.trim_end() != seq.to_string() {
            bail!("round trip {seq}: got {line:?} back");
        }
        let micros = start.elapsed().as_micros();
        if !report(HoldEvent::Echo { seq, micros }) {
            return Ok(());
        }
        // Pacing, not synchronisation.
        thread::sleep(interval);
    }
    Ok(())
}

/// Echoes every datagram to its sender, forever.
fn serve_udp(socket: &UdpSocket) -> anyhow::Error {
    let mut buf = vec![0u8; 65536];
    let mut consecutive_errors = 0u32;
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                consecutive_errors = 0;
                let _ = socket.send_to(&buf[..n], from);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                consecutive_errors += 1;
                if consecutive_errors > 100 {
                    return anyhow::Error::new(e).context("recv keeps failing");
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print() {
        for s in [
            "tcp:10.0.0.1:80",
            "udp:[fd00::1]:53",
            "tcp:[::ffff:10.0.0.1]:8080",
        ] {
            let t: Target = s.parse().unwrap();
            assert_eq!(t.to_string(), s);
        }
        let t: Target = "udp:[fd00::1]:53".parse().unwrap();
        assert_eq!(t, Target::udp("fd00::1".parse::<Ipv6Addr>().unwrap(), 53));
        for bad in [
            "",
            "tcp",
            "tcp:10.0.0.1",
            "tcp:10.0.0.1:0",
            "tcp:fd00::1:80",
            "sctp:10.0.0.1:80",
            "TCP:10.0.0.1:80",
            "tcp:host:80",
            "tcp:10.0.0.1:65536",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn results_round_trip_through_json() {
        let r = ProbeResult {
            target: "tcp:[fd00::1]:80".parse().unwrap(),
            ok: false,
            detail: "connect: \"refused\"\n".to_owned(),
        };
        let line = r.to_json();
        assert!(line.starts_with(r#"{"target":"tcp:[fd00::1]:80","ok":false,"detail":"#));
        assert!(!line.contains('\n'));
        assert_eq!(ProbeResult::from_json(&line).unwrap(), r);
        assert!(
            ProbeResult::from_json(r#"{"target":"tcp:1.2.3.4:5","ok":"yes","detail":""}"#).is_err()
        );
    }
}
