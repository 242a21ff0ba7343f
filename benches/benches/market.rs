//! The marketplace: replaying 100,000 topic events into the catalog (one by one, and with
//! batched signature verification across threads), verifying licenses, and a purchase from
//! payment to released key on the embedded ledger, with the key service's record in memory
//! and in its redb file.
//!
//! `cargo bench -p streamspace-benches --bench market`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use streamspace_ledger::local::TREASURY;
use streamspace_ledger::{
    AccountId, Ledger, LedgerExt, LocalLedger, Operator, PublicKey, SystemClock, Timestamp,
    TopicMessage, Transaction, TransactionId, TxKind,
};
use streamspace_market::catalog::Catalog;
use streamspace_market::message::{License, Listing, ListingId, Message, Share, Signed, Terms};
use streamspace_market::service::{self, DeviceKey, KeyRequest, KeyService, check_license};
use streamspace_shard::crypto::ContentKey;

const EVENTS: usize = 100_000;
const LISTINGS: u64 = 100;

fn listing(n: u64, service: PublicKey) -> Listing {
    Listing {
        id: ListingId {
            seller: AccountId::new(1001),
            number: n,
        },
        version: 1,
        content: "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
            .parse()
            .expect("cid"),
        title: format!("Film {n}"),
        description: "A film.".into(),
        tags: vec!["film".into()],
        price: 100_000_000,
        terms: Terms {
            rental_secs: Some(48 * 3600),
            devices: 2,
            regions: vec![],
        },
        split: vec![
            Share {
                account: AccountId::new(1001),
                bps: 6_000,
            },
            Share {
                account: AccountId::new(1002),
                bps: 4_000,
            },
        ],
        royalty_bps: 0,
        key_service: service,
    }
}

fn license(i: usize, listing: ListingId) -> License {
    License {
        listing,
        version: 1,
        buyer: AccountId::new(5000 + i as u64),
        buyer_key: PublicKey([3; 32]),
        payment: TransactionId {
            payer: AccountId::new(5000 + i as u64),
            valid_start: Timestamp {
                secs: 1_700_000_000,
                nanos: i as u32,
            },
        },
        start: Timestamp {
            secs: 1_700_000_001,
            nanos: 0,
        },
        expiry: Some(Timestamp {
            secs: 1_700_172_801,
            nanos: 0,
        }),
        devices: 2,
        regions: vec![],
        nft: None,
        resale: None,
    }
}

fn market(c: &mut Criterion) {
    let seller = SigningKey::from_bytes(&[1; 32]);
    let keys = SigningKey::from_bytes(&[9; 32]);
    let service_key = PublicKey::from(&keys);
    let mut events: Vec<Vec<u8>> = (0..LISTINGS)
        .map(|n| {
            Message::List(listing(n, service_key))
                .sign(&seller)
                .encode()
        })
        .collect();
    for i in 0..EVENTS - LISTINGS as usize {
        let id = ListingId {
            seller: AccountId::new(1001),
            number: (i as u64) % LISTINGS,
        };
        events.push(Message::License(license(i, id)).sign(&keys).encode());
    }
    // As the ledger serves them: every message published by the seller's account.
    let published: Vec<TopicMessage> = events
        .iter()
        .enumerate()
        .map(|(i, e)| TopicMessage {
            sequence: i as u64 + 1,
            consensus: Timestamp::default(),
            message: e.clone().into(),
            running_hash: vec![0; 48],
            id: Some(TransactionId {
                payer: AccountId::new(1001),
                valid_start: Timestamp::default(),
            }),
            chunk: None,
        })
        .collect();

    let mut g = c.benchmark_group("market_replay_100k");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.sample_size(10);
    g.bench_function("one_by_one", |b| {
        b.iter(|| {
            let mut cat = Catalog::default();
            for m in &published {
                cat.apply(m).expect("valid");
            }
            cat
        })
    });
    g.bench_function("batched", |b| {
        b.iter(|| {
            let mut cat = Catalog::default();
            let r = cat.replay(&published);
            assert!(r.iter().all(Result::is_ok));
            cat
        })
    });
    g.finish();

    let licenses: Vec<&Vec<u8>> = events[LISTINGS as usize..][..1024].iter().collect();
    let now = Timestamp {
        secs: 1_700_000_100,
        nanos: 0,
    };
    let mut g = c.benchmark_group("licenses_1024");
    g.throughput(Throughput::Elements(1024));
    g.bench_function("check_one_by_one", |b| {
        b.iter(|| {
            licenses
                .iter()
                .all(|l| check_license(l, &service_key, now).is_ok())
        })
    });
    g.bench_function("verify_batched", |b| {
        let refs: Vec<&[u8]> = licenses.iter().map(|l| &l[..]).collect();
        b.iter(|| {
            Signed::decode_verified_many(&refs)
                .iter()
                .all(Result::is_ok)
        })
    });
    g.finish();

    // A purchase, from payment to released key, on the embedded ledger.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (ledger, buyer, l, topic) = rt.block_on(async {
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
        let mut ops = Vec::new();
        for s in 1..=3u8 {
            let k = SigningKey::from_bytes(&[s; 32]);
            let account = ledger
                .create_account(&treasury, PublicKey::from(&k), 1_000_000_000_000_000)
                .await
                .expect("account");
            ops.push(Operator { account, key: k });
        }
        let mut l = listing(1, service_key);
        l.id.seller = ops[0].account;
        l.split[0].account = ops[0].account;
        l.split[1].account = ops[1].account;
        // The listing on the market topic, published by its seller.
        let tx = Transaction::new(
            TransactionId::generate(ops[0].account, ledger.now()),
            TxKind::CreateTopic {
                memo: "market".into(),
                submit_key: None,
            },
        );
        let topic = ledger
            .execute(tx, &[&ops[0].key])
            .await
            .expect("topic")
            .topic
            .expect("topic id");
        let signed = Message::List(l.clone()).sign(&ops[0].key);
        service::publish(&ledger, &ops[0], topic, &signed)
            .await
            .expect("listed");
        (ledger, ops.pop().expect("buyer"), l, topic)
    });
    // In memory, and with the key service's record in a redb file (each license and device
    // committed before the service answers).
    let in_memory = KeyService::new(keys.clone(), topic);
    let persisted =
        KeyService::open(dir.path().join("keys.redb"), keys.clone(), topic).expect("key store");
    let device = DeviceKey::generate();
    let buyer_key = PublicKey::from(&buyer.key);
    let mut g = c.benchmark_group("purchase");
    for (name, mut service) in [
        ("payment_to_released_key", in_memory),
        ("payment_to_released_key_persisted", persisted),
    ] {
        service.add_content(l.id, ContentKey::generate());
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    rt.block_on(async {
                        let payment = service::pay(&ledger, &buyer, &l, &buyer_key)
                            .await
                            .expect("pay");
                        service
                            .issue(&ledger, payment, buyer_key)
                            .await
                            .expect("license");
                        let request =
                            KeyRequest::sign(&buyer.key, payment, [1; 16], device.public_bytes());
                        let wrapped = service.release(&request, ledger.now()).expect("key");
                        device.unwrap(&wrapped, &payment).expect("unwrap");
                    });
                    total += start.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, market);
criterion_main!(benches);
