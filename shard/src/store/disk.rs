use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use cid::Cid;
use redb::{
    Database, MultimapTableDefinition, ReadableMultimapTable, ReadableTable, ReadableTableMetadata,
    TableDefinition, WriteTransaction,
};

use super::{BlockStore, EvictionPolicy, Lru, StoreError};
use crate::block::{Block, DAG_PB, verify};
use crate::dag::links_of;

const BLOCKS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("blocks");
const SIZES: TableDefinition<'_, &[u8], u64> = TableDefinition::new("sizes");
/// For each block, the number of distinct pinned roots whose DAG holds it.
const PINNED: TableDefinition<'_, &[u8], u64> = TableDefinition::new("pinned");
/// Pinned roots, each with the number of times it is pinned.
const PINS: TableDefinition<'_, &[u8], u64> = TableDefinition::new("pins");
/// The blocks of each pinned root's DAG, recorded when it was first pinned: exactly what
/// removing its last pin releases, whether or not they are still present then.
const MEMBERS: MultimapTableDefinition<'_, &[u8], &[u8]> =
    MultimapTableDefinition::new("pin_members");
/// Format markers of the file.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// The key under which [`META`] holds the layout of the pin tables.
const PIN_LAYOUT_KEY: &str = "pin_layout";
/// Pin tables with [`MEMBERS`]; [`PINNED`] counts roots, not pins. Files without the marker
/// (per-pin counts, no members) are converted when opened.
const PIN_LAYOUT: u64 = 2;

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

/// Shared by the clones of one store.
///
/// Lock order: a write transaction is begun before the state lock is taken, never while it is
/// held, so that a writer waiting for the database does not stall readers of the state. Pin
/// updates take no state lock at all; redb's one-writer-at-a-time rule alone orders them with
/// eviction.
struct Inner {
    db: Database,
    state: Mutex<State>,
    /// Corrupt blocks found on read and dropped since the store was opened.
    corrupt: AtomicU64,
}

/// A persistent block store in one file (redb), bounded by a byte quota.
///
/// When a write would exceed the quota, unpinned blocks are evicted in the order of an
/// [`EvictionPolicy`] ([`Lru`] by default). Writes are transactions: after a crash the store
/// holds exactly the blocks of the writes that returned `Ok`. Clones share the same database.
///
/// Every block read is checked against its CID: [`BlockStore::get`] never answers bytes that
/// do not hash to the CID asked for. A block found corrupt is deleted and counted
/// ([`DiskStore::corrupt_blocks`]) and `get` answers `Ok(None)`, as for a block never held, so
/// that callers fetch it again; putting the correct block afterwards stores it.
///
/// Pinning walks the DAG and records its blocks in the same write transaction, so eviction
/// (also a write transaction) sees either none of a pin or all of it. A pinned block is never
/// evicted and [`BlockStore::delete`] refuses it ([`StoreError::Pinned`]).
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
            .field("corrupt_blocks", &self.corrupt_blocks())
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
        txn.open_multimap_table(MEMBERS).map_err(db_err)?;
        let layout = txn
            .open_table(META)
            .map_err(db_err)?
            .get(PIN_LAYOUT_KEY)
            .map_err(db_err)?
            .map(|v| v.value());
        if layout != Some(PIN_LAYOUT) {
            rebuild_pins(&txn)?;
            txn.open_table(META)
                .map_err(db_err)?
                .insert(PIN_LAYOUT_KEY, PIN_LAYOUT)
                .map_err(db_err)?;
        }
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
                corrupt: AtomicU64::new(0),
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

    /// Blocks found corrupt on read (bytes that no longer hash to their CID) and deleted since
    /// the store was opened, by any of its clones.
    pub fn corrupt_blocks(&self) -> u64 {
        self.inner.corrupt.load(Ordering::Relaxed)
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

    /// Pins the DAG below `root`: none of its blocks is evicted or deleted until it is
    /// unpinned. Pinning twice counts twice (two [`DiskStore::unpin`]s release it). Returns
    /// the number of distinct blocks pinned.
    ///
    /// The walk that checks every block is present and the recording of the pin are one write
    /// transaction, so no eviction can fall between them. A block pinned under several roots
    /// stays pinned until the last of them is unpinned.
    ///
    /// # Errors
    ///
    /// [`StoreError::MissingBlock`] if the DAG is not complete in the store (a block found
    /// corrupt on the way counts as missing and is deleted, as by [`BlockStore::get`]);
    /// [`StoreError::Decode`] for a node that is not dag-pb. In both cases nothing is pinned.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use streamspace_shard::import::ImportOptions;
    /// use streamspace_shard::store::{BlockStore, DiskStore, StoreError, add_reader};
    /// let dir = tempfile::tempdir()?;
    /// let store = DiskStore::open(dir.path().join("blocks.redb"), None)?;
    /// let root = add_reader(Some(&store), &b"hello"[..], ImportOptions::default()).await?;
    /// assert_eq!(store.pin(&root.cid).await?, 1);
    /// assert!(matches!(store.delete(&root.cid).await, Err(StoreError::Pinned(_))));
    /// store.unpin(&root.cid).await?;
    /// assert!(store.delete(&root.cid).await?);
    /// # Ok(()) }
    /// ```
    pub async fn pin(&self, root: &Cid) -> Result<usize, StoreError> {
        let inner = self.inner.clone();
        let root = *root;
        blocking(move || inner.pin(root)).await
    }

    /// Removes one pin of `root`. Returns the number of distinct blocks of its DAG as
    /// recorded when it was pinned.
    ///
    /// Removing the last pin releases exactly the blocks that pinning it protected, also when
    /// some of them have left the store since (for instance, deleted as corrupt).
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`]; unpinning a root that is not pinned is a no-op returning 0.
    pub async fn unpin(&self, root: &Cid) -> Result<usize, StoreError> {
        let inner = self.inner.clone();
        let root = *root;
        blocking(move || inner.unpin(root)).await
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

    /// Number of distinct blocks protected by at least one pin (present or not).
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn pinned_blocks(&self) -> Result<u64, StoreError> {
        let inner = self.inner.clone();
        blocking(move || {
            let read = inner.db.begin_read().map_err(db_err)?;
            read.open_table(PINNED)
                .map_err(db_err)?
                .len()
                .map_err(db_err)
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
                out.push(parse_cid(k.value(), "pinned root")?);
            }
            Ok(out)
        })
        .await
    }
}

fn parse_cid(bytes: &[u8], what: &str) -> Result<Cid, StoreError> {
    Cid::try_from(bytes).map_err(|e| StoreError::Database(format!("{what}: {e}")))
}

/// How a walk of a stored DAG ended.
enum Walk {
    /// Every block is present: the distinct blocks.
    Complete(HashSet<Cid>),
    /// This block is not in the store.
    Missing(Cid),
    /// This node's bytes do not hash to its CID.
    Corrupt(Cid),
}

/// Walks the DAG below `root` as `txn` sees it.
///
/// Leaves (every codec but dag-pb) are checked for presence only; dag-pb nodes are read,
/// verified and decoded. Each block is visited once, so the walk is bounded by the store's
/// contents whatever the links. `lenient` skips what is missing, corrupt or undecodable
/// instead of stopping, and then always answers [`Walk::Complete`] with the blocks found.
fn walk_dag(txn: &WriteTransaction, root: Cid, lenient: bool) -> Result<Walk, StoreError> {
    let blocks = txn.open_table(BLOCKS).map_err(db_err)?;
    let sizes = txn.open_table(SIZES).map_err(db_err)?;
    let mut seen = HashSet::new();
    let mut stack = vec![root];
    while let Some(cid) = stack.pop() {
        if seen.contains(&cid) {
            continue;
        }
        let key = cid.to_bytes();
        if cid.codec() != DAG_PB {
            if sizes.get(key.as_slice()).map_err(db_err)?.is_some() {
                seen.insert(cid);
            } else if !lenient {
                return Ok(Walk::Missing(cid));
            }
            continue;
        }
        let data = blocks
            .get(key.as_slice())
            .map_err(db_err)?
            .map(|v| Bytes::copy_from_slice(v.value()));
        let Some(data) = data else {
            if lenient {
                continue;
            }
            return Ok(Walk::Missing(cid));
        };
        if verify(&cid, &data).is_err() {
            if lenient {
                continue;
            }
            return Ok(Walk::Corrupt(cid));
        }
        match links_of(&cid, data) {
            Ok(links) => stack.extend(links),
            Err(source) if !lenient => return Err(StoreError::Decode { cid, source }),
            Err(_) => continue,
        }
        seen.insert(cid);
    }
    Ok(Walk::Complete(seen))
}

/// Adds one to (`up`) or takes one from the root count of each of `members`, removing counts
/// that reach zero and never going below it.
fn add_to_pinned<'a>(
    txn: &WriteTransaction,
    members: impl IntoIterator<Item = &'a [u8]>,
    up: bool,
) -> Result<(), StoreError> {
    let mut pinned = txn.open_table(PINNED).map_err(db_err)?;
    for key in members {
        let c = pinned.get(key).map_err(db_err)?.map_or(0, |v| v.value());
        let n = if up { c + 1 } else { c.saturating_sub(1) };
        if n == 0 {
            pinned.remove(key).map_err(db_err)?;
        } else {
            pinned.insert(key, n).map_err(db_err)?;
        }
    }
    Ok(())
}

/// Rebuilds [`MEMBERS`] and [`PINNED`] from [`PINS`] and the blocks present (files written
/// before members were recorded counted pins per block and kept no members).
fn rebuild_pins(txn: &WriteTransaction) -> Result<(), StoreError> {
    let roots = {
        let pins = txn.open_table(PINS).map_err(db_err)?;
        let mut roots = Vec::new();
        for row in pins.iter().map_err(db_err)? {
            let (k, _) = row.map_err(db_err)?;
            roots.push(parse_cid(k.value(), "pinned root")?);
        }
        roots
    };
    txn.delete_table(PINNED).map_err(db_err)?;
    txn.delete_multimap_table(MEMBERS).map_err(db_err)?;
    txn.open_table(PINNED).map_err(db_err)?;
    txn.open_multimap_table(MEMBERS).map_err(db_err)?;
    for root in roots {
        let Walk::Complete(found) = walk_dag(txn, root, true)? else {
            continue;
        };
        record_members(txn, &root, &found)?;
    }
    Ok(())
}

/// Records `members` as the blocks of `root`'s pin and counts the root on each of them.
fn record_members(
    txn: &WriteTransaction,
    root: &Cid,
    members: &HashSet<Cid>,
) -> Result<(), StoreError> {
    let keys: Vec<Vec<u8>> = members.iter().map(Cid::to_bytes).collect();
    {
        let mut table = txn.open_multimap_table(MEMBERS).map_err(db_err)?;
        let root_key = root.to_bytes();
        for key in &keys {
            table
                .insert(root_key.as_slice(), key.as_slice())
                .map_err(db_err)?;
        }
    }
    add_to_pinned(txn, keys.iter().map(Vec::as_slice), true)
}

/// The recorded members of `root`'s pin.
fn members_of(txn: &WriteTransaction, root: &Cid) -> Result<Vec<Vec<u8>>, StoreError> {
    let table = txn.open_multimap_table(MEMBERS).map_err(db_err)?;
    let mut out = Vec::new();
    for v in table.get(root.to_bytes().as_slice()).map_err(db_err)? {
        out.push(v.map_err(db_err)?.value().to_vec());
    }
    Ok(out)
}

/// How many times `root` is pinned.
fn pin_count(txn: &WriteTransaction, root: &Cid) -> Result<u64, StoreError> {
    Ok(txn
        .open_table(PINS)
        .map_err(db_err)?
        .get(root.to_bytes().as_slice())
        .map_err(db_err)?
        .map_or(0, |v| v.value()))
}

fn set_pin_count(txn: &WriteTransaction, root: &Cid, count: u64) -> Result<(), StoreError> {
    let mut pins = txn.open_table(PINS).map_err(db_err)?;
    let key = root.to_bytes();
    if count == 0 {
        pins.remove(key.as_slice()).map_err(db_err)?;
    } else {
        pins.insert(key.as_slice(), count).map_err(db_err)?;
    }
    Ok(())
}

/// The unpinned blocks to evict, in the policy's order, so that `used` bytes fit `quota`,
/// and the bytes used after.
fn evictions(
    txn: &WriteTransaction,
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

/// Removes `cids` from the block tables of `txn`.
fn remove_blocks(txn: &WriteTransaction, cids: &[Cid]) -> Result<(), StoreError> {
    let mut table = txn.open_table(BLOCKS).map_err(db_err)?;
    let mut sizes = txn.open_table(SIZES).map_err(db_err)?;
    for cid in cids {
        let key = cid.to_bytes();
        table.remove(key.as_slice()).map_err(db_err)?;
        sizes.remove(key.as_slice()).map_err(db_err)?;
    }
    Ok(())
}

impl State {
    /// Forgets blocks removed by a committed transaction.
    fn removed(&mut self, cids: &[Cid]) {
        for cid in cids {
            if let Some(size) = self.sizes.remove(cid) {
                self.used = self.used.saturating_sub(size);
            }
            self.policy.removed(cid);
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_quota(&self, quota: Option<u64>) -> Result<usize, StoreError> {
        {
            let mut st = self.lock();
            if quota.is_none_or(|q| st.used <= q) {
                st.quota = quota;
                return Ok(0);
            }
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut st = self.lock();
        // Another writer may have made room while this one waited for the database.
        let Some(q) = quota.filter(|&q| st.used > q) else {
            st.quota = quota;
            return Ok(0);
        };
        let (victims, _) = evictions(&txn, &st, q, st.used)?;
        remove_blocks(&txn, &victims)?;
        txn.commit().map_err(db_err)?;
        st.removed(&victims);
        st.quota = quota;
        Ok(victims.len())
    }

    fn put_many(&self, blocks: Vec<Block>) -> Result<(), StoreError> {
        // Blocks already held are only touched; no write transaction is begun for them.
        let mut fresh: HashMap<Cid, Bytes> = HashMap::new();
        {
            let mut st = self.lock();
            for b in blocks {
                let (cid, data) = b.into_parts();
                if st.sizes.contains_key(&cid) {
                    st.policy.accessed(&cid);
                } else {
                    fresh.insert(cid, data);
                }
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut st = self.lock();
        // Another writer may have stored some of them while this one waited.
        fresh.retain(|cid, _| !st.sizes.contains_key(cid));
        if fresh.is_empty() {
            return Ok(());
        }
        let added: u64 = fresh.values().map(|d| d.len() as u64).sum();
        let used = st.used + added;
        let mut victims = Vec::new();
        if let Some(quota) = st.quota.filter(|&q| used > q) {
            // An error drops the transaction, which aborts it: nothing changes.
            (victims, _) = evictions(&txn, &st, quota, used)?;
        }
        remove_blocks(&txn, &victims)?;
        {
            let mut table = txn.open_table(BLOCKS).map_err(db_err)?;
            let mut sizes = txn.open_table(SIZES).map_err(db_err)?;
            for (cid, data) in &fresh {
                let key = cid.to_bytes();
                table.insert(key.as_slice(), &data[..]).map_err(db_err)?;
                sizes
                    .insert(key.as_slice(), data.len() as u64)
                    .map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        st.removed(&victims);
        st.used += added;
        for (cid, data) in fresh {
            st.sizes.insert(cid, data.len() as u64);
            st.policy.inserted(&cid, data.len() as u64);
        }
        Ok(())
    }

    fn get(&self, cid: Cid) -> Result<Option<Bytes>, StoreError> {
        let found = {
            let read = self.db.begin_read().map_err(db_err)?;
            let table = read.open_table(BLOCKS).map_err(db_err)?;
            table
                .get(cid.to_bytes().as_slice())
                .map_err(db_err)?
                .map(|v| Bytes::copy_from_slice(v.value()))
        };
        let Some(data) = found else {
            return Ok(None);
        };
        if verify(&cid, &data).is_ok() {
            self.lock().policy.accessed(&cid);
            return Ok(Some(data));
        }
        self.drop_if_corrupt(cid)?;
        Ok(None)
    }

    /// Deletes `cid` if its stored bytes do not hash to it, pinned or not (its pins stay
    /// recorded, so a correct copy put later is pinned again). Returns whether it did.
    fn drop_if_corrupt(&self, cid: Cid) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut st = self.lock();
        let corrupt = {
            let table = txn.open_table(BLOCKS).map_err(db_err)?;
            let value = table.get(cid.to_bytes().as_slice()).map_err(db_err)?;
            value.is_some_and(|v| verify(&cid, v.value()).is_err())
        };
        if !corrupt {
            // Already dropped (and perhaps put again, correct) by another reader.
            return Ok(false);
        }
        remove_blocks(&txn, &[cid])?;
        txn.commit().map_err(db_err)?;
        st.removed(&[cid]);
        self.corrupt.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    fn delete(&self, cid: Cid) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut st = self.lock();
        if !st.sizes.contains_key(&cid) {
            return Ok(false);
        }
        let pinned = txn
            .open_table(PINNED)
            .map_err(db_err)?
            .get(cid.to_bytes().as_slice())
            .map_err(db_err)?
            .is_some();
        if pinned {
            return Err(StoreError::Pinned(cid));
        }
        remove_blocks(&txn, &[cid])?;
        txn.commit().map_err(db_err)?;
        st.removed(&[cid]);
        Ok(true)
    }

    fn pin(&self, root: Cid) -> Result<usize, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let count = pin_count(&txn, &root)?;
        let blocks = if count > 0 {
            // Pinned already: its blocks are known; all of them must still be present.
            let members = members_of(&txn, &root)?;
            let sizes = txn.open_table(SIZES).map_err(db_err)?;
            for key in &members {
                if sizes.get(key.as_slice()).map_err(db_err)?.is_none() {
                    return Err(StoreError::MissingBlock(parse_cid(key, "pinned block")?));
                }
            }
            members.len()
        } else {
            match walk_dag(&txn, root, false)? {
                Walk::Complete(members) => {
                    record_members(&txn, &root, &members)?;
                    members.len()
                }
                Walk::Missing(cid) => return Err(StoreError::MissingBlock(cid)),
                Walk::Corrupt(cid) => {
                    // Abort first: dropping the block needs the write lock this one holds.
                    txn.abort().map_err(db_err)?;
                    self.drop_if_corrupt(cid)?;
                    return Err(StoreError::MissingBlock(cid));
                }
            }
        };
        set_pin_count(&txn, &root, count + 1)?;
        txn.commit().map_err(db_err)?;
        Ok(blocks)
    }

    fn unpin(&self, root: Cid) -> Result<usize, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let count = pin_count(&txn, &root)?;
        if count == 0 {
            return Ok(0);
        }
        let members = members_of(&txn, &root)?;
        set_pin_count(&txn, &root, count - 1)?;
        if count == 1 {
            txn.open_multimap_table(MEMBERS)
                .map_err(db_err)?
                .remove_all(root.to_bytes().as_slice())
                .map_err(db_err)?;
            add_to_pinned(&txn, members.iter().map(Vec::as_slice), false)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(members.len())
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
    /// The block named `cid`, verified: bytes that do not hash to `cid` are deleted, counted
    /// in [`DiskStore::corrupt_blocks`], and answered as `Ok(None)`.
    async fn get(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        let inner = self.inner.clone();
        let cid = *cid;
        blocking(move || inner.get(cid)).await
    }

    async fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
        Ok(self.inner.lock().sizes.contains_key(cid))
    }

    async fn put_many(&self, blocks: Vec<Block>) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        blocking(move || inner.put_many(blocks)).await
    }

    /// Removes an unpinned block; returns whether it was present.
    ///
    /// # Errors
    ///
    /// [`StoreError::Pinned`] for a block of a pinned DAG: nothing is removed.
    async fn delete(&self, cid: &Cid) -> Result<bool, StoreError> {
        let inner = self.inner.clone();
        let cid = *cid;
        blocking(move || inner.delete(cid)).await
    }
}
