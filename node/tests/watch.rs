//! The player page in a real browser: headless Chromium (Debian's `chromium`) driven by
//! `playwright-core` (pinned in `interop/js`) plays an on-demand item (HLS cut by ffmpeg and
//! added as a directory on another node) and a live stream (ffmpeg's test card, published
//! segment by segment) from a viewer's gateway: `currentTime` passes 5 s with no error event,
//! the page shows its start-up time, and a screenshot of each is kept.
//!
//! Set `STREAMSPACE_SKIP_BROWSER=1` to skip it on a machine without Chromium.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use streamspace_live::{Input, Publisher, PublisherConfig, Segmenter, SegmenterConfig};
use streamspace_node::gateway::{CacheStats, Keyring, router_with_keys};
use streamspace_shard::import::ImportOptions;
use streamspace_shard::store::{MemoryStore, add_path};
use streamspace_transport::{Config, Keypair, Node, ed25519, meter::Free};

async fn node_with(key: Keypair, join: Option<&Node<MemoryStore>>) -> Node<MemoryStore> {
    let mut c = Config::new(key).loopback();
    if let Some(j) = join {
        c.bootstrap = j.dialable_addrs().await.expect("addrs");
    }
    Node::start(c, Arc::new(MemoryStore::new()), Arc::new(Free))
        .await
        .expect("node")
}

const CARD: &str = "testsrc=size=320x180:rate=25:duration=14[out0];sine=frequency=440:sample_rate=48000:duration=14[out1]";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_player_page_plays_on_demand_and_live_in_chromium() {
    if std::env::var_os("STREAMSPACE_SKIP_BROWSER").is_some() {
        eprintln!("STREAMSPACE_SKIP_BROWSER set: the player is not tried in a browser");
        return;
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} missing: install Debian's chromium or set STREAMSPACE_SKIP_BROWSER=1"
    );
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("../interop/js");
    assert!(
        js.join("node_modules/playwright-core").exists(),
        "playwright-core not installed: run `npm ci --prefix interop/js`"
    );

    // On demand: 8 s of test card cut into 1 s HLS segments, added on the origin.
    let vod = tempfile::tempdir().expect("dir");
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
        .arg(CARD.replace("duration=14", "duration=8"))
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-profile:v",
            "main",
            "-pix_fmt",
            "yuv420p",
            "-force_key_frames",
            "expr:gte(t,n_forced*1)",
            "-c:a",
            "aac",
            "-f",
            "hls",
            "-hls_time",
            "1",
            "-hls_list_size",
            "0",
            "-hls_playlist_type",
            "vod",
            "-hls_segment_filename",
        ])
        .arg(vod.path().join("seg%d.ts"))
        .arg(vod.path().join("index.m3u8"))
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let origin = node_with(Keypair::generate_ed25519(), None).await;
    let root = add_path(
        Some(origin.store().as_ref()),
        vod.path().to_owned(),
        ImportOptions::default(),
        false,
        |_, _| {},
    )
    .await
    .expect("add")
    .cid;
    origin.provide(root).await.expect("provide");

    // Live: the publisher's node (its identity the stream's key) and ffmpeg's test card.
    let signing = SigningKey::from_bytes(&[21; 32]);
    let mut secret = signing.to_bytes();
    let secret = ed25519::SecretKey::try_from_bytes(&mut secret).expect("secret");
    let pub_node = node_with(ed25519::Keypair::from(secret).into(), Some(&origin)).await;
    let mut config = PublisherConfig::default();
    config.window = 6;
    let mut publisher =
        Publisher::new(pub_node.clone(), signing, "card", None, config).expect("publisher");
    publisher.join().await.expect("topic");
    let stream = publisher.stream().clone();
    let seg_dir = tempfile::tempdir().expect("dir");
    let mut sc = SegmenterConfig::new(Input::Lavfi(CARD.into()), seg_dir.path());
    sc.segment_secs = 1;
    sc.height = 180;
    sc.video_kbps = 300;
    let mut segmenter = Segmenter::spawn(&sc).expect("ffmpeg");
    let publishing = tokio::spawn(async move {
        let mut n = 0;
        while let Some(cut) = segmenter.next().await {
            let cut = cut.expect("segment");
            let bytes = std::fs::read(&cut.path).expect("read");
            publisher.push(bytes, cut.duration_ms).await.expect("push");
            n += 1;
        }
        publisher.finish().await.expect("finish");
        n
    });

    // The viewer's gateway.
    let viewer = node_with(Keypair::generate_ed25519(), Some(&origin)).await;
    viewer
        .dial(pub_node.dialable_addrs().await.expect("addrs")[0].clone())
        .await
        .expect("dial");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(streamspace_node::http::serve(
        listener,
        router_with_keys(
            viewer.clone(),
            Arc::new(CacheStats::default()),
            Arc::new(Keyring::new()),
        ),
        streamspace_node::http::HttpLimits::default(),
        stop_rx,
    ));

    let prefix = Path::new(env!("CARGO_TARGET_TMPDIR")).join("watch");
    let out = tokio::task::spawn_blocking({
        let js = js.clone();
        let chromium = chromium.clone();
        let prefix = prefix.clone();
        let urls = [
            format!("http://{addr}/watch/{root}"),
            format!("http://{addr}/watch/live/{stream}"),
        ];
        move || {
            Command::new("node")
                .arg(js.join("watch.mjs"))
                .arg("5")
                .arg(&prefix)
                .args(urls)
                .env("CHROMIUM", &chromium)
                .output()
                .expect("node runs")
        }
    })
    .await
    .expect("task");
    assert!(
        out.status.success(),
        "watch.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    eprintln!("{v:#}");
    for page in v.as_array().expect("pages") {
        assert_eq!(page["played"], true, "{page}");
        assert!(page["currentTime"].as_f64().expect("t") > 5.0, "{page}");
        assert_eq!(page["errors"], serde_json::json!([]), "{page}");
        assert_eq!(page["consoleErrors"], serde_json::json!([]), "{page}");
        assert!(page["startupMs"].as_u64().is_some(), "{page}");
        assert!(
            page["startupShown"].as_str().expect("s").ends_with(" ms"),
            "{page}"
        );
        let shot = page["screenshot"].as_str().expect("path");
        assert!(std::fs::metadata(shot).expect("screenshot").len() > 10_000);
        eprintln!("player screenshot: {shot}");
    }
    // Every live byte the viewer has came from the swarm; the publisher is one of its peers.
    let stats = viewer.stats();
    assert!(stats.bytes_received > 0);
    let segments = publishing.await.expect("publisher");
    assert!(segments >= 10, "{segments}");
    let _ = stop_tx.send(true);
    let _ = server.await;
    viewer.shutdown().await;
    pub_node.shutdown().await;
    origin.shutdown().await;
}
