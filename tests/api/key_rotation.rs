//! Tenant key rotation: new versions seal new records while old ones still
//! open, rewrapping in batches while the vault serves (interrupted and
//! resumed, racing tokenize and detokenize, across replicas), exact status,
//! the rules of retirement, the schedule, and who may do any of it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::future::join_all;
use mnvault_client::{AuditEntry, Code, ListAuditEntriesRequest, TokenFormat, VaultClient};

use crate::helpers::{approved_job, refusal, spawn_app, spawn_app_with, spawn_replica, valid_numbers, TestApp};

/// Tokens of `numbers` in tenant `demo`, tokenized as `payroll` on `app`.
async fn tokenize(app: &TestApp, numbers: &[String]) -> Vec<String> {
    let payroll = app.client("payroll").await;
    let mut tokens = Vec::with_capacity(numbers.len());
    for number in numbers {
        tokens.push(payroll.tokenize("demo", number, TokenFormat::Opaque).await.unwrap());
    }
    tokens
}

/// Releases every token of `expected` through a fresh approved job on
/// `app`, and checks each number.
async fn assert_released(app: &TestApp, expected: &HashMap<String, String>) {
    let tokens: Vec<String> = expected.keys().cloned().collect();
    let job = approved_job(app, &tokens, 1).await;
    let released = app.client("filer").await.detokenize(&job, vec![]).await.unwrap();
    assert_eq!(released.len(), tokens.len());
    for number in released {
        use secrecy::ExposeSecret as _;
        assert_eq!(number.number.expose_secret(), expected[&number.token].as_str(), "token {}", number.token);
    }
}

/// (version, records, primary) of tenant `demo`, as `admin` sees it.
async fn status(admin: &VaultClient) -> Vec<(u32, u64, bool)> {
    let page = admin.key_status(Some("demo"), "", 0).await.unwrap();
    assert_eq!(page.tenants.len(), 1);
    page.tenants[0].versions.iter().map(|v| (v.version, v.records, v.primary)).collect()
}

/// The audit entries of `operation`, oldest first (one page).
async fn entries_of(app: &TestApp, operation: &str) -> Vec<AuditEntry> {
    let request = ListAuditEntriesRequest { operation: operation.into(), ..Default::default() };
    app.client("auditor").await.list_audit_entries(request).await.unwrap().entries
}

async fn key_version(app: &TestApp, token: &str) -> u32 {
    app.client("payroll").await.describe_token("demo", token).await.unwrap().key_version
}

on_both_backends! {
    async fn rotation_seals_new_records_under_the_new_version_and_old_ones_still_open(backend) {
        let app = spawn_app(&backend).await;
        let admin = app.client("admin").await;
        let old_numbers = valid_numbers(5);
        let old_tokens = tokenize(&app, &old_numbers).await;
        assert_eq!(status(&admin).await, [(1, 5, true)]);

        let rotated = app.cli(&["keys", "rotate", "--tenant", "demo", "--as", "admin"]).await.unwrap();
        assert_eq!(rotated, "demo\t2\n");
        let new_numbers = valid_numbers(3);
        let new_tokens = tokenize(&app, &new_numbers).await;
        for token in &old_tokens {
            assert_eq!(key_version(&app, token).await, 1);
        }
        for token in &new_tokens {
            assert_eq!(key_version(&app, token).await, 2);
        }
        // Tokens never change: the old numbers still have their tokens.
        assert_eq!(tokenize(&app, &old_numbers).await, old_tokens);
        assert_eq!(status(&admin).await, [(1, 5, false), (2, 3, true)]);

        let expected: HashMap<String, String> = old_tokens
            .iter()
            .chain(&new_tokens)
            .cloned()
            .zip(old_numbers.iter().chain(&new_numbers).cloned())
            .collect();
        assert_released(&app, &expected).await;

        // Status of every tenant, a page at a time; an unknown tenant is not found.
        admin.create_tenant("acme", "Acme").await.unwrap();
        let first = admin.key_status(None, "", 1).await.unwrap();
        assert_eq!(first.tenants.len(), 1);
        assert_eq!(first.tenants[0].tenant, "acme");
        assert_eq!(first.next_after_tenant, "acme");
        let second = admin.key_status(None, "acme", 1).await.unwrap();
        assert_eq!(second.tenants[0].tenant, "demo");
        assert_eq!(second.tenants[0].primary_key_version, 2);
        let listed = app.cli(&["keys", "status", "--as", "admin"]).await.unwrap();
        let rows: Vec<Vec<&str>> = listed.lines().map(|line| line.split('\t').collect()).collect();
        assert_eq!(rows.len(), 3, "{listed}");
        assert_eq!((rows[0][0], rows[0][1], rows[0][4], rows[0].get(5)), ("acme", "1", "0", Some(&"primary")));
        assert_eq!((rows[1][0], rows[1][1], rows[1][4], rows[1].get(5)), ("demo", "1", "5", None));
        assert_eq!((rows[2][0], rows[2][1], rows[2][4], rows[2].get(5)), ("demo", "2", "3", Some(&"primary")));
        let (code, _) = refusal(admin.key_status(Some("nobody"), "", 0).await);
        assert_eq!(code, Code::NotFound);

        let rotations = entries_of(&app, "keys.rotate").await;
        assert_eq!(rotations.len(), 1);
        assert_eq!((rotations[0].principal.as_str(), rotations[0].outcome.as_str()), ("admin", "ok"));
        assert_eq!(rotations[0].tenant, "demo");
    }

    async fn an_interrupted_rewrap_resumes_and_leaves_every_record_readable(backend) {
        let app = spawn_app(&backend).await;
        let admin = app.client("admin").await;
        let numbers = valid_numbers(25);
        let tokens = tokenize(&app, &numbers).await;
        admin.rotate_tenant_key("demo").await.unwrap();

        // One batch, then the run stops (interrupted).
        let batch = admin.rewrap_tenant_records("demo", 10, "").await.unwrap();
        assert_eq!((batch.rewrapped, batch.changed, batch.tampered, batch.primary_key_version), (10, 0, 0, 2));
        assert!(!batch.next_cursor.is_empty());
        assert!(!batch.next_cursor.bytes().any(|b| b.is_ascii_digit()), "{}", batch.next_cursor);
        assert_eq!(status(&admin).await, [(1, 15, false), (2, 10, true)]);

        // A fresh run goes on with what is left.
        let out = app.cli(&["keys", "rewrap", "--tenant", "demo", "--batch", "7", "--as", "admin"]).await.unwrap();
        assert_eq!(out, "demo\trewrapped 15\tversion 2\n");
        assert_eq!(status(&admin).await, [(1, 0, false), (2, 25, true)]);
        for token in &tokens {
            assert_eq!(key_version(&app, token).await, 2);
        }
        // Nothing left: a run changes nothing.
        let again = app.cli(&["keys", "rewrap", "--tenant", "demo", "--as", "admin"]).await.unwrap();
        assert_eq!(again, "demo\trewrapped 0\tnothing under an older version\n");

        assert_released(&app, &tokens.iter().cloned().zip(numbers.iter().cloned()).collect()).await;

        // One entry per batch, counting the records, naming none.
        let rewraps = entries_of(&app, "keys.rewrap").await;
        assert!(rewraps.len() >= 4, "{rewraps:?}");
        assert!(rewraps.iter().all(|e| e.tokens.is_empty() && e.outcome == "ok" && e.tenant == "demo"));
        assert_eq!(rewraps.iter().map(|e| e.record_count).sum::<u64>(), 25);
        let verified = app.cli(&["audit", "verify"]).await.unwrap();
        assert!(verified.contains("audit chain intact") && verified.contains("stored state intact: 25 records"), "{verified}");
        assert_eq!(app.integrity_failures(), 0);
    }

    async fn rewrap_while_tokenize_and_detokenize_run_keeps_every_answer_right(backend) {
        let app = spawn_app(&backend).await;
        let admin = app.client("admin").await;
        let numbers = valid_numbers(90);
        let (old_numbers, new_numbers) = numbers.split_at(60);
        let old_tokens = tokenize(&app, old_numbers).await;
        let expected_old: HashMap<String, String> =
            old_tokens.iter().cloned().zip(old_numbers.iter().cloned()).collect();
        let job = approved_job(&app, &old_tokens[..30], 1).await;
        admin.rotate_tenant_key("demo").await.unwrap();

        let rewrap = async {
            let mut cursor = String::new();
            let mut rewrapped = 0;
            loop {
                let batch = admin.rewrap_tenant_records("demo", 4, &cursor).await.unwrap();
                rewrapped += batch.rewrapped;
                if batch.next_cursor.is_empty() {
                    return rewrapped;
                }
                cursor = batch.next_cursor;
            }
        };
        let payroll = app.client("payroll").await;
        let tokenizing = async {
            let mut answers = Vec::new();
            for (old, new) in old_numbers.iter().zip(new_numbers) {
                answers.push((old.clone(), payroll.tokenize("demo", old, TokenFormat::Opaque).await.unwrap()));
                answers.push((new.clone(), payroll.tokenize("demo", new, TokenFormat::Opaque).await.unwrap()));
            }
            answers
        };
        let filer = app.client("filer").await;
        let releasing = join_all(old_tokens[..30].chunks(5).map(|chunk| {
            let (filer, job) = (filer.clone(), job.clone());
            async move { filer.detokenize(&job, chunk.to_vec()).await.unwrap() }
        }));
        let (rewrapped, tokenized, released) = tokio::join!(rewrap, tokenizing, releasing);

        assert!(rewrapped <= 60, "{rewrapped}");
        for released in released.into_iter().flatten() {
            use secrecy::ExposeSecret as _;
            assert_eq!(released.number.expose_secret(), expected_old[&released.token].as_str());
        }
        let mut expected = expected_old.clone();
        for (number, token) in tokenized {
            match expected_old.iter().find(|(_, n)| **n == number) {
                Some((old_token, _)) => assert_eq!(&token, old_token, "a known number kept its token"),
                None => drop(expected.insert(token, number)),
            }
        }
        assert_eq!(expected.len(), 90);
        // Whatever the walk missed, a run finishes; then every record opens.
        app.cli(&["keys", "rewrap", "--tenant", "demo", "--as", "admin"]).await.unwrap();
        assert_eq!(status(&admin).await, [(1, 0, false), (2, 90, true)]);
        assert_released(&app, &expected).await;
        assert_eq!(app.integrity_failures(), 0);
    }

    async fn retire_is_refused_while_used_when_primary_and_too_early(backend) {
        let app = spawn_app(&backend).await;
        let admin = app.client("admin").await;
        let numbers = valid_numbers(3);
        let tokens = tokenize(&app, &numbers).await;
        admin.rotate_tenant_key("demo").await.unwrap();

        let (code, message) = refusal(admin.retire_key_version("demo", 1).await);
        assert_eq!(code, Code::FailedPrecondition);
        assert!(message.contains("still seals records"), "{message}");
        let (code, message) = refusal(admin.retire_key_version("demo", 2).await);
        assert_eq!(code, Code::FailedPrecondition);
        assert!(message.contains("primary"), "{message}");
        let (code, _) = refusal(admin.retire_key_version("demo", 3).await);
        assert_eq!(code, Code::NotFound);

        app.cli(&["keys", "rewrap", "--tenant", "demo", "--as", "admin"]).await.unwrap();
        // Unused now, but version 2 is younger than the cache's 15 minutes.
        let (code, message) = refusal(admin.retire_key_version("demo", 1).await);
        assert_eq!(code, Code::FailedPrecondition);
        assert!(message.contains("keys.cache_ttl_ms"), "{message}");
        assert_eq!(status(&admin).await, [(1, 0, false), (2, 3, true)]);
        let retirements = entries_of(&app, "keys.retire").await;
        assert_eq!(retirements.iter().map(|e| e.outcome.as_str()).collect::<Vec<_>>(), ["denied", "denied", "not-found", "denied"]);
        assert_released(&app, &tokens.into_iter().zip(numbers).collect()).await;
    }

    async fn retire_is_allowed_once_the_successor_is_older_than_the_longest_cache_ttl(backend) {
        // This vault's own cache ttl is short; a replica's may be a day, the most allowed.
        let app = spawn_app_with(&backend, |settings| settings.keys.cache_ttl_ms = 300).await;
        let admin = app.client("admin").await;
        let numbers = valid_numbers(4);
        let tokens = tokenize(&app, &numbers).await;
        admin.rotate_tenant_key("demo").await.unwrap();
        app.cli(&["keys", "rewrap", "--tenant", "demo", "--as", "admin"]).await.unwrap();
        // Past this vault's own ttl, still refused.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let refused = admin.retire_key_version("demo", 1).await.unwrap_err();
        assert_eq!(refused.code(), Some(Code::FailedPrecondition), "{refused}");
        assert!(refused.to_string().contains("keys.cache_ttl_ms"), "{refused}");
        assert_eq!(status(&admin).await, [(1, 0, false), (2, 4, true)], "nothing retired");

        // A day and a minute pass for version 2 (nothing else depends on its age).
        app.database()
            .await
            .exec("UPDATE tenant_record_keys SET created_at = created_at - 86460000 WHERE tenant = 'demo' AND version = 2")
            .await;
        let retired = admin.retire_key_version("demo", 1).await.unwrap();
        assert_eq!((retired.retired_version, retired.versions.as_slice()), (1, &[2][..]));
        assert_eq!(status(&admin).await, [(2, 4, true)]);
        // Version numbers are never reused: the next rotation adds 3.
        assert_eq!(admin.rotate_tenant_key("demo").await.unwrap().primary_key_version, 3);
        assert_released(&app, &tokens.into_iter().zip(numbers).collect()).await;
        let ok = entries_of(&app, "keys.retire").await.into_iter().filter(|e| e.outcome == "ok").count();
        assert_eq!(ok, 1);
    }

    async fn the_schedule_rotates_a_tenant_whose_primary_is_old_enough(backend) {
        let app = spawn_app_with(&backend, |settings| {
            settings.keys.rotate_every_days = 1;
            settings.keys.rotation_check_interval_ms = 100;
        })
        .await;
        let admin = app.client("admin").await;
        let numbers = valid_numbers(2);
        let tokens = tokenize(&app, &numbers).await;
        assert_eq!(status(&admin).await, [(1, 2, true)]);
        // Two days pass for the key (nothing else in the vault depends on its age).
        app.database()
            .await
            .exec("UPDATE tenant_record_keys SET created_at = created_at - 172800000 WHERE tenant = 'demo'")
            .await;

        let deadline = Instant::now() + Duration::from_secs(20);
        while status(&admin).await.len() < 2 {
            assert!(Instant::now() < deadline, "the schedule did not rotate");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(status(&admin).await, [(1, 2, false), (2, 0, true)]);
        let rotations = entries_of(&app, "keys.rotate").await;
        assert_eq!(rotations.len(), 1, "{rotations:?}");
        assert_eq!((rotations[0].principal.as_str(), rotations[0].tenant.as_str()), ("mnvault-scheduler", "demo"));
        assert_eq!(rotations[0].outcome, "ok");
        // New records use the new version at once on the vault that rotated.
        let fresh = tokenize(&app, &valid_numbers(1)).await;
        assert_eq!(key_version(&app, &fresh[0]).await, 2);
        assert_released(&app, &tokens.into_iter().zip(numbers).collect()).await;
    }

    async fn a_replica_with_cached_keys_opens_records_rewrapped_elsewhere(backend) {
        let first = spawn_app(&backend).await;
        let second = spawn_replica(&first).await;
        let numbers = valid_numbers(6);
        let (earlier, later) = numbers.split_at(4);
        let tokens = tokenize(&first, earlier).await;
        // The second replica caches the tenant's keys (version 1 only).
        let job = approved_job(&second, &tokens[..1], 1).await;
        assert_eq!(second.client("filer").await.detokenize(&job, vec![]).await.unwrap().len(), 1);

        first.client("admin").await.rotate_tenant_key("demo").await.unwrap();
        // Keys cached before the rotation still seal under version 1 (for up to keys.cache_ttl_ms).
        let stale = tokenize(&second, later).await;
        for token in &stale {
            assert_eq!(key_version(&second, token).await, 1);
        }
        first.cli(&["keys", "rewrap", "--tenant", "demo", "--as", "admin"]).await.unwrap();
        assert_eq!(status(&first.client("admin").await).await, [(1, 0, false), (2, 6, true)]);

        // Every record is under version 2 now, which the second's cache lacks: it reloads once and opens them.
        let all: HashMap<String, String> =
            tokens.iter().chain(&stale).cloned().zip(earlier.iter().chain(later).cloned()).collect();
        assert_released(&second, &all).await;
        assert_eq!(second.integrity_failures(), 0);
        // ...and seals new records under it from then on.
        let fresh = tokenize(&second, &valid_numbers(1)).await;
        assert_eq!(key_version(&second, &fresh[0]).await, 2);
    }

    async fn only_an_admin_may_rotate_rewrap_see_or_retire_and_refusals_are_audited(backend) {
        let app = spawn_app(&backend).await;
        tokenize(&app, &valid_numbers(2)).await;
        let payroll = app.client("payroll").await;
        let auditor = app.client("auditor").await;
        assert_eq!(refusal(payroll.rotate_tenant_key("demo").await).0, Code::PermissionDenied);
        assert_eq!(refusal(payroll.rewrap_tenant_records("demo", 0, "").await).0, Code::PermissionDenied);
        assert_eq!(refusal(auditor.key_status(Some("demo"), "", 0).await).0, Code::PermissionDenied);
        assert_eq!(refusal(payroll.retire_key_version("demo", 1).await).0, Code::PermissionDenied);
        let (code, _) = refusal(app.client("admin").await.rewrap_tenant_records("demo", 10_001, "").await);
        assert_eq!(code, Code::InvalidArgument);
        let (code, _) = refusal(app.client("admin").await.rewrap_tenant_records("demo", 0, "1234").await);
        assert_eq!(code, Code::InvalidArgument);

        assert_eq!(status(&app.client("admin").await).await, [(1, 2, true)]);
        for (operation, principal) in
            [("keys.rotate", "payroll"), ("keys.rewrap", "payroll"), ("keys.status", "auditor"), ("keys.retire", "payroll")]
        {
            let entries = entries_of(&app, operation).await;
            let refused = entries.iter().find(|e| e.principal == principal).unwrap_or_else(|| panic!("{operation}"));
            assert_eq!(refused.outcome, "denied", "{refused:?}");
            assert!(refused.reason.contains("admin"), "{refused:?}");
        }
    }
}

on_both_backends! {
    /// The key version rows are not tagged: deleting the newest one right
    /// after a rotation must not make vaults seal under the previous key
    /// again. The audit chain says a version was added; a vault that knows it
    /// (the one that rotated, and any that verifies the chain at start)
    /// refuses keys that end below it, and adds no version again.
    async fn a_newest_version_deleted_from_the_database_is_refused_not_sealed_under(backend) {
        let app = spawn_app_with(&backend, |settings| settings.keys.cache_ttl_ms = 1).await;
        let admin = app.client("admin").await;
        admin.rotate_tenant_key("demo").await.unwrap();
        let mut db = app.database().await;
        db.exec("DELETE FROM tenant_record_keys WHERE tenant = 'demo' AND version = 2").await;
        let records = || async { app.database().await.text("SELECT CAST(count(*) AS TEXT) FROM records WHERE tenant = 'demo'").await };

        // Past this vault's 1 ms key cache: the next call reads the keys again.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let payroll = app.client("payroll").await;
        let (code, message) = refusal(payroll.tokenize("demo", &valid_numbers(1)[0], TokenFormat::Opaque).await);
        assert_eq!(code, Code::DataLoss, "{message}");
        assert!(message.contains("version 1") && message.contains("version 2"), "{message}");
        assert_eq!(records().await, "0", "nothing was sealed under version 1");

        // A vault started now learns it from the chain it verifies at start.
        let replica = spawn_replica(&app).await;
        let payroll = replica.client("payroll").await;
        let (code, _) = refusal(payroll.tokenize("demo", &valid_numbers(1)[0], TokenFormat::Opaque).await);
        assert_eq!(code, Code::DataLoss);
        let (code, message) = refusal(replica.client("admin").await.rotate_tenant_key("demo").await);
        assert_eq!(code, Code::DataLoss, "version 2 is not added again as if new: {message}");
        assert_eq!(records().await, "0");
    }
}
