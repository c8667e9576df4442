//! `KeyService`: tenant record-key rotation, rewrapping, status and
//! retirement. Translation only; the rules are in the core
//! (`mnvault_core::vault`, rotation).

use mnvault_core::audit::{AuditDraft, Operation};
use mnvault_core::id::{TenantId, Token};
use mnvault_core::vault::{KeyStatusPage, TenantKeyStatus};
use mnvault_proto::v1 as pb;
use pb::key_service_server::KeyService;
use tonic::{Request, Response, Status};

use super::wire::{optional, timestamp};
use super::Context;
use crate::error::VaultError;

/// The key service.
pub struct KeyApi {
    ctx: Context,
}

impl KeyApi {
    /// The service over `ctx`.
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }
}

/// Longest cursor: a token is at most 30 bytes, two letters each.
const MAX_CURSOR_LEN: usize = 64;

/// The cursor of a rewrap walk: the token to go on after, each byte as two
/// letters `a`–`p`. Opaque to callers, and never a run of digits, so a
/// legacy token does not show as a number in an answer or a log.
fn cursor_of(token: &Token) -> String {
    token.as_str().bytes().flat_map(|byte| [char::from(b'a' + (byte >> 4)), char::from(b'a' + (byte & 0x0f))]).collect()
}

/// The token a cursor names; refused without repeating it.
fn token_of_cursor(cursor: &str) -> Result<Token, VaultError> {
    let invalid =
        || VaultError::InvalidArgument("cursor is not one this vault handed out; start again without one".into());
    if cursor.len() > MAX_CURSOR_LEN || cursor.len() % 2 != 0 {
        return Err(invalid());
    }
    let nibble = |c: u8| (b'a'..=b'p').contains(&c).then(|| c - b'a');
    let bytes = cursor
        .as_bytes()
        .chunks(2)
        .map(|pair| Some((nibble(pair[0])? << 4) | nibble(pair[1])?))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(invalid)?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    Token::parse(&text).map_err(|_| invalid())
}

fn wire_status(status: TenantKeyStatus) -> pb::TenantKeyStatus {
    let primary = status.primary();
    pb::TenantKeyStatus {
        tenant: status.tenant.to_string(),
        primary_key_version: primary,
        versions: status
            .versions
            .into_iter()
            .map(|v| pb::KeyVersionStatus {
                version: v.version,
                created_at: Some(timestamp(v.created_at)),
                records: v.records,
                primary: v.version == primary,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl KeyService for KeyApi {
    async fn rotate_tenant_key(
        &self,
        request: Request<pb::RotateTenantKeyRequest>,
    ) -> Result<Response<pb::RotateTenantKeyResponse>, Status> {
        let mut draft = AuditDraft::new(Operation::RotateTenantKey);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let request = request.into_inner();
        let result = async {
            let tenant = TenantId::parse(&request.tenant)?;
            draft.tenant = Some(tenant.clone());
            let rotated = self.ctx.core.rotate_tenant_key(&caller, &tenant, &draft).await?;
            Ok(pb::RotateTenantKeyResponse {
                tenant: rotated.tenant.to_string(),
                primary_key_version: rotated.version,
                previous_key_version: rotated.previous,
                created_at: Some(timestamp(rotated.created_at)),
            })
        }
        .await;
        Ok(Response::new(self.ctx.settled(draft, result).await?))
    }

    async fn rewrap_tenant_records(
        &self,
        request: Request<pb::RewrapTenantRecordsRequest>,
    ) -> Result<Response<pb::RewrapTenantRecordsResponse>, Status> {
        let mut draft = AuditDraft::new(Operation::RewrapTenantRecords);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let request = request.into_inner();
        let result = async {
            let tenant = TenantId::parse(&request.tenant)?;
            draft.tenant = Some(tenant.clone());
            let after = optional(&request.cursor, token_of_cursor)?;
            let core = &self.ctx.core;
            let batch =
                core.rewrap_tenant_records(&caller, &tenant, request.batch_size, after.as_ref(), &draft).await?;
            Ok(pb::RewrapTenantRecordsResponse {
                primary_key_version: batch.primary,
                rewrapped: batch.rewrapped,
                changed: batch.changed,
                tampered: batch.tampered,
                next_cursor: batch.next.as_ref().map(cursor_of).unwrap_or_default(),
            })
        }
        .await;
        Ok(Response::new(self.ctx.settled(draft, result).await?))
    }

    async fn get_key_status(
        &self,
        request: Request<pb::GetKeyStatusRequest>,
    ) -> Result<Response<pb::GetKeyStatusResponse>, Status> {
        let mut draft = AuditDraft::new(Operation::GetKeyStatus);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let request = request.into_inner();
        let result = async {
            let tenant = optional(&request.tenant, TenantId::parse)?;
            draft.tenant = tenant.clone();
            let after = optional(&request.after_tenant, TenantId::parse)?;
            let KeyStatusPage { tenants, next_after } =
                self.ctx.core.key_status(&caller, tenant.as_ref(), after.as_ref(), request.page_size).await?;
            Ok(pb::GetKeyStatusResponse {
                tenants: tenants.into_iter().map(wire_status).collect(),
                next_after_tenant: next_after.map(|t| t.to_string()).unwrap_or_default(),
            })
        }
        .await;
        Ok(Response::new(self.ctx.audited(draft, result).await?))
    }

    async fn retire_key_version(
        &self,
        request: Request<pb::RetireKeyVersionRequest>,
    ) -> Result<Response<pb::RetireKeyVersionResponse>, Status> {
        let mut draft = AuditDraft::new(Operation::RetireKeyVersion);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let request = request.into_inner();
        let result = async {
            let tenant = TenantId::parse(&request.tenant)?;
            draft.tenant = Some(tenant.clone());
            if request.version == 0 {
                return Err(VaultError::InvalidArgument(
                    "version must be given (record-key versions start at 1)".into(),
                ));
            }
            let versions = self.ctx.core.retire_key_version(&caller, &tenant, request.version, &draft).await?;
            Ok(pb::RetireKeyVersionResponse { tenant: tenant.to_string(), retired_version: request.version, versions })
        }
        .await;
        Ok(Response::new(self.ctx.settled(draft, result).await?))
    }

    async fn rotate_signing_key(
        &self,
        request: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        let mut draft = AuditDraft::new(Operation::RotateSigningKey);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let result = async {
            let rotated = self.ctx.core.rotate_signing_key(&caller, &draft).await?;
            Ok(pb::RotateSigningKeyResponse {
                previous_public_key: rotated.previous.to_string(),
                public_key: rotated.public_key.to_string(),
            })
        }
        .await;
        Ok(Response::new(self.ctx.settled(draft, result).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_holds_no_digit() {
        for text in ["mnt_abcdefghijklmnopqrstuvwx23", "123456789010"] {
            let token = Token::parse(text).unwrap();
            let cursor = cursor_of(&token);
            assert!(!cursor.bytes().any(|b| b.is_ascii_digit()), "{cursor}");
            assert_eq!(token_of_cursor(&cursor).unwrap(), token);
        }
    }

    #[test]
    fn a_cursor_not_handed_out_is_refused() {
        for cursor in ["x", "zz", "abc", &"a".repeat(MAX_CURSOR_LEN + 2), "gdgd"] {
            assert!(matches!(token_of_cursor(cursor), Err(VaultError::InvalidArgument(_))), "{cursor}");
        }
    }
}
