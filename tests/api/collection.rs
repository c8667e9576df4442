//! Collections (issue 12) over gRPC, through the real server: payroll asks,
//! the employee's numbers arrive (here straight through the core's submit,
//! as the page calls it; `browser` drives the page itself), payroll gets
//! tokens that detokenize in a job to what was typed, and every step is
//! audited without a number.

use futures::StreamExt;
use mnvault::config::Settings;
use mnvault_client::collection::{Collection, CollectionState, NewCollection};
use mnvault_client::{Code, FilingJobState, TokenFormat};
use mnvault_core::audit::{AuditDraft, Operation};
use mnvault_core::collection::{LinkOutcome, LinkSecret, SubmitOutcome, UnusableLink};
use mnvault_core::number::MyNumber;

use crate::helpers::{approved_job, refusal, spawn_app_with, valid_numbers, Backend, TestApp};

/// A vault in the compatibility mode whose collection page listens on a
/// free loopback port.
pub(crate) async fn spawn_with_page(backend: &Backend) -> TestApp {
    spawn_app_with(backend, |settings: &mut Settings| {
        settings.collection.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await
}

/// What payroll asks for: the employee and `dependants` children.
pub(crate) fn asked(dependants: usize, lifetime_seconds: u64) -> NewCollection {
    let mut relations = vec!["employee".to_owned()];
    relations.extend(std::iter::repeat_n("child".to_owned(), dependants));
    NewCollection {
        reference: "emp-kato".into(),
        relations,
        purposes: vec!["withholding-slip".into(), "dependent-deduction-declaration".into()],
        lifetime_seconds,
        reissue_token: None,
    }
}

/// The secret at the end of a link.
pub(crate) fn secret_of(link: &str) -> LinkSecret {
    let secret = link.rsplit('/').next().unwrap();
    LinkSecret::parse(secret).unwrap_or_else(|| panic!("the link ends in a secret: {link}"))
}

/// Submits `numbers` for `link` as the page does.
pub(crate) async fn submit(app: &TestApp, link: &str, numbers: &[String]) -> SubmitOutcome {
    let numbers: Vec<MyNumber> = numbers.iter().map(|n| MyNumber::parse(n).unwrap()).collect();
    let mut draft = AuditDraft::new(Operation::SubmitCollection);
    app.core().submit_collection(&secret_of(link), &numbers, &mut draft).await.unwrap()
}

async fn open(app: &TestApp, link: &str) -> LinkOutcome {
    let mut draft = AuditDraft::new(Operation::OpenCollection);
    app.core().open_collection(&secret_of(link), &mut draft).await.unwrap()
}

fn state(collection: &Collection) -> CollectionState {
    CollectionState::try_from(collection.state).unwrap()
}

fn tokens(collection: &Collection) -> Vec<String> {
    collection.numbers.iter().map(|n| n.token.clone()).collect()
}

/// The numbers a job releases for `tokens`, in their order.
pub(crate) async fn released(app: &TestApp, tokens: &[String]) -> Vec<String> {
    let job = approved_job(app, tokens, 1).await;
    let filer = app.client("filer").await;
    let answers = filer.detokenize(&job, tokens.to_vec()).await.unwrap();
    let state = filer.get_filing_job(&job).await.unwrap().state;
    assert_eq!(FilingJobState::try_from(state).unwrap(), FilingJobState::Approved);
    tokens
        .iter()
        .map(|token| {
            let answer = answers.iter().find(|a| &a.token == token).unwrap();
            secrecy::ExposeSecret::expose_secret(&answer.number).to_owned()
        })
        .collect()
}

on_both_backends! {
    async fn payroll_gets_tokens_that_detokenize_to_the_numbers_typed(backend) {
        let app = spawn_with_page(&backend).await;
        let payroll = app.client("payroll").await;
        let created = payroll.create_collection("demo", asked(1, 0)).await.unwrap();
        let collection = created.collection.unwrap();
        assert!(created.link.starts_with("https://127.0.0.1:"), "{}", created.link);
        assert!(collection.collection_id.starts_with("col_"));
        assert_eq!(state(&collection), CollectionState::Open);
        assert_eq!(tokens(&collection), vec![String::new(), String::new()], "no token before the submit");

        let LinkOutcome::Open(form) = open(&app, &created.link).await else { panic!("the link is open") };
        assert_eq!(form.company.as_str(), "Demo tenant (dev)", "the page names the tenant");
        assert_eq!(form.asked.len(), 2);

        let numbers = valid_numbers(2);
        assert_eq!(submit(&app, &created.link, &numbers).await, SubmitOutcome::Submitted { numbers: 2 });
        let fetched = payroll.collection("demo", &collection.collection_id).await.unwrap();
        assert_eq!(state(&fetched), CollectionState::Submitted);
        let tokens = tokens(&fetched);
        assert!(tokens.iter().all(|t| t.starts_with("mnt_")), "{tokens:?}");
        assert_eq!(released(&app, &tokens).await, numbers, "each token holds the number typed for it");
        // No byte the vault wrote holds a collected number.
        crate::integrity::assert_no_number_in(&app, &numbers).await;

        // The link works once: a second submit stores nothing, and reads as an unknown link.
        // (One number for a form of two: the link's state answers first.)
        let again = submit(&app, &created.link, &valid_numbers(1)).await;
        assert_eq!(again, SubmitOutcome::Unusable(UnusableLink::UnknownOrUsed));
        let LinkOutcome::Unusable(used) = open(&app, &created.link).await else { panic!("used") };
        assert_eq!(used, UnusableLink::UnknownOrUsed);
        let unknown = LinkSecret::draw();
        let mut draft = AuditDraft::new(Operation::OpenCollection);
        let LinkOutcome::Unusable(never) = app.core().open_collection(&unknown, &mut draft).await.unwrap() else {
            panic!("an unknown link")
        };
        assert_eq!(never, used, "unknown and used links read the same");
        assert_eq!(tokens, crate::collection::tokens(&payroll.collection("demo", &collection.collection_id).await.unwrap()));

        // Every step is in the log: created, opened, submitted (naming the tokens), fetched.
        let entries = app.audit_entries().await;
        let by = |operation: &str| entries.iter().filter(|e| e.operation == operation).collect::<Vec<_>>();
        assert_eq!(by("collection.create").len(), 1);
        let opened = by("collection.open");
        assert_eq!(opened.len(), 2, "opened, then refused once used; an unknown link writes nothing");
        assert_eq!((opened[0].outcome.as_str(), opened[1].outcome.as_str()), ("ok", "denied"));
        let submits = by("collection.submit");
        assert_eq!(submits.len(), 2, "the submit and the refused second one");
        assert_eq!(submits[0].tokens, tokens);
        assert_eq!(submits[0].principal, "mnvault-collection-page");
        assert_eq!(submits[1].outcome, "denied");
        assert!(by("collection.get").iter().any(|e| e.tokens == tokens), "the fetch names what it handed out");
    }

    async fn watch_sends_each_collection_as_it_settles_then_ends(backend) {
        let app = spawn_with_page(&backend).await;
        let payroll = app.client("payroll").await;
        let first = payroll.create_collection("demo", asked(0, 0)).await.unwrap();
        let second = payroll.create_collection("demo", asked(0, 0)).await.unwrap();
        let ids: Vec<String> =
            [&first, &second].iter().map(|c| c.collection.as_ref().unwrap().collection_id.clone()).collect();
        let mut watch = payroll.watch_collections("demo", ids.clone()).await.unwrap();

        let number = valid_numbers(1);
        submit(&app, &first.link, &number).await;
        let sent = watch.next().await.unwrap().unwrap();
        assert_eq!(sent.collection_id, ids[0]);
        assert_eq!(state(&sent), CollectionState::Submitted);
        assert_eq!(released(&app, &tokens(&sent)).await, number);

        let cancelled = payroll.cancel_collection("demo", &ids[1]).await.unwrap();
        assert_eq!(state(&cancelled), CollectionState::Cancelled);
        let sent = watch.next().await.unwrap().unwrap();
        assert_eq!((sent.collection_id.as_str(), state(&sent)), (ids[1].as_str(), CollectionState::Cancelled));
        assert!(watch.next().await.is_none(), "the watch ends once every collection settled");
        let LinkOutcome::Unusable(refused) = open(&app, &second.link).await else { panic!("cancelled") };
        assert_eq!(refused, UnusableLink::Cancelled);
        let (code, _) = refusal(payroll.cancel_collection("demo", &ids[1]).await);
        assert_eq!(code, Code::FailedPrecondition, "a settled collection is not cancelled again");
    }

    async fn an_expired_link_refuses_and_its_expiry_is_audited(backend) {
        let app = spawn_with_page(&backend).await;
        let payroll = app.client("payroll").await;
        let created = payroll.create_collection("demo", asked(0, 1)).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
        let submitted = submit(&app, &created.link, &valid_numbers(1)).await;
        assert_eq!(submitted, SubmitOutcome::Unusable(UnusableLink::Expired));
        let LinkOutcome::Unusable(refused) = open(&app, &created.link).await else { panic!("expired") };
        assert_eq!(refused, UnusableLink::Expired);
        let id = created.collection.unwrap().collection_id;
        let fetched = payroll.collection("demo", &id).await.unwrap();
        assert_eq!(state(&fetched), CollectionState::Expired);
        assert!(fetched.numbers.iter().all(|n| n.token.is_empty()));
        let entries = app.audit_entries().await;
        let expiries: Vec<_> = entries.iter().filter(|e| e.operation == "collection.expire").collect();
        assert_eq!(expiries.len(), 1, "settled as expired once, however often it was read");
    }

    async fn only_the_tenants_payroll_may_ask_and_bad_requests_are_refused(backend) {
        let app = spawn_with_page(&backend).await;
        let payroll = app.client("payroll").await;
        for name in ["requester", "approver", "filer", "auditor"] {
            let (code, _) = refusal(app.client(name).await.create_collection("demo", asked(0, 0)).await);
            assert_eq!(code, Code::PermissionDenied, "{name}");
        }
        let number = valid_numbers(1).remove(0);
        let bad = [
            NewCollection { reference: format!("emp {number}"), ..asked(0, 0) },
            NewCollection { relations: vec!["employee".into(), "neighbour".into()], ..asked(0, 0) },
            NewCollection { relations: vec![], ..asked(0, 0) },
            NewCollection { relations: vec!["child".into(); 17], ..asked(0, 0) },
            NewCollection { purposes: vec![], ..asked(0, 0) },
            NewCollection { purposes: vec!["tenant-export".into()], ..asked(0, 0) },
            NewCollection { lifetime_seconds: 31 * 24 * 3600, ..asked(0, 0) },
        ];
        for request in bad {
            let (code, message) = refusal(payroll.create_collection("demo", request).await);
            assert_eq!(code, Code::InvalidArgument, "{message}");
            assert!(!message.contains(&number), "a refusal never repeats a number");
        }
        let (code, _) = refusal(payroll.collection("demo", "col_abcdefghijklmnop").await);
        assert_eq!(code, Code::NotFound);
        let log = format!("{:?}", app.audit_entries().await);
        assert!(!log.contains(&number), "no entry holds the number");
    }

    async fn a_vault_without_a_page_opens_no_collection(backend) {
        let app = spawn_app_with(&backend, |_| {}).await;
        let (code, message) = refusal(app.client("payroll").await.create_collection("demo", asked(0, 0)).await);
        assert_eq!(code, Code::FailedPrecondition);
        assert!(message.contains("[collection]"), "{message}");
    }

    async fn a_collection_row_edited_in_the_database_is_refused(backend) {
        let app = spawn_with_page(&backend).await;
        let payroll = app.client("payroll").await;
        let created = payroll.create_collection("demo", asked(0, 0)).await.unwrap();
        let id = created.collection.unwrap().collection_id;
        // A database writer lengthens the link's life.
        app.database().await.exec("UPDATE collections SET expires_at = expires_at + 1000").await;
        let (code, _) = refusal(payroll.collection("demo", &id).await);
        assert_eq!(code, Code::DataLoss);
        let numbers: Vec<MyNumber> = valid_numbers(1).iter().map(|n| MyNumber::parse(n).unwrap()).collect();
        let mut draft = AuditDraft::new(Operation::SubmitCollection);
        let refused = app.core().submit_collection(&secret_of(&created.link), &numbers, &mut draft).await;
        assert!(matches!(refused, Err(mnvault_core::VaultError::DataLoss(_))), "{refused:?}");
        assert!(app.integrity_failures() >= 2);
    }
}

on_both_backends! {
    async fn a_shredded_tenants_links_read_as_cancelled(backend) {
        let app = spawn_with_page(&backend).await;
        let created = app.client("payroll").await.create_collection("demo", asked(0, 0)).await.unwrap();
        app.client("admin").await.shred_tenant("demo").await.unwrap();
        let LinkOutcome::Unusable(refused) = open(&app, &created.link).await else { panic!("shredded") };
        assert_eq!(refused, UnusableLink::Cancelled);
    }
}

on_both_backends! {
    async fn a_collection_row_put_back_from_before_its_submit_does_not_reopen_the_link(backend) {
        let app = spawn_with_page(&backend).await;
        let payroll = app.client("payroll").await;
        let created = payroll.create_collection("demo", asked(0, 0)).await.unwrap();
        let id = created.collection.unwrap().collection_id;
        // A database writer keeps the open row, with its valid tag...
        let mut db = app.database().await;
        db.exec("CREATE TABLE saved AS SELECT * FROM collections").await;
        let first = valid_numbers(1);
        assert_eq!(submit(&app, &created.link, &first).await, SubmitOutcome::Submitted { numbers: 1 });
        let tokens = tokens(&payroll.collection("demo", &id).await.unwrap());
        // ...and puts it back after the submit.
        db.exec(
            "UPDATE collections SET state = (SELECT state FROM saved), settled_at = (SELECT settled_at FROM saved), \
             tokens = (SELECT tokens FROM saved), changed_seq = (SELECT changed_seq FROM saved), \
             tag = (SELECT tag FROM saved)",
        )
        .await;
        let failures = app.integrity_failures();
        let numbers: Vec<MyNumber> = valid_numbers(1).iter().map(|n| MyNumber::parse(n).unwrap()).collect();
        let mut draft = AuditDraft::new(Operation::SubmitCollection);
        let refused = app.core().submit_collection(&secret_of(&created.link), &numbers, &mut draft).await;
        assert!(matches!(refused, Err(mnvault_core::VaultError::DataLoss(_))), "{refused:?}");
        let (code, _) = refusal(payroll.cancel_collection("demo", &id).await);
        assert_eq!(code, Code::DataLoss, "a cancel reads the row as a decision does");
        let (code, _) = refusal(payroll.collection("demo", &id).await);
        assert_eq!(code, Code::DataLoss, "a read refuses a row older than what this vault verified");
        assert!(app.integrity_failures() > failures);
        assert_eq!(released(&app, &tokens).await, first, "the first submit's token still holds its number");
    }
}

/// A re-issue of `token`: the employee's one new number.
fn reissue_of(token: &str) -> NewCollection {
    NewCollection { reissue_token: Some(token.to_owned()), ..asked(0, 0) }
}

/// The page's refusal of a submit, as the core answers it.
async fn refused_submit(app: &TestApp, link: &str, number: &str) -> mnvault_core::VaultError {
    let numbers = [MyNumber::parse(number).unwrap()];
    let mut draft = AuditDraft::new(Operation::SubmitCollection);
    app.core().submit_collection(&secret_of(link), &numbers, &mut draft).await.unwrap_err()
}

on_both_backends! {
    /// A number the municipality re-issued goes under the token payroll
    /// holds; the old one stays, under a token of its own that follows the
    /// first one's retention, and only a job releases either.
    async fn a_reissue_keeps_the_token_and_the_old_number_under_its_own(backend) {
        let app = spawn_with_page(&backend).await;
        let payroll = app.client("payroll").await;
        let [old, new, someone_elses]: [String; 3] = valid_numbers(3).try_into().unwrap();
        let token = payroll.tokenize("demo", &old, TokenFormat::Opaque).await.unwrap();
        let other = payroll.tokenize("demo", &someone_elses, TokenFormat::Opaque).await.unwrap();

        // A re-issue asks for exactly one number, of a token the tenant holds.
        let two = NewCollection { relations: vec!["employee".into(), "child".into()], ..reissue_of(&token) };
        assert_eq!(refusal(payroll.create_collection("demo", two).await).0, Code::InvalidArgument);
        let unknown = "mnt_abcdefghijklmnopqrstuvwxyz";
        assert_eq!(refusal(payroll.create_collection("demo", reissue_of(unknown)).await).0, Code::NotFound);

        let created = payroll.create_collection("demo", reissue_of(&token)).await.unwrap();
        let id = created.collection.as_ref().unwrap().collection_id.clone();
        let described = payroll.describe_token("demo", &token).await.unwrap();
        // A database writer keeps the token's sealed old number, to put it back later.
        let mut db = app.database().await;
        db.exec(&format!("CREATE TABLE saved AS SELECT sealed FROM records WHERE token = '{token}'")).await;
        assert_eq!(created.collection.unwrap().reissue_token, token);
        let LinkOutcome::Open(form) = open(&app, &created.link).await else { panic!("the link is open") };
        assert!(form.reissue, "the page asks for the new number");

        // The old number, or one another token holds, is refused; the link stays open.
        for held in [&old, &someone_elses] {
            let refused = refused_submit(&app, &created.link, held).await;
            assert!(matches!(refused, mnvault_core::VaultError::InvalidArgument(_)), "{refused:?}");
        }
        assert_eq!(submit(&app, &created.link, std::slice::from_ref(&new)).await, SubmitOutcome::Submitted {
            numbers: 1
        });

        let fetched = payroll.collection("demo", &id).await.unwrap();
        assert_eq!(state(&fetched), CollectionState::Submitted);
        assert_eq!(tokens(&fetched), vec![token.clone()], "the token is kept");
        let superseded = fetched.superseded_token.clone();
        assert!(superseded.starts_with("mnt_") && superseded != token && superseded != other, "{superseded}");
        assert_eq!(released(&app, &[token.clone(), superseded.clone()]).await, vec![new.clone(), old.clone()]);
        // One token per number still: each number finds its own.
        assert_eq!(payroll.tokenize("demo", &new, TokenFormat::Opaque).await.unwrap(), token);
        assert_eq!(payroll.tokenize("demo", &old, TokenFormat::Opaque).await.unwrap(), superseded);
        assert_eq!(payroll.tokenize("demo", &someone_elses, TokenFormat::Opaque).await.unwrap(), other);

        let after = payroll.describe_token("demo", &token).await.unwrap();
        assert_eq!(after.created_at, described.created_at, "the token keeps its creation time (exports count by it)");

        // The old number follows the token's retention: both are due together.
        let admin = app.client("admin").await;
        let set = mnvault_client::retention::SetRetentionRequest {
            tenant: "demo".into(),
            tokens: vec![token.clone()],
            delete_after: "2020-01-01".into(),
            ..Default::default()
        };
        assert_eq!(admin.set_retention(set).await.unwrap().tokens, 2);
        let due = admin.purge_expired("demo", true).await.unwrap();
        let mut listed: Vec<String> = due.tokens.iter().map(|t| t.token.clone()).collect();
        listed.sort();
        let mut both = vec![token.clone(), superseded.clone()];
        both.sort();
        assert_eq!(listed, both);

        // The log names both tokens of the submit, and the refusals name none.
        let entries = app.audit_entries().await;
        let submits: Vec<_> = entries.iter().filter(|e| e.operation == "collection.submit").collect();
        assert_eq!(submits.len(), 3);
        assert!(submits[..2].iter().all(|e| e.outcome == "invalid" && e.tokens.is_empty()), "{submits:?}");
        assert_eq!((submits[2].outcome.as_str(), &submits[2].tokens), ("ok", &vec![token.clone(), superseded.clone()]));
        let create = entries.iter().find(|e| e.operation == "collection.create" && e.outcome == "ok").unwrap();
        assert_eq!(create.tokens, vec![token.clone()], "the request names the token it re-issues");
        let set = entries.iter().find(|e| e.operation == "retention.set").unwrap();
        assert_eq!(set.tokens, vec![token.clone(), superseded.clone()]);
        crate::integrity::assert_no_number_in(&app, &[old, new, someone_elses]).await;

        // Putting the old sealed number back under the token releases nothing:
        // it opens under the token's key, but is not the number its row names.
        db.exec(&format!("UPDATE records SET sealed = (SELECT sealed FROM saved) WHERE token = '{token}'")).await;
        let job = approved_job(&app, std::slice::from_ref(&token), 1).await;
        let refused = refusal(app.client("filer").await.detokenize(&job, vec![token.clone()]).await);
        assert_eq!(refused.0, Code::DataLoss, "{refused:?}");

        // Nor can one point the collection at another token.
        db.exec(&format!("UPDATE collections SET superseded_token = '{other}'")).await;
        assert_eq!(refusal(payroll.collection("demo", &id).await).0, Code::DataLoss);
    }
}
