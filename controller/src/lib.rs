//! The `bulkhead` binary's library: reading inputs, and the CLI subcommands.
//! The policy logic itself lives in the pure `bulkhead-core` crate.

pub mod certs;
pub mod cli;
/// Bulkhead's custom resources live in the pure core (types only).
pub use bulkhead_core::crd;
pub mod files;
pub mod index;
pub mod quarantine;
pub mod run;
pub mod server;
pub mod source;
