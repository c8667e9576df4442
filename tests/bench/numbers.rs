//! Distinct valid numbers, made from the check-digit rule (never a real
//! person's on purpose), without a set of everything handed out so far.

use std::sync::atomic::{AtomicU64, Ordering};

use mnvault_client::number::check_digit;
use rand::Rng as _;

/// How many eleven-digit bodies there are.
const BODIES: u64 = 100_000_000_000;
/// Coprime with 10^11 (odd, not a multiple of 5), so `i * STRIDE mod 10^11`
/// visits every body once; large, so neighbours share no digits in order.
const STRIDE: u64 = 37_493_818_157;

/// Hands out numbers that differ from every number it handed out before.
pub struct NumberSource {
    offset: u64,
    next: AtomicU64,
}

impl Default for NumberSource {
    fn default() -> Self {
        Self::new()
    }
}

impl NumberSource {
    /// A source starting at a random place, so that runs differ.
    pub fn new() -> Self {
        NumberSource { offset: rand::thread_rng().gen_range(0..BODIES), next: AtomicU64::new(0) }
    }

    /// `count` fresh numbers, twelve ASCII digits each.
    pub fn take(&self, count: usize) -> Vec<String> {
        let first = self.next.fetch_add(count as u64, Ordering::Relaxed);
        (first..first + count as u64).map(|i| self.number(i)).collect()
    }

    fn number(&self, i: u64) -> String {
        let body = ((u128::from(i) * u128::from(STRIDE) + u128::from(self.offset)) % u128::from(BODIES)) as u64;
        let mut digits = [0u8; 11];
        let mut rest = body;
        for digit in digits.iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        let mut number = String::with_capacity(12);
        number.extend(digits.iter().map(|&d| char::from(d)));
        number.push(char::from(b'0' + check_digit(&digits)));
        number
    }
}
