//! The vault as a process: what `[server]` sets, and the signals `mnvault
//! serve` answers.
//!
//! - **SIGTERM** (and SIGINT, Ctrl-C) stops the vault gracefully, in this
//!   order: the health service reports NOT_SERVING for every service
//!   ([`crate::health`]); the listener closes, so no connection is accepted;
//!   every connection is asked to close (HTTP/2 GOAWAY: no new call on it);
//!   a `TokenizeStream` finishes the batch it holds, sends its tokens and
//!   ends with `UNAVAILABLE`, naming the first record it did not read; other
//!   calls run to their end. Calls still running
//!   `server.shutdown_grace_ms` after the signal are dropped; nothing was
//!   acknowledged that was not committed. Then the database is closed: a
//!   transaction under way (a unary `Tokenize`'s group commit runs in a task
//!   of its own, past its call) finishes first, one not yet begun fails
//!   unanswered, so shutdown may outlast the grace by one write timeout.
//!   The process exits 0.
//! - **SIGHUP** reloads what can change while the vault serves (TLS files,
//!   principals, most limits, `[server]`); see [`crate::reload`].

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::reload::Reloader;

/// `[server]`: how the process stops and how often it checks its health.
/// Both may change on a reload.
///
/// | key | default | what it sets |
/// |---|---|---|
/// | `shutdown_grace_ms` | 30000 | how long calls in flight may run after SIGTERM before they are dropped (keep systemd's `TimeoutStopSec` and Kubernetes' `terminationGracePeriodSeconds` above it) |
/// | `health_check_interval_ms` | 5000 | how often the database and the root key provider are checked for the health service |
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// How long calls in flight may run after SIGTERM.
    pub shutdown_grace_ms: u64,
    /// How often the database and the root key provider are checked.
    pub health_check_interval_ms: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self { shutdown_grace_ms: 30_000, health_check_interval_ms: 5_000 }
    }
}

impl ServerSettings {
    /// Refuses zero values, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("shutdown_grace_ms", self.shutdown_grace_ms),
            ("health_check_interval_ms", self.health_check_interval_ms),
        ];
        match positive.iter().find(|(_, value)| *value == 0) {
            Some((name, _)) => Err(format!("server.{name} must be greater than 0")),
            None => Ok(()),
        }
    }

    /// The shutdown grace period.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// The interval between health checks.
    pub fn health_check_interval(&self) -> Duration {
        Duration::from_millis(self.health_check_interval_ms)
    }
}

/// The signals `mnvault serve` answers, taken over from their default
/// actions (which end the process at once) as soon as they are installed.
pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    /// Installs the handlers. Do it before the vault is reachable, so that a
    /// SIGHUP sent to a vault that just came up reloads it instead of
    /// killing it.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Completes on SIGTERM or SIGINT; reloads `reloader` on every SIGHUP
    /// until then. Give it to [`crate::startup::Application::run_until_stopped`].
    pub async fn until_terminated(mut self, reloader: Reloader) {
        loop {
            tokio::select! {
                _ = self.terminate.recv() => {
                    tracing::info!("SIGTERM: shutting down");
                    return;
                }
                _ = self.interrupt.recv() => {
                    tracing::info!("SIGINT: shutting down");
                    return;
                }
                _ = self.hangup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    // The outcome is logged by the reload, success or refusal.
                    let _ = reloader.reload().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_hold_and_zero_values_are_refused_by_name() {
        let settings = ServerSettings::default();
        assert_eq!((settings.shutdown_grace_ms, settings.health_check_interval_ms), (30_000, 5_000));
        assert!(settings.validate().is_ok());
        let zero_grace = ServerSettings { shutdown_grace_ms: 0, ..ServerSettings::default() };
        assert_eq!(zero_grace.validate().unwrap_err(), "server.shutdown_grace_ms must be greater than 0");
        let zero_interval = ServerSettings { health_check_interval_ms: 0, ..ServerSettings::default() };
        assert!(zero_interval.validate().unwrap_err().contains("server.health_check_interval_ms"));
    }

    #[test]
    fn an_empty_section_takes_the_defaults_and_unknown_keys_are_refused() {
        let empty: ServerSettings = toml::from_str("").unwrap();
        assert_eq!(empty, ServerSettings::default());
        let grace: ServerSettings = toml::from_str("shutdown_grace_ms = 1500").unwrap();
        assert_eq!(grace.shutdown_grace(), Duration::from_millis(1500));
        assert!(toml::from_str::<ServerSettings>("shutdown_grace = 1").is_err());
    }
}
