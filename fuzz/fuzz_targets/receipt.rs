//! Receipt, fraud-proof (alone and as a topic message) and receipts-message decoders: never
//! panic; what decodes re-encodes to the same bytes; a receipts message parses only in its own
//! domain.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamspace_ledger::PublicKey;
use streamspace_payments::fraud::{FRAUD_RECEIPTS_PER_MESSAGE, FraudProof};
use streamspace_payments::receipt::{DomainId, SignedReceipt};
use streamspace_payments::settle::{parse_receipts_message, receipts_messages};

/// The domain the seeds are signed in (`examples/seeds.rs`).
const SEED_DOMAIN: DomainId = DomainId([0x5a; 32]);

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = SignedReceipt::decode(data) {
        assert_eq!(&r.encode()[..], data);
        if r.verify_in(&SEED_DOMAIN).is_ok() {
            assert_eq!(r.body.domain, SEED_DOMAIN);
        }
    }
    if let Ok(p) = FraudProof::decode(data) {
        assert_eq!(p.encode(), data);
    }
    if let Ok(p) = FraudProof::parse_message(data) {
        if (1..=FRAUD_RECEIPTS_PER_MESSAGE).contains(&p.receipts.len()) {
            assert_eq!(&p.messages()[0][..], data);
        }
        let key = p.receipts.first().map_or(PublicKey([0; 32]), |r| r.payer_key);
        let _ = p.verify(&SEED_DOMAIN, &key, 0);
    }
    if let Ok(rs) = parse_receipts_message(data, &SEED_DOMAIN) {
        assert!(rs.iter().all(|r| r.body.domain == SEED_DOMAIN));
        assert_eq!(&receipts_messages(&rs)[0][..], data);
        // The same bytes are foreign to any other domain.
        assert!(parse_receipts_message(data, &DomainId([0; 32])).is_err());
    }
});
