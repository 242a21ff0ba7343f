//! Receipts signed and verified per second on one core (one by one and in batches), and a
//! period of 10,000 payer–payee pairs settled on the embedded ledger.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use streamspace_ledger::local::TREASURY;
use streamspace_ledger::{
    AccountId, Ledger, LedgerExt, LocalLedger, Operator, PublicKey, SystemClock, Transaction,
    TransactionId, TxKind,
};
use streamspace_payments::receipt::{
    Domain, DomainId, ENCODED_LEN, ReceiptBody, ReceiptSigner, SignedReceipt, verify_batch,
};
use streamspace_payments::settle::{Journal, Settler, lock_collateral};

fn receipts(c: &mut Criterion) {
    let key = SigningKey::from_bytes(&[1; 32]);
    let bodies: Vec<ReceiptBody> = (0..1024u64)
        .map(|i| ReceiptBody {
            domain: DomainId([7; 32]),
            payer: AccountId::new(1001),
            payee: AccountId::new(2000 + i),
            period: 1,
            amount: i * 10_000,
            shards: i,
        })
        .collect();
    let signed: Vec<SignedReceipt> = bodies.iter().map(|b| b.sign(&key)).collect();
    let mut g = c.benchmark_group("receipts_1024");
    g.throughput(Throughput::Elements(1024));
    g.bench_function("sign", |b| {
        b.iter(|| std::hint::black_box(bodies.iter().map(|x| x.sign(&key)).collect::<Vec<_>>()))
    });
    let signer = ReceiptSigner::new(&key);
    g.bench_function("sign_expanded_key", |b| {
        b.iter(|| std::hint::black_box(bodies.iter().map(|x| signer.sign(x)).collect::<Vec<_>>()))
    });
    g.bench_function("verify_one_by_one", |b| {
        b.iter(|| signed.iter().all(|r| r.verify().is_ok()))
    });
    g.bench_function("verify_batch", |b| {
        b.iter(|| verify_batch(&signed).expect("valid"))
    });
    g.bench_function("decode_and_verify_batch", |b| {
        let wire: Vec<[u8; ENCODED_LEN]> = signed.iter().map(SignedReceipt::encode).collect();
        b.iter(|| {
            let rs: Vec<SignedReceipt> = wire
                .iter()
                .map(|w| SignedReceipt::decode(w).expect("decode"))
                .collect();
            verify_batch(&rs).expect("valid")
        })
    });
    g.finish();
}

fn settlement(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let tk = SigningKey::from_bytes(&[200; 32]);
    let ledger = LocalLedger::open(
        dir.path().join("l.redb"),
        PublicKey::from(&tk),
        Arc::new(SystemClock),
    )
    .expect("ledger");
    let treasury = Operator {
        account: TREASURY,
        key: tk,
    };
    let (clearing, topic, payers, payees) = rt.block_on(async {
        let mk = |seed: u64, bal: i64| {
            let (l, t) = (ledger.clone(), treasury.clone());
            async move {
                let mut s = [0u8; 32];
                s[..8].copy_from_slice(&seed.to_le_bytes());
                let k = SigningKey::from_bytes(&s);
                Operator {
                    account: l
                        .create_account(&t, PublicKey::from(&k), bal)
                        .await
                        .expect("account"),
                    key: k,
                }
            }
        };
        let clearing = mk(1, 1_000_000_000_000).await;
        let id = TransactionId::generate(clearing.account, ledger.now());
        let tx = Transaction::new(
            id,
            TxKind::CreateTopic {
                memo: "settlement".into(),
                submit_key: None,
            },
        );
        let topic = ledger
            .execute(tx, &[&clearing.key])
            .await
            .expect("topic")
            .topic
            .expect("id");
        let mut payers = Vec::new();
        let mut payees = Vec::new();
        for i in 0..100 {
            payers.push(mk(100 + i, 1_000_000_000_000).await);
            payees.push(mk(1000 + i, 0).await);
        }
        (clearing, topic, payers, payees)
    });
    let domain = Domain::new("bench", "private", clearing.account, topic);
    let mut period = 0u64;
    let mut g = c.benchmark_group("settlement");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("close_period_10000_pairs", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                period += 1;
                let jdir = tempfile::tempdir().expect("tempdir");
                let journal = Journal::open(jdir.path().join("j.redb"), domain.id()).expect("journal");
                let mut collateral = BTreeMap::new();
                let mut rs = Vec::with_capacity(10_000);
                rt.block_on(async {
                    for p in &payers {
                        lock_collateral(&ledger, p, clearing.account, period, 1_000_000_000).await.expect("collateral");
                        collateral.insert(p.account, 1_000_000_000u64);
                    }
                });
                for (i, p) in payers.iter().enumerate() {
                    for (j, q) in payees.iter().enumerate() {
                        let shards = (i + j + 1) as u64;
                        rs.push(ReceiptBody { domain: domain.id(), payer: p.account, payee: q.account, period, amount: shards * 10_000, shards }.sign(&p.key));
                    }
                }
                journal.record(&rs).expect("record");
                let settler = Settler::new(ledger.clone(), journal, clearing.clone(), &domain).expect("settler");
                let start = Instant::now();
                let report = rt.block_on(settler.close(period, &collateral)).expect("settle");
                total += start.elapsed();
                if period == 1 {
                    eprintln!(
                        "settled {} receipts with {} transfers + 1 anchor message; {} tinybars moved, {} tinybars of fees ({:.4}% of value)",
                        report.receipts,
                        report.transfers,
                        report.paid_out,
                        report.fees,
                        report.fees as f64 * 100.0 / report.paid_out as f64
                    );
                }
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, receipts, settlement);
criterion_main!(benches);
