//! Hedera response codes, by their `ResponseCodeEnum` names.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! statuses {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// The outcome of a transaction or query, named as Hedera's `ResponseCodeEnum` names it,
        /// so callers handle every backend alike. The wire code comes from Hedera's protobufs
        /// by this name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[non_exhaustive]
        pub enum Status {
            $($(#[$doc])* $variant,)*
        }

        impl Status {
            /// Hedera's name, e.g. `INSUFFICIENT_PAYER_BALANCE`.
            pub const fn name(self) -> &'static str {
                match self { $(Self::$variant => $name,)* }
            }

            /// The status with Hedera's name, if this crate knows it.
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($name => Some(Self::$variant),)* _ => None }
            }
        }
    };
}

statuses! {
    /// The transaction passed precheck.
    Ok => "OK",
    /// The transaction id's valid start is in the future or too far in the past.
    InvalidTransactionStart => "INVALID_TRANSACTION_START",
    /// The valid duration is outside what the network accepts.
    InvalidTransactionDuration => "INVALID_TRANSACTION_DURATION",
    /// A required signature is missing or does not verify.
    InvalidSignature => "INVALID_SIGNATURE",
    /// The memo is longer than 100 bytes.
    MemoTooLong => "MEMO_TOO_LONG",
    /// The max transaction fee is below the fee.
    InsufficientTxFee => "INSUFFICIENT_TX_FEE",
    /// The payer cannot pay the fee.
    InsufficientPayerBalance => "INSUFFICIENT_PAYER_BALANCE",
    /// A transaction with this id was already submitted.
    DuplicateTransaction => "DUPLICATE_TRANSACTION",
    /// The transaction is larger than the network accepts.
    TransactionOversize => "TRANSACTION_OVERSIZE",
    /// Every other rule passed but the network is too busy; retry.
    Busy => "BUSY",
    /// The operation is not supported by this ledger.
    NotSupported => "NOT_SUPPORTED",
    /// A transaction id that is malformed.
    InvalidTransactionId => "INVALID_TRANSACTION_ID",
    /// The valid start plus valid duration is in the past.
    TransactionExpired => "TRANSACTION_EXPIRED",
    /// The transaction has no body or an unknown kind.
    InvalidTransactionBody => "INVALID_TRANSACTION_BODY",
    /// The account does not exist.
    InvalidAccountId => "INVALID_ACCOUNT_ID",
    /// The payer account does not exist.
    PayerAccountNotFound => "PAYER_ACCOUNT_NOT_FOUND",
    /// No receipt for this transaction id.
    ReceiptNotFound => "RECEIPT_NOT_FOUND",
    /// No record for this transaction id.
    RecordNotFound => "RECORD_NOT_FOUND",
    /// The transaction reached consensus and succeeded.
    Success => "SUCCESS",
    /// An account in a transfer lacks the balance to send.
    InsufficientAccountBalance => "INSUFFICIENT_ACCOUNT_BALANCE",
    /// The transfer amounts do not sum to zero.
    InvalidAccountAmounts => "INVALID_ACCOUNT_AMOUNTS",
    /// The transaction is malformed (bad protobuf, missing fields).
    InvalidTransaction => "INVALID_TRANSACTION",
    /// An account appears twice in one transfer list.
    AccountRepeatedInAccountAmounts => "ACCOUNT_REPEATED_IN_ACCOUNT_AMOUNTS",
    /// The initial balance of a new account is negative.
    InvalidInitialBalance => "INVALID_INITIAL_BALANCE",
    /// The topic does not exist.
    InvalidTopicId => "INVALID_TOPIC_ID",
    /// The message is empty.
    InvalidTopicMessage => "INVALID_TOPIC_MESSAGE",
    /// A chunk number outside 1..=total.
    InvalidChunkNumber => "INVALID_CHUNK_NUMBER",
    /// A later chunk does not name the first chunk's transaction id.
    InvalidChunkTransactionId => "INVALID_CHUNK_TRANSACTION_ID",
    /// A transfer list over the network's limit.
    TransferListSizeLimitExceeded => "TRANSFER_LIST_SIZE_LIMIT_EXCEEDED",
    /// The token does not exist.
    InvalidTokenId => "INVALID_TOKEN_ID",
    /// The account is not associated with the token.
    TokenNotAssociatedToAccount => "TOKEN_NOT_ASSOCIATED_TO_ACCOUNT",
    /// The account is already associated with the token.
    TokenAlreadyAssociatedToAccount => "TOKEN_ALREADY_ASSOCIATED_TO_ACCOUNT",
    /// A message larger than 1,024 bytes in one transaction.
    MessageSizeTooLarge => "MESSAGE_SIZE_TOO_LARGE",
    /// The token has no supply key, so nothing can be minted.
    TokenHasNoSupplyKey => "TOKEN_HAS_NO_SUPPLY_KEY",
    /// NFT metadata over 100 bytes.
    MetadataTooLong => "METADATA_TOO_LONG",
    /// More NFTs in one mint or transfer than the network allows.
    BatchSizeLimitExceeded => "BATCH_SIZE_LIMIT_EXCEEDED",
    /// The NFT does not exist.
    InvalidNftId => "INVALID_NFT_ID",
    /// The sender does not own the NFT.
    SenderDoesNotOwnNftSerialNo => "SENDER_DOES_NOT_OWN_NFT_SERIAL_NO",
    /// A token name or symbol that is empty or too long.
    MissingTokenName => "MISSING_TOKEN_NAME",
    /// A key that is malformed: an empty list, a threshold of 0 or above the keys listed, or
    /// nested or sized beyond the limits.
    InvalidKeyEncoding => "INVALID_KEY_ENCODING",
    /// An auto-renew period outside what the network accepts.
    AutorenewDurationNotInRange => "AUTORENEW_DURATION_NOT_IN_RANGE",
    /// Decimals on a non-fungible token.
    InvalidTokenDecimals => "INVALID_TOKEN_DECIMALS",
    /// An initial supply on a non-fungible token.
    InvalidTokenInitialSupply => "INVALID_TOKEN_INITIAL_SUPPLY",
    /// A fungible amount in a mint of non-fungible tokens.
    InvalidTokenMintAmount => "INVALID_TOKEN_MINT_AMOUNT",
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
