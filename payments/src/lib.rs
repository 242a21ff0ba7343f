#![doc = include_str!("../README.md")]
#![deny(missing_docs, unreachable_pub, rustdoc::broken_intra_doc_links)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod book;
pub mod clearing;
pub mod fraud;
pub mod merkle;
pub mod netting;
pub mod receipt;
pub mod settle;

pub use book::{PayerTab, ReceiptBook, Terms};
pub use fraud::FraudProof;
pub use receipt::{ReceiptBody, SignedReceipt};
pub use settle::{Journal, Report, Settler};
