//! Writes a seed corpus of valid inputs for the targets whose inputs are signed, so the fuzzer
//! starts past the signature and layout checks it could not guess:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds` writes `fuzz/corpus/receipt/`.

use std::path::Path;

use ed25519_dalek::SigningKey;
use streamspace_ledger::AccountId;
use streamspace_payments::fraud::FraudProof;
use streamspace_payments::receipt::ReceiptBody;

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/receipt");
    std::fs::create_dir_all(&dir)?;
    let key = SigningKey::from_bytes(&[7; 32]);
    let bodies: Vec<ReceiptBody> = [(0, 0), (10_000, 1), (u64::MAX, u64::MAX), (1 << 40, 1 << 20)]
        .into_iter()
        .enumerate()
        .map(|(i, (amount, shards))| ReceiptBody {
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
    }
    println!("{} seeds in {}", 2 * signed.len() - 1, dir.display());
    Ok(())
}
