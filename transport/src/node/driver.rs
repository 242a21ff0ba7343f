//! The swarm driver: one task owns the `Swarm` and runs, one at a time, the commands of the
//! [`Node`](super::Node) handles (over a bounded channel), the swarm's events and a one-second
//! tick that lifts expired bans.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cid::Cid;
use futures::StreamExt;
use libp2p::request_response::{InboundRequestId, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, gossipsub, identify, kad};
use streamspace_shard::store::BlockStore;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::behaviour::{Behaviour, BehaviourEvent};
use super::nat::{Nat, NatStatus};
use super::replication::Replication;
use super::{
    Config, MAX_PUBSUB_MESSAGE, NodeError, NodeEvent, RequestError, Shared, peer_of, provider_key,
};
use crate::message::{Request, Response, Tier};

/// What a [`Node`](super::Node) handle asks of the task that owns the swarm.
pub(super) enum Command {
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Dial(Multiaddr, oneshot::Sender<Result<(), NodeError>>),
    Provide(Cid, oneshot::Sender<Result<(), NodeError>>),
    FindProviders(Cid, oneshot::Sender<Vec<PeerId>>),
    Request(
        PeerId,
        Request,
        oneshot::Sender<Result<Response, RequestError>>,
    ),
    /// An answer prepared off the swarm task for `PeerId`, and what it holds until written.
    Respond(
        PeerId,
        InboundRequestId,
        ResponseChannel<Response>,
        Response,
        super::serving::Held,
    ),
    BadBlock(PeerId, Cid, oneshot::Sender<()>),
    Connected(oneshot::Sender<Vec<PeerId>>),
    Tiers(oneshot::Sender<HashMap<PeerId, (Tier, u64)>>),
    Replicated(Cid, bool),
    Subscribe(String, oneshot::Sender<Result<(), NodeError>>),
    Publish(String, bytes::Bytes, oneshot::Sender<Result<(), NodeError>>),
    Nat(oneshot::Sender<NatStatus>),
    Allowlist(
        Box<crate::allowlist::SignedAllowlist>,
        oneshot::Sender<Result<(), NodeError>>,
    ),
    Shutdown(oneshot::Sender<()>),
}

type DialWaiter = (Multiaddr, oneshot::Sender<Result<(), NodeError>>);
/// A provider lookup: the providers found so far, the DHT queries still running for it (one
/// per DHT), and who waits.
type Find = (HashSet<PeerId>, usize, oneshot::Sender<Vec<PeerId>>);

/// The task that owns the swarm: it runs the handles' commands and the swarm's events, one at
/// a time.
pub(super) struct Driver<S> {
    pub(super) swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    pub(super) me: mpsc::WeakSender<Command>,
    pub(super) shared: Arc<Shared<S>>,
    pub(super) serving: Arc<Semaphore>,
    pub(super) pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, RequestError>>>,
    /// Provider lookups under way, by number.
    finds: HashMap<u64, Find>,
    next_find: u64,
    /// The lookup each query of the network's DHT, and of the Amino DHT, belongs to.
    providers: HashMap<kad::QueryId, u64>,
    amino_providers: HashMap<kad::QueryId, u64>,
    provides: HashMap<kad::QueryId, oneshot::Sender<Result<(), NodeError>>>,
    dials: HashMap<PeerId, Vec<DialWaiter>>,
    listening: Vec<Multiaddr>,
    /// Roots provided, in the order first provided (some are named in status answers).
    pub(super) provided: Vec<Cid>,
    pub(super) provided_set: HashSet<Cid>,
    /// Answers in preparation or being written, per peer (see
    /// [`super::Limits::serves_per_peer`]).
    pub(super) in_service: HashMap<PeerId, usize>,
    /// Answers handed to the swarm and not yet written, with what they hold.
    pub(super) writing: HashMap<InboundRequestId, (PeerId, super::serving::Held)>,
    /// Bytes of answers each connected peer holds (see
    /// [`super::Limits::max_answer_bytes_per_peer`]); made when its first request is served,
    /// dropped when its last connection closes.
    pub(super) answer_bytes: HashMap<PeerId, Arc<Semaphore>>,
    /// Have-list queries each connected peer may still make (see `serving`).
    pub(super) have_buckets: HashMap<PeerId, super::serving::Bucket>,
    pub(super) limits: super::Limits,
    bad: HashMap<PeerId, u32>,
    bans: Vec<(Instant, PeerId)>,
    pub(super) tiers: HashMap<PeerId, (Tier, u64)>,
    ban_after: u32,
    ban_for: Duration,
    pub(super) capacity: u64,
    kad_protocol: StreamProtocol,
    pub(super) replication: Replication,
    pub(super) nat: Nat,
    /// A closed network's admission in force, its topic, and whether its list has expired.
    admission: Option<(super::Admission, gossipsub::TopicHash, bool)>,
    network: String,
}

impl<S: BlockStore + 'static> Driver<S> {
    /// Starts `swarm` listening on `config.listen` and dialing `config.bootstrap`.
    ///
    /// # Errors
    ///
    /// [`NodeError::Transport`] if it cannot listen; [`NodeError::Address`] for a bootstrap
    /// address without its peer id; [`NodeError::Dial`].
    pub(super) fn new(
        mut swarm: Swarm<Behaviour>,
        kad_protocol: StreamProtocol,
        config: &Config,
        shared: Arc<Shared<S>>,
        commands: mpsc::Receiver<Command>,
        me: mpsc::WeakSender<Command>,
    ) -> Result<Self, NodeError> {
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
        let admission = match &config.admission {
            Some(a) => {
                let topic = gossipsub::IdentTopic::new(crate::allowlist::topic(&config.network));
                swarm
                    .behaviour_mut()
                    .pubsub
                    .subscribe(&topic)
                    .map_err(|e| NodeError::Transport(format!("allowlist topic: {e}")))?;
                Some((a.clone(), topic.hash(), false))
            }
            None => None,
        };
        if !config.bootstrap.is_empty() {
            // Fills the routing table; harmless if it finds nobody yet.
            let _ = swarm.behaviour_mut().kad.bootstrap();
        }
        Ok(Self {
            swarm,
            commands,
            me,
            shared,
            serving: Arc::new(Semaphore::new(config.max_concurrent_serves)),
            pending: HashMap::new(),
            finds: HashMap::new(),
            next_find: 0,
            providers: HashMap::new(),
            amino_providers: HashMap::new(),
            provides: HashMap::new(),
            dials: HashMap::new(),
            listening: Vec::new(),
            provided: Vec::new(),
            provided_set: HashSet::new(),
            in_service: HashMap::new(),
            writing: HashMap::new(),
            have_buckets: HashMap::new(),
            answer_bytes: HashMap::new(),
            limits: config.limits,
            bad: HashMap::new(),
            bans: Vec::new(),
            tiers: HashMap::new(),
            ban_after: config.ban_after_bad_blocks,
            ban_for: config.ban_for,
            capacity: config.capacity,
            kad_protocol,
            replication: Replication::new(config.replication.clone()),
            nat: Nat::new(&config.nat),
            admission,
            network: config.network.clone(),
        })
    }

    /// Runs until shut down or until the last handle is dropped.
    pub(super) async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Shutdown(done)) => {
                        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
                        for p in peers {
                            let _ = self.swarm.disconnect_peer_id(p);
                        }
                        // Let the connections close cleanly (peers then see an orderly end,
                        // not a broken pipe), for a second at most.
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
                        while self.swarm.network_info().num_peers() > 0 {
                            tokio::select! {
                                _ = self.swarm.select_next_some() => {}
                                () = tokio::time::sleep_until(deadline) => break,
                            }
                        }
                        drop(self.swarm);
                        let _ = done.send(());
                        return;
                    }
                    Some(cmd) => self.command(cmd),
                    None => return,
                },
                event = self.swarm.select_next_some() => self.event(event),
                _ = tick.tick() => {
                    self.unban();
                    self.expire_allowlist();
                    self.nat_tick();
                }
            }
        }
    }

    pub(super) fn emit(&self, e: NodeEvent) {
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
                        if self.provided_set.insert(root) {
                            self.provided.push(root);
                        }
                        self.provides.insert(q, tx);
                        // Announced to the public DHT too, where it is joined; its outcome
                        // there does not hold up the caller.
                        if let Some(amino) = self.swarm.behaviour_mut().amino.as_mut()
                            && let Err(e) = amino.start_providing(provider_key(&root))
                        {
                            tracing::info!(%root, error = %e, "not provided on the Amino DHT");
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(NodeError::Provide(e.to_string())));
                    }
                }
            }
            Command::FindProviders(root, tx) => {
                let id = self.next_find;
                self.next_find += 1;
                let key = provider_key(&root);
                let q = self.swarm.behaviour_mut().kad.get_providers(key.clone());
                self.providers.insert(q, id);
                let mut waiting = 1;
                if let Some(amino) = self.swarm.behaviour_mut().amino.as_mut() {
                    self.amino_providers.insert(amino.get_providers(key), id);
                    waiting += 1;
                }
                self.finds.insert(id, (HashSet::new(), waiting, tx));
            }
            Command::Request(peer, req, tx) => {
                let id = self.swarm.behaviour_mut().exchange.send_request(&peer, req);
                self.pending.insert(id, tx);
            }
            Command::Respond(peer, id, ch, resp, held) => {
                // Its share of serving and its bytes stay taken until the answer is written.
                match self.swarm.behaviour_mut().exchange.send_response(ch, resp) {
                    Ok(()) => {
                        self.writing.insert(id, (peer, held));
                    }
                    Err(_) => self.written(peer),
                }
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
                self.replication.finished(&root);
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
            Command::Nat(tx) => {
                let _ = tx.send(self.nat.status());
            }
            Command::Allowlist(list, tx) => {
                let _ = tx.send(self.apply_allowlist(*list));
            }
            Command::Shutdown(_) => {}
        }
    }

    /// Puts a newer allowlist in force: peers it adds are let in, peers it drops are
    /// disconnected.
    fn apply_allowlist(
        &mut self,
        list: crate::allowlist::SignedAllowlist,
    ) -> Result<(), NodeError> {
        let Some((admission, _, expired)) = &mut self.admission else {
            return Err(NodeError::Open);
        };
        list.verify(
            &admission.operator,
            &self.network,
            std::time::SystemTime::now(),
        )?;
        if list.expires <= admission.list.expires {
            return Err(crate::allowlist::AllowlistError::NotNewer.into());
        }
        let before: HashSet<PeerId> = if *expired {
            HashSet::new()
        } else {
            admission.list.peers.iter().copied().collect()
        };
        let removed: Vec<PeerId> = before
            .iter()
            .filter(|p| !list.peers.contains(p))
            .copied()
            .collect();
        let (peers, n_removed) = (list.peers.len(), removed.len());
        if let Some(allowed) = self.swarm.behaviour_mut().allowed.as_mut() {
            for p in list.peers.iter().filter(|p| !before.contains(p)) {
                allowed.allow_peer(*p);
            }
            // Disallowing closes the peer's connections.
            for p in &removed {
                allowed.disallow_peer(*p);
                tracing::info!(peer = %p, "removed from the allowlist; disconnecting");
            }
        }
        admission.list = list;
        *expired = false;
        tracing::info!(peers, removed = n_removed, "newer allowlist in force");
        self.emit(NodeEvent::AllowlistUpdated {
            peers,
            removed: n_removed,
        });
        Ok(())
    }

    /// Once the allowlist in force expires, every peer is refused until a newer one arrives.
    fn expire_allowlist(&mut self) {
        let Some((admission, _, expired)) = &mut self.admission else {
            return;
        };
        if *expired || std::time::SystemTime::now() < admission.list.expires {
            return;
        }
        *expired = true;
        let peers: Vec<PeerId> = admission.list.peers.iter().copied().collect();
        if let Some(allowed) = self.swarm.behaviour_mut().allowed.as_mut() {
            for p in peers {
                allowed.disallow_peer(p);
            }
        }
        tracing::warn!("the allowlist expired: every peer is refused until a newer list arrives");
        self.emit(NodeEvent::AllowlistExpired);
    }

    /// An answer to `peer` was written, or failed: its share of serving is free again (what
    /// it held is dropped by the caller).
    pub(super) fn written(&mut self, peer: PeerId) {
        if let Some(n) = self.in_service.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.in_service.remove(&peer);
            }
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
        self.nat_event(&event);
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
                self.have_buckets.remove(&peer_id);
                self.answer_bytes.remove(&peer_id);
                self.emit(NodeEvent::Disconnected(peer_id));
            }
            SwarmEvent::IncomingConnectionError { error, peer_id, .. } => {
                if matches!(error, libp2p::swarm::ListenError::Denied { .. }) {
                    self.refused(peer_id);
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
            })) => {
                // Peers of a DHT go into its routing table with the addresses they listen on.
                let ours = info.protocols.contains(&self.kad_protocol);
                let amino = info.protocols.contains(&super::AMINO_PROTOCOL);
                for addr in info.listen_addrs {
                    if ours {
                        self.swarm
                            .behaviour_mut()
                            .kad
                            .add_address(&peer_id, addr.clone());
                    }
                    if amino && let Some(a) = self.swarm.behaviour_mut().amino.as_mut() {
                        a.add_address(&peer_id, addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.kad(e, false),
            SwarmEvent::Behaviour(BehaviourEvent::Amino(e)) => self.kad(e, true),
            SwarmEvent::Behaviour(BehaviourEvent::Exchange(e)) => self.exchange(e),
            SwarmEvent::Behaviour(BehaviourEvent::Bitswap(e)) => {
                crate::bitswap::serve(&self.shared, e)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Pubsub(gossipsub::Event::Message {
                message,
                ..
            })) if self
                .admission
                .as_ref()
                .is_some_and(|(_, t, _)| *t == message.topic) =>
            {
                // Anyone may publish here; only a list the operator signed is taken.
                match crate::allowlist::SignedAllowlist::decode(&message.data)
                    .map_err(NodeError::from)
                    .and_then(|l| self.apply_allowlist(l))
                {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::info!(source = ?message.source, error = %e, "allowlist from the topic not taken")
                    }
                }
            }
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
        match peer {
            Some(peer) => tracing::info!(%peer, "connection refused"),
            None => tracing::info!("incoming connection refused"),
        }
        self.emit(NodeEvent::Refused(peer));
    }

    /// An event of the network's DHT, or of the Amino DHT (`amino`).
    fn kad(&mut self, e: kad::Event, amino: bool) {
        let kad::Event::OutboundQueryProgressed {
            id, result, step, ..
        } = e
        else {
            return;
        };
        match result {
            kad::QueryResult::GetProviders(r) => {
                let queries = if amino {
                    &mut self.amino_providers
                } else {
                    &mut self.providers
                };
                let find = if step.last {
                    queries.remove(&id)
                } else {
                    queries.get(&id).copied()
                };
                let Some(find) = find else {
                    return;
                };
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
                        if let Some((found, _, _)) = self.finds.get_mut(&find) {
                            found.insert(p);
                        }
                    }
                }
                if step.last
                    && let Some((_, waiting, _)) = self.finds.get_mut(&find)
                {
                    *waiting -= 1;
                    if *waiting == 0
                        && let Some((found, _, tx)) = self.finds.remove(&find)
                    {
                        let _ = tx.send(found.into_iter().collect());
                    }
                }
            }
            kad::QueryResult::StartProviding(_) if amino => {}
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
}
