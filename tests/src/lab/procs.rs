//! The lab's long-running processes (controller, agents): started detached
//! (own process group, output to a log file, no stdin) so that they outlive
//! `bulkhead-lab up`, and found again by pid, checked against their command
//! line so that a reused pid is never killed.

use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};

use crate::netns::netns_command;

/// Starts `program args...` in namespace `ns`, appending its stdout and
/// stderr to `log`, in a process group of its own.
pub fn spawn_detached(
    ns: &str,
    program: &Path,
    args: &[String],
    log: &Path,
) -> anyhow::Result<Child> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out
        .try_clone()
        .with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = netns_command(ns, program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // A log file, not a terminal.
        .env("NO_COLOR", "1")
        .process_group(0);
    cmd.spawn().with_context(|| format!("starting {cmd:?}"))
}

/// Whether `pid` runs (a zombie does not) and its command line contains
/// `marker`. A process in the middle of `execve` (`ip netns exec` becoming
/// the program it runs) shows an empty command line for a moment: that is
/// read again.
pub fn alive(pid: u32, marker: &str) -> bool {
    for _ in 0..200 {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // `pid (comm) S ...`: the state follows the last ')'.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if matches!(state, None | Some("Z" | "X")) {
            return false;
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.is_empty() {
            thread::sleep(Duration::from_millis(1));
            continue;
        }
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        return cmdline.contains(marker);
    }
    false
}

/// Sends `signal` (`TERM`, `KILL`, ...) to `pid`; whether it got there.
pub fn signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Kills `pid` (if it is still the process `marker` names) with SIGKILL
/// and waits until it is gone.
pub fn kill(pid: u32, marker: &str) -> anyhow::Result<()> {
    if !alive(pid, marker) {
        return Ok(());
    }
    signal(pid, "KILL");
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid, marker) {
        ensure!(Instant::now() < deadline, "process {pid} survives SIGKILL");
        thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Peak resident memory (`VmHWM`) of `pid`, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The last `n` lines of a log file (or why it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
