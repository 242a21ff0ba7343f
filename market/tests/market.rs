//! The marketplace end to end on the embedded ledger: list, replay, buy, license, release the
//! key to devices and watch; and every refusal, with the state unchanged.

use std::sync::Arc;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use futures::TryStreamExt;
use proptest::prelude::*;
use streamspace_ledger::local::TREASURY;
use streamspace_ledger::{
    AccountId, Ledger, LedgerExt, LocalLedger, Operator, PublicKey, SystemClock, Timestamp,
    TopicMessage, Transaction, TransactionId, TxKind,
};
use streamspace_market::catalog::{Applied, Catalog, MarketError};
use streamspace_market::message::{
    DecodeError, License, Listing, ListingId, Message, RevokeReason, Share, Signed, Terms,
};
use streamspace_market::service::{
    self, DeviceKey, KeyRequest, KeyService, NftClass, ServiceError,
};
use streamspace_shard::crypto::{ContentKey, EncryptingReader, cat_decrypted, encrypted_options};
use streamspace_shard::export::ByteRange;
use streamspace_shard::import::ImportOptions;
use streamspace_shard::store::{MemoryStore, add_reader};

fn key(s: u8) -> SigningKey {
    SigningKey::from_bytes(&[s; 32])
}

struct World {
    _dir: tempfile::TempDir,
    ledger: LocalLedger,
    seller: Operator,
    cowriter: Operator,
    buyer: Operator,
    buyer2: Operator,
    topic: streamspace_ledger::TopicId,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let tk = key(200);
    let ledger = LocalLedger::open(
        dir.path().join("l.redb"),
        PublicKey::from(&tk),
        Arc::new(SystemClock),
    )
    .unwrap();
    let treasury = Operator {
        account: TREASURY,
        key: tk,
    };
    let mut ops = Vec::new();
    for seed in 1..=4 {
        let k = key(seed);
        let account = ledger
            .create_account(&treasury, PublicKey::from(&k), 100_000_000_000)
            .await
            .unwrap();
        ops.push(Operator { account, key: k });
    }
    let id = TransactionId::generate(ops[0].account, ledger.now());
    let tx = Transaction::new(
        id,
        TxKind::CreateTopic {
            memo: "market".into(),
            submit_key: None,
        },
    );
    let topic = ledger
        .execute(tx, &[&ops[0].key])
        .await
        .unwrap()
        .topic
        .unwrap();
    let buyer2 = ops.pop().unwrap();
    let buyer = ops.pop().unwrap();
    let cowriter = ops.pop().unwrap();
    let seller = ops.pop().unwrap();
    World {
        _dir: dir,
        ledger,
        seller,
        cowriter,
        buyer,
        buyer2,
        topic,
    }
}

fn listing(w: &World, service: PublicKey, content: cid::Cid) -> Listing {
    Listing {
        id: ListingId {
            seller: w.seller.account,
            number: 7,
        },
        version: 1,
        content,
        title: "Night Train to Lisbon".into(),
        description: "A film in three parts.".into(),
        tags: vec!["film".into(), "drama".into()],
        price: 250_000_001,
        terms: Terms {
            rental_secs: Some(48 * 3600),
            devices: 2,
            regions: vec!["PT".into(), "ES".into()],
        },
        split: vec![
            Share {
                account: w.seller.account,
                bps: 7_000,
            },
            Share {
                account: w.cowriter.account,
                bps: 3_000,
            },
        ],
        royalty_bps: 0,
        key_service: service,
    }
}

async fn publish(w: &World, msg: &Signed) {
    w.ledger
        .submit_message(&w.seller, w.topic, Bytes::from(msg.encode()), None)
        .await
        .unwrap();
}

/// Rebuilds the catalog from the topic, one message at a time and in batches: both agree.
async fn replay(w: &World) -> (Catalog, Vec<Result<Applied, MarketError>>) {
    let msgs = w.ledger.topic_messages(w.topic, 1, 10_000).await.unwrap();
    let mut c = Catalog::default();
    let mut out = Vec::new();
    for m in &msgs {
        out.push(c.apply(m));
    }
    let mut batched = Catalog::default();
    let again = batched.replay(&msgs);
    assert_eq!(again, out);
    assert_eq!(batched.income(), c.income());
    (c, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_buy_license_release_and_watch() {
    let w = world().await;
    // The publisher encrypts and stores the film, and lists it.
    let store = MemoryStore::new();
    let film: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    let content_key = ContentKey::generate();
    let root = add_reader(
        Some(&store),
        EncryptingReader::new(std::io::Cursor::new(film.clone()), content_key.clone()),
        encrypted_options(ImportOptions::default()),
    )
    .await
    .unwrap()
    .cid;
    let mut keys = KeyService::new(key(9), w.topic);
    let l = listing(&w, keys.public(), root);
    keys.add_content(l.id, content_key);
    let listed = service::list(&store, &w.seller.key, l.clone())
        .await
        .unwrap();
    publish(&w, &listed).await;

    // The buyer finds it by replaying the topic.
    let (catalog, applied) = replay(&w).await;
    assert_eq!(applied, vec![Ok(Applied::Listed(l.id))]);
    let found: Vec<_> = catalog.search("lisbon").collect();
    assert_eq!(found, vec![&l]);
    assert_eq!(catalog.search("drama").count(), 1);
    assert_eq!(catalog.priced(0, 250_000_000).count(), 0);

    // One atomic transfer pays both rights holders their shares.
    let before = (
        w.ledger.balance(w.seller.account).await.unwrap(),
        w.ledger.balance(w.cowriter.account).await.unwrap(),
    );
    let payment = service::pay(&w.ledger, &w.buyer, &l, &PublicKey::from(&w.buyer.key))
        .await
        .unwrap();
    assert_eq!(
        w.ledger.balance(w.seller.account).await.unwrap() - before.0,
        175_000_001,
        "70% and the rounding remainder"
    );
    assert_eq!(
        w.ledger.balance(w.cowriter.account).await.unwrap() - before.1,
        75_000_000
    );
    let license = keys
        .issue(&w.ledger, payment, PublicKey::from(&w.buyer.key))
        .await
        .unwrap();
    publish(&w, &license).await;
    // Asked twice for one payment, the service answers with the same license; bound to
    // another key, with none.
    let again = keys
        .issue(&w.ledger, payment, PublicKey::from(&w.buyer.key))
        .await
        .unwrap();
    assert_eq!(again.encode(), license.encode());
    assert!(matches!(
        keys.issue(&w.ledger, payment, PublicKey::from(&key(66)))
            .await,
        Err(ServiceError::NotCommitted(_))
    ));

    // The key, wrapped to the buyer's device, decrypts the film fetched from anyone.
    let phone = DeviceKey::generate();
    let request = KeyRequest::sign_in(
        &w.buyer.key,
        payment,
        [1; 16],
        phone.public_bytes(),
        Some(*b"PT"),
    );
    let now = w.ledger.now();
    let wrapped = keys.release(&request, now).unwrap();
    let content_key = phone.unwrap(&wrapped, &payment).unwrap();
    let watched: Vec<Bytes> = cat_decrypted(&store, root, &content_key, ByteRange::ALL)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(watched.concat(), film);
    // Outside the license's regions, or with no region declared, no key.
    for region in [Some(*b"FR"), None] {
        assert!(matches!(
            keys.release(
                &KeyRequest::sign_in(&w.buyer.key, payment, [1; 16], phone.public_bytes(), region),
                now
            ),
            Err(ServiceError::OutOfRegion(_))
        ));
    }
    // Another device cannot open what was wrapped to the phone.
    assert!(DeviceKey::generate().unwrap(&wrapped, &payment).is_err());

    // A second device is within the limit; a third is not; the phone again is fine.
    let tv = DeviceKey::generate();
    keys.release(
        &KeyRequest::sign_in(
            &w.buyer.key,
            payment,
            [2; 16],
            tv.public_bytes(),
            Some(*b"PT"),
        ),
        now,
    )
    .unwrap();
    let laptop = DeviceKey::generate();
    assert!(matches!(
        keys.release(
            &KeyRequest::sign_in(
                &w.buyer.key,
                payment,
                [3; 16],
                laptop.public_bytes(),
                Some(*b"PT")
            ),
            now
        ),
        Err(ServiceError::TooManyDevices(_, 2))
    ));
    keys.release(&request, now).unwrap();
    // Someone else holding the license bytes cannot ask for the key.
    assert!(matches!(
        keys.release(
            &KeyRequest::sign_in(
                &key(66),
                payment,
                [1; 16],
                phone.public_bytes(),
                Some(*b"PT")
            ),
            now
        ),
        Err(ServiceError::NotTheBuyer(_))
    ));
    // The rental ends after 48 hours.
    assert!(matches!(
        keys.release(&request, now.plus_secs(48 * 3600 + 1)),
        Err(ServiceError::Expired(_))
    ));
    // A license signed by anyone else is not honoured, nor a payment the service did not
    // license.
    let Message::License(lic) = &license.message else {
        panic!()
    };
    let other = TransactionId::generate(w.buyer.account, now);
    let forged = Message::License(License {
        payment: other,
        ..lic.clone()
    })
    .sign(&key(66));
    assert!(matches!(
        service::check_license(&forged.encode(), &keys.public(), now),
        Err(ServiceError::BadLicense(_))
    ));
    publish(&w, &forged).await;
    keys.sync(&w.ledger).await.unwrap();
    assert!(matches!(
        keys.release(
            &KeyRequest::sign_in(
                &w.buyer.key,
                other,
                [1; 16],
                phone.public_bytes(),
                Some(*b"PT")
            ),
            now
        ),
        Err(ServiceError::NotIssued(_))
    ));

    // The audit view, rebuilt by anyone: one sale, each holder's income.
    let (catalog, applied) = replay(&w).await;
    assert_eq!(applied[1], Ok(Applied::Licensed(payment)));
    let income = catalog.income();
    assert_eq!(income[&w.seller.account].earned, 175_000_001);
    assert_eq!(income[&w.cowriter.account].earned, 75_000_000);

    // A refund revokes the license: no more keys, the audit shows it.
    let revoke = keys
        .refund(&w.ledger, &w.seller, payment, l.price)
        .await
        .unwrap();
    publish(&w, &revoke).await;
    assert!(matches!(
        keys.release(&request, now),
        Err(ServiceError::Revoked(_))
    ));
    // A revoked license is not refunded twice.
    let buyer_before = w.ledger.balance(w.buyer.account).await.unwrap();
    assert!(matches!(
        keys.refund(&w.ledger, &w.seller, payment, l.price).await,
        Err(ServiceError::Revoked(_))
    ));
    assert_eq!(
        w.ledger.balance(w.buyer.account).await.unwrap(),
        buyer_before
    );
    let (catalog, _) = replay(&w).await;
    assert!(matches!(
        catalog.sale(&payment).unwrap().revoked,
        Some(RevokeReason::Refunded(_))
    ));
    assert_eq!(catalog.income()[&w.seller.account].refunded, 175_000_001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payments_get_no_license() {
    let w = world().await;
    let store = MemoryStore::new();
    let root = add_reader(
        Some(&store),
        std::io::Cursor::new(b"film".to_vec()),
        ImportOptions::default(),
    )
    .await
    .unwrap()
    .cid;
    let mut keys = KeyService::new(key(9), w.topic);
    let l = listing(&w, keys.public(), root);
    publish(
        &w,
        &service::list(&store, &w.seller.key, l.clone())
            .await
            .unwrap(),
    )
    .await;
    let buyer_key = PublicKey::from(&w.buyer.key);
    let transfer = |hbar: Vec<(AccountId, i64)>, memo: String| {
        let id = TransactionId::generate(w.buyer.account, w.ledger.now());
        let mut tx = Transaction::new(
            id,
            TxKind::Transfer {
                hbar,
                nfts: Vec::new(),
            },
        );
        tx.memo = memo;
        (id, tx)
    };
    // Underpaid: the co-writer's share short by one tinybar.
    let (id, tx) = transfer(
        vec![
            (w.buyer.account, -250_000_000),
            (w.seller.account, 175_000_001),
            (w.cowriter.account, 74_999_999),
        ],
        service::memo(l.id, 1, &buyer_key),
    );
    w.ledger.execute(tx, &[&w.buyer.key]).await.unwrap();
    assert!(matches!(
        keys.issue(&w.ledger, id, buyer_key).await,
        Err(ServiceError::Underpaid { .. })
    ));
    // The wrong split: everything to the seller.
    let (id, tx) = transfer(
        vec![
            (w.buyer.account, -250_000_001),
            (w.seller.account, 250_000_001),
        ],
        service::memo(l.id, 1, &buyer_key),
    );
    w.ledger.execute(tx, &[&w.buyer.key]).await.unwrap();
    assert!(matches!(
        keys.issue(&w.ledger, id, buyer_key).await,
        Err(ServiceError::Underpaid { .. })
    ));
    // A payment for a listing never published, and for a version never published.
    let other = Listing {
        id: ListingId {
            seller: w.seller.account,
            number: 8,
        },
        ..l.clone()
    };
    let paid_other = service::pay(&w.ledger, &w.buyer, &other, &PublicKey::from(&w.buyer.key))
        .await
        .unwrap();
    assert!(matches!(
        keys.issue(&w.ledger, paid_other, buyer_key).await,
        Err(ServiceError::UnknownListing(_, 1))
    ));
    let v2 = Listing {
        version: 2,
        ..l.clone()
    };
    let paid_v2 = service::pay(&w.ledger, &w.buyer, &v2, &PublicKey::from(&w.buyer.key))
        .await
        .unwrap();
    assert!(matches!(
        keys.issue(&w.ledger, paid_v2, buyer_key).await,
        Err(ServiceError::UnknownListing(_, 2))
    ));
    // A transfer whose memo names no listing.
    let (id, tx) = transfer(
        vec![
            (w.buyer.account, -250_000_001),
            (w.seller.account, 175_000_001),
            (w.cowriter.account, 75_000_000),
        ],
        "for the film".into(),
    );
    w.ledger.execute(tx, &[&w.buyer.key]).await.unwrap();
    assert!(matches!(
        keys.issue(&w.ledger, id, buyer_key).await,
        Err(ServiceError::WrongListing(_))
    ));
    // A listing of another key service.
    let foreign = Listing {
        id: ListingId {
            seller: w.seller.account,
            number: 9,
        },
        key_service: PublicKey::from(&key(77)),
        ..l.clone()
    };
    publish(
        &w,
        &service::list(&store, &w.seller.key, foreign.clone())
            .await
            .unwrap(),
    )
    .await;
    let paid_foreign = service::pay(
        &w.ledger,
        &w.buyer,
        &foreign,
        &PublicKey::from(&w.buyer.key),
    )
    .await
    .unwrap();
    assert!(matches!(
        keys.issue(&w.ledger, paid_foreign, buyer_key).await,
        Err(ServiceError::NotMine(_))
    ));
    // None of these payments was licensed.
    assert_eq!(keys.catalog().sales().count(), 0);
    for p in [paid_other, paid_v2, paid_foreign] {
        assert!(keys.license(&p).is_none());
    }
    // A buyer who cannot pay moves nothing.
    let poor = Listing {
        price: 1 << 62,
        ..l.clone()
    };
    let before = w.ledger.balance(w.buyer.account).await.unwrap();
    assert!(
        service::pay(&w.ledger, &w.buyer, &poor, &PublicKey::from(&w.buyer.key))
            .await
            .is_err()
    );
    assert!(w.ledger.balance(w.buyer.account).await.unwrap() >= before - 200_000);
    // Content that is not in the store cannot be listed.
    let missing = Listing {
        content: "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
            .parse()
            .unwrap(),
        ..l.clone()
    };
    assert!(matches!(
        service::list(&store, &w.seller.key, missing).await,
        Err(ServiceError::ContentMissing(_))
    ));
    // A listing whose split does not add up is refused before signing.
    let mut bad_split = l.clone();
    bad_split.split[1].bps = 2_999;
    assert!(matches!(
        service::list(&store, &w.seller.key, bad_split).await,
        Err(ServiceError::Invalid(_))
    ));
}

/// A message as the ledger serves it, its submission paid for by the seller's account 0.0.1001.
fn by_seller(bytes: &[u8]) -> TopicMessage {
    TopicMessage {
        sequence: 1,
        consensus: Timestamp::default(),
        message: Bytes::copy_from_slice(bytes),
        running_hash: vec![0; 48],
        id: Some(TransactionId {
            payer: AccountId::new(1001),
            valid_start: Timestamp::default(),
        }),
        chunk: None,
    }
}

#[test]
fn the_catalog_refuses_what_it_must_and_stays_unchanged() {
    let seller = key(1);
    let root: cid::Cid = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
        .parse()
        .unwrap();
    let service_key = key(9);
    let l = Listing {
        id: ListingId {
            seller: AccountId::new(1001),
            number: 1,
        },
        version: 1,
        content: root,
        title: "Harbour".into(),
        description: String::new(),
        tags: vec![],
        price: 100,
        terms: Terms {
            rental_secs: None,
            devices: 1,
            regions: vec![],
        },
        split: vec![Share {
            account: AccountId::new(1001),
            bps: 10_000,
        }],
        royalty_bps: 0,
        key_service: PublicKey::from(&service_key),
    };
    let mut c = Catalog::default();
    let list = Message::List(l.clone()).sign(&seller).encode();
    assert_eq!(c.apply(&by_seller(&list)), Ok(Applied::Listed(l.id)));
    let license = License {
        listing: l.id,
        version: 1,
        buyer: AccountId::new(1003),
        buyer_key: PublicKey::from(&key(3)),
        payment: TransactionId {
            payer: AccountId::new(1003),
            valid_start: Timestamp { secs: 5, nanos: 0 },
        },
        start: Timestamp { secs: 6, nanos: 0 },
        expiry: None,
        devices: 1,
        regions: vec![],
        nft: None,
        resale: None,
    };
    let update = |version: u32, price: u64| {
        Message::Update(Listing {
            version,
            price,
            ..l.clone()
        })
    };
    let mut forged = update(2, 1).sign(&seller).encode();
    let n = forged.len();
    forged[n - 1] ^= 1;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (forged, "forged"),
        (list.clone(), "replayed listing"),
        (update(2, 1).sign(&key(2)).encode(), "update by another key"),
        (update(1, 1).sign(&seller).encode(), "stale version"),
        (
            Message::Update(Listing {
                version: 2,
                content: "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
                    .parse()
                    .unwrap(),
                ..l.clone()
            })
            .sign(&seller)
            .encode(),
            "content changed",
        ),
        (
            Message::License(license.clone()).sign(&seller).encode(),
            "license not by the key service",
        ),
        (
            Message::License(License {
                version: 9,
                ..license.clone()
            })
            .sign(&service_key)
            .encode(),
            "license for a version that never was",
        ),
        (
            Message::Revoke {
                payment: license.payment,
                reason: RevokeReason::Disputed,
            }
            .sign(&service_key)
            .encode(),
            "revoking an unknown license",
        ),
        (vec![0; 10], "garbage"),
    ];
    for (bytes, what) in &cases {
        assert!(c.apply(&by_seller(bytes)).is_err(), "{what} was accepted");
    }
    assert_eq!(c.rejected(), cases.len() as u64);
    // In a batch, the same refusals, in the same places.
    let mut b = Catalog::default();
    let mut all = vec![by_seller(&list)];
    all.extend(cases.iter().map(|(b, _)| by_seller(b)));
    let results = b.replay(&all);
    assert!(results[0].is_ok());
    assert!(results[1..].iter().all(|r| r.is_err()));
    assert_eq!(c.listing(l.id).unwrap().listing, l, "state unchanged");
    assert_eq!(c.sales().count(), 0);

    let lic = Message::License(license.clone())
        .sign(&service_key)
        .encode();
    assert!(c.apply(&by_seller(&lic)).is_ok());
    assert_eq!(
        c.apply(&by_seller(&lic)),
        Err(MarketError::Replayed(license.payment))
    );
    assert!(
        c.apply(&by_seller(&update(2, 50).sign(&seller).encode()))
            .is_ok()
    );
    assert_eq!(c.priced(50, 50).count(), 1);
    let withdraw = Message::Withdraw {
        listing: l.id,
        version: 3,
    }
    .sign(&seller)
    .encode();
    assert!(c.apply(&by_seller(&withdraw)).is_ok());
    assert_eq!(c.on_offer().count(), 0);
    assert_eq!(
        c.apply(&by_seller(&update(4, 60).sign(&seller).encode())),
        Err(MarketError::Withdrawn(l.id))
    );
    // The sale made before the withdrawal still stands.
    assert_eq!(c.income()[&AccountId::new(1001)].earned, 100);
}

#[test]
fn listing_rules() {
    let base = Listing {
        id: ListingId {
            seller: AccountId::new(1001),
            number: 1,
        },
        version: 1,
        content: "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
            .parse()
            .unwrap(),
        title: "t".into(),
        description: String::new(),
        tags: vec![],
        price: 10,
        terms: Terms {
            rental_secs: Some(1),
            devices: 1,
            regions: vec!["FR".into()],
        },
        split: vec![
            Share {
                account: AccountId::new(1),
                bps: 5_000,
            },
            Share {
                account: AccountId::new(2),
                bps: 5_000,
            },
        ],
        royalty_bps: 0,
        key_service: PublicKey([0; 32]),
    };
    assert!(base.validate().is_ok());
    let bad = |f: &dyn Fn(&mut Listing)| {
        let mut l = base.clone();
        f(&mut l);
        l.validate().unwrap_err()
    };
    for e in [
        bad(&|l| l.version = 0),
        bad(&|l| l.title = String::new()),
        bad(&|l| l.title = "x".repeat(201)),
        bad(&|l| l.terms.devices = 0),
        bad(&|l| l.terms.rental_secs = Some(0)),
        bad(&|l| l.terms.regions = vec!["fr".into()]),
        bad(&|l| l.split[0].account = AccountId::new(2)),
        bad(&|l| l.split[0].bps = 4_999),
        bad(&|l| l.split.clear()),
        bad(&|l| l.tags = vec!["x".into(); 17]),
    ] {
        assert!(matches!(e, DecodeError::Field { .. }), "{e}");
    }
    // Odd splits round down; the first holder gets the remainder; the total is the price.
    let l = Listing {
        price: 7,
        split: vec![
            Share {
                account: AccountId::new(1),
                bps: 3_333,
            },
            Share {
                account: AccountId::new(2),
                bps: 3_333,
            },
            Share {
                account: AccountId::new(3),
                bps: 3_334,
            },
        ],
        ..base
    };
    let p = l.payouts();
    assert_eq!(p.iter().map(|(_, a)| a).sum::<u64>(), 7);
    assert_eq!(p[0].1, 3);
}

proptest! {
    #[test]
    fn signed_messages_round_trip(
        title in "[a-zA-Z ]{1,40}",
        price in any::<u64>(),
        number in any::<u64>(),
        rental in prop::option::of(1u64..1_000_000),
        bps in 1u16..10_000,
    ) {
        let l = Listing {
            id: ListingId { seller: AccountId::new(1001), number },
            version: 1,
            content: "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o".parse().unwrap(),
            title,
            description: String::new(),
            tags: vec!["tag".into()],
            price,
            terms: Terms { rental_secs: rental, devices: 3, regions: vec![] },
            split: vec![
                Share { account: AccountId::new(1), bps },
                Share { account: AccountId::new(2), bps: 10_000 - bps },
            ],
            royalty_bps: 0,
            key_service: PublicKey([7; 32]),
        };
        let m = Message::List(l).sign(&key(4));
        let back = Signed::decode(&m.encode()).unwrap();
        back.verify().unwrap();
        prop_assert_eq!(back, m);
    }

    #[test]
    fn listing_ids_and_memos_round_trip(
        shard in any::<u64>(),
        num in any::<u64>(),
        number in any::<u64>(),
        version in any::<u32>(),
        key in any::<[u8; 32]>(),
        junk in ".{0,120}",
    ) {
        let id = ListingId {
            seller: AccountId(streamspace_ledger::EntityId { shard, realm: 0, num }),
            number,
        };
        prop_assert_eq!(id.to_string().parse::<ListingId>(), Ok(id));
        let memo = service::memo(id, version, &PublicKey(key));
        let commitment: String = service::key_commitment(&PublicKey(key))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        prop_assert_eq!(memo, format!("streamspace-market:{id}@{version}~{commitment}"));
        // Any text parses or is refused, without a panic.
        let _ = junk.parse::<ListingId>();
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = Signed::decode(&b);
        let mut c = Catalog::default();
        prop_assert!(c.apply(&by_seller(&b)).is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_is_an_nft_resold_with_royalties() {
    let w = world().await;
    let store = MemoryStore::new();
    let root = add_reader(
        Some(&store),
        std::io::Cursor::new(b"a film to keep".to_vec()),
        ImportOptions::default(),
    )
    .await
    .unwrap()
    .cid;
    let class = NftClass::create(&w.ledger, w.seller.clone()).await.unwrap();
    let token = class.token;
    let mut keys = KeyService::new(key(9), w.topic).with_nft_class(class);
    let mut l = listing(&w, keys.public(), root);
    l.terms.rental_secs = None;
    l.royalty_bps = 1_000;
    keys.add_content(l.id, ContentKey::generate());
    publish(
        &w,
        &service::list(&store, &w.seller.key, l.clone())
            .await
            .unwrap(),
    )
    .await;

    // The buyer associates with the license token, pays, and receives the NFT.
    service::associate(&w.ledger, &w.buyer, token)
        .await
        .unwrap();
    let payment = service::pay(&w.ledger, &w.buyer, &l, &PublicKey::from(&w.buyer.key))
        .await
        .unwrap();
    let first = keys
        .issue(&w.ledger, payment, PublicKey::from(&w.buyer.key))
        .await
        .unwrap();
    publish(&w, &first).await;
    let Message::License(lic) = first.message.clone() else {
        panic!()
    };
    let nft = lic.nft.expect("an ownership license is an NFT");
    assert_eq!(lic.expiry, None);
    assert_eq!(w.ledger.nft_info(nft).await.unwrap().owner, w.buyer.account);

    // Resold for 100,000,000: 10% royalty, split 70/30, the rest to the holder.
    service::associate(&w.ledger, &w.buyer2, token)
        .await
        .unwrap();
    let before = [
        w.ledger.balance(w.buyer.account).await.unwrap(),
        w.ledger.balance(w.seller.account).await.unwrap(),
        w.ledger.balance(w.cowriter.account).await.unwrap(),
    ];
    let resale = service::resell(
        &w.ledger,
        &w.buyer,
        &w.buyer2,
        &l,
        &lic,
        100_000_000,
        &PublicKey::from(&w.buyer2.key),
    )
    .await
    .unwrap();
    assert_eq!(
        w.ledger.balance(w.buyer.account).await.unwrap() - before[0],
        90_000_000
    );
    assert_eq!(
        w.ledger.balance(w.seller.account).await.unwrap() - before[1],
        7_000_000
    );
    assert_eq!(
        w.ledger.balance(w.cowriter.account).await.unwrap() - before[2],
        3_000_000
    );
    assert_eq!(
        w.ledger.nft_info(nft).await.unwrap().owner,
        w.buyer2.account
    );
    let (revoke, second) = keys
        .reissue(&w.ledger, payment, resale, PublicKey::from(&w.buyer2.key))
        .await
        .unwrap();
    publish(&w, &revoke).await;
    publish(&w, &second).await;
    // Asked again, the same answer; for another key, none.
    let (revoke_again, second_again) = keys
        .reissue(&w.ledger, payment, resale, PublicKey::from(&w.buyer2.key))
        .await
        .unwrap();
    assert_eq!(
        (revoke_again.encode(), second_again.encode()),
        (revoke.encode(), second.encode())
    );
    assert!(matches!(
        keys.reissue(&w.ledger, payment, resale, PublicKey::from(&key(66)))
            .await,
        Err(ServiceError::NotCommitted(_))
    ));

    // The old holder's license no longer releases keys; the new one's does.
    let device = DeviceKey::generate();
    let now = w.ledger.now();
    assert!(matches!(
        keys.release(
            &KeyRequest::sign_in(
                &w.buyer.key,
                payment,
                [1; 16],
                device.public_bytes(),
                Some(*b"PT")
            ),
            now
        ),
        Err(ServiceError::Revoked(_))
    ));
    keys.release(
        &KeyRequest::sign_in(
            &w.buyer2.key,
            resale,
            [1; 16],
            device.public_bytes(),
            Some(*b"PT"),
        ),
        now,
    )
    .unwrap();

    // The audit: the first sale's payouts, then the royalties of the resale.
    let (catalog, applied) = replay(&w).await;
    assert!(applied.iter().all(Result::is_ok), "{applied:?}");
    assert!(matches!(
        catalog.sale(&payment).unwrap().revoked,
        Some(RevokeReason::Resold(_))
    ));
    let income = catalog.income();
    assert_eq!(income[&w.seller.account].earned, 175_000_001 + 7_000_000);
    assert_eq!(income[&w.cowriter.account].earned, 75_000_000 + 3_000_000);

    // A resale that skips the royalty gets no license.
    let Message::License(lic2) = second.message.clone() else {
        panic!()
    };
    let id = TransactionId::generate(w.buyer.account, w.ledger.now());
    let mut tx = Transaction::new(
        id,
        TxKind::Transfer {
            hbar: vec![
                (w.buyer.account, -50_000_000),
                (w.buyer2.account, 50_000_000),
            ],
            nfts: vec![streamspace_ledger::NftTransfer {
                nft,
                from: w.buyer2.account,
                to: w.buyer.account,
            }],
        },
    );
    tx.memo = service::resale_memo(lic2.listing, nft, &PublicKey::from(&w.buyer.key));
    w.ledger
        .execute(tx, &[&w.buyer.key, &w.buyer2.key])
        .await
        .unwrap();
    assert!(matches!(
        keys.reissue(&w.ledger, resale, id, PublicKey::from(&w.buyer.key))
            .await,
        Err(ServiceError::Underpaid { .. })
    ));
    // An ownership listing needs an NFT class.
    let mut no_class = KeyService::new(key(10), w.topic);
    let mut own = listing(&w, no_class.public(), root);
    own.terms.rental_secs = None;
    own.id.number = 99;
    publish(
        &w,
        &service::list(&store, &w.seller.key, own.clone())
            .await
            .unwrap(),
    )
    .await;
    let paid = service::pay(&w.ledger, &w.buyer, &own, &PublicKey::from(&w.buyer.key))
        .await
        .unwrap();
    assert!(matches!(
        no_class
            .issue(&w.ledger, paid, PublicKey::from(&w.buyer.key))
            .await,
        Err(ServiceError::NoNftClass)
    ));
}
