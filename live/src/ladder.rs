//! Renditions for adaptive bitrate: a [`Ladder`] of heights and bitrates, cut by one ffmpeg
//! into HLS renditions whose keyframes (and so segment boundaries) are aligned, under a
//! master playlist.
//!
//! [`cut_vod`] reads a video file once: ffmpeg decodes it once, scales it to every rung,
//! encodes H.264 (main profile) and AAC with a keyframe forced at every segment boundary (the
//! same timestamps for every rendition, scene-cut keyframes off) and writes
//! `NAME/index.m3u8` and `NAME/segNNNNN.ts` for each rung (`720p/`, `480p/`, …). The driver
//! then checks that every rendition has the same segments with the same durations, probes
//! each rendition's first segment for its resolution and codec, measures its bandwidth from
//! its segments (the peak segment bitrate, as HLS defines `BANDWIDTH`, and the average) and
//! writes the master playlist, `index.m3u8`, at the top. Added as a directory, each rendition
//! is its own directory (its own CID) under the one root, so peers holding a rendition serve
//! it to every viewer of that rendition, whatever item links to it.
//!
//! ```
//! use streamspace_live::ladder::{Ladder, Rung};
//! let ladder: Ladder = "1080p,720p,480p@1000k".parse()?;
//! assert_eq!(ladder.rungs()[0], Rung::standard(1080)?);
//! assert_eq!(ladder.rungs()[2].video_kbps, 1000);
//! // Rungs above a 720-line source are dropped: no rendition is upscaled.
//! assert_eq!(ladder.fitting(720)?.to_string(), "720p,480p@1000k");
//! assert!("720p,720p".parse::<Ladder>().is_err());
//! # Ok::<(), streamspace_live::ladder::LadderError>(())
//! ```

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Most rungs a ladder has (each is one more encode of the whole input).
pub const MAX_RUNGS: usize = 6;
/// Lowest and highest rung heights, lines.
pub const HEIGHTS: std::ops::RangeInclusive<u32> = 144..=2160;
/// Lowest and highest video bitrates, kbit/s.
pub const KBPS: std::ops::RangeInclusive<u32> = 64..=60_000;
/// The master playlist's name, at the top of the cut directory.
pub const MASTER: &str = "index.m3u8";
/// Each rendition's media playlist, in its directory.
pub const MEDIA: &str = "index.m3u8";

/// A ladder or a rung could not be read, or a ladder could not be cut.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LadderError {
    /// No rung was given.
    #[error("a ladder needs at least one rung (e.g. 1080p,720p,480p)")]
    Empty,
    /// More than [`MAX_RUNGS`] rungs.
    #[error("{count} rungs: a ladder has at most {MAX_RUNGS}")]
    TooMany {
        /// How many were given.
        count: usize,
    },
    /// A rung could not be read; `reason` says which rule it breaks.
    #[error("rung {text:?}: {reason}")]
    BadRung {
        /// The rung as written.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two rungs of one height.
    #[error("two rungs of {height} lines")]
    Duplicate {
        /// The height given twice.
        height: u32,
    },
    /// Every rung is taller than the source (no rendition is upscaled).
    #[error("the source has {source_height} lines: every rung of the ladder is taller")]
    NothingFits {
        /// The source's height.
        source_height: u32,
    },
    /// A program could not be started.
    #[error("starting {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// ffmpeg or ffprobe ended with an error; the end of what it wrote.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its standard error.
        stderr: String,
    },
    /// ffprobe's answer lacks what was asked (a source without video, for instance).
    #[error("probing {path}: {what}")]
    Probe {
        /// What was probed.
        path: PathBuf,
        /// What is missing.
        what: &'static str,
    },
    /// The renditions' segments do not line up (a player could not switch between them
    /// at segment boundaries).
    #[error("rendition {rendition} is not aligned with {first}: {what}")]
    Misaligned {
        /// The first rendition.
        first: String,
        /// The one that differs.
        rendition: String,
        /// How.
        what: String,
    },
    /// A file of the cut could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LadderError + '_ {
    move |source| LadderError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One rendition: a height (the width follows the source's aspect ratio, rounded to even)
/// and a video bitrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rung {
    /// Lines, even, within [`HEIGHTS`].
    pub height: u32,
    /// Video bitrate, kbit/s, within [`KBPS`].
    pub video_kbps: u32,
}

impl Rung {
    /// A rung of `height` lines at `video_kbps`.
    ///
    /// # Errors
    ///
    /// [`LadderError::BadRung`] when the height is odd or outside [`HEIGHTS`], or the bitrate
    /// outside [`KBPS`].
    pub fn new(height: u32, video_kbps: u32) -> Result<Self, LadderError> {
        let bad = |reason| LadderError::BadRung {
            text: format!("{height}p@{video_kbps}k"),
            reason,
        };
        if !HEIGHTS.contains(&height) {
            return Err(bad("the height is outside 144 to 2160 lines"));
        }
        if height % 2 != 0 {
            return Err(bad("the height is odd (H.264 in 4:2:0 needs even sizes)"));
        }
        if !KBPS.contains(&video_kbps) {
            return Err(bad("the bitrate is outside 64 to 60000 kbit/s"));
        }
        Ok(Self { height, video_kbps })
    }

    /// A rung of `height` lines at the usual bitrate for it (H.264 at 30 frames a second:
    /// 5000 kbit/s at 1080p, 2800 at 720p, 1400 at 480p, 800 at 360p, 400 at 240p, 200 at
    /// 144p; other heights in proportion to their area).
    ///
    /// # Errors
    ///
    /// As [`Rung::new`].
    pub fn standard(height: u32) -> Result<Self, LadderError> {
        Self::new(height, standard_kbps(height))
    }

    /// Its name, which is its directory in a cut: `720p`.
    pub fn name(&self) -> String {
        format!("{}p", self.height)
    }
}

fn standard_kbps(height: u32) -> u32 {
    match height {
        2160 => 16_000,
        1440 => 8_000,
        1080 => 5_000,
        720 => 2_800,
        480 => 1_400,
        360 => 800,
        240 => 400,
        144 => 200,
        h => {
            let area = u64::from(h) * u64::from(h);
            let kbps = area * 5_000 / (1080 * 1080);
            u32::try_from(kbps)
                .unwrap_or(u32::MAX)
                .clamp(*KBPS.start(), *KBPS.end())
        }
    }
}

impl fmt::Display for Rung {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.video_kbps == standard_kbps(self.height) {
            write!(f, "{}p", self.height)
        } else {
            write!(f, "{}p@{}k", self.height, self.video_kbps)
        }
    }
}

impl FromStr for Rung {
    type Err = LadderError;

    /// `720p` (the usual bitrate for the height) or `720p@2500k`.
    fn from_str(s: &str) -> Result<Self, LadderError> {
        let bad = |reason| LadderError::BadRung {
            text: s.to_owned(),
            reason,
        };
        let (h, kbps) = match s.split_once('@') {
            Some((h, k)) => (h, Some(k)),
            None => (s, None),
        };
        let h = h
            .strip_suffix('p')
            .ok_or_else(|| bad("a rung is a height in lines followed by p, as 720p"))?;
        let digits =
            |t: &str| !t.is_empty() && t.len() <= 6 && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(h) {
            return Err(bad("the height is not a number"));
        }
        let height: u32 = h.parse().map_err(|_| bad("the height is not a number"))?;
        let rung = match kbps {
            None => Self::standard(height),
            Some(k) => {
                let k = k
                    .strip_suffix('k')
                    .ok_or_else(|| bad("a bitrate is in kbit/s followed by k, as 2500k"))?;
                if !digits(k) {
                    return Err(bad("the bitrate is not a number"));
                }
                Self::new(
                    height,
                    k.parse().map_err(|_| bad("the bitrate is not a number"))?,
                )
            }
        };
        // Say the rung as it was written.
        rung.map_err(|e| match e {
            LadderError::BadRung { reason, .. } => bad(reason),
            e => e,
        })
    }
}

/// Rungs, tallest first, of distinct heights; at least one and at most [`MAX_RUNGS`].
/// Written `1080p,720p,480p@1000k` (any order; duplicates refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ladder {
    rungs: Vec<Rung>,
}

impl Ladder {
    /// A ladder of these rungs (sorted tallest first).
    ///
    /// # Errors
    ///
    /// [`LadderError::Empty`], [`LadderError::TooMany`], [`LadderError::Duplicate`].
    pub fn new(mut rungs: Vec<Rung>) -> Result<Self, LadderError> {
        if rungs.is_empty() {
            return Err(LadderError::Empty);
        }
        if rungs.len() > MAX_RUNGS {
            return Err(LadderError::TooMany { count: rungs.len() });
        }
        rungs.sort_by_key(|r| std::cmp::Reverse(r.height));
        if let Some(w) = rungs.windows(2).find(|w| w[0].height == w[1].height) {
            return Err(LadderError::Duplicate {
                height: w[0].height,
            });
        }
        Ok(Self { rungs })
    }

    /// The rungs, tallest first.
    pub fn rungs(&self) -> &[Rung] {
        &self.rungs
    }

    /// The rungs no taller than a source of `source_height` lines (a rendition is never
    /// upscaled).
    ///
    /// # Errors
    ///
    /// [`LadderError::NothingFits`] when every rung is taller.
    pub fn fitting(&self, source_height: u32) -> Result<Self, LadderError> {
        let rungs: Vec<Rung> = self
            .rungs
            .iter()
            .copied()
            .filter(|r| r.height <= source_height)
            .collect();
        if rungs.is_empty() {
            return Err(LadderError::NothingFits { source_height });
        }
        Ok(Self { rungs })
    }
}

impl fmt::Display for Ladder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.rungs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl FromStr for Ladder {
    type Err = LadderError;

    fn from_str(s: &str) -> Result<Self, LadderError> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        if parts.iter().all(|p| p.is_empty()) {
            return Err(LadderError::Empty);
        }
        if parts.len() > MAX_RUNGS {
            return Err(LadderError::TooMany { count: parts.len() });
        }
        Self::new(
            parts
                .into_iter()
                .map(str::parse)
                .collect::<Result<_, _>>()?,
        )
    }
}

/// How [`cut_vod`] cuts.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VodConfig {
    /// The video file.
    pub input: PathBuf,
    /// Where the cut is written (made if missing; it should be empty).
    pub dir: PathBuf,
    /// The renditions (those taller than the source are dropped).
    pub ladder: Ladder,
    /// Target segment duration, seconds (a keyframe is forced at every multiple).
    pub segment_secs: u32,
    /// Audio bitrate of every rendition, kbit/s.
    pub audio_kbps: u32,
    /// The ffmpeg program.
    pub ffmpeg: PathBuf,
    /// The ffprobe program.
    pub ffprobe: PathBuf,
}

impl VodConfig {
    /// Defaults: 4 s segments, AAC at 128 kbit/s, `ffmpeg` and `ffprobe` from the `PATH`.
    pub fn new(input: impl Into<PathBuf>, dir: impl Into<PathBuf>, ladder: Ladder) -> Self {
        Self {
            input: input.into(),
            dir: dir.into(),
            ladder,
            segment_secs: 4,
            audio_kbps: 128,
            ffmpeg: PathBuf::from("ffmpeg"),
            ffprobe: PathBuf::from("ffprobe"),
        }
    }
}

/// ffmpeg's arguments for cutting `ladder` (as given: fit it to the source first) from
/// `config.input` into `config.dir`, with an audio rendition for every rung when `audio`.
///
/// One decode, split and scaled to every rung; the same forced keyframe timestamps for every
/// rendition, no scene-cut keyframes, a capped bitrate (maxrate 1.1×, buffer 2×).
pub fn ffmpeg_args(config: &VodConfig, ladder: &Ladder, audio: bool) -> Vec<OsString> {
    let secs = config.segment_secs.max(1);
    let n = ladder.rungs().len();
    let mut graph = format!("[0:v:0]split={n}");
    for i in 0..n {
        graph.push_str(&format!("[s{i}]"));
    }
    for (i, r) in ladder.rungs().iter().enumerate() {
        graph.push_str(&format!(";[s{i}]scale=-2:{}[v{i}]", r.height));
    }
    let mut a: Vec<OsString> = ["-hide_banner", "-nostdin", "-loglevel", "error", "-i"]
        .into_iter()
        .map(OsString::from)
        .collect();
    a.push(config.input.clone().into_os_string());
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(OsString::from));
    push(&["-filter_complex", &graph]);
    let mut map = Vec::with_capacity(n);
    for i in 0..n {
        push(&["-map", &format!("[v{i}]")]);
    }
    if audio {
        for _ in 0..n {
            push(&["-map", "0:a:0"]);
        }
    }
    push(&[
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-profile:v",
        "main",
        "-pix_fmt",
        "yuv420p",
        "-force_key_frames",
        &format!("expr:gte(t,n_forced*{secs})"),
        "-sc_threshold",
        "0",
    ]);
    for (i, r) in ladder.rungs().iter().enumerate() {
        let k = r.video_kbps;
        push(&[
            &format!("-b:v:{i}"),
            &format!("{k}k"),
            &format!("-maxrate:v:{i}"),
            &format!("{}k", u64::from(k) * 11 / 10),
            &format!("-bufsize:v:{i}"),
            &format!("{}k", u64::from(k) * 2),
        ]);
        map.push(if audio {
            format!("v:{i},a:{i},name:{}", r.name())
        } else {
            format!("v:{i},name:{}", r.name())
        });
    }
    if audio {
        push(&[
            "-c:a",
            "aac",
            "-b:a",
            &format!("{}k", config.audio_kbps.clamp(16, 512)),
            "-ac",
            "2",
        ]);
    }
    push(&[
        "-f",
        "hls",
        "-hls_time",
        &secs.to_string(),
        "-hls_playlist_type",
        "vod",
        "-hls_list_size",
        "0",
        "-hls_flags",
        "independent_segments",
        "-hls_segment_type",
        "mpegts",
        "-var_stream_map",
        &map.join(" "),
        "-hls_segment_filename",
    ]);
    a.push(config.dir.join("%v").join("seg%05d.ts").into_os_string());
    a.push(config.dir.join("%v").join(MEDIA).into_os_string());
    a
}

/// One rendition of a cut, as the master playlist announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// Its rung.
    pub rung: Rung,
    /// Width and height of its pictures, as encoded.
    pub resolution: (u32, u32),
    /// Peak segment bitrate, bit/s (HLS's `BANDWIDTH`).
    pub bandwidth: u64,
    /// Average bitrate over the whole rendition, bit/s.
    pub average_bandwidth: u64,
    /// RFC 6381 codecs (`avc1.4d401f,mp4a.40.2`), when the profile is one it can name.
    pub codecs: Option<String>,
    /// Its segments' durations, milliseconds.
    pub durations_ms: Vec<u32>,
}

/// What [`cut_vod`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The renditions, tallest first.
    pub variants: Vec<Variant>,
    /// The source's height, lines.
    pub source_height: u32,
    /// Rungs dropped as taller than the source.
    pub dropped: Vec<Rung>,
}

/// The master playlist of `variants` (each under `NAME/index.m3u8`), tallest first.
pub fn master_playlist(variants: &[Variant]) -> String {
    let mut m = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for v in variants {
        m.push_str(&format!(
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},RESOLUTION={}x{}",
            v.bandwidth, v.average_bandwidth, v.resolution.0, v.resolution.1
        ));
        if let Some(c) = &v.codecs {
            m.push_str(&format!(",CODECS=\"{c}\""));
        }
        m.push_str(&format!("\n{}/{MEDIA}\n", v.rung.name()));
    }
    m
}

/// The master playlist of a live ladder of `stream`: each rung's rendition stream
/// ([`crate::StreamId::rendition`]) at `../ID/index.m3u8` (beside `/live/{stream}/`, where a
/// gateway serves it), tallest first. `BANDWIDTH` is nominal — the rung's video rate plus
/// 64 kbit/s of audio, and a tenth for MPEG-TS — since a live rendition's segments are not
/// all there to be measured.
///
/// # Errors
///
/// [`crate::ManifestError::Malformed`] when a rendition's name would be too long.
///
/// ```
/// use ed25519_dalek::SigningKey;
/// use streamspace_live::{StreamId, ladder::{Ladder, live_master_playlist}};
/// let id = StreamId::new("final", &SigningKey::from_bytes(&[1; 32]).verifying_key())?;
/// let ladder: Ladder = "720p,360p@600k".parse().expect("ladder");
/// let m = live_master_playlist(&id, &ladder)?;
/// assert!(m.contains("BANDWIDTH=730400\n../final-360p."));
/// # Ok::<(), streamspace_live::ManifestError>(())
/// ```
pub fn live_master_playlist(
    stream: &crate::StreamId,
    ladder: &Ladder,
) -> Result<String, crate::ManifestError> {
    let mut m = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for r in ladder.rungs() {
        let id = stream.rendition(r)?;
        let bandwidth = (u64::from(r.video_kbps) + 64) * 1100;
        m.push_str(&format!(
            "#EXT-X-STREAM-INF:BANDWIDTH={bandwidth}\n../{id}/{MEDIA}\n"
        ));
    }
    Ok(m)
}

/// A media playlist's segments: (URI, duration in milliseconds), in order.
///
/// Lines other than `#EXTINF` and URIs are passed over; a URI without an `#EXTINF` before it
/// is not a segment.
pub fn media_segments(playlist: &str) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let mut duration = None;
    for line in playlist.lines().map(str::trim) {
        if let Some(d) = line.strip_prefix("#EXTINF:") {
            let secs: f64 = d
                .split(',')
                .next()
                .unwrap_or("")
                .trim()
                .parse()
                .unwrap_or(0.0);
            let ms = (secs * 1000.0).round();
            duration = Some(if ms.is_finite() && ms > 0.0 {
                ms.min(f64::from(u32::MAX)) as u32
            } else {
                0
            });
        } else if !line.starts_with('#') && !line.is_empty() {
            if let Some(d) = duration.take() {
                out.push((line.to_owned(), d));
            }
        }
    }
    out
}

/// Cuts `config.input` into the ladder's renditions and writes the master playlist (see the
/// module's documentation). Rungs taller than the source are dropped (named in
/// [`Cut::dropped`]).
///
/// # Errors
///
/// [`LadderError::Spawn`] or [`LadderError::Failed`] when ffmpeg or ffprobe cannot run or
/// fail; [`LadderError::Probe`] for a source without video; [`LadderError::NothingFits`];
/// [`LadderError::Misaligned`] when the renditions' segments differ; [`LadderError::Io`].
pub async fn cut_vod(config: &VodConfig) -> Result<Cut, LadderError> {
    let source = probe(&config.ffprobe, &config.input, None).await?;
    let video = source
        .iter()
        .find(|s| s.get("codec_type").map(String::as_str) == Some("video"))
        .ok_or(LadderError::Probe {
            path: config.input.clone(),
            what: "a video stream",
        })?;
    let source_height: u32 =
        video
            .get("height")
            .and_then(|h| h.parse().ok())
            .ok_or(LadderError::Probe {
                path: config.input.clone(),
                what: "the video's height",
            })?;
    let audio = source
        .iter()
        .any(|s| s.get("codec_type").map(String::as_str) == Some("audio"));
    let ladder = config.ladder.fitting(source_height)?;
    let dropped = config
        .ladder
        .rungs()
        .iter()
        .copied()
        .filter(|r| !ladder.rungs().contains(r))
        .collect();
    std::fs::create_dir_all(&config.dir).map_err(io(&config.dir))?;
    for r in ladder.rungs() {
        let d = config.dir.join(r.name());
        std::fs::create_dir_all(&d).map_err(io(&d))?;
    }
    run(&config.ffmpeg, ffmpeg_args(config, &ladder, audio)).await?;

    let mut variants = Vec::with_capacity(ladder.rungs().len());
    for &rung in ladder.rungs() {
        let dir = config.dir.join(rung.name());
        let path = dir.join(MEDIA);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let segments = media_segments(&text);
        let first = segments.first().ok_or(LadderError::Probe {
            path: path.clone(),
            what: "a segment",
        })?;
        let mut total_bytes = 0u64;
        let mut total_ms = 0u64;
        let mut peak = 0u64;
        for (uri, ms) in &segments {
            let p = dir.join(uri);
            let len = std::fs::metadata(&p).map_err(io(&p))?.len();
            total_bytes += len;
            total_ms += u64::from(*ms);
            peak = peak.max(len * 8 * 1000 / u64::from((*ms).max(1)));
        }
        let first_path = dir.join(&first.0);
        let streams = probe(&config.ffprobe, &first_path, Some("v:0")).await?;
        let v = streams.first().ok_or(LadderError::Probe {
            path: first_path.clone(),
            what: "a video stream",
        })?;
        let dim = |k: &str| v.get(k).and_then(|x| x.parse::<u32>().ok());
        let (Some(w), Some(h)) = (dim("width"), dim("height")) else {
            return Err(LadderError::Probe {
                path: first_path,
                what: "the picture's size",
            });
        };
        let codecs = avc1(
            v.get("profile").map(String::as_str),
            v.get("level").and_then(|l| l.parse().ok()),
        )
        .map(|c| if audio { format!("{c},mp4a.40.2") } else { c });
        variants.push(Variant {
            rung,
            resolution: (w, h),
            bandwidth: peak,
            average_bandwidth: total_bytes * 8 * 1000 / total_ms.max(1),
            codecs,
            durations_ms: segments.iter().map(|s| s.1).collect(),
        });
    }
    check_aligned(&variants)?;
    let master = config.dir.join(MASTER);
    std::fs::write(&master, master_playlist(&variants)).map_err(io(&master))?;
    Ok(Cut {
        variants,
        source_height,
        dropped,
    })
}

/// Every rendition has the first one's segments, each within a millisecond of its duration.
fn check_aligned(variants: &[Variant]) -> Result<(), LadderError> {
    let Some(first) = variants.first() else {
        return Ok(());
    };
    for v in &variants[1..] {
        let bad = |what: String| LadderError::Misaligned {
            first: first.rung.name(),
            rendition: v.rung.name(),
            what,
        };
        if v.durations_ms.len() != first.durations_ms.len() {
            return Err(bad(format!(
                "{} segments, against {}",
                v.durations_ms.len(),
                first.durations_ms.len()
            )));
        }
        if let Some((i, (a, b))) = first
            .durations_ms
            .iter()
            .zip(&v.durations_ms)
            .enumerate()
            .find(|(_, (a, b))| a.abs_diff(**b) > 1)
        {
            return Err(bad(format!("segment {i} lasts {b} ms, against {a} ms")));
        }
    }
    Ok(())
}

/// RFC 6381's name of an H.264 stream of this profile and level (`avc1.4d401e` for main
/// at 3.0), for the profiles x264 writes.
fn avc1(profile: Option<&str>, level: Option<u32>) -> Option<String> {
    let (idc, constraints) = match profile? {
        "Constrained Baseline" => (0x42, 0xc0),
        "Baseline" => (0x42, 0x00),
        "Main" => (0x4d, 0x40),
        "High" => (0x64, 0x00),
        _ => return None,
    };
    let level = level.filter(|l| (9..=62).contains(l))?;
    Some(format!("avc1.{idc:02x}{constraints:02x}{level:02x}"))
}

async fn run(program: &Path, args: Vec<OsString>) -> Result<Vec<u8>, LadderError> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| LadderError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.trim();
        let tail = err
            .char_indices()
            .rev()
            .nth(2047)
            .map_or(err, |(i, _)| &err[i..]);
        return Err(LadderError::Failed {
            program: program.display().to_string(),
            status: out.status,
            stderr: tail.to_owned(),
        });
    }
    Ok(out.stdout)
}

/// ffprobe's streams of `path` (those of `select` only, if given), each as its keys and
/// values.
async fn probe(
    ffprobe: &Path,
    path: &Path,
    select: Option<&str>,
) -> Result<Vec<std::collections::BTreeMap<String, String>>, LadderError> {
    let mut args: Vec<OsString> = ["-v", "error"].into_iter().map(OsString::from).collect();
    if let Some(s) = select {
        args.extend(["-select_streams", s].map(OsString::from));
    }
    args.extend(
        [
            "-show_entries",
            "stream=codec_type,width,height,profile,level",
            "-of",
            "default=noprint_wrappers=0",
        ]
        .map(OsString::from),
    );
    args.push(path.as_os_str().to_owned());
    let out = run(ffprobe, args).await?;
    Ok(parse_probe(&String::from_utf8_lossy(&out)))
}

/// ffprobe's `default` output: `[STREAM]` sections of `key=value` lines.
fn parse_probe(text: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut cur: Option<std::collections::BTreeMap<String, String>> = None;
    for line in text.lines().map(str::trim) {
        match line {
            "[STREAM]" => cur = Some(Default::default()),
            "[/STREAM]" => out.extend(cur.take()),
            _ => {
                if let (Some(c), Some((k, v))) = (cur.as_mut(), line.split_once('=')) {
                    c.insert(k.to_owned(), v.to_owned());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rungs_read_as_written_and_refuse_what_is_not_a_rung() {
        assert_eq!(
            "720p".parse::<Rung>().unwrap(),
            Rung::new(720, 2800).unwrap()
        );
        assert_eq!(
            "540p@1800k".parse::<Rung>().unwrap(),
            Rung::new(540, 1800).unwrap()
        );
        for (text, why) in [
            ("720", "followed by p"),
            ("p", "not a number"),
            ("-720p", "not a number"),
            ("721p", "odd"),
            ("100p", "outside 144"),
            ("4320p", "outside 144"),
            ("720p@", "followed by k"),
            ("720p@k", "not a number"),
            ("720p@10k", "outside 64"),
            ("720p@99999999999k", "not a number"),
            ("99999999999p", "not a number"),
        ] {
            match text.parse::<Rung>() {
                Err(LadderError::BadRung { text: t, reason }) => {
                    assert_eq!(t, text);
                    assert!(reason.contains(why), "{text}: {reason}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn ladders_sort_tallest_first_and_refuse_duplicates_and_excess() {
        let l: Ladder = "480p, 1080p ,720p".parse().unwrap();
        assert_eq!(l.to_string(), "1080p,720p,480p");
        assert!(matches!("".parse::<Ladder>(), Err(LadderError::Empty)));
        assert!(matches!(" , ".parse::<Ladder>(), Err(LadderError::Empty)));
        assert!(matches!(
            "720p,480p,720p@1000k".parse::<Ladder>(),
            Err(LadderError::Duplicate { height: 720 })
        ));
        assert!(matches!(
            "1080p,900p,720p,540p,480p,360p,240p".parse::<Ladder>(),
            Err(LadderError::TooMany { count: 7 })
        ));
        assert!(matches!(
            "720p,,480p".parse::<Ladder>(),
            Err(LadderError::BadRung { .. })
        ));
        assert!(matches!(
            l.fitting(360),
            Err(LadderError::NothingFits { source_height: 360 })
        ));
        assert_eq!(l.fitting(719).unwrap().to_string(), "480p");
    }

    #[test]
    fn every_rendition_gets_the_same_keyframes_and_its_own_bitrate() {
        let ladder: Ladder = "720p,360p@500k".parse().unwrap();
        let c = VodConfig::new("in.mp4", "/out", ladder.clone());
        let args: Vec<String> = ffmpeg_args(&c, &ladder, true)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let after = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .map(|i| args[i + 1].as_str())
                .unwrap_or_else(|| panic!("{flag} missing"))
        };
        // Output options apply to every output stream: one keyframe rule for all.
        assert_eq!(args.iter().filter(|a| *a == "-force_key_frames").count(), 1);
        assert_eq!(after("-force_key_frames"), "expr:gte(t,n_forced*4)");
        assert_eq!(after("-sc_threshold"), "0");
        assert_eq!(after("-hls_time"), "4");
        assert_eq!(
            after("-filter_complex"),
            "[0:v:0]split=2[s0][s1];[s0]scale=-2:720[v0];[s1]scale=-2:360[v1]"
        );
        assert_eq!(after("-b:v:0"), "2800k");
        assert_eq!(after("-b:v:1"), "500k");
        assert_eq!(after("-maxrate:v:1"), "550k");
        assert_eq!(
            after("-var_stream_map"),
            "v:0,a:0,name:720p v:1,a:1,name:360p"
        );
        assert_eq!(args.iter().filter(|a| *a == "0:a:0").count(), 2);
        assert!(args.last().unwrap().ends_with("/out/%v/index.m3u8"));
        let silent: Vec<String> = ffmpeg_args(&c, &ladder, false)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert!(!silent.iter().any(|a| a == "0:a:0" || a == "-c:a"));
        assert!(silent.iter().any(|a| a == "v:0,name:720p v:1,name:360p"));
    }

    #[test]
    fn the_master_playlist_names_each_rendition_with_its_figures() {
        let v = |h, w, bw, codecs: Option<&str>| Variant {
            rung: Rung::standard(h).unwrap(),
            resolution: (w, h),
            bandwidth: bw,
            average_bandwidth: bw / 2,
            codecs: codecs.map(str::to_owned),
            durations_ms: vec![4000],
        };
        let m = master_playlist(&[
            v(720, 1280, 3_000_000, Some("avc1.4d401f,mp4a.40.2")),
            v(360, 640, 900_000, None),
        ]);
        assert_eq!(
            m,
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-STREAM-INF:BANDWIDTH=3000000,AVERAGE-BANDWIDTH=1500000,RESOLUTION=1280x720,CODECS=\"avc1.4d401f,mp4a.40.2\"\n720p/index.m3u8\n\
             #EXT-X-STREAM-INF:BANDWIDTH=900000,AVERAGE-BANDWIDTH=450000,RESOLUTION=640x360\n360p/index.m3u8\n"
        );
        assert_eq!(avc1(Some("Main"), Some(31)).unwrap(), "avc1.4d401f");
        assert_eq!(avc1(Some("High"), Some(40)).unwrap(), "avc1.640028");
        assert_eq!(avc1(Some("High 10"), Some(40)), None);
        assert_eq!(avc1(Some("Main"), Some(-99i32 as u32)), None);
    }

    #[test]
    fn misaligned_renditions_are_refused() {
        let v = |h, d: Vec<u32>| Variant {
            rung: Rung::standard(h).unwrap(),
            resolution: (h * 16 / 9, h),
            bandwidth: 1,
            average_bandwidth: 1,
            codecs: None,
            durations_ms: d,
        };
        assert!(
            check_aligned(&[
                v(720, vec![4000, 4000, 1001]),
                v(360, vec![4001, 4000, 1000])
            ])
            .is_ok()
        );
        assert!(matches!(
            check_aligned(&[v(720, vec![4000, 4000]), v(360, vec![4000, 3960])]),
            Err(LadderError::Misaligned { rendition, .. }) if rendition == "360p"
        ));
        assert!(matches!(
            check_aligned(&[v(720, vec![4000, 4000]), v(360, vec![8000])]),
            Err(LadderError::Misaligned { .. })
        ));
    }

    #[test]
    fn ffprobe_sections_and_media_playlists_are_read() {
        let p = parse_probe(
            "[STREAM]\ncodec_type=video\nwidth=640\nheight=360\nprofile=Main\nlevel=30\n[/STREAM]\n\
             [STREAM]\ncodec_type=audio\nwidth=N/A\n[/STREAM]\nstray=1\n",
        );
        assert_eq!(p.len(), 2);
        assert_eq!(p[0]["height"], "360");
        assert_eq!(p[1]["codec_type"], "audio");
        let s = media_segments(
            "#EXTM3U\n#EXTINF:4.004000,\nseg00000.ts\n#EXT-X-DISCONTINUITY\nstray.ts\n#EXTINF:nan,\nb.ts\n#EXTINF:-1,\nc.ts\n#EXT-X-ENDLIST\n",
        );
        assert_eq!(
            s,
            vec![
                ("seg00000.ts".to_owned(), 4004),
                ("b.ts".to_owned(), 0),
                ("c.ts".to_owned(), 0)
            ]
        );
    }

    fn rung() -> impl Strategy<Value = Rung> {
        (72u32..=1080, prop::option::of(64u32..=60_000)).prop_map(|(h, k)| {
            let h = h * 2;
            match k {
                Some(k) => Rung::new(h, k).unwrap(),
                None => Rung::standard(h).unwrap(),
            }
        })
    }

    proptest! {
        /// A ladder written out reads back as itself.
        #[test]
        fn ladders_round_trip(rungs in prop::collection::vec(rung(), 1..=MAX_RUNGS)) {
            if let Ok(l) = Ladder::new(rungs) {
                let back: Ladder = l.to_string().parse().unwrap();
                prop_assert_eq!(back, l);
            }
        }

        /// Any text either reads as a ladder that writes out and reads back the same, or is
        /// refused; it never panics.
        #[test]
        fn any_text_reads_or_is_refused(s in "[0-9p@k, ]{0,40}") {
            if let Ok(l) = s.parse::<Ladder>() {
                prop_assert_eq!(l.to_string().parse::<Ladder>().unwrap(), l);
            }
        }

        /// Any playlist text gives segments without panicking, each a URI line.
        #[test]
        fn media_segments_of_any_text(s in "(#EXTINF:[-0-9.a-z]{0,8},\n|[a-z0-9.]{0,6}\n|#EXT-X-[A-Z]{0,4}\n){0,12}") {
            for (uri, _) in media_segments(&s) {
                prop_assert!(!uri.is_empty() && !uri.starts_with('#'));
            }
        }
    }
}
