//! Boot confirmation and fallback on an A/B slot pair: a trial that boots and is never
//! confirmed falls back at the next power-on, a tampered trial never boots, a confirmed one
//! stays; each fallback is recorded for the agent to report and the version is not retried; a
//! power cut at any step of an install boots a good slot.

mod common;

use common::release_of as release;
use streamspace_update::agent::{AgentError, Slot, Slots};

fn image(version: &str) -> Vec<u8> {
    format!("firmware {version} ").repeat(4096).into_bytes()
}

/// Writes `version` into the inactive slot and stages it as the trial.
async fn install(slots: &Slots, version: &str) -> Slot {
    let img = image(version);
    let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = img
        .chunks(10_000)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    slots
        .install(&release(version, &img), futures::stream::iter(pieces))
        .await
        .expect("install")
}

#[tokio::test]
async fn a_trial_never_confirmed_falls_back_at_the_next_boot() {
    let dir = tempfile::tempdir().expect("dir");
    let slots = Slots::new(dir.path());
    slots
        .provision("1.0.0", &image("1.0.0"))
        .expect("provision");

    assert_eq!(install(&slots, "1.1.0").await, Slot::B);
    // Nothing changes until the next power-on.
    assert_eq!(slots.boot().expect("boot").version, "1.0.0");
    let first = slots.boot_up().expect("boot up");
    assert!(first.trial && first.fell_back.is_none());
    assert_eq!(first.running.version, "1.1.0");
    // A second trial cannot be staged over one awaiting confirmation.
    let e = slots
        .begin(&release("1.2.0", &image("1.2.0")))
        .expect_err("a trial is pending");
    assert!(matches!(e, AgentError::TrialPending(v) if v == "1.1.0"));

    // The new image hangs: no health check, no confirmation. The next power-on falls back.
    let second = slots.boot_up().expect("boot up");
    assert!(!second.trial);
    assert_eq!(second.running.version, "1.0.0");
    assert_eq!(second.running.active, Slot::A);
    let f = second.fell_back.expect("a fallback");
    assert_eq!((f.version.as_str(), f.back_to.as_str()), ("1.1.0", "1.0.0"));
    assert_eq!(slots.boot().expect("boot").version, "1.0.0");
    assert_eq!(slots.failed(), ["1.1.0"]);
    // Recorded until the agent has reported it, once.
    assert_eq!(
        slots.take_fallback().expect("take").map(|f| f.version),
        Some("1.1.0".to_owned())
    );
    assert!(slots.take_fallback().expect("take").is_none());
    // A confirmation after the fallback confirms nothing.
    assert!(matches!(slots.confirm(), Err(AgentError::NoTrial)));
    // Later boots stay on the good slot.
    assert_eq!(slots.boot_up().expect("boot up").running.version, "1.0.0");
}

#[tokio::test]
async fn a_confirmed_trial_stays_and_a_tampered_one_never_boots() {
    let dir = tempfile::tempdir().expect("dir");
    let slots = Slots::new(dir.path());
    slots
        .provision("1.0.0", &image("1.0.0"))
        .expect("provision");

    // Confirming needs a trial that booted.
    install(&slots, "2.0.0").await;
    assert!(matches!(slots.confirm(), Err(AgentError::NoTrial)));
    assert!(slots.boot_up().expect("boot up").trial);
    let confirmed = slots.confirm().expect("health check passed");
    assert_eq!(
        (confirmed.active, confirmed.version.as_str()),
        (Slot::B, "2.0.0")
    );
    for _ in 0..3 {
        let b = slots.boot_up().expect("boot up");
        assert!(!b.trial && b.fell_back.is_none());
        assert_eq!(b.running.version, "2.0.0");
    }

    // The next image goes to slot A; its bytes change on disk before the power-on.
    assert_eq!(install(&slots, "2.1.0").await, Slot::A);
    let mut bytes = std::fs::read(slots.image(Slot::A)).expect("read");
    bytes[100] ^= 1;
    std::fs::write(slots.image(Slot::A), bytes).expect("write");
    let b = slots.boot_up().expect("boot up");
    assert!(!b.trial);
    assert_eq!(b.running.version, "2.0.0");
    let f = b.fell_back.expect("a fallback");
    assert_eq!(f.version, "2.1.0");
    assert!(f.reason.contains("no longer matches"), "{}", f.reason);

    // A health check that fails gives the trial up at once.
    install(&slots, "2.2.0").await;
    assert!(slots.boot_up().expect("boot up").trial);
    let f = slots.reject("health check: no network").expect("reject");
    assert_eq!((f.version.as_str(), f.back_to.as_str()), ("2.2.0", "2.0.0"));
    assert_eq!(slots.boot().expect("boot").version, "2.0.0");
    assert_eq!(slots.failed(), ["2.1.0", "2.2.0"]);
}

/// The device after a power cut at this point: a copy of the slot directory (with a boot
/// record replacement that never reached its rename) powered on twice. Each boot runs a slot
/// whose image is the verified image of the version it claims; returns the two versions.
fn power_on_after_cut(dir: &std::path::Path, at: &str) -> (String, String) {
    let copy = tempfile::tempdir().expect("copy");
    for entry in std::fs::read_dir(dir).expect("slots") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), copy.path().join(entry.file_name())).expect("copy file");
    }
    std::fs::write(copy.path().join("boot.tmp"), b"torn boot record \xff\x00").expect("torn");
    let slots = Slots::new(copy.path());
    let mut seen = Vec::new();
    for _ in 0..2 {
        let booted = slots
            .boot_up()
            .unwrap_or_else(|e| panic!("cut {at}: no boot: {e}"));
        let on_disk = std::fs::read(slots.image(booted.running.active)).expect("image");
        assert_eq!(
            on_disk,
            image(&booted.running.version),
            "cut {at}: slot {:?} does not hold {}",
            booted.running.active,
            booted.running.version
        );
        seen.push(booted.running.version);
    }
    (seen[0].clone(), seen[1].clone())
}

#[tokio::test]
async fn a_power_cut_at_every_step_of_an_install_boots_a_good_slot() {
    let dir = tempfile::tempdir().expect("dir");
    let slots = Slots::new(dir.path());
    slots
        .provision("1.0.0", &image("1.0.0"))
        .expect("provision");
    let old = || ("1.0.0".to_owned(), "1.0.0".to_owned());
    assert_eq!(power_on_after_cut(dir.path(), "before the update"), old());

    let img = image("1.1.0");
    let rel = release("1.1.0", &img);
    let mut writer = slots.begin(&rel).expect("begin");
    assert_eq!(
        power_on_after_cut(dir.path(), "at an empty part file"),
        old()
    );
    writer.write(&img[..img.len() / 2]).expect("write");
    assert_eq!(
        power_on_after_cut(dir.path(), "half way through the image"),
        old()
    );
    writer.write(&img[img.len() / 2..]).expect("write");
    assert_eq!(
        power_on_after_cut(dir.path(), "before the image is synced"),
        old()
    );
    let staged = writer.finish().expect("finish");
    assert_eq!(
        power_on_after_cut(dir.path(), "with the image in its slot, not staged"),
        old()
    );
    slots.stage(staged).expect("stage");
    // Staged: the next power-on tries it once; the one after, unconfirmed, falls back.
    let staged_cut = power_on_after_cut(dir.path(), "with the trial staged");
    assert_eq!(staged_cut, ("1.1.0".to_owned(), "1.0.0".to_owned()));
    let booted = slots.boot_up().expect("boot up");
    assert!(booted.trial);
    assert_eq!(
        power_on_after_cut(dir.path(), "in the trial, before its health check"),
        old()
    );
    slots.confirm().expect("confirm");
    let new = ("1.1.0".to_owned(), "1.1.0".to_owned());
    assert_eq!(
        power_on_after_cut(dir.path(), "after the confirmation"),
        new
    );

    // The interrupted attempt of a later update leaves a part file behind: harmless, and the
    // next attempt overwrites it.
    let img2 = image("1.2.0");
    let mut writer = slots.begin(&release("1.2.0", &img2)).expect("begin");
    writer.write(&img2[..1000]).expect("write");
    drop(writer);
    assert_eq!(
        power_on_after_cut(dir.path(), "with a stale part file"),
        new
    );
    assert_eq!(install(&slots, "1.2.0").await, Slot::A);
    let booted = slots.boot_up().expect("boot up");
    assert_eq!(booted.running.version, "1.2.0");
}
