//! THE chokepoint: the only place in the crate that opens an outbound socket.
//!
//! For each request it resolves the target's name exactly once, has the policy vet every address
//! in the answer, and connects only to a [`VettedAddr`] — a type nothing else can construct. The
//! name is never looked up again for that request, so there is no window for DNS rebinding; address
//! literals never reach the resolver at all. Reviewers: proving "no unvetted dial" means reading
//! this file.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpStream;

use crate::config::DnsConfig;
use crate::policy::{AddressDenial, Decision, DenyReason, Policy, RuleId};
use crate::target::{Host, Target};

/// An address the policy has vetted for one request. Only [`Egress::resolve`] makes these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VettedAddr(SocketAddr);

impl VettedAddr {
    pub fn addr(&self) -> SocketAddr {
        self.0
    }
}

/// The vetted answer for a target: every address it resolved to, all of them acceptable.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub addrs: Vec<VettedAddr>,
    /// Report mode: a deny `cidr` rule matched an address and was let through; record it.
    pub reported_rule: Option<RuleId>,
}

impl Resolved {
    pub fn ips(&self) -> Vec<IpAddr> {
        self.addrs.iter().map(|a| a.0.ip()).collect()
    }
}

/// Why no connection was made. `resolved` carries what DNS said, for the audit record.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("refused by policy before dialing")]
    NotPermitted,
    #[error("DNS lookup failed: {0}")]
    Dns(String),
    #[error("destination address refused")]
    Denied {
        denial: AddressDenial,
        resolved: Vec<IpAddr>,
    },
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("connection refused")]
    ConnectRefused,
    #[error("connect failed: {0}")]
    Connect(io::Error),
}

/// Resolver, dialer, connect timeout and the proxy's own listeners (which it must never dial).
pub struct Egress {
    lookup: Lookup,
    dialer: Dialer,
    connect_timeout: Duration,
    own_listeners: Vec<SocketAddr>,
}

/// Where names are resolved.
enum Lookup {
    Dns(Box<TokioResolver>),
    /// A fixed table, for fuzzing the whole request path without a network.
    Fixed(HashMap<String, Vec<IpAddr>>),
}

/// How a vetted address is dialed.
enum Dialer {
    Tcp,
    /// Records every dial and hands back an in-memory peer (fuzzing only).
    Recording(Arc<RecordingDialer>),
}

/// An upstream connection: a real TCP stream, or an in-memory one from a [`RecordingDialer`].
pub enum Upstream {
    Tcp(TcpStream),
    Memory(DuplexStream),
}

/// A dialer that never touches the network: it records each vetted address it is asked for and
/// connects the request to an in-memory peer that answers every request with a small 200.
#[derive(Default)]
pub struct RecordingDialer {
    dialed: Mutex<Vec<SocketAddr>>,
}

impl RecordingDialer {
    /// Every address dialed so far.
    pub fn dialed(&self) -> Vec<SocketAddr> {
        self.dialed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn dial(&self, addr: SocketAddr) -> DuplexStream {
        self.dialed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(addr);
        let (ours, mut peer) = tokio::io::duplex(16 * 1024);
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 4096];
            // Answer each read with a complete response; stop at EOF or error.
            while let Ok(n) = peer.read(&mut buf).await {
                if n == 0
                    || peer
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .is_err()
                {
                    break;
                }
            }
        });
        ours
    }
}

impl Egress {
    /// Builds the resolver from `[dns]`: the listed nameservers, or the system configuration.
    pub fn new(
        dns: &DnsConfig,
        connect_timeout: Duration,
        own_listeners: Vec<SocketAddr>,
    ) -> io::Result<Egress> {
        let mut opts = ResolverOpts::default();
        opts.timeout = dns.timeout;
        // One retry after the first try; a silent server then costs at most twice the timeout.
        opts.attempts = 1;
        // Both families are asked for, so an answer hiding a private AAAA behind a public A is seen
        // and refused as a whole.
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // /etc/hosts is local policy, not the network's: names resolve through DNS only.
        opts.use_hosts_file = ResolveHosts::Never;
        let builder = if dns.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(io::Error::other)?
        } else {
            let servers = dns.nameservers.iter().map(name_server).collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let resolver = builder
            .with_options(opts)
            .build()
            .map_err(io::Error::other)?;
        Ok(Egress {
            lookup: Lookup::Dns(Box::new(resolver)),
            dialer: Dialer::Tcp,
            connect_timeout,
            own_listeners,
        })
    }

    /// An egress with a fixed name table and a [`RecordingDialer`]: the full request path with no
    /// network at all. For fuzzing and tests only; the vetting is the same code as in production.
    #[doc(hidden)]
    pub fn offline(
        names: HashMap<String, Vec<IpAddr>>,
        dialer: Arc<RecordingDialer>,
        connect_timeout: Duration,
        own_listeners: Vec<SocketAddr>,
    ) -> Egress {
        Egress {
            lookup: Lookup::Fixed(names),
            dialer: Dialer::Recording(dialer),
            connect_timeout,
            own_listeners,
        }
    }

    /// Resolves a target once and vets every address. Address literals skip the resolver.
    pub async fn resolve(
        &self,
        policy: &Policy,
        plugin: Option<&str>,
        target: &Target,
        decision: &Decision,
    ) -> Result<Resolved, EgressError> {
        if !decision.permits() {
            return Err(EgressError::NotPermitted);
        }
        let ips: Vec<IpAddr> = match &target.host {
            Host::Ip(ip) => vec![*ip],
            Host::Name(name) => self.lookup(name).await?,
        };
        let reported_rule = policy
            .vet_addresses(plugin, target.port, &ips, &self.own_listeners)
            .map_err(|denial| EgressError::Denied {
                denial,
                resolved: ips.clone(),
            })?;
        let local = self.local_addresses_on_own_port(target.port, &ips);
        if !local.is_empty() {
            return Err(EgressError::Denied {
                denial: AddressDenial {
                    reason: DenyReason::NonPublicAddress(local),
                    rule: None,
                },
                resolved: ips,
            });
        }
        let addrs = ips
            .into_iter()
            .map(|ip| VettedAddr(SocketAddr::new(ip, target.port)))
            .collect();
        Ok(Resolved {
            addrs,
            reported_rule,
        })
    }

    /// The addresses that would reach one of the proxy's own listeners bound to an unspecified
    /// address (`0.0.0.0`, `::`): on that port *every* address of this machine is the proxy, not
    /// only loopback, and a plugin must not reach the proxy — or another plugin's listener —
    /// through, say, the public address of the host's own interface. Which addresses are this
    /// machine's is asked of the kernel at the time of the request, so interfaces that come and go
    /// are seen: an address is local exactly when a socket can be bound to it. (With
    /// `net.ipv4.ip_nonlocal_bind` set every address binds, and the port is refused everywhere:
    /// closed, not open.)
    fn local_addresses_on_own_port(&self, port: u16, ips: &[IpAddr]) -> Vec<IpAddr> {
        let unspecified_on_port = self
            .own_listeners
            .iter()
            .any(|l| l.port() == port && l.ip().is_unspecified());
        // The offline egress (fuzzing) models no machine: its answers must not depend on the host.
        if !unspecified_on_port || !matches!(self.dialer, Dialer::Tcp) {
            return Vec::new();
        }
        ips.iter()
            .copied()
            .filter(|ip| std::net::UdpSocket::bind((ip.to_canonical(), 0)).is_ok())
            .collect()
    }

    async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, EgressError> {
        let mut ips: Vec<IpAddr> = match &self.lookup {
            Lookup::Dns(resolver) => {
                // A fully qualified query: no search-domain expansion can change what is asked.
                let fqdn = format!("{name}.");
                let lookup = resolver
                    .lookup_ip(fqdn.as_str())
                    .await
                    .map_err(|e| EgressError::Dns(e.to_string()))?;
                lookup.iter().collect()
            }
            Lookup::Fixed(table) => table.get(name).cloned().unwrap_or_default(),
        };
        ips.dedup();
        if ips.is_empty() {
            return Err(EgressError::Dns(format!("{name}: no addresses")));
        }
        Ok(ips)
    }

    /// Connects to the first vetted address that accepts, within the connect timeout overall.
    pub async fn connect(
        &self,
        resolved: &Resolved,
    ) -> Result<(Upstream, VettedAddr), EgressError> {
        let attempt = async {
            let mut last = EgressError::ConnectRefused;
            for addr in &resolved.addrs {
                let dialer = match &self.dialer {
                    Dialer::Tcp => None,
                    Dialer::Recording(r) => Some(r),
                };
                if let Some(recording) = dialer {
                    return Ok((Upstream::Memory(recording.dial(addr.0)), *addr));
                }
                match TcpStream::connect(addr.0).await {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        return Ok((Upstream::Tcp(stream), *addr));
                    }
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        last = EgressError::ConnectRefused
                    }
                    Err(e) => last = EgressError::Connect(e),
                }
            }
            Err(last)
        };
        tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .unwrap_or(Err(EgressError::ConnectTimeout))
    }
}

fn name_server(addr: &SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
}

// === impl Upstream ===

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Memory(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Memory(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Upstream::Memory(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Upstream::Tcp(s) => s.is_write_vectored(),
            Upstream::Memory(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Upstream::Memory(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Memory(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
