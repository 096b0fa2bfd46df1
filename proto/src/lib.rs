//! Bulkhead's wire protocol: the `.proto` files under `bulkhead/v1/` and the
//! code prost and tonic generate from them. Nothing else lives here.

#[allow(clippy::all, missing_docs, missing_debug_implementations)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/bulkhead.v1.rs"));
}
