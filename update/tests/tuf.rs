//! TUF's attacks against the device's metadata check: arbitrary software, rollback, freeze,
//! mix-and-match and key compromise, plus staged rollouts and halts.

mod common;

use std::time::Duration;

use common::release_of as release;

use sha2::{Digest, Sha256};
use streamspace_update::release::ROLLOUT_ALL;
use streamspace_update::tuf::{Bundle, Lifetimes, Trust, TufError, Vendor, VendorKeys};

struct Setup {
    vendor: Vendor,
    trust: Trust,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn setup(lifetimes: Lifetimes) -> Setup {
    let vd = tempfile::tempdir().unwrap();
    let dd = tempfile::tempdir().unwrap();
    let keys = VendorKeys::generate();
    let vendor = Vendor::create(vd.path(), &keys.roles(), keys.ring(), lifetimes)
        .await
        .unwrap();
    let trust = Trust::new(vendor.trusted_root().unwrap(), dd.path().join("tuf"));
    Setup {
        vendor,
        trust,
        _dirs: (vd, dd),
    }
}

fn refused(r: Result<Vec<streamspace_update::tuf::Offer>, TufError>) -> String {
    match r {
        Err(TufError::Refused(e)) => e.to_string(),
        other => panic!("expected TUF to refuse, got {other:?}"),
    }
}

#[tokio::test]
async fn a_signed_release_is_accepted_with_its_rollout() {
    let mut s = setup(Lifetimes::default()).await;
    let b = s
        .vendor
        .release(release("1.1.0", b"image"), 1000)
        .await
        .unwrap();
    let offers = s.trust.check(&b).await.unwrap();
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].release.version, "1.1.0");
    assert_eq!(offers[0].stage.rollout, 1000);
    let b = s
        .vendor
        .set_rollout("thermostat-fw", "1.1.0", ROLLOUT_ALL)
        .await
        .unwrap();
    assert_eq!(
        s.trust.check(&b).await.unwrap()[0].stage.rollout,
        ROLLOUT_ALL
    );
    // Halted.
    let b = s
        .vendor
        .set_rollout("thermostat-fw", "1.1.0", 0)
        .await
        .unwrap();
    assert_eq!(s.trust.check(&b).await.unwrap()[0].stage.rollout, 0);
    // The bundle survives the wire.
    assert_eq!(Bundle::decode(&b.encode()).unwrap(), b);
}

#[tokio::test]
async fn arbitrary_software_is_refused() {
    let mut s = setup(Lifetimes::default()).await;
    let mut b = s
        .vendor
        .release(release("1.1.0", b"image"), ROLLOUT_ALL)
        .await
        .unwrap();
    // An attacker points the target at another image: the targets signature breaks.
    let targets = String::from_utf8(b.file("targets.json").unwrap().to_vec()).unwrap();
    let evil_hash = hex::encode(Sha256::digest(b"evil"));
    let good_hash = hex::encode(Sha256::digest(b"image"));
    assert!(targets.contains(&good_hash));
    b.set_file(
        "targets.json",
        targets.replace(&good_hash, &evil_hash).into_bytes(),
    );
    let why = refused(s.trust.check(&b).await);
    assert!(
        why.to_lowercase().contains("targets") || why.contains("hash"),
        "{why}"
    );
}

#[tokio::test]
async fn rollback_to_older_metadata_is_refused() {
    let mut s = setup(Lifetimes::default()).await;
    let old = s
        .vendor
        .release(release("1.1.0", b"one"), ROLLOUT_ALL)
        .await
        .unwrap();
    let new = s
        .vendor
        .release(release("1.2.0", b"two"), ROLLOUT_ALL)
        .await
        .unwrap();
    assert_eq!(s.trust.check(&new).await.unwrap().len(), 2);
    // Validly signed, but older than what the device has seen.
    let why = refused(s.trust.check(&old).await);
    assert!(why.contains("older") || why.contains("version"), "{why}");
    // The newest is still accepted.
    assert_eq!(s.trust.check(&new).await.unwrap().len(), 2);
}

#[tokio::test]
async fn frozen_metadata_is_refused() {
    let mut s = setup(Lifetimes {
        timestamp: Duration::ZERO,
        ..Lifetimes::default()
    })
    .await;
    let b = s
        .vendor
        .release(release("1.1.0", b"image"), ROLLOUT_ALL)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let why = refused(s.trust.check(&b).await);
    assert!(why.contains("xpired"), "{why}");
}

#[tokio::test]
async fn mixed_and_matched_metadata_is_refused() {
    let mut s = setup(Lifetimes::default()).await;
    let one = s
        .vendor
        .release(release("1.1.0", b"one"), 500)
        .await
        .unwrap();
    let two = s
        .vendor
        .set_rollout("thermostat-fw", "1.1.0", ROLLOUT_ALL)
        .await
        .unwrap();
    // The current timestamp and snapshot with the older targets.json.
    let mut mixed = two.clone();
    mixed.set_file("targets.json", one.file("targets.json").unwrap().to_vec());
    let _ = refused(s.trust.check(&mixed).await);
    assert_eq!(
        s.trust.check(&two).await.unwrap()[0].stage.rollout,
        ROLLOUT_ALL
    );
}

#[tokio::test]
async fn one_compromised_key_below_threshold_signs_nothing() {
    let mut s = setup(Lifetimes::default()).await;
    let b = s
        .vendor
        .release(release("1.1.0", b"image"), ROLLOUT_ALL)
        .await
        .unwrap();
    // targets.json as if signed by one of its two-of-three keys alone.
    let mut doc: serde_json::Value =
        serde_json::from_slice(b.file("targets.json").unwrap()).unwrap();
    let sigs = doc["signatures"].as_array_mut().unwrap();
    assert_eq!(sigs.len(), 3);
    sigs.truncate(1);
    let one_signature = serde_json::to_vec(&doc).unwrap();
    // TUF's role check (the one the loader runs on targets.json) wants two signatures.
    let root: tough::schema::Signed<tough::schema::Root> =
        serde_json::from_slice(&s.vendor.trusted_root().unwrap()).unwrap();
    let signed: tough::schema::Signed<tough::schema::Targets> =
        serde_json::from_slice(&one_signature).unwrap();
    let full: tough::schema::Signed<tough::schema::Targets> =
        serde_json::from_slice(b.file("targets.json").unwrap()).unwrap();
    assert!(root.signed.verify_role(&full).is_ok());
    let why = root.signed.verify_role(&signed).unwrap_err().to_string();
    assert!(
        why.contains("threshold") || why.contains("ignature"),
        "{why}"
    );
    // In a bundle it does not get that far: the snapshot pins targets.json's hash.
    let mut alone = b.clone();
    alone.set_file("targets.json", one_signature);
    let _ = refused(s.trust.check(&alone).await);
}

#[tokio::test]
async fn after_rotation_the_old_keys_sign_nothing_accepted() {
    let mut s = setup(Lifetimes::default()).await;
    let old_keys = VendorKeys::generate();
    // The repository's own keys are not at hand here: rotate from a repository made with
    // `old_keys`.
    let vd = tempfile::tempdir().unwrap();
    s.vendor = Vendor::create(
        vd.path(),
        &old_keys.roles(),
        old_keys.ring(),
        Lifetimes::default(),
    )
    .await
    .unwrap();
    s.trust = Trust::new(
        s.vendor.trusted_root().unwrap(),
        vd.path().join("device-tuf"),
    );
    let b = s
        .vendor
        .release(release("1.1.0", b"image"), ROLLOUT_ALL)
        .await
        .unwrap();
    s.trust.check(&b).await.unwrap();
    // Every key leaked: the vendor rotates all of them.
    let new_keys = VendorKeys::generate();
    let mut ring = new_keys.ring();
    ring.extend(&old_keys.ring());
    let rotated = s.vendor.rotate(&new_keys.roles(), ring).await.unwrap();
    assert!(rotated.file("2.root.json").is_some());
    let offers = s.trust.check(&rotated).await.unwrap();
    assert_eq!(offers[0].release.version, "1.1.0");
    let (keys, threshold) = s.trust.targets_keys().unwrap();
    assert_eq!(threshold, 2);
    assert!(
        !keys.contains(
            &old_keys.targets.keys[0]
                .signing_key()
                .verifying_key()
                .to_bytes()
        )
    );

    // The attacker, holding the old keys, builds a repository with a higher version.
    let ad = tempfile::tempdir().unwrap();
    let mut attacker = Vendor::create(
        ad.path(),
        &old_keys.roles(),
        old_keys.ring(),
        Lifetimes::default(),
    )
    .await
    .unwrap();
    let mut evil = attacker
        .release(release("9.9.9", b"evil"), ROLLOUT_ALL)
        .await
        .unwrap();
    for _ in 0..5 {
        evil = attacker.refresh().await.unwrap();
    }
    let _ = refused(s.trust.check(&evil).await);
    // Nor can it slip the chain back: the new root is kept in the device's datastore.
    let _ = refused(s.trust.check(&evil).await);
}

#[tokio::test]
async fn bundles_with_foreign_files_or_garbage_are_refused() {
    assert!(Bundle::decode(b"\x01\x0bevil.sh").is_err());
    let mut files = std::collections::BTreeMap::new();
    files.insert("../../etc/passwd".to_owned(), vec![1]);
    assert!(matches!(Bundle::new(files), Err(TufError::Bundle(_))));
    let mut files = std::collections::BTreeMap::new();
    files.insert("targets.json".to_owned(), vec![0; 70 * 1024]);
    assert!(matches!(Bundle::new(files), Err(TufError::Bundle(_))));
}
