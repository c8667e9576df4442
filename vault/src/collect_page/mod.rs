//! The collection page (issue 12): the HTTPS page where an employee types
//! their own My Number, and their dependants', from a one-time link. Payroll
//! never sees the numbers; it gets tokens over gRPC.
//!
//! - `GET /c/{secret}` shows the form, `POST /c/{secret}` submits it (a plain
//!   form POST, or `fetch` from `/static/collect.js` asking for JSON, so a
//!   refusal shows inline and the form is never lost); `GET /done` says the
//!   numbers arrived. Japanese by default, English with `?lang=en`.
//! - A link that does not parse answers exactly like an unknown or used one,
//!   so a prober learns nothing; an expired and a cancelled link each say so
//!   and what to do.
//! - A typed number is never written back: not into HTML, not into JSON, not
//!   into a log. A refusal names the field to type again.
//! - Every answer carries a strict CSP (no inline script, nothing from
//!   elsewhere), `no-store`, `no-referrer` (the link secret is in the path)
//!   and frame denial; a POST needs the CSRF cookie and the same value in the
//!   form ([`csrf`]), and a matching `Origin` when one is sent.
//! - Work is bounded: requests per client address and per link, and submits
//!   per link ([`limits`]); a body limit; connections at once, the TLS
//!   handshake and the request head are bounded in [`serve`].
//! - Nothing of a request (path, query, body, headers) is logged: the path
//!   carries the link secret and the body the numbers. Log lines are fixed
//!   words.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use mnvault_core::collection::{LinkOutcome, LinkSecret, SubmitOutcome, UnusableLink};
use mnvault_core::number::MyNumber;
use mnvault_core::VaultError;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use zeroize::Zeroizing;

pub mod csrf;
mod form;
pub mod limits;
mod pages;

use form::{FieldError, Submitted};
use limits::RateLimits;
use pages::Lang;

/// What the page needs from the vault: the core's collection steps, audited.
#[async_trait::async_trait]
pub trait CollectionDesk: Send + Sync + 'static {
    /// Looks a link up, recording that it was opened.
    async fn open(&self, link: &LinkSecret) -> Result<LinkOutcome, VaultError>;
    /// Looks a link up to read a submitted form by, recording nothing (the
    /// submit records itself).
    async fn form(&self, link: &LinkSecret) -> Result<LinkOutcome, VaultError>;
    /// Stores the numbers typed (one per relation asked, in order) in one transaction with its audit entry.
    async fn submit(&self, link: &LinkSecret, numbers: Vec<MyNumber>) -> Result<SubmitOutcome, VaultError>;
}

/// How the page is served and what it lets one client or one link do.
#[derive(Debug, Clone)]
pub struct PageSettings {
    /// The origin people reach the page at, e.g. `https://vault.example.jp`
    /// (no path, no trailing slash): a POST whose `Origin` header differs is
    /// refused.
    pub public_origin: String,
    /// Requests (GET and POST) one client address may make per minute.
    pub address_per_minute: u32,
    /// Requests (GET and POST) one link may take per minute, from anywhere.
    pub link_per_minute: u32,
    /// Submits one link may take per minute: each runs the vault's check
    /// and, on success, a transaction.
    pub link_submits_per_minute: u32,
    /// Addresses, and links, each rate map tracks at most: memory stays
    /// bounded whatever a flood of addresses or guessed links does.
    pub max_tracked: usize,
    /// Connections served at once, TLS handshakes included.
    pub max_connections: usize,
    /// Connections one client address may hold at once: one address alone
    /// cannot take every slot.
    pub max_connections_per_address: usize,
    /// Bytes a request body may take (sixteen numbers need well under 1 KiB).
    pub max_body_bytes: usize,
    /// How long a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
    /// How long a request's head may take to arrive.
    pub header_read_timeout: Duration,
    /// How long one connection may stay, whatever it does.
    pub connection_timeout: Duration,
    /// How long connections may finish their requests once `shutdown` is
    /// cancelled, before they are dropped.
    pub shutdown_grace: Duration,
}

impl Default for PageSettings {
    fn default() -> Self {
        Self {
            public_origin: "https://127.0.0.1:8443".into(),
            address_per_minute: 60,
            link_per_minute: 30,
            link_submits_per_minute: 10,
            max_tracked: 10_000,
            max_connections: 256,
            max_connections_per_address: 8,
            max_body_bytes: 16 * 1024,
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            connection_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// The client's address, as the TCP peer said: no `X-Forwarded-For`, which
/// anyone may write. [`serve`] puts it into every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The page's state, shared by every request.
struct Page {
    desk: Arc<dyn CollectionDesk>,
    settings: PageSettings,
    limits: RateLimits,
}

/// The router alone (for tests without TLS).
pub fn router(desk: Arc<dyn CollectionDesk>, settings: PageSettings) -> Router {
    let page = Arc::new(Page { limits: RateLimits::new(&settings), desk, settings });
    Router::new()
        .route("/c/{secret}", get(show).post(submit))
        .route("/done", get(done))
        .route("/static/collect.js", get(script))
        .route("/static/collect.css", get(style))
        .fallback(not_found)
        .with_state(page)
        .layer(axum::middleware::map_response(security_headers))
}

/// Serves the page on `listener` with server-only TLS until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    desk: Arc<dyn CollectionDesk>,
    settings: PageSettings,
    shutdown: CancellationToken,
) {
    let app = router(desk, settings.clone());
    let acceptor = TlsAcceptor::from(with_alpn(tls));
    let slots = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    let per_address = PerAddress::default();
    let settings = Arc::new(settings);
    // Owned here, so what outlives the grace period is dropped with it.
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => {
                    tracing::warn!("collection page: could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(held) = per_address.hold(peer.ip(), settings.max_connections_per_address) else {
            tracing::debug!("collection page: a client address holds its most connections; one more dropped");
            continue;
        };
        let connection = Connection {
            acceptor: acceptor.clone(),
            app: app.clone(),
            settings: settings.clone(),
            shutdown: shutdown.clone(),
            _permit: permit,
            _held: held,
        };
        connections.spawn(connection.run(tcp, peer));
    }
    drop(listener);
    if tokio::time::timeout(settings.shutdown_grace, async { while connections.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::info!("collection page: connections still open after the grace period were dropped");
    }
}

/// Offers HTTP/2 and HTTP/1.1 by ALPN, unless the caller's setup already names protocols.
fn with_alpn(tls: Arc<ServerConfig>) -> Arc<ServerConfig> {
    if !tls.alpn_protocols.is_empty() {
        return tls;
    }
    let mut config = (*tls).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One accepted connection and what it needs.
struct Connection {
    acceptor: TlsAcceptor,
    app: Router,
    settings: Arc<PageSettings>,
    shutdown: CancellationToken,
    /// Its slot among `max_connections`, given back when it ends.
    _permit: OwnedSemaphorePermit,
    /// Its count among its address's, given back when it ends.
    _held: Held,
}

/// Open connections per client address; at most `max_connections` entries,
/// as each is a live connection's.
#[derive(Clone, Default)]
struct PerAddress(Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>);

/// One connection's count in [`PerAddress`].
struct Held {
    table: PerAddress,
    address: IpAddr,
}

impl PerAddress {
    /// Counts one more connection of `address`, unless it holds `most` already.
    fn hold(&self, address: IpAddr, most: usize) -> Option<Held> {
        let mut table = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = table.entry(address).or_insert(0);
        if *count >= most.max(1) {
            return None;
        }
        *count += 1;
        Some(Held { table: self.clone(), address })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut table = self.table.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = table.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                table.remove(&self.address);
            }
        }
    }
}

impl Connection {
    async fn run(self, tcp: TcpStream, peer: SocketAddr) {
        let tls = match tokio::time::timeout(self.settings.tls_handshake_timeout, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(_)) => {
                tracing::debug!("collection page: TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("collection page: TLS handshake timed out");
                return;
            }
        };
        let client = ClientAddr(peer.ip());
        let app = self.app.map_request(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(client);
            request
        });
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.settings.header_read_timeout)
            .max_buf_size(16 * 1024);
        http.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(16)
            .max_header_list_size(16 * 1024)
            .keep_alive_interval(Some(Duration::from_secs(20)))
            .keep_alive_timeout(Duration::from_secs(10));
        let mut connection = pin!(http.serve_connection(TokioIo::new(tls), TowerToHyperService::new(app)));
        let mut deadline = pin!(tokio::time::sleep(self.settings.connection_timeout));
        let mut stopping = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if result.is_err() {
                        tracing::debug!("collection page: connection ended with an error");
                    }
                    break;
                }
                _ = self.shutdown.cancelled(), if !stopping => {
                    connection.as_mut().graceful_shutdown();
                    stopping = true;
                }
                _ = &mut deadline => {
                    tracing::debug!("collection page: connection dropped, it outlived its time");
                    break;
                }
            }
        }
    }
}

/// The headers every answer carries, whatever made it.
async fn security_headers(mut response: Response) -> Response {
    const HEADERS: [(&str, &str); 9] = [
        (
            "content-security-policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("cache-control", "no-store"),
        ("pragma", "no-cache"),
        ("referrer-policy", "no-referrer"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("strict-transport-security", "max-age=31536000"),
        (
            "permissions-policy",
            "camera=(), microphone=(), geolocation=(), payment=(), usb=(), serial=(), bluetooth=(), \
             display-capture=(), clipboard-read=(), interest-cohort=()",
        ),
        ("cross-origin-opener-policy", "same-origin"),
    ];
    let headers = response.headers_mut();
    for (name, value) in HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// What a request is about, read once: never logged.
struct Asked {
    lang: Lang,
    client: IpAddr,
    /// The path's secret as sent: not parsed yet (a malformed one answers
    /// like an unknown one, after the same limits).
    secret: Zeroizing<String>,
    wants_json: bool,
}

impl Asked {
    fn read(request: &Request) -> Self {
        let client = request
            .extensions()
            .get::<ClientAddr>()
            .map(|client| client.0)
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let secret = Zeroizing::new(request.uri().path().strip_prefix("/c/").unwrap_or_default().to_owned());
        let wants_json = request
            .headers()
            .get_all(header::ACCEPT)
            .iter()
            .any(|accept| accept.to_str().is_ok_and(|accept| accept.contains("application/json")));
        Self { lang: Lang::of_query(request.uri().query()), client, secret, wants_json }
    }
}

/// An answer as HTML, or as JSON for `collect.js`.
fn answer(asked: &Asked, status: StatusCode, page: maud::Markup, json: serde_json::Value) -> Response {
    if asked.wants_json {
        (status, axum::Json(json)).into_response()
    } else {
        html(status, page)
    }
}

fn html(status: StatusCode, page: maud::Markup) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], page.into_string()).into_response()
}

/// Refusals that do not depend on the link's state: same shape for both.
fn refusal(asked: &Asked, status: StatusCode, kind: pages::Refusal) -> Response {
    let json = serde_json::json!({ "ok": false, "message": kind.message(asked.lang) });
    let mut response = answer(asked, status, pages::refusal(asked.lang, kind), json);
    if status == StatusCode::TOO_MANY_REQUESTS {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    }
    response
}

/// The page of a link that does not work. Unknown, used and malformed links
/// get exactly this, byte for byte.
fn unusable(asked: &Asked, why: UnusableLink) -> Response {
    let status = match why {
        UnusableLink::UnknownOrUsed => StatusCode::NOT_FOUND,
        UnusableLink::Expired | UnusableLink::Cancelled => StatusCode::GONE,
    };
    let json = serde_json::json!({ "ok": false, "message": pages::unusable_message(asked.lang, why) });
    answer(asked, status, pages::unusable(asked.lang, why), json)
}

/// The vault could not answer: say "try again later", never why.
fn unavailable(asked: &Asked) -> Response {
    tracing::warn!("collection page: the vault could not answer; the visitor was asked to try again later");
    refusal(asked, StatusCode::SERVICE_UNAVAILABLE, pages::Refusal::Unavailable)
}

async fn show(State(page): State<Arc<Page>>, request: Request) -> Response {
    let asked = Asked::read(&request);
    if !page.limits.allow_request(asked.client, &asked.secret, Instant::now()) {
        return refusal(&asked, StatusCode::TOO_MANY_REQUESTS, pages::Refusal::TooMany);
    }
    let Some(link) = LinkSecret::parse(&asked.secret) else {
        return unusable(&asked, UnusableLink::UnknownOrUsed);
    };
    match page.desk.open(&link).await {
        Ok(LinkOutcome::Open(form)) => {
            let token = csrf::from_cookies(request.headers()).unwrap_or_else(csrf::draw);
            let mut response = html(StatusCode::OK, pages::form(asked.lang, &form, &token, &[], None));
            response.headers_mut().insert(header::SET_COOKIE, csrf::cookie(&token));
            response
        }
        Ok(LinkOutcome::Unusable(why)) => unusable(&asked, why),
        Err(_) => unavailable(&asked),
    }
}

async fn submit(State(page): State<Arc<Page>>, request: Request) -> Response {
    let asked = Asked::read(&request);
    let now = Instant::now();
    if !page.limits.allow_request(asked.client, &asked.secret, now) || !page.limits.allow_submit(&asked.secret, now) {
        return refusal(&asked, StatusCode::TOO_MANY_REQUESTS, pages::Refusal::TooMany);
    }
    let (parts, body) = request.into_parts();
    let body = match read_body(body, page.settings.max_body_bytes).await {
        Ok(body) => body,
        Err(status) => return refusal(&asked, status, pages::Refusal::BadForm),
    };
    let Some(fields) = form::Fields::parse(&body) else {
        return refusal(&asked, StatusCode::BAD_REQUEST, pages::Refusal::BadForm);
    };
    drop(body);
    if !csrf::check(&parts.headers, fields.csrf(), &page.settings.public_origin) {
        return refusal(&asked, StatusCode::FORBIDDEN, pages::Refusal::Csrf);
    }
    let Some(link) = LinkSecret::parse(&asked.secret) else {
        return unusable(&asked, UnusableLink::UnknownOrUsed);
    };
    // The relations asked decide how many fields the form must hold, and a
    // refused number re-renders the form: a submit looks the link up first,
    // without an entry of its own (a form refused here leaves none: its
    // page was recorded when it was opened).
    let collection = match page.desk.form(&link).await {
        Ok(LinkOutcome::Open(collection)) => collection,
        Ok(LinkOutcome::Unusable(why)) => return unusable(&asked, why),
        Err(_) => return unavailable(&asked),
    };
    let numbers = match fields.numbers(collection.asked.len()) {
        Submitted::WrongCount => return refusal(&asked, StatusCode::BAD_REQUEST, pages::Refusal::BadForm),
        Submitted::Refused(errors) => return field_errors(&asked, &parts.headers, &collection, &errors, None),
        Submitted::Numbers(numbers) => numbers,
    };
    match page.desk.submit(&link, numbers).await {
        Ok(SubmitOutcome::Submitted { .. }) => {
            let next = format!("/done?lang={}", asked.lang.code());
            if asked.wants_json {
                (StatusCode::OK, axum::Json(serde_json::json!({ "ok": true, "next": next }))).into_response()
            } else {
                let location = HeaderValue::from_str(&next).expect("a fixed path");
                (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
            }
        }
        Ok(SubmitOutcome::Unusable(why)) => unusable(&asked, why),
        Err(VaultError::InvalidArgument(_)) => {
            field_errors(&asked, &parts.headers, &collection, &[], Some(pages::FormMessage::Refused))
        }
        Err(_) => unavailable(&asked),
    }
}

/// The form again with a message per field refused (HTML), or the messages
/// alone (JSON). No typed text goes back.
fn field_errors(
    asked: &Asked,
    headers: &HeaderMap,
    collection: &mnvault_core::collection::CollectionForm,
    errors: &[FieldError],
    message: Option<pages::FormMessage>,
) -> Response {
    let lang = asked.lang;
    let message = message.unwrap_or(pages::FormMessage::ReEnter);
    let json = serde_json::json!({
        "ok": false,
        "message": message.text(lang),
        "fields": errors
            .iter()
            .map(|error| serde_json::json!({ "field": form::field_name(error.index), "message": error.message(lang) }))
            .collect::<Vec<_>>(),
    });
    if asked.wants_json {
        return (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(json)).into_response();
    }
    let token = csrf::from_cookies(headers).unwrap_or_else(csrf::draw);
    let mut response =
        html(StatusCode::UNPROCESSABLE_ENTITY, pages::form(lang, collection, &token, errors, Some(message)));
    response.headers_mut().insert(header::SET_COOKIE, csrf::cookie(&token));
    response
}

/// The body, up to `limit` bytes, in a buffer wiped when dropped.
async fn read_body(body: Body, limit: usize) -> Result<Zeroizing<Vec<u8>>, StatusCode> {
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(Zeroizing::new(Vec::from(bytes))),
        Err(_) => Err(StatusCode::PAYLOAD_TOO_LARGE),
    }
}

async fn done(request: Request) -> Response {
    html(StatusCode::OK, pages::done(Lang::of_query(request.uri().query())))
}

/// Any other path. One under `/c/` (an empty secret, a slash in it) is a
/// link that does not parse: it answers, after the same limits, like an
/// unknown one.
async fn not_found(State(page): State<Arc<Page>>, request: Request) -> Response {
    let asked = Asked::read(&request);
    if request.uri().path().starts_with("/c/") {
        if !page.limits.allow_request(asked.client, &asked.secret, Instant::now()) {
            return refusal(&asked, StatusCode::TOO_MANY_REQUESTS, pages::Refusal::TooMany);
        }
        return unusable(&asked, UnusableLink::UnknownOrUsed);
    }
    html(StatusCode::NOT_FOUND, pages::refusal(asked.lang, pages::Refusal::NoSuchPage))
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("static/collect.js"))
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("static/collect.css"))
}

fn asset(content_type: &'static str, text: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], Bytes::from_static(text.as_bytes())).into_response()
}

#[cfg(test)]
mod tests;
