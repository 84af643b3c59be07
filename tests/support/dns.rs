#![allow(dead_code)]
//! A small authoritative DNS responder for integration tests.
//!
//! [`DnsServer::start`] serves a [`Zone`] on `127.0.0.1:<port>`, UDP and TCP on
//! the same port. Point a resolver at [`DnsServer::addr`] to control exactly
//! what a name resolves to, including answers that change between queries (the
//! DNS-rebinding shape), SERVFAIL and queries that are never answered.
//!
//! All wire encoding and decoding goes through `hickory-proto`. The server's
//! tasks are aborted when the [`DnsServer`] is dropped.
//!
//! ```ignore
//! let dns = DnsServer::start(
//!     Zone::new()
//!         .with("public.test", Answer::Fixed(vec!["93.184.216.34".parse()?]), 60)
//!         .with(
//!             "rebind.test",
//!             Answer::Rotating(vec![
//!                 vec!["93.184.216.34".parse()?],
//!                 vec!["127.0.0.1".parse()?],
//!             ]),
//!             0,
//!         ),
//! )
//! .await?;
//! // point the resolver at dns.addr, run the test, then e.g.:
//! assert!(dns.queries("rebind.test") >= 2);
//! ```
//!
//! Notes for test writers using hickory-resolver:
//! * `localhost`, `*.localhost`, `*.invalid`, `*.onion` (and, without mDNS,
//!   `*.local`) are answered by the resolver itself and never reach this server.
//! * The resolver's UDP client re-sends an unanswered query (about every 333 ms,
//!   up to 3 sends per attempt), so an [`Answer::Silent`] name usually counts
//!   more than one query per lookup.
//! * `lookup_ip` sends an A and an AAAA query; [`Answer::Rotating`] counts them
//!   separately, so both start at the first entry of the sequence.
//! * Identical lookups made while one is still in flight share a single query,
//!   so only sequential lookups step through [`Answer::Rotating`].

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hickory_proto::op::{
    DEFAULT_MAX_PAYLOAD_LEN, Edns, Message, MessageType, OpCode, ResponseCode,
};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// Plain DNS over UDP without EDNS is limited to 512 bytes.
const PLAIN_UDP_LIMIT: usize = 512;
/// At most this many TCP connections are served at once; more are closed at once.
const MAX_TCP_CONNECTIONS: usize = 64;
/// Pause after a socket error before serving on, so a persistent error cannot spin.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// How many ports to try when the TCP port matching the UDP one is taken.
const BIND_ATTEMPTS: usize = 16;

/// What the server answers for one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Always answer with these addresses (A records for v4 ones on A queries, AAAA for v6 on AAAA queries).
    Fixed(Vec<IpAddr>),
    /// Answer the n-th query (counted from 0, per name and record type) with
    /// `sequence[min(n, len - 1)]`: e.g. first public then private, the DNS-rebinding shape.
    /// An empty sequence answers NODATA.
    Rotating(Vec<Vec<IpAddr>>),
    /// Answer SERVFAIL.
    ServFail,
    /// Never answer (drop the query), to test resolver timeouts.
    Silent,
}

/// The names the server knows: name (lowercase, no trailing dot) -> (answer, TTL in seconds).
#[derive(Clone, Debug, Default)]
pub struct Zone {
    entries: HashMap<String, (Answer, u32)>,
}

impl Zone {
    /// An empty zone: every name is NXDOMAIN.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `name`, matched case-insensitively and with or without a trailing dot.
    /// Answer records carry `ttl`.
    pub fn with(mut self, name: &str, answer: Answer, ttl: u32) -> Self {
        self.entries.insert(normalize(name), (answer, ttl));
        self
    }

    fn get(&self, name: &str) -> Option<&(Answer, u32)> {
        self.entries.get(name)
    }
}

/// A running responder. Dropping it stops everything it started.
#[derive(Debug)]
pub struct DnsServer {
    /// `127.0.0.1:port`; the same port serves UDP and TCP.
    pub addr: SocketAddr,
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Binds UDP on `127.0.0.1:0`, then TCP on the same port (trying new ports a few
    /// times if that TCP port is taken), and starts serving `zone`.
    pub async fn start(zone: Zone) -> io::Result<DnsServer> {
        let (udp, tcp) = bind_pair().await?;
        let addr = udp.local_addr()?;
        let state = Arc::new(State {
            zone,
            counters: Mutex::new(Counters::default()),
        });
        let tasks = vec![
            tokio::spawn(serve_udp(udp, Arc::clone(&state))),
            tokio::spawn(serve_tcp(tcp, Arc::clone(&state))),
        ];
        Ok(DnsServer { addr, state, tasks })
    }

    /// How many queries (any type, over UDP or TCP) arrived for this name so far,
    /// whether or not the name is in the zone and whether or not they were answered.
    pub fn queries(&self, name: &str) -> usize {
        self.state
            .lock()
            .per_name
            .get(&normalize(name))
            .copied()
            .unwrap_or(0)
    }

    /// How many A queries arrived for this name so far.
    pub fn a_queries(&self, name: &str) -> usize {
        self.state
            .lock()
            .per_type
            .get(&(normalize(name), RecordType::A))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[derive(Debug)]
struct State {
    zone: Zone,
    counters: Mutex<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    /// Queries of any type per name.
    per_name: HashMap<String, usize>,
    /// Queries per (name, record type), for [`Answer::Rotating`].
    per_type: HashMap<(String, RecordType), usize>,
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        // A panicking test thread must not poison the server for the others.
        self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Lowercase, without the trailing dot.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn normalize_name(name: &Name) -> String {
    normalize(&name.to_ascii())
}

async fn bind_pair() -> io::Result<(UdpSocket, TcpListener)> {
    let mut last_err = None;
    for _ in 0..BIND_ATTEMPTS {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = udp.local_addr()?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(err) => last_err = Some(err),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("no port free for both UDP and TCP")))
}

async fn serve_udp(socket: UdpSocket, state: Arc<State>) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            // Errors on an unconnected UDP socket concern single datagrams; keep serving,
            // without spinning if the error persists.
            Err(_) => {
                tokio::time::sleep(ERROR_BACKOFF).await;
                continue;
            }
        };
        let Some(response) = handle(&state, &buf[..len], Transport::Udp) else {
            continue;
        };
        // The client may be gone; nothing to do about it.
        let _ = socket.send_to(&response, peer).await;
    }
}

async fn serve_tcp(listener: TcpListener, state: Arc<State>) {
    // Owned by this task: aborting the task drops the set, which aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        let accepted = listener.accept().await;
        while connections.try_join_next().is_some() {}
        let Ok((stream, _peer)) = accepted else {
            // E.g. out of file descriptors: wait a little instead of spinning.
            tokio::time::sleep(ERROR_BACKOFF).await;
            continue;
        };
        if connections.len() >= MAX_TCP_CONNECTIONS {
            drop(stream);
            continue;
        }
        connections.spawn(serve_tcp_connection(stream, Arc::clone(&state)));
    }
}

/// Serves length-prefixed messages until EOF or an I/O error.
async fn serve_tcp_connection(mut stream: TcpStream, state: Arc<State>) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        buf.resize(usize::from(len), 0);
        if stream.read_exact(&mut buf).await.is_err() {
            return;
        }
        let Some(response) = handle(&state, &buf, Transport::Tcp) else {
            continue;
        };
        let Ok(len) = u16::try_from(response.len()) else {
            continue;
        };
        let mut framed = Vec::with_capacity(response.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&response);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// Decodes one request and encodes its response; `None` means send nothing.
fn handle(state: &State, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let request = Message::from_vec(packet).ok()?;
    let response = respond(state, &request)?;
    let bytes = response.to_vec().ok()?;
    if transport == Transport::Tcp {
        return Some(bytes);
    }
    let limit = request
        .edns
        .as_ref()
        .map_or(PLAIN_UDP_LIMIT, |edns| {
            usize::from(edns.max_payload().min(DEFAULT_MAX_PAYLOAD_LEN))
        })
        .max(PLAIN_UDP_LIMIT);
    if bytes.len() <= limit {
        return Some(bytes);
    }
    // Too big for this datagram: header and question only, TC set, so the client retries over TCP.
    response.truncate().to_vec().ok()
}

fn respond(state: &State, request: &Message) -> Option<Message> {
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    response.metadata.checking_disabled = request.metadata.checking_disabled;
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(DEFAULT_MAX_PAYLOAD_LEN);
        response.edns = Some(edns);
    }
    response.add_queries(request.queries.iter().cloned());

    if request.metadata.op_code != OpCode::Query {
        response.metadata.response_code = ResponseCode::NotImp;
        return Some(response);
    }
    let [query] = request.queries.as_slice() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return Some(response);
    };

    let name = normalize_name(&query.name);
    let query_type = query.query_type;
    let nth = {
        let mut counters = state.lock();
        *counters.per_name.entry(name.clone()).or_default() += 1;
        let per_type = counters
            .per_type
            .entry((name.clone(), query_type))
            .or_default();
        let nth = *per_type;
        *per_type += 1;
        nth
    };

    let Some((answer, ttl)) = state.zone.get(&name) else {
        response.metadata.response_code = ResponseCode::NXDomain;
        return Some(response);
    };
    let addresses: &[IpAddr] = match answer {
        Answer::Silent => return None,
        Answer::ServFail => {
            response.metadata.response_code = ResponseCode::ServFail;
            return Some(response);
        }
        Answer::Fixed(addresses) => addresses,
        Answer::Rotating(sequence) => match sequence.len() {
            0 => &[],
            len => &sequence[nth.min(len - 1)],
        },
    };

    // Answer with the owner name exactly as asked, so case-randomizing clients accept it.
    for address in addresses {
        let rdata = match (query_type, address) {
            (RecordType::A, IpAddr::V4(v4)) => RData::A(A(*v4)),
            (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA(*v6)),
            _ => continue,
        };
        response.add_answer(Record::from_rdata(query.name.clone(), *ttl, rdata));
    }
    // No address of this type (or another query type): NOERROR with no answers, i.e. NODATA.
    Some(response)
}
