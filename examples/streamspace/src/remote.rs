//! Content commands against a running node's operator API, when a node holds the repository
//! (its block store is locked while it runs): as `ipfs add` talks to a running daemon.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

/// The API address of the node running on `repo`, from the `api` file it writes (kubo's
/// `$IPFS_PATH/api`), if that node answers.
pub(crate) async fn running_node(repo: &Path) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(repo.join("api")).ok()?;
    let addr = parse_api_file(&text)?;
    // A file left by a node that crashed: nobody listens.
    tokio::net::TcpStream::connect(addr).await.ok()?;
    Some(addr)
}

/// `/ip4/A/tcp/P` or `/ip6/A/tcp/P`.
fn parse_api_file(text: &str) -> Option<SocketAddr> {
    let parts: Vec<&str> = text.trim().split('/').collect();
    match parts.as_slice() {
        ["", "ip4" | "ip6", ip, "tcp", port] => {
            Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?))
        }
        _ => None,
    }
}

type ReqBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// A streaming answer, or the API's error message.
async fn call(
    addr: SocketAddr,
    path_and_query: &str,
    content_type: Option<&str>,
    body: ReqBody,
) -> Result<hyper::Response<hyper::body::Incoming>> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the node's API on {addr}"))?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::post(path_and_query).header("host", addr.to_string());
    if let Some(t) = content_type {
        req = req.header("content-type", t);
    }
    let res = tx.send_request(req.body(body)?).await?;
    if !res.status().is_success() {
        let status = res.status();
        let bytes = res.into_body().collect().await?.to_bytes();
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["Message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        bail!("the running node refused ({status}): {message}");
    }
    Ok(res)
}

fn empty() -> ReqBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn body_stream(
    res: hyper::Response<hyper::body::Incoming>,
) -> impl Stream<Item = Result<Bytes>> + Send {
    BodyStream::new(res.into_body()).filter_map(|f| async move {
        match f {
            Ok(frame) => frame.into_data().ok().map(Ok),
            Err(e) => Some(Err(anyhow::Error::from(e))),
        }
    })
}

/// Copies an answer to standard output.
async fn to_stdout(res: hyper::Response<hyper::body::Incoming>) -> Result<()> {
    let mut out = tokio::io::stdout();
    let bar = crate::progress(None, "reading");
    let mut s = std::pin::pin!(body_stream(res));
    let r: Result<()> = async {
        while let Some(b) = s.try_next().await? {
            bar.inc(b.len() as u64);
            out.write_all(&b).await?;
        }
        out.flush().await?;
        Ok(())
    }
    .await;
    bar.finish_and_clear();
    r
}

async fn json(res: hyper::Response<hyper::body::Incoming>) -> Result<serde_json::Value> {
    let bytes = res.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&bytes)?)
}

fn query(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `cat` through the API.
pub(crate) async fn cat(
    addr: SocketAddr,
    arg: &str,
    offset: u64,
    length: Option<u64>,
) -> Result<()> {
    let mut q = vec![("arg", arg.to_owned()), ("offset", offset.to_string())];
    if let Some(l) = length {
        q.push(("length", l.to_string()));
    }
    let res = call(addr, &format!("/api/v0/cat?{}", query(&q)), None, empty()).await?;
    to_stdout(res).await
}

/// `car export` through the API's `dag/export`: the CAR to `output` (made durable) or to
/// standard output.
pub(crate) async fn dag_export(
    addr: SocketAddr,
    arg: &str,
    output: Option<&std::path::Path>,
) -> Result<()> {
    let q = query(&[("arg", arg.to_owned())]);
    let res = call(addr, &format!("/api/v0/dag/export?{q}"), None, empty()).await?;
    let Some(path) = output else {
        return to_stdout(res).await;
    };
    let f = tokio::fs::File::create(path)
        .await
        .with_context(|| format!("{}", path.display()))?;
    let mut w = tokio::io::BufWriter::new(f);
    let mut bytes = 0u64;
    let mut s = std::pin::pin!(body_stream(res));
    while let Some(b) = s.try_next().await? {
        bytes += b.len() as u64;
        w.write_all(&b).await?;
    }
    w.flush().await?;
    w.into_inner().sync_all().await?;
    eprintln!("exported {bytes} bytes");
    Ok(())
}

/// `block get` through the API.
pub(crate) async fn block_get(addr: SocketAddr, cid: &str) -> Result<()> {
    let q = query(&[("arg", cid.to_owned())]);
    to_stdout(call(addr, &format!("/api/v0/block/get?{q}"), None, empty()).await?).await
}

/// `block stat` through the API.
pub(crate) async fn block_stat(addr: SocketAddr, cid: &str) -> Result<()> {
    let q = query(&[("arg", cid.to_owned())]);
    let v = json(call(addr, &format!("/api/v0/block/stat?{q}"), None, empty()).await?).await?;
    println!(
        "Key: {}\nSize: {}",
        v["Key"].as_str().unwrap_or(""),
        v["Size"]
    );
    Ok(())
}

/// `pin add|rm|ls` through the API.
pub(crate) async fn pin(addr: SocketAddr, command: &str, cid: Option<&str>) -> Result<()> {
    let q = cid.map_or_else(String::new, |c| query(&[("arg", c.to_owned())]));
    let v = json(call(addr, &format!("/api/v0/pin/{command}?{q}"), None, empty()).await?).await?;
    if let Some(pins) = v["Pins"].as_array() {
        for p in pins {
            let word = if command == "add" {
                "pinned"
            } else {
                "unpinned"
            };
            println!("{word} {} recursively", p.as_str().unwrap_or(""));
        }
    }
    if let Some(keys) = v["Keys"].as_object() {
        for k in keys.keys() {
            println!("{k} recursive");
        }
    }
    Ok(())
}

/// One part of a multipart upload: a file's path in the upload and where to read it, or a
/// directory.
enum Part {
    File { name: String, path: PathBuf },
    Dir { name: String },
}

fn parts_of(path: &Path, hidden: bool) -> Result<Vec<Part>> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = Vec::new();
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if meta.is_file() {
        out.push(Part::File {
            name,
            path: path.to_owned(),
        });
        return Ok(out);
    }
    fn walk(dir: &Path, rel: &str, hidden: bool, out: &mut Vec<Part>) -> Result<()> {
        out.push(Part::Dir { name: rel.into() });
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("{}", dir.display()))?
            .collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let n = e.file_name().to_string_lossy().into_owned();
            if !hidden && n.starts_with('.') {
                continue;
            }
            let r = format!("{rel}/{n}");
            let t = e.file_type()?;
            if t.is_dir() {
                walk(&e.path(), &r, hidden, out)?;
            } else if t.is_file() {
                out.push(Part::File {
                    name: r,
                    path: e.path(),
                });
            }
        }
        Ok(())
    }
    walk(path, &name, hidden, &mut out)?;
    Ok(out)
}

/// `add` through the API: the file (or the tree, with `-r`) streamed as kubo's clients send
/// it, one multipart part per file and directory. Prints what `add` prints.
pub(crate) async fn add(
    addr: SocketAddr,
    path: &Path,
    options: &[(&str, String)],
    hidden: bool,
    quiet: bool,
    quieter: bool,
) -> Result<()> {
    let boundary = format!("streamspace-{:016x}", rand::random::<u64>());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let parts = parts_of(path, hidden)?;
    let b = boundary.clone();
    let body = futures::stream::iter(parts)
        .then(move |part| {
            let b = b.clone();
            async move {
                let (field, name, ty) = match &part {
                    Part::File { name, .. } => ("file", name.as_str(), "application/octet-stream"),
                    Part::Dir { name } => ("dir", name.as_str(), "application/x-directory"),
                };
                let head = Bytes::from(format!(
                    "--{b}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{}\"\r\nContent-Type: {ty}\r\n\r\n",
                    percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
                ));
                let content: std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>> =
                    match part {
                        Part::File { path, .. } => {
                            let f = tokio::fs::File::open(&path).await?;
                            Box::pin(tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024))
                        }
                        Part::Dir { .. } => Box::pin(futures::stream::empty()),
                    };
                Ok::<_, std::io::Error>(
                    futures::stream::once(async { Ok(head) })
                        .chain(content)
                        .chain(futures::stream::once(async { Ok(Bytes::from_static(b"\r\n")) })),
                )
            }
        })
        .try_flatten()
        .chain(futures::stream::once(async move {
            Ok(Bytes::from(format!("--{boundary}--\r\n")))
        }))
        .map_ok(Frame::data);
    let body: ReqBody = BodyExt::boxed_unsync(StreamBody::new(body));
    let q = query(options);
    let res = call(addr, &format!("/api/v0/add?{q}"), Some(&content_type), body).await?;
    let text = res.into_body().collect().await?.to_bytes();
    let lines: Vec<serde_json::Value> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(serde_json::from_slice)
        .collect::<std::result::Result<_, _>>()?;
    let n = lines.len();
    for (i, l) in lines.iter().enumerate() {
        let cid = l["Hash"].as_str().unwrap_or("");
        let name = l["Name"].as_str().unwrap_or("");
        if quieter {
            if i + 1 == n {
                println!("{cid}");
            }
        } else if quiet {
            println!("{cid}");
        } else {
            println!("added {cid} {name}");
        }
    }
    Ok(())
}

/// `get` through the API: the tar archive of `arg`, as a byte stream.
pub(crate) async fn get_tar(
    addr: SocketAddr,
    arg: &str,
) -> Result<impl Stream<Item = Result<Bytes>> + Send + use<>> {
    let q = query(&[("arg", arg.to_owned())]);
    let res = call(addr, &format!("/api/v0/get?{q}"), None, empty()).await?;
    Ok(body_stream(res))
}
