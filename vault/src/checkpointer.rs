//! `[audit]`: the periodic signed checkpoint, the public key that
//! verification trusts, and (see `audit_sink`) where entries are streamed.
//!
//! With `checkpoint_interval_seconds` set (default 60), `serve` signs the
//! chain head whenever entries were appended since the last checkpoint
//! (`VaultCore::checkpoint_head`), so at most that long of the log is
//! covered by no signature. Releases, approvals and cancellations are
//! signed at once, in their own transaction, whatever this says. Replicas
//! may all run it: one checkpoint per position is stored.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::service::Context;

/// Default seconds between periodic checkpoints.
pub const DEFAULT_CHECKPOINT_INTERVAL_SECONDS: u64 = 60;
/// The longest interval: a day.
pub const MAX_CHECKPOINT_INTERVAL_SECONDS: u64 = 24 * 60 * 60;

/// `[audit]`.
///
/// | key | default | what it does |
/// |---|---|---|
/// | `checkpoint_interval_seconds` | 60 | seconds between periodic signed checkpoints (at most 86400; 0 turns them off, leaving those of releases and on demand) |
/// | `public_key` | none | the vault's signing key (`ed25519:…`, from `mnvault signing-key export`) that `mnvault audit verify` and `audit report` trust; without it they trust the key the database names, and say so |
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// Seconds between periodic checkpoints; 0 turns them off.
    pub checkpoint_interval_seconds: u64,
    /// The pinned public signing key, `ed25519:<base64>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// An interval below a second, set only by code (the tests).
    #[serde(skip)]
    pub interval_override: Option<Duration>,
    /// Where entries are streamed besides the database (`[[audit.sinks]]`);
    /// see [`crate::audit_sink`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<crate::audit_sink::SinkSettings>,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            checkpoint_interval_seconds: DEFAULT_CHECKPOINT_INTERVAL_SECONDS,
            public_key: None,
            interval_override: None,
            sinks: Vec::new(),
        }
    }
}

impl AuditSettings {
    /// Whether nothing differs from the defaults (the section is then left
    /// out of `config check`'s output).
    pub fn is_unset(&self) -> bool {
        self == &Self::default()
    }

    /// The pinned public key, parsed.
    pub fn pinned_public_key(&self) -> Option<mnvault_keys::PublicKey> {
        self.public_key.as_deref().and_then(mnvault_keys::PublicKey::parse)
    }

    /// Every value out of range, as (key, reason).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.checkpoint_interval_seconds > MAX_CHECKPOINT_INTERVAL_SECONDS {
            problems.push((
                "audit.checkpoint_interval_seconds".into(),
                format!("may be at most {MAX_CHECKPOINT_INTERVAL_SECONDS} (a day); 0 turns periodic checkpoints off"),
            ));
        }
        if self.public_key.is_some() && self.pinned_public_key().is_none() {
            problems.push((
                "audit.public_key".into(),
                "is not a public key: copy the line `mnvault signing-key export` prints (ed25519:…)".into(),
            ));
        }
        problems.extend(crate::audit_sink::problems(&self.sinks));
        problems
    }
}

/// The running checkpointer; dropping it stops it.
pub(crate) struct Checkpointer(tokio::task::JoinHandle<()>);

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the periodic checkpoint, unless it is off.
pub(crate) fn spawn(ctx: Context, settings: &AuditSettings) -> Option<Checkpointer> {
    let interval = match (settings.interval_override, settings.checkpoint_interval_seconds) {
        (Some(interval), _) => interval,
        (None, 0) => return None,
        (None, seconds) => Duration::from_secs(seconds),
    };
    Some(Checkpointer(tokio::spawn(async move {
        loop {
            tokio::select! {
                () = ctx.stopping.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            match ctx.core.checkpoint_head().await {
                Ok(Some(checkpoint)) => tracing::debug!(seq = checkpoint.seq, "signed the audit chain head"),
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "could not sign the audit chain head; trying again next interval"),
            }
        }
    })))
}
