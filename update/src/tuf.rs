//! The Update Framework on the vendor's side and the device's: metadata written and checked by
//! [`tough`] (the TUF implementation behind Bottlerocket's updates), carried as a [`Bundle`]
//! over the network.
//!
//! The vendor's repository has four TUF roles (root, targets, snapshot, timestamp), each a set
//! of Ed25519 public keys with a threshold, written in `root.json`. The private keys are held
//! by [`Signer`]s, one per key (a key file per role and key with [`KeyRing::load_dir`], a
//! hardware token, a remote signing service): the vendor signs a role with the authorised
//! signers it was given and refuses to publish with fewer than the threshold, so the root keys
//! can stay offline and come out only to rotate keys. [`Vendor::open`] continues a repository
//! after a restart: metadata versions, the public keys (in `root.json`), the releases and
//! their rollouts (in `state.json`, written before any metadata that depends on it; see the
//! crate's README for why atomic files rather than a database).
//!
//! Every release is a TUF target named `<product>/<version>`, whose length
//! and SHA-256 are the installed image's and whose custom field carries the [`SignedRelease`]
//! (signed by the targets keys, with its rollout stage and expiry, re-signed at every
//! publication) and the rollout in basis points. A device is provisioned with
//! the first `root.json`; [`Trust::check`] runs TUF's client workflow (spec §5) through tough:
//! root rotation with cross-signatures, expiry of every role (freeze), version checks against
//! what the device trusted before (rollback, persisted in its datastore), snapshot and
//! timestamp hashes (mix-and-match), thresholds (a compromised key below threshold signs
//! nothing that counts, and rotated-out keys sign nothing at all).

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use tough::editor::RepositoryEditor;
use tough::editor::signed::SignedRole;
use tough::key_source::KeySource;
use tough::schema::decoded::Decoded;
use tough::schema::key::{Ed25519Key, Ed25519Scheme, Key};
use tough::schema::{Hashes, KeyHolder, RoleKeys, RoleType, Root, Signed, Target};
use tough::sign::Sign;
use tough::{
    ExpirationEnforcement, RepositoryLoader, TargetName, Transport, TransportError,
    TransportErrorKind, TransportStream,
};
use url::Url;

use crate::durable::write_atomically;
use crate::release::{
    MAX_SIGNATURES, ROLLOUT_ALL, Release, ReleaseError, SignError, SignedRelease, Signer, Stage,
};

/// What went wrong with update metadata.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TufError {
    /// TUF refused the metadata (signature, threshold, expiry, rollback, hashes, ...).
    #[error("TUF metadata refused: {0}")]
    Refused(#[source] Box<tough::error::Error>),
    /// The vendor's repository could not be written or signed.
    #[error("TUF repository: {0}")]
    Repository(#[source] Box<tough::error::Error>),
    /// A target's release ticket is missing, malformed, wrongly signed or disagrees with the
    /// target.
    #[error("target {target}: {reason}")]
    Target {
        /// The target's name.
        target: String,
        /// What is wrong.
        reason: String,
    },
    /// A release ticket refused.
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// A bundle that does not decode or breaks a bound.
    #[error("bundle: {0}")]
    Bundle(String),
    /// Files.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No such release in the repository.
    #[error("no release {0}")]
    UnknownRelease(String),
    /// A role set that cannot work (threshold 0 or above its number of distinct keys).
    #[error("role {role}: threshold {threshold} with {keys} keys")]
    Threshold {
        /// The role.
        role: &'static str,
        /// Its threshold.
        threshold: u64,
        /// Its distinct keys.
        keys: usize,
    },
    /// Fewer signers of distinct authorised keys at hand than the role's threshold.
    #[error("role {role}: {have} authorised signers at hand, {threshold} needed")]
    NotEnoughSigners {
        /// The role.
        role: &'static str,
        /// Signers of distinct keys the role authorises.
        have: usize,
        /// Its threshold.
        threshold: u64,
    },
    /// A repository already exists there (open it instead), or none does (create it).
    #[error("{path}: {reason}")]
    State {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TufError + '_ {
    move |source| TufError::Io {
        path: path.to_owned(),
        source,
    }
}

fn repo_err(e: tough::error::Error) -> TufError {
    TufError::Repository(Box::new(e))
}

/// A signer shared by the vendor's repository (sent across tasks).
pub type SharedSigner = Arc<dyn Signer + Send + Sync>;

/// The TUF form of an Ed25519 public key.
fn tuf_key(public: &[u8; 32]) -> Key {
    Key::Ed25519 {
        keyval: Ed25519Key {
            public: Decoded::from(public.to_vec()),
            _extra: HashMap::new(),
        },
        scheme: Ed25519Scheme::Ed25519,
        _extra: HashMap::new(),
    }
}

fn key_id(public: &[u8; 32]) -> Result<Decoded<tough::schema::decoded::Hex>, TufError> {
    tuf_key(public)
        .key_id()
        .map_err(|e| TufError::Bundle(format!("key id: {e}")))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An Ed25519 key of one of the vendor's TUF roles, held in memory.
#[derive(Clone)]
pub struct VendorKey(SigningKey);

impl VendorKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// From a 32-byte seed (keep it secret).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// The Ed25519 signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.0
    }

    /// The public key, as TUF lists it in `root.json`.
    pub fn tuf_key(&self) -> Key {
        tuf_key(&self.0.verifying_key().to_bytes())
    }

    /// Writes the key to its own file (hex of the seed, mode 0600, written atomically).
    ///
    /// # Errors
    ///
    /// [`TufError::Io`].
    pub fn save(&self, path: &Path) -> Result<(), TufError> {
        let text = format!("{}\n", hex::encode(self.0.to_bytes()));
        write_atomically(path, text.as_bytes(), true).map_err(io(path))
    }

    /// Reads a key file written by [`VendorKey::save`].
    ///
    /// # Errors
    ///
    /// [`TufError::Io`], or [`TufError::State`] if the file is not a key.
    pub fn load(path: &Path) -> Result<Self, TufError> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let seed = hex::decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| TufError::State {
                path: path.to_owned(),
                reason: "not a key file (64 hex digits)".into(),
            })?;
        Ok(Self::from_seed(seed))
    }
}

impl Signer for VendorKey {
    fn public_key(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; 64], SignError> {
        Signer::sign(&self.0, message)
    }
}

impl std::fmt::Debug for VendorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VendorKey({})",
            hex::encode(self.0.verifying_key().as_bytes())
        )
    }
}

/// Adapts a [`Signer`] to tough's signing traits.
#[derive(Clone)]
struct TufSigner(SharedSigner);

impl std::fmt::Debug for TufSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TufSigner({})", hex::encode(self.0.public_key()))
    }
}

#[tough::async_trait]
impl Sign for TufSigner {
    fn tuf_key(&self) -> Key {
        tuf_key(&self.0.public_key())
    }

    async fn sign(
        &self,
        msg: &[u8],
        _rng: &(dyn aws_lc_rs::rand::SecureRandom + Sync),
    ) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(self.0.sign(msg)?.to_vec())
    }
}

#[tough::async_trait]
impl KeySource for TufSigner {
    async fn as_sign(
        &self,
    ) -> Result<Box<dyn Sign>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(Box::new(self.clone()))
    }

    async fn write(
        &self,
        _value: &str,
        _key_id_hex: &str,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Err("signers do not export keys".into())
    }
}

/// One role as `root.json` states it: its public keys and how many of them must sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// The Ed25519 public keys.
    pub keys: Vec<[u8; 32]>,
    /// Signatures of distinct keys needed.
    pub threshold: u64,
}

impl Role {
    fn check(&self, role: &'static str) -> Result<(), TufError> {
        let mut distinct = self.keys.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if self.threshold == 0 || self.threshold > distinct.len() as u64 {
            return Err(TufError::Threshold {
                role,
                threshold: self.threshold,
                keys: distinct.len(),
            });
        }
        Ok(())
    }
}

/// The four roles' public keys and thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles {
    /// Signs `root.json`.
    pub root: Role,
    /// Signs `targets.json` and the release tickets.
    pub targets: Role,
    /// Signs `snapshot.json`.
    pub snapshot: Role,
    /// Signs `timestamp.json`.
    pub timestamp: Role,
}

/// The signers a vendor has at hand. Which role each may sign for is what `root.json` says of
/// its public key, never what it is called.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    signers: Vec<SharedSigner>,
}

impl std::fmt::Debug for dyn Signer + Send + Sync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", hex::encode(self.public_key()))
    }
}

impl KeyRing {
    /// No signers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a signer.
    pub fn add(&mut self, signer: SharedSigner) -> &mut Self {
        self.signers.push(signer);
        self
    }

    /// Adds every signer of `other`.
    pub fn extend(&mut self, other: &KeyRing) -> &mut Self {
        self.signers.extend(other.signers.iter().cloned());
        self
    }

    /// The signers' public keys.
    pub fn public_keys(&self) -> Vec<[u8; 32]> {
        self.signers.iter().map(|s| s.public_key()).collect()
    }

    /// Every `*.key` file in `dir` (see [`VendorKey::save`]).
    ///
    /// # Errors
    ///
    /// [`TufError`] if the directory cannot be read or a key file is malformed.
    pub fn load_dir(dir: &Path) -> Result<Self, TufError> {
        let mut ring = Self::new();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "key"))
            .collect();
        paths.sort();
        for p in paths {
            ring.add(Arc::new(VendorKey::load(&p)?));
        }
        Ok(ring)
    }

    /// Signers of distinct keys among `role`'s.
    fn pick(&self, role: &Role) -> Vec<SharedSigner> {
        let mut seen: Vec<[u8; 32]> = Vec::new();
        let mut out = Vec::new();
        for s in &self.signers {
            let k = s.public_key();
            if role.keys.contains(&k) && !seen.contains(&k) {
                seen.push(k);
                out.push(s.clone());
            }
        }
        out
    }

    /// The signers for `role`, at least its threshold of them.
    fn for_role(&self, name: &'static str, role: &Role) -> Result<Vec<SharedSigner>, TufError> {
        let picked = self.pick(role);
        if (picked.len() as u64) < role.threshold {
            return Err(TufError::NotEnoughSigners {
                role: name,
                have: picked.len(),
                threshold: role.threshold,
            });
        }
        Ok(picked)
    }
}

fn sources(signers: &[SharedSigner]) -> Vec<Box<dyn KeySource>> {
    signers
        .iter()
        .map(|s| Box::new(TufSigner(s.clone())) as Box<dyn KeySource>)
        .collect()
}

/// The keys of one role, in memory, and how many must sign.
#[derive(Debug, Clone)]
pub struct RoleSet {
    /// The keys.
    pub keys: Vec<VendorKey>,
    /// Signatures needed.
    pub threshold: u64,
}

impl RoleSet {
    /// `n` fresh keys, `threshold` of which must sign.
    pub fn generate(n: usize, threshold: u64) -> Self {
        Self {
            keys: (0..n).map(|_| VendorKey::generate()).collect(),
            threshold,
        }
    }

    /// The role's public half.
    pub fn role(&self) -> Role {
        Role {
            keys: self.keys.iter().map(Signer::public_key).collect(),
            threshold: self.threshold,
        }
    }
}

/// Fresh keys for the four roles, in memory: for tests, demonstrations, and a vendor's first
/// key ceremony (then [`VendorKeys::save`] each key to its own file and keep the root keys
/// offline).
#[derive(Debug, Clone)]
pub struct VendorKeys {
    /// Signs `root.json`: which keys each role has.
    pub root: RoleSet,
    /// Signs `targets.json`: the releases.
    pub targets: RoleSet,
    /// Signs `snapshot.json`: which targets metadata is current.
    pub snapshot: RoleSet,
    /// Signs `timestamp.json`: freshness.
    pub timestamp: RoleSet,
}

impl VendorKeys {
    /// Fresh keys: two of three for root and targets, one key for snapshot and timestamp
    /// (the online roles).
    pub fn generate() -> Self {
        Self {
            root: RoleSet::generate(3, 2),
            targets: RoleSet::generate(3, 2),
            snapshot: RoleSet::generate(1, 1),
            timestamp: RoleSet::generate(1, 1),
        }
    }

    /// The public halves.
    pub fn roles(&self) -> Roles {
        Roles {
            root: self.root.role(),
            targets: self.targets.role(),
            snapshot: self.snapshot.role(),
            timestamp: self.timestamp.role(),
        }
    }

    fn sets(&self) -> [(&'static str, &RoleSet); 4] {
        [
            ("root", &self.root),
            ("targets", &self.targets),
            ("snapshot", &self.snapshot),
            ("timestamp", &self.timestamp),
        ]
    }

    /// Every key as a signer.
    pub fn ring(&self) -> KeyRing {
        let mut ring = KeyRing::new();
        for (_, set) in self.sets() {
            for k in &set.keys {
                ring.add(Arc::new(k.clone()));
            }
        }
        ring
    }

    /// The signers of the online roles only (targets, snapshot, timestamp): what the vendor's
    /// publishing machine holds while the root keys stay offline.
    pub fn online_ring(&self) -> KeyRing {
        let mut ring = KeyRing::new();
        for (name, set) in self.sets() {
            if name != "root" {
                for k in &set.keys {
                    ring.add(Arc::new(k.clone()));
                }
            }
        }
        ring
    }

    /// Writes each key to its own file in `dir`: `<role>-<n>.key`.
    ///
    /// # Errors
    ///
    /// [`TufError::Io`].
    pub fn save(&self, dir: &Path) -> Result<(), TufError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        for (name, set) in self.sets() {
            for (i, k) in set.keys.iter().enumerate() {
                k.save(&dir.join(format!("{name}-{i}.key")))?;
            }
        }
        Ok(())
    }
}

/// How long each role's metadata stays valid after it is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// `root.json`.
    pub root: Duration,
    /// `targets.json`.
    pub targets: Duration,
    /// `snapshot.json`.
    pub snapshot: Duration,
    /// `timestamp.json` and the release tickets: the shortest, re-signed by
    /// [`Vendor::refresh`].
    pub timestamp: Duration,
}

impl Default for Lifetimes {
    /// One year, three months, one week, one day.
    fn default() -> Self {
        Self {
            root: Duration::from_secs(365 * 86_400),
            targets: Duration::from_secs(90 * 86_400),
            snapshot: Duration::from_secs(7 * 86_400),
            timestamp: Duration::from_secs(86_400),
        }
    }
}

fn expiry(after: Duration) -> jiff::Timestamp {
    let now = jiff::Timestamp::now();
    let d = jiff::SignedDuration::try_from(after).unwrap_or(jiff::SignedDuration::MAX);
    now.checked_add(d).unwrap_or(jiff::Timestamp::MAX)
}

fn nonzero(v: u64) -> NonZeroU64 {
    NonZeroU64::new(v.max(1)).unwrap_or(NonZeroU64::MIN)
}

/// One release in the vendor's repository.
#[derive(Debug, Clone)]
struct Entry {
    release: Release,
    rollout: u16,
}

/// What `state.json` holds: everything of the repository that is not in signed metadata.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    /// The format of this file.
    format: u32,
    /// The version the last publication used (targets, snapshot and timestamp share it).
    version: u64,
    /// Lifetimes in seconds: root, targets, snapshot, timestamp.
    lifetimes: [u64; 4],
    /// Each release (hex of its postcard encoding) and its rollout.
    releases: Vec<(String, u16)>,
}

const STATE_FORMAT: u32 = 1;

/// The vendor's TUF repository: its metadata directory, its state, and the signers at hand.
#[derive(Debug)]
pub struct Vendor {
    dir: PathBuf,
    ring: KeyRing,
    lifetimes: Lifetimes,
    root: Root,
    version: u64,
    releases: BTreeMap<String, Entry>,
    rng: aws_lc_rs::rand::SystemRandom,
}

fn target_name(release: &Release) -> String {
    format!("{}/{}", release.product, release.version)
}

fn role_keys(role: &Role) -> Result<RoleKeys, TufError> {
    let mut ids = Vec::new();
    for k in &role.keys {
        let id = key_id(k)?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(RoleKeys {
        keyids: ids,
        threshold: nonzero(role.threshold),
        _extra: HashMap::new(),
    })
}

fn build_root(roles: &Roles, version: u64, lifetime: Duration) -> Result<Root, TufError> {
    roles.root.check("root")?;
    roles.targets.check("targets")?;
    roles.snapshot.check("snapshot")?;
    roles.timestamp.check("timestamp")?;
    let mut all = HashMap::new();
    for role in [
        &roles.root,
        &roles.targets,
        &roles.snapshot,
        &roles.timestamp,
    ] {
        for k in &role.keys {
            all.insert(key_id(k)?, tuf_key(k));
        }
    }
    let mut map = HashMap::new();
    map.insert(RoleType::Root, role_keys(&roles.root)?);
    map.insert(RoleType::Targets, role_keys(&roles.targets)?);
    map.insert(RoleType::Snapshot, role_keys(&roles.snapshot)?);
    map.insert(RoleType::Timestamp, role_keys(&roles.timestamp)?);
    Ok(Root {
        spec_version: "1.0.0".into(),
        consistent_snapshot: false,
        version: nonzero(version),
        expires: expiry(lifetime),
        keys: all,
        roles: map,
        _extra: HashMap::new(),
    })
}

/// A role of a root, as public keys and threshold.
fn role_of(root: &Root, role: RoleType) -> Role {
    let keys = root
        .keys(role)
        .filter_map(|k| match k {
            Key::Ed25519 { keyval, .. } => <[u8; 32]>::try_from(&keyval.public[..]).ok(),
            _ => None,
        })
        .collect();
    let threshold = root
        .roles
        .get(&role)
        .map_or(u64::MAX, |r| r.threshold.get());
    Role { keys, threshold }
}

fn secs(d: Duration) -> u64 {
    d.as_secs()
}

impl Vendor {
    /// Creates a repository in `dir` (its `metadata/` holds every signed file, `state.json`
    /// the releases and versions) with version 1 of `root.json`, the file devices are
    /// provisioned with ([`Vendor::trusted_root`]), signed by the root signers in `ring`.
    ///
    /// # Errors
    ///
    /// [`TufError::State`] if a repository exists there already; [`TufError::Threshold`] or
    /// [`TufError::NotEnoughSigners`] if a threshold cannot be met; [`TufError::Io`].
    pub async fn create(
        dir: impl Into<PathBuf>,
        roles: &Roles,
        ring: KeyRing,
        lifetimes: Lifetimes,
    ) -> Result<Self, TufError> {
        let dir = dir.into();
        let state = dir.join("state.json");
        if state.exists() {
            return Err(TufError::State {
                path: state,
                reason: "a repository exists here already: open it".into(),
            });
        }
        let meta = dir.join("metadata");
        std::fs::create_dir_all(&meta).map_err(io(&meta))?;
        let root = build_root(roles, 1, lifetimes.root)?;
        let signers = ring.for_role("root", &roles.root)?;
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signed = SignedRole::new(
            root.clone(),
            &KeyHolder::Root(root.clone()),
            &sources(&signers),
            &rng,
        )
        .await
        .map_err(repo_err)?;
        Self::write_root(&meta, 1, signed.buffer())?;
        let vendor = Self {
            dir,
            ring,
            lifetimes,
            root,
            version: 0,
            releases: BTreeMap::new(),
            rng,
        };
        vendor.save_state()?;
        Ok(vendor)
    }

    /// Reopens the repository in `dir` after a restart, with the signers in `ring` (the
    /// online roles' at least; the root keys only to [`Vendor::rotate`]). Versions continue
    /// from the last publication, releases keep their rollouts.
    ///
    /// # Errors
    ///
    /// [`TufError::State`] if there is no repository or its state does not parse;
    /// [`TufError::Io`].
    pub fn open(dir: impl Into<PathBuf>, ring: KeyRing) -> Result<Self, TufError> {
        let dir = dir.into();
        let path = dir.join("state.json");
        let bad = |reason: String| TufError::State {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read(&path).map_err(io(&path))?;
        let state: State =
            serde_json::from_slice(&text).map_err(|e| bad(format!("does not parse: {e}")))?;
        if state.format != STATE_FORMAT {
            return Err(bad(format!("format {} unknown", state.format)));
        }
        let mut releases = BTreeMap::new();
        for (hexed, rollout) in state.releases {
            let release: Release = hex::decode(&hexed)
                .ok()
                .and_then(|b| postcard::from_bytes(&b).ok())
                .ok_or_else(|| bad("a release does not decode".into()))?;
            release.validate()?;
            releases.insert(
                target_name(&release),
                Entry {
                    release,
                    rollout: rollout.min(ROLLOUT_ALL),
                },
            );
        }
        let root_path = dir.join("metadata").join("root.json");
        let root: Signed<Root> =
            serde_json::from_slice(&std::fs::read(&root_path).map_err(io(&root_path))?)
                .map_err(|e| bad(format!("root.json does not parse: {e}")))?;
        let [r, t, s, ts] = state.lifetimes.map(Duration::from_secs);
        Ok(Self {
            dir,
            ring,
            lifetimes: Lifetimes {
                root: r,
                targets: t,
                snapshot: s,
                timestamp: ts,
            },
            root: root.signed,
            version: state.version,
            releases,
            rng: aws_lc_rs::rand::SystemRandom::new(),
        })
    }

    fn save_state(&self) -> Result<(), TufError> {
        let state = State {
            format: STATE_FORMAT,
            version: self.version,
            lifetimes: [
                secs(self.lifetimes.root),
                secs(self.lifetimes.targets),
                secs(self.lifetimes.snapshot),
                secs(self.lifetimes.timestamp),
            ],
            releases: self
                .releases
                .values()
                .map(|e| {
                    (
                        hex::encode(postcard::to_allocvec(&e.release).unwrap_or_default()),
                        e.rollout,
                    )
                })
                .collect(),
        };
        let path = self.dir.join("state.json");
        let text = serde_json::to_vec_pretty(&state)
            .map_err(|e| TufError::Bundle(format!("state: {e}")))?;
        write_atomically(&path, &text, false).map_err(io(&path))
    }

    fn write_root(meta: &Path, version: u64, buf: &[u8]) -> Result<(), TufError> {
        for name in [format!("{version}.root.json"), "root.json".to_owned()] {
            let p = meta.join(name);
            write_atomically(&p, buf, false).map_err(io(&p))?;
        }
        Ok(())
    }

    fn meta(&self) -> PathBuf {
        self.dir.join("metadata")
    }

    /// The first `root.json`, to provision devices with.
    ///
    /// # Errors
    ///
    /// [`TufError::Io`].
    pub fn trusted_root(&self) -> Result<Vec<u8>, TufError> {
        let p = self.meta().join("1.root.json");
        std::fs::read(&p).map_err(io(&p))
    }

    /// The roles' public keys and thresholds now in force.
    pub fn roles(&self) -> Roles {
        Roles {
            root: role_of(&self.root, RoleType::Root),
            targets: role_of(&self.root, RoleType::Targets),
            snapshot: role_of(&self.root, RoleType::Snapshot),
            timestamp: role_of(&self.root, RoleType::Timestamp),
        }
    }

    /// The last metadata version published (0 before the first publication).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The rollout of `product` `version`, if released.
    pub fn rollout(&self, product: &str, version: &str) -> Option<u16> {
        self.releases
            .get(&format!("{product}/{version}"))
            .map(|e| e.rollout)
    }

    /// Adds a release at a rollout of `rollout` basis points (10,000 = every device) and
    /// re-signs targets, snapshot and timestamp.
    ///
    /// # Errors
    ///
    /// [`TufError`] if the release is out of bounds or signing fails.
    pub async fn release(&mut self, release: Release, rollout: u16) -> Result<Bundle, TufError> {
        release.validate()?;
        self.releases.insert(
            target_name(&release),
            Entry {
                release,
                rollout: rollout.min(ROLLOUT_ALL),
            },
        );
        self.publish().await
    }

    /// Raises, lowers or halts (0) the rollout of `product` `version`.
    ///
    /// # Errors
    ///
    /// [`TufError::UnknownRelease`], or signing fails.
    pub async fn set_rollout(
        &mut self,
        product: &str,
        version: &str,
        rollout: u16,
    ) -> Result<Bundle, TufError> {
        let name = format!("{product}/{version}");
        let e = self
            .releases
            .get_mut(&name)
            .ok_or(TufError::UnknownRelease(name))?;
        e.rollout = rollout.min(ROLLOUT_ALL);
        self.publish().await
    }

    /// Re-signs everything with new versions and expiry dates: keeps devices from taking the
    /// repository for frozen.
    ///
    /// # Errors
    ///
    /// Signing fails.
    pub async fn refresh(&mut self) -> Result<Bundle, TufError> {
        self.publish().await
    }

    /// Replaces the roles' keys with `roles` (after a compromise, to revoke a key, or by
    /// routine): `root.json` version N+1 is signed by a threshold of the old root keys and of
    /// the new, then everything is re-signed with the new keys. `ring` must hold those root
    /// signers and the new online roles' signers; it replaces the vendor's ring. Devices follow
    /// the chain; keys no longer listed sign nothing they accept afterwards.
    ///
    /// # Errors
    ///
    /// [`TufError`].
    pub async fn rotate(&mut self, roles: &Roles, ring: KeyRing) -> Result<Bundle, TufError> {
        let version = self.root.version.get() + 1;
        let new_root = build_root(roles, version, self.lifetimes.root)?;
        let new_signers = ring.for_role("root", &roles.root)?;
        let old_signers = ring.for_role("root", &role_of(&self.root, RoleType::Root))?;
        let by_new = SignedRole::new(
            new_root.clone(),
            &KeyHolder::Root(new_root.clone()),
            &sources(&new_signers),
            &self.rng,
        )
        .await
        .map_err(repo_err)?;
        let by_old = SignedRole::new(
            new_root.clone(),
            &KeyHolder::Root(self.root.clone()),
            &sources(&old_signers),
            &self.rng,
        )
        .await
        .map_err(repo_err)?;
        let both = by_new
            .add_old_signatures(by_old.signed().signatures.clone())
            .map_err(repo_err)?;
        // The online roles must be signable before the new root is written.
        ring.for_role("targets", &roles.targets)?;
        ring.for_role("snapshot", &roles.snapshot)?;
        ring.for_role("timestamp", &roles.timestamp)?;
        Self::write_root(&self.meta(), version, both.buffer())?;
        self.root = new_root;
        self.ring = ring;
        self.publish().await
    }

    async fn publish(&mut self) -> Result<Bundle, TufError> {
        let roles = self.roles();
        let targets = self.ring.for_role("targets", &roles.targets)?;
        let snapshot = self.ring.for_role("snapshot", &roles.snapshot)?;
        let timestamp = self.ring.for_role("timestamp", &roles.timestamp)?;
        // The version is taken before anything is signed with it: a vendor stopped halfway
        // never signs two different files with one version.
        self.version += 1;
        self.save_state()?;
        let meta = self.meta();
        let mut editor = RepositoryEditor::new(meta.join("root.json"))
            .await
            .map_err(repo_err)?;
        let v = nonzero(self.version);
        editor
            .targets_version(v)
            .map_err(repo_err)?
            .targets_expires(expiry(self.lifetimes.targets))
            .map_err(repo_err)?
            .snapshot_version(v)
            .snapshot_expires(expiry(self.lifetimes.snapshot))
            .timestamp_version(v)
            .timestamp_expires(expiry(self.lifetimes.timestamp));
        let issued = now_secs();
        let expires = issued.saturating_add(self.lifetimes.timestamp.as_secs());
        let ticket_signers: Vec<&(dyn Signer + Send + Sync)> = targets
            .iter()
            .take(MAX_SIGNATURES)
            .map(|s| s.as_ref())
            .collect();
        for (name, e) in &self.releases {
            let stage = Stage {
                rollout: e.rollout,
                issued,
                expires,
            };
            let ticket = e.release.sign(stage, &ticket_signers)?.encode();
            let mut custom = HashMap::new();
            custom.insert(
                "release".to_owned(),
                serde_json::Value::String(hex::encode(&ticket)),
            );
            custom.insert("rollout".to_owned(), serde_json::Value::from(e.rollout));
            let target = Target {
                length: e.release.size,
                hashes: Hashes {
                    sha256: Decoded::from(e.release.sha256.to_vec()),
                    _extra: HashMap::new(),
                },
                custom,
                _extra: HashMap::new(),
            };
            let name = TargetName::new(name.clone()).map_err(repo_err)?;
            editor.add_target(name, target).map_err(repo_err)?;
        }
        let mut all = sources(&targets);
        all.extend(sources(&snapshot));
        all.extend(sources(&timestamp));
        let signed = editor.sign(&all).await.map_err(repo_err)?;
        signed.write(&meta).await.map_err(repo_err)?;
        self.bundle()
    }

    /// The current metadata as a bundle: timestamp, snapshot, targets and every root after
    /// the first.
    ///
    /// # Errors
    ///
    /// [`TufError::Io`].
    pub fn bundle(&self) -> Result<Bundle, TufError> {
        let meta = self.meta();
        let mut files = BTreeMap::new();
        for v in 2..=self.root.version.get() {
            let name = format!("{v}.root.json");
            let p = meta.join(&name);
            files.insert(name, std::fs::read(&p).map_err(io(&p))?);
        }
        for name in ["timestamp.json", "snapshot.json", "targets.json"] {
            let p = meta.join(name);
            if p.exists() {
                files.insert(name.to_owned(), std::fs::read(&p).map_err(io(&p))?);
            }
        }
        Bundle::new(files)
    }
}

/// Largest encoded bundle (it travels in one pub/sub message).
pub const MAX_BUNDLE: usize = 60 * 1024;
/// Most files in a bundle.
pub const MAX_BUNDLE_FILES: usize = 64;

/// A set of TUF metadata files, as announced. Untrusted until [`Trust::check`] accepts it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    files: BTreeMap<String, Vec<u8>>,
}

fn valid_name(name: &str) -> bool {
    matches!(name, "timestamp.json" | "snapshot.json" | "targets.json")
        || name.strip_suffix(".root.json").is_some_and(|v| {
            !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit())
        })
}

impl Bundle {
    /// A bundle of these files.
    ///
    /// # Errors
    ///
    /// [`TufError::Bundle`] for a name that is not TUF metadata or a bundle beyond its bounds.
    pub fn new(files: BTreeMap<String, Vec<u8>>) -> Result<Self, TufError> {
        let b = Self { files };
        b.check()?;
        Ok(b)
    }

    fn check(&self) -> Result<(), TufError> {
        if self.files.len() > MAX_BUNDLE_FILES {
            return Err(TufError::Bundle(format!(
                "{} files, at most {MAX_BUNDLE_FILES}",
                self.files.len()
            )));
        }
        if let Some(bad) = self.files.keys().find(|n| !valid_name(n)) {
            return Err(TufError::Bundle(format!("unexpected file {bad:?}")));
        }
        let size: usize = self.files.iter().map(|(n, f)| n.len() + f.len()).sum();
        if size > MAX_BUNDLE {
            return Err(TufError::Bundle(format!(
                "{size} bytes, at most {MAX_BUNDLE}"
            )));
        }
        Ok(())
    }

    /// The version `timestamp.json` claims, unverified: only a hint to skip bundles older than
    /// one already accepted (stale copies keep circulating on a topic), never a reason to trust.
    pub fn claimed_version(&self) -> Option<u64> {
        let ts: serde_json::Value = serde_json::from_slice(self.file("timestamp.json")?).ok()?;
        ts.get("signed")?.get("version")?.as_u64()
    }

    /// One file.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(Vec::as_slice)
    }

    /// Replaces or adds a file (for tests of tampered metadata, and mirrors).
    pub fn set_file(&mut self, name: &str, data: Vec<u8>) {
        self.files.insert(name.to_owned(), data);
    }

    /// Removes a file.
    pub fn remove_file(&mut self, name: &str) {
        self.files.remove(name);
    }

    /// Encodes for the wire (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes untrusted bytes, refusing unknown file names and oversized bundles.
    ///
    /// # Errors
    ///
    /// [`TufError::Bundle`].
    pub fn decode(bytes: &[u8]) -> Result<Self, TufError> {
        if bytes.len() > MAX_BUNDLE + 1024 {
            return Err(TufError::Bundle(format!(
                "{} bytes, at most {MAX_BUNDLE}",
                bytes.len()
            )));
        }
        let b: Bundle = postcard::from_bytes(bytes).map_err(|e| TufError::Bundle(e.to_string()))?;
        b.check()?;
        if b.encode() != bytes {
            return Err(TufError::Bundle("not in canonical form".into()));
        }
        Ok(b)
    }
}

/// Serves a bundle's files to tough's loader.
#[derive(Debug, Clone)]
struct BundleTransport(Bundle);

#[tough::async_trait]
impl Transport for BundleTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        let name = url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .unwrap_or_default()
            .to_owned();
        match self.0.files.get(&name) {
            Some(data) => {
                let bytes = bytes::Bytes::from(data.clone());
                Ok(Box::pin(futures::stream::once(async move { Ok(bytes) })))
            }
            None => Err(TransportError::new(TransportErrorKind::FileNotFound, url)),
        }
    }
}

/// A release a device may install, from verified metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The release (its ticket verified against the targets keys of the trusted root).
    pub release: Release,
    /// The signed ticket, as the vendor signed it.
    pub ticket: Vec<u8>,
    /// The stage the ticket states (rollout, issued, expires), checked unexpired.
    pub stage: Stage,
}

/// What a device trusts: its provisioned root and a datastore of the newest metadata seen.
#[derive(Debug, Clone)]
pub struct Trust {
    root: Vec<u8>,
    datastore: PathBuf,
}

impl Trust {
    /// Trust anchored in `root` (the vendor's first `root.json`), remembering what it has seen
    /// in `datastore` (a directory; keep it across restarts, or rollback protection is lost).
    pub fn new(root: Vec<u8>, datastore: impl Into<PathBuf>) -> Self {
        Self {
            root,
            datastore: datastore.into(),
        }
    }

    /// Runs TUF's client workflow over `bundle` and returns every release it lists, each
    /// ticket verified against the targets keys and threshold of the newest trusted root and
    /// matching its target's length and digest.
    ///
    /// # Errors
    ///
    /// [`TufError::Refused`] for anything TUF refuses (bad or too few signatures, expired
    /// metadata, a version older than one seen before, mismatched snapshot, ...);
    /// [`TufError::Target`] for a target whose ticket fails (signatures, expiry against the
    /// system clock, a rollout that disagrees with the target's).
    pub async fn check(&self, bundle: &Bundle) -> Result<Vec<Offer>, TufError> {
        std::fs::create_dir_all(&self.datastore).map_err(io(&self.datastore))?;
        // The newest root trusted so far, or the provisioned one.
        let saved = self.datastore.join("root.json");
        let root = match std::fs::read(&saved) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.root.clone(),
            Err(e) => return Err(io(&saved)(e)),
        };
        let base = Url::parse("streamspace-update:///metadata/")
            .map_err(|e| TufError::Bundle(format!("base URL: {e}")))?;
        let repo = RepositoryLoader::new(&root, base.clone(), base)
            .transport(BundleTransport(bundle.clone()))
            .datastore(self.datastore.clone())
            .expiration_enforcement(ExpirationEnforcement::Safe)
            .load()
            .await
            .map_err(|e| TufError::Refused(Box::new(e)))?;
        let (trusted, threshold) = targets_role(&repo.root().signed);
        let mut offers = Vec::new();
        for (name, target) in &repo.targets().signed.targets {
            let name = name.raw().to_owned();
            let bad = |reason: String| TufError::Target {
                target: name.clone(),
                reason,
            };
            let ticket = target
                .custom
                .get("release")
                .and_then(|v| v.as_str())
                .ok_or_else(|| bad("no release ticket".into()))?;
            let ticket = hex::decode(ticket).map_err(|e| bad(format!("ticket: {e}")))?;
            let signed = SignedRelease::decode(&ticket).map_err(|e| bad(e.to_string()))?;
            let release = signed
                .verify(&trusted, threshold)
                .map_err(|e| bad(e.to_string()))?
                .clone();
            let stage = *signed.stage();
            signed
                .check_stage(now_secs(), 0)
                .map_err(|e| bad(e.to_string()))?;
            if release.size != target.length || release.sha256[..] != target.hashes.sha256[..] {
                return Err(bad(
                    "ticket disagrees with the target's length or hash".into()
                ));
            }
            if target_name(&release) != name {
                return Err(bad("ticket names another release".into()));
            }
            let rollout = target
                .custom
                .get("rollout")
                .and_then(|v| v.as_u64())
                .and_then(|v| u16::try_from(v).ok())
                .ok_or_else(|| bad("no rollout".into()))?;
            if rollout != stage.rollout {
                return Err(bad("ticket and target disagree on the rollout".into()));
            }
            offers.push(Offer {
                release,
                ticket,
                stage,
            });
        }
        Ok(offers)
    }

    /// The public keys and threshold of the targets role in the newest root this device
    /// trusts: what a microcontroller behind this device is provisioned with to check tickets.
    ///
    /// # Errors
    ///
    /// [`TufError`] if the saved root does not parse.
    pub fn targets_keys(&self) -> Result<(Vec<[u8; 32]>, usize), TufError> {
        let saved = self.datastore.join("root.json");
        let root = std::fs::read(&saved).unwrap_or_else(|_| self.root.clone());
        let root: Signed<Root> = serde_json::from_slice(&root)
            .map_err(|e| TufError::Bundle(format!("root.json: {e}")))?;
        Ok(targets_role(&root.signed))
    }
}

/// The Ed25519 keys of a root's targets role and its threshold (`usize::MAX`, never met, if
/// the role is missing).
fn targets_role(root: &Root) -> (Vec<[u8; 32]>, usize) {
    let keys = root
        .keys(RoleType::Targets)
        .filter_map(|k| match k {
            Key::Ed25519 { keyval, .. } => <[u8; 32]>::try_from(&keyval.public[..]).ok(),
            _ => None,
        })
        .collect();
    let threshold = root.roles.get(&RoleType::Targets).map_or(usize::MAX, |r| {
        usize::try_from(r.threshold.get()).unwrap_or(usize::MAX)
    });
    (keys, threshold)
}
