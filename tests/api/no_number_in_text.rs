//! No number in any text, by construction (issue 6, point 2).
//!
//! Valid My Numbers, and mistyped ones (which parse as legacy tokens), are
//! written in every decimal digit script with separators drawn from the
//! Unicode space (`Zs`), punctuation (`P*`) and dash (`Pd`) categories and ー,
//! and sent through every text field of every RPC ([`FIELDS`], checked against
//! the API's descriptors so a new field cannot be forgotten). Each answer is
//! scanned at once; at the end the database, every file of the data directory
//! and everything the vault logged are scanned for every number sent.
//!
//! The scan decodes digits of every script (each `Nd` digit by its distance
//! from its script's zero, and kanji digits), skips everything that is not a
//! letter, and undoes `Debug` and JSON escapes first, so a leak in any form,
//! `\u{3000}` included, is found. It looks for the first eleven digits, which
//! decide the twelfth.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::io;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};

use futures::StreamExt;
use mnvault_client::number::check_digit;
use mnvault_client::{ClientError, ListAuditEntriesRequest, NewFilingJob, TokenFormat, VaultClient};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::Message as _;
use sqlx::{Connection as _, Row as _};
use tokio::runtime::Runtime;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::helpers::{approved_job, filing_job, tokenize_fresh, valid_number, Backend, TestApp};

/// Every text field of every RPC, as `Method.field`.
const FIELDS: [&str; 58] = [
    "SetRetention.tenant",
    "SetRetention.tokens",
    "SetRetention.classes",
    "SetRetention.end_date",
    "SetRetention.delete_after",
    "PurgeExpired.tenant",
    "IssueDeletionCertificate.tenant",
    "CreateTenant.tenant",
    "CreateTenant.display_name",
    "Tokenize.tenant",
    "Tokenize.number",
    "TokenizeStream.tenant",
    "TokenizeStream.number",
    "DescribeToken.tenant",
    "DescribeToken.token",
    "CreateFilingJob.tenant",
    "CreateFilingJob.purpose",
    "CreateFilingJob.tokens",
    "CreateFilingJob.note",
    "ApproveFilingJob.job_id",
    "GetFilingJob.job_id",
    "CancelFilingJob.job_id",
    "Detokenize.job_id",
    "Detokenize.tokens",
    "ListAuditEntries.tenant",
    "ListAuditEntries.token",
    "ListAuditEntries.job_id",
    "ListAuditEntries.operation",
    "ListAuditEntries.request_id",
    "ListAuditEntries.principal",
    "ListAuditEntries.outcome",
    "RotateTenantKey.tenant",
    "RewrapTenantRecords.tenant",
    "RewrapTenantRecords.cursor",
    "GetKeyStatus.tenant",
    "GetKeyStatus.after_tenant",
    "RetireKeyVersion.tenant",
    "ExportTenant.job_id",
    "ExportTenant.recipient",
    "ShredTenant.tenant",
    "GetTenantPolicy.tenant",
    "ProposeTenantPolicy.tenant",
    "ApproveTenantPolicy.tenant",
    "ApproveTenantPolicy.change_id",
    "RevokeCertificate.serial",
    "RevokeCertificate.reason",
    "ListRevokedCertificates.after_serial",
    "CreateCollection.tenant",
    "CreateCollection.reference",
    "CreateCollection.relations",
    "CreateCollection.purposes",
    "CreateCollection.reissue_token",
    "GetCollection.tenant",
    "GetCollection.collection_id",
    "WatchCollections.tenant",
    "WatchCollections.collection_ids",
    "CancelCollection.tenant",
    "CancelCollection.collection_id",
];

/// Sent through every field too; it must appear nowhere (a refusal never
/// repeats the text, so no line can be forged with it).
const FORGED: &str = "FORGED-LINE";

/// Digits the scan looks for: eleven decide a My Number's check digit.
const KEY_DIGITS: usize = 11;

// ---------------------------------------------------------------------------
// Unicode tables

/// Every decimal digit (`Nd`) with its value, and every script's zero.
struct DigitTable {
    zeros: Vec<char>,
    values: HashMap<char, u8>,
}

/// Unicode keeps each script's decimal digits contiguous, zero to nine (a
/// stability policy, asserted here), so a digit's value is its distance from
/// its zero.
static DIGITS: LazyLock<DigitTable> = LazyLock::new(|| {
    let mut zeros = Vec::new();
    let mut values = HashMap::new();
    let mut run = 0usize;
    for code in 0..=0x10FFFFu32 {
        match char::from_u32(code) {
            Some(digit) if digit.general_category() == GeneralCategory::DecimalNumber => {
                let value = (run % 10) as u8;
                if value == 0 {
                    zeros.push(digit);
                }
                values.insert(digit, value);
                run += 1;
            }
            _ => {
                assert_eq!(run % 10, 0, "decimal digits come in runs of ten (before U+{code:04X})");
                run = 0;
            }
        }
    }
    // Not Nd, but people write numbers with them digit by digit.
    for (value, digit) in "〇一二三四五六七八九".chars().enumerate() {
        values.insert(digit, value as u8);
    }
    values.insert('零', 0);
    DigitTable { zeros, values }
});

fn chars_of(categories: &[GeneralCategory]) -> Vec<char> {
    (0..=0x10FFFFu32).filter_map(char::from_u32).filter(|c| categories.contains(&c.general_category())).collect()
}

static SPACES: LazyLock<Vec<char>> = LazyLock::new(|| chars_of(&[GeneralCategory::SpaceSeparator]));
static DASHES: LazyLock<Vec<char>> = LazyLock::new(|| chars_of(&[GeneralCategory::DashPunctuation]));
static PUNCTUATION: LazyLock<Vec<char>> = LazyLock::new(|| {
    use GeneralCategory::*;
    chars_of(&[
        ConnectorPunctuation,
        DashPunctuation,
        OpenPunctuation,
        ClosePunctuation,
        InitialPunctuation,
        FinalPunctuation,
        OtherPunctuation,
    ])
});

// ---------------------------------------------------------------------------
// What is sent

/// A number as sent: its twelve ASCII digits and how it was written.
#[derive(Debug, Clone)]
struct Written {
    digits: String,
    text: String,
}

impl Written {
    /// What the scan looks for.
    fn key(&self) -> String {
        self.digits[..KEY_DIGITS].to_owned()
    }
}

/// Twelve digits: a valid number, or (one time in three) the same with a
/// wrong check digit, which is a well-formed legacy token.
fn twelve_digits() -> impl Strategy<Value = String> {
    digits_with_check(prop_oneof![2 => Just(0u8), 1 => 1u8..10])
}

/// Eleven random digits and their check digit plus `wrong` (mod 10).
fn digits_with_check(wrong: impl Strategy<Value = u8>) -> impl Strategy<Value = String> {
    (proptest::array::uniform11(0u8..10), wrong).prop_map(|(first, wrong)| {
        let ascii = first.map(|digit| b'0' + digit);
        let check = (check_digit(&ascii) + wrong) % 10;
        let mut digits = String::from_utf8(ascii.to_vec()).unwrap();
        digits.push(char::from(b'0' + check));
        digits
    })
}

/// One or two separators: a space, a dash, any punctuation, or ー.
fn separator() -> impl Strategy<Value = String> {
    let one = prop_oneof![
        prop::sample::select(SPACES.clone()),
        prop::sample::select(DASHES.clone()),
        prop::sample::select(PUNCTUATION.clone()),
        Just('ー'),
    ];
    prop::collection::vec(one, 1..=2).prop_map(String::from_iter)
}

/// A script's zero: ASCII and full-width often, any script otherwise.
fn zero() -> impl Strategy<Value = char> {
    prop_oneof![1 => Just('0'), 1 => Just('０'), 3 => prop::sample::select(DIGITS.zeros.clone())]
}

fn written() -> impl Strategy<Value = Written> {
    // A mistyped number: a well-formed legacy token that resolves to nothing.
    let mistyped = digits_with_check(1u8..10).prop_map(|digits| Written { text: digits.clone(), digits });
    // As pasted: twelve ASCII digits, maybe after a grammar's prefix.
    let plain = (twelve_digits(), prop::sample::select(vec!["", "", "mnt_", "job_", "t-"]))
        .prop_map(|(digits, prefix)| Written { text: format!("{prefix}{digits}"), digits });
    // Dressed: a script (some digits in another), separators between digits.
    let dressed = (
        twelve_digits(),
        zero(),
        prop::collection::vec((prop::bool::weighted(0.15), zero(), prop::option::weighted(0.5, separator())), 12),
        prop::sample::select(vec!["", "", "note ", "job_", "a-", "番号"]),
        prop::sample::select(vec!["", "", " end", "です"]),
    )
        .prop_map(|(digits, zero, per_digit, prefix, suffix)| {
            let mut text = prefix.to_owned();
            for (index, (digit, (mixed, own_zero, separator))) in digits.bytes().zip(per_digit).enumerate() {
                if let (true, Some(separator)) = (index > 0, separator) {
                    text.push_str(&separator);
                }
                let zero = if mixed { own_zero } else { zero };
                text.push(char::from_u32(u32::from(zero) + u32::from(digit - b'0')).unwrap());
            }
            text.push_str(suffix);
            Written { digits, text }
        });
    prop_oneof![1 => mistyped, 1 => plain, 3 => dressed]
}

// ---------------------------------------------------------------------------
// The scan

/// `text` with `Debug` and JSON escapes undone (`\u{3000}`, `\u3000`, `\n`,
/// `\"`…): an escaped separator must not hide the digits around it.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('u') => {
                let braced = chars.peek() == Some(&'{');
                if braced {
                    chars.next();
                }
                let mut hex = String::new();
                while hex.len() < 6 && chars.peek().is_some_and(char::is_ascii_hexdigit) && (braced || hex.len() < 4) {
                    hex.push(chars.next().unwrap());
                }
                if braced && chars.peek() == Some(&'}') {
                    chars.next();
                }
                out.push(u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32).unwrap_or(' '));
            }
            Some('n' | 'r' | 't') => out.push(' '),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

fn is_letter(c: char) -> bool {
    use GeneralCategory::*;
    matches!(c.general_category(), UppercaseLetter | LowercaseLetter | TitlecaseLetter | OtherLetter)
}

/// Runs of at least [`KEY_DIGITS`] digits of any script in `text`, joined by
/// anything but letters, as ASCII digits.
fn digit_runs(text: &str) -> Vec<String> {
    let mut runs = Vec::new();
    let mut run = String::new();
    for c in unescape(text).chars() {
        if let Some(value) = DIGITS.values.get(&c) {
            run.push(char::from(b'0' + value));
        } else if is_letter(c) {
            if run.len() >= KEY_DIGITS {
                runs.push(std::mem::take(&mut run));
            }
            run.clear();
        }
    }
    if run.len() >= KEY_DIGITS {
        runs.push(run);
    }
    runs
}

/// The keys in `keys` that `text` holds.
fn leaks(text: &str, keys: &HashSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for run in digit_runs(text) {
        for window in run.as_bytes().windows(KEY_DIGITS) {
            let window = std::str::from_utf8(window).unwrap();
            if keys.contains(window) {
                found.insert(window.to_owned());
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------
// The vault's log

/// Everything the vault logs while a test runs, formatted by the same
/// `tracing_subscriber::fmt` formatter as `mnvault serve` uses.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Routes this thread's events here until the guard drops. The test's
    /// runtime is current-thread, so that is every event of the vault's tasks
    /// (the SQLite driver's own worker thread aside: it logs no values).
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug,mnvault=trace,mnvault_core=trace"))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

// ---------------------------------------------------------------------------
// The vault under test

/// Every number sent, by key: the field and the text it went in.
type Sent = HashMap<String, (&'static str, String)>;

/// Where the vault wrote something, and what.
type Corpus = Vec<(String, String)>;

struct Vault {
    runtime: Runtime,
    app: TestApp,
    clients: HashMap<&'static str, VaultClient>,
    /// A token of tenant `demo`, listed on `job_id`.
    token: String,
    /// An approved job (never released from).
    job_id: String,
    tenants_made: Cell<u32>,
    sent: RefCell<Sent>,
}

fn answer<T: Debug>(result: Result<T, ClientError>) -> String {
    match result {
        Ok(value) => format!("{value:?}"),
        Err(ClientError::Refused { message, .. }) => message,
        Err(other) => other.to_string(),
    }
}

impl Vault {
    fn start(runtime: Runtime, backend: Backend) -> Self {
        let (app, clients, token, job_id) = runtime.block_on(async {
            // With the collection page, so that collections can be asked for.
            let app = crate::collection::spawn_with_page(&backend).await;
            let mut clients = HashMap::new();
            for name in ["admin", "payroll", "requester", "approver", "filer", "auditor"] {
                clients.insert(name, app.client(name).await);
            }
            let token = tokenize_fresh(&app, 1).await.remove(0);
            let job_id = approved_job(&app, std::slice::from_ref(&token), 1).await;
            (app, clients, token, job_id)
        });
        let tenants_made = Cell::new(0);
        Self { runtime, app, clients, token, job_id, tenants_made, sent: RefCell::default() }
    }

    fn client(&self, name: &str) -> &VaultClient {
        &self.clients[name]
    }

    /// A tenant identifier not used yet (letters only).
    fn fresh_tenant(&self) -> String {
        let mut n = self.tenants_made.get();
        self.tenants_made.set(n + 1);
        let mut name = String::from("fresh-");
        loop {
            name.push(char::from(b'a' + (n % 26) as u8));
            n /= 26;
            if n == 0 {
                return name;
            }
        }
    }

    /// A valid number for the field that is not under test; it must not
    /// appear anywhere either.
    fn companion(&self, field: &'static str) -> String {
        let number = valid_number();
        self.sent.borrow_mut().insert(number[..KEY_DIGITS].to_owned(), (field, format!("companion {number}")));
        number
    }

    /// Sends `text` in `field`, the other fields valid, and returns what the
    /// vault answered.
    async fn send(&self, field: &'static str, text: &str) -> String {
        let text = text.to_owned();
        let job = || filing_job(std::slice::from_ref(&self.token));
        let audit = || ListAuditEntriesRequest { limit: 5, ..Default::default() };
        let (admin, payroll) = (self.client("admin"), self.client("payroll"));
        let (requester, approver, filer) = (self.client("requester"), self.client("approver"), self.client("filer"));
        let auditor = self.client("auditor");
        match field {
            "CreateTenant.tenant" => answer(admin.create_tenant(&text, "Test tenant").await),
            "CreateTenant.display_name" => answer(admin.create_tenant(&self.fresh_tenant(), &text).await),
            "Tokenize.tenant" => answer(payroll.tokenize(&text, &self.companion(field), TokenFormat::Opaque).await),
            "Tokenize.number" => answer(payroll.tokenize("demo", &text, TokenFormat::Opaque).await),
            "TokenizeStream.tenant" => self.stream(&text, self.companion(field)).await,
            "TokenizeStream.number" => self.stream("demo", text).await,
            "DescribeToken.tenant" => answer(payroll.describe_token(&text, &self.token).await),
            "DescribeToken.token" => answer(payroll.describe_token("demo", &text).await),
            "CreateFilingJob.tenant" => {
                answer(requester.create_filing_job(NewFilingJob { tenant: text, ..job() }).await)
            }
            "CreateFilingJob.purpose" => {
                answer(requester.create_filing_job(NewFilingJob { purpose: text, ..job() }).await)
            }
            "CreateFilingJob.tokens" => {
                let tokens = vec![self.token.clone(), text];
                answer(requester.create_filing_job(NewFilingJob { tokens, ..job() }).await)
            }
            "CreateFilingJob.note" => answer(requester.create_filing_job(NewFilingJob { note: text, ..job() }).await),
            "ApproveFilingJob.job_id" => answer(approver.approve_filing_job(&text).await),
            "GetFilingJob.job_id" => answer(requester.get_filing_job(&text).await),
            "CancelFilingJob.job_id" => answer(requester.cancel_filing_job(&text).await),
            "Detokenize.job_id" => answer(filer.detokenize(&text, Vec::new()).await),
            "Detokenize.tokens" => answer(filer.detokenize(&self.job_id, vec![text]).await),
            "ListAuditEntries.tenant" => {
                answer(auditor.list_audit_entries(ListAuditEntriesRequest { tenant: text, ..audit() }).await)
            }
            "ListAuditEntries.token" => {
                answer(auditor.list_audit_entries(ListAuditEntriesRequest { token: text, ..audit() }).await)
            }
            "ListAuditEntries.job_id" => {
                answer(auditor.list_audit_entries(ListAuditEntriesRequest { job_id: text, ..audit() }).await)
            }
            "ListAuditEntries.operation" => {
                answer(auditor.list_audit_entries(ListAuditEntriesRequest { operation: text, ..audit() }).await)
            }
            "ListAuditEntries.request_id" => {
                answer(auditor.list_audit_entries(ListAuditEntriesRequest { request_id: text, ..audit() }).await)
            }
            "ListAuditEntries.principal" => {
                answer(auditor.list_audit_entries(ListAuditEntriesRequest { principal: text, ..audit() }).await)
            }
            "ListAuditEntries.outcome" => {
                answer(auditor.list_audit_entries(ListAuditEntriesRequest { outcome: text, ..audit() }).await)
            }
            "RotateTenantKey.tenant" => answer(admin.rotate_tenant_key(&text).await),
            "RewrapTenantRecords.tenant" => answer(admin.rewrap_tenant_records(&text, 0, "").await),
            "RewrapTenantRecords.cursor" => answer(admin.rewrap_tenant_records("demo", 0, &text).await),
            "GetKeyStatus.tenant" => answer(admin.key_status(Some(&text), "", 0).await),
            "GetKeyStatus.after_tenant" => answer(admin.key_status(None, &text, 0).await),
            "RetireKeyVersion.tenant" => answer(admin.retire_key_version(&text, 1).await),
            "ExportTenant.job_id" => {
                let recipient = age::x25519::Identity::generate().to_public().to_string();
                answer(filer.export_tenant(&text, &recipient).await.map(|_| ()))
            }
            "ExportTenant.recipient" => answer(filer.export_tenant(&self.job_id, &text).await.map(|_| ())),
            "ShredTenant.tenant" => answer(admin.shred_tenant(&text).await),
            "GetTenantPolicy.tenant" => answer(admin.tenant_policy(&text).await),
            "ProposeTenantPolicy.tenant" => {
                let policy = mnvault_client::tenant_policy::TenantPolicy {
                    approvals_required: 1,
                    max_tokens_per_job: 10,
                    max_job_lifetime_days: 7,
                    ..Default::default()
                };
                answer(admin.propose_tenant_policy(&text, policy).await)
            }
            "ApproveTenantPolicy.tenant" => answer(admin.approve_tenant_policy(&text, "pc_abcdefghijklmnop").await),
            "ApproveTenantPolicy.change_id" => answer(admin.approve_tenant_policy("demo", &text).await),
            "RevokeCertificate.serial" => answer(admin.revoke_certificate(&text, "").await),
            "RevokeCertificate.reason" => answer(admin.revoke_certificate("7fabcdef", &text).await),
            "ListRevokedCertificates.after_serial" => answer(admin.revoked_certificates_after(&text).await),
            "CreateCollection.tenant"
            | "CreateCollection.reference"
            | "CreateCollection.relations"
            | "CreateCollection.purposes"
            | "CreateCollection.reissue_token" => {
                let mut asked = crate::collection::asked(1, 0);
                let mut tenant = "demo".to_owned();
                match field {
                    "CreateCollection.tenant" => tenant = text,
                    "CreateCollection.reference" => asked.reference = text,
                    "CreateCollection.relations" => asked.relations.push(text),
                    "CreateCollection.reissue_token" => asked.reissue_token = Some(text),
                    _ => asked.purposes.push(text),
                }
                answer(payroll.create_collection(&tenant, asked).await)
            }
            "GetCollection.tenant" => answer(payroll.collection(&text, "col_abcdefghijklmnop").await),
            "GetCollection.collection_id" => answer(payroll.collection("demo", &text).await),
            "WatchCollections.tenant" => {
                answer(payroll.watch_collections(&text, vec!["col_abcdefghijklmnop".into()]).await.map(|_| ()))
            }
            "WatchCollections.collection_ids" => {
                answer(payroll.watch_collections("demo", vec![text]).await.map(|_| ()))
            }
            "CancelCollection.tenant" => answer(payroll.cancel_collection(&text, "col_abcdefghijklmnop").await),
            "CancelCollection.collection_id" => answer(payroll.cancel_collection("demo", &text).await),
            "SetRetention.tenant"
            | "SetRetention.tokens"
            | "SetRetention.classes"
            | "SetRetention.end_date"
            | "SetRetention.delete_after" => {
                let mut request = mnvault_client::retention::SetRetentionRequest {
                    tenant: "demo".into(),
                    tokens: vec![self.token.clone()],
                    delete_after: "2099-01-01".into(),
                    ..Default::default()
                };
                match field {
                    "SetRetention.tenant" => request.tenant = text,
                    "SetRetention.tokens" => request.tokens.push(text),
                    "SetRetention.classes" => request.classes = vec![text],
                    "SetRetention.end_date" => request.end_date = text,
                    _ => request.delete_after = text,
                }
                answer(admin.set_retention(request).await)
            }
            "PurgeExpired.tenant" => answer(admin.purge_expired(&text, true).await),
            "IssueDeletionCertificate.tenant" => {
                let since = time::OffsetDateTime::UNIX_EPOCH;
                answer(auditor.issue_deletion_certificate(&text, since, time::OffsetDateTime::now_utc()).await)
            }
            other => panic!("no way to send field {other}"),
        }
    }

    async fn stream(&self, tenant: &str, number: String) -> String {
        match self.client("payroll").tokenize_stream(tenant, TokenFormat::Opaque, vec![number]).await {
            Ok(results) => {
                let results: Vec<String> = results.map(answer).collect().await;
                results.join("\n")
            }
            Err(error) => answer::<()>(Err(error)),
        }
    }

    /// Runs `cases` generated numbers through `field`, checking each answer.
    fn check_field(&self, field: &'static str, cases: u32) {
        let config = Config { cases, failure_persistence: None, max_shrink_iters: 200, ..Config::default() };
        let mut runner = TestRunner::new(config);
        let result = runner.run(&written(), |written| {
            self.sent.borrow_mut().insert(written.key(), (field, written.text.clone()));
            let answer = self.runtime.block_on(self.send(field, &written.text));
            let keys: HashSet<String> = self.sent.borrow().keys().cloned().collect();
            let leaked = leaks(&answer, &keys);
            if !leaked.is_empty() {
                return Err(TestCaseError::fail(format!("{field}: the answer holds {leaked:?}: {answer}")));
            }
            Ok(())
        });
        if let Err(error) = result {
            panic!("{error}");
        }
        for line_break in ["\n", "\r\n", "\r", "\u{2028}", "\u{85}"] {
            let text = format!("mnt_aaaa{line_break}{FORGED} INFO mnvault: forged{line_break}");
            let answer = self.runtime.block_on(self.send(field, &text));
            assert!(!answer.contains(FORGED), "{field}: the answer repeats the text: {answer}");
        }
    }

    /// Stops the vault and returns everything it wrote: (where, text).
    fn written_down(mut self, capture: &Capture) -> (Corpus, Sent) {
        let mut corpus = Vec::new();
        self.runtime.block_on(async {
            self.app.stop().await;
            let database = match &self.app.backend {
                Backend::Sqlite => sqlite_dump(&self.app.database_path()).await,
                Backend::Postgres(_) => String::from_utf8_lossy(&self.app.database_dump().await).into_owned(),
            };
            assert!(database.contains(&self.token), "the database dump holds the records");
            corpus.push(("the database".to_owned(), database));
        });
        files_under(self.app.path(), &mut corpus);
        let log = capture.text();
        assert!(log.contains("call refused"), "the log capture sees the vault's events");
        corpus.push(("the vault's log".to_owned(), log));
        (corpus, self.sent.into_inner())
    }
}

/// Every row of every table, each value as text (blobs decoded lossily).
async fn sqlite_dump(path: &Path) -> String {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path).read_only(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await.expect("open the database");
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'").fetch_all(&mut conn).await.unwrap();
    let mut dump = String::new();
    for table in tables {
        for row in sqlx::query(&format!("SELECT * FROM \"{table}\"")).fetch_all(&mut conn).await.unwrap() {
            for column in 0..row.len() {
                let value = row
                    .try_get::<Option<String>, _>(column)
                    .map(Option::unwrap_or_default)
                    .or_else(|_| {
                        row.try_get::<Option<i64>, _>(column).map(|v| v.map(|v| v.to_string()).unwrap_or_default())
                    })
                    .or_else(|_| {
                        row.try_get::<Option<Vec<u8>>, _>(column)
                            .map(|v| String::from_utf8_lossy(&v.unwrap_or_default()).into_owned())
                    })
                    .unwrap_or_default();
                dump.push_str(&value);
                dump.push('\t');
            }
            dump.push('\n');
        }
    }
    dump
}

/// Every file under `dir`, as lossy text.
fn files_under(dir: &Path, corpus: &mut Corpus) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, corpus);
        } else if let Ok(bytes) = std::fs::read(&path) {
            corpus.push((path.display().to_string(), String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
}

fn check_every_field(backend: impl FnOnce(&Runtime) -> Option<Backend>, cases: u32) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let Some(backend) = backend(&runtime) else { return };
    let capture = Capture::default();
    let _routed = capture.install();
    let vault = Vault::start(runtime, backend);
    for field in FIELDS {
        vault.check_field(field, cases);
    }
    let (corpus, sent) = vault.written_down(&capture);
    let keys: HashSet<String> = sent.keys().cloned().collect();
    let mut found = Vec::new();
    for (place, text) in &corpus {
        for key in leaks(text, &keys) {
            let (field, written) = &sent[&key];
            found.push(format!("{place} holds the number sent in {field} as {written:?}"));
        }
        if text.contains(FORGED) {
            found.push(format!("{place} holds text a caller sent to forge a log line"));
        }
    }
    assert!(found.is_empty(), "{} finding(s):\n{}", found.len(), found.join("\n"));
}

#[test]
fn numbers_in_every_text_field_of_every_rpc_reach_nothing_the_vault_writes_or_says() {
    check_every_field(|_| Some(Backend::Sqlite), 32);
}

#[test]
fn the_same_on_postgres() {
    check_every_field(|runtime| runtime.block_on(Backend::postgres()), 6);
}

#[test]
fn the_fields_sent_are_every_text_field_of_the_api() {
    let set = prost_types::FileDescriptorSet::decode(mnvault_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut messages = HashMap::new();
    for file in &set.file {
        for message in &file.message_type {
            messages.insert(format!(".{}.{}", file.package(), message.name()), message);
        }
    }
    let mut in_api = BTreeSet::new();
    for file in set.file.iter().filter(|file| file.package() == "mynumber.vault.v1") {
        for service in &file.service {
            for method in &service.method {
                let input = messages[method.input_type()];
                for field in
                    input.field.iter().filter(|f| f.r#type() == prost_types::field_descriptor_proto::Type::String)
                {
                    in_api.insert(format!("{}.{}", method.name(), field.name()));
                }
            }
        }
    }
    assert_eq!(in_api, FIELDS.iter().map(|f| f.to_string()).collect::<BTreeSet<_>>());
}

#[test]
fn the_scan_finds_a_number_in_any_script_separators_and_escapes() {
    let digits = &*DIGITS;
    assert!(digits.zeros.len() >= 68, "{} decimal digit scripts", digits.zeros.len());
    assert_eq!((digits.values[&'٣'], digits.values[&'३'], digits.values[&'３'], digits.values[&'𝟗']), (3, 3, 3, 9));
    let mut runner = TestRunner::new(Config { cases: 256, failure_persistence: None, ..Config::default() });
    runner
        .run(&written(), |written| {
            let keys = HashSet::from([written.key()]);
            for form in [written.text.clone(), format!("{:?}", written.text), format!("x=\"{}\" y", written.text)] {
                prop_assert_eq!(leaks(&form, &keys).len(), 1, "{:?}", form);
            }
            // A letter between the halves ends the run: the scan is not blind.
            let (first, second) = written.digits.split_at(6);
            let split = format!("{first}x{second}");
            prop_assert!(leaks(&split, &keys).is_empty());
            Ok(())
        })
        .unwrap();
}
