//! Serving connections at a bounded cost. tonic's own TLS server has no
//! connection limit and no idle timeout, so the vault accepts connections
//! itself and hands each to hyper's HTTP/2 server:
//!
//! - at most `limits.max_connections` connections at once, TLS handshakes
//!   included, so a flood cannot exhaust the process's file descriptors;
//! - a TLS handshake must finish within `limits.tls_handshake_timeout_ms`;
//!   when every slot is taken, the oldest connection still in its handshake
//!   is dropped to make room, so connections that never start TLS cannot
//!   lock callers out;
//! - mutual TLS exactly as before: a client certificate signed by the
//!   configured CA, and on none of its revocation lists, is required
//!   (rustls' `WebPkiClientVerifier`), and the
//!   connection's [`TlsConnectInfo`] goes into every request, so
//!   `Request::peer_certs` works as with tonic's server;
//! - HTTP/2 keepalive pings, `limits.max_concurrent_streams` calls per
//!   connection, and a graceful close (GOAWAY) of a connection that started
//!   no call for `limits.idle_timeout_ms`;
//! - each connection takes the TLS setup and the limits as they are when it
//!   is accepted, so a reload ([`crate::reload`]) applies to new connections;
//! - at shutdown, no connection is accepted, every connection is closed
//!   gracefully (GOAWAY), and calls still running when
//!   `server.shutdown_grace_ms` has passed are dropped ([`crate::lifecycle`]);
//! - a call refused before its handler ran (a message over the size limit,
//!   bytes that are not protobuf) is audited here, see
//!   [`VaultContext::refused_before_handler`];
//! - every call gets a request id, drawn here: in the span of its log lines,
//!   in its audit entries and in its answer's `x-request-id` header;
//! - every call is measured here, from arrival to the end of its answer
//!   ([`crate::metrics::CallMeter`]), and so are open connections and what
//!   the transport refused ([`crate::metrics::TransportRefusal`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mnvault_core::id::RequestId;
use mnvault_core::mint::draw_request_id;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::service::Routes;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tonic::Status;
use tracing::Instrument as _;

use crate::config::LimitSettings;
use crate::metrics::TransportRefusal;
use crate::service::{operation_of_path, Context, Dispatched, VaultContext};

/// How long the accept loop pauses after the operating system refused a
/// connection (e.g. out of file descriptors), instead of spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Connections still in their TLS handshake, oldest first, each with the
/// signal that drops it.
#[derive(Default)]
struct Handshakes {
    next: AtomicU64,
    waiting: Mutex<BTreeMap<u64, oneshot::Sender<()>>>,
}

impl Handshakes {
    fn enter(&self) -> (u64, oneshot::Receiver<()>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (drop_it, dropped) = oneshot::channel();
        self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(id, drop_it);
        (id, dropped)
    }

    fn leave(&self, id: u64) {
        self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&id);
    }

    /// Drops the oldest connection still in its handshake; false if none is.
    fn evict_oldest(&self) -> bool {
        let oldest = self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop_first();
        oldest.is_some_and(|(_, drop_it)| drop_it.send(()).is_ok())
    }
}

/// When a connection last started a call, and whether it ever did.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    called: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self { start: Instant::now(), last_ms: AtomicU64::new(0), called: AtomicBool::new(false) }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
        self.called.store(true, Ordering::Relaxed);
    }

    /// Whether a call ever started: if not, no stream can be open, and a
    /// client that never sent its HTTP/2 preface would hold a graceful
    /// close forever, so the connection is simply dropped.
    fn ever_called(&self) -> bool {
        self.called.load(Ordering::Relaxed)
    }

    /// Completes once no call has started for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let deadline = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Accepts on `listener` until `shutdown` completes with the grace period,
/// then closes every connection gracefully and returns once they are all
/// gone: those whose calls outlive the grace period are dropped. Each
/// connection takes the TLS setup in `tls` and the limits in `ctx` as they
/// are when it is accepted (a reload may replace both), except the sizes of
/// the connection and large-call semaphores, fixed here.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<ArcSwap<ServerConfig>>,
    routes: Routes,
    ctx: Context,
    shutdown: impl Future<Output = Duration>,
) {
    let limits = ctx.limits();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let large_calls = Arc::new(Semaphore::new(limits.max_large_calls));
    let handshakes = Arc::new(Handshakes::default());
    let (stop, stopped) = watch::channel(None);
    let mut shutdown = pin!(shutdown);
    let grace = loop {
        let tcp = tokio::select! {
            grace = &mut shutdown => break grace,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    tracing::warn!(%error, "could not accept a connection");
                    ctx.metrics.transport_refused(TransportRefusal::AcceptFailed);
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                ctx.metrics.transport_refused(TransportRefusal::ConnectionLimit);
                if !handshakes.evict_oldest() {
                    tracing::warn!(limit = limits.max_connections, "connection limit reached; waiting for a slot");
                }
                tokio::select! {
                    grace = &mut shutdown => break grace,
                    permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                }
            }
        };
        let limits = ctx.limits();
        let connection = Connection {
            permit,
            acceptor: TlsAcceptor::from(tls.load_full()),
            handshakes: handshakes.clone(),
            builder: http2_builder(&limits),
            routes: routes.clone(),
            ctx: ctx.clone(),
            limits,
            stopped: stopped.clone(),
            large_calls: large_calls.clone(),
        };
        tokio::spawn(connection.run(tcp));
    };
    // Stop accepting, then let every connection finish its calls within the grace period.
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "no longer accepting connections; calls in flight may run until the grace period (server.shutdown_grace_ms) ends"
    );
    drop(listener);
    drop(stopped);
    // A grace period beyond what a clock can add is as good as none.
    let end = Instant::now().checked_add(grace).unwrap_or_else(|| Instant::now() + Duration::from_secs(3_153_600_000));
    let _ = stop.send(Some(end));
    stop.closed().await;
}

/// HTTP/2 as a connection gets it, with the limits of its time.
fn http2_builder(limits: &LimitSettings) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    // Small flow-control windows: what a client may push before the vault
    // reads it is bounded per stream and per connection.
    builder
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(limits.keepalive_interval())
        .keep_alive_timeout(limits.keepalive_timeout());
    builder
}

/// One accepted connection and what it needs.
struct Connection {
    permit: OwnedSemaphorePermit,
    acceptor: TlsAcceptor,
    handshakes: Arc<Handshakes>,
    builder: http2::Builder<TokioExecutor>,
    routes: Routes,
    ctx: Context,
    limits: Arc<LimitSettings>,
    /// Set to the end of the grace period when the vault shuts down.
    stopped: watch::Receiver<Option<Instant>>,
    large_calls: Arc<Semaphore>,
}

/// Per-call bounds.
struct Call {
    request_timeout: Duration,
    /// Permits for calls whose messages may be large (`limits.max_large_calls`).
    large_calls: Arc<Semaphore>,
}

/// HTTP/2 flow-control window of a stream: bytes a client may send ahead.
const STREAM_WINDOW_BYTES: u32 = 256 * 1024;
/// HTTP/2 flow-control window of a connection, across its streams.
const CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;

impl Connection {
    async fn run(mut self, tcp: TcpStream) {
        let _slot = self.permit;
        let metrics = self.ctx.metrics.clone();
        let _open = metrics.connection_opened();
        let _ = tcp.set_nodelay(true);
        let (id, mut evicted) = self.handshakes.enter();
        let handshake = tokio::time::timeout(self.limits.tls_handshake_timeout(), self.acceptor.accept(tcp));
        let tls = tokio::select! {
            done = handshake => {
                self.handshakes.leave(id);
                match done {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "TLS handshake failed");
                        metrics.transport_refused(TransportRefusal::TlsHandshakeFailed);
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        metrics.transport_refused(TransportRefusal::TlsHandshakeTimeout);
                        return;
                    }
                }
            }
            _ = &mut evicted => {
                tracing::debug!("connection in its TLS handshake dropped to make room");
                metrics.transport_refused(TransportRefusal::EvictedInHandshake);
                return;
            }
            _ = self.stopped.changed() => {
                self.handshakes.leave(id);
                return;
            }
        };
        let info = tls.connect_info();
        let activity = Arc::new(Activity::new());
        let (routes, ctx, seen, large_calls) = (self.routes, self.ctx, activity.clone(), self.large_calls);
        let request_timeout = self.limits.request_timeout();
        let service = hyper::service::service_fn(move |request| {
            seen.touch();
            let call = Call { request_timeout, large_calls: large_calls.clone() };
            handle(routes.clone(), ctx.clone(), info.clone(), call, request)
        });
        let mut served = pin!(self.builder.serve_connection(TokioIo::new(tls), service));
        let idle_timeout = self.limits.idle_timeout();
        let mut closing = false;
        let mut stopping = false;
        // A connection asked to close keeps its calls this long, no longer:
        // a client holding a call open must not hold the slot forever.
        let grace = tokio::time::sleep(Duration::MAX);
        let mut grace = pin!(grace);
        loop {
            tokio::select! {
                result = served.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    break;
                }
                () = grace.as_mut(), if closing => {
                    if stopping {
                        tracing::warn!("connection dropped: its calls outlived the shutdown grace period (server.shutdown_grace_ms)");
                    } else {
                        tracing::debug!("connection dropped: its calls outlived the close");
                    }
                    metrics.transport_refused(TransportRefusal::CallsOutlivedClose);
                    break;
                }
                () = activity.idle_for(idle_timeout), if !closing => {
                    if !activity.ever_called() {
                        tracing::debug!("connection closed: no call started");
                        break;
                    }
                    closing = true;
                    grace.as_mut().reset(tokio::time::Instant::now() + self.limits.request_timeout());
                    served.as_mut().graceful_shutdown();
                }
                _ = self.stopped.changed(), if !stopping => {
                    stopping = true;
                    if !activity.ever_called() {
                        break;
                    }
                    // Shutting down: the calls have until the grace period ends, even
                    // on a connection already closing for being idle.
                    let end = (*self.stopped.borrow()).unwrap_or_else(Instant::now);
                    if !closing || end < grace.deadline() {
                        grace.as_mut().reset(end);
                    }
                    if !closing {
                        closing = true;
                        served.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// The header that carries a call's request id back to the caller.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// One request: the vault draws its request id, runs the call in a span
/// that names it, so every log line of the call does, and answers it in the
/// `x-request-id` header, whatever the outcome. The id is drawn, never taken
/// from the caller: a caller's text would have to be parsed before it
/// reached a log line or an audit entry, and a caller could reuse another
/// call's id to muddle the trail.
async fn handle(
    routes: Routes,
    ctx: Arc<VaultContext>,
    info: TlsConnectInfo<TcpConnectInfo>,
    call: Call,
    request: http::Request<Incoming>,
) -> Result<http::Response<Body>, Infallible> {
    // Measured from arrival to the end of the answer, whatever route it takes.
    let meter = ctx.metrics.start_call(request.uri().path());
    let request_id = draw_request_id();
    // At error level, so the span is on whatever level the log is filtered to.
    let span = tracing::error_span!("call", request_id = %request_id);
    let mut response = route(routes, ctx, info, call, request, &request_id).instrument(span).await?;
    let value = http::HeaderValue::from_str(request_id.as_str()).expect("a request id is a valid header value");
    response.headers_mut().insert(http::HeaderName::from_static(REQUEST_ID_HEADER), value);
    Ok(meter.finish(response))
}

/// One request: the connection's TLS details go in, as tonic's server puts
/// them, and the request id, then the request is routed. A vault call that
/// the transport refused before its handler ran is audited here.
async fn route(
    mut routes: Routes,
    ctx: Arc<VaultContext>,
    info: TlsConnectInfo<TcpConnectInfo>,
    call: Call,
    mut request: http::Request<Incoming>,
    request_id: &RequestId,
) -> Result<http::Response<Body>, Infallible> {
    let request_timeout = call.request_timeout;
    let deadline = Instant::now() + request_timeout;
    let operation = operation_of_path(request.uri().path());
    let certs = info.peer_certs();
    let dispatched = Dispatched::default();
    request.extensions_mut().insert(info);
    request.extensions_mut().insert(dispatched.clone());
    request.extensions_mut().insert(request_id.clone());
    std::future::poll_fn(|cx| Service::<http::Request<Incoming>>::poll_ready(&mut routes, cx)).await?;
    // A body that never finishes arriving must not hold the call, its
    // buffered bytes and the connection for ever.
    let large = !request.uri().path().starts_with("/mynumber.vault.v1.TokenService/")
        && request.uri().path().starts_with("/mynumber.vault.v1.");
    let response = async {
        // A large call waits for a permit before its body is read, so at most
        // `max_large_calls` large bodies are in memory at once.
        let _permit = if large {
            Some(call.large_calls.acquire_owned().await.expect("the semaphore is never closed"))
        } else {
            None
        };
        routes.call(request).await
    };
    let response = match tokio::time::timeout_at(deadline, response).await {
        Ok(response) => response?,
        Err(_) => {
            let late = Status::deadline_exceeded(format!(
                "the call was not received and answered within {} ms (limits.request_timeout_ms); send the whole \
                 request at once",
                request_timeout.as_millis()
            ));
            return Ok(match operation {
                Some(operation) if !dispatched.reached() => {
                    let certs = certs.as_deref().map(Vec::as_slice);
                    ctx.refused_before_handler(operation, certs, request_id, &late).await.into_http()
                }
                _ => late.into_http(),
            });
        }
    };
    let Some(operation) = operation else { return Ok(response) };
    if dispatched.reached() {
        return Ok(response);
    }
    match Status::from_header_map(response.headers()) {
        Some(refused) if refused.code() != tonic::Code::Ok => {
            let certs = certs.as_deref().map(Vec::as_slice);
            let status = ctx.refused_before_handler(operation, certs, request_id, &refused).await;
            Ok(status.into_http())
        }
        _ => Ok(response),
    }
}
