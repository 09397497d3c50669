//! The authorization matrix: every protected endpoint × {no token, garbage, expired, wrong
//! signature, another project's owner, viewer, developer, owner, administrator}. Exactly
//! the callers with the right role succeed; every other gets 401 or 403 and changes
//! nothing; every call that mutates or is refused leaves exactly one audit record.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use edgefn_proto::identity::Role;
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::fixture::{App, Backend, app, hello};

/// Who may call an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Needs {
    /// This role in project `a` (where every resource of the fixture lives).
    Role(Role),
    /// A fleet administrator.
    Admin,
    /// Any valid token.
    Anyone,
    /// A role in any project (every credential of the matrix has one).
    Member,
}

/// One call: method, path (with `{fn}`, `{route}`, `{deployment}`, `{node}`, `{sha}`,
/// `{token}` for the fixture's resources and the caller's own token), body.
struct Endpoint {
    method: &'static str,
    path: &'static str,
    body: Value,
    needs: Needs,
}

fn endpoints() -> Vec<Endpoint> {
    use Needs::{Admin, Anyone, Member};
    use edgefn_proto::identity::Role::{Developer, Owner, Viewer};
    let e = |method, path, body, needs| Endpoint {
        method,
        path,
        body,
        needs,
    };
    vec![
        e(
            "POST",
            "/api/v1/functions",
            json!({ "name": "made", "project": "a" }),
            Needs::Role(Developer),
        ),
        e(
            "GET",
            "/api/v1/functions?project=a",
            Value::Null,
            Needs::Role(Viewer),
        ),
        e("GET", "/api/v1/functions", Value::Null, Anyone),
        e(
            "GET",
            "/api/v1/functions/{fn}",
            Value::Null,
            Needs::Role(Viewer),
        ),
        e(
            "DELETE",
            "/api/v1/functions/{fn}?force=true",
            Value::Null,
            Needs::Role(Owner),
        ),
        e(
            "POST",
            "/api/v1/functions/{fn}/versions",
            json!({}),
            Needs::Role(Developer),
        ),
        e(
            "GET",
            "/api/v1/functions/{fn}/versions",
            Value::Null,
            Needs::Role(Viewer),
        ),
        e(
            "GET",
            "/api/v1/functions/{fn}/versions/1",
            Value::Null,
            Needs::Role(Viewer),
        ),
        e(
            "POST",
            "/api/v1/functions/{fn}/versions/2/complete",
            json!({}),
            Needs::Role(Developer),
        ),
        e(
            "POST",
            "/api/v1/functions/{fn}/versions/3/upload-url",
            json!({}),
            Needs::Role(Developer),
        ),
        e(
            "GET",
            "/api/v1/artifacts/{sha}",
            Value::Null,
            Needs::Role(Viewer),
        ),
        e(
            "POST",
            "/api/v1/routes",
            json!({ "path": "/made", "function_id": "{fn}" }),
            Needs::Role(Developer),
        ),
        e("GET", "/api/v1/routes", Value::Null, Anyone),
        e(
            "GET",
            "/api/v1/routes/{route}",
            Value::Null,
            Needs::Role(Viewer),
        ),
        e(
            "PUT",
            "/api/v1/routes/{route}",
            json!({ "path": "/moved", "function_id": "{fn}" }),
            Needs::Role(Developer),
        ),
        e(
            "DELETE",
            "/api/v1/routes/{route}",
            Value::Null,
            Needs::Role(Developer),
        ),
        e(
            "PUT",
            "/api/v1/functions/{fn}/settings",
            json!({ "memory_pages": 64 }),
            Needs::Role(Developer),
        ),
        e(
            "POST",
            "/api/v1/functions/{fn}/deploy",
            json!({ "version": 1 }),
            Needs::Role(Developer),
        ),
        e(
            "POST",
            "/api/v1/functions/{fn}/rollback",
            json!({ "to_version": 1 }),
            Needs::Role(Developer),
        ),
        e(
            "POST",
            "/api/v1/functions/{fn}/undeploy",
            json!({}),
            Needs::Role(Developer),
        ),
        e(
            "GET",
            "/api/v1/deployments/{deployment}",
            Value::Null,
            Needs::Role(Viewer),
        ),
        e(
            "POST",
            "/api/v1/deployments/{deployment}/retry",
            json!({}),
            Needs::Role(Developer),
        ),
        e("GET", "/api/v1/nodes", Value::Null, Member),
        e("GET", "/api/v1/nodes/{node}", Value::Null, Member),
        e("POST", "/api/v1/nodes/tokens", json!({}), Admin),
        e("POST", "/api/v1/nodes/{node}/revoke", json!({}), Admin),
        e("GET", "/api/v1/whoami", Value::Null, Anyone),
        e("POST", "/api/v1/users", json!({ "name": "frank" }), Admin),
        e("GET", "/api/v1/users", Value::Null, Admin),
        e("POST", "/api/v1/projects", json!({ "name": "c" }), Admin),
        e("GET", "/api/v1/projects", Value::Null, Anyone),
        e(
            "GET",
            "/api/v1/projects/a/members",
            Value::Null,
            Needs::Role(Viewer),
        ),
        e(
            "PUT",
            "/api/v1/projects/a/members/erin",
            json!({ "role": "viewer" }),
            Needs::Role(Owner),
        ),
        e(
            "DELETE",
            "/api/v1/projects/a/members/erin-old",
            Value::Null,
            Needs::Role(Owner),
        ),
        e(
            "POST",
            "/api/v1/projects/a/domains",
            json!({ "name": "made.example.com" }),
            Needs::Role(Developer),
        ),
        e(
            "GET",
            "/api/v1/projects/a/domains",
            Value::Null,
            Needs::Role(Viewer),
        ),
        e(
            "POST",
            "/api/v1/projects/a/domains/verified.example.com/verify",
            json!({}),
            Needs::Role(Developer),
        ),
        e(
            "DELETE",
            "/api/v1/projects/a/domains/gone.example.com",
            Value::Null,
            Needs::Role(Developer),
        ),
        e(
            "POST",
            "/api/v1/projects/a/databases",
            json!({ "name": "made" }),
            Needs::Role(Developer),
        ),
        e(
            "GET",
            "/api/v1/projects/a/databases",
            Value::Null,
            Needs::Role(Viewer),
        ),
        e(
            "GET",
            "/api/v1/projects/a/databases/shop",
            Value::Null,
            Needs::Role(Viewer),
        ),
        e(
            "DELETE",
            "/api/v1/projects/a/databases/shop",
            Value::Null,
            Needs::Role(Developer),
        ),
        e(
            "POST",
            "/api/v1/projects/a/databases/shop/changes",
            json!({ "sql": "CREATE TABLE made (x)" }),
            Needs::Role(Developer),
        ),
        e(
            "GET",
            "/api/v1/projects/a/databases/shop/changes",
            Value::Null,
            Needs::Role(Viewer),
        ),
        e(
            "GET",
            "/api/v1/projects/a/databases/shop/nodes",
            Value::Null,
            Needs::Role(Viewer),
        ),
        e(
            "POST",
            "/api/v1/projects/a/databases/shop/nodes/{node}/repair",
            json!({ "action": "recreate" }),
            Needs::Role(Developer),
        ),
        e(
            "GET",
            "/api/v1/projects/a/databases/shop/sync-log",
            Value::Null,
            Needs::Role(Viewer),
        ),
        e(
            "GET",
            "/api/v1/projects/a/quota",
            Value::Null,
            Needs::Role(Viewer),
        ),
        e(
            "PUT",
            "/api/v1/projects/a/quota",
            json!({ "max_concurrent": 5 }),
            Admin,
        ),
        e(
            "POST",
            "/api/v1/tokens",
            json!({ "project": "a", "role": "viewer" }),
            Needs::Role(Viewer),
        ),
        e("GET", "/api/v1/tokens", Value::Null, Anyone),
        e("DELETE", "/api/v1/tokens/{token}", Value::Null, Anyone),
        e(
            "GET",
            "/api/v1/audit?project=a",
            Value::Null,
            Needs::Role(Owner),
        ),
        e("GET", "/api/v1/audit", Value::Null, Admin),
        e("GET", "/api/v1/audit/verify", Value::Null, Admin),
    ]
}

/// Endpoints that need no bearer token (their own credential, or none).
const PUBLIC: &[(&str, &str)] = &[
    ("get", "/api/v1/openapi.json"),
    ("post", "/api/v1/login"),
    ("post", "/api/v1/nodes/register"),
    ("put", "/api/v1/uploads/{function_id}/{version}"),
];

/// Served on the node listener (its own tests check its mTLS and node tokens).
const NODE_LISTENER: &[&str] = &[
    "/api/v1/nodes/{id}/heartbeat",
    "/api/v1/nodes/{id}/desired",
    "/api/v1/nodes/{id}/token",
    "/api/v1/nodes/{id}/certificate",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Credential {
    None,
    Garbage,
    Expired,
    WrongSignature,
    OtherProject,
    Viewer,
    Developer,
    Owner,
    Admin,
}

const CREDENTIALS: [Credential; 9] = [
    Credential::None,
    Credential::Garbage,
    Credential::Expired,
    Credential::WrongSignature,
    Credential::OtherProject,
    Credential::Viewer,
    Credential::Developer,
    Credential::Owner,
    Credential::Admin,
];

/// What a credential may do: `None` if it is not a valid credential at all.
fn allowed(credential: Credential, needs: Needs) -> Option<bool> {
    use Credential::*;
    let role = match credential {
        None | Garbage | Expired | WrongSignature => return Option::None,
        OtherProject => Option::None,
        Viewer => Some(Role::Viewer),
        Developer => Some(Role::Developer),
        Owner => Some(Role::Owner),
        Admin => return Some(true),
    };
    Some(match needs {
        Needs::Anyone | Needs::Member => true,
        Needs::Admin => false,
        Needs::Role(wanted) => role.is_some_and(|have| have >= wanted),
    })
}

/// The fixture: projects `a` and `b`, a user per role, and in `a` a function with a
/// deployed version 1, an uploaded (pending) version 2, a pending version 3, a route and
/// an enrolled node.
struct World {
    app: App,
    tokens: BTreeMap<&'static str, (String, String)>,
    names: BTreeMap<&'static str, String>,
}

/// A token for `user` (its id and the token), valid for `ttl` seconds from now (negative:
/// expired that long ago).
async fn token(
    app: &App,
    user: &edgefn_proto::identity::User,
    project: Option<&str>,
    ttl: i64,
) -> (String, String) {
    let signer = &app.state.auth.signer;
    let (mut claims, _) = signer
        .issue_api(
            &user.id,
            &user.name,
            project.map(str::to_string),
            None,
            Duration::from_secs(3600),
        )
        .unwrap();
    claims.exp = claims.iat + ttl;
    if ttl < 0 {
        claims.nbf = claims.iat + ttl - 60;
    }
    let token = signer.sign(&claims).unwrap();
    let hash = edgefn_control_plane::auth::tokens::secret_hash(&token);
    app.store
        .insert_token("system", &claims, &hash, "test")
        .await
        .unwrap();
    (claims.jti, token)
}

async fn world() -> World {
    let app = app(&Backend::Sqlite).await;
    for project in ["a", "b"] {
        assert_eq!(
            app.json("POST", "/api/v1/projects", json!({ "name": project }))
                .await
                .status,
            201
        );
    }
    let mut tokens = BTreeMap::new();
    for (name, project, role) in [
        ("alice", "a", Role::Viewer),
        ("bob", "a", Role::Developer),
        ("carol", "a", Role::Owner),
        ("dave", "b", Role::Owner),
        ("erin-old", "a", Role::Viewer),
    ] {
        let user = app
            .store
            .create_user("system", name, None, false, None)
            .await
            .unwrap();
        app.store
            .set_member("system", project, name, role)
            .await
            .unwrap();
        tokens.insert(name, token(&app, &user, None, 3600).await);
    }
    app.store
        .create_user("system", "erin", None, false, None)
        .await
        .unwrap();
    let carol = app.store.user_by_name("carol").await.unwrap().unwrap();
    let carol = edgefn_proto::identity::User {
        id: carol.id,
        name: carol.name,
        admin: false,
        created_at: 0,
        projects: BTreeMap::new(),
        issuer: None,
    };
    tokens.insert("expired", token(&app, &carol, None, -120).await);
    // Carol's claims, signed with another key under our key id.
    let mut claims = app
        .state
        .auth
        .signer
        .verify_api(&tokens["carol"].1)
        .unwrap();
    claims.iat += 1;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(app.state.auth.signer.kid().to_string());
    let other_key = edgefn_control_plane::auth::tokens::generate_key().unwrap();
    let forged = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(other_key.as_bytes()).unwrap(),
    )
    .unwrap();
    tokens.insert("forged", (claims.jti.clone(), forged));
    let admin_jti = app.state.auth.signer.verify_api(&app.admin).unwrap().jti;
    tokens.insert("admin", (admin_jti, app.admin.clone()));

    // Project a's resources.
    let created = app
        .json(
            "POST",
            "/api/v1/functions",
            json!({ "name": "fa", "project": "a" }),
        )
        .await
        .json();
    let function = created["function_id"].as_str().unwrap().to_string();
    app.upload(created["upload_url"].as_str().unwrap(), &hello())
        .await;
    let completed = app
        .send(
            "POST",
            &format!("/api/v1/functions/{function}/versions/1/complete"),
            Bytes::new(),
            "",
        )
        .await;
    assert_eq!(completed.status, 200);
    let sha = completed.json()["sha256"].as_str().unwrap().to_string();
    for _ in 0..2 {
        let next = app
            .send(
                "POST",
                &format!("/api/v1/functions/{function}/versions"),
                Bytes::new(),
                "",
            )
            .await
            .json();
        if next["version"] == 2 {
            app.upload(next["upload_url"].as_str().unwrap(), &hello())
                .await;
        }
    }
    let route = app
        .json(
            "POST",
            "/api/v1/routes",
            json!({ "path": "/a", "function_id": function }),
        )
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (name, verified) in [("verified.example.com", true), ("gone.example.com", false)] {
        let claimed = app
            .json(
                "POST",
                "/api/v1/projects/a/domains",
                json!({ "name": name, "verified": verified }),
            )
            .await;
        assert_eq!(claimed.status, 201, "{:?}", claimed.json());
    }
    let created = app
        .json(
            "POST",
            "/api/v1/projects/a/databases",
            // On every node of the fixture, so that edge-1 holds a copy to repair.
            json!({ "name": "shop", "pop_selector": "region == 'tokyo'" }),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.json());
    let node = app.enroll("edge-1", json!({ "region": "tokyo" })).await.id;
    let deployment = app
        .json(
            "POST",
            &format!("/api/v1/functions/{function}/deploy"),
            json!({ "version": 1 }),
        )
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let names = BTreeMap::from([
        ("{fn}", function),
        ("{route}", route),
        ("{deployment}", deployment),
        ("{node}", node),
        ("{sha}", sha),
    ]);
    World { app, tokens, names }
}

impl World {
    fn token(&self, credential: Credential) -> Option<(String, String)> {
        let named = |name: &str| Some(self.tokens[name].clone());
        match credential {
            Credential::None => None,
            Credential::Garbage => Some(("none".into(), "garbage.not-a.jwt".into())),
            Credential::Expired => named("expired"),
            Credential::WrongSignature => named("forged"),
            Credential::OtherProject => named("dave"),
            Credential::Viewer => named("alice"),
            Credential::Developer => named("bob"),
            Credential::Owner => named("carol"),
            Credential::Admin => named("admin"),
        }
    }

    fn fill(&self, text: &str, own_token: &str) -> String {
        let mut text = text.replace("{token}", own_token);
        for (placeholder, value) in &self.names {
            text = text.replace(placeholder, value);
        }
        text
    }

    async fn call(&self, endpoint: &Endpoint, credential: Credential) -> u16 {
        let token = self.token(credential);
        let own = token.as_ref().map_or("tok_none", |(jti, _)| jti.as_str());
        let path = self.fill(endpoint.path, own);
        let body = match &endpoint.body {
            Value::Null => Bytes::new(),
            body => Bytes::from(self.fill(&body.to_string(), own)),
        };
        self.app
            .send_as(
                token.as_ref().map(|(_, t)| t.as_str()),
                endpoint.method,
                &path,
                body,
                "application/json",
            )
            .await
            .status
    }

    /// Every table but the audit log, as text.
    async fn snapshot(&self) -> String {
        use sqlx::Row as _;
        let pool = sqlx::AnyPool::connect(self.app.database_url())
            .await
            .unwrap();
        let mut out = String::new();
        for table in [
            "projects",
            "functions",
            "versions",
            "routes",
            "nodes",
            "deployments",
            "deployment_nodes",
            "node_desired",
            "domains",
            "users",
            "memberships",
            "api_tokens",
            "bootstrap_tokens",
            "cp_keys",
        ] {
            // Every column as text, so the snapshot is independent of column types.
            let columns: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT name FROM pragma_table_info('{table}')"
            )))
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>("name"))
            .collect();
            let select = columns
                .iter()
                .map(|c| format!("COALESCE(CAST({c} AS TEXT), '<null>')"))
                .collect::<Vec<_>>()
                .join(" || '|' || ");
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {select} AS row FROM {table} ORDER BY 1"
            )))
            .fetch_all(&pool)
            .await
            .unwrap();
            out.push_str(table);
            for row in rows {
                out.push('\n');
                out.push_str(&row.get::<String, _>("row"));
            }
            out.push('\n');
        }
        pool.close().await;
        out
    }

    async fn audit_count(&self) -> u64 {
        self.app
            .store
            .audit_records(0, usize::MAX >> 1)
            .await
            .unwrap()
            .len() as u64
    }
}

/// Checks one call against a world in its initial state.
async fn check(world: &World, endpoint: &Endpoint, credential: Credential) {
    let before = world.snapshot().await;
    let records = world.audit_count().await;
    let status = world.call(endpoint, credential).await;
    let what = format!("{} {} as {credential:?}", endpoint.method, endpoint.path);
    let after_records = world.audit_count().await;
    match allowed(credential, endpoint.needs) {
        None => assert_eq!(status, 401, "{what}"),
        Some(false) => assert_eq!(status, 403, "{what}"),
        Some(true) => assert!((200..300).contains(&status), "{what}: {status}"),
    }
    let refused = !(200..300).contains(&status);
    if refused {
        assert_eq!(world.snapshot().await, before, "{what} changed something");
    }
    let expected = if refused || endpoint.method != "GET" {
        1
    } else {
        0
    };
    assert_eq!(after_records - records, expected, "{what}: audit records");
}

#[tokio::test]
async fn exactly_the_right_role_succeeds_on_every_endpoint() {
    let shared = world().await;
    for endpoint in endpoints() {
        for credential in CREDENTIALS {
            let mutates = endpoint.method != "GET";
            let succeeds = allowed(credential, endpoint.needs) == Some(true);
            if succeeds && mutates {
                // A success changes the world: give it one of its own.
                check(&world().await, &endpoint, credential).await;
            } else {
                check(&shared, &endpoint, credential).await;
            }
        }
    }
}

/// Every route of the OpenAPI document is in the matrix, public, or on the node listener:
/// a new endpoint cannot be forgotten here.
#[tokio::test]
async fn the_matrix_covers_every_endpoint() {
    let app = app(&Backend::Sqlite).await;
    let document = app.get("/api/v1/openapi.json").await.json();
    let matrix: Vec<(String, String)> = endpoints()
        .iter()
        .map(|e| {
            let path = e.path.split('?').next().unwrap();
            let path = path
                .replace("{fn}", "{id}")
                .replace("{route}", "{id}")
                .replace("{deployment}", "{id}")
                .replace("{node}", "{id}")
                .replace("{token}", "{id}")
                .replace("{sha}", "{sha256}")
                .replace("/versions/1", "/versions/{version}")
                .replace("/versions/2", "/versions/{version}")
                .replace("/versions/3", "/versions/{version}")
                .replace("/projects/a/", "/projects/{id}/")
                .replace("/members/erin-old", "/members/{user}")
                .replace("/members/erin", "/members/{user}")
                .replace("/projects/{id}/domains", "/projects/{project}/domains")
                .replace("/projects/{id}/quota", "/projects/{project}/quota")
                .replace("/projects/{id}/databases", "/projects/{project}/databases")
                .replace("/databases/shop", "/databases/{name}")
                .replace("/nodes/{id}/repair", "/nodes/{node}/repair")
                .replace("/domains/verified.example.com", "/domains/{name}")
                .replace("/domains/gone.example.com", "/domains/{name}");
            (e.method.to_lowercase(), path)
        })
        .collect();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            let covered = matrix.iter().any(|(m, p)| m == method && p == path)
                || PUBLIC.iter().any(|(m, p)| m == method && p == path)
                || NODE_LISTENER.contains(&path.as_str());
            assert!(
                covered,
                "{method} {path} is not in the authorization matrix"
            );
        }
    }
}

fn credential() -> impl Strategy<Value = Credential> {
    proptest::sample::select(CREDENTIALS.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// Random sequences of calls on one world: an invalid credential always gets 401; a
    /// call the caller may not make gets 403 (or 404, once a resource is gone) and changes
    /// nothing; a call the caller may make never gets 401 or 403.
    #[test]
    fn calls_in_any_order_never_exceed_the_callers_role(
        calls in proptest::collection::vec((0..endpoints().len(), credential()), 1..8)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let world = world().await;
            let endpoints = endpoints();
            // Callers who revoked their own token: from then on, it is refused.
            let mut revoked = Vec::new();
            for (index, credential) in calls {
                let endpoint = &endpoints[index];
                let before = world.snapshot().await;
                let status = world.call(endpoint, credential).await;
                let what = format!("{} {} as {credential:?}", endpoint.method, endpoint.path);
                let expected = if revoked.contains(&credential) {
                    None
                } else {
                    allowed(credential, endpoint.needs)
                };
                if endpoint.path == "/api/v1/tokens/{token}" && status == 204 {
                    revoked.push(credential);
                }
                match expected {
                    None => prop_assert_eq!(status, 401, "{}", what),
                    Some(false) => {
                        prop_assert!(status == 403 || status == 404, "{}: {}", what, status);
                        prop_assert_eq!(world.snapshot().await, before, "{} changed something", what);
                    }
                    Some(true) => prop_assert!(status != 401 && status != 403, "{}: {}", what, status),
                }
            }
            Ok(())
        })?;
    }
}
