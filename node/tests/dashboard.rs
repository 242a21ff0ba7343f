//! The dashboard in a real browser: headless Chromium (Debian's `chromium`, installed by the
//! README's test command) driven by `playwright-core` (pinned in `interop/js`). The page loads
//! with no console error, shows the figures the API gives, and its "offer N GB" control
//! changes the node's quota. The screenshot is kept in the target directory.
//!
//! Set `STREAMSPACE_SKIP_BROWSER=1` to skip it on a machine without Chromium.

mod common;

use std::path::Path;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_node_and_sets_its_quota() {
    if std::env::var_os("STREAMSPACE_SKIP_BROWSER").is_some() {
        eprintln!("STREAMSPACE_SKIP_BROWSER set: the dashboard is not tried in a browser");
        return;
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} missing: install Debian's chromium (the README's test command does) or set STREAMSPACE_SKIP_BROWSER=1"
    );
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("../interop/js");
    assert!(
        js.join("node_modules/playwright-core").exists(),
        "playwright-core not installed: run `npm ci --prefix interop/js`"
    );

    let repo = tempfile::tempdir().expect("dir");
    let node = common::builder(repo.path())
        .quota(1_000_000_000)
        .start()
        .await
        .expect("node");
    let api = node.api_addr().expect("api");
    let added = common::post_multipart(
        api,
        "/api/v0/add",
        &[(
            "file",
            "clip",
            "application/octet-stream",
            &common::data(700_000, 5),
        )],
    )
    .await;
    let cid = added.json()["Hash"].as_str().expect("hash").to_owned();

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let out = Command::new("node")
        .arg(js.join("dashboard.mjs"))
        .arg(format!("http://{api}/dashboard"))
        .arg("2.5")
        .arg(&shot)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "dashboard.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["consoleErrors"], serde_json::json!([]), "{v}");
    let shown = &v["shown"];
    assert_eq!(shown["quota"], "1.00 GB");
    assert!(
        shown["peer"]
            .as_str()
            .expect("peer")
            .starts_with(&node.transport().peer_id().to_string()),
        "{v}"
    );
    assert_eq!(shown["tier"], "edge");
    let used = node.transport().store().used_bytes();
    assert_eq!(shown["blocks"], node.transport().store().len().to_string());
    assert!(used > 700_000);
    assert_eq!(shown["pinned"], serde_json::json!([cid]));
    assert_eq!(
        shown["payments"],
        "Free service (no [payments] configured)."
    );
    assert_eq!(v["afterOffer"], "now offering 2.50 GB");
    assert_eq!(shown["quotaAfter"], "2.50 GB");
    assert_eq!(node.transport().store().quota(), Some(2_500_000_000));
    let status = common::post(api, "/api/v0/streamspace/status").await.json();
    assert_eq!(status["Quota"], 2_500_000_000u64);
    assert!(std::fs::metadata(&shot).expect("screenshot").len() > 10_000);
    eprintln!("dashboard screenshot: {}", shot.display());
    node.shutdown().await.expect("shutdown");
}
