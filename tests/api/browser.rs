//! The collection page in a real browser: headless Debian Chromium driven
//! over WebDriver (`chromedriver`, through `fantoccini`), the way a person
//! uses it: by label, with the keyboard, reading what the page says.
//!
//! [`Browser::start`] skips (says so on standard error and returns `None`)
//! when Chromium or chromedriver is missing, unless `CI` is set: then it
//! fails. `.ci/run` installs both. With `MNVAULT_SCREENSHOTS` set, the test
//! writes `docs/img/collect-form.png` and `docs/img/collect-done.png`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fantoccini::actions::{InputSource as _, KeyAction, KeyActions};
use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use mnvault::collect_page::{self, CollectionDesk, PageSettings};
use mnvault_client::collection::NewCollection;
use mnvault_core::collection::{CollectionForm, LinkOutcome, LinkSecret, Relation, SubmitOutcome, UnusableLink};
use mnvault_core::number::MyNumber;
use mnvault_core::purpose::Purpose;
use mnvault_core::text::FreeText;
use mnvault_core::VaultError;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;

use crate::helpers::valid_numbers;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the browser may take to show what a step waits for: generous,
/// as five browsers and the rest of the suite share two cores in CI.
const WAIT: Duration = Duration::from_secs(30);

/// A headless Chromium session, with the chromedriver it runs under; the
/// driver is killed when this is dropped.
pub struct Browser {
    client: Client,
    driver: Child,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a session of
    /// headless Chromium (a phone-sized window, self-signed certificates
    /// accepted). `None`, with a notice, when either is not installed and
    /// `CI` is not set.
    pub async fn start() -> Option<Self> {
        let missing: Vec<&str> =
            [CHROMIUM, CHROMEDRIVER].into_iter().filter(|path| !Path::new(path).exists()).collect();
        if !missing.is_empty() {
            if std::env::var_os("CI").is_some() {
                panic!("{} missing: `apt-get install chromium chromium-driver` (CI installs them)", missing.join(", "));
            }
            eprintln!(
                "browser test skipped: {} missing (apt-get install chromium chromium-driver)",
                missing.join(", ")
            );
            return None;
        }
        let port = {
            let probe = StdListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free port");
            probe.local_addr().unwrap().port()
        };
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        // Held from here, so a failure below still kills the driver.
        let mut guard = DriverGuard(Some(driver));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("acceptInsecureCerts".into(), serde_json::json!(true));
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors", "--window-size=412,915"],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut attempt = 0;
        let client = loop {
            match ClientBuilder::new(HttpConnector::new()).capabilities(capabilities.clone()).connect(&url).await {
                Ok(client) => break client,
                Err(error) => {
                    attempt += 1;
                    assert!(attempt < 100, "chromedriver did not answer: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Some(Self { client, driver: guard.0.take().expect("the driver") })
    }

    /// The WebDriver session, for what the helpers do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Opens `url` and waits for it to load.
    pub async fn open(&self, url: &str) {
        self.client.goto(url).await.expect("the page opens");
    }

    /// The input whose `<label>` text contains `label`, through the label's `for`.
    pub async fn field(&self, label: &str) -> Element {
        assert!(!label.contains('"'), "a label without quotes");
        let label = self
            .client
            .find(Locator::XPath(&format!("//label[contains(normalize-space(.), \"{label}\")]")))
            .await
            .unwrap_or_else(|_| panic!("a label reading {label}"));
        let id = label.attr("for").await.unwrap().expect("the label names its input with `for`");
        self.client.find(Locator::Id(&id)).await.expect("the input the label names")
    }

    /// Clicks into the field labelled `label`, clears it and types `text`.
    pub async fn type_into(&self, label: &str, text: &str) {
        let field = self.field(label).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// The inline message of the field labelled `label` (its
    /// `aria-describedby` element ending in `-msg`), once it is not empty.
    pub async fn message(&self, label: &str) -> String {
        let field = self.field(label).await;
        let described = field.attr("aria-describedby").await.unwrap().expect("the field names its messages");
        let id = described.split_whitespace().find(|id| id.ends_with("-msg")).expect("a message element").to_owned();
        let element = self.client.find(Locator::Id(&id)).await.expect("the message element");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = element.text().await.unwrap();
            if !text.trim().is_empty() || tokio::time::Instant::now() > deadline {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Presses one key on whatever has the focus.
    pub async fn press(&self, key: Key) {
        let key = char::from(key);
        let keys =
            KeyActions::new("keyboard".into()).then(KeyAction::Down { value: key }).then(KeyAction::Up { value: key });
        self.client.perform_actions(keys).await.unwrap();
    }

    /// What has the focus, described as `tag#id` or `tag[type]`.
    async fn focused(&self) -> String {
        let answer = self
            .client
            .execute(
                "const e = document.activeElement; return e ? e.tagName.toLowerCase() + (e.id ? '#' + e.id : '[' + (e.type || '') + ']') : '';",
                vec![],
            )
            .await
            .unwrap();
        answer.as_str().unwrap_or_default().to_owned()
    }

    /// Submits with the keyboard only: Tab from where the focus is until the
    /// submit button has it, then Enter.
    pub async fn submit_by_keyboard(&self) {
        for _ in 0..40 {
            if self.focused().await == "button[submit]" {
                self.press(Key::Enter).await;
                return;
            }
            self.press(Key::Tab).await;
        }
        panic!("Tab never reached the submit button");
    }

    /// Saves a PNG of the window at `path`.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.expect("a screenshot");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }

    /// Checks what a keyboard or screen reader user needs: every visible
    /// input has a `<label for>`, every `aria-describedby` names elements
    /// that exist, and Tab from the top of the page reaches every input and
    /// then the submit button, in that order.
    pub async fn check_accessibility(&self) -> Result<(), String> {
        let unlabelled = self
            .client
            .execute(
                "return Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea'))
                   .filter(e => !e.id || !document.querySelector('label[for=\"' + e.id + '\"]')
                     || (e.getAttribute('aria-describedby') || '').split(' ').filter(Boolean)
                          .some(id => !document.getElementById(id)))
                   .map(e => e.name || e.outerHTML.slice(0, 40));",
                vec![],
            )
            .await
            .map_err(|error| error.to_string())?;
        if unlabelled.as_array().is_none_or(|list| !list.is_empty()) {
            return Err(format!("inputs without a label or with a missing description: {unlabelled}"));
        }
        let inputs = self
            .client
            .execute(
                "return Array.from(document.querySelectorAll('input:not([type=hidden])')).map(e => 'input#' + e.id);",
                vec![],
            )
            .await
            .map_err(|error| error.to_string())?;
        let inputs: Vec<String> =
            inputs.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect();
        self.client
            .execute("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0);", vec![])
            .await
            .map_err(|error| error.to_string())?;
        let mut order = Vec::new();
        for _ in 0..40 {
            self.press(Key::Tab).await;
            let focused = self.focused().await;
            if focused == "button[submit]" {
                let reached: Vec<&String> = order.iter().filter(|f| inputs.contains(f)).collect();
                if reached.len() != inputs.len() || reached.iter().zip(&inputs).any(|(a, b)| *a != b) {
                    return Err(format!("Tab order {order:?} does not reach the inputs {inputs:?} in order"));
                }
                return Ok(());
            }
            order.push(focused);
        }
        Err(format!("Tab never reached the submit button: {order:?}"))
    }

    /// Ends the session (the driver goes when this is dropped).
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Kills a driver that never got a session.
struct DriverGuard(Option<Child>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        if let Some(mut driver) = self.0.take() {
            let _ = driver.kill();
            let _ = driver.wait();
        }
    }
}

/// A desk with one open link asking for the employee's and a child's
/// numbers; it records the digits submitted.
struct FakeDesk {
    link: String,
    submitted: Mutex<Option<Vec<String>>>,
}

#[async_trait::async_trait]
impl CollectionDesk for FakeDesk {
    async fn open(&self, link: &LinkSecret) -> Result<LinkOutcome, VaultError> {
        if link.expose() != self.link || self.submitted.lock().unwrap().is_some() {
            return Ok(LinkOutcome::Unusable(UnusableLink::UnknownOrUsed));
        }
        Ok(LinkOutcome::Open(CollectionForm {
            company: FreeText::parse("株式会社サンプル商事", "company").unwrap(),
            asked: vec![Relation::Employee, Relation::Child],
            purposes: vec![Purpose::WithholdingSlip, Purpose::DependentDeductionDeclaration],
            expires_at: (time::OffsetDateTime::now_utc() + time::Duration::days(7)).unix_timestamp() * 1000,
            reissue: false,
        }))
    }

    async fn form(&self, link: &LinkSecret) -> Result<LinkOutcome, VaultError> {
        self.open(link).await
    }

    async fn submit(&self, link: &LinkSecret, numbers: Vec<MyNumber>) -> Result<SubmitOutcome, VaultError> {
        let mut submitted = self.submitted.lock().unwrap();
        if link.expose() != self.link || submitted.is_some() {
            return Ok(SubmitOutcome::Unusable(UnusableLink::UnknownOrUsed));
        }
        *submitted = Some(numbers.iter().map(|n| n.expose_digits().to_owned()).collect());
        Ok(SubmitOutcome::Submitted { numbers: numbers.len() })
    }
}

/// Server-only TLS with a fresh self-signed certificate for 127.0.0.1.
fn self_signed_tls() -> Arc<ServerConfig> {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    Arc::new(ServerConfig::builder().with_no_client_auth().with_single_cert(vec![cert], key).unwrap())
}

/// Full-width digits in groups of four, joined by full-width hyphens.
fn full_width_with_hyphens(digits: &str) -> String {
    let wide: Vec<char> = digits.chars().map(|d| char::from_u32(0xFF10 + d.to_digit(10).unwrap()).unwrap()).collect();
    wide.chunks(4).map(|group| group.iter().collect::<String>()).collect::<Vec<_>>().join("－")
}

/// Where the screenshots go when `MNVAULT_SCREENSHOTS` is set.
fn screenshot_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("MNVAULT_SCREENSHOTS")?;
    Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("docs").join("img").join(name))
}

#[tokio::test]
async fn the_page_works_in_a_real_browser_with_a_fake_desk() {
    let Some(browser) = Browser::start().await else { return };
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let address: SocketAddr = listener.local_addr().unwrap();
    let origin = format!("https://{address}");
    let secret = LinkSecret::draw();
    let desk = Arc::new(FakeDesk { link: secret.expose().to_owned(), submitted: Mutex::new(None) });
    let shutdown = CancellationToken::new();
    let settings = PageSettings { public_origin: origin.clone(), ..PageSettings::default() };
    let server =
        tokio::spawn(collect_page::serve(listener, self_signed_tls(), desk.clone(), settings, shutdown.clone()));

    browser.open(&format!("{origin}/c/{}", secret.expose())).await;
    let html_lang = browser.client().find(Locator::Css("html")).await.unwrap().attr("lang").await.unwrap();
    assert_eq!(html_lang.as_deref(), Some("ja"));
    let heading = browser.client().find(Locator::Css("h1")).await.unwrap().text().await.unwrap();
    assert!(heading.contains("マイナンバー"), "{heading}");
    browser.check_accessibility().await.unwrap();

    // A mistyped number: the page says so as it is typed.
    let [employee, child]: [String; 2] = valid_numbers(2).try_into().unwrap();
    let wrong_last = (employee.chars().last().unwrap().to_digit(10).unwrap() + 1) % 10;
    browser.type_into("ご本人", &format!("{}{wrong_last}", &employee[..11])).await;
    let message = browser.message("ご本人").await;
    assert!(message.contains("最後の桁が合いません"), "{message}");
    let field = browser.field("ご本人").await;
    assert_eq!(field.attr("aria-invalid").await.unwrap().as_deref(), Some("true"));
    assert!(browser.client().find(Locator::Id("n0-msg")).await.unwrap().is_displayed().await.unwrap());

    // Submitting now is blocked in the page: nothing reaches the desk.
    browser.type_into("お子さま", &child).await;
    browser.field("お子さま").await.click().await.unwrap();
    browser.submit_by_keyboard().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(desk.submitted.lock().unwrap().is_none());
    assert!(browser.client().current_url().await.unwrap().path().starts_with("/c/"));

    // Full-width digits with hyphens, as a phone's Japanese keyboard types them.
    browser.type_into("ご本人", &full_width_with_hyphens(&employee)).await;
    let message = browser.message("ご本人").await;
    assert!(!message.contains("合いません"), "{message}");
    assert_eq!(browser.field("ご本人").await.attr("aria-invalid").await.unwrap().as_deref(), Some("false"));
    browser.field("お子さま").await.click().await.unwrap();
    browser.submit_by_keyboard().await;
    browser.client().wait().at_most(WAIT).for_element(Locator::Id("done")).await.expect("the confirmation");
    let url = browser.client().current_url().await.unwrap();
    assert_eq!(url.path(), "/done");
    assert!(!url.as_str().contains(secret.expose()));
    let body = browser.client().find(Locator::Css("main")).await.unwrap().text().await.unwrap();
    assert!(body.contains("このページは閉じて構いません"), "{body}");
    assert_eq!(*desk.submitted.lock().unwrap(), Some(vec![employee.clone(), child.clone()]));

    // The link is used now: it reads like any unknown one.
    browser.open(&format!("{origin}/c/{}", secret.expose())).await;
    let heading = browser.client().find(Locator::Css("h1")).await.unwrap().text().await.unwrap();
    assert!(heading.contains("このリンクは使えません"), "{heading}");

    browser.close().await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), server).await.expect("the page stops").unwrap();
}

/// The heading of the page the browser shows.
async fn heading(browser: &Browser) -> String {
    browser.client().find(Locator::Css("h1")).await.unwrap().text().await.unwrap()
}

on_both_backends! {
    /// The whole way, through the real vault: payroll asks over gRPC, the
    /// employee types on the page, payroll receives tokens that detokenize
    /// in a job to what was typed, the link then refuses, an expired link
    /// refuses, and no byte the vault wrote holds a typed number.
    async fn a_number_typed_on_the_page_reaches_payroll_only_as_a_token(backend) {
        let Some(browser) = Browser::start().await else { return };
        let app = crate::collection::spawn_with_page(&backend).await;
        let payroll = app.client("payroll").await;
        let created = payroll.create_collection("demo", crate::collection::asked(1, 0)).await.unwrap();
        let id = created.collection.unwrap().collection_id;

        browser.open(&created.link).await;
        assert!(heading(&browser).await.contains("マイナンバー"));
        let main = browser.client().find(Locator::Css("main")).await.unwrap().text().await.unwrap();
        assert!(main.contains("Demo tenant (dev)"), "the page names the company: {main}");
        assert!(main.contains("源泉徴収票"), "and why: {main}");
        browser.check_accessibility().await.unwrap();

        let [employee, child]: [String; 2] = valid_numbers(2).try_into().unwrap();
        let wrong_last = (employee.chars().last().unwrap().to_digit(10).unwrap() + 1) % 10;
        browser.type_into("ご本人", &format!("{}{wrong_last}", &employee[..11])).await;
        assert!(browser.message("ご本人").await.contains("最後の桁が合いません"));
        // The screenshot shows the mistyped one: with its check digit wrong
        // it can be nobody's number.
        if let Some(path) = screenshot_path("collect-form.png") {
            browser.screenshot(&path).await;
        }
        browser.type_into("ご本人", &full_width_with_hyphens(&employee)).await;
        browser.type_into("お子さま", &child).await;
        browser.submit_by_keyboard().await;
        browser.client().wait().at_most(WAIT).for_element(Locator::Id("done")).await.expect("the confirmation");
        let done = browser.client().find(Locator::Css("main")).await.unwrap().text().await.unwrap();
        for typed in [&employee, &child] {
            assert!(!done.contains(typed.as_str()), "no number on the confirmation");
        }
        if let Some(path) = screenshot_path("collect-done.png") {
            browser.screenshot(&path).await;
        }

        let collection = payroll.collection("demo", &id).await.unwrap();
        let tokens: Vec<String> = collection.numbers.iter().map(|n| n.token.clone()).collect();
        assert!(tokens.iter().all(|t| t.starts_with("mnt_")), "{tokens:?}");
        assert_eq!(crate::collection::released(&app, &tokens).await, vec![employee.clone(), child.clone()]);

        // Used: the link now reads like an unknown one.
        browser.open(&created.link).await;
        assert!(heading(&browser).await.contains("このリンクは使えません"));

        // Expired: it says so.
        let short = payroll.create_collection("demo", crate::collection::asked(0, 1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        browser.open(&format!("{}?lang=en", short.link)).await;
        let expired = heading(&browser).await;
        assert!(expired.to_lowercase().contains("expired"), "{expired}");

        browser.close().await;
        crate::integrity::assert_no_number_in(&app, &[employee, child]).await;
    }
}

on_both_backends! {
    /// A re-issue in the browser: the page asks for the new number, the
    /// token payroll holds now detokenizes to it, and the old number is
    /// still released, only by a job, under the collection's superseded token.
    async fn a_reissue_collection_keeps_the_token(backend) {
        let Some(browser) = Browser::start().await else { return };
        let app = crate::collection::spawn_with_page(&backend).await;
        let payroll = app.client("payroll").await;
        let [old, new]: [String; 2] = valid_numbers(2).try_into().unwrap();
        let token = payroll.tokenize("demo", &old, mnvault_client::TokenFormat::Opaque).await.unwrap();
        let asked = NewCollection { reissue_token: Some(token.clone()), ..crate::collection::asked(0, 0) };
        let created = payroll.create_collection("demo", asked).await.unwrap();
        let id = created.collection.unwrap().collection_id;

        browser.open(&created.link).await;
        let note = browser.client().find(Locator::Id("reissue")).await.unwrap().text().await.unwrap();
        assert!(note.contains("新しいマイナンバー"), "the page asks for the new number: {note}");
        browser.check_accessibility().await.unwrap();
        browser.type_into("ご本人", &full_width_with_hyphens(&new)).await;
        browser.submit_by_keyboard().await;
        browser.client().wait().at_most(WAIT).for_element(Locator::Id("done")).await.expect("the confirmation");
        browser.close().await;

        let collection = payroll.collection("demo", &id).await.unwrap();
        let tokens: Vec<String> = collection.numbers.iter().map(|n| n.token.clone()).collect();
        assert_eq!(tokens, vec![token.clone()], "payroll keeps its token");
        let superseded = collection.superseded_token;
        assert_eq!(crate::collection::released(&app, &[token, superseded]).await, vec![new.clone(), old.clone()]);
        crate::integrity::assert_no_number_in(&app, &[old, new]).await;
    }
}
