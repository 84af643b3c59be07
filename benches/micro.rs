//! Micro-benchmarks for the per-request CPU work that is not I/O: the policy decision (its cost
//! must not grow with the number of rules), address classification, and sealing an audit record
//! into the hash chain.
//!
//! `cargo bench --bench micro` (add `-- --quick` for a fast pass); about a minute, most of it
//! generating and compiling the million-rule policy. The policies are generated
//! here as TOML text and go through the real parser and compiler once per size.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use egress_gate::addr;
use egress_gate::audit::chain::{Chain, ChainKey, GENESIS};
use egress_gate::audit::record::{self, NetOpen, NetReq, Record, RequestInfo};
use egress_gate::config;
use egress_gate::policy::Policy;
use egress_gate::target::{self, Target};

/// Host-rule counts the decision cost is measured at.
const SIZES: [usize; 4] = [10, 1_000, 100_000, 1_000_000];
/// Plugins with their own sections; each gets a slice of the rules.
const PLUGINS: usize = 8;

/// A deterministic, realistic-looking policy with `n` host rules: about two thirds exact names,
/// one third `*.` wildcards, some deny rules, and per-plugin sections holding an eighth of them.
fn policy_text(n: usize) -> String {
    let mut text = String::with_capacity(n * 64);
    text.push_str("version = 1\n[policy]\nmode = \"enforce\"\n");
    let plugin_rules = n / 8;
    let global = n - plugin_rules;
    for i in 0..global {
        text.push_str(&rule_toml("policy.allow", i));
    }
    // A few deny rules, as real policies have.
    for i in 0..(global / 100).max(1) {
        text.push_str(&format!("[[policy.deny]]\nhost = \"*.paste{i}.example\"\n"));
    }
    for p in 0..PLUGINS {
        text.push_str(&format!(
            "[plugins.tool{p}]\ntoken_sha256 = \"{}\"\n",
            "ab".repeat(32)
        ));
        for i in 0..plugin_rules / PLUGINS {
            text.push_str(&rule_toml(
                &format!("plugins.tool{p}.allow"),
                global + p * n + i,
            ));
        }
    }
    text
}

fn rule_toml(table: &str, i: usize) -> String {
    if i % 3 == 2 {
        format!("[[{table}]]\nhost = \"*.svc{i}.example.com\"\nports = [443]\n")
    } else {
        format!("[[{table}]]\nhost = \"api{i}.vendor{}.example\"\n", i % 97)
    }
}

fn target(host: &str, port: u16) -> Target {
    target::parse_connect_authority(&format!("{host}:{port}")).expect("valid target")
}

fn policy_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy_decide");
    for n in SIZES {
        let text = policy_text(n);
        let started = std::time::Instant::now();
        let cfg = config::parse(Path::new("bench.toml"), &text).expect("generated policy parses");
        let policy = Policy::compile(&cfg);
        drop(cfg);
        eprintln!(
            "policy with {n} host rules: {} KiB of TOML, parsed + compiled in {:.2?}",
            text.len() / 1024,
            started.elapsed()
        );
        let global = n - n / 8;
        // Rules chosen from the middle of the table, so nothing is favoured by file order.
        let mid = global / 2 / 3 * 3;
        let exact = target(&format!("api{mid}.vendor{}.example", mid % 97), 443);
        let wild_i = mid + 2;
        let wild = target(&format!("deep.a.b.svc{wild_i}.example.com"), 443);
        let miss = target("nothing.here.unlisted.example.org", 443);
        let literal = target("93.184.216.34", 443);
        assert!(policy.decide(None, &exact).permits());
        assert!(policy.decide(None, &wild).permits());
        assert!(!policy.decide(None, &miss).permits());
        for (name, t, plugin) in [
            ("exact_hit", &exact, None),
            ("wildcard_hit", &wild, None),
            ("miss", &miss, None),
            ("ip_literal_miss", &literal, None),
            ("plugin_miss", &miss, Some("tool3")),
        ] {
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| black_box(policy.decide(black_box(plugin), black_box(t))))
            });
        }
        // Free the big policies before building the next one.
        drop(policy);
    }
    group.finish();
}

fn classify(c: &mut Criterion) {
    let mut group = c.benchmark_group("addr_classify");
    let cases: [(&str, IpAddr); 5] = [
        ("v4_public", IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34))),
        ("v4_loopback", IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ("v4_metadata", IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254))),
        (
            "v6_public",
            IpAddr::V6(
                "2606:2800:220:1:248:1893:25c8:1946"
                    .parse::<Ipv6Addr>()
                    .unwrap(),
            ),
        ),
        (
            "v6_mapped_v4",
            IpAddr::V6("::ffff:10.0.0.1".parse::<Ipv6Addr>().unwrap()),
        ),
    ];
    for (name, ip) in cases {
        group.bench_function(name, |b| {
            b.iter(|| black_box(addr::classify(black_box(ip))))
        });
    }
    group.finish();
}

fn sample_net_req() -> Record {
    Record::NetReq(NetReq {
        ts: record::now(),
        event: record::NET_REQ,
        request: RequestInfo {
            audit_id: "6852a19e-0000000003".into(),
            plugin: Some("weather".into()),
            client: SocketAddr::from(([127, 0, 0, 1], 56052)),
            method: http::Method::CONNECT,
            host: "api.github.com".into(),
            port: 443,
        },
        path: None,
        resolved: vec![IpAddr::V4(Ipv4Addr::new(140, 82, 121, 6))].into(),
        connected: Some(SocketAddr::from(([140, 82, 121, 6], 443))),
        decision: "allow",
        rule: Some("policy.allow[0]".into()),
        reason: None,
        policy_sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
        status: 200,
        bytes_up: 812,
        bytes_down: 5120,
        duration_ms: 231,
    })
}

fn sample_net_open() -> Record {
    Record::NetOpen(NetOpen {
        ts: record::now(),
        event: record::NET_OPEN,
        request: RequestInfo {
            audit_id: "6852a19e-0000000004".into(),
            plugin: None,
            client: SocketAddr::from(([127, 0, 0, 1], 56052)),
            method: http::Method::GET,
            host: "pypi.org".into(),
            port: 80,
        },
        path: Some("/simple/requests/?token=REDACTED".into()),
        resolved: vec![IpAddr::V4(Ipv4Addr::new(151, 101, 0, 223))].into(),
        decision: "allow",
        rule: Some("policy.allow[3]".into()),
        policy_sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
    })
}

fn audit_seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("audit");
    let net_req = sample_net_req();
    let net_open = sample_net_open();
    let len = serde_json::to_vec(&net_req).unwrap().len() as u64;
    group.throughput(Throughput::Elements(1));
    group.bench_function("serialize_net_req", |b| {
        b.iter(|| black_box(serde_json::to_vec(black_box(&net_req)).unwrap()))
    });
    for (name, key) in [
        ("seal_sha256", ChainKey::none()),
        ("seal_hmac", ChainKey::hmac(vec![7u8; 32])),
    ] {
        let mut chain = Chain::new(key, 0, GENESIS);
        let mut out = Vec::with_capacity(64 * 1024);
        group.bench_function(format!("serialize_and_{name}_net_req_{len}B"), |b| {
            b.iter(|| {
                out.clear();
                let bytes = serde_json::to_vec(black_box(&net_req)).unwrap();
                chain.seal(&bytes, &mut out);
                black_box(out.len())
            })
        });
    }
    group.bench_function("record_now_timestamp", |b| {
        b.iter(|| black_box(record::now()))
    });
    group.bench_function("build_and_seal_net_open_sha256", |b| {
        let mut chain = Chain::new(ChainKey::none(), 0, GENESIS);
        let mut out = Vec::with_capacity(64 * 1024);
        b.iter(|| {
            out.clear();
            let r = net_open.clone();
            let bytes = serde_json::to_vec(&r).unwrap();
            chain.seal(&bytes, &mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // Short runs keep the whole suite to a few minutes; these are stable nanosecond loops.
    config = Criterion::default()
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(300))
        .nresamples(10_000)
        .without_plots();
    targets = policy_decide, classify, audit_seal
}
criterion_main!(benches);
