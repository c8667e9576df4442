//! What the vault's health service (`grpc.health.v1.Health`) reports, and
//! the monitor that keeps it true.
//!
//! Every vault service (`mynumber.vault.v1.TokenService`, `FilingService`,
//! `AdminService`, `AuditService`) and the whole vault (`""`) are reported
//! together: each needs the database (every call is audited there) and the
//! root key provider. They are SERVING while both answer, NOT_SERVING while
//! either does not, checked every `server.health_check_interval_ms`:
//!
//! - the database answers [`Store::ping`] within `database.write_timeout_ms`,
//!   on a connection of the check's own (busy pools are load, not an outage);
//! - the root key provider answers [`RootKeyProvider::check`] within the
//!   interval. A key file is read once at start and held in memory, so it
//!   cannot become unreachable; an HSM (PKCS#11) provider asks its device.
//!
//! A required audit sink that fails or lags (`[[audit.sinks]]`,
//! [`crate::audit_sink`]) makes them NOT_SERVING too, since calls are
//! refused meanwhile.
//!
//! Readiness: the vault starts accepting connections only once migrations
//! ran, the audit key was unwrapped and a first check passed; until then
//! (and while checks fail) every status is NOT_SERVING. A change is logged
//! once, at warn when the vault stops serving and at info when it serves
//! again, never on every failed check. When the vault shuts down, every
//! status goes NOT_SERVING for good, then is withdrawn, so `Watch` streams
//! see NOT_SERVING and end instead of holding the shutdown.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use mnvault_core::store::Store;
use mnvault_keys::RootKeyProvider;
use mnvault_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::lifecycle::ServerSettings;
use crate::reload::LiveSettings;
use crate::service::Context;

/// The names the health service reports: the whole vault, then each service.
pub const REPORTED_SERVICES: [&str; 6] = [
    "",
    pb::token_service_server::SERVICE_NAME,
    pb::filing_service_server::SERVICE_NAME,
    pb::admin_service_server::SERVICE_NAME,
    pb::audit_service_server::SERVICE_NAME,
    pb::key_service_server::SERVICE_NAME,
];

/// The health of one run of the vault: its statuses and their monitor.
pub(crate) struct HealthWatch {
    health: Arc<Health>,
    stopping: CancellationToken,
    server: Arc<ArcSwap<ServerSettings>>,
    monitor: tokio::task::JoinHandle<()>,
}

/// Sets every status `reporter` serves from a first check, then keeps them
/// up to date until the vault stops.
pub(crate) async fn watch(reporter: HealthReporter, ctx: &Context, live: &LiveSettings) -> HealthWatch {
    let health = Arc::new(Health::new(reporter).await);
    let (store, provider) = (ctx.core.store().clone(), ctx.core.root_key_provider().clone());
    let monitor = Monitor::new(health.clone(), store, provider, live.server.clone());
    let monitor = Monitor { audit_sinks: ctx.audit_sinks.clone(), vault: Some(ctx.clone()), ..monitor };
    monitor.check_now().await;
    let monitor = tokio::spawn(monitor.run(ctx.stopping.clone()));
    HealthWatch { health, stopping: ctx.stopping.clone(), server: live.server.clone(), monitor }
}

impl HealthWatch {
    /// Completes after `shutdown` does, once every status says NOT_SERVING
    /// and calls in flight were told the vault is stopping, with the grace
    /// period they have (`server.shutdown_grace_ms` as it is then).
    pub(crate) fn stop_after(
        &self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> impl Future<Output = Duration> + Send {
        let (health, stopping, server) = (self.health.clone(), self.stopping.clone(), self.server.clone());
        async move {
            shutdown.await;
            health.drain().await;
            tracing::info!("shutting down: health NOT_SERVING");
            stopping.cancel();
            server.load().shutdown_grace()
        }
    }

    /// Waits for the monitor, which ends once the vault is stopping.
    pub(crate) async fn stopped(self) {
        let _ = self.monitor.await;
    }
}

/// The statuses the health service reports, and how they last changed.
pub(crate) struct Health {
    reporter: HealthReporter,
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The last check's verdict; `None` before the first.
    serving: Option<bool>,
    /// Shutting down: NOT_SERVING whatever the checks say.
    draining: bool,
}

impl Health {
    /// Every status NOT_SERVING until a check says otherwise.
    pub(crate) async fn new(reporter: HealthReporter) -> Self {
        for service in REPORTED_SERVICES {
            reporter.set_service_status(service, ServingStatus::NotServing).await;
        }
        Self { reporter, state: tokio::sync::Mutex::new(State::default()) }
    }

    /// Reports a check's outcome (`Err`: what does not answer), logging a
    /// change of verdict once.
    async fn publish(&self, outcome: Result<(), String>) {
        let mut state = self.state.lock().await;
        if state.draining {
            return;
        }
        let serving = outcome.is_ok();
        if state.serving == Some(serving) {
            if let Err(reason) = &outcome {
                tracing::debug!(%reason, "health check failed again; still NOT_SERVING");
            }
            return;
        }
        match (&outcome, state.serving) {
            (Ok(()), None) => tracing::info!("health: SERVING"),
            (Ok(()), Some(_)) => {
                tracing::info!("health: SERVING again: the database and the root key provider answer")
            }
            (Err(reason), _) => tracing::warn!(%reason, "health: NOT_SERVING until the check passes"),
        }
        state.serving = Some(serving);
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        for service in REPORTED_SERVICES {
            self.reporter.set_service_status(service, status).await;
        }
    }

    /// Shutting down: NOT_SERVING for good, then every status withdrawn,
    /// which ends the `Watch` streams after they sent NOT_SERVING.
    pub(crate) async fn drain(&self) {
        let mut state = self.state.lock().await;
        state.draining = true;
        for service in REPORTED_SERVICES {
            self.reporter.set_service_status(service, ServingStatus::NotServing).await;
        }
        let mut reporter = self.reporter.clone();
        for service in REPORTED_SERVICES {
            reporter.clear_service_status(service).await;
        }
    }
}

/// Checks the database and the root key provider every
/// `server.health_check_interval_ms` and reports the outcome.
pub(crate) struct Monitor {
    health: Arc<Health>,
    store: Arc<dyn Store>,
    provider: Arc<dyn RootKeyProvider>,
    server: Arc<ArcSwap<ServerSettings>>,
    /// A provider check still running (it blocks a thread): no second one is started.
    provider_busy: Arc<AtomicBool>,
    /// A required audit sink that fails or lags is reported too
    /// ([`crate::audit_sink`]): calls are refused meanwhile.
    audit_sinks: crate::audit_sink::SinkGate,
    /// The vault served, when its audit chain is to be reported too: a
    /// replica that found it broken serves auditors only, so a load
    /// balancer should send everyone else elsewhere.
    vault: Option<Context>,
}

impl Monitor {
    /// A monitor reporting into `health`.
    pub(crate) fn new(
        health: Arc<Health>,
        store: Arc<dyn Store>,
        provider: Arc<dyn RootKeyProvider>,
        server: Arc<ArcSwap<ServerSettings>>,
    ) -> Self {
        let (provider_busy, audit_sinks) = (Arc::new(AtomicBool::new(false)), Default::default());
        Self { health, store, provider, server, provider_busy, audit_sinks, vault: None }
    }

    /// Checks once and reports the outcome.
    pub(crate) async fn check_now(&self) {
        let (store, keys) = tokio::join!(self.check_store(), self.check_provider());
        let outcome = match (store, keys) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(store), Err(keys)) => Err(format!("{store}; {keys}")),
            (Err(reason), Ok(())) | (Ok(()), Err(reason)) => Err(reason),
        };
        let outcome = outcome.and_then(|()| self.audit_sinks.check().map_err(|refusal| refusal.detail));
        let outcome = outcome.and_then(|()| match &self.vault {
            Some(vault) if vault.core.chain_broken() => {
                Err("the audit chain does not verify: only auditors of every tenant are served".to_owned())
            }
            _ => Ok(()),
        });
        self.health.publish(outcome).await;
    }

    /// Checks every interval (read afresh each time: a reload may change
    /// it) until `stopping` is cancelled.
    pub(crate) async fn run(self, stopping: CancellationToken) {
        loop {
            let interval = self.server.load().health_check_interval();
            tokio::select! {
                () = stopping.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            self.check_now().await;
        }
    }

    async fn check_store(&self) -> Result<(), String> {
        self.store.ping().await.map_err(|error| format!("the database does not answer: {error}"))
    }

    /// The provider's check runs on a blocking thread (a device may block),
    /// bounded by the interval.
    async fn check_provider(&self) -> Result<(), String> {
        /// Clears the busy flag when the check returns, or panics.
        struct Busy(Arc<AtomicBool>);
        impl Drop for Busy {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        if self.provider_busy.swap(true, Ordering::AcqRel) {
            return Err("the root key provider has not answered the previous check yet".into());
        }
        let (provider, busy) = (self.provider.clone(), Busy(self.provider_busy.clone()));
        let check = tokio::task::spawn_blocking(move || {
            let _busy = busy;
            provider.check()
        });
        let interval = self.server.load().health_check_interval();
        match tokio::time::timeout(interval, check).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => Err(format!("the root key provider does not answer: {error}")),
            Ok(Err(_)) => Err("the check of the root key provider failed (see the log)".into()),
            Err(_) => Err(format!(
                "the root key provider did not answer within {} ms (server.health_check_interval_ms)",
                interval.as_millis()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use mnvault_keys::{KeyError, KeyMaterial, WrapContext, WrappedKey};
    use tonic_health::pb::health_server::Health as _;
    use tonic_health::pb::HealthCheckRequest;

    use super::*;
    use crate::store::{OpenMode, SqliteStore};

    /// A provider whose device can be unplugged.
    struct Unpluggable {
        unplugged: AtomicBool,
    }

    impl RootKeyProvider for Unpluggable {
        fn describe(&self) -> String {
            "test device".into()
        }
        fn wrap(&self, _: &KeyMaterial, _: &WrapContext<'_>) -> Result<WrappedKey, KeyError> {
            Err(KeyError::EncryptionFailed)
        }
        fn unwrap(&self, _: &WrappedKey, _: &WrapContext<'_>) -> Result<KeyMaterial, KeyError> {
            Err(KeyError::UnwrapFailed)
        }
        fn check(&self) -> Result<(), KeyError> {
            if self.unplugged.load(Ordering::Acquire) {
                return Err(KeyError::ProviderUnreachable { provider: self.describe() });
            }
            Ok(())
        }
    }

    async fn statuses(service: &impl tonic_health::pb::health_server::Health) -> Vec<i32> {
        let mut statuses = Vec::new();
        for name in REPORTED_SERVICES {
            let request = tonic::Request::new(HealthCheckRequest { service: name.into() });
            statuses.push(service.check(request).await.unwrap().into_inner().status);
        }
        statuses
    }

    #[tokio::test]
    async fn every_service_follows_the_root_key_provider_and_a_drain_is_final() {
        use tonic_health::pb::health_check_response::ServingStatus as Wire;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.db");
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&path, OpenMode::Initialise, Duration::from_secs(5)).await.unwrap());
        let provider = Arc::new(Unpluggable { unplugged: AtomicBool::new(false) });
        let reporter = HealthReporter::new();
        let service = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        let health = Arc::new(Health::new(reporter).await);
        let server = Arc::new(ArcSwap::from_pointee(ServerSettings::default()));
        let monitor = Monitor::new(health.clone(), store, provider.clone(), server);
        let all = |status: Wire| vec![status as i32; REPORTED_SERVICES.len()];
        assert_eq!(statuses(&service).await, all(Wire::NotServing), "nothing serves before the first check");

        monitor.check_now().await;
        assert_eq!(statuses(&service).await, all(Wire::Serving));
        provider.unplugged.store(true, Ordering::Release);
        monitor.check_now().await;
        assert_eq!(statuses(&service).await, all(Wire::NotServing));
        provider.unplugged.store(false, Ordering::Release);
        monitor.check_now().await;
        assert_eq!(statuses(&service).await, all(Wire::Serving));

        health.drain().await;
        monitor.check_now().await;
        let request = tonic::Request::new(HealthCheckRequest { service: String::new() });
        let after = service.check(request).await.expect_err("a drained vault withdraws its statuses");
        assert_eq!(after.code(), tonic::Code::NotFound);
    }
}
