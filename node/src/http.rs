//! The node's HTTP server (gateway, operator API, metrics), hardened against clients that
//! hold its resources: each connection must send its request head within a deadline
//! (slowloris), the request head and its URI are bounded in size, a bounded number of
//! requests run at once (beyond it the server answers 503 at once, without queueing), a
//! bounded number of connections are open at once, and a request that has not produced its
//! answer's head within a deadline answers 504.
//!
//! The server speaks HTTP/1.1 (as browsers, players and IPFS's HTTP clients speak to a
//! plain-text gateway). It stops accepting when its stop signal turns true; open answers get
//! [`HttpLimits::shutdown_grace`] to finish.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::{BoxError, ServiceBuilder, ServiceExt};

/// What one HTTP endpoint allows its clients. The defaults suit a public gateway on a small
/// machine; every bound answers or closes the connection, never waits on the client.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpLimits {
    /// How long a connection may take to send a whole request head, from when the server
    /// starts reading it (on connect, and after each answer on a kept-alive connection);
    /// then it is closed. Default 10 s.
    pub header_read_timeout: Duration,
    /// The largest request head (request line and headers), in bytes; beyond it the answer is
    /// 431 and the connection is closed. Default 16 KiB.
    pub max_header_bytes: usize,
    /// The most header fields in a request; beyond it the answer is 431. Default 64.
    pub max_headers: usize,
    /// The longest request target (path and query), in bytes; beyond it the answer is 414.
    /// Default 8 KiB.
    pub max_uri_len: usize,
    /// Requests handled at once, over all connections; beyond it the answer is 503 with
    /// `Retry-After`, at once. A request counts until its answer's head is ready (a streamed
    /// body does not hold a place). Default 256.
    pub max_concurrent_requests: usize,
    /// Connections open at once; a connection beyond it is closed on accept. Default 4096.
    pub max_connections: usize,
    /// How long a request may take to produce its answer's head; then it answers 504. Bodies
    /// streamed after the head are not bounded by it. Default 120 s (more than the gateway's
    /// 60 s wait for the network, so that the gateway's own answer comes first).
    pub request_timeout: Duration,
    /// How long open answers may run on once the server is told to stop. Default 5 s.
    pub shutdown_grace: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            max_uri_len: 8 * 1024,
            max_concurrent_requests: 256,
            max_connections: 4096,
            request_timeout: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Binds `addr` and serves `app` on it under `limits` until `stop` turns true. Returns the
/// bound address and the server's task (which ends once open answers are done, or
/// [`HttpLimits::shutdown_grace`] after the stop).
///
/// # Errors
///
/// The address cannot be bound.
pub async fn bind(
    addr: SocketAddr,
    app: Router,
    limits: HttpLimits,
    stop: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((bound, tokio::spawn(serve(listener, app, limits, stop))))
}

fn plain(status: StatusCode, message: &str) -> Response<Body> {
    let mut r = (status, format!("{message}\n")).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The answer to a request the limits refused.
fn refused(e: &BoxError) -> Response<Body> {
    if e.is::<tower::load_shed::error::Overloaded>() {
        let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, "too many requests at once");
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        r
    } else if e.is::<tower::timeout::error::Elapsed>() {
        plain(
            StatusCode::GATEWAY_TIMEOUT,
            "the answer took longer than this server allows",
        )
    } else {
        plain(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
    }
}

/// Serves `app` on `listener` under `limits` until `stop` turns true, then gives open answers
/// [`HttpLimits::shutdown_grace`] to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
) {
    // One instance for the whole server: its concurrency limit is shared by every clone.
    let svc = ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(limits.max_concurrent_requests.max(1))
        .timeout(limits.request_timeout)
        .service(app);
    let max_uri = limits.max_uri_len;
    let handle = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let svc = svc.clone();
        async move {
            let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
            if target > max_uri {
                return Ok::<_, Infallible>(plain(
                    StatusCode::URI_TOO_LONG,
                    "the request target is too long",
                ));
            }
            Ok(match svc.oneshot(req.map(Body::new)).await {
                Ok(r) => r,
                Err(e) => refused(&e),
            })
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    let http = Arc::new(http);
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stopped = std::pin::pin!(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, a connection reset before accept: not the end of the
                    // server. A short pause lets descriptors free up.
                    tracing::debug!(error = %e, "accepting an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "HTTP connection refused: too many open");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), handle.clone()));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await;
}
