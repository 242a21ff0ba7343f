//! The Merkle tree that anchors a period's settled receipts on the ledger.
//!
//! Leaves are `SHA-256(0x00 || receipt encoding)` in the order given (settlement sorts receipts
//! by payer, then payee); inner nodes are `SHA-256(0x01 || left || right)`; a node without a
//! sibling is promoted unchanged. The domain bytes keep a leaf from passing for an inner node.

use sha2::{Digest, Sha256};

use crate::receipt::SignedReceipt;

/// A 32-byte hash.
pub type Hash = [u8; 32];

/// One step of an inclusion proof: the sibling and whether it sits on the left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The sibling hash.
    pub sibling: Hash,
    /// The sibling is the left child.
    pub left: bool,
}

fn leaf(r: &SignedReceipt) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(r.encode());
    h.finalize().into()
}

fn node(l: &Hash, r: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

/// A Merkle tree over receipts.
#[derive(Debug, Clone)]
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// Builds the tree.
    ///
    /// # Examples
    ///
    /// ```
    /// use streamspace_payments::{merkle::{verify, Tree}, receipt::{DomainId, ReceiptBody}};
    /// use streamspace_ledger::AccountId;
    /// let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
    /// let rs: Vec<_> = (0..5).map(|i| ReceiptBody { domain: DomainId([7; 32]), payer: AccountId::new(1), payee: AccountId::new(10 + i), period: 1, amount: 5, shards: 1 }.sign(&key)).collect();
    /// let tree = Tree::new(&rs);
    /// assert!(verify(&tree.root(), &rs[3], &tree.proof(3).unwrap()));
    /// assert!(!verify(&tree.root(), &rs[2], &tree.proof(3).unwrap()));
    /// ```
    pub fn new(receipts: &[SignedReceipt]) -> Self {
        let mut levels = vec![receipts.iter().map(leaf).collect::<Vec<_>>()];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let below = levels.last().map(Vec::as_slice).unwrap_or_default();
            let up = below
                .chunks(2)
                .map(|p| {
                    if p.len() == 2 {
                        node(&p[0], &p[1])
                    } else {
                        p[0]
                    }
                })
                .collect();
            levels.push(up);
        }
        Self { levels }
    }

    /// The root (all zeros for no receipts).
    pub fn root(&self) -> Hash {
        self.levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or([0; 32])
    }

    /// The inclusion proof of leaf `index`.
    pub fn proof(&self, mut index: usize) -> Option<Vec<Step>> {
        if index >= self.levels.first()?.len() {
            return None;
        }
        let mut steps = Vec::new();
        for level in &self.levels[..self.levels.len() - 1] {
            let sib = index ^ 1;
            if let Some(h) = level.get(sib) {
                steps.push(Step {
                    sibling: *h,
                    left: sib < index,
                });
            }
            index /= 2;
        }
        Some(steps)
    }
}

/// Checks that `receipt` is under `root`.
pub fn verify(root: &Hash, receipt: &SignedReceipt, proof: &[Step]) -> bool {
    let mut h = leaf(receipt);
    for s in proof {
        h = if s.left {
            node(&s.sibling, &h)
        } else {
            node(&h, &s.sibling)
        };
    }
    &h == root
}
