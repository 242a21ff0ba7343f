//! Receipt, fraud-proof and settlement-topic message decoders: never panic; what decodes
//! re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamspace_payments::fraud::FraudProof;
use streamspace_payments::receipt::SignedReceipt;
use streamspace_payments::settle::{parse_receipts_message, receipts_messages};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = SignedReceipt::decode(data) {
        assert_eq!(&r.encode()[..], data);
        let _ = r.verify();
    }
    if let Ok(p) = FraudProof::decode(data) {
        assert_eq!(p.encode(), data);
    }
    if let Ok(rs) = parse_receipts_message(data) {
        assert_eq!(&receipts_messages(&rs)[0][..], data);
    }
});
