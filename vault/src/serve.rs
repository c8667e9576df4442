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
//!   configured CA is required (rustls' `WebPkiClientVerifier`), and the
//!   connection's [`TlsConnectInfo`] goes into every request, so
//!   `Request::peer_certs` works as with tonic's server;
//! - HTTP/2 keepalive pings, `limits.max_concurrent_streams` calls per
//!   connection, and a graceful close (GOAWAY) of a connection that started
//!   no call for `limits.idle_timeout_ms`;
//! - a call refused before its handler ran (a message over the size limit,
//!   bytes that are not protobuf) is audited here, see
//!   [`VaultContext::refused_before_handler`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
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

use crate::config::LimitSettings;
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

/// Accepts on `listener` until `shutdown` completes, then closes every
/// connection gracefully and returns once they are all gone.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    routes: Routes,
    ctx: Context,
    shutdown: impl Future<Output = ()>,
) {
    let limits = ctx.limits.clone();
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let large_calls = Arc::new(Semaphore::new(limits.max_large_calls));
    let handshakes = Arc::new(Handshakes::default());
    let (stop, stopped) = watch::channel(());
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
    let mut shutdown = pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    tracing::warn!(%error, "could not accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if !handshakes.evict_oldest() {
                    tracing::warn!(limit = limits.max_connections, "connection limit reached; waiting for a slot");
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                }
            }
        };
        let connection = Connection {
            permit,
            acceptor: acceptor.clone(),
            handshakes: handshakes.clone(),
            builder: builder.clone(),
            routes: routes.clone(),
            ctx: ctx.clone(),
            limits: limits.clone(),
            stopped: stopped.clone(),
            large_calls: large_calls.clone(),
        };
        tokio::spawn(connection.run(tcp));
    }
    // Stop accepting, then let every connection finish its calls.
    drop(listener);
    drop(stopped);
    let _ = stop.send(());
    stop.closed().await;
}

/// One accepted connection and what it needs.
struct Connection {
    permit: OwnedSemaphorePermit,
    acceptor: TlsAcceptor,
    handshakes: Arc<Handshakes>,
    builder: http2::Builder<TokioExecutor>,
    routes: Routes,
    ctx: Context,
    limits: LimitSettings,
    stopped: watch::Receiver<()>,
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
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        return;
                    }
                }
            }
            _ = &mut evicted => {
                tracing::debug!("connection in its TLS handshake dropped to make room");
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
                    tracing::debug!("connection dropped: its calls outlived the close");
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
                _ = self.stopped.changed(), if !closing => {
                    if !activity.ever_called() {
                        break;
                    }
                    closing = true;
                    grace.as_mut().reset(tokio::time::Instant::now() + self.limits.request_timeout());
                    served.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// One request: the connection's TLS details go in, as tonic's server puts
/// them, then the request is routed. A vault call that the transport
/// refused before its handler ran is audited here.
async fn handle(
    mut routes: Routes,
    ctx: Arc<VaultContext>,
    info: TlsConnectInfo<TcpConnectInfo>,
    call: Call,
    mut request: http::Request<Incoming>,
) -> Result<http::Response<Body>, Infallible> {
    let request_timeout = call.request_timeout;
    let deadline = Instant::now() + request_timeout;
    let operation = operation_of_path(request.uri().path());
    let certs = info.peer_certs();
    let dispatched = Dispatched::default();
    request.extensions_mut().insert(info);
    request.extensions_mut().insert(dispatched.clone());
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
                    ctx.refused_before_handler(operation, certs.as_deref().map(Vec::as_slice), &late).await.into_http()
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
            let status = ctx.refused_before_handler(operation, certs.as_deref().map(Vec::as_slice), &refused).await;
            Ok(status.into_http())
        }
        _ => Ok(response),
    }
}
