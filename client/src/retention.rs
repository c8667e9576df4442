//! Retention: deletion dates and legal holds, purges, deletion certificates.

use mnvault_proto::v1 as pb;
use time::OffsetDateTime;

use crate::{timestamp, ClientError, VaultClient};

pub use mnvault_proto::v1::{
    DeletionCertificate, PurgeExpiredResponse, PurgedToken, SetRetentionRequest, SetRetentionResponse,
};

impl VaultClient {
    /// Sets the retention of tokens (document classes, end of employment
    /// and/or a deletion date, legal hold), as an admin.
    pub async fn set_retention(&self, request: SetRetentionRequest) -> Result<SetRetentionResponse, ClientError> {
        Ok(self.retention.clone().set_retention(request).await?.into_inner())
    }

    /// Deletes (or with `dry_run` lists) the numbers past their deletion
    /// date and not on hold, of `tenant` or of every tenant (`""`).
    pub async fn purge_expired(&self, tenant: &str, dry_run: bool) -> Result<PurgeExpiredResponse, ClientError> {
        let request = pb::PurgeExpiredRequest { tenant: tenant.to_owned(), dry_run };
        Ok(self.retention.clone().purge_expired(request).await?.into_inner())
    }

    /// A signed certificate of the deletions of `tenant` in [`since`, `until`).
    pub async fn issue_deletion_certificate(
        &self,
        tenant: &str,
        since: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<DeletionCertificate, ClientError> {
        let request = pb::IssueDeletionCertificateRequest {
            tenant: tenant.to_owned(),
            since: Some(timestamp(since)),
            until: Some(timestamp(until)),
        };
        Ok(self.retention.clone().issue_deletion_certificate(request).await?.into_inner())
    }
}
