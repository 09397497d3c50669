//! Hosts belong to projects: attacks of one project's developer on another's traffic, and
//! domain proofs through a DNS server of the test's own on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use edgefn_control_plane::domains::dns::DnsVerifier;
use edgefn_proto::identity::Role;
use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::rdata::TXT;
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use serde_json::json;

use crate::fixture::{App, Backend, app, hello};
use crate::on_every_backend;

/// A token of a new user who has `role` in `project`.
async fn member(app: &App, name: &str, project: &str, role: Role) -> String {
    let user = app
        .store
        .create_user("system", name, None, false, None)
        .await
        .unwrap();
    app.store
        .set_member("system", project, name, role)
        .await
        .unwrap();
    let (claims, token) = app
        .state
        .auth
        .signer
        .issue_api(&user.id, &user.name, None, None, Duration::from_secs(3600))
        .unwrap();
    let hash = edgefn_control_plane::auth::tokens::secret_hash(&token);
    app.store
        .insert_token("system", &claims, &hash, "test")
        .await
        .unwrap();
    token
}

/// A DNS server on 127.0.0.1 that answers TXT queries from `records` (name → text) and
/// NXDOMAIN otherwise.
async fn dns_server(records: Arc<std::sync::Mutex<Vec<(String, String)>>>) -> std::net::SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buffer = [0u8; 1500];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buffer).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buffer[..n]) else {
                continue;
            };
            let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
            reply.metadata.recursion_desired = query.metadata.recursion_desired;
            reply.metadata.recursion_available = true;
            let mut found = false;
            for question in &query.queries {
                reply.add_query(question.clone());
                let name = question.name().to_ascii().trim_end_matches('.').to_string();
                for (record, text) in records.lock().unwrap().iter() {
                    if *record == name && question.query_type() == RecordType::TXT {
                        found = true;
                        reply.add_answer(Record::from_rdata(
                            question.name().clone(),
                            60,
                            RData::TXT(TXT::new(vec![text.clone()])),
                        ));
                    }
                }
            }
            if !found {
                reply.metadata.response_code = ResponseCode::NXDomain;
            }
            if let Ok(bytes) = reply.to_vec() {
                let _ = socket.send_to(&bytes, peer).await;
            }
        }
    });
    address
}

async fn function(app: &App, token: &str, project: &str, name: &str) -> String {
    let created = app
        .json_as(
            Some(token),
            "POST",
            "/api/v1/functions",
            json!({ "name": name, "project": project }),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.json());
    let created = created.json();
    let id = created["function_id"].as_str().unwrap().to_string();
    app.upload(created["upload_url"].as_str().unwrap(), &hello())
        .await;
    let completed = app
        .json_as(
            Some(token),
            "POST",
            &format!("/api/v1/functions/{id}/versions/1/complete"),
            json!({}),
        )
        .await;
    assert_eq!(completed.status, 200);
    id
}

/// Regression: a developer of one project created `host "*", path "/*", priority
/// 2147483647`, a route on another project's host and a wildcard over it — all 201.
async fn a_project_cannot_take_another_projects_hosts(backend: Backend) {
    let mut app = app(&backend).await;
    let records = Arc::new(std::sync::Mutex::new(Vec::new()));
    let server = dns_server(records.clone()).await;
    app.state.dns = Some(Arc::new(DnsVerifier::with_server(server).unwrap()));
    app.router = edgefn_control_plane::api::router(app.state.clone());
    for project in ["shop", "evil"] {
        let made = app
            .json("POST", "/api/v1/projects", json!({ "name": project }))
            .await;
        assert_eq!(made.status, 201);
    }
    let sam = member(&app, "sam", "shop", Role::Developer).await;
    let eve = member(&app, "eve", "evil", Role::Developer).await;
    let shop_fn = function(&app, &sam, "shop", "web").await;
    let evil_fn = function(&app, &eve, "evil", "grab").await;

    // The administrator vouches for shop.example.com (no public DNS here).
    let vouched = app
        .json(
            "POST",
            "/api/v1/projects/shop/domains",
            json!({ "name": "shop.example.com", "verified": true }),
        )
        .await;
    assert_eq!(vouched.status, 201, "{:?}", vouched.json());
    // Only administrators may vouch.
    let self_vouched = app
        .json_as(
            Some(&eve),
            "POST",
            "/api/v1/projects/evil/domains",
            json!({ "name": "evil.example", "verified": true }),
        )
        .await;
    assert_eq!(self_vouched.status, 403);

    let route = |token: &str, host: &str, function: &str, priority: i64| {
        let body =
            json!({ "host": host, "path": "/*", "function_id": function, "priority": priority });
        let token = token.to_string();
        let app = &app;
        async move {
            app.json_as(Some(&token), "POST", "/api/v1/routes", body)
                .await
        }
    };
    let any = route(&eve, "*", &evil_fn, 2_147_483_647).await;
    assert_eq!(any.status, 403, "{:?}", any.json());
    let squat = route(&eve, "shop.example.com", &evil_fn, 0).await;
    assert_eq!(squat.status, 403, "{:?}", squat.json());
    assert!(squat.body.windows(18).any(|w| w == b"edgefn domains add"));
    for over in [
        "*.example.com",
        "example.com",
        "x.shop.example.com",
        "*.shop.example.com",
    ] {
        let claimed = app
            .json_as(
                Some(&eve),
                "POST",
                "/api/v1/projects/evil/domains",
                json!({ "name": over }),
            )
            .await;
        assert_eq!(claimed.status, 409, "{over}: {:?}", claimed.json());
        let wildcard = route(&eve, over, &evil_fn, 0).await;
        assert_eq!(wildcard.status, 403, "{over}");
    }
    // The platform domain is nobody's to claim.
    let platform = app
        .json_as(
            Some(&eve),
            "POST",
            "/api/v1/projects/evil/domains",
            json!({ "name": "*.shop.edgefn.localhost" }),
        )
        .await;
    assert_eq!(platform.status, 409);

    // Shop routes its own host; without a host, its platform host.
    assert_eq!(
        route(&sam, "shop.example.com", &shop_fn, 0).await.status,
        201
    );
    let default = app
        .json_as(
            Some(&sam),
            "POST",
            "/api/v1/routes",
            json!({ "path": "/p", "function_id": shop_fn }),
        )
        .await;
    assert_eq!(default.status, 201);
    assert_eq!(default.json()["host"], "shop.edgefn.localhost");

    // Both claim blog.example.com; shop proves it by DNS, evil's claim is dropped.
    let mut txt = None;
    for (token, project) in [(&eve, "evil"), (&sam, "shop")] {
        let claimed = app
            .json_as(
                Some(token),
                "POST",
                &format!("/api/v1/projects/{project}/domains"),
                json!({ "name": "blog.example.com" }),
            )
            .await;
        assert_eq!(claimed.status, 201, "{:?}", claimed.json());
        assert_eq!(claimed.json()["verified"], false);
        txt = Some(claimed.json());
    }
    let txt = txt.unwrap();
    assert_eq!(txt["txt_record_name"], "_edgefn-challenge.blog.example.com");
    let verify = |token: String, project: &'static str| {
        let app = &app;
        async move {
            app.json_as(
                Some(&token),
                "POST",
                &format!("/api/v1/projects/{project}/domains/blog.example.com/verify"),
                json!({}),
            )
            .await
        }
    };
    let early = verify(sam.clone(), "shop").await;
    assert_eq!(early.status, 409, "no TXT record yet: {:?}", early.json());
    // One DNS lookup per project per second: checking again at once is 429.
    let again = verify(sam.clone(), "shop").await;
    assert_eq!(again.status, 429, "{:?}", again.json());
    assert!(
        again.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("try again")),
        "{:?}",
        again.json()
    );
    let pause = edgefn_control_plane::domains::dns::LOOKUP_INTERVAL;
    tokio::time::sleep(pause).await;
    // A record with another project's token does not prove anything.
    records.lock().unwrap().push((
        "_edgefn-challenge.blog.example.com".into(),
        "edgefn-verification=not-the-token".into(),
    ));
    assert_eq!(verify(sam.clone(), "shop").await.status, 409);
    records.lock().unwrap().push((
        "_edgefn-challenge.blog.example.com".into(),
        txt["txt_record_value"].as_str().unwrap().to_string(),
    ));
    tokio::time::sleep(pause).await;
    let proven = verify(sam.clone(), "shop").await;
    assert_eq!(proven.status, 200, "{:?}", proven.json());
    assert_eq!(proven.json()["verified"], true);
    let evil_claims = app
        .json_as(
            Some(&eve),
            "GET",
            "/api/v1/projects/evil/domains",
            serde_json::Value::Null,
        )
        .await
        .json();
    assert_eq!(evil_claims, json!([]), "evil's overlapping claim is gone");
    assert_eq!(
        route(&sam, "blog.example.com", &shop_fn, 0).await.status,
        201
    );

    // A domain in use cannot be removed; the tenant field is gone from the API.
    let removed = app
        .json_as(
            Some(&sam),
            "DELETE",
            "/api/v1/projects/shop/domains/shop.example.com",
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(removed.status, 409);
    let with_tenant = app
        .json_as(
            Some(&eve),
            "POST",
            "/api/v1/functions",
            json!({ "name": "borrow", "project": "evil", "tenant": "shop" }),
        )
        .await;
    assert_eq!(with_tenant.status, 400, "{:?}", with_tenant.json());

    // What nodes get: routes name their project, the tenant is the project, and each
    // function has its platform host.
    let node = app.enroll("edge", json!({ "region": "tokyo" })).await;
    for (token, id) in [(&sam, &shop_fn), (&eve, &evil_fn)] {
        let deployed = app
            .json_as(
                Some(token),
                "POST",
                &format!("/api/v1/functions/{id}/deploy"),
                json!({ "version": 1 }),
            )
            .await;
        assert_eq!(deployed.status, 201, "{:?}", deployed.json());
    }
    let state = app.store.desired_state(&node.id).await.unwrap();
    assert_eq!(state.format, edgefn_proto::sync::DESIRED_STATE_FORMAT);
    for function in &state.functions {
        let expected = if function.function_id == shop_fn {
            "shop"
        } else {
            "evil"
        };
        assert_eq!(function.settings.tenant, expected);
    }
    let hosts: Vec<(&str, Option<&str>)> = state
        .routes
        .iter()
        .map(|r| (r.host.as_str(), r.project.as_deref()))
        .collect();
    // The node reports what it holds; each project sees only its own items.
    let items = json!([
        { "function_id": shop_fn, "version": 1, "state": "failed", "error": "shop's secret error" },
        { "function_id": evil_fn, "version": 1, "state": "ready" },
    ]);
    let beat = app
        .node(
            &node,
            "POST",
            &format!("/api/v1/nodes/{}/heartbeat", node.id),
            json!({ "node_id": node.id, "status": "online", "cpu_percent": 1.0, "mem_bytes": 1, "inventory": items }),
        )
        .await;
    assert_eq!(beat.status, 200, "{:?}", beat.json());
    // Shop's database on the node is shop's business too.
    let made = app
        .json(
            "POST",
            "/api/v1/projects/shop/databases",
            json!({ "name": "secretdb", "pop_selector": "true" }),
        )
        .await;
    assert_eq!(made.status, 201, "{:?}", made.json());
    let seen = app
        .json_as(
            Some(&eve),
            "GET",
            &format!("/api/v1/nodes/{}", node.id),
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(seen.status, 200);
    let text = String::from_utf8_lossy(&seen.body).to_string();
    assert!(
        !text.contains(&shop_fn) && !text.contains("secret"),
        "{text}"
    );
    assert_eq!(seen.json()["databases"], json!([]), "{text}");
    assert!(text.contains(&evil_fn), "{text}");
    let all = app.get(&format!("/api/v1/nodes/{}", node.id)).await;
    assert!(
        String::from_utf8_lossy(&all.body).contains("secret"),
        "administrators see all"
    );
    assert_eq!(all.json()["databases"][0]["database"], "secretdb");

    for expected in [
        ("shop.example.com", Some("shop")),
        ("blog.example.com", Some("shop")),
        ("shop.edgefn.localhost", Some("shop")),
        ("web.shop.edgefn.localhost", Some("shop")),
        ("grab.evil.edgefn.localhost", Some("evil")),
    ] {
        assert!(hosts.contains(&expected), "{expected:?} in {hosts:?}");
    }
}

on_every_backend!(a_project_cannot_take_another_projects_hosts);

/// A project cannot pile up claims: past the cap a claim is 409 until one is removed.
#[tokio::test]
async fn a_project_may_hold_a_bounded_number_of_domains() {
    use edgefn_control_plane::store::MAX_DOMAINS_PER_PROJECT;
    let app = app(&Backend::Sqlite).await;
    let made = app
        .json("POST", "/api/v1/projects", json!({ "name": "shop" }))
        .await;
    assert_eq!(made.status, 201);
    let sam = member(&app, "sam", "shop", Role::Developer).await;
    let claim = |name: String| {
        let app = &app;
        let sam = sam.clone();
        async move {
            app.json_as(
                Some(&sam),
                "POST",
                "/api/v1/projects/shop/domains",
                json!({ "name": name }),
            )
            .await
        }
    };
    for i in 0..MAX_DOMAINS_PER_PROJECT {
        assert_eq!(claim(format!("d{i}.example.com")).await.status, 201);
    }
    let over = claim("one-more.example.com".into()).await;
    assert_eq!(over.status, 409, "{:?}", over.json());
    let removed = app
        .json_as(
            Some(&sam),
            "DELETE",
            "/api/v1/projects/shop/domains/d0.example.com",
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(removed.status, 204);
    assert_eq!(claim("one-more.example.com".into()).await.status, 201);
}
