//! Each kind of guest answers real requests.

use bytes::Bytes;
use edgefn_runtime::{ArtifactKind, FunctionSettings, InvokeContext};

use crate::{Fixture, body_text, call};

#[tokio::test]
async fn hello_component_answers() {
    let fixture = Fixture::new();
    let hello = fixture
        .load("hello", FunctionSettings::default())
        .await
        .unwrap();
    assert_eq!(hello.kind(), ArtifactKind::Component);
    let invocation = call(&hello, "/").await.unwrap();
    assert_eq!(invocation.response.status(), 200);
    assert_eq!(body_text(&invocation), "Hello, edgefn!\n");
    assert_eq!(
        invocation.response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
}

#[tokio::test]
async fn echo_sees_method_path_query_headers_and_body() {
    let fixture = Fixture::new();
    let echo = fixture
        .load("echo", FunctionSettings::default())
        .await
        .unwrap();
    let request = http::Request::post("http://example.com/items/7?color=red&x=1")
        .header("x-custom", "yes")
        .body(Bytes::from_static(b"{\"a\":1}"))
        .unwrap();
    let invocation = echo
        .handle(request, InvokeContext::default())
        .await
        .unwrap();
    let text = body_text(&invocation);
    assert!(text.contains("\"method\":\"POST\""), "{text}");
    assert!(text.contains("\"path\":\"/items/7\""), "{text}");
    assert!(text.contains("\"query\":\"color=red&x=1\""), "{text}");
    assert!(text.contains("[\"x-custom\",\"yes\"]"), "{text}");
    assert!(text.contains("\"body\":\"{\\\"a\\\":1}\""), "{text}");
}

#[tokio::test]
async fn cgi_module_gets_request_in_environment_and_stdin() {
    let fixture = Fixture::new();
    let cgi = fixture
        .load("cgi", FunctionSettings::default())
        .await
        .unwrap();
    assert_eq!(cgi.kind(), ArtifactKind::Module);
    let request = http::Request::put("http://example.com/path/x?q=1")
        .body(Bytes::from_static(b"payload"))
        .unwrap();
    let invocation = cgi.handle(request, InvokeContext::default()).await.unwrap();
    assert_eq!(invocation.response.status(), 200);
    assert_eq!(invocation.response.headers()["x-cgi"], "yes");
    assert_eq!(
        body_text(&invocation),
        "cgi PUT /path/x query=q=1 body=payload\n"
    );
}

#[tokio::test]
async fn cgi_module_that_exits_non_zero_is_a_trap() {
    let fixture = Fixture::new();
    let cgi = fixture
        .load("cgi", FunctionSettings::default())
        .await
        .unwrap();
    let error = call(&cgi, "/fail").await.unwrap_err();
    assert!(
        matches!(&error, edgefn_runtime::RuntimeError::Trap { message } if message.contains("status 3")),
        "{error}"
    );
}

#[tokio::test]
async fn cpu_time_is_recorded_per_call() {
    let fixture = Fixture::new();
    let cpu = fixture
        .load("cpu", FunctionSettings::default())
        .await
        .unwrap();
    let light = call(&cpu, "/?n=1000").await.unwrap();
    let heavy = call(&cpu, "/?n=50000000").await.unwrap();
    assert!(
        heavy.cpu_time > light.cpu_time * 10,
        "light {:?} heavy {:?}",
        light.cpu_time,
        heavy.cpu_time
    );
    assert!(heavy.cpu_time <= heavy.wall_time + std::time::Duration::from_millis(5));
}
