//! Retention: deletion dates from document classes and end dates, legal
//! holds, purges and their tombstones, the deletion audit entries, tampered
//! retention rows, signed deletion certificates and the background purge.
//!
//! The vault's clock is the real one; tests make a token due by giving it
//! dates in the past (an employment that ended in 2016 is long past every
//! retention period), never by waiting.

use std::time::{Duration, Instant};

use mnvault_client::retention::SetRetentionRequest;
use mnvault_client::{Code, ListAuditEntriesRequest, TokenFormat};
use mnvault_core::number::contains_number;

use crate::helpers::{
    approved_job, filing_job, refusal, spawn_app, spawn_app_with, spawn_replica, tokenize_fresh, valid_numbers, TestApp,
};

fn request(tokens: &[String], classes: &[&str], end_date: &str, delete_after: &str, hold: bool) -> SetRetentionRequest {
    SetRetentionRequest {
        tenant: "demo".into(),
        tokens: tokens.to_vec(),
        classes: classes.iter().map(|c| c.to_string()).collect(),
        end_date: end_date.into(),
        delete_after: delete_after.into(),
        legal_hold: hold,
    }
}

/// Health and pension documents of an employment that ended in 2016: deletable since 2018.
async fn make_due(app: &TestApp, tokens: &[String], hold: bool) {
    let admin = app.client("admin").await;
    let set =
        admin.set_retention(request(tokens, &["health-pension-insurance"], "2016-03-31", "", hold)).await.unwrap();
    assert_eq!(set.delete_on, "2018-05-01");
}

async fn purge(app: &TestApp, dry_run: bool) -> mnvault_client::retention::PurgeExpiredResponse {
    app.client("admin").await.purge_expired("demo", dry_run).await.unwrap()
}

async fn exists(app: &TestApp, token: &str) -> bool {
    match app.client("payroll").await.describe_token("demo", token).await {
        Ok(_) => true,
        Err(error) if error.code() == Some(Code::NotFound) => false,
        Err(error) => panic!("{error}"),
    }
}

on_both_backends! {
    async fn the_deletion_date_is_the_latest_of_the_classes_or_set_directly(backend) {
        let app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 2).await;
        let admin = app.client("admin").await;
        let all = ["tax-declaration", "employment-insurance-insured", "health-pension-insurance"];
        let set = admin.set_retention(request(&tokens, &all, "2026-03-31", "", false)).await.unwrap();
        assert_eq!((set.tokens, set.delete_on.as_str()), (2, "2034-01-11"));
        let insured = ["employment-insurance-insured", "health-pension-insurance"];
        let set = admin.set_retention(request(&tokens[..1], &insured, "2026-03-31", "", false)).await.unwrap();
        assert_eq!(set.delete_on, "2030-05-01");
        // A direct date later than the classes' wins; alone it is the date.
        let set = admin.set_retention(request(&tokens[..1], &insured, "2026-03-31", "2031-05-01", false)).await;
        assert_eq!(set.unwrap().delete_on, "2031-05-01");
        let set = admin.set_retention(request(&tokens[..1], &[], "", "2027-01-01", true)).await.unwrap();
        assert_eq!((set.delete_on.as_str(), set.legal_hold), ("2027-01-01", true));

        // Admins only; malformed input is refused naming the field, not repeating it.
        let (code, _) = refusal(app.client("requester").await.set_retention(request(&tokens, &[], "", "2027-01-01", false)).await);
        assert_eq!(code, Code::PermissionDenied);
        let (code, message) = refusal(admin.set_retention(request(&tokens, &[], "2026/03/31", "", false)).await);
        assert_eq!(code, Code::InvalidArgument);
        assert!(message.contains("end date") && !message.contains("2026/03/31"), "{message}");
        let (code, _) = refusal(admin.set_retention(request(&tokens, &[], "2026-03-31", "", false)).await);
        assert_eq!(code, Code::InvalidArgument, "an end date without classes");
        let unknown = "mnt_aaaaaaaaaaaaaaaaaaaaaaaaaa".to_owned();
        let (code, message) = refusal(admin.set_retention(request(&[unknown], &[], "", "2027-01-01", false)).await);
        assert_eq!(code, Code::NotFound, "{message}");
        // Nothing is due yet: a purge leaves everything.
        let report = purge(&app, false).await;
        assert!(report.tokens.is_empty() && report.held == 0, "{report:?}");
        assert!(exists(&app, &tokens[0]).await && exists(&app, &tokens[1]).await);
    }
}

on_both_backends! {
    async fn a_legal_hold_blocks_the_purge_and_lifting_it_resumes(backend) {
        let app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 1).await;
        make_due(&app, &tokens, true).await;
        let report = purge(&app, false).await;
        assert!(report.tokens.is_empty(), "{report:?}");
        assert_eq!(report.held, 1);
        assert!(exists(&app, &tokens[0]).await);
        make_due(&app, &tokens, false).await;
        let report = purge(&app, false).await;
        assert_eq!(report.tokens.len(), 1);
        assert_eq!(report.deleted_records, 1);
        assert!(!exists(&app, &tokens[0]).await);
    }
}

on_both_backends! {
    async fn a_dry_run_lists_what_is_due_and_deletes_nothing(backend) {
        let app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 3).await;
        make_due(&app, &tokens[..2], false).await;
        let report = purge(&app, true).await;
        assert!(report.dry_run);
        let mut listed: Vec<_> = report.tokens.iter().map(|t| t.token.clone()).collect();
        listed.sort();
        let mut due = tokens[..2].to_vec();
        due.sort();
        assert_eq!(listed, due);
        assert_eq!(report.deleted_records, 0);
        for token in &tokens {
            assert!(exists(&app, token).await, "a dry run deleted {token}");
        }
        // The CLI's dry run says the same.
        let out = app.cli(&["purge", "--tenant", "demo", "--dry-run", "--as", "admin"]).await.unwrap();
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(out.lines().all(|line| line.starts_with("due\tdemo\t")), "{out}");
    }
}

on_both_backends! {
    async fn a_purged_token_says_when_and_why_and_its_number_gets_a_new_token(backend) {
        let app = spawn_app(&backend).await;
        let payroll = app.client("payroll").await;
        let numbers = valid_numbers(2);
        let mut tokens = Vec::new();
        for number in &numbers {
            tokens.push(payroll.tokenize("demo", number, TokenFormat::Opaque).await.unwrap());
        }
        let job = approved_job(&app, &tokens, 1).await;
        make_due(&app, &tokens[1..], false).await;
        let out = app.cli(&["purge", "--tenant", "demo", "--as", "admin"]).await.unwrap();
        assert!(out.starts_with(&format!("deleted\tdemo\t{}\t2018-05-01\thealth-pension-insurance", tokens[1])), "{out}");

        // Releasing it: NOT_FOUND, saying when and why; nothing is released.
        let (code, message) = refusal(app.client("filer").await.detokenize(&job, vec![]).await);
        assert_eq!(code, Code::NotFound, "{message}");
        for expected in ["token #2 of the release", tokens[1].as_str(), "deleted at", "retention ended", "health-pension-insurance", "deletion from 2018-05-01"] {
            assert!(message.contains(expected), "{expected} missing: {message}");
        }
        let released = app.client("filer").await.detokenize(&job, vec![tokens[0].clone()]).await.unwrap();
        assert_eq!(released.len(), 1, "the other token is still released");
        // A new job naming it is refused the same way.
        let (code, message) =
            refusal(app.client("requester").await.create_filing_job(filing_job(&tokens[1..])).await);
        assert_eq!(code, Code::NotFound);
        assert!(message.contains("deleted at"), "{message}");
        // The same number tokenized again gets a new token: nothing of the old one matches it.
        let again = payroll.tokenize("demo", &numbers[1], TokenFormat::Opaque).await.unwrap();
        assert_ne!(again, tokens[1]);
        assert_eq!(payroll.tokenize("demo", &numbers[0], TokenFormat::Opaque).await.unwrap(), tokens[0]);

        // The deletion's audit entry names the token, and its tombstone keeps no blind index.
        let listing = ListAuditEntriesRequest { tenant: "demo".into(), operation: "retention.delete".into(), ..Default::default() };
        let entries = app.client("auditor").await.list_audit_entries(listing).await.unwrap().entries;
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].tokens, vec![tokens[1].clone()]);
        assert_eq!((entries[0].principal.as_str(), entries[0].record_count), ("admin", 1));
        let mut db = app.database().await;
        let kept = db.text("SELECT CAST(COUNT(*) AS TEXT) FROM records").await;
        assert_eq!(kept, "2", "the purged record is gone, the new one is there");
        let verified = app.client("auditor").await.verify_audit_chain().await.unwrap();
        assert!(verified.intact, "{verified:?}");
    }
}

on_both_backends! {
    async fn a_retention_row_changed_in_the_database_is_not_purged(backend) {
        let app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 2).await;
        let admin = app.client("admin").await;
        admin.set_retention(request(&tokens[..1], &[], "", "2100-01-01", false)).await.unwrap();
        let mut db = app.database().await;
        // A database writer moves the date into the past.
        db.exec(&format!("UPDATE retention SET delete_on = 20000101 WHERE token = '{}'", tokens[0])).await;
        // Another puts back a row the vault wrote before a hold was set.
        make_due(&app, &tokens[1..], false).await;
        db.exec("CREATE TABLE saved_retention AS SELECT * FROM retention").await;
        make_due(&app, &tokens[1..], true).await;
        db.exec(&format!("DELETE FROM retention WHERE token = '{}'", tokens[1])).await;
        db.exec(&format!("INSERT INTO retention SELECT * FROM saved_retention WHERE token = '{}'", tokens[1])).await;
        let before = app.integrity_failures();
        let report = purge(&app, false).await;
        assert!(report.tokens.is_empty(), "{report:?}");
        assert_eq!(report.tampered, 2, "{report:?}");
        assert!(report.tampered_named.iter().any(|named| named.contains(&tokens[0])), "{report:?}");
        assert!(report.tampered_named.iter().any(|named| named.contains(&tokens[1])), "{report:?}");
        assert!(app.integrity_failures() >= before + 2);
        assert!(exists(&app, &tokens[0]).await && exists(&app, &tokens[1]).await);
        // The CLI says so and fails.
        let error = app.cli(&["purge", "--tenant", "demo", "--as", "admin"]).await.unwrap_err().to_string();
        assert!(error.contains("integrity"), "{error}");
    }
}

on_both_backends! {
    async fn a_deletion_certificate_verifies_offline_and_a_changed_one_does_not(backend) {
        let app = spawn_app(&backend).await;
        let numbers = valid_numbers(3);
        let payroll = app.client("payroll").await;
        let mut tokens = Vec::new();
        for number in &numbers {
            tokens.push(payroll.tokenize("demo", number, TokenFormat::Opaque).await.unwrap());
        }
        let admin = app.client("admin").await;
        admin.set_retention(request(&tokens[..2], &["tax-declaration", "health-pension-insurance"], "2016-03-31", "", false)).await.unwrap();
        purge(&app, false).await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("certificate.json");
        let file = file.to_str().unwrap();
        let out = app
            .cli(&["deletion-certificate", "--tenant", "demo", "--since", "2020-01-01", "--until", "2100-01-01", "--out", file, "--as", "auditor"])
            .await
            .unwrap();
        assert!(out.contains("2 deletion(s) certified"), "{out}");
        let public_key = app.cli(&["signing-key", "export"]).await.unwrap();
        let public_key = public_key.trim();
        assert!(out.contains(public_key), "the answer names the same key: {out}");

        let verified = app.cli(&["deletion-certificate", "verify", "--file", file, "--public-key", public_key]).await.unwrap();
        assert!(verified.starts_with("valid: 2 deletion(s) of tenant demo"), "{verified}");
        let json = std::fs::read_to_string(file).unwrap();
        let document: serde_json::Value = serde_json::from_str(&json).unwrap();
        let deletions = document["certificate"]["deletions"].as_array().unwrap();
        let mut certified: Vec<_> = deletions.iter().map(|d| d["token"].as_str().unwrap().to_owned()).collect();
        certified.sort();
        let mut deleted = tokens[..2].to_vec();
        deleted.sort();
        assert_eq!(certified, deleted);
        assert_eq!(deletions[0]["delete_on"], "2024-01-11");
        assert_eq!(deletions[0]["classes"], serde_json::json!(["tax-declaration", "health-pension-insurance"]));
        assert!(deletions[0]["legal_basis"][0].as_str().unwrap().contains("扶養控除等申告書"));
        // No number anywhere in it.
        assert!(!contains_number(&json), "{json}");
        for number in &numbers {
            assert!(!json.contains(number.as_str()));
        }

        // Changed after signing: refused.
        let changed = dir.path().join("changed.json");
        std::fs::write(&changed, json.replace("2024-01-11", "2023-01-11")).unwrap();
        let error = app
            .cli(&["deletion-certificate", "verify", "--file", changed.to_str().unwrap(), "--public-key", public_key])
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("signature does not match"), "{error}");
        // And a key that is not the vault's does not vouch for the genuine one.
        let other = mnvault_keys::VaultSigningKey::new(&mnvault_keys::KeyMaterial::generate()).public_key().to_string();
        let error = app.cli(&["deletion-certificate", "verify", "--file", file, "--public-key", &other]).await.unwrap_err();
        assert!(error.to_string().contains("not by the key given"), "{error}");

        // Requesters may not issue certificates; the issue is audited.
        let since = time::OffsetDateTime::UNIX_EPOCH;
        let until = time::OffsetDateTime::now_utc() + time::Duration::days(1);
        let (code, _) = refusal(app.client("requester").await.issue_deletion_certificate("demo", since, until).await);
        assert_eq!(code, Code::PermissionDenied);
        let listing = ListAuditEntriesRequest { operation: "retention.certificate".into(), ..Default::default() };
        let entries = app.client("auditor").await.list_audit_entries(listing).await.unwrap().entries;
        assert!(entries.iter().any(|e| e.outcome == "ok" && e.record_count == 2), "{entries:?}");
    }
}

on_both_backends! {
    async fn the_background_purge_runs_by_itself(backend) {
        let app = spawn_app_with(&backend, |settings| {
            settings.retention.interval_override = Some(Duration::from_millis(100));
        })
        .await;
        let tokens = tokenize_fresh(&app, 2).await;
        make_due(&app, &tokens[..1], false).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while exists(&app, &tokens[0]).await {
            assert!(Instant::now() < deadline, "the background purge did not delete the due token");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(exists(&app, &tokens[1]).await, "only what was due is deleted");
        let listing = ListAuditEntriesRequest { operation: "retention.delete".into(), ..Default::default() };
        let entries = app.client("auditor").await.list_audit_entries(listing).await.unwrap().entries;
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].principal, mnvault_core::vault::PURGE_PRINCIPAL);
        assert_eq!(entries[0].tokens, vec![tokens[0].clone()]);
    }
}

on_both_backends! {
    /// The signing key's row deleted from the database: before any
    /// certificate the next start makes a new key; once certificates were
    /// signed it refuses to start, so they are never silently orphaned.
    async fn a_deleted_signing_key_is_replaced_only_if_it_never_signed(backend) {
        use mnvault::config::Settings;
        use mnvault::startup::Application;
        let mut app = spawn_app(&backend).await;
        let first = app.cli(&["signing-key", "export"]).await.unwrap();
        app.database().await.exec("DELETE FROM system_keys WHERE name = 'signing'").await;
        let replica = spawn_replica(&app).await;
        let second = app.cli(&["signing-key", "export"]).await.unwrap();
        assert_ne!(first, second, "a new key, as nothing was signed");

        let file = app.path().join("certificate.json");
        let file = file.to_str().unwrap();
        let period = ["--tenant", "demo", "--since", "2020-01-01", "--until", "2100-01-01", "--out", file, "--as", "auditor"];
        let issued = replica.cli(&[&["deletion-certificate"][..], &period[..]].concat()).await.unwrap();
        assert!(issued.contains(second.trim()), "signed by the new key: {issued}");
        app.stop().await;
        app.database().await.exec("DELETE FROM system_keys WHERE name = 'signing'").await;
        let error = Application::build(&Settings::load(app.path()).unwrap()).await.err().expect("refused");
        let message = format!("{error:#}");
        assert!(message.contains("no signing key") && message.contains("restore"), "{message}");
    }
}
