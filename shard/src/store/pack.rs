//! Append-only pack files and the write transaction that appends to them.
//!
//! Block bytes live in pack files `<store>.packs/<id>.pack`, written only at their end; redb
//! holds the index (multihash → pack, offset, length), the reverse index (pack, offset →
//! multihash) that compaction walks, and each pack's committed length and live bytes. A pack
//! is never read past its committed length, so bytes appended by a write that did not commit
//! are invisible, and they are cut off when the store is next opened.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cid::Cid;
use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::StoreError;
use crate::block::{IDENTITY, RAW};

/// Multihash bytes → (pack, offset, length).
pub(super) const INDEX: TableDefinition<'_, &[u8], (u64, u64, u64)> =
    TableDefinition::new("block_index");
/// (pack, offset) → multihash bytes: the blocks of each pack, in file order.
pub(super) const LOCS: TableDefinition<'_, (u64, u64), &[u8]> = TableDefinition::new("pack_blocks");
/// Pack id → (committed length, live bytes).
pub(super) const PACKS: TableDefinition<'_, u64, (u64, u64)> = TableDefinition::new("packs");

/// Default size at which the pack being appended to is closed and a new one begun.
pub(super) const DEFAULT_PACK_SIZE: u64 = 64 << 20;

/// Read handles kept open at most; beyond, the cache is emptied and refilled on demand.
const OPEN_FILES: usize = 256;

pub(super) fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Database(e.into().to_string())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The key a block is stored under: its multihash, whatever the CID's version and codec.
pub(super) fn key_of(cid: &Cid) -> Vec<u8> {
    cid.hash().to_bytes()
}

/// Whether `cid` carries its bytes inline (identity multihash): such blocks are never stored.
pub(super) fn is_inline(cid: &Cid) -> bool {
    cid.hash().code() == IDENTITY
}

/// The one CID under which a stored block is reported to the eviction policy.
pub(super) fn canonical(cid: &Cid) -> Cid {
    Cid::new_v1(RAW, *cid.hash())
}

/// Where a block's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Loc {
    pub(super) pack: u64,
    pub(super) offset: u64,
    pub(super) len: u64,
}

impl From<(u64, u64, u64)> for Loc {
    fn from((pack, offset, len): (u64, u64, u64)) -> Self {
        Self { pack, offset, len }
    }
}

/// A pack's committed length and the bytes of it still indexed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct PackInfo {
    pub(super) len: u64,
    pub(super) live: u64,
}

/// The pack directory and cached read handles.
pub(super) struct PackFiles {
    dir: PathBuf,
    open: Mutex<HashMap<u64, Arc<File>>>,
}

impl PackFiles {
    pub(super) fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            open: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}.pack"))
    }

    /// The pack id of a file name in the directory, if it is a pack.
    pub(super) fn parse_name(name: &str) -> Option<u64> {
        let hex = name.strip_suffix(".pack")?;
        (hex.len() == 16)
            .then(|| u64::from_str_radix(hex, 16).ok())
            .flatten()
    }

    fn handle(&self, id: u64) -> std::io::Result<Arc<File>> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = open.get(&id) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(self.path(id))?);
        if open.len() >= OPEN_FILES {
            open.clear();
        }
        open.insert(id, f.clone());
        Ok(f)
    }

    /// Reads the bytes at `loc`; `None` when the pack is gone or shorter than the index says
    /// (moved by a compaction since the index was read, or lost).
    pub(super) fn read(&self, loc: Loc) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(loc.pack);
        let file = match self.handle(loc.pack) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let len =
            usize::try_from(loc.len).map_err(|_| StoreError::Database("block length".into()))?;
        let mut buf = vec![0u8; len];
        match read_exact_at(&file, &mut buf, loc.offset) {
            Ok(()) => Ok(Some(buf)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Creates pack `id` (a number reserved with [`Packs::reserve`]) for writing.
    pub(super) fn create(&self, id: u64) -> Result<File, StoreError> {
        let path = self.path(id);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))
    }

    /// Writes `data` at `offset` of `file`, pack `id`.
    pub(super) fn write_at(
        &self,
        id: u64,
        file: &File,
        data: &[u8],
        offset: u64,
    ) -> Result<(), StoreError> {
        write_all_at(file, data, offset).map_err(io_err(&self.path(id)))
    }

    pub(super) fn forget(&self, id: u64) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        #[cfg(unix)]
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok(())
    }
}

#[cfg(unix)]
fn read_exact_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, offset)
}

#[cfg(unix)]
fn write_all_at(f: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(f, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(f: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match f.seek_read(buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(windows)]
fn write_all_at(f: &File, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = f.seek_write(buf, offset)?;
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// The committed pack table, and the pack being appended to. Guarded by a mutex that is only
/// taken while holding redb's write transaction.
#[derive(Default)]
pub(super) struct Packs {
    pub(super) info: BTreeMap<u64, PackInfo>,
    /// Sum of the committed lengths.
    pub(super) disk: u64,
    pub(super) next_id: u64,
    active: Option<(u64, File)>,
}

impl Packs {
    /// A pack number no other pack has or will have.
    pub(super) fn reserve(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

/// What a committed transaction changed, for the in-memory accounting.
#[derive(Debug, Default)]
pub(super) struct Done {
    pub(super) used_delta: i64,
    pub(super) count_delta: i64,
    /// Bytes of every pack after the commit.
    pub(super) disk: u64,
    /// Blocks stored, under their canonical CID, with their sizes.
    pub(super) inserted: Vec<(Cid, u64)>,
    /// Blocks removed, under their canonical CID.
    pub(super) removed: Vec<Cid>,
    /// Blocks dropped because their bytes were unreadable or did not match.
    pub(super) lost: u64,
}

/// Deletes the packs a transaction created when it ends without committing.
struct Guard<'a> {
    packs: MutexGuard<'a, Packs>,
    files: &'a PackFiles,
    created: Vec<u64>,
    committed: bool,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if self
            .packs
            .active
            .as_ref()
            .is_some_and(|(id, _)| !self.packs.info.contains_key(id))
        {
            self.packs.active = None;
        }
        for id in &self.created {
            // An uncommitted pack; if removal fails, the next open deletes it.
            let _ = std::fs::remove_file(self.files.path(*id));
        }
    }
}

/// A redb write transaction together with the pack files it appends to.
///
/// Appended bytes are synced to disk (one `fdatasync` per pack written) before the database
/// commits, and packs emptied or compacted away are unlinked only after it has.
pub(super) struct Tx<'a> {
    pub(super) txn: WriteTransaction,
    pub(super) files: &'a PackFiles,
    guard: Guard<'a>,
    overlay: BTreeMap<u64, Option<PackInfo>>,
    written: BTreeSet<u64>,
    dropped: Vec<u64>,
    /// Packs being compacted: never appended to.
    compacting: BTreeSet<u64>,
    pack_size: u64,
    disk_delta: i64,
    done: Done,
}

impl<'a> Tx<'a> {
    pub(super) fn new(
        txn: WriteTransaction,
        files: &'a PackFiles,
        packs: MutexGuard<'a, Packs>,
        pack_size: u64,
    ) -> Self {
        Self {
            txn,
            files,
            guard: Guard {
                packs,
                files,
                created: Vec::new(),
                committed: false,
            },
            overlay: BTreeMap::new(),
            written: BTreeSet::new(),
            dropped: Vec::new(),
            compacting: BTreeSet::new(),
            pack_size,
            disk_delta: 0,
            done: Done::default(),
        }
    }

    fn info(&self, id: u64) -> Option<PackInfo> {
        match self.overlay.get(&id) {
            Some(v) => *v,
            None => self.guard.packs.info.get(&id).copied(),
        }
    }

    fn set_info(&mut self, id: u64, info: Option<PackInfo>) {
        self.overlay.insert(id, info);
    }

    /// Bytes of every pack as this transaction leaves them.
    pub(super) fn disk(&self) -> u64 {
        (self.guard.packs.disk as i64 + self.disk_delta).max(0) as u64
    }

    /// Where the block stored under `key` is.
    pub(super) fn lookup(&self, key: &[u8]) -> Result<Option<Loc>, StoreError> {
        let t = self.txn.open_table(INDEX).map_err(db_err)?;
        Ok(t.get(key).map_err(db_err)?.map(|v| Loc::from(v.value())))
    }

    fn is_active(&self, id: u64) -> bool {
        self.guard
            .packs
            .active
            .as_ref()
            .is_some_and(|(a, _)| *a == id)
    }

    /// The pack to append to, opened (or created) if needed.
    fn active(&mut self) -> Result<u64, StoreError> {
        if let Some((id, _)) = &self.guard.packs.active {
            let id = *id;
            if self.info(id).is_some_and(|i| i.len < self.pack_size) {
                return Ok(id);
            }
            self.guard.packs.active = None;
        }
        // The last pack, if it has room (a reopened store continues it).
        let last = self
            .guard
            .packs
            .info
            .keys()
            .chain(self.overlay.keys())
            .copied()
            .max();
        if let Some(id) = last.filter(|id| !self.compacting.contains(id)) {
            if self.info(id).is_some_and(|i| i.len < self.pack_size) {
                let path = self.files.path(id);
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                self.guard.packs.active = Some((id, file));
                return Ok(id);
            }
        }
        let id = self.guard.packs.next_id;
        self.guard.packs.next_id += 1;
        let path = self.files.path(id);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        self.guard.created.push(id);
        self.guard.packs.active = Some((id, file));
        self.set_info(id, Some(PackInfo::default()));
        Ok(id)
    }

    /// Appends `data` to the active pack; returns where it went.
    fn append_raw(&mut self, data: &[u8]) -> Result<(u64, u64), StoreError> {
        let id = self.active()?;
        let mut info = self.info(id).unwrap_or_default();
        let offset = info.len;
        if let Some((_, file)) = &self.guard.packs.active {
            write_all_at(file, data, offset).map_err(io_err(&self.files.path(id)))?;
        }
        info.len += data.len() as u64;
        info.live += data.len() as u64;
        self.set_info(id, Some(info));
        self.written.insert(id);
        self.disk_delta += data.len() as i64;
        Ok((id, offset))
    }

    fn index(&self, key: &[u8], pack: u64, offset: u64, len: u64) -> Result<(), StoreError> {
        self.txn
            .open_table(INDEX)
            .map_err(db_err)?
            .insert(key, (pack, offset, len))
            .map_err(db_err)?;
        self.txn
            .open_table(LOCS)
            .map_err(db_err)?
            .insert((pack, offset), key)
            .map_err(db_err)?;
        Ok(())
    }

    /// Stores `data` under `key` (`cid` is the block's canonical CID).
    pub(super) fn insert(&mut self, key: &[u8], cid: Cid, data: &[u8]) -> Result<(), StoreError> {
        let (pack, offset) = self.append_raw(data)?;
        let len = data.len() as u64;
        self.index(key, pack, offset, len)?;
        self.done.used_delta += len as i64;
        self.done.count_delta += 1;
        self.done.inserted.push((cid, len));
        Ok(())
    }

    fn unindex(&mut self, key: &[u8], loc: Loc) -> Result<(), StoreError> {
        self.txn
            .open_table(INDEX)
            .map_err(db_err)?
            .remove(key)
            .map_err(db_err)?;
        self.txn
            .open_table(LOCS)
            .map_err(db_err)?
            .remove((loc.pack, loc.offset))
            .map_err(db_err)?;
        if let Some(mut info) = self.info(loc.pack) {
            info.live = info.live.saturating_sub(loc.len);
            self.set_info(loc.pack, Some(info));
        }
        self.done.used_delta -= loc.len as i64;
        self.done.count_delta -= 1;
        Ok(())
    }

    /// Removes the block stored under `key` at `loc`.
    pub(super) fn remove(&mut self, key: &[u8], loc: Loc) -> Result<(), StoreError> {
        self.unindex(key, loc)?;
        if let Ok(mh) = multihash::Multihash::<64>::from_bytes(key) {
            self.done.removed.push(Cid::new_v1(RAW, mh));
        }
        Ok(())
    }

    /// Takes in pack `id`, written outside any transaction (by an import) to `len` bytes:
    /// indexes its `blocks` (key, canonical CID, offset, length) not held yet; the bytes of
    /// the others are dead from the start. The pack is synced before the commit, and deleted
    /// if the transaction does not commit.
    pub(super) fn adopt(
        &mut self,
        id: u64,
        len: u64,
        blocks: &[(Vec<u8>, Cid, u64, u64)],
    ) -> Result<(), StoreError> {
        self.guard.created.push(id);
        self.set_info(id, Some(PackInfo { len, live: 0 }));
        self.disk_delta += len as i64;
        self.written.insert(id);
        let mut live = 0;
        for (key, cid, offset, size) in blocks {
            if self.lookup(key)?.is_some() {
                continue;
            }
            self.index(key, id, *offset, *size)?;
            live += size;
            self.done.used_delta += *size as i64;
            self.done.count_delta += 1;
            self.done.inserted.push((*cid, *size));
        }
        self.set_info(id, Some(PackInfo { len, live }));
        Ok(())
    }

    /// Counts a block dropped because its bytes were found bad.
    pub(super) fn lost(&mut self) {
        self.done.lost += 1;
    }

    fn drop_pack(&mut self, id: u64) {
        if let Some(info) = self.info(id) {
            self.disk_delta -= info.len as i64;
        }
        if self.is_active(id) {
            self.guard.packs.active = None;
        }
        self.set_info(id, None);
        self.dropped.push(id);
    }

    /// Copies the live blocks of pack `id` to the end of the active pack and drops `id`.
    fn compact(&mut self, id: u64) -> Result<(), StoreError> {
        self.compacting.insert(id);
        if self.is_active(id) {
            self.guard.packs.active = None;
        }
        let entries: Vec<(u64, Vec<u8>)> = {
            let locs = self.txn.open_table(LOCS).map_err(db_err)?;
            let mut out = Vec::new();
            for row in locs.range((id, 0)..=(id, u64::MAX)).map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                out.push((k.value().1, v.value().to_vec()));
            }
            out
        };
        for (offset, key) in entries {
            let loc = self.lookup(&key)?;
            self.txn
                .open_table(LOCS)
                .map_err(db_err)?
                .remove((id, offset))
                .map_err(db_err)?;
            let Some(loc) = loc.filter(|l| l.pack == id && l.offset == offset) else {
                continue;
            };
            match self.files.read(loc)? {
                Some(data) => {
                    let (pack, at) = self.append_raw(&data)?;
                    self.index(&key, pack, at, loc.len)?;
                }
                None => {
                    // The pack lost these bytes: the block is gone.
                    self.txn
                        .open_table(INDEX)
                        .map_err(db_err)?
                        .remove(key.as_slice())
                        .map_err(db_err)?;
                    self.done.used_delta -= loc.len as i64;
                    self.done.count_delta -= 1;
                    if let Ok(mh) = multihash::Multihash::<64>::from_bytes(&key) {
                        self.done.removed.push(Cid::new_v1(RAW, mh));
                    }
                    self.done.lost += 1;
                }
            }
        }
        self.drop_pack(id);
        Ok(())
    }

    /// Returns space: packs this transaction emptied are dropped, mostly empty ones (a quarter
    /// live or less) compacted, and then, while the packs and `extra` bytes to come exceed
    /// `quota`, the packs with the most dead bytes compacted.
    pub(super) fn reclaim(&mut self, quota: Option<u64>, extra: u64) -> Result<(), StoreError> {
        let touched: Vec<u64> = self
            .overlay
            .iter()
            .filter_map(|(id, v)| v.map(|_| *id))
            .collect();
        for id in touched {
            let Some(info) = self.info(id) else { continue };
            if info.live == 0 {
                self.drop_pack(id);
            } else if !self.is_active(id) && info.live * 4 <= info.len {
                self.compact(id)?;
            }
        }
        let Some(quota) = quota else { return Ok(()) };
        while self.disk().saturating_add(extra) > quota {
            let ids: BTreeSet<u64> = self
                .guard
                .packs
                .info
                .keys()
                .chain(self.overlay.keys())
                .copied()
                .collect();
            let worst = ids
                .into_iter()
                .filter_map(|id| self.info(id).map(|i| (i.len - i.live.min(i.len), id)))
                .filter(|(dead, _)| *dead > 0)
                .max();
            let Some((_, id)) = worst else { break };
            self.compact(id)?;
        }
        Ok(())
    }

    /// Syncs the packs written, commits the database, then unlinks the packs dropped.
    pub(super) fn commit(self) -> Result<Done, StoreError> {
        let Tx {
            txn,
            files,
            mut guard,
            overlay,
            written,
            dropped,
            disk_delta,
            mut done,
            ..
        } = self;
        {
            let mut t = txn.open_table(PACKS).map_err(db_err)?;
            for (id, v) in &overlay {
                match v {
                    Some(i) => {
                        t.insert(*id, (i.len, i.live)).map_err(db_err)?;
                    }
                    None => {
                        t.remove(*id).map_err(db_err)?;
                    }
                }
            }
        }
        for id in &written {
            if matches!(overlay.get(id), Some(None)) {
                continue;
            }
            let path = files.path(*id);
            match &guard.packs.active {
                Some((a, f)) if a == id => f.sync_data(),
                _ => OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.sync_data()),
            }
            .map_err(io_err(&path))?;
        }
        if !guard.created.is_empty() {
            files.sync_dir()?;
        }
        txn.commit().map_err(db_err)?;
        guard.committed = true;
        let packs = &mut *guard.packs;
        for (id, v) in overlay {
            match v {
                Some(i) => {
                    packs.info.insert(id, i);
                }
                None => {
                    packs.info.remove(&id);
                }
            }
        }
        packs.disk = (packs.disk as i64 + disk_delta).max(0) as u64;
        done.disk = packs.disk;
        drop(guard);
        for id in dropped {
            files.forget(id);
            // Left behind if this fails; the next open deletes packs the table does not name.
            let _ = std::fs::remove_file(files.path(id));
        }
        Ok(done)
    }
}

/// Brings the pack directory in line with the committed pack table: files it does not name
/// (from writes or compactions that did not commit, or dropped packs not yet unlinked) are
/// deleted and bytes past a pack's committed length cut off.
pub(super) fn recover(
    files: &PackFiles,
    info: BTreeMap<u64, PackInfo>,
) -> Result<Packs, StoreError> {
    let dir = files.dir();
    let mut max_id = info.keys().copied().max();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let Some(id) = entry.file_name().to_str().and_then(PackFiles::parse_name) else {
            continue;
        };
        max_id = max_id.max(Some(id));
        let path = entry.path();
        match info.get(&id) {
            None => std::fs::remove_file(&path).map_err(io_err(&path))?,
            Some(p) => {
                let len = entry.metadata().map_err(io_err(&path))?.len();
                if len > p.len {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_err(&path))?;
                    f.set_len(p.len).map_err(io_err(&path))?;
                    f.sync_all().map_err(io_err(&path))?;
                }
            }
        }
    }
    let disk = info.values().map(|p| p.len).sum();
    Ok(Packs {
        info,
        disk,
        next_id: max_id.map_or(0, |m| m + 1),
        active: None,
    })
}
