//! Metrics: what the vault did, counted per vault, and served as Prometheus
//! text on a listener of its own (`[metrics] listen`, off by default; see
//! [`MetricsSettings`]).
//!
//! Each [`Metrics`] has its own registry, held in the vault's
//! [`VaultContext`](crate::service::VaultContext): vaults that share a
//! process (every end-to-end test starts one) never mix their numbers.
//!
//! No label value ever comes from a caller. A method is one of the vault's
//! fixed operations (its audit id), `health`, `reflection` or `other`; a code
//! is a gRPC code's name; every other label is a fixed word. Tenants,
//! principals, jobs and tokens are never labels.
//!
//! Where each number is counted:
//! - calls, their final code and duration: at the edge, around every request
//!   ([`Metrics::start_call`], from `crate::serve`), the code read from the
//!   answer's trailers when it ends;
//! - records tokenized, numbers released, refusals: in `crate::service`,
//!   where the answers are built and refusals audited;
//! - store errors and audit write failures: by the store the core is given
//!   ([`Metrics::metered_store`]); key-provider errors by its root key
//!   provider ([`Metrics::metered_keys`]);
//! - integrity failures and connection pools: read from the core when
//!   scraped.

mod call;
mod listener;
mod metered;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mnvault_core::audit::Operation;
use mnvault_core::store::{Store, StoreError};
use mnvault_core::VaultCore;
use mnvault_keys::RootKeyProvider;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};
use tonic::Code;

pub use call::CallMeter;
pub use listener::{MetricsListener, MetricsServer};

use crate::service::operation_of_path;

/// `[metrics]` in `mnvault.toml` (or `MNVAULT__METRICS__LISTEN`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Where `GET /metrics` is served over plain HTTP, without
    /// authentication; none (the default) opens no listener. Use a loopback
    /// address unless a firewall keeps others out; a dev vault refuses any
    /// other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

impl MetricsSettings {
    /// Whether the settings say nothing (no metrics listener).
    pub fn is_unset(&self) -> bool {
        self == &Self::default()
    }
}

/// Prefix of every metric name.
const PREFIX: &str = "mnvault";
/// The alert rule of a call with a revoked client certificate.
pub const REVOKED_CERTIFICATE_RULE: &str = "revoked-certificate";

/// A call's method label: an operation, `health`, `reflection` or `other`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

/// A call's method and gRPC code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    code: &'static str,
}

/// A tokenized record: by which method, and whether its token is `new` or
/// was `existing` (the number had been tokenized before).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenizedLabels {
    method: &'static str,
    record: &'static str,
}

/// A store error's kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// A root key provider's operation (`wrap`, `unwrap`, `check`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyOperationLabels {
    operation: &'static str,
}

/// Why the transport dropped a connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// An alarm rule (`mnvault_core::audit::alarm::Rule`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: &'static str,
}

/// A connection pool and the state of its connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
    state: &'static str,
}

/// A pool's name alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolNameLabels {
    pool: &'static str,
}

/// What the transport refused or dropped, as `mnvault_transport_refusals_total`
/// counts it (`reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportRefusal {
    /// The operating system refused to hand over a connection (e.g. out of
    /// file descriptors).
    AcceptFailed,
    /// Every connection slot (`limits.max_connections`) was taken when a
    /// connection arrived.
    ConnectionLimit,
    /// The TLS handshake failed (no or an untrusted client certificate, not TLS).
    TlsHandshakeFailed,
    /// The TLS handshake took longer than `limits.tls_handshake_timeout_ms`.
    TlsHandshakeTimeout,
    /// A connection still in its TLS handshake was dropped to make room.
    EvictedInHandshake,
    /// A closing connection's calls outlived `limits.request_timeout_ms`.
    CallsOutlivedClose,
}

impl TransportRefusal {
    /// Every reason, each counted from 0.
    const ALL: [TransportRefusal; 6] = [
        TransportRefusal::AcceptFailed,
        TransportRefusal::ConnectionLimit,
        TransportRefusal::TlsHandshakeFailed,
        TransportRefusal::TlsHandshakeTimeout,
        TransportRefusal::EvictedInHandshake,
        TransportRefusal::CallsOutlivedClose,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            TransportRefusal::AcceptFailed => "accept_failed",
            TransportRefusal::ConnectionLimit => "connection_limit",
            TransportRefusal::TlsHandshakeFailed => "tls_handshake_failed",
            TransportRefusal::TlsHandshakeTimeout => "tls_handshake_timeout",
            TransportRefusal::EvictedInHandshake => "evicted_in_handshake",
            TransportRefusal::CallsOutlivedClose => "calls_outlived_close",
        }
    }
}

/// The `kind` label of every store error kind, each counted from 0.
const STORE_ERROR_KINDS: [&str; 5] = ["unavailable", "corrupt", "migration", "database", "other"];

/// The `kind` label of a store error.
fn store_error_kind(error: &StoreError) -> &'static str {
    match error {
        StoreError::Unavailable(_) => "unavailable",
        StoreError::Corrupt { .. } => "corrupt",
        StoreError::Migration(_) => "migration",
        StoreError::Database(_) => "database",
        _ => "other",
    }
}

/// The `method` label of a request path: the vault's operation (its audit
/// id, e.g. `token.tokenize`), `health`, `reflection`, or `other` for
/// anything else, so no path a caller makes up becomes a label.
pub fn method_of_path(path: &str) -> &'static str {
    if let Some(operation) = operation_of_path(path) {
        return operation.id();
    }
    let service = path.strip_prefix('/').and_then(|rest| rest.split_once('/')).map(|(service, _)| service);
    match service {
        Some("grpc.health.v1.Health") => "health",
        Some("grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection") => "reflection",
        _ => "other",
    }
}

/// The `code` label: a gRPC code's canonical name.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Buckets of the call duration histogram, in seconds: 1 ms doubling up to
/// about 131 s, beyond the longest `limits.request_timeout_ms` a call gets
/// by default.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

/// One vault's counters, gauges and histograms, in a registry of its own.
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    call_duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    records_tokenized: Family<TokenizedLabels, Counter>,
    numbers_released: Counter,
    refusals: Family<CallLabels, Counter>,
    audit_write_failures: Family<KindLabels, Counter>,
    store_errors: Family<KindLabels, Counter>,
    key_provider_errors: Family<KeyOperationLabels, Counter>,
    connections_open: Gauge,
    transport_refusals: Family<ReasonLabels, Counter>,
    alerts: Family<RuleLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics in a registry of their own. Metrics with fixed labels
    /// start at 0 for every label, so a dashboard shows 0 rather than no data.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let calls = Family::<CallLabels, Counter>::default();
        registry.register("calls", "Calls answered, by method and final gRPC code", calls.clone());
        let call_duration =
            Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "call_duration",
            "Time from a call's arrival to the end of its answer (a stream's last message), by method",
            Unit::Seconds,
            call_duration.clone(),
        );
        let records_tokenized = Family::<TokenizedLabels, Counter>::default();
        registry.register(
            "records_tokenized",
            "Numbers answered with a token, by method and whether the token is new or existing",
            records_tokenized.clone(),
        );
        let numbers_released = Counter::default();
        registry.register(
            "numbers_released",
            "Numbers released by Detokenize (counted and audited, committed before they are sent)",
            numbers_released.clone(),
        );
        let refusals = Family::<CallLabels, Counter>::default();
        registry.register(
            "refusals",
            "Refusals the vault audited, by method and gRPC code: refused calls and refused TokenizeStream records",
            refusals.clone(),
        );
        let audit_write_failures = Family::<KindLabels, Counter>::default();
        registry.register(
            "audit_write_failures",
            "Failed steps of an audit append (chain head, entry, commit), by store error kind",
            audit_write_failures.clone(),
        );
        let store_errors = Family::<KindLabels, Counter>::default();
        registry.register("store_errors", "Errors the database returned, by kind", store_errors.clone());
        let key_provider_errors = Family::<KeyOperationLabels, Counter>::default();
        registry.register(
            "key_provider_errors",
            "Failures of the root key provider, by operation",
            key_provider_errors.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "gRPC connections open, TLS handshakes included",
            connections_open.clone(),
        );
        let transport_refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "transport_refusals",
            "Connections the transport refused or dropped, by reason",
            transport_refusals.clone(),
        );
        let alerts = Family::<RuleLabels, Counter>::default();
        registry.register(
            "alerts",
            "Alerts the alarms and limits raised (each also an audit.alert entry), and calls with a revoked \
             certificate (audited as refusals), by rule",
            alerts.clone(),
        );
        for rule in mnvault_core::audit::alarm::Rule::ALL {
            alerts.get_or_create(&RuleLabels { rule: rule.id() }).get();
        }
        alerts.get_or_create(&RuleLabels { rule: REVOKED_CERTIFICATE_RULE }).get();
        for kind in STORE_ERROR_KINDS {
            store_errors.get_or_create(&KindLabels { kind }).get();
            audit_write_failures.get_or_create(&KindLabels { kind }).get();
        }
        for operation in ["wrap", "unwrap", "check"] {
            key_provider_errors.get_or_create(&KeyOperationLabels { operation }).get();
        }
        for reason in TransportRefusal::ALL {
            transport_refusals.get_or_create(&ReasonLabels { reason: reason.label() }).get();
        }
        Self {
            registry,
            calls,
            call_duration,
            records_tokenized,
            numbers_released,
            refusals,
            audit_write_failures,
            store_errors,
            key_provider_errors,
            connections_open,
            transport_refusals,
            alerts,
        }
    }

    /// Starts measuring a request for `path`; the returned meter records the
    /// call when its answer ends, or as `CANCELLED` if it is dropped first.
    pub fn start_call(self: &Arc<Self>, path: &str) -> CallMeter {
        CallMeter::new(self.clone(), method_of_path(path))
    }

    fn call_ended(&self, method: &'static str, code: Code, took: Duration) {
        self.calls.get_or_create(&CallLabels { method, code: code_name(code) }).inc();
        self.call_duration.get_or_create(&MethodLabels { method }).observe(took.as_secs_f64());
    }

    /// A refusal the vault audited: a refused call of `operation`, or one
    /// refused record of a stream.
    pub fn refused(&self, operation: Operation, code: Code) {
        self.refusals.get_or_create(&CallLabels { method: operation.id(), code: code_name(code) }).inc();
    }

    /// One number answered with a token by `operation`; `created` when the
    /// token is new.
    pub fn record_tokenized(&self, operation: Operation, created: bool) {
        let record = if created { "new" } else { "existing" };
        self.records_tokenized.get_or_create(&TokenizedLabels { method: operation.id(), record }).inc();
    }

    /// `count` numbers released (their release committed and audited).
    pub fn numbers_released(&self, count: usize) {
        self.numbers_released.inc_by(count as u64);
    }

    /// An alert raised by `rule`.
    pub fn alert_raised(&self, rule: mnvault_core::audit::alarm::Rule) {
        self.alerts.get_or_create(&RuleLabels { rule: rule.id() }).inc();
    }

    /// A call refused by a tenant policy's (or a job's) limit: counted under
    /// the alerts, with the limit's identifier as the rule.
    pub fn limit_refused(&self, limit: mnvault_core::tenant_policy::Limit) {
        self.alerts.get_or_create(&RuleLabels { rule: limit.id() }).inc();
    }

    /// A call refused because its client certificate was revoked: counted
    /// with the alerts, as `rule="revoked-certificate"`.
    pub fn revoked_certificate_refused(&self) {
        self.alerts.get_or_create(&RuleLabels { rule: REVOKED_CERTIFICATE_RULE }).inc();
    }

    /// Counts a connection open until the returned guard is dropped.
    pub fn connection_opened(&self) -> OpenConnection {
        self.connections_open.inc();
        OpenConnection(self.connections_open.clone())
    }

    /// A connection the transport refused or dropped.
    pub fn transport_refused(&self, reason: TransportRefusal) {
        self.transport_refusals.get_or_create(&ReasonLabels { reason: reason.label() }).inc();
    }

    fn store_failed(&self, error: &StoreError) {
        self.store_errors.get_or_create(&KindLabels { kind: store_error_kind(error) }).inc();
    }

    fn audit_write_failed(&self, error: &StoreError) {
        self.audit_write_failures.get_or_create(&KindLabels { kind: store_error_kind(error) }).inc();
    }

    fn key_provider_failed(&self, operation: &'static str) {
        self.key_provider_errors.get_or_create(&KeyOperationLabels { operation }).inc();
    }

    /// `store`, counting its errors and failed audit writes here.
    pub fn metered_store(self: &Arc<Self>, store: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(metered::MeteredStore::new(store, self.clone()))
    }

    /// `provider`, counting its failures here.
    pub fn metered_keys(self: &Arc<Self>, provider: Arc<dyn RootKeyProvider>) -> Arc<dyn RootKeyProvider> {
        Arc::new(metered::MeteredKeys::new(provider, self.clone()))
    }

    /// Everything, as OpenMetrics text (which Prometheus reads): the
    /// counters kept here, then what `core` knows now (integrity failures,
    /// the store's connection pools).
    pub fn render(&self, core: &VaultCore) -> Result<String, std::fmt::Error> {
        let mut observed = Registry::with_prefix(PREFIX);
        observed.register(
            "integrity_failures",
            "Stored objects that failed their integrity check since start",
            ConstCounter::new(core.integrity_failures()),
        );
        let chain_broken = Gauge::<i64>::default();
        chain_broken.set(i64::from(core.chain_broken()));
        observed.register(
            "audit_chain_broken",
            "1 once this replica found the audit chain broken: it then serves auditors of every tenant only",
            chain_broken,
        );
        let connections = Family::<PoolLabels, Gauge>::default();
        let max_connections = Family::<PoolNameLabels, Gauge>::default();
        for usage in core.store().pools() {
            let in_use = usage.open.saturating_sub(usage.idle);
            connections.get_or_create(&PoolLabels { pool: usage.pool, state: "idle" }).set(usage.idle.into());
            connections.get_or_create(&PoolLabels { pool: usage.pool, state: "in_use" }).set(in_use.into());
            max_connections.get_or_create(&PoolNameLabels { pool: usage.pool }).set(usage.max.into());
        }
        observed.register("db_pool_connections", "Database connections open, by pool and state", connections);
        observed.register("db_pool_max_connections", "The most database connections each pool opens", max_connections);
        let mut text = String::new();
        encode_registry(&mut text, &self.registry)?;
        encode_registry(&mut text, &observed)?;
        encode_eof(&mut text)?;
        Ok(text)
    }
}

/// A connection counted in `mnvault_connections_open` until dropped.
#[derive(Debug)]
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_fixed_words_whatever_the_path() {
        assert_eq!(method_of_path("/mynumber.vault.v1.TokenService/Tokenize"), "token.tokenize");
        assert_eq!(method_of_path("/mynumber.vault.v1.FilingService/Detokenize"), "filing.detokenize");
        assert_eq!(method_of_path("/grpc.health.v1.Health/Check"), "health");
        assert_eq!(method_of_path("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"), "reflection");
        for made_up in ["/mynumber.vault.v1.TokenService/123456789018", "/123456789018/x", "", "/", "metrics"] {
            assert_eq!(method_of_path(made_up), "other", "{made_up}");
        }
    }

    #[test]
    fn every_code_has_its_canonical_name() {
        let names: Vec<_> = (0..17).map(|code| code_name(Code::from_i32(code))).collect();
        assert_eq!(names[0], "OK");
        assert_eq!(names[16], "UNAUTHENTICATED");
        let mut distinct = names.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 17);
        assert!(names.iter().all(|name| name.chars().all(|c| c.is_ascii_uppercase() || c == '_')));
    }

    #[test]
    fn settings_are_off_unless_an_address_is_written() {
        let off: MetricsSettings = toml::from_str("").unwrap();
        assert!(off.is_unset());
        let on: MetricsSettings = toml::from_str("listen = \"127.0.0.1:9464\"").unwrap();
        assert_eq!(on.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(toml::from_str::<MetricsSettings>("port = 9464").is_err());
    }
}
