//! The ffmpeg driver on a short generated input (testsrc and a sine at 160x90): segments are
//! handed on complete and in order; ffmpeg dying ends the stream without a hang.

use std::time::Duration;

use streamspace_live::{Input, Segmenter, SegmenterConfig};

/// A test card and a tone, `secs` long (0: endless).
fn test_card(secs: u32) -> Input {
    let d = if secs == 0 {
        String::new()
    } else {
        format!(":duration={secs}")
    };
    Input::Lavfi(format!(
        "testsrc=size=160x90:rate=25{d}[out0];sine=frequency=440:sample_rate=48000{d}[out1]"
    ))
}

fn config(input: Input, dir: &std::path::Path) -> SegmenterConfig {
    let mut c = SegmenterConfig::new(input, dir);
    c.segment_secs = 1;
    c.height = 90;
    c.video_kbps = 150;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_complete_segments_in_order_until_the_input_ends() {
    let dir = tempfile::tempdir().expect("dir");
    let mut s = Segmenter::spawn(&config(test_card(3), dir.path())).expect("ffmpeg starts");
    let mut got = Vec::new();
    while let Some(seg) = tokio::time::timeout(Duration::from_secs(30), s.next())
        .await
        .expect("no hang")
    {
        got.push(seg.expect("segment"));
    }
    assert!(
        s.exit()
            .expect("exited")
            .as_ref()
            .expect("waited")
            .success(),
        "{}",
        s.stderr()
    );
    assert!((3..=4).contains(&got.len()), "{got:?}");
    let total: u32 = got.iter().map(|g| g.duration_ms).sum();
    assert!((2900..=3100).contains(&total), "{got:?}");
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.index, i as u64);
        let bytes = std::fs::read(&g.path).expect("segment file");
        // MPEG-TS: 188-byte packets, each starting with the sync byte.
        assert_eq!(bytes.len() % 188, 0);
        assert!(bytes.chunks(188).all(|p| p[0] == 0x47));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_dying_ends_the_stream_with_what_it_finished() {
    let dir = tempfile::tempdir().expect("dir");
    let mut s = Segmenter::spawn(&config(test_card(0), dir.path())).expect("ffmpeg starts");
    let first = s.next().await.expect("a segment").expect("ok");
    assert_eq!(first.index, 0);
    let pid = s.pid().expect("running");
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let mut rest = 0;
    while let Some(seg) = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("no hang after ffmpeg died")
    {
        let seg = seg.expect("listed segments are readable");
        assert!(std::fs::metadata(&seg.path).expect("exists").len() > 0);
        rest += 1;
    }
    assert!(rest <= 2, "{rest}");
    let status = s.exit().expect("exited").as_ref().expect("waited");
    assert!(!status.success());
}

#[tokio::test]
async fn a_missing_ffmpeg_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().expect("dir");
    let mut c = config(test_card(1), dir.path());
    c.ffmpeg = "/nonexistent/ffmpeg".into();
    assert!(matches!(
        Segmenter::spawn(&c),
        Err(streamspace_live::SegmenterError::Spawn { .. })
    ));
}

/// A ladder from one live input: every rendition gets the same segments (count and
/// durations: keyframes aligned), each at its own height, each a complete MPEG-TS file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_ladder_cuts_aligned_renditions() {
    let dir = tempfile::tempdir().expect("dir");
    let mut c = config(
        Input::Lavfi(
            "testsrc=size=426x240:rate=25:duration=3[out0];sine=frequency=440:sample_rate=48000:duration=3[out1]"
                .into(),
        ),
        dir.path(),
    );
    c.ladder = Some("240p@300k,144p@120k".parse().expect("ladder"));
    let mut s = Segmenter::spawn(&c).expect("ffmpeg starts");
    let mut got: [Vec<(u64, u32)>; 2] = Default::default();
    while let Some(seg) = tokio::time::timeout(Duration::from_secs(60), s.next())
        .await
        .expect("no hang")
    {
        let seg = seg.expect("segment");
        let bytes = std::fs::read(&seg.path).expect("segment file");
        assert_eq!(bytes.len() % 188, 0);
        assert!(bytes.chunks(188).all(|p| p[0] == 0x47));
        assert!(
            seg.path
                .starts_with(dir.path().join(["240p", "144p"][seg.rendition]))
        );
        got[seg.rendition].push((seg.index, seg.duration_ms));
    }
    assert!(
        s.exit()
            .expect("exited")
            .as_ref()
            .expect("waited")
            .success(),
        "{}",
        s.stderr()
    );
    assert!((3..=4).contains(&got[0].len()), "{got:?}");
    assert_eq!(got[0], got[1], "renditions not aligned");
    let total: u32 = got[0].iter().map(|g| g.1).sum();
    assert!((2900..=3100).contains(&total), "{got:?}");
}
