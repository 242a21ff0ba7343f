use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use cid::Cid;
use redb::{Database, ReadableTable, TableDefinition};

use super::{BlockStore, EvictionPolicy, Lru, StoreError};
use crate::block::Block;
use crate::dag::links_of;

const BLOCKS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("blocks");
const SIZES: TableDefinition<'_, &[u8], u64> = TableDefinition::new("sizes");
/// Reference count of each block under a pinned root.
const PINNED: TableDefinition<'_, &[u8], u64> = TableDefinition::new("pinned");
/// Pinned roots.
const PINS: TableDefinition<'_, &[u8], u64> = TableDefinition::new("pins");

/// The database's page cache: small, since blocks are read once per request and the
/// operating system caches the file anyway.
const CACHE_BYTES: usize = 8 << 20;

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Database(e.into().to_string())
}

struct State {
    used: u64,
    quota: Option<u64>,
    sizes: HashMap<Cid, u64>,
    policy: Box<dyn EvictionPolicy>,
}

struct Inner {
    db: Database,
    state: Mutex<State>,
}

/// A persistent block store in one file (redb), bounded by a byte quota.
///
/// When a write would exceed the quota, unpinned blocks are evicted in the order of an
/// [`EvictionPolicy`] ([`Lru`] by default). Writes are transactions: after a crash the store
/// holds exactly the blocks of the writes that returned `Ok`. Clones share the same database.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use streamspace_shard::{block::{Block, RAW}, store::{BlockStore, DiskStore}};
/// let dir = tempfile::tempdir()?;
/// let store = DiskStore::open(dir.path().join("blocks.redb"), Some(1 << 20))?;
/// let block = Block::encode(cid::Version::V1, RAW, bytes::Bytes::from_static(b"shard"));
/// store.put(block.clone()).await?;
/// assert!(store.has(block.cid()).await?);
/// assert_eq!(store.used_bytes(), 5);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DiskStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore")
            .field("quota", &self.quota())
            .field("used", &self.used_bytes())
            .finish()
    }
}

impl DiskStore {
    /// Opens (or creates) the store file at `path` with an optional byte quota and LRU eviction.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`] when the file cannot be opened or is not a store.
    pub fn open(path: impl AsRef<Path>, quota: Option<u64>) -> Result<Self, StoreError> {
        Self::open_with_policy(path, quota, Box::<Lru>::default())
    }

    /// Opens the store with another eviction policy.
    ///
    /// # Errors
    ///
    /// As [`DiskStore::open`].
    pub fn open_with_policy(
        path: impl AsRef<Path>,
        quota: Option<u64>,
        mut policy: Box<dyn EvictionPolicy>,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::Io {
                path: parent.to_owned(),
                source,
            })?;
        }
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        for t in [SIZES, PINNED, PINS] {
            txn.open_table(t).map_err(db_err)?;
        }
        txn.open_table(BLOCKS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;

        let mut sizes = HashMap::new();
        let mut used = 0;
        {
            let read = db.begin_read().map_err(db_err)?;
            let table = read.open_table(SIZES).map_err(db_err)?;
            for row in table.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let Ok(cid) = Cid::try_from(k.value()) else {
                    continue;
                };
                used += v.value();
                sizes.insert(cid, v.value());
                policy.inserted(&cid, v.value());
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                state: Mutex::new(State {
                    used,
                    quota,
                    sizes,
                    policy,
                }),
            }),
        })
    }

    /// Bytes of block data held.
    pub fn used_bytes(&self) -> u64 {
        self.inner.lock().used
    }

    /// Number of blocks held.
    pub fn len(&self) -> usize {
        self.inner.lock().sizes.len()
    }

    /// Whether the store holds no block.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The byte quota, if any.
    pub fn quota(&self) -> Option<u64> {
        self.inner.lock().quota
    }

    /// Changes the byte quota (`None`: unbounded), evicting unpinned blocks in the policy's
    /// order until the store fits. Returns the number of blocks evicted.
    ///
    /// # Errors
    ///
    /// [`StoreError::QuotaExceeded`] when pinned blocks alone exceed the new quota: nothing
    /// changes. [`StoreError::Database`] when the store cannot be written.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use streamspace_shard::store::{BlockStore, DiskStore};
    /// use streamspace_shard::Block;
    /// use streamspace_shard::block::RAW;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = DiskStore::open(dir.path().join("blocks.redb"), None)?;
    /// let block = |b: u8| Block::encode(cid::Version::V1, RAW, vec![b; 1000].into());
    /// store.put_many(vec![block(7), block(8)]).await?;
    /// assert_eq!(store.set_quota(Some(1500)).await?, 1); // one block evicted
    /// assert_eq!((store.used_bytes(), store.quota()), (1000, Some(1500)));
    /// # Ok(()) }
    /// ```
    pub async fn set_quota(&self, quota: Option<u64>) -> Result<usize, StoreError> {
        let inner = self.inner.clone();
        blocking(move || inner.set_quota(quota)).await
    }

    /// Pins the DAG below `root`: none of its blocks is evicted until it is unpinned.
    /// Pinning twice counts twice. Returns the number of distinct blocks pinned.
    ///
    /// # Errors
    ///
    /// [`StoreError::MissingBlock`] if the DAG is not complete in the store; nothing is pinned.
    pub async fn pin(&self, root: &Cid) -> Result<usize, StoreError> {
        self.update_pins(*root, true).await
    }

    /// Removes one pin of `root`. Returns the number of distinct blocks of the DAG.
    ///
    /// # Errors
    ///
    /// As [`DiskStore::pin`]; unpinning a root that is not pinned is a no-op returning 0.
    pub async fn unpin(&self, root: &Cid) -> Result<usize, StoreError> {
        self.update_pins(*root, false).await
    }

    /// Whether `cid` is a pinned root.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn is_pinned(&self, root: &Cid) -> Result<bool, StoreError> {
        let inner = self.inner.clone();
        let key = root.to_bytes();
        blocking(move || {
            let read = inner.db.begin_read().map_err(db_err)?;
            let pins = read.open_table(PINS).map_err(db_err)?;
            Ok(pins.get(key.as_slice()).map_err(db_err)?.is_some())
        })
        .await
    }

    /// The pinned roots, in the order of their encoded CIDs.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use streamspace_shard::import::ImportOptions;
    /// use streamspace_shard::store::{DiskStore, add_reader};
    /// let dir = tempfile::tempdir()?;
    /// let store = DiskStore::open(dir.path().join("blocks.redb"), None)?;
    /// let root = add_reader(Some(&store), &b"hello"[..], ImportOptions::default()).await?;
    /// store.pin(&root.cid).await?;
    /// assert_eq!(store.pinned_roots().await?, [root.cid]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`], also for a stored root that is not a CID.
    pub async fn pinned_roots(&self) -> Result<Vec<Cid>, StoreError> {
        let inner = self.inner.clone();
        blocking(move || {
            let read = inner.db.begin_read().map_err(db_err)?;
            let pins = read.open_table(PINS).map_err(db_err)?;
            let mut out = Vec::new();
            for row in pins.iter().map_err(db_err)? {
                let (k, _) = row.map_err(db_err)?;
                out.push(
                    Cid::try_from(k.value())
                        .map_err(|e| StoreError::Database(format!("pinned root: {e}")))?,
                );
            }
            Ok(out)
        })
        .await
    }

    async fn update_pins(&self, root: Cid, pin: bool) -> Result<usize, StoreError> {
        // Walk the DAG first (reads only), then apply every count in one transaction.
        let mut seen = HashSet::new();
        let mut stack = vec![root];
        while let Some(cid) = stack.pop() {
            if !seen.insert(cid) {
                continue;
            }
            let data = self.get(&cid).await?.ok_or(StoreError::MissingBlock(cid))?;
            let links =
                links_of(&cid, data).map_err(|source| StoreError::Decode { cid, source })?;
            stack.extend(links);
        }
        let inner = self.inner.clone();
        blocking(move || {
            let txn = inner.db.begin_write().map_err(db_err)?;
            let root_key = root.to_bytes();
            {
                let mut pins = txn.open_table(PINS).map_err(db_err)?;
                let count = pins
                    .get(root_key.as_slice())
                    .map_err(db_err)?
                    .map_or(0, |v| v.value());
                if !pin && count == 0 {
                    return Ok(0);
                }
                let new = if pin { count + 1 } else { count - 1 };
                if new == 0 {
                    pins.remove(root_key.as_slice()).map_err(db_err)?;
                } else {
                    pins.insert(root_key.as_slice(), new).map_err(db_err)?;
                }
                let mut pinned = txn.open_table(PINNED).map_err(db_err)?;
                for cid in &seen {
                    let key = cid.to_bytes();
                    let c = pinned
                        .get(key.as_slice())
                        .map_err(db_err)?
                        .map_or(0, |v| v.value());
                    let n = if pin { c + 1 } else { c.saturating_sub(1) };
                    if n == 0 {
                        pinned.remove(key.as_slice()).map_err(db_err)?;
                    } else {
                        pinned.insert(key.as_slice(), n).map_err(db_err)?;
                    }
                }
            }
            txn.commit().map_err(db_err)?;
            Ok(seen.len())
        })
        .await
    }
}

/// The unpinned blocks to evict, in the policy's order, so that `used` bytes fit `quota`,
/// and the bytes used after.
fn evictions(
    txn: &redb::WriteTransaction,
    st: &State,
    quota: u64,
    mut used: u64,
) -> Result<(Vec<Cid>, u64), StoreError> {
    let pinned = txn.open_table(PINNED).map_err(db_err)?;
    let mut pinned_bytes = 0;
    let mut victims = Vec::new();
    for cid in st.policy.candidates() {
        if used <= quota {
            break;
        }
        let size = st.sizes.get(&cid).copied().unwrap_or(0);
        if pinned
            .get(cid.to_bytes().as_slice())
            .map_err(db_err)?
            .is_some()
        {
            pinned_bytes += size;
            continue;
        }
        victims.push(cid);
        used -= size;
    }
    if used > quota {
        return Err(StoreError::QuotaExceeded {
            quota,
            needed: used,
            pinned: pinned_bytes,
        });
    }
    Ok((victims, used))
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_quota(&self, quota: Option<u64>) -> Result<usize, StoreError> {
        let mut st = self.lock();
        let Some(q) = quota.filter(|&q| st.used > q) else {
            st.quota = quota;
            return Ok(0);
        };
        let txn = self.db.begin_write().map_err(db_err)?;
        let (victims, used) = evictions(&txn, &st, q, st.used)?;
        {
            let mut table = txn.open_table(BLOCKS).map_err(db_err)?;
            let mut sizes = txn.open_table(SIZES).map_err(db_err)?;
            for cid in &victims {
                let key = cid.to_bytes();
                table.remove(key.as_slice()).map_err(db_err)?;
                sizes.remove(key.as_slice()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        st.used = used;
        st.quota = quota;
        for cid in &victims {
            st.sizes.remove(cid);
            st.policy.removed(cid);
        }
        Ok(victims.len())
    }

    fn put_many(&self, blocks: Vec<Block>) -> Result<(), StoreError> {
        let mut st = self.lock();
        let mut fresh: HashMap<Cid, Bytes> = HashMap::new();
        for b in blocks {
            let (cid, data) = b.into_parts();
            if st.sizes.contains_key(&cid) {
                st.policy.accessed(&cid);
            } else {
                fresh.insert(cid, data);
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        let added: u64 = fresh.values().map(|d| d.len() as u64).sum();
        let mut used = st.used + added;
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut victims = Vec::new();
        {
            let mut table = txn.open_table(BLOCKS).map_err(db_err)?;
            let mut sizes = txn.open_table(SIZES).map_err(db_err)?;
            if let Some(quota) = st.quota.filter(|&q| used > q) {
                // An error drops the transaction, which aborts it: nothing changes.
                (victims, used) = evictions(&txn, &st, quota, used)?;
            }
            for cid in &victims {
                let key = cid.to_bytes();
                table.remove(key.as_slice()).map_err(db_err)?;
                sizes.remove(key.as_slice()).map_err(db_err)?;
            }
            for (cid, data) in &fresh {
                let key = cid.to_bytes();
                table.insert(key.as_slice(), &data[..]).map_err(db_err)?;
                sizes
                    .insert(key.as_slice(), data.len() as u64)
                    .map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        st.used = used;
        for cid in victims {
            st.sizes.remove(&cid);
            st.policy.removed(&cid);
        }
        for (cid, data) in fresh {
            st.sizes.insert(cid, data.len() as u64);
            st.policy.inserted(&cid, data.len() as u64);
        }
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

impl BlockStore for DiskStore {
    async fn get(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        let inner = self.inner.clone();
        let cid = *cid;
        blocking(move || {
            let read = inner.db.begin_read().map_err(db_err)?;
            let table = read.open_table(BLOCKS).map_err(db_err)?;
            let found = table
                .get(cid.to_bytes().as_slice())
                .map_err(db_err)?
                .map(|v| Bytes::copy_from_slice(v.value()));
            if found.is_some() {
                inner.lock().policy.accessed(&cid);
            }
            Ok(found)
        })
        .await
    }

    async fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
        Ok(self.inner.lock().sizes.contains_key(cid))
    }

    async fn put_many(&self, blocks: Vec<Block>) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        blocking(move || inner.put_many(blocks)).await
    }

    async fn delete(&self, cid: &Cid) -> Result<bool, StoreError> {
        let inner = self.inner.clone();
        let cid = *cid;
        blocking(move || {
            let mut st = inner.lock();
            let Some(size) = st.sizes.get(&cid).copied() else {
                return Ok(false);
            };
            let txn = inner.db.begin_write().map_err(db_err)?;
            {
                let key = cid.to_bytes();
                txn.open_table(BLOCKS)
                    .map_err(db_err)?
                    .remove(key.as_slice())
                    .map_err(db_err)?;
                txn.open_table(SIZES)
                    .map_err(db_err)?
                    .remove(key.as_slice())
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)?;
            st.used -= size;
            st.sizes.remove(&cid);
            st.policy.removed(&cid);
            Ok(true)
        })
        .await
    }
}
