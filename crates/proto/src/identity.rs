//! Who may do what: roles, users, projects and their members, API tokens, node enrollment
//! and node tokens, as the control plane's API exchanges them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A member's role in a project. Ordered: each role can do everything the ones below can.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads the project's functions, versions, routes and deployments.
    Viewer,
    /// Also creates functions and versions, deploys, rolls back, undeploys and edits routes.
    Developer,
    /// Also deletes functions and manages the project's members.
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Developer => "developer",
            Self::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "developer" => Some(Self::Developer),
            "owner" => Some(Self::Owner),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /users` (administrators).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Login name; for users of an external identity provider, the claim it maps to
    /// (e.g. their e-mail address).
    pub name: String,
    /// For `POST /login`; without one the user signs in with tokens only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Fleet administrator: every project, nodes, users and the audit log.
    #[serde(default)]
    pub admin: bool,
    /// The external identity provider (its `iss`) whose tokens act as this user; such a
    /// user has no password. Without one the user is local: an external token whose claim
    /// equals the name is not theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct User {
    pub id: String,
    pub name: String,
    pub admin: bool,
    pub created_at: i64,
    /// Role per project.
    pub projects: BTreeMap<String, Role>,
    /// The external identity provider this user signs in with; absent for local users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

/// `POST /projects` (administrators).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

/// `PUT /projects/{id}/members/{user}`: adds a member or changes their role.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetMember {
    pub role: Role,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Member {
    pub user: String,
    pub role: Role,
}

/// `POST /login`: a user's name and password for a token.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
    /// Lifetime, e.g. `12h` or `30d` (default `12h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// `POST /tokens`: a token for the caller, limited to one project and a role no higher than
/// the caller's own there.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// The project the token acts in (administrators may leave it out for a fleet-wide
    /// token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Lifetime, e.g. `90m`, `12h`, `30d` (default `30d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(default)]
    pub description: String,
}

/// A token just issued: the only time its secret is shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenCreated {
    pub id: String,
    /// The bearer token (a signed JWT).
    pub token: String,
    pub expires_at: i64,
}

/// An issued token as listed: never its secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub user: String,
    pub project: Option<String>,
    pub role: Option<Role>,
    pub description: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

/// `GET /whoami`: the caller as the control plane sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WhoAmI {
    pub user: String,
    pub admin: bool,
    /// The token's own limits (`None`: the user's roles everywhere).
    pub token_project: Option<String>,
    pub token_role: Option<Role>,
    /// The caller's effective role per project.
    pub projects: BTreeMap<String, Role>,
    /// Who issued the token: this control plane, or an external identity provider.
    pub issuer: String,
}

/// `POST /nodes/tokens` (administrators): a one-time token a new node enrolls with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBootstrapToken {
    /// Lifetime, e.g. `15m` or `24h` (default `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BootstrapTokenCreated {
    pub id: String,
    /// Give it to one node: `edgefn runner --bootstrap-token …`. Used once.
    pub token: String,
    pub expires_at: i64,
    /// SHA-256 of the node CA's certificate (DER), for `--ca-sha256`: a node that checks it
    /// cannot be enrolled by an impostor of the control plane.
    pub ca_sha256: String,
}

/// `POST /nodes/register` with a bootstrap token: a node enrolls. Its private key never
/// leaves it; it sends a certificate signing request for that key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollNode {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub address: String,
    /// PEM certificate signing request (PKCS #10) for the node's own key.
    pub csr: String,
}

/// `201` to an enrollment, and `200` to a certificate renewal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeEnrolled {
    pub node_id: String,
    /// PEM; its subject alternative name is `spiffe://edgefn/node/{node_id}`.
    pub certificate: String,
    /// PEM of the CA that signs node certificates and the node listener's certificate.
    pub ca_certificate: String,
    pub certificate_expires_at: i64,
    /// Where the node reaches the node listener (mTLS): heartbeats, the push stream,
    /// artifacts.
    pub node_url: String,
}

/// `POST /nodes/{id}/certificate` on the node listener: a new certificate for a new key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewCertificate {
    pub csr: String,
}

/// `POST /nodes/{id}/token` on the node listener: the node's JWT.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeToken {
    pub token: String,
    pub expires_at: i64,
    /// The control plane's public key (SPKI PEM), which signs precompiled code
    /// ([`crate::sync::PrecompiledClaims`]). Delivered over the node's mTLS connection, so
    /// the node trusts it as far as it trusts the node CA.
    #[serde(default)]
    pub signing_key: String,
}

/// The URI a node certificate names its node by.
pub fn node_uri(node_id: &str) -> String {
    format!("spiffe://edgefn/node/{node_id}")
}

/// The node id a certificate's URI names, if it is a node URI.
pub fn node_id_of_uri(uri: &str) -> Option<&str> {
    uri.strip_prefix("spiffe://edgefn/node/")
        .filter(|id| !id.is_empty() && id.len() <= 128 && !id.contains('/'))
}

/// Parses a lifetime: a number followed by `s`, `m`, `h` or `d` (`90m`, `12h`, `30d`).
pub fn parse_ttl(text: &str) -> Result<std::time::Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} needs a unit: s, m, h or d"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use s, m, h or d"
            ));
        }
    };
    if number == 0 {
        return Err(format!("{text:?} must be longer than zero"));
    }
    number
        .checked_mul(seconds)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_by_what_they_allow() {
        assert!(Role::Viewer < Role::Developer && Role::Developer < Role::Owner);
        for role in [Role::Viewer, Role::Developer, Role::Owner] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("admin"), None);
    }

    #[test]
    fn lifetimes_need_a_number_and_a_unit() {
        assert_eq!(parse_ttl("90m").unwrap().as_secs(), 5400);
        assert_eq!(parse_ttl("30d").unwrap().as_secs(), 30 * 86_400);
        for bad in ["", "12", "h", "0h", "12y", "-1h", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn node_uris_round_trip_and_reject_others() {
        assert_eq!(node_id_of_uri(&node_uri("node_1")), Some("node_1"));
        for bad in [
            "spiffe://edgefn/node/",
            "spiffe://other/node/x",
            "spiffe://edgefn/node/a/b",
        ] {
            assert_eq!(node_id_of_uri(bad), None, "{bad}");
        }
    }
}
