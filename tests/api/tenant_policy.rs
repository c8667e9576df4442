//! Tenant policies (issue 9): changed only by two key-admins, enforced on
//! jobs and releases, each refusal an alert; stored so that the database
//! cannot loosen them. Through the real server, on the dev vault's SPIFFE
//! identities.

use mnvault::config::Settings;
use mnvault_client::tenant_policy::TenantPolicy;
use mnvault_client::{Code, FilingJobState, ListAuditEntriesRequest, NewFilingJob, VaultClient};

use crate::alarms::{alerts_counted, hours_excluding_now};
use crate::helpers::{filing_job, refusal, spawn_dev_vault_with, tokenize_fresh, Backend, TestApp};
use crate::identity::client;

/// A dev vault with its metrics on a free loopback port.
async fn spawn(backend: &Backend) -> TestApp {
    spawn_dev_vault_with(backend, |settings: &mut Settings| {
        settings.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await
}

/// The default policy with `edit` applied.
fn policy(edit: impl FnOnce(&mut TenantPolicy)) -> TenantPolicy {
    let mut policy = TenantPolicy {
        approvals_required: 1,
        max_tokens_per_job: 100_000,
        max_job_lifetime_days: 90,
        ..TenantPolicy::default()
    };
    edit(&mut policy);
    policy
}

/// Applies `policy` to `demo`: proposed by the dev `admin`, approved by another key-admin, `kenji`.
async fn apply(app: &TestApp, policy: TenantPolicy) {
    let change = app.client("admin").await.propose_tenant_policy("demo", policy).await.unwrap();
    second_admin(app).await.approve_tenant_policy("demo", &change.change_id).await.unwrap();
}

async fn second_admin(app: &TestApp) -> VaultClient {
    client(app, "operator/key-admin/kenji").await
}

async fn entries(app: &TestApp, operation: &str) -> Vec<mnvault_client::AuditEntry> {
    let request = ListAuditEntriesRequest { operation: operation.into(), ..Default::default() };
    app.client("auditor").await.list_audit_entries(request).await.unwrap().entries
}

on_both_backends! {
    async fn a_policy_change_applies_only_once_another_key_admin_approves_it(backend) {
        let app = spawn(&backend).await;
        let admin = app.client("admin").await;
        let status = admin.tenant_policy("demo").await.unwrap();
        assert!(status.change_id.is_empty() && status.pending.is_none());
        assert_eq!(status.policy.as_ref().unwrap().approvals_required, 1);

        let proposed = policy(|p| p.approvals_required = 2);
        let change = admin.propose_tenant_policy("demo", proposed.clone()).await.unwrap();
        // Pending is not applied.
        let status = admin.tenant_policy("demo").await.unwrap();
        assert_eq!(status.policy.as_ref().unwrap().approvals_required, 1);
        assert_eq!(status.pending.as_ref().unwrap().change_id, change.change_id);

        // The proposer cannot approve it, even under another key-admin certificate of theirs.
        let (code, message) = refusal(admin.approve_tenant_policy("demo", &change.change_id).await);
        assert_eq!(code, Code::PermissionDenied);
        assert!(message.contains("cannot approve it"), "{message}");
        let admin_again = client(&app, "operator/key-admin/admin").await;
        assert_eq!(refusal(admin_again.approve_tenant_policy("demo", &change.change_id).await).0, Code::PermissionDenied);
        // Nor can a tenant's approver, nor an auditor.
        for path in ["tenant/demo/approver/aiko", "operator/auditor/audrey"] {
            let (code, _) = refusal(client(&app, path).await.approve_tenant_policy("demo", &change.change_id).await);
            assert_eq!(code, Code::PermissionDenied, "{path}");
        }
        // A change id that is not the pending one is not found.
        let (code, _) = refusal(second_admin(&app).await.approve_tenant_policy("demo", "pc_abcdefghijklmnop").await);
        assert_eq!(code, Code::NotFound);

        let applied = second_admin(&app).await.approve_tenant_policy("demo", &change.change_id).await.unwrap();
        assert_eq!(applied.policy.as_ref().unwrap(), &proposed);
        assert_eq!(applied.change_id, change.change_id);
        assert!(applied.approved_by.ends_with("/operator/key-admin/kenji"), "{}", applied.approved_by);
        let shown = app.client("auditor").await.tenant_policy("demo").await.unwrap();
        assert_eq!(shown.policy.as_ref().unwrap(), &proposed);
        assert!(shown.pending.is_none());
        // The change cannot be approved twice.
        let (code, _) = refusal(second_admin(&app).await.approve_tenant_policy("demo", &change.change_id).await);
        assert_eq!(code, Code::NotFound);

        // Both steps are in the audit log, with the policy they proposed and applied.
        let proposed_entry = entries(&app, "admin.propose-tenant-policy").await;
        assert!(proposed_entry.iter().any(|e| e.outcome == "ok" && e.reason.contains("approvals_required=2")));
        let approvals = entries(&app, "admin.approve-tenant-policy").await;
        let ok = approvals.iter().filter(|e| e.outcome == "ok").collect::<Vec<_>>();
        assert_eq!(ok.len(), 1);
        assert!(ok[0].reason.contains(&change.change_id) && ok[0].reason.contains("approvals_required=2"));
        assert!(approvals.iter().filter(|e| e.outcome == "denied").count() >= 4);

        // The CLI shows it, and `policy set` proposes from the applied policy.
        let shown = app.cli(&["policy", "show", "--tenant", "demo", "--as", "admin"]).await.unwrap();
        assert!(shown.contains("approvals_required               2") && shown.contains("pending: none"), "{shown}");
        let set = app.cli(&["policy", "set", "--tenant", "demo", "--max-per-filer-per-hour", "50", "--as", "admin"])
            .await
            .unwrap();
        assert!(set.contains("max_releases_per_filer_per_hour  50") && set.contains("approvals_required               2"), "{set}");
        // A value out of its bounds is named, and nothing is proposed.
        let (code, message) = refusal(admin.propose_tenant_policy("demo", policy(|p| p.approvals_required = 9)).await);
        assert_eq!(code, Code::InvalidArgument);
        assert!(message.contains("approvals_required must be between 1 and 5"), "{message}");
    }
}

on_both_backends! {
    async fn a_job_under_a_two_approval_policy_needs_two_distinct_persons(backend) {
        let app = spawn(&backend).await;
        let tokens = tokenize_fresh(&app, 1).await;
        apply(&app, policy(|p| p.approvals_required = 2)).await;
        let job = app.client("requester").await.create_filing_job(filing_job(&tokens)).await.unwrap();
        assert_eq!(job.approvals_required, 2);

        let first = app.client("approver").await.approve_filing_job(&job.job_id).await.unwrap();
        assert_eq!(first.state(), FilingJobState::PendingApproval);
        assert_eq!(first.approvals.len(), 1);
        let (code, message) = refusal(app.client("filer").await.detokenize(&job.job_id, vec![]).await);
        assert_eq!(code, Code::FailedPrecondition);
        assert!(message.contains("1 of the 2 approvals"), "{message}");
        // The same person under another certificate is not a second approval.
        let same_person = client(&app, "tenant/demo/approver/approver").await;
        let (code, message) = refusal(same_person.approve_filing_job(&job.job_id).await);
        assert_eq!(code, Code::PermissionDenied);
        assert!(message.contains("already"), "{message}");

        let second = client(&app, "tenant/demo/approver/hanako").await.approve_filing_job(&job.job_id).await.unwrap();
        assert_eq!(second.state(), FilingJobState::Approved);
        assert_eq!(second.approvals.len(), 2);
        let released = app.client("filer").await.detokenize(&job.job_id, vec![]).await.unwrap();
        assert_eq!(released.len(), 1);
        // A job created before a change keeps the approvals it was created with.
        apply(&app, policy(|p| p.approvals_required = 1)).await;
        let shown = app.client("requester").await.get_filing_job(&job.job_id).await.unwrap();
        assert_eq!((shown.approvals_required, shown.approvals.len()), (2, 2));
    }
}

on_both_backends! {
    async fn a_filer_over_its_hourly_rate_is_refused_and_raises_an_alert(backend) {
        let app = spawn(&backend).await;
        let tokens = tokenize_fresh(&app, 5).await;
        apply(&app, policy(|p| p.max_releases_per_filer_per_hour = 3)).await;
        let job = app.client("requester").await.create_filing_job(filing_job(&tokens)).await.unwrap().job_id;
        app.client("approver").await.approve_filing_job(&job).await.unwrap();
        let filer = app.client("filer").await;
        assert_eq!(filer.detokenize(&job, tokens[..3].to_vec()).await.unwrap().len(), 3);

        let (code, message) = refusal(filer.detokenize(&job, vec![tokens[3].clone()]).await);
        assert_eq!(code, Code::ResourceExhausted);
        assert!(message.contains("at most 3 numbers an hour") && message.contains("limit-filer-hourly"), "{message}");
        // The same person under another filer certificate is the same filer.
        let same_person = client(&app, "tenant/demo/filer/filer").await;
        assert_eq!(refusal(same_person.detokenize(&job, vec![tokens[3].clone()]).await).0, Code::ResourceExhausted);
        // Another person still may: the rate is per filer.
        let other = client(&app, "tenant/demo/filer/jiro").await;
        assert_eq!(other.detokenize(&job, vec![tokens[3].clone()]).await.unwrap().len(), 1);

        let alerts = entries(&app, "audit.alert").await;
        let rate_alerts: Vec<_> = alerts.iter().filter(|e| e.reason.starts_with("limit-filer-hourly")).collect();
        assert_eq!(rate_alerts.len(), 2, "{alerts:?}");
        assert!(rate_alerts.iter().all(|e| e.tenant == "demo" && e.job_id == job && e.principal.ends_with("/filer/filer")));
        assert_eq!(alerts_counted(&app, "limit-filer-hourly").await, 2.0);
        let refused = entries(&app, "filing.detokenize").await;
        assert_eq!(refused.iter().filter(|e| e.outcome == "denied").count(), 2);
    }
}

on_both_backends! {
    async fn jobs_outside_the_policy_and_tokens_outside_the_job_are_refused_with_alerts(backend) {
        let app = spawn(&backend).await;
        let tokens = tokenize_fresh(&app, 3).await;
        apply(&app, policy(|p| {
            p.allowed_purposes = vec!["withholding-slip".into()];
            p.max_tokens_per_job = 2;
            p.max_job_lifetime_days = 7;
        }))
        .await;
        let requester = app.client("requester").await;
        let cases = [
            (NewFilingJob { purpose: "payment-record".into(), ..filing_job(&tokens[..1]) }, "limit-purpose"),
            (filing_job(&tokens), "limit-job-tokens"),
            (
                NewFilingJob {
                    expires_at: time::OffsetDateTime::now_utc() + time::Duration::days(8),
                    ..filing_job(&tokens[..1])
                },
                "limit-job-lifetime",
            ),
        ];
        for (job, limit) in cases {
            let (code, message) = refusal(requester.create_filing_job(job).await);
            assert_eq!(code, Code::PermissionDenied, "{limit}");
            assert!(message.contains(limit), "{limit}: {message}");
            assert_eq!(alerts_counted(&app, limit).await, 1.0, "{limit}");
        }
        let job = requester.create_filing_job(filing_job(&tokens[..2])).await.unwrap().job_id;
        app.client("approver").await.approve_filing_job(&job).await.unwrap();
        let (code, message) = refusal(app.client("filer").await.detokenize(&job, vec![tokens[2].clone()]).await);
        assert_eq!(code, Code::PermissionDenied);
        assert!(message.contains("limit-outside-job"), "{message}");
        assert_eq!(alerts_counted(&app, "limit-outside-job").await, 1.0);
        let alerts = entries(&app, "audit.alert").await;
        assert_eq!(alerts.iter().filter(|e| e.reason.starts_with("limit-")).count(), 4);
        // No alert names the token it refused: a mistyped number could be one.
        assert!(alerts.iter().all(|e| e.tokens.is_empty()));

        // Releases outside the hours are refused too.
        apply(&app, policy(|p| p.release_hours = format!("{} mon-sun +00:00", hours_excluding_now()))).await;
        let (code, message) = refusal(app.client("filer").await.detokenize(&job, vec![tokens[0].clone()]).await);
        assert_eq!(code, Code::PermissionDenied);
        assert!(message.contains("limit-release-hours"), "{message}");
    }
}

on_both_backends! {
    async fn the_database_cannot_loosen_an_applied_policy(backend) {
        let app = spawn(&backend).await;
        let tokens = tokenize_fresh(&app, 1).await;
        apply(&app, policy(|p| p.approvals_required = 2)).await;
        let mut db = app.database().await;
        db.exec("CREATE TABLE saved_policy AS SELECT * FROM tenant_policies").await;
        apply(&app, policy(|p| p.approvals_required = 3)).await;
        let requester = app.client("requester").await;
        assert_eq!(requester.create_filing_job(filing_job(&tokens)).await.unwrap().approvals_required, 3);

        // Set back to the earlier, genuinely tagged, row: older than the chain's last change.
        db.exec("DELETE FROM tenant_policies").await;
        db.exec("INSERT INTO tenant_policies SELECT * FROM saved_policy").await;
        let (code, message) = refusal(requester.create_filing_job(filing_job(&tokens)).await);
        assert_eq!(code, Code::DataLoss);
        assert!(message.contains("the policy of tenant \"demo\""), "{message}");
        // Edited: the tag no longer fits.
        db.exec("DELETE FROM tenant_policies").await;
        db.exec("INSERT INTO tenant_policies SELECT * FROM saved_policy").await;
        db.exec("UPDATE tenant_policies SET applied_seq = applied_seq + 1000, policy = REPLACE(policy, 'approvals_required=2', 'approvals_required=1')").await;
        assert_eq!(refusal(requester.create_filing_job(filing_job(&tokens)).await).0, Code::DataLoss);
        // Deleted: the chain records a change, so the default policy does not come back.
        db.exec("DELETE FROM tenant_policies").await;
        assert_eq!(refusal(requester.create_filing_job(filing_job(&tokens)).await).0, Code::DataLoss);
        assert_eq!(refusal(app.client("auditor").await.tenant_policy("demo").await).0, Code::DataLoss);
        assert!(app.integrity_failures() >= 4);
    }

    async fn a_tenant_shredded_after_a_proposal_takes_no_policy(backend) {
        let app = spawn(&backend).await;
        let admin = app.client("admin").await;
        admin.create_tenant("gone", "Gone").await.unwrap();
        let change = admin.propose_tenant_policy("gone", policy(|p| p.approvals_required = 2)).await.unwrap();
        admin.shred_tenant("gone").await.unwrap();
        let (code, message) = refusal(second_admin(&app).await.approve_tenant_policy("gone", &change.change_id).await);
        assert_eq!(code, Code::FailedPrecondition, "{message}");
        assert!(message.contains("shredded"), "{message}");
        let applied = entries(&app, "admin.approve-tenant-policy").await;
        assert!(applied.iter().all(|entry| entry.outcome != "ok"), "{applied:?}");
    }
}
