//! The load benchmark (`cargo bench -p mnvault-tests --bench load`) at a
//! tiny scale, so that its code cannot rot: every phase runs against a vault
//! process on each backend, and the answers are checked, never the speed.
//!
//! As in the benchmark, the vault is a process of its own: this test binary
//! again, on [`vault_process`].

#[path = "../bench/mod.rs"]
mod bench;

use bench::{BackendKind, ChildCommand, Plan};

use crate::helpers::Backend;

/// Not a test: the body of the vault process the smoke test starts, by
/// running this test binary again on this test alone. Without
/// `MNVAULT_BENCH_SERVE_DATA_DIR` it returns at once.
#[test]
#[ignore = "the vault process of the benchmark smoke test; it starts it itself"]
fn vault_process() {
    bench::server::serve_if_asked().expect("serve the benchmark's vault");
}

/// The harness's name for [`vault_process`]: its module path without the crate.
fn child_test_name() -> String {
    let module = module_path!().split_once("::").map_or(module_path!(), |(_, module)| module);
    format!("{module}::vault_process")
}

/// Unary calls at each concurrency, stream sizes, fill target, releases.
const UNARY_CALLS: usize = 20;
const STREAM: usize = 200;
const FILL_TO: usize = 500;
const RELEASES: usize = 50;
/// Records per rewrap call: several calls walk the tenant with the cursor.
const REWRAP_BATCH: u32 = 100;

on_both_backends! {
    async fn the_benchmark_runs_every_phase_and_every_answer_is_right(backend) {
        let kind = match &backend {
            Backend::Sqlite => BackendKind::Sqlite,
            // The benchmark makes databases of its own on the same server.
            Backend::Postgres(database) => BackendKind::Postgres { server_url: database.url.clone() },
        };
        let plan = Plan {
            child: ChildCommand {
                args: vec!["--exact".into(), child_test_name(), "--ignored".into(), "--nocapture".into()],
            },
            unary_concurrency: vec![1, 2],
            unary_calls: UNARY_CALLS,
            stream_records: STREAM,
            fill_to: FILL_TO,
            // Two streams to reach FILL_TO, two jobs and several calls to release.
            fill_stream_records: 150,
            detokenize_tokens: RELEASES,
            detokenize_call_tokens: 20,
            job_tokens: 30,
            rewrap_batch: REWRAP_BATCH,
            rewrap_rounds: 2,
            progress: false,
            ..Plan::small(kind)
        };
        let report = bench::run(&plan).await.expect("the benchmark ran");

        assert_eq!(report.problems(), Vec::<String>::new());
        let whats: Vec<&str> = report.rows.iter().map(|row| row.what.as_str()).collect();
        assert_eq!(
            whats,
            [
                "Tokenize c=1",
                "Tokenize c=2",
                "TokenizeStream 200 fresh",
                "fill to 500",
                "TokenizeStream 200 at 500",
                "Detokenize 50 in jobs, 20 per call",
                "rewrap to v2, 100 per call",
                "rewrap to v3, 100 per call",
            ]
        );
        for row in report.rows.iter().filter(|row| row.note.is_none()) {
            let what = &row.what;
            assert!(row.count > 0, "{what}");
            assert_eq!(row.answered_ok, row.count, "{what}: every call answered OK");
            assert_eq!(row.distinct_tokens, row.distinct_numbers, "{what}: one token per number");
            assert!(row.rss.is_some_and(|rss| rss > 0), "{what}: the vault's RSS is read");
            assert!(row.peak_rss.is_some_and(|peak| peak > 0), "{what}: and its peak");
            if row.unit != "numbers" {
                assert!(row.ceiling.is_some(), "{what}: a write phase has its ceiling");
            }
        }
        for row in &report.rows[..2] {
            assert_eq!(row.count, UNARY_CALLS as u64, "{}", row.what);
        }
        let detokenize = &report.rows[5];
        assert_eq!((detokenize.count, detokenize.released_matching), (RELEASES as u64, RELEASES as u64));
        for row in &report.rows[2..5] {
            assert!(row.bytes_per_token.is_some_and(|bytes| bytes > 0.0), "{}: bytes per token", row.what);
        }
        assert_eq!(report.stored_tokens, (2 * UNARY_CALLS + FILL_TO - 2 * UNARY_CALLS + STREAM) as u64);
        assert!(report.peak_rss > 0);
        assert!(report.bytes_per_token.is_some_and(|bytes| bytes > 0.0));
        for rewrap in &report.rows[6..] {
            let what = &rewrap.what;
            assert_eq!((rewrap.count, rewrap.answered_ok), (report.stored_tokens, report.stored_tokens), "{what}");
            let least_calls = report.stored_tokens.div_ceil(u64::from(REWRAP_BATCH));
            assert!(rewrap.calls.is_some_and(|calls| calls >= least_calls), "{what}: walked with the cursor");
            assert_eq!(rewrap.left_on_old_versions, Some(0), "{what}: nothing left under an older version");
            assert_eq!(rewrap.checked_releases, Some((RELEASES as u64, RELEASES as u64)), "{what}");
        }

        let table = report.table();
        assert!(table.lines().any(|line| line.starts_with("TokenizeStream 200 fresh")), "{table}");
        let json = report.json();
        assert_eq!(json["phases"].as_array().map(Vec::len), Some(report.rows.len()));
    }
}
