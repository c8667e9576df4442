//! Reviewing the log: `mnvault audit search` and `mnvault audit export`
//! read the database directly (vault running or stopped, no root key); an
//! export verifies on its own once the database is gone; the
//! `ListAuditEntries` filters; a filtered page reads its own entries'
//! tokens only.

use std::path::Path;

use clap::Parser as _;
use mnvault_client::{Code, ListAuditEntriesRequest, TokenFormat};
use mnvault_core::audit::line::AuditLine;
use mnvault_core::audit::{AuditDraft, AuditRecord, Operation};
use mnvault_core::id::Principal;
use mnvault_core::store::{AuditFilter, AUDIT_PAGE_TOKENS};

use crate::helpers::{approved_job, refusal, spawn_app, tokenize_fresh, valid_numbers, TestApp};

/// What the scenario left in the log.
struct Scenario {
    tokens: Vec<String>,
    job: String,
}

/// Two tenants, refused calls of two kinds, a job approved and released:
/// entries of every filter's kind, with checkpoints among them (the vault
/// signs every job change).
async fn scenario(app: &TestApp) -> Scenario {
    app.client("admin").await.create_tenant("other", "").await.unwrap();
    let payroll = app.client("payroll").await;
    let tokens = tokenize_fresh(app, 3).await;
    payroll.tokenize("other", &valid_numbers(1)[0], TokenFormat::Opaque).await.unwrap();
    refusal(payroll.tokenize("demo", "12345678901a8", TokenFormat::Opaque).await);
    refusal(app.client("filer").await.tokenize("demo", &valid_numbers(1)[0], TokenFormat::Opaque).await);
    let job = approved_job(app, &tokens[..2], 1).await;
    app.client("filer").await.detokenize(&job, vec![tokens[0].clone()]).await.unwrap();
    payroll.describe_token("demo", &tokens[2]).await.unwrap();
    Scenario { tokens, job }
}

/// `mnvault audit search ARGS --format jsonl`, parsed.
async fn search(app: &TestApp, args: &[&str]) -> Vec<AuditRecord> {
    let mut argv = vec!["audit", "search", "--format", "jsonl"];
    argv.extend_from_slice(args);
    let out = app.cli(&argv).await.unwrap();
    out.lines()
        .map(|line| match AuditLine::parse(line).unwrap() {
            AuditLine::Entry(entry) => entry,
            other => panic!("search printed a line that is not an entry: {other:?}"),
        })
        .collect()
}

fn seqs(entries: &[AuditRecord]) -> Vec<u64> {
    entries.iter().map(|entry| entry.seq).collect()
}

/// The seqs of `all` that `keep` keeps.
fn expected(all: &[AuditRecord], keep: impl Fn(&AuditRecord) -> bool) -> Vec<u64> {
    all.iter().filter(|entry| keep(entry)).map(|entry| entry.seq).collect()
}

/// Runs the CLI with no vault and no data directory at all.
async fn cli_alone(args: &[&str]) -> anyhow::Result<String> {
    let nowhere = tempfile::tempdir().unwrap();
    let mut argv = vec!["mnvault".to_owned()];
    argv.extend(args.iter().map(|arg| arg.to_string()));
    argv.extend(["--data-dir".to_owned(), nowhere.path().join("absent").display().to_string()]);
    let mut out = Vec::new();
    mnvault::cli::run(mnvault::cli::Cli::try_parse_from(argv)?, &mut out).await?;
    Ok(String::from_utf8(out)?)
}

fn path_text(path: &Path) -> &str {
    path.to_str().unwrap()
}

on_both_backends! {
    async fn search_by_each_filter_prints_exactly_the_matching_entries(backend) {
        let mut app = spawn_app(&backend).await;
        let Scenario { tokens, job } = scenario(&app).await;
        let all = search(&app, &[]).await;
        assert_eq!(seqs(&all), (1..=all.len() as u64).collect::<Vec<_>>(), "no filter: every entry, in order");

        let time = |entry: &AuditRecord| mnvault_core::clock::rfc3339(entry.time_ms);
        let (since, until) = (&all[2], &all[all.len() - 2]);
        let cases: Vec<(Vec<&str>, Vec<u64>)> = vec![
            (vec!["--tenant", "other"], expected(&all, |e| e.tenant == "other")),
            (vec!["--principal", "filer"], expected(&all, |e| e.principal == "filer")),
            (vec!["--token", &tokens[1]], expected(&all, |e| e.tokens.contains(&tokens[1]))),
            (vec!["--job", &job], expected(&all, |e| e.job_id == job)),
            (vec!["--operation", "filing.detokenize"], expected(&all, |e| e.operation == "filing.detokenize")),
            (vec!["--outcome", "denied"], expected(&all, |e| e.outcome == "denied")),
            (vec!["--outcome", "invalid"], expected(&all, |e| e.outcome == "invalid")),
            (vec!["--request-id", &all[4].request_id], vec![all[4].seq]),
            (vec!["--outcome", "ok", "--principal", "payroll", "--tenant", "demo"], expected(&all, |e| {
                e.outcome == "ok" && e.principal == "payroll" && e.tenant == "demo"
            })),
        ];
        let (since_text, until_text) = (time(since), time(until));
        let mut cases = cases;
        cases.push((
            vec!["--since", &since_text, "--until", &until_text],
            expected(&all, |e| e.time_ms >= since.time_ms && e.time_ms < until.time_ms),
        ));
        for (args, want) in &cases {
            assert!(!want.is_empty(), "the scenario has entries for {args:?}");
            let found = search(&app, args).await;
            assert_eq!(seqs(&found), *want, "jsonl for {args:?}");
            // The table: a header, then one aligned line per entry, seq first.
            let mut table_args = vec!["audit", "search"];
            table_args.extend_from_slice(args);
            let table = app.cli(&table_args).await.unwrap();
            let mut lines = table.lines();
            assert!(lines.next().unwrap().starts_with("     SEQ  TIME"), "{table}");
            let table_seqs: Vec<u64> = lines.map(|line| line.split_whitespace().next().unwrap().parse().unwrap()).collect();
            assert_eq!(table_seqs, *want, "table for {args:?}:\n{table}");
        }
        // Tokens are summarised in the table, whole in JSON lines.
        let released = search(&app, &["--operation", "filing.detokenize"]).await;
        assert_eq!(released[0].tokens, vec![tokens[0].clone()]);
        let created = app.cli(&["audit", "search", "--operation", "filing.create-job"]).await.unwrap();
        assert!(created.contains(&format!("{} +1", tokens[0])), "{created}");
        // --limit: the first ones.
        assert_eq!(seqs(&search(&app, &["--limit", "2"]).await), [1, 2]);

        // Filter values are parsed, and a refusal never repeats what was given.
        let number = &valid_numbers(1)[0];
        for (option, value) in [("--principal", number.as_str()), ("--token", "mnt_x"), ("--outcome", "refused"), ("--since", number.as_str())] {
            let error = format!("{:#}", app.cli(&["audit", "search", option, value]).await.unwrap_err());
            assert!(error.contains(option) && !error.contains(value), "{error}");
        }

        // The vault stopped: the same answers, straight from the database.
        app.stop().await;
        assert_eq!(seqs(&search(&app, &["--principal", "filer"]).await), cases[1].1);
    }

    async fn the_rpc_filters_by_principal_and_outcome(backend) {
        let app = spawn_app(&backend).await;
        scenario(&app).await;
        let auditor = app.client("auditor").await;
        let list = |principal: &str, outcome: &str| {
            let request = ListAuditEntriesRequest { principal: principal.into(), outcome: outcome.into(), ..Default::default() };
            let auditor = auditor.clone();
            async move { auditor.list_audit_entries(request).await }
        };
        let all = list("", "").await.unwrap().entries;
        let by_filer = list("filer", "").await.unwrap().entries;
        let want: Vec<u64> = all.iter().filter(|e| e.principal == "filer").map(|e| e.seq).collect();
        assert_eq!(by_filer.iter().map(|e| e.seq).collect::<Vec<_>>(), want);
        assert_eq!(by_filer.iter().map(|e| e.outcome.as_str()).collect::<Vec<_>>(), ["denied", "ok"]);
        let denied = list("filer", "denied").await.unwrap().entries;
        assert_eq!((denied.len(), denied[0].operation.as_str()), (1, "token.tokenize"));
        let refused: Vec<u64> = list("", "invalid").await.unwrap().entries.iter().map(|e| e.seq).collect();
        assert_eq!(refused, all.iter().filter(|e| e.outcome == "invalid").map(|e| e.seq).collect::<Vec<_>>());
        assert!(!refused.is_empty());
        assert_eq!(refusal(list("", "refused").await).0, Code::InvalidArgument);
        assert_eq!(refusal(list("not a principal", "").await).0, Code::InvalidArgument);
    }

    async fn an_export_verifies_on_its_own_after_the_database_is_gone(backend) {
        let mut app = spawn_app(&backend).await;
        let Scenario { tokens, .. } = scenario(&app).await;
        // More after the last match, so the export runs past it to the head.
        tokenize_fresh(&app, 2).await;
        let key = app.cli(&["signing-key", "export"]).await.unwrap().trim().to_owned();
        // Those entries are not signed yet: an export of them proves nothing, and says so.
        let scratch = tempfile::tempdir().unwrap();
        let unsigned = scratch.path().join("unsigned.jsonl");
        app.cli(&["audit", "export", "--out", path_text(&unsigned)]).await.unwrap();
        let error = cli_alone(&["audit", "verify", "--from", path_text(&unsigned), "--public-key", &key])
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("UNSIGNED: entries #"), "{error}");
        // Signed on demand, the head (the call's own entry) is covered.
        let saved = scratch.path().join("checkpoint.json");
        app.cli(&["audit", "checkpoint", "--out", path_text(&saved), "--as", "auditor"]).await.unwrap();
        let matching = search(&app, &["--token", &tokens[0]]).await.len();
        let kept = tempfile::tempdir().unwrap();
        let (full, by_token, released) =
            (kept.path().join("full.jsonl"), kept.path().join("by-token.jsonl"), kept.path().join("released.jsonl"));
        app.cli(&["audit", "export", "--out", path_text(&full)]).await.unwrap();
        let said = app.cli(&["audit", "export", "--out", path_text(&by_token), "--token", &tokens[0]]).await.unwrap();
        assert!(said.starts_with(&format!("exported {matching} matching entries")), "{said}");
        // The release alone: after the job's signed changes, so anchored at one.
        let said = app
            .cli(&["audit", "export", "--out", path_text(&released), "--principal", "filer", "--outcome", "ok"])
            .await
            .unwrap();
        assert!(said.starts_with("exported 1 matching entry") && said.contains("anchored at the checkpoint of #"), "{said}");
        // Never over an existing file.
        let again = app.cli(&["audit", "export", "--out", path_text(&full)]).await.unwrap_err().to_string();
        assert!(again.contains("exists"), "{again}");
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&by_token).unwrap().permissions().mode() & 0o777, 0o600);
            let names: Vec<_> = std::fs::read_dir(kept.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(names.len(), 3, "no temporary file left: {names:?}");
        }
        let read = |path: &Path| -> Vec<AuditLine> {
            std::fs::read_to_string(path).unwrap().lines().map(|line| AuditLine::parse(line).unwrap()).collect()
        };
        let last_seq = |lines: &[AuditLine]| {
            lines.iter().rev().find_map(|l| match l {
                AuditLine::Entry(e) => Some(e.seq),
                AuditLine::Stub { seq, .. } => Some(*seq),
                _ => None,
            })
        };
        let head = last_seq(&read(&full)).unwrap();
        let lines = read(&by_token);
        assert!(matches!(lines[0], AuditLine::SigningKey(_)));
        // The token's entries whole, every other entry of the range a stub, up to the head.
        let whole: Vec<AuditRecord> =
            lines.iter().filter_map(|l| if let AuditLine::Entry(e) = l { Some(e.clone()) } else { None }).collect();
        assert_eq!(whole.len(), matching);
        assert!(whole.iter().all(|entry| entry.tokens.contains(&tokens[0])));
        assert_eq!(last_seq(&lines), Some(head));
        assert!(matches!(read(&released)[1], AuditLine::Checkpoint(_)), "the anchor comes before any entry");

        // The vault and its database gone: only the files and the key remain.
        app.stop().await;
        drop(app);
        drop(backend);
        let verify = |path: &Path, key: &str| {
            let (path, key) = (path_text(path).to_owned(), key.to_owned());
            async move { cli_alone(&["audit", "verify", "--from", &path, "--public-key", &key]).await }
        };
        let AuditLine::Checkpoint(anchor) = &read(&released)[1] else { panic!("an anchor") };
        let anchor = anchor.seq;
        for (path, whole, intact) in [
            (&full, head as usize, format!("export intact: {head} entries, head")),
            (&by_token, matching, format!("export intact: {head} entries, head")),
            (&released, 1, format!("export intact: {} entries from #{}", head - anchor, anchor + 1)),
        ] {
            let verified = verify(path, &key).await.unwrap();
            assert!(verified.contains(&intact), "{verified}");
            assert!(verified.contains(&format!("entries whole: {whole};")), "{verified}");
        }

        // One entry line edited (who released the number): caught, that entry named.
        let release = whole.iter().find(|entry| entry.operation == "filing.detokenize").unwrap();
        let edited: Vec<String> = std::fs::read_to_string(&by_token)
            .unwrap()
            .lines()
            .map(|line| match AuditLine::parse(line).unwrap() {
                AuditLine::Entry(mut entry) if entry.seq == release.seq => {
                    entry.principal = "approver".into();
                    AuditLine::Entry(entry).to_json()
                }
                _ => line.to_owned(),
            })
            .collect();
        let tampered = kept.path().join("tampered.jsonl");
        std::fs::write(&tampered, edited.join("\n") + "\n").unwrap();
        let error = verify(&tampered, &key).await.unwrap_err().to_string();
        assert!(error.contains(&format!("entry #{}", release.seq)), "{error}");
        // And a key other than the vault's vouches for none of it.
        let stranger = mnvault_keys::VaultSigningKey::new(&mnvault_keys::KeyMaterial::generate()).public_key().to_string();
        assert!(verify(&by_token, &stranger).await.is_err());
    }

    async fn a_filtered_page_reads_the_tokens_of_its_own_entries_only(backend) {
        let app = spawn_app(&backend).await;
        let (alice, bob) = (Principal::parse("alice").unwrap(), Principal::parse("bob").unwrap());
        let draw = |count: usize| (0..count).map(|_| mnvault_core::mint::draw_token(mnvault_core::id::TokenFormat::Opaque)).collect::<Vec<_>>();
        let entry = |by: &Principal, tokens: Vec<mnvault_core::id::Token>| AuditDraft { tokens, ..AuditDraft::by(by, Operation::ListPurposes, None) };
        // Two matches with a few tokens each, and between them entries holding
        // more than a page's worth of tokens: a store that read the token rows
        // from the first match to the last would cut the page after the first.
        let (first, last) = (draw(2), draw(3));
        let first_seq = app.core().record(entry(&alice, first.clone())).await.unwrap();
        for _ in 0..2 {
            app.core().record(entry(&bob, draw(AUDIT_PAGE_TOKENS * 3 / 5))).await.unwrap();
        }
        let last_seq = app.core().record(entry(&alice, last.clone())).await.unwrap();
        let names = |tokens: &[mnvault_core::id::Token]| tokens.iter().map(|t| t.to_string()).collect::<Vec<_>>();

        let filter = AuditFilter { principal: Some(alice.clone()), limit: 10, ..Default::default() };
        let page = app.core().store().begin_read().await.unwrap().audit_entries(&filter).await.unwrap();
        let got: Vec<(u64, Vec<String>)> = page.into_iter().map(|e| (e.seq, e.tokens)).collect();
        assert_eq!(got, [(first_seq, names(&first)), (last_seq, names(&last))], "one page, each entry with its own tokens");

        // The same through the search command and the RPC.
        let found = search(&app, &["--principal", "alice"]).await;
        assert_eq!(found.iter().map(|e| (e.seq, e.tokens.clone())).collect::<Vec<_>>(), got);
        let listed = app.client("auditor").await
            .list_audit_entries(ListAuditEntriesRequest { principal: "alice".into(), ..Default::default() })
            .await
            .unwrap();
        assert_eq!(listed.entries.iter().map(|e| (e.seq, e.tokens.clone())).collect::<Vec<_>>(), got);
        assert_eq!(listed.next_after_seq, 0, "nothing more");
    }
}
