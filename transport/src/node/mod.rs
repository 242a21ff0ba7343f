//! The node: a libp2p swarm driven by one task, and a cloneable [`Node`] handle that talks to
//! it over a bounded channel.
//!
//! Laid out as rust-libp2p lays out its protocols:
//!
//! - `behaviour`: the composed `NetworkBehaviour` (admission by allowlist and bans, identify,
//!   ping, the Kademlia DHT, the exchange protocol, gossipsub), how each is configured, and
//!   the swarm built on TCP and QUIC;
//! - `protocol`: the exchange protocol on libp2p's request-response with [`crate::codec`],
//!   and where its events go (requests to serving, responses to the handle that asked);
//! - `driver`: the task that owns the `Swarm`: the handles' commands, swarm events, DHT
//!   queries, bad blocks and bans;
//! - `serving`: answering peers' requests: the metering hook, the bound on answers in
//!   preparation at once, cancelled blocks skipped;
//! - `replication`: Tier-1 nodes' demand tracking and the replication of content in demand;
//! - `nat`: reachability (AutoNAT v2, UPnP), relays (circuit relay v2) and hole punching
//!   (DCUtR), and the DHT's mode that follows reachability;
//! - this module: the [`Node`] handle, its [`Config`], its errors, events and counters.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cid::Cid;
use libp2p::identity::{Keypair, ed25519};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, kad};
use streamspace_shard::store::BlockStore;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::allowlist::{AllowlistError, SignedAllowlist};
use crate::message::{Request, Response, Tier};
use crate::meter::Meter;

mod behaviour;
mod driver;
mod nat;
mod protocol;
mod replication;
mod serving;

use driver::{Command, Driver};
pub use nat::{ConnectionInfo, NatConfig, NatStatus, Reachability, RelayLimits};
use serving::Cancelled;

/// Provider records are republished every 22 hours and expire after 48, as in IPFS.
pub const PROVIDER_REPUBLISH: Duration = Duration::from_secs(22 * 3600);
/// See [`PROVIDER_REPUBLISH`].
pub const PROVIDER_TTL: Duration = Duration::from_secs(48 * 3600);
/// Commands queued to the swarm task before callers wait.
const COMMAND_QUEUE: usize = 256;
/// Events kept for slow subscribers before the oldest are dropped.
const EVENT_QUEUE: usize = 1024;
/// Largest message published or relayed on a pub/sub topic.
pub const MAX_PUBSUB_MESSAGE: usize = 64 * 1024;

/// Admission to a closed network: the operator's key and the list it signed.
#[derive(Debug, Clone)]
pub struct Admission {
    /// The operator's public key.
    pub operator: ed25519::PublicKey,
    /// The list of admitted peers.
    pub list: SignedAllowlist,
}

/// How a node runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Its identity (see [`crate::identity::load_or_create`]).
    pub keypair: Keypair,
    /// Addresses to listen on (TCP and QUIC).
    pub listen: Vec<Multiaddr>,
    /// Peers to join through, each address ending in `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// The network's name; the DHT speaks `/streamspace/<network>/kad/1.0.0`, so separate
    /// networks never mix routing tables.
    pub network: String,
    /// The tier announced to peers.
    pub tier: Tier,
    /// Spare storage announced to peers, in bytes.
    pub capacity: u64,
    /// `None` for an open network; otherwise only listed peers are let in.
    pub admission: Option<Admission>,
    /// How long one exchange request may take.
    pub request_timeout: Duration,
    /// Requests served at once; more are answered "overloaded".
    pub max_concurrent_serves: usize,
    /// Bad blocks after which a peer is banned.
    pub ban_after_bad_blocks: u32,
    /// How long a ban lasts.
    pub ban_for: Duration,
    /// Tier-1 only: what content in demand this node replicates (fetches and provides too).
    pub replication: ReplicationConfig,
    /// Bounds on connections and on what one peer may ask of this node.
    pub limits: Limits,
    /// Getting through NAT: reachability, relays, hole punching, UPnP.
    pub nat: NatConfig,
    /// Bitswap, for IPFS peers (on by default).
    pub bitswap: crate::bitswap::Config,
    /// Whether an open network's node also joins the public IPFS DHT (Amino,
    /// `/ipfs/kad/1.0.0`) beside its own: roots it provides are announced there too, and
    /// providers are looked up in both. A closed network's content is not announced to the
    /// world: with an allowlist, the node refuses to start ([`NodeError::Transport`]).
    pub amino_dht: bool,
}

impl Config {
    /// Defaults: listen on all interfaces (TCP and QUIC, ports chosen by the system), network
    /// `main`, edge tier, open admission.
    pub fn new(keypair: Keypair) -> Self {
        Self {
            keypair,
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".parse().expect("valid multiaddr"),
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .expect("valid multiaddr"),
            ],
            bootstrap: Vec::new(),
            network: "main".into(),
            tier: Tier::Edge,
            capacity: 0,
            admission: None,
            request_timeout: Duration::from_secs(10),
            max_concurrent_serves: 64,
            ban_after_bad_blocks: 3,
            ban_for: Duration::from_secs(600),
            replication: ReplicationConfig::default(),
            limits: Limits::default(),
            nat: NatConfig::default(),
            bitswap: crate::bitswap::Config::default(),
            amino_dht: false,
        }
    }

    /// Listen on loopback only, TCP, taken to be reachable (for tests and simulations).
    pub fn loopback(mut self) -> Self {
        self.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr")];
        self.nat.reachability = Some(Reachability::Public);
        self
    }
}

/// Bounds on connections and on the work one peer can make this node do.
///
/// A stranger can open connections and send requests; each of these is bounded so that one
/// peer, or a crowd of them, cannot take what honest peers need. Defaults suit an edge node on
/// a home link; a Tier-1 node may raise them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections established at once, over all peers (libp2p's `connection_limits`).
    pub max_connections: u32,
    /// Connections established at once with one peer.
    pub max_connections_per_peer: u32,
    /// Incoming connections still in their handshake at once.
    pub max_pending_incoming: u32,
    /// Answers in preparation at once for one peer (its fair share of
    /// [`Config::max_concurrent_serves`]); more are answered "overloaded". With answers of at
    /// most [`crate::message::MAX_RESPONSE_DATA`] bytes, this bounds the bytes one peer has in
    /// flight from this node.
    pub serves_per_peer: usize,
    /// Bytes of blocks in answers prepared or being written, over all peers: an answer takes
    /// its blocks' bytes before it reads them, and gives them back once the answer is written
    /// to its stream (or has failed), so slow readers hold what they cost. A want that finds
    /// no bytes free is answered "overloaded".
    pub max_answer_bytes: usize,
    /// The same, for one peer: a peer that reads its answers slowly, or not at all, holds at
    /// most this much of the node's memory (until its requests time out).
    pub max_answer_bytes_per_peer: usize,
    /// Have-list queries one peer may make per second (a burst of twice as many is allowed);
    /// more are answered "overloaded".
    pub have_queries_per_second: u32,
    /// Content roots this node may provide on the DHT; kad's own default (1,024) would cap a
    /// node's catalogue, so the node sizes it to its store.
    pub max_provided_roots: usize,
    /// Roots for which the DHT keeps other peers' provider records (each for up to 20 peers).
    pub max_provider_records: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            max_connections_per_peer: 4,
            max_pending_incoming: 64,
            serves_per_peer: 8,
            max_answer_bytes: 64 << 20,
            max_answer_bytes_per_peer: 8 << 20,
            have_queries_per_second: 100,
            max_provided_roots: 65_536,
            max_provider_records: 65_536,
        }
    }
}

/// Which content in demand a Tier-1 node replicates (see [`ReplicationConfig`]).
///
/// Without a policy, three strangers asking for a root would make a Tier-1 node fetch, store
/// and provide whatever they name. A policy says whose demand counts and which roots may be
/// replicated at all.
pub trait ReplicationPolicy: Send + Sync + std::fmt::Debug + 'static {
    /// Whether a request from `peer` counts as demand (a paying member's does, say).
    fn counts(&self, peer: &PeerId) -> bool;
    /// Whether `root`, in demand, may be replicated (listed on the market, or pinned).
    fn admits(&self, root: &Cid) -> bool;
}

/// A policy that replicates nothing: the default, so that a Tier-1 node replicates only what
/// its operator's policy admits.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplicateNothing;

impl ReplicationPolicy for ReplicateNothing {
    fn counts(&self, _: &PeerId) -> bool {
        false
    }
    fn admits(&self, _: &Cid) -> bool {
        false
    }
}

/// A policy that counts every peer and admits every root: for closed test networks and
/// simulations, where every peer is trusted.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplicateAnything;

impl ReplicationPolicy for ReplicateAnything {
    fn counts(&self, _: &PeerId) -> bool {
        true
    }
    fn admits(&self, _: &Cid) -> bool {
        true
    }
}

/// Tier-1 replication: after how much demand, how large at most, under which policy.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// Distinct peers whose demand counts asking for content this node lacks before it
    /// replicates it (at least one).
    pub after: usize,
    /// The largest item replicated, in bytes (the replicating fetch's byte budget); the
    /// store's quota bounds the sum.
    pub max_bytes: u64,
    /// Whose demand counts, and which roots may be replicated.
    pub policy: Arc<dyn ReplicationPolicy>,
}

impl Default for ReplicationConfig {
    /// Three distinct peers, 4 GiB at most, [`ReplicateNothing`].
    fn default() -> Self {
        Self {
            after: 3,
            max_bytes: 4 << 30,
            policy: Arc::new(ReplicateNothing),
        }
    }
}

/// What went wrong in the node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The transport could not be built or could not listen.
    #[error("transport: {0}")]
    Transport(String),
    /// A bootstrap or dial address without `/p2p/<peer id>`, or otherwise unusable.
    #[error("address {0}: {1}")]
    Address(Multiaddr, &'static str),
    /// The allowlist does not verify.
    #[error(transparent)]
    Allowlist(#[from] AllowlistError),
    /// The node has shut down.
    #[error("node has shut down")]
    Closed,
    /// An open network has no allowlist to update.
    #[error("an open network has no allowlist")]
    Open,
    /// Dialing failed.
    #[error("dial {0}: {1}")]
    Dial(Multiaddr, String),
    /// The DHT refused a provider record.
    #[error("provide: {0}")]
    Provide(String),
    /// A pub/sub subscription or publication failed (no peer on the topic yet, message too
    /// large, ...).
    #[error("pub/sub on {topic}: {reason}")]
    PubSub {
        /// The topic.
        topic: String,
        /// What happened.
        reason: String,
    },
}

/// A request to a peer that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The peer could not be reached, the stream failed or the response was malformed.
    #[error("request to {peer} failed: {reason}")]
    Failed {
        /// The peer.
        peer: PeerId,
        /// What happened.
        reason: String,
    },
    /// No response in time.
    #[error("request to {0} timed out")]
    Timeout(PeerId),
    /// The node has shut down.
    #[error("node has shut down")]
    Closed,
}

/// Something that happened, for observers (see [`Node::events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A connection to a peer opened.
    Connected(PeerId),
    /// The last connection to a peer closed.
    Disconnected(PeerId),
    /// A peer announced its tier and spare capacity.
    Status {
        /// The peer.
        peer: PeerId,
        /// Its tier.
        tier: Tier,
        /// Its spare capacity.
        capacity: u64,
    },
    /// A connection was refused: the peer is not on the allowlist, or is banned.
    Refused(Option<PeerId>),
    /// A peer sent a block that does not match its CID.
    BadBlock {
        /// The peer.
        peer: PeerId,
        /// The CID asked for.
        cid: Cid,
    },
    /// A peer was banned for bad blocks.
    Banned(PeerId),
    /// A ban ended.
    Unbanned(PeerId),
    /// A Tier-1 node replicated content in demand (`true`) or failed to (`false`).
    Replicated(Cid, bool),
    /// A message arrived on a subscribed pub/sub topic (signed by its author, whose
    /// signature gossipsub checked).
    Message {
        /// The topic's name.
        topic: String,
        /// Its author.
        source: Option<PeerId>,
        /// The payload, at most [`MAX_PUBSUB_MESSAGE`] bytes.
        data: bytes::Bytes,
    },
    /// This node's reachability changed (see [`NatConfig`]).
    Reachability(Reachability),
    /// A relay accepted this node's reservation: it is reachable at `address`.
    Relayed {
        /// The relay.
        relay: PeerId,
        /// The relayed address, ending in `/p2p/<this node>`.
        address: Multiaddr,
    },
    /// A relay refused this node's reservation, or the reservation ended.
    ReservationFailed(PeerId),
    /// A newer allowlist is in force: `removed` peers it no longer lists were disconnected.
    AllowlistUpdated {
        /// Peers it lists.
        peers: usize,
        /// Peers of the previous list it drops.
        removed: usize,
    },
    /// The allowlist in force expired: every peer is refused until a newer list arrives.
    AllowlistExpired,
    /// Hole punching to a peer reached over a relay succeeded (`direct`) or failed.
    HolePunched {
        /// The peer.
        peer: PeerId,
        /// Whether a direct connection now exists.
        direct: bool,
    },
}

/// Counters per peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerCounters {
    /// Bytes of shards sent to it.
    pub bytes_sent: u64,
    /// Bytes of verified shards received from it.
    pub bytes_received: u64,
    /// Shards sent to it.
    pub shards_sent: u64,
    /// Verified shards received from it.
    pub shards_received: u64,
    /// Bad blocks it sent.
    pub bad_blocks: u64,
}

/// The node's counters (see [`Node::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Shards served.
    pub shards_served: u64,
    /// Bytes of shards served.
    pub bytes_served: u64,
    /// Verified shards received.
    pub shards_received: u64,
    /// Bytes of verified shards received.
    pub bytes_received: u64,
    /// Connections refused (allowlist or ban).
    pub refused_connections: u64,
    /// Requests the metering hook refused or paused, wholly or in part (a Bitswap want
    /// list counts each want refused).
    pub metered_refusals: u64,
    /// Requests answered "overloaded".
    pub overloaded: u64,
    /// Bad blocks received.
    pub bad_blocks: u64,
    /// Bans imposed.
    pub bans: u64,
    /// Blocks not sent because their requester cancelled them.
    pub cancelled: u64,
    /// Relayed connections upgraded to direct ones by hole punching.
    pub hole_punches: u64,
    /// Hole punching attempts that failed (the peer stays reachable through the relay).
    pub hole_punch_failures: u64,
    /// Per peer.
    pub peers: HashMap<PeerId, PeerCounters>,
}

pub(crate) struct Shared<S> {
    pub(crate) store: Arc<S>,
    pub(crate) meter: Arc<dyn Meter>,
    pub(crate) stats: Mutex<Stats>,
    pub(crate) events: broadcast::Sender<NodeEvent>,
    pub(crate) tier: Tier,
    pub(crate) request_timeout: Duration,
    pub(crate) viewed: Mutex<crate::cache::Viewed>,
    /// Blocks peers cancelled, until a want of theirs skips them (bounded; oldest forgotten).
    pub(crate) cancelled: Mutex<Cancelled>,
    /// Peers connected only through relays (the fetch scheduler prefers others).
    pub(crate) relayed_only: Mutex<HashSet<PeerId>>,
    /// Asks IPFS peers for blocks over Bitswap.
    pub(crate) bitswap: crate::bitswap::Client,
    /// Bytes of answers prepared or being written (see [`Limits::max_answer_bytes`]).
    pub(crate) answer_bytes: Arc<tokio::sync::Semaphore>,
}

impl<S> Shared<S> {
    pub(crate) fn with_stats(&self, f: impl FnOnce(&mut Stats)) {
        // A poisoned lock only means another thread panicked mid-update of counters.
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
    }
}

/// A running node. Cheap to clone; the node stops with [`Node::shutdown`] or when the last
/// handle is dropped.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use libp2p::identity::Keypair;
/// use streamspace_shard::store::{add_reader, MemoryStore};
/// use streamspace_shard::import::ImportOptions;
/// use streamspace_transport::{Config, Node, meter::Free};
///
/// let seeder = Node::start(Config::new(Keypair::generate_ed25519()).loopback(), Arc::new(MemoryStore::new()), Arc::new(Free)).await?;
/// let root = add_reader(Some(seeder.store().as_ref()), &b"hello, swarm"[..], ImportOptions::default()).await?.cid;
/// seeder.provide(root).await?;
///
/// let mut config = Config::new(Keypair::generate_ed25519()).loopback();
/// config.bootstrap = seeder.dialable_addrs().await?;
/// let viewer = Node::start(config, Arc::new(MemoryStore::new()), Arc::new(Free)).await?;
/// let report = viewer.fetch(root, Default::default()).await?;
/// assert_eq!(report.blocks, 1);
/// seeder.shutdown().await;
/// viewer.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Node<S> {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    pub(crate) shared: Arc<Shared<S>>,
}

impl<S> Clone for Node<S> {
    fn clone(&self) -> Self {
        Self {
            peer_id: self.peer_id,
            commands: self.commands.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Node<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

/// The peer an address leads to: its last `/p2p/<peer id>` (a relayed address names the
/// relay first).
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter()
        .filter_map(|p| match p {
            Protocol::P2p(id) => Some(id),
            _ => None,
        })
        .last()
}

/// The public IPFS DHT's protocol (Amino), which an open node joins with
/// [`Config::amino_dht`].
pub const AMINO_PROTOCOL: libp2p::StreamProtocol = libp2p::StreamProtocol::new("/ipfs/kad/1.0.0");

/// The DHT key for a content root: its multihash, as IPFS provider records use.
pub fn provider_key(root: &Cid) -> kad::RecordKey {
    kad::RecordKey::new(&root.hash().to_bytes())
}

impl<S: BlockStore + 'static> Node<S> {
    /// Starts a node serving blocks from `store`, metered by `meter`.
    ///
    /// # Errors
    ///
    /// [`NodeError`] if the allowlist does not verify, a bootstrap address lacks its peer id,
    /// or the transport cannot listen.
    pub async fn start(
        config: Config,
        store: Arc<S>,
        meter: Arc<dyn Meter>,
    ) -> Result<Self, NodeError> {
        let peer_id = config.keypair.public().to_peer_id();
        let (bitswap, bitswap_client) = crate::bitswap::new(config.bitswap.clone());
        let (swarm, kad_protocol) = behaviour::build(&config, bitswap)?;
        let (events, _) = broadcast::channel(EVENT_QUEUE);
        let shared = Arc::new(Shared {
            store,
            meter,
            stats: Mutex::new(Stats::default()),
            events,
            tier: config.tier,
            request_timeout: config.request_timeout,
            viewed: Mutex::default(),
            cancelled: Mutex::default(),
            relayed_only: Mutex::default(),
            bitswap: bitswap_client,
            answer_bytes: Arc::new(tokio::sync::Semaphore::new(
                config
                    .limits
                    .max_answer_bytes
                    .max(crate::message::MAX_RESPONSE_DATA),
            )),
        });
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let driver = Driver::new(
            swarm,
            kad_protocol,
            &config,
            shared.clone(),
            rx,
            tx.downgrade(),
        )?;
        tokio::spawn(driver.run());
        let node = Self {
            peer_id,
            commands: tx,
            shared,
        };
        // Wait until the listeners are up so that `listen_addrs` is meaningful.
        let deadline = Instant::now() + Duration::from_secs(5);
        while node.listen_addrs().await?.len() < config.listen.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(node)
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The block store it serves from and fetches into.
    pub fn store(&self) -> &Arc<S> {
        &self.shared.store
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NodeError::Closed)?;
        rx.await.map_err(|_| NodeError::Closed)
    }

    /// The addresses it listens on.
    ///
    /// # Errors
    ///
    /// [`NodeError::Closed`].
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NodeError> {
        self.ask(Command::ListenAddrs).await
    }

    /// The listen addresses with `/p2p/<peer id>` appended, ready for other nodes' bootstrap
    /// lists.
    ///
    /// # Errors
    ///
    /// [`NodeError::Closed`].
    pub async fn dialable_addrs(&self) -> Result<Vec<Multiaddr>, NodeError> {
        Ok(self
            .listen_addrs()
            .await?
            .into_iter()
            .map(|a| {
                // Relayed addresses already end in this node's id.
                if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
                    a
                } else {
                    a.with(Protocol::P2p(self.peer_id))
                }
            })
            .collect())
    }

    /// Dials `addr` and waits for the connection.
    ///
    /// # Errors
    ///
    /// [`NodeError::Dial`] or [`NodeError::Address`].
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NodeError> {
        self.ask(|tx| Command::Dial(addr, tx)).await?
    }

    /// Announces on the DHT that this node provides `root` (one record per content root, not
    /// per shard), republished every 22 hours.
    ///
    /// # Errors
    ///
    /// [`NodeError::Provide`] if the record could not be stored or published to anyone.
    pub async fn provide(&self, root: Cid) -> Result<(), NodeError> {
        self.ask(|tx| Command::Provide(root, tx)).await?
    }

    /// Peers the DHT names as providers of `root`.
    ///
    /// # Errors
    ///
    /// [`NodeError::Closed`].
    pub async fn find_providers(&self, root: Cid) -> Result<Vec<PeerId>, NodeError> {
        self.ask(|tx| Command::FindProviders(root, tx)).await
    }

    /// Sends one exchange request and waits for its response.
    ///
    /// # Errors
    ///
    /// [`RequestError`].
    pub async fn request(&self, peer: PeerId, request: Request) -> Result<Response, RequestError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Request(peer, request, tx))
            .await
            .map_err(|_| RequestError::Closed)?;
        match tokio::time::timeout(self.shared.request_timeout + Duration::from_secs(1), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(RequestError::Closed),
            Err(_) => Err(RequestError::Timeout(peer)),
        }
    }

    /// Replaces a closed network's allowlist with a newer one its operator signed (one that
    /// expires later than the list in force), closing the connections of the peers it no
    /// longer lists. Lists published on [`crate::allowlist::topic`] are applied the same way.
    ///
    /// # Errors
    ///
    /// [`NodeError::Allowlist`] if the list does not verify
    /// ([`AllowlistError::NotNewer`] for an old list replayed), or the network is open
    /// ([`NodeError::Open`]).
    pub async fn update_allowlist(&self, list: SignedAllowlist) -> Result<(), NodeError> {
        self.ask(|tx| Command::Allowlist(Box::new(list), tx))
            .await?
    }

    /// Hands `peer` a payment (a signed receipt, say) for its metering hook.
    ///
    /// # Errors
    ///
    /// [`RequestError`] if it could not be delivered or was refused.
    pub async fn pay(&self, peer: PeerId, data: bytes::Bytes) -> Result<(), RequestError> {
        match self.request(peer, Request::Payment { data }).await? {
            Response::Accepted => Ok(()),
            other => Err(RequestError::Failed {
                peer,
                reason: format!("payment not taken: {other:?}"),
            }),
        }
    }

    /// Reports a bad block and waits until the node has counted it (and banned the peer, if
    /// this was one too many).
    pub(crate) async fn report_bad_block(&self, peer: PeerId, cid: Cid) {
        let _ = self.ask(|tx| Command::BadBlock(peer, cid, tx)).await;
    }

    /// Subscribes to a pub/sub topic (gossipsub, messages signed by their authors); its
    /// messages arrive as [`NodeEvent::Message`].
    ///
    /// # Errors
    ///
    /// [`NodeError::PubSub`] or [`NodeError::Closed`].
    pub async fn subscribe(&self, topic: &str) -> Result<(), NodeError> {
        let topic = topic.to_owned();
        self.ask(|tx| Command::Subscribe(topic, tx)).await?
    }

    /// Publishes `data` (at most [`MAX_PUBSUB_MESSAGE`] bytes) on a topic.
    ///
    /// # Errors
    ///
    /// [`NodeError::PubSub`] if the message is too large or no peer is subscribed to the topic
    /// yet; [`NodeError::Closed`].
    pub async fn publish(&self, topic: &str, data: bytes::Bytes) -> Result<(), NodeError> {
        if data.len() > MAX_PUBSUB_MESSAGE {
            return Err(NodeError::PubSub {
                topic: topic.to_owned(),
                reason: format!("{} bytes, at most {MAX_PUBSUB_MESSAGE}", data.len()),
            });
        }
        let topic = topic.to_owned();
        self.ask(|tx| Command::Publish(topic, data, tx)).await?
    }

    /// Peers connected now.
    ///
    /// # Errors
    ///
    /// [`NodeError::Closed`].
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, NodeError> {
        self.ask(Command::Connected).await
    }

    /// The tier and spare capacity each connected peer announced.
    ///
    /// # Errors
    ///
    /// [`NodeError::Closed`].
    pub async fn peer_tiers(&self) -> Result<HashMap<PeerId, (Tier, u64)>, NodeError> {
        self.ask(Command::Tiers).await
    }

    /// Its reachability, relayed addresses and connections (which are relayed).
    ///
    /// # Errors
    ///
    /// [`NodeError::Closed`].
    pub async fn nat_status(&self) -> Result<NatStatus, NodeError> {
        self.ask(Command::Nat).await
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Subscribes to events. A subscriber that falls more than 1,024 events behind loses the
    /// oldest ones.
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.shared.events.subscribe()
    }

    /// Closes every connection and stops the node; other handles get [`NodeError::Closed`].
    pub async fn shutdown(&self) {
        let _ = self.ask(Command::Shutdown).await;
    }
}
