//! Length-framed [`Request`]s and [`Response`]s on libp2p streams.

use std::io;

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

use crate::message::{MAX_MESSAGE, Request, Response};

/// The exchange protocol's id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/streamspace/exchange/1.1.0");

/// Largest encoded request (a want list with a root).
const MAX_REQUEST: usize = 8 * 1024;

/// The codec for [`libp2p::request_response`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ExchangeCodec;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Bytes> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit of {max}"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(Bytes::from(buf))
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, msg: Bytes) -> io::Result<()> {
    let len = u32::try_from(msg.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(&msg).await?;
    io.close().await
}

fn invalid(e: crate::message::MessageError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl libp2p::request_response::Codec for ExchangeCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        Request::decode(read_frame(io, MAX_REQUEST).await?).map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        Response::decode(read_frame(io, MAX_MESSAGE).await?).map_err(invalid)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, req.encode()).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        // The blocks are written as they are, behind the frame's length.
        let parts = res.encode_parts();
        let len: usize = parts.iter().map(Bytes::len).sum();
        let len = u32::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message too large"))?;
        io.write_all(&len.to_be_bytes()).await?;
        for p in &parts {
            io.write_all(p).await?;
        }
        io.close().await
    }
}
