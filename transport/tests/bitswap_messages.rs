//! Bitswap messages: what is encoded for 1.2.0 decodes to the same message, and no byte
//! string makes the decoder panic; what it accepts re-encodes to a message it accepts again.

use bytes::Bytes;
use cid::{Cid, Version as CidVersion};
use proptest::prelude::*;
use streamspace_shard::block::{DAG_PB, RAW, cid_of};
use streamspace_transport::bitswap::message::{
    Entry, Message, Payload, Prefix, Presence, Version, WantType, Wantlist,
};

fn cid() -> impl Strategy<Value = Cid> {
    (proptest::collection::vec(any::<u8>(), 0..16), any::<bool>()).prop_map(|(seed, v0)| {
        if v0 {
            cid_of(CidVersion::V0, DAG_PB, &seed)
        } else {
            cid_of(CidVersion::V1, RAW, &seed)
        }
    })
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        cid(),
        any::<i32>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(cid, priority, cancel, have, send_dont_have)| Entry {
            cid,
            priority,
            cancel,
            want_type: if have {
                WantType::Have
            } else {
                WantType::Block
            },
            send_dont_have,
        })
}

fn payload() -> impl Strategy<Value = Payload> {
    proptest::collection::vec(any::<u8>(), 0..300).prop_map(|data| {
        let cid = cid_of(CidVersion::V1, RAW, &data);
        Payload {
            prefix: Prefix::of(&cid),
            data: Bytes::from(data),
        }
    })
}

fn message() -> impl Strategy<Value = Message> {
    (
        proptest::option::of((proptest::collection::vec(entry(), 0..6), any::<bool>())),
        proptest::collection::vec(payload(), 0..4),
        proptest::collection::vec((cid(), any::<bool>()), 0..6),
        0i32..i32::MAX,
    )
        .prop_map(|(wl, blocks, presences, pending_bytes)| Message {
            wantlist: wl.map(|(entries, full)| Wantlist { entries, full }),
            blocks,
            presences: presences
                .into_iter()
                .map(|(c, have)| {
                    (
                        c,
                        if have {
                            Presence::Have
                        } else {
                            Presence::DontHave
                        },
                    )
                })
                .collect(),
            pending_bytes,
        })
}

/// A wantlist that says nothing is not sent: it reads back as no wantlist.
fn normalised(mut m: Message) -> Message {
    if m.wantlist
        .as_ref()
        .is_some_and(|w| w.entries.is_empty() && !w.full)
    {
        m.wantlist = None;
    }
    m
}

proptest! {
    #[test]
    fn messages_round_trip_for_1_2(m in message()) {
        let wire = m.encode(Version::V1_2);
        let back = Message::decode(Bytes::from(wire)).expect("decodes");
        prop_assert_eq!(normalised(back), normalised(m));
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(m) = Message::decode(Bytes::from(b)) {
            let again = Message::decode(Bytes::from(m.encode(Version::V1_2)))
                .expect("what was accepted re-encodes to an accepted message");
            prop_assert_eq!(again, m);
        }
    }
}
