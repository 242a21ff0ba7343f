//! Boot confirmation and fallback on an A/B slot pair: a trial that boots and is never
//! confirmed falls back at the next power-on, a tampered trial never boots, a confirmed one
//! stays; each fallback is recorded for the agent to report and the version is not retried.

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
