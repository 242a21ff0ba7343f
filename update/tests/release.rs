//! Release tickets and the streaming verifier: round trips, thresholds, strict decoding of
//! untrusted bytes.

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use streamspace_update::release::{
    DeviceView, Release, ReleaseError, SignedRelease, Stage, WrappedKey,
};
use streamspace_update::verify::{ImageError, ImageVerifier};

mod common;
use common::{key, release, stage};

#[test]
fn thresholds_count_distinct_trusted_keys_only() {
    let (a, b, c) = (key(1), key(2), key(3));
    let trusted = [a.verifying_key().to_bytes(), b.verifying_key().to_bytes()];
    let r = release("1.2.0");
    let both = SignedRelease::decode(&r.sign(stage(), &[&a, &b]).unwrap().encode()).unwrap();
    assert_eq!(both.verify(&trusted, 2).unwrap(), &r);
    // The same key twice is one signature.
    let twice = SignedRelease::decode(&r.sign(stage(), &[&a, &a]).unwrap().encode()).unwrap();
    assert_eq!(
        twice.verify(&trusted, 2),
        Err(ReleaseError::Threshold {
            valid: 1,
            threshold: 2
        })
    );
    // An untrusted key counts for nothing: k - 1 authorised keys and one other fall short.
    let other = SignedRelease::decode(&r.sign(stage(), &[&a, &c]).unwrap().encode()).unwrap();
    assert_eq!(
        other.verify(&trusted, 2),
        Err(ReleaseError::Threshold {
            valid: 1,
            threshold: 2
        })
    );
    // Three of three: two authorised and one outsider, or the threshold from one key, fail.
    let d = key(4);
    let three = [trusted[0], trusted[1], d.verifying_key().to_bytes()];
    let short = SignedRelease::decode(&r.sign(stage(), &[&a, &b, &c]).unwrap().encode()).unwrap();
    assert!(matches!(
        short.verify(&three, 3),
        Err(ReleaseError::Threshold { valid: 2, .. })
    ));
    let one = SignedRelease::decode(&r.sign(stage(), &[&d, &d, &d]).unwrap().encode()).unwrap();
    assert!(matches!(
        one.verify(&three, 3),
        Err(ReleaseError::Threshold { valid: 1, .. })
    ));
    let all = SignedRelease::decode(&r.sign(stage(), &[&a, &b, &d]).unwrap().encode()).unwrap();
    assert_eq!(all.verify(&three, 3).unwrap(), &r);
    assert!(both.verify(&trusted, 0).is_err());
    // A signature over another body does not transfer.
    let mut wire = r.sign(stage(), &[&a, &b]).unwrap().encode();
    let body_at = 7 + 5; // inside the product name
    wire[body_at] ^= 1;
    let tampered = SignedRelease::decode(&wire).unwrap();
    assert!(tampered.verify(&trusted, 1).is_err());
}

fn device<'a>(installed: &'a str, product: &'a str, channel: &'a str) -> DeviceView<'a> {
    DeviceView {
        product,
        channel,
        installed,
        device_id: b"dev-1",
        now: 1_500,
        newest_issued: 0,
    }
}

#[test]
fn devices_refuse_rollback_replay_and_other_products() {
    let a = key(1);
    let trusted = [a.verifying_key().to_bytes()];
    let s =
        SignedRelease::decode(&release("1.2.0").sign(stage(), &[&a]).unwrap().encode()).unwrap();
    let fw = "thermostat-fw";
    assert!(
        s.verify_for(&trusted, 1, &device("1.1.5", fw, "stable"))
            .is_ok()
    );
    assert!(matches!(
        s.verify_for(&trusted, 1, &device("1.2.0", fw, "stable")),
        Err(ReleaseError::Rollback { .. })
    ));
    assert!(matches!(
        s.verify_for(&trusted, 1, &device("1.3.0-beta.1", fw, "stable")),
        Err(ReleaseError::Rollback { .. })
    ));
    assert!(matches!(
        s.verify_for(&trusted, 1, &device("0.9.0", fw, "stable")),
        Err(ReleaseError::TooOld { .. })
    ));
    assert!(matches!(
        s.verify_for(&trusted, 1, &device("1.0.0", "doorbell-fw", "stable")),
        Err(ReleaseError::WrongProduct { .. })
    ));
    assert!(matches!(
        s.verify_for(&trusted, 1, &device("1.0.0", fw, "beta")),
        Err(ReleaseError::WrongProduct { .. })
    ));
    let mut bad = release("not-a-version");
    assert!(matches!(
        bad.sign(stage(), &[&a]),
        Err(ReleaseError::Version(_))
    ));
    bad = release("1.0.0");
    bad.product = "x".repeat(65);
    assert!(matches!(
        bad.sign(stage(), &[&a]),
        Err(ReleaseError::TooLong { .. })
    ));
}

#[test]
fn expired_stale_halted_and_out_of_rollout_tickets_are_refused() {
    let a = key(1);
    let trusted = [a.verifying_key().to_bytes()];
    let r = release("1.2.0");
    let signed = |st: Stage| SignedRelease::decode(&r.sign(st, &[&a]).unwrap().encode()).unwrap();
    let fresh = signed(stage());
    let mut dev = device("1.1.0", "thermostat-fw", "stable");
    assert_eq!(fresh.verify_for(&trusted, 1, &dev).unwrap(), &r);
    // Frozen: the device's clock passed the expiry.
    dev.now = 2_000;
    assert_eq!(
        fresh.verify_for(&trusted, 1, &dev),
        Err(ReleaseError::Expired {
            expires: 2_000,
            now: 2_000
        })
    );
    // Replay of an older stage: the device has accepted a ticket issued at 1,200.
    dev.now = 1_500;
    dev.newest_issued = 1_200;
    assert_eq!(
        fresh.verify_for(&trusted, 1, &dev),
        Err(ReleaseError::Stale {
            issued: 1_000,
            newest: 1_200
        })
    );
    // Halted at 1,300: refused although fresh and signed.
    let halted = signed(Stage {
        rollout: 0,
        issued: 1_300,
        expires: 2_300,
    });
    assert!(matches!(
        halted.verify_for(&trusted, 1, &dev),
        Err(ReleaseError::Halted { .. })
    ));
    // The stage is signed: raising the rollout in the bytes breaks the signature.
    let mut wire = halted.encode();
    let body_len = usize::from(u16::from_be_bytes([wire[5], wire[6]]));
    // The body ends with the stage's varints: rollout (1 byte for 0), issued and expires (2
    // bytes each here).
    let at = 7 + body_len - 5;
    assert_eq!(wire[at], 0);
    wire[at] = 0x7f;
    let raised = SignedRelease::decode(&wire).unwrap();
    assert_eq!(raised.stage().rollout, 0x7f);
    assert!(matches!(
        raised.verify_for(&trusted, 1, &dev),
        Err(ReleaseError::Threshold { valid: 0, .. })
    ));
    // A rollout that does not reach this device.
    let bucket = r.rollout_bucket(b"dev-1");
    let partial = signed(Stage {
        rollout: bucket,
        issued: 1_300,
        expires: 2_300,
    });
    assert_eq!(
        partial.verify_for(&trusted, 1, &dev),
        Err(ReleaseError::NotInRollout {
            bucket,
            rollout: bucket
        })
    );
}

#[test]
fn malformed_tickets_are_typed_errors_with_offsets() {
    let a = key(1);
    let wire = release("1.2.0").sign(stage(), &[&a]).unwrap().encode();
    for cut in 0..wire.len() {
        assert!(SignedRelease::decode(&wire[..cut]).is_err(), "cut at {cut}");
    }
    assert!(matches!(
        SignedRelease::decode(&wire[..3]),
        Err(ReleaseError::Truncated { offset: 0, .. })
    ));
    let mut extra = wire.clone();
    extra.push(0);
    assert_eq!(
        SignedRelease::decode(&extra),
        Err(ReleaseError::Trailing { extra: 1 })
    );
    let mut magic = wire.clone();
    magic[0] = b'X';
    assert_eq!(SignedRelease::decode(&magic), Err(ReleaseError::Magic));
    let mut huge = wire.clone();
    huge[5..7].copy_from_slice(&u16::MAX.to_be_bytes());
    assert!(matches!(
        SignedRelease::decode(&huge),
        Err(ReleaseError::TooLong { .. })
    ));
}

#[test]
fn the_verifier_catches_short_long_and_altered_images() {
    let image = vec![5u8; 10_000];
    let digest: [u8; 32] = Sha256::digest(&image).into();
    let mut v = ImageVerifier::new(image.len() as u64, digest);
    v.update(&image[..9_999]).unwrap();
    assert_eq!(
        v.clone().finish(),
        Err(ImageError::TooShort {
            expected: 10_000,
            got: 9_999
        })
    );
    assert!(matches!(v.update(&[5, 5]), Err(ImageError::TooLong { .. })));
    v.update(&[5]).unwrap();
    v.finish().unwrap();
    let mut altered = image.clone();
    altered[0] = 6;
    let mut v = ImageVerifier::new(image.len() as u64, digest);
    v.update(&altered).unwrap();
    assert_eq!(v.finish(), Err(ImageError::Digest));
}

fn arb_release() -> impl Strategy<Value = Release> {
    (
        "[a-z-]{1,64}",
        (0u64..100, 0u64..100, 0u64..100),
        "[a-z]{1,32}",
        proptest::collection::vec(any::<u8>(), 0..96),
        any::<u64>(),
        any::<[u8; 32]>(),
        proptest::option::of((0u64..10, 0u64..10)),
        proptest::collection::vec(("[a-z]{1,64}", any::<[u8; 32]>()), 0..4),
    )
        .prop_map(
            |(product, (ma, mi, pa), channel, image, size, sha256, min, keys)| Release {
                product,
                version: format!("{ma}.{mi}.{pa}"),
                channel,
                image,
                size,
                sha256,
                min_version: min.map(|(a, b)| format!("{a}.{b}.0")),
                keys: keys
                    .into_iter()
                    .map(|(group, k)| WrappedKey {
                        group,
                        encapped: k.to_vec(),
                        sealed: [k, k].concat(),
                    })
                    .collect(),
            },
        )
}

proptest! {
    #[test]
    fn tickets_round_trip(r in arb_release(), n in 1usize..4, rollout in any::<u16>(), issued in any::<u64>(), expires in any::<u64>()) {
        let keys: Vec<SigningKey> = (1..=n as u8).map(key).collect();
        let refs: Vec<&SigningKey> = keys.iter().collect();
        let trusted: Vec<[u8; 32]> = keys.iter().map(|k| k.verifying_key().to_bytes()).collect();
        let st = Stage { rollout: rollout.min(10_000), issued, expires };
        let wire = r.sign(st, &refs).unwrap().encode();
        let back = SignedRelease::decode(&wire).unwrap();
        prop_assert_eq!(back.encode(), wire);
        prop_assert_eq!(back.stage(), &st);
        prop_assert_eq!(back.verify(&trusted, n).unwrap(), &r);
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = SignedRelease::decode(&bytes);
        let mut with_magic = b"SSUR\x01".to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = SignedRelease::decode(&with_magic);
    }

    #[test]
    fn rollout_buckets_are_stable_and_monotone(id in proptest::collection::vec(any::<u8>(), 0..32), a in 0u16..=10_000, b in 0u16..=10_000) {
        let r = release("1.0.0");
        let (lo, hi) = (a.min(b), a.max(b));
        prop_assert_eq!(r.rollout_bucket(&id), r.rollout_bucket(&id));
        prop_assert!(!r.in_rollout(&id, lo) || r.in_rollout(&id, hi));
        prop_assert!(r.in_rollout(&id, 10_000));
        prop_assert!(!r.in_rollout(&id, 0));
    }
}
