#![allow(dead_code)]
//! Raw-bytes clients: tests decide every byte sent, and read back the status line, head and body.
//! Parsing here is deliberately minimal (status code, header lookup, body after the blank line);
//! it only reads responses from our own proxy and origin.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on every read in tests: nothing here may hang.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A response as seen on the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body_text()))
    }
}

/// Sends `request` on a new connection and reads until the peer closes.
pub async fn roundtrip(proxy: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(request).await.unwrap();
    read_to_close(&mut s).await
}

/// Reads everything until EOF (or a reset) and splits head from body.
pub async fn read_to_close(s: &mut TcpStream) -> RawResponse {
    parse(&read_bytes_to_close(s).await)
}

/// Reads everything until EOF (or a reset), bounded by `IO_TIMEOUT`.
pub async fn read_bytes_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(IO_TIMEOUT, async {
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "response did not end within {IO_TIMEOUT:?}; got so far: {:?}",
        String::from_utf8_lossy(&buf)
    );
    buf
}

/// Reads until EOF or any error, never panicking (for clients racing a dying proxy).
pub async fn read_bytes_to_close_lossy(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return buf,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads one response head (up to the blank line) and `Content-Length` bytes of body, leaving the
/// connection open.
pub async fn read_one(s: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(IO_TIMEOUT, async {
        while !buf.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut byte).await.unwrap();
            assert!(
                n > 0,
                "connection closed inside a response head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.push(byte[0]);
        }
    })
    .await
    .expect("response head in time");
    let mut resp = parse(&buf);
    let len: usize = resp
        .header("content-length")
        .map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0u8; len];
    tokio::time::timeout(IO_TIMEOUT, s.read_exact(&mut body))
        .await
        .expect("response body in time")
        .unwrap();
    resp.body = body;
    resp
}

fn parse(buf: &[u8]) -> RawResponse {
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let (head, body) = match split {
        Some(i) => (&buf[..i], buf[i + 4..].to_vec()),
        None => (buf, Vec::new()),
    };
    let head = String::from_utf8_lossy(head).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    RawResponse { status, head, body }
}

/// Opens a CONNECT tunnel; returns the proxy's answer and the stream (usable only on 200).
pub async fn connect(
    proxy: SocketAddr,
    authority: &str,
    extra_headers: &str,
) -> (RawResponse, TcpStream) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{extra_headers}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let resp = read_one(&mut s).await;
    (resp, s)
}

/// A plain `GET` inside an open tunnel (origin-form, `Connection: close`), read to the end.
pub async fn get_in_tunnel(mut s: TcpStream, host: &str, path: &str) -> RawResponse {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    read_to_close(&mut s).await
}

/// An absolute-form `GET` through the proxy with `Connection: close`.
pub async fn get(proxy: SocketAddr, url: &str, extra_headers: &str) -> RawResponse {
    let host = url.trim_start_matches("http://").split('/').next().unwrap();
    let req =
        format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra_headers}\r\n");
    roundtrip(proxy, req.as_bytes()).await
}
