//! The audit log verified with public keys only (issue 8, point 1): every
//! kind of tampering named at the right entry, truncation and a whole
//! rewrite caught through a saved checkpoint, forged signatures, signing
//! key rotation.

use std::time::Duration;

use mnvault_core::audit::checkpoint::SignedCheckpoint;
use mnvault_core::audit::line::AuditLine;
use mnvault_core::store::{AuditFilter, ChainHead};

use crate::helpers::{approved_job, spawn_app, spawn_app_with, tokenize_fresh, Backend, TestApp};

/// Tokenizes four numbers and releases them in an approved job: a log of
/// several entries whose head the vault signed at the release.
async fn log_with_a_release(app: &TestApp) -> Vec<String> {
    let tokens = tokenize_fresh(app, 4).await;
    let job = approved_job(app, &tokens, 1).await;
    app.client("filer").await.detokenize(&job, tokens.clone()).await.unwrap();
    tokens
}

/// `audit verify` with no secret, trusting the vault's exported public key
/// unless `extra` names one.
async fn verify(app: &TestApp, extra: &[&str]) -> anyhow::Result<String> {
    let key = app.cli(&["signing-key", "export"]).await.unwrap().trim().to_owned();
    let mut args = vec!["audit", "verify", "--public-only"];
    if !extra.contains(&"--public-key") {
        args.extend(["--public-key", &key]);
    }
    args.extend_from_slice(extra);
    app.cli(&args).await
}

async fn head_seq(app: &TestApp) -> u64 {
    app.core().store().begin_read().await.unwrap().audit_head().await.unwrap().seq
}

/// The same change in audit_entries and audit_entry_tokens, as someone who
/// holds the database would make it (SQLite's foreign keys are a setting of
/// the connection).
async fn both_tables(app: &TestApp, sql: &str) {
    let mut db = app.database().await;
    if matches!(app.backend, Backend::Sqlite) {
        db.exec("PRAGMA foreign_keys = OFF").await;
    }
    for table in ["audit_entry_tokens", "audit_entries"] {
        db.exec(&sql.replace("{table}", table)).await;
    }
}

on_both_backends! {
    async fn the_vault_signs_the_head_at_every_release_and_verify_needs_no_secret(backend) {
        let app = spawn_app(&backend).await;
        log_with_a_release(&app).await;
        let report = verify(&app, &[]).await.unwrap();
        assert!(report.starts_with("audit chain intact: "), "{report}");
        assert!(report.contains("; 0 entries after it not yet signed"), "the release itself is signed: {report}");
        assert!(report.contains("not checked (--public-only)"), "{report}");
        // With no key pinned, given or at hand, it refuses to vouch, unless told to trust the log's own.
        let error = app.cli(&["audit", "verify", "--public-only"]).await.unwrap_err().to_string();
        assert!(error.contains("no key to trust"), "{error}");
        let report = app.cli(&["audit", "verify", "--public-only", "--trust-log-keys"]).await.unwrap();
        assert!(report.contains("intact") && report.contains("UNPINNED"), "{report}");

        // With no root key anywhere, the same verdict.
        let key = app.path().join(mnvault::datadir::ROOT_KEY_FILE);
        let moved = app.path().join("root.key.elsewhere");
        std::fs::rename(&key, &moved).unwrap();
        let public_key = {
            std::fs::rename(&moved, &key).unwrap();
            let exported = app.cli(&["signing-key", "export"]).await.unwrap();
            std::fs::rename(&key, &moved).unwrap();
            exported.trim().to_owned()
        };
        let report = app.cli(&["audit", "verify", "--public-key", &public_key]).await.unwrap();
        assert!(report.contains("audit chain intact: "), "{report}");
        assert!(report.contains("the key given on the command line"), "{report}");
        assert!(report.contains("not checked: no root key here"), "{report}");
        std::fs::rename(&moved, &key).unwrap();
        // With it, the MACs and the stored state too, and the key it unwraps anchors the signatures.
        let report = app.cli(&["audit", "verify"]).await.unwrap();
        assert!(report.contains("chain MACs intact") && report.contains("stored state intact"), "{report}");
        assert!(report.contains("unwrapped with the root key"), "{report}");
    }
}

on_both_backends! {
    async fn a_changed_entry_is_named(backend) {
        let app = spawn_app(&backend).await;
        log_with_a_release(&app).await;
        app.database().await.exec("UPDATE audit_entries SET principal = 'someone-else' WHERE seq = 3").await;
        let error = verify(&app, &[]).await.unwrap_err().to_string();
        assert!(error.contains("entry #3") && error.contains("edited"), "{error}");
    }

    /// Entries written before signed checkpoints have no MAC and a public
    /// verifier cannot check their content; removing MACs to pass an edit
    /// off as such an entry is caught by what the checkpoints signed.
    async fn an_edit_passed_off_as_an_older_entry_is_caught(backend) {
        let app = spawn_app(&backend).await;
        log_with_a_release(&app).await;
        let mut db = app.database().await;
        db.exec("UPDATE audit_entries SET mac = NULL WHERE seq <= 3").await;
        db.exec("UPDATE audit_entries SET principal = 'someone-else' WHERE seq = 3").await;
        let error = verify(&app, &[]).await.unwrap_err().to_string();
        assert!(error.contains("entry #1") && error.contains("has no MAC"), "{error}");
        let error = app.cli(&["audit", "verify"]).await.unwrap_err().to_string();
        assert!(error.contains("entry #1"), "with the chain key too: {error}");
    }

    /// Review finding: MACs removed, a release relabelled and every
    /// checkpoint deleted; the saved checkpoint still says where MACs start.
    async fn removed_macs_and_checkpoints_are_caught_by_a_saved_checkpoint(backend) {
        let app = spawn_app(&backend).await;
        log_with_a_release(&app).await;
        let out = app.path().join("checkpoint.json");
        app.cli(&["audit", "checkpoint", "--out", out.to_str().unwrap(), "--as", "auditor"]).await.unwrap();
        let release = head_seq(&app).await - 1;
        let mut db = app.database().await;
        db.exec(&format!("UPDATE audit_entries SET mac = NULL WHERE seq <= {release}")).await;
        db.exec(&format!("UPDATE audit_entries SET principal = 'approver' WHERE seq = {release}")).await;
        db.exec("DELETE FROM audit_checkpoints").await;
        let error = verify(&app, &["--checkpoint", out.to_str().unwrap()]).await.unwrap_err().to_string();
        assert!(error.contains("entry #1") && error.contains("has no MAC"), "{error}");
    }

    /// Review finding: a row planted past the head stopped periodic signing.
    async fn a_checkpoint_row_planted_past_the_head_is_named_and_signing_goes_on(backend) {
        let app = spawn_app_with(&backend, |settings| {
            settings.audit.interval_override = Some(Duration::from_millis(50));
        })
        .await;
        log_with_a_release(&app).await;
        app.database()
            .await
            .exec(
                "INSERT INTO audit_checkpoints (seq, hash, time, signed_form_from, signer, signature) \
                 SELECT 4000000000, hash, time, signed_form_from, signer, signature FROM audit_checkpoints \
                 WHERE seq = (SELECT MAX(seq) FROM audit_checkpoints)",
            )
            .await;
        let error = verify(&app, &[]).await.unwrap_err().to_string();
        assert!(error.contains("a checkpoint is stored at #4000000000"), "{error}");
        tokenize_fresh(&app, 1).await;
        let head = head_seq(&app).await;
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let signed = app.core().store().begin_read().await.unwrap().audit_checkpoint_at_or_before(head).await;
                if signed.unwrap().is_some_and(|c| c.seq == head) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the head is signed within the hang guard");
    }

    async fn a_removed_entry_is_named(backend) {
        let app = spawn_app(&backend).await;
        log_with_a_release(&app).await;
        both_tables(&app, "DELETE FROM {table} WHERE seq = 3").await;
        let error = verify(&app, &[]).await.unwrap_err().to_string();
        assert!(error.contains("entry #3") && error.contains("missing (removed)"), "{error}");
    }

    async fn an_inserted_entry_is_named(backend) {
        let app = spawn_app(&backend).await;
        log_with_a_release(&app).await;
        // Make room at #3 (through a far range, so no key collides), then copy #2 there.
        both_tables(&app, "UPDATE {table} SET seq = seq + 100000 WHERE seq >= 3").await;
        both_tables(&app, "UPDATE {table} SET seq = seq - 99999 WHERE seq >= 100000").await;
        app.database()
            .await
            .exec(
                "INSERT INTO audit_entries (seq, time, principal, tenant, operation, outcome, reason, job_id, purpose, \
                 record_count, request_id, prev_hash, hash, mac) SELECT 3, time, principal, tenant, operation, \
                 outcome, reason, job_id, purpose, record_count, request_id, hash, hash, mac FROM audit_entries \
                 WHERE seq = 2",
            )
            .await;
        let error = verify(&app, &[]).await.unwrap_err().to_string();
        assert!(error.contains("entry #3"), "{error}");
    }

    async fn reordered_entries_are_named(backend) {
        let app = spawn_app(&backend).await;
        log_with_a_release(&app).await;
        both_tables(&app, "UPDATE {table} SET seq = 100003 WHERE seq = 3").await;
        both_tables(&app, "UPDATE {table} SET seq = 3 WHERE seq = 4").await;
        both_tables(&app, "UPDATE {table} SET seq = 4 WHERE seq = 100003").await;
        let error = verify(&app, &[]).await.unwrap_err().to_string();
        assert!(error.contains("entry #3") && error.contains("does not link"), "{error}");
    }
}

on_both_backends! {
    async fn a_forged_or_foreign_signature_is_caught(backend) {
        let app = spawn_app(&backend).await;
        log_with_a_release(&app).await;
        let out = app.path().join("checkpoint.json");
        app.cli(&["audit", "checkpoint", "--out", out.to_str().unwrap(), "--as", "auditor"]).await.unwrap();
        let exported = app.cli(&["signing-key", "export"]).await.unwrap();
        let pinned = exported.trim();
        verify(&app, &["--public-key", pinned]).await.unwrap();

        // A key the office never pinned signs nothing that counts.
        let stranger =
            mnvault_keys::VaultSigningKey::new(&mnvault_keys::KeyMaterial::generate()).public_key().to_string();
        let error = verify(&app, &["--public-key", &stranger]).await.unwrap_err().to_string();
        assert!(error.contains("not trusted"), "{error}");

        // The latest checkpoint given another checkpoint's signature.
        let mut db = app.database().await;
        db.exec(
            "UPDATE audit_checkpoints SET signature = (SELECT signature FROM audit_checkpoints ORDER BY seq LIMIT 1) \
             WHERE seq = (SELECT MAX(seq) FROM audit_checkpoints)",
        )
        .await;
        let error = verify(&app, &["--public-key", pinned]).await.unwrap_err().to_string();
        assert!(error.contains("forged"), "{error}");
        // The saved file, edited, is refused before anything is walked.
        let mut line = std::fs::read_to_string(&out).unwrap();
        let Ok(AuditLine::Checkpoint(saved)) = AuditLine::parse(line.trim()) else { panic!("{line}") };
        line = AuditLine::Checkpoint(SignedCheckpoint { time_ms: saved.time_ms + 1, ..saved }).to_json();
        std::fs::write(&out, line).unwrap();
        let error = verify(&app, &["--checkpoint", out.to_str().unwrap()]).await.unwrap_err().to_string();
        assert!(error.contains("does not verify"), "{error}");
    }
}

on_both_backends! {
    async fn truncation_is_caught_through_a_saved_checkpoint(backend) {
        let app = spawn_app(&backend).await;
        log_with_a_release(&app).await;
        let cut_at = head_seq(&app).await;
        tokenize_fresh(&app, 3).await;
        let out = app.path().join("checkpoint.json");
        app.cli(&["audit", "checkpoint", "--out", out.to_str().unwrap(), "--as", "auditor"]).await.unwrap();
        let saved = out.to_str().unwrap();
        verify(&app, &["--checkpoint", saved]).await.unwrap();

        // Cut the log back to #cut_at, head and checkpoints with it: the
        // database agrees with itself.
        both_tables(&app, &format!("DELETE FROM {{table}} WHERE seq > {cut_at}")).await;
        let mut db = app.database().await;
        db.exec(&format!("DELETE FROM audit_checkpoints WHERE seq > {cut_at}")).await;
        db.exec(&format!(
            "UPDATE audit_chain_head SET seq = {cut_at}, hash = (SELECT hash FROM audit_entries WHERE seq = {cut_at})"
        ))
        .await;
        let alone = verify(&app, &[]).await.unwrap();
        assert!(alone.starts_with("audit chain intact"), "only a copy kept elsewhere can tell: {alone}");
        let error = verify(&app, &["--checkpoint", saved]).await.unwrap_err().to_string();
        assert!(error.contains("truncated"), "{error}");
    }

    async fn entries_cut_from_the_end_are_caught_by_the_checkpoints_left_behind(backend) {
        let app = spawn_app(&backend).await;
        log_with_a_release(&app).await;
        let head = head_seq(&app).await;
        both_tables(&app, &format!("DELETE FROM {{table}} WHERE seq > {}", head - 2)).await;
        app.database()
            .await
            .exec(&format!(
                "UPDATE audit_chain_head SET seq = {0}, hash = (SELECT hash FROM audit_entries WHERE seq = {0})",
                head - 2
            ))
            .await;
        let error = verify(&app, &[]).await.unwrap_err().to_string();
        assert!(error.contains("entries removed from its end"), "{error}");
    }
}

on_both_backends! {
    /// Whoever holds the root key can rewrite the whole log so that it
    /// verifies against the database alone (here: every release relabelled
    /// to another principal, MACs and checkpoints recomputed). A checkpoint
    /// saved outside the server catches it.
    async fn a_whole_rewrite_by_the_root_key_holder_is_caught_by_a_saved_checkpoint(backend) {
        let app = spawn_app(&backend).await;
        log_with_a_release(&app).await;
        let out = app.path().join("checkpoint.json");
        app.cli(&["audit", "checkpoint", "--out", out.to_str().unwrap(), "--as", "auditor"]).await.unwrap();

        let settings = mnvault::config::Settings::load(app.path()).unwrap();
        let provider = mnvault::startup::root_key_provider(&settings).unwrap();
        let store = app.core().store().clone();
        let keys = mnvault_core::keyring::load_system_keys(store.as_ref(), provider.as_ref()).await.unwrap();
        let signing = mnvault_core::keyring::load_signing_key(store.as_ref(), provider.as_ref()).await.unwrap();
        let mut read = store.begin_read().await.unwrap();
        let mut entries = read.audit_entries(&AuditFilter { limit: 1_000, ..AuditFilter::default() }).await.unwrap();
        let checkpoints = read.audit_checkpoints(0, 1_000).await.unwrap();
        drop(read);
        let mut prev = mnvault_keys::GENESIS_HASH;
        let mut relabelled = 0;
        for entry in &mut entries {
            if entry.operation == "filing.detokenize" {
                entry.principal = "approver".into();
                relabelled += 1;
            }
            entry.prev_hash = prev;
            entry.hash = mnvault_keys::entry_hash(&prev, &entry.digest());
            entry.mac = Some(keys.audit_chain.mac(&entry.hash));
            prev = entry.hash;
        }
        assert_eq!(relabelled, 1);
        both_tables(&app, "DELETE FROM {table}").await;
        app.database().await.exec("DELETE FROM audit_checkpoints").await;
        let mut tx = store.begin_write().await.unwrap();
        tx.insert_audit_entries(&entries).await.unwrap();
        let last = entries.last().unwrap();
        tx.set_chain_head(&ChainHead { seq: last.seq, hash: last.hash }).await.unwrap();
        for checkpoint in checkpoints {
            let hash = entries[checkpoint.seq as usize - 1].hash;
            let head = ChainHead { seq: checkpoint.seq, hash };
            tx.insert_audit_checkpoint(&SignedCheckpoint::sign(&signing, &head, checkpoint.time_ms)).await.unwrap();
        }
        tx.commit().await.unwrap();

        // Against the database alone, with every key: intact.
        let fooled = app.cli(&["audit", "verify"]).await.unwrap();
        assert!(fooled.starts_with("audit chain intact") && fooled.contains("chain MACs intact"), "{fooled}");
        let error = verify(&app, &["--checkpoint", out.to_str().unwrap()]).await.unwrap_err().to_string();
        assert!(error.contains("differs from the saved checkpoint"), "{error}");
    }
}

on_both_backends! {
    async fn a_rotated_signing_key_leaves_old_checkpoints_verifiable(backend) {
        let app = spawn_app(&backend).await;
        log_with_a_release(&app).await;
        let old = app.cli(&["signing-key", "export"]).await.unwrap().trim().to_owned();
        let rotated = app.cli(&["signing-key", "rotate", "--as", "admin"]).await.unwrap();
        let new = rotated.lines().find_map(|l| l.strip_prefix("new\t")).unwrap().to_owned();
        assert_ne!(old, new);
        assert!(rotated.contains(&format!("previous\t{old}")), "{rotated}");
        assert_eq!(app.cli(&["signing-key", "export"]).await.unwrap().trim(), new);
        // Signed from now on by the new key.
        log_with_a_release(&app).await;
        let new_id = mnvault_keys::PublicKey::parse(&new).unwrap().key_id();
        for pinned in [&old, &new] {
            let report = verify(&app, &["--public-key", pinned]).await.unwrap();
            assert!(report.contains(&format!("by {new_id}")), "{report}");
        }
        // Only an admin rotates it.
        let error = app.cli(&["signing-key", "rotate", "--as", "auditor"]).await.unwrap_err().to_string();
        assert!(error.contains("PermissionDenied") || error.contains("may not"), "{error}");
    }

    /// Review finding: rotating must revoke the old key for what follows,
    /// and a replica must follow the rotation without a restart.
    async fn after_a_rotation_the_old_key_signs_nothing_later_and_replicas_follow(backend) {
        let app = spawn_app(&backend).await;
        log_with_a_release(&app).await;
        let settings = mnvault::config::Settings::load(app.path()).unwrap();
        let provider = mnvault::startup::root_key_provider(&settings).unwrap();
        let store = app.core().store().clone();
        let stolen = mnvault_core::keyring::load_signing_key(store.as_ref(), provider.as_ref()).await.unwrap();
        let replica = crate::helpers::spawn_replica(&app).await;
        app.cli(&["signing-key", "rotate", "--as", "admin"]).await.unwrap();
        let new = app.cli(&["signing-key", "export"]).await.unwrap().trim().to_owned();
        // The replica signs its next release with the new key.
        log_with_a_release(&replica).await;
        let head = head_seq(&app).await;
        let latest = store.begin_read().await.unwrap().latest_audit_checkpoint().await.unwrap().unwrap();
        assert_eq!((latest.seq, latest.signer.to_string()), (head, new.clone()));
        verify(&app, &["--public-key", &new]).await.unwrap();
        // Whoever kept the old key cannot vouch for anything after the rotation.
        let mut tx = store.begin_write().await.unwrap();
        tx.insert_audit_checkpoint(&SignedCheckpoint::sign(&stolen, &ChainHead { seq: head, hash: latest.hash }, 1))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let error = verify(&app, &["--public-key", &new]).await.unwrap_err().to_string();
        assert!(error.contains("trusted only for other positions"), "{error}");
    }

    async fn an_admin_of_some_tenants_cannot_rotate_the_vault_signing_key(backend) {
        let app = spawn_app_with(&backend, |settings| {
            settings.principals.get_mut("admin").unwrap().tenants = vec!["demo".into()];
        })
        .await;
        let error = app.cli(&["signing-key", "rotate", "--as", "admin"]).await.unwrap_err().to_string();
        assert!(error.contains("only some tenants"), "{error}");
    }
}

#[tokio::test]
async fn the_vault_signs_its_head_periodically() {
    let app = spawn_app_with(&Backend::Sqlite, |settings| {
        settings.audit.interval_override = Some(Duration::from_millis(50));
    })
    .await;
    tokenize_fresh(&app, 2).await;
    let head = head_seq(&app).await;
    let signed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let latest = app.core().store().begin_read().await.unwrap().latest_audit_checkpoint().await.unwrap();
            if latest.as_ref().is_some_and(|c| c.seq >= head) {
                return latest.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a checkpoint within the hang guard");
    assert!(signed.signature_valid());
    // Nothing appended since: nothing more is signed (no entry of its own either).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(head_seq(&app).await, head);
}
