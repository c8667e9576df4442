//! The individual number (個人番号, "My Number"): parsing what people type,
//! and the check digit of 総務省令 平成26年第85号 第5条.
//!
//! Parsing maps full-width digits to ASCII and drops only the separators people
//! really type (hyphens and spaces in their ASCII and full-width forms). Any
//! other character is an error that names it and its position: a parser that
//! silently drops non-digits would accept `12345678901a8`.

use std::fmt;

use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};
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
        "character {} at position {position} is not a digit (only digits, hyphens and spaces are accepted)",
        describe_character(*.character)
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

/// A character named in a message: printable ASCII as itself, anything else
/// (a space, a control, another script) as its code point, so a message can
/// neither be broken across lines nor carry a digit of another script.
fn describe_character(character: char) -> String {
    if character.is_ascii_graphic() && !character.is_ascii_digit() {
        format!("'{character}'")
    } else {
        format!("U+{:04X}", u32::from(character))
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

/// Digits in one run from which a text is taken to hold a number. Eleven, not
/// twelve: the first eleven digits of a My Number decide its check digit, so
/// eleven of them already are the number.
pub const NUMBER_RUN_DIGITS: usize = DIGITS - 1;

/// The ideographs people write digit by digit (縦書き): 〇 一 二 … 九 and 零,
/// and the formal numerals (大字) of Japanese and Chinese: 壱 弐 参 … 拾.
/// They are letters to Unicode (Lo, except 〇), so they are named here.
const KANJI_DIGITS: [char; 31] = [
    '〇', '零', '一', '二', '三', '四', '五', '六', '七', '八', '九', // common
    '壱', '壹', '弐', '貳', '贰', '参', '參', '叁', '肆', '伍', '陸', '陆', '漆', '柒', '捌', '玖',
    '拾', // formal
    '弌', '弍', '弎', // old forms
];

/// Letters that show as nothing (Hangul fillers): a separator to the eye, so
/// they join digits rather than end a run, and free text refuses them.
pub const INVISIBLE_LETTERS: [char; 4] = ['\u{115F}', '\u{1160}', '\u{3164}', '\u{FFA0}'];

/// How one character counts when looking for a number in text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// This many digits (① is one, ⑫ is two).
    Digits(usize),
    /// A letter: it ends a run of digits.
    Letter,
    /// Anything else (spaces, punctuation, dashes, symbols, marks, controls,
    /// modifier letters such as ー): it joins the digits around it.
    Joiner,
}

/// Reads `character` through its compatibility decomposition, the form NFKC
/// is built from (composition never adds or removes a digit). A digit is any
/// numeric character (`Nd`, `Nl`, `No`: every decimal digit script, full-width
/// digits, circled and superscript digits) or a kanji digit. A letter is `Lu`,
/// `Ll`, `Lt` or `Lo` holding no digit; `Lm` (ー, 々) is not, since ー is a
/// common dash in Japanese. A symbol that decomposes into letters (™ into
/// `TM`) still joins: a character stops a run only if it is itself a letter.
fn read(character: char) -> Reading {
    // Every call reads its tokens, identifiers and request id through here:
    // ASCII, whose reading needs no table, goes first.
    if character.is_ascii() {
        return read_ascii(character);
    }
    read_by_tables(character)
}

/// [`read`] for ASCII, where compatibility decomposition changes nothing,
/// the only numbers are `0`–`9` and the only letters `A`–`Z`, `a`–`z`.
fn read_ascii(character: char) -> Reading {
    if character.is_ascii_digit() {
        Reading::Digits(1)
    } else if character.is_ascii_alphabetic() {
        Reading::Letter
    } else {
        Reading::Joiner
    }
}

/// [`read`] by the Unicode tables.
fn read_by_tables(character: char) -> Reading {
    let mut digits = 0;
    unicode_normalization::char::decompose_compatible(character, |part| {
        if part.general_category_group() == GeneralCategoryGroup::Number || KANJI_DIGITS.contains(&part) {
            digits += 1;
        }
    });
    // A numeral whose decomposition is letters (Ⅵ → VI) is still a numeral.
    if digits == 0 && character.general_category_group() == GeneralCategoryGroup::Number {
        digits = 1;
    }
    if digits > 0 {
        return Reading::Digits(digits);
    }
    if INVISIBLE_LETTERS.contains(&character) {
        return Reading::Joiner;
    }
    match character.general_category() {
        GeneralCategory::UppercaseLetter
        | GeneralCategory::LowercaseLetter
        | GeneralCategory::TitlecaseLetter
        | GeneralCategory::OtherLetter => Reading::Letter,
        _ => Reading::Joiner,
    }
}

/// Whether `character` may stand inside a number-shaped run: a digit or a
/// joiner, anything but a letter (see [`contains_number`]).
pub fn is_number_character(character: char) -> bool {
    read(character) != Reading::Letter
}

/// Byte ranges of the number-shaped runs of `text`, each from its first digit
/// to its last.
fn number_runs(text: &str) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut run: Option<(std::ops::Range<usize>, usize)> = None;
    let mut chars = text.char_indices();
    std::iter::from_fn(move || loop {
        let Some((at, character)) = chars.next() else {
            return run.take().and_then(|(span, digits)| (digits >= NUMBER_RUN_DIGITS).then_some(span));
        };
        match read(character) {
            Reading::Digits(count) => {
                let end = at + character.len_utf8();
                match &mut run {
                    Some((span, digits)) => {
                        span.end = end;
                        *digits += count;
                    }
                    None => run = Some((at..end, count)),
                }
            }
            Reading::Joiner => {}
            Reading::Letter => {
                if let Some((span, digits)) = run.take() {
                    if digits >= NUMBER_RUN_DIGITS {
                        return Some(span);
                    }
                }
            }
        }
    })
}

/// Whether `text` could hold a number: after compatibility normalisation
/// (NFKC), it has a run of [`NUMBER_RUN_DIGITS`] or more digits of any script
/// joined by anything but letters (spaces of every kind, punctuation, dashes,
/// symbols, ー).
///
/// This is the one definition used everywhere: free text holding such a run
/// is refused, identifier grammars exclude it (but for the legacy token
/// format, which is twelve digits by design), and [`redact_numbers`] removes
/// it from every message and audit reason. The check digit is deliberately
/// not consulted: a mistyped number is still somebody's number but one digit.
///
/// Digits that letters separate (`6214 abc 9832 def 0257`) are not one run:
/// refusing them would refuse ordinary text, and someone set on smuggling a
/// number can spell it in words anyway.
pub fn contains_number(text: &str) -> bool {
    number_runs(text).next().is_some()
}

/// `text` with every run that [`contains_number`] finds replaced by
/// [`REDACTED`], from its first digit to its last (the joiners around it
/// stay). Messages and audit reasons pass through this as a last line of
/// defence; the first line is that they never quote caller text.
pub fn redact_numbers(text: &str) -> std::borrow::Cow<'_, str> {
    let mut runs = number_runs(text).peekable();
    if runs.peek().is_none() {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut kept_from = 0;
    for span in runs {
        out.push_str(&text[kept_from..span.start]);
        out.push_str(REDACTED);
        kept_from = span.end;
    }
    out.push_str(&text[kept_from..]);
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_reads_as_the_tables_read_it() {
        for character in (0u8..=127).map(char::from) {
            assert_eq!(read_ascii(character), read_by_tables(character), "U+{:04X}", u32::from(character));
        }
    }

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
    fn numbers_inside_text_are_found_in_any_script_and_with_any_separator() {
        for text in [
            "token 621498320257 is not listed",
            "６２１４－９８３２－０２５７",
            "x1234567890185y",
            "123456 789018x",
            "६२१४९८३२०२५७",                 // Devanagari
            "٦٢١٤٩٨٣٢٠٢٥٧",                 // Arabic-Indic
            "۶۲۱۴۹۸۳۲۰۲۵۷",                 // Extended Arabic-Indic (Persian)
            "6214\u{3000}9832\u{3000}0257", // ideographic space
            "6214\u{a0}9832\u{a0}0257",     // no-break space
            "6214ー9832ー0257",             // ー is a modifier letter, not a letter
            "6214–9832–0257",               // en dash
            "6214.9832.0257",
            "6214/9832/0257",
            "６２１४-٩٨٣٢ 0257",        // mixed scripts
            "〇一二三四五六七八九〇一", // kanji digits
            "⑥②①④⑨⑧③②⓪②⑤⑦",             // circled digits
            "⑫⑫⑫⑫⑫⑫",                   // two digits each once normalised
            "459035780120",             // a legacy token: twelve digits all the same
            "12345678901",              // eleven digits decide the twelfth
        ] {
            assert!(contains_number(text), "{text}");
            assert!(!contains_number(&redact_numbers(text)), "{text}");
        }
        for text in
            ["2027年1月31日", "1234567890", "123456a789018", "6214 abc 9832 def 0257", "job_abcdefghijklmnop", ""]
        {
            assert!(!contains_number(text), "{text}");
            assert_eq!(redact_numbers(text), text);
        }
    }

    #[test]
    fn redaction_replaces_the_run_and_keeps_what_is_around_it() {
        assert_eq!(
            redact_numbers("token 6214-9832-0257 is not listed in job_x"),
            format!("token {REDACTED} is not listed in job_x")
        );
        assert_eq!(redact_numbers("621498320257"), REDACTED);
        assert_eq!(redact_numbers("a ６２１４９８３２０２５７、b"), format!("a {REDACTED}、b"));
        assert_eq!(redact_numbers("(6214.9832.0257) and 621498320258."), format!("({REDACTED}) and {REDACTED}."));
        assert_eq!(redact_numbers("x６２１४\u{3000}٩٨٣٢ー0257y"), format!("x{REDACTED}y"));
    }

    #[test]
    fn every_decimal_digit_script_counts() {
        // Every decimal digit (Nd) of every script is a digit to the detector:
        // eleven of the same one make a run, ten do not.
        let mut digits = 0;
        for character in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            if character.general_category() == GeneralCategory::DecimalNumber {
                let digit = character.to_string();
                assert!(contains_number(&digit.repeat(NUMBER_RUN_DIGITS)), "U+{:04X}", u32::from(character));
                assert!(!contains_number(&digit.repeat(NUMBER_RUN_DIGITS - 1)), "U+{:04X}", u32::from(character));
                digits += 1;
            }
        }
        assert!(digits >= 680, "{digits} decimal digits");
    }

    #[test]
    fn a_bad_character_is_named_without_quoting_caller_text() {
        let shown = |input: &str| MyNumber::parse(input).unwrap_err().to_string();
        assert!(shown("12345678901a8").starts_with("character 'a' at position 12"));
        assert!(shown("6214.9832.0257").starts_with("character '.' at position 5"));
        assert!(shown("6214\n9832").starts_with("character U+000A at position 5"));
        assert!(shown("6214\u{a0}9832").starts_with("character U+00A0 at position 5"));
        assert!(shown("६२१४").starts_with("character U+096C at position 1"));
    }

    #[test]
    fn has_valid_check_digit_agrees_with_parse() {
        assert!(has_valid_check_digit(b"123456789018"));
        assert!(!has_valid_check_digit(b"123456789019"));
    }
}

#[cfg(test)]
mod disguised_numbers {
    use super::*;

    #[test]
    fn numbers_in_formal_kanji_roman_numerals_or_invisible_separators_are_found() {
        for disguised in [
            "6214\u{3164}9832\u{3164}0257", // Hangul filler between groups
            "6214\u{FFA0}9832\u{115F}0257",
            "陸弐壱肆玖捌参弐零弐伍漆", // 大字
            "六弐一四九八参二〇二五七", // common and formal mixed
            "ⅥⅡⅠⅣⅨⅧⅢⅡ〇ⅡⅤⅦ",            // Roman numerals (Nl)
        ] {
            assert!(contains_number(disguised), "{}", disguised.escape_unicode());
        }
        assert!(!contains_number("2027年1月31日"));
        assert!(crate::text::FreeText::parse("a\u{3164}b", "note").is_err(), "an invisible letter is refused");
    }
}
