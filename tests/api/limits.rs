//! Bounded cost for every caller: sizes are checked before anything is
//! written, a refusal leaves one compact audit entry, connections that never
//! start TLS or never call are closed, a client that stops reading does not
//! hold the vault, and bytes that are not protobuf are refused without
//! harm. Each test reproduces a finding of the integrity review.

use std::time::Duration;

use futures::StreamExt;
use mnvault::datadir::DEV_PKI_DIR;
use mnvault_client::{AuditEntry, ClientIdentity, Code, ListAuditEntriesRequest, TokenFormat, VaultClient};
use mnvault_proto::v1 as pb;
use prost::bytes::{Buf, BufMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;

use crate::helpers::{
    approved_job, filing_job, narrow_channel, refusal, spawn_app, spawn_app_with, valid_number, valid_numbers, Backend,
    TestApp,
};

/// A well-formed opaque token made of letters only, distinct for each `i`.
fn letter_token(mut i: usize) -> String {
    let mut token = String::from("mnt_");
    for _ in 0..26 {
        token.push(char::from(b'a' + (i % 26) as u8));
        i /= 26;
    }
    token
}

/// The sequence number of the newest audit entry.
async fn last_seq(app: &TestApp) -> u64 {
    let text = app.database().await.text("SELECT CAST(COALESCE(MAX(seq), 0) AS TEXT) FROM audit_entries").await;
    text.parse().unwrap()
}

/// How many token rows the audit log holds.
async fn audit_token_rows(app: &TestApp) -> u64 {
    app.database().await.text("SELECT CAST(COUNT(*) AS TEXT) FROM audit_entry_tokens").await.parse().unwrap()
}

/// Every entry after `seq`, read as `auditor` (whose own listing entries come after).
async fn entries_after(app: &TestApp, seq: u64) -> Vec<AuditEntry> {
    let auditor = app.client("auditor").await;
    let mut entries = Vec::new();
    let mut after_seq = seq;
    loop {
        let request = ListAuditEntriesRequest { after_seq, ..Default::default() };
        let page = auditor.list_audit_entries(request).await.unwrap();
        entries.extend(page.entries);
        if page.next_after_seq == 0 {
            break;
        }
        after_seq = page.next_after_seq;
    }
    // The auditor's listings of this walk are not what the test looks at.
    entries.retain(|entry| entry.operation != "audit.list");
    entries
}

/// Asserts that `entry` is the compact refusal of `operation` by `principal`:
/// no tenant, no token, no count.
fn assert_compact_refusal(entry: &AuditEntry, principal: &str, operation: &str) {
    assert_eq!(entry.principal, principal);
    assert_eq!(entry.operation, operation);
    assert_ne!(entry.outcome, "ok");
    assert_eq!(entry.tenant, "", "a refusal of an ungranted caller is filed under no tenant");
    assert!(entry.tokens.is_empty(), "a refusal records no token");
    assert_eq!(entry.record_count, 0);
}

/// Sends and receives raw bytes as gRPC messages, to put what no generated
/// client would send on the wire.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Self::Error> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

/// Bytes no vault request decodes from: field 1, length-delimited, claiming
/// four gigabytes that never come.
const GARBAGE: &[u8] = b"\x0a\xff\xff\xff\xff\x0f\x00\x01";

on_both_backends! {
    async fn an_ungranted_principal_with_440000_tokens_leaves_one_compact_entry(backend) {
        // `admin` keeps its certificate but loses its grant: a stranger to every tenant.
        let app = spawn_app_with(&backend, |settings| {
            settings.principals.remove("admin");
            settings.limits.max_job_tokens = 1_000;
        })
        .await;
        let stranger = app.client("admin").await;
        let rows_before = audit_token_rows(&app).await;
        let seq_before = last_seq(&app).await;

        // 440,000 tokens (about 14 MB): refused by size before any is parsed.
        let tokens: Vec<String> = (0..440_000).map(letter_token).collect();
        let (code, message) = refusal(stranger.create_filing_job(filing_job(&tokens)).await);
        assert_eq!(code, Code::OutOfRange, "{message}");
        assert!(message.contains("limits.max_message_bytes"), "{message}");

        // Small enough to be read, but over the token limit and from a stranger.
        let (code, message) = refusal(stranger.create_filing_job(filing_job(&tokens[..2_000])).await);
        assert!(matches!(code, Code::InvalidArgument | Code::PermissionDenied), "{code:?}: {message}");

        let entries = entries_after(&app, seq_before).await;
        assert_eq!(entries.len(), 2, "one entry per refused call: {entries:?}");
        for entry in &entries {
            assert_compact_refusal(entry, "admin", "filing.create-job");
        }
        assert_eq!(audit_token_rows(&app).await, rows_before, "a refusal writes no token row");

        // A granted requester over the configured limit: refused before parsing, filed under its tenant.
        let seq_before = last_seq(&app).await;
        let requester = app.client("requester").await;
        let (code, message) = refusal(requester.create_filing_job(filing_job(&tokens[..1_001])).await);
        assert_eq!(code, Code::InvalidArgument);
        assert!(message.contains("limits.max_job_tokens") && message.contains("1001"), "{message}");
        let entries = entries_after(&app, seq_before).await;
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!((entries[0].tenant.as_str(), entries[0].outcome.as_str()), ("demo", "invalid"));
        assert!(entries[0].tokens.is_empty());
        assert_eq!(audit_token_rows(&app).await, rows_before);

        // The vault still works for everyone else.
        let tokens = crate::helpers::tokenize_fresh(&app, 1).await;
        requester.create_filing_job(filing_job(&tokens)).await.unwrap();
    }
}

on_both_backends! {
    async fn refusals_name_a_tenant_only_for_callers_granted_on_it(backend) {
        let app = spawn_app_with(&backend, |settings| {
            settings.principals.remove("admin");
            settings.principals.get_mut("payroll").unwrap().tenants = vec!["demo".into()];
        })
        .await;
        let seq_before = last_seq(&app).await;
        // A stranger naming a tenant, and a payroll system naming one it may not use.
        let stranger = app.client("admin").await;
        refusal(stranger.tokenize("demo", &valid_number(), TokenFormat::Opaque).await);
        refusal(stranger.describe_token("demo", &letter_token(1)).await);
        let payroll = app.client("payroll").await;
        refusal(payroll.tokenize("other", &valid_number(), TokenFormat::Opaque).await);
        // An auditor holds a grant on every tenant: its refusal stays on the tenant's record.
        refusal(app.client("auditor").await.tokenize("demo", &valid_number(), TokenFormat::Opaque).await);

        let entries = entries_after(&app, seq_before).await;
        let filed: Vec<(&str, &str)> = entries.iter().map(|e| (e.principal.as_str(), e.tenant.as_str())).collect();
        assert_eq!(filed, [("admin", ""), ("admin", ""), ("payroll", ""), ("auditor", "demo")]);

        // Fifty records for fifty tenants the caller may not use: no entry names any of them.
        let seq_before = last_seq(&app).await;
        let records: Vec<pb::TokenizeRequest> = (0..50)
            .map(|i| pb::TokenizeRequest {
                tenant: format!("tenant-{}", letter_token(i)[4..10].to_owned()),
                number: valid_number(),
                format: pb::TokenFormat::Opaque as i32,
            })
            .collect();
        let channel = mnvault_client::connect_channel(
            &app.endpoint,
            &ClientIdentity::from_dev_pki(&app.path().join(DEV_PKI_DIR), "payroll").unwrap(),
        )
        .await
        .unwrap();
        let mut tokens = pb::token_service_client::TokenServiceClient::new(channel);
        let answers: Vec<_> =
            tokens.tokenize_stream(futures::stream::iter(records)).await.unwrap().into_inner().collect().await;
        assert_eq!(answers.len(), 50);
        for answer in answers {
            let answer = answer.unwrap();
            let Some(pb::tokenize_stream_response::Result::Error(error)) = answer.result else {
                panic!("record {} was tokenized for a tenant the caller may not use", answer.index);
            };
            assert_eq!(error.code, Code::PermissionDenied as i32);
        }
        let entries = entries_after(&app, seq_before).await;
        assert!(!entries.is_empty());
        assert!(entries.iter().all(|e| e.tenant.is_empty() && e.outcome == "denied"), "{entries:?}");
        assert_eq!(entries.iter().map(|e| e.record_count).sum::<u64>(), 50);
        assert!(entries.len() < 50, "one entry per batch and outcome, not per tenant: {}", entries.len());
    }
}

#[tokio::test]
async fn connections_that_never_start_tls_do_not_lock_callers_out() {
    let app = spawn_app_with(&Backend::Sqlite, |settings| {
        settings.limits.max_connections = 64;
        settings.limits.tls_handshake_timeout_ms = 2_000;
    })
    .await;
    let address = app.endpoint.trim_start_matches("https://").to_owned();
    let mut idle = Vec::with_capacity(300);
    for _ in 0..300 {
        idle.push(TcpStream::connect(&address).await.unwrap());
    }
    // A legitimate caller gets in and is answered while they hang.
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        app.client("requester").await.list_purposes().await.unwrap()
    })
    .await
    .expect("a legitimate call waited more than 10 s behind 300 idle connections");
    assert!(!answered.is_empty());
    // Every idle connection is closed by the vault: evicted to make room, or
    // at the end of its handshake timeout.
    for (i, mut stream) in idle.into_iter().enumerate() {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(_)) => panic!("idle connection {i} received data before any TLS"),
            Err(_) => panic!("idle connection {i} was still open 10 s after the handshake timeout"),
        }
    }
}

/// A TLS connection to `app` as `principal`, offering HTTP/2, and nothing more.
async fn raw_tls(app: &TestApp, principal: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let pki = app.path().join(DEV_PKI_DIR);
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add_parsable_certificates(CertificateDer::pem_file_iter(pki.join("ca.pem")).unwrap().map(Result::unwrap));
    let certs: Vec<_> =
        CertificateDer::pem_file_iter(pki.join(format!("{principal}.crt"))).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(pki.join(format!("{principal}.key"))).unwrap();
    let mut config = tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(app.endpoint.trim_start_matches("https://")).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.expect("TLS handshake")
}

#[tokio::test]
async fn a_connection_that_starts_no_call_is_closed() {
    let app = spawn_app_with(&Backend::Sqlite, |settings| settings.limits.idle_timeout_ms = 500).await;
    // A caller that finishes TLS, then never sends a call: the vault closes it.
    let mut quiet = raw_tls(&app, "payroll").await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buffer = [0u8; 1024];
        // The vault's HTTP/2 settings may come first; then the end.
        while let Ok(read) = quiet.read(&mut buffer).await {
            if read == 0 {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a connection that started no call was still open 10 s later");

    // A client that called and went quiet is closed gracefully: its next call simply reconnects.
    let client = app.client("requester").await;
    client.list_purposes().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!client.list_purposes().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_client_that_stops_reading_a_detokenize_stream_does_not_hold_the_vault() {
    let app = spawn_app_with(&Backend::Sqlite, |settings| settings.limits.stream_send_timeout_ms = 1_000).await;
    let payroll = app.client("payroll").await;
    let numbers = valid_numbers(3_000);
    let tokens: Vec<String> = payroll
        .tokenize_stream("demo", TokenFormat::Opaque, numbers)
        .await
        .unwrap()
        .map(|answer| answer.unwrap().result.unwrap())
        .collect()
        .await;
    let job_id = approved_job(&app, &tokens, 1).await;

    // The filer reads one answer, then stops reading for three times the send timeout.
    let mut filing = pb::filing_service_client::FilingServiceClient::new(narrow_channel(&app, "filer").await);
    let request = pb::DetokenizeRequest { job_id: job_id.clone(), tokens: Vec::new() };
    let mut stream = filing.detokenize(request).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().expect("a first answer");
    assert!(tokens.contains(&first.token));
    // Meanwhile everybody else is served promptly.
    let served =
        tokio::time::timeout(Duration::from_secs(5), payroll.tokenize("demo", &valid_number(), TokenFormat::Opaque))
            .await
            .expect("a tokenize call waited behind a stalled reader");
    served.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Reading again: what was in flight arrives, then the vault says it gave up.
    let mut received = 1;
    let ended = loop {
        match stream.message().await {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("the stream ended as if complete after {received} of {} answers", tokens.len()),
            Err(status) => break status,
        }
    };
    assert!(received < tokens.len(), "the vault kept every answer for a client that stopped reading");
    assert_eq!(ended.code(), Code::DeadlineExceeded, "{ended:?}");
    assert!(ended.message().contains("limits.stream_send_timeout_ms"), "{}", ended.message());
    // The release was counted and audited before the first number left, as always.
    let job = app.client("requester").await.get_filing_job(&job_id).await.unwrap();
    assert!(job.tokens.iter().all(|t| t.releases == 1));
}

#[tokio::test]
async fn a_tokenize_stream_carries_at_most_its_limit() {
    let app = spawn_app_with(&Backend::Sqlite, |settings| settings.limits.max_stream_records = 10).await;
    let payroll = app.client("payroll").await;
    let numbers = valid_numbers(15);
    let answers: Vec<_> =
        payroll.tokenize_stream("demo", TokenFormat::Opaque, numbers.clone()).await.unwrap().collect().await;
    let tokenized = answers.iter().filter(|a| matches!(a, Ok(t) if t.result.is_ok())).count();
    assert_eq!(tokenized, 10, "the first ten records are answered");
    let Some(Err(error)) = answers.last() else { panic!("the stream ended without saying why: {answers:?}") };
    assert_eq!(error.code(), Some(Code::InvalidArgument));
    assert!(error.to_string().contains("limits.max_stream_records"), "{error}");
    // The records past the limit were not tokenized.
    for number in &numbers[10..] {
        let token = payroll.tokenize("demo", number, TokenFormat::Opaque).await.unwrap();
        let entries = app.audit_entries().await;
        let first = entries.iter().find(|e| e.tokens.contains(&token)).unwrap();
        assert_eq!(first.operation, "token.tokenize", "{number:?} was tokenized past the stream's limit");
    }
}

#[tokio::test]
async fn oversized_messages_are_refused_with_a_clear_status() {
    let app = spawn_app(&Backend::Sqlite).await;
    let payroll = app.client("payroll").await;
    let seq_before = last_seq(&app).await;
    // A record far over the 4 KiB a token-service message may hold.
    let (code, message) = refusal(payroll.tokenize(&"a".repeat(10_000), &valid_number(), TokenFormat::Opaque).await);
    assert_eq!(code, Code::OutOfRange);
    assert!(message.contains("limits.max_record_message_bytes"), "{message}");
    let entries = entries_after(&app, seq_before).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_compact_refusal(&entries[0], "payroll", "token.tokenize");
    assert!(entries[0].reason.contains("limits.max_record_message_bytes"));

    // The same inside a stream: earlier records are answered, then the stream says why it ended.
    let mut numbers = valid_numbers(3);
    numbers.push("1".repeat(10_000));
    let answers: Vec<_> = payroll.tokenize_stream("demo", TokenFormat::Opaque, numbers).await.unwrap().collect().await;
    let Some(Err(error)) = answers.last() else { panic!("an oversized record ended the stream silently: {answers:?}") };
    assert_eq!(error.code(), Some(Code::OutOfRange));

    // And the vault keeps serving.
    payroll.tokenize("demo", &valid_number(), TokenFormat::Opaque).await.unwrap();
}

#[tokio::test]
async fn bytes_that_are_not_protobuf_are_refused_and_the_vault_keeps_serving() {
    let app = spawn_app(&Backend::Sqlite).await;
    let seq_before = last_seq(&app).await;
    let identity = ClientIdentity::from_dev_pki(&app.path().join(DEV_PKI_DIR), "requester").unwrap();
    let channel = mnvault_client::connect_channel(&app.endpoint, &identity).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);

    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_static("/mynumber.vault.v1.FilingService/CreateFilingJob");
    let refused = grpc.unary(tonic::Request::new(GARBAGE.to_vec()), path, RawCodec).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_static("/mynumber.vault.v1.FilingService/Detokenize");
    let refused = grpc.server_streaming(tonic::Request::new(GARBAGE.to_vec()), path, RawCodec).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_static("/mynumber.vault.v1.TokenService/TokenizeStream");
    let requests = futures::stream::iter([GARBAGE.to_vec()]);
    let outcome = match grpc.streaming(tonic::Request::new(requests), path, RawCodec).await {
        Ok(response) => response.into_inner().message().await.map(|_| ()),
        Err(status) => Err(status),
    };
    // The requester may not tokenize: refused before the garbage is read, or for the garbage.
    let refused = outcome.unwrap_err();
    assert!(matches!(refused.code(), Code::InvalidArgument | Code::PermissionDenied), "{refused:?}");

    // Each refusal is audited, compactly, and the vault answers as before.
    let entries = entries_after(&app, seq_before).await;
    let operations: Vec<&str> = entries.iter().map(|e| e.operation.as_str()).collect();
    assert_eq!(operations, ["filing.create-job", "filing.detokenize", "token.tokenize-stream"]);
    for entry in &entries {
        assert_eq!((entry.principal.as_str(), entry.outcome.as_str()), ("requester", entry.outcome.as_str()));
        assert_ne!(entry.outcome, "ok");
        assert!(entry.tokens.is_empty());
    }
    assert_eq!(entries[0].outcome, "invalid");
    let client = VaultClient::connect(&app.endpoint, &identity).await.unwrap();
    assert!(!client.list_purposes().await.unwrap().is_empty());
}

on_both_backends! {
    async fn an_audit_cursor_past_the_largest_sequence_number_is_refused(backend) {
        let app = spawn_app(&backend).await;
        let auditor = app.client("auditor").await;
        for after_seq in [1u64 << 63, u64::MAX] {
            let request = ListAuditEntriesRequest { after_seq, ..Default::default() };
            let (code, message) = refusal(auditor.list_audit_entries(request).await);
            assert_eq!(code, Code::InvalidArgument, "{message}");
            assert!(message.contains("after_seq"), "{message}");
        }
        // The largest valid cursor lists nothing, on both backends.
        let request = ListAuditEntriesRequest { after_seq: i64::MAX as u64, ..Default::default() };
        let page = auditor.list_audit_entries(request).await.unwrap();
        assert!(page.entries.is_empty() && page.next_after_seq == 0);
    }
}

on_both_backends! {
    async fn audit_pages_stay_within_the_message_limit(backend) {
        // Pages of at most 1,000 entries, each naming up to 2,000 tokens, in messages of 96 KiB.
        let app = spawn_app_with(&backend, |settings| {
            settings.limits.max_job_tokens = 500;
            settings.limits.max_message_bytes = 96 * 1024;
        })
        .await;
        let payroll = app.client("payroll").await;
        let numbers = valid_numbers(4_000);
        let answers: Vec<_> =
            payroll.tokenize_stream("demo", TokenFormat::Opaque, numbers).await.unwrap().collect().await;
        assert!(answers.iter().all(|a| matches!(a, Ok(t) if t.result.is_ok())));
        let tokens: Vec<String> = answers.into_iter().map(|a| a.unwrap().result.unwrap()).collect();
        let requester = app.client("requester").await;
        for chunk in tokens.chunks(500) {
            requester.create_filing_job(filing_job(chunk)).await.unwrap();
        }
        // Walk the whole log: every page fits, the cursor always moves on, nothing is skipped.
        let auditor = app.client("auditor").await;
        let (mut after_seq, mut seen, mut pages) = (0u64, Vec::new(), 0);
        loop {
            let page = auditor.list_audit_entries(ListAuditEntriesRequest { after_seq, ..Default::default() }).await;
            let page = page.unwrap();
            assert!(prost::Message::encoded_len(&page) <= 96 * 1024, "a page outgrew the message limit");
            pages += 1;
            seen.extend(page.entries.iter().map(|e| e.seq));
            if page.next_after_seq == 0 {
                break;
            }
            assert!(page.next_after_seq > after_seq);
            after_seq = page.next_after_seq;
        }
        // About 8,000 tokens of 32 bytes in all (256 KB): at least two full pages and the rest.
        assert!(pages >= 3, "{pages} pages of 96 KiB hold more than they can");
        let expected: Vec<u64> = (1..=*seen.last().unwrap()).collect();
        assert_eq!(seen, expected, "the pages skip or repeat an entry");
    }
}

#[tokio::test]
async fn a_call_whose_body_never_arrives_is_cut_at_the_request_timeout() {
    // Headers sent, body never: the call, its buffered bytes and its stream
    // slot are held only until limits.request_timeout_ms.
    let app = spawn_app_with(&Backend::Sqlite, |settings| settings.limits.request_timeout_ms = 1_000).await;
    let seq_before = last_seq(&app).await;
    let identity = ClientIdentity::from_dev_pki(&app.path().join(DEV_PKI_DIR), "requester").unwrap();
    let channel = mnvault_client::connect_channel(&app.endpoint, &identity).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_static("/mynumber.vault.v1.FilingService/CreateFilingJob");
    let never = futures::stream::pending::<Vec<u8>>();
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        grpc.client_streaming(tonic::Request::new(never), path, RawCodec),
    )
    .await
    .expect("the vault answered the stalled call");
    assert_eq!(answer.unwrap_err().code(), Code::DeadlineExceeded);
    // Audited, compactly, as a refusal the handler never saw.
    let entries = entries_after(&app, seq_before).await;
    assert_eq!(entries.iter().map(|e| e.operation.as_str()).collect::<Vec<_>>(), ["filing.create-job"]);
    assert_eq!((entries[0].principal.as_str(), entries[0].outcome.as_str()), ("requester", "invalid"));
}

#[tokio::test]
async fn large_calls_wait_for_a_permit_so_stalled_bodies_cannot_pile_up() {
    // One permit: a call whose body never arrives holds it until it is cut;
    // a call started after it is served only then.
    let app = spawn_app_with(&Backend::Sqlite, |settings| {
        settings.limits.max_large_calls = 1;
        settings.limits.request_timeout_ms = 3_000;
    })
    .await;
    let identity = ClientIdentity::from_dev_pki(&app.path().join(DEV_PKI_DIR), "requester").unwrap();
    let channel = mnvault_client::connect_channel(&app.endpoint, &identity).await.unwrap();
    let started = std::time::Instant::now();
    let stalled = tokio::spawn(async move {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let path = PathAndQuery::from_static("/mynumber.vault.v1.FilingService/CreateFilingJob");
        let never = futures::stream::pending::<Vec<u8>>();
        grpc.client_streaming(tonic::Request::new(never), path, RawCodec).await.map(|_| ())
    });
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    let requester = app.client("requester").await;
    let (code, _) = refusal(requester.get_filing_job("job_aaaaaaaaaaaaaaaa").await);
    assert_eq!(code, Code::NotFound);
    // A lower bound, not a timing: the permit is free only once the stalled call is cut.
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(3_000),
        "served while the stalled call held the permit"
    );
    assert_eq!(stalled.await.unwrap().unwrap_err().code(), Code::DeadlineExceeded);
}
