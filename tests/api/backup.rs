//! Backup and restore, on each backend as the README says to do them: on
//! SQLite `mnvault backup` and `mnvault restore`, on PostgreSQL `pg_dump` and
//! `pg_restore` followed by `mnvault restore --adopt`. The drill: back up
//! while tokenizing, wipe, restore, detokenize every number acknowledged
//! before the backup began, verify.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mnvault_client::{Code, TokenFormat};
use secrecy::ExposeSecret;
use sqlx::{Connection as _, PgConnection};
use tokio::task::JoinHandle;

use crate::helpers::{
    approved_job, filing_job, full_width, refusal, spawn_app, spawn_replica, tokenize_fresh, valid_number,
    valid_numbers, Backend, PgDatabase, TestApp,
};

/// How long a test waits for the background tokenizer at most.
const WAIT: Duration = Duration::from_secs(60);

/// Tokenizes fresh numbers as `payroll` until stopped, keeping every
/// acknowledged (token, number) in order.
struct Tokenizer {
    acknowledged: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Tokenizer {
    async fn start(app: &TestApp) -> Self {
        let payroll = app.client("payroll").await;
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (kept, stopped) = (acknowledged.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !stopped.load(Ordering::Relaxed) {
                let number = valid_number();
                // A backup must not disturb serving: every call succeeds.
                let token =
                    payroll.tokenize("demo", &number, TokenFormat::Opaque).await.expect("tokenize while backing up");
                kept.lock().unwrap().push((token, number));
            }
        });
        Self { acknowledged, stop, task }
    }

    fn count(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    /// Waits until at least `count` numbers were acknowledged.
    async fn wait_for(&self, count: usize) {
        tokio::time::timeout(WAIT, async {
            while self.count() < count {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the tokenizer did not reach {count} numbers"));
    }

    /// Stops and returns everything acknowledged.
    async fn stop(self) -> Vec<(String, String)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the tokenizer never failed");
        Arc::try_unwrap(self.acknowledged).unwrap().into_inner().unwrap()
    }
}

/// A PostgreSQL client tool, or `None` on a local run without it (said on
/// standard error). Under CI a missing tool fails the test.
fn pg_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found =
        std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]).map(|dir| dir.join(name)).find(|p| p.is_file());
    match found {
        Some(tool) => Some(tool),
        None if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: {name} not found; the PostgreSQL backup drill needs the PostgreSQL client tools");
            None
        }
        None => panic!("CI must run the PostgreSQL backup drill, but {name} is not installed"),
    }
}

/// Runs a tool off the runtime (the vault and the tokenizer go on) and fails
/// the test with its standard error if it fails.
async fn run_tool(tool: PathBuf, args: Vec<String>) {
    let shown = format!("{} {}", tool.display(), args.join(" "));
    let output = tokio::task::spawn_blocking(move || std::process::Command::new(tool).args(args).output())
        .await
        .unwrap()
        .unwrap_or_else(|error| panic!("{shown}: {error}"));
    assert!(output.status.success(), "{shown}: {}", String::from_utf8_lossy(&output.stderr));
}

/// Backs up `app`'s database to `file` the way the README says for its
/// backend; `None` when the PostgreSQL tools are missing on a local run.
/// `compress`: pg_dump's default compression (off to search the bytes).
async fn take_backup(app: &TestApp, file: &Path, compress: bool) -> Option<()> {
    match &app.backend {
        Backend::Sqlite => {
            let written = app.cli(&["backup", "--out", &file.display().to_string()]).await.unwrap();
            assert!(written.starts_with("backup written: "), "{written}");
            assert!(written.contains("audit chain intact: "), "{written}");
        }
        Backend::Postgres(database) => {
            let mut args = vec!["-Fc".to_owned(), "-f".to_owned(), file.display().to_string()];
            if !compress {
                args.push("-Z0".into());
            }
            args.push(database.url.clone());
            run_tool(pg_tool("pg_dump")?, args).await;
        }
    }
    Some(())
}

/// The server the per-test databases live on.
fn postgres_server_url() -> String {
    std::env::var("MNVAULT_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Drops `database` and creates it again, empty.
async fn recreate(database: &PgDatabase) {
    let name = database.url.rsplit('/').next().unwrap();
    let mut admin = PgConnection::connect(&postgres_server_url()).await.unwrap();
    for sql in [format!("DROP DATABASE {name} WITH (FORCE)"), format!("CREATE DATABASE {name}")] {
        sqlx::query(&sql).execute(&mut admin).await.unwrap_or_else(|error| panic!("{sql}: {error}"));
    }
}

/// Wipes the stopped `app`'s database and restores it from `file` the way
/// the README says for its backend; returns what mnvault printed.
async fn wipe_and_restore(app: &TestApp, file: &Path) -> String {
    match &app.backend {
        Backend::Sqlite => {
            for suffix in ["", "-wal", "-shm"] {
                let path = PathBuf::from(format!("{}{suffix}", app.database_path().display()));
                if path.exists() {
                    std::fs::remove_file(path).unwrap();
                }
            }
            app.cli(&["restore", "--from", &file.display().to_string()]).await.unwrap()
        }
        Backend::Postgres(database) => {
            recreate(database).await;
            let pg_restore = pg_tool("pg_restore").expect("pg_restore beside pg_dump");
            let args = ["--no-owner", "--exit-on-error", "-d", &database.url, &file.display().to_string()];
            run_tool(pg_restore, args.map(str::to_owned).to_vec()).await;
            // Until it is adopted, this host's watermark shows the database
            // rolled back: a vault on it serves auditors of every tenant only.
            let mut unadopted = spawn_replica(app).await;
            let tokenized =
                unadopted.client("payroll").await.tokenize("demo", &valid_number(), TokenFormat::Opaque).await;
            let (code, message) = refusal(tokenized);
            assert_eq!(code, Code::DataLoss, "{message}");
            let (code, message) = refusal(unadopted.client("requester").await.create_filing_job(filing_job(&[])).await);
            assert_eq!(code, Code::DataLoss, "{message}");
            unadopted.stop().await;
            app.cli(&["restore", "--adopt"]).await.unwrap()
        }
    }
}

/// The number of lost entries a restore reported, and whether it is only a
/// lower bound ("at least", counted from the watermark).
fn lost_entries(report: &str) -> (u64, bool) {
    let lost = report.split_once("LOST: ").unwrap_or_else(|| panic!("no loss reported: {report}")).1;
    let (at_least, lost) = match lost.strip_prefix("at least ") {
        Some(rest) => (true, rest),
        None => (false, lost),
    };
    (lost.split_whitespace().next().unwrap().parse().unwrap(), at_least)
}

on_both_backends! {
    async fn a_restore_cancels_open_jobs_so_nothing_is_released_twice(backend) {
        let mut app = spawn_app(&backend).await;
        let numbers = valid_numbers(1);
        let token = app.client("payroll").await.tokenize("demo", &numbers[0], TokenFormat::Opaque).await.unwrap();
        let tokens = vec![token.clone()];
        let job = approved_job(&app, &tokens, 1).await;
        let files = tempfile::tempdir().unwrap();
        let file = files.path().join("vault.backup");
        if take_backup(&app, &file, true).await.is_none() {
            return;
        }
        let released = app.client("filer").await.detokenize(&job, tokens.clone()).await.unwrap();
        assert_eq!(released[0].number.expose_secret(), numbers[0].as_str());
        // On PostgreSQL, more decisions after the backup, so that the entries
        // the unadopted vault appends (`wipe_and_restore`) do not reach the
        // position of this host's watermark (that is refused as a fork). On
        // SQLite the restore's cancellation takes that position (below).
        let more = if matches!(backend, Backend::Sqlite) { 0 } else { 3 };
        for _ in 0..more {
            approved_job(&app, &tokens, 1).await;
        }
        app.stop().await;

        let watermark = app.path().join(mnvault::watermark::WATERMARK_FILE);
        let verified_before = std::fs::read(&watermark).unwrap();

        // The backup's release count for the job is 0, and its tags are valid.
        let report = wipe_and_restore(&app, &file).await;
        let cancelled = report.lines().find(|line| line.starts_with("cancelled ")).unwrap_or_else(|| panic!("{report}"));
        assert!(cancelled.contains(&job), "{report}");

        let mut restored = spawn_replica(&app).await;
        let filer = restored.client("filer").await;
        let (code, message) = refusal(filer.detokenize(&job, tokens.clone()).await);
        assert_eq!(code, Code::FailedPrecondition, "released again after the restore: {message}");
        // The cancellation is audited, by the restore.
        let entries = restored.audit_entries().await;
        assert!(
            entries.iter().any(|entry| entry.job_id == job && entry.principal == mnvault::backup::RESTORE_PRINCIPAL),
            "no audited cancellation of {job}"
        );
        // Another host that had verified as far, adopting after this one
        // (PostgreSQL: every host adopts): on SQLite its watermark points at
        // this restore's cancellation, which is no fork.
        if matches!(backend, Backend::Sqlite) {
            restored.stop().await;
            std::fs::write(&watermark, &verified_before).unwrap();
            let adopted = restored.cli(&["restore", "--adopt"]).await.unwrap();
            assert!(adopted.contains("no open filing jobs to cancel"), "{adopted}");
        }
        let restored = spawn_replica(&app).await;
        let filer = restored.client("filer").await;
        // The way on: a new job, approved anew by a second person.
        let again = approved_job(&restored, &tokens, 1).await;
        let released = filer.detokenize(&again, tokens).await.unwrap();
        assert_eq!(released[0].number.expose_secret(), numbers[0].as_str());
    }

    async fn the_drill_back_up_while_tokenizing_wipe_restore_detokenize_verify(backend) {
        let mut app = spawn_app(&backend).await;
        let tokenizer = Tokenizer::start(&app).await;
        tokenizer.wait_for(20).await;
        let files = tempfile::tempdir().unwrap();
        let file = files.path().join("vault.backup");

        let acknowledged_before = tokenizer.count();
        if take_backup(&app, &file, true).await.is_none() {
            tokenizer.stop().await;
            return;
        }
        let acknowledged_after = tokenizer.count();
        tokenizer.wait_for(acknowledged_after + 5).await;
        let acknowledged = tokenizer.stop().await;
        // A decision after the backup moves this host's watermark past it.
        let late: Vec<String> = acknowledged[acknowledged_after..].iter().map(|(token, _)| token.clone()).collect();
        approved_job(&app, &late[..1], 1).await;
        app.stop().await;

        let report = wipe_and_restore(&app, &file).await;
        assert!(report.contains("audit chain intact: "), "{report}");
        assert!(report.contains("stored state intact: "), "{report}");
        // The database was wiped: only the watermark counts, and only to the last decision.
        let (lost, at_least) = lost_entries(&report);
        assert!(lost >= 2 && at_least, "the late tokens and the approval are lost: {report}");
        assert!(report.contains("Tokens issued after the backup may also be missing"), "{report}");

        let restored = spawn_replica(&app).await;
        let before = &acknowledged[..acknowledged_before];
        let tokens: Vec<String> = before.iter().map(|(token, _)| token.clone()).collect();
        let job = approved_job(&restored, &tokens, 1).await;
        let released = restored.client("filer").await.detokenize(&job, tokens.clone()).await.unwrap();
        assert_eq!(released.len(), before.len());
        for ((token, number), out) in before.iter().zip(&released) {
            assert_eq!((&out.token, out.number.expose_secret()), (token, number.as_str()));
        }
        // What was acknowledged after the backup finished is not in it.
        let payroll = restored.client("payroll").await;
        assert_eq!(refusal(payroll.describe_token("demo", late.last().unwrap()).await).0, Code::NotFound);

        let verified = restored.cli(&["audit", "verify"]).await.unwrap();
        assert!(verified.starts_with("audit chain intact: "), "{verified}");
        assert!(verified.contains("stored state intact: "), "{verified}");
    }

    async fn a_backup_holds_no_root_key_no_tls_key_and_no_number(backend) {
        let app = spawn_app(&backend).await;
        let numbers = valid_numbers(50);
        let payroll = app.client("payroll").await;
        let mut tokens = Vec::new();
        for number in &numbers {
            tokens.push(payroll.tokenize("demo", number, TokenFormat::Opaque).await.unwrap());
        }
        let files = tempfile::tempdir().unwrap();
        let file = files.path().join("vault.backup");
        if take_backup(&app, &file, false).await.is_none() {
            return;
        }
        let bytes = std::fs::read(&file).unwrap();
        // Not vacuous: the tokens are in it.
        assert!(contains(&bytes, tokens[0].as_bytes()), "the backup does not hold the vault's data");

        let root_key = std::fs::read_to_string(app.path().join(mnvault::datadir::ROOT_KEY_FILE)).unwrap();
        let encoded = root_key.lines().nth(1).expect("the key line");
        let raw = data_encoding::BASE64.decode(encoded.as_bytes()).unwrap();
        assert_eq!(raw.len(), 32);
        for rendering in [raw.clone(), encoded.as_bytes().to_vec(), data_encoding::HEXLOWER.encode(&raw).into_bytes()] {
            assert!(!contains(&bytes, &rendering), "the backup holds the root key");
        }
        for private in ["server.key", "ca.key", "payroll.key"] {
            let pem = std::fs::read_to_string(app.path().join(mnvault::datadir::DEV_PKI_DIR).join(private)).unwrap();
            let body = pem.lines().nth(1).unwrap();
            assert!(!contains(&bytes, body.as_bytes()), "the backup holds {private}");
        }
        for number in &numbers {
            assert!(!contains(&bytes, number.as_bytes()), "the backup holds a number");
            assert!(!contains(&bytes, full_width(number).as_bytes()), "the backup holds a number (full width)");
        }

        match &backend {
            Backend::Sqlite => {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "the backup file is {mode:03o}");
                // Nothing staged is left beside it, and an existing file is never replaced.
                assert_eq!(std::fs::read_dir(files.path()).unwrap().count(), 1);
                let again = app.cli(&["backup", "--out", &file.display().to_string()]).await.unwrap_err();
                assert!(format!("{again:#}").contains("already exists"), "{again:#}");
                assert_eq!(std::fs::read(&file).unwrap(), bytes);
            }
            Backend::Postgres(_) => {
                // mnvault's own backup is for the embedded store; it points to the PostgreSQL route.
                let other = files.path().join("other.backup").display().to_string();
                let refused = format!("{:#}", app.cli(&["backup", "--out", &other]).await.unwrap_err());
                assert!(refused.contains("pg_dump") && refused.contains("Backup and restore"), "{refused}");
                let from = file.display().to_string();
                let refused = format!("{:#}", app.cli(&["restore", "--from", &from]).await.unwrap_err());
                assert!(refused.contains("pg_restore") && refused.contains("--adopt"), "{refused}");
                assert!(!Path::new(&other).exists());
            }
        }
    }

    async fn a_database_of_another_vault_is_refused_as_foreign(backend) {
        let mut app = spawn_app(&backend).await;
        let mine = tokenize_fresh(&app, 2).await;
        let other_backend = match &backend {
            Backend::Sqlite => Backend::Sqlite,
            Backend::Postgres(_) => Backend::postgres().await.expect("the server answered a moment ago"),
        };
        let other = spawn_app(&other_backend).await;
        tokenize_fresh(&other, 2).await;
        app.stop().await;
        let refused = match &other_backend {
            Backend::Sqlite => {
                let files = tempfile::tempdir().unwrap();
                let file = files.path().join("other.backup");
                take_backup(&other, &file, true).await.unwrap();
                app.cli(&["restore", "--force", "--from", &file.display().to_string()]).await.unwrap_err()
            }
            Backend::Postgres(database) => {
                app.cli(&["restore", "--adopt", "--database-url", &database.url]).await.unwrap_err()
            }
        };
        let refused = format!("{refused:#}");
        assert!(refused.contains("belongs to another vault"), "{refused}");
        // This vault's own database is untouched and serves.
        let restarted = spawn_replica(&app).await;
        restarted.client("payroll").await.describe_token("demo", &mine[0]).await.unwrap();
    }

    async fn adopt_refuses_a_database_that_does_not_verify_and_keeps_the_watermark(backend) {
        let mut app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 3).await;
        let job = approved_job(&app, &tokens, 1).await;
        app.client("filer").await.detokenize(&job, tokens).await.unwrap();
        app.stop().await;
        let watermark = app.path().join(mnvault::watermark::WATERMARK_FILE);
        let kept = std::fs::read(&watermark).expect("a decision wrote the watermark");

        let mut db = app.database().await;
        let principal = db.text("SELECT principal FROM audit_entries WHERE seq = 2").await;
        db.exec("UPDATE audit_entries SET principal = 'mallory' WHERE seq = 2").await;
        let refused = format!("{:#}", app.cli(&["restore", "--adopt"]).await.unwrap_err());
        assert!(refused.contains("does not verify") && refused.contains("audit chain is broken at"), "{refused}");
        assert_eq!(std::fs::read(&watermark).unwrap(), kept, "a refused adoption moved the watermark");
        // Refused before any job was cancelled: no mark is left.
        let pending = mnvault::backup::restore_pending_path(app.path());
        assert!(!pending.exists(), "a refused adoption left a mark");

        db.exec(&format!("UPDATE audit_entries SET principal = '{principal}' WHERE seq = 2")).await;
        let adopted = app.cli(&["restore", "--adopt"]).await.unwrap();
        assert!(adopted.contains("nothing this host verified is lost"), "{adopted}");
        assert!(!pending.exists(), "a finished adoption left its mark");
        let restarted = spawn_replica(&app).await;
        tokenize_fresh(&restarted, 1).await;
    }

    async fn an_unfinished_restore_refuses_the_start_until_adopt_finishes_it(backend) {
        let mut app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 2).await;
        let job = approved_job(&app, &tokens, 1).await;
        app.stop().await;
        // As a restore killed after it began changing the data directory leaves it.
        let pending = mnvault::backup::restore_pending_path(app.path());
        std::fs::write(&pending, "a restore or adoption began\n").unwrap();
        assert_start_refused_until_adopted(&app).await;
        // A refused adoption does not take away a mark it did not write.
        let mut db = app.database().await;
        let principal = db.text("SELECT principal FROM audit_entries WHERE seq = 2").await;
        db.exec("UPDATE audit_entries SET principal = 'mallory' WHERE seq = 2").await;
        let refused = format!("{:#}", app.cli(&["restore", "--adopt"]).await.unwrap_err());
        assert!(refused.contains("does not verify"), "{refused}");
        assert!(pending.exists(), "a refused adoption removed the mark of an unfinished restore");
        assert_start_refused_until_adopted(&app).await;
        db.exec(&format!("UPDATE audit_entries SET principal = '{principal}' WHERE seq = 2")).await;

        let adopted = app.cli(&["restore", "--adopt"]).await.unwrap();
        assert!(adopted.contains(&format!("cancelled 1 open filing jobs: {job}")), "{adopted}");
        assert!(!pending.exists(), "a finished adoption left its mark");
        let restarted = spawn_replica(&app).await;
        let (code, _) = refusal(restarted.client("filer").await.detokenize(&job, tokens).await);
        assert_eq!(code, Code::FailedPrecondition);
    }
}

/// Asserts that no vault of `app`'s data directory starts, and that the
/// refusal says how to finish.
async fn assert_start_refused_until_adopted(app: &TestApp) {
    let settings = mnvault::config::Settings::load(app.path()).unwrap();
    let refused = mnvault::startup::Application::build(&settings).await.err().expect("the start is refused");
    let refused = refused.to_string();
    assert!(
        refused.contains("a restore or adopt did not finish") && refused.contains("run `mnvault restore --adopt`"),
        "{refused}"
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// A stopped SQLite vault with a few tokens, and a backup of it.
async fn backed_up_sqlite_vault() -> (TestApp, Vec<String>, tempfile::TempDir, PathBuf) {
    let app = spawn_app(&Backend::Sqlite).await;
    let tokens = tokenize_fresh(&app, 5).await;
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("vault.backup");
    take_backup(&app, &file, true).await.unwrap();
    (app, tokens, files, file)
}

#[tokio::test]
async fn a_damaged_backup_is_refused_and_says_why() {
    let (mut app, tokens, files, file) = backed_up_sqlite_vault().await;
    app.stop().await;
    std::fs::remove_file(app.database_path()).unwrap();
    let intact = std::fs::read(&file).unwrap();
    let database_at = intact.windows(16).position(|w| w == b"SQLite format 3\0").expect("the database copy");
    let manifest_seq = intact.windows(17).position(|w| w == b"audit_head_seq = ").expect("the manifest") + 17;

    let flipped = |at: usize, to: u8| {
        let mut bytes = intact.clone();
        bytes[at] = if bytes[at] == to { to ^ 1 } else { to };
        bytes
    };
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("a byte of the database", flipped(database_at + 4096 + 100, 0x5a), "SHA-256"),
        ("the head its manifest records", flipped(manifest_seq, b'9'), "tag does not verify"),
        ("a tar header", flipped(100, 0x5a), "does not read"),
        ("cut in half", intact[..intact.len() / 2].to_vec(), "cut short"),
        ("not a backup", b"just some text\n".repeat(100), "does not read"),
    ];
    for (what, bytes, why) in cases {
        let damaged = files.path().join("damaged.backup");
        std::fs::write(&damaged, bytes).unwrap();
        let refused = app.cli(&["restore", "--from", &damaged.display().to_string()]).await.unwrap_err();
        let refused = format!("{refused:#}");
        assert!(refused.contains("is damaged or not an mnvault backup"), "{what}: {refused}");
        assert!(refused.contains(why), "{what}: {refused}");
        // Nothing was put in place, nothing staged was left behind.
        let left: Vec<String> = std::fs::read_dir(app.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !left.iter().any(|name| name.starts_with("vault.db") || name.starts_with(".vault.db")),
            "{what}: {left:?}"
        );
    }

    // The intact file restores.
    app.cli(&["restore", "--from", &file.display().to_string()]).await.unwrap();
    let restored = spawn_replica(&app).await;
    restored.client("payroll").await.describe_token("demo", &tokens[0]).await.unwrap();
}

#[tokio::test]
async fn a_restore_never_replaces_a_database_unasked_nor_under_a_running_vault() {
    let (mut app, tokens, _files, file) = backed_up_sqlite_vault().await;
    let later = tokenize_fresh(&app, 1).await;
    let from = file.display().to_string();

    let refused = format!("{:#}", app.cli(&["restore", "--from", &from]).await.unwrap_err());
    assert!(refused.contains("already holds a database") && refused.contains("--force"), "{refused}");
    let refused = format!("{:#}", app.cli(&["restore", "--force", "--from", &from]).await.unwrap_err());
    assert!(refused.contains("a vault is serving"), "{refused}");
    let refused = format!("{:#}", app.cli(&["restore", "--adopt"]).await.unwrap_err());
    assert!(refused.contains("a vault is serving"), "{refused}");
    // The vault went on serving what it had.
    app.client("payroll").await.describe_token("demo", &later[0]).await.unwrap();

    app.stop().await;
    // As when the vault's process ends: nothing of it keeps the database open
    // (a stopped in-process vault's store lives on inside `app`).
    let data_dir = app.data_dir.clone();
    drop(app);
    let app = TestApp::serving_elsewhere(String::new(), data_dir, Backend::Sqlite);
    let report = app.cli(&["restore", "--force", "--from", &from]).await.unwrap();
    let kept = report.split_once("is kept as ").unwrap_or_else(|| panic!("{report}")).1.lines().next().unwrap();
    assert!(Path::new(kept).is_file(), "{report}");
    // The replaced database is counted: the token issued after the backup
    // is lost, though no decision moved the watermark.
    let (lost, at_least) = lost_entries(&report);
    assert!(lost >= 1 && !at_least, "{report}");

    let restored = spawn_replica(&app).await;
    let payroll = restored.client("payroll").await;
    payroll.describe_token("demo", &tokens[0]).await.unwrap();
    assert_eq!(refusal(payroll.describe_token("demo", &later[0]).await).0, Code::NotFound);
}

/// A backup file holding `database` under a manifest whose size and
/// SHA-256 match it: what someone without the root key can make.
fn craft_backup(path: &Path, database: &[u8]) {
    use sha2::Digest as _;
    let manifest = format!(
        "format = \"mnvault-backup\"\nversion = 1\ncreated_at = \"2025-01-01T00:00:00Z\"\nvault = \"{}\"\n\
         audit_head_seq = 1\naudit_head_hash = \"{}\"\ndatabase_bytes = {}\ndatabase_sha256 = \"{}\"\ntag = \"{}\"\n",
        "00".repeat(32),
        "00".repeat(32),
        database.len(),
        hex::encode(sha2::Sha256::digest(database)),
        "00".repeat(32),
    );
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in [("manifest.toml", manifest.as_bytes()), ("vault.db", database)] {
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o600);
        header.set_size(bytes.len() as u64);
        builder.append_data(&mut header, name, bytes).unwrap();
    }
    builder.into_inner().unwrap().sync_all().unwrap();
}

#[tokio::test]
async fn a_crafted_backup_with_a_view_is_refused_and_its_text_never_repeated() {
    let (mut app, _tokens, files, _file) = backed_up_sqlite_vault().await;
    app.stop().await;
    let number = valid_numbers(1).remove(0);
    // The vault's own database, with its system keys replaced by a view
    // whose name and column are a number.
    let hostile = files.path().join("hostile.db");
    std::fs::copy(app.database_path(), &hostile).unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&hostile);
    let mut db = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
    for sql in [
        "PRAGMA journal_mode = DELETE".to_owned(),
        "DROP TABLE system_keys".to_owned(),
        format!("CREATE VIEW system_keys AS SELECT '{number}' AS \"{number}\""),
        format!("CREATE VIEW \"{number}\" AS SELECT 1"),
    ] {
        sqlx::query(&sql).execute(&mut db).await.unwrap_or_else(|error| panic!("{sql}: {error}"));
    }
    db.close().await.unwrap();
    let crafted = files.path().join("crafted.backup");
    craft_backup(&crafted, &std::fs::read(&hostile).unwrap());

    let refused = app.cli(&["restore", "--force", "--from", &crafted.display().to_string()]).await.unwrap_err();
    let refused = format!("{refused:#}");
    assert!(refused.contains("is damaged or not an mnvault backup") && refused.contains("views"), "{refused}");
    assert!(!refused.contains(&number), "the refusal repeats the file's text");
    assert!(!refused.contains(&number[..11]), "the refusal repeats the file's text");
    // The vault's own database is untouched and serves.
    let restarted = spawn_replica(&app).await;
    restarted.client("payroll").await.tokenize("demo", &valid_number(), TokenFormat::Opaque).await.unwrap();
}

#[tokio::test]
async fn a_database_from_before_a_migration_is_brought_up_to_date_when_adopted() {
    let mut app = spawn_app(&Backend::Sqlite).await;
    app.stop().await;
    // As a database of an mnvault before request ids (migration 3); only
    // `mnvault init`'s entries are in it, which carry no request id.
    let mut db = app.database().await;
    db.exec("DROP INDEX audit_entries_request_id").await;
    db.exec("ALTER TABLE audit_entries DROP COLUMN request_id").await;
    db.exec("DELETE FROM _sqlx_migrations WHERE version = 3").await;
    let adopted = app.cli(&["restore", "--adopt"]).await.unwrap();
    assert!(adopted.contains("audit chain intact: "), "{adopted}");
    let restored = spawn_replica(&app).await;
    let token = tokenize_fresh(&restored, 1).await;
    let job = approved_job(&restored, &token, 1).await;
    restored.client("filer").await.detokenize(&job, token).await.unwrap();
}

#[tokio::test]
async fn a_malformed_watermark_refuses_the_start_and_the_restore() {
    let (mut app, _tokens, _files, file) = backed_up_sqlite_vault().await;
    app.stop().await;
    let watermark = app.path().join(mnvault::watermark::WATERMARK_FILE);
    std::fs::write(&watermark, "mnvault-chain-watermark v1\nnot a head\n").unwrap();

    let settings = mnvault::config::Settings::load(app.path()).unwrap();
    let refused = mnvault::startup::Application::build(&settings).await.err().expect("the start is refused");
    let refused = refused.to_string();
    assert!(refused.contains(&watermark.display().to_string()) && refused.contains("not in its format"), "{refused}");

    for args in [vec!["restore", "--adopt"], vec!["restore", "--force", "--from", file.to_str().unwrap()]] {
        let refused = format!("{:#}", app.cli(&args).await.unwrap_err());
        assert!(refused.contains("not in its format") && refused.contains("--adopt"), "{args:?}: {refused}");
    }
    assert_eq!(std::fs::read_to_string(&watermark).unwrap(), "mnvault-chain-watermark v1\nnot a head\n");
}

#[tokio::test]
async fn a_restore_by_another_user_than_the_data_directorys_owner_is_refused() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: only root can give the data directory another owner");
        return;
    }
    let (mut app, _tokens, _files, file) = backed_up_sqlite_vault().await;
    app.stop().await;
    let nobody = Some(rustix::process::Uid::from_raw(65534));
    rustix::fs::chown(app.path(), nobody, None).unwrap();
    for args in [vec!["restore", "--adopt"], vec!["restore", "--force", "--from", file.to_str().unwrap()]] {
        let refused = format!("{:#}", app.cli(&args).await.unwrap_err());
        assert!(refused.contains("belongs to user id 65534"), "{args:?}: {refused}");
    }
    rustix::fs::chown(app.path(), Some(rustix::process::geteuid()), None).unwrap();
    app.cli(&["restore", "--adopt"]).await.unwrap();
}
