//! Unauthenticated abuse of a real control plane: oversized and repeated logins, slow
//! clients. Each attack worked before the control plane bounded it.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use crate::{Backend, ControlPlane, cli_with_input};

const PASSWORD: &str = "correct horse battery staple";

fn login(cp: &ControlPlane, user: &str, password: &str) -> reqwest::blocking::Response {
    reqwest::blocking::Client::new()
        .post(format!("{}/api/v1/login", cp.url))
        .json(&serde_json::json!({ "user": user, "password": password }))
        .send()
        .unwrap()
}

/// A 200 KB user name is refused unread (413); a 4 KB one is refused and leaves at most 64
/// bytes of itself in the audit log; 40 wrong passwords in a row lock the user out with 429
/// and `Retry-After`, and then even the right password waits — while other users log in.
#[test]
fn logins_are_bounded_and_guessing_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&Backend::Sqlite, &dir.path().join("cp"), &[]);
    for user in ["alice", "bob"] {
        cli_with_input(
            &cp.url,
            Some(&cp.token),
            &["users", "create", user, "--password-stdin"],
            PASSWORD,
        )
        .ok();
    }

    let huge = "u".repeat(200_000);
    assert_eq!(login(&cp, &huge, "x").status(), 413);
    let long = format!("{}{}", "v".repeat(60), "w".repeat(4_000));
    assert_eq!(login(&cp, &long, "x").status(), 401);
    let records = cp
        .cli(&["audit", "list", "--action", "auth.refused", "--json"])
        .ok()
        .json();
    let actors: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["actor"].as_str())
        .collect();
    assert!(
        actors.contains(&format!("user:{}", "v".repeat(60) + "wwww").as_str()),
        "{actors:?}"
    );
    assert!(
        actors.iter().all(|a| a.len() <= "user:".len() + 64),
        "{actors:?}"
    );

    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..40 {
        let reply = login(&cp, "alice", "wrong password!");
        if reply.status() == 429 {
            retry_after = reply.headers().get("retry-after").cloned();
        }
        statuses.push(reply.status().as_u16());
    }
    let first_429 = statuses
        .iter()
        .position(|s| *s == 429)
        .expect("no 429 at all");
    assert!(first_429 <= 6, "{statuses:?}");
    // Each lockout that runs out lets one more guess through, and then doubles: a handful
    // of guesses in 40 attempts, not 40.
    let guesses = statuses.iter().filter(|s| **s == 401).count();
    assert!(
        guesses <= 9,
        "{guesses} guesses reached the password check: {statuses:?}"
    );
    let seconds = |reply: &reqwest::blocking::Response| -> u64 {
        reply.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(retry_after.is_some());
    // While a lockout of a few seconds runs, even the right password is refused unread.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let reply = login(&cp, "alice", "wrong password!");
        if reply.status() == 429 && seconds(&reply) >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no lockout of 2 s or more"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(login(&cp, "alice", PASSWORD).status(), 429, "locked out");
    assert_eq!(login(&cp, "bob", PASSWORD).status(), 201, "another user");
}

/// Connections that send half a request head, or nothing, to the API are closed after the
/// header read timeout, while the API keeps answering.
#[test]
fn slow_clients_of_the_api_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(
        &Backend::Sqlite,
        &dir.path().join("cp"),
        &["--header-read-timeout-ms", "1000"],
    );
    let address = cp.url.trim_start_matches("http://").to_string();
    let mut slow: Vec<std::net::TcpStream> = (0..40u32)
        .map(|i| {
            let mut stream = std::net::TcpStream::connect(&address).unwrap();
            if i.is_multiple_of(2) {
                stream
                    .write_all(b"GET /api/v1/whoami HTTP/1.1\r\nHost: a\r\nX-Slow: ")
                    .unwrap();
            }
            stream
        })
        .collect();
    let (status, _) = crate::get(&format!("{}/api/v1/openapi.json", cp.url));
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(2_500));
    for (i, stream) in slow.iter_mut().enumerate() {
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut rest = Vec::new();
        let closed = stream.read_to_end(&mut rest).is_ok();
        assert!(closed, "connection {i} still open after 2.5 s");
    }
}

/// The files that hold keys and tokens are readable only by their owner: the control
/// plane's data directory and database, the runner's state directory and its key.
#[test]
fn files_holding_keys_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&Backend::Sqlite, &dir.path().join("cp"), &[]);
    let runner = crate::Runner::start(&cp, &dir.path().join("edge"), "edge-1", "region=local", 200);
    let state = dir.path().join("edge/state");
    crate::eventually("the runner enrolled", Duration::from_secs(30), || {
        state.join("node.json").exists()
    });
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&dir.path().join("cp")), 0o700);
    assert_eq!(mode(&dir.path().join("cp/edgefn.db")), 0o600);
    assert_eq!(mode(&dir.path().join("cp/admin-token")), 0o600);
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("node.pem")), 0o600);
    assert!(
        !state.join("node.key").exists(),
        "key and certificate live in one file"
    );
    drop(runner);
}

/// Zeros, `left` of them, without holding them in memory.
struct Zeros {
    left: u64,
}

impl std::io::Read for Zeros {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let n = buffer.len().min(self.left as usize);
        buffer[..n].fill(0);
        self.left -= n as u64;
        Ok(n)
    }
}

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// A 2 GiB upload is refused — unread without a valid signature, and by its declared or
/// its actual size with one — and the control plane's memory stays under 200 MiB.
#[test]
fn a_huge_upload_is_refused_without_filling_memory() {
    const TWO_GIB: u64 = 2 << 30;
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&Backend::Sqlite, &dir.path().join("cp"), &[]);
    let created = cp
        .cli(&["functions", "create", "big", "--json"])
        .ok()
        .json();
    let url = created["upload_url"].as_str().unwrap().to_string();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let put = |url: &str, sized: bool| {
        let body = if sized {
            reqwest::blocking::Body::sized(Zeros { left: TWO_GIB }, TWO_GIB)
        } else {
            reqwest::blocking::Body::new(Zeros { left: TWO_GIB })
        };
        client
            .put(url)
            .body(body)
            .send()
            .map(|r| r.status().as_u16())
    };
    let forged = url.replace("signature=", "signature=00");
    let status = put(&forged, true);
    assert!(matches!(status, Ok(403) | Err(_)), "{status:?}");
    assert_eq!(put(&url, true).unwrap_or(413), 413, "declared size");
    let streamed = put(&url, false);
    assert!(matches!(streamed, Ok(413) | Err(_)), "{streamed:?}");
    let peak = peak_rss(cp.process.pid());
    assert!(
        peak < 200 << 20,
        "the control plane peaked at {} MiB",
        peak >> 20
    );
}
