//! The submitted form: `csrf` and one field per number asked, `n0`, `n1`, …
//! in the order the relations are asked. The typed text is held in wiped
//! buffers and never leaves this module except as a parsed [`MyNumber`]; a
//! refusal says which field and why, never what was typed.

use mnvault_core::collection::MAX_ASKED;
use mnvault_core::number::{MyNumber, NumberError};
use zeroize::Zeroizing;

use super::pages::Lang;

/// The name of the field of the `index`th number asked.
pub fn field_name(index: usize) -> String {
    format!("n{index}")
}

/// The fields of a submit, parsed from `application/x-www-form-urlencoded`.
pub struct Fields {
    csrf: Option<String>,
    /// The typed text by field index.
    numbers: Vec<Option<Zeroizing<String>>>,
}

/// What the typed numbers came to.
pub enum Submitted {
    /// Not one field per relation asked.
    WrongCount,
    /// Some did not parse.
    Refused(Vec<FieldError>),
    /// All parsed, in order.
    Numbers(Vec<MyNumber>),
}

/// Why one field was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Which field (0-based).
    pub index: usize,
    /// Why, without the input.
    pub reason: NumberError,
}

impl FieldError {
    /// The message for people: it never repeats the input, and says to type
    /// the number again.
    pub fn message(&self, lang: Lang) -> String {
        match (&self.reason, lang) {
            (NumberError::WrongLength { digits: 0 }, Lang::Ja) => "マイナンバー(12桁)を入力してください。".into(),
            (NumberError::WrongLength { digits: 0 }, Lang::En) => "Enter the 12-digit My Number.".into(),
            (NumberError::WrongLength { digits }, Lang::Ja) => {
                format!("マイナンバーは12桁です(入力は{digits}桁でした)。もう一度入力してください。")
            }
            (NumberError::WrongLength { digits }, Lang::En) => {
                format!("A My Number has 12 digits (this had {digits}). Please enter it again.")
            }
            (NumberError::NotADigit { position, .. }, Lang::Ja) => format!(
                "{position}文字目に数字・ハイフン・空白以外の文字があります。もう一度入力してください。"
            ),
            (NumberError::NotADigit { position, .. }, Lang::En) => format!(
                "Character {position} is not a digit, hyphen or space. Please enter the number again."
            ),
            (NumberError::CheckDigitMismatch, Lang::Ja) => {
                "番号が正しくありません(最後の桁が合いません)。通知カードやマイナンバーカードを見て、もう一度入力してください。"
                    .into()
            }
            (NumberError::CheckDigitMismatch, Lang::En) => {
                "This number is not valid (its last digit does not match). Check the card and enter it again.".into()
            }
            (_, Lang::Ja) => "この番号は受け付けられません。もう一度入力してください。".into(),
            (_, Lang::En) => "This number cannot be accepted. Please enter it again.".into(),
        }
    }
}

impl Fields {
    /// Parses a body; `None` if it is not form-urlencoded text, names a
    /// field twice or names a field the form does not have.
    pub fn parse(body: &[u8]) -> Option<Self> {
        let mut fields = Fields { csrf: None, numbers: Vec::new() };
        for pair in body.split(|b| *b == b'&').filter(|pair| !pair.is_empty()) {
            let (name, value) = match pair.iter().position(|b| *b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &[][..]),
            };
            let name = decode(name)?;
            let value = decode(value)?;
            if name.as_str() == "csrf" {
                if fields.csrf.replace(value.to_string()).is_some() {
                    return None;
                }
                continue;
            }
            let index: usize = name.strip_prefix('n').filter(|digits| digits.len() <= 2)?.parse().ok()?;
            if index >= MAX_ASKED || field_name(index) != name.as_str() {
                return None;
            }
            if fields.numbers.len() <= index {
                fields.numbers.resize_with(index + 1, || None);
            }
            if fields.numbers[index].replace(value).is_some() {
                return None;
            }
        }
        Some(fields)
    }

    /// The form's CSRF value, if sent.
    pub fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }

    /// The numbers, when exactly `asked` fields `n0`…`n{asked-1}` were sent.
    pub fn numbers(self, asked: usize) -> Submitted {
        if self.numbers.len() != asked || self.numbers.iter().any(Option::is_none) {
            return Submitted::WrongCount;
        }
        let mut numbers = Vec::with_capacity(asked);
        let mut errors = Vec::new();
        for (index, text) in self.numbers.into_iter().flatten().enumerate() {
            match MyNumber::parse(&text) {
                Ok(number) => numbers.push(number),
                Err(reason) => errors.push(FieldError { index, reason }),
            }
        }
        if errors.is_empty() {
            Submitted::Numbers(numbers)
        } else {
            Submitted::Refused(errors)
        }
    }
}

/// Decodes one form-urlencoded component (`+` is a space) into a wiped
/// buffer; `None` if it is not UTF-8 or a `%` escape is broken.
fn decode(component: &[u8]) -> Option<Zeroizing<String>> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(component.len()));
    let mut rest = component.iter();
    while let Some(&byte) = rest.next() {
        match byte {
            b'+' => bytes.push(b' '),
            b'%' => {
                let high = hex_value(*rest.next()?)?;
                let low = hex_value(*rest.next()?)?;
                bytes.push(high << 4 | low);
            }
            other => bytes.push(other),
        }
    }
    std::str::from_utf8(&bytes).ok().map(|text| Zeroizing::new(text.to_owned()))
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_parse_with_escapes_and_refuse_repeats_and_strangers() {
        let fields = Fields::parse(b"csrf=AB&n1=%EF%BC%91+2&n0=x").unwrap();
        assert_eq!(fields.csrf(), Some("AB"));
        assert_eq!(fields.numbers[1].as_deref().map(String::as_str), Some("\u{ff11} 2"));
        assert!(Fields::parse(b"n0=1&n0=2").is_none());
        assert!(Fields::parse(b"csrf=a&csrf=b").is_none());
        assert!(Fields::parse(b"name=x").is_none());
        assert!(Fields::parse(b"n01=x").is_none());
        assert!(Fields::parse(b"n16=x").is_none());
        assert!(Fields::parse(b"n0=%FF").is_none());
        assert!(Fields::parse(b"n0=%4").is_none());
        assert!(matches!(Fields::parse(b"n1=x").unwrap().numbers(2), Submitted::WrongCount));
        assert!(matches!(Fields::parse(b"n0=x").unwrap().numbers(2), Submitted::WrongCount));
    }
}
