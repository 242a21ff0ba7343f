//! The Update Framework on the vendor's side and the device's: metadata written and checked by
//! [`tough`] (the TUF implementation behind Bottlerocket's updates), carried as a [`Bundle`]
//! over the network.
//!
//! The vendor holds the keys of the four TUF roles (root, targets, snapshot, timestamp), each
//! with a threshold. Every release is a TUF target named `<product>/<version>`, whose length
//! and SHA-256 are the installed image's and whose custom field carries the [`SignedRelease`]
//! (signed by the targets keys) and the rollout in basis points. A device is provisioned with
//! the first `root.json`; [`Trust::check`] runs TUF's client workflow (spec §5) through tough:
//! root rotation with cross-signatures, expiry of every role (freeze), version checks against
//! what the device trusted before (rollback, persisted in its datastore), snapshot and
//! timestamp hashes (mix-and-match), thresholds (a compromised key below threshold signs
//! nothing that counts, and rotated-out keys sign nothing at all).

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
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

use crate::release::{ROLLOUT_ALL, Release, ReleaseError, SignedRelease};

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
    /// A role set that cannot work (threshold 0 or above its number of keys).
    #[error("role {role}: threshold {threshold} with {keys} keys")]
    Threshold {
        /// The role.
        role: &'static str,
        /// Its threshold.
        threshold: u64,
        /// Its keys.
        keys: usize,
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

fn key_id(k: &VendorKey) -> Result<Decoded<tough::schema::decoded::Hex>, TufError> {
    k.tuf_key()
        .key_id()
        .map_err(|e| TufError::Bundle(format!("key id: {e}")))
}

/// An Ed25519 key of one of the vendor's TUF roles.
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
        Key::Ed25519 {
            keyval: Ed25519Key {
                public: Decoded::from(self.0.verifying_key().to_bytes().to_vec()),
                _extra: HashMap::new(),
            },
            scheme: Ed25519Scheme::Ed25519,
            _extra: HashMap::new(),
        }
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

#[tough::async_trait]
impl Sign for VendorKey {
    fn tuf_key(&self) -> Key {
        VendorKey::tuf_key(self)
    }

    async fn sign(
        &self,
        msg: &[u8],
        _rng: &(dyn aws_lc_rs::rand::SecureRandom + Sync),
    ) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        use ed25519_dalek::Signer;
        Ok(self.0.sign(msg).to_bytes().to_vec())
    }
}

#[tough::async_trait]
impl KeySource for VendorKey {
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
        Err("vendor keys are held in memory; store their seeds yourself".into())
    }
}

/// The keys of one role and how many must sign.
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

    fn check(&self, role: &'static str) -> Result<(), TufError> {
        if self.threshold == 0 || self.threshold > self.keys.len() as u64 {
            return Err(TufError::Threshold {
                role,
                threshold: self.threshold,
                keys: self.keys.len(),
            });
        }
        Ok(())
    }

    fn sources(&self) -> Vec<Box<dyn KeySource>> {
        self.keys
            .iter()
            .map(|k| Box::new(k.clone()) as Box<dyn KeySource>)
            .collect()
    }
}

/// The vendor's four roles.
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
}

/// How long each role's metadata stays valid after it is signed.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// `root.json`.
    pub root: Duration,
    /// `targets.json`.
    pub targets: Duration,
    /// `snapshot.json`.
    pub snapshot: Duration,
    /// `timestamp.json`: the shortest, re-signed by [`Vendor::refresh`].
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
    ticket: Vec<u8>,
    release: Release,
    rollout: u16,
}

/// The vendor's TUF repository: keys, releases and the metadata directory.
#[derive(Debug)]
pub struct Vendor {
    dir: PathBuf,
    keys: VendorKeys,
    lifetimes: Lifetimes,
    root: Root,
    version: u64,
    releases: BTreeMap<String, Entry>,
    rng: aws_lc_rs::rand::SystemRandom,
}

fn target_name(release: &Release) -> String {
    format!("{}/{}", release.product, release.version)
}

fn role_keys(set: &RoleSet) -> Result<RoleKeys, TufError> {
    let mut ids = Vec::new();
    for k in &set.keys {
        ids.push(key_id(k)?);
    }
    Ok(RoleKeys {
        keyids: ids,
        threshold: nonzero(set.threshold),
        _extra: HashMap::new(),
    })
}

fn build_root(keys: &VendorKeys, version: u64, lifetime: Duration) -> Result<Root, TufError> {
    keys.root.check("root")?;
    keys.targets.check("targets")?;
    keys.snapshot.check("snapshot")?;
    keys.timestamp.check("timestamp")?;
    let mut all = HashMap::new();
    for set in [&keys.root, &keys.targets, &keys.snapshot, &keys.timestamp] {
        for k in &set.keys {
            all.insert(key_id(k)?, k.tuf_key());
        }
    }
    let mut roles = HashMap::new();
    roles.insert(RoleType::Root, role_keys(&keys.root)?);
    roles.insert(RoleType::Targets, role_keys(&keys.targets)?);
    roles.insert(RoleType::Snapshot, role_keys(&keys.snapshot)?);
    roles.insert(RoleType::Timestamp, role_keys(&keys.timestamp)?);
    Ok(Root {
        spec_version: "1.0.0".into(),
        consistent_snapshot: false,
        version: nonzero(version),
        expires: expiry(lifetime),
        keys: all,
        roles,
        _extra: HashMap::new(),
    })
}

impl Vendor {
    /// Creates a repository in `dir` (its `metadata/` holds every signed file) with version 1
    /// of `root.json`, the file devices are provisioned with ([`Vendor::trusted_root`]).
    ///
    /// # Errors
    ///
    /// [`TufError`] if a threshold cannot be met or the files cannot be written.
    pub async fn create(
        dir: impl Into<PathBuf>,
        keys: VendorKeys,
        lifetimes: Lifetimes,
    ) -> Result<Self, TufError> {
        let dir = dir.into();
        let meta = dir.join("metadata");
        std::fs::create_dir_all(&meta).map_err(io(&meta))?;
        let root = build_root(&keys, 1, lifetimes.root)?;
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signed = SignedRole::new(
            root.clone(),
            &KeyHolder::Root(root.clone()),
            &keys.root.sources(),
            &rng,
        )
        .await
        .map_err(repo_err)?;
        Self::write_root(&meta, 1, signed.buffer())?;
        Ok(Self {
            dir,
            keys,
            lifetimes,
            root,
            version: 0,
            releases: BTreeMap::new(),
            rng,
        })
    }

    fn write_root(meta: &Path, version: u64, buf: &[u8]) -> Result<(), TufError> {
        for name in [format!("{version}.root.json"), "root.json".to_owned()] {
            let p = meta.join(name);
            std::fs::write(&p, buf).map_err(io(&p))?;
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

    /// The keys now in use.
    pub fn keys(&self) -> &VendorKeys {
        &self.keys
    }

    /// Adds a release at a rollout of `rollout` basis points (10,000 = every device) and
    /// re-signs targets, snapshot and timestamp.
    ///
    /// # Errors
    ///
    /// [`TufError`] if the release is out of bounds or signing fails.
    pub async fn release(&mut self, release: Release, rollout: u16) -> Result<Bundle, TufError> {
        let keys: Vec<&SigningKey> = self
            .keys
            .targets
            .keys
            .iter()
            .map(VendorKey::signing_key)
            .collect();
        let ticket = release.sign(&keys)?.encode();
        self.releases.insert(
            target_name(&release),
            Entry {
                ticket,
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

    /// Replaces the keys of every role with `keys` (after a compromise, or by routine):
    /// `root.json` version N+1 is signed by a threshold of the old root keys and of the new,
    /// then everything is re-signed with the new keys. Devices follow the chain; the old keys
    /// sign nothing they accept afterwards.
    ///
    /// # Errors
    ///
    /// [`TufError`].
    pub async fn rotate(&mut self, keys: VendorKeys) -> Result<Bundle, TufError> {
        let version = self.root.version.get() + 1;
        let new_root = build_root(&keys, version, self.lifetimes.root)?;
        let by_new = SignedRole::new(
            new_root.clone(),
            &KeyHolder::Root(new_root.clone()),
            &keys.root.sources(),
            &self.rng,
        )
        .await
        .map_err(repo_err)?;
        let by_old = SignedRole::new(
            new_root.clone(),
            &KeyHolder::Root(self.root.clone()),
            &self.keys.root.sources(),
            &self.rng,
        )
        .await
        .map_err(repo_err)?;
        let both = by_new
            .add_old_signatures(by_old.signed().signatures.clone())
            .map_err(repo_err)?;
        Self::write_root(&self.meta(), version, both.buffer())?;
        self.root = new_root;
        self.keys = keys;
        // Tickets are signed by the targets keys: sign them again.
        let signing: Vec<SigningKey> = self
            .keys
            .targets
            .keys
            .iter()
            .map(|k| k.signing_key().clone())
            .collect();
        let refs: Vec<&SigningKey> = signing.iter().collect();
        for e in self.releases.values_mut() {
            e.ticket = e.release.sign(&refs)?.encode();
        }
        self.publish().await
    }

    async fn publish(&mut self) -> Result<Bundle, TufError> {
        self.version += 1;
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
        for (name, e) in &self.releases {
            let mut custom = HashMap::new();
            custom.insert(
                "release".to_owned(),
                serde_json::Value::String(hex::encode(&e.ticket)),
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
        let mut sources = self.keys.targets.sources();
        sources.extend(self.keys.snapshot.sources());
        sources.extend(self.keys.timestamp.sources());
        let signed = editor.sign(&sources).await.map_err(repo_err)?;
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
    /// The rollout in basis points.
    pub rollout: u16,
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
    /// [`TufError::Target`] for a target whose ticket fails.
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
            offers.push(Offer {
                release,
                ticket,
                rollout: rollout.min(ROLLOUT_ALL),
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
