//! Typed configuration: `<data-dir>/mnvault.toml`, overridden by environment
//! variables `MNVAULT__<SECTION>__<KEY>` (e.g. `MNVAULT__LISTEN=127.0.0.1:0`,
//! `MNVAULT__DATABASE__URL=postgres://vault@db/mnvault`). Relative paths are
//! relative to the data directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use mnvault_core::authz::PrincipalSettings;

use crate::store::DatabaseLocation;

/// Name of the configuration file inside the data directory.
pub const CONFIG_FILE: &str = "mnvault.toml";

/// Everything `mnvault serve` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on. A dev vault accepts only loopback addresses.
    pub listen: SocketAddr,
    /// A development setup (dev PKI, loopback only). Decided when the data
    /// directory is made: a directory marked for development
    /// ([`crate::datadir::DEV_MARKER_FILE`]) is dev whatever the file says,
    /// and no environment variable may set it.
    #[serde(default)]
    pub dev: bool,
    /// Where the root key lives.
    pub root_key: RootKeySettings,
    /// The database.
    #[serde(default)]
    pub database: DatabaseSettings,
    /// Server certificate and the CA that signs client certificates.
    pub tls: TlsSettings,
    /// Who may do what: client-certificate common name to its grant.
    #[serde(default)]
    pub principals: BTreeMap<String, PrincipalSettings>,
    /// What one caller may cost the vault; see [`LimitSettings`].
    #[serde(default)]
    pub limits: LimitSettings,
    /// The data directory this was loaded from (not part of the file).
    #[serde(skip)]
    pub data_dir: PathBuf,
}

/// The root key provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootKeySettings {
    /// Path of the root key file (mode 0600, outside the database).
    pub file: PathBuf,
}

/// The database: SQLite (embedded default) or PostgreSQL (several replicas).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// A SQLite file (path, relative to the data directory) or a
    /// `postgres://` URL.
    #[serde(default = "default_database_url", alias = "sqlite_file")]
    pub url: String,
    /// How long a write may wait for the database before the call fails.
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self { url: default_database_url(), write_timeout_ms: default_write_timeout_ms() }
    }
}

fn default_database_url() -> String {
    crate::store::DATABASE_FILE.to_owned()
}

fn default_write_timeout_ms() -> u64 {
    5_000
}

impl DatabaseSettings {
    /// The write timeout as a duration.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
}

/// PEM files for mutual TLS.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The vault's certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// CA whose client certificates are accepted.
    pub client_ca: PathBuf,
}

/// What one caller may cost the vault: request sizes, streams, connections
/// and how long each may wait. Every limit is checked before anything is
/// written; a refused call leaves one compact audit entry (counts, never the
/// payload). `[limits]` in `mnvault.toml`, or `MNVAULT__LIMITS__<KEY>`.
///
/// | key | default | what it bounds |
/// |---|---|---|
/// | `max_job_tokens` | 100000 | tokens one `CreateFilingJob` or `Detokenize` may list (at most the core's `MAX_JOB_TOKENS`) |
/// | `max_stream_records` | 1000000 | records one `TokenizeStream` may carry; the stream then ends with `INVALID_ARGUMENT` |
/// | `stream_batch_records` | 2000 | records of a stream tokenized in one transaction (one audit entry) |
/// | `max_message_bytes` | 8388608 (8 MiB) | one request or response message of `FilingService`, `AuditService`, `AdminService`; larger is `OUT_OF_RANGE` |
/// | `max_record_message_bytes` | 4096 | one request message of `TokenService` (one record), health and reflection |
/// | `max_concurrent_streams` | 100 | calls open at once on one HTTP/2 connection |
/// | `max_connections` | 512 | connections at once, TLS handshakes included; keep it below the process's file limit |
/// | `tls_handshake_timeout_ms` | 10000 | time from accept to a finished TLS handshake; when the vault is full, the oldest unfinished handshake is dropped first |
/// | `keepalive_interval_ms` | 60000 | HTTP/2 ping interval |
/// | `keepalive_timeout_ms` | 20000 | a ping unanswered this long closes the connection |
/// | `idle_timeout_ms` | 300000 | a connection that starts no call this long is closed (gracefully, with GOAWAY, if it ever carried a call); also the longest a `TokenizeStream` waits for its next record |
/// | `request_timeout_ms` | 120000 | a call not received in full and answered (its first message, for a stream) by then is refused with `DEADLINE_EXCEEDED`; also how long a connection asked to close keeps its calls before it is dropped |
/// | `max_large_calls` | 16 | calls of the filing, audit and admin services received at once across all connections (others wait, within `request_timeout_ms`) |
/// | `stream_send_timeout_ms` | 60000 | how long a streamed answer (`Detokenize`, `TokenizeStream`) waits for a client that stopped reading before the rest is dropped |
/// | `audit_page_entries` | 1000 | entries one `ListAuditEntries` page holds at most (also bounded by `max_message_bytes`) |
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Tokens one `CreateFilingJob` or `Detokenize` may list.
    pub max_job_tokens: usize,
    /// Records one `TokenizeStream` may carry.
    pub max_stream_records: u64,
    /// Records of a stream tokenized in one transaction.
    pub stream_batch_records: usize,
    /// Largest request or response message of the filing, audit and admin services.
    pub max_message_bytes: usize,
    /// Largest request message of the token service (one record), health and reflection.
    pub max_record_message_bytes: usize,
    /// Calls open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Connections at once, TLS handshakes included.
    pub max_connections: usize,
    /// Time from accept to a finished TLS handshake.
    pub tls_handshake_timeout_ms: u64,
    /// HTTP/2 ping interval.
    pub keepalive_interval_ms: u64,
    /// How long a ping may go unanswered.
    pub keepalive_timeout_ms: u64,
    /// How long a connection may start no call, and a stream wait for its next record.
    pub idle_timeout_ms: u64,
    /// How long a streamed answer waits for a client that stopped reading.
    pub stream_send_timeout_ms: u64,
    /// How long a call may take to be received and answered (for a
    /// streamed answer: until its first message), and how long a connection
    /// asked to close may keep its calls.
    pub request_timeout_ms: u64,
    /// Calls of the filing, audit and admin services (messages up to
    /// `max_message_bytes`) being received at once, across all connections.
    pub max_large_calls: usize,
    /// Entries one audit listing page holds at most.
    pub audit_page_entries: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_job_tokens: mnvault_core::job::MAX_JOB_TOKENS,
            max_stream_records: 1_000_000,
            stream_batch_records: 2_000,
            max_message_bytes: 8 * 1024 * 1024,
            max_record_message_bytes: 4 * 1024,
            max_concurrent_streams: 100,
            max_connections: 512,
            tls_handshake_timeout_ms: 10_000,
            keepalive_interval_ms: 60_000,
            keepalive_timeout_ms: 20_000,
            idle_timeout_ms: 300_000,
            stream_send_timeout_ms: 60_000,
            request_timeout_ms: 120_000,
            max_large_calls: 16,
            audit_page_entries: mnvault_core::vault::AUDIT_PAGE,
        }
    }
}

/// Wire bytes one listed token may take in a message (a token, its framing
/// and, in a job, its release count), with room to spare.
pub const TOKEN_WIRE_BYTES: usize = 48;

impl LimitSettings {
    /// Refuses limits that are zero, beyond the core's, or that would not let
    /// a job of `max_job_tokens` tokens through `max_message_bytes`.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_job_tokens", self.max_job_tokens as u64),
            ("max_stream_records", self.max_stream_records),
            ("stream_batch_records", self.stream_batch_records as u64),
            ("max_message_bytes", self.max_message_bytes as u64),
            ("max_record_message_bytes", self.max_record_message_bytes as u64),
            ("max_concurrent_streams", u64::from(self.max_concurrent_streams)),
            ("max_connections", self.max_connections as u64),
            ("tls_handshake_timeout_ms", self.tls_handshake_timeout_ms),
            ("keepalive_interval_ms", self.keepalive_interval_ms),
            ("keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("stream_send_timeout_ms", self.stream_send_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("max_large_calls", self.max_large_calls as u64),
            ("audit_page_entries", u64::from(self.audit_page_entries)),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("limits.{name} must be greater than 0"));
        }
        let core_max = mnvault_core::job::MAX_JOB_TOKENS;
        if self.max_job_tokens > core_max {
            return Err(format!("limits.max_job_tokens may be at most {core_max}"));
        }
        if self.audit_page_entries > mnvault_core::vault::AUDIT_PAGE {
            return Err(format!("limits.audit_page_entries may be at most {}", mnvault_core::vault::AUDIT_PAGE));
        }
        let needed = self.max_job_tokens.saturating_mul(TOKEN_WIRE_BYTES).saturating_add(64 * 1024);
        if self.max_message_bytes < needed {
            return Err(format!(
                "limits.max_message_bytes must be at least {needed} so a job of limits.max_job_tokens tokens fits"
            ));
        }
        Ok(())
    }

    /// The TLS handshake timeout.
    pub fn tls_handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.tls_handshake_timeout_ms)
    }

    /// The HTTP/2 keepalive ping interval.
    pub fn keepalive_interval(&self) -> Duration {
        Duration::from_millis(self.keepalive_interval_ms)
    }

    /// How long a keepalive ping may go unanswered.
    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_millis(self.keepalive_timeout_ms)
    }

    /// The idle timeout of connections and of a stream's input.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// How long a call may take to arrive and be answered.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// How long a streamed answer waits for its reader.
    pub fn stream_send_timeout(&self) -> Duration {
        Duration::from_millis(self.stream_send_timeout_ms)
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file is missing, unreadable or invalid, or an override is invalid.
    #[error("cannot load {path}: {source}")]
    Load {
        /// The configuration file.
        path: PathBuf,
        /// Why.
        source: config::ConfigError,
    },
    /// The configuration could not be written.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The configuration file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `MNVAULT__DEV` is set: whether a vault is a dev vault is not the
    /// environment's to decide.
    #[error(
        "{DEV_VARIABLE} is set, but whether a vault is a dev vault is recorded in its data directory, not \
         chosen by the environment: unset it (a dev vault is started with `mnvault serve --dev`, a production \
         one is initialised with `mnvault init`)"
    )]
    DevOverride,
}

/// The environment variable that would override `dev`, refused by [`Settings::load`].
const DEV_VARIABLE: &str = "MNVAULT__DEV";

impl Settings {
    /// Loads `<data_dir>/mnvault.toml` with the process's environment overrides.
    pub fn load(data_dir: &Path) -> Result<Self, ConfigError> {
        let environment =
            std::env::vars_os().filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)));
        Self::load_with_environment(data_dir, environment)
    }

    /// Loads `<data_dir>/mnvault.toml` with overrides from `environment`
    /// (variable name, value), as [`Settings::load`] does with the process's.
    /// `MNVAULT__DEV` is refused, and a directory marked for development is
    /// dev whatever the file says.
    pub fn load_with_environment(
        data_dir: &Path,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let environment: config::Map<String, String> = environment.into_iter().collect();
        // config matches names without regard to case, and so does this.
        if environment.keys().any(|key| key.eq_ignore_ascii_case(DEV_VARIABLE)) {
            return Err(ConfigError::DevOverride);
        }
        let path = data_dir.join(CONFIG_FILE);
        let load = |source| ConfigError::Load { path: path.clone(), source };
        let mut settings: Settings = config::Config::builder()
            .add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("MNVAULT")
                    .prefix_separator("__")
                    .separator("__")
                    .source(Some(environment)),
            )
            .build()
            .map_err(load)?
            .try_deserialize()
            .map_err(load)?;
        settings.dev |= crate::datadir::is_marked_dev(data_dir);
        settings.data_dir = data_dir.to_owned();
        Ok(settings)
    }

    /// Writes the settings to `<data_dir>/mnvault.toml`, readable by the
    /// vault's user only (mode 0600).
    pub fn save(&self) -> Result<(), ConfigError> {
        use std::io::Write as _;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let path = self.data_dir.join(CONFIG_FILE);
        let write_error = |e: &dyn std::fmt::Display| ConfigError::Write { path: path.clone(), reason: e.to_string() };
        let text = toml::to_string_pretty(self).map_err(|e| write_error(&e))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| write_error(&e))?;
        // The mode applies only when the file is created; an older one is tightened.
        file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(|e| write_error(&e))?;
        file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| write_error(&e))
    }

    /// Where the database is.
    pub fn database(&self) -> DatabaseLocation {
        DatabaseLocation::parse(&self.database.url, &self.data_dir)
    }

    /// A path of the configuration, resolved against the data directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.data_dir.join(path)
        }
    }
}
