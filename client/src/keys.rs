//! Tenant record keys: rotate, rewrap, status, retire (`KeyService`; the
//! admin role on the tenant).

use mnvault_proto::v1 as pb;

pub use mnvault_proto::v1::{
    GetKeyStatusResponse, KeyVersionStatus, RetireKeyVersionResponse, RewrapTenantRecordsResponse,
    RotateSigningKeyResponse, RotateTenantKeyResponse, TenantKeyStatus,
};

use crate::{ClientError, VaultClient};

impl VaultClient {
    /// Replaces the vault's Ed25519 signing key (admin of every tenant);
    /// the answer names the old and the new public key.
    pub async fn rotate_signing_key(&self) -> Result<RotateSigningKeyResponse, ClientError> {
        Ok(self.keys.clone().rotate_signing_key(pb::RotateSigningKeyRequest {}).await?.into_inner())
    }

    /// Adds a record-key version to `tenant`; it seals new records from now on.
    pub async fn rotate_tenant_key(&self, tenant: &str) -> Result<RotateTenantKeyResponse, ClientError> {
        let request = pb::RotateTenantKeyRequest { tenant: tenant.to_owned() };
        Ok(self.keys.clone().rotate_tenant_key(request).await?.into_inner())
    }

    /// Seals up to `batch_size` records under an older version again under
    /// the primary (0: the vault's default), going on after `cursor` (the
    /// previous answer's `next_cursor`; empty to start). Call again while
    /// `next_cursor` is not empty.
    pub async fn rewrap_tenant_records(
        &self,
        tenant: &str,
        batch_size: u32,
        cursor: &str,
    ) -> Result<RewrapTenantRecordsResponse, ClientError> {
        let request =
            pb::RewrapTenantRecordsRequest { tenant: tenant.to_owned(), batch_size, cursor: cursor.to_owned() };
        Ok(self.keys.clone().rewrap_tenant_records(request).await?.into_inner())
    }

    /// Each record-key version of `tenant` with its age and record count; with
    /// no tenant, a page of every tenant after `after_tenant` (empty: from the first).
    pub async fn key_status(
        &self,
        tenant: Option<&str>,
        after_tenant: &str,
        page_size: u32,
    ) -> Result<GetKeyStatusResponse, ClientError> {
        let request = pb::GetKeyStatusRequest {
            tenant: tenant.unwrap_or_default().to_owned(),
            after_tenant: after_tenant.to_owned(),
            page_size,
        };
        Ok(self.keys.clone().get_key_status(request).await?.into_inner())
    }

    /// Deletes record-key `version` of `tenant`, once no record uses it, it
    /// is not the primary and its successor is older than the vault's key cache.
    pub async fn retire_key_version(
        &self,
        tenant: &str,
        version: u32,
    ) -> Result<RetireKeyVersionResponse, ClientError> {
        let request = pb::RetireKeyVersionRequest { tenant: tenant.to_owned(), version };
        Ok(self.keys.clone().retire_key_version(request).await?.into_inner())
    }
}
