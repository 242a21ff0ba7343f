//! The operator API: a kubo-compatible subset of `/api/v0`, so that clients written for kubo
//! (`kubo-rpc-client`, scripts calling `curl -X POST …/api/v0/add`) work unchanged, and
//! StreamSpace's own endpoints under `/api/v0/streamspace/`.
//!
//! As kubo's RPC, every endpoint takes `POST` (other methods answer 405), arguments as `arg`
//! query parameters and options by kubo's names; an option this API does not implement is
//! refused with 400 naming it, never ignored. Errors are kubo's JSON,
//! `{"Message": "...", "Code": 0|1, "Type": "error"}`: code 1 with status 400 for a bad
//! request, code 0 with status 500 otherwise.
//!
//! | endpoint | options |
//! |---|---|
//! | `id`, `version` | |
//! | `add` (multipart: files, directories) | `cid-version`, `raw-leaves`, `chunker`, `trickle`, `pin`, `only-hash`, `quiet`, `quieter`, `progress=false` |
//! | `cat` | `arg`, `offset`, `length` |
//! | `block/get`, `block/stat` | `arg` |
//! | `block/put` (multipart: one block) | `cid-codec` (`raw`, `dag-pb`), `mhtype=sha2-256`, `pin` |
//! | `get` | `arg`, `archive`, `compress=false` (a tar of the file or tree, streamed) |
//! | `dag/export` | `arg` (a CAR of the whole DAG) |
//! | `pin/add`, `pin/rm`, `pin/ls` | `arg`, `recursive=true`, `stream`, `type` |
//! | `swarm/peers`, `repo/stat`, `stats/bw` | |
//! | `streamspace/status` | quota, use, tier, peers by tier, shards, earnings, settlement, allowlist |
//! | `streamspace/quota` | `arg`: bytes to offer (omitted: read) |
//! | `streamspace/earnings` | tinybars, payers and shards per settlement period |
//! | `streamspace/listings` | `seller` (`all`, or `0.0.N`; default: this node's account), `offset`, `limit` (default 100, at most 1,000): the market topic's listings on offer, a page at a time |
//!
//! Content missing from the store is fetched from the network (verified block by block), as
//! kubo does when online.
//!
//! Off loopback, every request must carry `Authorization: Bearer <token>`.

use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use cid::Cid;
use futures::StreamExt;
use serde::Serialize;
use streamspace_shard::Block;
use streamspace_shard::block::{DAG_PB, RAW};
use streamspace_shard::dag::resolve;
use streamspace_shard::export::{ByteRange, cat};
use streamspace_shard::import::{ImportOptions, Imported, Layout};
use streamspace_shard::store::{BlockStore, DiskStore, StoreError, add_path, add_reader};
use streamspace_transport::Tier;

use crate::gateway::{CacheStats, Fetching, Unavailable, fetch_into_store};
use crate::run::Paid;

/// The largest block `block/put` takes (Bitswap's bound on a block).
pub const MAX_BLOCK: usize = 2 << 20;

/// What the API reads and changes.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) node: streamspace_transport::Node<DiskStore>,
    /// The node's public key, protobuf-encoded (libp2p) in base64, as kubo's `id` gives it.
    pub(crate) public_key: String,
    pub(crate) repo: PathBuf,
    pub(crate) token: Option<Arc<str>>,
    pub(crate) cache: Arc<CacheStats>,
    pub(crate) paid: Option<Arc<Paid>>,
    pub(crate) earned_last: Arc<AtomicU64>,
    pub(crate) tier: Tier,
    pub(crate) period_secs: Option<u64>,
    /// The payment journal and this node's account, when paid.
    pub(crate) journal: Option<(streamspace_payments::Journal, streamspace_ledger::AccountId)>,
    pub(crate) bandwidth: Arc<Bandwidth>,
    /// The signed allowlist the node admits peers by, when the network is closed.
    pub(crate) allowlist: Option<AllowlistState>,
    /// The protocols the node speaks, for `id`.
    pub(crate) protocols: Arc<[String]>,
    /// The market's listings, when the node follows a market topic, and this node's
    /// account, whose listings `streamspace/listings` reports by default.
    pub(crate) listings: Option<Arc<crate::listings::Listings>>,
    pub(crate) account: Option<streamspace_ledger::AccountId>,
}

/// What `streamspace/status` says of the allowlist: who signed it, until when, for how many.
#[derive(Debug, Clone)]
pub(crate) struct AllowlistState {
    pub(crate) operator: String,
    pub(crate) expires: std::time::SystemTime,
    pub(crate) peers: usize,
}

/// Bytes in and out, sampled for rates and the dashboard's chart.
#[derive(Debug, Default)]
pub(crate) struct Bandwidth {
    samples: std::sync::Mutex<std::collections::VecDeque<(u64, u64, u64)>>,
}

/// Samples kept: ten minutes at one a second.
const SAMPLES: usize = 600;

impl Bandwidth {
    /// Records the node's totals now (once a second, from the node's loop).
    pub(crate) fn sample(&self, at_ms: u64, total_in: u64, total_out: u64) {
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() == SAMPLES {
            s.pop_front();
        }
        s.push_back((at_ms, total_in, total_out));
    }

    /// Bytes per second in and out over the last two samples.
    fn rates(&self) -> (f64, f64) {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        match (s.len().checked_sub(2).and_then(|i| s.get(i)), s.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => {
                let secs = (b.0 - a.0) as f64 / 1000.0;
                (
                    b.1.saturating_sub(a.1) as f64 / secs,
                    b.2.saturating_sub(a.2) as f64 / secs,
                )
            }
            _ => (0.0, 0.0),
        }
    }

    fn history(&self) -> Vec<(u64, u64, u64)> {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        s.iter().copied().collect()
    }
}

/// A kubo-shaped error.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn client(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Body<'a> {
            message: &'a str,
            code: u8,
            r#type: &'static str,
        }
        let code = u8::from(self.status == StatusCode::BAD_REQUEST);
        let mut r = axum::Json(Body {
            message: &self.message,
            code,
            r#type: "error",
        })
        .into_response();
        *r.status_mut() = self.status;
        r
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::internal(e.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

/// The options of one request, refusing those the endpoint does not know.
struct Params(Vec<(String, String)>);

impl Params {
    /// Refuses any option not in `known` (beyond `arg` and the transport options every
    /// kubo endpoint takes).
    fn only(self, known: &[&str]) -> Result<Self, ApiError> {
        for (k, v) in &self.0 {
            let k = k.as_str();
            match k {
                "arg" | "stream-channels" => {}
                "encoding" if v == "json" => {}
                _ if known.contains(&k) => {}
                _ => return Err(ApiError::client(format!("unknown option \"{k}\""))),
            }
        }
        Ok(self)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn args(&self) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(|(k, _)| k == "arg")
            .map(|(_, v)| v.as_str())
    }

    fn arg(&self) -> Result<&str, ApiError> {
        self.args()
            .next()
            .ok_or_else(|| ApiError::client("argument \"arg\" is required"))
    }

    fn flag(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some("" | "true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(v) => Err(ApiError::client(format!(
                "option \"{name}\": {v:?} is not a boolean"
            ))),
        }
    }

    fn u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::client(format!("option \"{name}\": {v:?} is not a number"))
                })
            })
            .transpose()
    }
}

/// The API's routes over the node.
pub(crate) fn router(api: Api) -> Router {
    let v0 = Router::new()
        .route("/id", post(id))
        .route("/version", post(version))
        .route(
            "/add",
            post(add).layer(DefaultBodyLimit::disable()), // bounded by the quota
        )
        .route("/cat", post(cat_handler))
        .route("/block/get", post(block_get))
        .route("/block/stat", post(block_stat))
        .route(
            "/block/put",
            post(block_put).layer(DefaultBodyLimit::max(MAX_BLOCK + 64 * 1024)),
        )
        .route("/get", post(get_handler))
        .route("/dag/export", post(dag_export))
        .route("/pin/add", post(pin_add))
        .route("/pin/rm", post(pin_rm))
        .route("/pin/ls", post(pin_ls))
        .route("/swarm/peers", post(swarm_peers))
        .route("/repo/stat", post(repo_stat))
        .route("/stats/bw", post(stats_bw))
        .route("/streamspace/status", post(status))
        .route("/streamspace/quota", post(quota))
        .route("/streamspace/earnings", post(earnings))
        .route("/streamspace/listings", post(listings))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                message: "no such command".into(),
            }
        });
    Router::new()
        .nest(
            "/api/v0",
            v0.layer(middleware::map_response(post_only))
                .layer(middleware::from_fn_with_state(api.clone(), authorize)),
        )
        // The dashboard's files are static and hold no secret; the figures it shows come
        // from the API, with the token when one is needed.
        .route("/dashboard", get(|| dashboard_file("index.html")))
        .route("/dashboard/", get(|| dashboard_file("index.html")))
        .route("/dashboard/app.js", get(|| dashboard_file("app.js")))
        .route("/dashboard/style.css", get(|| dashboard_file("style.css")))
        .route("/dashboard/icon.svg", get(|| dashboard_file("icon.svg")))
        .with_state(api)
}

/// The dashboard's files, built into the program.
async fn dashboard_file(name: &str) -> Response {
    let (body, ty): (&'static str, &str) = match name {
        "index.html" => (
            include_str!("dashboard/index.html"),
            "text/html; charset=utf-8",
        ),
        "app.js" => (
            include_str!("dashboard/app.js"),
            "text/javascript; charset=utf-8",
        ),
        "style.css" => (
            include_str!("dashboard/style.css"),
            "text/css; charset=utf-8",
        ),
        "icon.svg" => (include_str!("dashboard/icon.svg"), "image/svg+xml"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, ty),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// kubo's answer to a method other than POST.
async fn post_only(r: Response) -> Response {
    if r.status() == StatusCode::METHOD_NOT_ALLOWED {
        return ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: "the RPC API takes POST only".into(),
        }
        .into_response();
    }
    r
}

/// Off loopback, a bearer token is required (checked in constant time).
async fn authorize(State(api): State<Api>, req: Request, next: Next) -> Response {
    if let Some(token) = &api.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let ok = given.len() == token.len()
            && given
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !ok {
            return ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "a bearer token is required".into(),
            }
            .into_response();
        }
    }
    next.run(req).await
}

fn json<T: Serialize>(value: &T) -> Response {
    axum::Json(value).into_response()
}

/// Newline-delimited JSON, as kubo streams its answers.
fn ndjson<T: Serialize>(values: &[T]) -> ApiResult {
    let mut body = Vec::new();
    for v in values {
        serde_json_line(&mut body, v)?;
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::HeaderName::from_static("x-chunked-output"), "1"),
        ],
        body,
    )
        .into_response())
}

fn serde_json_line<T: Serialize>(out: &mut Vec<u8>, v: &T) -> Result<(), ApiError> {
    serde_json::to_writer(&mut *out, v).map_err(|e| ApiError::internal(e.to_string()))?;
    out.push(b'\n');
    Ok(())
}

async fn id(State(api): State<Api>, Query(p): Query<Vec<(String, String)>>) -> ApiResult {
    let p = Params(p).only(&[])?;
    if let Some(other) = p.args().next()
        && other != api.node.peer_id().to_string()
    {
        return Err(ApiError::client("id of another peer is not supported"));
    }
    let peer = api.node.peer_id();
    let addrs: Vec<String> = api
        .node
        .dialable_addrs()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|a| format!("{a}/p2p/{peer}"))
        .collect();
    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Id {
        #[serde(rename = "ID")]
        id: String,
        public_key: String,
        addresses: Vec<String>,
        agent_version: String,
        protocols: Vec<String>,
    }
    Ok(json(&Id {
        id: peer.to_string(),
        public_key: api.public_key.clone(),
        addresses: addrs,
        agent_version: concat!("streamspace/", env!("CARGO_PKG_VERSION")).into(),
        protocols: api.protocols.to_vec(),
    }))
}

async fn version(Query(p): Query<Vec<(String, String)>>) -> ApiResult {
    Params(p).only(&["number", "commit", "repo", "all"])?;
    let mut v = BTreeMap::new();
    v.insert("Version", env!("CARGO_PKG_VERSION").to_string());
    v.insert("Commit", String::new());
    v.insert("Repo", "1".into());
    v.insert(
        "System",
        format!("{}/{}", std::env::consts::ARCH, std::env::consts::OS),
    );
    v.insert("Golang", "none (Rust)".into());
    Ok(json(&v))
}

/// One line of `add`'s answer.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Added {
    name: String,
    hash: String,
    size: String,
}

fn import_options(p: &Params) -> Result<ImportOptions, ApiError> {
    let mut opts = ImportOptions::default();
    if let Some(v) = p.u64("cid-version")? {
        opts = opts
            .with_cid_version(v)
            .map_err(|e| ApiError::client(e.to_string()))?;
    }
    if let Some(r) = p.flag("raw-leaves")? {
        opts.raw_leaves = r;
    }
    if let Some(c) = p.get("chunker") {
        opts = opts
            .with_chunker(c)
            .map_err(|e| ApiError::client(e.to_string()))?;
    }
    if p.flag("trickle")? == Some(true) {
        opts.layout = Layout::Trickle;
    }
    opts.validate()
        .map_err(|e| ApiError::client(e.to_string()))?;
    Ok(opts)
}

/// A part's path, from its percent-encoded file name, refusing anything that could leave
/// the upload's own tree.
fn part_path(encoded: &str) -> Result<String, ApiError> {
    let name = percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .map_err(|_| ApiError::client(format!("file name {encoded:?} is not UTF-8")))?;
    let mut parts = Vec::new();
    for seg in name.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                return Err(ApiError::client(format!(
                    "file name {name:?} leaves its directory"
                )));
            }
            s if s.contains('\0') || s.contains('\\') => {
                return Err(ApiError::client(format!(
                    "file name {name:?} is not allowed"
                )));
            }
            s => parts.push(s),
        }
    }
    Ok(parts.join("/"))
}

/// Pipes a multipart field into a blocking reader for the importer, through a bounded
/// channel: memory stays a few chunks whatever the file's size.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

async fn add(
    State(api): State<Api>,
    Query(p): Query<Vec<(String, String)>>,
    mut form: Multipart,
) -> ApiResult {
    let p = Params(p).only(&[
        "cid-version",
        "raw-leaves",
        "chunker",
        "trickle",
        "pin",
        "only-hash",
        "quiet",
        "quieter",
        "progress",
    ])?;
    if p.flag("progress")? == Some(true) {
        return Err(ApiError::client(
            "option \"progress\": progress lines are not supported",
        ));
    }
    let opts = import_options(&p)?;
    let only_hash = p.flag("only-hash")?.unwrap_or(false);
    let pin = p.flag("pin")?.unwrap_or(true) && !only_hash;
    let quieter = p.flag("quieter")?.unwrap_or(false);
    let store = api.node.store().clone();
    let target = (!only_hash).then_some(store.as_ref());

    let mut lines = Vec::new();
    let mut roots = Vec::new();
    // Parts inside directories are written under a temporary tree, then added as kubo adds a
    // directory; top-level files are streamed straight into the importer.
    let mut tree: Option<tempfile::TempDir> = None;
    let mut top_dirs: Vec<String> = Vec::new();
    let mut tree_bytes = 0u64;
    while let Some(mut field) = form
        .next_field()
        .await
        .map_err(|e| ApiError::client(format!("multipart body: {e}")))?
    {
        let kind = field.name().unwrap_or("").to_owned();
        if kind.contains('?') {
            return Err(ApiError::client(format!(
                "part {kind:?}: mode and mtime metadata are not supported"
            )));
        }
        let is_dir = field.content_type() == Some("application/x-directory");
        let path = part_path(field.file_name().unwrap_or(""))?;
        if !is_dir && !path.contains('/') {
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
            let reader = ChannelReader {
                rx,
                current: Bytes::new(),
            };
            let opts = opts.clone();
            let import = async { add_reader(target, reader, opts).await };
            let pump = async move {
                while let Some(chunk) = field
                    .chunk()
                    .await
                    .map_err(|e| ApiError::client(format!("multipart body: {e}")))?
                {
                    if tx.send(chunk).await.is_err() {
                        break;
                    }
                }
                Ok::<(), ApiError>(())
            };
            let (imported, pumped) = tokio::join!(import, pump);
            pumped?;
            let imported = imported.map_err(|e| ApiError::internal(e.to_string()))?;
            let name = if path.is_empty() {
                imported.cid.to_string()
            } else {
                path
            };
            lines.push(added(name, &imported));
            roots.push(imported.cid);
            continue;
        }
        let dir = match &mut tree {
            Some(d) => d,
            None => tree.insert(
                tempfile::Builder::new()
                    .prefix("add-")
                    .tempdir_in(api.repo.as_path())
                    .map_err(|e| ApiError::internal(format!("temporary directory: {e}")))?,
            ),
        };
        if path.is_empty() {
            return Err(ApiError::client("a directory part needs a name"));
        }
        let top = path.split('/').next().unwrap_or("").to_owned();
        if !top_dirs.contains(&top) {
            top_dirs.push(top);
        }
        let on_disk = dir.path().join(&path);
        if is_dir {
            std::fs::create_dir_all(&on_disk)
                .map_err(|e| ApiError::internal(format!("{path}: {e}")))?;
            continue;
        }
        if let Some(parent) = on_disk.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| ApiError::internal(format!("{path}: {e}")))?;
        }
        let mut file = tokio::fs::File::create(&on_disk)
            .await
            .map_err(|e| ApiError::internal(format!("{path}: {e}")))?;
        let room = store
            .quota()
            .map_or(u64::MAX, |q| q.saturating_sub(store.used_bytes()));
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|e| ApiError::client(format!("multipart body: {e}")))?
        {
            // Counted over the whole upload: many files each under the space offered must
            // not fill the disk together.
            tree_bytes = tree_bytes.saturating_add(chunk.len() as u64);
            if tree_bytes > room {
                return Err(ApiError::client(format!(
                    "{path}: the upload exceeds the space offered ({room} bytes free)"
                )));
            }
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
                .await
                .map_err(|e| ApiError::internal(format!("{path}: {e}")))?;
        }
    }
    if let Some(dir) = &tree {
        for top in &top_dirs {
            let entries = Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = entries.clone();
            let root = add_path(
                target,
                dir.path().join(top),
                opts.clone(),
                true,
                move |path: &FsPath, i: &Imported| {
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((path.to_string_lossy().into_owned(), *i));
                },
            )
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
            let entries = std::mem::take(&mut *entries.lock().unwrap_or_else(|p| p.into_inner()));
            for (path, i) in entries {
                lines.push(added(path, &i));
            }
            roots.push(root.cid);
        }
    }
    if lines.is_empty() {
        return Err(ApiError::client("no file given"));
    }
    if pin {
        for root in &roots {
            store.pin(root).await?;
            if let Err(e) = api.node.provide(*root).await {
                tracing::warn!(%root, error = %e, "announcing an added root");
            }
        }
    }
    if quieter {
        lines.drain(..lines.len() - 1);
    }
    ndjson(&lines)
}

fn added(name: String, i: &Imported) -> Added {
    Added {
        name,
        hash: i.cid.to_string(),
        size: i.tsize.to_string(),
    }
}

/// `CID[/path]` or `/ipfs/CID[/path]`.
fn parse_path(s: &str) -> Result<(Cid, &str), ApiError> {
    let s = s.strip_prefix("/ipfs/").unwrap_or(s);
    let (c, rest) = s.split_once('/').unwrap_or((s, ""));
    let cid = Cid::try_from(c).map_err(|_| ApiError::client(format!("invalid CID {c:?}")))?;
    Ok((cid, rest))
}

fn unavailable(what: &str, e: Unavailable) -> ApiError {
    match e {
        Unavailable::Failed(m) => ApiError::internal(format!("{what}: {m}")),
        Unavailable::Timeout => {
            ApiError::internal(format!("{what}: no answer from the network in time"))
        }
    }
}

/// Resolves `CID[/path]`, fetching the blocks on the way that the store lacks.
async fn resolve_online(api: &Api, arg: &str) -> Result<Cid, ApiError> {
    let (root, path) = parse_path(arg)?;
    if path.is_empty() {
        return Ok(root);
    }
    let fetching = Fetching {
        node: api.node.clone(),
        cache: api.cache.clone(),
    };
    resolve(&fetching, &root, path)
        .await
        .map_err(|e| ApiError::internal(format!("{arg}: {e}")))
}

fn stream_body<S>(stream: S) -> Body
where
    S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    Body::from_stream(stream)
}

/// A body written by `write` in a task of its own. When `write` fails part-way, the body
/// ends in an error, so the response is cut off (no final chunk) and the client sees a
/// failed transfer rather than a short archive that looks complete.
fn written_body<F, Fut>(write: F) -> Body
where
    F: FnOnce(tokio::io::DuplexStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), std::io::Error>> + Send + 'static,
{
    let (w, r) = tokio::io::duplex(256 * 1024);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = done_tx.send(write(w).await);
    });
    let tail = futures::stream::once(async move {
        match done_rx.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(Err(e)),
            Err(_) => Some(Err(std::io::Error::other("the writer stopped"))),
        }
    })
    .filter_map(futures::future::ready);
    stream_body(tokio_util::io::ReaderStream::new(r).chain(tail))
}

async fn cat_handler(State(api): State<Api>, Query(p): Query<Vec<(String, String)>>) -> ApiResult {
    let p = Params(p).only(&["offset", "length", "progress"])?;
    let arg = p.arg()?.to_owned();
    let target = resolve_online(&api, &arg).await?;
    let offset = p.u64("offset")?.unwrap_or(0);
    let length = p.u64("length")?;
    if length == Some(0) {
        return Ok(Body::empty().into_response());
    }
    fetch_into_store(
        &api.node,
        &api.cache,
        target,
        Some((offset, length.unwrap_or(u64::MAX - offset))),
    )
    .await
    .map_err(|e| unavailable(&arg, e))?;
    let store = api.node.store().clone();
    // The first block is read before the answer starts, so that an error is kubo's JSON.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let mut first = None;
    {
        let mut parts = std::pin::pin!(cat(store.as_ref(), target, ByteRange::new(offset, length)));
        match parts.next().await {
            Some(Ok(b)) => first = Some(b),
            Some(Err(e)) => return Err(ApiError::internal(format!("{arg}: {e}"))),
            None => {}
        }
    }
    let first_len = first.as_ref().map_or(0, |b| b.len() as u64);
    tokio::spawn(async move {
        if let Some(b) = first
            && tx.send(Ok(b)).await.is_err()
        {
            return;
        }
        let rest = ByteRange::new(offset + first_len, length.map(|l| l - first_len));
        if length == Some(first_len) {
            return;
        }
        let mut parts = std::pin::pin!(cat(store.as_ref(), target, rest));
        while let Some(p) = parts.next().await {
            let item = p.map_err(std::io::Error::other);
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                break;
            }
        }
    });
    Ok(stream_body(tokio_stream::wrappers::ReceiverStream::new(rx)).into_response())
}

async fn block_data(api: &Api, arg: &str) -> Result<(Cid, Bytes), ApiError> {
    let target = resolve_online(api, arg).await?;
    if let Some(b) = api.node.store().get(&target).await? {
        return Ok((target, b));
    }
    fetch_into_store(&api.node, &api.cache, target, Some((0, 0)))
        .await
        .map_err(|e| unavailable(arg, e))?;
    let b = api
        .node
        .store()
        .get(&target)
        .await?
        .ok_or_else(|| ApiError::internal(format!("block {target} not found")))?;
    Ok((target, b))
}

async fn block_get(State(api): State<Api>, Query(p): Query<Vec<(String, String)>>) -> ApiResult {
    let p = Params(p).only(&[])?;
    let (_, data) = block_data(&api, p.arg()?).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

async fn block_stat(State(api): State<Api>, Query(p): Query<Vec<(String, String)>>) -> ApiResult {
    let p = Params(p).only(&[])?;
    let (cid, data) = block_data(&api, p.arg()?).await?;
    let mut v = serde_json::Map::new();
    v.insert("Key".into(), cid.to_string().into());
    v.insert("Size".into(), data.len().into());
    Ok(json(&v))
}

async fn block_put(
    State(api): State<Api>,
    Query(p): Query<Vec<(String, String)>>,
    mut form: Multipart,
) -> ApiResult {
    let p = Params(p).only(&["cid-codec", "mhtype", "mhlen", "pin", "format"])?;
    let codec = match p.get("cid-codec").or(p.get("format")) {
        None | Some("raw") => RAW,
        Some("dag-pb" | "protobuf" | "v0") => DAG_PB,
        Some(c) => {
            return Err(ApiError::client(format!(
                "cid-codec {c:?} is not supported"
            )));
        }
    };
    if p.get("mhtype").is_some_and(|m| m != "sha2-256") {
        return Err(ApiError::client("only the sha2-256 multihash is supported"));
    }
    if p.get("mhlen").is_some_and(|m| m != "-1" && m != "32") {
        return Err(ApiError::client("sha2-256 digests are 32 bytes long"));
    }
    let pin = p.flag("pin")?.unwrap_or(false);
    let mut out = Vec::new();
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| ApiError::client(format!("multipart body: {e}")))?
    {
        let data = field
            .bytes()
            .await
            .map_err(|e| ApiError::client(format!("multipart body: {e}")))?;
        if data.len() > MAX_BLOCK {
            return Err(ApiError::client(format!(
                "a block is at most {MAX_BLOCK} bytes, not {}",
                data.len()
            )));
        }
        // kubo gives dag-pb blocks CIDv0 names.
        let version = if codec == DAG_PB {
            cid::Version::V0
        } else {
            cid::Version::V1
        };
        let size = data.len();
        let block = Block::encode(version, codec, data);
        let cid = *block.cid();
        api.node.store().put_many(vec![block]).await?;
        if pin {
            api.node.store().pin(&cid).await?;
        }
        let mut v = serde_json::Map::new();
        v.insert("Key".into(), cid.to_string().into());
        v.insert("Size".into(), size.into());
        out.push(v);
    }
    if out.is_empty() {
        return Err(ApiError::client("no block given"));
    }
    ndjson(&out)
}

async fn dag_export(State(api): State<Api>, Query(p): Query<Vec<(String, String)>>) -> ApiResult {
    let p = Params(p).only(&["progress"])?;
    let arg = p.arg()?.to_owned();
    let root = resolve_online(&api, &arg).await?;
    fetch_into_store(&api.node, &api.cache, root, None)
        .await
        .map_err(|e| unavailable(&arg, e))?;
    let store = api.node.store().clone();
    let body = written_body(move |w| async move {
        streamspace_shard::car::write_car(store.as_ref(), root, w)
            .await
            .map(drop)
            .map_err(|e| {
                tracing::warn!(%root, error = %e, "dag/export");
                std::io::Error::other(e)
            })
    });
    Ok(([(header::CONTENT_TYPE, "application/vnd.ipld.car")], body).into_response())
}

/// kubo's `get`: the file or tree at `arg` as a tar archive, its top entry named by the
/// path's last segment (the CID when there is none). The archive is always tar (`archive`
/// only tells kubo's CLI whether to unpack it); gzip is refused rather than ignored.
async fn get_handler(State(api): State<Api>, Query(p): Query<Vec<(String, String)>>) -> ApiResult {
    let p = Params(p).only(&["archive", "compress", "compression-level", "progress"])?;
    p.flag("archive")?;
    let level = p.u64("compression-level")?;
    if p.flag("compress")? == Some(true) || level.is_some_and(|l| l > 0) {
        return Err(ApiError::client(
            "compressed archives are not supported: ask for the tar and compress it",
        ));
    }
    let arg = p.arg()?.to_owned();
    let target = resolve_online(&api, &arg).await?;
    let name = parse_path(&arg)?
        .1
        .rsplit('/')
        .find(|s| !s.is_empty())
        .map_or_else(|| target.to_string(), str::to_owned);
    fetch_into_store(&api.node, &api.cache, target, None)
        .await
        .map_err(|e| unavailable(&arg, e))?;
    let store = api.node.store().clone();
    // The root is read before the answer starts, so that an error is kubo's JSON.
    streamspace_shard::dag::entity(store.as_ref(), &target)
        .await
        .map_err(|e| ApiError::internal(format!("{arg}: {e}")))?;
    let body = written_body(move |mut w| async move {
        crate::tar::write_tar(store.as_ref(), target, &name, &mut w)
            .await
            .map_err(|e| {
                tracing::warn!(%target, error = %e, "get");
                std::io::Error::other(e)
            })
    });
    Ok(([(header::CONTENT_TYPE, "application/x-tar")], body).into_response())
}

fn recursive_only(p: &Params) -> Result<(), ApiError> {
    if p.flag("recursive")? == Some(false) {
        return Err(ApiError::client("only recursive pins are supported"));
    }
    Ok(())
}

async fn pin_add(State(api): State<Api>, Query(p): Query<Vec<(String, String)>>) -> ApiResult {
    let p = Params(p).only(&["recursive", "progress", "stream"])?;
    recursive_only(&p)?;
    let mut pins = Vec::new();
    for arg in p.args() {
        let root = resolve_online(&api, arg).await?;
        fetch_into_store(&api.node, &api.cache, root, None)
            .await
            .map_err(|e| unavailable(arg, e))?;
        if !api.node.store().is_pinned(&root).await? {
            api.node.store().pin(&root).await?;
        }
        if let Err(e) = api.node.provide(root).await {
            tracing::warn!(%root, error = %e, "announcing a pinned root");
        }
        pins.push(root.to_string());
    }
    if pins.is_empty() {
        return Err(ApiError::client("argument \"arg\" is required"));
    }
    let mut v = serde_json::Map::new();
    v.insert("Pins".into(), pins.into());
    Ok(json(&v))
}

async fn pin_rm(State(api): State<Api>, Query(p): Query<Vec<(String, String)>>) -> ApiResult {
    let p = Params(p).only(&["recursive"])?;
    recursive_only(&p)?;
    let mut pins = Vec::new();
    for arg in p.args() {
        let (root, path) = parse_path(arg)?;
        if !path.is_empty() {
            return Err(ApiError::client(format!("{arg}: pins are removed by root")));
        }
        if !api.node.store().is_pinned(&root).await? {
            return Err(ApiError::internal(format!("{root} is not pinned")));
        }
        while api.node.store().is_pinned(&root).await? {
            api.node.store().unpin(&root).await?;
        }
        pins.push(root.to_string());
    }
    if pins.is_empty() {
        return Err(ApiError::client("argument \"arg\" is required"));
    }
    let mut v = serde_json::Map::new();
    v.insert("Pins".into(), pins.into());
    Ok(json(&v))
}

async fn pin_ls(State(api): State<Api>, Query(p): Query<Vec<(String, String)>>) -> ApiResult {
    let p = Params(p).only(&["type", "stream", "quiet", "names"])?;
    match p.get("type") {
        None | Some("all" | "recursive") => {}
        Some(t) => return Err(ApiError::client(format!("pin type {t:?} is not kept here"))),
    }
    let mut roots = Vec::new();
    for arg in p.args() {
        let (root, _) = parse_path(arg)?;
        if !api.node.store().is_pinned(&root).await? {
            return Err(ApiError::internal(format!("path '{arg}' is not pinned")));
        }
        roots.push(root);
    }
    if p.args().next().is_none() {
        roots = api.node.store().pinned_roots().await?;
    }
    if p.flag("stream")? == Some(true) {
        let lines: Vec<serde_json::Value> = roots
            .iter()
            .map(|c| serde_json::json!({"Cid": c.to_string(), "Type": "recursive"}))
            .collect();
        return ndjson(&lines);
    }
    let keys: serde_json::Map<String, serde_json::Value> = roots
        .iter()
        .map(|c| (c.to_string(), serde_json::json!({"Type": "recursive"})))
        .collect();
    Ok(json(&serde_json::json!({ "Keys": keys })))
}

async fn swarm_peers(State(api): State<Api>, Query(p): Query<Vec<(String, String)>>) -> ApiResult {
    Params(p).only(&["verbose", "latency", "streams", "direction", "identify"])?;
    let nat = api
        .node
        .nat_status()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    // One row per connection, as kubo lists them: a peer reached both directly and through
    // a relay appears twice, the relayed address ending in `/p2p-circuit`.
    let list: Vec<serde_json::Value> = nat
        .connections
        .iter()
        .map(|c| {
            serde_json::json!({
                "Peer": c.peer.to_string(),
                "Addr": c.remote.to_string(),
                "Relayed": c.relayed,
            })
        })
        .collect();
    Ok(json(&serde_json::json!({ "Peers": list })))
}

async fn repo_stat(State(api): State<Api>, Query(p): Query<Vec<(String, String)>>) -> ApiResult {
    Params(p).only(&["size-only", "human"])?;
    let store = api.node.store();
    Ok(json(&serde_json::json!({
        "RepoSize": store.used_bytes(),
        "StorageMax": store.quota().unwrap_or(u64::MAX),
        "NumObjects": store.len(),
        "RepoPath": api.repo.display().to_string(),
        "Version": "fs-repo@streamspace-1",
    })))
}

async fn stats_bw(State(api): State<Api>, Query(p): Query<Vec<(String, String)>>) -> ApiResult {
    Params(p).only(&[])?;
    let s = api.node.stats();
    let (total_in, total_out) = s.peers.values().fold((0u64, 0u64), |(i, o), c| {
        (
            i.saturating_add(c.bytes_received),
            o.saturating_add(c.bytes_sent),
        )
    });
    let (rate_in, rate_out) = api.bandwidth.rates();
    Ok(json(&serde_json::json!({
        "TotalIn": total_in,
        "TotalOut": total_out,
        "RateIn": rate_in,
        "RateOut": rate_out,
    })))
}

async fn status(State(api): State<Api>, Query(p): Query<Vec<(String, String)>>) -> ApiResult {
    Params(p).only(&[])?;
    let store = api.node.store();
    let stats = api.node.stats();
    let tiers = api.node.peer_tiers().await.unwrap_or_default();
    let tier1 = tiers.values().filter(|(t, _)| *t == Tier::Tier1).count();
    let pinned = store.pinned_roots().await?;
    let earned_now = api.paid.as_ref().map(|p| p.earned_now());
    let history: Vec<serde_json::Value> = api
        .bandwidth
        .history()
        .into_iter()
        .map(|(t, i, o)| serde_json::json!([t, i, o]))
        .collect();
    Ok(json(&serde_json::json!({
        "PeerId": api.node.peer_id().to_string(),
        "Tier": match api.tier { Tier::Tier1 => "tier1", Tier::Edge => "edge" },
        "Quota": store.quota(),
        "Used": store.used_bytes(),
        "Blocks": store.len(),
        "Pinned": pinned.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        "Peers": { "Tier1": tier1, "Edge": tiers.len() - tier1, "Connected": stats.peers.len() },
        "ShardsServed": stats.shards_served,
        "BytesServed": stats.bytes_served,
        "ShardsReceived": stats.shards_received,
        "BytesReceived": stats.bytes_received,
        "Bandwidth": history,
        "Allowlist": api.allowlist.as_ref().map(|a| {
            let expires = a
                .expires
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let now = std::time::SystemTime::now();
            serde_json::json!({
                "Operator": a.operator,
                "Peers": a.peers,
                "ExpiresSecs": expires,
                "Expired": a.expires <= now,
            })
        }),
        "Settlement": api.paid.as_ref().map(|_| {
            let (posted, locked) = crate::run::settlement_marks(&api.repo);
            serde_json::json!({
                "ReceiptsPostedThrough": posted,
                "CollateralLockedFor": locked,
            })
        }),
        "Payments": api.paid.as_ref().map(|_| serde_json::json!({
            "PeriodSecs": api.period_secs,
            "EarnedNow": earned_now.map(|e| e.0),
            "ShardsNow": earned_now.map(|e| e.1),
            "EarnedLastPeriod": api.earned_last.load(Ordering::Relaxed),
            "Receipts": api.paid.as_ref().map(|p| serde_json::json!({
                "Accepted": p.receipts_accepted.load(Ordering::Relaxed),
                "Refused": p.receipts_refused.load(Ordering::Relaxed),
                "Sent": p.receipts_sent.load(Ordering::Relaxed),
            })),
        })),
    })))
}

async fn earnings(State(api): State<Api>, Query(p): Query<Vec<(String, String)>>) -> ApiResult {
    Params(p).only(&[])?;
    let (Some((journal, me)), Some(period_secs)) = (&api.journal, api.period_secs) else {
        return Err(ApiError::client(
            "this node has no [payments]: it earns nothing",
        ));
    };
    let (journal, me) = (journal.clone(), *me);
    let periods =
        tokio::task::spawn_blocking(move || crate::run::earnings(&journal, me, period_secs))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    let rows: Vec<serde_json::Value> = periods
        .iter()
        .map(|e| {
            serde_json::json!({
                "Period": e.period,
                "StartSecs": e.start_secs,
                "Payers": e.payers,
                "Shards": e.shards,
                "Tinybars": e.tinybars,
            })
        })
        .collect();
    Ok(json(&serde_json::json!({ "Periods": rows })))
}

/// Listings in one `streamspace/listings` answer unless `limit` says otherwise.
const LISTINGS_PAGE: usize = 100;
/// The most listings one answer carries.
const MAX_LISTINGS_PAGE: usize = 1000;

async fn listings(State(api): State<Api>, Query(p): Query<Vec<(String, String)>>) -> ApiResult {
    let p = Params(p).only(&["seller", "offset", "limit"])?;
    let number = |name: &str, default: usize| -> Result<usize, ApiError> {
        p.get(name).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| ApiError::client(format!("{name}: {v:?} is not a number")))
        })
    };
    let offset = number("offset", 0)?;
    let limit = number("limit", LISTINGS_PAGE)?;
    if limit > MAX_LISTINGS_PAGE {
        return Err(ApiError::client(format!(
            "limit: at most {MAX_LISTINGS_PAGE} listings a page"
        )));
    }
    let Some(listings) = &api.listings else {
        return Err(ApiError::client(
            "this node follows no market topic ([market] topic in its config)",
        ));
    };
    // Default: what this node's account lists; `seller=all`, or one account.
    let seller = match (p.get("seller"), api.account) {
        (Some("all"), _) | (None, None) => None,
        (None, Some(me)) => Some(me),
        (Some(a), _) => Some(
            a.parse::<streamspace_ledger::AccountId>()
                .map_err(|e| ApiError::client(format!("seller: {e}")))?,
        ),
    };
    let snap = listings.snapshot(|s| seller.is_none_or(|want| want == s), offset, limit);
    let rows: Vec<serde_json::Value> = snap
        .listings
        .iter()
        .map(|l| {
            serde_json::json!({
                "Id": l.id.to_string(),
                "Seller": l.id.seller.to_string(),
                "Version": l.version,
                "Content": l.content.to_string(),
                "Title": l.title,
                "Price": l.price,
                "RentalSecs": l.terms.rental_secs,
                "Devices": l.terms.devices,
            })
        })
        .collect();
    Ok(json(&serde_json::json!({
        "Listings": rows,
        "Total": snap.total,
        "Offset": offset,
        "MessagesRead": snap.read,
        "Rejected": snap.rejected,
        "Error": snap.error,
    })))
}

async fn quota(State(api): State<Api>, Query(p): Query<Vec<(String, String)>>) -> ApiResult {
    let p = Params(p).only(&[])?;
    let store = api.node.store();
    if let Some(arg) = p.args().next() {
        let bytes: u64 = arg
            .parse()
            .map_err(|_| ApiError::client(format!("quota {arg:?} is not a number of bytes")))?;
        let evicted = store.set_quota(Some(bytes)).await.map_err(|e| match e {
            StoreError::QuotaExceeded { .. } => ApiError::client(format!(
                "cannot offer {bytes} bytes: pinned content needs more ({e})"
            )),
            e => ApiError::internal(e.to_string()),
        })?;
        tracing::info!(bytes, evicted, "quota changed");
    }
    Ok(json(&serde_json::json!({
        "Quota": store.quota(),
        "Used": store.used_bytes(),
    })))
}

/// Samples the node's bandwidth once a second until `stop`.
pub(crate) async fn sample_bandwidth(
    node: streamspace_transport::Node<DiskStore>,
    bandwidth: Arc<Bandwidth>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let s = node.stats();
        let (i, o) = s.peers.values().fold((0u64, 0u64), |(i, o), c| {
            (
                i.saturating_add(c.bytes_received),
                o.saturating_add(c.bytes_sent),
            )
        });
        bandwidth.sample(started.elapsed().as_millis() as u64, i, o);
    }
}
