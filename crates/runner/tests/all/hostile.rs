//! Attacks on the front by guests and clients: each test performs one against the real
//! binary and checks that other requests are not harmed.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use crate::Runner;

const CGI_AND_HELLO: &str = r#"
[[functions]]
id = "hello"
version = 1
path = "{guests}/hello.wasm"

[[functions]]
id = "cgi"
version = 1
path = "{cgi_guests}/cgi.wasm"

[[routes]]
path = "/hello"
function = "hello"

[[routes]]
path = "/cgi/*"
function = "cgi"
"#;

/// Reads from `stream` until `complete` says the bytes so far are enough, or 5 s pass.
fn read_until(stream: &mut std::net::TcpStream, complete: impl Fn(&str) -> bool) -> String {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while std::time::Instant::now() < deadline && !complete(&String::from_utf8_lossy(&received)) {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// A CGI guest that frames its output as two responses (`Content-Length: 2`, then a whole
/// second response) must not answer the next pipelined request on the connection: its
/// framing headers are dropped and its whole output is one body.
#[test]
fn a_cgi_guest_cannot_smuggle_a_response_to_the_next_request() {
    let runner = Runner::start(CGI_AND_HELLO, &[]);
    let mut stream = std::net::TcpStream::connect(runner.http).unwrap();
    stream
        .write_all(
            b"GET /cgi/smuggle HTTP/1.1\r\nHost: a\r\n\r\n\
              GET /hello HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .unwrap();
    let text = read_until(&mut stream, |text| text.contains("Hello, edgefn!"));
    let responses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i..])
        .collect();
    // The guest's body holds the text "HTTP/1.1 200 OK" once, so three status-like lines:
    // the smuggler's real response, the text inside its body, and hello's answer.
    assert!(
        text.contains("Hello, edgefn!"),
        "hello never answered: {text:?}"
    );
    let first = responses[0];
    let (head, body) = first.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{text:?}");
    let length = "okHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPWNED!".len();
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {length}")),
        "the response is framed by the guest's real output: {head:?}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head:?}"
    );
    assert!(
        body.starts_with("okHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPWNED!HTTP/1.1 200"),
        "{text:?}"
    );
    // The answer to the second request is hello's, not "PWNED!".
    let second = &body[length..];
    assert!(second.ends_with("Hello, edgefn!\n"), "{second:?}");
    assert!(!second.contains("PWNED"), "{second:?}");
}

/// hyper answers a head it cannot parse (400) or one over `--max-header-bytes` (431) by
/// itself; those answers carry an `x-request-id` too, and the runner logs it with the peer.
#[test]
fn refused_request_heads_get_a_request_id() {
    let runner = Runner::start(CGI_AND_HELLO, &[]);
    let too_large = format!(
        "GET /hello HTTP/1.1\r\nHost: a\r\nx-big: {}\r\n\r\n",
        "a".repeat(100 << 10)
    );
    for (head, status) in [
        ("GET /hello HTTP/1.1\r\nHost a\r\n\r\n".to_string(), "400"),
        (too_large, "431"),
    ] {
        let mut stream = std::net::TcpStream::connect(runner.http).unwrap();
        let _ = stream.write_all(head.as_bytes());
        let text = read_until(&mut stream, |text| text.contains("\r\n\r\n"));
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text:?}");
        let id = text
            .lines()
            .find_map(|line| line.strip_prefix("x-request-id: "))
            .unwrap_or_else(|| panic!("no request id: {text:?}"))
            .to_string();
        assert_eq!(id.len(), 32, "{id:?}");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !runner
            .log_lines()
            .iter()
            .any(|line| line.to_string().contains(&id))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the id {id} is not in the runner's log"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // A well-formed request on a fresh connection still gets its own id once.
    let mut stream = std::net::TcpStream::connect(runner.http).unwrap();
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: a\r\nx-request-id: mine\r\n\r\n")
        .unwrap();
    let text = read_until(&mut stream, |text| text.contains("Hello, edgefn!"));
    assert_eq!(text.matches("x-request-id").count(), 1, "{text:?}");
    assert!(text.contains("x-request-id: mine\r\n"), "{text:?}");
}

/// A guest's `Transfer-Encoding: chunked` is dropped too: its output is the body as is.
#[tokio::test]
async fn a_cgi_guest_cannot_choose_the_transfer_encoding() {
    let runner = Runner::start(CGI_AND_HELLO, &[]);
    let response = reqwest::get(runner.url("/cgi/chunked")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("transfer-encoding").is_none());
    assert_eq!(
        response.text().await.unwrap(),
        "5\r\nhello\r\n0\r\n\r\n",
        "the guest's bytes arrive unchanged, not decoded as chunks"
    );
}

/// Connections that send half a request head (slowloris), or nothing at all, are closed
/// after the header read timeout, and the node keeps answering others meanwhile.
#[tokio::test]
async fn slow_clients_are_cut_off_after_the_header_read_timeout() {
    let runner = Runner::start(CGI_AND_HELLO, &["--header-read-timeout-ms", "1000"]);
    let mut slow = Vec::new();
    for i in 0..40u32 {
        let mut stream = std::net::TcpStream::connect(runner.http).unwrap();
        if i.is_multiple_of(2) {
            stream
                .write_all(b"GET /hello HTTP/1.1\r\nHost: a\r\nX-Slow: ")
                .unwrap();
        }
        slow.push(stream);
    }
    // One byte a few times: trickling does not extend the deadline.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for stream in slow.iter_mut().step_by(2) {
            let _ = stream.write_all(b"a");
        }
    }
    let hello = reqwest::get(runner.url("/hello")).await.unwrap();
    assert_eq!(hello.status(), 200);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    for (i, stream) in slow.iter_mut().enumerate() {
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buffer = [0u8; 1024];
        match stream.read(&mut buffer) {
            // Closed, possibly after a 408 from hyper.
            Ok(0) | Err(_) => {}
            Ok(_) => {
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest);
            }
        }
        let mut probe = [0u8; 1];
        assert!(
            matches!(stream.read(&mut probe), Ok(0) | Err(_)),
            "connection {i} is still open after 3 s"
        );
    }
}

/// A request body that never ends: announced, never sent.
struct NeverEndingBody;

impl hyper::body::Body for NeverEndingBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

/// 200 HTTP/2 streams that announce a large body and never send it take no concurrency
/// slot of their tenant: another client of the same tenant is answered at once (not 429,
/// not after a wait), and the stalled streams end with 408 after the body read timeout.
#[tokio::test]
async fn bodies_that_never_arrive_cannot_starve_the_tenant() {
    const ECHO_TOO: &str = r#"
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
path = "/echo/*"
function = "echo"
"#;
    let runner = Runner::start(
        ECHO_TOO,
        &[
            "--tenant-max-concurrent",
            "8",
            "--body-read-timeout-ms",
            "3000",
        ],
    );
    let mut stalled = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect(runner.http).await.unwrap();
        let (sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        for _ in 0..100 {
            let mut sender = sender.clone();
            let request = http::Request::post(format!("http://{}/echo/x", runner.http))
                .header("content-length", "1000000")
                .body(NeverEndingBody)
                .unwrap();
            stalled.spawn(async move { sender.send_request(request).await.map(|r| r.status()) });
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = reqwest::Client::new();
    for _ in 0..20 {
        let started = std::time::Instant::now();
        let hello = client.get(runner.url("/hello")).send().await.unwrap();
        assert_eq!(hello.status(), 200, "{:?}", hello.text().await);
        // Well under the stalled bodies' 3 s deadline: nobody waited for them.
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "hello waited {:?}",
            started.elapsed()
        );
    }
    let mut timed_out = 0;
    while let Some(status) = stalled.join_next().await {
        if let Ok(Ok(status)) = status {
            assert_eq!(status, 408);
            timed_out += 1;
        }
    }
    assert!(timed_out >= 100, "only {timed_out} stalled streams got 408");
}

/// One address cannot take every connection of the node: beyond its limit its new
/// connections are closed, while another address is served.
#[tokio::test]
async fn connections_beyond_the_per_address_limit_are_closed() {
    let runner = Runner::start(CGI_AND_HELLO, &["--max-connections-per-ip", "5"]);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(std::net::TcpStream::connect(runner.http).unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = std::net::TcpStream::connect(runner.http).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = extra.write_all(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n");
    let mut buffer = [0u8; 64];
    assert!(
        matches!(extra.read(&mut buffer), Ok(0) | Err(_)),
        "a sixth connection from 127.0.0.1 was served"
    );
    // Another loopback address is a different client.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = socket
        .connect(runner.http)
        .await
        .unwrap()
        .into_std()
        .unwrap();
    other.set_nonblocking(false).unwrap();
    let text = {
        other
            .write_all(b"GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap();
        read_until(&mut other, |text| text.contains("Hello, edgefn!"))
    };
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    drop(held);
}

/// A version that fails to compile is not compiled again for every request (each attempt
/// can take a core for seconds): requests get 503 at once, and one failure is logged.
#[tokio::test]
async fn a_version_that_fails_to_compile_is_not_recompiled_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.wasm");
    // A valid header, then a section that is not WebAssembly.
    std::fs::write(&broken, b"\0asm\x01\0\0\0\x01\xff\xff\xff\xff\x0fgarbage").unwrap();
    let manifest = format!(
        r#"
[[functions]]
id = "broken"
version = 1
path = "{}"

[[routes]]
path = "/broken"
function = "broken"
"#,
        broken.display()
    );
    let runner = Runner::start(&manifest, &[]);
    let client = reqwest::Client::new();
    for _ in 0..4 {
        let response = client.get(runner.url("/broken")).send().await.unwrap();
        assert_eq!(response.status(), 503);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "function_failed", "{body}");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let failures = runner
        .log_lines()
        .iter()
        .filter(|l| l["message"] == "function failed to load")
        .count();
    assert_eq!(failures, 1, "compiled again after failing");
}

/// One project asks for every instance slot pre-warmed; another project's function still
/// answers (before the shares, project a's idle instances held all 50 slots).
#[tokio::test]
async fn one_project_cannot_take_every_instance_slot() {
    const GREEDY: &str = r#"
[[functions]]
id = "greedy"
version = 1
path = "{guests}/hello.wasm"
tenant = "a"
min_hot_instances = 50
max_hot_instances = 50

[[functions]]
id = "modest"
version = 1
path = "{guests}/echo.wasm"
tenant = "b"

[[routes]]
path = "/greedy"
function = "greedy"

[[routes]]
path = "/modest/*"
function = "modest"
"#;
    let runner = Runner::start(GREEDY, &["--pool-instances", "50"]);
    let client = reqwest::Client::new();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..20 {
        let path = if i % 2 == 0 { "/greedy" } else { "/modest/x" };
        let request = client.get(runner.url(path)).send();
        requests.spawn(async move {
            let response = request.await.unwrap();
            (response.status(), response.text().await.unwrap_or_default())
        });
    }
    while let Some(done) = requests.join_next().await {
        let (status, body) = done.unwrap();
        assert_eq!(status, 200, "{body}");
    }
}

/// Project a's three functions fill every instance slot of the node with instances that
/// stay idle afterwards (each function within the per-function cap, the three together
/// over a's share). Project b's next request still gets an instance: one of a's idle ones
/// is destroyed for it, instead of b failing until a's instances expire.
#[tokio::test]
async fn idle_instances_of_a_project_over_its_share_make_room_for_another() {
    let mut manifest = String::new();
    for i in 0..3 {
        manifest.push_str(&format!(
            "[[functions]]\nid = \"busy{i}\"\nversion = 1\npath = \"{{guests}}/cpu.wasm\"\ntenant = \"a\"\n\
             max_hot_instances = 4\nidle_timeout_ms = 600000\n\n\
             [[routes]]\npath = \"/busy{i}\"\nfunction = \"busy{i}\"\n\n"
        ));
    }
    // b keeps no instance ready, so a fills every slot without taking one of b's.
    manifest.push_str(
        "[[functions]]\nid = \"hello\"\nversion = 1\npath = \"{guests}/hello.wasm\"\ntenant = \"b\"\nmin_hot_instances = 0\n\n\
         [[routes]]\npath = \"/hello\"\nfunction = \"hello\"\n",
    );
    let runner = Runner::start(&manifest, &["--pool-instances", "8"]);
    let client = reqwest::Client::new();
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..12 {
        let request = client
            .get(runner.url(&format!("/busy{}?n=30000000", i % 3)))
            .send();
        burst.spawn(async move { request.await.map(|r| r.status().as_u16()) });
    }
    let mut served = 0;
    while let Some(done) = burst.join_next().await {
        if done.unwrap().is_ok_and(|status| status == 200) {
            served += 1;
        }
    }
    assert!(
        served >= 8,
        "a's burst should fill the node: {served} served"
    );
    let metrics = runner.metrics().await;
    let idle: f64 = (0..3)
        .filter_map(|i| {
            crate::metric(
                &metrics,
                &format!("wasm_idle_instances{{function_id=\"busy{i}\"}}"),
            )
        })
        .sum();
    assert_eq!(idle, 8.0, "a's instances hold every slot: {metrics}");
    // No slot is free: b's request gets one by destroying one of a's idle instances.
    for _ in 0..3 {
        let response = client.get(runner.url("/hello")).send().await.unwrap();
        let status = response.status();
        assert_eq!(status, 200, "{}", response.text().await.unwrap_or_default());
    }
}
