//! The page through its router, with a fake desk: what each answer holds and
//! what reached the desk.

use std::sync::Mutex;

use axum::http::Request as HttpRequest;
use mnvault_core::collection::{CollectionForm, Relation};
use mnvault_core::purpose::Purpose;
use mnvault_core::text::FreeText;
use tower::ServiceExt as _;

use super::*;

const OPEN: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const USED: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const EXPIRED: &str = "cccccccccccccccccccccccccccccccc";
const CANCELLED: &str = "dddddddddddddddddddddddddddddddd";
const UNKNOWN: &str = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";
const DOWN: &str = "ffffffffffffffffffffffffffffffff";
const REFUSING: &str = "gggggggggggggggggggggggggggggggg";
const ORIGIN: &str = "https://vault.example.jp";

/// A desk with fixed links; it records every submit's digits.
struct FakeDesk {
    submits: Mutex<Vec<Vec<String>>>,
}

fn collection() -> CollectionForm {
    CollectionForm {
        company: FreeText::parse("株式会社サンプル商事", "company").unwrap(),
        asked: vec![Relation::Employee, Relation::Spouse],
        purposes: vec![Purpose::WithholdingSlip, Purpose::DependentDeductionDeclaration],
        // 2026-11-30 09:00 UTC, 18:00 in Japan.
        expires_at: 1_796_029_200_000,
        reissue: false,
    }
}

#[async_trait::async_trait]
impl CollectionDesk for FakeDesk {
    async fn open(&self, link: &LinkSecret) -> Result<LinkOutcome, VaultError> {
        Ok(match link.expose() {
            OPEN | REFUSING => LinkOutcome::Open(collection()),
            EXPIRED => LinkOutcome::Unusable(UnusableLink::Expired),
            CANCELLED => LinkOutcome::Unusable(UnusableLink::Cancelled),
            DOWN => return Err(VaultError::Unavailable("database xyzzy is down".into())),
            _ => LinkOutcome::Unusable(UnusableLink::UnknownOrUsed),
        })
    }

    async fn form(&self, link: &LinkSecret) -> Result<LinkOutcome, VaultError> {
        self.open(link).await
    }

    async fn submit(&self, link: &LinkSecret, numbers: Vec<MyNumber>) -> Result<SubmitOutcome, VaultError> {
        self.submits.lock().unwrap().push(numbers.iter().map(|n| n.expose_digits().to_owned()).collect());
        if link.expose() == REFUSING {
            return Err(VaultError::InvalidArgument("internal detail plugh".into()));
        }
        Ok(SubmitOutcome::Submitted { numbers: numbers.len() })
    }
}

struct Harness {
    app: Router,
    desk: Arc<FakeDesk>,
}

fn harness_with(settings: PageSettings) -> Harness {
    let desk = Arc::new(FakeDesk { submits: Mutex::new(Vec::new()) });
    Harness { app: router(desk.clone(), settings), desk }
}

fn harness() -> Harness {
    harness_with(PageSettings { public_origin: ORIGIN.into(), ..PageSettings::default() })
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Harness {
    async fn send(&self, request: HttpRequest<Body>) -> Answer {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        Answer { status, headers, body: String::from_utf8(body.to_vec()).unwrap() }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(HttpRequest::get(path).body(Body::empty()).unwrap()).await
    }

    async fn get_from(&self, path: &str, client: &str) -> Answer {
        let mut request = HttpRequest::get(path).body(Body::empty()).unwrap();
        request.extensions_mut().insert(ClientAddr(client.parse().unwrap()));
        self.send(request).await
    }

    /// Opens the form and returns the CSRF value of its cookie, checking
    /// the hidden field holds the same.
    async fn csrf(&self) -> String {
        let page = self.get(&format!("/c/{OPEN}")).await;
        assert_eq!(page.status, StatusCode::OK);
        let cookie = page.headers[header::SET_COOKIE].to_str().unwrap();
        let value = cookie.strip_prefix("__Host-mnvault-csrf=").unwrap().split(';').next().unwrap().to_owned();
        assert!(page.body.contains(&format!(r#"name="csrf" value="{value}""#)), "{}", page.body);
        value
    }

    async fn post(&self, secret: &str, body: &str, csrf_cookie: Option<&str>, json: bool) -> Answer {
        let mut request = HttpRequest::post(format!("/c/{secret}"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ORIGIN, ORIGIN);
        if let Some(value) = csrf_cookie {
            request = request.header(header::COOKIE, format!("__Host-mnvault-csrf={value}"));
        }
        if json {
            request = request.header(header::ACCEPT, "application/json");
        }
        self.send(request.body(Body::from(body.to_owned())).unwrap()).await
    }

    fn submits(&self) -> Vec<Vec<String>> {
        self.desk.submits.lock().unwrap().clone()
    }
}

/// A valid number from eleven digits: the check digit computed here, by the
/// rule, not by the code under test.
fn valid_number(first_eleven: &str) -> String {
    const WEIGHTS: [u32; 11] = [6, 5, 4, 3, 2, 7, 6, 5, 4, 3, 2];
    let sum: u32 = first_eleven.chars().zip(WEIGHTS).map(|(digit, weight)| digit.to_digit(10).unwrap() * weight).sum();
    let check = match sum % 11 {
        0 | 1 => 0,
        r => 11 - r,
    };
    format!("{first_eleven}{check}")
}

/// The same number with its last digit wrong.
fn mistyped(first_eleven: &str) -> String {
    let valid = valid_number(first_eleven);
    let last = valid.chars().last().unwrap().to_digit(10).unwrap();
    format!("{first_eleven}{}", (last + 1) % 10)
}

/// Full-width digits in groups of four, joined by full-width hyphens.
fn full_width_with_hyphens(digits: &str) -> String {
    let wide: Vec<char> = digits.chars().map(|d| char::from_u32(0xFF10 + d.to_digit(10).unwrap()).unwrap()).collect();
    wide.chunks(4).map(|group| group.iter().collect::<String>()).collect::<Vec<_>>().join("－")
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { char::from(b).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let page = harness();
    for path in [
        format!("/c/{OPEN}"),
        format!("/c/{UNKNOWN}"),
        "/c/not-a-secret".into(),
        "/done".into(),
        "/static/collect.js".into(),
        "/static/collect.css".into(),
        "/nowhere".into(),
    ] {
        let answer = page.get(&path).await;
        let header = |name: &str| answer.headers.get(name).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            header("content-security-policy").as_deref(),
            Some(
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                 form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
            ),
            "{path}"
        );
        assert_eq!(header("cache-control").as_deref(), Some("no-store"), "{path}");
        assert_eq!(header("pragma").as_deref(), Some("no-cache"), "{path}");
        assert_eq!(header("referrer-policy").as_deref(), Some("no-referrer"), "{path}");
        assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"), "{path}");
        assert_eq!(header("x-frame-options").as_deref(), Some("DENY"), "{path}");
        assert_eq!(header("strict-transport-security").as_deref(), Some("max-age=31536000"), "{path}");
        assert!(header("permissions-policy").unwrap().contains("camera=()"), "{path}");
    }
    let form = page.get(&format!("/c/{OPEN}")).await;
    assert!(form.body.contains(r#"<meta name="referrer" content="no-referrer">"#));
    assert!(form.body.contains(r#"autocomplete="off""#));
    assert!(!form.body.contains("<script>"), "no inline script");
    let script = page.get("/static/collect.js").await;
    assert_eq!(script.headers[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
    assert!(script.body.contains("[6, 5, 4, 3, 2, 7, 6, 5, 4, 3, 2]"));
}

#[tokio::test]
async fn the_form_names_the_company_purposes_relations_and_expiry_in_japanese() {
    let page = harness();
    let form = page.get(&format!("/c/{OPEN}")).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.body.contains(r#"<html lang="ja">"#));
    assert!(form.body.contains("株式会社サンプル商事"));
    assert!(form.body.contains(Purpose::WithholdingSlip.name_ja()));
    assert!(form.body.contains("2026年11月30日 18:00(日本時間)"), "{}", form.body);
    assert!(form.body.contains(r#"<label for="n0">ご本人のマイナンバー(12桁)</label>"#), "{}", form.body);
    assert!(form.body.contains(r#"<label for="n1">配偶者のマイナンバー(12桁)</label>"#));
    assert!(form.body.contains(
        r#"<input id="n1" name="n1" type="text" inputmode="numeric" autocomplete="off" autocorrect="off" autocapitalize="off" spellcheck="false" maxlength="40" aria-describedby="n1-hint n1-msg" aria-invalid="false">"#
    ));
    assert!(form.body.contains(r#"<p id="n1-msg" class="msg" aria-live="polite">"#));
    assert!(!form.body.contains(r#"id="n2""#));
    assert!(form.body.contains(r#"href="?lang=en""#));
    let cookie = form.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.ends_with("; Secure; HttpOnly; SameSite=Strict; Path=/"), "{cookie}");
    // A second look keeps the cookie's value, so two tabs both work.
    let value = page.csrf().await;
    let again = page
        .send(
            HttpRequest::get(format!("/c/{OPEN}"))
                .header(header::COOKIE, format!("__Host-mnvault-csrf={value}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert!(again.body.contains(&format!(r#"value="{value}""#)));
}

#[tokio::test]
async fn the_english_switch_renders_english() {
    let page = harness();
    let form = page.get(&format!("/c/{OPEN}?lang=en")).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.body.contains(r#"<html lang="en">"#));
    assert!(form.body.contains("You: My Number (12 digits)"));
    assert!(form.body.contains("Spouse: My Number (12 digits)"));
    assert!(form.body.contains("Employment income withholding slip"));
    assert!(form.body.contains("2026-11-30 18:00 (Japan time, JST)"));
    assert!(form.body.contains(">Submit</button>"));
    assert!(form.body.contains(r#"href="?lang=ja""#));
    assert!(!form.body.contains("利用目的"));
    let done = page.get("/done?lang=en").await;
    assert!(done.body.contains("You can close this page"));
    let done = page.get("/done").await;
    assert!(done.body.contains("このページは閉じて構いません"));
}

#[tokio::test]
async fn a_post_without_the_csrf_pair_or_from_another_origin_is_refused_before_the_desk() {
    let page = harness();
    let value = page.csrf().await;
    let numbers = format!("n0={}&n1={}", valid_number("12345678901"), valid_number("23456789012"));
    let missing_cookie = page.post(OPEN, &format!("csrf={value}&{numbers}"), None, false).await;
    assert_eq!(missing_cookie.status, StatusCode::FORBIDDEN);
    assert!(missing_cookie.body.contains("再読み込み"));
    let missing_field = page.post(OPEN, &numbers, Some(&value), false).await;
    assert_eq!(missing_field.status, StatusCode::FORBIDDEN);
    let other = csrf::draw();
    let mismatched = page.post(OPEN, &format!("csrf={other}&{numbers}"), Some(&value), true).await;
    assert_eq!(mismatched.status, StatusCode::FORBIDDEN);
    assert!(mismatched.body.starts_with('{'), "JSON for fetch");
    let foreign = page
        .send(
            HttpRequest::post(format!("/c/{OPEN}"))
                .header(header::ORIGIN, "https://evil.example")
                .header(header::COOKIE, format!("__Host-mnvault-csrf={value}"))
                .body(Body::from(format!("csrf={value}&{numbers}")))
                .unwrap(),
        )
        .await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    assert!(page.submits().is_empty());
    // The same request with the pair and the right origin goes through.
    let good = page.post(OPEN, &format!("csrf={value}&{numbers}"), Some(&value), false).await;
    assert_eq!(good.status, StatusCode::SEE_OTHER);
    assert_eq!(page.submits().len(), 1);
}

#[tokio::test]
async fn a_wrong_check_digit_is_shown_inline_without_the_digits_and_never_submitted() {
    let page = harness();
    let value = page.csrf().await;
    let (good, bad) = (valid_number("98765432109"), mistyped("12345678901"));
    let answer = page.post(OPEN, &format!("csrf={value}&n0={good}&n1={bad}"), Some(&value), false).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(answer.body.contains("最後の桁が合いません"), "{}", answer.body);
    assert!(answer.body.contains(r#"id="n1" name="n1""#));
    assert!(answer.body.contains(r#"aria-describedby="n1-hint n1-msg" aria-invalid="true""#));
    assert!(answer.body.contains(r#"aria-describedby="n0-hint n0-msg" aria-invalid="false""#));
    assert!(answer.body.contains("もう一度入力してください"));
    for typed in [&good, &bad, &good[..11].to_owned(), &bad[..11].to_owned()] {
        assert!(!answer.body.contains(typed.as_str()), "the page repeats a typed number");
    }
    assert!(page.submits().is_empty());

    // Other refusals name the field and why, never the text.
    let answer = page.post(OPEN, &format!("csrf={value}&n0=12345&n1=1234x678901"), Some(&value), true).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(json["fields"][0]["field"], "n0");
    assert!(json["fields"][0]["message"].as_str().unwrap().contains("入力は5桁"));
    assert_eq!(json["fields"][1]["field"], "n1");
    assert!(json["fields"][1]["message"].as_str().unwrap().contains("5文字目"));
    assert!(!answer.body.contains("12345") && !answer.body.contains('x'));
    assert!(page.submits().is_empty());
}

#[tokio::test]
async fn the_json_path_returns_the_field_errors_and_success_says_where_to_go() {
    let page = harness();
    let value = page.csrf().await;
    let bad = mistyped("11122233344");
    let answer =
        page.post(OPEN, &format!("csrf={value}&n0={}&n1={bad}", valid_number("55566677788")), Some(&value), true).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.headers[header::CONTENT_TYPE], "application/json");
    let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(json["fields"].as_array().unwrap().len(), 1);
    assert_eq!(json["fields"][0]["field"], "n1");
    assert!(!answer.body.contains(&bad[..11]));
    let answer = page
        .post(
            &format!("{OPEN}?lang=en"),
            &format!("csrf={value}&n0={}&n1={}", valid_number("55566677788"), valid_number("11122233344")),
            Some(&value),
            true,
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(json, serde_json::json!({ "ok": true, "next": "/done?lang=en" }));
}

#[tokio::test]
async fn full_width_digits_with_hyphens_reach_the_desk_as_the_number() {
    let page = harness();
    let value = page.csrf().await;
    let (employee, spouse) = (valid_number("10293847561"), valid_number("56473829100"));
    let typed = full_width_with_hyphens(&employee);
    assert_eq!(typed.chars().filter(|c| *c == '－').count(), 2);
    let spouse_typed = format!("{} {} {}", &spouse[..4], &spouse[4..8], &spouse[8..]);
    let body = format!("csrf={value}&n0={}&n1={}", encode(&typed), encode(&spouse_typed));
    let answer = page.post(OPEN, &body, Some(&value), false).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    assert_eq!(answer.headers[header::LOCATION], "/done?lang=ja");
    assert_eq!(page.submits(), vec![vec![employee, spouse]]);
}

#[tokio::test]
async fn unknown_used_and_malformed_links_answer_byte_for_byte_the_same() {
    let page = harness();
    let unknown = page.get(&format!("/c/{UNKNOWN}")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.body.contains("新しいリンクを依頼してください"));
    assert!(unknown.headers.get(header::SET_COOKIE).is_none());
    for path in [
        format!("/c/{USED}"),
        "/c/tooshort".into(),
        format!("/c/{}", OPEN.to_uppercase()),
        format!("/c/{OPEN}a"),
        "/c/%E3%81%82".into(),
        "/c/".into(),
        format!("/c/{OPEN}/x"),
    ] {
        let answer = page.get(&path).await;
        assert_eq!(answer.status, unknown.status, "{path}");
        assert_eq!(answer.body, unknown.body, "{path}");
        assert_eq!(answer.headers.get(header::SET_COOKIE), None, "{path}");
    }
    // And on a submit.
    let value = page.csrf().await;
    let unknown = page.post(UNKNOWN, &format!("csrf={value}&n0=1"), Some(&value), false).await;
    let malformed = page.post("not-a-link", &format!("csrf={value}&n0=1"), Some(&value), false).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!((unknown.status, unknown.body), (malformed.status, malformed.body));
    assert!(page.submits().is_empty());
}

#[tokio::test]
async fn expired_and_cancelled_links_say_so_and_what_to_do() {
    let page = harness();
    let expired = page.get(&format!("/c/{EXPIRED}")).await;
    assert_eq!(expired.status, StatusCode::GONE);
    assert!(expired.body.contains("有効期限が切れています"));
    assert!(expired.body.contains("新しいリンクを依頼してください"));
    let cancelled = page.get(&format!("/c/{CANCELLED}?lang=en")).await;
    assert_eq!(cancelled.status, StatusCode::GONE);
    assert!(cancelled.body.contains("Your employer cancelled this link"));
    assert!(cancelled.body.contains("ask your employer for a new link"));
}

#[tokio::test]
async fn requests_past_the_limits_get_429() {
    let page = harness_with(PageSettings {
        public_origin: ORIGIN.into(),
        address_per_minute: 5,
        link_per_minute: 8,
        link_submits_per_minute: 2,
        ..PageSettings::default()
    });
    for _ in 0..5 {
        assert_eq!(page.get_from(&format!("/c/{UNKNOWN}"), "192.0.2.1").await.status, StatusCode::NOT_FOUND);
    }
    let refused = page.get_from(&format!("/c/{UNKNOWN}"), "192.0.2.1").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers[header::RETRY_AFTER], "60");
    assert!(refused.body.contains("1分ほど待って"));
    // Another address has its own count, but the link has had 5 of its 8.
    for _ in 0..3 {
        assert_eq!(page.get_from(&format!("/c/{UNKNOWN}"), "192.0.2.2").await.status, StatusCode::NOT_FOUND);
    }
    assert_eq!(page.get_from(&format!("/c/{UNKNOWN}"), "192.0.2.3").await.status, StatusCode::TOO_MANY_REQUESTS);
    // Submits per link are stricter.
    let value = page.csrf().await;
    for _ in 0..2 {
        let answer = page.post(USED, &format!("csrf={value}"), Some(&value), false).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
    }
    let answer = page.post(USED, &format!("csrf={value}"), Some(&value), true).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_wrong_number_of_fields_is_a_bad_request() {
    let page = harness();
    let value = page.csrf().await;
    let one = valid_number("12121212121");
    for body in [
        format!("csrf={value}&n0={one}"),
        format!("csrf={value}&n0={one}&n1={one}&n2={one}"),
        format!("csrf={value}&n0={one}&n2={one}"),
        format!("csrf={value}&n0={one}&name=x"),
    ] {
        let answer = page.post(OPEN, &body, Some(&value), false).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(!answer.body.contains(&one));
    }
    assert!(page.submits().is_empty());
}

#[tokio::test]
async fn a_vault_refusal_shows_inline_and_an_outage_says_try_later_without_the_cause() {
    let page = harness();
    let value = page.csrf().await;
    let (a, b) = (valid_number("31415926535"), valid_number("27182818284"));
    let answer = page.post(REFUSING, &format!("csrf={value}&n0={a}&n1={b}"), Some(&value), false).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(answer.body.contains("番号を受け付けられませんでした"));
    assert!(answer.body.contains(r#"id="n0""#), "the form again");
    assert!(!answer.body.contains("plugh") && !answer.body.contains(&a) && !answer.body.contains(&b));

    let down = page.get(&format!("/c/{DOWN}")).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(down.body.contains("しばらくしてから"));
    assert!(!down.body.contains("xyzzy"));
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused() {
    let page = harness_with(PageSettings { public_origin: ORIGIN.into(), max_body_bytes: 64, ..Default::default() });
    let value = page.csrf().await;
    let answer = page.post(OPEN, &format!("csrf={value}&n0={}", "1".repeat(100)), Some(&value), false).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(page.submits().is_empty());
}

/// Server-only TLS with a fresh self-signed certificate.
fn self_signed_tls() -> Arc<ServerConfig> {
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    Arc::new(ServerConfig::builder().with_no_client_auth().with_single_cert(vec![cert], key).unwrap())
}

#[tokio::test]
async fn a_silent_connection_is_dropped_after_the_handshake_timeout_and_shutdown_stops_the_server() {
    use tokio::io::AsyncReadExt as _;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let desk = Arc::new(FakeDesk { submits: Mutex::new(Vec::new()) });
    let settings = PageSettings {
        max_connections: 1,
        tls_handshake_timeout: Duration::from_millis(300),
        ..PageSettings::default()
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(listener, self_signed_tls(), desk, settings, shutdown.clone()));

    // The only slot: a connection that never starts TLS loses it at the
    // handshake timeout (the 5 s bound only keeps a failure from hanging).
    let mut silent = TcpStream::connect(address).await.unwrap();
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buffer)).await.expect("dropped in time");
    assert!(matches!(read, Ok(0) | Err(_)), "closed without an answer");
    // The slot is free again: the next one is accepted (and dropped in turn).
    let mut next = TcpStream::connect(address).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), next.read(&mut buffer)).await.expect("served");
    assert!(matches!(read, Ok(0) | Err(_)));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("the server stops").unwrap();
    assert!(TcpStream::connect(address).await.is_err(), "no longer listening");
}

#[test]
fn one_address_holds_at_most_its_share_of_connections() {
    let table = PerAddress::default();
    let address: IpAddr = "192.0.2.1".parse().unwrap();
    let held: Vec<Held> = (0..3).map(|_| table.hold(address, 3).unwrap()).collect();
    assert!(table.hold(address, 3).is_none(), "a fourth connection of the same address is refused");
    assert!(table.hold("192.0.2.2".parse().unwrap(), 3).is_some(), "another address still gets in");
    drop(held);
    assert!(table.hold(address, 3).is_some(), "closed connections give their count back");
    assert!(table.0.lock().unwrap().len() <= 1, "addresses with no connection leave the table");
}
