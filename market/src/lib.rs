//! The StreamSpace content-rights marketplace.
//!
//! Viewers buy the right to watch directly from the people who made the work; every listing,
//! license and revocation is a signed message on the market's consensus topic, and every
//! purchase a ledger transfer (on the embedded ledger or on Hedera, through
//! [`streamspace_ledger::Ledger`]).
//!
//! - [`message`]: listings (content root, title, tags, price, terms, revenue split in basis
//!   points, key service), licenses and revocations, signed with Ed25519 in a bounded,
//!   canonical encoding.
//! - [`catalog`]: the market's state as a pure state machine over the topic's ordered
//!   messages — anyone replaying the topic gets the same catalog; search by title, tag and
//!   price; an audit of every sale and each rights holder's income.
//! - [`service`]: the purchase (one atomic transfer carrying the split, naming the listing)
//!   and the key service, which checks the payment on the ledger, issues a license bound to the
//!   buyer's key, and releases the content key wrapped with HPKE to the buyer's devices, within
//!   the license's device limit and validity; refunds revoke the license.
//!
//! Nodes that serve the encrypted shards never need the key.
#![deny(missing_docs, unreachable_pub, rustdoc::broken_intra_doc_links)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod catalog;
pub mod message;
pub mod service;

pub use catalog::{Catalog, MarketError};
pub use message::{License, Listing, ListingId, Message, Share, Signed, Terms};
pub use service::{
    DeviceKey, KeyRequest, KeyService, NftClass, ServiceError, WrappedKey, check_license, list, pay,
};
