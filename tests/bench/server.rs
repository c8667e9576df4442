//! The vault under test, in a process of its own so that its resident memory
//! is its alone: the benchmark's executable started again with
//! [`SERVE_DATA_DIR`] set, serving a dev data directory through the vault
//! library exactly as `mnvault serve --dev` does (initialised on first start,
//! `datadir::ensure_dev`), on a free loopback port that it names on standard
//! output. It stops, gracefully, when its standard input closes.
//!
//! Unlike the `mnvault` binary it does not `mlockall`: that hardening lives in
//! the binary's `main`, and locked pages would count every reserved mapping
//! (thread stacks, allocator arenas) as resident.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use mnvault::datadir::{self, DEV_PKI_DIR};
use mnvault::startup::Application;
use mnvault_client::{ClientIdentity, VaultClient};
use tokio::sync::oneshot;

use super::ChildCommand;

/// Names the data directory the vault process serves; unset, [`serve_if_asked`] does nothing.
pub const SERVE_DATA_DIR: &str = "MNVAULT_BENCH_SERVE_DATA_DIR";
/// The vault's `database.url` when not SQLite in the data directory.
pub const SERVE_DATABASE_URL: &str = "MNVAULT_BENCH_SERVE_DATABASE_URL";
/// What the vault process writes on standard output, followed by its port, once it listens.
const LISTENING: &str = "mnvault bench vault listening on port";
/// A bound on a graceful stop, not a speed requirement.
const STOP_WAIT: Duration = Duration::from_secs(120);

/// When this process was started as the benchmark's vault, serves until
/// standard input closes and returns `true`; otherwise returns `false` at once.
pub fn serve_if_asked() -> anyhow::Result<bool> {
    let Some(data_dir) = std::env::var_os(SERVE_DATA_DIR) else { return Ok(false) };
    let database_url = std::env::var(SERVE_DATABASE_URL).ok();
    mnvault::telemetry::init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("runtime")?;
    runtime.block_on(async {
        let mut settings = datadir::ensure_dev(Path::new(&data_dir), database_url.as_deref()).await?;
        settings.listen = "127.0.0.1:0".parse().expect("a socket address");
        mnvault::telemetry::apply(&settings.log);
        let application = Application::build(&settings).await?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{LISTENING} {}", application.local_addr().port())?;
        stdout.flush()?;
        drop(stdout);
        let (closed, stdin_closed) = oneshot::channel();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = closed.send(());
        });
        application
            .run_until_stopped(async {
                let _ = stdin_closed.await;
            })
            .await?;
        anyhow::Ok(())
    })?;
    Ok(true)
}

/// A running vault process.
pub struct VaultProcess {
    /// `https://127.0.0.1:<port>`.
    pub endpoint: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    log: PathBuf,
    process: Child,
    stdin: Option<ChildStdin>,
}

impl VaultProcess {
    /// Starts the vault on `data_dir` (and `database_url`, on PostgreSQL),
    /// its log in `log`, and waits until it listens.
    pub async fn start(
        child: &ChildCommand,
        data_dir: &Path,
        database_url: Option<&str>,
        log: &Path,
    ) -> anyhow::Result<VaultProcess> {
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).context("the vault's log")?;
        let mut command = Command::new(std::env::current_exe().context("this executable")?);
        command.args(&child.args).env(SERVE_DATA_DIR, data_dir).env_remove(SERVE_DATABASE_URL);
        if let Some(url) = database_url {
            command.env(SERVE_DATABASE_URL, url);
        }
        let mut process = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .context("start the vault process")?;
        let stdin = process.stdin.take();
        let stdout = process.stdout.take().expect("piped");
        let (port_sender, port) = oneshot::channel();
        std::thread::spawn(move || {
            let mut port_sender = Some(port_sender);
            // Reads to the end, so that the vault never writes into a closed pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some((_, port)) = line.split_once(LISTENING) {
                    if let Some(sender) = port_sender.take() {
                        let _ = sender.send(port.trim().to_owned());
                    }
                }
            }
        });
        let mut vault = VaultProcess {
            endpoint: String::new(),
            data_dir: data_dir.to_owned(),
            log: log.to_owned(),
            process,
            stdin,
        };
        match tokio::time::timeout(super::START_WAIT, port).await {
            Ok(Ok(port)) => vault.endpoint = format!("https://127.0.0.1:{port}"),
            outcome => {
                let why = if outcome.is_err() { "did not listen in time" } else { "exited" };
                bail!("the vault process {why}; see its log {}", vault.log.display());
            }
        }
        Ok(vault)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// A client acting as dev principal `name`, on a connection of its own.
    pub async fn client(&self, name: &str) -> anyhow::Result<VaultClient> {
        let identity = ClientIdentity::from_dev_pki(&self.data_dir.join(DEV_PKI_DIR), name)?;
        Ok(VaultClient::connect(&self.endpoint, &identity).await?)
    }

    /// Its memory now, from `/proc/<pid>/status`.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        Memory::of(self.pid())
    }

    /// Starts its `VmHWM` again from its resident memory now (Linux's
    /// `clear_refs` 5), so that the next reading is one phase's peak;
    /// `false` if the kernel refused, and the peak is then the run's so far.
    pub fn reset_peak(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").is_ok()
    }

    /// Closes its standard input, which stops it gracefully, and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + STOP_WAIT;
        loop {
            if let Some(status) = self.process.try_wait()? {
                if !status.success() {
                    bail!("the vault process ended with {status}; see its log {}", self.log.display());
                }
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("the vault process did not stop; see its log {}", self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for VaultProcess {
    fn drop(&mut self) {
        // Stopped already, or a failed run: never leave a vault behind.
        if matches!(self.process.try_wait(), Ok(None)) {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}

/// Resident memory of a process, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss: u64,
    /// `VmHWM`: the most it was resident at once so far.
    pub peak: u64,
}

impl Memory {
    /// Reads `/proc/<pid>/status`.
    pub fn of(pid: u32) -> anyhow::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("/proc/<pid>/status")?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status.lines().find_map(|line| line.strip_prefix(name)).with_context(|| format!("no {name}"))?;
            let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().with_context(|| name.to_owned())?;
            Ok(kib * 1024)
        };
        Ok(Memory { rss: field("VmRSS:")?, peak: field("VmHWM:")? })
    }
}
