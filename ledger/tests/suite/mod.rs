//! The conformance suite every `Ledger` backend passes: each rule of Hedera this crate relies
//! on, good cases and bad. Backends instantiate it with `conformance_tests!`.

#![allow(dead_code, missing_docs)]

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use streamspace_ledger::fees::{self, FEE_COLLECTOR};
use streamspace_ledger::running_hash;
use streamspace_ledger::tx::chunk_message;
use streamspace_ledger::{
    AccountId, ChunkInfo, Ledger, LedgerError, LedgerExt, NftId, NftTransfer, Operator, PublicKey,
    Status, TopicId, Transaction, TransactionId, TxKind,
};

/// A backend under test: its ledger and an operator holding funds.
pub(crate) struct Harness<L> {
    pub(crate) ledger: L,
    pub(crate) treasury: Operator,
}

pub(crate) fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

const HBAR: i64 = 100_000_000;

async fn funded<L: Ledger>(h: &Harness<L>, seed: u8, amount: i64) -> Operator {
    let k = key(seed);
    let account = h
        .ledger
        .create_account(&h.treasury, PublicKey::from(&k), amount)
        .await
        .expect("create account");
    Operator { account, key: k }
}

fn status(r: Result<impl std::fmt::Debug, LedgerError>) -> Status {
    match r {
        Ok(v) => panic!("expected a failure, got {v:?}"),
        Err(e) => e.status().unwrap_or_else(|| panic!("no status in {e}")),
    }
}

fn transfer(id: TransactionId, hbar: Vec<(AccountId, i64)>) -> Transaction {
    Transaction::new(id, TxKind::Transfer { hbar, nfts: vec![] })
}

pub(crate) async fn accounts_and_fees<L: Ledger>(h: Harness<L>) {
    let before_collector = h.ledger.balance(FEE_COLLECTOR).await.unwrap();
    let alice = funded(&h, 1, 10 * HBAR).await;
    assert_eq!(h.ledger.balance(alice.account).await.unwrap(), 10 * HBAR);
    let bob = funded(&h, 2, 0).await;
    let r = h
        .ledger
        .transfer(&alice, bob.account, 3 * HBAR)
        .await
        .unwrap();
    assert_eq!(r.status, Status::Success);
    let fee = fees::fee(&TxKind::Transfer {
        hbar: vec![],
        nfts: vec![],
    });
    assert_eq!(h.ledger.balance(bob.account).await.unwrap(), 3 * HBAR);
    assert_eq!(
        h.ledger.balance(alice.account).await.unwrap(),
        7 * HBAR - fee
    );
    let record = h.ledger.record(r.id).await.unwrap();
    assert_eq!(record.fee, fee);
    assert!(record.transfers.contains(&(alice.account, -3 * HBAR - fee)));
    assert!(record.transfers.contains(&(bob.account, 3 * HBAR)));
    assert!(record.transfers.contains(&(FEE_COLLECTOR, fee)));
    assert!(h.ledger.balance(FEE_COLLECTOR).await.unwrap() > before_collector);
    assert_eq!(h.ledger.receipt(r.id).await.unwrap(), r);
}

pub(crate) async fn multi_party_transfer_is_atomic<L: Ledger>(h: Harness<L>) {
    let a = funded(&h, 3, 5 * HBAR).await;
    let b = funded(&h, 4, 5 * HBAR).await;
    let c = funded(&h, 5, 0).await;
    let id = TransactionId::generate(a.account, h.ledger.now());
    let tx = transfer(
        id,
        vec![
            (a.account, -2 * HBAR),
            (b.account, -HBAR),
            (c.account, 3 * HBAR),
        ],
    );
    h.ledger.execute(tx, &[&a.key, &b.key]).await.unwrap();
    assert_eq!(h.ledger.balance(c.account).await.unwrap(), 3 * HBAR);

    // b cannot cover its part: nothing moves, the payer still pays the fee.
    let (a0, b0, c0) = (
        h.ledger.balance(a.account).await.unwrap(),
        h.ledger.balance(b.account).await.unwrap(),
        h.ledger.balance(c.account).await.unwrap(),
    );
    let id = TransactionId::generate(a.account, h.ledger.now());
    let tx = transfer(
        id,
        vec![
            (a.account, -HBAR),
            (b.account, -100 * HBAR),
            (c.account, 101 * HBAR),
        ],
    );
    assert_eq!(
        status(h.ledger.execute(tx, &[&a.key, &b.key]).await),
        Status::InsufficientAccountBalance
    );
    let fee = h.ledger.record(id).await.unwrap().fee;
    assert!(fee > 0);
    assert_eq!(
        h.ledger.receipt(id).await.unwrap().status,
        Status::InsufficientAccountBalance
    );
    assert_eq!(h.ledger.balance(a.account).await.unwrap(), a0 - fee);
    assert_eq!(h.ledger.balance(b.account).await.unwrap(), b0);
    assert_eq!(h.ledger.balance(c.account).await.unwrap(), c0);
}

pub(crate) async fn signatures_are_required<L: Ledger>(h: Harness<L>) {
    let a = funded(&h, 6, 5 * HBAR).await;
    let b = funded(&h, 7, 5 * HBAR).await;
    // b's money moves but only a signs.
    let id = TransactionId::generate(a.account, h.ledger.now());
    let tx = transfer(id, vec![(b.account, -HBAR), (a.account, HBAR)]);
    assert_eq!(
        status(h.ledger.execute(tx, &[&a.key]).await),
        Status::InvalidSignature
    );
    // The payer signs with a key that is not its own.
    let id = TransactionId::generate(a.account, h.ledger.now());
    let tx = transfer(id, vec![(a.account, -HBAR), (b.account, HBAR)]);
    let r = h.ledger.execute(tx, &[&key(99)]).await;
    assert!(
        matches!(
            r,
            Err(LedgerError::Precheck {
                status: Status::InvalidSignature,
                ..
            })
        ),
        "{r:?}"
    );
    // No signature at all.
    let id = TransactionId::generate(a.account, h.ledger.now());
    let tx = transfer(id, vec![(a.account, -HBAR), (b.account, HBAR)]);
    assert_eq!(
        status(h.ledger.execute(tx, &[]).await),
        Status::InvalidSignature
    );
    assert_eq!(h.ledger.balance(b.account).await.unwrap(), 5 * HBAR);
}

pub(crate) async fn payer_must_afford_the_fee<L: Ledger>(h: Harness<L>) {
    let poor = funded(&h, 8, 10).await;
    let r = h.ledger.transfer(&poor, h.treasury.account, 1).await;
    assert!(
        matches!(
            r,
            Err(LedgerError::Precheck {
                status: Status::InsufficientPayerBalance,
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(
        h.ledger.balance(poor.account).await.unwrap(),
        10,
        "no fee at precheck"
    );
    // A max fee below the fee.
    let id = TransactionId::generate(h.treasury.account, h.ledger.now());
    let tx = transfer(id, vec![(h.treasury.account, -1), (poor.account, 1)]).with_max_fee(1);
    assert_eq!(
        status(h.ledger.execute(tx, &[&h.treasury.key]).await),
        Status::InsufficientTxFee
    );
}

pub(crate) async fn transaction_ids_are_unique_and_windowed<L: Ledger>(h: Harness<L>) {
    let a = funded(&h, 9, 5 * HBAR).await;
    let b = funded(&h, 10, 0).await;
    let id = TransactionId::generate(a.account, h.ledger.now());
    let tx = transfer(id, vec![(a.account, -HBAR), (b.account, HBAR)]);
    h.ledger.execute(tx.clone(), &[&a.key]).await.unwrap();
    // A retry with the same id is refused: the money moves once.
    assert_eq!(
        status(h.ledger.execute(tx, &[&a.key]).await),
        Status::DuplicateTransaction
    );
    assert_eq!(h.ledger.balance(b.account).await.unwrap(), HBAR);

    let now = h.ledger.now();
    let old = TransactionId {
        payer: a.account,
        valid_start: now.plus_secs(-200),
    };
    let tx = transfer(old, vec![(a.account, -1), (b.account, 1)]);
    assert_eq!(
        status(h.ledger.execute(tx, &[&a.key]).await),
        Status::TransactionExpired
    );
    let future = TransactionId {
        payer: a.account,
        valid_start: now.plus_secs(60),
    };
    let tx = transfer(future, vec![(a.account, -1), (b.account, 1)]);
    assert_eq!(
        status(h.ledger.execute(tx, &[&a.key]).await),
        Status::InvalidTransactionStart
    );
    let id = TransactionId::generate(a.account, now);
    let mut tx = transfer(id, vec![(a.account, -1), (b.account, 1)]);
    tx.valid_duration_secs = 1000;
    assert_eq!(
        status(h.ledger.execute(tx, &[&a.key]).await),
        Status::InvalidTransactionDuration
    );
}

pub(crate) async fn malformed_transfers<L: Ledger>(h: Harness<L>) {
    let a = funded(&h, 11, 5 * HBAR).await;
    let b = funded(&h, 12, 0).await;
    let now = h.ledger.now();
    let t = |v| transfer(TransactionId::generate(a.account, now), v);
    assert_eq!(
        status(
            h.ledger
                .execute(t(vec![(a.account, -2), (b.account, 1)]), &[&a.key])
                .await
        ),
        Status::InvalidAccountAmounts
    );
    assert_eq!(
        status(
            h.ledger
                .execute(t(vec![(a.account, -2), (a.account, 2)]), &[&a.key])
                .await
        ),
        Status::AccountRepeatedInAccountAmounts
    );
    let many: Vec<_> = (0..11)
        .map(|i| (AccountId::new(5000 + i), if i == 0 { -10 } else { 1 }))
        .collect();
    assert_eq!(
        status(h.ledger.execute(t(many), &[&a.key]).await),
        Status::TransferListSizeLimitExceeded
    );
    assert_eq!(
        status(
            h.ledger
                .execute(
                    t(vec![(a.account, -2), (AccountId::new(999_999), 2)]),
                    &[&a.key]
                )
                .await
        ),
        Status::InvalidAccountId
    );
    assert_eq!(
        status(h.ledger.balance(AccountId::new(999_999)).await),
        Status::InvalidAccountId
    );
    let unknown_payer = TransactionId::generate(AccountId::new(999_998), now);
    assert_eq!(
        status(
            h.ledger
                .execute(transfer(unknown_payer, vec![]), &[&a.key])
                .await
        ),
        Status::PayerAccountNotFound
    );
    assert_eq!(
        status(h.ledger.receipt(unknown_payer).await),
        Status::ReceiptNotFound
    );
    assert_eq!(
        status(h.ledger.record(unknown_payer).await),
        Status::RecordNotFound
    );
}

pub(crate) async fn topics<L: Ledger>(h: Harness<L>) {
    let a = funded(&h, 13, 50 * HBAR).await;
    let submit = key(14);
    let id = TransactionId::generate(a.account, h.ledger.now());
    let tx = Transaction::new(
        id,
        TxKind::CreateTopic {
            memo: "market".into(),
            submit_key: Some(PublicKey::from(&submit)),
        },
    );
    let topic = h
        .ledger
        .execute(tx, &[&a.key])
        .await
        .unwrap()
        .topic
        .expect("topic id");

    let mut receipts = Vec::new();
    for m in ["one", "two", "three"] {
        let r = h
            .ledger
            .submit_message(&a, topic, Bytes::from(m), Some(&submit))
            .await
            .unwrap();
        receipts.extend(r);
    }
    let msgs = h.ledger.topic_messages(topic, 1, 100).await.unwrap();
    assert_eq!(
        msgs.iter().map(|m| m.sequence).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(msgs[2].message, Bytes::from("three"));
    assert!(
        msgs.windows(2).all(|w| w[0].consensus < w[1].consensus),
        "consensus times increase"
    );
    // The running hash chain recomputes from the messages alone.
    let mut hash = vec![0u8; 48];
    for m in &msgs {
        hash = running_hash::next(&hash, a.account, topic, m.consensus, m.sequence, &m.message)
            .to_vec();
        assert_eq!(hash, m.running_hash);
    }
    assert_eq!(receipts[2].topic_running_hash.as_ref(), Some(&hash));
    let info = h.ledger.topic_info(topic).await.unwrap();
    assert_eq!((info.sequence, info.running_hash), (3, hash));
    assert_eq!(
        h.ledger.topic_messages(topic, 3, 10).await.unwrap().len(),
        1
    );

    // The submit key is required.
    assert_eq!(
        status(
            h.ledger
                .submit_message(&a, topic, Bytes::from("x"), None)
                .await
        ),
        Status::InvalidSignature
    );
    // Unknown topic.
    assert_eq!(
        status(
            h.ledger
                .submit_message(&a, TopicId::new(777_777), Bytes::from("x"), None)
                .await
        ),
        Status::InvalidTopicId
    );
    assert_eq!(
        status(h.ledger.topic_info(TopicId::new(777_777)).await),
        Status::InvalidTopicId
    );
    // One transaction may carry at most 1,024 bytes.
    let id = TransactionId::generate(a.account, h.ledger.now());
    let tx = Transaction::new(
        id,
        TxKind::SubmitMessage {
            topic,
            message: Bytes::from(vec![1u8; 1025]),
            chunk: None,
        },
    );
    assert_eq!(
        status(h.ledger.execute(tx, &[&a.key, &submit]).await),
        Status::MessageSizeTooLarge
    );

    // Longer messages are chunked; the chunks carry their position and the first id.
    let long = Bytes::from((0..3000u32).map(|i| i as u8).collect::<Vec<_>>());
    let rs = h
        .ledger
        .submit_message(&a, topic, long.clone(), Some(&submit))
        .await
        .unwrap();
    assert_eq!(rs.len(), 3);
    let chunks = h.ledger.topic_messages(topic, 4, 10).await.unwrap();
    assert_eq!(chunks.len(), 3);
    let first = chunks[0].chunk.expect("chunk info").initial;
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(
            c.chunk,
            Some(ChunkInfo {
                initial: first,
                total: 3,
                number: i as u32 + 1
            })
        );
    }
    let joined: Vec<u8> = chunks.iter().flat_map(|c| c.message.to_vec()).collect();
    assert_eq!(joined, long.to_vec());
}

/// Chunk positions are checked by the ledger. (The SDK chunks messages itself and cannot send
/// a chunk with forged positions, so this runs where transactions are built by hand.)
pub(crate) async fn chunk_positions<L: Ledger>(h: Harness<L>) {
    let a = funded(&h, 18, 50 * HBAR).await;
    let id = TransactionId::generate(a.account, h.ledger.now());
    let tx = Transaction::new(
        id,
        TxKind::CreateTopic {
            memo: String::new(),
            submit_key: None,
        },
    );
    let topic = h
        .ledger
        .execute(tx, &[&a.key])
        .await
        .unwrap()
        .topic
        .expect("topic id");
    let long = Bytes::from(vec![7u8; 3000]);
    let id = TransactionId::generate(a.account, h.ledger.now());
    let mut bad = chunk_message(id, topic, &long, 1024);
    if let TxKind::SubmitMessage { chunk: Some(c), .. } = &mut bad[1].kind {
        c.number = 9;
    }
    assert_eq!(
        status(h.ledger.execute(bad[1].clone(), &[&a.key]).await),
        Status::InvalidChunkNumber
    );
    // The first chunk must carry its own id as the initial id.
    let id = TransactionId::generate(a.account, h.ledger.now());
    let mut bad = chunk_message(id, topic, &long, 1024);
    bad[0].id = TransactionId::generate(a.account, h.ledger.now());
    assert_eq!(
        status(h.ledger.execute(bad[0].clone(), &[&a.key]).await),
        Status::InvalidChunkTransactionId
    );
}

pub(crate) async fn nfts<L: Ledger>(h: Harness<L>) {
    let studio = funded(&h, 15, 100 * HBAR).await;
    let buyer = funded(&h, 16, 100 * HBAR).await;
    let supply = key(17);
    let now = h.ledger.now();
    let tx = Transaction::new(
        TransactionId::generate(studio.account, now),
        TxKind::CreateNft {
            name: "Film licenses".into(),
            symbol: "FILM".into(),
            treasury: studio.account,
            supply_key: PublicKey::from(&supply),
        },
    );
    let token = h
        .ledger
        .execute(tx, &[&studio.key])
        .await
        .unwrap()
        .token
        .expect("token id");
    let tx = Transaction::new(
        TransactionId::generate(studio.account, now),
        TxKind::MintNft {
            token,
            metadata: vec![Bytes::from("license-1"), Bytes::from("license-2")],
        },
    );
    // The supply key must sign mints.
    assert_eq!(
        status(h.ledger.execute(tx.clone(), &[&studio.key]).await),
        Status::InvalidSignature
    );
    let mut tx = tx;
    tx.id = TransactionId::generate(studio.account, now);
    let serials = h
        .ledger
        .execute(tx, &[&studio.key, &supply])
        .await
        .unwrap()
        .serials;
    assert_eq!(serials, vec![1, 2]);
    let nft = NftId { token, serial: 1 };
    let info = h.ledger.nft_info(nft).await.unwrap();
    assert_eq!(
        (info.owner, info.metadata),
        (studio.account, Bytes::from("license-1"))
    );

    // Selling the NFT for hbar in one atomic transfer needs the buyer associated first.
    let sale = |id| {
        Transaction::new(
            id,
            TxKind::Transfer {
                hbar: vec![(buyer.account, -5 * HBAR), (studio.account, 5 * HBAR)],
                nfts: vec![NftTransfer {
                    nft,
                    from: studio.account,
                    to: buyer.account,
                }],
            },
        )
    };
    let id = TransactionId::generate(buyer.account, h.ledger.now());
    assert_eq!(
        status(h.ledger.execute(sale(id), &[&buyer.key, &studio.key]).await),
        Status::TokenNotAssociatedToAccount
    );
    let assoc = Transaction::new(
        TransactionId::generate(buyer.account, h.ledger.now()),
        TxKind::Associate {
            account: buyer.account,
            tokens: vec![token],
        },
    );
    h.ledger.execute(assoc, &[&buyer.key]).await.unwrap();
    let before = h.ledger.balance(studio.account).await.unwrap();
    let id = TransactionId::generate(buyer.account, h.ledger.now());
    h.ledger
        .execute(sale(id), &[&buyer.key, &studio.key])
        .await
        .unwrap();
    assert_eq!(h.ledger.nft_info(nft).await.unwrap().owner, buyer.account);
    assert_eq!(
        h.ledger.balance(studio.account).await.unwrap(),
        before + 5 * HBAR
    );
    assert_eq!(h.ledger.record(id).await.unwrap().nft_transfers.len(), 1);
    // The studio no longer owns it.
    let id = TransactionId::generate(studio.account, h.ledger.now());
    let back = Transaction::new(
        id,
        TxKind::Transfer {
            hbar: vec![],
            nfts: vec![NftTransfer {
                nft,
                from: studio.account,
                to: buyer.account,
            }],
        },
    );
    assert_eq!(
        status(h.ledger.execute(back, &[&studio.key]).await),
        Status::SenderDoesNotOwnNftSerialNo
    );
    assert_eq!(
        status(h.ledger.nft_info(NftId { token, serial: 99 }).await),
        Status::InvalidNftId
    );
    let tx = Transaction::new(
        TransactionId::generate(studio.account, h.ledger.now()),
        TxKind::MintNft {
            token,
            metadata: vec![Bytes::from(vec![0u8; 101])],
        },
    );
    assert_eq!(
        status(h.ledger.execute(tx, &[&studio.key, &supply]).await),
        Status::MetadataTooLong
    );
}

pub(crate) async fn concurrent_callers_conserve_hbar<L: Ledger + Clone + 'static>(h: Harness<L>) {
    let mut ops = Vec::new();
    for i in 0..16u8 {
        ops.push(funded(&h, 100 + i, 10 * HBAR).await);
    }
    let total_before: i64 = {
        let mut s = h.ledger.balance(FEE_COLLECTOR).await.unwrap();
        for o in &ops {
            s += h.ledger.balance(o.account).await.unwrap();
        }
        s
    };
    let mut tasks = Vec::new();
    for round in 0..10 {
        for (i, from) in ops.iter().enumerate() {
            let ledger = h.ledger.clone();
            let from = from.clone();
            let to = ops[(i + round + 1) % ops.len()].account;
            tasks.push(tokio::spawn(async move {
                ledger.transfer(&from, to, 1000 + i as i64).await
            }));
        }
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut total_after = h.ledger.balance(FEE_COLLECTOR).await.unwrap();
    for o in &ops {
        total_after += h.ledger.balance(o.account).await.unwrap();
    }
    assert_eq!(
        total_before, total_after,
        "hbar is neither created nor destroyed"
    );
}

/// An account created with `receiverSigRequired` must sign every transfer that credits it;
/// its creation must carry its key's signature too.
pub(crate) async fn receiver_signature_required<L: Ledger>(h: Harness<L>) {
    let guarded_key = key(41);
    let create = |id| {
        Transaction::new(
            id,
            TxKind::CreateAccount {
                key: PublicKey::from(&guarded_key).into(),
                initial_balance: HBAR,
                receiver_sig_required: true,
            },
        )
    };
    // Without the new key's signature the creation fails.
    let id = TransactionId::generate(h.treasury.account, h.ledger.now());
    assert_eq!(
        status(h.ledger.execute(create(id), &[&h.treasury.key]).await),
        Status::InvalidSignature
    );
    let id = TransactionId::generate(h.treasury.account, h.ledger.now());
    let guarded = h
        .ledger
        .execute(create(id), &[&h.treasury.key, &guarded_key])
        .await
        .unwrap()
        .account
        .unwrap();
    let sender = funded(&h, 42, 5 * HBAR).await;
    // A transfer to it signed by the sender only is refused and moves nothing.
    let r = h.ledger.transfer(&sender, guarded, HBAR).await;
    assert_eq!(status(r), Status::InvalidSignature);
    assert_eq!(h.ledger.balance(guarded).await.unwrap(), HBAR);
    let fee = fees::fee(&TxKind::Transfer {
        hbar: vec![],
        nfts: vec![],
    });
    assert_eq!(
        h.ledger.balance(sender.account).await.unwrap(),
        5 * HBAR - fee
    );
    // Signed by both, it goes through.
    let id = TransactionId::generate(sender.account, h.ledger.now());
    let tx = transfer(id, vec![(sender.account, -HBAR), (guarded, HBAR)]);
    h.ledger
        .execute(tx, &[&sender.key, &guarded_key])
        .await
        .unwrap();
    assert_eq!(h.ledger.balance(guarded).await.unwrap(), 2 * HBAR);
    // Sending from it needs only its own signature, as for any account.
    let g = Operator {
        account: guarded,
        key: guarded_key.clone(),
    };
    h.ledger
        .transfer(&g, sender.account, HBAR / 2)
        .await
        .unwrap();
}

/// An account under a 2-of-3 threshold key moves hbar only with two of its three keys' signatures;
/// one is refused and moves nothing. Malformed keys are refused at precheck.
pub(crate) async fn threshold_keys<L: Ledger>(h: Harness<L>) {
    use streamspace_ledger::Key;
    let members = [key(61), key(62), key(63)];
    let two_of_three = Key::Threshold {
        threshold: 2,
        keys: members.iter().map(|k| PublicKey::from(k).into()).collect(),
    };
    let create = |key: Key| {
        Transaction::new(
            TransactionId::generate(h.treasury.account, h.ledger.now()),
            TxKind::CreateAccount {
                key,
                initial_balance: 10 * HBAR,
                receiver_sig_required: false,
            },
        )
    };
    let vault = h
        .ledger
        .execute(create(two_of_three.clone()), &[&h.treasury.key])
        .await
        .unwrap()
        .account
        .unwrap();
    let dest = funded(&h, 64, 0).await;
    let out = |amount: i64| {
        let id = TransactionId::generate(h.treasury.account, h.ledger.now());
        transfer(id, vec![(vault, -amount), (dest.account, amount)])
    };
    // One member alone (the treasury paying the fee) moves nothing.
    let r = h
        .ledger
        .execute(out(HBAR), &[&h.treasury.key, &members[0]])
        .await;
    assert_eq!(status(r), Status::InvalidSignature);
    assert_eq!(h.ledger.balance(vault).await.unwrap(), 10 * HBAR);
    // As its own payer with one key, refused before consensus.
    let id = TransactionId::generate(vault, h.ledger.now());
    let tx = transfer(id, vec![(vault, -HBAR), (dest.account, HBAR)]);
    assert_eq!(
        status(h.ledger.execute(tx, &[&members[2]]).await),
        Status::InvalidSignature
    );
    assert_eq!(h.ledger.balance(vault).await.unwrap(), 10 * HBAR);
    // Any two of the three move it.
    h.ledger
        .execute(out(HBAR), &[&h.treasury.key, &members[0], &members[2]])
        .await
        .unwrap();
    h.ledger
        .execute(out(HBAR), &[&h.treasury.key, &members[1], &members[2]])
        .await
        .unwrap();
    assert_eq!(h.ledger.balance(dest.account).await.unwrap(), 2 * HBAR);
    // A key list (all of its keys) nested in a threshold: 1 of [member 0, all of 1 and 2].
    let nested = Key::Threshold {
        threshold: 1,
        keys: vec![
            PublicKey::from(&members[0]).into(),
            Key::Threshold {
                threshold: 2,
                keys: vec![
                    PublicKey::from(&members[1]).into(),
                    PublicKey::from(&members[2]).into(),
                ],
            },
        ],
    };
    let other = h
        .ledger
        .execute(create(nested), &[&h.treasury.key])
        .await
        .unwrap()
        .account
        .unwrap();
    let id = TransactionId::generate(h.treasury.account, h.ledger.now());
    let tx = transfer(id, vec![(other, -HBAR), (dest.account, HBAR)]);
    assert_eq!(
        status(h.ledger.execute(tx, &[&h.treasury.key, &members[1]]).await),
        Status::InvalidSignature
    );
    let id = TransactionId::generate(h.treasury.account, h.ledger.now());
    let tx = transfer(id, vec![(other, -HBAR), (dest.account, HBAR)]);
    h.ledger
        .execute(tx, &[&h.treasury.key, &members[1], &members[2]])
        .await
        .unwrap();
    // Thresholds of 0 or above the keys listed are refused before consensus.
    for threshold in [0, 4] {
        let bad = Key::Threshold {
            threshold,
            keys: members.iter().map(|k| PublicKey::from(k).into()).collect(),
        };
        assert_eq!(
            status(h.ledger.execute(create(bad), &[&h.treasury.key]).await),
            Status::InvalidKeyEncoding
        );
    }
}

/// A transaction above 6,144 bytes is refused with `TRANSACTION_OVERSIZE` before consensus:
/// no fee, nothing applied.
pub(crate) async fn oversize_transactions_are_refused<L: Ledger>(h: Harness<L>) {
    let poster = funded(&h, 43, 5 * HBAR).await;
    let id = TransactionId::generate(poster.account, h.ledger.now());
    let topic = h
        .ledger
        .execute(
            Transaction::new(
                id,
                TxKind::CreateTopic {
                    memo: "big".into(),
                    submit_key: None,
                },
            ),
            &[&poster.key],
        )
        .await
        .unwrap()
        .topic
        .unwrap();
    let before = h.ledger.balance(poster.account).await.unwrap();
    let id = TransactionId::generate(poster.account, h.ledger.now());
    let big = Transaction::new(
        id,
        TxKind::SubmitMessage {
            topic,
            message: Bytes::from(vec![7u8; 12 * 1024]),
            chunk: None,
        },
    );
    assert_eq!(
        status(h.ledger.execute(big, &[&poster.key]).await),
        Status::TransactionOversize
    );
    assert_eq!(h.ledger.balance(poster.account).await.unwrap(), before);
    assert_eq!(h.ledger.topic_info(topic).await.unwrap().sequence, 0);
    // The same bytes, chunked as the SDKs chunk them, go through.
    let rs = h
        .ledger
        .submit_message(&poster, topic, Bytes::from(vec![7u8; 12 * 1024]), None)
        .await
        .unwrap();
    assert_eq!(rs.len(), 12);
    assert_eq!(h.ledger.topic_info(topic).await.unwrap().sequence, 12);
}

#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn accounts_and_fees() {
            suite::accounts_and_fees($make.await).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn multi_party_transfer_is_atomic() {
            suite::multi_party_transfer_is_atomic($make.await).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn signatures_are_required() {
            suite::signatures_are_required($make.await).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn payer_must_afford_the_fee() {
            suite::payer_must_afford_the_fee($make.await).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn transaction_ids_are_unique_and_windowed() {
            suite::transaction_ids_are_unique_and_windowed($make.await).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn malformed_transfers() {
            suite::malformed_transfers($make.await).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn topics() {
            suite::topics($make.await).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn nfts() {
            suite::nfts($make.await).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn receiver_signature_required() {
            suite::receiver_signature_required($make.await).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn threshold_keys() {
            suite::threshold_keys($make.await).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn oversize_transactions_are_refused() {
            suite::oversize_transactions_are_refused($make.await).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_callers_conserve_hbar() {
            suite::concurrent_callers_conserve_hbar($make.await).await
        }
    };
}
