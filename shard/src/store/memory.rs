use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use cid::Cid;
use cid::multihash::Multihash;

use super::{BlockStore, StoreError};
use crate::block::{Block, IDENTITY};

/// A block store in memory; clones share the same blocks.
///
/// It holds only [`Block`]s, whose bytes hash to their CID by construction, so `get` answers
/// intact bytes without hashing them again (the only way around is the test hook
/// `insert_unchecked`). It has no pins: `delete` removes any block. Blocks are keyed by
/// multihash, as kubo keys them, so the same bytes under CIDv0 or CIDv1, raw or dag-pb, are
/// one block; an identity CID is held by every store (its bytes are in the CID) and never
/// stored.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use streamspace_shard::{block::{Block, RAW}, store::{BlockStore, MemoryStore}};
/// let store = MemoryStore::new();
/// let block = Block::encode(cid::Version::V1, RAW, bytes::Bytes::from_static(b"shard"));
/// store.put(block.clone()).await.unwrap();
/// assert_eq!(store.get(block.cid()).await.unwrap().as_deref(), Some(&b"shard"[..]));
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    blocks: Arc<RwLock<HashMap<Multihash<64>, Bytes>>>,
}

fn inline(cid: &Cid) -> Option<Bytes> {
    (cid.hash().code() == IDENTITY).then(|| Bytes::copy_from_slice(cid.hash().digest()))
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of blocks held.
    pub fn len(&self) -> usize {
        self.blocks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether the store holds no block.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total bytes of the blocks held.
    pub fn bytes(&self) -> u64 {
        self.blocks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|b| b.len() as u64)
            .sum()
    }

    /// Replaces the bytes stored under `cid` without any check, to test readers against a
    /// corrupted or malicious store.
    #[doc(hidden)]
    pub fn insert_unchecked(&self, cid: Cid, data: Bytes) {
        self.blocks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(*cid.hash(), data);
    }
}

impl BlockStore for MemoryStore {
    async fn get(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        if let Some(b) = inline(cid) {
            return Ok(Some(b));
        }
        Ok(self
            .blocks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(cid.hash())
            .cloned())
    }

    async fn size(&self, cid: &Cid) -> Result<Option<usize>, StoreError> {
        if cid.hash().code() == IDENTITY {
            return Ok(Some(cid.hash().digest().len()));
        }
        Ok(self
            .blocks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(cid.hash())
            .map(Bytes::len))
    }

    async fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
        if inline(cid).is_some() {
            return Ok(true);
        }
        Ok(self
            .blocks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(cid.hash()))
    }

    async fn put_many(&self, blocks: Vec<Block>) -> Result<(), StoreError> {
        let mut map = self.blocks.write().unwrap_or_else(PoisonError::into_inner);
        for b in blocks {
            let (cid, data) = b.into_parts();
            if inline(&cid).is_none() {
                map.insert(*cid.hash(), data);
            }
        }
        Ok(())
    }

    async fn delete(&self, cid: &Cid) -> Result<bool, StoreError> {
        Ok(self
            .blocks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(cid.hash())
            .is_some())
    }
}
