//! The CONNECT relay between real TCP sockets (the `splice` path): bytes the client sends right
//! behind its CONNECT head, bulk transfers larger than any pipe or buffer, both directions at
//! once, and the byte counts in the tunnel's record.

mod support;

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::client::{read_one, read_to_close};
use support::origin::Origin;
use support::proxy::TestProxy;

fn allow_port(port: u16) -> String {
    format!("version = 1\n[[policy.allow]]\ncidr = \"127.0.0.1/32\"\nports = [{port}]\n")
}

/// An origin that echoes every connection back until EOF, then closes.
async fn echo_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A byte pattern that a reordering, duplication or loss anywhere would break.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect()
}

#[tokio::test]
async fn bytes_sent_together_with_the_connect_head_reach_the_origin_first() {
    let origin = Origin::start().await;
    let proxy = TestProxy::start(&allow_port(origin.port())).await;
    let authority = format!("127.0.0.1:{}", origin.port());

    // One write: the CONNECT head and the first request inside the tunnel, as eager clients do.
    let inner = format!("GET /early HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    let both = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n{inner}");
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(both.as_bytes()).await.unwrap();
    let answer = read_one(&mut s).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let resp = read_to_close(&mut s).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.json()["uri"], "/early");
    // The tunnel (and its record) ends once the client closes its side too.
    drop(s);

    let rec = proxy.net_req_to("127.0.0.1", origin.port()).await;
    assert_eq!(
        rec["bytes_up"].as_u64().unwrap(),
        inner.len() as u64,
        "{rec}"
    );
}

#[tokio::test]
async fn a_bulk_tunnel_carries_megabytes_both_ways_intact_and_counts_them() {
    let echo = echo_origin().await;
    let proxy = TestProxy::start(&allow_port(echo.port())).await;
    let (answer, stream) = support::client::connect(proxy.addr, &echo.to_string(), "").await;
    assert_eq!(answer.status, 200, "{answer:?}");

    // Far more than a pipe or a socket buffer holds, so back-pressure is exercised both ways.
    const LEN: usize = 24 << 20;
    let sent = pattern(LEN);
    let (mut r, mut w) = stream.into_split();
    let to_send = sent.clone();
    let writer = tokio::spawn(async move {
        for chunk in to_send.chunks(100_003) {
            w.write_all(chunk).await.unwrap();
        }
        // Half-close: the echo origin sees EOF, finishes echoing, and closes its side.
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::with_capacity(LEN);
    r.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), LEN);
    assert!(got == sent, "the echoed bytes differ from those sent");

    let rec = proxy.net_req_to("127.0.0.1", echo.port()).await;
    assert_eq!(rec["bytes_up"].as_u64().unwrap(), LEN as u64, "{rec}");
    assert_eq!(rec["bytes_down"].as_u64().unwrap(), LEN as u64, "{rec}");
}

#[tokio::test]
async fn many_tunnels_at_once_each_get_their_own_bytes() {
    let echo = echo_origin().await;
    let proxy = TestProxy::start(&allow_port(echo.port())).await;
    let mut tasks = Vec::new();
    for i in 0..32u8 {
        let authority = echo.to_string();
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let (answer, mut s) = support::client::connect(addr, &authority, "").await;
            assert_eq!(answer.status, 200);
            // Several bursts per tunnel, so pooled pipes pass from tunnel to tunnel in between.
            for round in 0..20u8 {
                let msg = vec![i ^ round; 3000 + usize::from(i) * 17];
                s.write_all(&msg).await.unwrap();
                let mut back = vec![0u8; msg.len()];
                s.read_exact(&mut back).await.unwrap();
                assert_eq!(back, msg, "tunnel {i} round {round}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}
