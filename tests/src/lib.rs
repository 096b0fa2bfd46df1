//! The test bed. For now: helpers to run the built `bulkhead` binary from
//! end-to-end tests; the network-namespace lab lands with the dataplane.
