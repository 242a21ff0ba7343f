//! UnixFS trees written as tar archives, streamed: what kubo's `get` answers.
//!
//! Headers come from the `tar` crate (ustar, with GNU long-name entries for paths past 100
//! bytes); file contents are streamed block by block from the store, verified on the way,
//! so an archive of any size costs one block of memory. Names were checked by
//! [`streamspace_shard::dag::entries`] to be single path segments, so an archive of a hostile
//! DAG never names a path outside its top entry.

use cid::Cid;
use futures::StreamExt;
use streamspace_shard::dag::{Entity, ExportError, MAX_DEPTH, entity, entries};
use streamspace_shard::export::{ByteRange, cat};
use streamspace_shard::store::BlockStore;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Writing an archive failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TarError {
    /// Reading the DAG failed (missing or corrupt block, bad name, too deep).
    #[error(transparent)]
    Export(#[from] ExportError),
    /// Writing the archive failed (the client went away, or a header could not be built).
    #[error("writing the archive: {0}")]
    Io(#[from] std::io::Error),
    /// A node of a kind this writer does not know.
    #[error("{0}: a UnixFS node this archive writer does not know")]
    Unsupported(Cid),
    /// A file's blocks held more or fewer bytes than its root declares.
    #[error("{path}: {found} bytes where the root declares {declared}")]
    SizeMismatch {
        /// The entry's path in the archive.
        path: String,
        /// The size the root declares.
        declared: u64,
        /// The bytes found.
        found: u64,
    },
}

const BLOCK: usize = 512;

/// Writes the tree below `root` as a tar archive whose top entry is `name`.
///
/// Directories come before their entries, entries in the directory's order; modes and
/// modification times are the UnixFS ones where recorded (0644 for files, 0755 for
/// directories and mtime 0 otherwise).
///
/// # Errors
///
/// [`TarError`]; the archive is left unfinished after the first error.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use streamspace_node::tar::write_tar;
/// use streamspace_shard::{import::ImportOptions, store::{add_reader, MemoryStore}};
///
/// let store = MemoryStore::new();
/// let file = add_reader(Some(&store), &b"hello"[..], ImportOptions::default()).await?;
/// let mut archive = Vec::new();
/// write_tar(&store, file.cid, "hello.txt", &mut archive).await?;
/// // One header block, one data block, two end blocks.
/// assert_eq!(archive.len(), 4 * 512);
/// assert_eq!(&archive[..9], b"hello.txt");
/// assert_eq!(&archive[512..517], b"hello");
/// # Ok(()) }
/// ```
pub async fn write_tar<S, W>(store: &S, root: Cid, name: &str, out: &mut W) -> Result<(), TarError>
where
    S: BlockStore,
    W: AsyncWrite + Unpin,
{
    let mut stack = vec![(root, name.to_owned(), 0usize)];
    while let Some((cid, path, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(ExportError::TooDeep(cid).into());
        }
        match entity(store, &cid).await? {
            Entity::File { size, mode, mtime } => {
                let mut h = header(tar::EntryType::Regular, mode.unwrap_or(0o644), mtime);
                h.set_size(size);
                out.write_all(&header_bytes(&mut h, &path, None)?).await?;
                let mut written = 0u64;
                let mut parts = std::pin::pin!(cat(store, cid, ByteRange::new(0, None)));
                while let Some(part) = parts.next().await {
                    let part = part?;
                    written += part.len() as u64;
                    if written > size {
                        break;
                    }
                    out.write_all(&part).await?;
                }
                if written != size {
                    return Err(TarError::SizeMismatch {
                        path,
                        declared: size,
                        found: written,
                    });
                }
                let pad = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
                out.write_all(&[0u8; BLOCK][..pad]).await?;
            }
            Entity::Directory { mode, mtime } => {
                let mut h = header(tar::EntryType::Directory, mode.unwrap_or(0o755), mtime);
                h.set_size(0);
                out.write_all(&header_bytes(&mut h, &format!("{path}/"), None)?)
                    .await?;
                let list = entries(store, &cid).await?;
                for e in list.into_iter().rev() {
                    stack.push((e.cid, format!("{path}/{}", e.name), depth + 1));
                }
            }
            Entity::Symlink { target } => {
                let mut h = header(tar::EntryType::Symlink, 0o777, None);
                h.set_size(0);
                out.write_all(&header_bytes(&mut h, &path, Some(&target))?)
                    .await?;
            }
            _ => return Err(TarError::Unsupported(cid)),
        }
    }
    // The end of an archive: two zero blocks.
    out.write_all(&[0u8; 2 * BLOCK]).await?;
    out.flush().await?;
    Ok(())
}

fn header(kind: tar::EntryType, mode: u32, mtime: Option<i64>) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode & 0o7777);
    h.set_mtime(mtime.map_or(0, |t| t.max(0) as u64));
    h
}

/// The header (and any GNU long-name entries before it) of one entry, without its data.
fn header_bytes(
    h: &mut tar::Header,
    path: &str,
    link: Option<&str>,
) -> Result<Vec<u8>, std::io::Error> {
    let mut b = tar::Builder::new(Vec::new());
    match link {
        Some(target) => b.append_link(h, path, target)?,
        None => b.append_data(h, path, std::io::empty())?,
    }
    // `append_data` pads the (empty) data to nothing; the builder's own end-of-archive
    // blocks are not wanted here.
    let mut v = b.into_inner()?;
    v.truncate(v.len() - 2 * BLOCK);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use streamspace_shard::import::{DirEntry, ImportOptions, build_directory};
    use streamspace_shard::store::{MemoryStore, add_reader};

    async fn file(store: &MemoryStore, data: Vec<u8>) -> streamspace_shard::import::Imported {
        add_reader(
            Some(store),
            std::io::Cursor::new(data),
            ImportOptions::default(),
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_tree_reads_back_with_the_tar_crate() {
        let store = MemoryStore::new();
        let big: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let a = file(&store, big.clone()).await;
        let b = file(&store, b"b".to_vec()).await;
        let long = "n".repeat(150);
        let mut blocks = Vec::new();
        let sub = build_directory(
            vec![DirEntry {
                name: long.clone(),
                root: b,
            }],
            &ImportOptions::default(),
            |x| {
                blocks.push(x);
                Ok(())
            },
        )
        .unwrap();
        let top = build_directory(
            vec![
                DirEntry {
                    name: "a.bin".into(),
                    root: a,
                },
                DirEntry {
                    name: "sub".into(),
                    root: sub,
                },
            ],
            &ImportOptions::default(),
            |x| {
                blocks.push(x);
                Ok(())
            },
        )
        .unwrap();
        store.put_many(blocks).await.unwrap();

        let mut out = Vec::new();
        write_tar(&store, top.cid, "top", &mut out).await.unwrap();
        let mut ar = tar::Archive::new(&out[..]);
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            seen.push((p, data));
        }
        let paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
        let long_path = format!("top/sub/{long}");
        assert_eq!(paths, ["top/", "top/a.bin", "top/sub/", long_path.as_str()]);
        assert_eq!(seen[1].1, big);
        assert_eq!(seen[3].1, b"b");
    }

    #[tokio::test]
    async fn a_missing_block_ends_the_archive_with_an_error() {
        let store = MemoryStore::new();
        let a = file(&store, vec![1u8; 600_000]).await;
        let leaves =
            streamspace_shard::dag::links_of(&a.cid, store.get(&a.cid).await.unwrap().unwrap())
                .unwrap();
        store.delete(&leaves[1]).await.unwrap();
        let mut out = Vec::new();
        let err = write_tar(&store, a.cid, "f", &mut out).await.unwrap_err();
        assert!(matches!(err, TarError::Export(_)), "{err}");
    }
}
