//! How far past its limit a guest in a tight loop runs, with both cores kept busy by other
//! threads: 200 runs of the `spin` guest at `max_execution_ms = 50`, beside the overshoot
//! of a plain `tokio::time::sleep(50 ms)` measured under the same load (the floor that the
//! machine's scheduler sets). Goal: p99 overshoot <= 100 ms.
//!
//! Run with `cargo bench -p edgefn-runtime --bench timeout_overshoot`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgefn_runtime::{
    DiscardLogs, FunctionSettings, InvokeContext, LoadSpec, Runtime, RuntimeConfig,
};

const LIMIT: Duration = Duration::from_millis(50);
const RUNS: usize = 200;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, mut overshoots: Vec<Duration>) {
    overshoots.sort();
    println!(
        "{name:<28} p50 {:>8.2?}  p99 {:>8.2?}  max {:>8.2?}",
        percentile(&overshoots, 0.5),
        percentile(&overshoots, 0.99),
        overshoots[overshoots.len() - 1]
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let artifact = edgefn_test_support::guest_in(dir.path(), "spin");
    let busy = edgefn_test_support::BusyCores::start(2);
    let (guest, sleep) = rt.block_on(async {
        let runtime = Runtime::new(RuntimeConfig::new(Arc::new(DiscardLogs))).unwrap();
        let settings = FunctionSettings {
            max_execution_ms: LIMIT.as_millis() as u64,
            ..FunctionSettings::default()
        };
        let spin = runtime
            .load(LoadSpec {
                function_id: "spin".into(),
                version: 1,
                artifact,
                sha256: None,
                settings,
                share: Default::default(),
            })
            .await
            .unwrap();
        let mut guest = Vec::with_capacity(RUNS);
        let mut sleep = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let started = Instant::now();
            let request = http::Request::get("http://example.com/")
                .body(Bytes::new())
                .unwrap();
            let outcome = spin.handle(request, InvokeContext::default()).await;
            assert!(matches!(
                outcome,
                Err(edgefn_runtime::RuntimeError::Timeout { .. })
            ));
            guest.push(started.elapsed().saturating_sub(LIMIT));
            let started = Instant::now();
            tokio::time::sleep(LIMIT).await;
            sleep.push(started.elapsed().saturating_sub(LIMIT));
        }
        (guest, sleep)
    });
    drop(busy);
    println!("timeout overshoot past {LIMIT:?}, {RUNS} runs, both cores busy");
    report("edgefn spin guest", guest);
    report("peer: tokio sleep", sleep);
}
