//! Stored data: sealed records bound to their token, audit failure stops a
//! release, and no number in any file of the data directory.

use std::collections::HashSet;
use std::path::Path;

use mnvault_client::{Code, TokenFormat};

use crate::helpers::{approved_job, full_width, refusal, spawn_app, spawn_app_with, valid_numbers, Backend, TestApp};

on_both_backends! {
    async fn a_sealed_record_copied_onto_another_token_fails_to_open(backend) {
        let app = spawn_app(&backend).await;
        let payroll = app.client("payroll").await;
        let numbers = valid_numbers(2);
        let a = payroll.tokenize("demo", &numbers[0], TokenFormat::Opaque).await.unwrap();
        let b = payroll.tokenize("demo", &numbers[1], TokenFormat::Opaque).await.unwrap();
        let mut db = app.database().await;
        // An attacker with database access swaps the two sealed records.
        db.exec(&format!(
            "UPDATE records SET sealed = CASE token WHEN '{a}' THEN (SELECT sealed FROM records WHERE token = '{b}') \
             ELSE (SELECT sealed FROM records WHERE token = '{a}') END WHERE token IN ('{a}', '{b}')"
        ))
        .await;
        let job = approved_job(&app, std::slice::from_ref(&a), 1).await;
        let (code, message) = refusal(app.client("filer").await.detokenize(&job, vec![]).await);
        assert_eq!(code, Code::DataLoss);
        assert!(message.contains(&a) && message.contains("integrity"), "{message}");
        // The failed release consumed nothing and is in the audit log.
        let shown = app.client("requester").await.get_filing_job(&job).await.unwrap();
        assert_eq!(shown.tokens[0].releases, 0);
        let outcome =
            db.text("SELECT outcome FROM audit_entries WHERE operation = 'filing.detokenize' ORDER BY seq DESC LIMIT 1").await;
        assert_eq!(outcome, "failed");
    }
}

on_both_backends! {
    async fn when_the_audit_entry_cannot_be_written_nothing_is_released(backend) {
        let app = spawn_app(&backend).await;
        let number = &valid_numbers(1)[0];
        let token = app.client("payroll").await.tokenize("demo", number, TokenFormat::Opaque).await.unwrap();
        let job = approved_job(&app, std::slice::from_ref(&token), 1).await;
        let mut db = app.database().await;
        db.break_audit_writes().await;
        let filer = app.client("filer").await;
        let (code, message) = refusal(filer.detokenize(&job, vec![]).await);
        assert_eq!(code, Code::Unavailable);
        assert!(message.contains("audit log could not be written"), "{message}");
        assert!(!message.contains(number.as_str()));
        db.repair_audit_writes().await;
        // The refused release was rolled back whole: the token can still be released once.
        let released = filer.detokenize(&job, vec![]).await.unwrap();
        assert_eq!(released.len(), 1);
    }
}

on_both_backends! {
    async fn a_release_fails_promptly_when_the_database_stays_locked(backend) {
        let app = spawn_app_with(&backend, |settings| settings.database.write_timeout_ms = 300).await;
        let token = app.client("payroll").await.tokenize("demo", &valid_numbers(1)[0], TokenFormat::Opaque).await.unwrap();
        let job = approved_job(&app, &[token], 1).await;
        let mut db = app.database().await;
        // Another process holds the write lock and does not let go.
        db.hold_write_lock().await;
        let filer = app.client("filer").await;
        // A hang would show as the client's own deadline; the vault answers UNAVAILABLE first.
        let answer = tokio::time::timeout(std::time::Duration::from_secs(60), filer.detokenize(&job, vec![])).await;
        let (code, message) = refusal(answer.expect("the vault answered"));
        assert_eq!(code, Code::Unavailable, "{message}");
        db.release_write_lock().await;
        assert_eq!(filer.detokenize(&job, vec![]).await.unwrap().len(), 1);
    }
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

/// Every place a number appears in a file under `dir`, in ASCII or full-width
/// form: (file, form). One pass over each file with hashed windows.
fn numbers_found_in(dir: &Path, numbers: &[String]) -> Vec<(std::path::PathBuf, &'static str)> {
    let ascii: HashSet<Vec<u8>> = numbers.iter().map(|n| n.as_bytes().to_vec()).collect();
    let wide: HashSet<Vec<u8>> = numbers.iter().map(|n| full_width(n).into_bytes()).collect();
    let mut found = Vec::new();
    for file in files_under(dir) {
        let bytes = std::fs::read(&file).unwrap();
        if bytes.windows(12).any(|w| ascii.contains(w)) {
            found.push((file.clone(), "ASCII"));
        }
        // A full-width digit is three bytes in UTF-8.
        if bytes.windows(36).any(|w| wide.contains(w)) {
            found.push((file.clone(), "full-width"));
        }
    }
    found
}

#[test]
fn the_scan_finds_a_planted_number_in_either_form() {
    let dir = tempfile::tempdir().unwrap();
    let numbers = valid_numbers(3);
    std::fs::write(dir.path().join("ascii.bin"), format!("xx{}yy", numbers[1])).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/wide.txt"), full_width(&numbers[2])).unwrap();
    let found = numbers_found_in(dir.path(), &numbers);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found.iter().any(|(f, form)| f.ends_with("ascii.bin") && *form == "ASCII"));
    assert!(found.iter().any(|(f, form)| f.ends_with("sub/wide.txt") && *form == "full-width"));
}

/// No number in any file of the data directory nor, on PostgreSQL, in any
/// row of the database (dumped as text, `bytea` columns decoded).
pub(crate) async fn assert_no_number_in(app: &TestApp, numbers: &[String]) {
    let files = files_under(app.path());
    let dump_dir = tempfile::tempdir().unwrap();
    match &app.backend {
        Backend::Sqlite => assert!(files.iter().any(|f| f.ends_with("vault.db")), "scanned {files:?}"),
        Backend::Postgres(_) => {
            let dump = app.database_dump().await;
            assert!(dump.len() > 1_000, "the dump holds the database");
            std::fs::write(dump_dir.path().join("database.dump"), dump).unwrap();
        }
    }
    let mut found = numbers_found_in(app.path(), numbers);
    found.extend(numbers_found_in(dump_dir.path(), numbers));
    assert!(found.is_empty(), "numbers found in {found:?}");
}

on_both_backends! {
    async fn no_file_in_the_data_directory_holds_a_number(backend) {
        let mut app = spawn_app(&backend).await;
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
        let job = approved_job(&app, &tokens[..20], 1).await;
        assert_eq!(app.client("filer").await.detokenize(&job, vec![]).await.unwrap().len(), 20);
        // While running (WAL holds the latest pages) and after a clean stop (checkpointed).
        assert_no_number_in(&app, &numbers).await;
        app.stop().await;
        assert_no_number_in(&app, &numbers).await;
    }
}

on_both_backends! {
    async fn a_number_pasted_where_a_token_tenant_or_job_belongs_is_never_written_or_echoed(backend) {
        use mnvault_client::NewFilingJob;
        let mut app = spawn_app(&backend).await;
        let numbers = valid_numbers(6);
        let token = app.client("payroll").await.tokenize("demo", &numbers[0], TokenFormat::Opaque).await.unwrap();
        let job = approved_job(&app, std::slice::from_ref(&token), 1).await;
        let (payroll, requester, filer) =
            (app.client("payroll").await, app.client("requester").await, app.client("filer").await);
        let hyphenated = format!("{}-{}-{}", &numbers[3][..4], &numbers[3][4..8], &numbers[3][8..]);

        let mut messages = Vec::new();
        // Arguments swapped: the number goes in as the tenant.
        messages.push(refusal(payroll.tokenize(&numbers[1], "demo", TokenFormat::Opaque).await).1);
        messages.push(refusal(payroll.describe_token("demo", &numbers[2]).await).1);
        messages.push(refusal(filer.detokenize(&job, vec![hyphenated.clone()]).await).1);
        messages.push(refusal(filer.detokenize(&numbers[4], vec![]).await).1);
        let pasted = NewFilingJob { tokens: vec![full_width(&numbers[5])], ..crate::helpers::filing_job(&[]) };
        messages.push(refusal(requester.create_filing_job(pasted).await).1);
        let purpose =
            NewFilingJob { purpose: numbers[5].clone(), ..crate::helpers::filing_job(std::slice::from_ref(&token)) };
        messages.push(refusal(requester.create_filing_job(purpose).await).1);
        messages.push(refusal(app.client("admin").await.create_tenant(&format!("t{}", numbers[1]), "").await).1);

        // Not in what the vault said back...
        for message in &messages {
            assert!(!numbers.iter().any(|n| message.contains(n.as_str())) && !message.contains(&hyphenated), "{message}");
        }
        // Each says what is wrong without repeating what was sent.
        assert!(messages.iter().all(|m| m.contains("is not valid") || m.contains("not a lawful purpose")), "{messages:?}");
        // ...nor in the audit log, though every refusal is there...
        let entries = app.audit_entries().await;
        let refusals = entries.iter().filter(|e| e.outcome != "ok").count();
        assert_eq!(refusals, messages.len());
        let text = format!("{entries:?}");
        for number in &numbers[1..] {
            assert!(!text.contains(number.as_str()) && !text.contains(&full_width(number)), "audit holds {number}");
        }
        // ...nor in any file, running or stopped (numbers[0] is tokenized: sealed, not written).
        assert_no_number_in(&app, &numbers).await;
        app.stop().await;
        assert_no_number_in(&app, &numbers).await;
    }
}

on_both_backends! {
    async fn concurrent_releases_never_exceed_the_jobs_limit(backend) {
        let app = spawn_app(&backend).await;
        let token = app.client("payroll").await.tokenize("demo", &valid_numbers(1)[0], TokenFormat::Opaque).await.unwrap();
        let job = approved_job(&app, std::slice::from_ref(&token), 2).await;
        let filer = app.client("filer").await;
        let attempts: Vec<_> = (0..8)
            .map(|_| {
                let (filer, job) = (filer.clone(), job.clone());
                tokio::spawn(async move { filer.detokenize(&job, vec![]).await })
            })
            .collect();
        let mut released = 0;
        for attempt in attempts {
            match attempt.await.unwrap() {
                Ok(numbers) => released += numbers.len(),
                Err(error) => assert_eq!(error.code(), Some(Code::FailedPrecondition), "{error}"),
            }
        }
        assert_eq!(released, 2);
        let shown = app.client("requester").await.get_filing_job(&job).await.unwrap();
        assert_eq!(shown.tokens[0].releases, 2);
    }
}
