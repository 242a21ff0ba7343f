//! What the node's tests share: a node on loopback and a small HTTP/1.1 client (hyper).

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use streamspace_node::{Node, NodeBuilder};

/// A node on loopback with the API (and a gateway) on ports the OS chooses.
pub async fn node(repo: &std::path::Path) -> Node {
    builder(repo).start().await.expect("node starts")
}

pub fn builder(repo: &std::path::Path) -> NodeBuilder {
    Node::builder()
        .repo(repo)
        .listen(["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")])
        .api("127.0.0.1:0".parse().expect("addr"))
        .gateway("127.0.0.1:0".parse().expect("addr"))
}

/// An answer: status, headers and the whole body.
pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `Message` of a kubo error, checking its shape.
    pub fn kubo_error(&self) -> String {
        let v = self.json();
        assert_eq!(v["Type"], "error", "{v}");
        assert!(v["Code"].is_u64(), "{v}");
        v["Message"].as_str().expect("Message").to_owned()
    }
}

/// Sends one request on a fresh connection.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = tx
        .send_request(req.body(Full::new(Bytes::from(body))).expect("request"))
        .await
        .expect("answer");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

pub async fn post(addr: SocketAddr, path_and_query: &str) -> Answer {
    send(addr, "POST", path_and_query, &[], Vec::new()).await
}

/// A multipart body as kubo's clients send it: `(field name, file name, content type,
/// bytes)` per part.
pub fn multipart(parts: &[(&str, &str, &str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "------------------------streamspace-test";
    let mut body = Vec::new();
    for (name, file, ty, data) in parts {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\nContent-Type: {ty}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

pub async fn post_multipart(
    addr: SocketAddr,
    path_and_query: &str,
    parts: &[(&str, &str, &str, &[u8])],
) -> Answer {
    let (ty, body) = multipart(parts);
    send(addr, "POST", path_and_query, &[("content-type", &ty)], body).await
}

/// Pseudo-random bytes (xorshift), reproducible from `seed`.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
