//! Outbound HTTP for guests (`wasi:http/outgoing-handler`), deny by default.
//!
//! A request leaves the node only when (1) its host matches the function's
//! `allowed_outbound_hosts`, and (2) every address the host resolves to is a public unicast
//! address (or inside a network the operator allowed). The connection then goes to the
//! address that was checked, never to a second lookup, so DNS rebinding cannot slip a
//! private address in between the check and the connect.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Scheme;
use http_body_util::BodyExt as _;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// An IP network in CIDR notation, e.g. `127.0.0.0/8` or `fd00::/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_match(u32::from(net).into(), u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_match(u128::from(net), u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_match(net: u128, ip: u128, bits: u8, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = bits - prefix;
    (net >> shift) == (ip >> shift)
}

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = match s.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (s, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("invalid network {s:?}: not an IP address"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("invalid network {s:?}: prefix must be 0..={max}"))?,
            None => max,
        };
        Ok(Self { address, prefix })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// Why an address may not be reached from a guest, or `None` for a public unicast address.
///
/// IPv6 addresses that embed an IPv4 address (mapped `::ffff:a.b.c.d`, compatible
/// `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by the embedded address.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "unspecified or 'this network' address",
        (127, _, _) => "loopback address",
        (10, _, _) => "private address",
        (172, 16..=31, _) => "private address",
        (192, 168, _) => "private address",
        (169, 254, _) => "link-local address (cloud metadata)",
        (100, 64..=127, _) => "carrier-grade NAT address",
        (192, 0, 0) => "IETF protocol assignment",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation address",
        (198, 18..=19, _) => "benchmarking address",
        (224..=239, _, _) => "multicast address",
        (240..=255, _, _) => "reserved or broadcast address",
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified address");
    }
    if ip.is_loopback() {
        return Some("loopback address");
    }
    let embedded_v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    // ::ffff:a.b.c.d is the IPv4 address itself; ::a.b.c.d (deprecated "compatible") is
    // never routed publicly.
    if segments[..6] == [0, 0, 0, 0, 0, 0xffff] {
        return forbidden_v4(embedded_v4(segments[6], segments[7]));
    }
    if segments[..6] == [0; 6] {
        return Some("IPv4-compatible address");
    }
    match segments[0] {
        // NAT64: well-known prefix 64:ff9b::/96 and local-use 64:ff9b:1::/48.
        0x0064 if segments[1] == 0xff9b => {
            if segments[2] == 1 {
                return Some("local-use NAT64 address");
            }
            return forbidden_v4(embedded_v4(segments[6], segments[7]));
        }
        0x2002 => return forbidden_v4(embedded_v4(segments[1], segments[2])),
        0x2001 if segments[1] == 0 => return Some("Teredo address"),
        0x2001 if segments[1] == 0x0db8 => return Some("documentation address"),
        0x0100 if segments[1..4] == [0, 0, 0] => return Some("discard-only address"),
        _ => {}
    }
    if segments[0] & 0xfe00 == 0xfc00 {
        return Some("unique-local address");
    }
    match segments[0] & 0xffc0 {
        0xfe80 => Some("link-local address"),
        0xfec0 => Some("site-local address"),
        _ if segments[0] & 0xff00 == 0xff00 => Some("multicast address"),
        _ => None,
    }
}

/// Parses the numeric host forms that C resolvers accept for IPv4 (`inet_aton`): one to four
/// parts, each decimal, octal (`0177`) or hex (`0x7f`), e.g. `2130706433` or `0x7f.1`.
/// Returns `None` for anything that is not purely numeric.
pub fn parse_numeric_ipv4(host: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        let value = if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            if hex.is_empty() {
                0
            } else {
                u64::from_str_radix(hex, 16).ok()?
            }
        } else if part.len() > 1 && part.starts_with('0') {
            u64::from_str_radix(&part[1..], 8).ok()?
        } else {
            part.parse::<u64>().ok()?
        };
        values.push(value);
    }
    let (last, leading) = values.split_last()?;
    if leading.iter().any(|v| *v > 255) {
        return None;
    }
    let last_bits = 8 * (4 - leading.len() as u32);
    if *last >= 1u64 << last_bits {
        return None;
    }
    let mut address: u64 = 0;
    for (i, v) in leading.iter().enumerate() {
        address |= v << (24 - 8 * i as u32);
    }
    Some(Ipv4Addr::from((address | last) as u32))
}

/// A function's outbound allowlist plus the node's networks policy, and the function's
/// share of outbound connections.
#[derive(Clone, Debug)]
pub struct OutboundPolicy {
    allowed_hosts: Vec<HostPattern>,
    allowed_networks: Vec<Network>,
    /// Open outbound connections of all the function's instances on this node.
    connections: Arc<tokio::sync::Semaphore>,
    /// Open outbound connections of one instance.
    per_instance: usize,
}

/// Open outbound connections of one function on a node, by default.
pub const MAX_CONNECTIONS_PER_FUNCTION: usize = 256;
/// Open outbound connections of one instance, by default.
pub const MAX_CONNECTIONS_PER_INSTANCE: usize = 16;

impl Default for OutboundPolicy {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            allowed_networks: Vec::new(),
            connections: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS_PER_FUNCTION)),
            per_instance: MAX_CONNECTIONS_PER_INSTANCE,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
struct HostPattern {
    /// Lower-case host without trailing dot; `*.` prefix kept for wildcards.
    host: String,
    port: Option<u16>,
}

/// Why an outbound request was refused before any packet was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundDenied {
    #[error("host {0:?} is not in allowed_outbound_hosts")]
    HostNotAllowed(String),
    #[error("{host} resolves to {address}, a {reason}")]
    ForbiddenAddress {
        host: String,
        address: IpAddr,
        reason: &'static str,
    },
    #[error("cannot resolve {0:?}")]
    Unresolvable(String),
    #[error("invalid url: {0}")]
    InvalidUrl(String),
}

fn normalize_host(host: &str) -> String {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl OutboundPolicy {
    /// Builds the policy; an entry that is not `host`, `host:port` or `*.domain` is an error.
    pub fn new(allowed_hosts: &[String], allowed_networks: &[Network]) -> Result<Self, String> {
        let mut patterns = Vec::with_capacity(allowed_hosts.len());
        for entry in allowed_hosts {
            let (host, port) = match entry.rsplit_once(':') {
                Some((host, port)) if !host.ends_with(':') && !port.contains(']') => (
                    host,
                    Some(port.parse::<u16>().map_err(|_| {
                        format!("invalid allowed_outbound_hosts entry {entry:?}: bad port")
                    })?),
                ),
                _ => (entry.as_str(), None),
            };
            let host = normalize_host(host);
            let name = host.strip_prefix("*.").unwrap_or(&host);
            if name.is_empty() || name.contains('*') || name.contains('/') || name.contains('@') {
                return Err(format!("invalid allowed_outbound_hosts entry {entry:?}"));
            }
            patterns.push(HostPattern { host, port });
        }
        Ok(Self {
            allowed_hosts: patterns,
            allowed_networks: allowed_networks.to_vec(),
            ..Self::default()
        })
    }

    /// The same policy with other connection limits: `per_function` is the allowance all
    /// versions of the function share, `per_instance` each instance's own.
    pub fn with_connection_limits(
        mut self,
        per_function: Arc<tokio::sync::Semaphore>,
        per_instance: usize,
    ) -> Self {
        self.connections = per_function;
        self.per_instance = per_instance.max(1);
        self
    }

    /// The connection allowance of one new instance.
    pub(crate) fn instance_connections(&self) -> Arc<tokio::sync::Semaphore> {
        Arc::new(tokio::sync::Semaphore::new(self.per_instance))
    }

    /// Whether `host:port` matches the allowlist (before any resolution).
    pub fn host_allowed(&self, host: &str, port: u16) -> bool {
        let host = normalize_host(host);
        self.allowed_hosts.iter().any(|pattern| {
            let host_matches = match pattern.host.strip_prefix("*.") {
                Some(domain) => {
                    host.len() > domain.len() + 1 && host.ends_with(domain) && {
                        host.as_bytes()[host.len() - domain.len() - 1] == b'.'
                    }
                }
                None => pattern.host == host,
            };
            host_matches && pattern.port.is_none_or(|p| p == port)
        })
    }

    /// Whether the node may connect to `ip`: public, or in an operator-allowed network.
    pub fn check_address(&self, host: &str, ip: IpAddr) -> Result<(), OutboundDenied> {
        if self.allowed_networks.iter().any(|net| net.contains(ip)) {
            return Ok(());
        }
        match forbidden_reason(ip) {
            None => Ok(()),
            Some(reason) => Err(OutboundDenied::ForbiddenAddress {
                host: host.to_string(),
                address: ip,
                reason,
            }),
        }
    }

    /// Checks the allowlist, resolves the host and checks every address. The returned
    /// addresses are the only ones a connection may use.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, OutboundDenied> {
        if !self.host_allowed(host, port) {
            return Err(OutboundDenied::HostNotAllowed(host.to_string()));
        }
        let name = normalize_host(host);
        let addresses: Vec<IpAddr> = if let Ok(ip) = name.parse::<IpAddr>() {
            vec![ip]
        } else if let Some(ip) = parse_numeric_ipv4(&name) {
            vec![IpAddr::V4(ip)]
        } else {
            tokio::net::lookup_host((name.as_str(), port))
                .await
                .map_err(|_| OutboundDenied::Unresolvable(host.to_string()))?
                .map(|addr| addr.ip())
                .collect()
        };
        if addresses.is_empty() {
            return Err(OutboundDenied::Unresolvable(host.to_string()));
        }
        // One forbidden answer poisons the whole set: a mix of public and private answers is
        // the signature of a rebinding attempt.
        for ip in &addresses {
            self.check_address(host, *ip)?;
        }
        Ok(addresses
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }

    /// Sends `request` under this policy. Errors are `wasi:http` error codes the guest sees.
    pub async fn send(
        self: Arc<Self>,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let instance = Arc::new(tokio::sync::Semaphore::new(self.per_instance));
        self.send_within(request, options, &instance).await
    }

    /// [`Self::send`], counted against the instance's connections (`instance`) and the
    /// function's: over either, the guest gets `connection-limit-reached` at once. A
    /// connection counts until it closes (its response body read or dropped).
    pub(crate) async fn send_within(
        self: Arc<Self>,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        instance: &Arc<tokio::sync::Semaphore>,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let permits = (
            instance.clone().try_acquire_owned(),
            self.connections.clone().try_acquire_owned(),
        );
        let (Ok(instance_permit), Ok(function_permit)) = permits else {
            tracing::debug!("outbound connection refused: the connection limit is reached");
            return Err(HttpError::ConnectionLimitReached);
        };
        let uri = request.uri().clone();
        let host = uri.host().ok_or(HttpError::HttpRequestUriInvalid)?;
        let https = uri.scheme() == Some(&Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addresses = self.resolve(host, port).await.map_err(|denied| {
            tracing::debug!(%denied, "outbound request denied");
            match denied {
                OutboundDenied::Unresolvable(_) => HttpError::DnsError {
                    rcode: Some("unresolvable".into()),
                    info_code: None,
                },
                OutboundDenied::ForbiddenAddress { .. } => HttpError::DestinationIpProhibited,
                _ => HttpError::HttpRequestDenied,
            }
        })?;
        let connect_timeout = options
            .and_then(|o| o.connect_timeout)
            .unwrap_or(Duration::from_secs(10));
        let stream = connect_any(&addresses, connect_timeout).await?;
        let io: Box<dyn Io> = if https {
            Box::new(tls_connect(host, stream).await?)
        } else {
            Box::new(stream)
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util_io(io))
            .await
            .map_err(HttpError::Hyper)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "outbound connection ended with an error");
            }
            drop((instance_permit, function_permit));
        });
        let (mut parts, body) = request.into_parts();
        // On the wire the request line carries only the path; the host is in `Host`.
        parts.uri = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .parse()
            .map_err(|_| HttpError::HttpRequestUriInvalid)?;
        let response = sender
            .send_request(http::Request::from_parts(parts, body))
            .await
            .map_err(HttpError::Hyper)?;
        Ok(response.map(|body| body.map_err(HttpError::Hyper).boxed_unsync()))
    }
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

fn hyper_util_io(io: Box<dyn Io>) -> wasmtime_wasi_http::io::TokioIo<Box<dyn Io>> {
    wasmtime_wasi_http::io::TokioIo::new(io)
}

async fn connect_any(
    addresses: &[SocketAddr],
    timeout: Duration,
) -> Result<tokio::net::TcpStream, HttpError> {
    let mut last_error = HttpError::ConnectionRefused;
    for address in addresses {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(error)) => last_error = HttpError::Connect(error),
            Err(_) => last_error = HttpError::ConnectionTimeout,
        }
    }
    Err(last_error)
}

async fn tls_connect(
    host: &str,
    stream: tokio::net::TcpStream,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, HttpError> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| b.with_root_certificates(roots).with_no_client_auth())
                .unwrap_or_else(|_| unreachable_config()),
        )
    });
    let name = rustls::pki_types::ServerName::try_from(normalize_host(host))
        .map_err(|_| HttpError::TlsCertificateError)?;
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, stream)
        .await
        .map_err(HttpError::Tls)
}

/// The ring provider always supports the safe default protocol versions; this exists only
/// so that the impossible error path needs no panic.
fn unreachable_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// `wasi:http` hooks of one store: outbound requests go through [`OutboundPolicy::send`].
pub(crate) struct OutboundHooks {
    pub(crate) policy: Arc<OutboundPolicy>,
    /// This instance's open outbound connections.
    pub(crate) connections: Arc<tokio::sync::Semaphore>,
}

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_errors: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                    ),
                    HttpError,
                >,
            > + Send,
    > {
        let (policy, connections) = (self.policy.clone(), self.connections.clone());
        Box::new(async move {
            let response = policy.send_within(request, options, &connections).await?;
            Ok((
                response,
                Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests;
