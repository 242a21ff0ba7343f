//! Signed cumulative receipts, the [`Domain`] they are valid in, and their compact binary
//! encoding.
//!
//! # Layout (version 2, 217 bytes, integers big-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version = 2 |
//! | 1 | 16 | domain tag `streamspace-rcpt` |
//! | 17 | 32 | [`DomainId`]: network, ledger, clearing account and settlement topic |
//! | 49 | 24 | payer account: shard, realm, num (u64 each) |
//! | 73 | 24 | payee account: shard, realm, num |
//! | 97 | 8 | period |
//! | 105 | 8 | cumulative amount, tinybars |
//! | 113 | 8 | cumulative shard count |
//! | 121 | 32 | payer's Ed25519 public key |
//! | 153 | 64 | Ed25519 signature over bytes 0..153 |
//!
//! The signature covers the domain tag, so a receipt cannot be replayed as any other signed
//! message; the [`DomainId`], so it cannot be replayed into another deployment (another
//! StreamSpace network, another ledger, or another clearing account or settlement topic on
//! the same ledger); and the period, so it cannot be replayed in another period.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use streamspace_ledger::{AccountId, EntityId, PublicKey, TopicId};

/// Layout version written by this crate.
pub const VERSION: u8 = 2;
/// Domain tag bound into every signature.
pub const DOMAIN: &[u8; 16] = b"streamspace-rcpt";
/// Encoded length of a receipt.
pub const ENCODED_LEN: usize = 217;
const SIGNED_LEN: usize = 153;

/// Where receipts are valid: one StreamSpace network settling on one ledger, through one
/// clearing account and one settlement topic. Receipts carry and sign its [`DomainId`];
/// books, journals, settlement and fraud proofs refuse receipts of any other domain.
///
/// # Examples
///
/// ```
/// use streamspace_ledger::{AccountId, TopicId};
/// use streamspace_payments::receipt::Domain;
/// let ours = Domain::new("main", "hedera:testnet", AccountId::new(5005), TopicId::new(6006));
/// let theirs = Domain { topic: TopicId::new(6007), ..ours.clone() };
/// assert_ne!(ours.id(), theirs.id());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Domain {
    /// The StreamSpace network: the name its members admit each other under (the transport's
    /// network name).
    pub network: String,
    /// The ledger periods settle on: `hedera:mainnet`, `hedera:testnet`, `hedera:previewnet`,
    /// or a name that singles out a private ledger (for the embedded ledger, say `local:`
    /// followed by its treasury key in hex).
    pub ledger: String,
    /// The clearing (escrow) account collateral is locked in and payouts come from.
    pub clearing: AccountId,
    /// The settlement topic receipts are posted to and periods anchored on.
    pub topic: TopicId,
}

/// The 32-byte digest of a [`Domain`] that receipts carry and sign:
/// `SHA-256("streamspace-receipt-domain-v1" ‖ len(network) ‖ network ‖ len(ledger) ‖ ledger ‖
/// clearing ‖ topic)`, lengths as u32 and ids as three u64, all big-endian.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct DomainId(pub [u8; 32]);

impl Domain {
    /// A domain.
    pub fn new(
        network: impl Into<String>,
        ledger: impl Into<String>,
        clearing: AccountId,
        topic: TopicId,
    ) -> Self {
        Self {
            network: network.into(),
            ledger: ledger.into(),
            clearing,
            topic,
        }
    }

    /// The digest receipts carry.
    pub fn id(&self) -> DomainId {
        let mut h = Sha256::new();
        h.update(b"streamspace-receipt-domain-v1");
        for part in [self.network.as_bytes(), self.ledger.as_bytes()] {
            // A part longer than u32::MAX bytes is hashed with that length: still unambiguous
            // for every part shorter, which is every part a configuration can hold.
            h.update(u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            h.update(part);
        }
        for id in [self.clearing.0, self.topic.0] {
            let mut b = [0u8; 24];
            put_entity(&mut b, id);
            h.update(b);
        }
        DomainId(h.finalize().into())
    }
}

impl From<&Domain> for DomainId {
    fn from(d: &Domain) -> Self {
        d.id()
    }
}

/// What a payer promises: the cumulative amount and shard count it owes a payee for a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReceiptBody {
    /// The deployment the receipt is valid in.
    pub domain: DomainId,
    /// Who pays.
    pub payer: AccountId,
    /// Who is paid.
    pub payee: AccountId,
    /// Settlement period.
    pub period: u64,
    /// Cumulative tinybars owed for the period.
    pub amount: u64,
    /// Cumulative shards received in the period.
    pub shards: u64,
}

/// A receipt signed by its payer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SignedReceipt {
    /// The promise.
    pub body: ReceiptBody,
    /// The payer's key.
    pub payer_key: PublicKey,
    /// Signature over the encoded body.
    pub signature: [u8; 64],
}

/// A receipt could not be decoded or verified.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiptError {
    /// Fewer or more bytes than a receipt has.
    #[error("receipt is {0} bytes, expected {ENCODED_LEN}")]
    Length(usize),
    /// An unknown layout version.
    #[error("unknown receipt version {0}")]
    Version(u8),
    /// Not a StreamSpace receipt.
    #[error("wrong domain tag")]
    Domain,
    /// A receipt of another deployment (see [`Domain`]).
    #[error("receipt of another domain")]
    ForeignDomain,
    /// The signature does not verify (or the key is not a valid Ed25519 key).
    #[error("receipt signature does not verify")]
    BadSignature,
}

fn put_entity(out: &mut [u8], id: EntityId) {
    out[..8].copy_from_slice(&id.shard.to_be_bytes());
    out[8..16].copy_from_slice(&id.realm.to_be_bytes());
    out[16..24].copy_from_slice(&id.num.to_be_bytes());
}

fn put_id(out: &mut [u8], id: AccountId) {
    put_entity(out, id.0);
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn id_at(b: &[u8], at: usize) -> AccountId {
    AccountId(EntityId {
        shard: u64_at(b, at),
        realm: u64_at(b, at + 8),
        num: u64_at(b, at + 16),
    })
}

impl ReceiptBody {
    fn signed_bytes(&self, key: &PublicKey) -> [u8; SIGNED_LEN] {
        let mut b = [0u8; SIGNED_LEN];
        b[0] = VERSION;
        b[1..17].copy_from_slice(DOMAIN);
        b[17..49].copy_from_slice(&self.domain.0);
        put_id(&mut b[49..73], self.payer);
        put_id(&mut b[73..97], self.payee);
        b[97..105].copy_from_slice(&self.period.to_be_bytes());
        b[105..113].copy_from_slice(&self.amount.to_be_bytes());
        b[113..121].copy_from_slice(&self.shards.to_be_bytes());
        b[121..153].copy_from_slice(&key.0);
        b
    }

    /// Signs with the payer's key.
    ///
    /// # Examples
    ///
    /// ```
    /// use streamspace_payments::receipt::{Domain, ReceiptBody, ReceiptError, SignedReceipt};
    /// use streamspace_ledger::{AccountId, TopicId};
    /// let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
    /// let domain = Domain::new("main", "hedera:testnet", AccountId::new(5005), TopicId::new(6006));
    /// let body = ReceiptBody { domain: domain.id(), payer: AccountId::new(1001), payee: AccountId::new(1002), period: 7, amount: 500, shards: 5 };
    /// let r = body.sign(&key);
    /// let back = SignedReceipt::decode(&r.encode())?;
    /// back.verify_in(&domain.id())?;
    /// assert_eq!(back, r);
    /// let elsewhere = Domain { network: "other".into(), ..domain };
    /// assert_eq!(back.verify_in(&elsewhere.id()), Err(ReceiptError::ForeignDomain));
    /// # Ok::<(), streamspace_payments::receipt::ReceiptError>(())
    /// ```
    pub fn sign(&self, key: &SigningKey) -> SignedReceipt {
        let payer_key = PublicKey::from(key);
        let signature = key.sign(&self.signed_bytes(&payer_key)).to_bytes();
        SignedReceipt {
            body: *self,
            payer_key,
            signature,
        }
    }
}

/// Signs receipts with one key, its secret expanded once rather than for every signature
/// (the rate a payer signs at is bounded by this).
///
/// # Examples
///
/// ```
/// use streamspace_payments::receipt::{DomainId, ReceiptBody, ReceiptSigner};
/// use streamspace_ledger::AccountId;
/// let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
/// let body = ReceiptBody { domain: DomainId([9; 32]), payer: AccountId::new(1001), payee: AccountId::new(1002), period: 7, amount: 500, shards: 5 };
/// let signer = ReceiptSigner::new(&key);
/// assert_eq!(signer.sign(&body), body.sign(&key));
/// ```
pub struct ReceiptSigner {
    secret: ed25519_dalek::hazmat::ExpandedSecretKey,
    verifying: VerifyingKey,
    public: PublicKey,
}

impl std::fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptSigner")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl ReceiptSigner {
    /// A signer for `key`.
    pub fn new(key: &SigningKey) -> Self {
        Self {
            secret: ed25519_dalek::hazmat::ExpandedSecretKey::from(key.as_bytes()),
            verifying: key.verifying_key(),
            public: PublicKey::from(key),
        }
    }

    /// Signs `body`; the same signature as [`ReceiptBody::sign`] (Ed25519 is deterministic).
    pub fn sign(&self, body: &ReceiptBody) -> SignedReceipt {
        let signature = ed25519_dalek::hazmat::raw_sign::<sha2::Sha512>(
            &self.secret,
            &body.signed_bytes(&self.public),
            &self.verifying,
        )
        .to_bytes();
        SignedReceipt {
            body: *body,
            payer_key: self.public,
            signature,
        }
    }
}

impl SignedReceipt {
    /// The 217-byte encoding.
    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        out[..SIGNED_LEN].copy_from_slice(&self.body.signed_bytes(&self.payer_key));
        out[SIGNED_LEN..].copy_from_slice(&self.signature);
        out
    }

    /// Decodes without verifying the signature.
    ///
    /// # Errors
    ///
    /// [`ReceiptError`] for a wrong length, version or domain.
    pub fn decode(b: &[u8]) -> Result<Self, ReceiptError> {
        if b.len() != ENCODED_LEN {
            return Err(ReceiptError::Length(b.len()));
        }
        if b[0] != VERSION {
            return Err(ReceiptError::Version(b[0]));
        }
        if &b[1..17] != DOMAIN {
            return Err(ReceiptError::Domain);
        }
        let mut domain = [0u8; 32];
        domain.copy_from_slice(&b[17..49]);
        let mut key = [0u8; 32];
        key.copy_from_slice(&b[121..153]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&b[153..]);
        Ok(Self {
            body: ReceiptBody {
                domain: DomainId(domain),
                payer: id_at(b, 49),
                payee: id_at(b, 73),
                period: u64_at(b, 97),
                amount: u64_at(b, 105),
                shards: u64_at(b, 113),
            },
            payer_key: PublicKey(key),
            signature,
        })
    }

    /// Checks that the receipt is of `domain` and its signature verifies: what every party
    /// of one deployment checks. Whether the key belongs to the payer account is the caller's
    /// check (see [`crate::book::ReceiptBook`]).
    ///
    /// # Errors
    ///
    /// [`ReceiptError::ForeignDomain`] or [`ReceiptError::BadSignature`].
    pub fn verify_in(&self, domain: &DomainId) -> Result<(), ReceiptError> {
        if self.body.domain != *domain {
            return Err(ReceiptError::ForeignDomain);
        }
        self.verify()
    }

    /// Checks the signature against the key in the receipt, whatever its domain (see
    /// [`SignedReceipt::verify_in`]).
    ///
    /// # Errors
    ///
    /// [`ReceiptError::BadSignature`].
    pub fn verify(&self) -> Result<(), ReceiptError> {
        let key =
            VerifyingKey::from_bytes(&self.payer_key.0).map_err(|_| ReceiptError::BadSignature)?;
        key.verify(
            &self.body.signed_bytes(&self.payer_key),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| ReceiptError::BadSignature)
    }
}

/// Verifies many receipts at once (Ed25519 batch verification, several times faster per
/// receipt than one by one).
///
/// # Errors
///
/// [`ReceiptError::BadSignature`] if any receipt fails; verify them one by one to find which.
pub fn verify_batch(receipts: &[SignedReceipt]) -> Result<(), ReceiptError> {
    if receipts.is_empty() {
        return Ok(());
    }
    let messages: Vec<[u8; SIGNED_LEN]> = receipts
        .iter()
        .map(|r| r.body.signed_bytes(&r.payer_key))
        .collect();
    let refs: Vec<&[u8]> = messages.iter().map(|m| &m[..]).collect();
    let sigs: Vec<Signature> = receipts
        .iter()
        .map(|r| Signature::from_bytes(&r.signature))
        .collect();
    let keys = receipts
        .iter()
        .map(|r| VerifyingKey::from_bytes(&r.payer_key.0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ReceiptError::BadSignature)?;
    ed25519_dalek::verify_batch(&refs, &sigs, &keys).map_err(|_| ReceiptError::BadSignature)
}
