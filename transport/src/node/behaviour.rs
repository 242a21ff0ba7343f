//! The composed network behaviour: every protocol a node speaks, how each is configured, and
//! the swarm built from them on TCP (TLS 1.3 or noise, yamux), QUIC and relayed circuits.

use std::num::NonZeroUsize;
use std::time::{Duration, SystemTime};

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, allow_block_list, autonat, connection_limits, dcutr, gossipsub,
    identify, kad, noise, ping, relay, request_response, tcp, tls, upnp,
};

use super::nat::{Nat, Reachability};
use super::{Config, MAX_PUBSUB_MESSAGE, NodeError, PROVIDER_REPUBLISH, PROVIDER_TTL, protocol};
use crate::codec::ExchangeCodec;
use crate::message::Tier;

/// The protocols a node speaks, composed.
#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    /// Connections at once: in all, per peer, still in their handshake (see [`super::Limits`]).
    pub(super) limits: connection_limits::Behaviour,
    /// In a closed network, only the peers on the operator's list.
    pub(super) allowed: Toggle<allow_block_list::Behaviour<allow_block_list::AllowedPeers>>,
    /// Peers banned for bad blocks.
    pub(super) banned: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
    /// The network's private DHT.
    pub(super) kad: kad::Behaviour<kad::store::MemoryStore>,
    /// The public IPFS DHT (Amino), in an open network that joins it.
    pub(super) amino: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    /// The exchange protocol (see `protocol`).
    pub(super) exchange: request_response::Behaviour<ExchangeCodec>,
    pub(super) pubsub: gossipsub::Behaviour,
    /// NAT traversal (see `nat`): the relay client, a Tier-1 node's relay server, hole
    /// punching, AutoNAT v2 (probing while reachability is unknown; serving always), UPnP.
    pub(super) relay_client: relay::client::Behaviour,
    pub(super) relay: Toggle<relay::Behaviour>,
    pub(super) dcutr: Toggle<dcutr::Behaviour>,
    pub(super) autonat: Toggle<autonat::v2::client::Behaviour>,
    pub(super) autonat_server: autonat::v2::server::Behaviour,
    pub(super) upnp: Toggle<upnp::tokio::Behaviour>,
    /// Bitswap, for IPFS peers (see [`crate::bitswap`]).
    pub(super) bitswap: Toggle<crate::bitswap::Behaviour>,
}

/// Builds the swarm `config` describes (not yet listening), and names the protocol of its
/// DHT (`/streamspace/<network>/kad/1.0.0`).
///
/// # Errors
///
/// [`NodeError::Allowlist`] if the allowlist does not verify; [`NodeError::Transport`] if the
/// network name makes no protocol name or the transports cannot be built.
pub(super) fn build(
    config: &Config,
    bitswap: crate::bitswap::Behaviour,
) -> Result<(Swarm<Behaviour>, StreamProtocol), NodeError> {
    let peer_id = config.keypair.public().to_peer_id();
    let allowed = match &config.admission {
        None => None,
        Some(a) => {
            a.list
                .verify(&a.operator, &config.network, SystemTime::now())?;
            let mut b = allow_block_list::Behaviour::<allow_block_list::AllowedPeers>::default();
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
    let limits = config.limits;
    if config.amino_dht && config.admission.is_some() {
        return Err(NodeError::Transport(
            "amino_dht: a closed network (an allowlist) does not announce its content on the public IPFS DHT".into(),
        ));
    }
    let amino = config.amino_dht;
    let nat = config.nat.clone();
    let relay_limits = nat.relay.filter(|_| config.tier == Tier::Tier1);
    // TLS 1.3 first (AES-NI, what the speed measurements favour), noise for peers without it.
    let swarm = libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            (tls::Config::new, noise::Config::new),
            crate::bitswap::protocol::yamux_config,
        )
        .map_err(|e| NodeError::Transport(e.to_string()))?
        .with_quic()
        .with_relay_client(
            (tls::Config::new, noise::Config::new),
            crate::bitswap::protocol::yamux_config,
        )
        .map_err(|e| NodeError::Transport(e.to_string()))?
        .with_behaviour(|key, relay_client| {
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
            // kad's defaults (1,024 provided keys and records) would cap the catalogue.
            let store = || {
                kad::store::MemoryStore::with_config(
                    peer_id,
                    kad::store::MemoryStoreConfig {
                        max_provided_keys: limits.max_provided_roots,
                        max_records: limits.max_provider_records,
                        ..Default::default()
                    },
                )
            };
            // A server of the DHT only once reachable.
            let mode = Nat::kad_mode(nat.reachability.unwrap_or(Reachability::Unknown));
            let amino = amino.then(|| {
                let mut ac = kad::Config::new(super::AMINO_PROTOCOL);
                ac.set_provider_publication_interval(Some(PROVIDER_REPUBLISH))
                    .set_provider_record_ttl(Some(PROVIDER_TTL))
                    .set_query_timeout(Duration::from_secs(30));
                let mut k = kad::Behaviour::with_config(peer_id, store(), ac);
                k.set_mode(Some(mode));
                k
            });
            let mut kad = kad::Behaviour::with_config(peer_id, store(), kc);
            kad.set_mode(Some(mode));
            let relay = relay_limits.map(|l| {
                let mut r = relay::Behaviour::new(peer_id, l.to_relay_config());
                // A Tier-1 node relays whether or not it has confirmed an address yet.
                r.set_status(Some(relay::Status::Enable));
                r
            });
            // Probes every 5 seconds (the default), testing each candidate once.
            let probe = nat
                .reachability
                .is_none()
                .then(autonat::v2::client::Behaviour::default);
            Ok(Behaviour {
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_established(Some(limits.max_connections))
                        .with_max_established_per_peer(Some(limits.max_connections_per_peer))
                        .with_max_pending_incoming(Some(limits.max_pending_incoming)),
                ),
                allowed: Toggle::from(allowed),
                banned: Default::default(),
                identify: identify::Behaviour::new(identify::Config::new(
                    "/streamspace/id/1.0.0".into(),
                    key.public(),
                )),
                ping: ping::Behaviour::default(),
                kad,
                amino: Toggle::from(amino),
                exchange: protocol::behaviour(request_timeout),
                pubsub,
                relay_client,
                relay: Toggle::from(relay),
                dcutr: Toggle::from(nat.hole_punching.then(|| dcutr::Behaviour::new(peer_id))),
                autonat: Toggle::from(probe),
                autonat_server: Default::default(),
                upnp: Toggle::from(nat.upnp.then(upnp::tokio::Behaviour::default)),
                bitswap: Toggle::from(config.bitswap.enabled.then_some(bitswap)),
            })
        })
        .map_err(|e| NodeError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok((swarm, kad_protocol))
}
