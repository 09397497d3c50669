//! The JWTs this control plane signs with its ES256 key: API tokens (audience
//! `edgefn-api`), node tokens (`edgefn-node`) and audit checkpoints (`edgefn-audit`). The
//! audience keeps each kind from passing for another; the key id (`kid`) names the key.
//!
//! Verification is strict and never panics: tokens over [`MAX_TOKEN_BYTES`] are refused
//! unread, the header must say ES256 and our `kid` (so `alg: none` and an HS256 token
//! "signed" with our public key are refused before any signature check), and signature,
//! issuer, audience, expiry and not-before are all checked, with 5 s of clock leeway.

use edgefn_proto::identity::Role;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub const API_AUDIENCE: &str = "edgefn-api";
pub const NODE_AUDIENCE: &str = "edgefn-node";
pub const CHECKPOINT_AUDIENCE: &str = "edgefn-audit";

/// Larger bearer tokens are refused before parsing (ours are ~600 bytes; an identity
/// provider's rarely exceed 2 KiB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Clock skew tolerated between the signer and this control plane.
const LEEWAY_SECS: u64 = 5;

/// Why a token was refused; the text goes to the client and the audit log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("no bearer token")]
    Missing,
    #[error("the token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token's algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("the token is signed with an unknown key")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is for another audience")]
    WrongAudience,
    #[error("the token is from another issuer")]
    WrongIssuer,
    #[error("the token has been revoked")]
    Revoked,
    #[error("the token is not known here")]
    Unknown,
    #[error("{0}")]
    Other(String),
}

impl TokenError {
    pub fn from_jwt(error: &jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind;
        match error.kind() {
            ErrorKind::InvalidSignature => Self::BadSignature,
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::InvalidAudience => Self::WrongAudience,
            ErrorKind::InvalidIssuer => Self::WrongIssuer,
            ErrorKind::InvalidAlgorithm => Self::Algorithm("for this key".into()),
            ErrorKind::MissingRequiredClaim(claim) => {
                Self::Malformed(format!("the claim {claim:?} is missing"))
            }
            _ => Self::Malformed(error.to_string()),
        }
    }
}

/// The claims of an API token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiClaims {
    pub iss: String,
    pub aud: String,
    /// The user's id.
    pub sub: String,
    /// The user's name (informational; the id decides).
    #[serde(default)]
    pub name: String,
    /// The token's id: its row in `api_tokens`.
    pub jti: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

/// The claims of a node token: bound to one node id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeClaims {
    pub iss: String,
    pub aud: String,
    /// `node:{node_id}`.
    pub sub: String,
    #[serde(default)]
    pub node_id: String,
    pub jti: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

/// The control plane's signing key.
pub struct Signer {
    issuer: String,
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    public_pem: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A new ES256 private key, as PKCS #8 PEM.
pub fn generate_key() -> Result<String, String> {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map(|key| key.serialize_pem())
        .map_err(|e| format!("cannot generate a key: {e}"))
}

impl Signer {
    /// The signer for an ES256 private key (PKCS #8 PEM), naming `issuer` in its tokens.
    pub fn from_pem(private_pem: &str, issuer: &str) -> Result<Self, String> {
        let key = rcgen::KeyPair::from_pem(private_pem)
            .map_err(|e| format!("the signing key is unusable: {e}"))?;
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err("the signing key must be an ECDSA P-256 key".into());
        }
        let public_pem = key.public_key_pem();
        let encoding = EncodingKey::from_ec_pem(private_pem.as_bytes())
            .map_err(|e| format!("the signing key is unusable: {e}"))?;
        let decoding = DecodingKey::from_ec_pem(public_pem.as_bytes())
            .map_err(|e| format!("the signing key is unusable: {e}"))?;
        let kid = hex::encode(&Sha256::digest(key.public_key_raw())[..12]);
        Ok(Self {
            issuer: issuer.to_string(),
            kid,
            encoding,
            decoding,
            public_pem,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key (SPKI PEM), for whoever verifies checkpoints elsewhere.
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// Signs `claims` (ES256, with our `kid`).
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| e.to_string())
    }

    /// Whether `token`'s header names this key (and so this issuer's tokens).
    pub fn signed_here(&self, header: &Header) -> bool {
        header.kid.as_deref() == Some(self.kid.as_str())
    }

    fn verify<T: DeserializeOwned>(
        &self,
        token: &str,
        audience: &str,
        required: &[&str],
    ) -> Result<T, TokenError> {
        let header = header_of(token)?;
        if header.alg != Algorithm::ES256 {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        if !self.signed_here(&header) {
            return Err(TokenError::UnknownKey);
        }
        let mut validation = Validation::new(Algorithm::ES256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = required.contains(&"nbf");
        validation.validate_exp = required.contains(&"exp");
        validation.set_audience(&[audience]);
        if required.contains(&"iss") {
            validation.set_issuer(&[&self.issuer]);
        }
        validation.set_required_spec_claims(required);
        jsonwebtoken::decode::<T>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| TokenError::from_jwt(&e))
    }

    /// Checks an API token's signature and claims (not yet whether it was revoked).
    pub fn verify_api(&self, token: &str) -> Result<ApiClaims, TokenError> {
        self.verify(token, API_AUDIENCE, &["exp", "nbf", "iss", "aud", "sub"])
    }

    pub fn verify_node(&self, token: &str) -> Result<NodeClaims, TokenError> {
        self.verify(token, NODE_AUDIENCE, &["exp", "nbf", "iss", "aud", "sub"])
    }

    /// Checkpoints do not expire (they vouch for the past), and are checked by key and
    /// audience alone, so that a tool that verifies them needs only the key.
    pub fn verify_checkpoint(&self, token: &str) -> Result<crate::audit::Checkpoint, TokenError> {
        self.verify(token, CHECKPOINT_AUDIENCE, &["aud"])
    }

    /// A new API token for `user`, limited as given, valid for `ttl`. Returns the claims
    /// and the signed token.
    pub fn issue_api(
        &self,
        user_id: &str,
        user: &str,
        project: Option<String>,
        role: Option<Role>,
        ttl: std::time::Duration,
    ) -> Result<(ApiClaims, String), String> {
        let now = crate::clock::now_ms() / 1000;
        let claims = ApiClaims {
            iss: self.issuer.clone(),
            aud: API_AUDIENCE.into(),
            sub: user_id.into(),
            name: user.into(),
            jti: crate::clock::new_id("tok"),
            iat: now,
            nbf: now,
            exp: now.saturating_add(ttl.as_secs().min(i64::MAX as u64) as i64),
            project,
            role,
        };
        let token = self.sign(&claims)?;
        Ok((claims, token))
    }

    /// A node token for `node_id`, valid for `ttl`.
    pub fn issue_node(
        &self,
        node_id: &str,
        ttl: std::time::Duration,
    ) -> Result<(NodeClaims, String), String> {
        let now = crate::clock::now_ms() / 1000;
        let claims = NodeClaims {
            iss: self.issuer.clone(),
            aud: NODE_AUDIENCE.into(),
            sub: format!("node:{node_id}"),
            node_id: node_id.into(),
            jti: crate::clock::new_id("ntok"),
            iat: now,
            nbf: now,
            exp: now.saturating_add(ttl.as_secs().min(i64::MAX as u64) as i64),
        };
        let token = self.sign(&claims)?;
        Ok((claims, token))
    }
}

/// The header of `token`, refusing oversized or unparsable tokens.
pub fn header_of(token: &str) -> Result<Header, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge);
    }
    jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(headers: &http::HeaderMap) -> Result<&str, TokenError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(TokenError::Missing)?;
    if value.len() > MAX_TOKEN_BYTES + 16 {
        return Err(TokenError::TooLarge);
    }
    let value = value
        .to_str()
        .map_err(|_| TokenError::Malformed("the Authorization header is not text".into()))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| TokenError::Malformed("expected `Authorization: Bearer TOKEN`".into()))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(TokenError::Malformed(
            "expected `Authorization: Bearer TOKEN`".into(),
        ));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge);
    }
    Ok(token)
}

/// SHA-256 of a secret, as stored in place of the secret.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether two hashes are equal, in time independent of where they differ.
pub fn same_hash(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// `bytes` random bytes from the operating system, as lowercase hex.
pub fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| format!("no randomness: {e}"))?;
    Ok(hex::encode(buf))
}

#[cfg(test)]
mod tests;
