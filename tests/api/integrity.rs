//! Stored data: sealed records bound to their token, audit failure stops a
//! release, and no number in any file of the data directory.

use std::path::Path;

use mnvault_client::{Code, NewFilingJob, TokenFormat};
use time::{Duration, OffsetDateTime};

use crate::helpers::{full_width, refusal, spawn_app, spawn_app_with, valid_numbers, TestApp};

async fn approved_job(app: &TestApp, tokens: &[String]) -> String {
    let job = NewFilingJob {
        tenant: "demo".into(),
        purpose: "salary-payment-report".into(),
        tokens: tokens.to_vec(),
        expires_at: OffsetDateTime::now_utc() + Duration::hours(1),
        max_releases_per_token: 1,
        note: String::new(),
    };
    let created = app.client("requester").await.create_filing_job(job).await.unwrap();
    app.client("approver").await.approve_filing_job(&created.job_id).await.unwrap();
    created.job_id
}

#[tokio::test]
async fn a_sealed_record_copied_onto_another_token_fails_to_open() {
    let app = spawn_app().await;
    let payroll = app.client("payroll").await;
    let numbers = valid_numbers(2);
    let a = payroll.tokenize("demo", &numbers[0], TokenFormat::Opaque).await.unwrap();
    let b = payroll.tokenize("demo", &numbers[1], TokenFormat::Opaque).await.unwrap();
    let mut db = app.database().await;
    // An attacker with database access swaps the two sealed records.
    sqlx::query(
        "UPDATE records SET sealed = CASE token WHEN ?1 THEN (SELECT sealed FROM records WHERE token = ?2) \
         ELSE (SELECT sealed FROM records WHERE token = ?1) END WHERE token IN (?1, ?2)",
    )
    .bind(&a)
    .bind(&b)
    .execute(&mut db)
    .await
    .unwrap();
    let job = approved_job(&app, &[a.clone()]).await;
    let (code, message) = refusal(app.client("filer").await.detokenize(&job, vec![]).await);
    assert_eq!(code, Code::DataLoss);
    assert!(message.contains(&a) && message.contains("integrity"), "{message}");
    // The failed release consumed nothing and is in the audit log.
    let shown = app.client("requester").await.get_filing_job(&job).await.unwrap();
    assert_eq!(shown.tokens[0].releases, 0);
    let (outcome,): (String,) =
        sqlx::query_as("SELECT outcome FROM audit_entries WHERE operation = 'filing.detokenize' ORDER BY seq DESC LIMIT 1")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(outcome, "failed");
}

#[tokio::test]
async fn when_the_audit_entry_cannot_be_written_nothing_is_released() {
    let app = spawn_app().await;
    let number = &valid_numbers(1)[0];
    let token = app.client("payroll").await.tokenize("demo", number, TokenFormat::Opaque).await.unwrap();
    let job = approved_job(&app, &[token.clone()]).await;
    let mut db = app.database().await;
    sqlx::query("CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_entries BEGIN SELECT RAISE(ABORT, 'audit disk full'); END")
        .execute(&mut db)
        .await
        .unwrap();
    let filer = app.client("filer").await;
    let (code, message) = refusal(filer.detokenize(&job, vec![]).await);
    assert_eq!(code, Code::Unavailable);
    assert!(message.contains("audit log could not be written"), "{message}");
    assert!(!message.contains(number.as_str()));
    sqlx::query("DROP TRIGGER refuse_audit").execute(&mut db).await.unwrap();
    // The refused release was rolled back whole: the token can still be released once.
    let released = filer.detokenize(&job, vec![]).await.unwrap();
    assert_eq!(released.len(), 1);
}

#[tokio::test]
async fn a_release_fails_promptly_when_the_database_stays_locked() {
    let app = spawn_app_with(|settings| settings.database.write_timeout_ms = 300).await;
    let token = app.client("payroll").await.tokenize("demo", &valid_numbers(1)[0], TokenFormat::Opaque).await.unwrap();
    let job = approved_job(&app, &[token]).await;
    let mut db = app.database().await;
    // Another process holds the write lock and does not let go.
    sqlx::query("BEGIN IMMEDIATE").execute(&mut db).await.unwrap();
    let filer = app.client("filer").await;
    // A hang would show as the client's own deadline; the vault answers UNAVAILABLE first.
    let answer = tokio::time::timeout(std::time::Duration::from_secs(60), filer.detokenize(&job, vec![])).await;
    let (code, message) = refusal(answer.expect("the vault answered"));
    assert_eq!(code, Code::Unavailable, "{message}");
    sqlx::query("ROLLBACK").execute(&mut db).await.unwrap();
    assert_eq!(filer.detokenize(&job, vec![]).await.unwrap().len(), 1);
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn assert_no_number_in(dir: &Path, numbers: &[String]) {
    let files = files_under(dir);
    assert!(files.iter().any(|f| f.ends_with("vault.db")), "scanned {files:?}");
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        for number in numbers {
            for form in [number.clone(), full_width(number)] {
                assert!(
                    !bytes.windows(form.len()).any(|w| w == form.as_bytes()),
                    "{} holds a number in {} form",
                    file.display(),
                    if form.is_ascii() { "ASCII" } else { "full-width" }
                );
            }
        }
    }
}

#[tokio::test]
async fn no_file_in_the_data_directory_holds_a_number() {
    let mut app = spawn_app().await;
    let numbers = valid_numbers(1_000);
    let payroll = app.client("payroll").await;
    use futures::StreamExt;
    let tokens: Vec<String> = payroll
        .tokenize_stream("demo", TokenFormat::Opaque, numbers.clone())
        .await
        .unwrap()
        .map(|r| r.unwrap().result.unwrap())
        .collect()
        .await;
    // Also a few single calls (full-width input), and a release.
    for number in &numbers[..10] {
        payroll.tokenize("demo", &full_width(number), TokenFormat::LegacyDigits).await.unwrap();
    }
    let job = approved_job(&app, &tokens[..20]).await;
    assert_eq!(app.client("filer").await.detokenize(&job, vec![]).await.unwrap().len(), 20);
    // While running (WAL holds the latest pages) and after a clean stop (checkpointed).
    assert_no_number_in(app.path(), &numbers);
    app.stop().await;
    assert_no_number_in(app.path(), &numbers);
}
