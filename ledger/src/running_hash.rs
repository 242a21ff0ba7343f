//! The running hash of a consensus topic, version 3, exactly as Hedera's nodes compute it.
//!
//! The protobuf documentation of `topicRunningHash` lists the fields that are hashed; the node
//! hashes them as written by a Java `ObjectOutputStream` (`writeObject(previous);
//! writeLong(3); writeLong(payer shard) … writeInt(nanos); writeLong(sequence);
//! writeObject(SHA-384(message))`), so the SHA-384 preimage carries that stream's framing:
//!
//! ```text
//! AC ED 00 05                                      stream magic and version
//! 75 72 00 02 5B 42 AC F3 17 F8 06 08 54 E0 02 00 00 78 70   byte[] class descriptor
//! len(previous) as u32 BE, previous running hash  (48 zero bytes for a new topic)
//! 77 4C                                            block data, 76 bytes:
//!   3 (u64) | payer shard, realm, num (u64 each) | topic shard, realm, num (u64 each)
//!   | consensus seconds (u64) | consensus nanos (u32) | sequence number (u64)
//! 75 71 00 7E 00 00                                byte[] by back-reference to the descriptor
//! 00 00 00 30, SHA-384(message)                    48 bytes
//! ```
//!
//! all integers big-endian. The tests reproduce the vectors of Hedera's own test suite.

use sha2::{Digest, Sha384};

use crate::types::{AccountId, Timestamp, TopicId};

/// Running hash version this module computes.
pub const RUNNING_HASH_VERSION: i64 = 3;
/// Length of a running hash.
pub const RUNNING_HASH_LEN: usize = 48;

const STREAM_HEADER: [u8; 4] = [0xAC, 0xED, 0x00, 0x05];
const BYTE_ARRAY_CLASS: [u8; 19] = [
    0x75, 0x72, 0x00, 0x02, 0x5B, 0x42, 0xAC, 0xF3, 0x17, 0xF8, 0x06, 0x08, 0x54, 0xE0, 0x02, 0x00,
    0x00, 0x78, 0x70,
];
const BLOCK_DATA_76: [u8; 2] = [0x77, 0x4C];
const BYTE_ARRAY_BY_REFERENCE: [u8; 6] = [0x75, 0x71, 0x00, 0x7E, 0x00, 0x00];

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
    h.update(STREAM_HEADER);
    h.update(BYTE_ARRAY_CLASS);
    h.update((previous.len() as u32).to_be_bytes());
    h.update(previous);
    h.update(BLOCK_DATA_76);
    h.update(RUNNING_HASH_VERSION.to_be_bytes());
    for id in [payer.0, topic.0] {
        h.update(id.shard.to_be_bytes());
        h.update(id.realm.to_be_bytes());
        h.update(id.num.to_be_bytes());
    }
    h.update(consensus.secs.to_be_bytes());
    h.update(consensus.nanos.to_be_bytes());
    h.update(sequence.to_be_bytes());
    h.update(BYTE_ARRAY_BY_REFERENCE);
    h.update((RUNNING_HASH_LEN as u32).to_be_bytes());
    h.update(Sha384::digest(message));
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(shard: u64, realm: u64, num: u64) -> crate::types::EntityId {
        crate::types::EntityId { shard, realm, num }
    }

    /// The vectors of Hedera's `MerkleTopicTest.updateRunningHash`.
    #[test]
    fn hedera_vectors() {
        let h = next(
            &[0; 48],
            AccountId(id(10, 11, 12)),
            TopicId(id(0, 0, 0)),
            Timestamp { secs: 0, nanos: 0 },
            1,
            b"",
        );
        assert_eq!(
            hex::encode(h),
            "79200c525a751761dc25356d3dd01a34cf2a517e9c78e4b359ffd792f98f33f1ac1440dcd5e282abe73f6b265356218b"
        );
        let h = next(
            &[0; 48],
            AccountId(id(7, 8, 9)),
            TopicId(id(0, 0, 0)),
            Timestamp {
                secs: 1_577_401_723,
                nanos: 987_654_321,
            },
            2,
            b"",
        );
        assert_eq!(
            hex::encode(h),
            "7547461ccf9bc8b598006f84c86bedee16967ba661da6f0c59c33476f8010932969b85aae59aff067e01e0fac6d45bda"
        );
        let h = next(
            &[0; 2],
            AccountId(id(4, 5, 6)),
            TopicId(id(1, 2, 3)),
            Timestamp {
                secs: 1_577_401_723,
                nanos: 0,
            },
            1,
            b"message",
        );
        assert_eq!(
            hex::encode(h),
            "46d4ef0126b7be6c1c11ea854d5732a50aa0d7fb17b325c6977cec284c76814f969234d67c0b8cc414b9c84ff3e2bcb3"
        );
    }

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
