//! Image keys wrapped per device group.
//!
//! An encrypted image is sealed once with a [`ContentKey`]; the release carries that key
//! wrapped (HPKE, see [`streamspace_shard::keywrap`]) to each device group's X25519 key, bound
//! to the product, version and group, so a wrapped key cannot be moved to another release or
//! group.

use streamspace_shard::crypto::ContentKey;
use streamspace_shard::keywrap::{self, RecipientKey, WrapError};

use crate::release::{Release, WrappedKey};

const INFO: &[u8] = b"streamspace-update/image-key/v1";

fn aad(product: &str, version: &str, group: &str) -> Vec<u8> {
    let mut a = Vec::new();
    for part in [product, version, group] {
        a.extend_from_slice(&(part.len() as u32).to_be_bytes());
        a.extend_from_slice(part.as_bytes());
    }
    a
}

/// Why an image key could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The release has no key for this group.
    #[error("release carries no image key for group {0:?}")]
    NoKeyForGroup(String),
    /// The key does not open.
    #[error(transparent)]
    Wrap(#[from] WrapError),
}

/// Wraps `key` for `group` (public key `group_public`) in the release `product` `version`.
///
/// # Errors
///
/// [`WrapError`] if the group key is not an X25519 key.
pub fn wrap_for_group(
    product: &str,
    version: &str,
    group: &str,
    group_public: &[u8; 32],
    key: &ContentKey,
) -> Result<WrappedKey, WrapError> {
    let w = keywrap::wrap(group_public, key, INFO, &aad(product, version, group))?;
    Ok(WrappedKey {
        group: group.to_owned(),
        encapped: w.encapped,
        sealed: w.ciphertext,
    })
}

/// The image key of `release` for a device of `group` holding `group_key`.
///
/// # Errors
///
/// [`KeyError`].
pub fn image_key(
    release: &Release,
    group: &str,
    group_key: &RecipientKey,
) -> Result<ContentKey, KeyError> {
    let w = release
        .keys
        .iter()
        .find(|k| k.group == group)
        .ok_or_else(|| KeyError::NoKeyForGroup(group.to_owned()))?;
    let wrapped = keywrap::WrappedKey {
        encapped: w.encapped.clone(),
        ciphertext: w.sealed.clone(),
    };
    Ok(group_key.unwrap(
        &wrapped,
        INFO,
        &aad(&release.product, &release.version, group),
    )?)
}
