//! Someone who can write the database, but holds no key, edits the rows that
//! decide a release. Each edit found by the attacker review of issue 6 is
//! replayed here; each must end in DATA_LOSS naming the object, with nothing
//! released, the failure counted, and the rest of the vault still working.

use mnvault_client::{Code, TokenFormat};

use crate::helpers::{
    approved_job, filing_job, refusal, spawn_app, spawn_replica, tokenize_fresh, valid_numbers, Db, TestApp,
};

/// A refusal for a tampered object: DATA_LOSS naming `object`, no number.
fn assert_tampered<T: std::fmt::Debug>(result: Result<T, mnvault_client::ClientError>, object: &str) {
    let (code, message) = refusal(result);
    assert_eq!(code, Code::DataLoss, "{message}");
    assert!(message.contains(object) && message.contains("integrity check"), "{message}");
}

/// A bytea/blob column as lower-case hex, and the SQL literal that writes it back.
async fn blob_hex(db: &mut Db, column: &str, from: &str) -> String {
    let sql = match db {
        Db::Sqlite(_) => format!("SELECT lower(hex({column})) FROM {from}"),
        Db::Postgres(_) => format!("SELECT encode({column}, 'hex') FROM {from}"),
    };
    db.text(&sql).await
}

fn blob_literal(db: &Db, hex: &str) -> String {
    match db {
        Db::Sqlite(_) => format!("X'{hex}'"),
        Db::Postgres(_) => format!("decode('{hex}', 'hex')"),
    }
}

async fn pending_job(app: &TestApp, tokens: &[String]) -> String {
    app.client("requester").await.create_filing_job(filing_job(tokens)).await.unwrap().job_id
}

on_both_backends! {
    async fn an_approval_copied_from_another_job_releases_nothing(backend) {
        let app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 3).await;
        let approved = approved_job(&app, &tokens[..1], 1).await;
        let pending = pending_job(&app, &tokens[1..2]).await;
        let mut db = app.database().await;
        // The stamps alone, then the stamps with the other job's whole state.
        db.exec(&format!(
            "UPDATE filing_jobs SET approved_by = (SELECT approved_by FROM filing_jobs WHERE job_id = '{approved}'), \
             approved_at = (SELECT approved_at FROM filing_jobs WHERE job_id = '{approved}') WHERE job_id = '{pending}'"
        ))
        .await;
        let filer = app.client("filer").await;
        assert_tampered(filer.detokenize(&pending, vec![]).await, &pending);
        db.exec(&format!(
            "UPDATE filing_jobs SET state_tag = (SELECT state_tag FROM filing_jobs WHERE job_id = '{approved}'), \
             state_seq = (SELECT state_seq FROM filing_jobs WHERE job_id = '{approved}') WHERE job_id = '{pending}'"
        ))
        .await;
        assert_tampered(filer.detokenize(&pending, vec![]).await, &pending);
        assert_tampered(app.client("requester").await.get_filing_job(&pending).await, &pending);
        assert_eq!(app.integrity_failures(), 3);
        // The rest keeps working: the genuine job still releases, once.
        assert_eq!(filer.detokenize(&approved, vec![]).await.unwrap().len(), 1);
        let fresh = approved_job(&app, &tokens[2..], 1).await;
        assert_eq!(filer.detokenize(&fresh, vec![]).await.unwrap().len(), 1);
        // The refused releases are in the audit log as failures.
        let failed = db
            .text(&format!(
                "SELECT CAST(COUNT(*) AS TEXT) FROM audit_entries WHERE job_id = '{pending}' AND outcome = 'failed'"
            ))
            .await;
        assert_eq!(failed, "3");
    }

    async fn a_release_count_set_back_releases_nothing_again(backend) {
        let app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 1).await;
        let job = approved_job(&app, &tokens, 1).await;
        let filer = app.client("filer").await;
        assert_eq!(filer.detokenize(&job, vec![]).await.unwrap().len(), 1);
        app.database().await.exec(&format!("UPDATE filing_job_tokens SET releases = 0 WHERE job_id = '{job}'")).await;
        assert_tampered(filer.detokenize(&job, vec![]).await, &job);
        assert_eq!(app.integrity_failures(), 1);
    }

    async fn a_job_rolled_back_to_its_own_earlier_state_releases_nothing_again(backend) {
        // The attacker kept the job's genuine, tagged state from before the
        // release (a backup) and puts it back: every tag verifies, but the
        // audit log already holds a later change of this job.
        let app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 2).await;
        let job = approved_job(&app, &tokens, 1).await;
        let mut db = app.database().await;
        let row = format!("filing_jobs WHERE job_id = '{job}'");
        let tag = blob_hex(&mut db, "state_tag", &row).await;
        let seq = db.text(&format!("SELECT CAST(state_seq AS TEXT) FROM {row}")).await;
        let filer = app.client("filer").await;
        assert_eq!(filer.detokenize(&job, vec![]).await.unwrap().len(), 2);
        let literal = blob_literal(&db, &tag);
        db.exec(&format!(
            "UPDATE filing_jobs SET state_tag = {literal}, state_seq = {seq} WHERE job_id = '{job}'; \
             UPDATE filing_job_tokens SET releases = 0 WHERE job_id = '{job}'"
        ))
        .await;
        assert_tampered(filer.detokenize(&job, vec![]).await, &job);
        assert_eq!(app.integrity_failures(), 1);
    }

    async fn an_erased_cancellation_releases_nothing(backend) {
        let app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 1).await;
        let job = approved_job(&app, &tokens, 1).await;
        app.client("requester").await.cancel_filing_job(&job).await.unwrap();
        app.database()
            .await
            .exec(&format!("UPDATE filing_jobs SET cancelled_by = NULL, cancelled_at = NULL WHERE job_id = '{job}'"))
            .await;
        assert_tampered(app.client("filer").await.detokenize(&job, vec![]).await, &job);
    }

    async fn edited_terms_or_token_lists_release_nothing(backend) {
        let app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 3).await;
        let filer = app.client("filer").await;
        let mut db = app.database().await;
        // A higher limit or a later expiry than the approver saw.
        let job = approved_job(&app, &tokens[..1], 1).await;
        db.exec(&format!("UPDATE filing_jobs SET max_releases_per_token = 5 WHERE job_id = '{job}'")).await;
        assert_tampered(filer.detokenize(&job, vec![]).await, &job);
        let job = approved_job(&app, &tokens[..1], 1).await;
        db.exec(&format!("UPDATE filing_jobs SET expires_at = expires_at + 86400000 WHERE job_id = '{job}'")).await;
        assert_tampered(filer.detokenize(&job, vec![]).await, &job);
        // A token the approver never saw, added to an approved job.
        let job = approved_job(&app, &tokens[..1], 1).await;
        db.exec(&format!(
            "INSERT INTO filing_job_tokens (job_id, position, token, releases) VALUES ('{job}', 1, '{}', 0)",
            tokens[2]
        ))
        .await;
        assert_tampered(filer.detokenize(&job, vec![tokens[2].clone()]).await, &job);
        assert_eq!(app.integrity_failures(), 3);
    }

    async fn swapped_blind_indexes_never_answer_another_persons_token(backend) {
        let app = spawn_app(&backend).await;
        let payroll = app.client("payroll").await;
        let numbers = valid_numbers(3);
        let x = payroll.tokenize("demo", &numbers[0], TokenFormat::Opaque).await.unwrap();
        let y = payroll.tokenize("demo", &numbers[1], TokenFormat::Opaque).await.unwrap();
        let mut db = app.database().await;
        let index_x = blob_hex(&mut db, "blind_index", &format!("records WHERE token = '{x}'")).await;
        let index_y = blob_hex(&mut db, "blind_index", &format!("records WHERE token = '{y}'")).await;
        let (lit_x, lit_y, parked) = (blob_literal(&db, &index_x), blob_literal(&db, &index_y), blob_literal(&db, &"00".repeat(32)));
        // Through a parked value: the unique index forbids a direct swap.
        db.exec(&format!(
            "UPDATE records SET blind_index = {parked} WHERE token = '{x}'; \
             UPDATE records SET blind_index = {lit_x} WHERE token = '{y}'; \
             UPDATE records SET blind_index = {lit_y} WHERE token = '{x}'"
        ))
        .await;
        // Tokenizing X would now find Y's row: refused instead of answering Y's token.
        assert_tampered(payroll.tokenize("demo", &numbers[0], TokenFormat::Opaque).await, &y);
        assert_tampered(payroll.tokenize("demo", &numbers[1], TokenFormat::Opaque).await, &x);
        assert_tampered(payroll.describe_token("demo", &x).await, &x);
        // Other numbers still tokenize.
        payroll.tokenize("demo", &numbers[2], TokenFormat::Opaque).await.unwrap();
        assert_eq!(app.integrity_failures(), 3);
    }

    async fn a_record_row_invented_without_the_key_is_never_used(backend) {
        let app = spawn_app(&backend).await;
        let payroll = app.client("payroll").await;
        let real = payroll.tokenize("demo", &valid_numbers(1)[0], TokenFormat::Opaque).await.unwrap();
        let mut db = app.database().await;
        // A copy of a genuine row under a new token: sealed bytes and tag copied too.
        let forged = "mnt_aaaaaaaaaaaaaaaaaaaaaaaaaa";
        db.exec(&format!(
            "INSERT INTO records (tenant, token, format, blind_index, key_version, sealed, created_at, tag) \
             SELECT tenant, '{forged}', format, {}, key_version, sealed, created_at, tag FROM records \
             WHERE token = '{real}'",
            blob_literal(&db, &"11".repeat(32))
        ))
        .await;
        assert_tampered(payroll.describe_token("demo", forged).await, forged);
    }
}

on_both_backends! {
    async fn audit_verify_names_every_tampered_object_and_passes_a_clean_vault(backend) {
        let app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 3).await;
        let job = approved_job(&app, &tokens[..2], 1).await;
        let clean = app.cli(&["audit", "verify"]).await.expect("a clean vault verifies");
        assert!(clean.contains("stored state intact: 3 records, 1 filing jobs"), "{clean}");

        let mut db = app.database().await;
        db.exec(&format!("UPDATE filing_job_tokens SET releases = 1 WHERE job_id = '{job}' AND token = '{}'", tokens[0]))
            .await;
        db.exec(&format!("UPDATE records SET key_version = 2 WHERE token = '{}'", tokens[2])).await;
        let argv = ["mnvault", "audit", "verify", "--data-dir", &app.path().display().to_string()].map(String::from);
        let mut out = Vec::new();
        let verdict = mnvault::cli::run(<mnvault::cli::Cli as clap::Parser>::try_parse_from(argv).unwrap(), &mut out).await;
        let out = String::from_utf8(out).unwrap();
        let error = verdict.expect_err("tampering fails the verification").to_string();
        assert!(error.contains("2 stored object(s) failed"), "{error}");
        assert!(out.contains("audit chain intact"), "{out}");
        assert!(out.contains("stored state TAMPERED: 2 of 3 records and 1 filing jobs"), "{out}");
        assert!(out.contains(&format!("filing job {job} failed its integrity check")), "{out}");
        assert!(out.contains(&format!("the record for token {} failed its integrity check", tokens[2])), "{out}");
    }
}

/// The job's rows as they are now, as SQL that puts them back later (a
/// database writer's backup of one job).
async fn job_snapshot(db: &mut Db, job: &str) -> String {
    let row = format!("filing_jobs WHERE job_id = '{job}'");
    let tag = blob_hex(db, "state_tag", &row).await;
    let seq = db.text(&format!("SELECT CAST(state_seq AS TEXT) FROM {row}")).await;
    let approved_by = db.text(&format!("SELECT COALESCE(approved_by, '') FROM {row}")).await;
    let approved_at = db.text(&format!("SELECT COALESCE(CAST(approved_at AS TEXT), 'NULL') FROM {row}")).await;
    let literal = blob_literal(db, &tag);
    format!(
        "UPDATE filing_jobs SET state_tag = {literal}, state_seq = {seq}, approved_by = '{approved_by}', \
         approved_at = {approved_at}, cancelled_by = NULL, cancelled_at = NULL WHERE job_id = '{job}'; \
         UPDATE filing_job_tokens SET releases = 0 WHERE job_id = '{job}'"
    )
}

/// SQL that cuts the audit log back to where it is now, head row included.
async fn log_snapshot(db: &mut Db) -> String {
    let seq = db.text("SELECT CAST(seq AS TEXT) FROM audit_chain_head").await;
    let hash = blob_hex(db, "hash", "audit_chain_head").await;
    let hash = blob_literal(db, &hash);
    format!(
        "; DELETE FROM audit_entry_tokens WHERE seq > {seq}; DELETE FROM audit_entries WHERE seq > {seq}; \
         UPDATE audit_chain_head SET seq = {seq}, hash = {hash}"
    )
}

on_both_backends! {
    async fn hiding_a_later_change_in_the_log_for_the_length_of_a_call_releases_nothing(backend) {
        // The attacker rolls the job back and, for the length of one call,
        // makes the entry of the change it undoes look like something else
        // (a refusal, another job), then puts the entry back: the chain is
        // intact again afterwards. The vault judges by the entries it verified
        // itself, so the edit changes nothing; and once the chain failed to
        // verify, this vault makes no more decisions until it restarts.
        let app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 2).await;
        let filer = app.client("filer").await;
        let mut db = app.database().await;
        for hide in ["outcome = 'denied'", "job_id = ''"] {
            let job = approved_job(&app, &tokens, 1).await;
            let before = job_snapshot(&mut db, &job).await;
            filer.detokenize(&job, vec![]).await.unwrap();
            app.client("requester").await.get_filing_job(&job).await.unwrap(); // the release is no longer the tail
            let release = db
                .text(&format!(
                    "SELECT CAST(MAX(seq) AS TEXT) FROM audit_entries WHERE job_id = '{job}' AND operation = 'filing.detokenize'"
                ))
                .await;
            db.exec(&before).await;
            let original = db.text(&format!("SELECT outcome || '|' || job_id FROM audit_entries WHERE seq = {release}")).await;
            db.exec(&format!("UPDATE audit_entries SET {hide} WHERE seq = {release}")).await;
            // Refused either way: the job is older than the log, or (when the
            // vault had not yet verified the edited entry) the log itself fails.
            let (code, message) = refusal(filer.detokenize(&job, vec![]).await);
            assert_eq!(code, Code::DataLoss, "{message}");
            assert!(message.contains(&job) || message.contains("the audit log (entry #"), "{message}");
            let (outcome, job_id) = original.split_once('|').unwrap();
            db.exec(&format!("UPDATE audit_entries SET outcome = '{outcome}', job_id = '{job_id}' WHERE seq = {release}")).await;
        }
    }

    async fn a_job_rolled_back_with_the_logs_tail_releases_nothing_while_the_vault_runs(backend) {
        // Rows and chain tail put back together, head row included: every
        // tag and every link verifies, but this vault already verified the
        // entries that were cut.
        let app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 2).await;
        let job = approved_job(&app, &tokens, 1).await;
        let mut db = app.database().await;
        let before = format!("{} {}", job_snapshot(&mut db, &job).await, log_snapshot(&mut db).await);
        let filer = app.client("filer").await;
        filer.detokenize(&job, vec![]).await.unwrap();
        db.exec(&before).await;
        let (code, message) = refusal(filer.detokenize(&job, vec![]).await);
        assert_eq!(code, Code::DataLoss, "{message}");
        assert!(message.contains("the audit log"), "{message}");
    }
}

on_both_backends! {
    async fn a_database_rolled_back_whole_while_the_vault_was_stopped_releases_nothing(backend) {
        // Job rows, log tail and head row put back together while the vault
        // is down: everything in the database is genuine and consistent. The
        // watermark this host kept outside the database shows the chain once
        // went further.
        let mut app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 2).await;
        let job = approved_job(&app, &tokens, 1).await;
        let mut db = app.database().await;
        let before = format!("{} {}", job_snapshot(&mut db, &job).await, log_snapshot(&mut db).await);
        app.client("filer").await.detokenize(&job, vec![]).await.unwrap();
        app.stop().await;
        db.exec(&before).await;
        let restarted = spawn_replica(&app).await;
        let (code, message) = refusal(restarted.client("filer").await.detokenize(&job, vec![]).await);
        assert_eq!(code, Code::DataLoss, "{message}");
        assert!(message.contains("does not verify"), "{message}");
        assert!(restarted.integrity_failures() >= 1, "the rollback found at start is counted");
        // Nothing else either: a revocation may have been rolled back with the rest.
        let tokenized = restarted.client("payroll").await.tokenize("demo", &valid_numbers(1)[0], TokenFormat::Opaque).await;
        assert_eq!(refusal(tokenized).0, Code::DataLoss);
    }
}
