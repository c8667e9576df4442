//! The individual number (個人番号, "My Number"): parsing what people type,
//! and the check digit of 総務省令 平成26年第85号 第5条.
//!
//! Parsing maps full-width digits to ASCII and drops only the separators people
//! really type (hyphens and spaces in their ASCII and full-width forms). Any
//! other character is an error that names it and its position: a parser that
//! silently drops non-digits would accept `12345678901a8`.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

/// Number of digits in a My Number.
pub const DIGITS: usize = 12;

/// Weights of the first eleven digits, read left to right.
const CHECK_WEIGHTS: [u32; 11] = [6, 5, 4, 3, 2, 7, 6, 5, 4, 3, 2];

/// Separators accepted between digits: ASCII hyphen-minus, full-width
/// hyphen-minus, hyphen, minus sign, ASCII space and ideographic space.
const SEPARATORS: [char; 6] = ['-', '－', '‐', '−', ' ', '\u{3000}'];

/// A validated My Number: twelve ASCII digits whose check digit matches.
///
/// The digits are zeroized when dropped, and `Debug` never shows them.
pub struct MyNumber(Zeroizing<[u8; DIGITS]>);

/// Why an input is not a My Number. Messages never repeat the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NumberError {
    /// The input does not hold exactly twelve digits.
    #[error("a My Number has 12 digits; this input has {digits}")]
    WrongLength {
        /// Digits found (separators not counted).
        digits: usize,
    },
    /// A character is neither a digit nor an accepted separator.
    #[error(
        "character {character:?} at position {position} is not a digit (only digits, hyphens and spaces are accepted)"
    )]
    NotADigit {
        /// The offending character.
        character: char,
        /// 1-based position of the character in the input.
        position: usize,
    },
    /// The twelfth digit is not the check digit of the first eleven.
    #[error("the check digit does not match: the number is mistyped")]
    CheckDigitMismatch,
}

impl MyNumber {
    /// Parses a number as people type it; see the module docs.
    pub fn parse(input: &str) -> Result<Self, NumberError> {
        let mut digits = Zeroizing::new([0u8; DIGITS]);
        let mut count = 0usize;
        for (index, character) in input.chars().enumerate() {
            if SEPARATORS.contains(&character) {
                continue;
            }
            let Some(value) = digit_value(character) else {
                return Err(NumberError::NotADigit { character, position: index + 1 });
            };
            if count < DIGITS {
                digits[count] = b'0' + value;
            }
            count += 1;
        }
        if count != DIGITS {
            return Err(NumberError::WrongLength { digits: count });
        }
        let mut first_eleven = [0u8; 11];
        first_eleven.copy_from_slice(&digits[..11]);
        let expected = check_digit(&first_eleven);
        first_eleven.zeroize();
        if digits[11] != b'0' + expected {
            return Err(NumberError::CheckDigitMismatch);
        }
        Ok(Self(digits))
    }

    /// The twelve ASCII digits. Handle with care: this is the secret.
    pub fn expose_digits(&self) -> &str {
        // Only ASCII digits are ever stored, so this cannot fail.
        std::str::from_utf8(&self.0[..]).expect("ASCII digits")
    }

    /// The twelve ASCII digits as bytes.
    pub fn expose_bytes(&self) -> &[u8; DIGITS] {
        &self.0
    }
}

impl fmt::Debug for MyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MyNumber([redacted])")
    }
}

fn digit_value(character: char) -> Option<u8> {
    match character {
        '0'..='9' => Some(character as u8 - b'0'),
        // Full-width digits U+FF10..U+FF19.
        '０'..='９' => Some((character as u32 - '０' as u32) as u8),
        _ => None,
    }
}

/// The check digit of eleven ASCII digits (`b'0'..=b'9'`), as a value 0..=9.
///
/// # Panics
/// If a byte is not an ASCII digit.
pub fn check_digit(first_eleven: &[u8; 11]) -> u8 {
    let sum: u32 = first_eleven
        .iter()
        .zip(CHECK_WEIGHTS)
        .map(|(digit, weight)| {
            assert!(digit.is_ascii_digit(), "check_digit takes ASCII digits");
            u32::from(digit - b'0') * weight
        })
        .sum();
    match sum % 11 {
        0 | 1 => 0,
        r => (11 - r) as u8,
    }
}

/// Whether twelve ASCII digits carry a matching check digit.
pub fn has_valid_check_digit(digits: &[u8; DIGITS]) -> bool {
    let mut first_eleven = [0u8; 11];
    first_eleven.copy_from_slice(&digits[..11]);
    digits.iter().all(u8::is_ascii_digit) && digits[11] == b'0' + check_digit(&first_eleven)
}

/// What [`redact_numbers`] puts in place of a number.
pub const REDACTED: &str = "[number redacted]";

/// Whether `character` may appear inside a typed number.
pub fn is_number_character(character: char) -> bool {
    digit_value(character).is_some() || SEPARATORS.contains(&character)
}

/// `text` with every run of digits and separators that holds a My Number
/// (twelve consecutive digits with a matching check digit) replaced by
/// [`REDACTED`]. Text the vault did not write itself (tokens, tenants, job
/// ids a caller sent) passes through this before it reaches an audit entry,
/// a log or an error message: a caller who pastes a number where a token
/// belongs must not get it written down.
pub fn redact_numbers(text: &str) -> std::borrow::Cow<'_, str> {
    if !contains_number(text) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if contains_number(run) {
            // Keep the separators around the number (spaces between words).
            let digits = run.trim_matches(|c| SEPARATORS.contains(&c));
            let start = run.len() - run.trim_start_matches(|c| SEPARATORS.contains(&c)).len();
            out.push_str(&run[..start]);
            out.push_str(REDACTED);
            out.push_str(&run[start + digits.len()..]);
        } else {
            out.push_str(run);
        }
        run.zeroize();
    };
    for character in text.chars() {
        if is_number_character(character) {
            run.push(character);
        } else {
            flush(&mut run, &mut out);
            out.push(character);
        }
    }
    flush(&mut run, &mut out);
    std::borrow::Cow::Owned(out)
}

/// Whether `text` holds twelve consecutive digits (separators between them
/// allowed) whose check digit matches.
pub fn contains_number(text: &str) -> bool {
    let mut window = Zeroizing::new([0u8; DIGITS]);
    let mut filled = 0usize;
    for character in text.chars() {
        match digit_value(character) {
            Some(value) => {
                window.copy_within(1.., 0);
                window[DIGITS - 1] = b'0' + value;
                filled += 1;
                if filled >= DIGITS && has_valid_check_digit(&window) {
                    return true;
                }
            }
            None if SEPARATORS.contains(&character) => {}
            None => filled = 0,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of `shared/domain.md`: number and check digit.
    const VECTORS: [(&str, u8); 6] = [
        ("123456789018", 8),
        ("621498320257", 7),
        ("465281266333", 3),
        ("110000000000", 0),
        ("200000000000", 0),
        ("000050000001", 1),
    ];

    #[test]
    fn check_digit_matches_the_domain_table() {
        for (number, expected) in VECTORS {
            let mut first = [0u8; 11];
            first.copy_from_slice(&number.as_bytes()[..11]);
            assert_eq!(check_digit(&first), expected, "{number}");
            assert_eq!(MyNumber::parse(number).unwrap().expose_digits(), number);
        }
    }

    #[test]
    fn every_wrong_check_digit_is_refused() {
        for (number, expected) in VECTORS {
            for wrong in (0..10u8).filter(|d| *d != expected) {
                let input = format!("{}{}", &number[..11], wrong);
                assert_eq!(MyNumber::parse(&input).unwrap_err(), NumberError::CheckDigitMismatch, "{input}");
            }
        }
    }

    #[test]
    fn full_width_digits_and_separators_are_normalised() {
        let inputs = [
            "６２１４９８３２０２５７",
            "6214-9832-0257",
            "6214－9832－0257",
            "6214‐9832‐0257",
            "6214−9832−0257",
            "6214 9832 0257",
            "6214\u{3000}9832\u{3000}0257",
            "６２１４－９８３２　０２５７",
        ];
        for input in inputs {
            assert_eq!(MyNumber::parse(input).unwrap().expose_digits(), "621498320257", "{input}");
        }
    }

    #[test]
    fn a_letter_is_named_with_its_position_not_dropped() {
        assert_eq!(
            MyNumber::parse("12345678901a8").unwrap_err(),
            NumberError::NotADigit { character: 'a', position: 12 }
        );
        assert_eq!(
            MyNumber::parse("6214_9832_0257").unwrap_err(),
            NumberError::NotADigit { character: '_', position: 5 }
        );
        // Other dashes and dots are not in the accepted list.
        assert!(matches!(MyNumber::parse("6214.9832.0257"), Err(NumberError::NotADigit { position: 5, .. })));
        assert!(matches!(MyNumber::parse("6214—9832—0257"), Err(NumberError::NotADigit { position: 5, .. })));
    }

    #[test]
    fn wrong_lengths_report_the_digit_count() {
        assert_eq!(MyNumber::parse("").unwrap_err(), NumberError::WrongLength { digits: 0 });
        assert_eq!(MyNumber::parse("12345678901").unwrap_err(), NumberError::WrongLength { digits: 11 });
        assert_eq!(MyNumber::parse("1234567890188").unwrap_err(), NumberError::WrongLength { digits: 13 });
        assert_eq!(MyNumber::parse("1234-5678-9018-").unwrap().expose_digits(), "123456789018");
    }

    #[test]
    fn errors_and_debug_never_show_the_number() {
        let number = MyNumber::parse("621498320257").unwrap();
        assert!(!format!("{number:?}").contains("6214"));
        let error = MyNumber::parse("621498320258").unwrap_err();
        assert!(!error.to_string().contains("62149832025"));
    }

    #[test]
    fn numbers_inside_text_are_found_and_redacted() {
        assert!(contains_number("token 621498320257 is not listed"));
        assert!(contains_number("６２１４－９８３２－０２５７"));
        assert!(contains_number("x1234567890185y")); // 123456789018 inside a longer run
        assert!(contains_number("123456 789018x"));
        assert!(!contains_number("459035780120")); // wrong check digit: a legacy token
        assert!(!contains_number("12345678901"));
        assert!(!contains_number("123456a789018"));
        assert_eq!(
            redact_numbers("token 6214-9832-0257 is not listed in job_x"),
            format!("token {REDACTED} is not listed in job_x")
        );
        assert_eq!(redact_numbers("token 459035780120 is fine"), "token 459035780120 is fine");
        assert_eq!(redact_numbers("nothing here"), "nothing here");
        assert_eq!(redact_numbers("621498320257"), REDACTED);
        assert_eq!(redact_numbers("a ６２１４９８３２０２５７、b"), format!("a {REDACTED}、b"));
    }

    #[test]
    fn has_valid_check_digit_agrees_with_parse() {
        assert!(has_valid_check_digit(b"123456789018"));
        assert!(!has_valid_check_digit(b"123456789019"));
    }
}
