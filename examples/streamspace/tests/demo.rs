//! The README's main command runs end to end on a small item: every step checks itself (the
//! viewers' decrypted bytes against the source, the catalog against the market topic, the
//! settlement against the receipts), so success means the whole network worked.

use std::process::Command;

#[test]
fn the_demo_runs_end_to_end() {
    let out = Command::new(env!("CARGO_BIN_EXE_streamspace"))
        .args(["demo", "--size-mib", "2"])
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "[spread]    2 Tier-1 and 8 edge nodes hold the item",
        "[viewer-3]  bought, key released to its device",
        "by peers rather than the publisher",
        "sent over the network and accepted",
        "(co-writer): 3 sales, 450000000 tinybars",
        "(publisher): 3 sales, 1050000000 tinybars",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}

#[test]
fn the_storage_demo_runs() {
    let out = Command::new(env!("CARGO_BIN_EXE_streamspace"))
        .args(["demo", "--storage", "--size-mib", "2", "--seeks", "3"])
        .output()
        .expect("run the demo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("demo complete"));
}

#[test]
fn a_fleet_takes_a_staged_update() {
    let out = Command::new(env!("CARGO_BIN_EXE_streamspace"))
        .args([
            "fleet",
            "--devices",
            "12",
            "--image-mib",
            "2",
            "--first-rollout",
            "25",
        ])
        .output()
        .expect("run the fleet");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fleet failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "12 devices running factory 1.0.0",
        "1.1.0 100% stage: 12 installed",
        "1.2.0 100% stage: 11 installed",
        "device-011 fell back at its trial boot and reported it",
        "1.2.0 delta: each device fetched",
        "with fixed 256 KiB chunks",
        "11 devices boot 1.2.0 from their inactive slot, 1 runs 1.1.0 again",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}
