//! The gRPC services: they only translate. Each handler authenticates the
//! caller from its client certificate, checks sizes against
//! [`LimitSettings`], parses what the request holds into the core's types (a
//! field that does not parse is refused without being repeated), calls
//! [`VaultCore`], and turns the answer or the refusal into protobuf. Every
//! outcome is audited: calls that change state append their entry inside the
//! core's transaction; everything else goes through
//! [`VaultContext::audited`] or [`VaultContext::refuse`]; a call the
//! transport refused before its handler ran (a message too large, bytes that
//! are not protobuf) through [`VaultContext::refused_by_transport`].

mod admin;
mod audit_review;
mod collection;
mod filing;
mod keys;
mod retention;
mod token;
mod wire;

pub use admin::AdminApi;
pub use audit_review::AuditApi;
pub use collection::{CollectionApi, PageDesk};
pub use filing::FilingApi;
pub use keys::KeyApi;
pub use retention::RetentionApi;
pub use token::TokenApi;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use mnvault_core::audit::{AuditDraft, Operation, Outcome};
use mnvault_core::authz::Role;
use mnvault_core::id::{CertificateSerial, Principal, RequestId, TenantId};
use mnvault_core::tenant_policy::Limit;
use mnvault_core::VaultCore;
use mnvault_proto::v1 as pb;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tonic::{Code, Request, Status};

use crate::config::LimitSettings;
use crate::error::{status, VaultError};
use crate::identity::certified_caller;
use crate::metrics::Metrics;

/// Every role: a refusal names a tenant only when the caller holds one of
/// them on it.
const ANY_ROLE: [Role; 6] = Role::ALL;

/// What every service shares.
pub struct VaultContext {
    /// The rules and the store.
    pub core: VaultCore,
    /// What one caller may cost; a reload may replace it ([`VaultContext::limits`]).
    limits: arc_swap::ArcSwap<LimitSettings>,
    /// Cancelled when the vault starts shutting down: a `TokenizeStream`
    /// then ends after the batch it holds.
    pub stopping: tokio_util::sync::CancellationToken,
    /// This vault's metrics.
    pub metrics: Arc<Metrics>,
    /// Unary tokenize writes run in tasks of their own (a client that goes
    /// away must not drop a group commit it leads); this bounds how many,
    /// so resetting calls cannot pile up writes.
    pub(crate) tokenize_tasks: Arc<tokio::sync::Semaphore>,
    /// What the alarm rules counted in this process (`crate::alarms`).
    pub(crate) alarms: std::sync::Mutex<mnvault_core::audit::alarm::Alarms>,
    /// The audit sinks' gate: a required sink that fails or lags refuses
    /// calls ([`VaultContext::authenticate`]); appends wake the tailers.
    pub audit_sinks: crate::audit_sink::SinkGate,
}

/// Unary tokenize writes in flight at most: the group commit's bound in
/// records, so a full queue is one batch.
const TOKENIZE_TASKS: usize = 4_096;

/// Put in each request's extensions by the connection layer; a handler sets
/// it when it runs, so the layer knows which refusals it must audit itself.
#[derive(Debug, Clone, Default)]
pub struct Dispatched(Arc<AtomicBool>);

impl Dispatched {
    /// Whether a handler ran for the request.
    pub fn reached(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The operation a gRPC path names, if it is one of the vault's.
pub fn operation_of_path(path: &str) -> Option<Operation> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let operation = match (service, method) {
        (pb::token_service_server::SERVICE_NAME, "Tokenize") => Operation::Tokenize,
        (pb::token_service_server::SERVICE_NAME, "TokenizeStream") => Operation::TokenizeStream,
        (pb::token_service_server::SERVICE_NAME, "DescribeToken") => Operation::DescribeToken,
        (pb::filing_service_server::SERVICE_NAME, "CreateFilingJob") => Operation::CreateFilingJob,
        (pb::filing_service_server::SERVICE_NAME, "ApproveFilingJob") => Operation::ApproveFilingJob,
        (pb::filing_service_server::SERVICE_NAME, "Detokenize") => Operation::Detokenize,
        (pb::filing_service_server::SERVICE_NAME, "GetFilingJob") => Operation::GetFilingJob,
        (pb::filing_service_server::SERVICE_NAME, "CancelFilingJob") => Operation::CancelFilingJob,
        (pb::filing_service_server::SERVICE_NAME, "ListPurposes") => Operation::ListPurposes,
        (pb::admin_service_server::SERVICE_NAME, "CreateTenant") => Operation::CreateTenant,
        (pb::admin_service_server::SERVICE_NAME, "ExportTenant") => Operation::ExportTenant,
        (pb::admin_service_server::SERVICE_NAME, "ShredTenant") => Operation::ShredTenant,
        (pb::admin_service_server::SERVICE_NAME, "GetTenantPolicy") => Operation::GetTenantPolicy,
        (pb::admin_service_server::SERVICE_NAME, "ProposeTenantPolicy") => Operation::ProposeTenantPolicy,
        (pb::admin_service_server::SERVICE_NAME, "ApproveTenantPolicy") => Operation::ApproveTenantPolicy,
        (pb::admin_service_server::SERVICE_NAME, "RevokeCertificate") => Operation::RevokeCertificate,
        (pb::admin_service_server::SERVICE_NAME, "ListRevokedCertificates") => Operation::ListRevokedCertificates,
        (pb::audit_service_server::SERVICE_NAME, "ListAuditEntries") => Operation::ListAuditEntries,
        (pb::audit_service_server::SERVICE_NAME, "VerifyAuditChain") => Operation::VerifyAuditChain,
        (pb::audit_service_server::SERVICE_NAME, "SignCheckpoint") => Operation::SignCheckpoint,
        (pb::key_service_server::SERVICE_NAME, "RotateSigningKey") => Operation::RotateSigningKey,
        (pb::retention_service_server::SERVICE_NAME, "SetRetention") => Operation::SetRetention,
        (pb::retention_service_server::SERVICE_NAME, "PurgeExpired") => Operation::PurgeExpired,
        (pb::retention_service_server::SERVICE_NAME, "IssueDeletionCertificate") => Operation::IssueDeletionCertificate,
        (pb::key_service_server::SERVICE_NAME, "RotateTenantKey") => Operation::RotateTenantKey,
        (pb::key_service_server::SERVICE_NAME, "RewrapTenantRecords") => Operation::RewrapTenantRecords,
        (pb::key_service_server::SERVICE_NAME, "GetKeyStatus") => Operation::GetKeyStatus,
        (pb::key_service_server::SERVICE_NAME, "RetireKeyVersion") => Operation::RetireKeyVersion,
        (pb::collection_service_server::SERVICE_NAME, "CreateCollection") => Operation::CreateCollection,
        (pb::collection_service_server::SERVICE_NAME, "GetCollection") => Operation::GetCollection,
        (pb::collection_service_server::SERVICE_NAME, "WatchCollections") => Operation::WatchCollections,
        (pb::collection_service_server::SERVICE_NAME, "CancelCollection") => Operation::CancelCollection,
        _ => return None,
    };
    Some(operation)
}

impl VaultContext {
    /// The context over `core` with `limits`.
    pub fn new(core: VaultCore, limits: LimitSettings) -> Self {
        let limits = arc_swap::ArcSwap::from_pointee(limits);
        let tokenize_tasks = Arc::new(tokio::sync::Semaphore::new(TOKENIZE_TASKS));
        let alarms = crate::alarms::default_alarms();
        let (stopping, metrics, audit_sinks) = Default::default();
        Self { core, limits, stopping, metrics, tokenize_tasks, alarms, audit_sinks }
    }

    /// What one caller may cost, now: a call reads it once, at its start.
    pub fn limits(&self) -> Arc<LimitSettings> {
        self.limits.load_full()
    }

    /// Replaces the limits (a reload): calls and connections that start
    /// afterwards get them.
    pub(crate) fn set_limits(&self, limits: LimitSettings) {
        self.limits.store(Arc::new(limits));
    }

    /// The context counting into `metrics` (those its store and key
    /// provider count into, see [`Metrics::metered_store`]).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The principal the leaf of `certs` proves, read as the access policy
    /// in force says, and the leaf's serial.
    fn certified(
        &self,
        certs: Option<&[CertificateDer<'static>]>,
    ) -> Result<(Principal, Option<CertificateSerial>), VaultError> {
        let leaf = certs
            .and_then(|certs| certs.first())
            .ok_or_else(|| VaultError::Unauthenticated("no client certificate: connect with mutual TLS".into()))?;
        certified_caller(leaf.as_ref(), self.core.policy().source())
            .map_err(|error| VaultError::Unauthenticated(format!("unusable client certificate: {error}")))
    }

    /// The principal the leaf of `certs` proves.
    fn principal_of(&self, certs: Option<&[CertificateDer<'static>]>) -> Result<Principal, VaultError> {
        self.certified(certs).map(|(principal, _)| principal)
    }

    /// The caller, now named in `draft` with the call's request id (which
    /// every entry made from `draft` keeps), or a refusal that is itself audited.
    pub async fn authenticate<T>(&self, request: &Request<T>, draft: &mut AuditDraft) -> Result<Principal, Status> {
        self.authenticate_certified(request, draft).await.map(|(caller, _)| caller)
    }

    /// [`VaultContext::authenticate`], also keeping the certificate's serial
    /// for a call that runs long enough to check it again
    /// ([`VaultContext::recheck`]).
    pub async fn authenticate_certified<T>(
        &self,
        request: &Request<T>,
        draft: &mut AuditDraft,
    ) -> Result<(Principal, Option<CertificateSerial>), Status> {
        if let Some(dispatched) = request.extensions().get::<Dispatched>() {
            dispatched.0.store(true, Ordering::Release);
        }
        draft.request_id = request.extensions().get::<RequestId>().cloned();
        match self.certified(request.peer_certs().as_deref().map(Vec::as_slice)) {
            Ok((caller, serial)) => {
                draft.principal = Some(caller.clone());
                // A revoked certificate still names its holder in the refusal's entry.
                if let Err(refused) = self.recheck(&caller, serial.as_ref(), draft.operation) {
                    return Err(self.refuse(draft.clone(), refused).await);
                }
                // A required audit sink that fails or lags: no call until it is back.
                if let Err(refusal) = self.audit_sinks.check() {
                    tracing::debug!(reason = %refusal.detail, "call refused: a required audit sink is down");
                    return Err(self.refuse(draft.clone(), VaultError::Unavailable(refusal.message)).await);
                }
                Ok((caller, serial))
            }
            Err(error) => Err(self.refuse(draft.clone(), error).await),
        }
    }

    /// Whether `caller`, holding the certificate `serial`, is still served:
    /// not revoked, and the chain that would say so still verifies. Every
    /// call checks it at its start, a stream again before each batch or
    /// page it writes, so a revocation also cuts one already running.
    pub fn recheck(
        &self,
        caller: &Principal,
        serial: Option<&CertificateSerial>,
        operation: Operation,
    ) -> Result<(), VaultError> {
        let refused = self.core.check_certificate(caller, serial, operation);
        if let Err(VaultError::Unauthenticated(_)) = &refused {
            self.metrics.revoked_certificate_refused();
            tracing::warn!(principal = %caller, "a call with a revoked client certificate was refused");
        }
        refused
    }

    /// Refuses `count` items of `what` beyond `max` (`limits.<setting>`),
    /// before any of them is parsed.
    pub fn check_count(count: usize, max: usize, what: &str, setting: &str) -> Result<(), VaultError> {
        if count > max {
            return Err(VaultError::InvalidArgument(format!(
                "{count} {what} is more than the {max} this vault accepts in one call (limits.{setting}); split it"
            )));
        }
        Ok(())
    }

    /// Records a refused or failed call, then turns the error into a status.
    pub async fn refuse(&self, draft: AuditDraft, error: VaultError) -> Status {
        let status = status(&error);
        let alert = match &error {
            VaultError::Limit(refusal) => Some((refusal.limit, draft.clone())),
            _ => None,
        };
        self.record_refusal(draft, error.outcome(), &status).await;
        if let Some((limit, draft)) = alert {
            self.raise_limit_alert(limit, draft, status.message()).await;
        }
        status
    }

    /// A call a limit refused is also an alert: an `audit.alert` entry of
    /// the vault's own naming the rule, the caller, tenant and job, a metric
    /// and a warning, like the alarms' (`crate::alarms`).
    async fn raise_limit_alert(&self, limit: Limit, refused: AuditDraft, message: &str) {
        self.metrics.limit_refused(limit);
        let mut alert = AuditDraft::new(Operation::RaiseAlert);
        alert.principal = refused.principal;
        alert.tenant = self.tenant_on_file(alert.principal.as_ref(), refused.tenant);
        alert.job_id = refused.job_id;
        alert.purpose = refused.purpose;
        alert.record_count = refused.record_count;
        alert.reason = format!("{limit}: {message}");
        let rule = limit.id();
        let principal = alert.principal.as_ref().map(|p| p.to_string()).unwrap_or_default();
        tracing::warn!(rule, %principal, reason = %alert.reason, "limit refused a call");
        if let Err(error) = self.core.record(alert).await {
            tracing::error!(rule, %principal, %error, "a limit refused a call but the alert could not be audited");
        }
    }

    /// Appends the compact entry of a refusal: who, what, how it ended and
    /// why; never a payload. It is filed under the tenant it names only when
    /// the caller holds a grant on that tenant, so nobody can fill another
    /// tenant's log by naming it.
    async fn record_refusal(&self, mut draft: AuditDraft, outcome: Outcome, status: &Status) {
        self.metrics.refused(draft.operation, status.code());
        draft.tenant = self.tenant_on_file(draft.principal.as_ref(), draft.tenant.take());
        draft.outcome = outcome;
        draft.reason = status.message().to_owned();
        let operation = draft.operation.id();
        if let Err(audit_error) = self.core.record(draft).await {
            tracing::error!(operation, %audit_error, "could not audit a refused call");
        }
        self.audit_sinks.appended();
        tracing::info!(operation, code = ?status.code(), reason = status.message(), "call refused");
    }

    /// The tenant a refusal of `caller` may be filed under: `tenant`, when
    /// the caller holds a grant on it.
    fn tenant_on_file(&self, caller: Option<&Principal>, tenant: Option<TenantId>) -> Option<TenantId> {
        let tenant = tenant?;
        let granted = caller.is_some_and(|caller| self.core.policy().require(caller, &ANY_ROLE, Some(&tenant)).is_ok());
        granted.then_some(tenant)
    }

    /// Audits a call the transport refused before its handler ran (from the
    /// connection layer, with the caller its certificate names and the
    /// call's request id), and returns the status the client gets instead of
    /// `refused`.
    pub async fn refused_before_handler(
        &self,
        operation: Operation,
        certs: Option<&[CertificateDer<'static>]>,
        request_id: &RequestId,
        refused: &Status,
    ) -> Status {
        let mut draft = AuditDraft::new(operation);
        draft.principal = self.principal_of(certs).ok();
        draft.request_id = Some(request_id.clone());
        self.refused_by_transport(draft, refused).await
    }

    /// Audits a request the transport could not read and returns the status
    /// the client gets instead of `refused`: a message over the size limit
    /// stays `OUT_OF_RANGE`, bytes that are not the request's protobuf
    /// become `INVALID_ARGUMENT`. The entry names the caller and the
    /// operation, never anything the request held.
    pub async fn refused_by_transport(&self, draft: AuditDraft, refused: &Status) -> Status {
        let operation = draft.operation;
        let limit = match operation {
            Operation::Tokenize | Operation::TokenizeStream | Operation::DescribeToken => {
                ("limits.max_record_message_bytes", self.limits().max_record_message_bytes)
            }
            _ => ("limits.max_message_bytes", self.limits().max_message_bytes),
        };
        let status = match refused.code() {
            Code::OutOfRange | Code::ResourceExhausted => Status::out_of_range(format!(
                "the request message is larger than the {} bytes this call accepts ({}); split it",
                limit.1, limit.0
            )),
            // Protobuf that does not decode is the caller's fault, whatever tonic calls it.
            Code::Internal => Status::invalid_argument("the request is not a valid protobuf message for this call"),
            // The transport's text may quote the caller's headers: answer with
            // the code and a fixed sentence, never its text.
            code => Status::new(code, "the request was refused before the vault read it; check the gRPC client"),
        };
        let recorded = if matches!(status.code(), Code::OutOfRange | Code::InvalidArgument) {
            status.clone()
        } else {
            Status::new(status.code(), format!("the transport ended the call ({:?})", status.code()))
        };
        self.record_refusal(draft, Outcome::Invalid, &recorded).await;
        status
    }

    /// For calls that change nothing: appends `draft` when `result` is Ok (the
    /// call fails if that append fails), or the refusal when it is not.
    pub async fn audited<T>(&self, draft: AuditDraft, result: Result<T, VaultError>) -> Result<T, Status> {
        match result {
            Ok(value) => match self.core.record(draft).await {
                Ok(_) => {
                    self.audit_sinks.appended();
                    Ok(value)
                }
                Err(error) => Err(status(&error)),
            },
            Err(error) => Err(self.refuse(draft, error).await),
        }
    }

    /// For calls that append their own entry in their transaction: only a
    /// refusal is appended here.
    pub async fn settled<T>(&self, draft: AuditDraft, result: Result<T, VaultError>) -> Result<T, Status> {
        match result {
            Ok(value) => {
                self.audit_sinks.appended();
                Ok(value)
            }
            Err(error) => Err(self.refuse(draft, error).await),
        }
    }
}

/// Shared handle the services hold.
pub type Context = Arc<VaultContext>;

/// A server stream as the services return it.
pub(crate) type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The sending side of a server stream fed by a task. A client that stops
/// reading holds at most the channel's capacity; once a send has waited
/// `limits.stream_send_timeout_ms`, the task gives up and drops the rest.
pub(crate) struct Feed<T> {
    sender: mpsc::Sender<Result<T, Status>>,
    finished: Arc<AtomicBool>,
    send_timeout: Duration,
}

/// Why a feed stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FeedStopped {
    /// The client went away.
    Gone,
    /// The client stopped reading for the send timeout.
    Stalled,
}

impl<T: Send + 'static> Feed<T> {
    /// A feed with room for `capacity` items, and the stream it feeds. If the
    /// feed is dropped before [`Feed::finish`], the stream ends with a status
    /// saying the answer was cut short, never with a silent `OK`.
    pub(crate) fn new(capacity: usize, send_timeout: Duration) -> (Self, ResponseStream<T>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let finished = Arc::new(AtomicBool::new(false));
        let seen = finished.clone();
        let timeout_ms = send_timeout.as_millis();
        let end = futures::stream::once(async move {
            (!seen.load(Ordering::Acquire)).then(|| {
                Err(Status::deadline_exceeded(format!(
                    "the answer was cut short: the client did not read it for {timeout_ms} ms \
                     (limits.stream_send_timeout_ms)"
                )))
            })
        })
        .filter_map(futures::future::ready);
        let stream = ReceiverStream::new(receiver).chain(end);
        (Self { sender, finished, send_timeout }, Box::pin(stream))
    }

    /// Sends `item`, waiting at most the send timeout for the client to read.
    pub(crate) async fn send(&self, item: Result<T, Status>) -> Result<(), FeedStopped> {
        match tokio::time::timeout(self.send_timeout, self.sender.send(item)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(FeedStopped::Gone),
            Err(_) => Err(FeedStopped::Stalled),
        }
    }

    /// Completes once the client has gone (the stream was dropped).
    pub(crate) async fn closed(&self) {
        self.sender.closed().await
    }

    /// Marks the answer complete: the stream ends after what was sent.
    pub(crate) fn finish(self) {
        self.finished.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// Every method the vault's protobuf services declare names an
    /// operation, and every operation has its method: a refusal by the
    /// transport is audited whichever call it hits.
    #[test]
    fn every_rpc_of_the_vault_maps_to_its_operation() {
        let files = prost_types::FileDescriptorSet::decode(mnvault_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut mapped = Vec::new();
        for file in files.file.iter().filter(|f| f.package() == "mynumber.vault.v1") {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    let operation = operation_of_path(&path).unwrap_or_else(|| panic!("{path} names no operation"));
                    mapped.push(operation.id());
                }
            }
        }
        mapped.sort_unstable();
        // The vault's own entries, not calls.
        let own = [
            Operation::ReloadPrincipals,
            Operation::RotateRootKey,
            Operation::DeleteRecords,
            Operation::RaiseAlert,
            Operation::OpenCollection,
            Operation::SubmitCollection,
            Operation::ExpireCollection,
        ];
        let calls = Operation::ALL.iter().filter(|o| !own.contains(o));
        let mut all: Vec<_> = calls.map(|o| o.id()).collect();
        all.sort_unstable();
        assert_eq!(mapped, all);
        assert_eq!(operation_of_path("/grpc.health.v1.Health/Check"), None);
        assert_eq!(operation_of_path("/mynumber.vault.v1.TokenService/Nothing"), None);
    }
}
