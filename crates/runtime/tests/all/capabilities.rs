//! Deny by default: files, sockets, name lookup and host environment are out of reach;
//! outbound HTTP goes only to allow-listed hosts at permitted addresses. Guest logs arrive
//! structured and rate-limited.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use edgefn_runtime::{FunctionSettings, InvokeContext, LogLevel, LogSource};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{Fixture, body_text, call};

async fn sandbox_says(path: &str, settings: FunctionSettings) -> String {
    let fixture = Fixture::new();
    let sandbox = fixture.load("sandbox", settings).await.unwrap();
    body_text(&call(&sandbox, path).await.unwrap())
}

#[tokio::test]
async fn files_cannot_be_read_or_written() {
    let read = sandbox_says("/file/read", FunctionSettings::default()).await;
    assert!(read.starts_with("denied:"), "{read}");
    let write = sandbox_says("/file/write", FunctionSettings::default()).await;
    assert!(write.starts_with("denied:"), "{write}");
    assert!(!std::path::Path::new("/tmp/edgefn-sandbox-escape").exists());
}

#[tokio::test]
async fn the_guest_sees_only_its_configured_environment() {
    // SAFETY of the assertion: the test process always has PATH; the guest must not.
    assert!(std::env::var_os("PATH").is_some());
    let settings = FunctionSettings {
        env: vec![("GREETING".into(), "hi".into())],
        ..FunctionSettings::default()
    };
    assert_eq!(sandbox_says("/env", settings).await, "GREETING=hi\n");
}

/// A loopback listener that counts the connections it accepts.
async fn counting_listener() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let body = "from upstream";
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (address, accepted)
}

#[tokio::test]
async fn sockets_and_name_lookup_are_denied() {
    let (address, accepted) = counting_listener().await;
    let tcp = sandbox_says(&format!("/tcp?addr={address}"), FunctionSettings::default()).await;
    assert!(tcp.starts_with("denied:"), "{tcp}");
    let udp = sandbox_says("/udp", FunctionSettings::default()).await;
    assert!(udp.starts_with("denied:"), "{udp}");
    let dns = sandbox_says("/dns?name=localhost", FunctionSettings::default()).await;
    assert!(dns.starts_with("denied:"), "{dns}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the guest reached the listener"
    );
}

#[tokio::test]
async fn outbound_http_reaches_an_allowed_host_at_a_permitted_address() {
    let (address, accepted) = counting_listener().await;
    let fixture = Fixture::with(|config| {
        config.outbound_allowed_networks = vec!["127.0.0.0/8".parse().unwrap()]
    });
    let settings = FunctionSettings {
        allowed_outbound_hosts: vec![address.to_string()],
        ..FunctionSettings::default()
    };
    let fetch = fixture.load("fetch", settings).await.unwrap();
    let invocation = call(&fetch, &format!("/?url=http://{address}/hello"))
        .await
        .unwrap();
    assert_eq!(body_text(&invocation), "upstream 200\nfrom upstream");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn outbound_http_to_a_host_not_on_the_allowlist_is_denied() {
    let (address, accepted) = counting_listener().await;
    let fixture = Fixture::with(|config| {
        config.outbound_allowed_networks = vec!["127.0.0.0/8".parse().unwrap()]
    });
    let settings = FunctionSettings {
        allowed_outbound_hosts: vec!["api.example.com".into()],
        ..FunctionSettings::default()
    };
    let fetch = fixture.load("fetch", settings).await.unwrap();
    let invocation = call(&fetch, &format!("/?url=http://{address}/"))
        .await
        .unwrap();
    assert_eq!(invocation.response.status(), 502);
    assert!(
        body_text(&invocation).contains("HttpRequestDenied"),
        "{}",
        body_text(&invocation)
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn outbound_http_to_loopback_is_denied_without_an_operator_network() {
    let (address, accepted) = counting_listener().await;
    let fixture = Fixture::new();
    let settings = FunctionSettings {
        allowed_outbound_hosts: vec![address.to_string()],
        ..FunctionSettings::default()
    };
    let fetch = fixture.load("fetch", settings).await.unwrap();
    for url in [
        format!("http://{address}/"),
        format!("http://2130706433:{}/", address.port()),
    ] {
        let invocation = call(&fetch, &format!("/?url={url}")).await.unwrap();
        assert_eq!(invocation.response.status(), 502, "{url}");
        let text = body_text(&invocation);
        assert!(
            text.contains("DestinationIpProhibited") || text.contains("HttpRequestDenied"),
            "{url}: {text}"
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "no connection may reach loopback"
    );
}

#[tokio::test]
async fn guest_logs_are_structured_records_with_request_ids() {
    let fixture = Fixture::new();
    let logflood = fixture
        .load("logflood", FunctionSettings::default())
        .await
        .unwrap();
    let context = InvokeContext {
        request_id: Some("req-42".into()),
        ..InvokeContext::default()
    };
    logflood
        .handle(crate::get("/?n=4&stdout=2"), context)
        .await
        .unwrap();
    // Stdout/stderr streams flush on a later turn of the executor.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let records = fixture.logs.take();
    let logged: Vec<_> = records
        .iter()
        .filter(|r| r.source == LogSource::Logging)
        .collect();
    assert_eq!(logged.len(), 4);
    assert_eq!(
        logged.iter().map(|r| r.level).collect::<Vec<_>>(),
        [
            LogLevel::Info,
            LogLevel::Debug,
            LogLevel::Warn,
            LogLevel::Error
        ]
    );
    assert_eq!(logged[0].message, "record 0");
    assert_eq!(logged[0].context, "logflood");
    let stdout: Vec<_> = records
        .iter()
        .filter(|r| r.source == LogSource::Stdout)
        .map(|r| r.message.as_str())
        .collect();
    assert_eq!(stdout, ["stdout line 0", "stdout line 1"]);
    let stderr: Vec<_> = records
        .iter()
        .filter(|r| r.source == LogSource::Stderr)
        .collect();
    assert_eq!(stderr.len(), 1);
    assert_eq!(stderr[0].level, LogLevel::Warn);
    for record in &records {
        assert_eq!(&*record.function_id, "logflood");
        assert_eq!(record.request_id.as_deref(), Some("req-42"));
    }
}

#[tokio::test]
async fn a_log_flood_is_capped_per_function_and_the_excess_counted() {
    let fixture = Fixture::new();
    let logflood = fixture
        .load("logflood", FunctionSettings::default())
        .await
        .unwrap();
    call(&logflood, "/?n=1500").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let kept = fixture.logs.take().len() as u64;
    let dropped = fixture.runtime.dropped_logs("logflood");
    assert!(kept <= 1000, "{kept} records kept");
    assert!(kept >= 900, "only {kept} records kept");
    assert_eq!(
        kept + dropped,
        1501,
        "every record is either kept or counted as dropped"
    );
}

/// One function cannot hold more than its outbound connections: with a limit of two, a
/// third request while two upstream answers hang gets `connection-limit-reached` at once.
#[tokio::test]
async fn outbound_connections_are_capped_per_function() {
    // An upstream that sends its headers and then never finishes the body.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nslow")
                    .await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let fixture = Fixture::with(|config| {
        config.outbound_allowed_networks = vec!["127.0.0.0/8".parse().unwrap()];
        config.outbound_connections_per_function = 2;
    });
    let settings = FunctionSettings {
        allowed_outbound_hosts: vec![address.to_string()],
        max_execution_ms: 3_000,
        ..FunctionSettings::default()
    };
    let fetch = fixture.load("fetch", settings).await.unwrap();
    let url = format!("/?url=http://{address}/slow");
    let mut hanging = Vec::new();
    for _ in 0..2 {
        let (fetch, url) = (fetch.clone(), url.clone());
        hanging.push(tokio::spawn(async move { call(&fetch, &url).await }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    let started = std::time::Instant::now();
    let third = call(&fetch, &url).await.unwrap();
    let text = body_text(&third);
    assert!(text.contains("ConnectionLimitReached"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "no third connection");
    for task in hanging {
        let _ = task.await;
    }
}
