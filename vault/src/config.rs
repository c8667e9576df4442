//! Typed configuration: `<data-dir>/mnvault.toml` (or the file `--config`
//! names), overridden by environment variables `MNVAULT__<SECTION>__<KEY>`
//! (e.g. `MNVAULT__LISTEN=127.0.0.1:0`,
//! `MNVAULT__DATABASE__URL=postgres://vault@db/mnvault`). Relative paths are
//! relative to the data directory, wherever the file is.
//!
//! A problem names its key and where the value came from: the file, the
//! variable or the flag ([`Problem`]). Loading reports every problem of the
//! file's keys, not only the first; [`check`] adds the values and the files
//! they name, for `mnvault config check`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use mnvault_core::authz::PrincipalSettings;
use mnvault_core::authz::{IdentitySource, Policy};
use mnvault_core::identity::TrustDomain;

use crate::store::DatabaseLocation;

pub mod check;

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
    /// Where callers' identities, roles and tenants come from; see
    /// [`IdentitySettings`].
    #[serde(default)]
    pub identity: IdentitySettings,
    /// Who may do what, in the compatibility mode (`identity.source =
    /// "common-name"`): client-certificate common name to its grant.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub principals: BTreeMap<String, PrincipalSettings>,
    /// What one caller may cost the vault; see [`LimitSettings`].
    #[serde(default)]
    pub limits: LimitSettings,
    /// Shutdown and health checks; see [`crate::lifecycle::ServerSettings`].
    #[serde(default)]
    pub server: crate::lifecycle::ServerSettings,
    /// How the log is written; see [`crate::telemetry::LogSettings`].
    #[serde(default)]
    pub log: crate::telemetry::LogSettings,
    /// The metrics listener (off by default); see [`crate::metrics::MetricsSettings`].
    #[serde(default, skip_serializing_if = "crate::metrics::MetricsSettings::is_unset")]
    pub metrics: crate::metrics::MetricsSettings,
    /// The cache of unwrapped tenant keys; see [`KeySettings`].
    #[serde(default)]
    pub keys: KeySettings,
    /// The background purge; see [`crate::purge::RetentionSettings`].
    #[serde(default, skip_serializing_if = "crate::purge::RetentionSettings::is_unset")]
    pub retention: crate::purge::RetentionSettings,
    /// Signed checkpoints, the pinned public key and the audit sinks; see
    /// [`crate::checkpointer::AuditSettings`].
    #[serde(default, skip_serializing_if = "crate::checkpointer::AuditSettings::is_unset")]
    pub audit: crate::checkpointer::AuditSettings,
    /// Release patterns that raise an alert; see [`crate::alarms::AlarmSettings`].
    #[serde(default, skip_serializing_if = "crate::alarms::AlarmSettings::is_unset")]
    pub alarms: crate::alarms::AlarmSettings,
    /// The collection page (off unless `listen` is set); see [`CollectionSettings`].
    #[serde(default, skip_serializing_if = "CollectionSettings::is_unset")]
    pub collection: CollectionSettings,
    /// The data directory this was loaded from (not part of the file).
    #[serde(skip)]
    pub data_dir: PathBuf,
}

/// `[root_key]`: where the root key lives (`crate::root_key`). Secrets
/// (passphrase, PIN) come from a file or a systemd credential, never from
/// the configuration or the command line. Changed only by a restart.
///
/// | key | for | what |
/// |---|---|---|
/// | `provider` | all | `"file"` (default), `"passphrase"` or `"pkcs11"` |
/// | `file` | file, passphrase | the key file (mode 0600); for `passphrase`, the sealed key file |
/// | `passphrase_file` | passphrase | a file (0600) holding the passphrase |
/// | `passphrase_credential` | passphrase | a systemd credential holding it (`$CREDENTIALS_DIRECTORY/<name>`); with neither, asked on the terminal |
/// | `module` | pkcs11 | the PKCS#11 library, e.g. `/usr/lib/softhsm/libsofthsm2.so` |
/// | `token_label` | pkcs11 | the token's label |
/// | `key_label` | pkcs11 | the root key object's label (`mnvault root-key init` creates it) |
/// | `pin_file` | pkcs11 | a file (0600) holding the user PIN |
/// | `pin_credential` | pkcs11 | a systemd credential holding it |
/// | `[[root_key.previous]]` | all | root keys being rotated away from, same keys as above: they unwrap, never wrap (`mnvault root-key rotate`) |
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootKeySettings {
    /// Which provider holds the root key.
    #[serde(default)]
    pub provider: RootKeyProviderKind,
    /// Path of the root key file (mode 0600, outside the database); for
    /// `passphrase`, of the sealed key file.
    #[serde(default, skip_serializing_if = "path_is_empty")]
    pub file: PathBuf,
    /// A file holding the passphrase (`passphrase`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase_file: Option<PathBuf>,
    /// A systemd credential holding the passphrase (`passphrase`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase_credential: Option<String>,
    /// The PKCS#11 library (`pkcs11`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<PathBuf>,
    /// The token's label (`pkcs11`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_label: Option<String>,
    /// The root key object's label (`pkcs11`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_label: Option<String>,
    /// A file holding the user PIN (`pkcs11`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_file: Option<PathBuf>,
    /// A systemd credential holding the user PIN (`pkcs11`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_credential: Option<String>,
    /// Root keys being rotated away from: they unwrap, never wrap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous: Vec<RootKeySettings>,
}

/// `root_key.provider`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootKeyProviderKind {
    /// A key file ([`mnvault_keys::RootKeyFile`]).
    #[default]
    File,
    /// A passphrase-sealed key file ([`mnvault_keys::PassphraseKeyFile`]).
    Passphrase,
    /// An HSM over PKCS#11 ([`mnvault_keys::Pkcs11RootKey`]).
    Pkcs11,
}

fn path_is_empty(path: &Path) -> bool {
    path.as_os_str().is_empty()
}

impl RootKeySettings {
    /// A plain key file at `path`.
    pub fn file(path: PathBuf) -> Self {
        Self { file: path, ..Self::default() }
    }

    /// Every problem of `[root_key]` and its previous entries, as (key, reason).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = self.problems_at("root_key");
        for (i, previous) in self.previous.iter().enumerate() {
            let at = format!("root_key.previous[{i}]");
            problems.extend(previous.problems_at(&at));
            if !previous.previous.is_empty() {
                problems.push((format!("{at}.previous"), "a previous root key has no previous ones of its own".into()));
            }
        }
        problems
    }

    fn problems_at(&self, at: &str) -> Vec<(String, String)> {
        use RootKeyProviderKind::{File, Passphrase, Pkcs11};
        let mut problems = Vec::new();
        let provider = match self.provider {
            File => "file",
            Passphrase => "passphrase",
            Pkcs11 => "pkcs11",
        };
        let mut only_for = |key: &str, set: bool, kinds: &[RootKeyProviderKind], names: &str| {
            if set && !kinds.contains(&self.provider) {
                problems.push((format!("{at}.{key}"), format!("is for provider {names}, not \"{provider}\"")));
            }
        };
        only_for("file", !path_is_empty(&self.file), &[File, Passphrase], "\"file\" or \"passphrase\"");
        only_for("passphrase_file", self.passphrase_file.is_some(), &[Passphrase], "\"passphrase\"");
        only_for("passphrase_credential", self.passphrase_credential.is_some(), &[Passphrase], "\"passphrase\"");
        for (key, set) in [
            ("module", self.module.is_some()),
            ("token_label", self.token_label.is_some()),
            ("key_label", self.key_label.is_some()),
            ("pin_file", self.pin_file.is_some()),
            ("pin_credential", self.pin_credential.is_some()),
        ] {
            only_for(key, set, &[Pkcs11], "\"pkcs11\"");
        }
        let mut missing = |key: &str, absent: bool| {
            if absent {
                problems.push((format!("{at}.{key}"), format!("is needed by provider \"{provider}\"")));
            }
        };
        match self.provider {
            File | Passphrase => missing("file", path_is_empty(&self.file)),
            Pkcs11 => {
                missing("module", self.module.is_none());
                missing("token_label", self.token_label.as_deref().is_none_or(str::is_empty));
                missing("key_label", self.key_label.as_deref().is_none_or(str::is_empty));
                missing("pin_file", self.pin_file.is_none() && self.pin_credential.is_none());
            }
        }
        let pairs = [
            (
                "passphrase_file",
                self.passphrase_file.is_some(),
                "passphrase_credential",
                self.passphrase_credential.is_some(),
            ),
            ("pin_file", self.pin_file.is_some(), "pin_credential", self.pin_credential.is_some()),
        ];
        for (file, file_set, credential, credential_set) in pairs {
            if file_set && credential_set {
                problems.push((format!("{at}.{credential}"), format!("give either {file} or {credential}, not both")));
            }
        }
        for (key, name) in
            [("passphrase_credential", &self.passphrase_credential), ("pin_credential", &self.pin_credential)]
        {
            if let Some(name) = name {
                let valid = !name.is_empty()
                    && name.len() <= 255
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                    && !name.starts_with('.');
                if !valid {
                    let reason =
                        "is a systemd credential's name: letters, digits, '-', '_' and '.', not starting with '.'";
                    problems.push((format!("{at}.{key}"), reason.into()));
                }
            }
        }
        problems
    }
}

/// `[keys]`: how long and for how many tenants unwrapped tenant keys stay
/// in memory (`mnvault_core::keyring`). A miss costs a database read and a
/// round trip to the root key provider per key. Changed only by a restart.
///
/// | key | default | what it bounds |
/// |---|---|---|
/// | `cache_ttl_ms` | 900000 | milliseconds a tenant's keys are served from memory after they were read; also how long a replica may miss a record-key version added elsewhere (at most 86400000, a day) |
/// | `cache_tenants` | 10000 | tenants whose keys are kept; one more evicts the least recently used |
/// | `rotate_every_days` | 0 (off) | days after which `serve` adds a tenant's next record-key version by itself (at most 36500) |
/// | `rotation_check_interval_ms` | 3600000 | milliseconds between two looks for tenants due a rotation (100 to 86400000) |
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeySettings {
    /// Milliseconds a tenant's unwrapped keys are kept after their read.
    pub cache_ttl_ms: u64,
    /// Tenants whose unwrapped keys are kept at most.
    pub cache_tenants: usize,
    /// Days after which a tenant's primary record key is rotated by the
    /// vault's schedule; 0 turns the schedule off.
    pub rotate_every_days: u32,
    /// Milliseconds between two checks of the schedule.
    pub rotation_check_interval_ms: u64,
}

/// The longest `keys.cache_ttl_ms`: a cached key set does not see a
/// record-key version added after its read, so it must not live for long.
pub const MAX_KEY_CACHE_TTL_MS: u64 = mnvault_core::keyring::MAX_KEY_CACHE_TTL.as_millis() as u64;

impl Default for KeySettings {
    fn default() -> Self {
        let limits = mnvault_core::keyring::KeyCacheLimits::default();
        Self {
            cache_ttl_ms: limits.ttl.as_millis() as u64,
            cache_tenants: limits.tenants,
            rotate_every_days: 0,
            rotation_check_interval_ms: crate::key_schedule::DEFAULT_CHECK_INTERVAL_MS,
        }
    }
}

impl KeySettings {
    /// Every value out of range, as (key, reason).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.cache_ttl_ms == 0 {
            problems.push(("keys.cache_ttl_ms".into(), "must be greater than 0".into()));
        }
        if self.cache_ttl_ms > MAX_KEY_CACHE_TTL_MS {
            let reason = format!(
                "may be at most {MAX_KEY_CACHE_TTL_MS} (a day): cached keys do not see a key version added after \
                 they were read"
            );
            problems.push(("keys.cache_ttl_ms".into(), reason));
        }
        if self.cache_tenants == 0 {
            problems.push(("keys.cache_tenants".into(), "must be greater than 0".into()));
        }
        problems.extend(crate::key_schedule::problems(self.rotate_every_days, self.rotation_check_interval_ms));
        problems
    }

    /// The bounds the core's keyring keeps.
    pub fn cache_limits(&self) -> mnvault_core::keyring::KeyCacheLimits {
        mnvault_core::keyring::KeyCacheLimits {
            ttl: Duration::from_millis(self.cache_ttl_ms),
            tenants: self.cache_tenants,
        }
    }
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

/// `[tls]`: PEM files for mutual TLS, and the revocation lists of the
/// client CAs. Every file is read again on a reload, and when it changes on
/// disk ([`crate::tls_watch`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The vault's certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// CA whose client certificates are accepted.
    pub client_ca: PathBuf,
    /// Certificate revocation lists (PEM or DER) from the CAs of
    /// `client_ca`: a client certificate listed in one is refused at the
    /// handshake. A certificate whose issuer has no list here is not
    /// checked, and a list past its next update is still used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crl: Vec<PathBuf>,
}

/// `[collection]`: the page where an employee types their own number
/// (`crate::collect_page`). HTTPS with the server's certificate only:
/// employees have no client certificates. Off unless `listen` is set; a dev
/// vault serves it on loopback (`127.0.0.1:50443`) unless told otherwise.
/// Changed only by a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionSettings {
    /// Where the page listens; none (the default) serves no page, and then
    /// `CreateCollection` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// The origin employees reach the page at, as links name it, e.g.
    /// `https://vault.example.jp`; by default `https://<listen>`. Requests
    /// whose `Origin` is another are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// The page's certificate (PEM); by default `tls.cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM); by default `tls.key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

impl CollectionSettings {
    /// Whether the settings say nothing (no page).
    pub fn is_unset(&self) -> bool {
        self == &Self::default()
    }
}

/// `[identity]`: how a client certificate names its caller.
///
/// - `source = "spiffe"` (the default): the certificate's one URI SAN,
///   `spiffe://<trust_domain>/tenant/<tenant>/<role>/<name>` or
///   `spiffe://<trust_domain>/operator/<role>/<name>`, gives the caller its
///   role and tenant; `[principals]` must be empty. A certificate without
///   one, with two, or from another trust domain gets no call.
/// - `source = "common-name"`: the compatibility mode, for certificates
///   without SPIFFE IDs: the subject's Common Name is looked up in
///   `[principals]`. One person with two names is two principals here;
///   prefer SPIFFE IDs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySettings {
    /// Where identities come from.
    #[serde(default)]
    pub source: IdentitySourceSetting,
    /// The SPIFFE trust domain whose identities this vault accepts, e.g.
    /// `vault.example.jp`. Required with `source = "spiffe"`.
    #[serde(default)]
    pub trust_domain: String,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self { source: IdentitySourceSetting::Spiffe, trust_domain: String::new() }
    }
}

/// `identity.source`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentitySourceSetting {
    /// The certificate's SPIFFE ID (URI SAN).
    #[default]
    Spiffe,
    /// The certificate's subject Common Name, granted by `[principals]`.
    CommonName,
}

impl IdentitySettings {
    /// The core's identity source; `Err` names what is wrong, for
    /// `identity.trust_domain`.
    pub fn source(&self) -> Result<IdentitySource, String> {
        match self.source {
            IdentitySourceSetting::CommonName => Ok(IdentitySource::CommonName),
            IdentitySourceSetting::Spiffe if self.trust_domain.is_empty() => Err(
                "missing: set it to the SPIFFE trust domain of your client certificates, e.g. vault.example.jp (or \
                 identity.source = \"common-name\" for certificates without SPIFFE IDs)"
                    .into(),
            ),
            IdentitySourceSetting::Spiffe => {
                TrustDomain::parse(&self.trust_domain).map(IdentitySource::Spiffe).map_err(|error| error.to_string())
            }
        }
    }
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
    /// a job of `max_job_tokens` tokens through `max_message_bytes`: the first
    /// of [`LimitSettings::problems`], as one sentence naming its key.
    pub fn validate(&self) -> Result<(), String> {
        match self.problems().into_iter().next() {
            Some((key, reason)) => Err(format!("{key} {reason}")),
            None => Ok(()),
        }
    }

    /// Every limit out of range, as (key, reason).
    pub fn problems(&self) -> Vec<(String, String)> {
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
        let mut problems: Vec<(String, String)> = positive
            .iter()
            .filter(|(_, value)| *value == 0)
            .map(|(name, _)| (format!("limits.{name}"), "must be greater than 0".to_owned()))
            .collect();
        let core_max = mnvault_core::job::MAX_JOB_TOKENS;
        if self.max_job_tokens > core_max {
            problems.push(("limits.max_job_tokens".into(), format!("may be at most {core_max}")));
        }
        if self.audit_page_entries > mnvault_core::vault::AUDIT_PAGE {
            let most = mnvault_core::vault::AUDIT_PAGE;
            problems.push(("limits.audit_page_entries".into(), format!("may be at most {most}")));
        }
        let needed = self.max_job_tokens.saturating_mul(TOKEN_WIRE_BYTES).saturating_add(64 * 1024);
        if self.max_message_bytes < needed {
            problems.push((
                "limits.max_message_bytes".into(),
                format!("must be at least {needed} so a job of limits.max_job_tokens tokens fits"),
            ));
        }
        problems
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
    /// The file is missing or unreadable.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file is not TOML.
    #[error("{path} is not valid TOML: {reason}")]
    Syntax {
        /// The configuration file.
        path: PathBuf,
        /// The parser's message, with line and column.
        reason: String,
    },
    /// Keys or values of the file, of an environment override or of a flag
    /// are wrong; each problem names its key and where it came from.
    #[error("{0}")]
    Invalid(Problems),
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

impl ConfigError {
    /// The error as problems of the configuration `file`, for a report that
    /// lists every problem.
    pub fn into_problems(self, file: &Path) -> Vec<Problem> {
        let in_file = |reason: String| Problem { origin: Origin::File(file.to_owned()), key: None, reason };
        match self {
            ConfigError::Invalid(Problems(problems)) => problems,
            ConfigError::DevOverride => vec![Problem {
                origin: Origin::Variable(DEV_VARIABLE.to_owned()),
                key: Some("dev".into()),
                reason: ConfigError::DevOverride.to_string(),
            }],
            ConfigError::Read { reason, .. } => vec![in_file(format!("cannot read: {reason}"))],
            ConfigError::Syntax { reason, .. } => vec![in_file(format!("not valid TOML: {reason}"))],
            ConfigError::Write { reason, .. } => vec![in_file(format!("cannot write: {reason}"))],
        }
    }
}

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The configuration file.
    File(PathBuf),
    /// An environment variable `MNVAULT__…`.
    Variable(String),
    /// A command-line flag (`--database-url`, `--data-dir`).
    Flag(&'static str),
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where the wrong value came from.
    pub origin: Origin,
    /// The key, e.g. `limits.max_connections`, when the problem has one.
    pub key: Option<String>,
    /// What is wrong, with secrets redacted.
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.origin, &self.key) {
            (Origin::File(path), Some(key)) => write!(f, "{}: {key}: {}", path.display(), self.reason),
            (Origin::File(path), None) => write!(f, "{}: {}", path.display(), self.reason),
            (Origin::Variable(name), Some(key)) => write!(f, "{name} (overrides {key}): {}", self.reason),
            (Origin::Flag(flag), Some(key)) => write!(f, "{flag} (overrides {key}): {}", self.reason),
            (Origin::Variable(name), None) => write!(f, "{name}: {}", self.reason),
            (Origin::Flag(flag), None) => write!(f, "{flag}: {}", self.reason),
        }
    }
}

/// Every problem a configuration has, shown on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// The environment variable that would override `dev`, refused by [`Settings::load`].
const DEV_VARIABLE: &str = "MNVAULT__DEV";

/// The prefix of environment overrides: `MNVAULT__LIMITS__MAX_CONNECTIONS`
/// sets `limits.max_connections`.
pub const OVERRIDE_PREFIX: &str = "MNVAULT__";

/// How many problems one load reports at most before it stops looking.
const MAX_PROBLEMS: usize = 64;

/// The configuration file of `data_dir`: `file` when given (`--config`),
/// else `<data_dir>/mnvault.toml`.
pub fn config_file(data_dir: &Path, file: Option<&Path>) -> PathBuf {
    file.map_or_else(|| data_dir.join(CONFIG_FILE), Path::to_owned)
}

/// The process's environment, for overrides (variables that are not Unicode are skipped).
pub fn process_environment() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)))
}

/// Settings together with where each overridden key came from, so that a
/// problem found later names the file, the variable or the flag.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The settings.
    pub settings: Settings,
    /// The configuration file.
    pub file: PathBuf,
    /// Keys set by environment variables: key to the variable's name and value.
    variables: BTreeMap<String, (String, String)>,
    /// Keys set by command-line flags: key to the flag.
    flags: BTreeMap<String, &'static str>,
}

impl Loaded {
    /// Loads `file` (default `<data_dir>/mnvault.toml`) with the overrides
    /// in `environment` (variable name, value). `MNVAULT__DEV` is refused,
    /// and a directory marked for development is dev whatever the file says.
    /// Every problem of the file's keys and the overrides is reported, not
    /// only the first.
    pub fn load(
        data_dir: &Path,
        file: Option<&Path>,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut environment: config::Map<String, String> = environment
            .into_iter()
            .filter(|(key, _)| {
                key.get(..OVERRIDE_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(OVERRIDE_PREFIX))
            })
            .collect();
        // config matches names without regard to case, and so does this.
        if environment.keys().any(|key| key.eq_ignore_ascii_case(DEV_VARIABLE)) {
            return Err(ConfigError::DevOverride);
        }
        let path = config_file(data_dir, file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ConfigError::Read { path: path.clone(), reason: e.to_string() })?;
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax { path: path.clone(), reason: e.to_string() })?;
        let variables = variables(&environment);
        let mut problems = Vec::new();
        // Keys taken out after a problem: what follows from taking them out is not another problem.
        let mut taken_out: Vec<String> = Vec::new();
        while problems.len() < MAX_PROBLEMS {
            let error = match deserialize(&table, &environment) {
                Ok(mut settings) if problems.is_empty() => {
                    settings.dev |= crate::datadir::is_marked_dev(data_dir);
                    settings.data_dir = data_dir.to_owned();
                    return Ok(Self { settings, file: path, variables, flags: BTreeMap::new() });
                }
                Ok(_) => break,
                Err(error) => error,
            };
            let Described { key, reason, missing } = describe(error);
            if key.as_deref().is_some_and(|key| taken_out.iter().any(|out| within(key, out))) {
                break;
            }
            let origin = origin_of(&path, &variables, &BTreeMap::new(), key.as_deref());
            // Take the wrong value out (fill a missing one with an empty
            // string) and look again, to find the next problem.
            let taken = match (&origin, &key) {
                (Origin::Variable(name), _) => environment.remove(name).is_some(),
                (_, Some(key)) if missing => insert_placeholder(&mut table, key),
                (_, Some(key)) => remove_key(&mut table, key),
                _ => false,
            };
            if let Some(key) = &key {
                taken_out.push(key.split('[').next().unwrap_or(key).to_owned());
            }
            problems.push(Problem { origin, key, reason: redact_secrets(&reason) });
            if !taken {
                break;
            }
        }
        Err(ConfigError::Invalid(Problems(problems)))
    }

    /// Sets `database.url` from `--database-url`. clap reads that flag
    /// from `MNVAULT__DATABASE__URL` too: then the variable is named.
    pub fn set_database_url(&mut self, url: String) {
        let from_variable = self.variables.get("database.url").is_some_and(|(_, value)| *value == url);
        if !from_variable {
            self.flags.insert("database.url".into(), "--database-url");
        }
        self.settings.database.url = url;
    }

    /// A problem with `key`, attributed to where its value came from.
    pub fn problem(&self, key: Option<&str>, reason: &str) -> Problem {
        Problem {
            origin: origin_of(&self.file, &self.variables, &self.flags, key),
            key: key.map(str::to_owned),
            reason: redact_secrets(reason),
        }
    }

    /// The environment variables in force, in order.
    pub fn variable_names(&self) -> Vec<&str> {
        self.variables.values().map(|(name, _)| name.as_str()).collect()
    }

    /// The flags in force.
    pub fn flag_names(&self) -> Vec<&'static str> {
        self.flags.values().copied().collect()
    }

    /// Every problem of the values, each naming its key and origin: limits
    /// in range, a dev vault on loopback, a database location that parses.
    /// Files are not read ([`check::files`] does that).
    pub fn value_problems(&self) -> Vec<Problem> {
        check::values(&self.settings).into_iter().map(|(key, reason)| self.problem(Some(&key), &reason)).collect()
    }
}

/// The keys `environment` overrides: key (`limits.max_connections`) to the
/// variable's name and value, as config reads them.
fn variables(environment: &config::Map<String, String>) -> BTreeMap<String, (String, String)> {
    environment
        .iter()
        .map(|(name, value)| {
            let key = name[OVERRIDE_PREFIX.len()..].to_lowercase().replace("__", ".");
            (key, (name.clone(), value.clone()))
        })
        .collect()
}

/// The settings `table` and `environment` make, as config merges them.
fn deserialize(
    table: &toml::Table,
    environment: &config::Map<String, String>,
) -> Result<Settings, config::ConfigError> {
    let text = toml::to_string(table).map_err(|e| config::ConfigError::Message(e.to_string()))?;
    config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("MNVAULT")
                .prefix_separator("__")
                .separator("__")
                .source(Some(environment.clone())),
        )
        .build()?
        .try_deserialize()
}

/// Where the value at `key` came from: the variable that sets it (or the
/// table above it, or a key below it), else the file.
fn origin_of(
    file: &Path,
    variables: &BTreeMap<String, (String, String)>,
    flags: &BTreeMap<String, &'static str>,
    key: Option<&str>,
) -> Origin {
    let Some(key) = key else { return Origin::File(file.to_owned()) };
    let key = key.split('[').next().unwrap_or(key);
    if let Some(flag) = flags.get(key) {
        return Origin::Flag(flag);
    }
    let set = variables
        .get(key)
        .or_else(|| variables.iter().find(|(set, _)| within(key, set)).map(|(_, v)| v))
        .or_else(|| variables.iter().find(|(set, _)| within(set, key)).map(|(_, v)| v));
    match set {
        Some((name, _)) => Origin::Variable(name.clone()),
        None => Origin::File(file.to_owned()),
    }
}

/// Whether `key` is `outer` or lies below it.
fn within(key: &str, outer: &str) -> bool {
    key == outer || key.strip_prefix(outer).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// Takes `key` (`limits.max_connections`, `principals.x.roles[1]`: the
/// whole list) out of `table`; false if it is not there.
fn remove_key(table: &mut toml::Table, key: &str) -> bool {
    let key = key.split('[').next().unwrap_or(key);
    let mut parts: Vec<&str> = key.split('.').collect();
    let Some(last) = parts.pop() else { return false };
    let mut current = table;
    for part in parts {
        current = match current.get_mut(part) {
            Some(toml::Value::Table(inner)) => inner,
            _ => return false,
        };
    }
    current.remove(last).is_some()
}

/// A config error as a problem: its key, what is wrong, and whether the
/// key is missing.
struct Described {
    key: Option<String>,
    reason: String,
    missing: bool,
}

/// Puts an empty string at the missing `key`, creating the tables above it,
/// so that the search for problems can go on past it; false if it cannot.
fn insert_placeholder(table: &mut toml::Table, key: &str) -> bool {
    let mut parts: Vec<&str> = key.split('.').collect();
    let Some(last) = parts.pop() else { return false };
    let mut current = table;
    for part in parts {
        let inner = current.entry(part).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match inner {
            toml::Value::Table(inner) => inner,
            _ => return false,
        };
    }
    if current.contains_key(last) {
        return false;
    }
    current.insert(last.to_owned(), toml::Value::String(String::new()));
    true
}

/// The key and the reason of a config error, without config's own
/// " for key … in …" (the problem names its origin itself). config names
/// the key of a wrong type or a missing key; an unknown key it names only
/// by the table it is in, so the key itself is read from serde's message.
fn describe(error: config::ConfigError) -> Described {
    use config::ConfigError as E;
    let described = |key, reason| Described { key, reason, missing: false };
    match error {
        E::Type { unexpected, expected, key, .. } => described(key, format!("expected {expected}, found {unexpected}")),
        E::At { error, key, .. } => {
            let inner = describe(*error);
            let key = match (key, inner.key) {
                (Some(outer), Some(inner)) => Some(format!("{outer}.{inner}")),
                (outer, inner) => outer.or(inner),
            };
            Described { key, ..inner }
        }
        E::NotFound(key) => Described { key: Some(key), reason: "missing; this key is required".into(), missing: true },
        E::Message(message) => {
            let unknown = message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split_once('`'))
                .map(|(field, rest)| (field.to_owned(), rest.trim_start_matches(", ").to_owned()));
            match unknown {
                Some((field, expected)) => described(Some(field), format!("unknown key; {expected}")),
                None => described(None, message),
            }
        }
        other => described(None, other.to_string()),
    }
}

/// `text` with its secrets replaced by `REDACTED`: the password of any
/// `scheme://user:password@host` URL, and the value of any `password=`
/// parameter (`?password=…`, `sslpassword=…`). The configuration holds no
/// key bytes (keys are files named by path), so these are its only secrets.
pub fn redact_secrets(text: &str) -> String {
    redact_password_parameters(&redact_url_passwords(text))
}

/// Characters that end a URL's authority or a parameter's value in free text.
fn ends_value(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '`' | ',' | ';' | ')')
}

fn redact_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let end = after.find(|c: char| ends_value(c) || matches!(c, '/' | '?' | '#')).unwrap_or(after.len());
        let (authority, tail) = after.split_at(end);
        match authority.rsplit_once('@').and_then(|(userinfo, host)| Some((userinfo.split_once(':')?.0, host))) {
            Some((user, host)) => {
                out.push_str(user);
                out.push_str(":REDACTED@");
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

fn redact_password_parameters(text: &str) -> String {
    const NAME: &str = "password=";
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = lower[from..].find(NAME) {
        let value_start = from + found + NAME.len();
        let value_end =
            text[value_start..].find(|c: char| ends_value(c) || c == '&').map_or(text.len(), |end| value_start + end);
        out.push_str(&text[copied..value_start]);
        out.push_str("REDACTED");
        copied = value_end;
        from = value_end;
    }
    out.push_str(&text[copied..]);
    out
}

impl Settings {
    /// The access policy: `[identity]` and `[principals]`. `Err` names the
    /// key that is wrong and why.
    pub fn access_policy(&self) -> Result<Policy, String> {
        let source = self.identity.source().map_err(|reason| format!("identity.trust_domain: {reason}"))?;
        Ok(Policy::new(&self.principals, source))
    }

    /// Loads `<data_dir>/mnvault.toml` with the process's environment overrides.
    pub fn load(data_dir: &Path) -> Result<Self, ConfigError> {
        Self::load_from(data_dir, None)
    }

    /// Loads `file` (`--config`; default `<data_dir>/mnvault.toml`) with
    /// the process's environment overrides. Relative paths in it stay
    /// relative to `data_dir`.
    pub fn load_from(data_dir: &Path, file: Option<&Path>) -> Result<Self, ConfigError> {
        Ok(Loaded::load(data_dir, file, process_environment())?.settings)
    }

    /// Loads `<data_dir>/mnvault.toml` with overrides from `environment`
    /// (variable name, value), as [`Settings::load`] does with the process's.
    /// `MNVAULT__DEV` is refused, and a directory marked for development is
    /// dev whatever the file says.
    pub fn load_with_environment(
        data_dir: &Path,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Ok(Loaded::load(data_dir, None, environment)?.settings)
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

    /// Every file of `[tls]`, resolved: certificate, key, client CA, then
    /// the revocation lists.
    pub fn tls_files(&self) -> Vec<PathBuf> {
        let tls = &self.tls;
        [&tls.cert, &tls.key, &tls.client_ca].into_iter().chain(&tls.crl).map(|file| self.resolve(file)).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest valid configuration: what has no default.
    const MINIMAL: &str = r#"
listen = "127.0.0.1:50051"
[root_key]
file = "root.key"
[identity]
trust_domain = "vault.example.jp"
[tls]
cert = "tls/server.crt"
key = "tls/server.key"
client_ca = "tls/ca.pem"
"#;

    fn no_environment() -> Vec<(String, String)> {
        Vec::new()
    }

    fn variable(name: &str, value: &str) -> Vec<(String, String)> {
        vec![(name.to_owned(), value.to_owned())]
    }

    /// A data directory with `text` as its configuration.
    fn data_dir(text: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), text).unwrap();
        dir
    }

    fn problems(error: ConfigError) -> Vec<Problem> {
        match error {
            ConfigError::Invalid(Problems(problems)) => problems,
            other => panic!("expected problems, got {other}"),
        }
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key_and_the_file() {
        let dir = data_dir(&format!("{MINIMAL}[limits]\nmax_connections = \"many\"\n"));
        let error = Settings::load_with_environment(dir.path(), no_environment()).unwrap_err();
        let message = error.to_string();
        let path = dir.path().join(CONFIG_FILE);
        assert!(message.starts_with(&format!("{}: limits.max_connections: ", path.display())), "{message}");
        assert!(message.contains("expected an integer"), "{message}");
    }

    #[test]
    fn an_unknown_key_names_itself() {
        for (text, key) in [
            (format!("bogus = 1\n{MINIMAL}"), "bogus"),
            (format!("{MINIMAL}[limits]\nmax_conections = 3\n"), "limits.max_conections"),
            (format!("{MINIMAL}cerrt = \"x\"\n"), "tls.cerrt"),
        ] {
            let dir = data_dir(&text);
            let found = problems(Settings::load_with_environment(dir.path(), no_environment()).unwrap_err());
            assert_eq!(found.len(), 1, "{found:?}");
            assert_eq!(found[0].key.as_deref(), Some(key));
            assert_eq!(found[0].origin, Origin::File(dir.path().join(CONFIG_FILE)));
            assert!(found[0].reason.starts_with("unknown key; expected"), "{}", found[0]);
        }
    }

    #[test]
    fn a_bad_override_names_the_variable() {
        let dir = data_dir(MINIMAL);
        for name in ["MNVAULT__LIMITS__MAX_CONNECTIONS", "mnvault__limits__max_connections"] {
            let error = Settings::load_with_environment(dir.path(), variable(name, "many")).unwrap_err();
            let found = problems(error);
            assert_eq!(found.len(), 1, "{found:?}");
            assert_eq!(found[0].origin, Origin::Variable(name.to_owned()));
            assert_eq!(found[0].key.as_deref(), Some("limits.max_connections"));
            assert!(found[0].to_string().starts_with(&format!("{name} (overrides limits.max_connections): ")));
        }
        // An override of a key that does not exist names the variable too.
        let found =
            problems(Settings::load_with_environment(dir.path(), variable("MNVAULT__LIMITS__BOGUS", "1")).unwrap_err());
        assert_eq!(found[0].origin, Origin::Variable("MNVAULT__LIMITS__BOGUS".into()));
        assert_eq!(found[0].key.as_deref(), Some("limits.bogus"));
        // A good override still applies, over the file.
        let settings = Settings::load_with_environment(dir.path(), variable("MNVAULT__LISTEN", "127.0.0.1:0")).unwrap();
        assert_eq!(settings.listen.port(), 0);
    }

    #[test]
    fn every_problem_of_the_file_and_the_environment_is_listed() {
        let text = "bogus = true\n".to_owned()
            + &MINIMAL.replace("127.0.0.1:50051", "not an address")
            + "[limits]\nmax_connections = \"many\"\nidle_timeout_ms = -5\n";
        let dir = data_dir(&text);
        let environment = variable("MNVAULT__DATABASE__WRITE_TIMEOUT_MS", "soon");
        let found = problems(Settings::load_with_environment(dir.path(), environment).unwrap_err());
        let mut keys: Vec<&str> = found.iter().filter_map(|p| p.key.as_deref()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["bogus", "database.write_timeout_ms", "limits.idle_timeout_ms", "limits.max_connections", "listen"],
            "{found:?}"
        );
        let variable = found.iter().find(|p| p.key.as_deref() == Some("database.write_timeout_ms")).unwrap();
        assert_eq!(variable.origin, Origin::Variable("MNVAULT__DATABASE__WRITE_TIMEOUT_MS".into()));
        // A required key taken out is not reported again as missing.
        assert_eq!(found.iter().filter(|p| p.key.as_deref() == Some("listen")).count(), 1);
    }

    #[test]
    fn a_missing_key_does_not_hide_the_problems_after_it() {
        let text = MINIMAL.replace("127.0.0.1:50051", "nowhere").replace("key = \"tls/server.key\"\n", "");
        let dir = data_dir(&text);
        let found = problems(Settings::load_with_environment(dir.path(), no_environment()).unwrap_err());
        let keys: Vec<&str> = found.iter().filter_map(|p| p.key.as_deref()).collect();
        assert_eq!(keys.len(), 2, "{found:?}");
        assert!(keys.contains(&"tls.key") && keys.contains(&"listen"), "{found:?}");
    }

    #[test]
    fn a_missing_key_a_syntax_error_and_a_missing_file_name_the_file() {
        let dir = data_dir(&MINIMAL.replace("cert = \"tls/server.crt\"\n", ""));
        let message = Settings::load_with_environment(dir.path(), no_environment()).unwrap_err().to_string();
        assert!(message.contains("tls.cert: missing"), "{message}");
        assert!(message.contains(&dir.path().join(CONFIG_FILE).display().to_string()), "{message}");

        let dir = data_dir("listen = \n");
        let error = Settings::load_with_environment(dir.path(), no_environment()).unwrap_err();
        assert!(matches!(error, ConfigError::Syntax { .. }), "{error}");
        assert!(error.to_string().contains("line 1"), "{error}");

        let dir = tempfile::tempdir().unwrap();
        let error = Settings::load_with_environment(dir.path(), no_environment()).unwrap_err();
        assert!(matches!(&error, ConfigError::Read { path, .. } if path == &dir.path().join(CONFIG_FILE)), "{error}");
    }

    #[test]
    fn another_file_keeps_paths_relative_to_the_data_directory_and_dev_stays_dev() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let file = elsewhere.path().join("vault.toml");
        std::fs::write(&file, MINIMAL).unwrap();
        let loaded = Loaded::load(dir.path(), Some(&file), no_environment()).unwrap();
        assert_eq!(loaded.file, file);
        assert_eq!(loaded.settings.resolve(&loaded.settings.root_key.file), dir.path().join("root.key"));
        assert!(!loaded.settings.dev);
        // A directory marked for development is dev whatever file is given.
        std::fs::write(dir.path().join(crate::datadir::DEV_MARKER_FILE), "").unwrap();
        assert!(Settings::load_from(dir.path(), Some(&file)).unwrap().dev);
        // And no variable may say otherwise.
        let error = Loaded::load(dir.path(), Some(&file), variable("Mnvault__Dev", "false")).unwrap_err();
        assert!(matches!(error, ConfigError::DevOverride), "{error}");
    }

    #[test]
    fn value_problems_name_the_key_and_where_the_value_came_from() {
        let dir = data_dir(&format!("{MINIMAL}[limits]\nmax_connections = 0\n"));
        let environment = variable("MNVAULT__LIMITS__MAX_LARGE_CALLS", "0");
        let mut loaded = Loaded::load(dir.path(), None, environment).unwrap();
        loaded.set_database_url("postgres://vault:pw@db:notaport/x".into());
        let found = loaded.value_problems();
        let origin = |key: &str| found.iter().find(|p| p.key.as_deref() == Some(key)).map(|p| p.origin.clone());
        assert_eq!(origin("limits.max_connections"), Some(Origin::File(dir.path().join(CONFIG_FILE))));
        assert_eq!(origin("limits.max_large_calls"), Some(Origin::Variable("MNVAULT__LIMITS__MAX_LARGE_CALLS".into())));
        assert_eq!(origin("database.url"), Some(Origin::Flag("--database-url")));
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found.iter().all(|p| !p.to_string().contains("pw@")), "{found:?}");
        // The same value from the variable clap also reads is the variable's.
        let environment = variable("MNVAULT__DATABASE__URL", "ftp://x");
        let mut loaded = Loaded::load(dir.path(), None, environment).unwrap();
        loaded.set_database_url("ftp://x".into());
        let found = loaded.value_problems();
        let url = found.iter().find(|p| p.key.as_deref() == Some("database.url")).unwrap();
        assert_eq!(url.origin, Origin::Variable("MNVAULT__DATABASE__URL".into()));
    }

    #[test]
    fn secrets_are_redacted() {
        let cases = [
            ("postgres://vault:s3cr:et@db.internal:5432/mnvault", "postgres://vault:REDACTED@db.internal:5432/mnvault"),
            (
                "postgres://vault@db/x?sslmode=require&password=p@ss&x=1",
                "postgres://vault@db/x?sslmode=require&password=REDACTED&x=1",
            ),
            ("postgresql://u:p@h/d?sslPassword=k", "postgresql://u:REDACTED@h/d?sslPassword=REDACTED"),
            ("found string \"postgres://a:b@c/d\", expected", "found string \"postgres://a:REDACTED@c/d\", expected"),
            ("host=db password=hush user=v", "host=db password=REDACTED user=v"),
            ("postgres://vault@db/mnvault", "postgres://vault@db/mnvault"),
            ("vault.db", "vault.db"),
        ];
        for (text, redacted) in cases {
            assert_eq!(redact_secrets(text), redacted, "{text}");
        }
    }

    #[test]
    fn limits_list_every_problem_and_validate_reports_the_first() {
        let limits = LimitSettings { max_connections: 0, max_large_calls: 0, ..Default::default() };
        let keys: Vec<String> = limits.problems().into_iter().map(|(key, _)| key).collect();
        assert_eq!(keys, ["limits.max_connections", "limits.max_large_calls"]);
        assert_eq!(limits.validate().unwrap_err(), "limits.max_connections must be greater than 0");
        assert!(LimitSettings::default().validate().is_ok());
    }

    #[test]
    fn the_key_cache_defaults_to_the_cores_bounds_and_refuses_zero_or_over_a_day() {
        let dir = data_dir(MINIMAL);
        let settings = Settings::load_with_environment(dir.path(), no_environment()).unwrap();
        assert_eq!(settings.keys.cache_limits(), mnvault_core::keyring::KeyCacheLimits::default());
        assert!(settings.keys.problems().is_empty());

        let dir = data_dir(&format!("{MINIMAL}[keys]\ncache_ttl_ms = 0\n"));
        let environment = variable("MNVAULT__KEYS__CACHE_TENANTS", "0");
        let found = Loaded::load(dir.path(), None, environment).unwrap().value_problems();
        let origin = |key: &str| found.iter().find(|p| p.key.as_deref() == Some(key)).map(|p| p.origin.clone());
        assert_eq!(origin("keys.cache_ttl_ms"), Some(Origin::File(dir.path().join(CONFIG_FILE))));
        assert_eq!(origin("keys.cache_tenants"), Some(Origin::Variable("MNVAULT__KEYS__CACHE_TENANTS".into())));
        assert_eq!(found.len(), 2, "{found:?}");

        let keys = KeySettings { cache_ttl_ms: MAX_KEY_CACHE_TTL_MS + 1, ..Default::default() };
        let found: Vec<String> = keys.problems().into_iter().map(|(key, _)| key).collect();
        assert_eq!(found, ["keys.cache_ttl_ms"]);
        let keys = KeySettings { cache_ttl_ms: 60_000, cache_tenants: 3, ..Default::default() };
        assert_eq!(keys.cache_limits().ttl, Duration::from_secs(60));
        assert_eq!(keys.cache_limits().tenants, 3);
    }
}
