//! The cipher crates are built with their `zeroize` features: without them
//! the AES round keys would stay in freed memory, whatever the comments say.
//! This file does not compile when a feature is off.

fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}

#[test]
fn aes_round_keys_are_wiped_on_drop() {
    // The CPU-dispatching types `Aes256Gcm` uses, and the portable fallback.
    wiped_on_drop::<aes::Aes256>();
    wiped_on_drop::<aes::Aes256Enc>();
    wiped_on_drop::<aes::Aes256Dec>();
}
