//! The operator API through its socket: kubo's answers and error shape, and what a hostile
//! or careless client cannot make it do.

mod common;

use common::{post, post_multipart, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_as_kubo_does_and_refuses_what_it_does_not_implement() {
    let repo = tempfile::tempdir().expect("dir");
    let node = common::node(repo.path()).await;
    let api = node.api_addr().expect("api");

    // Where a client finds the running node, as kubo's `$IPFS_PATH/api`.
    let file = std::fs::read_to_string(repo.path().join("api")).expect("api file");
    assert_eq!(file.trim(), format!("/ip4/127.0.0.1/tcp/{}", api.port()));

    let v = post(api, "/api/v0/version").await;
    assert_eq!(v.status, 200);
    assert_eq!(v.json()["Version"], env!("CARGO_PKG_VERSION"));

    // kubo's RPC takes POST only.
    let get = send(api, "GET", "/api/v0/id", &[], Vec::new()).await;
    assert_eq!(get.status, 405);
    assert!(get.kubo_error().contains("POST"));
    // An unknown command and an unknown option are refused, never ignored.
    let unknown = post(api, "/api/v0/name/publish").await;
    assert_eq!(unknown.status, 404);
    unknown.kubo_error();
    let bad = post(api, "/api/v0/cat?arg=bafkqaaa&frobnicate=true").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["Code"], 1);
    assert!(bad.kubo_error().contains("frobnicate"));
    let bad = post(api, "/api/v0/block/stat?arg=zzz").await;
    assert_eq!(bad.status, 400);
    assert!(bad.kubo_error().contains("invalid CID"));
    let missing = post(api, "/api/v0/cat").await;
    assert_eq!(missing.status, 400);
    assert!(missing.kubo_error().contains("arg"));

    // add: a file, kubo's CID for "hello world\n" with the defaults, and with CIDv1.
    let hello = b"hello world\n";
    let a = post_multipart(
        api,
        "/api/v0/add?stream-channels=true&progress=false",
        &[("file", "", "application/octet-stream", hello)],
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(
        a.json()["Hash"],
        "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
    );
    let a1 = post_multipart(
        api,
        "/api/v0/add?cid-version=1&only-hash=true",
        &[("file", "hello.txt", "application/octet-stream", hello)],
    )
    .await;
    let v1 = a1.json();
    assert_eq!(v1["Name"], "hello.txt");
    assert!(v1["Hash"].as_str().expect("hash").starts_with("bafkrei"));
    // only-hash stored nothing.
    let stat = post(api, "/api/v0/repo/stat").await.json();
    assert_eq!(stat["NumObjects"], 1, "{stat}");

    // kubo's content-defined chunkers: the CID the importer gives with the same chunker, and
    // a chunker kubo would refuse is refused with what is wrong with it.
    let data: Vec<u8> = (0..600_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for chunker in ["buzhash", "rabin-16384-65536-131072"] {
        let opts = streamspace_shard::import::ImportOptions::default()
            .with_chunker(chunker)
            .expect("chunker");
        let want = streamspace_shard::import::import_file(&data[..], &opts, |_| Ok(()))
            .expect("import")
            .cid;
        let r = post_multipart(
            api,
            &format!("/api/v0/add?only-hash=true&chunker={chunker}"),
            &[("file", "", "application/octet-stream", &data)],
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["Hash"], want.to_string(), "{chunker}");
    }
    let bad = post_multipart(
        api,
        "/api/v0/add?chunker=rabin-12-512-1024",
        &[("file", "", "application/octet-stream", b"x")],
    )
    .await;
    assert_eq!(bad.status, 400);
    assert!(bad.kubo_error().contains("min"), "{}", bad.kubo_error());

    // Metadata the importer does not write is refused, not silently dropped.
    let m = post_multipart(
        api,
        "/api/v0/add",
        &[("file?mode=0755", "x", "application/octet-stream", b"x")],
    )
    .await;
    assert_eq!(m.status, 400);
    assert!(m.kubo_error().contains("mode"));
    let p = post_multipart(
        api,
        "/api/v0/add?progress=true",
        &[("file", "x", "application/octet-stream", b"x")],
    )
    .await;
    assert_eq!(p.status, 400);

    // block/put and block/get round-trip; dag-pb blocks are named by CIDv0 as kubo names them.
    let put = post_multipart(
        api,
        "/api/v0/block/put",
        &[("file", "", "application/octet-stream", b"a raw block")],
    )
    .await;
    let key = put.json()["Key"].as_str().expect("key").to_owned();
    assert!(key.starts_with("bafkrei"));
    let got = post(api, &format!("/api/v0/block/get?arg={key}")).await;
    assert_eq!(&got.body[..], b"a raw block");
    let bad = post_multipart(
        api,
        "/api/v0/block/put?mhtype=blake3",
        &[("file", "", "application/octet-stream", b"x")],
    )
    .await;
    assert_eq!(bad.status, 400);

    node.shutdown().await.expect("clean shutdown");
    assert!(
        !repo.path().join("api").exists(),
        "the api file is removed at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cannot_write_outside_its_tree_or_past_the_space_offered() {
    let repo = tempfile::tempdir().expect("dir");
    let node = common::builder(repo.path())
        .quota(64 * 1024)
        .start()
        .await
        .expect("node");
    let api = node.api_addr().expect("api");
    let escape = post_multipart(
        api,
        "/api/v0/add",
        &[
            ("dir", "d", "application/x-directory", b""),
            (
                "file",
                "d%2F..%2F..%2Fescaped",
                "application/octet-stream",
                b"owned",
            ),
        ],
    )
    .await;
    assert_eq!(escape.status, 400);
    assert!(escape.kubo_error().contains("leaves its directory"));
    assert!(
        !repo
            .path()
            .parent()
            .expect("parent")
            .join("escaped")
            .exists()
    );

    // A directory upload larger than the quota is refused while it is written.
    let big = common::data(100 * 1024, 3);
    let over = post_multipart(
        api,
        "/api/v0/add",
        &[
            ("dir", "d", "application/x-directory", b""),
            ("file", "d%2Fbig", "application/octet-stream", &big),
        ],
    )
    .await;
    assert_eq!(over.status, 400, "{}", String::from_utf8_lossy(&over.body));
    assert!(over.kubo_error().contains("space offered"));
    // Nor can many files, each under the quota, fill the disk together.
    let part = common::data(40 * 1024, 4);
    let many = post_multipart(
        api,
        "/api/v0/add",
        &[
            ("dir", "m", "application/x-directory", b""),
            ("file", "m%2Fa", "application/octet-stream", &part),
            ("file", "m%2Fb", "application/octet-stream", &part),
        ],
    )
    .await;
    assert_eq!(many.status, 400, "{}", String::from_utf8_lossy(&many.body));
    assert!(many.kubo_error().contains("space offered"));
    // A single file past the quota fails in the store, which keeps what it held.
    let over = post_multipart(
        api,
        "/api/v0/add",
        &[("file", "big", "application/octet-stream", &big)],
    )
    .await;
    assert_eq!(over.status, 500);
    let ok = post_multipart(
        api,
        "/api/v0/add",
        &[("file", "small", "application/octet-stream", b"small")],
    )
    .await;
    assert_eq!(ok.status, 200);
    // No temporary tree is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(repo.path())
        .expect("repo")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("add-"))
        .collect();
    assert!(leftovers.is_empty());
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_space_offered_changes_at_run_time_but_never_below_what_is_pinned() {
    let repo = tempfile::tempdir().expect("dir");
    let node = common::builder(repo.path())
        .quota(10 << 20)
        .start()
        .await
        .expect("node");
    let api = node.api_addr().expect("api");
    let pinned = common::data(600_000, 1);
    let a = post_multipart(
        api,
        "/api/v0/add",
        &[("file", "p", "application/octet-stream", &pinned)],
    )
    .await;
    assert_eq!(a.status, 200);
    let unpinned = common::data(600_000, 2);
    let b = post_multipart(
        api,
        "/api/v0/add?pin=false",
        &[("file", "u", "application/octet-stream", &unpinned)],
    )
    .await;
    let unpinned_cid = b.json()["Hash"].as_str().expect("hash").to_owned();
    let q = post(api, "/api/v0/streamspace/quota").await.json();
    assert_eq!(q["Quota"], 10 << 20);

    // Below what is pinned: refused, nothing changes.
    let low = post(api, "/api/v0/streamspace/quota?arg=100000").await;
    assert_eq!(low.status, 400);
    assert!(low.kubo_error().contains("pinned"));
    assert_eq!(
        post(api, "/api/v0/streamspace/quota").await.json()["Quota"],
        10 << 20
    );
    // Just above the pinned item: the unpinned one is evicted.
    let fit = post(api, "/api/v0/streamspace/quota?arg=700000").await;
    assert_eq!(fit.status, 200, "{}", String::from_utf8_lossy(&fit.body));
    assert_eq!(fit.json()["Quota"], 700_000);
    assert_eq!(node.transport().store().quota(), Some(700_000));
    let ls = post(api, "/api/v0/pin/ls").await.json();
    assert_eq!(ls["Keys"].as_object().expect("keys").len(), 1);
    // Unpinned blocks went, in LRU order, until the store fits; the pinned item is whole.
    assert!(node.transport().store().used_bytes() <= 700_000);
    assert!(node.transport().store().used_bytes() >= pinned.len() as u64);
    let pinned_cid = a.json()["Hash"].as_str().expect("hash").to_owned();
    let back = post(api, &format!("/api/v0/cat?arg={pinned_cid}")).await;
    assert_eq!(&back.body[..], &pinned[..]);
    let _ = unpinned_cid;
    let status = post(api, "/api/v0/streamspace/status").await.json();
    assert_eq!(status["Quota"], 700_000);
    assert_eq!(status["Tier"], "edge");
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_api_needs_a_token() {
    let repo = tempfile::tempdir().expect("dir");
    let no_token = streamspace_node::Node::builder()
        .repo(repo.path())
        .listen(["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")])
        .api("0.0.0.0:0".parse().expect("addr"))
        .start()
        .await;
    let e = no_token.expect_err("refused without a token");
    assert!(e.to_string().contains("bearer token"), "{e}");

    let token = "0123456789abcdef-secret";
    std::fs::write(repo.path().join("api.token"), token).expect("write");
    let mut b = streamspace_node::Node::builder()
        .repo(repo.path())
        .listen(["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")])
        .api("0.0.0.0:0".parse().expect("addr"));
    b.config_mut().node.api_token_file = Some(repo.path().join("api.token"));
    let node = b.start().await.expect("starts with a token");
    let port = node.api_addr().expect("api").port();
    let api = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(post(api, "/api/v0/id").await.status, 401);
    let wrong = send(
        api,
        "POST",
        "/api/v0/id",
        &[("authorization", "Bearer 0123456789abcdef-secreT")],
        Vec::new(),
    )
    .await;
    assert_eq!(wrong.status, 401);
    let right = send(
        api,
        "POST",
        "/api/v0/id",
        &[("authorization", &format!("Bearer {token}"))],
        Vec::new(),
    )
    .await;
    assert_eq!(right.status, 200);
    assert_eq!(right.json()["ID"], node.transport().peer_id().to_string());
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_peers_lists_each_connection_with_its_address() {
    let (ra, rb) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let a = common::node(ra.path()).await;
    let a_addr = a.transport().dialable_addrs().await.expect("addrs")[0].clone();
    let b = common::builder(rb.path())
        .bootstrap(a_addr)
        .start()
        .await
        .expect("b starts");
    let api = a.api_addr().expect("api");
    let b_id = b.transport().peer_id().to_string();
    let mut peers = serde_json::Value::Null;
    for _ in 0..100 {
        peers = post(api, "/api/v0/swarm/peers").await.json();
        let listed = peers["Peers"]
            .as_array()
            .is_some_and(|l| l.iter().any(|p| p["Peer"] == b_id.as_str()));
        if listed {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let row = peers["Peers"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["Peer"] == b_id.as_str()))
        .unwrap_or_else(|| panic!("b is not listed: {peers}"))
        .clone();
    // The address is the remote end of the connection, a multiaddr kubo's clients parse.
    let addr: streamspace_transport::Multiaddr = row["Addr"]
        .as_str()
        .expect("addr")
        .parse()
        .expect("a multiaddr");
    assert!(
        addr.to_string().starts_with("/ip4/127.0.0.1/tcp/"),
        "{addr}"
    );
    assert_eq!(row["Relayed"], false);
    b.shutdown().await.expect("shutdown");
    a.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_made_through_the_api_is_announced_on_the_dht_at_once() {
    use std::sync::Arc;
    use streamspace_shard::store::MemoryStore;
    use streamspace_transport::{Config, Keypair, meter::Free};
    let repo = tempfile::tempdir().expect("dir");
    let node = common::node(repo.path()).await;
    let api = node.api_addr().expect("api");
    // A peer that joined before anything was pinned.
    let mut c = Config::new(Keypair::generate_ed25519()).loopback();
    c.bootstrap = node.transport().dialable_addrs().await.expect("addrs");
    let peer = streamspace_transport::Node::start(c, Arc::new(MemoryStore::new()), Arc::new(Free))
        .await
        .expect("peer");
    let data = common::data(300_000, 9);
    let added = post_multipart(
        api,
        "/api/v0/add?pin=true",
        &[("file", "f.bin", "application/octet-stream", &data)],
    )
    .await;
    assert_eq!(
        added.status,
        200,
        "{}",
        String::from_utf8_lossy(&added.body)
    );
    let cid: cid::Cid = added.json()["Hash"]
        .as_str()
        .expect("hash")
        .parse()
        .expect("cid");
    // The provider record is there now, not at the node's next start.
    let mut found = Vec::new();
    for _ in 0..50 {
        found = peer.find_providers(cid).await.expect("query");
        if found.contains(&node.transport().peer_id()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(found.contains(&node.transport().peer_id()), "{found:?}");
    peer.shutdown().await;
    node.shutdown().await.expect("shutdown");
}
