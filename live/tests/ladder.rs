//! The ABR ladder with a real ffmpeg: a 640×360 test card with sound is cut into renditions;
//! every rendition's segments start with a keyframe at the same timestamp as the others', the
//! master playlist names each with its measured size and bitrate, and a rung taller than the
//! source is dropped. Needs `ffmpeg` and `ffprobe` (`./scripts/test.sh` installs them).

use std::path::Path;
use std::process::Command;

use streamspace_live::ladder::{self, Ladder, LadderError, VodConfig};

fn card(path: &Path, audio: bool) {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=640x360:rate=25:duration=7");
    if audio {
        cmd.args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000:duration=7",
        ]);
    }
    // Keyframes every 5 s in the source, so the renditions' alignment is the cutter's work.
    cmd.args([
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "125",
        "-pix_fmt",
        "yuv420p",
    ]);
    if audio {
        cmd.args(["-c:a", "aac"]);
    }
    let out = cmd.arg("-y").arg(path).output().expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The first video frame of a segment: (is it a keyframe, its presentation time).
fn first_frame(segment: &Path) -> (bool, String) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-read_intervals",
            "%+#1",
            "-show_entries",
            "frame=key_frame,pts_time",
            "-of",
            "csv=p=0",
        ])
        .arg(segment)
        .output()
        .expect("ffprobe runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().expect("a frame");
    let (key, pts) = line.split_once(',').expect("key_frame,pts_time");
    (key == "1", pts.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renditions_are_aligned_and_the_master_playlist_names_them() {
    let tmp = tempfile::tempdir().expect("dir");
    let input = tmp.path().join("card.mp4");
    card(&input, true);
    let out = tmp.path().join("cut");
    let mut config = VodConfig::new(
        &input,
        &out,
        "1080p,360p,240p@300k,144p"
            .parse::<Ladder>()
            .expect("ladder"),
    );
    config.segment_secs = 2;
    let cut = ladder::cut_vod(&config).await.expect("cut");

    assert_eq!(cut.source_height, 360);
    assert_eq!(
        cut.dropped
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["1080p"],
        "taller than the source"
    );
    let sizes: Vec<_> = cut.variants.iter().map(|v| v.resolution).collect();
    assert_eq!(sizes, [(640, 360), (426, 240), (256, 144)]);
    assert!(!Path::new(&out).join("1080p").exists());

    // 7 s in 2 s segments: four, with the same durations in every rendition.
    let first = &cut.variants[0].durations_ms;
    assert_eq!(first.len(), 4, "{first:?}");
    assert_eq!(first.iter().map(|&d| u64::from(d)).sum::<u64>(), 7000);
    for v in &cut.variants {
        assert_eq!(&v.durations_ms, first, "{}", v.rung);
        assert!(v.bandwidth >= v.average_bandwidth && v.average_bandwidth > 0);
        assert_eq!(
            v.codecs.as_deref().map(|c| c.ends_with(",mp4a.40.2")),
            Some(true)
        );
    }

    // Every segment of every rendition opens on a keyframe, at the same time as the others'.
    let media = |name: &str| {
        let text = std::fs::read_to_string(out.join(name).join("index.m3u8")).expect("media");
        ladder::media_segments(&text)
    };
    let top = media("360p");
    for (i, (uri, _)) in top.iter().enumerate() {
        let (key, pts) = first_frame(&out.join("360p").join(uri));
        assert!(key, "360p segment {i} does not open on a keyframe");
        for name in ["240p", "144p"] {
            let other = media(name);
            let (k, p) = first_frame(&out.join(name).join(&other[i].0));
            assert!(k, "{name} segment {i} does not open on a keyframe");
            assert_eq!(p, pts, "{name} segment {i} starts elsewhere");
        }
    }

    // The master playlist, tallest first, each with its measured figures.
    let master = std::fs::read_to_string(out.join("index.m3u8")).expect("master");
    let entries: Vec<(&str, &str)> = master
        .lines()
        .zip(master.lines().skip(1))
        .filter(|(a, _)| a.starts_with("#EXT-X-STREAM-INF:"))
        .collect();
    assert_eq!(entries.len(), 3, "{master}");
    for ((inf, uri), v) in entries.iter().zip(&cut.variants) {
        assert_eq!(*uri, format!("{}/index.m3u8", v.rung.name()));
        assert!(
            inf.contains(&format!("BANDWIDTH={},", v.bandwidth)),
            "{inf}"
        );
        assert!(
            inf.contains(&format!("RESOLUTION={}x{}", v.resolution.0, v.resolution.1)),
            "{inf}"
        );
    }
    // Each rendition's bitrate is its own: the 144p one is far below the 360p one.
    assert!(cut.variants[2].average_bandwidth < cut.variants[0].average_bandwidth);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_source_gets_video_only_renditions() {
    let tmp = tempfile::tempdir().expect("dir");
    let input = tmp.path().join("card.mp4");
    card(&input, false);
    let out = tmp.path().join("cut");
    let mut config = VodConfig::new(&input, &out, "360p,144p".parse().expect("ladder"));
    config.segment_secs = 3;
    let cut = ladder::cut_vod(&config).await.expect("cut");
    assert_eq!(cut.variants.len(), 2);
    for v in &cut.variants {
        let codecs = v.codecs.as_deref().expect("codecs");
        assert!(
            codecs.starts_with("avc1.4d40") && !codecs.contains("mp4a"),
            "{codecs}"
        );
        assert_eq!(v.durations_ms, cut.variants[0].durations_ms);
    }
}

#[tokio::test]
async fn bad_sources_say_what_is_wrong() {
    let tmp = tempfile::tempdir().expect("dir");
    let ladder: Ladder = "360p".parse().expect("ladder");
    // Missing.
    let r = ladder::cut_vod(&VodConfig::new(
        tmp.path().join("absent.mp4"),
        tmp.path().join("a"),
        ladder.clone(),
    ))
    .await;
    assert!(
        matches!(r, Err(LadderError::Failed { ref program, .. }) if program == "ffprobe"),
        "{r:?}"
    );
    // Not a video: sound only.
    let sound = tmp.path().join("sound.m4a");
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
        .arg("sine=duration=1")
        .arg("-y")
        .arg(&sound)
        .output()
        .expect("ffmpeg");
    assert!(out.status.success());
    let r = ladder::cut_vod(&VodConfig::new(
        &sound,
        tmp.path().join("b"),
        ladder.clone(),
    ))
    .await;
    assert!(
        matches!(
            r,
            Err(LadderError::Probe {
                what: "a video stream",
                ..
            })
        ),
        "{r:?}"
    );
    // Every rung taller than the source.
    let small = tmp.path().join("small.mp4");
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
        .arg("testsrc=size=320x180:duration=1")
        .args(["-pix_fmt", "yuv420p", "-y"])
        .arg(&small)
        .output()
        .expect("ffmpeg");
    assert!(out.status.success());
    let r = ladder::cut_vod(&VodConfig::new(&small, tmp.path().join("c"), ladder)).await;
    assert!(
        matches!(r, Err(LadderError::NothingFits { source_height: 180 })),
        "{r:?}"
    );
    // A program that is not there.
    let mut c = VodConfig::new(
        &small,
        tmp.path().join("d"),
        "144p".parse().expect("ladder"),
    );
    c.ffmpeg = tmp.path().join("no-ffmpeg");
    let r = ladder::cut_vod(&c).await;
    assert!(matches!(r, Err(LadderError::Spawn { .. })), "{r:?}");
}
