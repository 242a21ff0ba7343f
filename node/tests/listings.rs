//! `streamspace/listings`: the market topic read from the ledger by the market's own rules, so
//! a listing published under another seller's name is not reported.

mod common;

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use streamspace_ledger::local::TREASURY;
use streamspace_ledger::{
    Ledger, LedgerExt, LocalLedger, Operator, PublicKey, SystemClock, Transaction, TransactionId,
    TxKind,
};
use streamspace_market::message::{Listing, ListingId, Message, Share, Terms};
use streamspace_market::service;
use streamspace_node::config::{LedgerSection, MarketSection};
use streamspace_shard::import::ImportOptions;
use streamspace_shard::store::{MemoryStore, add_reader};

fn listing(seller: &Operator, number: u64, content: cid::Cid, title: &str) -> Listing {
    Listing {
        id: ListingId {
            seller: seller.account,
            number,
        },
        version: 1,
        content,
        title: title.into(),
        description: String::new(),
        tags: Vec::new(),
        price: 1_000,
        terms: Terms {
            rental_secs: Some(3600),
            devices: 1,
            regions: Vec::new(),
        },
        split: vec![Share {
            account: seller.account,
            bps: 10_000,
        }],
        royalty_bps: 0,
        key_service: PublicKey::from(&seller.key),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_follow_the_market_topic_and_refuse_squatters() {
    let dir = tempfile::tempdir().expect("dir");
    let ledger_path = dir.path().join("ledger.redb");
    let tk = SigningKey::from_bytes(&[200; 32]);
    let (seller, other, topic) = {
        let ledger = LocalLedger::open(&ledger_path, PublicKey::from(&tk), Arc::new(SystemClock))
            .expect("ledger");
        let treasury = Operator {
            account: TREASURY,
            key: tk.clone(),
        };
        let mut ops = Vec::new();
        for seed in [1u8, 2] {
            let key = SigningKey::from_bytes(&[seed; 32]);
            let account = ledger
                .create_account(&treasury, PublicKey::from(&key), 10_000_000_000)
                .await
                .expect("account");
            ops.push(Operator { account, key });
        }
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
        let store = MemoryStore::new();
        let mut roots = Vec::new();
        for n in 0..3u8 {
            let root = add_reader(
                Some(&store),
                std::io::Cursor::new(vec![n; 1000]),
                ImportOptions::default(),
            )
            .await
            .expect("add");
            roots.push(root.cid);
        }
        let (seller, other) = (ops.remove(0), ops.remove(0));
        let honest = service::list(&store, &seller.key, listing(&seller, 1, roots[0], "Film"))
            .await
            .expect("list");
        service::publish(&ledger, &seller, topic, &honest)
            .await
            .expect("publish");
        let theirs = service::list(&store, &other.key, listing(&other, 1, roots[1], "Other"))
            .await
            .expect("list");
        service::publish(&ledger, &other, topic, &theirs)
            .await
            .expect("publish");
        // The squatter signs a listing naming the seller, and pays for its publication.
        let squat = Message::List(listing(&seller, 2, roots[2], "Squatted")).sign(&other.key);
        service::publish(&ledger, &other, topic, &squat)
            .await
            .expect("the ledger takes any paid message");
        (seller, other, topic)
    };

    let repo = dir.path().join("repo");
    let mut b = common::builder(&repo);
    b.config_mut().ledger = LedgerSection::Embedded {
        path: Some(ledger_path),
        treasury: Some(hex::encode(PublicKey::from(&tk).0)),
        serve: None,
        serve_mirror: None,
    };
    b.config_mut().market = Some(MarketSection {
        topic: topic.to_string(),
    });
    let node = b.start().await.expect("node starts");
    let api = node.api_addr().expect("api");
    let mut all = serde_json::Value::Null;
    for _ in 0..100 {
        all = common::post(api, "/api/v0/streamspace/listings?seller=all")
            .await
            .json();
        if all["MessagesRead"] == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(all["MessagesRead"], 3, "{all}");
    assert_eq!(all["Rejected"], 1, "the squatted listing is refused: {all}");
    let titles: Vec<&str> = all["Listings"]
        .as_array()
        .expect("listings")
        .iter()
        .map(|l| l["Title"].as_str().expect("title"))
        .collect();
    assert_eq!(titles, ["Film", "Other"]);

    let mine = common::post(
        api,
        &format!("/api/v0/streamspace/listings?seller={}", seller.account),
    )
    .await
    .json();
    let mine = mine["Listings"].as_array().expect("listings");
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["Id"], format!("{}/1", seller.account));
    assert_eq!(mine[0]["Price"], 1_000);
    let _ = other;

    // The answer is a page: bounded whatever the topic holds.
    let page = common::post(
        api,
        "/api/v0/streamspace/listings?seller=all&offset=1&limit=1",
    )
    .await
    .json();
    assert_eq!(page["Total"], 2, "{page}");
    assert_eq!(page["Offset"], 1);
    let page = page["Listings"].as_array().expect("listings");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0]["Title"], "Other");
    let huge = common::post(api, "/api/v0/streamspace/listings?seller=all&limit=1000000").await;
    assert_eq!(huge.status, 400);
    assert!(
        huge.kubo_error().contains("at most 1000"),
        "{}",
        huge.kubo_error()
    );
    let nan = common::post(api, "/api/v0/streamspace/listings?offset=x").await;
    assert_eq!(nan.status, 400);

    let bad = common::post(api, "/api/v0/streamspace/listings?seller=nobody").await;
    assert_eq!(bad.status, 400);
    assert!(bad.kubo_error().contains("seller"));
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_market_topic_listings_say_so() {
    let repo = tempfile::tempdir().expect("dir");
    let node = common::node(repo.path()).await;
    let a = common::post(
        node.api_addr().expect("api"),
        "/api/v0/streamspace/listings",
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(a.kubo_error().contains("market"), "{}", a.kubo_error());
    node.shutdown().await.expect("shutdown");
}
