//! Who may do what: `edgefn login`, `whoami`, `tokens`, `users` and `projects`.

use std::io::Read as _;
use std::path::Path;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use edgefn_proto::identity::{
    CreateProject, CreateToken, CreateUser, LoginRequest, Member, Project, Role, SetMember,
    TokenCreated, TokenInfo, User, WhoAmI,
};

use crate::client::Client;
use crate::output::{Output, or_dash, time};

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Your user name (the password is read from standard input, or asked for).
    #[arg(long, conflicts_with = "with_token")]
    pub user: Option<String>,
    /// Store this token instead of logging in with a password (it is checked first).
    #[arg(long = "with-token", value_name = "TOKEN")]
    pub with_token: Option<String>,
    /// Lifetime of the token a password login gets, e.g. `12h` or `7d`.
    #[arg(long)]
    pub ttl: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Issue a token for yourself, limited to one project and a role.
    Create {
        /// The project the token acts in (administrators may leave it out).
        #[arg(long)]
        project: Option<String>,
        /// `viewer`, `developer` or `owner` (default: your own role there).
        #[arg(long, value_parser = parse_role)]
        role: Option<Role>,
        /// Lifetime, e.g. `90m`, `12h`, `30d`.
        #[arg(long, default_value = "30d")]
        ttl: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Your tokens (every token, for an administrator); never their secrets.
    List,
    /// Revoke a token: refused from the next call on.
    Revoke {
        /// Token id (`tok_…`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user (administrators). With --password-stdin they log in with a password;
    /// without, they use tokens or the external identity provider.
    Create {
        name: String,
        /// Read the new user's password from standard input.
        #[arg(long)]
        password_stdin: bool,
        /// A fleet administrator.
        #[arg(long)]
        admin: bool,
        /// A user of this external identity provider (its `iss`): its tokens whose user
        /// claim is NAME act as this user. Without it the user is local.
        #[arg(long, conflicts_with = "password_stdin")]
        issuer: Option<String>,
    },
    List,
}

#[derive(Debug, Subcommand)]
pub enum ProjectsCommand {
    /// Create a project (administrators).
    Create {
        name: String,
    },
    /// The projects you can see.
    List,
    /// A project's members and their roles.
    Members {
        project: String,
    },
    /// Add a member, or change their role (the project's owners).
    AddMember {
        project: String,
        user: String,
        /// `viewer`, `developer` or `owner`.
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    RemoveMember {
        project: String,
        user: String,
    },
    /// Set a project's quotas on each node (administrators); a value left out keeps the
    /// nodes' default.
    SetQuota {
        project: String,
        /// Concurrent executions of the project's functions on one node.
        #[arg(long)]
        max_concurrent: Option<u32>,
        /// Invocations per minute of the project's functions on one node.
        #[arg(long)]
        per_minute: Option<u32>,
        /// Share of each node's instance slots, e.g. `25%`.
        #[arg(long, value_parser = parse_percent)]
        pool_share: Option<u8>,
    },
    /// A project's quotas on each node.
    Quota {
        project: String,
    },
}

fn parse_percent(text: &str) -> Result<u8, String> {
    let number = text.strip_suffix('%').unwrap_or(text);
    match number.parse::<u8>() {
        Ok(percent) if (1..=100).contains(&percent) => Ok(percent),
        _ => Err(format!("{text:?} is not a percentage from 1% to 100%")),
    }
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| format!("{text:?} is not a role: viewer, developer or owner"))
}

/// A password from standard input (one line), or asked for on a terminal.
fn read_password(prompt: &str) -> anyhow::Result<String> {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprint!("{prompt}");
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("cannot read the password from standard input")?;
    let password = text.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        anyhow::bail!("no password on standard input");
    }
    Ok(password)
}

/// Writes `url` and `token` to the CLI's config file, readable only by its owner.
fn save_login(path: &Path, url: &str, token: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut table: toml::Table = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| toml::from_str(&text).ok())
        .unwrap_or_default();
    table.insert("url".into(), toml::Value::String(url.into()));
    table.insert("token".into(), toml::Value::String(token.into()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("toml.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| file.write_all(toml::to_string(&table).unwrap_or_default().as_bytes()))
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub async fn login(
    client: &Client,
    out: &Output,
    args: LoginArgs,
    config_path: Option<&Path>,
) -> anyhow::Result<()> {
    let (token, expires_at) = match (&args.with_token, &args.user) {
        (Some(token), _) => (token.clone(), None),
        (None, Some(user)) => {
            let password = read_password("password: ")?;
            let created: TokenCreated = client
                .post(
                    "/login",
                    &LoginRequest {
                        user: user.clone(),
                        password,
                        ttl: args.ttl.clone(),
                    },
                )
                .await?;
            (created.token, Some(created.expires_at))
        }
        (None, None) => anyhow::bail!(
            "give --user NAME (and the password on standard input) or --with-token TOKEN"
        ),
    };
    let me: WhoAmI = client.with_token(&token).get("/whoami").await?;
    let path = config_path.context("no config file: set HOME or --config")?;
    save_login(path, client.base(), &token)?;
    out.item(&me, || {
        format!(
            "Logged in to {} as {}{}; saved to {}{}.",
            client.base(),
            me.user,
            if me.admin { " (administrator)" } else { "" },
            path.display(),
            expires_at
                .map(|at| format!(" (the token expires {})", time(at)))
                .unwrap_or_default()
        )
    });
    Ok(())
}

pub async fn whoami(client: &Client, out: &Output) -> anyhow::Result<()> {
    let me: WhoAmI = client.get("/whoami").await?;
    out.item(&me, || {
        let roles = me
            .projects
            .iter()
            .map(|(project, role)| vec![project.clone(), role.to_string()]);
        format!(
            "{}{} (tokens of {})\n{}",
            me.user,
            if me.admin { ", administrator" } else { "" },
            me.issuer,
            crate::output::table(&["project", "role"], roles)
        )
    });
    Ok(())
}

pub async fn tokens(client: &Client, out: &Output, command: TokensCommand) -> anyhow::Result<()> {
    match command {
        TokensCommand::Create {
            project,
            role,
            ttl,
            description,
        } => {
            let created: TokenCreated = client
                .post(
                    "/tokens",
                    &CreateToken {
                        project,
                        role,
                        ttl: Some(ttl),
                        description,
                    },
                )
                .await?;
            out.item(&created, || {
                format!(
                    "{}\n(token {}, expires {}; shown only now: keep it secret)",
                    created.token,
                    created.id,
                    time(created.expires_at)
                )
            });
        }
        TokensCommand::List => {
            let tokens: Vec<TokenInfo> = client.get("/tokens").await?;
            let rows = tokens.iter().map(|t| {
                vec![
                    t.id.clone(),
                    t.user.clone(),
                    or_dash(t.project.as_deref()),
                    or_dash(t.role.map(|r| r.to_string())),
                    time(t.expires_at),
                    or_dash(t.revoked_at.map(time)),
                    t.description.clone(),
                ]
            });
            out.list(
                &tokens,
                &[
                    "id",
                    "user",
                    "project",
                    "role",
                    "expires",
                    "revoked",
                    "description",
                ],
                rows,
            );
        }
        TokensCommand::Revoke { id } => {
            client
                .send_empty(reqwest::Method::DELETE, &format!("/tokens/{id}"))
                .await?;
            out.item(&serde_json::json!({ "revoked": id }), || {
                format!("Revoked token {id}.")
            });
        }
    }
    Ok(())
}

pub async fn users(client: &Client, out: &Output, command: UsersCommand) -> anyhow::Result<()> {
    match command {
        UsersCommand::Create {
            name,
            password_stdin,
            admin,
            issuer,
        } => {
            let password = if password_stdin {
                Some(read_password("new password: ")?)
            } else {
                None
            };
            let user: User = client
                .post(
                    "/users",
                    &CreateUser {
                        name,
                        password,
                        admin,
                        issuer,
                    },
                )
                .await?;
            out.item(&user, || {
                format!("Created user {} ({}).", user.name, user.id)
            });
        }
        UsersCommand::List => {
            let users: Vec<User> = client.get("/users").await?;
            let rows = users.iter().map(|u| {
                vec![
                    u.name.clone(),
                    if u.admin { "yes".into() } else { String::new() },
                    u.issuer.clone().unwrap_or_default(),
                    u.projects
                        .iter()
                        .map(|(p, r)| format!("{p}:{r}"))
                        .collect::<Vec<_>>()
                        .join(","),
                    time(u.created_at),
                ]
            });
            out.list(
                &users,
                &["name", "admin", "issuer", "projects", "created"],
                rows,
            );
        }
    }
    Ok(())
}

pub async fn projects(
    client: &Client,
    out: &Output,
    command: ProjectsCommand,
) -> anyhow::Result<()> {
    match command {
        ProjectsCommand::Create { name } => {
            let project: Project = client.post("/projects", &CreateProject { name }).await?;
            out.item(&project, || format!("Created project {}.", project.name));
        }
        ProjectsCommand::List => {
            let projects: Vec<Project> = client.get("/projects").await?;
            let rows = projects
                .iter()
                .map(|p| vec![p.name.clone(), time(p.created_at)]);
            out.list(&projects, &["name", "created"], rows);
        }
        ProjectsCommand::Members { project } => {
            let members: Vec<Member> = client.get(&format!("/projects/{project}/members")).await?;
            let rows = members
                .iter()
                .map(|m| vec![m.user.clone(), m.role.to_string()]);
            out.list(&members, &["user", "role"], rows);
        }
        ProjectsCommand::AddMember {
            project,
            user,
            role,
        } => {
            let member: Member = client
                .put(
                    &format!("/projects/{project}/members/{user}"),
                    &SetMember { role },
                )
                .await?;
            out.item(&member, || {
                format!("{} is {} in {project}.", member.user, member.role)
            });
        }
        ProjectsCommand::SetQuota {
            project,
            max_concurrent,
            per_minute,
            pool_share,
        } => {
            let quota = edgefn_proto::sync::ProjectQuota {
                max_concurrent,
                per_minute,
                pool_share_percent: pool_share,
            };
            let set: edgefn_proto::sync::ProjectQuota = client
                .put(&format!("/projects/{project}/quota"), &quota)
                .await?;
            out.item(&set, || format!("Set the quotas of {project}."));
        }
        ProjectsCommand::Quota { project } => {
            let quota: edgefn_proto::sync::ProjectQuota =
                client.get(&format!("/projects/{project}/quota")).await?;
            let show =
                |value: Option<u32>| value.map_or("node default".to_string(), |v| v.to_string());
            out.item(&quota, || {
                format!(
                    "max concurrent  {}\nper minute      {}\npool share      {}\n",
                    show(quota.max_concurrent),
                    show(quota.per_minute),
                    quota
                        .pool_share_percent
                        .map_or("node default".to_string(), |p| format!("{p}%"))
                )
            });
        }
        ProjectsCommand::RemoveMember { project, user } => {
            client
                .send_empty(
                    reqwest::Method::DELETE,
                    &format!("/projects/{project}/members/{user}"),
                )
                .await?;
            out.item(&serde_json::json!({ "removed": user }), || {
                format!("Removed {user} from {project}.")
            });
        }
    }
    Ok(())
}
