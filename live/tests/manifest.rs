//! Live manifests: round trips, and every attack on a viewer's verifier refused and counted
//! while the honest window is kept.

use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;
use streamspace_live::{
    LiveSegment, Manifest, ManifestError, Segment, SignedManifest, StreamId, Verifier,
    verify_segment,
};

fn cid(n: u64) -> cid::Cid {
    let digest = sha2_digest(&n.to_be_bytes());
    cid::Cid::new_v1(
        0x55,
        multihash::Multihash::<64>::wrap(0x12, &digest).expect("digest"),
    )
}

fn sha2_digest(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

fn publisher() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

fn stream() -> StreamId {
    StreamId::new("news", &publisher().verifying_key()).expect("stream")
}

/// The honest manifest number `seq`: the window of the newest `w` segments up to `seq`.
fn honest(seq: u64, w: u64) -> Manifest {
    let first = (seq + 1).saturating_sub(w);
    Manifest {
        stream: stream(),
        seq,
        first,
        segments: (first..=seq)
            .map(|n| Segment {
                cid: cid(n),
                duration_ms: 2000,
            })
            .collect(),
        epoch_len: 4,
        key_epoch: seq / 4,
        encrypted: false,
        ended: false,
    }
}

fn signed(m: &Manifest) -> Vec<u8> {
    m.sign(&publisher()).expect("sign").encode().to_vec()
}

fn window(v: &Verifier) -> Vec<u64> {
    v.window().map(|s| s.seq).collect()
}

#[test]
fn honest_manifests_slide_the_window_and_end_the_playlist() {
    let mut v = Verifier::new(stream());
    assert!(v.media_playlist(|s| format!("{}.ts", s.seq)).is_none());
    for seq in 0..8 {
        let u = v.accept(&signed(&honest(seq, 3))).expect("honest");
        assert_eq!(u.new_segments.len(), 1);
        assert_eq!(u.new_segments[0].seq, seq);
        assert_eq!(u.new_segments[0].epoch, seq / 4);
    }
    assert_eq!(window(&v), [5, 6, 7]);
    let p = v
        .media_playlist(|s| format!("{}.ts", s.seq))
        .expect("playlist");
    assert!(p.contains("#EXT-X-MEDIA-SEQUENCE:5\n"), "{p}");
    assert!(p.contains("#EXTINF:2.000,\n7.ts\n"), "{p}");
    assert!(!p.contains("ENDLIST"));
    // The end: the same window under the next number, flagged.
    let mut end = honest(7, 3);
    end.seq = 8;
    end.ended = true;
    v.accept(&signed(&end)).expect("end");
    let p = v
        .media_playlist(|s| format!("{}.ts", s.seq))
        .expect("playlist");
    assert!(p.ends_with("7.ts\n#EXT-X-ENDLIST\n"), "{p}");
    assert!(v.ended());
    // Nothing follows the end.
    assert!(matches!(
        v.accept(&signed(&honest(9, 3))),
        Err(ManifestError::AfterEnd { seq: 9 })
    ));
    assert_eq!(v.refusals().total(), 1);
}

#[test]
fn a_viewer_joining_late_gets_the_current_window() {
    let mut v = Verifier::new(stream());
    let u = v.accept(&signed(&honest(41, 6))).expect("late join");
    assert_eq!(u.new_segments.len(), 6);
    assert_eq!(window(&v), [36, 37, 38, 39, 40, 41]);
    // A manifest lost in gossip is skipped; the window still joins.
    v.accept(&signed(&honest(43, 6))).expect("joins");
    assert_eq!(window(&v), (38..=43).collect::<Vec<_>>());
}

#[test]
fn forged_manifests_are_refused_and_counted() {
    let mut v = Verifier::new(stream());
    v.accept(&signed(&honest(0, 3))).expect("honest");
    // A body changed after signing: the segment replaced by the attacker's.
    let good = honest(1, 3).sign(&publisher()).expect("sign");
    let mut evil = honest(1, 3);
    evil.segments[1].cid = cid(666);
    let sig: [u8; 64] = {
        // The honest signature (the encoding's last 64 bytes) over another body.
        let mut s = [0u8; 64];
        s.copy_from_slice(&good.encode()[good.encode().len() - 64..]);
        s
    };
    let forged = SignedManifest::from_parts(evil.clone(), sig).expect("parts");
    assert_eq!(v.accept(forged.encode()), Err(ManifestError::BadSignature));
    // Signed by another key, naming the publisher's stream.
    let mallory = SigningKey::from_bytes(&[9; 32]);
    let by_mallory = evil.sign(&mallory).expect("sign");
    assert_eq!(
        v.accept(by_mallory.encode()),
        Err(ManifestError::BadSignature)
    );
    // Naming mallory's own key for the publisher's stream name.
    let mut hers = evil.clone();
    hers.stream = StreamId::new("news", &mallory.verifying_key()).expect("id");
    assert_eq!(
        v.accept(hers.sign(&mallory).expect("sign").encode()),
        Err(ManifestError::NotPublisher)
    );
    // Another stream of the publisher.
    let mut other = honest(1, 3);
    other.stream = StreamId::new("sports", &publisher().verifying_key()).expect("id");
    assert!(matches!(
        v.accept(&signed(&other)),
        Err(ManifestError::WrongStream { .. })
    ));
    // Garbage.
    assert!(matches!(
        v.accept(b"\x01\x02garbage"),
        Err(ManifestError::Malformed(_))
    ));
    let r = v.refusals();
    assert_eq!(
        (r.forged, r.not_publisher, r.wrong_stream, r.malformed),
        (2, 1, 1, 1)
    );
    // The honest window is intact and the honest next manifest is taken.
    assert_eq!(window(&v), [0]);
    v.accept(good.encode()).expect("honest after attacks");
    assert_eq!(v.segment(1).map(|s| s.cid), Some(cid(1)));
}

#[test]
fn replayed_reordered_and_equivocating_manifests_are_refused() {
    let mut v = Verifier::new(stream());
    let m: Vec<Vec<u8>> = (0..4).map(|s| signed(&honest(s, 3))).collect();
    v.accept(&m[0]).expect("0");
    v.accept(&m[2]).expect("2 (1 lost)");
    assert_eq!(v.accept(&m[2]), Err(ManifestError::Replayed { seq: 2 }));
    assert_eq!(v.accept(&m[0]), Err(ManifestError::Replayed { seq: 0 }));
    assert_eq!(
        v.accept(&m[1]),
        Err(ManifestError::Reordered { seq: 1, last: 2 })
    );
    // The publisher's key signing two different manifests under one number.
    let mut twin = honest(2, 3);
    twin.segments[2].duration_ms = 1999;
    assert_eq!(
        v.accept(&signed(&twin)),
        Err(ManifestError::Equivocation { seq: 2 })
    );
    // A later manifest rewriting an accepted segment.
    let mut rewrite = honest(3, 3);
    rewrite.segments[0].cid = cid(777);
    assert_eq!(
        v.accept(&signed(&rewrite)),
        Err(ManifestError::Equivocation { seq: 3 })
    );
    // A later manifest shrinking the stream.
    let mut shrunk = honest(1, 2);
    shrunk.seq = 9;
    assert!(matches!(
        v.accept(&signed(&shrunk)),
        Err(ManifestError::Shrunk { .. })
    ));
    let r = v.refusals();
    assert_eq!(
        (r.replayed, r.reordered, r.equivocations, r.out_of_line),
        (2, 1, 2, 1)
    );
    v.accept(&m[3]).expect("honest 3");
    assert_eq!(window(&v), [1, 2, 3]);
}

#[test]
fn a_gap_in_sequence_numbers_is_refused_unless_skipped() {
    let mut v = Verifier::new(stream());
    v.accept(&signed(&honest(2, 3))).expect("2");
    // Segments 3..=6 never announced: the window starts at 7.
    let after_gap = signed(&honest(9, 3));
    assert_eq!(
        v.accept(&after_gap),
        Err(ManifestError::Gap {
            expected: 3,
            first: 7
        })
    );
    assert_eq!(v.refusals().gaps, 1);
    assert_eq!(window(&v), [0, 1, 2]);
    // The viewer chooses to skip it: the playlist says so.
    v.restart(&after_gap).expect("skipped");
    assert_eq!(window(&v), [7, 8, 9]);
    let p = v.media_playlist(|s| format!("{}.ts", s.seq)).expect("p");
    assert!(
        !p.contains("DISCONTINUITY"),
        "the window starts after the jump: {p}"
    );
    assert!(v.segment(7).expect("7").discontinuity);
    // A restart does not skip the other checks.
    assert_eq!(
        v.restart(&after_gap),
        Err(ManifestError::Replayed { seq: 9 })
    );
}

#[tokio::test]
async fn a_segment_whose_cid_does_not_match_its_manifest_is_refused() {
    let bytes = b"segment bytes".repeat(1000);
    let cid = streamspace_live::add_segment::<streamspace_shard::store::MemoryStore>(
        None,
        bytes.clone(),
        None,
    )
    .await
    .expect("cid");
    let seg = LiveSegment {
        seq: 4,
        cid,
        duration_ms: 2000,
        epoch: 1,
        discontinuity: false,
    };
    verify_segment(&seg, bytes.clone(), false)
        .await
        .expect("matches");
    let mut other = bytes;
    other[10] ^= 1;
    assert!(matches!(
        verify_segment(&seg, other, false).await,
        Err(ManifestError::SegmentMismatch { seq: 4, want, .. }) if want == cid
    ));
}

#[test]
fn the_format_refuses_what_it_does_not_define() {
    let mut m = honest(3, 3);
    m.key_epoch = 7;
    assert!(matches!(
        m.sign(&publisher()),
        Err(ManifestError::Malformed(_))
    ));
    let mut m = honest(3, 3);
    m.segments[0].duration_ms = 0;
    assert!(matches!(
        m.sign(&publisher()),
        Err(ManifestError::Malformed(_))
    ));
    let mut m = honest(3, 3);
    m.epoch_len = 0;
    assert!(matches!(
        m.sign(&publisher()),
        Err(ManifestError::Malformed(_))
    ));
    let mut m = honest(3, 3);
    m.segments.clear();
    assert!(matches!(
        m.sign(&publisher()),
        Err(ManifestError::Malformed(_))
    ));
    assert!(StreamId::new("no spaces", &publisher().verifying_key()).is_err());
    assert!(StreamId::new("", &publisher().verifying_key()).is_err());
    // A signature over another domain does not verify.
    let good = honest(0, 1).sign(&publisher()).expect("sign");
    let body_sig = publisher().sign(good.encode()).to_bytes();
    let odd = SignedManifest::from_parts(honest(0, 1), body_sig).expect("parts");
    assert_eq!(odd.verify_signature(), Err(ManifestError::BadSignature));
    // Trailing bytes are not the one spelling.
    let mut trailing = good.encode().to_vec();
    trailing.push(0);
    assert!(SignedManifest::decode(&trailing).is_err());
}

#[test]
fn stream_ids_read_back() {
    let s = stream();
    let text = s.to_string();
    assert!(text.starts_with("news."));
    assert_eq!(text.parse::<StreamId>().expect("parses"), s);
    assert!("news".parse::<StreamId>().is_err());
    assert!("news.00".parse::<StreamId>().is_err());
    assert!(s.publisher_peer().is_some());
    assert!(s.topic().ends_with(&text));
}

proptest! {
    #[test]
    fn manifests_round_trip(
        seq in any::<u64>(),
        first in 0u64..1 << 40,
        durations in proptest::collection::vec(1u32..=60_000, 0..=64),
        epoch_len in 1u32..1000,
        encrypted: bool,
        ended: bool,
        name in "[A-Za-z0-9_-]{1,64}",
    ) {
        let ended = ended || durations.is_empty();
        let segments: Vec<Segment> = durations
            .iter()
            .enumerate()
            .map(|(i, d)| Segment { cid: cid(first + i as u64), duration_ms: *d })
            .collect();
        let end = first + segments.len() as u64;
        let m = Manifest {
            stream: StreamId::new(&name, &publisher().verifying_key()).expect("id"),
            seq,
            first,
            key_epoch: if segments.is_empty() { 0 } else { (end - 1) / u64::from(epoch_len) },
            segments,
            epoch_len,
            encrypted,
            ended,
        };
        let s = m.sign(&publisher()).expect("sign");
        let back = SignedManifest::decode(s.encode()).expect("decode");
        prop_assert_eq!(back.manifest(), &m);
        prop_assert_eq!(back.encode(), s.encode());
        prop_assert!(back.verify_signature().is_ok());
        let mut v = Verifier::new(m.stream.clone());
        prop_assert!(v.accept(s.encode()).is_ok());
    }

    #[test]
    fn decoding_untrusted_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(s) = SignedManifest::decode(&bytes) {
            prop_assert_eq!(s.encode(), &bytes[..]);
        }
        let mut v = Verifier::new(stream());
        let _ = v.accept(&bytes);
    }
}
