//! `streamspace live`: publish a live stream. ffmpeg (started here) reads the input in real
//! time and cuts segments; each is sealed (with `--encrypt`), added to the repository's store,
//! provided, and announced in a signed manifest on the stream's topic. The stream ends (its
//! viewers' playlists say so) when the input ends, when ffmpeg dies, or on Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use ed25519_dalek::SigningKey;
use streamspace_live::segmenter::read_segment;
use streamspace_live::{Input, Publisher, PublisherConfig, Segmenter, SegmenterConfig, StreamKey};
use streamspace_transport::{Config, Keypair, Node, ed25519, meter::Free};
use zeroize::Zeroizing;

/// Options of `streamspace live`.
#[derive(clap::Args, Debug)]
pub(crate) struct LiveArgs {
    /// The stream's name (ASCII letters, digits, `-`, `_`).
    #[arg(long)]
    stream: String,
    /// Seal every segment with keys derived from a fresh stream key (needs --key-out).
    #[arg(long, requires = "key_out")]
    encrypt: bool,
    /// Where to write the stream key of an encrypted stream (a content key file).
    #[arg(long, requires = "encrypt")]
    key_out: Option<PathBuf>,
    /// Target segment duration, seconds.
    #[arg(long, default_value_t = 2)]
    segment_secs: u32,
    /// Output height, pixels.
    #[arg(long, default_value_t = 360)]
    height: u32,
    /// Video bitrate, kbit/s.
    #[arg(long, default_value_t = 800)]
    video_kbps: u32,
    /// Renditions to publish instead of one (`720p,480p,360p@600k`): each rung is a stream
    /// of its own, `NAME-RUNG`, cut from one decode with aligned keyframes; viewers play the
    /// ladder at `/watch/live/NAME.KEY?ladder=…`. Overrides --height and --video-kbps.
    #[arg(long)]
    ladder: Option<streamspace_live::Ladder>,
    /// The input has no audio (a ladder maps the input's audio to every rendition).
    #[arg(long)]
    no_audio: bool,
    /// Segments each manifest lists.
    #[arg(long, default_value_t = 6)]
    window: usize,
    /// Segments per key epoch.
    #[arg(long, default_value_t = 30)]
    epoch_len: u32,
    /// The publisher's identity (a 32-byte Ed25519 seed, hex); made and written here when the
    /// file does not exist. The stream's id names its public key.
    #[arg(long)]
    identity: Option<PathBuf>,
    /// Listen addresses of the publisher's node.
    #[arg(long, default_value = "/ip4/0.0.0.0/tcp/0")]
    listen: Vec<streamspace_transport::Multiaddr>,
    /// Peers to join through.
    #[arg(long)]
    bootstrap: Vec<streamspace_transport::Multiaddr>,
    /// A media file (played in real time), or a URL ffmpeg opens (`rtmp://…`, `srt://…`).
    input: String,
}

fn identity(path: Option<&PathBuf>) -> Result<SigningKey> {
    let Some(path) = path else {
        return Ok(SigningKey::generate(&mut rand::rngs::OsRng));
    };
    if path.exists() {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?,
        );
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), seed.as_mut())
            .with_context(|| format!("{}: not a 32-byte hex seed", path.display()))?;
        return Ok(SigningKey::from_bytes(&seed));
    }
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    write_private(path, &hex::encode(key.to_bytes()))?;
    Ok(key)
}

fn write_private(path: &PathBuf, text: &str) -> Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Runs the publisher until the input ends, ffmpeg dies or Ctrl-C.
pub(crate) async fn run(cli: &crate::Cli, args: &LiveArgs) -> Result<()> {
    let signing = identity(args.identity.as_ref())?;
    let mut secret = signing.to_bytes();
    let secret = ed25519::SecretKey::try_from_bytes(&mut secret).context("identity")?;
    let keypair: Keypair = ed25519::Keypair::from(secret).into();
    let mut config = Config::new(keypair);
    config.listen = args.listen.clone();
    config.bootstrap = args.bootstrap.clone();
    let store = Arc::new(crate::open_store(cli)?);
    let node = Node::start(config, store, Arc::new(Free)).await?;
    let key = if args.encrypt {
        Some(StreamKey::generate())
    } else {
        None
    };
    let mut pc = PublisherConfig::default();
    pc.window = args.window;
    pc.epoch_len = args.epoch_len;
    // One publisher per rendition: the stream itself, or each rung's `NAME-RUNG`.
    let names: Vec<String> = match &args.ladder {
        None => vec![args.stream.clone()],
        Some(l) => l
            .rungs()
            .iter()
            .map(|r| format!("{}-{}", args.stream, r.name()))
            .collect(),
    };
    let mut publishers = Vec::with_capacity(names.len());
    for name in &names {
        let p = Publisher::new(node.clone(), signing.clone(), name, key.clone(), pc)?;
        if let (Some(k), Some(out)) = (&key, &args.key_out) {
            // A ladder's renditions share the stream key (each derives its own keys from
            // it and its name); the keyring holds it once per rendition.
            let path = if args.ladder.is_some() {
                let mut f = out.clone().into_os_string();
                f.push(format!(".{name}"));
                std::path::PathBuf::from(f)
            } else {
                out.clone()
            };
            write_private(
                &path,
                &k.to_content_key()
                    .to_key_file(Some(&StreamKey::label(p.stream()))),
            )?;
        }
        p.join().await?;
        publishers.push(p);
    }
    let base = streamspace_live::StreamId::new(&args.stream, &signing.verifying_key())?;
    for p in &publishers {
        println!("stream {}", p.stream());
    }
    println!(
        "node {} on {:?}",
        node.peer_id(),
        node.dialable_addrs().await?
    );
    match &args.ladder {
        None => println!("viewers: http://<gateway>/watch/live/{base}"),
        Some(l) => println!("viewers: http://<gateway>/watch/live/{base}?ladder={l}"),
    }

    let dir = tempfile::tempdir()?;
    let mut sc = SegmenterConfig::new(Input::parse(&args.input), dir.path());
    sc.segment_secs = args.segment_secs;
    sc.height = args.height;
    sc.video_kbps = args.video_kbps;
    sc.ladder = args.ladder.clone();
    sc.audio = !args.no_audio;
    let mut segmenter = Segmenter::spawn(&sc)?;
    let mut interrupted = false;
    loop {
        let next = tokio::select! {
            n = segmenter.next() => n,
            _ = crate::node::shutdown_signal(), if !interrupted => {
                interrupted = true;
                segmenter.stop().await;
                continue;
            }
        };
        let Some(cut) = next else { break };
        let cut = cut?;
        let bytes = read_segment(&cut.path)?;
        let _ = std::fs::remove_file(&cut.path);
        let publisher = publishers
            .get_mut(cut.rendition)
            .context("a segment of a rendition not in the ladder")?;
        let p = publisher.push(bytes, cut.duration_ms).await?;
        println!(
            "segment {} {} {} {} ms{}",
            names[cut.rendition],
            p.seq.unwrap_or_default(),
            p.cid.map(|c| c.to_string()).unwrap_or_default(),
            cut.duration_ms,
            if p.announced { "" } else { " (no viewer yet)" }
        );
    }
    for p in &mut publishers {
        p.finish().await?;
    }
    println!("stream ended");
    // Give gossip a moment to carry the end, and peers to take the last segments.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    node.shutdown().await;
    match segmenter.exit() {
        Some(Ok(s)) if s.success() || interrupted => Ok(()),
        Some(Ok(s)) => anyhow::bail!("ffmpeg ended with {s}: {}", segmenter.stderr().trim()),
        Some(Err(e)) => anyhow::bail!("ffmpeg: {e}"),
        None => Ok(()),
    }
}
