//! A real player reading from the gateway: ffmpeg cuts a generated test video into HLS, the
//! publisher adds it, and `ffprobe` and `ffmpeg` read it through a second node's gateway, which
//! fetches what they ask for from the publisher. A seek fetches only the shards it needs.
//! Needs `ffmpeg` and `ffprobe` (`./scripts/test.sh` installs them).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_streamspace");

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A gateway on `repo`; returns it with its HTTP base URL and its node's TCP address.
fn gateway(repo: &Path, bootstrap: Option<&str>) -> (Child, String, String) {
    gateway_with_keys(repo, bootstrap, None)
}

/// A gateway holding the content keys in `keys`, if any (decrypting on `/play`).
fn gateway_with_keys(
    repo: &Path,
    bootstrap: Option<&str>,
    keys: Option<&Path>,
) -> (Child, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("--repo")
        .arg(repo)
        .args(["gateway", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped());
    if let Some(b) = bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    if let Some(k) = keys {
        cmd.arg("--keys").arg(k);
    }
    let mut child = cmd.spawn().expect("start the gateway");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("first line");
    // "gateway on http://127.0.0.1:PORT/ipfs/<cid>, node ID on [/ip4/127.0.0.1/tcp/N/p2p/ID, ...]"
    let url = line
        .split_whitespace()
        .nth(2)
        .and_then(|u| u.strip_suffix("/ipfs/<cid>,"))
        .expect("gateway URL")
        .to_owned();
    let addr = line
        .split(['[', ',', ']'])
        .map(str::trim)
        .find(|a| a.starts_with("/ip4/127.0.0.1/tcp/"))
        .expect("node address")
        .to_owned();
    (child, url, addr)
}

/// Stops a gateway with Ctrl-C and returns the shards it fetched from the network.
fn stop(mut child: Child) -> u64 {
    run(Command::new("kill").args(["-INT", &child.id().to_string()]));
    let mut rest = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().expect("stdout"), &mut rest).expect("read");
    assert!(child.wait().expect("wait").success(), "{rest}");
    rest.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no fetch count in {rest:?}"))
}

/// What `ffprobe` says of `entries` of the stream at `url`, one value a line.
fn probe(url: &str, entries: &str) -> String {
    run(Command::new("ffprobe").args([
        "-v",
        "error",
        "-show_entries",
        entries,
        "-of",
        "csv=p=0",
        url,
    ]))
}

/// `ffmpeg` decodes the whole stream at `url` without a single error message.
fn decodes_cleanly(url: &str) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i", url, "-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn need_ffmpeg() {
    for tool in ["ffmpeg", "ffprobe"] {
        assert!(
            Command::new(tool).arg("-version").output().is_ok(),
            "{tool} is missing: ./scripts/test.sh installs it"
        );
    }
}

/// Status and body of a GET (the body as sent, for answers with a `Content-Length`).
fn http_get(url: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').expect("path");
    let mut s = std::net::TcpStream::connect(host).expect("connect");
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("read");
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").expect("head");
    let status = String::from_utf8_lossy(&all[9..12])
        .parse()
        .expect("status");
    (status, all[split + 4..].to_vec())
}

/// The publisher gives ffmpeg a plain video file: `add --hls --encrypt` cuts it into HLS and
/// encrypts every file under one content key. A viewer holding the key (released with its
/// license) plays it through its gateway's `/play`, which fetches the sealed shards from the
/// publisher, verifies and opens them; without the key, the gateway refuses, and `/ipfs` only
/// has ciphertext.
#[test]
fn encrypted_hls_plays_for_a_viewer_holding_the_key() {
    need_ffmpeg();
    let dir = tempfile::tempdir().expect("tempdir");
    let video = dir.path().join("film.mp4");
    run(Command::new("ffmpeg")
        .args(["-v", "error", "-f", "lavfi", "-i"])
        .arg("testsrc=duration=8:size=320x240:rate=25")
        .args(["-f", "lavfi", "-i", "sine=frequency=440:duration=8"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-c:a",
            "aac",
            "-shortest",
        ])
        .arg(&video));
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).expect("mkdir");
    let publisher_repo = dir.path().join("publisher");
    let cid = run(Command::new(BIN)
        .arg("--repo")
        .arg(&publisher_repo)
        .args([
            "add",
            "-Q",
            "--hls",
            "--hls-time",
            "2",
            "--encrypt",
            "--key-out",
        ])
        .arg(keys.join("film.key"))
        .arg(&video))
    .trim()
    .to_owned();
    let (publisher, _, addr) = gateway(&publisher_repo, None);

    let (viewer, url, _) = gateway_with_keys(&dir.path().join("viewer"), Some(&addr), Some(&keys));
    let playlist = format!("{url}/play/{cid}/index.m3u8");
    let probe = probe(&playlist, "format=duration:stream=codec_name");
    assert!(probe.contains("h264") && probe.contains("aac"), "{probe}");
    decodes_cleanly(&playlist);
    let (status, plain) = http_get(&playlist);
    assert_eq!(status, 200);
    assert!(plain.starts_with(b"#EXTM3U"));
    // What the network carries is sealed: the playlist's blocks are not the playlist.
    let (status, sealed) = http_get(&format!("{url}/ipfs/{cid}/index.m3u8"));
    assert_eq!(status, 200);
    assert_eq!(sealed.len(), plain.len() + 16);
    assert!(!sealed.starts_with(b"#EXTM3U"));
    stop(viewer);

    // A viewer with no key for it is refused.
    let no_keys = dir.path().join("no-keys");
    std::fs::create_dir(&no_keys).expect("mkdir");
    let (stranger, url, _) =
        gateway_with_keys(&dir.path().join("stranger"), Some(&addr), Some(&no_keys));
    assert_eq!(http_get(&format!("{url}/play/{cid}/index.m3u8")).0, 403);
    stop(stranger);
    stop(publisher);
}

#[test]
fn hls_plays_through_the_gateway_and_seeks_fetch_only_what_they_need() {
    need_ffmpeg();
    let dir = tempfile::tempdir().expect("tempdir");
    let hls = dir.path().join("hls");
    std::fs::create_dir(&hls).expect("mkdir");
    run(Command::new("ffmpeg")
        .args(["-v", "error", "-f", "lavfi", "-i"])
        .arg("testsrc=duration=12:size=320x240:rate=25")
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-f",
            "hls",
            "-hls_time",
            "2",
            "-hls_playlist_type",
            "vod",
            "-hls_segment_filename",
        ])
        .arg(hls.join("seg%03d.ts"))
        .arg(hls.join("index.m3u8")));
    let files = std::fs::read_dir(&hls).expect("ls").count() as u64;
    assert!(files >= 6, "{files} files");

    let publisher_repo = dir.path().join("publisher");
    let cid = run(Command::new(BIN)
        .arg("--repo")
        .arg(&publisher_repo)
        .args(["add", "-r", "-Q"])
        .arg(&hls))
    .trim()
    .to_owned();
    let (publisher, _, addr) = gateway(&publisher_repo, None);

    // A viewer's node: the player reads the playlist and every segment through it.
    let (viewer, url, _) = gateway(&dir.path().join("viewer"), Some(&addr));
    let playlist = format!("{url}/ipfs/{cid}/index.m3u8");
    let duration = probe(&playlist, "format=duration");
    let duration: f64 = duration.trim().parse().expect("duration");
    assert!((duration - 12.0).abs() < 0.5, "duration {duration}");
    decodes_cleanly(&playlist);
    let whole = stop(viewer);
    // The directory node and every file, each under one 256 KiB shard.
    assert_eq!(whole, files + 1);

    // Another viewer seeks to the last second: only the path and the segments it plays.
    let (seeker, url, _) = gateway(&dir.path().join("seeker"), Some(&addr));
    let playlist = format!("{url}/ipfs/{cid}/index.m3u8");
    let out = Command::new("ffmpeg")
        .args([
            "-v", "error", "-ss", "11", "-i", &playlist, "-t", "0.5", "-f", "null", "-",
        ])
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seeked = stop(seeker);
    println!("whole playback fetched {whole} shards, a seek to 0:11 fetched {seeked}");
    assert!(seeked < whole, "a seek fetched {seeked} of {whole} shards");
    stop(publisher);
}
