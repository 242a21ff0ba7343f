//! Two nodes on loopback, one fetching a 256 MiB file from the other, against a plain TCP copy
//! of the same bytes over loopback in the same run: the ratio is what the encrypted (noise),
//! multiplexed (yamux), verified exchange costs. Beside them, in the same run, the work no
//! encrypted, verified transfer avoids, on one core: SHA-256 over the 256 KiB blocks (the
//! receiver's verification) and ChaCha20-Poly1305 sealing and opening in noise's 64 KiB frames
//! (noise's cipher, from the same RustCrypto crate).
//!
//! `cargo bench -p streamspace-benches --bench transport`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use streamspace_shard::import::ImportOptions;
use streamspace_shard::store::{MemoryStore, add_reader};
use streamspace_transport::meter::Free;
use streamspace_transport::{Config, FetchOptions, Keypair, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIZE: usize = 256 * 1024 * 1024;

fn loopback() -> Config {
    Config::new(Keypair::generate_ed25519()).loopback()
}

async fn tcp_copy(data: Arc<Vec<u8>>) -> Duration {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        for chunk in data.chunks(256 * 1024) {
            s.write_all(chunk).await.expect("write");
        }
    });
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    while got < SIZE {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "early end");
        got += n;
    }
    sender.await.expect("sender");
    start.elapsed()
}

fn transfer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let data: Arc<Vec<u8>> = Arc::new((0..SIZE).map(|i| (i * 7 + i / 4093) as u8).collect());
    let (seeder, root) = rt.block_on(async {
        let seeder = Node::start(loopback(), Arc::new(MemoryStore::new()), Arc::new(Free))
            .await
            .expect("seeder");
        let root = add_reader(
            Some(seeder.store().as_ref()),
            std::io::Cursor::new(data.as_ref().clone()),
            ImportOptions::default(),
        )
        .await
        .expect("import")
        .cid;
        (seeder, root)
    });
    let addr = rt.block_on(seeder.dialable_addrs()).expect("addrs")[0].clone();

    let mut g = c.benchmark_group("loopback_256MiB");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("plain_tcp_copy", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let data = data.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += tcp_copy(data.clone()).await;
                }
                total
            }
        })
    });
    g.bench_function("sha256_blocks_one_core", |b| {
        use sha2::{Digest, Sha256};
        b.iter(|| {
            let mut last = [0u8; 32];
            for block in data.chunks(256 * 1024) {
                last = Sha256::digest(block).into();
            }
            last
        })
    });
    g.bench_function("chacha20poly1305_seal_open_one_core", |b| {
        use chacha20poly1305::aead::{AeadInPlace, KeyInit};
        use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
        // Noise's transport messages: at most 65,535 bytes, 16 of them the tag.
        const FRAME: usize = 65_535 - 16;
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&[7; 32]));
        let mut buf = vec![0u8; FRAME];
        b.iter(|| {
            for (i, frame) in data.chunks(FRAME).enumerate() {
                let nonce = {
                    let mut n = [0u8; 12];
                    n[4..].copy_from_slice(&(i as u64).to_le_bytes());
                    n
                };
                let part = &mut buf[..frame.len()];
                part.copy_from_slice(frame);
                let tag = cipher
                    .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"", part)
                    .expect("seal");
                cipher
                    .decrypt_in_place_detached(Nonce::from_slice(&nonce), b"", part, &tag)
                    .expect("open");
            }
        })
    });
    g.bench_function("fetch_verified", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let addr = addr.clone();
            let seeder_id = seeder.peer_id();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let viewer =
                        Node::start(loopback(), Arc::new(MemoryStore::new()), Arc::new(Free))
                            .await
                            .expect("viewer");
                    viewer.dial(addr.clone()).await.expect("dial");
                    let start = Instant::now();
                    let report = viewer
                        .fetch(
                            root,
                            FetchOptions {
                                peers: vec![seeder_id],
                                use_dht: false,
                                ..FetchOptions::default()
                            },
                        )
                        .await
                        .expect("fetch");
                    total += start.elapsed();
                    assert_eq!(
                        report.fetched, 1031,
                        "1,024 leaves, 6 inner nodes, the root"
                    );
                    viewer.shutdown().await;
                }
                total
            }
        })
    });
    g.finish();
    rt.block_on(seeder.shutdown());
}

criterion_group!(benches, transfer);
criterion_main!(benches);
