//! The CSRF check of a submit: a random value in a cookie and the same value
//! in the form (the double-submit pattern). Another site can make a browser
//! send the cookie but can neither read it nor, with `SameSite=Strict`, make
//! the browser send it from its own page; and the `__Host-` prefix stops a
//! neighbouring host from planting one. The `Origin` header, when sent, must
//! be the page's own.

use axum::http::{header, HeaderMap, HeaderValue};
use rand::RngCore as _;
use subtle::ConstantTimeEq as _;

/// The cookie's name: `__Host-` makes the browser insist on `Secure`,
/// `Path=/` and no `Domain`.
pub const COOKIE: &str = "__Host-mnvault-csrf";

/// Characters of a value: 128 random bits in base32 (26 characters).
const VALUE_CHARS: usize = 26;

/// A fresh value: 128 bits from the operating system, base32 letters.
pub fn draw() -> String {
    let mut bits = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bits);
    data_encoding::BASE32_NOPAD.encode(&bits)
}

/// Whether `value` is of the form [`draw`] makes: anything else is ignored.
fn well_formed(value: &str) -> bool {
    value.len() == VALUE_CHARS && value.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

/// The `Set-Cookie` value carrying `value`.
pub fn cookie(value: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("{COOKIE}={value}; Secure; HttpOnly; SameSite=Strict; Path=/"))
        .expect("base32 letters are a valid header value")
}

/// The well-formed value of the request's cookie, if it has one: a second
/// tab keeps the value the first one's form holds.
pub fn from_cookies(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .find(|value| well_formed(value))
        .map(str::to_owned)
}

/// Whether a submit may go on: the cookie and the form's value both present
/// and equal (compared in constant time), and `Origin`, if sent, equal to
/// `public_origin`.
pub fn check(headers: &HeaderMap, form_value: Option<&str>, public_origin: &str) -> bool {
    let origins: Vec<&HeaderValue> = headers.get_all(header::ORIGIN).iter().collect();
    if origins.len() > 1 || origins.first().is_some_and(|origin| origin.as_bytes() != public_origin.as_bytes()) {
        return false;
    }
    let (Some(cookie), Some(form_value)) = (from_cookies(headers), form_value) else {
        return false;
    };
    bool::from(cookie.as_bytes().ct_eq(form_value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_fresh_base32_and_read_back_from_the_cookie() {
        let (a, b) = (draw(), draw());
        assert_ne!(a, b);
        assert!(well_formed(&a), "{a}");
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(&format!("other=1; {COOKIE}={a}")).unwrap());
        assert_eq!(from_cookies(&headers).as_deref(), Some(a.as_str()));
        assert!(check(&headers, Some(&a), "https://x"));
        assert!(!check(&headers, Some(&b), "https://x"));
        assert!(!check(&headers, None, "https://x"));
        headers.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(!check(&headers, Some(&a), "https://x"));
        headers.insert(header::ORIGIN, HeaderValue::from_static("https://x"));
        assert!(check(&headers, Some(&a), "https://x"));
        let cookie = cookie(&a);
        let cookie = cookie.to_str().unwrap();
        for part in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(cookie.contains(part), "{cookie}");
        }
    }
}
