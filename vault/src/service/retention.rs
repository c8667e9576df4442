//! `RetentionService`: deletion dates and legal holds, purges, deletion
//! certificates. The rules are in `mnvault_core::retention` and
//! `mnvault_core::vault::retention`; this module translates.

use mnvault_core::audit::{AuditDraft, Operation};
use mnvault_core::id::{TenantId, Token};
use mnvault_core::retention::{date_text, parse_classes, parse_date, RetentionRequest, MAX_RETENTION_TOKENS};
use mnvault_core::vault::PurgeItem;
use mnvault_proto::v1 as pb;
use pb::retention_service_server::RetentionService;
use tonic::{Request, Response, Status};

use super::wire::{from_timestamp, optional};
use super::{Context, VaultContext};
use crate::error::VaultError;

/// The retention service.
pub struct RetentionApi {
    ctx: Context,
}

impl RetentionApi {
    /// The service over `ctx`.
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }
}

fn wire_item(item: &PurgeItem) -> pb::PurgedToken {
    pb::PurgedToken {
        tenant: item.tenant.to_string(),
        token: item.token.to_string(),
        classes: item.retention.classes.iter().map(|c| c.id().to_owned()).collect(),
        end_date: item.retention.end_date.map(date_text).unwrap_or_default(),
        delete_on: date_text(item.retention.delete_on),
    }
}

#[tonic::async_trait]
impl RetentionService for RetentionApi {
    async fn set_retention(
        &self,
        request: Request<pb::SetRetentionRequest>,
    ) -> Result<Response<pb::SetRetentionResponse>, Status> {
        let mut draft = AuditDraft::new(Operation::SetRetention);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let request = request.into_inner();
        let result = async {
            let tenant = TenantId::parse(&request.tenant)?;
            draft.tenant = Some(tenant.clone());
            // Counted before a token is parsed; the refusal records the count, never the tokens.
            VaultContext::check_count(request.tokens.len(), MAX_RETENTION_TOKENS, "tokens", "retention tokens")?;
            VaultContext::check_count(request.classes.len(), 16, "document classes", "retention classes")?;
            let tokens = request
                .tokens
                .iter()
                .map(|token| Token::parse(token).map_err(VaultError::from))
                .collect::<Result<Vec<_>, _>>()?;
            let asked = RetentionRequest {
                classes: parse_classes(&request.classes)?,
                end_date: optional(&request.end_date, |text| parse_date(text, "end date"))?,
                delete_after: optional(&request.delete_after, |text| parse_date(text, "deletion date"))?,
                legal_hold: request.legal_hold,
            };
            let retention = self.ctx.core.set_retention(&caller, &tenant, &tokens, &asked, &mut draft).await?;
            Ok(pb::SetRetentionResponse {
                tokens: draft.record_count,
                delete_on: date_text(retention.delete_on),
                classes: retention.classes.iter().map(|c| c.id().to_owned()).collect(),
                end_date: retention.end_date.map(date_text).unwrap_or_default(),
                legal_hold: retention.legal_hold,
            })
        }
        .await;
        Ok(Response::new(self.ctx.settled(draft, result).await?))
    }

    async fn purge_expired(
        &self,
        request: Request<pb::PurgeExpiredRequest>,
    ) -> Result<Response<pb::PurgeExpiredResponse>, Status> {
        let mut draft = AuditDraft::new(Operation::PurgeExpired);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let request = request.into_inner();
        let result = async {
            let tenant = optional(&request.tenant, TenantId::parse)?;
            draft.tenant = tenant.clone();
            let report = self.ctx.core.purge_expired(&caller, tenant.as_ref(), request.dry_run, &mut draft).await?;
            Ok(pb::PurgeExpiredResponse {
                dry_run: report.dry_run,
                tokens: report.items.iter().map(wire_item).collect(),
                deleted_records: report.deleted_records,
                held: report.held,
                tampered: report.tampered,
                tampered_named: report.tampered_named.clone(),
                more: report.more,
            })
        }
        .await;
        // The deletions were audited batch by batch; this entry records the call.
        Ok(Response::new(self.ctx.audited(draft, result).await?))
    }

    async fn issue_deletion_certificate(
        &self,
        request: Request<pb::IssueDeletionCertificateRequest>,
    ) -> Result<Response<pb::DeletionCertificate>, Status> {
        let mut draft = AuditDraft::new(Operation::IssueDeletionCertificate);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let request = request.into_inner();
        let result = async {
            let tenant = TenantId::parse(&request.tenant)?;
            draft.tenant = Some(tenant.clone());
            let since = request.since.as_ref().map(from_timestamp).unwrap_or(0);
            let until = request
                .until
                .as_ref()
                .map(from_timestamp)
                .ok_or_else(|| VaultError::InvalidArgument("a certificate needs the end of its period".into()))?;
            let issued = self.ctx.core.issue_deletion_certificate(&caller, &tenant, since, until, &mut draft).await?;
            Ok(pb::DeletionCertificate {
                certificate_json: issued.certificate.to_json(),
                public_key: issued.public_key.to_string(),
                key_id: issued.public_key.key_id(),
                deletions: issued.certificate.certificate.count,
            })
        }
        .await;
        Ok(Response::new(self.ctx.audited(draft, result).await?))
    }
}
