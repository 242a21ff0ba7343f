//! Embedded ledger throughput: durable transfers per second with group commit (Hedera's own
//! network throttle, about 10,000 TPS, is the yardstick) and topic reads of 100,000 messages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use streamspace_ledger::local::TREASURY;
use streamspace_ledger::{
    AccountId, Ledger, LocalLedger, Operator, PublicKey, SystemClock, Timestamp, TopicId,
    Transaction, TransactionId, TxKind,
};

const BATCH: usize = 4000;

fn setup() -> (
    tempfile::TempDir,
    LocalLedger,
    Operator,
    tokio::runtime::Runtime,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::from_bytes(&[7; 32]);
    let ledger = LocalLedger::open(
        dir.path().join("bench.redb"),
        PublicKey::from(&key),
        Arc::new(SystemClock),
    )
    .expect("open");
    (
        dir,
        ledger,
        Operator {
            account: TREASURY,
            key,
        },
        rt,
    )
}

fn transfers(c: &mut Criterion) {
    let (_dir, ledger, treasury, rt) = setup();
    let mut g = c.benchmark_group("local_ledger");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    let mut base = ledger.now().as_nanos() - 5_000_000_000;
    g.bench_function("durable_transfers_4000_concurrent", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let txs: Vec<_> = (0..BATCH)
                    .map(|_| {
                        base += 1;
                        let id = TransactionId {
                            payer: treasury.account,
                            valid_start: Timestamp::from_nanos(base),
                        };
                        Transaction::new(
                            id,
                            TxKind::Transfer {
                                hbar: vec![(treasury.account, -1), (AccountId::new(3), 1)],
                                nfts: vec![],
                            },
                        )
                    })
                    .collect();
                let start = Instant::now();
                rt.block_on(async {
                    let tasks: Vec<_> = txs
                        .into_iter()
                        .map(|tx| {
                            let (l, k) = (ledger.clone(), treasury.key.clone());
                            tokio::spawn(async move { l.execute(tx, &[&k]).await })
                        })
                        .collect();
                    for t in tasks {
                        t.await.expect("task").expect("transfer");
                    }
                });
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
}

fn topic_reads(c: &mut Criterion) {
    let (_dir, ledger, treasury, rt) = setup();
    let topic: TopicId = rt.block_on(async {
        let id = TransactionId::generate(treasury.account, ledger.now());
        let tx = Transaction::new(
            id,
            TxKind::CreateTopic {
                memo: "bench".into(),
                submit_key: None,
            },
        );
        ledger
            .execute(tx, &[&treasury.key])
            .await
            .expect("topic")
            .topic
            .expect("topic id")
    });
    rt.block_on(async {
        let mut base = ledger.now().as_nanos() - 10_000_000_000;
        for _ in 0..25 {
            let tasks: Vec<_> = (0..4000)
                .map(|i| {
                    base += 1;
                    let id = TransactionId {
                        payer: treasury.account,
                        valid_start: Timestamp::from_nanos(base),
                    };
                    let tx = Transaction::new(
                        id,
                        TxKind::SubmitMessage {
                            topic,
                            message: Bytes::from(format!(
                                "event {i}: 64 bytes of marketplace payload, padded to size...."
                            )),
                            chunk: None,
                        },
                    );
                    let (l, k) = (ledger.clone(), treasury.key.clone());
                    tokio::spawn(async move { l.execute(tx, &[&k]).await })
                })
                .collect();
            for t in tasks {
                t.await.expect("task").expect("submit");
            }
        }
    });
    let mut g = c.benchmark_group("local_ledger");
    g.throughput(Throughput::Elements(100_000));
    g.sample_size(10);
    g.bench_function("topic_read_100k_messages", |b| {
        b.iter(|| {
            let msgs = rt
                .block_on(ledger.topic_messages(topic, 1, 100_000))
                .expect("read");
            assert_eq!(msgs.len(), 100_000);
        })
    });
    g.finish();
}

/// One transfer at a time (latency) and 64 in flight (throughput), in-process and through the
/// official SDK over loopback gRPC to a node serving the same embedded ledger.
fn latency(c: &mut Criterion) {
    let (_dir, ledger, treasury, rt) = setup();
    let mut g = c.benchmark_group("ledger_backends");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(8));
    let dest = AccountId::new(3);
    g.bench_function("transfer_latency_in_process", |b| {
        b.iter(|| {
            rt.block_on(streamspace_ledger::LedgerExt::transfer(
                &ledger, &treasury, dest, 1,
            ))
            .expect("transfer")
        })
    });
    #[cfg(feature = "hedera")]
    {
        use streamspace_ledger::hedera::{HederaLedger, server::LoopbackNode};
        let node = rt
            .block_on(LoopbackNode::start(ledger.clone()))
            .expect("node");
        let sdk = HederaLedger::loopback(node.node, node.mirror, &treasury).expect("sdk");
        g.bench_function("transfer_latency_sdk_loopback", |b| {
            b.iter(|| {
                rt.block_on(streamspace_ledger::LedgerExt::transfer(
                    &sdk, &treasury, dest, 1,
                ))
                .expect("transfer")
            })
        });
        g.throughput(Throughput::Elements(64));
        g.bench_function("transfers_64_concurrent_sdk_loopback", |b| {
            b.iter(|| {
                rt.block_on(async {
                    let tasks: Vec<_> = (0..64)
                        .map(|_| {
                            let (l, t) = (sdk.clone(), treasury.clone());
                            tokio::spawn(async move {
                                streamspace_ledger::LedgerExt::transfer(&l, &t, dest, 1).await
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.expect("task").expect("transfer");
                    }
                })
            })
        });
        g.bench_function("transfers_64_concurrent_in_process", |b| {
            b.iter(|| {
                rt.block_on(async {
                    let tasks: Vec<_> = (0..64)
                        .map(|_| {
                            let (l, t) = (ledger.clone(), treasury.clone());
                            tokio::spawn(async move {
                                streamspace_ledger::LedgerExt::transfer(&l, &t, dest, 1).await
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.expect("task").expect("transfer");
                    }
                })
            })
        });
        drop(node);
    }
    g.finish();
}

criterion_group!(benches, transfers, topic_reads, latency);
criterion_main!(benches);
