//! `streamspace sim` runs real nodes and the model, and writes its CSV files and plots.

use std::process::Command;

#[test]
fn sim_writes_csv_and_plots_for_real_nodes_and_the_model() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = Command::new(env!("CARGO_BIN_EXE_streamspace"))
        .args([
            "sim",
            "--viewers",
            "4,40",
            "--real-up-to",
            "4",
            "--shards",
            "8",
            "--arrivals-secs",
            "1",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .expect("run sim");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sim failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = std::fs::read_to_string(dir.path().join("summary.csv")).expect("summary.csv");
    let rows: Vec<Vec<&str>> = summary.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        rows[0][..4],
        ["mode", "viewers", "offload", "ideal_offload"]
    );
    let modes: Vec<(&str, &str)> = rows[1..].iter().map(|r| (r[0], r[1])).collect();
    assert_eq!(modes, [("real", "4"), ("model", "4"), ("model", "40")]);
    for r in &rows[1..] {
        let offload: f64 = r[2].parse().expect("offload");
        let ideal: f64 = r[3].parse().expect("ideal");
        assert!((0.0..=ideal + 1e-9).contains(&offload), "{r:?}");
        // Every viewer received the whole item: 8 shards of 256 KiB (plus the root for real
        // nodes).
        let served: u64 =
            r[4].parse::<u64>().expect("origin") + r[5].parse::<u64>().expect("peers");
        let viewers: u64 = r[1].parse().expect("viewers");
        assert!(served >= viewers * 8 * 262_144, "{r:?}");
    }
    let viewers = std::fs::read_to_string(dir.path().join("viewers-model-40.csv")).expect("csv");
    assert_eq!(viewers.lines().count(), 41);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("viewers-real-4.csv"))
            .expect("csv")
            .lines()
            .count(),
        5
    );
    for plot in ["offload.svg", "startup.svg", "rebuffering.svg"] {
        let svg = std::fs::read_to_string(dir.path().join(plot)).expect("plot");
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{plot}"
        );
    }
    let offload = std::fs::read_to_string(dir.path().join("offload.svg")).expect("plot");
    assert!(offload.contains("ideal 1 - 1/N"));
}

#[test]
fn sim_refuses_bad_parameters() {
    for args in [
        &["sim", "--viewers", "0"][..],
        &["sim", "--churn", "1.5"],
        &["sim", "--link-mbps", "0"],
        &["sim", "--real-up-to", "100000"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_streamspace"))
            .args(args)
            .output()
            .expect("run sim");
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(!out.stderr.is_empty());
    }
}
