//! Releases: what a vendor signs, in a compact binary form a microcontroller can check.
//!
//! A [`Release`] names a product, a semantic version, a channel, the image's root CID, its size
//! and SHA-256 digest (of the bytes a device installs, so `sha256sum` of the image file gives
//! it), the oldest version it can upgrade from, and optionally the image key wrapped for each
//! device group. The vendor signs it, together with its current [`Stage`] (rollout, time of
//! signing, expiry), with a threshold of the keys of the TUF `targets` role; the signed form
//! ([`SignedRelease`], the *ticket*) travels inside the TUF target's custom field, and a
//! constrained device that cannot run a full TUF client checks it alone against the targets
//! keys it was provisioned with ([`SignedRelease::verify_for`]).
//!
//! # Freshness on a device that checks tickets alone
//!
//! A ticket is re-signed whenever the vendor publishes (a new release, a rollout change, or the
//! daily refresh) and expires with the timestamp role's lifetime (one day by default). The
//! device refuses a ticket
//!
//! - whose `expires` is not after the device's time `now` ([`ReleaseError::Expired`]),
//! - issued before the newest ticket of the same product it accepted (`newest_issued`, which
//!   the device keeps in flash: [`ReleaseError::Stale`]), so a replayed older stage (say the
//!   50% stage after the vendor halted the release) is refused at once,
//! - whose rollout is halted ([`ReleaseError::Halted`]) or does not include the device yet
//!   ([`ReleaseError::NotInRollout`]).
//!
//! `now` must come from a source the attacker does not control: a battery-backed RTC set at the
//! factory, or the time of a TUF `timestamp.json` the device's gateway verified, or an
//! authenticated time protocol (Roughtime). A device with no trusted time passes
//! `now = newest_issued`: it is then protected against rollback and replay of older stages, but
//! not against being frozen on the newest ticket it has seen, for as long as nobody offers it a
//! newer one. The full TUF client ([`crate::tuf::Trust`]) checks the expiry of every role and
//! of the ticket against the system clock.
//!
//! # Layout of a signed release
//!
//! ```text
//! "SSUR" | 0x02 | body length (u16 BE) | body (postcard of release, stage) | n (u8) | n × (public key 32 | signature 64)
//! ```
//!
//! Each signature is Ed25519 (strict verification) over `"streamspace-update/release/v2" ||
//! body`. Decoding is strict: the body must re-encode to the same bytes, there must be nothing
//! after the last signature, and every length is bounded (see the constants). A threshold
//! counts distinct keys among those the device trusts: a second signature by the same key, or
//! a signature by any other key, counts for nothing.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 4] = b"SSUR";
const FORMAT: u8 = 2;
const DOMAIN: &[u8] = b"streamspace-update/release/v2";
const ROLLOUT_DOMAIN: &[u8] = b"streamspace-update/rollout/v1";

/// Longest product name, in bytes.
pub const MAX_PRODUCT: usize = 64;
/// Longest channel name, in bytes.
pub const MAX_CHANNEL: usize = 32;
/// Longest version string, in bytes.
pub const MAX_VERSION: usize = 64;
/// Longest CID, in bytes.
pub const MAX_CID: usize = 96;
/// Most device groups an image key may be wrapped for.
pub const MAX_GROUPS: usize = 16;
/// Longest body of a signed release.
pub const MAX_BODY: usize = 4096;
/// Most signatures on a release.
pub const MAX_SIGNATURES: usize = 8;
/// Rollout is given in basis points: 10,000 is every device.
pub const ROLLOUT_ALL: u16 = 10_000;

/// The image key wrapped for one device group (HPKE, RFC 9180: X25519-HKDF-SHA256,
/// ChaCha20-Poly1305; see `streamspace_update::keys`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// The group's name.
    pub group: String,
    /// The HPKE encapsulated key (32 bytes).
    pub encapped: Vec<u8>,
    /// The sealed image key (48 bytes of key and item id, plus a 16-byte tag).
    pub sealed: Vec<u8>,
}

/// A release of one product's image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The product, e.g. `thermostat-fw`.
    pub product: String,
    /// The version, semantic versioning 2.0.
    pub version: String,
    /// The channel, e.g. `stable` or `beta`.
    pub channel: String,
    /// The image's root CID (binary form).
    pub image: Vec<u8>,
    /// The image's size in bytes (as installed, i.e. decrypted).
    pub size: u64,
    /// SHA-256 of the installed image.
    pub sha256: [u8; 32],
    /// The oldest installed version that may upgrade to this one (`None`: any).
    pub min_version: Option<String>,
    /// The image key wrapped per device group; empty if the image is not encrypted.
    pub keys: Vec<WrappedKey>,
}

/// What the vendor says of a release at the time it signs the ticket: how far the rollout has
/// gone, when it said so, and until when the statement holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// The rollout in basis points (0: halted, 10,000: every device).
    pub rollout: u16,
    /// When the ticket was signed, in seconds since the Unix epoch.
    pub issued: u64,
    /// When the ticket stops being valid, in seconds since the Unix epoch.
    pub expires: u64,
}

/// Why a signer could not sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The key is not available (an offline key, a locked token, an unreachable remote signer).
    #[error("signing key unavailable: {0}")]
    Unavailable(String),
}

/// A holder of one Ed25519 signing key: a key in memory, a key file, a hardware token or a
/// remote signing service. It only ever reveals its public key.
pub trait Signer {
    /// The Ed25519 public key.
    fn public_key(&self) -> [u8; 32];

    /// An Ed25519 signature over `message`.
    ///
    /// # Errors
    ///
    /// [`SignError`] if the key cannot be used now.
    fn sign(&self, message: &[u8]) -> Result<[u8; 64], SignError>;
}

impl Signer for SigningKey {
    fn public_key(&self) -> [u8; 32] {
        self.verifying_key().to_bytes()
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; 64], SignError> {
        Ok(ed25519_dalek::Signer::sign(self, message).to_bytes())
    }
}

/// Who checks a ticket and in what situation: what [`SignedRelease::verify_for`] needs to
/// decide.
#[derive(Debug, Clone, Copy)]
pub struct DeviceView<'a> {
    /// The product the device runs.
    pub product: &'a str,
    /// Its channel.
    pub channel: &'a str,
    /// The version it runs.
    pub installed: &'a str,
    /// Its stable identifier (its place in staged rollouts).
    pub device_id: &'a [u8],
    /// Its trusted time, in seconds since the Unix epoch (see the module's freshness rule).
    pub now: u64,
    /// The `issued` time of the newest ticket of this product it accepted (0 if none).
    pub newest_issued: u64,
}

/// Why a release, a version or an image was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// The bytes end before the field at `offset`.
    #[error("signed release truncated at byte {offset} (reading {what})")]
    Truncated {
        /// Where.
        offset: usize,
        /// The field being read.
        what: &'static str,
    },
    /// Not a signed release.
    #[error("not a signed release (magic or format byte wrong)")]
    Magic,
    /// A length beyond its bound.
    #[error("{what} is {len} bytes/items, at most {max}")]
    TooLong {
        /// The field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The body does not decode, or is not in canonical form.
    #[error("release body at byte {offset}: {reason}")]
    Body {
        /// Offset of the body.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// Bytes after the last signature.
    #[error("{extra} trailing bytes after the signatures")]
    Trailing {
        /// How many.
        extra: usize,
    },
    /// A version string that is not semantic versioning.
    #[error("version {0:?} is not a semantic version")]
    Version(String),
    /// Fewer valid signatures of trusted keys than the threshold.
    #[error("{valid} valid signatures of trusted keys, {threshold} needed")]
    Threshold {
        /// Valid signatures by distinct trusted keys.
        valid: usize,
        /// Needed.
        threshold: usize,
    },
    /// The release is for another product or channel than the device runs.
    #[error("release is for {product}/{channel}, device runs {expected}")]
    WrongProduct {
        /// The release's product.
        product: String,
        /// The release's channel.
        channel: String,
        /// What the device runs (`product/channel`).
        expected: String,
    },
    /// The release is not newer than what is installed (rollback or replay).
    #[error("release {offered} is not newer than installed {installed}")]
    Rollback {
        /// Offered.
        offered: String,
        /// Installed.
        installed: String,
    },
    /// The installed version is too old to upgrade to this release directly.
    #[error("installed {installed} is older than {min}, the oldest this release upgrades from")]
    TooOld {
        /// Installed.
        installed: String,
        /// The release's minimum.
        min: String,
    },
    /// The ticket's validity ended (a frozen or replayed ticket).
    #[error("ticket expired at {expires}, now is {now}")]
    Expired {
        /// Its expiry.
        expires: u64,
        /// The device's time.
        now: u64,
    },
    /// The ticket was issued before one the device already accepted (a replayed older stage).
    #[error("ticket issued at {issued}, before the newest accepted ({newest})")]
    Stale {
        /// Its issue time.
        issued: u64,
        /// The newest the device accepted.
        newest: u64,
    },
    /// The vendor halted the rollout.
    #[error("rollout of {version} is halted")]
    Halted {
        /// The release's version.
        version: String,
    },
    /// The rollout has not reached this device.
    #[error("rollout at {rollout} basis points does not include this device (bucket {bucket})")]
    NotInRollout {
        /// The device's bucket.
        bucket: u16,
        /// The rollout.
        rollout: u16,
    },
    /// A signer could not sign.
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// A release with its signatures, as decoded. Verify with [`SignedRelease::verify`] before use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRelease {
    body: Vec<u8>,
    release: Release,
    stage: Stage,
    signatures: Vec<([u8; 32], [u8; 64])>,
}

fn check_version(v: &str) -> Result<semver::Version, ReleaseError> {
    if v.len() > MAX_VERSION {
        return Err(ReleaseError::TooLong {
            what: "version",
            len: v.len(),
            max: MAX_VERSION,
        });
    }
    semver::Version::parse(v).map_err(|_| ReleaseError::Version(v.into()))
}

impl Release {
    /// Checks the bounds and that the versions are semantic versions.
    ///
    /// # Errors
    ///
    /// [`ReleaseError::TooLong`] or [`ReleaseError::Version`].
    pub fn validate(&self) -> Result<(), ReleaseError> {
        let bound = |what, len, max| {
            if len > max {
                Err(ReleaseError::TooLong { what, len, max })
            } else {
                Ok(())
            }
        };
        bound("product", self.product.len(), MAX_PRODUCT)?;
        bound("channel", self.channel.len(), MAX_CHANNEL)?;
        bound("image CID", self.image.len(), MAX_CID)?;
        bound("device groups", self.keys.len(), MAX_GROUPS)?;
        for k in &self.keys {
            bound("group name", k.group.len(), MAX_PRODUCT)?;
            bound("encapsulated key", k.encapped.len(), 32)?;
            bound("sealed key", k.sealed.len(), 64)?;
        }
        check_version(&self.version)?;
        if let Some(min) = &self.min_version {
            check_version(min)?;
        }
        Ok(())
    }

    /// Whether `installed` may upgrade to this release: this release must be strictly newer
    /// (no rollback, no replay of the installed one) and `installed` at least its minimum.
    ///
    /// # Errors
    ///
    /// [`ReleaseError::Rollback`], [`ReleaseError::TooOld`] or [`ReleaseError::Version`].
    ///
    /// # Examples
    ///
    /// ```
    /// # let release = streamspace_update::release::Release { product: "fw".into(),
    /// #   version: "1.4.0".into(), channel: "stable".into(), image: vec![], size: 0,
    /// #   sha256: [0; 32], min_version: Some("1.2.0".into()), keys: vec![] };
    /// assert!(release.upgrades_from("1.3.9").is_ok());
    /// assert!(release.upgrades_from("1.4.0").is_err()); // not newer
    /// assert!(release.upgrades_from("1.1.0").is_err()); // too old to upgrade directly
    /// ```
    pub fn upgrades_from(&self, installed: &str) -> Result<(), ReleaseError> {
        let offered = check_version(&self.version)?;
        let current = check_version(installed)?;
        if offered <= current {
            return Err(ReleaseError::Rollback {
                offered: self.version.clone(),
                installed: installed.into(),
            });
        }
        if let Some(min) = &self.min_version
            && current < check_version(min)?
        {
            return Err(ReleaseError::TooOld {
                installed: installed.into(),
                min: min.clone(),
            });
        }
        Ok(())
    }

    /// The device's bucket for this release's staged rollout, in `0..10_000`: the first eight
    /// bytes of SHA-256 over the product, version and device id. Stable, so a device in the
    /// rollout at 10% stays in it when the rollout is raised; different per release, so the
    /// same devices are not always first.
    pub fn rollout_bucket(&self, device_id: &[u8]) -> u16 {
        let mut h = Sha256::new();
        h.update(ROLLOUT_DOMAIN);
        for part in [self.product.as_bytes(), self.version.as_bytes(), device_id] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        let d = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&d[..8]);
        (u64::from_be_bytes(first) % u64::from(ROLLOUT_ALL)) as u16
    }

    /// Whether a device is in a rollout of `basis_points` (0 = halted, 10,000 = everyone).
    pub fn in_rollout(&self, device_id: &[u8], basis_points: u16) -> bool {
        self.rollout_bucket(device_id) < basis_points.min(ROLLOUT_ALL)
    }

    /// Signs the release at `stage` with each of `keys` (each key once: a second signature by
    /// the same key would count for nothing).
    ///
    /// # Errors
    ///
    /// [`ReleaseError`] if the release is out of bounds, has too many keys, or a signer fails.
    pub fn sign<S: Signer + ?Sized>(
        &self,
        stage: Stage,
        keys: &[&S],
    ) -> Result<SignedRelease, ReleaseError> {
        self.validate()?;
        if keys.len() > MAX_SIGNATURES {
            return Err(ReleaseError::TooLong {
                what: "signatures",
                len: keys.len(),
                max: MAX_SIGNATURES,
            });
        }
        let body = postcard::to_allocvec(&(self, &stage)).map_err(|_| ReleaseError::Body {
            offset: 0,
            reason: "cannot encode",
        })?;
        if body.len() > MAX_BODY {
            return Err(ReleaseError::TooLong {
                what: "release body",
                len: body.len(),
                max: MAX_BODY,
            });
        }
        let message = signed_message(&body);
        let mut signatures = Vec::with_capacity(keys.len());
        for k in keys {
            signatures.push((k.public_key(), k.sign(&message)?));
        }
        Ok(SignedRelease {
            body,
            release: self.clone(),
            stage,
            signatures,
        })
    }
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + body.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(body);
    m
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ReleaseError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or(ReleaseError::Truncated {
                offset: self.at,
                what,
            })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
}

impl SignedRelease {
    /// The release, not yet verified.
    pub fn release(&self) -> &Release {
        &self.release
    }

    /// The stage it was signed at, not yet verified.
    pub fn stage(&self) -> &Stage {
        &self.stage
    }

    /// The public keys that signed it (whether or not their signatures hold).
    pub fn signers(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.signatures.iter().map(|(k, _)| k)
    }

    /// Encodes to the layout above.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.body.len() + 96 * self.signatures.len());
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        out.extend_from_slice(&(self.body.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.body);
        out.push(self.signatures.len() as u8);
        for (k, s) in &self.signatures {
            out.extend_from_slice(k);
            out.extend_from_slice(s);
        }
        out
    }

    /// Decodes untrusted bytes, strictly. Signatures are not checked here.
    ///
    /// # Errors
    ///
    /// [`ReleaseError`] saying what is wrong and where.
    pub fn decode(bytes: &[u8]) -> Result<Self, ReleaseError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4, "magic")? != MAGIC || r.take(1, "format")?[0] != FORMAT {
            return Err(ReleaseError::Magic);
        }
        let len = r.take(2, "body length")?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len > MAX_BODY {
            return Err(ReleaseError::TooLong {
                what: "release body",
                len,
                max: MAX_BODY,
            });
        }
        let offset = r.at;
        let body = r.take(len, "body")?;
        let (release, stage): (Release, Stage) =
            postcard::from_bytes(body).map_err(|_| ReleaseError::Body {
                offset,
                reason: "does not decode",
            })?;
        let canonical =
            postcard::to_allocvec(&(&release, &stage)).map_err(|_| ReleaseError::Body {
                offset,
                reason: "does not re-encode",
            })?;
        if canonical != body {
            return Err(ReleaseError::Body {
                offset,
                reason: "not in canonical form",
            });
        }
        release.validate()?;
        let n = usize::from(r.take(1, "signature count")?[0]);
        if n > MAX_SIGNATURES {
            return Err(ReleaseError::TooLong {
                what: "signatures",
                len: n,
                max: MAX_SIGNATURES,
            });
        }
        let mut signatures = Vec::with_capacity(n);
        for _ in 0..n {
            let mut k = [0u8; 32];
            k.copy_from_slice(r.take(32, "signer key")?);
            let mut s = [0u8; 64];
            s.copy_from_slice(r.take(64, "signature")?);
            signatures.push((k, s));
        }
        if r.at != bytes.len() {
            return Err(ReleaseError::Trailing {
                extra: bytes.len() - r.at,
            });
        }
        Ok(Self {
            body: body.to_vec(),
            release,
            stage,
            signatures,
        })
    }

    /// Checks that at least `threshold` distinct keys among `trusted` signed the release, and
    /// returns it.
    ///
    /// # Errors
    ///
    /// [`ReleaseError::Threshold`] (a threshold of 0 is never met).
    ///
    /// # Examples
    ///
    /// ```
    /// use ed25519_dalek::SigningKey;
    /// use streamspace_update::release::{Release, SignedRelease, Stage};
    /// let vendor = SigningKey::from_bytes(&[7; 32]);
    /// let release = Release { product: "fw".into(), version: "2.0.0".into(),
    ///     channel: "stable".into(), image: vec![1, 85, 18, 32], size: 5, sha256: [0; 32],
    ///     min_version: None, keys: vec![] };
    /// let stage = Stage { rollout: 10_000, issued: 1_700_000_000, expires: 1_700_086_400 };
    /// let wire = release.sign(stage, &[&vendor])?.encode();
    /// let signed = SignedRelease::decode(&wire)?;
    /// let checked = signed.verify(&[vendor.verifying_key().to_bytes()], 1)?;
    /// assert_eq!(checked.version, "2.0.0");
    /// # Ok::<(), streamspace_update::release::ReleaseError>(())
    /// ```
    pub fn verify(&self, trusted: &[[u8; 32]], threshold: usize) -> Result<&Release, ReleaseError> {
        let message = signed_message(&self.body);
        let mut seen: Vec<&[u8; 32]> = Vec::with_capacity(self.signatures.len());
        for (key, sig) in &self.signatures {
            if !trusted.contains(key) || seen.contains(&key) {
                continue;
            }
            let Ok(vk) = VerifyingKey::from_bytes(key) else {
                continue;
            };
            if vk
                .verify_strict(&message, &Signature::from_bytes(sig))
                .is_ok()
            {
                seen.push(key);
            }
        }
        if threshold == 0 || seen.len() < threshold {
            return Err(ReleaseError::Threshold {
                valid: seen.len(),
                threshold,
            });
        }
        Ok(&self.release)
    }

    /// Verifies the signatures, then checks the ticket against the device: for its product and
    /// channel, newer than what it runs (and not too new to upgrade to directly), not expired,
    /// not older than the newest ticket it accepted, and a rollout that includes it. The whole
    /// check a device makes before downloading; see the module's freshness rule.
    ///
    /// # Errors
    ///
    /// [`ReleaseError`]: `Threshold`, `WrongProduct`, `Rollback`, `TooOld`, `Expired`, `Stale`,
    /// `Halted` or `NotInRollout`.
    pub fn verify_for(
        &self,
        trusted: &[[u8; 32]],
        threshold: usize,
        device: &DeviceView<'_>,
    ) -> Result<&Release, ReleaseError> {
        let r = self.verify(trusted, threshold)?;
        if r.product != device.product || r.channel != device.channel {
            return Err(ReleaseError::WrongProduct {
                product: r.product.clone(),
                channel: r.channel.clone(),
                expected: alloc::format!("{}/{}", device.product, device.channel),
            });
        }
        self.check_stage(device.now, device.newest_issued)?;
        r.upgrades_from(device.installed)?;
        if self.stage.rollout == 0 {
            return Err(ReleaseError::Halted {
                version: r.version.clone(),
            });
        }
        if !r.in_rollout(device.device_id, self.stage.rollout) {
            return Err(ReleaseError::NotInRollout {
                bucket: r.rollout_bucket(device.device_id),
                rollout: self.stage.rollout,
            });
        }
        Ok(r)
    }

    /// Checks the stage's freshness alone: not expired at `now`, not issued before
    /// `newest_issued`.
    ///
    /// # Errors
    ///
    /// [`ReleaseError::Expired`] or [`ReleaseError::Stale`].
    pub fn check_stage(&self, now: u64, newest_issued: u64) -> Result<(), ReleaseError> {
        if now >= self.stage.expires {
            return Err(ReleaseError::Expired {
                expires: self.stage.expires,
                now,
            });
        }
        if self.stage.issued < newest_issued {
            return Err(ReleaseError::Stale {
                issued: self.stage.issued,
                newest: newest_issued,
            });
        }
        Ok(())
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({})", self.product, self.version, self.channel)
    }
}
