//! The metering hook: called for every shard sent and received, it may pause or refuse
//! service. Payments plug in here; the transport knows nothing else of them.

use cid::Cid;
use libp2p::PeerId;

/// What the hook decides about a shard about to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send it.
    Serve,
    /// Not now (a receipt is due, say); the peer is told when to ask again.
    Pause {
        /// Milliseconds until the peer should ask again.
        retry_after_ms: u64,
    },
    /// Not to this peer.
    Refuse,
}

/// Called by the node for every shard it sends and receives. Implementations must be cheap and
/// must not block: they run on the node's serving path.
pub trait Meter: Send + Sync + 'static {
    /// Before sending `cid` (`bytes` long) to `peer`.
    fn before_send(&self, peer: &PeerId, cid: &Cid, bytes: usize) -> Decision;

    /// After a verified shard `cid` (`bytes` long) was received from `peer`.
    fn received(&self, peer: &PeerId, cid: &Cid, bytes: usize);

    /// A payment `peer` sent (see [`crate::Node::pay`]): whether it is taken. Refused unless
    /// implemented.
    fn payment(&self, peer: &PeerId, data: &[u8]) -> bool {
        let _ = (peer, data);
        false
    }
}

/// Serves everyone and records nothing: a free network.
#[derive(Debug, Clone, Copy, Default)]
pub struct Free;

impl Meter for Free {
    fn before_send(&self, _: &PeerId, _: &Cid, _: usize) -> Decision {
        Decision::Serve
    }

    fn received(&self, _: &PeerId, _: &Cid, _: usize) {}
}
