//! Bitswap (`/ipfs/bitswap/1.2.0`, answering 1.1.0 and 1.0.0 peers too): the block exchange
//! of IPFS, so that kubo and Helia nodes fetch from a StreamSpace node and serve it.
//!
//! Laid out as rust-libp2p lays out a protocol:
//!
//! - [`message`]: the message and its protobuf codec (full and delta wantlists, want-have
//!   and want-block, send-dont-have, blocks with CID prefixes, presences, `pendingBytes`);
//! - `protocol`: version negotiation and length-prefixed framing (messages ≤ 4 MiB);
//! - `handler`: one connection's inbound and outbound streams;
//! - [`ledger`]: each peer's wants, kept across messages (at most 1,024 a peer);
//! - `behaviour`: serving rounds and this node's own wants;
//! - this module: its [`Config`], the [`Client`] the node fetches through, and `serve`,
//!   where the node's metering hook decides what is sent.
//!
//! Serving: every block goes through [`Meter::before_send`](crate::meter::Meter) as the
//! exchange protocol's do, so a paid network serves only whom its meter serves, and an open
//! one ([`crate::meter::Free`]) everyone, within the per-peer bounds. The quirks kubo and
//! Helia rely on are kept: a want-have of a block of at most [`Config::replace_have_below`]
//! bytes is answered with the block; identity CIDs are ignored; a connection starts with the
//! full wantlist; a want stays in the ledger until answered, and is answered when the block
//! arrives later.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cid::Cid;
use libp2p::PeerId;
use streamspace_shard::store::{BlockStore, StoreError};
use tokio::sync::{mpsc, oneshot};

mod behaviour;
pub mod handler;
pub mod ledger;
pub mod message;
pub mod protocol;

pub use behaviour::{Behaviour, Event, ServeJob};
pub use protocol::{read_message, write_message};

use behaviour::{Command, Directory, Served};
use message::{Message, Payload, Prefix, Presence, WantType};

use crate::message::{Request, Response};
use crate::meter::Decision;
use crate::node::{Node, RequestError, Shared};

/// How Bitswap runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Whether the node speaks Bitswap at all.
    pub enabled: bool,
    /// Wants kept per peer (kubo: 1,024).
    pub max_queued_wants: usize,
    /// Bytes of blocks waiting to be written to one peer before serving it pauses (kubo's
    /// `MaxOutstandingBytesPerPeer`: 1 MiB).
    pub max_outstanding_bytes: usize,
    /// Wants looked up per serving round.
    pub serve_batch: usize,
    /// A want-have of a block this small is answered with the block (kubo, Helia: 1,024).
    pub replace_have_below: usize,
    /// How long a want of this node waits for its answer.
    pub want_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            max_queued_wants: ledger::MAX_QUEUED_WANTS,
            max_outstanding_bytes: 1 << 20,
            serve_batch: 64,
            replace_have_below: 1024,
            want_timeout: Duration::from_secs(10),
        }
    }
}

/// What a peer answered to this node's wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    /// Blocks it sent (each named by the hash of its data: verified by construction).
    pub blocks: Vec<(Cid, Bytes)>,
    /// Blocks it said it has (or, for tiny blocks, sent).
    pub have: Vec<Cid>,
    /// Blocks it said it lacks (identity CIDs are answered so without asking).
    pub dont_have: Vec<Cid>,
    /// Blocks it did not answer in time, or the connection closed first.
    pub unanswered: Vec<Cid>,
}

/// A handle on the Bitswap behaviour, for asking peers for blocks.
#[derive(Debug, Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    directory: Directory,
    next: Arc<AtomicU64>,
    enabled: bool,
    timeout: Duration,
}

/// Commands queued to the behaviour before callers wait.
const COMMANDS: usize = 256;

/// Makes the behaviour and the client that drives it.
pub fn new(config: Config) -> (Behaviour, Client) {
    let (tx, rx) = mpsc::channel(COMMANDS);
    let directory: Directory = Arc::new(Mutex::new(HashMap::new()));
    let client = Client {
        commands: tx,
        directory: directory.clone(),
        next: Arc::new(AtomicU64::new(0)),
        enabled: config.enabled,
        timeout: config.want_timeout,
    };
    (Behaviour::new(config, rx, directory), client)
}

impl Client {
    /// Asks `peer` for `cids` (blocks or presences) and waits until each is answered or
    /// [`Config::want_timeout`] passes; what was not answered is cancelled at the peer.
    ///
    /// # Errors
    ///
    /// [`RequestError::Closed`] if the node shut down or Bitswap is off.
    pub async fn want(
        &self,
        peer: PeerId,
        cids: Vec<Cid>,
        want_type: WantType,
    ) -> Result<Reply, RequestError> {
        if !self.enabled {
            return Err(RequestError::Closed);
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = oneshot::channel();
        self.commands
            .send(Command::Want {
                id,
                peer,
                cids,
                want_type,
                reply: tx,
            })
            .await
            .map_err(|_| RequestError::Closed)?;
        match tokio::time::timeout(self.timeout, &mut rx).await {
            Ok(r) => r.map_err(|_| RequestError::Closed),
            Err(_) => {
                self.commands
                    .send(Command::Expire(id))
                    .await
                    .map_err(|_| RequestError::Closed)?;
                rx.await.map_err(|_| RequestError::Closed)
            }
        }
    }

    /// Cancels wants of `cids` at `peer` (those no other caller waits for).
    pub async fn cancel(&self, peer: PeerId, cids: Vec<Cid>) {
        let _ = self.commands.send(Command::Cancel(peer, cids)).await;
    }

    /// Tells the behaviour the store gained `cids`: peers that wanted them are answered.
    pub fn new_blocks(&self, cids: Vec<Cid>) {
        let _ = self.commands.try_send(Command::NewBlocks(cids));
    }

    /// The blocks `peer` wants of this node now (its ledger).
    pub async fn ledger(&self, peer: PeerId) -> Vec<Cid> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Ledger(peer, tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Whether `peer` is connected, speaks Bitswap and not the exchange protocol (a kubo or
    /// Helia node, say): fetches ask it over Bitswap.
    pub fn is_bitswap_only(&self, peer: &PeerId) -> bool {
        self.directory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .is_some_and(|r| r.bitswap && !r.exchange)
    }

    /// The connected peers that speak Bitswap and not the exchange protocol.
    pub fn bitswap_only_peers(&self) -> Vec<PeerId> {
        self.directory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, r)| r.bitswap && !r.exchange)
            .map(|(p, _)| *p)
            .collect()
    }
}

/// Carries out a serving round off the swarm task: looks the wants up in the store, meters
/// each block, and hands the message back to the behaviour. Called by the node for every
/// [`Event::Serve`].
pub(crate) fn serve<S: BlockStore + 'static>(shared: &Arc<Shared<S>>, event: Event) {
    let Event::Serve(job) = event;
    let shared = shared.clone();
    tokio::spawn(async move {
        let done = job.done.clone();
        let served = round(&shared, job).await;
        let _ = done.send(served).await;
    });
}

async fn round<S: BlockStore>(shared: &Shared<S>, job: ServeJob) -> Served {
    let ServeJob {
        peer,
        wants,
        budget,
        replace_have_below,
        ..
    } = job;
    let mut message = Message::default();
    let mut answered = Vec::new();
    let mut parked = Vec::new();
    let mut paused = None;
    let mut total = 0usize;
    let mut pending = 0usize;
    let mut refused = 0u64;
    for (cid, want) in wants {
        // The index first: a block answered with a HAVE, or beyond this round's budget, is
        // not read.
        let data = match logged(&cid, shared.store.size(&cid).await) {
            Some(n) if want.want_type == WantType::Have && n > replace_have_below => {
                message.presences.push((cid, Presence::Have));
                answered.push((cid, want.seq));
                continue;
            }
            Some(n) if paused.is_some() || (total + n > budget && total > 0) => {
                // Next round.
                pending += n;
                continue;
            }
            Some(_) => logged(&cid, shared.store.get(&cid).await),
            None => None,
        };
        // Absent, or found corrupt when read (and dropped by the store).
        let Some(data) = data else {
            if want.send_dont_have {
                message.presences.push((cid, Presence::DontHave));
                answered.push((cid, want.seq));
            } else {
                parked.push((cid, want.seq));
            }
            continue;
        };
        match shared.meter.before_send(&peer, &cid, data.len()) {
            Decision::Serve => {
                total += data.len();
                message.blocks.push(Payload {
                    prefix: Prefix::of(&cid),
                    data,
                });
                answered.push((cid, want.seq));
            }
            Decision::Pause { retry_after_ms } => {
                paused = Some(Duration::from_millis(retry_after_ms.clamp(1, 60_000)));
            }
            Decision::Refuse => {
                refused += 1;
                if want.send_dont_have {
                    message.presences.push((cid, Presence::DontHave));
                }
                answered.push((cid, want.seq));
            }
        }
    }
    message.pending_bytes = i32::try_from(pending).unwrap_or(i32::MAX);
    let n = message.blocks.len() as u64;
    shared.with_stats(|s| {
        let p = s.peers.entry(peer).or_default();
        p.shards_sent += n;
        p.bytes_sent += total as u64;
        s.shards_served += n;
        s.bytes_served += total as u64;
        s.metered_refusals += refused + u64::from(paused.is_some());
    });
    Served {
        peer,
        message,
        answered,
        parked,
        paused,
    }
}

/// A store answer while serving: a failed read is logged and served as absent.
fn logged<T>(cid: &Cid, r: Result<Option<T>, StoreError>) -> Option<T> {
    r.unwrap_or_else(|e| {
        tracing::warn!(%cid, error = %e, "store read failed while serving bitswap");
        None
    })
}

impl<S: BlockStore + 'static> Node<S> {
    /// The Bitswap client of this node.
    pub fn bitswap(&self) -> &Client {
        &self.shared.bitswap
    }

    /// Asks `peer` over Bitswap for `cids`: blocks ([`WantType::Block`]) or presences
    /// ([`WantType::Have`]). Received blocks are named by their hash, so they are what was
    /// asked; they are not stored.
    ///
    /// # Errors
    ///
    /// [`RequestError::Closed`] if the node shut down or Bitswap is off.
    pub async fn bitswap_want(
        &self,
        peer: PeerId,
        cids: Vec<Cid>,
        want_type: WantType,
    ) -> Result<Reply, RequestError> {
        self.shared.bitswap.want(peer, cids, want_type).await
    }

    /// Sends a fetch's request to `peer`: over the exchange protocol, or, to a peer that
    /// speaks only Bitswap, as the Bitswap wants that say the same (a want of blocks, a
    /// want-have of a have list, a cancel).
    pub(crate) async fn ask_peer(
        &self,
        peer: PeerId,
        request: Request,
    ) -> Result<Response, RequestError> {
        let client = &self.shared.bitswap;
        if !client.is_bitswap_only(&peer) {
            return self.request(peer, request).await;
        }
        match request {
            Request::Want { cids, .. } => {
                let r = client.want(peer, cids, WantType::Block).await?;
                if r.blocks.is_empty() && r.dont_have.is_empty() {
                    return Err(RequestError::Timeout(peer));
                }
                Ok(Response::Blocks {
                    blocks: r.blocks,
                    missing: r.dont_have,
                    deferred: r.unanswered,
                    cancelled: Vec::new(),
                })
            }
            Request::Have { cids, .. } => {
                let r = client.want(peer, cids.clone(), WantType::Have).await?;
                if r.have.is_empty() && r.dont_have.is_empty() {
                    return Err(RequestError::Timeout(peer));
                }
                let have: std::collections::HashSet<Cid> = r.have.into_iter().collect();
                Ok(Response::Haves {
                    have: cids.iter().map(|c| have.contains(c)).collect(),
                })
            }
            Request::Cancel { cids } => {
                client.cancel(peer, cids).await;
                Ok(Response::Accepted)
            }
            other => Err(RequestError::Failed {
                peer,
                reason: format!("{other:?} has no Bitswap equivalent"),
            }),
        }
    }
}
