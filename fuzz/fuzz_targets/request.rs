//! Requests from raw protobuf bytes: every request message of `proto/` is
//! decoded with prost (the generated types the server uses), then put through
//! the translation the gRPC handlers do before they call the core.
//!
//! The handlers' own translation functions (`vault/src/service/*.rs`:
//! `job_request`, `audit_filter`, `parse_record`, `wire::token_format`...) are
//! private to the `mnvault` crate, and a handler cannot be called without a
//! TLS connection (the caller is read from the peer certificate), so this
//! target repeats those translations step by step with the same core parsers
//! (`TenantId`, `Token`, `JobId`, `Purpose`, `MyNumber`, `FreeText`,
//! `JobRequest::terms`). Keep `translate_*` below in step with the handlers.
//!
//! Invariants:
//! - decoding never panics, and what decodes re-encodes to bytes that decode
//!   to the same message;
//! - a refusal's public message holds no number and stays short whatever
//!   the request held;
//! - everything that parsed, and so may reach an audit entry, a log line or a
//!   reply (tenant, tokens, job id, note, display name), holds nothing
//!   `contains_number` finds (legacy tokens, twelve digits by design, are
//!   never a valid number);
//! - the terms of an accepted filing job keep the job rules (at least one
//!   token, no duplicates, at most `MAX_JOB_TOKENS`, expiry in the future and
//!   at most 90 days ahead, at least one release per token).
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use mnvault_core::id::{JobId, Principal, TenantId, Token, TokenFormat};
use mnvault_core::job::{JobRequest, MAX_JOB_LIFETIME_MS, MAX_JOB_TOKENS};
use mnvault_core::number::{contains_number, MyNumber};
use mnvault_core::purpose::Purpose;
use mnvault_core::text::FreeText;
use mnvault_core::VaultError;
use mnvault_proto::v1 as pb;
use prost::Message;

/// A fixed "now" (2026-11-23T00:00:00Z) so runs are reproducible.
const NOW_MS: i64 = 1_795_392_000_000;

/// `wire::from_timestamp`.
fn from_timestamp(at: &prost_types::Timestamp) -> i64 {
    at.seconds.saturating_mul(1000).saturating_add(i64::from(at.nanos) / 1_000_000)
}

/// `wire::timestamp`, for the replies that carry times.
fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// `wire::token_format`.
fn token_format(format: i32) -> Result<TokenFormat, VaultError> {
    match pb::TokenFormat::try_from(format) {
        Ok(pb::TokenFormat::Unspecified | pb::TokenFormat::Opaque) => Ok(TokenFormat::Opaque),
        Ok(pb::TokenFormat::LegacyDigits) => Ok(TokenFormat::LegacyDigits),
        Err(_) => Err(VaultError::InvalidArgument(format!("token format {format} is not known"))),
    }
}

/// `wire::optional`.
fn optional<T, E>(text: &str, parse: impl FnOnce(&str) -> Result<T, E>) -> Result<Option<T>, E> {
    if text.is_empty() {
        Ok(None)
    } else {
        parse(text).map(Some)
    }
}

fn parse_tokens(tokens: &[String]) -> Result<Vec<Token>, VaultError> {
    tokens.iter().map(|token| Token::parse(token).map_err(VaultError::from)).collect()
}

/// Checks a refusal: what the caller (and the audit log) would read. Whether
/// a refusal can repeat its input is checked per parser in `my_number` and
/// `identifiers`; here, whatever the request held, no number gets through.
fn refused(error: &VaultError) {
    let message = error.public_message();
    assert!(!contains_number(&message), "a refusal holds a number");
    assert!(message.len() < 400, "a refusal grows with its input");
}

fn clean(text: &str) {
    assert!(!contains_number(text), "a parsed value holds a number");
}

/// Legacy tokens are twelve digits by design (see `id.rs`); they are never a
/// number, and opaque tokens hold none.
fn clean_token(token: &Token) {
    match token.format() {
        TokenFormat::Opaque => clean(token.as_str()),
        TokenFormat::LegacyDigits => assert!(MyNumber::parse(token.as_str()).is_err()),
    }
}

/// Decodes `data` as `M`; what decodes must survive a re-encoding.
fn decode<M: Message + Default + PartialEq>(data: &[u8]) -> Option<M> {
    let message = M::decode(data).ok()?;
    let again = M::decode(message.encode_to_vec().as_slice()).expect("re-encoded message decodes");
    assert!(again == message, "re-encoding changed the message");
    Some(message)
}

/// `TokenService.Tokenize`, and one record of `TokenizeStream` (`parse_record`).
fn translate_tokenize(request: &pb::TokenizeRequest) {
    let result = (|| {
        let tenant = TenantId::parse(&request.tenant)?;
        let format = token_format(request.format)?;
        let number = MyNumber::parse(&request.number)?;
        Ok::<_, VaultError>((tenant, format, number))
    })();
    match result {
        Ok((tenant, _, number)) => {
            clean(tenant.as_str());
            assert!(contains_number(&request.number));
            assert_eq!(number.expose_digits().len(), 12);
        }
        Err(error) => refused(&error),
    }
}

fn translate_describe_token(request: &pb::DescribeTokenRequest) {
    let result = (|| Ok::<_, VaultError>((TenantId::parse(&request.tenant)?, Token::parse(&request.token)?)))();
    match result {
        Ok((tenant, token)) => {
            clean(tenant.as_str());
            clean_token(&token);
        }
        Err(error) => refused(&error),
    }
}

/// `FilingService.CreateFilingJob`: `job_request`, then the core's `JobRequest::terms`.
fn translate_create_filing_job(request: &pb::CreateFilingJobRequest) {
    let result = (|| {
        Ok::<_, VaultError>(JobRequest {
            tenant: TenantId::parse(&request.tenant)?,
            purpose: request.purpose.parse::<Purpose>()?,
            tokens: parse_tokens(&request.tokens)?,
            expires_at: request
                .expires_at
                .as_ref()
                .map(from_timestamp)
                .ok_or_else(|| VaultError::InvalidArgument("a filing job needs an expiry".into()))?,
            max_releases_per_token: request.max_releases_per_token,
            note: FreeText::parse(&request.note, "note")?,
        })
    })();
    let job = match result {
        Ok(job) => job,
        Err(error) => return refused(&error),
    };
    clean(job.tenant.as_str());
    clean(job.note.as_str());
    job.tokens.iter().for_each(clean_token);

    let requester = Principal::parse("fuzz.requester").unwrap();
    let job_id = JobId::parse("job_aaaaaaaaaaaaaaaa").unwrap();
    match job.terms(job_id, &requester, 1, NOW_MS) {
        Ok((terms, tokens)) => {
            assert!(!tokens.is_empty() && tokens.len() <= MAX_JOB_TOKENS);
            let distinct: HashSet<&Token> = tokens.iter().collect();
            assert_eq!(distinct.len(), tokens.len(), "duplicate tokens in a job");
            let asked: HashSet<&Token> = job.tokens.iter().collect();
            assert_eq!(distinct, asked, "the job lists other tokens than asked");
            assert!(terms.expires_at > NOW_MS && terms.expires_at - NOW_MS <= MAX_JOB_LIFETIME_MS);
            assert!(terms.max_releases_per_token >= 1);
            assert_eq!(terms.created_at, NOW_MS);
            // What the reply carries for the expiry reads back the same.
            assert_eq!(from_timestamp(&timestamp(terms.expires_at)), terms.expires_at);
        }
        Err(error) => refused(&error),
    }
}

fn translate_job_id(job_id: &str) {
    match JobId::parse(job_id) {
        Ok(id) => clean(id.as_str()),
        Err(error) => refused(&error.into()),
    }
}

fn translate_detokenize(request: &pb::DetokenizeRequest) {
    let result = (|| Ok::<_, VaultError>((JobId::parse(&request.job_id)?, parse_tokens(&request.tokens)?)))();
    match result {
        Ok((job_id, tokens)) => {
            clean(job_id.as_str());
            tokens.iter().for_each(clean_token);
        }
        Err(error) => refused(&error),
    }
}

fn translate_create_tenant(request: &pb::CreateTenantRequest) {
    let result = (|| {
        Ok::<_, VaultError>((
            TenantId::parse(&request.tenant)?,
            FreeText::parse(&request.display_name, "display name")?,
        ))
    })();
    match result {
        Ok((tenant, display_name)) => {
            clean(tenant.as_str());
            clean(display_name.as_str());
        }
        Err(error) => refused(&error),
    }
}

/// `AuditService.ListAuditEntries`: `audit_filter` and `operation_filter`.
fn translate_list_audit_entries(request: &pb::ListAuditEntriesRequest) {
    let operation_filter = |text: &str| {
        mnvault_core::audit::Operation::ALL
            .iter()
            .map(|operation| operation.id())
            .find(|id| *id == text)
            .ok_or_else(|| VaultError::InvalidArgument("the operation is not one the audit log records".into()))
    };
    let result = (|| {
        Ok::<_, VaultError>((
            optional(&request.tenant, TenantId::parse)?,
            optional(&request.token, Token::parse)?,
            optional(&request.job_id, JobId::parse)?,
            optional(&request.operation, operation_filter)?,
            request.since.as_ref().map(from_timestamp),
            request.until.as_ref().map(from_timestamp),
        ))
    })();
    match result {
        Ok((tenant, token, job_id, _, _, _)) => {
            tenant.iter().for_each(|t| clean(t.as_str()));
            token.iter().for_each(clean_token);
            job_id.iter().for_each(|j| clean(j.as_str()));
        }
        Err(error) => refused(&error),
    }
    let page = mnvault_core::vault::AUDIT_PAGE;
    let limit = if request.limit == 0 { page } else { request.limit.min(page) };
    assert!((1..=page).contains(&limit));
}

fuzz_target!(|data: &[u8]| {
    if let Some(r) = decode::<pb::TokenizeRequest>(data) {
        translate_tokenize(&r);
    }
    if let Some(r) = decode::<pb::DescribeTokenRequest>(data) {
        translate_describe_token(&r);
    }
    if let Some(r) = decode::<pb::CreateFilingJobRequest>(data) {
        translate_create_filing_job(&r);
    }
    if let Some(r) = decode::<pb::ApproveFilingJobRequest>(data) {
        translate_job_id(&r.job_id);
    }
    if let Some(r) = decode::<pb::GetFilingJobRequest>(data) {
        translate_job_id(&r.job_id);
    }
    if let Some(r) = decode::<pb::CancelFilingJobRequest>(data) {
        translate_job_id(&r.job_id);
    }
    if let Some(r) = decode::<pb::DetokenizeRequest>(data) {
        translate_detokenize(&r);
    }
    let _ = decode::<pb::ListPurposesRequest>(data);
    let _ = decode::<pb::VerifyAuditChainRequest>(data);
    if let Some(r) = decode::<pb::CreateTenantRequest>(data) {
        translate_create_tenant(&r);
    }
    if let Some(r) = decode::<pb::ListAuditEntriesRequest>(data) {
        translate_list_audit_entries(&r);
    }
});
