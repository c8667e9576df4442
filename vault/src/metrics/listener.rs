//! The metrics listener: plain HTTP/1.1, `GET /metrics` and nothing else,
//! at a bounded cost. It is not authenticated (the numbers hold no caller
//! text), so it listens where `[metrics] listen` says, loopback unless the
//! operator wrote another address:
//!
//! - at most [`MAX_CONNECTIONS`] connections at once. When every slot is
//!   taken, the oldest connection whose request head has not all arrived is
//!   dropped to make room, so connections that send nothing cannot lock a
//!   scraper out; when every connection is being answered, the new one is
//!   closed at once (a scraper retries at its next interval);
//! - one request per connection, whose head must arrive within
//!   [`HEAD_TIMEOUT`] (a scraper sends it at once) and fit in
//!   [`MAX_HEAD_BYTES`]; a body is never read;
//! - a connection is dropped after [`CONNECTION_TIMEOUT`], answered or not.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::MetricsSettings;
use crate::service::{Context, VaultContext};
use crate::startup::StartupError;

/// Connections served at once.
const MAX_CONNECTIONS: usize = 4;
/// How long a request's head may take to arrive: short, since a scraper
/// sends it at once and a silent connection holds a slot until then.
const HEAD_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a connection may stay, whatever it does.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes a request's head may take (hyper's smallest buffer).
const MAX_HEAD_BYTES: usize = 8192;
/// Headers a request may have.
const MAX_HEADERS: usize = 32;
/// How long the accept loop waits for the slot of a connection it dropped,
/// a bound only: the dropped connection gives it back at its next poll.
const EVICTION_WAIT: Duration = Duration::from_secs(1);
/// How long the accept loop pauses after the operating system refused a
/// connection, instead of spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// What the answer is, for Prometheus.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl MetricsSettings {
    /// Binds the metrics listener the settings ask for (port 0 picks a free
    /// one), or none. A dev vault refuses an address beyond loopback, as it
    /// does for `listen`.
    pub async fn bind(&self, dev: bool) -> Result<Option<MetricsListener>, StartupError> {
        let Some(address) = self.listen else { return Ok(None) };
        if dev && !address.ip().is_loopback() {
            return Err(StartupError::DevNotLoopback(address));
        }
        let transport = |e: std::io::Error| StartupError::Transport { address: address.to_string(), source: e.into() };
        let listener = TcpListener::bind(address).await.map_err(transport)?;
        let local_addr = listener.local_addr().map_err(transport)?;
        if local_addr.ip().is_loopback() {
            tracing::info!(%local_addr, "metrics served at /metrics");
        } else {
            tracing::warn!(%local_addr, "metrics served at /metrics beyond loopback, without authentication");
        }
        Ok(Some(MetricsListener { listener, local_addr }))
    }
}

/// The bound metrics listener, not serving yet.
#[derive(Debug)]
pub struct MetricsListener {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl MetricsListener {
    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves `ctx`'s metrics until the returned handle is dropped.
    pub fn spawn(self, ctx: Context) -> MetricsServer {
        MetricsServer(tokio::spawn(serve(self.listener, ctx)))
    }
}

/// The metrics listener serving; dropping it stops the listener and drops
/// its connections.
#[derive(Debug)]
pub struct MetricsServer(JoinHandle<()>);

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connections whose request head has not all arrived, oldest first, each
/// with the signal that drops it. At most one entry per open connection.
#[derive(Default)]
struct AwaitingHead {
    /// The key of the next connection accepted: keys grow with age.
    next: u64,
    waiting: BTreeMap<u64, oneshot::Sender<()>>,
}

/// The connections awaiting their head, shared by the accept loop and the
/// connections.
type AwaitingHeads = Arc<Mutex<AwaitingHead>>;

impl AwaitingHead {
    fn lock(heads: &AwaitingHeads) -> std::sync::MutexGuard<'_, AwaitingHead> {
        heads.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a connection just accepted: its key, and the signal that
    /// fires when it is dropped to make room.
    fn enter(heads: &AwaitingHeads) -> (u64, oneshot::Receiver<()>) {
        let mut heads = Self::lock(heads);
        let key = heads.next;
        heads.next += 1;
        let (drop_it, dropped) = oneshot::channel();
        heads.waiting.insert(key, drop_it);
        (key, dropped)
    }

    /// The connection's head has arrived, or the connection ended: it is no
    /// longer dropped to make room.
    fn leave(heads: &AwaitingHeads, key: u64) {
        Self::lock(heads).waiting.remove(&key);
    }

    /// Signals the oldest connection still awaiting its head to drop; false
    /// if there is none.
    fn evict_oldest(heads: &AwaitingHeads) -> bool {
        let mut heads = Self::lock(heads);
        while let Some((_, drop_it)) = heads.waiting.pop_first() {
            if drop_it.send(()).is_ok() {
                return true;
            }
        }
        false
    }
}

/// Removes a connection from [`AwaitingHead`] however it ends.
struct LeaveOnDrop(AwaitingHeads, u64);

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        AwaitingHead::leave(&self.0, self.1);
    }
}

async fn serve(listener: TcpListener, ctx: Context) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let heads = AwaitingHeads::default();
    // Owned here, so aborting this task drops every connection with it.
    let mut connections = JoinSet::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(false);
    loop {
        while connections.try_join_next().is_some() {}
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(error) => {
                tracing::warn!(%error, "could not accept a metrics connection");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) if AwaitingHead::evict_oldest(&heads) => {
                tracing::debug!("metrics connection without its request head dropped to make room");
                match tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned()).await {
                    Ok(slot) => slot.expect("the semaphore is never closed"),
                    Err(_) => {
                        tracing::debug!("metrics connection closed: no slot came free");
                        continue;
                    }
                }
            }
            Err(_) => {
                tracing::debug!("metrics connection closed: {MAX_CONNECTIONS} already being answered");
                continue;
            }
        };
        let (key, mut evicted) = AwaitingHead::enter(&heads);
        let awaiting = LeaveOnDrop(heads.clone(), key);
        let (ctx, http, heads) = (ctx.clone(), http.clone(), heads.clone());
        connections.spawn(async move {
            let (_slot, _awaiting) = (slot, awaiting);
            let service = hyper::service::service_fn(move |request| {
                // The head has arrived: this connection is answered, not dropped.
                AwaitingHead::leave(&heads, key);
                let response = answer(&ctx, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let served = tokio::time::timeout(CONNECTION_TIMEOUT, http.serve_connection(TokioIo::new(tcp), service));
            tokio::select! {
                result = served => match result {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::debug!(%error, "metrics connection ended with an error"),
                    Err(_) => tracing::debug!("metrics connection dropped: it outlived its time"),
                },
                // Once the head has arrived the signal is gone (an error), never sent.
                Ok(()) = &mut evicted => {}
            }
        });
    }
}

/// `GET /metrics` gets the metrics; another method there 405, any other
/// path 404. Nothing of the request is read beyond its method and path, and
/// nothing is repeated.
fn answer<B>(ctx: &VaultContext, request: &http::Request<B>) -> http::Response<String> {
    let reply = |status: http::StatusCode, text: &str| {
        let mut response = http::Response::new(text.to_owned());
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return reply(http::StatusCode::NOT_FOUND, "not found; metrics are at GET /metrics\n");
    }
    if request.method() != http::Method::GET {
        let mut response = reply(http::StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        response.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static("GET"));
        return response;
    }
    match ctx.metrics.render(&ctx.core) {
        Ok(text) => {
            let mut response = http::Response::new(text);
            response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(CONTENT_TYPE));
            response
        }
        Err(error) => {
            tracing::error!(%error, "could not encode the metrics");
            reply(http::StatusCode::INTERNAL_SERVER_ERROR, "the metrics could not be encoded\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connections_awaiting_their_head_are_dropped_oldest_first() {
        let heads = AwaitingHeads::default();
        let (answered, mut answered_signal) = AwaitingHead::enter(&heads);
        let (_, mut oldest_waiting) = AwaitingHead::enter(&heads);
        let (newest, mut newest_waiting) = AwaitingHead::enter(&heads);
        // The first one's head arrived: it is being answered.
        AwaitingHead::leave(&heads, answered);

        assert!(AwaitingHead::evict_oldest(&heads));
        assert_eq!(oldest_waiting.try_recv(), Ok(()));
        assert_eq!(newest_waiting.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        assert_eq!(answered_signal.try_recv(), Err(oneshot::error::TryRecvError::Closed));

        // A connection that already ended is skipped, and then none is left.
        drop(newest_waiting);
        assert!(!AwaitingHead::evict_oldest(&heads));
        AwaitingHead::leave(&heads, newest);
        assert!(AwaitingHead::lock(&heads).waiting.is_empty());
    }
}
