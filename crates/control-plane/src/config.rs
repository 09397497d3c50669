//! The control plane's flags. Each has an `EDGEFN_…` variable; `--config FILE` reads the
//! same settings from TOML (flag names with `_`), which flags and variables override.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{CommandFactory as _, FromArgMatches as _, Parser};

#[derive(Debug, Parser)]
#[command(
    name = "edgefn-control-plane",
    version,
    about = "The edgefn control plane"
)]
pub struct ControlPlaneArgs {
    /// TOML file with any of these settings (keys are the flag names with `_`).
    #[arg(long, env = "EDGEFN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the API listener (port 0 picks a free port).
    #[arg(long, env = "EDGEFN_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory for the embedded database, local artifacts and keys.
    #[arg(long, env = "EDGEFN_DATA_DIR", default_value = ".edgefn")]
    pub data_dir: PathBuf,
    /// `sqlite:…` or `postgres://…`; default: SQLite in the data directory.
    #[arg(long, env = "EDGEFN_DATABASE_URL")]
    pub database_url: Option<String>,
    /// `s3://bucket` for an S3-compatible store; default: a directory in the data directory.
    #[arg(long, env = "EDGEFN_ARTIFACTS")]
    pub artifacts: Option<String>,
    /// Endpoint of the S3-compatible server (MinIO, Garage, SeaweedFS); default AWS.
    #[arg(long, env = "EDGEFN_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// How clients and nodes reach this control plane (used in upload and artifact URLs);
    /// default `http://` + the listen address.
    #[arg(long, env = "EDGEFN_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Largest `memory_pages` a function may ask for.
    #[arg(long, env = "EDGEFN_MAX_MEMORY_PAGES", default_value_t = 4096)]
    pub max_memory_pages: u64,
    /// Largest `max_execution_ms` a function may ask for.
    #[arg(long, env = "EDGEFN_MAX_EXECUTION_MS", default_value_t = 60_000)]
    pub max_execution_ms: u64,
    /// Leave out the `listening` lines on stdout (`edgefn dev` prints its own summary).
    #[arg(long, hide = true)]
    pub quiet_listeners: bool,
    /// Program that compiles artifacts once for the fleet, run as `PROGRAM compile-worker …`
    /// (`edgefn` or `edgefn-compile-worker` of the nodes' release); `edgefn control-plane`
    /// uses its own binary. Without one, every node compiles for itself.
    #[arg(long, env = "EDGEFN_COMPILE_WORKER")]
    pub compile_worker: Option<PathBuf>,
    /// Wall-clock limit of one compilation for the fleet (CPU: one second more).
    #[arg(long, env = "EDGEFN_COMPILE_TIMEOUT_SECS", default_value_t = 300)]
    pub compile_timeout_secs: u64,
    /// Address-space limit of the compile worker, in bytes.
    #[arg(long, env = "EDGEFN_COMPILE_MAX_MEMORY_BYTES", default_value_t = 16 << 30)]
    pub compile_max_memory_bytes: u64,
    /// Size limit of the compile worker's incremental cache in `{data_dir}/compile-cache`
    /// (a second function of the same toolchain compiles mostly from it); 0 turns it off.
    #[arg(long, env = "EDGEFN_COMPILE_CACHE_BYTES", default_value_t = 2 << 30)]
    pub compile_cache_bytes: u64,
    /// Compilations at once on this replica.
    #[arg(long, env = "EDGEFN_MAX_CONCURRENT_COMPILES", default_value_t = 1)]
    pub max_concurrent_compiles: usize,
    /// Largest artifact accepted, in bytes.
    #[arg(long, env = "EDGEFN_MAX_ARTIFACT_BYTES", default_value_t = 50 << 20)]
    pub max_artifact_bytes: usize,
    /// Seconds an upload URL stays valid.
    #[arg(long, env = "EDGEFN_UPLOAD_TTL_SECS", default_value_t = 900)]
    pub upload_ttl_secs: u64,
    /// Milliseconds between reads of desired-state changes for the nodes' push streams
    /// (changes made through this process are pushed at once; this bounds how soon nodes
    /// connected here learn of changes made through another replica).
    #[arg(long, env = "EDGEFN_SYNC_POLL_MS", default_value_t = 250)]
    pub sync_poll_ms: u64,
    /// Seconds a node may be behind a database's ledger before it shows a warning.
    #[arg(long, env = "EDGEFN_DATABASE_WARN_AFTER_SECS", default_value_t = 300)]
    pub database_warn_after_secs: u64,
    /// Seconds of silence after which a node is marked offline.
    #[arg(long, env = "EDGEFN_NODE_OFFLINE_AFTER_SECS", default_value_t = 120)]
    pub node_offline_after_secs: u64,
    /// PostgreSQL only: a role that owns the schema, to run migrations with; the control
    /// plane then runs as `--database-url`'s role with only the privileges it needs, and
    /// cannot UPDATE, DELETE or TRUNCATE the audit log nor disable its triggers.
    #[arg(long, env = "EDGEFN_DATABASE_OWNER_URL", hide_env_values = true)]
    pub database_owner_url: Option<String>,
    /// Certificate (PEM) of the developer API's TLS; with --tls-key. Default: plain HTTP.
    #[arg(long, env = "EDGEFN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of the developer API's TLS.
    #[arg(long, env = "EDGEFN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve the developer API over TLS with a self-signed certificate for this machine's
    /// loopback names, made on first start in the data directory (`api-tls.crt`).
    #[arg(long, env = "EDGEFN_TLS_SELF_SIGNED", conflicts_with = "tls_cert")]
    pub tls_self_signed: bool,
    /// Address of the node listener: heartbeats, push streams and artifacts, mTLS only.
    #[arg(long, env = "EDGEFN_NODE_LISTEN", default_value = "127.0.0.1:8443")]
    pub node_listen: SocketAddr,
    /// How nodes reach the node listener; default `https://` + the node listen address.
    #[arg(long, env = "EDGEFN_NODE_PUBLIC_URL")]
    pub node_public_url: Option<String>,
    /// Extra names (DNS or IP, comma-separated) in the node listener's certificate, besides
    /// the host of --node-public-url, `localhost` and the listen address.
    #[arg(long, env = "EDGEFN_NODE_NAMES", value_delimiter = ',')]
    pub node_names: Vec<String>,
    /// The node CA's certificate (PEM), to use an operator's CA instead of the control
    /// plane's own; with --node-ca-key.
    #[arg(long, env = "EDGEFN_NODE_CA_CERT", requires = "node_ca_key")]
    pub node_ca_cert: Option<PathBuf>,
    /// The node CA's private key (PEM).
    #[arg(long, env = "EDGEFN_NODE_CA_KEY", requires = "node_ca_cert")]
    pub node_ca_key: Option<PathBuf>,
    /// Lifetime of node certificates, in seconds (nodes renew them after two thirds).
    #[arg(long, env = "EDGEFN_NODE_CERT_TTL_SECS", default_value_t = 365 * 86_400)]
    pub node_cert_ttl_secs: u64,
    /// Lifetime of node tokens, in seconds (nodes renew them after two thirds).
    #[arg(long, env = "EDGEFN_NODE_TOKEN_TTL_SECS", default_value_t = 30 * 86_400)]
    pub node_token_ttl_secs: u64,
    /// The `iss` of the tokens this control plane signs (the same on every replica).
    #[arg(long, env = "EDGEFN_TOKEN_ISSUER", default_value = "edgefn")]
    pub token_issuer: String,
    /// Also accept API tokens of this external OIDC issuer (its `iss`); with
    /// --oidc-jwks-url.
    #[arg(long, env = "EDGEFN_OIDC_ISSUER", requires = "oidc_jwks_url")]
    pub oidc_issuer: Option<String>,
    /// Where the external issuer publishes its keys (JWKS).
    #[arg(long, env = "EDGEFN_OIDC_JWKS_URL", requires = "oidc_issuer")]
    pub oidc_jwks_url: Option<String>,
    /// The `aud` external tokens must carry.
    #[arg(long, env = "EDGEFN_OIDC_AUDIENCE", default_value = "edgefn")]
    pub oidc_audience: String,
    /// The claim of an external token that names the user.
    #[arg(long, env = "EDGEFN_OIDC_USER_CLAIM", default_value = "email")]
    pub oidc_user_claim: String,
    /// Where signed audit checkpoints go: a directory, or `s3://BUCKET[/PREFIX]` (with
    /// --s3-endpoint); default `audit-checkpoints` in the data directory. Keep it apart
    /// from the database: it is what exposes a rewritten audit log.
    #[arg(long, env = "EDGEFN_AUDIT_CHECKPOINTS")]
    pub audit_checkpoints: Option<String>,
    /// Refused calls recorded in the audit log per second; beyond, they are counted and the
    /// count recorded (so a flood of bad tokens cannot flood the database).
    #[arg(long, env = "EDGEFN_AUDIT_REFUSALS_PER_SECOND", default_value_t = 100)]
    pub audit_refusals_per_second: u32,
    /// The domain under which every project gets platform hosts that need no proof:
    /// `{project}.{domain}`, and `{function}.{project}.{domain}` for each function. The
    /// same on every replica.
    #[arg(long, env = "EDGEFN_PLATFORM_DOMAIN", default_value = crate::domains::DEFAULT_PLATFORM_DOMAIN)]
    pub platform_domain: String,
    /// The DNS server (`IP:PORT`) that domain proofs (TXT records) are looked up on;
    /// default: the system's resolvers.
    #[arg(long, env = "EDGEFN_DNS_SERVER")]
    pub dns_server: Option<SocketAddr>,
    /// How long a client may take to send a request head, or anything after connecting, in
    /// milliseconds (then its connection is closed); both listeners.
    #[arg(long, env = "EDGEFN_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// Seconds a connection may stay open with no request in flight; both listeners (a
    /// node's push stream is a request in flight).
    #[arg(long, env = "EDGEFN_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// Open connections to the API listener in all (at the limit, new ones wait).
    #[arg(long, env = "EDGEFN_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Open connections to the API listener from one IP address (more are closed at once).
    #[arg(long, env = "EDGEFN_MAX_CONNECTIONS_PER_IP", default_value_t = 1_000)]
    pub max_connections_per_ip: usize,
    /// Open connections to the node listener in all: one per connected node.
    #[arg(long, env = "EDGEFN_NODE_MAX_CONNECTIONS", default_value_t = 120_000)]
    pub node_max_connections: usize,
    /// Open connections to the node listener from one IP address (a whole POP may sit
    /// behind one NAT address, so by default as many as in all).
    #[arg(
        long,
        env = "EDGEFN_NODE_MAX_CONNECTIONS_PER_IP",
        default_value_t = 120_000
    )]
    pub node_max_connections_per_ip: usize,
    /// Seconds between audit checkpoints (one is also written at shutdown).
    #[arg(long, env = "EDGEFN_AUDIT_CHECKPOINT_SECS", default_value_t = 60)]
    pub audit_checkpoint_secs: u64,
}

impl ControlPlaneArgs {
    /// The API listener's and the node listener's connection limits.
    pub fn listen_limits(&self) -> (edgefn_listen::Limits, edgefn_listen::Limits) {
        let api = edgefn_listen::Limits {
            header_read_timeout: std::time::Duration::from_millis(self.header_read_timeout_ms),
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout_secs),
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            ..edgefn_listen::Limits::default()
        };
        let nodes = edgefn_listen::Limits {
            max_connections: self.node_max_connections,
            max_connections_per_ip: self.node_max_connections_per_ip,
            ..api
        };
        (api, nodes)
    }

    /// Parses flags and variables, with defaults taken from `--config` when given.
    pub fn parse_with_config() -> anyhow::Result<Self> {
        Self::parse_from_with_config(std::env::args_os())
    }

    pub fn parse_from_with_config<I, T>(args: I) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let first = Self::try_parse_from(&args)?;
        let Some(path) = &first.config else {
            return Ok(first);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let table: toml::Table = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
        let mut command = Self::command();
        for (key, value) in table {
            let id = key.replace('-', "_");
            if id == "config" || !command.get_arguments().any(|a| a.get_id() == id.as_str()) {
                anyhow::bail!("{}: unknown setting {key:?}", path.display());
            }
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Array(items) => items
                    .iter()
                    .map(|item| match item {
                        toml::Value::String(s) => Ok(s.clone()),
                        other => Err(anyhow::anyhow!(
                            "{}: {key} must list strings, not {}",
                            path.display(),
                            other.type_str()
                        )),
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?
                    .join(","),
                other => anyhow::bail!(
                    "{}: {key} must be a string, an integer, a boolean or a list, not {}",
                    path.display(),
                    other.type_str()
                ),
            };
            command = command.mut_arg(id, |arg| arg.default_value(value));
        }
        let matches = command.try_get_matches_from(&args)?;
        Ok(Self::from_arg_matches(&matches)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_sets_defaults_that_flags_override() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cp.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9999\"\nmax_memory_pages = 100\n",
        )
        .unwrap();
        let args = ControlPlaneArgs::parse_from_with_config([
            "cp",
            "--config",
            file.to_str().unwrap(),
            "--max-memory-pages",
            "7",
        ])
        .unwrap();
        assert_eq!(args.listen.port(), 9999);
        assert_eq!(args.max_memory_pages, 7);
        std::fs::write(&file, "colour = \"blue\"\n").unwrap();
        let error =
            ControlPlaneArgs::parse_from_with_config(["cp", "--config", file.to_str().unwrap()])
                .unwrap_err();
        assert!(
            error.to_string().contains("unknown setting \"colour\""),
            "{error}"
        );
    }

    #[test]
    fn every_flag_is_documented() {
        let command = ControlPlaneArgs::command();
        command.clone().debug_assert();
        for arg in command.get_arguments() {
            if arg.get_id() != "help" && arg.get_id() != "version" {
                assert!(arg.get_help().is_some(), "--{} has no help", arg.get_id());
            }
        }
    }
}
