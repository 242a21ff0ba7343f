//! Fetching a DAG, or the part of a file a byte range needs, from many peers at once.
//!
//! Blocks are wanted in playback order (depth-first, children in link order). The next
//! `window` blocks are requested first, in order; beyond the window, up to `lookahead` more are
//! requested rarest first (fewest known holders, ties broken differently on every node), so
//! that nodes fetching the same item at once spread its blocks among themselves instead of all
//! asking the origin for the same ones. Which peer holds what is learnt from have lists asked
//! every `refresh`; peers that hold everything (origins, seeders) are asked for blocks beyond the
//! window only when no other holder is known, with at most `origin_requests` such requests in
//! flight.
//!
//! Every block is verified against its CID before it is stored. A window block outstanding past
//! its `deadline` is also asked of another peer (the first verified copy wins); a request that
//! fails is asked elsewhere; a peer that sends a bad block is reported to the node, which bans
//! it past a threshold, and the fetch goes on with the others.
//!
//! What a DAG can make a fetch do is bounded, whatever its peers send: every block is queued
//! once (a block linked many times is fetched once), links deeper than [`MAX_DEPTH`] are
//! refused, and every fetch has a [`Budget`] of blocks and bytes, by default derived from the
//! size the root declares ([`Budget::for_root`]). A DAG over its budget ends the fetch with
//! [`FetchError::OverBudget`] before more than the budget is queued or stored.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cid::Cid;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::PeerId;
use streamspace_shard::block::{Block, DAG_PB};
use streamspace_shard::dag::MAX_DEPTH;
use streamspace_shard::pb::{DataType, PbNode, UnixFsData};
use streamspace_shard::store::{BlockStore, StoreError};

use crate::message::{MAX_WANT, RefusalReason, Request, Response, Tier};
use crate::node::{Node, RequestError};

/// How a fetch runs.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Peers to fetch from besides the providers the DHT names.
    pub peers: Vec<PeerId>,
    /// Whether to ask the DHT for providers (again every `rediscover`, to find other nodes
    /// fetching the same item). When it names none, the peers this node is connected to are
    /// asked instead, as Bitswap asks them.
    pub use_dht: bool,
    /// Whether to also ask the Tier-1 nodes this node is connected to (they replicate content
    /// that several peers ask them for).
    pub ask_tier1: bool,
    /// Whether to also ask the connected peers that speak Bitswap and not the exchange
    /// protocol (kubo and Helia nodes), as IPFS asks its connected peers.
    pub bitswap_peers: bool,
    /// Whether to announce on the DHT, as the fetch starts, that this node provides the item,
    /// so that others fetching it at the same time can take blocks from this one.
    pub announce: bool,
    /// Only the blocks of this byte range of the file (`offset`, `length`); `None` for the
    /// whole DAG. A length of zero fetches the root block alone (of a file or a directory).
    pub range: Option<(u64, u64)>,
    /// Blocks ahead of the playback position requested in order.
    pub window: usize,
    /// Blocks beyond the window requested at once, rarest first.
    pub lookahead: usize,
    /// Blocks per request.
    pub batch: usize,
    /// Requests in flight to one peer.
    pub per_peer: usize,
    /// Requests in flight to each peer holding everything, for blocks beyond the window.
    pub origin_requests: usize,
    /// How long a block beyond the window waits for another fetcher to take it from an origin
    /// before this node takes it from the origin itself. Among the nodes fetching an item at
    /// once, each block is the charge of one (by rendezvous hashing of block and peer ids):
    /// that one takes it from the origin, the others from it.
    pub origin_patience: Duration,
    /// A window block outstanding this long is also asked of another peer.
    pub deadline: Duration,
    /// How often have lists are refreshed.
    pub refresh: Duration,
    /// How often the DHT is asked again for providers (other nodes fetching the same item
    /// announce themselves there).
    pub rediscover: Duration,
    /// Failed or late requests after which a peer is left out of this fetch for twice the
    /// `deadline` (for good, if it refused service).
    pub max_failures: u32,
    /// The fetch fails when no block arrives for this long.
    pub stall: Duration,
    /// The most blocks and bytes the fetch may take in; `None` (the default) for the budget
    /// the root declares ([`Budget::for_root`]).
    pub budget: Option<Budget>,
    /// A reader that paces the fetch (a gateway streaming a film to a client): blocks are
    /// asked for only up to [`Pace::ahead`] bytes past the reader's position. `None` (the
    /// default) fetches as fast as peers send.
    pub pace: Option<Pace>,
}

/// The position of a reader that paces a fetch ([`FetchOptions::pace`]).
///
/// Blocks whose data starts more than `ahead` bytes past the position the reader last
/// published are neither asked of peers nor looked up in the store until the reader
/// advances, so what a slow reader makes a node fetch and keep is bounded by `ahead` (plus
/// one block). A fetch waiting for its reader does not stall; when the sender is dropped the
/// fetch ends with [`FetchError::ReaderGone`].
///
/// ```
/// use streamspace_transport::{FetchOptions, Pace};
///
/// let (position, rx) = tokio::sync::watch::channel(0u64);
/// let options = FetchOptions {
///     pace: Some(Pace { position: rx, ahead: 16 << 20 }),
///     ..FetchOptions::default()
/// };
/// // As the reader sends bytes of the file: `position.send_replace(offset)`.
/// # drop((position, options));
/// ```
#[derive(Debug, Clone)]
pub struct Pace {
    /// The byte offset in the file up to which the reader has read.
    pub position: tokio::sync::watch::Receiver<u64>,
    /// How many bytes past the position the fetch may run ahead.
    pub ahead: u64,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            peers: Vec::new(),
            use_dht: true,
            ask_tier1: true,
            bitswap_peers: true,
            announce: false,
            range: None,
            window: 16,
            lookahead: 256,
            batch: 4,
            per_peer: 4,
            origin_requests: 1,
            origin_patience: Duration::from_secs(3),
            deadline: Duration::from_secs(2),
            refresh: Duration::from_millis(100),
            rediscover: Duration::from_secs(2),
            max_failures: 3,
            stall: Duration::from_secs(30),
            budget: None,
            pace: None,
        }
    }
}

/// The most one fetch may take in: blocks queued (each distinct block once, the root
/// included) and bytes of blocks stored or found in the store.
///
/// # Examples
///
/// ```
/// use streamspace_transport::fetch::Budget;
/// // A 1 GiB file: room for chunks down to 1 KiB in a tree of fanout 2 or more.
/// let b = Budget::for_size(1 << 30);
/// assert_eq!(b.blocks, 2 * (1 << 20) + 64);
/// assert_eq!(b.bytes, (1 << 30) + (1 << 28) + (2 << 20));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Distinct blocks queued.
    pub blocks: u64,
    /// Bytes of blocks taken in.
    pub bytes: u64,
}

impl Budget {
    /// The budget of a root that declares no size (a directory, a HAMT shard, a raw block,
    /// a node that is not UnixFS): 65,536 blocks, 16 GiB (that many 256 KiB shards).
    pub const UNDECLARED: Self = Self {
        blocks: 65_536,
        bytes: 16 << 30,
    };

    /// The budget of a file of `size` bytes: its bytes and a quarter more for the dag-pb
    /// nodes around and above them, plus 2 MiB; two blocks per KiB of content (leaves of
    /// 1 KiB or more, in a tree of fanout 2 or more), plus 64.
    pub const fn for_size(size: u64) -> Self {
        Self {
            blocks: size.div_ceil(1024).saturating_mul(2).saturating_add(64),
            bytes: size.saturating_add(size / 4).saturating_add(2 << 20),
        }
    }

    /// The budget `root`'s block (`data`) declares: [`Budget::for_size`] of a UnixFS file's
    /// `filesize` (or, without one, the sum of its `blocksizes` and inline data), and
    /// [`Budget::UNDECLARED`] for anything else, an undecodable block included.
    pub fn for_root(root: &Cid, data: &Bytes) -> Self {
        if root.codec() != DAG_PB {
            return Self::UNDECLARED;
        }
        let declared = PbNode::decode(data.clone())
            .ok()
            .and_then(|node| node.data)
            .and_then(|d| UnixFsData::decode(&d).ok())
            .filter(|u| matches!(u.kind, DataType::File | DataType::Raw))
            .and_then(|u| {
                u.filesize.or_else(|| {
                    (!u.blocksizes.is_empty() || u.data.is_some()).then(|| {
                        u.blocksizes
                            .iter()
                            .fold(u.data.as_ref().map_or(0, |d| d.len() as u64), |a, b| {
                                a.saturating_add(*b)
                            })
                    })
                })
            });
        declared.map_or(Self::UNDECLARED, Self::for_size)
    }
}

/// The part of a fetch's [`Budget`] a DAG would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exceeded {
    /// The DAG has more distinct blocks than this.
    Blocks(u64),
    /// Its blocks hold more bytes than this.
    Bytes(u64),
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Blocks(n) => write!(f, "{n} blocks"),
            Self::Bytes(n) => write!(f, "{n} bytes"),
        }
    }
}

/// What a fetch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// Distinct blocks the DAG (or range) needed.
    pub blocks: u64,
    /// Of those, fetched from peers (the rest were in the store already).
    pub fetched: u64,
    /// Bytes of verified blocks stored, per peer that sent them.
    pub bytes_from: HashMap<PeerId, u64>,
    /// Bad blocks received (and discarded).
    pub bad_blocks: u64,
    /// Requests that failed or timed out and were asked elsewhere.
    pub retries: u64,
    /// Window blocks also asked of a second peer for being late.
    pub hedged: u64,
    /// Verified blocks that arrived after another copy (hedged requests).
    pub duplicates: u64,
    /// Blocks a peer sent that this fetch had not asked of it in that request (padding):
    /// dropped, not metered, and counted against the peer as a failure.
    pub unrequested: u64,
    /// Blocks cancelled at a peer after another peer sent them first (hedged requests).
    pub cancelled: u64,
    /// Time until the first verified block arrived.
    pub first_block: Option<Duration>,
    /// Time for the whole fetch.
    pub elapsed: Duration,
}

/// A fetch that could not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// Nobody to fetch from.
    #[error("no providers of {0}")]
    NoProviders(Cid),
    /// Every peer that could be asked for a block failed or lacked it.
    #[error("block {cid} is unavailable: {tried} peers tried")]
    Unavailable {
        /// The block.
        cid: Cid,
        /// Peers that were asked.
        tried: usize,
    },
    /// A verified block does not decode as the DAG node its CID says it is.
    #[error("block {cid} is not a valid DAG node: {reason}")]
    Malformed {
        /// The block.
        cid: Cid,
        /// What was wrong.
        reason: String,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The DAG holds more blocks or bytes than the fetch's [`Budget`]; nothing beyond the
    /// budget was queued or stored.
    #[error("fetching {root} would take in more than {exceeded}")]
    OverBudget {
        /// The root fetched.
        root: Cid,
        /// The limit it would pass.
        exceeded: Exceeded,
    },
    /// A block links deeper than [`MAX_DEPTH`] levels below the root (the linked block is
    /// not fetched).
    #[error("DAG deeper than {MAX_DEPTH} levels at {0}")]
    TooDeep(Cid),
    /// The fetched content could not be read back as a file.
    #[error(transparent)]
    Export(#[from] streamspace_shard::dag::ExportError),
    /// The node shut down.
    #[error("node has shut down")]
    Closed,
    /// The reader pacing the fetch ([`FetchOptions::pace`]) went away.
    #[error("the reader pacing the fetch of {0} went away")]
    ReaderGone(Cid),
}

#[derive(Debug, Clone)]
struct Need {
    cid: Cid,
    /// Byte offset of the block's data in the file.
    offset: u64,
    /// Peers that sent a bad copy or failed to deliver it.
    excluded: HashSet<PeerId>,
    /// Whether the local store was already asked for it.
    checked: bool,
    /// When it was first queued.
    queued: Instant,
}

impl Need {
    fn new(cid: Cid, offset: u64) -> Self {
        Self {
            cid,
            offset,
            excluded: HashSet::new(),
            checked: false,
            queued: Instant::now(),
        }
    }
}

#[derive(Debug)]
struct Flight {
    need: Need,
    since: Instant,
    peers: Vec<PeerId>,
    in_window: bool,
    hedged: bool,
}

#[derive(Debug, Default)]
struct PeerScore {
    inflight: usize,
    bytes: u64,
    busy: Duration,
    failures: u32,
    /// Refused service outright: never asked again in this fetch.
    refused: bool,
    /// Out after `max_failures` late or failed requests, until then; asked again afterwards
    /// (a node overloaded for a while is not lost for the whole fetch).
    benched_until: Option<Instant>,
    paused_until: Option<Instant>,
    /// Has answered a have list.
    informed: bool,
    /// Has never lacked a block it was asked about: an origin or seeder.
    complete: bool,
    have_pending: bool,
}

impl PeerScore {
    /// Whether the peer is out of this fetch now.
    fn out(&self, max_failures: u32) -> bool {
        self.refused
            || (self.failures >= max_failures
                && self.benched_until.is_none_or(|t| t > Instant::now()))
    }

    /// A late or failed request.
    fn failed(&mut self, max_failures: u32, bench: Duration) {
        self.failures += 1;
        if self.failures >= max_failures {
            // A bench too long to represent is for the rest of the fetch.
            match Instant::now().checked_add(bench) {
                Some(until) => self.benched_until = Some(until),
                None => self.refused = true,
            }
        }
    }

    /// Estimated bytes per second, optimistic for peers not tried yet, discounted by failures
    /// and by requests already in flight.
    fn score(&self) -> f64 {
        let rate = if self.busy.is_zero() {
            1e12
        } else {
            self.bytes as f64 / self.busy.as_secs_f64()
        };
        rate / f64::from(1 + self.failures) / (1 + self.inflight) as f64
    }
}

/// How much lower a peer reachable only through a relay scores.
const RELAYED_PENALTY: f64 = 16.0;

type Key = Vec<u32>;

/// A response's blocks, hashed off the fetch's task: those that are what their CIDs name,
/// and those that are not; and what the request asked for.
#[derive(Default)]
struct Checked {
    good: HashMap<Cid, Block>,
    bad: HashSet<Cid>,
    asked: HashSet<Cid>,
}

enum Done {
    /// The peer, the blocks asked, the response, the time it took, and the response's
    /// blocks checked.
    Want(
        PeerId,
        Vec<Key>,
        Result<Response, RequestError>,
        Duration,
        Checked,
    ),
    Have(PeerId, Vec<Cid>, Result<Response, RequestError>),
    /// Providers found, and whether any peer was there to ask.
    Providers(Vec<PeerId>, bool),
    Announced,
}

type Task = Pin<Box<dyn Future<Output = Done> + Send>>;

/// Everything one fetch keeps.
struct Session {
    root: Cid,
    me: PeerId,
    options: FetchOptions,
    start: Instant,
    report: FetchReport,
    pending: BTreeMap<Key, Need>,
    flying: HashMap<Key, Flight>,
    peers: HashMap<PeerId, PeerScore>,
    holders: HashMap<Cid, HashSet<PeerId>>,
    lacks: HashSet<(PeerId, Cid)>,
    have_round: usize,
    dht_running: bool,
    dht_answered: bool,
    /// DHT lookups answered after asking someone.
    dht_rounds: u32,
    last_progress: Instant,
    /// Every block ever queued, with its offset in the file for a range fetch (where the
    /// same block at another offset may need other children).
    queued: HashSet<(Cid, u64)>,
    /// For a range fetch, blocks queued and not yet at hand, with the other places in the
    /// file where they were queued since: those wait for the one copy.
    outstanding: HashMap<Cid, Vec<(Key, Need)>>,
    /// The budget, once known (from the options, or from the root once it is at hand).
    budget: Option<Budget>,
    /// Bytes of blocks taken in so far.
    taken: u64,
    /// Blocks whose data starts past this offset wait for the reader ([`Pace`]).
    limit: u64,
    /// Whether a reader paces the fetch.
    paced: bool,
    /// Whether a leaf (a block without links) has arrived: until then only the block at the
    /// playback position is asked for.
    started: bool,
    /// Peers reachable only through a relay now: asked after others of their class.
    relayed: HashSet<PeerId>,
}

impl Session {
    fn usable(&self, p: &PeerId, need: &Need) -> bool {
        !need.excluded.contains(p)
            && self
                .peers
                .get(p)
                .is_some_and(|s| !s.out(self.options.max_failures))
    }

    /// Fewest holders first (origins not counted); ties broken by a hash of the block and this
    /// node, so that nodes fetching together start on different blocks.
    fn rarity(&self, cid: &Cid) -> (usize, u64) {
        let holders = self.holders.get(cid).map_or(0, |h| {
            h.iter()
                .filter(|p| !self.peers.get(p).is_some_and(|s| s.complete))
                .count()
        });
        let mut h = std::hash::DefaultHasher::new();
        (cid, self.me).hash(&mut h);
        (holders, h.finish())
    }

    /// Whether this node is the one, among the nodes known to be fetching the item, that takes
    /// `cid` from an origin (highest rendezvous hash of block and peer).
    fn in_charge_of(&self, cid: &Cid) -> bool {
        let weight = |p: &PeerId| {
            let mut h = std::hash::DefaultHasher::new();
            (cid, p).hash(&mut h);
            h.finish()
        };
        let mine = weight(&self.me);
        !self.peers.iter().any(|(p, s)| {
            s.informed && !s.complete && !s.out(self.options.max_failures) && weight(p) > mine
        })
    }

    /// The peer to ask for `need` now, if any: a known holder, else a peer not yet heard
    /// from, else one holding everything (for blocks beyond the window, only while few
    /// requests to such peers are in flight).
    fn choose(
        &self,
        need: &Need,
        in_window: bool,
        taken: &HashMap<PeerId, Vec<(Key, bool)>>,
        skip: &[PeerId],
        now: Instant,
    ) -> Option<PeerId> {
        let o = &self.options;
        // Beyond the window, a peer holding everything is asked only by the fetcher in charge
        // of the block (or once the others waited long enough), and only `origin_requests` at
        // a time.
        let origin_ok =
            in_window || need.queued.elapsed() > o.origin_patience || self.in_charge_of(&need.cid);
        let origin_room = |p: &PeerId, s: &PeerScore| {
            in_window
                || s.inflight + usize::from(taken.get(p).is_some_and(|t| !t.is_empty()))
                    < o.origin_requests
        };
        let holders = self.holders.get(&need.cid);
        self.peers
            .iter()
            .filter(|(p, s)| {
                !skip.contains(p)
                    && self.usable(p, need)
                    && !self.lacks.contains(&(**p, need.cid))
                    && s.inflight < o.per_peer
                    && s.paused_until.is_none_or(|t| t <= now)
                    && taken.get(p).is_none_or(|t| t.len() < o.batch)
                    && (!s.complete || (origin_ok && origin_room(p, s)))
            })
            .map(|(p, s)| {
                // Peers not heard from yet are tried only for the window: beyond it, wait a
                // round trip for their have list rather than load an origin blindly.
                let class = if s.complete {
                    2
                } else if holders.is_some_and(|h| h.contains(p)) {
                    0
                } else if !s.informed && in_window {
                    1
                } else {
                    3
                };
                // A relay's circuits are limited and slow: its peers are asked last.
                let score = if self.relayed.contains(p) {
                    s.score() / RELAYED_PENALTY
                } else {
                    s.score()
                };
                (class, score, *p)
            })
            .filter(|(class, _, _)| *class < 3)
            .min_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)))
            .map(|(_, _, p)| p)
    }

    /// The pending blocks in playback order, up to the reader's pace (offsets only grow
    /// along playback order, a node's children starting where it does or later).
    fn paced(&self) -> impl Iterator<Item = (&Key, &Need)> {
        let limit = self.limit;
        self.pending
            .iter()
            .take_while(move |(_, n)| n.offset <= limit)
    }

    /// What to ask for next: the window in playback order, then up to `lookahead` more,
    /// rarest first. Each is flagged with whether it is in the window.
    fn candidates(&self) -> Vec<(Key, bool)> {
        let window = self.options.window;
        let mut keys: Vec<(Key, bool)> = self
            .paced()
            .take(window)
            .map(|(k, _)| (k.clone(), true))
            .collect();
        let mut beyond: Vec<(usize, u64, Key)> = self
            .paced()
            .skip(window)
            .take(self.options.lookahead)
            .map(|(k, n)| {
                let (holders, tie) = self.rarity(&n.cid);
                (holders, tie, k.clone())
            })
            .collect();
        beyond.sort_unstable_by_key(|b| (b.0, b.1));
        keys.extend(beyond.into_iter().map(|(_, _, k)| (k, false)));
        keys
    }

    fn requeue(&mut self, key: Key, peer: PeerId) {
        if let Some(f) = self.flying.get_mut(&key) {
            f.peers.retain(|p| *p != peer);
            if f.peers.is_empty()
                && let Some(f) = self.flying.remove(&key)
            {
                self.pending.insert(key, f.need);
            }
        }
    }
}

impl<S: BlockStore + 'static> Node<S> {
    /// Fetches `root` (or the blocks of `options.range`) into this node's store from peers,
    /// verifying every block.
    ///
    /// # Errors
    ///
    /// [`FetchError`]; blocks verified so far stay in the store, so fetching again resumes.
    /// [`FetchError::OverBudget`] when the DAG holds more than [`FetchOptions::budget`] (by
    /// default, what the root declares) and [`FetchError::TooDeep`] when it links deeper
    /// than 64 levels.
    pub async fn fetch(&self, root: Cid, options: FetchOptions) -> Result<FetchReport, FetchError> {
        let store = self.store().clone();
        self.fetch_into(store.as_ref(), root, options).await
    }

    /// Like [`Node::fetch`], into `target` rather than the node's store (blocks `target`
    /// already holds are not fetched).
    ///
    /// # Errors
    ///
    /// As [`Node::fetch`].
    pub async fn fetch_into<T: BlockStore>(
        &self,
        target: &T,
        root: Cid,
        options: FetchOptions,
    ) -> Result<FetchReport, FetchError> {
        let start = Instant::now();
        let options_budget = options.budget;
        let mut s = Session {
            root,
            me: self.peer_id(),
            peers: options
                .peers
                .iter()
                .filter(|p| **p != self.peer_id())
                .map(|p| (*p, PeerScore::default()))
                .collect(),
            options,
            start,
            report: FetchReport::default(),
            pending: BTreeMap::from([(vec![0], Need::new(root, 0))]),
            flying: HashMap::new(),
            holders: HashMap::new(),
            lacks: HashSet::new(),
            have_round: 0,
            dht_running: false,
            dht_answered: false,
            dht_rounds: 0,
            last_progress: start,
            queued: HashSet::from([(root, 0)]),
            outstanding: HashMap::new(),
            budget: options_budget,
            taken: 0,
            limit: u64::MAX,
            paced: false,
            started: false,
            relayed: HashSet::new(),
        };
        if s.options.bitswap_peers {
            for p in self.shared.bitswap.bitswap_only_peers() {
                s.peers.entry(p).or_default();
            }
        }
        if s.options.ask_tier1 {
            for (p, (tier, _)) in self.peer_tiers().await.map_err(|_| FetchError::Closed)? {
                if tier == Tier::Tier1 {
                    s.peers.entry(p).or_default();
                }
            }
        }
        let mut tasks: FuturesUnordered<Task> = FuturesUnordered::new();
        if s.options.announce {
            let node = self.clone();
            tasks.push(Box::pin(async move {
                let _ = node.provide(root).await;
                Done::Announced
            }));
        }
        let mut next_dht = start;
        let mut next_have = start;
        let mut pace = s.options.pace.take();
        s.paced = pace.is_some();

        loop {
            if let Some(p) = &mut pace {
                let limit = p.position.borrow_and_update().saturating_add(p.ahead);
                if limit != s.limit {
                    // The reader moved: waiting for it was no stall.
                    s.last_progress = Instant::now();
                    s.limit = limit;
                }
            }
            expand_local(target, &mut s).await?;
            if s.pending.is_empty() && s.flying.is_empty() {
                break;
            }
            let now = Instant::now();
            s.relayed.clone_from(
                &self
                    .shared
                    .relayed_only
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            if s.options.use_dht && !s.dht_running && now >= next_dht {
                s.dht_running = true;
                next_dht = now + s.options.rediscover;
                let node = self.clone();
                tasks.push(Box::pin(async move {
                    let mut found = node.find_providers(root).await.unwrap_or_default();
                    let connected = node.connected_peers().await.unwrap_or_default();
                    // With no peer connected yet (a node just started, still dialing its
                    // bootstrap peers) an empty answer means nobody was asked: the DHT is
                    // asked again at the next `rediscover` instead.
                    let asked = !found.is_empty() || !connected.is_empty();
                    if found.is_empty() {
                        // As Bitswap asks the peers it is connected to: one of them may hold
                        // the item though no provider record says so (its record not yet
                        // stored, or the DHT's servers not yet known).
                        found = connected;
                    }
                    Done::Providers(found, asked)
                }));
            }
            if now >= next_have {
                next_have = now + s.options.refresh;
                self.ask_haves(&mut s, &mut tasks, false);
            } else if s.peers.values().any(|p| !p.informed && !p.have_pending) {
                self.ask_haves(&mut s, &mut tasks, true);
            }
            if s.peers.is_empty() && !s.dht_running && (s.dht_answered || !s.options.use_dht) {
                return Err(FetchError::NoProviders(root));
            }
            // Nobody holds the root: every peer reached says so and the DHT, asked twice (a
            // provider record may be on its way), names nobody else. The fetch ends now, not
            // at the stall deadline, as a gateway must answer "not found" within seconds.
            if s.report.blocks == 0
                && s.flying.is_empty()
                && !s.dht_running
                && (s.dht_rounds >= 2 || !s.options.use_dht)
                && !s.peers.is_empty()
                && s.peers.keys().all(|p| s.lacks.contains(&(*p, root)))
            {
                return Err(FetchError::Unavailable {
                    cid: root,
                    tried: s.peers.len(),
                });
            }
            self.schedule(&mut s, &mut tasks, now)?;
            if s.flying.is_empty() && s.paced().next().is_none() {
                // Everything left is past the reader's pace: waiting for it is no stall.
                s.last_progress = Instant::now();
            }
            if s.last_progress.elapsed() > s.options.stall {
                let cid = s.pending.values().next().map_or(root, |n| n.cid);
                return Err(FetchError::Unavailable {
                    cid,
                    tried: s.peers.len(),
                });
            }
            let wake = next_have.min(if s.options.use_dht {
                next_dht
            } else {
                next_have
            });
            tokio::select! {
                done = tasks.next(), if !tasks.is_empty() => {
                    if let Some(done) = done {
                        self.settle(target, &mut s, done).await?;
                    }
                }
                moved = async {
                    match &mut pace {
                        Some(p) => p.position.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if moved.is_err() {
                        return Err(FetchError::ReaderGone(root));
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
        s.report.elapsed = start.elapsed();
        Ok(s.report)
    }

    /// Asks peers which of the blocks about to be scheduled they hold (only peers not heard
    /// from yet, with `only_new`).
    fn ask_haves(&self, s: &mut Session, tasks: &mut FuturesUnordered<Task>, only_new: bool) {
        let cids: Vec<Cid> = s
            .candidates()
            .iter()
            .filter_map(|(k, _)| s.pending.get(k))
            .map(|n| n.cid)
            .collect();
        if cids.is_empty() {
            return;
        }
        // Each peer is asked about another slice of the candidates, and the slices rotate
        // every round, so that every candidate is asked about somewhere.
        let chunks: Vec<&[Cid]> = cids.chunks(MAX_WANT).collect();
        s.have_round = s.have_round.wrapping_add(1);
        for (j, (peer, score)) in s.peers.iter_mut().enumerate() {
            if score.have_pending
                || score.out(s.options.max_failures)
                || (only_new && score.informed)
            {
                continue;
            }
            score.have_pending = true;
            let cids = chunks[(j + s.have_round) % chunks.len()].to_vec();
            let (node, peer, root) = (self.clone(), *peer, s.root);
            tasks.push(Box::pin(async move {
                let r = node
                    .ask_peer(
                        peer,
                        Request::Have {
                            root: Some(root),
                            cids: cids.clone(),
                        },
                    )
                    .await;
                Done::Have(peer, cids, r)
            }));
        }
    }

    fn schedule(
        &self,
        s: &mut Session,
        tasks: &mut FuturesUnordered<Task>,
        now: Instant,
    ) -> Result<(), FetchError> {
        let keys = s.candidates();
        // The block at the playback position, when not yet asked for, is asked alone: it
        // arrives without waiting behind the rest of a batch. Until the first leaf is here,
        // it is the only block asked for, so that the first bytes (a gateway's first byte)
        // do not share the link with the rest.
        let head = s.pending.keys().next().cloned();
        let mut solo: Vec<(PeerId, Vec<(Key, bool)>)> = Vec::new();
        let mut taken: HashMap<PeerId, Vec<(Key, bool)>> = HashMap::new();
        for (key, in_window) in keys {
            if !s.started && head.as_ref() != Some(&key) {
                continue;
            }
            let Some(need) = s.pending.get(&key) else {
                continue;
            };
            match s.choose(need, in_window, &taken, &[], now) {
                Some(p) if in_window && head.as_ref() == Some(&key) => {
                    solo.push((p, vec![(key, in_window)]));
                }
                Some(p) => taken.entry(p).or_default().push((key, in_window)),
                None => {
                    let usable = s.peers.keys().any(|p| s.usable(p, need));
                    // A peer benched for failing (a dial made before its address was known,
                    // say) comes back when its bench ends: the fetch waits for it, within
                    // the stall deadline, rather than ending on three quick failures.
                    let benched = s.peers.iter().any(|(p, score)| {
                        !need.excluded.contains(p)
                            && !score.refused
                            && score.benched_until.is_some_and(|t| t > now)
                    });
                    if !usable && !benched && !s.dht_running && s.flying.is_empty() {
                        return Err(FetchError::Unavailable {
                            cid: need.cid,
                            tried: need.excluded.len(),
                        });
                    }
                }
            }
        }
        // Late window blocks are also asked of another peer.
        let late: Vec<(Key, Vec<PeerId>)> = s
            .flying
            .iter()
            .filter(|(_, f)| f.in_window && !f.hedged && now - f.since > s.options.deadline)
            .map(|(k, f)| (k.clone(), f.peers.clone()))
            .collect();
        for (key, asked) in late {
            let Some(need) = s.flying.get(&key).map(|f| f.need.clone()) else {
                continue;
            };
            if let Some(p) = s.choose(&need, true, &taken, &asked, now) {
                s.report.hedged += 1;
                // Lateness counts against the peers that were asked.
                let (max, bench) = (s.options.max_failures, s.options.deadline.saturating_mul(2));
                for late in &asked {
                    if let Some(score) = s.peers.get_mut(late) {
                        score.failed(max, bench);
                    }
                }
                if let Some(f) = s.flying.get_mut(&key) {
                    f.hedged = true;
                }
                taken.entry(p).or_default().push((key, true));
            }
        }
        for (peer, keyed) in solo.into_iter().chain(taken) {
            let mut cids = Vec::with_capacity(keyed.len());
            let mut keys = Vec::with_capacity(keyed.len());
            for (key, in_window) in keyed {
                if let Some(need) = s.pending.remove(&key) {
                    cids.push(need.cid);
                    s.flying.insert(
                        key.clone(),
                        Flight {
                            need,
                            since: now,
                            peers: vec![peer],
                            in_window,
                            hedged: false,
                        },
                    );
                } else if let Some(f) = s.flying.get_mut(&key) {
                    cids.push(f.need.cid);
                    f.peers.push(peer);
                }
                keys.push(key);
            }
            let score = s.peers.entry(peer).or_default();
            score.inflight += 1;
            let node = self.clone();
            let root = s.root;
            let asked: HashSet<Cid> = cids.iter().copied().collect();
            tasks.push(Box::pin(async move {
                let t = Instant::now();
                let r = node
                    .ask_peer(
                        peer,
                        Request::Want {
                            root: Some(root),
                            cids,
                        },
                    )
                    .await;
                let took = t.elapsed();
                // Blocks are verified off the fetch's own task, in parallel with it, once.
                let mut checked = match &r {
                    Ok(Response::Blocks { blocks, .. }) => {
                        // Only what was asked is hashed: the rest is dropped unread.
                        let blocks: Vec<(Cid, Bytes)> = blocks
                            .iter()
                            .filter(|(cid, _)| asked.contains(cid))
                            .cloned()
                            .collect();
                        tokio::task::spawn_blocking(move || {
                            let mut c = Checked::default();
                            for (cid, data) in blocks {
                                match Block::new(cid, data) {
                                    Ok(b) => {
                                        c.good.insert(cid, b);
                                    }
                                    Err(_) => {
                                        c.bad.insert(cid);
                                    }
                                }
                            }
                            c
                        })
                        .await
                        .unwrap_or_default()
                    }
                    _ => Checked::default(),
                };
                checked.asked = asked;
                Done::Want(peer, keys, r, took, checked)
            }));
        }
        Ok(())
    }

    async fn settle<T: BlockStore>(
        &self,
        target: &T,
        s: &mut Session,
        done: Done,
    ) -> Result<(), FetchError> {
        match done {
            Done::Announced => {}
            Done::Providers(found, asked) => {
                s.dht_running = false;
                s.dht_answered |= asked;
                s.dht_rounds += u32::from(asked);
                for p in found {
                    if p != s.me {
                        s.peers.entry(p).or_default();
                    }
                }
            }
            Done::Have(peer, cids, r) => {
                let score = s.peers.entry(peer).or_default();
                score.have_pending = false;
                if let Ok(Response::Haves { have }) = r {
                    let lacked = have.len() != cids.len() || have.iter().any(|h| !h);
                    score.complete = (!score.informed || score.complete) && !lacked;
                    score.informed = true;
                    for (cid, has) in cids.into_iter().zip(have) {
                        if has {
                            s.holders.entry(cid).or_default().insert(peer);
                            s.lacks.remove(&(peer, cid));
                        } else {
                            if let Some(h) = s.holders.get_mut(&cid) {
                                h.remove(&peer);
                            }
                            s.lacks.insert((peer, cid));
                        }
                    }
                }
            }
            Done::Want(peer, keys, result, took, checked) => {
                self.settle_want(target, s, peer, keys, result, took, &checked)
                    .await?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn settle_want<T: BlockStore>(
        &self,
        target: &T,
        s: &mut Session,
        peer: PeerId,
        keys: Vec<Key>,
        result: Result<Response, RequestError>,
        took: Duration,
        checked: &Checked,
    ) -> Result<(), FetchError> {
        let bad = &checked.bad;
        let score = s.peers.entry(peer).or_default();
        score.inflight = score.inflight.saturating_sub(1);
        match result {
            Ok(Response::Blocks {
                blocks, missing, ..
            }) => {
                // Blocks not asked of this peer in this request are padding: dropped, never
                // metered (so never paid for), and held against the peer.
                let unrequested = blocks
                    .iter()
                    .filter(|(cid, _)| !checked.asked.contains(cid))
                    .count() as u64;
                let by_cid: HashMap<Cid, Bytes> = blocks
                    .into_iter()
                    .filter(|(cid, _)| checked.asked.contains(cid))
                    .collect();
                if unrequested > 0 {
                    tracing::debug!(%peer, unrequested, "blocks sent that were not asked for dropped");
                    s.report.unrequested += unrequested;
                    let (max, bench) =
                        (s.options.max_failures, s.options.deadline.saturating_mul(2));
                    if let Some(score) = s.peers.get_mut(&peer) {
                        score.failed(max, bench);
                    }
                }
                let missing: HashSet<Cid> = missing.into_iter().collect();
                let mut got = Vec::new();
                let mut bytes = 0u64;
                let mut used = 0;
                // Blocks also asked of other peers (hedged), now no longer wanted from them.
                let mut cancel: HashMap<PeerId, Vec<Cid>> = HashMap::new();
                let mut matched: HashSet<Cid> = HashSet::new();
                for key in keys {
                    let Some(flight) = s.flying.get_mut(&key) else {
                        // Another copy arrived first.
                        continue;
                    };
                    used += usize::from(by_cid.contains_key(&flight.need.cid));
                    let cid = flight.need.cid;
                    matched.insert(cid);
                    match by_cid.get(&cid) {
                        Some(data) if !bad.contains(&cid) => {
                            bytes += data.len() as u64;
                            if let Some(f) = s.flying.remove(&key) {
                                for other in f.peers.iter().filter(|p| **p != peer) {
                                    cancel.entry(*other).or_default().push(cid);
                                }
                                got.push((key, f.need, data.clone()));
                            }
                        }
                        Some(_) => {
                            s.report.bad_blocks += 1;
                            flight.need.excluded.insert(peer);
                            self.report_bad_block(peer, cid).await;
                            s.requeue(key, peer);
                        }
                        None => {
                            if missing.contains(&cid) {
                                s.lacks.insert((peer, cid));
                                if let Some(h) = s.holders.get_mut(&cid) {
                                    h.remove(&peer);
                                }
                                if let Some(p) = s.peers.get_mut(&peer) {
                                    p.complete = false;
                                }
                            }
                            s.requeue(key, peer);
                        }
                    }
                }
                s.report.duplicates += by_cid.len().saturating_sub(used) as u64;
                // A verified copy that arrived after another (a hedged request answered by both
                // peers) was still sent: the metering hook sees it, so that its sender is paid.
                for (cid, data) in &by_cid {
                    if !matched.contains(cid) && !bad.contains(cid) {
                        self.shared.meter.received(&peer, cid, data.len());
                    }
                }
                for (other, cids) in cancel {
                    s.report.cancelled += cids.len() as u64;
                    // Fire and forget: a cancel that arrives too late costs a duplicate only.
                    let node = self.clone();
                    tokio::spawn(async move {
                        let _ = node.ask_peer(other, Request::Cancel { cids }).await;
                    });
                }
                let score = s.peers.entry(peer).or_default();
                score.bytes += bytes;
                score.busy += took;
                if got.is_empty() {
                    return Ok(());
                }
                s.last_progress = Instant::now();
                let start = s.start;
                s.report.first_block.get_or_insert_with(|| start.elapsed());
                s.take_in(bytes)?;
                // Checked off the task; hashed here only if that check did not run.
                let blocks: Vec<Block> = got
                    .iter()
                    .map(|(_, n, d)| {
                        checked
                            .good
                            .get(&n.cid)
                            .cloned()
                            .map_or_else(|| Block::new(n.cid, d.clone()), Ok)
                    })
                    .collect::<Result<_, _>>()
                    .map_err(|e| FetchError::Malformed {
                        cid: got[0].1.cid,
                        reason: e.to_string(),
                    })?;
                // Counted before they are stored: storing hands them to a waiting reader, which
                // may finish its answer before this task runs again.
                self.shared.with_stats(|st| {
                    let p = st.peers.entry(peer).or_default();
                    p.shards_received += got.len() as u64;
                    p.bytes_received += bytes;
                    st.shards_received += got.len() as u64;
                    st.bytes_received += bytes;
                });
                target.put_many(blocks).await?;
                // Peers that asked this node for these blocks over Bitswap get them now.
                self.shared
                    .bitswap
                    .new_blocks(got.iter().map(|(_, n, _)| n.cid).collect());
                *s.report.bytes_from.entry(peer).or_default() += bytes;
                for (key, need, data) in got {
                    self.shared.meter.received(&peer, &need.cid, data.len());
                    s.report.blocks += 1;
                    s.report.fetched += 1;
                    s.arrived(&key, &need, data)?;
                }
            }
            Ok(Response::Refused {
                reason,
                retry_after_ms,
            }) => {
                let max = s.options.max_failures;
                let score = s.peers.entry(peer).or_default();
                if reason == RefusalReason::Refused {
                    score.failures = max;
                    score.refused = true;
                } else {
                    score.paused_until = Some(
                        Instant::now() + Duration::from_millis(retry_after_ms.clamp(1, 10_000)),
                    );
                }
                for key in keys {
                    s.requeue(key, peer);
                }
            }
            Ok(_) | Err(_) => {
                s.report.retries += 1;
                let (max, bench) = (s.options.max_failures, s.options.deadline.saturating_mul(2));
                s.peers.entry(peer).or_default().failed(max, bench);
                for key in keys {
                    s.requeue(key, peer);
                }
            }
        }
        Ok(())
    }
}

/// Blocks already held are expanded locally, without asking anyone (and their children may
/// be held too).
async fn expand_local<T: BlockStore>(target: &T, s: &mut Session) -> Result<(), FetchError> {
    let span = s.options.window.max(1) + s.options.lookahead;
    let limit = s.limit;
    loop {
        let mut local = Vec::new();
        for (key, need) in s
            .pending
            .iter_mut()
            .take(span)
            .take_while(|(_, n)| n.offset <= limit)
        {
            if need.checked {
                continue;
            }
            need.checked = true;
            if let Some(data) = target.get(&need.cid).await? {
                local.push((key.clone(), data));
            }
        }
        if local.is_empty() {
            return Ok(());
        }
        for (key, data) in local {
            if let Some(need) = s.pending.remove(&key) {
                s.report.blocks += 1;
                s.take_in(data.len() as u64)?;
                s.arrived(&key, &need, data)?;
            }
        }
    }
}

impl Session {
    /// Counts `bytes` more taken in, unless that passes the budget.
    fn take_in(&mut self, bytes: u64) -> Result<(), FetchError> {
        let taken = self.taken.saturating_add(bytes);
        // Before the root is at hand, with no budget given, only the root (one block of at
        // most 2 MiB) is taken in, within any budget.
        if let Some(budget) = self.budget
            && taken > budget.bytes
        {
            return Err(FetchError::OverBudget {
                root: self.root,
                exceeded: Exceeded::Bytes(budget.bytes),
            });
        }
        self.taken = taken;
        Ok(())
    }

    /// A verified block at hand (fetched, or found in the store): its children are queued,
    /// and those of every other place in the range where it was queued.
    fn arrived(&mut self, key: &Key, need: &Need, data: Bytes) -> Result<(), FetchError> {
        self.expand(key, need, data.clone())?;
        for (key, need) in self.outstanding.remove(&need.cid).unwrap_or_default() {
            self.expand(&key, &need, data.clone())?;
        }
        Ok(())
    }

    /// Queues the children of a verified block that the fetch needs, keyed so that the
    /// queue's order is playback order: each block once (once per offset, for a range),
    /// none deeper than [`MAX_DEPTH`], and no more than the budget allows. The root's block
    /// sets the budget when the options did not.
    fn expand(&mut self, key: &Key, need: &Need, data: Bytes) -> Result<(), FetchError> {
        if key.len() == 1 && self.budget.is_none() {
            let budget = Budget::for_root(&need.cid, &data);
            if self.taken > budget.bytes {
                return Err(FetchError::OverBudget {
                    root: self.root,
                    exceeded: Exceeded::Bytes(budget.bytes),
                });
            }
            self.budget = Some(budget);
        }
        let budget = self.budget.unwrap_or(Budget::UNDECLARED);
        let options = &self.options;
        if need.cid.codec() != DAG_PB {
            self.started = true;
            return Ok(());
        }
        if matches!(options.range, Some((_, 0))) {
            return Ok(());
        }
        let malformed = |e: &dyn std::fmt::Display| FetchError::Malformed {
            cid: need.cid,
            reason: e.to_string(),
        };
        let node = PbNode::decode(data).map_err(|e| malformed(&e))?;
        if node.links.is_empty() {
            self.started = true;
        }
        // With a range, follow only the children of a file node whose bytes overlap it; with
        // a range or a pace, know where each child's bytes start.
        let sizes = match &node.data {
            Some(d) if options.range.is_some() || self.paced => {
                UnixFsData::decode(d).map_err(|e| malformed(&e))?.blocksizes
            }
            _ => Vec::new(),
        };
        let ranged = options.range.is_some();
        let mut offset = need.offset;
        for (i, link) in node.links.iter().enumerate() {
            let size = sizes.get(i).copied();
            let wanted = match (options.range, size) {
                (Some((start, len)), Some(size)) => {
                    offset < start.saturating_add(len) && offset.saturating_add(size) > start
                }
                _ => true,
            };
            let mark = (link.cid, if ranged { offset } else { 0 });
            if wanted && !self.queued.contains(&mark) {
                // The root's key is one long: its children are at depth `key.len()`.
                if key.len() > MAX_DEPTH {
                    return Err(FetchError::TooDeep(link.cid));
                }
                if self.queued.len() as u64 >= budget.blocks {
                    return Err(FetchError::OverBudget {
                        root: self.root,
                        exceeded: Exceeded::Blocks(budget.blocks),
                    });
                }
                self.queued.insert(mark);
                let mut child = key.clone();
                child.push(u32::try_from(i).unwrap_or(u32::MAX));
                let child_need = Need::new(link.cid, offset);
                match self.outstanding.get_mut(&link.cid) {
                    // Queued elsewhere in the range and on its way: wait for that copy.
                    Some(elsewhere) => elsewhere.push((child, child_need)),
                    None => {
                        if ranged {
                            self.outstanding.insert(link.cid, Vec::new());
                        }
                        self.pending.insert(child, child_need);
                    }
                }
            }
            offset = offset.saturating_add(size.unwrap_or(0));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamspace_shard::block::{RAW, cid_of};

    fn session(peers: &[PeerId]) -> Session {
        let root = cid_of(cid::Version::V1, RAW, b"root");
        let start = Instant::now();
        Session {
            root,
            me: PeerId::random(),
            peers: peers.iter().map(|p| (*p, PeerScore::default())).collect(),
            options: FetchOptions {
                peers: peers.to_vec(),
                ..FetchOptions::default()
            },
            start,
            report: FetchReport::default(),
            pending: BTreeMap::new(),
            flying: HashMap::new(),
            holders: HashMap::new(),
            lacks: HashSet::new(),
            have_round: 0,
            dht_running: false,
            dht_answered: false,
            dht_rounds: 0,
            last_progress: start,
            queued: HashSet::new(),
            outstanding: HashMap::new(),
            budget: None,
            taken: 0,
            limit: u64::MAX,
            paced: false,
            started: true,
            relayed: HashSet::new(),
        }
    }

    /// A peer reachable only through a relay is asked after a direct one, even when it has
    /// been faster so far (a relay's circuits are limited); it is still asked when it is the
    /// only holder left.
    #[test]
    fn a_relayed_only_peer_is_asked_after_direct_ones() {
        let (direct, relayed) = (PeerId::random(), PeerId::random());
        let mut s = session(&[direct, relayed]);
        let block = cid_of(cid::Version::V1, RAW, b"block");
        s.holders.insert(block, HashSet::from([direct, relayed]));
        for (p, bytes) in [(direct, 1_000_000), (relayed, 4_000_000)] {
            let score = s.peers.get_mut(&p).unwrap();
            score.bytes = bytes;
            score.busy = Duration::from_secs(1);
            score.informed = true;
        }
        let need = Need::new(block, 0);
        let none = HashMap::new();
        let now = Instant::now();
        assert_eq!(
            s.choose(&need, true, &none, &[], now),
            Some(relayed),
            "faster wins"
        );
        s.relayed.insert(relayed);
        assert_eq!(s.choose(&need, true, &none, &[], now), Some(direct));
        assert_eq!(s.choose(&need, true, &none, &[direct], now), Some(relayed));
    }
}
