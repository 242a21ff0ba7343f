//! What a key service knows of its own licenses: every license it issued, every revocation,
//! and the device keys each license's content key was released to.

use std::collections::HashMap;

use streamspace_ledger::TransactionId;

use crate::message::{License, Message, Signed};

/// A license this service issued, as signed.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub(crate) license: License,
    pub(crate) signed: Signed,
}

impl Held {
    pub(crate) fn new(signed: Signed) -> Option<Self> {
        match &signed.message {
            Message::License(l) => Some(Self {
                license: l.clone(),
                signed,
            }),
            _ => None,
        }
    }
}

/// The key service's state.
#[derive(Debug, Default)]
pub(crate) struct State {
    licenses: HashMap<TransactionId, Held>,
    revoked: HashMap<TransactionId, Signed>,
    devices: HashMap<TransactionId, Vec<[u8; 32]>>,
}

impl State {
    pub(crate) fn license(&self, payment: &TransactionId) -> Option<&Held> {
        self.licenses.get(payment)
    }

    pub(crate) fn revocation(&self, payment: &TransactionId) -> Option<&Signed> {
        self.revoked.get(payment)
    }

    pub(crate) fn devices(&self, payment: &TransactionId) -> &[[u8; 32]] {
        self.devices.get(payment).map_or(&[], Vec::as_slice)
    }

    /// Records a license issued.
    pub(crate) fn issued(&mut self, held: Held) {
        self.licenses.entry(held.license.payment).or_insert(held);
    }

    /// Records a revocation.
    pub(crate) fn revoked(&mut self, payment: TransactionId, revocation: Signed) {
        self.revoked.entry(payment).or_insert(revocation);
    }

    /// Records a resale at once: the old license revoked, the new one issued.
    pub(crate) fn resold(&mut self, old: TransactionId, revocation: Signed, new: Held) {
        self.revoked(old, revocation);
        self.issued(new);
    }

    /// Records a device key (X25519) the content key was released to.
    pub(crate) fn add_device(&mut self, payment: TransactionId, device: [u8; 32]) {
        let d = self.devices.entry(payment).or_default();
        if !d.contains(&device) {
            d.push(device);
        }
    }
}
