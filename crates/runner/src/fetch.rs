//! Getting artifact bytes from their source, with exponential backoff and jitter.

use std::time::{Duration, Instant};

use crate::manifest::ArtifactSource;

/// Retry schedule for fetches.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            attempts: 5,
        }
    }
}

impl Backoff {
    /// The delay before retry `attempt` (1-based): doubling from `initial`, capped at `max`,
    /// with "full jitter" between half and all of it so that a fleet does not retry in step.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponential = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exponential.min(self.max);
        let jitter = random_fraction();
        capped.mul_f64(0.5 + jitter / 2.0)
    }
}

/// A number in [0, 1) from the standard library's randomly seeded hasher.
pub fn random_fraction() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot read {path}: {error}")]
    File { path: String, error: std::io::Error },
    #[error("GET {url} failed: {message}")]
    Http { url: String, message: String },
    #[error("deadline passed while fetching")]
    Deadline,
}

pub struct Fetcher {
    client: reqwest::Client,
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
            backoff,
            max_bytes,
        }
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
                let response = self
                    .client
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| http_error(e.to_string()))?;
                if !response.status().is_success() {
                    return Err(http_error(format!("status {}", response.status())));
                }
                if response
                    .content_length()
                    .is_some_and(|len| len > self.max_bytes)
                {
                    return Err(http_error(format!(
                        "artifact larger than {} bytes",
                        self.max_bytes
                    )));
                }
                let bytes = response
                    .bytes()
                    .await
                    .map_err(|e| http_error(e.to_string()))?;
                if bytes.len() as u64 > self.max_bytes {
                    return Err(http_error(format!(
                        "artifact larger than {} bytes",
                        self.max_bytes
                    )));
                }
                Ok(bytes.to_vec())
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let backoff = Backoff::default();
        for _ in 0..100 {
            let first = backoff.delay(1);
            assert!(
                first >= Duration::from_millis(500) && first <= Duration::from_secs(1),
                "{first:?}"
            );
            let third = backoff.delay(3);
            assert!(
                third >= Duration::from_secs(2) && third <= Duration::from_secs(4),
                "{third:?}"
            );
            let late = backoff.delay(30);
            assert!(
                late >= Duration::from_secs(30) && late <= Duration::from_secs(60),
                "{late:?}"
            );
        }
    }
}
