//! The on-disk store against concurrent writers and a corrupted file: pins are atomic with
//! eviction, pinned blocks are neither evicted nor deleted, unpinning releases exactly what
//! pinning took, and no read answers bytes that do not hash to their CID.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use cid::Cid;
use futures::TryStreamExt;
use streamspace_shard::block::{Block, RAW, verify};
use streamspace_shard::dag::ExportError;
use streamspace_shard::dag::walk;
use streamspace_shard::export::{ByteRange, cat};
use streamspace_shard::import::ImportOptions;
use streamspace_shard::store::{BlockStore, DiskStore, MemoryStore, StoreError, add_reader};

/// The tables of the layout before pack files, as the tests write them with redb directly.
const BLOCKS: redb::TableDefinition<'_, &[u8], &[u8]> = redb::TableDefinition::new("blocks");
const SIZES: redb::TableDefinition<'_, &[u8], u64> = redb::TableDefinition::new("sizes");
const PINNED: redb::TableDefinition<'_, &[u8], u64> = redb::TableDefinition::new("pinned");
const PINS: redb::TableDefinition<'_, &[u8], u64> = redb::TableDefinition::new("pins");

fn opts() -> ImportOptions {
    let mut o = ImportOptions::default().with_cid_version(1).unwrap();
    o.chunker = streamspace_shard::import::Chunker::Size(1000);
    o
}

/// `len` bytes that differ for every `seed`.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn raw_block(seed: u64, len: usize) -> Block {
    Block::encode(cid::Version::V1, RAW, Bytes::from(content(seed, len)))
}

async fn add(store: &DiskStore, data: &[u8]) -> Cid {
    add_reader(Some(store), std::io::Cursor::new(data.to_vec()), opts())
        .await
        .unwrap()
        .cid
}

async fn read_all(store: &DiskStore, root: Cid) -> Result<Vec<u8>, ExportError> {
    let parts: Vec<Bytes> = cat(store, root, ByteRange::ALL).try_collect().await?;
    Ok(parts.concat())
}

/// The distinct blocks of a DAG, each verified by the walk (and here once more).
async fn blocks_of(store: &DiskStore, root: Cid) -> Vec<(Cid, Bytes)> {
    let blocks: Vec<(Cid, Bytes)> = walk(store, root).try_collect().await.unwrap();
    for (cid, data) in &blocks {
        verify(cid, data).unwrap();
    }
    blocks
}

/// The store's index: multihash → (pack, offset, length) of the block's bytes.
const INDEX: redb::TableDefinition<'_, &[u8], (u64, u64, u64)> =
    redb::TableDefinition::new("block_index");

/// Overwrites the stored bytes of `cid` in the closed store at `path` (in its pack file) with
/// other bytes of the same length, as a failing disk would.
fn corrupt_in_file(path: &Path, cid: &Cid) {
    let (pack, offset, len) = {
        let db = redb::Database::open(path).unwrap();
        let read = db.begin_read().unwrap();
        let table = read.open_table(INDEX).unwrap();
        table
            .get(cid.hash().to_bytes().as_slice())
            .unwrap()
            .unwrap()
            .value()
    };
    let mut packs = path.as_os_str().to_owned();
    packs.push(".packs");
    let file = Path::new(&packs).join(format!("{pack:016x}.pack"));
    let mut bytes = std::fs::read(&file).unwrap();
    let block = &mut bytes[offset as usize..(offset + len) as usize];
    block.iter_mut().for_each(|b| *b ^= 0x5a);
    std::fs::write(&file, bytes).unwrap();
}

#[tokio::test]
async fn a_block_corrupted_on_disk_is_never_answered_and_can_be_put_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.redb");
    let loose = raw_block(1, 3000);
    let film = content(2, 5000);
    let (root, leaf, node) = {
        let store = DiskStore::open(&path, Some(1 << 20)).unwrap();
        store.put(loose.clone()).await.unwrap();
        let root = add(&store, &film).await;
        store.pin(&root).await.unwrap();
        let blocks = blocks_of(&store, root).await;
        let leaf = blocks
            .iter()
            .find(|(c, _)| c.codec() == RAW)
            .unwrap()
            .clone();
        // An unpinned DAG whose root node goes bad.
        let other = add(&store, &content(3, 2500)).await;
        let node = blocks_of(&store, other).await[0].clone();
        (root, leaf, node)
    };
    corrupt_in_file(&path, loose.cid());
    corrupt_in_file(&path, &leaf.0);
    corrupt_in_file(&path, &node.0);

    let store = DiskStore::open(&path, Some(1 << 20)).unwrap();
    let used = store.used_bytes();
    assert!(store.has(loose.cid()).await.unwrap());
    // The bad bytes are not answered; the block is gone and counted once.
    assert_eq!(store.get(loose.cid()).await.unwrap(), None);
    assert_eq!(store.corrupt_blocks(), 1);
    assert!(!store.has(loose.cid()).await.unwrap());
    assert_eq!(store.used_bytes(), used - 3000);
    assert_eq!(store.get(loose.cid()).await.unwrap(), None);
    assert_eq!(store.corrupt_blocks(), 1);
    // The correct block is stored again and read back.
    store.put(loose.clone()).await.unwrap();
    assert_eq!(
        store.get(loose.cid()).await.unwrap().as_ref(),
        Some(loose.data())
    );
    assert_eq!(store.used_bytes(), used);

    // A corrupt node met by a pin walk: the pin is refused and the node dropped.
    assert!(matches!(
        store.pin(&node.0).await,
        Err(StoreError::MissingBlock(c)) if c == node.0
    ));
    assert_eq!(store.corrupt_blocks(), 2);
    assert!(!store.has(&node.0).await.unwrap());
    assert!(!store.is_pinned(&node.0).await.unwrap());
    store
        .put(Block::new(node.0, node.1.clone()).unwrap())
        .await
        .unwrap();
    store.pin(&node.0).await.unwrap();
    assert_eq!(store.corrupt_blocks(), 2);

    // A pinned leaf: reading the file stops at the missing block instead of giving wrong bytes.
    assert!(matches!(
        read_all(&store, root).await,
        Err(ExportError::MissingBlock(c)) if c == leaf.0
    ));
    assert_eq!(store.corrupt_blocks(), 3);
    assert!(!store.has(&leaf.0).await.unwrap());
    assert!(store.is_pinned(&root).await.unwrap());
    store
        .put(Block::new(leaf.0, leaf.1.clone()).unwrap())
        .await
        .unwrap();
    assert_eq!(read_all(&store, root).await.unwrap(), film);
    // Put back, it is pinned again: not deleted, not evicted.
    assert!(matches!(
        store.delete(&leaf.0).await,
        Err(StoreError::Pinned(c)) if c == leaf.0
    ));
    let pinned_bytes: u64 = blocks_of(&store, root)
        .await
        .iter()
        .map(|(_, d)| d.len() as u64)
        .sum();
    // Room for both pinned DAGs, not for the loose block too.
    assert_eq!(store.set_quota(Some(pinned_bytes + 4000)).await.unwrap(), 1);
    assert!(!store.has(loose.cid()).await.unwrap());
    assert_eq!(read_all(&store, root).await.unwrap(), film);
    assert_eq!(read_all(&store, node.0).await.unwrap(), content(3, 2500));
    assert_eq!(store.corrupt_blocks(), 3);
}

/// Several tasks add and pin files, others fill the store with unpinned blocks past its quota,
/// one moves the quota up and down: every pin that succeeds holds a whole DAG that no eviction
/// touches.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_add_pin_evict_keeps_every_pinned_dag_whole() {
    const PINNERS: u64 = 4;
    const FILES: u64 = 10;
    const FILE: usize = 4000;
    const SMALL: u64 = 96 << 10;
    const LARGE: u64 = 192 << 10;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.redb");
    let store = DiskStore::open(&path, Some(LARGE)).unwrap();
    let shared = content(1_000, FILE);
    let filling = Arc::new(AtomicBool::new(true));

    // At most three files of each pinner and the shared one are pinned at a time (about
    // 55 KB), well inside the smaller quota, so no write is ever refused for pinned bytes.
    let mut tasks = Vec::new();
    for t in 0..PINNERS {
        let store = store.clone();
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut kept: Vec<(Cid, Vec<u8>)> = Vec::new();
            let mut retries = 0u32;
            let files = (0..FILES)
                .map(|r| content(t * 100 + r, FILE))
                .chain([shared]);
            for (i, data) in files.enumerate() {
                // Add, then pin; an eviction in between makes the pin fail whole, and the
                // file is added again. Once the fillers stop, nothing evicts a file in flight.
                let (root, n) = loop {
                    let root = add(&store, &data).await;
                    match store.pin(&root).await {
                        Ok(n) => break (root, n),
                        Err(StoreError::MissingBlock(_)) => retries += 1,
                        Err(e) => panic!("pin: {e}"),
                    }
                };
                assert_eq!(n, 5, "four leaves and a root");
                // Pinned means whole, while the others keep evicting.
                assert_eq!(read_all(&store, root).await.unwrap(), data);
                kept.push((root, data));
                // Files pinned two rounds ago are let go while the others write.
                if i >= 2 && (i as u64) < FILES {
                    let (old, _) = kept.remove(0);
                    assert_eq!(store.unpin(&old).await.unwrap(), 5);
                    assert!(!store.is_pinned(&old).await.unwrap());
                }
            }
            (kept, retries)
        }));
    }
    let mut fillers = Vec::new();
    for f in 0..2u64 {
        let store = store.clone();
        fillers.push(tokio::spawn(async move {
            for i in 0..100 {
                let batch = (0..8)
                    .map(|j| raw_block(10_000 + f * 10_000 + i * 8 + j, 2048))
                    .collect();
                store.put_many(batch).await.unwrap();
            }
        }));
    }
    let quota_task = {
        let store = store.clone();
        let filling = filling.clone();
        tokio::spawn(async move {
            let mut evicted = 0;
            while filling.load(Ordering::Relaxed) {
                evicted += store.set_quota(Some(SMALL)).await.unwrap();
                tokio::task::yield_now().await;
                evicted += store.set_quota(Some(LARGE)).await.unwrap();
                tokio::task::yield_now().await;
            }
            evicted += store.set_quota(Some(SMALL)).await.unwrap();
            evicted
        })
    };
    for f in fillers {
        f.await.unwrap();
    }
    filling.store(false, Ordering::Relaxed);
    let evicted_by_quota = quota_task.await.unwrap();

    let mut expected = Vec::new();
    let mut retries = 0;
    for t in tasks {
        let (kept, r) = t.await.unwrap();
        expected.extend(kept);
        retries += r;
    }
    println!("pin retries after an eviction: {retries}; evicted by set_quota: {evicted_by_quota}");

    assert!(store.used_bytes() <= SMALL);
    assert_eq!(store.corrupt_blocks(), 0);
    // Every pinned DAG is whole and reads back verified.
    let mut roots: Vec<Cid> = expected.iter().map(|(r, _)| *r).collect();
    roots.sort_by_key(|c| c.to_bytes());
    roots.dedup();
    assert_eq!(roots.len() as u64, PINNERS * 2 + 1);
    assert_eq!(store.pinned_roots().await.unwrap(), roots);
    let mut pinned = HashSet::new();
    let mut pinned_bytes = 0;
    for (root, data) in &expected {
        assert_eq!(&read_all(&store, *root).await.unwrap(), data);
        for (cid, d) in blocks_of(&store, *root).await {
            if pinned.insert(cid) {
                pinned_bytes += d.len() as u64;
            }
        }
    }
    assert_eq!(store.pinned_blocks().await.unwrap(), pinned.len() as u64);

    // Shrinking the quota to the pinned bytes evicts every other block and no pinned one;
    // below them it is refused and nothing changes.
    store.set_quota(Some(pinned_bytes)).await.unwrap();
    assert_eq!(store.used_bytes(), pinned_bytes);
    assert_eq!(store.len(), pinned.len());
    let refused = store.set_quota(Some(pinned_bytes - 1)).await.unwrap_err();
    assert!(
        matches!(refused, StoreError::QuotaExceeded { .. }),
        "{refused}"
    );
    assert_eq!(store.quota(), Some(pinned_bytes));
    for (root, data) in &expected {
        assert_eq!(&read_all(&store, *root).await.unwrap(), data);
    }

    // What memory says is what the file holds.
    drop(store);
    let store = DiskStore::open(&path, Some(pinned_bytes)).unwrap();
    assert_eq!(store.used_bytes(), pinned_bytes);
    assert_eq!(store.len(), pinned.len());
    assert_eq!(store.pinned_roots().await.unwrap(), roots);

    // Unpinning everything (the shared file once per task) releases every count.
    for root in &roots {
        while store.is_pinned(root).await.unwrap() {
            store.unpin(root).await.unwrap();
        }
    }
    assert!(store.pinned_roots().await.unwrap().is_empty());
    assert_eq!(store.pinned_blocks().await.unwrap(), 0);
    assert_eq!(store.set_quota(Some(0)).await.unwrap(), pinned.len());
    assert_eq!((store.used_bytes(), store.len()), (0, 0));
}

#[tokio::test]
async fn delete_of_a_pinned_block_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path().join("b.redb"), None).unwrap();
    // Two files cut at the same boundaries share their first leaves.
    let a_data = content(7, 3000);
    let mut b_data = a_data.clone();
    b_data.extend(content(8, 2000));
    let a = add(&store, &a_data).await;
    let b = add(&store, &b_data).await;
    let shared_leaf = blocks_of(&store, a).await[1].0;
    assert!(
        blocks_of(&store, b)
            .await
            .iter()
            .any(|(c, _)| *c == shared_leaf)
    );
    store.pin(&a).await.unwrap();
    store.pin(&b).await.unwrap();
    let used = store.used_bytes();

    for cid in [a, b, shared_leaf] {
        assert!(matches!(store.delete(&cid).await, Err(StoreError::Pinned(c)) if c == cid));
        assert!(store.has(&cid).await.unwrap());
    }
    assert_eq!(store.used_bytes(), used);

    // With `a` unpinned its root goes, the leaf it shares with `b` stays protected.
    store.unpin(&a).await.unwrap();
    assert!(store.delete(&a).await.unwrap());
    assert!(matches!(
        store.delete(&shared_leaf).await,
        Err(StoreError::Pinned(_))
    ));
    assert_eq!(read_all(&store, b).await.unwrap(), b_data);

    // Pinned twice, unpinned once: still pinned.
    store.pin(&b).await.unwrap();
    store.unpin(&b).await.unwrap();
    assert!(matches!(store.delete(&b).await, Err(StoreError::Pinned(_))));
    store.unpin(&b).await.unwrap();
    assert!(store.delete(&shared_leaf).await.unwrap());
    assert!(!store.delete(&shared_leaf).await.unwrap());
    assert_eq!(store.pinned_blocks().await.unwrap(), 0);
}

#[tokio::test]
async fn unpin_after_a_block_went_missing_releases_exactly_what_was_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.redb");
    let data = content(9, 5000);
    let (root, leaf) = {
        let store = DiskStore::open(&path, None).unwrap();
        let root = add(&store, &data).await;
        assert_eq!(store.pin(&root).await.unwrap(), 6);
        let leaf = blocks_of(&store, root).await[2].clone();
        (root, leaf)
    };
    corrupt_in_file(&path, &leaf.0);
    let store = DiskStore::open(&path, None).unwrap();
    assert_eq!(store.get(&leaf.0).await.unwrap(), None);
    assert_eq!(store.corrupt_blocks(), 1);
    assert_eq!(store.pinned_blocks().await.unwrap(), 6);

    // Pinning again with a block missing is refused and counts nothing.
    assert!(matches!(
        store.pin(&root).await,
        Err(StoreError::MissingBlock(c)) if c == leaf.0
    ));
    // One unpin releases all six blocks, the missing one too.
    assert_eq!(store.unpin(&root).await.unwrap(), 6);
    assert!(!store.is_pinned(&root).await.unwrap());
    assert!(store.pinned_roots().await.unwrap().is_empty());
    assert_eq!(store.pinned_blocks().await.unwrap(), 0);
    assert_eq!(store.unpin(&root).await.unwrap(), 0);
    // Nothing stays protected: the rest evicts, the block put back deletes.
    assert_eq!(store.set_quota(Some(0)).await.unwrap(), 5);
    assert_eq!(store.used_bytes(), 0);
    store.set_quota(None).await.unwrap();
    store
        .put(Block::new(leaf.0, leaf.1.clone()).unwrap())
        .await
        .unwrap();
    assert!(store.delete(&leaf.0).await.unwrap());
}

/// A file written when pins were counted per pin and block, with no record of which blocks a
/// root pinned, is converted when opened.
#[tokio::test]
async fn a_file_of_the_earlier_pin_layout_is_converted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.redb");
    let source = MemoryStore::new();
    let data = content(11, 3500);
    let root = add_reader(Some(&source), std::io::Cursor::new(data.clone()), opts())
        .await
        .unwrap()
        .cid;
    let blocks: Vec<(Cid, Bytes)> = walk(&source, root).try_collect().await.unwrap();
    let stray = raw_block(12, 100);
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut b = txn.open_table(BLOCKS).unwrap();
            let mut s = txn.open_table(SIZES).unwrap();
            let mut pinned = txn.open_table(PINNED).unwrap();
            let mut pins = txn.open_table(PINS).unwrap();
            for (cid, d) in blocks.iter().chain([&(*stray.cid(), stray.data().clone())]) {
                b.insert(cid.to_bytes().as_slice(), &d[..]).unwrap();
                s.insert(cid.to_bytes().as_slice(), d.len() as u64).unwrap();
            }
            // Pinned twice; the stray block carries a count no root accounts for.
            pins.insert(root.to_bytes().as_slice(), 2).unwrap();
            for (cid, _) in &blocks {
                pinned.insert(cid.to_bytes().as_slice(), 2).unwrap();
            }
            pinned.insert(stray.cid().to_bytes().as_slice(), 1).unwrap();
        }
        txn.commit().unwrap();
    }

    let store = DiskStore::open(&path, None).unwrap();
    assert_eq!(store.pinned_roots().await.unwrap(), [root]);
    assert_eq!(store.pinned_blocks().await.unwrap(), blocks.len() as u64);
    assert!(store.delete(stray.cid()).await.unwrap());
    assert!(matches!(
        store.delete(&blocks[1].0).await,
        Err(StoreError::Pinned(_))
    ));
    store.unpin(&root).await.unwrap();
    assert!(store.is_pinned(&root).await.unwrap());
    store.unpin(&root).await.unwrap();
    assert_eq!(store.pinned_blocks().await.unwrap(), 0);
    assert_eq!(read_all(&store, root).await.unwrap(), data);
    drop(store);
    // Converted once: reopening keeps the counts.
    let store = DiskStore::open(&path, None).unwrap();
    assert!(store.pinned_roots().await.unwrap().is_empty());
    assert!(store.delete(&blocks[1].0).await.unwrap());
}
