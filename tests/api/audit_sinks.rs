//! Audit sinks (`[[audit.sinks]]`): the log streamed, besides the database,
//! as JSON lines to a file (with rotation) or RFC 5424 syslog messages,
//! each entry and right after it the checkpoint signing it. The sink
//! catches up from the database by sequence number: nothing lost, nothing
//! twice, across rotations, restarts and failures; a required sink that
//! fails makes calls refuse with UNAVAILABLE (never hang) until it is back.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mnvault::audit_sink::{SinkKind, SinkSettings};
use mnvault::config::Settings;
use mnvault::datadir::DEV_PKI_DIR;
use mnvault_client::{ClientError, Code, ServingStatus, TokenFormat, VaultClient};
use mnvault_core::audit::checkpoint::TrustedKeys;
use mnvault_core::audit::line::AuditLine;
use mnvault_core::store::AuditFilter;
use mnvault_core::vault::checkpoint::LogWalk;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::net::TcpListener;

use crate::helpers::{
    approved_job, export_under_way, narrow_channel, refusal, spawn_app_with, spawn_replica, stream_request,
    tokenize_fresh, tokenize_stream_under_way, valid_number, wait_for_health, Backend, TestApp,
};

/// A bound on waiting for the sink or a call, not a speed requirement.
const HANG_GUARD: Duration = Duration::from_secs(60);
/// Pause between looks at a sink while waiting for it.
const LOOK_AGAIN: Duration = Duration::from_millis(20);

/// A file sink in the data directory, retrying and polling often.
fn file_sink(path: &str) -> SinkSettings {
    SinkSettings {
        name: Some("siem".into()),
        poll_interval_ms: 50,
        retry_max_ms: 200,
        write_timeout_ms: 2_000,
        ..SinkSettings::file(path)
    }
}

/// Settings with `sinks`, periodic checkpoints every 50 ms (so some are
/// signed after their entry was written) and a quick health check.
fn with_sinks(sinks: Vec<SinkSettings>) -> impl FnOnce(&mut Settings) {
    move |settings| {
        settings.audit.sinks = sinks;
        settings.audit.interval_override = Some(Duration::from_millis(50));
        settings.server.health_check_interval_ms = 100;
    }
}

/// Every line the log should give a sink, in order: each entry, and the
/// checkpoint signing it right after it.
async fn expected_lines(app: &TestApp) -> Vec<String> {
    let mut read = app.core().store().begin_read().await.unwrap();
    let head = read.audit_head().await.unwrap().seq;
    let mut checkpoints = read.audit_checkpoints(0, 1_000_000).await.unwrap().into_iter().peekable();
    let mut lines = Vec::new();
    let mut filter = AuditFilter { limit: 1_000, ..AuditFilter::default() };
    while filter.after_seq < head {
        let page = read.audit_entries(&filter).await.unwrap();
        filter.after_seq = page.last().expect("entries up to the head").seq;
        for entry in page.into_iter().filter(|entry| entry.seq <= head) {
            let seq = entry.seq;
            lines.push(AuditLine::Entry(entry).to_json());
            while let Some(checkpoint) = checkpoints.next_if(|c| c.seq <= seq) {
                assert_eq!(checkpoint.seq, seq, "a checkpoint at a position with no entry");
                lines.push(AuditLine::Checkpoint(checkpoint).to_json());
            }
        }
    }
    lines
}

/// The complete lines of `path` (a torn last line is left out); none if
/// it does not exist.
fn complete_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    lines.pop(); // After the last newline: empty, or a line still being written.
    lines
}

/// `<path>.<n>`.
fn rotated(path: &Path, n: u32) -> PathBuf {
    PathBuf::from(format!("{}.{n}", path.display()))
}

/// The lines of `path` and its rotated files, oldest first.
fn file_sink_lines(path: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for n in (1..=20).rev() {
        lines.extend(complete_lines(&rotated(path, n)));
    }
    lines.extend(complete_lines(path));
    lines
}

/// Waits (bounded by [`HANG_GUARD`]) until `read` gives every line the
/// log holds, then returns both.
async fn caught_up(app: &TestApp, read: impl Fn() -> Vec<String>) -> (Vec<String>, Vec<String>) {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let (expected, got) = (expected_lines(app).await, read());
        if got.last() == expected.last() || tokio::time::Instant::now() > deadline {
            return (got, expected);
        }
        tokio::time::sleep(LOOK_AGAIN).await;
    }
}

/// The sink holds exactly the whole log: every line parses, entries from #1
/// without a gap or a repeat, each checkpoint right after its entry, the
/// same bytes as the database gives, and it verifies with the vault's
/// public key alone (what a witness outside the server does).
fn assert_whole_log(app: &TestApp, got: &[String], expected: &[String]) {
    let mut walk = LogWalk::new(TrustedKeys::anchored([app.core().signing_key_public()]), "test".into(), None);
    let (mut next, mut checkpoints) = (1, 0);
    for line in got {
        match AuditLine::parse(line).unwrap_or_else(|e| panic!("{e}: {line}")) {
            AuditLine::Entry(entry) => {
                assert_eq!(entry.seq, next, "entries go on from #1 without a gap or a repeat");
                next += 1;
                walk.feed(AuditLine::Entry(entry));
            }
            AuditLine::Checkpoint(checkpoint) => {
                assert_eq!(checkpoint.seq, next - 1, "a checkpoint right after the entry it signs");
                checkpoints += 1;
                walk.feed(AuditLine::Checkpoint(checkpoint));
            }
            other => panic!("a sink writes entries and checkpoints only: {other:?}"),
        }
    }
    assert!(checkpoints > 0, "the checkpoints reach the sink");
    let evidence = walk.finish(None);
    assert!(evidence.broken.is_none(), "{:?}", evidence.broken);
    assert_eq!(evidence.checkpoints_verified, checkpoints);
    assert_eq!(got, expected, "exactly the log, in order");
}

/// Tokenizes one fresh number, bounded by [`HANG_GUARD`] (never hangs).
async fn tokenize_once(client: &VaultClient) -> Result<String, ClientError> {
    let number = valid_number();
    let call = client.tokenize("demo", &number, TokenFormat::Opaque);
    tokio::time::timeout(HANG_GUARD, call).await.expect("the call returns (it must never hang)")
}

/// Calls until one is refused (bounded), and returns its refusal.
async fn until_refused(client: &VaultClient) -> (Code, String) {
    for _ in 0..(HANG_GUARD.as_millis() / LOOK_AGAIN.as_millis()) {
        if let Err(error) = tokenize_once(client).await {
            return refusal::<()>(Err(error));
        }
        tokio::time::sleep(LOOK_AGAIN).await;
    }
    panic!("calls were still taken while the required sink failed");
}

/// Calls until one succeeds again (bounded).
async fn until_taken(client: &VaultClient) {
    for _ in 0..(HANG_GUARD.as_millis() / LOOK_AGAIN.as_millis()) {
        if tokenize_once(client).await.is_ok() {
            return;
        }
        tokio::time::sleep(LOOK_AGAIN).await;
    }
    panic!("calls were still refused after the sink came back");
}

/// Some of every kind of call: tokenizations, a job approved and released
/// (its checkpoints are signed in the same transaction), a refusal.
async fn some_calls(app: &TestApp) {
    let tokens = tokenize_fresh(app, 4).await;
    let job = approved_job(app, &tokens[..2], 1).await;
    app.client("filer").await.detokenize(&job, vec![]).await.unwrap();
    let refused = app.client("payroll").await.detokenize(&job, vec![]).await;
    assert!(refused.is_err());
}

on_both_backends! {
    /// A file sink receives every entry and checkpoint line, in order, each
    /// exactly the line the database gives, and the file verifies alone.
    async fn a_file_sink_receives_every_entry_and_checkpoint_in_order(backend) {
        let app = spawn_app_with(&backend, with_sinks(vec![file_sink("audit.jsonl")])).await;
        some_calls(&app).await;
        let path = app.path().join("audit.jsonl");
        let (got, expected) = caught_up(&app, || file_sink_lines(&path)).await;
        assert_whole_log(&app, &got, &expected);
    }

    /// A restart (after a crash that tore the file's last line) neither
    /// repeats nor loses a line: the new vault cuts the torn line and goes on
    /// from the file's last complete line.
    async fn a_restart_neither_duplicates_nor_loses_lines(backend) {
        let mut app = spawn_app_with(&backend, with_sinks(vec![file_sink("audit.jsonl")])).await;
        some_calls(&app).await;
        let path = app.path().join("audit.jsonl");
        caught_up(&app, || file_sink_lines(&path)).await;
        app.stop().await;
        let text = std::fs::read_to_string(&path).unwrap();
        let last = text.trim_end_matches('\n').rfind('\n').unwrap() + 1;
        std::fs::write(&path, &text[..last + (text.len() - last) / 2]).unwrap();
        assert!(!std::fs::read_to_string(&path).unwrap().ends_with('\n'), "a torn last line");

        let restarted = spawn_replica(&app).await;
        some_calls(&restarted).await;
        let (got, expected) = caught_up(&restarted, || file_sink_lines(&path)).await;
        assert_whole_log(&restarted, &got, &expected);
    }

    /// Rotation keeps the configured number of files, each within the size,
    /// and the position survives it: a vault started right after a rotation
    /// (an empty current file) goes on from the newest rotated file.
    async fn rotation_keeps_the_configured_count_and_the_cursor_survives_it(backend) {
        let sink = SinkSettings { rotate_bytes: 4_096, rotate_keep: 3, ..file_sink("audit.jsonl") };
        let mut app = spawn_app_with(&backend, with_sinks(vec![sink])).await;
        tokenize_fresh(&app, 40).await;
        let path = app.path().join("audit.jsonl");
        let (got, expected) = caught_up(&app, || file_sink_lines(&path)).await;
        for n in 1..=3 {
            let size = std::fs::metadata(rotated(&path, n)).expect("three rotated files").len();
            assert!(size <= 4_096, "{size}");
        }
        assert!(!rotated(&path, 4).exists(), "no more than three kept");
        let kept = expected.len() - got.len();
        assert!(kept > 0, "the oldest lines were rotated away");
        assert_eq!(got, expected[kept..], "the kept files hold the log's last lines, in order");

        // Stopped right after a rotation: the current file is empty.
        app.stop().await;
        std::fs::rename(rotated(&path, 2), rotated(&path, 3)).unwrap();
        std::fs::rename(rotated(&path, 1), rotated(&path, 2)).unwrap();
        std::fs::rename(&path, rotated(&path, 1)).unwrap();
        std::fs::write(&path, "").unwrap();
        let before = file_sink_lines(&path);
        let restarted = spawn_replica(&app).await;
        tokenize_fresh(&restarted, 3).await;
        let (got, expected) = caught_up(&restarted, || file_sink_lines(&path)).await;
        assert_eq!(got[..before.len()], before[..]);
        assert_eq!(got, expected[expected.len() - got.len()..], "no line repeated or lost across the restart");
        let first = complete_lines(&path);
        assert!(!first.is_empty());
        let (first, last_before) = (AuditLine::parse(&first[0]).unwrap(), AuditLine::parse(before.last().unwrap()));
        let seq = |line: &AuditLine| match line {
            AuditLine::Entry(entry) => entry.seq,
            AuditLine::Checkpoint(checkpoint) => checkpoint.seq,
            other => panic!("{other:?}"),
        };
        assert!(seq(&first) >= seq(&last_before.unwrap()), "the new file goes on where the rotated one ended");
    }

    /// A required sink that fails (its file replaced by a directory) makes
    /// calls refuse with UNAVAILABLE naming it, never hang; health says
    /// NOT_SERVING. Once it is back, calls are taken again by themselves and
    /// the sink catches up: no gap, no repeat, the refusals' entries included.
    async fn a_required_sink_that_fails_refuses_calls_until_it_is_back(backend) {
        let sink = SinkSettings { required: true, ..file_sink("audit.jsonl") };
        let app = spawn_app_with(&backend, with_sinks(vec![sink])).await;
        let payroll = app.client("payroll").await;
        some_calls(&app).await;
        let path = app.path().join("audit.jsonl");
        caught_up(&app, || file_sink_lines(&path)).await;

        let saved = app.path().join("audit.jsonl.saved");
        std::fs::rename(&path, &saved).unwrap();
        std::fs::create_dir(&path).unwrap();
        let (code, message) = until_refused(&payroll).await;
        assert_eq!(code, Code::Unavailable, "{message}");
        assert!(message.contains("audit sink \"siem\""), "{message}");
        assert!(!message.contains(&*app.path().to_string_lossy()), "no path in what the caller reads: {message}");
        for _ in 0..3 {
            let (code, message) = refusal(tokenize_once(&payroll).await);
            assert_eq!(code, Code::Unavailable, "{message}");
        }
        wait_for_health(&payroll, ServingStatus::NotServing).await;

        std::fs::remove_dir(&path).unwrap();
        std::fs::rename(&saved, &path).unwrap();
        until_taken(&payroll).await;
        wait_for_health(&payroll, ServingStatus::Serving).await;
        let (got, expected) = caught_up(&app, || file_sink_lines(&path)).await;
        assert_whole_log(&app, &got, &expected);
        let refusals = got.iter().filter(|line| line.contains("audit sink \\\"siem\\\"")).count();
        assert!(refusals >= 4, "the refused calls' entries reach the sink too ({refusals})");
    }

    /// A sink that is not required and cannot write (its directory is
    /// missing) blocks no call; once it can, it writes the whole log.
    async fn a_sink_that_is_not_required_does_not_block_calls(backend) {
        let app = spawn_app_with(&backend, with_sinks(vec![file_sink("later/audit.jsonl")])).await;
        let payroll = app.client("payroll").await;
        for _ in 0..5 {
            tokenize_once(&payroll).await.expect("a failing sink that is not required blocks nothing");
        }
        let path = app.path().join("later/audit.jsonl");
        assert!(!path.exists());
        std::fs::create_dir(app.path().join("later")).unwrap();
        tokenize_once(&payroll).await.unwrap();
        let (got, expected) = caught_up(&app, || file_sink_lines(&path)).await;
        assert_whole_log(&app, &got, &expected);
    }

    /// A required syslog sink over TCP: every line arrives as an RFC 5424
    /// message carrying it exactly; a receiver that stops accepting makes
    /// calls refuse; when it listens again the sink goes on from its cursor
    /// file, and the two receivers together hold the log once.
    async fn a_required_syslog_sink_over_tcp_catches_up_after_its_receiver_returns(backend) {
        let receiver = Receiver::start(None).await;
        let sink = SinkSettings {
            name: Some("siem".into()),
            required: true,
            address: Some(format!("tcp://{}", receiver.address)),
            poll_interval_ms: 50,
            retry_max_ms: 200,
            write_timeout_ms: 2_000,
            ..SinkSettings::new(SinkKind::Syslog)
        };
        let app = spawn_app_with(&backend, with_sinks(vec![sink])).await;
        let payroll = app.client("payroll").await;
        some_calls(&app).await;
        caught_up(&app, || receiver.lines()).await;

        receiver.stop();
        let (code, message) = until_refused(&payroll).await;
        assert_eq!(code, Code::Unavailable, "{message}");
        assert!(message.contains("audit sink \"siem\""), "{message}");

        let returned = Receiver::start(Some(receiver.address)).await;
        until_taken(&payroll).await;
        let (got, expected) = caught_up(&app, || [receiver.lines(), returned.lines()].concat()).await;
        assert_whole_log(&app, &got, &expected);
        assert!(std::fs::metadata(app.path().join("audit-sink-siem.cursor")).is_ok(), "a cursor file");
    }
}

/// Makes a FIFO at `path`.
fn mkfifo(path: &Path) {
    let mode = rustix::fs::Mode::from_raw_mode(0o600);
    rustix::fs::mknodat(rustix::fs::CWD, path, rustix::fs::FileType::Fifo, mode, 0).unwrap();
}

/// Whether a call is taken again within the hang guard.
async fn taken_again(client: &VaultClient) -> bool {
    for _ in 0..(HANG_GUARD.as_millis() / LOOK_AGAIN.as_millis()) {
        if tokenize_once(client).await.is_ok() {
            return true;
        }
        tokio::time::sleep(LOOK_AGAIN).await;
    }
    false
}

/// The position of the first line of `lines` that is entry `seq`.
fn entry_line(lines: &[String], seq: u64) -> usize {
    lines
        .iter()
        .position(|line| matches!(AuditLine::parse(line), Ok(AuditLine::Entry(entry)) if entry.seq == seq))
        .expect("the entry is in the sink")
}

on_both_backends! {
    /// A FIFO put in place of a required sink's file (a write that would
    /// wait for a reader for good) fails the sink at once: calls refuse
    /// with UNAVAILABLE, and once the file is back calls are taken again
    /// and the log is whole; no thread stays blocked on the FIFO.
    async fn a_fifo_in_place_of_the_file_fails_the_sink_without_holding_it(backend) {
        let sink = SinkSettings { required: true, ..file_sink("audit.jsonl") };
        let app = spawn_app_with(&backend, with_sinks(vec![sink])).await;
        let payroll = app.client("payroll").await;
        some_calls(&app).await;
        let path = app.path().join("audit.jsonl");
        caught_up(&app, || file_sink_lines(&path)).await;

        let (saved, fifo) = (app.path().join("audit.saved"), app.path().join("audit.fifo"));
        std::fs::rename(&path, &saved).unwrap();
        mkfifo(&fifo);
        std::fs::rename(&fifo, &path).unwrap();
        let (code, message) = until_refused(&payroll).await;
        assert_eq!(code, Code::Unavailable, "{message}");
        assert!(message.contains("audit sink \"siem\""), "{message}");

        std::fs::rename(&path, &fifo).unwrap();
        std::fs::rename(&saved, &path).unwrap();
        if !taken_again(&payroll).await {
            // Frees a thread blocked opening the FIFO, so the test ends.
            let _freed = std::fs::OpenOptions::new().read(true).write(true).open(&fifo);
            panic!("calls were still refused after the FIFO was gone: a thread is blocked on it");
        }
        let (got, expected) = caught_up(&app, || file_sink_lines(&path)).await;
        assert_whole_log(&app, &got, &expected);
    }

    /// The sink's file replaced while the vault runs by a copy that lacks
    /// its last lines: the sink does not write into it (it would repeat
    /// lines), a required sink refuses calls; once that file is moved away
    /// the sink goes on in a new file, the two holding the log once.
    async fn a_rewound_copy_of_the_file_is_not_written_into(backend) {
        let sink = SinkSettings { required: true, ..file_sink("audit.jsonl") };
        let app = spawn_app_with(&backend, with_sinks(vec![sink])).await;
        let payroll = app.client("payroll").await;
        some_calls(&app).await;
        let path = app.path().join("audit.jsonl");
        let (before, _) = caught_up(&app, || file_sink_lines(&path)).await;

        let rewound: String = before[..before.len() - 2].iter().map(|line| format!("{line}\n")).collect();
        let staged = app.path().join("audit.staged");
        std::fs::write(&staged, &rewound).unwrap();
        std::fs::rename(&staged, &path).unwrap();
        let (code, message) = until_refused(&payroll).await;
        assert_eq!(code, Code::Unavailable, "{message}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), rewound, "nothing was written into the copy");

        std::fs::remove_file(&path).unwrap();
        until_taken(&payroll).await;
        let (after, expected) = caught_up(&app, || file_sink_lines(&path)).await;
        let got = [before, after].concat();
        assert_whole_log(&app, &got, &expected);
    }

    /// An entry edited in the database (its principal changed) after the
    /// sink's position is never shipped: the sink stops, a required sink
    /// refuses calls, and the file ends before the edited entry.
    async fn an_entry_edited_in_the_database_is_never_shipped(backend) {
        let sink = SinkSettings { required: true, ..file_sink("audit.jsonl") };
        let mut app = spawn_app_with(&backend, with_sinks(vec![sink])).await;
        some_calls(&app).await;
        let path = app.path().join("audit.jsonl");
        caught_up(&app, || file_sink_lines(&path)).await;
        app.stop().await;

        // The file as it stood before entry #4; entry #4 is then edited.
        let lines = complete_lines(&path);
        let kept = lines[..entry_line(&lines, 4)].to_vec();
        std::fs::write(&path, kept.iter().map(|line| format!("{line}\n")).collect::<String>()).unwrap();
        app.database().await.exec("UPDATE audit_entries SET principal = 'mallory' WHERE seq = 4").await;

        let restarted = spawn_replica(&app).await;
        // Refused for the broken chain before the sink is asked.
        let (code, message) = until_refused(&restarted.client("payroll").await).await;
        assert_eq!(code, Code::DataLoss, "{message}");
        assert!(message.contains("audit log does not verify"), "{message}");
        wait_for_health(&restarted.client("payroll").await, ServingStatus::NotServing).await;
        assert_eq!(complete_lines(&path), kept, "nothing from the edited entry on was shipped");
    }

    /// A TokenizeStream in progress when a required sink fails answers no
    /// batch more: it ends with UNAVAILABLE naming the sink and the first
    /// record not read.
    async fn a_stream_in_progress_stops_when_a_required_sink_fails(backend) {
        let sink = SinkSettings { required: true, ..file_sink("audit.jsonl") };
        let app = spawn_app_with(&backend, with_sinks(vec![sink])).await;
        let payroll = app.client("payroll").await;
        let identity = mnvault_client::ClientIdentity::from_dev_pki(&app.path().join(DEV_PKI_DIR), "payroll").unwrap();
        let channel = mnvault_client::connect_channel(&app.endpoint, &identity).await.unwrap();
        let (sender, mut answers) = tokenize_stream_under_way(channel).await;

        let path = app.path().join("audit.jsonl");
        std::fs::rename(&path, app.path().join("audit.saved")).unwrap();
        std::fs::create_dir(&path).unwrap();
        until_refused(&payroll).await;
        sender.send(stream_request(valid_number())).await.unwrap();
        match answers.message().await {
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(status.message().contains("audit sink \"siem\""), "{}", status.message());
                assert!(status.message().contains("from index 1 on"), "{}", status.message());
            }
            Ok(answer) => panic!("a record was answered while the required sink failed: {answer:?}"),
        }
    }

    /// A tenant export in progress when a required sink fails exports no
    /// page more: it ends with UNAVAILABLE naming the sink before its end.
    async fn an_export_in_progress_stops_when_a_required_sink_fails(backend) {
        let sink = SinkSettings { required: true, ..file_sink("audit.jsonl") };
        let app = spawn_app_with(&backend, with_sinks(vec![sink])).await;
        let payroll = app.client("payroll").await;
        let (mut chunks, first) = export_under_way(&app, narrow_channel(&app, "filer").await).await;

        let path = app.path().join("audit.jsonl");
        std::fs::rename(&path, app.path().join("audit.saved")).unwrap();
        std::fs::create_dir(&path).unwrap();
        until_refused(&payroll).await;
        let mut records = first.records;
        let ended = loop {
            match chunks.message().await {
                Ok(Some(chunk)) => records = chunk.records,
                Ok(None) => panic!("the whole export was sent while the required sink failed"),
                Err(status) => break status,
            }
        };
        assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
        assert!(ended.message().contains("audit sink \"siem\""), "{}", ended.message());
        assert!(records < first.total, "{records} of {}", first.total);
    }
}

/// A symbolic link in place of the sink's file, to the database: the sink
/// fails without following it, and the database is not cut.
#[tokio::test]
async fn a_link_to_the_database_in_place_of_the_file_is_never_followed() {
    let sink = SinkSettings { required: true, ..file_sink("logs/audit.jsonl") };
    let app = spawn_app_with(&Backend::Sqlite, |settings| {
        with_sinks(vec![sink])(settings);
        let logs = settings.data_dir.join("logs");
        std::fs::create_dir(&logs).unwrap();
        std::os::unix::fs::symlink(settings.data_dir.join(mnvault::store::DATABASE_FILE), logs.join("audit.jsonl"))
            .unwrap();
    })
    .await;
    let (code, message) = until_refused(&app.client("payroll").await).await;
    assert_eq!(code, Code::Unavailable, "{message}");
    let size = std::fs::metadata(app.database_path()).unwrap().len();
    assert_eq!(size % 4_096, 0, "the database is whole pages ({size} bytes)");
    assert_eq!(app.database().await.text("PRAGMA integrity_check").await, "ok");
    assert!(std::fs::symlink_metadata(app.path().join("logs/audit.jsonl")).unwrap().file_type().is_symlink());
}

/// A syslog receiver over TCP (octet counting) that keeps each message's
/// line, having checked its RFC 5424 header.
struct Receiver {
    address: std::net::SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(address: Option<std::net::SocketAddr>) -> Self {
        let listener = TcpListener::bind(address.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap())).await.unwrap();
        let address = listener.local_addr().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = lines.clone();
        // One connection at a time (the sink holds one): its task owns it,
        // so stopping the task closes it with the listener.
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let mut reader = BufReader::new(stream);
                loop {
                    let mut length = Vec::new();
                    if reader.read_until(b' ', &mut length).await.unwrap_or(0) == 0 {
                        break;
                    }
                    let length: usize = std::str::from_utf8(&length).unwrap().trim_end().parse().unwrap();
                    let mut message = vec![0; length];
                    if reader.read_exact(&mut message).await.is_err() {
                        break;
                    }
                    let message = String::from_utf8(message).unwrap();
                    let parts: Vec<&str> = message.splitn(8, ' ').collect();
                    assert!(parts[0] == "<86>1" || parts[0] == "<85>1", "{message}");
                    assert_eq!((parts[3], parts[6]), ("mnvault", "-"), "{message}");
                    assert!(["entry", "checkpoint"].contains(&parts[5]), "{message}");
                    kept.lock().unwrap().push(parts[7].to_owned());
                }
            }
        });
        Self { address, lines, task }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Stops listening and closes every connection.
    fn stop(&self) {
        self.task.abort();
    }
}
