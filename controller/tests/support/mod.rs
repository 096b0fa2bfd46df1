//! Test support shared by the integration tests.
pub mod agent;
pub mod mock_api;
