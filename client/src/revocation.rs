//! Client certificates revoked through the vault (`mnvault pki revoke`).

use mnvault_proto::v1 as pb;

pub use mnvault_proto::v1::CertificateRevocation;

use crate::{ClientError, VaultClient};

/// Pages `revoked_certificates` reads at most: the vault keeps 10000
/// revocations, 1000 to a page.
const MAX_PAGES: usize = 11;

impl VaultClient {
    /// Revokes the client certificate `serial` (hex, as `pki issue` printed
    /// it), saying why; every replica refuses it from then on (key-admin).
    pub async fn revoke_certificate(&self, serial: &str, reason: &str) -> Result<CertificateRevocation, ClientError> {
        let request = pb::RevokeCertificateRequest { serial: serial.to_owned(), reason: reason.to_owned() };
        Ok(self.admin.clone().revoke_certificate(request).await?.into_inner())
    }

    /// Every revoked certificate, in serial order (key-admin or auditor).
    pub async fn revoked_certificates(&self) -> Result<Vec<CertificateRevocation>, ClientError> {
        let mut all = Vec::new();
        let mut after_serial = String::new();
        for _ in 0..MAX_PAGES {
            let page = self.revoked_certificates_after(&after_serial).await?;
            let Some(last) = page.last() else { break };
            after_serial = last.serial.clone();
            all.extend(page);
        }
        Ok(all)
    }

    /// One page of revoked certificates: those after `after_serial` (from
    /// the first when empty), at most 1000.
    pub async fn revoked_certificates_after(
        &self,
        after_serial: &str,
    ) -> Result<Vec<CertificateRevocation>, ClientError> {
        let request = pb::ListRevokedCertificatesRequest { after_serial: after_serial.to_owned() };
        Ok(self.admin.clone().list_revoked_certificates(request).await?.into_inner().revocations)
    }
}
