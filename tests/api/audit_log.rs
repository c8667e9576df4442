//! The audit log: every call is there, allowed or denied; edits are caught.

use mnvault_client::{ListAuditEntriesRequest, TokenFormat};

use crate::helpers::{refusal, spawn_app, tokenize_fresh, valid_numbers, Backend};

on_both_backends! {
    async fn every_call_allowed_or_denied_is_recorded_without_the_number(backend) {
        let app = spawn_app(&backend).await;
        let number = &valid_numbers(1)[0];
        let payroll = app.client("payroll").await;
        let token = payroll.tokenize("demo", number, TokenFormat::Opaque).await.unwrap();
        refusal(payroll.tokenize("demo", "12345678901a8", TokenFormat::Opaque).await);
        refusal(app.client("filer").await.tokenize("demo", number, TokenFormat::Opaque).await);
        payroll.describe_token("demo", &token).await.unwrap();

        let auditor = app.client("auditor").await;
        let entries = auditor.list_audit_entries(ListAuditEntriesRequest::default()).await.unwrap().entries;
        let calls: Vec<_> = entries
            .iter()
            .filter(|e| e.principal != "mnvault-init")
            .map(|e| (e.principal.as_str(), e.operation.as_str(), e.outcome.as_str()))
            .collect();
        assert_eq!(
            calls,
            [
                ("payroll", "token.tokenize", "ok"),
                ("payroll", "token.tokenize", "invalid"),
                ("filer", "token.tokenize", "denied"),
                ("payroll", "token.describe", "ok"),
            ]
        );
        assert_eq!(entries[1].tokens, std::slice::from_ref(&token));
        for entry in &entries {
            let text = format!("{entry:?}");
            assert!(!text.contains(number.as_str()), "entry holds the number: {text}");
        }

        // Scoped by token: one query answers "what happened to this person's number".
        let by_token = auditor
            .list_audit_entries(ListAuditEntriesRequest { token: token.clone(), ..Default::default() })
            .await
            .unwrap()
            .entries;
        assert_eq!(by_token.iter().map(|e| e.operation.as_str()).collect::<Vec<_>>(), ["token.tokenize", "token.describe"]);
        // A tokenizer may not read the log.
        assert_eq!(
            refusal(payroll.list_audit_entries(ListAuditEntriesRequest::default()).await).0,
            mnvault_client::Code::PermissionDenied
        );
    }
}

on_both_backends! {
    async fn a_listing_goes_on_past_an_entry_that_fills_a_page_with_tokens(backend) {
        use mnvault_core::audit::{AuditDraft, Operation};
        use mnvault_core::store::AUDIT_PAGE_TOKENS;
        let app = spawn_app(&backend).await;
        let by = mnvault_core::id::Principal::parse("requester").unwrap();
        let draw = |count: usize| (0..count).map(|_| mnvault_core::mint::draw_token(mnvault_core::id::TokenFormat::Opaque)).collect();
        // An entry of a page's worth of tokens, then small ones: the store cuts its page after the big one.
        let big = app.core().record(AuditDraft { tokens: draw(AUDIT_PAGE_TOKENS), ..AuditDraft::by(&by, Operation::ListPurposes, None) }).await.unwrap();
        let mut small = Vec::new();
        for _ in 0..3 {
            small.push(app.core().record(AuditDraft { tokens: draw(1), ..AuditDraft::by(&by, Operation::ListPurposes, None) }).await.unwrap());
        }
        let auditor = app.client("auditor").await;
        let mut request = ListAuditEntriesRequest::default();
        let mut listed = Vec::new();
        loop {
            let page = auditor.list_audit_entries(request.clone()).await.unwrap();
            listed.extend(page.entries.iter().map(|entry| (entry.seq, entry.tokens.len())));
            if page.next_after_seq == 0 {
                break;
            }
            request.after_seq = page.next_after_seq;
        }
        assert!(listed.contains(&(big, AUDIT_PAGE_TOKENS)), "the big entry, whole");
        for seq in small {
            assert!(listed.contains(&(seq, 1)), "entry {seq} after it is listed too: {:?}", &listed[listed.len().saturating_sub(5)..]);
        }
    }

    async fn an_edited_audit_row_is_caught_by_verify_and_named(backend) {
        let app = spawn_app(&backend).await;
        tokenize_fresh(&app, 5).await;
        let intact = app.cli(&["audit", "verify"]).await.unwrap();
        assert!(intact.starts_with("audit chain intact: 6 entries"), "{intact}");
        let auditor = app.client("auditor").await;
        assert!(auditor.verify_audit_chain().await.unwrap().intact);

        // Someone with database access hides who tokenized entry #3.
        let mut db = app.database().await;
        db.exec("UPDATE audit_entries SET principal = 'someone-else' WHERE seq = 3").await;
        let error = app.cli(&["audit", "verify"]).await.unwrap_err().to_string();
        assert!(error.contains("entry #3"), "{error}");
        let verdict = auditor.verify_audit_chain().await.unwrap();
        assert!(!verdict.intact);
        assert_eq!(verdict.first_bad_seq, 3);
        db.exec("UPDATE audit_entries SET principal = 'payroll' WHERE seq = 3").await;

        // A token removed from an entry is an edit too.
        db.exec("DELETE FROM audit_entry_tokens WHERE seq = 4").await;
        let error = app.cli(&["audit", "verify"]).await.unwrap_err().to_string();
        assert!(error.contains("entry #4"), "{error}");
    }
}

on_both_backends! {
    async fn a_public_verification_reads_on_past_an_entry_that_fills_a_page_with_tokens(backend) {
        use mnvault_core::audit::{AuditDraft, Operation};
        use mnvault_core::store::AUDIT_PAGE_TOKENS;
        let app = spawn_app(&backend).await;
        let by = mnvault_core::id::Principal::parse("requester").unwrap();
        let draw = |count: usize| (0..count).map(|_| mnvault_core::mint::draw_token(mnvault_core::id::TokenFormat::Opaque)).collect();
        // Two entries of 0.6 of a page's tokens: the walk's run of entries is
        // cut after the first, and must read on for the rest of it.
        for tokens in [1, AUDIT_PAGE_TOKENS * 3 / 5, AUDIT_PAGE_TOKENS * 3 / 5, 1, 1] {
            app.core().record(AuditDraft { tokens: draw(tokens), ..AuditDraft::by(&by, Operation::ListPurposes, None) }).await.unwrap();
        }
        let head = app.core().store().begin_read().await.unwrap().audit_head().await.unwrap();
        let intact = app.cli(&["audit", "verify"]).await.unwrap();
        assert!(intact.starts_with(&format!("audit chain intact: {} entries", head.seq)), "{intact}");
    }

    async fn tokens_run_together_into_one_row_are_caught_by_verify(backend) {
        use mnvault_core::audit::{AuditDraft, Operation};
        let app = spawn_app(&backend).await;
        tokenize_fresh(&app, 2).await;
        let by = mnvault_core::id::Principal::parse("requester").unwrap();
        let tokens: Vec<mnvault_core::id::Token> = (0..2).map(|_| mnvault_core::mint::draw_token(mnvault_core::id::TokenFormat::Opaque)).collect();
        let seq = app.core().record(AuditDraft { tokens: tokens.clone(), ..AuditDraft::by(&by, Operation::ListPurposes, None) }).await.unwrap();
        tokenize_fresh(&app, 2).await;
        assert!(app.cli(&["audit", "verify"]).await.unwrap().starts_with("audit chain intact"));
        // Someone with database access folds the second token into the
        // first's row, separated as a store might join them to read faster,
        // so that a search for the second finds nothing.
        let mut db = app.database().await;
        db.exec(&format!("DELETE FROM audit_entry_tokens WHERE seq = {seq} AND position = 1")).await;
        db.exec(&format!(
            "UPDATE audit_entry_tokens SET token = '{} {}' WHERE seq = {seq} AND position = 0",
            tokens[0].as_str(),
            tokens[1].as_str()
        ))
        .await;
        let error = app.cli(&["audit", "verify"]).await.unwrap_err().to_string();
        assert!(error.contains(&format!("entry #{seq}")), "{error}");
    }

    async fn a_head_moved_far_ahead_is_reported_not_walked_to(backend) {
        let app = spawn_app(&backend).await;
        tokenize_fresh(&app, 3).await;
        // Someone with database access empties the log and moves the head
        // so that it would seem to run on for 10^18 positions: a walk that
        // read every run of positions up to it would never end.
        let mut db = app.database().await;
        db.exec("DELETE FROM audit_entry_tokens").await;
        db.exec("DELETE FROM audit_entries").await;
        db.exec("UPDATE audit_chain_head SET seq = 1000000000000000000").await;
        // A guard against a hang, not a measure of speed.
        let verified = tokio::time::timeout(std::time::Duration::from_secs(120), app.cli(&["audit", "verify"]))
            .await
            .expect("the walk ends where the rows end instead of reading empty runs up to the head");
        let error = verified.unwrap_err().to_string();
        assert!(error.contains("entry #1"), "{error}");
    }

    async fn a_deleted_audit_row_is_caught_by_verify(backend) {
        let app = spawn_app(&backend).await;
        tokenize_fresh(&app, 3).await;
        let mut db = app.database().await;
        db.exec("DELETE FROM audit_entry_tokens WHERE seq = 2").await;
        db.exec("DELETE FROM audit_entries WHERE seq = 2").await;
        let error = app.cli(&["audit", "verify"]).await.unwrap_err().to_string();
        assert!(error.contains("entry #2") && error.contains("missing"), "{error}");
    }
}

on_both_backends! {
    async fn verify_while_the_vault_keeps_appending_reports_an_intact_chain(backend) {
        let app = spawn_app(&backend).await;
        let payroll = app.client("payroll").await;
        // More than one page of entries.
        tokenize_fresh(&app, 1_100).await;
        let writer = tokio::spawn(async move {
            for number in valid_numbers(300) {
                payroll.tokenize("demo", &number, TokenFormat::Opaque).await.unwrap();
            }
        });
        let auditor = app.client("auditor").await;
        let mut verified = 0;
        while !writer.is_finished() || verified == 0 {
            let report = app.cli(&["audit", "verify"]).await.unwrap();
            assert!(report.starts_with("audit chain intact: "), "{report}");
            let verdict = auditor.verify_audit_chain().await.unwrap();
            assert!(verdict.intact, "{verdict:?}");
            verified += 1;
        }
        writer.await.unwrap();
        let report = app.cli(&["audit", "verify"]).await.unwrap();
        // 1 (demo tenant) + 1,400 tokenizations + the verifications' own entries.
        let entries: u64 = report.split_whitespace().nth(3).unwrap().parse().unwrap();
        assert!(entries >= 1_401 + verified, "{report}");
    }
}

/// SQLite keeps whatever type a row is given: a token turned into a BLOB
/// reads back as the same text when joined, yet no longer matches a search
/// for it. The walk must not take the joined tokens then.
#[tokio::test]
async fn a_token_stored_as_a_blob_is_caught_by_verify() {
    use mnvault_core::audit::{AuditDraft, Operation};
    let app = spawn_app(&Backend::Sqlite).await;
    let by = mnvault_core::id::Principal::parse("requester").unwrap();
    let tokens: Vec<mnvault_core::id::Token> =
        (0..2).map(|_| mnvault_core::mint::draw_token(mnvault_core::id::TokenFormat::Opaque)).collect();
    let seq =
        app.core().record(AuditDraft { tokens, ..AuditDraft::by(&by, Operation::ListPurposes, None) }).await.unwrap();
    assert!(app.cli(&["audit", "verify"]).await.unwrap().starts_with("audit chain intact"));
    let mut db = app.database().await;
    db.exec(&format!("UPDATE audit_entry_tokens SET token = CAST(token AS BLOB) WHERE seq = {seq} AND position = 1"))
        .await;
    let verified = app.cli(&["audit", "verify"]).await;
    assert!(verified.is_err(), "{verified:?}");
}
