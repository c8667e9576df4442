//! Tenant keys in memory: unwrapped on first use through the root key
//! provider and cached. Unwrapped keys live only inside [`TenantKeys`], which
//! zeroizes them; the cache never hands out key bytes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use mnvault_keys::{AuditChainKey, KeyMaterial, RootKeyProvider, StateKey, TenantKeys, WrapContext};

use crate::error::VaultError;
use crate::id::TenantId;
use crate::store::{NewTenant, Store, StoreError};

/// Name of the audit-chain key in the `system_keys` table.
pub const AUDIT_CHAIN_KEY_NAME: &str = "audit-chain";

/// Unwraps and caches tenant keys.
pub struct Keyring {
    provider: Arc<dyn RootKeyProvider>,
    store: Arc<dyn Store>,
    tenants: RwLock<HashMap<TenantId, Arc<TenantKeys>>>,
}

impl Keyring {
    /// A keyring over `store`, unwrapping with `provider`.
    pub fn new(provider: Arc<dyn RootKeyProvider>, store: Arc<dyn Store>) -> Self {
        Self { provider, store, tenants: RwLock::new(HashMap::new()) }
    }

    /// The provider keys are unwrapped with.
    pub fn provider(&self) -> &Arc<dyn RootKeyProvider> {
        &self.provider
    }

    /// The keys of `tenant`; `NotFound` if the tenant does not exist.
    pub async fn tenant_keys(&self, tenant: &TenantId) -> Result<Arc<TenantKeys>, VaultError> {
        if let Some(keys) = self.tenants.read().expect("keyring lock").get(tenant) {
            return Ok(keys.clone());
        }
        let stored = self
            .store
            .begin_read()
            .await?
            .tenant(tenant)
            .await?
            .ok_or_else(|| VaultError::NotFound(format!("tenant \"{tenant}\" does not exist")))?;
        let unwrap_failed = |error| {
            tracing::error!(%tenant, %error, provider = %self.provider.describe(), "cannot unwrap tenant key");
            VaultError::Internal
        };
        let name = tenant.as_str();
        let index_key = self
            .provider
            .unwrap(&stored.index_key, &WrapContext::TenantIndexKey { tenant: name })
            .map_err(unwrap_failed)?;
        let mut record_keys = Vec::with_capacity(stored.record_keys.len());
        for (version, wrapped) in &stored.record_keys {
            let key = self
                .provider
                .unwrap(wrapped, &WrapContext::TenantRecordKey { tenant: name, version: *version })
                .map_err(unwrap_failed)?;
            record_keys.push((*version, key));
        }
        let keys = Arc::new(TenantKeys::new(name, &index_key, record_keys).map_err(unwrap_failed)?);
        self.tenants.write().expect("keyring lock").insert(tenant.clone(), keys.clone());
        Ok(keys)
    }

    /// Fresh random keys for a new tenant, wrapped by the root key.
    pub fn new_tenant(&self, tenant: &TenantId, display_name: &str, created_at: i64) -> Result<NewTenant, VaultError> {
        new_tenant(self.provider.as_ref(), tenant, display_name, created_at)
    }
}

/// Fresh random keys for a new tenant, wrapped by `provider`.
pub fn new_tenant(
    provider: &dyn RootKeyProvider,
    tenant: &TenantId,
    display_name: &str,
    created_at: i64,
) -> Result<NewTenant, VaultError> {
    let wrap_failed = |error| {
        tracing::error!(%tenant, %error, "cannot wrap a new tenant key");
        VaultError::Internal
    };
    let name = tenant.as_str();
    let index_key =
        provider.wrap(&KeyMaterial::generate(), &WrapContext::TenantIndexKey { tenant: name }).map_err(wrap_failed)?;
    let first_record_key = provider
        .wrap(&KeyMaterial::generate(), &WrapContext::TenantRecordKey { tenant: name, version: 1 })
        .map_err(wrap_failed)?;
    Ok(NewTenant {
        tenant: tenant.clone(),
        display_name: display_name.to_owned(),
        created_at,
        index_key,
        first_record_key,
    })
}

/// Why the audit-chain key could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditKeyError {
    /// The database has no audit key: it was not initialised.
    #[error("the database holds no audit-chain key; initialise it with `mnvault init` (or `mnvault serve --dev`)")]
    Missing,
    /// The database already has one: it was initialised before.
    #[error("the database already holds a vault (it has an audit-chain key); use it, or choose another database")]
    AlreadyInitialised,
    /// The key did not unwrap: the root key is not the one the database was made with.
    #[error("the audit-chain key does not unwrap with {provider}; is this the root key this vault was created with?")]
    Unwrap {
        /// The provider tried.
        provider: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates the audit-chain key at initialisation.
pub async fn create_audit_key(
    store: &dyn Store,
    provider: &dyn RootKeyProvider,
    now: i64,
) -> Result<(), AuditKeyError> {
    let wrapped = provider
        .wrap(&KeyMaterial::generate(), &WrapContext::AuditChainKey)
        .map_err(|_| AuditKeyError::Unwrap { provider: provider.describe() })?;
    let mut tx = store.begin_write().await?;
    if !tx.insert_system_key(AUDIT_CHAIN_KEY_NAME, &wrapped, now).await? {
        return Err(AuditKeyError::AlreadyInitialised);
    }
    tx.commit().await?;
    Ok(())
}

/// The vault's own keys, both derived from the one stored system key (the
/// audit-chain key), which only the root key unwraps.
#[derive(Debug)]
pub struct SystemKeys {
    /// MAC of the audit chain.
    pub audit_chain: AuditChainKey,
    /// MAC of state rows ([`crate::integrity`]).
    pub state: StateKey,
}

/// Loads and unwraps the system key and derives the vault's keys from it.
pub async fn load_system_keys(store: &dyn Store, provider: &dyn RootKeyProvider) -> Result<SystemKeys, AuditKeyError> {
    let wrapped = store.begin_read().await?.system_key(AUDIT_CHAIN_KEY_NAME).await?.ok_or(AuditKeyError::Missing)?;
    let material = provider
        .unwrap(&wrapped, &WrapContext::AuditChainKey)
        .map_err(|_| AuditKeyError::Unwrap { provider: provider.describe() })?;
    Ok(SystemKeys { audit_chain: AuditChainKey::new(&material), state: StateKey::new(&material) })
}
