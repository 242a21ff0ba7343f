//! Update verification: a 64 MiB image checked against its release, read from a file in
//! 256 KiB pieces (as a device reads its inactive slot back), against GNU `sha256sum` on the
//! same file in the same run; and the device's whole check after a fetch (every block against
//! its CID, then the image's size and digest, streamed from the store).
//!
//! `cargo bench -p streamspace-benches --bench update`

use std::io::Read;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::TryStreamExt;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use streamspace_shard::Block;
use streamspace_shard::export::{ByteRange, cat};
use streamspace_shard::import::ImportOptions;
use streamspace_shard::pb::PbNode;
use streamspace_shard::store::{BlockStore, MemoryStore, add_reader};
use streamspace_update::verify::ImageVerifier;

const SIZE: usize = 64 << 20;
const PIECE: usize = 256 << 10;

fn verify_file(path: &std::path::Path, digest: [u8; 32]) {
    let mut f = std::fs::File::open(path).expect("image");
    let mut v = ImageVerifier::new(SIZE as u64, digest);
    let mut buf = vec![0u8; PIECE];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        v.update(&buf[..n]).expect("size");
    }
    v.finish().expect("digest");
}

fn bench(c: &mut Criterion) {
    let mut image = vec![0u8; SIZE];
    rand::rngs::StdRng::seed_from_u64(64).fill_bytes(&mut image);
    let digest: [u8; 32] = Sha256::digest(&image).into();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("image.bin");
    std::fs::write(&path, &image).expect("write image");
    let expected = hex(&digest);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = MemoryStore::new();
    let root = rt
        .block_on(add_reader(
            Some(&store),
            std::io::Cursor::new(image.clone()),
            ImportOptions::default(),
        ))
        .expect("import")
        .cid;

    let mut g = c.benchmark_group("update_verify_64mib");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Bytes(SIZE as u64));
    g.bench_function("sha256sum", |b| {
        b.iter(|| {
            let out = std::process::Command::new("sha256sum")
                .arg(&path)
                .output()
                .expect("sha256sum");
            assert!(String::from_utf8_lossy(&out.stdout).starts_with(&expected));
        })
    });
    g.bench_function("image_verifier_file", |b| {
        b.iter(|| verify_file(&path, digest))
    });
    g.bench_function("blocks_then_image", |b| {
        b.to_async(&rt).iter(|| async {
            // Every block against its CID (what the fetch does on arrival)...
            let mut stack = vec![root];
            while let Some(cid) = stack.pop() {
                let data = store.get(&cid).await.expect("store").expect("block");
                let block = Block::new(cid, data).expect("verified");
                if cid.codec() == 0x70 {
                    let node = PbNode::decode(block.data().clone()).expect("dag-pb");
                    stack.extend(node.links.iter().map(|l| l.cid));
                }
            }
            // ...then the whole image streamed from the store.
            let mut v = ImageVerifier::new(SIZE as u64, digest);
            let mut parts = std::pin::pin!(cat(&store, root, ByteRange::new(0, None)));
            while let Some(p) = parts.try_next().await.expect("cat") {
                v.update(&p).expect("size");
            }
            v.finish().expect("digest");
        })
    });
    g.finish();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

criterion_group!(benches, bench);
criterion_main!(benches);
