//! Writes a seed corpus of valid inputs for the targets whose inputs are signed, so the fuzzer
//! starts past the signature and layout checks it could not guess:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds` writes `fuzz/corpus/receipt/`
//! and `fuzz/corpus/market/`.

use std::path::Path;

use ed25519_dalek::SigningKey;
use streamspace_ledger::AccountId;
use streamspace_payments::fraud::FraudProof;
use streamspace_payments::receipt::{DomainId, ReceiptBody};

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/receipt");
    std::fs::create_dir_all(&dir)?;
    let key = SigningKey::from_bytes(&[7; 32]);
    let bodies: Vec<ReceiptBody> = [(0, 0), (10_000, 1), (u64::MAX, u64::MAX), (1 << 40, 1 << 20)]
        .into_iter()
        .enumerate()
        .map(|(i, (amount, shards))| ReceiptBody {
            // The domain `fuzz_targets/receipt.rs` parses receipts messages in.
            domain: DomainId([0x5a; 32]),
            payer: AccountId::new(1001),
            payee: AccountId::new(2000 + i as u64),
            period: i as u64,
            amount,
            shards,
        })
        .collect();
    let signed: Vec<_> = bodies.iter().map(|b| b.sign(&key)).collect();
    for (i, r) in signed.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-receipt-{i}")), r.encode())?;
    }
    for n in 2..=signed.len() {
        let proof = FraudProof { receipts: signed[..n].to_vec() };
        std::fs::write(dir.join(format!("seed-fraud-{n}")), proof.encode())?;
        for (i, m) in proof.messages().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-fraud-message-{n}-{i}")), m)?;
        }
    }
    let messages = streamspace_payments::settle::receipts_messages(&signed);
    for (i, m) in messages.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-receipts-message-{i}")), m)?;
    }
    println!("seeds in {}", dir.display());
    market()?;
    update()
}

fn update() -> std::io::Result<()> {
    use streamspace_update::agent::{Announcement, Report};
    use streamspace_update::release::{Release, WrappedKey};
    use streamspace_update::tuf::Bundle;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/update");
    std::fs::create_dir_all(&dir)?;
    let key = SigningKey::from_bytes(&[7; 32]);
    let other = SigningKey::from_bytes(&[8; 32]);
    let mut release = Release {
        product: "thermostat-fw".into(),
        version: "1.2.0-beta.1".into(),
        channel: "beta".into(),
        image: vec![1, 0x70, 0x12, 0x20, 1, 2, 3, 4],
        size: 8 << 20,
        sha256: [3; 32],
        min_version: Some("1.0.0".into()),
        keys: vec![],
    };
    let mut n = 0;
    let mut put = |name: &str, bytes: Vec<u8>| -> std::io::Result<()> {
        n += 1;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)
    };
    put("ticket-1", release.sign(&[&key]).expect("sign").encode())?;
    release.keys.push(WrappedKey { group: "eu".into(), encapped: vec![1; 32], sealed: vec![2; 64] });
    put("ticket-2", release.sign(&[&key, &other]).expect("sign").encode())?;
    let mut files = std::collections::BTreeMap::new();
    files.insert("timestamp.json".to_owned(), br#"{"signed":{"_type":"timestamp","version":3},"signatures":[]}"#.to_vec());
    files.insert("2.root.json".to_owned(), b"{}".to_vec());
    let bundle = Bundle::new(files).expect("bundle");
    put("bundle", bundle.encode())?;
    put("announce-bundle", Announcement::Bundle(bundle).encode())?;
    put("announce-request", Announcement::Request.encode())?;
    put(
        "announce-report",
        Announcement::Report(Report { device: "device-007".into(), version: "1.2.0".into(), error: Some("image: digest".into()) }).encode(),
    )?;
    println!("{n} seeds in {}", dir.display());
    Ok(())
}

fn market() -> std::io::Result<()> {
    use streamspace_ledger::{PublicKey, Timestamp, TransactionId};
    use streamspace_market::message::{License, Listing, ListingId, Message, RevokeReason, Share, Terms};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/market");
    std::fs::create_dir_all(&dir)?;
    let seller = SigningKey::from_bytes(&[1; 32]);
    let id = ListingId { seller: AccountId::new(1001), number: 1 };
    let listing = Listing {
        id,
        version: 1,
        content: "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o".parse().expect("cid"),
        title: "Harbour".into(),
        description: "A film.".into(),
        tags: vec!["film".into()],
        price: 100_000_000,
        terms: Terms { rental_secs: Some(3600), devices: 2, regions: vec!["PT".into()] },
        split: vec![
            Share { account: AccountId::new(1001), bps: 6_000 },
            Share { account: AccountId::new(1002), bps: 4_000 },
        ],
        royalty_bps: 0,
        key_service: PublicKey([7; 32]),
    };
    let payment = TransactionId { payer: AccountId::new(1003), valid_start: Timestamp { secs: 5, nanos: 1 } };
    let license = License {
        listing: id,
        version: 1,
        buyer: AccountId::new(1003),
        buyer_key: PublicKey([3; 32]),
        payment,
        start: Timestamp { secs: 6, nanos: 0 },
        expiry: Some(Timestamp { secs: 3606, nanos: 0 }),
        devices: 2,
        regions: vec![],
        nft: None,
        resale: None,
    };
    let messages = [
        Message::List(listing.clone()),
        Message::Update(Listing { version: 2, ..listing }),
        Message::Withdraw { listing: id, version: 3 },
        Message::License(license),
        Message::Revoke { payment, reason: RevokeReason::Disputed },
    ];
    for (i, m) in messages.into_iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i}")), m.sign(&seller).encode())?;
    }
    println!("5 seeds in {}", dir.display());
    Ok(())
}
