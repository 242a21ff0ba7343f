//! `streamspace sim`: many viewers of one item, as real nodes on loopback (up to a few hundred)
//! and as a discrete-event model of the same fetching rules (to 10,000 and beyond).
//!
//! Writes `summary.csv` (one row per run), `viewers-<mode>-<N>.csv` (one row per viewer) and
//! three SVG plots: origin offload against viewers with the ideal 1 − 1/N beside it, start-up
//! time (p50, p95) and rebuffering.

mod model;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use streamspace_shard::import::ImportOptions;
use streamspace_shard::store::{MemoryStore, add_reader};
use streamspace_transport::meter::{Decision, Meter};
use streamspace_transport::{Config, FetchOptions, Keypair, Node, PeerId, Tier};

use model::{Params, quantile};

/// Options of the simulation.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct SimArgs {
    /// Viewer counts to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10,30,100,300,1000,3000,10000"
    )]
    viewers: Vec<usize>,
    /// Also run real nodes on loopback for the counts up to this one (0: model only). All the
    /// nodes share this machine's cores: past a few dozen on a small machine, the figures show
    /// its CPU rather than the protocol.
    #[arg(long, default_value_t = 30)]
    real_up_to: usize,
    /// Shards (256 KiB) in the item.
    #[arg(long, default_value_t = 64)]
    shards: usize,
    /// Playback bit rate, Mbit/s.
    #[arg(long, default_value_t = 4.0)]
    bitrate_mbps: f64,
    /// Viewers' upload and download rate, Mbit/s.
    #[arg(long, default_value_t = 50.0)]
    link_mbps: f64,
    /// The origin's upload rate, Mbit/s.
    #[arg(long, default_value_t = 1000.0)]
    origin_mbps: f64,
    /// One-way link latency, milliseconds (model; real nodes have loopback's).
    #[arg(long, default_value_t = 50.0)]
    latency_ms: f64,
    /// Viewers arrive uniformly at random over this many seconds.
    #[arg(long, default_value_t = 10.0)]
    arrivals_secs: f64,
    /// Share of viewers (0..1) leaving at a random time before the end.
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Seconds viewers keep serving after watching.
    #[arg(long, default_value_t = 0.0)]
    linger_secs: f64,
    /// Viewers each newcomer is introduced to (model).
    #[arg(long, default_value_t = 32)]
    neighbours: usize,
    /// Random seed (model).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory for the CSV files and plots.
    #[arg(long, default_value = "sim-out")]
    out: PathBuf,
}

/// One run's figures.
#[derive(Debug, Clone)]
struct Row {
    mode: &'static str,
    viewers: usize,
    offload: f64,
    origin_bytes: u64,
    peer_bytes: u64,
    startup_p50: Option<f64>,
    startup_p95: Option<f64>,
    rebuffering: Option<f64>,
    left_early: usize,
    wall: Duration,
}

impl SimArgs {
    fn params(&self, viewers: usize) -> Params {
        Params {
            viewers,
            shards: self.shards,
            bitrate: self.bitrate_mbps * 1e6,
            up: self.link_mbps * 1e6,
            down: self.link_mbps * 1e6,
            origin_up: self.origin_mbps * 1e6,
            latency: self.latency_ms / 1e3,
            arrivals: self.arrivals_secs,
            churn: self.churn,
            linger: self.linger_secs,
            neighbours: self.neighbours,
            seed: self.seed,
            ..Params::default()
        }
    }

    fn check(&self) -> Result<()> {
        ensure!(!self.viewers.is_empty(), "--viewers names no count");
        ensure!(
            self.viewers.iter().all(|&v| (1..=20_000).contains(&v)),
            "viewer counts run from 1 to 20,000"
        );
        ensure!(
            (1..=65_536).contains(&self.shards),
            "--shards runs from 1 to 65,536"
        );
        for (name, v) in [
            ("--bitrate-mbps", self.bitrate_mbps),
            ("--link-mbps", self.link_mbps),
            ("--origin-mbps", self.origin_mbps),
        ] {
            ensure!(v.is_finite() && v > 0.0, "{name} must be positive");
        }
        for (name, v) in [
            ("--latency-ms", self.latency_ms),
            ("--arrivals-secs", self.arrivals_secs),
            ("--linger-secs", self.linger_secs),
        ] {
            ensure!(v.is_finite() && v >= 0.0, "{name} must not be negative");
        }
        ensure!(
            (0.0..=1.0).contains(&self.churn),
            "--churn is a share from 0 to 1"
        );
        if self.real_up_to > 500 {
            bail!("--real-up-to: at most 500 real nodes in one process");
        }
        Ok(())
    }

    fn content_secs(&self) -> f64 {
        self.shards as f64 * 262_144.0 * 8.0 / (self.bitrate_mbps * 1e6)
    }
}

pub(crate) async fn run(args: &SimArgs) -> Result<()> {
    args.check()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut counts = args.viewers.clone();
    counts.sort_unstable();
    counts.dedup();
    println!(
        "streamspace sim: one item of {} shards ({:.1} MiB, {:.0} s at {} Mbit/s); links {} Mbit/s, {} ms; origin {} Mbit/s; arrivals over {} s; churn {}",
        args.shards,
        args.shards as f64 / 4.0,
        args.content_secs(),
        args.bitrate_mbps,
        args.link_mbps,
        args.latency_ms,
        args.origin_mbps,
        args.arrivals_secs,
        args.churn
    );
    let mut rows = Vec::new();
    for &n in &counts {
        if n <= args.real_up_to {
            let row = real(args, n).await?;
            print_row(&row);
            rows.push(row);
        }
        let p = args.params(n);
        let t = Instant::now();
        let outcome = tokio::task::spawn_blocking(move || model::run(&p)).await?;
        let row = model_row(args, n, &outcome, t.elapsed());
        write_viewers(
            args,
            "model",
            n,
            outcome.viewers.iter().map(|v| {
                (
                    v.startup,
                    Some(v.stalled),
                    v.from_origin,
                    v.from_peers,
                    v.uploaded,
                    v.left_early,
                )
            }),
        )?;
        print_row(&row);
        rows.push(row);
    }
    write_summary(args, &rows)?;
    plot_offload(args, &rows)?;
    plot_startup(args, &rows)?;
    plot_rebuffering(args, &rows)?;
    println!(
        "wrote {0}/summary.csv, {0}/viewers-*.csv, {0}/offload.svg, {0}/startup.svg, {0}/rebuffering.svg",
        args.out.display()
    );
    Ok(())
}

fn model_row(args: &SimArgs, n: usize, o: &model::Outcome, wall: Duration) -> Row {
    let startups = o.startups();
    Row {
        mode: "model",
        viewers: n,
        offload: o.offload(),
        origin_bytes: o.origin_bytes,
        peer_bytes: o.peer_bytes,
        startup_p50: quantile(&startups, 0.5),
        startup_p95: quantile(&startups, 0.95),
        rebuffering: Some(o.rebuffering(args.content_secs())),
        left_early: o.viewers.iter().filter(|v| v.left_early).count(),
        wall,
    }
}

fn print_row(r: &Row) {
    let ms = |v: Option<f64>| v.map_or("-".into(), |s| format!("{:.0} ms", s * 1e3));
    println!(
        "  {:<5} {:>6} viewers: {:>6.2}% of bytes from peers (ideal {:.2}%), start-up p50 {} p95 {}, rebuffering {}, {} left early ({:.2?})",
        r.mode,
        r.viewers,
        r.offload * 100.0,
        ideal(r.viewers) * 100.0,
        ms(r.startup_p50),
        ms(r.startup_p95),
        r.rebuffering
            .map_or("-".into(), |v| format!("{:.2}%", v * 100.0)),
        r.left_early,
        r.wall
    );
}

fn ideal(n: usize) -> f64 {
    1.0 - 1.0 / n.max(1) as f64
}

/// A token bucket: bytes a link may send now, refilled at its rate, as deep as what the link
/// sends in the model's queue limit (at least one shard).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    rate: f64,
    depth: f64,
}

impl Bucket {
    fn new(bits_per_sec: f64, queue_secs: f64) -> Self {
        let rate = bits_per_sec / 8.0;
        let depth = (rate * queue_secs).max(SHARD as f64);
        Self {
            tokens: depth,
            at: Instant::now(),
            rate,
            depth,
        }
    }

    /// Seconds until `bytes` can go, after refilling to `now` (0 when they can go at once).
    fn wait(&mut self, bytes: f64, now: Instant) -> f64 {
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate)
            .min(self.depth.max(bytes));
        self.at = now;
        ((bytes - self.tokens) / self.rate).max(0.0)
    }
}

/// The download links of every real node of a run (they share this process): a sender checks
/// the receiver's link as well as its own.
struct Downlinks {
    bits_per_sec: f64,
    links: std::sync::Mutex<HashMap<PeerId, Bucket>>,
}

/// Shapes a real node's links through the metering hook: a shard goes only when the sender's
/// uplink and the receiver's downlink can both take it; otherwise it is paused (the receiver
/// asks again, or asks another peer), as a link with that much queued would refuse it.
struct Shaped {
    uplink: std::sync::Mutex<Bucket>,
    downlinks: Arc<Downlinks>,
}

const SHARD: usize = 262_144;

impl Meter for Shaped {
    fn before_send(&self, peer: &PeerId, _: &cid::Cid, bytes: usize) -> Decision {
        let now = Instant::now();
        let queue = Params::default().queue_limit;
        let mut up = self.uplink.lock().unwrap_or_else(|p| p.into_inner());
        let mut downs = self
            .downlinks
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let down = downs
            .entry(*peer)
            .or_insert_with(|| Bucket::new(self.downlinks.bits_per_sec, queue));
        let wait = up.wait(bytes as f64, now).max(down.wait(bytes as f64, now));
        if wait == 0.0 {
            up.tokens -= bytes as f64;
            down.tokens -= bytes as f64;
            Decision::Serve
        } else {
            Decision::Pause {
                retry_after_ms: (wait * 1e3).ceil().max(1.0) as u64,
            }
        }
    }

    fn received(&self, _: &PeerId, _: &cid::Cid, _: usize) {}
}

/// Real nodes on loopback: an origin and `n` viewers arriving over the arrival period, each
/// fetching the item with the playback window and announcing itself as a provider. Uploads and
/// downloads are shaped to the link rates through the metering hook; latency is loopback's.
async fn real(args: &SimArgs, n: usize) -> Result<Row> {
    let started = Instant::now();
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::new(n as u64).with_style(
            ProgressStyle::with_template("  real {pos}/{len} viewers done {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    } else {
        ProgressBar::hidden()
    };
    let downlinks = Arc::new(Downlinks {
        bits_per_sec: args.link_mbps * 1e6,
        links: std::sync::Mutex::new(HashMap::new()),
    });
    let start = |tier: Tier, bootstrap: Vec<_>, uplink: f64| {
        let downlinks = downlinks.clone();
        async move {
            let mut config = Config::new(Keypair::generate_ed25519()).loopback();
            config.network = "sim".into();
            config.tier = tier;
            // Every simulated peer is trusted: Tier-1 nodes replicate whatever is in demand.
            config.replication.policy = Arc::new(streamspace_transport::ReplicateAnything);
            config.bootstrap = bootstrap;
            let meter = Shaped {
                uplink: std::sync::Mutex::new(Bucket::new(uplink, Params::default().queue_limit)),
                downlinks,
            };
            Node::start(config, Arc::new(MemoryStore::new()), Arc::new(meter)).await
        }
    };
    let origin = start(Tier::Tier1, Vec::new(), args.origin_mbps * 1e6).await?;
    let len = args.shards as u64 * 262_144;
    let root = add_reader(
        Some(origin.store().as_ref()),
        std::io::Read::take(Noise(0x2545_F491_4F6C_DD1D), len),
        ImportOptions::default().with_cid_version(1)?,
    )
    .await?;
    origin.provide(root.cid).await?;
    let boot = origin.dialable_addrs().await?;
    let mut viewers = Vec::with_capacity(n);
    for _ in 0..n {
        viewers.push(start(Tier::Edge, boot.clone(), args.link_mbps * 1e6).await?);
    }
    let mut rng = model_rng(args.seed);
    let mut tasks = Vec::with_capacity(n);
    let t0 = Instant::now();
    for v in &viewers {
        let at = Duration::from_secs_f64(rng() * args.arrivals_secs);
        let node = v.clone();
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until((t0 + at).into()).await;
            let r = node
                .fetch(
                    root.cid,
                    FetchOptions {
                        announce: true,
                        window: 8,
                        ..FetchOptions::default()
                    },
                )
                .await;
            bar.inc(1);
            r
        }));
    }
    let mut reports = Vec::with_capacity(n);
    for t in tasks {
        reports.push(t.await??);
    }
    bar.finish_and_clear();
    let origin_bytes = origin.stats().bytes_served;
    let received: u64 = viewers.iter().map(|v| v.stats().bytes_received).sum();
    ensure!(
        reports.iter().all(|r| r.blocks > 0),
        "a viewer fetched nothing"
    );
    let mut startups: Vec<f64> = reports
        .iter()
        .filter_map(|r| r.first_block.map(|d| d.as_secs_f64()))
        .collect();
    startups.sort_by(f64::total_cmp);
    let origin_id = origin.peer_id();
    write_viewers(
        args,
        "real",
        n,
        reports.iter().zip(&viewers).map(|(r, v)| {
            let from_origin = r.bytes_from.get(&origin_id).copied().unwrap_or(0);
            let all: u64 = r.bytes_from.values().sum();
            (
                r.first_block.map(|d| d.as_secs_f64()),
                None,
                from_origin,
                all - from_origin,
                v.stats().bytes_served,
                false,
            )
        }),
    )?;
    for v in &viewers {
        v.shutdown().await;
    }
    origin.shutdown().await;
    Ok(Row {
        mode: "real",
        viewers: n,
        offload: 1.0 - origin_bytes as f64 / received.max(1) as f64,
        origin_bytes,
        peer_bytes: received.saturating_sub(origin_bytes),
        startup_p50: quantile(&startups, 0.5),
        startup_p95: quantile(&startups, 0.95),
        rebuffering: None,
        left_early: 0,
        wall: started.elapsed(),
    })
}

/// Deterministic bytes standing in for the item.
struct Noise(u64);

impl std::io::Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        for b in buf.iter_mut() {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = (self.0 >> 24) as u8;
        }
        Ok(buf.len())
    }
}

fn model_rng(seed: u64) -> impl FnMut() -> f64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

type ViewerLine = (Option<f64>, Option<f64>, u64, u64, u64, bool);

fn write_viewers(
    args: &SimArgs,
    mode: &str,
    n: usize,
    rows: impl Iterator<Item = ViewerLine>,
) -> Result<()> {
    use std::io::Write;
    let path = args.out.join(format!("viewers-{mode}-{n}.csv"));
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&path).with_context(|| format!("{}", path.display()))?,
    );
    writeln!(
        f,
        "viewer,startup_s,stalled_s,bytes_from_origin,bytes_from_peers,bytes_uploaded,left_early"
    )?;
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    for (i, (startup, stalled, o, p, u, left)) in rows.enumerate() {
        writeln!(
            f,
            "{i},{},{},{o},{p},{u},{left}",
            opt(startup),
            opt(stalled)
        )?;
    }
    f.flush()?;
    Ok(())
}

fn write_summary(args: &SimArgs, rows: &[Row]) -> Result<()> {
    use std::io::Write;
    let path = args.out.join("summary.csv");
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&path).with_context(|| format!("{}", path.display()))?,
    );
    writeln!(
        f,
        "mode,viewers,offload,ideal_offload,origin_bytes,peer_bytes,startup_p50_s,startup_p95_s,rebuffering,left_early,link_mbps,latency_ms,origin_mbps,bitrate_mbps,shards,arrivals_s,churn,wall_s"
    )?;
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    for r in rows {
        writeln!(
            f,
            "{},{},{:.6},{:.6},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.3}",
            r.mode,
            r.viewers,
            r.offload,
            ideal(r.viewers),
            r.origin_bytes,
            r.peer_bytes,
            opt(r.startup_p50),
            opt(r.startup_p95),
            opt(r.rebuffering),
            r.left_early,
            args.link_mbps,
            args.latency_ms,
            args.origin_mbps,
            args.bitrate_mbps,
            args.shards,
            args.arrivals_secs,
            args.churn,
            r.wall.as_secs_f64()
        )?;
    }
    f.flush()?;
    Ok(())
}

type Series = Vec<(f64, f64)>;

fn series(rows: &[Row], mode: &str, y: impl Fn(&Row) -> Option<f64>) -> Series {
    rows.iter()
        .filter(|r| r.mode == mode)
        .filter_map(|r| y(r).map(|v| (r.viewers as f64, v)))
        .collect()
}

/// A line chart over a logarithmic viewer axis.
fn chart(
    path: PathBuf,
    title: &str,
    y_label: &str,
    rows: &[Row],
    y_range: std::ops::Range<f64>,
    lines: Vec<(String, Series, RGBColor, bool)>,
) -> Result<()> {
    let max_x = rows.iter().map(|r| r.viewers).max().unwrap_or(10).max(10) as f64;
    let root = SVGBackend::new(&path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d((1.0..max_x * 1.2).log_scale(), y_range)
        .map_err(plot_err)?;
    c.configure_mesh()
        .x_desc("concurrent viewers of one item")
        .y_desc(y_label)
        .draw()
        .map_err(plot_err)?;
    for (name, points, color, dashed) in lines {
        if points.is_empty() {
            continue;
        }
        let style = color.stroke_width(2);
        if dashed {
            c.draw_series(DashedLineSeries::new(points.clone(), 6, 4, style))
                .map_err(plot_err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        } else {
            c.draw_series(LineSeries::new(points.clone(), style))
                .map_err(plot_err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            c.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(plot_err)?;
        }
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e}")
}

fn plot_offload(args: &SimArgs, rows: &[Row]) -> Result<()> {
    let mut xs: Vec<usize> = rows.iter().map(|r| r.viewers).collect();
    xs.dedup();
    let ideal_line: Series = {
        // Drawn finely so that the curve shows between the measured counts.
        let max = xs.iter().copied().max().unwrap_or(1).max(2) as f64;
        (0..=200)
            .map(|i| max.powf(i as f64 / 200.0))
            .map(|n| (n, 100.0 * (1.0 - 1.0 / n)))
            .collect()
    };
    chart(
        args.out.join("offload.svg"),
        "Origin offload: share of bytes served by peers",
        "bytes from peers (%)",
        rows,
        0.0..100.0,
        vec![
            ("ideal 1 - 1/N".into(), ideal_line, BLACK, true),
            (
                "model".into(),
                series(rows, "model", |r| Some(100.0 * r.offload)),
                BLUE,
                false,
            ),
            (
                "real nodes (loopback)".into(),
                series(rows, "real", |r| Some(100.0 * r.offload)),
                RED,
                false,
            ),
        ],
    )
}

fn plot_startup(args: &SimArgs, rows: &[Row]) -> Result<()> {
    let top = rows
        .iter()
        .filter_map(|r| r.startup_p95)
        .fold(0.5f64, f64::max)
        * 1.2;
    chart(
        args.out.join("startup.svg"),
        "Start-up time (first shard playable)",
        "seconds",
        rows,
        0.0..top,
        vec![
            (
                "model p50".into(),
                series(rows, "model", |r| r.startup_p50),
                BLUE,
                false,
            ),
            (
                "model p95".into(),
                series(rows, "model", |r| r.startup_p95),
                CYAN,
                false,
            ),
            (
                "real p50".into(),
                series(rows, "real", |r| r.startup_p50),
                RED,
                false,
            ),
            (
                "real p95".into(),
                series(rows, "real", |r| r.startup_p95),
                MAGENTA,
                false,
            ),
        ],
    )
}

fn plot_rebuffering(args: &SimArgs, rows: &[Row]) -> Result<()> {
    let top = rows
        .iter()
        .filter_map(|r| r.rebuffering)
        .fold(0.01f64, f64::max)
        * 100.0
        * 1.2;
    chart(
        args.out.join("rebuffering.svg"),
        "Rebuffering: stalled time over watching time",
        "stalled (%)",
        rows,
        0.0..top,
        vec![(
            "model".into(),
            series(rows, "model", |r| r.rebuffering.map(|v| 100.0 * v)),
            BLUE,
            false,
        )],
    )
}
