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
    /// leave), and distinct from every id generated before in this process: a payer can submit
    /// at any rate without two of its transactions colliding as duplicates, and ledgers on
    /// clocks far apart (tests with their own clocks) do not disturb each other's ids.
    ///
    /// ```
    /// use streamspace_ledger::{AccountId, Timestamp, TransactionId};
    /// let now = Timestamp::now();
    /// let a = TransactionId::generate(AccountId::new(1001), now);
    /// let b = TransactionId::generate(AccountId::new(1001), now);
    /// assert_ne!(a, b);
    /// ```
    pub fn generate(payer: AccountId, now: Timestamp) -> Self {
        let want = i64::try_from(now.as_nanos() - 1_000_000_000).unwrap_or(i64::MAX - 1);
        let start = ISSUED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(want);
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

/// Valid starts handed out in this process, as runs of consecutive nanoseconds; at most
/// [`Issued::RUNS`] runs are kept, the least recently extended forgotten first (a clock that
/// has moved on never asks for them again).
static ISSUED: std::sync::Mutex<Issued> = std::sync::Mutex::new(Issued::new());

struct Issued {
    /// Run start → (run end, inclusive; when it was last used).
    runs: std::collections::BTreeMap<i64, (i64, u64)>,
    /// When used → run start, for forgetting the least recently used.
    used: std::collections::BTreeMap<u64, i64>,
    tick: u64,
}

impl Issued {
    const RUNS: usize = 4096;

    const fn new() -> Self {
        Self {
            runs: std::collections::BTreeMap::new(),
            used: std::collections::BTreeMap::new(),
            tick: 0,
        }
    }

    /// The smallest value at or after `want` not handed out yet, now handed out.
    fn take(&mut self, want: i64) -> i64 {
        // The run holding `want`, or the one ending just before it, is extended.
        let (start, end) = match self.runs.range(..=want).next_back() {
            Some((&s, &(e, used))) if e >= want.saturating_sub(1) => {
                self.used.remove(&used);
                (s, e.saturating_add(1).max(want))
            }
            _ => (want, want),
        };
        let mut end = end;
        // Runs the new end reaches join this one.
        while let Some((&s, &(e, used))) = self.runs.range(start.saturating_add(1)..).next() {
            if s > end {
                break;
            }
            self.runs.remove(&s);
            self.used.remove(&used);
            // Runs never overlap, so the one found starts exactly at `end`: skip past it.
            end = e.saturating_add(1);
        }
        self.tick += 1;
        self.runs.insert(start, (end, self.tick));
        self.used.insert(self.tick, start);
        while self.runs.len() > Self::RUNS {
            let Some((_, s)) = self.used.pop_first() else {
                break;
            };
            self.runs.remove(&s);
        }
        end
    }
}

#[cfg(test)]
mod issued_tests {
    use super::Issued;
    use proptest::prelude::*;

    /// Two ledgers' clocks ten minutes apart (a test that advanced its clock, another that did
    /// not) asking in turn: each clock's ids stay distinct. A single "last id" counter reset
    /// to each clock in turn and gave the same id twice, so a settlement's anchor once took
    /// its last transfer's id and was never sent.
    #[test]
    fn two_clocks_far_apart_interleaved_never_repeat() {
        use super::{AccountId, Timestamp, TransactionId};
        let payer = AccountId::new(1001);
        let a = Timestamp::from_nanos(1_000_000_000_000_000_000);
        let b = Timestamp::from_nanos(1_000_000_600_000_000_000);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            assert!(
                seen.insert(TransactionId::generate(payer, a)),
                "clock a repeated"
            );
            assert!(
                seen.insert(TransactionId::generate(payer, b)),
                "clock b repeated"
            );
        }
    }

    proptest! {
        /// Whatever is asked, in any order, no value is handed out twice, none before what
        /// was asked, and what was free is given as asked.
        #[test]
        fn values_are_unique_and_not_early(wants in proptest::collection::vec(0i64..64, 1..200)) {
            let mut issued = Issued::new();
            let mut seen = std::collections::BTreeSet::new();
            for w in wants {
                let v = issued.take(w);
                prop_assert!(v >= w);
                prop_assert!(seen.insert(v), "{} handed out twice", v);
                prop_assert!((w..v).all(|x| seen.contains(&x)), "{} skipped a free value", w);
            }
        }
    }
}
