//! The accept loop that every edgefn listener shares (the runner's front and admin
//! listeners, the control plane's API and node listeners), hardened against slow and
//! malicious clients:
//!
//! - [`Gate::accept`] admits a connection only within a total limit and a limit per client
//!   IP address; over the total it stops accepting (the kernel's queue holds the rest), over
//!   the per-IP limit it closes the new connection at once; an accept error (out of file
//!   descriptors) backs off instead of spinning.
//! - [`Gate::builder`] is hyper's server builder with a header read timeout (HTTP/1: a
//!   client that sends half a request head is cut off) and a cap on concurrent HTTP/2
//!   streams per connection.
//! - [`Activity`] counts a connection's requests in flight (until their response bodies
//!   end) and [`Activity::expired`] fires when the connection has had none for the idle
//!   timeout — or, before its first request, for the header read timeout — which also covers
//!   HTTP/2 and the protocol sniffing before either.
//! - [`RefusalId`] gives hyper's own 400 and 431 answers an `x-request-id`.
//!
//! ```no_run
//! # async fn example(listener: tokio::net::TcpListener) {
//! use edgefn_listen::{Activity, Gate, Limits};
//! let gate = Gate::new(Limits::default());
//! loop {
//!     let accepted = gate.accept(&listener).await;
//!     let activity = Activity::new();
//!     // … build a service whose responses are `activity.track(response)`, serve the
//!     // connection with `gate.builder()`, and drop it when `activity.expired()` fires.
//! #   break;
//! }
//! # }
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

mod refusal;
pub use refusal::{OnRefusal, REQUEST_ID, RefusalId};

/// What a listener tolerates from its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How long a client may take to send a request head (HTTP/1), and to send anything at
    /// all after connecting. Slowloris clients are cut off after it.
    pub header_read_timeout: Duration,
    /// How long a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// Open connections in all; at the limit the listener stops accepting until one closes.
    pub max_connections: usize,
    /// Open connections from one IP address; more are closed as soon as they are accepted.
    pub max_connections_per_ip: usize,
    /// Concurrent HTTP/2 streams on one connection (the client is told in SETTINGS).
    pub h2_max_concurrent_streams: u32,
}

impl Default for Limits {
    /// 10 s for a request head is what nginx (`client_header_timeout` 60 s) and Envoy
    /// (`request_headers_timeout`) can be tuned to, and ample for a real client; 60 s idle
    /// is a usual keep-alive. 10,000 connections fit the default file-descriptor limits
    /// operators raise for proxies; 1,000 per IP leaves room for a busy NAT while one
    /// address cannot take the whole node. 100 streams is the HTTP/2 RFC's recommended
    /// minimum and nginx's default.
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            h2_max_concurrent_streams: 100,
        }
    }
}

/// Admits connections within [`Limits`]; shared by one listener's accept loop.
pub struct Gate {
    limits: Limits,
    total: Arc<Semaphore>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    refused: AtomicU64,
}

/// A connection the gate admitted. Dropping `permit` (with the connection) frees its place.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub permit: Permit,
}

/// A place in the gate's limits, held as long as the connection is open.
pub struct Permit {
    _total: OwnedSemaphorePermit,
    ip: IpAddr,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = lock(&self.per_ip);
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// The map stays consistent whatever a panicking holder did (it only holds counters).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Gate {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            total: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            per_ip: Default::default(),
            refused: AtomicU64::new(0),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Connections closed at once because their IP address had too many open.
    pub fn refused_connections(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The next connection within the limits. Waits while the total is reached; accept
    /// errors (out of descriptors, a connection reset before accept) back off from 10 ms to
    /// 1 s instead of spinning.
    pub async fn accept(&self, listener: &TcpListener) -> Accepted {
        let mut backoff = Duration::from_millis(10);
        loop {
            let Ok(total) = self.total.clone().acquire_owned().await else {
                // The semaphore is never closed; wait instead of spinning if it were.
                std::future::pending::<()>().await;
                continue;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            backoff = Duration::from_millis(10);
            let ip = peer.ip();
            {
                let mut counts = lock(&self.per_ip);
                let count = counts.entry(ip).or_insert(0);
                if *count >= self.limits.max_connections_per_ip {
                    drop(counts);
                    let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                    // One line per 1,000 refusals: a flood must not become a log flood.
                    if refused % 1_000 == 1 {
                        tracing::warn!(%ip, refused, "too many connections from one address; closing new ones");
                    }
                    continue;
                }
                *count += 1;
            }
            let _ = stream.set_nodelay(true);
            return Accepted {
                stream,
                peer,
                permit: Permit {
                    _total: total,
                    ip,
                    per_ip: self.per_ip.clone(),
                },
            };
        }
    }

    /// hyper's server builder (HTTP/1 and HTTP/2 by sniffing or ALPN) with the header read
    /// timeout and the HTTP/2 stream cap.
    pub fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.limits.h2_max_concurrent_streams);
        builder
    }
}

/// One connection's requests in flight and when it last changed.
#[derive(Clone)]
pub struct Activity(Arc<ActivityState>);

struct ActivityState {
    /// tokio's clock (std's outside tests), so tests can pause time.
    origin: tokio::time::Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `origin` of the last request start or end.
    last_change_ms: AtomicU64,
    served: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub fn new() -> Self {
        Self(Arc::new(ActivityState {
            origin: tokio::time::Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_change_ms: AtomicU64::new(0),
            served: AtomicBool::new(false),
        }))
    }

    fn touch(&self) {
        let now = self.0.origin.elapsed().as_millis() as u64;
        self.0.last_change_ms.store(now, Ordering::Relaxed);
    }

    /// Whether a request has been handed to the service on this connection.
    pub fn has_served(&self) -> bool {
        self.0.served.load(Ordering::Relaxed)
    }

    /// Marks a request in flight until the guard drops.
    pub fn begin(&self) -> InFlight {
        self.0.in_flight.fetch_add(1, Ordering::AcqRel);
        self.0.served.store(true, Ordering::Relaxed);
        self.touch();
        InFlight(self.clone())
    }

    /// `response`, counted in flight until its body has been sent (or dropped).
    pub fn track<B>(
        &self,
        guard: InFlight,
        response: http::Response<B>,
    ) -> http::Response<Tracked<B>> {
        debug_assert!(Arc::ptr_eq(&guard.0.0, &self.0));
        response.map(|body| Tracked {
            body,
            _guard: guard,
        })
    }

    /// Resolves once the connection has had no request in flight for the idle timeout (the
    /// header read timeout before its first request). Requests in flight are bounded by
    /// their own deadlines, so a busy connection is only checked again after a while.
    pub async fn expired(&self, limits: &Limits) {
        loop {
            let wait = if self.0.in_flight.load(Ordering::Acquire) > 0 {
                limits.idle_timeout
            } else {
                let limit = if self.0.served.load(Ordering::Relaxed) {
                    limits.idle_timeout
                } else {
                    limits.header_read_timeout
                };
                let since = Duration::from_millis(self.0.last_change_ms.load(Ordering::Relaxed));
                let idle = self.0.origin.elapsed().saturating_sub(since);
                match limit.checked_sub(idle) {
                    Some(left) if !left.is_zero() => left,
                    _ => return,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// A request in flight on a connection (see [`Activity::begin`]).
pub struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted in flight until it ends.
pub struct Tracked<B> {
    body: B,
    _guard: InFlight,
}

impl<B> hyper::body::Body for Tracked<B>
where
    B: hyper::body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt as _, Full};

    fn limits(header_ms: u64, idle_ms: u64) -> Limits {
        Limits {
            header_read_timeout: Duration::from_millis(header_ms),
            idle_timeout: Duration::from_millis(idle_ms),
            ..Limits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_expires_after_the_header_timeout() {
        let activity = Activity::new();
        let started = tokio::time::Instant::now();
        activity.expired(&limits(100, 10_000)).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(100) && waited < Duration::from_millis(200),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_keeps_the_connection_until_its_body_ends() {
        let activity = Activity::new();
        let guard = activity.begin();
        let response = activity.track(
            guard,
            http::Response::new(Full::new(bytes::Bytes::from("x"))),
        );
        let expired = tokio::time::timeout(
            Duration::from_millis(500),
            activity.expired(&limits(10, 100)),
        )
        .await;
        assert!(expired.is_err(), "expired with a request in flight");
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "x"
        );
        // The body ended (and dropped): idle from now on.
        let started = tokio::time::Instant::now();
        activity.expired(&limits(10, 100)).await;
        assert!(started.elapsed() <= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn connections_over_the_per_ip_limit_are_closed_and_counted() {
        use tokio::io::AsyncReadExt as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let gate = Gate::new(Limits {
            max_connections_per_ip: 2,
            ..Limits::default()
        });
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(address).await.unwrap());
        }
        let first = gate.accept(&listener).await;
        let second = gate.accept(&listener).await;
        // The third is closed; a fourth from another loopback address is admitted.
        let other = tokio::net::TcpSocket::new_v4().unwrap();
        other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let _other = other.connect(address).await.unwrap();
        let third = gate.accept(&listener).await;
        assert_eq!(third.peer.ip(), "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(gate.refused_connections(), 1);
        let mut buffer = [0u8; 1];
        assert_eq!(clients[2].read(&mut buffer).await.unwrap(), 0, "closed");
        // A place frees when a connection closes.
        drop(first);
        clients.push(TcpStream::connect(address).await.unwrap());
        let again = gate.accept(&listener).await;
        assert_eq!(again.peer.ip(), second.peer.ip());
    }
}
