//! Collections: the employee types their number on the vault's own page, and
//! payroll only ever receives tokens.
//!
//! A `payroll` principal asks for a collection ([`CollectionRequest`]): its own
//! reference for the person, which numbers are asked for (the employee's and
//! each dependant's, by [`Relation`], never a name), the purposes the page
//! shows, and an expiry. The vault answers with a one-time [`LinkSecret`]. The
//! link reaches the employee by payroll's own channel; the page
//! (`mnvault::collect_page`) looks the collection up by a keyed hash of the
//! secret, and the submit tokenizes the numbers, marks the collection
//! submitted and appends its audit entry in one transaction.
//!
//! This module holds the rules: the grammars, the bounds of a request, and
//! [`Collection::state`], the one definition of a collection's state. How a
//! collection is stored and trusted is in `vault/collection.rs`.

use std::fmt;

use rand::Rng;
use zeroize::Zeroizing;

use crate::error::VaultError;
use crate::id::{CollectionId, Principal, TenantId, Token};
use crate::purpose::Purpose;
use crate::text::FreeText;

/// Letters of a link secret, `a` to `z`: 26³² is about 2¹⁵⁰, and a link of
/// letters alone can never hold a number, in a URL, a log or a QR code.
pub const LINK_SECRET_CHARS: usize = 32;

/// Most numbers one collection asks for: the employee and fifteen dependants
/// (the 扶養控除等申告書 has room for fewer).
pub const MAX_ASKED: usize = 16;

/// Shortest lifetime of a link, in milliseconds (one second: a link too
/// short to use harms nobody, and tests watch one expire).
pub const MIN_LIFETIME_MS: i64 = 1000;
/// Longest lifetime of a link, in milliseconds (thirty days).
pub const MAX_LIFETIME_MS: i64 = 30 * 24 * 60 * 60 * 1000;
/// Lifetime of a link when the request names none (seven days).
pub const DEFAULT_LIFETIME_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// Most collections one `WatchCollections` or listing names.
pub const MAX_WATCHED: usize = 100;

/// Most characters of payroll's reference for the person.
pub const MAX_REFERENCE_CHARS: usize = 128;

/// The secret part of a collection's link: whoever holds it may submit the
/// numbers once. Kept in a zeroizing buffer; `Debug` never shows it.
#[derive(Clone)]
pub struct LinkSecret(Zeroizing<String>);

impl LinkSecret {
    /// Draws a fresh secret from the operating system's generator.
    pub fn draw() -> Self {
        let mut rng = rand::rngs::OsRng;
        let text: String = (0..LINK_SECRET_CHARS).map(|_| char::from(b'a' + rng.gen_range(0..26u8))).collect();
        Self(Zeroizing::new(text))
    }

    /// Parses a secret as it appears in a link: exactly
    /// [`LINK_SECRET_CHARS`] lowercase ASCII letters. `None` for anything
    /// else, without saying why: a prober learns nothing from the refusal.
    pub fn parse(text: &str) -> Option<Self> {
        (text.len() == LINK_SECRET_CHARS && text.bytes().all(|b| b.is_ascii_lowercase()))
            .then(|| Self(Zeroizing::new(text.to_owned())))
    }

    /// The secret's letters, for the link and the keyed hash only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LinkSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkSecret(..)")
    }
}

/// Whose number a collection asks for: the employee or a dependant, named by
/// relation only. Identifiers are stored and audited: never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Relation {
    /// The employee (本人).
    Employee,
    /// 配偶者.
    Spouse,
    /// 子.
    Child,
    /// 父母.
    Parent,
    /// 祖父母.
    Grandparent,
    /// 孫.
    Grandchild,
    /// 兄弟姉妹.
    Sibling,
    /// Any other dependant (扶養親族).
    Dependant,
}

impl Relation {
    /// Every relation, in the order pages and help list them.
    pub const ALL: [Relation; 8] = [
        Relation::Employee,
        Relation::Spouse,
        Relation::Child,
        Relation::Parent,
        Relation::Grandparent,
        Relation::Grandchild,
        Relation::Sibling,
        Relation::Dependant,
    ];

    /// Stable identifier.
    pub fn id(self) -> &'static str {
        match self {
            Relation::Employee => "employee",
            Relation::Spouse => "spouse",
            Relation::Child => "child",
            Relation::Parent => "parent",
            Relation::Grandparent => "grandparent",
            Relation::Grandchild => "grandchild",
            Relation::Sibling => "sibling",
            Relation::Dependant => "dependant",
        }
    }

    /// The label in Japanese, as the page shows it.
    pub fn name_ja(self) -> &'static str {
        match self {
            Relation::Employee => "ご本人",
            Relation::Spouse => "配偶者",
            Relation::Child => "お子さま",
            Relation::Parent => "父母",
            Relation::Grandparent => "祖父母",
            Relation::Grandchild => "お孫さま",
            Relation::Sibling => "兄弟姉妹",
            Relation::Dependant => "扶養親族",
        }
    }

    /// The label in English.
    pub fn name_en(self) -> &'static str {
        match self {
            Relation::Employee => "You",
            Relation::Spouse => "Spouse",
            Relation::Child => "Child",
            Relation::Parent => "Parent",
            Relation::Grandparent => "Grandparent",
            Relation::Grandchild => "Grandchild",
            Relation::Sibling => "Sibling",
            Relation::Dependant => "Dependant",
        }
    }

    /// Parses an identifier; the error lists the vocabulary.
    pub fn parse(text: &str) -> Result<Self, VaultError> {
        Self::ALL.into_iter().find(|r| r.id() == text).ok_or_else(|| {
            let ids: Vec<&str> = Self::ALL.iter().map(|r| r.id()).collect();
            VaultError::InvalidArgument(format!(
                "a relation is not known: use one of {} (a relation, never a name)",
                ids.join(", ")
            ))
        })
    }
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// What payroll asks for, parsed.
#[derive(Debug, Clone)]
pub struct CollectionRequest {
    /// Payroll's own reference for the person, opaque to the vault.
    pub reference: FreeText,
    /// Whose numbers, in the order the page asks for them.
    pub asked: Vec<Relation>,
    /// Why the numbers are collected, as the page shows it.
    pub purposes: Vec<Purpose>,
    /// Lifetime of the link in milliseconds; `None` for the default.
    pub lifetime_ms: Option<i64>,
    /// A re-issue: the token whose number the municipality replaced. The
    /// number typed goes under it; the old one stays, under a token of its
    /// own, until its retention ends.
    pub reissue: Option<Token>,
}

/// A request's checked terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionTerms {
    /// Whose numbers.
    pub asked: Vec<Relation>,
    /// Why, without repeats, in the order given.
    pub purposes: Vec<Purpose>,
    /// Lifetime in milliseconds.
    pub lifetime_ms: i64,
}

impl CollectionRequest {
    /// Checks the request's bounds.
    pub fn terms(&self) -> Result<CollectionTerms, VaultError> {
        if self.reference.as_str().trim().is_empty() {
            return Err(VaultError::InvalidArgument(
                "a collection needs payroll's reference for the person (an employee code, say; never a number)".into(),
            ));
        }
        if self.reference.as_str().chars().count() > MAX_REFERENCE_CHARS {
            return Err(VaultError::InvalidArgument(format!(
                "the reference is longer than {MAX_REFERENCE_CHARS} characters"
            )));
        }
        if self.asked.is_empty() || self.asked.len() > MAX_ASKED {
            return Err(VaultError::InvalidArgument(format!(
                "a collection asks for 1 to {MAX_ASKED} numbers; this one asks for {}",
                self.asked.len()
            )));
        }
        if self.reissue.is_some() && self.asked.len() != 1 {
            return Err(VaultError::InvalidArgument(format!(
                "a re-issue collection asks for exactly one number, the one that replaces the token's; this one \
                 asks for {}",
                self.asked.len()
            )));
        }
        if self.asked.iter().filter(|r| **r == Relation::Employee).count() > 1 {
            return Err(VaultError::InvalidArgument(
                "a collection asks for the employee's own number at most once".into(),
            ));
        }
        let mut purposes = Vec::new();
        for purpose in &self.purposes {
            if *purpose == Purpose::TenantExport {
                return Err(VaultError::InvalidArgument(
                    "tenant-export is not a reason to collect a number; name the filings it is for".into(),
                ));
            }
            if !purposes.contains(purpose) {
                purposes.push(*purpose);
            }
        }
        if purposes.is_empty() {
            return Err(VaultError::InvalidArgument(
                "a collection names at least one purpose: the page tells the employee why the number is collected"
                    .into(),
            ));
        }
        let lifetime_ms = self.lifetime_ms.unwrap_or(DEFAULT_LIFETIME_MS);
        if !(MIN_LIFETIME_MS..=MAX_LIFETIME_MS).contains(&lifetime_ms) {
            return Err(VaultError::InvalidArgument(
                "a link lives from one second to thirty days; name a lifetime in that range".into(),
            ));
        }
        Ok(CollectionTerms { asked: self.asked.clone(), purposes, lifetime_ms })
    }
}

/// A collection's state at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectionState {
    /// Waiting for the employee.
    Open,
    /// The numbers were submitted; the tokens are known.
    Submitted,
    /// Payroll cancelled it.
    Cancelled,
    /// It was not submitted before its expiry.
    Expired,
}

impl CollectionState {
    /// Stable identifier, stored and shown.
    pub fn id(self) -> &'static str {
        match self {
            CollectionState::Open => "open",
            CollectionState::Submitted => "submitted",
            CollectionState::Cancelled => "cancelled",
            CollectionState::Expired => "expired",
        }
    }

    /// Parses a stored identifier.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Open, Self::Submitted, Self::Cancelled, Self::Expired].into_iter().find(|s| s.id() == text)
    }

    /// Whether nothing can change it any more.
    pub fn is_final(self) -> bool {
        self != CollectionState::Open
    }
}

/// A collection, parsed from a row whose tag verified.
#[derive(Debug, Clone)]
pub struct Collection {
    /// Identifier.
    pub id: CollectionId,
    /// Tenant whose records the numbers become.
    pub tenant: TenantId,
    /// Payroll's reference.
    pub reference: FreeText,
    /// Whose numbers.
    pub asked: Vec<Relation>,
    /// Why.
    pub purposes: Vec<Purpose>,
    /// Who asked for it.
    pub created_by: Principal,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds after which the link no longer works.
    pub expires_at: i64,
    /// The state as stored (an open one may have expired since).
    pub stored_state: CollectionState,
    /// When the stored state was reached (creation, for an open one).
    pub settled_at: i64,
    /// One token per number asked for, once submitted.
    pub tokens: Vec<Token>,
    /// A re-issue's token and, once submitted, where the old number went.
    pub reissue: Option<Reissue>,
}

/// A re-issue collection: the number typed replaces `token`'s, which keeps
/// its token; the old number stays in the vault under `superseded`, released
/// only by a job that names that token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reissue {
    /// The token whose number is replaced.
    pub token: Token,
    /// The token the replaced number is kept under, once submitted.
    pub superseded: Option<Token>,
}

impl Collection {
    /// The one definition of a collection's state at `now`.
    pub fn state(&self, now: i64) -> CollectionState {
        match self.stored_state {
            CollectionState::Open if now >= self.expires_at => CollectionState::Expired,
            state => state,
        }
    }

    /// Whether `caller` may cancel it now: it must still be open.
    pub fn check_cancel(&self, now: i64) -> Result<(), VaultError> {
        match self.state(now) {
            CollectionState::Open => Ok(()),
            state => Err(VaultError::FailedPrecondition(format!(
                "collection {} is {} and can no longer be cancelled",
                self.id,
                state.id()
            ))),
        }
    }
}

/// What the page may show about a collection: no reference, no token.
#[derive(Debug, Clone)]
pub struct CollectionForm {
    /// The company: the tenant's display name.
    pub company: FreeText,
    /// Whose numbers, in order.
    pub asked: Vec<Relation>,
    /// Why.
    pub purposes: Vec<Purpose>,
    /// Unix milliseconds.
    pub expires_at: i64,
    /// Whether the number asked for replaces one the vault holds (the page
    /// asks for the new number).
    pub reissue: bool,
}

/// Why a link cannot be used. Unknown and used links read the same, so a
/// guess learns nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnusableLink {
    /// No collection has this link, or its numbers were already submitted.
    UnknownOrUsed,
    /// The link's collection expired before anything was submitted.
    Expired,
    /// Payroll cancelled the collection.
    Cancelled,
}

/// What the page learns from opening a link.
#[derive(Debug, Clone)]
pub enum LinkOutcome {
    /// The collection waits for these numbers.
    Open(CollectionForm),
    /// The link does not work.
    Unusable(UnusableLink),
}

/// What the page learns from a submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// Stored: this many numbers.
    Submitted {
        /// How many numbers were stored.
        numbers: usize,
    },
    /// The link does not work (any more).
    Unusable(UnusableLink),
}

/// Which link state an unusable collection shows.
pub fn unusable(state: CollectionState) -> Option<UnusableLink> {
    match state {
        CollectionState::Open => None,
        CollectionState::Submitted => Some(UnusableLink::UnknownOrUsed),
        CollectionState::Expired => Some(UnusableLink::Expired),
        CollectionState::Cancelled => Some(UnusableLink::Cancelled),
    }
}

/// Fills the audit entry of a fetch with what it hands out: each
/// collection's id and state, and the tokens of the submitted ones (a
/// re-issue's superseded token too).
pub fn note_fetched(draft: &mut crate::audit::AuditDraft, collections: &[Collection], now: i64) {
    let superseded = |c: &Collection| c.reissue.as_ref().and_then(|r| r.superseded.clone());
    draft.tokens = collections.iter().flat_map(|c| c.tokens.iter().cloned().chain(superseded(c))).collect();
    draft.record_count = draft.tokens.len() as u64;
    let names: Vec<String> = collections.iter().map(|c| entry_reason(&c.id, c.state(now).id())).collect();
    draft.reason = names.join(", ");
}

/// The operations whose allowed entries change a collection; the rollback
/// check reads the last of them for each collection.
pub const COLLECTION_CHANGES: [crate::audit::Operation; 4] = [
    crate::audit::Operation::CreateCollection,
    crate::audit::Operation::SubmitCollection,
    crate::audit::Operation::CancelCollection,
    crate::audit::Operation::ExpireCollection,
];

/// The reason of an entry about collection `id`: the one form
/// [`collection_of_reason`] reads back.
pub fn entry_reason(id: &CollectionId, what: &str) -> String {
    format!("collection {id} {what}")
}

/// The collection an entry's reason names, in [`entry_reason`]'s form.
pub fn collection_of_reason(reason: &str) -> Option<CollectionId> {
    let id = reason.strip_prefix("collection ")?.split(' ').next()?;
    CollectionId::parse(id).ok()
}

/// The one stored form of a list of relations: identifiers joined by commas.
pub fn encode_relations(asked: &[Relation]) -> String {
    asked.iter().map(|r| r.id()).collect::<Vec<_>>().join(",")
}

/// Reads [`encode_relations`]' form back.
pub fn decode_relations(text: &str) -> Option<Vec<Relation>> {
    text.split(',').map(|id| Relation::ALL.into_iter().find(|r| r.id() == id)).collect()
}

/// The one stored form of a list of purposes.
pub fn encode_purposes(purposes: &[Purpose]) -> String {
    purposes.iter().map(|p| p.id()).collect::<Vec<_>>().join(",")
}

/// Reads [`encode_purposes`]' form back.
pub fn decode_purposes(text: &str) -> Option<Vec<Purpose>> {
    text.split(',').map(|id| id.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::number::contains_number;

    fn request(asked: Vec<Relation>, lifetime_ms: Option<i64>) -> CollectionRequest {
        CollectionRequest {
            reference: FreeText::parse("emp-abc", "reference").unwrap(),
            asked,
            purposes: vec![Purpose::WithholdingSlip, Purpose::WithholdingSlip],
            lifetime_ms,
            reissue: None,
        }
    }

    #[test]
    fn secrets_are_letters_with_no_number_and_parse_back() {
        let (a, b) = (LinkSecret::draw(), LinkSecret::draw());
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), LINK_SECRET_CHARS);
        assert!(!contains_number(a.expose()));
        assert_eq!(LinkSecret::parse(a.expose()).unwrap().expose(), a.expose());
        assert!(format!("{a:?}").find(a.expose()).is_none());
        for bad in ["", "abc", &"A".repeat(LINK_SECRET_CHARS), &format!("{}1", "a".repeat(LINK_SECRET_CHARS - 1))] {
            assert!(LinkSecret::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn terms_bound_the_request() {
        let terms = request(vec![Relation::Employee, Relation::Child], None).terms().unwrap();
        assert_eq!(terms.purposes, vec![Purpose::WithholdingSlip], "repeats dropped");
        assert_eq!(terms.lifetime_ms, DEFAULT_LIFETIME_MS);
        assert!(request(vec![], None).terms().is_err());
        assert!(request(vec![Relation::Child; MAX_ASKED + 1], None).terms().is_err());
        assert!(request(vec![Relation::Employee, Relation::Employee], None).terms().is_err());
        assert!(request(vec![Relation::Employee], Some(MIN_LIFETIME_MS - 1)).terms().is_err());
        assert!(request(vec![Relation::Employee], Some(MAX_LIFETIME_MS + 1)).terms().is_err());
        let mut no_purpose = request(vec![Relation::Employee], None);
        no_purpose.purposes.clear();
        assert!(no_purpose.terms().is_err());
        let mut export = request(vec![Relation::Employee], None);
        export.purposes = vec![Purpose::TenantExport];
        assert!(export.terms().is_err());
        let reissue = Some(Token::parse("mnt_abcdefghijklmnopqrstuvwxyz").unwrap());
        let one = CollectionRequest { reissue: reissue.clone(), ..request(vec![Relation::Spouse], None) };
        assert_eq!(one.terms().unwrap().asked, vec![Relation::Spouse], "a re-issue asks for one number");
        let two = CollectionRequest { reissue, ..request(vec![Relation::Employee, Relation::Child], None) };
        assert!(two.terms().is_err(), "and never more");
    }

    #[test]
    fn an_open_collection_expires_at_its_time() {
        let collection = Collection {
            id: CollectionId::parse("col_abcdefghijklmnop").unwrap(),
            tenant: TenantId::parse("acme").unwrap(),
            reference: FreeText::parse("emp-abc", "reference").unwrap(),
            asked: vec![Relation::Employee],
            purposes: vec![Purpose::WithholdingSlip],
            created_by: Principal::parse("payroll").unwrap(),
            created_at: 0,
            expires_at: 100,
            stored_state: CollectionState::Open,
            settled_at: 0,
            tokens: vec![],
            reissue: None,
        };
        assert_eq!(collection.state(99), CollectionState::Open);
        assert_eq!(collection.state(100), CollectionState::Expired);
        assert!(collection.check_cancel(99).is_ok());
        assert!(collection.check_cancel(100).is_err());
        let submitted = Collection { stored_state: CollectionState::Submitted, ..collection };
        assert_eq!(submitted.state(1_000), CollectionState::Submitted, "a submitted collection never expires");
    }

    #[test]
    fn stored_forms_read_back() {
        let asked = Relation::ALL.to_vec();
        assert_eq!(decode_relations(&encode_relations(&asked)), Some(asked));
        assert_eq!(decode_relations("employee,stranger"), None);
        let purposes = vec![Purpose::WithholdingSlip, Purpose::DependentDeductionDeclaration];
        assert_eq!(decode_purposes(&encode_purposes(&purposes)), Some(purposes));
        for state in
            [CollectionState::Open, CollectionState::Submitted, CollectionState::Cancelled, CollectionState::Expired]
        {
            assert_eq!(CollectionState::parse(state.id()), Some(state));
        }
    }
}
