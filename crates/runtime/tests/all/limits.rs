//! Memory and time limits hold for any setting, and the runtime stays responsive.

use std::time::{Duration, Instant};

use bytes::Bytes;
use edgefn_runtime::{FunctionSettings, InvokeContext, RuntimeError, WASM_PAGE};
use proptest::prelude::*;

use crate::{Fixture, body_text, call};

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

#[tokio::test]
async fn a_memory_hog_ends_with_memory_limit_and_its_instance_is_not_reused() {
    let fixture = Fixture::new();
    let settings = FunctionSettings {
        memory_pages: 160,
        min_hot_instances: 0,
        ..FunctionSettings::default()
    };
    let hog = fixture.load("memhog", settings).await.unwrap();
    let error = call(&hog, "/hog").await.unwrap_err();
    assert!(
        matches!(error, RuntimeError::MemoryLimit { limit_bytes } if limit_bytes == 160 * WASM_PAGE),
        "{error}"
    );
    assert_eq!(
        hog.pool_stats().idle_instances,
        0,
        "a failed instance never returns to the pool"
    );
    // The next request gets a fresh instance and works.
    let ok = call(&hog, "/grow?pages=0").await.unwrap();
    assert!(ok.cold_start);
}

#[tokio::test]
async fn requests_and_responses_over_the_body_limits_are_refused() {
    let fixture = Fixture::with(|config| {
        config.max_request_body_bytes = 1024;
        config.max_response_body_bytes = 512;
    });
    let echo = fixture
        .load("echo", FunctionSettings::default())
        .await
        .unwrap();
    let big = http::Request::post("http://example.com/")
        .body(Bytes::from(vec![b'a'; 2048]))
        .unwrap();
    let error = echo
        .handle(big, InvokeContext::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            RuntimeError::BodyTooLarge {
                what: "request",
                ..
            }
        ),
        "{error}"
    );
    // 600 bytes in, echoed with JSON around them: over the 512-byte response limit.
    let medium = http::Request::post("http://example.com/")
        .body(Bytes::from(vec![b'a'; 600]))
        .unwrap();
    let error = echo
        .handle(medium, InvokeContext::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            RuntimeError::BodyTooLarge {
                what: "response",
                ..
            }
        ),
        "{error}"
    );
}

/// Initial pages of the memhog guest, as it reports them.
async fn initial_pages(fixture: &Fixture) -> u64 {
    let probe = fixture
        .load("memhog", FunctionSettings::default())
        .await
        .unwrap();
    let text = body_text(&call(&probe, "/grow?pages=0").await.unwrap());
    text.trim()
        .rsplit("pages=")
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// For any limit and any sequence of growths, memory never exceeds `memory_pages`: a call
    /// whose growths stay within it succeeds and reports the expected size; one that passes it
    /// ends with `MemoryLimit`.
    #[test]
    fn memory_never_grows_past_memory_pages(extra in 0u64..40, growths in proptest::collection::vec(0u64..24, 1..5)) {
        let fixture_and_initial = block_on(async {
            let fixture = Fixture::new();
            let initial = initial_pages(&fixture).await;
            (fixture, initial)
        });
        let (fixture, initial) = fixture_and_initial;
        let memory_pages = initial + extra;
        let settings = FunctionSettings { memory_pages, min_hot_instances: 0, ..FunctionSettings::default() };
        let list = growths.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let outcome = block_on(async {
            let function = fixture.load("memhog", settings).await.unwrap();
            call(&function, &format!("/grow?pages={list}")).await
        });
        let total = initial + growths.iter().sum::<u64>();
        if total <= memory_pages {
            let text = body_text(&outcome.unwrap());
            prop_assert!(text.trim().ends_with(&format!("pages={total}")), "{}", text);
        } else {
            let is_memory_limit = matches!(outcome, Err(RuntimeError::MemoryLimit { .. }));
            prop_assert!(is_memory_limit, "{:?}", outcome.map(|i| body_text(&i)));
        }
    }
}

/// One runtime for the timeout property: loads come from the precompiled cache.
fn timeout_fixture() -> &'static (tokio::runtime::Runtime, Fixture) {
    static FIXTURE: std::sync::OnceLock<(tokio::runtime::Runtime, Fixture)> =
        std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let fixture = rt.block_on(async { Fixture::new() });
        (rt, fixture)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// A guest in a tight loop with no host calls is stopped at its `max_execution_ms`.
    #[test]
    fn a_tight_loop_is_stopped_at_its_limit(limit_ms in 5u64..80) {
        let (rt, fixture) = timeout_fixture();
        let settings = FunctionSettings { max_execution_ms: limit_ms, min_hot_instances: 0, ..FunctionSettings::default() };
        let (outcome, elapsed) = rt.block_on(async {
            let spin = fixture.load("spin", settings).await.unwrap();
            let started = Instant::now();
            let outcome = call(&spin, "/").await;
            (outcome, started.elapsed())
        });
        let is_timeout = matches!(outcome, Err(RuntimeError::Timeout { limit }) if limit == Duration::from_millis(limit_ms));
        prop_assert!(is_timeout, "{:?}", outcome.err());
        prop_assert!(elapsed >= Duration::from_millis(limit_ms), "stopped early after {:?}", elapsed);
        prop_assert!(elapsed < Duration::from_millis(limit_ms) + Duration::from_secs(1), "overshoot: {:?}", elapsed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tight_loop_is_stopped_and_others_are_served_while_both_cores_are_busy() {
    let fixture = Fixture::new();
    let spin_settings = FunctionSettings {
        max_execution_ms: 50,
        ..FunctionSettings::default()
    };
    let spin = fixture.load("spin", spin_settings).await.unwrap();
    let hello = fixture
        .load("hello", FunctionSettings::default())
        .await
        .unwrap();
    // Keep both cores busy outside the runtime for the whole test.
    let busy = edgefn_test_support::BusyCores::start(2);
    let spins: Vec<_> = (0..4)
        .map(|_| {
            let spin = spin.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let outcome = call(&spin, "/").await;
                (outcome, started.elapsed())
            })
        })
        .collect();
    let started = Instant::now();
    let hello_answer = call(&hello, "/").await;
    let hello_latency = started.elapsed();
    let mut results = Vec::new();
    for spin in spins {
        results.push(spin.await.unwrap());
    }
    drop(busy);
    assert_eq!(body_text(&hello_answer.unwrap()), "Hello, edgefn!\n");
    assert!(
        hello_latency < Duration::from_secs(1),
        "hello took {hello_latency:?} beside spinning guests"
    );
    for (outcome, elapsed) in results {
        assert!(
            matches!(outcome, Err(RuntimeError::Timeout { .. })),
            "{:?}",
            outcome.err()
        );
        assert!(
            elapsed < Duration::from_secs(1),
            "a 50 ms loop ran for {elapsed:?}"
        );
    }
}

#[tokio::test]
async fn a_deadline_earlier_than_the_limit_wins() {
    let fixture = Fixture::new();
    let spin = fixture
        .load(
            "spin",
            FunctionSettings {
                max_execution_ms: 5_000,
                ..FunctionSettings::default()
            },
        )
        .await
        .unwrap();
    let started = Instant::now();
    let context = InvokeContext {
        deadline: Some(Instant::now() + Duration::from_millis(30)),
        ..InvokeContext::default()
    };
    let error = spin.handle(crate::get("/"), context).await.unwrap_err();
    assert!(matches!(error, RuntimeError::Timeout { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn fuel_metering_stops_a_guest_that_runs_out() {
    let fixture = Fixture::with(|config| config.fuel = Some(5_000_000));
    let cpu = fixture
        .load("cpu", FunctionSettings::default())
        .await
        .unwrap();
    // A light request fits in the budget; a heavy one exhausts it long before its time limit.
    call(&cpu, "/?n=1000").await.unwrap();
    let started = Instant::now();
    let error = call(&cpu, "/?n=4000000000").await.unwrap_err();
    assert!(matches!(error, RuntimeError::Timeout { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Fuel is refilled for each request of a reused instance.
    call(&cpu, "/?n=1000").await.unwrap();
}
