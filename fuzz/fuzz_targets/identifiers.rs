//! Parsing of the identifiers callers send: `Token`, `TenantId`, `JobId`,
//! `Principal`, `RequestId`, and the closed sets `Purpose` and `TokenFormat`.
//!
//! Invariants:
//! - what parses round-trips: `as_str`, `Display` and `FromStr` give back the
//!   input, and parsing that again gives an equal value;
//! - what parses follows its grammar and holds nothing `contains_number`
//!   finds, but for legacy tokens (twelve digits by design); a token is never
//!   a number (`MyNumber::parse` refuses every token);
//! - a refusal's message is the same whatever the input (so it cannot repeat
//!   it) and holds no number;
//! - values built to the grammar from the fuzzer's bytes parse unless they
//!   hold a number.
#![no_main]

use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use mnvault_core::id::{IdError, JobId, Principal, RequestId, TenantId, Token, TokenFormat};
use mnvault_core::number::{check_digit, contains_number, MyNumber};
use mnvault_core::purpose::Purpose;

const BASE32_LOWER: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Round trip and refusal checks shared by the identifier types.
fn check<T>(text: &str, parse: fn(&str) -> Result<T, IdError>, as_str: fn(&T) -> &str, constant_refusal: &str) -> bool
where
    T: FromStr<Err = IdError> + PartialEq + std::fmt::Debug + std::fmt::Display,
{
    match parse(text) {
        Ok(value) => {
            assert_eq!(as_str(&value), text);
            assert_eq!(value.to_string(), text);
            assert_eq!(parse(as_str(&value)).unwrap(), value);
            assert_eq!(T::from_str(text).unwrap(), value);
            true
        }
        Err(error) => {
            let message = error.to_string();
            assert_eq!(message, constant_refusal, "the refusal depends on the input");
            assert!(!contains_number(&message));
            assert_eq!(T::from_str(text).unwrap_err(), error);
            false
        }
    }
}

fn check_text(text: &str) {
    let refusal = |e: IdError| e.to_string();

    if check(text, TenantId::parse, TenantId::as_str, &refusal(IdError::Tenant)) {
        assert!(!contains_number(text), "a tenant that parsed holds a number");
        assert!((1..=63).contains(&text.len()));
        assert!(text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        assert!(text.starts_with(|c: char| c.is_ascii_lowercase()) && !text.ends_with('-'));
    }
    if check(text, JobId::parse, JobId::as_str, &refusal(IdError::JobId)) {
        assert!(!contains_number(text), "a job id that parsed holds a number");
        let rest = text.strip_prefix("job_").expect("job_ prefix");
        assert_eq!(rest.len(), 16);
        assert!(rest.bytes().all(|b| BASE32_LOWER.contains(&b)));
    }
    if check(text, RequestId::parse, RequestId::as_str, &refusal(IdError::RequestId)) {
        assert!(!contains_number(text), "a request id that parsed holds a number");
        let rest = text.strip_prefix("req_").expect("req_ prefix");
        assert_eq!(rest.len(), 26);
        assert!(rest.bytes().all(|b| BASE32_LOWER.contains(&b)));
    }
    if check(text, Principal::parse, Principal::as_str, &refusal(IdError::Principal)) {
        assert!(!contains_number(text), "a principal that parsed holds a number");
        assert!((1..=128).contains(&text.len()));
        assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b)));
    }
    if check(text, Token::parse, Token::as_str, &refusal(IdError::Token)) {
        let token = Token::parse(text).unwrap();
        assert!(MyNumber::parse(text).is_err(), "a token parses as a My Number");
        match token.format() {
            TokenFormat::Opaque => {
                assert!(!contains_number(text), "an opaque token that parsed holds a number");
                let rest = text.strip_prefix("mnt_").expect("mnt_ prefix");
                assert_eq!(rest.len(), 26);
                assert!(rest.bytes().all(|b| BASE32_LOWER.contains(&b)));
            }
            TokenFormat::LegacyDigits => {
                // Twelve digits by design (id.rs: the one exception to "no
                // number in an identifier"), but never with a valid check digit.
                assert_eq!(text.len(), 12);
                assert!(text.bytes().all(|b| b.is_ascii_digit()));
            }
        }
    }

    if let Ok(purpose) = text.parse::<Purpose>() {
        assert_eq!(purpose.id(), text);
        assert!(Purpose::ALL.contains(&purpose));
    }
    if let Some(format) = TokenFormat::from_id(text) {
        assert_eq!(format.id(), text);
    }
}

/// Identifiers built to their grammar from arbitrary bytes must parse.
fn check_built(data: &[u8]) {
    let base32 = |n: usize| -> String {
        (0..n).map(|i| BASE32_LOWER[usize::from(data.get(i).copied().unwrap_or(0)) % 32] as char).collect()
    };
    // The grammars leave out what `contains_number` finds (eleven digits of
    // the base32 alphabet in a row): built values parse exactly when clean.
    let opaque = format!("mnt_{}", base32(26));
    match Token::parse(&opaque) {
        Ok(token) => assert_eq!(token.format(), TokenFormat::Opaque),
        Err(_) => assert!(contains_number(&opaque), "a clean opaque token was refused"),
    }
    let job = format!("job_{}", base32(16));
    match JobId::parse(&job) {
        Ok(id) => assert_eq!(id.as_str(), job),
        Err(_) => assert!(contains_number(&job), "a clean job id was refused"),
    }
    let request = format!("req_{}", base32(26));
    match RequestId::parse(&request) {
        Ok(id) => assert_eq!(id.as_str(), request),
        Err(_) => assert!(contains_number(&request), "a clean request id was refused"),
    }

    // A legacy token: eleven digits and a check digit that does not match.
    let mut digits = [0u8; 12];
    for (i, slot) in digits[..11].iter_mut().enumerate() {
        *slot = b'0' + data.get(i).copied().unwrap_or(0) % 10;
    }
    let first: [u8; 11] = digits[..11].try_into().unwrap();
    let right = check_digit(&first);
    let offset = 1 + data.get(11).copied().unwrap_or(0) % 9;
    digits[11] = b'0' + (right + offset) % 10;
    let legacy = std::str::from_utf8(&digits).unwrap();
    assert_eq!(Token::parse(legacy).unwrap().format(), TokenFormat::LegacyDigits);
    // With the right check digit it is a number, and no identifier takes it.
    digits[11] = b'0' + right;
    let number = std::str::from_utf8(&digits).unwrap();
    assert!(MyNumber::parse(number).is_ok());
    assert!(Token::parse(number).is_err());
    assert!(TenantId::parse(&format!("t{number}")).is_err());
    assert!(Principal::parse(&format!("svc.{number}@x")).is_err());
}

fuzz_target!(|data: &[u8]| {
    check_built(data);
    if let Ok(text) = std::str::from_utf8(data) {
        check_text(text);
    } else {
        check_text(&String::from_utf8_lossy(data));
    }
});
