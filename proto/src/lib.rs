//! Bulkhead's wire protocol. The ruleset and sync messages
//! (`bulkhead/v1/*.proto`) and their generated code land with the dataplane;
//! this crate holds nothing else.
