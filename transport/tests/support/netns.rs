//! What the network-namespace tests need (root, `ip netns`, nftables, `tc`); shared by this
//! crate's `tests/nat.rs` and the CLI's `tests/nat.rs`, which include it by path.

use std::process::{Command, Stdio};

/// What the namespace tests need and this machine lacks, if anything.
pub(crate) fn netns_missing() -> Option<String> {
    let ok = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if uid != "0" {
        return Some("not running as root".into());
    }
    if !ok("ip", &["netns", "list"]) {
        return Some("no `ip netns` (iproute2)".into());
    }
    if !ok("nft", &["--version"]) {
        // Installed by the test when apt works.
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-qq", "nftables"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !ok("nft", &["--version"]) {
            return Some("no nftables (`nft`), and `apt-get install nftables` failed".into());
        }
    }
    if !ok("tc", &["-V"]) {
        return Some("no `tc` (iproute2)".into());
    }
    None
}
