//! Nodes behind NAT: reachability, relays and hole punching, on rust-libp2p's own protocols.
//!
//! - **Reachability** comes from AutoNAT v2: every node serves dial-back probes and, unless
//!   told its reachability ([`NatConfig::reachability`]), asks peers to dial back the external
//!   address candidates identify's observed addresses give it. An address dialed back is
//!   confirmed ([`Reachability::Public`]); a probe that fails while none is confirmed makes the
//!   node [`Reachability::Private`], and so does no verdict at all for 30 seconds (behind a
//!   router that drops unsolicited packets, a TCP dial-back outlasts the server's limit and
//!   is never reported). UPnP port mapping ([`NatConfig::upnp`], off by default)
//!   confirms the mapped address too.
//! - **Kademlia** serves the DHT only once the node is public: until then it runs in client
//!   mode, so unreachable nodes never enter other nodes' routing tables.
//! - **Relays**: Tier-1 nodes run a circuit relay v2 server within [`RelayLimits`]. A private
//!   node reserves a slot on up to [`NatConfig::max_reservations`] relays (those configured,
//!   then connected peers that offer the relay protocol) and advertises the relayed addresses
//!   (as listen and external addresses, so identify and provider records carry them). On a
//!   new relayed address it announces its roots again, since the provider records it made
//!   before carry only the addresses it had then.
//! - **Hole punching**: DCUtR upgrades a relayed connection to a direct one. Once a peer is
//!   reachable directly, the node closes its relayed connections to it, so the exchange's
//!   requests (bulk shard transfer) never run over a relay beside a direct connection; peers
//!   reachable only through a relay are marked so for the fetch scheduler, which prefers
//!   others.
//!
//! Relayed connections are connections like any other: the allowlist admits or refuses the
//! peer at the far end of the circuit, and every shard served goes through the metering hook.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use cid::Cid;
use libp2p::core::ConnectedPoint;
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, autonat, dcutr, identify, kad, relay};
use streamspace_shard::store::BlockStore;

use super::behaviour::BehaviourEvent;
use super::driver::Driver;
use super::{NodeEvent, peer_of};
use crate::message::Request;

/// Whether other nodes can dial this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reachability {
    /// Not known yet: no probe answered.
    Unknown,
    /// At least one of its addresses was dialed back (or the configuration says so).
    Public,
    /// Probes failed and no address is confirmed: reachable through relays only.
    Private,
}

/// Limits of a Tier-1 node's circuit relay v2 server: relayed connections are for
/// coordination (hole punching, have lists, a few shards), not for bulk transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Reservations held at once, over all peers.
    pub max_reservations: usize,
    /// Reservations one peer holds at once.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts before it must be renewed.
    pub reservation_duration: Duration,
    /// Circuits relayed at once, over all peers.
    pub max_circuits: usize,
    /// Circuits relayed at once for one peer.
    pub max_circuits_per_peer: usize,
    /// How long one circuit may stay open.
    pub max_circuit_duration: Duration,
    /// Bytes one circuit may carry (both directions together), after which it is closed.
    pub max_circuit_bytes: u64,
}

impl Default for RelayLimits {
    /// 128 reservations (4 a peer) of an hour, 64 circuits (4 a peer) of 2 minutes and
    /// 1 MiB each.
    fn default() -> Self {
        Self {
            max_reservations: 128,
            max_reservations_per_peer: 4,
            reservation_duration: Duration::from_secs(3600),
            max_circuits: 64,
            max_circuits_per_peer: 4,
            max_circuit_duration: Duration::from_secs(120),
            max_circuit_bytes: 1 << 20,
        }
    }
}

impl RelayLimits {
    pub(super) fn to_relay_config(self) -> relay::Config {
        relay::Config {
            max_reservations: self.max_reservations,
            max_reservations_per_peer: self.max_reservations_per_peer,
            reservation_duration: self.reservation_duration,
            max_circuits: self.max_circuits,
            max_circuits_per_peer: self.max_circuits_per_peer,
            max_circuit_duration: self.max_circuit_duration,
            max_circuit_bytes: self.max_circuit_bytes,
            ..relay::Config::default()
        }
    }
}

/// How a node gets through NAT: reachability, relays, hole punching, UPnP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfig {
    /// `None`: AutoNAT decides. `Some(r)`: the node is taken to be `r` from the start and
    /// does not probe (an operator who knows, or tests on loopback). A node taken to be public
    /// announces its listen addresses as external addresses.
    pub reachability: Option<Reachability>,
    /// Tier-1 nodes relay within these limits; `None`: no relay service. Edge nodes never
    /// relay.
    pub relay: Option<RelayLimits>,
    /// Relays to reserve a slot on when private, each address ending in `/p2p/<peer id>`
    /// (connected peers offering the relay protocol are used too).
    pub relays: Vec<Multiaddr>,
    /// Relays a private node holds reservations on at once.
    pub max_reservations: usize,
    /// Upgrade relayed connections to direct ones (DCUtR).
    pub hole_punching: bool,
    /// Ask the home router for a port mapping (UPnP IGD).
    pub upnp: bool,
}

impl Default for NatConfig {
    /// AutoNAT decides; Tier-1 relays with [`RelayLimits::default`]; two reservations when
    /// private; hole punching on; UPnP off.
    fn default() -> Self {
        Self {
            reachability: None,
            relay: Some(RelayLimits::default()),
            relays: Vec::new(),
            max_reservations: 2,
            hole_punching: true,
            upnp: false,
        }
    }
}

/// One open connection, as [`Node::nat_status`](super::Node::nat_status) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The peer.
    pub peer: PeerId,
    /// Its address (for a relayed connection, through the relay).
    pub remote: Multiaddr,
    /// Whether the connection runs through a relay.
    pub relayed: bool,
}

/// What a node knows of its reachability (see [`Node::nat_status`](super::Node::nat_status)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatStatus {
    /// Whether it can be dialed directly.
    pub reachability: Reachability,
    /// The relayed addresses it is reachable on (reservations accepted), ending in
    /// `/p2p/<its id>`.
    pub relayed_addrs: Vec<Multiaddr>,
    /// Its open connections.
    pub connections: Vec<ConnectionInfo>,
}

/// The driver's NAT state.
#[derive(Debug)]
pub(super) struct Nat {
    pub(super) reachability: Reachability,
    fixed: bool,
    relays: Vec<Multiaddr>,
    max_reservations: usize,
    /// Peers offering the relay protocol, with an address to reach them on.
    offered: HashMap<PeerId, Multiaddr>,
    /// Relays that refused a reservation (or lost it), and when: asked again only after
    /// [`RESERVE_RETRY`].
    refused: HashMap<PeerId, Instant>,
    /// Relay listeners asked for or open, by relay.
    reservations: HashMap<ListenerId, PeerId>,
    /// Relayed addresses this node is reachable on.
    relayed_addrs: Vec<Multiaddr>,
    /// Confirmed external addresses that are not relayed.
    confirmed: HashSet<Multiaddr>,
    /// Open connections and whether each is relayed.
    conns: HashMap<PeerId, HashMap<ConnectionId, (Multiaddr, bool)>>,
    started: Instant,
    /// Since when the reachability has been unknown (see [`UNCONFIRMED_AFTER`]).
    unknown_since: Instant,
    /// Roots to announce again now that the node is reachable at a new relayed address
    /// (their provider records carry the addresses the node had when it announced them).
    pub(super) reannounce: VecDeque<Cid>,
}

impl Nat {
    pub(super) fn new(config: &NatConfig) -> Self {
        Self {
            reachability: config.reachability.unwrap_or(Reachability::Unknown),
            fixed: config.reachability.is_some(),
            relays: config.relays.clone(),
            max_reservations: config.max_reservations,
            offered: HashMap::new(),
            refused: HashMap::new(),
            reservations: HashMap::new(),
            relayed_addrs: Vec::new(),
            confirmed: HashSet::new(),
            conns: HashMap::new(),
            started: Instant::now(),
            unknown_since: Instant::now(),
            reannounce: VecDeque::new(),
        }
    }

    /// The Kademlia mode for a reachability: a server only when reachable.
    pub(super) fn kad_mode(r: Reachability) -> kad::Mode {
        if r == Reachability::Public {
            kad::Mode::Server
        } else {
            kad::Mode::Client
        }
    }

    pub(super) fn status(&self) -> NatStatus {
        NatStatus {
            reachability: self.reachability,
            relayed_addrs: self.relayed_addrs.clone(),
            connections: self.connections(),
        }
    }

    fn connections(&self) -> Vec<ConnectionInfo> {
        self.conns
            .iter()
            .flat_map(|(p, c)| {
                c.values().map(|(remote, relayed)| ConnectionInfo {
                    peer: *p,
                    remote: remote.clone(),
                    relayed: *relayed,
                })
            })
            .collect()
    }
}

/// How long a relay that refused or lost a reservation is left alone.
const RESERVE_RETRY: Duration = Duration::from_secs(30);

/// How long a node probing its reachability waits for an AutoNAT verdict before it takes
/// itself to be private (and reserves relay slots) until an address is confirmed. Behind a
/// router that drops unsolicited packets, a server's TCP dial-back outlasts the server's own
/// 10-second limit on the request, and no verdict ever comes: only QUIC dial-backs fail in
/// time to be reported.
pub(super) const UNCONFIRMED_AFTER: Duration = Duration::from_secs(30);

/// Roots announced again per second after the node gained a relayed address.
const REANNOUNCE_PER_TICK: usize = 16;

fn is_relayed(a: &Multiaddr) -> bool {
    a.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

fn remote_of(endpoint: &ConnectedPoint) -> &Multiaddr {
    match endpoint {
        ConnectedPoint::Dialer { address, .. } => address,
        ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr,
    }
}

impl<S: BlockStore + 'static> Driver<S> {
    /// Everything NAT traversal does with a swarm event (before the driver's own handling).
    pub(super) fn nat_event(&mut self, event: &SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                if let Some(relay) = self.nat.reservations.get(listener_id).copied() {
                    if !self.nat.relayed_addrs.contains(address) {
                        self.nat.relayed_addrs.push(address.clone());
                        self.swarm.add_external_address(address.clone());
                        tracing::info!(
                            %relay,
                            %address,
                            after_ms = self.nat.started.elapsed().as_millis() as u64,
                            "reachable through a relay"
                        );
                        self.emit(NodeEvent::Relayed {
                            relay,
                            address: address.clone(),
                        });
                        // Records announced before carry no way to reach this node.
                        self.nat.reannounce = self.provided.iter().copied().collect();
                    }
                } else if self.nat.fixed
                    && self.nat.reachability == Reachability::Public
                    && !is_relayed(address)
                {
                    self.swarm.add_external_address(address.clone());
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                if let Some(i) = self.nat.relayed_addrs.iter().position(|a| a == address) {
                    self.nat.relayed_addrs.remove(i);
                    self.swarm.remove_external_address(address);
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Some(relay) = self.nat.reservations.remove(listener_id) {
                    if let Err(e) = reason {
                        tracing::info!(%relay, error = %e, "relay reservation refused or lost");
                        self.emit(NodeEvent::ReservationFailed(relay));
                    }
                    // Another relay, if one is offered, takes its place; this one is asked
                    // again later (on the driver's tick).
                    self.nat.refused.insert(relay, Instant::now());
                    self.reserve();
                }
            }
            SwarmEvent::ExternalAddrConfirmed { address } if !is_relayed(address) => {
                self.nat.confirmed.insert(address.clone());
                self.set_reachability(Reachability::Public);
            }
            SwarmEvent::ExternalAddrExpired { address } if !is_relayed(address) => {
                self.nat.confirmed.remove(address);
                if self.nat.confirmed.is_empty() {
                    self.set_reachability(Reachability::Unknown);
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let relayed = endpoint.is_relayed();
                let conns = self.nat.conns.entry(*peer_id).or_default();
                conns.insert(*connection_id, (remote_of(endpoint).clone(), relayed));
                if !relayed {
                    // A direct connection: the relayed ones to this peer close, so that no
                    // request of the exchange goes through a relay any more.
                    let old: Vec<ConnectionId> = conns
                        .iter()
                        .filter(|(_, (_, r))| *r)
                        .map(|(id, _)| *id)
                        .collect();
                    if !old.is_empty() {
                        for id in old {
                            self.swarm.close_connection(id);
                        }
                        // Its status may have been asked over a connection now closing.
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .exchange
                            .send_request(peer_id, Request::Status);
                    }
                }
                self.update_relayed_only(*peer_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                ..
            } => {
                if let Some(c) = self.nat.conns.get_mut(peer_id) {
                    c.remove(connection_id);
                    if c.is_empty() {
                        self.nat.conns.remove(peer_id);
                    }
                }
                self.update_relayed_only(*peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if info.protocols.contains(&relay::HOP_PROTOCOL_NAME) => {
                // The relay client reuses the open connection; the address is for
                // reaching the relay again later.
                let direct = |a: &&Multiaddr| !is_relayed(a);
                let addr = info
                    .listen_addrs
                    .iter()
                    .filter(direct)
                    .find(|a| {
                        !a.iter().any(|p| match p {
                            Protocol::Ip4(ip) => ip.is_loopback(),
                            Protocol::Ip6(ip) => ip.is_loopback(),
                            _ => false,
                        })
                    })
                    .or_else(|| info.listen_addrs.iter().find(direct));
                if let Some(addr) = addr {
                    self.nat.offered.entry(*peer_id).or_insert(addr.clone());
                    self.reserve();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::v2::client::Event {
                tested_addr,
                server,
                result,
                ..
            })) => match result {
                Ok(()) => tracing::info!(%tested_addr, %server, "address reachable"),
                Err(e) => {
                    tracing::info!(%tested_addr, %server, error = %e, "address not reachable");
                    if self.nat.confirmed.is_empty() {
                        self.set_reachability(Reachability::Private);
                    }
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => {
                let ok = result.is_ok();
                if let Err(e) = result {
                    tracing::info!(peer = %remote_peer_id, error = %e, "hole punching failed");
                }
                self.shared.with_stats(|s| {
                    if ok {
                        s.hole_punches += 1;
                    } else {
                        s.hole_punch_failures += 1;
                    }
                });
                self.emit(NodeEvent::HolePunched {
                    peer: *remote_peer_id,
                    direct: ok,
                });
            }
            _ => {}
        }
    }

    /// The NAT part of the driver's one-second tick: relay reservations, a verdict that
    /// never came, roots to announce again.
    pub(super) fn nat_tick(&mut self) {
        if !self.nat.fixed
            && self.nat.reachability == Reachability::Unknown
            && self.nat.unknown_since.elapsed() >= UNCONFIRMED_AFTER
        {
            tracing::info!(
                after_ms = self.nat.started.elapsed().as_millis() as u64,
                "no address confirmed reachable by AutoNAT: taken to be private"
            );
            self.set_reachability(Reachability::Private);
        }
        self.reserve();
        for _ in 0..REANNOUNCE_PER_TICK {
            let Some(root) = self.nat.reannounce.pop_front() else {
                break;
            };
            let key = super::provider_key(&root);
            if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key.clone()) {
                tracing::debug!(%root, error = %e, "not announced again");
            }
            if let Some(amino) = self.swarm.behaviour_mut().amino.as_mut() {
                let _ = amino.start_providing(key);
            }
        }
    }

    fn set_reachability(&mut self, r: Reachability) {
        if self.nat.fixed || self.nat.reachability == r {
            return;
        }
        self.nat.reachability = r;
        if r == Reachability::Unknown {
            self.nat.unknown_since = Instant::now();
        }
        tracing::info!(
            reachability = ?r,
            after_ms = self.nat.started.elapsed().as_millis() as u64,
            "reachability"
        );
        self.swarm
            .behaviour_mut()
            .kad
            .set_mode(Some(Nat::kad_mode(r)));
        if let Some(amino) = self.swarm.behaviour_mut().amino.as_mut() {
            amino.set_mode(Some(Nat::kad_mode(r)));
        }
        if r == Reachability::Public {
            // Reachable directly: relay slots are given back.
            let ids: Vec<ListenerId> = self.nat.reservations.keys().copied().collect();
            for id in ids {
                self.swarm.remove_listener(id);
            }
        } else {
            self.reserve();
        }
        self.emit(NodeEvent::Reachability(r));
    }

    /// A private node reserves slots on relays, up to its bound: configured relays first,
    /// then peers offering the relay protocol.
    pub(super) fn reserve(&mut self) {
        if self.nat.reachability != Reachability::Private {
            return;
        }
        self.nat
            .refused
            .retain(|_, at| at.elapsed() < RESERVE_RETRY);
        if self.nat.reservations.len() >= self.nat.max_reservations {
            return;
        }
        let held: HashSet<PeerId> = self.nat.reservations.values().copied().collect();
        let mut candidates: Vec<(PeerId, Multiaddr)> = self
            .nat
            .relays
            .iter()
            .filter_map(|a| peer_of(a).map(|p| (p, a.clone())))
            .collect();
        candidates.extend(self.nat.offered.iter().map(|(p, a)| {
            let a = if peer_of(a).is_some() {
                a.clone()
            } else {
                a.clone().with(Protocol::P2p(*p))
            };
            (*p, a)
        }));
        let mut taken = held.clone();
        for (relay, addr) in candidates {
            if taken.len() >= self.nat.max_reservations {
                break;
            }
            if taken.contains(&relay)
                || self.nat.refused.contains_key(&relay)
                || relay == *self.swarm.local_peer_id()
            {
                continue;
            }
            match self
                .swarm
                .listen_on(addr.clone().with(Protocol::P2pCircuit))
            {
                Ok(id) => {
                    self.nat.reservations.insert(id, relay);
                    taken.insert(relay);
                }
                Err(e) => tracing::debug!(%addr, error = %e, "cannot reserve on relay"),
            }
        }
    }

    /// Notes whether `peer` is reachable only through relays, for the fetch scheduler.
    fn update_relayed_only(&mut self, peer: PeerId) {
        let only = self
            .nat
            .conns
            .get(&peer)
            .is_some_and(|c| !c.is_empty() && c.values().all(|(_, r)| *r));
        let mut set = self
            .shared
            .relayed_only
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if only {
            set.insert(peer);
        } else {
            set.remove(&peer);
        }
    }
}
