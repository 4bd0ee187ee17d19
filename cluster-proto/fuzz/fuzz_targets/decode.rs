//! Decoding arbitrary bytes must never panic, and whatever decodes must
//! survive an encode/decode round trip unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pubmesh_cluster_proto::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = decode(data) {
        let wire = encode(&envelope);
        assert_eq!(decode(&wire).as_ref(), Ok(&envelope));
        assert_eq!(encode(&envelope), wire, "encoding is deterministic");
    }
});
