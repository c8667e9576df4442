//! Crash safety: the vault runs in a child process that the test kills with
//! SIGKILL in the middle of a bulk tokenization and of releases, then starts
//! again on the same data. What the client was told must hold afterwards:
//! every token it received opens to its own number, no number left without
//! its audit entry, release counts agree with the audit log, and the chain
//! verifies (offline with the vault down, and online after the restart).
//!
//! Kills land mid-work: a tokenization stream is killed when the Nth token
//! reaches the client while it is still sending numbers; releases are killed
//! when the Nth number arrives while other filers' calls are queued, inside
//! their transaction or sending, and once while a committed release is held
//! up by the client's flow-control window.
//!
//! The child process is this test binary itself, re-run on one test,
//! [`vault_process`], which serves a data directory with the real
//! `Application`, answering signals as `mnvault serve` does, until it is
//! killed or stopped (`shutdown.rs` and `reload.rs` use it too). That runs the code under test on a clean
//! clone with nothing but `cargo test`: cargo builds the `mnvault` binary
//! for tests only when its own package has integration tests (and only
//! there is `CARGO_BIN_EXE_mnvault` set), and a binary left in `target/`
//! could be stale.
//!
//! Key rotation (re-wrapping records under a new key version) does not exist
//! yet; a crash during a rewrap belongs here once it does.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use futures::StreamExt as _;
use mnvault::config::Settings;
use mnvault::datadir::DEV_PKI_DIR;
use mnvault::lifecycle::Signals;
use mnvault::startup::Application;
use mnvault_client::{ClientIdentity, Code, ListAuditEntriesRequest, TokenFormat};
use mnvault_proto::v1 as pb;
use pb::filing_service_client::FilingServiceClient;
use secrecy::{ExposeSecret as _, SecretString};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::helpers::{approved_job, new_data_dir, refusal, valid_numbers, Backend, Db, TestApp};

/// Names the data directory the child process serves; unset, [`vault_process`] does nothing.
const CHILD_DATA_DIR: &str = "MNVAULT_TEST_CRASH_CHILD_DATA_DIR";
/// What the child writes on standard output, followed by its port, once it listens.
const LISTENING: &str = "mnvault crash child listening on port";
/// The child's standard error (the vault's log), in the data directory.
const CHILD_LOG: &str = "crash-child.log";
/// A bound on waiting for the child to listen, not a speed requirement.
const START_WAIT: Duration = Duration::from_secs(120);
/// A bound on waiting for the child to exit once stopped, not a speed requirement.
const EXIT_WAIT: Duration = Duration::from_secs(120);

/// Numbers per bulk tokenization.
const BULK: usize = 3_000;
/// After how many received tokens each bulk tokenization is killed.
const BULK_KILL_AFTER: [usize; 3] = [1, 700, 1_500];

/// Tokens per filing job in the release scenario.
const JOB_TOKENS: usize = 120;
/// How each release round reaches its kill, in order, on the same data.
const RELEASE_ROUNDS: [Release; 4] = [
    Release::Concurrent { kill_after: 1 },
    Release::Concurrent { kill_after: 30 },
    Release::Concurrent { kill_after: 60 },
    Release::StalledCall,
];
/// Concurrent filers, so that other calls are in progress when the kill lands.
const FILERS: usize = 6;
/// Tokens per `Detokenize` call, by filer: short calls and long streams.
const CHUNK_SIZES: [usize; 4] = [1, 3, 8, 20];
/// The HTTP/2 stream window of the stalled filer: a few numbers' worth, far
/// less than a whole job's answer, so the vault cannot finish sending it.
const NARROW_WINDOW: u32 = 256;

/// One way to kill the vault in the middle of releases.
#[derive(Clone, Copy, Debug)]
enum Release {
    /// [`FILERS`] filers detokenize the job in chunks at once; the vault is
    /// killed when the `kill_after`-th number arrives, while the others' calls
    /// are in progress (waiting for the write lock, in their transaction, or sending).
    Concurrent { kill_after: usize },
    /// One call for the whole job over a narrow window: the filer reads the
    /// first number and no more, and the vault is killed while it still holds
    /// the rest of a committed release.
    StalledCall,
}

/// Not a test: the body of the vault process the crash tests start, by
/// running this test binary again on this test alone. It serves the data
/// directory named in [`CHILD_DATA_DIR`] on a free loopback port, says which
/// on standard output, and runs until it is killed, stopped by SIGTERM (as
/// `mnvault serve` is: gracefully, exit status 0) or its standard input
/// closes (the test process is gone); SIGHUP reloads its configuration.
/// Without that variable it returns.
#[test]
#[ignore = "the vault process of the crash tests; they start it themselves"]
fn vault_process() {
    let Some(data_dir) = std::env::var_os(CHILD_DATA_DIR) else { return };
    mnvault::telemetry::init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        // Before the port is said, so a signal the test sends finds its handler.
        let signals = Signals::install().expect("install the signal handlers");
        let load = move || {
            let mut settings = Settings::load(Path::new(&data_dir))?;
            settings.listen = "127.0.0.1:0".parse().unwrap();
            Ok(settings)
        };
        let settings = load().expect("settings");
        // SIGHUP and the TLS file watch reload as this start loaded.
        let application = Application::build(&settings).await.expect("build vault").with_reload_source(load);
        let reloader = application.reloader();
        // Straight to the process's standard output, past the harness's capture.
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{LISTENING} {}", application.local_addr().port()).expect("say the port");
        stdout.flush().expect("say the port");
        drop(stdout);
        let (closed, stdin_closed) = oneshot::channel();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = closed.send(());
        });
        application
            .run_until_stopped(async {
                tokio::select! {
                    () = signals.until_terminated(reloader) => {}
                    _ = stdin_closed => {}
                }
            })
            .await
            .expect("vault ran");
    });
}

/// The harness's name for [`vault_process`]: its module path without the crate.
fn child_test_name() -> String {
    let module = module_path!().split_once("::").map_or(module_path!(), |(_, module)| module);
    format!("{module}::vault_process")
}

/// A vault serving a data directory from a child process the test may SIGKILL.
pub(crate) struct VaultProcess {
    pub(crate) app: TestApp,
    process: Child,
}

impl VaultProcess {
    /// Starts a vault process on `data_dir` and waits until it listens.
    pub(crate) async fn start(data_dir: &Arc<TempDir>, backend: &Backend) -> VaultProcess {
        let log_path = data_dir.path().join(CHILD_LOG);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("child log");
        let mut process = Command::new(std::env::current_exe().expect("the test binary"))
            .args(["--exact", &child_test_name(), "--ignored", "--nocapture"])
            .env(CHILD_DATA_DIR, data_dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start the vault process");
        let stdout = process.stdout.take().expect("piped");
        let (port_sender, port) = oneshot::channel();
        std::thread::spawn(move || {
            let mut port_sender = Some(port_sender);
            // Reads to the end, so that the child never writes into a closed pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some((_, port)) = line.split_once(LISTENING) {
                    if let Some(sender) = port_sender.take() {
                        let _ = sender.send(port.trim().to_owned());
                    }
                }
            }
        });
        let port = match tokio::time::timeout(START_WAIT, port).await {
            Ok(Ok(port)) => port,
            outcome => {
                let _ = process.kill();
                let _ = process.wait();
                let why = if outcome.is_err() { "did not listen in time" } else { "exited" };
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("the vault process {why}; its log:\n{log}");
            }
        };
        let app = TestApp::serving_elsewhere(format!("https://127.0.0.1:{port}"), data_dir.clone(), backend.clone());
        VaultProcess { app, process }
    }

    /// Sends `signal` (e.g. SIGTERM, SIGHUP) to the vault process.
    pub(crate) fn send(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_child(&self.process);
        rustix::process::kill_process(pid, signal).expect("signal the vault process");
    }

    /// How the vault process exited, once it has (waiting at most [`EXIT_WAIT`]).
    pub(crate) async fn exited(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + EXIT_WAIT;
        loop {
            if let Some(status) = self.process.try_wait().expect("poll the vault process") {
                return status;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("the vault process did not exit within {EXIT_WAIT:?}; its log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The vault process's log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.app.path().join(CHILD_LOG)).unwrap_or_default()
    }

    /// SIGKILL: no graceful shutdown, no destructor, no flush.
    fn kill(&mut self) {
        // On Unix, `Child::kill` sends SIGKILL.
        self.process.kill().expect("SIGKILL the vault process");
        let status = self.process.wait().expect("reap the vault process");
        assert_eq!(status.signal(), Some(9), "the vault process ended before the kill: {status}");
    }
}

impl Drop for VaultProcess {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

on_both_backends! {
    /// A bulk tokenization stream killed after some tokens came back: every
    /// token received stays its number's token and releases that number; every
    /// stored record has its audit entry and every audited token its record.
    async fn bulk_tokenization_killed_mid_stream_keeps_every_token_it_gave(backend) {
        let (_, data_dir) = new_data_dir(&backend, |_| {}).await;
        let all_numbers = valid_numbers(BULK * BULK_KILL_AFTER.len());
        // Each round crashes the same data again, after the rounds before.
        for (numbers, kill_after) in all_numbers.chunks(BULK).zip(BULK_KILL_AFTER) {
            let mut vault = VaultProcess::start(&data_dir, &backend).await;
            let received = tokenize_until_killed(&mut vault, numbers, kill_after).await;
            assert!(
                received.len() >= kill_after && received.len() < numbers.len(),
                "the kill was to land mid-stream, after {kill_after} tokens; the client got {} of {}",
                received.len(),
                numbers.len()
            );
            assert_chain_intact_offline(&vault.app).await;

            let vault = VaultProcess::start(&data_dir, &backend).await;
            let app = &vault.app;
            // Records and tokenize entries match one to one: none without the other.
            let audited = audited_tokens(app, "token.tokenize-stream", "").await;
            let stored = stored_tokens(app).await;
            assert_eq!(stored.len(), audited.len(), "records and audited tokens differ in number");
            assert!(stored == audited.keys().cloned().collect(), "a record lacks its audit entry or the reverse");
            for token in received.values() {
                assert!(stored.contains(token), "received token {token} was not kept");
            }

            // The same numbers again: every received token comes back.
            let again = tokenize_all(app, numbers).await;
            for (index, token) in &received {
                assert_eq!(&again[*index], token, "number {index} got another token after the crash");
            }

            // An approved job releases each received token's own number.
            let tokens: Vec<String> = received.values().cloned().collect();
            let job = approved_job(app, &tokens, 1).await;
            let released = app.client("filer").await.detokenize(&job, Vec::new()).await.unwrap();
            assert_eq!(released.len(), tokens.len());
            let number_of: HashMap<&str, &str> =
                received.iter().map(|(index, token)| (token.as_str(), numbers[*index].as_str())).collect();
            for released in &released {
                let expected = number_of.get(released.token.as_str()).expect("a released token was asked for");
                let token = &released.token;
                assert!(released.number.expose_secret() == *expected, "token {token} released another number");
            }
            assert_chain_intact_online(app).await;
        }
    }

    /// Releases killed mid-call (see [`Release`]): every number a filer
    /// received has its audit entry, a token counts as released if and only
    /// if an entry says so, and a second release after the restart is refused
    /// exactly for the tokens whose first release committed.
    async fn releases_killed_mid_call_leave_no_number_without_its_audit_entry(backend) {
        let (_, data_dir) = new_data_dir(&backend, |_| {}).await;
        let all_numbers = valid_numbers(JOB_TOKENS * RELEASE_ROUNDS.len());
        for (numbers, round) in all_numbers.chunks(JOB_TOKENS).zip(RELEASE_ROUNDS) {
            let mut vault = VaultProcess::start(&data_dir, &backend).await;
            let tokens = tokenize_all(&vault.app, numbers).await;
            let number_of: HashMap<String, String> = tokens.iter().cloned().zip(numbers.iter().cloned()).collect();
            let job = approved_job(&vault.app, &tokens, 1).await;
            let received = match round {
                Release::Concurrent { kill_after } => {
                    let received = release_until_killed(&mut vault, &job, &tokens, kill_after).await;
                    assert!(
                        received.len() >= kill_after && received.len() < tokens.len(),
                        "the kill was to land mid-release, after {kill_after} numbers; the filers got {} of {}",
                        received.len(),
                        tokens.len()
                    );
                    received
                }
                Release::StalledCall => {
                    let received = release_stalled_until_killed(&mut vault, &job).await;
                    assert_eq!(received.len(), 1, "the stalled filer reads one number");
                    received
                }
            };
            assert_chain_intact_offline(&vault.app).await;

            let vault = VaultProcess::start(&data_dir, &backend).await;
            let app = &vault.app;
            let audited = audited_tokens(app, "filing.detokenize", &job).await;
            assert!(audited.values().all(|entries| *entries == 1), "a token was released twice under a limit of one");
            let listed = app.client("auditor").await.get_filing_job(&job).await.unwrap().tokens;
            assert!(listed.iter().all(|token| token.releases <= 1), "a release count passed the limit");
            let counted: HashSet<String> =
                listed.into_iter().filter(|token| token.releases == 1).map(|token| token.token).collect();
            assert!(
                counted == audited.keys().cloned().collect(),
                "release counts and audit entries disagree: {} counted, {} audited",
                counted.len(),
                audited.len()
            );
            let mut seen = HashSet::new();
            for (token, number) in &received {
                assert!(seen.insert(token), "token {token} was received twice");
                assert!(audited.contains_key(token), "token {token} was released without its audit entry");
                assert!(number.expose_secret() == number_of[token], "token {token} released another number");
            }

            if let Release::StalledCall = round {
                // All or nothing, committed before the first number left.
                assert_eq!(counted.len(), tokens.len(), "the stalled call's release was not counted whole");
            }

            // A second release: refused for each token whose first one
            // committed; the others all release in one call (all or nothing).
            let filer = app.client("filer").await;
            let again = counted.iter().map(|token| {
                let (filer, job) = (filer.clone(), &job);
                async move { (token, filer.detokenize(job, vec![token.clone()]).await) }
            });
            for (token, second) in join_all(again).await {
                assert_eq!(refusal(second).0, Code::FailedPrecondition, "token {token} released again");
            }
            let rest: Vec<String> = tokens.iter().filter(|token| !counted.contains(*token)).cloned().collect();
            if !rest.is_empty() {
                let released = filer.detokenize(&job, rest.clone()).await.expect("the tokens never released");
                assert_eq!(released.len(), rest.len());
                for released in &released {
                    let token = &released.token;
                    assert!(released.number.expose_secret() == number_of[token], "token {token}: another number");
                }
            }
            let audited = audited_tokens(app, "filing.detokenize", &job).await;
            assert_eq!(audited.len(), tokens.len());
            assert!(audited.values().all(|entries| *entries == 1), "a token has two release entries");
            assert_chain_intact_online(app).await;
        }
    }
}

/// Streams `numbers` to the vault and has it SIGKILLed, from another task,
/// when the `kill_after`-th token arrives. Every token the client received,
/// by the index of its number.
async fn tokenize_until_killed(
    vault: &mut VaultProcess,
    numbers: &[String],
    kill_after: usize,
) -> HashMap<usize, String> {
    let payroll = vault.app.client("payroll").await;
    let numbers = numbers.to_vec();
    let (reached, kill) = oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let mut reached = Some(reached);
        let mut received = HashMap::new();
        let mut answers = payroll.tokenize_stream("demo", TokenFormat::Opaque, numbers).await.expect("open the stream");
        // The stream ends with a transport error once the vault is gone.
        while let Some(Ok(answer)) = answers.next().await {
            let token =
                answer.result.unwrap_or_else(|error| panic!("record {} refused: {}", answer.index, error.message));
            received.insert(answer.index as usize, token);
            if received.len() == kill_after {
                if let Some(reached) = reached.take() {
                    let _ = reached.send(());
                }
            }
        }
        received
    });
    // Also resumes if the stream ended short of the kill point; the caller's check fails then.
    let _ = kill.await;
    vault.kill();
    reader.await.expect("stream reader")
}

/// Releases `tokens` of `job` with [`FILERS`] concurrent filers, each calling
/// `Detokenize` over its share in chunks, and has the vault SIGKILLed when the
/// `kill_after`-th number arrives. Every (token, number) the filers received.
async fn release_until_killed(
    vault: &mut VaultProcess,
    job: &str,
    tokens: &[String],
    kill_after: usize,
) -> Vec<(String, SecretString)> {
    let identity = ClientIdentity::from_dev_pki(&vault.app.path().join(DEV_PKI_DIR), "filer").expect("filer identity");
    let channel = mnvault_client::connect_channel(&vault.app.endpoint, &identity).await.expect("connect");
    let received = Arc::new(Mutex::new(Vec::new()));
    let (reached, kill) = oneshot::channel::<()>();
    let reached = Arc::new(Mutex::new(Some(reached)));
    let mut filers = JoinSet::new();
    for filer in 0..FILERS {
        let share: Vec<String> = tokens.iter().skip(filer).step_by(FILERS).cloned().collect();
        let chunk = CHUNK_SIZES[filer % CHUNK_SIZES.len()];
        let mut client = FilingServiceClient::new(channel.clone());
        let (job, received, reached) = (job.to_owned(), received.clone(), reached.clone());
        filers.spawn(async move {
            for tokens in share.chunks(chunk) {
                let request = pb::DetokenizeRequest { job_id: job.clone(), tokens: tokens.to_vec() };
                // Any failure is the kill: this filer stops.
                let Ok(response) = client.detokenize(request).await else { return };
                let mut numbers = response.into_inner();
                loop {
                    match numbers.message().await {
                        Ok(Some(mut released)) => {
                            let number = SecretString::from(std::mem::take(&mut released.number));
                            let count = {
                                let mut received = received.lock().unwrap();
                                received.push((std::mem::take(&mut released.token), number));
                                received.len()
                            };
                            if count == kill_after {
                                if let Some(reached) = reached.lock().unwrap().take() {
                                    let _ = reached.send(());
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(_) => return,
                    }
                }
            }
        });
    }
    drop(reached);
    // Also resumes if every filer finished short of the kill point; the caller's check fails then.
    let _ = kill.await;
    vault.kill();
    while let Some(finished) = filers.join_next().await {
        finished.expect("filer task");
    }
    let received = std::mem::take(&mut *received.lock().unwrap());
    received
}

/// Releases the whole of `job` in one `Detokenize` call over a
/// [`NARROW_WINDOW`] channel, reads the first number only, and has the vault
/// SIGKILLed while the rest waits for window. What the filer received.
async fn release_stalled_until_killed(vault: &mut VaultProcess, job: &str) -> Vec<(String, SecretString)> {
    let pki = vault.app.path().join(DEV_PKI_DIR);
    let read = |name: &str| std::fs::read(pki.join(name)).expect("dev PKI file");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(read("filer.crt"), read("filer.key")));
    let channel = Channel::from_shared(vault.app.endpoint.clone())
        .expect("endpoint")
        .initial_stream_window_size(NARROW_WINDOW)
        .tls_config(tls)
        .expect("TLS settings")
        .connect()
        .await
        .expect("connect");
    let request = pb::DetokenizeRequest { job_id: job.to_owned(), tokens: Vec::new() };
    let mut numbers = FilingServiceClient::new(channel).detokenize(request).await.expect("release").into_inner();
    let mut first = numbers.message().await.expect("the first number").expect("a number");
    let number = SecretString::from(std::mem::take(&mut first.number));
    // The stream stays open, unread, until the vault is gone.
    vault.kill();
    drop(numbers);
    vec![(std::mem::take(&mut first.token), number)]
}

/// The tokens of `numbers` in tenant `demo`, in order, from one stream.
pub(crate) async fn tokenize_all(app: &TestApp, numbers: &[String]) -> Vec<String> {
    let payroll = app.client("payroll").await;
    let answers = payroll.tokenize_stream("demo", TokenFormat::Opaque, numbers.to_vec()).await.unwrap();
    let answers: Vec<_> = answers.collect().await;
    assert_eq!(answers.len(), numbers.len());
    answers
        .into_iter()
        .enumerate()
        .map(|(index, answer)| {
            let answer = answer.expect("stream answer");
            assert_eq!(answer.index as usize, index);
            answer.result.unwrap_or_else(|error| panic!("record {index} refused: {}", error.message))
        })
        .collect()
}

/// Tokens named by successful entries of `operation` (of `job`, unless
/// empty), with how many such entries name each.
pub(crate) async fn audited_tokens(app: &TestApp, operation: &str, job: &str) -> HashMap<String, usize> {
    let auditor = app.client("auditor").await;
    let mut request = ListAuditEntriesRequest {
        operation: operation.into(),
        job_id: job.into(),
        ..ListAuditEntriesRequest::default()
    };
    let mut tokens = HashMap::new();
    loop {
        let page = auditor.list_audit_entries(request.clone()).await.unwrap();
        for entry in page.entries {
            assert_eq!(entry.operation, operation);
            if entry.outcome == "ok" {
                for token in entry.tokens {
                    *tokens.entry(token).or_default() += 1;
                }
            }
        }
        if page.next_after_seq == 0 {
            return tokens;
        }
        request.after_seq = page.next_after_seq;
    }
}

/// Every token with a stored record, read from the database itself.
pub(crate) async fn stored_tokens(app: &TestApp) -> HashSet<String> {
    const SQL: &str = "SELECT token FROM records";
    let tokens: Vec<String> = match app.database().await {
        Db::Sqlite(mut conn) => sqlx::query_scalar(SQL).fetch_all(&mut conn).await,
        Db::Postgres(mut conn) => sqlx::query_scalar(SQL).fetch_all(&mut conn).await,
    }
    .expect("read the stored tokens");
    tokens.into_iter().collect()
}

/// `mnvault audit verify` on the data directory, as an operator runs it with
/// the vault down after a crash.
async fn assert_chain_intact_offline(app: &TestApp) {
    let report = app.cli(&["audit", "verify"]).await.expect("audit verify");
    assert!(report.starts_with("audit chain intact"), "{report}");
}

/// `VerifyAuditChain` on the running vault.
async fn assert_chain_intact_online(app: &TestApp) {
    let verdict = app.client("auditor").await.verify_audit_chain().await.unwrap();
    assert!(verdict.intact, "chain broken at {}: {}", verdict.first_bad_seq, verdict.problem);
}
