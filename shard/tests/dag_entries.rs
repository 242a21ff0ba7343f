//! Listing directories: flat and HAMT-sharded ones read back entry by entry, and hostile
//! entry names refused.

use cid::Version;
use streamspace_shard::Block;
use streamspace_shard::block::{DAG_PB, cid_of};
use streamspace_shard::dag::{Entity, ExportError, entity, entries};
use streamspace_shard::import::{DirEntry, ImportOptions, build_directory};
use streamspace_shard::pb::{DataType, PbLink, PbNode, UnixFsData};
use streamspace_shard::store::{BlockStore, MemoryStore, add_reader};

async fn dir_of(store: &MemoryStore, n: usize, opts: &ImportOptions) -> cid::Cid {
    let mut list = Vec::new();
    for i in 0..n {
        let text = std::io::Cursor::new(format!("file {i}").into_bytes());
        let f = add_reader(Some(store), text, opts.clone()).await.unwrap();
        list.push(DirEntry {
            name: format!("f{i:04}.txt"),
            root: f,
        });
    }
    let mut blocks = Vec::new();
    let dir = build_directory(list, opts, |b| {
        blocks.push(b);
        Ok(())
    })
    .unwrap();
    store.put_many(blocks).await.unwrap();
    dir.cid
}

#[tokio::test]
async fn flat_and_sharded_directories_list_every_entry() {
    for threshold in [usize::MAX, 64] {
        let store = MemoryStore::new();
        let mut opts = ImportOptions::default();
        opts.hamt_threshold = threshold;
        let dir = dir_of(&store, 300, &opts).await;
        let mut names: Vec<String> = entries(&store, &dir)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        names.sort();
        let want: Vec<String> = (0..300).map(|i| format!("f{i:04}.txt")).collect();
        assert_eq!(names, want, "threshold {threshold}");
        assert!(matches!(
            entity(&store, &dir).await.unwrap(),
            Entity::Directory { .. }
        ));
    }
}

#[tokio::test]
async fn names_that_leave_the_tree_are_refused() {
    let store = MemoryStore::new();
    let f = add_reader(Some(&store), &b"x"[..], ImportOptions::default())
        .await
        .unwrap();
    assert_eq!(
        entity(&store, &f.cid).await.unwrap(),
        Entity::File {
            size: 1,
            mode: None,
            mtime: None
        }
    );
    for bad in ["..", ".", "", "a/b", "../../etc/passwd", "nul\0byte"] {
        let node = PbNode {
            links: vec![PbLink::new(f.cid, bad, 1)],
            data: Some(UnixFsData::new(DataType::Directory).encode()),
        };
        let bytes = node.encode();
        let cid = cid_of(Version::V1, DAG_PB, &bytes);
        store.put(Block::new(cid, bytes).unwrap()).await.unwrap();
        match entries(&store, &cid).await {
            Err(ExportError::BadName { name, .. }) => assert_eq!(name, bad),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_file_is_not_a_directory() {
    let store = MemoryStore::new();
    let f = add_reader(
        Some(&store),
        std::io::Cursor::new(vec![7u8; 300_000]),
        ImportOptions::default(),
    )
    .await
    .unwrap();
    assert!(matches!(
        entries(&store, &f.cid).await,
        Err(ExportError::WrongType { .. })
    ));
    assert!(matches!(
        entity(&store, &f.cid).await.unwrap(),
        Entity::File { size: 300_000, .. }
    ));
}
