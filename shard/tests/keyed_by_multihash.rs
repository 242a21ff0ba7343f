//! Both block stores key blocks by multihash, as kubo does: the same bytes named by CIDv0 or
//! CIDv1, raw or dag-pb, are one block; an identity CID is held by every store, its bytes read
//! from the CID, and never stored.

use bytes::Bytes;
use cid::Cid;
use cid::multihash::Multihash;
use streamspace_shard::block::{Block, DAG_PB, RAW};
use streamspace_shard::store::{BlockStore, DiskStore, MemoryStore};

async fn one_block_many_names<S: BlockStore>(store: &S, held: impl Fn() -> u64) {
    let data = Bytes::from_static(b"the same bytes under four names");
    let v0 = Block::encode(cid::Version::V0, DAG_PB, data.clone());
    store.put(v0.clone()).await.expect("put");
    let before = held();
    let names = [
        *v0.cid(),
        Cid::new_v1(DAG_PB, *v0.cid().hash()),
        Cid::new_v1(RAW, *v0.cid().hash()),
        Cid::new_v1(0x71, *v0.cid().hash()),
    ];
    for name in names {
        assert!(store.has(&name).await.expect("has"), "{name}");
        assert_eq!(
            store.size(&name).await.expect("size"),
            Some(data.len()),
            "{name}"
        );
        assert_eq!(
            store.get(&name).await.expect("get"),
            Some(data.clone()),
            "{name}"
        );
    }
    // Putting it again under another name stores nothing more.
    store
        .put(Block::encode(cid::Version::V1, RAW, data.clone()))
        .await
        .expect("put");
    assert_eq!(held(), before);

    // Identity: the block is the CID.
    let inline = Cid::new_v1(RAW, Multihash::wrap(0x00, b"tiny").expect("fits"));
    assert!(store.has(&inline).await.expect("has"));
    assert_eq!(store.size(&inline).await.expect("size"), Some(4));
    let absent = Block::encode(cid::Version::V1, RAW, Bytes::from_static(b"never stored"));
    assert_eq!(store.size(absent.cid()).await.expect("size"), None);
    assert_eq!(
        store.get(&inline).await.expect("get"),
        Some(Bytes::from_static(b"tiny"))
    );
    store
        .put(Block::new(inline, Bytes::from_static(b"tiny")).expect("an identity block"))
        .await
        .expect("put");
    assert_eq!(held(), before, "identity blocks are not stored");
}

#[tokio::test]
async fn the_memory_store_keys_by_multihash() {
    let store = MemoryStore::new();
    let s = store.clone();
    one_block_many_names(&store, move || s.len() as u64).await;
}

#[tokio::test]
async fn the_disk_store_keys_by_multihash() {
    let dir = tempfile::tempdir().expect("dir");
    let store = DiskStore::open(dir.path().join("blocks.redb"), None).expect("open");
    let s = store.clone();
    one_block_many_names(&store, move || s.len() as u64).await;
}
