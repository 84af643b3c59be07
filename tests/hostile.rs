//! Hostile input on real sockets: slowloris crowds, floods, oversized heads, request-smuggling
//! shapes, CONNECT oddities, and upstreams that misbehave (silent, resetting, endless headers).
//!
//! Everything is loopback-only and bounded: every read has a timeout, every loop a count. Nothing
//! here asserts how fast the proxy is; tests assert what it answers, what reaches the origin, and
//! that connections end. The misbehaving upstreams are minimal raw TCP servers defined below.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::client::{self, IO_TIMEOUT, connect, get, get_in_tunnel, read_bytes_to_close};
use support::origin::Origin;
use support::proxy::TestProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A policy allowing only the loopback origin on `port`, with extra `[limits]` lines.
fn policy(port: u16, limits: &str) -> String {
    format!(
        "version = 1\n[limits]\n{limits}\n[[policy.allow]]\ncidr = \"127.0.0.1/32\"\nports = [{port}]\n"
    )
}

/// Sends raw bytes on a new connection and returns the status of the first response.
async fn status_of(proxy: SocketAddr, raw: &[u8]) -> (u16, client::RawResponse) {
    let resp = client::roundtrip(proxy, raw).await;
    (resp.status, resp)
}

// === slowloris and floods ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_slowloris_connections_are_cut_and_a_normal_client_is_served_meanwhile() {
    const SLOW: usize = 200;
    let origin = Origin::start().await;
    let proxy = TestProxy::start(&policy(
        origin.port(),
        "header_read_timeout = \"3s\"\nmax_connections = 256",
    ))
    .await;
    let url = format!("http://127.0.0.1:{}/", origin.port());

    let started = Arc::new(tokio::sync::Barrier::new(SLOW + 1));
    let mut slow = JoinSet::new();
    for i in 0..SLOW {
        let started = started.clone();
        let head = format!("GET {url}slow/{i} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Dribble: ");
        let addr = proxy.addr;
        slow.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(head.as_bytes()).await.unwrap();
            started.wait().await;
            // One byte every 100 ms, never finishing the head; at most 10 s of it.
            for _ in 0..100 {
                if s.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut probe = [0u8; 1];
                match tokio::time::timeout(Duration::from_millis(1), s.peek(&mut probe)).await {
                    Ok(Ok(_)) | Ok(Err(_)) => break, // the proxy answered or closed
                    Err(_) => {}
                }
            }
            let answer = read_bytes_to_close(&mut s).await;
            (answer, Instant::now())
        });
    }
    started.wait().await;
    // Every slow client holds a connection with a half-sent head; a normal client is still served.
    let ok = get(proxy.addr, &format!("{url}normal"), "").await;
    let served_at = Instant::now();
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.json()["uri"], "/normal");

    let mut cut = 0;
    while let Some(done) = slow.join_next().await {
        let (answer, closed_at) = done.unwrap();
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
            "a slow client got {:?}",
            String::from_utf8_lossy(&answer)
        );
        assert!(
            closed_at > served_at,
            "a slow connection was cut before the normal client was served: the crowd was not \
             in place when it mattered"
        );
        cut += 1;
    }
    assert_eq!(cut, SLOW);
    assert_eq!(
        origin.requests(),
        1,
        "only the normal request reaches the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_past_max_connections_is_refused_and_open_tunnels_keep_working() {
    const CAP: usize = 16;
    const FLOOD: usize = 150;
    let origin = Origin::start().await;
    let port = origin.port();
    let proxy = TestProxy::start(&policy(
        port,
        &format!("max_connections = {CAP}\nheader_read_timeout = \"2s\""),
    ))
    .await;
    let authority = format!("127.0.0.1:{port}");
    let (a, tunnel_a) = connect(proxy.addr, &authority, "").await;
    let (b, tunnel_b) = connect(proxy.addr, &authority, "").await;
    assert_eq!((a.status, b.status), (200, 200));

    // Open the whole flood at once and keep every connection open while counting answers.
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        flood.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    let mut refused = 0;
    let mut held = 0;
    for s in &mut flood {
        let answer = read_bytes_to_close(s).await;
        if answer.is_empty() || answer.starts_with(b"HTTP/1.1 408") {
            // Took a free slot, sent nothing, and was cut by the header-read timeout.
            held += 1;
        } else {
            let text = String::from_utf8_lossy(&answer);
            assert!(
                text.starts_with("HTTP/1.1 503")
                    && text.contains("x-egress-gate-reason: connection_limit"),
                "a refused connection got {text:?}"
            );
            refused += 1;
        }
    }
    assert_eq!(refused + held, FLOOD);
    assert!(
        held <= CAP - 2,
        "{held} flood connections were accepted past the cap of {CAP} (2 held by tunnels)"
    );
    assert!(refused >= FLOOD - (CAP - 2));
    drop(flood);

    // The tunnels opened before the flood still carry traffic.
    let ra = get_in_tunnel(tunnel_a, "x", "/after-flood-a").await;
    let rb = get_in_tunnel(tunnel_b, "x", "/after-flood-b").await;
    assert_eq!((ra.status, rb.status), (200, 200));
    // And once the flood is gone, new clients are served again.
    let mut served = false;
    for _ in 0..100 {
        let resp = get(proxy.addr, &format!("http://{authority}/fresh"), "").await;
        if resp.status == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "no slot came back after the flood ended");
}

#[tokio::test]
async fn a_pipelined_flood_on_one_connection_gets_one_answer_per_request() {
    const REQUESTS: usize = 200;
    let origin = Origin::start().await;
    let proxy = TestProxy::start(&policy(origin.port(), "")).await;
    let mut raw = Vec::new();
    for i in 0..REQUESTS {
        let close = if i + 1 == REQUESTS {
            "Connection: close\r\n"
        } else {
            ""
        };
        raw.extend_from_slice(
            format!("GET http://10.0.0.1/{i} HTTP/1.1\r\nHost: 10.0.0.1\r\n{close}\r\n").as_bytes(),
        );
    }
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&raw).await.unwrap();
    let answer = read_bytes_to_close(&mut s).await;
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(
        text.matches("HTTP/1.1 403 Forbidden").count(),
        REQUESTS,
        "one refusal per pipelined request: {}",
        &text[..text.len().min(600)]
    );
    assert_eq!(text.matches("reason=no_matching_rule").count(), REQUESTS);
    assert_eq!(origin.connections(), 0);
    let trail = proxy.stop().await;
    assert_eq!(
        trail.matches("\"event\":\"policy.violation\"").count(),
        REQUESTS
    );
}

// === oversized heads ===

#[tokio::test]
async fn an_endless_request_head_is_refused_without_being_buffered() {
    const TOTAL: usize = 64 << 20;
    let origin = Origin::start().await;
    let proxy = TestProxy::start(&policy(origin.port(), "max_header_bytes = 8192")).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET http://127.0.0.1/ HTTP/1.1\r\nX-Endless: ")
        .await
        .unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut written = 0;
    let pushed = tokio::time::timeout(IO_TIMEOUT, async {
        while written < TOTAL {
            if s.write_all(&chunk).await.is_err() {
                return;
            }
            written += chunk.len();
        }
    })
    .await;
    assert!(pushed.is_ok(), "the proxy neither read nor closed");
    // Socket buffers hold a few MiB at most; the rest was refused, not kept.
    assert!(
        written < TOTAL,
        "the proxy accepted all {TOTAL} bytes of a request head"
    );
    assert_eq!(origin.requests(), 0);
}

#[tokio::test]
async fn an_oversized_request_line_is_refused() {
    let origin = Origin::start().await;
    let proxy = TestProxy::start(&policy(origin.port(), "max_header_bytes = 8192")).await;
    let raw = format!(
        "GET http://127.0.0.1:{}/{} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        origin.port(),
        "p".repeat(20_000)
    );
    let (status, resp) = status_of(proxy.addr, raw.as_bytes()).await;
    assert!(matches!(status, 414 | 431), "{resp:?}");
    assert_eq!(origin.requests(), 0);
}

#[tokio::test]
async fn too_many_request_headers_are_refused() {
    let origin = Origin::start().await;
    let proxy = TestProxy::start(&policy(origin.port(), "")).await;
    let headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let raw = format!(
        "GET http://127.0.0.1:{}/ HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n",
        origin.port()
    );
    let (status, resp) = status_of(proxy.addr, raw.as_bytes()).await;
    assert_eq!(status, 431, "{resp:?}");
    assert_eq!(origin.requests(), 0);
}

// === request smuggling shapes ===

/// Sends each request (with `{P}` standing for the origin port) and asserts a 400, and that the
/// origin received nothing at all.
async fn refused_and_not_forwarded(cases: &[&str]) {
    let origin = Origin::start().await;
    let port = origin.port();
    let proxy = TestProxy::start(&policy(port, "")).await;
    for case in cases {
        let raw = case.replace("{P}", &port.to_string());
        let (status, resp) = status_of(proxy.addr, raw.as_bytes()).await;
        assert_eq!(status, 400, "{raw:?} got {resp:?}");
    }
    assert_eq!(
        origin.connections(),
        0,
        "a malformed request was forwarded to the origin"
    );
}

/// Content-Length together with Transfer-Encoding: the proxy follows RFC 9112 §6.3 for an
/// intermediary — Transfer-Encoding wins, Content-Length is dropped, the request is re-framed
/// upstream, and the client connection is closed after the response. Whatever the client hid
/// behind the chunked body never reaches the origin as a request of its own.
#[tokio::test]
async fn content_length_with_transfer_encoding_cannot_smuggle_a_second_request() {
    let origin = Origin::start().await;
    let port = origin.port();
    let proxy = TestProxy::start(&policy(port, "")).await;
    for order in [
        "Content-Length: 44\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 44",
    ] {
        let smuggled = format!("GET http://127.0.0.1:{port}/smuggled HTTP/1.1\r\n\r\n");
        let raw = format!(
            "POST http://127.0.0.1:{port}/front HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{order}\r\n\r\n0\r\n\r\n{smuggled}"
        );
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let answer =
            tokio::time::timeout(Duration::from_secs(10), client::read_bytes_to_close(&mut s))
                .await
                .expect("the proxy closes the connection after answering");
        let text = String::from_utf8_lossy(&answer);
        // At most one response: the connection is closed instead of reading the rest as a request.
        assert!(text.matches("HTTP/1.1 ").count() <= 1, "{text:?}");
    }
    let uris = origin.uris();
    assert!(
        uris.iter().all(|u| u == "/front"),
        "the origin saw {uris:?}"
    );
}

/// A bare LF as a line ending is accepted (RFC 9112 §2.2 allows a recipient to), and the request
/// goes upstream re-serialised with CRLF by the proxy, so the origin never sees the ambiguous
/// bytes: it receives exactly the request the proxy parsed.
#[tokio::test]
async fn bare_lf_heads_reach_the_origin_only_in_canonical_form() {
    let origin = RecordingOrigin::start().await;
    let port = origin.addr.port();
    let proxy = TestProxy::start(&policy(port, "")).await;
    let raw = format!(
        "GET http://127.0.0.1:{port}/lf HTTP/1.1\nHost: 127.0.0.1:{port}\nX-A: 1\nConnection: close\n\n"
    );
    let _ = status_of(proxy.addr, raw.as_bytes()).await;
    let received = origin.received();
    assert_eq!(received.len(), 1, "exactly one request upstream");
    let head = &received[0][..head_end(&received[0]).expect("a CRLF-terminated head upstream")];
    let text = String::from_utf8_lossy(head);
    assert!(text.starts_with("GET /lf HTTP/1.1\r\n"), "{text:?}");
    assert!(
        !head.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
        "a bare LF went upstream: {text:?}"
    );
}

#[tokio::test]
async fn conflicting_or_malformed_content_lengths_are_refused() {
    refused_and_not_forwarded(&[
        "POST http://127.0.0.1:{P}/ HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "POST http://127.0.0.1:{P}/ HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\nhello!",
        "POST http://127.0.0.1:{P}/ HTTP/1.1\r\nContent-Length: -5\r\n\r\nhello",
        "POST http://127.0.0.1:{P}/ HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
        "POST http://127.0.0.1:{P}/ HTTP/1.1\r\nContent-Length: 0x5\r\n\r\nhello",
        "POST http://127.0.0.1:{P}/ HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\nhello",
        "POST http://127.0.0.1:{P}/ HTTP/1.1\r\nContent-Length : 5\r\n\r\nhello",
    ])
    .await;
}

#[tokio::test]
async fn obs_fold_header_lines_are_refused() {
    refused_and_not_forwarded(&[
        "GET http://127.0.0.1:{P}/ HTTP/1.1\r\nHost: 127.0.0.1:{P}\r\nX-Folded: a\r\n b\r\n\r\n",
        "GET http://127.0.0.1:{P}/ HTTP/1.1\r\nHost: 127.0.0.1:{P}\r\nX-Folded: a\r\n\tb\r\n\r\n",
        "POST http://127.0.0.1:{P}/ HTTP/1.1\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    ])
    .await;
}

/// Chunked bodies whose chunk-size lines are malformed (`{P}`: the origin port).
const INVALID_CHUNKED: &[&str] = &[
    "POST http://127.0.0.1:{P}/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "POST http://127.0.0.1:{P}/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    "POST http://127.0.0.1:{P}/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "POST http://127.0.0.1:{P}/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "POST http://127.0.0.1:{P}/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
];

/// Where a request head ends in raw bytes, if it does.
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

#[tokio::test]
async fn an_invalid_chunk_size_never_reaches_the_origin_as_a_complete_request() {
    let origin = RecordingOrigin::start().await;
    let port = origin.addr.port();
    let proxy = TestProxy::start(&policy(port, "")).await;
    for case in INVALID_CHUNKED {
        let raw = case.replace("{P}", &port.to_string());
        let (status, resp) = status_of(proxy.addr, raw.as_bytes()).await;
        // The client's fault, said as such: not a 502 blaming the origin.
        assert_eq!(status, 400, "{raw:?} got {resp:?}");
        assert_eq!(
            resp.header("x-egress-gate-reason").as_deref(),
            Some("bad_request_body"),
            "{raw:?} got {resp:?}"
        );
    }
    for received in origin.received() {
        let body = &received[head_end(&received).unwrap_or(received.len())..];
        assert!(
            !body.windows(5).any(|w| w == b"0\r\n\r\n"),
            "the origin received a complete chunked message: {:?}",
            String::from_utf8_lossy(&received)
        );
    }
}

#[tokio::test]
async fn ambiguous_framing_is_normalised_before_it_reaches_the_origin() {
    // What the proxy does accept, it re-frames: the origin never sees the ambiguity.
    let origin = RecordingOrigin::start().await;
    let port = origin.addr.port();
    let proxy = TestProxy::start(&policy(port, "")).await;
    let cases = [
        "POST http://127.0.0.1:{P}/cl-te HTTP/1.1\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST http://127.0.0.1:{P}/te-cl HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\n",
        "GET http://127.0.0.1:{P}/bare-lf HTTP/1.1\nHost: 127.0.0.1:{P}\nConnection: close\n\n",
        "GET http://127.0.0.1:{P}/mixed HTTP/1.1\r\nHost: 127.0.0.1:{P}\nConnection: close\r\n\r\n",
    ];
    for case in cases {
        let raw = case.replace("{P}", &port.to_string());
        // Each connection must end on its own: CL+TE closes after the response (RFC 9112 6.1).
        let (status, resp) = status_of(proxy.addr, raw.as_bytes()).await;
        assert_eq!(status, 200, "{raw:?}: {resp:?}");
    }
    let received = origin.received();
    assert_eq!(received.len(), cases.len());
    for bytes in &received {
        let text = String::from_utf8_lossy(bytes);
        let end = head_end(bytes).expect("a complete head");
        let head = text[..end].to_ascii_lowercase();
        assert!(
            bytes[..end]
                .iter()
                .enumerate()
                .all(|(i, b)| *b != b'\n' || (i > 0 && bytes[i - 1] == b'\r')),
            "a bare LF reached the origin: {text:?}"
        );
        if head.starts_with("post") {
            assert!(
                !head.contains("content-length"),
                "Content-Length forwarded next to Transfer-Encoding: {text:?}"
            );
            assert!(head.contains("transfer-encoding: chunked"), "{text:?}");
            assert_eq!(&bytes[end..], b"0\r\n\r\n", "{text:?}");
        }
    }
}

#[tokio::test]
async fn transfer_encodings_other_than_final_chunked_are_refused() {
    refused_and_not_forwarded(&[
        "POST http://127.0.0.1:{P}/ HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        "POST http://127.0.0.1:{P}/ HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        "POST http://127.0.0.1:{P}/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST http://127.0.0.1:{P}/ HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    ])
    .await;
}

#[tokio::test]
async fn a_smuggled_second_request_never_reaches_the_origin() {
    // Whatever the proxy makes of each ambiguous message, the request hidden in its body must not
    // arrive at the origin as a request of its own, and the client's connection must end.
    let origin = Origin::start().await;
    let port = origin.port();
    let proxy = TestProxy::start(&policy(port, "")).await;
    let smuggled = format!("GET http://127.0.0.1:{port}/smuggled HTTP/1.1\r\nHost: x\r\n\r\n");
    let cases = [
        format!(
            "POST http://127.0.0.1:{port}/front HTTP/1.1\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
            5 + smuggled.len()
        ),
        format!(
            "POST http://127.0.0.1:{port}/front HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
            smuggled.len()
        ),
        format!(
            "POST http://127.0.0.1:{port}/front HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        ),
        format!(
            "POST http://127.0.0.1:{port}/front HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{smuggled}\r\n0\r\n\r\n"
        ),
    ];
    for raw in &cases {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let answer = read_bytes_to_close(&mut s).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(
            !text.contains("/smuggled"),
            "the origin answered the smuggled request: {text:?}"
        );
    }
    let trail = proxy.stop().await;
    assert!(
        !trail.contains("/smuggled"),
        "a smuggled request was treated as a request: {trail}"
    );
}

// === CONNECT oddities ===

#[tokio::test]
async fn connect_oddities_get_400_and_nothing_is_dialed() {
    let origin = Origin::start().await;
    let port = origin.port();
    let proxy = TestProxy::start(&policy(port, "")).await;
    let long_name = format!("{}example", "abcdefghi.".repeat(25)); // 257 bytes of valid labels
    assert!(long_name.len() > 253);
    // (request target, reason code when the request reaches the proxy service at all)
    let cases: Vec<(String, Option<&str>)> = vec![
        (
            format!("http://user:pw@127.0.0.1:{port}/"),
            Some("invalid_target"),
        ),
        (format!("http://127.0.0.1:{port}"), Some("invalid_target")),
        (format!("127.0.0.1:{port}/path"), None),
        (format!("127.0.0.1:{port}@evil.example:443"), None),
        (format!("{long_name}:{port}"), Some("invalid_host")),
        (
            format!("[::ffff:127.0.0.1%25lo]:{port}"),
            Some("invalid_host"),
        ),
        (format!("[fe80::1%eth0]:{port}"), None),
        (format!("127.0.0.1%2e:{port}"), None),
        (format!("127.0.0.1:{port}:{port}"), None),
        (format!("::1:{port}"), None),
        (format!(":{port}"), None),
        ("*:443".into(), None),
        ("127.0.0.1:-1".into(), None),
        ("127.0.0.1:00000".into(), Some("invalid_port")),
        ("127.0.0.1:99999999999999999999".into(), None),
        ("127.0.0.1:0x50".into(), None),
        (format!("127.0.0.1:{port}x"), None),
    ];
    for (target, reason) in &cases {
        let raw = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        let (status, resp) = status_of(proxy.addr, raw.as_bytes()).await;
        assert_eq!(status, 400, "CONNECT {target}: {resp:?}");
        if let Some(reason) = reason {
            assert_eq!(
                resp.header("x-egress-gate-reason").as_deref(),
                Some(*reason),
                "CONNECT {target}"
            );
        }
    }
    // Bytes that must never get past the request line: control characters, spaces, non-ASCII.
    for host in [
        "127.0.0.1\t",
        "127.0.0.1\x7f",
        "127.0.0.1\x00",
        "127.0.0.1\r",
        "127.0.0.1\x0b",
        "b\u{fc}cher.example",
        "127.0.0.1 ",
    ] {
        let raw = format!("CONNECT {host}:{port} HTTP/1.1\r\n\r\n");
        let (status, resp) = status_of(proxy.addr, raw.as_bytes()).await;
        assert_eq!(status, 400, "CONNECT {host:?}:{port}: {resp:?}");
    }
    // The same oddities in absolute-form requests.
    for (url, reason) in [
        (format!("http://[fe80::1%25lo]:{port}/"), "invalid_host"),
        (
            format!("http://127.0.0.1:{port}@evil.example/"),
            "userinfo_not_allowed",
        ),
        (format!("http://{long_name}:{port}/"), "invalid_host"),
        ("http://127.0.0.1:0/".to_string(), "invalid_port"),
    ] {
        let raw = format!("GET {url} HTTP/1.1\r\n\r\n");
        let (status, resp) = status_of(proxy.addr, raw.as_bytes()).await;
        assert_eq!(status, 400, "GET {url}: {resp:?}");
        assert_eq!(resp.header("x-egress-gate-reason").as_deref(), Some(reason));
    }
    assert_eq!(origin.connections(), 0, "a malformed target was dialed");
    let trail = proxy.stop().await;
    assert!(
        !trail.contains("pw@"),
        "userinfo reached the trail: {trail}"
    );
    for line in trail.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(r["connected"].is_null(), "something was dialed: {line}");
    }
}

// === misbehaving upstreams ===

/// A raw TCP origin: runs `behaviour` on every accepted connection, and counts them.
struct RawOrigin {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl RawOrigin {
    async fn start<F, Fut>(behaviour: F) -> RawOrigin
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(behaviour(stream));
            }
        });
        RawOrigin {
            addr,
            accepted,
            task,
        }
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A raw origin that records the exact bytes each connection carried: it reads until a head and
/// a complete body (by `Content-Length`, or the chunked terminator) arrived, the peer stopped, or
/// 2 s passed, then answers 200 and closes.
struct RecordingOrigin {
    addr: SocketAddr,
    received: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    _raw: RawOrigin,
}

impl RecordingOrigin {
    async fn start() -> RecordingOrigin {
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let store = received.clone();
        let raw = RawOrigin::start(move |mut s| {
            let store = store.clone();
            async move {
                let mut bytes = Vec::new();
                let mut buf = [0u8; 4096];
                let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
                while !message_complete(&bytes) {
                    match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => bytes.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
                store.lock().unwrap().push(bytes);
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            }
        })
        .await;
        RecordingOrigin {
            addr: raw.addr,
            received,
            _raw: raw,
        }
    }

    fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }
}

/// Whether `bytes` hold a whole request: a head, then its body by the head's own framing.
fn message_complete(bytes: &[u8]) -> bool {
    let Some(end) = head_end(bytes) else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let body = &bytes[end..];
    if head.contains("transfer-encoding: chunked") {
        return body.windows(5).any(|w| w == b"0\r\n\r\n");
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    body.len() >= length
}

/// Reads one request head (bounded), so the origin answers only after the proxy has asked.
async fn read_head(s: &mut TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends a request head and part of its body, then goes quiet without closing; returns whether
/// the proxy closed the connection within `IO_TIMEOUT` and what it answered.
async fn stall_mid_body(proxy: SocketAddr, port: u16) -> (bool, Vec<u8>) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let head = format!(
        "POST http://127.0.0.1:{port}/upload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 1000\r\n\r\nonly part of it"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(IO_TIMEOUT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (closed, answer)
}

#[tokio::test]
async fn a_client_stalling_mid_body_is_cut_when_the_origin_waits_for_the_body() {
    let origin = Origin::start().await;
    let proxy = TestProxy::start(&policy(origin.port(), "idle_timeout = \"1s\"")).await;
    let (closed, answer) = stall_mid_body(proxy.addr, origin.port()).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(closed, "the connection stayed open; got {text:?}");
    // Both sides are silent: whichever timeout fires, the client is told so or simply cut.
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 504") || text.starts_with("HTTP/1.1 408"),
        "{text:?}"
    );
}

#[tokio::test]
async fn a_client_stalling_mid_body_is_cut_when_the_origin_answered_early() {
    let origin = RawOrigin::start(|mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
            .await;
        // Keep reading whatever the proxy sends, never closing first.
        let mut buf = [0u8; 1024];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    let port = origin.addr.port();
    let proxy = TestProxy::start(&policy(port, "idle_timeout = \"1s\"")).await;
    let (closed, answer) = stall_mid_body(proxy.addr, port).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text:?}");
    assert!(
        closed,
        "a client stalled mid-body kept its connection past the idle timeout"
    );
}

#[tokio::test]
async fn a_client_that_never_reads_its_response_does_not_pin_the_upstream() {
    const TOTAL: usize = 256 << 20;
    let finished = Arc::new(AtomicBool::new(false));
    let f = finished.clone();
    let origin = RawOrigin::start(move |mut s| {
        let f = f.clone();
        async move {
            read_head(&mut s).await;
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {TOTAL}\r\n\r\n");
            let _ = s.write_all(head.as_bytes()).await;
            let chunk = vec![b'd'; 64 * 1024];
            let mut sent = 0;
            while sent < TOTAL {
                if s.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len();
            }
            f.store(true, Ordering::SeqCst);
        }
    })
    .await;
    let port = origin.addr.port();
    let proxy = TestProxy::start(&policy(port, "idle_timeout = \"1s\"")).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let req = format!("GET http://127.0.0.1:{port}/big HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    // Never read. Once nothing moves for the idle timeout, the proxy must let go of the upstream.
    for _ in 0..1000 {
        if finished.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        finished.load(Ordering::SeqCst),
        "a client that reads nothing pinned the upstream connection past the idle timeout"
    );
    drop(s);
}

#[tokio::test]
async fn an_origin_that_never_answers_gets_504_once_the_idle_timeout_passes() {
    let origin = RawOrigin::start(|mut s| async move {
        // Read and keep the connection, never answer.
        let mut buf = [0u8; 1024];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    let port = origin.addr.port();
    let proxy = TestProxy::start(&policy(port, "idle_timeout = \"1s\"")).await;
    let resp = get(proxy.addr, &format!("http://127.0.0.1:{port}/silent"), "").await;
    assert_eq!(resp.status, 504, "{resp:?}");
    assert_eq!(
        resp.header("x-egress-gate-reason").as_deref(),
        Some("upstream_timeout")
    );
    assert_eq!(origin.accepted.load(Ordering::SeqCst), 1);
    let rec = proxy
        .net_req(&resp.header("x-egress-gate-audit-id").unwrap())
        .await;
    assert_eq!(rec["status"], 504);
    assert_eq!(rec["connected"], format!("127.0.0.1:{port}"));
}

#[tokio::test]
async fn an_origin_that_resets_before_answering_gets_502() {
    let origin = RawOrigin::start(|mut s| async move {
        read_head(&mut s).await;
        let _ = s.set_zero_linger();
        drop(s);
    })
    .await;
    let port = origin.addr.port();
    let proxy = TestProxy::start(&policy(port, "")).await;
    let resp = get(proxy.addr, &format!("http://127.0.0.1:{port}/reset"), "").await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert_eq!(
        resp.header("x-egress-gate-reason").as_deref(),
        Some("upstream_error")
    );
}

#[tokio::test]
async fn an_origin_that_resets_mid_body_ends_the_client_response_without_hanging() {
    const PROMISED: usize = 100_000;
    const SENT: usize = 1_000;
    let origin = RawOrigin::start(|mut s| async move {
        read_head(&mut s).await;
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {PROMISED}\r\n\r\n");
        let _ = s.write_all(head.as_bytes()).await;
        let _ = s.write_all(&[b'b'; SENT]).await;
        let _ = s.flush().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = s.set_zero_linger();
        drop(s);
    })
    .await;
    let port = origin.addr.port();
    let proxy = TestProxy::start(&policy(port, "")).await;
    // `get` reads until the proxy closes, bounded; a hang fails it.
    let resp = get(proxy.addr, &format!("http://127.0.0.1:{port}/cut"), "").await;
    assert_eq!(resp.status, 200, "the head was relayed before the reset");
    assert!(
        resp.body.len() < PROMISED,
        "the client got a complete body from an upstream that never sent one"
    );
    let rec = proxy.net_req_to("127.0.0.1", port).await;
    assert!(
        rec["bytes_down"].as_u64().unwrap() < PROMISED as u64,
        "{rec}"
    );
    // The proxy is still fine afterwards.
    let again = get(proxy.addr, &format!("http://127.0.0.1:{port}/cut"), "").await;
    assert_eq!(again.status, 200);
}

#[tokio::test]
async fn an_endless_response_head_gets_502_and_is_not_buffered() {
    const TOTAL: usize = 64 << 20;
    let written = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let (w, f) = (written.clone(), finished.clone());
    let origin = RawOrigin::start(move |mut s| {
        let (w, f) = (w.clone(), f.clone());
        async move {
            read_head(&mut s).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nX-Endless: ").await;
            let chunk = vec![b'h'; 64 * 1024];
            while w.load(Ordering::SeqCst) < TOTAL {
                if s.write_all(&chunk).await.is_err() {
                    break;
                }
                w.fetch_add(chunk.len(), Ordering::SeqCst);
            }
            f.store(true, Ordering::SeqCst);
        }
    })
    .await;
    let port = origin.addr.port();
    let proxy = TestProxy::start(&policy(port, "")).await;
    let resp = get(proxy.addr, &format!("http://127.0.0.1:{port}/big"), "").await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert_eq!(
        resp.header("x-egress-gate-reason").as_deref(),
        Some("upstream_error")
    );
    for _ in 0..500 {
        if finished.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        finished.load(Ordering::SeqCst),
        "the proxy kept the connection to an upstream sending an endless head"
    );
    assert!(
        written.load(Ordering::SeqCst) < TOTAL,
        "the proxy read all {TOTAL} bytes of a response head"
    );
}

#[tokio::test]
async fn an_origin_sending_too_many_response_headers_gets_502() {
    let origin = RawOrigin::start(|mut s| async move {
        read_head(&mut s).await;
        let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n");
        for i in 0..500 {
            head.push_str(&format!("X-H{i}: v\r\n"));
        }
        head.push_str("\r\n");
        let _ = s.write_all(head.as_bytes()).await;
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf).await;
    })
    .await;
    let port = origin.addr.port();
    let proxy = TestProxy::start(&policy(port, "")).await;
    let resp = get(proxy.addr, &format!("http://127.0.0.1:{port}/many"), "").await;
    assert_eq!(resp.status, 502, "{resp:?}");
}
