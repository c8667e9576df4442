//! The `mnvault` binary: see `mnvault --help`.
//!
//! Before anything else the process hardens itself ([`hardening`]): files it
//! creates are private to its user, it never writes a core dump, and `serve`
//! keeps its memory out of swap where the operating system allows. This is
//! done here, in the binary, and not in the library that tests run in-process.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use mnvault::cli::{self, Cli, Command};

/// How long, once a command is done, blocking threads still running are
/// waited for before the process exits anyway.
const SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn main() -> ExitCode {
    // Before the runtime starts threads and before any file is created.
    let hardened = hardening::at_start();
    mnvault::telemetry::init();
    hardened.log();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve { .. }) {
        hardening::lock_memory().log();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("mnvault: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    let result = runtime.block_on(cli::run(cli, &mut out));
    // A blocking thread stuck for good (an audit sink's write to a pipe or
    // socket nobody reads) must not keep the process from exiting: dropping
    // the runtime would wait for it forever.
    runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line a person can act on; causes joined with ": ".
            eprintln!("mnvault: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Process hardening, through `rustix`'s safe wrappers.
mod hardening {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

    /// What a hardening step did, logged once logging is up.
    #[must_use]
    pub enum Outcome {
        /// Done; a line for the debug log.
        Done(&'static str),
        /// Not done: a warning that says what to change.
        Warning(String),
    }

    impl Outcome {
        pub fn log(&self) {
            match self {
                Outcome::Done(what) => tracing::debug!("{what}"),
                Outcome::Warning(warning) => tracing::warn!("{warning}"),
            }
        }
    }

    /// Outcomes of [`at_start`].
    #[must_use]
    pub struct Report(Vec<Outcome>);

    impl Report {
        pub fn log(&self) {
            self.0.iter().for_each(Outcome::log);
        }
    }

    /// Private files and no core dumps, for every command: `serve` holds keys
    /// and numbers, and so does `detokenize` on the client side.
    pub fn at_start() -> Report {
        private_files();
        Report(vec![disable_core_dumps()])
    }

    /// Files and directories the process creates are for its user alone
    /// (database, WAL, configuration, keys), whatever mode they ask for.
    pub fn private_files() {
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    }

    /// No core file (RLIMIT_CORE 0, hard limit too, so nothing in the process
    /// can raise it again) and not dumpable (PR_SET_DUMPABLE 0: also no
    /// ptrace attach and no /proc/<pid>/mem for other processes of the user).
    pub fn disable_core_dumps() -> Outcome {
        if let Err(error) = setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) }) {
            return Outcome::Warning(format!("core dumps not disabled: setrlimit(RLIMIT_CORE, 0) failed: {error}"));
        }
        #[cfg(target_os = "linux")]
        if let Err(error) = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable) {
            return Outcome::Warning(format!("process still dumpable: prctl(PR_SET_DUMPABLE, 0) failed: {error}"));
        }
        Outcome::Done("core dumps disabled")
    }

    /// Keeps every page of the process, keys and numbers included, out of
    /// swap (mlockall), but only where it cannot make an allocation fail:
    /// when RLIMIT_MEMLOCK is unlimited or the process has CAP_IPC_LOCK.
    /// Otherwise a warning says what to set.
    pub fn lock_memory() -> Outcome {
        let limit = getrlimit(Resource::Memlock).current;
        if limit.is_some() && !has_ipc_lock() {
            let limit = limit.map_or_else(String::new, |bytes| format!("{} KiB", bytes / 1024));
            return Outcome::Warning(format!(
                "memory not locked: keys and numbers may be written to swap. RLIMIT_MEMLOCK is {limit} and the \
                 process lacks CAP_IPC_LOCK; set LimitMEMLOCK=infinity in the systemd unit (or `ulimit -l \
                 unlimited`), or run without swap or with encrypted swap"
            ));
        }
        lock_all()
    }

    #[cfg(target_os = "linux")]
    fn has_ipc_lock() -> bool {
        rustix::thread::capabilities(None)
            .is_ok_and(|sets| sets.effective.contains(rustix::thread::CapabilitySet::IPC_LOCK))
    }

    #[cfg(not(target_os = "linux"))]
    fn has_ipc_lock() -> bool {
        false
    }

    #[cfg(target_os = "linux")]
    fn lock_all() -> Outcome {
        use rustix::mm::{mlockall, MlockAllFlags};
        let all = MlockAllFlags::CURRENT | MlockAllFlags::FUTURE;
        // ONFAULT (Linux 4.4) locks pages as they are touched instead of
        // filling every reserved mapping (thread stacks, malloc arenas) at once.
        match mlockall(all | MlockAllFlags::ONFAULT).or_else(|_| mlockall(all)) {
            Ok(()) => Outcome::Done("memory locked: no page of this process is swapped out"),
            Err(error) => Outcome::Warning(format!(
                "memory not locked: mlockall failed ({error}); keys and numbers may be written to swap. Set \
                 LimitMEMLOCK=infinity in the systemd unit, or run without swap or with encrypted swap"
            )),
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn lock_all() -> Outcome {
        Outcome::Warning("memory not locked on this system: run without swap or with encrypted swap".into())
    }

    #[cfg(test)]
    mod tests {
        use std::os::unix::fs::PermissionsExt;

        use super::*;

        // These change the test process itself, which is harmless: it is
        // this binary's own test harness and these are its only tests.

        #[test]
        fn no_core_dumps_after_start() {
            assert!(matches!(disable_core_dumps(), Outcome::Done(_)));
            assert_eq!(getrlimit(Resource::Core), Rlimit { current: Some(0), maximum: Some(0) });
            #[cfg(target_os = "linux")]
            assert_eq!(rustix::process::dumpable_behavior().unwrap(), rustix::process::DumpableBehavior::NotDumpable);
        }

        #[test]
        fn files_created_after_start_are_private() {
            private_files();
            let dir = tempfile::tempdir().unwrap();
            // std creates files 0666 and directories 0777 before the umask.
            std::fs::write(dir.path().join("file"), b"x").unwrap();
            std::fs::create_dir(dir.path().join("dir")).unwrap();
            let mode = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode("file"), 0o600);
            assert_eq!(mode("dir"), 0o700);
        }
    }
}
