//! The costs the edge-database issue sets goals for, each next to its peer in the same run:
//!
//! - a primary-key SELECT through the guest path (`GuestDatabase::query`: authorizer-checked
//!   cached statement, deadline, values copied out) against native `rusqlite`
//!   `prepare_cached` + `query_row` on the same file (goal: ≤ native + 5 µs at p50; the
//!   WebAssembly boundary is not in this figure);
//! - the dry run of one change on a 200-change ledger (goal ≤ 100 ms), against replaying
//!   the same ledger with `execute_batch` alone.
//!
//! `cargo bench -p edgefn-edgedb` (not part of CI).

use std::time::{Duration, Instant};

use edgefn_edgedb::guest::GuestDatabase;
use edgefn_edgedb::{
    GuestLimits, LedgerChange, Value, apply_changes, chain_hash, dry_run, open_node_database,
    sha256_hex,
};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p) as usize]
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shop.sqlite");
    let conn = open_node_database(&path).expect("open");
    let sql = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL)";
    let fingerprint = dry_run(&[], sql, false).expect("dry run").fingerprint;
    let sha = sha256_hex(sql.as_bytes());
    let change = LedgerChange {
        seq: 1,
        sql: sql.into(),
        chain: chain_hash("", 1, &sha),
        sha256: sha,
        fingerprint,
    };
    assert!(
        apply_changes(&conn, &[change])
            .expect("apply")
            .error
            .is_none()
    );
    conn.execute_batch("BEGIN; WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 10000) INSERT INTO items SELECT x, 'item ' || x, x * 1.5 FROM c; COMMIT;").expect("rows");

    const N: usize = 200_000;
    let native = rusqlite::Connection::open(&path).expect("native");
    let mut native_times = Vec::with_capacity(N);
    for i in 0..N {
        let id = (i % 10_000 + 1) as i64;
        let started = Instant::now();
        let mut statement = native
            .prepare_cached("SELECT id, name, price FROM items WHERE id = ?1")
            .expect("prepare");
        let row: (i64, String, f64) = statement
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("row");
        native_times.push(started.elapsed());
        std::hint::black_box(row);
    }
    let guest =
        GuestDatabase::open("shop", &path, false, GuestLimits::default(), 1).expect("guest");
    let mut guest_times = Vec::with_capacity(N);
    for i in 0..N {
        let id = (i % 10_000 + 1) as i64;
        let started = Instant::now();
        guest.set_deadline(Some(started + Duration::from_secs(1)));
        let rows = guest
            .query(
                "SELECT id, name, price FROM items WHERE id = ?1",
                &[Value::Integer(id)],
            )
            .expect("query");
        guest.set_deadline(None);
        guest_times.push(started.elapsed());
        std::hint::black_box(rows);
    }
    let (n50, n99) = (
        percentile(&mut native_times, 0.5),
        percentile(&mut native_times, 0.99),
    );
    let (g50, g99) = (
        percentile(&mut guest_times, 0.5),
        percentile(&mut guest_times, 0.99),
    );
    println!("primary-key SELECT, {N} queries");
    println!(
        "  native rusqlite  p50 {:>7.2} µs  p99 {:>7.2} µs",
        n50.as_secs_f64() * 1e6,
        n99.as_secs_f64() * 1e6
    );
    println!(
        "  guest host path  p50 {:>7.2} µs  p99 {:>7.2} µs  (p50 +{:.2} µs)",
        g50.as_secs_f64() * 1e6,
        g99.as_secs_f64() * 1e6,
        (g50.as_secs_f64() - n50.as_secs_f64()) * 1e6
    );

    let ledger: Vec<String> = (0..200)
        .map(|i| match i % 2 {
            0 => format!("CREATE TABLE t{i} (id INTEGER PRIMARY KEY, a TEXT, b REAL)"),
            _ => format!(
                "ALTER TABLE t{} ADD COLUMN c{i} INTEGER; CREATE INDEX i{i} ON t{} (a)",
                i - 1,
                i - 1
            ),
        })
        .collect();
    let refs: Vec<&str> = ledger.iter().map(String::as_str).collect();
    let mut dry = Vec::new();
    let mut replay = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        dry_run(
            &refs,
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, item INTEGER REFERENCES t0 (id))",
            false,
        )
        .expect("dry run");
        dry.push(started.elapsed());
        let started = Instant::now();
        let conn = rusqlite::Connection::open_in_memory().expect("memory");
        for sql in &refs {
            conn.execute_batch(sql).expect("replay");
        }
        replay.push(started.elapsed());
    }
    println!("dry run of one change on a 200-change ledger, 20 runs");
    println!(
        "  dry_run          p50 {:>7.2} ms",
        percentile(&mut dry, 0.5).as_secs_f64() * 1e3
    );
    println!(
        "  bare replay      p50 {:>7.2} ms",
        percentile(&mut replay, 0.5).as_secs_f64() * 1e3
    );
}
