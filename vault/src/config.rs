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
    /// A development setup (dev PKI, loopback only).
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
}

impl Settings {
    /// Loads `<data_dir>/mnvault.toml` with environment overrides.
    pub fn load(data_dir: &Path) -> Result<Self, ConfigError> {
        let path = data_dir.join(CONFIG_FILE);
        let load = |source| ConfigError::Load { path: path.clone(), source };
        let mut settings: Settings = config::Config::builder()
            .add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml))
            .add_source(config::Environment::with_prefix("MNVAULT").prefix_separator("__").separator("__"))
            .build()
            .map_err(load)?
            .try_deserialize()
            .map_err(load)?;
        settings.data_dir = data_dir.to_owned();
        Ok(settings)
    }

    /// Writes the settings to `<data_dir>/mnvault.toml`.
    pub fn save(&self) -> Result<(), ConfigError> {
        let path = self.data_dir.join(CONFIG_FILE);
        let text = toml::to_string_pretty(self)
            .map_err(|e| ConfigError::Write { path: path.clone(), reason: e.to_string() })?;
        std::fs::write(&path, text).map_err(|e| ConfigError::Write { path, reason: e.to_string() })
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
