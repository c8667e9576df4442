//! The store contract, on each backend, from the same code: every step of
//! `mnvault_core::store`, and the rules that must hold with concurrent
//! writers (one token per number, one chain, release limits, one approval).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures::future::join_all;
use mnvault::store::{self, DatabaseLocation, OpenMode};
use mnvault_core::audit::{AuditDraft, Operation};
use mnvault_core::authz::{Policy, PrincipalSettings, Role};
use mnvault_core::id::{Principal, TenantId, Token, TokenFormat};
use mnvault_core::job::JobRequest;
use mnvault_core::keyring::create_audit_key;
use mnvault_core::number::MyNumber;
use mnvault_core::purpose::Purpose;
use mnvault_core::store::{AuditFilter, NewRecord};
use mnvault_core::text::FreeText;
use mnvault_core::{clock, VaultCore, VaultError};
use mnvault_keys::{BlindIndex, RootKeyFile, RootKeyProvider};

use crate::helpers::{valid_numbers, Backend};

/// A core on a fresh store of `backend`, with tenant `demo` and principals
/// `alice` and `bob` holding every role.
async fn fresh_core(backend: &Backend) -> (Arc<VaultCore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let location = match backend {
        Backend::Sqlite => DatabaseLocation::Sqlite(dir.path().join("vault.db")),
        Backend::Postgres(database) => DatabaseLocation::Postgres(database.url.clone()),
    };
    let store = store::open(&location, OpenMode::Initialise, std::time::Duration::from_secs(5)).await.unwrap();
    let provider: Arc<dyn RootKeyProvider> = Arc::new(RootKeyFile::create(&dir.path().join("root.key")).unwrap());
    create_audit_key(store.as_ref(), provider.as_ref(), clock::now_ms()).await.unwrap();
    let all = vec![Role::Payroll, Role::Requester, Role::Approver, Role::Filer, Role::KeyAdmin, Role::Auditor];
    let grant = PrincipalSettings { roles: all, tenants: vec!["*".into()] };
    let policy = Policy::new(
        &BTreeMap::from([("alice".into(), grant.clone()), ("bob".into(), grant)]),
        mnvault_core::authz::IdentitySource::CommonName,
    );
    let core = VaultCore::open(store, provider, policy).await.unwrap();
    let draft = AuditDraft::by(&alice(), Operation::CreateTenant, Some(&demo()));
    core.create_tenant(&alice(), &demo(), FreeText::default(), &draft).await.unwrap();
    (Arc::new(core), dir)
}

fn alice() -> Principal {
    Principal::parse("alice").unwrap()
}

fn bob() -> Principal {
    Principal::parse("bob").unwrap()
}

fn demo() -> TenantId {
    TenantId::parse("demo").unwrap()
}

fn parse_numbers(numbers: &[String]) -> Vec<MyNumber> {
    numbers.iter().map(|n| MyNumber::parse(n).unwrap()).collect()
}

async fn tokenize(core: &VaultCore, numbers: &[String]) -> Vec<Token> {
    let draft = AuditDraft::by(&alice(), Operation::TokenizeStream, Some(&demo()));
    let tokenized = core.tokenize(&alice(), &demo(), TokenFormat::Opaque, &parse_numbers(numbers), &draft).await;
    tokenized.unwrap().into_iter().map(|t| t.token).collect()
}

async fn approved_job(core: &VaultCore, tokens: &[Token], max_releases_per_token: u32) -> mnvault_core::id::JobId {
    let request = JobRequest {
        tenant: demo(),
        purpose: Purpose::WithholdingSlip,
        tokens: tokens.to_vec(),
        expires_at: clock::now_ms() + 3_600_000,
        max_releases_per_token,
        note: FreeText::default(),
    };
    let mut draft = AuditDraft::by(&alice(), Operation::CreateFilingJob, None);
    let job = core.create_job(&alice(), &request, &mut draft).await.unwrap();
    let mut draft = AuditDraft::by(&bob(), Operation::ApproveFilingJob, None);
    core.approve_job(&bob(), &job.terms.job_id, &mut draft).await.unwrap();
    job.terms.job_id
}

on_both_backends! {
    async fn every_step_reads_back_what_was_written(backend) {
        let (core, _dir) = fresh_core(&backend).await;
        let store = core.store().clone();
        // Tenants and system keys are never overwritten.
        let mut tx = store.begin_write().await.unwrap();
        let tenant = store.begin_read().await.unwrap().tenant(&demo()).await.unwrap().expect("demo exists");
        assert_eq!(tenant.record_keys.len(), 1);
        let again = mnvault_core::store::NewTenant {
            tenant: demo(),
            display_name: String::new(),
            created_at: 0,
            index_key: tenant.index_key.clone(),
            first_record_key: tenant.record_keys[0].1.clone(),
        };
        assert!(!tx.insert_tenant(&again).await.unwrap());
        assert!(!tx.insert_system_key("audit-chain", &tenant.index_key, 0).await.unwrap());
        // Records: a second row for a taken blind index or token is skipped.
        let token = |i: u8| Token::parse(&format!("mnt_{}", std::iter::repeat_n(char::from(b'a' + i), 26).collect::<String>())).unwrap();
        let record = |i: u8, index: u8| NewRecord {
            blind_index: BlindIndex([index; 32]),
            token: token(i),
            key_version: 1,
            sealed: vec![i; 40],
            tag: [i; 32],
        };
        tx.insert_records(&demo(), TokenFormat::Opaque, &[record(0, 0), record(1, 1)], 7).await.unwrap();
        tx.insert_records(&demo(), TokenFormat::Opaque, &[record(2, 0), record(1, 2)], 8).await.unwrap();
        let holders = tx
            .records_by_blind_index(&demo(), TokenFormat::Opaque, &[BlindIndex([1; 32]), BlindIndex([2; 32]), BlindIndex([0; 32])])
            .await
            .unwrap();
        let holder = |i: usize| holders[i].as_ref().map(|row| (row.token.clone(), row.blind_index.clone(), row.tag.clone()));
        assert_eq!(holders.len(), 3);
        assert_eq!(holder(0), Some((token(1).to_string(), vec![1; 32], Some(vec![1; 32]))));
        assert_eq!(holder(1), None);
        assert_eq!(holder(2), Some((token(0).to_string(), vec![0; 32], Some(vec![0; 32]))));
        let existing = tx.existing_tokens(&demo(), &[token(0), token(2)]).await.unwrap();
        assert_eq!(existing, HashSet::from([token(0).to_string()]));
        let sealed = tx.sealed_records(&demo(), &[token(1)]).await.unwrap();
        assert_eq!(sealed.len(), 1);
        assert_eq!((sealed[0].0.token.as_str(), &sealed[0].1), (token(1).as_str(), &vec![1; 40]));
        let row = tx.record(&demo(), &token(0)).await.unwrap().unwrap();
        assert_eq!((row.format.as_str(), row.key_version, row.created_at), ("opaque", 1, 7));
        assert_eq!((row.blind_index, row.tag), (vec![0; 32], Some(vec![0; 32])));
        // Two records of one insert drew the same token for different numbers: one is
        // written, and the other number has no holder (the core then draws again); neither
        // index may answer with the other's row.
        tx.insert_records(&demo(), TokenFormat::Opaque, &[record(4, 4), record(4, 5)], 8).await.unwrap();
        let asked = [BlindIndex([4; 32]), BlindIndex([5; 32])];
        let holders = tx.records_by_blind_index(&demo(), TokenFormat::Opaque, &asked).await.unwrap();
        for (index, holder) in asked.iter().zip(&holders) {
            if let Some(row) = holder {
                assert_eq!((row.token.as_str(), &row.blind_index), (token(4).as_str(), &index.0.to_vec()));
            }
        }
        assert_eq!(holders.iter().flatten().count(), 1, "one of the two was written");
        // The chain head moves only as told, and commits with the rest.
        let head = tx.lock_chain_head().await.unwrap();
        assert_eq!(head.seq, 1, "the tenant's creation is entry 1");
        tx.commit().await.unwrap();
        assert_eq!(store.begin_read().await.unwrap().record(&demo(), &token(1)).await.unwrap().unwrap().created_at, 7);
        // A dropped transaction leaves nothing behind.
        let mut tx = store.begin_write().await.unwrap();
        tx.insert_records(&demo(), TokenFormat::Opaque, &[record(3, 3)], 9).await.unwrap();
        drop(tx);
        assert!(store.begin_read().await.unwrap().record(&demo(), &token(3)).await.unwrap().is_none());
    }

    async fn jobs_count_releases_up_to_their_limit_and_entries_filter(backend) {
        let (core, _dir) = fresh_core(&backend).await;
        let tokens = tokenize(&core, &valid_numbers(3)).await;
        let job_id = approved_job(&core, &tokens[..2], 2).await;
        let store = core.store().clone();
        let mut tx = store.begin_write().await.unwrap();
        let row = tx.lock_job(&job_id).await.unwrap().unwrap();
        assert_eq!(row.tokens.len(), 2);
        assert_eq!(row.approved_by.as_deref(), Some("bob"));
        // The approval's entry is the job's last change, and its state names it.
        let by_job = AuditFilter { job_id: Some(job_id.clone()), limit: 10, ..Default::default() };
        let approval = tx.audit_entries(&by_job).await.unwrap().pop().expect("approved");
        assert_eq!((approval.operation.as_str(), approval.seq), ("filing.approve-job", u64::try_from(row.state_seq).unwrap()));
        tx.set_job_state(&job_id, 99, &[9; 32]).await.unwrap();
        assert_eq!(tx.count_releases(&job_id, &tokens[..2], 2).await.unwrap(), 2);
        assert_eq!(tx.count_releases(&job_id, &tokens[..1], 2).await.unwrap(), 1);
        // Over the limit, or not listed: not counted.
        assert_eq!(tx.count_releases(&job_id, &tokens, 2).await.unwrap(), 1);
        tx.commit().await.unwrap();
        let row = store.begin_read().await.unwrap().job(&job_id).await.unwrap().unwrap();
        assert_eq!(row.tokens.iter().map(|(_, r)| *r).collect::<Vec<_>>(), vec![2, 2]);
        assert_eq!((row.state_seq, row.state_tag), (99, Some(vec![9; 32])));
        // Entries by token and by job: exactly the matching ones, with their tokens.
        let mut read = store.begin_read().await.unwrap();
        let by_token = read.audit_entries(&AuditFilter { token: Some(tokens[2].clone()), limit: 100, ..Default::default() }).await.unwrap();
        assert_eq!(by_token.len(), 1);
        assert_eq!(by_token[0].tokens, tokens.iter().map(|t| t.to_string()).collect::<Vec<_>>());
        let by_job = read.audit_entries(&AuditFilter { job_id: Some(job_id.clone()), limit: 100, ..Default::default() }).await.unwrap();
        assert_eq!(by_job.iter().map(|e| e.operation.as_str()).collect::<Vec<_>>(), ["filing.create-job", "filing.approve-job"]);
        let verdict = core.verify_chain(&alice()).await.unwrap();
        assert!(verdict.is_ok(), "{verdict:?}");
    }

    async fn concurrent_writers_get_one_token_per_number(backend) {
        let (core, _dir) = fresh_core(&backend).await;
        let numbers = valid_numbers(20);
        let runs = join_all((0..6).map(|_| {
            let (core, numbers) = (core.clone(), numbers.clone());
            async move { tokenize(&core, &numbers).await }
        }))
        .await;
        assert!(runs.iter().all(|run| run == &runs[0]), "all writers agree on every token");
        assert_eq!(runs[0].iter().collect::<HashSet<_>>().len(), 20);
    }

    async fn concurrent_single_calls_share_commits_yet_each_is_answered_and_audited_alone(backend) {
        let (core, _dir) = fresh_core(&backend).await;
        let other = TenantId::parse("other").unwrap();
        let draft = AuditDraft::by(&alice(), Operation::CreateTenant, Some(&other));
        core.create_tenant(&alice(), &other, FreeText::default(), &draft).await.unwrap();
        let numbers = valid_numbers(8);
        // One number already known, so batches mix known and new numbers.
        let first = tokenize(&core, &numbers[..1]).await[0].clone();
        // Each number three times, in both tenants and both formats, all at once:
        // the group commit puts calls of different tenants, formats and the
        // same number into one transaction.
        let mut calls = Vec::new();
        for tenant in [demo(), other.clone()] {
            for format in [TokenFormat::Opaque, TokenFormat::LegacyDigits] {
                for number in &numbers {
                    for _ in 0..3 {
                        calls.push((tenant.clone(), format, number.clone(), mnvault_core::mint::draw_request_id()));
                    }
                }
            }
        }
        let answers = join_all(calls.iter().cloned().map(|(tenant, format, number, request_id)| {
            let core = core.clone();
            tokio::spawn(async move {
                let draft = AuditDraft {
                    request_id: Some(request_id),
                    ..AuditDraft::by(&alice(), Operation::Tokenize, Some(&tenant))
                };
                let number = MyNumber::parse(&number).unwrap();
                let mut tokenized = core.tokenize(&alice(), &tenant, format, &[number], &draft).await.unwrap();
                assert_eq!(tokenized.len(), 1);
                tokenized.pop().unwrap()
            })
        }))
        .await;
        let answers: Vec<_> = answers.into_iter().map(|answer| answer.unwrap()).collect();
        // Per tenant, format and number: one token for every call, created by exactly one
        // of them (none for the number known before), distinct from every other number's.
        let mut by_key: BTreeMap<(String, &'static str, String), Vec<&mnvault_core::vault::Tokenized>> = BTreeMap::new();
        for ((tenant, format, number, _), answer) in calls.iter().zip(&answers) {
            by_key.entry((tenant.to_string(), format.id(), number.clone())).or_default().push(answer);
        }
        assert_eq!(by_key.len(), 32);
        let mut tokens = HashSet::new();
        for ((tenant, format, number), answers) in &by_key {
            assert!(answers.iter().all(|a| a.token == answers[0].token), "one token for {tenant}/{format}");
            let created = answers.iter().filter(|a| a.created).count();
            let known_before = tenant == "demo" && *format == "opaque" && number == &numbers[0];
            assert_eq!(created, usize::from(!known_before), "created once for {tenant}/{format}");
            if known_before {
                assert_eq!(answers[0].token, first);
            }
            assert!(tokens.insert(answers[0].token.clone()), "tokens differ across tenants, formats and numbers");
        }
        // Each call has its own audit entry, under its tenant, naming its token alone.
        let mut read = core.store().begin_read().await.unwrap();
        for ((tenant, _, _, request_id), answer) in calls.iter().zip(&answers) {
            let filter = AuditFilter { request_id: Some(request_id.clone()), limit: 10, ..Default::default() };
            let entries = read.audit_entries(&filter).await.unwrap();
            assert_eq!(entries.len(), 1, "one entry per call");
            assert_eq!(entries[0].operation, "token.tokenize");
            assert_eq!(entries[0].tenant, tenant.as_str());
            assert_eq!(entries[0].tokens, vec![answer.token.to_string()]);
        }
        drop(read);
        let verified = core.verify_chain(&alice()).await.unwrap().expect("the chain verifies");
        assert_eq!(verified.entries, 3 + calls.len() as u64);
    }

    async fn a_page_of_audit_entries_holds_a_bounded_number_of_tokens(backend) {
        use mnvault_core::store::AUDIT_PAGE_TOKENS;
        let (core, _dir) = fresh_core(&backend).await;
        // Three entries of 0.6 of a page's tokens each, and one without tokens.
        let per_entry = AUDIT_PAGE_TOKENS * 3 / 5;
        let mut seqs = Vec::new();
        for entry in 0..4 {
            let tokens = if entry == 3 { Vec::new() } else { (0..per_entry).map(|_| mnvault_core::mint::draw_token(TokenFormat::Opaque)).collect() };
            let draft = AuditDraft { tokens, ..AuditDraft::by(&alice(), Operation::ListPurposes, None) };
            seqs.push(core.record(draft).await.unwrap());
        }
        let mut read = core.store().begin_read().await.unwrap();
        let mut pages = Vec::new();
        let mut after_seq = seqs[0] - 1;
        while after_seq < seqs[3] {
            let page = read.audit_entries(&AuditFilter { after_seq, limit: 100, ..Default::default() }).await.unwrap();
            after_seq = page.last().expect("a page is never empty before the head").seq;
            pages.push(page.iter().map(|entry| (entry.seq, entry.tokens.len())).collect::<Vec<_>>());
        }
        // The second entry brings the first page past the bound: the third starts the next page.
        assert_eq!(
            pages,
            vec![vec![(seqs[0], per_entry), (seqs[1], per_entry)], vec![(seqs[2], per_entry), (seqs[3], 0)]],
        );
        drop(read);
        assert!(core.verify_chain(&alice()).await.unwrap().is_ok(), "verification pages the same way");
    }

    async fn concurrent_appends_form_one_chain_without_gap_or_fork(backend) {
        let (core, _dir) = fresh_core(&backend).await;
        let seqs = join_all((0..40).map(|_| {
            let core = core.clone();
            async move { core.record(AuditDraft::by(&alice(), Operation::ListPurposes, None)).await.unwrap() }
        }))
        .await;
        let distinct: HashSet<u64> = seqs.iter().copied().collect();
        assert_eq!(distinct, (2..=41).collect::<HashSet<u64>>(), "no two appends share a position");
        assert_eq!(core.verify_chain(&alice()).await.unwrap().unwrap().entries, 41);
    }

    async fn concurrent_releases_hold_the_limit_and_one_approval_wins(backend) {
        let (core, _dir) = fresh_core(&backend).await;
        let tokens = tokenize(&core, &valid_numbers(5)).await;
        let job_id = approved_job(&core, &tokens, 2).await;
        let releases = join_all((0..8).map(|_| {
            let (core, job_id) = (core.clone(), job_id.clone());
            async move {
                let mut draft = AuditDraft::by(&alice(), Operation::Detokenize, None);
                core.release(&alice(), &job_id, &[], &mut draft).await
            }
        }))
        .await;
        let released: usize = releases.iter().filter_map(|r| r.as_ref().ok()).map(Vec::len).sum();
        assert_eq!(released, 10, "5 tokens, twice each");
        assert!(releases.iter().filter_map(|r| r.as_ref().err()).all(|e| matches!(e, VaultError::FailedPrecondition(_))));

        // Approval: two approvers at once, exactly one wins; the creator never does.
        let request = JobRequest {
            tenant: demo(),
            purpose: Purpose::WithholdingSlip,
            tokens: tokens.clone(),
            expires_at: clock::now_ms() + 3_600_000,
            max_releases_per_token: 1,
            note: FreeText::default(),
        };
        let mut draft = AuditDraft::by(&alice(), Operation::CreateFilingJob, None);
        let job = core.create_job(&alice(), &request, &mut draft).await.unwrap();
        let mut draft = AuditDraft::by(&alice(), Operation::ApproveFilingJob, None);
        let own = core.approve_job(&alice(), &job.terms.job_id, &mut draft).await;
        assert!(matches!(own, Err(VaultError::PermissionDenied(_))), "{own:?}");
        let approvals = join_all((0..4).map(|_| {
            let (core, job_id) = (core.clone(), job.terms.job_id.clone());
            async move {
                let mut draft = AuditDraft::by(&bob(), Operation::ApproveFilingJob, None);
                core.approve_job(&bob(), &job_id, &mut draft).await
            }
        }))
        .await;
        assert_eq!(approvals.iter().filter(|a| a.is_ok()).count(), 1, "{approvals:?}");
    }
}

on_both_backends! {
    /// `rewrap_records` writes a record only where its row still has the
    /// version and tag it was read with, however many share a statement.
    async fn a_rewrap_writes_only_rows_still_as_read(backend) {
        use mnvault_core::store::RewrappedRecord;
        let (core, _dir) = fresh_core(&backend).await;
        // 75 records: statements of 64, 8 and 1 records on SQLite.
        let tokens = tokenize(&core, &valid_numbers(75)).await;
        let rows = core.store().begin_read().await.unwrap().sealed_records(&demo(), &tokens).await.unwrap();
        assert_eq!(rows.len(), 75);
        let (stale_tag, stale_version) = (rows[3].0.token.clone(), rows[70].0.token.clone());
        let rewrapped: Vec<RewrappedRecord> = rows
            .iter()
            .enumerate()
            .map(|(i, (row, _))| {
                let mut old_tag = row.tag.clone().unwrap();
                let mut old_version = row.key_version;
                if row.token == stale_tag {
                    old_tag[0] ^= 1;
                }
                if row.token == stale_version {
                    old_version += 1;
                }
                RewrappedRecord {
                    token: Token::parse(&row.token).unwrap(),
                    old_version,
                    old_tag,
                    key_version: 7,
                    sealed: format!("sealed-{i}").into_bytes(),
                    tag: [i as u8; 32],
                }
            })
            .collect();
        let mut tx = core.store().begin_write().await.unwrap();
        assert_eq!(tx.rewrap_records(&demo(), &rewrapped).await.unwrap(), 73);
        tx.commit().await.unwrap();

        let after = core.store().begin_read().await.unwrap().sealed_records(&demo(), &tokens).await.unwrap();
        let before: std::collections::HashMap<_, _> = rows.iter().map(|(row, sealed)| (row.token.clone(), (row, sealed))).collect();
        for (row, sealed) in &after {
            let i = rows.iter().position(|(r, _)| r.token == row.token).unwrap();
            if row.token == stale_tag || row.token == stale_version {
                let (old_row, old_sealed) = before[&row.token];
                assert_eq!((row.key_version, &row.tag, sealed), (old_row.key_version, &old_row.tag, old_sealed), "left as it was");
            } else {
                assert_eq!(row.key_version, 7);
                assert_eq!(sealed, &format!("sealed-{i}").into_bytes());
                assert_eq!(row.tag.as_deref(), Some(&[i as u8; 32][..]));
            }
        }
    }
}
