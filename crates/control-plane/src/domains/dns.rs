//! Proof of a domain claim by DNS: the claim's TXT record (`_edgefn-challenge.{name}`)
//! holds `edgefn-verification={token}`, the way Cloudflare, Vercel and Fastly check custom
//! domains. Looked up with `hickory-resolver` through the system's resolvers, or one name
//! server given by the operator (`--dns-server`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

use super::TXT_PREFIX;

/// A proof is checked when the developer says the record is in place: a cached answer
/// from before (none, or an old value) would refuse it until its TTL ran out.
fn uncached(options: &mut ResolverOpts) {
    options.cache_size = 0;
    options.positive_max_ttl = Some(std::time::Duration::ZERO);
    options.negative_max_ttl = Some(std::time::Duration::ZERO);
}

pub struct DnsVerifier {
    resolver: TokioResolver,
    /// When each project last had a lookup made (see [`DnsVerifier::admit`]).
    last_lookup: Mutex<HashMap<String, Instant>>,
}

/// One lookup per project per this long: a developer checks a record they just set, not
/// in a loop, and `POST …/verify` must not turn the control plane into a DNS flooder.
pub const LOOKUP_INTERVAL: Duration = Duration::from_secs(1);

impl DnsVerifier {
    fn new(resolver: TokioResolver) -> Self {
        Self {
            resolver,
            last_lookup: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `project` may have a lookup made now; otherwise how long until it may.
    pub fn admit(&self, project: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut last = self.last_lookup.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = last.get(project) {
            let since = now.duration_since(*at);
            if since < LOOKUP_INTERVAL {
                return Err(LOOKUP_INTERVAL - since);
            }
        }
        if last.len() >= 10_000 {
            last.retain(|_, at| now.duration_since(*at) < LOOKUP_INTERVAL);
        }
        last.insert(project.to_string(), now);
        Ok(())
    }

    /// The system's resolvers (`/etc/resolv.conf`).
    pub fn system() -> Result<Self, String> {
        let mut builder = TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?;
        uncached(builder.options_mut());
        let resolver = builder
            .build()
            .map_err(|e| format!("cannot start the DNS resolver: {e}"))?;
        Ok(Self::new(resolver))
    }

    /// One name server, over UDP and TCP.
    pub fn with_server(server: SocketAddr) -> Result<Self, String> {
        let mut udp = ConnectionConfig::udp();
        udp.port = server.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = server.port();
        let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(
            server.ip(),
            true,
            vec![udp, tcp],
        )]);
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        uncached(builder.options_mut());
        let resolver = builder
            .build()
            .map_err(|e| format!("cannot start the DNS resolver: {e}"))?;
        Ok(Self::new(resolver))
    }

    /// Whether the TXT record of the claim on `base` holds the token. A missing record is
    /// `Ok(false)`; a resolver that cannot answer is an error.
    pub async fn holds(&self, base: &str, token: &str) -> Result<bool, String> {
        let name = format!("{TXT_PREFIX}.{base}.");
        let expected = format!("edgefn-verification={token}");
        let lookup = match self.resolver.txt_lookup(name.as_str()).await {
            Ok(lookup) => lookup,
            Err(error) if error.is_no_records_found() || error.is_nx_domain() => return Ok(false),
            Err(error) => return Err(format!("DNS lookup of {name} failed: {error}")),
        };
        Ok(lookup.answers().iter().any(|record| match &record.data {
            RData::TXT(txt) => {
                let text: Vec<u8> = txt
                    .txt_data
                    .iter()
                    .flat_map(|part| part.iter().copied())
                    .collect();
                text == expected.as_bytes()
            }
            _ => false,
        }))
    }
}
