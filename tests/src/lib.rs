//! Support for pubmesh end-to-end tests.
