//! `streamspace`: the StreamSpace command-line program.
//!
//! Content commands follow kubo's words: `add`, `cat`, `car export|import`, `block stat|get`.

mod demo;
mod fleet;
mod gateway;
mod get;
mod live;
mod livebench;
mod network;
mod node;
mod online;
mod remote;
mod sim;
mod testnet;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::pin::pin;

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, Parser, Subcommand};
use futures::TryStreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use streamspace_shard::Cid;
use streamspace_shard::car::{read_car, write_car};
use streamspace_shard::crypto::{ContentKey, SHARD_SIZE, cat_decrypted};
use streamspace_shard::dag::{fetch, resolve};
use streamspace_shard::export::{ByteRange, cat};
use streamspace_shard::import::{Chunker, ImportOptions, Layout, Profile};
use streamspace_shard::store::{DiskStore, add_encrypted, add_encrypted_dir, add_path, add_reader};
use tokio::io::AsyncWriteExt;

#[derive(Parser)]
#[command(
    name = "streamspace",
    version,
    about = "StreamSpace: content addressing and delivery"
)]
struct Cli {
    /// Repository directory holding the block store.
    #[arg(long, global = true, env = "STREAMSPACE_REPO")]
    repo: Option<PathBuf>,
    /// Bytes of disk the block store may use (unpinned blocks are evicted beyond it).
    #[arg(long, global = true, env = "STREAMSPACE_QUOTA")]
    quota: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Add a file or directory, printing its CID (as `ipfs add`).
    Add(AddArgs),
    /// Print the content of a file, or of a byte range of it (as `ipfs cat`).
    Cat(CatArgs),
    /// Write a file or directory to disk, or as a tar archive (as `ipfs get`).
    Get(get::GetArgs),
    /// CAR archives.
    #[command(subcommand)]
    Car(CarCommand),
    /// Raw blocks.
    #[command(subcommand)]
    Block(BlockCommand),
    /// Pins (kept from eviction).
    #[command(subcommand)]
    Pin(PinCommand),
    /// Run the end-to-end demo on the embedded defaults.
    Demo(demo::DemoArgs),
    /// Roll a signed software update out to a fleet of IoT devices on loopback.
    Fleet(fleet::FleetArgs),
    /// Serve the repository and the network over HTTP (IPFS trustless gateway).
    Gateway(gateway::GatewayArgs),
    /// A long-running node: serves, pays and is paid, settles each period.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Write the configuration of a closed, paid test network of nodes on this machine.
    Testnet(testnet::TestnetArgs),
    /// Publish a live stream: ffmpeg cuts segments, each announced in a signed manifest.
    Live(live::LiveArgs),
    /// Measure a live stream through a swarm on loopback: segment-to-playable delay, peer
    /// share, rebuffering.
    LiveBench(livebench::LiveBenchArgs),
    /// Simulate many viewers of one item: real nodes on loopback and a discrete-event model.
    Sim(sim::SimArgs),
}

#[derive(Args)]
struct AddArgs {
    /// CID version: 0 (default) or 1; 1 implies --raw-leaves.
    #[arg(long)]
    cid_version: Option<u64>,
    /// Store leaves as raw blocks.
    #[arg(long)]
    raw_leaves: Option<Option<bool>>,
    /// Chunking algorithm, as kubo: size-N, rabin, rabin-AVG, rabin-MIN-AVG-MAX or buzhash.
    #[arg(short = 's', long)]
    chunker: Option<String>,
    /// Use the trickle DAG layout.
    #[arg(short = 't', long)]
    trickle: bool,
    /// Import profile: unixfs-v0-2015 or unixfs-v1-2025.
    #[arg(long)]
    profile: Option<Profile>,
    /// Only compute the CID; store nothing.
    #[arg(short = 'n', long)]
    only_hash: bool,
    /// Print only the final root CID.
    #[arg(short = 'Q', long)]
    quieter: bool,
    /// Print only CIDs.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Add directories recursively.
    #[arg(short = 'r', long)]
    recursive: bool,
    /// Include files whose names start with a dot.
    #[arg(short = 'H', long)]
    hidden: bool,
    /// Pin what is added so that it is never evicted.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pin: bool,
    /// Encrypt with a fresh content key (needs --key-out).
    #[arg(long, requires = "key_out")]
    encrypt: bool,
    /// Where to write the content key of an encrypted add.
    #[arg(long, requires = "encrypt")]
    key_out: Option<PathBuf>,
    /// Cut a video file into HLS (a playlist, `index.m3u8`, and MPEG-TS segments) with ffmpeg
    /// and add the directory (each file encrypted with --encrypt, one key for all).
    #[arg(long)]
    hls: bool,
    /// Target segment length for --hls, seconds.
    #[arg(long, default_value_t = 4, requires = "hls")]
    hls_time: u32,
    /// With --hls, re-encode to H.264 and AAC instead of copying the streams.
    #[arg(long, requires = "hls")]
    transcode: bool,
    /// With --hls, cut renditions for adaptive bitrate, keyframes aligned, under a master
    /// playlist (`index.m3u8`; each rendition in its own directory): heights, optionally with
    /// a bitrate, as `1080p,720p,480p@1000k`. Rungs taller than the source are dropped.
    #[arg(long, requires = "hls", conflicts_with = "transcode")]
    ladder: Option<streamspace_live::Ladder>,
    /// File or directory to add.
    path: PathBuf,
}

#[derive(Args)]
struct CatArgs {
    /// Byte offset to start at.
    #[arg(short = 'o', long, default_value_t = 0)]
    offset: u64,
    /// Maximum number of bytes to print.
    #[arg(short = 'l', long)]
    length: Option<u64>,
    /// Content key file of an encrypted item.
    #[arg(long)]
    key: Option<PathBuf>,
    /// CID, optionally followed by a path: CID/dir/file (or /ipfs/CID/...).
    path: String,
    #[command(flatten)]
    online: online::OnlineArgs,
}

#[derive(Subcommand)]
enum CarCommand {
    /// Write the DAG below a CID as a CARv1.
    Export {
        /// Root CID (or CID/path).
        cid: String,
        /// Output file (standard output by default).
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        online: online::OnlineArgs,
    },
    /// Read a CARv1 or CARv2 into the store and pin its roots.
    Import {
        /// The CAR file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum PinCommand {
    /// Pin a DAG: none of its blocks is evicted (as `ipfs pin add`).
    Add {
        /// CID, optionally followed by a path.
        cid: String,
    },
    /// Unpin a root.
    Rm {
        /// The root's CID.
        cid: String,
    },
    /// List the pinned roots.
    Ls,
}

#[derive(Subcommand)]
enum BlockCommand {
    /// Print a block's CID and size.
    Stat {
        /// The block's CID.
        cid: String,
        #[command(flatten)]
        online: online::OnlineArgs,
    },
    /// Print a block's raw bytes.
    Get {
        /// The block's CID.
        cid: String,
        #[command(flatten)]
        online: online::OnlineArgs,
    },
}

fn repo_dir(cli: &Cli) -> Result<PathBuf> {
    match &cli.repo {
        Some(r) => Ok(r.clone()),
        None => Ok(std::env::var_os("HOME")
            .map(PathBuf::from)
            .context("no --repo given and HOME is not set")?
            .join(".streamspace")),
    }
}

/// The API of a node running on the repository, if one is.
async fn running_node(cli: &Cli) -> Option<std::net::SocketAddr> {
    remote::running_node(&repo_dir(cli).ok()?).await
}

fn open_store(cli: &Cli) -> Result<DiskStore> {
    let repo = repo_dir(cli)?;
    let file = repo.join("blocks.redb");
    DiskStore::open(&file, cli.quota)
        .with_context(|| format!("opening block store {}", file.display()))
}

/// Splits `CID[/path]` (or `/ipfs/CID[/path]`).
fn parse_path(s: &str) -> Result<(Cid, String)> {
    let s = s.strip_prefix("/ipfs/").unwrap_or(s);
    let (cid, rest) = s.split_once('/').unwrap_or((s, ""));
    let cid = Cid::try_from(cid).with_context(|| format!("invalid CID {cid:?}"))?;
    Ok((cid, rest.to_owned()))
}

fn progress(total: Option<u64>, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(t) => ProgressBar::new(t).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_message(what.to_owned());
    bar
}

async fn add(cli: &Cli, a: &AddArgs) -> Result<()> {
    let mut opts = match a.profile {
        Some(p) => ImportOptions::profile(p),
        None => ImportOptions::default(),
    };
    if let Some(v) = a.cid_version {
        opts = opts.with_cid_version(v)?;
    }
    if let Some(r) = a.raw_leaves {
        opts.raw_leaves = r.unwrap_or(true);
    }
    if let Some(c) = &a.chunker {
        opts = opts.with_chunker(c)?;
        ensure!(
            !a.encrypt || opts.chunker == Chunker::Size(SHARD_SIZE),
            "--encrypt cuts items into shards of {SHARD_SIZE} bytes: it takes no other chunker \
             (--chunker {c})"
        );
    }
    if a.trickle {
        opts.layout = Layout::Trickle;
    }
    opts.validate()?;
    let meta = std::fs::metadata(&a.path).with_context(|| format!("{}", a.path.display()))?;
    if meta.is_dir() && !a.recursive {
        bail!(
            "{} is a directory, use -r to add directories",
            a.path.display()
        );
    }
    if !a.only_hash
        && let Some(api) = running_node(cli).await
    {
        // A node holds the repository: add through its API, as `ipfs add` does online.
        ensure!(
            !a.encrypt && !a.hls && a.profile.is_none(),
            "a node is running on this repository: --encrypt, --hls and --profile need the \
             repository itself (stop the node, or add through its API's options)"
        );
        let mut q = vec![
            ("cid-version", a.cid_version.unwrap_or(0).to_string()),
            ("pin", a.pin.to_string()),
            ("trickle", a.trickle.to_string()),
        ];
        if let Some(r) = a.raw_leaves {
            q.push(("raw-leaves", r.unwrap_or(true).to_string()));
        }
        if let Some(c) = &a.chunker {
            q.push(("chunker", c.clone()));
        }
        return remote::add(api, &a.path, &q, a.hidden, a.quiet, a.quieter).await;
    }
    let store = if a.only_hash {
        None
    } else {
        Some(open_store(cli)?)
    };
    if a.hls {
        return add_hls(a, store.as_ref(), opts).await;
    }
    let quiet = a.quiet;
    let quieter = a.quieter;
    if a.encrypt && meta.is_dir() {
        bail!("--encrypt adds one file at a time");
    }
    let root = if meta.is_file() {
        let bar = progress(
            Some(meta.len()),
            if a.encrypt { "encrypting" } else { "adding" },
        );
        let reader = bar.wrap_read(std::fs::File::open(&a.path)?);
        let root = if a.encrypt {
            let key = ContentKey::generate();
            let root = add_encrypted(store.as_ref(), reader, key.clone(), opts).await?;
            if let Some(out) = &a.key_out {
                write_secret(out, key.to_key_file(Some(&root.cid)).as_bytes())?;
            }
            root
        } else {
            add_reader(store.as_ref(), reader, opts).await?
        };
        bar.finish_and_clear();
        let name = a
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        print_added(&root.cid, &name, quiet, quieter, true);
        root
    } else {
        let bar = progress(None, "adding");
        let b2 = bar.clone();
        let root = add_path(
            store.as_ref(),
            a.path.clone(),
            opts,
            a.hidden,
            move |p, imported| {
                b2.inc(imported.size);
                b2.suspend(|| {
                    print_added(&imported.cid, &p.to_string_lossy(), quiet, quieter, false)
                });
            },
        )
        .await?;
        bar.finish_and_clear();
        if quieter {
            println!("{}", root.cid);
        }
        root
    };
    if let (Some(store), true) = (&store, a.pin) {
        store.pin(&root.cid).await?;
    }
    Ok(())
}

/// `add --hls`: ffmpeg cuts the video into HLS in a temporary directory, which is added (and
/// encrypted, with `--encrypt`) as one directory.
async fn add_hls(a: &AddArgs, store: Option<&DiskStore>, opts: ImportOptions) -> Result<()> {
    ensure!(a.path.is_file(), "--hls takes a video file");
    ensure!(
        (1..=60).contains(&a.hls_time),
        "--hls-time: from 1 to 60 seconds"
    );
    let dir = tempfile::tempdir()?;
    if let Some(ladder) = &a.ladder {
        let mut config =
            streamspace_live::ladder::VodConfig::new(&a.path, dir.path(), ladder.clone());
        config.segment_secs = a.hls_time;
        let bar = progress(None, &format!("cutting renditions {ladder} with ffmpeg"));
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        let cut = streamspace_live::ladder::cut_vod(&config)
            .await
            .with_context(|| format!("cutting {} into renditions", a.path.display()));
        bar.finish_and_clear();
        let cut = cut?;
        if !(cut.dropped.is_empty() || a.quiet || a.quieter) {
            let names: Vec<String> = cut.dropped.iter().map(ToString::to_string).collect();
            eprintln!(
                "the source has {} lines: not cut (no upscaling): {}",
                cut.source_height,
                names.join(",")
            );
        }
        let names: Vec<String> = cut
            .variants
            .iter()
            .map(|v| {
                format!(
                    "{} {}x{} {} kbit/s",
                    v.rung.name(),
                    v.resolution.0,
                    v.resolution.1,
                    v.bandwidth / 1000
                )
            })
            .collect();
        let segments = cut.variants.first().map_or(0, |v| v.durations_ms.len());
        return add_hls_dir(
            a,
            store,
            opts,
            dir.path(),
            &format!(
                "HLS: master index.m3u8, {} renditions of {segments} segments: {}",
                cut.variants.len(),
                names.join(", ")
            ),
        )
        .await;
    }
    let mut ffmpeg = tokio::process::Command::new("ffmpeg");
    ffmpeg.args(["-nostdin", "-v", "error", "-i"]).arg(&a.path);
    if a.transcode {
        ffmpeg.args(["-c:v", "libx264", "-c:a", "aac"]);
    } else {
        ffmpeg.args(["-c", "copy"]);
    }
    ffmpeg
        .args(["-f", "hls", "-hls_playlist_type", "vod", "-hls_time"])
        .arg(a.hls_time.to_string())
        .arg("-hls_segment_filename")
        .arg(dir.path().join("seg%05d.ts"))
        .arg(dir.path().join("index.m3u8"));
    let bar = progress(None, "cutting into HLS with ffmpeg");
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let out = ffmpeg
        .output()
        .await
        .context("running ffmpeg (is it installed?)")?;
    bar.finish_and_clear();
    ensure!(
        out.status.success(),
        "ffmpeg could not cut {} into HLS{}:\n{}",
        a.path.display(),
        if a.transcode {
            ""
        } else {
            " (try --transcode)"
        },
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let segments = std::fs::read_dir(dir.path())?.count().saturating_sub(1);
    add_hls_dir(
        a,
        store,
        opts,
        dir.path(),
        &format!("HLS: index.m3u8 and {segments} segments"),
    )
    .await
}

/// Adds a directory cut by ffmpeg (encrypted with `--encrypt`) and says what it holds.
async fn add_hls_dir(
    a: &AddArgs,
    store: Option<&DiskStore>,
    opts: ImportOptions,
    dir: &std::path::Path,
    what: &str,
) -> Result<()> {
    let root = if a.encrypt {
        let key = ContentKey::generate();
        let root = add_encrypted_dir(store, dir.to_owned(), key.clone(), opts).await?;
        if let Some(out) = &a.key_out {
            write_secret(out, key.to_key_file(Some(&root.cid)).as_bytes())?;
        }
        root
    } else {
        add_path(store, dir.to_owned(), opts, false, |_, _| {}).await?
    };
    if a.quieter || a.quiet {
        println!("{}", root.cid);
    } else {
        println!(
            "added {} {} ({what}{})",
            root.cid,
            a.path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            if a.encrypt { ", encrypted" } else { "" }
        );
    }
    if let (Some(store), true) = (store, a.pin) {
        store.pin(&root.cid).await?;
    }
    Ok(())
}

fn print_added(cid: &Cid, name: &str, quiet: bool, quieter: bool, is_root: bool) {
    if quieter {
        if is_root {
            println!("{cid}");
        }
    } else if quiet {
        println!("{cid}");
    } else {
        println!("added {cid} {name}");
    }
}

fn write_secret(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    streamspace_node::config::write_secret(path, bytes)
        .with_context(|| format!("writing key file {}", path.display()))
}

async fn cat_cmd(cli: &Cli, c: &CatArgs) -> Result<()> {
    if let Some(online) = online::Online::reach(cli, &c.online).await? {
        if c.key.is_some() {
            // The node is stopped before the error is returned.
            return online
                .run(async {
                    Err(anyhow::anyhow!(
                        "--key reads the local store: with a node on this repository, read the \
                         plaintext through its gateway's /play"
                    ))
                })
                .await;
        }
        let api = online.api;
        return online
            .run(remote::cat(api, &c.path, c.offset, c.length))
            .await;
    }
    let store = open_store(cli)?;
    let (root, path) = parse_path(&c.path)?;
    let cid = resolve(&store, &root, &path).await?;
    let range = ByteRange::new(c.offset, c.length);
    let mut out = tokio::io::stdout();
    let bar = progress(None, "reading");
    let result: Result<()> = async {
        if let Some(keyfile) = &c.key {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(keyfile)
                    .with_context(|| format!("reading {}", keyfile.display()))?,
            );
            let (key, _) = ContentKey::from_key_file(&text)?;
            let mut s = pin!(cat_decrypted(&store, cid, &key, range));
            while let Some(b) = s.try_next().await? {
                bar.inc(b.len() as u64);
                out.write_all(&b).await?;
            }
        } else {
            let mut s = pin!(cat(&store, cid, range));
            while let Some(b) = s.try_next().await? {
                bar.inc(b.len() as u64);
                out.write_all(&b).await?;
            }
        }
        out.flush().await?;
        Ok(())
    }
    .await;
    bar.finish_and_clear();
    match result {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

async fn car(cli: &Cli, c: &CarCommand) -> Result<()> {
    if let CarCommand::Export {
        cid,
        output,
        online,
    } = c
        && let Some(online) = online::Online::reach(cli, online).await?
    {
        // Through the node's `dag/export`, which fetches what the repository lacks.
        let api = online.api;
        return online
            .run(remote::dag_export(api, cid, output.as_deref()))
            .await;
    }
    let store = open_store(cli)?;
    match c {
        CarCommand::Export { cid, output, .. } => {
            let (root, path) = parse_path(cid)?;
            let root = resolve(&store, &root, &path).await?;
            let summary = match output {
                Some(p) => {
                    let f = tokio::fs::File::create(p)
                        .await
                        .with_context(|| format!("{}", p.display()))?;
                    let mut w = tokio::io::BufWriter::new(f);
                    let s = write_car(&store, root, &mut w).await?;
                    w.into_inner().sync_all().await?;
                    s
                }
                None => {
                    write_car(&store, root, tokio::io::BufWriter::new(tokio::io::stdout())).await?
                }
            };
            eprintln!(
                "exported {} blocks, {} bytes",
                summary.blocks, summary.bytes
            );
        }
        CarCommand::Import { file } => {
            let f = tokio::fs::File::open(file)
                .await
                .with_context(|| format!("{}", file.display()))?;
            let summary = read_car(tokio::io::BufReader::new(f), &store).await?;
            for r in &summary.roots {
                match store.pin(r).await {
                    Ok(_) => println!("pinned root {r} success"),
                    Err(e) => println!("pinned root {r} FAILED: {e}"),
                }
            }
            eprintln!("imported {} blocks", summary.blocks);
        }
    }
    Ok(())
}

async fn pin_cmd(cli: &Cli, p: &PinCommand) -> Result<()> {
    if let Some(api) = running_node(cli).await {
        return match p {
            PinCommand::Add { cid } => remote::pin(api, "add", Some(cid)).await,
            PinCommand::Rm { cid } => remote::pin(api, "rm", Some(cid)).await,
            PinCommand::Ls => remote::pin(api, "ls", None).await,
        };
    }
    let store = open_store(cli)?;
    match p {
        PinCommand::Add { cid } => {
            let (root, path) = parse_path(cid)?;
            let root = resolve(&store, &root, &path).await?;
            if !store.is_pinned(&root).await? {
                store.pin(&root).await?;
            }
            println!("pinned {root} recursively");
        }
        PinCommand::Rm { cid } => {
            let (root, _) = parse_path(cid)?;
            ensure!(store.is_pinned(&root).await?, "{root} is not pinned");
            while store.is_pinned(&root).await? {
                store.unpin(&root).await?;
            }
            println!("unpinned {root}");
        }
        PinCommand::Ls => {
            for r in store.pinned_roots().await? {
                println!("{r} recursive");
            }
        }
    }
    Ok(())
}

async fn block(cli: &Cli, b: &BlockCommand) -> Result<()> {
    let (BlockCommand::Stat { online, .. } | BlockCommand::Get { online, .. }) = b;
    if let Some(online) = online::Online::reach(cli, online).await? {
        let api = online.api;
        return match b {
            BlockCommand::Stat { cid, .. } => online.run(remote::block_stat(api, cid)).await,
            BlockCommand::Get { cid, .. } => online.run(remote::block_get(api, cid)).await,
        };
    }
    let store = open_store(cli)?;
    match b {
        BlockCommand::Stat { cid, .. } => {
            let cid = Cid::try_from(cid.as_str()).context("invalid CID")?;
            let data = fetch(&store, &cid).await?;
            println!("Key: {cid}\nSize: {}", data.len());
        }
        BlockCommand::Get { cid, .. } => {
            let cid = Cid::try_from(cid.as_str()).context("invalid CID")?;
            let data = fetch(&store, &cid).await?;
            let mut out = tokio::io::stdout();
            out.write_all(&data).await?;
            out.flush().await?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Logs go to standard error, filtered by RUST_LOG (default: this program's info lines).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,streamspace=info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    let result = match &cli.command {
        Command::Add(a) => add(&cli, a).await,
        Command::Cat(c) => cat_cmd(&cli, c).await,
        Command::Get(g) => get::get_cmd(&cli, g).await,
        Command::Car(c) => car(&cli, c).await,
        Command::Block(b) => block(&cli, b).await,
        Command::Pin(p) => pin_cmd(&cli, p).await,
        Command::Demo(d) if d.storage => demo::run(d).await,
        Command::Demo(d) => network::run(d).await,
        Command::Fleet(f) => fleet::run(f).await,
        Command::Sim(s) => sim::run(s).await,
        Command::Live(l) => live::run(&cli, l).await,
        Command::LiveBench(b) => livebench::run(b).await,
        Command::Node(n) => node::run(n).await,
        Command::Testnet(t) => testnet::run(t).await,
        Command::Gateway(g) => match open_store(&cli) {
            Ok(store) => gateway::run(store, g).await,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
