//! Hedera's identifiers, timestamps and amounts.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Tinybars in one hbar.
pub const TINYBARS_PER_HBAR: i64 = 100_000_000;

/// A Hedera entity id `shard.realm.num` (accounts, topics, tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntityId {
    /// Shard number.
    pub shard: u64,
    /// Realm number.
    pub realm: u64,
    /// Entity number.
    pub num: u64,
}

impl EntityId {
    /// `0.0.num`.
    pub const fn new(num: u64) -> Self {
        Self {
            shard: 0,
            realm: 0,
            num,
        }
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.shard, self.realm, self.num)
    }
}

/// A string that is not `shard.realm.num`.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("invalid entity id {0:?}: expected shard.realm.num")]
pub struct ParseIdError(pub String);

impl FromStr for EntityId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseIdError(s.to_owned());
        let mut parts = s.split('.');
        let mut next = || -> Result<u64, ParseIdError> {
            parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())
        };
        let id = Self {
            shard: next()?,
            realm: next()?,
            num: next()?,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(id)
    }
}

macro_rules! entity {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub EntityId);

        impl $name {
            /// `0.0.num`.
            pub const fn new(num: u64) -> Self {
                Self(EntityId::new(num))
            }

            /// The entity number.
            pub const fn num(&self) -> u64 {
                self.0.num
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                EntityId::from_str(s).map(Self)
            }
        }
    };
}

entity!(
    /// An account.
    AccountId
);
entity!(
    /// A consensus topic.
    TopicId
);
entity!(
    /// A token class.
    TokenId
);

/// One NFT: a token class and a serial number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NftId {
    /// The token class.
    pub token: TokenId,
    /// The serial number (from 1).
    pub serial: u64,
}

impl fmt::Display for NftId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.serial, self.token)
    }
}

/// A consensus or valid-start time: seconds and nanoseconds since the Unix epoch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub secs: i64,
    /// Nanoseconds (0..1e9).
    pub nanos: u32,
}

impl Timestamp {
    /// From nanoseconds since the epoch.
    pub const fn from_nanos(n: i128) -> Self {
        Self {
            secs: n.div_euclid(1_000_000_000) as i64,
            nanos: n.rem_euclid(1_000_000_000) as u32,
        }
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(&self) -> i128 {
        self.secs as i128 * 1_000_000_000 + self.nanos as i128
    }

    /// The time now, from the system clock.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        }
    }

    /// This time plus `secs` seconds.
    pub const fn plus_secs(&self, secs: i64) -> Self {
        Self {
            secs: self.secs + secs,
            nanos: self.nanos,
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}", self.secs, self.nanos)
    }
}

/// A transaction id: the paying account and the valid start it chose.
///
/// Hedera refuses a second transaction with the same id, which is what makes a retried
/// submission safe: choose the id once, retry with the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TransactionId {
    /// The paying account.
    pub payer: AccountId,
    /// Start of the validity window.
    pub valid_start: Timestamp,
}

impl TransactionId {
    /// An id for `payer` starting one second before `now` (a margin for clock skew, as the SDKs
    /// leave), and distinct from every id generated before in this process from the same
    /// clock: the valid starts handed out increase by at least a nanosecond each time, so a
    /// payer can submit at any rate without two of its transactions colliding as duplicates.
    pub fn generate(payer: AccountId, now: Timestamp) -> Self {
        static LAST: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(i64::MIN);
        let want = i64::try_from(now.as_nanos() - 1_000_000_000).unwrap_or(i64::MAX - 1);
        let mut prev = LAST.load(std::sync::atomic::Ordering::Relaxed);
        let start = loop {
            // Ids from a clock far from this one (another ledger's test clock) do not hold
            // this one back: only a counter within a second ahead of `want` is followed.
            let next = if prev < want || prev - want > 1_000_000_000 {
                want
            } else {
                prev + 1
            };
            match LAST.compare_exchange_weak(
                prev,
                next,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            ) {
                Ok(_) => break next,
                Err(p) => prev = p,
            }
        };
        Self {
            payer,
            valid_start: Timestamp::from_nanos(i128::from(start)),
        }
    }

    /// Canonical bytes (for keys and deterministic hashing).
    pub fn to_bytes(&self) -> [u8; 36] {
        let mut out = [0u8; 36];
        out[..8].copy_from_slice(&self.payer.0.shard.to_be_bytes());
        out[8..16].copy_from_slice(&self.payer.0.realm.to_be_bytes());
        out[16..24].copy_from_slice(&self.payer.0.num.to_be_bytes());
        out[24..32].copy_from_slice(&self.valid_start.secs.to_be_bytes());
        out[32..36].copy_from_slice(&self.valid_start.nanos.to_be_bytes());
        out
    }
}

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.payer, self.valid_start)
    }
}
