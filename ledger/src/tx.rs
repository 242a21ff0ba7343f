//! Transactions: what they do, who must sign them, and how they are signed.

use std::collections::HashSet;

use bytes::Bytes;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::types::{AccountId, NftId, TokenId, TopicId, TransactionId};

/// Default valid duration of a transaction, in seconds (as the SDKs set it).
pub const DEFAULT_VALID_DURATION_SECS: i64 = 120;
/// Default max transaction fee: 2 hbar, as the SDKs set it.
pub const DEFAULT_MAX_FEE: i64 = 200_000_000;
/// The node account transactions are sent to by default.
pub const DEFAULT_NODE: AccountId = AccountId::new(3);

/// An Ed25519 public key, as Hedera accounts and topics hold them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.0))
    }
}

impl From<&SigningKey> for PublicKey {
    fn from(k: &SigningKey) -> Self {
        Self(k.verifying_key().to_bytes())
    }
}

impl From<VerifyingKey> for PublicKey {
    fn from(k: VerifyingKey) -> Self {
        Self(k.to_bytes())
    }
}

/// Deepest nesting of key lists in a key ([`Key::check`]).
pub const MAX_KEY_DEPTH: usize = 5;
/// Most Ed25519 keys in one key ([`Key::check`]).
pub const MAX_KEY_LEAVES: usize = 64;

/// A key an account is controlled by, as Hedera's `Key`: one Ed25519 key, or `threshold` of a
/// list of keys (a Hedera `KeyList` is the threshold of all its keys; a `ThresholdKey` any
/// number from 1 to all), nested.
///
/// # Examples
///
/// ```
/// use std::collections::HashSet;
/// use streamspace_ledger::{tx::Key, PublicKey};
/// let [a, b, c] = [1u8, 2, 3].map(|s| PublicKey::from(&ed25519_dalek::SigningKey::from_bytes(&[s; 32])));
/// let two_of_three = Key::Threshold { threshold: 2, keys: vec![a.into(), b.into(), c.into()] };
/// assert!(!two_of_three.is_satisfied(&HashSet::from([a])));
/// assert!(two_of_three.is_satisfied(&HashSet::from([a, c])));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Key {
    /// One Ed25519 key.
    Ed25519(PublicKey),
    /// At least `threshold` of `keys` must be satisfied.
    Threshold {
        /// How many of `keys`.
        threshold: u32,
        /// The keys.
        keys: Vec<Key>,
    },
}

impl From<PublicKey> for Key {
    fn from(k: PublicKey) -> Self {
        Self::Ed25519(k)
    }
}

impl Key {
    /// Whether signatures by `signers` satisfy the key.
    pub fn is_satisfied(&self, signers: &HashSet<PublicKey>) -> bool {
        match self {
            Self::Ed25519(k) => signers.contains(k),
            Self::Threshold { threshold, keys } => {
                let met = keys.iter().filter(|k| k.is_satisfied(signers)).count();
                met >= *threshold as usize && *threshold > 0
            }
        }
    }

    /// Whether the key is well formed: every threshold between 1 and the keys it lists, at
    /// most [`MAX_KEY_DEPTH`] levels of lists and [`MAX_KEY_LEAVES`] keys.
    pub fn check(&self) -> bool {
        fn walk(k: &Key, depth: usize, leaves: &mut usize) -> bool {
            match k {
                Key::Ed25519(_) => {
                    *leaves += 1;
                    *leaves <= MAX_KEY_LEAVES
                }
                Key::Threshold { threshold, keys } => {
                    depth < MAX_KEY_DEPTH
                        && *threshold >= 1
                        && *threshold as usize <= keys.len()
                        && keys.iter().all(|k| walk(k, depth + 1, leaves))
                }
            }
        }
        walk(self, 0, &mut 0)
    }

    /// Its first Ed25519 key (depth first).
    pub fn first(&self) -> Option<PublicKey> {
        match self {
            Self::Ed25519(k) => Some(*k),
            Self::Threshold { keys, .. } => keys.iter().find_map(Key::first),
        }
    }
}

/// One NFT moving between accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftTransfer {
    /// The NFT.
    pub nft: NftId,
    /// Current owner (must sign).
    pub from: AccountId,
    /// New owner (must be associated with the token).
    pub to: AccountId,
}

/// Which chunk of a chunked topic message a submission carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkInfo {
    /// Transaction id of the first chunk.
    pub initial: TransactionId,
    /// Number of chunks.
    pub total: u32,
    /// This chunk's number, from 1.
    pub number: u32,
}

/// What a transaction does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TxKind {
    /// CryptoCreate: a new account with `key`, funded by the payer.
    CreateAccount {
        /// The account's key: one Ed25519 key, or a threshold of several.
        key: Key,
        /// Tinybars moved from the payer to the new account.
        initial_balance: i64,
        /// Whether every transfer crediting the account (hbar or NFTs) must be signed by its
        /// key too (Hedera's `receiverSigRequired`).
        receiver_sig_required: bool,
    },
    /// CryptoTransfer: one atomic transfer of hbar (amounts sum to zero) and NFTs.
    Transfer {
        /// Tinybar amounts per account; negative for senders.
        hbar: Vec<(AccountId, i64)>,
        /// NFTs moving.
        nfts: Vec<NftTransfer>,
    },
    /// ConsensusCreateTopic.
    CreateTopic {
        /// Topic memo.
        memo: String,
        /// Key that must sign every submission, if any.
        submit_key: Option<PublicKey>,
    },
    /// ConsensusSubmitMessage: at most 1,024 bytes per transaction.
    SubmitMessage {
        /// The topic.
        topic: TopicId,
        /// The message (or chunk).
        message: Bytes,
        /// Chunk position when the message is one of several chunks.
        chunk: Option<ChunkInfo>,
    },
    /// TokenCreate of a non-fungible token class.
    CreateNft {
        /// Token name.
        name: String,
        /// Token symbol.
        symbol: String,
        /// Treasury account (must sign; receives minted NFTs).
        treasury: AccountId,
        /// Key that must sign mints.
        supply_key: PublicKey,
    },
    /// TokenMint of NFTs with their metadata (at most 10 per transaction, 100 bytes each).
    MintNft {
        /// The token class.
        token: TokenId,
        /// One metadata entry per NFT.
        metadata: Vec<Bytes>,
    },
    /// TokenAssociate: lets `account` hold `tokens`.
    Associate {
        /// The account (must sign).
        account: AccountId,
        /// Token classes.
        tokens: Vec<TokenId>,
    },
}

/// A transaction body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// Payer and valid start; unique on the ledger.
    pub id: TransactionId,
    /// Node account the transaction is sent to.
    pub node: AccountId,
    /// Most the payer agrees to pay in fees, in tinybars.
    pub max_fee: i64,
    /// Seconds after the valid start during which the transaction may reach consensus.
    pub valid_duration_secs: i64,
    /// Memo (at most 100 bytes).
    pub memo: String,
    /// What it does.
    pub kind: TxKind,
}

impl Transaction {
    /// A transaction with the SDKs' defaults for node, max fee (2 hbar; 40 for token creation),
    /// valid duration (120 s) and memo (empty).
    pub fn new(id: TransactionId, kind: TxKind) -> Self {
        // Token creation costs more than the usual default, as in the SDKs.
        let max_fee = match kind {
            TxKind::CreateNft { .. } => 40 * 100_000_000,
            _ => DEFAULT_MAX_FEE,
        };
        Self {
            id,
            node: DEFAULT_NODE,
            max_fee,
            valid_duration_secs: DEFAULT_VALID_DURATION_SECS,
            memo: String::new(),
            kind,
        }
    }

    /// Sets the memo.
    pub fn with_memo(mut self, memo: impl Into<String>) -> Self {
        self.memo = memo.into();
        self
    }

    /// Sets the max fee.
    pub fn with_max_fee(mut self, tinybars: i64) -> Self {
        self.max_fee = tinybars;
        self
    }

    /// The canonical bytes that signatures cover (the embedded ledger's body encoding).
    pub fn body_bytes(&self) -> Bytes {
        #[derive(Serialize)]
        struct Body<'a> {
            domain: &'static str,
            tx: &'a Transaction,
        }
        // Serializing plain data into a Vec cannot fail.
        Bytes::from(
            postcard::to_allocvec(&Body {
                domain: "streamspace-ledger-body-v1",
                tx: self,
            })
            .unwrap_or_default(),
        )
    }

    /// Signs with each key.
    pub fn sign(self, keys: &[&SigningKey]) -> SignedTransaction {
        let body_bytes = self.body_bytes();
        let sigs = keys
            .iter()
            .map(|k| SigPair {
                public_key: PublicKey::from(*k),
                signature: k.sign(&body_bytes).to_bytes(),
            })
            .collect();
        SignedTransaction {
            body: self,
            body_bytes,
            sigs,
        }
    }
}

/// A public key and its signature over the body bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigPair {
    /// Signer.
    pub public_key: PublicKey,
    /// Ed25519 signature.
    pub signature: [u8; 64],
}

/// A transaction with the bytes that were signed and the signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTransaction {
    /// The decoded body.
    pub body: Transaction,
    /// The exact bytes the signatures cover.
    pub body_bytes: Bytes,
    /// Signatures.
    pub sigs: Vec<SigPair>,
}

impl SignedTransaction {
    /// The keys whose signatures over the body bytes verify.
    pub fn verified_signers(&self) -> HashSet<PublicKey> {
        self.sigs
            .iter()
            .filter(|s| {
                VerifyingKey::from_bytes(&s.public_key.0).is_ok_and(|k| {
                    k.verify(&self.body_bytes, &Signature::from_bytes(&s.signature))
                        .is_ok()
                })
            })
            .map(|s| s.public_key)
            .collect()
    }
}

/// Splits a topic message into transactions of at most `chunk_size` bytes each, the way the
/// SDKs chunk `TopicMessageSubmitTransaction`: chunk `n` has valid start `first + n - 1` ns and
/// every chunk names the first chunk's id.
pub fn chunk_message(
    first: TransactionId,
    topic: TopicId,
    message: &Bytes,
    chunk_size: usize,
) -> Vec<Transaction> {
    let chunk_size = chunk_size.max(1);
    if message.len() <= chunk_size {
        return vec![Transaction::new(
            first,
            TxKind::SubmitMessage {
                topic,
                message: message.clone(),
                chunk: None,
            },
        )];
    }
    let total = message.len().div_ceil(chunk_size) as u32;
    (0..total)
        .map(|i| {
            let id = TransactionId {
                payer: first.payer,
                valid_start: crate::types::Timestamp::from_nanos(
                    first.valid_start.as_nanos() + i128::from(i),
                ),
            };
            let start = i as usize * chunk_size;
            let end = (start + chunk_size).min(message.len());
            Transaction::new(
                id,
                TxKind::SubmitMessage {
                    topic,
                    message: message.slice(start..end),
                    chunk: Some(ChunkInfo {
                        initial: first,
                        total,
                        number: i + 1,
                    }),
                },
            )
        })
        .collect()
}
