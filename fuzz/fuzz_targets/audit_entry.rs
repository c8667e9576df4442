//! Audit entries as the store hands them back (`AuditRecord` with arbitrary
//! field values) and their verification (`ChainVerifier`).
//!
//! A fixed chain key stands in for the vault's. Invariants:
//! - nothing panics, whatever the fields hold;
//! - an entry the fuzzer made never verifies, wherever it stands in the chain;
//! - a chain sealed here verifies; after any change to one field of one entry
//!   it breaks, and the break names that entry;
//! - the canonical encoding is injective: different entries never encode
//!   alike (or an edit could keep its hash);
//! - `AuditRecord::seal` stores no number, whatever the reason says.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{self, Arbitrary, Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use mnvault_core::audit::{AuditDraft, AuditRecord, ChainVerifier, Operation, Outcome};
use mnvault_core::id::{JobId, Principal, RequestId, TenantId, Token};
use mnvault_core::number::contains_number;
use mnvault_core::purpose::Purpose;
use mnvault_keys::{AuditChainKey, KeyMaterial, GENESIS_HASH, KEY_LEN};

const BASE32_LOWER: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn key() -> &'static AuditChainKey {
    static KEY: OnceLock<AuditChainKey> = OnceLock::new();
    KEY.get_or_init(|| AuditChainKey::new(&KeyMaterial::from_bytes([0x2b; KEY_LEN])))
}

/// An entry as a database writer could leave it: any value in any column.
#[derive(Arbitrary, Debug, Clone)]
struct RawEntry {
    seq: u64,
    time_ms: i64,
    principal: String,
    tenant: String,
    operation: String,
    outcome: String,
    reason: String,
    job_id: String,
    purpose: String,
    tokens: Vec<String>,
    record_count: u64,
    prev_hash: [u8; 32],
    hash: [u8; 32],
    request_id: String,
    mac: Option<[u8; 32]>,
}

impl RawEntry {
    fn record(self) -> AuditRecord {
        AuditRecord {
            seq: self.seq,
            time_ms: self.time_ms,
            principal: self.principal,
            tenant: self.tenant,
            operation: self.operation,
            outcome: self.outcome,
            reason: self.reason,
            job_id: self.job_id,
            purpose: self.purpose,
            tokens: self.tokens,
            record_count: self.record_count,
            request_id: self.request_id,
            prev_hash: self.prev_hash,
            hash: self.hash,
            mac: self.mac,
        }
    }
}

/// What a call could put in a draft: text that becomes an identifier only if it parses.
#[derive(Arbitrary, Debug)]
struct RawDraft {
    principal: Option<String>,
    tenant: Option<String>,
    operation: u8,
    outcome: u8,
    reason: String,
    job_id: Option<String>,
    purpose: Option<u8>,
    tokens: Vec<String>,
    record_count: u64,
    time_ms: i64,
    /// Base32 characters of a request id, as the vault draws them.
    request_id: Option<[u8; 26]>,
}

impl RawDraft {
    fn draft(&self) -> AuditDraft {
        let outcomes = [Outcome::Ok, Outcome::Denied, Outcome::Invalid, Outcome::NotFound, Outcome::Failed];
        let mut draft = AuditDraft::new(Operation::ALL[usize::from(self.operation) % Operation::ALL.len()]);
        draft.principal = self.principal.as_deref().and_then(|p| Principal::parse(p).ok());
        draft.tenant = self.tenant.as_deref().and_then(|t| TenantId::parse(t).ok());
        draft.outcome = outcomes[usize::from(self.outcome) % outcomes.len()];
        draft.reason = self.reason.clone();
        draft.job_id = self.job_id.as_deref().and_then(|j| JobId::parse(j).ok());
        draft.purpose = self.purpose.map(|p| Purpose::ALL[usize::from(p) % Purpose::ALL.len()]);
        draft.tokens = self.tokens.iter().filter_map(|t| Token::parse(t).ok()).collect();
        draft.record_count = self.record_count;
        draft.request_id = self.request_id.and_then(|chars| {
            let base32: String = chars.iter().map(|b| BASE32_LOWER[usize::from(*b) % 32] as char).collect();
            RequestId::parse(&format!("req_{base32}")).ok()
        });
        draft
    }
}

/// A change to one field of one entry.
#[derive(Arbitrary, Debug)]
enum Edit {
    Seq(u64),
    Time(i64),
    Principal(String),
    Tenant(String),
    Operation(String),
    Outcome(String),
    Reason(String),
    JobId(String),
    Purpose(String),
    Tokens(Vec<String>),
    RecordCount(u64),
    PrevHash([u8; 32]),
    Hash([u8; 32]),
    Remove,
    RequestId(String),
}

/// A chain a writer may have changed: the entries the fuzzer could not sign
/// must never pass.
fn foreign_entries(u: &mut Unstructured<'_>) -> ArbResult<()> {
    let entries: Vec<RawEntry> = Vec::arbitrary(u)?;
    let mut verifier = ChainVerifier::new(key());
    let mut verified = 0usize;
    for entry in entries {
        let record = entry.record();
        let _ = record.canonical_bytes();
        if verifier.check(&record).is_ok() {
            verified += 1;
        } else {
            break;
        }
    }
    assert_eq!(verified, 0, "an entry the fuzzer made verified");
    // An empty chain ends at genesis and nowhere else.
    let (head_seq, head_hash) = <(u64, [u8; 32])>::arbitrary(u)?;
    let finished = verifier.finish(head_seq, &head_hash);
    assert_eq!(finished.is_ok(), head_seq == 0 && head_hash == GENESIS_HASH);
    Ok(())
}

fn sealed_chain_then_edit(u: &mut Unstructured<'_>) -> ArbResult<()> {
    let drafts: Vec<RawDraft> = Vec::arbitrary(u)?;
    if drafts.is_empty() {
        return Ok(());
    }
    let mut prev = GENESIS_HASH;
    let mut chain = Vec::with_capacity(drafts.len());
    for (i, raw) in drafts.iter().enumerate() {
        let record = AuditRecord::seal(raw.draft(), i as u64 + 1, raw.time_ms, prev, key());
        assert!(!contains_number(&record.reason), "a number reached an audit entry");
        let all_text = [&record.principal, &record.tenant, &record.job_id, &record.purpose, &record.request_id];
        assert!(all_text.iter().all(|t| !contains_number(t)));
        // Legacy tokens are twelve digits by design; opaque ones hold no number.
        assert!(record.tokens.iter().all(|t| t.len() == 12 || !contains_number(t)));
        prev = record.hash;
        chain.push(record);
    }
    let mut verifier = ChainVerifier::new(key());
    chain.iter().for_each(|e| verifier.check(e).expect("a sealed chain verifies"));
    let last = chain.last().unwrap();
    verifier.finish(last.seq, &last.hash).expect("head matches");

    let index = usize::arbitrary(u)? % chain.len();
    let edit = Edit::arbitrary(u)?;
    let mut edited = chain.clone();
    let before = edited[index].clone();
    let removed = matches!(edit, Edit::Remove);
    {
        let e = &mut edited[index];
        match edit {
            Edit::Seq(v) => e.seq = v,
            Edit::Time(v) => e.time_ms = v,
            Edit::Principal(v) => e.principal = v,
            Edit::Tenant(v) => e.tenant = v,
            Edit::Operation(v) => e.operation = v,
            Edit::Outcome(v) => e.outcome = v,
            Edit::Reason(v) => e.reason = v,
            Edit::JobId(v) => e.job_id = v,
            Edit::Purpose(v) => e.purpose = v,
            Edit::Tokens(v) => e.tokens = v,
            Edit::RecordCount(v) => e.record_count = v,
            Edit::PrevHash(v) => e.prev_hash = v,
            Edit::Hash(v) => e.hash = v,
            Edit::RequestId(v) => e.request_id = v,
            Edit::Remove => {}
        }
    }
    if removed {
        edited.remove(index);
    }
    let changed = removed || edited[index] != before;
    if changed && !removed {
        // Injectivity of the encoding: a changed field changes the bytes
        // (unless only the hashes changed, which the encoding leaves out).
        let hashes_only =
            AuditRecord { prev_hash: before.prev_hash, hash: before.hash, ..edited[index].clone() } == before;
        if !hashes_only {
            assert_ne!(edited[index].canonical_bytes(), before.canonical_bytes(), "two entries encode alike");
        }
    }

    let mut verifier = ChainVerifier::new(key());
    let outcome = edited.iter().try_for_each(|e| verifier.check(e));
    let outcome = outcome.and_then(|()| {
        let head = chain.last().unwrap();
        verifier.finish(head.seq, &head.hash).map(|_| ())
    });
    match outcome {
        Ok(()) => assert!(!changed, "an edited chain verified"),
        Err(broken) => {
            assert!(changed, "an intact chain did not verify: {broken}");
            // (The problem text quotes stored sequence numbers, so it is not
            // checked for digit runs here: a writer chooses those.)
            assert_eq!(broken.seq, index as u64 + 1, "the break names another entry: {broken}");
        }
    }
    Ok(())
}

fn run(data: &[u8]) -> ArbResult<()> {
    let Some((&mode, rest)) = data.split_first() else { return Ok(()) };
    let mut u = Unstructured::new(rest);
    if mode % 2 == 0 {
        foreign_entries(&mut u)
    } else {
        sealed_chain_then_edit(&mut u)
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
