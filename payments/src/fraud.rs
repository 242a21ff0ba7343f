//! Fraud proofs: receipts of one payer that cannot all be honoured.
//!
//! A payer locks collateral for a period and may promise it to many payees; each payee only
//! sees its own receipts. Receipts of one payer and period, to different payees, whose amounts
//! add up to more than the collateral cannot all be paid: together they prove the payer
//! over-promised (one receipt can be enough, if it alone promises more than was locked). The
//! proof is self-contained — the receipts carry the payer's signatures — and anyone who knows
//! the payer's key and collateral can check it.
//!
//! On a consensus topic a proof travels as one or more messages ([`FraudProof::messages`]),
//! each [`FRAUD_TAG`] and at most [`FRAUD_RECEIPTS_PER_MESSAGE`] receipts, so that each fits
//! one 1,024-byte chunk; a reader [merges](FraudProof::merge) the parts of one payer and
//! period and checks the whole.

use std::collections::HashSet;

use bytes::Bytes;
use streamspace_ledger::{AccountId, PublicKey};

use crate::receipt::{DomainId, ENCODED_LEN, ReceiptError, SignedReceipt, verify_batch};

/// Tag opening a consensus-topic message that carries (part of) a fraud proof.
pub const FRAUD_TAG: &[u8; 20] = b"streamspace-fraud-v2";
/// Receipts per fraud-proof message: a message (20-byte tag, count, 4 × 217 bytes) stays within
/// one 1,024-byte chunk.
pub const FRAUD_RECEIPTS_PER_MESSAGE: usize = 4;

/// Receipts proving a payer promised more than its collateral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FraudProof {
    /// The receipts (distinct payees, one payer, one period).
    pub receipts: Vec<SignedReceipt>,
}

/// A fraud proof that does not prove fraud.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FraudProofError {
    /// No receipts.
    #[error("a fraud proof needs at least one receipt")]
    TooFew,
    /// Not a fraud-proof message (it does not open with [`FRAUD_TAG`]).
    #[error("not a fraud-proof message")]
    NotFraud,
    /// Receipts of different payers or periods, or by another key than the payer's.
    #[error("receipts are not all of payer {0} in one period with its key")]
    Mixed(AccountId),
    /// Receipts of another deployment: what a payer promised there says nothing of the
    /// collateral it locked here.
    #[error("receipts of payer {0} are of another domain")]
    ForeignDomain(AccountId),
    /// Two receipts to the same payee (only the newer counts).
    #[error("two receipts to payee {0}")]
    RepeatedPayee(AccountId),
    /// A receipt does not verify or decode.
    #[error(transparent)]
    Receipt(#[from] ReceiptError),
    /// The receipts fit within the collateral.
    #[error("receipts total {total}, within collateral {collateral}")]
    WithinCollateral {
        /// Sum of amounts.
        total: u64,
        /// Collateral.
        collateral: u64,
    },
}

impl FraudProof {
    /// Checks the proof against this deployment's `domain` and the payer's key and collateral
    /// (all public: the key from the ledger or allowlist, the collateral from the period's
    /// escrow transfer).
    ///
    /// # Errors
    ///
    /// [`FraudProofError`] when it proves nothing.
    pub fn verify(
        &self,
        domain: &DomainId,
        payer_key: &PublicKey,
        collateral: u64,
    ) -> Result<AccountId, FraudProofError> {
        let first = self.receipts.first().ok_or(FraudProofError::TooFew)?;
        let (payer, period) = (first.body.payer, first.body.period);
        let mut payees = HashSet::new();
        let mut total: u128 = 0;
        for r in &self.receipts {
            if r.body.payer != payer || r.body.period != period || r.payer_key != *payer_key {
                return Err(FraudProofError::Mixed(payer));
            }
            if r.body.domain != *domain {
                return Err(FraudProofError::ForeignDomain(payer));
            }
            if !payees.insert(r.body.payee) {
                return Err(FraudProofError::RepeatedPayee(r.body.payee));
            }
            // Fewer than 2^64 amounts below 2^64 each: the sum fits u128.
            total += u128::from(r.body.amount);
        }
        verify_batch(&self.receipts)?;
        if total <= u128::from(collateral) {
            return Err(FraudProofError::WithinCollateral {
                total: u64::try_from(total).unwrap_or(u64::MAX),
                collateral,
            });
        }
        Ok(payer)
    }

    /// Encoding for publication on a consensus topic: a count byte, then the receipts.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.receipts.len() * ENCODED_LEN);
        out.push(self.receipts.len().min(255) as u8);
        for r in self.receipts.iter().take(255) {
            out.extend_from_slice(&r.encode());
        }
        out
    }

    /// Adds the receipts of `other` (another part of the same proof, say) to payees this proof
    /// has none for; for a payee it has, the larger receipt stays.
    pub fn merge(&mut self, other: FraudProof) {
        for r in other.receipts {
            match self
                .receipts
                .iter_mut()
                .find(|h| h.body.payee == r.body.payee)
            {
                Some(h) if (r.body.amount, r.body.shards) > (h.body.amount, h.body.shards) => {
                    *h = r;
                }
                Some(_) => {}
                None => self.receipts.push(r),
            }
        }
    }

    /// The proof as consensus-topic messages: each [`FRAUD_TAG`] then
    /// [`FraudProof::encode`] of at most [`FRAUD_RECEIPTS_PER_MESSAGE`] receipts (at most 889
    /// bytes).
    ///
    /// # Examples
    ///
    /// ```
    /// use streamspace_ledger::{AccountId, PublicKey};
    /// use streamspace_payments::fraud::FraudProof;
    /// use streamspace_payments::receipt::{DomainId, ReceiptBody};
    /// let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
    /// let d = DomainId([7; 32]);
    /// let proof = FraudProof {
    ///     receipts: (0..6)
    ///         .map(|i| ReceiptBody { domain: d, payer: AccountId::new(1001), payee: AccountId::new(2000 + i), period: 1, amount: 200, shards: 2 }.sign(&key))
    ///         .collect(),
    /// };
    /// let messages = proof.messages();
    /// assert_eq!(messages.len(), 2);
    /// let mut read = FraudProof { receipts: vec![] };
    /// for m in &messages {
    ///     read.merge(FraudProof::parse_message(m)?);
    /// }
    /// assert_eq!(read.verify(&d, &PublicKey::from(&key), 1_000)?, AccountId::new(1001));
    /// # Ok::<(), streamspace_payments::fraud::FraudProofError>(())
    /// ```
    pub fn messages(&self) -> Vec<Bytes> {
        self.receipts
            .chunks(FRAUD_RECEIPTS_PER_MESSAGE)
            .map(|c| {
                let mut m = FRAUD_TAG.to_vec();
                m.extend_from_slice(
                    &FraudProof {
                        receipts: c.to_vec(),
                    }
                    .encode(),
                );
                Bytes::from(m)
            })
            .collect()
    }

    /// Decodes one message of [`FraudProof::messages`] (signatures are checked by `verify`).
    ///
    /// # Errors
    ///
    /// [`FraudProofError::NotFraud`]; as [`FraudProof::decode`].
    pub fn parse_message(message: &[u8]) -> Result<Self, FraudProofError> {
        let body = message
            .strip_prefix(&FRAUD_TAG[..])
            .ok_or(FraudProofError::NotFraud)?;
        Self::decode(body)
    }

    /// Decodes [`FraudProof::encode`]'s output (signatures are checked by `verify`).
    ///
    /// # Errors
    ///
    /// [`FraudProofError::Receipt`] for a bad length or receipt.
    pub fn decode(b: &[u8]) -> Result<Self, FraudProofError> {
        let (&n, rest) = b.split_first().ok_or(ReceiptError::Length(0))?;
        if rest.len() != n as usize * ENCODED_LEN {
            return Err(ReceiptError::Length(rest.len()).into());
        }
        let receipts = rest
            .chunks(ENCODED_LEN)
            .map(SignedReceipt::decode)
            .collect::<Result<_, _>>()?;
        Ok(Self { receipts })
    }
}
