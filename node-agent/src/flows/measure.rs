//! `bulkhead-agent observe`: the observer alone, for benchmarks. Binds
//! nflog, runs the observer thread and the one-second report drain exactly
//! as the agent does (without the stream), and at the end tells what it saw
//! and what it cost this process (CPU time, peak memory).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::observer::{ObserveError, Observer};
use super::{Counters, Flows, Limits};

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub seconds: f64,
    /// Reports drained (one per second with anything in it).
    pub reports: u64,
    /// Sum of the reported flows' counts: connection attempts reported.
    pub reported_attempts: u64,
    /// Distinct flow records reported.
    pub reported_flows: u64,
    /// Sum of the reports' `dropped`: attempts shed (sampling, kernel loss).
    pub dropped: u64,
    /// The largest `sample_rate` a report gave.
    pub max_sample_rate: u32,
    pub nflog_messages: u64,
    pub lost: u64,
    pub overruns: u64,
    /// User + system CPU time of this process.
    pub cpu_seconds: f64,
    /// Peak resident memory (VmHWM) of this process.
    pub max_rss_kib: u64,
}

/// Observes for `duration` after `ready` is called.
pub fn observe_for(
    group: u16,
    limits: Limits,
    duration: Duration,
    ready: impl FnOnce(),
) -> Result<Summary, ObserveError> {
    let obs = Observer::bind(group)?;
    let flows = Flows::new(limits);
    let handle = flows.clone();
    std::thread::Builder::new()
        .name("flows".into())
        .spawn(move || obs.run(handle))?;
    let cpu0 = cpu_seconds();
    ready();
    let start = Instant::now();
    let mut s = Summary::default();
    let mut next = start + Duration::from_secs(1);
    loop {
        let now = Instant::now();
        let end = start + duration;
        let wake = next.min(end);
        if wake > now {
            std::thread::sleep(wake - now);
        }
        if let Some(r) = flows.drain() {
            s.reports += 1;
            s.reported_flows += r.flows.len() as u64;
            s.reported_attempts += r.flows.iter().map(|f| f.count).sum::<u64>();
            s.dropped += r.dropped;
            s.max_sample_rate = s.max_sample_rate.max(r.sample_rate);
        }
        next += Duration::from_secs(1);
        if Instant::now() >= end {
            break;
        }
    }
    s.seconds = start.elapsed().as_secs_f64();
    let c = &flows.counters;
    s.nflog_messages = Counters::get(&c.messages);
    s.lost = c.lost.load(Ordering::Relaxed);
    s.overruns = Counters::get(&c.overruns);
    s.cpu_seconds = cpu_seconds() - cpu0;
    s.max_rss_kib = max_rss_kib();
    Ok(s)
}

/// utime + stime of this process, from /proc (in USER_HZ = 100 ticks).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): state is 3rd.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line; 12 and 13 here.
    (tick(11) + tick(12)) as f64 / 100.0
}

fn max_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
