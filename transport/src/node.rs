//! The node: a libp2p swarm driven by one task, and a cloneable [`Node`] handle that talks to
//! it over a bounded channel.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use cid::Cid;
use futures::StreamExt;
use libp2p::identity::{Keypair, ed25519};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, allow_block_list, gossipsub, identify, kad, noise,
    ping, tcp, yamux,
};
use streamspace_shard::store::BlockStore;
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};

use crate::allowlist::{AllowlistError, SignedAllowlist};
use crate::codec::{ExchangeCodec, PROTOCOL};
use crate::fetch::FetchOptions;
use crate::message::{
    MAX_RESPONSE_DATA, MAX_STATUS_ROOTS, MAX_WANT, RefusalReason, Request, Response, Tier,
};
use crate::meter::{Decision, Meter};

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
/// Roots whose demand a Tier-1 node tracks at once.
const MAX_DEMAND_TRACKED: usize = 4096;
/// Replications a Tier-1 node runs at once.
const MAX_REPLICATIONS: usize = 4;

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
    /// Tier-1 only: distinct peers asking for content this node lacks before it replicates the
    /// content (fetches it and provides it too).
    pub replicate_after: usize,
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
            replicate_after: 3,
        }
    }

    /// Listen on loopback only, TCP (for tests and simulations).
    pub fn loopback(mut self) -> Self {
        self.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr")];
        self
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
    /// Requests refused by the metering hook.
    pub metered_refusals: u64,
    /// Requests answered "overloaded".
    pub overloaded: u64,
    /// Bad blocks received.
    pub bad_blocks: u64,
    /// Bans imposed.
    pub bans: u64,
    /// Blocks not sent because their requester cancelled them.
    pub cancelled: u64,
    /// Per peer.
    pub peers: HashMap<PeerId, PeerCounters>,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    allowed: Toggle<allow_block_list::Behaviour<allow_block_list::AllowedPeers>>,
    banned: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    exchange: request_response::Behaviour<ExchangeCodec>,
    pubsub: gossipsub::Behaviour,
}

enum Command {
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Dial(Multiaddr, oneshot::Sender<Result<(), NodeError>>),
    Provide(Cid, oneshot::Sender<Result<(), NodeError>>),
    FindProviders(Cid, oneshot::Sender<Vec<PeerId>>),
    Request(
        PeerId,
        Request,
        oneshot::Sender<Result<Response, RequestError>>,
    ),
    Respond(ResponseChannel<Response>, Response),
    BadBlock(PeerId, Cid, oneshot::Sender<()>),
    Connected(oneshot::Sender<Vec<PeerId>>),
    Tiers(oneshot::Sender<HashMap<PeerId, (Tier, u64)>>),
    Replicated(Cid, bool),
    Subscribe(String, oneshot::Sender<Result<(), NodeError>>),
    Publish(String, bytes::Bytes, oneshot::Sender<Result<(), NodeError>>),
    Shutdown(oneshot::Sender<()>),
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
}

/// Most cancelled blocks remembered, over all peers.
const MAX_CANCELLED: usize = 4096;

/// How long a cancel holds: a cancel for a want already answered must not drop a later one.
const CANCEL_HOLDS: Duration = Duration::from_secs(2);

/// Cancelled (peer, block) pairs and when, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Cancelled {
    set: HashMap<(PeerId, Cid), Instant>,
    order: std::collections::VecDeque<(PeerId, Cid)>,
}

impl Cancelled {
    fn insert(&mut self, peer: PeerId, cid: Cid) {
        let now = Instant::now();
        if self.set.insert((peer, cid), now).is_none() {
            self.order.push_back((peer, cid));
        }
        // Forget the expired, and the oldest beyond the bound.
        while let Some(old) = self.order.front() {
            let expired = self
                .set
                .get(old)
                .is_none_or(|at| now.duration_since(*at) > CANCEL_HOLDS);
            if !expired && self.order.len() <= MAX_CANCELLED {
                break;
            }
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    /// Whether `peer` cancelled `cid` within the last moments (forgetting it: a later want of
    /// it is served).
    fn take(&mut self, peer: &PeerId, cid: &Cid) -> bool {
        match self.set.remove(&(*peer, *cid)) {
            Some(at) => {
                self.order.retain(|e| e != &(*peer, *cid));
                at.elapsed() <= CANCEL_HOLDS
            }
            None => false,
        }
    }
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

fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

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
        let allowed = match &config.admission {
            None => None,
            Some(a) => {
                a.list
                    .verify(&a.operator, &config.network, SystemTime::now())?;
                let mut b =
                    allow_block_list::Behaviour::<allow_block_list::AllowedPeers>::default();
                for p in &a.list.peers {
                    b.allow_peer(*p);
                }
                Some(b)
            }
        };
        let kad_protocol =
            StreamProtocol::try_from_owned(format!("/streamspace/{}/kad/1.0.0", config.network))
                .map_err(|e| NodeError::Transport(e.to_string()))?;
        let request_timeout = config.request_timeout;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| NodeError::Transport(e.to_string()))?
            .with_quic()
            .with_behaviour(|key| {
                let pubsub = gossipsub::ConfigBuilder::default()
                    .max_transmit_size(MAX_PUBSUB_MESSAGE + 1024)
                    .validation_mode(gossipsub::ValidationMode::Strict)
                    .heartbeat_interval(Duration::from_millis(500))
                    .build()
                    .map_err(|e| e.to_string())?;
                let pubsub = gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    pubsub,
                )?;
                let mut kc = kad::Config::new(kad_protocol.clone());
                kc.set_provider_publication_interval(Some(PROVIDER_REPUBLISH))
                    .set_provider_record_ttl(Some(PROVIDER_TTL))
                    .set_query_timeout(Duration::from_secs(30))
                    .set_replication_factor(NonZeroUsize::new(20).expect("non-zero"));
                let store = kad::store::MemoryStore::new(peer_id);
                let mut kad = kad::Behaviour::with_config(peer_id, store, kc);
                // Nodes on private or loopback addresses still serve the DHT.
                kad.set_mode(Some(kad::Mode::Server));
                Ok(Behaviour {
                    allowed: Toggle::from(allowed),
                    banned: Default::default(),
                    identify: identify::Behaviour::new(identify::Config::new(
                        "/streamspace/id/1.0.0".into(),
                        key.public(),
                    )),
                    ping: ping::Behaviour::default(),
                    kad,
                    exchange: request_response::Behaviour::with_codec(
                        ExchangeCodec,
                        [(PROTOCOL, ProtocolSupport::Full)],
                        request_response::Config::default()
                            .with_request_timeout(request_timeout)
                            .with_max_concurrent_streams(256),
                    ),
                    pubsub,
                })
            })
            .map_err(|e| NodeError::Transport(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();

        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NodeError::Transport(format!("listen on {addr}: {e}")))?;
        }
        for addr in &config.bootstrap {
            let peer = peer_of(addr).ok_or(NodeError::Address(
                addr.clone(),
                "bootstrap address needs /p2p/<peer id>",
            ))?;
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            swarm
                .dial(addr.clone())
                .map_err(|e| NodeError::Dial(addr.clone(), e.to_string()))?;
        }
        if !config.bootstrap.is_empty() {
            // Fills the routing table; harmless if it finds nobody yet.
            let _ = swarm.behaviour_mut().kad.bootstrap();
        }

        let (events, _) = broadcast::channel(EVENT_QUEUE);
        let shared = Arc::new(Shared {
            store,
            meter,
            stats: Mutex::new(Stats::default()),
            events,
            tier: config.tier,
            request_timeout,
            viewed: Mutex::default(),
            cancelled: Mutex::default(),
        });
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let driver = Driver {
            swarm,
            commands: rx,
            me: tx.downgrade(),
            shared: shared.clone(),
            serving: Arc::new(Semaphore::new(config.max_concurrent_serves)),
            pending: HashMap::new(),
            providers: HashMap::new(),
            provides: HashMap::new(),
            dials: HashMap::new(),
            listening: Vec::new(),
            provided: Vec::new(),
            bad: HashMap::new(),
            bans: Vec::new(),
            tiers: HashMap::new(),
            ban_after: config.ban_after_bad_blocks,
            ban_for: config.ban_for,
            capacity: config.capacity,
            kad_protocol: kad_protocol.clone(),
            replicate_after: config.replicate_after.max(1),
            demand: HashMap::new(),
            replicating: HashSet::new(),
        };
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
            .map(|a| a.with(Protocol::P2p(self.peer_id)))
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

    /// Reports a bad block and waits until the node has counted it (and banned the peer, if
    /// this was one too many).
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

type DialWaiter = (Multiaddr, oneshot::Sender<Result<(), NodeError>>);

struct Driver<S> {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    me: mpsc::WeakSender<Command>,
    shared: Arc<Shared<S>>,
    serving: Arc<Semaphore>,
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, RequestError>>>,
    providers: HashMap<kad::QueryId, (HashSet<PeerId>, oneshot::Sender<Vec<PeerId>>)>,
    provides: HashMap<kad::QueryId, oneshot::Sender<Result<(), NodeError>>>,
    dials: HashMap<PeerId, Vec<DialWaiter>>,
    listening: Vec<Multiaddr>,
    provided: Vec<Cid>,
    bad: HashMap<PeerId, u32>,
    bans: Vec<(Instant, PeerId)>,
    tiers: HashMap<PeerId, (Tier, u64)>,
    ban_after: u32,
    ban_for: Duration,
    capacity: u64,
    kad_protocol: StreamProtocol,
    replicate_after: usize,
    demand: HashMap<Cid, HashSet<PeerId>>,
    replicating: HashSet<Cid>,
}

impl<S: BlockStore + 'static> Driver<S> {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Shutdown(done)) => {
                        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
                        for p in peers {
                            let _ = self.swarm.disconnect_peer_id(p);
                        }
                        drop(self.swarm);
                        let _ = done.send(());
                        return;
                    }
                    Some(cmd) => self.command(cmd),
                    None => return,
                },
                event = self.swarm.select_next_some() => self.event(event),
                _ = tick.tick() => self.unban(),
            }
        }
    }

    fn emit(&self, e: NodeEvent) {
        let _ = self.shared.events.send(e);
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::ListenAddrs(tx) => {
                let _ = tx.send(self.listening.clone());
            }
            Command::Dial(addr, tx) => {
                let Some(peer) = peer_of(&addr) else {
                    let _ = tx.send(Err(NodeError::Address(addr, "needs /p2p/<peer id>")));
                    return;
                };
                if self
                    .swarm
                    .behaviour()
                    .banned
                    .blocked_peers()
                    .contains(&peer)
                {
                    let _ = tx.send(Err(NodeError::Dial(addr, "peer is banned".into())));
                    return;
                }
                if self.swarm.is_connected(&peer) {
                    let _ = tx.send(Ok(()));
                    return;
                }
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, addr.clone());
                match self.swarm.dial(addr.clone()) {
                    Ok(()) => self.dials.entry(peer).or_default().push((addr, tx)),
                    Err(e) => {
                        let _ = tx.send(Err(NodeError::Dial(addr, e.to_string())));
                    }
                }
            }
            Command::Provide(root, tx) => {
                match self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .start_providing(provider_key(&root))
                {
                    Ok(q) => {
                        if !self.provided.contains(&root) {
                            self.provided.push(root);
                        }
                        self.provides.insert(q, tx);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(NodeError::Provide(e.to_string())));
                    }
                }
            }
            Command::FindProviders(root, tx) => {
                let q = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(provider_key(&root));
                self.providers.insert(q, (HashSet::new(), tx));
            }
            Command::Request(peer, req, tx) => {
                let id = self.swarm.behaviour_mut().exchange.send_request(&peer, req);
                self.pending.insert(id, tx);
            }
            Command::Respond(ch, resp) => {
                let _ = self.swarm.behaviour_mut().exchange.send_response(ch, resp);
            }
            Command::BadBlock(peer, cid, done) => {
                self.emit(NodeEvent::BadBlock { peer, cid });
                let banned = self
                    .swarm
                    .behaviour()
                    .banned
                    .blocked_peers()
                    .contains(&peer);
                let n = self.bad.entry(peer).or_default();
                *n += 1;
                // Responses already in flight when the ban began do not ban it again.
                let ban = *n >= self.ban_after && !banned;
                self.shared.with_stats(|s| {
                    s.bad_blocks += 1;
                    s.peers.entry(peer).or_default().bad_blocks += 1;
                    if ban {
                        s.bans += 1;
                    }
                });
                if ban {
                    self.bad.remove(&peer);
                    // Blocking closes its connections and refuses new ones.
                    self.swarm.behaviour_mut().banned.block_peer(peer);
                    self.bans.push((Instant::now() + self.ban_for, peer));
                    tracing::warn!(%peer, "banned for sending bad blocks");
                    self.emit(NodeEvent::Banned(peer));
                }
                let _ = done.send(());
            }
            Command::Connected(tx) => {
                let _ = tx.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Tiers(tx) => {
                let _ = tx.send(self.tiers.clone());
            }
            Command::Replicated(root, ok) => {
                self.replicating.remove(&root);
                self.emit(NodeEvent::Replicated(root, ok));
            }
            Command::Subscribe(topic, tx) => {
                let t = gossipsub::IdentTopic::new(&topic);
                let r = self
                    .swarm
                    .behaviour_mut()
                    .pubsub
                    .subscribe(&t)
                    .map(|_| ())
                    .map_err(|e| NodeError::PubSub {
                        topic,
                        reason: e.to_string(),
                    });
                let _ = tx.send(r);
            }
            Command::Publish(topic, data, tx) => {
                let t = gossipsub::IdentTopic::new(&topic);
                let r = self
                    .swarm
                    .behaviour_mut()
                    .pubsub
                    .publish(t, data)
                    .map(|_| ())
                    .map_err(|e| NodeError::PubSub {
                        topic,
                        reason: e.to_string(),
                    });
                let _ = tx.send(r);
            }
            Command::Shutdown(_) => {}
        }
    }

    fn unban(&mut self) {
        let now = Instant::now();
        let (due, keep): (Vec<_>, Vec<_>) = self.bans.drain(..).partition(|(t, _)| *t <= now);
        self.bans = keep;
        for (_, peer) in due {
            self.swarm.behaviour_mut().banned.unblock_peer(peer);
            self.emit(NodeEvent::Unbanned(peer));
        }
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => self.listening.push(address),
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listening.retain(|a| a != &address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } => {
                for (_, tx) in self.dials.remove(&peer_id).unwrap_or_default() {
                    let _ = tx.send(Ok(()));
                }
                if num_established.get() == 1 {
                    self.emit(NodeEvent::Connected(peer_id));
                    // Learn its tier and capacity.
                    let id = self
                        .swarm
                        .behaviour_mut()
                        .exchange
                        .send_request(&peer_id, Request::Status);
                    let _ = id;
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.tiers.remove(&peer_id);
                self.emit(NodeEvent::Disconnected(peer_id));
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                if matches!(error, libp2p::swarm::ListenError::Denied { .. }) {
                    self.refused(None);
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                if matches!(error, libp2p::swarm::DialError::Denied { .. }) {
                    self.refused(peer_id);
                }
                if let Some(peer) = peer_id {
                    for (addr, tx) in self.dials.remove(&peer).unwrap_or_default() {
                        let _ = tx.send(Err(NodeError::Dial(addr, error.to_string())));
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if info.protocols.contains(&self.kad_protocol) => {
                // Peers of our DHT go into the routing table with the addresses they listen on.
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.kad(e),
            SwarmEvent::Behaviour(BehaviourEvent::Exchange(e)) => self.exchange(e),
            SwarmEvent::Behaviour(BehaviourEvent::Pubsub(gossipsub::Event::Message {
                message,
                ..
            })) if message.data.len() <= MAX_PUBSUB_MESSAGE => {
                self.emit(NodeEvent::Message {
                    topic: message.topic.into_string(),
                    source: message.source,
                    data: message.data.into(),
                });
            }
            _ => {}
        }
    }

    fn refused(&mut self, peer: Option<PeerId>) {
        self.shared.with_stats(|s| s.refused_connections += 1);
        tracing::debug!(?peer, "connection refused");
        self.emit(NodeEvent::Refused(peer));
    }

    fn kad(&mut self, e: kad::Event) {
        let kad::Event::OutboundQueryProgressed {
            id, result, step, ..
        } = e
        else {
            return;
        };
        match result {
            kad::QueryResult::GetProviders(r) => {
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = r {
                    let me = *self.swarm.local_peer_id();
                    for p in providers {
                        if p == me {
                            continue;
                        }
                        // Dial while the query still holds the provider's addresses.
                        if !self.swarm.is_connected(&p) {
                            let _ = self.swarm.dial(p);
                        }
                        if let Some((found, _)) = self.providers.get_mut(&id) {
                            found.insert(p);
                        }
                    }
                }
                if step.last
                    && let Some((found, tx)) = self.providers.remove(&id)
                {
                    let _ = tx.send(found.into_iter().collect());
                }
            }
            kad::QueryResult::StartProviding(r) => {
                if let Some(tx) = self.provides.remove(&id) {
                    // The record is kept and served locally even when no other node took a
                    // copy in time (a lone first node, say); it is republished on schedule.
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "provider record not replicated yet");
                    }
                    let _ = tx.send(Ok(()));
                }
            }
            _ => {}
        }
    }

    fn exchange(&mut self, e: request_response::Event<Request, Response>) {
        use request_response::{Event, Message};
        match e {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.serve(peer, request, channel),
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(tx) = self.pending.remove(&request_id) {
                    let _ = tx.send(Ok(response));
                } else if let Response::Status { tier, capacity, .. } = response {
                    self.tiers.insert(peer, (tier, capacity));
                    self.emit(NodeEvent::Status {
                        peer,
                        tier,
                        capacity,
                    });
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(tx) = self.pending.remove(&request_id) {
                    let _ = tx.send(Err(match error {
                        request_response::OutboundFailure::Timeout => RequestError::Timeout(peer),
                        e => RequestError::Failed {
                            peer,
                            reason: e.to_string(),
                        },
                    }));
                }
            }
            _ => {}
        }
    }

    /// Tier-1 nodes replicate content that several peers ask them for and they lack.
    fn note_demand(&mut self, peer: PeerId, root: Cid) {
        if self.shared.tier != Tier::Tier1
            || self.provided.contains(&root)
            || self.replicating.contains(&root)
        {
            return;
        }
        if self.demand.len() >= MAX_DEMAND_TRACKED && !self.demand.contains_key(&root) {
            self.demand.clear();
        }
        let askers = self.demand.entry(root).or_default();
        askers.insert(peer);
        if askers.len() < self.replicate_after || self.replicating.len() >= MAX_REPLICATIONS {
            return;
        }
        let Some(commands) = self.me.upgrade() else {
            return;
        };
        self.demand.remove(&root);
        self.replicating.insert(root);
        tracing::info!(%root, "replicating content in demand");
        let node = Node {
            peer_id: *self.swarm.local_peer_id(),
            commands,
            shared: self.shared.clone(),
        };
        tokio::spawn(async move {
            let ok = node.fetch(root, FetchOptions::default()).await.is_ok()
                && node.provide(root).await.is_ok();
            let _ = node.commands.send(Command::Replicated(root, ok)).await;
        });
    }

    fn serve(&mut self, peer: PeerId, request: Request, channel: ResponseChannel<Response>) {
        if let Request::Want {
            root: Some(root), ..
        }
        | Request::Have {
            root: Some(root), ..
        } = &request
        {
            self.note_demand(peer, *root);
        }
        if let Request::Cancel { cids } = &request {
            let mut c = self
                .shared
                .cancelled
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for cid in cids.iter().take(MAX_WANT) {
                c.insert(peer, *cid);
            }
            drop(c);
            let _ = self
                .swarm
                .behaviour_mut()
                .exchange
                .send_response(channel, Response::Accepted);
            return;
        }
        if let Request::Status = request {
            let resp = Response::Status {
                tier: self.shared.tier,
                capacity: self.capacity,
                roots: self
                    .provided
                    .iter()
                    .take(MAX_STATUS_ROOTS)
                    .copied()
                    .collect(),
            };
            let _ = self
                .swarm
                .behaviour_mut()
                .exchange
                .send_response(channel, resp);
            return;
        }
        let (Ok(permit), Some(me)) = (self.serving.clone().try_acquire_owned(), self.me.upgrade())
        else {
            self.shared.with_stats(|s| s.overloaded += 1);
            let _ = self.swarm.behaviour_mut().exchange.send_response(
                channel,
                Response::Refused {
                    reason: RefusalReason::Overloaded,
                    retry_after_ms: 50,
                },
            );
            return;
        };
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let resp = answer(&shared, peer, request).await;
            let _ = me.send(Command::Respond(channel, resp)).await;
            drop(permit);
        });
    }
}

async fn answer<S: BlockStore>(shared: &Shared<S>, peer: PeerId, request: Request) -> Response {
    match request {
        Request::Want { cids, .. } => {
            let mut blocks = Vec::new();
            let mut missing = Vec::new();
            let mut deferred = Vec::new();
            let mut total = 0usize;
            let mut refusal = None;
            for cid in cids.into_iter().take(MAX_WANT) {
                let cancelled = shared
                    .cancelled
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take(&peer, &cid);
                if cancelled {
                    shared.with_stats(|s| s.cancelled += 1);
                    continue;
                }
                if refusal.is_some() || total >= MAX_RESPONSE_DATA {
                    deferred.push(cid);
                    continue;
                }
                match shared.store.get(&cid).await {
                    Ok(Some(data)) => {
                        if total + data.len() > MAX_RESPONSE_DATA && !blocks.is_empty() {
                            deferred.push(cid);
                            continue;
                        }
                        match shared.meter.before_send(&peer, &cid, data.len()) {
                            Decision::Serve => {
                                total += data.len();
                                blocks.push((cid, data));
                            }
                            Decision::Pause { retry_after_ms } => {
                                refusal = Some((RefusalReason::Paused, retry_after_ms));
                                deferred.push(cid);
                            }
                            Decision::Refuse => {
                                refusal = Some((RefusalReason::Refused, 0));
                                deferred.push(cid);
                            }
                        }
                    }
                    Ok(None) => missing.push(cid),
                    Err(e) => {
                        tracing::warn!(%cid, error = %e, "store read failed while serving");
                        missing.push(cid);
                    }
                }
            }
            if blocks.is_empty()
                && let Some((reason, retry_after_ms)) = refusal
            {
                shared.with_stats(|s| s.metered_refusals += 1);
                return Response::Refused {
                    reason,
                    retry_after_ms,
                };
            }
            shared.with_stats(|s| {
                let p = s.peers.entry(peer).or_default();
                p.shards_sent += blocks.len() as u64;
                p.bytes_sent += total as u64;
                s.shards_served += blocks.len() as u64;
                s.bytes_served += total as u64;
            });
            Response::Blocks {
                blocks,
                missing,
                deferred,
            }
        }
        Request::Have { cids, .. } => {
            let mut have = Vec::with_capacity(cids.len());
            for cid in cids.iter().take(MAX_WANT) {
                have.push(shared.store.has(cid).await.unwrap_or(false));
            }
            Response::Haves { have }
        }
        Request::Payment { data } => {
            if shared.meter.payment(&peer, &data) {
                Response::Accepted
            } else {
                Response::Refused {
                    reason: RefusalReason::Refused,
                    retry_after_ms: 0,
                }
            }
        }
        Request::Status | Request::Cancel { .. } => Response::Refused {
            reason: RefusalReason::Refused,
            retry_after_ms: 0,
        },
    }
}
