//! Who is calling, and whether they may: tokens (`tokens`: ours, signed with the control
//! plane's key; `oidc`: an external issuer's), passwords (`password`), and the pure rule of
//! roles and projects (`policy`).
//!
//! Every API call but the public ones (`/openapi.json`, `/login`, presigned uploads, node
//! enrollment with its bootstrap token) carries `Authorization: Bearer <JWT>`. Our tokens
//! are checked twice: the JWT itself (signature, expiry, issuer, audience), then its row in
//! `api_tokens` — so a revoked token stops at once, and a token whose row is gone (or whose
//! hash differs) is refused. The caller's roles are read fresh on every call, so removing a
//! member takes effect at once too.

pub mod oidc;
pub mod password;
pub mod policy;
pub mod throttle;
pub mod tokens;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use self::policy::{Denied, Principal, Visible};
use self::tokens::{Signer, TokenError, bearer, header_of, same_hash, secret_hash};
use crate::store::{Store, StoreError};

/// The issuer's side of authentication: our key, and the external issuer if configured.
pub struct Auth {
    pub signer: Arc<Signer>,
    pub external: Option<Arc<oidc::ExternalIssuer>>,
}

/// Why a call got no principal.
#[derive(Debug)]
pub enum AuthFailure {
    /// 401: the caller is not who they say, or says nothing.
    Refused {
        reason: TokenError,
        /// Whom the token claimed to be, when it said (for the audit log).
        claimed: Option<String>,
    },
    /// 503: the database could not be asked.
    Unavailable(StoreError),
}

impl From<TokenError> for AuthFailure {
    fn from(reason: TokenError) -> Self {
        Self::Refused {
            reason,
            claimed: None,
        }
    }
}

impl Auth {
    /// The caller of a request with these headers.
    pub async fn principal(
        &self,
        store: &Store,
        headers: &http::HeaderMap,
    ) -> Result<Principal, AuthFailure> {
        let token = bearer(headers)?;
        let header = header_of(token)?;
        match &self.external {
            Some(external) if !self.signer.signed_here(&header) => {
                let user = external.verify(token, &header).await?;
                let found = store
                    .user_by_name(&user)
                    .await
                    .map_err(AuthFailure::Unavailable)?;
                // Only a user created for this issuer is the claim's user: a local user of
                // the same name (say an administrator) is not, or anyone the issuer lets
                // choose a claim could act as them. A user the issuer knows but we do not
                // is authenticated and allowed nothing.
                let found = found.filter(|found| found.issuer.as_ref() == Some(&external.issuer));
                let (user_id, admin, memberships) = match found {
                    Some(found) => (found.id, found.admin, found.memberships),
                    None => (String::new(), false, Default::default()),
                };
                Ok(Principal {
                    user_id,
                    user,
                    admin,
                    memberships,
                    token_project: None,
                    token_role: None,
                    token_id: "external".into(),
                    issuer: external.issuer.clone(),
                    token_expires_at: None,
                })
            }
            _ => {
                let claims = self.signer.verify_api(token)?;
                let refused = |reason| AuthFailure::Refused {
                    reason,
                    claimed: Some(format!("user:{}", claims.name)),
                };
                let row = store
                    .token_principal(&claims.jti)
                    .await
                    .map_err(AuthFailure::Unavailable)?
                    .ok_or_else(|| refused(TokenError::Unknown))?;
                if !same_hash(&row.token_sha256, &secret_hash(token)) || row.user_id != claims.sub {
                    return Err(refused(TokenError::Unknown));
                }
                if row.revoked_at.is_some() {
                    return Err(refused(TokenError::Revoked));
                }
                Ok(Principal {
                    user_id: row.user_id,
                    user: row.user,
                    admin: row.admin,
                    memberships: row.memberships,
                    token_project: row.project,
                    token_role: row.role,
                    token_expires_at: Some(claims.exp),
                    token_id: claims.jti,
                    issuer: self.signer.issuer().to_string(),
                })
            }
        }
    }
}

/// The bootstrap administrator, made on the first start of a control plane whose database
/// has no users yet (like Nomad's ACL bootstrap): user `admin` and a token for it, written
/// to `{data_dir}/admin-token`, readable only by its owner. Returns the file's path when it
/// made one. A second replica starting at the same time loses the race and makes nothing.
pub async fn bootstrap_admin(
    store: &Store,
    signer: &Signer,
    data_dir: &Path,
    ttl: Duration,
) -> anyhow::Result<Option<PathBuf>> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let Some(user_id) = store.create_first_admin("admin").await? else {
        return Ok(None);
    };
    let (claims, token) = signer
        .issue_api(&user_id, "admin", None, None, ttl)
        .map_err(anyhow::Error::msg)?;
    store
        .insert_token(
            "system",
            &claims,
            &secret_hash(&token),
            "bootstrap administrator token",
        )
        .await?;
    let path = data_dir.join("admin-token");
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    file.write_all(format!("{token}\n").as_bytes())?;
    Ok(Some(path))
}
