//! Rate limits of the page, in memory and per process: requests per client
//! address, requests per link, and submits per link, each counted in a
//! fixed one-minute window. Each map holds at most `max_tracked` keys: when
//! full, expired windows go first, then the oldest, so a flood of addresses
//! or guessed links costs bounded memory. A link is keyed by a hash of its
//! text under a key drawn at start, never by the secret itself.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use super::PageSettings;

/// The length of a window.
const WINDOW: Duration = Duration::from_secs(60);

/// One key's window: when it started and what it counted.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
}

/// A fixed-window counter per key, over at most `max_keys` keys.
#[derive(Debug)]
pub struct Limiter<K> {
    per_window: u32,
    max_keys: usize,
    windows: Mutex<HashMap<K, Window>>,
}

impl<K: Hash + Eq + Copy> Limiter<K> {
    /// At most `per_window` per minute for each of at most `max_keys` keys.
    pub fn new(per_window: u32, max_keys: usize) -> Self {
        Self { per_window, max_keys: max_keys.max(1), windows: Mutex::new(HashMap::new()) }
    }

    /// Counts one for `key` at `now`; false if its window is full.
    pub fn allow(&self, key: K, now: Instant) -> bool {
        let mut windows = self.windows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(window) = windows.get_mut(&key) {
            if now.saturating_duration_since(window.start) >= WINDOW {
                *window = Window { start: now, count: 0 };
            }
            if window.count >= self.per_window {
                return false;
            }
            window.count += 1;
            return true;
        }
        if self.per_window == 0 {
            return false;
        }
        if windows.len() >= self.max_keys {
            windows.retain(|_, window| now.saturating_duration_since(window.start) < WINDOW);
        }
        if windows.len() >= self.max_keys {
            let oldest = windows.iter().min_by_key(|(_, window)| window.start).map(|(key, _)| *key);
            if let Some(oldest) = oldest {
                windows.remove(&oldest);
            }
        }
        windows.insert(key, Window { start: now, count: 1 });
        true
    }

    /// Keys tracked now.
    pub fn tracked(&self) -> usize {
        self.windows.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }
}

/// A link's key in the maps: SHA-256 of a per-process key and the link's text.
type LinkKey = [u8; 32];

/// The page's three limits.
#[derive(Debug)]
pub struct RateLimits {
    addresses: Limiter<IpAddr>,
    links: Limiter<LinkKey>,
    submits: Limiter<LinkKey>,
    key: [u8; 32],
}

impl RateLimits {
    /// The limits `settings` name, with a fresh hashing key.
    pub fn new(settings: &PageSettings) -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self {
            addresses: Limiter::new(settings.address_per_minute, settings.max_tracked),
            links: Limiter::new(settings.link_per_minute, settings.max_tracked),
            submits: Limiter::new(settings.link_submits_per_minute, settings.max_tracked),
            key,
        }
    }

    fn link_key(&self, secret: &str) -> LinkKey {
        let mut hash = Sha256::new();
        hash.update(self.key);
        hash.update(secret.as_bytes());
        hash.finalize().into()
    }

    /// Counts a request (GET or POST) from `client` for the link `secret`
    /// (as sent, parsed or not); false if either limit is reached.
    pub fn allow_request(&self, client: IpAddr, secret: &str, now: Instant) -> bool {
        self.addresses.allow(address_key(client), now) && self.links.allow(self.link_key(secret), now)
    }

    /// Counts a submit of the link `secret`; false if its limit is reached.
    pub fn allow_submit(&self, secret: &str, now: Instant) -> bool {
        self.submits.allow(self.link_key(secret), now)
    }
}

/// The key of a client address: an IPv6 client is counted by its /64, the
/// smallest block one subscriber usually gets, so it cannot rotate addresses
/// within it to escape the limit.
fn address_key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(segments[0], segments[1], segments[2], segments[3], 0, 0, 0, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_refused_past_its_limit_until_its_window_ends() {
        let limiter = Limiter::new(3, 10);
        let start = Instant::now();
        assert!((0..3).all(|_| limiter.allow(1u8, start)));
        assert!(!limiter.allow(1, start));
        assert!(limiter.allow(2, start), "another key has its own window");
        assert!(limiter.allow(1, start + WINDOW), "a new window");
    }

    #[test]
    fn memory_stays_bounded_by_evicting_the_oldest() {
        let limiter = Limiter::new(1, 100);
        let start = Instant::now();
        for key in 0..1000u32 {
            assert!(limiter.allow(key, start + Duration::from_millis(u64::from(key))));
        }
        assert_eq!(limiter.tracked(), 100);
        // The newest keys are still counted; the oldest were forgotten.
        assert!(!limiter.allow(999, start + Duration::from_secs(1)));
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(address_key(v4), v4);
    }
}
