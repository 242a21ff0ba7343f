//! Keys of an encrypted live stream: one secret stream key, epoch keys derived from it, and
//! one content key per segment derived from its epoch's key.
//!
//! ```text
//! epoch key   = HKDF-SHA256(salt = "streamspace-live-v1", ikm = stream key,
//!                           info = "epoch" || len(name) as u8 || name || publisher key
//!                                  || epoch_len as u32 BE || epoch as u64 BE)        (32 bytes)
//! segment key = HKDF-Expand-SHA256(prk = epoch key,
//!                           info = "segment" || seq as u64 BE)                        (48 bytes:
//!                           the content key (32) then the item id (16))
//! ```
//!
//! A viewer given the keys of the epochs it paid for opens those epochs' segments only: an
//! epoch key derives keys for any sequence number, but a segment of another epoch was sealed
//! under another epoch key, so they do not open it. Each segment is then sealed as any item
//! ([`streamspace_shard::crypto`]), with its own item id.
//!
//! Keys travel as content key files (the shard crate's format) whose `root` is a label CID
//! ([`StreamKey::label`], [`EpochKey::label`]): a gateway's keyring holds them beside the
//! keys of on-demand items.

use cid::Cid;
use hkdf::Hkdf;
use rand::RngCore;
use sha2::{Digest, Sha256};
use streamspace_shard::crypto::ContentKey;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::manifest::StreamId;

const SALT: &[u8] = b"streamspace-live-v1";
/// The raw codec.
const RAW: u64 = 0x55;
/// The sha2-256 multihash.
const SHA2_256: u64 = 0x12;

/// A segment's sequence number is outside the epoch of the key held.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[error("segment {seq} is not in epoch {epoch} (epochs of {epoch_len} segments)")]
pub struct OutsideEpoch {
    /// The segment asked for.
    pub seq: u64,
    /// The key's epoch.
    pub epoch: u64,
    /// Segments per epoch.
    pub epoch_len: u32,
}

/// A stream's secret key (256 bits): every epoch key derives from it. Zeroized on drop;
/// `Debug` prints no key material.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct StreamKey([u8; 32]);

impl std::fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamKey(<redacted>)")
    }
}

fn label(text: &str) -> Cid {
    let digest = Sha256::digest(text.as_bytes());
    let mh = multihash::Multihash::<64>::wrap(SHA2_256, &digest).expect("32 bytes fit");
    Cid::new_v1(RAW, mh)
}

impl StreamKey {
    /// A fresh key from the operating system's generator.
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        Self(k)
    }

    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key of epoch `epoch` of `stream`, for epochs of `epoch_len` segments.
    pub fn epoch_key(&self, stream: &StreamId, epoch_len: u32, epoch: u64) -> EpochKey {
        let hk = Hkdf::<Sha256>::new(Some(SALT), &self.0);
        let mut info = Vec::with_capacity(5 + 1 + 64 + 32 + 12);
        info.extend_from_slice(b"epoch");
        info.push(stream.name().len() as u8);
        info.extend_from_slice(stream.name().as_bytes());
        info.extend_from_slice(&stream.publisher());
        info.extend_from_slice(&epoch_len.to_be_bytes());
        info.extend_from_slice(&epoch.to_be_bytes());
        let mut key = [0u8; 32];
        hk.expand(&info, &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        EpochKey {
            key,
            epoch,
            epoch_len: epoch_len.max(1),
        }
    }

    /// The content key of media segment `seq` of `stream`.
    pub fn segment_key(&self, stream: &StreamId, epoch_len: u32, seq: u64) -> ContentKey {
        let epoch = seq / u64::from(epoch_len.max(1));
        self.epoch_key(stream, epoch_len, epoch).derive(seq)
    }

    /// The label under which a keyring holds `stream`'s stream key.
    pub fn label(stream: &StreamId) -> Cid {
        label(&format!("streamspace-live-key-v1/{stream}/stream"))
    }

    /// The key as a content key (for the shard crate's key file, with
    /// [`StreamKey::label`] as its root).
    pub fn to_content_key(&self) -> ContentKey {
        ContentKey::from_parts(self.0, [0; 16])
    }

    /// The key a content key file holds (see [`StreamKey::to_content_key`]).
    pub fn from_content_key(key: &ContentKey) -> Self {
        Self(*key.key_bytes())
    }
}

/// The key of one epoch of a stream: opens that epoch's segments and no others. Zeroized on
/// drop; `Debug` prints the epoch only.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct EpochKey {
    key: [u8; 32],
    epoch: u64,
    epoch_len: u32,
}

impl std::fmt::Debug for EpochKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochKey")
            .field("epoch", &self.epoch)
            .field("epoch_len", &self.epoch_len)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl EpochKey {
    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Segments per epoch.
    pub fn epoch_len(&self) -> u32 {
        self.epoch_len
    }

    fn derive(&self, seq: u64) -> ContentKey {
        let hk = Hkdf::<Sha256>::from_prk(&self.key).expect("a 32-byte PRK");
        let mut info = [0u8; 15];
        info[..7].copy_from_slice(b"segment");
        info[7..].copy_from_slice(&seq.to_be_bytes());
        let mut okm = zeroize::Zeroizing::new([0u8; 48]);
        hk.expand(&info, okm.as_mut())
            .expect("48 bytes is a valid HKDF-SHA256 length");
        let mut key = [0u8; 32];
        let mut item = [0u8; 16];
        key.copy_from_slice(&okm[..32]);
        item.copy_from_slice(&okm[32..]);
        let k = ContentKey::from_parts(key, item);
        key.zeroize();
        k
    }

    /// The content key of media segment `seq`.
    ///
    /// # Errors
    ///
    /// [`OutsideEpoch`] when `seq` is not in this key's epoch.
    pub fn segment_key(&self, seq: u64) -> Result<ContentKey, OutsideEpoch> {
        if seq / u64::from(self.epoch_len) != self.epoch {
            return Err(OutsideEpoch {
                seq,
                epoch: self.epoch,
                epoch_len: self.epoch_len,
            });
        }
        Ok(self.derive(seq))
    }

    /// The label under which a keyring holds `stream`'s key of `epoch`.
    pub fn label(stream: &StreamId, epoch: u64) -> Cid {
        label(&format!("streamspace-live-key-v1/{stream}/epoch/{epoch}"))
    }

    /// The key as a content key (for the shard crate's key file, with [`EpochKey::label`] as
    /// its root): the item id carries the epoch (8 bytes BE) and epoch length (4 bytes BE).
    pub fn to_content_key(&self) -> ContentKey {
        let mut item = [0u8; 16];
        item[..8].copy_from_slice(&self.epoch.to_be_bytes());
        item[8..12].copy_from_slice(&self.epoch_len.to_be_bytes());
        ContentKey::from_parts(self.key, item)
    }

    /// The key a content key file holds (see [`EpochKey::to_content_key`]); `None` when its
    /// epoch length is zero.
    pub fn from_content_key(key: &ContentKey) -> Option<Self> {
        let item = key.item_id();
        let epoch = u64::from_be_bytes(item[..8].try_into().expect("8 bytes"));
        let epoch_len = u32::from_be_bytes(item[8..12].try_into().expect("4 bytes"));
        (epoch_len > 0).then(|| Self {
            key: *key.key_bytes(),
            epoch,
            epoch_len,
        })
    }
}
