#![doc = include_str!("../README.md")]
#![deny(missing_docs, unreachable_pub, rustdoc::broken_intra_doc_links)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod catalog;
pub mod message;
pub mod service;
mod state;

pub use catalog::{Catalog, MarketError};
pub use message::{License, Listing, ListingId, Message, Share, Signed, Terms};
pub use service::{
    DeviceKey, KeyRequest, KeyService, NftClass, ServiceError, WrappedKey, check_license, list, pay,
};
