//! How long a number may be kept, and the deletion certificate (廃棄証明書).
//!
//! Pure rules, no store. The source is `shared/domain.md`, "How long numbers
//! may be kept": a number is kept only while needed; once employment has
//! ended and the retention period of every document holding it has passed,
//! it is deleted irreversibly and a record of the deletion is kept (PPC
//! guideline, 事業者編). The periods, as domain.md gives them:
//!
//! | documents | retention |
//! |---|---|
//! | 扶養控除等申告書 and other tax 申告書 | 7 years from 10 January after the filing deadline year |
//! | 雇用保険 documents about insured persons | 4 years (other 雇用保険 documents 2 years) |
//! | 健康保険・厚生年金保険 documents | 2 years from completion |
//!
//! # Dates
//!
//! Dates are calendar dates in Japan (JST, UTC+9, no daylight saving): the
//! law counts in days of the Japanese calendar, not in instants. How they
//! are counted where domain.md is silent, each choice the later of the
//! plausible readings, so the vault never deletes early:
//!
//! - **From when.** The periods of 雇用保険 and 健康保険・厚生年金保険
//!   documents run from the completion of the matter, which for a leaver
//!   comes after the end date of employment (退職日) the caller gives: the
//!   資格喪失届 is due within 5 days (健康保険・厚生年金保険) or by the 10th
//!   day after the day following it (雇用保険), and the matter completes
//!   once it is processed. The vault counts from one month after the end
//!   date, which covers both deadlines and their processing. The last tax
//!   申告書 a leaver hands in is the one of the year they leave, or of the
//!   next year when they leave after offices have begun collecting next
//!   year's 扶養控除等申告書 at the autumn 年末調整: so "the filing deadline
//!   year" is the end date's year, or the next one for an end date from
//!   1 October on, and the period starts on 10 January after it.
//! - **Counting.** The first day is not counted and a period in years ends on
//!   the day before the anniversary of its start day's successor, that is on
//!   the anniversary of the start day itself; with no such day (29 February)
//!   it ends on the last day of that month (民法 第140条, 第143条). The number
//!   is therefore kept through that day, and may be deleted from the next
//!   one: the **deletion date** ([`Retention::delete_on`]).
//! - **Several documents.** A number held by documents of several classes
//!   is kept until the latest of their deletion dates.
//! - **Set directly.** A deletion date may also be given outright (a number
//!   collected by mistake, a policy of the office); given with an end date,
//!   the later of the two wins.
//! - **Legal hold.** While a hold is on, nothing is deleted, whatever the
//!   date; lifting it lets the next purge delete what is due.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime, UtcOffset};

use crate::error::VaultError;

/// Tokens one `SetRetention` call may name.
pub const MAX_RETENTION_TOKENS: usize = 10_000;

/// Retention rows one purge transaction reads (and deletes at most).
pub const PURGE_BATCH: u32 = 500;

/// Batches one `PurgeExpired` call runs; what is left waits for the next
/// call or the background purge.
pub const PURGE_BATCHES_PER_CALL: u32 = 20;

/// Deletions one certificate lists at most: a range holding more is
/// refused, to be split. A deletion takes up to about 1.3 KB of the
/// certificate (its legal bases, four classes at most), so this keeps the
/// largest certificate under 4 MiB, the default message limit of a gRPC
/// client (the vault's own is 8 MiB); a unit test checks it. At least a
/// purge batch ([`PURGE_BATCH`], deleted at one instant), so that a period
/// can always be split.
pub const MAX_CERTIFICATE_DELETIONS: usize = 2_000;

/// Earliest and latest year a retention date may name: My Numbers exist
/// since 2015; anything far outside is a typing mistake.
const YEARS: std::ops::RangeInclusive<i32> = 2000..=2199;

/// A kind of document that holds a number, with its retention period. The
/// identifiers are stored and sent: never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DocumentClass {
    /// 扶養控除等申告書 and other tax 申告書.
    TaxDeclaration,
    /// 雇用保険 documents about insured persons.
    EmploymentInsuranceInsured,
    /// Other 雇用保険 documents.
    EmploymentInsuranceOther,
    /// 健康保険・厚生年金保険 documents.
    HealthPensionInsurance,
}

impl DocumentClass {
    /// Every class.
    pub const ALL: [DocumentClass; 4] = [
        DocumentClass::TaxDeclaration,
        DocumentClass::EmploymentInsuranceInsured,
        DocumentClass::EmploymentInsuranceOther,
        DocumentClass::HealthPensionInsurance,
    ];

    /// Stable identifier.
    pub fn id(self) -> &'static str {
        match self {
            DocumentClass::TaxDeclaration => "tax-declaration",
            DocumentClass::EmploymentInsuranceInsured => "employment-insurance-insured",
            DocumentClass::EmploymentInsuranceOther => "employment-insurance-other",
            DocumentClass::HealthPensionInsurance => "health-pension-insurance",
        }
    }

    /// The class an identifier names.
    pub fn from_id(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|class| class.id() == id)
    }

    /// The retention rule as a certificate states it (domain.md's table).
    pub fn legal_basis(self) -> &'static str {
        match self {
            DocumentClass::TaxDeclaration => {
                "扶養控除等申告書その他の税の申告書: 提出期限の属する年の翌年1月10日から7年保存 (個人情報保護委員会 \
                 ガイドライン(事業者編): 保存期間経過後は速やかに削除)"
            }
            DocumentClass::EmploymentInsuranceInsured => {
                "雇用保険の被保険者に関する書類: 4年保存 (個人情報保護委員会ガイドライン(事業者編): 保存期間経過後は速やかに削除)"
            }
            DocumentClass::EmploymentInsuranceOther => {
                "雇用保険のその他の書類: 2年保存 (個人情報保護委員会ガイドライン(事業者編): 保存期間経過後は速やかに削除)"
            }
            DocumentClass::HealthPensionInsurance => {
                "健康保険・厚生年金保険に関する書類: 完結の日から2年保存 (個人情報保護委員会ガイドライン(事業者編): \
                 保存期間経過後は速やかに削除)"
            }
        }
    }

    /// The first day a number held by this class of document may be
    /// deleted, for an employee whose employment ended on `end` (see the
    /// [module documentation](self) on how it is counted).
    pub fn delete_on(self, end: Date) -> Date {
        let (start, years) = match self {
            // 10 January after the filing deadline year: the end date's, or the
            // next one's when next year's 申告書 may already have been collected.
            DocumentClass::TaxDeclaration => {
                let deadline_year = if end.month() >= Month::October { end.year() + 1 } else { end.year() };
                (jan_10(deadline_year + 1), 7)
            }
            DocumentClass::EmploymentInsuranceInsured => (completion(end), 4),
            DocumentClass::EmploymentInsuranceOther | DocumentClass::HealthPensionInsurance => (completion(end), 2),
        };
        add_years(start, years).next_day().unwrap_or(Date::MAX)
    }
}

/// When a leaver's insurance matter is taken as completed: one month after
/// the end date (the 資格喪失届's deadlines and processing; module docs).
fn completion(end: Date) -> Date {
    let (year, month) = match end.month() {
        Month::December => (end.year() + 1, Month::January),
        month => (end.year(), month.next()),
    };
    Date::from_calendar_date(year, month, end.day().min(month.length(year))).unwrap_or(Date::MAX)
}

fn jan_10(year: i32) -> Date {
    Date::from_calendar_date(year, Month::January, 10).unwrap_or(Date::MAX)
}

/// The anniversary of `date` `years` later; 29 February falls on 28
/// February in a year without one (民法 第143条: the month's last day).
fn add_years(date: Date, years: i32) -> Date {
    let year = date.year() + years;
    Date::from_calendar_date(year, date.month(), date.day())
        .or_else(|_| Date::from_calendar_date(year, date.month(), date.month().length(year)))
        .unwrap_or(Date::MAX)
}

/// Japan Standard Time.
const JST: UtcOffset = match UtcOffset::from_hms(9, 0, 0) {
    Ok(offset) => offset,
    Err(_) => UtcOffset::UTC,
};

/// The calendar date in Japan at Unix milliseconds `now_ms`.
pub fn date_in_japan(now_ms: i64) -> Date {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(now_ms) * 1_000_000)
        .map(|at| at.to_offset(JST).date())
        .unwrap_or(Date::MIN)
}

/// A date as stored: the integer `yyyymmdd` (sorts as the date does).
pub fn date_number(date: Date) -> i64 {
    i64::from(date.year()) * 10_000 + i64::from(u8::from(date.month())) * 100 + i64::from(date.day())
}

/// The date a stored `yyyymmdd` names, if it is one.
pub fn date_of_number(number: i64) -> Option<Date> {
    let year = i32::try_from(number / 10_000).ok()?;
    let month = Month::try_from(u8::try_from(number / 100 % 100).ok()?).ok()?;
    let day = u8::try_from(number % 100).ok()?;
    Date::from_calendar_date(year, month, day).ok().filter(|_| number > 0)
}

/// `YYYY-MM-DD`.
pub fn date_text(date: Date) -> String {
    format!("{:04}-{:02}-{:02}", date.year(), u8::from(date.month()), date.day())
}

/// Parses a caller's `YYYY-MM-DD` for `field`; the refusal names the field
/// and the grammar, never the text.
pub fn parse_date(text: &str, field: &'static str) -> Result<Date, VaultError> {
    let refused = || {
        VaultError::InvalidArgument(format!(
            "the {field} is not a date: write it as YYYY-MM-DD, a year from {} to {}",
            YEARS.start(),
            YEARS.end()
        ))
    };
    let bytes = text.as_bytes();
    let shape = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes.iter().enumerate().all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit());
    if !shape {
        return Err(refused());
    }
    let number = |range: std::ops::Range<usize>| text[range].parse::<i64>().map_err(|_| refused());
    let date = date_of_number(number(0..4)? * 10_000 + number(5..7)? * 100 + number(8..10)?).ok_or_else(refused)?;
    if !YEARS.contains(&date.year()) {
        return Err(refused());
    }
    Ok(date)
}

/// Parses document class identifiers; the refusal names the position.
pub fn parse_classes(ids: &[String]) -> Result<BTreeSet<DocumentClass>, VaultError> {
    ids.iter()
        .enumerate()
        .map(|(position, id)| {
            DocumentClass::from_id(id).ok_or_else(|| {
                let known: Vec<_> = DocumentClass::ALL.iter().map(|c| c.id()).collect();
                VaultError::InvalidArgument(format!(
                    "document class #{} is not one the vault knows; use one of {}",
                    position + 1,
                    known.join(", ")
                ))
            })
        })
        .collect()
}

/// Classes as stored: their identifiers, sorted, joined by `,`.
pub fn classes_text(classes: &BTreeSet<DocumentClass>) -> String {
    classes.iter().map(|c| c.id()).collect::<Vec<_>>().join(",")
}

/// Classes from their stored text.
pub fn classes_of_text(text: &str) -> Option<BTreeSet<DocumentClass>> {
    if text.is_empty() {
        return Some(BTreeSet::new());
    }
    text.split(',').map(DocumentClass::from_id).collect()
}

/// What a caller asks for a token: the documents holding its number, and an
/// end date, a deletion date, or both; and whether a legal hold is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRequest {
    /// Classes of the documents that hold the number.
    pub classes: BTreeSet<DocumentClass>,
    /// The end of employment (退職日), in Japan.
    pub end_date: Option<Date>,
    /// A deletion date set directly.
    pub delete_after: Option<Date>,
    /// Whether deletion is held.
    pub legal_hold: bool,
}

/// A token's retention, decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Classes of the documents that hold the number.
    pub classes: BTreeSet<DocumentClass>,
    /// The end of employment, if given.
    pub end_date: Option<Date>,
    /// The first day (in Japan) the number may be deleted.
    pub delete_on: Date,
    /// Whether deletion is held.
    pub legal_hold: bool,
}

/// What a purge may do with a token today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Delete it.
    Delete,
    /// Its date has passed, but a legal hold keeps it.
    Held,
    /// Its date has not come.
    NotYet,
}

impl RetentionRequest {
    /// The retention it asks for: the latest of the classes' deletion dates
    /// after the end date and the date set directly.
    pub fn decide(&self) -> Result<Retention, VaultError> {
        let from_end = match self.end_date {
            Some(_) if self.classes.is_empty() => {
                return Err(VaultError::InvalidArgument(
                    "an end date needs the document classes that hold the number, to count their retention from it"
                        .into(),
                ));
            }
            Some(end) => self.classes.iter().map(|class| class.delete_on(end)).max(),
            None => None,
        };
        let delete_on = match (from_end, self.delete_after) {
            (Some(a), Some(b)) => a.max(b),
            (Some(date), None) | (None, Some(date)) => date,
            (None, None) => {
                return Err(VaultError::InvalidArgument(
                    "give the end of employment (with the document classes), a deletion date, or both".into(),
                ))
            }
        };
        Ok(Retention { classes: self.classes.clone(), end_date: self.end_date, delete_on, legal_hold: self.legal_hold })
    }
}

impl Retention {
    /// Whether a purge on `today` (in Japan) deletes the number.
    pub fn due(&self, today: Date) -> Due {
        match (self.delete_on <= today, self.legal_hold) {
            (false, _) => Due::NotYet,
            (true, true) => Due::Held,
            (true, false) => Due::Delete,
        }
    }

    /// The legal basis of each class, for the certificate.
    pub fn legal_basis(&self) -> Vec<String> {
        if self.classes.is_empty() {
            return vec!["保存期間を直接指定 (deletion date set directly)".to_owned()];
        }
        self.classes.iter().map(|c| c.legal_basis().to_owned()).collect()
    }

    /// One line for people (an audit reason, a message). Dates are kept
    /// apart by words, so no two read as one long digit run.
    pub fn describe(&self) -> String {
        let classes = if self.classes.is_empty() { "none".to_owned() } else { classes_text(&self.classes) };
        let end = self.end_date.map_or_else(|| "not given".to_owned(), date_text);
        let hold = if self.legal_hold { "on" } else { "off" };
        format!(
            "classes {classes}; employment ended {end}; deletion from {}; legal hold {hold}",
            date_text(self.delete_on)
        )
    }
}

/// Format name of a deletion certificate.
pub const CERTIFICATE_FORMAT: &str = "mnvault-deletion-certificate/v1";

/// One deletion a certificate lists: never a number, only the token and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertifiedDeletion {
    /// The token whose sealed number was deleted.
    pub token: String,
    /// When (RFC 3339, UTC).
    pub deleted_at: String,
    /// Document class identifiers.
    pub classes: Vec<String>,
    /// End of employment (`YYYY-MM-DD`), if it was given.
    pub end_date: Option<String>,
    /// The deletion date the purge applied (`YYYY-MM-DD`, in Japan).
    pub delete_on: String,
    /// The legal basis of each class.
    pub legal_basis: Vec<String>,
    /// Sequence number of the audit entry (`retention.delete`) that recorded it.
    pub audit_seq: u64,
}

/// What a certificate says, the part that is signed.
///
/// Its canonical bytes ([`CertificateBody::canonical_bytes`]) are its JSON
/// serialisation as this struct defines it: one object, the members in the
/// order declared here (`format`, `tenant`, `since`, `until`, `issued_at`,
/// `issued_by`, `key_id`, `count`, `deletions`; each deletion `token`,
/// `deleted_at`, `classes`, `end_date`, `delete_on`, `legal_basis`,
/// `audit_seq`), no whitespace, strings UTF-8 with only `"`, `\` and control
/// characters escaped, integers in decimal, an absent end date as `null`.
/// A verifier parses the document, rebuilds these bytes and checks the
/// signature over `b"mnvault/v1/deletion-certificate" ‖ bytes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateBody {
    /// [`CERTIFICATE_FORMAT`].
    pub format: String,
    /// The tenant.
    pub tenant: String,
    /// Start of the period covered (RFC 3339, inclusive).
    pub since: String,
    /// End of the period covered (RFC 3339, exclusive).
    pub until: String,
    /// When it was issued.
    pub issued_at: String,
    /// Who asked for it.
    pub issued_by: String,
    /// The signing key's id (`ed25519:` and 16 letters, see `PublicKey::key_id`).
    pub key_id: String,
    /// How many deletions it lists.
    pub count: u64,
    /// The deletions, by time then token.
    pub deletions: Vec<CertifiedDeletion>,
}

impl CertificateBody {
    /// The bytes that are signed.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Serialising these plain structs cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A signed certificate as written to a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeletionCertificate {
    /// What is certified.
    pub certificate: CertificateBody,
    /// Ed25519 signature (standard base64) of the domain label and the
    /// body's canonical bytes.
    pub signature: String,
    /// The signing key's id, as in the body.
    pub key_id: String,
}

/// Why a certificate does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// Not a certificate document.
    #[error("not a deletion certificate: {0}")]
    Malformed(String),
    /// Signed by another key.
    #[error("signed by key {found}, not by the key given ({expected})")]
    OtherKey {
        /// The certificate's key id.
        found: String,
        /// The given key's id.
        expected: String,
    },
    /// The signature does not match the content: it was changed.
    #[error("the signature does not match the content: the certificate was changed after it was signed")]
    BadSignature,
}

impl DeletionCertificate {
    /// Signs `body` with `key`.
    pub fn sign(body: CertificateBody, key: &mnvault_keys::VaultSigningKey) -> Self {
        let signature = key.sign(mnvault_keys::SignatureDomain::DeletionCertificate, &body.canonical_bytes());
        let key_id = body.key_id.clone();
        Self { certificate: body, signature: data_encoding::BASE64.encode(&signature), key_id }
    }

    /// The document as a file holds it (pretty JSON).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses a document and checks it against `public_key`: offline, with
    /// no secret and no database.
    pub fn verify(json: &str, public_key: &mnvault_keys::PublicKey) -> Result<CertificateBody, CertificateError> {
        let document: DeletionCertificate =
            serde_json::from_str(json).map_err(|error| CertificateError::Malformed(error.to_string()))?;
        let body = &document.certificate;
        if body.format != CERTIFICATE_FORMAT {
            return Err(CertificateError::Malformed(format!("its format is not {CERTIFICATE_FORMAT}")));
        }
        if body.count != body.deletions.len() as u64 {
            return Err(CertificateError::BadSignature);
        }
        let expected = public_key.key_id();
        if document.key_id != expected || body.key_id != expected {
            return Err(CertificateError::OtherKey { found: document.key_id.clone(), expected });
        }
        let signature = data_encoding::BASE64
            .decode(document.signature.as_bytes())
            .map_err(|_| CertificateError::Malformed("the signature is not base64".into()))?;
        if !public_key.verify(mnvault_keys::SignatureDomain::DeletionCertificate, &body.canonical_bytes(), &signature) {
            return Err(CertificateError::BadSignature);
        }
        Ok(document.certificate)
    }
}

#[cfg(test)]
mod tests {
    use mnvault_keys::{KeyMaterial, VaultSigningKey};
    use time::macros::date;

    use super::*;

    fn request(classes: &[DocumentClass], end: Option<Date>, after: Option<Date>) -> RetentionRequest {
        RetentionRequest {
            classes: classes.iter().copied().collect(),
            end_date: end,
            delete_after: after,
            legal_hold: false,
        }
    }

    #[test]
    fn each_class_counts_from_the_end_date_as_domain_md_says() {
        let end = date!(2026 - 03 - 31);
        // Tax: 10 January after the filing deadline year (2027), 7 years, deletable the day after.
        assert_eq!(DocumentClass::TaxDeclaration.delete_on(end), date!(2034 - 01 - 11));
        assert_eq!(DocumentClass::TaxDeclaration.delete_on(date!(2026 - 09 - 30)), date!(2034 - 01 - 11));
        // From October, next year's 申告書 may have been collected: its deadline year counts.
        assert_eq!(DocumentClass::TaxDeclaration.delete_on(date!(2026 - 10 - 01)), date!(2035 - 01 - 11));
        assert_eq!(DocumentClass::TaxDeclaration.delete_on(date!(2026 - 12 - 31)), date!(2035 - 01 - 11));
        // Insurance: from completion, a month after the end date (30 April), kept through its anniversary.
        assert_eq!(DocumentClass::EmploymentInsuranceInsured.delete_on(end), date!(2030 - 05 - 01));
        assert_eq!(DocumentClass::EmploymentInsuranceOther.delete_on(end), date!(2028 - 05 - 01));
        assert_eq!(DocumentClass::HealthPensionInsurance.delete_on(end), date!(2028 - 05 - 01));
        assert_eq!(DocumentClass::HealthPensionInsurance.delete_on(date!(2026 - 12 - 15)), date!(2029 - 01 - 16));
    }

    #[test]
    fn a_leap_day_ends_on_the_months_last_day() {
        // Completion on 29 February 2028 (a month after 29 January).
        assert_eq!(DocumentClass::HealthPensionInsurance.delete_on(date!(2028 - 01 - 29)), date!(2030 - 03 - 01));
        assert_eq!(DocumentClass::EmploymentInsuranceInsured.delete_on(date!(2028 - 01 - 29)), date!(2032 - 03 - 01));
        // A month after 31 January is the month's last day.
        assert_eq!(DocumentClass::HealthPensionInsurance.delete_on(date!(2027 - 01 - 31)), date!(2029 - 03 - 01));
    }

    #[test]
    fn the_latest_date_wins() {
        let end = date!(2026 - 03 - 31);
        let all = request(&DocumentClass::ALL, Some(end), None).decide().unwrap();
        assert_eq!(all.delete_on, date!(2034 - 01 - 11));
        let insured = [DocumentClass::EmploymentInsuranceInsured, DocumentClass::HealthPensionInsurance];
        assert_eq!(request(&insured, Some(end), None).decide().unwrap().delete_on, date!(2030 - 05 - 01));
        // A direct date later than the classes' wins; an earlier one does not shorten them.
        let later = request(&insured, Some(end), Some(date!(2031 - 01 - 01))).decide().unwrap();
        assert_eq!(later.delete_on, date!(2031 - 01 - 01));
        let earlier = request(&insured, Some(end), Some(date!(2027 - 01 - 01))).decide().unwrap();
        assert_eq!(earlier.delete_on, date!(2030 - 05 - 01));
        let direct = request(&[], None, Some(date!(2027 - 01 - 01))).decide().unwrap();
        assert_eq!(direct.delete_on, date!(2027 - 01 - 01));
    }

    #[test]
    fn a_request_needs_a_date_and_an_end_date_needs_classes() {
        assert!(request(&[DocumentClass::TaxDeclaration], None, None).decide().is_err());
        assert!(request(&[], Some(date!(2026 - 03 - 31)), None).decide().is_err());
    }

    #[test]
    fn a_hold_keeps_what_is_due() {
        let mut retention = request(&[], None, Some(date!(2027 - 01 - 01))).decide().unwrap();
        assert_eq!(retention.due(date!(2026 - 12 - 31)), Due::NotYet);
        assert_eq!(retention.due(date!(2027 - 01 - 01)), Due::Delete);
        retention.legal_hold = true;
        assert_eq!(retention.due(date!(2027 - 01 - 01)), Due::Held);
        assert_eq!(retention.due(date!(2026 - 12 - 31)), Due::NotYet);
    }

    #[test]
    fn the_date_in_japan_turns_at_midnight_jst() {
        // 2026-12-31T15:00:00Z is midnight in Japan.
        let midnight = 1_798_729_200_000;
        assert_eq!(date_in_japan(midnight - 1), date!(2026 - 12 - 31));
        assert_eq!(date_in_japan(midnight), date!(2027 - 01 - 01));
    }

    #[test]
    fn dates_round_trip_and_bad_text_is_refused_without_being_repeated() {
        let day = date!(2034 - 01 - 11);
        assert_eq!(date_number(day), 20_340_111);
        assert_eq!(date_of_number(20_340_111), Some(day));
        assert_eq!(date_of_number(20_340_231), None);
        assert_eq!(parse_date("2034-01-11", "end date").unwrap(), day);
        for bad in ["2034-1-11", "2034/01/11", "2034-02-30", "1999-12-31", "２０３４-01-11", "621498320257"] {
            let error = parse_date(bad, "end date").unwrap_err().to_string();
            assert!(error.contains("end date") && !error.contains(bad), "{error}");
        }
    }

    #[test]
    fn classes_parse_and_are_stored_sorted() {
        let classes = parse_classes(&["health-pension-insurance".into(), "tax-declaration".into()]).unwrap();
        assert_eq!(classes_text(&classes), "tax-declaration,health-pension-insurance");
        assert_eq!(classes_of_text(&classes_text(&classes)), Some(classes));
        assert_eq!(classes_of_text(""), Some(BTreeSet::new()));
        assert_eq!(classes_of_text("tax-declaration,x"), None);
        let error = parse_classes(&["tax".into()]).unwrap_err().to_string();
        assert!(error.contains("#1"), "{error}");
    }

    #[test]
    fn a_described_retention_holds_no_digit_run_long_enough_to_be_a_number() {
        let retention = request(&DocumentClass::ALL, Some(date!(2026 - 03 - 31)), None).decide().unwrap();
        let text = retention.describe();
        assert!(!crate::number::contains_number(&text), "{text}");
    }

    fn body(key: &VaultSigningKey) -> CertificateBody {
        let retention = request(&[DocumentClass::TaxDeclaration], Some(date!(2016 - 03 - 31)), None).decide().unwrap();
        CertificateBody {
            format: CERTIFICATE_FORMAT.into(),
            tenant: "demo".into(),
            since: "2026-01-01T00:00:00Z".into(),
            until: "2027-01-01T00:00:00Z".into(),
            issued_at: "2026-11-24T00:00:00Z".into(),
            issued_by: "admin".into(),
            key_id: key.public_key().key_id(),
            count: 1,
            deletions: vec![CertifiedDeletion {
                token: "mnt_abcdefghijklmnopqrstuvwxyz".into(),
                deleted_at: "2026-11-24T00:00:00Z".into(),
                classes: vec!["tax-declaration".into()],
                end_date: Some("2016-03-31".into()),
                delete_on: date_text(retention.delete_on),
                legal_basis: retention.legal_basis(),
                audit_seq: 7,
            }],
        }
    }

    #[test]
    fn a_certificate_verifies_and_any_change_is_refused() {
        let key = VaultSigningKey::new(&KeyMaterial::generate());
        let json = DeletionCertificate::sign(body(&key), &key).to_json();
        assert_eq!(DeletionCertificate::verify(&json, &key.public_key()).unwrap(), body(&key));
        let changed = json.replace("2016-03-31", "2016-03-30");
        assert_eq!(DeletionCertificate::verify(&changed, &key.public_key()), Err(CertificateError::BadSignature));
        let other = VaultSigningKey::new(&KeyMaterial::generate());
        assert!(matches!(
            DeletionCertificate::verify(&json, &other.public_key()),
            Err(CertificateError::OtherKey { .. })
        ));
        let added = json.replacen("\"tenant\"", "\"extra\": 1, \"tenant\"", 1);
        assert!(matches!(DeletionCertificate::verify(&added, &key.public_key()), Err(CertificateError::Malformed(_))));
    }

    /// Review finding: 10,000 deletions made a certificate of about 12 MB,
    /// more than any gRPC message limit on the way; the call was audited as
    /// issued and the certificate never arrived.
    #[test]
    fn a_certificate_of_the_most_deletions_fits_a_clients_default_message_limit() {
        let key = VaultSigningKey::new(&KeyMaterial::generate());
        let mut body = body(&key);
        let retention = request(&DocumentClass::ALL, Some(date!(2016 - 03 - 31)), None).decide().unwrap();
        let widest = CertifiedDeletion {
            token: format!("mnt_{}", "a".repeat(26)),
            deleted_at: "2026-11-24T00:00:00.123Z".into(),
            classes: DocumentClass::ALL.iter().map(|c| c.id().to_owned()).collect(),
            end_date: Some("2016-03-31".into()),
            delete_on: date_text(retention.delete_on),
            legal_basis: retention.legal_basis(),
            audit_seq: u64::MAX,
        };
        body.tenant = "t".repeat(128);
        body.issued_by = "p".repeat(128);
        body.deletions = vec![widest; MAX_CERTIFICATE_DELETIONS];
        body.count = MAX_CERTIFICATE_DELETIONS as u64;
        let json = DeletionCertificate::sign(body, &key).to_json();
        // The response also carries the key and counts: keep a margin.
        assert!(json.len() < 4 * 1024 * 1024 - 64 * 1024, "{} bytes", json.len());
        assert!(MAX_CERTIFICATE_DELETIONS >= PURGE_BATCH as usize, "a period must always split");
    }

    /// Review finding: with a hex key id, one vault in sixteen signed every
    /// certificate under an id that reads as a number (`ed25519:797890…`).
    #[test]
    fn no_key_id_reads_as_a_number() {
        for seed in 0..=255u8 {
            let id = VaultSigningKey::new(&KeyMaterial::from_bytes([seed; 32])).public_key().key_id();
            assert!(!crate::number::contains_number(&id), "{id}");
        }
    }

    #[test]
    fn the_canonical_bytes_are_the_documented_json() {
        let key = VaultSigningKey::new(&KeyMaterial::from_bytes([1; 32]));
        let bytes = String::from_utf8(body(&key).canonical_bytes()).unwrap();
        assert!(
            bytes.starts_with("{\"format\":\"mnvault-deletion-certificate/v1\",\"tenant\":\"demo\",\"since\":"),
            "{bytes}"
        );
        assert!(bytes.contains("\"deletions\":[{\"token\":\"mnt_"), "{bytes}");
        assert!(!bytes.contains('\n') && bytes.contains("\"count\":1,\"deletions\":[{"), "{bytes}");
    }
}
