//! Blocks: bytes together with the CID that names them.

use bytes::Bytes;
use cid::{Cid, Version};
use multihash::Multihash;
use sha2::{Digest, Sha256};

/// Multicodec of dag-pb nodes.
pub const DAG_PB: u64 = 0x70;
/// Multicodec of raw leaves.
pub const RAW: u64 = 0x55;
/// Multihash code of sha2-256.
pub const SHA2_256: u64 = 0x12;
/// Multihash code of the identity "hash" (inline data).
pub const IDENTITY: u64 = 0x00;
/// Largest block this crate accepts from a store, a CAR file or a peer (2 MiB, as Bitswap).
pub const MAX_BLOCK_SIZE: usize = 2 * 1024 * 1024;

/// A block whose bytes are known to hash to its CID.
///
/// Construct one with [`Block::new`] (verifies) or [`Block::encode`] (hashes).
#[derive(Clone, PartialEq, Eq)]
pub struct Block {
    cid: Cid,
    data: Bytes,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("cid", &self.cid.to_string())
            .field("len", &self.data.len())
            .finish()
    }
}

/// A block failed verification against its CID.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlockError {
    /// The bytes do not hash to the CID.
    #[error("block bytes do not match {cid}")]
    HashMismatch {
        /// The CID the bytes were claimed to have.
        cid: Cid,
    },
    /// The CID uses a hash function this crate does not verify.
    #[error("{cid} uses unsupported multihash code {code:#x}")]
    UnsupportedHash {
        /// The CID.
        cid: Cid,
        /// Its multihash code.
        code: u64,
    },
    /// The block is larger than [`MAX_BLOCK_SIZE`].
    #[error("block {cid} is {len} bytes, over the {MAX_BLOCK_SIZE}-byte limit")]
    TooLarge {
        /// The CID.
        cid: Cid,
        /// Its length.
        len: usize,
    },
}

/// sha2-256 of `data` as a multihash.
pub fn sha256_multihash(data: &[u8]) -> Multihash<64> {
    let digest = Sha256::digest(data);
    // A 32-byte digest always fits in 64 bytes.
    Multihash::wrap(SHA2_256, &digest).unwrap_or_default()
}

/// The CID of `data` under `codec` and `version` with sha2-256.
///
/// CIDv0 exists only for dag-pb; any other codec is given a CIDv1.
pub fn cid_of(version: Version, codec: u64, data: &[u8]) -> Cid {
    let mh = sha256_multihash(data);
    if version == Version::V0 && codec == DAG_PB {
        Cid::new_v0(mh).unwrap_or_else(|_| Cid::new_v1(codec, mh))
    } else {
        Cid::new_v1(codec, mh)
    }
}

/// Checks that `data` hashes to `cid`.
///
/// # Errors
///
/// [`BlockError`] when it does not, when the hash function is not supported, or when the block
/// is larger than [`MAX_BLOCK_SIZE`].
pub fn verify(cid: &Cid, data: &[u8]) -> Result<(), BlockError> {
    if data.len() > MAX_BLOCK_SIZE {
        return Err(BlockError::TooLarge {
            cid: *cid,
            len: data.len(),
        });
    }
    let mh = cid.hash();
    match mh.code() {
        SHA2_256 => {
            if mh.digest() == Sha256::digest(data).as_slice() {
                Ok(())
            } else {
                Err(BlockError::HashMismatch { cid: *cid })
            }
        }
        IDENTITY => {
            if mh.digest() == data {
                Ok(())
            } else {
                Err(BlockError::HashMismatch { cid: *cid })
            }
        }
        code => Err(BlockError::UnsupportedHash { cid: *cid, code }),
    }
}

impl Block {
    /// Wraps `data` as the block named `cid` after checking the hash.
    ///
    /// # Errors
    ///
    /// [`BlockError`] when `data` is not the block `cid` names.
    ///
    /// # Examples
    ///
    /// ```
    /// use streamspace_shard::block::{Block, RAW};
    /// let b = Block::encode(cid::Version::V1, RAW, bytes::Bytes::from_static(b"hi"));
    /// assert!(Block::new(*b.cid(), bytes::Bytes::from_static(b"hi")).is_ok());
    /// assert!(Block::new(*b.cid(), bytes::Bytes::from_static(b"ho")).is_err());
    /// ```
    pub fn new(cid: Cid, data: Bytes) -> Result<Self, BlockError> {
        verify(&cid, &data)?;
        Ok(Self { cid, data })
    }

    /// Hashes `data` into a block with sha2-256.
    pub fn encode(version: Version, codec: u64, data: Bytes) -> Self {
        Self {
            cid: cid_of(version, codec, &data),
            data,
        }
    }

    /// Builds a block from a CID the caller computed from `data` itself.
    pub(crate) fn from_parts_unchecked(cid: Cid, data: Bytes) -> Self {
        debug_assert!(verify(&cid, &data).is_ok());
        Self { cid, data }
    }

    /// The block's CID.
    pub fn cid(&self) -> &Cid {
        &self.cid
    }

    /// The block's bytes.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Splits into CID and bytes.
    pub fn into_parts(self) -> (Cid, Bytes) {
        (self.cid, self.data)
    }
}
