//! Receipt and fraud-proof decoders: never panic; what decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamspace_payments::fraud::FraudProof;
use streamspace_payments::receipt::SignedReceipt;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = SignedReceipt::decode(data) {
        assert_eq!(&r.encode()[..], data);
        let _ = r.verify();
    }
    if let Ok(p) = FraudProof::decode(data) {
        assert_eq!(p.encode(), data);
    }
});
