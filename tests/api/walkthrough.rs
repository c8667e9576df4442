//! The README's five-minute walkthrough, command by command.

use crate::helpers::{spawn_app, spawn_dev_vault};

on_both_backends! {
    async fn the_readme_walkthrough_works_as_written(backend) {
        // As `mnvault serve --dev` starts it: callers are their SPIFFE IDs.
        let mut app = spawn_dev_vault(&backend).await;

        // Tokenize as payroll: one token per line, in order.
        let tokens =
            app.cli(&["tokenize", "--as", "payroll", "--tenant", "demo", "123456789018", "6214-9832-0257"]).await.unwrap();
        let tokens: Vec<&str> = tokens.lines().collect();
        assert_eq!(tokens.len(), 2);
        assert!(tokens.iter().all(|t| t.starts_with("mnt_") && t.len() == 30), "{tokens:?}");

        // Create a job as requester: prints the job id.
        let job = app
            .cli(&[
                "job",
                "create",
                "--as",
                "requester",
                "--tenant",
                "demo",
                "--purpose",
                "withholding-slip",
                "--expires-in",
                "2h",
                tokens[0],
                tokens[1],
            ])
            .await
            .unwrap();
        let job = job.trim();
        assert!(job.starts_with("job_"), "{job}");

        // Nothing is released before a second person approves.
        let refused = app.cli(&["detokenize", "--as", "filer", "--job", job]).await.unwrap_err();
        assert!(refused.to_string().contains("has not been approved"), "{refused}");

        assert_eq!(app.cli(&["job", "approve", "--as", "approver", job]).await.unwrap().trim(), format!("{job}\tapproved"));

        // Detokenize as filer: token<TAB>number, normalised to ASCII digits.
        let released = app.cli(&["detokenize", "--as", "filer", "--job", job]).await.unwrap();
        assert_eq!(released, format!("{}\t123456789018\n{}\t621498320257\n", tokens[0], tokens[1]));

        let shown = app.cli(&["job", "show", "--as", "requester", job]).await.unwrap();
        assert!(shown.contains("state\tapproved"), "{shown}");
        assert!(shown.contains(&format!("token\t{}\treleased 1/1", tokens[0])), "{shown}");

        // Verify the audit log straight from the data directory while the vault runs.
        let verified = app.cli(&["audit", "verify"]).await.unwrap();
        assert!(verified.starts_with("audit chain intact: "), "{verified}");

        // The listing of the job tells its whole story: who did what, and what was refused.
        let listing = app.cli(&["audit", "list", "--as", "auditor", "--job", job]).await.unwrap();
        let story: Vec<(&str, &str, &str)> = listing
            .lines()
            .map(|line| {
                let fields: Vec<&str> = line.split('\t').collect();
                (fields[2], fields[4], fields[5])
            })
            .collect();
        let id = |role: &str| format!("spiffe://mnvault-dev.invalid/tenant/demo/{role}/{role}");
        let (requester, filer, approver) = (id("requester"), id("filer"), id("approver"));
        assert_eq!(
            story,
            [
                (requester.as_str(), "filing.create-job", "ok"),
                (filer.as_str(), "filing.detokenize", "denied"),
                (approver.as_str(), "filing.approve-job", "ok"),
                (filer.as_str(), "filing.detokenize", "ok"),
                (requester.as_str(), "filing.get-job", "ok"),
            ],
            "{listing}"
        );
        assert!(listing.lines().all(|l| l.contains("\tdemo\t") && l.contains("withholding-slip")), "{listing}");

        // A new client company: its tenant, and a certificate for its payroll from the dev CA.
        let created =
            app.cli(&["tenant", "create", "--as", "admin", "--tenant", "acme-corp", "--display-name", "Acme Corp"]).await;
        assert_eq!(created.unwrap(), "acme-corp\n");
        let pki = app.path().join("dev-pki").display().to_string();
        let issue = ["pki", "issue", "--ca-dir", &pki, "--tenant", "acme-corp", "--role", "payroll"];
        let issued = app.cli(&[&issue[..], &["--name", "acme-payroll", "--out", &pki]].concat()).await.unwrap();
        assert!(
            issued.starts_with("spiffe://mnvault-dev.invalid/tenant/acme-corp/payroll/acme-payroll\tserial "),
            "{issued}"
        );
        let token = app.cli(&["tokenize", "--as", "acme-payroll", "--tenant", "acme-corp", "123456789018"]).await;
        assert!(token.unwrap().starts_with("mnt_"));
        // It acts for acme-corp only (the line's reason goes to standard error).
        let refused = app.cli(&["tokenize", "--as", "acme-payroll", "--tenant", "demo", "123456789018"]).await;
        assert!(refused.is_err());

        // And with the vault stopped: the same verdict, over every entry the listing added too.
        app.stop().await;
        let stopped = app.cli(&["audit", "verify"]).await.unwrap();
        assert!(stopped.starts_with("audit chain intact: "), "{stopped}");
        assert_ne!(stopped, verified, "the listing's own entries are part of the chain");
    }
}

on_both_backends! {
    async fn job_purposes_lists_every_lawful_purpose_with_its_japanese_name(backend) {
        let app = spawn_app(&backend).await;
        let listed = app.cli(&["job", "purposes"]).await.unwrap();
        assert_eq!(listed.lines().count(), mnvault_client::purpose::Purpose::ALL.len());
        assert!(listed.contains("withholding-slip\t給与所得の源泉徴収票\t税務署"), "{listed}");
        let from_server = app.client("requester").await.list_purposes().await.unwrap();
        assert_eq!(from_server.len(), mnvault_client::purpose::Purpose::ALL.len());
    }
}

on_both_backends! {
    async fn tokenize_from_a_file_keeps_one_line_per_input_and_fails_on_a_bad_line(backend) {
        let app = spawn_app(&backend).await;
        let file = app.path().join("numbers.txt");
        std::fs::write(&file, "123456789018\n６２１４９８３２０２５７\n12345678901a8\n").unwrap();
        let error = app
            .cli(&["tokenize", "--as", "payroll", "--tenant", "demo", "--file", file.to_str().unwrap()])
            .await
            .unwrap_err();
        assert!(error.to_string().contains("1 of 3 numbers were refused"), "{error}");
        std::fs::write(&file, "123456789018\n６２１４９８３２０２５７\n").unwrap();
        let out =
            app.cli(&["tokenize", "--as", "payroll", "--tenant", "demo", "--file", file.to_str().unwrap()]).await.unwrap();
        assert_eq!(out.lines().count(), 2);
        assert!(out.lines().all(|l| l.starts_with("mnt_")));
    }
}

on_both_backends! {
    async fn tenant_create_takes_the_tenant_like_every_tenant_command(backend) {
        let app = spawn_app(&backend).await;
        let created =
            app.cli(&["tenant", "create", "--as", "admin", "--tenant", "acme-corp", "--display-name", "Acme"]).await;
        assert_eq!(created.unwrap(), "acme-corp\n");
        let token = app.cli(&["tokenize", "--as", "payroll", "--tenant", "acme-corp", "465281266333"]).await.unwrap();
        assert!(token.starts_with("mnt_"), "{token}");
        let refused = app.cli(&["tenant", "create", "--as", "admin", "--tenant", "Acme Corp"]).await.unwrap_err();
        assert!(refused.to_string().contains("1 to 63 lowercase letters"), "{refused}");
    }
}

on_both_backends! {
    async fn the_readme_collection_step_works_as_written(backend) {
        // The dev vault's page, on a free port here instead of 50443.
        let app = crate::helpers::spawn_dev_vault_with(&backend, |settings| {
            settings.collection.listen = Some("127.0.0.1:0".parse().unwrap());
        })
        .await;
        let created = app
            .cli(&["collect", "create", "--as", "payroll", "--tenant", "demo", "--ref", "emp-kato", "--dependants", "1"])
            .await
            .unwrap();
        let field = |name: &str| {
            created.lines().find_map(|line| line.strip_prefix(&format!("{name}\t"))).unwrap_or_else(|| panic!("{created}")).to_owned()
        };
        let (id, link) = (field("collection"), field("link"));
        assert!(id.starts_with("col_") && link.starts_with("https://127.0.0.1:"), "{created}");
        assert!(created.contains('█') || created.contains('▀'), "a QR code is printed: {created}");
        assert_eq!(created.matches("number\t").count(), 2, "the employee and one dependant: {created}");

        // The employee submits on the page (`browser` drives it in Chromium).
        let numbers = crate::helpers::valid_numbers(2);
        crate::collection::submit(&app, &link, &numbers).await;

        let watched = app.cli(&["collect", "watch", "--as", "payroll", "--tenant", "demo", "--id", &id]).await.unwrap();
        assert!(watched.contains("state\tsubmitted"), "{watched}");
        let tokens: Vec<&str> =
            watched.lines().filter_map(|l| l.strip_prefix("number\t")).map(|l| l.rsplit('\t').next().unwrap()).collect();
        assert_eq!(tokens.len(), 2);
        assert!(tokens.iter().all(|t| t.starts_with("mnt_")), "{watched}");
        let shown = app.cli(&["collect", "show", "--as", "payroll", "--tenant", "demo", "--id", &id]).await.unwrap();
        assert_eq!(shown, watched.trim_end().to_owned() + "\n", "show prints what watch printed");
        for number in &numbers {
            assert!(!created.contains(number.as_str()) && !watched.contains(number.as_str()));
        }
        let refused = app.cli(&["collect", "cancel", "--as", "payroll", "--tenant", "demo", "--id", &id]).await.unwrap_err();
        assert!(refused.to_string().contains("can no longer be cancelled"), "{refused}");

        // 9. The employee's number is re-issued: the new one goes under the same token.
        let employee = tokens[0];
        let reissue = app
            .cli(&["collect", "create", "--as", "payroll", "--tenant", "demo", "--ref", "emp-kato", "--reissue", employee])
            .await
            .unwrap();
        let field = |name: &str| {
            reissue.lines().find_map(|line| line.strip_prefix(&format!("{name}\t"))).unwrap_or_else(|| panic!("{reissue}")).to_owned()
        };
        assert_eq!(field("reissues"), employee);
        let (id, link) = (field("collection"), field("link"));
        let new = crate::helpers::valid_numbers(1);
        crate::collection::submit(&app, &link, &new).await;
        let shown = app.cli(&["collect", "show", "--as", "payroll", "--tenant", "demo", "--id", &id]).await.unwrap();
        assert!(shown.contains(&format!("number\temployee\t{employee}\n")), "the token is kept: {shown}");
        let superseded = shown.lines().find_map(|l| l.strip_prefix("superseded\t")).unwrap_or_else(|| panic!("{shown}"));
        assert!(superseded.starts_with("mnt_") && superseded != employee, "{shown}");
    }
}
