//! Any chain message either is refused by the decoder or decodes to a
//! message that encodes back to itself; decoding never panics.
//! `node/tests/fuzz_phoenix_chain.rs` runs the same messages through a
//! session.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pubmesh_node::frontend::chain::wire::{Inbound, Message};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = Message::decode(text) {
        assert_eq!(Message::decode(&m.encode()).as_ref(), Ok(&m));
        let _ = Inbound::try_from(m);
    }
});
