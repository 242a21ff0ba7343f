//! The Bitswap streams: protocol negotiation over the three versions, and messages framed by
//! an unsigned-varint length (at most [`MAX_MESSAGE`] bytes each).

use std::io;

use bytes::Bytes;
use futures::future::{Ready, ready};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::core::{InboundUpgrade, OutboundUpgrade, UpgradeInfo};
use libp2p::{Stream, StreamProtocol};
use streamspace_shard::wire;

use super::message::{MAX_MESSAGE, Version, frame};

/// The protocols offered and accepted, newest first.
#[derive(Debug, Clone)]
pub struct Upgrade {
    pub(crate) versions: Vec<Version>,
}

impl UpgradeInfo for Upgrade {
    type Info = StreamProtocol;
    type InfoIter = Vec<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.versions
            .iter()
            .map(|v| StreamProtocol::new(v.protocol()))
            .collect()
    }
}

fn version_of(p: &StreamProtocol) -> Version {
    Version::from_protocol(p.as_ref()).unwrap_or(Version::V1_2)
}

impl InboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, Version);
    type Error = std::convert::Infallible;
    type Future = Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, stream: Stream, info: StreamProtocol) -> Self::Future {
        ready(Ok((stream, version_of(&info))))
    }
}

impl OutboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, Version);
    type Error = std::convert::Infallible;
    type Future = Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, stream: Stream, info: StreamProtocol) -> Self::Future {
        ready(Ok((stream, version_of(&info))))
    }
}

/// Reads one framed message; `Ok(None)` at a clean end of stream (between messages).
///
/// # Errors
///
/// An [`io::ErrorKind::InvalidData`] error for a length over `max` or a malformed length
/// prefix; any error of the stream.
pub async fn read_message<T: AsyncRead + Unpin>(
    io: &mut T,
    max: usize,
) -> io::Result<Option<Bytes>> {
    let mut len = [0u8; 10];
    let mut n = 0;
    let size = loop {
        let mut byte = [0u8; 1];
        if io.read(&mut byte).await? == 0 {
            if n == 0 {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        len[n] = byte[0];
        n += 1;
        match wire::uvarint(&len[..n], 0) {
            Ok(Some((v, _))) => break v,
            Ok(None) if n < len.len() => {}
            Ok(None) | Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "bad length prefix",
                ));
            }
        }
    };
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {size} bytes, at most {max}"),
        ));
    }
    let mut buf = vec![0u8; size];
    io.read_exact(&mut buf).await?;
    Ok(Some(Bytes::from(buf)))
}

/// Writes one encoded message behind its length and flushes.
///
/// # Errors
///
/// [`io::ErrorKind::InvalidInput`] for a message over [`MAX_MESSAGE`]; any error of the
/// stream.
pub async fn write_message<T: AsyncWrite + Unpin>(io: &mut T, msg: &[u8]) -> io::Result<()> {
    if msg.len() > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message of {} bytes, at most {MAX_MESSAGE}", msg.len()),
        ));
    }
    let mut out = Vec::with_capacity(msg.len() + 10);
    frame(msg, &mut out);
    io.write_all(&out).await?;
    io.flush().await
}

/// Streams a yamux connection allows: so many that the receive windows of all streams together
/// can grow only 512 KiB past yamux's 256 KiB default each, so no window passes the 1 MiB
/// frame bound of rust-yamux. js-yamux (Helia, js-libp2p) sends data frames as large as the
/// window the receiver grants, and rust-yamux closes the connection on a frame over 1 MiB
/// (`FrameTooLarge`): with windows left to grow past it, a Helia node sending blocks breaks
/// the connection.
pub const YAMUX_MAX_STREAMS: usize = 4094;

/// The yamux configuration nodes use (see [`YAMUX_MAX_STREAMS`]).
pub fn yamux_config() -> libp2p::yamux::Config {
    let mut c = libp2p::yamux::Config::default();
    c.set_max_num_streams(YAMUX_MAX_STREAMS);
    c
}
