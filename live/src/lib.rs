#![doc = include_str!("../README.md")]
#![deny(missing_docs, unreachable_pub, rustdoc::broken_intra_doc_links)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod keys;
pub mod ladder;
pub mod manifest;
pub mod publisher;
pub mod segmenter;
pub mod verify;

use std::io::Read;

use cid::Cid;
pub use keys::{EpochKey, OutsideEpoch, StreamKey};
pub use ladder::{Ladder, LadderError, Rung};
pub use manifest::{Manifest, Segment, SignedManifest, StreamId};
pub use publisher::{PublishError, Published, Publisher, PublisherConfig};
pub use segmenter::{CutSegment, Input, Segmenter, SegmenterConfig, SegmenterError};
use streamspace_shard::crypto::ContentKey;
use streamspace_shard::import::ImportOptions;
use streamspace_shard::store::BlockStore;
pub use verify::{LiveSegment, Refusals, Update, Verifier, media_playlist};

/// Why a manifest (or a segment) is refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManifestError {
    /// The bytes are not a manifest of this format; says which rule they break.
    #[error("malformed live manifest: {0}")]
    Malformed(&'static str),
    /// The manifest is for another stream.
    #[error("a manifest of another stream ({stream})")]
    WrongStream {
        /// The stream it names.
        stream: String,
    },
    /// The manifest names a key that is not the stream's publisher's.
    #[error("the manifest is not the stream publisher's")]
    NotPublisher,
    /// The signature does not verify (opaque).
    #[error("the manifest's signature does not verify")]
    BadSignature,
    /// A manifest accepted before, sent again.
    #[error("manifest {seq} was accepted before (a replay)")]
    Replayed {
        /// Its sequence number.
        seq: u64,
    },
    /// An older manifest than one accepted.
    #[error("manifest {seq} arrived after manifest {last}")]
    Reordered {
        /// Its sequence number.
        seq: u64,
        /// The newest accepted.
        last: u64,
    },
    /// A second, different manifest under a sequence number, or one that rewrites segments
    /// (or the epoch length, or the encryption) already accepted.
    #[error("manifest {seq} contradicts what the publisher signed before")]
    Equivocation {
        /// Its sequence number.
        seq: u64,
    },
    /// The window starts past the newest segment accepted: segments are missing.
    #[error("segments {expected}..{first} are missing")]
    Gap {
        /// The media sequence number expected next.
        expected: u64,
        /// The first the manifest lists.
        first: u64,
    },
    /// The window ends before segments already accepted.
    #[error("manifest {seq} ends at segment {end}, before {known}")]
    Shrunk {
        /// Its sequence number.
        seq: u64,
        /// Its end.
        end: u64,
        /// The end accepted before.
        known: u64,
    },
    /// A manifest after the end of the stream.
    #[error("manifest {seq} follows the end of the stream")]
    AfterEnd {
        /// Its sequence number.
        seq: u64,
    },
    /// A segment's bytes do not have the CID its manifest names.
    #[error("segment {seq}: its bytes are {got}, the manifest names {want}")]
    SegmentMismatch {
        /// The segment's media sequence number.
        seq: u64,
        /// The CID the manifest names.
        want: Cid,
        /// The CID of the bytes.
        got: Cid,
    },
}

/// The import options of a segment: kubo's defaults for a clear one, 256 KiB shards for a
/// sealed one.
pub fn segment_options(encrypted: bool) -> ImportOptions {
    if encrypted {
        streamspace_shard::crypto::encrypted_options(ImportOptions::default())
    } else {
        ImportOptions::default()
    }
}

/// Adds a segment's bytes to `store` (to none, `None`: only hashes), sealed with `key` when
/// one is given; returns its root.
///
/// # Errors
///
/// The import's error (the store's, as [`streamspace_shard::import::ImportError::Sink`]).
pub async fn add_segment<S: BlockStore>(
    store: Option<&S>,
    bytes: Vec<u8>,
    key: Option<ContentKey>,
) -> Result<Cid, streamspace_shard::import::ImportError> {
    let reader = std::io::Cursor::new(bytes);
    let imported = match key {
        Some(k) => {
            streamspace_shard::store::add_encrypted(store, reader, k, ImportOptions::default())
                .await?
        }
        None => {
            streamspace_shard::store::add_reader(
                store,
                reader.take(u64::MAX),
                segment_options(false),
            )
            .await?
        }
    };
    Ok(imported.cid)
}

/// Checks that `stored` (a segment's bytes as stored: sealed for an encrypted stream) has the
/// CID that `segment` names.
///
/// # Errors
///
/// [`ManifestError::SegmentMismatch`] naming both CIDs.
pub async fn verify_segment(
    segment: &LiveSegment,
    stored: Vec<u8>,
    encrypted: bool,
) -> Result<(), ManifestError> {
    let got = streamspace_shard::store::add_reader(
        None::<&streamspace_shard::store::MemoryStore>,
        std::io::Cursor::new(stored),
        segment_options(encrypted),
    )
    .await
    .map(|i| i.cid)
    .map_err(|_| ManifestError::Malformed("the segment's bytes cannot be imported"))?;
    if got == segment.cid {
        Ok(())
    } else {
        Err(ManifestError::SegmentMismatch {
            seq: segment.seq,
            want: segment.cid,
            got,
        })
    }
}
