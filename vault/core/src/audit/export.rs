//! Reviewing the log offline: the filter values an operator names, and
//! exports that verify on their own (`mnvault audit search`, `mnvault audit
//! export`).
//!
//! An export is [`AuditLine`]s in the order a
//! [`LogWalk`](crate::vault::checkpoint::LogWalk) reads them:
//!
//! 1. every signing key of the log, oldest first;
//! 2. the *anchor*: the last signed checkpoint at or before the entry just
//!    before the first match ([`anchor_bound`]). It vouches for the hash the
//!    first entry written links to. Without one the range starts at entry 1;
//! 3. every entry from there to the head read at the start, in order: the
//!    matching ones whole, the others as stubs ([`entry_line`]), which carry
//!    just enough to recompute their hash and so keep the chain unbroken;
//! 4. each stored checkpoint of the range right after the entry it signs.
//!
//! Every page is read, written and dropped before the next: memory stays
//! bounded whatever the log's length or the filters.

use std::collections::VecDeque;

use super::checkpoint::{SignedCheckpoint, SigningKeyRecord, MAX_SIGNING_KEYS};
use super::line::AuditLine;
use super::{AuditRecord, Operation, Outcome};
use crate::store::{AuditFilter, ChainHead, Store, StoreError};
use crate::vault::AUDIT_PAGE;

/// Every outcome, in the order people read them.
const OUTCOMES: [Outcome; 5] = [Outcome::Ok, Outcome::Denied, Outcome::Invalid, Outcome::NotFound, Outcome::Failed];

// A new outcome must be added to `OUTCOMES`: this stops compiling until it is.
const _: fn(Outcome) = |outcome| match outcome {
    Outcome::Ok | Outcome::Denied | Outcome::Invalid | Outcome::NotFound | Outcome::Failed => {}
};

/// The stored identifier of the outcome `text` names, if it is one.
pub fn outcome_id(text: &str) -> Option<&'static str> {
    OUTCOMES.iter().map(|outcome| outcome.id()).find(|id| *id == text)
}

/// Every outcome identifier, for messages.
pub fn outcome_ids() -> String {
    OUTCOMES.iter().map(|outcome| outcome.id()).collect::<Vec<_>>().join(", ")
}

/// The stored identifier of the operation `text` names, if it is one.
pub fn operation_id(text: &str) -> Option<&'static str> {
    Operation::ALL.iter().map(|operation| operation.id()).find(|id| *id == text)
}

/// How an entry of an export's range is written: whole if it matched the
/// filters, else as a stub (its digest, or its hash for an entry of the
/// older form, whose hash no public verifier can recompute).
pub fn entry_line(entry: AuditRecord, matches: bool) -> AuditLine {
    if matches {
        AuditLine::Entry(entry)
    } else if entry.mac.is_some() {
        AuditLine::Stub { seq: entry.seq, prev_hash: entry.prev_hash, digest: entry.digest() }
    } else {
        AuditLine::LegacyStub { seq: entry.seq, prev_hash: entry.prev_hash, hash: entry.hash }
    }
}

/// The furthest position the anchor checkpoint may sign: the entry before
/// the first match, or the head when nothing matched (the export then
/// holds the keys, the anchor and the stubs after it, which still verify).
pub fn anchor_bound(first_match: Option<u64>, head_seq: u64) -> u64 {
    first_match.map_or(head_seq, |seq| seq.saturating_sub(1).min(head_seq))
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing a line failed.
    #[error("cannot write the export: {0}")]
    Write(#[from] std::io::Error),
}

/// What an export holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// Signing-key lines.
    pub signing_keys: u64,
    /// The anchor checkpoint's position, if the range starts after one.
    pub anchor: Option<u64>,
    /// Entries written whole (they matched).
    pub matched: u64,
    /// Entries written as stubs.
    pub stubs: u64,
    /// Checkpoint lines after entries (the anchor not counted).
    pub checkpoints: u64,
    /// The last entry written (0 if none).
    pub last_seq: u64,
}

/// The order of an export's lines, fed the range's entries in sequence
/// order: each entry's line, then the checkpoints that sign it. No I/O of
/// its own, so the rule is the same wherever the lines go.
#[derive(Debug, Default)]
pub struct ExportOrder {
    checkpoints: VecDeque<SignedCheckpoint>,
    summary: ExportSummary,
}

impl ExportOrder {
    /// Starts an export: the signing keys, then the anchor if any.
    pub fn start(
        keys: Vec<SigningKeyRecord>,
        anchor: Option<SignedCheckpoint>,
        write: &mut impl FnMut(&AuditLine) -> std::io::Result<()>,
    ) -> std::io::Result<Self> {
        let mut order = Self::default();
        for key in keys {
            write(&AuditLine::SigningKey(key))?;
            order.summary.signing_keys += 1;
        }
        if let Some(anchor) = anchor {
            order.summary.anchor = Some(anchor.seq);
            order.summary.last_seq = anchor.seq;
            write(&AuditLine::Checkpoint(anchor))?;
        }
        Ok(order)
    }

    /// Queues checkpoints (in order, after those queued before) to write
    /// after the entries they sign.
    pub fn queue_checkpoints(&mut self, checkpoints: impl IntoIterator<Item = SignedCheckpoint>) {
        let after = self.queued_up_to();
        self.checkpoints.extend(checkpoints.into_iter().filter(|checkpoint| checkpoint.seq > after));
    }

    /// The furthest position a queued or written checkpoint signs.
    pub fn queued_up_to(&self) -> u64 {
        self.checkpoints.back().map_or(self.summary.last_seq, |checkpoint| checkpoint.seq.max(self.summary.last_seq))
    }

    /// Writes the next entry of the range, then the checkpoints that sign
    /// it. A checkpoint queued for a position the range skipped (an entry
    /// missing from the log) is written where it falls, for the verifier
    /// to name.
    pub fn entry(
        &mut self,
        entry: AuditRecord,
        matches: bool,
        write: &mut impl FnMut(&AuditLine) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let seq = entry.seq;
        if matches {
            self.summary.matched += 1;
        } else {
            self.summary.stubs += 1;
        }
        write(&entry_line(entry, matches))?;
        self.summary.last_seq = seq;
        while self.checkpoints.front().is_some_and(|checkpoint| checkpoint.seq <= seq) {
            let checkpoint = self.checkpoints.pop_front().expect("checked above");
            write(&AuditLine::Checkpoint(checkpoint))?;
            self.summary.checkpoints += 1;
        }
        Ok(())
    }

    /// What was written.
    pub fn finish(self) -> ExportSummary {
        self.summary
    }
}

/// An export decided before it is written: the head, the first match and
/// the anchor, read at the start.
#[derive(Debug)]
pub struct ExportPlan {
    filter: AuditFilter,
    head: ChainHead,
    keys: Vec<SigningKeyRecord>,
    first_match: Option<u64>,
    anchor: Option<SignedCheckpoint>,
}

impl ExportPlan {
    /// Reads the head, the signing keys, the first entry matching `filter`
    /// (its `after_seq` and `limit` are ignored) and the anchor before it.
    pub async fn prepare(store: &dyn Store, filter: &AuditFilter) -> Result<Self, StoreError> {
        let filter = AuditFilter { after_seq: 0, limit: AUDIT_PAGE, ..filter.clone() };
        let mut read = store.begin_read().await?;
        let head = read.audit_head().await?;
        let keys = read.signing_keys(MAX_SIGNING_KEYS as u32).await?;
        let first = read.audit_entries(&AuditFilter { limit: 1, ..filter.clone() }).await?;
        let first_match = first.first().map(|entry| entry.seq).filter(|seq| *seq <= head.seq);
        drop(read);
        let bound = anchor_bound(first_match, head.seq);
        let anchor =
            if bound == 0 { None } else { store.begin_read().await?.audit_checkpoint_at_or_before(bound).await? };
        Ok(Self { filter, head, keys, first_match, anchor })
    }

    /// The head the export ends at.
    pub fn head(&self) -> &ChainHead {
        &self.head
    }

    /// The first matching entry, if any matched.
    pub fn first_match(&self) -> Option<u64> {
        self.first_match
    }

    /// The checkpoint the range starts after, if any.
    pub fn anchor(&self) -> Option<&SignedCheckpoint> {
        self.anchor.as_ref()
    }

    /// How many entries the range holds (matching or not).
    pub fn entries(&self) -> u64 {
        self.head.seq.saturating_sub(self.anchor.as_ref().map_or(0, |anchor| anchor.seq))
    }

    /// Writes the export's lines to `write`, page by page; `progress` is
    /// told how many entries of [`Self::entries`] were written. Every read
    /// is a short transaction of its own, so a running vault is not held up.
    pub async fn write(
        self,
        store: &dyn Store,
        mut write: impl FnMut(&AuditLine) -> std::io::Result<()> + Send,
        mut progress: impl FnMut(u64) + Send,
    ) -> Result<ExportSummary, ExportError> {
        let Self { filter, head, keys, first_match: _, anchor } = self;
        let start_after = anchor.as_ref().map_or(0, |anchor| anchor.seq);
        let mut order = ExportOrder::start(keys, anchor, &mut write)?;
        let mut matches = Matches::new(AuditFilter { after_seq: start_after, ..filter }, head.seq);
        let mut range = AuditFilter { after_seq: start_after, limit: AUDIT_PAGE, ..AuditFilter::default() };
        let mut checkpoints_done = false;
        let mut written = 0;
        while range.after_seq < head.seq {
            range.limit = AUDIT_PAGE.min((head.seq - range.after_seq).try_into().unwrap_or(AUDIT_PAGE));
            let mut read = store.begin_read().await?;
            let page = read.audit_entries(&range).await?;
            let Some(last) = page.last().map(|entry| entry.seq.min(head.seq)) else { break };
            range.after_seq = last;
            while !checkpoints_done && order.queued_up_to() < last {
                let after = order.queued_up_to();
                let more = read.audit_checkpoints(after, AUDIT_PAGE).await?;
                checkpoints_done = more.len() < AUDIT_PAGE as usize;
                order.queue_checkpoints(more.into_iter().filter(|checkpoint| checkpoint.seq <= head.seq));
                if order.queued_up_to() == after {
                    checkpoints_done = true;
                }
            }
            drop(read);
            for entry in page.into_iter().filter(|entry| entry.seq <= head.seq) {
                let matched = matches.contains(store, entry.seq).await?;
                order.entry(entry, matched, &mut write)?;
                written += 1;
            }
            progress(written);
        }
        Ok(order.finish())
    }
}

/// The sequence numbers of the entries matching a filter, read a page
/// ahead of the entries they are checked against.
struct Matches {
    filter: AuditFilter,
    end: u64,
    seqs: VecDeque<u64>,
    done: bool,
}

impl Matches {
    fn new(filter: AuditFilter, end: u64) -> Self {
        Self { filter: AuditFilter { limit: AUDIT_PAGE, ..filter }, end, seqs: VecDeque::new(), done: false }
    }

    /// Whether entry `seq` matches; asked in increasing `seq` order.
    async fn contains(&mut self, store: &dyn Store, seq: u64) -> Result<bool, StoreError> {
        loop {
            while self.seqs.front().is_some_and(|front| *front < seq) {
                self.seqs.pop_front();
            }
            if let Some(front) = self.seqs.front() {
                return Ok(*front == seq);
            }
            if self.done || self.filter.after_seq >= self.end {
                return Ok(false);
            }
            let page = store.begin_read().await?.audit_entries(&self.filter).await?;
            match page.last() {
                Some(last) => self.filter.after_seq = last.seq,
                None => self.done = true,
            }
            self.seqs.extend(page.iter().map(|entry| entry.seq).filter(|seq| *seq <= self.end));
        }
    }
}

#[cfg(test)]
mod tests {
    use mnvault_keys::{AuditChainKey, KeyMaterial, VaultSigningKey, GENESIS_HASH};

    use super::*;
    use crate::audit::checkpoint::TrustedKeys;
    use crate::audit::AuditDraft;
    use crate::id::Principal;
    use crate::vault::checkpoint::LogWalk;

    fn chain(count: u64, key: &AuditChainKey) -> Vec<AuditRecord> {
        let by = Principal::parse("alice").unwrap();
        let mut prev = GENESIS_HASH;
        (1..=count)
            .map(|seq| {
                let draft =
                    AuditDraft { reason: format!("entry {seq}"), ..AuditDraft::by(&by, Operation::ListPurposes, None) };
                let record = AuditRecord::seal(draft, seq, 1_700_000_000_000 + seq as i64, prev, key);
                prev = record.hash;
                record
            })
            .collect()
    }

    /// Lines of an export of `entries` whose matches are `matching`, with
    /// checkpoints at `signed`, as the plan would order them.
    fn export(entries: &[AuditRecord], matching: &[u64], signed: &[u64], signer: &VaultSigningKey) -> Vec<AuditLine> {
        let checkpoint = |seq: u64| {
            let entry = &entries[seq as usize - 1];
            SignedCheckpoint::sign(signer, &ChainHead { seq, hash: entry.hash }, 0)
        };
        let head = entries.len() as u64;
        let bound = anchor_bound(matching.first().copied(), head);
        let anchor = signed.iter().copied().filter(|seq| *seq <= bound).max().map(checkpoint);
        let start = anchor.as_ref().map_or(0, |a| a.seq);
        let mut lines = Vec::new();
        let mut write = |line: &AuditLine| {
            lines.push(line.clone());
            Ok(())
        };
        let keys = vec![SigningKeyRecord::first(signer, 0)];
        let mut order = ExportOrder::start(keys, anchor, &mut write).unwrap();
        order.queue_checkpoints(signed.iter().copied().filter(|seq| *seq > start).map(checkpoint));
        for entry in &entries[start as usize..] {
            order.entry(entry.clone(), matching.contains(&entry.seq), &mut write).unwrap();
        }
        lines
    }

    fn walk(lines: Vec<AuditLine>, signer: &VaultSigningKey) -> crate::audit::checkpoint::ChainEvidence {
        let mut walk = LogWalk::new(TrustedKeys::anchored([signer.public_key()]), "test".into(), None);
        for line in lines {
            let line = AuditLine::parse(&line.to_json()).unwrap();
            if !walk.feed(line) {
                break;
            }
        }
        walk.finish(None)
    }

    fn kinds(lines: &[AuditLine]) -> Vec<String> {
        lines
            .iter()
            .map(|line| match line {
                AuditLine::Entry(entry) => format!("e{}", entry.seq),
                AuditLine::Stub { seq, .. } => format!("s{seq}"),
                AuditLine::LegacyStub { seq, .. } => format!("l{seq}"),
                AuditLine::Checkpoint(checkpoint) => format!("c{}", checkpoint.seq),
                AuditLine::SigningKey(_) => "k".into(),
            })
            .collect()
    }

    #[test]
    fn an_export_starts_at_the_checkpoint_before_its_first_match_and_verifies() {
        let key = AuditChainKey::new(&KeyMaterial::generate());
        let signer = VaultSigningKey::new(&KeyMaterial::generate());
        let entries = chain(10, &key);
        let lines = export(&entries, &[5, 6, 9], &[2, 3, 7, 10], &signer);
        assert_eq!(kinds(&lines), ["k", "c3", "s4", "e5", "e6", "s7", "c7", "s8", "e9", "s10", "c10"]);
        let evidence = walk(lines, &signer);
        assert!(evidence.broken.is_none(), "{:?}", evidence.broken);
        // Counted from after the anchor, which is not counted as verified along the way.
        assert_eq!((evidence.first_seq, evidence.entries, evidence.checkpoints_verified), (4, 7, 2));

        // No checkpoint before the first match: from entry 1, unanchored.
        let lines = export(&entries, &[2], &[7], &signer);
        assert_eq!(kinds(&lines)[..4], ["k", "s1", "e2", "s3"]);
        assert!(walk(lines, &signer).broken.is_none());

        // A checkpoint right before the first match anchors it; nothing
        // matched: from the last checkpoint to the head.
        assert_eq!(kinds(&export(&entries, &[4], &[3], &signer))[..3], ["k", "c3", "e4"]);
        let none = export(&entries, &[], &[3, 7], &signer);
        assert_eq!(kinds(&none), ["k", "c7", "s8", "s9", "s10"]);
        let evidence = walk(none, &signer);
        assert_eq!((evidence.first_seq, evidence.entries, evidence.unsigned_tail), (8, 3, 3));
    }

    #[test]
    fn an_edited_entry_or_stub_of_an_export_is_named() {
        let key = AuditChainKey::new(&KeyMaterial::generate());
        let signer = VaultSigningKey::new(&KeyMaterial::generate());
        let entries = chain(8, &key);
        let lines = export(&entries, &[4, 6], &[2, 8], &signer);
        let edit = |edit: &dyn Fn(&mut AuditLine)| {
            let mut lines = lines.clone();
            lines.iter_mut().for_each(edit);
            walk(lines, &signer).broken.expect("caught")
        };
        let relabelled = edit(&|line| {
            if let AuditLine::Entry(entry) = line {
                if entry.seq == 6 {
                    entry.principal = "mallory".into();
                }
            }
        });
        assert_eq!(relabelled.seq, 6, "{relabelled}");
        let stub = edit(&|line| {
            if let AuditLine::Stub { seq: 5, digest, .. } = line {
                digest[0] ^= 1;
            }
        });
        assert_eq!(stub.seq, 6, "the stub's hash changes, so the next link breaks: {stub}");
    }

    #[test]
    fn entries_of_the_older_form_become_legacy_stubs() {
        let key = AuditChainKey::new(&KeyMaterial::generate());
        let mut entry = chain(1, &key).pop().unwrap();
        assert!(matches!(entry_line(entry.clone(), false), AuditLine::Stub { seq: 1, .. }));
        entry.mac = None;
        assert!(matches!(entry_line(entry.clone(), false), AuditLine::LegacyStub { seq: 1, .. }));
        assert!(matches!(entry_line(entry, true), AuditLine::Entry(_)));
    }

    #[test]
    fn filter_values_are_the_stored_identifiers_only() {
        assert_eq!(outcome_id("not-found"), Some("not-found"));
        assert_eq!(outcome_id("NotFound"), None);
        assert_eq!(outcome_ids(), "ok, denied, invalid, not-found, failed");
        assert_eq!(operation_id("filing.detokenize"), Some("filing.detokenize"));
        assert_eq!(operation_id("filing"), None);
        assert_eq!(anchor_bound(Some(1), 9), 0);
        assert_eq!(anchor_bound(Some(5), 9), 4);
        assert_eq!(anchor_bound(None, 9), 9);
    }
}
