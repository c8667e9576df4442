//! Tenant offboarding: the rules of an export and of a shred, and the export's
//! encryption. The operations are in `crate::vault::offboarding`.
//!
//! - **Export.** A client company that leaves gets its records back: every
//!   token of its tenant with its number, as `token<TAB>number` lines, in an
//!   [age](https://age-encryption.org/v1) file encrypted in the vault to the
//!   client's X25519 public key. It needs a filing job of purpose
//!   [`Purpose::TenantExport`], approved by a second person like any job.
//!   Such a job lists no tokens: its terms (tenant, purpose, creation time,
//!   all under the job's terms tag) say "every record of the tenant created
//!   up to the job's creation", so a tenant of any size is one job, and the
//!   token list never has to pass through the requester. A job exports once.
//! - **Shred.** The tenant's wrapped keys are destroyed, then its sealed
//!   numbers; it stays, marked shredded, so its audit history verifies and
//!   every later call for it is told when it was shredded.

use std::io::Write as _;
use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use crate::clock;
use crate::error::VaultError;
use crate::id::{TenantId, Token};
use crate::job::{Job, JobState};
use crate::purpose::Purpose;

/// The refusal of any call for a shredded tenant.
pub fn shredded(tenant: &TenantId, at: i64) -> VaultError {
    VaultError::FailedPrecondition(format!(
        "tenant \"{tenant}\" was shredded at {}: its keys and numbers are destroyed, so nothing can be tokenized, \
         filed or released for it any more",
        clock::rfc3339(at)
    ))
}

/// Refuses unless `job` may export its tenant at `now`: it is a tenant-export
/// job, approved, not cancelled and not expired. Whether it has exported
/// already is for the caller to check, from the audit log.
pub fn check_export(job: &Job, now: i64) -> Result<(), VaultError> {
    let job_id = &job.terms.job_id;
    if job.terms.purpose != Purpose::TenantExport {
        return Err(VaultError::FailedPrecondition(format!(
            "filing job {job_id} declares purpose {}; a tenant export needs a job of purpose {}",
            job.terms.purpose,
            Purpose::TenantExport
        )));
    }
    match job.state(now) {
        JobState::Approved => Ok(()),
        JobState::PendingApproval => Err(VaultError::FailedPrecondition(format!(
            "filing job {job_id} has not been approved; a principal other than {} must approve it first",
            job.terms.created_by
        ))),
        JobState::Cancelled => Err(VaultError::FailedPrecondition(format!(
            "filing job {job_id} was cancelled by {}; create a new job",
            job.cancelled.as_ref().map_or("?", |s| s.by.as_str())
        ))),
        JobState::Expired => Err(VaultError::FailedPrecondition(format!(
            "filing job {job_id} expired at {}; create a new job",
            clock::rfc3339(job.terms.expires_at)
        ))),
    }
}

/// Who an export is encrypted to: an age X25519 public key (`age1…`).
#[derive(Clone)]
pub struct ExportRecipient(age::x25519::Recipient);

impl std::fmt::Debug for ExportRecipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExportRecipient(age X25519)")
    }
}

impl ExportRecipient {
    /// Parses `text`; a refusal never repeats it (a caller may paste anything there).
    pub fn parse(text: &str) -> Result<Self, VaultError> {
        text.trim().parse::<age::x25519::Recipient>().map(Self).map_err(|_| {
            VaultError::InvalidArgument(
                "the recipient is not an age X25519 public key (\"age1\" and 58 more characters, as `age-keygen` \
                 prints it)"
                    .into(),
            )
        })
    }
}

/// Where the age writer puts ciphertext until the export hands it out.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Sink {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An age file being written: records go in as plaintext lines, ciphertext
/// comes out as it is produced. age's STREAM format seals every 64 KiB
/// chunk and marks the last one, so a file cut short fails to decrypt at
/// its end (a streaming reader may have handed out the whole chunks before).
/// age gathers the lines of a chunk in a buffer of its own, which it does
/// not wipe: up to 64 KiB of `token<TAB>number` lines stay in freed memory
/// after an export, as they would in any process that decrypts the file.
pub(crate) struct ExportCipher {
    writer: age::stream::StreamWriter<Sink>,
    sink: Sink,
}

impl ExportCipher {
    /// A new file for `recipient`: a fresh file key, wrapped to it.
    pub(crate) fn new(recipient: &ExportRecipient) -> Result<Self, VaultError> {
        let sink = Sink::default();
        let recipients = std::iter::once(&recipient.0 as &dyn age::Recipient);
        let writer = age::Encryptor::with_recipients(recipients)
            .map_err(|error| internal("cannot start an age file", &error))?
            .wrap_output(sink.clone())
            .map_err(|error| internal("cannot write an age header", &error))?;
        Ok(Self { writer, sink })
    }

    /// Appends `token<TAB>number\n`; the line is wiped once encrypted.
    pub(crate) fn write_record(&mut self, token: &Token, number: &[u8]) -> Result<(), VaultError> {
        let mut line = Zeroizing::new(Vec::with_capacity(token.as_str().len() + number.len() + 2));
        line.extend_from_slice(token.as_str().as_bytes());
        line.push(b'\t');
        line.extend_from_slice(number);
        line.push(b'\n');
        self.writer.write_all(&line).map_err(|error| internal("cannot encrypt an export record", &error))
    }

    /// The ciphertext produced since the last call.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        self.sink.take()
    }

    /// Seals the last chunk; the rest of the file.
    pub(crate) fn finish(self) -> Result<Vec<u8>, VaultError> {
        let sink = self.writer.finish().map_err(|error| internal("cannot finish an age file", &error))?;
        Ok(sink.take())
    }
}

fn internal(what: &str, error: &dyn std::fmt::Display) -> VaultError {
    tracing::error!(%error, "{what}");
    VaultError::Internal
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;
    use crate::id::TokenFormat;
    use crate::mint::draw_token;

    /// A random valid number, from the check-digit rule.
    fn number() -> Vec<u8> {
        use rand::Rng as _;
        let mut digits = [0u8; 11];
        digits.iter_mut().for_each(|d| *d = b'0' + rand::thread_rng().gen_range(0..10));
        let mut number = digits.to_vec();
        number.push(b'0' + crate::number::check_digit(&digits));
        number
    }

    fn decrypt(identity: &age::x25519::Identity, file: &[u8]) -> Result<Vec<u8>, String> {
        let decryptor = age::Decryptor::new(file).map_err(|e| e.to_string())?;
        let mut reader =
            decryptor.decrypt(std::iter::once(identity as &dyn age::Identity)).map_err(|e| e.to_string())?;
        let mut plain = Vec::new();
        reader.read_to_end(&mut plain).map_err(|e| e.to_string())?;
        Ok(plain)
    }

    #[test]
    fn an_export_decrypts_with_the_recipients_identity_only_and_only_whole() {
        let identity = age::x25519::Identity::generate();
        let recipient = ExportRecipient::parse(&identity.to_public().to_string()).unwrap();
        let mut cipher = ExportCipher::new(&recipient).unwrap();
        let records: Vec<(Token, Vec<u8>)> = (0..3_000).map(|_| (draw_token(TokenFormat::Opaque), number())).collect();
        let mut file = Vec::new();
        for (token, number) in &records {
            cipher.write_record(token, number).unwrap();
            file.extend(cipher.take());
        }
        // 3,000 lines pass one 64 KiB chunk: some ciphertext left before the end.
        assert!(file.len() > 65_536);
        file.extend(cipher.finish().unwrap());
        let plain = String::from_utf8(decrypt(&identity, &file).unwrap()).unwrap();
        let expected: String =
            records.iter().map(|(t, n)| format!("{t}\t{}\n", std::str::from_utf8(n).unwrap())).collect();
        assert_eq!(plain, expected);
        assert!(!file.windows(12).any(|w| w == records[0].1.as_slice()), "no number in clear");

        assert!(decrypt(&age::x25519::Identity::generate(), &file).is_err(), "another identity");
        let cut = &file[..file.len() - 10];
        assert!(decrypt(&identity, cut).is_err(), "a file cut short does not decrypt");
    }

    #[test]
    fn a_malformed_recipient_is_refused_without_being_repeated() {
        let secret_key = age::x25519::Identity::generate();
        use age::secrecy::ExposeSecret as _;
        let number = String::from_utf8(number()).unwrap();
        for text in ["", "age1", number.as_str(), secret_key.to_string().expose_secret()] {
            let refused = ExportRecipient::parse(text).unwrap_err();
            assert!(matches!(refused, VaultError::InvalidArgument(_)));
            // The message names the prefix "age1" itself; never what was sent.
            assert!(text.len() <= 4 || !refused.to_string().contains(text), "{refused}");
        }
    }

    #[test]
    fn a_shredded_tenant_is_named_with_the_time() {
        let message = shredded(&TenantId::parse("acme").unwrap(), 0).to_string();
        assert!(message.contains("\"acme\" was shredded at 1970-01-01T00:00:00Z"), "{message}");
    }
}
