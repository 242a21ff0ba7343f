//! `streamspace fleet`: an IoT vendor and its fleet on loopback.
//!
//! The vendor creates a TUF repository (two-of-three root and targets keys), publishes an image
//! into the network and announces a release on the product's topic at a first rollout
//! percentage; each device runs the update agent (its own node and disk store, A/B slot files,
//! TUF trust anchored in the first `root.json`): it checks the metadata, decides by the hash of
//! its id whether the rollout includes it, fetches the image from whoever has it (verifying
//! every block), verifies the whole image, installs it into its inactive slot, reports, and
//! serves the image on. Then the vendor raises the rollout to everyone. The report says how
//! much of the image the vendor uploaded itself.
//!
//! Then a second release: the image with one package changed. The vendor cuts images with a
//! content-defined chunker (`--chunker`, buzhash by default), so each device holds most of
//! the new image's blocks already and fetches only the rest; the report gives those bytes
//! against the image size, beside what fixed 256 KiB chunks would have needed. One device's
//! health check fails on the new image: it falls back to the previous slot at its trial boot
//! and reports the fallback.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};
use streamspace_shard::Cid;
use streamspace_shard::block::Block;
use streamspace_shard::import::{ImportOptions, import_file};
use streamspace_shard::store::{DiskStore, MemoryStore, add_reader};
use streamspace_transport::{Config, Keypair, Node, NodeEvent, meter::Free};
use streamspace_update::agent::{
    Agent, Announcement, DeviceConfig, HealthCheck, Slots, topic, update_fetch_options,
};
use streamspace_update::release::{ROLLOUT_ALL, Release};
use streamspace_update::seed::SeedMeter;
use streamspace_update::tuf::{Bundle, Lifetimes, Trust, Vendor, VendorKeys};

/// Options of `streamspace fleet`.
#[derive(Args, Debug)]
pub(crate) struct FleetArgs {
    /// Devices in the fleet.
    #[arg(long, default_value_t = 50)]
    devices: usize,
    /// Size of the generated image, in MiB.
    #[arg(long, default_value_t = 8)]
    image_mib: usize,
    /// An image file to release instead of a generated root filesystem.
    #[arg(long)]
    image: Option<PathBuf>,
    /// The next version of `--image` (default: the image with 4 KiB inserted in its middle).
    #[arg(long, requires = "image")]
    next_image: Option<PathBuf>,
    /// How the vendor cuts images into blocks, as kubo's `--chunker`.
    #[arg(long, default_value = "buzhash")]
    chunker: String,
    /// The first rollout, in percent.
    #[arg(long, default_value_t = 10)]
    first_rollout: u16,
    /// Give up on a stage after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

const PRODUCT: &str = "thermostat-fw";

fn config() -> Config {
    let mut c = Config::new(Keypair::generate_ed25519()).loopback();
    c.request_timeout = Duration::from_secs(5);
    c
}

/// Publishes `bundle` on the topic until a peer takes it (the mesh forms over the first
/// heartbeats).
async fn announce(node: &Node<MemoryStore>, topic: &str, bundle: &Bundle) -> Result<()> {
    let data = bytes::Bytes::from(Announcement::Bundle(bundle.clone()).encode());
    for _ in 0..100 {
        if node.publish(topic, data.clone()).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no device joined the topic {topic}")
}

/// The device whose health check fails on the second release.
fn failing_device(devices: usize) -> Option<String> {
    (devices >= 2).then(|| format!("device-{:03}", devices - 1))
}

/// Runs the fleet.
pub(crate) async fn run(args: &FleetArgs) -> Result<()> {
    ensure!(args.devices > 0, "a fleet needs at least one device");
    ensure!(args.first_rollout <= 100, "rollout is a percentage");
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let opts = ImportOptions::default()
        .with_chunker(&args.chunker)
        .context("--chunker")?;
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let (image, next) = match (&args.image, &args.next_image) {
        (Some(p), Some(q)) => (read(p)?, read(q)?),
        (Some(p), None) => {
            let v = read(p)?;
            let mut next = v.clone();
            next.splice(
                v.len() / 2..v.len() / 2,
                (0..4096u32).map(|i| (i * 7) as u8),
            );
            (v, next)
        }
        (None, _) => (
            rootfs(args.image_mib << 20, false)?,
            rootfs(args.image_mib << 20, true)?,
        ),
    };
    println!(
        "[vendor]    image 1.1.0: {} bytes, sha256 {}; 1.2.0: {} bytes, one package changed",
        image.len(),
        hex(&Sha256::digest(&image)),
        next.len()
    );

    // The vendor: its TUF repository and the node that seeds the image.
    let keys = VendorKeys::generate();
    let mut vendor = Vendor::create(
        dir.path().join("vendor"),
        &keys.roles(),
        keys.ring(),
        Lifetimes::default(),
    )
    .await?;
    // The vendor sends each block once per five seconds at most; devices share the rest.
    let origin = Node::start(
        config(),
        Arc::new(MemoryStore::new()),
        Arc::new(SeedMeter::new(1, Duration::from_secs(5))),
    )
    .await?;
    let mut roots = Vec::new();
    for img in [&image, &next] {
        let root = add_reader(
            Some(origin.store().as_ref()),
            std::io::Cursor::new(img.clone()),
            opts.clone(),
        )
        .await?
        .cid;
        origin.provide(root).await?;
        roots.push(root);
    }
    let topic = topic(PRODUCT);
    origin.subscribe(&topic).await?;
    let mut inbox = origin.events();
    println!(
        "[vendor]    image roots {} and {} (chunker {}); TUF repository with 2-of-3 root and targets keys",
        roots[0], roots[1], opts.chunker
    );

    // The fleet.
    let bar = ProgressBar::new(args.devices as u64).with_message("devices starting");
    let bootstrap = origin.dialable_addrs().await?;
    let trusted_root = vendor.trusted_root()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let failing = failing_device(args.devices);
    let mut agents = Vec::new();
    let mut ids = Vec::new();
    for i in 0..args.devices {
        let id = format!("device-{i:03}");
        let base = dir.path().join(&id);
        let store = DiskStore::open(
            base.join("blocks"),
            Some(4 * (image.len() + next.len()) as u64 + (16 << 20)),
        )?;
        let mut c = config();
        c.bootstrap = bootstrap.clone();
        let node = Node::start(c, Arc::new(store), Arc::new(Free)).await?;
        let slots = Slots::new(base.join("slots"));
        slots.provision("1.0.0", b"factory image 1.0.0")?;
        let health = if failing.as_ref() == Some(&id) {
            HealthCheck::new(|running| match running.version.as_str() {
                "1.2.0" => Err("the application did not come up on 1.2.0".into()),
                _ => Ok(()),
            })
        } else {
            HealthCheck::default()
        };
        let agent = Agent::new(
            node,
            Trust::new(trusted_root.clone(), base.join("tuf")),
            slots,
            DeviceConfig {
                product: PRODUCT.into(),
                channel: "stable".into(),
                device_id: id.clone(),
                group: None,
                fetch: update_fetch_options(),
                health,
            },
        );
        let agent = Arc::new(agent);
        let mut stop = stop_rx.clone();
        let a = agent.clone();
        let task = tokio::spawn(async move {
            a.run(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
        });
        agents.push((agent, task));
        ids.push(id);
        bar.inc(1);
    }
    bar.finish_and_clear();
    // Now that the network has formed, the provider records go to the nodes closest to them.
    for root in &roots {
        origin.provide(*root).await?;
    }
    println!("[fleet]     {} devices running factory 1.0.0", args.devices);

    let release = |version: &str, img: &[u8], root: Cid, min: &str| Release {
        product: PRODUCT.into(),
        version: version.into(),
        channel: "stable".into(),
        image: root.to_bytes(),
        size: img.len() as u64,
        sha256: Sha256::digest(img).into(),
        min_version: Some(min.into()),
        keys: vec![],
    };
    let mut rollout = Rollout {
        origin: &origin,
        inbox: &mut inbox,
        topic: &topic,
        ids: &ids,
        timeout: Duration::from_secs(args.timeout),
        image_len: image.len(),
    };

    // Release 1.1.0: a first stage, then everyone.
    let first = release("1.1.0", &image, roots[0], "1.0.0");
    let bundle = vendor
        .release(first.clone(), args.first_rollout * 100)
        .await?;
    let mut outcome = rollout
        .stage(&first, args.first_rollout * 100, &bundle, None)
        .await?;
    let bundle = vendor.set_rollout(PRODUCT, "1.1.0", ROLLOUT_ALL).await?;
    outcome = rollout
        .stage(&first, ROLLOUT_ALL, &bundle, Some(outcome))
        .await?;
    ensure!(
        outcome.failed.is_empty(),
        "failed installs: {:?}",
        outcome.failed
    );
    ensure!(
        outcome.fell_back.is_empty(),
        "fallbacks on 1.1.0: {:?}",
        outcome.fell_back
    );
    let uploaded_first = origin.stats().bytes_served;

    // Release 1.2.0, to everyone at once: the devices hold most of its blocks already.
    let second = release("1.2.0", &next, roots[1], "1.1.0");
    let bundle = vendor.release(second.clone(), ROLLOUT_ALL).await?;
    let outcome = rollout.stage(&second, ROLLOUT_ALL, &bundle, None).await?;
    ensure!(
        outcome.failed.is_empty(),
        "failed installs: {:?}",
        outcome.failed
    );
    let fell_back: Vec<&String> = outcome.fell_back.keys().collect();
    ensure!(
        fell_back == failing.iter().collect::<Vec<_>>(),
        "fallbacks {fell_back:?}, expected only {failing:?}"
    );
    for (device, why) in &outcome.fell_back {
        println!("[fleet]     {device} fell back at its trial boot and reported it: {why}");
    }

    // Stop the agents: each returns the reports of its installations.
    let _ = stop_tx.send(true);
    let mut fetched_second = Vec::new();
    let mut served = 0u64;
    for ((agent, task), id) in agents.iter_mut().zip(&ids) {
        let reports = task.await.context("agent task")??;
        let boot = agent.slots().boot()?;
        let (version, img) = if failing.as_ref() == Some(id) {
            ("1.1.0", &image)
        } else {
            ("1.2.0", &next)
        };
        ensure!(
            boot.version == version,
            "{id} boots {}, not {version}",
            boot.version
        );
        let on_disk = std::fs::read(agent.slots().image(boot.active))?;
        ensure!(&on_disk == img, "{id}'s slot differs from image {version}");
        fetched_second.extend(
            reports
                .iter()
                .filter(|r| r.version == "1.2.0")
                .map(|r| r.bytes_fetched()),
        );
        served += agent.node().stats().bytes_served;
    }
    let uploaded = origin.stats().bytes_served;
    let ratio = uploaded_first as f64 / image.len() as f64;
    let needed = (agents.len() * image.len()) as f64;
    println!(
        "[report]    1.1.0: vendor uploaded {uploaded_first} bytes = {ratio:.2}x the image; all bytes sent = {:.2}x what the devices needed",
        (uploaded_first + served) as f64 / needed
    );
    ensure!(
        fetched_second.len() == agents.len(),
        "{} of {} devices reported fetching 1.2.0",
        fetched_second.len(),
        agents.len()
    );
    let mean = fetched_second.iter().sum::<u64>() as f64 / fetched_second.len() as f64;
    let most = fetched_second.iter().copied().max().unwrap_or(0);
    let fixed = new_bytes(&image, &next, &ImportOptions::default())?;
    let ours = new_bytes(&image, &next, &opts)?;
    let pct = |b: f64| 100.0 * b / next.len() as f64;
    println!(
        "[report]    1.2.0 delta: each device fetched {mean:.0} bytes on average (most {most}) = {:.1}% of the {}-byte image, chunker {}; \
         vendor uploaded {} bytes",
        pct(mean),
        next.len(),
        opts.chunker,
        uploaded - uploaded_first
    );
    println!(
        "[report]    blocks of 1.2.0 not in 1.1.0: {ours} bytes ({:.1}%) with {}, {fixed} bytes ({:.1}%) with fixed 256 KiB chunks",
        pct(ours as f64),
        opts.chunker,
        pct(fixed as f64)
    );
    println!(
        "[report]    {} devices boot 1.2.0 from their inactive slot{}; fleet done in {:.1} s",
        agents.len() - usize::from(failing.is_some()),
        if failing.is_some() {
            ", 1 runs 1.1.0 again"
        } else {
            ""
        },
        started.elapsed().as_secs_f64()
    );
    for (agent, _) in agents {
        agent.node().shutdown().await;
    }
    origin.shutdown().await;
    ensure!(
        ratio < 3.0,
        "the vendor uploaded {ratio:.2}x the image (target < 3x)"
    );
    Ok(())
}

/// What a release's rollout has seen so far.
#[derive(Default)]
struct Outcome {
    installed: HashSet<String>,
    failed: HashMap<String, String>,
    fell_back: HashMap<String, String>,
}

/// The vendor's side of a rollout: announce, then read the devices' reports.
struct Rollout<'a> {
    origin: &'a Node<MemoryStore>,
    inbox: &'a mut tokio::sync::broadcast::Receiver<NodeEvent>,
    topic: &'a str,
    ids: &'a [String],
    timeout: Duration,
    image_len: usize,
}

impl Rollout<'_> {
    /// Announces `bundle` (`release` at `rollout`) and waits for a report from every device
    /// the rollout includes.
    async fn stage(
        &mut self,
        release: &Release,
        rollout: u16,
        bundle: &Bundle,
        before: Option<Outcome>,
    ) -> Result<Outcome> {
        let stage = Instant::now();
        let mut o = before.unwrap_or_default();
        let expected: HashSet<&String> = self
            .ids
            .iter()
            .filter(|id| release.in_rollout(id.as_bytes(), rollout))
            .collect();
        announce(self.origin, self.topic, bundle).await?;
        println!(
            "[vendor]    release {} announced at {}% rollout: {} of {} devices are in it",
            release.version,
            rollout / 100,
            expected.len(),
            self.ids.len()
        );
        let done = |o: &Outcome| {
            expected
                .iter()
                .filter(|id| o.installed.contains(**id) || o.fell_back.contains_key(**id))
                .count()
        };
        let bar = ProgressBar::new(expected.len() as u64).with_message("installing");
        bar.set_position(done(&o) as u64);
        let deadline = tokio::time::Instant::now() + self.timeout;
        while done(&o)
            + expected
                .iter()
                .filter(|id| o.failed.contains_key(**id))
                .count()
            < expected.len()
        {
            let ev = tokio::time::timeout_at(deadline, self.inbox.recv())
                .await
                .map_err(|_| anyhow::anyhow!("stage at {}% timed out", rollout / 100))?;
            let Ok(NodeEvent::Message { topic: t, data, .. }) = ev else {
                continue;
            };
            if t != self.topic {
                continue;
            }
            match Announcement::decode(&data) {
                Ok(Announcement::Report(r)) if r.version == release.version && r.fallback => {
                    o.fell_back.insert(r.device, r.error.unwrap_or_default());
                }
                Ok(Announcement::Report(r))
                    if r.error.is_none() && r.version == release.version =>
                {
                    o.installed.insert(r.device);
                }
                Ok(Announcement::Report(r)) if r.error.is_some() => {
                    o.failed.insert(r.device, r.error.unwrap_or_default());
                }
                Ok(Announcement::Request) => {
                    // A device that joined late asks for the metadata.
                    let _ = announce(self.origin, self.topic, bundle).await;
                }
                _ => {}
            }
            bar.set_position(done(&o) as u64);
        }
        bar.finish_and_clear();
        let outside: Vec<&String> = o
            .installed
            .iter()
            .chain(o.fell_back.keys())
            .filter(|id| !expected.contains(id))
            .collect();
        ensure!(
            outside.is_empty(),
            "devices outside the rollout installed: {outside:?}"
        );
        println!(
            "[fleet]     {} {}% stage: {} installed in {:.1} s, {} fell back, {} failed; vendor upload so far {:.2}x the image",
            release.version,
            rollout / 100,
            expected
                .iter()
                .filter(|id| o.installed.contains(**id))
                .count(),
            stage.elapsed().as_secs_f64(),
            o.fell_back.len(),
            o.failed.len(),
            self.origin.stats().bytes_served as f64 / self.image_len as f64
        );
        Ok(o)
    }
}

/// Bytes of the blocks of `new`'s DAG that `old`'s DAG lacks, both imported with `opts`: what
/// a device holding `old` fetches to get `new`.
fn new_bytes(old: &[u8], new: &[u8], opts: &ImportOptions) -> Result<u64> {
    let blocks = |data: &[u8]| -> Result<HashMap<Cid, u64>> {
        let mut all = HashMap::new();
        import_file(data, opts, |b: Block| {
            all.insert(*b.cid(), b.data().len() as u64);
            Ok(())
        })?;
        Ok(all)
    };
    let before = blocks(old)?;
    Ok(blocks(new)?
        .iter()
        .filter(|(cid, _)| !before.contains_key(*cid))
        .map(|(_, n)| n)
        .sum())
}

/// A root filesystem tarball of about `size` bytes: packages of a shared library and a
/// changelog each (the library's bytes pseudo-random, as compiled code barely compresses). In
/// the `next` version the middle package is upgraded: new bytes, a little longer, a new file
/// name, so everything after it in the archive moves.
fn rootfs(size: usize, next: bool) -> Result<Vec<u8>> {
    use rand::{RngCore, SeedableRng};
    let packages = (size / (192 << 10)).clamp(4, 4096);
    let per = size / packages;
    let upgraded = packages / 2;
    let mut tar = tar::Builder::new(Vec::with_capacity(size + packages * 2048));
    let mut add = |path: String, data: &[u8]| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, path, data)?;
        Ok(())
    };
    for i in 0..packages {
        let version = if next && i == upgraded { 2u64 } else { 1 };
        let mut lib = vec![0u8; per * 3 / 4 + if version == 2 { per / 25 } else { 0 }];
        rand::rngs::StdRng::seed_from_u64((i as u64) << 8 | version).fill_bytes(&mut lib);
        add(format!("usr/lib/pkg{i:04}/libpkg{i:04}.so.{version}"), &lib)?;
        let mut log = String::new();
        let mut entry = 0;
        while log.len() < per / 4 {
            entry += 1;
            log.push_str(&format!(
                "pkg{i:04} ({version}.{entry}) stable; urgency=medium\n\n  * Release {version}.{entry} of pkg{i:04}.\n\n -- Maintainer <pkg{i:04}@example.org>\n\n"
            ));
        }
        add(format!("usr/share/doc/pkg{i:04}/changelog"), log.as_bytes())?;
    }
    Ok(tar.into_inner()?)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The synthetic root filesystem keeps its promise: one package changed, and a
    /// content-defined chunker keeps the rest of the blocks where fixed chunks lose them.
    #[test]
    fn one_changed_package_costs_a_few_blocks_with_buzhash() {
        let (v1, v2) = (
            rootfs(16 << 20, false).unwrap(),
            rootfs(16 << 20, true).unwrap(),
        );
        assert_eq!(v1.len() % 512, 0, "a tarball");
        assert!(v2.len() > v1.len());
        let buz = ImportOptions::default().with_chunker("buzhash").unwrap();
        let cdc = new_bytes(&v1, &v2, &buz).unwrap() as f64 / v2.len() as f64;
        let fixed =
            new_bytes(&v1, &v2, &ImportOptions::default()).unwrap() as f64 / v2.len() as f64;
        assert!(cdc <= 0.10, "buzhash: {:.1}% new", 100.0 * cdc);
        assert!(fixed >= 0.4, "fixed chunks: {:.1}% new", 100.0 * fixed);
    }
}
