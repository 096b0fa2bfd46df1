//! Bulkhead's policy core. Pure: no I/O, no async, no clock. Text and values
//! in, values and diagnostics out, so it can be unit-, property- and
//! benchmark-tested alone.
//!
//! ```text
//!  YAML ──load──▶ Objects ──Inventory::new──▶ Inventory (+ indexes)
//!                                                │
//!                       Query ──verdict::evaluate─┴─▶ Verdict ──explain──▶ words / JSON
//!                                                └─▶ reachability ──▶ Matrix
//! ```

pub mod crd;
pub mod diag;
pub mod explain;
pub mod inventory;
pub mod labels;
pub mod load;
pub mod model;
pub mod quarantine;
pub mod synth;
pub mod verdict;

pub use diag::{Diagnostic, Origin, Severity};
pub use inventory::{Inventory, PodId, PolicyId};
pub use load::{Loaded, Located, load_str};
pub use model::{Direction, Object, Protocol};
pub use verdict::{Endpoint, Matrix, Query, Side, Verdict, allowed, evaluate, reachability};
pub mod compile;
