use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use cid::Cid;
use redb::{
    Database, MultimapTableDefinition, ReadableMultimapTable, ReadableTable, ReadableTableMetadata,
    TableDefinition, WriteTransaction,
};
use tokio::sync::mpsc;

use super::pack::{
    DEFAULT_PACK_SIZE, Done, INDEX, LOCS, Loc, PACKS, PackFiles, PackInfo, Packs, Tx, canonical,
    db_err, is_inline, key_of, recover,
};
use super::{BlockStore, EvictionPolicy, Lru, StoreError};
use crate::block::{Block, DAG_PB, verify};
use crate::dag::links_of;

/// Blocks inside the database, keyed by CID: the layout before pack files. Read only to
/// migrate a store of that layout.
const OLD_BLOCKS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("blocks");
/// Block sizes keyed by CID, of the layout before pack files.
const OLD_SIZES: TableDefinition<'_, &[u8], u64> = TableDefinition::new("sizes");
/// For each block (by multihash), the number of distinct pinned roots whose DAG holds it.
const PINNED: TableDefinition<'_, &[u8], u64> = TableDefinition::new("pinned");
/// Pinned roots, each with the number of times it is pinned.
const PINS: TableDefinition<'_, &[u8], u64> = TableDefinition::new("pins");
/// The blocks (CIDs, one per multihash) of each pinned root's DAG, recorded when it was first
/// pinned: exactly what removing its last pin releases, whether or not they are still present.
const MEMBERS: MultimapTableDefinition<'_, &[u8], &[u8]> =
    MultimapTableDefinition::new("pin_members");
/// Format markers of the file.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// The key under which [`META`] holds the layout of the store.
const LAYOUT_KEY: &str = "store_layout";
/// Block bytes in pack files, index by multihash, pins counted per multihash. Files without
/// the marker (blocks inside the database, keyed by CID) are migrated when opened.
pub(super) const STORE_LAYOUT: u64 = 3;

/// The database's page cache: small, since it holds only the index; the operating system
/// caches the pack files.
const CACHE_BYTES: usize = 8 << 20;

/// Counters of the blocks held; the blocks themselves are indexed only in the database (and
/// known to the eviction policy).
struct State {
    /// Bytes of block data held.
    used: u64,
    /// Blocks held.
    count: u64,
    /// Bytes of the pack files (block data, and space freed but not yet compacted).
    disk: u64,
    quota: Option<u64>,
    policy: Box<dyn EvictionPolicy>,
    /// Blocks held against eviction ([`BlockStore::hold`]), by key, with their hold counts.
    held: HashMap<Vec<u8>, u32>,
}

/// Shared by the clones of one store.
///
/// Lock order: redb's write transaction, then `packs`, then (briefly) `state`. Readers take
/// only `state`, never while waiting for the disk.
struct Inner {
    db: Database,
    files: PackFiles,
    packs: Mutex<Packs>,
    state: Mutex<State>,
    pack_size: AtomicU64,
    /// Corrupt blocks found on read and dropped since the store was opened.
    corrupt: AtomicU64,
}

/// A persistent block store: block bytes in append-only pack files, their index in a redb
/// file, bounded by a byte quota.
///
/// `DiskStore::open(path, ..)` keeps the index in the file `path` and the packs in the
/// directory `path` + `.packs`. Blocks are keyed by multihash, as kubo keys them: the same
/// bytes named by a CIDv0 and a CIDv1, or as `raw` and `dag-pb`, are one block. Blocks with an
/// identity multihash carry their bytes in the CID and are answered from it, never stored.
///
/// When a write would exceed the quota, unpinned blocks are evicted in the order of an
/// [`EvictionPolicy`] ([`Lru`] by default). The quota bounds the bytes on disk: the pack
/// files, including space of removed blocks until their pack is compacted (a pack is deleted
/// once empty and rewritten once a quarter or less of it is live, or sooner when the quota
/// needs the space). Writes are transactions: the appended bytes are synced (one `fdatasync`
/// per pack written) before the index commits, so after a crash the store holds exactly the
/// blocks of the writes that returned `Ok`. Clones share the same files.
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
/// assert_eq!((store.used_bytes(), store.disk_bytes()), (5, 5));
/// // The same bytes under a CIDv1 dag-pb name are the same block.
/// let other = cid::Cid::new_v1(0x70, *block.cid().hash());
/// assert!(store.has(&other).await?);
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
            .field("disk", &self.disk_bytes())
            .field("corrupt_blocks", &self.corrupt_blocks())
            .finish()
    }
}

/// The directory of the pack files of the store whose index is `path`.
fn pack_dir(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".packs");
    path.with_file_name(name)
}

impl DiskStore {
    /// Opens (or creates) the store at `path` (the index file; the packs go in the directory
    /// `path` + `.packs`) with an optional byte quota and LRU eviction.
    ///
    /// A store of the earlier layout (block bytes inside the database) is migrated: its blocks
    /// are moved into packs and its pins recounted, in one transaction.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`] when the file cannot be opened or is not a store,
    /// [`StoreError::Layout`] for a store written by a newer version, [`StoreError::Io`] when
    /// the pack directory cannot be read or written.
    pub fn open(path: impl AsRef<Path>, quota: Option<u64>) -> Result<Self, StoreError> {
        Self::open_with_policy(path, quota, Box::<Lru>::default())
    }

    /// Opens the store with another eviction policy.
    ///
    /// The policy is told of blocks under one canonical CID each (CIDv1, codec `raw`, the
    /// block's multihash), since the store keys blocks by multihash.
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
        let dir = pack_dir(path);
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(db_err)?;
        let layout = {
            let txn = db.begin_write().map_err(db_err)?;
            let layout = txn
                .open_table(META)
                .map_err(db_err)?
                .get(LAYOUT_KEY)
                .map_err(db_err)?
                .map(|v| v.value());
            if let Some(found) = layout.filter(|&l| l > STORE_LAYOUT) {
                return Err(StoreError::Layout {
                    found,
                    supported: STORE_LAYOUT,
                });
            }
            txn.open_table(INDEX).map_err(db_err)?;
            txn.open_table(LOCS).map_err(db_err)?;
            txn.open_table(PACKS).map_err(db_err)?;
            for t in [PINNED, PINS] {
                txn.open_table(t).map_err(db_err)?;
            }
            txn.open_multimap_table(MEMBERS).map_err(db_err)?;
            txn.commit().map_err(db_err)?;
            layout
        };
        let files = PackFiles::new(dir);
        let info = {
            let read = db.begin_read().map_err(db_err)?;
            let table = read.open_table(PACKS).map_err(db_err)?;
            let mut info = BTreeMap::new();
            for row in table.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let (len, live) = v.value();
                info.insert(k.value(), PackInfo { len, live });
            }
            info
        };
        let packs = recover(&files, info)?;
        let inner = Inner {
            db,
            files,
            packs: Mutex::new(packs),
            state: Mutex::new(State {
                used: 0,
                count: 0,
                disk: 0,
                quota,
                policy: Box::<Lru>::default(),
                held: HashMap::new(),
            }),
            pack_size: AtomicU64::new(DEFAULT_PACK_SIZE),
            corrupt: AtomicU64::new(0),
        };
        if layout != Some(STORE_LAYOUT) {
            inner.migrate()?;
        }

        // The policy learns the blocks in the order they were written (pack, then offset).
        let mut held = Vec::new();
        {
            let read = inner.db.begin_read().map_err(db_err)?;
            let table = read.open_table(INDEX).map_err(db_err)?;
            for row in table.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let Ok(mh) = multihash::Multihash::<64>::from_bytes(k.value()) else {
                    continue;
                };
                let loc = Loc::from(v.value());
                held.push((loc.pack, loc.offset, loc.len, mh));
            }
        }
        held.sort_unstable_by_key(|&(p, o, _, _)| (p, o));
        let mut used = 0;
        for (_, _, len, mh) in &held {
            used += len;
            policy.inserted(&Cid::new_v1(crate::block::RAW, *mh), *len);
        }
        {
            let mut st = inner.lock();
            st.used = used;
            st.count = held.len() as u64;
            st.disk = inner
                .packs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .disk;
            st.policy = policy;
        }
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Closes the pack being written at `bytes` and begins a new one (default 64 MiB).
    /// Smaller packs are compacted sooner, at the cost of more files. Applies to writes from
    /// now on, by every clone.
    pub fn set_pack_size(&self, bytes: u64) {
        self.inner.pack_size.store(bytes.max(1), Ordering::Relaxed);
    }

    /// Bytes the pack files take on disk: block data, and the space of removed blocks whose
    /// pack is not yet compacted. This is what the quota bounds.
    pub fn disk_bytes(&self) -> u64 {
        self.inner.lock().disk
    }

    /// Bytes of block data held.
    pub fn used_bytes(&self) -> u64 {
        self.inner.lock().used
    }

    /// Number of blocks held (distinct multihashes).
    pub fn len(&self) -> usize {
        usize::try_from(self.inner.lock().count).unwrap_or(usize::MAX)
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
    /// This node's bytes do not hash to its CID (or could not be read).
    Corrupt(Cid),
}

/// Walks the DAG below `root` as `tx` sees it.
///
/// Leaves (every codec but dag-pb) are checked for presence only; dag-pb nodes are read,
/// verified and decoded (inline ones from their CID). Each block is visited once, so the walk
/// is bounded by the store's contents whatever the links. `lenient` skips what is missing,
/// corrupt or undecodable instead of stopping, and then always answers [`Walk::Complete`]
/// with the blocks found.
fn walk_dag(tx: &Tx<'_>, root: Cid, lenient: bool) -> Result<Walk, StoreError> {
    let mut seen = HashSet::new();
    let mut stack = vec![root];
    while let Some(cid) = stack.pop() {
        if seen.contains(&cid) {
            continue;
        }
        let inline = is_inline(&cid);
        let loc = if inline {
            None
        } else {
            tx.lookup(&key_of(&cid))?
        };
        if cid.codec() != DAG_PB {
            if inline || loc.is_some() {
                seen.insert(cid);
            } else if !lenient {
                return Ok(Walk::Missing(cid));
            }
            continue;
        }
        let data = match loc {
            _ if inline => Some(Bytes::copy_from_slice(cid.hash().digest())),
            None if lenient => continue,
            None => return Ok(Walk::Missing(cid)),
            Some(loc) => tx.files.read(loc)?.map(Bytes::from),
        };
        let Some(data) = data.filter(|d| verify(&cid, d).is_ok()) else {
            if lenient {
                continue;
            }
            return Ok(Walk::Corrupt(cid));
        };
        match links_of(&cid, data) {
            Ok(links) => stack.extend(links),
            Err(source) if !lenient => return Err(StoreError::Decode { cid, source }),
            Err(_) => continue,
        }
        seen.insert(cid);
    }
    Ok(Walk::Complete(seen))
}

/// Adds one to (`up`) or takes one from the root count of each of the blocks named by
/// `members` (CIDs), removing counts that reach zero and never going below it.
fn add_to_pinned<'a>(
    txn: &WriteTransaction,
    members: impl IntoIterator<Item = &'a [u8]>,
    up: bool,
) -> Result<(), StoreError> {
    let mut pinned = txn.open_table(PINNED).map_err(db_err)?;
    for member in members {
        let key = key_of(&parse_cid(member, "pinned block")?);
        let key = key.as_slice();
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

/// Rebuilds [`MEMBERS`] and [`PINNED`] from [`PINS`] and the blocks present (files of earlier
/// layouts counted pins per CID, or per pin and block without members).
fn rebuild_pins(tx: &Tx<'_>) -> Result<(), StoreError> {
    let txn = &tx.txn;
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
        let Walk::Complete(found) = walk_dag(tx, root, true)? else {
            continue;
        };
        record_members(txn, &root, &found)?;
    }
    Ok(())
}

/// Records `members` as the blocks of `root`'s pin (one CID per multihash, inline blocks
/// left out) and counts the root on each of them. Returns how many were recorded.
fn record_members(
    txn: &WriteTransaction,
    root: &Cid,
    members: &HashSet<Cid>,
) -> Result<usize, StoreError> {
    let mut by_hash: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for cid in members.iter().filter(|c| !is_inline(c)) {
        by_hash.entry(key_of(cid)).or_insert_with(|| cid.to_bytes());
    }
    {
        let mut table = txn.open_multimap_table(MEMBERS).map_err(db_err)?;
        let root_key = root.to_bytes();
        for cid in by_hash.values() {
            table
                .insert(root_key.as_slice(), cid.as_slice())
                .map_err(db_err)?;
        }
    }
    add_to_pinned(txn, by_hash.values().map(Vec::as_slice), true)?;
    Ok(by_hash.len())
}

/// The recorded members (CIDs) of `root`'s pin.
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

fn block_pinned(txn: &WriteTransaction, key: &[u8]) -> Result<bool, StoreError> {
    Ok(txn
        .open_table(PINNED)
        .map_err(db_err)?
        .get(key)
        .map_err(db_err)?
        .is_some())
}

/// The unpinned blocks to evict (key and place), in the policy's order, so that `used` bytes
/// of blocks fit `quota`.
fn evictions(
    tx: &Tx<'_>,
    st: &State,
    quota: u64,
    mut used: u64,
) -> Result<Vec<(Vec<u8>, Loc)>, StoreError> {
    let pinned = tx.txn.open_table(PINNED).map_err(db_err)?;
    let mut pinned_bytes = 0;
    let mut victims = Vec::new();
    for cid in st.policy.candidates() {
        if used <= quota {
            break;
        }
        let key = key_of(&cid);
        let Some(loc) = tx.lookup(&key)? else {
            continue;
        };
        if st.held.contains_key(&key) || pinned.get(key.as_slice()).map_err(db_err)?.is_some() {
            pinned_bytes += loc.len;
            continue;
        }
        used -= loc.len;
        victims.push((key, loc));
    }
    if used > quota {
        return Err(StoreError::QuotaExceeded {
            quota,
            needed: used,
            pinned: pinned_bytes,
        });
    }
    Ok(victims)
}

/// Bytes an import writes before it commits what it wrote (and syncs it), so that its
/// pending index stays small.
const SESSION_COMMIT: u64 = 1 << 30;

/// A block written to a pack: its key, canonical CID, offset and length.
type Written = (Vec<u8>, Cid, u64, u64);

/// An import being written: block bytes appended to packs of its own, outside any lock, and
/// indexed with one sync and one commit at the end (or every [`SESSION_COMMIT`] bytes).
struct Session<'a> {
    inner: &'a Inner,
    /// Packs written: each one's number, length and blocks.
    done: Vec<(u64, u64, Vec<Written>)>,
    /// The pack being written: its number, file, length so far and blocks.
    open: Option<(u64, std::fs::File, u64, Vec<Written>)>,
    /// Keys written since the last commit.
    keys: HashSet<Vec<u8>>,
    pending: u64,
}

impl Session<'_> {
    fn write(&mut self, blocks: Vec<Block>) -> Result<(), StoreError> {
        let mut touched = Vec::new();
        let mut fresh = Vec::new();
        {
            let read = self.inner.db.begin_read().map_err(db_err)?;
            let index = read.open_table(INDEX).map_err(db_err)?;
            for b in blocks {
                let (cid, data) = b.into_parts();
                if is_inline(&cid) {
                    continue;
                }
                let key = key_of(&cid);
                if self.keys.contains(&key) {
                    continue;
                }
                if index.get(key.as_slice()).map_err(db_err)?.is_some() {
                    touched.push(canonical(&cid));
                } else {
                    self.keys.insert(key.clone());
                    fresh.push((key, canonical(&cid), data));
                }
            }
        }
        if !touched.is_empty() {
            let mut st = self.inner.lock();
            for cid in &touched {
                st.policy.accessed(cid);
            }
        }
        let pack_size = self.inner.pack_size.load(Ordering::Relaxed);
        for (key, cid, data) in fresh {
            let len = data.len() as u64;
            if let Some(q) = self.inner.quota() {
                if self.pending + len > q {
                    return Err(StoreError::QuotaExceeded {
                        quota: q,
                        needed: self.pending + len,
                        pinned: 0,
                    });
                }
            }
            if self
                .open
                .as_ref()
                .is_some_and(|o| o.2 > 0 && o.2 + len > pack_size)
            {
                if let Some((id, _, at, blocks)) = self.open.take() {
                    self.done.push((id, at, blocks));
                }
            }
            if self.open.is_none() {
                let id = self
                    .inner
                    .packs
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .reserve();
                let file = self.inner.files.create(id)?;
                self.open = Some((id, file, 0, Vec::new()));
            }
            if let Some((id, file, at, blocks)) = &mut self.open {
                self.inner.files.write_at(*id, file, &data, *at)?;
                blocks.push((key, cid, *at, len));
                *at += len;
            }
            self.pending += len;
        }
        if self.pending >= SESSION_COMMIT {
            self.commit()?;
        }
        Ok(())
    }

    /// Indexes what was written: one sync per pack, one commit.
    fn commit(&mut self) -> Result<(), StoreError> {
        if let Some((id, _, at, blocks)) = self.open.take() {
            self.done.push((id, at, blocks));
        }
        if self.done.is_empty() {
            return Ok(());
        }
        let packs = std::mem::take(&mut self.done);
        self.keys.clear();
        self.pending = 0;
        let mut tx = self.inner.begin()?;
        // Blocks another writer stored meanwhile are not indexed twice.
        let mut added = 0;
        for (_, _, blocks) in &packs {
            for (key, _, _, len) in blocks {
                if tx.lookup(key)?.is_none() {
                    added += len;
                }
            }
        }
        let (quota, victims) = {
            let st = self.inner.lock();
            let used = st.used + added;
            match st.quota {
                Some(q) if used > q => (st.quota, evictions(&tx, &st, q, used)),
                q => (q, Ok(Vec::new())),
            }
        };
        // On an error the transaction aborts and deletes the packs it was to adopt.
        for (id, len, blocks) in &packs {
            tx.adopt(*id, *len, blocks)?;
        }
        for (key, loc) in &victims? {
            tx.remove(key, *loc)?;
        }
        tx.reclaim(quota, 0)?;
        let done = tx.commit()?;
        self.inner.apply(done);
        Ok(())
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // Packs written and never committed (an error stopped the import).
        let open = self.open.take().map(|o| o.0);
        for id in self.done.iter().map(|d| d.0).chain(open) {
            let _ = std::fs::remove_file(self.inner.files.path(id));
        }
    }
}

/// Most bytes of old-layout blocks copied per step of a migration.
const MIGRATE_STEP: usize = 16 << 20;

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn begin(&self) -> Result<Tx<'_>, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let packs = self.packs.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(Tx::new(
            txn,
            &self.files,
            packs,
            self.pack_size.load(Ordering::Relaxed),
        ))
    }

    /// Accounts for a committed transaction.
    fn apply(&self, done: Done) {
        let mut st = self.lock();
        st.used = (st.used as i64 + done.used_delta).max(0) as u64;
        st.count = (st.count as i64 + done.count_delta).max(0) as u64;
        st.disk = done.disk;
        for cid in &done.removed {
            st.policy.removed(cid);
        }
        for (cid, len) in &done.inserted {
            st.policy.inserted(cid, *len);
        }
        drop(st);
        if done.lost > 0 {
            self.corrupt.fetch_add(done.lost, Ordering::Relaxed);
        }
    }

    /// Moves the blocks of an old-layout file into packs and recounts its pins, in one
    /// transaction (a crash leaves the old layout, and the next open starts over).
    fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.begin()?;
        let old = tx
            .txn
            .list_tables()
            .map_err(db_err)?
            .any(|t| redb::TableHandle::name(&t) == "blocks");
        if old {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let mut step = Vec::new();
                {
                    let table = tx.txn.open_table(OLD_BLOCKS).map_err(db_err)?;
                    let rows = match &after {
                        None => table.iter().map_err(db_err)?,
                        Some(k) => table.range(k.as_slice()..).map_err(db_err)?,
                    };
                    let mut bytes = 0;
                    for row in rows {
                        let (k, v) = row.map_err(db_err)?;
                        if after.as_deref() == Some(k.value()) {
                            continue;
                        }
                        bytes += v.value().len();
                        step.push((k.value().to_vec(), v.value().to_vec()));
                        if bytes >= MIGRATE_STEP {
                            break;
                        }
                    }
                }
                let Some((last, _)) = step.last() else { break };
                after = Some(last.clone());
                for (k, v) in step {
                    let Ok(cid) = Cid::try_from(k.as_slice()) else {
                        continue;
                    };
                    let key = key_of(&cid);
                    if is_inline(&cid) || tx.lookup(&key)?.is_some() {
                        continue;
                    }
                    tx.insert(&key, canonical(&cid), &v)?;
                }
            }
        }
        tx.txn.delete_table(OLD_BLOCKS).map_err(db_err)?;
        tx.txn.delete_table(OLD_SIZES).map_err(db_err)?;
        rebuild_pins(&tx)?;
        {
            let mut meta = tx.txn.open_table(META).map_err(db_err)?;
            meta.insert(LAYOUT_KEY, STORE_LAYOUT).map_err(db_err)?;
            meta.remove("pin_layout").map_err(db_err)?;
        }
        // The counters are loaded from the index once this returns.
        tx.commit().map(drop)
    }

    fn locate(&self, key: &[u8]) -> Result<Option<Loc>, StoreError> {
        let read = self.db.begin_read().map_err(db_err)?;
        let table = read.open_table(INDEX).map_err(db_err)?;
        Ok(table
            .get(key)
            .map_err(db_err)?
            .map(|v| Loc::from(v.value())))
    }

    fn quota(&self) -> Option<u64> {
        self.lock().quota
    }

    fn set_quota(&self, quota: Option<u64>) -> Result<usize, StoreError> {
        {
            let mut st = self.lock();
            if quota.is_none_or(|q| st.used <= q && st.disk <= q) {
                st.quota = quota;
                return Ok(0);
            }
        }
        let mut tx = self.begin()?;
        let victims = {
            let st = self.lock();
            match quota.filter(|&q| st.used > q) {
                Some(q) => evictions(&tx, &st, q, st.used)?,
                None => Vec::new(),
            }
        };
        for (key, loc) in &victims {
            tx.remove(key, *loc)?;
        }
        tx.reclaim(quota, 0)?;
        let done = tx.commit()?;
        self.apply(done);
        self.lock().quota = quota;
        Ok(victims.len())
    }

    fn put_many(&self, blocks: Vec<Block>) -> Result<(), StoreError> {
        // Blocks already held are only touched; no write transaction is begun for them.
        let mut fresh: Vec<(Vec<u8>, Cid, Bytes)> = Vec::new();
        let mut keys = HashSet::new();
        let mut touched = Vec::new();
        {
            let read = self.db.begin_read().map_err(db_err)?;
            let index = read.open_table(INDEX).map_err(db_err)?;
            for b in blocks {
                let (cid, data) = b.into_parts();
                if is_inline(&cid) {
                    continue;
                }
                let key = key_of(&cid);
                if index.get(key.as_slice()).map_err(db_err)?.is_some() {
                    touched.push(canonical(&cid));
                } else if keys.insert(key.clone()) {
                    fresh.push((key, canonical(&cid), data));
                }
            }
        }
        if !touched.is_empty() {
            let mut st = self.lock();
            for cid in &touched {
                st.policy.accessed(cid);
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin()?;
        // Another writer may have stored some of them while this one waited.
        let mut still = Vec::with_capacity(fresh.len());
        for f in fresh {
            if tx.lookup(&f.0)?.is_none() {
                still.push(f);
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        let added: u64 = still.iter().map(|(_, _, d)| d.len() as u64).sum();
        let (quota, victims) = {
            let st = self.lock();
            let used = st.used + added;
            match st.quota {
                // An error drops the transaction, which aborts it: nothing changes.
                Some(q) if used > q => (st.quota, evictions(&tx, &st, q, used)?),
                q => (q, Vec::new()),
            }
        };
        for (key, loc) in &victims {
            tx.remove(key, *loc)?;
        }
        tx.reclaim(quota, added)?;
        for (key, cid, data) in &still {
            tx.insert(key, *cid, data)?;
        }
        let done = tx.commit()?;
        self.apply(done);
        Ok(())
    }

    /// Stores an import's batches as they come; see [`Session`].
    fn put_batches(&self, batches: &mut mpsc::Receiver<Vec<Block>>) -> Result<(), StoreError> {
        let mut session = Session {
            inner: self,
            done: Vec::new(),
            open: None,
            keys: HashSet::new(),
            pending: 0,
        };
        while let Some(batch) = batches.blocking_recv() {
            session.write(batch)?;
        }
        session.commit()
    }

    fn get(&self, cid: Cid) -> Result<Option<Bytes>, StoreError> {
        if is_inline(&cid) {
            return Ok(Some(Bytes::copy_from_slice(cid.hash().digest())));
        }
        let key = key_of(&cid);
        for attempt in 0..2 {
            let Some(loc) = self.locate(&key)? else {
                return Ok(None);
            };
            match self.files.read(loc)? {
                Some(data) if verify(&cid, &data).is_ok() => {
                    self.lock().policy.accessed(&canonical(&cid));
                    return Ok(Some(Bytes::from(data)));
                }
                // Moved by a compaction since the index was read: look again.
                None if attempt == 0 => continue,
                _ => break,
            }
        }
        self.drop_if_corrupt(cid)?;
        Ok(None)
    }

    /// Deletes `cid` if its stored bytes do not hash to it (or cannot be read), pinned or not
    /// (its pins stay recorded, so a correct copy put later is pinned again). Returns whether
    /// it did.
    fn drop_if_corrupt(&self, cid: Cid) -> Result<bool, StoreError> {
        let mut tx = self.begin()?;
        let key = key_of(&cid);
        let Some(loc) = tx.lookup(&key)? else {
            // Already dropped by another reader.
            return Ok(false);
        };
        let bad = match tx.files.read(loc)? {
            Some(data) => verify(&cid, &data).is_err(),
            None => true,
        };
        if !bad {
            // Dropped and put again, correct, by another reader and writer.
            return Ok(false);
        }
        tx.remove(&key, loc)?;
        tx.lost();
        tx.reclaim(self.quota(), 0)?;
        let done = tx.commit()?;
        self.apply(done);
        Ok(true)
    }

    fn delete(&self, cid: Cid) -> Result<bool, StoreError> {
        if is_inline(&cid) {
            return Ok(false);
        }
        let mut tx = self.begin()?;
        let key = key_of(&cid);
        let Some(loc) = tx.lookup(&key)? else {
            return Ok(false);
        };
        if self.lock().held.contains_key(&key) || block_pinned(&tx.txn, &key)? {
            return Err(StoreError::Pinned(cid));
        }
        tx.remove(&key, loc)?;
        tx.reclaim(self.quota(), 0)?;
        let done = tx.commit()?;
        self.apply(done);
        Ok(true)
    }

    fn pin(&self, root: Cid) -> Result<usize, StoreError> {
        let tx = self.begin()?;
        let count = pin_count(&tx.txn, &root)?;
        let blocks = if count > 0 {
            // Pinned already: its blocks are known; all of them must still be present.
            let members = members_of(&tx.txn, &root)?;
            for member in &members {
                let cid = parse_cid(member, "pinned block")?;
                if tx.lookup(&key_of(&cid))?.is_none() {
                    return Err(StoreError::MissingBlock(cid));
                }
            }
            members.len()
        } else {
            match walk_dag(&tx, root, false)? {
                Walk::Complete(members) => record_members(&tx.txn, &root, &members)?,
                Walk::Missing(cid) => return Err(StoreError::MissingBlock(cid)),
                Walk::Corrupt(cid) => {
                    // Abort first: dropping the block needs the write lock this one holds.
                    drop(tx);
                    self.drop_if_corrupt(cid)?;
                    return Err(StoreError::MissingBlock(cid));
                }
            }
        };
        set_pin_count(&tx.txn, &root, count + 1)?;
        tx.commit()?;
        Ok(blocks)
    }

    fn unpin(&self, root: Cid) -> Result<usize, StoreError> {
        let tx = self.begin()?;
        let count = pin_count(&tx.txn, &root)?;
        if count == 0 {
            return Ok(0);
        }
        let members = members_of(&tx.txn, &root)?;
        set_pin_count(&tx.txn, &root, count - 1)?;
        if count == 1 {
            tx.txn
                .open_multimap_table(MEMBERS)
                .map_err(db_err)?
                .remove_all(root.to_bytes().as_slice())
                .map_err(db_err)?;
            add_to_pinned(&tx.txn, members.iter().map(Vec::as_slice), false)?;
        }
        tx.commit()?;
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
    /// `get` hashes every block it reads: readers need not hash again.
    const VERIFIES_READS: bool = true;

    /// The block named `cid`, verified: bytes that do not hash to `cid` are deleted, counted
    /// in [`DiskStore::corrupt_blocks`], and answered as `Ok(None)`. An identity CID is
    /// answered from the CID itself.
    async fn get(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        let inner = self.inner.clone();
        let cid = *cid;
        blocking(move || inner.get(cid)).await
    }

    async fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
        if is_inline(cid) {
            return Ok(true);
        }
        self.inner.locate(&key_of(cid)).map(|l| l.is_some())
    }

    /// The length the index records, without reading the pack.
    async fn size(&self, cid: &Cid) -> Result<Option<usize>, StoreError> {
        if is_inline(cid) {
            return Ok(Some(cid.hash().digest().len()));
        }
        self.inner
            .locate(&key_of(cid))
            .map(|l| l.and_then(|l| usize::try_from(l.len).ok()))
    }

    /// Stores the blocks not yet held (by multihash) in one transaction: one `fdatasync` of
    /// the pack written and one commit of the index. Identity blocks are not stored.
    async fn put_many(&self, blocks: Vec<Block>) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        blocking(move || inner.put_many(blocks)).await
    }

    /// Writes the batches to packs of their own as they come, without waiting for the disk,
    /// and indexes them with one sync per pack and one commit once the channel closes (and
    /// every 1 GiB before): an import pays one `fsync`, not one per batch. Blocks become
    /// visible when committed; after a crash, those not yet committed are gone.
    async fn put_batches(&self, mut batches: mpsc::Receiver<Vec<Block>>) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        blocking(move || inner.put_batches(&mut batches)).await
    }

    /// Removes an unpinned block; returns whether it was present.
    ///
    /// # Errors
    ///
    /// [`StoreError::Pinned`] for a block of a pinned DAG or a held block: nothing is
    /// removed.
    async fn delete(&self, cid: &Cid) -> Result<bool, StoreError> {
        let inner = self.inner.clone();
        let cid = *cid;
        blocking(move || inner.delete(cid)).await
    }

    /// Holds the block against eviction (and [`BlockStore::delete`]), in memory.
    ///
    /// ```
    /// # use cid::Version;
    /// # use streamspace_shard::block::{Block, RAW};
    /// # use streamspace_shard::store::{BlockStore, DiskStore};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let block = |b: u8| Block::encode(Version::V1, RAW, vec![b; 1000].into());
    /// let dir = tempfile::tempdir()?;
    /// let store = DiskStore::open(dir.path().join("blocks"), Some(2500))?;
    /// let (held, other) = (block(1), block(2));
    /// store.hold(held.cid());
    /// store.put(held.clone()).await?;
    /// store.put(other.clone()).await?;
    /// store.put(block(3)).await?; // over the quota: the oldest block not held goes
    /// assert!(store.has(held.cid()).await? && !store.has(other.cid()).await?);
    /// store.release(held.cid());
    /// store.put(block(4)).await?; // now the first may go
    /// assert!(!store.has(held.cid()).await?);
    /// # Ok(()) }
    /// ```
    fn hold(&self, cid: &Cid) {
        if is_inline(cid) {
            return;
        }
        *self.inner.lock().held.entry(key_of(cid)).or_insert(0) += 1;
    }

    fn release(&self, cid: &Cid) {
        let key = key_of(cid);
        let mut st = self.inner.lock();
        if let Some(n) = st.held.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                st.held.remove(&key);
            }
        }
    }
}
