//! Revoking client certificates through the running vault (issue 9): a
//! key-admin's call, refused on every replica without a restart, kept in the
//! audit chain so the database cannot take it back.

use std::path::PathBuf;
use std::time::Duration;

use mnvault::config::Settings;
use mnvault::datadir::DEV_PKI_DIR;
use mnvault::dev_pki::DEV_TRUST_DOMAIN;
use mnvault::pki::CertificateAuthority;
use mnvault_client::{ClientIdentity, Code, ListAuditEntriesRequest, ServingStatus, TokenFormat, VaultClient};
use mnvault_core::identity::Identity;

use crate::alarms::alerts_counted;
use crate::helpers::{
    export_under_way, narrow_channel_from, refusal, spawn_dev_vault_with, spawn_replica, stream_request,
    tokenize_stream_under_way, valid_number, wait_for_health, TestApp,
};
use crate::identity::client;

/// How long a replica may take to see another's revocation in these tests:
/// it reads the chain every second.
const SEEN_WITHIN: Duration = Duration::from_secs(15);

/// A dev vault with its metrics on a free loopback port.
async fn spawn(backend: &crate::helpers::Backend) -> TestApp {
    spawn_dev_vault_with(backend, |settings: &mut Settings| {
        settings.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await
}

/// A new certificate for the SPIFFE ID `path` from the dev CA, in a
/// directory of its own (`copy` tells two of one identity apart), and its
/// serial as `pki issue` prints it.
fn issue(app: &TestApp, path: &str, copy: &str) -> (PathBuf, String, String) {
    let ca = CertificateAuthority::open(&app.path().join(DEV_PKI_DIR)).expect("the dev CA");
    let identity = Identity::parse(&format!("spiffe://{DEV_TRUST_DOMAIN}/{path}")).expect("a valid identity");
    let out = app.path().join("revocation").join(format!("{}-{copy}", path.replace('/', "_")));
    let issued = ca.issue(&identity, time::Duration::days(1), &out).expect("issued");
    (out, identity.name().to_owned(), issued.serial)
}

async fn connect(app: &TestApp, (dir, name, _): &(PathBuf, String, String)) -> VaultClient {
    let identity = ClientIdentity::from_dev_pki(dir, name).expect("the issued files");
    VaultClient::connect(&app.endpoint, &identity).await.expect("connect")
}

async fn tokenize(client: &VaultClient) -> Result<String, mnvault_client::ClientError> {
    client.tokenize("demo", &valid_number(), TokenFormat::Opaque).await
}

async fn entries(app: &TestApp, operation: &str) -> Vec<mnvault_client::AuditEntry> {
    let request = ListAuditEntriesRequest { operation: operation.into(), ..Default::default() };
    app.client("auditor").await.list_audit_entries(request).await.unwrap().entries
}

/// Calls through `client` until one is refused, for at most [`SEEN_WITHIN`].
async fn refused_within(client: &VaultClient) -> (Code, String) {
    let deadline = tokio::time::Instant::now() + SEEN_WITHIN;
    loop {
        match tokenize(client).await {
            Err(error) => return refusal::<()>(Err(error)),
            Ok(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(_) => panic!("the revoked certificate still worked after {SEEN_WITHIN:?}"),
        }
    }
}

on_both_backends! {
    async fn a_revoked_certificate_is_refused_on_every_replica_without_a_restart(backend) {
        let first = spawn(&backend).await;
        let second = spawn_replica(&first).await;
        let lost = issue(&first, "tenant/demo/payroll/payroll-laptop", "lost");
        let kept = issue(&first, "tenant/demo/payroll/payroll-laptop", "kept");
        assert_ne!(lost.2, kept.2);
        // Connections opened before the revocation, on both replicas.
        let (lost_on_first, lost_on_second) = (connect(&first, &lost).await, connect(&second, &lost).await);
        let (kept_on_first, kept_on_second) = (connect(&first, &kept).await, connect(&second, &kept).await);
        for client in [&lost_on_first, &lost_on_second, &kept_on_first, &kept_on_second] {
            tokenize(client).await.unwrap();
        }

        // Only a key-admin of every tenant may revoke; an auditor may list.
        for path in ["tenant/demo/payroll/payroll-laptop", "tenant/demo/auditor/tomoko", "operator/auditor/audrey"] {
            let (code, _) = refusal(client(&first, path).await.revoke_certificate(&lost.2, "").await);
            assert_eq!(code, Code::PermissionDenied, "{path}");
        }
        assert_eq!(refusal(client(&first, "tenant/demo/auditor/tomoko").await.revoked_certificates().await).0, Code::PermissionDenied);
        assert!(entries(&first, "admin.revoke-certificate").await.iter().all(|e| e.outcome == "denied"));

        // Revoked through the CLI, on the first replica, by the dev key-admin.
        let serial_spelled_as_openssl_does = lost.2.to_uppercase();
        let printed = first
            .cli(&["pki", "revoke", "--serial", &serial_spelled_as_openssl_does, "--reason", "laptop lost on a train", "--as", "admin"])
            .await
            .unwrap();
        let line: Vec<&str> = printed.lines().nth(1).expect("one revocation printed").split('\t').collect();
        assert_eq!((line[0], line[2], line[4]), (lost.2.as_str(), "spiffe://mnvault-dev.invalid/operator/key-admin/admin", "laptop lost on a train"), "{printed}");

        // Refused at once where it was revoked, on a connection opened before.
        let (code, message) = refusal(tokenize(&lost_on_first).await);
        assert_eq!(code, Code::Unauthenticated);
        assert!(message.contains(&lost.2) && message.contains("revoked"), "{message}");
        // And on the other replica, with no signal nor restart, within its refresh.
        let (code, message) = refused_within(&lost_on_second).await;
        assert_eq!(code, Code::Unauthenticated, "{message}");
        // Every call, not only tokenize; a new connection too.
        assert_eq!(refusal(lost_on_second.describe_token("demo", "mnt_abcdefghijklmnopqrstuvwxyz").await).0, Code::Unauthenticated);
        assert_eq!(refusal(tokenize(&connect(&second, &lost).await).await).0, Code::Unauthenticated);
        // The person's other certificate still works on both.
        tokenize(&kept_on_first).await.unwrap();
        tokenize(&kept_on_second).await.unwrap();

        // A serial ending in digits, a reason starting with them: still one
        // revocation as stored, not a run the log redacts.
        let dated = first.client("admin").await.revoke_certificate("7f3a9c0123", "20261124 key copied").await.unwrap();
        assert_eq!(dated.serial, "7f3a9c0123");

        // A replica started afterwards refuses it from its first call.
        let third = spawn_replica(&first).await;
        assert_eq!(refusal(tokenize(&connect(&third, &lost).await).await).0, Code::Unauthenticated);
        tokenize(&connect(&third, &kept).await).await.unwrap();

        // Listed by an operator auditor on the replica that refused it, and on
        // the third, which read both revocations from the stored entries.
        let listed = client(&second, "operator/auditor/audrey").await.revoked_certificates().await.unwrap();
        assert!(listed.iter().any(|r| r.serial == lost.2 && r.reason == "laptop lost on a train"), "{listed:?}");
        let listed = client(&third, "operator/auditor/audrey").await.revoked_certificates().await.unwrap();
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert!(listed.iter().any(|r| r.serial == lost.2 && r.reason == "laptop lost on a train"), "{listed:?}");
        assert!(listed.iter().any(|r| r.serial == "7f3a9c0123" && r.reason == "20261124 key copied"), "{listed:?}");
        let listed_cli = second.cli(&["pki", "revoked", "--as", "auditor"]).await.unwrap();
        assert!(listed_cli.lines().skip(1).any(|line| line.starts_with(&format!("{}\t", lost.2))), "{listed_cli}");

        // Once is enough; a serial that could hold a number is not one.
        let admin = first.client("admin").await;
        let (code, message) = refusal(admin.revoke_certificate(&lost.2, "").await);
        assert_eq!(code, Code::FailedPrecondition, "{message}");
        let number = valid_number();
        let (code, message) = refusal(admin.revoke_certificate(&number, "").await);
        assert_eq!(code, Code::InvalidArgument);
        assert!(message.contains("CRL") && !message.contains(&number), "{message}");
        let (code, _) = refusal(admin.revoke_certificate(&kept.2, &format!("holder {number}")).await);
        assert_eq!(code, Code::InvalidArgument);
        tokenize(&kept_on_first).await.unwrap();

        // The audit log: one revocation naming the serial, and the revoked
        // certificate's refused calls naming its holder; no number anywhere.
        let revocations: Vec<_> = entries(&first, "admin.revoke-certificate").await.into_iter().filter(|e| e.outcome == "ok").collect();
        assert_eq!(revocations.len(), 2);
        assert_eq!(revocations[0].reason, format!("revoked certificate {}, because laptop lost on a train", lost.2));
        let refused: Vec<_> = entries(&first, "token.tokenize")
            .await
            .into_iter()
            .filter(|e| e.outcome == "denied" && e.reason.contains("revoked"))
            .collect();
        assert!(refused.len() >= 3, "{refused:?}");
        assert!(refused.iter().all(|e| e.principal.ends_with("/tenant/demo/payroll/payroll-laptop")));
        for entry in entries(&first, "").await {
            assert!(!format!("{} {}", entry.reason, entry.principal).contains(&number), "{entry:?}");
        }
        // Counted with the alerts on the replica that refused the calls.
        assert!(alerts_counted(&first, "revoked-certificate").await >= 1.0);
    }

    async fn the_database_cannot_take_a_revocation_back(backend) {
        let app = spawn(&backend).await;
        let lost = issue(&app, "tenant/demo/filer/filer-laptop", "lost");
        // An approved job the stolen filer certificate could release.
        let token = tokenize(&app.client("payroll").await).await.unwrap();
        let job = crate::helpers::approved_job(&app, &[token], 1).await;
        let admin = app.client("admin").await;
        let revoked = admin.revoke_certificate(&lost.2, "stolen").await.unwrap();
        tokenize(&app.client("payroll").await).await.unwrap();

        // A database writer deletes the entry that records the revocation.
        let mut db = app.database().await;
        db.exec(&format!("DELETE FROM audit_entries WHERE seq = {}", revoked.audit_seq)).await;

        // The running vault still refuses the certificate: what it verified stays.
        assert_eq!(refusal(connect(&app, &lost).await.list_purposes().await).0, Code::Unauthenticated);
        // A replica started on the edited database never learned the
        // revocation; it sees a broken chain, so it cannot tell the stolen
        // certificate from a sound one and serves neither: no number, no
        // token, no job, whatever the role.
        let replica = spawn_replica(&app).await;
        assert!(replica.integrity_failures() >= 1, "the break found at start is counted");
        let (code, message) = refusal(connect(&replica, &lost).await.detokenize(&job, vec![]).await);
        assert_eq!(code, Code::DataLoss, "{message}");
        assert!(message.contains("auditors of every tenant"), "{message}");
        assert_eq!(refusal(connect(&replica, &lost).await.list_purposes().await).0, Code::DataLoss);
        assert_eq!(refusal(tokenize(&replica.client("payroll").await).await).0, Code::DataLoss);
        let (code, message) = refusal(replica.client("requester").await.create_filing_job(crate::helpers::filing_job(&[])).await);
        assert_eq!(code, Code::DataLoss, "{message}");
        for path in ["tenant/demo/auditor/tomoko", "operator/key-admin/kenji"] {
            assert_eq!(refusal(client(&replica, path).await.revoked_certificates().await).0, Code::DataLoss, "{path}");
        }
        // An auditor of every tenant still reads the log, to scope the incident.
        let audrey = client(&replica, "operator/auditor/audrey").await;
        let refused = audrey.list_audit_entries(ListAuditEntriesRequest { operation: "filing.detokenize".into(), ..Default::default() }).await.unwrap().entries;
        assert!(refused.iter().any(|e| e.outcome != "ok" && e.principal.ends_with("/tenant/demo/filer/filer-laptop")), "{refused:?}");
        // Not the list of revocations, which is incomplete there, and nothing else.
        let (code, message) = refusal(audrey.revoked_certificates().await);
        assert_eq!(code, Code::DataLoss, "{message}");
        assert_eq!(refusal(audrey.list_purposes().await).0, Code::DataLoss);
        // It tells a load balancer to send callers elsewhere.
        wait_for_health(&audrey, ServingStatus::NotServing).await;
        // The replica that verified the revocation before the edit keeps it.
        assert_eq!(refusal(connect(&app, &lost).await.detokenize(&job, vec![]).await).0, Code::Unauthenticated);
    }

    async fn a_running_replica_that_meets_an_entry_it_cannot_read_serves_only_auditors(backend) {
        let app = spawn(&backend).await;
        let other = spawn_replica(&app).await;
        let payroll = other.client("payroll").await;
        tokenize(&payroll).await.unwrap();
        // A database writer spoils an entry so that it does not even read
        // (a hash of the wrong length): the replica cannot learn what it, or
        // anything after it, says, so it must not go on as if nothing were there.
        tokenize(&app.client("payroll").await).await.unwrap();
        let mut db = app.database().await;
        let last = db.text("SELECT CAST(MAX(seq) AS TEXT) FROM audit_entries").await;
        let spoiled = match db {
            crate::helpers::Db::Sqlite(_) => "X'00'",
            crate::helpers::Db::Postgres(_) => "decode('00', 'hex')",
        };
        db.exec(&format!("UPDATE audit_entries SET hash = {spoiled} WHERE seq = {last}")).await;
        let (code, message) = refused_within(&payroll).await;
        assert_eq!(code, Code::DataLoss, "{message}");
        assert!(other.integrity_failures() >= 1);
        // An auditor of every tenant still reads the log up to the spoiled entry.
        let audrey = client(&other, "operator/auditor/audrey").await;
        let request = ListAuditEntriesRequest { operation: "token.tokenize".into(), limit: 1, ..Default::default() };
        let first = audrey.list_audit_entries(request).await.unwrap().entries;
        assert_eq!(first.len(), 1, "{first:?}");
        assert_eq!(refusal(client(&other, "tenant/demo/auditor/tomoko").await.list_audit_entries(ListAuditEntriesRequest::default()).await).0, Code::DataLoss);
    }

    async fn a_revocation_cuts_a_tokenize_stream_already_running(backend) {
        let app = spawn(&backend).await;
        let lost = issue(&app, "tenant/demo/payroll/payroll-laptop", "lost");
        let identity = ClientIdentity::from_dev_pki(&lost.0, &lost.1).unwrap();
        let channel = mnvault_client::connect_channel(&app.endpoint, &identity).await.unwrap();
        let (sender, mut answers) = tokenize_stream_under_way(channel).await;

        app.client("admin").await.revoke_certificate(&lost.2, "stolen").await.unwrap();
        let unread = valid_number();
        sender.send(stream_request(unread.clone())).await.unwrap();
        let ended = match answers.message().await {
            Err(status) => status,
            Ok(answer) => panic!("a record was answered on a revoked certificate's stream: {answer:?}"),
        };
        assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");
        assert!(ended.message().contains(&lost.2), "{}", ended.message());
        // The record sent after the revocation was never tokenized.
        let token = app.client("payroll").await.tokenize("demo", &unread, TokenFormat::Opaque).await.unwrap();
        let first_entry = app.audit_entries().await.into_iter().find(|e| e.tokens.contains(&token)).unwrap();
        assert_eq!(first_entry.operation, "token.tokenize", "a record was tokenized after the revocation");
    }

    async fn a_revocation_cuts_an_export_already_running(backend) {
        let app = spawn(&backend).await;
        let lost = issue(&app, "tenant/demo/filer/export-laptop", "lost");
        let channel = narrow_channel_from(&app, &lost.0, &lost.1).await;
        let (mut chunks, first) = export_under_way(&app, channel).await;

        app.client("admin").await.revoke_certificate(&lost.2, "stolen").await.unwrap();
        let mut records = first.records;
        let ended = loop {
            match chunks.message().await {
                Ok(Some(chunk)) => records = chunk.records,
                Ok(None) => panic!("the whole export was sent to a revoked certificate"),
                Err(status) => break status,
            }
        };
        assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");
        assert!(records < first.total, "{records} of {}", first.total);
        let exported: Vec<_> = entries(&app, "admin.export-tenant").await;
        assert!(exported.iter().any(|e| e.outcome != "ok" && e.reason.contains("revoked")), "{exported:?}");
    }
}
