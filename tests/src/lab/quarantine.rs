//! Live traffic for quarantine tests and the quarantine benchmark: a held
//! TCP session (an echo server in one pod, a client in another) and a UDP
//! stream, each on a thread inside its pod's network namespace, recording
//! when they last passed a packet; and the `bulkhead quarantine` / `release`
//! commands on a lab's source directory.

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};

use super::Lab;
use super::netio::spawn_in;
use crate::traffic::{HoldEvent, hold};

/// A TCP echo server (`bulkhead-lab serve --tcp-echo PORT`) in namespace
/// `netns`, a process (so removing the pod kills it and frees its
/// namespace); killed when dropped.
#[derive(Debug)]
pub struct EchoServer {
    child: std::process::Child,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts an [`EchoServer`]; returns once it is bound.
pub fn echo_server(lab: &Lab, netns: &str, port: u16) -> anyhow::Result<EchoServer> {
    use std::io::BufRead as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(&lab.bins().lab)
        .args(["serve", "--tcp-echo", &port.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting bulkhead-lab serve")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let server = EchoServer { child };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(line) if line.trim() == "ready" => Ok(server),
        Ok(line) => bail!("echo server in {netns}: {line:?}"),
        Err(_) => bail!("echo server in {netns}: not ready within 10s"),
    }
}

/// What a live flow saw.
#[derive(Debug, Default)]
struct Seen {
    last_ok: Option<Instant>,
    oks: u64,
    ended: Option<String>,
}

/// A live flow (TCP session or UDP stream), stopped when dropped.
#[derive(Debug)]
pub struct Live {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    what: String,
}

impl Live {
    /// When it last passed a packet (a round trip).
    pub fn last_ok(&self) -> Option<Instant> {
        self.seen.lock().ok().and_then(|s| s.last_ok)
    }

    pub fn oks(&self) -> u64 {
        self.seen.lock().map(|s| s.oks).unwrap_or_default()
    }

    /// Why it ended, if it did (TCP: the first failed round trip).
    pub fn ended(&self) -> Option<String> {
        self.seen.lock().ok().and_then(|s| s.ended.clone())
    }

    /// Waits for `n` more round trips.
    pub fn wait_oks(&self, n: u64, deadline: Instant) -> anyhow::Result<()> {
        let start = self.oks();
        while self.oks() < start + n {
            if let Some(e) = self.ended() {
                bail!("{}: ended: {e}", self.what);
            }
            ensure!(
                Instant::now() < deadline,
                "{}: no {n} round trips in time",
                self.what
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Waits until no round trip succeeded for `quiet`; returns the time of
    /// the last one.
    pub fn wait_silent(
        &self,
        quiet: Duration,
        deadline: Instant,
    ) -> anyhow::Result<Option<Instant>> {
        loop {
            let last = self.last_ok();
            if self.ended().is_some() || last.is_none_or(|t| t.elapsed() >= quiet) {
                return Ok(last);
            }
            ensure!(
                Instant::now() < deadline,
                "{}: still passing packets",
                self.what
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Holds one TCP connection from namespace `netns` to the echo port `to`,
/// one round trip every `interval`; a round trip may take `timeout`.
pub fn tcp_session(
    netns: &str,
    to: SocketAddr,
    interval: Duration,
    timeout: Duration,
) -> anyhow::Result<Live> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let (s, st) = (Arc::clone(&seen), Arc::clone(&stop));
    spawn_in(netns, "tcp session", move || {
        let r = hold(to, interval, timeout, |ev| {
            if let (HoldEvent::Echo { .. }, Ok(mut seen)) = (ev, s.lock()) {
                seen.last_ok = Some(Instant::now());
                seen.oks += 1;
            }
            !st.load(Ordering::SeqCst)
        });
        if let (Err(e), Ok(mut seen)) = (r, s.lock()) {
            seen.ended = Some(format!("{e:#}"));
        }
        Ok(())
    })?;
    Ok(Live {
        seen,
        stop,
        what: format!("TCP session to {to}"),
    })
}

/// A UDP stream from namespace `netns` to the echo port `to`, one socket
/// (one conntrack entry): a datagram every `interval`, echoes counted.
pub fn udp_stream(netns: &str, to: SocketAddr, interval: Duration) -> anyhow::Result<Live> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let (s, st) = (Arc::clone(&seen), Arc::clone(&stop));
    spawn_in(netns, "udp stream", move || {
        let bind: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let sock = UdpSocket::bind(bind).context("binding")?;
        sock.connect(to).context("connecting")?;
        sock.set_read_timeout(Some(interval))?;
        let mut buf = [0u8; 64];
        let mut seq = 0u64;
        while !st.load(Ordering::SeqCst) {
            seq += 1;
            let _ = sock.send(seq.to_string().as_bytes());
            let sent = Instant::now();
            while sent.elapsed() < interval {
                match sock.recv(&mut buf) {
                    Ok(n) if n > 0 => {
                        if let Ok(mut seen) = s.lock() {
                            seen.last_ok = Some(Instant::now());
                            seen.oks += 1;
                        }
                    }
                    // Refused (ICMP) comes back at once: pace the retries.
                    _ => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        }
        Ok(())
    })?;
    Ok(Live {
        seen,
        stop,
        what: format!("UDP stream to {to}"),
    })
}

impl Lab {
    /// `bulkhead <args> --source dir:<source>`; returns stdout.
    pub fn bulkhead_cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let source = format!("dir:{}", self.source_dir().display());
        let out = Command::new(&self.bins().bulkhead)
            .args(args)
            .args(["--source", &source])
            .output()
            .with_context(|| format!("running bulkhead {}", args.join(" ")))?;
        if !out.status.success() {
            return Err(anyhow!(
                "bulkhead {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `bulkhead quarantine POD --reason REASON [--allow-from ..]`.
    pub fn quarantine(&self, pod: &str, reason: &str, allow_from: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["quarantine", pod, "--reason", reason, "--as", "lab"];
        for a in allow_from {
            args.extend(["--allow-from", a]);
        }
        self.bulkhead_cli(&args).map(|_| ())
    }

    /// `bulkhead release POD`.
    pub fn release(&self, pod: &str) -> anyhow::Result<()> {
        self.bulkhead_cli(&["release", pod, "--as", "lab"])
            .map(|_| ())
    }
}
