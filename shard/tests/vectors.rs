//! Known CIDs that kubo and the JS importer give for the same bytes and options.

use streamspace_shard::import::{
    DirEntry, ImportOptions, Imported, Layout, Profile, build_directory, import_file,
};

fn cid_of(data: &[u8], opts: &ImportOptions) -> String {
    import_file(data, opts, |_| Ok(())).unwrap().cid.to_string()
}

#[test]
fn empty_file_v0() {
    assert_eq!(
        cid_of(b"", &ImportOptions::default()),
        "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
    );
}

#[test]
fn hello_world_v0() {
    assert_eq!(
        cid_of(b"hello world\n", &ImportOptions::default()),
        "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
    );
}

#[test]
fn empty_file_v1_is_the_empty_raw_block() {
    let v1 = ImportOptions::default().with_cid_version(1).unwrap();
    assert_eq!(
        cid_of(b"", &v1),
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    );
}

#[test]
fn empty_directory() {
    let root = build_directory(Vec::new(), &ImportOptions::default(), |_| Ok(())).unwrap();
    assert_eq!(
        root.cid.to_string(),
        "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
    );
}

#[test]
fn single_chunk_with_raw_leaves_is_the_raw_leaf() {
    let mut opts = ImportOptions::default();
    opts.raw_leaves = true;
    let cid = import_file(&b"hello world\n"[..], &opts, |_| Ok(()))
        .unwrap()
        .cid;
    assert_eq!(cid.codec(), streamspace_shard::block::RAW);
}

#[test]
fn trickle_single_chunk_keeps_a_root_node() {
    let mut opts = ImportOptions::default();
    opts.layout = Layout::Trickle;
    let mut blocks = 0;
    import_file(&b"hello"[..], &opts, |_| {
        blocks += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(blocks, 2, "a raw-type leaf and a file root");
}

#[test]
fn balanced_block_counts_at_layer_boundaries() {
    let mut opts = ImportOptions::default();
    opts.chunker = streamspace_shard::import::Chunker::Size(16);
    opts.max_links = 4;
    // leaves -> blocks (leaves + internal nodes)
    for (leaves, blocks) in [(1, 1), (2, 3), (4, 5), (5, 8), (16, 21), (17, 25)] {
        let data = vec![7u8; leaves * 16];
        let mut n = 0;
        import_file(&data[..], &opts, |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        // Identical leaves dedupe by CID in a store, but the importer emits each one.
        assert_eq!(n, blocks, "{leaves} leaves");
    }
}

#[test]
fn profiles_parse() {
    assert_eq!(
        "unixfs-v1-2025".parse::<Profile>().unwrap(),
        Profile::UnixfsV1_2025
    );
    assert!("nope".parse::<Profile>().is_err());
}

#[test]
fn duplicate_directory_names_are_refused() {
    let file = import_file(&b"x"[..], &ImportOptions::default(), |_| Ok(())).unwrap();
    let e = |name: &str, root: Imported| DirEntry {
        name: name.into(),
        root,
    };
    assert!(
        build_directory(
            vec![e("a", file), e("a", file)],
            &ImportOptions::default(),
            |_| Ok(())
        )
        .is_err()
    );
    assert!(build_directory(vec![e("a/b", file)], &ImportOptions::default(), |_| Ok(())).is_err());
}
