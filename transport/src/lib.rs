//! The StreamSpace network layer, on [rust-libp2p](https://github.com/libp2p/rust-libp2p).
//!
//! A [`Node`] has an Ed25519 identity ([`identity::load_or_create`]), listens on TCP and QUIC
//! (noise and yamux on TCP), speaks identify and ping, finds content through a Kademlia DHT
//! private to its network (`/streamspace/<network>/kad/1.0.0`, one provider record per content
//! root, republished every 22 hours and kept 48), and exchanges blocks with its own bounded
//! protocol ([`message`], `/streamspace/exchange/1.1.0`).
//!
//! - [`Node::fetch`] downloads a DAG, or only the blocks a byte range of a file needs, from many
//!   peers at once: in playback order within a window, each block verified against its CID,
//!   failed requests asked elsewhere, late ones also asked of another peer and cancelled at the
//!   first once a copy arrives, peers that send bad blocks reported and banned. Whatever the
//!   DAG, each block is queued once, no deeper than 64 levels, and within a [`Budget`] of
//!   blocks and bytes derived from the size its root declares.
//! - A closed network admits only the peers on a list its operator signed
//!   ([`allowlist::SignedAllowlist`]); others are refused when they connect, and counted.
//! - Every shard sent or received goes through a [`meter::Meter`], which may pause or refuse
//!   service: payments plug in there.
//! - Tier-1 nodes replicate content that several peers ask them for and they lack; edge nodes
//!   cache what local viewers watch on its second view ([`cache`], [`Node::view`]).
//! - [`Node::stats`] and [`Node::events`] report bytes per peer, shards served, refusals, bad
//!   blocks and bans.
#![deny(missing_docs, unreachable_pub, rustdoc::broken_intra_doc_links)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod allowlist;
pub mod bitswap;
pub mod cache;
pub mod codec;
pub mod fetch;
pub mod identity;
pub mod message;
pub mod meter;
pub mod node;

pub use cache::View;
pub use fetch::{Budget, Exceeded, FetchError, FetchOptions, FetchReport, Pace};
pub use libp2p::{Multiaddr, PeerId, identity::Keypair, identity::ed25519};
pub use message::Tier;
pub use node::{
    Admission, Config, Limits, MAX_PUBSUB_MESSAGE, Node, NodeError, NodeEvent, ReplicateAnything,
    ReplicateNothing, ReplicationConfig, ReplicationPolicy, RequestError, Stats,
};
