//! pubmesh node-to-node wire format.
