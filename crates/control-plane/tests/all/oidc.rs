//! Tokens of an external OIDC issuer, checked against its JWKS served on 127.0.0.1: a
//! known user gets exactly their memberships; an unknown one is authenticated but allowed
//! nothing; a token for another audience or issuer, an expired one, one signed with a key
//! the issuer does not publish, or with HS256 is refused with 401.

use edgefn_control_plane::auth::oidc::ExternalIssuer;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::fixture::{App, Backend, app};

const ISSUER: &str = "https://id.example.test";

/// An identity provider: its signing key, and its JWKS on a local port.
struct Provider {
    key: rcgen::KeyPair,
    jwks_url: String,
}

async fn provider() -> Provider {
    use base64::Engine as _;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    // An uncompressed P-256 point: 0x04, then x and y.
    let point = key.public_key_raw();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwks = json!({ "keys": [{
        "kty": "EC", "crv": "P-256", "kid": "idp-1", "alg": "ES256", "use": "sig",
        "x": b64(&point[1..33]), "y": b64(&point[33..65]),
    }]});
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Provider {
        key,
        jwks_url: format!("http://{address}/jwks.json"),
    }
}

impl Provider {
    fn token(&self, claims: serde_json::Value, kid: &str) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_ec_pem(self.key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap()
    }
}

fn claims(email: &str, audience: &str, issuer: &str, exp_in: i64) -> serde_json::Value {
    let now = edgefn_control_plane::store::now_ms() / 1000;
    json!({ "iss": issuer, "aud": audience, "sub": "idp|123", "email": email, "email_verified": true, "iat": now, "exp": now + exp_in })
}

async fn status(app: &App, token: &str, method: &str, path: &str, body: serde_json::Value) -> u16 {
    app.json_as(Some(token), method, path, body).await.status
}

#[tokio::test]
async fn an_external_issuers_tokens_act_with_their_users_memberships() {
    let idp = provider().await;
    let app = app(&Backend::Sqlite)
        .await
        .with_external(ExternalIssuer::new(
            ISSUER,
            "edgefn",
            &idp.jwks_url,
            "email",
        ));
    assert_eq!(
        app.json(
            "POST",
            "/api/v1/users",
            json!({ "name": "alice@example.test", "issuer": ISSUER }),
        )
        .await
        .status,
        201
    );
    // A local administrator whose name an external user could claim.
    assert_eq!(
        app.json(
            "POST",
            "/api/v1/users",
            json!({ "name": "root@example.test", "admin": true }),
        )
        .await
        .status,
        201
    );
    // An issuer's user signs in there, never with a password here.
    assert_eq!(
        app.json(
            "POST",
            "/api/v1/users",
            json!({ "name": "x@example.test", "issuer": ISSUER, "password": "long enough password" }),
        )
        .await
        .status,
        400
    );
    assert_eq!(
        app.json(
            "PUT",
            "/api/v1/projects/default/members/alice@example.test",
            json!({ "role": "viewer" })
        )
        .await
        .status,
        200
    );
    let alice = idp.token(claims("alice@example.test", "edgefn", ISSUER, 600), "idp-1");
    let me = app
        .json_as(Some(&alice), "GET", "/api/v1/whoami", json!(null))
        .await
        .json();
    assert_eq!(me["user"], "alice@example.test");
    assert_eq!(me["issuer"], ISSUER);
    assert_eq!(me["projects"]["default"], "viewer");
    assert_eq!(
        status(
            &app,
            &alice,
            "GET",
            "/api/v1/functions?project=default",
            json!(null)
        )
        .await,
        200
    );
    assert_eq!(
        status(
            &app,
            &alice,
            "POST",
            "/api/v1/functions",
            json!({ "name": "nope" })
        )
        .await,
        403,
        "a viewer does not create functions"
    );

    // A token whose claim names a local user is not that user: authenticated, allowed
    // nothing (before users were tied to their issuer it acted as the administrator).
    let impostor = idp.token(claims("root@example.test", "edgefn", ISSUER, 600), "idp-1");
    let me = app
        .json_as(Some(&impostor), "GET", "/api/v1/whoami", json!(null))
        .await
        .json();
    assert_eq!(me["admin"], false, "{me}");
    assert_eq!(
        status(&app, &impostor, "GET", "/api/v1/users", json!(null)).await,
        403
    );

    // Known to the issuer, not here: authenticated, allowed nothing.
    let stranger = idp.token(claims("bob@example.test", "edgefn", ISSUER, 600), "idp-1");
    assert_eq!(
        status(&app, &stranger, "GET", "/api/v1/whoami", json!(null)).await,
        200
    );
    assert_eq!(
        status(
            &app,
            &stranger,
            "GET",
            "/api/v1/functions?project=default",
            json!(null)
        )
        .await,
        403
    );

    for (what, token) in [
        (
            "another audience",
            idp.token(
                claims("alice@example.test", "someone-else", ISSUER, 600),
                "idp-1",
            ),
        ),
        (
            "another issuer",
            idp.token(
                claims("alice@example.test", "edgefn", "https://evil.test", 600),
                "idp-1",
            ),
        ),
        (
            "expired",
            idp.token(
                claims("alice@example.test", "edgefn", ISSUER, -600),
                "idp-1",
            ),
        ),
        (
            "an e-mail address the issuer has not verified",
            idp.token(
                {
                    let mut unverified = claims("alice@example.test", "edgefn", ISSUER, 600);
                    unverified["email_verified"] = json!(false);
                    unverified
                },
                "idp-1",
            ),
        ),
        (
            "an unpublished key",
            idp.token(claims("alice@example.test", "edgefn", ISSUER, 600), "idp-2"),
        ),
        (
            "no user claim",
            idp.token(
                json!({ "iss": ISSUER, "aud": "edgefn", "sub": "x", "exp": 4_000_000_000u64 }),
                "idp-1",
            ),
        ),
    ] {
        assert_eq!(
            status(&app, &token, "GET", "/api/v1/whoami", json!(null)).await,
            401,
            "{what}"
        );
    }
    // HS256 with the issuer's public key as the secret: never accepted from an issuer.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("idp-1".into());
    let confused = jsonwebtoken::encode(
        &header,
        &claims("alice@example.test", "edgefn", ISSUER, 600),
        &EncodingKey::from_secret(idp.key.public_key_pem().as_bytes()),
    )
    .unwrap();
    assert_eq!(
        status(&app, &confused, "GET", "/api/v1/whoami", json!(null)).await,
        401
    );
}

#[tokio::test]
async fn hostile_tokens_get_401_on_the_api() {
    let app = app(&Backend::Sqlite).await;
    use base64::Engine as _;
    let b64 = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
    let kid = app.state.auth.signer.kid().to_string();
    let real = app.state.auth.signer.verify_api(&app.admin).unwrap();
    let payload = serde_json::to_string(&real).unwrap();
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(kid.clone());
    let tokens = [
        format!(
            "{}.{}.",
            b64(&format!(r#"{{"alg":"none","kid":"{kid}"}}"#)),
            b64(&payload)
        ),
        jsonwebtoken::encode(
            &hs,
            &real,
            &EncodingKey::from_secret(app.state.auth.signer.public_pem().as_bytes()),
        )
        .unwrap(),
        format!(
            "{}.{}.AAAA",
            b64(r#"{"alg":"ES256","kid":"nobody"}"#),
            b64(&payload)
        ),
        "x".repeat(9000),
        "a.b.c".into(),
        String::new(),
    ];
    for token in tokens {
        let reply = app
            .send_as(
                Some(&token),
                "GET",
                "/api/v1/whoami",
                bytes::Bytes::new(),
                "application/json",
            )
            .await;
        assert_eq!(reply.status, 401, "{}", &token[..token.len().min(60)]);
        assert_eq!(reply.json()["error"]["code"], "unauthenticated");
    }
    // The administrator's token, revoked: refused from the next call on.
    assert_eq!(
        app.send("GET", "/api/v1/whoami", bytes::Bytes::new(), "")
            .await
            .status,
        200
    );
    app.send(
        "DELETE",
        &format!("/api/v1/tokens/{}", real.jti),
        bytes::Bytes::new(),
        "",
    )
    .await;
    let after = app
        .send("GET", "/api/v1/whoami", bytes::Bytes::new(), "")
        .await;
    assert_eq!(after.status, 401);
    assert!(
        after.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
}
