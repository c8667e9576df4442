//! How the PostgreSQL store holds up at a million tokens (issue 11): writes
//! tokens through the store's steps exactly as a tokenize call does (look up,
//! insert, read back, audit append, commit) in batches, and prints the rate
//! of the first and the last 100,000, the bytes per token, and the rate of
//! reading sealed records back in batches, as detokenize does.
//!
//! Not a benchmark (tests/bench is): a quick before/after gauge of the
//! schema. Needs PostgreSQL; creates and drops a database of its own.
//!
//! `cargo run --release -p mnvault --example pg_store_scale -- [tokens] [batch] [base-url]`

use std::time::Instant;

use anyhow::Context;
use mnvault::store::{OpenMode, PostgresStore, Store};
use mnvault_core::audit::{AuditDraft, Operation};
use mnvault_core::id::{Principal, TenantId, Token, TokenFormat};
use mnvault_core::mint::draw_token;
use mnvault_core::store::{NewRecord, NewTenant};
use mnvault_core::vault::append;
use mnvault_keys::{AuditChainKey, BlindIndex, KeyMaterial, WrappedKey};
use rand::RngCore;
use sqlx::Connection;

const WINDOW: usize = 100_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let total: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1_000_000);
    let batch: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1_000);
    let base = args.next().unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432".to_owned());
    let name = format!("mnvault_scale_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/test")).await?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await?;
    let url = format!("{base}/{name}");
    let result = run(&url, total, batch).await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut admin).await?;
    result
}

async fn run(url: &str, total: usize, batch: usize) -> anyhow::Result<()> {
    let store = PostgresStore::connect(url, OpenMode::Initialise, std::time::Duration::from_secs(60)).await?;
    let tenant = TenantId::parse("demo")?;
    let principal = Principal::parse("payroll")?;
    let key = AuditChainKey::new(&KeyMaterial::generate());
    let mut tx = store.begin_write().await?;
    let wrapped = || WrappedKey::from_bytes(vec![7; 60]);
    let new = NewTenant {
        tenant: tenant.clone(),
        display_name: "Demo".into(),
        created_at: 0,
        index_key: wrapped(),
        first_record_key: wrapped(),
    };
    tx.insert_tenant(&new).await?;
    tx.commit().await?;

    let mut rng = rand::thread_rng();
    let mut kept: Vec<Token> = Vec::new();
    let (mut window_start, mut rates) = (Instant::now(), Vec::new());
    let started = Instant::now();
    for done in (0..total).step_by(batch) {
        let records: Vec<NewRecord> = (0..batch.min(total - done))
            .map(|_| {
                let mut index = [0u8; 32];
                rng.fill_bytes(&mut index);
                // Sealed form: format byte, key version, nonce, 12 digits + GCM tag.
                let mut sealed = vec![0u8; 45];
                rng.fill_bytes(&mut sealed);
                sealed[..5].copy_from_slice(&[1, 0, 0, 0, 1]);
                let mut tag = [0u8; 32];
                rng.fill_bytes(&mut tag);
                NewRecord {
                    blind_index: BlindIndex(index),
                    token: draw_token(TokenFormat::Opaque),
                    key_version: 1,
                    sealed,
                    tag,
                }
            })
            .collect();
        let indexes: Vec<BlindIndex> = records.iter().map(|r| r.blind_index).collect();
        let known = store.begin_read().await?.records_by_blind_index(&tenant, TokenFormat::Opaque, &indexes).await?;
        anyhow::ensure!(known.iter().all(Option::is_none), "fresh indexes found");
        let mut tx = store.begin_write().await?;
        let now = mnvault_core::clock::now_ms();
        tx.insert_records(&tenant, TokenFormat::Opaque, &records, now).await?;
        let holders = tx.records_by_blind_index(&tenant, TokenFormat::Opaque, &indexes).await?;
        anyhow::ensure!(holders.iter().all(Option::is_some), "a record went missing");
        let mut draft = AuditDraft::new(Operation::TokenizeStream);
        draft.principal = Some(principal.clone());
        draft.tenant = Some(tenant.clone());
        draft.tokens = records.iter().map(|r| r.token.clone()).collect();
        draft.record_count = records.len() as u64;
        append(tx.as_mut(), &key, draft, now).await.map_err(|e| anyhow::anyhow!("append: {e}"))?;
        tx.commit().await?;
        if kept.len() < 200_000 && done % 5 == 0 {
            kept.extend(records.iter().take(batch / 5).map(|r| r.token.clone()));
        }
        let written = done + records.len();
        if written % WINDOW == 0 {
            let rate = WINDOW as f64 / window_start.elapsed().as_secs_f64();
            println!("{written:>9} tokens: {rate:>8.0} tokens/s over the last {WINDOW}");
            rates.push(rate);
            window_start = Instant::now();
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("total: {total} tokens in {elapsed:.1} s, {:.0} tokens/s", total as f64 / elapsed);
    if let (Some(first), Some(last)) = (rates.first(), rates.last()) {
        println!("last window / first window: {:.2}", last / first);
    }

    let mut conn = sqlx::PgConnection::connect(url).await.context("size connection")?;
    sqlx::query("CHECKPOINT").execute(&mut conn).await?;
    for table in ["records", "audit_entries", "audit_entry_tokens"] {
        let (heap, total_size): (i64, i64) =
            sqlx::query_as(&format!("SELECT pg_table_size('{table}'), pg_total_relation_size('{table}')"))
                .fetch_one(&mut conn)
                .await?;
        println!(
            "{table:>20}: table {:>6.1} B/token, with indexes {:>6.1} B/token",
            heap as f64 / total as f64,
            total_size as f64 / total as f64
        );
    }
    let indexes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT indexrelname::text, pg_relation_size(indexrelid) FROM pg_stat_user_indexes \
         WHERE relname IN ('records', 'audit_entry_tokens') ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await?;
    for (index, size) in indexes {
        println!("{index:>40}: {:>6.1} B/token", size as f64 / total as f64);
    }
    let (database,): (i64,) =
        sqlx::query_as("SELECT pg_database_size(current_database())").fetch_one(&mut conn).await?;
    println!("database: {:.1} B/token", database as f64 / total as f64);

    // Detokenize's read: sealed records of a job's tokens, batch by batch.
    let started = Instant::now();
    let mut read = 0;
    for chunk in kept.chunks(batch) {
        let mut tx = store.begin_read().await?;
        read += tx.sealed_records(&tenant, chunk).await?.len();
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("sealed_records: {read} in {elapsed:.2} s, {:.0} tokens/s", read as f64 / elapsed);
    store.close().await;
    Ok(())
}
