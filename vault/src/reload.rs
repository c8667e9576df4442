//! Reloading the configuration while the vault serves: on SIGHUP
//! ([`crate::lifecycle::Signals`]), when a `[tls]` file changes on disk
//! ([`crate::tls_watch`]), or in-process through a [`Reloader`]
//! ([`crate::startup::Application::reloader`]). All three share one
//! reloader, and so one view of the configuration in force.
//!
//! What a reload changes, for what starts after it:
//! - `[tls]`: the files are read again, even under the same paths: new
//!   connections get the new certificate, key, client CA and revocation
//!   lists; connections already open keep theirs until they close;
//! - `[principals]`: every call checked from then on; a change is recorded in
//!   the audit log as `admin.reload-principals`, naming who was added,
//!   removed or granted differently;
//! - `[limits]`, except the four below: calls and connections that start
//!   afterwards;
//! - `[server]`: the next shutdown's grace period, the next health check.
//! - `[alarms]`: the releases and jobs that follow (what the rules counted
//!   is kept while their windows stay the same).
//!
//! What only a restart changes: `listen`, `dev`, `root_key`, `database`,
//! `limits.max_connections` and `limits.max_large_calls` (the sizes of the
//! vault's semaphores), `limits.max_message_bytes` and
//! `limits.max_record_message_bytes` (set in the services' decoders at
//! start), and any other section. A reload that changes one keeps the
//! running value and logs a warning naming the key.
//!
//! A reload is all or nothing. The new configuration is checked as a start
//! checks it: it must load, its limits and `[server]` must be in range
//! (together with the limits that stay until a restart), its TLS files must
//! be readable and fit, and a production vault's must not come from the dev
//! PKI. If anything fails, nothing changes, and the error, naming the key,
//! is logged at error level.

use std::sync::Arc;

use arc_swap::ArcSwap;
use mnvault_core::audit::{AuditDraft, Operation};
use mnvault_core::authz::{Policy, PrincipalChanges};
use mnvault_core::id::Principal;
use serde::Serialize;
use tokio_rustls::rustls::ServerConfig;

use crate::config::{ConfigError, LimitSettings, Settings};
use crate::datadir::DevError;
use crate::lifecycle::ServerSettings;
use crate::service::Context;
use crate::startup::StartupError;

/// The principal a reload's audit entry names: the vault cannot tell who
/// sent the signal or edited the file.
pub const RELOAD_PRINCIPAL: &str = "mnvault-reload";

/// Limits fixed at start; a reload that changes them warns and keeps them.
pub const RESTART_ONLY_LIMITS: [&str; 4] =
    ["max_connections", "max_large_calls", "max_message_bytes", "max_record_message_bytes"];

/// Sections a reload applies; a change anywhere else needs a restart.
const RELOADED_SECTIONS: [&str; 5] = ["tls", "principals", "limits", "server", "alarms"];

/// Principals named in an audit entry before the rest is only counted.
const NAMED_PRINCIPALS: usize = 20;

/// What the accept loop and the health monitor read afresh each time, and a
/// reload replaces.
pub(crate) struct LiveSettings {
    /// The TLS setup each new connection takes.
    pub(crate) tls: Arc<ArcSwap<ServerConfig>>,
    /// `[server]`.
    pub(crate) server: Arc<ArcSwap<ServerSettings>>,
}

impl LiveSettings {
    pub(crate) fn new(tls: ServerConfig, server: ServerSettings) -> Self {
        Self { tls: Arc::new(ArcSwap::from_pointee(tls)), server: Arc::new(ArcSwap::from_pointee(server)) }
    }
}

/// Why a reload was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The configuration could not be loaded (the message names the key).
    #[error("cannot load the configuration: {0}")]
    Load(#[from] ConfigError),
    /// A value is out of range; the message names its key.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A TLS file cannot be read or used; the message names its key.
    #[error("invalid configuration: {0}")]
    Tls(String),
    /// A production vault was given development material.
    #[error(transparent)]
    Dev(#[from] DevError),
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Principals added, removed or granted differently.
    pub principals: PrincipalChanges,
    /// Limits now in force with new values, e.g. `limits.max_job_tokens`.
    pub limits: Vec<String>,
    /// Keys of `[server]` with new values.
    pub server: Vec<String>,
    /// Keys changed in the configuration that only a restart applies; their
    /// running values are kept.
    pub restart_needed: Vec<String>,
}

/// Where a reload reads the configuration from.
type Source = Arc<dyn Fn() -> Result<Settings, ConfigError> + Send + Sync>;

/// Reloads a running vault's configuration. Cheap to clone; reloads run
/// one at a time.
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
    source: Source,
}

struct Shared {
    ctx: Context,
    live: Arc<LiveSettings>,
    /// The configuration in force; also what keeps reloads one at a time.
    running: tokio::sync::Mutex<Settings>,
}

impl Reloader {
    /// A reloader of the vault that runs `running`, reading its data
    /// directory's configuration (with the process's environment).
    pub(crate) fn new(ctx: Context, live: Arc<LiveSettings>, running: Settings) -> Self {
        let data_dir = running.data_dir.clone();
        let source: Source = Arc::new(move || Settings::load(&data_dir));
        Self { shared: Arc::new(Shared { ctx, live, running: tokio::sync::Mutex::new(running) }), source }
    }

    /// Reads the configuration with `source` instead: the way the vault's
    /// start read it (e.g. `--config`, `--database-url`), so that what the
    /// command line set is not taken for a change.
    pub fn with_source(mut self, source: impl Fn() -> Result<Settings, ConfigError> + Send + Sync + 'static) -> Self {
        self.source = Arc::new(source);
        self
    }

    /// Reads the configuration again and applies it; see the module docs.
    /// The outcome is logged either way.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let loaded = (self.source)().map_err(ReloadError::from);
        match loaded {
            Ok(settings) => self.apply(settings).await,
            Err(error) => {
                tracing::error!(%error, "reload refused; the running configuration is kept");
                Err(error)
            }
        }
    }

    /// The `[tls]` files of the configuration in force
    /// ([`Settings::tls_files`]): what [`crate::tls_watch`] polls.
    pub(crate) async fn tls_files(&self) -> Vec<std::path::PathBuf> {
        self.shared.running.lock().await.tls_files()
    }

    /// Applies `new` as a reload of the configuration would.
    pub async fn apply(&self, new: Settings) -> Result<ReloadReport, ReloadError> {
        let outcome = self.try_apply(new).await;
        match &outcome {
            Ok(report) => report.log(),
            Err(error) => tracing::error!(%error, "reload refused; the running configuration is kept"),
        }
        outcome
    }

    async fn try_apply(&self, new: Settings) -> Result<ReloadReport, ReloadError> {
        let shared = &self.shared;
        let mut running = shared.running.lock().await;
        // Everything is checked before anything changes.
        new.limits.validate().map_err(ReloadError::Invalid)?;
        new.server.validate().map_err(ReloadError::Invalid)?;
        new.alarms.rules().map_err(|(key, reason)| ReloadError::Invalid(format!("{key}: {reason}")))?;
        let mut limits = new.limits.clone();
        keep_restart_only(&mut limits, &running.limits);
        limits.validate().map_err(|problem| {
            ReloadError::Invalid(format!(
                "{problem}, with the values of {} that stay until a restart: restart the vault to apply these limits",
                RESTART_ONLY_LIMITS.map(|key| format!("limits.{key}")).join(", ")
            ))
        })?;
        if !running.dev {
            crate::datadir::check_production(&new)?;
        }
        let tls = crate::startup::server_tls(&new).map_err(|error| tls_problem(&new, error))?;
        // `[identity]` changes only at a restart: the running source stays.
        let policy = Policy::new(&new.principals, shared.ctx.core.policy().source().clone());

        let mut report = ReloadReport { principals: shared.ctx.core.policy().changes(&policy), ..Default::default() };
        let (before, after) = (table(&*running), table(&new));
        for key in changed_keys(&before, &after) {
            match key.as_str() {
                "limits" => {
                    for limit in changed_keys(&section(&before, "limits"), &section(&after, "limits")) {
                        let name = format!("limits.{limit}");
                        if RESTART_ONLY_LIMITS.contains(&limit.as_str()) {
                            report.restart_needed.push(name);
                        } else {
                            report.limits.push(name);
                        }
                    }
                }
                "server" => {
                    let keys = changed_keys(&section(&before, "server"), &section(&after, "server"));
                    report.server = keys.into_iter().map(|key| format!("server.{key}")).collect();
                }
                key if RELOADED_SECTIONS.contains(&key) => {}
                other => report.restart_needed.push(other.to_owned()),
            }
        }

        shared.live.tls.store(Arc::new(tls));
        shared.live.server.store(Arc::new(new.server.clone()));
        shared.ctx.set_limits(limits.clone());
        if running.alarms != new.alarms {
            shared.ctx.set_alarms(&new.alarms);
        }
        if !report.principals.is_empty() {
            shared.ctx.core.set_policy(policy);
            self.record_principal_changes(&report.principals).await;
        }
        running.tls = new.tls;
        running.principals = new.principals;
        running.limits = limits;
        running.server = new.server;
        running.alarms = new.alarms;
        Ok(report)
    }

    /// The audit entry of a principal change. The change is in force even
    /// when the entry cannot be written (a revocation must not wait for the
    /// database); that is logged at error level.
    async fn record_principal_changes(&self, changes: &PrincipalChanges) {
        let mut draft = AuditDraft::new(Operation::ReloadPrincipals);
        draft.principal = Principal::parse(RELOAD_PRINCIPAL).ok();
        draft.reason = describe(changes);
        if let Err(error) = self.shared.ctx.core.record(draft).await {
            tracing::error!(%error, "the principal change of this reload is in force but could not be audited");
        }
    }
}

impl ReloadReport {
    fn log(&self) {
        for key in &self.restart_needed {
            tracing::warn!(key = %key, "changed in the configuration, but only a restart applies it; the running value is kept");
        }
        let principals = &self.principals;
        tracing::info!(
            principals_added = principals.added.len(),
            principals_removed = principals.removed.len(),
            principals_changed = principals.changed.len(),
            limits = %self.limits.join(" "),
            server = %self.server.join(" "),
            "configuration reloaded; TLS files read again"
        );
    }
}

/// Copies the limits only a restart changes from `running` into `new`.
fn keep_restart_only(new: &mut LimitSettings, running: &LimitSettings) {
    new.max_connections = running.max_connections;
    new.max_large_calls = running.max_large_calls;
    new.max_message_bytes = running.max_message_bytes;
    new.max_record_message_bytes = running.max_record_message_bytes;
}

/// A TLS setup problem, naming its key.
fn tls_problem(settings: &Settings, error: StartupError) -> ReloadError {
    ReloadError::Tls(match error {
        StartupError::TlsFile { path, source } => {
            let tls = &settings.tls;
            let keys = [("tls.cert", &tls.cert), ("tls.key", &tls.key), ("tls.client_ca", &tls.client_ca)];
            let key = keys.iter().find(|(_, file)| settings.resolve(file) == path).map_or("tls", |(key, _)| key);
            format!("{key}: cannot read {}: {source}", path.display())
        }
        // These name the key in their text already.
        StartupError::Transport { source, .. } => source.to_string(),
        other => other.to_string(),
    })
}

/// The audit reason of a principal change. Names are shown only when they
/// parse as principals (a grammar that holds no number); others are counted.
fn describe(changes: &PrincipalChanges) -> String {
    let list = |names: &[String]| {
        let shown: Vec<String> = names
            .iter()
            .filter_map(|name| Principal::parse(name).ok())
            .take(NAMED_PRINCIPALS)
            .map(|p| p.to_string())
            .collect();
        match (names.len(), names.len() - shown.len()) {
            (0, _) => "none".to_owned(),
            (_, 0) => shown.join(", "),
            (_, rest) if shown.is_empty() => format!("{rest} not shown"),
            (_, rest) => format!("{} and {rest} more", shown.join(", ")),
        }
    };
    format!(
        "principals reloaded from the configuration: added {}; removed {}; granted differently {}",
        list(&changes.added),
        list(&changes.removed),
        list(&changes.changed)
    )
}

/// `value` as a TOML table, to compare configurations key by key.
fn table(value: &impl Serialize) -> toml::Table {
    toml::Table::try_from(value).unwrap_or_default()
}

/// The table under `key` of `table`.
fn section(table: &toml::Table, key: &str) -> toml::Table {
    table.get(key).and_then(toml::Value::as_table).cloned().unwrap_or_default()
}

/// Keys whose values differ between `before` and `after` (present in one only included), sorted.
fn changed_keys(before: &toml::Table, after: &toml::Table) -> Vec<String> {
    let mut keys: Vec<String> =
        before.keys().chain(after.keys()).filter(|key| before.get(*key) != after.get(*key)).cloned().collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_are_compared_by_value() {
        let before: toml::Table = toml::from_str("a = 1\nb = \"x\"\n[c]\nd = 2").unwrap();
        let after: toml::Table = toml::from_str("a = 1\nb = \"y\"\ne = 3\n[c]\nd = 4").unwrap();
        assert_eq!(changed_keys(&before, &after), ["b", "c", "e"]);
        assert_eq!(changed_keys(&section(&before, "c"), &section(&after, "c")), ["d"]);
    }

    #[test]
    fn the_audit_reason_names_only_principals_that_parse() {
        let changes = PrincipalChanges {
            added: vec!["payroll-2".into(), "11111111111".into()],
            removed: vec![],
            changed: vec!["auditor".into()],
        };
        let reason = describe(&changes);
        assert_eq!(
            reason,
            "principals reloaded from the configuration: added payroll-2 and 1 more; removed none; granted \
             differently auditor"
        );
    }
}
