//! The control plane's REST API as the CLI uses it: JSON in and out, and every failure turned
//! into one message that carries the API's own error text.

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// An API call that failed with an answer from the control plane.
#[derive(Debug, thiserror::Error)]
#[error("{message} (HTTP {status}{})", if code.is_empty() { String::new() } else { format!(", {code}") })]
pub struct ApiFailure {
    pub status: u16,
    pub code: String,
    pub message: String,
}

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client of the control plane at `base`, sending `token`, trusting `ca_cert` (PEM)
    /// besides the system's roots.
    pub fn new(
        base: &str,
        token: Option<String>,
        ca_cert: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!(
                "the control plane URL must start with http:// or https://, got {base:?}"
            );
        }
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the CA certificate {}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().context("cannot create an HTTP client")?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The same client with another token.
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            base: self.base.clone(),
            token: Some(token.to_string()),
            http: self.http.clone(),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}/api/v1{path}", self.base);
        let request = self.http.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.request(reqwest::Method::GET, path), path)
            .await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let request = self
            .request(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body)?);
        self.send(request, path).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let request = self
            .request(reqwest::Method::PUT, path)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body)?);
        self.send(request, path).await
    }

    /// A call whose success has no body (204).
    pub async fn send_empty(&self, method: reqwest::Method, path: &str) -> anyhow::Result<()> {
        let request = self
            .request(method, path)
            .header("content-type", "application/json")
            .body("{}");
        let _: serde_json::Value = self.send(request, path).await?;
        Ok(())
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        path: &str,
    ) -> anyhow::Result<T> {
        let reply = request
            .send()
            .await
            .map_err(|e| unreachable(&self.base, e))?;
        let status = reply.status();
        let body = reply
            .bytes()
            .await
            .with_context(|| format!("reading the answer to {path}"))?;
        if !status.is_success() {
            return Err(failure(status.as_u16(), &body).into());
        }
        let body: &[u8] = if body.is_empty() { b"null" } else { &body };
        serde_json::from_slice(body).with_context(|| {
            format!("the control plane's answer to {path} is not what this CLI expects")
        })
    }

    /// Uploads `bytes` to a presigned URL (the control plane's or an S3 server's), calling
    /// `progress` with the bytes sent so far.
    pub async fn upload(
        &self,
        url: &str,
        bytes: bytes::Bytes,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> anyhow::Result<()> {
        const CHUNK: usize = 64 << 10;
        let total = bytes.len();
        let chunks = (0..total.div_ceil(CHUNK)).map(move |i| {
            let end = ((i + 1) * CHUNK).min(total);
            progress(end as u64);
            Ok::<_, std::io::Error>(bytes.slice(i * CHUNK..end))
        });
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
        let reply = self
            .http
            .put(url)
            .header("content-type", "application/wasm")
            .header("content-length", total)
            .body(body)
            .send()
            .await
            .map_err(|e| unreachable(url, e))?;
        let status = reply.status();
        if !status.is_success() {
            let body = reply.bytes().await.unwrap_or_default();
            return Err(failure(status.as_u16(), &body).into());
        }
        Ok(())
    }
}

fn unreachable(base: &str, error: reqwest::Error) -> anyhow::Error {
    let cause = std::error::Error::source(&error)
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    anyhow::anyhow!(
        "cannot reach the control plane at {base}{cause} (is it running? set --url or EDGEFN_URL)"
    )
}

/// A 401's message, with what to do about it.
fn unauthenticated_hint(message: String) -> String {
    format!(
        "{message} (log in with `edgefn login`, or set --token / EDGEFN_TOKEN; `edgefn dev` and a new control plane write an administrator token to their data directory's admin-token file)"
    )
}

/// The API's error body as a failure; any other body is shown as text.
fn failure(status: u16, body: &[u8]) -> ApiFailure {
    match serde_json::from_slice::<edgefn_proto::api::ErrorBody>(body) {
        Ok(error) => {
            let mut message = error.error.message;
            if let Some(fields) = error.error.details.get("fields").and_then(|f| f.as_array()) {
                for field in fields {
                    if let (Some(name), Some(text)) = (
                        field.get("field").and_then(|f| f.as_str()),
                        field.get("message").and_then(|m| m.as_str()),
                    ) {
                        message.push_str(&format!("\n  {name}: {text}"));
                    }
                }
            }
            if status == 401 {
                message = unauthenticated_hint(message);
            }
            ApiFailure {
                status,
                code: error.error.code,
                message,
            }
        }
        Err(_) => ApiFailure {
            status,
            code: String::new(),
            message: String::from_utf8_lossy(body)
                .trim()
                .chars()
                .take(500)
                .collect(),
        },
    }
}
