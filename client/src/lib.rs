//! Client library of mnvault, the vault for Japanese My Numbers (個人番号).
//!
//! Payroll services use [`VaultClient`] to turn numbers into tokens and keep
//! only the tokens; filing tools use it to run approved filing jobs; the
//! `mnvault` CLI is built on it. Every connection is mutual TLS: a
//! [`ClientIdentity`] holds the caller's certificate, its key and the CA that
//! signed the vault's certificate. There are no passwords.
//!
//! [`number::MyNumber`] and [`purpose::Purpose`] are re-exported from
//! `mnvault-core`, the crate that holds the vault's rules, so a client
//! validates input exactly as the server does before sending it.
//!
//! Numbers are handed out only as [`SecretString`] ([`ReleasedNumber`]),
//! wiped on drop; the protobuf messages that carry a number wipe it too. The
//! bytes inside tonic's and h2's buffers are not wiped.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use mnvault_core::{number, purpose};

pub mod collection;
pub mod keys;
pub mod offboarding;
pub mod retention;
pub mod revocation;
pub mod tenant_policy;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{Stream, StreamExt};
use mnvault_core::id::RequestId;
use mnvault_proto::v1 as pb;
use pb::admin_service_client::AdminServiceClient;
use pb::audit_service_client::AuditServiceClient;
use pb::filing_service_client::FilingServiceClient;
use pb::key_service_client::KeyServiceClient;
use pb::token_service_client::TokenServiceClient;
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use tonic::metadata::MetadataMap;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub use mnvault_proto::v1::{
    AuditEntry, FilingJob, FilingJobState, ListAuditEntriesRequest, RecordError, Tenant, TokenFormat,
    VerifyAuditChainResponse,
};
pub use tonic::Code;
/// What the vault's health service says of a service ([`VaultClient::health`]).
pub use tonic_health::pb::health_check_response::ServingStatus;

/// Address of a vault started with `mnvault serve --dev`.
pub const DEV_ENDPOINT: &str = "https://127.0.0.1:50051";

/// How long connecting to the vault may take before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong talking to the vault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A certificate, key or CA file could not be read.
    #[error("cannot read {path}: {source}")]
    Identity {
        /// The file that could not be read.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The endpoint is not a valid URL.
    #[error("{endpoint:?} is not a valid vault endpoint (expected e.g. {DEV_ENDPOINT})")]
    InvalidEndpoint {
        /// The endpoint given.
        endpoint: String,
    },
    /// The vault could not be reached or the TLS handshake failed.
    #[error("cannot reach the vault at {endpoint}: {source}")]
    Connect {
        /// The endpoint tried.
        endpoint: String,
        /// The transport's reason.
        source: tonic::transport::Error,
    },
    /// The vault answered with an error status.
    #[error("{message} ({code:?}{})", .request_id.as_deref().map(|id| format!(", request {id}")).unwrap_or_default())]
    Refused {
        /// gRPC status code, e.g. `PermissionDenied`.
        code: Code,
        /// The vault's explanation.
        message: String,
        /// The call's request id, as the vault's log lines and audit entry
        /// name it: quote it to the vault's operator. None when the answer
        /// carried none (not a vault, or the connection broke first).
        request_id: Option<String>,
    },
}

impl ClientError {
    /// The gRPC status code when the vault refused the call.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The request id of the refused call, to quote to the vault's operator.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            ClientError::Refused { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    /// A status that ended a stream whose answer began with `metadata`: the
    /// request id is in the answer's headers, not in the closing status.
    fn ended_stream(status: tonic::Status, metadata: &MetadataMap) -> Self {
        let mut error = Self::from(status);
        if let ClientError::Refused { request_id: request_id @ None, .. } = &mut error {
            *request_id = request_id_of(metadata);
        }
        error
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        let request_id = request_id_of(status.metadata());
        ClientError::Refused { code: status.code(), message: status.message().to_owned(), request_id }
    }
}

/// The header in which the vault names each call's request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The request id an answer's metadata names, if it follows the vault's
/// grammar (nothing else is passed on to the caller's logs).
pub fn request_id_of(metadata: &MetadataMap) -> Option<String> {
    let text = metadata.get(REQUEST_ID_HEADER)?.to_str().ok()?;
    RequestId::parse(text).ok().map(|id| id.to_string())
}

/// The caller's mutual-TLS identity and the CA it trusts for the vault.
#[derive(Clone)]
pub struct ClientIdentity {
    cert_pem: Vec<u8>,
    key_pem: SecretString,
    ca_pem: Vec<u8>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity").field("key_pem", &"[redacted]").finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// Reads a PEM certificate, its PEM private key and the PEM CA certificate.
    pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self, ClientError> {
        let read =
            |path: &Path| std::fs::read(path).map_err(|source| ClientError::Identity { path: path.to_owned(), source });
        let key_bytes = zeroize::Zeroizing::new(read(key)?);
        let key_pem = SecretString::from(String::from_utf8_lossy(&key_bytes).into_owned());
        Ok(Self { cert_pem: read(cert)?, key_pem, ca_pem: read(ca)? })
    }

    /// The identity of principal `name` in a dev PKI directory
    /// (`<data-dir>/dev-pki`, made by `mnvault serve --dev`).
    pub fn from_dev_pki(dir: &Path, name: &str) -> Result<Self, ClientError> {
        Self::from_files(&dir.join(format!("{name}.crt")), &dir.join(format!("{name}.key")), &dir.join("ca.pem"))
    }
}

/// One result of a bulk tokenization: the token, or why this record failed.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamedToken {
    /// Zero-based position of the number in the input.
    pub index: u64,
    /// The token, or the per-record error.
    pub result: Result<String, RecordError>,
}

/// A number released by a filing job.
pub struct ReleasedNumber {
    /// The token it was released for.
    pub token: String,
    /// The twelve digits.
    pub number: SecretString,
}

impl std::fmt::Debug for ReleasedNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleasedNumber").field("token", &self.token).field("number", &"[redacted]").finish()
    }
}

/// What a new filing job declares.
#[derive(Debug, Clone)]
pub struct NewFilingJob {
    /// Tenant whose tokens the job lists.
    pub tenant: String,
    /// Purpose identifier, e.g. `withholding-slip`.
    pub purpose: String,
    /// Tokens whose numbers the job may release.
    pub tokens: Vec<String>,
    /// When the job stops releasing numbers.
    pub expires_at: OffsetDateTime,
    /// How often each token may be released (0 or 1: once).
    pub max_releases_per_token: u32,
    /// Free text for reviewers.
    pub note: String,
}

/// A connection to the vault. Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct VaultClient {
    tokens: TokenServiceClient<Channel>,
    filing: FilingServiceClient<Channel>,
    admin: AdminServiceClient<Channel>,
    audit: AuditServiceClient<Channel>,
    keys: KeyServiceClient<Channel>,
    retention: pb::retention_service_client::RetentionServiceClient<Channel>,
    collections: pb::collection_service_client::CollectionServiceClient<Channel>,
    health: tonic_health::pb::health_client::HealthClient<Channel>,
}

impl VaultClient {
    /// Connects to `endpoint` (e.g. [`DEV_ENDPOINT`]) with mutual TLS.
    pub async fn connect(endpoint: &str, identity: &ClientIdentity) -> Result<Self, ClientError> {
        let channel = connect_channel(endpoint, identity).await?;
        Ok(Self {
            tokens: TokenServiceClient::new(channel.clone()),
            filing: FilingServiceClient::new(channel.clone()),
            admin: AdminServiceClient::new(channel.clone()),
            audit: AuditServiceClient::new(channel.clone()),
            keys: KeyServiceClient::new(channel.clone()),
            retention: pb::retention_service_client::RetentionServiceClient::new(channel.clone()),
            collections: pb::collection_service_client::CollectionServiceClient::new(channel.clone()),
            health: tonic_health::pb::health_client::HealthClient::new(channel),
        })
    }

    /// Tokenizes one number. The vault validates it; see [`number::MyNumber`]
    /// to validate before sending. The request's copy of the number is wiped
    /// once sent; `number` stays the caller's to wipe.
    pub async fn tokenize(&self, tenant: &str, number: &str, format: TokenFormat) -> Result<String, ClientError> {
        let request =
            pb::TokenizeRequest { tenant: tenant.to_owned(), number: number.to_owned(), format: format.into() };
        Ok(self.tokens.clone().tokenize(request).await?.into_inner().token)
    }

    /// Tokenizes many numbers over one bidirectional stream. Yields one
    /// result per number, in input order; a bad number is a per-record error.
    /// Each number is moved into its request, which wipes it once sent.
    pub async fn tokenize_stream<I>(
        &self,
        tenant: &str,
        format: TokenFormat,
        numbers: I,
    ) -> Result<impl Stream<Item = Result<StreamedToken, ClientError>>, ClientError>
    where
        I: IntoIterator<Item = String>,
        I::IntoIter: Send + 'static,
    {
        let tenant = tenant.to_owned();
        let requests = futures::stream::iter(numbers).map(move |number| pb::TokenizeRequest {
            tenant: tenant.clone(),
            number,
            format: format.into(),
        });
        let (metadata, responses, _) = self.tokens.clone().tokenize_stream(requests).await?.into_parts();
        Ok(responses.map(move |response| {
            let response = response.map_err(|status| ClientError::ended_stream(status, &metadata))?;
            let result = match response.result {
                Some(pb::tokenize_stream_response::Result::Token(token)) => Ok(token),
                Some(pb::tokenize_stream_response::Result::Error(error)) => Err(error),
                None => Err(RecordError { code: Code::Internal as i32, message: "empty result".into() }),
            };
            Ok(StreamedToken { index: response.index, result })
        }))
    }

    /// Metadata about a token; never the number.
    pub async fn describe_token(&self, tenant: &str, token: &str) -> Result<pb::DescribeTokenResponse, ClientError> {
        let request = pb::DescribeTokenRequest { tenant: tenant.to_owned(), token: token.to_owned() };
        Ok(self.tokens.clone().describe_token(request).await?.into_inner())
    }

    /// Creates a filing job; it releases nothing until another principal approves it.
    pub async fn create_filing_job(&self, job: NewFilingJob) -> Result<FilingJob, ClientError> {
        let request = pb::CreateFilingJobRequest {
            tenant: job.tenant,
            purpose: job.purpose,
            tokens: job.tokens,
            expires_at: Some(timestamp(job.expires_at)),
            max_releases_per_token: job.max_releases_per_token,
            note: job.note,
        };
        Ok(self.filing.clone().create_filing_job(request).await?.into_inner())
    }

    /// Approves a pending job created by someone else.
    pub async fn approve_filing_job(&self, job_id: &str) -> Result<FilingJob, ClientError> {
        let request = pb::ApproveFilingJobRequest { job_id: job_id.to_owned() };
        Ok(self.filing.clone().approve_filing_job(request).await?.into_inner())
    }

    /// A job with its tokens and release counts.
    pub async fn get_filing_job(&self, job_id: &str) -> Result<FilingJob, ClientError> {
        let request = pb::GetFilingJobRequest { job_id: job_id.to_owned() };
        Ok(self.filing.clone().get_filing_job(request).await?.into_inner())
    }

    /// Cancels a job; nothing more can be released from it.
    pub async fn cancel_filing_job(&self, job_id: &str) -> Result<FilingJob, ClientError> {
        let request = pb::CancelFilingJobRequest { job_id: job_id.to_owned() };
        Ok(self.filing.clone().cancel_filing_job(request).await?.into_inner())
    }

    /// The lawful purposes the vault accepts.
    pub async fn list_purposes(&self) -> Result<Vec<pb::Purpose>, ClientError> {
        Ok(self.filing.clone().list_purposes(pb::ListPurposesRequest {}).await?.into_inner().purposes)
    }

    /// Releases numbers of an approved job: `tokens`, or all of the job's
    /// tokens when empty.
    pub async fn detokenize(&self, job_id: &str, tokens: Vec<String>) -> Result<Vec<ReleasedNumber>, ClientError> {
        let request = pb::DetokenizeRequest { job_id: job_id.to_owned(), tokens };
        let (metadata, mut stream, _) = self.filing.clone().detokenize(request).await?.into_parts();
        let mut released = Vec::new();
        while let Some(mut response) =
            stream.message().await.map_err(|status| ClientError::ended_stream(status, &metadata))?
        {
            // One exact copy into the secret; the response wipes its own when
            // dropped. (Converting the String instead could reallocate and
            // leave the old buffer unwiped.)
            let number = SecretString::from(response.number.as_str());
            released.push(ReleasedNumber { token: std::mem::take(&mut response.token), number });
        }
        Ok(released)
    }

    /// Creates a tenant with its own keys.
    pub async fn create_tenant(&self, tenant: &str, display_name: &str) -> Result<Tenant, ClientError> {
        let request = pb::CreateTenantRequest { tenant: tenant.to_owned(), display_name: display_name.to_owned() };
        Ok(self.admin.clone().create_tenant(request).await?.into_inner())
    }

    /// One page of audit entries.
    pub async fn list_audit_entries(
        &self,
        request: ListAuditEntriesRequest,
    ) -> Result<pb::ListAuditEntriesResponse, ClientError> {
        Ok(self.audit.clone().list_audit_entries(request).await?.into_inner())
    }

    /// Asks the vault to sign its audit chain head now (auditor of every
    /// tenant); the answer is the checkpoint as one JSON line.
    pub async fn sign_checkpoint(&self) -> Result<String, ClientError> {
        Ok(self.audit.clone().sign_checkpoint(pb::SignCheckpointRequest {}).await?.into_inner().checkpoint_json)
    }

    /// Asks the vault to walk the audit chain.
    pub async fn verify_audit_chain(&self) -> Result<VerifyAuditChainResponse, ClientError> {
        Ok(self.audit.clone().verify_audit_chain(pb::VerifyAuditChainRequest {}).await?.into_inner())
    }

    /// What the vault's health service (`grpc.health.v1`) says of `service`:
    /// a service's full name, e.g. `mynumber.vault.v1.TokenService`, or ""
    /// for the whole vault. Any certificate the vault accepts may ask; no
    /// grant is needed. A name the vault does not serve is `NOT_FOUND`.
    pub async fn health(&self, service: &str) -> Result<ServingStatus, ClientError> {
        let request = tonic_health::pb::HealthCheckRequest { service: service.to_owned() };
        let status = self.health.clone().check(request).await?.into_inner().status;
        Ok(ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown))
    }
}

/// A mutual-TLS channel to the vault, for the standard gRPC services it also
/// serves (`grpc.health.v1.Health`, server reflection).
pub async fn connect_channel(endpoint: &str, identity: &ClientIdentity) -> Result<Channel, ClientError> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&identity.ca_pem))
        .identity(Identity::from_pem(&identity.cert_pem, identity.key_pem.expose_secret()));
    Channel::from_shared(endpoint.to_owned())
        .map_err(|_| ClientError::InvalidEndpoint { endpoint: endpoint.to_owned() })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tls_config(tls)
        .map_err(|source| ClientError::Connect { endpoint: endpoint.to_owned(), source })?
        .connect()
        .await
        .map_err(|source| ClientError::Connect { endpoint: endpoint.to_owned(), source })
}

/// A protobuf timestamp for a point in time.
pub fn timestamp(at: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.unix_timestamp(), nanos: at.nanosecond() as i32 }
}

/// The point in time of a protobuf timestamp, if it is in range.
pub fn from_timestamp(at: &prost_types::Timestamp) -> Option<OffsetDateTime> {
    let nanos = i128::from(at.seconds) * 1_000_000_000 + i128::from(at.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}
