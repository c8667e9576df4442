//! Free text a caller writes for people (job notes, tenant display names).
//!
//! Free text is stored and shown, so it must not be able to hold a number:
//! [`FreeText::parse`] refuses any run of twelve or more digits (separators
//! between them allowed) and any control character. The refusal never
//! repeats the text.

use std::fmt;

use crate::number::is_number_character;

/// Most characters a free-text field may hold.
pub const MAX_FREE_TEXT_CHARS: usize = 500;

/// Why a free text was refused. Never holds the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FreeTextError {
    /// Twelve or more digits in a row: it could be a number.
    #[error("the {field} holds a run of 12 or more digits; it must not contain a number, remove it")]
    DigitRun {
        /// Which field.
        field: &'static str,
    },
    /// A control character (a line break could forge a log line).
    #[error("the {field} holds a control character; use a single line of text")]
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

/// Checked free text.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct FreeText(String);

impl FreeText {
    /// Checks `text` for the field named `field` (used in the refusal).
    pub fn parse(text: &str, field: &'static str) -> Result<Self, FreeTextError> {
        if text.chars().count() > MAX_FREE_TEXT_CHARS {
            return Err(FreeTextError::TooLong { field });
        }
        if text.chars().any(char::is_control) {
            return Err(FreeTextError::Control { field });
        }
        let mut digits = 0;
        for character in text.chars() {
            if character.is_numeric() {
                digits += 1;
                if digits >= 12 {
                    return Err(FreeTextError::DigitRun { field });
                }
            } else if !is_number_character(character) {
                digits = 0;
            }
        }
        Ok(Self(text.to_owned()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
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

    #[test]
    fn a_number_shaped_run_or_a_control_character_is_refused() {
        assert!(FreeText::parse("2026 年末調整 (12 名)", "note").is_ok());
        assert!(FreeText::parse("01234567890", "note").is_ok());
        for bad in ["see 6214-9832-0257", "６２１４　９８３２　０２５７", "123456789012"] {
            assert_eq!(FreeText::parse(bad, "note"), Err(FreeTextError::DigitRun { field: "note" }), "{bad}");
        }
        assert_eq!(FreeText::parse("a\nb", "note"), Err(FreeTextError::Control { field: "note" }));
        assert!(FreeText::parse(&"x".repeat(MAX_FREE_TEXT_CHARS + 1), "note").is_err());
    }
}
