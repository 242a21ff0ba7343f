//! `streamspace get`: a file or tree written to disk (or kept as a tar archive), as
//! `ipfs get` does. The tree travels as a tar stream, from the running node's API (`get`)
//! or written from the local store, and is unpacked entry by entry below the output path;
//! an entry that would land outside it is refused.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use crate::{Cli, online, open_store, parse_path, progress, remote};

/// Arguments of `get`.
#[derive(clap::Args, Debug)]
pub(crate) struct GetArgs {
    /// Where to write (by default the path's last segment, or the CID, in the current
    /// directory).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Write a tar archive instead of the files.
    #[arg(short, long)]
    archive: bool,
    /// CID, optionally followed by a path: CID/dir/file (or /ipfs/CID/...).
    path: String,
    #[command(flatten)]
    online: online::OnlineArgs,
}

pub(crate) async fn get_cmd(cli: &Cli, g: &GetArgs) -> Result<()> {
    let (root, rest) = parse_path(&g.path)?;
    let name = rest
        .rsplit('/')
        .find(|s| !s.is_empty())
        .map_or_else(|| root.to_string(), str::to_owned);
    let output = match &g.output {
        Some(o) => o.clone(),
        None if g.archive => PathBuf::from(format!("{name}.tar")),
        None => PathBuf::from(&name),
    };
    if output.exists() {
        bail!("{} exists: not overwritten", output.display());
    }
    type Tar = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;
    if let Some(online) = online::Online::reach(cli, &g.online).await? {
        let api = online.api;
        online
            .run(async {
                let tar: Tar = Box::pin(remote::get_tar(api, &g.path).await?);
                save(tar, g.archive, &output).await
            })
            .await?;
    } else {
        let store = open_store(cli)?;
        let target = streamspace_shard::dag::resolve(&store, &root, &rest).await?;
        let (mut w, r) = tokio::io::duplex(256 * 1024);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let r = streamspace_node::tar::write_tar(&store, target, &name, &mut w).await;
            drop(w);
            let _ = done_tx.send(r);
        });
        let tail = futures::stream::once(async move {
            match done_rx.await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(Err(anyhow::Error::from(e))),
                Err(_) => Some(Err(anyhow::anyhow!("the archive writer stopped"))),
            }
        })
        .filter_map(futures::future::ready);
        let tar: Tar = Box::pin(
            tokio_util::io::ReaderStream::new(r)
                .map(|r| r.map_err(anyhow::Error::from))
                .chain(tail),
        );
        save(tar, g.archive, &output).await?;
    }
    eprintln!("Saving file(s) to {}", output.display());
    Ok(())
}

/// Writes the tar stream as an archive or unpacks it, with a progress bar of bytes.
async fn save(
    tar: impl Stream<Item = Result<Bytes>> + Send + 'static,
    archive: bool,
    output: &Path,
) -> Result<()> {
    let bar = progress(None, "getting");
    let counted = {
        let bar = bar.clone();
        tar.inspect(move |r| {
            if let Ok(b) = r {
                bar.inc(b.len() as u64);
            }
        })
    };
    let result = if archive {
        write_archive(counted, output).await
    } else {
        unpack(counted, output.to_path_buf()).await
    };
    bar.finish_and_clear();
    result
}

async fn write_archive(
    stream: impl Stream<Item = Result<Bytes>> + Send,
    output: &Path,
) -> Result<()> {
    let mut f = tokio::fs::File::create_new(output)
        .await
        .with_context(|| format!("creating {}", output.display()))?;
    let mut stream = std::pin::pin!(stream);
    while let Some(b) = stream.next().await {
        f.write_all(&b?).await?;
    }
    f.sync_all().await?;
    Ok(())
}

/// Unpacks the archive's top entry as `output` (a file or a directory).
async fn unpack(
    stream: impl Stream<Item = Result<Bytes>> + Send + 'static,
    output: PathBuf,
) -> Result<()> {
    let reader = tokio_util::io::StreamReader::new(
        stream
            .map(|r| r.map_err(|e| std::io::Error::other(format!("{e:#}"))))
            .boxed(),
    );
    let sync = tokio_util::io::SyncIoBridge::new(reader);
    tokio::task::spawn_blocking(move || unpack_sync(sync, &output)).await?
}

fn unpack_sync(reader: impl std::io::Read, output: &Path) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let target =
            below(output, &path).with_context(|| format!("archive entry {}", path.display()))?;
        if let Some(parent) = target.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)?;
        }
        entry
            .unpack(&target)
            .with_context(|| format!("writing {}", target.display()))?;
    }
    Ok(())
}

/// `path` with its first component replaced by `output`, refusing anything but plain names.
fn below(output: &Path, path: &Path) -> Result<PathBuf> {
    let mut parts = path.components();
    match parts.next() {
        Some(Component::Normal(_)) => {}
        _ => bail!("not below the archive's top entry"),
    }
    let mut out = output.to_path_buf();
    for c in parts {
        match c {
            Component::Normal(n) => out.push(n),
            _ => bail!("a path component that leaves the tree"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::below;
    use std::path::Path;

    #[test]
    fn entries_stay_below_the_output() {
        let o = Path::new("/tmp/out");
        assert_eq!(
            below(o, Path::new("Qm/a/b")).unwrap(),
            Path::new("/tmp/out/a/b")
        );
        assert_eq!(below(o, Path::new("Qm")).unwrap(), o);
        assert!(below(o, Path::new("Qm/../etc")).is_err());
        assert!(below(o, Path::new("/etc/passwd")).is_err());
        assert!(below(o, Path::new("../x")).is_err());
    }
}
