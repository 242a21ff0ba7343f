//! The viewer's side of a live stream: manifests verified (signature, publisher, order,
//! continuity) into a sliding window of segments, and the HLS media playlist of that window.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

use cid::Cid;

use crate::ManifestError;
use crate::manifest::{SignedManifest, StreamId};

/// Digests of recently accepted manifests kept to tell a replay from a reordering.
const RECENT: usize = 256;

/// Manifests refused, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refusals {
    /// Undecodable.
    pub malformed: u64,
    /// For another stream.
    pub wrong_stream: u64,
    /// Signed by (or naming) a key that is not the stream's publisher.
    pub not_publisher: u64,
    /// A signature that does not verify.
    pub forged: u64,
    /// A manifest accepted before, sent again.
    pub replayed: u64,
    /// An older manifest arriving after a newer one.
    pub reordered: u64,
    /// Two different manifests under one sequence number, or a window that rewrites
    /// segments already accepted.
    pub equivocations: u64,
    /// A window that does not reach back to the segments already accepted.
    pub gaps: u64,
    /// A manifest after the end of the stream, or a window that shrinks the stream.
    pub out_of_line: u64,
}

impl Refusals {
    /// All refusals.
    pub fn total(&self) -> u64 {
        self.malformed
            + self.wrong_stream
            + self.not_publisher
            + self.forged
            + self.replayed
            + self.reordered
            + self.equivocations
            + self.gaps
            + self.out_of_line
    }

    fn count(&mut self, e: &ManifestError) {
        let c = match e {
            ManifestError::Malformed(_) => &mut self.malformed,
            ManifestError::WrongStream { .. } => &mut self.wrong_stream,
            ManifestError::NotPublisher => &mut self.not_publisher,
            ManifestError::BadSignature => &mut self.forged,
            ManifestError::Replayed { .. } => &mut self.replayed,
            ManifestError::Reordered { .. } => &mut self.reordered,
            ManifestError::Equivocation { .. } => &mut self.equivocations,
            ManifestError::Gap { .. } => &mut self.gaps,
            _ => &mut self.out_of_line,
        };
        *c += 1;
    }
}

/// A segment accepted from a verified manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveSegment {
    /// Its media sequence number.
    pub seq: u64,
    /// Its root.
    pub cid: Cid,
    /// Its duration, milliseconds.
    pub duration_ms: u32,
    /// Its key epoch.
    pub epoch: u64,
    /// Whether it follows a gap the viewer chose to skip ([`Verifier::restart`]).
    pub discontinuity: bool,
}

/// What an accepted manifest changed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Update {
    /// Segments new to this viewer, oldest first.
    pub new_segments: Vec<LiveSegment>,
    /// Whether the stream has ended.
    pub ended: bool,
}

/// Verifies one stream's manifests, in the order they arrive, into its window.
///
/// A manifest is accepted when it decodes, names this stream and its publisher's key, carries
/// that key's signature, has a sequence number greater than every one accepted, and its window
/// joins the segments already accepted (it may skip manifests, not segments) without rewriting
/// any. Every refusal is typed and counted ([`Verifier::refusals`]).
///
/// # Examples
///
/// ```
/// use ed25519_dalek::SigningKey;
/// use streamspace_live::{Manifest, Segment, StreamId, Verifier};
/// # let cid: cid::Cid = "bafkqaaa".parse().unwrap();
/// let publisher = SigningKey::from_bytes(&[7; 32]);
/// let stream = StreamId::new("news", &publisher.verifying_key()).unwrap();
/// let m = Manifest {
///     stream: stream.clone(), seq: 0, first: 0,
///     segments: vec![Segment { cid, duration_ms: 2000 }],
///     epoch_len: 10, key_epoch: 0, encrypted: false, ended: false,
/// };
/// let bytes = m.sign(&publisher).unwrap();
/// let mut viewer = Verifier::new(stream);
/// assert_eq!(viewer.accept(bytes.encode()).unwrap().new_segments.len(), 1);
/// assert!(viewer.accept(bytes.encode()).is_err()); // a replay
/// assert_eq!(viewer.refusals().replayed, 1);
/// ```
#[derive(Debug)]
pub struct Verifier {
    stream: StreamId,
    dvr: usize,
    last_seq: Option<u64>,
    recent: VecDeque<[u8; 32]>,
    segments: BTreeMap<u64, LiveSegment>,
    /// The newest accepted manifest's window: `first..end`.
    window: (u64, u64),
    epoch_len: Option<u32>,
    encrypted: Option<bool>,
    ended: bool,
    refusals: Refusals,
}

impl Verifier {
    /// A verifier of `stream`'s manifests keeping the newest 64 segments.
    pub fn new(stream: StreamId) -> Self {
        Self::with_dvr(stream, crate::manifest::MAX_WINDOW)
    }

    /// A verifier keeping the newest `dvr` segments (at least one) behind the live edge.
    pub fn with_dvr(stream: StreamId, dvr: usize) -> Self {
        Self {
            stream,
            dvr: dvr.max(1),
            last_seq: None,
            recent: VecDeque::new(),
            segments: BTreeMap::new(),
            window: (0, 0),
            epoch_len: None,
            encrypted: None,
            ended: false,
            refusals: Refusals::default(),
        }
    }

    /// The stream.
    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    /// Manifests refused so far, by reason.
    pub fn refusals(&self) -> Refusals {
        self.refusals
    }

    /// Whether the stream has ended.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Whether the stream's segments are sealed (`None` before a manifest was accepted).
    pub fn encrypted(&self) -> Option<bool> {
        self.encrypted
    }

    /// The stream's epoch length (`None` before a manifest was accepted).
    pub fn epoch_len(&self) -> Option<u32> {
        self.epoch_len
    }

    /// The segment with media sequence number `seq`, if it is still kept.
    pub fn segment(&self, seq: u64) -> Option<&LiveSegment> {
        self.segments.get(&seq)
    }

    /// The newest accepted manifest's window, oldest first.
    pub fn window(&self) -> impl Iterator<Item = &LiveSegment> + '_ {
        self.segments
            .range(self.window.0..self.window.1)
            .map(|(_, s)| s)
    }

    /// Verifies and applies one manifest.
    ///
    /// # Errors
    ///
    /// The [`ManifestError`] saying why it is refused; the refusal is counted and nothing
    /// changes.
    pub fn accept(&mut self, bytes: &[u8]) -> Result<Update, ManifestError> {
        let r = self.check(bytes, false).map(|m| self.apply(&m, false));
        if let Err(e) = &r {
            self.refusals.count(e);
        }
        r
    }

    /// Applies a manifest that [`Verifier::accept`] refused only for a gap: the viewer
    /// skips the missing segments (the playlist marks the jump with
    /// `#EXT-X-DISCONTINUITY`). Every other check still applies.
    ///
    /// # Errors
    ///
    /// As [`Verifier::accept`], except [`ManifestError::Gap`].
    pub fn restart(&mut self, bytes: &[u8]) -> Result<Update, ManifestError> {
        let r = self.check(bytes, true).map(|m| self.apply(&m, true));
        if let Err(e) = &r {
            self.refusals.count(e);
        }
        r
    }

    fn check(&self, bytes: &[u8], skip_gap: bool) -> Result<SignedManifest, ManifestError> {
        let s = SignedManifest::decode(bytes)?;
        let m = s.manifest();
        if m.stream.name() != self.stream.name() {
            return Err(ManifestError::WrongStream {
                stream: m.stream.to_string(),
            });
        }
        if m.stream.publisher() != self.stream.publisher() {
            return Err(ManifestError::NotPublisher);
        }
        s.verify_signature()?;
        let digest = s.digest();
        if let Some(last) = self.last_seq {
            if m.seq <= last {
                return Err(if self.recent.contains(&digest) {
                    ManifestError::Replayed { seq: m.seq }
                } else if m.seq == last {
                    ManifestError::Equivocation { seq: m.seq }
                } else {
                    ManifestError::Reordered { seq: m.seq, last }
                });
            }
            if self.ended {
                return Err(ManifestError::AfterEnd { seq: m.seq });
            }
            if self.epoch_len != Some(m.epoch_len) || self.encrypted != Some(m.encrypted) {
                return Err(ManifestError::Equivocation { seq: m.seq });
            }
            let known_end = self.window.1;
            if m.end() < known_end {
                return Err(ManifestError::Shrunk {
                    seq: m.seq,
                    end: m.end(),
                    known: known_end,
                });
            }
            if m.first > known_end && !skip_gap {
                return Err(ManifestError::Gap {
                    expected: known_end,
                    first: m.first,
                });
            }
            for (n, seg) in m.numbered() {
                if let Some(had) = self.segments.get(&n) {
                    if had.cid != seg.cid || had.duration_ms != seg.duration_ms {
                        return Err(ManifestError::Equivocation { seq: m.seq });
                    }
                }
            }
        }
        Ok(s)
    }

    fn apply(&mut self, s: &SignedManifest, restarted: bool) -> Update {
        let m = s.manifest();
        let gap = self.last_seq.is_some() && m.first > self.window.1;
        let mut new_segments = Vec::new();
        for (n, seg) in m.numbered() {
            if self.segments.contains_key(&n) {
                continue;
            }
            let ls = LiveSegment {
                seq: n,
                cid: seg.cid,
                duration_ms: seg.duration_ms,
                epoch: m.epoch_of(n),
                discontinuity: restarted && gap && new_segments.is_empty(),
            };
            self.segments.insert(n, ls);
            new_segments.push(ls);
        }
        while self.segments.len() > self.dvr.max(m.segments.len()) {
            self.segments.pop_first();
        }
        if !m.segments.is_empty() || self.last_seq.is_none() {
            self.window = (m.first, m.end());
        }
        self.last_seq = Some(m.seq);
        self.recent.push_back(s.digest());
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        self.epoch_len = Some(m.epoch_len);
        self.encrypted = Some(m.encrypted);
        self.ended = m.ended;
        Update {
            new_segments,
            ended: m.ended,
        }
    }

    /// The HLS media playlist of the window (version 3), each segment's URI given by `uri`
    /// from its media sequence number; `#EXT-X-ENDLIST` once the stream has ended; `None`
    /// before a manifest was accepted.
    pub fn media_playlist(&self, uri: impl Fn(&LiveSegment) -> String) -> Option<String> {
        self.last_seq?;
        Some(media_playlist(self.window(), self.ended, uri))
    }
}

/// An HLS media playlist (version 3) of `segments` (consecutive, oldest first).
pub fn media_playlist<'a>(
    segments: impl Iterator<Item = &'a LiveSegment>,
    ended: bool,
    uri: impl Fn(&LiveSegment) -> String,
) -> String {
    let segments: Vec<&LiveSegment> = segments.collect();
    let target = segments
        .iter()
        .map(|s| s.duration_ms.div_ceil(1000))
        .max()
        .unwrap_or(1)
        .max(1);
    let mut out = String::new();
    let first = segments.first().map_or(0, |s| s.seq);
    let _ = write!(
        out,
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:{first}\n"
    );
    for (i, s) in segments.iter().enumerate() {
        if s.discontinuity && i > 0 {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        let _ = write!(
            out,
            "#EXTINF:{}.{:03},\n{}\n",
            s.duration_ms / 1000,
            s.duration_ms % 1000,
            uri(s)
        );
    }
    if ended {
        out.push_str("#EXT-X-ENDLIST\n");
    }
    out
}
