//! Fixtures shared by the release tests.

use ed25519_dalek::SigningKey;
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
