//! Fraud proofs: receipts of one payer that cannot all be honoured.
//!
//! A payer locks collateral for a period and may promise it to many payees; each payee only
//! sees its own receipts. Receipts of one payer and period, to different payees, whose amounts
//! add up to more than the collateral cannot all be paid: together they prove the payer
//! over-promised. The proof is self-contained — the receipts carry the payer's signatures —
//! and anyone who knows the payer's key and collateral can check it.

use std::collections::HashSet;

use streamspace_ledger::{AccountId, PublicKey};

use crate::receipt::{DomainId, ENCODED_LEN, ReceiptError, SignedReceipt, verify_batch};

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
    /// Fewer than two receipts.
    #[error("a fraud proof needs at least two receipts")]
    TooFew,
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
        if self.receipts.len() < 2 {
            return Err(FraudProofError::TooFew);
        }
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
