//! `edgefn dev`, the one-command quickstart: a control plane and two runners come up, the
//! hello function answers on every runner, the metrics URL works, and SIGTERM stops it all.

use std::process::Command;

use crate::{HELLO_BODY, Process, free_port, get, guest};

#[test]
fn edgefn_dev_serves_hello_on_every_runner_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, http, admin) = (free_port(), free_port(), free_port());
    // Two consecutive ports each for the runners.
    let run = |dir: &std::path::Path| {
        let mut command = Command::new(crate::EDGEFN);
        command
            .arg("dev")
            .arg("--dir")
            .arg(dir)
            .args(["--listen", &format!("127.0.0.1:{cp}")])
            .args([
                "--http-port",
                &http.to_string(),
                "--admin-port",
                &admin.to_string(),
            ])
            .args(["--runners", "2", "--wasm", &guest("hello")]);
        Process::spawn(command)
    };
    let mut dev = run(dir.path());
    dev.wait_line("the ready message", |l| {
        l.contains("edgefn dev is running").then_some(())
    });
    let output = dev.stdout();
    for port in [http, http + 1] {
        let url = format!("http://127.0.0.1:{port}/");
        assert!(output.contains(&url), "{output}");
        let (status, body) = get(&url);
        assert_eq!(status, 200);
        assert!(body.contains(HELLO_BODY));
    }
    let (status, metrics) = get(&format!("http://127.0.0.1:{admin}/metrics"));
    assert_eq!(status, 200);
    assert!(metrics.contains("wasm_invoke_count_total"), "{metrics}");
    assert!(dev.terminate().success(), "stops cleanly on SIGTERM");

    // Again in the same directory: the same function and version, no new upload.
    let mut again = run(dir.path());
    again.wait_line("the ready message", |l| {
        l.contains("edgefn dev is running").then_some(())
    });
    assert!(
        again.stdout().contains("hello version 1"),
        "{}",
        again.stdout()
    );
    assert!(again.terminate().success());
}

#[test]
fn edgefn_dev_with_tls_serves_the_api_over_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, http, admin) = (free_port(), free_port(), free_port());
    let mut command = Command::new(crate::EDGEFN);
    command
        .arg("dev")
        .arg("--dir")
        .arg(dir.path())
        .args(["--listen", &format!("127.0.0.1:{cp}"), "--tls"])
        .args([
            "--http-port",
            &http.to_string(),
            "--admin-port",
            &admin.to_string(),
        ])
        .args(["--wasm", &guest("hello")]);
    let mut dev = Process::spawn(command);
    dev.wait_line("the ready message", |l| {
        l.contains("edgefn dev is running").then_some(())
    });
    let output = dev.stdout();
    let cert = dir.path().join("control-plane/api-tls.crt");
    assert!(
        output.contains(&format!("EDGEFN_CA_CERT={}", cert.display())),
        "{output}"
    );
    let (status, body) = get(&format!("http://127.0.0.1:{http}/"));
    assert_eq!(status, 200);
    assert!(body.contains(HELLO_BODY));
    let token = std::fs::read_to_string(dir.path().join("control-plane/admin-token")).unwrap();
    let listed = crate::cli_as(
        &format!("https://127.0.0.1:{cp}"),
        Some(token.trim()),
        &[
            "--ca-cert",
            cert.to_str().unwrap(),
            "functions",
            "list",
            "--json",
        ],
    )
    .ok()
    .json();
    assert_eq!(listed[0]["name"], "hello");
    assert!(dev.terminate().success());
}
