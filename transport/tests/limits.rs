//! What one hostile peer, or a crowd of them, can make a node do, each bound tried through the
//! public API: connections per peer, a fair share of serving, have-list floods, replication
//! forced by strangers, the DHT's provider store. Each test checks what honest peers keep.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cid::{Cid, Version};
use futures::StreamExt;
use libp2p::Multiaddr;
use libp2p::identity::Keypair;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{SwarmEvent, dummy};
use rand::{RngCore, SeedableRng};
use streamspace_shard::block::{Block, RAW, cid_of};
use streamspace_shard::import::ImportOptions;
use streamspace_shard::store::{BlockStore, MemoryStore, StoreError, add_reader};
use streamspace_transport::message::{RefusalReason, Request, Response};
use streamspace_transport::meter::Free;
use streamspace_transport::{
    Config, Node, NodeEvent, PeerId, ReplicateAnything, ReplicationConfig, ReplicationPolicy, Tier,
};

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn config() -> Config {
    let mut c = Config::new(Keypair::generate_ed25519()).loopback();
    c.request_timeout = Duration::from_secs(10);
    c
}

async fn start<S: BlockStore + 'static>(config: Config, store: S) -> Node<S> {
    Node::start(config, Arc::new(store), Arc::new(Free))
        .await
        .unwrap()
}

async fn joined<S: BlockStore + 'static, T: BlockStore + 'static>(
    to: &Node<T>,
    store: S,
) -> Node<S> {
    let mut c = config();
    c.bootstrap = to.dialable_addrs().await.unwrap();
    let n = start(c, store).await;
    while !n.connected_peers().await.unwrap().contains(&to.peer_id()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    n
}

/// A store whose reads take `delay`: answers stay in preparation long enough for requests
/// sent together to be in preparation together.
#[derive(Debug)]
struct Slow {
    inner: MemoryStore,
    delay: Duration,
}

impl BlockStore for Slow {
    async fn get(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        tokio::time::sleep(self.delay).await;
        self.inner.get(cid).await
    }
    async fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
        self.inner.has(cid).await
    }
    async fn put_many(&self, blocks: Vec<Block>) -> Result<(), StoreError> {
        self.inner.put_many(blocks).await
    }
    async fn delete(&self, cid: &Cid) -> Result<bool, StoreError> {
        self.inner.delete(cid).await
    }
}

/// `n` raw blocks of 1 KiB on `store`.
async fn blocks<S: BlockStore>(store: &S, n: usize, seed: u64) -> Vec<Cid> {
    let blocks: Vec<Block> = (0..n)
        .map(|i| Block::encode(Version::V1, RAW, Bytes::from(random(1024, seed + i as u64))))
        .collect();
    let cids = blocks.iter().map(|b| *b.cid()).collect();
    store.put_many(blocks).await.unwrap();
    cids
}

fn is_overloaded(r: &Result<Response, streamspace_transport::RequestError>) -> bool {
    matches!(
        r,
        Ok(Response::Refused {
            reason: RefusalReason::Overloaded,
            ..
        })
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_flooding_wants_gets_its_share_and_an_honest_peer_is_served() {
    let mut c = config();
    c.limits.serves_per_peer = 4;
    let server = start(
        c,
        Slow {
            inner: MemoryStore::new(),
            delay: Duration::from_millis(200),
        },
    )
    .await;
    let cids = blocks(server.store().as_ref(), 8, 1).await;
    let hostile = joined(&server, MemoryStore::new()).await;
    let honest = joined(&server, MemoryStore::new()).await;

    // The hostile peer sends 100 wants at once, each taking the server 200 ms to answer:
    // without a share per peer it would hold every one of the server's 64 serving slots.
    let flood = {
        let (hostile, server, cids) = (hostile.clone(), server.peer_id(), cids.clone());
        tokio::spawn(async move {
            let asks = (0..100).map(|i| {
                let want = Request::Want {
                    root: None,
                    cids: vec![cids[i % cids.len()]],
                };
                let h = hostile.clone();
                async move { h.request(server, want).await }
            });
            futures::future::join_all(asks).await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Meanwhile the honest peer asks, one want after another, and each is answered.
    for cid in &cids {
        let r = honest
            .request(
                server.peer_id(),
                Request::Want {
                    root: None,
                    cids: vec![*cid],
                },
            )
            .await;
        match r {
            Ok(Response::Blocks { blocks, .. }) => assert_eq!(blocks.len(), 1),
            other => panic!("honest want answered {other:?}"),
        }
    }
    let answers = flood.await.unwrap();
    let refused = answers.iter().filter(|r| is_overloaded(r)).count();
    let served = answers
        .iter()
        .filter(|r| matches!(r, Ok(Response::Blocks { .. })))
        .count();
    assert_eq!(refused + served, 100, "{answers:?}");
    assert!(refused >= 50, "only {refused} of 100 refused");
    assert!(server.stats().overloaded >= refused as u64);
    // Once its answers are out, the hostile peer is served again.
    let again = hostile
        .request(
            server.peer_id(),
            Request::Want {
                root: None,
                cids: vec![cids[0]],
            },
        )
        .await;
    assert!(matches!(again, Ok(Response::Blocks { .. })), "{again:?}");
    server.shutdown().await;
    for n in [&hostile, &honest] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_have_query_flood_is_rate_limited_per_peer() {
    let mut c = config();
    c.limits.have_queries_per_second = 20;
    // Serving slots to spare: the rate limit, not the fair share, is what refuses here.
    c.limits.serves_per_peer = 1000;
    c.max_concurrent_serves = 1000;
    let server = start(c, MemoryStore::new()).await;
    let cids = blocks(server.store().as_ref(), 4, 2).await;
    let hostile = joined(&server, MemoryStore::new()).await;
    let honest = joined(&server, MemoryStore::new()).await;
    let have = Request::Have {
        root: None,
        cids: cids.clone(),
    };
    // 200 queries in four waves of 50 (fewer at once than a connection's streams): a burst of
    // 40 is allowed, and what the rate refills meanwhile; the rest is refused.
    let mut answers = Vec::new();
    let began = std::time::Instant::now();
    for _ in 0..4 {
        answers.extend(
            futures::future::join_all(
                (0..50).map(|_| hostile.request(server.peer_id(), have.clone())),
            )
            .await,
        );
    }
    // What the bucket can have given: the burst, and 20 a second since the first query.
    let most = 40 + (20.0 * began.elapsed().as_secs_f64()).ceil() as usize;
    let refused = answers.iter().filter(|r| is_overloaded(r)).count();
    let answered = answers
        .iter()
        .filter(|r| matches!(r, Ok(Response::Haves { .. })))
        .count();
    assert_eq!(refused + answered, 200, "{answers:?}");
    assert!(answered >= 40, "the burst is allowed: {answered}");
    assert!(
        answered <= most,
        "{answered} answered: more than the burst and its refill ({most})"
    );
    assert!(refused > 0, "nothing refused");
    // Another peer's budget is its own.
    match honest.request(server.peer_id(), have.clone()).await {
        Ok(Response::Haves { have }) => assert_eq!(have, vec![true; 4]),
        other => panic!("honest have answered {other:?}"),
    }
    for n in [&server, &hostile, &honest] {
        n.shutdown().await;
    }
}

/// A bare libp2p swarm dialing `addr` `n` times over TCP and noise; the connections it holds
/// once every dial has been answered and the refused ones are closed.
async fn raw_connections(addr: Multiaddr, peer: PeerId, n: usize) -> usize {
    let mut swarm = support::raw_swarm(dummy::Behaviour);
    for _ in 0..n {
        swarm
            .dial(
                DialOpts::peer_id(peer)
                    .addresses(vec![addr.clone()])
                    .condition(PeerCondition::Always)
                    .build(),
            )
            .unwrap();
    }
    let mut outcomes = 0;
    let mut open = 0usize;
    // Every dial ends established or failed; a refused connection is closed by the server
    // right after its handshake.
    tokio::time::timeout(Duration::from_secs(20), async {
        while outcomes < n {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => {
                    outcomes += 1;
                    open += 1;
                }
                SwarmEvent::OutgoingConnectionError { .. } => outcomes += 1,
                SwarmEvent::ConnectionClosed { .. } => open -= 1,
                _ => {}
            }
        }
        // Then the closes of the refused ones, until the count holds still for a second.
        while let Ok(e) =
            tokio::time::timeout(Duration::from_secs(1), swarm.select_next_some()).await
        {
            if let SwarmEvent::ConnectionClosed { .. } = e {
                open -= 1;
            }
        }
    })
    .await
    .expect("dials answered");
    assert_eq!(
        open,
        swarm.network_info().connection_counters().num_established() as usize
    );
    open
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_opening_many_connections_keeps_at_most_its_limit() {
    let mut c = config();
    c.limits.max_connections_per_peer = 3;
    let server = start(c, MemoryStore::new()).await;
    let addr = server.listen_addrs().await.unwrap()[0].clone();
    let open = raw_connections(addr, server.peer_id(), 12).await;
    assert!((1..=3).contains(&open), "{open} connections kept");
    let status = server.nat_status().await.unwrap();
    let mut per_peer = std::collections::HashMap::<PeerId, usize>::new();
    for c in &status.connections {
        *per_peer.entry(c.peer).or_default() += 1;
    }
    assert!(per_peer.values().all(|n| *n <= 3), "{per_peer:?}");
    assert!(server.stats().refused_connections >= 9);
    // An honest peer still connects and is served.
    let honest = joined(&server, MemoryStore::new()).await;
    let cids = blocks(server.store().as_ref(), 1, 9).await;
    let r = honest
        .request(
            server.peer_id(),
            Request::Want {
                root: None,
                cids: cids.clone(),
            },
        )
        .await;
    assert!(matches!(r, Ok(Response::Blocks { .. })), "{r:?}");
    server.shutdown().await;
    honest.shutdown().await;
}

/// A policy admitting the roots it lists, counting every peer.
#[derive(Debug)]
struct Listed(HashSet<Cid>);

impl ReplicationPolicy for Listed {
    fn counts(&self, _: &PeerId) -> bool {
        true
    }
    fn admits(&self, root: &Cid) -> bool {
        self.0.contains(root)
    }
}

/// Waits for the Tier-1 node's replication event about `root`.
async fn replicated(events: &mut tokio::sync::broadcast::Receiver<NodeEvent>, root: Cid) -> bool {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.recv().await {
                Ok(NodeEvent::Replicated(r, ok)) if r == root => return ok,
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("a replication event")
}

/// Three strangers asking about `root` on `tier1`, as fetchers do.
async fn demand(tier1: &Node<MemoryStore>, root: Cid) -> Vec<Node<MemoryStore>> {
    let mut askers = Vec::new();
    for _ in 0..3 {
        let a = joined(tier1, MemoryStore::new()).await;
        let r = a
            .request(
                tier1.peer_id(),
                Request::Have {
                    root: Some(root),
                    cids: vec![root],
                },
            )
            .await;
        assert!(matches!(r, Ok(Response::Haves { .. })), "{r:?}");
        askers.push(a);
    }
    askers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_make_a_tier1_node_replicate_what_its_policy_does_not_admit() {
    let publisher = start(config(), MemoryStore::new()).await;
    let listed_data = random(600 * 1024, 21);
    let unlisted_data = random(600 * 1024, 22);
    let big_data = random(3 << 20, 23);
    let mut roots = Vec::new();
    for d in [&listed_data, &unlisted_data, &big_data] {
        let root = add_reader(
            Some(publisher.store().as_ref()),
            std::io::Cursor::new(d.clone()),
            ImportOptions::default(),
        )
        .await
        .unwrap()
        .cid;
        publisher.provide(root).await.unwrap();
        roots.push(root);
    }
    let (listed, unlisted, big) = (roots[0], roots[1], roots[2]);

    let mut c = config();
    c.tier = Tier::Tier1;
    c.bootstrap = publisher.dialable_addrs().await.unwrap();
    c.replication = ReplicationConfig {
        after: 3,
        max_bytes: 1 << 20,
        policy: Arc::new(Listed([listed, big].into_iter().collect())),
    };
    let tier1 = start(c, MemoryStore::new()).await;
    let mut events = tier1.events();

    // Three peers ask for an unlisted root: demand alone replicates nothing.
    let mut askers = demand(&tier1, unlisted).await;
    // Three ask for the listed one: it is replicated and provided.
    askers.extend(demand(&tier1, listed).await);
    assert!(replicated(&mut events, listed).await);
    assert!(tier1.store().has(&listed).await.unwrap());
    // Three ask for a listed root larger than the size cap: the replication stops at the cap.
    askers.extend(demand(&tier1, big).await);
    assert!(!replicated(&mut events, big).await);
    let held = tier1.store().bytes();
    assert!(
        held <= 700 * 1024 + (1 << 20) + (64 << 10),
        "{held} bytes held"
    );
    // Nothing of the unlisted root was fetched, though its demand came first.
    assert!(!tier1.store().has(&unlisted).await.unwrap());
    for n in askers.iter().chain([&tier1, &publisher]) {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_provides_five_thousand_roots() {
    let server = start(config(), MemoryStore::new()).await;
    let other = joined(&server, MemoryStore::new()).await;
    let roots: Vec<Cid> = (0u32..5_000)
        .map(|i| cid_of(Version::V1, RAW, &i.to_le_bytes()))
        .collect();
    for r in &roots {
        server.provide(*r).await.unwrap();
    }
    // The last root provided is found by another node (kad's default store kept 1,024).
    for r in [roots[0], roots[4_999]] {
        let found = other.find_providers(r).await.unwrap();
        assert!(found.contains(&server.peer_id()), "{r}: {found:?}");
    }
    server.shutdown().await;
    other.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_policy_replicates_nothing() {
    let publisher = start(config(), MemoryStore::new()).await;
    let root = add_reader(
        Some(publisher.store().as_ref()),
        std::io::Cursor::new(random(300 * 1024, 31)),
        ImportOptions::default(),
    )
    .await
    .unwrap()
    .cid;
    publisher.provide(root).await.unwrap();
    let mut c = config();
    c.tier = Tier::Tier1;
    c.bootstrap = publisher.dialable_addrs().await.unwrap();
    let tier1 = start(c, MemoryStore::new()).await;
    let askers = demand(&tier1, root).await;
    // The demand was counted (or not) as the answers went out; a replication would have
    // begun then. To be sure none is under way, a listed replication on a second node with
    // the same demand is the reference: it reports, this one does not.
    let mut c = config();
    c.tier = Tier::Tier1;
    c.bootstrap = publisher.dialable_addrs().await.unwrap();
    c.replication = ReplicationConfig {
        after: 3,
        policy: Arc::new(ReplicateAnything),
        ..ReplicationConfig::default()
    };
    let reference = start(c, MemoryStore::new()).await;
    let mut events = reference.events();
    let more = demand(&reference, root).await;
    assert!(replicated(&mut events, root).await);
    assert!(!tier1.store().has(&root).await.unwrap());
    assert_eq!(tier1.store().bytes(), 0);
    for n in askers
        .iter()
        .chain(&more)
        .chain([&tier1, &reference, &publisher])
    {
        n.shutdown().await;
    }
}
