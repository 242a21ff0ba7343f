//! Attacks on payments, each performed through the public API: every test asserts that the
//! attack is refused and what the honest party ends up with.

use std::collections::BTreeMap;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use streamspace_ledger::local::TREASURY;
use streamspace_ledger::{
    AccountId, Ledger, LedgerExt, LocalLedger, Operator, PublicKey, Status, SystemClock, TopicId,
    Transaction, TransactionId, TxKind,
};
use streamspace_payments::book::{
    Allowlist, BookError, CreditTier, DEFAULT_MAX_AHEAD, DEFAULT_PRICE_PER_SHARD, Overcharged,
    PayerTab, Price, ReceiptBook, Terms, Unrequested,
};
use streamspace_payments::clearing::{Clearing, Member};
use streamspace_payments::fraud::{FraudProof, FraudProofError};
use streamspace_payments::netting::{NettingError, Plan, plan};
use streamspace_payments::receipt::{
    Domain, ENCODED_LEN, ReceiptBody, ReceiptError, SignedReceipt,
};
use streamspace_payments::settle::{
    Journal, RECEIPTS_PER_MESSAGE, RECEIPTS_TAG, ReceiptsMessageError, SettleError, Settler,
    lock_collateral, parse_receipts_message, receipts_messages,
};

fn key(s: u8) -> SigningKey {
    SigningKey::from_bytes(&[s; 32])
}

/// The deployment of the tests that settle on no ledger.
fn domain() -> Domain {
    Domain::new(
        "main",
        "private",
        AccountId::new(98_000),
        TopicId::new(98_001),
    )
}

fn receipt(
    payer: &SigningKey,
    payer_id: u64,
    payee: u64,
    amount: u64,
    shards: u64,
) -> SignedReceipt {
    receipt_in(&domain(), payer, payer_id, payee, amount, shards)
}

fn receipt_in(
    domain: &Domain,
    payer: &SigningKey,
    payer_id: u64,
    payee: u64,
    amount: u64,
    shards: u64,
) -> SignedReceipt {
    ReceiptBody {
        domain: domain.id(),
        payer: AccountId::new(payer_id),
        payee: AccountId::new(payee),
        period: 1,
        amount,
        shards,
    }
    .sign(payer)
}

/// A relay (or a faulty chunker) drops the tail of a payee's receipts message exactly at a
/// receipt boundary, so that what is left is still whole receipts: the clearing must see the
/// message is short, not settle the payee for fewer receipts than it posted.
#[test]
fn receipts_message_cut_at_a_receipt_boundary_is_refused() {
    let payer = key(1);
    let d = domain().id();
    const N: usize = RECEIPTS_PER_MESSAGE;
    let receipts: Vec<_> = (0..N as u64)
        .map(|i| receipt(&payer, 1001, 2000 + i, 10_000 * (i + 1), i + 1))
        .collect();
    let messages = receipts_messages(&receipts);
    assert_eq!(messages.len(), 1);
    let full = &messages[0];
    for kept in 0..N {
        let cut = &full[..RECEIPTS_TAG.len() + 1 + kept * ENCODED_LEN];
        assert_eq!(
            parse_receipts_message(cut, &d),
            Err(ReceiptsMessageError::Length {
                declared: N as u8,
                bytes: kept * ENCODED_LEN
            }),
            "{kept} of {N} receipts kept"
        );
    }
    // Lowering the count to match the cut is refused as well: the count is checked against
    // the bytes both ways, and a message padded with a receipt is refused too.
    let mut relabelled = full[..RECEIPTS_TAG.len() + 1 + 2 * ENCODED_LEN].to_vec();
    relabelled[RECEIPTS_TAG.len()] = 3;
    assert!(matches!(
        parse_receipts_message(&relabelled, &d),
        Err(ReceiptsMessageError::Length { declared: 3, .. })
    ));
    let mut padded = full.to_vec();
    padded.extend_from_slice(&receipts[0].encode());
    assert!(matches!(
        parse_receipts_message(&padded, &d),
        Err(ReceiptsMessageError::Length { .. })
    ));
    for count in [0u8, N as u8 + 1, 255] {
        let mut m = full.to_vec();
        m[RECEIPTS_TAG.len()] = count;
        assert_eq!(
            parse_receipts_message(&m, &d),
            Err(ReceiptsMessageError::Count(count))
        );
    }
    // The payee's message as posted yields every receipt it holds.
    assert_eq!(parse_receipts_message(full, &d).unwrap(), receipts);
}

/// A ledger with a clearing account, its settlement topic and funded accounts.
struct World {
    _dir: tempfile::TempDir,
    ledger: LocalLedger,
    clearing: Operator,
    topic: TopicId,
    domain: Domain,
}

const FUNDS: i64 = 10_000_000_000;

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
    let ck = key(100);
    let clearing = Operator {
        account: ledger
            .create_account(&treasury, PublicKey::from(&ck), FUNDS)
            .await
            .unwrap(),
        key: ck,
    };
    let id = TransactionId::generate(clearing.account, ledger.now());
    let tx = Transaction::new(
        id,
        TxKind::CreateTopic {
            memo: "settlement".into(),
            // Anyone may post, as on the node's settlement topic.
            submit_key: None,
        },
    );
    let topic = ledger
        .execute(tx, &[&clearing.key])
        .await
        .unwrap()
        .topic
        .unwrap();
    World {
        _dir: dir,
        ledger,
        domain: Domain::new("main", "private", clearing.account, topic),
        clearing,
        topic,
    }
}

impl World {
    async fn account(&self, seed: u8, balance: i64) -> Operator {
        let treasury = Operator {
            account: TREASURY,
            key: key(200),
        };
        let k = key(seed);
        Operator {
            account: self
                .ledger
                .create_account(&treasury, PublicKey::from(&k), balance)
                .await
                .unwrap(),
            key: k,
        }
    }

    async fn balance(&self, a: AccountId) -> i64 {
        self.ledger.balance(a).await.unwrap()
    }

    async fn balances(&self, of: &[&Operator]) -> Vec<i64> {
        let mut out = Vec::new();
        for o in of {
            out.push(self.balance(o.account).await);
        }
        out
    }
}

/// A payer signs two receipts of 2⁶³ tinybars each: in wrapping u64 arithmetic they owe 0, within
/// any collateral, and the clearing would pay out 2⁶⁴ it never held. Checked sums see the debt:
/// the payer is struck off and its collateral, no more, pays the payee that posted first.
#[test]
fn amounts_that_wrap_are_not_within_collateral() {
    let cheat = key(1);
    let half = 1u64 << 63;
    let rs = [
        receipt(&cheat, 1001, 2001, half, 1),
        receipt(&cheat, 1001, 2002, half, 1),
    ];
    let collateral = BTreeMap::from([(AccountId::new(1001), 1_000)]);
    let p = plan(&rs, &collateral).unwrap();
    assert_eq!(p.struck_off.len(), 1);
    assert_eq!(
        (p.struck_off[0].payer, p.struck_off[0].owed),
        (AccountId::new(1001), u64::MAX)
    );
    assert_eq!(p.payouts, [(AccountId::new(2001), 1_000)]);
    assert_eq!(p.collateral, 1_000);
}

/// A collateral table (as a clearing is handed it) whose total no ledger transfer can move is
/// refused with a typed error before any step is planned or sent: nothing leaves the clearing
/// account. A collateral lock beyond `i64::MAX` is refused at precheck rather than capped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collateral_beyond_a_transfer_is_refused_not_wrapped() {
    let w = world().await;
    let payer = w.account(1, FUNDS).await;
    let payee = w.account(2, 0).await;
    let huge = u64::MAX / 2 + 1;
    let e = lock_collateral(&w.ledger, &payer, w.clearing.account, 1, huge)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(Status::InvalidAccountAmounts));
    assert_eq!(
        w.balance(payer.account).await,
        FUNDS,
        "nothing sent, no fee"
    );

    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path().join("j.redb"), w.domain.id()).unwrap();
    journal
        .record(&[receipt_in(
            &w.domain,
            &payer.key,
            payer.account.num(),
            payee.account.num(),
            500,
            5,
        )])
        .unwrap();
    let settler = Settler::new(w.ledger.clone(), journal, w.clearing.clone(), &w.domain).unwrap();
    let collateral = BTreeMap::from([(payer.account, huge), (AccountId::new(4242), huge)]);
    let before = w.balance(w.clearing.account).await;
    assert!(matches!(
        settler.close(1, &collateral).await,
        Err(SettleError::Netting(NettingError::Overflow { .. }))
    ));
    assert_eq!(w.balance(w.clearing.account).await, before);
    assert_eq!(w.balance(payee.account).await, 0);
    // Planning directly says the same; a hand-made plan with an impossible payout cannot be
    // turned into transfers.
    assert!(matches!(
        plan(&[], &collateral),
        Err(NettingError::Overflow { .. })
    ));
    let forged = Plan {
        net: BTreeMap::new(),
        payouts: vec![(payee.account, u64::MAX)],
        collateral: u64::MAX,
        settled: BTreeMap::new(),
        struck_off: Vec::new(),
    };
    assert!(matches!(
        forged.transfers(w.clearing.account),
        Err(NettingError::Overflow { .. })
    ));
}

/// Under a per-byte price a payer signs a receipt far ahead — a million shards for what two
/// cost, or for nothing — hoping the payee counts them as paid and serves on without limit.
/// A receipt may acknowledge only what was served, at exactly its price.
#[test]
fn receipt_signed_ahead_of_service_is_refused() {
    let (me, viewer) = (AccountId::new(2000), AccountId::new(1001));
    const SHARD: u64 = 262_144;
    let terms = Terms {
        price: Price::per_gib(1 << 30), // one tinybar per byte, nothing per shard
        max_ahead: 2,
        disconnect_after: 100,
    };
    let mut book = ReceiptBook::new(domain().id(), me, 1, terms);
    book.admit(viewer, PublicKey::from(&key(1)), 1 << 40)
        .unwrap();
    let mut tab = PayerTab::new(domain().id(), viewer, key(1), 1);
    tab.agree(me, terms.price);
    for _ in 0..2 {
        book.serve(viewer, SHARD).unwrap();
        tab.received(me, SHARD);
    }
    let ahead = |amount, shards| {
        ReceiptBody {
            domain: domain().id(),
            payer: viewer,
            payee: me,
            period: 1,
            amount,
            shards,
        }
        .sign(&key(1))
        .encode()
    };
    // Far ahead, paying the bytes of the two shards served, or nothing.
    for (amount, shards) in [
        (2 * SHARD, 1_000_000),
        (0, 1_000_000),
        (0, u64::MAX),
        (3 * SHARD, 3),
    ] {
        assert!(
            matches!(
                book.accept(&ahead(amount, shards)),
                Err(BookError::Unserved { served: 2, .. })
            ),
            "{shards} shards for {amount}"
        );
    }
    // The two shards served, paid less or more than their price.
    assert!(matches!(
        book.accept(&ahead(0, 2)),
        Err(BookError::Underpaid { owed, .. }) if owed == 2 * SHARD
    ));
    assert!(matches!(
        book.accept(&ahead(2 * SHARD + 1, 2)),
        Err(BookError::Overpaid { .. })
    ));
    // The payee still holds no receipt and serves no more than max_ahead unpaid.
    assert_eq!(book.newest().count(), 0);
    assert!(matches!(
        book.serve(viewer, SHARD),
        Err(BookError::ReceiptDue { unpaid: 2, .. })
    ));
    assert_eq!(book.refusals().get("unserved"), Some(&4));
    // The honest receipt for what was received is accepted, and service resumes.
    let honest = tab.sign(me);
    assert_eq!((honest.body.amount, honest.body.shards), (2 * SHARD, 2));
    book.accept(&honest.encode()).unwrap();
    book.serve(viewer, SHARD).unwrap();
    // Per shard the same: a receipt paying in advance for shards not served is refused too.
    let terms = Terms {
        price: Price::per_shard(100),
        ..terms
    };
    let mut book = ReceiptBook::new(domain().id(), me, 1, terms);
    book.admit(viewer, PublicKey::from(&key(1)), 1 << 40)
        .unwrap();
    book.serve(viewer, SHARD).unwrap();
    assert!(matches!(
        book.accept(&ahead(100 * 50, 50)),
        Err(BookError::Unserved {
            shards: 50,
            served: 1,
            ..
        })
    ));
    book.accept(&ahead(100, 1)).unwrap();
}

/// A payer's receipts from another deployment — another StreamSpace network, another ledger,
/// another clearing account or settlement topic on the same ledger — replayed here, where the
/// same accounts and key exist. Every party refuses them: the payee's book, the receipts
/// message, the journal, the settler and the fraud-proof check.
#[test]
fn receipts_of_another_deployment_are_refused_everywhere() {
    let ours = domain();
    let elsewhere = [
        Domain {
            network: "other".into(),
            ..ours.clone()
        },
        Domain {
            ledger: "hedera:testnet".into(),
            ..ours.clone()
        },
        Domain {
            clearing: AccountId::new(98_002),
            ..ours.clone()
        },
        Domain {
            topic: TopicId::new(98_003),
            ..ours.clone()
        },
    ];
    let (me, viewer) = (AccountId::new(2000), AccountId::new(1001));
    let terms = Terms {
        price: Price::per_shard(100),
        max_ahead: 2,
        disconnect_after: 100,
    };
    let mut book = ReceiptBook::new(ours.id(), me, 1, terms);
    book.admit(viewer, PublicKey::from(&key(1)), 1_000_000)
        .unwrap();
    book.serve(viewer, 1).unwrap();
    book.serve(viewer, 1).unwrap();
    for theirs in &elsewhere {
        assert_ne!(theirs.id(), ours.id());
        let foreign = receipt_in(theirs, &key(1), 1001, 2000, 200, 2);
        assert_eq!(
            book.accept(&foreign.encode()),
            Err(BookError::ForeignDomain(viewer))
        );
        // Signed in their domain, the receipt verifies there and nowhere else.
        foreign.verify_in(&theirs.id()).unwrap();
        assert_eq!(
            foreign.verify_in(&ours.id()),
            Err(ReceiptError::ForeignDomain)
        );
        // Relabelling it breaks the signature.
        let mut relabelled = foreign;
        relabelled.body.domain = ours.id();
        assert_eq!(
            relabelled.verify_in(&ours.id()),
            Err(ReceiptError::BadSignature)
        );
        assert_eq!(
            book.accept(&relabelled.encode()).unwrap_err().kind(),
            "malformed_or_forged"
        );
    }
    // The book holds nothing and still serves no further; the receipt of this deployment is
    // taken.
    assert_eq!(book.newest().count(), 0);
    assert!(book.serve(viewer, 1).is_err());
    book.accept(&receipt(&key(1), 1001, 2000, 200, 2).encode())
        .unwrap();

    // A receipts message carrying a foreign receipt is refused, naming it.
    let mixed = receipts_messages(&[
        receipt(&key(1), 1001, 2000, 200, 2),
        receipt_in(&elsewhere[0], &key(1), 1001, 2001, 900, 9),
    ]);
    assert!(matches!(
        parse_receipts_message(&mixed[0], &ours.id()),
        Err(ReceiptsMessageError::Receipt {
            index: 1,
            source: ReceiptError::ForeignDomain
        })
    ));

    // The journal of this deployment records none of a batch holding a foreign receipt, and a
    // journal file of another deployment is not opened as this one's.
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path().join("j.redb"), ours.id()).unwrap();
    let honest = receipt(&key(1), 1001, 2000, 200, 2);
    assert!(matches!(
        journal.record(&[
            honest,
            receipt_in(&elsewhere[2], &key(1), 1001, 2000, 900, 9)
        ]),
        Err(SettleError::ForeignDomain { .. })
    ));
    assert!(journal.receipts(1).unwrap().is_empty());
    journal.record(&[honest]).unwrap();
    assert_eq!(journal.receipts(1).unwrap(), [honest]);
    drop(journal);
    assert!(matches!(
        Journal::open(dir.path().join("j.redb"), elsewhere[3].id()),
        Err(SettleError::JournalDomain)
    ));

    // Over-promising elsewhere proves nothing here: the payer is not struck off for it.
    let proof = FraudProof {
        receipts: vec![
            receipt_in(&elsewhere[1], &key(1), 1001, 2001, 800, 8),
            receipt_in(&elsewhere[1], &key(1), 1001, 2002, 800, 8),
        ],
    };
    assert_eq!(
        proof.verify(&elsewhere[1].id(), &PublicKey::from(&key(1)), 1_000),
        Ok(viewer)
    );
    assert_eq!(
        proof.verify(&ours.id(), &PublicKey::from(&key(1)), 1_000),
        Err(FraudProofError::ForeignDomain(viewer))
    );
}

/// A payee replays on this deployment's settlement topic the larger receipts a payer signed
/// it in another deployment. The clearing refuses the message; the period settles on this
/// deployment's receipt, and the payer keeps the rest of its collateral.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_receipts_posted_for_settlement_are_not_paid() {
    let w = world().await;
    let payer = w.account(1, FUNDS).await;
    let payee = w.account(2, FUNDS).await;
    const COLLATERAL: u64 = 1_000_000;
    lock_collateral(&w.ledger, &payer, w.clearing.account, 1, COLLATERAL)
        .await
        .unwrap();
    let (p, q) = (payer.account.num(), payee.account.num());
    let theirs = Domain {
        network: "other".into(),
        ..w.domain.clone()
    };
    let replay = receipts_messages(&[receipt_in(&theirs, &payer.key, p, q, 900_000, 90)]);
    let honest = receipts_messages(&[receipt_in(&w.domain, &payer.key, p, q, 300_000, 30)]);
    for m in [&replay[0], &honest[0]] {
        w.ledger
            .submit_message(&payee, w.topic, m.clone(), None)
            .await
            .unwrap();
    }
    let payee_before = w.balance(payee.account).await; // after its posting fees
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path().join("c.redb"), w.domain.id()).unwrap();
    let members = [
        Member {
            account: payer.account,
            key: PublicKey::from(&payer.key),
            collateral: COLLATERAL,
        },
        Member {
            account: payee.account,
            key: PublicKey::from(&payee.key),
            collateral: 0,
        },
    ];
    let mut clearing = Clearing::new(
        w.ledger.clone(),
        w.clearing.clone(),
        &w.domain,
        journal,
        members,
        1,
    )
    .unwrap();
    // Long after period 1 ended.
    let poll = clearing.poll(1_000).await;
    assert_eq!(poll.refused, [1], "the replayed message");
    assert_eq!(poll.kept, 1);
    assert_eq!(poll.settled.len(), 1, "{:?}", poll.failed);
    assert_eq!(w.balance(payee.account).await - payee_before, 300_000);
    let fee = 100_000; // the collateral deposit
    assert_eq!(
        w.balance(payer.account).await,
        FUNDS - fee - 300_000,
        "the payer gets back all but what it owes here"
    );
    // A settler is not built for another deployment's clearing account or journal.
    let other_journal = Journal::open(dir.path().join("o.redb"), theirs.id()).unwrap();
    assert!(matches!(
        Settler::new(
            w.ledger.clone(),
            other_journal,
            w.clearing.clone(),
            &w.domain
        ),
        Err(SettleError::NotTheDomain { .. })
    ));
}

/// Posts `receipts` to the settlement topic as `poster`.
async fn post(w: &World, poster: &Operator, receipts: &[SignedReceipt]) {
    for m in receipts_messages(receipts) {
        w.ledger
            .submit_message(poster, w.topic, m, None)
            .await
            .unwrap();
    }
}

/// A payer locks 1,000,000 and promises it three times over to three payees, each of which
/// checks only its own receipts. The period is not frozen: the payer is struck off, its proof
/// published, its whole collateral paid to its payees in the order they posted; an honest
/// payer in the same period settles in full; a receipt the cheat posts to lower a payee's
/// claim changes nothing; nothing is paid twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_committed_payer_is_struck_off_and_pays_its_payees_in_posting_order() {
    let w = world().await;
    let cheat = w.account(1, FUNDS).await;
    let honest = w.account(2, FUNDS).await;
    let (a, b, c) = (
        w.account(3, FUNDS).await,
        w.account(4, FUNDS).await,
        w.account(5, FUNDS).await,
    );
    const COLLATERAL: u64 = 1_000_000;
    for p in [&cheat, &honest] {
        lock_collateral(&w.ledger, p, w.clearing.account, 1, COLLATERAL)
            .await
            .unwrap();
    }
    let r = |payer: &Operator, payee: &Operator, amount: u64| {
        receipt_in(
            &w.domain,
            &payer.key,
            payer.account.num(),
            payee.account.num(),
            amount,
            amount / 10_000,
        )
    };
    // Each receipt alone is within the cheat's collateral, so each payee's book took it, one
    // shard at a time at the default price of 10,000 per shard.
    for (payee, shards) in [(&a, 60), (&b, 60), (&c, 30)] {
        let mut book = ReceiptBook::new(w.domain.id(), payee.account, 1, Terms::default());
        book.admit(cheat.account, PublicKey::from(&cheat.key), COLLATERAL)
            .unwrap();
        for i in 1..=shards {
            book.serve(cheat.account, 262_144).unwrap();
            book.accept(&r(&cheat, payee, i * 10_000).encode()).unwrap();
        }
    }
    // In consensus order: b posts an early receipt, a posts its receipts (the cheat's and the
    // honest payer's), b its later one, c its own; then the cheat posts a receipt to a for
    // more shards and nothing, to lower a's claim.
    post(&w, &b, &[r(&cheat, &b, 100_000)]).await;
    post(&w, &a, &[r(&cheat, &a, 600_000), r(&honest, &a, 200_000)]).await;
    post(&w, &b, &[r(&cheat, &b, 600_000)]).await;
    post(&w, &c, &[r(&cheat, &c, 300_000)]).await;
    let lower = ReceiptBody {
        amount: 0,
        shards: 1_000,
        ..r(&cheat, &a, 600_000).body
    }
    .sign(&cheat.key);
    post(&w, &cheat, &[lower]).await;
    let everyone = [&a, &b, &c, &cheat, &honest];
    let before = w.balances(&everyone).await;

    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path().join("c.redb"), w.domain.id()).unwrap();
    let members = [
        (&cheat, COLLATERAL),
        (&honest, COLLATERAL),
        (&a, 0),
        (&b, 0),
        (&c, 0),
    ]
    .map(|(o, collateral)| Member {
        account: o.account,
        key: PublicKey::from(&o.key),
        collateral,
    });
    let mut clearing = Clearing::new(
        w.ledger.clone(),
        w.clearing.clone(),
        &w.domain,
        journal,
        members,
        1,
    )
    .unwrap();
    let poll = clearing.poll(1_000).await;
    assert!(poll.failed.is_empty(), "{:?}", poll.failed);
    assert_eq!(poll.settled.len(), 1, "the period settles");
    let report = &poll.settled[0].1;
    assert_eq!(report.struck_off.len(), 1);
    let s = &report.struck_off[0];
    assert_eq!(
        (s.payer, s.owed, s.collateral),
        (cheat.account, 1_500_000, COLLATERAL)
    );
    // b's early 100,000 first, then a's 600,000, then 300,000 of b's later 500,000; c last,
    // with nothing left. The honest payer pays a in full and gets the rest back.
    let after = w.balances(&everyone).await;
    let gained: Vec<i64> = after.iter().zip(&before).map(|(x, y)| x - y).collect();
    assert_eq!(
        gained,
        [600_000 + 200_000, 400_000, 0, 0, 800_000],
        "a, b, c, the cheat, the honest payer"
    );

    // The proof is on the topic; any node reading it strikes the cheat off.
    let mut proof = FraudProof { receipts: vec![] };
    for m in w.ledger.topic_messages(w.topic, 1, 100).await.unwrap() {
        if let Ok(part) = FraudProof::parse_message(&m.message) {
            proof.merge(part);
        }
    }
    assert_eq!(proof, s.proof);
    assert_eq!(
        proof.verify(&w.domain.id(), &PublicKey::from(&cheat.key), COLLATERAL),
        Ok(cheat.account)
    );
    let mut book = ReceiptBook::new(w.domain.id(), a.account, 2, Terms::default());
    book.admit(cheat.account, PublicKey::from(&cheat.key), COLLATERAL)
        .unwrap();
    book.expel(s.payer);
    assert!(book.should_disconnect(cheat.account));
    assert!(book.serve(cheat.account, 1).is_err());
    assert_eq!(
        book.admit(cheat.account, PublicKey::from(&cheat.key), COLLATERAL),
        Err(BookError::NotAllowed(cheat.account))
    );

    // Polling again settles nothing twice; a fresh clearing on the same journal neither.
    let again = clearing.poll(1_001).await;
    assert!(again.settled.is_empty() && again.failed.is_empty());
    drop(clearing);
    let journal = Journal::open(dir.path().join("c.redb"), w.domain.id()).unwrap();
    let members = [(&cheat, COLLATERAL), (&honest, COLLATERAL)].map(|(o, collateral)| Member {
        account: o.account,
        key: PublicKey::from(&o.key),
        collateral,
    });
    let mut restarted = Clearing::new(
        w.ledger.clone(),
        w.clearing.clone(),
        &w.domain,
        journal,
        members,
        1,
    )
    .unwrap();
    let poll = restarted.poll(1_002).await;
    assert!(poll.failed.is_empty(), "{:?}", poll.failed);
    assert_eq!(w.balances(&everyone).await, after, "nothing paid twice");
}

/// A payer takes shards and never signs a receipt, or stops signing part way: at the default
/// terms it gets `DEFAULT_MAX_AHEAD` shards no receipt pays for, no more — the loss bound the
/// README states, 64 × 10,000 tinybars per payer, per payee, per period.
#[test]
fn a_payer_that_stops_paying_takes_at_most_max_ahead_shards() {
    let (me, viewer) = (AccountId::new(2000), AccountId::new(1001));
    let terms = Terms::default();
    assert_eq!(terms.max_ahead, DEFAULT_MAX_AHEAD);
    assert_eq!(terms.price, Price::per_shard(DEFAULT_PRICE_PER_SHARD));
    let mut book = ReceiptBook::new(domain().id(), me, 1, terms);
    book.admit(viewer, PublicKey::from(&key(1)), 1 << 40)
        .unwrap();
    let mut tab = PayerTab::new(domain().id(), viewer, key(1), 1);
    tab.agree(me, terms.price);
    // It pays for ten shards, then stops.
    for _ in 0..10 {
        book.serve(viewer, 262_144).unwrap();
        tab.received(me, 262_144);
        book.accept(&tab.sign(me).encode()).unwrap();
    }
    let mut unpaid = 0u64;
    while book.serve(viewer, 262_144).is_ok() {
        unpaid += 1;
        assert!(unpaid <= DEFAULT_MAX_AHEAD, "served past the bound");
    }
    assert_eq!(unpaid, DEFAULT_MAX_AHEAD);
    assert!(matches!(
        book.serve(viewer, 262_144),
        Err(BookError::ReceiptDue { unpaid: 64, .. })
    ));
    // What the payee is owed by its newest receipt, and what it lost.
    let held: u64 = book.newest().map(|r| r.body.amount).sum();
    assert_eq!(held, 10 * DEFAULT_PRICE_PER_SHARD);
    let lost = terms.price.owed(unpaid, unpaid * 262_144);
    assert_eq!(lost, 640_000);
    // A credit tier of its own bounds it the same way at its own `max_ahead`.
    let tier = CreditTier {
        max_credit: 1 << 40,
        max_ahead: 3,
    };
    let mut book = ReceiptBook::with_allowlist(
        domain().id(),
        me,
        1,
        terms,
        Allowlist::closed([(viewer, tier)]),
    );
    book.admit(viewer, PublicKey::from(&key(1)), 1 << 40)
        .unwrap();
    let served = (0..10).filter(|_| book.serve(viewer, 1).is_ok()).count();
    assert_eq!(served, 3);
}

/// A payee pads its answers with valid blocks nobody asked for (self-made, or asked of another
/// peer, or sent twice) and bills them: the payer pays only for the blocks it asked of that
/// payee, refuses to sign for more, and the padding counts against the payee. An honest payee
/// asked for the same kind of blocks is paid for each.
#[test]
fn a_payee_padding_its_answers_is_paid_only_for_blocks_asked_of_it() {
    let (padder, honest, viewer) = (
        AccountId::new(2000),
        AccountId::new(2001),
        AccountId::new(1001),
    );
    let terms = Terms::default();
    let price = terms.price;
    let mut padder_book = ReceiptBook::new(domain().id(), padder, 1, terms);
    let mut honest_book = ReceiptBook::new(domain().id(), honest, 1, terms);
    for b in [&mut padder_book, &mut honest_book] {
        b.admit(viewer, PublicKey::from(&key(1)), 1 << 40).unwrap();
    }
    let mut tab = PayerTab::new(domain().id(), viewer, key(1), 1);
    tab.agree(padder, price);
    tab.agree(honest, price);

    // The viewer asks the padder for two blocks and the honest payee for one.
    assert!(tab.ask(padder, b"cid-a"));
    assert!(tab.ask(padder, b"cid-b"));
    assert!(tab.ask(honest, b"cid-c"));
    // The padder answers with both, plus three blocks of its own, the block asked of the
    // honest payee, and a second copy of one it already sent — and meters all seven.
    let sent: [&[u8]; 7] = [
        b"cid-a", b"cid-b", b"pad-1", b"pad-2", b"pad-3", b"cid-c", b"cid-a",
    ];
    let mut refused = 0;
    for block in sent {
        padder_book.serve(viewer, 262_144).unwrap();
        match tab.receive(padder, block, 262_144) {
            Ok(()) => {}
            Err(Unrequested { payee, count }) => {
                assert_eq!(payee, padder);
                refused += 1;
                assert_eq!(count, refused);
            }
        }
    }
    assert_eq!(refused, 5);
    assert_eq!(tab.unrequested(padder), 5);
    // The payer signs for the two blocks it asked for, and not a tinybar more.
    let r = tab.sign(padder);
    assert_eq!(
        (r.body.shards, r.body.amount),
        (2, price.owed(2, 2 * 262_144))
    );
    assert_eq!(
        tab.sign_asked(padder, price.owed(7, 7 * 262_144)),
        Err(Overcharged {
            payee: padder,
            asked: price.owed(7, 7 * 262_144),
            shards: 2,
            allowed: price.owed(2, 2 * 262_144),
        })
    );
    padder_book.accept(&r.encode()).unwrap();
    let held: u64 = padder_book.newest().map(|r| r.body.amount).sum();
    assert_eq!(held, price.owed(2, 2 * 262_144));
    // The unpaid padding counts against the padder's own exposure limit: it can serve that
    // much less on credit, so padding costs it service, never the payer money.
    let mut more = 0;
    while padder_book.serve(viewer, 262_144).is_ok() {
        more += 1;
    }
    assert_eq!(more, DEFAULT_MAX_AHEAD - 5);

    // The honest payee, asked for one block and sending it, is paid for it in full, even
    // though the padder sent a copy first.
    honest_book.serve(viewer, 262_144).unwrap();
    tab.receive(honest, b"cid-c", 262_144).unwrap();
    let r = tab.sign(honest);
    honest_book.accept(&r.encode()).unwrap();
    assert_eq!((r.body.shards, r.body.amount), (1, price.owed(1, 262_144)));
    assert_eq!(tab.unrequested(honest), 0);
    assert_eq!(tab.outstanding(honest), 0);
    assert_eq!(tab.outstanding(padder), 0);
}

/// A payer's asks are bounded per payee: memory does not grow without limit.
#[test]
fn asks_outstanding_at_one_payee_are_bounded() {
    use streamspace_payments::book::MAX_ASKED_PER_PAYEE;
    let payee = AccountId::new(2000);
    let mut tab = PayerTab::new(domain().id(), AccountId::new(1001), key(1), 1);
    for i in 0..MAX_ASKED_PER_PAYEE {
        assert!(tab.ask(payee, &(i as u64).to_be_bytes()));
    }
    assert!(!tab.ask(payee, b"one more"));
    // Asking again for one already asked is not a new ask.
    assert!(tab.ask(payee, &0u64.to_be_bytes()));
    assert_eq!(tab.outstanding(payee), MAX_ASKED_PER_PAYEE);
}

/// What a payer with a clock `skew` seconds off the payee's paid, served one shard a second
/// from the middle of period 1 to the middle of period 2 (periods of 100 s, a grace of 10 s).
struct Boundary {
    served: u64,
    /// Final receipts per period, as the book hands them to settlement.
    paid: u64,
    refused_wrong_period: u64,
}

fn across_a_boundary(skew: i64) -> Boundary {
    const PERIOD: u64 = 100;
    const GRACE: u64 = 10;
    let (me, viewer) = (AccountId::new(2000), AccountId::new(1001));
    let terms = Terms::default();
    let mut book = ReceiptBook::new(domain().id(), me, 1, terms);
    book.admit(viewer, PublicKey::from(&key(1)), 1 << 40)
        .unwrap();
    let mut tab = PayerTab::new(domain().id(), viewer, key(1), 1);
    tab.agree(me, terms.price);
    let (mut served, mut paid, mut refused) = (0, 0, 0);
    let mut settle = |closed: Option<(u64, Vec<SignedReceipt>)>| {
        if let Some((_, rs)) = closed {
            paid += rs.iter().map(|r| r.body.amount).sum::<u64>();
        }
    };
    for t in 150..=260u64 {
        settle(book.tick(t, PERIOD, GRACE).closed);
        let payer_now = t.checked_add_signed(skew).unwrap();
        let payer_period = payer_now / PERIOD;
        if payer_period > 1 && tab.sign(me).body.period < payer_period {
            tab = PayerTab::new(domain().id(), viewer, key(1), payer_period);
            tab.agree(me, terms.price);
        }
        if book.serve(viewer, 262_144).is_err() {
            continue;
        }
        served += 1;
        tab.received(me, 262_144);
        match book.accept(&tab.sign(me).encode()) {
            Ok(_) => {}
            Err(BookError::WrongPeriod { .. }) => refused += 1,
            Err(e) => panic!("honest receipt refused: {e}"),
        }
    }
    settle(book.end_grace());
    paid += book.newest().map(|r| r.body.amount).sum::<u64>();
    Boundary {
        served,
        paid,
        refused_wrong_period: refused,
    }
}

/// Clocks skewed around a period boundary: a payer whose clock is behind keeps paying for the
/// closing period after the payee moved on, one whose clock is ahead pays for the next one
/// before the payee got there — within the grace every shard served is paid exactly once.
/// After the grace, receipts of the closed period are refused and the payee loses at most
/// what it served on credit meanwhile (never more than `max_ahead` shards).
#[test]
fn receipts_at_a_period_boundary_are_kept_for_a_grace_and_never_after() {
    let price = DEFAULT_PRICE_PER_SHARD;
    for skew in [-9, -5, -1, 0, 1, 5, 9] {
        let b = across_a_boundary(skew);
        assert_eq!(b.served, 111, "skew {skew}: an honest payer was paused");
        assert_eq!(
            b.paid,
            b.served * price,
            "skew {skew}: paid for other than served"
        );
        assert_eq!(b.refused_wrong_period, 0, "skew {skew}");
    }
    // 30 s behind, beyond the grace: its receipts of period 1 sent between the end of the
    // grace (t = 210) and its own boundary (t = 230) are refused.
    let b = across_a_boundary(-30);
    assert_eq!(b.refused_wrong_period, 20);
    let lost = b.served * price - b.paid;
    assert!(lost <= DEFAULT_MAX_AHEAD * price, "lost {lost}");
    assert_eq!(lost, 20 * price);

    // A receipt of the closed period, sent after the grace, is refused outright.
    let (me, viewer) = (AccountId::new(2000), AccountId::new(1001));
    let mut book = ReceiptBook::new(domain().id(), me, 1, Terms::default());
    book.admit(viewer, PublicKey::from(&key(1)), 1 << 40)
        .unwrap();
    let mut tab = PayerTab::new(domain().id(), viewer, key(1), 1);
    tab.agree(me, Terms::default().price);
    book.serve(viewer, 1).unwrap();
    tab.received(me, 1);
    assert_eq!(book.tick(195, 100, 10).opened, Some(2));
    assert_eq!(book.periods(), (2, Some(1)));
    let closed = book.tick(210, 100, 10).closed.unwrap();
    assert_eq!(closed, (1, Vec::new()));
    assert!(matches!(
        book.accept(&tab.sign(me).encode()),
        Err(BookError::WrongPeriod { got: 1, current: 2 })
    ));
    // A receipt of a period not open yet is refused too.
    let early = PayerTab::new(domain().id(), viewer, key(1), 3);
    assert!(matches!(
        book.accept(&early.sign(me).encode()),
        Err(BookError::WrongPeriod { got: 3, .. })
    ));
}

/// A payer that paid in the new period cannot go back and pay the closing one again for the
/// same shards: its receipt of the new period closed the old one for it.
#[test]
fn a_shard_is_paid_once_across_the_boundary() {
    let (me, viewer) = (AccountId::new(2000), AccountId::new(1001));
    let terms = Terms::default();
    let mut book = ReceiptBook::new(domain().id(), me, 1, terms);
    book.admit(viewer, PublicKey::from(&key(1)), 1 << 40)
        .unwrap();
    for _ in 0..4 {
        book.serve(viewer, 1).unwrap();
    }
    book.roll(2);
    // Four shards served, none acknowledged: the payer acknowledges them in period 2…
    let mut new_tab = PayerTab::new(domain().id(), viewer, key(1), 2);
    new_tab.agree(me, terms.price);
    for _ in 0..4 {
        new_tab.received(me, 1);
    }
    book.accept(&new_tab.sign(me).encode()).unwrap();
    // …then tries to have the same four paid from period 1 as well.
    let mut old_tab = PayerTab::new(domain().id(), viewer, key(1), 1);
    old_tab.agree(me, terms.price);
    for _ in 0..4 {
        old_tab.received(me, 1);
    }
    assert!(matches!(
        book.accept(&old_tab.sign(me).encode()),
        Err(BookError::WrongPeriod { got: 1, .. })
    ));
    // A receipt for more shards than were served, split across the two periods, is refused.
    book.serve(viewer, 1).unwrap();
    for _ in 0..2 {
        new_tab.received(me, 1);
    }
    assert!(matches!(
        book.accept(&new_tab.sign(me).encode()),
        Err(BookError::Unserved {
            shards: 6,
            served: 5,
            ..
        })
    ));
    let (_, closed) = book.end_grace().unwrap();
    assert!(closed.is_empty());
    let held: u64 = book.newest().map(|r| r.body.amount).sum();
    assert_eq!(held, terms.price.owed(4, 4));
}

/// A payer killed mid-period restarts from its persisted tab: its next receipt is accepted and
/// the payee is owed exactly what it served. Restarted at zero instead, its receipts are
/// refused as stale and the payee stops serving it after `max_ahead` shards.
#[test]
fn a_payer_killed_mid_period_resumes_its_tab() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tab.redb");
    let (me, viewer) = (AccountId::new(2000), AccountId::new(1001));
    let terms = Terms::default();
    let mut book = ReceiptBook::new(domain().id(), me, 1, terms);
    book.admit(viewer, PublicKey::from(&key(1)), 1 << 40)
        .unwrap();
    {
        let mut tab = PayerTab::open(&path, domain().id(), viewer, key(1), 1).unwrap();
        tab.agree(me, terms.price);
        for _ in 0..10 {
            book.serve(viewer, 262_144).unwrap();
            tab.received(me, 262_144);
            book.accept(&tab.sign_durable(me).unwrap().encode())
                .unwrap();
        }
        // Killed here: one more shard arrived, its receipt never signed.
        book.serve(viewer, 262_144).unwrap();
        tab.received(me, 262_144);
    }
    // Restarted from the file: it resumes at 10 shards.
    let mut tab = PayerTab::open(&path, domain().id(), viewer, key(1), 1).unwrap();
    assert_eq!(tab.sign(me).body.shards, 10);
    book.serve(viewer, 262_144).unwrap();
    tab.received(me, 262_144);
    let r = tab.sign_durable(me).unwrap();
    // The shard received before the kill and never acknowledged is not paid (it counts as
    // one unpaid in the book), the one after is: 11 paid, 12 served.
    book.accept(&r.encode()).unwrap();
    assert_eq!(r.body.shards, 11);
    let held: u64 = book.newest().map(|r| r.body.amount).sum();
    assert_eq!(held, 11 * DEFAULT_PRICE_PER_SHARD);

    // The same file under another deployment is refused, not reused.
    drop(tab);
    let other = Domain::new("other", "private", AccountId::new(1), TopicId::new(2));
    assert!(matches!(
        PayerTab::open(&path, other.id(), viewer, key(1), 1),
        Err(streamspace_payments::book::TabError::OtherDomain)
    ));

    // Restarted at zero (no file), the payer's receipts are stale and service stops.
    let mut fresh = PayerTab::new(domain().id(), viewer, key(1), 1);
    fresh.agree(me, terms.price);
    let mut served_after = 0;
    while book.serve(viewer, 262_144).is_ok() {
        served_after += 1;
        fresh.received(me, 262_144);
        if fresh.sign(me).body.shards <= 11 {
            assert!(matches!(
                book.accept(&fresh.sign(me).encode()),
                Err(BookError::Stale { .. })
            ));
        }
    }
    assert!(served_after < DEFAULT_MAX_AHEAD);
}
