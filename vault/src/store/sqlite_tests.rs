//! SQLite-only tests of the store: its schema after the migrations, the
//! fixed statement shapes, and a scale measurement run by hand.

use std::path::Path;
use std::time::{Duration, Instant};

use mnvault_core::audit::AuditRecord;
use mnvault_core::id::{TenantId, TokenFormat};
use mnvault_core::mint::draw_token;
use mnvault_core::store::{NewRecord, NewTenant, Store};
use mnvault_keys::{BlindIndex, WrappedKey};
use rand::RngCore as _;

use super::{OpenMode, SqliteStore};

fn demo() -> TenantId {
    TenantId::parse("demo").unwrap()
}

async fn store_with_tenant(path: &Path) -> SqliteStore {
    let store = SqliteStore::open(path, OpenMode::Initialise, Duration::from_secs(5)).await.unwrap();
    let mut tx = store.begin_write().await.unwrap();
    let tenant = NewTenant {
        tenant: demo(),
        display_name: String::new(),
        created_at: 0,
        index_key: WrappedKey::from_bytes(vec![1; 60]),
        first_record_key: WrappedKey::from_bytes(vec![2; 60]),
    };
    assert!(tx.insert_tenant(&tenant).await.unwrap());
    tx.commit().await.unwrap();
    store
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

fn new_records(count: usize) -> Vec<NewRecord> {
    (0..count)
        .map(|_| NewRecord {
            blind_index: BlindIndex(random()),
            token: draw_token(TokenFormat::Opaque),
            key_version: 1,
            // A sealed record's size: format, key version, nonce, 9 digits' ciphertext... and tag.
            sealed: random::<45>().to_vec(),
            tag: random(),
        })
        .collect()
}

/// One batch as `VaultCore::tokenize` drives the store: look the numbers up
/// on a reader, then insert, read back the holders, and append the entry
/// naming every token, in one write transaction.
async fn tokenize_batch(store: &SqliteStore, records: &[NewRecord], now: i64) {
    let indexes: Vec<BlindIndex> = records.iter().map(|r| r.blind_index).collect();
    let known = store.begin_read().await.unwrap().records_by_blind_index(&demo(), TokenFormat::Opaque, &indexes).await;
    assert!(known.unwrap().iter().all(Option::is_none));
    let mut tx = store.begin_write().await.unwrap();
    tx.insert_records(&demo(), TokenFormat::Opaque, records, now).await.unwrap();
    let holders = tx.records_by_blind_index(&demo(), TokenFormat::Opaque, &indexes).await.unwrap();
    assert!(holders.iter().all(Option::is_some));
    let head = tx.lock_chain_head().await.unwrap();
    let entry = AuditRecord {
        seq: head.seq + 1,
        time_ms: now,
        principal: "payroll".into(),
        tenant: "demo".into(),
        operation: "token.tokenize-stream".into(),
        outcome: "ok".into(),
        reason: String::new(),
        job_id: String::new(),
        purpose: String::new(),
        tokens: records.iter().map(|r| r.token.to_string()).collect(),
        record_count: records.len() as u64,
        request_id: String::new(),
        prev_hash: head.hash,
        hash: random(),
        mac: Some(random()),
    };
    tx.insert_audit_entry(&entry).await.unwrap();
    tx.set_chain_head(&mnvault_core::store::ChainHead { seq: entry.seq, hash: entry.hash }).await.unwrap();
    tx.commit().await.unwrap();
}

#[test]
fn batches_are_cut_into_a_few_fixed_sizes() {
    let items: Vec<usize> = (0..1_000).collect();
    let sizes: Vec<usize> = super::chunks(&items).map(<[usize]>::len).collect();
    assert_eq!(sizes, [512, 64, 64, 64, 64, 64, 64, 64, 8, 8, 8, 8, 8]);
    let again: Vec<usize> = super::chunks(&items).flatten().copied().collect();
    assert_eq!(again, items, "every item once, in order");
    assert_eq!(super::chunks::<u8>(&[]).count(), 0);
    assert_eq!(super::rows_of(2, 3), "(?, ?, ?), (?, ?, ?)");
}

/// A database written by the schema before migration 0004 keeps every
/// audit token, in order, and finds them by token, once migrated.
#[tokio::test]
async fn audit_tokens_are_carried_over_and_found_by_token() {
    use mnvault_core::store::AuditFilter;
    use sqlx::Connection as _;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.db");
    let old = dir.path().join("old-migrations");
    std::fs::create_dir(&old).unwrap();
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for file in ["0001_vault.sql", "0002_state_tags.sql", "0003_request_ids.sql"] {
        std::fs::copy(migrations.join(file), old.join(file)).unwrap();
    }
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&path).create_if_missing(true);
    let mut connection = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
    sqlx::migrate::Migrator::new(old.as_path()).await.unwrap().run(&mut connection).await.unwrap();
    let (a, b) = (draw_token(TokenFormat::Opaque), draw_token(TokenFormat::Opaque));
    let legacy = draw_token(TokenFormat::LegacyDigits);
    let (a, b, legacy) = (a.as_str(), b.as_str(), legacy.as_str());
    sqlx::raw_sql(&format!(
        "INSERT INTO audit_entries (seq, time, principal, tenant, operation, outcome, reason, job_id, purpose, \
         record_count, prev_hash, hash) VALUES (1, 1, 'p', 'demo', 'op', 'ok', '', '', '', 3, zeroblob(32), randomblob(32)), \
         (2, 2, 'p', 'demo', 'op', 'ok', '', '', '', 2, randomblob(32), randomblob(32)); \
         INSERT INTO audit_entry_tokens (seq, position, token) VALUES (1, 0, '{a}'), (1, 1, '{legacy}'), \
         (1, 2, '{b}'), (2, 0, '{b}'), (2, 1, '{a}');"
    ))
    .execute(&mut connection)
    .await
    .unwrap();
    connection.close().await.unwrap();

    let store = SqliteStore::open(&path, OpenMode::Serve, Duration::from_secs(5)).await.unwrap();
    let mut read = store.begin_read().await.unwrap();
    let all = read.audit_entries(&AuditFilter { limit: 10, ..AuditFilter::default() }).await.unwrap();
    let tokens: Vec<Vec<String>> = all.iter().map(|e| e.tokens.clone()).collect();
    assert_eq!(tokens, [vec![a, legacy, b], vec![b, a]]);
    for (token, seqs) in [(a, vec![1, 2]), (legacy, vec![1]), (b, vec![1, 2])] {
        let token = mnvault_core::id::Token::parse(token).unwrap();
        let filter = AuditFilter { token: Some(token.clone()), limit: 10, ..AuditFilter::default() };
        let found: Vec<u64> = read.audit_entries(&filter).await.unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(found, seqs, "entries naming {token}");
    }
    drop(read);
    let mut writer = store.writer.acquire().await.unwrap();
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "EXPLAIN QUERY PLAN SELECT seq FROM audit_entry_tokens WHERE substr(token, -8) = substr(?1, -8) AND token = ?1",
    )
    .bind(a)
    .fetch_all(&mut *writer)
    .await
    .unwrap();
    assert!(plan.iter().any(|(.., detail)| detail.contains("audit_entry_tokens_token")), "{plan:?}");
    drop(writer);
    store.close().await;
}

/// `(rchar, wchar)` of this process so far, from /proc/self/io.
fn io_bytes() -> (u64, u64) {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field =
        |name: &str| io.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    (field("rchar:"), field("wchar:"))
}

fn resident_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    kib / 1024
}

/// Inserts `MNVAULT_SCALE_ROWS` (1,000,000) records in batches of
/// `MNVAULT_SCALE_BATCH` (1,000) as the core's tokenize does, and prints the
/// rate, I/O and memory of every tenth, the database bytes per record and
/// the writer's cached statements. A measurement, not a test: run it by hand,
/// in release, with `--ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn scale_measurement() {
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let rows = env("MNVAULT_SCALE_ROWS", 1_000_000);
    let batch = env("MNVAULT_SCALE_BATCH", 1_000);
    let dir = match std::env::var("MNVAULT_SCALE_DIR") {
        Ok(dir) => tempfile::tempdir_in(dir).unwrap(),
        Err(_) => tempfile::tempdir().unwrap(),
    };
    let path = dir.path().join("vault.db");
    let store = store_with_tenant(&path).await;
    let tenth = (rows / 10).max(batch);
    let (mut done, mut started, mut io) = (0, Instant::now(), io_bytes());
    let total = Instant::now();
    while done < rows {
        let records = new_records(batch.min(rows - done));
        tokenize_batch(&store, &records, 1_700_000_000_000 + done as i64).await;
        done += records.len();
        if done % tenth == 0 || done == rows {
            let (r, w) = io_bytes();
            let secs = started.elapsed().as_secs_f64();
            let n = tenth as f64;
            println!(
                "{done:>9} rows: {:>8.0} rows/s over the last {tenth}; read {:>6.0} B/row, wrote {:>6.0} B/row; rss {} MiB",
                n / secs,
                (r - io.0) as f64 / n,
                (w - io.1) as f64 / n,
                resident_mib()
            );
            (started, io) = (Instant::now(), (r, w));
        }
    }
    println!("all {rows}: {:.0} rows/s", rows as f64 / total.elapsed().as_secs_f64());
    {
        use sqlx::Connection as _;
        let mut writer = store.writer.acquire().await.unwrap();
        println!("writer's cached statements: {}", writer.cached_statements_size());
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut *writer).await.unwrap();
        let stats: Vec<(String, i64)> =
            sqlx::query_as("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC")
                .fetch_all(&mut *writer)
                .await
                .unwrap_or_default();
        for (name, bytes) in stats.iter().take(8) {
            println!("  {name:<32} {:>6.1} B/row", *bytes as f64 / rows as f64);
        }
        let _ = writer.ping().await;
    }
    let bytes = std::fs::metadata(&path).unwrap().len();
    println!("database: {bytes} bytes, {:.1} B/row", bytes as f64 / rows as f64);
    store.close().await;
}

/// Records per key version come from one pass of sums over the tenant's
/// versions, and a record under a version the tenant does not have (a
/// table edited by hand) is still counted, by the sort that falls back.
#[tokio::test]
async fn records_are_counted_per_key_version_and_strays_are_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_tenant(&dir.path().join("vault.db")).await;
    let records = new_records(5);
    tokenize_batch(&store, &records, 1).await;
    let counts = store.begin_read().await.unwrap().records_per_key_version(&demo()).await.unwrap();
    assert_eq!(counts, vec![(1, 5)]);

    let mut writer = store.writer.acquire().await.unwrap();
    sqlx::query("UPDATE records SET key_version = 7 WHERE token = ?")
        .bind(records[0].token.as_str())
        .execute(&mut *writer)
        .await
        .unwrap();
    drop(writer);
    let counts = store.begin_read().await.unwrap().records_per_key_version(&demo()).await.unwrap();
    assert_eq!(counts, vec![(1, 4), (7, 1)]);
}
