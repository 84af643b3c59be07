//! Plain-HTTP forwarding end to end: header hygiene, Host handling, keep-alive and pooling,
//! per-plugin identity, report mode.

mod support;

use support::client::{self, get, read_one};
use support::origin::Origin;
use support::proxy::TestProxy;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn allow_origin(port: u16) -> String {
    format!("version = 1\n[[policy.allow]]\ncidr = \"127.0.0.1/32\"\nports = [{port}]\n")
}

fn echoed_header(echo: &serde_json::Value, name: &str) -> Option<String> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == name)
        .map(|h| h[1].as_str().unwrap().to_string())
}

#[tokio::test]
async fn allowed_get_is_forwarded_with_hop_by_hop_and_proxy_headers_removed() {
    let origin = Origin::start().await;
    let proxy = TestProxy::start(&allow_origin(origin.port())).await;
    let url = format!(
        "http://127.0.0.1:{}/path?q=1&api_key=SECRETVALUE",
        origin.port()
    );
    let resp = get(
        proxy.addr,
        &url,
        "Proxy-Foo: c2VjcmV0OnNlY3JldA==\r\nProxy-Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Drop-Me: 1\r\nConnection: close, X-Drop-Me\r\nAccept: text/plain\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-origin").as_deref(), Some("yes"));
    let echo = resp.json();
    assert_eq!(
        echo["uri"], "/path?q=1&api_key=SECRETVALUE",
        "origin-form upstream"
    );
    assert_eq!(
        echoed_header(&echo, "host"),
        Some(format!("127.0.0.1:{}", origin.port()))
    );
    assert_eq!(
        echoed_header(&echo, "accept").as_deref(),
        Some("text/plain")
    );
    for gone in ["proxy-foo", "proxy-connection", "keep-alive", "x-drop-me"] {
        assert_eq!(
            echoed_header(&echo, gone),
            None,
            "{gone} was forwarded: {echo}"
        );
    }

    let rec = proxy.net_req_to("127.0.0.1", origin.port()).await;
    assert_eq!(rec["method"], "GET");
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["path"], "/path?q=1&api_key=REDACTED");
    assert_eq!(rec["bytes_down"].as_u64().unwrap(), resp.body.len() as u64);
    let trail = std::fs::read_to_string(&proxy.audit_path).unwrap();
    assert!(!trail.contains("SECRETVALUE"), "secret in trail: {trail}");
}

#[tokio::test]
async fn denied_get_is_403_and_never_reaches_the_origin() {
    let origin = Origin::start().await;
    let proxy = TestProxy::start(&allow_origin(1)).await;
    let resp = get(
        proxy.addr,
        &format!("http://127.0.0.1:{}/", origin.port()),
        "",
    )
    .await;
    assert_eq!(resp.status, 403);
    assert_eq!(
        resp.header("x-egress-gate-reason").as_deref(),
        Some("no_matching_rule")
    );
    let id = resp.header("x-egress-gate-audit-id").unwrap();
    assert_eq!(proxy.net_req(&id).await["decision"], "deny");
    assert_eq!(proxy.violations(&id).len(), 1);
    assert_eq!(origin.requests(), 0);
}

#[tokio::test]
async fn conflicting_host_header_is_400() {
    let origin = Origin::start().await;
    let proxy = TestProxy::start(&allow_origin(origin.port())).await;
    let raw = format!(
        "GET http://127.0.0.1:{}/ HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
        origin.port()
    );
    let resp = client::roundtrip(proxy.addr, raw.as_bytes()).await;
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.header("x-egress-gate-reason").as_deref(),
        Some("host_mismatch")
    );
    assert_eq!(origin.requests(), 0);
}

#[tokio::test]
async fn non_proxy_requests_and_other_schemes_are_400() {
    let origin = Origin::start().await;
    let proxy = TestProxy::start(&allow_origin(origin.port())).await;
    let cases = [
        (
            "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n".to_string(),
            "not_a_proxy_request",
        ),
        (
            "GET https://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n".to_string(),
            "unsupported_scheme",
        ),
        (
            format!(
                "GET http://user:pw@127.0.0.1:{}/ HTTP/1.1\r\n\r\n",
                origin.port()
            ),
            "userinfo_not_allowed",
        ),
    ];
    for (raw, reason) in cases {
        let resp = client::roundtrip(proxy.addr, raw.as_bytes()).await;
        assert_eq!(resp.status, 400, "{raw:?}: {resp:?}");
        assert_eq!(
            resp.header("x-egress-gate-reason").as_deref(),
            Some(reason),
            "{raw:?}"
        );
    }
    let trail = std::fs::read_to_string(&proxy.audit_path).unwrap();
    assert!(!trail.contains("user:pw"), "userinfo in trail: {trail}");
    assert_eq!(origin.requests(), 0);
}

#[tokio::test]
async fn keep_alive_to_the_client_and_pooled_upstream_connections() {
    let origin = Origin::start().await;
    let proxy = TestProxy::start(&allow_origin(origin.port())).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    for i in 0..5 {
        let req = format!(
            "GET http://127.0.0.1:{0}/r{i} HTTP/1.1\r\nHost: 127.0.0.1:{0}\r\n\r\n",
            origin.port()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let resp = read_one(&mut s).await;
        assert_eq!(resp.status, 200, "request {i}: {resp:?}");
        assert_eq!(resp.json()["uri"], format!("/r{i}"));
    }
    assert_eq!(origin.requests(), 5);
    assert_eq!(
        origin.connections(),
        1,
        "upstream connection was not reused"
    );
}

#[tokio::test]
async fn post_bodies_are_forwarded_and_counted() {
    let origin = Origin::start().await;
    let proxy = TestProxy::start(&allow_origin(origin.port())).await;
    let body = "x".repeat(10_000);
    let raw = format!(
        "POST http://127.0.0.1:{0}/upload HTTP/1.1\r\nHost: 127.0.0.1:{0}\r\nContent-Length: {1}\r\nConnection: close\r\n\r\n{body}",
        origin.port(),
        body.len()
    );
    let resp = client::roundtrip(proxy.addr, raw.as_bytes()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["body_len"], 10_000);
    let rec = proxy.net_req_to("127.0.0.1", origin.port()).await;
    assert_eq!(rec["bytes_up"], 10_000);
}

const TOKEN_HASH_OF_TEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn plugin_policy(port: u16) -> String {
    // Only the `weather` plugin may reach the origin; `other` may not; anonymous may not.
    format!(
        r#"version = 1
[plugins.weather]
token_sha256 = "{TOKEN_HASH_OF_TEST}"
[[plugins.weather.allow]]
cidr = "127.0.0.1/32"
ports = [{port}]
[plugins.other]
token_sha256 = "{TOKEN_HASH_OF_TEST}"
"#
    )
}

#[tokio::test]
async fn plugin_identity_by_listener() {
    let origin = Origin::start().await;
    let proxy =
        TestProxy::start_with_plugins(&plugin_policy(origin.port()), &["weather", "other"]).await;
    let url = format!("http://127.0.0.1:{}/", origin.port());

    let resp = get(proxy.plugin_addrs["weather"], &url, "").await;
    assert_eq!(resp.status, 200);
    let resp = get(proxy.plugin_addrs["other"], &url, "").await;
    assert_eq!(resp.status, 403);
    let resp = get(proxy.addr, &url, "").await;
    assert_eq!(resp.status, 403);

    // On a plugin's listener, credentials for another plugin change nothing.
    let resp = get(
        proxy.plugin_addrs["other"],
        &url,
        "Proxy-Authorization: Basic d2VhdGhlcjp0ZXN0\r\n", // weather:test
    )
    .await;
    assert_eq!(resp.status, 403);
    let plugins: Vec<String> = proxy
        .records()
        .iter()
        .filter(|r| r["event"] == "net.req")
        .map(|r| r["plugin"].as_str().unwrap_or("-").to_string())
        .collect();
    assert_eq!(plugins, vec!["weather", "other", "-", "other"]);
}

#[tokio::test]
async fn plugin_identity_by_token() {
    let origin = Origin::start().await;
    let proxy = TestProxy::start(&plugin_policy(origin.port())).await;
    let url = format!("http://127.0.0.1:{}/", origin.port());

    // weather:test
    let resp = get(
        proxy.addr,
        &url,
        "Proxy-Authorization: Basic d2VhdGhlcjp0ZXN0\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(echoed_header(&resp.json(), "proxy-authorization"), None);
    // weather:wrong
    let resp = get(
        proxy.addr,
        &url,
        "Proxy-Authorization: Basic d2VhdGhlcjp3cm9uZw==\r\n",
    )
    .await;
    assert_eq!(resp.status, 407);
    assert_eq!(
        resp.header("proxy-authenticate").as_deref(),
        Some("Basic realm=\"egress-gate\"")
    );
    assert_eq!(
        resp.header("x-egress-gate-reason").as_deref(),
        Some("proxy_auth_failed")
    );
    // other:test — valid identity, but its rules do not allow the origin.
    let resp = get(
        proxy.addr,
        &url,
        "Proxy-Authorization: Basic b3RoZXI6dGVzdA==\r\n",
    )
    .await;
    assert_eq!(resp.status, 403);
    // CONNECT carries identity the same way.
    let (resp, _) = client::connect(
        proxy.addr,
        &format!("127.0.0.1:{}", origin.port()),
        "Proxy-Authorization: Basic d2VhdGhlcjp0ZXN0\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(origin.requests(), 1);
    let trail = std::fs::read_to_string(&proxy.audit_path).unwrap();
    assert!(
        !trail.contains("d2VhdGhlcjp") && !trail.contains("wrong"),
        "credentials in trail"
    );
}

#[tokio::test]
async fn report_mode_lets_a_rule_denial_through_and_records_it_unenforced() {
    let origin = Origin::start().await;
    // A deny rule matches the origin's address; enforce mode would refuse.
    let policy = format!(
        "version = 1\n[policy]\nmode = \"report\"\n[[policy.allow]]\ncidr = \"127.0.0.1/32\"\nports = [{0}]\n[[policy.deny]]\ncidr = \"127.0.0.1/32\"\nports = [{0}]\n",
        origin.port()
    );
    let proxy = TestProxy::start(&policy).await;
    let resp = get(
        proxy.addr,
        &format!("http://127.0.0.1:{}/", origin.port()),
        "",
    )
    .await;
    // The deny rule matches the literal; report mode forwards anyway and records the violation.
    assert_eq!(resp.status, 200, "{resp:?}");
    let rec = proxy.net_req_to("127.0.0.1", origin.port()).await;
    let v = proxy.violations(rec["audit_id"].as_str().unwrap());
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(v[0]["enforced"], false);
    assert_eq!(v[0]["reason"], "deny_rule");
}

#[tokio::test]
async fn a_plugin_removed_by_reload_loses_every_capability_on_its_listener() {
    let origin = Origin::start().await;
    let url = format!("http://127.0.0.1:{}/", origin.port());
    // Globally allowed, and the plugin is declared: its listener works.
    let policy = format!("{}[plugins.weather]\n", allow_origin(origin.port()));
    let proxy = TestProxy::start_with_plugins(&policy, &["weather"]).await;
    assert_eq!(
        get(proxy.plugin_addrs["weather"], &url, "").await.status,
        200
    );
    // The reload drops the plugin: its listener does not fall back to the global rules.
    proxy.rewrite_policy(&allow_origin(origin.port()));
    proxy.reload().await;
    proxy.wait_for(|r| r["event"] == "policy.reload").await;
    let resp = get(proxy.plugin_addrs["weather"], &url, "").await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(
        resp.header("x-egress-gate-reason").as_deref(),
        Some("unknown_plugin")
    );
    assert_eq!(get(proxy.addr, &url, "").await.status, 200);
    assert_eq!(origin.requests(), 2);
}
