//! Attacker review of the key lifecycle: what a database writer without the
//! root key, a caller of the wrong role, or a malformed request can make
//! the key service do.

use mnvault_client::{Code, TokenFormat};

use crate::helpers::{refusal, spawn_app, spawn_app_with, tokenize_fresh};

on_both_backends! {
    async fn status_of_every_tenant_lists_the_others_after_one_was_shredded(backend) {
        let app = spawn_app(&backend).await;
        let admin = app.client("admin").await;
        admin.create_tenant("gone", "Gone").await.unwrap();
        tokenize_fresh(&app, 2).await;
        admin.shred_tenant("gone").await.unwrap();

        // A shredded tenant has no record keys left: the listing must go on past it.
        let page = admin.key_status(None, "", 0).await.unwrap();
        let listed: Vec<&str> = page.tenants.iter().map(|t| t.tenant.as_str()).collect();
        assert!(listed.contains(&"demo"), "{listed:?}");
        assert!(!listed.contains(&"gone"), "{listed:?}");
        // Named alone, it is said to be shredded.
        let (code, message) = refusal(admin.key_status(Some("gone"), "", 0).await);
        assert_eq!(code, Code::FailedPrecondition);
        assert!(message.contains("was shredded at"), "{message}");
    }

    async fn a_planted_record_key_version_is_never_used_to_seal_or_destroy(backend) {
        // A 1 ms cache: every call reads the keys the database holds now.
        let app = spawn_app_with(&backend, |settings| settings.keys.cache_ttl_ms = 1).await;
        let admin = app.client("admin").await;
        let tokens = tokenize_fresh(&app, 3).await;
        // A database writer copies version 1's wrapped key into version 2: its
        // wrap names version 1, so it must not open as version 2.
        let mut db = app.database().await;
        db.exec(
            "INSERT INTO tenant_record_keys (tenant, version, wrapped_key, created_at) \
             SELECT tenant, 2, wrapped_key, created_at FROM tenant_record_keys WHERE tenant = 'demo' AND version = 1",
        )
        .await;

        let payroll = app.client("payroll").await;
        let (code, _) = refusal(payroll.tokenize("demo", &crate::helpers::valid_number(), TokenFormat::Opaque).await);
        assert_eq!(code, Code::Internal, "nothing is sealed under a key that does not open");
        let (code, _) = refusal(admin.rewrap_tenant_records("demo", 10, "").await);
        assert_eq!(code, Code::Internal);
        // Version 1 is not primary now as far as the rows say, but still seals records: never retired.
        let (code, _) = refusal(admin.retire_key_version("demo", 1).await);
        assert_eq!(code, Code::FailedPrecondition);

        // Once the planted row is gone, every record opens as before.
        db.exec("DELETE FROM tenant_record_keys WHERE tenant = 'demo' AND version = 2").await;
        let job = crate::helpers::approved_job(&app, &tokens, 1).await;
        assert_eq!(app.client("filer").await.detokenize(&job, vec![]).await.unwrap().len(), 3);
    }

    async fn malformed_key_requests_are_refused_before_any_work(backend) {
        let app = spawn_app(&backend).await;
        let admin = app.client("admin").await;
        tokenize_fresh(&app, 1).await;
        for (batch, cursor) in [(u32::MAX, ""), (10_001, ""), (10, "zz"), (10, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")] {
            let (code, _) = refusal(admin.rewrap_tenant_records("demo", batch, cursor).await);
            assert_eq!(code, Code::InvalidArgument, "{batch} {cursor}");
        }
        assert_eq!(refusal(admin.retire_key_version("demo", 0).await).0, Code::InvalidArgument);
        assert_eq!(refusal(admin.retire_key_version("demo", u32::MAX).await).0, Code::NotFound);
        assert_eq!(refusal(admin.key_status(None, "", u32::MAX).await).0, Code::InvalidArgument);
        // A cursor naming another tenant's token walks only the tenant named.
        let answer = admin.rewrap_tenant_records("demo", 10, "").await.unwrap();
        assert_eq!((answer.rewrapped, answer.next_cursor.as_str()), (0, ""));
    }
}
