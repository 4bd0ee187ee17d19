//! Any Phoenix frame (first byte even: a text frame in v2, else v1; odd
//! bytes above 127: the rest as a binary frame) either is refused by the
//! decoder or decodes to a message that encodes back to itself; decoding
//! never panics. `node/tests/fuzz_phoenix_chain.rs` runs the same frames
//! through a session.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pubmesh_node::frontend::phoenix::wire::{Inbound, Message, Vsn};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    if first > 127 && first % 2 == 1 {
        if let Ok(m) = Message::decode_binary(Vsn::V2, rest) {
            let _ = Inbound::try_from(m);
        }
        return;
    }
    let vsn = if first % 2 == 0 { Vsn::V2 } else { Vsn::V1 };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if let Ok(m) = Message::decode_text(vsn, text) {
        let again = m.encode_text(vsn).expect("a decoded frame encodes");
        assert_eq!(Message::decode_text(vsn, &again).as_ref(), Ok(&m));
        let _ = Inbound::try_from(m);
    }
});
