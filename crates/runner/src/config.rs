//! The runner's flags. Each has an `EDGEFN_…` environment variable; the doc comment of each
//! field is its `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "edgefn-runner",
    version,
    about = "The edgefn edge node: serves WebAssembly HTTP functions",
    group = clap::ArgGroup::new("source").required(true).args(["manifest", "control_plane"])
)]
pub struct RunnerArgs {
    /// TOML manifest of the functions and routes to serve (standalone, without a control
    /// plane; SIGHUP reloads it).
    #[arg(long, env = "EDGEFN_MANIFEST")]
    pub manifest: Option<PathBuf>,
    /// URL of the control plane's API to enroll with, e.g. `http://127.0.0.1:8080`; the node
    /// then talks to the node listener it names, over mTLS.
    #[arg(long, env = "EDGEFN_CONTROL_PLANE")]
    pub control_plane: Option<String>,
    /// One-time token to enroll with the control plane (`edgefn nodes token create`), needed
    /// only until the node has an identity in --state-dir.
    #[arg(long, env = "EDGEFN_BOOTSTRAP_TOKEN", hide_env_values = true)]
    pub bootstrap_token: Option<String>,
    /// SHA-256 of the node CA certificate the control plane must present when the node
    /// enrolls (printed by `edgefn nodes token create`).
    #[arg(long, env = "EDGEFN_CA_SHA256")]
    pub ca_sha256: Option<String>,
    /// PEM certificate to trust for the control plane's API (where the node enrolls) when
    /// it is served over TLS with a private or self-signed certificate.
    #[arg(long, env = "EDGEFN_API_CA_CERT")]
    pub api_ca_cert: Option<PathBuf>,
    /// Directory for this node's identity (key, certificate, node id) and its last applied
    /// desired state, from which it restarts even without the control plane.
    #[arg(long, env = "EDGEFN_STATE_DIR", default_value = ".edgefn/node")]
    pub state_dir: PathBuf,
    /// Milliseconds between heartbeats to the control plane.
    #[arg(long, env = "EDGEFN_HEARTBEAT_MS", default_value_t = 30_000)]
    pub heartbeat_ms: u64,
    /// The address the control plane shows for this node (default: the listener's).
    #[arg(long, env = "EDGEFN_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<String>,
    /// Address of the public HTTP(S) listener (port 0 picks a free port).
    #[arg(long, env = "EDGEFN_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// PEM certificate chain; with --tls-key, the listener speaks TLS (HTTP/1.1 and HTTP/2).
    #[arg(long, env = "EDGEFN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "EDGEFN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Address of the admin listener (/metrics, /healthz, /readyz).
    #[arg(long, env = "EDGEFN_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// Directory of the artifact cache.
    #[arg(long, env = "EDGEFN_CACHE_DIR", default_value = ".edgefn/cache")]
    pub cache_dir: PathBuf,
    /// This node's name: in logs and metrics, and the name it registers under with a
    /// control plane (which gives it an id of its own).
    #[arg(long, env = "EDGEFN_NODE_ID", default_value = "local")]
    pub node_id: String,
    /// Labels of this node, e.g. `region=tokyo,pop=tokyo-1`.
    #[arg(long, env = "EDGEFN_LABELS", value_parser = parse_labels, default_value = "")]
    pub labels: Labels,
    /// Largest total size of cached artifacts, in bytes.
    #[arg(long, env = "EDGEFN_CACHE_MAX_BYTES", default_value_t = 10 << 30)]
    pub cache_max_bytes: u64,
    /// Most artifacts kept in the cache.
    #[arg(long, env = "EDGEFN_CACHE_MAX_FILES", default_value_t = 1000)]
    pub cache_max_files: usize,
    /// Node-wide budget for the linear memory of hot instances, in bytes.
    #[arg(long, env = "EDGEFN_MEMORY_BUDGET_BYTES", default_value_t = 4 << 30)]
    pub memory_budget_bytes: u64,
    /// Largest memory_pages (64 KiB each) a function may ask for.
    #[arg(long, env = "EDGEFN_MAX_MEMORY_PAGES", default_value_t = 4096)]
    pub max_memory_pages: u64,
    /// Instance slots the pooling allocator reserves.
    #[arg(long, env = "EDGEFN_POOL_INSTANCES", default_value_t = 1000)]
    pub pool_instances: u32,
    /// A tenant's share of the instance slots, in percent, unless the control plane sets
    /// its project's: its pre-warmed instances and any function's maximum stay within it.
    #[arg(long, env = "EDGEFN_POOL_SHARE_PERCENT", default_value_t = 50, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub pool_share_percent: u8,
    /// All pre-warmed instances together, in percent of the instance slots (the rest is
    /// kept for instances made on demand, of any tenant).
    #[arg(long, env = "EDGEFN_PREWARM_PERCENT", default_value_t = 75, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub prewarm_percent: u8,
    /// Concurrent executions per tenant.
    #[arg(long, env = "EDGEFN_TENANT_MAX_CONCURRENT", default_value_t = 100)]
    pub tenant_max_concurrent: u32,
    /// Invocations per minute per tenant.
    #[arg(
        long,
        env = "EDGEFN_TENANT_INVOCATIONS_PER_MINUTE",
        default_value_t = 10_000
    )]
    pub tenant_invocations_per_minute: u32,
    /// Largest request body, in bytes (larger: 413).
    #[arg(long, env = "EDGEFN_MAX_REQUEST_BODY_BYTES", default_value_t = 16 << 20)]
    pub max_request_body_bytes: u64,
    /// Largest request head (request line plus headers), in bytes (larger: 431).
    #[arg(long, env = "EDGEFN_MAX_HEADER_BYTES", default_value_t = 64 << 10)]
    pub max_header_bytes: usize,
    /// How long a client may take to send a request's body once its head arrived, in
    /// milliseconds (then 408). The tenant's concurrency slot is taken only after it.
    #[arg(long, env = "EDGEFN_BODY_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_read_timeout_ms: u64,
    /// How long a front connection may go without a request in flight — after connecting,
    /// between requests, or while a request head is being sent — in milliseconds (then the
    /// connection is closed).
    #[arg(long, env = "EDGEFN_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// Seconds an admin-listener connection may stay open with no request in flight (the
    /// front closes such connections after --header-read-timeout-ms already).
    #[arg(long, env = "EDGEFN_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// Open client connections in all (at the limit, new ones wait in the kernel's queue).
    #[arg(long, env = "EDGEFN_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Open client connections from one IP address (more are closed at once).
    #[arg(long, env = "EDGEFN_MAX_CONNECTIONS_PER_IP", default_value_t = 1_000)]
    pub max_connections_per_ip: usize,
    /// Concurrent HTTP/2 streams per connection.
    #[arg(long, env = "EDGEFN_H2_MAX_STREAMS", default_value_t = 100)]
    pub h2_max_streams: u32,
    /// Seconds in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "EDGEFN_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    pub drain_timeout_secs: u64,
    /// Networks outbound HTTP from guests may reach besides public addresses (CIDR, repeat
    /// the flag or separate with commas), e.g. an internal API at `10.1.0.0/16`.
    #[arg(long, env = "EDGEFN_OUTBOUND_ALLOW_NETWORKS", value_delimiter = ',')]
    pub outbound_allow_networks: Vec<edgefn_runtime::outbound::Network>,
    /// Compilations of new artifacts at once (default: half the cores, at least one).
    #[arg(long, env = "EDGEFN_COMPILE_WORKERS")]
    pub compile_workers: Option<usize>,
    /// Size limit of Cranelift's incremental compilation cache in `{state_dir}/compile-cache`,
    /// which lets a second function built with the same toolchain compile mostly from the
    /// first one's pieces; 0 turns it off.
    #[arg(long, env = "EDGEFN_COMPILE_CACHE_BYTES", default_value_t = 1 << 30)]
    pub compile_cache_bytes: u64,
    /// Compile a new version first with Winch, Wasmtime's baseline compiler (about 4×
    /// faster, slower code), serve it at once, and switch to Cranelift code (the control
    /// plane's, or compiled here) as soon as it is ready. Uses a second, smaller instance
    /// pool for the Winch code.
    #[arg(long, env = "EDGEFN_WINCH_FIRST")]
    pub winch_first: bool,
    /// Open outbound connections of one function (all its instances) on this node; more
    /// fail with `connection-limit-reached` in the guest.
    #[arg(
        long,
        env = "EDGEFN_OUTBOUND_CONNECTIONS_PER_FUNCTION",
        default_value_t = 256
    )]
    pub outbound_connections_per_function: usize,
    /// Open outbound connections of one instance.
    #[arg(
        long,
        env = "EDGEFN_OUTBOUND_CONNECTIONS_PER_INSTANCE",
        default_value_t = 16
    )]
    pub outbound_connections_per_instance: usize,
    /// First delay between artifact download attempts, in milliseconds (doubles to 60 s).
    #[arg(long, env = "EDGEFN_FETCH_BACKOFF_MS", default_value_t = 1000)]
    pub fetch_backoff_ms: u64,
    /// Download attempts before a background fetch reports failure (a later request for
    /// the function tries again).
    #[arg(long, env = "EDGEFN_FETCH_ATTEMPTS", default_value_t = 5)]
    pub fetch_attempts: u32,
}

/// `key=value` pairs in the order given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(pub Vec<(String, String)>);

fn parse_labels(text: &str) -> Result<Labels, String> {
    let mut labels = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("label {pair:?} is not key=value"))?;
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            return Err(format!(
                "label key {key:?} must be letters, digits, '_', '-' or '.'"
            ));
        }
        labels.push((key.to_string(), value.to_string()));
    }
    Ok(Labels(labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_labels("region=tokyo, pop=tokyo-1").unwrap(),
            Labels(vec![
                ("region".into(), "tokyo".into()),
                ("pop".into(), "tokyo-1".into())
            ])
        );
        assert_eq!(parse_labels("").unwrap(), Labels::default());
        assert!(parse_labels("region").is_err());
        assert!(parse_labels("=x").is_err());
    }

    #[test]
    fn every_flag_is_documented() {
        use clap::CommandFactory as _;
        let command = RunnerArgs::command();
        command.clone().debug_assert();
        for arg in command.get_arguments() {
            if arg.get_id() != "help" && arg.get_id() != "version" {
                assert!(arg.get_help().is_some(), "--{} has no help", arg.get_id());
            }
        }
    }
}
