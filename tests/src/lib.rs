//! Support for pubmesh end-to-end tests.
pub mod backend;
pub mod harness;
pub mod js;
pub mod phoenix;
pub mod proxy;
pub mod sse;
