//! `streamspace demo`: the end-to-end path of one item through the network's storage layer.
//!
//! A publisher encrypts and adds content to its store, ships it to an edge node as a CAR, the
//! edge node (which holds no key) verifies and stores it under its disk quota, and a viewer
//! holding the key seeks around the item with ranged, decrypting reads served from the edge
//! node. Each step checks its result against the source bytes.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use futures::TryStreamExt;
use indicatif::ProgressBar;
use streamspace_shard::car::{read_car, write_car};
use streamspace_shard::crypto::{ContentKey, PLAIN_CHUNK, cat_decrypted};
use streamspace_shard::export::ByteRange;
use streamspace_shard::import::ImportOptions;
use streamspace_shard::store::{DiskStore, add_encrypted};

/// Options of the demo.
#[derive(clap::Args)]
pub(crate) struct DemoArgs {
    /// Publish this file instead of generated content.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Size of the generated content in MiB.
    #[arg(long, default_value_t = 64)]
    size_mib: u64,
    /// Number of seeks the viewer makes (with `--storage`).
    #[arg(long, default_value_t = 20)]
    seeks: u64,
    /// Run only the storage path (publisher, CAR, edge store, decrypting seeks), without the
    /// network, the market or the ledger.
    #[arg(long)]
    pub(crate) storage: bool,
}

/// Deterministic pseudo-random bytes standing in for a video.
struct Generated {
    left: u64,
    x: u64,
}

impl std::io::Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for b in &mut buf[..n] {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            *b = (self.x >> 32) as u8;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

pub(crate) fn source(args: &DemoArgs) -> Result<(Box<dyn std::io::Read + Send>, u64)> {
    Ok(match &args.file {
        Some(p) => {
            let f = std::fs::File::open(p).with_context(|| format!("{}", p.display()))?;
            let len = f.metadata()?.len();
            (Box::new(std::io::BufReader::new(f)), len)
        }
        None => {
            let len = args.size_mib << 20;
            (
                Box::new(Generated {
                    left: len,
                    x: 0x2545_F491_4F6C_DD1D,
                }),
                len,
            )
        }
    })
}

fn read_source_range(args: &DemoArgs, offset: u64, len: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let (r, _) = source(args)?;
    let mut r = std::io::BufReader::new(r);
    std::io::copy(&mut (&mut r).take(offset), &mut std::io::sink())?;
    let mut out = Vec::with_capacity(len as usize);
    r.take(len).read_to_end(&mut out)?;
    Ok(out)
}

pub(crate) async fn run(args: &DemoArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (reader, len) = source(args)?;
    println!(
        "StreamSpace demo: one {:.1} MiB item, publisher -> edge node -> viewer",
        len as f64 / 1048576.0
    );

    // 1. Publisher: encrypt, shard, address.
    let publisher = DiskStore::open(dir.path().join("publisher/blocks.redb"), None)?;
    let key = ContentKey::generate();
    let t = Instant::now();
    let bar = ProgressBar::new(len).with_message("publishing");
    let root = add_encrypted(
        Some(&publisher),
        bar.wrap_read(reader),
        key.clone(),
        ImportOptions::default().with_cid_version(1)?,
    )
    .await?;
    bar.finish_and_clear();
    publisher.pin(&root.cid).await?;
    let publish_time = t.elapsed();
    println!(
        "[publisher] encrypted and added in {:.2?}: root {} ({} shards of <= 256 KiB, {} blocks, {} bytes stored)",
        publish_time,
        root.cid,
        root.size.div_ceil(262_144),
        publisher.len(),
        publisher.used_bytes()
    );

    // 2. Transfer to an edge node as a CAR; the edge verifies every block, holds no key.
    let car_path = dir.path().join("item.car");
    let t = Instant::now();
    let summary = write_car(
        &publisher,
        root.cid,
        tokio::io::BufWriter::new(tokio::fs::File::create(&car_path).await?),
    )
    .await?;
    let quota = publisher.used_bytes() + (8 << 20);
    let edge = DiskStore::open(dir.path().join("edge/blocks.redb"), Some(quota))?;
    let imported = read_car(
        tokio::io::BufReader::new(tokio::fs::File::open(&car_path).await?),
        &edge,
    )
    .await?;
    ensure!(
        imported.blocks == summary.blocks,
        "edge stored {} of {} blocks",
        imported.blocks,
        summary.blocks
    );
    edge.pin(&root.cid).await?;
    println!(
        "[edge]      verified and stored {} blocks ({} byte CAR) in {:.2?}, quota {} bytes, used {}",
        imported.blocks,
        summary.bytes,
        t.elapsed(),
        quota,
        edge.used_bytes()
    );

    // 3. Viewer: start-up read, then seeks, each decrypted and checked against the source.
    let t = Instant::now();
    let head = 2 * PLAIN_CHUNK as u64;
    let first: Vec<Bytes> = cat_decrypted(&edge, root.cid, &key, ByteRange::new(0, Some(head)))
        .try_collect()
        .await?;
    let startup = t.elapsed();
    ensure!(
        first.concat() == read_source_range(args, 0, head.min(len))?,
        "start-up bytes differ from the source"
    );
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut seek_bytes = 0;
    let t = Instant::now();
    for _ in 0..args.seeks {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let offset = if len == 0 { 0 } else { x % len };
        let want = 1 << 20;
        let got: Vec<Bytes> =
            cat_decrypted(&edge, root.cid, &key, ByteRange::new(offset, Some(want)))
                .try_collect()
                .await?;
        let got = got.concat();
        ensure!(
            got == read_source_range(args, offset, want)?,
            "bytes at offset {offset} differ from the source"
        );
        seek_bytes += got.len();
    }
    println!(
        "[viewer]    first {} KiB decrypted in {:.2?}; {} random seeks, {} bytes, all identical to the source, in {:.2?}",
        head / 1024,
        startup,
        args.seeks,
        seek_bytes,
        t.elapsed()
    );

    // 4. A wrong key releases nothing.
    let wrong = ContentKey::generate();
    let denied: Result<Vec<Bytes>, _> =
        cat_decrypted(&edge, root.cid, &wrong, ByteRange::new(0, Some(16)))
            .try_collect()
            .await;
    ensure!(denied.is_err(), "a wrong key decrypted the content");
    println!(
        "[viewer]    a viewer without the key gets: {}",
        denied.err().map(|e| e.to_string()).unwrap_or_default()
    );
    println!(
        "demo complete: publish {:.1} MiB/s",
        len as f64 / 1048576.0 / publish_time.as_secs_f64().max(1e-9)
    );
    Ok(())
}
