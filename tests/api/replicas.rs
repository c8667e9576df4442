//! Two vault processes (replicas) on one database, driven at once: they agree
//! on tokens, release limits, who may approve, and one audit chain.

use std::collections::HashMap;

use futures::future::join_all;
use mnvault_client::{Code, TokenFormat};

use crate::helpers::{filing_job, spawn_app, spawn_replica, valid_numbers};

on_both_backends! {
    async fn two_replicas_agree_on_tokens_limits_approval_and_one_chain(backend) {
        let first = spawn_app(&backend).await;
        let second = spawn_replica(&first).await;
        assert_ne!(first.endpoint, second.endpoint);
        let payrolls = [first.client("payroll").await, second.client("payroll").await];

        // The same numbers through both replicas at once: one token each.
        let numbers = valid_numbers(40);
        let calls = numbers.iter().enumerate().flat_map(|(i, number)| {
            payrolls.iter().enumerate().map(move |(replica, payroll)| {
                let (payroll, number) = (payroll.clone(), number.clone());
                async move { (i, replica, payroll.tokenize("demo", &number, TokenFormat::Opaque).await.unwrap()) }
            })
        });
        let mut tokens: HashMap<usize, Vec<String>> = HashMap::new();
        for (i, _, token) in join_all(calls).await {
            tokens.entry(i).or_default().push(token);
        }
        for (i, pair) in &tokens {
            assert_eq!(pair.len(), 2);
            assert_eq!(pair[0], pair[1], "number {i} got two tokens");
        }
        let job_tokens: Vec<String> = (0..10).map(|i| tokens[&i][0].clone()).collect();

        // Created on one replica; its creator cannot approve on the other.
        let job = first.client("requester").await.create_filing_job(filing_job(&job_tokens)).await.unwrap();
        let creator_on_second = second.client("requester").await.approve_filing_job(&job.job_id).await;
        assert_eq!(creator_on_second.unwrap_err().code(), Some(Code::PermissionDenied));
        // Two approvals at once, one per replica: exactly one wins.
        let approvals = join_all([first.client("approver").await, second.client("approver").await].map(|approver| {
            let job_id = job.job_id.clone();
            async move { approver.approve_filing_job(&job_id).await }
        }))
        .await;
        assert_eq!(approvals.iter().filter(|a| a.is_ok()).count(), 1, "{approvals:?}");

        // Eight filers across both replicas race for one release per token.
        let filers = [first.client("filer").await, second.client("filer").await];
        let releases = join_all((0..8).map(|i| {
            let (filer, job_id) = (filers[i % 2].clone(), job.job_id.clone());
            async move { filer.detokenize(&job_id, vec![]).await }
        }))
        .await;
        let mut released = 0;
        for release in releases {
            match release {
                Ok(numbers) => released += numbers.len(),
                Err(error) => assert_eq!(error.code(), Some(Code::FailedPrecondition), "{error}"),
            }
        }
        assert_eq!(released, job_tokens.len(), "all or nothing, each token once");
        let shown = second.client("requester").await.get_filing_job(&job.job_id).await.unwrap();
        assert!(shown.tokens.iter().all(|t| t.releases == 1), "{shown:?}");

        // One chain, verified from either replica and offline.
        for app in [&first, &second] {
            let verdict = app.client("auditor").await.verify_audit_chain().await.unwrap();
            assert!(verdict.intact, "{verdict:?}");
        }
        let report = first.cli(&["audit", "verify"]).await.unwrap();
        assert!(report.starts_with("audit chain intact: "), "{report}");
        let entries: u64 = report.split_whitespace().nth(3).unwrap().parse().unwrap();
        // init + 80 tokenizations + create + 3 approvals + 8 releases + 2 gets/verifies at least.
        assert!(entries >= 1 + 80 + 1 + 3 + 8, "{report}");
    }
}
