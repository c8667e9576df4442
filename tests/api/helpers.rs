//! The harness: every test gets its own vault, started in-process on a random
//! loopback port with its own temporary data directory (as zero2prod's
//! `spawn_app`), and talks to it over mutual TLS like any client.

use std::path::{Path, PathBuf};

use clap::Parser;
use mnvault::cli::{self, Cli};
use mnvault::config::Settings;
use mnvault::datadir::{self, DEV_PKI_DIR};
use mnvault::startup::Application;
use mnvault_client::number::check_digit;
use mnvault_client::{ClientError, ClientIdentity, Code, NewFilingJob, TokenFormat, VaultClient};
use rand::Rng;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::Connection as _;
use sqlx::SqliteConnection;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running vault and its data directory.
pub struct TestApp {
    /// `https://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The data directory (removed when the app is dropped).
    pub data_dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

/// A dev vault with the default dev configuration.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A dev vault whose settings `configure` may change before it starts.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut settings = datadir::dev_settings(data_dir.path());
    settings.listen = "127.0.0.1:0".parse().unwrap();
    configure(&mut settings);
    datadir::initialise(&settings).await.expect("initialise data dir");
    let application = Application::build(&settings).await.expect("build vault");
    let endpoint = format!("https://127.0.0.1:{}", application.local_addr().port());
    let (shutdown, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        application
            .run_until_stopped(async {
                let _ = stopped.await;
            })
            .await
            .expect("vault ran");
    });
    TestApp { endpoint, data_dir, shutdown: Some(shutdown), server: Some(server) }
}

impl TestApp {
    /// The data directory's path.
    pub fn path(&self) -> &Path {
        self.data_dir.path()
    }

    /// A client acting as dev principal `name`.
    pub async fn client(&self, name: &str) -> VaultClient {
        let identity = ClientIdentity::from_dev_pki(&self.path().join(DEV_PKI_DIR), name).expect("dev identity");
        VaultClient::connect(&self.endpoint, &identity).await.expect("connect")
    }

    /// Runs `mnvault ARGS --data-dir <dir> [--endpoint <this vault>]` in-process
    /// and returns its standard output.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut argv = vec!["mnvault".to_owned()];
        argv.extend(args.iter().map(|a| a.to_string()));
        argv.extend(["--data-dir".to_owned(), self.path().display().to_string()]);
        if args.contains(&"--as") {
            argv.extend(["--endpoint".to_owned(), self.endpoint.clone()]);
        }
        let cli = Cli::try_parse_from(argv)?;
        let mut out = Vec::new();
        cli::run(cli, &mut out).await?;
        Ok(String::from_utf8(out)?)
    }

    /// A direct connection to the vault's SQLite file, for tampering tests.
    pub async fn database(&self) -> SqliteConnection {
        let options = SqliteConnectOptions::new().filename(self.database_path());
        SqliteConnection::connect_with(&options).await.expect("open database")
    }

    /// Every audit entry (first page), listed as `auditor`. The listing's own
    /// entry is appended after it answers, so the last entry is the call before.
    pub async fn audit_entries(&self) -> Vec<mnvault_client::AuditEntry> {
        let request = mnvault_client::ListAuditEntriesRequest::default();
        self.client("auditor").await.list_audit_entries(request).await.unwrap().entries
    }

    /// The SQLite file.
    pub fn database_path(&self) -> PathBuf {
        self.path().join(mnvault::store::DATABASE_FILE)
    }

    /// Stops the server and waits until it has closed the database.
    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// A random valid My Number, made from the check-digit rule (never a real person's on purpose).
pub fn valid_number() -> String {
    let mut rng = rand::thread_rng();
    let mut digits = [0u8; 11];
    digits.iter_mut().for_each(|d| *d = b'0' + rng.gen_range(0..10));
    let mut number = String::from_utf8(digits.to_vec()).unwrap();
    number.push(char::from(b'0' + check_digit(&digits)));
    number
}

/// `count` distinct random valid numbers.
pub fn valid_numbers(count: usize) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    std::iter::repeat_with(valid_number).filter(|n| seen.insert(n.clone())).take(count).collect()
}

/// The same digits in full-width form.
pub fn full_width(number: &str) -> String {
    number.chars().map(|c| char::from_u32(c as u32 - '0' as u32 + '０' as u32).unwrap()).collect()
}

/// The refusal's code, or a panic saying the call succeeded.
pub fn refusal<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (Code, String) {
    match result {
        Err(ClientError::Refused { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A withholding-slip job in tenant `demo` for `tokens`, one release each, expiring in an hour.
pub fn filing_job(tokens: &[String]) -> NewFilingJob {
    NewFilingJob {
        tenant: "demo".into(),
        purpose: "withholding-slip".into(),
        tokens: tokens.to_vec(),
        expires_at: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        max_releases_per_token: 1,
        note: String::new(),
    }
}

/// Tokens of `count` fresh numbers in tenant `demo`, tokenized as `payroll`.
pub async fn tokenize_fresh(app: &TestApp, count: usize) -> Vec<String> {
    let payroll = app.client("payroll").await;
    let mut tokens = Vec::with_capacity(count);
    for number in valid_numbers(count) {
        tokens.push(payroll.tokenize("demo", &number, TokenFormat::Opaque).await.unwrap());
    }
    tokens
}

/// A job for `tokens` created by `requester` and approved by `approver`.
pub async fn approved_job(app: &TestApp, tokens: &[String], max_releases_per_token: u32) -> String {
    let job = NewFilingJob { max_releases_per_token, ..filing_job(tokens) };
    let created = app.client("requester").await.create_filing_job(job).await.unwrap();
    app.client("approver").await.approve_filing_job(&created.job_id).await.unwrap();
    created.job_id
}
