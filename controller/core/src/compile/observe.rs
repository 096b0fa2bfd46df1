//! Flow observation in the dataplane: which rules log to nflog, and what their
//! log prefixes say. Shared by the compiler (which writes the prefixes) and the
//! agent (which reads them back from nflog), so the two cannot drift apart.
//!
//! Every rule that decides a NEW connection from or to a pod on the node logs
//! it, with `log prefix "bh <kind> <rule comment>" group LOG_GROUP`:
//!
//! ```text
//!   e_<group>  allow rules:   log "bh A np ns/p egress[i]"   return
//!              last rule:     log "bh D np isolated ..."     drop      (enforce)
//!                             log "bh W np isolated ..."     return    (learn, monitor)
//!   i_<group>  allow rules:   log "bh A np ns/p ingress[i]"  accept
//!              last rule:     log "bh D ..." drop  |  log "bh W ..." accept
//!   forward    tail:          ct state new, saddr or daddr in @local{4,6}:
//!                             log "bh N not isolated"  (then the chain policy accepts)
//! ```
//!
//! One packet can be logged more than once on its way through a node (its
//! egress rule, then its ingress rule or the tail); [`merge`] folds the
//! records of one packet into the one verdict the packet got.

use bulkhead_proto::v1 as pb;

use crate::verdict::Outcome;

/// The nflog group the agent listens on.
pub const LOG_GROUP: u16 = 100;

/// What a log record says about the rule that wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LogKind {
    /// Nothing isolates the packet here: allowed by default.
    Default,
    /// A policy rule allows it.
    Allow,
    /// No rule allows it, and the namespace is in learn or monitor mode: it passes.
    WouldDeny,
    /// No rule allows it, and it is dropped.
    Deny,
}

impl LogKind {
    fn letter(self) -> char {
        match self {
            LogKind::Default => 'N',
            LogKind::Allow => 'A',
            LogKind::WouldDeny => 'W',
            LogKind::Deny => 'D',
        }
    }

    pub fn outcome(self) -> Outcome {
        match self {
            LogKind::Default | LogKind::Allow => Outcome::Allowed,
            LogKind::WouldDeny => Outcome::WouldDeny,
            LogKind::Deny => Outcome::Denied,
        }
    }
}

/// The kernel's limit on a log prefix, without its terminating NUL.
pub const MAX_PREFIX: usize = 127;

/// `bh <letter> <comment>`, cut to [`MAX_PREFIX`] bytes on a char boundary.
pub fn prefix(kind: LogKind, comment: &str) -> String {
    let mut s = format!("bh {} {comment}", kind.letter());
    if s.len() > MAX_PREFIX {
        let mut end = MAX_PREFIX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The log statement of a rule of `kind` with `comment`.
pub fn log(kind: LogKind, comment: &str) -> Option<pb::Log> {
    Some(pb::Log {
        prefix: prefix(kind, comment),
        group: u32::from(LOG_GROUP),
    })
}

/// Reads a prefix back: `None` when it is not one of ours.
pub fn parse_prefix(p: &str) -> Option<(LogKind, &str)> {
    let rest = p.strip_prefix("bh ")?;
    let mut chars = rest.chars();
    let kind = match chars.next()? {
        'N' => LogKind::Default,
        'A' => LogKind::Allow,
        'W' => LogKind::WouldDeny,
        'D' => LogKind::Deny,
        _ => return None,
    };
    let rule = chars.as_str().strip_prefix(' ').unwrap_or("");
    Some((kind, rule))
}

/// The verdict of one packet from the records it left, in the order the
/// kernel wrote them: a denial beats a would-be denial beats an allowing rule
/// beats the default; the first record of the winning kind names the rule.
pub fn merge<'a>(
    records: impl IntoIterator<Item = (LogKind, &'a str)>,
) -> Option<(LogKind, &'a str)> {
    let mut best: Option<(LogKind, &'a str)> = None;
    for (k, r) in records {
        if best.is_none_or(|(bk, _)| k > bk) {
            best = Some((k, r));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn prefixes_round_trip_and_fit() {
        let p = prefix(LogKind::Allow, "np shop/api ingress[1]");
        assert_eq!(p, "bh A np shop/api ingress[1]");
        assert_eq!(
            parse_prefix(&p),
            Some((LogKind::Allow, "np shop/api ingress[1]"))
        );
        let long = format!("np ns/{} ingress[0]", "é".repeat(200));
        let p = prefix(LogKind::Deny, &long);
        assert!(p.len() <= MAX_PREFIX);
        assert_eq!(parse_prefix(&p).unwrap().0, LogKind::Deny);
        assert_eq!(parse_prefix("other"), None);
        assert_eq!(parse_prefix("bh X y"), None);
    }

    #[test]
    fn merge_prefers_the_strongest_record() {
        let r = [(LogKind::Allow, "e"), (LogKind::Default, "n")];
        assert_eq!(merge(r), Some((LogKind::Allow, "e")));
        let r = [(LogKind::WouldDeny, "e"), (LogKind::Deny, "i")];
        assert_eq!(merge(r), Some((LogKind::Deny, "i")));
        let r = [(LogKind::WouldDeny, "e"), (LogKind::Allow, "i")];
        assert_eq!(merge(r), Some((LogKind::WouldDeny, "e")));
        assert_eq!(merge([]), None);
    }
}
