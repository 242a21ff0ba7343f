//! File import: fixed-size and content-defined chunking, parallel leaf hashing, balanced and
//! trickle layouts.

use std::collections::VecDeque;
use std::io::Read;

use bytes::{Bytes, BytesMut};
use cid::{Cid, Version};
use rayon::prelude::*;

use super::chunker::Cutter;
use super::{ImportError, ImportOptions, Layout};
use crate::block::{Block, DAG_PB, RAW, cid_of};
use crate::pb::{DataType, PbLink, PbNode, UnixFsData};

/// Layer repeat of kubo's trickle layout.
const TRICKLE_LAYER_REPEAT: usize = 4;

/// The root of an imported file or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// Root CID.
    pub cid: Cid,
    /// Bytes of file content below the root (0 for a directory).
    pub size: u64,
    /// Cumulative size of every block of the DAG, as dag-pb `Tsize` counts it.
    pub tsize: u64,
}

/// Number of chunks read and hashed together: enough to keep every core busy, small enough
/// that memory stays bounded (the largest chunk times the batch).
fn batch_len() -> usize {
    (rayon::current_num_threads() * 4).clamp(4, 32)
}

/// Seals plaintext chunk `index` (`last` when it ends the input) in place: the buffer holds the
/// plaintext followed by `SEAL_OVERHEAD` spare bytes, and holds the sealed leaf afterwards.
pub(crate) type Sealer<'a> = &'a (dyn Fn(u64, bool, &mut [u8]) + Sync);

/// Reads chunks and turns them into leaf blocks, a batch at a time, in parallel.
struct Leaves<'a, R, F> {
    reader: R,
    opts: &'a ImportOptions,
    sink: F,
    leaf_type: DataType,
    queue: VecDeque<Imported>,
    /// Bytes per read chunk (the chunk size, or the plaintext size of a sealed leaf).
    read_size: usize,
    /// The boundary finder of a content-defined chunker (never with a sealer).
    cutter: Option<Cutter>,
    /// Bytes read but not yet cut into chunks (content-defined chunkers only).
    carry: BytesMut,
    seal: Option<Sealer<'a>>,
    /// Spare bytes after each chunk for the sealer.
    seal_overhead: usize,
    /// The chunk after the current batch, read to learn whether the batch ends the input.
    ahead: Option<BytesMut>,
    /// Reused read buffer: chunks are split off it, and its memory is reclaimed once they
    /// are dropped, so a long import does not fault in fresh pages for every chunk.
    pool: BytesMut,
    scratch: Vec<u8>,
    index: u64,
    eof: bool,
    finished: bool,
    read: u64,
}

impl<R: Read, F: FnMut(Block) -> Result<(), ImportError>> Leaves<'_, R, F> {
    fn read_chunk(&mut self) -> Result<Option<BytesMut>, ImportError> {
        if self.cutter.is_some() {
            return self.cut_chunk();
        }
        if self.eof {
            return Ok(None);
        }
        let size = self.read_size;
        let start = self.pool.len();
        self.pool.resize(start + size, 0);
        let mut filled = 0;
        while filled < size {
            match self.reader.read(&mut self.pool[start + filled..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.pool.truncate(start);
                    return Err(ImportError::Read {
                        offset: self.read + filled as u64,
                        source: e,
                    });
                }
            }
        }
        self.read += filled as u64;
        if filled == 0 {
            self.pool.truncate(start);
            return Ok(None);
        }
        // Room for the tag of a sealed chunk, written in place later.
        let end = start + filled + self.seal_overhead;
        self.pool.truncate(start + filled);
        self.pool.resize(end, 0);
        Ok(Some(self.pool.split_to(end).split_off(start)))
    }

    /// The next content-defined chunk: the carry is topped up to the cutter's look-ahead (or
    /// the end of the input), and the chunk it finds is split off.
    fn cut_chunk(&mut self) -> Result<Option<BytesMut>, ImportError> {
        let Some(cutter) = &self.cutter else {
            return Err(ImportError::Internal(
                "content-defined read without a cutter",
            ));
        };
        let want = cutter.lookahead();
        while !self.eof && self.carry.len() < want {
            let start = self.carry.len();
            if self.carry.capacity() < want {
                // Room for several chunks at once, so topping up rarely moves the carry.
                self.carry.reserve(want * 4 - start);
            }
            self.carry.resize(want, 0);
            match self.reader.read(&mut self.carry[start..]) {
                Ok(0) => {
                    self.carry.truncate(start);
                    self.eof = true;
                }
                Ok(n) => {
                    self.carry.truncate(start + n);
                    self.read += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    self.carry.truncate(start);
                }
                Err(e) => {
                    self.carry.truncate(start);
                    return Err(ImportError::Read {
                        offset: self.read,
                        source: e,
                    });
                }
            }
        }
        if self.carry.is_empty() {
            return Ok(None);
        }
        let n = cutter.cut(&self.carry);
        Ok(Some(self.carry.split_to(n)))
    }

    /// Refills the queue; after this, an empty queue means the input is exhausted.
    fn fill(&mut self) -> Result<(), ImportError> {
        if !self.queue.is_empty() || self.finished {
            return Ok(());
        }
        let batch = batch_len();
        let mut chunks = Vec::with_capacity(batch + 1);
        // Move the look-ahead chunk (with its spare bytes) into this batch's buffer, so that the previous buffer is
        // unshared once its chunks are dropped and `reserve` can take it back.
        let ahead = self.ahead.take().map(|a| {
            self.scratch.clear();
            self.scratch.extend_from_slice(&a);
        });
        if self.cutter.is_none() {
            self.pool.reserve(self.read_size * (batch + 1));
        }
        if ahead.is_some() {
            self.pool.extend_from_slice(&self.scratch);
            chunks.push(self.pool.split());
        }
        while chunks.len() < batch {
            match self.read_chunk()? {
                Some(c) => chunks.push(c),
                None => break,
            }
        }
        self.ahead = self.read_chunk()?;
        let ends = self.ahead.is_none();
        if chunks.is_empty() && self.seal.is_some() && self.index == 0 {
            // An empty item is one sealed empty chunk, so its end is authenticated too.
            chunks.push(BytesMut::zeroed(self.seal_overhead));
        }
        self.finished = ends;
        if chunks.is_empty() {
            return Ok(());
        }
        let (opts, leaf_type, seal) = (self.opts, self.leaf_type, self.seal);
        let first = self.index;
        let n = chunks.len();
        self.index += n as u64;
        let make = |(i, mut c): (usize, BytesMut)| {
            if let Some(seal) = seal {
                seal(first + i as u64, ends && i + 1 == n, &mut c);
            }
            leaf(opts, leaf_type, c.freeze())
        };
        let leaves: Vec<(Block, Imported)> = if n > 1 {
            chunks.into_par_iter().enumerate().map(make).collect()
        } else {
            chunks.into_iter().enumerate().map(make).collect()
        };
        for (block, info) in leaves {
            (self.sink)(block)?;
            self.queue.push_back(info);
        }
        Ok(())
    }

    fn done(&mut self) -> Result<bool, ImportError> {
        self.fill()?;
        Ok(self.queue.is_empty())
    }

    fn next(&mut self) -> Result<Option<Imported>, ImportError> {
        self.fill()?;
        Ok(self.queue.pop_front())
    }

    fn emit(&mut self, block: Block) -> Result<(), ImportError> {
        (self.sink)(block)
    }
}

fn leaf(opts: &ImportOptions, leaf_type: DataType, chunk: Bytes) -> (Block, Imported) {
    let size = chunk.len() as u64;
    if opts.raw_leaves {
        let cid = cid_of(Version::V1, RAW, &chunk);
        let block = Block::from_parts_unchecked(cid, chunk);
        return (
            block,
            Imported {
                cid,
                size,
                tsize: size,
            },
        );
    }
    let mut data = UnixFsData::new(leaf_type);
    data.filesize = Some(size);
    if !chunk.is_empty() {
        data.data = Some(chunk);
    }
    let node = PbNode {
        links: Vec::new(),
        data: Some(data.encode()),
    };
    let bytes = node.encode();
    let cid = cid_of(opts.cid_version, DAG_PB, &bytes);
    let tsize = bytes.len() as u64;
    (
        Block::from_parts_unchecked(cid, bytes),
        Imported { cid, size, tsize },
    )
}

/// An internal file node under construction.
#[derive(Default)]
struct FileNode {
    links: Vec<PbLink>,
    blocksizes: Vec<u64>,
    size: u64,
    tsize_children: u64,
}

impl FileNode {
    fn add(&mut self, child: Imported) {
        self.links.push(PbLink::new(child.cid, "", child.tsize));
        self.blocksizes.push(child.size);
        self.size += child.size;
        self.tsize_children += child.tsize;
    }

    fn commit(self, opts: &ImportOptions) -> (Block, Imported) {
        let mut data = UnixFsData::new(DataType::File);
        data.filesize = Some(self.size);
        data.blocksizes = self.blocksizes;
        let node = PbNode {
            links: self.links,
            data: Some(data.encode()),
        };
        let bytes = node.encode();
        let cid = cid_of(opts.cid_version, DAG_PB, &bytes);
        let info = Imported {
            cid,
            size: self.size,
            tsize: bytes.len() as u64 + self.tsize_children,
        };
        (Block::from_parts_unchecked(cid, bytes), info)
    }
}

/// Imports one file from `reader`, handing every block to `sink` (children before parents).
///
/// Memory is bounded by a batch of chunks plus one node per tree level, whatever the file size.
/// Leaves are hashed in parallel on the rayon pool.
///
/// # Errors
///
/// [`ImportError`] on invalid options, a read error (with the offset reached) or a sink error.
///
/// # Examples
///
/// ```
/// use streamspace_shard::import::{import_file, ImportOptions};
/// let mut blocks = Vec::new();
/// let root = import_file(&b"hello world\n"[..], &ImportOptions::default(), |b| {
///     blocks.push(b);
///     Ok(())
/// })?;
/// assert_eq!(root.cid.to_string(), "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o");
/// assert_eq!(blocks.len(), 1);
/// # Ok::<(), streamspace_shard::import::ImportError>(())
/// ```
pub fn import_file<R, F>(reader: R, opts: &ImportOptions, sink: F) -> Result<Imported, ImportError>
where
    R: Read,
    F: FnMut(Block) -> Result<(), ImportError>,
{
    import_chunks(reader, opts, None, sink)
}

/// Imports with each chunk passed through `seal` first (in parallel, like the hashing): the
/// reader is cut into chunks of `plain_size` bytes and each sealed chunk becomes one leaf.
pub(crate) fn import_sealed<R, F>(
    reader: R,
    opts: &ImportOptions,
    plain_size: usize,
    overhead: usize,
    seal: Sealer<'_>,
    sink: F,
) -> Result<Imported, ImportError>
where
    R: Read,
    F: FnMut(Block) -> Result<(), ImportError>,
{
    import_chunks(reader, opts, Some((plain_size, overhead, seal)), sink)
}

fn import_chunks<R, F>(
    reader: R,
    opts: &ImportOptions,
    seal: Option<(usize, usize, Sealer<'_>)>,
    sink: F,
) -> Result<Imported, ImportError>
where
    R: Read,
    F: FnMut(Block) -> Result<(), ImportError>,
{
    opts.validate()?;
    let leaf_type = match opts.layout {
        Layout::Balanced => DataType::File,
        // kubo's trickle builder writes UnixFS leaves of type Raw.
        Layout::Trickle => DataType::Raw,
    };
    let mut leaves = Leaves {
        reader,
        opts,
        sink,
        leaf_type,
        queue: VecDeque::new(),
        read_size: seal.map_or(opts.chunker.max_chunk(), |(p, _, _)| p),
        cutter: if seal.is_some() {
            None
        } else {
            opts.chunker.cutter()
        },
        carry: BytesMut::new(),
        seal_overhead: seal.map_or(0, |(_, o, _)| o),
        seal: seal.map(|(_, _, s)| s),
        ahead: None,
        pool: BytesMut::new(),
        scratch: Vec::new(),
        index: 0,
        eof: false,
        finished: false,
        read: 0,
    };
    match opts.layout {
        Layout::Balanced => balanced(&mut leaves),
        Layout::Trickle => {
            let (block, info) = trickle(&mut leaves, None)?;
            leaves.emit(block)?;
            Ok(info)
        }
    }
}

fn balanced<R: Read, F: FnMut(Block) -> Result<(), ImportError>>(
    leaves: &mut Leaves<'_, R, F>,
) -> Result<Imported, ImportError> {
    let opts = leaves.opts;
    // levels[k]: children collected for the next node at height k + 1.
    let mut levels: Vec<Vec<Imported>> = vec![Vec::new()];
    let push = |levels: &mut Vec<Vec<Imported>>,
                emit: &mut dyn FnMut(Block) -> Result<(), ImportError>,
                mut k: usize,
                mut item: Imported|
     -> Result<(), ImportError> {
        loop {
            if levels.len() <= k {
                levels.push(Vec::new());
            }
            if levels[k].len() < opts.max_links {
                levels[k].push(item);
                return Ok(());
            }
            // Level k is full and more follows: close it into a node one level up.
            let full = std::mem::take(&mut levels[k]);
            levels[k].push(item);
            let mut node = FileNode::default();
            full.into_iter().for_each(|c| node.add(c));
            let (block, info) = node.commit(opts);
            emit(block)?;
            item = info;
            k += 1;
        }
    };
    let mut any = false;
    while let Some(l) = leaves.next()? {
        any = true;
        push(&mut levels, &mut |b| leaves.emit(b), 0, l)?;
    }
    if !any {
        // An empty file is a single empty leaf, as in kubo.
        let (block, info) = leaf(opts, DataType::File, Bytes::new());
        leaves.emit(block)?;
        return Ok(info);
    }
    let mut k = 0;
    loop {
        let top = k + 1 == levels.len();
        if top && levels[k].len() == 1 {
            return levels[k]
                .pop()
                .ok_or_else(|| ImportError::Internal("empty top level"));
        }
        let items = std::mem::take(&mut levels[k]);
        if !items.is_empty() {
            let mut node = FileNode::default();
            items.into_iter().for_each(|c| node.add(c));
            let (block, info) = node.commit(opts);
            leaves.emit(block)?;
            push(&mut levels, &mut |b| leaves.emit(b), k + 1, info)?;
        }
        k += 1;
    }
}

/// kubo's trickle layout: fill a layer of leaves, then `TRICKLE_LAYER_REPEAT` subtrees of each
/// increasing depth below `max_depth`.
fn trickle<R: Read, F: FnMut(Block) -> Result<(), ImportError>>(
    leaves: &mut Leaves<'_, R, F>,
    max_depth: Option<usize>,
) -> Result<(Block, Imported), ImportError> {
    let opts = leaves.opts;
    let mut node = FileNode::default();
    while node.links.len() < opts.max_links {
        match leaves.next()? {
            Some(l) => node.add(l),
            None => break,
        }
    }
    let mut depth = 1;
    while max_depth.is_none_or(|m| depth < m) {
        if leaves.done()? {
            break;
        }
        for _ in 0..TRICKLE_LAYER_REPEAT {
            if leaves.done()? {
                break;
            }
            let (block, info) = trickle(leaves, Some(depth))?;
            leaves.emit(block)?;
            node.add(info);
        }
        depth += 1;
    }
    Ok(node.commit(opts))
}
