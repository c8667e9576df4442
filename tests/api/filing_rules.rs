//! Every rule of a filing job, and that each refusal names its rule and is audited.

use mnvault::config::PrincipalSettings;
use mnvault_client::{Code, NewFilingJob, TokenFormat, VaultClient};
use mnvault_core::authz::Role;
use secrecy::ExposeSecret;
use time::{Duration, OffsetDateTime};

use crate::helpers::{
    approved_job, filing_job, refusal, spawn_app, spawn_app_with, tokenize_fresh, valid_numbers, TestApp,
};

async fn last_entry(app: &TestApp) -> mnvault_client::AuditEntry {
    app.audit_entries().await.last().cloned().expect("entries")
}

on_both_backends! {
    async fn an_unknown_purpose_no_tokens_a_past_expiry_or_an_unknown_token_are_refused(backend) {
        let app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 1).await;
        let requester = app.client("requester").await;

        let (code, message) =
            refusal(requester.create_filing_job(NewFilingJob { purpose: "marketing".into(), ..filing_job(&tokens) }).await);
        assert_eq!(code, Code::InvalidArgument);
        assert!(message.contains("not a lawful purpose"), "{message}");
        let entry = last_entry(&app).await;
        assert_eq!((entry.operation.as_str(), entry.outcome.as_str()), ("filing.create-job", "invalid"));
        assert!(entry.reason.contains("not a lawful purpose"));

        let (code, _) = refusal(requester.create_filing_job(filing_job(&[])).await);
        assert_eq!(code, Code::InvalidArgument);

        let past = NewFilingJob { expires_at: OffsetDateTime::now_utc() - Duration::minutes(1), ..filing_job(&tokens) };
        let (code, message) = refusal(requester.create_filing_job(past).await);
        assert_eq!(code, Code::InvalidArgument);
        assert!(message.contains("in the past"), "{message}");

        let absent = format!("mnt_{}", "a".repeat(26));
        let (code, message) = refusal(requester.create_filing_job(filing_job(std::slice::from_ref(&absent))).await);
        assert_eq!(code, Code::NotFound);
        // Named by position: an unknown token may be a mistyped number.
        assert!(message.contains("token #1 of the request") && !message.contains(&absent), "{message}");
        // Text that is no token at all is refused as such, and not repeated.
        let (code, message) = refusal(requester.create_filing_job(filing_job(&["mnt_doesnotexist".into()])).await);
        assert_eq!(code, Code::InvalidArgument);
        assert!(message.contains("token is not valid") && !message.contains("doesnotexist"), "{message}");

        let noted = NewFilingJob { note: "for 6214-9832-0257".into(), ..filing_job(&tokens) };
        let (code, message) = refusal(requester.create_filing_job(noted).await);
        assert_eq!(code, Code::InvalidArgument);
        assert!(message.contains("note"), "{message}");
    }
}

on_both_backends! {
    async fn nothing_is_released_before_approval_and_only_a_filer_may_release(backend) {
        let app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 2).await;
        let created = app.client("requester").await.create_filing_job(filing_job(&tokens)).await.unwrap();
        let filer = app.client("filer").await;

        let (code, message) = refusal(filer.detokenize(&created.job_id, vec![]).await);
        assert_eq!(code, Code::FailedPrecondition);
        assert!(message.contains("has not been approved"), "{message}");
        let entry = last_entry(&app).await;
        assert_eq!((entry.operation.as_str(), entry.outcome.as_str()), ("filing.detokenize", "denied"));
        assert_eq!(
            (entry.tenant.as_str(), entry.job_id.as_str(), entry.purpose.as_str()),
            ("demo", created.job_id.as_str(), "withholding-slip")
        );

        let (code, message) = refusal(app.client("requester").await.approve_filing_job(&created.job_id).await);
        assert_eq!(code, Code::PermissionDenied);
        assert!(message.contains("approver role"), "{message}");

        app.client("approver").await.approve_filing_job(&created.job_id).await.unwrap();
        let (code, message) = refusal(app.client("requester").await.detokenize(&created.job_id, vec![]).await);
        assert_eq!(code, Code::PermissionDenied);
        assert!(message.contains("filer role"), "{message}");
        let (code, message) = refusal(app.client("approver").await.approve_filing_job(&created.job_id).await);
        assert_eq!(code, Code::FailedPrecondition);
        assert!(message.contains("already approved"), "{message}");
    }
}

on_both_backends! {
    async fn the_creator_cannot_approve_their_own_job(backend) {
        // A team lead who may both request and approve must still find a second person.
        let app = spawn_app_with(&backend, |settings| {
            settings.principals.insert(
                "requester".into(),
                PrincipalSettings { roles: vec![Role::Requester, Role::Approver], tenants: vec!["*".into()] },
            );
        })
        .await;
        let tokens = tokenize_fresh(&app, 1).await;
        let lead = app.client("requester").await;
        let created = lead.create_filing_job(filing_job(&tokens)).await.unwrap();
        let (code, message) = refusal(lead.approve_filing_job(&created.job_id).await);
        assert_eq!(code, Code::PermissionDenied);
        assert!(message.contains("cannot approve it"), "{message}");
        let entry = last_entry(&app).await;
        assert_eq!(
            (entry.principal.as_str(), entry.operation.as_str(), entry.outcome.as_str()),
            ("requester", "filing.approve-job", "denied")
        );
        let (code, message) = refusal(app.client("filer").await.detokenize(&created.job_id, vec![]).await);
        assert_eq!(code, Code::FailedPrecondition);
        assert!(message.contains("has not been approved"), "{message}");
    }
}

on_both_backends! {
    async fn only_listed_tokens_are_released_and_each_only_as_often_as_allowed(backend) {
        let app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 3).await;
        let filer = app.client("filer").await;

        let job_id = approved_job(&app, &tokens[..2], 1).await;
        let (code, message) = refusal(filer.detokenize(&job_id, vec![tokens[2].clone()]).await);
        assert_eq!(code, Code::PermissionDenied);
        assert!(message.contains("not listed"), "{message}");
        // All or nothing: a request with one unlisted token releases nothing.
        refusal(filer.detokenize(&job_id, vec![tokens[0].clone(), tokens[2].clone()]).await);

        let released = filer.detokenize(&job_id, vec![tokens[0].clone()]).await.unwrap();
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].token, tokens[0]);
        let (code, message) = refusal(filer.detokenize(&job_id, vec![tokens[0].clone()]).await);
        assert_eq!(code, Code::FailedPrecondition);
        assert!(message.contains("already been released 1 time"), "{message}");
        // The rest of the job is still there.
        assert_eq!(filer.detokenize(&job_id, vec![tokens[1].clone()]).await.unwrap().len(), 1);

        let twice = approved_job(&app, &tokens[2..], 2).await;
        let first = filer.detokenize(&twice, vec![]).await.unwrap();
        let second = filer.detokenize(&twice, vec![]).await.unwrap();
        assert_eq!(first[0].number.expose_secret(), second[0].number.expose_secret());
        assert_eq!(refusal(filer.detokenize(&twice, vec![]).await).0, Code::FailedPrecondition);
        let shown = app.client("requester").await.get_filing_job(&twice).await.unwrap();
        assert_eq!(shown.tokens[0].releases, 2);
    }
}

on_both_backends! {
    async fn cancelled_and_expired_jobs_release_nothing(backend) {
        let app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 2).await;
        let filer = app.client("filer").await;

        let cancelled = approved_job(&app, &tokens, 1).await;
        app.client("requester").await.cancel_filing_job(&cancelled).await.unwrap();
        let (code, message) = refusal(filer.detokenize(&cancelled, vec![]).await);
        assert_eq!(code, Code::FailedPrecondition);
        assert!(message.contains("was cancelled by requester"), "{message}");
        assert_eq!(refusal(app.client("requester").await.cancel_filing_job(&cancelled).await).0, Code::FailedPrecondition);

        // Jobs that expire three seconds from now: one approved in time, one left
        // pending. (Editing the expiry in the database is tampering, refused as such.)
        let soon = OffsetDateTime::now_utc() + Duration::seconds(3);
        let requester = app.client("requester").await;
        let expired = requester.create_filing_job(NewFilingJob { expires_at: soon, ..filing_job(&tokens) }).await.unwrap();
        let pending = requester.create_filing_job(NewFilingJob { expires_at: soon, ..filing_job(&tokens) }).await.unwrap();
        app.client("approver").await.approve_filing_job(&expired.job_id).await.unwrap();
        let expired = expired.job_id;
        let until_expired = soon - OffsetDateTime::now_utc() + Duration::milliseconds(200);
        tokio::time::sleep(until_expired.max(Duration::ZERO).try_into().unwrap()).await;
        let (code, message) = refusal(filer.detokenize(&expired, vec![]).await);
        assert_eq!(code, Code::FailedPrecondition);
        assert!(message.contains("expired at"), "{message}");
        let shown = app.client("requester").await.get_filing_job(&expired).await.unwrap();
        assert_eq!(shown.state, mnvault_client::FilingJobState::Expired as i32);

        let (code, message) = refusal(app.client("approver").await.approve_filing_job(&pending.job_id).await);
        assert_eq!(code, Code::FailedPrecondition);
        assert!(message.contains("expired"), "{message}");
    }
}

on_both_backends! {
    async fn principals_are_confined_to_their_tenants_and_roles(backend) {
        let app = spawn_app_with(&backend, |settings| {
            settings
                .principals
                .insert("payroll".into(), PrincipalSettings { roles: vec![Role::Payroll], tenants: vec!["demo".into()] });
        })
        .await;
        app.client("admin").await.create_tenant("acme", "Acme").await.unwrap();
        let payroll: VaultClient = app.client("payroll").await;
        let number = &valid_numbers(1)[0];
        payroll.tokenize("demo", number, TokenFormat::Opaque).await.unwrap();
        let (code, message) = refusal(payroll.tokenize("acme", number, TokenFormat::Opaque).await);
        assert_eq!(code, Code::PermissionDenied);
        assert!(message.contains("may not act on tenant \"acme\""), "{message}");
        assert_eq!(refusal(payroll.create_tenant("other", "").await).0, Code::PermissionDenied);
        assert_eq!(
            refusal(app.client("filer").await.tokenize("demo", number, TokenFormat::Opaque).await).0,
            Code::PermissionDenied
        );
        let (code, _) = refusal(app.client("requester").await.get_filing_job("job_aaaaaaaaaaaaaaaa").await);
        assert_eq!(code, Code::NotFound);
    }
}
