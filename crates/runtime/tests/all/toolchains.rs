//! Guests from the toolchains users write edge functions with — componentize-js
//! (JavaScript) and componentize-py (Python) — load in the deny-by-default sandbox, answer
//! like `wasmtime serve` answers them, and survive many requests, sequential and concurrent.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgefn_runtime::{
    DEFAULT_INSTANCE_REUSE, Function, FunctionSettings, InvokeContext, RuntimeError, Toolchain,
};

use crate::{Fixture, artifact, body_text, call};

const TOOLCHAINS: [(&str, Toolchain, &str); 2] = [
    ("js", Toolchain::ComponentizeJs, "JavaScript"),
    ("python", Toolchain::ComponentizePy, "Python"),
];

#[test]
fn toolchains_are_read_from_the_custom_sections() {
    for (guest, toolchain, _) in TOOLCHAINS {
        let bytes = std::fs::read(artifact(guest)).unwrap();
        assert_eq!(Toolchain::detect(&bytes), toolchain, "{guest}");
    }
    for guest in ["hello", "spin"] {
        let bytes = std::fs::read(artifact(guest)).unwrap();
        assert_eq!(Toolchain::detect(&bytes), Toolchain::Rust, "{guest}");
    }
    let module = std::fs::read(artifact("cgi")).unwrap();
    assert_eq!(Toolchain::detect(&module), Toolchain::Other);
    assert_eq!(Toolchain::detect(b"\0asm\x01\0\0\0"), Toolchain::Other);
}

fn post(path: &str, body: Bytes) -> http::Request<Bytes> {
    http::Request::post(format!("http://example.com{path}"))
        .header("content-type", "application/x-test")
        .body(body)
        .unwrap()
}

async fn answers_like_wasmtime_serve(function: &Function, language: &str) {
    let hello = call(function, "/").await.unwrap();
    assert_eq!(hello.response.status(), 200);
    assert_eq!(body_text(&hello), format!("Hello from {language}!\n"));

    // 1 MB of every byte value, echoed byte for byte.
    let body: Bytes = (0..1 << 20).map(|i: u32| (i * 7 % 256) as u8).collect();
    let echo = function
        .handle(post("/echo", body.clone()), InvokeContext::default())
        .await
        .unwrap();
    assert_eq!(echo.response.status(), 200);
    assert_eq!(
        echo.response.headers()["content-type"],
        "application/x-test"
    );
    assert!(echo.response.body() == &body, "{language}: echo differs");

    let status = call(function, "/status/418").await.unwrap();
    assert_eq!(status.response.status(), 418);
    assert_eq!(
        status.response.headers()["x-edgefn-example"],
        language.to_lowercase().as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_and_python_guests_load_and_answer_in_the_sandbox() {
    let fixture = Fixture::new();
    for (guest, toolchain, language) in TOOLCHAINS {
        let function = fixture
            .load(guest, FunctionSettings::default())
            .await
            .unwrap_or_else(|e| panic!("{guest}: {e}"));
        assert_eq!(function.toolchain(), toolchain);
        answers_like_wasmtime_serve(&function, language).await;
    }
}

/// A thousand sequential and a thousand concurrent requests (16 at a time), each answered
/// correctly: with reuse where the toolchain tolerates it, fresh instances where it does
/// not (componentize-js).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_each_sequential_and_concurrent() {
    let fixture = Fixture::new();
    for (guest, toolchain, language) in TOOLCHAINS {
        let function = fixture
            .load(guest, FunctionSettings::default())
            .await
            .unwrap();
        let expected_reuse = if toolchain.tolerates_reuse() {
            DEFAULT_INSTANCE_REUSE
        } else {
            1
        };
        assert_eq!(function.instance_reuse(), expected_reuse, "{guest}");
        let expected = format!("Hello from {language}!\n");
        for i in 0..1000 {
            let answer = call(&function, "/").await;
            let answer = answer.unwrap_or_else(|e| panic!("{guest}: request {i}: {e}"));
            assert_eq!(body_text(&answer), expected, "{guest}: request {i}");
        }
        let function = Arc::new(function);
        let workers = (0..16).map(|worker| {
            let function = function.clone();
            let expected = expected.clone();
            tokio::spawn(async move {
                for i in 0..1000 / 16 + usize::from(worker < 1000 % 16) {
                    let answer = call(&function, "/").await;
                    let answer =
                        answer.unwrap_or_else(|e| panic!("worker {worker}, request {i}: {e}"));
                    assert_eq!(body_text(&answer), expected);
                }
            })
        });
        for worker in workers {
            worker.await.unwrap_or_else(|e| panic!("{guest}: {e}"));
        }
        assert_eq!(function.pool_stats().reused_instance_failures, 0, "{guest}");
    }
}

/// A developer who opts componentize-js into reuse gets what StarlingMonkey does with a
/// second request on one instance — it never answers — but the instance is dropped and
/// counted, and the next request is served by a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_instance_that_fails_is_dropped_and_counted() {
    let fixture = Fixture::new();
    let function = fixture
        .load(
            "js",
            FunctionSettings {
                instance_reuse: Some(1000),
                max_execution_ms: 1500,
                ..FunctionSettings::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(function.instance_reuse(), 1000);
    assert_eq!(call(&function, "/").await.unwrap().response.status(), 200);
    let second = call(&function, "/").await;
    assert!(
        matches!(second, Err(RuntimeError::Timeout { .. })),
        "{second:?}"
    );
    assert_eq!(function.pool_stats().reused_instance_failures, 1);
    // The failed instance is gone: the next request runs on a fresh one.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(call(&function, "/").await.unwrap().response.status(), 200);
}
