//! Reading DAGs back: fetching verified blocks, resolving paths, walking every block.

use std::collections::HashSet;

use bytes::Bytes;
use cid::Cid;
use futures::Stream;

use crate::block::{BlockError, DAG_PB, RAW, verify};
use crate::import::hamt;
use crate::pb::{DataType, PbError, PbNode, UnixFsData};
use crate::store::{BlockStore, StoreError};

/// Deepest DAG the readers follow; kubo's DAGs for a 1 PiB file are 5 levels deep.
pub const MAX_DEPTH: usize = 64;

/// Reading a DAG failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// A block is not in the store (or not reachable on the network).
    #[error("block {0} not found")]
    MissingBlock(Cid),
    /// A block failed verification against its CID.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// A block is not valid dag-pb or UnixFS.
    #[error("block {cid}: {source}")]
    Decode {
        /// The block.
        cid: Cid,
        /// What was wrong, with the byte offset.
        source: PbError,
    },
    /// A block's codec is neither dag-pb nor raw.
    #[error("block {cid}: unsupported codec {codec:#x}")]
    UnsupportedCodec {
        /// The block.
        cid: Cid,
        /// Its codec.
        codec: u64,
    },
    /// A node's sizes disagree with its children (a lying `blocksizes` or `filesize`).
    #[error("block {cid}: {what}: expected {expected} bytes, found {actual}")]
    SizeMismatch {
        /// The block.
        cid: Cid,
        /// Which size.
        what: &'static str,
        /// Size claimed by the parent or the node.
        expected: u64,
        /// Size found.
        actual: u64,
    },
    /// A node of an unexpected type (e.g. `cat` of a directory).
    #[error("block {cid}: expected {expected}, found UnixFS {found:?}")]
    WrongType {
        /// The block.
        cid: Cid,
        /// What was expected.
        expected: &'static str,
        /// The UnixFS type found.
        found: DataType,
    },
    /// A path segment that does not exist.
    #[error("no entry {segment:?} in directory {dir}")]
    NotFound {
        /// The directory.
        dir: Cid,
        /// The missing name.
        segment: String,
    },
    /// A HAMT shard whose fanout or hash type this reader does not support.
    #[error("block {cid}: unsupported HAMT (hash {hash_type:?}, fanout {fanout:?})")]
    BadHamt {
        /// The shard.
        cid: Cid,
        /// Its hash type.
        hash_type: Option<u64>,
        /// Its fanout.
        fanout: Option<u64>,
    },
    /// A range starting past the end of the file.
    #[error("offset {offset} is past the end of the {size}-byte file")]
    OffsetPastEnd {
        /// Requested offset.
        offset: u64,
        /// File size.
        size: u64,
    },
    /// The DAG is deeper than [`MAX_DEPTH`].
    #[error("DAG deeper than {MAX_DEPTH} levels at {0}")]
    TooDeep(Cid),
    /// A directory entry whose name is not a single path segment (empty, `.`, `..`, or
    /// holding `/` or NUL): refused rather than let it climb out of a tree it is written to.
    #[error("directory {dir}: entry name {name:?} is not a single path segment")]
    BadName {
        /// The directory.
        dir: Cid,
        /// The name.
        name: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The CIDs linked from a block (none for raw blocks).
///
/// # Errors
///
/// [`PbError`] for a malformed dag-pb block.
pub fn links_of(cid: &Cid, data: Bytes) -> Result<Vec<Cid>, PbError> {
    if cid.codec() == DAG_PB {
        Ok(PbNode::decode(data)?
            .links
            .into_iter()
            .map(|l| l.cid)
            .collect())
    } else {
        Ok(Vec::new())
    }
}

/// Fetches a block from `store` and verifies it against its CID.
///
/// # Errors
///
/// [`ExportError::MissingBlock`], [`ExportError::Block`] for a mismatch, or the store's error.
pub async fn fetch<S: BlockStore>(store: &S, cid: &Cid) -> Result<Bytes, ExportError> {
    let data = store
        .get(cid)
        .await?
        .ok_or(ExportError::MissingBlock(*cid))?;
    verify(cid, &data)?;
    Ok(data)
}

/// One entry of a UnixFS directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's name: one path segment.
    pub name: String,
    /// The entry's root.
    pub cid: Cid,
}

/// What a UnixFS node is, read from its root block alone.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Entity {
    /// A file (a raw block, or a UnixFS file or raw node).
    File {
        /// Its size in bytes, as the root declares it.
        size: u64,
        /// Its UnixFS mode, when the root records one.
        mode: Option<u32>,
        /// Its modification time in seconds since the epoch, when recorded.
        mtime: Option<i64>,
    },
    /// A directory, flat or HAMT-sharded.
    Directory {
        /// Its UnixFS mode, when recorded.
        mode: Option<u32>,
        /// Its modification time, when recorded.
        mtime: Option<i64>,
    },
    /// A symbolic link.
    Symlink {
        /// Where it points (not resolved: UnixFS stores the text).
        target: String,
    },
}

/// Reads what `cid` is from its root block (fetched and verified).
///
/// # Errors
///
/// [`ExportError::UnsupportedCodec`], [`ExportError::WrongType`] for a metadata node or a
/// symlink whose target is not UTF-8, or any fetch or decode error.
pub async fn entity<S: BlockStore>(store: &S, cid: &Cid) -> Result<Entity, ExportError> {
    match cid.codec() {
        RAW => {
            let data = fetch(store, cid).await?;
            Ok(Entity::File {
                size: data.len() as u64,
                mode: None,
                mtime: None,
            })
        }
        DAG_PB => {
            let node = decode_node(cid, fetch(store, cid).await?)?;
            let mtime = node.fs.mtime.map(|(secs, _)| secs);
            match node.fs.kind {
                DataType::File | DataType::Raw => Ok(Entity::File {
                    size: node
                        .fs
                        .filesize
                        .unwrap_or_else(|| node.fs.data.as_ref().map_or(0, |d| d.len() as u64)),
                    mode: node.fs.mode,
                    mtime,
                }),
                DataType::Directory | DataType::HamtShard => Ok(Entity::Directory {
                    mode: node.fs.mode,
                    mtime,
                }),
                DataType::Symlink => {
                    let target = node.fs.data.as_deref().unwrap_or_default();
                    match std::str::from_utf8(target) {
                        Ok(t) => Ok(Entity::Symlink {
                            target: t.to_owned(),
                        }),
                        Err(_) => Err(ExportError::WrongType {
                            cid: *cid,
                            expected: "a symlink with a UTF-8 target",
                            found: DataType::Symlink,
                        }),
                    }
                }
                found => Err(ExportError::WrongType {
                    cid: *cid,
                    expected: "file, directory or symlink",
                    found,
                }),
            }
        }
        codec => Err(ExportError::UnsupportedCodec { cid: *cid, codec }),
    }
}

/// The entries of the directory `dir`, flat or HAMT-sharded, in the directory's own order
/// (for a HAMT, shard by shard depth-first).
///
/// Every name is checked to be one path segment ([`ExportError::BadName`] otherwise), so a
/// hostile directory cannot make a writer of the tree step outside it.
///
/// # Errors
///
/// [`ExportError::WrongType`] when `dir` is not a directory, [`ExportError::BadName`],
/// or any error of [`hamt_shards`] and [`fetch`].
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use streamspace_shard::dag::entries;
/// use streamspace_shard::import::{build_directory, DirEntry, ImportOptions};
/// use streamspace_shard::store::{add_reader, BlockStore, MemoryStore};
///
/// let store = MemoryStore::new();
/// let file = add_reader(Some(&store), &b"a"[..], ImportOptions::default()).await?;
/// let mut blocks = Vec::new();
/// let entry = DirEntry { name: "a.txt".into(), root: file };
/// let dir = build_directory(vec![entry], &ImportOptions::default(), |b| {
///     blocks.push(b);
///     Ok(())
/// })?;
/// store.put_many(blocks).await?;
/// let names: Vec<String> = entries(&store, &dir.cid).await?.into_iter().map(|e| e.name).collect();
/// assert_eq!(names, ["a.txt"]);
/// # Ok(()) }
/// ```
pub async fn entries<S: BlockStore>(store: &S, dir: &Cid) -> Result<Vec<Entry>, ExportError> {
    let check = |name: String, cid: Cid| -> Result<Entry, ExportError> {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(ExportError::BadName { dir: *dir, name });
        }
        Ok(Entry { name, cid })
    };
    let node = dir_node(store, dir).await?;
    match node.fs.kind {
        DataType::Directory => node
            .pb
            .links
            .into_iter()
            .map(|l| check(l.name.unwrap_or_default(), l.cid))
            .collect(),
        DataType::HamtShard => {
            let mut out = Vec::new();
            for shard in hamt_shards(store, dir).await? {
                let node = decode_node(&shard, fetch(store, &shard).await?)?;
                let Some(fanout) = node.fs.fanout else {
                    continue;
                };
                let width = hamt::prefix_width(fanout as usize);
                for l in node.pb.links {
                    let name = l.name.unwrap_or_default();
                    if name.len() > width && name.is_char_boundary(width) {
                        out.push(check(name[width..].to_owned(), l.cid)?);
                    } else if name.len() != width {
                        return Err(ExportError::BadName { dir: *dir, name });
                    }
                }
            }
            Ok(out)
        }
        found => Err(ExportError::WrongType {
            cid: *dir,
            expected: "directory",
            found,
        }),
    }
}

/// A decoded UnixFS node.
pub(crate) struct Node {
    pub(crate) pb: PbNode,
    pub(crate) fs: UnixFsData,
}

pub(crate) fn decode_node(cid: &Cid, data: Bytes) -> Result<Node, ExportError> {
    let err = |source| ExportError::Decode { cid: *cid, source };
    let pb = PbNode::decode(data).map_err(err)?;
    let fs =
        UnixFsData::decode(pb.data.as_ref().ok_or(PbError::NoData).map_err(err)?).map_err(err)?;
    Ok(Node { pb, fs })
}

/// Resolves `path` (segments separated by `/`, empty segments ignored) below `root`, through
/// flat and HAMT-sharded directories.
///
/// # Errors
///
/// [`ExportError::NotFound`] for a missing entry, [`ExportError::WrongType`] when a segment
/// is not a directory, or any fetch or decode error.
pub async fn resolve<S: BlockStore>(store: &S, root: &Cid, path: &str) -> Result<Cid, ExportError> {
    let mut cur = *root;
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        cur = lookup(store, &cur, segment).await?;
    }
    Ok(cur)
}

/// The dag-pb node of directory (or HAMT shard) `dir`, read from `store`.
async fn dir_node<S: BlockStore>(store: &S, dir: &Cid) -> Result<Node, ExportError> {
    if dir.codec() != DAG_PB {
        return Err(ExportError::UnsupportedCodec {
            cid: *dir,
            codec: dir.codec(),
        });
    }
    decode_node(dir, fetch(store, dir).await?)
}

async fn lookup<S: BlockStore>(store: &S, dir: &Cid, name: &str) -> Result<Cid, ExportError> {
    let not_found = || ExportError::NotFound {
        dir: *dir,
        segment: name.to_owned(),
    };
    let node = dir_node(store, dir).await?;
    match node.fs.kind {
        DataType::Directory => node
            .pb
            .links
            .iter()
            .find(|l| l.name.as_deref() == Some(name))
            .map(|l| l.cid)
            .ok_or_else(not_found),
        DataType::HamtShard => {
            let hash = hamt::hash_name(name.as_bytes());
            let mut shard_cid = *dir;
            let mut shard = node;
            for depth in 0..MAX_DEPTH {
                let fanout = match (shard.fs.hash_type, shard.fs.fanout) {
                    (Some(hamt::MURMUR3_X64_64), Some(f))
                        if f.is_power_of_two() && (2..=1024).contains(&f) =>
                    {
                        f as usize
                    }
                    (h, f) => {
                        return Err(ExportError::BadHamt {
                            cid: shard_cid,
                            hash_type: h,
                            fanout: f,
                        });
                    }
                };
                let slot =
                    hamt::slot(&hash, depth, fanout.trailing_zeros()).ok_or_else(not_found)?;
                let width = hamt::prefix_width(fanout);
                let prefix = format!("{slot:0width$X}");
                let mut next = None;
                for l in &shard.pb.links {
                    let Some(n) = l.name.as_deref() else { continue };
                    if n.get(..width) != Some(prefix.as_str()) {
                        continue;
                    }
                    if n.len() == width {
                        next = Some(l.cid);
                        break;
                    }
                    if &n[width..] == name {
                        return Ok(l.cid);
                    }
                }
                let child = next.ok_or_else(not_found)?;
                let data = fetch(store, &child).await?;
                shard = decode_node(&child, data)?;
                shard_cid = child;
                if shard.fs.kind != DataType::HamtShard {
                    return Err(ExportError::WrongType {
                        cid: child,
                        expected: "HAMT shard",
                        found: shard.fs.kind,
                    });
                }
            }
            Err(ExportError::TooDeep(shard_cid))
        }
        found => Err(ExportError::WrongType {
            cid: *dir,
            expected: "directory",
            found,
        }),
    }
}

/// The blocks of a HAMT-sharded directory's own shard nodes, without its entries, depth-first
/// from `root` and each once: what a gateway's `dag-scope=entity` CAR of a sharded directory
/// carries. A directory that is not sharded answers `[root]`.
///
/// At most [`MAX_DEPTH`] levels of sub-shards are followed, and a shard linked twice is read
/// once, so a hostile DAG costs at most one read per distinct block.
///
/// # Errors
///
/// [`ExportError::TooDeep`] beyond [`MAX_DEPTH`] levels, [`ExportError::BadHamt`] for a shard
/// with an unsupported hash or fanout, or any fetch, verification or decode error.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use streamspace_shard::dag::hamt_shards;
/// use streamspace_shard::{import::ImportOptions, store::{add_reader, MemoryStore}};
///
/// let store = MemoryStore::new();
/// let file = add_reader(Some(&store), &b"hello"[..], ImportOptions::default()).await?;
/// // A file is no sharded directory: its root is the only block.
/// assert_eq!(hamt_shards(&store, &file.cid).await?, vec![file.cid]);
/// # Ok(()) }
/// ```
pub async fn hamt_shards<S: BlockStore>(store: &S, root: &Cid) -> Result<Vec<Cid>, ExportError> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![(*root, 0usize)];
    while let Some((cid, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(ExportError::TooDeep(cid));
        }
        if !seen.insert(cid) {
            continue;
        }
        out.push(cid);
        if cid.codec() != DAG_PB {
            continue;
        }
        let node = decode_node(&cid, fetch(store, &cid).await?)?;
        if node.fs.kind != DataType::HamtShard {
            continue;
        }
        let fanout = match (node.fs.hash_type, node.fs.fanout) {
            (Some(hamt::MURMUR3_X64_64), Some(f))
                if f.is_power_of_two() && (2..=1024).contains(&f) =>
            {
                f as usize
            }
            (h, f) => {
                return Err(ExportError::BadHamt {
                    cid,
                    hash_type: h,
                    fanout: f,
                });
            }
        };
        // Links to sub-shards are named by the hex prefix alone; entries by the prefix and
        // their name.
        let width = hamt::prefix_width(fanout);
        stack.extend(
            node.pb
                .links
                .iter()
                .rev()
                .filter(|l| l.name.as_ref().is_some_and(|n| n.len() == width))
                .map(|l| (l.cid, depth + 1)),
        );
    }
    Ok(out)
}

/// Every block of the DAG below `root`, depth-first from the root, each once, verified.
///
/// This is the block order of `ipfs dag export` and of [`crate::car`] exports.
///
/// # Errors
///
/// Items are [`ExportError`] for a missing, corrupt or undecodable block; the stream ends after
/// the first error.
pub fn walk<S: BlockStore>(
    store: &S,
    root: Cid,
) -> impl Stream<Item = Result<(Cid, Bytes), ExportError>> + '_ {
    struct St {
        stack: Vec<(Cid, usize)>,
        seen: HashSet<Cid>,
        failed: bool,
    }
    let st = St {
        stack: vec![(root, 0)],
        seen: HashSet::new(),
        failed: false,
    };
    futures::stream::unfold(st, move |mut st| async move {
        if st.failed {
            return None;
        }
        loop {
            let (cid, depth) = st.stack.pop()?;
            if !st.seen.insert(cid) {
                continue;
            }
            let result = async {
                if depth > MAX_DEPTH {
                    return Err(ExportError::TooDeep(cid));
                }
                if cid.codec() != DAG_PB && cid.codec() != RAW {
                    return Err(ExportError::UnsupportedCodec {
                        cid,
                        codec: cid.codec(),
                    });
                }
                let data = fetch(store, &cid).await?;
                let links = links_of(&cid, data.clone())
                    .map_err(|source| ExportError::Decode { cid, source })?;
                Ok((data, links))
            }
            .await;
            return match result {
                Ok((data, links)) => {
                    st.stack
                        .extend(links.into_iter().rev().map(|c| (c, depth + 1)));
                    Some((Ok((cid, data)), st))
                }
                Err(e) => {
                    st.failed = true;
                    Some((Err(e), st))
                }
            };
        }
    })
}
