//! The tamper-evident audit log: what an entry holds, how it is chained, and
//! how the chain is verified.
//!
//! Every entry carries the hash of the entry before it and its own hash:
//! SHA-256 over the previous hash and the digest of a canonical encoding of
//! every field ([`mnvault_keys::entry_hash`]). Anyone can recompute that with
//! no secret; what makes the chain evidence is the vault's Ed25519 signature
//! over its head ([`checkpoint`]), made on every release, periodically and on
//! demand, and kept outside the server as checkpoint files and in the audit
//! sinks. Whoever verifies needs only the public key.
//!
//! Each entry also carries a MAC of its hash under the chain key, which is
//! wrapped by the root key: the vault checks it before it trusts an entry for
//! a decision of its own, so a database writer cannot append an entry the
//! vault believes, even after the last checkpoint.
//!
//! Entries never hold a number: only tokens, names and reasons.
//!
//! Entries written before signed checkpoints have no MAC column: their hash
//! is itself an HMAC, which only the vault can check (encodings 1 and 2; see
//! [`AuditRecord::canonical_bytes`]). A public verifier checks only their
//! links, and says how many it could not check.

use std::fmt;

use mnvault_keys::{entry_digest, entry_hash, AuditChainKey, GENESIS_HASH};

use crate::id::{JobId, Principal, RequestId, TenantId, Token};
use crate::number::redact_numbers;
use crate::purpose::Purpose;

pub mod alarm;
pub mod checkpoint;
pub mod export;
pub mod line;
pub mod report;

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
    /// Not a call: a release pattern that does not fit a filing job (see
    /// `audit::alarm`), recorded by the vault itself.
    RaiseAlert,
    /// `AuditService.SignCheckpoint`: the chain head signed on demand.
    SignCheckpoint,
    /// `KeyService.RotateSigningKey`: a new vault signing key.
    RotateSigningKey,
    /// `AdminService.GetTenantPolicy`.
    GetTenantPolicy,
    /// `AdminService.ProposeTenantPolicy`: a change waiting for a second key-admin.
    ProposeTenantPolicy,
    /// `AdminService.ApproveTenantPolicy`: a change applied.
    ApproveTenantPolicy,
    /// `AdminService.RevokeCertificate`: a client certificate revoked, its
    /// serial in the reason (see `revocation`).
    RevokeCertificate,
    /// `AdminService.ListRevokedCertificates`.
    ListRevokedCertificates,
    /// `CollectionService.CreateCollection`: a link for an employee.
    CreateCollection,
    /// `CollectionService.GetCollection`; naming the tokens once submitted.
    GetCollection,
    /// `CollectionService.WatchCollections`, one entry per collection sent.
    WatchCollections,
    /// `CollectionService.CancelCollection`.
    CancelCollection,
    /// The collection page showed a link's form (or refused the link).
    OpenCollection,
    /// The collection page stored the numbers typed, naming their tokens.
    SubmitCollection,
    /// Not a call: a collection found past its expiry, settled as expired.
    ExpireCollection,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 39] = [
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
        Operation::RaiseAlert,
        Operation::SignCheckpoint,
        Operation::RotateSigningKey,
        Operation::GetTenantPolicy,
        Operation::ProposeTenantPolicy,
        Operation::ApproveTenantPolicy,
        Operation::RevokeCertificate,
        Operation::ListRevokedCertificates,
        Operation::CreateCollection,
        Operation::GetCollection,
        Operation::WatchCollections,
        Operation::CancelCollection,
        Operation::OpenCollection,
        Operation::SubmitCollection,
        Operation::ExpireCollection,
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
            Operation::RaiseAlert => "audit.alert",
            Operation::SignCheckpoint => "audit.checkpoint",
            Operation::RotateSigningKey => "keys.rotate-signing",
            Operation::GetTenantPolicy => "admin.get-tenant-policy",
            Operation::ProposeTenantPolicy => "admin.propose-tenant-policy",
            Operation::ApproveTenantPolicy => "admin.approve-tenant-policy",
            Operation::RevokeCertificate => "admin.revoke-certificate",
            Operation::ListRevokedCertificates => "admin.list-revoked-certificates",
            Operation::CreateCollection => "collection.create",
            Operation::GetCollection => "collection.get",
            Operation::WatchCollections => "collection.watch",
            Operation::CancelCollection => "collection.cancel",
            Operation::OpenCollection => "collection.open",
            Operation::SubmitCollection => "collection.submit",
            Operation::ExpireCollection => "collection.expire",
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
    /// The vault's MAC of `hash`; `None` for an entry written before signed
    /// checkpoints, whose `hash` is itself an HMAC.
    pub mac: Option<[u8; 32]>,
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
            mac: Some([0; 32]),
        };
        record.hash = entry_hash(&prev_hash, &record.digest());
        record.mac = Some(key.mac(&record.hash));
        record
    }

    /// SHA-256 of [`Self::canonical_bytes`]: what a stub of this entry
    /// carries in an export.
    pub fn digest(&self) -> [u8; 32] {
        entry_digest(&self.canonical_bytes())
    }

    /// Whether this entry has the current form (public hash and a MAC).
    pub fn is_signed_form(&self) -> bool {
        self.mac.is_some()
    }

    /// The bytes the hash covers: every field but the hashes, each length-prefixed
    /// so that no two different entries encode alike.
    ///
    /// Versioned: entries of the current form (with a MAC) are encoding 3,
    /// the fields and then the request id (empty or not). Older entries:
    /// without a request id, encoding 1, byte for byte what the vault wrote
    /// before request ids existed; with one, encoding 2. The version byte
    /// tells them apart, so adding, removing or changing a request id or a
    /// MAC in the database breaks the chain.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.tokens.len() * 32);
        let version = match (self.mac.is_some(), self.request_id.is_empty()) {
            (true, _) => 3,
            (false, true) => 1,
            (false, false) => 2,
        };
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
        if version != 1 {
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
///
/// With the chain key (the vault, or `audit verify` run with the root key)
/// it checks every link, hash and MAC. Without ([`ChainVerifier::public`])
/// it checks every link and every public hash; the signatures over heads
/// are checked by [`checkpoint::CheckpointVerifier`] beside it.
pub struct ChainVerifier<'k> {
    key: Option<&'k AuditChainKey>,
    last_seq: u64,
    last_hash: [u8; 32],
    /// Whether an entry of the current form was seen: no older one may follow.
    signed_form: bool,
    /// Entries of the older form checked by their links only (no key).
    unchecked_legacy: u64,
    /// The last entry of the older form met (0: none).
    last_legacy: u64,
}

impl<'k> ChainVerifier<'k> {
    /// A verifier at the start of the chain, holding the chain key.
    pub fn new(key: &'k AuditChainKey) -> Self {
        Self::resume(key, 0, GENESIS_HASH)
    }

    /// A verifier at the start of the chain for someone who holds no secret.
    pub fn public() -> Self {
        Self {
            key: None,
            last_seq: 0,
            last_hash: GENESIS_HASH,
            signed_form: false,
            unchecked_legacy: 0,
            last_legacy: 0,
        }
    }

    /// [`Self::public`], continuing after entry `seq` whose hash `hash` a
    /// trusted signature vouched for.
    pub fn public_after(seq: u64, hash: [u8; 32]) -> Self {
        Self { last_seq: seq, last_hash: hash, ..Self::public() }
    }

    /// A verifier that continues after entry `seq`, whose hash was `hash`,
    /// both verified before.
    pub fn resume(key: &'k AuditChainKey, seq: u64, hash: [u8; 32]) -> Self {
        Self { key: Some(key), last_seq: seq, last_hash: hash, signed_form: false, unchecked_legacy: 0, last_legacy: 0 }
    }

    /// Checks the next entry: its position, its link to the one before, its
    /// hash, and (holding the key) its MAC.
    pub fn check(&mut self, entry: &AuditRecord) -> Result<(), ChainBreak> {
        self.check_position(entry.seq, &entry.prev_hash)?;
        match entry.mac {
            Some(mac) => {
                if entry_hash(&entry.prev_hash, &entry.digest()) != entry.hash {
                    return Err(ChainBreak {
                        seq: entry.seq,
                        problem: "content does not match its hash (edited)".into(),
                    });
                }
                if let Some(key) = self.key {
                    if !key.verify_mac(&entry.hash, &mac) {
                        return Err(ChainBreak {
                            seq: entry.seq,
                            problem: "its MAC does not verify (written by someone without the vault's chain key)"
                                .into(),
                        });
                    }
                }
                self.signed_form = true;
            }
            None => self.check_legacy(entry)?,
        }
        self.advance(entry.seq, entry.hash);
        Ok(())
    }

    /// Checks an entry an export left out, from its position, link and
    /// digest: its hash is recomputed, so it links as the entry itself would.
    pub fn check_stub(&mut self, seq: u64, prev_hash: &[u8; 32], digest: &[u8; 32]) -> Result<[u8; 32], ChainBreak> {
        self.check_position(seq, prev_hash)?;
        let hash = entry_hash(prev_hash, digest);
        self.signed_form = true;
        self.advance(seq, hash);
        Ok(hash)
    }

    /// Checks an entry of the older form an export left out: its hash is
    /// an HMAC, so only its link can be checked.
    pub fn check_legacy_stub(&mut self, seq: u64, prev_hash: &[u8; 32], hash: &[u8; 32]) -> Result<(), ChainBreak> {
        self.check_position(seq, prev_hash)?;
        if self.signed_form {
            return Err(ChainBreak {
                seq,
                problem: "an entry of the older form after entries of the current form (inserted)".into(),
            });
        }
        self.unchecked_legacy += 1;
        self.last_legacy = seq;
        self.advance(seq, *hash);
        Ok(())
    }

    fn check_legacy(&mut self, entry: &AuditRecord) -> Result<(), ChainBreak> {
        if self.signed_form {
            return Err(ChainBreak {
                seq: entry.seq,
                problem: "an entry of the older form after entries of the current form (inserted)".into(),
            });
        }
        self.last_legacy = entry.seq;
        match self.key {
            Some(key) if !key.verify(&entry.prev_hash, &entry.canonical_bytes(), &entry.hash) => {
                Err(ChainBreak { seq: entry.seq, problem: "content does not match its hash (edited)".into() })
            }
            Some(_) => Ok(()),
            None => {
                self.unchecked_legacy += 1;
                Ok(())
            }
        }
    }

    fn check_position(&self, seq: u64, prev_hash: &[u8; 32]) -> Result<(), ChainBreak> {
        let Some(expected_seq) = self.last_seq.checked_add(1) else {
            return Err(ChainBreak { seq, problem: "past the last position a log can have".into() });
        };
        if seq != expected_seq {
            let problem = if seq > expected_seq {
                format!("missing (removed): the next entry present is #{seq}")
            } else {
                format!("out of order: #{seq} comes again after #{} (inserted or reordered)", self.last_seq)
            };
            return Err(ChainBreak { seq: expected_seq, problem });
        }
        if prev_hash != &self.last_hash {
            return Err(ChainBreak {
                seq,
                problem: "does not link to the entry before it (inserted, reordered or the one before edited)".into(),
            });
        }
        Ok(())
    }

    fn advance(&mut self, seq: u64, hash: [u8; 32]) {
        self.last_seq = seq;
        self.last_hash = hash;
    }

    /// The last entry of the older form met (0: none).
    pub fn last_legacy(&self) -> u64 {
        self.last_legacy
    }

    /// The last entry checked: its position and hash.
    pub fn position(&self) -> (u64, [u8; 32]) {
        (self.last_seq, self.last_hash)
    }

    /// Checks that the chain ends where the recorded head says it does.
    pub fn finish(&self, head_seq: u64, head_hash: &[u8; 32]) -> Result<VerifiedChain, ChainBreak> {
        if head_seq != self.last_seq || head_hash != &self.last_hash {
            return Err(ChainBreak {
                seq: self.last_seq.saturating_add(1),
                problem: format!("the chain head records {head_seq} entries but {} verify", self.last_seq),
            });
        }
        Ok(self.verified())
    }

    /// What was checked so far, as a verified chain.
    pub fn verified(&self) -> VerifiedChain {
        VerifiedChain { entries: self.last_seq, head_hash: self.last_hash, unchecked_legacy: self.unchecked_legacy }
    }
}

/// A chain that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChain {
    /// Entries checked.
    pub entries: u64,
    /// Hash of the last entry.
    pub head_hash: [u8; 32],
    /// Entries of the older form (before signed checkpoints) whose content
    /// could be checked only with the chain key, which this verifier did
    /// not hold: their links were checked, their content was not.
    pub unchecked_legacy: u64,
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
            mac: None,
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

    #[test]
    fn a_public_verifier_catches_edits_without_any_key() {
        let key = AuditChainKey::new(&KeyMaterial::generate());
        let entries = chain(&key, 4);
        let mut verifier = ChainVerifier::public();
        entries.iter().for_each(|e| verifier.check(e).unwrap());
        assert_eq!(verifier.finish(4, &entries[3].hash).unwrap().unchecked_legacy, 0);

        let mut edited = entries.clone();
        edited[1].principal = "someone-else".into();
        let mut verifier = ChainVerifier::public();
        let broken = edited.iter().try_for_each(|e| verifier.check(e)).unwrap_err();
        assert_eq!((broken.seq, broken.problem.contains("edited")), (2, true), "{broken}");

        // Swapped entries: the first out of place is named.
        let mut swapped = entries.clone();
        swapped.swap(1, 2);
        let mut verifier = ChainVerifier::public();
        assert_eq!(swapped.iter().try_for_each(|e| verifier.check(e)).unwrap_err().seq, 2);
    }

    /// Without the chain key anyone can recompute public hashes after an
    /// edit: the vault's MAC is what tells its own entries from such a rewrite.
    #[test]
    fn a_rewrite_with_recomputed_hashes_fails_only_the_mac() {
        let key = AuditChainKey::new(&KeyMaterial::generate());
        let forger = AuditChainKey::new(&KeyMaterial::generate());
        let mut entries = chain(&key, 3);
        let mut forged = entries[1].clone();
        forged.principal = "someone-else".into();
        forged = AuditRecord::seal(
            AuditDraft::by(&principal("someone-else"), Operation::Tokenize, Some(&tenant("demo"))),
            2,
            forged.time_ms,
            entries[0].hash,
            &forger,
        );
        entries.truncate(1);
        entries.push(forged);
        let mut public = ChainVerifier::public();
        entries.iter().for_each(|e| public.check(e).unwrap());
        let mut keyed = ChainVerifier::new(&key);
        let broken = entries.iter().try_for_each(|e| keyed.check(e)).unwrap_err();
        assert_eq!((broken.seq, broken.problem.contains("MAC")), (2, true), "{broken}");
    }

    #[test]
    fn stubs_link_like_the_entries_they_stand_for() {
        let key = AuditChainKey::new(&KeyMaterial::generate());
        let entries = chain(&key, 3);
        let mut verifier = ChainVerifier::public();
        verifier.check(&entries[0]).unwrap();
        let hash = verifier.check_stub(2, &entries[1].prev_hash, &entries[1].digest()).unwrap();
        assert_eq!(hash, entries[1].hash);
        verifier.check(&entries[2]).unwrap();
        // A stub whose digest was changed breaks the next link.
        let mut verifier = ChainVerifier::public();
        verifier.check(&entries[0]).unwrap();
        verifier.check_stub(2, &entries[1].prev_hash, &[1; 32]).unwrap();
        assert_eq!(verifier.check(&entries[2]).unwrap_err().seq, 3);
    }

    #[test]
    fn older_entries_are_checked_by_link_only_without_the_key_and_never_after_newer_ones() {
        let key = AuditChainKey::new(&KeyMaterial::generate());
        let legacy_entry = |seq: u64, prev: [u8; 32]| {
            let mut entry = AuditRecord::seal(AuditDraft::new(Operation::ListPurposes), seq, 0, prev, &key);
            entry.mac = None;
            entry.hash = key.link(&prev, &entry.canonical_bytes());
            entry
        };
        let first = legacy_entry(1, GENESIS_HASH);
        let second = AuditRecord::seal(AuditDraft::new(Operation::ListPurposes), 2, 0, first.hash, &key);
        let mut keyed = ChainVerifier::new(&key);
        keyed.check(&first).unwrap();
        keyed.check(&second).unwrap();
        let mut public = ChainVerifier::public();
        public.check(&first).unwrap();
        public.check(&second).unwrap();
        assert_eq!(public.verified().unchecked_legacy, 1);
        // An entry of the older form after one of the newer is an insertion.
        let third = legacy_entry(3, second.hash);
        for mut verifier in [ChainVerifier::new(&key), ChainVerifier::public()] {
            verifier.check(&first).unwrap();
            verifier.check(&second).unwrap();
            let broken = verifier.check(&third).unwrap_err();
            assert!(broken.problem.contains("older form"), "{broken}");
        }
    }
}
