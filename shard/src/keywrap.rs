//! Content keys wrapped to a recipient's X25519 key with HPKE (RFC 9180, base mode,
//! X25519-HKDF-SHA256, HKDF-SHA256, ChaCha20-Poly1305), bound to a context (`info`) and to
//! associated data the recipient must present again to open them.
//!
//! Used wherever a content key is handed to a device: the market's key release to a
//! licensed viewer, an update's image key to a device group.
//!
//! # Examples
//!
//! ```
//! use streamspace_shard::crypto::ContentKey;
//! use streamspace_shard::keywrap::{RecipientKey, wrap};
//! let device = RecipientKey::generate();
//! let key = ContentKey::generate();
//! let w = wrap(&device.public_bytes(), &key, b"example/v1", b"film 42")?;
//! assert_eq!(device.unwrap(&w, b"example/v1", b"film 42")?.key_bytes(), key.key_bytes());
//! assert!(device.unwrap(&w, b"example/v1", b"film 43").is_err());
//! # Ok::<(), streamspace_shard::keywrap::WrapError>(())
//! ```

use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use zeroize::Zeroizing;

use crate::crypto::ContentKey;

type Kem = X25519HkdfSha256;
type Aead = hpke::aead::ChaCha20Poly1305;
type Kdf = hpke::kdf::HkdfSha256;

/// Length of the sealed key: 32 bytes of key, 16 of item id, 16 of tag.
pub const SEALED_LEN: usize = 64;

/// A wrapped content key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WrappedKey {
    /// The HPKE encapsulated key (32 bytes).
    pub encapped: Vec<u8>,
    /// The sealed key ([`SEALED_LEN`] bytes).
    pub ciphertext: Vec<u8>,
}

/// Why a key could not be wrapped or unwrapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WrapError {
    /// The recipient's public key is not an X25519 key.
    #[error("recipient key is not an X25519 public key")]
    RecipientKey,
    /// The encapsulated key is malformed.
    #[error("malformed encapsulated key")]
    Encapped,
    /// Not sealed to this key, for this context and associated data, or tampered with.
    #[error("wrapped key does not open with this key, context and associated data")]
    Open,
    /// HPKE refused to seal.
    #[error("sealing failed")]
    Seal,
}

/// Whether `bytes` is a usable X25519 public key.
pub fn is_public_key(bytes: &[u8; 32]) -> bool {
    <Kem as hpke::Kem>::PublicKey::from_bytes(bytes).is_ok()
}

/// Wraps `key` to the X25519 public key `recipient`.
///
/// # Errors
///
/// [`WrapError::RecipientKey`] or [`WrapError::Seal`].
pub fn wrap(
    recipient: &[u8; 32],
    key: &ContentKey,
    info: &[u8],
    aad: &[u8],
) -> Result<WrappedKey, WrapError> {
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(recipient)
        .map_err(|_| WrapError::RecipientKey)?;
    let mut plain = Zeroizing::new([0u8; 48]);
    plain[..32].copy_from_slice(key.key_bytes());
    plain[32..].copy_from_slice(&key.item_id());
    let (encapped, ciphertext) = hpke::single_shot_seal::<Aead, Kdf, Kem, _>(
        &OpModeS::Base,
        &pk,
        info,
        &plain[..],
        aad,
        &mut rand::rngs::OsRng,
    )
    .map_err(|_| WrapError::Seal)?;
    Ok(WrappedKey {
        encapped: encapped.to_bytes().to_vec(),
        ciphertext,
    })
}

/// An X25519 key pair that receives wrapped keys (a device's, or a device group's).
pub struct RecipientKey {
    secret: <Kem as hpke::Kem>::PrivateKey,
    public: <Kem as hpke::Kem>::PublicKey,
}

impl std::fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecipientKey")
            .field("public", &self.public_bytes())
            .finish_non_exhaustive()
    }
}

impl RecipientKey {
    /// A new random key pair.
    pub fn generate() -> Self {
        let (secret, public) = Kem::gen_keypair(&mut rand::rngs::OsRng);
        Self { secret, public }
    }

    /// The key pair derived from 32 bytes of secret input keying material.
    pub fn derive(ikm: &[u8; 32]) -> Self {
        let (secret, public) = Kem::derive_keypair(ikm);
        Self { secret, public }
    }

    /// The public key.
    pub fn public_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.public.to_bytes());
        out
    }

    /// Opens a key wrapped to this key pair for `info` and `aad`.
    ///
    /// # Errors
    ///
    /// [`WrapError::Encapped`] or [`WrapError::Open`].
    pub fn unwrap(
        &self,
        wrapped: &WrappedKey,
        info: &[u8],
        aad: &[u8],
    ) -> Result<ContentKey, WrapError> {
        let encapped = <Kem as hpke::Kem>::EncappedKey::from_bytes(&wrapped.encapped)
            .map_err(|_| WrapError::Encapped)?;
        let plain = Zeroizing::new(
            hpke::single_shot_open::<Aead, Kdf, Kem>(
                &OpModeR::Base,
                &self.secret,
                &encapped,
                info,
                &wrapped.ciphertext,
                aad,
            )
            .map_err(|_| WrapError::Open)?,
        );
        if plain.len() != 48 {
            return Err(WrapError::Open);
        }
        let mut key = [0u8; 32];
        let mut item = [0u8; 16];
        key.copy_from_slice(&plain[..32]);
        item.copy_from_slice(&plain[32..]);
        Ok(ContentKey::from_parts(key, item))
    }
}
