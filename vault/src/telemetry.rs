//! Logging: structured `tracing` events to standard error, filtered by
//! `RUST_LOG` (default `info`). Handlers never log request bodies, so no
//! number reaches a log.
//!
//! The transport libraries are capped at `info` whatever `RUST_LOG` asks:
//! at `debug` and `trace` they dump what callers sent (rustls logs the TLS
//! ClientHello, server name included; h2 and hyper log frames), and that is
//! caller text the vault never parsed.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

/// Libraries that log what callers sent when asked for more than `info`.
const TRANSPORT_TARGETS: [&str; 7] = ["rustls", "tokio_rustls", "h2", "hyper", "hyper_util", "tonic", "tower"];

/// The cap on the transport libraries' events (see the module docs).
fn transport_cap() -> Targets {
    TRANSPORT_TARGETS.iter().fold(Targets::new().with_default(LevelFilter::TRACE), |targets, target| {
        targets.with_target(*target, LevelFilter::INFO)
    })
}

/// Installs the global subscriber; a second call does nothing.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .with(transport_cap())
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_libraries_never_log_below_info() {
        let cap = transport_cap();
        for target in TRANSPORT_TARGETS {
            assert!(!cap.would_enable(target, &tracing::Level::DEBUG), "{target}");
            assert!(cap.would_enable(target, &tracing::Level::INFO), "{target}");
        }
        assert!(cap.would_enable("mnvault::serve", &tracing::Level::TRACE));
    }
}
