//! The Bitswap connection handler: reads every message the peer sends on its inbound streams
//! (one message or many per stream, as kubo and Helia do), and writes this node's messages
//! on one outbound stream, reopened once when the peer closed it (Helia closes idle streams
//! after 10 s).
//!
//! Bounded: at most [`MAX_INBOUND_STREAMS`] inbound streams at once, at most
//! [`MAX_QUEUED_MESSAGES`] messages waiting to be written, messages at most
//! [`super::message::MAX_MESSAGE`] bytes. Block CIDs are computed from their
//! prefixes and data here, on the connection's task, not on the swarm's.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::task::{Context, Poll};

use bytes::Bytes;
use cid::Cid;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, SelectAll};
use futures::{FutureExt, StreamExt};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
    ProtocolsChange,
};
use libp2p::swarm::{
    ConnectionHandler, ConnectionHandlerEvent, Stream, StreamProtocol, StreamUpgradeError,
    SubstreamProtocol,
};

use super::message::{MAX_MESSAGE, Message, MessageError, Version};
use super::protocol::{Upgrade, read_message, write_message};

/// Inbound streams read at once on one connection; more are dropped.
pub const MAX_INBOUND_STREAMS: usize = 32;
/// Messages waiting to be written on one connection; more are dropped (and reported).
pub const MAX_QUEUED_MESSAGES: usize = 64;

/// What the behaviour asks of a connection.
#[derive(Debug)]
pub enum FromBehaviour {
    /// Write this message (encoded for the version the stream negotiates).
    Send(Message),
}

/// A message received, its blocks named.
#[derive(Debug)]
pub struct Received {
    /// The message, blocks taken out.
    pub message: Message,
    /// Its blocks, with the CIDs their prefixes and data make.
    pub blocks: Vec<(Cid, Bytes)>,
    /// Blocks left out for a prefix this node cannot verify.
    pub unverifiable: usize,
    /// Its encoded length.
    pub len: usize,
}

/// What a connection tells the behaviour.
#[derive(Debug)]
pub enum ToBehaviour {
    /// A message arrived.
    Message(Received),
    /// A message was written; `blocks` bytes of blocks in it.
    Sent {
        /// Bytes of blocks in it.
        blocks: usize,
    },
    /// A message could not be written; `blocks` bytes of blocks in it.
    SendFailed {
        /// Bytes of blocks in it.
        blocks: usize,
    },
    /// The peer sent bytes that are no Bitswap message (its stream was dropped).
    Malformed(String),
    /// The protocols the peer announces changed: whether it speaks Bitswap, and whether it
    /// speaks the exchange protocol.
    Protocols {
        /// Some Bitswap version.
        bitswap: bool,
        /// The StreamSpace exchange protocol.
        exchange: bool,
    },
    /// The peer refused every Bitswap version.
    Unsupported,
}

type Inbound = BoxStream<'static, Result<Received, String>>;
type Sending = BoxFuture<'static, (io::Result<(Stream, Version)>, Message, usize)>;

/// The handler of one connection.
pub struct Handler {
    versions: Vec<Version>,
    inbound: SelectAll<Inbound>,
    out: Option<(Stream, Version)>,
    requested: bool,
    sending: Option<Sending>,
    queue: VecDeque<Message>,
    /// Whether the message at the head of the queue was already tried on a stream the peer
    /// had closed.
    retried: bool,
    unsupported: bool,
    remote: HashSet<StreamProtocol>,
    events: VecDeque<ToBehaviour>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("queue", &self.queue.len())
            .field("inbound", &self.inbound.len())
            .finish_non_exhaustive()
    }
}

impl Handler {
    pub(crate) fn new(versions: Vec<Version>) -> Self {
        Self {
            versions,
            inbound: SelectAll::new(),
            out: None,
            requested: false,
            sending: None,
            queue: VecDeque::new(),
            retried: false,
            unsupported: false,
            remote: HashSet::new(),
            events: VecDeque::new(),
        }
    }

    fn upgrade(&self) -> Upgrade {
        Upgrade {
            versions: self.versions.clone(),
        }
    }

    fn protocols_changed(&mut self) {
        let bitswap = self
            .remote
            .iter()
            .any(|p| Version::from_protocol(p.as_ref()).is_some());
        let exchange = self
            .remote
            .iter()
            .any(|p| p.as_ref() == crate::codec::PROTOCOL.as_ref());
        self.events
            .push_back(ToBehaviour::Protocols { bitswap, exchange });
    }
}

fn block_bytes(m: &Message) -> usize {
    m.blocks.iter().map(|b| b.data.len()).sum()
}

/// Decodes a message and names its blocks.
fn receive(buf: Bytes) -> Result<Received, MessageError> {
    let len = buf.len();
    let mut message = Message::decode(buf)?;
    let mut blocks = Vec::with_capacity(message.blocks.len());
    let mut unverifiable = 0;
    for b in std::mem::take(&mut message.blocks) {
        match b.prefix.cid_for(&b.data) {
            Ok(cid) => blocks.push((cid, b.data)),
            Err(_) => unverifiable += 1,
        }
    }
    Ok(Received {
        message,
        blocks,
        unverifiable,
        len,
    })
}

fn inbound_stream(stream: Stream) -> Inbound {
    futures::stream::unfold(Some(stream), |state| async move {
        let mut stream = state?;
        match read_message(&mut stream, MAX_MESSAGE).await {
            Ok(Some(buf)) => match receive(buf) {
                Ok(r) => Some((Ok(r), Some(stream))),
                Err(e) => Some((Err(e.to_string()), None)),
            },
            Ok(None) => None,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Some((Err(e.to_string()), None)),
            // A reset or closed stream ends quietly.
            Err(_) => None,
        }
    })
    .boxed()
}

impl ConnectionHandler for Handler {
    type FromBehaviour = FromBehaviour;
    type ToBehaviour = ToBehaviour;
    type InboundProtocol = Upgrade;
    type OutboundProtocol = Upgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Upgrade, ()> {
        SubstreamProtocol::new(self.upgrade(), ())
    }

    fn on_behaviour_event(&mut self, event: FromBehaviour) {
        match event {
            FromBehaviour::Send(m) => {
                if self.unsupported {
                    return;
                }
                if self.queue.len() >= MAX_QUEUED_MESSAGES {
                    tracing::debug!("bitswap send queue full; message dropped");
                    self.events.push_back(ToBehaviour::SendFailed {
                        blocks: block_bytes(&m),
                    });
                    return;
                }
                self.queue.push_back(m);
            }
        }
    }

    fn connection_keep_alive(&self) -> bool {
        !self.queue.is_empty() || self.sending.is_some() || !self.inbound.is_empty()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Upgrade, (), ToBehaviour>> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(e));
            }
            if let Some(sending) = &mut self.sending {
                let Poll::Ready((result, msg, blocks)) = sending.poll_unpin(cx) else {
                    break;
                };
                self.sending = None;
                match result {
                    Ok(out) => {
                        self.out = Some(out);
                        self.retried = false;
                        self.events.push_back(ToBehaviour::Sent { blocks });
                    }
                    Err(e) if !self.retried => {
                        // The peer may have closed an idle stream: once more on a new one.
                        tracing::debug!(error = %e, "bitswap stream closed; reopening");
                        self.retried = true;
                        self.queue.push_front(msg);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "bitswap message not sent");
                        self.retried = false;
                        self.events.push_back(ToBehaviour::SendFailed { blocks });
                    }
                }
                continue;
            }
            if !self.queue.is_empty() {
                match self.out.take() {
                    Some((mut stream, version)) => {
                        if let Some(msg) = self.queue.pop_front() {
                            let blocks = block_bytes(&msg);
                            let bytes = msg.encode(version);
                            self.sending = Some(
                                async move {
                                    let r = write_message(&mut stream, &bytes).await;
                                    (r.map(|()| (stream, version)), msg, blocks)
                                }
                                .boxed(),
                            );
                        }
                        continue;
                    }
                    None if !self.requested => {
                        self.requested = true;
                        return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                            protocol: SubstreamProtocol::new(self.upgrade(), ()),
                        });
                    }
                    None => {}
                }
            }
            break;
        }
        match self.inbound.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(r))) => Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(
                ToBehaviour::Message(r),
            )),
            Poll::Ready(Some(Err(e))) => Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(
                ToBehaviour::Malformed(e),
            )),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<'_, Upgrade, Upgrade, (), ()>) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (stream, _),
                ..
            }) => {
                if self.inbound.len() >= MAX_INBOUND_STREAMS {
                    tracing::debug!("too many bitswap streams; one dropped");
                    return;
                }
                self.inbound.push(inbound_stream(stream));
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol, ..
            }) => {
                self.requested = false;
                self.out = Some(protocol);
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, .. }) => {
                self.requested = false;
                match error {
                    StreamUpgradeError::NegotiationFailed => {
                        self.unsupported = true;
                        for m in self.queue.drain(..) {
                            self.events.push_back(ToBehaviour::SendFailed {
                                blocks: block_bytes(&m),
                            });
                        }
                        self.events.push_back(ToBehaviour::Unsupported);
                    }
                    e => {
                        tracing::debug!(error = %e, "bitswap stream not opened");
                        if let Some(m) = self.queue.pop_front() {
                            self.events.push_back(ToBehaviour::SendFailed {
                                blocks: block_bytes(&m),
                            });
                        }
                    }
                }
            }
            ConnectionEvent::RemoteProtocolsChange(change) => {
                match change {
                    ProtocolsChange::Added(added) => {
                        self.remote.extend(added.cloned());
                    }
                    ProtocolsChange::Removed(removed) => {
                        for p in removed {
                            self.remote.remove(p);
                        }
                    }
                }
                self.protocols_changed();
            }
            _ => {}
        }
    }
}
