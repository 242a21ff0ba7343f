//! Live streams and the player page on the gateway.
//!
//! - `GET /live/{stream}/index.m3u8`: the sliding-window HLS media playlist of the stream
//!   (`NAME.HEXKEY`, see [`streamspace_live::StreamId`]), built from the manifests this node
//!   verified. The first request subscribes the node to the stream's topic and waits (at most
//!   [`FIRST_MANIFEST`]) for a manifest: a viewer joining late gets the current window.
//! - `GET /live/{stream}/{seq}.ts`: a segment of the window (or of the few kept behind it),
//!   fetched by its CID (every block verified), decrypted here for an encrypted stream with
//!   the keys this gateway holds (the stream key, or the key of the segment's epoch), served
//!   clear for a free stream. Each new segment a manifest announces is fetched as soon as it
//!   is announced, so the node holds (and can serve its peers) the live edge before its
//!   viewer asks.
//! - `GET /live/{stream}/stats.json`: the manifests refused, by reason, and the bytes this
//!   node took from the publisher and from other peers.
//! - `GET /watch/{root}` and `GET /watch/live/{stream}`: the player page (hls.js, shipped with
//!   the program, its SHA-256 checked when the program is built), with a strict
//!   Content-Security-Policy, showing start-up time and the share of bytes from peers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cid::Cid;
use futures::StreamExt;
use streamspace_live::{EpochKey, LiveSegment, ManifestError, StreamId, StreamKey, Verifier};
use streamspace_shard::crypto::{ContentKey, cat_decrypted};
use streamspace_shard::export::{ByteRange, cat};
use streamspace_shard::store::BlockStore;
use streamspace_transport::{Node, NodeEvent};

use crate::gateway::{CacheStats, Keyring, Unavailable, fetch_into_store};
use crate::live_keys::{KEPT, LiveKeys};

/// How long the first request for a stream waits for a manifest.
pub(crate) const FIRST_MANIFEST: Duration = Duration::from_secs(15);
/// How long a segment may take to arrive from the network.
const SEGMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Streams one gateway follows at once.
const MAX_STREAMS: usize = 64;
/// Segments kept behind the live edge (the DVR window).
const DVR: usize = 32;
/// The largest segment served (plaintext).
const MAX_SEGMENT: u64 = 64 << 20;

const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; media-src 'self' blob:; connect-src 'self'; img-src 'self'; worker-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

const HLS_JS: &str = include_str!("watch/hls.min.js");
const PLAYER_JS: &str = include_str!("watch/player.js");
const STYLE_CSS: &str = include_str!("watch/style.css");
const PAGE: &str = include_str!("watch/index.html");
/// The page's icon: the dashboard's (so that browsers do not ask for `/favicon.ico`).
const ICON_SVG: &str = include_str!("dashboard/icon.svg");

struct Followed {
    verifier: Mutex<Verifier>,
    /// Epoch keys released to this viewer by its [`LiveKeys`], and refused.
    keys_released: std::sync::atomic::AtomicU64,
    keys_refused: std::sync::atomic::AtomicU64,
    changed: tokio::sync::watch::Sender<u64>,
    /// When the last manifest was accepted.
    last: Mutex<std::time::Instant>,
}

/// How long a stream may go without a manifest before its viewers are told it ended: three
/// target durations and [`SILENCE_GRACE`] (a publisher that died says nothing).
const SILENCE_GRACE: Duration = Duration::from_secs(3);

struct Live<S> {
    node: Node<S>,
    cache: Arc<CacheStats>,
    keys: Arc<Keyring>,
    /// Where keys of epochs not in `keys` are asked for, and those released so far (the
    /// last [`KEPT`]).
    live_keys: Option<Arc<dyn LiveKeys>>,
    released: Mutex<std::collections::VecDeque<(Cid, ContentKey)>>,
    streams: Mutex<HashMap<String, (StreamId, Arc<Followed>)>>,
    listening: std::sync::atomic::AtomicBool,
}

struct Shared<S>(Arc<Live<S>>);

impl<S> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

/// The live routes and the player page over `node`.
pub(crate) fn router<S: BlockStore + 'static>(
    node: Node<S>,
    cache: Arc<CacheStats>,
    keys: Arc<Keyring>,
    live_keys: Option<Arc<dyn LiveKeys>>,
) -> Router {
    let live = Arc::new(Live {
        node,
        cache,
        keys,
        live_keys,
        released: Mutex::new(std::collections::VecDeque::new()),
        streams: Mutex::new(HashMap::new()),
        listening: false.into(),
    });
    Router::new()
        .route("/live/:stream/index.m3u8", get(playlist::<S>))
        .route("/live/:stream/stats.json", get(stream_stats::<S>))
        .route("/live/:stream/master.m3u8", get(live_master))
        .route("/live/:stream/:segment", get(segment::<S>))
        .route("/watch/stats.json", get(node_stats::<S>))
        .route("/watch/assets/:file", get(asset))
        .route("/watch/live/:stream", get(live_page))
        .route("/watch/:root", get(vod_page::<S>))
        .with_state(Shared(live))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let mut r = (status, format!("{}\n", message.into())).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn parse_stream(text: &str) -> Result<StreamId, Response> {
    text.parse::<StreamId>()
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("stream {text:?}: {e}")))
}

impl<S: BlockStore + 'static> Live<S> {
    /// The stream's state, subscribing to its topic the first time.
    async fn follow(self: &Arc<Self>, stream: &StreamId) -> Result<Arc<Followed>, Response> {
        let topic = stream.topic();
        {
            let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, f)) = streams.get(&topic) {
                return Ok(f.clone());
            }
            if streams.len() >= MAX_STREAMS {
                return Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("this gateway follows {MAX_STREAMS} streams already"),
                ));
            }
        }
        if !self
            .listening
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            tokio::spawn(listen(Arc::downgrade(self), self.node.events()));
        }
        self.node.subscribe(&topic).await.map_err(|e| {
            error(
                StatusCode::BAD_GATEWAY,
                format!("subscribing to {topic}: {e}"),
            )
        })?;
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let f = streams
            .entry(topic)
            .or_insert_with(|| {
                (
                    stream.clone(),
                    Arc::new(Followed {
                        verifier: Mutex::new(Verifier::with_dvr(stream.clone(), DVR)),
                        keys_released: 0.into(),
                        keys_refused: 0.into(),
                        changed: tokio::sync::watch::channel(0).0,
                        last: Mutex::new(std::time::Instant::now()),
                    }),
                )
            })
            .1
            .clone();
        Ok(f)
    }

    fn on_message(self: &Arc<Self>, topic: &str, data: &[u8]) {
        let Some(f) = self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
            .map(|(_, f)| f.clone())
        else {
            return;
        };
        let update = {
            let mut v = f.verifier.lock().unwrap_or_else(|p| p.into_inner());
            match v.accept(data) {
                // Segments were lost to this node: skip them rather than stall for good.
                Err(ManifestError::Gap { .. }) => v.restart(data),
                r => r,
            }
        };
        match update {
            Ok(u) => {
                *f.last.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
                f.changed.send_modify(|n| *n += 1);
                for s in u.new_segments {
                    let (node, cache) = (self.node.clone(), self.cache.clone());
                    tokio::spawn(async move {
                        let _ = fetch_into_store(&node, &cache, s.cid, None).await;
                    });
                }
            }
            Err(e) => tracing::debug!(topic, error = %e, "live manifest refused"),
        }
    }

    /// The key of segment `s`: from the stream key or the epoch's key this gateway holds, or
    /// else the epoch's key asked of its [`LiveKeys`] (kept for the epoch's other segments).
    async fn segment_key(
        &self,
        f: &Followed,
        stream: &StreamId,
        epoch_len: u32,
        s: &LiveSegment,
    ) -> Result<ContentKey, String> {
        if let Some(k) = self.keys.get(&StreamKey::label(stream)) {
            return Ok(StreamKey::from_content_key(k).segment_key(stream, epoch_len, s.seq));
        }
        let label = EpochKey::label(stream, s.epoch);
        let held = self.keys.get(&label).cloned().or_else(|| {
            self.released
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|(l, _)| *l == label)
                .map(|(_, k)| k.clone())
        });
        let open = |k: &ContentKey| {
            EpochKey::from_content_key(k)
                .ok_or_else(|| format!("the key held for epoch {} is not an epoch key", s.epoch))?
                .segment_key(s.seq)
                .map_err(|e| e.to_string())
        };
        if let Some(k) = held {
            return open(&k);
        }
        let Some(source) = &self.live_keys else {
            return Err(format!(
                "no key for epoch {} of {stream}: this viewer holds no license for it",
                s.epoch
            ));
        };
        let k = match source.epoch_key(stream, s.epoch).await {
            Ok(k) => k,
            Err(why) => {
                f.keys_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(format!("epoch {} of {stream}: {why}", s.epoch));
            }
        };
        // A released key that does not open its epoch (a wrong or lying source) is not kept.
        let key = open(&k).inspect_err(|_| {
            f.keys_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })?;
        f.keys_released
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut released = self.released.lock().unwrap_or_else(|p| p.into_inner());
        if !released.iter().any(|(l, _)| *l == label) {
            if released.len() >= KEPT {
                released.pop_front();
            }
            released.push_back((label, k));
        }
        Ok(key)
    }
}

async fn listen<S: BlockStore + 'static>(
    live: Weak<Live<S>>,
    mut events: tokio::sync::broadcast::Receiver<NodeEvent>,
) {
    loop {
        match events.recv().await {
            Ok(NodeEvent::Message { topic, data, .. }) => {
                let Some(l) = live.upgrade() else { return };
                l.on_message(&topic, &data);
            }
            Ok(_) => {
                if live.strong_count() == 0 {
                    return;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Waits until the stream has a verified manifest (at most [`FIRST_MANIFEST`]).
async fn first_manifest(f: &Followed) -> bool {
    let mut rx = f.changed.subscribe();
    tokio::time::timeout(FIRST_MANIFEST, async {
        loop {
            if f.verifier
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .encrypted()
                .is_some()
            {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
    .await
    .is_ok()
        && f.verifier
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .encrypted()
            .is_some()
}

async fn playlist<S: BlockStore + 'static>(
    State(Shared(live)): State<Shared<S>>,
    Path(stream): Path<String>,
) -> Response {
    let id = match parse_stream(&stream) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let f = match live.follow(&id).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if !first_manifest(&f).await {
        return error(
            StatusCode::GATEWAY_TIMEOUT,
            format!("no manifest of {id} in {FIRST_MANIFEST:?}"),
        );
    }
    let silent = f.last.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
    let text = {
        let v = f.verifier.lock().unwrap_or_else(|p| p.into_inner());
        let target = v.window().map(|s| s.duration_ms).max().unwrap_or(1000);
        // A publisher that stopped without a word: the stream has ended for its viewers.
        let gone = silent > Duration::from_millis(3 * u64::from(target)) + SILENCE_GRACE;
        streamspace_live::media_playlist(v.window(), v.ended() || gone, |s| format!("{}.ts", s.seq))
    };
    (
        [
            (header::CONTENT_TYPE, "application/vnd.apple.mpegurl"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        text,
    )
        .into_response()
}

/// Whether the request comes from a program on this machine (a loopback `Host`, and no
/// `Origin` but this gateway's own), as `/play` requires for plaintext.
fn local_request(headers: &HeaderMap) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let name = host.rsplit_once(':').map_or(host, |(n, p)| {
        if p.chars().all(|c| c.is_ascii_digit()) {
            n
        } else {
            host
        }
    });
    let loopback = name == "localhost"
        || name == "[::1]"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback());
    let foreign_origin = headers
        .get(header::ORIGIN)
        .is_some_and(|o| o.to_str().ok() != Some(format!("http://{host}").as_str()));
    loopback && !foreign_origin
}

async fn segment<S: BlockStore + 'static>(
    State(Shared(live)): State<Shared<S>>,
    Path((stream, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let id = match parse_stream(&stream) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(seq) = name.strip_suffix(".ts").and_then(|n| n.parse::<u64>().ok()) else {
        return error(StatusCode::NOT_FOUND, format!("no {name} in a live stream"));
    };
    let f = match live.follow(&id).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let (seg, encrypted, epoch_len) = {
        let v = f.verifier.lock().unwrap_or_else(|p| p.into_inner());
        (v.segment(seq).copied(), v.encrypted(), v.epoch_len())
    };
    let Some(seg) = seg else {
        return error(
            StatusCode::NOT_FOUND,
            format!("segment {seq} of {id} is not in the window"),
        );
    };
    let key = if encrypted == Some(true) {
        if !local_request(&headers) {
            return error(
                StatusCode::FORBIDDEN,
                "an encrypted stream's plaintext is served to programs on this machine only",
            );
        }
        match live
            .segment_key(&f, &id, epoch_len.unwrap_or(1), &seg)
            .await
        {
            Ok(k) => Some(k),
            Err(why) => return error(StatusCode::FORBIDDEN, why),
        }
    } else {
        None
    };
    match tokio::time::timeout(
        SEGMENT_TIMEOUT,
        fetch_into_store(&live.node, &live.cache, seg.cid, None),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(Unavailable::Failed(m))) => return error(StatusCode::BAD_GATEWAY, m),
        Ok(Err(Unavailable::Timeout)) | Err(_) => {
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                format!("segment {seq} of {id}: no answer from the network"),
            );
        }
    }
    let store = live.node.store().clone();
    let mut body = Vec::new();
    let read = async {
        let mut pieces: std::pin::Pin<
            Box<dyn futures::Stream<Item = Result<bytes::Bytes, String>> + Send>,
        > = match &key {
            Some(k) => Box::pin(
                cat_decrypted(store.as_ref(), seg.cid, k, ByteRange::ALL)
                    .map(|r| r.map_err(|e| e.to_string())),
            ),
            None => Box::pin(
                cat(store.as_ref(), seg.cid, ByteRange::ALL).map(|r| r.map_err(|e| e.to_string())),
            ),
        };
        while let Some(p) = pieces.next().await {
            let p = p?;
            if body.len() as u64 + p.len() as u64 > MAX_SEGMENT {
                return Err("the segment is too large".to_owned());
            }
            body.extend_from_slice(&p);
        }
        Ok(())
    };
    if let Err(e) = read.await {
        return error(
            if key.is_some() {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::BAD_GATEWAY
            },
            format!("segment {seq} of {id}: {e}"),
        );
    }
    (
        [
            (header::CONTENT_TYPE, "video/mp2t"),
            (
                header::CACHE_CONTROL,
                if key.is_some() {
                    "private, no-store"
                } else {
                    "public, max-age=60"
                },
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

fn json(v: serde_json::Value) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        v.to_string(),
    )
        .into_response()
}

fn byte_counts<S: BlockStore + 'static>(
    live: &Live<S>,
    publisher: Option<&StreamId>,
) -> serde_json::Value {
    let stats = live.node.stats();
    let from_publisher = publisher
        .and_then(StreamId::publisher_peer)
        .and_then(|p| stats.peers.get(&p))
        .map_or(0, |c| c.bytes_received);
    serde_json::json!({
        "bytesReceived": stats.bytes_received,
        "bytesFromPublisher": from_publisher,
        "bytesFromPeers": stats.bytes_received - from_publisher.min(stats.bytes_received),
        "blocksFromStore": live.cache.hits(),
        "blocksFetched": live.cache.misses(),
    })
}

async fn stream_stats<S: BlockStore + 'static>(
    State(Shared(live)): State<Shared<S>>,
    Path(stream): Path<String>,
) -> Response {
    let id = match parse_stream(&stream) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let f = live
        .streams
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id.topic())
        .map(|(_, f)| f.clone());
    let mut v = byte_counts(&live, Some(&id));
    if let Some(f) = f {
        let verifier = f.verifier.lock().unwrap_or_else(|p| p.into_inner());
        let r = verifier.refusals();
        v["ended"] = verifier.ended().into();
        v["window"] = verifier.window().map(|s| s.seq).collect::<Vec<_>>().into();
        v["epochKeys"] = serde_json::json!({
            "released": f.keys_released.load(std::sync::atomic::Ordering::Relaxed),
            "refused": f.keys_refused.load(std::sync::atomic::Ordering::Relaxed),
        });
        v["refused"] = serde_json::json!({
            "total": r.total(),
            "malformed": r.malformed,
            "wrongStream": r.wrong_stream,
            "notPublisher": r.not_publisher,
            "forged": r.forged,
            "replayed": r.replayed,
            "reordered": r.reordered,
            "equivocations": r.equivocations,
            "gaps": r.gaps,
            "outOfLine": r.out_of_line,
        });
    }
    json(v)
}

async fn node_stats<S: BlockStore + 'static>(State(Shared(live)): State<Shared<S>>) -> Response {
    json(byte_counts(&live, None))
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, ty) = match file.as_str() {
        "hls.min.js" => (HLS_JS, "text/javascript; charset=utf-8"),
        "player.js" => (PLAYER_JS, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        "icon.svg" => (ICON_SVG, "image/svg+xml"),
        _ => return error(StatusCode::NOT_FOUND, format!("no asset {file:?}")),
    };
    (
        [
            (header::CONTENT_TYPE, ty),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The page, its source and kind given to the script as data attributes (both made of CID
/// or stream-id characters only, checked by their parsers before they reach here).
fn page(title: &str, src: &str, kind: &str, stats: &str) -> Response {
    let body = PAGE
        .replace("{{TITLE}}", title)
        .replace("{{SRC}}", src)
        .replace("{{KIND}}", kind)
        .replace("{{STATS}}", stats);
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The `ladder` query parameter (`720p,480p@1000k`), read and written back in its one
/// spelling.
fn query_ladder(
    query: &HashMap<String, String>,
) -> Result<Option<streamspace_live::Ladder>, Response> {
    query
        .get("ladder")
        .map(|text| {
            text.parse::<streamspace_live::Ladder>()
                .map_err(|e| error(StatusCode::BAD_REQUEST, format!("ladder {text:?}: {e}")))
        })
        .transpose()
}

/// `GET /live/{stream}/master.m3u8?ladder=720p,480p`: the master playlist of a live ladder,
/// each rung the rendition stream `NAME-RUNG` of the same publisher (what `streamspace live
/// --ladder` publishes). Every rendition's manifests are verified as any stream's, so the
/// ladder in the query can only name streams of the publisher in `stream`.
async fn live_master(
    Path(stream): Path<String>,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let id = match parse_stream(&stream) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let ladder = match query_ladder(&query) {
        Ok(Some(l)) => l,
        Ok(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "a live master playlist needs ?ladder= (e.g. 720p,480p)",
            );
        }
        Err(r) => return r,
    };
    match streamspace_live::ladder::live_master_playlist(&id, &ladder) {
        Ok(m) => (
            [
                (header::CONTENT_TYPE, "application/vnd.apple.mpegurl"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            m,
        )
            .into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, format!("ladder of {id}: {e}")),
    }
}

async fn live_page(
    Path(stream): Path<String>,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let id = match parse_stream(&stream) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match query_ladder(&query) {
        Ok(None) => page(
            id.name(),
            &format!("/live/{id}/index.m3u8"),
            "live",
            &format!("/live/{id}/stats.json"),
        ),
        // Each rendition is a stream: the page shows the node's bytes, all renditions.
        Ok(Some(ladder)) => page(
            id.name(),
            &format!("/live/{id}/master.m3u8?ladder={ladder}"),
            "live",
            "/watch/stats.json",
        ),
        Err(r) => r,
    }
}

async fn vod_page<S: BlockStore + 'static>(
    State(Shared(live)): State<Shared<S>>,
    Path(root): Path<String>,
) -> Response {
    let Ok(cid) = Cid::try_from(root.as_str()) else {
        return error(StatusCode::BAD_REQUEST, format!("invalid CID {root:?}"));
    };
    // An item this viewer holds a key for plays decrypted (`/play`), any other as it is.
    let src = if live.keys.contains_key(&cid) {
        format!("/play/{cid}/index.m3u8")
    } else {
        format!("/ipfs/{cid}/index.m3u8")
    };
    page(&cid.to_string(), &src, "vod", "/watch/stats.json")
}
