#![doc = include_str!("../README.md")]
#![deny(missing_docs, unreachable_pub, rustdoc::broken_intra_doc_links)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod block;
pub mod car;
pub mod crypto;
pub mod dag;
pub mod export;
pub mod import;
pub mod keywrap;
pub mod pb;
pub mod store;
pub mod wire;

pub use block::Block;
pub use cid::Cid;
