//! An attacker's review of tenant offboarding (export and shred): each test
//! guards one way in that was tried, named for what it guards.

use std::collections::BTreeMap;
use std::io::Read as _;

use futures::StreamExt as _;
use mnvault_client::{Code, NewFilingJob, TokenFormat, VaultClient};

use crate::helpers::{
    filing_job, refusal, spawn_app, spawn_app_with, spawn_replica, tokenize_fresh, valid_numbers, Backend, Db, TestApp,
};

fn export_job() -> NewFilingJob {
    NewFilingJob { purpose: "tenant-export".into(), ..filing_job(&[]) }
}

async fn approved_export_job(app: &TestApp) -> String {
    let created = app.client("requester").await.create_filing_job(export_job()).await.unwrap();
    app.client("approver").await.approve_filing_job(&created.job_id).await.unwrap();
    created.job_id
}

async fn tokenize_all(client: &VaultClient, tenant: &str, numbers: Vec<String>) -> BTreeMap<String, String> {
    let results: Vec<_> =
        client.tokenize_stream(tenant, TokenFormat::Opaque, numbers.clone()).await.unwrap().collect().await;
    results.into_iter().map(|r| r.unwrap().result.unwrap()).zip(numbers).collect()
}

async fn export(
    client: &VaultClient,
    job: &str,
    recipient: &str,
) -> Result<Vec<mnvault_client::offboarding::ExportTenantChunk>, mnvault_client::ClientError> {
    let chunks: Vec<_> = client.export_tenant(job, recipient).await?.collect().await;
    chunks.into_iter().collect()
}

fn decrypt(identity: &age::x25519::Identity, file: &[u8]) -> BTreeMap<String, String> {
    let decryptor = age::Decryptor::new(file).expect("an age file");
    let mut reader = decryptor.decrypt(std::iter::once(identity as &dyn age::Identity)).expect("our identity opens it");
    let mut plain = String::new();
    reader.read_to_string(&mut plain).expect("a whole file");
    plain
        .lines()
        .map(|line| {
            let (token, number) = line.split_once('\t').expect("token<TAB>number");
            (token.to_owned(), number.to_owned())
        })
        .collect()
}

fn hex(bytes: &str) -> Vec<u8> {
    (0..bytes.len()).step_by(2).map(|i| u8::from_str_radix(&bytes[i..i + 2], 16).unwrap()).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

on_both_backends! {
    /// A replica whose cached keys predate a rotation and rewrap made
    /// elsewhere exports the rewrapped records (as Detokenize does), instead
    /// of calling them tampered and spending the job.
    async fn an_export_opens_records_rewrapped_on_another_replica(backend) {
        let first = spawn_app(&backend).await;
        let second = spawn_replica(&first).await;
        let expected = tokenize_all(&first.client("payroll").await, "demo", valid_numbers(5)).await;
        // The second replica caches demo's keys (version 1 only).
        let cached = tokenize_all(&second.client("payroll").await, "demo", valid_numbers(1)).await;
        let expected: BTreeMap<_, _> = expected.into_iter().chain(cached).collect();
        first.client("admin").await.rotate_tenant_key("demo").await.unwrap();
        first.cli(&["keys", "rewrap", "--tenant", "demo", "--as", "admin"]).await.unwrap();

        let job = approved_export_job(&first).await;
        let identity = age::x25519::Identity::generate();
        let chunks = export(&second.client("filer").await, &job, &identity.to_public().to_string()).await;
        let chunks = chunks.unwrap_or_else(|error| panic!("the export failed: {error}"));
        let file: Vec<u8> = chunks.iter().flat_map(|c| c.chunk.clone()).collect();
        assert_eq!(decrypt(&identity, &file), expected);
        assert_eq!(second.integrity_failures(), 0);
    }

    /// The database says "shredded" (a writer set `shredded_at`): an
    /// admin's shred destroys the keys all the same, instead of answering
    /// "already shredded" and leaving them.
    async fn a_shred_destroys_the_keys_even_of_a_tenant_the_database_calls_shredded(backend) {
        let app = spawn_app(&backend).await;
        tokenize_fresh(&app, 2).await;
        let mut db = app.database().await;
        // Numbers gone too (as a writer may delete rows): nothing "left" but the keys.
        db.exec("DELETE FROM records WHERE tenant = 'demo'").await;
        db.exec("UPDATE tenants SET shredded_at = 1 WHERE tenant = 'demo'").await;
        let shredded = app.client("admin").await.shred_tenant("demo").await.unwrap();
        assert_eq!(shredded.records_deleted, 0);
        assert_eq!(app.integrity_failures(), 1, "a mark with keys still stored is tampering");
        assert_eq!(db.text("SELECT CAST(COUNT(*) AS TEXT) FROM tenant_record_keys WHERE tenant = 'demo'").await, "0");
        assert_eq!(db.text("SELECT CAST(length(index_key_wrapped) AS TEXT) FROM tenants WHERE tenant = 'demo'").await, "0");
    }

    /// Every way a database writer could widen or repeat an export fails
    /// closed: a record of another tenant moved in, a later record backdated,
    /// the job's state set back after it exported (also across a restart).
    async fn a_database_writer_cannot_widen_or_repeat_an_export(backend) {
        let app = spawn_app(&backend).await;
        app.client("admin").await.create_tenant("other", "Other").await.unwrap();
        let payroll = app.client("payroll").await;
        let mine = tokenize_all(&payroll, "demo", valid_numbers(3)).await;
        let theirs = tokenize_all(&payroll, "other", valid_numbers(1)).await;
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public().to_string();
        let filer = app.client("filer").await;
        let mut db = app.database().await;

        let job = approved_export_job(&app).await;
        let (their_token, _) = theirs.iter().next().unwrap();
        db.exec(&format!("UPDATE records SET tenant = 'demo' WHERE token = '{their_token}'")).await;
        let (code, message) = refusal(export(&filer, &job, &recipient).await);
        assert_eq!(code, Code::DataLoss, "{message}");
        db.exec(&format!("UPDATE records SET tenant = 'other' WHERE token = '{their_token}'")).await;

        let job = approved_export_job(&app).await;
        let late = tokenize_all(&payroll, "demo", valid_numbers(1)).await;
        let (late_token, _) = late.iter().next().unwrap();
        db.exec(&format!("UPDATE records SET created_at = 0 WHERE token = '{late_token}'")).await;
        let (code, message) = refusal(export(&filer, &job, &recipient).await);
        assert_eq!(code, Code::DataLoss, "{message}");

        db.exec(&format!("DELETE FROM records WHERE token = '{late_token}'")).await;

        // The job's state row saved before its export and put back after.
        let job = approved_export_job(&app).await;
        let hex_tag = match &db {
            Db::Sqlite(_) => "hex(state_tag)",
            Db::Postgres(_) => "encode(state_tag, 'hex')",
        };
        let saved_seq = db.text(&format!("SELECT CAST(state_seq AS TEXT) FROM filing_jobs WHERE job_id = '{job}'")).await;
        let saved_tag = db.text(&format!("SELECT {} FROM filing_jobs WHERE job_id = '{job}'", hex_tag)).await;
        let file: Vec<u8> = export(&filer, &job, &recipient).await.unwrap().into_iter().flat_map(|c| c.chunk).collect();
        assert_eq!(decrypt(&identity, &file), mine, "exactly demo's records as of the job");
        let set_back = match &db {
            Db::Sqlite(_) => format!("UPDATE filing_jobs SET state_seq = {saved_seq}, state_tag = x'{saved_tag}' WHERE job_id = '{job}'"),
            Db::Postgres(_) => format!(
                "UPDATE filing_jobs SET state_seq = {saved_seq}, state_tag = decode('{saved_tag}', 'hex') WHERE job_id = '{job}'"
            ),
        };
        db.exec(&set_back).await;
        let (code, message) = refusal(export(&filer, &job, &recipient).await);
        assert_eq!(code, Code::DataLoss, "set back in this process: {message}");
        // A new process walks the chain from the start and sees it too.
        let mut app = app;
        app.stop().await;
        let app = spawn_replica(&app).await;
        let (code, message) = refusal(export(&app.client("filer").await, &job, &recipient).await);
        assert_eq!(code, Code::DataLoss, "set back, seen by a new process: {message}");
    }

    /// A cancelled or expired export job exports nothing.
    async fn a_cancelled_export_job_exports_nothing(backend) {
        let app = spawn_app(&backend).await;
        tokenize_fresh(&app, 1).await;
        let recipient = age::x25519::Identity::generate().to_public().to_string();
        let cancelled = approved_export_job(&app).await;
        app.client("requester").await.cancel_filing_job(&cancelled).await.unwrap();
        let (code, message) = refusal(export(&app.client("filer").await, &cancelled, &recipient).await);
        assert_eq!(code, Code::FailedPrecondition, "{message}");
        assert!(message.contains("was cancelled"), "{message}");
    }

    /// A filer of another tenant, an export job of another tenant, a
    /// Detokenize with an export job, an expired or cancelled job: refused,
    /// and each refusal is audited.
    async fn exports_by_the_wrong_caller_or_job_are_refused_and_audited(backend) {
        let app = spawn_app_with(&backend, |settings| {
            settings.principals.get_mut("filer").unwrap().tenants = vec!["other".into()];
        })
        .await;
        app.client("admin").await.create_tenant("other", "Other").await.unwrap();
        tokenize_fresh(&app, 2).await;
        let recipient = age::x25519::Identity::generate().to_public().to_string();
        let filer = app.client("filer").await;
        let job = approved_export_job(&app).await;
        let (code, message) = refusal(export(&filer, &job, &recipient).await);
        assert_eq!(code, Code::PermissionDenied, "{message}");
        let (code, message) = refusal(filer.detokenize(&job, vec![]).await);
        assert_eq!(code, Code::PermissionDenied, "{message}");

        let entries = app.audit_entries().await;
        let refused: Vec<_> = entries.iter().filter(|e| e.operation == "admin.export-tenant").collect();
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].outcome, "denied");
    }

    /// Recipients that are not an age X25519 key (ssh, plugin, a megabyte
    /// of text) are refused as INVALID_ARGUMENT, never echoed, and spend
    /// nothing of the job.
    async fn an_export_recipient_of_another_kind_or_size_is_refused_unrepeated(backend) {
        let app = spawn_app(&backend).await;
        tokenize_fresh(&app, 1).await;
        let job = approved_export_job(&app).await;
        let filer = app.client("filer").await;
        let big = format!("age1{}", "q".repeat(1_000_000));
        let ssh = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHsKLqeplhpW+uObz5dvMgjz1OxfM/XXUB+VHtZ6isGN alice@example";
        let plugin = "age1yubikey1qwt50d05nh5vutpdzmlg5wn80xq5negm4uj9ghv0snvdd3yysf5yw3rhl3t";
        for malformed in [big.as_str(), ssh, plugin] {
            let (code, message) = refusal(export(&filer, &job, malformed).await);
            assert_eq!(code, Code::InvalidArgument, "{message}");
            assert!(message.len() < 300 && !message.contains(&malformed[..20]), "{message}");
        }
        let identity = age::x25519::Identity::generate();
        let chunks = export(&filer, &job, &identity.to_public().to_string()).await.unwrap();
        assert_eq!(chunks.last().map(|c| c.records), Some(1));
    }

    /// A client that opens an export and stops reading holds no database
    /// lock: others write meanwhile.
    async fn a_stalled_export_holds_no_write_lock(backend) {
        let app = spawn_app(&backend).await;
        tokenize_all(&app.client("payroll").await, "demo", valid_numbers(3_500)).await;
        let job = approved_export_job(&app).await;
        let identity = age::x25519::Identity::generate();
        let filer = app.client("filer").await;
        let mut stream = Box::pin(filer.export_tenant(&job, &identity.to_public().to_string()).await.unwrap());
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.total, 3_500);
        // Not reading on; a tokenize completes.
        let fresh = tokenize_all(&app.client("payroll").await, "demo", valid_numbers(1)).await;
        assert_eq!(fresh.len(), 1);
        drop(stream);
    }

    /// A client that drops an export before its end leaves an entry that
    /// says the export is incomplete (its pages' entries alone read as a
    /// whole export).
    async fn a_cut_export_is_audited_as_incomplete(backend) {
        let app = spawn_app(&backend).await;
        tokenize_all(&app.client("payroll").await, "demo", valid_numbers(12_000)).await;
        let job = approved_export_job(&app).await;
        let identity = age::x25519::Identity::generate();
        let filer = app.client("filer").await;
        let mut stream = Box::pin(filer.export_tenant(&job, &identity.to_public().to_string()).await.unwrap());
        stream.next().await.unwrap().unwrap();
        drop(stream);
        drop(filer);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let entries = app.audit_entries().await;
            let cut = entries.iter().find(|e| e.operation == "admin.export-tenant" && e.outcome == "failed");
            if let Some(cut) = cut {
                assert!(cut.reason.contains("the export is incomplete"), "{cut:?}");
                assert_eq!((cut.job_id.as_str(), cut.principal.as_str()), (job.as_str(), "filer"));
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no entry says the export was cut");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// SQLite: after a shred, neither the database file nor its WAL holds the
/// tenant's wrapped keys or sealed numbers (a copy of the files taken then,
/// with a root key stolen later, opens nothing).
#[tokio::test]
async fn a_shred_leaves_no_wrapped_key_or_sealed_number_in_the_sqlite_files() {
    let app = spawn_app(&Backend::Sqlite).await;
    tokenize_fresh(&app, 3).await;
    let mut db = app.database().await;
    let key = hex(&db.text("SELECT hex(wrapped_key) FROM tenant_record_keys WHERE tenant = 'demo'").await);
    let index_key = hex(&db.text("SELECT hex(index_key_wrapped) FROM tenants WHERE tenant = 'demo'").await);
    let sealed = hex(&db.text("SELECT hex(sealed) FROM records WHERE tenant = 'demo' LIMIT 1").await);
    drop(db);
    app.client("admin").await.shred_tenant("demo").await.unwrap();
    let path = app.database_path();
    let mut files = std::fs::read(&path).unwrap();
    files.extend(std::fs::read(format!("{}-wal", path.display())).unwrap_or_default());
    assert!(!contains(&files, &key), "a wrapped record key is left in the SQLite files");
    assert!(!contains(&files, &index_key), "the wrapped index key is left in the SQLite files");
    assert!(!contains(&files, &sealed), "a sealed number is left in the SQLite files");
}
