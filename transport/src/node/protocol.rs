//! The exchange protocol's glue to libp2p: request-response over [`ExchangeCodec`] (the wire
//! format is in [`crate::message`] and [`crate::codec`]), and where its events go: requests
//! to serving, responses to the handle that asked, failures turned into [`RequestError`]s.

use std::time::Duration;

use libp2p::request_response::{self, ProtocolSupport};
use streamspace_shard::store::BlockStore;

use super::driver::Driver;
use super::{NodeEvent, RequestError};
use crate::codec::{ExchangeCodec, PROTOCOL};
use crate::message::{Request, Response};

/// Exchange streams open at once on one connection.
const MAX_CONCURRENT_STREAMS: usize = 256;

/// The exchange protocol's behaviour: requests time out after `request_timeout`.
pub(super) fn behaviour(request_timeout: Duration) -> request_response::Behaviour<ExchangeCodec> {
    request_response::Behaviour::with_codec(
        ExchangeCodec,
        [(PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(request_timeout)
            .with_max_concurrent_streams(MAX_CONCURRENT_STREAMS),
    )
}

impl<S: BlockStore + 'static> Driver<S> {
    /// An event of the exchange protocol: a peer's request is served; a response goes to the
    /// handle waiting for it (or, unasked, a peer's status is noted); a failure is reported.
    pub(super) fn exchange(&mut self, e: request_response::Event<Request, Response>) {
        use request_response::{Event, Message};
        match e {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request_id,
                        request,
                        channel,
                    },
                ..
            } => self.serve(peer, request_id, request, channel),
            Event::ResponseSent { request_id, .. } | Event::InboundFailure { request_id, .. } => {
                if let Some((peer, held)) = self.writing.remove(&request_id) {
                    drop(held);
                    self.written(peer);
                }
            }
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(tx) = self.pending.remove(&request_id) {
                    let _ = tx.send(Ok(response));
                } else if let Response::Status { tier, capacity, .. } = response {
                    self.tiers.insert(peer, (tier, capacity));
                    self.emit(NodeEvent::Status {
                        peer,
                        tier,
                        capacity,
                    });
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(tx) = self.pending.remove(&request_id) {
                    let _ = tx.send(Err(match error {
                        request_response::OutboundFailure::Timeout => RequestError::Timeout(peer),
                        e => RequestError::Failed {
                            peer,
                            reason: e.to_string(),
                        },
                    }));
                }
            }
        }
    }
}
