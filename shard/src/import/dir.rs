//! Directory import: flat dag-pb directories, HAMT-sharded ones above the size threshold.

use std::fs;
use std::path::Path;

use bytes::Bytes;

use super::{ImportError, ImportOptions, Imported, ShardSplit, hamt, import_file};
use crate::block::{Block, DAG_PB, cid_of};
use crate::pb::{DataType, PbLink, PbNode, UnixFsData};

/// One named entry of a directory being built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Entry name (no `/`).
    pub name: String,
    /// The entry's imported root.
    pub root: Imported,
}

/// kubo's size estimate of a directory: the sum of entry name lengths and CID byte lengths.
pub(super) fn estimated_size(entries: &[DirEntry]) -> usize {
    entries
        .iter()
        .map(|e| e.name.len() + e.root.cid.encoded_len())
        .sum()
}

/// Builds a directory from its entries: a flat dag-pb directory, or a HAMT-sharded one when
/// its [estimated size](crate::import::DEFAULT_HAMT_THRESHOLD) exceeds the threshold.
///
/// Blocks go to `sink`, children before parents.
///
/// # Errors
///
/// [`ImportError::DuplicateName`] or [`ImportError::BadName`] for bad entry names, or the sink's
/// error.
///
/// # Examples
///
/// ```
/// use streamspace_shard::import::{build_directory, ImportOptions};
/// let root = build_directory(Vec::new(), &ImportOptions::default(), |_| Ok(()))?;
/// assert_eq!(root.cid.to_string(), "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn");
/// # Ok::<(), streamspace_shard::import::ImportError>(())
/// ```
pub fn build_directory<F>(
    mut entries: Vec<DirEntry>,
    opts: &ImportOptions,
    mut sink: F,
) -> Result<Imported, ImportError>
where
    F: FnMut(Block) -> Result<(), ImportError>,
{
    opts.validate()?;
    entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    for pair in entries.windows(2) {
        if pair[0].name == pair[1].name {
            return Err(ImportError::DuplicateName(pair[0].name.clone()));
        }
    }
    for e in &entries {
        if e.name.is_empty() || e.name.contains('/') || e.name == "." || e.name == ".." {
            return Err(ImportError::BadName {
                path: e.name.clone().into(),
            });
        }
    }
    if opts.hamt_split == ShardSplit::LinksBytes && estimated_size(&entries) > opts.hamt_threshold {
        return hamt::build(entries, opts, &mut sink);
    }
    let tsize_children: u64 = entries.iter().map(|e| e.root.tsize).sum();
    let node = PbNode {
        links: entries
            .iter()
            .map(|e| PbLink::new(e.root.cid, e.name.clone(), e.root.tsize))
            .collect(),
        data: Some(UnixFsData::new(DataType::Directory).encode()),
    };
    let bytes = node.encode();
    if opts.hamt_split == ShardSplit::BlockBytes && bytes.len() > opts.hamt_threshold {
        return hamt::build(entries, opts, &mut sink);
    }
    commit_encoded(bytes, tsize_children, opts, &mut sink)
}

/// Encodes, hashes and emits a dag-pb node; returns its root info.
pub(super) fn commit_node(
    node: PbNode,
    tsize_children: u64,
    opts: &ImportOptions,
    sink: &mut dyn FnMut(Block) -> Result<(), ImportError>,
) -> Result<Imported, ImportError> {
    commit_encoded(node.encode(), tsize_children, opts, sink)
}

/// Hashes and emits an encoded dag-pb node; returns its root info.
fn commit_encoded(
    bytes: bytes::Bytes,
    tsize_children: u64,
    opts: &ImportOptions,
    sink: &mut dyn FnMut(Block) -> Result<(), ImportError>,
) -> Result<Imported, ImportError> {
    let cid = cid_of(opts.cid_version, DAG_PB, &bytes);
    let tsize = bytes.len() as u64 + tsize_children;
    sink(Block::from_parts_unchecked(cid, bytes))?;
    Ok(Imported {
        cid,
        size: 0,
        tsize,
    })
}

fn symlink(
    target: &Path,
    opts: &ImportOptions,
    sink: &mut dyn FnMut(Block) -> Result<(), ImportError>,
) -> Result<Imported, ImportError> {
    let mut data = UnixFsData::new(DataType::Symlink);
    data.data = Some(Bytes::from(target.to_string_lossy().into_owned()));
    let node = PbNode {
        links: Vec::new(),
        data: Some(data.encode()),
    };
    commit_node(node, 0, opts, sink)
}

/// Imports a file, a symlink, or a directory tree (`ipfs add -r`) from the filesystem.
///
/// Entries are visited in name order; hidden entries (names starting with `.`) below the top
/// are skipped unless `hidden` is set, as kubo does. `on_entry` is called for every entry added,
/// with its path relative to `path`'s parent, after its children.
///
/// # Errors
///
/// [`ImportError`] for unreadable paths, bad names, read errors or sink errors.
pub fn import_path<F, G>(
    path: &Path,
    opts: &ImportOptions,
    hidden: bool,
    mut sink: F,
    mut on_entry: G,
) -> Result<Imported, ImportError>
where
    F: FnMut(Block) -> Result<(), ImportError>,
    G: FnMut(&Path, &Imported),
{
    opts.validate()?;
    let base = path.parent().unwrap_or(Path::new(""));
    walk(path, base, opts, hidden, &mut sink, &mut on_entry)
}

fn walk(
    path: &Path,
    base: &Path,
    opts: &ImportOptions,
    hidden: bool,
    sink: &mut dyn FnMut(Block) -> Result<(), ImportError>,
    on_entry: &mut dyn FnMut(&Path, &Imported),
) -> Result<Imported, ImportError> {
    let path_err = |source| ImportError::Path {
        path: path.to_owned(),
        source,
    };
    let meta = fs::symlink_metadata(path).map_err(path_err)?;
    let ft = meta.file_type();
    let imported = if ft.is_symlink() {
        let target = fs::read_link(path).map_err(path_err)?;
        symlink(&target, opts, sink)?
    } else if ft.is_file() {
        let file = fs::File::open(path).map_err(path_err)?;
        import_file(
            std::io::BufReader::with_capacity(1 << 20, file),
            opts,
            &mut *sink,
        )?
    } else if ft.is_dir() {
        let mut names = Vec::new();
        for entry in fs::read_dir(path).map_err(path_err)? {
            let entry = entry.map_err(path_err)?;
            let name = entry.file_name();
            let name = name
                .to_str()
                .ok_or_else(|| ImportError::BadName { path: entry.path() })?;
            if !hidden && name.starts_with('.') {
                continue;
            }
            names.push(name.to_owned());
        }
        names.sort();
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            let root = walk(&path.join(&name), base, opts, hidden, sink, on_entry)?;
            entries.push(DirEntry { name, root });
        }
        build_directory(entries, opts, sink)?
    } else {
        return Err(ImportError::Unsupported {
            path: path.to_owned(),
        });
    };
    let rel = path.strip_prefix(base).unwrap_or(path);
    on_entry(rel, &imported);
    Ok(imported)
}
