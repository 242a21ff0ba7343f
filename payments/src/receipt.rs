//! Signed cumulative receipts and their compact binary encoding.
//!
//! # Layout (version 1, 185 bytes, integers big-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version = 1 |
//! | 1 | 16 | domain tag `streamspace-rcpt` |
//! | 17 | 24 | payer account: shard, realm, num (u64 each) |
//! | 41 | 24 | payee account: shard, realm, num |
//! | 65 | 8 | period |
//! | 73 | 8 | cumulative amount, tinybars |
//! | 81 | 8 | cumulative shard count |
//! | 89 | 32 | payer's Ed25519 public key |
//! | 121 | 64 | Ed25519 signature over bytes 0..121 |
//!
//! The signature covers the domain tag, so a receipt cannot be replayed as any other signed
//! message, and the period, so it cannot be replayed in another period.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use streamspace_ledger::{AccountId, EntityId, PublicKey};

/// Layout version written by this crate.
pub const VERSION: u8 = 1;
/// Domain tag bound into every signature.
pub const DOMAIN: &[u8; 16] = b"streamspace-rcpt";
/// Encoded length of a receipt.
pub const ENCODED_LEN: usize = 185;
const SIGNED_LEN: usize = 121;

/// What a payer promises: the cumulative amount and shard count it owes a payee for a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReceiptBody {
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
    /// The signature does not verify (or the key is not a valid Ed25519 key).
    #[error("receipt signature does not verify")]
    BadSignature,
}

fn put_id(out: &mut [u8], id: AccountId) {
    out[..8].copy_from_slice(&id.0.shard.to_be_bytes());
    out[8..16].copy_from_slice(&id.0.realm.to_be_bytes());
    out[16..24].copy_from_slice(&id.0.num.to_be_bytes());
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
        put_id(&mut b[17..41], self.payer);
        put_id(&mut b[41..65], self.payee);
        b[65..73].copy_from_slice(&self.period.to_be_bytes());
        b[73..81].copy_from_slice(&self.amount.to_be_bytes());
        b[81..89].copy_from_slice(&self.shards.to_be_bytes());
        b[89..121].copy_from_slice(&key.0);
        b
    }

    /// Signs with the payer's key.
    ///
    /// # Examples
    ///
    /// ```
    /// use streamspace_payments::receipt::{ReceiptBody, SignedReceipt};
    /// use streamspace_ledger::AccountId;
    /// let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
    /// let body = ReceiptBody { payer: AccountId::new(1001), payee: AccountId::new(1002), period: 7, amount: 500, shards: 5 };
    /// let r = body.sign(&key);
    /// let back = SignedReceipt::decode(&r.encode())?;
    /// back.verify()?;
    /// assert_eq!(back, r);
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
/// use streamspace_payments::receipt::{ReceiptBody, ReceiptSigner};
/// use streamspace_ledger::AccountId;
/// let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
/// let body = ReceiptBody { payer: AccountId::new(1001), payee: AccountId::new(1002), period: 7, amount: 500, shards: 5 };
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
    /// The 185-byte encoding.
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
        let mut key = [0u8; 32];
        key.copy_from_slice(&b[89..121]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&b[121..]);
        Ok(Self {
            body: ReceiptBody {
                payer: id_at(b, 17),
                payee: id_at(b, 41),
                period: u64_at(b, 65),
                amount: u64_at(b, 73),
                shards: u64_at(b, 81),
            },
            payer_key: PublicKey(key),
            signature,
        })
    }

    /// Checks the signature against the key in the receipt. Whether that key belongs to the
    /// payer account is the caller's check (see [`crate::book::ReceiptBook`]).
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
