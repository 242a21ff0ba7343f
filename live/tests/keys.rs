//! Per-segment keys: derived from the stream key, rotated by epoch; a leaked epoch key opens
//! its epoch's segments and no others.

use opened::collect;
use streamspace_live::{EpochKey, StreamId, StreamKey, add_segment};
use streamspace_shard::crypto::ContentKey;
use streamspace_shard::store::MemoryStore;

mod opened {
    use streamspace_shard::crypto::{ContentKey, cat_decrypted};
    use streamspace_shard::export::ByteRange;
    use streamspace_shard::store::MemoryStore;

    /// The plaintext of a sealed segment, or `None` when `key` does not open it.
    pub(crate) async fn collect(
        store: &MemoryStore,
        cid: cid::Cid,
        key: &ContentKey,
    ) -> Option<Vec<u8>> {
        use futures::StreamExt;
        let mut out = Vec::new();
        let mut s = std::pin::pin!(cat_decrypted(store, cid, key, ByteRange::ALL));
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.ok()?);
        }
        Some(out)
    }
}

fn stream() -> StreamId {
    StreamId::new(
        "match",
        &ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key(),
    )
    .expect("id")
}

#[tokio::test]
async fn a_leaked_epoch_key_opens_only_its_epoch() {
    let store = MemoryStore::new();
    let master = StreamKey::generate();
    let s = stream();
    let epoch_len = 3;
    let mut roots = Vec::new();
    for seq in 0..9u64 {
        let plain = format!("segment {seq}").repeat(100).into_bytes();
        let key = master.segment_key(&s, epoch_len, seq);
        let cid = add_segment(Some(&store), plain.clone(), Some(key))
            .await
            .expect("add");
        roots.push((cid, plain));
    }
    // The viewer holding epoch 1 (segments 3, 4, 5) only.
    let leaked = master.epoch_key(&s, epoch_len, 1);
    for (seq, (cid, plain)) in roots.iter().enumerate() {
        let seq = seq as u64;
        match leaked.segment_key(seq) {
            Ok(k) => {
                assert!((3..6).contains(&seq));
                assert_eq!(collect(&store, *cid, &k).await.as_ref(), Some(plain));
            }
            Err(e) => {
                assert!(!(3..6).contains(&seq));
                assert_eq!(e.epoch, 1);
            }
        }
    }
    // Even deriving past the epoch check (the same derivation with another sequence number
    // inside the epoch key's reach) opens nothing of another epoch.
    for seq in [0u64, 2, 6, 8] {
        let in_epoch = leaked.segment_key(3 + seq % 3).expect("in epoch");
        assert_eq!(
            collect(&store, roots[seq as usize].0, &in_epoch).await,
            None
        );
    }
    // Keys of another stream, or another epoch length, open nothing.
    let other = StreamId::new(
        "other",
        &ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key(),
    )
    .expect("id");
    let k = master.segment_key(&other, epoch_len, 4);
    assert_eq!(collect(&store, roots[4].0, &k).await, None);
    let k = master.segment_key(&s, 4, 4);
    assert_eq!(collect(&store, roots[4].0, &k).await, None);
}

#[test]
fn keys_travel_as_key_files_under_their_labels() {
    let master = StreamKey::from_bytes([5; 32]);
    let s = stream();
    let text = master
        .to_content_key()
        .to_key_file(Some(&StreamKey::label(&s)));
    let (back, root) = ContentKey::from_key_file(&text).expect("reads");
    assert_eq!(root, Some(StreamKey::label(&s)));
    let back = StreamKey::from_content_key(&back);
    assert_eq!(
        back.segment_key(&s, 10, 42).key_bytes(),
        master.segment_key(&s, 10, 42).key_bytes()
    );
    let e = master.epoch_key(&s, 10, 4);
    let text = e
        .to_content_key()
        .to_key_file(Some(&EpochKey::label(&s, 4)));
    let (ck, root) = ContentKey::from_key_file(&text).expect("reads");
    assert_eq!(root, Some(EpochKey::label(&s, 4)));
    let e2 = EpochKey::from_content_key(&ck).expect("epoch key");
    assert_eq!((e2.epoch(), e2.epoch_len()), (4, 10));
    assert_eq!(
        e2.segment_key(42).expect("42 is in epoch 4").item_id(),
        master.segment_key(&s, 10, 42).item_id()
    );
    assert_ne!(EpochKey::label(&s, 4), EpochKey::label(&s, 5));
    assert_ne!(StreamKey::label(&s), EpochKey::label(&s, 0));
    assert!(!format!("{master:?}{e:?}").contains("05"));
}
