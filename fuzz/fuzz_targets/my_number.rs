//! My Number parsing, the check digit, and finding numbers inside text.
//!
//! Invariants, not just "does not panic":
//! - what parses is twelve ASCII digits with a valid check digit, and they are
//!   the input's digits in order (full-width mapped to ASCII); the input holds
//!   nothing but digits and accepted separators;
//! - a refusal is the right one (wrong length with the right count, the first
//!   bad character at its 1-based position, or a check digit that really does
//!   not match), and its message holds no number;
//! - `check_digit` agrees with the rule of 総務省令 平成26年第85号 第5条,
//!   recomputed here independently;
//! - `contains_number` finds at least every number a naive scan finds
//!   (twelve digits, accepted separators, valid check digit), and
//!   `redact_numbers` leaves nothing `contains_number` finds, changes nothing
//!   in text where it finds nothing, and keeps every letter around a number.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mnvault_core::number::{
    check_digit, contains_number, has_valid_check_digit, is_number_character, redact_numbers, MyNumber, NumberError,
    REDACTED,
};

/// Separators the parser accepts (module docs of `number.rs`).
const SEPARATORS: [char; 6] = ['-', '－', '‐', '−', ' ', '\u{3000}'];

/// The value of an ASCII or full-width digit.
fn digit(c: char) -> Option<u8> {
    match c {
        '0'..='9' => Some(c as u8 - b'0'),
        '０'..='９' => Some((c as u32 - '０' as u32) as u8),
        _ => None,
    }
}

/// The check digit as the ordinance states it, written from the text of the rule.
fn spec_check_digit(first_eleven: &[u8]) -> u8 {
    // P_n is counted from the right: P_1 is the digit just before the check digit.
    let sum: u32 = (1..=11u32)
        .map(|n| {
            let p = u32::from(first_eleven[11 - n as usize]);
            let q = if n <= 6 { n + 1 } else { n - 5 };
            p * q
        })
        .sum();
    let r = sum % 11;
    if r <= 1 {
        0
    } else {
        (11 - r) as u8
    }
}

/// Whether some twelve consecutive ASCII or full-width digits, only the
/// accepted separators between them, carry a valid check digit: a number as
/// people type it. `contains_number` may find more (other scripts, other
/// joiners, eleven digits), never less.
fn naive_contains_typed_number(text: &str) -> bool {
    let mut run: Vec<u8> = Vec::new();
    for c in text.chars() {
        if let Some(d) = digit(c) {
            run.push(d);
            if run.len() >= 12 {
                let window = &run[run.len() - 12..];
                if spec_check_digit(&window[..11]) == window[11] {
                    return true;
                }
            }
        } else if !SEPARATORS.contains(&c) {
            run.clear();
        }
    }
    false
}

fn check_parse(text: &str) {
    let digits: Vec<u8> = text.chars().filter_map(digit).collect();
    let first_bad = text.chars().enumerate().find(|(_, c)| digit(*c).is_none() && !SEPARATORS.contains(c));
    match MyNumber::parse(text) {
        Ok(number) => {
            let shown = number.expose_digits();
            assert_eq!(shown.len(), 12);
            assert!(shown.bytes().all(|b| b.is_ascii_digit()));
            assert!(has_valid_check_digit(number.expose_bytes()));
            assert!(first_bad.is_none(), "parsed despite a character that is not a digit");
            let expected: Vec<u8> = digits.iter().map(|d| b'0' + d).collect();
            assert_eq!(shown.as_bytes(), &expected[..], "parsed digits are not the input's digits");
            assert_eq!(spec_check_digit(&digits[..11]), digits[11]);
            assert!(contains_number(text), "a parsed number is not found in its own text");
            assert!(!format!("{number:?}").contains(shown), "Debug shows the digits");
            // Parsing the normalised form gives the same number.
            assert_eq!(MyNumber::parse(shown).unwrap().expose_bytes(), number.expose_bytes());
        }
        Err(error) => {
            match &error {
                NumberError::NotADigit { character, position } => {
                    let (index, bad) = first_bad.expect("NotADigit without a bad character");
                    assert_eq!((*character, *position), (bad, index + 1), "not the first bad character");
                }
                NumberError::WrongLength { digits: count } => {
                    assert!(first_bad.is_none());
                    assert_eq!(*count, digits.len());
                    assert_ne!(*count, 12);
                }
                NumberError::CheckDigitMismatch => {
                    assert!(first_bad.is_none());
                    assert_eq!(digits.len(), 12);
                    assert_ne!(spec_check_digit(&digits[..11]), digits[11]);
                }
                _ => panic!("unknown NumberError variant"),
            }
            // The message is built from the variant's fields (one character, a
            // count), never from the text.
            let message = error.to_string();
            assert!(!contains_number(&message), "a refusal holds a number");
            assert!(message.len() < 200);
        }
    }
}

fn check_digit_rule(data: &[u8]) {
    if data.len() < 11 {
        return;
    }
    let mut first = [0u8; 11];
    for (slot, byte) in first.iter_mut().zip(data) {
        *slot = b'0' + byte % 10;
    }
    let values: Vec<u8> = first.iter().map(|b| b - b'0').collect();
    let expected = spec_check_digit(&values);
    assert_eq!(check_digit(&first), expected);
    assert!(expected <= 9);
    for last in 0..10u8 {
        let mut twelve = [0u8; 12];
        twelve[..11].copy_from_slice(&first);
        twelve[11] = b'0' + last;
        let valid = last == expected;
        assert_eq!(has_valid_check_digit(&twelve), valid);
        let text = std::str::from_utf8(&twelve).unwrap();
        assert_eq!(MyNumber::parse(text).is_ok(), valid);
    }
}

fn check_redaction(text: &str) {
    let found = contains_number(text);
    if naive_contains_typed_number(text) {
        assert!(found, "contains_number misses a number as people type it");
    }
    let redacted = redact_numbers(text);
    assert!(!contains_number(&redacted), "a number survived redact_numbers");
    if found {
        assert!(redacted.contains(REDACTED));
    } else {
        assert_eq!(redacted, text, "text without a number was changed");
    }
    // Everything that is not part of a number is kept, in order. (Text that
    // already holds the marker would make the comparison ambiguous.)
    if text.contains(REDACTED) {
        return;
    }
    let kept: String = text.chars().filter(|c| !is_number_character(*c)).collect();
    let kept_after: String = redacted.replace(REDACTED, "").chars().filter(|c| !is_number_character(*c)).collect();
    assert_eq!(kept, kept_after, "redaction dropped or added text around a number");
}

fuzz_target!(|data: &[u8]| {
    check_digit_rule(data);
    let text = String::from_utf8_lossy(data);
    check_parse(&text);
    check_redaction(&text);
});
