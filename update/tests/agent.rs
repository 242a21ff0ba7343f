//! Devices installing releases from real nodes on 127.0.0.1: plain and encrypted images, a
//! delta update, an image one byte short, a tampered image, and a device that loses power
//! mid-download.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cid::Cid;
use libp2p::identity::Keypair;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use streamspace_shard::crypto::{ContentKey, EncryptingReader, encrypted_options};
use streamspace_shard::import::ImportOptions;
use streamspace_shard::keywrap::RecipientKey;
use streamspace_shard::store::{BlockStore, DiskStore, MemoryStore, StoreError, add_reader};
use streamspace_transport::meter::{Decision, Free, Meter};
use streamspace_transport::{Config, FetchOptions, Node, PeerId};
use streamspace_update::agent::{
    Agent, AgentError, Decision as Choice, DeviceConfig, HealthCheck, Slot, Slots,
};
use streamspace_update::keys::wrap_for_group;
use streamspace_update::release::{ROLLOUT_ALL, Release};
use streamspace_update::tuf::{Lifetimes, Trust, Vendor, VendorKeys};
use streamspace_update::verify::ImageError;

const PRODUCT: &str = "gateway-os";

fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn config() -> Config {
    let mut c = Config::new(Keypair::generate_ed25519()).loopback();
    c.request_timeout = Duration::from_secs(5);
    c
}

/// Serves at most `budget` shards, then pauses everyone: a vendor whose uplink goes away.
struct Budget(AtomicU64);

impl Meter for Budget {
    fn before_send(&self, _: &PeerId, _: &Cid, _: usize) -> Decision {
        let left = self.0.load(Ordering::SeqCst);
        if left == 0 {
            return Decision::Pause {
                retry_after_ms: 100,
            };
        }
        self.0.fetch_sub(1, Ordering::SeqCst);
        Decision::Serve
    }
    fn received(&self, _: &PeerId, _: &Cid, _: usize) {}
}

/// A peer holding the image that serves every block with one byte flipped.
struct Tampering(MemoryStore);

impl BlockStore for Tampering {
    async fn get(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        Ok(self.0.get(cid).await?.map(|b| {
            let mut v = b.to_vec();
            v[0] ^= 0xff;
            Bytes::from(v)
        }))
    }
    async fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
        self.0.has(cid).await
    }
    async fn put_many(&self, blocks: Vec<streamspace_shard::Block>) -> Result<(), StoreError> {
        self.0.put_many(blocks).await
    }
    async fn delete(&self, cid: &Cid) -> Result<bool, StoreError> {
        self.0.delete(cid).await
    }
}

struct Fleet {
    vendor: Vendor,
    origin: Node<MemoryStore>,
    dir: tempfile::TempDir,
}

async fn fleet(meter: Arc<dyn Meter>) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let keys = VendorKeys::generate();
    let vendor = Vendor::create(
        dir.path().join("vendor"),
        &keys.roles(),
        keys.ring(),
        Lifetimes::default(),
    )
    .await
    .unwrap();
    let origin = Node::start(config(), Arc::new(MemoryStore::new()), meter)
        .await
        .unwrap();
    Fleet {
        vendor,
        origin,
        dir,
    }
}

impl Fleet {
    async fn publish(&self, data: &[u8], version: &str) -> Release {
        self.publish_with(data, version, ImportOptions::default())
            .await
    }

    async fn publish_with(&self, data: &[u8], version: &str, opts: ImportOptions) -> Release {
        let root = add_reader(
            Some(self.origin.store().as_ref()),
            std::io::Cursor::new(data.to_vec()),
            opts,
        )
        .await
        .unwrap()
        .cid;
        self.origin.provide(root).await.unwrap();
        Release {
            product: PRODUCT.into(),
            version: version.into(),
            channel: "stable".into(),
            image: root.to_bytes(),
            size: data.len() as u64,
            sha256: Sha256::digest(data).into(),
            min_version: Some("1.0.0".into()),
            keys: vec![],
        }
    }

    async fn device(&self, name: &str, group: Option<(String, Arc<RecipientKey>)>) -> Agent {
        let base = self.dir.path().join(name);
        let store = DiskStore::open(base.join("blocks"), Some(64 << 20)).unwrap();
        let mut c = config();
        c.bootstrap = self.origin.dialable_addrs().await.unwrap();
        let node = Node::start(c, Arc::new(store), Arc::new(Free))
            .await
            .unwrap();
        let slots = Slots::new(base.join("slots"));
        if slots.boot().is_err() {
            slots.provision("1.0.0", b"factory image").unwrap();
        }
        let trust = Trust::new(self.vendor.trusted_root().unwrap(), base.join("tuf"));
        Agent::new(
            node,
            trust,
            slots,
            DeviceConfig {
                product: PRODUCT.into(),
                channel: "stable".into(),
                device_id: name.into(),
                group,
                fetch: FetchOptions {
                    peers: vec![self.origin.peer_id()],
                    stall: Duration::from_secs(3),
                    ..FetchOptions::default()
                },
                health: HealthCheck::default(),
            },
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_installs_into_the_inactive_slot_and_keeps_serving() {
    let mut f = fleet(Arc::new(Free)).await;
    let data = image(1 << 20, 1);
    let release = f.publish(&data, "1.1.0").await;
    let bundle = f
        .vendor
        .release(release.clone(), ROLLOUT_ALL)
        .await
        .unwrap();
    let dev = f.device("dev-1", None).await;
    let report = dev.update(&bundle).await.unwrap().expect("installed");
    assert_eq!(report.version, "1.1.0");
    assert_eq!(report.slot, Slot::B);
    assert_eq!(report.fetched, report.blocks);
    let boot = dev.slots().boot().unwrap();
    assert_eq!((boot.active, boot.version.as_str()), (Slot::B, "1.1.0"));
    assert_eq!(std::fs::read(dev.slots().image(Slot::B)).unwrap(), data);
    assert_eq!(
        std::fs::read(dev.slots().image(Slot::A)).unwrap(),
        b"factory image"
    );
    // Pinned in its store: it serves the image to the next device.
    let root = Cid::try_from(release.image.as_slice()).unwrap();
    assert!(dev.node().store().is_pinned(&root).await.unwrap());
    // The same metadata again: nothing to do.
    assert_eq!(dev.consider(&bundle).await.unwrap(), Choice::UpToDate);

    let mut second = f.device("dev-2", None).await;
    let from_first = FetchOptions {
        peers: vec![dev.node().peer_id()],
        use_dht: false,
        ..FetchOptions::default()
    };
    second = Agent::new(
        second.node().clone(),
        Trust::new(
            f.vendor.trusted_root().unwrap(),
            f.dir.path().join("dev-2/tuf"),
        ),
        second.slots().clone(),
        DeviceConfig {
            product: PRODUCT.into(),
            channel: "stable".into(),
            device_id: "dev-2".into(),
            group: None,
            fetch: from_first,
            health: HealthCheck::default(),
        },
    );
    let r = second.update(&bundle).await.unwrap().expect("installed");
    // Every block (the leaves and the root node) came from the first device.
    let from_dev = r
        .bytes_from
        .get(&dev.node().peer_id())
        .copied()
        .unwrap_or(0);
    assert!(from_dev > data.len() as u64, "{from_dev}");
    assert_eq!(r.bytes_from.len(), 1);
    dev.node().shutdown().await;
    second.node().shutdown().await;
    f.origin.shutdown().await;
}

/// A device whose factory image the vendor cut with buzhash indexes its slot, and then
/// fetches of the next image (8 KiB inserted in the middle) only the blocks around the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_defined_update_fetches_only_the_blocks_around_the_change() {
    let mut f = fleet(Arc::new(Free)).await;
    let buzhash = ImportOptions::default().with_chunker("buzhash").unwrap();
    let v1 = image(8 << 20, 7);
    let mut v2 = v1.clone();
    v2.splice(4 << 20..4 << 20, image(8192, 8));
    let first = f.publish_with(&v1, "1.0.0", buzhash.clone()).await;
    let second = f.publish_with(&v2, "1.1.0", buzhash.clone()).await;
    Slots::new(f.dir.path().join("dev-d/slots"))
        .provision("1.0.0", &v1)
        .unwrap();
    let dev = f.device("dev-d", None).await;
    // The device's own import of its slot gives the vendor's root: same chunker, same CIDs.
    let held = dev.index_slot(buzhash).await.unwrap();
    assert_eq!(held.to_bytes(), first.image);

    let bundle = f.vendor.release(second, ROLLOUT_ALL).await.unwrap();
    let report = dev.update(&bundle).await.unwrap().expect("installed");
    assert_eq!(std::fs::read(dev.slots().image(Slot::B)).unwrap(), v2);
    let fetched = report.bytes_fetched();
    // The chunk holding the insertion and the one after it, at most, and the root node.
    assert!(
        fetched <= 2 * (512 << 10) + (64 << 10),
        "fetched {fetched} of {} bytes ({} of {} blocks)",
        v2.len(),
        report.fetched,
        report.blocks
    );
    assert!(report.fetched < report.blocks / 4, "{report:?}");
    dev.node().shutdown().await;
    f.origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_images_open_only_for_their_device_group() {
    let mut f = fleet(Arc::new(Free)).await;
    let data = image(600_000, 2);
    let key = ContentKey::generate();
    let root = add_reader(
        Some(f.origin.store().as_ref()),
        EncryptingReader::new(std::io::Cursor::new(data.clone()), key.clone()),
        encrypted_options(ImportOptions::default()),
    )
    .await
    .unwrap()
    .cid;
    f.origin.provide(root).await.unwrap();
    let eu = Arc::new(RecipientKey::generate());
    let us = Arc::new(RecipientKey::generate());
    let release = Release {
        product: PRODUCT.into(),
        version: "2.0.0".into(),
        channel: "stable".into(),
        image: root.to_bytes(),
        size: data.len() as u64,
        sha256: Sha256::digest(&data).into(),
        min_version: None,
        keys: vec![wrap_for_group(PRODUCT, "2.0.0", "eu", &eu.public_bytes(), &key).unwrap()],
    };
    let bundle = f.vendor.release(release, ROLLOUT_ALL).await.unwrap();

    let in_group = f.device("eu-1", Some(("eu".into(), eu))).await;
    in_group.update(&bundle).await.unwrap().expect("installed");
    assert_eq!(
        std::fs::read(in_group.slots().image(Slot::B)).unwrap(),
        data
    );

    let outside = f.device("us-1", Some(("us".into(), us))).await;
    let err = outside.update(&bundle).await.unwrap_err();
    assert!(matches!(err, AgentError::Key(_)), "{err}");
    assert_eq!(outside.slots().boot().unwrap().version, "1.0.0");
    in_group.node().shutdown().await;
    outside.node().shutdown().await;
    f.origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_one_byte_short_or_tampered_never_boots() {
    let mut f = fleet(Arc::new(Free)).await;
    let data = image(300_000, 3);
    let mut release = f.publish(&data, "1.2.0").await;
    // The release promises one byte more than the image has.
    let mut longer = data.clone();
    longer.push(0);
    release.size = longer.len() as u64;
    release.sha256 = Sha256::digest(&longer).into();
    let bundle = f
        .vendor
        .release(release.clone(), ROLLOUT_ALL)
        .await
        .unwrap();
    let dev = f.device("dev-short", None).await;
    let err = dev.update(&bundle).await.unwrap_err();
    assert!(
        matches!(err, AgentError::Image(ImageError::TooShort { expected, got }) if expected == got + 1),
        "{err}"
    );
    assert_eq!(dev.slots().boot().unwrap().version, "1.0.0");
    assert!(!dev.slots().image(Slot::B).exists());
    assert!(
        !dev.slots()
            .image(Slot::B)
            .with_extension("img.part")
            .exists()
    );

    // A tampered image stream (one byte flipped) is refused at the digest.
    let good = f.publish(&data, "1.3.0").await;
    let mut bad = data.clone();
    bad[1234] ^= 1;
    let pieces = futures::stream::iter(
        bad.chunks(65_536)
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let err = dev.slots().install(&good, pieces).await.unwrap_err();
    assert!(
        matches!(err, AgentError::Image(ImageError::Digest)),
        "{err}"
    );
    // A longer one is refused as soon as it passes the size.
    let pieces = futures::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from(longer))]);
    let err = dev.slots().install(&good, pieces).await.unwrap_err();
    assert!(
        matches!(err, AgentError::Image(ImageError::TooLong { .. })),
        "{err}"
    );
    assert_eq!(dev.slots().boot().unwrap().version, "1.0.0");
    dev.node().shutdown().await;
    f.origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_losing_power_mid_download_resumes_and_never_boots_a_partial_image() {
    let budget = Arc::new(Budget(AtomicU64::new(6)));
    let mut f = fleet(budget.clone()).await;
    let data = image(4 << 20, 4); // 16 blocks of 256 KiB
    let release = f.publish(&data, "1.1.0").await;
    let bundle = f.vendor.release(release, ROLLOUT_ALL).await.unwrap();

    let dev = f.device("dev-power", None).await;
    let base = f.dir.path().join("dev-power");
    // The vendor serves six blocks, then stalls; the power goes.
    let task = tokio::spawn(async move {
        let r = dev.update(&bundle).await;
        (dev, r)
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while budget.0.load(Ordering::SeqCst) > 0 {
        assert!(tokio::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    task.abort();
    let _ = task.await;
    // Whatever was in flight: the device still boots its factory image.
    let slots = Slots::new(base.join("slots"));
    assert_eq!(slots.boot().unwrap().version, "1.0.0");
    assert!(!slots.image(Slot::B).exists());
    // A stale partial file from the lost write does no harm either.
    std::fs::write(slots.image(Slot::B).with_extension("img.part"), b"half").unwrap();

    // Power back: a new process on the same disk, and the vendor's link is back.
    budget.0.store(u64::MAX, Ordering::SeqCst);
    let bundle = f.vendor.refresh().await.unwrap();
    let dev = loop {
        // The aborted node's store closes once its last task is gone.
        match DiskStore::open(base.join("blocks"), Some(64 << 20)) {
            Ok(s) => {
                drop(s);
                break f.device("dev-power", None).await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let report = dev.update(&bundle).await.unwrap().expect("installed");
    assert_eq!(report.blocks, 17); // 16 leaves and the root
    assert!(
        report.fetched <= report.blocks - 6,
        "fetched {} of {} again",
        report.fetched,
        report.blocks
    );
    assert_eq!(std::fs::read(dev.slots().image(Slot::B)).unwrap(), data);
    assert_eq!(dev.slots().boot().unwrap().version, "1.1.0");
    dev.node().shutdown().await;
    f.origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_pick_a_stable_share_of_devices_and_halts_stop_them() {
    let mut f = fleet(Arc::new(Free)).await;
    let release = f.publish(b"small image", "1.1.0").await;
    let ten = f.vendor.release(release.clone(), 1000).await.unwrap();
    let dev = f.device("dev-rollout", None).await;
    let ids: Vec<String> = (0..2000).map(|i| format!("device-{i}")).collect();
    let in_ten = ids
        .iter()
        .filter(|id| release.in_rollout(id.as_bytes(), 1000))
        .count();
    assert!((150..250).contains(&in_ten), "{in_ten} of 2000 at 10%");
    // Raising the rollout keeps everyone already in.
    assert!(
        ids.iter().all(|id| !release.in_rollout(id.as_bytes(), 1000)
            || release.in_rollout(id.as_bytes(), 5000))
    );
    let bucket = release.rollout_bucket(b"dev-rollout");
    match dev.consider(&ten).await.unwrap() {
        Choice::Install(_) => assert!(bucket < 1000),
        Choice::NotInRollout {
            bucket: b, rollout, ..
        } => {
            assert_eq!((b, rollout), (bucket, 1000));
            assert!(bucket >= 1000);
        }
        Choice::UpToDate => panic!("a newer release is offered"),
    }
    let halted = f.vendor.set_rollout(PRODUCT, "1.1.0", 0).await.unwrap();
    assert!(matches!(
        dev.consider(&halted).await.unwrap(),
        Choice::NotInRollout { rollout: 0, .. }
    ));
    let all = f
        .vendor
        .set_rollout(PRODUCT, "1.1.0", ROLLOUT_ALL)
        .await
        .unwrap();
    assert!(matches!(
        dev.consider(&all).await.unwrap(),
        Choice::Install(_)
    ));
    dev.node().shutdown().await;
    f.origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_blocks_from_a_peer_are_refused_and_the_install_completes_from_others() {
    let mut f = fleet(Arc::new(Free)).await;
    let data = image(2 << 20, 5);
    let release = f.publish(&data, "1.1.0").await;
    let bundle = f.vendor.release(release, ROLLOUT_ALL).await.unwrap();
    // A peer with the image whose every block is tampered with.
    let tampering = Tampering(MemoryStore::new());
    add_reader(
        Some(&tampering.0),
        std::io::Cursor::new(data.clone()),
        ImportOptions::default(),
    )
    .await
    .unwrap();
    let mut c = config();
    c.bootstrap = f.origin.dialable_addrs().await.unwrap();
    let evil = Node::start(c, Arc::new(tampering), Arc::new(Free))
        .await
        .unwrap();

    let dev = f.device("dev-tamper", None).await;
    // The tampering peer is asked first, and as often as the vendor.
    let report = dev
        .update_with(&bundle, &[evil.peer_id(), f.origin.peer_id()])
        .await
        .unwrap()
        .expect("installed");
    assert!(!report.bytes_from.contains_key(&evil.peer_id()));
    assert!(
        dev.node().stats().bad_blocks > 0,
        "the tampered blocks were seen"
    );
    assert_eq!(std::fs::read(dev.slots().image(Slot::B)).unwrap(), data);
    dev.node().shutdown().await;
    evil.shutdown().await;
    f.origin.shutdown().await;
}
