//! The `bulkhead` binary's library: reading inputs, and the CLI subcommands.
//! The policy logic itself lives in the pure `bulkhead-core` crate.

pub mod autoapply;
pub mod certs;
pub mod cli;
pub mod events;
/// Bulkhead's custom resources live in the pure core (types only).
pub use bulkhead_core::crd;
pub mod files;
pub mod flowlog;
pub mod flows;
pub mod flowstore;
pub mod index;
pub mod lease;
pub mod quarantine;
pub mod recommend;
pub mod run;
pub mod server;
pub mod source;
pub mod status;
pub mod tenants;
