//! The vendor over time: a repository reopened after a restart (mid-rollout), role keys held by
//! separate signers (the root keys offline), thresholds of distinct authorised keys, revoked
//! keys, and tickets that expire and carry the rollout to devices that check tickets alone.

mod common;

use std::sync::Arc;

use common::release_of as release;

use streamspace_update::release::{DeviceView, ROLLOUT_ALL, ReleaseError, SignedRelease, Stage};
use streamspace_update::tuf::{
    KeyRing, Lifetimes, Role, Trust, TufError, Vendor, VendorKey, VendorKeys,
};

const PRODUCT: &str = "thermostat-fw";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn view<'a>(installed: &'a str, id: &'a [u8], newest_issued: u64) -> DeviceView<'a> {
    DeviceView {
        product: PRODUCT,
        channel: "stable",
        installed,
        device_id: id,
        now: now(),
        newest_issued,
    }
}

#[tokio::test]
async fn a_vendor_restarted_mid_rollout_continues_and_devices_accept_its_next_release() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let keys = VendorKeys::generate();
    // One key file per role and key; the root keys go offline.
    let online = dir.path().join("online-keys");
    let offline = dir.path().join("offline-keys");
    keys.save(&online).unwrap();
    std::fs::create_dir_all(&offline).unwrap();
    for e in std::fs::read_dir(&online).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_owned();
        if name.starts_with("root-") {
            std::fs::rename(&p, offline.join(name)).unwrap();
        }
    }
    assert_eq!(KeyRing::load_dir(&online).unwrap().public_keys().len(), 5);

    let mut vendor = Vendor::create(
        &repo,
        &keys.roles(),
        KeyRing::load_dir(&offline).unwrap(),
        Lifetimes::default(),
    )
    .await
    .unwrap();
    // The root keys alone cannot publish: the online roles' signers are elsewhere.
    assert!(matches!(
        vendor.release(release("1.1.0", b"one"), 1000).await,
        Err(TufError::NotEnoughSigners {
            role: "targets",
            have: 0,
            threshold: 2
        })
    ));
    drop(vendor);
    let mut vendor = Vendor::open(&repo, KeyRing::load_dir(&online).unwrap()).unwrap();
    let device = Trust::new(vendor.trusted_root().unwrap(), dir.path().join("device"));
    let ten = vendor
        .release(release("1.1.0", b"one"), 1000)
        .await
        .unwrap();
    let before = vendor.version();
    assert_eq!(device.check(&ten).await.unwrap()[0].stage.rollout, 1000);

    // The vendor's process stops mid-rollout and starts again from its files.
    drop(vendor);
    let mut vendor = Vendor::open(&repo, KeyRing::load_dir(&online).unwrap()).unwrap();
    assert_eq!(vendor.version(), before);
    assert_eq!(vendor.rollout(PRODUCT, "1.1.0"), Some(1000));
    assert_eq!(vendor.roles(), keys.roles());
    // It raises the rollout: the device, which has seen version `before`, accepts it.
    let all = vendor
        .set_rollout(PRODUCT, "1.1.0", ROLLOUT_ALL)
        .await
        .unwrap();
    assert_eq!(all.claimed_version(), Some(before + 1));
    assert_eq!(
        device.check(&all).await.unwrap()[0].stage.rollout,
        ROLLOUT_ALL
    );
    // And its next release.
    drop(vendor);
    let mut vendor = Vendor::open(&repo, KeyRing::load_dir(&online).unwrap()).unwrap();
    let next = vendor.release(release("1.2.0", b"two"), 500).await.unwrap();
    let offers = device.check(&next).await.unwrap();
    assert_eq!(offers.len(), 2);
    assert!(
        offers
            .iter()
            .any(|o| o.release.version == "1.2.0" && o.stage.rollout == 500)
    );
    assert!(
        offers
            .iter()
            .any(|o| o.release.version == "1.1.0" && o.stage.rollout == ROLLOUT_ALL)
    );

    // Rotating needs the root keys, brought out for it.
    let mut rotated = keys.clone();
    rotated.timestamp.keys = vec![VendorKey::generate()];
    assert!(matches!(
        vendor
            .rotate(&rotated.roles(), KeyRing::load_dir(&online).unwrap())
            .await,
        Err(TufError::NotEnoughSigners { role: "root", .. })
    ));
    let mut ring = KeyRing::load_dir(&online).unwrap();
    ring.extend(&KeyRing::load_dir(&offline).unwrap());
    ring.add(Arc::new(rotated.timestamp.keys[0].clone()));
    let b = vendor.rotate(&rotated.roles(), ring).await.unwrap();
    assert_eq!(device.check(&b).await.unwrap().len(), 2);
    // A second repository is never created over the first.
    assert!(matches!(
        Vendor::create(&repo, &keys.roles(), keys.ring(), Lifetimes::default()).await,
        Err(TufError::State { .. })
    ));
}

#[tokio::test]
async fn a_threshold_takes_distinct_authorised_keys() {
    let dir = tempfile::tempdir().unwrap();
    let keys = VendorKeys::generate();
    let outsider = VendorKey::generate();
    let t1 = keys.targets.keys[0].clone();

    // The vendor refuses to publish with k - 1 authorised signers and an outsider, or with
    // one authorised key given twice.
    let mut ring = KeyRing::new();
    ring.add(Arc::new(keys.root.keys[0].clone()))
        .add(Arc::new(keys.root.keys[1].clone()))
        .add(Arc::new(t1.clone()))
        .add(Arc::new(outsider.clone()))
        .add(Arc::new(t1.clone()))
        .add(Arc::new(keys.snapshot.keys[0].clone()))
        .add(Arc::new(keys.timestamp.keys[0].clone()));
    let mut vendor = Vendor::create(
        dir.path().join("repo"),
        &keys.roles(),
        ring,
        Lifetimes::default(),
    )
    .await
    .unwrap();
    assert!(matches!(
        vendor.release(release("1.1.0", b"one"), ROLLOUT_ALL).await,
        Err(TufError::NotEnoughSigners {
            role: "targets",
            have: 1,
            threshold: 2
        })
    ));
    // A role whose threshold exceeds its distinct keys is refused at creation.
    let mut doubled = keys.roles();
    doubled.targets = Role {
        keys: vec![t1.signing_key().verifying_key().to_bytes(); 2],
        threshold: 2,
    };
    assert!(matches!(
        Vendor::create(
            dir.path().join("other"),
            &doubled,
            keys.ring(),
            Lifetimes::default()
        )
        .await,
        Err(TufError::Threshold {
            role: "targets",
            keys: 1,
            ..
        })
    ));

    // An attacker holding t1 and its own key signs targets.json with both (k = 2 signatures,
    // one authorised): the device's root refuses it.
    let mut stolen = VendorKeys::generate();
    stolen.targets.keys = vec![t1.clone(), outsider.clone()];
    let mut attacker = Vendor::create(
        dir.path().join("attacker"),
        &stolen.roles(),
        stolen.ring(),
        Lifetimes::default(),
    )
    .await
    .unwrap();
    let evil = attacker
        .release(release("9.0.0", b"evil"), ROLLOUT_ALL)
        .await
        .unwrap();
    let root: tough::schema::Signed<tough::schema::Root> =
        serde_json::from_slice(&vendor.trusted_root().unwrap()).unwrap();
    let targets: tough::schema::Signed<tough::schema::Targets> =
        serde_json::from_slice(evil.file("targets.json").unwrap()).unwrap();
    assert_eq!(targets.signatures.len(), 2);
    let why = root.signed.verify_role(&targets).unwrap_err().to_string();
    assert!(
        why.contains("threshold") || why.contains("ignature"),
        "{why}"
    );
    // The same signature of t1 twice: refused as a duplicate key.
    let mut doc: serde_json::Value =
        serde_json::from_slice(evil.file("targets.json").unwrap()).unwrap();
    let t1_id = hex::encode(t1.tuf_key().key_id().unwrap().as_ref());
    let sigs = doc["signatures"].as_array_mut().unwrap();
    sigs.retain(|s| s["keyid"] == t1_id.as_str());
    let again = sigs[0].clone();
    sigs.push(again);
    let twice: tough::schema::Signed<tough::schema::Targets> = serde_json::from_value(doc).unwrap();
    assert!(root.signed.verify_role(&twice).is_err());
    // The release ticket inside: one authorised key (twice, or with the outsider) is short.
    let ticket = targets.signed.targets.values().next().unwrap().custom["release"]
        .as_str()
        .unwrap();
    let ticket = SignedRelease::decode(&hex::decode(ticket).unwrap()).unwrap();
    let trusted: Vec<[u8; 32]> = keys.roles().targets.keys;
    assert!(matches!(
        ticket.verify(&trusted, 2),
        Err(ReleaseError::Threshold {
            valid: 1,
            threshold: 2
        })
    ));
    let r = release("9.0.0", b"evil");
    let st = *ticket.stage();
    let one_key = SignedRelease::decode(
        &r.sign(st, &[t1.signing_key(), t1.signing_key()])
            .unwrap()
            .encode(),
    )
    .unwrap();
    assert!(matches!(
        one_key.verify(&trusted, 2),
        Err(ReleaseError::Threshold { valid: 1, .. })
    ));
}

#[tokio::test]
async fn a_ticket_signed_by_a_revoked_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = VendorKeys::generate();
    let mut vendor = Vendor::create(
        dir.path().join("repo"),
        &keys.roles(),
        keys.ring(),
        Lifetimes::default(),
    )
    .await
    .unwrap();
    let trust = Trust::new(vendor.trusted_root().unwrap(), dir.path().join("device"));
    let b = vendor
        .release(release("1.1.0", b"one"), ROLLOUT_ALL)
        .await
        .unwrap();
    trust.check(&b).await.unwrap();
    // Two of the three targets keys leak; the attacker signs a ticket with them.
    let (t2, t3) = (keys.targets.keys[1].clone(), keys.targets.keys[2].clone());
    let evil = release("6.6.6", b"evil");
    let stage = Stage {
        rollout: ROLLOUT_ALL,
        issued: now(),
        expires: now() + 3600,
    };
    let forged = evil
        .sign(stage, &[t2.signing_key(), t3.signing_key()])
        .unwrap()
        .encode();
    let forged = SignedRelease::decode(&forged).unwrap();
    let (old_keys, threshold) = trust.targets_keys().unwrap();
    // Before the revocation a device checking tickets alone would take it.
    assert!(
        forged
            .verify_for(&old_keys, threshold, &view("1.1.0", b"mcu", 0))
            .is_ok()
    );

    // The vendor revokes both: targets is now t1 and two new keys.
    let mut next = keys.clone();
    next.targets.keys = vec![
        keys.targets.keys[0].clone(),
        VendorKey::generate(),
        VendorKey::generate(),
    ];
    let rotated = vendor.rotate(&next.roles(), next.ring()).await.unwrap();
    let offers = trust.check(&rotated).await.unwrap();
    assert_eq!(offers[0].release.version, "1.1.0");
    let (keys_now, threshold) = trust.targets_keys().unwrap();
    assert!(!keys_now.contains(&t2.signing_key().verifying_key().to_bytes()));
    assert_eq!(
        forged.verify_for(&keys_now, threshold, &view("1.1.0", b"mcu", 0)),
        Err(ReleaseError::Threshold {
            valid: 0,
            threshold: 2
        })
    );
    // The vendor's own tickets, re-signed with the new keys, still pass.
    let honest = SignedRelease::decode(&offers[0].ticket).unwrap();
    assert!(honest.verify(&keys_now, threshold).is_ok());
    assert!(honest.signers().all(|k| keys_now.contains(k)));
}

#[tokio::test]
async fn tickets_carry_the_rollout_and_a_halt_reaches_devices_checking_tickets_alone() {
    let dir = tempfile::tempdir().unwrap();
    let keys = VendorKeys::generate();
    let mut vendor = Vendor::create(
        dir.path().join("repo"),
        &keys.roles(),
        keys.ring(),
        Lifetimes::default(),
    )
    .await
    .unwrap();
    let trust = Trust::new(vendor.trusted_root().unwrap(), dir.path().join("gateway"));
    let (trusted, threshold) = trust.targets_keys().unwrap();
    let r = release("1.1.0", b"one");
    // Every device is in at 100%.
    let full = vendor.release(r.clone(), ROLLOUT_ALL).await.unwrap();
    let old = SignedRelease::decode(&trust.check(&full).await.unwrap()[0].ticket).unwrap();
    assert_eq!(old.stage().rollout, ROLLOUT_ALL);
    assert!(old.stage().expires > now());
    assert!(
        old.verify_for(&trusted, threshold, &view("1.0.0", b"mcu-1", 0))
            .is_ok()
    );
    // The vendor halts it (a second later, so the halt's issue time is later).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let halted = vendor.set_rollout(PRODUCT, "1.1.0", 0).await.unwrap();
    let halt = SignedRelease::decode(&trust.check(&halted).await.unwrap()[0].ticket).unwrap();
    assert!(matches!(
        halt.verify_for(&trusted, threshold, &view("1.0.0", b"mcu-1", 0)),
        Err(ReleaseError::Halted { .. })
    ));
    // A device that saw the halt refuses the older 100% ticket replayed to it.
    let newest = halt.stage().issued;
    assert!(matches!(
        old.verify_for(&trusted, threshold, &view("1.0.0", b"mcu-1", newest)),
        Err(ReleaseError::Stale { .. })
    ));
    // One that never saw it can be held on the old ticket only until it expires.
    let mut later = view("1.0.0", b"mcu-2", 0);
    later.now = old.stage().expires;
    assert!(matches!(
        old.verify_for(&trusted, threshold, &later),
        Err(ReleaseError::Expired { .. })
    ));
}

#[tokio::test]
async fn an_expired_ticket_is_refused_by_the_full_client_too() {
    let dir = tempfile::tempdir().unwrap();
    let keys = VendorKeys::generate();
    // Metadata valid for a day, but tickets (the timestamp's lifetime) for one second.
    let lifetimes = Lifetimes {
        timestamp: std::time::Duration::from_secs(1),
        ..Lifetimes::default()
    };
    let mut vendor = Vendor::create(
        dir.path().join("repo"),
        &keys.roles(),
        keys.ring(),
        lifetimes,
    )
    .await
    .unwrap();
    let trust = Trust::new(vendor.trusted_root().unwrap(), dir.path().join("device"));
    let b = vendor
        .release(release("1.1.0", b"one"), ROLLOUT_ALL)
        .await
        .unwrap();
    let ticket = SignedRelease::decode(&trust.check(&b).await.unwrap()[0].ticket).unwrap();
    assert_eq!(ticket.stage().expires, ticket.stage().issued + 1);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    // TUF refuses the expired timestamp first; the ticket is expired as well.
    assert!(trust.check(&b).await.is_err());
    assert!(matches!(
        ticket.check_stage(now(), 0),
        Err(ReleaseError::Expired { .. })
    ));
}
