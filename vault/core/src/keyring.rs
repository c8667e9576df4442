//! Tenant keys in memory: unwrapped through the root key provider on first
//! use and cached for a bounded time, for a bounded number of tenants.
//! Unwrapped keys live only inside [`TenantKeys`]; the cache never hands out
//! key bytes.
//!
//! # The cache
//!
//! An unwrap is a round trip to the root key provider (an HSM, later) for
//! every key of the tenant, after a database read: too slow for every call,
//! so the result is kept, within [`KeyCacheLimits`]:
//!
//! - **Time.** An entry is served only while less than `ttl` has passed
//!   since its keys were read from the database (the read before the
//!   unwrap). After that the next call for the tenant reads and unwraps
//!   again. There is no background task (the core has no runtime): expired
//!   entries are dropped by the next call on the keyring, for any tenant, so
//!   on a vault that receives no call at all they stay in memory until one
//!   arrives.
//! - **Tenants.** At most `tenants` entries; inserting one more drops the
//!   least recently used.
//! - **Rotation** (adding a record-key version, issue 7). A cached entry
//!   does not see a version added after its read, so for up to `ttl` a
//!   vault may keep sealing under the previous primary version (which is
//!   why a version is retired only once its successor is older than `ttl`).
//!   [`Keyring::forget`] drops the entry on the vault that rotates; a vault
//!   asked to open a record under a version its entry lacks (sealed or
//!   rewrapped on another replica) reads the tenant's keys again once
//!   ([`Keyring::tenant_keys_with`]) instead of failing with
//!   [`KeyError::UnknownKeyVersion`]; every other entry learns of the new
//!   version within `ttl`.
//!
//! Concurrent misses for one tenant are single-flight: one call reads and
//! unwraps, the others wait for it and take its entry. If it fails (tenant
//! not found, database or provider down), nothing is cached and each waiter
//! then tries in turn, one at a time. Misses for different tenants do not
//! wait for each other.
//!
//! # What eviction wipes
//!
//! The cache holds an `Arc<TenantKeys>`; an entry that expires, is evicted
//! or forgotten drops the cache's `Arc`. Calls in flight that took the keys
//! before keep their own `Arc` until they finish, and the keys are dropped
//! with the last one. Dropping [`TenantKeys`] wipes the AES round keys of
//! each record-key version (the `aes` crate's `zeroize` feature, turned on
//! in the workspace `Cargo.toml`). It does not wipe the blind-index key's
//! HMAC state (hmac 0.12 cannot) nor the GHASH key each version's cipher
//! keeps (polyval 0.6's dispatching backend never drops it; the `ghash` and
//! `polyval` `zeroize` features wipe only each message's GHASH state). Both
//! are subkeys derived for this tenant and purpose; see "Secret hygiene" in
//! `mnvault-keys` and "Known limits" in ARCHITECTURE.md. The unwrapped key
//! material itself ([`KeyMaterial`]) is wiped as soon as the subkeys are
//! derived, whether the load succeeds or not.
//!
//! [`KeyError::UnknownKeyVersion`]: mnvault_keys::KeyError::UnknownKeyVersion

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mnvault_keys::{AuditChainKey, KeyError, KeyMaterial, RootKeyProvider, StateKey, TenantKeys, WrapContext};

use crate::error::VaultError;
use crate::id::TenantId;
use crate::store::{NewTenant, Store, StoreError};

/// What a caller reads when the root key provider does not answer.
pub const ROOT_KEY_UNAVAILABLE: &str = "the vault's root key provider does not answer, so the tenant's keys cannot be \
     opened; nothing was done; retry later (the vault's health reports NOT_SERVING until the provider is back), or \
     tell the vault's operator";

/// Name of the audit-chain key in the `system_keys` table.
pub const AUDIT_CHAIN_KEY_NAME: &str = "audit-chain";

/// How long a tenant's unwrapped keys are served from memory by default.
pub const DEFAULT_KEY_CACHE_TTL: Duration = Duration::from_secs(15 * 60);

/// The longest any vault may serve a tenant's keys from memory (the most
/// `keys.cache_ttl_ms` allows): a cached key set does not see a record-key
/// version added after its read, so retiring a version waits this long after
/// its successor was added, whatever this vault's own setting.
pub const MAX_KEY_CACHE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How many tenants' unwrapped keys are kept by default.
pub const DEFAULT_KEY_CACHE_TENANTS: usize = 10_000;

/// Bounds of the keyring's cache (see the [module documentation](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyCacheLimits {
    /// How long after their read from the database a tenant's keys are
    /// served from memory. Zero caches nothing: every call unwraps.
    pub ttl: Duration,
    /// How many tenants' keys are kept at most (at least one is).
    pub tenants: usize,
}

impl Default for KeyCacheLimits {
    fn default() -> Self {
        Self { ttl: DEFAULT_KEY_CACHE_TTL, tenants: DEFAULT_KEY_CACHE_TENANTS }
    }
}

/// Where the keyring reads the time; injectable so tests need not sleep.
type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Per tenant, the lock a miss holds while it reads and unwraps.
type Flights = Mutex<HashMap<TenantId, Arc<futures::lock::Mutex<()>>>>;

/// Unwraps and caches tenant keys.
pub struct Keyring {
    provider: Arc<dyn RootKeyProvider>,
    store: Arc<dyn Store>,
    /// Never held across an `.await`.
    cache: Mutex<Cache>,
    flights: Flights,
    clock: Clock,
    floor: Arc<PrimaryFloor>,
}

impl Keyring {
    /// A keyring over `store`, unwrapping with `provider`, with the default
    /// [`KeyCacheLimits`].
    pub fn new(provider: Arc<dyn RootKeyProvider>, store: Arc<dyn Store>) -> Self {
        Self::with_limits(provider, store, KeyCacheLimits::default())
    }

    /// A keyring whose cache keeps within `limits`.
    pub fn with_limits(provider: Arc<dyn RootKeyProvider>, store: Arc<dyn Store>, limits: KeyCacheLimits) -> Self {
        Self::with_clock(provider, store, limits, Arc::new(Instant::now))
    }

    fn with_clock(
        provider: Arc<dyn RootKeyProvider>,
        store: Arc<dyn Store>,
        limits: KeyCacheLimits,
        clock: Clock,
    ) -> Self {
        let floor = Arc::default();
        Self { provider, store, cache: Mutex::new(Cache::new(limits)), flights: Mutex::default(), clock, floor }
    }

    /// Refuses keys whose primary version is below `floor` says (shared
    /// with the core's chain watch, which raises it).
    pub fn with_primary_floor(mut self, floor: Arc<PrimaryFloor>) -> Self {
        self.floor = floor;
        self
    }

    /// The lowest primary version each tenant's keys may have.
    pub fn primary_floor(&self) -> &Arc<PrimaryFloor> {
        &self.floor
    }

    /// The provider keys are unwrapped with.
    pub fn provider(&self) -> &Arc<dyn RootKeyProvider> {
        &self.provider
    }

    /// The bounds of the cache.
    pub fn limits(&self) -> KeyCacheLimits {
        self.cache.lock().expect("keyring cache").limits
    }

    /// The keys of `tenant`, from the cache or read and unwrapped now;
    /// `NotFound` if the tenant does not exist (which is not cached).
    pub async fn tenant_keys(&self, tenant: &TenantId) -> Result<Arc<TenantKeys>, VaultError> {
        if let Some(keys) = self.cached(tenant) {
            return Ok(keys);
        }
        let flight = Flight::join(&self.flights, tenant);
        let _turn = flight.lock().lock().await;
        // The call that had the turn before may have loaded them.
        if let Some(keys) = self.cached(tenant) {
            return Ok(keys);
        }
        // Taken before the read: the entry's age counts from what the database said.
        let read_at = (self.clock)();
        let keys = Arc::new(self.load(tenant).await?);
        self.cache.lock().expect("keyring cache").insert(tenant, keys.clone(), read_at, (self.clock)());
        Ok(keys)
    }

    /// Drops the cached keys of `tenant`, so the next call reads them
    /// again (after a rotation). A miss already reading them may still
    /// cache what it read before; its entry then expires as any other.
    pub fn forget(&self, tenant: &TenantId) {
        self.cache.lock().expect("keyring cache").remove(tenant);
    }

    /// The keys of `tenant`, holding every one of `versions` if the
    /// database does: keys cached before a version was added (by a rotation
    /// on another replica) are read and unwrapped again, once. Records
    /// rewrapped elsewhere then open at once instead of after the cache's
    /// `ttl`. The answer may still lack a version the database lacks too;
    /// opening a record under it then fails as it would have.
    pub async fn tenant_keys_with(
        &self,
        tenant: &TenantId,
        versions: impl IntoIterator<Item = u32>,
    ) -> Result<Arc<TenantKeys>, VaultError> {
        let keys = self.tenant_keys(tenant).await?;
        self.keys_holding(tenant, keys, versions).await
    }

    /// `keys` (taken from this keyring earlier) if they hold every one of
    /// `versions`, else the tenant's keys read again once, as
    /// [`Keyring::tenant_keys_with`] does.
    pub async fn keys_holding(
        &self,
        tenant: &TenantId,
        keys: Arc<TenantKeys>,
        versions: impl IntoIterator<Item = u32>,
    ) -> Result<Arc<TenantKeys>, VaultError> {
        let held = keys.versions();
        if versions.into_iter().all(|version| held.contains(&version)) {
            return Ok(keys);
        }
        // Only the entry that lacked it: concurrent callers that saw the same
        // stale entry reload once between them, and a fresh one is kept.
        self.cache.lock().expect("keyring cache").remove_if(tenant, &keys);
        self.tenant_keys(tenant).await
    }

    /// The cached keys of `tenant`, if fresh; drops every expired entry first.
    fn cached(&self, tenant: &TenantId) -> Option<Arc<TenantKeys>> {
        self.cache.lock().expect("keyring cache").get(tenant, (self.clock)())
    }

    /// Reads the tenant's wrapped keys and unwraps them.
    async fn load(&self, tenant: &TenantId) -> Result<TenantKeys, VaultError> {
        let mut read = self.store.begin_read().await?;
        let stored = read
            .tenant(tenant)
            .await?
            .ok_or_else(|| VaultError::NotFound(format!("tenant \"{tenant}\" does not exist")))?;
        // A shredded tenant has no keys left: say so, and since when.
        if stored.record_keys.is_empty() {
            if let Some(at) = read.tenant_shredded_at(tenant).await? {
                return Err(crate::offboarding::shredded(tenant, at));
            }
        }
        drop(read);
        self.floor.check(tenant, stored.record_keys.iter().map(|(version, _)| *version).max().unwrap_or(0))?;
        let unwrap_failed = |error| {
            tracing::error!(%tenant, %error, provider = %self.provider.describe(), "cannot unwrap tenant key");
            match error {
                KeyError::ProviderUnreachable { .. } => VaultError::Unavailable(ROOT_KEY_UNAVAILABLE.into()),
                _ => VaultError::Internal,
            }
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
        TenantKeys::new(name, &index_key, record_keys).map_err(unwrap_failed)
    }

    /// Fresh random keys for a new tenant, wrapped by the root key.
    pub fn new_tenant(&self, tenant: &TenantId, display_name: &str, created_at: i64) -> Result<NewTenant, VaultError> {
        new_tenant(self.provider.as_ref(), tenant, display_name, created_at)
    }
}

/// Per tenant, the lowest its primary record-key version may be. Versions
/// are added one at a time (rotation, each an `ok` `keys.rotate` entry) and
/// the primary is never retired, so a tenant's primary is at least one more
/// than the rotations this process has seen in the chain it verified, and
/// at least any version it added itself. Stored key rows are not tagged: a
/// database writer who deletes the newest version's row would otherwise
/// have new numbers sealed under the previous (perhaps leaked) key again.
#[derive(Debug, Default)]
pub struct PrimaryFloor(Mutex<HashMap<String, Floor>>);

#[derive(Debug, Default, Clone, Copy)]
struct Floor {
    /// Successful rotations in the verified chain.
    rotations: u32,
    /// The highest version this process added itself.
    added: u32,
}

impl PrimaryFloor {
    /// Takes an entry of the verified chain into account.
    pub(crate) fn note(&self, entry: &crate::audit::AuditRecord) {
        use crate::audit::{Operation, Outcome};
        if entry.operation == Operation::RotateTenantKey.id() && entry.outcome == Outcome::Ok.id() {
            let mut floors = self.0.lock().expect("primary floor");
            let floor = floors.entry(entry.tenant.clone()).or_default();
            floor.rotations = floor.rotations.saturating_add(1);
        }
    }

    /// This process added `version` to `tenant`.
    pub(crate) fn added(&self, tenant: &TenantId, version: u32) {
        let mut floors = self.0.lock().expect("primary floor");
        let floor = floors.entry(tenant.to_string()).or_default();
        floor.added = floor.added.max(version);
    }

    /// Refuses a `primary` below the floor: the database lost versions.
    pub fn check(&self, tenant: &TenantId, primary: u32) -> Result<(), VaultError> {
        let floor = self.0.lock().expect("primary floor").get(tenant.as_str()).copied().unwrap_or_default();
        let lowest = floor.rotations.saturating_add(1).max(floor.added);
        if primary >= lowest {
            return Ok(());
        }
        tracing::error!(%tenant, primary, lowest, "the stored record-key versions of a tenant end below one the audit log records");
        Err(VaultError::DataLoss(format!(
            "the stored keys of tenant \"{tenant}\" end at record-key version {primary}, but the audit log records \
             version {lowest} being added: the database was changed; nothing was sealed or opened; tell the vault's \
             operator"
        )))
    }
}

/// The cached entries, in two orders: by last use (for eviction) and by
/// age (for expiry).
struct Cache {
    limits: KeyCacheLimits,
    entries: HashMap<TenantId, Entry>,
    /// Least recently used first, by the `used` stamp.
    by_use: BTreeMap<u64, TenantId>,
    /// Oldest first, by (`read_at`, `stamp`).
    by_age: BTreeMap<(Instant, u64), TenantId>,
    /// Source of stamps: every insert and every hit takes the next one.
    next_stamp: u64,
}

struct Entry {
    keys: Arc<TenantKeys>,
    /// When the keys were read from the database.
    read_at: Instant,
    /// Stamp of the insert: with `read_at`, the entry's key in `by_age`.
    stamp: u64,
    /// Stamp of the last use: its key in `by_use`.
    used: u64,
}

impl Cache {
    fn new(limits: KeyCacheLimits) -> Self {
        Self { limits, entries: HashMap::new(), by_use: BTreeMap::new(), by_age: BTreeMap::new(), next_stamp: 0 }
    }

    fn stamp(&mut self) -> u64 {
        self.next_stamp += 1;
        self.next_stamp
    }

    fn expired(&self, read_at: Instant, now: Instant) -> bool {
        now.saturating_duration_since(read_at) >= self.limits.ttl
    }

    /// Drops every entry whose time is up.
    fn expire(&mut self, now: Instant) {
        while let Some(((read_at, _), _)) = self.by_age.first_key_value() {
            if !self.expired(*read_at, now) {
                break;
            }
            if let Some((_, tenant)) = self.by_age.pop_first() {
                self.remove(&tenant);
            }
        }
    }

    fn get(&mut self, tenant: &TenantId, now: Instant) -> Option<Arc<TenantKeys>> {
        self.expire(now);
        let stamp = self.stamp();
        let entry = self.entries.get_mut(tenant)?;
        let name = self.by_use.remove(&entry.used).unwrap_or_else(|| tenant.clone());
        entry.used = stamp;
        self.by_use.insert(stamp, name);
        Some(entry.keys.clone())
    }

    fn insert(&mut self, tenant: &TenantId, keys: Arc<TenantKeys>, read_at: Instant, now: Instant) {
        self.expire(now);
        self.remove(tenant);
        if self.expired(read_at, now) {
            return;
        }
        while self.entries.len() >= self.limits.tenants.max(1) {
            let Some((_, oldest)) = self.by_use.pop_first() else { break };
            self.remove(&oldest);
        }
        let stamp = self.stamp();
        self.by_use.insert(stamp, tenant.clone());
        self.by_age.insert((read_at, stamp), tenant.clone());
        self.entries.insert(tenant.clone(), Entry { keys, read_at, stamp, used: stamp });
    }

    /// Drops `tenant`'s entry if it still holds `keys`.
    fn remove_if(&mut self, tenant: &TenantId, keys: &Arc<TenantKeys>) {
        if self.entries.get(tenant).is_some_and(|entry| Arc::ptr_eq(&entry.keys, keys)) {
            self.remove(tenant);
        }
    }

    /// Drops `tenant`'s entry, and with it the cache's `Arc` of its keys.
    fn remove(&mut self, tenant: &TenantId) {
        if let Some(entry) = self.entries.remove(tenant) {
            self.by_use.remove(&entry.used);
            self.by_age.remove(&(entry.read_at, entry.stamp));
        }
    }
}

/// A call's place in the single flight of its tenant's misses. The lock
/// is shared by every call missing the tenant at the same time, and
/// removed from `flights` when the last of them is done (or was dropped).
struct Flight<'a> {
    flights: &'a Flights,
    tenant: &'a TenantId,
    /// `None` only inside `drop`.
    lock: Option<Arc<futures::lock::Mutex<()>>>,
}

impl<'a> Flight<'a> {
    fn join(flights: &'a Flights, tenant: &'a TenantId) -> Self {
        let lock = flights.lock().expect("keyring flights").entry(tenant.clone()).or_default().clone();
        Self { flights, tenant, lock: Some(lock) }
    }

    fn lock(&self) -> &futures::lock::Mutex<()> {
        self.lock.as_deref().expect("set until dropped")
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut flights = self.flights.lock().expect("keyring flights");
        // Let go of ours under the map's lock, where every clone is made:
        // the count then says exactly whether another call still holds one.
        drop(self.lock.take());
        if flights.get(self.tenant).is_some_and(|lock| Arc::strong_count(lock) == 1) {
            flights.remove(self.tenant);
        }
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
    /// The database has no signing key, yet the audit log records
    /// certificates signed by one: it was deleted.
    #[error(
        "the database holds no signing key, but the audit log records deletion certificates signed by one: it was \
         deleted; restore the `signing` row of system_keys from a backup (a new key would leave those certificates \
         without a key that vouches for them)"
    )]
    SigningKeyLost,
    /// The database has no signing key yet: no vault has started on it.
    #[error("the database holds no signing key yet; a vault creates it on its first start")]
    SigningKeyMissing,
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

/// Name of the vault's Ed25519 signing key (its 32-byte seed) in the
/// `system_keys` table.
pub const SIGNING_KEY_NAME: &str = "signing";

/// The vault's signing key, created (and stored wrapped) on the first start
/// that finds none. Two replicas starting at once both draw one; the first
/// insert wins and the other reads it back.
pub async fn load_or_create_signing_key(
    store: &dyn Store,
    provider: &dyn RootKeyProvider,
    now: i64,
) -> Result<mnvault_keys::VaultSigningKey, AuditKeyError> {
    let unwrap_failed = |_| AuditKeyError::Unwrap { provider: provider.describe() };
    let mut wrapped = store.begin_read().await?.system_key(SIGNING_KEY_NAME).await?;
    if wrapped.is_none() {
        let fresh = provider.wrap(&KeyMaterial::generate(), &WrapContext::SigningKey).map_err(unwrap_failed)?;
        let mut tx = store.begin_write().await?;
        if tx.insert_system_key(SIGNING_KEY_NAME, &fresh, now).await? {
            tx.commit().await?;
            tracing::info!("created the vault's signing key");
            wrapped = Some(fresh);
        } else {
            drop(tx);
            wrapped = store.begin_read().await?.system_key(SIGNING_KEY_NAME).await?;
        }
    }
    let wrapped = wrapped.ok_or(AuditKeyError::Missing)?;
    let material = provider.unwrap(&wrapped, &WrapContext::SigningKey).map_err(unwrap_failed)?;
    Ok(mnvault_keys::VaultSigningKey::new(&material))
}

/// The vault's signing key as stored, never creating one (for commands
/// that only read, such as exporting its public half).
pub async fn load_signing_key(
    store: &dyn Store,
    provider: &dyn RootKeyProvider,
) -> Result<mnvault_keys::VaultSigningKey, AuditKeyError> {
    let wrapped =
        store.begin_read().await?.system_key(SIGNING_KEY_NAME).await?.ok_or(AuditKeyError::SigningKeyMissing)?;
    let material = provider
        .unwrap(&wrapped, &WrapContext::SigningKey)
        .map_err(|_| AuditKeyError::Unwrap { provider: provider.describe() })?;
    Ok(mnvault_keys::VaultSigningKey::new(&material))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use async_trait::async_trait;
    use futures::executor::block_on;
    use futures::FutureExt as _;
    use mnvault_keys::{BlindIndex, KeyError, WrappedKey, KEY_LEN};

    use super::*;
    use crate::audit::AuditRecord;
    use crate::id::{JobId, Token, TokenFormat};
    use crate::store::{AuditFilter, ChainHead, JobRow, ReadTx, RecordRow, StoredTenant, WriteTx};

    /// Unwraps to a key made of the wrapped bytes' first byte, and counts.
    #[derive(Default)]
    struct CountingProvider {
        unwraps: AtomicUsize,
    }

    impl RootKeyProvider for CountingProvider {
        fn describe(&self) -> String {
            "counting test provider".into()
        }

        fn wrap(&self, key: &KeyMaterial, _: &WrapContext<'_>) -> Result<WrappedKey, KeyError> {
            Ok(WrappedKey::from_bytes(vec![key.expose_secret()[0]]))
        }

        fn unwrap(&self, wrapped: &WrappedKey, _: &WrapContext<'_>) -> Result<KeyMaterial, KeyError> {
            self.unwraps.fetch_add(1, Ordering::SeqCst);
            let byte = *wrapped.as_bytes().first().ok_or(KeyError::UnwrapFailed)?;
            Ok(KeyMaterial::from_bytes([byte; KEY_LEN]))
        }
    }

    /// Tenants in memory; every read waits for `gate` first and is counted.
    #[derive(Default)]
    struct FakeStore {
        tenants: Mutex<HashMap<String, StoredTenant>>,
        reads: AtomicUsize,
        gate: futures::lock::Mutex<()>,
    }

    impl FakeStore {
        fn add(&self, tenant: &str) {
            let wrapped = |byte| WrappedKey::from_bytes(vec![byte]);
            let stored = StoredTenant {
                display_name: tenant.to_owned(),
                created_at: 0,
                index_key: wrapped(1),
                record_keys: vec![(1, wrapped(2)), (2, wrapped(3))],
            };
            self.tenants.lock().unwrap().insert(tenant.to_owned(), stored);
        }
    }

    /// Unwraps of one load: the index key and two record-key versions.
    const UNWRAPS_PER_LOAD: usize = 3;

    #[async_trait]
    impl Store for FakeStore {
        async fn begin_write(&self) -> Result<Box<dyn WriteTx>, StoreError> {
            unreachable!("the keyring never writes")
        }

        async fn begin_read(&self) -> Result<Box<dyn ReadTx>, StoreError> {
            drop(self.gate.lock().await);
            self.reads.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(FakeRead(self.tenants.lock().unwrap().clone())))
        }

        async fn close(&self) {}

        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    struct FakeRead(HashMap<String, StoredTenant>);

    #[async_trait]
    impl crate::store::RotationReadTx for FakeRead {
        async fn record_key_versions(&mut self, _: &TenantId) -> Result<Vec<crate::store::KeyVersionRow>, StoreError> {
            unreachable!()
        }
        async fn records_per_key_version(&mut self, _: &TenantId) -> Result<Vec<(u32, u64)>, StoreError> {
            unreachable!()
        }
        async fn any_record_under_version(&mut self, _: &TenantId, _: u32) -> Result<bool, StoreError> {
            unreachable!()
        }
        async fn tenant_ids(&mut self, _: &str, _: u32) -> Result<Vec<String>, StoreError> {
            unreachable!()
        }
        async fn records_to_rewrap(
            &mut self,
            _: &TenantId,
            _: Option<&Token>,
            _: u32,
            _: u32,
            _: u32,
        ) -> Result<crate::store::RewrapScan, StoreError> {
            unreachable!()
        }
    }
    #[async_trait]
    impl crate::store::TenantPolicyReadTx for FakeRead {
        async fn tenant_policy(&mut self, _: &TenantId) -> Result<Option<crate::store::TenantPolicyRow>, StoreError> {
            unreachable!()
        }
        async fn policy_proposal(
            &mut self,
            _: &TenantId,
        ) -> Result<Option<crate::store::PolicyProposalRow>, StoreError> {
            unreachable!()
        }
    }

    #[async_trait]
    impl crate::store::CollectionReadTx for FakeRead {
        async fn collections(
            &mut self,
            _: &TenantId,
            _: &[crate::id::CollectionId],
        ) -> Result<Vec<crate::store::CollectionRow>, StoreError> {
            unreachable!()
        }
        async fn collection_by_link(&mut self, _: &[u8]) -> Result<Option<crate::store::CollectionRow>, StoreError> {
            unreachable!()
        }
        async fn submitted_reissues(
            &mut self,
            _: &TenantId,
            _: &[crate::id::Token],
            _: u32,
        ) -> Result<Vec<crate::store::CollectionRow>, StoreError> {
            unreachable!()
        }
    }

    #[async_trait]
    impl crate::store::RootRotationReadTx for FakeRead {
        async fn wrapped_keys(
            &mut self,
            _: Option<&crate::store::WrappedKeySlot>,
            _: u32,
        ) -> Result<Vec<crate::store::StoredWrappedKey>, StoreError> {
            unreachable!()
        }
    }
    #[async_trait]
    impl crate::store::RetentionReadTx for FakeRead {
        async fn due_retention(
            &mut self,
            _: Option<&TenantId>,
            _: Option<(&str, &str)>,
            _: i64,
            _: u32,
        ) -> Result<Vec<crate::store::RetentionRow>, StoreError> {
            unreachable!()
        }
        async fn count_held_due(&mut self, _: Option<&TenantId>, _: i64) -> Result<u64, StoreError> {
            unreachable!()
        }
        async fn tombstones(
            &mut self,
            _: &TenantId,
            _: &[Token],
        ) -> Result<Vec<crate::store::TombstoneRow>, StoreError> {
            unreachable!()
        }
        async fn tombstones_between(
            &mut self,
            _: &TenantId,
            _: i64,
            _: i64,
            _: u32,
        ) -> Result<Vec<crate::store::TombstoneRow>, StoreError> {
            unreachable!()
        }
    }

    #[async_trait]
    impl crate::store::CheckpointReadTx for FakeRead {
        async fn audit_checkpoints(
            &mut self,
            _: u64,
            _: u32,
        ) -> Result<Vec<crate::audit::checkpoint::SignedCheckpoint>, StoreError> {
            unreachable!()
        }
        async fn latest_audit_checkpoint(
            &mut self,
        ) -> Result<Option<crate::audit::checkpoint::SignedCheckpoint>, StoreError> {
            unreachable!()
        }
        async fn audit_checkpoint_at_or_before(
            &mut self,
            _: u64,
        ) -> Result<Option<crate::audit::checkpoint::SignedCheckpoint>, StoreError> {
            unreachable!()
        }
        async fn audit_checkpoint_signed_before(
            &mut self,
            _: i64,
        ) -> Result<Option<crate::audit::checkpoint::SignedCheckpoint>, StoreError> {
            unreachable!()
        }
        async fn signing_keys(
            &mut self,
            _: u32,
        ) -> Result<Vec<crate::audit::checkpoint::SigningKeyRecord>, StoreError> {
            unreachable!()
        }
    }

    #[async_trait]
    impl crate::store::ReportReadTx for FakeRead {
        async fn report_token_groups(
            &mut self,
            _: &crate::audit::report::ReportFilter,
            _: crate::audit::report::Grouping,
            _: u32,
        ) -> Result<Vec<crate::audit::report::ReportGroup>, StoreError> {
            unreachable!()
        }
        async fn report_entry_groups(
            &mut self,
            _: &crate::audit::report::ReportFilter,
            _: crate::audit::report::Grouping,
            _: u32,
        ) -> Result<Vec<crate::audit::report::ReportGroup>, StoreError> {
            unreachable!()
        }
        async fn report_entries(
            &mut self,
            _: &crate::audit::report::ReportFilter,
            _: u32,
        ) -> Result<Vec<crate::audit::report::ReportEntry>, StoreError> {
            unreachable!()
        }
        async fn report_tokens(
            &mut self,
            _: &crate::audit::report::ReportFilter,
            _: &mut (dyn FnMut(crate::audit::report::ReleasedToken) -> bool + Send),
        ) -> Result<u64, StoreError> {
            unreachable!()
        }
    }

    #[async_trait]
    impl crate::store::OffboardingReadTx for FakeRead {
        async fn tenant_shredded_at(&mut self, _: &TenantId) -> Result<Option<i64>, StoreError> {
            unreachable!()
        }
        async fn count_tenant_records(&mut self, _: &TenantId, _: i64) -> Result<u64, StoreError> {
            unreachable!()
        }
        async fn tenant_records_page(
            &mut self,
            _: &TenantId,
            _: Option<&Token>,
            _: i64,
            _: u32,
        ) -> Result<Vec<(RecordRow, Vec<u8>)>, StoreError> {
            unreachable!()
        }
        async fn tenant_job_ids(&mut self, _: &TenantId, _: &str, _: u32) -> Result<Vec<String>, StoreError> {
            unreachable!()
        }
    }

    #[async_trait]
    impl ReadTx for FakeRead {
        async fn system_key(&mut self, _: &str) -> Result<Option<WrappedKey>, StoreError> {
            unreachable!()
        }
        async fn tenant(&mut self, tenant: &TenantId) -> Result<Option<StoredTenant>, StoreError> {
            Ok(self.0.get(tenant.as_str()).cloned())
        }
        async fn records_by_blind_index(
            &mut self,
            _: &TenantId,
            _: TokenFormat,
            _: &[BlindIndex],
        ) -> Result<Vec<Option<RecordRow>>, StoreError> {
            unreachable!()
        }
        async fn record(&mut self, _: &TenantId, _: &Token) -> Result<Option<RecordRow>, StoreError> {
            unreachable!()
        }
        async fn existing_tokens(&mut self, _: &TenantId, _: &[Token]) -> Result<HashSet<String>, StoreError> {
            unreachable!()
        }
        async fn sealed_records(&mut self, _: &TenantId, _: &[Token]) -> Result<Vec<(RecordRow, Vec<u8>)>, StoreError> {
            unreachable!()
        }
        async fn job(&mut self, _: &JobId) -> Result<Option<JobRow>, StoreError> {
            unreachable!()
        }
        async fn job_ids(&mut self, _: &str, _: u32) -> Result<Vec<String>, StoreError> {
            unreachable!()
        }
        async fn record_rows(
            &mut self,
            _: Option<(&str, &str)>,
            _: u32,
        ) -> Result<Vec<(String, RecordRow)>, StoreError> {
            unreachable!()
        }
        async fn audit_head(&mut self) -> Result<ChainHead, StoreError> {
            unreachable!()
        }
        async fn audit_entries(&mut self, _: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
            unreachable!()
        }
    }

    /// A keyring over a fake store and provider, with a clock that moves
    /// only when told.
    struct Fixture {
        keyring: Keyring,
        store: Arc<FakeStore>,
        provider: Arc<CountingProvider>,
        elapsed_s: Arc<AtomicU64>,
    }

    impl Fixture {
        fn new(ttl_s: u64, tenants: usize) -> Self {
            let store = Arc::new(FakeStore::default());
            let provider = Arc::new(CountingProvider::default());
            let elapsed_s = Arc::new(AtomicU64::new(0));
            let start = Instant::now();
            let clock = {
                let elapsed_s = elapsed_s.clone();
                Arc::new(move || start + Duration::from_secs(elapsed_s.load(Ordering::SeqCst)))
            };
            let limits = KeyCacheLimits { ttl: Duration::from_secs(ttl_s), tenants };
            let keyring = Keyring::with_clock(provider.clone(), store.clone(), limits, clock);
            Self { keyring, store, provider, elapsed_s }
        }

        fn at(&self, seconds: u64) {
            self.elapsed_s.store(seconds, Ordering::SeqCst);
        }

        fn keys(&self, tenant: &str) -> Result<Arc<TenantKeys>, VaultError> {
            block_on(self.keyring.tenant_keys(&TenantId::parse(tenant).unwrap()))
        }

        fn unwraps(&self) -> usize {
            self.provider.unwraps.load(Ordering::SeqCst)
        }

        fn reads(&self) -> usize {
            self.store.reads.load(Ordering::SeqCst)
        }

        fn flights(&self) -> usize {
            self.keyring.flights.lock().unwrap().len()
        }
    }

    #[test]
    fn defaults_are_fifteen_minutes_and_ten_thousand_tenants() {
        let limits = KeyCacheLimits::default();
        assert_eq!(limits.ttl, Duration::from_secs(900));
        assert_eq!(limits.tenants, 10_000);
    }

    #[test]
    fn a_hit_neither_reads_nor_unwraps() {
        let f = Fixture::new(60, 10);
        f.store.add("acme");
        let first = f.keys("acme").unwrap();
        assert_eq!((f.reads(), f.unwraps()), (1, UNWRAPS_PER_LOAD));
        assert_eq!(first.versions(), vec![1, 2]);
        let again = f.keys("acme").unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!((f.reads(), f.unwraps()), (1, UNWRAPS_PER_LOAD));
        assert_eq!(f.flights(), 0);
    }

    #[test]
    fn an_entry_expires_its_ttl_after_the_read_however_often_used() {
        let f = Fixture::new(60, 10);
        f.store.add("acme");
        let first = f.keys("acme").unwrap();
        for second in [1, 30, 59] {
            f.at(second);
            assert!(Arc::ptr_eq(&first, &f.keys("acme").unwrap()), "at {second} s");
        }
        assert_eq!(f.unwraps(), UNWRAPS_PER_LOAD);

        f.at(60);
        let second = f.keys("acme").unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!((f.reads(), f.unwraps()), (2, 2 * UNWRAPS_PER_LOAD));

        // The new entry counts from its own read.
        f.at(119);
        assert!(Arc::ptr_eq(&second, &f.keys("acme").unwrap()));
        f.at(120);
        f.keys("acme").unwrap();
        assert_eq!(f.unwraps(), 3 * UNWRAPS_PER_LOAD);
    }

    #[test]
    fn expired_entries_are_dropped_by_a_call_for_another_tenant() {
        let f = Fixture::new(60, 10);
        f.store.add("acme");
        f.store.add("globex");
        let acme = f.keys("acme").unwrap();
        assert_eq!(Arc::strong_count(&acme), 2, "the cache holds one");
        f.at(60);
        f.keys("globex").unwrap();
        assert_eq!(Arc::strong_count(&acme), 1, "only this call's is left");
    }

    #[test]
    fn capacity_evicts_the_least_recently_used() {
        let f = Fixture::new(600, 2);
        for tenant in ["acme", "globex", "initech"] {
            f.store.add(tenant);
        }
        let acme = f.keys("acme").unwrap();
        let globex = f.keys("globex").unwrap();
        // acme is used after globex, so globex is now the least recently used.
        f.keys("acme").unwrap();
        f.keys("initech").unwrap();
        assert_eq!(f.unwraps(), 3 * UNWRAPS_PER_LOAD);
        assert_eq!(Arc::strong_count(&globex), 1, "evicted: the cache let go of its Arc");
        assert_eq!(Arc::strong_count(&acme), 2);

        // acme and initech are served from memory; globex is read again.
        f.keys("acme").unwrap();
        f.keys("initech").unwrap();
        assert_eq!(f.unwraps(), 3 * UNWRAPS_PER_LOAD);
        assert!(!Arc::ptr_eq(&globex, &f.keys("globex").unwrap()));
        assert_eq!(f.unwraps(), 4 * UNWRAPS_PER_LOAD);
        // ...which evicted acme, the least recently used of the two.
        assert_eq!(Arc::strong_count(&acme), 1);
    }

    #[test]
    fn a_tenant_not_found_is_not_cached() {
        let f = Fixture::new(600, 10);
        assert!(matches!(f.keys("acme"), Err(VaultError::NotFound(_))));
        assert!(matches!(f.keys("acme"), Err(VaultError::NotFound(_))));
        assert_eq!((f.reads(), f.unwraps()), (2, 0));

        // Created meanwhile (by another replica): found at once.
        f.store.add("acme");
        f.keys("acme").unwrap();
        assert_eq!((f.reads(), f.unwraps()), (3, UNWRAPS_PER_LOAD));
        assert_eq!(f.flights(), 0);
    }

    #[test]
    fn forget_makes_the_next_call_read_again() {
        let f = Fixture::new(600, 10);
        f.store.add("acme");
        let before = f.keys("acme").unwrap();
        f.keyring.forget(&TenantId::parse("acme").unwrap());
        assert_eq!(Arc::strong_count(&before), 1);
        assert!(!Arc::ptr_eq(&before, &f.keys("acme").unwrap()));
        assert_eq!(f.reads(), 2);
    }

    #[test]
    fn a_version_added_elsewhere_is_read_once_when_a_record_names_it() {
        let f = Fixture::new(600, 10);
        f.store.add("acme");
        let acme = TenantId::parse("acme").unwrap();
        let before = f.keys("acme").unwrap();
        // Versions the entry holds: served from memory.
        let same = block_on(f.keyring.tenant_keys_with(&acme, [1, 2])).unwrap();
        assert!(Arc::ptr_eq(&before, &same));
        assert_eq!(f.reads(), 1);

        // Another replica adds version 3: the first record naming it reloads.
        f.store.tenants.lock().unwrap().get_mut("acme").unwrap().record_keys.push((3, WrappedKey::from_bytes(vec![4])));
        let after = block_on(f.keyring.tenant_keys_with(&acme, [3])).unwrap();
        assert_eq!(after.versions(), vec![1, 2, 3]);
        assert_eq!(f.reads(), 2);
        // ...and the next call finds it cached.
        assert!(Arc::ptr_eq(&after, &block_on(f.keyring.tenant_keys_with(&acme, [3])).unwrap()));
        assert_eq!(f.reads(), 2);
    }

    #[test]
    fn a_version_nobody_has_reloads_once_per_call_and_still_lacks_it() {
        let f = Fixture::new(600, 10);
        f.store.add("acme");
        let acme = TenantId::parse("acme").unwrap();
        f.keys("acme").unwrap();
        let keys = block_on(f.keyring.tenant_keys_with(&acme, [9])).unwrap();
        assert_eq!(keys.versions(), vec![1, 2]);
        assert_eq!(f.reads(), 2, "one reload, not a loop");
    }

    #[test]
    fn a_stale_entry_seen_by_a_caller_does_not_drop_a_fresher_one() {
        let f = Fixture::new(600, 10);
        f.store.add("acme");
        let acme = TenantId::parse("acme").unwrap();
        let stale = f.keys("acme").unwrap();
        f.keyring.forget(&acme);
        let fresh = f.keys("acme").unwrap();
        f.keyring.cache.lock().unwrap().remove_if(&acme, &stale);
        assert!(Arc::ptr_eq(&fresh, &f.keys("acme").unwrap()));
        assert_eq!(f.reads(), 2);
    }

    #[test]
    fn a_zero_ttl_caches_nothing() {
        let f = Fixture::new(0, 10);
        f.store.add("acme");
        f.keys("acme").unwrap();
        f.keys("acme").unwrap();
        assert_eq!((f.reads(), f.unwraps()), (2, 2 * UNWRAPS_PER_LOAD));
    }

    #[test]
    fn concurrent_misses_for_one_tenant_read_and_unwrap_once() {
        let f = Fixture::new(600, 10);
        f.store.add("acme");
        f.store.add("globex");
        let acme = TenantId::parse("acme").unwrap();
        let globex = TenantId::parse("globex").unwrap();
        // Every read waits at the gate until all the calls have started.
        let gate = block_on(f.store.gate.lock());
        let calls = futures::future::join_all(
            [&acme, &acme, &globex, &acme, &globex].map(|tenant| f.keyring.tenant_keys(tenant)),
        );
        let open_gate = async move { drop(gate) };
        let (answers, ()) = block_on(futures::future::join(calls, open_gate));
        let answers: Vec<_> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!((f.reads(), f.unwraps()), (2, 2 * UNWRAPS_PER_LOAD), "one load per tenant");
        assert!(Arc::ptr_eq(&answers[0], &answers[1]) && Arc::ptr_eq(&answers[0], &answers[3]));
        assert!(Arc::ptr_eq(&answers[2], &answers[4]));
        assert_eq!(f.flights(), 0);
    }

    #[test]
    fn a_miss_dropped_halfway_caches_nothing_and_leaves_no_flight() {
        let f = Fixture::new(600, 10);
        f.store.add("acme");
        let acme = TenantId::parse("acme").unwrap();
        let gate = block_on(f.store.gate.lock());
        assert!(f.keyring.tenant_keys(&acme).now_or_never().is_none(), "waits at the gate");
        assert_eq!(f.flights(), 0);
        drop(gate);
        f.keys("acme").unwrap();
        assert_eq!((f.reads(), f.unwraps()), (1, UNWRAPS_PER_LOAD));
    }
}
