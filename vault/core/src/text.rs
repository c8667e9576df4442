//! Free text a caller writes for people (job notes, tenant display names).
//!
//! Free text is stored, shown and logged, so it must not be able to hold a
//! number nor forge a line. [`FreeText::parse`] refuses:
//! - text that [`contains_number`] (the one definition of "could hold a
//!   number"): after NFKC normalisation, [`NUMBER_RUN_DIGITS`] or more digits
//!   of any script joined by anything but letters: spaces of every kind
//!   (NBSP, U+3000), punctuation (`.`, `/`), dashes (`–`, `－`), symbols and
//!   ー. `2027年1月31日` passes (the kanji are letters), `2027-01-31 10:00`
//!   does not (twelve digits joined by punctuation and a space);
//! - control and invisible formatting characters (`Cc`, `Cf`, `Zl`, `Zp`): a
//!   line break could forge a log line, a direction mark could disguise text;
//! - more than [`MAX_FREE_TEXT_CHARS`] characters.
//!
//! A refusal names the field and the rule, never the text.

use std::fmt;

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::number::{contains_number, NUMBER_RUN_DIGITS};

/// Most characters a free-text field may hold.
pub const MAX_FREE_TEXT_CHARS: usize = 500;

/// Why a free text was refused. Never holds the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FreeTextError {
    /// Digits joined by spaces or punctuation: it could be a number.
    #[error(
        "the {field} holds {NUMBER_RUN_DIGITS} or more digits joined by spaces, punctuation or symbols, so it could \
         hold a My Number; remove them, or separate them with words"
    )]
    DigitRun {
        /// Which field.
        field: &'static str,
    },
    /// A control or invisible formatting character.
    #[error("the {field} holds a control or invisible formatting character (such as a line break); use one line of plain text")]
    Control {
        /// Which field.
        field: &'static str,
    },
    /// Longer than [`MAX_FREE_TEXT_CHARS`].
    #[error("the {field} is longer than {MAX_FREE_TEXT_CHARS} characters")]
    TooLong {
        /// Which field.
        field: &'static str,
    },
}

/// Checked free text: it holds no number and no control character.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct FreeText(String);

impl FreeText {
    /// Checks `text` for the field named `field` (used in the refusal). The
    /// text is kept as written; the check reads it normalised.
    pub fn parse(text: &str, field: &'static str) -> Result<Self, FreeTextError> {
        if text.chars().count() > MAX_FREE_TEXT_CHARS {
            return Err(FreeTextError::TooLong { field });
        }
        if text.chars().any(is_control) {
            return Err(FreeTextError::Control { field });
        }
        if contains_number(text) {
            return Err(FreeTextError::DigitRun { field });
        }
        Ok(Self(text.to_owned()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_control(character: char) -> bool {
    crate::number::INVISIBLE_LETTERS.contains(&character)
        || matches!(
            character.general_category(),
            GeneralCategory::Control
                | GeneralCategory::Format
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
        )
}

impl fmt::Display for FreeText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for FreeText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FreeText({} chars)", self.0.chars().count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid number (check digit 7) in the forms the rule must catch.
    const WRITTEN: [&str; 16] = [
        "621498320257",
        "６２１４９８３２０２５７",                 // full-width
        "६२१४९८३२०२५७",                             // Devanagari
        "٦٢١٤٩٨٣٢٠٢٥٧",                             // Arabic-Indic
        "6214\u{3000}9832\u{3000}0257",             // ideographic space
        "6214\u{a0}9832\u{a0}0257",                 // no-break space
        "6214ー9832ー0257",                         // katakana prolonged sound mark (Lm)
        "6214–9832–0257",                           // en dash
        "6214.9832.0257",                           // dots
        "6214/9832/0257",                           // slashes
        "６２１४-٩٨٣٢ 0257",                        // mixed scripts
        "六二一四 九八三二 〇二五七",               // kanji digits
        "⑥②①④⑨⑧③②⓪②⑤⑦",                             // circled digits
        "6\u{332}2\u{332}1\u{332}4\u{332}98320257", // combining marks between digits
        "6214™9832™0257",                           // a symbol NFKC turns into letters
        "(6214) [9832] {0257}",                     // brackets
    ];

    #[test]
    fn a_number_in_any_script_with_any_separator_is_refused() {
        for written in WRITTEN {
            for text in [written.to_owned(), format!("note: {written} end"), format!("番号{written}です")] {
                assert_eq!(FreeText::parse(&text, "note"), Err(FreeTextError::DigitRun { field: "note" }), "{text}");
            }
        }
    }

    #[test]
    fn eleven_digits_are_refused_because_they_decide_the_twelfth() {
        assert!(FreeText::parse("62149832025", "note").is_err());
        assert!(FreeText::parse("6214-9832-025", "note").is_err());
        // A mistyped number (wrong check digit) is refused like a right one.
        assert!(FreeText::parse("6214 9832 0258", "note").is_err());
        assert!(FreeText::parse("2027-01-31 10:00", "note").is_err());
    }

    #[test]
    fn dates_counts_and_short_numbers_stay_allowed() {
        for good in [
            "2027年1月31日",
            "2026 年末調整 (12 名)",
            "2027年1月31日 10:00 までに提出",
            "0123456789",
            "電話 03-1234-5678",
            "2027-01-31",
            "第一四半期の源泉徴収票",
            "ABC株式会社 東京本社",
            "データ・センター",
            "Q4 2026, 12 files, batch 7",
            "",
        ] {
            assert!(FreeText::parse(good, "note").is_ok(), "{good}");
        }
        // Letters end a run: these are short runs, not one number.
        assert!(FreeText::parse("6214 abc 9832 def 0257", "note").is_ok());
    }

    #[test]
    fn control_and_formatting_characters_are_refused() {
        for bad in ["a\nb", "a\rb", "a\tb", "a\u{2028}b", "a\u{2029}b", "a\u{202e}b", "a\u{200b}b", "a\u{85}b"] {
            assert_eq!(FreeText::parse(bad, "note"), Err(FreeTextError::Control { field: "note" }), "{bad:?}");
        }
        assert!(FreeText::parse(&"x".repeat(MAX_FREE_TEXT_CHARS + 1), "note").is_err());
        assert!(FreeText::parse(&"年".repeat(MAX_FREE_TEXT_CHARS), "note").is_ok());
    }

    #[test]
    fn refusals_name_the_field_and_never_the_text() {
        for written in WRITTEN {
            let error = FreeText::parse(written, "display name").unwrap_err();
            let message = error.to_string();
            assert!(message.starts_with("the display name holds"), "{message}");
            assert!(!message.contains(written));
            assert!(!contains_number(&message), "{message}");
        }
    }
}
