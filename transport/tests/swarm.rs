//! Swarms of real nodes on 127.0.0.1, in one process: publishing and fetching through the DHT,
//! corrupt and vanishing peers, closed networks, quotas, metering and byte ranges.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cid::Cid;
use futures::TryStreamExt;
use libp2p::identity::{Keypair, ed25519};
use rand::{RngCore, SeedableRng};
use streamspace_shard::block::Block;
use streamspace_shard::export::{ByteRange, cat};
use streamspace_shard::import::ImportOptions;
use streamspace_shard::store::{BlockStore, DiskStore, MemoryStore, StoreError, add_reader};
use streamspace_transport::allowlist::SignedAllowlist;
use streamspace_transport::message::{Request, Response};
use streamspace_transport::meter::{Decision, Free, Meter};
use streamspace_transport::{
    Admission, Config, FetchError, FetchOptions, Node, NodeEvent, Pace, PeerId, ReplicateAnything,
    ReplicationConfig, Tier,
};

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

async fn publish<S: BlockStore + 'static>(node: &Node<S>, data: &[u8]) -> Cid {
    add_reader(
        Some(node.store().as_ref()),
        std::io::Cursor::new(data.to_vec()),
        ImportOptions::default(),
    )
    .await
    .unwrap()
    .cid
}

async fn read_back<S: BlockStore>(store: &S, root: Cid, range: ByteRange) -> Vec<u8> {
    let parts: Vec<Bytes> = cat(store, root, range).try_collect().await.unwrap();
    parts.concat()
}

/// Options for a fetch from these peers only, without the DHT.
fn direct(peers: Vec<PeerId>) -> FetchOptions {
    FetchOptions {
        peers,
        use_dht: false,
        ..FetchOptions::default()
    }
}

fn config() -> Config {
    let mut c = Config::new(Keypair::generate_ed25519()).loopback();
    c.request_timeout = Duration::from_secs(5);
    c
}

async fn start<S: BlockStore + 'static>(config: Config, store: S) -> Node<S> {
    Node::start(config, Arc::new(store), Arc::new(Free))
        .await
        .unwrap()
}

/// A peer that serves every block with one byte flipped.
struct Corrupt(MemoryStore);

impl BlockStore for Corrupt {
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
    async fn put_many(&self, blocks: Vec<Block>) -> Result<(), StoreError> {
        self.0.put_many(blocks).await
    }
    async fn delete(&self, cid: &Cid) -> Result<bool, StoreError> {
        self.0.delete(cid).await
    }
}

/// A peer on a slow disk.
struct Slow(MemoryStore, Duration);

impl BlockStore for Slow {
    async fn get(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        tokio::time::sleep(self.1).await;
        self.0.get(cid).await
    }
    async fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
        self.0.has(cid).await
    }
    async fn put_many(&self, blocks: Vec<Block>) -> Result<(), StoreError> {
        self.0.put_many(blocks).await
    }
    async fn delete(&self, cid: &Cid) -> Result<bool, StoreError> {
        self.0.delete(cid).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_nodes_find_and_fetch_through_the_dht_concurrently() {
    let seeder = start(config(), MemoryStore::new()).await;
    let data = random(3 * 1024 * 1024 + 12_345, 1);
    let root = publish(&seeder, &data).await;
    seeder.provide(root).await.unwrap();
    let boot = seeder.dialable_addrs().await.unwrap();

    let mut nodes = Vec::new();
    for _ in 0..11 {
        let mut c = config();
        c.bootstrap = boot.clone();
        nodes.push(start(c, MemoryStore::new()).await);
    }
    // Every node fetches at once, finding the seeder through the DHT.
    let fetches = nodes.iter().map(|n| {
        let n = n.clone();
        tokio::spawn(async move { n.fetch(root, FetchOptions::default()).await })
    });
    for (node, f) in nodes.iter().zip(fetches) {
        let report = f.await.unwrap().unwrap();
        assert_eq!(report.blocks, 14, "13 leaves and the root");
        assert_eq!(report.fetched, 14);
        assert_eq!(report.bad_blocks, 0);
        assert!(report.first_block.is_some());
        assert_eq!(
            read_back(node.store().as_ref(), root, ByteRange::default()).await,
            data
        );
        assert_eq!(
            node.stats().bytes_received,
            report.bytes_from.values().sum()
        );
    }
    let served = seeder.stats();
    assert_eq!(served.shards_served, 11 * 14);
    assert_eq!(served.peers.len(), 11);

    // A node that now provides the content too is found by a newcomer, which can fetch from
    // both.
    nodes[0].provide(root).await.unwrap();
    let mut c = config();
    c.bootstrap = nodes[5].dialable_addrs().await.unwrap();
    let late = start(c, MemoryStore::new()).await;
    let mut providers = late.find_providers(root).await.unwrap();
    providers.sort();
    let mut expected = vec![seeder.peer_id(), nodes[0].peer_id()];
    expected.sort();
    assert_eq!(providers, expected);
    late.fetch(root, FetchOptions::default()).await.unwrap();
    // Every node learnt the seeder's tier and capacity when it connected.
    let tiers = nodes[1].peer_tiers().await.unwrap();
    assert_eq!(tiers.get(&seeder.peer_id()).map(|t| t.0), Some(Tier::Edge));
    for n in nodes.iter().chain([&seeder, &late]) {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_peer_is_banned_and_the_fetch_completes_from_others() {
    let data = random(2 * 1024 * 1024, 2);
    let honest = start(config(), MemoryStore::new()).await;
    let root = publish(&honest, &data).await;
    let bad_store = MemoryStore::new();
    add_reader(
        Some(&bad_store),
        std::io::Cursor::new(data.clone()),
        ImportOptions::default(),
    )
    .await
    .unwrap();
    let liar = start(config(), Corrupt(bad_store)).await;

    let mut c = config();
    c.ban_after_bad_blocks = 2;
    let viewer = start(c, MemoryStore::new()).await;
    let mut events = viewer.events();
    for n in [
        &honest.dialable_addrs().await.unwrap(),
        &liar.dialable_addrs().await.unwrap(),
    ] {
        viewer.dial(n[0].clone()).await.unwrap();
    }
    let report = viewer
        .fetch(root, direct(vec![liar.peer_id(), honest.peer_id()]))
        .await
        .unwrap();
    assert!(report.bad_blocks >= 1, "{report:?}");
    assert_eq!(report.bytes_from.get(&liar.peer_id()), None);
    assert_eq!(
        read_back(viewer.store().as_ref(), root, ByteRange::default()).await,
        data
    );
    let stats = viewer.stats();
    assert_eq!(stats.bad_blocks, report.bad_blocks);
    assert_eq!(stats.peers[&liar.peer_id()].bad_blocks, report.bad_blocks);
    if report.bad_blocks >= 2 {
        assert_eq!(stats.bans, 1);
    }
    let mut seen_bad = false;
    while let Ok(e) = events.try_recv() {
        seen_bad |= matches!(e, NodeEvent::BadBlock { peer, .. } if peer == liar.peer_id());
    }
    assert!(seen_bad);

    // Once banned, the liar cannot even connect.
    let mut c = config();
    c.ban_after_bad_blocks = 1;
    let strict = start(c, MemoryStore::new()).await;
    strict
        .dial(liar.dialable_addrs().await.unwrap()[0].clone())
        .await
        .unwrap();
    let err = strict
        .fetch(root, direct(vec![liar.peer_id()]))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Unavailable { .. }), "{err}");
    assert_eq!(strict.stats().bans, 1);
    assert!(
        strict
            .dial(liar.dialable_addrs().await.unwrap()[0].clone())
            .await
            .is_err()
    );
    for n in [&honest, &viewer, &strict] {
        n.shutdown().await;
    }
    liar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_killed_mid_transfer_is_replaced() {
    let data = random(6 * 1024 * 1024, 3);
    let mut seeders = Vec::new();
    for _ in 0..2 {
        let store = MemoryStore::new();
        add_reader(
            Some(&store),
            std::io::Cursor::new(data.clone()),
            ImportOptions::default(),
        )
        .await
        .unwrap();
        seeders.push(start(config(), Slow(store, Duration::from_millis(15))).await);
    }
    let root = streamspace_shard::store::add_reader(
        None::<&MemoryStore>,
        std::io::Cursor::new(data.clone()),
        ImportOptions::default(),
    )
    .await
    .unwrap()
    .cid;
    let viewer = start(config(), MemoryStore::new()).await;
    for s in &seeders {
        viewer
            .dial(s.dialable_addrs().await.unwrap()[0].clone())
            .await
            .unwrap();
    }
    let peers: Vec<PeerId> = seeders.iter().map(|s| s.peer_id()).collect();
    let v = viewer.clone();
    let fetch = tokio::spawn(async move {
        v.fetch(
            root,
            FetchOptions {
                batch: 2,
                per_peer: 2,
                ..direct(peers)
            },
        )
        .await
    });
    while seeders[0].stats().shards_served < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    seeders[0].shutdown().await;
    let report = fetch.await.unwrap().unwrap();
    assert_eq!(report.blocks, 25);
    assert!(report.bytes_from[&seeders[1].peer_id()] > 0);
    assert_eq!(
        read_back(viewer.store().as_ref(), root, ByteRange::default()).await,
        data
    );
    viewer.shutdown().await;
    seeders[1].shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_network_refuses_outsiders_and_counts_them() {
    let operator = ed25519::Keypair::generate();
    let keys: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
    let members = keys[..2].iter().map(|k| k.public().to_peer_id());
    let list = SignedAllowlist::sign(
        &operator,
        "studio",
        SystemTime::now() + Duration::from_secs(3600),
        members,
    );
    let member_config = |k: &Keypair| {
        let mut c = Config::new(k.clone()).loopback();
        c.network = "studio".into();
        c.admission = Some(Admission {
            operator: operator.public(),
            list: list.clone(),
        });
        c
    };
    let a = start(member_config(&keys[0]), MemoryStore::new()).await;
    let b = start(member_config(&keys[1]), MemoryStore::new()).await;
    let mut outsider_config = Config::new(keys[2].clone()).loopback();
    outsider_config.network = "studio".into();
    let outsider = start(outsider_config, MemoryStore::new()).await;
    let addr = a.dialable_addrs().await.unwrap()[0].clone();

    b.dial(addr.clone()).await.unwrap();
    // The outsider's handshake may complete on its side; the member then drops the connection.
    let _ = outsider.dial(addr).await;
    for _ in 0..500 {
        if a.stats().refused_connections >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.stats().refused_connections, 1);
    while !outsider.connected_peers().await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ask = outsider.request(a.peer_id(), Request::Status).await;
    assert!(ask.is_err(), "{ask:?}");
    for _ in 0..500 {
        if a.stats().refused_connections >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.stats().refused_connections, 2, "each attempt is counted");
    assert_eq!(a.connected_peers().await.unwrap(), vec![b.peer_id()]);
    // Members talk.
    assert!(matches!(
        b.request(a.peer_id(), Request::Status).await,
        Ok(Response::Status { .. })
    ));

    // A list for another network, signed by someone else, or expired, is not accepted.
    let mut c = member_config(&keys[0]);
    c.network = "other".into();
    assert!(
        Node::start(c, Arc::new(MemoryStore::new()), Arc::new(Free))
            .await
            .is_err()
    );
    let mut c = member_config(&keys[0]);
    c.admission = Some(Admission {
        operator: ed25519::Keypair::generate().public(),
        list: list.clone(),
    });
    assert!(
        Node::start(c, Arc::new(MemoryStore::new()), Arc::new(Free))
            .await
            .is_err()
    );
    let expired = SignedAllowlist::sign(&operator, "studio", SystemTime::now(), []);
    let mut c = member_config(&keys[0]);
    c.admission = Some(Admission {
        operator: operator.public(),
        list: expired,
    });
    assert!(
        Node::start(c, Arc::new(MemoryStore::new()), Arc::new(Free))
            .await
            .is_err()
    );
    for n in [&a, &b, &outsider] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_evicts_unpinned_content_only() {
    let seeder = start(config(), MemoryStore::new()).await;
    let items: Vec<Vec<u8>> = (0..3).map(|i| random(1024 * 1024, 10 + i)).collect();
    let mut roots = Vec::new();
    for d in &items {
        roots.push(publish(&seeder, d).await);
    }
    let dir = tempfile::tempdir().unwrap();
    // Room for about two of the three items.
    let store =
        DiskStore::open(dir.path().join("blocks.redb"), Some(2 * 1024 * 1024 + 4096)).unwrap();
    let edge = start(config(), store).await;
    edge.dial(seeder.dialable_addrs().await.unwrap()[0].clone())
        .await
        .unwrap();
    let from_seeder = || direct(vec![seeder.peer_id()]);
    edge.fetch(roots[0], from_seeder()).await.unwrap();
    edge.store().pin(&roots[0]).await.unwrap();
    edge.fetch(roots[1], from_seeder()).await.unwrap();
    edge.fetch(roots[2], from_seeder()).await.unwrap();
    assert!(edge.store().used_bytes() <= 2 * 1024 * 1024 + 4096);
    // The pinned item is whole; the newest is whole; the unpinned older one was evicted.
    assert_eq!(
        read_back(edge.store().as_ref(), roots[0], ByteRange::default()).await,
        items[0]
    );
    assert_eq!(
        read_back(edge.store().as_ref(), roots[2], ByteRange::default()).await,
        items[2]
    );
    let mut left = 0;
    for (c, _) in streamspace_shard::dag::walk(seeder.store().as_ref(), roots[1])
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
    {
        left += usize::from(edge.store().has(&c).await.unwrap());
    }
    assert!(left <= 1, "{left} of item 1's 5 blocks remain");
    edge.shutdown().await;
    seeder.shutdown().await;
}

/// Serves `limit` shards, then pauses every request; counts what it sees.
struct Quota {
    limit: u64,
    sent: AtomicU64,
    received: AtomicU64,
}

impl Meter for Quota {
    fn before_send(&self, _: &PeerId, _: &Cid, _: usize) -> Decision {
        if self.sent.fetch_add(1, Ordering::SeqCst) < self.limit {
            Decision::Serve
        } else {
            self.sent.fetch_sub(1, Ordering::SeqCst);
            Decision::Refuse
        }
    }
    fn received(&self, _: &PeerId, _: &Cid, bytes: usize) {
        self.received.fetch_add(bytes as u64, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meter_sees_every_shard_and_may_refuse_service_and_ranges_fetch_only_what_they_need() {
    let data = random(4 * 1024 * 1024, 4);
    let metered = Arc::new(Quota {
        limit: 5,
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
    });
    let stingy = Node::start(config(), Arc::new(MemoryStore::new()), metered.clone())
        .await
        .unwrap();
    let root = publish(&stingy, &data).await;
    let generous = start(config(), MemoryStore::new()).await;
    publish(&generous, &data).await;

    let counting = Arc::new(Quota {
        limit: u64::MAX,
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
    });
    let viewer = Node::start(config(), Arc::new(MemoryStore::new()), counting.clone())
        .await
        .unwrap();
    for n in [&stingy, &generous] {
        viewer
            .dial(n.dialable_addrs().await.unwrap()[0].clone())
            .await
            .unwrap();
    }
    // Bytes 1,000,000..1,300,000 lie in leaves 3 and 4 (256 KiB each): with the root, 3 blocks.
    let range = (1_000_000, 300_000);
    let report = viewer
        .fetch(
            root,
            FetchOptions {
                range: Some(range),
                ..direct(vec![stingy.peer_id()])
            },
        )
        .await
        .unwrap();
    assert_eq!(report.fetched, 3);
    assert_eq!(
        read_back(
            viewer.store().as_ref(),
            root,
            ByteRange::new(range.0, Some(range.1))
        )
        .await,
        &data[1_000_000..1_300_000]
    );
    // The rest: the stingy peer refuses after 5 shards, the generous one serves the remainder.
    let report = viewer
        .fetch(root, direct(vec![stingy.peer_id(), generous.peer_id()]))
        .await
        .unwrap();
    assert_eq!(report.blocks, 17);
    assert_eq!(report.fetched, 14);
    assert_eq!(metered.sent.load(Ordering::SeqCst), 5);
    assert!(stingy.stats().metered_refusals >= 1);
    // Payments go to the metering hook; this one takes none.
    assert!(
        viewer
            .pay(stingy.peer_id(), Bytes::from_static(b"a receipt"))
            .await
            .is_err()
    );
    assert_eq!(
        counting.received.load(Ordering::SeqCst),
        viewer.stats().bytes_received
    );
    assert_eq!(
        read_back(viewer.store().as_ref(), root, ByteRange::default()).await,
        data
    );
    for n in [&viewer, &generous] {
        n.shutdown().await;
    }
    stingy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetchers_of_one_item_take_blocks_from_each_other() {
    let seeder = start(config(), MemoryStore::new()).await;
    let data = random(4 * 1024 * 1024, 5);
    let root = publish(&seeder, &data).await;
    seeder.provide(root).await.unwrap();
    let boot = seeder.dialable_addrs().await.unwrap();
    let mut fetchers = Vec::new();
    for _ in 0..8 {
        let mut c = config();
        c.bootstrap = boot.clone();
        fetchers.push(start(c, MemoryStore::new()).await);
    }
    let runs: Vec<_> = fetchers
        .iter()
        .map(|n| {
            let n = n.clone();
            tokio::spawn(async move {
                n.fetch(
                    root,
                    FetchOptions {
                        announce: true,
                        window: 0,
                        ..FetchOptions::default()
                    },
                )
                .await
            })
        })
        .collect();
    let mut from_peers = 0;
    for (n, r) in fetchers.iter().zip(runs) {
        let report = r.await.unwrap().unwrap();
        from_peers += report
            .bytes_from
            .iter()
            .filter(|(p, _)| **p != seeder.peer_id())
            .map(|(_, b)| *b)
            .sum::<u64>();
        assert_eq!(
            read_back(n.store().as_ref(), root, ByteRange::default()).await,
            data
        );
    }
    let uploaded = seeder.stats().bytes_served;
    assert!(from_peers > 0, "no block flowed between fetchers");
    // Serving all eight alone would be 8x; each block is the charge of one fetcher, which
    // takes it from the seeder, and the others take it from that one.
    assert!(
        uploaded < 3 * data.len() as u64,
        "the seeder uploaded {uploaded} bytes for an item of {}",
        data.len()
    );
    for n in fetchers.iter().chain([&seeder]) {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier1_node_replicates_content_in_demand() {
    let publisher = start(config(), MemoryStore::new()).await;
    let data = random(1024 * 1024 + 1, 6);
    let root = publish(&publisher, &data).await;
    publisher.provide(root).await.unwrap();
    let mut c = config();
    c.tier = Tier::Tier1;
    c.replication = ReplicationConfig {
        after: 2,
        policy: Arc::new(ReplicateAnything),
        ..ReplicationConfig::default()
    };
    c.bootstrap = publisher.dialable_addrs().await.unwrap();
    let tier1 = start(c, MemoryStore::new()).await;
    let mut replicated = tier1.events();
    let mut edges = Vec::new();
    for _ in 0..2 {
        let mut c = config();
        c.bootstrap = tier1.dialable_addrs().await.unwrap();
        let edge = start(c, MemoryStore::new()).await;
        // Wait until the edge has learnt its neighbour's tier.
        while edge
            .peer_tiers()
            .await
            .unwrap()
            .get(&tier1.peer_id())
            .map(|t| t.0)
            != Some(Tier::Tier1)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        edge.fetch(root, FetchOptions::default()).await.unwrap();
        edges.push(edge);
    }
    // Two edges asked it for content it lacked: it fetched the content and provides it.
    let ok = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match replicated.recv().await {
                Ok(NodeEvent::Replicated(r, ok)) if r == root => return ok,
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .unwrap();
    assert!(ok);
    assert_eq!(
        read_back(tier1.store().as_ref(), root, ByteRange::default()).await,
        data
    );
    let providers = edges[0].find_providers(root).await.unwrap();
    assert!(providers.contains(&tier1.peer_id()), "{providers:?}");
    // Once the publisher is gone, a newcomer is served by the Tier-1 node.
    publisher.shutdown().await;
    let mut c = config();
    c.bootstrap = tier1.dialable_addrs().await.unwrap();
    let late = start(c, MemoryStore::new()).await;
    let report = late.fetch(root, FetchOptions::default()).await.unwrap();
    assert!(report.bytes_from.contains_key(&tier1.peer_id()));
    for n in edges.iter().chain([&tier1, &late]) {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_node_caches_content_on_its_second_view() {
    let publisher = start(config(), MemoryStore::new()).await;
    let data = random(2 * 1024 * 1024, 7);
    let root = publish(&publisher, &data).await;
    publisher.provide(root).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.bootstrap = publisher.dialable_addrs().await.unwrap();
    let edge = start(
        c,
        DiskStore::open(dir.path().join("blocks.redb"), Some(64 << 20)).unwrap(),
    )
    .await;

    // First view of a range: only the blocks it needs, and nothing kept.
    let first = edge
        .view(
            root,
            ByteRange::new(300_000, Some(10)),
            FetchOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(&first.data[..], &data[300_000..300_010]);
    assert!(!first.cached);
    assert_eq!(first.report.fetched, 2, "the root and one leaf");
    assert!(!edge.store().has(&root).await.unwrap());
    assert_eq!(edge.store().used_bytes(), 0);

    // Second view: kept, and announced.
    let second = edge
        .view(root, ByteRange::ALL, FetchOptions::default())
        .await
        .unwrap();
    assert_eq!(&second.data[..], &data[..]);
    assert!(second.cached);
    assert!(edge.store().has(&root).await.unwrap());
    let third = edge
        .view(root, ByteRange::ALL, FetchOptions::default())
        .await
        .unwrap();
    assert_eq!(third.report.fetched, 0, "served from the cache");
    let providers = publisher.find_providers(root).await.unwrap();
    assert!(providers.contains(&edge.peer_id()), "{providers:?}");
    edge.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_talk_over_quic_and_keep_their_identity() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("node.key");
    let key = streamspace_transport::identity::load_or_create(&key_path).unwrap();
    let again = streamspace_transport::identity::load_or_create(&key_path).unwrap();
    assert_eq!(key.public().to_peer_id(), again.public().to_peer_id());
    std::fs::write(dir.path().join("bad.key"), b"not a key").unwrap();
    let err =
        streamspace_transport::identity::load_or_create(&dir.path().join("bad.key")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);

    let quic = |k: Keypair| {
        let mut c = Config::new(k);
        c.listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()];
        c
    };
    let seeder = start(quic(key), MemoryStore::new()).await;
    assert_eq!(seeder.peer_id(), again.public().to_peer_id());
    let data = random(600_000, 8);
    let root = publish(&seeder, &data).await;
    let viewer = start(quic(Keypair::generate_ed25519()), MemoryStore::new()).await;
    let addr = seeder.dialable_addrs().await.unwrap()[0].clone();
    assert!(addr.to_string().contains("/quic-v1/"), "{addr}");
    viewer.dial(addr).await.unwrap();
    viewer
        .fetch(root, direct(vec![seeder.peer_id()]))
        .await
        .unwrap();
    assert_eq!(
        read_back(viewer.store().as_ref(), root, ByteRange::default()).await,
        data
    );
    viewer.shutdown().await;
    seeder.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_window_block_is_asked_of_another_peer() {
    let data = random(1024 * 1024, 9);
    let slow_store = MemoryStore::new();
    let root = add_reader(
        Some(&slow_store),
        std::io::Cursor::new(data.clone()),
        ImportOptions::default(),
    )
    .await
    .unwrap()
    .cid;
    let slow = start(config(), Slow(slow_store, Duration::from_secs(3))).await;
    let fast = start(config(), MemoryStore::new()).await;
    publish(&fast, &data).await;
    let viewer = start(config(), MemoryStore::new()).await;
    for addr in [
        slow.dialable_addrs().await.unwrap(),
        fast.dialable_addrs().await.unwrap(),
    ] {
        viewer.dial(addr[0].clone()).await.unwrap();
    }
    let report = viewer
        .fetch(
            root,
            FetchOptions {
                deadline: Duration::from_millis(200),
                // The slow peer first: it has not been measured yet and sorts first here.
                ..direct(vec![slow.peer_id(), fast.peer_id()])
            },
        )
        .await
        .unwrap();
    assert_eq!(
        read_back(viewer.store().as_ref(), root, ByteRange::default()).await,
        data
    );
    // Whatever went to the slow peer first was asked again of the fast one, well before the
    // slow peer's 3 seconds a block.
    assert!(report.elapsed < Duration::from_secs(3), "{report:?}");
    assert_eq!(report.bytes_from.get(&slow.peer_id()), None);
    if report.hedged == 0 {
        // Nothing was asked of the slow peer at all.
        assert_eq!(slow.stats().shards_served, 0);
    } else {
        // What the fast peer sent first was cancelled at the slow one.
        assert!(report.cancelled >= 1, "{report:?}");
    }
    for n in [&viewer, &fast] {
        n.shutdown().await;
    }
    slow.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_messages_reach_every_subscriber_and_oversized_ones_are_refused() {
    let hub = start(config(), MemoryStore::new()).await;
    let mut members = Vec::new();
    for _ in 0..4 {
        let mut c = config();
        c.bootstrap = hub.dialable_addrs().await.unwrap();
        members.push(start(c, MemoryStore::new()).await);
    }
    let topic = "/streamspace/test/update/thermostat";
    hub.subscribe(topic).await.unwrap();
    let mut inboxes = Vec::new();
    for m in &members {
        inboxes.push(m.events());
        m.subscribe(topic).await.unwrap();
    }
    // The mesh forms over the next heartbeats, and a subscriber that has not joined yet misses
    // what is published before: publish again (each a new message) until every subscriber has
    // received one.
    let payload = Bytes::from_static(b"release 1.2.0");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut got: Vec<Option<(String, Option<PeerId>, Bytes)>> = vec![None; inboxes.len()];
    while got.iter().any(Option::is_none) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every subscriber received a message: {got:?}"
        );
        // Before any subscriber has joined, publishing fails; that is retried too.
        let _ = hub.publish(topic, payload.clone()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (inbox, slot) in inboxes.iter_mut().zip(&mut got) {
            while let Ok(event) = inbox.try_recv() {
                if let NodeEvent::Message {
                    topic: t,
                    source,
                    data,
                } = event
                {
                    slot.get_or_insert((t, source, data));
                }
            }
        }
    }
    for (t, source, data) in got.into_iter().flatten() {
        assert_eq!(t, topic);
        assert_eq!(source, Some(hub.peer_id()));
        assert_eq!(data, payload);
    }
    let too_big = Bytes::from(vec![0u8; streamspace_transport::MAX_PUBSUB_MESSAGE + 1]);
    assert!(matches!(
        hub.publish(topic, too_big).await,
        Err(streamspace_transport::NodeError::PubSub { .. })
    ));
    hub.shutdown().await;
    for m in members {
        m.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_blocks_are_not_sent_and_a_later_want_is_served() {
    let server = start(config(), MemoryStore::new()).await;
    let blocks: Vec<Cid> = {
        let mut out = Vec::new();
        for i in 0..3u8 {
            let root = publish(&server, &[i; 100]).await;
            out.push(root);
        }
        out
    };
    let client = start(config(), MemoryStore::new()).await;
    client
        .dial(server.dialable_addrs().await.unwrap()[0].clone())
        .await
        .unwrap();
    let peer = server.peer_id();
    let accepted = client
        .request(
            peer,
            Request::Cancel {
                cids: blocks[1..].to_vec(),
            },
        )
        .await
        .unwrap();
    assert_eq!(accepted, Response::Accepted);
    let want = |cids: Vec<Cid>| Request::Want { root: None, cids };
    let Response::Blocks {
        blocks: sent,
        missing,
        deferred,
        cancelled,
    } = client.request(peer, want(blocks.clone())).await.unwrap()
    else {
        panic!("not a blocks response");
    };
    assert_eq!(
        sent.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        [blocks[0]]
    );
    assert!(missing.is_empty() && deferred.is_empty());
    // The cancelled blocks are named in the answer: the cancel is seen to have held.
    assert_eq!(cancelled, blocks[1..]);
    assert_eq!(server.stats().cancelled, 2);
    // A cancel holds for one want only: asked again, the blocks come.
    let Response::Blocks { blocks: sent, .. } = client
        .request(peer, want(blocks[1..].to_vec()))
        .await
        .unwrap()
    else {
        panic!("not a blocks response");
    };
    assert_eq!(sent.len(), 2);
    for n in [&client, &server] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_peer_is_asked_when_the_dht_names_no_provider() {
    // The holder is taken to be behind NAT: its DHT runs in client mode, so no provider
    // record of it is stored anywhere and it answers no DHT query.
    let mut hc = config();
    hc.nat.reachability = Some(streamspace_transport::node::Reachability::Private);
    let holder = start(hc, MemoryStore::new()).await;
    let data = random(600_000, 21);
    let root = publish(&holder, &data).await;
    let mut vc = config();
    vc.bootstrap = holder.dialable_addrs().await.unwrap();
    let viewer = start(vc, MemoryStore::new()).await;
    // A fetch started at once, while the bootstrap connection may still be coming up.
    let report = viewer.fetch(root, FetchOptions::default()).await.unwrap();
    assert_eq!(
        report.bytes_from.keys().collect::<Vec<_>>(),
        [&holder.peer_id()]
    );
    assert_eq!(
        read_back(viewer.store().as_ref(), root, ByteRange::new(0, None)).await,
        data
    );
    viewer.shutdown().await;
    holder.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_nobody_holds_ends_the_fetch_before_the_stall_deadline() {
    let holder = start(config(), MemoryStore::new()).await;
    let mut c = config();
    c.bootstrap = holder.dialable_addrs().await.unwrap();
    let asker = start(c, MemoryStore::new()).await;
    while asker.connected_peers().await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let unknown = streamspace_shard::block::cid_of(
        cid::Version::V1,
        streamspace_shard::block::RAW,
        b"held by nobody",
    );
    // A stall deadline of ten minutes: the fetch must end on the peers' answers instead.
    let options = FetchOptions {
        stall: Duration::from_secs(600),
        ..FetchOptions::default()
    };
    let r = tokio::time::timeout(Duration::from_secs(60), asker.fetch(unknown, options))
        .await
        .expect("the fetch ends when every peer says it lacks the root");
    match r {
        Err(FetchError::Unavailable { cid, tried }) => {
            assert_eq!(cid, unknown);
            assert_eq!(tried, 1);
        }
        other => panic!("{other:?}"),
    }
    for n in [&asker, &holder] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_could_not_be_dialed_yet_is_asked_again_after_its_bench() {
    let holder = start(config(), MemoryStore::new()).await;
    let data = random(600_000, 31);
    let root = publish(&holder, &data).await;
    // The fetcher knows the holder's id but not yet its address: its first requests fail at
    // once, three failures bench the holder, and it is the only peer.
    let fetcher = start(config(), MemoryStore::new()).await;
    let options = FetchOptions {
        peers: vec![holder.peer_id()],
        use_dht: false,
        deadline: Duration::from_millis(500),
        ..FetchOptions::default()
    };
    let fetch = {
        let f = fetcher.clone();
        tokio::spawn(async move { f.fetch(root, options).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Its address becomes known while it is benched: the fetch waits for the bench to end
    // and completes, instead of ending on the first three failures.
    fetcher
        .dial(holder.dialable_addrs().await.unwrap()[0].clone())
        .await
        .unwrap();
    let report = fetch.await.unwrap().unwrap();
    assert!(report.bytes_from.contains_key(&holder.peer_id()));
    assert_eq!(
        read_back(fetcher.store().as_ref(), root, ByteRange::default()).await,
        data
    );
    for n in [&fetcher, &holder] {
        n.shutdown().await;
    }
}

/// Waits until `node` has received `n` shards (or fails after 20 s).
async fn await_received<S: BlockStore + 'static>(node: &Node<S>, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while node.stats().shards_received < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} shards received, waiting for {n}",
            node.stats().shards_received
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_fetch_runs_ahead_of_its_reader_by_the_pace_and_no_further() {
    // 16 leaves of 256 KiB.
    let data = random(4 << 20, 21);
    let origin = start(config(), MemoryStore::new()).await;
    let root = publish(&origin, &data).await;
    let viewer = start(config(), MemoryStore::new()).await;
    viewer
        .dial(origin.dialable_addrs().await.unwrap()[0].clone())
        .await
        .unwrap();
    let (position, rx) = tokio::sync::watch::channel(0u64);
    let options = FetchOptions {
        pace: Some(Pace {
            position: rx,
            ahead: 1 << 20,
        }),
        // Waiting for the reader is no stall, however long it waits.
        stall: Duration::from_millis(300),
        ..direct(vec![origin.peer_id()])
    };
    let fetch = tokio::spawn({
        let viewer = viewer.clone();
        async move { viewer.fetch(root, options).await }
    });
    // Leaves starting at 0, 256 KiB, ..., 1 MiB: five, and the root.
    await_received(&viewer, 6).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(viewer.stats().shards_received, 6, "fetched past the pace");
    assert!(!fetch.is_finished());
    // The reader moves on: the rest (offsets up to 4 MiB) is fetched and the fetch ends.
    position.send_replace(3 << 20);
    let report = fetch.await.unwrap().unwrap();
    assert_eq!((report.blocks, report.fetched), (17, 17));
    assert_eq!(
        read_back(viewer.store().as_ref(), root, ByteRange::default()).await,
        data
    );

    // A reader that goes away ends its fetch.
    let other = publish(&origin, &random(4 << 20, 22)).await;
    let (position, rx) = tokio::sync::watch::channel(0u64);
    let from = origin.peer_id();
    let fetch = tokio::spawn({
        let viewer = viewer.clone();
        async move {
            viewer
                .fetch(
                    other,
                    FetchOptions {
                        pace: Some(Pace {
                            position: rx,
                            ahead: 1 << 20,
                        }),
                        ..direct(vec![from])
                    },
                )
                .await
        }
    });
    await_received(&viewer, 17 + 6).await;
    drop(position);
    let e = fetch.await.unwrap().unwrap_err();
    assert!(matches!(e, FetchError::ReaderGone(c) if c == other), "{e}");
    for n in [viewer, origin] {
        n.shutdown().await;
    }
}
