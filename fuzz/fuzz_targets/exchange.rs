//! Exchange protocol and allowlist decoders: never panic; what decodes re-encodes to the same
//! bytes (the encodings are canonical).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use streamspace_transport::allowlist::SignedAllowlist;
use streamspace_transport::message::{Request, Response};

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(r) = Request::decode(bytes.clone()) {
        assert_eq!(r.encode(), bytes);
    }
    if let Ok(r) = Response::decode(bytes.clone()) {
        assert_eq!(r.encode(), bytes);
    }
    if let Ok(l) = SignedAllowlist::decode(data) {
        assert_eq!(l.encode(), bytes);
    }
});
