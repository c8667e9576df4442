//! Properties of the parsers, over generated inputs. Valid My Numbers are
//! generated from the check-digit rule (総務省令 平成26年第85号 第5条),
//! recomputed here from its text rather than taken from the crate.

use mnvault_core::id::{JobId, Principal, TenantId, Token, TokenFormat};
use mnvault_core::mint::{draw_job_id, draw_token};
use mnvault_core::number::{contains_number, redact_numbers, MyNumber, NumberError, REDACTED};
use mnvault_core::text::FreeText;
use proptest::prelude::*;

/// The check digit of eleven digit values, from the ordinance: P_n is the
/// n-th digit counted from the right, Q_n = n + 1 for n ≤ 6 and n − 5 above.
fn spec_check_digit(first_eleven: &[u8; 11]) -> u8 {
    let sum: u32 = (1..=11usize)
        .map(|n| {
            let q = if n <= 6 { n + 1 } else { n - 5 };
            u32::from(first_eleven[11 - n]) * q as u32
        })
        .sum();
    match sum % 11 {
        0 | 1 => 0,
        r => (11 - r) as u8,
    }
}

/// Twelve ASCII digits, given the first eleven and the last.
fn digits_text(first_eleven: &[u8; 11], last: u8) -> String {
    first_eleven.iter().chain([&last]).map(|d| char::from(b'0' + d)).collect()
}

/// A valid number: eleven random digits and their check digit.
fn valid_number() -> impl Strategy<Value = String> {
    proptest::array::uniform11(0u8..10).prop_map(|first| digits_text(&first, spec_check_digit(&first)))
}

/// The separators people type (`number.rs`).
const SEPARATORS: [char; 6] = ['-', '－', '‐', '−', ' ', '\u{3000}'];

/// `number` as people type it: some digits full-width, separators between
/// some of them and around the whole.
fn typed(number: String) -> impl Strategy<Value = String> {
    let n = number.len();
    (
        proptest::collection::vec(any::<bool>(), n),
        proptest::collection::vec(proptest::option::weighted(0.3, proptest::sample::select(&SEPARATORS[..])), n + 1),
    )
        .prop_map(move |(full_width, separators)| {
            let mut text = String::new();
            for (i, digit) in number.chars().enumerate() {
                if let Some(separator) = separators[i] {
                    text.push(separator);
                }
                text.push(if full_width[i] {
                    char::from_u32(digit as u32 - '0' as u32 + 0xFF10).unwrap()
                } else {
                    digit
                });
            }
            if let Some(separator) = separators[n] {
                text.push(separator);
            }
            text
        })
}

fn typed_valid_number() -> impl Strategy<Value = (String, String)> {
    valid_number().prop_flat_map(|number| (Just(number.clone()), typed(number)))
}

/// Words with no digit in any script (kana and Latin letters only).
fn word() -> impl Strategy<Value = String> {
    "[a-zA-Zぁ-ん]{1,12}"
}

proptest! {
    #[test]
    fn every_valid_number_parses_and_renders_back((number, typed) in typed_valid_number()) {
        let parsed = MyNumber::parse(&typed).unwrap();
        prop_assert_eq!(parsed.expose_digits(), number.as_str());
        let again = MyNumber::parse(parsed.expose_digits()).unwrap();
        prop_assert_eq!(again.expose_bytes(), parsed.expose_bytes());
        let debug = format!("{parsed:?}");
        prop_assert!(!debug.contains(&number));
    }

    #[test]
    fn a_wrong_check_digit_never_parses(first in proptest::array::uniform11(0u8..10), offset in 1u8..10) {
        let wrong = (spec_check_digit(&first) + offset) % 10;
        let text = digits_text(&first, wrong);
        prop_assert_eq!(MyNumber::parse(&text).unwrap_err(), NumberError::CheckDigitMismatch);
        // Such twelve digits are exactly the legacy token format.
        prop_assert_eq!(Token::parse(&text).unwrap().format(), TokenFormat::LegacyDigits);
    }

    #[test]
    fn a_typed_number_with_a_wrong_check_digit_never_parses(
        typed in proptest::array::uniform11(0u8..10)
            .prop_flat_map(|first| (Just(first), 1u8..10))
            .prop_flat_map(|(first, offset)| typed(digits_text(&first, (spec_check_digit(&first) + offset) % 10))),
    ) {
        prop_assert_eq!(MyNumber::parse(&typed).unwrap_err(), NumberError::CheckDigitMismatch);
    }

    #[test]
    fn a_letter_anywhere_is_named_at_its_position(
        number in valid_number(),
        at in 0usize..=12,
        letter in "[a-zA-Z.,_/]",
    ) {
        let mut text = number.clone();
        text.insert_str(at, &letter);
        let character = letter.chars().next().unwrap();
        prop_assert_eq!(MyNumber::parse(&text).unwrap_err(), NumberError::NotADigit { character, position: at + 1 });
        prop_assert!(!MyNumber::parse(&text).unwrap_err().to_string().contains(&number[..11]));
    }

    #[test]
    fn a_valid_number_is_no_token_tenant_job_or_principal(number in valid_number()) {
        let (tenant, job, principal) = (format!("t-{number}"), format!("job_{number}aaaa"), format!("svc.{number}@x"));
        prop_assert!(Token::parse(&number).is_err());
        prop_assert!(TenantId::parse(&tenant).is_err());
        prop_assert!(JobId::parse(&job).is_err());
        prop_assert!(Principal::parse(&principal).is_err());
    }

    #[test]
    fn redact_numbers_removes_every_generated_number(
        words in proptest::collection::vec(word(), 1..6),
        numbers in proptest::collection::vec(typed_valid_number(), 1..4),
    ) {
        // word number word number ... word
        let mut text = String::new();
        let mut expected = String::new();
        for (i, word) in words.iter().enumerate() {
            text.push_str(word);
            expected.push_str(word);
            if let Some((_, typed)) = numbers.get(i) {
                text.push_str(&format!(" {typed} "));
                expected.push_str(&format!(" {REDACTED} "));
            }
        }
        prop_assert!(contains_number(&text));
        let redacted = redact_numbers(&text);
        prop_assert!(!contains_number(&redacted), "a number survived: {redacted}");
        for (number, _) in &numbers {
            prop_assert!(!redacted.contains(number.as_str()));
        }
        // Every word stays, in order, and nothing else changes. Separators
        // typed at a number's edge may stay with the words or go with the number.
        let squeeze = |s: &str| s.chars().filter(|c| !SEPARATORS.contains(c)).collect::<String>();
        prop_assert_eq!(squeeze(&redacted), squeeze(&expected));
        // Free text holding any of them is refused.
        prop_assert!(FreeText::parse(&text, "note").is_err());
    }

    #[test]
    fn text_without_digits_is_left_alone(words in proptest::collection::vec(word(), 0..8)) {
        let text = words.join(" ");
        prop_assert!(!contains_number(&text));
        prop_assert_eq!(redact_numbers(&text), text.as_str());
        let free = FreeText::parse(&text, "note").unwrap();
        prop_assert_eq!(free.as_str(), text.as_str());
    }

    /// Drawn tokens and job ids parse back to themselves.
    #[test]
    fn minted_identifiers_round_trip(legacy in any::<bool>()) {
        let format = if legacy { TokenFormat::LegacyDigits } else { TokenFormat::Opaque };
        let token = draw_token(format);
        prop_assert_eq!(token.format(), format);
        prop_assert_eq!(Token::parse(token.as_str()).unwrap(), token.clone());
        prop_assert!(MyNumber::parse(token.as_str()).is_err());
        let job = draw_job_id();
        let shown = job.to_string();
        prop_assert_eq!(JobId::parse(&shown).unwrap(), job);
    }

    /// Values built to each grammar parse exactly when they hold no number,
    /// and then round-trip through `as_str`, `Display` and `FromStr`.
    #[test]
    fn grammar_built_identifiers_round_trip(
        opaque in "mnt_[a-z2-7]{26}",
        job in "job_[a-z2-7]{16}",
        tenant in "[a-z]([a-z0-9-]{0,61}[a-z0-9])?",
        principal in "[A-Za-z0-9._@-]{1,128}",
    ) {
        let clean = |text: &str| !contains_number(text);
        match Token::parse(&opaque) {
            Ok(token) => {
                prop_assert!(clean(&opaque));
                prop_assert_eq!(token.format(), TokenFormat::Opaque);
                prop_assert_eq!(token.as_str(), opaque.as_str());
                prop_assert_eq!(opaque.parse::<Token>().unwrap(), token);
            }
            Err(_) => prop_assert!(!clean(&opaque)),
        }
        match JobId::parse(&job) {
            Ok(id) => {
                prop_assert!(clean(&job));
                prop_assert_eq!(id.to_string(), job.clone());
                prop_assert_eq!(job.parse::<JobId>().unwrap(), id);
            }
            Err(_) => prop_assert!(!clean(&job)),
        }
        match TenantId::parse(&tenant) {
            Ok(id) => {
                prop_assert!(clean(&tenant));
                prop_assert_eq!(id.as_str(), tenant.as_str());
                prop_assert_eq!(tenant.parse::<TenantId>().unwrap(), id);
            }
            Err(_) => prop_assert!(!clean(&tenant)),
        }
        match Principal::parse(&principal) {
            Ok(id) => {
                prop_assert!(clean(&principal));
                prop_assert_eq!(id.as_str(), principal.as_str());
                prop_assert_eq!(principal.parse::<Principal>().unwrap(), id);
            }
            Err(_) => prop_assert!(!clean(&principal)),
        }
    }

    /// Whatever the text, what parses round-trips and a refusal never repeats it.
    #[test]
    fn any_text_round_trips_or_is_refused_without_being_repeated(text in any::<String>()) {
        fn check<T, E>(text: &str, parse: fn(&str) -> Result<T, E>, as_str: fn(&T) -> &str) -> Result<(), TestCaseError>
        where
            T: PartialEq + std::fmt::Debug,
            E: std::fmt::Display,
        {
            match parse(text) {
                Ok(value) => {
                    prop_assert_eq!(as_str(&value), text);
                    prop_assert_eq!(parse(as_str(&value)).ok(), Some(value));
                }
                Err(error) => {
                    let message = error.to_string();
                    prop_assert!(text.len() < 4 || !message.contains(text), "refusal repeats {:?}", text);
                }
            }
            Ok(())
        }
        check(&text, Token::parse, Token::as_str)?;
        check(&text, TenantId::parse, TenantId::as_str)?;
        check(&text, JobId::parse, JobId::as_str)?;
        check(&text, Principal::parse, Principal::as_str)?;
    }
}
