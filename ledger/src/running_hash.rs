//! The running hash of a consensus topic, version 3, as Hedera computes it.
//!
//! After each message, the topic's running hash becomes
//!
//! ```text
//! SHA-384( previous running hash (48 bytes)
//!        || 3                                   (running hash version, i64 big-endian)
//!        || payer shard || payer realm || payer num          (i64 big-endian each)
//!        || topic shard || topic realm || topic num          (i64 big-endian each)
//!        || consensus seconds (i64 BE) || consensus nanos (i32 BE)
//!        || sequence number (i64 BE)
//!        || SHA-384(message) )
//! ```
//!
//! starting from 48 zero bytes. Anyone holding the messages can recompute the chain and check
//! it against the hash in a receipt.

use sha2::{Digest, Sha384};

use crate::types::{AccountId, Timestamp, TopicId};

/// Running hash version this module computes.
pub const RUNNING_HASH_VERSION: i64 = 3;
/// Length of a running hash.
pub const RUNNING_HASH_LEN: usize = 48;

/// The running hash after `message`.
pub fn next(
    previous: &[u8],
    payer: AccountId,
    topic: TopicId,
    consensus: Timestamp,
    sequence: u64,
    message: &[u8],
) -> [u8; RUNNING_HASH_LEN] {
    let mut h = Sha384::new();
    h.update(previous);
    h.update(RUNNING_HASH_VERSION.to_be_bytes());
    for id in [payer.0, topic.0] {
        h.update((id.shard as i64).to_be_bytes());
        h.update((id.realm as i64).to_be_bytes());
        h.update((id.num as i64).to_be_bytes());
    }
    h.update(consensus.secs.to_be_bytes());
    h.update((consensus.nanos as i32).to_be_bytes());
    h.update((sequence as i64).to_be_bytes());
    h.update(Sha384::digest(message));
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_depends_on_every_field() {
        let base = next(
            &[0; 48],
            AccountId::new(2),
            TopicId::new(1001),
            Timestamp { secs: 1, nanos: 2 },
            1,
            b"m",
        );
        let variants = [
            next(
                &[1; 48],
                AccountId::new(2),
                TopicId::new(1001),
                Timestamp { secs: 1, nanos: 2 },
                1,
                b"m",
            ),
            next(
                &[0; 48],
                AccountId::new(3),
                TopicId::new(1001),
                Timestamp { secs: 1, nanos: 2 },
                1,
                b"m",
            ),
            next(
                &[0; 48],
                AccountId::new(2),
                TopicId::new(1002),
                Timestamp { secs: 1, nanos: 2 },
                1,
                b"m",
            ),
            next(
                &[0; 48],
                AccountId::new(2),
                TopicId::new(1001),
                Timestamp { secs: 1, nanos: 3 },
                1,
                b"m",
            ),
            next(
                &[0; 48],
                AccountId::new(2),
                TopicId::new(1001),
                Timestamp { secs: 1, nanos: 2 },
                2,
                b"m",
            ),
            next(
                &[0; 48],
                AccountId::new(2),
                TopicId::new(1001),
                Timestamp { secs: 1, nanos: 2 },
                1,
                b"n",
            ),
        ];
        for v in variants {
            assert_ne!(v, base);
        }
    }
}
