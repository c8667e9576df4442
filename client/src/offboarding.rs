//! Tenant offboarding: exporting a tenant's records, encrypted in the vault
//! to the client's age key, and shredding the tenant.

use futures::{Stream, StreamExt};
use mnvault_proto::v1 as pb;

pub use mnvault_proto::v1::{ExportTenantChunk, ShredTenantResponse};

use crate::{ClientError, VaultClient};

impl VaultClient {
    /// Exports the tenant of `job_id`, an approved job of purpose
    /// `tenant-export`, encrypted in the vault to `recipient` (an age X25519
    /// public key, `age1…`). The chunks, concatenated in order, are the age
    /// file; an error in the stream means the file is incomplete and must
    /// be discarded. The numbers never reach this process in clear.
    pub async fn export_tenant(
        &self,
        job_id: &str,
        recipient: &str,
    ) -> Result<impl Stream<Item = Result<ExportTenantChunk, ClientError>>, ClientError> {
        let request = pb::ExportTenantRequest { job_id: job_id.to_owned(), recipient: recipient.to_owned() };
        let (metadata, chunks, _) = self.admin.clone().export_tenant(request).await?.into_parts();
        Ok(chunks.map(move |chunk| chunk.map_err(|status| ClientError::ended_stream(status, &metadata))))
    }

    /// Shreds `tenant`: destroys its keys and its sealed numbers. Irreversible.
    pub async fn shred_tenant(&self, tenant: &str) -> Result<ShredTenantResponse, ClientError> {
        let request = pb::ShredTenantRequest { tenant: tenant.to_owned() };
        Ok(self.admin.clone().shred_tenant(request).await?.into_inner())
    }
}
