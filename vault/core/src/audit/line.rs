//! The audit log as JSON lines: one object per line, tagged by `"type"`.
//! `mnvault audit export`, the audit sinks and checkpoint files all write
//! this format, and `mnvault audit verify --from FILE` reads it back, so an
//! export verifies on its own, with the public key and nothing else.
//!
//! - `entry`: an entry whole, with its chain fields.
//! - `stub`: an entry an export left out (it did not match the filters):
//!   its position, link and digest, enough to recompute its hash.
//! - `legacy-stub`: the same for an entry of the older form, whose hash is
//!   an HMAC: position, link and hash (checked by link only).
//! - `checkpoint`: a signed chain head, right after the entry it signs.
//! - `signing-key`: a signing key of the vault and its succession.
//!
//! Times are RFC 3339 and binary fields are unpadded base64url, not long
//! runs of decimal digits, so a log shipper's My Number detector does not
//! fire on the vault's own fields (tokens of the twelve-digit format are
//! digits by design).

use data_encoding::BASE64URL_NOPAD;
use mnvault_keys::{PublicKey, SIGNATURE_LEN};
use serde::{Deserialize, Serialize};

use super::checkpoint::{SignedCheckpoint, SigningKeyRecord};
use super::AuditRecord;

/// Longest line [`AuditLine::parse`] accepts: an entry naming a whole
/// job's tokens (up to 100,000, each under 64 bytes) and then some.
pub const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// One line of the format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditLine {
    /// An entry whole.
    Entry(AuditRecord),
    /// An entry left out: position, link and digest.
    Stub {
        /// Position.
        seq: u64,
        /// Hash of the entry before.
        prev_hash: [u8; 32],
        /// SHA-256 of its canonical encoding.
        digest: [u8; 32],
    },
    /// An entry of the older form left out: position, link and hash.
    LegacyStub {
        /// Position.
        seq: u64,
        /// Hash of the entry before.
        prev_hash: [u8; 32],
        /// Its hash (an HMAC).
        hash: [u8; 32],
    },
    /// A signed head.
    Checkpoint(SignedCheckpoint),
    /// A signing key.
    SigningKey(SigningKeyRecord),
}

/// Why a line did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LineError(String);

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
#[allow(clippy::large_enum_variant)] // one line at a time; boxing would only add an allocation
enum Wire {
    Entry {
        seq: u64,
        time: String,
        principal: String,
        tenant: String,
        operation: String,
        outcome: String,
        reason: String,
        job_id: String,
        purpose: String,
        tokens: Vec<String>,
        record_count: u64,
        request_id: String,
        prev_hash: String,
        hash: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mac: Option<String>,
    },
    Stub {
        seq: u64,
        prev_hash: String,
        digest: String,
    },
    LegacyStub {
        seq: u64,
        prev_hash: String,
        hash: String,
    },
    Checkpoint {
        seq: u64,
        hash: String,
        time: String,
        signed_form_from: u64,
        signer: String,
        signature: String,
    },
    SigningKey {
        public_key: String,
        created: String,
        from_seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signed_by_previous: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signed_by_self: Option<String>,
    },
}

fn b64(bytes: &[u8]) -> String {
    BASE64URL_NOPAD.encode(bytes)
}

fn bytes<const N: usize>(field: &str, text: &str) -> Result<[u8; N], LineError> {
    BASE64URL_NOPAD
        .decode(text.as_bytes())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| LineError(format!("{field} is not {N} bytes of base64url")))
}

fn time_text(ms: i64) -> String {
    crate::clock::rfc3339(ms)
}

fn time_ms(field: &str, text: &str) -> Result<i64, LineError> {
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| LineError(format!("{field} is not an RFC 3339 time")))?;
    Ok(crate::clock::to_ms(at))
}

/// A position as stored: the stores keep it in a signed 64-bit column, so
/// anything larger is not the vault's (and would overflow the walk).
fn bounded_seq(seq: u64) -> Result<u64, LineError> {
    if seq > i64::MAX as u64 {
        return Err(LineError("a position is larger than any the vault stores".into()));
    }
    Ok(seq)
}

fn key(field: &str, text: &str) -> Result<PublicKey, LineError> {
    PublicKey::parse(text).ok_or_else(|| LineError(format!("{field} is not an ed25519: public key")))
}

impl AuditLine {
    /// The line, without its newline.
    pub fn to_json(&self) -> String {
        let wire = match self {
            AuditLine::Entry(entry) => Wire::Entry {
                seq: entry.seq,
                time: time_text(entry.time_ms),
                principal: entry.principal.clone(),
                tenant: entry.tenant.clone(),
                operation: entry.operation.clone(),
                outcome: entry.outcome.clone(),
                reason: entry.reason.clone(),
                job_id: entry.job_id.clone(),
                purpose: entry.purpose.clone(),
                tokens: entry.tokens.clone(),
                record_count: entry.record_count,
                request_id: entry.request_id.clone(),
                prev_hash: b64(&entry.prev_hash),
                hash: b64(&entry.hash),
                mac: entry.mac.map(|mac| b64(&mac)),
            },
            AuditLine::Stub { seq, prev_hash, digest } => {
                Wire::Stub { seq: *seq, prev_hash: b64(prev_hash), digest: b64(digest) }
            }
            AuditLine::LegacyStub { seq, prev_hash, hash } => {
                Wire::LegacyStub { seq: *seq, prev_hash: b64(prev_hash), hash: b64(hash) }
            }
            AuditLine::Checkpoint(checkpoint) => Wire::Checkpoint {
                seq: checkpoint.seq,
                hash: b64(&checkpoint.hash),
                time: time_text(checkpoint.time_ms),
                signed_form_from: checkpoint.signed_form_from,
                signer: checkpoint.signer.to_string(),
                signature: b64(&checkpoint.signature),
            },
            AuditLine::SigningKey(record) => Wire::SigningKey {
                public_key: record.public_key.to_string(),
                created: time_text(record.created_at_ms),
                from_seq: record.from_seq,
                previous: record.previous.map(|key| key.to_string()),
                signed_by_previous: record.signed_by_previous.map(|s| b64(&s)),
                signed_by_self: record.signed_by_self.map(|s| b64(&s)),
            },
        };
        serde_json::to_string(&wire).expect("a line serializes")
    }

    /// Parses one line (without its newline).
    pub fn parse(line: &str) -> Result<Self, LineError> {
        if line.len() > MAX_LINE_BYTES {
            return Err(LineError(format!("a line is longer than {MAX_LINE_BYTES} bytes")));
        }
        // serde_json's own message may quote the line; say only what kind of fault and where.
        let wire: Wire = serde_json::from_str(line).map_err(|error| {
            let kind = match error.classify() {
                serde_json::error::Category::Data => "a field is missing, unknown or of the wrong type",
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "not valid JSON",
                serde_json::error::Category::Io => "unreadable",
            };
            LineError(format!("not an audit line ({kind}, at column {})", error.column()))
        })?;
        Ok(match wire {
            Wire::Entry {
                seq,
                time,
                principal,
                tenant,
                operation,
                outcome,
                reason,
                job_id,
                purpose,
                tokens,
                record_count,
                request_id,
                prev_hash,
                hash,
                mac,
            } => AuditLine::Entry(AuditRecord {
                seq: bounded_seq(seq)?,
                time_ms: time_ms("time", &time)?,
                principal,
                tenant,
                operation,
                outcome,
                reason,
                job_id,
                purpose,
                tokens,
                record_count,
                request_id,
                prev_hash: bytes("prev_hash", &prev_hash)?,
                hash: bytes("hash", &hash)?,
                mac: mac.map(|mac| bytes("mac", &mac)).transpose()?,
            }),
            Wire::Stub { seq, prev_hash, digest } => AuditLine::Stub {
                seq: bounded_seq(seq)?,
                prev_hash: bytes("prev_hash", &prev_hash)?,
                digest: bytes("digest", &digest)?,
            },
            Wire::LegacyStub { seq, prev_hash, hash } => AuditLine::LegacyStub {
                seq: bounded_seq(seq)?,
                prev_hash: bytes("prev_hash", &prev_hash)?,
                hash: bytes("hash", &hash)?,
            },
            Wire::Checkpoint { seq, hash, time, signed_form_from, signer, signature } => {
                AuditLine::Checkpoint(SignedCheckpoint {
                    seq: bounded_seq(seq)?,
                    hash: bytes("hash", &hash)?,
                    time_ms: time_ms("time", &time)?,
                    signed_form_from: bounded_seq(signed_form_from)?,
                    signer: key("signer", &signer)?,
                    signature: bytes::<SIGNATURE_LEN>("signature", &signature)?,
                })
            }
            Wire::SigningKey { public_key, created, from_seq, previous, signed_by_previous, signed_by_self } => {
                AuditLine::SigningKey(SigningKeyRecord {
                    public_key: key("public_key", &public_key)?,
                    created_at_ms: time_ms("created", &created)?,
                    from_seq: bounded_seq(from_seq)?,
                    previous: previous.map(|text| key("previous", &text)).transpose()?,
                    signed_by_previous: signed_by_previous.map(|s| bytes("signed_by_previous", &s)).transpose()?,
                    signed_by_self: signed_by_self.map(|s| bytes("signed_by_self", &s)).transpose()?,
                })
            }
        })
    }
}

/// Whether `line`, as written, holds a run of 12 or more decimal digits
/// (for tests of the format's promise).
#[cfg(test)]
fn has_long_digit_run(line: &str) -> bool {
    let mut run = 0;
    for c in line.chars() {
        run = if c.is_ascii_digit() { run + 1 } else { 0 };
        if run >= 12 {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditDraft, Operation};
    use crate::id::{Principal, TenantId};
    use crate::store::ChainHead;
    use mnvault_keys::{AuditChainKey, KeyMaterial, VaultSigningKey, GENESIS_HASH};

    #[test]
    fn every_kind_of_line_round_trips() {
        let chain_key = AuditChainKey::new(&KeyMaterial::generate());
        let mut draft = AuditDraft::by(
            &Principal::parse("payroll").unwrap(),
            Operation::Tokenize,
            Some(&TenantId::parse("demo").unwrap()),
        );
        draft.tokens = vec![crate::mint::draw_token(crate::id::TokenFormat::Opaque)];
        draft.request_id = Some(crate::mint::draw_request_id());
        let entry = AuditRecord::seal(draft, 1, 1_764_000_000_123, GENESIS_HASH, &chain_key);
        let signing = VaultSigningKey::new(&KeyMaterial::generate());
        let next = VaultSigningKey::new(&KeyMaterial::generate());
        let checkpoint = SignedCheckpoint::sign(&signing, &ChainHead { seq: 1, hash: entry.hash }, 1_764_000_000_456);
        let lines = [
            AuditLine::Entry(entry.clone()),
            AuditLine::Stub { seq: 1, prev_hash: GENESIS_HASH, digest: entry.digest() },
            AuditLine::LegacyStub { seq: 1, prev_hash: GENESIS_HASH, hash: entry.hash },
            AuditLine::Checkpoint(checkpoint),
            AuditLine::SigningKey(SigningKeyRecord::first(&signing, 1_764_000_000_000)),
            AuditLine::SigningKey(SigningKeyRecord::succeed(&signing, &next, 7, 1_764_000_000_789)),
        ];
        for line in lines {
            let json = line.to_json();
            assert!(!json.contains('\n'));
            assert!(!has_long_digit_run(&json), "{json}");
            assert_eq!(AuditLine::parse(&json).unwrap(), line, "{json}");
        }
    }

    #[test]
    fn malformed_lines_are_refused_by_name() {
        for (line, expected) in [
            ("{}", "not an audit line"),
            ("{\"type\":\"stub\",\"seq\":1,\"prev_hash\":\"AA\",\"digest\":\"AA\"}", "prev_hash is not 32 bytes"),
            ("{\"type\":\"stub\",\"seq\":1,\"prev_hash\":\"AA\",\"digest\":\"AA\",\"extra\":1}", "not an audit line"),
            ("{\"type\":\"other\"}", "not an audit line"),
        ] {
            let error = AuditLine::parse(line).unwrap_err().to_string();
            assert!(error.contains(expected), "{line}: {error}");
        }
        assert!(AuditLine::parse(&"x".repeat(MAX_LINE_BYTES + 1)).unwrap_err().to_string().contains("longer"));
    }
}
