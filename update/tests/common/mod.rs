//! Fixtures shared by the update tests (each test file uses some of them).
#![allow(dead_code)]

use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};
use streamspace_update::release::{Release, Stage};

/// A deterministic signing key.
pub(crate) fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

/// An ordinary release of `version`.
pub(crate) fn release(version: &str) -> Release {
    Release {
        product: "thermostat-fw".into(),
        version: version.into(),
        channel: "stable".into(),
        image: vec![1, 0x70, 0x12, 0x20, 7, 7, 7, 7],
        size: 1 << 20,
        sha256: [9; 32],
        min_version: Some("1.0.0".into()),
        keys: vec![],
    }
}

/// A stage at full rollout, issued at 1,000 and valid until 2,000.
pub(crate) fn stage() -> Stage {
    Stage {
        rollout: 10_000,
        issued: 1_000,
        expires: 2_000,
    }
}

/// A release of `image` as `version`: its raw-leaf CIDv1, size and SHA-256.
pub(crate) fn release_of(version: &str, image: &[u8]) -> Release {
    Release {
        product: "thermostat-fw".into(),
        version: version.into(),
        channel: "stable".into(),
        image: cid::Cid::new_v1(
            0x55,
            cid::multihash::Multihash::wrap(0x12, &Sha256::digest(image)).expect("32 bytes fit"),
        )
        .to_bytes(),
        size: image.len() as u64,
        sha256: Sha256::digest(image).into(),
        min_version: None,
        keys: vec![],
    }
}
