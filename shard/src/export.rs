//! Streaming file export with ranged reads.
//!
//! [`cat`] walks a UnixFS file DAG in order and yields its bytes. Every block is verified
//! against its CID before any of its bytes are yielded, and the `blocksizes` of each node are
//! used to skip every subtree outside the requested range, so a read of the last second of a
//! video fetches only the blocks that hold it (plus their ancestors).
//!
//! Blocks are read ahead: the next few blocks in file order are fetched (and, unless the store
//! verifies its reads itself, hashed on the rayon pool) concurrently, and their bytes yielded
//! in order.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use cid::Cid;
use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};

use crate::block::{DAG_PB, RAW, verify};
use crate::dag::{ExportError, MAX_DEPTH, decode_node, fetch};
use crate::pb::DataType;
use crate::store::BlockStore;

/// A byte range of a file: `offset` and an optional `length` (to the end when `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ByteRange {
    /// First byte.
    pub offset: u64,
    /// Number of bytes; `None` reads to the end.
    pub length: Option<u64>,
}

impl ByteRange {
    /// The whole file.
    pub const ALL: Self = Self {
        offset: 0,
        length: None,
    };

    /// `length` bytes from `offset`.
    pub fn new(offset: u64, length: Option<u64>) -> Self {
        Self { offset, length }
    }

    fn end(&self) -> u64 {
        self.length
            .map_or(u64::MAX, |l| self.offset.saturating_add(l))
    }
}

/// The file size recorded at the root of a file DAG (a raw block's length for a raw root).
///
/// # Errors
///
/// [`ExportError`] when the root is missing, corrupt or not a file.
pub async fn file_size<S: BlockStore>(store: &S, cid: &Cid) -> Result<u64, ExportError> {
    let data = fetch(store, cid).await?;
    match cid.codec() {
        RAW => Ok(data.len() as u64),
        DAG_PB => {
            let node = decode_node(cid, data)?;
            match node.fs.kind {
                DataType::File | DataType::Raw => Ok(node_size(cid, &node)?),
                found => Err(ExportError::WrongType {
                    cid: *cid,
                    expected: "file",
                    found,
                }),
            }
        }
        codec => Err(ExportError::UnsupportedCodec { cid: *cid, codec }),
    }
}

/// Checks a file node's sizes agree and returns its content size.
fn node_size(cid: &Cid, node: &crate::dag::Node) -> Result<u64, ExportError> {
    let inline = node.fs.data.as_ref().map_or(0, Bytes::len) as u64;
    if !node.pb.links.is_empty() && node.fs.blocksizes.len() != node.pb.links.len() {
        return Err(ExportError::SizeMismatch {
            cid: *cid,
            what: "blocksizes entries against links",
            expected: node.pb.links.len() as u64,
            actual: node.fs.blocksizes.len() as u64,
        });
    }
    let children = node
        .fs
        .blocksizes
        .iter()
        .try_fold(0u64, |a, &b| a.checked_add(b))
        .ok_or(ExportError::SizeMismatch {
            cid: *cid,
            what: "sum of blocksizes",
            expected: u64::MAX,
            actual: u64::MAX,
        })?;
    let total = if node.pb.links.is_empty() {
        inline
    } else {
        inline + children
    };
    if let Some(fs) = node.fs.filesize {
        if fs != total {
            return Err(ExportError::SizeMismatch {
                cid: *cid,
                what: "filesize",
                expected: fs,
                actual: total,
            });
        }
    }
    Ok(total)
}

struct Pending {
    /// Order of creation, naming the node's read-ahead.
    seq: u64,
    cid: Cid,
    /// File offset of the node's first byte.
    start: u64,
    /// Size the parent says this node has.
    expected: Option<u64>,
    depth: usize,
}

/// Blocks shorter than this are hashed where they arrive rather than on the rayon pool.
const PARALLEL_VERIFY_MIN: usize = 16 << 10;

/// Blocks fetched ahead of the one being yielded: enough to keep every core hashing.
fn read_ahead() -> usize {
    (rayon::current_num_threads() * 2).clamp(4, 16)
}

/// Fetches `cid` and checks it against the CID, on the rayon pool for large blocks; a store
/// that verifies its own reads ([`BlockStore::VERIFIES_READS`]) is not hashed twice.
async fn fetch_verified<S: BlockStore>(store: &S, cid: Cid) -> Result<Bytes, ExportError> {
    let data = store
        .get(&cid)
        .await?
        .ok_or(ExportError::MissingBlock(cid))?;
    if S::VERIFIES_READS {
        return Ok(data);
    }
    if data.len() < PARALLEL_VERIFY_MIN {
        verify(&cid, &data)?;
        return Ok(data);
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let bytes = data.clone();
    rayon::spawn(move || {
        let _ = tx.send(verify(&cid, &bytes));
    });
    match rx.await {
        Ok(checked) => checked?,
        // The pool dropped the job: check here.
        Err(_) => verify(&cid, &data)?,
    }
    Ok(data)
}

type Fetch<'a> = Pin<Box<dyn Future<Output = (u64, Result<Bytes, ExportError>)> + Send + 'a>>;

struct CatState<'a, S> {
    store: &'a S,
    stack: Vec<Pending>,
    /// Fetches under way, by `Pending::seq`.
    inflight: FuturesUnordered<Fetch<'a>>,
    /// Fetches done, not yet consumed.
    ready: HashMap<u64, Result<Bytes, ExportError>>,
    /// Seqs fetched or being fetched.
    requested: HashSet<u64>,
    next_seq: u64,
    window: usize,
    range_start: u64,
    range_end: u64,
    first: bool,
    failed: bool,
}

impl<'a, S: BlockStore> CatState<'a, S> {
    /// Starts fetching the nodes that come next in file order (the top of the stack).
    fn prefetch(&mut self) {
        let store = self.store;
        for p in self.stack.iter().rev().take(self.window) {
            if p.depth <= MAX_DEPTH && self.requested.insert(p.seq) {
                let (seq, cid) = (p.seq, p.cid);
                self.inflight.push(Box::pin(
                    async move { (seq, fetch_verified(store, cid).await) },
                ));
            }
        }
    }

    /// The verified bytes of `p`, fetched ahead or now.
    async fn take(&mut self, p: &Pending) -> Result<Bytes, ExportError> {
        if self.requested.remove(&p.seq) {
            loop {
                if let Some(r) = self.ready.remove(&p.seq) {
                    return r;
                }
                match self.inflight.next().await {
                    Some((seq, r)) => {
                        self.ready.insert(seq, r);
                    }
                    None => break,
                }
            }
        }
        fetch_verified(self.store, p.cid).await
    }

    /// Processes nodes until one yields bytes in range; `None` at the end.
    async fn step(&mut self) -> Result<Option<Bytes>, ExportError> {
        loop {
            self.prefetch();
            let Some(p) = self.stack.pop() else { break };
            if p.depth > MAX_DEPTH {
                return Err(ExportError::TooDeep(p.cid));
            }
            let data = self.take(&p).await?;
            let (inline, size, children) = match p.cid.codec() {
                RAW => {
                    let len = data.len() as u64;
                    (data, len, Vec::new())
                }
                DAG_PB => {
                    let node = decode_node(&p.cid, data)?;
                    match node.fs.kind {
                        DataType::File | DataType::Raw => {}
                        found => {
                            return Err(ExportError::WrongType {
                                cid: p.cid,
                                expected: "file",
                                found,
                            });
                        }
                    }
                    let size = node_size(&p.cid, &node)?;
                    let inline = node.fs.data.clone().unwrap_or_default();
                    let children = node
                        .pb
                        .links
                        .iter()
                        .map(|l| l.cid)
                        .zip(node.fs.blocksizes.iter().copied())
                        .collect::<Vec<_>>();
                    (inline, size, children)
                }
                codec => return Err(ExportError::UnsupportedCodec { cid: p.cid, codec }),
            };
            if let Some(expected) = p.expected {
                if expected != size {
                    return Err(ExportError::SizeMismatch {
                        cid: p.cid,
                        what: "size claimed by parent",
                        expected,
                        actual: size,
                    });
                }
            }
            if self.first {
                self.first = false;
                if self.range_start > size {
                    return Err(ExportError::OffsetPastEnd {
                        offset: self.range_start,
                        size,
                    });
                }
                self.range_end = self.range_end.min(size);
            }
            // Children in reverse so the first is processed next.
            let mut child_start = p.start + inline.len() as u64;
            let mut pushes = Vec::new();
            for (cid, len) in children {
                let s = child_start;
                child_start += len;
                if s < self.range_end && s + len > self.range_start {
                    self.next_seq += 1;
                    pushes.push(Pending {
                        seq: self.next_seq,
                        cid,
                        start: s,
                        expected: Some(len),
                        depth: p.depth + 1,
                    });
                }
            }
            self.stack.extend(pushes.into_iter().rev());
            let from = self.range_start.max(p.start);
            let to = self.range_end.min(p.start + inline.len() as u64);
            if from < to {
                return Ok(Some(
                    inline.slice((from - p.start) as usize..(to - p.start) as usize),
                ));
            }
        }
        Ok(None)
    }
}

/// Streams the bytes of the file `cid` within `range`, block by block, in order.
///
/// Every block is verified before its bytes are yielded. The next few blocks are fetched and
/// verified concurrently (on every core); memory use is that read-ahead (a few blocks per
/// level of the DAG) plus one pending entry per child of the nodes on the current path.
///
/// # Errors
///
/// Items are [`ExportError`]s for a missing or corrupt block, sizes that do not add up, a
/// non-file node, or an offset past the end; the stream ends after the first error.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use futures::TryStreamExt;
/// use streamspace_shard::{export::{cat, ByteRange}, import::ImportOptions, store::{add_reader, MemoryStore}};
/// let store = MemoryStore::new();
/// let root = add_reader(Some(&store), &b"hello world\n"[..], ImportOptions::default()).await?;
/// let part: Vec<bytes::Bytes> = cat(&store, root.cid, ByteRange::new(6, Some(5))).try_collect().await?;
/// assert_eq!(part.concat(), b"world");
/// # Ok(()) }
/// ```
pub fn cat<S: BlockStore>(
    store: &S,
    cid: Cid,
    range: ByteRange,
) -> impl Stream<Item = Result<Bytes, ExportError>> + '_ {
    let state = CatState {
        store,
        inflight: FuturesUnordered::new(),
        ready: HashMap::new(),
        requested: HashSet::new(),
        next_seq: 0,
        window: read_ahead(),
        stack: vec![Pending {
            seq: 0,
            cid,
            start: 0,
            expected: None,
            depth: 0,
        }],
        range_start: range.offset,
        range_end: range.end(),
        first: true,
        failed: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        if st.failed {
            return None;
        }
        match st.step().await {
            Ok(Some(b)) => Some((Ok(b), st)),
            Ok(None) => None,
            Err(e) => {
                st.failed = true;
                Some((Err(e), st))
            }
        }
    })
}
