//! Idle detection for client connections: a stream wrapper that notes when bytes last moved in
//! either direction, and a watchdog that resolves once nothing has moved for the idle timeout.
//! This is what cuts slow-read clients (who never drain their response) and clients that stall
//! mid-body, which hyper's header-read timeout does not cover.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When bytes last moved, shared between a wrapped stream and its watchdog.
pub struct IdleClock {
    start: Instant,
    /// Milliseconds after `start` of the last read or write that moved bytes.
    last_ms: AtomicU64,
    /// Requests being worked on (deciding, dialing, waiting for the upstream's answer): those
    /// have their own timeouts and answer with a status, so the watchdog leaves them alone.
    busy: AtomicUsize,
}

/// Holds a connection's [`IdleClock`] busy; dropping it counts as activity.
pub struct BusyGuard(Arc<IdleClock>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

impl IdleClock {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Marks a request as being worked on until the guard is dropped.
    pub fn busy(self: &Arc<Self>) -> BusyGuard {
        self.busy.fetch_add(1, Ordering::Relaxed);
        BusyGuard(self.clone())
    }

    /// Resolves once nothing has moved for `idle` while no request was being worked on.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let deadline = if self.busy.load(Ordering::Relaxed) > 0 {
                Instant::now() + idle
            } else {
                self.last() + idle
            };
            if deadline <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream that reports every read and write that moves bytes to its [`IdleClock`].
pub struct IdleIo<S> {
    inner: S,
    clock: Arc<IdleClock>,
}

impl<S> IdleIo<S> {
    pub fn new(inner: S) -> (IdleIo<S>, Arc<IdleClock>) {
        let clock = Arc::new(IdleClock {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        });
        (
            IdleIo {
                inner,
                clock: clock.clone(),
            },
            clock,
        )
    }

    /// The wrapped stream (a tunnel takes the raw socket back after the upgrade).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.touch();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_fires_only_after_a_quiet_period() {
        let (a, mut peer) = tokio::io::duplex(64);
        let (mut io, clock) = IdleIo::new(a);
        let watchdog = tokio::spawn(async move { clock.idle_for(Duration::from_secs(10)).await });
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            peer.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            io.read_exact(&mut b).await.unwrap();
        }
        assert!(!watchdog.is_finished());
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(watchdog.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_is_not_idle() {
        let (a, _peer) = tokio::io::duplex(64);
        let (_io, clock) = IdleIo::new(a);
        let guard = clock.busy();
        let watched = clock.clone();
        let watchdog = tokio::spawn(async move { watched.idle_for(Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            !watchdog.is_finished(),
            "fired while a request was being worked on"
        );
        drop(guard);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(
            !watchdog.is_finished(),
            "the end of the request counts as activity"
        );
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert!(watchdog.is_finished());
    }
}
