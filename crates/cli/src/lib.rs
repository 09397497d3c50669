//! `edgefn`: the command line for developers and operators. Every subcommand but `dev` is a
//! thin client of the control plane's REST API (`client`); output is a table for people or,
//! with `--json`, the API's JSON for scripts (`output`). `dev` starts a whole system on
//! this machine (`dev`).
//!
//! The control plane's URL and token come from `--url`/`--token`, `EDGEFN_URL`/
//! `EDGEFN_TOKEN`, or the config file (`--config`, default `~/.config/edgefn/config.toml`
//! with keys `url`, `token` and `ca_cert`, which `edgefn login` writes), in that order.

pub mod access;
pub mod audit;
pub mod client;
pub mod commands;
pub mod db;
pub mod dev;
pub mod domains;
pub mod output;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::client::Client;
use crate::output::Output;

#[derive(Debug, Parser)]
#[command(
    name = "edgefn",
    version,
    about = "Deploy and run WebAssembly HTTP functions on your edge fleet",
    after_help = "Servers: `edgefn control-plane --help` and `edgefn runner --help` run the control plane and an edge runner (the same as the edgefn-control-plane and edgefn-runner binaries)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// URL of the control plane (default http://127.0.0.1:8080).
    #[arg(long, global = true, env = "EDGEFN_URL")]
    pub url: Option<String>,
    /// API token sent as `Authorization: Bearer`.
    #[arg(long, global = true, env = "EDGEFN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// TOML file with `url`, `token` and `ca_cert` (default ~/.config/edgefn/config.toml;
    /// `edgefn login` writes it).
    #[arg(long, global = true, env = "EDGEFN_CLI_CONFIG")]
    pub config: Option<PathBuf>,
    /// PEM certificate to trust for the control plane's TLS (a self-signed one, say).
    #[arg(long, global = true, env = "EDGEFN_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Print JSON (the API's own documents) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, show and delete functions.
    #[command(subcommand)]
    Functions(commands::FunctionsCommand),
    /// Upload a .wasm as a new version of a function and deploy it to the matching nodes.
    Deploy(commands::DeployArgs),
    /// Deploy the previous (or a given) version of a function again.
    Rollback(commands::RollbackArgs),
    /// Remove a function from every node (its routes answer 404 until it is deployed again).
    Undeploy(commands::FunctionRef),
    /// Add, list and remove routes.
    #[command(subcommand)]
    Routes(commands::RoutesCommand),
    /// Claim, verify, list and remove a project's domains.
    #[command(subcommand)]
    Domains(domains::DomainsCommand),
    /// Edge databases: create, migrate the schema, see each node's copy.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// List and show edge nodes.
    #[command(subcommand)]
    Nodes(commands::NodesCommand),
    /// Show deployments and their per-node progress.
    #[command(subcommand)]
    Deployments(commands::DeploymentsCommand),
    /// Log in (a user and password, or a token) and save the token in the config file.
    Login(access::LoginArgs),
    /// Who the control plane takes you for, and your role in each project.
    Whoami,
    /// Issue, list and revoke API tokens.
    #[command(subcommand)]
    Tokens(access::TokensCommand),
    /// Create and list users (administrators).
    #[command(subcommand)]
    Users(access::UsersCommand),
    /// Projects and their members.
    #[command(subcommand)]
    Projects(access::ProjectsCommand),
    /// The audit log: list it, verify its chain.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Start a control plane and runners on this machine and deploy the hello example.
    Dev(dev::DevArgs),
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    url: Option<String>,
    token: Option<String>,
    ca_cert: Option<PathBuf>,
}

impl GlobalArgs {
    /// The config file: `--config`, or `~/.config/edgefn/config.toml`.
    pub fn config_path(&self) -> Option<PathBuf> {
        self.config.clone().or_else(|| {
            let home = std::env::var_os("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
            Some(home.join("edgefn").join("config.toml"))
        })
    }

    /// The API client these settings describe: flags and variables over the config file.
    pub fn client(&self) -> anyhow::Result<Client> {
        self.client_with(false)
    }

    /// Like [`Self::client`]; with `missing_ok`, a `--config` file that does not exist yet is
    /// no error (`edgefn login` is about to write it).
    fn client_with(&self, missing_ok: bool) -> anyhow::Result<Client> {
        let explicit = self.config.is_some() && !missing_ok;
        let path = self.config_path();
        let file = match path {
            Some(path) => match std::fs::read_to_string(&path) {
                Ok(text) => toml::from_str::<ConfigFile>(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?,
                Err(error) if explicit => {
                    return Err(error).with_context(|| format!("cannot read {}", path.display()));
                }
                Err(_) => ConfigFile::default(),
            },
            None => ConfigFile::default(),
        };
        let url = self
            .url
            .clone()
            .or(file.url)
            .unwrap_or_else(|| "http://127.0.0.1:8080".to_string());
        let ca_cert = self.ca_cert.clone().or(file.ca_cert);
        Client::new(&url, self.token.clone().or(file.token), ca_cert.as_deref())
    }
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let out = Output {
        json: cli.global.json,
    };
    if let Command::Dev(args) = cli.command {
        return dev::run(args, &cli.global).await;
    }
    if let Command::Audit(command) = cli.command {
        // `verify --database-url` needs no control plane (nor its URL).
        return audit::audit(cli.global.client(), &out, command).await;
    }
    let client = cli
        .global
        .client_with(matches!(cli.command, Command::Login(_)))?;
    match cli.command {
        Command::Functions(command) => commands::functions(&client, &out, command).await,
        Command::Deploy(args) => commands::deploy(&client, &out, args).await,
        Command::Rollback(args) => commands::rollback(&client, &out, args).await,
        Command::Undeploy(function) => commands::undeploy(&client, &out, function).await,
        Command::Routes(command) => commands::routes(&client, &out, command).await,
        Command::Domains(command) => domains::domains(&client, &out, command).await,
        Command::Db(command) => db::db(&client, &out, command).await,
        Command::Nodes(command) => commands::nodes(&client, &out, command).await,
        Command::Deployments(command) => commands::deployments(&client, &out, command).await,
        Command::Login(args) => {
            access::login(&client, &out, args, cli.global.config_path().as_deref()).await
        }
        Command::Whoami => access::whoami(&client, &out).await,
        Command::Tokens(command) => access::tokens(&client, &out, command).await,
        Command::Users(command) => access::users(&client, &out, command).await,
        Command::Projects(command) => access::projects(&client, &out, command).await,
        Command::Dev(_) | Command::Audit(_) => Ok(()),
    }
}
