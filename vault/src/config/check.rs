//! `mnvault config check`: loads a configuration as `serve` does, checks its
//! values and, unless told not to, the files it names, and shows the
//! effective configuration with its secrets redacted.
//!
//! Values: every key known and of its type, limits, server timings and the
//! key cache's bounds in range, a dev vault on loopback (metrics too), a database location that
//! parses, principal names and tenants
//! that follow their grammars. Files: the data directory exists and is not
//! a dev one (for production), the root key opens (mode 0600), the TLS files
//! make the server's mutual TLS as `serve` builds it (every `tls.crl` file
//! a revocation list, named by its key when not), a SQLite database
//! exists. PostgreSQL is not contacted.

use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use mnvault_core::id::{Principal, TenantId};

use super::{redact_secrets, Loaded, Origin, Problem, Settings};
use crate::store::DatabaseLocation;

/// Whether a check reads the files the configuration names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileChecks {
    /// Data directory, root key, TLS files and SQLite database, as `serve`
    /// would open them.
    Read,
    /// Only the configuration: syntax, keys and values. For a file meant for
    /// another machine (the examples in `deploy/`).
    Skip,
}

/// What a check found.
#[derive(Debug)]
pub struct Report {
    /// The configuration file checked.
    pub file: PathBuf,
    /// The effective configuration as TOML with secrets redacted, when it
    /// loaded.
    pub effective: Option<String>,
    /// Every problem found; empty when the configuration is fit to serve.
    pub problems: Vec<Problem>,
}

/// Checks the configuration `serve --data-dir DATA_DIR [--config FILE]
/// [--database-url URL]` would load, with overrides from `environment`.
pub fn check(
    data_dir: &Path,
    file: Option<&Path>,
    environment: impl IntoIterator<Item = (String, String)>,
    database_url: Option<String>,
    files: FileChecks,
) -> Report {
    let path = super::config_file(data_dir, file);
    let mut loaded = match Loaded::load(data_dir, file, environment) {
        Ok(loaded) => loaded,
        Err(error) => return Report { problems: error.into_problems(&path), file: path, effective: None },
    };
    if let Some(url) = database_url {
        loaded.set_database_url(url);
    }
    let mut problems = loaded.value_problems();
    if files == FileChecks::Read {
        problems.extend(file_problems(&loaded));
    }
    Report { effective: Some(effective(&loaded, files)), file: path, problems }
}

/// Every problem of the values of `settings`, as (key, reason). Reads no file.
pub(super) fn values(settings: &Settings) -> Vec<(String, String)> {
    let mut problems = settings.limits.problems();
    problems.extend(settings.keys.problems());
    problems.extend(settings.retention.problems());
    problems.extend(settings.audit.problems());
    problems.extend(settings.alarms.problems());
    problems.extend(settings.root_key.problems());
    if settings.dev && !settings.listen.ip().is_loopback() {
        let reason = format!("a dev vault listens only on loopback; {} is not a loopback address", settings.listen);
        problems.push(("listen".into(), reason));
    }
    if let Err(message) = settings.server.validate() {
        // "server.KEY must …": the key is the message's first word.
        let (key, reason) = message.split_once(' ').unwrap_or(("server", &message));
        problems.push((key.to_owned(), reason.to_owned()));
    }
    if let Some(address) = settings.metrics.listen.filter(|address| settings.dev && !address.ip().is_loopback()) {
        let reason = format!("a dev vault serves metrics only on loopback; {address} is not a loopback address");
        problems.push(("metrics.listen".into(), reason));
    }
    if settings.database.write_timeout_ms == 0 {
        problems.push(("database.write_timeout_ms".into(), "must be greater than 0".into()));
    }
    if let Some(reason) = database_problem(settings) {
        problems.push(("database.url".into(), reason));
    }
    if let Err(reason) = settings.identity.source() {
        problems.push(("identity.trust_domain".into(), reason));
    }
    if settings.identity.source == crate::config::IdentitySourceSetting::Spiffe && !settings.principals.is_empty() {
        let reason = "grants roles by certificate Common Name, which a vault with identity.source = \"spiffe\" never \
                      reads (roles and tenants come from the SPIFFE ID): remove the section, or set identity.source = \
                      \"common-name\"";
        problems.push(("principals".into(), reason.to_owned()));
    }
    for (name, grant) in &settings.principals {
        if let Err(error) = Principal::parse(name) {
            problems.push((format!("principals.{name}"), format!("{error}; it names a client certificate")));
        } else if crate::identity::is_reserved(name) {
            let reason = "is a name the vault keeps for its own audit entries; no principal may take it";
            problems.push((format!("principals.{name}"), reason.to_owned()));
        }
        for (i, tenant) in grant.tenants.iter().enumerate().filter(|(_, tenant)| *tenant != "*") {
            if let Err(error) = TenantId::parse(tenant) {
                problems
                    .push((format!("principals.{name}.tenants[{i}]"), format!("{error}, or \"*\" for every tenant")));
            }
        }
    }
    problems
}

/// What is wrong with `database.url`, if anything.
fn database_problem(settings: &Settings) -> Option<String> {
    let url = settings.database.url.trim();
    match settings.database() {
        DatabaseLocation::Postgres(url) => {
            // sqlx logs an unknown parameter with its value, which may be a
            // secret: this parse logs nothing.
            let parsed = tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
                sqlx::postgres::PgConnectOptions::from_str(&url)
            });
            parsed.err().map(|error| format!("not a PostgreSQL URL: {error}"))
        }
        DatabaseLocation::Sqlite(_) if url.strip_prefix("sqlite://").unwrap_or(url).is_empty() => {
            Some("is empty: give a SQLite file (relative to the data directory) or a postgres:// URL".into())
        }
        DatabaseLocation::Sqlite(_) if url.contains("://") && !url.starts_with("sqlite://") => {
            Some("names no known database: give a SQLite file, a sqlite:// or a postgres:// URL".into())
        }
        DatabaseLocation::Sqlite(_) => None,
    }
}

/// Problems with the files the configuration names, found by opening them
/// as `serve` does.
fn file_problems(loaded: &Loaded) -> Vec<Problem> {
    let settings = &loaded.settings;
    let data_dir_problem = |reason: String| Problem { origin: Origin::Flag("--data-dir"), key: None, reason };
    let mut problems = Vec::new();
    if !settings.data_dir.is_dir() {
        problems.push(data_dir_problem(format!(
            "the data directory {} does not exist; the vault keeps its chain watermark there",
            settings.data_dir.display()
        )));
    }
    if !settings.dev {
        if let Err(error) = crate::datadir::check_production(settings) {
            let key = match &error {
                crate::datadir::DevError::DevCertificate { path } => {
                    [("tls.cert", &settings.tls.cert), ("tls.client_ca", &settings.tls.client_ca)]
                        .into_iter()
                        .find(|(_, file)| settings.resolve(file) == *path)
                        .map(|(key, _)| key)
                }
                _ => None,
            };
            problems.push(match key {
                Some(key) => loaded.problem(Some(key), &error.to_string()),
                None => data_dir_problem(error.to_string()),
            });
        }
    }
    if let Err(error) = crate::startup::root_key_provider(settings) {
        problems.push(loaded.problem(Some(crate::root_key::problem_key(settings)), &error.to_string()));
    }
    match crate::startup::server_tls(settings) {
        Ok(_) => {}
        Err(crate::startup::StartupError::Crl { key, path, reason }) => {
            let reason = format!("the certificate revocation list {} {reason}", path.display());
            problems.push(loaded.problem(Some(&key), &reason));
        }
        Err(error) => problems.push(loaded.problem(Some("tls"), &error.to_string())),
    }
    if let DatabaseLocation::Sqlite(path) = settings.database() {
        if !path.is_file() {
            let reason =
                format!("no SQLite database at {}; initialise the data directory with `mnvault init`", path.display());
            problems.push(loaded.problem(Some("database.url"), &reason));
        }
    }
    problems
}

/// The effective configuration as TOML, with a header saying where it came
/// from. Every string is redacted ([`redact_secrets`]), and so is any string
/// under a key that names a password or a secret.
fn effective(loaded: &Loaded, files: FileChecks) -> String {
    let mut text = String::from("# mnvault effective configuration; secrets redacted\n");
    text.push_str(&format!("# file: {}\n", loaded.file.display()));
    text.push_str(&format!(
        "# data directory: {} (relative paths are relative to it)\n",
        loaded.settings.data_dir.display()
    ));
    let overrides: Vec<&str> = loaded.variable_names().into_iter().chain(loaded.flag_names()).collect();
    if !overrides.is_empty() {
        text.push_str(&format!("# overridden by: {}\n", overrides.join(", ")));
    }
    if files == FileChecks::Skip {
        text.push_str("# files named here were not read (--no-files)\n");
    }
    match toml::Value::try_from(&loaded.settings) {
        Ok(mut value) => {
            redact(&mut value);
            match toml::to_string_pretty(&value) {
                Ok(body) => text.push_str(&body),
                Err(error) => text.push_str(&format!("# cannot show the settings as TOML: {error}\n")),
            }
        }
        Err(error) => text.push_str(&format!("# cannot show the settings as TOML: {error}\n")),
    }
    text
}

fn redact(value: &mut toml::Value) {
    match value {
        toml::Value::String(text) => *text = redact_secrets(text),
        toml::Value::Array(items) => items.iter_mut().for_each(redact),
        toml::Value::Table(table) => {
            for (key, inner) in table.iter_mut() {
                if inner.is_str() && names_a_secret(key) {
                    *inner = toml::Value::String("REDACTED".into());
                } else {
                    redact(inner);
                }
            }
        }
        _ => {}
    }
}

/// Whether a key's name says its value is secret.
fn names_a_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "passphrase", "secret"].iter().any(|word| key.contains(word))
}
