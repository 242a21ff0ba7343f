//! The device agent: hears of releases, decides, fetches from peers, verifies, installs into
//! the inactive slot of an A/B pair, reports, and keeps serving the image.
//!
//! # Slots
//!
//! See [`Slots`]: a new image is written beside the running one, verified, booted as a trial,
//! and confirmed by the device's health check ([`HealthCheck`]); a trial that is not confirmed
//! falls back to the old slot at the next boot, and the agent reports the fallback. Blocks
//! already fetched stay in the device's disk store, so the next attempt fetches only the rest.
//!
//! # Delta updates
//!
//! A device keeps the blocks of the image it runs (pinned in its store, or imported from its
//! slot with [`Agent::index_slot`]); fetching the next image asks the network only for the
//! blocks it does not hold. How much that saves depends on the vendor's chunker: with fixed
//! 256 KiB chunks, two versions share only the blocks before the first changed byte (and of
//! any region that kept its offset); with kubo's content-defined chunkers
//! ([`Chunker::Buzhash`](streamspace_shard::import::Chunker), `rabin`) a boundary lands at the
//! same content whatever moved before it, so an image with one package changed shares every
//! block away from that package. `streamspace fleet` measures both.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cid::Cid;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use streamspace_shard::crypto::cat_decrypted;
use streamspace_shard::export::{ByteRange, cat};
use streamspace_shard::import::ImportOptions;
use streamspace_shard::keywrap::RecipientKey;
use streamspace_shard::store::DiskStore;
use streamspace_shard::store::add_reader;
use streamspace_transport::{FetchOptions, Node, NodeEvent, PeerId};

use crate::durable::write_atomically;
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
    /// The version tried is given up and the device runs the previous one again (the error
    /// says why).
    pub fallback: bool,
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
    /// The `boot` file is not a boot record.
    #[error("{0}: malformed boot record")]
    Boot(PathBuf),
    /// The block store.
    #[error("store: {0}")]
    Store(#[from] streamspace_shard::store::StoreError),
    /// A trial slot awaits its boot or confirmation: nothing else is installed meanwhile.
    #[error("version {0} awaits its boot or confirmation")]
    TrialPending(String),
    /// No trial runs (nothing to confirm or reject).
    #[error("no trial slot is running")]
    NoTrial,
    /// The running slot's image could not be imported into the store.
    #[error("importing the running image: {0}")]
    Import(String),
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

    fn parse(s: &str) -> Option<Self> {
        match s {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }
}

/// A slot holding a verified image of a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootState {
    /// The slot.
    pub active: Slot,
    /// Its version.
    pub version: String,
}

/// A new slot to be tried: written and verified, not yet confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trial {
    /// The slot and version.
    pub boot: BootState,
    /// SHA-256 of the image in the slot (checked again before it boots).
    pub sha256: [u8; 32],
    /// Whether it has been booted once already (a second boot without a confirmation falls
    /// back).
    pub booted: bool,
}

/// A trial that was given up: the device runs the confirmed slot again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// The version that was tried.
    pub version: String,
    /// The version the device runs again.
    pub back_to: String,
    /// Why.
    pub reason: String,
}

/// The boot record: the confirmed slot, the trial if any, and a fallback not yet reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    /// The confirmed slot: what boots when no trial is pending.
    pub good: BootState,
    /// A slot to try.
    pub trial: Option<Trial>,
    /// A fallback to report.
    pub fallback: Option<Fallback>,
}

impl SlotState {
    fn encode(&self) -> String {
        let mut out = format!("good {} {}\n", self.good.active.name(), self.good.version);
        if let Some(t) = &self.trial {
            out.push_str(&format!(
                "trial {} {} {} {}\n",
                t.boot.active.name(),
                t.boot.version,
                hex::encode(t.sha256),
                if t.booted { "booted" } else { "new" }
            ));
        }
        if let Some(f) = &self.fallback {
            // The reason is free text: last on its line, newlines removed.
            out.push_str(&format!(
                "fallback {} {} {}\n",
                f.version,
                f.back_to,
                f.reason.replace(['\n', '\r'], " ")
            ));
        }
        out
    }

    fn decode(text: &str) -> Option<Self> {
        let version = |v: &str| semver::Version::parse(v).is_ok().then(|| v.to_owned());
        let mut good = None;
        let mut trial = None;
        let mut fallback = None;
        for line in text.lines() {
            let mut parts = line.splitn(4, ' ');
            match parts.next()? {
                "good" if good.is_none() => {
                    let active = Slot::parse(parts.next()?)?;
                    let v = version(parts.next()?)?;
                    if parts.next().is_some() {
                        return None;
                    }
                    good = Some(BootState { active, version: v });
                }
                "trial" if trial.is_none() => {
                    let active = Slot::parse(parts.next()?)?;
                    let v = version(parts.next()?)?;
                    let mut rest = parts.next()?.split(' ');
                    let sha256 = hex::decode(rest.next()?).ok()?.try_into().ok()?;
                    let booted = match rest.next()? {
                        "booted" => true,
                        "new" => false,
                        _ => return None,
                    };
                    if rest.next().is_some() {
                        return None;
                    }
                    trial = Some(Trial {
                        boot: BootState { active, version: v },
                        sha256,
                        booted,
                    });
                }
                "fallback" if fallback.is_none() => {
                    let v = version(parts.next()?)?;
                    let back_to = version(parts.next()?)?;
                    fallback = Some(Fallback {
                        version: v,
                        back_to,
                        reason: parts.next().unwrap_or_default().to_owned(),
                    });
                }
                _ => return None,
            }
        }
        let good = good?;
        if trial.as_ref().is_some_and(|t| t.boot.active == good.active) {
            return None;
        }
        Some(Self {
            good,
            trial,
            fallback,
        })
    }
}

/// What the bootloader booted, after [`Slots::boot_up`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booted {
    /// The slot and version running.
    pub running: BootState,
    /// Whether it is a trial that awaits confirmation.
    pub trial: bool,
    /// A trial given up at this boot (it had been booted before and never confirmed, or its
    /// image no longer matches).
    pub fell_back: Option<Fallback>,
}

/// An A/B slot pair in a directory.
///
/// The directory holds `a.img`, `b.img` and `boot`, the boot record ([`SlotState`]). Every
/// change to `boot` is one atomic replacement (write, sync, rename, sync the directory), and an
/// image reaches its slot file only once complete and verified, by rename, so a power cut at
/// any point leaves a record naming verified images. The life of an update:
///
/// 1. [`Slots::begin`] writes the image to `<inactive>.img.part`, verifying it on the way;
///    [`ImageWriter::finish`] syncs it and renames it to `<inactive>.img`;
/// 2. [`Slots::stage`] records it as a trial;
/// 3. at power-on, [`Slots::boot_up`] (the bootloader's rule) boots a new trial once, marking it
///    booted; a trial already booted and not confirmed is given up and the confirmed slot
///    boots, the fallback recorded;
/// 4. the running system checks its health and calls [`Slots::confirm`] (the trial becomes the
///    confirmed slot) or [`Slots::reject`] (give it up now).
#[derive(Debug, Clone)]
pub struct Slots {
    dir: PathBuf,
}

fn sha256_file(path: &Path) -> Result<[u8; 32], AgentError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

impl Slots {
    /// The slots in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Writes a factory image to slot A and confirms it (a device leaving the factory).
    ///
    /// # Errors
    ///
    /// [`AgentError::Io`].
    pub fn provision(&self, version: &str, image: &[u8]) -> Result<(), AgentError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let p = self.image(Slot::A);
        write_atomically(&p, image, false).map_err(io(&p))?;
        self.write_state(&SlotState {
            good: BootState {
                active: Slot::A,
                version: version.to_owned(),
            },
            trial: None,
            fallback: None,
        })
    }

    /// The path of a slot's image.
    pub fn image(&self, slot: Slot) -> PathBuf {
        self.dir.join(format!("{}.img", slot.name()))
    }

    /// The boot record.
    ///
    /// # Errors
    ///
    /// [`AgentError::Io`] or [`AgentError::Boot`].
    pub fn state(&self) -> Result<SlotState, AgentError> {
        let p = self.dir.join("boot");
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        SlotState::decode(&text).ok_or(AgentError::Boot(p))
    }

    fn write_state(&self, state: &SlotState) -> Result<(), AgentError> {
        let p = self.dir.join("boot");
        write_atomically(&p, state.encode().as_bytes(), false).map_err(io(&p))
    }

    /// What runs now: a trial once booted, otherwise the confirmed slot.
    ///
    /// # Errors
    ///
    /// [`AgentError::Io`] or [`AgentError::Boot`].
    pub fn boot(&self) -> Result<BootState, AgentError> {
        let s = self.state()?;
        Ok(match s.trial {
            Some(t) if t.booted => t.boot,
            _ => s.good,
        })
    }

    /// Starts writing `release`'s image into the inactive slot.
    ///
    /// # Errors
    ///
    /// [`AgentError::TrialPending`] while a trial awaits its boot or confirmation;
    /// [`AgentError::Io`].
    pub fn begin(&self, release: &Release) -> Result<ImageWriter, AgentError> {
        let state = self.state()?;
        if let Some(t) = &state.trial {
            return Err(AgentError::TrialPending(t.boot.version.clone()));
        }
        let target = state.good.active.other();
        let part = self.dir.join(format!("{}.img.part", target.name()));
        let file = std::fs::File::create(&part).map_err(io(&part))?;
        Ok(ImageWriter {
            file,
            part,
            dest: self.image(target),
            slot: target,
            verifier: ImageVerifier::for_release(release),
            version: release.version.clone(),
            sha256: release.sha256,
        })
    }

    /// Records a written image as the trial the next boot runs.
    ///
    /// # Errors
    ///
    /// [`AgentError::TrialPending`], [`AgentError::Io`].
    pub fn stage(&self, image: StagedImage) -> Result<(), AgentError> {
        let mut state = self.state()?;
        if let Some(t) = &state.trial {
            return Err(AgentError::TrialPending(t.boot.version.clone()));
        }
        if image.slot == state.good.active {
            return Err(AgentError::Boot(self.dir.join("boot")));
        }
        state.trial = Some(Trial {
            boot: BootState {
                active: image.slot,
                version: image.version,
            },
            sha256: image.sha256,
            booted: false,
        });
        self.write_state(&state)
    }

    /// The bootloader's decision at power-on. A trial not booted before boots (and is marked
    /// booted first, so a crash or hang in it falls back next time), if its image still
    /// matches; a trial booted before and never confirmed is given up: the confirmed slot
    /// boots and the fallback is recorded for the agent to report.
    ///
    /// # Errors
    ///
    /// [`AgentError::Io`] or [`AgentError::Boot`].
    pub fn boot_up(&self) -> Result<Booted, AgentError> {
        let mut state = self.state()?;
        let Some(mut trial) = state.trial.clone() else {
            return Ok(Booted {
                running: state.good,
                trial: false,
                fell_back: None,
            });
        };
        let intact = sha256_file(&self.image(trial.boot.active)).ok() == Some(trial.sha256);
        if trial.booted || !intact {
            let f = Fallback {
                version: trial.boot.version.clone(),
                back_to: state.good.version.clone(),
                reason: if intact {
                    "booted and not confirmed".into()
                } else {
                    "image no longer matches".into()
                },
            };
            self.remember_failed(&f.version)?;
            state.trial = None;
            state.fallback = Some(f.clone());
            self.write_state(&state)?;
            return Ok(Booted {
                running: state.good,
                trial: false,
                fell_back: Some(f),
            });
        }
        trial.booted = true;
        state.trial = Some(trial.clone());
        self.write_state(&state)?;
        Ok(Booted {
            running: trial.boot,
            trial: true,
            fell_back: None,
        })
    }

    /// Confirms the running trial: it becomes the slot that boots.
    ///
    /// # Errors
    ///
    /// [`AgentError::NoTrial`] if no trial is running; [`AgentError::Io`].
    pub fn confirm(&self) -> Result<BootState, AgentError> {
        let mut state = self.state()?;
        match state.trial.take() {
            Some(t) if t.booted => {
                state.good = t.boot.clone();
                self.write_state(&state)?;
                Ok(t.boot)
            }
            _ => Err(AgentError::NoTrial),
        }
    }

    /// Gives up the trial (its health check failed): the confirmed slot boots next, and the
    /// fallback is recorded for the agent to report.
    ///
    /// # Errors
    ///
    /// [`AgentError::NoTrial`], [`AgentError::Io`].
    pub fn reject(&self, reason: &str) -> Result<Fallback, AgentError> {
        let mut state = self.state()?;
        let t = state.trial.take().ok_or(AgentError::NoTrial)?;
        let f = Fallback {
            version: t.boot.version,
            back_to: state.good.version.clone(),
            reason: reason.to_owned(),
        };
        self.remember_failed(&f.version)?;
        state.fallback = Some(f.clone());
        self.write_state(&state)?;
        Ok(f)
    }

    /// Versions given up on this device: they are not installed again.
    pub fn failed(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("failed"))
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn remember_failed(&self, version: &str) -> Result<(), AgentError> {
        let mut failed = self.failed();
        if !failed.iter().any(|v| v == version) {
            failed.push(version.to_owned());
            // The newest 64 are enough to stop a device retrying a bad release.
            let keep = failed.len().saturating_sub(64);
            let p = self.dir.join("failed");
            write_atomically(&p, failed[keep..].join("\n").as_bytes(), false).map_err(io(&p))?;
        }
        Ok(())
    }

    /// The recorded fallback, cleared once taken (after it was reported).
    ///
    /// # Errors
    ///
    /// [`AgentError::Io`] or [`AgentError::Boot`].
    pub fn take_fallback(&self) -> Result<Option<Fallback>, AgentError> {
        let mut state = self.state()?;
        let f = state.fallback.take();
        if f.is_some() {
            self.write_state(&state)?;
        }
        Ok(f)
    }

    /// Writes `image` (a stream of pieces) into the inactive slot, verifying it against
    /// `release` on the way, and stages it as the trial. On any error the partial file is
    /// removed and the boot record is unchanged.
    ///
    /// # Errors
    ///
    /// [`AgentError::Image`] if the image is too long, too short or has another digest;
    /// [`AgentError::TrialPending`].
    pub async fn install<E: std::fmt::Display>(
        &self,
        release: &Release,
        image: impl Stream<Item = Result<bytes::Bytes, E>>,
    ) -> Result<Slot, AgentError> {
        let mut writer = self.begin(release)?;
        let part = writer.part.clone();
        let result = async {
            let mut image = std::pin::pin!(image);
            while let Some(piece) = image.next().await {
                let piece = piece.map_err(|e| AgentError::Export(e.to_string()))?;
                writer.write(&piece)?;
            }
            writer.finish()
        }
        .await;
        let staged = match result {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                return Err(e);
            }
        };
        let slot = staged.slot;
        self.stage(staged)?;
        Ok(slot)
    }
}

/// An image being written into the inactive slot ([`Slots::begin`]). Dropping it (or losing
/// power) leaves only a `.part` file, which the next attempt overwrites.
#[derive(Debug)]
pub struct ImageWriter {
    file: std::fs::File,
    part: PathBuf,
    dest: PathBuf,
    slot: Slot,
    verifier: ImageVerifier,
    version: String,
    sha256: [u8; 32],
}

/// An image verified and in its slot file, ready for [`Slots::stage`].
#[derive(Debug)]
pub struct StagedImage {
    slot: Slot,
    version: String,
    sha256: [u8; 32],
}

impl StagedImage {
    /// The slot it is in.
    pub fn slot(&self) -> Slot {
        self.slot
    }
}

impl ImageWriter {
    /// Appends the next piece, verifying as it goes.
    ///
    /// # Errors
    ///
    /// [`AgentError::Image`] once the image passes its released size; [`AgentError::Io`].
    pub fn write(&mut self, piece: &[u8]) -> Result<(), AgentError> {
        use std::io::Write;
        self.verifier.update(piece)?;
        self.file.write_all(piece).map_err(io(&self.part))
    }

    /// Checks size and digest, syncs the file and renames it into its slot.
    ///
    /// # Errors
    ///
    /// [`AgentError::Image`], [`AgentError::Io`].
    pub fn finish(self) -> Result<StagedImage, AgentError> {
        self.verifier.finish()?;
        self.file.sync_all().map_err(io(&self.part))?;
        drop(self.file);
        std::fs::rename(&self.part, &self.dest).map_err(io(&self.dest))?;
        crate::durable::sync_dir(&self.dest).map_err(io(&self.dest))?;
        Ok(StagedImage {
            slot: self.slot,
            version: self.version,
            sha256: self.sha256,
        })
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
    /// What decides whether a trial slot is healthy.
    pub health: HealthCheck,
}

type CheckFn = dyn Fn(&BootState) -> Result<(), String> + Send + Sync;

/// The device's health check of a trial slot: the device provides it (the application came
/// up, the radio connects, the sensors answer, ...). `Err` says why the slot is not healthy.
#[derive(Clone)]
pub struct HealthCheck(Arc<CheckFn>);

impl HealthCheck {
    /// A check by `f`.
    pub fn new(f: impl Fn(&BootState) -> Result<(), String> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Runs the check.
    ///
    /// # Errors
    ///
    /// Why the slot is not healthy.
    pub fn check(&self, running: &BootState) -> Result<(), String> {
        (self.0)(running)
    }
}

impl Default for HealthCheck {
    /// Every slot that boots is healthy.
    fn default() -> Self {
        Self::new(|_| Ok(()))
    }
}

impl std::fmt::Debug for HealthCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HealthCheck")
    }
}

/// What a start-up found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartUp {
    /// The confirmed slot runs; nothing pending.
    Running(BootState),
    /// A trial booted, passed the health check and is confirmed.
    Confirmed(BootState),
    /// A trial was given up (health check failed, or it was booted before without a
    /// confirmation); the previous slot runs again.
    FellBack(Fallback),
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
    /// Time from start to staged trial.
    pub elapsed: Duration,
    /// What the start-up into the new slot did (for [`Agent::update`]; `None` after
    /// [`Agent::install`], which only stages).
    pub start_up: Option<StartUp>,
}

impl InstallReport {
    /// Bytes received from the network for this image.
    pub fn bytes_fetched(&self) -> u64 {
        self.bytes_from.values().sum()
    }
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
        let failed = self.slots.failed();
        let mut best: Option<(semver::Version, Offer)> = None;
        for o in offers {
            let r = &o.release;
            if r.product != self.config.product || r.channel != self.config.channel {
                continue;
            }
            if failed.contains(&r.version) {
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
        if !offer.release.in_rollout(id, offer.stage.rollout) {
            return Ok(Decision::NotInRollout {
                version: offer.release.version.clone(),
                bucket: offer.release.rollout_bucket(id),
                rollout: offer.stage.rollout,
            });
        }
        Ok(Decision::Install(Box::new(offer)))
    }

    /// Fetches the offered image from peers (every block verified against its CID on
    /// arrival; blocks already held, such as those of the running image, are not fetched),
    /// writes it to the inactive slot verifying size and SHA-256, stages it as the trial for
    /// the next boot, and pins the image in the store (so the device keeps serving it, within
    /// its quota). The image it replaces stays pinned until the trial is confirmed.
    ///
    /// # Errors
    ///
    /// [`AgentError`]; the boot record is unchanged on every error.
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
        let trial = self.slots.dir.join("pinned.trial");
        write_atomically(&trial, root.to_string().as_bytes(), false).map_err(io(&trial))?;
        tracing::info!(device = %self.config.device_id, version = %release.version, ?slot, "staged");
        Ok(InstallReport {
            version: release.version.clone(),
            slot,
            blocks: fetched.blocks,
            fetched: fetched.fetched,
            bytes_from: fetched.bytes_from,
            elapsed: start.elapsed(),
            start_up: None,
        })
    }

    /// Imports the running slot's image into the store with `options` (the vendor's chunker)
    /// and pins it, so the next update fetches only the blocks that changed. For a device
    /// whose running image did not come through the network (a factory image). Returns the
    /// image's root CID.
    ///
    /// # Errors
    ///
    /// [`AgentError::Import`], [`AgentError::Io`], [`AgentError::Store`].
    pub async fn index_slot(&self, options: ImportOptions) -> Result<Cid, AgentError> {
        let running = self.slots.boot()?;
        let path = self.slots.image(running.active);
        let file = std::fs::File::open(&path).map_err(io(&path))?;
        let store = self.node.store().as_ref();
        let root = add_reader(Some(store), std::io::BufReader::new(file), options)
            .await
            .map_err(|e| AgentError::Import(e.to_string()))?
            .cid;
        store.pin(&root).await?;
        let pinned = self.slots.dir.join("pinned");
        write_atomically(&pinned, root.to_string().as_bytes(), false).map_err(io(&pinned))?;
        Ok(root)
    }

    /// What the device does when it starts: the bootloader's decision ([`Slots::boot_up`]),
    /// then, if a trial runs, the health check, and the trial confirmed or given up. Once a
    /// trial is confirmed the image it replaced is unpinned; once given up, its own.
    ///
    /// # Errors
    ///
    /// [`AgentError`] for the slot files or the store.
    pub async fn start_up(&self) -> Result<StartUp, AgentError> {
        let booted = self.slots.boot_up()?;
        let store = self.node.store().as_ref();
        let pinned = self.slots.dir.join("pinned");
        let trial_pin = self.slots.dir.join("pinned.trial");
        let read_cid = |p: &Path| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|t| Cid::try_from(t.trim()).ok())
        };
        let outcome = if let Some(f) = booted.fell_back {
            StartUp::FellBack(f)
        } else if booted.trial {
            match self.config.health.check(&booted.running) {
                Ok(()) => StartUp::Confirmed(self.slots.confirm()?),
                Err(why) => StartUp::FellBack(self.slots.reject(&format!("health check: {why}"))?),
            }
        } else {
            StartUp::Running(booted.running)
        };
        match &outcome {
            StartUp::Confirmed(_) => {
                if let Some(new) = read_cid(&trial_pin) {
                    if let Some(old) = read_cid(&pinned)
                        && old != new
                    {
                        store.unpin(&old).await?;
                    }
                    write_atomically(&pinned, new.to_string().as_bytes(), false)
                        .map_err(io(&pinned))?;
                }
                let _ = std::fs::remove_file(&trial_pin);
            }
            StartUp::FellBack(f) => {
                if let Some(new) = read_cid(&trial_pin)
                    && read_cid(&pinned) != Some(new)
                {
                    store.unpin(&new).await?;
                }
                let _ = std::fs::remove_file(&trial_pin);
                tracing::warn!(device = %self.config.device_id, version = %f.version, reason = %f.reason, "fell back");
            }
            StartUp::Running(_) => {}
        }
        Ok(outcome)
    }

    /// [`Agent::consider`], then [`Agent::install`] if the decision is to, then a restart
    /// into the new slot in place ([`Agent::start_up`]: the health check confirms it or the
    /// device falls back), as a device whose update agent also runs its bootloader does.
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
            Decision::Install(offer) => {
                let mut report = self.install_with(&offer, also_ask).await?;
                report.start_up = Some(self.start_up().await?);
                Ok(Some(report))
            }
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
        // A fallback from before this run (a trial that did not survive its boot).
        let mut pending = match self.slots.take_fallback()? {
            Some(f) => Some(Report {
                device: self.config.device_id.clone(),
                version: f.version,
                error: Some(format!("fell back to {}: {}", f.back_to, f.reason)),
                fallback: true,
            }),
            None => None,
        };
        let mut asked = false;
        let mut retry = tokio::time::interval(Duration::from_millis(500));
        let mut last_answer: Option<Instant> = None;
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return Ok(installed),
                _ = retry.tick(), if !asked || pending.is_some() => {
                    // Fails until a peer on the topic is in our mesh.
                    if !asked {
                        asked = self.node.publish(&topic, Announcement::Request.encode().into()).await.is_ok();
                    }
                    if let Some(r) = &pending
                        && self.node.publish(&topic, Announcement::Report(r.clone()).encode().into()).await.is_ok()
                    {
                        pending = None;
                    }
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
                            let device = self.config.device_id.clone();
                            let report = match outcome {
                                Ok(Some(r)) => {
                                    let version = r.version.clone();
                                    let report = match &r.start_up {
                                        Some(StartUp::FellBack(f)) => {
                                            // Reported here: clear the record.
                                            let _ = self.slots.take_fallback();
                                            Report { device, version, error: Some(format!("fell back to {}: {}", f.back_to, f.reason)), fallback: true }
                                        }
                                        _ => Report { device, version, error: None, fallback: false },
                                    };
                                    installed.push(r);
                                    latest = Some(b);
                                    Some(report)
                                }
                                Ok(None) => { latest = Some(b); None }
                                Err(e) => {
                                    tracing::warn!(device = %self.config.device_id, error = %e, "update refused or failed");
                                    Some(Report { device, version: String::new(), error: Some(e.to_string()), fallback: false })
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
