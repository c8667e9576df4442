//! Tenant offboarding, as the README tells an operator: `mnvault tenant
//! export` hands a client its tokens and numbers encrypted to its age key,
//! under an approved job of purpose tenant-export; `mnvault tenant shred`
//! destroys the tenant's keys and numbers, and its history still verifies.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser as _;
use futures::StreamExt as _;
use mnvault_client::{Code, NewFilingJob, TokenFormat, VaultClient};

use crate::helpers::{approved_job, filing_job, refusal, spawn_app, tokenize_fresh, valid_numbers, Backend, TestApp};

/// An export job for tenant `demo` (no tokens: the whole tenant).
fn export_job() -> NewFilingJob {
    NewFilingJob { purpose: "tenant-export".into(), ..filing_job(&[]) }
}

/// An export job created by `requester` and approved by `approver`.
async fn approved_export_job(app: &TestApp) -> mnvault_client::FilingJob {
    let created = app.client("requester").await.create_filing_job(export_job()).await.unwrap();
    app.client("approver").await.approve_filing_job(&created.job_id).await.unwrap()
}

/// Tokenizes `numbers` in `tenant` over one stream; (token, number) pairs.
async fn tokenize_all(client: &VaultClient, tenant: &str, numbers: Vec<String>) -> BTreeMap<String, String> {
    let results: Vec<_> =
        client.tokenize_stream(tenant, TokenFormat::Opaque, numbers.clone()).await.unwrap().collect().await;
    let tokens = results.into_iter().map(|r| r.unwrap().result.unwrap());
    tokens.zip(numbers).collect()
}

/// The plaintext of an age file, decrypted with `identity`.
fn decrypt(identity: &age::x25519::Identity, file: &[u8]) -> String {
    let decryptor = age::Decryptor::new(file).expect("an age file");
    let mut reader = decryptor.decrypt(std::iter::once(identity as &dyn age::Identity)).expect("our identity opens it");
    let mut plain = String::new();
    reader.read_to_string(&mut plain).expect("a whole file");
    plain
}

/// `token<TAB>number` lines as a map.
fn lines(plain: &str) -> BTreeMap<String, String> {
    plain
        .lines()
        .map(|line| {
            let (token, number) = line.split_once('\t').expect("token<TAB>number");
            (token.to_owned(), number.to_owned())
        })
        .collect()
}

/// Exports through the CLI as `principal` into a new file of the data directory.
async fn export_with_cli(app: &TestApp, principal: &str, job: &str, recipient: &str) -> anyhow::Result<PathBuf> {
    let out = app.path().join(format!("export-{}.age", rand::random::<u64>()));
    let path = out.display().to_string();
    let args = ["tenant", "export", "--tenant", "demo", "--job", job, "--recipient", recipient, "--out", &path];
    app.cli(&[&args[..], &["--as", principal][..]].concat()).await?;
    Ok(out)
}

/// Exports through the client library; every chunk, or the refusal.
async fn export(
    client: &VaultClient,
    job: &str,
    recipient: &str,
) -> Result<Vec<mnvault_client::offboarding::ExportTenantChunk>, mnvault_client::ClientError> {
    let chunks: Vec<_> = client.export_tenant(job, recipient).await?.collect().await;
    chunks.into_iter().collect()
}

/// Waits until the vault's clock has passed `ms`, so that what comes next
/// is stamped after it.
async fn wait_past(ms: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while mnvault_core::clock::now_ms() <= ms {
        assert!(Instant::now() < deadline, "the clock does not move");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn ms(at: &Option<prost_types::Timestamp>) -> i64 {
    at.as_ref().map(|at| at.seconds * 1000 + i64::from(at.nanos) / 1_000_000).expect("a time")
}

on_both_backends! {
    async fn an_export_decrypts_to_exactly_its_tenants_tokens_and_numbers_once(backend) {
        let app = spawn_app(&backend).await;
        app.client("admin").await.create_tenant("other", "Other").await.unwrap();
        let payroll = app.client("payroll").await;
        // More than one page (1,000 records), so the export runs in several transactions.
        let expected = tokenize_all(&payroll, "demo", valid_numbers(1_234)).await;
        let others = tokenize_all(&payroll, "other", valid_numbers(5)).await;
        let job = approved_export_job(&app).await;
        wait_past(ms(&job.created_at)).await;
        // Created after the job: not part of it.
        let late = tokenize_all(&payroll, "demo", valid_numbers(1)).await;

        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public().to_string();
        let file = export_with_cli(&app, "filer", &job.job_id, &recipient).await.unwrap();
        let bytes = std::fs::read(&file).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        for number in expected.values().take(20) {
            assert!(!bytes.windows(12).any(|w| w == number.as_bytes()), "a number in clear in the export file");
        }
        let exported = lines(&decrypt(&identity, &bytes));
        assert_eq!(exported, expected, "exactly the tenant's tokens and numbers as of the job");
        assert!(late.keys().chain(others.keys()).all(|token| !exported.contains_key(token)));

        // Audited page by page, naming every token once, and counted: the job exported.
        let entries = app.audit_entries().await;
        let pages: Vec<_> =
            entries.iter().filter(|e| e.operation == "admin.export-tenant" && e.outcome == "ok").collect();
        assert_eq!(pages.len(), 2, "two pages");
        assert!(pages.iter().all(|e| e.job_id == job.job_id && e.tenant == "demo" && e.principal == "filer"));
        assert_eq!(pages.iter().map(|e| e.record_count).sum::<u64>(), 1_234);
        let mut named: Vec<&String> = pages.iter().flat_map(|e| &e.tokens).collect();
        named.sort();
        assert_eq!(named, expected.keys().collect::<Vec<_>>());

        let again = export_with_cli(&app, "filer", &job.job_id, &recipient).await.unwrap_err();
        assert!(format!("{again:#}").contains("has already exported"), "{again:#}");
        let filer = app.client("filer").await;
        let (code, message) = refusal(filer.detokenize(&job.job_id, vec![]).await);
        assert_eq!(code, Code::FailedPrecondition, "{message}");
        assert!(message.contains("tenant export"), "{message}");
        let verified = app.cli(&["audit", "verify"]).await.unwrap();
        assert!(verified.starts_with("audit chain intact"), "{verified}");
    }

    async fn an_export_needs_an_approved_export_job_a_filer_and_an_age_key(backend) {
        let app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 2).await;
        let recipient = age::x25519::Identity::generate().to_public().to_string();
        let (requester, filer) = (app.client("requester").await, app.client("filer").await);

        // An export job lists no tokens.
        let listed = NewFilingJob { purpose: "tenant-export".into(), ..filing_job(&tokens) };
        assert_eq!(refusal(requester.create_filing_job(listed).await).0, Code::InvalidArgument);

        let pending = requester.create_filing_job(export_job()).await.unwrap();
        let (code, message) = refusal(export(&filer, &pending.job_id, &recipient).await);
        assert_eq!(code, Code::FailedPrecondition, "{message}");
        assert!(message.contains("has not been approved"), "{message}");

        let withholding = approved_job(&app, &tokens, 1).await;
        let (code, message) = refusal(export(&filer, &withholding, &recipient).await);
        assert_eq!(code, Code::FailedPrecondition, "{message}");
        assert!(message.contains("declares purpose withholding-slip"), "{message}");

        let job = approved_export_job(&app).await.job_id;
        for principal in ["requester", "approver", "admin", "payroll"] {
            let (code, message) = refusal(export(&app.client(principal).await, &job, &recipient).await);
            assert_eq!(code, Code::PermissionDenied, "{principal}: {message}");
        }
        for malformed in ["", "age1notakey", "AGE-SECRET-KEY-1QQQQ", tokens[0].as_str()] {
            let (code, message) = refusal(export(&filer, &job, malformed).await);
            assert_eq!(code, Code::InvalidArgument, "{message}");
            assert!(malformed.len() <= 4 || !message.contains(malformed), "{message}");
        }
        // None of that used the job.
        let chunks = export(&filer, &job, &recipient).await.unwrap();
        assert_eq!(chunks.last().map(|c| (c.records, c.total)), Some((2, 2)));

        let refused: Vec<_> = app
            .audit_entries()
            .await
            .into_iter()
            .filter(|e| e.operation == "admin.export-tenant" && e.outcome != "ok")
            .map(|e| e.outcome)
            .collect();
        assert_eq!(refused.len(), 2 + 4 + 4, "every refusal is audited: {refused:?}");
    }

    async fn an_export_whose_audit_entry_cannot_be_written_releases_nothing(backend) {
        let app = spawn_app(&backend).await;
        tokenize_fresh(&app, 3).await;
        let job = approved_export_job(&app).await.job_id;
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public().to_string();
        let filer = app.client("filer").await;
        let mut db = app.database().await;
        db.break_audit_writes().await;
        let (code, message) = refusal(export(&filer, &job, &recipient).await);
        assert_eq!(code, Code::Unavailable, "{message}");
        assert!(message.contains("audit log could not be written"), "{message}");
        db.repair_audit_writes().await;
        // Nothing was counted: the job still exports, once.
        let file = export_with_cli(&app, "filer", &job, &recipient).await.unwrap();
        assert_eq!(lines(&decrypt(&identity, &std::fs::read(file).unwrap())).len(), 3);
    }

    async fn a_shred_destroys_keys_and_numbers_and_the_history_still_verifies(backend) {
        let app = spawn_app(&backend).await;
        app.client("admin").await.create_tenant("other", "Other").await.unwrap();
        let tokens = tokenize_fresh(&app, 4).await;
        let open = approved_job(&app, &tokens, 1).await;
        // An export job that exported does not hold a shred back.
        let export_job_id = approved_export_job(&app).await.job_id;
        let recipient = age::x25519::Identity::generate().to_public().to_string();
        export_with_cli(&app, "filer", &export_job_id, &recipient).await.unwrap();

        let refused = app.cli(&["tenant", "shred", "--tenant", "demo", "--yes", "--as", "admin"]).await.unwrap_err();
        assert!(format!("{refused:#}").contains(&format!("open filing job(s) ({open})")), "{refused:#}");
        let (code, _) = refusal(app.client("payroll").await.shred_tenant("demo").await);
        assert_eq!(code, Code::PermissionDenied, "an admin's call");
        app.client("requester").await.cancel_filing_job(&open).await.unwrap();

        let shredded = app.cli(&["tenant", "shred", "--tenant", "demo", "--yes", "--as", "admin"]).await.unwrap();
        assert!(shredded.contains("tenant demo shredded at") && shredded.contains("4 sealed number(s) deleted"), "{shredded}");

        // Nothing of the tenant can be opened: no key, no sealed number.
        let mut db = app.database().await;
        let count = |table: &str| format!("SELECT CAST(COUNT(*) AS TEXT) FROM {table} WHERE tenant = 'demo'");
        assert_eq!(db.text(&count("tenant_record_keys")).await, "0");
        assert_eq!(db.text(&count("records")).await, "0");
        assert_eq!(db.text("SELECT CAST(length(index_key_wrapped) AS TEXT) FROM tenants WHERE tenant = 'demo'").await, "0");
        assert_eq!(db.text(&count("records").replace("'demo'", "'other'")).await, "0");
        assert_ne!(db.text("SELECT CAST(COUNT(*) AS TEXT) FROM tenant_record_keys WHERE tenant = 'other'").await, "0");

        // Every call for it is refused, saying so and since when.
        let (payroll, requester, filer) =
            (app.client("payroll").await, app.client("requester").await, app.client("filer").await);
        let shredded_refusals = [
            refusal(payroll.tokenize("demo", &valid_numbers(1)[0], TokenFormat::Opaque).await),
            refusal(requester.create_filing_job(filing_job(&tokens)).await),
            refusal(filer.detokenize(&open, vec![]).await),
            refusal(export(&filer, &export_job_id, &recipient).await),
        ];
        for (code, message) in shredded_refusals {
            assert_eq!(code, Code::FailedPrecondition, "{message}");
            assert!(message.contains("tenant \"demo\" was shredded at 20"), "{message}");
        }
        // Other tenants go on.
        payroll.tokenize("other", &valid_numbers(1)[0], TokenFormat::Opaque).await.unwrap();
        let again = app.cli(&["tenant", "shred", "--tenant", "demo", "--yes", "--as", "admin"]).await.unwrap_err();
        assert!(format!("{again:#}").contains("already shredded"), "{again:#}");

        let verified = app.cli(&["audit", "verify"]).await.unwrap();
        assert!(verified.starts_with("audit chain intact") && verified.contains("stored state intact"), "{verified}");
        let entries = app.audit_entries().await;
        let shreds: Vec<_> = entries.iter().filter(|e| e.operation == "admin.shred-tenant").collect();
        let summary: Vec<_> = shreds.iter().map(|e| (e.outcome.as_str(), e.principal.as_str(), e.record_count)).collect();
        assert_eq!(summary, [("denied", "admin", 0), ("denied", "payroll", 0), ("ok", "admin", 4), ("denied", "admin", 0)]);
        assert!(shreds.iter().all(|e| e.tenant == "demo"));
    }

    async fn a_shred_without_yes_needs_the_tenants_name_typed(backend) {
        let app = spawn_app(&backend).await;
        tokenize_fresh(&app, 1).await;
        let shred = |typed: &'static str| {
            let app = &app;
            async move {
                let data_dir = app.path().display().to_string();
                let argv = ["mnvault", "tenant", "shred", "--tenant", "demo", "--as", "admin"];
                let argv = [&argv[..], &["--endpoint", app.endpoint.as_str(), "--data-dir", data_dir.as_str()][..]].concat();
                let cli = mnvault::cli::Cli::try_parse_from(argv).unwrap();
                let mnvault::cli::Command::Tenant { command: mnvault::cli::TenantCommand::Shred(args) } = cli.command else {
                    panic!("parsed as a shred")
                };
                let mut out = Vec::new();
                let mut input = std::io::Cursor::new(typed.as_bytes());
                mnvault::cli::offboarding::shred(args, &cli.data_dir, &mut input, &mut out).await.map(|()| out)
            }
        };
        for typed in ["", "dem\n", "other\n"] {
            let refused = shred(typed).await.unwrap_err();
            assert!(refused.to_string().contains("nothing was shredded"), "{refused}");
        }
        tokenize_fresh(&app, 1).await;
        assert!(app.audit_entries().await.iter().all(|e| e.operation != "admin.shred-tenant"), "no call was made");
        let out = shred("demo\n").await.unwrap();
        assert!(String::from_utf8(out).unwrap().contains("tenant demo shredded"));
    }
}

/// The README's answer for backups: a backup taken before a shred still
/// holds the tenant's wrapped keys; once the root key is rotated and the old
/// one destroyed, nothing opens them. (SQLite: `mnvault backup`.)
#[tokio::test]
async fn a_backup_from_before_a_shred_is_unreadable_once_the_root_key_is_rotated_away() {
    use mnvault::config::{RootKeySettings, Settings};
    use mnvault_keys::{WrapContext, WrappedKey};

    let mut app = spawn_app(&Backend::Sqlite).await;
    tokenize_fresh(&app, 3).await;
    let backup = app.path().join("before-shred.tar");
    app.cli(&["backup", "--out", &backup.display().to_string()]).await.unwrap();
    app.cli(&["tenant", "shred", "--tenant", "demo", "--yes", "--as", "admin"]).await.unwrap();
    app.stop().await;

    let (index_key, record_keys) = backup_tenant_keys(&backup, app.path()).await;
    assert_eq!(record_keys.len(), 1, "the backup holds demo's keys");
    let opens = |provider: &dyn mnvault_keys::RootKeyProvider| {
        provider
            .unwrap(&WrappedKey::from_bytes(index_key.clone()), &WrapContext::TenantIndexKey { tenant: "demo" })
            .is_ok()
            && record_keys.iter().all(|(version, key)| {
                let context = WrapContext::TenantRecordKey { tenant: "demo", version: *version };
                provider.unwrap(&WrappedKey::from_bytes(key.clone()), &context).is_ok()
            })
    };
    let settings = Settings::load(app.path()).unwrap();
    assert!(opens(mnvault::startup::root_key_provider(&settings).unwrap().as_ref()), "the old root key opens them");

    // Rotate the root key (README, "Keys"), then destroy the old one.
    let mut settings = Settings::load(app.path()).unwrap();
    let old = settings.root_key.clone();
    settings.root_key =
        RootKeySettings { previous: vec![old.clone()], ..RootKeySettings::file(PathBuf::from("root-2.key")) };
    settings.save().unwrap();
    app.cli(&["root-key", "init"]).await.unwrap();
    app.cli(&["root-key", "rotate"]).await.unwrap();
    let mut settings = Settings::load(app.path()).unwrap();
    settings.root_key.previous.clear();
    settings.save().unwrap();
    std::fs::remove_file(settings.resolve(&old.file)).unwrap();

    let current = mnvault::startup::root_key_provider(&settings).unwrap();
    assert!(!opens(current.as_ref()), "the current root key opens none of the backup's keys of demo");
    let verified = app.cli(&["audit", "verify"]).await.unwrap();
    assert!(verified.starts_with("audit chain intact"), "{verified}");
}

/// Demo's wrapped index key and record keys in a backup file.
async fn backup_tenant_keys(backup: &Path, scratch: &Path) -> (Vec<u8>, Vec<(u32, Vec<u8>)>) {
    use sqlx::{Connection as _, Row as _};
    let database = scratch.join("backup-copy.db");
    let mut archive = tar::Archive::new(std::fs::File::open(backup).unwrap());
    let mut found = false;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some(mnvault::backup::DATABASE_ENTRY) {
            entry.unpack(&database).unwrap();
            found = true;
        }
    }
    assert!(found, "the backup holds a database");
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&database).read_only(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
    let index_key: Vec<u8> = sqlx::query("SELECT index_key_wrapped FROM tenants WHERE tenant = 'demo'")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    let record_keys = sqlx::query("SELECT version, wrapped_key FROM tenant_record_keys WHERE tenant = 'demo'")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get::<i64, _>(0) as u32, row.get::<Vec<u8>, _>(1)))
        .collect();
    (index_key, record_keys)
}

on_both_backends! {
    /// A shred takes the tenant's retention rows with its records: no later
    /// purge "deletes" what the shred destroyed, nor lists it in a certificate.
    async fn a_shred_takes_the_tenants_retention_rows_with_it(backend) {
        let app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 3).await;
        let admin = app.client("admin").await;
        let request = mnvault_client::retention::SetRetentionRequest {
            tenant: "demo".into(),
            tokens,
            delete_after: "2020-01-01".into(),
            ..Default::default()
        };
        admin.set_retention(request).await.unwrap();
        let count = |table: &'static str| {
            let app = &app;
            async move { app.database().await.text(&format!("SELECT CAST(count(*) AS TEXT) FROM {table}")).await }
        };
        assert_eq!(count("retention").await, "3");
        app.cli(&["tenant", "shred", "--tenant", "demo", "--yes", "--as", "admin"]).await.unwrap();
        assert_eq!((count("retention").await, count("records").await), ("0".to_owned(), "0".to_owned()));
        app.cli(&["purge", "--as", "admin"]).await.unwrap();
        assert_eq!(count("tombstones").await, "0");
        assert!(app.audit_entries().await.iter().all(|e| e.operation != "retention.delete"));
    }
}
