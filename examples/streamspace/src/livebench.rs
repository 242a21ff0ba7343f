//! `streamspace live-bench`: a live stream through a swarm on loopback, measured. One
//! publisher (ffmpeg's test card cut live), Tier-1 nodes joined to it, edge nodes joined to
//! the Tier-1 nodes and viewers joined to the edges, every node with its own gateway. Each
//! viewer plays as a player does: it polls its gateway's playlist, asks for each new segment,
//! and plays them in order from the first it got. Reported: the time from ffmpeg listing a
//! segment to the segment being playable at a viewer (p50, p95), the share of the stream's
//! bytes that peers served rather than the publisher, and the rebuffering ratio.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::body::Body;
use axum::http::Request;
use ed25519_dalek::SigningKey;
use streamspace_live::{Input, Publisher, PublisherConfig, Segmenter, SegmenterConfig, StreamId};
use streamspace_node::gateway::{CacheStats, Keyring, router_with_keys};
use streamspace_shard::store::MemoryStore;
use streamspace_transport::{Config, Keypair, Node, Tier, ed25519, meter::Free};
use tower::ServiceExt;

/// Options of `streamspace live-bench`.
#[derive(clap::Args, Debug)]
pub(crate) struct LiveBenchArgs {
    /// Viewers.
    #[arg(long, default_value_t = 20)]
    viewers: usize,
    /// Tier-1 nodes (joined to the publisher).
    #[arg(long, default_value_t = 2)]
    tier1: usize,
    /// Edge nodes (joined to the Tier-1 nodes; the viewers join them).
    #[arg(long, default_value_t = 8)]
    edge: usize,
    /// Length of the stream, seconds.
    #[arg(long, default_value_t = 30)]
    secs: u32,
    /// Target segment duration, seconds.
    #[arg(long, default_value_t = 2)]
    segment_secs: u32,
    /// Video bitrate, kbit/s (360 lines).
    #[arg(long, default_value_t = 1000)]
    video_kbps: u32,
}

async fn start(
    key: Keypair,
    tier: Tier,
    join: Option<&Node<MemoryStore>>,
) -> Result<Node<MemoryStore>> {
    let mut c = Config::new(key).loopback();
    c.tier = tier;
    if let Some(j) = join {
        c.bootstrap = j.dialable_addrs().await?;
    }
    Ok(Node::start(c, Arc::new(MemoryStore::new()), Arc::new(Free)).await?)
}

async fn get(app: &axum::Router, path: &str) -> Result<(u16, Vec<u8>)> {
    let r = app
        .clone()
        .oneshot(
            Request::get(path)
                .header("host", "127.0.0.1:8080")
                .body(Body::empty())?,
        )
        .await?;
    let status = r.status().as_u16();
    let body = axum::body::to_bytes(r.into_body(), 128 << 20).await?;
    Ok((status, body.to_vec()))
}

/// What one viewer saw: each segment's delay from ffmpeg to playable, and its playback.
#[derive(Debug, Default)]
struct Watched {
    delays: Vec<Duration>,
    played: Duration,
    stalled: Duration,
}

/// Plays `stream` from `app` until the playlist ends: from the live edge of the first
/// playlist, each segment asked for once it is listed.
async fn watch(
    app: axum::Router,
    stream: StreamId,
    written: Arc<Mutex<HashMap<u64, (Instant, u32)>>>,
) -> Result<Watched> {
    let path = format!("/live/{stream}/index.m3u8");
    let mut next: Option<u64> = None;
    let mut w = Watched::default();
    // The player's clock: when the segment being fetched is due to play.
    let mut due: Option<Instant> = None;
    loop {
        let (status, body) = get(&app, &path).await?;
        if status != 200 {
            bail!("playlist: {status} {}", String::from_utf8_lossy(&body));
        }
        let text = String::from_utf8(body)?;
        let listed: Vec<u64> = text
            .lines()
            .filter_map(|l| l.strip_suffix(".ts")?.parse().ok())
            .collect();
        let n = *next.get_or_insert_with(|| listed.last().copied().unwrap_or(0));
        let mut from = n;
        for &seq in listed.iter().filter(|s| **s >= n) {
            let (status, body) = get(&app, &format!("/live/{stream}/{seq}.ts")).await?;
            if status != 200 {
                bail!("segment {seq}: {status} {}", String::from_utf8_lossy(&body));
            }
            let now = Instant::now();
            let (at, ms) = *written
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&seq)
                .context("a segment the publisher did not cut")?;
            w.delays.push(now.saturating_duration_since(at));
            let d = Duration::from_millis(u64::from(ms));
            match due {
                None => due = Some(now + d),
                Some(t) => {
                    if now > t {
                        w.stalled += now - t;
                        due = Some(now + d);
                    } else {
                        due = Some(t + d);
                    }
                }
            }
            w.played += d;
            from = seq + 1;
        }
        next = Some(from);
        if text.contains("#EXT-X-ENDLIST") {
            return Ok(w);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the bench and prints its figures.
pub(crate) async fn run(args: &LiveBenchArgs) -> Result<()> {
    let signing = SigningKey::generate(&mut rand::rngs::OsRng);
    let mut secret = signing.to_bytes();
    let secret = ed25519::SecretKey::try_from_bytes(&mut secret).context("identity")?;
    let publisher_node = start(ed25519::Keypair::from(secret).into(), Tier::Tier1, None).await?;
    let mut tier1 = Vec::new();
    for _ in 0..args.tier1 {
        tier1.push(
            start(
                Keypair::generate_ed25519(),
                Tier::Tier1,
                Some(&publisher_node),
            )
            .await?,
        );
    }
    let mut edges = Vec::new();
    for i in 0..args.edge {
        let up = tier1.get(i % tier1.len().max(1)).unwrap_or(&publisher_node);
        edges.push(start(Keypair::generate_ed25519(), Tier::Edge, Some(up)).await?);
    }
    let mut viewers = Vec::new();
    for i in 0..args.viewers {
        let up = edges
            .get(i % edges.len().max(1))
            .or(tier1.first())
            .unwrap_or(&publisher_node);
        viewers.push(start(Keypair::generate_ed25519(), Tier::Edge, Some(up)).await?);
    }
    let gateway = |n: &Node<MemoryStore>| {
        router_with_keys(
            n.clone(),
            Arc::new(CacheStats::default()),
            Arc::new(Keyring::new()),
        )
    };

    let mut pc = PublisherConfig::default();
    pc.window = 6;
    let mut publisher = Publisher::new(publisher_node.clone(), signing, "bench", None, pc)?;
    publisher.join().await?;
    let stream = publisher.stream().clone();
    let dir = tempfile::tempdir()?;
    let card = format!(
        "testsrc=size=640x360:rate=25:duration={s}[out0];sine=frequency=440:sample_rate=48000:duration={s}[out1]",
        s = args.secs
    );
    let mut sc = SegmenterConfig::new(Input::Lavfi(card), dir.path());
    sc.segment_secs = args.segment_secs;
    sc.video_kbps = args.video_kbps;
    let mut segmenter = Segmenter::spawn(&sc)?;
    let written: Arc<Mutex<HashMap<u64, (Instant, u32)>>> = Arc::default();

    // The relays follow the stream (their gateways take each segment as it is announced),
    // and the viewers start watching once the first segment is out.
    let first = segmenter.next().await.context("ffmpeg cut nothing")??;
    let bytes = streamspace_live::segmenter::read_segment(&first.path)?;
    let p = publisher.push(bytes, first.duration_ms).await?;
    written.lock().unwrap_or_else(|p| p.into_inner()).insert(
        p.seq.unwrap_or_default(),
        (first.written, first.duration_ms),
    );
    let mut watchers = Vec::new();
    for n in tier1.iter().chain(&edges) {
        let (app, stream, w) = (gateway(n), stream.clone(), written.clone());
        watchers.push((false, tokio::spawn(watch(app, stream, w))));
    }
    for n in &viewers {
        let (app, stream, w) = (gateway(n), stream.clone(), written.clone());
        watchers.push((true, tokio::spawn(watch(app, stream, w))));
    }
    let mut cut = 1;
    while let Some(s) = segmenter.next().await {
        let s = s?;
        let bytes = streamspace_live::segmenter::read_segment(&s.path)?;
        let _ = std::fs::remove_file(&s.path);
        // Known before it is announced, so no viewer finds it missing.
        let seq = cut;
        written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(seq, (s.written, s.duration_ms));
        publisher.push(bytes, s.duration_ms).await?;
        cut += 1;
    }
    publisher.finish().await?;

    let mut delays = Vec::new();
    let (mut played, mut stalled) = (Duration::ZERO, Duration::ZERO);
    for (is_viewer, h) in watchers {
        let w = tokio::time::timeout(Duration::from_secs(60), h)
            .await
            .context("a viewer did not see the end")???;
        if is_viewer {
            delays.extend(w.delays);
            played += w.played;
            stalled += w.stalled;
        }
    }
    delays.sort();
    let served_by_publisher = publisher_node.stats().bytes_served;
    let received: u64 = tier1
        .iter()
        .chain(&edges)
        .chain(&viewers)
        .map(|n| n.stats().bytes_received)
        .sum();
    let peer_share = 1.0 - served_by_publisher as f64 / received.max(1) as f64;
    println!(
        "live-bench: 1 publisher, {} Tier-1, {} edge, {} viewers; {cut} segments of {} s",
        args.tier1, args.edge, args.viewers, args.segment_secs
    );
    let goal = Duration::from_secs(u64::from(args.segment_secs) + 1);
    let p50 = percentile(&delays, 0.5);
    println!(
        "segment-to-playable at viewers: p50 {} ms, p95 {} ms ({} samples); p50 / (segment + 1 s) = {:.2} (goal <= 1)",
        p50.as_millis(),
        percentile(&delays, 0.95).as_millis(),
        delays.len(),
        p50.as_secs_f64() / goal.as_secs_f64()
    );
    println!(
        "bytes received by all nodes {received}, served by the publisher {served_by_publisher}: peer share {:.1}%",
        peer_share * 100.0
    );
    println!(
        "rebuffering ratio at viewers: {:.2}% ({} ms stalled in {} ms played)",
        stalled.as_secs_f64() / played.as_secs_f64().max(1e-9) * 100.0,
        stalled.as_millis(),
        played.as_millis()
    );
    for n in tier1.iter().chain(&edges).chain(&viewers) {
        n.shutdown().await;
    }
    publisher_node.shutdown().await;
    Ok(())
}
