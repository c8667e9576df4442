//! Production identities: SPIFFE IDs issued by `mnvault pki issue`, read by
//! a vault as `mnvault serve --dev` starts it (identity.source = "spiffe"),
//! through the real server.

use std::path::PathBuf;

use futures::StreamExt as _;
use mnvault::datadir::DEV_PKI_DIR;
use mnvault::dev_pki::DEV_TRUST_DOMAIN;
use mnvault::pki::CertificateAuthority;
use mnvault_client::retention::SetRetentionRequest;
use mnvault_client::{ClientError, ClientIdentity, Code, ListAuditEntriesRequest, TokenFormat, VaultClient};
use mnvault_core::authz::Role;
use mnvault_core::identity::Identity;
use time::{Duration, OffsetDateTime};

use crate::helpers::{assert_refused_at_handshake, filing_job, refusal, spawn_dev_vault, valid_number, TestApp};

/// Issues a certificate for the SPIFFE ID `path` (after the trust domain)
/// from the dev vault's CA, into a directory of its own.
fn issue(app: &TestApp, path: &str) -> (PathBuf, String) {
    issue_valid(
        app,
        path,
        OffsetDateTime::now_utc() - Duration::minutes(5),
        OffsetDateTime::now_utc() + Duration::days(1),
    )
}

fn issue_valid(app: &TestApp, path: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> (PathBuf, String) {
    let ca = CertificateAuthority::open(&app.path().join(DEV_PKI_DIR)).expect("the dev CA");
    let identity = Identity::parse(&format!("spiffe://{DEV_TRUST_DOMAIN}/{path}")).expect("a valid identity");
    let out = app.path().join("issued").join(path.replace('/', "_"));
    // Issued once per vault and path: later callers connect with the same files.
    if !out.join(format!("{}.crt", identity.name())).exists() {
        ca.issue_valid(&identity, not_before, not_after, &out).expect("issued");
    }
    (out, identity.name().to_owned())
}

async fn connect(app: &TestApp, (dir, name): &(PathBuf, String)) -> Result<VaultClient, ClientError> {
    let identity = ClientIdentity::from_dev_pki(dir, name).expect("the issued files");
    VaultClient::connect(&app.endpoint, &identity).await
}

pub(crate) async fn client(app: &TestApp, path: &str) -> VaultClient {
    connect(app, &issue(app, path)).await.expect("connect")
}

fn job_in(tenant: &str, tokens: &[String]) -> mnvault_client::NewFilingJob {
    mnvault_client::NewFilingJob { tenant: tenant.into(), ..filing_job(tokens) }
}

on_both_backends! {
    async fn one_person_with_two_certificates_cannot_approve_their_own_job(backend) {
        let app = spawn_dev_vault(&backend).await;
        let token = app.client("payroll").await.tokenize("demo", &valid_number(), TokenFormat::Opaque).await.unwrap();
        let as_requester = client(&app, "tenant/demo/requester/alice").await;
        let as_approver = client(&app, "tenant/demo/approver/alice").await;
        let job = as_requester.create_filing_job(filing_job(&[token])).await.unwrap().job_id;

        let (code, message) = refusal(as_approver.approve_filing_job(&job).await);
        assert_eq!(code, Code::PermissionDenied);
        assert!(message.starts_with("alice created filing job"), "{message}");
        // Nor under a name spelled with other punctuation.
        let spelled_apart = client(&app, "tenant/demo/approver/a.lice").await;
        assert_eq!(refusal(spelled_apart.approve_filing_job(&job).await).0, Code::PermissionDenied);
        // Another person may; the audit log names both certificates' identities.
        app.client("approver").await.approve_filing_job(&job).await.unwrap();
        let entries = app.audit_entries().await;
        let denied = entries.iter().find(|e| e.operation == "filing.approve-job" && e.outcome == "denied").unwrap();
        assert_eq!(denied.principal, format!("spiffe://{DEV_TRUST_DOMAIN}/tenant/demo/approver/alice"));
        let created = entries.iter().find(|e| e.operation == "filing.create-job").unwrap();
        assert_eq!(created.principal, format!("spiffe://{DEV_TRUST_DOMAIN}/tenant/demo/requester/alice"));
    }
}

on_both_backends! {
    async fn a_certificate_without_a_usable_identity_gets_no_call(backend) {
        let app = spawn_dev_vault(&backend).await;
        let pki = app.path().join(DEV_PKI_DIR);
        let ca_cert = std::fs::read_to_string(pki.join("ca.pem")).unwrap();
        let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert, ca_key).unwrap();
        // Signed by the vault's own CA, so only the identity is wrong.
        let cases = [
            (None, "has no SPIFFE ID"),
            (Some("spiffe://elsewhere.example/tenant/demo/payroll/mallory"), "not in this vault's trust domain"),
            (Some("spiffe://mnvault-dev.invalid/operator/payroll/mallory"), "does not belong to its scope"),
        ];
        for (i, (uri, expected)) in cases.into_iter().enumerate() {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name.push(rcgen::DnType::CommonName, "payroll");
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            if let Some(uri) = uri {
                params.subject_alt_names = vec![rcgen::SanType::URI(uri.to_string().try_into().unwrap())];
            }
            let cert = params.signed_by(&key, &issuer).unwrap();
            let dir = app.path().join(format!("odd-{i}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("mallory.crt"), cert.pem()).unwrap();
            std::fs::write(dir.join("mallory.key"), key.serialize_pem()).unwrap();
            std::fs::copy(pki.join("ca.pem"), dir.join("ca.pem")).unwrap();
            let mallory = connect(&app, &(dir, "mallory".into())).await.unwrap();
            let (code, message) = refusal(mallory.tokenize("demo", &valid_number(), TokenFormat::Opaque).await);
            assert_eq!(code, Code::Unauthenticated, "{uri:?}");
            assert!(message.contains(expected), "{uri:?}: {message}");
        }
    }
}

on_both_backends! {
    async fn expired_not_yet_valid_and_foreign_certificates_are_refused_at_the_handshake(backend) {
        let app = spawn_dev_vault(&backend).await;
        let now = OffsetDateTime::now_utc();
        let expired = issue_valid(&app, "tenant/demo/payroll/expired", now - Duration::days(2), now - Duration::days(1));
        let early = issue_valid(&app, "tenant/demo/payroll/early", now + Duration::days(1), now + Duration::days(2));
        // A CA the vault does not trust, issuing the same identity.
        let elsewhere = tempfile::tempdir().unwrap();
        mnvault::dev_pki::create_dev_pki(&elsewhere.path().join("pki"), &["payroll"]).unwrap();
        let ca = CertificateAuthority::open(&elsewhere.path().join("pki")).unwrap();
        let identity = Identity::parse(&format!("spiffe://{DEV_TRUST_DOMAIN}/tenant/demo/payroll/stranger")).unwrap();
        let foreign_dir = elsewhere.path().join("stranger");
        ca.issue(&identity, Duration::days(1), &foreign_dir).unwrap();
        std::fs::copy(app.path().join(DEV_PKI_DIR).join("ca.pem"), foreign_dir.join("trusted-ca.pem")).unwrap();
        let foreign = ClientIdentity::from_files(
            &foreign_dir.join("stranger.crt"),
            &foreign_dir.join("stranger.key"),
            &foreign_dir.join("trusted-ca.pem"),
        )
        .unwrap();

        for (what, connected) in [
            ("expired", connect(&app, &expired).await),
            ("not yet valid", connect(&app, &early).await),
            ("unknown CA", VaultClient::connect(&app.endpoint, &foreign).await),
        ] {
            // No call reaches a handler (none is audited).
            assert_refused_at_handshake(what, connected).await;
        }
        let entries = app.audit_entries().await;
        assert!(entries.iter().all(|e| e.operation != "filing.list-purposes"), "{entries:?}");
        // A valid certificate of the same CA still gets in.
        client(&app, "tenant/demo/payroll/valid").await.list_purposes().await.unwrap();
    }
}

/// An RPC of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    Tokenize,
    TokenizeStream,
    DescribeToken,
    CreateFilingJob,
    ApproveFilingJob,
    GetFilingJob,
    CancelFilingJob,
    Detokenize,
    ListPurposes,
    CreateTenant,
    ExportTenant,
    ShredTenant,
    ListAuditEntries,
    VerifyAuditChain,
    SignCheckpoint,
    SetRetention,
    PurgeExpired,
    IssueDeletionCertificate,
    RotateTenantKey,
    RewrapTenantRecords,
    GetKeyStatus,
    RetireKeyVersion,
    RotateSigningKey,
    GetTenantPolicy,
    ProposeTenantPolicy,
    ApproveTenantPolicy,
    RevokeCertificate,
    ListRevokedCertificates,
    CreateCollection,
    GetCollection,
    WatchCollections,
    CancelCollection,
}

/// What an RPC acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// One tenant, named in the call or by its job.
    Tenant,
    /// Every tenant: operators only.
    AllTenants,
    /// No tenant at all.
    None,
}

impl Rpc {
    const ALL: [Rpc; 32] = [
        Rpc::Tokenize,
        Rpc::TokenizeStream,
        Rpc::DescribeToken,
        Rpc::CreateFilingJob,
        Rpc::ApproveFilingJob,
        Rpc::GetFilingJob,
        Rpc::CancelFilingJob,
        Rpc::Detokenize,
        Rpc::ListPurposes,
        Rpc::CreateTenant,
        Rpc::ExportTenant,
        Rpc::ShredTenant,
        Rpc::ListAuditEntries,
        Rpc::VerifyAuditChain,
        Rpc::SignCheckpoint,
        Rpc::SetRetention,
        Rpc::PurgeExpired,
        Rpc::IssueDeletionCertificate,
        Rpc::RotateTenantKey,
        Rpc::RewrapTenantRecords,
        Rpc::GetKeyStatus,
        Rpc::RetireKeyVersion,
        Rpc::RotateSigningKey,
        Rpc::GetTenantPolicy,
        Rpc::ProposeTenantPolicy,
        Rpc::ApproveTenantPolicy,
        Rpc::RevokeCertificate,
        Rpc::ListRevokedCertificates,
        Rpc::CreateCollection,
        Rpc::GetCollection,
        Rpc::WatchCollections,
        Rpc::CancelCollection,
    ];

    /// The roles that may make the call, and what it reaches: the rule the
    /// matrix holds the vault to.
    fn rule(self) -> (&'static [Role], Reach) {
        use Role::*;
        match self {
            Rpc::Tokenize | Rpc::TokenizeStream => (&[Payroll], Reach::Tenant),
            Rpc::DescribeToken => (&[Payroll, Requester, Approver, Filer, Auditor], Reach::Tenant),
            Rpc::CreateFilingJob => (&[Requester], Reach::Tenant),
            Rpc::ApproveFilingJob => (&[Approver], Reach::Tenant),
            Rpc::GetFilingJob => (&[Requester, Approver, Filer, Auditor], Reach::Tenant),
            Rpc::CancelFilingJob => (&[Requester, Approver], Reach::Tenant),
            Rpc::Detokenize | Rpc::ExportTenant => (&[Filer], Reach::Tenant),
            Rpc::ListPurposes => (&Role::ALL, Reach::None),
            Rpc::CreateTenant
            | Rpc::ShredTenant
            | Rpc::SetRetention
            | Rpc::PurgeExpired
            | Rpc::RotateTenantKey
            | Rpc::RewrapTenantRecords
            | Rpc::GetKeyStatus
            | Rpc::RetireKeyVersion => (&[KeyAdmin], Reach::Tenant),
            Rpc::IssueDeletionCertificate => (&[KeyAdmin, Auditor], Reach::Tenant),
            Rpc::ListAuditEntries => (&[Auditor], Reach::Tenant),
            Rpc::VerifyAuditChain | Rpc::SignCheckpoint => (&[Auditor], Reach::AllTenants),
            Rpc::RotateSigningKey => (&[KeyAdmin], Reach::AllTenants),
            Rpc::GetTenantPolicy => (&[KeyAdmin, Auditor], Reach::Tenant),
            Rpc::ProposeTenantPolicy | Rpc::ApproveTenantPolicy => (&[KeyAdmin], Reach::Tenant),
            Rpc::RevokeCertificate => (&[KeyAdmin], Reach::AllTenants),
            Rpc::ListRevokedCertificates => (&[KeyAdmin, Auditor], Reach::AllTenants),
            Rpc::CreateCollection | Rpc::GetCollection | Rpc::WatchCollections | Rpc::CancelCollection => {
                (&[Payroll], Reach::Tenant)
            }
        }
    }
}

/// A caller of the matrix: a role, for tenant `acme` or as an operator.
struct Caller {
    role: Role,
    operator: bool,
    client: VaultClient,
}

impl Caller {
    fn may(&self, rpc: Rpc, same_tenant: bool) -> bool {
        let (roles, reach) = rpc.rule();
        roles.contains(&self.role)
            && match reach {
                Reach::None => true,
                Reach::AllTenants => self.operator,
                Reach::Tenant => self.operator || same_tenant,
            }
    }
}

/// What a tenant holds for the matrix to aim at.
struct Target {
    tenant: &'static str,
    token: String,
    pending_job: String,
    approved_job: String,
    /// An open collection (the first cancel allowed settles it).
    collection: String,
    /// A cancelled one: a watch of it ends at once.
    cancelled_collection: String,
}

async fn target(app: &TestApp, tenant: &'static str) -> Target {
    let payroll = client(app, &format!("tenant/{tenant}/payroll/fixture-payroll")).await;
    let token = payroll.tokenize(tenant, &valid_number(), TokenFormat::Opaque).await.unwrap();
    let requester = client(app, &format!("tenant/{tenant}/requester/fixture-requester")).await;
    let approver = client(app, &format!("tenant/{tenant}/approver/fixture-approver")).await;
    let pending_job = requester.create_filing_job(job_in(tenant, std::slice::from_ref(&token))).await.unwrap().job_id;
    let approved_job = requester.create_filing_job(job_in(tenant, std::slice::from_ref(&token))).await.unwrap().job_id;
    approver.approve_filing_job(&approved_job).await.unwrap();
    let mut collections = Vec::new();
    for _ in 0..2 {
        let created = payroll.create_collection(tenant, crate::collection::asked(0, 0)).await.unwrap();
        collections.push(created.collection.unwrap().collection_id);
    }
    payroll.cancel_collection(tenant, &collections[1]).await.unwrap();
    let [collection, cancelled_collection]: [String; 2] = collections.try_into().unwrap();
    Target { tenant, token, pending_job, approved_job, collection, cancelled_collection }
}

/// Makes `rpc` as `client` against `target`: `None` when it succeeded, else
/// the status code. Each request is well formed, so a refusal is the rule's.
async fn call(rpc: Rpc, client: &VaultClient, target: &Target) -> Option<Code> {
    let tenant = target.tenant;
    let token = target.token.clone();
    let now = OffsetDateTime::now_utc();
    let result: Result<(), ClientError> = match rpc {
        Rpc::Tokenize => client.tokenize(tenant, &valid_number(), TokenFormat::Opaque).await.map(drop),
        // A refused record answers with its own code; the stream goes on.
        Rpc::TokenizeStream => match client.tokenize_stream(tenant, TokenFormat::Opaque, vec![valid_number()]).await {
            Ok(stream) => {
                let results: Vec<_> = stream.collect().await;
                match results.into_iter().next() {
                    Some(Ok(answer)) => return answer.result.err().map(|error| Code::from(error.code)),
                    Some(Err(error)) => Err(error),
                    None => panic!("no answer to the one record"),
                }
            }
            Err(error) => Err(error),
        },
        Rpc::DescribeToken => client.describe_token(tenant, &token).await.map(drop),
        Rpc::CreateFilingJob => client.create_filing_job(job_in(tenant, &[token])).await.map(drop),
        Rpc::ApproveFilingJob => client.approve_filing_job(&target.pending_job).await.map(drop),
        Rpc::GetFilingJob => client.get_filing_job(&target.pending_job).await.map(drop),
        Rpc::CancelFilingJob => client.cancel_filing_job(&target.pending_job).await.map(drop),
        Rpc::Detokenize => client.detokenize(&target.approved_job, vec![token]).await.map(drop),
        Rpc::ListPurposes => client.list_purposes().await.map(drop),
        Rpc::CreateTenant => client.create_tenant(tenant, "already there").await.map(drop),
        Rpc::ExportTenant => {
            let recipient = age::x25519::Identity::generate().to_public().to_string();
            match client.export_tenant(&target.approved_job, &recipient).await {
                Ok(stream) => {
                    let results: Vec<_> = stream.collect().await;
                    results.into_iter().try_for_each(|item| item.map(drop))
                }
                Err(error) => Err(error),
            }
        }
        // Refused after the rule by the tenant's open (approved) job.
        Rpc::ShredTenant => client.shred_tenant(tenant).await.map(drop),
        Rpc::ListAuditEntries => {
            let request = ListAuditEntriesRequest { tenant: tenant.into(), limit: 1, ..Default::default() };
            client.list_audit_entries(request).await.map(drop)
        }
        Rpc::VerifyAuditChain => client.verify_audit_chain().await.map(drop),
        Rpc::SignCheckpoint => client.sign_checkpoint().await.map(drop),
        Rpc::SetRetention => {
            let request = SetRetentionRequest {
                tenant: tenant.into(),
                tokens: vec![token],
                classes: vec!["tax-declaration".into()],
                end_date: "2026-03-31".into(),
                delete_after: String::new(),
                legal_hold: false,
            };
            client.set_retention(request).await.map(drop)
        }
        Rpc::PurgeExpired => client.purge_expired(tenant, true).await.map(drop),
        Rpc::IssueDeletionCertificate => {
            client.issue_deletion_certificate(tenant, now - Duration::days(1), now).await.map(drop)
        }
        Rpc::RotateTenantKey => client.rotate_tenant_key(tenant).await.map(drop),
        Rpc::RewrapTenantRecords => client.rewrap_tenant_records(tenant, 10, "").await.map(drop),
        Rpc::GetKeyStatus => client.key_status(Some(tenant), "", 10).await.map(drop),
        Rpc::RetireKeyVersion => client.retire_key_version(tenant, 99).await.map(drop),
        Rpc::RotateSigningKey => client.rotate_signing_key().await.map(drop),
        Rpc::GetTenantPolicy => client.tenant_policy(tenant).await.map(drop),
        // The default policy, proposed: it stays pending, so no later cell changes.
        Rpc::ProposeTenantPolicy => client.propose_tenant_policy(tenant, default_policy()).await.map(drop),
        // A well-formed change id that is pending nowhere: NOT_FOUND once authorised.
        Rpc::ApproveTenantPolicy => client.approve_tenant_policy(tenant, "pc_abcdefghijklmnop").await.map(drop),
        // A serial no certificate of the matrix has: revoked once, then FAILED_PRECONDITION.
        Rpc::RevokeCertificate => client.revoke_certificate("7fabcdef", "matrix").await.map(drop),
        Rpc::ListRevokedCertificates => client.revoked_certificates().await.map(drop),
        Rpc::CreateCollection => client.create_collection(tenant, crate::collection::asked(0, 0)).await.map(drop),
        Rpc::GetCollection => client.collection(tenant, &target.collection).await.map(drop),
        Rpc::WatchCollections => {
            match client.watch_collections(tenant, vec![target.cancelled_collection.clone()]).await {
                Ok(stream) => {
                    let results: Vec<_> = stream.collect().await;
                    results.into_iter().try_for_each(|item| item.map(drop))
                }
                Err(error) => Err(error),
            }
        }
        // Cancelled by the first caller allowed; FAILED_PRECONDITION after that.
        Rpc::CancelCollection => client.cancel_collection(tenant, &target.collection).await.map(drop),
    };
    match result {
        Ok(()) => None,
        Err(ClientError::Refused { code, .. }) => Some(code),
        Err(other) => panic!("{rpc:?}: {other:?}"),
    }
}

fn default_policy() -> mnvault_client::tenant_policy::TenantPolicy {
    mnvault_client::tenant_policy::TenantPolicy {
        approvals_required: 1,
        max_tokens_per_job: 100_000,
        max_job_lifetime_days: 90,
        ..Default::default()
    }
}

on_both_backends! {
    async fn every_role_reaches_exactly_its_calls_on_its_own_tenant(backend) {
        let app = crate::helpers::spawn_dev_vault_with(&backend, |settings| {
            settings.collection.listen = Some("127.0.0.1:0".parse().unwrap());
        })
        .await;
        let admin = app.client("admin").await;
        for tenant in ["acme", "other"] {
            admin.create_tenant(tenant, tenant).await.unwrap();
        }
        let targets = [target(&app, "acme").await, target(&app, "other").await];
        let mut callers = Vec::new();
        for role in Role::ALL {
            if role != Role::KeyAdmin {
                let path = format!("tenant/acme/{}/matrix-{}", role.id(), role.id());
                callers.push(Caller { role, operator: false, client: client(&app, &path).await });
            }
            if matches!(role, Role::KeyAdmin | Role::Auditor) {
                let path = format!("operator/{}/matrix-operator-{}", role.id(), role.id());
                callers.push(Caller { role, operator: true, client: client(&app, &path).await });
            }
        }
        assert_eq!(callers.len(), 7);

        let mut wrong = Vec::new();
        let mut cells = 0;
        for rpc in Rpc::ALL {
            for caller in &callers {
                for target in &targets {
                    let same_tenant = target.tenant == "acme";
                    let allowed = caller.may(rpc, same_tenant);
                    let code = call(rpc, &caller.client, target).await;
                    cells += 1;
                    let held = match code {
                        Some(Code::PermissionDenied) => !allowed,
                        Some(Code::Unauthenticated) => false,
                        _ => allowed,
                    };
                    if !held {
                        let who = format!("{}{}", if caller.operator { "operator " } else { "acme " }, caller.role.id());
                        wrong.push(format!("{rpc:?} as {who} on {}: expected allowed={allowed}, got {code:?}", target.tenant));
                    }
                }
            }
        }
        assert_eq!(cells, Rpc::ALL.len() * 7 * 2);
        assert!(wrong.is_empty(), "{} cells broke the rule:\n{}", wrong.len(), wrong.join("\n"));
        // Nothing in `other` was reached from `acme`: its pending job is still pending.
        let job = admin_view_of_job(&app, &targets[1].pending_job).await;
        assert_eq!(job, mnvault_client::FilingJobState::PendingApproval);
    }
}

async fn admin_view_of_job(app: &TestApp, job: &str) -> mnvault_client::FilingJobState {
    let requester = client(app, "tenant/other/requester/checker").await;
    requester.get_filing_job(job).await.unwrap().state()
}
