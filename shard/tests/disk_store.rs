//! The on-disk store: quota, eviction of unpinned blocks only, persistence, crash safety.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use bytes::Bytes;
use futures::TryStreamExt;
use streamspace_shard::block::{Block, RAW};
use streamspace_shard::export::{ByteRange, cat};
use streamspace_shard::import::ImportOptions;
use streamspace_shard::store::{BlockStore, DiskStore, StoreError, add_reader};

fn block(i: u64, len: usize) -> Block {
    let mut data = vec![0u8; len];
    data[..8].copy_from_slice(&i.to_le_bytes());
    Block::encode(cid::Version::V1, RAW, Bytes::from(data))
}

#[tokio::test]
async fn quota_evicts_least_recently_used_unpinned_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path().join("b.redb"), Some(10_000)).unwrap();
    // A pinned DAG of ~4 KB.
    let opts = {
        let mut o = ImportOptions::default().with_cid_version(1).unwrap();
        o.chunker = streamspace_shard::import::Chunker::Size(1000);
        o
    };
    let content: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
    let pinned = add_reader(Some(&store), std::io::Cursor::new(content.clone()), opts)
        .await
        .unwrap();
    assert_eq!(store.pin(&pinned.cid).await.unwrap(), 5);
    assert!(store.is_pinned(&pinned.cid).await.unwrap());

    // Fill the rest with unpinned 1 KB blocks; touch block 0 so it is recent.
    for i in 0..5 {
        store.put(block(i, 1000)).await.unwrap();
    }
    assert!(store.get(block(0, 1000).cid()).await.unwrap().is_some());
    store.put(block(5, 1000)).await.unwrap();
    store.put(block(6, 1000)).await.unwrap();
    assert!(store.used_bytes() <= 10_000);
    // Blocks 1 and 2 were least recently used; 0 was read after them.
    assert!(!store.has(block(1, 1000).cid()).await.unwrap());
    assert!(store.has(block(0, 1000).cid()).await.unwrap());

    // The pinned DAG is intact.
    let out: Vec<Bytes> = cat(&store, pinned.cid, ByteRange::ALL)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(out.concat(), content);

    // A block that cannot fit even after evicting everything unpinned is refused, and nothing
    // changes.
    let before = store.used_bytes();
    let err = store.put(block(99, 7000)).await.unwrap_err();
    assert!(matches!(err, StoreError::QuotaExceeded { .. }), "{err}");
    assert_eq!(store.used_bytes(), before);

    // Unpinned, the DAG can go.
    store.unpin(&pinned.cid).await.unwrap();
    store.put(block(100, 9000)).await.unwrap();
    assert!(store.used_bytes() <= 10_000);
}

/// Held blocks (an answer still being sent) are neither evicted nor deleted; holds count,
/// end with as many releases, bound what eviction can free, and do not outlive the store.
#[tokio::test]
async fn held_blocks_stay_until_released_and_holds_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.redb");
    let store = DiskStore::open(&path, Some(3000)).unwrap();
    let (a, b) = (block(1, 1000), block(2, 1000));
    // Held before it is stored, twice.
    store.hold(a.cid());
    store.hold(a.cid());
    store.put(a.clone()).await.unwrap();
    store.put(b.clone()).await.unwrap();
    assert!(matches!(store.delete(a.cid()).await, Err(StoreError::Pinned(c)) if c == *a.cid()));
    // Over the quota: the oldest block not held goes (b, after a).
    store.put(block(3, 1000)).await.unwrap();
    store.put(block(4, 1000)).await.unwrap();
    assert!(store.has(a.cid()).await.unwrap());
    assert!(!store.has(b.cid()).await.unwrap());
    // One release of two: still held.
    store.release(a.cid());
    store.put(block(5, 1000)).await.unwrap();
    assert!(store.has(a.cid()).await.unwrap());
    // Held blocks bound what can be freed: with everything held, a write over the quota is
    // refused, and nothing held is lost.
    for i in [4, 5] {
        store.hold(block(i, 1000).cid());
    }
    assert!(matches!(
        store.put(block(6, 1000)).await,
        Err(StoreError::QuotaExceeded { .. })
    ));
    assert_eq!(store.len(), 3);
    store.release(a.cid());
    store.put(block(6, 1000)).await.unwrap();
    assert!(!store.has(a.cid()).await.unwrap());
    // A release of a block not held does nothing.
    store.release(b.cid());
    // Holds live in memory: reopened, the store holds nothing.
    drop(store);
    let store = DiskStore::open(&path, Some(3000)).unwrap();
    assert!(store.delete(block(4, 1000).cid()).await.unwrap());
}

/// Holdings sharing a budget hold no more than it together: a reader past it stores its
/// blocks unheld (evictable), and a released hold gives its bytes back.
#[tokio::test]
async fn holdings_share_a_budget_and_hold_no_more() {
    use std::sync::Arc;
    use streamspace_shard::store::{HoldBudget, Holding};
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DiskStore::open(dir.path().join("b.redb"), Some(4000)).unwrap());
    let budget = HoldBudget::new(2000);
    let first = Holding::with_budget(store.clone(), budget.clone());
    let second = Holding::with_budget(store.clone(), budget.clone());
    first.put(block(1, 1000)).await.unwrap();
    second.put(block(2, 1000)).await.unwrap();
    assert_eq!(budget.available(), 0);
    // Past the budget: stored, not held.
    second.put(block(3, 1000)).await.unwrap();
    assert_eq!((first.held_blocks(), second.held_blocks()), (1, 1));
    // Found through a holding past the budget: read, not held.
    assert!(second.get(block(3, 1000).cid()).await.unwrap().is_some());
    assert_eq!(second.held_blocks(), 1);
    // Writes past the quota evict block 3, never 1 or 2.
    for i in 10..14 {
        store.put(block(i, 1000)).await.unwrap();
    }
    assert!(store.has(block(1, 1000).cid()).await.unwrap());
    assert!(store.has(block(2, 1000).cid()).await.unwrap());
    assert!(!store.has(block(3, 1000).cid()).await.unwrap());
    // A release gives its bytes back; a dropped holding gives back all it held.
    second.release(block(2, 1000).cid());
    assert_eq!(budget.available(), 1000);
    drop(first);
    assert_eq!(budget.available(), 2000);
    // Nothing is held now: the oldest blocks go first.
    for i in 20..24 {
        store.put(block(i, 1000)).await.unwrap();
    }
    assert!(!store.has(block(1, 1000).cid()).await.unwrap());
}

#[tokio::test]
async fn pin_of_incomplete_dag_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path().join("b.redb"), None).unwrap();
    let mut opts = ImportOptions::default();
    opts.chunker = streamspace_shard::import::Chunker::Size(100);
    let root = add_reader(
        Some(&store),
        std::io::Cursor::new(vec![1u8; 1000]),
        opts.clone(),
    )
    .await
    .unwrap();
    // Remove a leaf (leaves are all equal here, so one CID).
    let leaf = streamspace_shard::dag::walk(&store, root.cid)
        .try_collect::<Vec<_>>()
        .await
        .unwrap()[1]
        .0;
    store.delete(&leaf).await.unwrap();
    assert!(matches!(
        store.pin(&root.cid).await,
        Err(StoreError::MissingBlock(c)) if c == leaf
    ));
    assert!(!store.is_pinned(&root.cid).await.unwrap());
}

#[tokio::test]
async fn contents_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.redb");
    {
        let store = DiskStore::open(&path, Some(1 << 20)).unwrap();
        for i in 0..10 {
            store.put(block(i, 500)).await.unwrap();
        }
        store.pin(block(3, 500).cid()).await.unwrap();
    }
    let store = DiskStore::open(&path, Some(1 << 20)).unwrap();
    assert_eq!(store.len(), 10);
    assert_eq!(store.used_bytes(), 5000);
    assert!(store.is_pinned(block(3, 500).cid()).await.unwrap());
}

/// Child side of the crash test: writes batches forever, printing the index of each batch
/// once `put_many` has returned.
#[tokio::test]
async fn crash_child_writer() {
    let Some(path) = std::env::var_os("STREAMSPACE_CRASH_CHILD_STORE") else {
        return;
    };
    let store = DiskStore::open(path, None).unwrap();
    for batch in 0u64.. {
        let blocks = (0..8).map(|j| block(batch * 8 + j, 4096)).collect();
        store.put_many(blocks).await.unwrap();
        println!("{batch}");
    }
}

#[tokio::test]
async fn killed_writer_loses_no_acknowledged_block_and_half_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("STREAMSPACE_CRASH_CHILD_STORE", &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acked = None;
        // Kill after a different number of acknowledged batches each round.
        let target = 20 + round * 37;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Ok(n) = line.trim().parse::<u64>() {
                acked = Some(n);
                if n >= target {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL: no destructor, no flush
        child.wait().unwrap();
        let acked = acked.expect("child acknowledged writes");

        let store = DiskStore::open(&path, None).unwrap();
        for i in 0..(acked + 1) * 8 {
            let b = block(i, 4096);
            assert_eq!(
                store.get(b.cid()).await.unwrap().as_ref(),
                Some(b.data()),
                "round {round}: acknowledged block {i} lost"
            );
        }
        // Whole batches only: the count is a multiple of the batch size.
        assert_eq!(store.len() % 8, 0, "round {round}: half a batch applied");
        assert_eq!(store.used_bytes(), store.len() as u64 * 4096);
        drop(store);
    }
}
