//! The player page in a real browser: headless Chromium (Debian's `chromium`) driven by
//! `playwright-core` (pinned in `interop/js`) plays an on-demand item (HLS cut by ffmpeg and
//! added as a directory on another node) and a live ladder (ffmpeg's test card in two
//! renditions, each published segment by segment as a stream of its own, under one master) from a viewer's gateway: `currentTime` passes 5 s with no error event,
//! the page shows its start-up time, and a screenshot of each is kept.
//!
//! Set `STREAMSPACE_SKIP_BROWSER=1` to skip it on a machine without Chromium.

use std::path::{Path, PathBuf};
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

/// Chromium and the JS drivers' directory, or `None` when the browser tests are skipped.
fn browser() -> Option<(String, PathBuf)> {
    if std::env::var_os("STREAMSPACE_SKIP_BROWSER").is_some() {
        eprintln!("STREAMSPACE_SKIP_BROWSER set: the player is not tried in a browser");
        return None;
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
    Some((chromium, js))
}

/// One browser at a time: two Chromiums and ffmpeg on two cores would starve each other.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The viewer's gateway on a port the OS chooses: its address and what stops it.
async fn gateway(
    viewer: &Node<MemoryStore>,
) -> (
    std::net::SocketAddr,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
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
    (addr, stop_tx, server)
}

/// Runs a JS driver with `node`, off the runtime's threads; its standard output as JSON.
async fn drive(js: &Path, chromium: &str, script: &str, args: Vec<String>) -> serde_json::Value {
    let out = tokio::task::spawn_blocking({
        let js = js.to_owned();
        let chromium = chromium.to_owned();
        let script = script.to_owned();
        move || {
            Command::new("node")
                .arg(js.join(&script))
                .args(args)
                .env("CHROMIUM", &chromium)
                .output()
                .expect("node runs")
        }
    })
    .await
    .expect("task");
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_player_page_plays_on_demand_and_live_in_chromium() {
    let Some((chromium, js)) = browser() else {
        return;
    };
    let _one = ONE_BROWSER.lock().await;

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
    // A live ladder of two renditions, each a stream of its own (`card-180p`, `card-144p`).
    let mut config = PublisherConfig::default();
    config.window = 6;
    let ladder: streamspace_live::Ladder = "180p@300k,144p@120k".parse().expect("ladder");
    let stream = streamspace_live::StreamId::new("card", &signing.verifying_key()).expect("id");
    let mut publishers = Vec::new();
    for rung in ladder.rungs() {
        let name = stream.rendition(rung).expect("rendition");
        let p = Publisher::new(pub_node.clone(), signing.clone(), name.name(), None, config)
            .expect("publisher");
        p.join().await.expect("topic");
        publishers.push(p);
    }
    let seg_dir = tempfile::tempdir().expect("dir");
    let mut sc = SegmenterConfig::new(Input::Lavfi(CARD.into()), seg_dir.path());
    sc.segment_secs = 1;
    sc.ladder = Some(ladder.clone());
    let mut segmenter = Segmenter::spawn(&sc).expect("ffmpeg");
    let publishing = tokio::spawn(async move {
        let mut n = [0; 2];
        while let Some(cut) = segmenter.next().await {
            let cut = cut.expect("segment");
            let bytes = std::fs::read(&cut.path).expect("read");
            publishers[cut.rendition]
                .push(bytes, cut.duration_ms)
                .await
                .expect("push");
            n[cut.rendition] += 1;
        }
        for p in &mut publishers {
            p.finish().await.expect("finish");
        }
        n
    });

    // The viewer's gateway.
    let viewer = node_with(Keypair::generate_ed25519(), Some(&origin)).await;
    viewer
        .dial(pub_node.dialable_addrs().await.expect("addrs")[0].clone())
        .await
        .expect("dial");
    let (addr, stop_tx, server) = gateway(&viewer).await;

    let prefix = Path::new(env!("CARGO_TARGET_TMPDIR")).join("watch");
    let v = drive(
        &js,
        &chromium,
        "watch.mjs",
        vec![
            "5".into(),
            prefix.display().to_string(),
            format!("http://{addr}/watch/{root}"),
            format!("http://{addr}/watch/live/{stream}?ladder={ladder}"),
        ],
    )
    .await;
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
    assert!(segments[0] >= 10, "{segments:?}");
    assert_eq!(segments[0], segments[1], "renditions not aligned");
    let _ = stop_tx.send(true);
    let _ = server.await;
    viewer.shutdown().await;
    pub_node.shutdown().await;
    origin.shutdown().await;
}

/// Adaptive bitrate in a real browser: an item cut into two renditions (360p at 1.5 Mbit/s,
/// 144p at 120 kbit/s, keyframes aligned) plays from the viewer's gateway over a page link of
/// 8 Mbit/s, where hls.js takes the tall rendition; the link then drops to 500 kbit/s and
/// hls.js moves to the short one, with no error event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_player_moves_to_a_lower_rendition_when_its_link_is_throttled() {
    use streamspace_live::ladder::{VodConfig, cut_vod};
    let Some((chromium, js)) = browser() else {
        return;
    };
    let _one = ONE_BROWSER.lock().await;
    let tmp = tempfile::tempdir().expect("dir");
    let source = tmp.path().join("card.mp4");
    // Noise keeps the encoder at the bitrates asked for (a clean test card costs nothing).
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=640x360:rate=25:duration=60,noise=alls=40:allf=t")
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000:duration=60",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-c:a", "aac", "-y"])
        .arg(&source)
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tmp.path().join("cut");
    let mut config = VodConfig::new(
        &source,
        &dir,
        "360p@1500k,144p@120k".parse().expect("ladder"),
    );
    config.segment_secs = 2;
    config.audio_kbps = 64;
    let cut = cut_vod(&config).await.expect("cut");
    // What the test stands on: the throttle lies between the two renditions.
    assert!(
        cut.variants[0].average_bandwidth > 900_000,
        "{:?}",
        cut.variants[0]
    );
    assert!(cut.variants[1].bandwidth < 350_000, "{:?}", cut.variants[1]);

    let origin = node_with(Keypair::generate_ed25519(), None).await;
    let root = add_path(
        Some(origin.store().as_ref()),
        dir,
        ImportOptions::default(),
        false,
        |_, _| {},
    )
    .await
    .expect("add")
    .cid;
    origin.provide(root).await.expect("provide");
    let viewer = node_with(Keypair::generate_ed25519(), Some(&origin)).await;
    let (addr, stop_tx, server) = gateway(&viewer).await;

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("watch-abr.png");
    let v = drive(
        &js,
        &chromium,
        "abr.mjs",
        vec![
            "8000".into(),
            "500".into(),
            shot.display().to_string(),
            format!("http://{addr}/watch/{root}"),
        ],
    )
    .await;
    eprintln!("{v:#}");
    assert_eq!(v["levels"].as_array().expect("levels").len(), 2, "{v}");
    assert_eq!(
        v["reachedTop"], true,
        "hls.js never fetched the tall rendition: {v}"
    );
    assert_eq!(
        v["switchedDown"], true,
        "no lower rendition under the throttle: {v}"
    );
    assert_eq!(v["errors"], serde_json::json!([]), "{v}");
    assert_eq!(v["consoleErrors"], serde_json::json!([]), "{v}");
    assert!(std::fs::metadata(&shot).expect("screenshot").len() > 10_000);
    let _ = stop_tx.send(true);
    let _ = server.await;
    viewer.shutdown().await;
    origin.shutdown().await;
}
