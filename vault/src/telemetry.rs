//! Logging: structured `tracing` events to standard error, filtered by
//! `RUST_LOG` (default `info`). Handlers never log request bodies, so no
//! number reaches a log.
//!
//! Two formats (`[log] format`, see [`LogFormat`]): tracing's human lines, or
//! one JSON object per line for a log collector. A JSON line carries the
//! fields of the spans it was written in, so every line of a call names the
//! call's request id (the `call` span of `serve`), as a human line does in
//! its `call{request_id=…}` prefix. The subscriber is installed before the
//! configuration is read, so both formats' layers are installed and a switch
//! says which one writes: [`init`] sets it from `MNVAULT__LOG__FORMAT` (or
//! `auto`), so even the first lines are in the chosen format, and [`apply`]
//! sets it again once `mnvault.toml` is loaded.
//!
//! The transport libraries are capped at `info` whatever `RUST_LOG` asks:
//! at `debug` and `trace` they dump what callers sent (rustls logs the TLS
//! ClientHello, server name included; h2 and hyper log frames), and that is
//! caller text the vault never parsed.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::Subscriber;
use tracing_subscriber::filter::{filter_fn, LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layer, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

/// Libraries that log what callers sent when asked for more than `info`.
const TRANSPORT_TARGETS: [&str; 7] = ["rustls", "tokio_rustls", "h2", "hyper", "hyper_util", "tonic", "tower"];

/// The environment variable of `log.format`, read before the configuration is.
const FORMAT_VARIABLE: &str = "MNVAULT__LOG__FORMAT";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human lines when standard error is a terminal, JSON lines otherwise
    /// (a service manager or a collector reads it).
    #[default]
    Auto,
    /// tracing's human lines: time, level, spans with their fields, target,
    /// message and fields.
    Human,
    /// One JSON object per line: `timestamp`, `level`, `fields` (the message
    /// and the event's fields), `target`, and `span` and `spans` with the
    /// fields of the spans the event was written in (`request_id`).
    Json,
}

impl LogFormat {
    /// Whether this format writes JSON lines here and now.
    fn writes_json(self) -> bool {
        match self {
            LogFormat::Auto => !std::io::stderr().is_terminal(),
            LogFormat::Human => false,
            LogFormat::Json => true,
        }
    }

    /// The format `MNVAULT__LOG__FORMAT` names, if it names one. A value that
    /// names none is refused later, by the configuration's loading.
    fn from_environment() -> Option<Self> {
        match std::env::var(FORMAT_VARIABLE).ok()?.as_str() {
            "auto" => Some(LogFormat::Auto),
            "human" => Some(LogFormat::Human),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// `[log]` in `mnvault.toml`, or `MNVAULT__LOG__<KEY>`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `auto` (default), `human` or `json`.
    pub format: LogFormat,
}

/// Whether the global subscriber writes JSON lines (else human lines).
fn json_switch() -> &'static Arc<AtomicBool> {
    static JSON: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    JSON.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// The cap on the transport libraries' events (see the module docs).
fn transport_cap() -> Targets {
    TRANSPORT_TARGETS.iter().fold(Targets::new().with_default(LevelFilter::TRACE), |targets, target| {
        targets.with_target(*target, LevelFilter::INFO)
    })
}

/// A human and a JSON formatting layer writing to `writer`; `json` says
/// which of the two writes. Both see every span, so switching never leaves
/// a span without the fields its layer formatted.
fn format_layers<S, W>(writer: W, json: Arc<AtomicBool>) -> impl Layer<S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
    W: for<'w> MakeWriter<'w> + Clone + Send + Sync + 'static,
{
    let writes_human = json.clone();
    let human = tracing_subscriber::fmt::layer()
        .with_writer(writer.clone())
        .with_filter(filter_fn(move |metadata| metadata.is_span() || !writes_human.load(Ordering::Relaxed)));
    let json = tracing_subscriber::fmt::layer()
        .json()
        .with_writer(writer)
        .with_filter(filter_fn(move |metadata| metadata.is_span() || json.load(Ordering::Relaxed)));
    human.and_then(json)
}

/// Installs the global subscriber, in the format `MNVAULT__LOG__FORMAT`
/// names (`auto` otherwise); a second call does nothing.
pub fn init() {
    apply(&LogSettings { format: LogFormat::from_environment().unwrap_or_default() });
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(format_layers(std::io::stderr, json_switch().clone()))
        .with(filter)
        .with(transport_cap())
        .try_init();
}

/// Writes the log in the format `settings` names from now on.
pub fn apply(settings: &LogSettings) {
    json_switch().store(settings.format.writes_json(), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use mnvault_core::mint::draw_request_id;
    use tracing_subscriber::Registry;

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

    /// What a subscriber wrote.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buffer {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap().lines().map(str::to_owned).collect()
        }
    }

    /// Two events in a call's span, as `serve` opens it, and one outside.
    fn log_a_call(request_id: &str) {
        let span = tracing::error_span!("call", request_id = %request_id);
        span.in_scope(|| {
            tracing::info!(operation = "token.tokenize", "call refused");
            tracing::warn!("a second line of the same call");
        });
        tracing::info!("outside any call");
    }

    /// `writer`'s lines for [`log_a_call`], written by the format layers
    /// with the switch set to `json`.
    fn written(json: bool, request_id: &str) -> Vec<String> {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let layers = format_layers(move || writer.clone(), Arc::new(AtomicBool::new(json)));
        tracing::subscriber::with_default(Registry::default().with(layers), || log_a_call(request_id));
        buffer.lines()
    }

    #[test]
    fn json_lines_are_one_object_per_event_with_the_request_id() {
        let request_id = draw_request_id().to_string();
        let lines = written(true, &request_id);
        assert_eq!(lines.len(), 3, "{lines:#?}");
        let objects: Vec<serde_json::Value> =
            lines.iter().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"))).collect();
        for object in &objects[..2] {
            assert_eq!(object["span"]["name"], "call");
            assert_eq!(object["span"]["request_id"], request_id.as_str());
            assert_eq!(object["spans"][0]["request_id"], request_id.as_str());
        }
        assert_eq!(objects[0]["level"], "INFO");
        assert_eq!(objects[0]["fields"]["message"], "call refused");
        assert_eq!(objects[0]["fields"]["operation"], "token.tokenize");
        assert_eq!(objects[1]["level"], "WARN");
        assert!(objects[2].get("span").is_none(), "{}", lines[2]);
        assert_eq!(objects[2]["fields"]["message"], "outside any call");
    }

    /// The human lines are what tracing's own formatter writes: the switch
    /// adds nothing and drops nothing. (Timestamps aside.)
    #[test]
    fn human_lines_are_tracing_s_own() {
        let request_id = draw_request_id().to_string();
        let lines = written(false, &request_id);
        let reference = Buffer::default();
        let writer = reference.clone();
        let plain = tracing_subscriber::fmt::layer().with_writer(move || writer.clone());
        tracing::subscriber::with_default(Registry::default().with(plain), || log_a_call(&request_id));
        let untimed = |lines: Vec<String>| -> Vec<String> {
            lines.iter().map(|line| line.split_once(' ').map_or(line.as_str(), |(_, rest)| rest).to_owned()).collect()
        };
        assert_eq!(untimed(lines.clone()), untimed(reference.lines()));
        assert_eq!(lines.len(), 3);
        for line in &lines[..2] {
            assert!(line.contains("request_id") && line.contains(&request_id), "{line}");
        }
        assert!(lines[0].contains("call refused"), "{}", lines[0]);
        assert!(!lines[2].contains(&request_id), "{}", lines[2]);
    }

    #[test]
    fn switching_changes_the_format_of_the_next_lines_even_inside_a_call() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let json = Arc::new(AtomicBool::new(false));
        let layers = format_layers(move || writer.clone(), json.clone());
        tracing::subscriber::with_default(Registry::default().with(layers), || {
            let span = tracing::error_span!("call", request_id = "req_abcdefghijklmnopqrstuvwxyz");
            let _entered = span.enter();
            tracing::info!("human");
            json.store(true, Ordering::Relaxed);
            tracing::info!("json");
        });
        let lines = buffer.lines();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(serde_json::from_str::<serde_json::Value>(&lines[0]).is_err(), "{}", lines[0]);
        let object: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(object["span"]["request_id"], "req_abcdefghijklmnopqrstuvwxyz");
    }

    #[test]
    fn the_format_is_read_from_the_configuration() {
        let settings: LogSettings = toml::from_str("format = \"json\"").unwrap();
        assert_eq!(settings.format, LogFormat::Json);
        assert_eq!(toml::from_str::<LogSettings>("").unwrap().format, LogFormat::Auto);
        assert!(toml::from_str::<LogSettings>("format = \"yaml\"").is_err());
        assert!(LogFormat::Json.writes_json());
        assert!(!LogFormat::Human.writes_json());
    }
}
