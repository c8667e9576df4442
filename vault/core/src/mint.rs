//! Drawing tokens, job identifiers and request ids: random, unrelated to any number.

use rand::{Rng, RngCore};
use zeroize::Zeroizing;

use crate::id::{
    CollectionId, JobId, PolicyChangeId, RequestId, Token, TokenFormat, COLLECTION_ID_PREFIX, JOB_ID_PREFIX,
    OPAQUE_TOKEN_PREFIX, POLICY_CHANGE_ID_PREFIX, REQUEST_ID_PREFIX,
};
use crate::number::{check_digit, contains_number};

/// Draws a fresh random token of `format`.
pub fn draw_token(format: TokenFormat) -> Token {
    let text = match format {
        TokenFormat::Opaque => draw_without_number(|| draw_token_text(format)),
        // Twelve digits by design: the grammar asks only for a wrong check digit.
        TokenFormat::LegacyDigits => draw_token_text(format),
    };
    Token::parse(&text).expect("a drawn token follows its grammar")
}

/// Draws a fresh random job identifier (80 random bits).
pub fn draw_job_id() -> JobId {
    let text = draw_without_number(|| {
        let mut bytes = [0u8; 10];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        format!("{JOB_ID_PREFIX}{}", data_encoding::BASE32_NOPAD.encode(&bytes).to_ascii_lowercase())
    });
    JobId::parse(&text).expect("a drawn job id follows its grammar")
}

/// Draws a fresh random policy change identifier (80 random bits).
pub fn draw_policy_change_id() -> PolicyChangeId {
    let text = draw_without_number(|| {
        let mut bytes = [0u8; 10];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        format!("{POLICY_CHANGE_ID_PREFIX}{}", data_encoding::BASE32_NOPAD.encode(&bytes).to_ascii_lowercase())
    });
    PolicyChangeId::parse(&text).expect("a drawn change id follows its grammar")
}

/// Draws a fresh random collection identifier (80 random bits).
pub fn draw_collection_id() -> CollectionId {
    let text = draw_without_number(|| {
        let mut bytes = [0u8; 10];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        format!("{COLLECTION_ID_PREFIX}{}", data_encoding::BASE32_NOPAD.encode(&bytes).to_ascii_lowercase())
    });
    CollectionId::parse(&text).expect("a drawn collection id follows its grammar")
}

/// Draws a fresh random request id (128 random bits), one per call.
pub fn draw_request_id() -> RequestId {
    let text = draw_without_number(|| {
        let mut bytes = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        format!("{REQUEST_ID_PREFIX}{}", data_encoding::BASE32_NOPAD.encode(&bytes).to_ascii_lowercase())
    });
    RequestId::parse(&text).expect("a drawn request id follows its grammar")
}

fn draw_token_text(format: TokenFormat) -> String {
    let mut rng = rand::rngs::OsRng;
    match format {
        TokenFormat::Opaque => {
            let mut bytes = Zeroizing::new([0u8; 16]);
            rng.fill_bytes(&mut bytes[..]);
            let mut token = String::with_capacity(30);
            token.push_str(OPAQUE_TOKEN_PREFIX);
            token.push_str(&data_encoding::BASE32_NOPAD.encode(&bytes[..]).to_ascii_lowercase());
            token
        }
        TokenFormat::LegacyDigits => {
            let mut digits = [0u8; 11];
            digits.iter_mut().for_each(|d| *d = b'0' + rng.gen_range(0..10));
            // Any digit but the real check digit, so the token never passes for a number.
            let wrong = (check_digit(&digits) + rng.gen_range(1..10)) % 10;
            let mut token = String::from_utf8(digits.to_vec()).expect("ASCII digits");
            token.push(char::from(b'0' + wrong));
            token
        }
    }
}

/// Draws until the text holds no run that [`contains_number`] finds, which
/// the grammars of job ids and opaque tokens refuse.
fn draw_without_number(draw: impl Fn() -> String) -> String {
    loop {
        let drawn = draw();
        if !contains_number(&drawn) {
            return drawn;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawn_identifiers_parse_and_differ() {
        for format in [TokenFormat::Opaque, TokenFormat::LegacyDigits] {
            let (a, b) = (draw_token(format), draw_token(format));
            assert_eq!(a.format(), format);
            assert_ne!(a, b);
        }
        assert_ne!(draw_job_id(), draw_job_id());
        assert_ne!(draw_request_id(), draw_request_id());
    }
}
