//! The harness: every test gets its own vault, started in-process on a random
//! loopback port with its own temporary data directory (as zero2prod's
//! `spawn_app`), and talks to it over mutual TLS like any client.
//!
//! Every test runs once per backend ([`on_both_backends!`]): on SQLite in the
//! data directory, and on a fresh PostgreSQL database of its own. PostgreSQL
//! is found at `MNVAULT_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, the server that creates the
//! per-test databases). Without a reachable server a local run skips the
//! PostgreSQL half and says so once on standard error; with `CI` set it fails.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

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
use sqlx::{PgConnection, Row, SqliteConnection};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Runs each `async fn name(backend) { ... }` as two tests, `name::sqlite`
/// and `name::postgres`, from the same code.
#[macro_export]
macro_rules! on_both_backends {
    ($($(#[$meta:meta])* async fn $name:ident($backend:ident) $body:block)*) => {
        $(
            $(#[$meta])*
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                async fn run($backend: $crate::helpers::Backend) $body

                #[tokio::test]
                async fn sqlite() {
                    run($crate::helpers::Backend::Sqlite).await
                }

                #[tokio::test]
                async fn postgres() {
                    if let Some(backend) = $crate::helpers::Backend::postgres().await {
                        run(backend).await
                    }
                }
            }
        )*
    };
}

/// Where a test vault keeps its data.
#[derive(Clone)]
pub enum Backend {
    /// A SQLite file in the data directory.
    Sqlite,
    /// A fresh PostgreSQL database, dropped after the test.
    Postgres(Arc<PgDatabase>),
}

/// The PostgreSQL server that hosts the per-test databases.
fn postgres_server_url() -> String {
    std::env::var("MNVAULT_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

impl Backend {
    /// A fresh PostgreSQL database, or `None` when no server is reachable on
    /// a local run (said once on standard error). Under CI, a missing
    /// server fails the test: CI must never skip the PostgreSQL half.
    pub async fn postgres() -> Option<Backend> {
        let server = postgres_server_url();
        let mut admin = match PgConnection::connect(&server).await {
            Ok(admin) => admin,
            Err(error) if std::env::var_os("CI").is_none() => {
                static SAID: OnceLock<()> = OnceLock::new();
                SAID.get_or_init(|| {
                    // Written past the test harness's capture, so a local run shows it.
                    let _ = writeln!(
                        std::io::stderr(),
                        "\nSKIPPED: the PostgreSQL half of the suite (no server at {server}: {error}); set \
                         MNVAULT_TEST_POSTGRES_URL or start PostgreSQL. CI never skips it.\n"
                    );
                });
                return None;
            }
            Err(error) => panic!("CI must run the PostgreSQL half, but {server} is unreachable: {error}"),
        };
        let name = format!("mnvault_test_{}", rand::thread_rng().gen::<u64>());
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create test database");
        let (base, _) = server.rsplit_once('/').expect("a database URL");
        Some(Backend::Postgres(Arc::new(PgDatabase { url: format!("{base}/{name}"), server, name })))
    }

    /// The `database.url` setting for this backend, if not the default.
    pub fn database_url(&self) -> Option<String> {
        match self {
            Backend::Sqlite => None,
            Backend::Postgres(database) => Some(database.url.clone()),
        }
    }
}

/// A per-test PostgreSQL database; dropped (with its connections) when the
/// last vault using it is gone.
pub struct PgDatabase {
    /// Its URL.
    pub url: String,
    server: String,
    name: String,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop runs inside the test's runtime, so the clean-up gets its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&server).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await;
                }
            });
        })
        .join();
    }
}

/// A direct connection to a test vault's database, for tampering tests.
pub enum Db {
    /// The SQLite file.
    Sqlite(SqliteConnection),
    /// The PostgreSQL database.
    Postgres(PgConnection),
}

impl Db {
    /// Runs SQL that both backends understand (literals inline).
    pub async fn exec(&mut self, sql: &str) {
        match self {
            Db::Sqlite(conn) => sqlx::raw_sql(sql).execute(conn).await.map(|_| ()),
            Db::Postgres(conn) => sqlx::raw_sql(sql).execute(conn).await.map(|_| ()),
        }
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
    }

    /// The first column of the first row, as text.
    pub async fn text(&mut self, sql: &str) -> String {
        match self {
            Db::Sqlite(conn) => sqlx::query(sql).fetch_one(conn).await.map(|row| row.get::<String, _>(0)),
            Db::Postgres(conn) => sqlx::query(sql).fetch_one(conn).await.map(|row| row.get::<String, _>(0)),
        }
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
    }

    /// Makes every audit insert fail, as a full disk would.
    pub async fn break_audit_writes(&mut self) {
        match self {
            Db::Sqlite(_) => {
                self.exec(
                    "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_entries \
                     BEGIN SELECT RAISE(ABORT, 'audit disk full'); END",
                )
                .await
            }
            Db::Postgres(_) => {
                self.exec(
                    "CREATE FUNCTION refuse_audit() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'audit disk full'; \
                     END $$ LANGUAGE plpgsql; CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_entries \
                     FOR EACH ROW EXECUTE FUNCTION refuse_audit()",
                )
                .await
            }
        }
    }

    /// Undoes [`Db::break_audit_writes`].
    pub async fn repair_audit_writes(&mut self) {
        match self {
            Db::Sqlite(_) => self.exec("DROP TRIGGER refuse_audit").await,
            Db::Postgres(_) => {
                self.exec("DROP TRIGGER refuse_audit ON audit_entries; DROP FUNCTION refuse_audit()").await
            }
        }
    }

    /// Takes the lock every audited write needs, and keeps it until
    /// [`Db::release_write_lock`], as another process stuck mid-transaction would.
    pub async fn hold_write_lock(&mut self) {
        match self {
            Db::Sqlite(_) => self.exec("BEGIN IMMEDIATE").await,
            Db::Postgres(_) => self.exec("BEGIN; LOCK TABLE audit_chain_head IN ACCESS EXCLUSIVE MODE").await,
        }
    }

    /// Ends [`Db::hold_write_lock`].
    pub async fn release_write_lock(&mut self) {
        self.exec("ROLLBACK").await;
    }
}

/// A running vault and its data directory.
pub struct TestApp {
    /// `https://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The data directory (removed when the app is dropped).
    pub data_dir: Arc<TempDir>,
    /// Where its data lives.
    pub backend: Backend,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    context: Option<Arc<mnvault::service::VaultContext>>,
    /// Where its metrics are served, when `[metrics] listen` is set.
    pub metrics_addr: Option<std::net::SocketAddr>,
    reloader: Option<mnvault::reload::Reloader>,
}

/// A dev vault as `mnvault serve --dev` makes it: callers are the SPIFFE
/// IDs of their certificates ([`mnvault::dev_pki::dev_identity`]).
pub async fn spawn_dev_vault(backend: &Backend) -> TestApp {
    spawn_dev_vault_with(backend, |_| {}).await
}

/// [`spawn_dev_vault`] with the settings `configure` leaves.
pub async fn spawn_dev_vault_with(backend: &Backend, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let (settings, data_dir) = new_data_dir_as(backend, false, configure).await;
    start(settings, data_dir, backend.clone()).await
}

/// A dev vault in the compatibility mode (`identity.source =
/// "common-name"`): each dev principal is its certificate's Common Name,
/// granted the role of its name on every tenant. The suites written before
/// SPIFFE identities run here; `identity` covers the SPIFFE path.
pub async fn spawn_app(backend: &Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// [`spawn_app`] with the settings `configure` leaves.
pub async fn spawn_app_with(backend: &Backend, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let (settings, data_dir) = new_data_dir(backend, configure).await;
    start(settings, data_dir, backend.clone()).await
}

/// A fresh data directory of [`spawn_app`]'s kind on `backend`, initialised
/// with the settings `configure` leaves, and no vault serving it yet.
pub async fn new_data_dir(backend: &Backend, configure: impl FnOnce(&mut Settings)) -> (Settings, Arc<TempDir>) {
    new_data_dir_as(backend, true, configure).await
}

/// Each dev principal, by Common Name, with the role of its name on every tenant.
pub fn grant_by_common_name(settings: &mut Settings) {
    settings.identity.source = mnvault::config::IdentitySourceSetting::CommonName;
    for name in mnvault::dev_pki::DEV_PRINCIPALS {
        let role = mnvault::dev_pki::dev_identity(name).expect("a dev identity").role();
        let grant = mnvault::config::PrincipalSettings { roles: vec![role], tenants: vec!["*".into()] };
        settings.principals.insert(name.to_owned(), grant);
    }
}

async fn new_data_dir_as(
    backend: &Backend,
    by_common_name: bool,
    configure: impl FnOnce(&mut Settings),
) -> (Settings, Arc<TempDir>) {
    let data_dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let mut settings = datadir::dev_settings(data_dir.path());
    if by_common_name {
        grant_by_common_name(&mut settings);
    }
    settings.listen = "127.0.0.1:0".parse().unwrap();
    // Tests run at any hour: a release outside the default hours would add
    // an alert entry to logs whose entries they count. `alarms` sets its own.
    settings.alarms.release_hours = "off".into();
    if let Some(url) = backend.database_url() {
        settings.database.url = url;
    }
    configure(&mut settings);
    datadir::initialise(&settings).await.expect("initialise data dir");
    (settings, data_dir)
}

/// A second vault process (replica) serving the same data directory's keys
/// and the same database as `app`, on its own port. No second initialisation.
pub async fn spawn_replica(app: &TestApp) -> TestApp {
    let mut settings = Settings::load(app.path()).expect("settings");
    settings.listen = "127.0.0.1:0".parse().unwrap();
    start(settings, app.data_dir.clone(), app.backend.clone()).await
}

async fn start(settings: Settings, data_dir: Arc<TempDir>, backend: Backend) -> TestApp {
    let application = Application::build(&settings).await.expect("build vault");
    let context = Some(application.context());
    let metrics_addr = application.metrics_addr();
    let reloader = Some(application.reloader());
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
    let (shutdown, server) = (Some(shutdown), Some(server));
    TestApp { endpoint, data_dir, backend, shutdown, server, context, metrics_addr, reloader }
}

impl TestApp {
    /// A handle on a vault that serves `data_dir` at `endpoint` from elsewhere
    /// (another process): its clients, CLI and database, nothing to stop.
    pub fn serving_elsewhere(endpoint: String, data_dir: Arc<TempDir>, backend: Backend) -> TestApp {
        let (shutdown, server, context, metrics_addr, reloader) = (None, None, None, None, None);
        TestApp { endpoint, data_dir, backend, shutdown, server, context, metrics_addr, reloader }
    }

    /// Reloads the in-process vault's configuration, as SIGHUP does.
    pub fn reloader(&self) -> &mnvault::reload::Reloader {
        self.reloader.as_ref().expect("an in-process vault")
    }

    /// The in-process vault's core, to write what no call can (an audit
    /// entry of a given size).
    pub fn core(&self) -> &mnvault_core::VaultCore {
        &self.context.as_ref().expect("an in-process vault").core
    }

    /// How many stored objects failed their integrity check in this vault.
    pub fn integrity_failures(&self) -> u64 {
        self.context.as_ref().expect("an in-process vault").core.integrity_failures()
    }

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

    /// A direct connection to the vault's database, for tampering tests.
    pub async fn database(&self) -> Db {
        match &self.backend {
            Backend::Sqlite => {
                let options = SqliteConnectOptions::new().filename(self.database_path());
                Db::Sqlite(SqliteConnection::connect_with(&options).await.expect("open database"))
            }
            Backend::Postgres(database) => {
                Db::Postgres(PgConnection::connect(&database.url).await.expect("connect to the test database"))
            }
        }
    }

    /// Every audit entry (first page), listed as `auditor`. The listing's own
    /// entry is appended after it answers, so the last entry is the call before.
    pub async fn audit_entries(&self) -> Vec<mnvault_client::AuditEntry> {
        let request = mnvault_client::ListAuditEntriesRequest::default();
        self.client("auditor").await.list_audit_entries(request).await.unwrap().entries
    }

    /// Every row of every table of a PostgreSQL test database, as text, with
    /// `bytea` values (`\\x…` hex) decoded back to their bytes.
    pub async fn database_dump(&self) -> Vec<u8> {
        let Db::Postgres(mut conn) = self.database().await else { panic!("database_dump is for PostgreSQL") };
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        let mut dump = Vec::new();
        for table in tables {
            let rows: Vec<String> =
                sqlx::query_scalar(&format!("SELECT t::text FROM {table} t")).fetch_all(&mut conn).await.unwrap();
            for row in rows {
                dump.extend(decode_bytea_hex(&row));
                dump.push(b'\n');
            }
        }
        dump
    }

    /// The SQLite file (absent on PostgreSQL).
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

/// `text` with every `\\x<hex>` run replaced by the bytes it encodes.
fn decode_bytea_hex(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"\\x") {
            let hex: Vec<u8> = bytes[i + 2..].iter().copied().take_while(u8::is_ascii_hexdigit).collect();
            out.extend(
                hex.chunks_exact(2).map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap()),
            );
            i += 2 + hex.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
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

/// Panics unless the client's first call failed in the TLS handshake: for
/// a refused client certificate, either connecting or that call says so,
/// depending on when the client learns of it.
pub async fn assert_refused_at_handshake(what: &str, connected: Result<VaultClient, ClientError>) {
    let result = match connected {
        Ok(client) => client.list_purposes().await.map(|_| ()),
        Err(error) => Err(error),
    };
    match result.expect_err(what) {
        ClientError::Connect { .. } => {}
        // tonic reports a failed handshake as a transport error.
        ClientError::Refused { code, .. } => {
            assert!(matches!(code, Code::Unavailable | Code::Unknown), "{what}: {code:?}")
        }
        other => panic!("{what}: {other:?}"),
    }
}

/// The refusal's code, or a panic saying the call succeeded.
pub fn refusal<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (Code, String) {
    match result {
        Err(ClientError::Refused { code, message, .. }) => (code, message),
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

/// A gRPC channel with the certificate `principal` of `pki` (a directory
/// holding `ca.pem`, `<principal>.crt` and `.key`: the dev PKI, or what
/// `CertificateAuthority::issue` wrote), whose HTTP/2 windows are the
/// protocol's smallest, so that a stream the client does not read stalls
/// the server after a few messages instead of filling megabytes of buffers.
pub(crate) async fn narrow_channel_from(app: &TestApp, pki: &Path, principal: &str) -> tonic::transport::Channel {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let read = |name: String| std::fs::read(pki.join(name)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem".into())))
        .identity(Identity::from_pem(read(format!("{principal}.crt")), read(format!("{principal}.key"))));
    Channel::from_shared(app.endpoint.clone())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .http2_adaptive_window(false)
        .connect()
        .await
        .unwrap()
}

/// [`narrow_channel_from`] with the dev PKI's certificate `principal`.
pub(crate) async fn narrow_channel(app: &TestApp, principal: &str) -> tonic::transport::Channel {
    narrow_channel_from(app, &app.path().join(DEV_PKI_DIR), principal).await
}

/// Waits, with a deadline, until `client` hears that the whole vault's
/// health is `wanted`.
pub(crate) async fn wait_for_health(client: &VaultClient, wanted: mnvault_client::ServingStatus) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if client.health("").await.unwrap() == wanted {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "health never became {wanted:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A request of a raw `TokenizeStream` in tenant `demo`.
pub(crate) fn stream_request(number: String) -> mnvault_proto::v1::TokenizeRequest {
    use mnvault_proto::v1 as pb;
    pb::TokenizeRequest { tenant: "demo".into(), number, format: pb::TokenFormat::Opaque.into() }
}

/// A `TokenizeStream` over `channel` whose first record was answered with a
/// token: the sender for more records (see [`stream_request`]) and the answers.
pub(crate) async fn tokenize_stream_under_way(
    channel: tonic::transport::Channel,
) -> (
    tokio::sync::mpsc::Sender<mnvault_proto::v1::TokenizeRequest>,
    tonic::Streaming<mnvault_proto::v1::TokenizeStreamResponse>,
) {
    use mnvault_proto::v1 as pb;
    let (sender, requests) = tokio::sync::mpsc::channel(4);
    sender.send(stream_request(valid_number())).await.unwrap();
    let mut answers = pb::token_service_client::TokenServiceClient::new(channel)
        .tokenize_stream(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await
        .unwrap()
        .into_inner();
    let first = answers.message().await.unwrap().expect("the first record's answer");
    assert!(matches!(first.result, Some(pb::tokenize_stream_response::Result::Token(_))), "{first:?}");
    (sender, answers)
}

/// An export of tenant `demo` (15,000 records, pages enough to stall on a
/// client that does not read) under an approved job, started over
/// `channel` (a filer's): the chunks still to come and the first one.
pub(crate) async fn export_under_way(
    app: &TestApp,
    channel: tonic::transport::Channel,
) -> (tonic::Streaming<mnvault_proto::v1::ExportTenantChunk>, mnvault_proto::v1::ExportTenantChunk) {
    use futures::StreamExt as _;
    use mnvault_proto::v1 as pb;
    let payroll = app.client("payroll").await;
    let tokenized: Vec<_> =
        payroll.tokenize_stream("demo", TokenFormat::Opaque, valid_numbers(15_000)).await.unwrap().collect().await;
    assert!(tokenized.iter().all(Result::is_ok));
    let job = NewFilingJob { purpose: "tenant-export".into(), ..filing_job(&[]) };
    let job = app.client("requester").await.create_filing_job(job).await.unwrap().job_id;
    app.client("approver").await.approve_filing_job(&job).await.unwrap();
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let request = pb::ExportTenantRequest { job_id: job, recipient };
    let mut chunks =
        pb::admin_service_client::AdminServiceClient::new(channel).export_tenant(request).await.unwrap().into_inner();
    let first = chunks.message().await.unwrap().expect("a first chunk");
    assert!(first.records < first.total);
    (chunks, first)
}
