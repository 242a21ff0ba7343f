//! Block stores: the [`BlockStore`] trait, an in-memory store and a persistent, quota-bounded
//! on-disk store with pinning and a pluggable eviction policy.

#[cfg(feature = "disk")]
mod disk;
mod holding;
mod memory;
#[cfg(feature = "disk")]
mod pack;
mod policy;

#[cfg(feature = "disk")]
pub use disk::DiskStore;
pub use holding::{HoldBudget, Holding};
pub use memory::MemoryStore;
pub use policy::{EvictionPolicy, Lru};

use std::future::Future;
use std::io::Read;
use std::path::PathBuf;

use bytes::Bytes;
use cid::Cid;
use tokio::sync::mpsc;

use crate::block::Block;
use crate::import::{ImportError, ImportOptions, Imported, import_file, import_path};

/// A block store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Adding the blocks would exceed the quota even after evicting every unpinned block.
    #[error("store quota of {quota} bytes exceeded: {needed} bytes needed, {pinned} bytes pinned")]
    QuotaExceeded {
        /// The quota.
        quota: u64,
        /// Bytes the store would hold with the new blocks.
        needed: u64,
        /// Bytes held by pinned blocks.
        pinned: u64,
    },
    /// A block needed to walk a DAG (for pinning) is not in the store.
    #[error("block {0} is not in the store")]
    MissingBlock(Cid),
    /// A block in the store could not be decoded while walking a DAG.
    #[error("block {cid} is not valid dag-pb: {source}")]
    Decode {
        /// The block.
        cid: Cid,
        /// What was wrong.
        source: crate::pb::PbError,
    },
    /// The block belongs to a pinned DAG and is not deleted; unpin its roots first.
    #[error("block {0} is pinned")]
    Pinned(Cid),
    /// The embedded database failed.
    #[error("block database: {0}")]
    Database(String),
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A blocking task panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(String),
    /// The store was written in a layout this version does not read (a newer one).
    #[error("store layout {found} is not supported (this version reads layouts up to {supported})")]
    Layout {
        /// The layout found in the file.
        found: u64,
        /// The newest layout this version reads.
        supported: u64,
    },
}

/// Storage of blocks by CID.
///
/// A store answers only bytes that hash to the CID asked for. `DiskStore` checks every
/// block it reads, deletes one found corrupt and answers `None` for it, so that callers fetch
/// it again; [`MemoryStore`] holds only [`Block`]s, whose bytes were checked when they were
/// made. Readers of DAGs verify every block once more (see [`crate::dag::fetch`]), so a store
/// that breaks the rule is detected, not believed.
pub trait BlockStore: Send + Sync {
    /// Whether [`BlockStore::get`] itself hashes every block it answers against the CID asked
    /// for (as [`DiskStore`] does), so that readers need not hash it again. Stores that hold
    /// only checked [`Block`]s but do not hash on read leave it `false`: readers then verify.
    const VERIFIES_READS: bool = false;

    /// The block named `cid`, if present (and, for stores that verify on read, intact).
    fn get(&self, cid: &Cid) -> impl Future<Output = Result<Option<Bytes>, StoreError>> + Send;

    /// Whether the block named `cid` is present.
    fn has(&self, cid: &Cid) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The length of the block named `cid`, if present, without reading its bytes where the
    /// store can tell (as [`DiskStore`] does, from its index; the length is what was stored,
    /// not checked again). The default reads the block.
    fn size(&self, cid: &Cid) -> impl Future<Output = Result<Option<usize>, StoreError>> + Send {
        async move { Ok(self.get(cid).await?.map(|b| b.len())) }
    }

    /// Stores blocks atomically: all of them or none.
    fn put_many(&self, blocks: Vec<Block>) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stores one block.
    fn put(&self, block: Block) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.put_many(vec![block])
    }

    /// Stores the blocks of one import, arriving in batches, and returns once every batch is
    /// stored (or at the first error, which drops the receiver and so stops the sender).
    ///
    /// Unlike [`BlockStore::put_many`], blocks may become visible only when it returns, and a
    /// crash may keep some batches and lose others. The default puts each batch with
    /// `put_many`; [`DiskStore`] syncs once for the whole import.
    fn put_batches(
        &self,
        mut batches: mpsc::Receiver<Vec<Block>>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move {
            while let Some(batch) = batches.recv().await {
                self.put_many(batch).await?;
            }
            Ok(())
        }
    }

    /// Removes a block; returns whether it was present.
    ///
    /// Stores with pins refuse a pinned or held block with [`StoreError::Pinned`].
    fn delete(&self, cid: &Cid) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Holds the block named `cid` against eviction until as many [`BlockStore::release`]s
    /// end the holds: a block fetched for an answer still being sent (a gateway streaming a
    /// film) stays until it is sent. A block not stored yet is held from the moment it is.
    /// Holds live in memory only (a restart drops them); callers bound how much they hold.
    /// Stores that never evict, as [`MemoryStore`], need do nothing; the default does nothing.
    fn hold(&self, cid: &Cid) {
        let _ = cid;
    }

    /// Ends one hold of `cid` ([`BlockStore::hold`]).
    fn release(&self, cid: &Cid) {
        let _ = cid;
    }
}

/// Most blocks sent from the importer thread to the store per write.
const PUT_BATCH: usize = 64;
/// Most bytes sent from the importer thread to the store per write.
const PUT_BATCH_BYTES: usize = 4 << 20;
/// Batches in flight between the importer thread and the store.
const CHANNEL_BOUND: usize = 2;

/// Imports from a blocking reader into `store` (or only hashes, when `store` is `None`).
///
/// The importer runs on a blocking thread; blocks reach the store through a bounded channel in
/// batches, so memory stays bounded whatever the input size.
///
/// # Errors
///
/// [`ImportError`] from the import or, as [`ImportError::Sink`], from the store.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use streamspace_shard::{import::ImportOptions, store::{add_reader, MemoryStore}};
/// let store = MemoryStore::new();
/// let root = add_reader(Some(&store), &b"hello world\n"[..], ImportOptions::default()).await?;
/// assert_eq!(root.cid.to_string(), "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o");
/// # Ok(()) }
/// ```
pub async fn add_reader<S, R>(
    store: Option<&S>,
    reader: R,
    opts: ImportOptions,
) -> Result<Imported, ImportError>
where
    S: BlockStore,
    R: Read + Send + 'static,
{
    run_import(store, move |sink| import_file(reader, &opts, sink)).await
}

/// Encrypts and imports from a blocking reader, like [`add_reader`], with
/// [`crate::crypto::import_encrypted`] (sealing and hashing on every core).
///
/// # Errors
///
/// As [`add_reader`].
pub async fn add_encrypted<S, R>(
    store: Option<&S>,
    reader: R,
    key: crate::crypto::ContentKey,
    opts: ImportOptions,
) -> Result<Imported, ImportError>
where
    S: BlockStore,
    R: Read + Send + 'static,
{
    run_import(store, move |sink| {
        crate::crypto::import_encrypted(reader, &key, &opts, sink)
    })
    .await
}

/// Encrypts the files of the flat directory `dir` (hidden files left out) and imports them as a
/// directory: each file sealed with `key.for_file(name)` (see
/// [`crate::crypto::ContentKey::for_file`]), so that one content key reads them all. Names and
/// sizes stay visible; contents do not. Blocks are written as they are made: memory stays
/// bounded whatever the files' sizes.
///
/// # Errors
///
/// As [`add_reader`]; [`ImportError::BadName`] for a name that is not UTF-8,
/// [`ImportError::Unsupported`] for anything but a regular file (subdirectories included),
/// [`ImportError::Path`] for what cannot be listed or opened.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use futures::TryStreamExt;
/// use streamspace_shard::crypto::{ContentKey, cat_decrypted};
/// use streamspace_shard::dag::resolve;
/// use streamspace_shard::export::ByteRange;
/// use streamspace_shard::import::ImportOptions;
/// use streamspace_shard::store::{MemoryStore, add_encrypted_dir};
/// let dir = tempfile::tempdir()?;
/// std::fs::write(dir.path().join("index.m3u8"), "#EXTM3U\n")?;
/// let store = MemoryStore::new();
/// let key = ContentKey::generate();
/// let root = add_encrypted_dir(Some(&store), dir.path().to_owned(), key.clone(), ImportOptions::default()).await?;
/// let file = resolve(&store, &root.cid, "index.m3u8").await?;
/// let plain: Vec<bytes::Bytes> = cat_decrypted(&store, file, &key.for_file("index.m3u8"), ByteRange::ALL).try_collect().await?;
/// assert_eq!(plain.concat(), b"#EXTM3U\n");
/// # Ok(()) }
/// ```
pub async fn add_encrypted_dir<S>(
    store: Option<&S>,
    dir: PathBuf,
    key: crate::crypto::ContentKey,
    opts: ImportOptions,
) -> Result<Imported, ImportError>
where
    S: BlockStore,
{
    run_import(store, move |sink| {
        let mut entries = Vec::new();
        let io_error = |path: &std::path::Path, source| ImportError::Path {
            path: path.to_owned(),
            source,
        };
        let listing = std::fs::read_dir(&dir).map_err(|e| io_error(&dir, e))?;
        for entry in listing {
            let entry = entry.map_err(|e| io_error(&dir, e))?;
            let path = entry.path();
            let name = entry
                .file_name()
                .into_string()
                .map_err(|_| ImportError::BadName { path: path.clone() })?;
            if name.starts_with('.') {
                continue;
            }
            let kind = entry.file_type().map_err(|e| io_error(&path, e))?;
            if !kind.is_file() {
                return Err(ImportError::Unsupported { path });
            }
            let file = std::fs::File::open(&path).map_err(|e| io_error(&path, e))?;
            let root = crate::crypto::import_encrypted(
                std::io::BufReader::new(file),
                &key.for_file(&name),
                &opts,
                &mut *sink,
            )?;
            entries.push(crate::import::DirEntry { name, root });
        }
        crate::import::build_directory(entries, &opts, sink)
    })
    .await
}

/// Imports a file or directory tree (`ipfs add -r`) into `store`, like [`add_reader`].
///
/// `on_entry` receives each added entry's path (relative to the parent of `path`) and root.
///
/// # Errors
///
/// As [`add_reader`].
pub async fn add_path<S, G>(
    store: Option<&S>,
    path: PathBuf,
    opts: ImportOptions,
    hidden: bool,
    mut on_entry: G,
) -> Result<Imported, ImportError>
where
    S: BlockStore,
    G: FnMut(&std::path::Path, &Imported) + Send + 'static,
{
    run_import(store, move |sink| {
        import_path(&path, &opts, hidden, sink, |p, i| on_entry(p, i))
    })
    .await
}

async fn run_import<S, J>(store: Option<&S>, job: J) -> Result<Imported, ImportError>
where
    S: BlockStore,
    J: FnOnce(&mut dyn FnMut(Block) -> Result<(), ImportError>) -> Result<Imported, ImportError>
        + Send
        + 'static,
{
    let store_blocks = store.is_some();
    let (tx, rx) = mpsc::channel::<Vec<Block>>(CHANNEL_BOUND);
    let worker = tokio::task::spawn_blocking(move || {
        let mut batch = Vec::with_capacity(PUT_BATCH);
        let mut batch_bytes = 0;
        let closed = || ImportError::Sink("store writer stopped".into());
        let mut sink = |block: Block| {
            if !store_blocks {
                return Ok(());
            }
            batch_bytes += block.data().len();
            batch.push(block);
            if batch.len() >= PUT_BATCH || batch_bytes >= PUT_BATCH_BYTES {
                batch_bytes = 0;
                tx.blocking_send(std::mem::take(&mut batch))
                    .map_err(|_| closed())?;
            }
            Ok(())
        };
        let root = job(&mut sink)?;
        if !batch.is_empty() {
            tx.blocking_send(batch).map_err(|_| closed())?;
        }
        Ok(root)
    });
    // An error drops the receiver, which stops the importer at its next block.
    let store_err = match store {
        Some(store) => store.put_batches(rx).await.err(),
        None => {
            drop(rx);
            None
        }
    };
    let result = worker
        .await
        .map_err(|e| ImportError::Sink(Box::new(StoreError::Task(e.to_string()))))?;
    match store_err {
        Some(e) => Err(ImportError::Sink(Box::new(e))),
        None => result,
    }
}
