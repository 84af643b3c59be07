#![allow(dead_code)]
//! A real HTTP/1.1 origin server on loopback. It answers every request with a JSON echo of what
//! it received (method, path, headers, body length) and counts connections and requests, so tests
//! can see exactly what the proxy forwarded and whether it reused connections.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct Origin {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    uris: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Origin {
    /// Starts on 127.0.0.1 with a free port.
    pub async fn start() -> Origin {
        Origin::start_on("127.0.0.1".parse().unwrap()).await
    }

    /// Starts on a given loopback address (e.g. 127.0.0.2) with a free port.
    pub async fn start_on(ip: IpAddr) -> Origin {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let uris = Arc::new(Mutex::new(Vec::new()));
        let (c, r, u) = (connections.clone(), requests.clone(), uris.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (r, u) = (r.clone(), u.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        r.fetch_add(1, Ordering::SeqCst);
                        u.lock().unwrap().push(req.uri().to_string());
                        echo(req)
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Origin {
            addr,
            connections,
            requests,
            uris,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The request targets received so far, in arrival order.
    pub fn uris(&self) -> Vec<String> {
        self.uris.lock().unwrap().clone()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let echo = serde_json::json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body_len": body.len(),
    });
    let mut resp = Response::new(Full::new(Bytes::from(echo.to_string())));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    resp.headers_mut()
        .insert("x-origin", "yes".parse().unwrap());
    Ok(resp)
}
