//! Live manifests: what a publisher signs and announces after each segment.
//!
//! A manifest names its stream (a name and the publisher's Ed25519 key), its own sequence
//! number, the sliding window of the newest segments (the media sequence number of the first,
//! then each segment's CID and duration), the epoch length and key epoch of the newest segment,
//! and two flags: the segments are sealed, the stream has ended. The signature covers
//! `"streamspace-live-manifest-v1" || body`.
//!
//! # Wire format
//!
//! `postcard(Wire { body, signature })`, `body` being `postcard(Body)` (see the source); both
//! must be in postcard's one spelling (a decoded manifest re-encodes to the same bytes), so a
//! manifest has one encoding and one digest.

use std::fmt;
use std::str::FromStr;

use cid::Cid;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ManifestError;

/// The newest segments one manifest lists at most.
pub const MAX_WINDOW: usize = 64;
/// The longest stream name, in bytes.
pub const MAX_NAME: usize = 64;
/// The longest segment, in milliseconds.
pub const MAX_SEGMENT_MS: u32 = 60_000;
/// The largest encoded manifest, in bytes (within a pub/sub message).
pub const MAX_MANIFEST: usize = 16 * 1024;
const DOMAIN: &[u8] = b"streamspace-live-manifest-v1";
const VERSION: u8 = 1;
const FLAG_ENCRYPTED: u8 = 1;
const FLAG_ENDED: u8 = 2;

/// A stream: its name and its publisher's key. Written `NAME.HEXKEY` (the key as 64 lowercase
/// hex digits); a name is 1 to [`MAX_NAME`] ASCII letters, digits, `-` or `_`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    name: String,
    publisher: [u8; 32],
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({self})")
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, hex::encode(self.publisher))
    }
}

impl FromStr for StreamId {
    type Err = ManifestError;

    fn from_str(s: &str) -> Result<Self, ManifestError> {
        let (name, key) = s
            .rsplit_once('.')
            .ok_or(ManifestError::Malformed("a stream is written NAME.KEY"))?;
        let mut publisher = [0u8; 32];
        if key.len() != 64 || hex::decode_to_slice(key, &mut publisher).is_err() {
            return Err(ManifestError::Malformed("a stream's key is 64 hex digits"));
        }
        Self::from_parts(name, publisher)
    }
}

impl StreamId {
    /// The stream `name` of the publisher holding `publisher`'s secret.
    ///
    /// # Errors
    ///
    /// [`ManifestError::Malformed`] for a name that is empty, too long or has a character
    /// other than ASCII letters, digits, `-` and `_`.
    pub fn new(name: &str, publisher: &VerifyingKey) -> Result<Self, ManifestError> {
        Self::from_parts(name, publisher.to_bytes())
    }

    /// The stream of one rendition of a live ladder: `NAME-RUNG` (`final-720p`), by the same
    /// publisher. Each rendition is a stream of its own (its own manifests, topic and
    /// segments), so peers watching one rendition serve it to each other.
    ///
    /// # Errors
    ///
    /// [`ManifestError::Malformed`] when the name would be too long.
    pub fn rendition(&self, rung: &crate::ladder::Rung) -> Result<Self, ManifestError> {
        Self::from_parts(&format!("{}-{}", self.name, rung.name()), self.publisher)
    }

    fn from_parts(name: &str, publisher: [u8; 32]) -> Result<Self, ManifestError> {
        if name.is_empty()
            || name.len() > MAX_NAME
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ManifestError::Malformed(
                "a stream name is 1 to 64 ASCII letters, digits, '-' or '_'",
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            publisher,
        })
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The publisher's Ed25519 public key.
    pub fn publisher(&self) -> [u8; 32] {
        self.publisher
    }

    /// The publisher's libp2p peer id (a publisher's node identity is its signing key), or
    /// `None` when the key is not a valid Ed25519 point.
    pub fn publisher_peer(&self) -> Option<streamspace_transport::PeerId> {
        let key =
            streamspace_transport::ed25519::PublicKey::try_from_bytes(&self.publisher).ok()?;
        Some(streamspace_transport::PeerId::from_public_key(&key.into()))
    }

    /// The gossipsub topic the stream's manifests are published on.
    pub fn topic(&self) -> String {
        format!("/streamspace/live/1/{self}")
    }
}

/// One segment a manifest lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Segment {
    /// The segment's root (a UnixFS file: sealed bytes for an encrypted stream).
    pub cid: Cid,
    /// Its duration, milliseconds (1 to [`MAX_SEGMENT_MS`]).
    pub duration_ms: u32,
}

/// A live manifest's content (see the module's documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The stream.
    pub stream: StreamId,
    /// The manifest's sequence number: each manifest of a stream has a greater one.
    pub seq: u64,
    /// The media sequence number of `segments[0]`; the others follow one by one.
    pub first: u64,
    /// The window of newest segments, oldest first (at most [`MAX_WINDOW`]; empty only in an
    /// end-of-stream manifest of a stream that never had a segment).
    pub segments: Vec<Segment>,
    /// Segments per key epoch (at least 1): segment `n` is sealed with a key of epoch
    /// `n / epoch_len`.
    pub epoch_len: u32,
    /// The key epoch of the newest segment (0 when there is none).
    pub key_epoch: u64,
    /// Whether the segments are sealed.
    pub encrypted: bool,
    /// Whether the stream has ended (no segment follows the window).
    pub ended: bool,
}

#[derive(Serialize, Deserialize)]
struct Body {
    version: u8,
    name: String,
    publisher: [u8; 32],
    seq: u64,
    first: u64,
    segments: Vec<(Vec<u8>, u32)>,
    epoch_len: u32,
    key_epoch: u64,
    flags: u8,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    body: Vec<u8>,
    signature: Vec<u8>,
}

impl Manifest {
    /// The media sequence number one past the newest segment.
    pub fn end(&self) -> u64 {
        self.first.saturating_add(self.segments.len() as u64)
    }

    /// The key epoch of media segment `n` in this stream.
    pub fn epoch_of(&self, n: u64) -> u64 {
        n / u64::from(self.epoch_len.max(1))
    }

    /// The segments with their media sequence numbers.
    pub fn numbered(&self) -> impl Iterator<Item = (u64, &Segment)> + '_ {
        (self.first..).zip(self.segments.iter())
    }

    fn check(&self) -> Result<(), ManifestError> {
        if self.segments.len() > MAX_WINDOW {
            return Err(ManifestError::Malformed("more than 64 segments"));
        }
        if self.segments.is_empty() && !self.ended {
            return Err(ManifestError::Malformed(
                "only an end-of-stream manifest may list no segment",
            ));
        }
        if self.epoch_len == 0 {
            return Err(ManifestError::Malformed("an epoch of zero segments"));
        }
        if self.first.checked_add(self.segments.len() as u64).is_none() {
            return Err(ManifestError::Malformed("media sequence numbers overflow"));
        }
        if self
            .segments
            .iter()
            .any(|s| s.duration_ms == 0 || s.duration_ms > MAX_SEGMENT_MS)
        {
            return Err(ManifestError::Malformed(
                "a segment's duration is 1 ms to 60 s",
            ));
        }
        let newest = self.end().checked_sub(1).map_or(0, |n| self.epoch_of(n));
        if self.segments.is_empty() && self.key_epoch != 0
            || !self.segments.is_empty() && self.key_epoch != newest
        {
            return Err(ManifestError::Malformed(
                "the key epoch is not the newest segment's",
            ));
        }
        Ok(())
    }

    fn body(&self) -> Vec<u8> {
        let body = Body {
            version: VERSION,
            name: self.stream.name.clone(),
            publisher: self.stream.publisher,
            seq: self.seq,
            first: self.first,
            segments: self
                .segments
                .iter()
                .map(|s| (s.cid.to_bytes(), s.duration_ms))
                .collect(),
            epoch_len: self.epoch_len,
            key_epoch: self.key_epoch,
            flags: (u8::from(self.encrypted) * FLAG_ENCRYPTED)
                | (u8::from(self.ended) * FLAG_ENDED),
        };
        postcard::to_stdvec(&body).expect("a Vec writer does not fail")
    }

    /// Signs the manifest with `key`. Whether `key` is the stream's publisher key is checked
    /// by viewers ([`crate::Verifier`]), not here.
    ///
    /// # Errors
    ///
    /// [`ManifestError::Malformed`] when the manifest breaks a rule of the format (too many
    /// segments, a zero epoch length, a duration out of bounds, a key epoch that is not the
    /// newest segment's).
    pub fn sign(&self, key: &SigningKey) -> Result<SignedManifest, ManifestError> {
        self.check()?;
        let body = self.body();
        let signature = key.sign(&signed_message(&body)).to_bytes();
        let bytes = postcard::to_stdvec(&Wire {
            body,
            signature: signature.to_vec(),
        })
        .expect("a Vec writer does not fail");
        if bytes.len() > MAX_MANIFEST {
            return Err(ManifestError::Malformed("the manifest is too large"));
        }
        Ok(SignedManifest {
            manifest: self.clone(),
            signature,
            bytes,
        })
    }
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + body.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(body);
    m
}

/// A manifest with its signature, as published. [`SignedManifest::decode`] checks the
/// format only; [`SignedManifest::verify_signature`] (or a [`crate::Verifier`]) checks the
/// signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedManifest {
    manifest: Manifest,
    signature: [u8; 64],
    bytes: Vec<u8>,
}

impl SignedManifest {
    /// A manifest with a signature made elsewhere (a test of verifiers builds forgeries this
    /// way).
    ///
    /// # Errors
    ///
    /// As [`Manifest::sign`].
    pub fn from_parts(manifest: Manifest, signature: [u8; 64]) -> Result<Self, ManifestError> {
        manifest.check()?;
        let bytes = postcard::to_stdvec(&Wire {
            body: manifest.body(),
            signature: signature.to_vec(),
        })
        .expect("a Vec writer does not fail");
        Ok(Self {
            manifest,
            signature,
            bytes,
        })
    }

    /// Decodes a manifest from untrusted bytes, checking its format (not its signature).
    ///
    /// # Errors
    ///
    /// [`ManifestError::Malformed`] saying what is wrong: too large, not postcard, not in its
    /// one spelling, an unknown version or flag, a bad name or CID, a rule of
    /// [`Manifest::sign`] broken.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST {
            return Err(ManifestError::Malformed("the manifest is too large"));
        }
        let wire: Wire = postcard::from_bytes(bytes)
            .map_err(|_| ManifestError::Malformed("not a manifest (postcard)"))?;
        let signature: [u8; 64] = wire
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| ManifestError::Malformed("a signature is 64 bytes"))?;
        let body: Body = postcard::from_bytes(&wire.body)
            .map_err(|_| ManifestError::Malformed("not a manifest body (postcard)"))?;
        if body.version != VERSION {
            return Err(ManifestError::Malformed("an unknown manifest version"));
        }
        if body.flags & !(FLAG_ENCRYPTED | FLAG_ENDED) != 0 {
            return Err(ManifestError::Malformed("an unknown flag"));
        }
        if body.segments.len() > MAX_WINDOW {
            return Err(ManifestError::Malformed("more than 64 segments"));
        }
        let stream = StreamId::from_parts(&body.name, body.publisher)?;
        let segments = body
            .segments
            .iter()
            .map(|(c, d)| {
                Cid::try_from(c.as_slice())
                    .map(|cid| Segment {
                        cid,
                        duration_ms: *d,
                    })
                    .map_err(|_| ManifestError::Malformed("a segment's CID does not parse"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let manifest = Manifest {
            stream,
            seq: body.seq,
            first: body.first,
            segments,
            epoch_len: body.epoch_len,
            key_epoch: body.key_epoch,
            encrypted: body.flags & FLAG_ENCRYPTED != 0,
            ended: body.flags & FLAG_ENDED != 0,
        };
        manifest.check()?;
        let s = Self::from_parts(manifest, signature)?;
        if s.bytes != bytes || s.manifest.body() != wire.body {
            return Err(ManifestError::Malformed("not in the one spelling"));
        }
        Ok(s)
    }

    /// The encoded manifest, as published.
    pub fn encode(&self) -> &[u8] {
        &self.bytes
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// SHA-256 of the encoded manifest.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(&self.bytes).into()
    }

    /// Checks the signature against the key the manifest's stream names.
    ///
    /// # Errors
    ///
    /// [`ManifestError::BadSignature`] (opaque: a forged body, a signature by another key and
    /// a key that is no curve point look the same).
    pub fn verify_signature(&self) -> Result<(), ManifestError> {
        let key = VerifyingKey::from_bytes(&self.manifest.stream.publisher)
            .map_err(|_| ManifestError::BadSignature)?;
        key.verify_strict(
            &signed_message(&self.manifest.body()),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| ManifestError::BadSignature)
    }
}
