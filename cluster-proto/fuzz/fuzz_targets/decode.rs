//! Decoding arbitrary bytes must never panic, whatever decodes must survive
//! an encode/decode round trip unchanged, and the borrowed decoder must
//! agree with the owned one on every input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pubmesh_cluster_proto::{decode, decode_ref, encode};

fuzz_target!(|data: &[u8]| {
    let decoded = decode(data);
    assert_eq!(decode_ref(data).map(|d| d.into_envelope()), decoded);
    if let Ok(envelope) = decoded {
        let wire = encode(&envelope);
        assert_eq!(decode(&wire).as_ref(), Ok(&envelope));
        assert_eq!(encode(&envelope), wire, "encoding is deterministic");
    }
});
