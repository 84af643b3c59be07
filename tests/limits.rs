//! `[limits]` on real sockets: header read timeout, header size, connection cap, graceful stop.

mod support;

use std::time::Duration;

use support::client::{self, connect, get, read_to_close};
use support::origin::Origin;
use support::proxy::TestProxy;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn policy(port: u16, limits: &str) -> String {
    format!(
        "version = 1\n[limits]\n{limits}\n[[policy.allow]]\ncidr = \"127.0.0.1/32\"\nports = [{port}]\n"
    )
}

#[tokio::test]
async fn a_client_dribbling_its_head_is_cut_off_by_the_header_read_timeout() {
    let origin = Origin::start().await;
    let proxy = TestProxy::start(&policy(origin.port(), "header_read_timeout = \"1s\"")).await;
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(b"GET http://127.0.0.1/ HTTP/1.1\r\nX-A: 1\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // Keep dribbling a byte every 200 ms; the proxy must still close within the timeout.
    let dribble = async {
        for _ in 0..50 {
            if slow.write_all(b"X").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(8), dribble)
        .await
        .ok();
    let answer = client::read_bytes_to_close(&mut slow).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "slow client was not cut off"
    );
    // hyper closes the connection without a response; nothing was forwarded.
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(origin.requests(), 0);
    // Meanwhile a normal client is served.
    let ok = get(
        proxy.addr,
        &format!("http://127.0.0.1:{}/", origin.port()),
        "",
    )
    .await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let origin = Origin::start().await;
    let proxy = TestProxy::start(&policy(origin.port(), "max_header_bytes = 8192")).await;
    let big = "a".repeat(20_000);
    let raw = format!(
        "GET http://127.0.0.1:{}/ HTTP/1.1\r\nX-Big: {big}\r\n\r\n",
        origin.port()
    );
    let resp = client::roundtrip(proxy.addr, raw.as_bytes()).await;
    assert_eq!(resp.status, 431, "{resp:?}");
    assert_eq!(origin.requests(), 0);
}

#[tokio::test]
async fn connections_past_the_cap_are_refused_without_hurting_open_tunnels() {
    let origin = Origin::start().await;
    let port = origin.port();
    let proxy = TestProxy::start(&policy(port, "max_connections = 2")).await;
    // Two tunnels hold both slots.
    let (a, tunnel_a) = connect(proxy.addr, &format!("127.0.0.1:{port}"), "").await;
    let (b, tunnel_b) = connect(proxy.addr, &format!("127.0.0.1:{port}"), "").await;
    assert_eq!((a.status, b.status), (200, 200));
    // A third connection is told why and closed.
    let mut third = TcpStream::connect(proxy.addr).await.unwrap();
    let refused = read_to_close(&mut third).await;
    assert_eq!(refused.status, 503);
    assert_eq!(
        refused.header("x-egress-gate-reason").as_deref(),
        Some("connection_limit")
    );
    // The established tunnels still work.
    let ra = client::get_in_tunnel(tunnel_a, "x", "/a").await;
    assert_eq!(ra.status, 200);
    let rb = client::get_in_tunnel(tunnel_b, "x", "/b").await;
    assert_eq!(rb.status, 200);
    // Once they are closed, slots free up again.
    let mut served = false;
    for _ in 0..100 {
        let (c, _) = connect(proxy.addr, &format!("127.0.0.1:{port}"), "").await;
        if c.status == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "slots were not released after the tunnels closed");
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_the_idle_timeout() {
    let origin = Origin::start().await;
    let proxy = TestProxy::start(&policy(origin.port(), "idle_timeout = \"1s\"")).await;
    let (resp, mut tunnel) = connect(proxy.addr, &format!("127.0.0.1:{}", origin.port()), "").await;
    assert_eq!(resp.status, 200);
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut tunnel, &mut buf),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "idle tunnel stayed open: {closed:?}"
    );
    let rec = proxy.net_req_to("127.0.0.1", origin.port()).await;
    assert_eq!(rec["bytes_up"], 0);
}

#[tokio::test]
async fn stop_drains_and_flushes_the_trail() {
    let origin = Origin::start().await;
    let proxy = TestProxy::start(&policy(origin.port(), "")).await;
    let (resp, tunnel) = connect(proxy.addr, &format!("127.0.0.1:{}", origin.port()), "").await;
    assert_eq!(resp.status, 200);
    // The tunnel closes while the proxy drains.
    let client = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(tunnel);
    });
    let trail = proxy.stop().await;
    client.await.unwrap();
    assert!(
        trail.contains("\"method\":\"CONNECT\""),
        "tunnel record missing after stop: {trail}"
    );
}

#[tokio::test]
async fn a_retired_listener_stops_accepting_and_closes_its_socket() {
    use egress_gate::server::Listener;
    use tokio_util::sync::CancellationToken;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "version = 1\n[plugins.p]\n[audit]\npath = {:?}\n",
        dir.path().join("a.jsonl").display().to_string()
    );
    let config = egress_gate::config::parse(&dir.path().join("p.toml"), &text).unwrap();
    let anonymous = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = egress_gate::app::start(config, vec![Listener::anonymous(anonymous)])
        .await
        .unwrap();
    let add = running.listener_sender();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(running.serve(async {
        let _ = stop_rx.await;
    }));

    // Added while serving, as daemon mode does for a plugin's sandbox sockets.
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let retire = CancellationToken::new();
    add.send(Listener::for_plugin(socket, "p".into()).until(retire.clone()))
        .await
        .unwrap();
    let resp = get(addr, "http://127.0.0.1:1/", "").await;
    assert_eq!(resp.status, 403, "served as plugin p: {resp:?}");

    retire.cancel();
    let mut closed = false;
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(closed, "the retired listener still accepts");
    let _ = stop_tx.send(());
    served.await.unwrap().unwrap();
}
