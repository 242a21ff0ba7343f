//! An HTTP gateway in front of a node, after the IPFS trustless gateway specification:
//! `GET|HEAD /ipfs/{cid}[/path]` answers verifiable blocks (`?format=raw` or
//! `Accept: application/vnd.ipld.raw`) and CAR streams (`?format=car` or
//! `Accept: application/vnd.ipld.car`), and, for players, the file's bytes with single-range
//! `Range` requests. Content missing from the node's store is fetched from the network (every
//! block verified against its CID) before it is served. Responses to content-addressed paths
//! are immutable and say so.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cid::Cid;
use futures::StreamExt;
use streamspace_shard::crypto::{
    ContentKey, PLAIN_CHUNK, SHARD_SIZE, cat_decrypted, plaintext_len,
};
use streamspace_shard::dag::{hamt_shards, resolve};
use streamspace_shard::export::{ByteRange, cat, file_size};
use streamspace_shard::store::{BlockStore, HoldBudget, Holding, StoreError};
use streamspace_transport::{FetchOptions, Node, Pace};

/// How long a request may wait for content to arrive from the network.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// How far a streamed answer's fetch runs ahead of what the client has taken: what a slow
/// client makes the node fetch and hold is bounded by this, per answer.
pub const READ_AHEAD: u64 = 16 << 20;
/// The most bytes all streamed answers together hold in the store against eviction (about 30
/// answers' read-ahead): beyond it, blocks fetched for an answer are stored without a hold, so
/// that however many slow clients there are, the rest of the store stays evictable.
pub const HOLD_BUDGET: u64 = 512 << 20;
const IMMUTABLE: &str = "public, max-age=29030400, immutable";
const RAW: &str = "application/vnd.ipld.raw";
const CAR: &str = "application/vnd.ipld.car";
/// The CAR this gateway writes.
const CAR_TYPE: &str = "application/vnd.ipld.car; version=1; order=dfs; dups=n";
/// The identity multihash: the "digest" is the block itself.
const IDENTITY: u64 = 0x00;

/// Blocks the gateway found in the node's store, and blocks it had to fetch.
#[derive(Debug, Default)]
pub struct CacheStats {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl CacheStats {
    /// Blocks found in the node's store.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Blocks fetched from the network.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    fn count(&self, report: &streamspace_transport::FetchReport) {
        self.hits
            .fetch_add(report.blocks - report.fetched, Ordering::Relaxed);
        self.misses.fetch_add(report.fetched, Ordering::Relaxed);
    }
}

/// Content keys a viewer holds (released to it with its licenses), by item root.
pub type Keyring = HashMap<Cid, ContentKey>;

/// What the gateway's handlers share.
struct Gateway<S> {
    node: Node<S>,
    cache: Arc<CacheStats>,
    keys: Arc<Keyring>,
    /// What streamed answers may hold in the store, together ([`HOLD_BUDGET`]).
    holds: Arc<HoldBudget>,
}

impl<S> Clone for Gateway<S> {
    fn clone(&self) -> Self {
        Self {
            node: self.node.clone(),
            cache: self.cache.clone(),
            keys: self.keys.clone(),
            holds: self.holds.clone(),
        }
    }
}

/// The gateway's routes over `node`, counting store hits and misses in `cache`.
pub fn router<S: BlockStore + 'static>(node: Node<S>, cache: Arc<CacheStats>) -> Router {
    router_with_keys(node, cache, Arc::new(Keyring::new()))
}

/// The gateway's routes, with `/play/{root}[/path]` decrypting the items whose keys are in
/// `keys`.
pub fn router_with_keys<S: BlockStore + 'static>(
    node: Node<S>,
    cache: Arc<CacheStats>,
    keys: Arc<Keyring>,
) -> Router {
    routes(node, cache, keys, None)
}

/// The gateway's routes as [`router_with_keys`], with the keys of encrypted live streams'
/// epochs not in `keys` asked of `live_keys` as the viewer reaches them (see
/// [`crate::live_keys`]).
pub fn router_with_live_keys<S: BlockStore + 'static>(
    node: Node<S>,
    cache: Arc<CacheStats>,
    keys: Arc<Keyring>,
    live_keys: Arc<dyn crate::live_keys::LiveKeys>,
) -> Router {
    routes(node, cache, keys, Some(live_keys))
}

fn routes<S: BlockStore + 'static>(
    node: Node<S>,
    cache: Arc<CacheStats>,
    keys: Arc<Keyring>,
    live_keys: Option<Arc<dyn crate::live_keys::LiveKeys>>,
) -> Router {
    Router::new()
        .route("/ipfs/*path", get(serve::<S>))
        .route("/play/*path", get(play::<S>))
        .with_state(Gateway {
            node: node.clone(),
            cache: cache.clone(),
            keys: keys.clone(),
            holds: HoldBudget::new(HOLD_BUDGET),
        })
        .merge(crate::live::router(node, cache, keys, live_keys))
}

/// Reads every key file (as `add --encrypt --key-out` writes them) in `dir`; each must name
/// its item's root.
///
/// # Errors
///
/// [`Error::Config`](crate::Error::Config) naming the file that cannot be read, is not a key
/// file, or names no root.
pub fn read_keyring(dir: &std::path::Path) -> Result<Keyring, crate::Error> {
    use anyhow::Context;
    let read = || -> anyhow::Result<Keyring> {
        let mut keys = Keyring::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            if !path.is_file() {
                continue;
            }
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
            let (key, root) = ContentKey::from_key_file(&text)
                .with_context(|| format!("key file {}", path.display()))?;
            let root =
                root.with_context(|| format!("key file {} names no root", path.display()))?;
            keys.insert(root, key);
        }
        Ok(keys)
    };
    read().map_err(crate::Error::Config)
}

/// What a request asks the gateway for.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One block (`application/vnd.ipld.raw`).
    Raw,
    /// A CAR (`application/vnd.ipld.car`).
    Car,
    /// The file's bytes.
    File,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let mut r = (status, format!("{}\n", message.into())).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The parameters of a media type, names lowercased.
#[doc(hidden)]
pub type Params = Vec<(String, String)>;

/// The format an `Accept` header prefers, by its q-values (ties to the first listed), with
/// the parameters of the entry chosen; `File` when nothing else is acceptable. Entries that
/// do not parse are ignored, as are those with `q=0`.
#[doc(hidden)]
pub fn parse_accept(accept: &str) -> (Format, Params) {
    let mut best: Option<(u32, Format, Params)> = None;
    for entry in accept.split(',') {
        let mut parts = entry.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if media.is_empty() {
            continue;
        }
        let mut q = 1000u32;
        let mut params = Vec::new();
        let mut bad = false;
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                bad = true;
                break;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().trim_matches('"'));
            if k == "q" {
                match parse_q(v) {
                    Some(x) => q = x,
                    None => bad = true,
                }
            } else {
                params.push((k, v.to_ascii_lowercase()));
            }
        }
        if bad || q == 0 {
            continue;
        }
        let format = match media.as_str() {
            RAW => Format::Raw,
            CAR => Format::Car,
            _ => Format::File,
        };
        if best.as_ref().is_none_or(|(bq, ..)| q > *bq) {
            best = Some((q, format, params));
        }
    }
    best.map_or((Format::File, Vec::new()), |(_, f, p)| (f, p))
}

/// A q-value in thousandths: `0`, `1`, `0.5`, `1.000`.
fn parse_q(v: &str) -> Option<u32> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole = match int {
        "0" => 0,
        "1" => 1000,
        _ => return None,
    };
    let mut f = 0u32;
    for (i, b) in frac.bytes().enumerate() {
        f += u32::from(b - b'0') * [100, 10, 1][i];
    }
    let q = whole + f;
    (q <= 1000).then_some(q)
}

/// The format of a request (`?format=` first, then `Accept`), and, for a CAR, its
/// parameters checked against what this gateway writes (version 1, depth-first order, no
/// duplicates): a CAR it cannot write as asked is refused, never sent otherwise.
fn format_of(query: &HashMap<String, String>, headers: &HeaderMap) -> Result<Format, Response> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .unwrap_or("");
    let (accepted, params) = parse_accept(accept);
    let format = match query.get("format").map(String::as_str) {
        Some("raw") => Format::Raw,
        Some("car") => Format::Car,
        Some(other) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("unsupported format {other:?} (raw or car)"),
            ));
        }
        None => accepted,
    };
    if format == Format::Car {
        let param = |q: &str, p: &str| {
            query
                .get(q)
                .cloned()
                .or_else(|| params.iter().find(|(k, _)| k == p).map(|(_, v)| v.clone()))
        };
        let bad = |m: String| Err(error(StatusCode::BAD_REQUEST, m));
        match param("car-version", "version").as_deref() {
            None | Some("1") => {}
            Some(v) => return bad(format!("CAR version {v:?} is not served (1)")),
        }
        match param("car-order", "order").as_deref() {
            None | Some("dfs" | "unk") => {}
            Some(v) => return bad(format!("CAR order {v:?} is not served (dfs)")),
        }
        match param("car-dups", "dups").as_deref() {
            None | Some("n") => {}
            Some(v) => return bad(format!("CAR dups {v:?} is not served (n)")),
        }
    }
    Ok(format)
}

/// Whether an `If-None-Match` value names `etag` (or is `*`); weak tags compare by value.
#[doc(hidden)]
pub fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.trim() == "*"
        || if_none_match
            .split(',')
            .map(|t| t.trim())
            .any(|t| t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// Whether a `Cache-Control` request header says `only-if-cached`.
fn only_if_cached(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("only-if-cached"))
}

/// Parses a single `bytes=` range against a length: `(offset, count)`.
#[doc(hidden)]
pub fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 {
            return None;
        }
        (len.saturating_sub(n), len.checked_sub(1)?)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() {
            len.checked_sub(1)?
        } else {
            b.parse::<u64>().ok()?.min(len.checked_sub(1)?)
        };
        (start, end)
    };
    (start <= end && start < len).then(|| (start, end - start + 1))
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "m3u8" => "application/vnd.apple.mpegurl",
        "ts" => "video/mp2t",
        "mp4" | "m4s" => "video/mp4",
        "webm" => "video/webm",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "html" => "text/html; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Whether a browser shows content of type `ty` without running anything in it (media,
/// playlists, plain text, JSON). HTML, SVG, scripts and unknown types are not.
fn passive(ty: &str) -> bool {
    ty.starts_with("video/")
        || ty.starts_with("audio/")
        || ty.starts_with("text/plain")
        || ty == "application/json"
        || ty == "application/vnd.apple.mpegurl"
}

/// A path inside an item in one spelling: empty and `.` segments dropped (`a//b`, `./a`, `a/`
/// name `a/b`, `a`, `a`); `None` for a path with a `..` segment.
#[doc(hidden)]
pub fn normalise_path(path: &str) -> Option<String> {
    let mut out = String::with_capacity(path.len());
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => return None,
            s => {
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(s);
            }
        }
    }
    Some(out)
}

fn timeout(path: &str) -> Response {
    error(
        StatusCode::GATEWAY_TIMEOUT,
        format!("/ipfs/{path}: no answer from the network in {FETCH_TIMEOUT:?}"),
    )
}

/// Why content could not be brought from the network.
#[derive(Debug)]
pub(crate) enum Unavailable {
    /// The fetch failed (nobody has it, every block offered was bad, a budget ran out).
    Failed(String),
    /// No answer within [`FETCH_TIMEOUT`].
    Timeout,
}

/// Fetches `target` (or the blocks of a byte range of it) from the network into the node's
/// store, counting hits and misses in `cache`.
pub(crate) async fn fetch_into_store<S: BlockStore + 'static>(
    node: &Node<S>,
    cache: &CacheStats,
    target: Cid,
    range: Option<(u64, u64)>,
) -> Result<(), Unavailable> {
    fetch_from_network(node, cache, target, range)
        .await
        .map_err(|e| match e {
            Missing::Timeout => Unavailable::Timeout,
            Missing::Absent(m) | Missing::Failed(m) => Unavailable::Failed(m),
        })
}

/// Why the gateway could not bring content from the network.
enum Missing {
    /// No peer has the target itself.
    Absent(String),
    /// Anything else (a block below it unavailable or bad, a budget).
    Failed(String),
    /// No answer within [`FETCH_TIMEOUT`].
    Timeout,
}

/// How the gateway fetches `range` of an item (or all of it): as Bitswap does, the
/// neighbours first, then the DHT's providers.
async fn network_options<S: BlockStore + 'static>(
    node: &Node<S>,
    range: Option<(u64, u64)>,
) -> FetchOptions {
    FetchOptions {
        range,
        peers: node.connected_peers().await.unwrap_or_default(),
        ..FetchOptions::default()
    }
}

async fn fetch_from_network<S: BlockStore + 'static>(
    node: &Node<S>,
    cache: &CacheStats,
    target: Cid,
    range: Option<(u64, u64)>,
) -> Result<(), Missing> {
    use streamspace_transport::FetchError;
    let options = network_options(node, range).await;
    match tokio::time::timeout(FETCH_TIMEOUT, node.fetch(target, options)).await {
        Ok(Ok(report)) => {
            cache.count(&report);
            Ok(())
        }
        Ok(Err(e)) => {
            let m = format!("fetching {target}: {e}");
            Err(match e {
                FetchError::NoProviders(c) | FetchError::Unavailable { cid: c, .. }
                    if c == target =>
                {
                    Missing::Absent(m)
                }
                _ => Missing::Failed(m),
            })
        }
        Err(_) => Err(Missing::Timeout),
    }
}

/// [`fetch_into_store`], failures answered as the gateway answers them: 404 when nobody has
/// the target, 502 for any other failure, 504 past the deadline.
async fn fetch<S: BlockStore + 'static>(
    node: &Node<S>,
    cache: &CacheStats,
    target: Cid,
    range: Option<(u64, u64)>,
    path: &str,
) -> Result<(), Response> {
    fetch_from_network(node, cache, target, range)
        .await
        .map_err(|e| match e {
            Missing::Absent(m) => error(StatusCode::NOT_FOUND, format!("/ipfs/{path}: {m}")),
            Missing::Failed(m) => error(StatusCode::BAD_GATEWAY, format!("/ipfs/{path}: {m}")),
            Missing::Timeout => timeout(path),
        })
}

/// The node's store, fetching single blocks it lacks from the network (to walk paths).
pub(crate) struct Fetching<S: BlockStore + 'static> {
    pub(crate) node: Node<S>,
    pub(crate) cache: Arc<CacheStats>,
}

impl<S: BlockStore + 'static> BlockStore for Fetching<S> {
    async fn get(&self, cid: &Cid) -> Result<Option<bytes::Bytes>, StoreError> {
        if let Some(b) = self.node.store().get(cid).await? {
            self.cache.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(b));
        }
        let one = network_options(&self.node, Some((0, 0))).await;
        match self.node.fetch(*cid, one).await {
            Ok(report) => self.cache.count(&report),
            Err(_) => return Ok(None),
        }
        self.node.store().get(cid).await
    }
    async fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
        self.node.store().has(cid).await
    }
    async fn put_many(&self, blocks: Vec<streamspace_shard::Block>) -> Result<(), StoreError> {
        self.node.store().put_many(blocks).await
    }
    async fn delete(&self, cid: &Cid) -> Result<bool, StoreError> {
        self.node.store().delete(cid).await
    }
}

/// A store that notes, in order, every block read through it (the blocks a traversal
/// needed, for a CAR that lets the client verify the same traversal).
struct Recording<'a, T> {
    inner: &'a T,
    seen: std::sync::Mutex<Vec<Cid>>,
}

impl<'a, T: BlockStore> Recording<'a, T> {
    fn new(inner: &'a T) -> Self {
        Self {
            inner,
            seen: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Vec<Cid> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl<T: BlockStore> BlockStore for Recording<'_, T> {
    async fn get(&self, cid: &Cid) -> Result<Option<bytes::Bytes>, StoreError> {
        let got = self.inner.get(cid).await?;
        if got.is_some() {
            self.seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(*cid);
        }
        Ok(got)
    }
    async fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
        self.inner.has(cid).await
    }
    async fn put_many(&self, blocks: Vec<streamspace_shard::Block>) -> Result<(), StoreError> {
        self.inner.put_many(blocks).await
    }
    async fn delete(&self, cid: &Cid) -> Result<bool, StoreError> {
        self.inner.delete(cid).await
    }
}

/// What a CAR answer holds below the path (the trustless gateway's `dag-scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The terminal element's block.
    Block,
    /// The terminal element: a whole file (or the blocks of `entity-bytes` of it), a
    /// directory's own node(s) without its entries, any other block alone.
    Entity(Option<(i64, Option<i64>)>),
    /// The whole DAG below the terminal element.
    All,
}

fn scope_of(query: &HashMap<String, String>) -> Result<Scope, Response> {
    let bad = |m: String| Err(error(StatusCode::BAD_REQUEST, m));
    let bytes = match query.get("entity-bytes") {
        None => None,
        Some(v) => {
            let parsed = v.split_once(':').and_then(|(a, b)| {
                let from = a.parse::<i64>().ok()?;
                let to = if b == "*" {
                    None
                } else {
                    Some(b.parse::<i64>().ok()?)
                };
                Some((from, to))
            });
            match parsed {
                Some(r) => Some(r),
                None => return bad(format!("entity-bytes {v:?}: expected from:to or from:*")),
            }
        }
    };
    match (query.get("dag-scope").map(String::as_str), bytes) {
        (None | Some("all"), None) => Ok(Scope::All),
        (None | Some("entity"), b) => Ok(Scope::Entity(b)),
        (Some("block"), None) => Ok(Scope::Block),
        (Some("all" | "block"), Some(_)) => bad("entity-bytes goes with dag-scope=entity".into()),
        (Some(other), _) => bad(format!(
            "unsupported dag-scope {other:?} (block, entity or all)"
        )),
    }
}

/// Resolves `entity-bytes` against a file of `len` bytes: `(offset, count)`; negative
/// positions count from the end, the end is inclusive and clamped to the file.
fn entity_range((from, to): (i64, Option<i64>), len: u64) -> Option<(u64, u64)> {
    let at = |v: i64| -> u64 {
        if v < 0 {
            len.saturating_sub(v.unsigned_abs())
        } else {
            v as u64
        }
    };
    let start = at(from);
    let end = to.map_or(len, |t| at(t).saturating_add(1).min(len));
    if len == 0 {
        return Some((0, 0));
    }
    (start < len && end > start).then(|| (start, end - start))
}

/// The blocks of a CAR answer below the path, in order, fetching what is missing.
async fn car_blocks<S: BlockStore + 'static>(
    node: &Node<S>,
    cache: &CacheStats,
    fetching: &Fetching<S>,
    target: Cid,
    scope: Scope,
    path: &str,
) -> Result<Option<Vec<Cid>>, Response> {
    use streamspace_shard::block::DAG_PB;
    use streamspace_shard::pb::{DataType, PbNode, UnixFsData};
    let scope = match scope {
        Scope::All => return fetch(node, cache, target, None, path).await.map(|()| None),
        s => s,
    };
    let Ok(Some(data)) = fetching.get(&target).await else {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("/ipfs/{path}: block {target} not found"),
        ));
    };
    if scope == Scope::Block || target.codec() != DAG_PB {
        return Ok(Some(vec![target]));
    }
    let unixfs = |block: bytes::Bytes| {
        PbNode::decode(block).ok().and_then(|n| {
            let fs = n.data.as_ref().and_then(|d| UnixFsData::decode(d).ok())?;
            Some((n, fs))
        })
    };
    let kind = unixfs(data).map(|(_, fs)| fs.kind);
    match kind {
        Some(DataType::Directory) => Ok(Some(vec![target])),
        Some(DataType::HamtShard) => hamt_shards(fetching, &target)
            .await
            .map(Some)
            .map_err(|e| error(StatusCode::BAD_GATEWAY, format!("/ipfs/{path}: {e}"))),
        _ => {
            let Scope::Entity(Some(bytes)) = scope else {
                return fetch(node, cache, target, None, path).await.map(|()| None);
            };
            // Only the blocks that reading the range touches.
            let len = file_size(fetching, &target)
                .await
                .map_err(|e| error(StatusCode::BAD_GATEWAY, format!("/ipfs/{path}: {e}")))?;
            // A range that selects nothing of the file answers as `dag-scope=block`, as the
            // trustless gateway specification asks.
            let Some((offset, count)) = entity_range(bytes, len).filter(|(_, c)| *c > 0) else {
                return Ok(Some(vec![target]));
            };
            fetch(node, cache, target, Some((offset, count)), path).await?;
            let store = node.store().as_ref();
            let rec = Recording::new(store);
            let mut parts = std::pin::pin!(cat(&rec, target, ByteRange::new(offset, Some(count))));
            while let Some(p) = parts.next().await {
                p.map_err(|e| error(StatusCode::BAD_GATEWAY, format!("/ipfs/{path}: {e}")))?;
            }
            Ok(Some(rec.take()))
        }
    }
}

async fn serve<S: BlockStore + 'static>(
    State(Gateway {
        node, cache, holds, ..
    }): State<Gateway<S>>,
    method: axum::http::Method,
    Path(path): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let (cid_text, rest) = path.split_once('/').unwrap_or((&path, ""));
    let Ok(root) = Cid::try_from(cid_text) else {
        return error(StatusCode::BAD_REQUEST, format!("invalid CID {cid_text:?}"));
    };
    let format = match format_of(&query, &headers) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let mut h = HeaderMap::new();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("/ipfs/{path}")) {
        h.insert("x-ipfs-path", v);
    }
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    // Content from the network runs in no origin of ours: a page served here cannot read what
    // this gateway serves to the machine (`/play`).
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    // An identity CID carries its block: answered as it is, nothing fetched.
    if root.hash().code() == IDENTITY {
        return identity(root, rest, format, &headers, h);
    }
    if only_if_cached(&headers) && !node.store().has(&root).await.unwrap_or(false) {
        return error(
            StatusCode::PRECONDITION_FAILED,
            format!("/ipfs/{path}: not held here (only-if-cached)"),
        );
    }
    // Whatever is missing comes from the network, verified block by block: the blocks on the
    // path first, then what the format needs of the target.
    let fetching = Fetching {
        node: node.clone(),
        cache: cache.clone(),
    };
    let recording = Recording::new(&fetching);
    // Every CID on the path, for `X-Ipfs-Roots`.
    let walk = async {
        let mut roots = vec![root];
        for segment in rest.split('/').filter(|s| !s.is_empty()) {
            let here = roots[roots.len() - 1];
            roots.push(resolve(&recording, &here, segment).await?);
        }
        Ok::<_, streamspace_shard::dag::ExportError>(roots)
    };
    let roots = match tokio::time::timeout(FETCH_TIMEOUT, walk).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return error(StatusCode::NOT_FOUND, format!("/ipfs/{path}: {e}")),
        Err(_) => return timeout(&path),
    };
    let target = roots[roots.len() - 1];
    let list: Vec<String> = roots.iter().map(Cid::to_string).collect();
    if let Ok(v) = HeaderValue::from_str(&list.join(",")) {
        h.insert("x-ipfs-roots", v);
    }
    // The target itself: absent from every peer is 404, whatever the format.
    match tokio::time::timeout(FETCH_TIMEOUT, fetching.get(&target)).await {
        Ok(Ok(Some(_))) => {}
        Ok(_) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("/ipfs/{path}: {target} is held by no peer reached"),
            );
        }
        Err(_) => return timeout(&path),
    }
    // The blocks that prove the path, for a CAR.
    let path_blocks = recording.take();
    let store = node.store().clone();
    let etag_base = target.to_string();
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // A 304 for a client that holds the answer already: the headers without the body.
    let unchanged = |etag: &str, h: &HeaderMap| {
        if_none_match
            .as_deref()
            .is_some_and(|inm| etag_matches(inm, etag))
            .then(|| {
                let mut h = h.clone();
                h.remove(header::CONTENT_TYPE);
                h.remove(header::CONTENT_DISPOSITION);
                if let Ok(v) = HeaderValue::from_str(etag) {
                    h.insert(header::ETAG, v);
                }
                (StatusCode::NOT_MODIFIED, h).into_response()
            })
    };
    match format {
        Format::Raw => {
            let etag = format!("\"{etag_base}.raw\"");
            if let Some(r) = unchanged(&etag, &h) {
                return r;
            }
            let Ok(Some(data)) = fetching.get(&target).await else {
                return error(StatusCode::NOT_FOUND, format!("block {target} not held"));
            };
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(RAW));
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            if let Ok(v) = HeaderValue::from_str(&etag) {
                h.insert(header::ETAG, v);
            }
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{target}.bin\""))
            {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            // A range of the block's bytes, as of a file's.
            let (status, offset, count) = match byte_range(&headers, data.len() as u64, &mut h) {
                Ok(r) => r,
                Err(r) => return r,
            };
            let part = data.slice(offset as usize..(offset + count) as usize);
            (status, h, part).into_response()
        }
        Format::Car => {
            let scope = match scope_of(&query) {
                Ok(s) => s,
                Err(r) => return r,
            };
            let tag = match scope {
                Scope::All => "all".to_owned(),
                Scope::Block => "block".to_owned(),
                Scope::Entity(None) => "entity".to_owned(),
                Scope::Entity(Some((a, b))) => {
                    format!("entity.{a}-{}", b.map_or("*".to_owned(), |b| b.to_string()))
                }
            };
            // A CAR carries the blocks of the path to its target: two paths to one target are
            // two answers, so the path is part of the tag.
            let path_tag = {
                let named = format!("{root}/{rest}");
                let c = streamspace_shard::block::cid_of(
                    cid::Version::V1,
                    streamspace_shard::block::RAW,
                    named.as_bytes(),
                );
                hex::encode(&c.hash().digest()[..8])
            };
            let etag = format!("\"{etag_base}.car.{tag}.{path_tag}\"");
            if let Some(r) = unchanged(&etag, &h) {
                return r;
            }
            if method == axum::http::Method::HEAD {
                // The headers alone: nothing below the target is fetched, no CAR is written.
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CAR_TYPE));
                if let Ok(v) = HeaderValue::from_str(&etag) {
                    h.insert(header::ETAG, v);
                }
                return (StatusCode::OK, h, Body::empty()).into_response();
            }
            let body_blocks = match car_blocks(&node, &cache, &fetching, target, scope, &path).await
            {
                Ok(b) => b,
                Err(r) => return r,
            };
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CAR_TYPE));
            if let Ok(v) = HeaderValue::from_str(&etag) {
                h.insert(header::ETAG, v);
            }
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{target}.car\""))
            {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            // Streamed through a bounded pipe: memory stays at the pipe's size.
            let (writer, reader) = tokio::io::duplex(256 * 1024);
            tokio::spawn(async move {
                if let Err(e) = write_scoped_car(
                    store.as_ref(),
                    root,
                    path_blocks,
                    target,
                    body_blocks,
                    writer,
                )
                .await
                {
                    tracing::warn!(%target, error = %e, "CAR stream ended early");
                }
            });
            let body = Body::from_stream(tokio_util::io::ReaderStream::new(reader));
            (StatusCode::OK, h, body).into_response()
        }
        Format::File => {
            let etag = format!("\"{etag_base}\"");
            if let Some(r) = unchanged(&etag, &h) {
                return r;
            }
            let len = match file_size(&fetching, &target).await {
                Ok(l) => l,
                Err(e) => return error(StatusCode::NOT_ACCEPTABLE, format!("not a file: {e}")),
            };
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type(rest)),
            );
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            if let Ok(v) = HeaderValue::from_str(&etag) {
                h.insert(header::ETAG, v);
            }
            let (status, offset, count) = match byte_range(&headers, len, &mut h) {
                Ok(r) => r,
                Err(r) => return r,
            };
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
            // HEAD needs the root alone, which is here.
            if method == axum::http::Method::HEAD || count == 0 {
                return (status, h, Body::empty()).into_response();
            }
            let answer = Answer {
                status,
                h,
                path: &path,
            };
            stream_range(node, cache, holds, target, (offset, count), answer).await
        }
    }
}

/// The answer to a byte range of a file, streamed: only the blocks under the range are
/// fetched, in playback order, in the background, and each goes out as soon as it has arrived
/// and been verified. The first byte leaves once the first block of the range is here; a
/// failure before it is answered 502 (also when no block arrived within [`FETCH_TIMEOUT`]),
/// a failure after it cuts the body short. The deadline is on progress,
/// not on the whole answer, so a long film on a slow link is served to its end; a client that
/// goes away stops the fetch.
///
/// The fetch is paced by the client: it runs at most [`READ_AHEAD`] bytes past what the
/// client has taken, and every block it brings (or finds in the store) is held against
/// eviction until the answer has read it, so a block is never evicted between its arrival
/// and its sending, and a slow client holds at most that much of the store; all answers
/// together hold at most [`HOLD_BUDGET`].
async fn stream_range<S: BlockStore + 'static>(
    node: Node<S>,
    cache: Arc<CacheStats>,
    holds: Arc<HoldBudget>,
    target: Cid,
    (offset, count): (u64, u64),
    Answer { status, h, path }: Answer<'_>,
) -> Response {
    let (done_tx, done) = tokio::sync::watch::channel(None);
    let (position, paced) = tokio::sync::watch::channel(offset);
    let holding = Arc::new(Holding::with_budget(node.store().clone(), holds));
    let fetcher = {
        let node = node.clone();
        let holding = holding.clone();
        tokio::spawn(async move {
            let mut options = network_options(&node, Some((offset, count))).await;
            options.pace = Some(Pace {
                position: paced,
                ahead: READ_AHEAD,
            });
            let r = node.fetch_into(holding.as_ref(), target, options).await;
            if let Ok(report) = &r {
                cache.count(report);
            }
            let _ = done_tx.send(Some(r.map(|_| ()).map_err(|e| e.to_string())));
        })
    };
    // The fetch ends when the answer does, however it ends.
    let guard = AbortOnDrop(fetcher);
    let arriving = Arriving { holding, done };
    let (first_tx, first) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let (tx, body) = body_pipe();
    tokio::spawn(async move {
        let _guard = guard;
        let parts = cat(&arriving, target, ByteRange::new(offset, Some(count)));
        let mut parts = std::pin::pin!(parts);
        // What the client has taken (or the few pieces the body buffers) paces the fetch.
        let mut at = offset;
        let mut sent = |len: u64| {
            at += len;
            position.send_replace(at);
        };
        match parts.next().await {
            Some(Ok(p)) => {
                let _ = first_tx.send(Ok(()));
                let len = p.len() as u64;
                if tx.send(Ok(p)).await.is_ok() {
                    sent(len);
                    forward(parts, tx, sent).await;
                }
            }
            Some(Err(e)) => {
                let _ = first_tx.send(Err(e.to_string()));
            }
            None => {
                let _ = first_tx.send(Ok(()));
            }
        }
    });
    match first.await {
        Ok(Ok(())) => (status, h, body).into_response(),
        Ok(Err(e)) => error(
            StatusCode::BAD_GATEWAY,
            format!("/ipfs/{path}: fetching {target}: {e}"),
        ),
        Err(_) => error(
            StatusCode::BAD_GATEWAY,
            format!("/ipfs/{path}: fetching {target} ended"),
        ),
    }
}

/// A streamed answer's status and headers, and the path it answers.
struct Answer<'a> {
    status: StatusCode,
    h: HeaderMap,
    path: &'a str,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The node's store, read while a fetch fills it: a block not here yet is waited for until
/// the fetch ends, or until [`FETCH_TIMEOUT`] passes without it. A block read is no longer
/// held for the answer.
struct Arriving<S: BlockStore> {
    holding: Arc<Holding<S>>,
    /// The fetch's outcome, once it ended.
    done: tokio::sync::watch::Receiver<Option<Result<(), String>>>,
}

/// How often a block not here yet is looked for while the fetch runs, besides whenever the
/// fetch brings one (a block some other writer stored is seen this late at most).
const ARRIVAL_POLL: Duration = Duration::from_millis(100);

impl<S: BlockStore> Arriving<S> {
    /// The block, from the fetch's hands (checked when it arrived) or from the store
    /// (checked here unless the store checks its reads): either way hashed once.
    async fn look(&self, cid: &Cid) -> Result<Option<bytes::Bytes>, StoreError> {
        let b =
            match self.holding.take_awaited(cid) {
                Some(b) => Some(b.into_parts().1),
                None => self.holding.store().get(cid).await?.filter(|d| {
                    S::VERIFIES_READS || streamspace_shard::block::verify(cid, d).is_ok()
                }),
            };
        if b.is_some() {
            self.holding.release(cid);
        }
        Ok(b)
    }
}

impl<S: BlockStore> BlockStore for Arriving<S> {
    /// Every block answered is checked once ([`Arriving::look`]): readers need not hash again.
    const VERIFIES_READS: bool = true;

    async fn get(&self, cid: &Cid) -> Result<Option<bytes::Bytes>, StoreError> {
        let deadline = tokio::time::Instant::now() + FETCH_TIMEOUT;
        let mut done = self.done.clone();
        self.holding.await_block(*cid);
        loop {
            // Listening before looking: a block stored in between still wakes this.
            let arrived = self.holding.arrived();
            let mut arrived = std::pin::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(b) = self.look(cid).await? {
                return Ok(Some(b));
            }
            if done.borrow().is_some() || tokio::time::Instant::now() >= deadline {
                // The fetch ended (or stalled) without it: one last look.
                return self.look(cid).await;
            }
            tokio::select! {
                () = arrived => {}
                _ = done.changed() => {}
                () = tokio::time::sleep(ARRIVAL_POLL) => {}
            }
        }
    }
    async fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
        self.holding.store().has(cid).await
    }
    async fn put_many(&self, blocks: Vec<streamspace_shard::Block>) -> Result<(), StoreError> {
        self.holding.store().put_many(blocks).await
    }
    async fn delete(&self, cid: &Cid) -> Result<bool, StoreError> {
        self.holding.store().delete(cid).await
    }
}

/// The answer for an identity CID, whose block is in the CID: nothing is fetched.
fn identity(
    root: Cid,
    rest: &str,
    format: Format,
    headers: &HeaderMap,
    mut h: HeaderMap,
) -> Response {
    if !rest.split('/').all(|s| s.is_empty()) {
        return error(
            StatusCode::NOT_FOUND,
            format!("{root} is an inline block: no path below it"),
        );
    }
    let data = bytes::Bytes::copy_from_slice(root.hash().digest());
    if let Ok(v) = HeaderValue::from_str(&root.to_string()) {
        h.insert("x-ipfs-roots", v);
    }
    let etag = match format {
        Format::Raw => format!("\"{root}.raw\""),
        Format::Car => format!("\"{root}.car.all\""),
        Format::File => format!("\"{root}\""),
    };
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|inm| etag_matches(inm, &etag))
    {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    match format {
        Format::Raw => {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(RAW));
            (StatusCode::OK, h, data).into_response()
        }
        Format::Car => {
            use streamspace_shard::car::{encode_header, encode_section};
            let mut car = bytes::BytesMut::from(&encode_header(&[root])[..]);
            encode_section(&root, &data, &mut car);
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CAR_TYPE));
            (StatusCode::OK, h, car.freeze()).into_response()
        }
        Format::File if root.codec() == streamspace_shard::block::RAW => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            (StatusCode::OK, h, data).into_response()
        }
        Format::File => error(
            StatusCode::NOT_ACCEPTABLE,
            format!("{root} is an inline block, not a file: ask for it as raw or car"),
        ),
    }
}

type Piece = Result<bytes::Bytes, std::io::Error>;

/// A response body fed through a small bounded channel: memory stays at a few pieces.
fn body_pipe() -> (tokio::sync::mpsc::Sender<Piece>, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Piece>(4);
    (
        tx,
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
}

/// Sends `parts` into a body pipe, stopping at the first error (which ends the body early) or
/// when the client goes away; `sent` is told the length of each part the pipe took.
async fn forward<E>(
    parts: impl futures::Stream<Item = Result<bytes::Bytes, E>>,
    tx: tokio::sync::mpsc::Sender<Piece>,
    mut sent: impl FnMut(u64),
) where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut parts = std::pin::pin!(parts);
    while let Some(p) = parts.next().await {
        let p = p.map_err(std::io::Error::other);
        let len = p.as_ref().map_or(0, |b| b.len() as u64);
        let stop = p.is_err();
        if tx.send(p).await.is_err() || stop {
            break;
        }
        sent(len);
    }
}

/// The `Range` of a request on `len` bytes: status, offset and count, with `Content-Range` set
/// in `h`; a 416 answer for a range that cannot be served.
fn byte_range(
    headers: &HeaderMap,
    len: u64,
    h: &mut HeaderMap,
) -> Result<(StatusCode, u64, u64), Response> {
    let Some(r) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok((StatusCode::OK, 0, len));
    };
    match parse_range(r, len) {
        Some((o, c)) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {o}-{}/{len}", o + c - 1)) {
                h.insert(header::CONTENT_RANGE, v);
            }
            Ok((StatusCode::PARTIAL_CONTENT, o, c))
        }
        None => {
            let mut resp = error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("range {r:?} of {len} bytes"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            Err(resp)
        }
    }
}

/// Writes a CARv1 rooted at `root`: the blocks of the path, then `body` (or the whole DAG
/// below `target`, depth first), each block once.
async fn write_scoped_car<S: BlockStore, W: tokio::io::AsyncWrite + Unpin>(
    store: &S,
    root: Cid,
    path_blocks: Vec<Cid>,
    target: Cid,
    body: Option<Vec<Cid>>,
    mut out: W,
) -> anyhow::Result<()> {
    use futures::TryStreamExt;
    use streamspace_shard::car::{encode_header, encode_section};
    use tokio::io::AsyncWriteExt;
    let mut seen = std::collections::HashSet::new();
    out.write_all(&encode_header(&[root])).await?;
    let mut buf = bytes::BytesMut::new();
    let mut put = async |cid: Cid, data: &[u8], out: &mut W| -> anyhow::Result<()> {
        buf.clear();
        encode_section(&cid, data, &mut buf);
        out.write_all(&buf).await?;
        Ok(())
    };
    let listed = path_blocks
        .into_iter()
        .chain(body.iter().flatten().copied());
    for cid in listed {
        if seen.insert(cid) {
            let data = store
                .get(&cid)
                .await?
                .ok_or_else(|| anyhow::anyhow!("block {cid} is no longer in the store"))?;
            put(cid, &data, &mut out).await?;
        }
    }
    if body.is_none() {
        let mut all = std::pin::pin!(streamspace_shard::dag::walk(store, target));
        while let Some((cid, data)) = all.try_next().await? {
            if seen.insert(cid) {
                put(cid, &data, &mut out).await?;
            }
        }
    }
    out.flush().await?;
    Ok(())
}

/// `/play/{root}[/path]`: the plaintext of an encrypted item (or of a file of an encrypted
/// directory) for a viewer holding its key, with byte ranges over the plaintext. Only the
/// shards under the range are fetched; each is verified, then opened (its tag checked) before
/// a byte of it is sent. Answers are private: never to be kept by shared caches.
async fn play<S: BlockStore + 'static>(
    State(Gateway {
        node, cache, keys, ..
    }): State<Gateway<S>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    // Plaintext goes to programs on this machine only: a loopback Host (no DNS rebinding) and no
    // Origin but this gateway's own (no page from elsewhere, nor a sandboxed `/ipfs` page).
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let loopback_host = {
        let name = host.rsplit_once(':').map_or(host, |(n, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                n
            } else {
                host
            }
        });
        name == "localhost"
            || name == "[::1]"
            || name
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| a.is_loopback())
    };
    let foreign_origin = headers
        .get(header::ORIGIN)
        .is_some_and(|o| o.to_str().ok() != Some(format!("http://{host}").as_str()));
    if !loopback_host || foreign_origin {
        return error(
            StatusCode::FORBIDDEN,
            "/play serves programs on this machine only",
        );
    }
    let (cid_text, rest) = path.split_once('/').unwrap_or((&path, ""));
    let Ok(root) = Cid::try_from(cid_text) else {
        return error(StatusCode::BAD_REQUEST, format!("invalid CID {cid_text:?}"));
    };
    // One name per file: the per-file key is derived from the name as it was imported, so
    // `a//b` and `./a` must not name another key (nor fail to open) for the same file.
    let Some(rest) = normalise_path(rest) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("/play/{path}: `..` is not allowed in a path"),
        );
    };
    let rest = rest.as_str();
    let Some(key) = keys.get(&root) else {
        return error(
            StatusCode::FORBIDDEN,
            format!("no key for {root}: this viewer holds no license for it"),
        );
    };
    let key = if rest.is_empty() {
        key.clone()
    } else {
        key.for_file(rest)
    };
    let fetching = Fetching {
        node: node.clone(),
        cache: cache.clone(),
    };
    let target = match tokio::time::timeout(FETCH_TIMEOUT, resolve(&fetching, &root, rest)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return error(StatusCode::NOT_FOUND, format!("/play/{path}: {e}")),
        Err(_) => return timeout(&path),
    };
    let sealed = match file_size(&fetching, &target).await {
        Ok(l) => l,
        Err(e) => return error(StatusCode::NOT_ACCEPTABLE, format!("not a file: {e}")),
    };
    let Some(len) = plaintext_len(sealed) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("/play/{path}: {sealed} bytes is not a sealed stream"),
        );
    };
    let mut h = HeaderMap::new();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Plaintext runs in no origin: a decrypted page cannot script this gateway (and read
    // other items' plaintext through it). Active content is never shown inline.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    let ty = content_type(rest);
    if passive(ty) {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ty));
    } else {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment"),
        );
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let (status, offset, count) = match byte_range(&headers, len, &mut h) {
        Ok(r) => r,
        Err(r) => return r,
    };
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    // The sealed shards under the plaintext range.
    let (plain, sealed_chunk) = (PLAIN_CHUNK as u64, SHARD_SIZE as u64);
    let first = offset / plain;
    let last = (offset + count).div_ceil(plain).max(first + 1);
    let from = first * sealed_chunk;
    let upto = (last * sealed_chunk).min(sealed);
    if let Err(r) = fetch(&node, &cache, target, Some((from, upto - from)), &path).await {
        return r;
    }
    let store = node.store().clone();
    // The first shard is opened before answering: a key that does not fit is an error, not
    // an empty 200.
    if count > 0 {
        let mut first = std::pin::pin!(cat_decrypted(
            store.as_ref(),
            target,
            &key,
            ByteRange::new(offset, Some(1)),
        ));
        let first = first.next().await;
        if let Some(Err(e)) = first {
            return error(
                StatusCode::FORBIDDEN,
                format!("the key held for {root} does not open /play/{path}: {e}"),
            );
        }
    }
    let (tx, body) = body_pipe();
    tokio::spawn(async move {
        let range = ByteRange::new(offset, Some(count));
        forward(
            cat_decrypted(store.as_ref(), target, &key, range),
            tx,
            |_| {},
        )
        .await;
    });
    (status, h, body).into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::http::Request;
    use futures::TryStreamExt;
    use http_body_util::BodyExt;
    use streamspace_shard::car::read_car;
    use streamspace_shard::import::ImportOptions;
    use streamspace_shard::store::{MemoryStore, add_reader};
    use streamspace_transport::{Config, Keypair, meter::Free};
    use tower::ServiceExt;

    use super::*;

    /// An origin node and a gateway's node that joined through it.
    async fn origin_and_gateway() -> (Node<MemoryStore>, Node<MemoryStore>) {
        let origin = Node::start(
            Config::new(Keypair::generate_ed25519()).loopback(),
            Arc::new(MemoryStore::new()),
            Arc::new(Free),
        )
        .await
        .unwrap();
        let mut c = Config::new(Keypair::generate_ed25519()).loopback();
        c.bootstrap = origin.dialable_addrs().await.unwrap();
        let gw_node = Node::start(c, Arc::new(MemoryStore::new()), Arc::new(Free))
            .await
            .unwrap();
        (origin, gw_node)
    }

    /// Reads `body` until at least `n` bytes came (the answer still open).
    async fn read_at_least(body: &mut Body, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < n {
            let frame = body.frame().await.unwrap().unwrap();
            got.extend_from_slice(frame.data_ref().unwrap());
        }
        got
    }

    /// Adds `data` to `store` as one file; its root and the root's links.
    async fn file_in(
        store: &MemoryStore,
        data: &[u8],
    ) -> (Cid, Vec<streamspace_shard::pb::PbLink>) {
        let root = add_reader(
            Some(store),
            std::io::Cursor::new(data.to_vec()),
            ImportOptions::default(),
        )
        .await
        .unwrap()
        .cid;
        let root_block = store.get(&root).await.unwrap().unwrap();
        let links = streamspace_shard::pb::PbNode::decode(root_block)
            .unwrap()
            .links;
        (root, links)
    }

    async fn body(r: Response) -> Vec<u8> {
        r.into_body().collect().await.unwrap().to_bytes().to_vec()
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 10)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 10)));
        assert_eq!(parse_range("bytes=-5", 100), Some((95, 5)));
        assert_eq!(parse_range("bytes=50-500", 100), Some((50, 50)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-4", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=-0", 100), None);
    }

    /// An origin's store that holds back one block until told to let it go.
    struct Gated {
        inner: MemoryStore,
        held: std::sync::Mutex<Option<Cid>>,
        open: tokio::sync::watch::Receiver<bool>,
    }

    impl BlockStore for Gated {
        async fn get(&self, cid: &Cid) -> Result<Option<bytes::Bytes>, StoreError> {
            let held = *self.held.lock().unwrap() == Some(*cid);
            if held {
                let mut open = self.open.clone();
                let _ = open.wait_for(|o| *o).await;
            }
            self.inner.get(cid).await
        }
        async fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
            self.inner.has(cid).await
        }
        async fn put_many(&self, b: Vec<streamspace_shard::Block>) -> Result<(), StoreError> {
            self.inner.put_many(b).await
        }
        async fn delete(&self, cid: &Cid) -> Result<bool, StoreError> {
            self.inner.delete(cid).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_streams_from_its_first_block_and_head_fetches_nothing_more() {
        let (release, open) = tokio::sync::watch::channel(false);
        let origin = Node::start(
            Config::new(Keypair::generate_ed25519()).loopback(),
            Arc::new(Gated {
                inner: MemoryStore::new(),
                held: std::sync::Mutex::new(None),
                open,
            }),
            Arc::new(Free),
        )
        .await
        .unwrap();
        // 64 leaves of 256 KiB.
        let data: Vec<u8> = (0..16u32 << 20).map(|i| (i * 13 % 253) as u8).collect();
        let (root, links) = file_in(&origin.store().inner, &data).await;
        assert_eq!(links.len(), 64);
        // The origin holds back the last leaf: an answer that waited for the whole file would
        // never start.
        *origin.store().held.lock().unwrap() = Some(links[63].cid);
        let mut c = Config::new(Keypair::generate_ed25519()).loopback();
        c.bootstrap = origin.dialable_addrs().await.unwrap();
        let gw_node = Node::start(c, Arc::new(MemoryStore::new()), Arc::new(Free))
            .await
            .unwrap();
        let app = router(gw_node.clone(), Arc::new(CacheStats::default()));

        let head = |uri: String| {
            app.clone()
                .oneshot(Request::head(uri).body(Body::empty()).unwrap())
        };
        // HEAD: the headers of the whole file, from its root alone.
        let r = head(format!("/ipfs/{root}")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CONTENT_LENGTH],
            (16u64 << 20).to_string()
        );
        assert!(body(r).await.is_empty());
        // HEAD of the CAR: its headers, no CAR written, nothing fetched below the root.
        let r = head(format!("/ipfs/{root}?format=car")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(CAR)
        );
        assert!(body(r).await.is_empty());
        assert_eq!(gw_node.stats().shards_received, 1, "the root only");

        let r = tokio::time::timeout(
            Duration::from_secs(20),
            app.clone().oneshot(
                Request::get(format!("/ipfs/{root}"))
                    .body(Body::empty())
                    .unwrap(),
            ),
        )
        .await
        .expect("the answer starts while a block of the file is still missing")
        .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let mut body_stream = r.into_body();
        // The first bytes arrive, verified, while the last leaf is still held back.
        let mut got = read_at_least(&mut body_stream, 256 * 1024).await;
        assert_eq!(&got[..], &data[..got.len()]);
        assert!(!gw_node.store().has(&links[63].cid).await.unwrap());
        release.send(true).unwrap();
        let rest = body_stream.collect().await.unwrap().to_bytes();
        got.extend_from_slice(&rest);
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the streamed file differs");
        gw_node.shutdown().await;
        origin.shutdown().await;
    }

    /// A store that does not check its reads, and answers one block with a byte flipped (a
    /// disk that rots under a store trusting it).
    struct Rotten {
        inner: MemoryStore,
        rotten: std::sync::Mutex<Option<Cid>>,
    }

    impl BlockStore for Rotten {
        async fn get(&self, cid: &Cid) -> Result<Option<bytes::Bytes>, StoreError> {
            let b = self.inner.get(cid).await?;
            if *self.rotten.lock().unwrap() == Some(*cid) {
                return Ok(b.map(|d| {
                    let mut v = d.to_vec();
                    v[100] ^= 1;
                    v.into()
                }));
            }
            Ok(b)
        }
        async fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
            self.inner.has(cid).await
        }
        async fn put_many(&self, b: Vec<streamspace_shard::Block>) -> Result<(), StoreError> {
            self.inner.put_many(b).await
        }
        async fn delete(&self, cid: &Cid) -> Result<bool, StoreError> {
            self.inner.delete(cid).await
        }
    }

    /// The gateway never sends bytes that are not what the CID names, even from its own
    /// store: a rotten block ends the answer short, after only the true bytes before it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rotten_block_in_the_store_is_never_sent() {
        let node = Node::start(
            Config::new(Keypair::generate_ed25519()).loopback(),
            Arc::new(Rotten {
                inner: MemoryStore::new(),
                rotten: std::sync::Mutex::new(None),
            }),
            Arc::new(Free),
        )
        .await
        .unwrap();
        // Eight leaves of 256 KiB; the third rots.
        let data: Vec<u8> = (0..2u32 << 20).map(|i| (i * 29 % 241) as u8).collect();
        let (root, links) = file_in(&node.store().inner, &data).await;
        *node.store().rotten.lock().unwrap() = Some(links[2].cid);
        let app = router(node.clone(), Arc::new(CacheStats::default()));
        let r = app
            .oneshot(
                Request::get(format!("/ipfs/{root}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let mut body_stream = r.into_body();
        let mut got = Vec::new();
        while let Some(frame) = body_stream.frame().await {
            match frame {
                Ok(f) => got.extend_from_slice(f.data_ref().unwrap()),
                Err(_) => break,
            }
        }
        assert!(
            got.len() <= 2 * (256 << 10),
            "{} bytes sent past the rotten block",
            got.len()
        );
        assert_eq!(&got[..], &data[..got.len()], "a wrong byte was sent");
        node.shutdown().await;
    }

    /// A client that reads slowly: the gateway fetches at most [`READ_AHEAD`] past what it
    /// has taken, and the blocks fetched for it stay while other writes fill the store to its
    /// quota (the oldest blocks not held go instead); the film arrives whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_client_bounds_the_fetch_and_its_blocks_stay_until_sent() {
        use streamspace_shard::store::DiskStore;
        const LEAF: u64 = 256 << 10;
        let origin = Node::start(
            Config::new(Keypair::generate_ed25519()).loopback(),
            Arc::new(MemoryStore::new()),
            Arc::new(Free),
        )
        .await
        .unwrap();
        // 48 MiB: 192 leaves, three times the read-ahead.
        let len = 3 * READ_AHEAD;
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let (root, _) = file_in(origin.store(), &data).await;
        let dir = tempfile::tempdir().unwrap();
        let quota = READ_AHEAD + 8 * (1 << 20);
        let store = Arc::new(DiskStore::open(dir.path().join("blocks"), Some(quota)).unwrap());
        let mut c = Config::new(Keypair::generate_ed25519()).loopback();
        c.bootstrap = origin.dialable_addrs().await.unwrap();
        let gw_node = Node::start(c, store.clone(), Arc::new(Free)).await.unwrap();
        let app = router(gw_node.clone(), Arc::new(CacheStats::default()));
        let r = app
            .oneshot(
                Request::get(format!("/ipfs/{root}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let mut body_stream = r.into_body();
        let mut got = read_at_least(&mut body_stream, 1 << 20).await;
        // The client stops reading. What the gateway fetched is bounded by what it took, the
        // pieces buffered on the way to it (four, and one being sent) and the read-ahead.
        let bound = (got.len() as u64 + 5 * LEAF + READ_AHEAD) / LEAF + 2;
        let mut last = 0;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            last = gw_node.stats().shards_received;
            assert!(
                last <= bound,
                "{last} blocks fetched for a stalled client; at most {bound}"
            );
        }
        assert!(
            last < 193,
            "the whole film was fetched for a client that stopped"
        );
        // Other writes fill the store past its quota: blocks not held make room.
        for i in 0..32u8 {
            let filler = streamspace_shard::Block::encode(
                cid::Version::V1,
                streamspace_shard::block::RAW,
                vec![i; LEAF as usize].into(),
            );
            store.put(filler).await.unwrap();
        }
        assert!(store.used_bytes() <= quota);
        let rest = body_stream.collect().await.unwrap().to_bytes();
        got.extend_from_slice(&rest);
        assert_eq!(got.len(), data.len(), "the film was cut short");
        assert!(got == data, "the streamed film differs");
        gw_node.shutdown().await;
        origin.shutdown().await;
    }

    /// A measurement, not a check: time to the first byte of a 1 GiB film through a
    /// gateway whose node holds none of it, against the time a node takes to fetch the film's
    /// first 256 KiB shard from the same origin; fresh nodes each round, five rounds.
    ///
    /// `cargo test --release -p streamspace-node --lib -- --ignored --exact gateway::tests::gateway_figures --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement; run it by name"]
    async fn gateway_figures() {
        use std::time::Instant;
        let origin = Node::start(
            Config::new(Keypair::generate_ed25519()).loopback(),
            Arc::new(MemoryStore::new()),
            Arc::new(Free),
        )
        .await
        .unwrap();
        // Every leaf distinct (a pattern that repeats would make most blocks one block).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let film: Vec<u8> = (0..1u64 << 27)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        let root = add_reader(
            Some(origin.store().as_ref()),
            std::io::Cursor::new(film),
            ImportOptions::default(),
        )
        .await
        .unwrap()
        .cid;
        origin.provide(root).await.unwrap();
        let joined = || async {
            let mut c = Config::new(Keypair::generate_ed25519()).loopback();
            c.bootstrap = origin.dialable_addrs().await.unwrap();
            let n = Node::start(c, Arc::new(MemoryStore::new()), Arc::new(Free))
                .await
                .unwrap();
            while n.connected_peers().await.unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        };
        let (mut first_byte, mut first_shard) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            let gw = joined().await;
            let app = router(gw.clone(), Arc::new(CacheStats::default()));
            let t = Instant::now();
            let r = app
                .oneshot(
                    Request::get(format!("/ipfs/{root}"))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let mut b = r.into_body();
            let frame = b.frame().await.unwrap().unwrap();
            assert!(!frame.data_ref().unwrap().is_empty());
            first_byte.push(t.elapsed().as_secs_f64() * 1000.0);
            drop(b);
            gw.shutdown().await;

            let n = joined().await;
            let t = Instant::now();
            n.fetch(
                root,
                FetchOptions {
                    range: Some((0, 256 << 10)),
                    peers: vec![origin.peer_id()],
                    ..FetchOptions::default()
                },
            )
            .await
            .unwrap();
            first_shard.push(t.elapsed().as_secs_f64() * 1000.0);
            n.shutdown().await;
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (fb, fs) = (median(first_byte), median(first_shard));
        println!("1 GiB film from one origin on loopback, medians of 5:");
        println!("  gateway time to first byte      {fb:7.1} ms");
        println!("  a node fetching its first shard {fs:7.1} ms");
        println!("  ratio {:.2} (goal <= 1.5)", fb / fs);
        origin.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_raw_car_and_ranges_fetching_from_the_network() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (origin, gw_node) = origin_and_gateway().await;
        let root = add_reader(
            Some(origin.store().as_ref()),
            std::io::Cursor::new(data.clone()),
            ImportOptions::default(),
        )
        .await
        .unwrap()
        .cid;
        origin.provide(root).await.unwrap();
        let app = router(gw_node.clone(), std::sync::Arc::new(CacheStats::default()));
        let get = |uri: String, hdr: Option<(&'static str, &'static str)>| {
            let mut b = Request::get(uri);
            if let Some((k, v)) = hdr {
                b = b.header(k, v);
            }
            app.clone().oneshot(b.body(Body::empty()).unwrap())
        };

        // A range, as a player seeks: fetched from the origin on the way.
        let r = get(
            format!("/ipfs/{root}"),
            Some(("range", "bytes=300000-300099")),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            r.headers()[header::CONTENT_RANGE],
            "bytes 300000-300099/1000000"
        );
        assert_eq!(body(r).await, &data[300_000..300_100]);
        // Only the root and the one leaf under the range came over the network.
        assert_eq!(gw_node.stats().shards_received, 2);
        // The whole file.
        let r = get(format!("/ipfs/{root}"), None).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CACHE_CONTROL], IMMUTABLE);
        assert_eq!(body(r).await, data);

        let r = get(format!("/ipfs/{root}"), Some(("range", "bytes=2000000-")))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);

        // The root block, verifiable by its CID.
        let r = get(format!("/ipfs/{root}?format=raw"), None).await.unwrap();
        assert_eq!(r.headers()[header::CONTENT_TYPE], RAW);
        let raw = body(r).await;
        streamspace_shard::Block::new(root, raw.clone().into()).expect("block matches its CID");
        // A range of the raw block.
        let r = get(
            format!("/ipfs/{root}?format=raw"),
            Some(("range", "bytes=2-9")),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            r.headers()[header::CONTENT_RANGE],
            format!("bytes 2-9/{}", raw.len())
        );
        assert_eq!(body(r).await, &raw[2..10]);

        // The whole DAG as a CAR, by Accept header; read back with verification.
        let r = get(format!("/ipfs/{root}"), Some(("accept", CAR)))
            .await
            .unwrap();
        assert!(
            r.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(CAR)
        );
        let car = body(r).await;
        let check = MemoryStore::new();
        read_car(std::io::Cursor::new(car), &check).await.unwrap();
        let back: Vec<bytes::Bytes> = cat(&check, root, ByteRange::new(0, None))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(back.concat(), data);

        // Bad input.
        let r = get("/ipfs/not-a-cid".into(), None).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let r = get(format!("/ipfs/{root}?format=tar"), None).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let r = get(format!("/ipfs/{root}/no/such/path"), None)
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);

        gw_node.shutdown().await;
        origin.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn play_decrypts_ranges_fetching_only_their_shards() {
        let data: Vec<u8> = (0..(3 * PLAIN_CHUNK + 100) as u32)
            .map(|i| (i * 13 % 251) as u8)
            .collect();
        let (origin, gw_node) = origin_and_gateway().await;
        let key = ContentKey::generate();
        let root = streamspace_shard::store::add_encrypted(
            Some(origin.store().as_ref()),
            std::io::Cursor::new(data.clone()),
            key.clone(),
            ImportOptions::default().with_cid_version(1).unwrap(),
        )
        .await
        .unwrap()
        .cid;
        origin.provide(root).await.unwrap();
        let keys = Arc::new(Keyring::from([(root, key)]));
        let app = router_with_keys(gw_node.clone(), Arc::new(CacheStats::default()), keys);
        let get = |uri: String, range: Option<String>| {
            let mut b = Request::get(uri).header("host", "127.0.0.1:8080");
            if let Some(r) = range {
                b = b.header("range", r);
            }
            app.clone().oneshot(b.body(Body::empty()).unwrap())
        };
        // Across the boundary of the first two shards: the root and those two are fetched.
        let (a, b) = (PLAIN_CHUNK - 10, PLAIN_CHUNK + 20);
        let r = get(format!("/play/{root}"), Some(format!("bytes={a}-{b}")))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "private, no-store");
        assert_eq!(
            r.headers()[header::CONTENT_RANGE],
            format!("bytes {a}-{b}/{}", data.len()).as_str()
        );
        assert_eq!(body(r).await, &data[a..=b]);
        assert_eq!(gw_node.stats().shards_received, 3);
        // The whole item.
        let r = get(format!("/play/{root}"), None).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body(r).await, data);
        // The last byte; past the end.
        let r = get(format!("/play/{root}"), Some("bytes=-1".into()))
            .await
            .unwrap();
        assert_eq!(body(r).await, &data[data.len() - 1..]);
        let r = get(
            format!("/play/{root}"),
            Some(format!("bytes={}-", data.len())),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        // An item this viewer holds no key for; a bad CID.
        let other = streamspace_shard::Cid::try_from(
            "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
        )
        .unwrap();
        let r = get(format!("/play/{other}"), None).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let r = get("/play/nonsense".into(), None).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        // Only for programs on this machine: not through another host name (DNS rebinding),
        // not for a page from elsewhere.
        for (name, value) in [("host", "evil.example"), ("origin", "http://evil.example")] {
            let mut b = Request::get(format!("/play/{root}"));
            if name == "origin" {
                b = b.header("host", "127.0.0.1:8080");
            }
            let r = app
                .clone()
                .oneshot(b.header(name, value).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{name}: {value}");
        }
        // A key that does not open the item: refused before any byte.
        let wrong = router_with_keys(
            gw_node.clone(),
            Arc::new(CacheStats::default()),
            Arc::new(Keyring::from([(root, ContentKey::generate())])),
        );
        let r = wrong
            .oneshot(
                Request::get(format!("/play/{root}"))
                    .header("host", "localhost:8080")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        gw_node.shutdown().await;
        origin.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn car_scopes_carry_the_path_and_only_what_they_name() {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("site");
        std::fs::create_dir(&site).unwrap();
        let a: Vec<u8> = (0..600_000u32).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(site.join("a.bin"), &a).unwrap();
        std::fs::write(site.join("b.txt"), b"bee").unwrap();
        let (origin, gw_node) = origin_and_gateway().await;
        let root = streamspace_shard::store::add_path(
            Some(origin.store().as_ref()),
            site,
            ImportOptions::default(),
            false,
            |_, _| {},
        )
        .await
        .unwrap()
        .cid;
        origin.provide(root).await.unwrap();
        let app = router(gw_node.clone(), Arc::new(CacheStats::default()));
        // Each CAR is read back with every block verified; it is rooted at the requested root.
        let car = |uri: String| {
            let app = app.clone();
            async move {
                let r = app
                    .oneshot(Request::get(uri).body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                if r.status() != StatusCode::OK {
                    return Err(r.status());
                }
                let bytes = body(r).await;
                let check = MemoryStore::new();
                let summary = read_car(std::io::Cursor::new(bytes), &check).await.unwrap();
                assert_eq!(summary.roots, [root]);
                Ok((summary.blocks, check))
            }
        };
        // The file's root block, behind the directory that names it.
        let (n, _) = car(format!("/ipfs/{root}/a.bin?format=car&dag-scope=block"))
            .await
            .unwrap();
        assert_eq!(n, 2);
        // The same target by another path (its own CID) is another CAR: another ETag.
        let etag_of = |uri: String| {
            let app = app.clone();
            async move {
                let r = app
                    .oneshot(Request::get(uri).body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                r.headers()[header::ETAG].to_str().unwrap().to_owned()
            }
        };
        let file = resolve(origin.store().as_ref(), &root, "a.bin")
            .await
            .unwrap();
        let by_path = etag_of(format!("/ipfs/{root}/a.bin?format=car&dag-scope=block")).await;
        let direct = etag_of(format!("/ipfs/{file}?format=car&dag-scope=block")).await;
        assert_ne!(by_path, direct);
        assert_eq!(
            by_path,
            etag_of(format!("/ipfs/{root}/a.bin?format=car&dag-scope=block")).await
        );
        // A byte range of the file: the path, the file root and the one leaf under it.
        let (n, got) = car(format!(
            "/ipfs/{root}/a.bin?format=car&dag-scope=entity&entity-bytes=300000:300099"
        ))
        .await
        .unwrap();
        assert_eq!(n, 3);
        let file = resolve(&got, &root, "a.bin").await.unwrap();
        let part: Vec<bytes::Bytes> = cat(&got, file, ByteRange::new(300_000, Some(100)))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(part.concat(), &a[300_000..300_100]);
        // The last 10 bytes, counted from the end.
        let (n, _) = car(format!("/ipfs/{root}/a.bin?format=car&entity-bytes=-10:*"))
            .await
            .unwrap();
        assert_eq!(n, 3);
        // A range beyond the file answers as dag-scope=block.
        let (n, _) = car(format!(
            "/ipfs/{root}/a.bin?format=car&entity-bytes=700000:*"
        ))
        .await
        .unwrap();
        assert_eq!(n, 2);
        // A directory as an entity: its node alone; everything: the directory, the file's
        // root and its 3 leaves, and the small file.
        let (n, _) = car(format!("/ipfs/{root}?format=car&dag-scope=entity"))
            .await
            .unwrap();
        assert_eq!(n, 1);
        let (n, all) = car(format!("/ipfs/{root}?format=car")).await.unwrap();
        assert_eq!(n, 6);
        let whole: Vec<bytes::Bytes> = cat(&all, file, ByteRange::ALL).try_collect().await.unwrap();
        assert_eq!(whole.concat(), a);
        // Bad scopes and ranges.
        for (q, status) in [
            ("dag-scope=some", StatusCode::BAD_REQUEST),
            ("dag-scope=block&entity-bytes=0:1", StatusCode::BAD_REQUEST),
            ("entity-bytes=1-2", StatusCode::BAD_REQUEST),
        ] {
            assert_eq!(
                car(format!("/ipfs/{root}/a.bin?format=car&{q}"))
                    .await
                    .err(),
                Some(status),
                "{q}"
            );
        }
        gw_node.shutdown().await;
        origin.shutdown().await;
    }

    #[test]
    fn accept_q_values_and_etags() {
        assert_eq!(parse_accept("").0, Format::File);
        assert_eq!(parse_accept(RAW).0, Format::Raw);
        assert_eq!(
            parse_accept("application/vnd.ipld.car;q=0.5, application/vnd.ipld.raw;q=0.9").0,
            Format::Raw
        );
        assert_eq!(
            parse_accept("application/vnd.ipld.raw;q=0, */*").0,
            Format::File
        );
        assert_eq!(
            parse_accept("application/vnd.ipld.raw;q=2, */*;q=0.1").0,
            Format::File
        );
        assert_eq!(
            parse_accept("text/html, application/vnd.ipld.car").0,
            Format::File
        );
        let (f, p) = parse_accept("application/vnd.ipld.car; version=1; dups=Y");
        assert_eq!(f, Format::Car);
        assert!(p.contains(&("dups".into(), "y".into())));
        assert_eq!(parse_q("0.125"), Some(125));
        assert_eq!(parse_q("1.0"), Some(1000));
        assert_eq!(parse_q("1.5"), None);
        assert_eq!(parse_q("0.1234"), None);
        assert!(etag_matches("W/\"a\", \"b\"", "\"a\""));
        assert!(!etag_matches("\"b\"", "\"a\""));
    }

    #[test]
    fn paths_have_one_spelling() {
        for (p, want) in [
            ("", Some("")),
            ("a", Some("a")),
            ("a//b", Some("a/b")),
            ("./a", Some("a")),
            ("a/./b/", Some("a/b")),
            ("/a", Some("a")),
            ("a/../b", None),
            ("..", None),
        ] {
            assert_eq!(normalise_path(p).as_deref(), want, "{p:?}");
        }
    }

    #[test]
    fn entity_ranges() {
        assert_eq!(entity_range((0, None), 100), Some((0, 100)));
        assert_eq!(entity_range((10, Some(19)), 100), Some((10, 10)));
        assert_eq!(entity_range((-10, None), 100), Some((90, 10)));
        assert_eq!(entity_range((0, Some(-1)), 100), Some((0, 100)));
        assert_eq!(entity_range((50, Some(500)), 100), Some((50, 50)));
        assert_eq!(entity_range((100, None), 100), None);
        assert_eq!(entity_range((20, Some(10)), 100), None);
        assert_eq!(entity_range((0, None), 0), Some((0, 0)));
    }
}
