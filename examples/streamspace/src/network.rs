//! `streamspace demo`: the whole network in one process, on loopback and the embedded ledger.
//!
//! A publisher, two Tier-1 nodes, eight edge nodes and three viewers start; the publisher
//! encrypts and publishes an item and lists it on the market; the Tier-1 nodes replicate it and
//! the edge nodes cache it, taking blocks from each other; the viewers buy it, receive the key
//! wrapped to their device, fetch it from the network (verifying every block) and play it
//! through their gateway's decrypting path (`/play`);
//! every node that served is paid as it goes with signed cumulative receipts, sent over the
//! exchange protocol to the payee's metering hook, which serves at most a few shards ahead of
//! the newest receipt; the period closes and settles on the ledger. The report says who served
//! what, and who earned what.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use futures::TryStreamExt;
use indicatif::ProgressBar;
use streamspace_ledger::local::TREASURY;
use streamspace_ledger::{
    AccountId, Ledger, LedgerExt, LocalLedger, Operator, PublicKey, SystemClock, TopicId,
    Transaction, TransactionId, TxKind,
};
use streamspace_market::message::{Listing, ListingId, Share, Terms};
use streamspace_market::service::{self, DeviceKey, KeyRequest, KeyService};
use streamspace_payments::book::{Allowlist, CreditTier, PayerTab, Price, ReceiptBook};
use streamspace_payments::receipt::Domain;
use streamspace_payments::settle::{Journal, Settler, lock_collateral};
use streamspace_shard::crypto::ContentKey;
use streamspace_shard::import::ImportOptions;
use streamspace_shard::store::{MemoryStore, add_encrypted};
use streamspace_transport::meter::{Decision, Meter};
use streamspace_transport::{Config, FetchOptions, Keypair, Node, PeerId, Tier};

use crate::demo::{DemoArgs, source};

const PERIOD: u64 = 1;
const PRICE_PER_SHARD: u64 = 10_000;
const COLLATERAL: u64 = 2_000_000_000;

/// Pay-as-you-go accounting between the demo's nodes: each node's meter checks its payee book
/// before serving a shard and, on receiving one, signs a new cumulative receipt for its sender.
struct Bank {
    accounts: HashMap<PeerId, AccountId>,
    books: HashMap<AccountId, Mutex<ReceiptBook>>,
    tabs: HashMap<AccountId, Mutex<PayerTab>>,
    receipts: Mutex<u64>,
}

struct Metered {
    me: AccountId,
    bank: Arc<Bank>,
    /// Receipts to send, drained by a task that hands them to their payees over the network.
    /// A full queue drops a receipt harmlessly: the next one is cumulative.
    outbox: tokio::sync::mpsc::Sender<(PeerId, Bytes)>,
}

impl Meter for Metered {
    fn before_send(&self, peer: &PeerId, _: &cid::Cid, bytes: usize) -> Decision {
        let Some(payer) = self.bank.accounts.get(peer) else {
            return Decision::Refuse;
        };
        let Some(book) = self.bank.books.get(&self.me) else {
            return Decision::Refuse;
        };
        let mut book = book.lock().unwrap_or_else(|p| p.into_inner());
        match book.serve(*payer, bytes as u64) {
            Ok(()) => Decision::Serve,
            Err(_) => Decision::Pause { retry_after_ms: 5 },
        }
    }

    fn received(&self, peer: &PeerId, _: &cid::Cid, bytes: usize) {
        let Some(payee) = self.bank.accounts.get(peer).copied() else {
            return;
        };
        let Some(tab) = self.bank.tabs.get(&self.me) else {
            return;
        };
        let receipt = {
            let mut tab = tab.lock().unwrap_or_else(|p| p.into_inner());
            tab.received(payee, bytes as u64);
            tab.sign(payee)
        };
        let _ = self
            .outbox
            .try_send((*peer, Bytes::copy_from_slice(&receipt.encode())));
    }

    fn payment(&self, _: &PeerId, data: &[u8]) -> bool {
        let Some(book) = self.bank.books.get(&self.me) else {
            return false;
        };
        let ok = book
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .accept(data)
            .is_ok();
        if ok {
            *self.bank.receipts.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        }
        ok
    }
}

struct Member {
    name: String,
    op: Operator,
    node: Node<MemoryStore>,
}

async fn account(ledger: &LocalLedger, treasury: &Operator, balance: i64) -> Result<Operator> {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let account = ledger
        .create_account(treasury, PublicKey::from(&key), balance)
        .await?;
    Ok(Operator { account, key })
}

async fn topic(ledger: &LocalLedger, payer: &Operator, memo: &str) -> Result<TopicId> {
    let tx = Transaction::new(
        TransactionId::generate(payer.account, ledger.now()),
        TxKind::CreateTopic {
            memo: memo.into(),
            submit_key: None,
        },
    );
    ledger
        .execute(tx, &[&payer.key])
        .await?
        .topic
        .context("topic receipt without a topic")
}

pub(crate) async fn run(args: &DemoArgs) -> Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let (reader, len) = source(args)?;
    println!(
        "StreamSpace demo: 1 publisher, 2 Tier-1 nodes, 8 edge nodes, 3 viewers on loopback; one {:.1} MiB item",
        len as f64 / 1048576.0
    );

    // The ledger, and an account for everyone.
    let treasury_key = SigningKey::generate(&mut rand::rngs::OsRng);
    let ledger = LocalLedger::open(
        dir.path().join("ledger.redb"),
        PublicKey::from(&treasury_key),
        Arc::new(SystemClock),
    )?;
    let treasury = Operator {
        account: TREASURY,
        key: treasury_key,
    };
    let clearing = account(&ledger, &treasury, 10_000_000_000).await?;
    let cowriter = account(&ledger, &treasury, 100_000_000).await?;
    let names: Vec<String> = std::iter::once("publisher".to_string())
        .chain((1..=2).map(|i| format!("tier1-{i}")))
        .chain((1..=8).map(|i| format!("edge-{i}")))
        .chain((1..=3).map(|i| format!("viewer-{i}")))
        .collect();
    let mut ops = Vec::new();
    for _ in &names {
        ops.push(account(&ledger, &treasury, 100_000_000_000).await?);
    }
    let market_topic = topic(&ledger, &ops[0], "streamspace market").await?;
    let settle_topic = topic(&ledger, &clearing, "streamspace settlement").await?;
    // Receipts name this deployment (network, ledger, clearing account, topic).
    let domain = Domain::new(
        "demo",
        format!("local:{}", hex::encode(PublicKey::from(&treasury.key).0)),
        clearing.account,
        settle_topic,
    );

    // Payments: every node may owe every other; trusted members run 64 shards ahead.
    let keys: Vec<Keypair> = names.iter().map(|_| Keypair::generate_ed25519()).collect();
    let trusted = CreditTier {
        max_credit: COLLATERAL,
        max_ahead: 64,
    };
    let allowlist = Allowlist::closed(ops.iter().map(|o| (o.account, trusted)));
    let mut books = HashMap::new();
    let mut tabs = HashMap::new();
    for op in &ops {
        let terms = streamspace_payments::book::Terms {
            price: Price::per_shard(PRICE_PER_SHARD),
            ..Default::default()
        };
        let mut book =
            ReceiptBook::with_allowlist(domain.id(), op.account, PERIOD, terms, allowlist.clone());
        for payer in &ops {
            if payer.account != op.account {
                book.admit(payer.account, PublicKey::from(&payer.key), COLLATERAL)?;
            }
        }
        books.insert(op.account, Mutex::new(book));
        let mut tab = PayerTab::new(domain.id(), op.account, op.key.clone(), PERIOD);
        for payee in &ops {
            tab.agree(payee.account, Price::per_shard(PRICE_PER_SHARD));
        }
        tabs.insert(op.account, Mutex::new(tab));
    }
    let bank = Arc::new(Bank {
        accounts: keys
            .iter()
            .zip(&ops)
            .map(|(k, o)| (k.public().to_peer_id(), o.account))
            .collect(),
        books,
        tabs,
        receipts: Mutex::new(0),
    });
    for op in &ops {
        lock_collateral(&ledger, op, clearing.account, PERIOD, COLLATERAL).await?;
    }

    // The nodes: the publisher and the Tier-1 nodes bootstrap from the publisher, edges from a
    // Tier-1 node, viewers from an edge.
    let mut members: Vec<Member> = Vec::new();
    for (i, (name, key)) in names.iter().zip(&keys).enumerate() {
        let mut config = Config::new(key.clone()).loopback();
        config.network = "demo".into();
        config.tier = if i < 3 { Tier::Tier1 } else { Tier::Edge };
        // Every node of the demo is a paying member: their demand may make a Tier-1 node
        // replicate.
        config.replication.policy = Arc::new(streamspace_transport::ReplicateAnything);
        config.bootstrap = match i {
            0 => Vec::new(),
            1..=2 => members[0].node.dialable_addrs().await?,
            3..=10 => members[1 + (i % 2)].node.dialable_addrs().await?,
            _ => members[3 + i % 8].node.dialable_addrs().await?,
        };
        let (outbox, mut receipts) = tokio::sync::mpsc::channel(1024);
        let meter = Arc::new(Metered {
            me: ops[i].account,
            bank: bank.clone(),
            outbox,
        });
        let node = Node::start(config, Arc::new(MemoryStore::new()), meter).await?;
        let courier = node.clone();
        tokio::spawn(async move {
            while let Some((peer, receipt)) = receipts.recv().await {
                // A receipt lost here is superseded by the next, which is cumulative.
                let _ = courier.pay(peer, receipt).await;
            }
        });
        members.push(Member {
            name: name.clone(),
            op: ops[i].clone(),
            node,
        });
    }
    println!(
        "[network]   {} nodes up, {} ledger accounts, collateral locked ({:.2?})",
        members.len(),
        ops.len() + 2,
        started.elapsed()
    );

    // The publisher encrypts, adds and announces the item, and lists it: 70% to itself, 30% to
    // a co-writer, a 48-hour rental on two devices.
    let publisher = &members[0];
    let content_key = ContentKey::generate();
    let bar = ProgressBar::new(len).with_message("publishing");
    let root = add_encrypted(
        Some(publisher.node.store().as_ref()),
        bar.wrap_read(reader),
        content_key.clone(),
        ImportOptions::default().with_cid_version(1)?,
    )
    .await?;
    bar.finish_and_clear();
    publisher.node.provide(root.cid).await?;
    // The key service keeps its record of licenses, revocations and devices in a file.
    let mut keys_service = KeyService::open(
        dir.path().join("keys.redb"),
        publisher.op.key.clone(),
        market_topic,
    )?;
    let listing = Listing {
        id: ListingId {
            seller: publisher.op.account,
            number: 1,
        },
        version: 1,
        content: root.cid,
        title: "StreamSpace demo reel".into(),
        description: "Generated content".into(),
        tags: vec!["demo".into()],
        price: 500_000_000,
        terms: Terms {
            rental_secs: Some(48 * 3600),
            devices: 2,
            regions: Vec::new(),
        },
        split: vec![
            Share {
                account: publisher.op.account,
                bps: 7_000,
            },
            Share {
                account: cowriter.account,
                bps: 3_000,
            },
        ],
        royalty_bps: 0,
        key_service: keys_service.public(),
    };
    keys_service.add_content(listing.id, content_key);
    let signed = service::list(
        publisher.node.store().as_ref(),
        &publisher.op.key,
        listing.clone(),
    )
    .await?;
    // Published by the seller's own account: the catalog counts no listing another account
    // published.
    service::publish(&ledger, &publisher.op, market_topic, &signed).await?;
    println!(
        "[publisher] {} encrypted shards, root {}, listed at {} tinybars",
        root.size.div_ceil(262_144),
        root.cid,
        listing.price
    );

    // Tier-1 nodes replicate it, then the edges cache it, all taking blocks from each other.
    let spread = Instant::now();
    let swarm = FetchOptions {
        announce: true,
        window: 0,
        ..FetchOptions::default()
    };
    for wave in [&members[1..3], &members[3..11]] {
        let runs: Vec<_> = wave
            .iter()
            .map(|m| {
                let node = m.node.clone();
                let o = swarm.clone();
                tokio::spawn(async move { node.fetch(root.cid, o).await })
            })
            .collect();
        for r in runs {
            r.await??;
        }
    }
    println!(
        "[spread]    2 Tier-1 and 8 edge nodes hold the item after {:.2?}",
        spread.elapsed()
    );

    // Viewers find it in the catalog, buy it, get the key for their device, and watch.
    let mut catalog = streamspace_market::Catalog::default();
    for m in ledger.topic_messages(market_topic, 1, 1000).await? {
        let _ = catalog.apply(&m);
    }
    let offer = catalog
        .search("demo reel")
        .next()
        .context("the listing is not in the catalog")?
        .clone();
    let expected = {
        let (mut r, _) = source(args)?;
        let mut h = Sha256::new();
        std::io::copy(&mut r, &mut h)?;
        h.finalize()
    };
    let mut startups = Vec::new();
    for viewer in &members[11..] {
        // The payment commits to the key the viewer's license is to be bound to.
        let license_key = PublicKey::from(&viewer.op.key);
        let payment = service::pay(&ledger, &viewer.op, &offer, &license_key).await?;
        let license = keys_service.issue(&ledger, payment, license_key).await?;
        ledger
            .submit_message(
                &viewer.op,
                market_topic,
                Bytes::from(license.encode()),
                None,
            )
            .await?;
        let device = DeviceKey::generate();
        let request = KeyRequest::sign(&viewer.op.key, payment, [7; 16], device.public_bytes());
        let wrapped = keys_service.release(&request, ledger.now())?;
        let key = device.unwrap(&wrapped, &payment)?;
        let t = Instant::now();
        let report = viewer
            .node
            .fetch(
                root.cid,
                FetchOptions {
                    window: 8,
                    ..FetchOptions::default()
                },
            )
            .await?;
        // The viewer's player reads the item through its gateway's decrypting path, with the
        // key released against its license.
        let keyring = streamspace_node::gateway::Keyring::from([(root.cid, key)]);
        let player = streamspace_node::gateway::router_with_keys(
            viewer.node.clone(),
            Arc::new(streamspace_node::gateway::CacheStats::default()),
            Arc::new(keyring),
        );
        let request = axum::http::Request::get(format!("/play/{}", root.cid))
            .header(axum::http::header::HOST, "127.0.0.1")
            .body(axum::body::Body::empty())?;
        let response = tower::ServiceExt::oneshot(player, request).await?;
        ensure!(
            response.status() == axum::http::StatusCode::OK,
            "{}'s player got {}",
            viewer.name,
            response.status()
        );
        let mut body = response.into_body().into_data_stream();
        let mut h = Sha256::new();
        while let Some(part) = body.try_next().await? {
            h.update(&part);
        }
        ensure!(
            h.finalize()[..] == expected[..],
            "{} decrypted something other than the source",
            viewer.name
        );
        let startup = report.first_block.unwrap_or_default();
        startups.push(startup);
        println!(
            "[{}]  bought, key released to its device; first verified shard after {:.1} ms, all {} in {:.2?} from {} peers, {:.1} MiB played through /play, decrypted and checked, in {:.2?}",
            viewer.name,
            startup.as_secs_f64() * 1e3,
            report.blocks,
            report.elapsed,
            report.bytes_from.len(),
            len as f64 / 1048576.0,
            t.elapsed()
        );
    }

    // Close the period: every payee's newest receipts are journaled and settled.
    let journal = Journal::open(dir.path().join("journal.redb"), domain.id())?;
    let mut receipts = Vec::new();
    for book in bank.books.values() {
        let book = book.lock().unwrap_or_else(|p| p.into_inner());
        receipts.extend(book.newest().copied());
    }
    journal.record(&receipts)?;
    let collateral: BTreeMap<AccountId, u64> =
        ops.iter().map(|o| (o.account, COLLATERAL)).collect();
    let settled = Settler::new(ledger.clone(), journal, clearing.clone(), &domain)?
        .close(PERIOD, &collateral)
        .await?;

    // The report.
    println!("\nReport after {:.2?}", started.elapsed());
    let stats: Vec<_> = members.iter().map(|m| (m, m.node.stats())).collect();
    let served_total: u64 = stats.iter().map(|(_, s)| s.bytes_served).sum();
    let by_publisher = stats[0].1.bytes_served;
    println!(
        "  bytes served: {served_total} in all, {:.1}% by peers rather than the publisher",
        100.0 * (served_total - by_publisher) as f64 / served_total.max(1) as f64
    );
    for (m, s) in &stats {
        println!(
            "  {:<10} served {:>10} bytes ({:>4} shards), received {:>10} bytes",
            m.name, s.bytes_served, s.shards_served, s.bytes_received
        );
    }
    let mut sorted = startups.clone();
    sorted.sort();
    println!(
        "  viewer start-up (first verified shard): {}",
        sorted
            .iter()
            .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  receipts: {} sent over the network and accepted, {} settled; {} ledger transfers and 1 anchor message, {} tinybars paid out, fees {} tinybars",
        bank.receipts.lock().unwrap_or_else(|p| p.into_inner()),
        settled.receipts,
        settled.transfers,
        settled.paid_out,
        settled.fees
    );
    for (account, income) in catalog_income(&ledger, market_topic).await? {
        let who = if account == publisher.op.account {
            "publisher"
        } else if account == cowriter.account {
            "co-writer"
        } else {
            "holder"
        };
        println!(
            "  rights holder {account} ({who}): {} sales, {} tinybars",
            income.sales, income.earned
        );
    }
    for m in &members {
        m.node.shutdown().await;
    }
    Ok(())
}

async fn catalog_income(
    ledger: &LocalLedger,
    topic: TopicId,
) -> Result<BTreeMap<AccountId, streamspace_market::catalog::Income>> {
    let msgs = ledger.topic_messages(topic, 1, 10_000).await?;
    let mut c = streamspace_market::Catalog::default();
    let results = c.replay(&msgs);
    ensure!(
        results.iter().all(Result::is_ok),
        "the market topic holds a message the catalog refuses"
    );
    Ok(c.income())
}
