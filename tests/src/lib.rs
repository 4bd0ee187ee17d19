//! Support for pubmesh end-to-end tests.
pub mod harness;
pub mod js;
pub mod proxy;
pub mod sse;
