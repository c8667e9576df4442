//! Client certificates revoked through the API (`mnvault pki revoke`).
//!
//! A revocation is an audit entry and nothing else: its reason names the
//! serial in the one form [`entry_reason`] writes and [`serial_in_reason`]
//! reads. Every replica learns the revoked serials by verifying the chain
//! (see `VaultCore::refresh`), so no replica needs a restart or a table of
//! its own, and a database writer cannot add one (the entry's MAC). Taking
//! one back (deleting or editing its entry) breaks the chain: a replica
//! that verified the entry keeps refusing the certificate, and one that
//! starts afterwards learns no revocation recorded after the break, so it
//! serves nobody but auditors of every tenant
//! (`VaultCore::check_certificate`; ARCHITECTURE, threat model).
//!
//! A certificate is looked up by serial alone, whichever CA issued it:
//! serials of a sound CA are random, and should two CAs of the bundle ever
//! share one, the second certificate is refused too, which fails safe.

use std::collections::BTreeMap;

use crate::audit::Operation;
use crate::error::VaultError;
use crate::id::CertificateSerial;
use crate::text::FreeText;

/// Revocations one vault keeps. Past this, a revocation is refused: an
/// office that revokes this many certificates wants a CA of its own with a
/// CRL (`tls.crl`), and the list every replica holds stays small.
pub const MAX_REVOCATIONS: usize = 10_000;

/// Revocations one `ListRevokedCertificates` answer holds at most.
pub const REVOCATION_PAGE: usize = 1_000;

/// How long a replica serves after it last read the audit chain to its
/// head (`VaultCore::refresh` reads it every second): past this, a
/// revocation made on another replica may be unseen, and calls wait.
pub const REVOCATIONS_STALE_MS: i64 = 30_000;

/// What an auditor of every tenant may still call while this replica cannot
/// know which certificates were revoked: reading and verifying the log, to
/// scope the incident. Not the list of revocations, which is incomplete then.
pub const INVESTIGATION: [Operation; 2] = [Operation::ListAuditEntries, Operation::VerifyAuditChain];

/// How a revocation's audit entry reason begins, before the serial.
const REASON_PREFIX: &str = "revoked certificate ";
/// What parts the serial from the note: words, so that digits ending one
/// and digits starting the other never read as one run (which the log's
/// redaction would cut, and the serial with it).
const NOTE_SEPARATOR: &str = ", because ";

/// One revoked certificate, as the verified chain recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The certificate's serial.
    pub serial: CertificateSerial,
    /// When it was revoked (Unix milliseconds).
    pub revoked_at: i64,
    /// Who revoked it, as the entry names them.
    pub revoked_by: String,
    /// Why, as they said it (may be empty).
    pub note: String,
    /// The audit entry that recorded it.
    pub seq: u64,
}

/// Every revoked serial, ordered (for listing by pages).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    by_serial: BTreeMap<CertificateSerial, Revocation>,
}

impl Revocations {
    /// The revocation of `serial`, if it was revoked.
    pub fn get(&self, serial: &CertificateSerial) -> Option<&Revocation> {
        self.by_serial.get(serial)
    }

    /// How many certificates are revoked.
    pub fn len(&self) -> usize {
        self.by_serial.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_serial.is_empty()
    }

    /// Up to `limit` revocations after serial `after` (from the first
    /// without), in serial order.
    pub fn page(&self, after: Option<&CertificateSerial>, limit: usize) -> Vec<Revocation> {
        let rest = match after {
            Some(after) => self
                .by_serial
                .range::<CertificateSerial, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => self.by_serial.range::<CertificateSerial, _>(..),
        };
        rest.take(limit).map(|(_, revocation)| revocation.clone()).collect()
    }

    /// Notes a verified entry's revocation, if its reason records one. The
    /// first revocation of a serial is the one kept.
    pub fn note(&mut self, seq: u64, time_ms: i64, principal: &str, reason: &str) {
        let Some((serial, note)) = serial_in_reason(reason) else { return };
        self.by_serial.entry(serial.clone()).or_insert_with(|| Revocation {
            serial,
            revoked_at: time_ms,
            revoked_by: principal.to_owned(),
            note: note.to_owned(),
            seq,
        });
    }

    /// Whether `serial` may be revoked now: not yet revoked, and room left.
    pub fn check_new(&self, serial: &CertificateSerial) -> Result<(), VaultError> {
        if let Some(earlier) = self.get(serial) {
            return Err(VaultError::FailedPrecondition(format!(
                "certificate {serial} was already revoked (audit entry #{}); nothing to do",
                earlier.seq
            )));
        }
        if self.len() >= MAX_REVOCATIONS {
            return Err(VaultError::FailedPrecondition(format!(
                "this vault already holds {MAX_REVOCATIONS} revoked certificates, its most; issue certificates from a \
                 new CA, or revoke through a CRL file (tls.crl)"
            )));
        }
        Ok(())
    }

    /// Refuses a caller whose certificate is revoked; `None` is a serial
    /// that cannot have been revoked (see [`CertificateSerial::from_bytes`]).
    pub fn check_caller(&self, serial: Option<&CertificateSerial>) -> Result<(), VaultError> {
        match serial.and_then(|serial| self.get(serial)) {
            None => Ok(()),
            Some(revoked) => Err(VaultError::Unauthenticated(format!(
                "the client certificate {} was revoked (audit entry #{}); ask your administrator for a new one",
                revoked.serial, revoked.seq
            ))),
        }
    }
}

/// The reason of the entry that revokes `serial`, and says why (`note`).
/// Neither part holds a number and words part them, so it holds none
/// either: the log stores it as written.
pub fn entry_reason(serial: &CertificateSerial, note: &FreeText) -> String {
    match note.as_str() {
        "" => format!("{REASON_PREFIX}{serial}"),
        note => format!("{REASON_PREFIX}{serial}{NOTE_SEPARATOR}{note}"),
    }
}

/// The serial and the note an entry reason of [`entry_reason`]'s form names.
pub fn serial_in_reason(reason: &str) -> Option<(CertificateSerial, &str)> {
    let rest = reason.strip_prefix(REASON_PREFIX)?;
    let (serial, note) = rest.split_once(NOTE_SEPARATOR).unwrap_or((rest, ""));
    Some((CertificateSerial::parse(serial).ok()?, note))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial(text: &str) -> CertificateSerial {
        CertificateSerial::parse(text).unwrap()
    }

    #[test]
    fn the_reason_names_the_serial_in_the_one_form_that_reads_back() {
        let note = FreeText::parse("laptop stolen, because: key on disk", "note").unwrap();
        let reason = entry_reason(&serial("7f3a9c"), &note);
        assert_eq!(reason, "revoked certificate 7f3a9c, because laptop stolen, because: key on disk");
        assert_eq!(serial_in_reason(&reason), Some((serial("7f3a9c"), "laptop stolen, because: key on disk")));
        // Digits ending the serial and starting the note: no run the log would redact.
        let dated = FreeText::parse("20261124 laptop stolen", "note").unwrap();
        let reason = entry_reason(&serial("7f3a9c0123"), &dated);
        assert_eq!(crate::number::redact_numbers(&reason), reason);
        assert_eq!(serial_in_reason(&reason), Some((serial("7f3a9c0123"), "20261124 laptop stolen")));
        let bare = entry_reason(&serial("7f3a9c"), &FreeText::parse("", "note").unwrap());
        assert_eq!(serial_in_reason(&bare), Some((serial("7f3a9c"), "")));
        for other in ["", "revoked certificate", "revoked certificate zz", "applied change pc_x: 7f3a9c"] {
            assert_eq!(serial_in_reason(other), None, "{other}");
        }
    }

    #[test]
    fn a_noted_serial_refuses_its_caller_and_a_second_revocation() {
        let mut revocations = Revocations::default();
        let (revoked, other) = (serial("7f3a9c"), serial("0abc"));
        revocations.note(7, 1_000, "spiffe://td/operator/key-admin/aiko", "revoked certificate 7f3a9c, because lost");
        revocations.note(9, 2_000, "spiffe://td/operator/key-admin/ken", "revoked certificate 7F:3A:9C");
        revocations.note(10, 3_000, "x", "proposed change pc_abc: 7f3a9c");
        assert_eq!(revocations.len(), 1);
        let kept = revocations.get(&revoked).unwrap();
        assert_eq!((kept.seq, kept.revoked_at, kept.note.as_str()), (7, 1_000, "lost"));
        let refused = revocations.check_caller(Some(&revoked)).unwrap_err();
        assert!(matches!(&refused, VaultError::Unauthenticated(m) if m.contains("7f3a9c") && m.contains("#7")));
        assert!(revocations.check_caller(Some(&other)).is_ok());
        assert!(revocations.check_caller(None).is_ok());
        assert!(matches!(revocations.check_new(&revoked), Err(VaultError::FailedPrecondition(_))));
        assert!(revocations.check_new(&other).is_ok());
    }

    #[test]
    fn revocations_are_bounded_and_listed_in_pages() {
        let mut revocations = Revocations::default();
        for n in 0..MAX_REVOCATIONS {
            revocations.note(n as u64 + 1, 0, "a", &format!("revoked certificate {:x}", 0xa0_0000 + n));
        }
        let one_more = serial(&format!("{:x}", 0xb0_0000));
        assert!(
            matches!(revocations.check_new(&one_more), Err(VaultError::FailedPrecondition(m)) if m.contains("CRL"))
        );
        let first = revocations.page(None, 3);
        assert_eq!(first.iter().map(|r| r.serial.as_str()).collect::<Vec<_>>(), ["a00000", "a00001", "a00002"]);
        let next = revocations.page(Some(&first[2].serial), 2);
        assert_eq!(next.iter().map(|r| r.serial.as_str()).collect::<Vec<_>>(), ["a00003", "a00004"]);
        let mut seen = 0;
        let mut after = None;
        loop {
            let page = revocations.page(after.as_ref(), REVOCATION_PAGE);
            let Some(last) = page.last() else { break };
            seen += page.len();
            after = Some(last.serial.clone());
        }
        assert_eq!(seen, MAX_REVOCATIONS);
    }
}
