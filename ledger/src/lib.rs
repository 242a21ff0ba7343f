#![doc = include_str!("../README.md")]
#![deny(missing_docs, unreachable_pub, rustdoc::broken_intra_doc_links)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod fees;
#[cfg(feature = "hedera")]
pub mod hedera;
pub mod local;
pub mod running_hash;
mod status;
pub mod tx;
pub mod types;

use std::future::Future;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

pub use local::{Clock, LocalLedger, ManualClock, SystemClock};
pub use status::Status;
pub use tx::{ChunkInfo, Key, NftTransfer, PublicKey, SignedTransaction, Transaction, TxKind};
pub use types::{AccountId, EntityId, NftId, Timestamp, TokenId, TopicId, TransactionId};

/// The receipt of a transaction that reached consensus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The transaction.
    pub id: TransactionId,
    /// `SUCCESS`, or why it failed at consensus.
    pub status: Status,
    /// Consensus time.
    pub consensus: Timestamp,
    /// The account a CryptoCreate created.
    pub account: Option<AccountId>,
    /// The topic a ConsensusCreateTopic created.
    pub topic: Option<TopicId>,
    /// The token a TokenCreate created.
    pub token: Option<TokenId>,
    /// Serial numbers a TokenMint minted.
    pub serials: Vec<u64>,
    /// The topic's sequence number after a ConsensusSubmitMessage.
    pub topic_sequence: Option<u64>,
    /// The topic's running hash (48 bytes, SHA-384) after a ConsensusSubmitMessage.
    pub topic_running_hash: Option<Vec<u8>>,
}

/// The record of a transaction: its receipt, fee and every balance change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The receipt.
    pub receipt: Receipt,
    /// Fee charged to the payer, in tinybars.
    pub fee: i64,
    /// Hbar balance changes, fee included, sorted by account.
    pub transfers: Vec<(AccountId, i64)>,
    /// NFTs that moved.
    pub nft_transfers: Vec<NftTransfer>,
    /// The transaction memo.
    pub memo: String,
}

/// A message of a consensus topic, as the mirror node serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMessage {
    /// Sequence number, from 1.
    pub sequence: u64,
    /// Consensus time.
    pub consensus: Timestamp,
    /// The message (or chunk) bytes.
    pub message: Bytes,
    /// Running hash after this message.
    pub running_hash: Vec<u8>,
    /// The submitting transaction, where known (the mirror node's gRPC stream names it only
    /// for chunked messages, through their chunk info).
    pub id: Option<TransactionId>,
    /// Chunk position, for chunked messages.
    pub chunk: Option<ChunkInfo>,
}

/// A topic's current state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    /// Topic memo.
    pub memo: String,
    /// Messages so far.
    pub sequence: u64,
    /// Running hash after the last message (48 zero bytes before the first).
    pub running_hash: Vec<u8>,
    /// Key required on submissions.
    pub submit_key: Option<PublicKey>,
}

/// An NFT's owner and metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftInfo {
    /// The NFT.
    pub id: NftId,
    /// Current owner.
    pub owner: AccountId,
    /// Metadata set at mint.
    pub metadata: Bytes,
}

/// A ledger operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The network refused the transaction before consensus (no fee charged).
    #[error("transaction {id} refused at precheck: {status}")]
    Precheck {
        /// Why.
        status: Status,
        /// The transaction.
        id: TransactionId,
    },
    /// The transaction reached consensus and failed (the fee was charged).
    #[error("transaction {id} failed: {status}")]
    Failed {
        /// Why.
        status: Status,
        /// The transaction.
        id: TransactionId,
    },
    /// A query failed (unknown account, topic, NFT, receipt…).
    #[error("query failed: {status}")]
    Query {
        /// Why.
        status: Status,
    },
    /// The ledger's storage failed.
    #[error("ledger storage: {0}")]
    Storage(String),
    /// The network could not be reached or answered malformed data.
    #[error("ledger transport: {0}")]
    Transport(String),
    /// The ledger was shut down.
    #[error("ledger closed")]
    Closed,
}

impl LedgerError {
    /// The Hedera status of the failure, if it has one.
    pub fn status(&self) -> Option<Status> {
        match self {
            Self::Precheck { status, .. }
            | Self::Failed { status, .. }
            | Self::Query { status } => Some(*status),
            _ => None,
        }
    }
}

/// A Hedera-like ledger: accounts and hbar transfers, consensus topics, NFTs, receipts.
///
/// Implemented by the embedded [`LocalLedger`] (the default everywhere) and by the Hedera
/// backend. Both pass the same conformance suite, so callers handle them alike.
pub trait Ledger: Send + Sync {
    /// Signs `tx` with `signers`, submits it and waits for consensus.
    ///
    /// # Errors
    ///
    /// [`LedgerError::Precheck`] when refused before consensus, [`LedgerError::Failed`] when
    /// it reached consensus with a status other than `SUCCESS`.
    fn execute(
        &self,
        tx: Transaction,
        signers: &[&SigningKey],
    ) -> impl Future<Output = Result<Receipt, LedgerError>> + Send;

    /// The receipt of a transaction (any status).
    ///
    /// # Errors
    ///
    /// `RECEIPT_NOT_FOUND` for an unknown id.
    fn receipt(
        &self,
        id: TransactionId,
    ) -> impl Future<Output = Result<Receipt, LedgerError>> + Send;

    /// The record of a transaction.
    ///
    /// # Errors
    ///
    /// `RECORD_NOT_FOUND` for an unknown id.
    fn record(&self, id: TransactionId)
    -> impl Future<Output = Result<Record, LedgerError>> + Send;

    /// The record of a transaction from the ledger's full history, as a mirror node keeps it
    /// (its REST `GET /api/v1/transactions/{id}`), however long ago it reached consensus.
    /// [`Ledger::receipt`] and [`Ledger::record`] answer only for
    /// [`fees::RECEIPT_RETENTION_SECS`] after consensus, as Hedera's nodes do: whoever must
    /// know whether an older transaction happened (recovery after a crash, a license claimed
    /// long after its payment) asks here. The default asks [`Ledger::record`], for backends
    /// whose records do not expire.
    ///
    /// # Errors
    ///
    /// `RECORD_NOT_FOUND` when the transaction never reached consensus.
    fn history(
        &self,
        id: TransactionId,
    ) -> impl Future<Output = Result<Record, LedgerError>> + Send {
        self.record(id)
    }

    /// An account's balance in tinybars.
    ///
    /// # Errors
    ///
    /// `INVALID_ACCOUNT_ID` for an unknown account.
    fn balance(&self, account: AccountId) -> impl Future<Output = Result<i64, LedgerError>> + Send;

    /// A topic's state.
    ///
    /// # Errors
    ///
    /// `INVALID_TOPIC_ID` for an unknown topic.
    fn topic_info(
        &self,
        topic: TopicId,
    ) -> impl Future<Output = Result<TopicInfo, LedgerError>> + Send;

    /// Up to `limit` messages of `topic` from sequence number `from` on, in order.
    ///
    /// # Errors
    ///
    /// `INVALID_TOPIC_ID` for an unknown topic.
    fn topic_messages(
        &self,
        topic: TopicId,
        from: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<TopicMessage>, LedgerError>> + Send;

    /// An NFT's owner and metadata.
    ///
    /// # Errors
    ///
    /// `INVALID_NFT_ID` for an unknown NFT.
    fn nft_info(&self, nft: NftId) -> impl Future<Output = Result<NftInfo, LedgerError>> + Send;

    /// The ledger's current time, for choosing valid starts.
    fn now(&self) -> Timestamp;

    /// Submits a message of any length to `topic`, chunked as the SDKs chunk it (1,024 bytes,
    /// at most 20 chunks). Returns the receipt of each chunk.
    ///
    /// # Errors
    ///
    /// As [`Ledger::execute`]; `MESSAGE_SIZE_TOO_LARGE` above 20 chunks.
    fn submit_message(
        &self,
        payer: &Operator,
        topic: TopicId,
        message: Bytes,
        submit_key: Option<&SigningKey>,
    ) -> impl Future<Output = Result<Vec<Receipt>, LedgerError>> + Send {
        async move {
            let first = TransactionId::generate(payer.account, self.now());
            let txs = tx::chunk_message(first, topic, &message, fees::MAX_MESSAGE_BYTES);
            if txs.len() > 20 {
                return Err(LedgerError::Precheck {
                    status: Status::MessageSizeTooLarge,
                    id: first,
                });
            }
            let mut out = Vec::with_capacity(txs.len());
            for t in txs {
                let mut signers = vec![&payer.key];
                signers.extend(submit_key);
                out.push(self.execute(t, &signers).await?);
            }
            Ok(out)
        }
    }
}

/// An account and the key that signs for it.
#[derive(Clone)]
pub struct Operator {
    /// The account.
    pub account: AccountId,
    /// Its key.
    pub key: SigningKey,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("account", &self.account)
            .field("key", &PublicKey::from(&self.key))
            .finish()
    }
}

/// Conveniences over [`Ledger::execute`] for the common transactions.
pub trait LedgerExt: Ledger {
    /// Creates an account with `key` and `initial` tinybars, paid by `payer`.
    ///
    /// # Errors
    ///
    /// As [`Ledger::execute`].
    fn create_account(
        &self,
        payer: &Operator,
        key: PublicKey,
        initial: i64,
    ) -> impl Future<Output = Result<AccountId, LedgerError>> + Send {
        async move {
            let id = TransactionId::generate(payer.account, self.now());
            let tx = Transaction::new(
                id,
                TxKind::CreateAccount {
                    key: key.into(),
                    initial_balance: initial,
                    receiver_sig_required: false,
                },
            );
            let r = self.execute(tx, &[&payer.key]).await?;
            r.account
                .ok_or(LedgerError::Transport("receipt without account id".into()))
        }
    }

    /// Transfers `amount` tinybars from `from` (who pays the fee) to `to`.
    ///
    /// # Errors
    ///
    /// As [`Ledger::execute`].
    fn transfer(
        &self,
        from: &Operator,
        to: AccountId,
        amount: i64,
    ) -> impl Future<Output = Result<Receipt, LedgerError>> + Send {
        async move {
            let id = TransactionId::generate(from.account, self.now());
            let tx = Transaction::new(
                id,
                TxKind::Transfer {
                    hbar: vec![(from.account, -amount), (to, amount)],
                    nfts: Vec::new(),
                },
            );
            self.execute(tx, &[&from.key]).await
        }
    }
}

impl<L: Ledger + ?Sized> LedgerExt for L {}
