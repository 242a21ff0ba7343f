//! Import/export, range, CAR and encryption round-trips, with proptest.

use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use proptest::prelude::*;
use streamspace_shard::car::{CarDecoder, read_car, write_car};
use streamspace_shard::crypto::{
    ContentKey, CryptoError, EncryptingReader, PLAIN_CHUNK, cat_decrypted, encrypted_options,
};
use streamspace_shard::dag::{ExportError, resolve};
use streamspace_shard::export::{ByteRange, cat};
use streamspace_shard::import::{ImportOptions, Layout};
use streamspace_shard::store::{BlockStore, MemoryStore, add_path, add_reader};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn read_all(
    store: &MemoryStore,
    cid: cid::Cid,
    range: ByteRange,
) -> Result<Vec<u8>, ExportError> {
    let parts: Vec<Bytes> = cat(store, cid, range).try_collect().await?;
    Ok(parts.concat())
}

fn small_opts(layout: Layout, raw: bool, v1: bool) -> ImportOptions {
    let mut o = ImportOptions::default();
    if v1 {
        o = o.with_cid_version(1).unwrap();
    }
    o.raw_leaves = raw;
    o.chunker = streamspace_shard::import::Chunker::Size(64);
    o.max_links = 3;
    o.layout = layout;
    o
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn import_export_and_ranges(
        len in 0usize..3000,
        seed in any::<u64>(),
        trickle in any::<bool>(),
        raw in any::<bool>(),
        v1 in any::<bool>(),
        offset in 0usize..3100,
        length in proptest::option::of(0usize..3100),
    ) {
        let layout = if trickle { Layout::Trickle } else { Layout::Balanced };
        let opts = small_opts(layout, raw, v1);
        let input = data(len, seed);
        rt().block_on(async {
            let store = MemoryStore::new();
            let root = add_reader(Some(&store), std::io::Cursor::new(input.clone()), opts).await.unwrap();
            prop_assert_eq!(root.size, len as u64);
            let all = read_all(&store, root.cid, ByteRange::ALL).await.unwrap();
            prop_assert_eq!(&all, &input);
            let got = read_all(&store, root.cid, ByteRange::new(offset as u64, length.map(|l| l as u64))).await;
            if offset > len {
                let past_end = matches!(got, Err(ExportError::OffsetPastEnd { .. }));
                prop_assert!(past_end);
            } else {
                let end = length.map_or(len, |l| (offset + l).min(len));
                prop_assert_eq!(got.unwrap(), input[offset..end].to_vec());
            }
            // CAR round-trip into a fresh store.
            let mut car = Vec::new();
            let summary = write_car(&store, root.cid, &mut car).await.unwrap();
            prop_assert_eq!(summary.bytes as usize, car.len());
            let other = MemoryStore::new();
            let read = read_car(&car[..], &other).await.unwrap();
            prop_assert_eq!(read.roots, vec![root.cid]);
            prop_assert_eq!(read.blocks, summary.blocks);
            prop_assert_eq!(read_all(&other, root.cid, ByteRange::ALL).await.unwrap(), input);
            Ok(())
        })?;
    }

    #[test]
    fn car_decoder_never_panics_on_truncation(len in 0usize..2000, cut in 0usize..4000, seed in any::<u64>()) {
        rt().block_on(async {
            let store = MemoryStore::new();
            let root = add_reader(Some(&store), std::io::Cursor::new(data(len, seed)), small_opts(Layout::Balanced, false, false)).await.unwrap();
            let mut car = Vec::new();
            write_car(&store, root.cid, &mut car).await.unwrap();
            let cut = cut.min(car.len());
            let all = read_car(&car[..], &MemoryStore::new()).await.unwrap().blocks;
            match read_car(&car[..cut], &MemoryStore::new()).await {
                // A cut at a section boundary is a well-formed CAR with fewer blocks (the
                // missing blocks are then reported by whoever walks the DAG).
                Ok(summary) => prop_assert!(cut == car.len() || summary.blocks < all),
                Err(e) => {
                    prop_assert!(cut < car.len());
                    let named = matches!(e, streamspace_shard::car::CarError::Truncated { .. });
                    prop_assert!(named, "{e}");
                }
            }
            Ok(())
        })?;
    }

    #[test]
    fn encrypted_ranges(len in 0usize..(3 * PLAIN_CHUNK), offset in 0usize..(3 * PLAIN_CHUNK), length in 0usize..(PLAIN_CHUNK + 10)) {
        let input = data(len, len as u64);
        rt().block_on(async {
            let store = MemoryStore::new();
            let key = ContentKey::generate();
            let sealed = EncryptingReader::new(std::io::Cursor::new(input.clone()), key.clone());
            let root = add_reader(Some(&store), sealed, encrypted_options(ImportOptions::default())).await.unwrap();
            let got: Result<Vec<Bytes>, CryptoError> =
                cat_decrypted(&store, root.cid, &key, ByteRange::new(offset as u64, Some(length as u64))).try_collect().await;
            if offset > len {
                let past_end = matches!(got, Err(CryptoError::OffsetPastEnd { .. }));
                prop_assert!(past_end);
            } else {
                let end = (offset + length).min(len);
                prop_assert_eq!(got.unwrap().concat(), input[offset..end].to_vec());
            }
            Ok(())
        })?;
    }
}

#[test]
fn encrypted_with_wrong_key_or_swapped_shards_fails_opaquely() {
    rt().block_on(async {
        let input = data(PLAIN_CHUNK * 2 + 100, 5);
        let store = MemoryStore::new();
        let key = ContentKey::generate();
        let sealed = EncryptingReader::new(std::io::Cursor::new(input.clone()), key.clone());
        let root = add_reader(
            Some(&store),
            sealed,
            encrypted_options(ImportOptions::default()),
        )
        .await
        .unwrap();
        let wrong = ContentKey::generate();
        let r: Result<Vec<Bytes>, _> = cat_decrypted(&store, root.cid, &wrong, ByteRange::ALL)
            .try_collect()
            .await;
        assert!(matches!(r, Err(CryptoError::Decrypt(_))));

        // Same key, different item id: shards of one item do not open as another's.
        let other_item = ContentKey::from_parts(*key.key_bytes(), [9; 16]);
        let r: Result<Vec<Bytes>, _> = cat_decrypted(&store, root.cid, &other_item, ByteRange::ALL)
            .try_collect()
            .await;
        assert!(matches!(r, Err(CryptoError::Decrypt(_))));

        // A shard opened at the wrong index fails.
        let s0 = key.seal_chunk(0, false, b"abc");
        assert!(key.open_chunk(1, false, &s0).is_err());
        assert!(
            key.open_chunk(0, true, &s0).is_err(),
            "truncation is detected"
        );
        assert_eq!(key.open_chunk(0, false, &s0).unwrap(), b"abc");
    });
}

#[test]
fn corrupt_block_is_detected_before_bytes_are_returned() {
    rt().block_on(async {
        let store = MemoryStore::new();
        let input = data(1000, 1);
        let root = add_reader(
            Some(&store),
            std::io::Cursor::new(input),
            small_opts(Layout::Balanced, true, true),
        )
        .await
        .unwrap();
        // Corrupt the second leaf.
        let leaf = streamspace_shard::dag::walk(&store, root.cid)
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .into_iter()
            .filter(|(c, _)| c.codec() == streamspace_shard::block::RAW)
            .nth(1)
            .unwrap()
            .0;
        store.insert_unchecked(leaf, Bytes::from(vec![0u8; 64]));
        let mut stream = std::pin::pin!(cat(&store, root.cid, ByteRange::ALL));
        let first = stream.try_next().await.unwrap().unwrap();
        assert_eq!(first.len(), 64);
        let err = stream.try_next().await.unwrap_err();
        assert!(
            err.to_string().contains(&leaf.to_string()),
            "error names the CID: {err}"
        );
        // Missing block.
        store.delete(&leaf).await.unwrap();
        let r = read_all(&store, root.cid, ByteRange::ALL).await;
        assert!(matches!(r, Err(ExportError::MissingBlock(c)) if c == leaf));
    });
}

#[test]
fn directory_tree_and_paths() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("site");
        std::fs::create_dir_all(top.join("a/b")).unwrap();
        std::fs::create_dir_all(top.join("empty")).unwrap();
        std::fs::write(top.join("a/b/c.txt"), b"deep").unwrap();
        std::fs::write(top.join("index.html"), b"<html>").unwrap();
        std::fs::write(top.join(".hidden"), b"secret").unwrap();
        let store = MemoryStore::new();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let root = add_path(
            Some(&store),
            top.clone(),
            ImportOptions::default(),
            false,
            move |p, _| s2.lock().unwrap().push(p.to_string_lossy().into_owned()),
        )
        .await
        .unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.last().map(String::as_str), Some("site"));
        assert!(!seen.iter().any(|p| p.contains(".hidden")));
        let c = resolve(&store, &root.cid, "a/b/c.txt").await.unwrap();
        assert_eq!(read_all(&store, c, ByteRange::ALL).await.unwrap(), b"deep");
        assert!(matches!(
            resolve(&store, &root.cid, "a/nope").await,
            Err(ExportError::NotFound { .. })
        ));
        assert!(matches!(
            read_all(&store, root.cid, ByteRange::ALL).await,
            Err(ExportError::WrongType { .. })
        ));
    });
}

#[test]
fn hamt_directory_resolves_every_entry() {
    use streamspace_shard::import::{DirEntry, build_directory, import_file};
    rt().block_on(async {
        let store = MemoryStore::new();
        let mut opts = ImportOptions::default();
        opts.hamt_threshold = 1000; // force sharding with few entries
        let mut blocks = Vec::new();
        let mut entries = Vec::new();
        for i in 0..300 {
            let content = format!("file {i}");
            let root = import_file(content.as_bytes(), &opts, |b| {
                blocks.push(b);
                Ok(())
            })
            .unwrap();
            entries.push(DirEntry {
                name: format!("f{i}.txt"),
                root,
            });
        }
        let dir = build_directory(entries, &opts, |b| {
            blocks.push(b);
            Ok(())
        })
        .unwrap();
        store.put_many(blocks).await.unwrap();
        for i in [0, 1, 150, 299] {
            let c = resolve(&store, &dir.cid, &format!("f{i}.txt"))
                .await
                .unwrap();
            assert_eq!(
                read_all(&store, c, ByteRange::ALL).await.unwrap(),
                format!("file {i}").into_bytes()
            );
        }
        assert!(resolve(&store, &dir.cid, "f300.txt").await.is_err());
    });
}

#[test]
fn car_rejects_tampered_block_with_offset() {
    rt().block_on(async {
        let store = MemoryStore::new();
        let root = add_reader(
            Some(&store),
            std::io::Cursor::new(data(500, 3)),
            small_opts(Layout::Balanced, false, false),
        )
        .await
        .unwrap();
        let mut car = Vec::new();
        write_car(&store, root.cid, &mut car).await.unwrap();
        let last = car.len() - 1;
        car[last] ^= 1;
        let mut buf = BytesMut::from(&car[..]);
        let mut dec = CarDecoder::new();
        let err = loop {
            match dec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("tamper not detected"),
                Err(e) => break e,
            }
        };
        assert!(err.to_string().contains("block at byte"), "{err}");
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Parallel sealing gives the same DAG as the serial `EncryptingReader`.
    #[test]
    fn parallel_encrypted_import_equals_the_sealed_stream(len in prop_oneof![Just(0usize), Just(PLAIN_CHUNK), Just(9 * PLAIN_CHUNK), 0usize..(12 * PLAIN_CHUNK)]) {
        use streamspace_shard::crypto::import_encrypted;
        use streamspace_shard::import::import_file;
        let input = data(len, 77);
        let key = ContentKey::from_parts([4; 32], [5; 16]);
        let opts = ImportOptions::default().with_cid_version(1).unwrap();
        let serial = import_file(EncryptingReader::new(&input[..], key.clone()), &encrypted_options(opts.clone()), |_| Ok(())).unwrap();
        let parallel = import_encrypted(&input[..], &key, &opts, |_| Ok(())).unwrap();
        prop_assert_eq!(serial, parallel);
    }
}
