//! Verdicts in words a network admin understands, and in JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::inventory::Inventory;
use crate::model::{Direction, PortMatch, Rule};
use crate::verdict::{self, Endpoint, Implicit, Query, RuleRef, Side, Verdict};

/// A verdict with every id resolved to names: what `explain -o json` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub from: EndpointInfo,
    pub to: EndpointInfo,
    pub protocol: String,
    pub port: u16,
    pub allowed: bool,
    /// `allowed`, `denied` (dropped) or `wouldDeny` (denied by policy, let
    /// through because the denying side's namespace is in learn or monitor mode).
    pub outcome: verdict::Outcome,
    /// The namespace modes of the source and destination pods (`null`: not a pod).
    #[serde(rename = "egressMode")]
    pub egress_mode: Option<crate::model::PolicyMode>,
    #[serde(rename = "ingressMode")]
    pub ingress_mode: Option<crate::model::PolicyMode>,
    /// Set when a Quarantine decided: it overrides the sides below.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<QuarantineInfo>,
    pub egress: SideInfo,
    pub ingress: SideInfo,
}

/// The Quarantine that decided a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuarantineInfo {
    /// `namespace/name` of the Quarantine.
    pub quarantine: String,
    /// The quarantined pod.
    pub pod: String,
    pub reason: String,
    /// The forensics source that let the connection in, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_from: Option<String>,
    pub summary: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointInfo {
    /// `namespace/name` when the endpoint is a pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The address the connection uses, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SideInfo {
    /// `allowed` or `denied`.
    pub verdict: &'static str,
    /// `notAPod`, `hostNetwork`, `samePod`, `ownNode`, `notIsolated`,
    /// `allowedByRule`, `noRuleAllows` or `apiGuard`.
    pub reason: &'static str,
    pub isolated_by: Vec<String>,
    pub allowed_by: Vec<RuleInfo>,
    pub summary: String,
    /// The tier that decided: `implicit`, `tenantFence`, `Admin`,
    /// `apiGuard`, `NetworkPolicy`, `Baseline` or `default`.
    pub tier: &'static str,
    /// The ClusterNetworkPolicy rule that decided, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_rule: Option<ClusterRuleInfo>,
    /// The Tenants whose fence denied it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fenced_by: Vec<String>,
    /// Passes and fence exceptions on the way to the decision.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A ClusterNetworkPolicy rule, resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRuleInfo {
    pub policy: String,
    pub tier: String,
    pub priority: u16,
    /// 0-based index in the policy's rules of the side's direction.
    pub rule: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: String,
    pub description: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleInfo {
    pub policy: String,
    pub direction: Direction,
    /// 0-based index in the policy's rules of that direction.
    pub rule: usize,
    pub description: String,
}

/// Describes a rule: `from pods app=web in namespaces team=a; ports TCP/80`.
pub fn describe_rule(rule: &Rule, dir: Direction) -> String {
    describe_match(&rule.peers, &rule.ports, dir, "anywhere")
}

/// `from <peers>; ports <ports>` (`to` for egress): the words for a rule's
/// match, shared by NetworkPolicy and ClusterNetworkPolicy rules. `no_peers`
/// says what an empty peer list means.
pub(crate) fn describe_match<P: std::fmt::Display>(
    peers: &[P],
    ports: &[PortMatch],
    dir: Direction,
    no_peers: &str,
) -> String {
    let word = match dir {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    let peers = if peers.is_empty() {
        no_peers.to_owned()
    } else {
        join(peers, " or ")
    };
    let ports = if ports.is_empty() {
        "any port".to_owned()
    } else {
        join(ports, ", ")
    };
    format!("{word} {peers}; ports {ports}")
}

fn join<T: std::fmt::Display>(items: &[T], sep: &str) -> String {
    items.iter().map(T::to_string).collect::<Vec<_>>().join(sep)
}

fn name(inv: &Inventory, e: Endpoint, ip: Option<std::net::IpAddr>) -> EndpointInfo {
    EndpointInfo {
        pod: match e {
            Endpoint::Pod(p) => Some(inv.pods[p].key()),
            Endpoint::Ip(_) => None,
        },
        ip: ip.map(|i| i.to_string()),
    }
}

fn label(info: &EndpointInfo) -> String {
    match (&info.pod, &info.ip) {
        (Some(p), Some(ip)) => format!("{p} ({ip})"),
        (Some(p), None) => p.clone(),
        (None, Some(ip)) => ip.clone(),
        (None, None) => "?".into(),
    }
}

/// Resolves a verdict for people and for JSON.
pub fn explain(inv: &Inventory, q: &Query) -> Explanation {
    let v = verdict::evaluate(inv, q);
    let outcome = v.outcome();
    let Verdict {
        allowed,
        dropped: _,
        quarantine,
        egress,
        ingress,
        egress_mode,
        ingress_mode,
        notes,
    } = v;
    let quarantine = quarantine.map(|qv| {
        let qr = &inv.quarantines[qv.quarantine];
        QuarantineInfo {
            quarantine: qr.key(),
            pod: inv.pods[qv.pod].key(),
            reason: qr.reason.clone(),
            allowed_from: qv.allowed_by.map(|i| qr.allow_from[i].to_string()),
            summary: crate::quarantine::describe(inv, &qv),
        }
    });
    let (src_ip, dst_ip) = verdict::query_addresses(inv, q);
    let from = name(inv, q.src, src_ip);
    let to = name(inv, q.dst, dst_ip);
    let what = format!("{}/{}", q.protocol, q.port);
    let egress = side_info(
        inv,
        &egress,
        Direction::Egress,
        &label(&from),
        &label(&to),
        &what,
    );
    let ingress = side_info(
        inv,
        &ingress,
        Direction::Ingress,
        &label(&to),
        &label(&from),
        &what,
    );
    let mut egress = egress;
    let mut ingress = ingress;
    for n in &notes {
        let (dir, text) = crate::tiers_explain::note(inv, n);
        match dir {
            Direction::Egress => egress.notes.push(text),
            Direction::Ingress => ingress.notes.push(text),
        }
    }
    Explanation {
        from,
        to,
        protocol: q.protocol.to_string(),
        port: q.port,
        allowed,
        outcome,
        egress_mode,
        ingress_mode,
        quarantine,
        egress,
        ingress,
    }
}

fn side_info(
    inv: &Inventory,
    side: &Side,
    dir: Direction,
    this: &str,
    peer: &str,
    what: &str,
) -> SideInfo {
    let names = |ids: &[usize]| {
        ids.iter()
            .map(|&i| inv.policies[i].key())
            .collect::<Vec<_>>()
    };
    let rules = |refs: &[RuleRef]| {
        refs.iter()
            .map(|r| {
                let p = &inv.policies[r.policy];
                RuleInfo {
                    policy: p.key(),
                    direction: dir,
                    rule: r.rule,
                    description: p
                        .rules(dir)
                        .and_then(|rs| rs.get(r.rule))
                        .map(|rule| describe_rule(rule, dir))
                        .unwrap_or_default(),
                }
            })
            .collect::<Vec<_>>()
    };
    let toward = match dir {
        Direction::Egress => "to",
        Direction::Ingress => "from",
    };
    if let Some(info) = crate::tiers_explain::side_info(inv, side, dir, this, peer, what) {
        return info;
    }
    let tier = match side {
        Side::Allowed { .. } | Side::Denied { .. } => "NetworkPolicy",
        Side::NotIsolated => "default",
        Side::Guarded { .. } => "apiGuard",
        _ => "implicit",
    };
    let (reason, isolated_by, allowed_by, summary) = match side {
        Side::NotAPod => (
            "notAPod",
            vec![],
            vec![],
            format!("{this} is not a pod: no NetworkPolicy applies to its {dir}"),
        ),
        Side::HostNetwork => (
            "hostNetwork",
            vec![],
            vec![],
            format!("{this} uses the host network: NetworkPolicy does not apply to it"),
        ),
        Side::Implicit {
            reason: Implicit::SamePod,
        } => (
            "samePod",
            vec![],
            vec![],
            "a pod can always reach itself".to_owned(),
        ),
        Side::Implicit {
            reason: Implicit::OwnNode,
        } => (
            "ownNode",
            vec![],
            vec![],
            format!(
                "{peer} is the node of {this}: traffic between a pod and its node is always allowed"
            ),
        ),
        Side::NotIsolated => (
            "notIsolated",
            vec![],
            vec![],
            format!("no NetworkPolicy selects {this} for {dir}, so all its {dir} is allowed"),
        ),
        Side::Allowed {
            isolated_by,
            allowed_by,
        } => (
            "allowedByRule",
            names(isolated_by),
            rules(allowed_by),
            format!(
                "{this} is isolated for {dir}; {} of its policies allow{} {what} {toward} {peer}",
                plural(allowed_by.len(), "rule"),
                if allowed_by.len() == 1 { "s" } else { "" },
            ),
        ),
        Side::Denied { isolated_by } => (
            "noRuleAllows",
            names(isolated_by),
            vec![],
            format!(
                "{this} is isolated for {dir} by {} and none of their {dir} rules allows {what} {toward} {peer}",
                plural(isolated_by.len(), "policy"),
            ),
        ),
        Side::Guarded { target, mode } => (
            "apiGuard",
            vec![],
            vec![],
            format!(
                "the Kubernetes API guard keeps {this} from {target} ({peer}): the pod is not trusted{}; an Admin ClusterNetworkPolicy Accept would grant it",
                match mode {
                    crate::model::GuardMode::Monitor =>
                        " (guard in monitor mode: logged, not dropped)",
                    _ => "",
                }
            ),
        ),
        // Resolved by tiers_explain::side_info above.
        Side::Fenced { .. } | Side::ClusterPolicy { .. } => ("", vec![], vec![], String::new()),
    };
    SideInfo {
        verdict: if side.allows() { "allowed" } else { "denied" },
        reason,
        isolated_by,
        allowed_by,
        summary,
        tier,
        cluster_rule: None,
        fenced_by: Vec::new(),
        notes: Vec::new(),
    }
}

fn plural(n: usize, word: &str) -> String {
    match (n, word) {
        (1, w) => format!("1 {w}"),
        (n, "policy") => format!("{n} policies"),
        (n, w) => format!("{n} {w}s"),
    }
}

/// The text form of `explain`.
pub fn render_text(e: &Explanation) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}/{} from {} to {}: {}",
        e.protocol,
        e.port,
        label(&e.from),
        label(&e.to),
        match e.outcome {
            verdict::Outcome::Allowed => "ALLOWED",
            verdict::Outcome::Denied => "DENIED",
            verdict::Outcome::WouldDeny =>
                "WOULD DENY (denied by policy, not dropped: the denying side is in learn or monitor mode)",
        }
    );
    for (side, m) in [("source", e.egress_mode), ("destination", e.ingress_mode)] {
        if let Some(m) = m
            && m != crate::model::PolicyMode::Enforce
        {
            let _ = writeln!(out, "  {side} namespace mode: {m:?}");
        }
    }
    if let Some(q) = &e.quarantine {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "  quarantine {}: {} (overrides every policy below)",
            q.quarantine,
            if e.allowed { "allowed" } else { "denied" }
        );
        let _ = writeln!(out, "    {}", q.summary);
    }
    for (dir, at, s) in [
        ("egress", &e.from, &e.egress),
        ("ingress", &e.to, &e.ingress),
    ] {
        let _ = writeln!(out);
        let _ = writeln!(out, "  {dir} at {}: {}", label(at), s.verdict);
        let _ = writeln!(out, "    {}", s.summary);
        if !s.isolated_by.is_empty() {
            let _ = writeln!(out, "    isolated by: {}", s.isolated_by.join(", "));
        }
        for r in &s.allowed_by {
            let _ = writeln!(
                out,
                "    allowed by {} {} rule {}: {}",
                r.policy, r.direction, r.rule, r.description
            );
        }
        crate::tiers_explain::render_side(&mut out, s);
    }
    out
}

/// `{"port": 80, "protocol": "TCP", "allowed": {"ns/pod": {"ns/pod": true}}}`:
/// what `bulkhead reachability -o json` prints, and `bulkhead-lab probe` too.
/// `allowed[src][dst]`, in the order of `pods`.
pub fn matrix_json(protocol: &str, port: u16, pods: &[String], allowed: &[Vec<bool>]) -> String {
    let rows: std::collections::BTreeMap<&str, std::collections::BTreeMap<&str, bool>> = pods
        .iter()
        .zip(allowed)
        .map(|(s, row)| {
            (
                s.as_str(),
                pods.iter()
                    .map(String::as_str)
                    .zip(row.iter().copied())
                    .collect(),
            )
        })
        .collect();
    let v = serde_json::json!({ "port": port, "protocol": protocol, "allowed": rows });
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

/// A grid: one row per source, one numbered column per destination; what
/// `reachability -o table` (and `bulkhead-lab probe -o table`) prints.
pub fn matrix_table(protocol: &str, port: u16, pods: &[String], allowed: &[Vec<bool>]) -> String {
    let mut out = String::new();
    let n = pods.len();
    let _ = writeln!(
        out,
        "reachability {protocol}/{port}: rows are sources, columns destinations; '.' allowed, 'X' denied"
    );
    if n == 0 {
        let _ = writeln!(out, "(no pods)");
        return out;
    }
    let idx_w = (n - 1).to_string().len();
    let name_w = pods.iter().map(String::len).max().unwrap_or(0);
    let prefix_w = idx_w + 1 + name_w + 1;
    // Column numbers, written vertically when they have several digits.
    for digit in 0..idx_w {
        let _ = write!(out, "{:prefix_w$}", "");
        for d in 0..n {
            let s = format!("{d:>idx_w$}");
            let _ = write!(out, " {}", &s[digit..=digit]);
        }
        out.push('\n');
    }
    for (s, row) in allowed.iter().enumerate() {
        let _ = write!(out, "{s:>idx_w$} {:<name_w$} ", pods[s]);
        for ok in row {
            let _ = write!(out, " {}", if *ok { '.' } else { 'X' });
        }
        out.push('\n');
    }
    out
}
