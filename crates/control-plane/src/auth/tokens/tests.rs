//! Attacks on token verification: each is refused with the right reason, none panics.

use proptest::prelude::*;

use super::*;

fn signer() -> Signer {
    Signer::from_pem(&generate_key().unwrap(), "edgefn-test").unwrap()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn claims(signer: &Signer, exp_offset: i64, nbf_offset: i64) -> ApiClaims {
    let now = crate::store::now_ms() / 1000;
    ApiClaims {
        iss: signer.issuer().into(),
        aud: API_AUDIENCE.into(),
        sub: "user_1".into(),
        name: "alice".into(),
        jti: "tok_1".into(),
        iat: now,
        nbf: now + nbf_offset,
        exp: now + exp_offset,
        project: None,
        role: None,
    }
}

#[test]
fn a_token_we_signed_verifies() {
    let signer = signer();
    let (issued, token) = signer
        .issue_api(
            "user_1",
            "alice",
            Some("p".into()),
            Some(Role::Viewer),
            std::time::Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(signer.verify_api(&token).unwrap(), issued);
}

#[test]
fn alg_none_is_refused() {
    let signer = signer();
    let header = format!(r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#, signer.kid());
    let payload = serde_json::to_vec(&claims(&signer, 600, 0)).unwrap();
    for token in [
        format!("{}.{}.", b64(header.as_bytes()), b64(&payload)),
        format!("{}.{}", b64(header.as_bytes()), b64(&payload)),
    ] {
        assert!(
            matches!(
                signer.verify_api(&token),
                Err(TokenError::Malformed(_) | TokenError::Algorithm(_))
            ),
            "{token}"
        );
    }
}

#[test]
fn hs256_signed_with_our_public_key_is_refused() {
    let signer = signer();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(signer.kid().to_string());
    let token = jsonwebtoken::encode(
        &header,
        &claims(&signer, 600, 0),
        &EncodingKey::from_secret(signer.public_pem().as_bytes()),
    )
    .unwrap();
    assert_eq!(
        signer.verify_api(&token),
        Err(TokenError::Algorithm("HS256".into()))
    );
}

#[test]
fn an_unknown_kid_and_another_key_are_refused() {
    let (ours, theirs) = (signer(), signer());
    let (_, token) = theirs
        .issue_api(
            "u",
            "mallory",
            None,
            None,
            std::time::Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(ours.verify_api(&token), Err(TokenError::UnknownKey));
    // Their signature under our kid: the signature check catches it.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(ours.kid().to_string());
    let forged = jsonwebtoken::encode(&header, &claims(&ours, 600, 0), &theirs.encoding).unwrap();
    assert_eq!(ours.verify_api(&forged), Err(TokenError::BadSignature));
}

#[test]
fn expired_and_not_yet_valid_tokens_are_refused() {
    let signer = signer();
    let expired = signer.sign(&claims(&signer, -60, -120)).unwrap();
    assert_eq!(signer.verify_api(&expired), Err(TokenError::Expired));
    let early = signer.sign(&claims(&signer, 600, 300)).unwrap();
    assert_eq!(signer.verify_api(&early), Err(TokenError::NotYetValid));
}

#[test]
fn the_wrong_audience_or_issuer_is_refused() {
    let signer = signer();
    let (_, node_token) = signer
        .issue_node("node_1", std::time::Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        signer.verify_api(&node_token),
        Err(TokenError::WrongAudience)
    );
    let (_, api_token) = signer
        .issue_api("u", "alice", None, None, std::time::Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        signer.verify_node(&api_token),
        Err(TokenError::WrongAudience)
    );
    let mut other = claims(&signer, 600, 0);
    other.iss = "someone-else".into();
    let token = signer.sign(&other).unwrap();
    assert_eq!(signer.verify_api(&token), Err(TokenError::WrongIssuer));
}

#[test]
fn oversized_tokens_are_refused_unread() {
    let signer = signer();
    let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
    assert_eq!(signer.verify_api(&huge), Err(TokenError::TooLarge));
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {huge}").parse().unwrap(),
    );
    assert_eq!(bearer(&headers), Err(TokenError::TooLarge));
}

#[test]
fn bearer_headers_are_parsed_strictly() {
    let mut headers = http::HeaderMap::new();
    assert_eq!(bearer(&headers), Err(TokenError::Missing));
    for bad in ["Basic abc", "Bearer", "Bearer   ", "token"] {
        headers.insert(http::header::AUTHORIZATION, bad.parse().unwrap());
        assert!(bearer(&headers).is_err(), "{bad}");
    }
    headers.insert(http::header::AUTHORIZATION, "bearer abc".parse().unwrap());
    assert_eq!(bearer(&headers), Ok("abc"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random text, random dotted base64 and mangled real tokens: refused, never a panic.
    #[test]
    fn garbage_never_verifies(
        text in ".{0,300}",
        parts in proptest::collection::vec("[A-Za-z0-9_-]{0,60}", 0..5),
        flip in 0usize..2000,
    ) {
        let signer = signer_once();
        prop_assert!(signer.verify_api(&text).is_err());
        prop_assert!(signer.verify_api(&parts.join(".")).is_err());
        let (_, token) = signer
            .issue_api("u", "alice", None, None, std::time::Duration::from_secs(60))
            .unwrap();
        let mut bytes = token.into_bytes();
        // Not a segment's last character: some of its bits may be padding.
        let at = flip % (bytes.len() - 1);
        if bytes[at] != b'.' && bytes[at + 1] != b'.' {
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let mangled = String::from_utf8(bytes).unwrap();
            prop_assert!(signer.verify_api(&mangled).is_err());
        }
    }
}

fn signer_once() -> &'static Signer {
    static SIGNER: std::sync::OnceLock<Signer> = std::sync::OnceLock::new();
    SIGNER.get_or_init(signer)
}
