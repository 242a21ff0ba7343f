//! Streaming verification of a whole image against its release, in constant memory.
//!
//! [`ImageVerifier`] holds a SHA-256 state (104 bytes), the expected size and digest and a
//! byte count: 160 bytes in all on a 64-bit target, on the stack or wherever the caller puts it,
//! and no heap. Feed it the image in pieces of any size (one block buffer at a time, as the
//! image arrives or as it is read back from flash) and call [`ImageVerifier::finish`] before
//! marking the image bootable.

use sha2::{Digest, Sha256};

use crate::release::Release;

/// Why an image does not match its release.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// More bytes than the release's size.
    #[error("image longer than the {expected} bytes released (at least {got})")]
    TooLong {
        /// The release's size.
        expected: u64,
        /// Bytes seen so far.
        got: u64,
    },
    /// Fewer bytes than the release's size.
    #[error("image is {got} bytes, {expected} released")]
    TooShort {
        /// The release's size.
        expected: u64,
        /// Bytes seen.
        got: u64,
    },
    /// The right size but another digest.
    #[error("image digest differs from the release's")]
    Digest,
}

/// Hashes an image incrementally and checks it against a release's size and SHA-256.
///
/// # Examples
///
/// ```
/// use sha2::{Digest, Sha256};
/// use streamspace_update::verify::ImageVerifier;
/// let image = b"firmware 2.0";
/// let mut v = ImageVerifier::new(image.len() as u64, Sha256::digest(image).into());
/// for piece in image.chunks(5) {
///     v.update(piece)?;
/// }
/// v.finish()?;
/// # Ok::<(), streamspace_update::verify::ImageError>(())
/// ```
#[derive(Clone)]
pub struct ImageVerifier {
    hasher: Sha256,
    expected_len: u64,
    expected: [u8; 32],
    seen: u64,
}

impl ImageVerifier {
    /// A verifier for an image of `len` bytes with SHA-256 `digest`.
    pub fn new(len: u64, digest: [u8; 32]) -> Self {
        Self {
            hasher: Sha256::new(),
            expected_len: len,
            expected: digest,
            seen: 0,
        }
    }

    /// A verifier for `release`'s image.
    pub fn for_release(release: &Release) -> Self {
        Self::new(release.size, release.sha256)
    }

    /// Bytes seen so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Feeds the next piece of the image.
    ///
    /// # Errors
    ///
    /// [`ImageError::TooLong`] as soon as the image passes its released size.
    pub fn update(&mut self, piece: &[u8]) -> Result<(), ImageError> {
        let seen = self.seen.saturating_add(piece.len() as u64);
        if seen > self.expected_len {
            return Err(ImageError::TooLong {
                expected: self.expected_len,
                got: seen,
            });
        }
        self.hasher.update(piece);
        self.seen = seen;
        Ok(())
    }

    /// Checks the size and digest.
    ///
    /// # Errors
    ///
    /// [`ImageError::TooShort`] or [`ImageError::Digest`].
    pub fn finish(self) -> Result<(), ImageError> {
        if self.seen != self.expected_len {
            return Err(ImageError::TooShort {
                expected: self.expected_len,
                got: self.seen,
            });
        }
        let digest: [u8; 32] = self.hasher.finalize().into();
        // Not secret: no need for constant time.
        if digest != self.expected {
            return Err(ImageError::Digest);
        }
        Ok(())
    }
}

impl core::fmt::Debug for ImageVerifier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ImageVerifier")
            .field("expected_len", &self.expected_len)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}
