//! The embedded ledger: the conformance suite in-process, plus what only it can show
//! (persistence, a SIGKILLed process, conservation under random workloads).

mod suite;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use proptest::prelude::*;
use streamspace_ledger::fees::FEE_COLLECTOR;
use streamspace_ledger::local::{GENESIS_SUPPLY, TREASURY};
use streamspace_ledger::{
    Ledger, LedgerExt, LocalLedger, Operator, PublicKey, SystemClock, TransactionId,
};
use suite::{Harness, key};

async fn local() -> Harness<LocalLedger> {
    // Each test gets its own file; the directory lives as long as the process.
    let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
    let treasury_key = key(200);
    let ledger = LocalLedger::open(
        dir.path().join("ledger.redb"),
        PublicKey::from(&treasury_key),
        Arc::new(SystemClock),
    )
    .unwrap();
    Harness {
        ledger,
        treasury: Operator {
            account: TREASURY,
            key: treasury_key,
        },
    }
}

conformance_tests!(local());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_positions() {
    suite::chunk_positions(local().await).await
}

#[tokio::test]
async fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.redb");
    let k = key(200);
    let (alice, id) = {
        let ledger = LocalLedger::open(&path, PublicKey::from(&k), Arc::new(SystemClock)).unwrap();
        let t = Operator {
            account: TREASURY,
            key: k.clone(),
        };
        let alice = ledger
            .create_account(&t, PublicKey::from(&key(1)), 777)
            .await
            .unwrap();
        let r = ledger.transfer(&t, alice, 23).await.unwrap();
        (alice, r.id)
    };
    let ledger = LocalLedger::open(&path, PublicKey::from(&k), Arc::new(SystemClock)).unwrap();
    assert_eq!(ledger.balance(alice).await.unwrap(), 800);
    assert!(ledger.receipt(id).await.is_ok());
    // Entity numbers continue, they are not reused.
    let t = Operator {
        account: TREASURY,
        key: k,
    };
    let next = ledger
        .create_account(&t, PublicKey::from(&key(2)), 0)
        .await
        .unwrap();
    assert!(next.num() > alice.num());
}

/// Child side of the crash test: transfers forever, printing each acknowledged transaction id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Some(path) = std::env::var_os("STREAMSPACE_LEDGER_CRASH_CHILD") else {
        return;
    };
    let k = key(200);
    let ledger = LocalLedger::open(path, PublicKey::from(&k), Arc::new(SystemClock)).unwrap();
    let t = Operator {
        account: TREASURY,
        key: k,
    };
    let dest = streamspace_ledger::AccountId::new(3);
    loop {
        // Several in flight at once so batches hold many transactions.
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (ledger, t) = (ledger.clone(), t.clone());
                tokio::spawn(async move { ledger.transfer(&t, dest, 1).await })
            })
            .collect();
        for task in tasks {
            let r = task.await.unwrap().unwrap();
            println!("{} {}", r.id.valid_start.secs, r.id.valid_start.nanos);
        }
    }
}

#[tokio::test]
async fn killed_process_keeps_every_acknowledged_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    for round in 0..3u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("STREAMSPACE_LEDGER_CRASH_CHILD", &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut acked = Vec::new();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            let mut parts = line.split_whitespace();
            if let (Some(s), Some(n)) = (parts.next(), parts.next()) {
                if let (Ok(s), Ok(n)) = (s.parse(), n.parse()) {
                    acked.push(streamspace_ledger::Timestamp { secs: s, nanos: n });
                }
            }
            if acked.len() as u64 >= 100 + round * 150 {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            acked.len() as u64 >= 100 + round * 150,
            "child acknowledged only {}",
            acked.len()
        );
        let ledger =
            LocalLedger::open(&path, PublicKey::from(&key(200)), Arc::new(SystemClock)).unwrap();
        for valid_start in &acked {
            let id = TransactionId {
                payer: TREASURY,
                valid_start: *valid_start,
            };
            assert!(
                ledger.receipt(id).await.is_ok(),
                "round {round}: acknowledged {id} lost"
            );
        }
        // Nothing half-applied: every tinybar is accounted for.
        let total = ledger.balance(TREASURY).await.unwrap()
            + ledger.balance(FEE_COLLECTOR).await.unwrap()
            + ledger
                .balance(streamspace_ledger::AccountId::new(3))
                .await
                .unwrap();
        assert_eq!(total, GENESIS_SUPPLY, "round {round}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Random transfers among a few accounts, some overdrawing: the supply is conserved,
    /// no balance goes negative, and each payer's loss is its transfers plus its fees.
    #[test]
    fn random_workloads_conserve_supply(ops in proptest::collection::vec((0usize..4, 0usize..4, 0i64..3_000_000_000), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let h = local().await;
            let mut accts = Vec::new();
            for i in 0..4u8 {
                let k = key(50 + i);
                let a = h.ledger.create_account(&h.treasury, PublicKey::from(&k), 1_000_000_000).await.unwrap();
                accts.push(Operator { account: a, key: k });
            }
            for (from, to, amount) in ops {
                if from == to { continue; }
                let _ = h.ledger.transfer(&accts[from], accts[to].account, amount).await;
            }
            let mut total = h.ledger.balance(TREASURY).await.unwrap() + h.ledger.balance(FEE_COLLECTOR).await.unwrap()
                + h.ledger.balance(streamspace_ledger::AccountId::new(3)).await.unwrap();
            for a in &accts {
                let b = h.ledger.balance(a.account).await.unwrap();
                prop_assert!(b >= 0);
                total += b;
            }
            prop_assert_eq!(total, GENESIS_SUPPLY);
            Ok(())
        })?;
    }
}

/// The valid-start window and consensus times follow the injected clock.
#[tokio::test]
async fn injected_clock_drives_the_time_box() {
    use streamspace_ledger::{ManualClock, Status, Timestamp, Transaction, TxKind};
    let dir = tempfile::tempdir().unwrap();
    let k = key(200);
    let clock = ManualClock::new(Timestamp {
        secs: 1_700_000_000,
        nanos: 0,
    });
    let ledger = LocalLedger::open(
        dir.path().join("c.redb"),
        PublicKey::from(&k),
        Arc::new(clock.clone()),
    )
    .unwrap();
    let t = Operator {
        account: TREASURY,
        key: k.clone(),
    };
    let id = TransactionId::generate(TREASURY, ledger.now());
    let tx = |id| {
        Transaction::new(
            id,
            TxKind::Transfer {
                hbar: vec![(TREASURY, -1), (FEE_COLLECTOR, 1)],
                nfts: vec![],
            },
        )
    };
    // 120 s valid duration, 10 s margin: still fine after 100 s, expired after 115 s.
    clock.advance(100);
    let r = ledger.execute(tx(id), &[&k]).await.unwrap();
    assert_eq!(
        r.consensus,
        Timestamp {
            secs: 1_700_000_100,
            nanos: 0
        }
    );
    let id = TransactionId::generate(TREASURY, ledger.now());
    clock.advance(115);
    assert_eq!(
        ledger.execute(tx(id), &[&k]).await.unwrap_err().status(),
        Some(Status::TransactionExpired)
    );
    // A stopped clock still gives strictly increasing consensus times. (Ids are chosen here:
    // other tests in this process generate ids from the system clock at the same time.)
    let now = ledger.now().as_nanos();
    let at = |n: i128| TransactionId {
        payer: TREASURY,
        valid_start: Timestamp::from_nanos(now - 1_000_000_000 + n),
    };
    let a = ledger
        .execute(tx(at(0)), &[&t.key])
        .await
        .unwrap()
        .consensus;
    let b = ledger
        .execute(tx(at(1)), &[&t.key])
        .await
        .unwrap()
        .consensus;
    assert!(b > a);
}
