//! Accept loops, connection limits and graceful shutdown.
//!
//! Takes pre-bound listeners (so tests bind port 0 and the launcher can hand over descriptors),
//! each tagged with the plugin identity its connections carry. Enforces the connection cap, the
//! header-read timeout and the header size limit, and on shutdown stops accepting, lets open
//! requests finish, and waits a bounded time for tunnels to drain.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proxy::{ConnInfo, Proxy};
pub use idle::IdleIo;

mod idle;

/// How long shutdown waits for open connections and tunnels before giving up on them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Written to a connection refused because the proxy is at `max_connections`.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nx-egress-gate-reason: connection_limit\r\ncontent-type: text/plain\r\ncontent-length: 43\r\nconnection: close\r\n\r\n503 reason=connection_limit: too many conns";

/// A bound listener and the identity of connections arriving on it.
pub struct Listener {
    pub socket: TcpListener,
    /// `Some(plugin)`: every connection here is that plugin's.
    pub plugin: Option<Arc<str>>,
    /// When cancelled, this listener stops accepting and its socket is closed (daemon mode: the
    /// plugin it was made for has exited). Connections already accepted run on.
    pub until: Option<CancellationToken>,
}

impl Listener {
    /// A listener whose connections have no plugin identity unless they authenticate.
    pub fn anonymous(socket: TcpListener) -> Listener {
        Listener {
            socket,
            plugin: None,
            until: None,
        }
    }

    /// A listener whose every connection is `plugin`'s.
    pub fn for_plugin(socket: TcpListener, plugin: Arc<str>) -> Listener {
        Listener {
            socket,
            plugin: Some(plugin),
            until: None,
        }
    }

    /// Stops accepting on this listener once `token` is cancelled.
    pub fn until(mut self, token: CancellationToken) -> Listener {
        self.until = Some(token);
        self
    }
}

/// Serves `listeners`, plus any that arrive on `late` while running, until `shutdown` resolves;
/// then drains.
pub async fn run(
    listeners: Vec<Listener>,
    mut late: mpsc::Receiver<Listener>,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(proxy.limits().max_connections));
    let mut accept_loops = tokio::task::JoinSet::new();
    let spawn_accept_loop = |set: &mut tokio::task::JoinSet<()>, listener: Listener| {
        set.spawn(accept_loop(
            listener,
            proxy.clone(),
            permits.clone(),
            connections.clone(),
            stop.clone(),
        ));
    };
    for listener in listeners {
        spawn_accept_loop(&mut accept_loops, listener);
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(listener) = late.recv() => {
                if let Ok(addr) = listener.socket.local_addr() {
                    tracing::info!(%addr, plugin = listener.plugin.as_deref().unwrap_or("-"), "listening (added)");
                }
                spawn_accept_loop(&mut accept_loops, listener);
            }
        }
    }
    tracing::info!("shutting down: no new connections, draining open ones");
    stop.cancel();
    while accept_loops.join_next().await.is_some() {}
    connections.close();
    proxy.tunnels().close();
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        connections.wait().await;
        proxy.tunnels().wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            tunnels = proxy.tunnels().len(),
            "drain timed out; closing the rest"
        );
    }
    let _ = proxy.audit().flush().await;
    Ok(())
}

async fn accept_loop(
    listener: Listener,
    proxy: Arc<Proxy>,
    permits: Arc<Semaphore>,
    connections: TaskTracker,
    stop: CancellationToken,
) {
    let retired = listener.until.clone().unwrap_or_default();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            _ = retired.cancelled() => {
                tracing::info!(plugin = listener.plugin.as_deref().unwrap_or("-"), "listener retired");
                return;
            }
            accepted = listener.socket.accept() => accepted,
        };
        let (stream, client) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%client, "connection limit reached; refusing");
            connections.spawn(refuse_over_capacity(stream));
            continue;
        };
        let info = Arc::new(ConnInfo {
            client,
            plugin: listener.plugin.clone(),
            slot: Some(Arc::new(permit)),
        });
        connections.spawn(serve_connection(stream, info, proxy.clone(), stop.clone()));
    }
}

async fn refuse_over_capacity(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(OVER_CAPACITY)).await;
}

async fn serve_connection(
    stream: TcpStream,
    info: Arc<ConnInfo>,
    proxy: Arc<Proxy>,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    serve_stream(stream, info, proxy, stop).await;
}

/// Serves HTTP/1.1 proxy requests on one client byte stream until it ends or `stop` fires.
/// Public so the fuzzing harness can drive the real service with in-memory streams.
pub async fn serve_stream<S>(
    stream: S,
    info: Arc<ConnInfo>,
    proxy: Arc<Proxy>,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = proxy.limits().clone();
    // Nothing moving either way for `idle_timeout` closes the connection: a client that stops
    // reading its response, or stalls mid-body, does not hold a slot (and an upstream) forever.
    // While a request is being decided, dialed or waits for its upstream's answer, its own
    // timeouts apply and answer with a status (504), so the watchdog holds off. A CONNECT hands
    // the stream to its tunnel, which keeps its own idle timeout.
    let (stream, clock) = IdleIo::new(stream);
    let service_clock = clock.clone();
    let service = service_fn(move |req| {
        let busy = service_clock.busy();
        let response = proxy.clone().serve(info.clone(), req);
        async move {
            let response = response.await;
            drop(busy);
            response
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = clock.idle_for(limits.idle_timeout) => {
            tracing::debug!("client connection idle; closing");
            return;
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}
