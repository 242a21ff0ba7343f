//! What a key service knows of its own licenses: every license it issued, every revocation,
//! and the device keys each license's content key was released to — in memory, and written
//! through to one redb file when the service has one, each change committed before the
//! service answers.

use std::collections::HashMap;
use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};
use streamspace_ledger::{AccountId, EntityId, PublicKey, Timestamp, TransactionId};

use crate::message::{License, Message, Signed};

/// Payment → the license issued for it, as signed.
const LICENSES: TableDefinition<'static, &[u8], &[u8]> = TableDefinition::new("licenses");
/// Payment → the revocation of its license, as signed.
const REVOKED: TableDefinition<'static, &[u8], &[u8]> = TableDefinition::new("revoked");
/// Payment → the device keys (32 bytes each) its content key was released to.
const DEVICES: TableDefinition<'static, &[u8], &[u8]> = TableDefinition::new("devices");
/// "service" → the public key of the service the file belongs to.
const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("meta");

/// The key service's store failed, or holds what it should not.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The database failed.
    #[error("key service store: {0}")]
    Database(String),
    /// The file belongs to another key service.
    #[error("the key service store belongs to another service key")]
    OtherService,
    /// A record that does not decode or is not signed by this service.
    #[error("key service store: corrupt {0} record")]
    Corrupt(&'static str),
}

fn db<E: std::fmt::Display>(e: E) -> StateError {
    StateError::Database(e.to_string())
}

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
#[derive(Default)]
pub(crate) struct State {
    licenses: HashMap<TransactionId, Held>,
    revoked: HashMap<TransactionId, Signed>,
    devices: HashMap<TransactionId, Vec<[u8; 32]>>,
    db: Option<Database>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("licenses", &self.licenses.len())
            .field("revoked", &self.revoked.len())
            .field("persistent", &self.db.is_some())
            .finish()
    }
}

fn own(bytes: &[u8], service: &PublicKey, what: &'static str) -> Result<Signed, StateError> {
    Signed::decode_verified(bytes)
        .ok()
        .filter(|s| s.signer == *service)
        .ok_or(StateError::Corrupt(what))
}

/// The payment a key of [`TransactionId::to_bytes`] names.
fn payment_from(b: &[u8]) -> Option<TransactionId> {
    let b: &[u8; 36] = b.try_into().ok()?;
    let u = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap_or_default());
    Some(TransactionId {
        payer: AccountId(EntityId {
            shard: u(0),
            realm: u(8),
            num: u(16),
        }),
        valid_start: Timestamp {
            secs: i64::from_be_bytes(b[24..32].try_into().ok()?),
            nanos: u32::from_be_bytes(b[32..36].try_into().ok()?),
        },
    })
}

impl State {
    /// Opens (or creates) the store at `path` for the service `service`, and loads it.
    pub(crate) fn open(path: &Path, service: &PublicKey) -> Result<Self, StateError> {
        let database = Database::create(path).map_err(db)?;
        let txn = database.begin_write().map_err(db)?;
        {
            let mut meta = txn.open_table(META).map_err(db)?;
            let found = meta.get("service").map_err(db)?.map(|v| v.value().to_vec());
            match found {
                Some(k) if k != service.0 => return Err(StateError::OtherService),
                Some(_) => {}
                None => {
                    meta.insert("service", service.0.as_slice()).map_err(db)?;
                }
            }
            txn.open_table(LICENSES).map_err(db)?;
            txn.open_table(REVOKED).map_err(db)?;
            txn.open_table(DEVICES).map_err(db)?;
        }
        txn.commit().map_err(db)?;

        let mut state = Self::default();
        let txn = database.begin_read().map_err(db)?;
        for row in txn.open_table(LICENSES).map_err(db)?.iter().map_err(db)? {
            let (_, v) = row.map_err(db)?;
            let held = Held::new(own(v.value(), service, "license")?)
                .ok_or(StateError::Corrupt("license"))?;
            state.licenses.insert(held.license.payment, held);
        }
        for row in txn.open_table(REVOKED).map_err(db)?.iter().map_err(db)? {
            let (_, v) = row.map_err(db)?;
            let signed = own(v.value(), service, "revocation")?;
            let Message::Revoke { payment, .. } = signed.message else {
                return Err(StateError::Corrupt("revocation"));
            };
            state.revoked.insert(payment, signed);
        }
        for row in txn.open_table(DEVICES).map_err(db)?.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            let payment = payment_from(k.value()).ok_or(StateError::Corrupt("device"))?;
            let keys = v.value();
            if keys.len() % 32 != 0 {
                return Err(StateError::Corrupt("device"));
            }
            let keys = keys
                .chunks_exact(32)
                .map(|c| {
                    let mut k = [0u8; 32];
                    k.copy_from_slice(c);
                    k
                })
                .collect();
            state.devices.insert(payment, keys);
        }
        drop(txn);
        state.db = Some(database);
        Ok(state)
    }

    pub(crate) fn license(&self, payment: &TransactionId) -> Option<&Held> {
        self.licenses.get(payment)
    }

    pub(crate) fn revocation(&self, payment: &TransactionId) -> Option<&Signed> {
        self.revoked.get(payment)
    }

    pub(crate) fn devices(&self, payment: &TransactionId) -> &[[u8; 32]] {
        self.devices.get(payment).map_or(&[], Vec::as_slice)
    }

    /// Writes in one transaction, committed before it returns; nothing without a store.
    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let Some(database) = &self.db else {
            return Ok(());
        };
        let txn = database.begin_write().map_err(db)?;
        f(&txn)?;
        txn.commit().map_err(db)
    }

    fn put(
        txn: &redb::WriteTransaction,
        table: TableDefinition<'_, &[u8], &[u8]>,
        payment: &TransactionId,
        value: &[u8],
    ) -> Result<(), StateError> {
        txn.open_table(table)
            .map_err(db)?
            .insert(payment.to_bytes().as_slice(), value)
            .map_err(db)?;
        Ok(())
    }

    /// Records a license issued (a second record for one payment is ignored).
    pub(crate) fn issued(&mut self, held: Held) -> Result<(), StateError> {
        let payment = held.license.payment;
        if self.licenses.contains_key(&payment) {
            return Ok(());
        }
        self.write(|t| Self::put(t, LICENSES, &payment, &held.signed.encode()))?;
        self.licenses.insert(payment, held);
        Ok(())
    }

    /// Records a revocation (a second one for one license is ignored).
    pub(crate) fn revoked(
        &mut self,
        payment: TransactionId,
        revocation: Signed,
    ) -> Result<(), StateError> {
        if self.revoked.contains_key(&payment) {
            return Ok(());
        }
        self.write(|t| Self::put(t, REVOKED, &payment, &revocation.encode()))?;
        self.revoked.insert(payment, revocation);
        Ok(())
    }

    /// Records a resale at once, in one transaction: the old license revoked, the new one
    /// issued.
    pub(crate) fn resold(
        &mut self,
        old: TransactionId,
        revocation: Signed,
        new: Held,
    ) -> Result<(), StateError> {
        let payment = new.license.payment;
        self.write(|t| {
            Self::put(t, REVOKED, &old, &revocation.encode())?;
            Self::put(t, LICENSES, &payment, &new.signed.encode())
        })?;
        self.revoked.entry(old).or_insert(revocation);
        self.licenses.entry(payment).or_insert(new);
        Ok(())
    }

    /// Records a device key (X25519) the content key was released to.
    pub(crate) fn add_device(
        &mut self,
        payment: TransactionId,
        device: [u8; 32],
    ) -> Result<(), StateError> {
        let mut keys = self.devices(&payment).to_vec();
        if keys.contains(&device) {
            return Ok(());
        }
        keys.push(device);
        self.write(|t| Self::put(t, DEVICES, &payment, &keys.concat()))?;
        self.devices.insert(payment, keys);
        Ok(())
    }
}
