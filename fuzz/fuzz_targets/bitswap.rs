//! The Bitswap message decoder: never panics on untrusted bytes; a message it accepts,
//! encoded again for 1.2.0, decodes to the same message (protobuf is not canonical, so the
//! bytes may differ).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use streamspace_transport::bitswap::message::{Message, Version};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(Bytes::copy_from_slice(data)) {
        let again = Message::decode(Bytes::from(m.encode(Version::V1_2)))
            .expect("what was accepted re-encodes to an accepted message");
        assert_eq!(again, m);
    }
});
