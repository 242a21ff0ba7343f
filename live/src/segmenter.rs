//! The ffmpeg driver: ffmpeg (started by us) reads the input, encodes H.264 and AAC with a
//! keyframe at every segment boundary and cuts MPEG-TS segments with its HLS muxer into a
//! directory; the driver follows ffmpeg's playlist and hands on each segment once ffmpeg has
//! listed it (so it is complete), with the duration ffmpeg wrote.
//!
//! When ffmpeg exits (the input ended, it failed, it was killed) the segments it listed are
//! handed on and the stream ends: [`Segmenter::next`] answers `None`, and
//! [`Segmenter::exit`] says how ffmpeg ended. A segment ffmpeg did not finish is never
//! handed on.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

const PLAYLIST: &str = "ffmpeg.m3u8";
const POLL: Duration = Duration::from_millis(50);
/// Stderr kept to explain a failure.
const STDERR_TAIL: usize = 2048;

/// What ffmpeg reads.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Input {
    /// A media file, played in real time (`-re`).
    File(PathBuf),
    /// A URL ffmpeg opens as it is (an RTMP or SRT listener, an HTTP stream), in real time
    /// by nature.
    Url(String),
    /// A lavfi filter graph (`-f lavfi`), played in real time: test sources.
    Lavfi(String),
}

impl Input {
    /// A file, or a URL when `s` has a scheme (`rtmp://…`, `srt://…`).
    pub fn parse(s: &str) -> Self {
        if s.contains("://") {
            Self::Url(s.to_owned())
        } else {
            Self::File(PathBuf::from(s))
        }
    }
}

/// How the segmenter encodes and cuts.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SegmenterConfig {
    /// What ffmpeg reads.
    pub input: Input,
    /// Where segments are written (the caller may remove them once handed on).
    pub dir: PathBuf,
    /// Target segment duration, seconds (keyframes forced at each boundary).
    pub segment_secs: u32,
    /// Output height in pixels (width follows the aspect ratio).
    pub height: u32,
    /// Video bitrate, kbit/s.
    pub video_kbps: u32,
    /// The ffmpeg program.
    pub ffmpeg: PathBuf,
    /// Renditions to cut instead of the one of `height` and `video_kbps`: one decode,
    /// scaled to every rung, the same forced keyframes in every rendition (so their
    /// segments begin at the same instants). Segments are handed on with their rung's
    /// index ([`CutSegment::rendition`]).
    pub ladder: Option<crate::Ladder>,
    /// Whether the input has audio to carry (a ladder maps it to every rendition, and
    /// needs to know; a single rendition takes it when there is some). Default `true`.
    pub audio: bool,
}

impl SegmenterConfig {
    /// Defaults: 2 s segments, 360 lines at 800 kbit/s, `ffmpeg` from the `PATH`.
    pub fn new(input: Input, dir: impl Into<PathBuf>) -> Self {
        Self {
            input,
            dir: dir.into(),
            segment_secs: 2,
            height: 360,
            video_kbps: 800,
            ffmpeg: PathBuf::from("ffmpeg"),
            ladder: None,
            audio: true,
        }
    }
}

/// The segmenter failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmenterError {
    /// ffmpeg could not be started.
    #[error("starting {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The segment directory or a segment could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One segment ffmpeg finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutSegment {
    /// Its index (0, 1, …).
    pub index: u64,
    /// Its file.
    pub path: PathBuf,
    /// Its duration, milliseconds (as ffmpeg wrote it, at least 1).
    pub duration_ms: u32,
    /// When the driver saw ffmpeg list it.
    pub written: Instant,
    /// Its rendition: the index of its rung in [`SegmenterConfig::ladder`] (0 without one).
    pub rendition: usize,
}

/// A running ffmpeg cutting segments (see the module's documentation). Dropping it kills
/// ffmpeg.
#[derive(Debug)]
pub struct Segmenter {
    child: Option<Child>,
    /// Each rendition's directory and the segments of it handed on so far.
    renditions: Vec<(PathBuf, u64)>,
    pending: std::collections::VecDeque<CutSegment>,
    exit: Option<Result<std::process::ExitStatus, String>>,
    stderr: Option<tokio::task::JoinHandle<Vec<u8>>>,
    stderr_tail: String,
}

impl Segmenter {
    /// Starts ffmpeg.
    ///
    /// # Errors
    ///
    /// [`SegmenterError::Io`] when the directory cannot be made, [`SegmenterError::Spawn`]
    /// when ffmpeg cannot be started.
    pub fn spawn(config: &SegmenterConfig) -> Result<Self, SegmenterError> {
        std::fs::create_dir_all(&config.dir).map_err(|source| SegmenterError::Io {
            path: config.dir.clone(),
            source,
        })?;
        let secs = config.segment_secs.max(1);
        let mut cmd = Command::new(&config.ffmpeg);
        cmd.args(["-hide_banner", "-nostdin", "-loglevel", "error"]);
        match &config.input {
            Input::File(p) => {
                cmd.arg("-re").arg("-i").arg(p);
            }
            Input::Url(u) => {
                cmd.arg("-i").arg(u);
            }
            Input::Lavfi(g) => {
                cmd.args(["-re", "-f", "lavfi", "-i"]).arg(g);
            }
        }
        let renditions: Vec<PathBuf> = match &config.ladder {
            None => {
                single_args(&mut cmd, config, secs);
                vec![config.dir.clone()]
            }
            Some(ladder) => {
                for r in ladder.rungs() {
                    let d = config.dir.join(r.name());
                    std::fs::create_dir_all(&d)
                        .map_err(|source| SegmenterError::Io { path: d, source })?;
                }
                ladder_args(&mut cmd, config, ladder, secs);
                ladder
                    .rungs()
                    .iter()
                    .map(|r| config.dir.join(r.name()))
                    .collect()
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| SegmenterError::Spawn {
            program: config.ffmpeg.display().to_string(),
            source,
        })?;
        let stderr = child.stderr.take().map(|mut e| {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while let Ok(n) = e.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > 4 * STDERR_TAIL {
                        buf.drain(..buf.len() - STDERR_TAIL);
                    }
                }
                buf
            })
        });
        Ok(Self {
            child: Some(child),
            renditions: renditions.into_iter().map(|d| (d, 0)).collect(),
            pending: Default::default(),
            exit: None,
            stderr,
            stderr_tail: String::new(),
        })
    }

    /// ffmpeg's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// How ffmpeg ended (`None` while it runs): its exit status, or why it could not be
    /// waited for.
    pub fn exit(&self) -> Option<&Result<std::process::ExitStatus, String>> {
        self.exit.as_ref()
    }

    /// What ffmpeg wrote on its standard error (the end of it), once it has exited.
    pub fn stderr(&self) -> &str {
        &self.stderr_tail
    }

    /// Stops ffmpeg (the segments it listed are still handed on).
    pub async fn stop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }

    fn scan(&mut self) -> Result<(), SegmenterError> {
        for (rendition, (dir, seen)) in self.renditions.iter_mut().enumerate() {
            let path = dir.join(PLAYLIST);
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(SegmenterError::Io { path, source }),
            };
            for (index, (uri, ms)) in (0u64..).zip(crate::ladder::media_segments(&text)) {
                if index >= *seen {
                    self.pending.push_back(CutSegment {
                        index,
                        path: dir.join(uri),
                        duration_ms: ms.clamp(1, 60_000),
                        written: Instant::now(),
                        rendition,
                    });
                    *seen = index + 1;
                }
            }
        }
        Ok(())
    }

    /// The next finished segment, waiting for ffmpeg; `None` once ffmpeg has exited and every
    /// segment it listed was handed on.
    ///
    /// # Errors
    ///
    /// [`SegmenterError::Io`] when ffmpeg's playlist cannot be read.
    pub async fn next(&mut self) -> Option<Result<CutSegment, SegmenterError>> {
        loop {
            if let Some(s) = self.pending.pop_front() {
                return Some(Ok(s));
            }
            self.child.as_ref()?;
            let exited = match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(Ok(status)),
                Some(Ok(None)) => None,
                Some(Err(e)) => Some(Err(e.to_string())),
                None => None,
            };
            if let Err(e) = self.scan() {
                return Some(Err(e));
            }
            if let Some(status) = exited {
                self.child = None;
                self.exit = Some(status);
                if let Some(h) = self.stderr.take() {
                    let tail = h.await.unwrap_or_default();
                    self.stderr_tail = String::from_utf8_lossy(&tail).into_owned();
                }
                // The final listing, written as ffmpeg ended.
                if let Err(e) = self.scan() {
                    return Some(Err(e));
                }
                continue;
            }
            if self.pending.is_empty() {
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

/// Reads a segment's file.
///
/// # Errors
///
/// [`SegmenterError::Io`].
pub fn read_segment(path: &Path) -> Result<Vec<u8>, SegmenterError> {
    std::fs::read(path).map_err(|source| SegmenterError::Io {
        path: path.to_owned(),
        source,
    })
}

const X264: [&str; 10] = [
    "libx264",
    "-preset",
    "veryfast",
    "-tune",
    "zerolatency",
    "-profile:v",
    "main",
    "-pix_fmt",
    "yuv420p",
    "-sc_threshold",
];

fn hls_args(cmd: &mut Command, secs: u32) {
    cmd.args([
        "-force_key_frames",
        &format!("expr:gte(t,n_forced*{secs})"),
        "-f",
        "hls",
        "-hls_time",
        &secs.to_string(),
        "-hls_list_size",
        "0",
        "-hls_flags",
        "independent_segments+temp_file",
        "-hls_segment_type",
        "mpegts",
    ]);
}

/// One rendition, `height` lines at `video_kbps`, the input's first audio stream if any.
fn single_args(cmd: &mut Command, config: &SegmenterConfig, secs: u32) {
    let kbps = config.video_kbps.max(50);
    cmd.args(["-map", "0:v:0"]);
    if config.audio {
        cmd.args(["-map", "0:a:0?"]);
    }
    cmd.args(["-vf", &format!("scale=-2:{}", config.height.max(16) & !1)]);
    cmd.arg("-c:v").args(X264).arg("0");
    cmd.args([
        "-b:v",
        &format!("{kbps}k"),
        "-maxrate",
        &format!("{kbps}k"),
        "-bufsize",
        &format!("{}k", kbps * 2),
        "-c:a",
        "aac",
        "-b:a",
        "64k",
        "-ac",
        "2",
    ]);
    hls_args(cmd, secs);
    cmd.arg("-hls_segment_filename")
        .arg(config.dir.join("seg%d.ts"))
        .arg(config.dir.join(PLAYLIST));
}

/// Every rung of `ladder` from one decode: split, scaled, encoded with the same forced
/// keyframes, each rendition into its own directory (`720p/`, …) through one HLS muxer.
fn ladder_args(cmd: &mut Command, config: &SegmenterConfig, ladder: &crate::Ladder, secs: u32) {
    let n = ladder.rungs().len();
    let mut graph = format!("[0:v:0]split={n}");
    for i in 0..n {
        graph.push_str(&format!("[s{i}]"));
    }
    for (i, r) in ladder.rungs().iter().enumerate() {
        graph.push_str(&format!(";[s{i}]scale=-2:{}[v{i}]", r.height));
    }
    cmd.args(["-filter_complex", &graph]);
    for i in 0..n {
        cmd.args(["-map", &format!("[v{i}]")]);
    }
    if config.audio {
        for _ in 0..n {
            cmd.args(["-map", "0:a:0"]);
        }
    }
    cmd.arg("-c:v").args(X264).arg("0");
    let mut map = Vec::with_capacity(n);
    for (i, r) in ladder.rungs().iter().enumerate() {
        let k = r.video_kbps;
        cmd.args([
            &format!("-b:v:{i}"),
            &format!("{k}k"),
            &format!("-maxrate:v:{i}"),
            &format!("{k}k"),
            &format!("-bufsize:v:{i}"),
            &format!("{}k", u64::from(k) * 2),
        ]);
        map.push(if config.audio {
            format!("v:{i},a:{i},name:{}", r.name())
        } else {
            format!("v:{i},name:{}", r.name())
        });
    }
    if config.audio {
        cmd.args(["-c:a", "aac", "-b:a", "64k", "-ac", "2"]);
    }
    hls_args(cmd, secs);
    cmd.args(["-var_stream_map", &map.join(" ")]);
    cmd.arg("-hls_segment_filename")
        .arg(config.dir.join("%v").join("seg%d.ts"))
        .arg(config.dir.join("%v").join(PLAYLIST));
}
