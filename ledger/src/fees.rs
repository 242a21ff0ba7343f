//! The embedded ledger's fee schedule and network limits, modelled on Hedera's.
//!
//! Hedera prices transactions in US dollars and converts at the network's exchange rate. The
//! embedded ledger charges fixed tinybar fees equal to Hedera's published base prices at an
//! exchange rate of 1 hbar = US$0.10:
//!
//! | transaction | Hedera base price | tinybars |
//! |---|---|---|
//! | CryptoCreate | $0.05 | 50,000,000 |
//! | CryptoTransfer (hbar) | $0.0001 | 100,000 |
//! | CryptoTransfer, per NFT moved | $0.001 | 1,000,000 |
//! | ConsensusCreateTopic | $0.01 | 10,000,000 |
//! | ConsensusSubmitMessage | $0.0001 (+ 100 tinybars per 100 bytes) | 100,000 + |
//! | TokenCreate | $1.00 | 1,000,000,000 |
//! | TokenMint, per NFT | $0.02 | 20,000,000 |
//! | TokenAssociate | $0.05 | 50,000,000 |
//!
//! Fees are paid by the transaction's payer to the fee collection account [`FEE_COLLECTOR`]
//! (0.0.98, as on Hedera), also when the transaction fails at consensus.

use crate::tx::TxKind;
use crate::types::AccountId;

/// The account fees are paid to.
pub const FEE_COLLECTOR: AccountId = AccountId::new(98);
/// Most accounts in one hbar transfer list (`ledger.transfers.maxLen`).
pub const MAX_TRANSFER_ACCOUNTS: usize = 10;
/// Most NFTs moved in one transfer (`ledger.nftTransfers.maxLen`).
pub const MAX_NFT_TRANSFERS: usize = 10;
/// Most NFTs minted in one transaction (`tokens.nfts.maxBatchSizeMint`).
pub const MAX_MINT_BATCH: usize = 10;
/// Largest NFT metadata (`tokens.nfts.maxMetadataBytes`).
pub const MAX_METADATA_BYTES: usize = 100;
/// Largest topic message in one transaction (`consensus.message.maxBytesAllowed`).
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Largest transaction, signatures included (`hedera.transaction.maxBytes`): above it Hedera
/// answers `TRANSACTION_OVERSIZE`. The embedded ledger counts its body encoding plus 96 bytes
/// (key and signature) per signature.
pub const MAX_TRANSACTION_BYTES: usize = 6144;
/// Seconds after consensus during which the network answers receipt and record queries
/// (Hedera keeps them about 3 minutes; older history is the mirror node's, see
/// [`crate::Ledger::history`]).
pub const RECEIPT_RETENTION_SECS: i64 = 180;
/// Shortest and longest auto-renew period Hedera accepts, in seconds.
pub const AUTO_RENEW_SECS: std::ops::RangeInclusive<i64> = 2_592_000..=8_000_001;
/// Longest memo, in bytes.
pub const MAX_MEMO_BYTES: usize = 100;
/// Seconds of its valid duration a transaction must have left to be accepted.
pub const EXPIRY_MARGIN_SECS: i64 = 10;
/// Shortest and longest valid duration, in seconds.
pub const VALID_DURATION_SECS: std::ops::RangeInclusive<i64> = 15..=180;

/// The fee of a transaction, in tinybars.
pub fn fee(kind: &TxKind) -> i64 {
    match kind {
        TxKind::CreateAccount { .. } => 50_000_000,
        TxKind::Transfer { nfts, .. } => 100_000 + 1_000_000 * nfts.len() as i64,
        TxKind::CreateTopic { .. } => 10_000_000,
        TxKind::SubmitMessage { message, .. } => {
            100_000 + (message.len() as u64).div_ceil(100) as i64 * 100
        }
        TxKind::CreateNft { .. } => 1_000_000_000,
        TxKind::MintNft { metadata, .. } => 20_000_000 * metadata.len().max(1) as i64,
        TxKind::Associate { .. } => 50_000_000,
    }
}
