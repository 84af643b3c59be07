//! The relay between two TCP sockets, which is what every real CONNECT tunnel is once the 200 is
//! written: bytes move kernel-to-kernel with `splice(2)` through a pipe, and an idle tunnel holds
//! no buffer and no pipe at all.
//!
//! Each direction waits for its source to become readable while owning nothing; only when data
//! (or EOF) is waiting does it borrow a pipe from a small shared pool, splice the burst across,
//! and give the empty pipe back when the source has nothing more for now. If no pipe can be had
//! (out of descriptors), that burst goes through a pooled user-space buffer instead.
//! Everything here is safe code: `rustix` wraps the syscalls.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use rustix::net::Shutdown;
use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::Activity;

/// Most idle pipes (and buffers) kept for reuse; beyond this they are closed (freed).
const POOL_MAX: usize = 64;
/// Pipe capacity asked for: bigger pipes mean fewer splice calls per byte in bulk transfers.
const PIPE_SIZE: usize = 256 * 1024;
/// User-space buffer size for the fallback path.
const BUF_SIZE: usize = 64 * 1024;

static PIPES: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());
static BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Relays between `client` and `upstream` until both directions have ended or one fails;
/// `early` holds bytes the client sent before the tunnel started (read by the HTTP parser).
pub(super) async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    early: Bytes,
    activity: &Activity,
) -> io::Result<()> {
    if !early.is_empty() {
        write_all(upstream, &early).await?;
        activity.moved(&activity.up, early.len());
    }
    // `early` shares hyper's whole read buffer; an idle tunnel must not keep it.
    drop(early);
    tokio::try_join!(
        pump(client, upstream, &activity.up, activity),
        pump(upstream, client, &activity.down, activity),
    )?;
    Ok(())
}

/// Moves everything `src` sends to `dst`; at EOF half-closes `dst` and returns.
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    counter: &AtomicU64,
    activity: &Activity,
) -> io::Result<()> {
    loop {
        // Nothing is held while waiting: an idle direction costs no buffer and no pipe.
        src.readable().await?;
        let ended = match Pipe::take() {
            Some(pipe) => splice_burst(src, dst, pipe, counter, activity).await?,
            None => buffered_burst(src, dst, counter, activity).await?,
        };
        if ended {
            match rustix::net::shutdown(dst, Shutdown::Write) {
                Ok(()) | Err(rustix::io::Errno::NOTCONN) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Splices from `src` to `dst` until `src` would block (false) or ends (true).
async fn splice_burst(
    src: &TcpStream,
    dst: &TcpStream,
    mut pipe: Pipe,
    counter: &AtomicU64,
    activity: &Activity,
) -> io::Result<bool> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    loop {
        // The pipe is empty here, so EAGAIN can only mean the socket has nothing to read.
        let n = match src.try_io(Interest::READABLE, || {
            rustix::pipe::splice(src, None, &pipe.write, None, PIPE_SIZE, flags).map_err(Into::into)
        }) {
            Ok(0) => {
                pipe.give_back();
                return Ok(true);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pipe.give_back();
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        activity.moved(counter, n);
        pipe.held = n;
        while pipe.held > 0 {
            // The pipe holds data, so EAGAIN can only mean the socket's send buffer is full.
            match dst.try_io(Interest::WRITABLE, || {
                rustix::pipe::splice(&pipe.read, None, dst, None, pipe.held, flags)
                    .map_err(Into::into)
            }) {
                Ok(k) => pipe.held -= k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
                Err(e) => return Err(e),
            }
        }
    }
}

/// The same as [`splice_burst`] through a pooled user-space buffer.
async fn buffered_burst(
    src: &TcpStream,
    dst: &TcpStream,
    counter: &AtomicU64,
    activity: &Activity,
) -> io::Result<bool> {
    let mut buf = take_buffer();
    let result = async {
        loop {
            buf.clear();
            match src.try_read_buf(&mut buf) {
                Ok(0) => return Ok(true),
                Ok(n) => activity.moved(counter, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
            write_all(dst, &buf).await?;
        }
    }
    .await;
    give_back_buffer(buf);
    result
}

async fn write_all(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match dst.try_write(data) {
            Ok(k) => data = &data[k..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn take_buffer() -> Vec<u8> {
    lock(&BUFFERS)
        .pop()
        .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE))
}

fn give_back_buffer(buf: Vec<u8>) {
    let mut pool = lock(&BUFFERS);
    if pool.len() < POOL_MAX {
        pool.push(buf);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// === Pipe ===

/// A non-blocking pipe used to splice one direction's bursts.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes in the pipe: only an empty pipe may go back to the pool.
    held: usize,
}

impl Pipe {
    /// A pooled pipe, or a new one; `None` when no pipe can be made (e.g. out of descriptors).
    fn take() -> Option<Pipe> {
        if let Some(pipe) = lock(&PIPES).pop() {
            return Some(pipe);
        }
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)
            .map_err(|e| tracing::debug!(error = %e, "no pipe for splice; using a buffer"))
            .ok()?;
        // Best effort: a smaller pipe only means more splice calls.
        let _ = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE);
        Some(Pipe {
            read,
            write,
            held: 0,
        })
    }

    /// Returns an empty pipe to the pool (or closes it when the pool is full).
    fn give_back(self) {
        debug_assert_eq!(self.held, 0);
        let mut pool = lock(&PIPES);
        if pool.len() < POOL_MAX {
            pool.push(self);
        }
    }
}

// A pipe dropped while holding data (the tunnel failed mid-burst) is simply closed, so no stale
// bytes can ever reach another tunnel.

impl Activity {
    fn moved(&self, counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
        self.touch();
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected loopback pair: (ours, the peer's end). Shared with the tunnel's tests.
    pub(in crate::proxy::tunnel) async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, b) = tokio::join!(
            TcpStream::connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        (a.unwrap(), b.unwrap().0)
    }

    /// The fallback used when no pipe can be had moves a burst and reports EOF like splicing does.
    #[tokio::test]
    async fn buffered_bursts_move_data_and_report_eof() {
        let (src, mut src_peer) = tcp_pair().await;
        let (dst, mut dst_peer) = tcp_pair().await;
        let activity = Activity::new(tokio::time::Instant::now());
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        src_peer.write_all(&data).await.unwrap();
        let mut moved = 0;
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 200_000];
            dst_peer.read_exact(&mut got).await.unwrap();
            (got, dst_peer)
        });
        while moved < data.len() {
            src.readable().await.unwrap();
            let ended = buffered_burst(&src, &dst, &activity.up, &activity)
                .await
                .unwrap();
            assert!(!ended);
            moved = activity.up.load(Ordering::Relaxed) as usize;
        }
        let (got, mut dst_peer) = reader.await.unwrap();
        assert!(got == data);
        src_peer.shutdown().await.unwrap();
        src.readable().await.unwrap();
        assert!(
            buffered_burst(&src, &dst, &activity.up, &activity)
                .await
                .unwrap()
        );
        drop(dst);
        let mut rest = Vec::new();
        assert_eq!(dst_peer.read_to_end(&mut rest).await.unwrap(), 0);
    }

    /// A pipe goes back to the pool only empty, so no tunnel can ever see another's bytes.
    #[tokio::test]
    async fn pipes_come_back_empty() {
        let (src, mut src_peer) = tcp_pair().await;
        let (dst, mut dst_peer) = tcp_pair().await;
        let activity = Activity::new(tokio::time::Instant::now());
        src_peer.write_all(b"0123456789").await.unwrap();
        src.readable().await.unwrap();
        let pipe = Pipe::take().expect("a pipe");
        assert!(
            !splice_burst(&src, &dst, pipe, &activity.up, &activity)
                .await
                .unwrap()
        );
        let mut got = [0u8; 10];
        dst_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"0123456789");
        let pipe = Pipe::take().expect("the pooled pipe");
        assert_eq!(pipe.held, 0);
        // Nothing is waiting in it either.
        let mut probe = [0u8; 1];
        assert_eq!(
            rustix::io::read(&pipe.read, &mut probe).unwrap_err(),
            rustix::io::Errno::AGAIN
        );
        pipe.give_back();
    }
}
