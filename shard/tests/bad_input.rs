//! Untrusted DAGs and archives: lying sizes, oversized blocks, CARv2 containers, key files.

use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use streamspace_shard::block::{Block, DAG_PB, MAX_BLOCK_SIZE, RAW};
use streamspace_shard::car::{CARV2_PRAGMA, CarError, encode_header, encode_section, read_car};
use streamspace_shard::crypto::{ContentKey, KeyFileError};
use streamspace_shard::dag::{ExportError, fetch};
use streamspace_shard::export::{ByteRange, cat};
use streamspace_shard::pb::{DataType, PbLink, PbNode, UnixFsData};
use streamspace_shard::store::{BlockStore, MemoryStore};

fn raw(data: &'static [u8]) -> Block {
    Block::encode(cid::Version::V1, RAW, Bytes::from_static(data))
}

fn file_node(links: &[&Block], blocksizes: Vec<u64>, filesize: Option<u64>) -> Block {
    let mut fs = UnixFsData::new(DataType::File);
    fs.blocksizes = blocksizes;
    fs.filesize = filesize;
    let node = PbNode {
        links: links
            .iter()
            .map(|b| PbLink::new(*b.cid(), "", b.data().len() as u64))
            .collect(),
        data: Some(fs.encode()),
    };
    Block::encode(cid::Version::V1, DAG_PB, node.encode())
}

async fn read(store: &MemoryStore, root: &Block) -> Result<Vec<u8>, ExportError> {
    let parts: Vec<Bytes> = cat(store, *root.cid(), ByteRange::ALL)
        .try_collect()
        .await?;
    Ok(parts.concat())
}

#[tokio::test]
async fn lying_block_sizes_are_refused_not_served() {
    let (a, b) = (raw(b"abcd"), raw(b"efgh"));
    let store = MemoryStore::new();
    store.put_many(vec![a.clone(), b.clone()]).await.unwrap();

    let honest = file_node(&[&a, &b], vec![4, 4], Some(8));
    store.put(honest.clone()).await.unwrap();
    assert_eq!(read(&store, &honest).await.unwrap(), b"abcdefgh");

    // A parent claiming a child holds 5 bytes when it holds 4.
    let lying_child = file_node(&[&a, &b], vec![5, 3], Some(8));
    store.put(lying_child.clone()).await.unwrap();
    let err = read(&store, &lying_child).await.unwrap_err();
    assert!(
        matches!(err, ExportError::SizeMismatch { cid, .. } if cid == *a.cid()),
        "{err}"
    );

    // filesize disagreeing with the blocksizes.
    let lying_total = file_node(&[&a, &b], vec![4, 4], Some(9));
    store.put(lying_total.clone()).await.unwrap();
    assert!(matches!(
        read(&store, &lying_total).await,
        Err(ExportError::SizeMismatch { .. })
    ));

    // Fewer blocksizes than links.
    let short = file_node(&[&a, &b], vec![4], None);
    store.put(short.clone()).await.unwrap();
    assert!(matches!(
        read(&store, &short).await,
        Err(ExportError::SizeMismatch { .. })
    ));

    // A range read of a lying node fails the same way rather than returning wrong bytes.
    let parts: Result<Vec<Bytes>, _> = cat(&store, *lying_child.cid(), ByteRange::new(4, Some(2)))
        .try_collect()
        .await;
    assert!(parts.is_err());
}

#[tokio::test]
async fn oversized_blocks_are_refused() {
    let big = Bytes::from(vec![0u8; MAX_BLOCK_SIZE + 1]);
    let block = Block::encode(cid::Version::V1, RAW, big.clone());
    let store = MemoryStore::new();
    store.insert_unchecked(*block.cid(), big);
    assert!(matches!(
        fetch(&store, block.cid()).await,
        Err(ExportError::Block(
            streamspace_shard::block::BlockError::TooLarge { .. }
        ))
    ));
    // In a CAR: refused with the offset of its section, before it reaches the store.
    let mut car = BytesMut::from(&encode_header(&[*block.cid()])[..]);
    encode_section(block.cid(), block.data(), &mut car);
    let store = MemoryStore::new();
    let err = read_car(&car[..], &store).await.unwrap_err();
    assert!(
        matches!(
            err,
            CarError::Block {
                source: streamspace_shard::block::BlockError::TooLarge { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(store.is_empty());
    // A section length far beyond any block is refused from its varint alone.
    let mut car = BytesMut::from(&encode_header(&[*block.cid()])[..]);
    car.extend_from_slice(&[0x80, 0x80, 0x80, 0x10]); // 32 MiB
    let err = read_car(&car[..], &MemoryStore::new()).await.unwrap_err();
    assert!(matches!(err, CarError::TooLarge { .. }), "{err}");
}

#[tokio::test]
async fn undecodable_nodes_name_the_block() {
    // A dag-pb CID over bytes that are not dag-pb.
    let junk = Block::encode(
        cid::Version::V1,
        DAG_PB,
        Bytes::from_static(b"\xff\xff\xff"),
    );
    let store = MemoryStore::new();
    store.put(junk.clone()).await.unwrap();
    let err = read(&store, &junk).await.unwrap_err();
    assert!(
        matches!(err, ExportError::Decode { cid, .. } if cid == *junk.cid()),
        "{err}"
    );
    assert!(err.to_string().contains(&junk.cid().to_string()));
}

fn carv2(v1: &[u8], padding: usize, trailing_index: &[u8]) -> Vec<u8> {
    let mut out = CARV2_PRAGMA.to_vec();
    let data_offset = (CARV2_PRAGMA.len() + 40 + padding) as u64;
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&data_offset.to_le_bytes());
    out.extend_from_slice(&(v1.len() as u64).to_le_bytes());
    out.extend_from_slice(&(data_offset + v1.len() as u64).to_le_bytes());
    out.extend(std::iter::repeat_n(0u8, padding));
    out.extend_from_slice(v1);
    out.extend_from_slice(trailing_index);
    out
}

#[tokio::test]
async fn carv2_containers_are_read() {
    let (a, b) = (raw(b"first"), raw(b"second"));
    let mut v1 = BytesMut::from(&encode_header(&[*a.cid()])[..]);
    encode_section(a.cid(), a.data(), &mut v1);
    encode_section(b.cid(), b.data(), &mut v1);
    for padding in [0, 7] {
        let file = carv2(&v1, padding, b"index bytes that are not sections");
        let store = MemoryStore::new();
        let summary = read_car(&file[..], &store).await.unwrap();
        assert_eq!(summary.roots, vec![*a.cid()]);
        assert_eq!(summary.blocks, 2);
        assert!(store.has(b.cid()).await.unwrap());
    }
    // A payload cut short inside the container is truncation, not success.
    let file = carv2(&v1[..v1.len() - 3], 0, b"");
    assert!(read_car(&file[..], &MemoryStore::new()).await.is_err());
}

#[test]
fn key_files_report_the_line() {
    let good = ContentKey::generate().to_key_file(None);
    let bad = good.replace("item: ", "item: zz");
    assert!(matches!(
        ContentKey::from_key_file(&bad),
        Err(KeyFileError::Line { line: 3, .. })
    ));
    assert!(matches!(
        ContentKey::from_key_file("streamspace-key: 2\n"),
        Err(KeyFileError::Version(_))
    ));
    assert!(matches!(
        ContentKey::from_key_file("streamspace-key: 1\n"),
        Err(KeyFileError::Missing("key"))
    ));
    assert!(ContentKey::from_key_file("nonsense").is_err());
}
