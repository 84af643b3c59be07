//! Plain-HTTP forwarding of absolute-form requests over pooled upstream connections.
//!
//! Hop-by-hop and `Proxy-*` headers are removed both ways, `Host` is set from the URI authority
//! (a client `Host` naming anything else is refused), and the request goes out in origin-form.
//! The `net.req` record is written when the response body has been fully relayed (or abandoned).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::exchange::Exchange;
use super::pool::{Pool, PoolKey};
use super::respond::{Body, ProxyError};
use super::{Proxy, egress_error};
use crate::egress::Resolved;
use crate::policy::Policy;
use crate::target::{self, Target};

/// Forwards the request and returns the upstream response, streaming.
pub(super) async fn send(
    proxy: &Arc<Proxy>,
    policy: &Arc<Policy>,
    ex: &mut Exchange,
    target: &Target,
    resolved: Resolved,
    req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let host = host_header_value(target, &ex.host);
    check_host_header(req.headers(), target, &host)?;
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(
        header::HOST,
        HeaderValue::from_str(&host).expect("a normalised host is a valid header value"),
    );
    parts.uri = origin_form(&parts.uri);
    parts.version = Version::HTTP_11;
    // Most forwarded requests have no body: nothing to count, nothing to allocate.
    let bytes_up = (!body.is_end_stream()).then(|| Arc::new(UpStats::default()));
    let upstream_req = Request::from_parts(
        parts,
        UpBody {
            inner: body,
            stats: bytes_up.clone(),
        },
    );

    let (mut sender, key) = checkout_or_connect(proxy, &resolved, host).await?;
    ex.connected = Some(key.addr.addr());
    let response =
        tokio::time::timeout(proxy.limits.idle_timeout, sender.send_request(upstream_req))
            .await
            .map_err(|_| ProxyError::UpstreamTimeout)?
            .map_err(|e| match &bytes_up {
                // The client's own body broke the exchange: its fault, not the origin's.
                Some(stats) if stats.client_failed.load(Ordering::Relaxed) => {
                    ProxyError::ClientBody(format!(
                        "the request body is malformed or ended early: {e}"
                    ))
                }
                _ => ProxyError::Upstream(format!("upstream request failed: {e}")),
            })?;

    let (mut parts, body) = response.into_parts();
    let reusable = !connection_close(&parts.headers);
    strip_hop_by_hop(&mut parts.headers);
    let status = parts.status.as_u16();
    let body = DownBody {
        inner: body,
        bytes_down: 0,
        give_back: reusable.then(|| (proxy.pool.clone(), key, sender)),
        finish: Some(Finish {
            proxy: proxy.clone(),
            policy: policy.clone(),
            exchange: ex.clone(),
            status,
            bytes_up,
        }),
    };
    Ok(Response::from_parts(parts, body.boxed()))
}

async fn checkout_or_connect(
    proxy: &Arc<Proxy>,
    resolved: &Resolved,
    host: Arc<str>,
) -> Result<(SendRequest<UpBody>, PoolKey), ProxyError> {
    for addr in &resolved.addrs {
        let key = PoolKey {
            addr: *addr,
            host: host.clone(),
        };
        if let Some(sender) = proxy.pool.checkout(&key).await {
            return Ok((sender, key));
        }
    }
    let (stream, vetted) = proxy.egress.connect(resolved).await.map_err(egress_error)?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ProxyError::Upstream(format!("upstream handshake failed: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok((sender, PoolKey { addr: vetted, host }))
}

/// Refuses a client `Host` header that names a different destination than the URI.
/// `expected` is the target's own `Host` value (see [`host_header_value`]).
fn check_host_header(
    headers: &HeaderMap,
    target: &Target,
    expected: &str,
) -> Result<(), ProxyError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let Some(value) = hosts.next() else {
        return Ok(());
    };
    let mismatch = ProxyError::BadRequest {
        reason: "host_mismatch",
        detail: "the Host header names a different destination than the request URI",
    };
    if hosts.next().is_some() {
        return Err(mismatch);
    }
    let value = value.to_str().map_err(|_| ProxyError::BadRequest {
        reason: "host_mismatch",
        detail: "the Host header is not valid text",
    })?;
    // The usual case, without re-parsing: the header spells the target in its normalised form
    // (normalising that again changes nothing but case, and host names are case-insensitive).
    if value.eq_ignore_ascii_case(expected) {
        return Ok(());
    }
    let uri: Uri = format!("http://{value}/")
        .parse()
        .map_err(|_| ProxyError::BadRequest {
            reason: "host_mismatch",
            detail: "the Host header is not a valid host[:port]",
        })?;
    match target::parse_absolute_uri(&uri) {
        Ok(named) if &named == target => Ok(()),
        _ => Err(mismatch),
    }
}

/// `host` or `host:port` when the port is not 80; `name` is the target's host as recorded
/// (`Exchange::host`), shared rather than formatted again.
fn host_header_value(target: &Target, name: &Arc<str>) -> Arc<str> {
    debug_assert_eq!(**name, target.host.to_string());
    if target.port == 80 {
        name.clone()
    } else {
        Arc::from(format!("{name}:{}", target.port))
    }
}

/// The request target as sent upstream: the path and query alone. Built from the parsed parts
/// (a cheap, shared copy) rather than by parsing the text again.
fn origin_form(uri: &Uri) -> Uri {
    let pq = match uri.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => pq.clone(),
        // `http://host?q` has an empty path: the origin-form of that is `/?q`.
        Some(pq) => match format!("/{}", pq.as_str()).parse() {
            Ok(pq) => pq,
            Err(_) => http::uri::PathAndQuery::from_static("/"),
        },
        None => http::uri::PathAndQuery::from_static("/"),
    };
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
}

fn connection_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("close"))
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Removes hop-by-hop headers (the fixed list plus any named in `Connection`) and every `Proxy-*`.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove(KEEP_ALIVE);
    let proxy_headers: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy_headers {
        headers.remove(name);
    }
}

// === bodies ===

/// The client's request body on its way upstream, counted.
pub(crate) struct UpBody {
    inner: Incoming,
    /// `None` for a request without a body.
    stats: Option<Arc<UpStats>>,
}

/// What the proxy learns about a request body while relaying it.
#[derive(Default)]
struct UpStats {
    bytes: AtomicU64,
    /// Reading the client's body failed (bad chunked framing, connection lost mid-body).
    client_failed: AtomicBool,
}

impl HttpBody for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if let Some(stats) = &self.stats {
            match &poll {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        stats.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                }
                Poll::Ready(Some(Err(_))) => stats.client_failed.store(true, Ordering::Relaxed),
                _ => {}
            }
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What to record once the response is over.
struct Finish {
    proxy: Arc<Proxy>,
    policy: Arc<Policy>,
    exchange: Exchange,
    status: u16,
    bytes_up: Option<Arc<UpStats>>,
}

/// The upstream response body on its way to the client: counts bytes, returns the connection to
/// the pool after a complete body, and writes the `net.req` record at the end.
struct DownBody {
    inner: Incoming,
    bytes_down: u64,
    give_back: Option<(Arc<Pool>, PoolKey, SendRequest<UpBody>)>,
    finish: Option<Finish>,
}

impl DownBody {
    fn done(&mut self, complete: bool) {
        if let Some((pool, key, sender)) = self.give_back.take()
            && complete
        {
            pool.checkin(key, sender);
        }
        if let Some(f) = self.finish.take() {
            let up = f.bytes_up.map_or(0, |b| b.bytes.load(Ordering::Relaxed));
            let record =
                f.exchange
                    .net_req(&f.policy, "allow", None, f.status, up, self.bytes_down);
            f.proxy.audit.submit(record);
        }
    }
}

impl HttpBody for DownBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes_down += data.len() as u64;
                }
            }
            Poll::Ready(None) => self.done(true),
            Poll::Ready(Some(Err(_))) => self.done(false),
            Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for DownBody {
    fn drop(&mut self) {
        let complete = self.inner.is_end_stream();
        self.done(complete);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_proxy_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic abc"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["accept"]);
    }

    #[test]
    fn requests_go_upstream_in_origin_form() {
        for (absolute, origin) in [
            ("http://example.com", "/"),
            ("http://example.com/", "/"),
            ("http://example.com/a/b?c=d&e", "/a/b?c=d&e"),
            ("http://example.com?q=1", "/?q=1"),
            ("http://example.com:8080/x", "/x"),
        ] {
            let uri: Uri = absolute.parse().unwrap();
            assert_eq!(origin_form(&uri).to_string(), origin, "{absolute}");
        }
    }

    #[test]
    fn host_header_must_name_the_uri_authority() {
        let target = Target {
            host: target::Host::Name("example.com".into()),
            port: 80,
        };
        let expected = host_header_value(&target, &Arc::from("example.com"));
        let check = |h: &HeaderMap| check_host_header(h, &target, &expected);
        let mut h = HeaderMap::new();
        assert!(check(&h).is_ok());
        h.insert(header::HOST, HeaderValue::from_static("EXAMPLE.com:80"));
        assert!(check(&h).is_ok());
        h.insert(header::HOST, HeaderValue::from_static("Example.COM"));
        assert!(check(&h).is_ok());
        h.insert(header::HOST, HeaderValue::from_static("example.com."));
        assert!(check(&h).is_ok());
        h.insert(header::HOST, HeaderValue::from_static("other.example"));
        assert!(check(&h).is_err());
        h.insert(header::HOST, HeaderValue::from_static("example.com:8080"));
        assert!(check(&h).is_err());
        h.insert(header::HOST, HeaderValue::from_static("example.com.evil"));
        assert!(check(&h).is_err());
        h.insert(header::HOST, HeaderValue::from_static("example.com"));
        h.append(header::HOST, HeaderValue::from_static("example.com"));
        assert!(check(&h).is_err());
    }
}
