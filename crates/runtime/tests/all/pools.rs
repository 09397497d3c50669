//! Hot instance pools: reuse, pre-warming, concurrency caps, idle expiry, node-wide LRU
//! eviction, version isolation and isolation across pool slots.

use std::time::{Duration, Instant};

use edgefn_runtime::{FunctionSettings, InvokeContext, RuntimeError};
use proptest::prelude::*;

use crate::{Fixture, body_text, call};

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn lazy(reuse: u32) -> FunctionSettings {
    FunctionSettings {
        min_hot_instances: 0,
        instance_reuse: Some(reuse),
        ..FunctionSettings::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// Sequential calls reuse one instance for `instance_reuse` requests, then recycle it.
    #[test]
    fn consecutive_calls_reuse_an_instance_up_to_its_limit(reuse in 1u32..6, calls in 1u32..13) {
        let (cold_starts, colds_seen) = block_on(async {
            let fixture = Fixture::new();
            let hello = fixture.load("hello", lazy(reuse)).await.unwrap();
            let mut colds_seen = Vec::new();
            for _ in 0..calls {
                colds_seen.push(call(&hello, "/").await.unwrap().cold_start);
            }
            (hello.pool_stats().cold_starts, colds_seen)
        });
        // One instance is created at load to check the component starts, then dropped.
        let expected = u64::from(calls.div_ceil(reuse));
        prop_assert_eq!(cold_starts, expected + 1);
        for (i, cold) in colds_seen.iter().enumerate() {
            prop_assert_eq!(*cold, (i as u32).is_multiple_of(reuse), "call {}", i);
        }
    }
}

#[tokio::test]
async fn a_reused_instance_answers_faster_than_a_fresh_one() {
    let fixture = Fixture::new();
    let fresh = fixture.load_as("hello", "fresh", 1, lazy(1)).await.unwrap();
    let reused = fixture
        .load_as("hello", "reused", 1, lazy(1000))
        .await
        .unwrap();
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let mut fresh_times = Vec::new();
    let mut reused_times = Vec::new();
    for _ in 0..30 {
        fresh_times.push(call(&fresh, "/").await.unwrap().wall_time);
        reused_times.push(call(&reused, "/").await.unwrap().wall_time);
    }
    let (fresh, reused) = (median(fresh_times), median(reused_times));
    assert!(
        reused < fresh,
        "reused {reused:?} is not faster than fresh {fresh:?}"
    );
}

#[tokio::test]
async fn min_hot_instances_are_ready_before_the_first_request() {
    let fixture = Fixture::new();
    let settings = FunctionSettings {
        min_hot_instances: 3,
        max_hot_instances: 4,
        ..FunctionSettings::default()
    };
    let hello = fixture.load("hello", settings).await.unwrap();
    assert_eq!(hello.pool_stats().idle_instances, 3);
    let invocation = call(&hello, "/").await.unwrap();
    assert!(!invocation.cold_start);
    assert_eq!(hello.pool_stats().cold_starts, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_max_hot_instances_wait_then_fail_overloaded() {
    let fixture = Fixture::new();
    let settings = FunctionSettings {
        max_hot_instances: 1,
        min_hot_instances: 1,
        ..FunctionSettings::default()
    };
    let cpu = fixture.load("cpu", settings).await.unwrap();
    let busy = {
        let cpu = cpu.clone();
        tokio::spawn(async move { call(&cpu, "/?n=400000000").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(cpu.pool_stats().busy_instances, 1);
    let context = InvokeContext {
        deadline: Some(Instant::now() + Duration::from_millis(100)),
        ..InvokeContext::default()
    };
    let started = Instant::now();
    let error = cpu.handle(crate::get("/?n=1"), context).await.unwrap_err();
    assert!(matches!(error, RuntimeError::Overloaded), "{error}");
    assert!(started.elapsed() >= Duration::from_millis(90));
    busy.await.unwrap().unwrap();
    // Once the instance is free, requests go through again.
    call(&cpu, "/?n=1").await.unwrap();
}

#[tokio::test]
async fn idle_instances_expire_down_to_min_hot() {
    let fixture = Fixture::with(|config| config.sweep_interval = Duration::from_millis(20));
    let settings = FunctionSettings {
        min_hot_instances: 1,
        max_hot_instances: 4,
        idle_timeout: Duration::from_millis(100),
        ..FunctionSettings::default()
    };
    let hello = fixture.load("hello", settings).await.unwrap();
    let calls: Vec<_> = (0..3).map(|_| call(&hello, "/")).collect();
    for result in futures_join(calls).await {
        result.unwrap();
    }
    assert!(hello.pool_stats().idle_instances >= 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        hello.pool_stats().idle_instances,
        1,
        "idle instances above min_hot expire"
    );
}

async fn futures_join<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut outputs = Vec::new();
    let handles: Vec<_> = futures.into_iter().map(Box::pin).collect();
    for handle in handles {
        outputs.push(handle.await);
    }
    outputs
}

/// Bytes of linear memory one hello instance holds after serving a request.
fn hello_instance_bytes() -> u64 {
    static BYTES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        block_on(async {
            let fixture = Fixture::new();
            let hello = fixture.load("hello", lazy(1000)).await.unwrap();
            call(&hello, "/").await.unwrap();
            hello.pool_stats().idle_memory_bytes
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// With room for two idle instances, the survivors after any sequence of requests are
    /// exactly the two functions used most recently: eviction is least recently used first
    /// across all functions of the node.
    #[test]
    fn memory_pressure_evicts_least_recently_used_instances(sequence in proptest::collection::vec(0usize..4, 1..16)) {
        let bytes = hello_instance_bytes();
        let survivors = block_on(async {
            let fixture = Fixture::with(|config| {
                config.memory_budget_bytes = 2 * bytes + bytes / 2;
                config.memory_high_watermark = 1.0;
            });
            let mut functions = Vec::new();
            for id in 0..4 {
                functions.push(fixture.load_as("hello", &format!("f{id}"), 1, lazy(1000)).await.unwrap());
            }
            for &index in &sequence {
                call(&functions[index], "/").await.unwrap();
            }
            prop_assert!(fixture.runtime.memory_in_use() <= fixture.runtime.memory_budget_bytes());
            Ok(functions.iter().map(|f| f.pool_stats().idle_instances).collect::<Vec<_>>())
        })?;
        let mut recent: Vec<usize> = Vec::new();
        for &index in sequence.iter().rev() {
            if !recent.contains(&index) && recent.len() < 2 {
                recent.push(index);
            }
        }
        for (index, idle) in survivors.iter().enumerate() {
            prop_assert_eq!(*idle, usize::from(recent.contains(&index)), "function {} in {:?}", index, sequence);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// Two versions of one function have separate pools and answer side by side.
    #[test]
    fn versions_run_side_by_side_in_separate_pools(order in proptest::collection::vec(any::<bool>(), 1..10)) {
        block_on(async {
            let fixture = Fixture::new();
            let v1 = fixture.load_as("hello", "api", 1, lazy(1000)).await.unwrap();
            let v2 = fixture.load_as("echo", "api", 2, lazy(1000)).await.unwrap();
            for &first in &order {
                let (function, expect_hello) = if first { (&v1, true) } else { (&v2, false) };
                let text = body_text(&call(function, "/x").await.unwrap());
                prop_assert_eq!(text.starts_with("Hello"), expect_hello, "{}", text);
            }
            let used_v1 = order.iter().any(|b| *b);
            let used_v2 = order.iter().any(|b| !*b);
            prop_assert_eq!(v1.pool_stats().idle_instances, usize::from(used_v1));
            prop_assert_eq!(v2.pool_stats().idle_instances, usize::from(used_v2));
            drop(v1);
            // Dropping one version leaves the other serving.
            prop_assert!(call(&v2, "/y").await.is_ok());
            Ok(())
        })?;
    }
}

fn copies(text: &str) -> usize {
    text.trim().parse().unwrap()
}

#[tokio::test]
async fn a_destroyed_instance_leaves_nothing_for_the_next_one_in_its_slot() {
    let fixture = Fixture::new();
    // Positive control: within one instance the secret is visible, so the scan works.
    let shared = fixture
        .load_as("memhog", "shared", 1, lazy(2))
        .await
        .unwrap();
    call(&shared, "/secret/write").await.unwrap();
    let seen = copies(&body_text(&call(&shared, "/secret/scan").await.unwrap()));
    assert!(
        seen >= 16_384,
        "the scan must find the secret in the instance that wrote it ({seen})"
    );

    // Fresh instance per request: every new instance reuses a slot a writer just left.
    let fresh = fixture
        .load_as("memhog", "fresh", 1, lazy(1))
        .await
        .unwrap();
    for _ in 0..20 {
        call(&fresh, "/secret/write").await.unwrap();
        let seen = copies(&body_text(&call(&fresh, "/secret/scan").await.unwrap()));
        assert!(
            seen < 16,
            "a new instance saw {seen} copies of a destroyed instance's secret"
        );
    }
}

/// With a fresh instance per request, the pool makes the next one in the background: a
/// request after a short pause finds it ready (no cold start), as long as min_hot_instances
/// asks for one to be kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_instances_are_made_ahead_of_the_next_request() {
    let fixture = Fixture::new();
    let settings = FunctionSettings {
        min_hot_instances: 1,
        instance_reuse: Some(1),
        ..FunctionSettings::default()
    };
    let hello = fixture.load("hello", settings).await.unwrap();
    for i in 0..5 {
        let invocation = call(&hello, "/").await.unwrap();
        assert!(!invocation.cold_start, "request {i} waited for an instance");
        let deadline = Instant::now() + Duration::from_secs(5);
        while hello.pool_stats().idle_instances == 0 {
            assert!(Instant::now() < deadline, "no instance was made ahead");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Load's check instance (kept, min_hot 1) and one made after each request.
    assert_eq!(hello.pool_stats().cold_starts, 1 + 5);
}
