//! CONNECT tunnels: dial the vetted address, answer 200 only once connected, then relay bytes
//! both ways with half-close and an idle timeout. The tunnel's `net.req` record is written when
//! it closes, with the bytes moved each way.
//!
//! Once the 200 is written, a tunnel between two real TCP sockets takes its client socket back
//! from hyper and relays with `splice(2)` (see `tcp`), so the bytes never pass through user space
//! and an idle tunnel holds no buffer. Anything else (the in-memory streams the fuzzer uses) goes
//! through `copy_bidirectional`.

mod tcp;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::exchange::Exchange;
use super::respond::{self, Body, ProxyError};
use super::{ConnInfo, Proxy, egress_error};
use crate::egress::{Resolved, Upstream};
use crate::policy::Policy;
use crate::server::IdleIo;

/// Dials, then answers 200 and relays in a tracked task.
pub(super) async fn open(
    proxy: &Arc<Proxy>,
    policy: &Arc<Policy>,
    conn: &Arc<ConnInfo>,
    ex: &mut Exchange,
    resolved: Resolved,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let (upstream, vetted) = proxy
        .egress
        .connect(&resolved)
        .await
        .map_err(egress_error)?;
    ex.connected = Some(vetted.addr());
    tracing::debug!(audit_id = %ex.audit_id, host = %ex.host, port = ex.port, connected = %vetted.addr(), "tunnel open");

    let on_upgrade = hyper::upgrade::on(&mut req);
    let idle = proxy.limits.idle_timeout;
    let halt = proxy.halt.clone();
    let (proxy_task, policy, ex) = (proxy.clone(), policy.clone(), ex.clone());
    // Holding the connection info keeps its `max_connections` slot for the tunnel's lifetime.
    let conn = conn.clone();
    proxy.tunnels.spawn(async move {
        let (up, down) = match on_upgrade.await {
            Ok(upgraded) => relay_upgraded(upgraded, upstream, idle, &halt).await,
            Err(e) => {
                tracing::debug!(audit_id = %ex.audit_id, error = %e, "client went away before the tunnel started");
                (0, 0)
            }
        };
        let record = ex.net_req(&policy, "allow", None, 200, up, down);
        proxy_task.audit.submit(record);
        drop(conn);
    });
    let mut resp = Response::new(respond::empty());
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}

/// Relays an upgraded client connection: with `splice` when both ends are TCP sockets.
async fn relay_upgraded(
    upgraded: Upgraded,
    upstream: Upstream,
    idle: Duration,
    halt: &CancellationToken,
) -> (u64, u64) {
    let Upstream::Tcp(upstream) = upstream else {
        return relay(TokioIo::new(upgraded), upstream, idle, halt).await;
    };
    match upgraded.downcast::<TokioIo<IdleIo<TcpStream>>>() {
        Ok(parts) => {
            let client = parts.io.into_inner().into_inner();
            relay_tcp(client, parts.read_buf, upstream, idle, halt).await
        }
        Err(upgraded) => relay(TokioIo::new(upgraded), Upstream::Tcp(upstream), idle, halt).await,
    }
}

/// Relays between two TCP sockets (see `tcp`); `early` is what the client sent right behind its
/// CONNECT head, which goes upstream first.
async fn relay_tcp(
    client: TcpStream,
    early: bytes::Bytes,
    upstream: TcpStream,
    idle: Duration,
    halt: &CancellationToken,
) -> (u64, u64) {
    let activity = Activity::new(Instant::now());
    let work = tcp::relay(&client, &upstream, early, &activity);
    supervise(work, &activity, idle, halt).await;
    activity.totals()
}

/// Copies both ways until both sides are done, nothing moved for `idle`, or the proxy halts.
/// Returns (bytes client→upstream, bytes upstream→client).
async fn relay<C, U>(client: C, upstream: U, idle: Duration, halt: &CancellationToken) -> (u64, u64)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new(Instant::now());
    let mut client = Counted::new(client, &activity, Direction::Up);
    let mut upstream = Counted::new(upstream, &activity, Direction::Down);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    supervise(copy, &activity, idle, halt).await;
    activity.totals()
}

/// Runs `work` until it finishes, nothing has moved for `idle`, or the proxy halts.
async fn supervise<F: Future>(
    work: F,
    activity: &Activity,
    idle: Duration,
    halt: &CancellationToken,
) {
    tokio::pin!(work);
    let mut deadline = activity.start + idle;
    loop {
        tokio::select! {
            _ = &mut work => break,
            _ = halt.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => {
                let last = activity.start + Duration::from_millis(activity.last_ms.load(Ordering::Relaxed));
                if last + idle <= Instant::now() {
                    tracing::debug!("tunnel idle timeout");
                    break;
                }
                deadline = last + idle;
            }
        }
    }
}

/// Byte counters and the time of the last read, shared by both directions of one tunnel.
struct Activity {
    up: AtomicU64,
    down: AtomicU64,
    /// Milliseconds since `start` at the last successful read.
    last_ms: AtomicU64,
    start: Instant,
}

impl Activity {
    fn new(start: Instant) -> Activity {
        Activity {
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            start,
        }
    }

    /// Notes that bytes moved just now.
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn totals(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Up,
    Down,
}

/// A stream that counts what is read from it and notes when.
struct Counted<'a, S> {
    inner: S,
    activity: &'a Activity,
    dir: Direction,
}

impl<'a, S> Counted<'a, S> {
    fn new(inner: S, activity: &'a Activity, dir: Direction) -> Self {
        Self {
            inner,
            activity,
            dir,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            let counter = match self.dir {
                Direction::Up => &self.activity.up,
                Direction::Down => &self.activity.down,
            };
            counter.fetch_add(n, Ordering::Relaxed);
            self.activity.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn idle_tunnels_are_closed_and_busy_ones_are_not() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (upstream, mut upstream_peer) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move {
            relay(
                client,
                upstream,
                Duration::from_secs(10),
                &CancellationToken::new(),
            )
            .await
        });
        // Traffic every 6 s keeps a 10 s idle timeout from firing.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client_peer.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            upstream_peer.read_exact(&mut buf).await.unwrap();
        }
        assert!(!relay.is_finished());
        tokio::time::sleep(Duration::from_secs(11)).await;
        let (up, down) = relay.await.unwrap();
        assert_eq!((up, down), (12, 0));
    }

    #[tokio::test]
    async fn half_close_is_propagated() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (upstream, mut upstream_peer) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move {
            relay(
                client,
                upstream,
                Duration::from_secs(60),
                &CancellationToken::new(),
            )
            .await
        });
        client_peer.write_all(b"request").await.unwrap();
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        // The other direction still works after the client's half-close.
        upstream_peer.write_all(b"response").await.unwrap();
        upstream_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        client_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"response");
        assert_eq!(relay.await.unwrap(), (7, 8));
    }

    use super::tcp::tests::tcp_pair;

    #[tokio::test]
    async fn tcp_relay_sends_early_bytes_first_and_propagates_half_close() {
        let (client, mut client_peer) = tcp_pair().await;
        let (upstream, mut upstream_peer) = tcp_pair().await;
        let relay = tokio::spawn(async move {
            let early = bytes::Bytes::from_static(b"early:");
            relay_tcp(
                client,
                early,
                upstream,
                Duration::from_secs(60),
                &CancellationToken::new(),
            )
            .await
        });
        client_peer.write_all(b"request").await.unwrap();
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"early:request");
        // The other direction still works after the client's half-close.
        upstream_peer.write_all(b"response").await.unwrap();
        upstream_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        client_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"response");
        assert_eq!(relay.await.unwrap(), (13, 8));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tcp_tunnels_are_closed() {
        let (client, mut client_peer) = tcp_pair().await;
        let (upstream, mut upstream_peer) = tcp_pair().await;
        let relay = tokio::spawn(async move {
            relay_tcp(
                client,
                bytes::Bytes::new(),
                upstream,
                Duration::from_secs(10),
                &CancellationToken::new(),
            )
            .await
        });
        client_peer.write_all(b"hi").await.unwrap();
        let mut two = [0u8; 2];
        upstream_peer.read_exact(&mut two).await.unwrap();
        // Nothing moves from here on; the paused clock runs ahead to the idle deadline.
        assert_eq!(relay.await.unwrap(), (2, 0));
        // Both peers see the tunnel closed.
        let mut rest = Vec::new();
        assert_eq!(client_peer.read_to_end(&mut rest).await.unwrap(), 0);
        assert_eq!(upstream_peer.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn halting_closes_tcp_tunnels_at_once() {
        let (client, mut client_peer) = tcp_pair().await;
        let (upstream, _upstream_peer) = tcp_pair().await;
        let halt = CancellationToken::new();
        let relay = {
            let halt = halt.clone();
            tokio::spawn(async move {
                relay_tcp(
                    client,
                    bytes::Bytes::new(),
                    upstream,
                    Duration::from_secs(3600),
                    &halt,
                )
                .await
            })
        };
        halt.cancel();
        assert_eq!(relay.await.unwrap(), (0, 0));
        let mut rest = Vec::new();
        assert_eq!(client_peer.read_to_end(&mut rest).await.unwrap(), 0);
    }
}
