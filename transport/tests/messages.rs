//! The exchange protocol's messages and the allowlist encoding: round trips and bad input.

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use cid::Cid;
use libp2p::identity::{Keypair, ed25519};
use proptest::prelude::*;
use streamspace_shard::block::{DAG_PB, RAW, cid_of};
use streamspace_transport::allowlist::{AllowlistError, SignedAllowlist};
use streamspace_transport::message::{
    MAX_WANT, MessageError, RefusalReason, Request, Response, Tier,
};

fn cid(seed: u64, v1: bool) -> Cid {
    let data = seed.to_le_bytes();
    if v1 {
        cid_of(cid::Version::V1, RAW, &data)
    } else {
        cid_of(cid::Version::V0, DAG_PB, &data)
    }
}

fn cids() -> impl Strategy<Value = Vec<Cid>> {
    prop::collection::vec((any::<u64>(), any::<bool>()), 0..MAX_WANT)
        .prop_map(|v| v.into_iter().map(|(s, v1)| cid(s, v1)).collect())
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (prop::option::of(any::<u64>()), cids()).prop_map(|(root, cids)| Request::Want {
            root: root.map(|r| cid(r, true)),
            cids,
        }),
        (prop::option::of(any::<u64>()), cids()).prop_map(|(root, cids)| Request::Have {
            root: root.map(|r| cid(r, false)),
            cids,
        }),
        Just(Request::Status),
        prop::collection::vec(any::<u8>(), 0..1024).prop_map(|d| Request::Payment {
            data: Bytes::from(d)
        }),
        cids().prop_map(|cids| Request::Cancel { cids }),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (
            prop::collection::vec(
                (any::<u64>(), prop::collection::vec(any::<u8>(), 0..512)),
                0..8
            ),
            cids(),
            cids(),
            cids()
        )
            .prop_map(|(blocks, missing, deferred, cancelled)| Response::Blocks {
                blocks: blocks
                    .into_iter()
                    .map(|(s, d)| (cid(s, true), Bytes::from(d)))
                    .collect(),
                missing,
                deferred,
                cancelled,
            }),
        prop::collection::vec(any::<bool>(), 0..MAX_WANT).prop_map(|have| Response::Haves { have }),
        (any::<bool>(), any::<u64>(), cids()).prop_map(|(t1, capacity, roots)| Response::Status {
            tier: if t1 { Tier::Tier1 } else { Tier::Edge },
            capacity,
            roots,
        }),
        Just(Response::Accepted),
        (0..3u8, any::<u64>()).prop_map(|(r, retry_after_ms)| Response::Refused {
            reason: [
                RefusalReason::Paused,
                RefusalReason::Refused,
                RefusalReason::Overloaded
            ][r as usize],
            retry_after_ms,
        }),
    ]
}

proptest! {
    #[test]
    fn requests_round_trip(r in request()) {
        prop_assert_eq!(Request::decode(r.encode()).unwrap(), r);
    }

    #[test]
    fn responses_round_trip(r in response()) {
        prop_assert_eq!(Response::decode(r.encode()).unwrap(), r.clone());
        // Written in pieces (blocks uncopied), the bytes are the same.
        prop_assert_eq!(r.encode_parts().concat(), r.encode().to_vec());
    }

    #[test]
    fn every_truncation_of_a_message_is_an_error(r in response(), cut in any::<prop::sample::Index>()) {
        let b = r.encode();
        let at = cut.index(b.len());
        prop_assert!(Response::decode(b.slice(..at)).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..600)) {
        let b = Bytes::from(b);
        let _ = Request::decode(b.clone());
        let _ = Response::decode(b.clone());
        let _ = SignedAllowlist::decode(&b);
    }
}

#[test]
fn bad_messages_say_what_and_where() {
    let e = |b: &'static [u8]| Request::decode(Bytes::from_static(b)).unwrap_err();
    assert_eq!(
        e(&[0x09]),
        MessageError::Tag {
            offset: 0,
            what: "request",
            tag: 9
        }
    );
    assert_eq!(
        e(&[0x01, 0x02]),
        MessageError::Tag {
            offset: 1,
            what: "root flag",
            tag: 2
        }
    );
    assert!(matches!(
        e(&[0x02, 0x00, 0x41]),
        MessageError::TooLong {
            offset: 2,
            what: "CID count",
            len: 65,
            ..
        }
    ));
    assert!(matches!(
        e(&[0x02, 0x01, 0x03, 1, 2, 3]),
        MessageError::Cid { offset: 3, .. }
    ));
    assert_eq!(e(&[0x03, 0x00]), MessageError::Trailing { extra: 1 });
    // A non-minimal varint (0 encoded in two bytes).
    assert_eq!(
        e(&[0x02, 0x00, 0x80, 0x00]),
        MessageError::Varint { offset: 2 }
    );
    assert!(matches!(
        e(&[0x02, 0x00, 0x80]),
        MessageError::Truncated { offset: 2, .. }
    ));
    // Found by the fuzzer: a CID whose codec varint carries bits past the 64th.
    assert!(matches!(
        e(&[
            0x01, 0x01, 0x0d, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xf3, 0xff, 0x23,
            0x00, 0x00, 0x00
        ]),
        MessageError::Cid { offset: 3, .. }
    ));
    // A block longer than any block may be.
    let c = cid(1, true).to_bytes();
    let mut b = vec![0x81, 0x01, c.len() as u8];
    b.extend_from_slice(&c);
    b.extend_from_slice(&[0xff, 0xff, 0xff, 0x7f]);
    assert!(matches!(
        Response::decode(Bytes::from(b)).unwrap_err(),
        MessageError::TooLong {
            what: "block length",
            ..
        }
    ));
    // Found by the fuzzer: a ten-byte varint whose last byte carries bits beyond the 64th.
    assert_eq!(
        Response::decode(Bytes::from_static(&[
            0x83, 0x01, 0xf6, 0xbb, 0xc7, 0xff, 0xff, 0xff, 0xff, 0xff, 0x83, 0x2f, 0x00
        ]))
        .unwrap_err(),
        MessageError::Varint { offset: 2 }
    );
    // Set padding bits in a have bitmap.
    assert!(Response::decode(Bytes::from_static(&[0x82, 0x01, 0x03])).is_err());
    assert!(Response::decode(Bytes::from_static(&[0x83, 0x07, 0x00, 0x00])).is_err());
}

#[test]
fn allowlists_verify_only_as_signed() {
    let operator = ed25519::Keypair::generate();
    let peers: Vec<_> = (0..5)
        .map(|_| Keypair::generate_ed25519().public().to_peer_id())
        .collect();
    let expires = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let list = SignedAllowlist::sign(&operator, "studio", expires, peers.clone());
    let bytes = list.encode();
    let back = SignedAllowlist::decode(&bytes).unwrap();
    assert_eq!(back, list);
    let before = expires - Duration::from_secs(1);
    back.verify(&operator.public(), "studio", before).unwrap();
    assert_eq!(
        back.verify(&operator.public(), "studio", expires),
        Err(AllowlistError::Expired)
    );
    assert_eq!(
        back.verify(&operator.public(), "other", before),
        Err(AllowlistError::WrongNetwork("studio".into()))
    );
    assert_eq!(
        back.verify(&ed25519::Keypair::generate().public(), "studio", before),
        Err(AllowlistError::WrongOperator)
    );
    // Any flipped bit in the signed part breaks the signature or the layout.
    for i in 24..bytes.len() - 96 {
        let mut b = bytes.to_vec();
        b[i] ^= 1;
        match SignedAllowlist::decode(&b) {
            Ok(l) => assert!(l.verify(&operator.public(), "studio", before).is_err()),
            Err(AllowlistError::Malformed { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    for n in 0..bytes.len() {
        assert!(SignedAllowlist::decode(&bytes[..n]).is_err());
    }
    let mut long = bytes.to_vec();
    long.push(0);
    assert!(SignedAllowlist::decode(&long).is_err());
    assert!(SignedAllowlist::decode(b"streamspace-allowlist-v2").is_err());
    // Found by the fuzzer: an expiry past what the platform's clock can hold.
    let mut far = b"streamspace-allowlist-v1\x00".to_vec();
    far.extend_from_slice(&[0xff; 8]);
    assert_eq!(
        SignedAllowlist::decode(&far),
        Err(AllowlistError::Malformed {
            offset: 25,
            what: "expiry out of range"
        })
    );
}
