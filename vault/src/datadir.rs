//! The data directory: what `mnvault init` and the first `mnvault serve --dev`
//! put in it.
//!
//! ```text
//! <data-dir>/            mode 0700; every file in it 0600, every directory 0700
//!   DEVELOPMENT          dev only: marks a directory made for development
//!   mnvault.toml         configuration
//!   root.key             root key file (production: keep it elsewhere, or in an HSM)
//!   vault.db, -wal, -shm SQLite database: sealed records, jobs, audit log
//!                        (absent when `database.url` names PostgreSQL)
//!   dev-pki/             dev only: ca.pem, server.crt/key, <principal>.crt/key
//! ```
//!
//! Dev stays dev: the `DEVELOPMENT` marker is written before anything else
//! of a dev directory, so even an interrupted dev initialisation leaves it. A
//! marked directory loads as dev whatever its configuration says
//! ([`Settings::load`]), which keeps it on loopback, and a production start
//! refuses it, any certificate of the dev PKI and the dev trust domain
//! ([`check_production`]).
//!
//! Initialising writes the schema and the audit-chain key into the database.
//! A PostgreSQL database is initialised once; further replicas only serve it.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use mnvault_core::audit::{AuditDraft, Operation};
use mnvault_core::authz::{IdentitySource, Policy, Role};
use mnvault_core::id::{Principal, TenantId};
use mnvault_core::keyring::{create_audit_key, AuditKeyError};
use mnvault_core::text::FreeText;
use mnvault_core::VaultCore;
use mnvault_keys::RootKeyProvider;

use crate::config::{
    ConfigError, DatabaseSettings, IdentitySettings, IdentitySourceSetting, PrincipalSettings, RootKeySettings,
    Settings, TlsSettings, CONFIG_FILE,
};
use crate::dev_pki::{self, PkiError, DEV_PRINCIPALS};
use crate::store::{OpenMode, StoreError};

/// Root key file name inside the data directory.
pub const ROOT_KEY_FILE: &str = "root.key";
/// Dev PKI directory inside the data directory.
pub const DEV_PKI_DIR: &str = "dev-pki";
/// The tenant a dev vault starts with.
pub use crate::dev_pki::DEV_TENANT;
/// Address a dev vault listens on.
pub const DEV_LISTEN: &str = "127.0.0.1:50051";
/// Address a dev vault serves its collection page on, unless its
/// configuration names another.
pub const DEV_PAGE_LISTEN: &str = "127.0.0.1:50443";
/// Principal recorded in the audit log for what initialisation does.
pub const INIT_PRINCIPAL: &str = "mnvault-init";
/// The file that marks a data directory made for development.
pub const DEV_MARKER_FILE: &str = "DEVELOPMENT";

/// What the marker file says to whoever finds it.
const DEV_MARKER_TEXT: &str = "\
This data directory was made by `mnvault serve --dev` for development.
Its certificate authority's key sits unencrypted in dev-pki/ and every dev
principal may act on every tenant. mnvault serves it on loopback only, and
a production start (`mnvault serve` without --dev) refuses it.
Never put real My Numbers in it. For production, run `mnvault init` in a new
directory.
";

/// Why a production start refused: something made for development.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevError {
    /// The data directory was made for development.
    #[error(
        "{0} was made for development ({DEV_MARKER_FILE} or {DEV_PKI_DIR}/ is in it): start it with `mnvault serve --dev`, which \
         listens on loopback only, or initialise a production data directory with `mnvault init`"
    )]
    DevDataDir(PathBuf),
    /// A TLS file holds a certificate of the dev PKI.
    #[error(
        "{path} is a certificate of the mnvault dev PKI, whose CA key lies unencrypted in a dev data directory; \
         a production vault needs certificates from your own CA"
    )]
    DevCertificate {
        /// The TLS file.
        path: PathBuf,
    },
    /// `identity.trust_domain` is the dev vault's.
    #[error(
        "identity.trust_domain is \"{}\", the dev vault's: any dev data directory can mint identities in it; \
         choose your own (e.g. vault.example.jp) and issue certificates in it (`mnvault pki init`)",
        dev_pki::DEV_TRUST_DOMAIN
    )]
    DevTrustDomain,
}

/// Why a data directory could not be initialised.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// It already holds a vault.
    #[error("{0} already holds a vault ({CONFIG_FILE} exists); use it, or choose another directory")]
    AlreadyInitialised(PathBuf),
    /// It holds a production vault but `--dev` was asked for.
    #[error("{0} holds a vault that is not a dev setup; run without --dev")]
    NotDev(PathBuf),
    /// A production vault was asked for in a directory marked for development.
    #[error(
        "{0} was made for development ({DEV_MARKER_FILE} is in it); initialise a production vault in another \
         directory"
    )]
    DevDataDir(PathBuf),
    /// A directory could not be created.
    #[error("cannot create {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The root key file could not be created.
    #[error(transparent)]
    RootKey(#[from] mnvault_keys::KeyError),
    /// The dev PKI could not be created.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The database could not be created.
    #[error("cannot create the database: {0}")]
    Store(#[from] StoreError),
    /// The audit key could not be created.
    #[error(transparent)]
    AuditKey(#[from] AuditKeyError),
    /// The configuration could not be written or read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The dev tenant could not be created.
    #[error("cannot create the dev tenant: {0}")]
    Tenant(#[from] mnvault_core::VaultError),
}

/// Whether `data_dir` holds an initialised vault.
pub fn is_initialised(data_dir: &Path) -> bool {
    data_dir.join(CONFIG_FILE).exists()
}

/// Whether `data_dir` is marked as made for development. Any entry by that
/// name counts, so that a marker cannot be hidden by making it something odd.
pub fn is_marked_dev(data_dir: &Path) -> bool {
    std::fs::symlink_metadata(data_dir.join(DEV_MARKER_FILE)).is_ok()
}

/// Marks `data_dir` as made for development.
fn mark_dev(data_dir: &Path) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(DEV_MARKER_FILE);
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(DEV_MARKER_TEXT.as_bytes())?;
    file.sync_all()
}

/// Refuses, for a production start, development material: a data directory
/// marked for development, and a server certificate or client CA of the dev
/// PKI. A TLS file that cannot be read is left to the start to report.
pub fn check_production(settings: &Settings) -> Result<(), DevError> {
    // The dev CA's key beside the data counts as a dev directory even when
    // the marker was removed: anyone who reads it can mint any principal.
    if is_marked_dev(&settings.data_dir) || settings.data_dir.join(DEV_PKI_DIR).exists() {
        return Err(DevError::DevDataDir(settings.data_dir.clone()));
    }
    for file in [&settings.tls.cert, &settings.tls.client_ca] {
        let path = settings.resolve(file);
        if std::fs::read(&path).is_ok_and(|pem| dev_pki::is_dev_pki_pem(&pem)) {
            return Err(DevError::DevCertificate { path });
        }
    }
    if settings.identity.trust_domain.eq_ignore_ascii_case(dev_pki::DEV_TRUST_DOMAIN) {
        return Err(DevError::DevTrustDomain);
    }
    Ok(())
}

/// Settings of a dev vault in `data_dir`: dev PKI, identities from SPIFFE
/// IDs in [`dev_pki::DEV_TRUST_DOMAIN`] as in production (see
/// [`dev_pki::dev_identity`] for what each dev principal may do).
pub fn dev_settings(data_dir: &Path) -> Settings {
    let pki = PathBuf::from(DEV_PKI_DIR);
    Settings {
        listen: DEV_LISTEN.parse().expect("valid address"),
        dev: true,
        root_key: RootKeySettings::file(PathBuf::from(ROOT_KEY_FILE)),
        database: DatabaseSettings::default(),
        tls: TlsSettings {
            cert: pki.join(dev_pki::SERVER_CERT_FILE),
            key: pki.join(dev_pki::SERVER_KEY_FILE),
            client_ca: pki.join(dev_pki::CA_CERT_FILE),
            crl: Vec::new(),
        },
        identity: IdentitySettings {
            source: IdentitySourceSetting::Spiffe,
            trust_domain: dev_pki::DEV_TRUST_DOMAIN.to_owned(),
        },
        principals: BTreeMap::new(),
        limits: Default::default(),
        server: Default::default(),
        log: Default::default(),
        metrics: Default::default(),
        keys: Default::default(),
        retention: Default::default(),
        audit: Default::default(),
        alarms: Default::default(),
        collection: Default::default(),
        data_dir: data_dir.to_owned(),
    }
}

/// Settings of a production vault: TLS files and principals are the operator's to fill in.
pub fn production_settings(data_dir: &Path) -> Settings {
    Settings {
        listen: "0.0.0.0:50051".parse().expect("valid address"),
        dev: false,
        root_key: RootKeySettings::file(PathBuf::from(ROOT_KEY_FILE)),
        database: DatabaseSettings::default(),
        tls: TlsSettings {
            cert: PathBuf::from("tls/server.crt"),
            key: PathBuf::from("tls/server.key"),
            client_ca: PathBuf::from("tls/client-ca.pem"),
            crl: Vec::new(),
        },
        identity: IdentitySettings::default(),
        principals: BTreeMap::new(),
        limits: Default::default(),
        server: Default::default(),
        log: Default::default(),
        metrics: Default::default(),
        keys: Default::default(),
        retention: Default::default(),
        audit: Default::default(),
        alarms: Default::default(),
        collection: Default::default(),
        data_dir: data_dir.to_owned(),
    }
}

/// Initialises `data_dir` with `settings`: root key, database schema, audit
/// key and, for a dev vault, the dev PKI and the `demo` tenant. The
/// configuration is written last, so a directory without it is not a vault.
pub async fn initialise(settings: &Settings) -> Result<(), InitError> {
    let data_dir = &settings.data_dir;
    if is_initialised(data_dir) {
        return Err(InitError::AlreadyInitialised(data_dir.clone()));
    }
    if !settings.dev && is_marked_dev(data_dir) {
        return Err(InitError::DevDataDir(data_dir.clone()));
    }
    // A root key without a configuration is a vault whose mnvault.toml went
    // missing, not an empty directory: never mark it dev, never overwrite it.
    // (A key in an HSM has no file; `root_key::create` refuses to replace it.)
    let file = &settings.root_key.file;
    if !file.as_os_str().is_empty() && settings.resolve(file).exists() {
        return Err(InitError::AlreadyInitialised(data_dir.clone()));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|source| InitError::Io { path: data_dir.clone(), source })?;
    // An existing directory keeps its mode from DirBuilder; tighten it.
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|source| InitError::Io { path: data_dir.clone(), source })?;
    if settings.dev {
        // First, so that whatever else this leaves behind is known as dev.
        mark_dev(data_dir).map_err(|source| InitError::Io { path: data_dir.join(DEV_MARKER_FILE), source })?;
    }
    let provider: Arc<dyn RootKeyProvider> = crate::root_key::create_initial(settings)?;
    let location = settings.database();
    let store = crate::store::open(&location, OpenMode::Initialise, settings.database.write_timeout()).await?;
    let now = mnvault_core::clock::now_ms();
    let created = create_audit_key(store.as_ref(), provider.as_ref(), now).await;
    if let Err(error) = created {
        store.close().await;
        return Err(error.into());
    }
    if settings.dev {
        dev_pki::create_dev_pki(&data_dir.join(DEV_PKI_DIR), &DEV_PRINCIPALS)?;
        create_dev_tenant(store.clone(), provider).await?;
    }
    store.close().await;
    settings.save()?;
    Ok(())
}

/// Creates the `demo` tenant as [`INIT_PRINCIPAL`], granted the admin role
/// for this one call.
async fn create_dev_tenant(
    store: Arc<dyn crate::store::Store>,
    provider: Arc<dyn RootKeyProvider>,
) -> Result<(), InitError> {
    let init = Principal::parse(INIT_PRINCIPAL).expect("a valid principal");
    let grant = PrincipalSettings { roles: vec![Role::KeyAdmin], tenants: vec!["*".into()] };
    let policy = Policy::new(&BTreeMap::from([(INIT_PRINCIPAL.to_owned(), grant)]), IdentitySource::CommonName);
    let core = VaultCore::open(store, provider, policy).await?;
    let tenant = TenantId::parse(DEV_TENANT).expect("a valid tenant");
    let name = FreeText::parse("Demo tenant (dev)", "display name").expect("valid text");
    let draft = AuditDraft::by(&init, Operation::CreateTenant, Some(&tenant));
    core.create_tenant(&init, &tenant, name, &draft).await?;
    Ok(())
}

/// The settings of the dev vault in `data_dir`, initialising it on first use
/// (with its data in `database_url` when given, else in SQLite beside it).
pub async fn ensure_dev(data_dir: &Path, database_url: Option<&str>) -> Result<Settings, InitError> {
    if !is_initialised(data_dir) {
        let mut settings = dev_settings(data_dir);
        if let Some(url) = database_url {
            settings.database.url = url.to_owned();
        }
        initialise(&settings).await?;
    }
    let mut settings = Settings::load(data_dir)?;
    if !settings.dev {
        return Err(InitError::NotDev(data_dir.to_owned()));
    }
    if !is_marked_dev(data_dir) {
        // A dev directory made before the marker existed: its configuration
        // says dev (no environment variable can), so mark it now.
        mark_dev(data_dir).map_err(|source| InitError::Io { path: data_dir.join(DEV_MARKER_FILE), source })?;
    }
    if let Some(url) = database_url {
        settings.database.url = url.to_owned();
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA certificate of the operator's own, not the dev PKI's.
    fn own_ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::OrganizationName, "Example payroll company");
        name.push(rcgen::DnType::CommonName, "Example vault CA");
        params.distinguished_name = name;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[tokio::test]
    async fn a_directory_holding_a_root_key_is_never_made_dev() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ROOT_KEY_FILE), "a production key").unwrap();
        let refused = initialise(&dev_settings(dir.path())).await;
        assert!(matches!(refused, Err(InitError::AlreadyInitialised(_))), "{refused:?}");
        assert!(!is_marked_dev(dir.path()));
        assert_eq!(std::fs::read_to_string(dir.path().join(ROOT_KEY_FILE)).unwrap(), "a production key");
    }

    #[test]
    fn production_refuses_the_dev_ca_as_client_ca_and_a_marked_directory() {
        let dir = tempfile::tempdir().unwrap();
        let settings = production_settings(dir.path());
        let (cert, client_ca) = (settings.resolve(&settings.tls.cert), settings.resolve(&settings.tls.client_ca));
        std::fs::create_dir_all(cert.parent().unwrap()).unwrap();
        // Missing TLS files are left to the start to report.
        check_production(&settings).unwrap();
        let own = own_ca_pem();
        std::fs::write(&cert, &own).unwrap();
        std::fs::write(&client_ca, &own).unwrap();
        check_production(&settings).unwrap();

        let pki = dir.path().join("elsewhere");
        dev_pki::create_dev_pki(&pki, &["someone"]).unwrap();
        std::fs::copy(pki.join(dev_pki::CA_CERT_FILE), &client_ca).unwrap();
        match check_production(&settings) {
            Err(DevError::DevCertificate { path }) => assert_eq!(path, client_ca),
            other => panic!("the dev CA was accepted as client CA: {other:?}"),
        }

        std::fs::write(&client_ca, &own).unwrap();
        let mut dev_domain = settings.clone();
        dev_domain.identity.trust_domain = dev_pki::DEV_TRUST_DOMAIN.to_uppercase();
        assert!(matches!(check_production(&dev_domain), Err(DevError::DevTrustDomain)));
        mark_dev(dir.path()).unwrap();
        assert!(matches!(check_production(&settings), Err(DevError::DevDataDir(_))));
    }
}
