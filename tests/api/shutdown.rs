//! Graceful shutdown: on SIGTERM the vault reports NOT_SERVING, stops
//! accepting, lets calls in flight finish within `server.shutdown_grace_ms`,
//! acknowledges nothing it has not stored, and exits 0.
//!
//! The bulk-stream case runs the vault as a child process (the machinery of
//! `crash.rs`) and sends it a real SIGTERM while a `TokenizeStream` is open
//! and still sending; the others stop an in-process vault.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use mnvault::datadir::DEV_PKI_DIR;
use mnvault_client::{ClientIdentity, Code, ListAuditEntriesRequest};
use mnvault_proto::v1 as pb;
use pb::token_service_client::TokenServiceClient;
use rustix::process::Signal;
use secrecy::ExposeSecret as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::crash::{audited_tokens, stored_tokens, tokenize_all, VaultProcess};
use crate::helpers::{approved_job, new_data_dir, spawn_app_with, tokenize_fresh, valid_numbers};

/// Numbers the stream carries in all.
const STREAMED: usize = 6_000;
/// Numbers sent before the SIGTERM; the rest are sent after the restart.
const SENT_BEFORE_SIGTERM: usize = 2_000;
/// Records per transaction: small, so that the signal finds the stream between many batches.
const BATCH: usize = 50;
/// A bound on waiting for a stopped vault, not a speed requirement.
const STOP_WAIT: Duration = Duration::from_secs(120);

on_both_backends! {
    /// SIGTERM while a bulk stream is open and still sending: the stream
    /// ends with UNAVAILABLE naming the first record it did not read, every
    /// token before it arrived, the process exits 0, and after a restart
    /// exactly the acknowledged tokens are stored, audited, and release
    /// their own numbers; the rest is sent again and tokenized.
    async fn sigterm_mid_stream_acknowledges_exactly_what_was_stored(backend) {
        let (_, data_dir) = new_data_dir(&backend, |settings| settings.limits.stream_batch_records = BATCH).await;
        let numbers = valid_numbers(STREAMED);
        let mut vault = VaultProcess::start(&data_dir, &backend).await;
        let identity = ClientIdentity::from_dev_pki(&vault.app.path().join(DEV_PKI_DIR), "payroll").unwrap();
        let channel = mnvault_client::connect_channel(&vault.app.endpoint, &identity).await.unwrap();
        let request = |number: &String| pb::TokenizeRequest {
            tenant: "demo".into(),
            number: number.clone(),
            format: pb::TokenFormat::Opaque.into(),
        };
        let (sender, requests) = mpsc::channel(STREAMED);
        for number in &numbers[..SENT_BEFORE_SIGTERM] {
            sender.send(request(number)).await.unwrap();
        }
        let mut answers =
            TokenServiceClient::new(channel).tokenize_stream(ReceiverStream::new(requests)).await.unwrap().into_inner();
        let mut received: HashMap<u64, String> = HashMap::new();
        let mut record = |answer: pb::TokenizeStreamResponse| match answer.result {
            Some(pb::tokenize_stream_response::Result::Token(token)) => {
                assert!(received.insert(answer.index, token).is_none(), "record {} answered twice", answer.index)
            }
            other => panic!("record {} was not tokenized: {other:?}", answer.index),
        };
        record(answers.message().await.unwrap().expect("a first token"));

        vault.send(Signal::TERM);
        // The sender is kept open until the answers end, so only the
        // shutdown can end the stream. Nothing more is sent: bytes a client
        // keeps pushing at a connection that closes make the kernel answer
        // with a reset, which can discard the final status before the client
        // reads it (TCP's, not the vault's); the rest is sent again below.
        let ended = loop {
            match answers.message().await {
                Ok(Some(answer)) => record(answer),
                Ok(None) => panic!("the stream ended without a status while its client was still sending"),
                Err(status) => break status,
            }
        };
        drop(sender);
        let acknowledged = received.len();
        assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
        assert!(ended.message().contains("shutting down"), "{}", ended.message());
        assert!(ended.message().contains(&format!("from index {acknowledged} on")), "{}", ended.message());
        let indexes: HashSet<u64> = received.keys().copied().collect();
        let first: HashSet<u64> = (0..acknowledged as u64).collect();
        assert!(indexes == first, "the acknowledged records are not the first ones");
        let status = vault.exited().await;
        assert!(status.success(), "the vault exited with {status}; its log:\n{}", vault.log());

        let vault = VaultProcess::start(&data_dir, &backend).await;
        let app = &vault.app;
        let tokens: HashSet<String> = received.values().cloned().collect();
        assert!(stored_tokens(app).await == tokens, "stored records differ from the acknowledged tokens");
        let audited = audited_tokens(app, "token.tokenize-stream", "").await;
        assert!(audited.keys().cloned().collect::<HashSet<_>>() == tokens, "audited tokens differ from the acknowledged");
        let request = ListAuditEntriesRequest { operation: "token.tokenize-stream".into(), ..Default::default() };
        let entries = app.client("auditor").await.list_audit_entries(request).await.unwrap().entries;
        assert!(
            entries.iter().any(|entry| entry.outcome == "failed" && entry.reason.contains("shutting down")),
            "the stream's end at shutdown is not audited"
        );

        let job_tokens: Vec<String> = (0..acknowledged as u64).map(|index| received[&index].clone()).collect();
        let job = approved_job(app, &job_tokens, 1).await;
        let released = app.client("filer").await.detokenize(&job, Vec::new()).await.unwrap();
        assert_eq!(released.len(), acknowledged);
        let index_of: HashMap<&str, usize> =
            job_tokens.iter().enumerate().map(|(index, token)| (token.as_str(), index)).collect();
        for released in &released {
            let index = index_of[released.token.as_str()];
            assert!(released.number.expose_secret() == numbers[index], "the token of record {index} released another number");
        }

        // Sending everything again: the acknowledged keep their tokens, the rest get theirs.
        let again = tokenize_all(app, &numbers).await;
        for (index, token) in again.iter().enumerate().take(acknowledged) {
            assert_eq!(token, &received[&(index as u64)], "record {index} got another token");
        }
    }

    /// A client watching the vault's health sees NOT_SERVING when the vault
    /// starts shutting down, then its watch ends: it does not hold the
    /// shutdown for the grace period.
    async fn a_health_watch_sees_not_serving_then_ends_at_shutdown(backend) {
        // A grace period far beyond the bound below: only calls that end let the vault stop in time.
        let mut app = spawn_app_with(&backend, |settings| settings.server.shutdown_grace_ms = 3_600_000).await;
        let identity = ClientIdentity::from_dev_pki(&app.path().join(DEV_PKI_DIR), "auditor").unwrap();
        let channel = mnvault_client::connect_channel(&app.endpoint, &identity).await.unwrap();
        let mut watch = HealthClient::new(channel).watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
        let first = watch.message().await.unwrap().expect("a first status");
        assert_eq!(first.status, ServingStatus::Serving as i32);

        tokio::time::timeout(STOP_WAIT, app.stop()).await.expect("the vault stopped without waiting out the grace period");
        let mut seen = Vec::new();
        while let Ok(Some(status)) = watch.message().await {
            seen.push(status.status);
        }
        assert_eq!(seen, [ServingStatus::NotServing as i32], "after SERVING the watch saw {seen:?}");
    }

    /// A call still running when the grace period ends is dropped, and the
    /// vault stops: a filer that stopped reading its numbers cannot hold it.
    async fn a_call_that_outlives_the_grace_period_is_dropped(backend) {
        let mut app = spawn_app_with(&backend, |settings| {
            settings.server.shutdown_grace_ms = 500;
            // Only the grace period may end the stalled call.
            settings.limits.stream_send_timeout_ms = 3_600_000;
            settings.limits.request_timeout_ms = 3_600_000;
        })
        .await;
        let tokens = tokenize_fresh(&app, 200).await;
        let job = approved_job(&app, &tokens, 1).await;
        let mut numbers = stalled_release(&app, &job).await;

        tokio::time::timeout(STOP_WAIT, app.stop()).await.expect("the vault stopped at the end of the grace period");
        let mut more = 0;
        while let Ok(Some(_)) = numbers.message().await {
            more += 1;
        }
        assert!(more < tokens.len() - 1, "the stalled call was not cut: {more} more numbers arrived");
    }
}

/// Starts releasing `job` over a narrow HTTP/2 window, reads the first
/// number and stops reading: the vault holds the rest of a committed release.
async fn stalled_release(app: &crate::helpers::TestApp, job: &str) -> tonic::Streaming<pb::DetokenizeResponse> {
    use pb::filing_service_client::FilingServiceClient;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let pki = app.path().join(DEV_PKI_DIR);
    let read = |name: &str| std::fs::read(pki.join(name)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(read("filer.crt"), read("filer.key")));
    let channel = Channel::from_shared(app.endpoint.clone())
        .unwrap()
        .initial_stream_window_size(256)
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = pb::DetokenizeRequest { job_id: job.to_owned(), tokens: Vec::new() };
    let mut numbers = FilingServiceClient::new(channel).detokenize(request).await.unwrap().into_inner();
    numbers.message().await.unwrap().expect("the first number");
    numbers
}
