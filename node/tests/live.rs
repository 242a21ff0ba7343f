//! Live streams on a viewer's gateway: a publisher's node announces signed manifests on the
//! stream's topic; the viewer's gateway serves the verified sliding window as an HLS playlist
//! and its segments (decrypted with the epoch keys it holds), refuses forged and replayed
//! manifests sent by another peer, and ends the playlist when the publisher stops.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use ed25519_dalek::SigningKey;
use http_body_util::BodyExt;
use streamspace_live::{
    EpochKey, Manifest, Publisher, PublisherConfig, Segment, StreamId, StreamKey,
};
use streamspace_node::gateway::{CacheStats, Keyring, router_with_keys, router_with_live_keys};
use streamspace_shard::store::MemoryStore;
use streamspace_transport::{Config, Keypair, Node, ed25519, meter::Free};
use tower::ServiceExt;

async fn node_with(key: Keypair, join: Option<&Node<MemoryStore>>) -> Node<MemoryStore> {
    let mut c = Config::new(key).loopback();
    if let Some(j) = join {
        c.bootstrap = j.dialable_addrs().await.expect("addrs");
    }
    Node::start(c, Arc::new(MemoryStore::new()), Arc::new(Free))
        .await
        .expect("node")
}

/// A publisher's node: its identity is the stream's signing key.
async fn publisher_node(signing: &SigningKey) -> Node<MemoryStore> {
    let mut secret = signing.to_bytes();
    let secret = ed25519::SecretKey::try_from_bytes(&mut secret).expect("secret");
    node_with(ed25519::Keypair::from(secret).into(), None).await
}

async fn get(app: &axum::Router, path: &str) -> (u16, Vec<u8>) {
    let r = app
        .clone()
        .oneshot(
            Request::get(path)
                .header("host", "127.0.0.1:8080")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("answer");
    let status = r.status().as_u16();
    (
        status,
        r.into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec(),
    )
}

/// Polls the playlist (the publisher repeating its window meanwhile) until `done` holds.
async fn playlist_until<S: streamspace_shard::store::BlockStore + 'static>(
    app: &axum::Router,
    stream: &StreamId,
    publisher: &mut Publisher<S>,
    done: impl Fn(&str) -> bool,
) -> String {
    let path = format!("/live/{stream}/index.m3u8");
    let app2 = app.clone();
    let p2 = path.clone();
    // The first request subscribes and waits for a manifest.
    let first = tokio::spawn(async move { get(&app2, &p2).await });
    loop {
        if first.is_finished() {
            break;
        }
        let _ = publisher.repeat().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = first.await.expect("task");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    loop {
        let (status, body) = get(app, &path).await;
        assert_eq!(status, 200);
        let text = String::from_utf8(body).expect("utf-8");
        if done(&text) {
            return text;
        }
        let _ = publisher.repeat().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn segment_bytes(seq: u64) -> Vec<u8> {
    format!("segment {seq} ").repeat(3000).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_viewer_gets_the_window_and_sees_the_end() {
    let signing = SigningKey::from_bytes(&[11; 32]);
    let pub_node = publisher_node(&signing).await;
    let viewer = node_with(Keypair::generate_ed25519(), Some(&pub_node)).await;
    let mut config = PublisherConfig::default();
    config.window = 3;
    let mut p = Publisher::new(pub_node.clone(), signing, "news", None, config).expect("pub");
    p.join().await.expect("topic");
    // Five segments before the viewer arrives.
    for seq in 0..5 {
        p.push(segment_bytes(seq), 1500).await.expect("push");
    }
    let stream = p.stream().clone();
    let app = router_with_keys(
        viewer.clone(),
        Arc::new(CacheStats::default()),
        Arc::new(Keyring::new()),
    );
    let text = playlist_until(&app, &stream, &mut p, |t| t.contains("4.ts")).await;
    assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:2\n"), "{text}");
    assert!(text.contains("#EXTINF:1.500,\n2.ts\n"), "{text}");
    assert!(!text.contains("ENDLIST"));
    let (status, body) = get(&app, &format!("/live/{stream}/3.ts")).await;
    assert_eq!(status, 200);
    assert_eq!(body, segment_bytes(3));
    // Segment 0 is behind the window this viewer ever saw.
    assert_eq!(get(&app, &format!("/live/{stream}/0.ts")).await.0, 404);
    // The publisher stops mid-stream: the playlist ends.
    p.push(segment_bytes(5), 1500).await.expect("push");
    p.finish().await.expect("finish");
    let text = playlist_until(&app, &stream, &mut p, |t| t.contains("ENDLIST")).await;
    assert!(text.ends_with("5.ts\n#EXT-X-ENDLIST\n"), "{text}");
    let (_, stats) = get(&app, &format!("/live/{stream}/stats.json")).await;
    let stats: serde_json::Value = serde_json::from_slice(&stats).expect("json");
    assert_eq!(stats["ended"], true);
    assert_eq!(stats["refused"]["total"], 0, "{stats}");
    assert!(
        stats["bytesFromPublisher"].as_u64().expect("n") > 0,
        "{stats}"
    );
    viewer.shutdown().await;
    pub_node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epoch_keys_open_their_epoch_and_forgeries_are_refused() {
    let signing = SigningKey::from_bytes(&[12; 32]);
    let pub_node = publisher_node(&signing).await;
    let viewer = node_with(Keypair::generate_ed25519(), Some(&pub_node)).await;
    let mallory_key = SigningKey::from_bytes(&[66; 32]);
    let mallory = node_with(Keypair::generate_ed25519(), Some(&viewer)).await;
    let master = StreamKey::generate();
    let mut config = PublisherConfig::default();
    config.window = 4;
    config.epoch_len = 2;
    let mut p = Publisher::new(
        pub_node.clone(),
        signing,
        "match",
        Some(master.clone()),
        config,
    )
    .expect("pub");
    p.join().await.expect("topic");
    let stream = p.stream().clone();
    for seq in 0..4 {
        p.push(segment_bytes(seq), 2000).await.expect("push");
    }
    // The viewer paid for epoch 1 (segments 2 and 3) only.
    let mut keys = Keyring::new();
    keys.insert(
        EpochKey::label(&stream, 1),
        master.epoch_key(&stream, 2, 1).to_content_key(),
    );
    let app = router_with_keys(
        viewer.clone(),
        Arc::new(CacheStats::default()),
        Arc::new(keys),
    );
    playlist_until(&app, &stream, &mut p, |t| t.contains("3.ts")).await;
    let (status, body) = get(&app, &format!("/live/{stream}/2.ts")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, segment_bytes(2));
    assert_eq!(
        get(&app, &format!("/live/{stream}/3.ts")).await.1,
        segment_bytes(3)
    );
    let (status, body) = get(&app, &format!("/live/{stream}/1.ts")).await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    // Plaintext goes to programs on this machine only.
    let r = app
        .clone()
        .oneshot(
            Request::get(format!("/live/{stream}/2.ts"))
                .header("host", "viewer.example:8080")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("answer");
    assert_eq!(r.status().as_u16(), 403);

    // Mallory, a peer on the topic, sends a window of her own segments: signed by her key
    // naming the stream, and naming herself as its publisher.
    mallory.subscribe(&stream.topic()).await.expect("sub");
    let evil = Manifest {
        stream: stream.clone(),
        seq: 1_000,
        first: 2,
        segments: (2..6)
            .map(|_| Segment {
                cid: "bafkqaaa".parse().expect("cid"),
                duration_ms: 2000,
            })
            .collect(),
        epoch_len: 2,
        key_epoch: 2,
        encrypted: true,
        ended: false,
    };
    let forged = evil.sign(&mallory_key).expect("sign");
    let mut hers = evil.clone();
    hers.stream = StreamId::new("match", &mallory_key.verifying_key()).expect("id");
    let not_publisher = hers.sign(&mallory_key).expect("sign");
    // And replays a manifest the publisher signed before.
    let old = p.repeat().await.expect("repeat").manifest;
    let stats = |app: axum::Router| {
        let path = format!("/live/{stream}/stats.json");
        async move {
            let (_, b) = get(&app, &path).await;
            serde_json::from_slice::<serde_json::Value>(&b).expect("json")
        }
    };
    loop {
        for m in [&forged, &not_publisher] {
            let _ = mallory
                .publish(&stream.topic(), bytes::Bytes::copy_from_slice(m.encode()))
                .await;
        }
        let _ = p.repeat().await;
        let _ = mallory
            .publish(&stream.topic(), bytes::Bytes::copy_from_slice(old.encode()))
            .await;
        let s = stats(app.clone()).await;
        let r = &s["refused"];
        if r["forged"].as_u64() >= Some(1)
            && r["notPublisher"].as_u64() >= Some(1)
            && r["replayed"].as_u64().unwrap_or(0) + r["reordered"].as_u64().unwrap_or(0) >= 1
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The honest window is what the viewer keeps.
    let s = stats(app.clone()).await;
    assert_eq!(s["window"], serde_json::json!([0, 1, 2, 3]), "{s}");
    assert_eq!(
        get(&app, &format!("/live/{stream}/3.ts")).await.1,
        segment_bytes(3)
    );
    mallory.shutdown().await;
    viewer.shutdown().await;
    pub_node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_dies_silently_ends_the_playlist() {
    let signing = SigningKey::from_bytes(&[13; 32]);
    let pub_node = publisher_node(&signing).await;
    let viewer = node_with(Keypair::generate_ed25519(), Some(&pub_node)).await;
    let mut p = Publisher::new(
        pub_node.clone(),
        signing,
        "crash",
        None,
        PublisherConfig::default(),
    )
    .expect("pub");
    p.join().await.expect("topic");
    p.push(segment_bytes(0), 500).await.expect("push");
    let stream = p.stream().clone();
    let app = router_with_keys(
        viewer.clone(),
        Arc::new(CacheStats::default()),
        Arc::new(Keyring::new()),
    );
    playlist_until(&app, &stream, &mut p, |t| t.contains("0.ts")).await;
    // The publisher's node goes away without an end-of-stream manifest.
    pub_node.shutdown().await;
    drop(p);
    let path = format!("/live/{stream}/index.m3u8");
    loop {
        let (status, body) = get(&app, &path).await;
        assert_eq!(status, 200);
        if String::from_utf8_lossy(&body).contains("#EXT-X-ENDLIST") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    viewer.shutdown().await;
}

/// The publisher's store under pressure: the window's segments and the DVR window behind it
/// stay (held), older segments are released and evicted first, before anything newer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_keeps_its_window_and_dvr_and_lets_older_segments_go() {
    use streamspace_shard::Block;
    use streamspace_shard::block::RAW;
    use streamspace_shard::store::{BlockStore, DiskStore};
    let dir = tempfile::tempdir().expect("dir");
    // Room for eight 300 KB segments; the window and DVR hold four.
    let quota = 8 * 310_000;
    let store = Arc::new(DiskStore::open(dir.path().join("blocks"), Some(quota)).expect("store"));
    let signing = SigningKey::from_bytes(&[17; 32]);
    let mut secret = signing.to_bytes();
    let secret = ed25519::SecretKey::try_from_bytes(&mut secret).expect("secret");
    let node = Node::start(
        Config::new(ed25519::Keypair::from(secret).into()).loopback(),
        store.clone(),
        Arc::new(Free),
    )
    .await
    .expect("node");
    let mut config = PublisherConfig::default();
    config.window = 2;
    config.dvr = 2;
    let mut p = Publisher::new(node.clone(), signing, "dvr", None, config).expect("pub");
    let mut roots = Vec::new();
    for seq in 0..8u64 {
        let bytes: Vec<u8> = (0..300_000u64).map(|i| (i * 31 + seq * 7) as u8).collect();
        roots.push(p.push(bytes, 2000).await.expect("push").cid.expect("cid"));
    }
    let held = |cid| {
        let store = store.clone();
        async move {
            let mut all = std::pin::pin!(streamspace_shard::dag::walk(store.as_ref(), cid));
            let mut n = 0;
            while let Some(b) = futures::StreamExt::next(&mut all).await {
                if b.is_err() {
                    return false;
                }
                n += 1;
            }
            n > 0
        }
    };
    // Other writes, 128 KiB blocks numbered `from..to`: each evicts what is not held.
    let fill = |from: u32, to: u32| {
        let store = store.clone();
        async move {
            for i in from..to {
                let mut data = vec![0u8; 128 << 10];
                data[..4].copy_from_slice(&i.to_le_bytes());
                store
                    .put(Block::encode(cid::Version::V1, RAW, data.into()))
                    .await
                    .expect("a write that evicts what is not held");
            }
        }
    };
    // They fill the store twice over.
    fill(0, 40).await;
    for (seq, root) in roots.iter().enumerate() {
        let whole = held(*root).await;
        if seq >= 4 {
            assert!(
                whole,
                "segment {seq}, in the window or the DVR, lost a block"
            );
        } else {
            assert!(!whole, "segment {seq}, behind the DVR, was kept");
        }
    }
    // A publisher that goes away holds nothing.
    drop(p);
    fill(40, 80).await;
    assert!(
        !held(roots[7]).await,
        "a dropped publisher still holds its window"
    );
    node.shutdown().await;
}

/// A viewer rents a live event on the market and watches it: its gateway holds no key and asks
/// the event's key service for each epoch's as the player reaches it. Segments of the epochs
/// live during the rental play; a segment of an epoch before the rental began is refused
/// (403, the service's reason), and so is every segment once the rental has expired, while
/// the keys already released keep opening their own epochs only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_rental_opens_epochs_as_the_viewer_reaches_them() {
    use streamspace_ledger::local::{Clock, TREASURY};
    use streamspace_ledger::{
        Ledger, LedgerExt, LocalLedger, Operator, PublicKey, SystemClock, Timestamp, Transaction,
        TransactionId, TxKind,
    };
    use streamspace_market::message::{Listing, ListingId, Message, Share, Terms};
    use streamspace_market::service::{self, DeviceKey, KeyService};
    use streamspace_node::live_keys::{MarketLiveKeys, StreamEpochs};

    /// A clock the test moves: the rental's time, as the key service sees it.
    struct Manual(std::sync::Mutex<Timestamp>);
    impl Clock for Manual {
        fn now(&self) -> Timestamp {
            *self.0.lock().expect("clock")
        }
    }

    let dir = tempfile::tempdir().expect("dir");
    let tk = SigningKey::from_bytes(&[200; 32]);
    let ledger = LocalLedger::open(
        dir.path().join("l.redb"),
        PublicKey::from(&tk),
        Arc::new(SystemClock),
    )
    .expect("ledger");
    let treasury = Operator {
        account: TREASURY,
        key: tk,
    };
    let mut ops = Vec::new();
    for seed in [1u8, 2] {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let account = ledger
            .create_account(&treasury, PublicKey::from(&key), 10_000_000_000)
            .await
            .expect("account");
        ops.push(Operator { account, key });
    }
    let (seller, renter) = (&ops[0], &ops[1]);
    let tx = Transaction::new(
        TransactionId::generate(seller.account, ledger.now()),
        TxKind::CreateTopic {
            memo: "market".into(),
            submit_key: None,
        },
    );
    let topic = ledger
        .execute(tx, &[&seller.key])
        .await
        .expect("topic")
        .topic
        .expect("topic id");

    // The publisher: a stream of epochs of two segments.
    let signing = SigningKey::from_bytes(&[13; 32]);
    let pub_node = publisher_node(&signing).await;
    let viewer = node_with(Keypair::generate_ed25519(), Some(&pub_node)).await;
    let master = StreamKey::generate();
    let mut config = PublisherConfig::default();
    config.window = 6;
    config.epoch_len = 2;
    let mut p = Publisher::new(
        pub_node.clone(),
        signing,
        "final",
        Some(master.clone()),
        config,
    )
    .expect("pub");
    p.join().await.expect("topic");
    let stream = p.stream().clone();

    // Its listing, sold by a key service holding the stream's epoch keys.
    let event = Listing {
        id: ListingId {
            seller: seller.account,
            number: 1,
        },
        version: 1,
        content: StreamKey::label(&stream),
        title: "The final, live".into(),
        description: String::new(),
        tags: vec!["live".into()],
        price: 50_000_000,
        terms: Terms {
            rental_secs: Some(3600),
            devices: 1,
            regions: Vec::new(),
        },
        split: vec![Share {
            account: seller.account,
            bps: 10_000,
        }],
        royalty_bps: 0,
        key_service: PublicKey::from(&SigningKey::from_bytes(&[9; 32])),
    };
    let mut keys = KeyService::new(SigningKey::from_bytes(&[9; 32]), topic);
    keys.add_live(
        event.id,
        StreamEpochs::new(master.clone(), stream.clone(), 2),
    );
    let signed = service::list_live(&seller.key, event.clone()).expect("list");
    service::publish(&ledger, seller, topic, &signed)
        .await
        .expect("publish");
    // Epoch 0 (segments 0, 1) goes out before the viewer rents; epoch 1 is live when it does.
    let t0 = ledger.now();
    let at = |secs: i64| Timestamp {
        secs: t0.secs + secs,
        nanos: 0,
    };
    keys.live_edge(event.id, 0, at(-100)).expect("edge");
    for seq in 0..2 {
        p.push(segment_bytes(seq), 2000).await.expect("push");
    }
    keys.live_edge(event.id, 1, at(-10)).expect("edge");
    p.push(segment_bytes(2), 2000).await.expect("push");

    let renter_key = PublicKey::from(&renter.key);
    let payment = service::pay(&ledger, renter, &event, &renter_key)
        .await
        .expect("pay");
    keys.issue(&ledger, payment, renter_key)
        .await
        .expect("issue");
    let Message::License(license) = keys.license(&payment).expect("license").message.clone() else {
        panic!("not a license")
    };
    let clock = Arc::new(Manual(std::sync::Mutex::new(Timestamp {
        secs: license.start.secs + 1,
        nanos: 0,
    })));
    let service = Arc::new(std::sync::Mutex::new(keys));
    let app = router_with_live_keys(
        viewer.clone(),
        Arc::new(CacheStats::default()),
        Arc::new(Keyring::new()),
        Arc::new(MarketLiveKeys::new(
            service.clone(),
            stream.clone(),
            renter.key.clone(),
            payment,
            DeviceKey::generate(),
            [1; 16],
            clock.clone(),
        )),
    );
    p.push(segment_bytes(3), 2000).await.expect("push");
    playlist_until(&app, &stream, &mut p, |t| t.contains("3.ts")).await;
    let segment = |seq: u64| {
        let app = app.clone();
        let path = format!("/live/{stream}/{seq}.ts");
        async move { get(&app, &path).await }
    };
    // Epoch 1, live when the rental began, opens.
    for seq in [2, 3] {
        let (status, body) = segment(seq).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(body, segment_bytes(seq));
    }
    // Epoch 0 had ended: refused, with the service's reason.
    let (status, body) = segment(1).await;
    assert_eq!(status, 403);
    assert!(
        String::from_utf8_lossy(&body).contains("ended before license"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // The stream goes on into epoch 2, and its key is released as the viewer reaches it.
    service
        .lock()
        .expect("service")
        .live_edge(event.id, 2, at(30))
        .expect("edge");
    p.push(segment_bytes(4), 2000).await.expect("push");
    playlist_until(&app, &stream, &mut p, |t| t.contains("4.ts")).await;
    assert_eq!(segment(4).await.1, segment_bytes(4));
    // The rental expires: epoch 3 is not released, the epochs watched still play.
    service
        .lock()
        .expect("service")
        .live_edge(event.id, 3, at(60))
        .expect("edge");
    for seq in [5, 6] {
        p.push(segment_bytes(seq), 2000).await.expect("push");
    }
    playlist_until(&app, &stream, &mut p, |t| t.contains("6.ts")).await;
    *clock.0.lock().expect("clock") = license.expiry.expect("a rental");
    let (status, body) = segment(6).await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("not valid now"));
    assert_eq!(segment(3).await.1, segment_bytes(3));
    let (_, stats) = get(&app, &format!("/live/{stream}/stats.json")).await;
    let stats: serde_json::Value = serde_json::from_slice(&stats).expect("json");
    // Epochs 1 and 2 released once each; epoch 0 and epoch 3 refused.
    assert_eq!(stats["epochKeys"]["released"], 2, "{stats}");
    assert_eq!(stats["epochKeys"]["refused"], 2, "{stats}");
    viewer.shutdown().await;
    pub_node.shutdown().await;
}

/// A live ladder's master playlist names each rung's rendition stream of the same publisher,
/// and the player page plays it; a ladder that is not one is refused with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_ladder_is_served_as_a_master_playlist() {
    let viewer = node_with(Keypair::generate_ed25519(), None).await;
    let app = router_with_keys(
        viewer.clone(),
        Arc::new(CacheStats::default()),
        Arc::new(Keyring::new()),
    );
    let publisher = SigningKey::from_bytes(&[14; 32]);
    let stream = StreamId::new("final", &publisher.verifying_key()).expect("id");
    let (status, body) = get(
        &app,
        &format!("/live/{stream}/master.m3u8?ladder=480p@900k,720p"),
    )
    .await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body).expect("utf-8");
    let key = stream.to_string();
    let key = key.split_once('.').expect("NAME.KEY").1;
    // Tallest first, each a stream of its own by the same publisher.
    let want = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n\
         #EXT-X-STREAM-INF:BANDWIDTH={}\n../final-720p.{key}/index.m3u8\n\
         #EXT-X-STREAM-INF:BANDWIDTH={}\n../final-480p.{key}/index.m3u8\n",
        (streamspace_live::Rung::standard(720)
            .expect("rung")
            .video_kbps as u64
            + 64)
            * 1100,
        (900 + 64) * 1100
    );
    assert_eq!(text, want);
    let (status, page) = get(&app, &format!("/watch/live/{stream}?ladder=720p,480p@900k")).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains(&format!(
        "data-src=\"/live/{stream}/master.m3u8?ladder=720p,480p@900k\""
    )),);
    for bad in ["", "720p,720p", "9000p", "720p%22%3E%3Cscript%3E"] {
        let (status, body) = get(&app, &format!("/live/{stream}/master.m3u8?ladder={bad}")).await;
        assert_eq!(status, 400, "{bad}: {}", String::from_utf8_lossy(&body));
        assert_eq!(
            get(&app, &format!("/watch/live/{stream}?ladder={bad}"))
                .await
                .0,
            400,
            "{bad}"
        );
    }
    assert_eq!(
        get(&app, &format!("/live/{stream}/master.m3u8")).await.0,
        400
    );
    viewer.shutdown().await;
}

/// A key source that answers with the wrong key (another epoch's, or not an epoch key at
/// all): the segment is refused, nothing is decrypted with it, the answer is not kept (the
/// next request asks again) and the refusal is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_source_answering_with_the_wrong_key_opens_nothing() {
    use streamspace_node::live_keys::LiveKeys;
    use streamspace_shard::crypto::ContentKey;

    struct Lying {
        master: StreamKey,
        asked: std::sync::atomic::AtomicU64,
    }
    impl LiveKeys for Lying {
        fn epoch_key(
            &self,
            stream: &StreamId,
            epoch: u64,
        ) -> futures::future::BoxFuture<'static, Result<ContentKey, String>> {
            let n = self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // First the next epoch's key, then a content key that names no epoch.
            let k = if n == 0 {
                self.master.epoch_key(stream, 2, epoch + 1).to_content_key()
            } else {
                ContentKey::generate()
            };
            Box::pin(std::future::ready(Ok(k)))
        }
    }

    let signing = SigningKey::from_bytes(&[15; 32]);
    let pub_node = publisher_node(&signing).await;
    let viewer = node_with(Keypair::generate_ed25519(), Some(&pub_node)).await;
    let master = StreamKey::generate();
    let mut config = PublisherConfig::default();
    config.window = 4;
    config.epoch_len = 2;
    let mut p = Publisher::new(
        pub_node.clone(),
        signing,
        "lies",
        Some(master.clone()),
        config,
    )
    .expect("pub");
    p.join().await.expect("topic");
    let stream = p.stream().clone();
    for seq in 0..4 {
        p.push(segment_bytes(seq), 2000).await.expect("push");
    }
    let source = Arc::new(Lying {
        master,
        asked: 0.into(),
    });
    let app = router_with_live_keys(
        viewer.clone(),
        Arc::new(CacheStats::default()),
        Arc::new(Keyring::new()),
        source.clone(),
    );
    playlist_until(&app, &stream, &mut p, |t| t.contains("3.ts")).await;
    for _ in 0..2 {
        let (status, body) = get(&app, &format!("/live/{stream}/2.ts")).await;
        assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
        assert_ne!(body, segment_bytes(2));
    }
    assert_eq!(source.asked.load(std::sync::atomic::Ordering::SeqCst), 2);
    let (_, stats) = get(&app, &format!("/live/{stream}/stats.json")).await;
    let stats: serde_json::Value = serde_json::from_slice(&stats).expect("json");
    assert_eq!(stats["epochKeys"]["released"], 0, "{stats}");
    assert_eq!(stats["epochKeys"]["refused"], 2, "{stats}");
    viewer.shutdown().await;
    pub_node.shutdown().await;
}
