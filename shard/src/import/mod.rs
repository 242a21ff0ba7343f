//! The importer: files and directories into UnixFS DAGs with the CIDs kubo's `ipfs add` gives.
//!
//! The importer is synchronous and pull-driven: it reads from any [`std::io::Read`], hashes a
//! batch of leaves in parallel, and hands every finished block to a sink closure, children
//! before parents. Async callers run it on a blocking thread and forward blocks through a
//! bounded channel; see [`crate::store::add_reader`].

mod chunker;
mod dir;
mod file;
pub(crate) mod hamt;
mod options;

pub use chunker::{Chunker, Rabin};
pub use dir::{DirEntry, build_directory, import_path};
pub(crate) use file::import_sealed;
pub use file::{Imported, import_file};
pub use options::{
    DEFAULT_CHUNK_SIZE, DEFAULT_HAMT_FANOUT, DEFAULT_HAMT_THRESHOLD, DEFAULT_MAX_LINKS,
    ImportOptions, Layout, MAX_CHUNK_SIZE, OptionsError, Profile, ShardSplit,
};

use std::path::PathBuf;

/// An import failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The options are out of range.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// Reading the input failed after `offset` bytes.
    #[error("read failed at byte {offset}: {source}")]
    Read {
        /// Bytes read successfully before the error.
        offset: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file or directory could not be opened or listed.
    #[error("{path}: {source}")]
    Path {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A directory entry name that is not UTF-8 or contains `/`.
    #[error("{path}: entry name is not valid UTF-8 or contains '/'")]
    BadName {
        /// The offending path.
        path: PathBuf,
    },
    /// Two entries of one directory share a name.
    #[error("duplicate directory entry {0:?}")]
    DuplicateName(String),
    /// The block sink refused a block (store full, channel closed, …).
    #[error("storing a block failed: {0}")]
    Sink(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The input is not a file, directory or symlink.
    #[error("{path}: not a regular file, directory or symlink")]
    Unsupported {
        /// The path.
        path: PathBuf,
    },
    /// An invariant of the importer did not hold; this is a bug.
    #[error("internal importer error: {0}")]
    Internal(&'static str),
}
