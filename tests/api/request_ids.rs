//! Request ids: every call gets one, drawn by the vault; the answer carries
//! it in its `x-request-id` header, allowed or refused, and every audit entry
//! the call wrote names it, under the chain's MAC.

use mnvault::datadir::DEV_PKI_DIR;
use mnvault_client::{request_id_of, ClientIdentity, Code, ListAuditEntriesRequest, TokenFormat};
use mnvault_core::id::RequestId;
use mnvault_proto::v1 as pb;
use pb::filing_service_client::FilingServiceClient;
use pb::token_service_client::TokenServiceClient;
use tonic::transport::Channel;

use crate::helpers::{refusal, spawn_app, spawn_app_with, valid_numbers, TestApp};

/// A raw channel as dev principal `name`, for reading an answer's headers.
async fn channel(app: &TestApp, name: &str) -> Channel {
    let identity = ClientIdentity::from_dev_pki(&app.path().join(DEV_PKI_DIR), name).unwrap();
    mnvault_client::connect_channel(&app.endpoint, &identity).await.unwrap()
}

/// The request id an answer's headers name; it must follow the grammar.
fn header(metadata: &tonic::metadata::MetadataMap) -> String {
    let text = metadata.get("x-request-id").expect("an x-request-id header").to_str().unwrap();
    RequestId::parse(text).unwrap_or_else(|_| panic!("{text:?} is not a request id")).to_string()
}

/// The entries of one call, found by its request id.
async fn entries_of(app: &TestApp, request_id: &str) -> Vec<mnvault_client::AuditEntry> {
    let request = ListAuditEntriesRequest { request_id: request_id.to_owned(), ..Default::default() };
    app.client("auditor").await.list_audit_entries(request).await.unwrap().entries
}

on_both_backends! {
    async fn an_allowed_call_s_header_names_its_audit_entries(backend) {
        let app = spawn_app(&backend).await;
        // A call audited on its own, and one whose entry commits with its change.
        let answer = FilingServiceClient::new(channel(&app, "requester").await)
            .list_purposes(pb::ListPurposesRequest {})
            .await
            .unwrap();
        let listed = header(answer.metadata());
        let request = pb::TokenizeRequest {
            tenant: "demo".into(),
            number: valid_numbers(1).remove(0),
            format: pb::TokenFormat::Opaque.into(),
        };
        let answer = TokenServiceClient::new(channel(&app, "payroll").await).tokenize(request).await.unwrap();
        let tokenized = header(answer.metadata());
        assert_ne!(listed, tokenized, "two calls share a request id");

        let entries = entries_of(&app, &listed).await;
        assert_eq!(entries.len(), 1, "{entries:#?}");
        assert_eq!((entries[0].operation.as_str(), entries[0].outcome.as_str()), ("filing.list-purposes", "ok"));
        assert_eq!(entries[0].request_id, listed);
        let entries = entries_of(&app, &tokenized).await;
        assert_eq!(entries.len(), 1, "{entries:#?}");
        assert_eq!((entries[0].operation.as_str(), entries[0].outcome.as_str()), ("token.tokenize", "ok"));
        assert_eq!(entries[0].tokens, [answer.into_inner().token]);
    }

    async fn every_entry_of_a_stream_names_the_stream_s_request_id(backend) {
        // Batches of two: three numbers, a bad one among them, leave three entries.
        let app = spawn_app_with(&backend, |settings| settings.limits.stream_batch_records = 2).await;
        let mut numbers = valid_numbers(2);
        numbers.insert(1, "12345678901a8".into());
        let requests = numbers.into_iter().map(|number| pb::TokenizeRequest {
            tenant: "demo".into(),
            number,
            format: pb::TokenFormat::Opaque.into(),
        });
        let mut tokens = TokenServiceClient::new(channel(&app, "payroll").await);
        let answer = tokens.tokenize_stream(futures::stream::iter(requests)).await.unwrap();
        let request_id = header(answer.metadata());
        let mut stream = answer.into_inner();
        while stream.message().await.unwrap().is_some() {}

        let entries = entries_of(&app, &request_id).await;
        let outcomes: Vec<_> = entries.iter().map(|e| (e.operation.as_str(), e.outcome.as_str())).collect();
        assert_eq!(outcomes.len(), 3, "{entries:#?}");
        assert!(outcomes.iter().all(|(operation, _)| *operation == "token.tokenize-stream"), "{outcomes:?}");
        assert_eq!(outcomes.iter().filter(|(_, outcome)| *outcome == "invalid").count(), 1, "{outcomes:?}");
        let all: Vec<_> = app.audit_entries().await.into_iter().filter(|e| e.request_id == request_id).collect();
        assert_eq!(all, entries, "the filter finds every entry of the call");
    }

    async fn a_refused_call_s_request_id_names_its_audit_entry(backend) {
        let app = spawn_app(&backend).await;
        // Refused by a rule: the filer may not tokenize.
        let filer = app.client("filer").await;
        let error = filer.tokenize("demo", &valid_numbers(1)[0], TokenFormat::Opaque).await.unwrap_err();
        assert_eq!(error.code(), Some(Code::PermissionDenied));
        let denied = error.request_id().expect("the refusal names its request id").to_owned();
        assert!(error.to_string().contains(&denied), "{error}");
        // Refused as malformed, by the same client: another call, another id.
        let error = filer.describe_token("demo", "not a token").await.unwrap_err();
        let invalid = error.request_id().expect("the refusal names its request id").to_owned();
        assert_ne!(denied, invalid);

        let entries = entries_of(&app, &denied).await;
        assert_eq!(entries.len(), 1, "{entries:#?}");
        assert_eq!((entries[0].principal.as_str(), entries[0].outcome.as_str()), ("filer", "denied"));
        let entries = entries_of(&app, &invalid).await;
        assert_eq!(entries.len(), 1, "{entries:#?}");
        assert_eq!((entries[0].operation.as_str(), entries[0].outcome.as_str()), ("token.describe", "invalid"));
    }

    async fn a_call_the_transport_refused_still_names_its_request_id(backend) {
        let app = spawn_app(&backend).await;
        // Over limits.max_record_message_bytes: refused before any handler runs.
        let request = pb::TokenizeRequest { tenant: "demo".into(), number: "x".repeat(8_192), format: 0 };
        let status = TokenServiceClient::new(channel(&app, "payroll").await).tokenize(request).await.unwrap_err();
        assert_eq!(status.code(), Code::OutOfRange, "{}", status.message());
        let request_id = header(status.metadata());
        assert_eq!(request_id_of(status.metadata()).as_deref(), Some(request_id.as_str()));

        let entries = entries_of(&app, &request_id).await;
        assert_eq!(entries.len(), 1, "{entries:#?}");
        let entry = &entries[0];
        assert_eq!(
            (entry.principal.as_str(), entry.operation.as_str(), entry.outcome.as_str()),
            ("payroll", "token.tokenize", "invalid")
        );
    }

    async fn request_ids_are_in_the_chain_and_in_the_listing(backend) {
        let app = spawn_app(&backend).await;
        let refused = app.client("filer").await.create_tenant("acme", "Acme").await.unwrap_err();
        let request_id = refused.request_id().unwrap().to_owned();
        let verified = app.cli(&["audit", "verify"]).await.expect("old and new entries verify");
        assert!(verified.contains("audit chain intact"), "{verified}");

        // The listing's last column; the columns before it keep their places.
        let listed = app.cli(&["audit", "list", "--as", "auditor", "--request-id", &request_id]).await.unwrap();
        let columns: Vec<&str> = listed.trim_end().split('\t').collect();
        assert_eq!(listed.lines().count(), 1, "{listed}");
        assert_eq!(columns.len(), 11, "{listed}");
        assert_eq!((columns[2], columns[4], columns[5]), ("filer", "admin.create-tenant", "denied"));
        assert_eq!(columns[10], request_id);
        // The vault's own entry (the dev tenant, at init) has none, and verifies too.
        let all = app.cli(&["audit", "list", "--as", "auditor"]).await.unwrap();
        let first: Vec<&str> = all.lines().next().unwrap().split('\t').collect();
        assert_eq!((first[2], first[10]), ("mnvault-init", ""), "{all}");

        // Changing, removing or adding a request id breaks the chain there.
        let seq: u64 = columns[0].parse().unwrap();
        let other = mnvault_core::mint::draw_request_id();
        for (edit, at) in [
            (format!("UPDATE audit_entries SET request_id = '{other}' WHERE seq = {seq}"), seq),
            (format!("UPDATE audit_entries SET request_id = '' WHERE seq = {seq}"), seq),
            (format!("UPDATE audit_entries SET request_id = '{other}' WHERE seq = 1"), 1),
        ] {
            let mut db = app.database().await;
            let kept = db.text(&format!("SELECT request_id FROM audit_entries WHERE seq = {at}")).await;
            db.exec(&edit).await;
            let error = app.cli(&["audit", "verify"]).await.expect_err(&edit).to_string();
            assert!(error.contains(&format!("entry #{at}: content does not match its hash")), "{edit}: {error}");
            db.exec(&format!("UPDATE audit_entries SET request_id = '{kept}' WHERE seq = {at}")).await;
        }
        app.cli(&["audit", "verify"]).await.expect("put back, the chain verifies again");
    }
}

on_both_backends! {
    async fn a_request_id_filter_that_is_not_one_is_refused_without_repeating_it(backend) {
        let app = spawn_app(&backend).await;
        let number = valid_numbers(1).remove(0);
        let request = ListAuditEntriesRequest { request_id: format!("req_{number}"), ..Default::default() };
        let (code, message) = refusal(app.client("auditor").await.list_audit_entries(request).await);
        assert_eq!(code, Code::InvalidArgument);
        assert!(message.contains("request id") && !message.contains(&number), "{message}");
    }
}
