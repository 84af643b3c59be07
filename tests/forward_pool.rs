//! Upstream keep-alive pooling under concurrency: every client connection's upstream connection
//! is found again for its next request, however many clients are in flight at once.

mod support;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::client::read_one;
use support::origin::Origin;
use support::proxy::TestProxy;

#[tokio::test]
async fn many_keep_alive_clients_reuse_their_upstream_connections() {
    let origin = Origin::start().await;
    let policy = format!(
        "version = 1\n[[policy.allow]]\ncidr = \"127.0.0.1/32\"\nports = [{}]\n",
        origin.port()
    );
    let proxy = TestProxy::start(&policy).await;
    const CLIENTS: usize = 64;
    const ROUNDS: usize = 6;
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (addr, port) = (proxy.addr, origin.port());
        clients.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            for i in 0..ROUNDS {
                let req = format!(
                    "GET http://127.0.0.1:{port}/c{c}/r{i} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
                );
                s.write_all(req.as_bytes()).await.unwrap();
                let resp = read_one(&mut s).await;
                assert_eq!(resp.status, 200, "client {c} request {i}: {resp:?}");
                assert_eq!(resp.json()["uri"], format!("/c{c}/r{i}"));
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(origin.requests(), CLIENTS * ROUNDS);
    // Never more upstream connections than requests in flight at once: nothing idle was
    // thrown away and re-dialed.
    assert!(
        origin.connections() <= CLIENTS,
        "{} upstream connections for {CLIENTS} concurrent keep-alive clients",
        origin.connections()
    );
}
