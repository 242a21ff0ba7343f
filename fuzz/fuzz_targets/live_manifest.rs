//! Live manifests fed untrusted bytes: decoding and verifying never panic, what decodes
//! re-encodes to the same bytes, and a viewer's verifier refuses what does not verify.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamspace_live::{SignedManifest, Verifier};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = SignedManifest::decode(data) {
        assert_eq!(s.encode(), data);
        let _ = s.verify_signature();
        let mut v = Verifier::new(s.manifest().stream.clone());
        if v.accept(data).is_ok() {
            // The same bytes again are a replay.
            assert!(v.accept(data).is_err());
            let _ = v.media_playlist(|s| format!("{}.ts", s.seq));
        }
    }
});
