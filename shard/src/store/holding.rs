//! A store seen through the holds of one reader: what is written or found through it stays.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use cid::Cid;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use super::{BlockStore, StoreError};
use crate::block::Block;

/// A store seen through the holds of one reader ([`BlockStore::hold`]): every block stored
/// through it, or found in it by [`BlockStore::get`], is held against eviction until
/// [`Holding::release`] ends that hold, or the `Holding` is dropped, which ends them all.
///
/// A block is held before it is stored, so no eviction falls between. A streamed answer
/// fetches through one and releases each block once sent; a live publisher adds each segment
/// through one and drops it when the segment leaves its DVR window. What is held is bounded
/// by what the owner writes through it, so owners bound that.
///
/// ```
/// # use std::sync::Arc;
/// # use cid::Version;
/// # use streamspace_shard::block::{Block, RAW};
/// # use streamspace_shard::store::{BlockStore, DiskStore, Holding};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let block = |b: u8| Block::encode(Version::V1, RAW, vec![b; 1000].into());
/// let dir = tempfile::tempdir()?;
/// let store = Arc::new(DiskStore::open(dir.path().join("blocks"), Some(2500))?);
/// let holding = Holding::new(store.clone());
/// let kept = block(1);
/// holding.put(kept.clone()).await?;
/// for b in 2..6 {
///     store.put(block(b)).await?; // over the quota: blocks not held go
/// }
/// assert!(store.has(kept.cid()).await?);
/// drop(holding);
/// store.put(block(6)).await?;
/// assert!(!store.has(kept.cid()).await?);
/// # Ok(()) }
/// ```
pub struct Holding<S: BlockStore> {
    store: Arc<S>,
    /// Holds taken through this, by block: how many, and the bytes each took of the budget.
    held: Mutex<HashMap<Cid, (u32, u64)>>,
    budget: Option<Arc<HoldBudget>>,
    /// Notified whenever a block is stored or found through this.
    arrived: Notify,
    /// The block a reader waits for ([`Holding::await_block`]), and the block once stored.
    awaited: Mutex<Option<(Cid, Option<Block>)>>,
}

impl<S: BlockStore> std::fmt::Debug for Holding<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Holding")
            .field("held", &self.held().len())
            .finish_non_exhaustive()
    }
}

impl<S: BlockStore> Holding<S> {
    /// `store`, holding nothing yet.
    pub fn new(store: Arc<S>) -> Self {
        Self {
            store,
            held: Mutex::new(HashMap::new()),
            budget: None,
            arrived: Notify::new(),
            awaited: Mutex::new(None),
        }
    }

    /// `store`, holding at most what is left of `budget`, which holdings share: a block that
    /// would pass it is stored (or read) without a hold.
    pub fn with_budget(store: Arc<S>, budget: Arc<HoldBudget>) -> Self {
        let mut h = Self::new(store);
        h.budget = Some(budget);
        h
    }

    /// The store underneath (reads through it hold nothing).
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    fn held(&self) -> MutexGuard<'_, HashMap<Cid, (u32, u64)>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds `cid` (`len` bytes) if the budget has room; whether it did.
    fn hold_one(&self, cid: &Cid, len: u64) -> bool {
        if let Some(b) = &self.budget
            && !b.take(len)
        {
            return false;
        }
        self.store.hold(cid);
        let mut held = self.held();
        let e = held.entry(*cid).or_insert((0, len));
        e.0 += 1;
        true
    }

    /// Ends one hold of `cid` taken through this (nothing if none is).
    pub fn release(&self, cid: &Cid) {
        let mut held = self.held();
        if let Some((n, len)) = held.get_mut(cid) {
            *n -= 1;
            let len = *len;
            if *n == 0 {
                held.remove(cid);
            }
            self.store.release(cid);
            if let Some(b) = &self.budget {
                b.give(len);
            }
        }
    }

    /// Blocks held through this (each once, however many holds).
    pub fn held_blocks(&self) -> usize {
        self.held().len()
    }

    /// Asks that the block `cid`, when it is stored through this, be kept for
    /// [`Holding::take_awaited`]: a reader waiting for the next block it needs takes it from
    /// the writer's hands, without reading (and hashing) it again. One block at a time.
    pub fn await_block(&self, cid: Cid) {
        let mut a = self.awaited.lock().unwrap_or_else(PoisonError::into_inner);
        if a.as_ref().is_none_or(|(c, _)| *c != cid) {
            *a = Some((cid, None));
        }
    }

    /// The awaited block ([`Holding::await_block`]), if it was stored through this since.
    pub fn take_awaited(&self, cid: &Cid) -> Option<Block> {
        let mut a = self.awaited.lock().unwrap_or_else(PoisonError::into_inner);
        match a.take() {
            Some((c, Some(b))) if c == *cid => Some(b),
            other => {
                *a = other;
                None
            }
        }
    }

    /// Completes once a block is stored or found through this after the call (enable it
    /// before looking, so that a block stored in between is not missed).
    pub fn arrived(&self) -> Notified<'_> {
        self.arrived.notified()
    }
}

impl<S: BlockStore> Drop for Holding<S> {
    fn drop(&mut self) {
        let drained: Vec<_> = self.held().drain().collect();
        for (cid, (n, len)) in drained {
            for _ in 0..n {
                self.store.release(&cid);
            }
            if let Some(b) = &self.budget {
                b.give(len * u64::from(n));
            }
        }
    }
}

impl<S: BlockStore> BlockStore for Holding<S> {
    const VERIFIES_READS: bool = S::VERIFIES_READS;

    /// The block, held from now on if present (and the budget has room).
    async fn get(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        // Held before it is read, so that no eviction falls between.
        let held = match self.store.size(cid).await? {
            Some(n) => self.hold_one(cid, n as u64),
            None => return Ok(None),
        };
        let b = self.store.get(cid).await;
        if matches!(b, Ok(Some(_))) {
            self.arrived.notify_waiters();
        } else if held {
            self.release(cid);
        }
        b
    }

    async fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
        self.store.has(cid).await
    }

    async fn size(&self, cid: &Cid) -> Result<Option<usize>, StoreError> {
        self.store.size(cid).await
    }

    /// Stores the blocks, each held before it is stored.
    async fn put_many(&self, blocks: Vec<Block>) -> Result<(), StoreError> {
        let held: Vec<Cid> = blocks
            .iter()
            .filter(|b| self.hold_one(b.cid(), b.data().len() as u64))
            .map(|b| *b.cid())
            .collect();
        let awaited = {
            let a = self.awaited.lock().unwrap_or_else(PoisonError::into_inner);
            a.as_ref()
                .and_then(|(c, _)| blocks.iter().find(|b| b.cid() == c).cloned())
        };
        let r = self.store.put_many(blocks).await;
        if r.is_err() {
            for c in &held {
                self.release(c);
            }
        } else {
            if let Some(b) = awaited {
                let mut a = self.awaited.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some((c, slot)) = a.as_mut()
                    && c == b.cid()
                {
                    *slot = Some(b);
                }
            }
            self.arrived.notify_waiters();
        }
        r
    }

    async fn delete(&self, cid: &Cid) -> Result<bool, StoreError> {
        self.store.delete(cid).await
    }
}

/// Bytes that several [`Holding`]s may hold together ([`Holding::with_budget`]): a gateway's
/// streamed answers share one, so that however many slow clients there are, the blocks held
/// for them stay within it and the rest of the store can still be evicted and written.
#[derive(Debug)]
pub struct HoldBudget {
    left: AtomicU64,
}

impl HoldBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> Arc<Self> {
        Arc::new(Self {
            left: AtomicU64::new(bytes),
        })
    }

    /// Bytes not held yet.
    pub fn available(&self) -> u64 {
        self.left.load(Ordering::Acquire)
    }

    fn take(&self, n: u64) -> bool {
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| l.checked_sub(n))
            .is_ok()
    }

    fn give(&self, n: u64) {
        self.left.fetch_add(n, Ordering::AcqRel);
    }
}
