//! Getting artifact bytes from their source, with exponential backoff and jitter.

use std::time::{Duration, Instant};

use crate::spec::ArtifactSource;

pub use edgefn_proto::backoff::{Backoff, random_u64};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot read {path}: {error}")]
    File { path: String, error: std::io::Error },
    #[error("GET {url} failed: {message}")]
    Http { url: String, message: String },
    #[error("deadline passed while fetching")]
    Deadline,
}

/// How a node attached to a control plane downloads artifacts: from a node listener, over
/// mTLS with its node token. Every `https` URL goes this way — any replica's node listener
/// may have stored the artifact — and the token reaches only servers whose certificate the
/// node CA signed, the only roots `client` trusts.
pub struct Authorized {
    pub client: reqwest::Client,
    pub token: String,
    /// The node listener's base URL (`https://host:port`).
    pub node_url: String,
    /// The control plane's public key (SPKI PEM), which signs precompiled code.
    pub signing_key: String,
}

/// The control plane's answer to a request for precompiled code.
pub enum PrecompiledReply {
    /// The code and its attestation, not yet checked.
    Code {
        native: Vec<u8>,
        attestation: String,
        signing_key: String,
    },
    /// None to give (no control plane, no compiler there, another engine, a failed
    /// compilation, or still compiling at the deadline): the node compiles it.
    Unavailable(String),
}

pub struct Fetcher {
    client: reqwest::Client,
    /// Set by the sync client once the node has its certificate and token.
    authorized: arc_swap::ArcSwapOption<Authorized>,
    pub backoff: Backoff,
    max_bytes: u64,
}

impl Fetcher {
    pub fn new(backoff: Backoff, max_bytes: u64) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap_or_default();
        Self {
            client,
            authorized: arc_swap::ArcSwapOption::empty(),
            backoff,
            max_bytes,
        }
    }

    /// From now on, `https` URLs are fetched with `authorized`'s client and token.
    pub fn authorize(&self, authorized: Authorized) {
        self.authorized.store(Some(std::sync::Arc::new(authorized)));
    }

    /// Fetches once.
    async fn fetch_once(&self, source: &ArtifactSource) -> Result<Vec<u8>, FetchError> {
        match source {
            ArtifactSource::Path(path) => {
                tokio::fs::read(path)
                    .await
                    .map_err(|error| FetchError::File {
                        path: path.display().to_string(),
                        error,
                    })
            }
            ArtifactSource::Url(url) => {
                let http_error = |message: String| FetchError::Http {
                    url: url.clone(),
                    message,
                };
                let authorized = self.authorized.load_full();
                let request = match authorized.as_deref() {
                    Some(auth) if url.starts_with("https://") => {
                        auth.client.get(url).bearer_auth(&auth.token)
                    }
                    _ => self.client.get(url),
                };
                let response = request
                    .send()
                    .await
                    .map_err(|e| http_error(e.to_string()))?;
                if !response.status().is_success() {
                    return Err(http_error(format!("status {}", response.status())));
                }
                match read_capped(response, self.max_bytes).await {
                    Ok(Some(bytes)) => Ok(bytes),
                    Ok(None) => Err(http_error(format!(
                        "artifact larger than {} bytes",
                        self.max_bytes
                    ))),
                    Err(e) => Err(http_error(e.to_string())),
                }
            }
        }
    }

    /// Asks the control plane for the native code of `sha256` for this node's `engine`,
    /// waiting while it compiles (as its `Retry-After` says), at most until `deadline`.
    pub async fn fetch_precompiled(
        &self,
        sha256: &str,
        engine: &edgefn_runtime::EngineIdentity,
        deadline: Instant,
    ) -> PrecompiledReply {
        let Some(auth) = self.authorized.load_full() else {
            return PrecompiledReply::Unavailable("no control plane".into());
        };
        let url = format!(
            "{}/api/v1/precompiled/{sha256}/{}?max_memory_pages={}&fuel={}",
            auth.node_url, engine.hash, engine.max_memory_pages, engine.fuel
        );
        // Native code is several times the size of its WebAssembly.
        let limit = self.max_bytes.saturating_mul(8);
        let mut failures = 0u32;
        loop {
            let wait = match self.precompiled_once(&auth, &url, limit).await {
                Ok(Some(reply)) => return reply,
                // Still compiling.
                Ok(None) => Duration::from_millis(500),
                Err(error) => {
                    failures += 1;
                    if failures >= self.backoff.attempts.max(1) {
                        return PrecompiledReply::Unavailable(error);
                    }
                    self.backoff.delay(failures)
                }
            };
            if Instant::now() + wait >= deadline {
                return PrecompiledReply::Unavailable(
                    "the control plane was still compiling at the deadline".into(),
                );
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// One request: `Ok(None)` while the control plane compiles.
    async fn precompiled_once(
        &self,
        auth: &Authorized,
        url: &str,
        limit: u64,
    ) -> Result<Option<PrecompiledReply>, String> {
        let response = auth
            .client
            .get(url)
            .bearer_auth(&auth.token)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        match response.status() {
            reqwest::StatusCode::OK => {}
            reqwest::StatusCode::ACCEPTED => return Ok(None),
            status if status.is_client_error() => {
                let body = response.text().await.unwrap_or_default();
                let message = serde_json::from_str::<edgefn_proto::api::ErrorBody>(&body)
                    .map(|b| b.error.message)
                    .unwrap_or_else(|_| status.to_string());
                return Ok(Some(PrecompiledReply::Unavailable(message)));
            }
            status => return Err(format!("GET {url}: status {status}")),
        }
        let attestation = response
            .headers()
            .get(edgefn_proto::sync::ATTESTATION_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let Some(native) = read_capped(response, limit)
            .await
            .map_err(|e| format!("GET {url}: {e}"))?
        else {
            return Ok(Some(PrecompiledReply::Unavailable(format!(
                "precompiled code larger than {limit} bytes"
            ))));
        };
        Ok(Some(PrecompiledReply::Code {
            native,
            attestation,
            signing_key: auth.signing_key.clone(),
        }))
    }

    /// Fetches with retries: up to `backoff.attempts` tries, never past `deadline`. A local
    /// file is read once: waiting does not make a missing file appear.
    pub async fn fetch(
        &self,
        source: &ArtifactSource,
        deadline: Option<Instant>,
    ) -> Result<Vec<u8>, FetchError> {
        let attempts = if matches!(source, ArtifactSource::Path(_)) {
            1
        } else {
            self.backoff.attempts.max(1)
        };
        let mut attempt = 1;
        loop {
            let once = self.fetch_once(source);
            let result = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline.into(), once)
                    .await
                    .map_err(|_| FetchError::Deadline)?,
                None => once.await,
            };
            match result {
                Ok(bytes) => return Ok(bytes),
                Err(error) if attempt >= attempts => return Err(error),
                Err(error) => {
                    let delay = self.backoff.delay(attempt);
                    tracing::warn!(%error, attempt, delay_ms = delay.as_millis() as u64, "artifact fetch failed; retrying");
                    if deadline.is_some_and(|d| Instant::now() + delay >= d) {
                        return Err(FetchError::Deadline);
                    }
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// A response's body, or `None` once it passes `limit` bytes: refused by its announced
/// length before reading, else cut while it streams (a body without a length is bounded too).
async fn read_capped(
    mut response: reqwest::Response,
    limit: u64,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response.content_length().is_some_and(|len| len > limit) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}
