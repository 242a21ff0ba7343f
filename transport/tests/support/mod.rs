//! Helpers shared by the transport's test binaries.

use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::{Swarm, noise, tcp, yamux};

/// A bare libp2p swarm over TCP, noise and yamux with a fresh identity, running `behaviour`
/// alone: a peer that speaks only what the test gives it (a hostile one, say). Idle
/// connections stay open for a minute.
pub(crate) fn raw_swarm<B: NetworkBehaviour>(behaviour: B) -> Swarm<B> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp transport")
        .with_behaviour(|_| behaviour)
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}
