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
}

/// A running ffmpeg cutting segments (see the module's documentation). Dropping it kills
/// ffmpeg.
#[derive(Debug)]
pub struct Segmenter {
    child: Option<Child>,
    dir: PathBuf,
    seen: u64,
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
        let kbps = config.video_kbps.max(50);
        cmd.args([
            "-map",
            "0:v:0",
            "-map",
            "0:a:0?",
            "-vf",
            &format!("scale=-2:{}", config.height.max(16) & !1),
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-tune",
            "zerolatency",
            "-profile:v",
            "main",
            "-pix_fmt",
            "yuv420p",
            "-b:v",
            &format!("{kbps}k"),
            "-maxrate",
            &format!("{kbps}k"),
            "-bufsize",
            &format!("{}k", kbps * 2),
            "-force_key_frames",
            &format!("expr:gte(t,n_forced*{secs})"),
            "-sc_threshold",
            "0",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
            "-ac",
            "2",
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
            "-hls_segment_filename",
        ]);
        cmd.arg(config.dir.join("seg%d.ts"));
        cmd.arg(config.dir.join(PLAYLIST));
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
            dir: config.dir.clone(),
            seen: 0,
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
        let path = self.dir.join(PLAYLIST);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(SegmenterError::Io { path, source }),
        };
        for (index, (uri, ms)) in (0u64..).zip(crate::ladder::media_segments(&text)) {
            if index >= self.seen {
                self.pending.push_back(CutSegment {
                    index,
                    path: self.dir.join(uri),
                    duration_ms: ms.clamp(1, 60_000),
                    written: Instant::now(),
                });
                self.seen = index + 1;
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
