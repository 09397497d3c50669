//! Tokens from an external OIDC issuer (Keycloak, Dex, Auth0, Google, …), checked against
//! its published keys (JWKS). A token names its user by a claim (`--oidc-user-claim`,
//! default `email`); that user's memberships decide what it may do, as for our own tokens.
//!
//! The key set is fetched at start-up and again when a token names a key id we do not know
//! (key rotation), at most once per [`REFETCH_AFTER`], so a flood of tokens with made-up key
//! ids cannot turn into a flood of requests to the issuer. Only asymmetric algorithms are
//! accepted, and the key's type must fit the token's algorithm.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};

use super::tokens::TokenError;

/// The shortest time between two fetches of the key set.
pub const REFETCH_AFTER: Duration = Duration::from_secs(30);
/// Larger key-set documents are refused.
const MAX_JWKS_BYTES: usize = 1 << 20;

pub struct ExternalIssuer {
    pub issuer: String,
    pub audience: String,
    pub jwks_url: String,
    /// The claim that holds the user's name.
    pub user_claim: String,
    http: reqwest::Client,
    keys: tokio::sync::RwLock<(JwkSet, Option<Instant>)>,
}

impl ExternalIssuer {
    pub fn new(issuer: &str, audience: &str, jwks_url: &str, user_claim: &str) -> Self {
        Self {
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            jwks_url: jwks_url.to_string(),
            user_claim: user_claim.to_string(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            keys: tokio::sync::RwLock::new((JwkSet { keys: Vec::new() }, None)),
        }
    }

    /// Fetches the key set now.
    pub async fn refresh(&self) -> Result<usize, String> {
        let mut keys = self.keys.write().await;
        self.fetch_into(&mut keys).await
    }

    /// Fetches the key set unless a fetch started less than [`REFETCH_AFTER`] ago. Callers
    /// queue on the write lock and look again once they hold it, so however many tokens
    /// with unknown key ids arrive at once, one request reaches the issuer (single flight).
    async fn refresh_if_stale(&self) -> Result<(), String> {
        let mut keys = self.keys.write().await;
        if keys.1.is_some_and(|at| at.elapsed() < REFETCH_AFTER) {
            return Ok(());
        }
        self.fetch_into(&mut keys).await.map(|_| ())
    }

    async fn fetch_into(&self, keys: &mut (JwkSet, Option<Instant>)) -> Result<usize, String> {
        keys.1 = Some(Instant::now());
        let reply = self
            .http
            .get(&self.jwks_url)
            .send()
            .await
            .map_err(|e| format!("cannot fetch {}: {e}", self.jwks_url))?;
        if !reply.status().is_success() {
            return Err(format!("{} answered {}", self.jwks_url, reply.status()));
        }
        // Read with the cap, not whole and then measured: an issuer (or whoever answers
        // for it) cannot make us hold more than 1 MiB.
        let too_large = || format!("{} is larger than 1 MiB", self.jwks_url);
        if reply
            .content_length()
            .is_some_and(|length| length > MAX_JWKS_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut reply = reply;
        let mut body = Vec::new();
        while let Some(chunk) = reply
            .chunk()
            .await
            .map_err(|e| format!("cannot read {}: {e}", self.jwks_url))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet = serde_json::from_slice(&body)
            .map_err(|e| format!("{} is not a JWK set: {e}", self.jwks_url))?;
        let count = set.keys.len();
        keys.0 = set;
        Ok(count)
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, TokenError> {
        let find = |set: &JwkSet| set.find(kid).map(DecodingKey::from_jwk);
        let stale = {
            let keys = self.keys.read().await;
            if let Some(found) = find(&keys.0) {
                return found.map_err(|_| TokenError::UnknownKey);
            }
            keys.1.is_none_or(|at| at.elapsed() >= REFETCH_AFTER)
        };
        if stale {
            if let Err(error) = self.refresh_if_stale().await {
                tracing::warn!(%error, "cannot refresh the external issuer's keys");
            }
            if let Some(found) = find(&self.keys.read().await.0) {
                return found.map_err(|_| TokenError::UnknownKey);
            }
        }
        Err(TokenError::UnknownKey)
    }

    /// Checks `token` (whose parsed `header` the caller has) and returns the user it names.
    pub async fn verify(&self, token: &str, header: &Header) -> Result<String, TokenError> {
        let asymmetric = matches!(
            header.alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
                | Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::EdDSA
        );
        if !asymmetric {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.as_deref().ok_or(TokenError::UnknownKey)?;
        let key = self.key(kid).await?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = 5;
        validation.validate_nbf = true;
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key,
            &validation,
        )
        .map_err(|e| TokenError::from_jwt(&e))?;
        // An e-mail address names a user only once the issuer has verified it: otherwise
        // anyone could sign up at the issuer with someone else's address.
        if self.user_claim == "email"
            && data.claims.get("email_verified") != Some(&serde_json::Value::Bool(true))
        {
            return Err(TokenError::Malformed(
                "the token's email is not verified (email_verified)".into(),
            ));
        }
        data.claims
            .get(&self.user_claim)
            .and_then(serde_json::Value::as_str)
            .filter(|name| !name.is_empty() && name.len() <= 253)
            .map(str::to_string)
            .ok_or_else(|| {
                TokenError::Malformed(format!("the claim {:?} is missing", self.user_claim))
            })
    }
}
