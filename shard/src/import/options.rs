use cid::Version;

use super::chunker::Chunker;

/// How file leaves are arranged into a DAG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Layout {
    /// kubo's default: leaves grouped `max_links` at a time, level by level.
    #[default]
    Balanced,
    /// kubo's `--trickle`: good for sequential reads (streaming), layer repeat 4.
    Trickle,
}

/// How a directory's size is measured against the HAMT threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ShardSplit {
    /// kubo's estimate: the sum of entry name lengths and CID byte lengths.
    #[default]
    LinksBytes,
    /// The exact encoded size of the flat directory block (IPIP-499's 2025 profile).
    BlockBytes,
}

/// The import profiles of IPIP-499.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Profile {
    /// The 2015 defaults of `ipfs add`: CIDv0, 256 KiB chunks, 174 links, dag-pb leaves.
    UnixfsV0_2015,
    /// The 2025 defaults: CIDv1, raw leaves, 1 MiB chunks, 1,024 links.
    UnixfsV1_2025,
}

impl std::str::FromStr for Profile {
    type Err = OptionsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "unixfs-v0-2015" | "legacy-cid-v0" => Ok(Self::UnixfsV0_2015),
            "unixfs-v1-2025" | "test-cid-v1" => Ok(Self::UnixfsV1_2025),
            other => Err(OptionsError::UnknownProfile(other.to_owned())),
        }
    }
}

/// Import options invalid on their face.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OptionsError {
    /// A chunk size outside 1 byte..=1 MiB.
    #[error("chunk size {0} is outside 1..={MAX_CHUNK_SIZE}")]
    ChunkSize(usize),
    /// Fewer than two or more than 8,192 links per node.
    #[error("max links {0} is outside 2..=8192")]
    MaxLinks(usize),
    /// A chunker string kubo would not accept, or Rabin bounds out of order.
    #[error("unsupported chunker {chunker:?}: {why}")]
    Chunker {
        /// The chunker as given.
        chunker: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A profile name not in IPIP-499.
    #[error("unknown import profile {0:?}: expected unixfs-v0-2015 or unixfs-v1-2025")]
    UnknownProfile(String),
    /// A CID version other than 0 or 1.
    #[error("CID version {0} is not 0 or 1")]
    CidVersion(u64),
    /// A HAMT fanout that is not a power of two multiple of 8, up to 1,024.
    #[error("HAMT fanout {0} must be a power of two between 8 and 1024")]
    Fanout(usize),
}

/// The largest chunk the importer makes (1 MiB, as kubo).
pub const MAX_CHUNK_SIZE: usize = 1024 * 1024;
/// kubo's default chunk size.
pub const DEFAULT_CHUNK_SIZE: usize = 262_144;
/// kubo's default maximum links per file node.
pub const DEFAULT_MAX_LINKS: usize = 174;
/// Directory size estimate (sum of entry name and CID lengths) above which a directory is
/// HAMT-sharded, as kubo and the JS importer do.
pub const DEFAULT_HAMT_THRESHOLD: usize = 262_144;
/// kubo's HAMT fanout.
pub const DEFAULT_HAMT_FANOUT: usize = 256;

/// Options of an import, with kubo's `ipfs add` defaults.
///
/// # Examples
///
/// ```
/// use streamspace_shard::import::{Chunker, ImportOptions, Profile};
/// let kubo = ImportOptions::default();
/// assert_eq!(kubo.chunker, Chunker::Size(262_144));
/// let v1 = ImportOptions::default().with_cid_version(1).unwrap();
/// assert!(v1.raw_leaves, "CIDv1 implies raw leaves");
/// let p = ImportOptions::profile(Profile::UnixfsV1_2025);
/// assert_eq!((p.chunker, p.max_links), (Chunker::Size(1 << 20), 1024));
/// let cdc = ImportOptions::default().with_chunker("buzhash").unwrap();
/// assert_eq!(cdc.chunker, Chunker::Buzhash);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportOptions {
    /// CID version of dag-pb nodes.
    pub cid_version: Version,
    /// Store leaves as raw blocks instead of UnixFS nodes.
    pub raw_leaves: bool,
    /// How files are cut into leaves.
    pub chunker: Chunker,
    /// Maximum links per file node.
    pub max_links: usize,
    /// Tree layout of files.
    pub layout: Layout,
    /// Directory size estimate above which directories are HAMT-sharded.
    pub hamt_threshold: usize,
    /// Fanout of HAMT shards.
    pub hamt_fanout: usize,
    /// How directory size is measured against `hamt_threshold`.
    pub hamt_split: ShardSplit,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self::profile(Profile::UnixfsV0_2015)
    }
}

impl ImportOptions {
    /// The options of an IPIP-499 profile.
    pub fn profile(profile: Profile) -> Self {
        match profile {
            Profile::UnixfsV0_2015 => Self {
                cid_version: Version::V0,
                raw_leaves: false,
                chunker: Chunker::Size(DEFAULT_CHUNK_SIZE),
                max_links: DEFAULT_MAX_LINKS,
                layout: Layout::Balanced,
                hamt_threshold: DEFAULT_HAMT_THRESHOLD,
                hamt_fanout: DEFAULT_HAMT_FANOUT,
                hamt_split: ShardSplit::LinksBytes,
            },
            Profile::UnixfsV1_2025 => Self {
                cid_version: Version::V1,
                raw_leaves: true,
                chunker: Chunker::Size(MAX_CHUNK_SIZE),
                max_links: 1024,
                layout: Layout::Balanced,
                hamt_threshold: DEFAULT_HAMT_THRESHOLD,
                hamt_fanout: DEFAULT_HAMT_FANOUT,
                hamt_split: ShardSplit::BlockBytes,
            },
        }
    }

    /// Sets the CID version; version 1 implies raw leaves, as in kubo.
    ///
    /// # Errors
    ///
    /// [`OptionsError::CidVersion`] for anything but 0 or 1.
    pub fn with_cid_version(mut self, version: u64) -> Result<Self, OptionsError> {
        match version {
            0 => self.cid_version = Version::V0,
            1 => {
                self.cid_version = Version::V1;
                self.raw_leaves = true;
            }
            other => return Err(OptionsError::CidVersion(other)),
        }
        Ok(self)
    }

    /// Sets the chunker from kubo's syntax: `size-N`, `rabin`, `rabin-AVG`,
    /// `rabin-MIN-AVG-MAX` or `buzhash` (see [`Chunker`]).
    ///
    /// # Errors
    ///
    /// [`OptionsError`] for another syntax or parameters out of range.
    pub fn with_chunker(mut self, chunker: &str) -> Result<Self, OptionsError> {
        self.chunker = chunker.parse()?;
        self.validate()?;
        Ok(self)
    }

    /// Checks every option is in range.
    ///
    /// # Errors
    ///
    /// The first [`OptionsError`] found.
    pub fn validate(&self) -> Result<(), OptionsError> {
        self.chunker.validate()?;
        if !(2..=8192).contains(&self.max_links) {
            return Err(OptionsError::MaxLinks(self.max_links));
        }
        if !self.hamt_fanout.is_power_of_two() || !(8..=1024).contains(&self.hamt_fanout) {
            return Err(OptionsError::Fanout(self.hamt_fanout));
        }
        Ok(())
    }
}
