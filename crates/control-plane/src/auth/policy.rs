//! Who may do what: the pure rule. A caller's effective role in a project is the lower of
//! their membership there (administrators count as owners everywhere) and what their token
//! allows (a token limited to one project acts nowhere else). Fleet-wide powers (nodes,
//! users, projects, the whole audit log) need an administrator's unrestricted token.

use std::collections::BTreeMap;

use edgefn_proto::identity::Role;

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub user: String,
    pub admin: bool,
    /// The user's own role per project.
    pub memberships: BTreeMap<String, Role>,
    /// The token's limits: only this project, at most this role.
    pub token_project: Option<String>,
    pub token_role: Option<Role>,
    /// The token's id (`jti`): its revocation handle, and the audit's reference.
    pub token_id: String,
    /// Who signed the token: this control plane, or an external identity provider.
    pub issuer: String,
    /// When the caller's token expires (Unix seconds; `None` for external issuers' tokens).
    pub token_expires_at: Option<i64>,
}

/// Why a call is not allowed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// Which projects a caller may read: all of them, or these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Visible {
    All,
    Only(Vec<String>),
}

impl Visible {
    pub fn includes(&self, project: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(projects) => projects.iter().any(|p| p == project),
        }
    }
}

impl Principal {
    /// `user:NAME`, as the audit log names callers.
    pub fn actor(&self) -> String {
        format!("user:{}", self.user)
    }

    /// Whether the caller may see and revoke a token of its own user limited to `project`
    /// and `role`: any for an unrestricted token; for a token limited to a project, only
    /// tokens limited to that project and no stronger than the caller there.
    pub fn may_manage_token(&self, project: Option<&str>, role: Option<Role>) -> bool {
        let Some(only) = self.token_project.as_deref() else {
            return true;
        };
        let Some(mine) = self.role_in(only) else {
            return false;
        };
        let theirs = role
            .or_else(|| self.memberships.get(only).copied())
            .unwrap_or(Role::Owner);
        project == Some(only) && theirs <= mine
    }

    /// The caller's effective role in `project`, if any.
    pub fn role_in(&self, project: &str) -> Option<Role> {
        if self
            .token_project
            .as_deref()
            .is_some_and(|only| only != project)
        {
            return None;
        }
        let own = if self.admin {
            Some(Role::Owner)
        } else {
            self.memberships.get(project).copied()
        };
        match self.token_role {
            Some(limit) => own.map(|role| role.min(limit)),
            None => own,
        }
    }

    /// Allowed when the caller's role in `project` is at least `role`.
    pub fn require(&self, role: Role, project: &str) -> Result<(), Denied> {
        match self.role_in(project) {
            Some(have) if have >= role => Ok(()),
            Some(have) => Err(Denied(format!(
                "this needs the {role} role in project {project:?}; you are {have} there"
            ))),
            None => Err(Denied(format!(
                "you have no role in project {project:?} (this needs {role})"
            ))),
        }
    }

    /// Fleet-wide powers: an administrator whose token is not limited.
    pub fn is_fleet_admin(&self) -> bool {
        self.admin && self.token_project.is_none() && self.token_role.is_none()
    }

    pub fn require_admin(&self) -> Result<(), Denied> {
        if self.is_fleet_admin() {
            Ok(())
        } else if self.admin {
            Err(Denied(
                "this needs an administrator token that is not limited to a project".into(),
            ))
        } else {
            Err(Denied("this needs an administrator".into()))
        }
    }

    /// Allowed for a fleet administrator or a member of any project (fleet-wide reads
    /// such as the node list; a user the control plane gave no role sees nothing).
    pub fn require_any_role(&self) -> Result<(), Denied> {
        if self.is_fleet_admin() || !self.effective_roles().is_empty() {
            Ok(())
        } else {
            Err(Denied("you have no role in any project".into()))
        }
    }

    /// The projects the caller can read.
    pub fn visible(&self) -> Visible {
        if self.admin && self.token_project.is_none() {
            return Visible::All;
        }
        let candidates: Vec<String> = match &self.token_project {
            Some(project) => vec![project.clone()],
            None => self.memberships.keys().cloned().collect(),
        };
        Visible::Only(
            candidates
                .into_iter()
                .filter(|p| self.role_in(p).is_some())
                .collect(),
        )
    }

    /// The effective role in every project the caller can act in (for `whoami`).
    pub fn effective_roles(&self) -> BTreeMap<String, Role> {
        let projects: Vec<String> = match (&self.token_project, self.admin) {
            (Some(project), _) => vec![project.clone()],
            (None, _) => self.memberships.keys().cloned().collect(),
        };
        projects
            .into_iter()
            .filter_map(|p| self.role_in(&p).map(|r| (p, r)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn principal(
        admin: bool,
        memberships: &[(&str, Role)],
        token_project: Option<&str>,
        token_role: Option<Role>,
    ) -> Principal {
        Principal {
            user_id: "u1".into(),
            user: "alice".into(),
            admin,
            memberships: memberships
                .iter()
                .map(|(p, r)| (p.to_string(), *r))
                .collect(),
            token_project: token_project.map(str::to_string),
            token_role,
            token_id: "tok".into(),
            issuer: "edgefn".into(),
            token_expires_at: None,
        }
    }

    #[test]
    fn a_membership_is_capped_by_the_token() {
        let p = principal(
            false,
            &[("a", Role::Owner), ("b", Role::Viewer)],
            Some("a"),
            Some(Role::Developer),
        );
        assert_eq!(p.role_in("a"), Some(Role::Developer));
        assert_eq!(p.role_in("b"), None, "the token is limited to project a");
        assert!(p.require(Role::Developer, "a").is_ok());
        assert!(p.require(Role::Owner, "a").is_err());
        assert_eq!(p.visible(), Visible::Only(vec!["a".into()]));
    }

    #[test]
    fn administrators_own_every_project_but_a_limited_token_limits_them() {
        let admin = principal(true, &[], None, None);
        assert_eq!(admin.role_in("anything"), Some(Role::Owner));
        assert!(admin.require_admin().is_ok());
        assert_eq!(admin.visible(), Visible::All);
        let limited = principal(true, &[], Some("a"), Some(Role::Viewer));
        assert_eq!(limited.role_in("a"), Some(Role::Viewer));
        assert_eq!(limited.role_in("b"), None);
        assert!(limited.require_admin().is_err());
    }

    #[test]
    fn without_a_membership_nothing_is_allowed() {
        let p = principal(false, &[], None, None);
        assert!(p.require(Role::Viewer, "a").is_err());
        assert!(p.require_admin().is_err());
        assert!(p.require_any_role().is_err());
        assert!(
            principal(false, &[("b", Role::Viewer)], None, None)
                .require_any_role()
                .is_ok()
        );
        assert_eq!(p.visible(), Visible::Only(vec![]));
    }

    fn role() -> impl Strategy<Value = Role> {
        prop_oneof![Just(Role::Viewer), Just(Role::Developer), Just(Role::Owner)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A token never grants more than its user has, nor anything outside its project.
        #[test]
        fn a_token_never_widens_what_its_user_may_do(
            admin in any::<bool>(),
            member in proptest::option::of(role()),
            token_project in proptest::option::of(prop_oneof![Just("a"), Just("b")]),
            token_role in proptest::option::of(role()),
            project in prop_oneof![Just("a"), Just("b"), Just("c")],
            wanted in role(),
        ) {
            let memberships: Vec<(&str, Role)> = member.map(|r| ("a", r)).into_iter().collect();
            let unlimited = principal(admin, &memberships, None, None);
            let limited = principal(admin, &memberships, token_project, token_role);
            if limited.require(wanted, project).is_ok() {
                prop_assert!(unlimited.require(wanted, project).is_ok());
                prop_assert!(token_project.is_none_or(|p| p == project));
                prop_assert!(token_role.is_none_or(|r| r >= wanted));
            }
            if limited.require_admin().is_ok() {
                prop_assert!(admin && token_project.is_none() && token_role.is_none());
            }
            prop_assert_eq!(limited.visible().includes(project), limited.role_in(project).is_some());
        }
    }
}
