//! Signed checkpoints: the vault's Ed25519 signature over a head of the
//! audit chain, and how a verifier who holds no secret uses them.
//!
//! A checkpoint signs `(seq, hash, time)` of a head. Because every entry's
//! hash covers the one before ([`super::ChainVerifier`]), a valid signature
//! over a head vouches for every entry up to it: changing, removing,
//! inserting or reordering any of them changes the head's hash. The vault
//! signs on every release (in the release's transaction), periodically and
//! on demand. A checkpoint kept outside the server (a file, a sink) also
//! catches what a signature inside the database cannot: the log cut back
//! and its later checkpoints deleted, or the whole log rewritten by whoever
//! obtained the signing key.
//!
//! Which keys are trusted is never read from the database alone: the
//! verifier starts from anchors it was given (a public key pinned in the
//! configuration or on the command line, or a checkpoint file's signer) and
//! follows successions signed by both the old and the new key
//! ([`SigningKeyRecord`]), either way.

use mnvault_keys::{PublicKey, SignatureDomain, VaultSigningKey, SIGNATURE_LEN};

use super::ChainBreak;
use crate::store::ChainHead;

/// Most signing keys (rotations) a verifier takes from a log.
pub const MAX_SIGNING_KEYS: usize = 1_000;

/// A head of the chain, signed by the vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// Position of the head.
    pub seq: u64,
    /// Hash of the entry at `seq`.
    pub hash: [u8; 32],
    /// When it was signed (Unix ms).
    pub time_ms: i64,
    /// The first position from which every entry carries a MAC (entries
    /// before it were written before signed checkpoints). Signed, so that
    /// nobody can pass a newer entry off as an older one, whose content a
    /// public verifier cannot check.
    pub signed_form_from: u64,
    /// The key that signed it.
    pub signer: PublicKey,
    /// Ed25519 signature over [`SignedCheckpoint::body`].
    pub signature: [u8; SIGNATURE_LEN],
}

impl SignedCheckpoint {
    /// What is signed: position, hash, time and where the current form
    /// starts, fixed-length.
    pub fn body(seq: u64, hash: &[u8; 32], time_ms: i64, signed_form_from: u64) -> [u8; 56] {
        let mut body = [0; 56];
        body[..8].copy_from_slice(&seq.to_be_bytes());
        body[8..40].copy_from_slice(hash);
        body[40..48].copy_from_slice(&time_ms.to_be_bytes());
        body[48..].copy_from_slice(&signed_form_from.to_be_bytes());
        body
    }

    /// Signs `head` at `time_ms`, for a log whose every entry carries a MAC.
    pub fn sign(key: &VaultSigningKey, head: &ChainHead, time_ms: i64) -> Self {
        Self::sign_from(key, head, 1, time_ms)
    }

    /// Signs `head` at `time_ms`, for a log whose entries from
    /// `signed_form_from` on carry a MAC.
    pub fn sign_from(key: &VaultSigningKey, head: &ChainHead, signed_form_from: u64, time_ms: i64) -> Self {
        let body = Self::body(head.seq, &head.hash, time_ms, signed_form_from);
        let signature = key.sign(SignatureDomain::AuditCheckpoint, &body);
        Self { seq: head.seq, hash: head.hash, time_ms, signed_form_from, signer: key.public_key(), signature }
    }

    /// Whether the signature is its signer's (trust in the signer is a
    /// separate question: [`TrustedKeys`]).
    pub fn signature_valid(&self) -> bool {
        self.signer.verify(
            SignatureDomain::AuditCheckpoint,
            &Self::body(self.seq, &self.hash, self.time_ms, self.signed_form_from),
            &self.signature,
        )
    }
}

/// A signing key of the vault, as stored: the first has no predecessor;
/// each later one names the key it replaced and the position from which it
/// signs, and both keys signed that handover. The replaced key is trusted
/// only for checkpoints before that position: a rotation after a key was
/// stolen revokes the stolen key for everything after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    /// The key.
    pub public_key: PublicKey,
    /// When it was made (Unix ms).
    pub created_at_ms: i64,
    /// The first position it signs (the rotation's own entry); 0 for the first key.
    pub from_seq: u64,
    /// The key it replaced.
    pub previous: Option<PublicKey>,
    /// The replaced key's signature over the succession.
    pub signed_by_previous: Option<[u8; SIGNATURE_LEN]>,
    /// This key's own signature over the succession.
    pub signed_by_self: Option<[u8; SIGNATURE_LEN]>,
}

impl SigningKeyRecord {
    fn succession_body(previous: &PublicKey, next: &PublicKey, from_seq: u64, created_at_ms: i64) -> Vec<u8> {
        [&previous.as_bytes()[..], &next.as_bytes()[..], &from_seq.to_be_bytes(), &created_at_ms.to_be_bytes()].concat()
    }

    /// The record of the vault's first signing key.
    pub fn first(key: &VaultSigningKey, created_at_ms: i64) -> Self {
        Self {
            public_key: key.public_key(),
            created_at_ms,
            from_seq: 0,
            previous: None,
            signed_by_previous: None,
            signed_by_self: None,
        }
    }

    /// The record of `next` replacing `previous` from position `from_seq`,
    /// signed by both.
    pub fn succeed(previous: &VaultSigningKey, next: &VaultSigningKey, from_seq: u64, created_at_ms: i64) -> Self {
        let body = Self::succession_body(&previous.public_key(), &next.public_key(), from_seq, created_at_ms);
        Self {
            public_key: next.public_key(),
            created_at_ms,
            from_seq,
            previous: Some(previous.public_key()),
            signed_by_previous: Some(previous.sign(SignatureDomain::SigningKeySuccession, &body)),
            signed_by_self: Some(next.sign(SignatureDomain::SigningKeySuccession, &body)),
        }
    }

    /// The key it replaced, if both signatures over the handover verify.
    pub fn verified_predecessor(&self) -> Option<PublicKey> {
        let previous = self.previous?;
        let body = Self::succession_body(&previous, &self.public_key, self.from_seq, self.created_at_ms);
        let by_previous = previous.verify(SignatureDomain::SigningKeySuccession, &body, &self.signed_by_previous?);
        let by_self = self.public_key.verify(SignatureDomain::SigningKeySuccession, &body, &self.signed_by_self?);
        (by_previous && by_self).then_some(previous)
    }
}

/// A handover both keys signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Handover {
    previous: PublicKey,
    next: PublicKey,
    from_seq: u64,
}

/// The signing keys a verifier trusts, each for the positions it signed:
/// the anchors it was given from outside the log, and every key a verified
/// handover links to them, either way. A key handed over twice (a fork:
/// someone holding an old key made a successor of their own) hands over to
/// neither.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    anchors: Vec<PublicKey>,
    /// Handovers whose two signatures verified (each checked once).
    handovers: Vec<Handover>,
    /// Trusted keys and the positions each may sign: `[from, until)`.
    trusted: std::collections::HashMap<PublicKey, (u64, u64)>,
}

impl TrustedKeys {
    /// Trusting `anchors` only (for every position, until handovers say otherwise).
    pub fn anchored(anchors: impl IntoIterator<Item = PublicKey>) -> Self {
        let mut trusted = Self { anchors: anchors.into_iter().collect(), ..Self::default() };
        trusted.recompute();
        trusted
    }

    /// Takes a signing key record from the log; its handover counts once
    /// both its signatures verify. `false` if it is not a verified handover.
    pub fn learn(&mut self, record: &SigningKeyRecord) -> bool {
        let Some(previous) = record.verified_predecessor() else { return false };
        let handover = Handover { previous, next: record.public_key, from_seq: record.from_seq };
        if !self.handovers.contains(&handover) {
            self.handovers.push(handover);
            self.recompute();
        }
        true
    }

    /// Adds every key linked to a trusted one by a verified handover.
    pub fn follow(&mut self, records: &[SigningKeyRecord]) {
        for record in records {
            self.learn(record);
        }
    }

    fn recompute(&mut self) {
        let forked: Vec<PublicKey> = self
            .handovers
            .iter()
            .map(|h| h.previous)
            .filter(|previous| self.handovers.iter().filter(|h| &h.previous == previous).count() > 1)
            .collect();
        let links: Vec<&Handover> = self.handovers.iter().filter(|h| !forked.contains(&h.previous)).collect();
        let mut reached: Vec<PublicKey> = self.anchors.clone();
        let mut next = 0;
        while next < reached.len() {
            let key = reached[next];
            next += 1;
            for link in &links {
                for (from, to) in [(link.previous, link.next), (link.next, link.previous)] {
                    if from == key && !reached.contains(&to) {
                        reached.push(to);
                    }
                }
            }
        }
        self.trusted = reached
            .into_iter()
            .map(|key| {
                let from = links.iter().filter(|l| l.next == key).map(|l| l.from_seq).max().unwrap_or(0);
                let until = links.iter().filter(|l| l.previous == key).map(|l| l.from_seq).min().unwrap_or(u64::MAX);
                (key, (from, until))
            })
            .collect();
    }

    /// Whether `key` is trusted at all.
    pub fn trusts(&self, key: &PublicKey) -> bool {
        self.trusted.contains_key(key)
    }

    /// Whether `key` is trusted to sign a checkpoint at position `seq`.
    pub fn trusts_at(&self, key: &PublicKey, seq: u64) -> bool {
        self.trusted.get(key).is_some_and(|(from, until)| (*from..*until).contains(&seq))
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.trusted.is_empty()
    }
}

/// Checks signed checkpoints against a chain being walked: feed each
/// checkpoint right after the entry it names was checked, in order.
#[derive(Debug)]
pub struct CheckpointVerifier {
    trusted: TrustedKeys,
    verified: u64,
    last: Option<SignedCheckpoint>,
}

impl CheckpointVerifier {
    /// A verifier trusting `trusted`.
    pub fn new(trusted: TrustedKeys) -> Self {
        Self { trusted, verified: 0, last: None }
    }

    /// Checks `checkpoint` against the chain's position `(seq, hash)`, the
    /// entry just checked: it must name that entry, carry its hash, and be
    /// signed by a trusted key.
    pub fn check(&mut self, checkpoint: &SignedCheckpoint, seq: u64, hash: &[u8; 32]) -> Result<(), ChainBreak> {
        let at = checkpoint.seq;
        if at != seq {
            return Err(ChainBreak {
                seq: at,
                problem: format!(
                    "the vault signed a head at #{at} but the chain there ends at #{seq} (removed or truncated)"
                ),
            });
        }
        if !checkpoint.signature_valid() {
            return Err(ChainBreak { seq: at, problem: "the checkpoint's signature does not verify (forged)".into() });
        }
        if !self.trusted.trusts_at(&checkpoint.signer, at) {
            let why = if self.trusted.trusts(&checkpoint.signer) {
                "a key trusted only for other positions (it was handed over)"
            } else {
                "a key that is not trusted (not pinned, and no trusted key handed over to it)"
            };
            return Err(ChainBreak {
                seq: at,
                problem: format!("the checkpoint is signed by {}, {why}", checkpoint.signer.key_id()),
            });
        }
        if &checkpoint.hash != hash {
            let since = self.last.as_ref().map_or(1, |last| last.seq.saturating_add(1));
            return Err(ChainBreak {
                seq: at,
                problem: format!(
                    "differs from the head the vault signed at {} (an entry from #{since} to here was changed, \
                     removed, inserted or reordered, with the hashes after it recomputed)",
                    crate::clock::rfc3339(checkpoint.time_ms)
                ),
            });
        }
        self.verified += 1;
        if self.last.as_ref().is_none_or(|last| last.seq <= at) {
            self.last = Some(checkpoint.clone());
        }
        Ok(())
    }

    /// Trusts `trusted` from now on (more keys became known).
    pub fn trust(&mut self, trusted: TrustedKeys) {
        self.trusted = trusted;
    }

    /// Checkpoints verified so far.
    pub fn verified(&self) -> u64 {
        self.verified
    }

    /// The furthest checkpoint verified.
    pub fn last(&self) -> Option<&SignedCheckpoint> {
        self.last.as_ref()
    }
}

/// What a public verification found: the evidence an incident report
/// quotes.
#[derive(Debug, Clone, Default)]
pub struct ChainEvidence {
    /// Entries walked.
    pub entries: u64,
    /// The first position walked (after the checkpoint an export starts from).
    pub first_seq: u64,
    /// Hash of the last entry walked.
    pub head_hash: [u8; 32],
    /// Signed checkpoints verified along the way.
    pub checkpoints_verified: u64,
    /// The furthest of them.
    pub last_checkpoint: Option<SignedCheckpoint>,
    /// Entries after the last verified checkpoint (no signature covers them yet).
    pub unsigned_tail: u64,
    /// Entries of the older form checked by link only.
    pub unchecked_legacy: u64,
    /// What the trusted keys came from, for people.
    pub anchored_by: String,
    /// An external checkpoint (a file) the log was shown to extend.
    pub external_checkpoint: Option<SignedCheckpoint>,
    /// The first problem, if the log does not verify.
    pub broken: Option<ChainBreak>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use mnvault_keys::KeyMaterial;

    fn key() -> VaultSigningKey {
        VaultSigningKey::new(&KeyMaterial::generate())
    }

    #[test]
    fn a_checkpoint_verifies_only_as_signed() {
        let signing = key();
        let head = ChainHead { seq: 7, hash: [9; 32] };
        let checkpoint = SignedCheckpoint::sign(&signing, &head, 1_000);
        assert!(checkpoint.signature_valid());
        for forged in [
            SignedCheckpoint { seq: 8, ..checkpoint.clone() },
            SignedCheckpoint { hash: [8; 32], ..checkpoint.clone() },
            SignedCheckpoint { time_ms: 1_001, ..checkpoint.clone() },
            SignedCheckpoint { signed_form_from: 2, ..checkpoint.clone() },
            SignedCheckpoint { signer: key().public_key(), ..checkpoint.clone() },
        ] {
            assert!(!forged.signature_valid(), "{forged:?}");
        }
    }

    #[test]
    fn the_checkpoint_verifier_names_what_is_wrong() {
        let signing = key();
        let checkpoint = SignedCheckpoint::sign(&signing, &ChainHead { seq: 3, hash: [3; 32] }, 5);
        let trusted = TrustedKeys::anchored([signing.public_key()]);
        let mut verifier = CheckpointVerifier::new(trusted.clone());
        verifier.check(&checkpoint, 3, &[3; 32]).unwrap();
        assert_eq!((verifier.verified(), verifier.last().map(|c| c.seq)), (1, Some(3)));

        let cases = [
            (CheckpointVerifier::new(trusted.clone()).check(&checkpoint, 3, &[4; 32]), "differs from the head"),
            (CheckpointVerifier::new(trusted.clone()).check(&checkpoint, 2, &[3; 32]), "ends at #2"),
            (
                CheckpointVerifier::new(TrustedKeys::anchored([key().public_key()])).check(&checkpoint, 3, &[3; 32]),
                "not trusted",
            ),
            (
                CheckpointVerifier::new(trusted).check(
                    &SignedCheckpoint { time_ms: 6, ..checkpoint.clone() },
                    3,
                    &[3; 32],
                ),
                "forged",
            ),
        ];
        for (result, expected) in cases {
            let broken = result.unwrap_err();
            assert_eq!(broken.seq, 3);
            assert!(broken.problem.contains(expected), "{broken}");
        }
    }

    #[test]
    fn trust_follows_successions_signed_by_both_keys_either_way() {
        let (a, b, c) = (key(), key(), key());
        let records = vec![
            SigningKeyRecord::first(&a, 1),
            SigningKeyRecord::succeed(&a, &b, 10, 2),
            SigningKeyRecord::succeed(&b, &c, 20, 3),
        ];
        let mut from_first = TrustedKeys::anchored([a.public_key()]);
        from_first.follow(&records);
        let mut from_last = TrustedKeys::anchored([c.public_key()]);
        from_last.follow(&records);
        for trusted in [from_first, from_last] {
            assert!([&a, &b, &c].iter().all(|k| trusted.trusts(&k.public_key())));
            // Each only for the positions it signed.
            assert!(trusted.trusts_at(&a.public_key(), 9) && !trusted.trusts_at(&a.public_key(), 10));
            assert!(trusted.trusts_at(&b.public_key(), 10) && !trusted.trusts_at(&b.public_key(), 20));
            assert!(trusted.trusts_at(&c.public_key(), 20) && !trusted.trusts_at(&c.public_key(), 9));
        }

        // A succession only the new key signed (someone who holds the
        // database but not the old key) is not followed.
        let intruder = key();
        let mut forged = SigningKeyRecord::succeed(&key(), &intruder, 30, 4);
        forged.previous = Some(c.public_key());
        let mut trusted = TrustedKeys::anchored([a.public_key()]);
        trusted.follow(&[records.clone(), vec![forged]].concat());
        assert!(trusted.trusts(&c.public_key()));
        assert!(!trusted.trusts(&intruder.public_key()));

        // Whoever stole an old key and made a successor of their own forks
        // the handover: neither successor is trusted through it.
        let thief = key();
        let fork = SigningKeyRecord::succeed(&b, &thief, 25, 5);
        let mut trusted = TrustedKeys::anchored([a.public_key()]);
        trusted.follow(&[records, vec![fork]].concat());
        assert!(!trusted.trusts(&thief.public_key()) && !trusted.trusts(&c.public_key()));
        // And a stolen key signs nothing after its handover.
        assert!(!trusted.trusts_at(&a.public_key(), 10));
    }
}
