//! Receipts, exposure, fraud proofs, netting properties, and settlement that survives a crash
//! at every step without paying twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use streamspace_ledger::local::TREASURY;
use streamspace_ledger::{
    AccountId, Ledger, LedgerExt, LocalLedger, Operator, PublicKey, SystemClock, TopicId,
    Transaction, TransactionId, TxKind,
};
use streamspace_payments::book::{
    Allowlist, BookError, CreditTier, PayerTab, Price, PriceList, ReceiptBook, ServiceTier, Terms,
};
use streamspace_payments::fraud::{FraudProof, FraudProofError};
use streamspace_payments::merkle::{Tree, verify};
use streamspace_payments::netting::{MAX_RECIPIENTS, StruckOff, plan};
use streamspace_payments::receipt::{
    Domain, DomainId, ReceiptBody, ReceiptError, ReceiptSigner, SignedReceipt, verify_batch,
};
use streamspace_payments::settle::{
    Journal, Phase, RECEIPTS_PER_MESSAGE, SettleError, Settler, anchor_message, lock_collateral,
    publish_fraud_proof,
};

fn key(s: u8) -> SigningKey {
    SigningKey::from_bytes(&[s; 32])
}

/// The domain of the tests that settle on no ledger.
fn domain() -> DomainId {
    Domain::new(
        "test",
        "private",
        AccountId::new(98_000),
        TopicId::new(98_001),
    )
    .id()
}

fn body(payer: u64, payee: u64, amount: u64, shards: u64) -> ReceiptBody {
    ReceiptBody {
        domain: domain(),
        payer: AccountId::new(payer),
        payee: AccountId::new(payee),
        period: 1,
        amount,
        shards,
    }
}

#[test]
fn forged_truncated_and_tampered_receipts_are_refused() {
    let r = body(1001, 1002, 500, 5).sign(&key(1));
    let bytes = r.encode();
    assert_eq!(
        SignedReceipt::decode(&bytes[..100]),
        Err(ReceiptError::Length(100))
    );
    let mut v = bytes;
    v[0] = 9;
    assert_eq!(SignedReceipt::decode(&v), Err(ReceiptError::Version(9)));
    let mut v = bytes;
    v[5] ^= 1;
    assert_eq!(SignedReceipt::decode(&v), Err(ReceiptError::Domain));
    // Raising the amount breaks the signature.
    let mut v = bytes;
    v[112] ^= 1;
    assert_eq!(
        SignedReceipt::decode(&v).unwrap().verify(),
        Err(ReceiptError::BadSignature)
    );
    // Batch verification catches one bad receipt among many.
    let mut many: Vec<_> = (0..20)
        .map(|i| body(1001, 1002 + i, 10, 1).sign(&key(1)))
        .collect();
    assert!(verify_batch(&many).is_ok());
    many[7].body.amount += 1;
    assert!(verify_batch(&many).is_err());
}

#[test]
fn payee_book_refuses_and_counts_bad_receipts() {
    let (me, viewer, other) = (
        AccountId::new(2000),
        AccountId::new(1001),
        AccountId::new(1003),
    );
    let terms = Terms {
        price: Price::per_shard(100),
        max_ahead: 2,
        disconnect_after: 5,
    };
    let mut book = ReceiptBook::new(domain(), me, 1, terms);
    book.admit(viewer, PublicKey::from(&key(1)), 1_000).unwrap();
    let mut tab = PayerTab::new(domain(), viewer, key(1), 1);
    tab.agree(me, terms.price);
    for _ in 0..2 {
        book.serve(viewer, 1000).unwrap();
        tab.received(me, 1000);
    }
    assert!(matches!(
        book.serve(viewer, 1000),
        Err(BookError::ReceiptDue { unpaid: 2, .. })
    ));
    assert!(matches!(
        book.serve(other, 1000),
        Err(BookError::UnknownPayer(_))
    ));

    let good = tab.sign(me);
    assert_eq!((good.body.amount, good.body.shards), (200, 2));
    let cases: Vec<(SignedReceipt, &str)> = vec![
        (
            ReceiptBody {
                payee: AccountId::new(9),
                ..good.body
            }
            .sign(&key(1)),
            "wrong_payee",
        ),
        (
            ReceiptBody {
                period: 2,
                ..good.body
            }
            .sign(&key(1)),
            "wrong_period",
        ),
        (
            ReceiptBody {
                payer: other,
                ..good.body
            }
            .sign(&key(3)),
            "unknown_payer",
        ),
        (good.body.sign(&key(9)), "key_mismatch"),
        (
            ReceiptBody {
                amount: 150,
                ..good.body
            }
            .sign(&key(1)),
            "underpaid",
        ),
        (
            ReceiptBody {
                amount: 5_000,
                shards: 2,
                ..good.body
            }
            .sign(&key(1)),
            "overpaid",
        ),
        (
            ReceiptBody {
                amount: 300,
                shards: 3,
                ..good.body
            }
            .sign(&key(1)),
            "unserved",
        ),
    ];
    for (r, kind) in &cases {
        let e = book.accept(&r.encode()).unwrap_err();
        assert_eq!(e.kind(), *kind, "{e}");
    }
    book.accept(&good.encode()).unwrap();
    // Replaying it, or an older one, is stale.
    assert_eq!(book.accept(&good.encode()).unwrap_err().kind(), "stale");
    assert_eq!(book.refusals().get("stale"), Some(&1));
    assert_eq!(
        book.accept(&[0u8; 3]).unwrap_err().kind(),
        "malformed_or_forged"
    );
    book.serve(viewer, 1000).unwrap();
    // The viewer's refusals so far: receipt due, key mismatch, underpaid, overpaid, unserved,
    // stale — enough to be dropped.
    assert!(book.should_disconnect(viewer));
    // The payer will not sign more than it received at the price.
    assert!(tab.sign_asked(me, 201).is_err());
    assert!(tab.sign_asked(me, 150).is_ok());
}

#[test]
fn per_byte_and_per_tier_prices() {
    let (me, viewer) = (AccountId::new(2000), AccountId::new(1001));
    let prices = PriceList {
        tier1: Price {
            per_shard: 1_000,
            per_gib: 1 << 30,
        },
        edge: Price::per_gib(3 << 30),
    };
    assert_eq!(prices.price(ServiceTier::Edge), Price::per_gib(3 << 30));
    let terms = Terms {
        max_ahead: 3,
        ..Terms::for_tier(&prices, ServiceTier::Tier1)
    };
    let mut book = ReceiptBook::new(domain(), me, 1, terms);
    book.admit(viewer, PublicKey::from(&key(1)), 1_000_000)
        .unwrap();
    let mut tab = PayerTab::new(domain(), viewer, key(1), 1);
    tab.agree(me, terms.price);
    // Shards of 100, 7 and 250 bytes: 1,000 per shard plus one tinybar per byte.
    for size in [100, 7, 250] {
        book.serve(viewer, size).unwrap();
        tab.received(me, size);
    }
    // A receipt for the first two shards is priced on their bytes, not on the last one's.
    let two = ReceiptBody {
        domain: domain(),
        payer: viewer,
        payee: me,
        period: 1,
        amount: 2_107,
        shards: 2,
    };
    assert!(matches!(
        book.accept(
            &ReceiptBody {
                amount: 2_106,
                ..two
            }
            .sign(&key(1))
            .encode()
        ),
        Err(BookError::Underpaid { owed: 2_107, .. })
    ));
    book.accept(&two.sign(&key(1)).encode()).unwrap();
    let all = tab.sign(me);
    assert_eq!((all.body.amount, all.body.shards), (3_357, 3));
    assert!(matches!(
        book.accept(
            &ReceiptBody {
                amount: 3_356,
                ..all.body
            }
            .sign(&key(1))
            .encode()
        ),
        Err(BookError::Underpaid { owed: 3_357, .. })
    ));
    book.accept(&all.encode()).unwrap();
    // Rounding happens once, on the cumulative bytes: 3 bytes at 1/3 tinybar each cost 1.
    let third = Price::per_gib((1 << 30) / 3);
    assert_eq!((third.owed(0, 1), third.owed(0, 3)), (1, 1));
    assert_eq!(Price::per_gib(u64::MAX).owed(u64::MAX, u64::MAX), u64::MAX);
}

#[test]
fn allowlist_and_credit_tiers() {
    let me = AccountId::new(2000);
    let (trusted, capped, stranger) = (
        AccountId::new(1001),
        AccountId::new(1002),
        AccountId::new(1003),
    );
    let terms = Terms {
        price: Price::per_shard(100),
        ..Terms::default()
    };
    let list = Allowlist::closed([
        (
            trusted,
            CreditTier {
                max_credit: u64::MAX,
                max_ahead: 4,
            },
        ),
        (
            capped,
            CreditTier {
                max_credit: 250,
                max_ahead: 3,
            },
        ),
    ]);
    let mut book = ReceiptBook::with_allowlist(domain(), me, 1, terms, list);
    book.admit(trusted, PublicKey::from(&key(1)), 10_000)
        .unwrap();
    book.admit(capped, PublicKey::from(&key(2)), 10_000)
        .unwrap();
    assert_eq!(
        book.admit(stranger, PublicKey::from(&key(3)), 10_000),
        Err(BookError::NotAllowed(stranger))
    );
    // A receipt from a payer the allowlist refuses says so.
    let from_stranger = body(1003, 2000, 100, 1).sign(&key(3));
    assert_eq!(
        book.accept(&from_stranger.encode()).unwrap_err().kind(),
        "not_allowed"
    );
    assert_eq!(book.refusals().get("not_allowed"), Some(&2));
    // The trusted tier is served four shards ahead; the capped one, three.
    for _ in 0..4 {
        book.serve(trusted, 10).unwrap();
    }
    assert!(book.serve(trusted, 10).is_err());
    for _ in 0..3 {
        book.serve(capped, 10).unwrap();
    }
    assert!(book.serve(capped, 10).is_err());
    // Credit is the collateral capped by the tier: 250 of the 10,000 locked.
    let mut tab = PayerTab::new(domain(), capped, key(2), 1);
    tab.agree(me, terms.price);
    for _ in 0..3 {
        tab.received(me, 10);
    }
    assert!(matches!(
        book.accept(&tab.sign(me).encode()),
        Err(BookError::BeyondCollateral { credit: 250, .. })
    ));
    // An open list admits strangers at the book's default terms, with credit = collateral.
    let mut open = ReceiptBook::new(domain(), me, 1, terms);
    open.admit(stranger, PublicKey::from(&key(3)), 100).unwrap();
    for _ in 0..terms.max_ahead {
        open.serve(stranger, 10).unwrap();
    }
    assert!(open.serve(stranger, 10).is_err());
    open.accept(&from_stranger.encode()).unwrap();
    let list = open.allowlist().clone();
    assert!(list.open && list.banned.is_empty());
}

#[test]
fn signer_with_expanded_key_signs_as_the_plain_key() {
    let k = key(7);
    let signer = ReceiptSigner::new(&k);
    for i in 0..50 {
        let b = body(1001, 1002 + i, i * 10, i);
        let r = signer.sign(&b);
        assert_eq!(r, b.sign(&k));
        r.verify().unwrap();
    }
}

#[test]
fn fraud_proofs() {
    let payer_key = key(1);
    let pk = PublicKey::from(&payer_key);
    let a = body(1001, 2001, 600, 6).sign(&payer_key);
    let b = body(1001, 2002, 600, 6).sign(&payer_key);
    let proof = FraudProof {
        receipts: vec![a, b],
    };
    assert_eq!(
        proof.verify(&domain(), &pk, 1_000),
        Ok(AccountId::new(1001))
    );
    assert_eq!(FraudProof::decode(&proof.encode()).unwrap(), proof);
    assert!(matches!(
        proof.verify(&domain(), &pk, 1_200),
        Err(FraudProofError::WithinCollateral { .. })
    ));
    // One receipt is proof enough when it alone promises more than the collateral.
    assert!(matches!(
        FraudProof { receipts: vec![] }.verify(&domain(), &pk, 0),
        Err(FraudProofError::TooFew)
    ));
    assert_eq!(
        FraudProof { receipts: vec![a] }.verify(&domain(), &pk, 599),
        Ok(AccountId::new(1001))
    );
    assert!(matches!(
        FraudProof { receipts: vec![a] }.verify(&domain(), &pk, 600),
        Err(FraudProofError::WithinCollateral { .. })
    ));
    assert!(matches!(
        FraudProof {
            receipts: vec![a, a]
        }
        .verify(&domain(), &pk, 0),
        Err(FraudProofError::RepeatedPayee(_))
    ));
    let forged = body(1001, 2003, 900, 9).sign(&key(2));
    assert!(matches!(
        FraudProof {
            receipts: vec![a, forged]
        }
        .verify(&domain(), &pk, 0),
        Err(FraudProofError::Mixed(_))
    ));
    let mut tampered = b;
    tampered.body.amount = 10_000;
    assert!(matches!(
        FraudProof {
            receipts: vec![a, tampered]
        }
        .verify(&domain(), &pk, 0),
        Err(FraudProofError::Receipt(_))
    ));
    assert!(FraudProof::decode(&[3, 1, 2]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Netting preserves every account's net position, nobody pays more than they signed for,
    /// and the escrow paid in equals what is paid out. A payer short of collateral is struck
    /// off with a proof that verifies, and its collateral, all of it, pays its payees' claims
    /// in the order posted: every claim before the one that crosses the line in full, every
    /// claim after it not at all.
    #[test]
    fn netting_properties(
        pairs in proptest::collection::btree_map((0u64..8, 0u64..8), 1u64..1_000_000, 0..40),
        slack in 0u64..1_000,
        short in proptest::collection::vec(0u64..2_000_000, 8),
        shuffle in any::<prop::sample::Index>(),
    ) {
        let mut receipts: Vec<SignedReceipt> = pairs
            .iter()
            .filter(|((p, q), _)| p != q)
            .map(|((p, q), amount)| body(1000 + p, 1000 + q, *amount, 1).sign(&key(*p as u8 + 1)))
            .collect();
        // Any consensus order.
        if !receipts.is_empty() {
            let k = shuffle.index(receipts.len());
            receipts.rotate_left(k);
        }
        let mut owed: BTreeMap<AccountId, u64> = BTreeMap::new();
        for r in &receipts {
            *owed.entry(r.body.payer).or_default() += r.body.amount;
        }
        let collateral: BTreeMap<AccountId, u64> = owed
            .iter()
            .map(|(a, v)| (*a, v.saturating_sub(short[(a.num() - 1000) as usize]) + slack))
            .collect();
        let p = plan(&receipts, &collateral).unwrap();
        let paid_out: u64 = p.payouts.iter().map(|(_, v)| v).sum();
        prop_assert_eq!(paid_out, p.collateral);
        prop_assert_eq!(p.net.values().sum::<i128>(), 0);
        for (a, payout) in &p.payouts {
            let c = collateral.get(a).copied().unwrap_or(0);
            // Each account ends with its collateral plus its net position.
            prop_assert_eq!(i128::from(*payout) - i128::from(c), p.net.get(a).copied().unwrap_or(0));
            // A payer never loses more than it signed for.
            let signed = owed.get(a).copied().unwrap_or(0);
            prop_assert!(i128::from(c) - i128::from(*payout) <= i128::from(signed));
        }
        let struck: BTreeMap<AccountId, &StruckOff> = p.struck_off.iter().map(|s| (s.payer, s)).collect();
        for (payer, total) in &owed {
            let c = collateral[payer];
            let mine: Vec<&SignedReceipt> = receipts.iter().filter(|r| r.body.payer == *payer).collect();
            match struck.get(payer) {
                None => {
                    prop_assert!(total <= &c);
                    for r in &mine {
                        prop_assert_eq!(p.settled[&(r.body.payer, r.body.payee)], r.body.amount);
                    }
                }
                Some(s) => {
                    prop_assert!(total > &c);
                    prop_assert_eq!(s.proof.verify(&domain(), &PublicKey::from(&key((payer.num() - 999) as u8)), c), Ok(*payer));
                    // Paid in consensus order until the collateral runs out.
                    let mut left = c;
                    for r in &mine {
                        let due = r.body.amount.min(left);
                        left -= due;
                        prop_assert_eq!(p.settled[&(r.body.payer, r.body.payee)], due);
                    }
                    prop_assert_eq!(left, 0);
                }
            }
        }
        let transfers = p.transfers(AccountId::new(98_000)).unwrap();
        prop_assert_eq!(transfers.len(), p.payouts.len().div_ceil(MAX_RECIPIENTS));
        for t in &transfers {
            prop_assert!(t.len() <= MAX_RECIPIENTS + 1);
            prop_assert_eq!(t.iter().map(|(_, v)| v).sum::<i64>(), 0);
        }
    }

    #[test]
    fn merkle_proofs(n in 1usize..40, pick in 0usize..40) {
        let rs: Vec<_> = (0..n as u64).map(|i| body(1001, 2000 + i, i, 1).sign(&key(1))).collect();
        let tree = Tree::new(&rs);
        let i = pick % n;
        let proof = tree.proof(i).unwrap();
        prop_assert!(verify(&tree.root(), &rs[i], &proof));
        if n > 1 {
            prop_assert!(!verify(&tree.root(), &rs[(i + 1) % n], &proof));
        }
    }
}

#[test]
fn over_collateral_payers_are_struck_off_and_the_period_nets() {
    let rs = vec![
        body(1001, 2001, 600, 6).sign(&key(1)),
        body(1001, 2002, 600, 6).sign(&key(1)),
    ];
    let c = BTreeMap::from([(AccountId::new(1001), 1_000)]);
    let p = plan(&rs, &c).unwrap();
    assert_eq!(p.struck_off.len(), 1);
    assert_eq!(p.struck_off[0].owed, 1_200);
    assert_eq!(
        p.payouts,
        vec![(AccountId::new(2001), 600), (AccountId::new(2002), 400)]
    );
}

struct World {
    _dir: tempfile::TempDir,
    ledger: LocalLedger,
    clearing: Operator,
    topic: streamspace_ledger::TopicId,
    domain: Domain,
    payers: Vec<Operator>,
    payees: Vec<Operator>,
    collateral: BTreeMap<AccountId, u64>,
    receipts: Vec<SignedReceipt>,
}

/// 3 payers, 12 payees (so payouts need several transfers), collateral deposited.
async fn world() -> World {
    world_with(Arc::new(SystemClock)).await
}

async fn world_with(clock: Arc<dyn streamspace_ledger::Clock>) -> World {
    let dir = tempfile::tempdir().unwrap();
    let tk = key(200);
    let ledger = LocalLedger::open(dir.path().join("l.redb"), PublicKey::from(&tk), clock).unwrap();
    let treasury = Operator {
        account: TREASURY,
        key: tk,
    };
    let mk = |seed: u8, bal: i64| {
        let l = ledger.clone();
        let t = treasury.clone();
        async move {
            let k = key(seed);
            Operator {
                account: l
                    .create_account(&t, PublicKey::from(&k), bal)
                    .await
                    .unwrap(),
                key: k,
            }
        }
    };
    let clearing = mk(1, 10_000_000_000).await;
    let id = TransactionId::generate(clearing.account, ledger.now());
    let tx = Transaction::new(
        id,
        TxKind::CreateTopic {
            memo: "settlement".into(),
            submit_key: Some(PublicKey::from(&clearing.key)),
        },
    );
    let topic = ledger
        .execute(tx, &[&clearing.key])
        .await
        .unwrap()
        .topic
        .unwrap();
    let domain = Domain::new("test", "private", clearing.account, topic);
    let mut payers = Vec::new();
    for i in 0..3 {
        payers.push(mk(10 + i, 10_000_000_000).await);
    }
    let mut payees = Vec::new();
    for i in 0..12 {
        payees.push(mk(50 + i, 0).await);
    }
    let mut collateral = BTreeMap::new();
    for p in &payers {
        lock_collateral(&ledger, p, clearing.account, 1, 1_000_000_000)
            .await
            .unwrap();
        collateral.insert(p.account, 1_000_000_000u64);
    }
    let mut receipts = Vec::new();
    for (i, p) in payers.iter().enumerate() {
        for (j, q) in payees.iter().enumerate() {
            let shards = (i * 7 + j * 3 + 1) as u64;
            receipts.push(
                ReceiptBody {
                    domain: domain.id(),
                    payer: p.account,
                    payee: q.account,
                    period: 1,
                    amount: shards * 10_000,
                    shards,
                }
                .sign(&p.key),
            );
        }
    }
    World {
        _dir: dir,
        ledger,
        clearing,
        topic,
        domain,
        payers,
        payees,
        collateral,
        receipts,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_pays_the_plan_and_anchors_the_root() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path().join("j.redb"), w.domain.id()).unwrap();
    journal.record(&w.receipts).unwrap();
    // An older receipt arriving late changes nothing.
    journal
        .record(&[ReceiptBody {
            amount: 1,
            shards: 0,
            ..w.receipts[0].body
        }
        .sign(&w.payers[0].key)])
        .unwrap();
    let before: Vec<i64> = futures_balances(&w.ledger, &w.payees).await;
    let settler = Settler::new(
        w.ledger.clone(),
        journal.clone(),
        w.clearing.clone(),
        &w.domain,
    )
    .unwrap();
    let report = settler.close(1, &w.collateral).await.unwrap();
    assert_eq!(report.receipts, 36);
    assert_eq!(report.transfers, 15usize.div_ceil(9)); // 12 payees + 3 refunds
    let after = futures_balances(&w.ledger, &w.payees).await;
    for (j, q) in w.payees.iter().enumerate() {
        let earned: u64 = w
            .receipts
            .iter()
            .filter(|r| r.body.payee == q.account)
            .map(|r| r.body.amount)
            .sum();
        assert_eq!(after[j] - before[j], earned as i64, "payee {j}");
    }
    let msgs = w.ledger.topic_messages(w.topic, 1, 10).await.unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        msgs[0].message.to_vec(),
        anchor_message(1, 36, &report.root)
    );
    // Closing again is a no-op: nothing is paid twice.
    settler.close(1, &w.collateral).await.unwrap();
    assert_eq!(futures_balances(&w.ledger, &w.payees).await, after);
}

async fn futures_balances(l: &LocalLedger, ops: &[Operator]) -> Vec<i64> {
    let mut out = Vec::new();
    for o in ops {
        out.push(l.balance(o.account).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_step_neither_loses_nor_repeats_a_payment() {
    for phase in [Phase::BeforeSend, Phase::AfterSend] {
        for crash_at in 0..3u32 {
            let w = world().await;
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("j.redb");
            {
                let journal = Journal::open(&path, w.domain.id()).unwrap();
                journal.record(&w.receipts).unwrap();
                let settler =
                    Settler::new(w.ledger.clone(), journal, w.clearing.clone(), &w.domain).unwrap();
                let r = settler
                    .close_with_faults(1, &w.collateral, |i, p| i == crash_at && p == phase)
                    .await;
                assert!(
                    matches!(r, Err(SettleError::Interrupted(i)) if i == crash_at),
                    "{r:?}"
                );
            }
            // Restart from the journal alone.
            let journal = Journal::open(&path, w.domain.id()).unwrap();
            let settler =
                Settler::new(w.ledger.clone(), journal, w.clearing.clone(), &w.domain).unwrap();
            settler.close(1, &w.collateral).await.unwrap();
            for q in &w.payees {
                let earned: u64 = w
                    .receipts
                    .iter()
                    .filter(|r| r.body.payee == q.account)
                    .map(|r| r.body.amount)
                    .sum();
                assert_eq!(
                    w.ledger.balance(q.account).await.unwrap(),
                    earned as i64,
                    "{phase:?} at {crash_at}"
                );
            }
            for p in &w.payers {
                let owed: u64 = w
                    .receipts
                    .iter()
                    .filter(|r| r.body.payer == p.account)
                    .map(|r| r.body.amount)
                    .sum();
                let fee = 100_000; // its collateral deposit
                assert_eq!(
                    w.ledger.balance(p.account).await.unwrap(),
                    10_000_000_000 - fee - owed as i64,
                    "{phase:?} at {crash_at}"
                );
            }
            assert_eq!(
                w.ledger.topic_messages(w.topic, 1, 10).await.unwrap().len(),
                1,
                "anchored once"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fraud_proofs_are_published_and_checkable_from_the_topic() {
    let w = world().await;
    let cheat = &w.payers[0];
    let proof = FraudProof {
        receipts: vec![
            body(cheat.account.num(), 2001, 700_000_000, 1).sign(&cheat.key),
            body(cheat.account.num(), 2002, 700_000_000, 1).sign(&cheat.key),
        ],
    };
    publish_fraud_proof(
        &w.ledger,
        &w.clearing,
        w.topic,
        &proof,
        Some(&w.clearing.key),
    )
    .await
    .unwrap();
    let msgs = w.ledger.topic_messages(w.topic, 1, 10).await.unwrap();
    let read = FraudProof::parse_message(&msgs[0].message).unwrap();
    assert_eq!(
        read.verify(
            &domain(),
            &PublicKey::from(&cheat.key),
            w.collateral[&cheat.account]
        ),
        Ok(cheat.account)
    );
    // The payee expels the payer.
    let mut book = ReceiptBook::new(w.domain.id(), AccountId::new(2001), 1, Terms::default());
    book.admit(cheat.account, PublicKey::from(&cheat.key), 1_000_000_000)
        .unwrap();
    book.expel(cheat.account);
    assert!(book.serve(cheat.account, 1).is_err());
    // Struck off the allowlist: not admitted again, even with fresh collateral.
    assert_eq!(
        book.admit(cheat.account, PublicKey::from(&cheat.key), 1_000_000_000),
        Err(BookError::NotAllowed(cheat.account))
    );
    assert!(book.allowlist().banned.contains(&cheat.account));
}

#[test]
fn journal_lists_the_periods_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path().join("j.redb"), domain()).unwrap();
    assert!(journal.periods().unwrap().is_empty());
    let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let receipt = |period, payee| {
        ReceiptBody {
            domain: domain(),
            payer: AccountId::new(1001),
            payee: AccountId::new(payee),
            period,
            amount: 10,
            shards: 1,
        }
        .sign(&key)
    };
    journal
        .record(&[
            receipt(7, 2000),
            receipt(7, 2001),
            receipt(3, 2000),
            receipt(u64::MAX, 2000),
        ])
        .unwrap();
    assert_eq!(journal.periods().unwrap(), [3, 7, u64::MAX]);
    assert_eq!(journal.receipts(7).unwrap().len(), 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Receipts messages round-trip; every message cut short (at a receipt boundary or not)
    /// and every single-bit change is refused, never a panic.
    #[test]
    fn receipts_messages_round_trip(
        n in 1usize..13,
        amount in 0u64..u64::MAX / 2,
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
        cut in any::<prop::sample::Index>(),
        pick in any::<prop::sample::Index>(),
    ) {
        use streamspace_payments::settle::{parse_receipts_message, receipts_messages, ReceiptsMessageError};
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let receipts: Vec<_> = (0..n as u64)
            .map(|i| ReceiptBody {
                domain: domain(),
                payer: AccountId::new(1001),
                payee: AccountId::new(2000 + i),
                period: 4,
                amount: amount + i,
                shards: i,
            }.sign(&key))
            .collect();
        let messages = receipts_messages(&receipts);
        prop_assert_eq!(messages.len(), n.div_ceil(RECEIPTS_PER_MESSAGE));
        prop_assert!(messages.iter().all(|m| m.len() <= 1024));
        let back: Vec<_> = messages.iter().flat_map(|m| parse_receipts_message(m, &domain()).unwrap()).collect();
        prop_assert_eq!(&back, &receipts);
        let m = &messages[pick.index(messages.len())];
        let mut bad = m.to_vec();
        let i = flip.index(bad.len());
        bad[i] ^= 1 << bit;
        prop_assert!(parse_receipts_message(&bad, &domain()).is_err(), "bit {} of byte {} flipped", bit, i);
        let short = &m[..cut.index(m.len())];
        prop_assert!(parse_receipts_message(short, &domain()).is_err(), "cut at {}", short.len());
        prop_assert_eq!(parse_receipts_message(b"streamspace-period-v1", &domain()), Err(ReceiptsMessageError::NotReceipts));
    }
}

/// Hedera keeps receipts for about three minutes. A settlement that crashed at any step and
/// restarts ten minutes later (an injected clock) finds what it sent in the ledger's history
/// instead of reading the missing receipt as "never happened" and paying again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_resumed_after_receipts_expired_pays_once() {
    use streamspace_ledger::{ManualClock, Timestamp};
    for phase in [Phase::BeforeSend, Phase::AfterSend] {
        for crash_at in 0..3u32 {
            let clock = ManualClock::new(Timestamp::now());
            let w = world_with(Arc::new(clock.clone())).await;
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("j.redb");
            {
                let journal = Journal::open(&path, w.domain.id()).unwrap();
                journal.record(&w.receipts).unwrap();
                let settler =
                    Settler::new(w.ledger.clone(), journal, w.clearing.clone(), &w.domain).unwrap();
                let r = settler
                    .close_with_faults(1, &w.collateral, |i, p| i == crash_at && p == phase)
                    .await;
                assert!(matches!(r, Err(SettleError::Interrupted(i)) if i == crash_at));
            }
            // Restarted ten minutes later: every receipt of what was sent has expired.
            clock.advance(600);
            let journal = Journal::open(&path, w.domain.id()).unwrap();
            let settler =
                Settler::new(w.ledger.clone(), journal, w.clearing.clone(), &w.domain).unwrap();
            settler.close(1, &w.collateral).await.unwrap();
            for q in &w.payees {
                let earned: u64 = w
                    .receipts
                    .iter()
                    .filter(|r| r.body.payee == q.account)
                    .map(|r| r.body.amount)
                    .sum();
                assert_eq!(
                    w.ledger.balance(q.account).await.unwrap(),
                    earned as i64,
                    "{phase:?} at {crash_at}: paid other than earned"
                );
            }
            for p in &w.payers {
                let owed: u64 = w
                    .receipts
                    .iter()
                    .filter(|r| r.body.payer == p.account)
                    .map(|r| r.body.amount)
                    .sum();
                assert_eq!(
                    w.ledger.balance(p.account).await.unwrap(),
                    10_000_000_000 - 100_000 - owed as i64,
                    "{phase:?} at {crash_at}: refunded other than owed"
                );
            }
            assert_eq!(
                w.ledger.topic_messages(w.topic, 1, 10).await.unwrap().len(),
                1,
                "anchored once"
            );
        }
    }
}

/// The embedded ledger answers receipt and record queries for three minutes after consensus,
/// as Hedera's nodes do; its history keeps every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_expire_history_stays() {
    use streamspace_ledger::{ManualClock, Status, Timestamp, fees::RECEIPT_RETENTION_SECS};
    let clock = ManualClock::new(Timestamp::now());
    let w = world_with(Arc::new(clock.clone())).await;
    let r = w
        .ledger
        .transfer(&w.payers[0], w.payees[0].account, 1)
        .await
        .unwrap();
    clock.advance(RECEIPT_RETENTION_SECS);
    assert_eq!(w.ledger.receipt(r.id).await.unwrap(), r);
    clock.advance(1);
    let gone = w.ledger.receipt(r.id).await.unwrap_err();
    assert_eq!(gone.status(), Some(Status::ReceiptNotFound));
    let gone = w.ledger.record(r.id).await.unwrap_err();
    assert_eq!(gone.status(), Some(Status::RecordNotFound));
    assert_eq!(w.ledger.history(r.id).await.unwrap().receipt, r);
}

/// A ledger that, the first time the clearing account anchors, first lets another
/// transaction of the clearing account take that step's id (as another process or tool
/// using the same account could): a 1-tinybar transfer to the treasury.
struct IdTaken {
    inner: LocalLedger,
    clearing: Operator,
    taken: Arc<std::sync::Mutex<Option<TransactionId>>>,
}

impl Ledger for IdTaken {
    async fn execute(
        &self,
        tx: Transaction,
        signers: &[&SigningKey],
    ) -> Result<streamspace_ledger::Receipt, streamspace_ledger::LedgerError> {
        let take = matches!(tx.kind, TxKind::SubmitMessage { .. }) && {
            let mut t = self.taken.lock().unwrap();
            t.is_none() && t.replace(tx.id).is_none()
        };
        if take {
            let other = Transaction::new(
                tx.id,
                TxKind::Transfer {
                    hbar: vec![(self.clearing.account, -1), (TREASURY, 1)],
                    nfts: Vec::new(),
                },
            )
            .with_memo("another tool of the clearing account");
            self.inner
                .execute(other, &[&self.clearing.key])
                .await
                .unwrap();
        }
        self.inner.execute(tx, signers).await
    }
    async fn receipt(
        &self,
        id: TransactionId,
    ) -> Result<streamspace_ledger::Receipt, streamspace_ledger::LedgerError> {
        self.inner.receipt(id).await
    }
    async fn record(
        &self,
        id: TransactionId,
    ) -> Result<streamspace_ledger::Record, streamspace_ledger::LedgerError> {
        self.inner.record(id).await
    }
    async fn history(
        &self,
        id: TransactionId,
    ) -> Result<streamspace_ledger::Record, streamspace_ledger::LedgerError> {
        self.inner.history(id).await
    }
    async fn balance(&self, account: AccountId) -> Result<i64, streamspace_ledger::LedgerError> {
        self.inner.balance(account).await
    }
    async fn topic_info(
        &self,
        topic: TopicId,
    ) -> Result<streamspace_ledger::TopicInfo, streamspace_ledger::LedgerError> {
        self.inner.topic_info(topic).await
    }
    async fn topic_messages(
        &self,
        topic: TopicId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<streamspace_ledger::TopicMessage>, streamspace_ledger::LedgerError> {
        self.inner.topic_messages(topic, from, limit).await
    }
    async fn nft_info(
        &self,
        nft: streamspace_ledger::NftId,
    ) -> Result<streamspace_ledger::NftInfo, streamspace_ledger::LedgerError> {
        self.inner.nft_info(nft).await
    }
    fn now(&self) -> streamspace_ledger::Timestamp {
        self.inner.now()
    }
}

/// A settlement step whose journaled id another transaction of the clearing account took
/// first is not taken for done (the ledger's "duplicate" names the other transaction, whose
/// memo is not the step's): it is sent again with a new id, and the period is anchored once
/// and paid as earned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_id_another_transaction_took_is_still_sent() {
    let w = world().await;
    let ledger = IdTaken {
        inner: w.ledger.clone(),
        clearing: w.clearing.clone(),
        taken: Arc::default(),
    };
    let taken = ledger.taken.clone();
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path().join("j.redb"), w.domain.id()).unwrap();
    journal.record(&w.receipts).unwrap();
    let settler = Settler::new(ledger, journal, w.clearing.clone(), &w.domain).unwrap();
    settler.close(1, &w.collateral).await.unwrap();
    let id = taken.lock().unwrap().expect("the anchor was sent");
    assert_eq!(
        w.ledger.history(id).await.unwrap().memo,
        "another tool of the clearing account",
        "the anchor's first id went to the other transaction"
    );
    let messages = w.ledger.topic_messages(w.topic, 1, 10).await.unwrap();
    assert_eq!(messages.len(), 1, "anchored once");
    for q in &w.payees {
        let earned: u64 = w
            .receipts
            .iter()
            .filter(|r| r.body.payee == q.account)
            .map(|r| r.body.amount)
            .sum();
        assert_eq!(w.ledger.balance(q.account).await.unwrap(), earned as i64);
    }
}
