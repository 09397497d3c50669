//! What a user of the runner sees over HTTP.

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use crate::{Runner, metric};

const HELLO_ECHO: &str = r#"
[[functions]]
id = "hello"
version = 1
path = "{guests}/hello.wasm"

[[functions]]
id = "echo"
version = 1
path = "{guests}/echo.wasm"

[[routes]]
path = "/hello"
function = "hello"

[[routes]]
host = "api.example.com"
path = "/echo/*"
methods = ["POST", "PUT"]
function = "echo"
"#;

#[tokio::test]
async fn serves_hello_and_echo_and_404s_the_rest() {
    let runner = Runner::start(HELLO_ECHO, &[]);
    let client = reqwest::Client::new();
    let hello = client.get(runner.url("/hello")).send().await.unwrap();
    assert_eq!(hello.status(), 200);
    let request_id = hello.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(!request_id.is_empty());
    assert_eq!(hello.text().await.unwrap(), "Hello, edgefn!\n");

    let echo = client
        .post(runner.url("/echo/things?x=1"))
        .header("host", "api.example.com")
        .header("x-request-id", "client-chosen-1")
        .body("ping")
        .send()
        .await
        .unwrap();
    assert_eq!(echo.status(), 200);
    assert_eq!(echo.headers()["x-request-id"], "client-chosen-1");
    let text = echo.text().await.unwrap();
    assert!(
        text.contains("\"method\":\"POST\"") && text.contains("\"path\":\"/echo/things\""),
        "{text}"
    );
    assert!(text.contains("\"body\":\"ping\""), "{text}");

    // Wrong method, wrong host, unknown path: no route.
    for (method, host, path) in [
        ("GET", "api.example.com", "/echo/x"),
        ("POST", "other.com", "/echo/x"),
        ("GET", "x", "/nope"),
    ] {
        let response = client
            .request(method.parse().unwrap(), runner.url(path))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{method} {host}{path}");
        assert!(response.headers().contains_key("x-request-id"));
        let body: serde_json::Value =
            serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "no_route");
    }

    // One JSON line per request with the documented fields.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let lines = runner.log_lines();
    let logged = lines
        .iter()
        .find(|l| l["request_id"] == request_id.as_str())
        .expect("request logged");
    for field in [
        "timestamp",
        "level",
        "node_id",
        "function_id",
        "start_timestamp",
        "end_timestamp",
        "execution_status",
        "status",
        "duration_us",
    ] {
        assert!(logged.get(field).is_some(), "missing {field} in {logged}");
    }
    assert_eq!(logged["function_id"], "hello");
    let started = lines
        .iter()
        .find(|l| l["message"] == "node started")
        .expect("start-up logged");
    assert_eq!(started["labels"]["region"], "tokyo");
    assert_eq!(logged["node_id"], "test-node");
    assert_eq!(logged["status"], 200);
}

#[test]
fn a_malformed_request_line_gets_400() {
    let runner = Runner::start(HELLO_ECHO, &[]);
    let mut stream = std::net::TcpStream::connect(runner.http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"THIS IS NOT HTTP\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 400"), "{response:?}");
}

#[tokio::test]
async fn oversized_bodies_and_headers_are_refused() {
    let runner = Runner::start(
        HELLO_ECHO,
        &[
            "--max-request-body-bytes",
            "1000",
            "--max-header-bytes",
            "8192",
        ],
    );
    let client = reqwest::Client::new();
    let big_body = client
        .post(runner.url("/echo/x"))
        .header("host", "api.example.com")
        .body(vec![b'x'; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(big_body.status(), 413);
    let big_header = client
        .get(runner.url("/hello"))
        .header("x-big", "y".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(big_header.status(), 431);
}

const LIMITS: &str = r#"
[[functions]]
id = "spin"
version = 1
path = "{guests}/spin.wasm"
max_execution_ms = 200

[[functions]]
id = "memhog"
version = 1
path = "{guests}/memhog.wasm"
memory_pages = 200

[[routes]]
path = "/spin"
function = "spin"

[[routes]]
path = "/hog"
function = "memhog"
"#;

#[tokio::test]
async fn a_runaway_guest_gets_504_and_a_memory_hog_500() {
    let runner = Runner::start(LIMITS, &[]);
    let client = reqwest::Client::new();
    let started = Instant::now();
    let spin = client.get(runner.url("/spin")).send().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(spin.status(), 504);
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_millis(1200),
        "{elapsed:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&spin.text().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "timeout");

    let hog = client.get(runner.url("/hog")).send().await.unwrap();
    assert_eq!(hog.status(), 500);
    let body: serde_json::Value = serde_json::from_str(&hog.text().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "memory_limit");
    assert!(
        !body.to_string().contains("wasm"),
        "no host internals in {body}"
    );

    let metrics = runner.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"wasm_invoke_errors_total{function_id="spin",error_code="timeout"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"wasm_invoke_errors_total{function_id="memhog",error_code="memory_limit"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn quotas_answer_429_with_retry_after() {
    let runner = Runner::start(HELLO_ECHO, &["--tenant-invocations-per-minute", "3"]);
    let client = reqwest::Client::new();
    for _ in 0..3 {
        assert_eq!(
            client
                .get(runner.url("/hello"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let refused = client.get(runner.url("/hello")).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let metrics = runner.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"wasm_quota_rejections_total{tenant="default",reason="rate"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn each_metric_moves_by_exactly_what_happened() {
    let runner = Runner::start(HELLO_ECHO, &[]);
    let client = reqwest::Client::new();
    let before = runner.metrics().await;
    let count =
        |text: &str| metric(text, r#"wasm_invoke_count_total{function_id="hello"}"#).unwrap_or(0.0);
    let hits = |text: &str| metric(text, "wasm_cache_hits_total").unwrap_or(0.0);
    let latency = |text: &str| {
        metric(
            text,
            r#"wasm_invoke_latency_seconds_count{function_id="hello"}"#,
        )
        .unwrap_or(0.0)
    };
    client.get(runner.url("/hello")).send().await.unwrap();
    let after_one = runner.metrics().await;
    assert_eq!(count(&after_one) - count(&before), 1.0, "{after_one}");
    assert_eq!(hits(&after_one) - hits(&before), 1.0);
    assert_eq!(latency(&after_one) - latency(&before), 1.0);
    for _ in 0..4 {
        client.get(runner.url("/hello")).send().await.unwrap();
    }
    let after_five = runner.metrics().await;
    assert_eq!(count(&after_five) - count(&before), 5.0);
    // A 404 invokes nothing.
    client
        .get(runner.url("/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(count(&runner.metrics().await), count(&after_five));
    assert_eq!(
        metric(&after_five, r#"wasm_idle_instances{function_id="hello"}"#),
        Some(1.0),
        "{after_five}"
    );
    assert_eq!(metric(&after_five, "wasm_functions_ready"), Some(2.0));
}

#[tokio::test]
async fn a_corrupted_cache_file_is_deleted_at_start_up_and_never_served() {
    let dir = tempfile::tempdir().unwrap().keep();
    let source = dir.join("hello-source.wasm");
    std::fs::copy(edgefn_test_support::guest_wasm("hello"), &source).unwrap();
    let manifest = format!(
        "[[functions]]\nid = \"hello\"\nversion = 1\npath = \"{}\"\n\n[[routes]]\npath = \"/hello\"\nfunction = \"hello\"\n",
        source.display()
    );
    {
        let runner = Runner::start_in(dir.clone(), &manifest, &[]);
        let ok = reqwest::get(runner.url("/hello")).await.unwrap();
        assert_eq!(ok.status(), 200);
    }
    // Corrupt the cached copy and take the source away: the runner must not serve the file.
    let cached = dir.join("cache/hello/1.wasm");
    let mut bytes = std::fs::read(&cached).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&cached, &bytes).unwrap();
    std::fs::remove_file(&source).unwrap();
    let runner = Runner::start_in(dir.clone(), &manifest, &[]);
    assert!(!cached.exists(), "the corrupt file is deleted");
    let refused = reqwest::get(runner.url("/hello")).await.unwrap();
    assert_eq!(refused.status(), 503);
    let deleted = runner
        .log_lines()
        .into_iter()
        .any(|l| l["message"] == "deleted a corrupt cached artifact");
    assert!(deleted, "the deletion is logged");
    assert_eq!(
        metric(
            &runner.metrics().await,
            "wasm_cache_corrupt_artifacts_total"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish() {
    let manifest = r#"
[[functions]]
id = "cpu"
version = 1
path = "{guests}/cpu.wasm"

[[routes]]
path = "/cpu"
function = "cpu"
"#;
    let mut runner = Runner::start(manifest, &[]);
    let url = runner.url("/cpu?n=1500000000");
    let in_flight = tokio::spawn(async move {
        let started = Instant::now();
        let response = reqwest::get(url).await.unwrap();
        (response.status(), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    runner.signal(nix::sys::signal::Signal::SIGTERM);
    let (status, elapsed) = in_flight.await.unwrap();
    assert_eq!(status, 200, "the request in flight at SIGTERM completes");
    assert!(
        elapsed > Duration::from_millis(150),
        "the request was still running at SIGTERM ({elapsed:?})"
    );
    let exit = tokio::task::spawn_blocking(move || runner.wait(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
}

#[tokio::test]
async fn tls_serves_http2_and_http1() {
    let dir = tempfile::tempdir().unwrap().keep();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    let runner = Runner::start_in(
        dir.clone(),
        HELLO_ECHO,
        &["--tls-cert", &cert, "--tls-key", &key],
    );
    assert_eq!(runner.scheme, "https");
    let root = reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap();
    let url = format!("https://localhost:{}/hello", runner.http.port());
    for http2 in [true, false] {
        let builder = reqwest::Client::builder()
            .add_root_certificate(root.clone())
            .resolve("localhost", runner.http);
        let client = if http2 { builder } else { builder.http1_only() }
            .build()
            .unwrap();
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let expected = if http2 {
            reqwest::Version::HTTP_2
        } else {
            reqwest::Version::HTTP_11
        };
        assert_eq!(response.version(), expected);
        assert_eq!(response.text().await.unwrap(), "Hello, edgefn!\n");
    }
}

#[test]
fn a_bad_manifest_is_refused_with_file_entry_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = crate::write_manifest(
        dir.path(),
        "[[functions]]\nid = \"x\"\nversion = 1\npath = \"x.wasm\"\nmemory_pages = 0\n",
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_edgefn-runner"))
        .arg("--manifest")
        .arg(&path)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("edge.toml")
            && stderr.contains("functions[0]")
            && stderr.contains("memory_pages"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sighup_swaps_routes_atomically_while_requests_are_in_flight() {
    let mut runner = Runner::start(HELLO_ECHO, &[]);
    let changed = r#"
[[functions]]
id = "echo"
version = 1
path = "{guests}/echo.wasm"

[[routes]]
path = "/hello"
methods = ["GET"]
function = "echo"
"#;
    let url = runner.url("/hello");
    let load = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut statuses = Vec::new();
        let mut bodies = Vec::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            let response = client.get(&url).send().await.unwrap();
            statuses.push(response.status().as_u16());
            bodies.push(response.text().await.unwrap());
        }
        (statuses, bodies)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    crate::write_manifest(&runner.dir, changed);
    runner.signal(nix::sys::signal::Signal::SIGHUP);
    let (statuses, bodies) = load.await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every request during the swap succeeded: {statuses:?}"
    );
    assert!(
        bodies.first().unwrap().starts_with("Hello"),
        "served hello before"
    );
    assert!(
        bodies.last().unwrap().contains("\"path\":\"/hello\""),
        "served echo after: {}",
        bodies.last().unwrap()
    );
    assert!(
        runner.wait(Duration::from_millis(10)).is_none(),
        "still running"
    );
}

/// Serves `bytes` on loopback after refusing the first `failures` requests; counts requests.
async fn flaky_artifact_server(
    bytes: Vec<u8>,
    failures: usize,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let requests = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = counter.fetch_add(1, Ordering::SeqCst);
            let bytes = bytes.clone();
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                if seen < failures {
                    let _ = stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                } else {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        bytes.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(&bytes).await;
                }
            });
        }
    });
    (address, requests)
}

// Multi-threaded: the artifact server must run while `Runner::start` blocks this thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_artifact_is_fetched_with_retries_and_verified() {
    let bytes = std::fs::read(edgefn_test_support::guest_wasm("hello")).unwrap();
    let sha = edgefn_runner::cache::sha256_hex(&bytes);
    let (address, requests) = flaky_artifact_server(bytes, 2).await;
    let manifest = format!(
        "[[functions]]\nid = \"hello\"\nversion = 7\nurl = \"http://{address}/hello.wasm\"\nsha256 = \"{sha}\"\n\n[[routes]]\npath = \"/\"\nfunction = \"hello\"\n"
    );
    let runner = Runner::start(&manifest, &["--fetch-backoff-ms", "50"]);
    let response = reqwest::get(runner.url("/")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        requests.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "two failures, then success"
    );
    assert!(runner.dir.join("cache/hello/7.wasm").exists());

    // A wrong sha256 is refused: the function never serves.
    let (address, _) = flaky_artifact_server(b"\0asm\x01\0\0\0".to_vec(), 0).await;
    let manifest = format!(
        "[[functions]]\nid = \"bad\"\nversion = 1\nurl = \"http://{address}/bad.wasm\"\nsha256 = \"{sha}\"\n\n[[routes]]\npath = \"/\"\nfunction = \"bad\"\n"
    );
    let runner = Runner::start(&manifest, &["--fetch-backoff-ms", "50"]);
    assert_eq!(reqwest::get(runner.url("/")).await.unwrap().status(), 503);
    let failed = runner.log_lines().into_iter().any(|l| {
        l["message"] == "function failed to load"
            && l["error"]
                .as_str()
                .unwrap_or("")
                .contains("sha256 mismatch")
    });
    assert!(failed, "the mismatch is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_fetches_an_artifact_whose_source_was_down_at_start_up() {
    let bytes = std::fs::read(edgefn_test_support::guest_wasm("hello")).unwrap();
    // The source refuses the first 3 requests: the start-up fetch (2 attempts) gives up.
    let (address, requests) = flaky_artifact_server(bytes, 2).await;
    let manifest = format!(
        "[[functions]]\nid = \"hello\"\nversion = 1\nurl = \"http://{address}/hello.wasm\"\n\n[[routes]]\npath = \"/\"\nfunction = \"hello\"\n"
    );
    // One attempt per fetch: the background load fails after the first refusal.
    let runner = Runner::start(
        &manifest,
        &["--fetch-backoff-ms", "10", "--fetch-attempts", "1"],
    );
    assert_eq!(
        reqwest::get(runner.url("/")).await.unwrap().status(),
        503,
        "first request within a second of the failure"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // The next miss retries (the source refuses once more), then one after it succeeds.
    let second = reqwest::get(runner.url("/")).await.unwrap().status();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let third = reqwest::get(runner.url("/")).await.unwrap();
    assert_eq!(second, 503);
    assert_eq!(
        third.status(),
        200,
        "a request fetched the artifact once the source was back: {:#?}",
        runner.log_lines()
    );
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 3);
}

/// The componentize-js and componentize-py guests behind the runner's front, over real
/// sockets with the default settings: GET, a 1 MB POST echoed byte for byte, a custom
/// status and header; then 200 requests on 8 connections each, all correct (the JavaScript
/// guest gets a fresh instance per request, the Python one reused instances).
#[tokio::test]
async fn javascript_and_python_functions_answer_through_the_runner() {
    let manifest = format!(
        r#"
[[functions]]
id = "js"
version = 1
path = "{}"

[[functions]]
id = "py"
version = 1
path = "{}"

[[routes]]
host = "js.example.com"
path = "/*"
function = "js"

[[routes]]
host = "py.example.com"
path = "/*"
function = "py"
"#,
        edgefn_test_support::guest_wasm("js").display(),
        edgefn_test_support::guest_wasm("python").display()
    );
    let runner = Runner::start(&manifest, &[]);
    let client = reqwest::Client::new();
    for (host, greeting, example) in [
        ("js.example.com", "Hello from JavaScript!\n", "javascript"),
        ("py.example.com", "Hello from Python!\n", "python"),
    ] {
        let prefix = host;
        let hello = client
            .get(runner.url("/"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(hello.status(), 200, "{prefix}");
        assert_eq!(hello.text().await.unwrap(), greeting);

        let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let echoed = client
            .post(runner.url("/echo"))
            .header("host", host)
            .header("content-type", "application/octet-stream")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(echoed.status(), 200, "{prefix}");
        assert_eq!(echoed.headers()["content-type"], "application/octet-stream");
        assert!(
            echoed.bytes().await.unwrap() == body,
            "{prefix}: echoed bytes differ"
        );

        let teapot = client
            .get(runner.url("/status/418"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(teapot.status(), 418);
        assert_eq!(teapot.headers()["x-edgefn-example"], example);

        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (client, url) = (client.clone(), runner.url("/"));
            tasks.spawn(async move {
                for _ in 0..25 {
                    let response = client.get(&url).header("host", host).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                    assert_eq!(response.text().await.unwrap(), greeting);
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    }
    let text = runner.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"wasm_reused_instance_failures_total{function_id="js"}"#
        )
        .unwrap_or(0.0),
        0.0
    );
}

/// `--winch-first`: a new version answers from Winch code, then moves to Cranelift code
/// compiled in the background, answering correctly throughout.
#[tokio::test]
async fn winch_first_serves_at_once_and_moves_to_cranelift_code() {
    let manifest = format!(
        r#"
[[functions]]
id = "js"
version = 1
path = "{}"

[[routes]]
path = "/*"
function = "js"
"#,
        edgefn_test_support::guest_wasm("js").display()
    );
    let runner = Runner::start(&manifest, &["--winch-first"]);
    let client = reqwest::Client::new();
    let text = runner.metrics().await;
    assert_eq!(
        metric(&text, "wasm_baseline_loads_total"),
        Some(1.0),
        "{text}"
    );
    let compiled = || {
        walk_files(&runner.dir.join("cache"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let response = client.get(runner.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "Hello from JavaScript!\n");
        if compiled() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no Cranelift code after 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Once the Cranelift code is in, requests keep answering.
    for _ in 0..20 {
        let response = client.get(runner.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}
