//! The node agent: applies its node's ruleset to the kernel and keeps it
//! there.
//!
//! ```text
//!  Ruleset / RulesetDelta (proto) ──render──▶ nft JSON batch ──nft -j -f -──▶ table inet bulkhead
//!                                    ▲                                         │ read back:
//!  links (rtnetlink): pod veths ─────┘ anti-spoofing sets                      └ generation, verify
//! ```

pub mod client;
pub mod dataplane;
pub mod flows;
pub mod links;
