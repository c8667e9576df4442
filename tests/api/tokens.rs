//! Tokenization: input validation, determinism, tenant separation, formats, bulk.

use futures::StreamExt;
use mnvault_client::number::has_valid_check_digit;
use mnvault_client::{Code, TokenFormat};

use crate::helpers::{full_width, refusal, spawn_app, valid_numbers};

on_both_backends! {
    async fn malformed_numbers_are_refused_with_what_is_wrong(backend) {
        let app = spawn_app(&backend).await;
        let payroll = app.client("payroll").await;
        let cases = [
            ("12345678901", "has 11"),
            ("1234567890188", "has 13"),
            ("12345678901a8", "character 'a' at position 12 is not a digit"),
            ("6214.9832.0257", "character '.' at position 5 is not a digit"),
            ("123456789019", "check digit does not match"),
            ("", "has 0"),
        ];
        for (input, expected) in cases {
            let (code, message) = refusal(payroll.tokenize("demo", input, TokenFormat::Opaque).await);
            assert_eq!(code, Code::InvalidArgument, "{input}");
            assert!(message.contains(expected), "{input}: {message}");
            assert!(input.len() < 12 || !message.contains(&input[..12]), "message repeats the input: {message}");
        }
        let (code, message) = refusal(payroll.tokenize("nosuchtenant", "123456789018", TokenFormat::Opaque).await);
        assert_eq!(code, Code::NotFound);
        assert!(message.contains("nosuchtenant"), "{message}");
    }
}

on_both_backends! {
    async fn the_same_number_gets_the_same_token_in_a_tenant_and_unrelated_ones_across_tenants(backend) {
        let app = spawn_app(&backend).await;
        app.client("admin").await.create_tenant("acme", "Acme").await.unwrap();
        let payroll = app.client("payroll").await;
        let number = &valid_numbers(1)[0];
        let hyphenated = format!("{}-{}-{}", &number[..4], &number[4..8], &number[8..]);

        let first = payroll.tokenize("demo", number, TokenFormat::Opaque).await.unwrap();
        assert_eq!(payroll.tokenize("demo", number, TokenFormat::Opaque).await.unwrap(), first);
        assert_eq!(payroll.tokenize("demo", &full_width(number), TokenFormat::Opaque).await.unwrap(), first);
        assert_eq!(payroll.tokenize("demo", &hyphenated, TokenFormat::Opaque).await.unwrap(), first);
        assert!(first.starts_with("mnt_") && first.len() == 30);
        assert!(!first.contains(number.as_str()));

        let other_tenant = payroll.tokenize("acme", number, TokenFormat::Opaque).await.unwrap();
        assert_ne!(other_tenant, first);

        // Another number gets another token.
        let second = payroll.tokenize("demo", &valid_numbers(1)[0], TokenFormat::Opaque).await.unwrap();
        assert_ne!(second, first);

        let described = payroll.describe_token("demo", &first).await.unwrap();
        assert_eq!((described.token.as_str(), described.key_version), (first.as_str(), 1));
        assert_eq!(refusal(payroll.describe_token("acme", &first).await).0, Code::NotFound);
    }
}

on_both_backends! {
    async fn legacy_tokens_are_twelve_digits_that_never_pass_for_a_number(backend) {
        let app = spawn_app(&backend).await;
        let payroll = app.client("payroll").await;
        let numbers = valid_numbers(200);
        let mut seen = std::collections::HashSet::new();
        for number in &numbers {
            let token = payroll.tokenize("demo", number, TokenFormat::LegacyDigits).await.unwrap();
            let digits: [u8; 12] = token.as_bytes().try_into().expect("12 characters");
            assert!(digits.iter().all(u8::is_ascii_digit), "{token}");
            assert!(!has_valid_check_digit(&digits), "{token} passes for a number");
            assert_ne!(&token, number);
            assert!(seen.insert(token.clone()), "legacy token reused in the tenant");
            assert_eq!(payroll.tokenize("demo", number, TokenFormat::LegacyDigits).await.unwrap(), token);
        }
        let opaque = payroll.tokenize("demo", &numbers[0], TokenFormat::Opaque).await.unwrap();
        assert!(opaque.starts_with("mnt_"));
    }
}

on_both_backends! {
    async fn a_bulk_stream_answers_every_record_in_order_with_per_record_errors(backend) {
        let app = spawn_app(&backend).await;
        let payroll = app.client("payroll").await;
        let mut inputs = valid_numbers(5_000);
        inputs[10] = "12345678901a8".into();
        inputs[4_321] = "123".into();
        inputs[4_999] = inputs[0].clone(); // a duplicate gets the same token
        let results: Vec<_> = payroll
            .tokenize_stream("demo", TokenFormat::Opaque, inputs.clone())
            .await
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
            .await;
        assert_eq!(results.len(), inputs.len());
        for (position, result) in results.iter().enumerate() {
            assert_eq!(result.index, position as u64);
            match position {
                10 | 4_321 => {
                    let error = result.result.as_ref().unwrap_err();
                    assert_eq!(error.code, Code::InvalidArgument as i32);
                }
                _ => assert!(result.result.as_ref().unwrap().starts_with("mnt_")),
            }
        }
        assert_eq!(results[4_999].result, results[0].result);
        // The stream's tokens are the ones single calls see.
        let single = payroll.tokenize("demo", &inputs[1], TokenFormat::Opaque).await.unwrap();
        assert_eq!(&single, results[1].result.as_ref().unwrap());
        // A caller without the tokenizer role gets a per-record refusal, not a number.
        let refused = app
            .client("filer")
            .await
            .tokenize_stream("demo", TokenFormat::Opaque, vec![inputs[1].clone()])
            .await
            .unwrap()
            .next()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(refused.result.unwrap_err().code, Code::PermissionDenied as i32);
    }
}
