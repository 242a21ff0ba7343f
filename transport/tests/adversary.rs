//! A hostile peer's DAGs, fetched by real nodes on 127.0.0.1: bombs of links, DAGs deeper
//! than any reader follows, roots that declare less than they hold. Each fetch ends with a
//! typed error before it queues or stores more than its budget, and the same node then
//! fetches honest content from the same peer, bytes checked.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cid::{Cid, Version};
use futures::{StreamExt, TryStreamExt};
use libp2p::identity::Keypair;
use proptest::prelude::*;
use rand::{RngCore, SeedableRng};
use streamspace_shard::block::{Block, DAG_PB, RAW, cid_of};
use streamspace_shard::dag::{MAX_DEPTH, walk};
use streamspace_shard::export::{ByteRange, cat};
use streamspace_shard::import::{ImportOptions, Layout};
use streamspace_shard::pb::{DataType, PbLink, PbNode, UnixFsData};
use streamspace_shard::store::{BlockStore, MemoryStore, StoreError, add_reader};
use streamspace_transport::bitswap::message::WantType;
use streamspace_transport::meter::Free;
use streamspace_transport::{Budget, Config, Exceeded, FetchError, FetchOptions, Node, PeerId};

/// A store that counts the blocks asked of it: on a serving node, the blocks peers wanted.
#[derive(Debug, Default)]
struct Counting {
    inner: MemoryStore,
    gets: AtomicU64,
}

impl Counting {
    fn gets(&self) -> u64 {
        self.gets.load(Ordering::SeqCst)
    }
}

impl BlockStore for Counting {
    async fn get(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(cid).await
    }
    async fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
        self.inner.has(cid).await
    }
    async fn size(&self, cid: &Cid) -> Result<Option<usize>, StoreError> {
        self.inner.size(cid).await
    }
    async fn put_many(&self, blocks: Vec<Block>) -> Result<(), StoreError> {
        self.inner.put_many(blocks).await
    }
    async fn delete(&self, cid: &Cid) -> Result<bool, StoreError> {
        self.inner.delete(cid).await
    }
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn config() -> Config {
    let mut c = Config::new(Keypair::generate_ed25519()).loopback();
    c.request_timeout = Duration::from_secs(5);
    c
}

/// Options for a fetch from these peers only, without the DHT.
fn direct(peers: Vec<PeerId>) -> FetchOptions {
    FetchOptions {
        peers,
        use_dht: false,
        ..FetchOptions::default()
    }
}

/// A dag-pb block linking `links` in order, with `data` (a UnixFS node) if any.
fn dag_pb(links: &[Cid], data: Option<UnixFsData>) -> Block {
    let node = PbNode {
        links: links
            .iter()
            .map(|cid| PbLink {
                cid: *cid,
                name: None,
                tsize: None,
            })
            .collect(),
        data: data.map(|d| d.encode()),
    };
    Block::encode(Version::V1, DAG_PB, node.encode())
}

/// The CID of a raw block holding `data` (the block itself need not exist anywhere).
fn raw_cid(data: &[u8]) -> Cid {
    cid_of(Version::V1, RAW, data)
}

/// A UnixFS file node declaring `filesize` bytes (and `blocksizes`, if given).
fn file_node(filesize: u64, blocksizes: Vec<u64>) -> UnixFsData {
    let mut d = UnixFsData::new(DataType::File);
    d.filesize = Some(filesize);
    d.blocksizes = blocksizes;
    d
}

/// A serving node holding `blocks`, and a fetching node connected to it.
async fn pair(blocks: Vec<Block>) -> (Node<Counting>, Node<MemoryStore>) {
    let server = Node::start(config(), Arc::new(Counting::default()), Arc::new(Free))
        .await
        .unwrap();
    server.store().inner.put_many(blocks).await.unwrap();
    let mut c = config();
    c.bootstrap = server.dialable_addrs().await.unwrap();
    let fetcher = Node::start(c, Arc::new(MemoryStore::new()), Arc::new(Free))
        .await
        .unwrap();
    (server, fetcher)
}

/// The serving node still answers honestly: a 1 MiB file published on it is fetched whole
/// and reads back byte for byte.
async fn honest_fetch_completes(server: &Node<Counting>, fetcher: &Node<MemoryStore>, seed: u64) {
    let data = random(1 << 20, seed);
    let root = add_reader(
        Some(server.store().as_ref()),
        std::io::Cursor::new(data.clone()),
        ImportOptions::default(),
    )
    .await
    .unwrap()
    .cid;
    let report = fetcher
        .fetch(root, direct(vec![server.peer_id()]))
        .await
        .unwrap();
    assert_eq!(report.blocks, 5, "4 leaves of 256 KiB and the root");
    let parts: Vec<Bytes> = cat(fetcher.store().as_ref(), root, ByteRange::ALL)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(parts.concat(), data);
}

/// A comb of `teeth` dag-pb nodes, none declaring a size: node k links node k+1 first, then
/// `width - 1` distinct blocks the peer does not even hold, so that every node fetched
/// queues `width` more blocks and the next node is always first in playback order. The
/// peer holds the spine only.
fn comb(teeth: usize, width: usize) -> Vec<Block> {
    let mut spine: Vec<Block> = Vec::new();
    for k in (0..teeth).rev() {
        let mut links: Vec<Cid> = spine.last().map(|b| *b.cid()).into_iter().collect();
        let missing = width - links.len();
        links.extend((0..missing).map(|j| raw_cid(format!("tooth {k} {j}").as_bytes())));
        spine.push(dag_pb(&links, None));
    }
    spine.reverse();
    spine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_bomb_declaring_no_size_ends_at_the_default_budget() {
    // 10 nodes of 8,192 links: 81,921 distinct blocks, more than an undeclared root may
    // queue (65,536).
    let spine = comb(10, 8192);
    let root = *spine[0].cid();
    let (server, fetcher) = pair(spine).await;

    let err = fetcher
        .fetch(root, direct(vec![server.peer_id()]))
        .await
        .unwrap_err();
    let limit = Budget::UNDECLARED.blocks;
    assert!(
        matches!(err, FetchError::OverBudget { root: r, exceeded: Exceeded::Blocks(n) } if r == root && n == limit),
        "{err}"
    );
    // Every block wanted of the peer was queued first, and the queue never passed the budget;
    // only 8 of the spine's 10 nodes were needed to find the DAG over it.
    assert!(
        server.store().gets() <= limit,
        "{} blocks wanted",
        server.store().gets()
    );
    let stats = server.stats();
    assert!(stats.shards_served <= 8, "{stats:?}");
    assert_eq!(fetcher.store().len() as u64, stats.shards_served);

    honest_fetch_completes(&server, &fetcher, 1).await;
    server.shutdown().await;
    fetcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_given_in_the_options_bounds_the_fetch() {
    let spine = comb(8, 64);
    let root = *spine[0].cid();
    let (server, fetcher) = pair(spine).await;

    let budget = Budget {
        blocks: 100,
        bytes: u64::MAX,
    };
    let err = fetcher
        .fetch(
            root,
            FetchOptions {
                budget: Some(budget),
                ..direct(vec![server.peer_id()])
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::OverBudget {
                exceeded: Exceeded::Blocks(100),
                ..
            }
        ),
        "{err}"
    );
    // The root and one more spine node queue 1 + 64 + 64 > 100.
    assert!(server.store().gets() <= 100, "{}", server.store().gets());
    assert!(server.stats().shards_served <= 2, "{:?}", server.stats());

    honest_fetch_completes(&server, &fetcher, 2).await;
    server.shutdown().await;
    fetcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_declaring_a_small_file_gets_the_budget_it_declares() {
    // A 64 KiB file, says the root, over 5,000 links.
    let links: Vec<Cid> = (0..5000u32).map(|j| raw_cid(&j.to_be_bytes())).collect();
    let bomb = dag_pb(&links, Some(file_node(64 << 10, Vec::new())));
    let root = *bomb.cid();
    let declared = Budget::for_root(&root, bomb.data());
    assert_eq!(declared, Budget::for_size(64 << 10));
    let (server, fetcher) = pair(vec![bomb]).await;

    let err = fetcher
        .fetch(root, direct(vec![server.peer_id()]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::OverBudget { exceeded: Exceeded::Blocks(n), .. } if n == declared.blocks),
        "{err}"
    );
    // The root was the only block wanted: its links were refused before any was asked for.
    assert_eq!(server.store().gets(), 1);
    assert_eq!(fetcher.store().len(), 1);

    honest_fetch_completes(&server, &fetcher, 3).await;
    server.shutdown().await;
    fetcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_declaring_fewer_bytes_than_it_links_stores_no_more_than_declared() {
    // A 256 KiB file, says the root, over eight distinct 1 MiB leaves.
    let leaves: Vec<Block> = (0..8)
        .map(|i| Block::encode(Version::V1, RAW, Bytes::from(random(1 << 20, 100 + i))))
        .collect();
    let links: Vec<Cid> = leaves.iter().map(|b| *b.cid()).collect();
    let bomb = dag_pb(&links, Some(file_node(256 << 10, vec![32 << 10; 8])));
    let root = *bomb.cid();
    let budget = Budget::for_size(256 << 10);
    let mut blocks = leaves;
    blocks.push(bomb);
    let (server, fetcher) = pair(blocks).await;

    let err = fetcher
        .fetch(root, direct(vec![server.peer_id()]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::OverBudget { exceeded: Exceeded::Bytes(n), .. } if n == budget.bytes),
        "{err}"
    );
    // Blocks past the budget were dropped unstored.
    assert!(
        fetcher.store().bytes() <= budget.bytes,
        "{} bytes stored",
        fetcher.store().bytes()
    );
    assert!(fetcher.stats().bytes_received <= budget.bytes);
    assert!(
        fetcher.store().len() < 4,
        "{} blocks stored",
        fetcher.store().len()
    );

    honest_fetch_completes(&server, &fetcher, 4).await;
    server.shutdown().await;
    fetcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dag_deeper_than_any_reader_follows_ends_at_max_depth() {
    // A chain of MAX_DEPTH + 6 nodes, each linking the next.
    let mut chain: Vec<Block> = vec![dag_pb(&[raw_cid(b"the bottom")], None)];
    for _ in 0..MAX_DEPTH + 5 {
        let below = *chain.last().unwrap().cid();
        chain.push(dag_pb(&[below], None));
    }
    chain.reverse();
    let root = *chain[0].cid();
    let too_deep = *chain[MAX_DEPTH + 1].cid();
    let (server, fetcher) = pair(chain).await;

    let err = fetcher
        .fetch(root, direct(vec![server.peer_id()]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::TooDeep(c) if c == too_deep),
        "{err}"
    );
    // Depths 0..=MAX_DEPTH were fetched, nothing below.
    assert_eq!(server.store().gets(), MAX_DEPTH as u64 + 1);
    assert!(!fetcher.store().has(&too_deep).await.unwrap());

    honest_fetch_completes(&server, &fetcher, 5).await;
    server.shutdown().await;
    fetcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_linked_ten_thousand_times_is_fetched_once() {
    // A 10,000 KiB file of one 1 KiB leaf repeated: valid UnixFS, read back whole.
    let leaf = Block::encode(Version::V1, RAW, Bytes::from(random(1024, 6)));
    let links = vec![*leaf.cid(); 10_000];
    let root_block = dag_pb(&links, Some(file_node(10_000 * 1024, vec![1024; 10_000])));
    let root = *root_block.cid();
    let (server, fetcher) = pair(vec![root_block, leaf.clone()]).await;

    let report = fetcher
        .fetch(root, direct(vec![server.peer_id()]))
        .await
        .unwrap();
    assert_eq!((report.blocks, report.fetched), (2, 2), "{report:?}");
    assert_eq!(server.store().gets(), 2);
    assert_eq!(server.stats().shards_served, 2);
    let parts: Vec<Bytes> = cat(fetcher.store().as_ref(), root, ByteRange::ALL)
        .try_collect()
        .await
        .unwrap();
    let read = parts.concat();
    assert_eq!(read.len(), 10_000 * 1024);
    assert!(read.chunks(1024).all(|c| c == &leaf.data()[..]));

    // A range over the repeated leaf: the leaf again, once.
    let other = Node::start(
        {
            let mut c = config();
            c.bootstrap = server.dialable_addrs().await.unwrap();
            c
        },
        Arc::new(MemoryStore::new()),
        Arc::new(Free),
    )
    .await
    .unwrap();
    let report = other
        .fetch(
            root,
            FetchOptions {
                range: Some((1000, 5000)),
                ..direct(vec![server.peer_id()])
            },
        )
        .await
        .unwrap();
    assert_eq!(report.fetched, 2, "{report:?}");

    honest_fetch_completes(&server, &fetcher, 7).await;
    other.shutdown().await;
    server.shutdown().await;
    fetcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_links_to_fifty_thousand_links_is_three_blocks() {
    // Without de-duplication, 2.5 billion queued entries.
    let y = Block::encode(Version::V1, RAW, Bytes::from_static(b"y"));
    let x = dag_pb(&vec![*y.cid(); 50_000], None);
    let root_block = dag_pb(&vec![*x.cid(); 50_000], None);
    assert!(root_block.data().len() < streamspace_shard::block::MAX_BLOCK_SIZE);
    let root = *root_block.cid();
    let (server, fetcher) = pair(vec![root_block, x, y]).await;

    let report = fetcher
        .fetch(root, direct(vec![server.peer_id()]))
        .await
        .unwrap();
    assert_eq!((report.blocks, report.fetched), (3, 3), "{report:?}");
    assert_eq!(server.store().gets(), 3);

    honest_fetch_completes(&server, &fetcher, 8).await;
    server.shutdown().await;
    fetcher.shutdown().await;
}

/// Every distinct block of the DAG below `root` and their bytes.
async fn size_of(store: &MemoryStore, root: Cid) -> (u64, u64) {
    walk(store, root)
        .fold((0u64, 0u64), |(n, b), r| async move {
            let (_, data) = r.unwrap();
            (n + 1, b + data.len() as u64)
        })
        .await
}

proptest! {
    /// The budget a file's root declares admits every DAG the importer makes of it with
    /// chunks of 1 KiB or more, whatever the layout, fanout and leaf format.
    #[test]
    fn the_declared_budget_admits_every_imported_file(
        len in 0usize..1_000_000,
        chunk in 1024usize..=65_536,
        max_links in 2usize..=16,
        trickle in any::<bool>(),
        v1 in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (imported, blocks, bytes, budget) = rt.block_on(async {
            let store = MemoryStore::new();
            let mut opts = ImportOptions::default().with_cid_version(u64::from(v1)).unwrap();
            opts.chunker = streamspace_shard::import::Chunker::Size(chunk);
            opts.max_links = max_links;
            opts.layout = if trickle { Layout::Trickle } else { Layout::Balanced };
            let imported = add_reader(Some(&store), std::io::Cursor::new(random(len, seed)), opts)
                .await
                .unwrap();
            let (blocks, bytes) = size_of(&store, imported.cid).await;
            let data = store.get(&imported.cid).await.unwrap().unwrap();
            (imported, blocks, bytes, Budget::for_root(&imported.cid, &data))
        });
        prop_assert!(imported.size == len as u64);
        prop_assert!(blocks <= budget.blocks, "{blocks} blocks, budget {budget:?}");
        prop_assert!(bytes <= budget.bytes, "{bytes} bytes, budget {budget:?}");
    }


    /// Whatever a root block holds, its budget is decided without a panic: a block that
    /// is not a UnixFS file gets the undeclared budget.
    #[test]
    fn any_root_block_gets_a_budget(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let data = Bytes::from(data);
        let cid = cid_of(Version::V1, DAG_PB, &data);
        let budget = Budget::for_root(&cid, &data);
        let file = PbNode::decode(data.clone())
            .ok()
            .and_then(|n| n.data)
            .and_then(|d| UnixFsData::decode(&d).ok())
            .is_some_and(|u| matches!(u.kind, DataType::File | DataType::Raw));
        if !file {
            prop_assert_eq!(budget, Budget::UNDECLARED);
        }
        prop_assert_eq!(Budget::for_root(&raw_cid(&data), &data), Budget::UNDECLARED);
    }

    /// A UnixFS file's root declares its size by `filesize`, or else by its `blocksizes`
    /// and inline data; other kinds declare none.
    #[test]
    fn a_root_declares_the_size_of_the_file_it_holds(
        kind in prop_oneof![
            Just(DataType::File),
            Just(DataType::Raw),
            Just(DataType::Directory),
            Just(DataType::HamtShard),
            Just(DataType::Symlink),
        ],
        filesize in proptest::option::of(any::<u64>()),
        blocksizes in proptest::collection::vec(0u64..1 << 40, 0..8),
        inline in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
    ) {
        let mut d = UnixFsData::new(kind);
        d.filesize = filesize;
        d.blocksizes = blocksizes.clone();
        d.data = inline.clone().map(Bytes::from);
        let links: Vec<Cid> = (0..blocksizes.len() as u32).map(|i| raw_cid(&i.to_be_bytes())).collect();
        let block = dag_pb(&links, Some(d));
        let budget = Budget::for_root(block.cid(), block.data());
        let summed = blocksizes.iter().sum::<u64>() + inline.as_ref().map_or(0, |i| i.len() as u64);
        let expected = match (kind, filesize) {
            (DataType::File | DataType::Raw, Some(size)) => Budget::for_size(size),
            (DataType::File | DataType::Raw, None) if !blocksizes.is_empty() || inline.is_some() => {
                Budget::for_size(summed)
            }
            _ => Budget::UNDECLARED,
        };
        prop_assert_eq!(budget, expected);
    }
}

/// A peer that wants many large blocks over Bitswap makes the node read each of them once,
/// though they go out over several serving rounds (each bounded by the peer's outstanding
/// bytes); a peer that only asks whether the node has them makes it read none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitswap_wants_read_each_block_once_and_haves_read_none() {
    let blocks: Vec<Block> = (0..64)
        .map(|i| Block::encode(Version::V1, RAW, Bytes::from(random(256 << 10, 900 + i))))
        .collect();
    let cids: Vec<Cid> = blocks.iter().map(|b| *b.cid()).collect();
    let (server, fetcher) = pair(blocks.clone()).await;
    let peer = server.peer_id();
    // Connected once a want-have is answered.
    let mut connected = false;
    for _ in 0..200 {
        let r = fetcher
            .bitswap_want(peer, vec![cids[0]], WantType::Have)
            .await
            .unwrap();
        if r.have == vec![cids[0]] {
            connected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        connected,
        "the fetcher never reached the server over Bitswap"
    );
    assert_eq!(server.store().gets(), 0, "a HAVE reads no block");

    let r = fetcher
        .bitswap_want(peer, cids.clone(), WantType::Have)
        .await
        .unwrap();
    assert_eq!(r.have.len(), 64);
    assert_eq!(server.store().gets(), 0, "HAVEs read no block");

    let r = fetcher
        .bitswap_want(peer, cids.clone(), WantType::Block)
        .await
        .unwrap();
    assert_eq!(
        r.blocks.len(),
        64,
        "every block arrives ({} unanswered)",
        r.unanswered.len()
    );
    for (cid, data) in &r.blocks {
        let b = blocks
            .iter()
            .find(|b| b.cid() == cid)
            .expect("a wanted block");
        assert_eq!(data, b.data());
    }
    assert_eq!(
        server.store().gets(),
        64,
        "each block read once, in whichever round sent it"
    );
    server.shutdown().await;
    fetcher.shutdown().await;
}

/// Counts what the metering hook is told was received (what a paying node would pay for).
#[derive(Default)]
struct Received {
    blocks: AtomicU64,
}

impl streamspace_transport::meter::Meter for Received {
    fn before_send(&self, _: &PeerId, _: &Cid, _: usize) -> streamspace_transport::meter::Decision {
        streamspace_transport::meter::Decision::Serve
    }
    fn received(&self, _: &PeerId, _: &Cid, _: usize) {
        self.blocks.fetch_add(1, Ordering::SeqCst);
    }
}

/// A peer pads every answer with valid blocks of its own (and answers have lists as if it held
/// everything): the fetcher stores and meters only the blocks it asked of it, so the padding
/// is never paid for, and counts against the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_padding_its_answers_is_neither_paid_nor_stored_for_the_padding() {
    use libp2p::request_response::{self, ProtocolSupport};
    use libp2p::swarm::SwarmEvent;
    use streamspace_transport::codec::{ExchangeCodec, PROTOCOL};
    use streamspace_transport::message::{Request, Response};

    let data = random(1 << 20, 31);
    let store = MemoryStore::new();
    let root = add_reader(
        Some(&store),
        std::io::Cursor::new(data.clone()),
        ImportOptions::default(),
    )
    .await
    .unwrap()
    .cid;
    let pads: Vec<Block> = (0..3)
        .map(|i| Block::encode(Version::V1, RAW, random(1000, 100 + i).into()))
        .collect();
    let mut swarm = support::raw_swarm(request_response::Behaviour::<ExchangeCodec>::new(
        [(PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default(),
    ));
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    let padder = *swarm.local_peer_id();
    let pad_cids: Vec<Cid> = pads.iter().map(|p| *p.cid()).collect();
    let server = tokio::spawn(async move {
        loop {
            let SwarmEvent::Behaviour(request_response::Event::Message {
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            }) = swarm.select_next_some().await
            else {
                continue;
            };
            let response = match request {
                Request::Want { cids, .. } => {
                    let mut blocks = Vec::new();
                    for c in cids {
                        if let Some(b) = store.get(&c).await.unwrap() {
                            blocks.push((c, b));
                        }
                    }
                    blocks.extend(pads.iter().map(|p| (*p.cid(), p.data().clone())));
                    Response::Blocks {
                        blocks,
                        missing: Vec::new(),
                        deferred: Vec::new(),
                        cancelled: Vec::new(),
                    }
                }
                Request::Have { cids, .. } => Response::Haves {
                    have: vec![true; cids.len()],
                },
                _ => Response::Accepted,
            };
            let _ = swarm.behaviour_mut().send_response(channel, response);
        }
    });
    let meter = Arc::new(Received::default());
    let fetcher = Node::start(config(), Arc::new(MemoryStore::new()), meter.clone())
        .await
        .unwrap();
    fetcher
        .dial(addr.with(libp2p::multiaddr::Protocol::P2p(padder)))
        .await
        .unwrap();
    let report = fetcher.fetch(root, direct(vec![padder])).await.unwrap();
    // Root and four leaves asked, stored and metered; every answer's three pads dropped.
    assert_eq!((report.blocks, report.fetched), (5, 5));
    assert_eq!(
        meter.blocks.load(Ordering::SeqCst),
        5,
        "padding was metered"
    );
    assert!(report.unrequested >= 3, "{report:?}");
    assert_eq!(report.unrequested % 3, 0);
    for c in &pad_cids {
        assert!(!fetcher.store().has(c).await.unwrap(), "padding stored");
    }
    let mut got = Vec::new();
    let mut parts = std::pin::pin!(cat(fetcher.store().as_ref(), root, ByteRange::default()));
    while let Some(p) = parts.next().await {
        got.extend_from_slice(&p.unwrap());
    }
    assert!(got == data);
    server.abort();
    fetcher.shutdown().await;
}
