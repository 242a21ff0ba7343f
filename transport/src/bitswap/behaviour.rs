//! The Bitswap network behaviour: each peer's ledger of wants and the serving rounds that
//! answer them, and this node's own wants of each peer with the callers waiting for them.
//!
//! Serving runs in rounds, one at a time per peer: the behaviour hands the next wants of the
//! ledger (highest priority first) to the node as an [`Event::Serve`]; the node looks them
//! up and meters them off the swarm task ([`super::serve`]) and hands back one message,
//! which the behaviour sends. A round starts only while fewer than
//! [`Config::max_outstanding_bytes`] bytes of blocks wait to be written to the peer, so a
//! peer that reads slowly is not buffered for; a round fills half of that bound at most, so
//! that the next round is looked up while the last one's message is written. A round reads
//! the blocks it sends and no others: the store's index says which blocks are held and how
//! long they are (for HAVEs and `pendingBytes`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cid::Cid;
use futures::FutureExt;
use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use super::handler::{FromBehaviour, Handler, Received, ToBehaviour};
use super::ledger::{Ledger, Want};
use super::message::{
    Entry, MAX_BLOCK, Message, Presence, Version, WantType, Wantlist, is_identity,
};
use super::{Config, Reply};

/// Commands a [`super::Client`] sends.
#[derive(Debug)]
pub(crate) enum Command {
    Want {
        id: u64,
        peer: PeerId,
        cids: Vec<Cid>,
        want_type: WantType,
        reply: oneshot::Sender<Reply>,
    },
    /// The wait `id` is over: answer it with what arrived, cancel the rest.
    Expire(u64),
    /// Cancel wants of `peer`.
    Cancel(PeerId, Vec<Cid>),
    /// The store gained these blocks: wants parked on them are looked up again.
    NewBlocks(Vec<Cid>),
    /// The wants `peer` has of this node.
    Ledger(PeerId, oneshot::Sender<Vec<Cid>>),
}

/// A serving round for the node to carry out (carried out by the node's serving task).
#[derive(Debug)]
pub struct ServeJob {
    pub(crate) peer: PeerId,
    pub(crate) wants: Vec<(Cid, Want)>,
    pub(crate) budget: usize,
    pub(crate) replace_have_below: usize,
    pub(crate) done: mpsc::Sender<Served>,
}

/// The outcome of a serving round.
#[derive(Debug)]
pub(crate) struct Served {
    pub(crate) peer: PeerId,
    pub(crate) message: Message,
    /// Wants answered (removed from the ledger), by version.
    pub(crate) answered: Vec<(Cid, u64)>,
    /// Wants looked up and not held, without DONT_HAVE asked (kept, parked).
    pub(crate) parked: Vec<(Cid, u64)>,
    /// The metering hook paused service: look again after this long.
    pub(crate) paused: Option<Duration>,
}

/// What the behaviour asks of the node.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// Look up and meter these wants of a peer, and hand the answer back.
    Serve(ServeJob),
}

/// What is known of a connected peer's protocols.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Remote {
    pub(crate) bitswap: bool,
    pub(crate) exchange: bool,
}

/// Shared with [`super::Client`]s: the connected peers and what they speak.
pub(crate) type Directory = Arc<Mutex<HashMap<PeerId, Remote>>>;

struct Wait {
    peer: PeerId,
    want_type: WantType,
    remaining: HashSet<Cid>,
    reply: Reply,
    tx: oneshot::Sender<Reply>,
}

#[derive(Default)]
struct Peer {
    connections: Vec<ConnectionId>,
    ledger: Ledger,
    serving: bool,
    outstanding: usize,
    paused_until: Option<Instant>,
    ours: HashMap<Cid, WantType>,
}

/// The Bitswap behaviour (see the module docs).
pub struct Behaviour {
    config: Config,
    peers: HashMap<PeerId, Peer>,
    waits: HashMap<u64, Wait>,
    commands: mpsc::Receiver<Command>,
    served_tx: mpsc::Sender<Served>,
    served: mpsc::Receiver<Served>,
    directory: Directory,
    events: VecDeque<ToSwarm<Event, FromBehaviour>>,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Behaviour")
            .field("peers", &self.peers.len())
            .field("waits", &self.waits.len())
            .finish_non_exhaustive()
    }
}

impl Behaviour {
    pub(crate) fn new(
        config: Config,
        commands: mpsc::Receiver<Command>,
        directory: Directory,
    ) -> Self {
        let (served_tx, served) = mpsc::channel(64);
        Self {
            config,
            peers: HashMap::new(),
            waits: HashMap::new(),
            commands,
            served_tx,
            served,
            directory,
            events: VecDeque::new(),
            timer: None,
        }
    }

    fn peer(&mut self, peer: PeerId) -> &mut Peer {
        let limit = self.config.max_queued_wants;
        self.peers.entry(peer).or_insert_with(|| Peer {
            ledger: Ledger::new(limit),
            ..Peer::default()
        })
    }

    fn send(&mut self, peer: PeerId, message: Message) {
        let Some(conn) = self
            .peers
            .get(&peer)
            .and_then(|p| p.connections.first().copied())
        else {
            return;
        };
        self.events.push_back(ToSwarm::NotifyHandler {
            peer_id: peer,
            handler: NotifyHandler::One(conn),
            event: FromBehaviour::Send(message),
        });
    }

    fn send_wants(&mut self, peer: PeerId, entries: Vec<Entry>, full: bool) {
        if entries.is_empty() && !full {
            return;
        }
        self.send(
            peer,
            Message {
                wantlist: Some(Wantlist { entries, full }),
                ..Message::default()
            },
        );
    }

    /// Starts a serving round for `peer` if it has wants to look up and room.
    fn kick(&mut self, peer: PeerId) {
        let max = self.config.max_outstanding_bytes;
        let batch = self.config.serve_batch;
        let replace = self.config.replace_have_below;
        let done = self.served_tx.clone();
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.serving
            || p.connections.is_empty()
            || p.outstanding >= max
            || p.paused_until.is_some_and(|t| t > Instant::now())
            || !p.ledger.has_work()
        {
            return;
        }
        p.serving = true;
        let wants = p.ledger.next(batch);
        // Half the bound at most, so that the next round is looked up while this one's
        // message is written; and no more than one message can carry.
        let budget = (max - p.outstanding).min(max.div_ceil(2)).min(MAX_BLOCK);
        self.events
            .push_back(ToSwarm::GenerateEvent(Event::Serve(ServeJob {
                peer,
                wants,
                budget,
                replace_have_below: replace,
                done,
            })));
    }

    fn served(&mut self, s: Served) {
        let peer = s.peer;
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.serving = false;
        for (cid, seq) in &s.answered {
            p.ledger.answered(cid, *seq);
        }
        for (cid, seq) in &s.parked {
            p.ledger.park(cid, *seq);
        }
        if let Some(d) = s.paused {
            let until = Instant::now() + d;
            p.paused_until = Some(until);
            let later = self
                .timer
                .as_ref()
                .is_none_or(|t| t.deadline().into_std() > until);
            if later {
                self.timer = Some(Box::pin(tokio::time::sleep_until(until.into())));
            }
        }
        if !s.message.is_empty() {
            p.outstanding += s.message.blocks.iter().map(|b| b.data.len()).sum::<usize>();
            self.send(peer, s.message);
        }
        self.kick(peer);
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Want {
                id,
                peer,
                cids,
                want_type,
                reply,
            } => {
                let connected = self
                    .peers
                    .get(&peer)
                    .is_some_and(|p| !p.connections.is_empty());
                let mut r = Reply::default();
                let mut remaining = HashSet::new();
                let mut entries = Vec::new();
                let p = self.peer(peer);
                for cid in cids {
                    if is_identity(&cid) {
                        // Its data is the CID's own.
                        r.dont_have.push(cid);
                        continue;
                    }
                    if !connected {
                        r.unanswered.push(cid);
                        continue;
                    }
                    remaining.insert(cid);
                    let have = p.ours.get(&cid).copied();
                    let send = match (have, want_type) {
                        (None, _) | (Some(WantType::Have), WantType::Block) => true,
                        (Some(_), _) => false,
                    };
                    if send {
                        p.ours.insert(cid, want_type);
                        entries.push(Entry::want(cid, want_type));
                    }
                }
                if remaining.is_empty() {
                    let _ = reply.send(r);
                    return;
                }
                self.waits.insert(
                    id,
                    Wait {
                        peer,
                        want_type,
                        remaining,
                        reply: r,
                        tx: reply,
                    },
                );
                self.send_wants(peer, entries, false);
            }
            Command::Expire(id) => {
                if let Some(mut w) = self.waits.remove(&id) {
                    let peer = w.peer;
                    let left: Vec<Cid> = w.remaining.drain().collect();
                    w.reply.unanswered.extend(left.iter().copied());
                    let _ = w.tx.send(w.reply);
                    self.cancel_unwaited(peer, left);
                }
            }
            Command::Cancel(peer, cids) => self.cancel_unwaited(peer, cids),
            Command::Ledger(peer, tx) => {
                let _ = tx.send(
                    self.peers
                        .get(&peer)
                        .map(|p| p.ledger.cids())
                        .unwrap_or_default(),
                );
            }
            Command::NewBlocks(cids) => {
                let mut kick = Vec::new();
                for (id, p) in &mut self.peers {
                    if p.ledger.unpark(&cids) {
                        kick.push(*id);
                    }
                }
                for id in kick {
                    self.kick(id);
                }
            }
        }
    }

    /// Cancels our wants of `cids` at `peer` that no caller waits for any longer.
    fn cancel_unwaited(&mut self, peer: PeerId, cids: Vec<Cid>) {
        let waited: HashSet<Cid> = self
            .waits
            .values()
            .filter(|w| w.peer == peer)
            .flat_map(|w| w.remaining.iter().copied())
            .collect();
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let mut entries = Vec::new();
        for cid in cids {
            if !waited.contains(&cid) && p.ours.remove(&cid).is_some() {
                entries.push(Entry::cancel(cid));
            }
        }
        self.send_wants(peer, entries, false);
    }

    /// Answers the waits of `peer` that `f` settles.
    fn settle(&mut self, peer: PeerId, mut f: impl FnMut(&mut Wait)) {
        let done: Vec<u64> = self
            .waits
            .iter_mut()
            .filter(|(_, w)| w.peer == peer)
            .filter_map(|(id, w)| {
                f(w);
                w.remaining.is_empty().then_some(*id)
            })
            .collect();
        for id in done {
            if let Some(w) = self.waits.remove(&id) {
                let _ = w.tx.send(w.reply);
            }
        }
    }

    fn received(&mut self, peer: PeerId, r: Received) {
        let Received {
            message,
            blocks,
            unverifiable,
            ..
        } = r;
        if unverifiable > 0 {
            tracing::debug!(%peer, unverifiable, "bitswap blocks with unsupported prefixes ignored");
        }
        if let Some(wl) = &message.wantlist {
            let applied = self.peer(peer).ledger.apply(wl);
            if applied.over_limit > 0 {
                tracing::debug!(%peer, over = applied.over_limit, "wants over the per-peer bound ignored");
            }
        }
        // Blocks: ours, if we asked for them (unasked ones are dropped).
        let mut got: HashMap<Cid, Bytes> = HashMap::new();
        if let Some(p) = self.peers.get_mut(&peer) {
            for (cid, data) in blocks {
                if p.ours.remove(&cid).is_some() {
                    got.insert(cid, data);
                }
            }
        }
        let mut cancels = Vec::new();
        let presences = message.presences;
        self.settle(peer, |w| {
            for (cid, data) in &got {
                if w.remaining.remove(cid) {
                    if w.want_type == WantType::Have {
                        w.reply.have.push(*cid);
                    }
                    w.reply.blocks.push((*cid, data.clone()));
                }
            }
            for (cid, p) in &presences {
                match p {
                    Presence::Have if w.want_type == WantType::Have => {
                        if w.remaining.remove(cid) {
                            w.reply.have.push(*cid);
                        }
                    }
                    Presence::Have => {}
                    Presence::DontHave => {
                        if w.remaining.remove(cid) {
                            w.reply.dont_have.push(*cid);
                        }
                    }
                }
            }
        });
        // Answered want-haves, and want-blocks the peer lacks, are wants no longer.
        for (cid, p) in &presences {
            let ours = self.peers.get(&peer).and_then(|x| x.ours.get(cid)).copied();
            match (p, ours) {
                (Presence::Have, Some(WantType::Have)) => {
                    if let Some(x) = self.peers.get_mut(&peer) {
                        x.ours.remove(cid);
                    }
                }
                (Presence::DontHave, Some(_)) => cancels.push(*cid),
                _ => {}
            }
        }
        self.cancel_unwaited(peer, cancels);
        self.kick(peer);
    }

    fn handler_event(&mut self, peer: PeerId, e: ToBehaviour) {
        match e {
            ToBehaviour::Message(r) => self.received(peer, r),
            ToBehaviour::Sent { blocks } | ToBehaviour::SendFailed { blocks } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.outstanding = p.outstanding.saturating_sub(blocks);
                }
                self.kick(peer);
            }
            ToBehaviour::Malformed(e) => {
                tracing::debug!(%peer, error = %e, "malformed bitswap message");
            }
            ToBehaviour::Protocols { bitswap, exchange } => {
                let mut d = self.directory.lock().unwrap_or_else(|p| p.into_inner());
                d.insert(peer, Remote { bitswap, exchange });
            }
            ToBehaviour::Unsupported => {
                let mut d = self.directory.lock().unwrap_or_else(|p| p.into_inner());
                d.entry(peer).or_default().bitswap = false;
            }
        }
    }

    fn closed(&mut self, peer: PeerId, conn: ConnectionId, remaining: usize) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.connections.retain(|c| *c != conn);
            // The connection's queue went with it.
            p.outstanding = 0;
        }
        if remaining > 0 {
            return;
        }
        self.peers.remove(&peer);
        self.directory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&peer);
        let ids: Vec<u64> = self
            .waits
            .iter()
            .filter(|(_, w)| w.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(mut w) = self.waits.remove(&id) {
                w.reply.unanswered.extend(w.remaining.drain());
                let _ = w.tx.send(w.reply);
            }
        }
    }

    fn versions(&self) -> Vec<Version> {
        Version::ALL.to_vec()
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::new(self.versions()))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::new(self.versions()))
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionEstablished(c) => {
                let p = self.peer(c.peer_id);
                p.connections.push(c.connection_id);
                if p.connections.len() == 1 && !p.ours.is_empty() {
                    // A new connection starts with the full wantlist.
                    let entries = p
                        .ours
                        .iter()
                        .map(|(cid, t)| Entry::want(*cid, *t))
                        .collect();
                    self.send_wants(c.peer_id, entries, true);
                }
                self.directory
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(c.peer_id)
                    .or_default();
            }
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                connection_id,
                remaining_established,
                ..
            }) => self.closed(peer_id, connection_id, remaining_established),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.handler_event(peer, event);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Poll::Ready(e);
            }
            if let Poll::Ready(Some(c)) = self.commands.poll_recv(cx) {
                self.command(c);
                continue;
            }
            if let Poll::Ready(Some(s)) = self.served.poll_recv(cx) {
                self.served(s);
                continue;
            }
            if let Some(t) = &mut self.timer
                && t.poll_unpin(cx).is_ready()
            {
                self.timer = None;
                let now = Instant::now();
                let due: Vec<PeerId> = self
                    .peers
                    .iter_mut()
                    .filter(|(_, p)| p.paused_until.is_some_and(|t| t <= now))
                    .map(|(id, p)| {
                        p.paused_until = None;
                        *id
                    })
                    .collect();
                for id in due {
                    self.kick(id);
                }
                // Peers paused until later wake on their own deadline.
                if let Some(next) = self.peers.values().filter_map(|p| p.paused_until).min() {
                    self.timer = Some(Box::pin(tokio::time::sleep_until(next.into())));
                }
                continue;
            }
            return Poll::Pending;
        }
    }
}
