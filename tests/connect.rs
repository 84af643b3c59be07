//! CONNECT tunnels end to end: real proxy, real origin, raw client bytes.

mod support;

use support::client::{self, connect, get_in_tunnel};
use support::origin::Origin;
use support::proxy::TestProxy;

fn allow_origin(port: u16) -> String {
    format!("version = 1\n[[policy.allow]]\ncidr = \"127.0.0.1/32\"\nports = [{port}]\n")
}

#[tokio::test]
async fn allowed_connect_tunnels_to_the_origin_and_is_recorded() {
    let origin = Origin::start().await;
    let proxy = TestProxy::start(&allow_origin(origin.port())).await;
    let authority = format!("127.0.0.1:{}", origin.port());

    let (resp, stream) = connect(proxy.addr, &authority, "").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let inner = get_in_tunnel(stream, &authority, "/hello").await;
    assert_eq!(inner.status, 200);
    assert_eq!(inner.json()["uri"], "/hello");

    let rec = proxy.net_req_to("127.0.0.1", origin.port()).await;
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["method"], "CONNECT");
    assert_eq!(rec["rule"], "policy.allow[0]");
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["connected"], authority);
    assert_eq!(rec["resolved"], serde_json::json!(["127.0.0.1"]));
    assert!(rec["bytes_up"].as_u64().unwrap() > 20, "{rec}");
    assert_eq!(
        rec["bytes_down"].as_u64().unwrap(),
        inner.head.len() as u64 + 4 + inner.body.len() as u64
    );
    assert_eq!(rec["policy_sha256"].as_str().unwrap().len(), 64);
    for key in [
        "ts",
        "audit_id",
        "plugin",
        "client",
        "host",
        "port",
        "duration_ms",
    ] {
        assert!(rec.get(key).is_some(), "net.req lacks {key}: {rec}");
    }
    assert!(
        proxy
            .violations(rec["audit_id"].as_str().unwrap())
            .is_empty()
    );
}

#[tokio::test]
async fn denied_connect_gets_403_with_reason_and_audit_id_and_nothing_is_dialed() {
    let origin = Origin::start().await;
    // The origin's port is not allowed: only some other port is.
    let proxy = TestProxy::start(&allow_origin(1)).await;
    let authority = format!("127.0.0.1:{}", origin.port());
    let (resp, _) = connect(proxy.addr, &authority, "").await;
    assert_eq!(resp.status, 403);
    assert_eq!(
        resp.header("x-egress-gate-reason").as_deref(),
        Some("no_matching_rule")
    );
    let audit_id = resp.header("x-egress-gate-audit-id").unwrap();
    assert!(
        resp.body_text()
            .contains(&format!("reason=no_matching_rule audit_id={audit_id}")),
        "{}",
        resp.body_text()
    );

    let rec = proxy.net_req(&audit_id).await;
    assert_eq!(rec["decision"], "deny");
    assert_eq!(rec["status"], 403);
    assert_eq!(rec["connected"], serde_json::Value::Null);
    let v = proxy.violations(&audit_id);
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(v[0]["reason"], "no_matching_rule");
    assert_eq!(v[0]["enforced"], true);
    assert_eq!(origin.connections(), 0);
}

#[tokio::test]
async fn default_policy_denies_loopback_even_with_a_universal_host_rule() {
    let origin = Origin::start().await;
    // The name and port are allowed, so only the address check can refuse.
    let proxy = TestProxy::start(&format!(
        "version = 1\n[policy]\nstrict = false\n[[policy.allow]]\nhost = \"*\"\nports = [{}]\n",
        origin.port()
    ))
    .await;
    for host in ["127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]"] {
        let (resp, _) = connect(proxy.addr, &format!("{host}:{}", origin.port()), "").await;
        assert_eq!(resp.status, 403, "{host}: {resp:?}");
        assert_eq!(
            resp.header("x-egress-gate-reason").as_deref(),
            Some("non_public_address"),
            "{host}"
        );
        let audit_id = resp.header("x-egress-gate-audit-id").unwrap();
        let v = proxy.violations(&audit_id);
        assert_eq!(v.len(), 1);
        assert!(!v[0]["addresses"].as_array().unwrap().is_empty(), "{v:?}");
    }
    assert_eq!(
        origin.connections(),
        0,
        "the proxy dialed a non-public address"
    );
}

#[tokio::test]
async fn numeric_spellings_of_loopback_are_the_address_not_a_name() {
    let origin = Origin::start().await;
    let port = origin.port();
    let proxy = TestProxy::start(&format!(
        "version = 1\n[policy]\nstrict = false\n[[policy.allow]]\nhost = \"*\"\nports = [{port}]\n[[policy.allow]]\ncidr = \"127.0.0.1/32\"\nports = [{port}]\n"
    ))
    .await;
    // Allowed through the cidr exception: every spelling is 127.0.0.1.
    for host in ["2130706433", "0x7f.1", "0177.0.0.1", "127.1", "0x7f000001"] {
        let (resp, s) = connect(proxy.addr, &format!("{host}:{port}"), "").await;
        assert_eq!(resp.status, 200, "{host}: {resp:?}");
        drop(s);
    }
    // Other loopback spellings are not covered by the /32 exception.
    for host in [
        "127.0.0.2",
        "2130706434",
        "0x7f.2",
        "[::ffff:7f00:1]",
        "[::127.0.0.1]",
    ] {
        let (resp, _) = connect(proxy.addr, &format!("{host}:{port}"), "").await;
        assert_eq!(resp.status, 403, "{host}: {resp:?}");
        assert_eq!(
            resp.header("x-egress-gate-reason").as_deref(),
            Some("non_public_address"),
            "{host}"
        );
    }
    let records = proxy.records();
    assert!(
        records.iter().all(|r| r["event"] != "net.req"
            || r["decision"] != "allow"
            || r["connected"] == format!("127.0.0.1:{port}")),
        "an allowed tunnel went somewhere other than the vetted origin: {records:#?}"
    );
}

#[tokio::test]
async fn malformed_connect_targets_get_400_and_nothing_is_dialed() {
    let origin = Origin::start().await;
    let port = origin.port();
    let proxy = TestProxy::start(&allow_origin(port)).await;
    let long = format!("{}.example", "a".repeat(250));
    let cases: Vec<(String, &str)> = vec![
        (format!("user:pw@127.0.0.1:{port}"), "userinfo_not_allowed"),
        ("127.0.0.1:0".into(), "invalid_port"),
        ("127.0.0.1:65536".into(), "invalid_port"),
        ("127.0.0.1".into(), "invalid_port"),
        (format!("[fe80::1%25lo]:{port}"), "invalid_host"),
        (format!("a..b:{port}"), "invalid_host"),
        (format!("{long}:{port}"), "invalid_host"),
        (format!("08.0.0.1:{port}"), "invalid_host"),
    ];
    for (authority, reason) in cases {
        let (resp, _) = connect(proxy.addr, &authority, "").await;
        assert_eq!(resp.status, 400, "{authority}: {resp:?}");
        assert_eq!(
            resp.header("x-egress-gate-reason").as_deref(),
            Some(reason),
            "{authority}"
        );
    }
    // Control characters and spaces never make it past the request line.
    for raw in [
        format!("CONNECT 127.0.0.1\x01:{port} HTTP/1.1\r\n\r\n"),
        format!("CONNECT 127.0.0.1 :{port} HTTP/1.1\r\n\r\n"),
    ] {
        let resp = client::roundtrip(proxy.addr, raw.as_bytes()).await;
        assert_eq!(resp.status, 400, "{raw:?}: {resp:?}");
    }
    assert_eq!(origin.connections(), 0);
}

#[tokio::test]
async fn connect_with_a_body_is_refused() {
    let origin = Origin::start().await;
    let proxy = TestProxy::start(&allow_origin(origin.port())).await;
    let raw = format!(
        "CONNECT 127.0.0.1:{0} HTTP/1.1\r\nHost: 127.0.0.1:{0}\r\nContent-Length: 5\r\n\r\nhello",
        origin.port()
    );
    let resp = client::roundtrip(proxy.addr, raw.as_bytes()).await;
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.header("x-egress-gate-reason").as_deref(),
        Some("connect_with_body")
    );
    assert_eq!(origin.connections(), 0);
}

#[tokio::test]
async fn refused_upstream_is_502_connect_refused() {
    // Bind then drop a listener to find a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = TestProxy::start(&allow_origin(port)).await;
    let (resp, _) = connect(proxy.addr, &format!("127.0.0.1:{port}"), "").await;
    assert_eq!(resp.status, 502);
    assert_eq!(
        resp.header("x-egress-gate-reason").as_deref(),
        Some("connect_refused")
    );
    let rec = proxy
        .net_req(&resp.header("x-egress-gate-audit-id").unwrap())
        .await;
    assert_eq!(rec["status"], 502);
    assert_eq!(rec["reason"], "connect_refused");
}

#[tokio::test]
async fn the_proxy_refuses_to_dial_itself() {
    // Even an explicit exception covering the proxy's own port does not let it loop into itself.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let own = listener.local_addr().unwrap();
    let proxy = TestProxy::start_bound(&allow_origin(own.port()), listener, &[]).await;
    let (resp, _) = connect(proxy.addr, &own.to_string(), "").await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(
        resp.header("x-egress-gate-reason").as_deref(),
        Some("non_public_address")
    );
}

#[tokio::test]
async fn an_upstream_that_never_completes_the_handshake_is_504_connect_timeout() {
    // A listener that never accepts, with its accept queue full: the kernel drops further SYNs,
    // so the proxy's connect hangs until `connect_timeout`.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    let _listener = socket.listen(0).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let policy = format!(
        "version = 1\n[limits]\nconnect_timeout = \"1s\"\n[[policy.allow]]\ncidr = \"127.0.0.1/32\"\nports = [{port}]\n"
    );
    let proxy = TestProxy::start(&policy).await;
    let (resp, _) = connect(proxy.addr, &format!("127.0.0.1:{port}"), "").await;
    assert_eq!(resp.status, 504, "{resp:?}");
    assert_eq!(
        resp.header("x-egress-gate-reason").as_deref(),
        Some("connect_timeout")
    );
}
