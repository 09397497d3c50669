//! Projects that do not trust each other, on real processes: a developer of one project
//! cannot route another's hosts or every host, and even an administrator's `*` route with
//! the highest priority never answers a host that a project owns.

use std::time::Duration;

use crate::{
    Backend, ControlPlane, ECHO_BODY, HELLO_BODY, Runner, cli_as, cli_with_input, eventually, guest,
};

const PASSWORD: &str = "correct horse battery staple";

fn get_host(runner: &Runner, host: &str, path: &str) -> (u16, String) {
    let reply = reqwest::blocking::Client::new()
        .get(format!("http://{}{path}", runner.http))
        .header("host", host)
        .timeout(Duration::from_secs(10))
        .send()
        .unwrap();
    let status = reply.status().as_u16();
    (status, reply.text().unwrap_or_default())
}

/// A member's token, by logging in.
fn member(cp: &ControlPlane, user: &str, project: &str) -> String {
    cli_with_input(
        &cp.url,
        Some(&cp.token),
        &["users", "create", user, "--password-stdin"],
        PASSWORD,
    )
    .ok();
    cp.cli(&[
        "projects",
        "add-member",
        project,
        user,
        "--role",
        "developer",
    ])
    .ok();
    let reply: serde_json::Value = reqwest::blocking::Client::new()
        .post(format!("{}/api/v1/login", cp.url))
        .json(&serde_json::json!({ "user": user, "password": PASSWORD }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    reply["token"].as_str().unwrap().to_string()
}

#[test]
fn hosts_belong_to_their_projects_on_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&Backend::Sqlite, &dir.path().join("cp"), &[]);
    let runner = Runner::start(&cp, &dir.path().join("edge"), "edge-1", "region=local", 200);
    for project in ["shop", "evil"] {
        cp.cli(&["projects", "create", project]).ok();
    }
    let sam = member(&cp, "sam", "shop");
    let eve = member(&cp, "eve", "evil");
    let as_sam = |args: &[&str]| cli_as(&cp.url, Some(&sam), args);
    let as_eve = |args: &[&str]| cli_as(&cp.url, Some(&eve), args);

    cp.cli(&[
        "domains",
        "add",
        "shop.example.com",
        "--project",
        "shop",
        "--verified",
    ])
    .ok();
    as_sam(&["functions", "create", "web", "--project", "shop"]).ok();
    as_sam(&["deploy", "web", "--wasm", &guest("hello"), "--wait"]).ok();
    as_sam(&[
        "routes",
        "add",
        "--function",
        "web",
        "--host",
        "shop.example.com",
        "--path",
        "/*",
    ])
    .ok();
    as_eve(&["functions", "create", "grab", "--project", "evil"]).ok();
    as_eve(&["deploy", "grab", "--wasm", &guest("echo"), "--wait"]).ok();

    // The attacks of issue 11, each refused with a reason.
    let any = as_eve(&[
        "routes",
        "add",
        "--function",
        "grab",
        "--host",
        "*",
        "--path",
        "/*",
        "--priority",
        "2147483647",
    ]);
    assert!(
        !any.success && any.stderr.contains("fleet administrators"),
        "{}",
        any.stderr
    );
    let squat = as_eve(&[
        "routes",
        "add",
        "--function",
        "grab",
        "--host",
        "shop.example.com",
        "--path",
        "/x",
    ]);
    assert!(
        !squat.success && squat.stderr.contains("not a verified domain"),
        "{}",
        squat.stderr
    );
    let over = as_eve(&["domains", "add", "*.example.com", "--project", "evil"]);
    assert!(
        !over.success && over.stderr.contains("another project owns"),
        "{}",
        over.stderr
    );

    // Even a fleet administrator's catch-all at the highest priority does not answer
    // shop's host: the host picks its project before priorities count.
    cp.cli(&[
        "routes",
        "add",
        "--function",
        "grab",
        "--host",
        "*",
        "--path",
        "/*",
        "--priority",
        "2147483647",
    ])
    .ok();
    eventually(
        "the catch-all reached the node",
        Duration::from_secs(30),
        || get_host(&runner, "nobody.test", "/x").1.contains(ECHO_BODY),
    );
    let (status, body) = get_host(&runner, "shop.example.com", "/anything");
    assert_eq!(status, 200);
    assert!(body.contains(HELLO_BODY), "{body}");
    // Each function at its platform host, with no route of its own.
    let (_, body) = get_host(&runner, "web.shop.edgefn.localhost", "/");
    assert!(body.contains(HELLO_BODY), "{body}");
    let (_, body) = get_host(&runner, "grab.evil.edgefn.localhost:8000", "/");
    assert!(body.contains(ECHO_BODY), "{body}");

    // Quotas per project, from the control plane.
    cp.cli(&[
        "projects",
        "set-quota",
        "evil",
        "--max-concurrent",
        "3",
        "--pool-share",
        "25%",
    ])
    .ok();
    let quota = cp.cli(&["projects", "quota", "evil", "--json"]).ok().json();
    assert_eq!(quota["max_concurrent"], 3);
    assert_eq!(quota["pool_share_percent"], 25);
    let refused = as_eve(&["projects", "set-quota", "evil", "--max-concurrent", "1000"]);
    assert!(!refused.success, "only administrators set quotas");
}
