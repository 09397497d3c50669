//! Tokens made by tokens: never longer-lived, never wider, and a project-limited token
//! sees and revokes only tokens as narrow as itself.

use std::time::Duration;

use edgefn_proto::identity::Role;
use serde_json::json;

use crate::fixture::{App, Backend, app};

async fn user_token(app: &App, name: &str, ttl: Duration) -> (String, i64) {
    let user = app.store.user_by_name(name).await.unwrap().unwrap();
    let (claims, token) = app
        .state
        .auth
        .signer
        .issue_api(&user.id, name, None, None, ttl)
        .unwrap();
    let hash = edgefn_control_plane::auth::tokens::secret_hash(&token);
    app.store
        .insert_token("system", &claims, &hash, "test")
        .await
        .unwrap();
    (token, claims.exp)
}

#[tokio::test]
async fn a_token_cannot_mint_a_wider_or_longer_lived_one() {
    let app = app(&Backend::Sqlite).await;
    for project in ["a", "b"] {
        app.json("POST", "/api/v1/projects", json!({ "name": project }))
            .await;
    }
    app.store
        .create_user("system", "alice", None, false, None)
        .await
        .unwrap();
    for project in ["a", "b"] {
        app.store
            .set_member("system", project, "alice", Role::Developer)
            .await
            .unwrap();
    }
    let (hour, hour_exp) = user_token(&app, "alice", Duration::from_secs(3600)).await;
    let mint = |token: &str, body: serde_json::Value| {
        let token = token.to_string();
        let app = &app;
        async move {
            app.json_as(Some(&token), "POST", "/api/v1/tokens", body)
                .await
        }
    };
    let longer = mint(
        &hour,
        json!({ "project": "a", "role": "viewer", "ttl": "30d" }),
    )
    .await;
    assert_eq!(longer.status, 403, "{:?}", longer.json());
    assert!(longer.body.windows(7).any(|w| w == b"outlive"));
    let default = mint(&hour, json!({ "project": "a", "role": "viewer" })).await;
    assert_eq!(default.status, 201);
    assert!(default.json()["expires_at"].as_i64().unwrap() <= hour_exp * 1000);

    let limited = mint(&hour, json!({ "project": "a", "ttl": "10m" }))
        .await
        .json();
    let limited_token = limited["token"].as_str().unwrap().to_string();
    let other = mint(&hour, json!({ "project": "b", "ttl": "10m" }))
        .await
        .json();
    let other_id = other["id"].as_str().unwrap().to_string();
    assert_eq!(
        mint(&limited_token, json!({ "project": "b", "ttl": "1m" }))
            .await
            .status,
        403
    );
    assert_eq!(
        mint(
            &limited_token,
            json!({ "project": "a", "role": "owner", "ttl": "1m" })
        )
        .await
        .status,
        403
    );
    let narrower = mint(
        &limited_token,
        json!({ "project": "a", "role": "viewer", "ttl": "1m" }),
    )
    .await;
    assert_eq!(narrower.status, 201);
    let narrower_id = narrower.json()["id"].as_str().unwrap().to_string();

    // The limited token lists only tokens of project a, and cannot revoke b's.
    let listed = app
        .json_as(
            Some(&limited_token),
            "GET",
            "/api/v1/tokens",
            serde_json::Value::Null,
        )
        .await
        .json();
    let projects: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["project"].as_str().unwrap_or("-"))
        .collect();
    assert!(
        !projects.is_empty() && projects.iter().all(|p| *p == "a"),
        "{projects:?}"
    );
    let revoke = |id: &str| {
        let (app, token, path) = (&app, limited_token.clone(), format!("/api/v1/tokens/{id}"));
        async move {
            app.json_as(Some(&token), "DELETE", &path, serde_json::Value::Null)
                .await
                .status
        }
    };
    assert_eq!(revoke(&other_id).await, 403);
    assert_eq!(revoke(&narrower_id).await, 204);
}
