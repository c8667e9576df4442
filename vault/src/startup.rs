//! Building and running the server: [`Application::build`] opens the store
//! the configuration names (SQLite or PostgreSQL), loads the keys, binds the
//! listener (port 0 picks a free port, and
//! [`Application::local_addr`] reports it) and wires the services behind
//! mutual TLS; [`Application::run_until_stopped`] serves until the shutdown
//! future completes. Connections are accepted by [`crate::serve`], within
//! the limits of `[limits]` ([`crate::config::LimitSettings`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use mnvault_keys::RootKeyProvider;
use mnvault_proto::v1::admin_service_server::AdminServiceServer;
use mnvault_proto::v1::audit_service_server::AuditServiceServer;
use mnvault_proto::v1::filing_service_server::FilingServiceServer;
use mnvault_proto::v1::key_service_server::KeyServiceServer;
use mnvault_proto::v1::token_service_server::TokenServiceServer;
use tokio::net::TcpListener;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tonic::service::Routes;

use mnvault_core::keyring::AuditKeyError;
use mnvault_core::VaultCore;

use crate::config::Settings;
use crate::metrics::{Metrics, MetricsListener};
use crate::service::{AdminApi, AuditApi, FilingApi, TokenApi, VaultContext};
use crate::store::{OpenMode, Store, StoreError};

/// Why the vault could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    /// A dev vault was asked to listen beyond loopback.
    #[error("a dev vault listens only on loopback; {0} is not a loopback address")]
    DevNotLoopback(SocketAddr),
    /// A production start found something made for development.
    #[error(transparent)]
    Dev(#[from] crate::datadir::DevError),
    /// A restore holds the data directory.
    #[error(transparent)]
    Restore(#[from] crate::backup::BackupError),
    /// A restore or adoption began changing the data directory and did not
    /// finish: its open filing jobs may not all be cancelled.
    #[error(
        "a restore or adopt did not finish ({0} is there); run `mnvault restore --adopt` to finish it, then start \
         the vault"
    )]
    RestorePending(std::path::PathBuf),
    /// This host's chain watermark exists but cannot be used.
    #[error(transparent)]
    Watermark(#[from] crate::watermark::WatermarkError),
    /// The database file does not exist.
    #[error("no database at {0}; initialise the data directory with `mnvault init` (or `mnvault serve --dev`)")]
    NoDatabase(String),
    /// The root key provider could not be opened, or does not answer.
    #[error(transparent)]
    RootKey(#[from] mnvault_keys::KeyError),
    /// The database could not be opened.
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    /// The audit-chain key could not be loaded.
    #[error(transparent)]
    AuditKey(#[from] AuditKeyError),
    /// A TLS file could not be read.
    #[error("cannot read TLS file {path}: {source}")]
    TlsFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate revocation list of `tls.crl` cannot be read or parsed.
    #[error("{key}: the certificate revocation list {} {reason}", path.display())]
    Crl {
        /// Its key, e.g. `tls.crl[0]`.
        key: String,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A limit of `[limits]` is out of range.
    #[error("invalid configuration: {0}")]
    Limits(String),
    /// `[identity]` names no usable identity source (the message names the key).
    #[error("invalid configuration: {0}")]
    Identity(String),
    /// `[collection]` names no origin a browser could reach.
    #[error("invalid configuration: {0}")]
    Collection(String),
    /// The listener or the TLS setup failed.
    #[error("cannot serve on {address}: {source}")]
    Transport {
        /// The address.
        address: String,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The root key provider the settings name ([`crate::root_key::open`]):
/// `[root_key]` and any previous root keys, each opened now, so a provider
/// that does not answer stops the start, named.
pub fn root_key_provider(settings: &Settings) -> Result<Arc<dyn RootKeyProvider>, StartupError> {
    Ok(crate::root_key::open(settings)?)
}

/// Opens the store the settings name.
pub async fn open_store(settings: &Settings, mode: OpenMode) -> Result<Arc<dyn Store>, StartupError> {
    let location = settings.database();
    if mode != OpenMode::Initialise && !location.may_exist() {
        return Err(StartupError::NoDatabase(location.describe()));
    }
    Ok(crate::store::open(&location, mode, settings.database.write_timeout()).await?)
}

/// The core over the store the settings name, its audit key loaded.
pub async fn open_core(settings: &Settings, mode: OpenMode) -> Result<VaultCore, StartupError> {
    let provider = root_key_provider(settings)?;
    let store = open_store(settings, mode).await?;
    let policy = settings.access_policy().map_err(StartupError::Identity)?;
    Ok(VaultCore::open(store, provider, policy).await?)
}

/// A vault ready to serve.
pub struct Application {
    local_addr: SocketAddr,
    listener: TcpListener,
    live: Arc<crate::reload::LiveSettings>,
    /// The configuration it was built with.
    settings: Settings,
    /// The one reloader of this vault: SIGHUP, the TLS file watch and
    /// [`Application::reloader`] share its view of the configuration in force.
    reloader: crate::reload::Reloader,
    context: Arc<VaultContext>,
    store: Arc<dyn Store>,
    metrics: Option<MetricsListener>,
    /// The collection page's listener, its TLS setup and public origin,
    /// when `[collection] listen` is set.
    page: Option<PageListener>,
    /// Keeps restores out of the data directory until the vault has stopped.
    _serving: Option<crate::backup::ServingLock>,
}

impl Application {
    /// Opens everything the settings name and binds the listener.
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        Self::build_with_root_key(settings, root_key_provider).await
    }

    /// [`Application::build`] with the root key provider `provider` makes
    /// from the settings (tests wrap the configured one, to unplug it).
    pub async fn build_with_root_key(
        settings: &Settings,
        provider: impl FnOnce(&Settings) -> Result<Arc<dyn RootKeyProvider>, StartupError>,
    ) -> Result<Self, StartupError> {
        if settings.dev && !settings.listen.ip().is_loopback() {
            return Err(StartupError::DevNotLoopback(settings.listen));
        }
        if !settings.dev {
            crate::datadir::check_production(settings)?;
        }
        settings.limits.validate().map_err(StartupError::Limits)?;
        settings.server.validate().map_err(StartupError::Limits)?;
        // TLS first: a directory `init` just made is told about its TLS files first.
        let tls = server_tls(settings)?;
        let policy = settings.access_policy().map_err(StartupError::Identity)?;
        let watermark = crate::watermark::FileWatermark::new(settings.data_dir.join(crate::watermark::WATERMARK_FILE));
        let _serving = crate::backup::ServingLock::serving(&settings.data_dir)?;
        let pending = crate::backup::restore_pending_path(&settings.data_dir);
        if std::fs::symlink_metadata(&pending).is_ok() {
            return Err(StartupError::RestorePending(pending));
        }
        // An unusable watermark refuses the start rather than pass for none.
        watermark.read()?;
        // The core gets a store and a key provider that count their failures.
        let metrics = Arc::new(Metrics::new());
        let provider = metrics.metered_keys(provider(settings)?);
        let store = metrics.metered_store(open_store(settings, OpenMode::Serve).await?);
        let core = VaultCore::open(store, provider, policy).await?;
        let core = core.with_key_cache(settings.keys.cache_limits()).with_watermark(Arc::new(watermark)).await?;
        let store = core.store().clone();
        let context = VaultContext::new(core, settings.limits.clone()).with_metrics(metrics);
        let context = Arc::new(context.with_alarms(&settings.alarms));
        let live = Arc::new(crate::reload::LiveSettings::new(tls, settings.server.clone()));
        let transport =
            |e: std::io::Error| StartupError::Transport { address: settings.listen.to_string(), source: e.into() };
        let listener = TcpListener::bind(settings.listen).await.map_err(transport)?;
        let local_addr = listener.local_addr().map_err(transport)?;
        let metrics = settings.metrics.bind(settings.dev).await?;
        let page = PageListener::bind(settings).await?;
        tracing::info!(%local_addr, database = %settings.database().describe(), "vault ready");
        let settings = settings.clone();
        let reloader = crate::reload::Reloader::new(context.clone(), live.clone(), settings.clone());
        Ok(Self { local_addr, listener, live, settings, reloader, context, store, metrics, page, _serving })
    }

    /// The address actually bound (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the metrics listener bound, if `[metrics] listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsListener::local_addr)
    }

    /// The collection page's public origin, if `[collection] listen` is set.
    pub fn page_url(&self) -> Option<String> {
        self.page.as_ref().map(|page| page.public_url.clone())
    }

    /// The core the vault serves, e.g. to read its integrity-failure count.
    pub fn context(&self) -> Arc<VaultContext> {
        self.context.clone()
    }

    /// What reloads this vault's configuration while it serves (SIGHUP
    /// does it through [`crate::lifecycle::Signals`], a changed TLS file
    /// through [`crate::tls_watch`]); see [`crate::reload`].
    pub fn reloader(&self) -> crate::reload::Reloader {
        self.reloader.clone()
    }

    /// Reloads read the configuration with `source` (see
    /// [`crate::reload::Reloader::with_source`]), whoever starts them.
    pub fn with_reload_source(
        mut self,
        source: impl Fn() -> Result<Settings, crate::config::ConfigError> + Send + Sync + 'static,
    ) -> Self {
        self.reloader = self.reloader.with_source(source);
        self
    }

    /// Serves until `shutdown` completes, then stops gracefully (see
    /// [`crate::lifecycle`]) and closes the database.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), StartupError> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let health = crate::health::watch(health_reporter, &self.context, &self.live).await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(mnvault_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| StartupError::Transport { address: self.local_addr.to_string(), source: e.into() })?;
        // Every service decodes at most its limit: one record for the token
        // service (and health, reflection), a job's worth for the others.
        let limits = self.context.limits();
        let (record, message) = (limits.max_record_message_bytes, limits.max_message_bytes);
        let ctx = &self.context;
        let routes = Routes::new(health_service.max_decoding_message_size(record))
            .add_service(reflection.max_decoding_message_size(record))
            .add_service(
                TokenServiceServer::new(TokenApi::new(ctx.clone()))
                    .max_decoding_message_size(record)
                    .max_encoding_message_size(message),
            )
            .add_service(
                FilingServiceServer::new(FilingApi::new(ctx.clone()))
                    .max_decoding_message_size(message)
                    .max_encoding_message_size(message),
            )
            .add_service(
                AdminServiceServer::new(AdminApi::new(ctx.clone()))
                    .max_decoding_message_size(message)
                    .max_encoding_message_size(message),
            )
            .add_service(
                AuditServiceServer::new(AuditApi::new(ctx.clone()))
                    .max_decoding_message_size(message)
                    .max_encoding_message_size(message),
            )
            .add_service(
                KeyServiceServer::new(crate::service::KeyApi::new(ctx.clone()))
                    .max_decoding_message_size(message)
                    .max_encoding_message_size(message),
            )
            .add_service(
                mnvault_proto::v1::collection_service_server::CollectionServiceServer::new(
                    crate::service::CollectionApi::new(ctx.clone(), self.page_url()),
                )
                .max_decoding_message_size(message)
                .max_encoding_message_size(message),
            )
            .add_service(
                mnvault_proto::v1::retention_service_server::RetentionServiceServer::new(
                    crate::service::RetentionApi::new(ctx.clone()),
                )
                .max_decoding_message_size(message)
                .max_encoding_message_size(message),
            )
            .prepare();
        // Served until this returns; dropping it stops the metrics listener.
        let _metrics = self.metrics.map(|listener| listener.spawn(self.context.clone()));
        // Runs until the vault is stopping; dropping it stops it too.
        let keys = &self.settings.keys;
        let _key_schedule =
            crate::key_schedule::spawn(self.context.clone(), keys.rotate_every_days, keys.rotation_check_interval_ms);
        let _purge = crate::purge::spawn(self.context.clone(), &self.settings.retention);
        let _checkpointer = crate::checkpointer::spawn(self.context.clone(), &self.settings.audit);
        let _tls_watch =
            crate::tls_watch::spawn(self.context.clone(), self.reloader.clone(), crate::tls_watch::POLL_INTERVAL);
        let _refresher = crate::refresh::spawn(self.context.clone(), crate::refresh::REFRESH_INTERVAL);
        // The audit sinks' tailers: they write what is left once calls have ended.
        let audit_sinks = crate::audit_sink::spawn(self.context.clone(), &self.settings);
        // The collection page stops when the vault starts stopping.
        let page = self.page.map(|page| {
            let desk = Arc::new(crate::service::PageDesk::new(self.context.clone()));
            let settings = crate::collect_page::PageSettings {
                public_origin: page.public_url,
                shutdown_grace: self.settings.server.shutdown_grace(),
                ..Default::default()
            };
            let stopping = self.context.stopping.child_token();
            tokio::spawn(crate::collect_page::serve(page.listener, page.tls, desk, settings, stopping))
        });
        let shutdown = health.stop_after(shutdown);
        crate::serve::serve(self.listener, self.live.tls.clone(), routes, self.context, shutdown).await;
        if let Some(page) = page {
            let _ = page.await;
        }
        health.stopped().await;
        audit_sinks.finish().await;
        self.store.close().await;
        Ok(())
    }
}

/// The collection page's bound listener, not serving yet.
struct PageListener {
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    /// `[collection] public_url`, or `https://<the address bound>`.
    public_url: String,
}

impl PageListener {
    /// Binds `[collection] listen`, if set; a dev vault only on loopback.
    async fn bind(settings: &Settings) -> Result<Option<Self>, StartupError> {
        let page = &settings.collection;
        let Some(address) = page.listen else { return Ok(None) };
        if settings.dev && !address.ip().is_loopback() {
            return Err(StartupError::DevNotLoopback(address));
        }
        let tls = Arc::new(page_tls(settings)?);
        let transport = |e: std::io::Error| StartupError::Transport { address: address.to_string(), source: e.into() };
        let listener = TcpListener::bind(address).await.map_err(transport)?;
        let local_addr = listener.local_addr().map_err(transport)?;
        let public_url = match &page.public_url {
            Some(url) => page_origin(url).map_err(StartupError::Collection)?,
            None if local_addr.ip().is_unspecified() => {
                return Err(StartupError::Collection(format!(
                    "collection.listen = \"{address}\" is every address: name the one employees reach in \
                     collection.public_url, e.g. \"https://vault.example.jp\""
                )))
            }
            None => format!("https://{local_addr}"),
        };
        tracing::info!(%local_addr, %public_url, "collection page ready");
        Ok(Some(Self { listener, tls, public_url }))
    }
}

/// `collection.public_url` as browsers write an origin (`Origin` headers
/// are compared with it): `https://`, a host in lowercase, a port only when
/// it is not 443, nothing after.
fn page_origin(url: &str) -> Result<String, String> {
    let refused = |why: &str| format!("collection.public_url {why}; write it as https://vault.example.jp[:port]");
    let uri: http::Uri = url.parse().map_err(|_| refused("is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(refused("must start with https:// (the page is served over TLS only)"));
    }
    let authority = uri.authority().ok_or_else(|| refused("names no host"))?;
    if authority.as_str().contains('@') || !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(refused("must be an origin: no user, path or query"));
    }
    let host = authority.host().to_ascii_lowercase();
    Ok(match authority.port_u16() {
        None | Some(443) => format!("https://{host}"),
        Some(port) => format!("https://{host}:{port}"),
    })
}

/// Server-only TLS for the collection page: employees have no client
/// certificates. The page's own certificate and key, or the vault's.
fn page_tls(settings: &Settings) -> Result<ServerConfig, StartupError> {
    let page = &settings.collection;
    let read = |path: &std::path::Path| {
        let path = settings.resolve(path);
        std::fs::read(&path).map_err(|source| StartupError::TlsFile { path, source })
    };
    let address = page.listen.map(|a| a.to_string()).unwrap_or_default();
    let invalid = |what: &str, error: &dyn std::fmt::Display| StartupError::Transport {
        address: address.clone(),
        source: format!("{what}: {error}").into(),
    };
    let certs = CertificateDer::pem_slice_iter(&read(page.cert.as_ref().unwrap_or(&settings.tls.cert))?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("the collection page's certificate is not PEM", &e))?;
    let key = PrivateKeyDer::from_pem_slice(&read(page.key.as_ref().unwrap_or(&settings.tls.key))?)
        .map_err(|e| invalid("the collection page's private key is not PEM", &e))?;
    ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid("the collection page's certificate and key do not fit", &e))
}

/// Mutual TLS as tonic's server sets it up: the vault's certificate, HTTP/2
/// by ALPN, and a client certificate signed by `tls.client_ca`, and on no
/// revocation list of `tls.crl`, required of every caller. `mnvault config
/// check` uses it too.
pub fn server_tls(settings: &Settings) -> Result<ServerConfig, StartupError> {
    let read = |path: &std::path::Path| {
        let path = settings.resolve(path);
        std::fs::read(&path).map_err(|source| StartupError::TlsFile { path, source })
    };
    let invalid = |what: &str, error: &dyn std::fmt::Display| StartupError::Transport {
        address: settings.listen.to_string(),
        source: format!("{what}: {error}").into(),
    };
    let certs = CertificateDer::pem_slice_iter(&read(&settings.tls.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("the vault's certificate (tls.cert) is not PEM", &e))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&settings.tls.key)?)
        .map_err(|e| invalid("the vault's private key (tls.key) is not PEM", &e))?;
    let mut roots = RootCertStore::empty();
    let client_ca = CertificateDer::pem_slice_iter(&read(&settings.tls.client_ca)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("the client CA (tls.client_ca) is not PEM", &e))?;
    roots.add_parsable_certificates(client_ca);
    let mut crls = Vec::new();
    for (index, file) in settings.tls.crl.iter().enumerate() {
        crls.extend(read_crls(&settings.resolve(file), index)?);
    }
    // A list covers the certificates of its own issuer; those of another
    // client CA, without a list here, are not refused for it.
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .with_crls(crls)
        .allow_unknown_revocation_status()
        .build()
        .map_err(|e| {
            invalid("the client CA (tls.client_ca) and revocation lists (tls.crl) cannot verify clients", &e)
        })?;
    let mut config = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| invalid("the vault's certificate and key do not fit", &e))?;
    config.alpn_protocols.push(b"h2".to_vec());
    Ok(config)
}

/// The revocation lists in `path`, the file of `tls.crl[index]`: one DER
/// list, or PEM with one or more `X509 CRL` blocks. Each is parsed here, so
/// that a bad one is named by its file rather than by the TLS setup.
fn read_crls(path: &std::path::Path, index: usize) -> Result<Vec<CertificateRevocationListDer<'static>>, StartupError> {
    let problem =
        |reason: String| StartupError::Crl { key: format!("tls.crl[{index}]"), path: path.to_owned(), reason };
    let bytes = std::fs::read(path).map_err(|error| problem(format!("cannot be read: {error}")))?;
    let crls = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| problem(format!("is not PEM: {error}")))?;
        if crls.is_empty() {
            return Err(problem("holds no X509 CRL block".into()));
        }
        crls
    } else {
        vec![CertificateRevocationListDer::from(bytes)]
    };
    for crl in &crls {
        x509_parser::parse_x509_crl(crl)
            .map_err(|error| problem(format!("is not a certificate revocation list (PEM or DER): {error}")))?;
    }
    Ok(crls)
}

#[cfg(test)]
mod tests {
    use super::page_origin;

    #[test]
    fn a_public_url_is_read_as_browsers_write_origins() {
        assert_eq!(page_origin("https://Vault.Example.jp/").unwrap(), "https://vault.example.jp");
        assert_eq!(page_origin("https://vault.example.jp:443").unwrap(), "https://vault.example.jp");
        assert_eq!(page_origin("https://127.0.0.1:50443").unwrap(), "https://127.0.0.1:50443");
        for bad in
            ["http://vault.example.jp", "https://vault.example.jp/collect", "https://u@vault.example.jp", "vault"]
        {
            assert!(page_origin(bad).is_err(), "{bad}");
        }
    }
}
