//! The device agent: hears of releases, decides, fetches from peers, verifies, installs into
//! the inactive slot of an A/B pair, reports, and keeps serving the image.
//!
//! # Slots
//!
//! A device's slot directory holds `a.img`, `b.img` and `boot`, which names the active slot
//! and its version (`a 1.0.0`). An install writes the new image to `<inactive>.img.part`,
//! hashing it as it goes, syncs it, renames it to `<inactive>.img` only once size and SHA-256
//! match the release, and then replaces `boot` (write, sync, rename). Power lost at any point
//! leaves `boot` naming a complete, verified image: the old one until the last rename. Blocks
//! already fetched stay in the device's disk store, so the next attempt fetches only the rest.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cid::Cid;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use streamspace_shard::crypto::cat_decrypted;
use streamspace_shard::export::{ByteRange, cat};
use streamspace_shard::keywrap::RecipientKey;
use streamspace_shard::store::DiskStore;
use streamspace_transport::{FetchOptions, Node, NodeEvent, PeerId};
use tokio::io::AsyncWriteExt;

use crate::keys::{KeyError, image_key};
use crate::release::{Release, ReleaseError};
use crate::tuf::{Bundle, Offer, Trust, TufError};
use crate::verify::{ImageError, ImageVerifier};

/// The pub/sub topic of a product's announcements.
pub fn topic(product: &str) -> String {
    format!("/streamspace/update/{product}")
}

/// Largest report message.
const MAX_REPORT: usize = 1024;

/// An installation's outcome, as a device reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The device.
    pub device: String,
    /// The release version it concerns.
    pub version: String,
    /// `None` if installed; otherwise why not.
    pub error: Option<String>,
}

/// A message on a product's topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Announcement {
    /// The vendor's current metadata (or a device's copy of it, on request).
    Bundle(Bundle),
    /// A device asks for the current metadata.
    Request,
    /// A device reports an installation.
    Report(Report),
}

impl Announcement {
    /// Encodes for the topic (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes untrusted bytes (bundles are checked for names and bounds; their contents
    /// remain untrusted until [`Trust::check`]).
    ///
    /// # Errors
    ///
    /// [`TufError::Bundle`].
    pub fn decode(bytes: &[u8]) -> Result<Self, TufError> {
        let a: Announcement =
            postcard::from_bytes(bytes).map_err(|e| TufError::Bundle(e.to_string()))?;
        match &a {
            Announcement::Bundle(b) => {
                // Re-checks names and bounds.
                Bundle::decode(&b.encode())?;
            }
            Announcement::Report(r) => {
                if r.device.len() + r.version.len() + r.error.as_ref().map_or(0, String::len)
                    > MAX_REPORT
                {
                    return Err(TufError::Bundle("report too long".into()));
                }
            }
            Announcement::Request => {}
        }
        if a.encode() != bytes {
            return Err(TufError::Bundle("not in canonical form".into()));
        }
        Ok(a)
    }
}

/// What went wrong on the device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// Metadata refused.
    #[error(transparent)]
    Tuf(#[from] TufError),
    /// The release refused (rollback, too old to upgrade, ...).
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// The image does not match the release.
    #[error("image: {0}")]
    Image(#[from] ImageError),
    /// The image could not be fetched.
    #[error("fetch: {0}")]
    Fetch(#[from] streamspace_transport::FetchError),
    /// The image could not be read back from the store (missing or malformed blocks).
    #[error("reading the image back: {0}")]
    Export(String),
    /// The image key could not be had.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The release's image is not a CID.
    #[error("release names an invalid CID")]
    Cid,
    /// Slot files.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The `boot` file is not `<a|b> <version>`.
    #[error("{0}: malformed boot file")]
    Boot(PathBuf),
    /// The block store.
    #[error("store: {0}")]
    Store(#[from] streamspace_shard::store::StoreError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Self {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

/// What the device boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootState {
    /// The active slot.
    pub active: Slot,
    /// Its version.
    pub version: String,
}

/// An A/B slot pair in a directory.
#[derive(Debug, Clone)]
pub struct Slots {
    dir: PathBuf,
}

fn write_atomically(path: &Path, data: &[u8]) -> Result<(), AgentError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> Result<(), AgentError> {
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

impl Slots {
    /// The slots in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Writes a factory image to slot A and boots it (a device leaving the factory).
    ///
    /// # Errors
    ///
    /// [`AgentError::Io`].
    pub fn provision(&self, version: &str, image: &[u8]) -> Result<(), AgentError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        write_atomically(&self.image(Slot::A), image)?;
        self.set_boot(&BootState {
            active: Slot::A,
            version: version.to_owned(),
        })
    }

    /// The path of a slot's image.
    pub fn image(&self, slot: Slot) -> PathBuf {
        self.dir.join(format!("{}.img", slot.name()))
    }

    /// What boots now.
    ///
    /// # Errors
    ///
    /// [`AgentError::Io`] or [`AgentError::Boot`].
    pub fn boot(&self) -> Result<BootState, AgentError> {
        let p = self.dir.join("boot");
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        let mut parts = text.split_whitespace();
        let active = match parts.next() {
            Some("a") => Slot::A,
            Some("b") => Slot::B,
            _ => return Err(AgentError::Boot(p)),
        };
        let version = parts.next().ok_or_else(|| AgentError::Boot(p.clone()))?;
        if parts.next().is_some() || semver::Version::parse(version).is_err() {
            return Err(AgentError::Boot(p));
        }
        Ok(BootState {
            active,
            version: version.to_owned(),
        })
    }

    fn set_boot(&self, state: &BootState) -> Result<(), AgentError> {
        write_atomically(
            &self.dir.join("boot"),
            format!("{} {}\n", state.active.name(), state.version).as_bytes(),
        )
    }

    /// Writes `image` (a stream of pieces) into the inactive slot, verifying it against
    /// `release` on the way, and switches `boot` to it once it is complete and verified.
    /// On any error the inactive slot's partial file is removed and `boot` is unchanged.
    ///
    /// # Errors
    ///
    /// [`AgentError::Image`] if the image is too long, too short or has another digest.
    pub async fn install<E: std::fmt::Display>(
        &self,
        release: &Release,
        image: impl Stream<Item = Result<bytes::Bytes, E>>,
    ) -> Result<Slot, AgentError> {
        let current = self.boot()?;
        let target = current.active.other();
        let part = self.dir.join(format!("{}.img.part", target.name()));
        let result = async {
            let mut file = tokio::fs::File::create(&part).await.map_err(io(&part))?;
            let mut verifier = ImageVerifier::for_release(release);
            let mut image = std::pin::pin!(image);
            while let Some(piece) = image.next().await {
                let piece = piece.map_err(|e| AgentError::Export(e.to_string()))?;
                verifier.update(&piece)?;
                file.write_all(&piece).await.map_err(io(&part))?;
            }
            verifier.finish()?;
            file.sync_all().await.map_err(io(&part))?;
            Ok::<_, AgentError>(())
        }
        .await;
        if let Err(e) = result {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
        let dest = self.image(target);
        std::fs::rename(&part, &dest).map_err(io(&dest))?;
        sync_dir(&dest)?;
        self.set_boot(&BootState {
            active: target,
            version: release.version.clone(),
        })?;
        Ok(target)
    }
}

/// Fetch options suited to updates: a window of one block (the root; nothing is played back
/// in order), so every other block goes rarest-first to whoever holds it and devices take
/// blocks from each other rather than all from the vendor; the image announced in the DHT once
/// held.
pub fn update_fetch_options() -> FetchOptions {
    FetchOptions {
        window: 1,
        announce: true,
        ..FetchOptions::default()
    }
}

/// A device's identity and situation.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// The product it runs.
    pub product: String,
    /// Its channel.
    pub channel: String,
    /// A stable identifier (decides its place in staged rollouts).
    pub device_id: String,
    /// Its device group and the group's key, for encrypted images.
    pub group: Option<(String, Arc<RecipientKey>)>,
    /// How images are fetched (see [`update_fetch_options`]).
    pub fetch: FetchOptions,
}

/// What the device makes of the metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A release to install.
    Install(Box<Offer>),
    /// Nothing newer for this product and channel (or only releases it may not take).
    UpToDate,
    /// A newer release whose rollout has not reached this device (yet), or is halted.
    NotInRollout {
        /// Its version.
        version: String,
        /// The device's bucket, in `0..10_000`.
        bucket: u16,
        /// The rollout, in basis points.
        rollout: u16,
    },
}

/// What an installation did.
#[derive(Debug, Clone)]
pub struct InstallReport {
    /// The version installed.
    pub version: String,
    /// The slot it went to.
    pub slot: Slot,
    /// Blocks of the image.
    pub blocks: u64,
    /// Of those, fetched now (the rest were stored already, say before a power loss).
    pub fetched: u64,
    /// Bytes received per peer.
    pub bytes_from: std::collections::HashMap<PeerId, u64>,
    /// Time from start to switched boot.
    pub elapsed: Duration,
}

/// The agent on one device.
pub struct Agent {
    node: Node<DiskStore>,
    trust: Trust,
    slots: Slots,
    config: DeviceConfig,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("device", &self.config.device_id)
            .field("peer", &self.node.peer_id())
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// An agent on `node` (whose disk store keeps fetched blocks and serves them), trusting
    /// `trust`, installing into `slots`.
    pub fn new(node: Node<DiskStore>, trust: Trust, slots: Slots, config: DeviceConfig) -> Self {
        Self {
            node,
            trust,
            slots,
            config,
        }
    }

    /// The node.
    pub fn node(&self) -> &Node<DiskStore> {
        &self.node
    }

    /// The slots.
    pub fn slots(&self) -> &Slots {
        &self.slots
    }

    /// Checks `bundle` (TUF) and decides.
    ///
    /// # Errors
    ///
    /// [`AgentError::Tuf`] if the metadata is refused.
    pub async fn consider(&self, bundle: &Bundle) -> Result<Decision, AgentError> {
        let offers = self.trust.check(bundle).await?;
        let installed = self.slots.boot()?.version;
        let mut best: Option<(semver::Version, Offer)> = None;
        for o in offers {
            let r = &o.release;
            if r.product != self.config.product || r.channel != self.config.channel {
                continue;
            }
            if r.upgrades_from(&installed).is_err() {
                continue;
            }
            let Ok(v) = semver::Version::parse(&r.version) else {
                continue;
            };
            if best.as_ref().is_none_or(|(b, _)| v > *b) {
                best = Some((v, o));
            }
        }
        let Some((_, offer)) = best else {
            return Ok(Decision::UpToDate);
        };
        let id = self.config.device_id.as_bytes();
        if !offer.release.in_rollout(id, offer.rollout) {
            return Ok(Decision::NotInRollout {
                version: offer.release.version.clone(),
                bucket: offer.release.rollout_bucket(id),
                rollout: offer.rollout,
            });
        }
        Ok(Decision::Install(Box::new(offer)))
    }

    /// Fetches the offered image from peers (every block verified against its CID on
    /// arrival), writes it to the inactive slot verifying size and SHA-256, switches `boot`,
    /// pins the image in the store (so the device keeps serving it, within its quota) and
    /// unpins the one it replaces.
    ///
    /// # Errors
    ///
    /// [`AgentError`]; `boot` is unchanged on every error.
    pub async fn install(&self, offer: &Offer) -> Result<InstallReport, AgentError> {
        self.install_with(offer, &[]).await
    }

    /// [`Agent::install`], also asking `also_ask` for the image (say, the peer that announced
    /// the release) besides the providers the DHT finds.
    ///
    /// # Errors
    ///
    /// As [`Agent::install`].
    pub async fn install_with(
        &self,
        offer: &Offer,
        also_ask: &[PeerId],
    ) -> Result<InstallReport, AgentError> {
        let start = Instant::now();
        let release = &offer.release;
        release.upgrades_from(&self.slots.boot()?.version)?;
        let root = Cid::try_from(release.image.as_slice()).map_err(|_| AgentError::Cid)?;
        let key = match &self.config.group {
            Some((group, k)) if !release.keys.is_empty() => Some(image_key(release, group, k)?),
            _ if !release.keys.is_empty() => {
                return Err(KeyError::NoKeyForGroup(String::new()).into());
            }
            _ => None,
        };
        let mut options = self.config.fetch.clone();
        for p in also_ask {
            if !options.peers.contains(p) && *p != self.node.peer_id() {
                options.peers.push(*p);
            }
        }
        let fetched = self.node.fetch(root, options).await?;
        let store = self.node.store().as_ref();
        let slot = match &key {
            Some(key) => {
                self.slots
                    .install(
                        release,
                        cat_decrypted(store, root, key, ByteRange::new(0, None)),
                    )
                    .await?
            }
            None => {
                self.slots
                    .install(release, cat(store, root, ByteRange::new(0, None)))
                    .await?
            }
        };
        store.pin(&root).await?;
        let pinned = self.slots.dir.join("pinned");
        if let Ok(old) = std::fs::read_to_string(&pinned)
            && let Ok(old) = Cid::try_from(old.trim())
            && old != root
        {
            store.unpin(&old).await?;
        }
        write_atomically(&pinned, root.to_string().as_bytes())?;
        tracing::info!(device = %self.config.device_id, version = %release.version, ?slot, "installed");
        Ok(InstallReport {
            version: release.version.clone(),
            slot,
            blocks: fetched.blocks,
            fetched: fetched.fetched,
            bytes_from: fetched.bytes_from,
            elapsed: start.elapsed(),
        })
    }

    /// [`Agent::consider`], then [`Agent::install`] if the decision is to.
    ///
    /// # Errors
    ///
    /// As those.
    pub async fn update(&self, bundle: &Bundle) -> Result<Option<InstallReport>, AgentError> {
        self.update_with(bundle, &[]).await
    }

    /// [`Agent::update`], also asking `also_ask` for the image.
    ///
    /// # Errors
    ///
    /// As [`Agent::update`].
    pub async fn update_with(
        &self,
        bundle: &Bundle,
        also_ask: &[PeerId],
    ) -> Result<Option<InstallReport>, AgentError> {
        match self.consider(bundle).await? {
            Decision::Install(offer) => Ok(Some(self.install_with(&offer, also_ask).await?)),
            _ => Ok(None),
        }
    }

    /// Runs until `stop` resolves: subscribes to the product's topic, asks for the current
    /// metadata, acts on every bundle announced (installing what it should, reporting each
    /// outcome on the topic), and answers other devices' requests with the newest metadata it
    /// accepted. Returns the reports of the installations it made.
    ///
    /// # Errors
    ///
    /// [`AgentError`] if it cannot subscribe.
    pub async fn run(
        &self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<Vec<InstallReport>, AgentError> {
        let topic = topic(&self.config.product);
        let mut events = self.node.events();
        self.node
            .subscribe(&topic)
            .await
            .map_err(|e| AgentError::Export(e.to_string()))?;
        let mut latest: Option<Bundle> = None;
        let mut installed = Vec::new();
        let mut asked = false;
        let mut retry = tokio::time::interval(Duration::from_millis(500));
        let mut last_answer: Option<Instant> = None;
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return Ok(installed),
                _ = retry.tick(), if !asked => {
                    // Fails until a peer on the topic is in our mesh.
                    asked = self.node.publish(&topic, Announcement::Request.encode().into()).await.is_ok();
                }
                ev = events.recv() => {
                    let (data, source) = match ev {
                        Ok(NodeEvent::Message { topic: t, data, source }) if t == topic => (data, source),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(installed),
                        _ => continue,
                    };
                    match Announcement::decode(&data) {
                        Ok(Announcement::Bundle(b)) => {
                            // Stale copies circulate: only a newer claim is worth checking (TUF
                            // would refuse an older one as a rollback anyway).
                            let seen = latest.as_ref().and_then(Bundle::claimed_version).unwrap_or(0);
                            if b.claimed_version().is_none_or(|v| v <= seen) {
                                continue;
                            }
                            // Whoever announced it most likely holds the image.
                            let outcome = self.update_with(&b, source.as_slice()).await;
                            let report = match outcome {
                                Ok(Some(r)) => {
                                    let version = r.version.clone();
                                    installed.push(r);
                                    latest = Some(b);
                                    Some(Report { device: self.config.device_id.clone(), version, error: None })
                                }
                                Ok(None) => { latest = Some(b); None }
                                Err(e) => {
                                    tracing::warn!(device = %self.config.device_id, error = %e, "update refused or failed");
                                    Some(Report { device: self.config.device_id.clone(), version: String::new(), error: Some(e.to_string()) })
                                }
                            };
                            if let Some(r) = report {
                                let _ = self.node.publish(&topic, Announcement::Report(r).encode().into()).await;
                            }
                        }
                        Ok(Announcement::Request) => {
                            let due = last_answer.is_none_or(|t| t.elapsed() > Duration::from_secs(2));
                            if let (Some(b), true) = (&latest, due) {
                                last_answer = Some(Instant::now());
                                let _ = self.node.publish(&topic, Announcement::Bundle(b.clone()).encode().into()).await;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "malformed announcement"),
                    }
                }
            }
        }
    }
}
