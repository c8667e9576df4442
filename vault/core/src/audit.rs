//! The tamper-evident audit log: what an entry holds, how it is chained, and
//! how the chain is verified.
//!
//! Every entry carries the hash of the entry before it and its own hash, an
//! HMAC-SHA-256 (see [`mnvault_keys::AuditChainKey`]) over the previous hash
//! and a canonical encoding of every field. The MAC key is wrapped by the root
//! key, which lives outside the database, so someone who can write the
//! database can neither edit an entry nor recompute the chain after it.
//! Entries never hold a number: only tokens, names and reasons.
//!
//! An entry written by a call names the call's request id, which the MAC
//! covers too. Entries without one (written before request ids existed, or
//! by `mnvault init`) keep the first encoding, so they still verify; see
//! [`AuditRecord::canonical_bytes`].

use std::fmt;

use mnvault_keys::{AuditChainKey, GENESIS_HASH};

use crate::id::{JobId, Principal, RequestId, TenantId, Token};
use crate::number::redact_numbers;
use crate::purpose::Purpose;

/// What a call did. The identifiers are stored; never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `TokenService.Tokenize`.
    Tokenize,
    /// `TokenService.TokenizeStream`, one entry per batch.
    TokenizeStream,
    /// `TokenService.DescribeToken`.
    DescribeToken,
    /// `FilingService.CreateFilingJob`.
    CreateFilingJob,
    /// `FilingService.ApproveFilingJob`.
    ApproveFilingJob,
    /// `FilingService.Detokenize`: the only operation that releases numbers.
    Detokenize,
    /// `FilingService.GetFilingJob`.
    GetFilingJob,
    /// `FilingService.CancelFilingJob`.
    CancelFilingJob,
    /// `FilingService.ListPurposes`.
    ListPurposes,
    /// `AdminService.CreateTenant`.
    CreateTenant,
    /// `AuditService.ListAuditEntries`.
    ListAuditEntries,
    /// `AuditService.VerifyAuditChain`.
    VerifyAuditChain,
    /// Not a call: a configuration reload (SIGHUP) that changed
    /// `[principals]`, recorded by the vault itself, naming who was added,
    /// removed or granted differently.
    ReloadPrincipals,
    /// `KeyService.RotateTenantKey`; also the vault's own scheduled rotation.
    RotateTenantKey,
    /// `KeyService.RewrapTenantRecords`: one batch of records re-sealed.
    RewrapTenantRecords,
    /// `KeyService.GetKeyStatus`.
    GetKeyStatus,
    /// `KeyService.RetireKeyVersion`.
    RetireKeyVersion,
    /// Not a call: `mnvault keys rotate-root` re-wrapped stored keys under
    /// a new root key.
    RotateRootKey,
    /// `RetentionService.SetRetention`: document classes, end date, legal hold.
    SetRetention,
    /// `RetentionService.PurgeExpired`: a purge asked for (or its dry run).
    PurgeExpired,
    /// Not a call: the deletion of sealed numbers past their retention date
    /// (by a purge, asked for or in the background), naming the tokens.
    DeleteRecords,
    /// `RetentionService.IssueDeletionCertificate`.
    IssueDeletionCertificate,
    /// `AdminService.ExportTenant`: releases a tenant's numbers, encrypted
    /// to a recipient, within an approved job.
    ExportTenant,
    /// `AdminService.ShredTenant`.
    ShredTenant,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 24] = [
        Operation::Tokenize,
        Operation::TokenizeStream,
        Operation::DescribeToken,
        Operation::CreateFilingJob,
        Operation::ApproveFilingJob,
        Operation::Detokenize,
        Operation::GetFilingJob,
        Operation::CancelFilingJob,
        Operation::ListPurposes,
        Operation::CreateTenant,
        Operation::ListAuditEntries,
        Operation::VerifyAuditChain,
        Operation::ReloadPrincipals,
        Operation::RotateTenantKey,
        Operation::RewrapTenantRecords,
        Operation::GetKeyStatus,
        Operation::RetireKeyVersion,
        Operation::RotateRootKey,
        Operation::SetRetention,
        Operation::PurgeExpired,
        Operation::DeleteRecords,
        Operation::IssueDeletionCertificate,
        Operation::ExportTenant,
        Operation::ShredTenant,
    ];

    /// Stable identifier stored in entries.
    pub fn id(self) -> &'static str {
        match self {
            Operation::Tokenize => "token.tokenize",
            Operation::TokenizeStream => "token.tokenize-stream",
            Operation::DescribeToken => "token.describe",
            Operation::CreateFilingJob => "filing.create-job",
            Operation::ApproveFilingJob => "filing.approve-job",
            Operation::Detokenize => "filing.detokenize",
            Operation::GetFilingJob => "filing.get-job",
            Operation::CancelFilingJob => "filing.cancel-job",
            Operation::ListPurposes => "filing.list-purposes",
            Operation::CreateTenant => "admin.create-tenant",
            Operation::ListAuditEntries => "audit.list",
            Operation::VerifyAuditChain => "audit.verify",
            Operation::ReloadPrincipals => "admin.reload-principals",
            Operation::RotateTenantKey => "keys.rotate",
            Operation::RewrapTenantRecords => "keys.rewrap",
            Operation::GetKeyStatus => "keys.status",
            Operation::RetireKeyVersion => "keys.retire",
            Operation::RotateRootKey => "keys.rotate-root",
            Operation::SetRetention => "retention.set",
            Operation::PurgeExpired => "retention.purge",
            Operation::DeleteRecords => "retention.delete",
            Operation::IssueDeletionCertificate => "retention.certificate",
            Operation::ExportTenant => "admin.export-tenant",
            Operation::ShredTenant => "admin.shred-tenant",
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Carried out.
    Ok,
    /// Refused by a rule (permission or precondition).
    Denied,
    /// Refused because the input was malformed.
    Invalid,
    /// Something named does not exist.
    NotFound,
    /// Not carried out because of a fault (database, integrity).
    Failed,
}

impl Outcome {
    /// Stable identifier stored in entries.
    pub fn id(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Invalid => "invalid",
            Outcome::NotFound => "not-found",
            Outcome::Failed => "failed",
        }
    }
}

/// An entry before it is appended: the chain assigns `seq`, time and hashes.
///
/// Every field is a parsed identifier or text the vault wrote itself: what a
/// caller sent reaches an entry only after it parsed.
#[derive(Debug, Clone)]
pub struct AuditDraft {
    /// The caller, once authenticated.
    pub principal: Option<Principal>,
    /// Tenant the call concerned.
    pub tenant: Option<TenantId>,
    /// What was called.
    pub operation: Operation,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it was refused or failed (a public message, never a number).
    pub reason: String,
    /// Filing job concerned.
    pub job_id: Option<JobId>,
    /// Purpose of that job.
    pub purpose: Option<Purpose>,
    /// Tokens the call handled.
    pub tokens: Vec<Token>,
    /// Records the call handled.
    pub record_count: u64,
    /// The call that wrote the entry; none for the vault's own entries.
    pub request_id: Option<RequestId>,
}

/// Principal recorded for a caller without a usable certificate.
pub const UNAUTHENTICATED: &str = "(unauthenticated)";

impl AuditDraft {
    /// A draft for a call, outcome `Ok` until told otherwise.
    pub fn new(operation: Operation) -> Self {
        Self {
            principal: None,
            tenant: None,
            operation,
            outcome: Outcome::Ok,
            reason: String::new(),
            job_id: None,
            purpose: None,
            tokens: Vec::new(),
            record_count: 0,
            request_id: None,
        }
    }

    /// A draft for a call by `principal` on `tenant`.
    pub fn by(principal: &Principal, operation: Operation, tenant: Option<&TenantId>) -> Self {
        Self { principal: Some(principal.clone()), tenant: tenant.cloned(), ..Self::new(operation) }
    }
}

/// An entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// Unix milliseconds.
    pub time_ms: i64,
    /// See [`AuditDraft`].
    pub principal: String,
    /// See [`AuditDraft`].
    pub tenant: String,
    /// Operation identifier.
    pub operation: String,
    /// Outcome identifier.
    pub outcome: String,
    /// See [`AuditDraft`].
    pub reason: String,
    /// See [`AuditDraft`].
    pub job_id: String,
    /// See [`AuditDraft`].
    pub purpose: String,
    /// See [`AuditDraft`].
    pub tokens: Vec<String>,
    /// See [`AuditDraft`].
    pub record_count: u64,
    /// See [`AuditDraft`]; empty when none.
    pub request_id: String,
    /// Hash of the entry before (zeros for the first).
    pub prev_hash: [u8; 32],
    /// This entry's hash.
    pub hash: [u8; 32],
}

impl AuditRecord {
    /// Builds the stored form of `draft` at position `seq` after `prev_hash`.
    ///
    /// Identifiers are parsed types, which hold no number by their grammar;
    /// the reason is redacted as well, as a last line of defence.
    pub fn seal(draft: AuditDraft, seq: u64, time_ms: i64, prev_hash: [u8; 32], key: &AuditChainKey) -> Self {
        let text = |id: Option<&str>| id.unwrap_or_default().to_owned();
        let mut record = AuditRecord {
            seq,
            time_ms,
            principal: draft.principal.map_or_else(|| UNAUTHENTICATED.to_owned(), |p| p.to_string()),
            tenant: text(draft.tenant.as_ref().map(TenantId::as_str)),
            operation: draft.operation.id().to_owned(),
            outcome: draft.outcome.id().to_owned(),
            reason: redact_numbers(&draft.reason).into_owned(),
            job_id: text(draft.job_id.as_ref().map(JobId::as_str)),
            purpose: text(draft.purpose.map(|p| p.id())),
            tokens: draft.tokens.into_iter().map(|t| t.to_string()).collect(),
            record_count: draft.record_count,
            request_id: text(draft.request_id.as_ref().map(RequestId::as_str)),
            prev_hash,
            hash: [0; 32],
        };
        record.hash = key.link(&prev_hash, &record.canonical_bytes());
        record
    }

    /// The bytes the hash covers: every field but the hashes, each length-prefixed
    /// so that no two different entries encode alike.
    ///
    /// Versioned by whether the entry names a request id: without one it is
    /// encoding 1, byte for byte what the vault wrote before request ids
    /// existed; with one it is encoding 2, the same fields and then the
    /// request id. The version byte tells the two apart, so adding, removing
    /// or changing a request id in the database breaks the chain.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.tokens.len() * 32);
        let version = if self.request_id.is_empty() { 1 } else { 2 };
        out.push(version);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        for field in
            [&self.principal, &self.tenant, &self.operation, &self.outcome, &self.reason, &self.job_id, &self.purpose]
        {
            put_field(&mut out, field.as_bytes());
        }
        out.extend_from_slice(&self.record_count.to_be_bytes());
        out.extend_from_slice(&(self.tokens.len() as u64).to_be_bytes());
        for token in &self.tokens {
            put_field(&mut out, token.as_bytes());
        }
        if version == 2 {
            put_field(&mut out, self.request_id.as_bytes());
        }
        out
    }
}

fn put_field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Where a chain stopped verifying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The first entry that does not verify (or the missing position).
    pub seq: u64,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "entry #{}: {}", self.seq, self.problem)
    }
}

/// Walks a chain page by page; feed entries in sequence order.
pub struct ChainVerifier<'k> {
    key: &'k AuditChainKey,
    last_seq: u64,
    last_hash: [u8; 32],
}

impl<'k> ChainVerifier<'k> {
    /// A verifier at the start of the chain.
    pub fn new(key: &'k AuditChainKey) -> Self {
        Self::resume(key, 0, GENESIS_HASH)
    }

    /// A verifier that continues after entry `seq`, whose hash was `hash`,
    /// both verified before.
    pub fn resume(key: &'k AuditChainKey, seq: u64, hash: [u8; 32]) -> Self {
        Self { key, last_seq: seq, last_hash: hash }
    }

    /// Checks the next entry: its position, its link to the one before, its MAC.
    pub fn check(&mut self, entry: &AuditRecord) -> Result<(), ChainBreak> {
        let expected_seq = self.last_seq + 1;
        if entry.seq != expected_seq {
            return Err(ChainBreak {
                seq: expected_seq,
                problem: format!("missing: the next entry present is #{}", entry.seq),
            });
        }
        if entry.prev_hash != self.last_hash {
            return Err(ChainBreak { seq: entry.seq, problem: "does not link to the entry before it".into() });
        }
        if !self.key.verify(&entry.prev_hash, &entry.canonical_bytes(), &entry.hash) {
            return Err(ChainBreak { seq: entry.seq, problem: "content does not match its hash (edited)".into() });
        }
        self.last_seq = entry.seq;
        self.last_hash = entry.hash;
        Ok(())
    }

    /// Checks that the chain ends where the recorded head says it does.
    pub fn finish(&self, head_seq: u64, head_hash: &[u8; 32]) -> Result<VerifiedChain, ChainBreak> {
        if head_seq != self.last_seq || head_hash != &self.last_hash {
            return Err(ChainBreak {
                seq: self.last_seq + 1,
                problem: format!("the chain head records {head_seq} entries but {} verify", self.last_seq),
            });
        }
        Ok(VerifiedChain { entries: self.last_seq, head_hash: self.last_hash })
    }
}

/// A chain that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChain {
    /// Entries checked.
    pub entries: u64,
    /// Hash of the last entry.
    pub head_hash: [u8; 32],
}

#[cfg(test)]
mod tests {
    use super::*;
    use mnvault_keys::KeyMaterial;

    fn principal(name: &str) -> Principal {
        Principal::parse(name).unwrap()
    }

    fn tenant(name: &str) -> TenantId {
        TenantId::parse(name).unwrap()
    }

    fn chain(key: &AuditChainKey, n: u64) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH;
        (1..=n)
            .map(|seq| {
                let mut draft = AuditDraft::by(&principal("payroll"), Operation::Tokenize, Some(&tenant("demo")));
                draft.tokens = vec![crate::mint::draw_token(crate::id::TokenFormat::Opaque)];
                let record = AuditRecord::seal(draft, seq, 1_700_000_000_000 + seq as i64, prev, key);
                prev = record.hash;
                record
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies_and_an_edit_is_named() {
        let key = AuditChainKey::new(&KeyMaterial::generate());
        let entries = chain(&key, 5);
        let mut verifier = ChainVerifier::new(&key);
        entries.iter().for_each(|e| verifier.check(e).unwrap());
        let last = entries.last().unwrap();
        assert_eq!(verifier.finish(5, &last.hash).unwrap().entries, 5);

        let mut edited = entries.clone();
        edited[2].tokens[0] = "mnt_other".into();
        let mut verifier = ChainVerifier::new(&key);
        let broken = edited.iter().try_for_each(|e| verifier.check(e)).unwrap_err();
        assert_eq!(broken.seq, 3);
    }

    #[test]
    fn a_removed_entry_and_a_truncated_tail_are_caught() {
        let key = AuditChainKey::new(&KeyMaterial::generate());
        let mut entries = chain(&key, 4);
        let last_hash = entries[3].hash;
        entries.remove(1);
        let mut verifier = ChainVerifier::new(&key);
        assert_eq!(entries.iter().try_for_each(|e| verifier.check(e)).unwrap_err().seq, 2);

        let entries = chain(&key, 4);
        let mut verifier = ChainVerifier::new(&key);
        entries[..3].iter().for_each(|e| verifier.check(e).unwrap());
        assert_eq!(verifier.finish(4, &last_hash).unwrap_err().seq, 4);
    }

    #[test]
    fn a_number_in_a_reason_is_redacted_before_it_is_stored() {
        let key = AuditChainKey::new(&KeyMaterial::generate());
        let mut draft = AuditDraft::new(Operation::Detokenize);
        draft.reason = "token 621498320257 is not listed".into();
        let record = AuditRecord::seal(draft, 1, 0, GENESIS_HASH, &key);
        assert_eq!(record.reason, format!("token {} is not listed", crate::number::REDACTED));
        assert_eq!(record.principal, UNAUTHENTICATED);
        let mut verifier = ChainVerifier::new(&key);
        verifier.check(&record).unwrap();
    }

    /// An entry as the vault wrote it before request ids: fixed key, fixed
    /// fields, and the hash that vault computed for them.
    #[test]
    fn an_entry_written_before_request_ids_still_verifies() {
        let key = AuditChainKey::new(&KeyMaterial::from_bytes([7; 32]));
        let entry = AuditRecord {
            seq: 1,
            time_ms: 1_700_000_000_000,
            principal: "payroll".into(),
            tenant: "demo".into(),
            operation: Operation::Tokenize.id().into(),
            outcome: Outcome::Ok.id().into(),
            reason: String::new(),
            job_id: String::new(),
            purpose: String::new(),
            tokens: vec!["mnt_abcdefghijklmnopqrstuvwxyz".into()],
            record_count: 1,
            request_id: String::new(),
            prev_hash: GENESIS_HASH,
            hash: [0; 32],
        };
        let written = data_encoding::HEXLOWER
            .decode(b"eb4568009a0c95cb38f7e271866dd6327ded4b7434ab83f79a16db2ae2806147")
            .unwrap();
        let entry = AuditRecord { hash: written.try_into().unwrap(), ..entry };
        let mut verifier = ChainVerifier::new(&key);
        verifier.check(&entry).unwrap();
        assert_eq!(verifier.finish(1, &entry.hash).unwrap().entries, 1);
    }

    #[test]
    fn a_request_id_is_covered_by_the_chain() {
        let key = AuditChainKey::new(&KeyMaterial::generate());
        let mut draft = AuditDraft::by(&principal("payroll"), Operation::Tokenize, Some(&tenant("demo")));
        draft.request_id = Some(crate::mint::draw_request_id());
        let entry = AuditRecord::seal(draft, 1, 1_700_000_000_000, GENESIS_HASH, &key);
        assert!(entry.request_id.starts_with("req_"));
        ChainVerifier::new(&key).check(&entry).unwrap();

        let changed = AuditRecord { request_id: crate::mint::draw_request_id().to_string(), ..entry.clone() };
        let removed = AuditRecord { request_id: String::new(), ..entry.clone() };
        for edited in [changed, removed] {
            assert_eq!(ChainVerifier::new(&key).check(&edited).unwrap_err().seq, 1, "{}", edited.request_id);
        }

        // Nor can one be added to an entry written without.
        let without = AuditRecord::seal(AuditDraft::new(Operation::ListPurposes), 1, 0, GENESIS_HASH, &key);
        let added = AuditRecord { request_id: entry.request_id.clone(), ..without.clone() };
        ChainVerifier::new(&key).check(&without).unwrap();
        assert_eq!(ChainVerifier::new(&key).check(&added).unwrap_err().seq, 1);
    }

    #[test]
    fn a_chain_recomputed_without_the_key_fails() {
        let key = AuditChainKey::new(&KeyMaterial::generate());
        let forger = AuditChainKey::new(&KeyMaterial::generate());
        let forged = chain(&forger, 2);
        let mut verifier = ChainVerifier::new(&key);
        assert_eq!(verifier.check(&forged[0]).unwrap_err().seq, 1);
    }
}
