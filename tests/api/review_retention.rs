//! Attacks on retention, purges and deletion certificates (review of issue 7):
//! each test guards a finding of the review.

use std::time::Duration;

use futures::StreamExt as _;
use mnvault_client::retention::SetRetentionRequest;
use mnvault_client::{Code, ListAuditEntriesRequest, TokenFormat};

use crate::helpers::{refusal, spawn_app, tokenize_fresh, valid_numbers, Backend, TestApp};

/// More rows than one `PurgeExpired` call reads (20 batches of 500).
const MORE_THAN_A_CALL: usize = 10_001;

fn request(tokens: &[String], delete_after: &str, hold: bool) -> SetRetentionRequest {
    SetRetentionRequest {
        tenant: "demo".into(),
        tokens: tokens.to_vec(),
        classes: vec![],
        end_date: String::new(),
        delete_after: delete_after.into(),
        legal_hold: hold,
    }
}

async fn tokenize_many(app: &TestApp, count: usize) -> Vec<String> {
    app.client("payroll")
        .await
        .tokenize_stream("demo", TokenFormat::Opaque, valid_numbers(count))
        .await
        .unwrap()
        .map(|answer| answer.unwrap().result.unwrap())
        .collect()
        .await
}

async fn exists(app: &TestApp, token: &str) -> bool {
    match app.client("payroll").await.describe_token("demo", token).await {
        Ok(_) => true,
        Err(error) if error.code() == Some(Code::NotFound) => false,
        Err(error) => panic!("{error}"),
    }
}

/// `count` retention rows a database writer made up (no valid tag), all past due.
async fn plant_junk_retention_rows(app: &TestApp, backend: &Backend, count: usize) {
    let (hold, tag) = match backend {
        Backend::Sqlite => ("0", "x'00'"),
        Backend::Postgres(_) => ("false", "'\\x00'::bytea"),
    };
    app.database()
        .await
        .exec(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count}) \
             INSERT INTO retention (tenant, token, classes, end_date, delete_on, legal_hold, set_at, set_seq, tag) \
             SELECT 'demo', 'mnt_' || (100000 + i), '', NULL, 20000101, {hold}, 0, 1, {tag} FROM n"
        ))
        .await;
}

on_both_backends! {
    /// Finding: held rows filled each call's scan, so a due row sorted after
    /// more than a call's worth of held ones was never reached by `PurgeExpired`.
    async fn held_rows_do_not_starve_a_purge_call_of_the_due_ones(backend) {
        let app = spawn_app(&backend).await;
        let mut tokens = tokenize_many(&app, MORE_THAN_A_CALL + 1).await;
        tokens.sort();
        let (held, due) = tokens.split_at(MORE_THAN_A_CALL);
        let admin = app.client("admin").await;
        for chunk in held.chunks(10_000) {
            admin.set_retention(request(chunk, "2020-01-01", true)).await.unwrap();
        }
        admin.set_retention(request(due, "2020-01-01", false)).await.unwrap();
        let report = admin.purge_expired("demo", false).await.unwrap();
        assert_eq!(report.tokens.iter().map(|t| t.token.clone()).collect::<Vec<_>>(), due.to_vec(), "{:?}", report.more);
        assert_eq!(report.held, MORE_THAN_A_CALL as u64);
        assert!(!report.more);
        assert!(!exists(&app, &due[0]).await);
        assert!(exists(&app, &held[0]).await && exists(&app, &held[MORE_THAN_A_CALL - 1]).await);
    }
}

on_both_backends! {
    /// Finding: with more than a call's worth of rows it cannot act on,
    /// `mnvault purge` called the vault forever (one audit entry a call).
    async fn the_purge_cli_stops_when_a_call_deletes_nothing(backend) {
        let app = spawn_app(&backend).await;
        plant_junk_retention_rows(&app, &backend, MORE_THAN_A_CALL).await;
        let cli = app.cli(&["purge", "--tenant", "demo", "--as", "admin"]);
        // A deadline for a call that must end, not a timed assertion: before the fix it never did.
        let error = tokio::time::timeout(Duration::from_secs(300), cli)
            .await
            .expect("mnvault purge keeps calling the vault")
            .unwrap_err()
            .to_string();
        assert!(error.contains("integrity"), "{error}");
        let listing = ListAuditEntriesRequest { operation: "retention.purge".into(), ..Default::default() };
        let calls = app.client("auditor").await.list_audit_entries(listing).await.unwrap().entries;
        assert_eq!(calls.len(), 1, "one call, not a loop");
    }
}

on_both_backends! {
    /// Finding: the background purge kept every purged token in memory
    /// until its run ended (all that was due, unbounded).
    async fn the_background_purge_counts_what_it_deleted_without_keeping_it(backend) {
        let app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 3).await;
        app.client("admin").await.set_retention(request(&tokens[..2], "2020-01-01", false)).await.unwrap();
        let report = app.core().purge_in_background().await.unwrap();
        assert_eq!(report.deleted_tokens, 2, "{report:?}");
        assert!(report.items.is_empty(), "{report:?}");
        assert!(!exists(&app, &tokens[0]).await && !exists(&app, &tokens[1]).await && exists(&app, &tokens[2]).await);
    }
}

on_both_backends! {
    /// The wrong role is refused on every retention call, and each refusal is audited.
    async fn retention_calls_of_the_wrong_role_are_refused_and_audited(backend) {
        let app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 1).await;
        let filer = app.client("filer").await;
        let (code, _) = refusal(filer.set_retention(request(&tokens, "2020-01-01", false)).await);
        assert_eq!(code, Code::PermissionDenied);
        let (code, _) = refusal(filer.purge_expired("demo", false).await);
        assert_eq!(code, Code::PermissionDenied);
        let (code, _) = refusal(app.client("auditor").await.purge_expired("", false).await);
        assert_eq!(code, Code::PermissionDenied);
        let until = time::OffsetDateTime::now_utc();
        let (code, _) =
            refusal(filer.issue_deletion_certificate("demo", time::OffsetDateTime::UNIX_EPOCH, until).await);
        assert_eq!(code, Code::PermissionDenied);
        let entries = app.audit_entries().await;
        for operation in ["retention.set", "retention.purge", "retention.certificate"] {
            assert!(
                entries.iter().any(|e| e.operation == operation && e.outcome == "denied"),
                "{operation}: {entries:?}"
            );
        }
        assert!(exists(&app, &tokens[0]).await);
        let stored = app.database().await.text("SELECT CAST(COUNT(*) AS TEXT) FROM retention").await;
        assert_eq!(stored, "0", "a refused SetRetention wrote nothing");
    }
}
