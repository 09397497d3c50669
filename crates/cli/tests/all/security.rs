//! Security as users meet it, through the CLI and real processes: logging in and acting
//! within one's role, tokens limited and revoked, `edgefn audit verify` naming the first
//! bad record of a tampered copy, a revoked runner cut off, and the API over TLS.

use std::path::Path;
use std::time::Duration;

use crate::{
    Backend, ControlPlane, ECHO_BODY, HELLO_BODY, Runner, cli_as, cli_with_input, eventually, guest,
};

const PASSWORD: &str = "correct horse battery staple";

#[test]
fn users_log_in_and_act_within_their_role() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&Backend::Sqlite, &dir.path().join("cp"), &[]);
    cp.cli(&["projects", "create", "shop"]).ok();
    cli_with_input(
        &cp.url,
        Some(&cp.token),
        &["users", "create", "alice", "--password-stdin"],
        PASSWORD,
    )
    .ok();
    cp.cli(&[
        "projects",
        "add-member",
        "shop",
        "alice",
        "--role",
        "developer",
    ])
    .ok();

    // A wrong password: 401, and no config written.
    let config = dir.path().join("alice.toml");
    let config_arg = config.to_str().unwrap();
    let wrong = cli_with_input(
        &cp.url,
        None,
        &["--config", config_arg, "login", "--user", "alice"],
        "not the password\n",
    );
    assert!(!wrong.success);
    assert!(
        wrong.stderr.contains("wrong user name or password"),
        "{}",
        wrong.stderr
    );
    assert!(!config.exists());

    let login = cli_with_input(
        &cp.url,
        None,
        &["--config", config_arg, "login", "--user", "alice"],
        &format!("{PASSWORD}\n"),
    )
    .ok();
    assert!(login.stdout.contains("as alice"), "{}", login.stdout);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // From now on the config file carries the URL and the token.
    let alice = |args: &[&str]| {
        let mut all = vec!["--config", config_arg];
        all.extend_from_slice(args);
        let output = std::process::Command::new(crate::EDGEFN)
            .args(&all)
            .env_remove("EDGEFN_URL")
            .env_remove("EDGEFN_TOKEN")
            .output()
            .unwrap();
        crate::CliOutput {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    };
    let me = alice(&["whoami", "--json"]).ok().json();
    assert_eq!(me["user"], "alice");
    assert_eq!(me["projects"]["shop"], "developer");
    alice(&["functions", "create", "web", "--project", "shop"]).ok();
    let elsewhere = alice(&["functions", "create", "web", "--project", "default"]);
    assert!(!elsewhere.success);
    assert!(
        elsewhere.stderr.contains("HTTP 403"),
        "{}",
        elsewhere.stderr
    );
    assert!(
        elsewhere.stderr.contains("no role in project \"default\""),
        "{}",
        elsewhere.stderr
    );

    // A token limited to viewing: it reads, it does not change.
    let viewer = alice(&[
        "tokens",
        "create",
        "--project",
        "shop",
        "--role",
        "viewer",
        "--ttl",
        "1h",
        "--json",
    ])
    .ok()
    .json();
    let viewer_token = viewer["token"].as_str().unwrap();
    let listed = cli_as(
        &cp.url,
        Some(viewer_token),
        &["functions", "list", "--json"],
    )
    .ok()
    .json();
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "only shop's function: {listed}"
    );
    let refused = cli_as(
        &cp.url,
        Some(viewer_token),
        &["functions", "create", "more", "--project", "shop"],
    );
    assert!(refused.stderr.contains("HTTP 403"), "{}", refused.stderr);
    // Nor can it mint a stronger one.
    let stronger = cli_as(
        &cp.url,
        Some(viewer_token),
        &["tokens", "create", "--project", "shop", "--role", "owner"],
    );
    assert!(stronger.stderr.contains("HTTP 403"), "{}", stronger.stderr);
    // Revoked: refused at once, with what to do about it.
    alice(&["tokens", "revoke", viewer["id"].as_str().unwrap()]).ok();
    let gone = cli_as(&cp.url, Some(viewer_token), &["functions", "list"]);
    assert!(gone.stderr.contains("HTTP 401"), "{}", gone.stderr);
    assert!(gone.stderr.contains("revoked"), "{}", gone.stderr);
    assert!(gone.stderr.contains("edgefn login"), "{}", gone.stderr);

    // Every step is in the audit log, which only the administrator reads whole.
    let records = cp
        .cli(&["audit", "list", "--actor", "user:alice", "--json"])
        .ok()
        .json();
    let actions: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for action in [
        "token.create",
        "function.create",
        "token.revoke",
        "auth.denied",
    ] {
        assert!(
            actions.contains(&action),
            "{action} missing from {actions:?}"
        );
    }
    assert!(
        !alice(&["audit", "list"]).success,
        "alice is not an administrator"
    );
}

/// Copies a SQLite database with its WAL.
fn copy_database(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    for suffix in ["-wal", "-shm"] {
        let side = format!("{}{suffix}", from.display());
        if Path::new(&side).exists() {
            std::fs::copy(&side, format!("{}{suffix}", to.display())).unwrap();
        }
    }
}

#[test]
fn audit_verify_names_the_first_bad_record_of_a_tampered_copy() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp");
    let mut cp = ControlPlane::start(
        &Backend::Sqlite,
        &data,
        &["--audit-checkpoint-secs", "3600"],
    );
    for name in ["a", "b", "c"] {
        cp.cli(&["functions", "create", name]).ok();
    }
    let online = cp.cli(&["audit", "verify", "--json"]).ok().json();
    assert_eq!(online["ok"], true, "{online}");
    // A graceful stop writes the last checkpoint.
    assert!(cp.process.terminate().success());
    let checkpoints = data.join("audit-checkpoints");
    let database = data.join("edgefn.db");
    let verify = |db: &Path| {
        cli_as(
            "http://127.0.0.1:9",
            None,
            &[
                "audit",
                "verify",
                "--database-url",
                &format!("sqlite://{}", db.display()),
                "--checkpoints",
                checkpoints.to_str().unwrap(),
            ],
        )
    };
    let clean = verify(&database);
    assert!(clean.success, "{}{}", clean.stdout, clean.stderr);
    assert!(clean.stdout.contains("ok:"), "{}", clean.stdout);

    let copy = dir.path().join("copy.db");
    copy_database(&database, &copy);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use sqlx::ConnectOptions as _;
        let mut db = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&copy)
            .connect()
            .await
            .unwrap();
        sqlx::raw_sql("DROP TRIGGER audit_log_no_update; UPDATE audit_log SET actor = 'user:mallory' WHERE seq = 3")
            .execute(&mut db)
            .await
            .unwrap();
    });
    let tampered = verify(&copy);
    assert!(!tampered.success, "a tampered copy must not verify");
    assert!(tampered.stdout.contains("TAMPERED"), "{}", tampered.stdout);
    assert!(
        tampered.stderr.contains("first bad record 3"),
        "{}",
        tampered.stderr
    );
}

#[test]
fn a_revoked_runner_is_cut_off_and_keeps_serving_what_it_had() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&Backend::Sqlite, &dir.path().join("cp"), &[]);
    let runner = Runner::start(&cp, &dir.path().join("r1"), "edge-1", "region=tokyo", 200);
    cp.cli(&["functions", "create", "hello"]).ok();
    cp.cli(&["routes", "add", "--path", "/", "--function", "hello"])
        .ok();
    cp.cli(&["deploy", "hello", "--wasm", &guest("hello"), "--wait"])
        .ok();
    assert!(runner.get("/").1.contains(HELLO_BODY));
    let node = cp.node_id("edge-1");
    cp.cli(&["nodes", "revoke", &node]).ok();
    let shown = cp.cli(&["nodes", "show", &node]).ok().stdout;
    assert!(shown.contains("revoked"), "{shown}");
    // The next version does not reach it; it keeps serving the last one it applied.
    cp.cli(&["deploy", "hello", "--wasm", &guest("echo")]).ok();
    std::thread::sleep(Duration::from_secs(2));
    let (status, body) = runner.get("/");
    assert_eq!(status, 200);
    assert!(
        body.contains(HELLO_BODY) && !body.contains(ECHO_BODY),
        "{body}"
    );
    // Its attempts to come back are refused and audited.
    eventually(
        "the revoked node's connections are refused",
        Duration::from_secs(20),
        || {
            let records = cp
                .cli(&["audit", "list", "--action", "node.refused", "--json"])
                .ok()
                .json();
            records.as_array().unwrap().iter().any(|r| {
                r["actor"] == format!("node:{node}").as_str()
                    && r["details"]["reason"]
                        .as_str()
                        .is_some_and(|reason| reason.contains("revoked"))
            })
        },
    );
}

#[test]
fn the_api_serves_tls_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp");
    let cp = ControlPlane::start(&Backend::Sqlite, &data, &["--tls-self-signed"]);
    let url = cp.url.replacen("http://", "https://", 1);
    let cert = data.join("api-tls.crt");
    let trusted = cli_as(
        &url,
        Some(&cp.token),
        &["--ca-cert", cert.to_str().unwrap(), "whoami"],
    );
    assert!(trusted.success, "{}", trusted.stderr);
    assert!(trusted.stdout.contains("admin"), "{}", trusted.stdout);
    let untrusted = cli_as(&url, Some(&cp.token), &["whoami"]);
    assert!(
        !untrusted.success,
        "a self-signed certificate is not trusted without --ca-cert"
    );
    let plain = cli_as(&cp.url, Some(&cp.token), &["whoami"]);
    assert!(!plain.success, "plain HTTP is not served on a TLS listener");

    // A runner enrolls over that TLS, trusting the certificate with --api-ca-cert.
    let ca = cert.to_str().unwrap();
    let created = cli_as(
        &url,
        Some(&cp.token),
        &["--ca-cert", ca, "nodes", "token", "create", "--json"],
    )
    .ok()
    .json();
    let command = runner_command(
        &url,
        dir.path(),
        "edge-tls",
        &[
            "--api-ca-cert",
            ca,
            "--bootstrap-token",
            created["token"].as_str().unwrap(),
            "--heartbeat-ms",
            "200",
        ],
    );
    let mut runner = crate::Process::spawn(command);
    runner.listening("http");
    eventually(
        "the runner enrolls over TLS",
        Duration::from_secs(20),
        || {
            let nodes = cli_as(
                &url,
                Some(&cp.token),
                &["--ca-cert", ca, "nodes", "list", "--json"],
            )
            .ok()
            .json();
            nodes
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["name"] == "edge-tls" && n["status"] == "online")
        },
    );
}

#[test]
fn a_runner_refuses_a_control_plane_whose_ca_is_not_the_pinned_one() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&Backend::Sqlite, &dir.path().join("cp"), &[]);
    let (token, _) = cp.bootstrap_token();
    let pin = "ab".repeat(32);
    let command = runner_command(
        &cp.url,
        dir.path(),
        "edge-1",
        &["--bootstrap-token", &token, "--ca-sha256", &pin],
    );
    let mut runner = crate::Process::spawn(command);
    runner.listening("http");
    runner.wait_line("the refusal", |line| {
        line.contains("refusing it").then_some(())
    });
    assert!(
        !dir.path().join("state/node.json").exists(),
        "no identity from an unexpected CA"
    );
}

/// `edgefn runner` for `control_plane`, on free ports, its cache and state in `dir`.
fn runner_command(
    control_plane: &str,
    dir: &Path,
    node_id: &str,
    extra: &[&str],
) -> std::process::Command {
    let mut command = std::process::Command::new(crate::EDGEFN);
    command
        .args(["runner", "--control-plane", control_plane])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--node-id", node_id])
        .args(extra)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .arg("--state-dir")
        .arg(dir.join("state"));
    command
}
