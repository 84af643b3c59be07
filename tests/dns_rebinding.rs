//! Resolution through a real (test) DNS server: the proxy resolves once, vets every address,
//! and never connects to an address it did not vet — DNS rebinding and mixed answers included.

mod support;

use std::net::IpAddr;

use support::client::{connect, get, get_in_tunnel};
use support::dns::{Answer, DnsServer, Zone};
use support::origin::Origin;
use support::proxy::TestProxy;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A policy that allows the test names on the origin's port, excepts 127.0.0.1 (where the origin
/// listens) for that port, and resolves through `dns`.
fn policy(dns: &DnsServer, port: u16) -> String {
    format!(
        r#"version = 1
[dns]
nameservers = ["{dns}"]
timeout = "1s"
[policy]
# `*.test` spans a whole top-level domain, which strict mode refuses.
strict = false
[[policy.allow]]
host = "*.test"
ports = [{port}]
[[policy.allow]]
host = "api.example.com"
ports = [{port}]
[[policy.allow]]
cidr = "127.0.0.1/32"
ports = [{port}]
"#,
        dns = dns.addr
    )
}

#[tokio::test]
async fn a_public_looking_name_with_a_private_answer_is_denied() {
    let origin = Origin::start().await;
    let dns = DnsServer::start(
        Zone::new()
            .with("api.example.com", Answer::Fixed(vec![ip("10.0.0.7")]), 60)
            .with("meta.test", Answer::Fixed(vec![ip("169.254.169.254")]), 60)
            .with("v6.test", Answer::Fixed(vec![ip("fd00::1")]), 60),
    )
    .await
    .unwrap();
    let proxy = TestProxy::start(&policy(&dns, origin.port())).await;
    for (name, offending) in [
        ("api.example.com", "10.0.0.7"),
        ("meta.test", "169.254.169.254"),
        ("v6.test", "fd00::1"),
    ] {
        let (resp, _) = connect(proxy.addr, &format!("{name}:{}", origin.port()), "").await;
        assert_eq!(resp.status, 403, "{name}: {resp:?}");
        assert_eq!(
            resp.header("x-egress-gate-reason").as_deref(),
            Some("non_public_address")
        );
        assert!(resp.body_text().contains(offending), "{}", resp.body_text());
        let id = resp.header("x-egress-gate-audit-id").unwrap();
        let rec = proxy.net_req(&id).await;
        assert_eq!(rec["resolved"], serde_json::json!([offending]));
        assert_eq!(rec["connected"], serde_json::Value::Null);
        assert_eq!(
            proxy.violations(&id)[0]["addresses"],
            serde_json::json!([offending])
        );
    }
}

#[tokio::test]
async fn a_mixed_public_and_private_answer_is_denied_as_a_whole() {
    let origin = Origin::start().await;
    let dns = DnsServer::start(Zone::new().with(
        "mixed.test",
        // 127.0.0.1 on this port is even an allowed exception; 10.1.1.1 is not.
        Answer::Fixed(vec![ip("127.0.0.1"), ip("10.1.1.1")]),
        60,
    ))
    .await
    .unwrap();
    let proxy = TestProxy::start(&policy(&dns, origin.port())).await;
    let resp = get(
        proxy.addr,
        &format!("http://mixed.test:{}/", origin.port()),
        "",
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(
        resp.header("x-egress-gate-reason").as_deref(),
        Some("non_public_address")
    );
    assert!(resp.body_text().contains("10.1.1.1"));
    assert_eq!(
        origin.connections(),
        0,
        "dialed an address from a refused answer"
    );
}

#[tokio::test]
async fn rebinding_answers_never_lead_to_a_connection_to_the_private_address() {
    let origin = Origin::start().await;
    let port = origin.port();
    // TTL 0: every request resolves again. First answer: the (excepted) origin. Then a private one.
    let dns = DnsServer::start(Zone::new().with(
        "rebind.test",
        Answer::Rotating(vec![vec![ip("127.0.0.1")], vec![ip("10.9.9.9")]]),
        0,
    ))
    .await
    .unwrap();
    let proxy = TestProxy::start(&policy(&dns, port)).await;

    let (first, stream) = connect(proxy.addr, &format!("rebind.test:{port}"), "").await;
    assert_eq!(first.status, 200, "{first:?}");
    let inner = get_in_tunnel(stream, &format!("rebind.test:{port}"), "/").await;
    assert_eq!(inner.status, 200);
    // One request, one resolution: an A and an AAAA query, nothing more.
    assert_eq!(
        dns.queries("rebind.test"),
        2,
        "the name was resolved more than once for one request"
    );
    let rec = proxy.net_req_to("rebind.test", port).await;
    assert_eq!(rec["connected"], format!("127.0.0.1:{port}"));

    for _ in 0..3 {
        let (resp, _) = connect(proxy.addr, &format!("rebind.test:{port}"), "").await;
        assert_eq!(resp.status, 403, "{resp:?}");
        assert!(resp.body_text().contains("10.9.9.9"));
    }
    assert_eq!(origin.connections(), 1);
    let records = proxy.records();
    let connected: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["event"] == "net.req" && !r["connected"].is_null())
        .map(|r| &r["connected"])
        .collect();
    assert_eq!(
        connected,
        vec![&serde_json::json!(format!("127.0.0.1:{port}"))]
    );
}

#[tokio::test]
async fn dns_failures_deny_with_502() {
    let origin = Origin::start().await;
    let dns = DnsServer::start(Zone::new().with("broken.test", Answer::ServFail, 0))
        .await
        .unwrap();
    let proxy = TestProxy::start(&policy(&dns, origin.port())).await;
    for name in ["broken.test", "missing.test"] {
        let (resp, _) = connect(proxy.addr, &format!("{name}:{}", origin.port()), "").await;
        assert_eq!(resp.status, 502, "{name}: {resp:?}");
        assert_eq!(
            resp.header("x-egress-gate-reason").as_deref(),
            Some("dns_failure")
        );
        let rec = proxy
            .net_req(&resp.header("x-egress-gate-audit-id").unwrap())
            .await;
        assert_eq!(rec["reason"], "dns_failure");
        assert_eq!(rec["connected"], serde_json::Value::Null);
    }
    assert_eq!(origin.connections(), 0);
}

#[tokio::test]
async fn names_the_rules_do_not_allow_are_never_resolved() {
    let origin = Origin::start().await;
    let dns = DnsServer::start(Zone::new().with(
        "other.example",
        Answer::Fixed(vec![ip("127.0.0.1")]),
        60,
    ))
    .await
    .unwrap();
    let proxy = TestProxy::start(&policy(&dns, origin.port())).await;
    let (resp, _) = connect(proxy.addr, &format!("other.example:{}", origin.port()), "").await;
    assert_eq!(resp.status, 403);
    // Decide before resolving: a denied name leaks nothing to DNS.
    assert_eq!(dns.queries("other.example"), 0);
}

#[tokio::test]
async fn idna_spellings_are_normalised_before_matching_and_resolving() {
    let origin = Origin::start().await;
    let port = origin.port();
    let dns = DnsServer::start(
        Zone::new()
            .with("evil.test", Answer::Fixed(vec![ip("127.0.0.1")]), 60)
            .with(
                "xn--bcher-kva.test",
                Answer::Fixed(vec![ip("127.0.0.1")]),
                60,
            ),
    )
    .await
    .unwrap();
    // Rules written in Unicode are normalised: enclosed alphanumerics map to "evil.test".
    let policy = format!(
        "{}[[policy.deny]]\nhost = \"ⓔⓥⓘⓛ.test\"\n[[policy.allow]]\nhost = \"BÜCHER.test\"\nports = [{port}]\n",
        policy(&dns, port)
    );
    let proxy = TestProxy::start(&policy).await;
    for spelling in ["evil.test", "EVIL.test", "evil.test."] {
        let (resp, _) = connect(proxy.addr, &format!("{spelling}:{port}"), "").await;
        assert_eq!(resp.status, 403, "{spelling}: {resp:?}");
        assert_eq!(
            resp.header("x-egress-gate-reason").as_deref(),
            Some("deny_rule"),
            "{spelling}"
        );
    }
    // Raw non-ASCII on the wire never gets past the request parser.
    let raw = format!("CONNECT ⓔⓥⓘⓛ.test:{port} HTTP/1.1\r\n\r\n");
    assert_eq!(
        support::client::roundtrip(proxy.addr, raw.as_bytes())
            .await
            .status,
        400
    );
    assert_eq!(origin.connections(), 0);
    // The punycode form clients send matches the Unicode rule.
    let (resp, _) = connect(proxy.addr, &format!("xn--bcher-kva.test:{port}"), "").await;
    assert_eq!(resp.status, 200, "{resp:?}");
}

#[tokio::test]
async fn an_answer_is_reused_for_its_ttl_and_a_ttl_zero_answer_never_is() {
    let origin = Origin::start().await;
    let port = origin.port();
    let dns = DnsServer::start(
        Zone::new()
            .with("cached.test", Answer::Fixed(vec![ip("127.0.0.1")]), 300)
            .with("uncached.test", Answer::Fixed(vec![ip("127.0.0.1")]), 0),
    )
    .await
    .unwrap();
    let proxy = TestProxy::start(&policy(&dns, port)).await;
    for _ in 0..3 {
        for name in ["cached.test", "uncached.test"] {
            let (resp, _) = connect(proxy.addr, &format!("{name}:{port}"), "").await;
            assert_eq!(resp.status, 200, "{name}: {resp:?}");
        }
    }
    // A queries only: the AAAA side is an empty (NODATA) answer, which carries no TTL to cache
    // by.
    assert_eq!(
        dns.a_queries("cached.test"),
        1,
        "a 300 s answer was not reused"
    );
    assert_eq!(
        dns.a_queries("uncached.test"),
        3,
        "a TTL-0 answer was reused"
    );
}
