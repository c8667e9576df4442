//! Building and running the server: [`Application::build`] opens the store
//! the configuration names (SQLite or PostgreSQL), loads the keys, binds the
//! listener (port 0 picks a free port, and
//! [`Application::local_addr`] reports it) and wires the services behind
//! mutual TLS; [`Application::run_until_stopped`] serves until the shutdown
//! future completes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use mnvault_keys::{RootKeyFile, RootKeyProvider};
use mnvault_proto::v1::admin_service_server::AdminServiceServer;
use mnvault_proto::v1::audit_service_server::AuditServiceServer;
use mnvault_proto::v1::filing_service_server::FilingServiceServer;
use mnvault_proto::v1::token_service_server::TokenServiceServer;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use mnvault_core::authz::Policy;
use mnvault_core::keyring::AuditKeyError;
use mnvault_core::VaultCore;

use crate::config::Settings;
use crate::service::{AdminApi, AuditApi, FilingApi, TokenApi, VaultContext};
use crate::store::{OpenMode, Store, StoreError};

/// Why the vault could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    /// A dev vault was asked to listen beyond loopback.
    #[error("a dev vault listens only on loopback; {0} is not a loopback address")]
    DevNotLoopback(SocketAddr),
    /// The database file does not exist.
    #[error("no database at {0}; initialise the data directory with `mnvault init` (or `mnvault serve --dev`)")]
    NoDatabase(String),
    /// The root key file could not be opened.
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
    /// The listener or the TLS setup failed.
    #[error("cannot serve on {address}: {source}")]
    Transport {
        /// The address.
        address: String,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The root key provider the settings name.
pub fn root_key_provider(settings: &Settings) -> Result<Arc<dyn RootKeyProvider>, StartupError> {
    Ok(Arc::new(RootKeyFile::open(&settings.resolve(&settings.root_key.file))?))
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
    Ok(VaultCore::open(store, provider, Policy::new(&settings.principals)).await?)
}

/// A vault ready to serve.
pub struct Application {
    local_addr: SocketAddr,
    incoming: TcpIncoming,
    tls: ServerTlsConfig,
    context: Arc<VaultContext>,
    store: Arc<dyn Store>,
}

impl Application {
    /// Opens everything the settings name and binds the listener.
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        if settings.dev && !settings.listen.ip().is_loopback() {
            return Err(StartupError::DevNotLoopback(settings.listen));
        }
        let core = open_core(settings, OpenMode::Serve).await?;
        let store = core.store().clone();
        let context = Arc::new(VaultContext { core });
        let read = |path: &std::path::Path| {
            let path = settings.resolve(path);
            std::fs::read(&path).map_err(|source| StartupError::TlsFile { path, source })
        };
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(read(&settings.tls.cert)?, read(&settings.tls.key)?))
            // Every caller must present a certificate signed by this CA.
            .client_ca_root(Certificate::from_pem(read(&settings.tls.client_ca)?));
        let incoming = TcpIncoming::bind(settings.listen)
            .map_err(|e| StartupError::Transport { address: settings.listen.to_string(), source: e.into() })?
            .with_nodelay(Some(true));
        let local_addr = incoming
            .local_addr()
            .map_err(|e| StartupError::Transport { address: settings.listen.to_string(), source: e.into() })?;
        tracing::info!(%local_addr, database = %settings.database().describe(), "vault ready");
        Ok(Self { local_addr, incoming, tls, context, store })
    }

    /// The address actually bound (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then closes the database.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), StartupError> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter.set_serving::<TokenServiceServer<TokenApi>>().await;
        health_reporter.set_serving::<FilingServiceServer<FilingApi>>().await;
        health_reporter.set_serving::<AdminServiceServer<AdminApi>>().await;
        health_reporter.set_serving::<AuditServiceServer<AuditApi>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(mnvault_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| StartupError::Transport { address: self.local_addr.to_string(), source: e.into() })?;
        let address = self.local_addr.to_string();
        let served = Server::builder()
            .tls_config(self.tls)
            .map_err(|e| StartupError::Transport { address: address.clone(), source: e.into() })?
            .add_service(health_service)
            .add_service(reflection)
            .add_service(TokenServiceServer::new(TokenApi::new(self.context.clone())))
            .add_service(FilingServiceServer::new(FilingApi::new(self.context.clone())))
            .add_service(AdminServiceServer::new(AdminApi::new(self.context.clone())))
            .add_service(AuditServiceServer::new(AuditApi::new(self.context)))
            .serve_with_incoming_shutdown(self.incoming, shutdown)
            .await;
        self.store.close().await;
        served.map_err(|e| StartupError::Transport { address, source: e.into() })
    }
}
