//! Identifiers, parsed once at the edge into types with strict grammars.
//!
//! Whatever a caller sends as a tenant, token, job id, principal or request
//! id is parsed here before it touches an audit entry, a log line or a
//! message. A value that does not parse is refused with an [`IdError`] that
//! names the field and the grammar, never the text: a caller may paste a My
//! Number where a token belongs. A value that parses holds no number by
//! construction: no grammar here admits a run that [`contains_number`]
//! finds, so its `Display` may appear in messages, logs and audit entries.
//!
//! The one exception is the legacy token format, twelve ASCII digits by
//! design (their check digit never matches). A mistyped number parses as one,
//! so a token the caller sent is named in messages only by its position, and
//! recorded in an audit entry only once it resolved to a record: one that
//! does not resolve is counted, never written down.

use std::fmt;
use std::str::FromStr;

use crate::number::{contains_number, has_valid_check_digit, DIGITS};

/// Why a text is not a valid identifier. Never holds the text itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// A tenant identifier does not follow its grammar.
    #[error(
        "the tenant identifier is not valid: use 1 to 63 lowercase letters, digits or inner hyphens, starting with \
         a letter and holding no number, e.g. acme-corp"
    )]
    Tenant,
    /// A token does not follow either token format.
    #[error("the token is not valid: a token is `mnt_` and 26 base32 characters, or 12 digits (legacy format)")]
    Token,
    /// A filing job identifier does not follow its grammar.
    #[error("the filing job id is not valid: a job id is `job_` and 16 base32 characters")]
    JobId,
    /// A policy change identifier does not follow its grammar.
    #[error(
        "the policy change id is not valid: a change id is `pc_` and 16 base32 characters, as `policy set` printed it"
    )]
    PolicyChangeId,
    /// A collection identifier does not follow its grammar.
    #[error("the collection id is not valid: a collection id is `col_` and 16 base32 characters, as `collect create` printed it")]
    CollectionId,
    /// A principal name does not follow its grammar.
    #[error(
        "the principal name is not valid: use 1 to 128 ASCII letters, digits, `.`, `_`, `-` or `@`, holding no \
         number"
    )]
    Principal,
    /// A request id does not follow its grammar.
    #[error("the request id is not valid: a request id is `req_` and 26 base32 characters, as the vault drew it")]
    RequestId,
    /// A certificate serial is not hex of 1 to 20 bytes, or reads as a number.
    #[error(
        "the certificate serial is not valid: give 1 to 20 bytes in hex, as `mnvault pki issue` and `pki list` print \
         it (colons between bytes allowed); a serial whose hex holds eleven digits in a row could be a My Number and \
         is refused here: list such a certificate in a CRL file (tls.crl) instead"
    )]
    CertificateSerial,
}

macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The identifier's text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(text: &str) -> Result<Self, IdError> {
                Self::parse(text)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

text_id!(
    /// A tenant: one client company or office. Lowercase kebab-case, 1 to 63
    /// characters, starting with a letter: it appears in key-wrapping contexts,
    /// paths and logs.
    TenantId
);

impl TenantId {
    /// Parses a tenant identifier.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let valid = (1..=63).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && text.starts_with(|c: char| c.is_ascii_lowercase())
            && !text.ends_with('-')
            && !contains_number(text);
        valid.then(|| Self(text.to_owned())).ok_or(IdError::Tenant)
    }
}

text_id!(
    /// A filing job identifier: `job_` and 16 lowercase base32 characters
    /// (80 random bits), drawn by [`crate::mint::draw_job_id`].
    JobId
);

/// Prefix of job identifiers.
pub const JOB_ID_PREFIX: &str = "job_";
/// Base32 characters after the prefix of a job identifier.
pub const JOB_ID_CHARS: usize = 16;

impl JobId {
    /// Parses a job identifier.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let valid = text
            .strip_prefix(JOB_ID_PREFIX)
            .is_some_and(|rest| rest.len() == JOB_ID_CHARS && rest.bytes().all(is_base32_lower))
            && !contains_number(text);
        valid.then(|| Self(text.to_owned())).ok_or(IdError::JobId)
    }
}

text_id!(
    /// A collection (an employee entering their own number on the vault's
    /// page): `col_` and 16 lowercase base32 characters (80 random bits),
    /// drawn by [`crate::mint::draw_collection_id`]. Not the link's secret:
    /// payroll names a collection by it, and it appears in the audit log.
    CollectionId
);

/// Prefix of collection identifiers.
pub const COLLECTION_ID_PREFIX: &str = "col_";

impl CollectionId {
    /// Parses a collection identifier.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let valid = text
            .strip_prefix(COLLECTION_ID_PREFIX)
            .is_some_and(|rest| rest.len() == JOB_ID_CHARS && rest.bytes().all(is_base32_lower))
            && !contains_number(text);
        valid.then(|| Self(text.to_owned())).ok_or(IdError::CollectionId)
    }
}

text_id!(
    /// A proposed change of a tenant's policy: `pc_` and 16 lowercase base32
    /// characters (80 random bits), drawn by
    /// [`crate::mint::draw_policy_change_id`]. A second key-admin approves
    /// the change by naming it, so what they reviewed is what applies.
    PolicyChangeId
);

/// Prefix of policy change identifiers.
pub const POLICY_CHANGE_ID_PREFIX: &str = "pc_";

impl PolicyChangeId {
    /// Parses a policy change identifier.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let valid = text
            .strip_prefix(POLICY_CHANGE_ID_PREFIX)
            .is_some_and(|rest| rest.len() == JOB_ID_CHARS && rest.bytes().all(is_base32_lower))
            && !contains_number(text);
        valid.then(|| Self(text.to_owned())).ok_or(IdError::PolicyChangeId)
    }
}

text_id!(
    /// A client certificate's serial number: lowercase hex of its bytes,
    /// without leading zero bytes or separators, so one certificate has one
    /// spelling. Serials serve to revoke certificates; one whose hex could
    /// hold a number is not representable (such a certificate is revoked by
    /// a CRL file instead), so a serial never brings a number into the log.
    CertificateSerial
);

/// Bytes of the longest serial RFC 5280 allows.
pub const MAX_SERIAL_BYTES: usize = 20;

impl CertificateSerial {
    /// Parses a serial as people paste it: hex in either case, with or
    /// without a colon between bytes (`openssl x509 -text`), a `serial=`
    /// (`openssl x509 -serial`) or `0x` in front, spaces around.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let text = text.trim();
        let text = ["serial=", "0x", "0X"].iter().find_map(|prefix| text.strip_prefix(prefix)).unwrap_or(text);
        let digits: String = if text.contains(':') {
            let pairs: Vec<&str> = text.split(':').collect();
            if pairs.iter().any(|pair| pair.len() != 2) {
                return Err(IdError::CertificateSerial);
            }
            pairs.concat()
        } else {
            text.to_owned()
        };
        if digits.is_empty()
            || digits.len() > 2 * MAX_SERIAL_BYTES + 2
            || !digits.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(IdError::CertificateSerial);
        }
        let padded = if digits.len() % 2 == 1 { format!("0{digits}") } else { digits };
        let bytes: Vec<u8> = (0..padded.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&padded[at..at + 2], 16))
            .collect::<Result<_, _>>()
            .map_err(|_| IdError::CertificateSerial)?;
        Self::from_bytes(&bytes).ok_or(IdError::CertificateSerial)
    }

    /// The serial of a certificate's DER INTEGER bytes; `None` when it is
    /// empty, longer than 20 bytes, or its hex could hold a number.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len().saturating_sub(1));
        let bytes = bytes.get(first..).filter(|rest| (1..=MAX_SERIAL_BYTES).contains(&rest.len()))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        (!contains_number(&hex)).then_some(Self(hex))
    }
}

text_id!(
    /// Who called: the name the caller's certificate proves. ASCII letters,
    /// digits, `.`, `_`, `-` and `@`, 1 to 128 characters, holding no number.
    Principal
);

impl Principal {
    /// Parses a principal name.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let valid = (1..=128).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
            && !contains_number(text);
        valid.then(|| Self(text.to_owned())).ok_or(IdError::Principal)
    }

    /// Parses a principal as the vault records it: a configured name, or an
    /// identity's SPIFFE ID ([`crate::identity`]). For what the vault reads
    /// back (jobs, audit filters), never for what a certificate names.
    pub fn parse_recorded(text: &str) -> Result<Self, IdError> {
        if text.starts_with(crate::identity::SPIFFE_PREFIX) {
            return crate::identity::Identity::parse(text)
                .map(|identity| identity.principal())
                .map_err(|_| IdError::Principal);
        }
        Self::parse(text)
    }

    /// The principal of an identity, given as its SPIFFE ID.
    pub(crate) fn of_identity(spiffe_id: &str) -> Self {
        Self(spiffe_id.to_owned())
    }

    /// The identity, when this principal is one (a SPIFFE ID).
    pub fn identity(&self) -> Option<crate::identity::Identity> {
        if !self.0.starts_with(crate::identity::SPIFFE_PREFIX) {
            return None;
        }
        crate::identity::Identity::parse(&self.0).ok()
    }

    /// The person behind this principal: an identity's `<name>` (one person
    /// may hold several certificates, in several roles), or a configured
    /// name itself.
    pub fn person(&self) -> &str {
        if self.0.starts_with(crate::identity::SPIFFE_PREFIX) {
            return self.0.rsplit('/').next().unwrap_or(&self.0);
        }
        &self.0
    }

    /// What tells persons apart: the [`Principal::person`] in lowercase
    /// without `.`, `_` and `-`, so `sato.k`, `sato_k` and `Sato-K` are one
    /// person. Rules that need distinct persons (approvals) and counts per
    /// person (release rates) compare this; a CA that spells one person two
    /// ways gains nothing, and two people with such names need another.
    pub fn person_key(&self) -> String {
        person_key(self.person())
    }

    /// Whether `self` and `other` are one person (see [`Principal::person_key`]).
    pub fn is_same_person(&self, other: &Principal) -> bool {
        self.person_key() == other.person_key()
    }
}

/// [`Principal::person_key`] of a person's name as recorded.
pub fn person_key(person: &str) -> String {
    person.chars().filter(|c| !matches!(c, '.' | '_' | '-')).flat_map(char::to_lowercase).collect()
}

text_id!(
    /// One call to the vault: `req_` and 26 lowercase base32 characters (128
    /// random bits), drawn by [`crate::mint::draw_request_id`] for every call
    /// and never taken from a caller. It ties the call's log lines, the
    /// `x-request-id` header of its answer and its audit entries together.
    RequestId
);

/// Prefix of request ids.
pub const REQUEST_ID_PREFIX: &str = "req_";
/// Base32 characters after the prefix of a request id.
pub const REQUEST_ID_CHARS: usize = 26;

impl RequestId {
    /// Parses a request id (an operator's filter, a stored entry).
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let valid = text
            .strip_prefix(REQUEST_ID_PREFIX)
            .is_some_and(|rest| rest.len() == REQUEST_ID_CHARS && rest.bytes().all(is_base32_lower))
            && !contains_number(text);
        valid.then(|| Self(text.to_owned())).ok_or(IdError::RequestId)
    }
}

/// Which of the two token formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TokenFormat {
    /// `mnt_` + 26 lowercase base32 characters (128 random bits).
    Opaque,
    /// 12 digits whose check digit is deliberately wrong, for legacy number
    /// columns; it can never pass for a real number.
    LegacyDigits,
}

impl TokenFormat {
    /// The identifier stored in the `format` column. Never rename one.
    pub fn id(self) -> &'static str {
        match self {
            TokenFormat::Opaque => "opaque",
            TokenFormat::LegacyDigits => "legacy-digits",
        }
    }

    /// Parses a stored identifier.
    pub fn from_id(id: &str) -> Option<Self> {
        match id {
            "opaque" => Some(TokenFormat::Opaque),
            "legacy-digits" => Some(TokenFormat::LegacyDigits),
            _ => None,
        }
    }
}

/// Prefix of opaque tokens.
pub const OPAQUE_TOKEN_PREFIX: &str = "mnt_";
/// Base32 characters after the prefix of an opaque token.
pub const OPAQUE_TOKEN_CHARS: usize = 26;

text_id!(
    /// What payroll keeps instead of a number: random, unrelated to the
    /// number, in one of two [`TokenFormat`]s. A legacy token's check digit
    /// never matches, so a token is never a number; but a mistyped number is
    /// a legacy token, so see the module docs before writing one down.
    Token
);

impl Token {
    /// Parses a token of either format.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        Self::format_of(text).map(|_| Self(text.to_owned())).ok_or(IdError::Token)
    }

    /// The token's format.
    pub fn format(&self) -> TokenFormat {
        Self::format_of(&self.0).expect("a parsed token has a format")
    }

    fn format_of(text: &str) -> Option<TokenFormat> {
        if let Some(rest) = text.strip_prefix(OPAQUE_TOKEN_PREFIX) {
            return (rest.len() == OPAQUE_TOKEN_CHARS && rest.bytes().all(is_base32_lower) && !contains_number(text))
                .then_some(TokenFormat::Opaque);
        }
        let digits: &[u8; DIGITS] = text.as_bytes().try_into().ok()?;
        (digits.iter().all(u8::is_ascii_digit) && !has_valid_check_digit(digits)).then_some(TokenFormat::LegacyDigits)
    }
}

fn is_base32_lower(byte: u8) -> bool {
    byte.is_ascii_lowercase() || (b'2'..=b'7').contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_are_lowercase_kebab_case_without_a_number() {
        for good in ["demo", "acme-corp", "a", "tenant-2026"] {
            assert_eq!(TenantId::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "621498320257",
            "a-621498320257",
            "t-2026-0131-100", // eleven digits joined by hyphens
            "",
            "Demo",
            "-x",
            "x-",
            "a_b",
            "a b",
            "株式会社",
            &"a".repeat(64),
        ] {
            assert_eq!(TenantId::parse(bad), Err(IdError::Tenant), "{bad}");
        }
    }

    #[test]
    fn one_person_spelled_with_other_punctuation_is_one_person() {
        let p = |text: &str| Principal::parse_recorded(text).unwrap();
        let requester = p("spiffe://td/tenant/acme/requester/sato.k");
        for same in ["spiffe://td/tenant/acme/approver/sato-k", "spiffe://td/tenant/acme/approver/satok", "Sato_K"] {
            assert!(requester.is_same_person(&p(same)), "{same}");
        }
        assert!(!requester.is_same_person(&p("spiffe://td/tenant/acme/approver/sato.ka")));
        assert_eq!(requester.person(), "sato.k");
        assert_eq!(requester.person_key(), "satok");
    }

    #[test]
    fn a_serial_has_one_spelling_and_never_reads_as_a_number() {
        let serial = CertificateSerial::parse("7f3a9cbe0d4e5fa1b2c3").unwrap();
        for same in [
            "7F3A9CBE0D4E5FA1B2C3",
            "7f:3a:9c:be:0d:4e:5f:a1:b2:c3",
            "007f3a9cbe0d4e5fa1b2c3",
            "serial=7F3A9CBE0D4E5FA1B2C3",
            " 0x7f3a9cbe0d4e5fa1b2c3\n",
        ] {
            assert_eq!(CertificateSerial::parse(same).unwrap(), serial, "{same}");
        }
        assert_eq!(CertificateSerial::parse("abc").unwrap().as_str(), "0abc");
        assert_eq!(CertificateSerial::from_bytes(&[0, 0x7f, 0x3a]).unwrap().as_str(), "7f3a");
        assert_eq!(CertificateSerial::parse(&"ab".repeat(20)).unwrap().as_str().len(), 40);
        for bad in [
            "",
            "xyz",
            "7f:3a9c",
            ":7f",
            "7f 3a",
            &"ab".repeat(21),
            "621498320257",      // a number, in hex it is still twelve digits
            "a62149832025b",     // eleven digits between letters
            "62:14:98:32:02:57", // digits joined by colons
            "６２１４９８３２０２５７",
        ] {
            assert_eq!(CertificateSerial::parse(bad), Err(IdError::CertificateSerial), "{bad}");
        }
        assert_eq!(CertificateSerial::from_bytes(&[0x62, 0x14, 0x98, 0x32, 0x02, 0x57]), None);
        assert_eq!(CertificateSerial::from_bytes(&[]), None);
        assert_eq!(CertificateSerial::from_bytes(&[1; 21]), None);
    }

    #[test]
    fn tokens_of_both_formats_parse_and_numbers_do_not() {
        let opaque = Token::parse("mnt_abcdefghijklmnopqrstuvwxyz").unwrap();
        assert_eq!(opaque.format(), TokenFormat::Opaque);
        let legacy = Token::parse("123456789019").unwrap();
        assert_eq!(legacy.format(), TokenFormat::LegacyDigits);
        for bad in [
            "123456789018",                   // a valid number
            "mnt_abcdefghijklmnopqrstuvwxy",  // 25 characters
            "mnt_ABCDEFGHIJKLMNOPQRSTUVWXYZ", // upper case
            "mnt_abcdefghijklmnopqrstuvwxy1", // 1 is not base32
            "mnt_abcdefghijklmnopqrstuvwxyz\n",
            "mnt_abcdefghijklmno23456723456", // eleven digits in a row could be a number
            "１２３４５６７８９０１９",
            "",
        ] {
            assert_eq!(Token::parse(bad), Err(IdError::Token), "{bad:?}");
        }
    }

    #[test]
    fn a_mistyped_number_is_a_legacy_token_so_tokens_are_never_quoted() {
        // 621498320257 with its check digit mistyped: a valid legacy token,
        // and still eleven digits of somebody's number.
        let mistyped = Token::parse("621498320258").unwrap();
        assert_eq!(mistyped.format(), TokenFormat::LegacyDigits);
        assert!(contains_number(mistyped.as_str()));
    }

    #[test]
    fn job_ids_and_principals_follow_their_grammars() {
        assert!(JobId::parse("job_abcdefghijklmnop").is_ok());
        for bad in [
            "job_abcdefghijklmno",
            "job_123456789018aaaa",
            "621498320257",
            "job_ABCDEFGHIJKLMNOP",
            "job_23456723456aaaaa", // eleven digits of the base32 alphabet in a row
        ] {
            assert_eq!(JobId::parse(bad), Err(IdError::JobId), "{bad}");
        }
        for good in ["payroll", "svc.payroll-01@acme.example", "A_b"] {
            assert!(Principal::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "has space", "x621498320257", "svc-6214.9832.025", "名前", "line\nbreak", &"a".repeat(129)] {
            assert_eq!(Principal::parse(bad), Err(IdError::Principal), "{bad:?}");
        }
    }

    #[test]
    fn request_ids_follow_their_grammar() {
        assert!(RequestId::parse("req_abcdefghijklmnopqrstuvwxyz").is_ok());
        for bad in [
            "",
            "req_abcdefghijklmnopqrstuvwxy",   // 25 characters
            "req_abcdefghijklmnopqrstuvwxyz2", // 27
            "req_ABCDEFGHIJKLMNOPQRSTUVWXYZ",
            "req_abcdefghijklmnopqrstuvwxy1", // 1 is not base32
            "req_abcdefghijklmno23456723456", // eleven digits in a row could be a number
            "mnt_abcdefghijklmnopqrstuvwxyz",
            "621498320257",
            "req_abcdefghijklmnopqrstuvwxyz\n",
        ] {
            assert_eq!(RequestId::parse(bad), Err(IdError::RequestId), "{bad:?}");
        }
    }

    #[test]
    fn refusals_never_repeat_the_input() {
        for error in [
            IdError::Tenant,
            IdError::Token,
            IdError::JobId,
            IdError::CollectionId,
            IdError::Principal,
            IdError::RequestId,
        ] {
            assert!(!error.to_string().contains("621498320257"));
        }
    }
}
