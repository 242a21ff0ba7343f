//! Criterion benchmarks of `streamspace-shard`, each beside the reference it is judged against:
//! import vs. a single-threaded sha2-256 of the same bytes, sealing vs. raw
//! XChaCha20-Poly1305, export vs. a memcpy-free read of the same blocks.

use std::hint::black_box;

use bytes::Bytes;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sha2::{Digest, Sha256};
use streamspace_shard::crypto::{ContentKey, EncryptingReader, PLAIN_CHUNK, encrypted_options};
use streamspace_shard::export::{ByteRange, cat};
use streamspace_shard::import::{ImportOptions, import_file};
use streamspace_shard::pb::PbNode;
use streamspace_shard::store::{MemoryStore, add_reader};

const LEN: usize = 32 << 20;

fn input() -> Vec<u8> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

fn import(c: &mut Criterion) {
    let data = input();
    let mut g = c.benchmark_group("import_32MiB");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.sample_size(10);
    g.bench_function("sha256_single_thread_reference", |b| {
        b.iter(|| black_box(Sha256::digest(&data)))
    });
    let v1 = ImportOptions::default().with_cid_version(1).expect("v1");
    g.bench_function("only_hash_cidv1", |b| {
        b.iter(|| import_file(&data[..], &v1, |_| Ok(())).expect("import"))
    });
    g.bench_function("only_hash_cidv0", |b| {
        b.iter(|| import_file(&data[..], &ImportOptions::default(), |_| Ok(())).expect("import"))
    });
    let key = ContentKey::from_parts([1; 32], [2; 16]);
    g.bench_function("encrypted_only_hash", |b| {
        b.iter(|| {
            let sealed = EncryptingReader::new(&data[..], key.clone());
            import_file(sealed, &encrypted_options(v1.clone()), |_| Ok(())).expect("import")
        })
    });
    g.finish();
}

fn crypto(c: &mut Criterion) {
    let chunk = vec![7u8; PLAIN_CHUNK];
    let key = ContentKey::from_parts([1; 32], [2; 16]);
    let mut g = c.benchmark_group("shard_256KiB");
    g.throughput(Throughput::Bytes(PLAIN_CHUNK as u64));
    g.bench_function("xchacha20poly1305_reference", |b| {
        let cipher = XChaCha20Poly1305::new(&[1u8; 32].into());
        let mut buf = chunk.clone();
        b.iter(|| {
            cipher
                .encrypt_in_place_detached(XNonce::from_slice(&[0; 24]), b"", &mut buf)
                .expect("seal")
        })
    });
    g.bench_function("seal_chunk", |b| {
        b.iter(|| key.seal_chunk(3, false, &chunk))
    });
    let sealed = key.seal_chunk(3, false, &chunk);
    g.bench_function("open_chunk", |b| {
        b.iter(|| key.open_chunk(3, false, &sealed).expect("open"))
    });
    g.finish();
}

fn export(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let data = input();
    let store = MemoryStore::new();
    let v1 = ImportOptions::default().with_cid_version(1).expect("v1");
    let root = rt
        .block_on(add_reader(
            Some(&store),
            std::io::Cursor::new(data.clone()),
            v1,
        ))
        .expect("add");
    let mut g = c.benchmark_group("cat_32MiB");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.sample_size(10);
    g.bench_function("sha256_single_thread_reference", |b| {
        b.iter(|| black_box(Sha256::digest(&data)))
    });
    g.bench_function("cat_verified", |b| {
        b.iter(|| {
            rt.block_on(async {
                use futures::StreamExt;
                let mut n = 0;
                let mut s = std::pin::pin!(cat(&store, root.cid, ByteRange::ALL));
                while let Some(b) = s.next().await {
                    n += b.expect("block").len();
                }
                assert_eq!(n, LEN);
            })
        })
    });
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut blocks = Vec::new();
    let data = input();
    import_file(&data[..(8 << 20)], &ImportOptions::default(), |b| {
        blocks.push(b);
        Ok(())
    })
    .expect("import");
    let root: Bytes = blocks.last().expect("root").data().clone();
    c.bench_function("dag_pb_decode_root_32_links", |b| {
        b.iter(|| PbNode::decode(root.clone()).expect("decode"))
    });
}

criterion_group!(benches, import, crypto, export, decode);
criterion_main!(benches);
