//! The composed network behaviour: every protocol a node speaks, how each is configured, and
//! the swarm built from them on TCP (noise, yamux) and QUIC.

use std::num::NonZeroUsize;
use std::time::{Duration, SystemTime};

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, allow_block_list, gossipsub, identify, kad, noise, ping,
    request_response, tcp, yamux,
};

use super::{Config, MAX_PUBSUB_MESSAGE, NodeError, PROVIDER_REPUBLISH, PROVIDER_TTL, protocol};
use crate::codec::ExchangeCodec;

/// The protocols a node speaks, composed.
#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    /// In a closed network, only the peers on the operator's list.
    pub(super) allowed: Toggle<allow_block_list::Behaviour<allow_block_list::AllowedPeers>>,
    /// Peers banned for bad blocks.
    pub(super) banned: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
    /// The network's private DHT.
    pub(super) kad: kad::Behaviour<kad::store::MemoryStore>,
    /// The exchange protocol (see `protocol`).
    pub(super) exchange: request_response::Behaviour<ExchangeCodec>,
    pub(super) pubsub: gossipsub::Behaviour,
}

/// Builds the swarm `config` describes (not yet listening), and names the protocol of its
/// DHT (`/streamspace/<network>/kad/1.0.0`).
///
/// # Errors
///
/// [`NodeError::Allowlist`] if the allowlist does not verify; [`NodeError::Transport`] if the
/// network name makes no protocol name or the transports cannot be built.
pub(super) fn build(config: &Config) -> Result<(Swarm<Behaviour>, StreamProtocol), NodeError> {
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
    let swarm = libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
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
                exchange: protocol::behaviour(request_timeout),
                pubsub,
            })
        })
        .map_err(|e| NodeError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok((swarm, kad_protocol))
}
