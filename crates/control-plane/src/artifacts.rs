//! The artifact store: a local directory (default) or an S3-compatible bucket, behind
//! `object_store`. Uploads land at `uploads/{function_id}/{version}`; accepted artifacts
//! live content-addressed at `artifacts/sha256/{hash}`, so identical uploads share one object.
//!
//! Presigned uploads: with S3 the URL is a real presigned `PUT` to the bucket; with the
//! local store it is this control plane's upload endpoint with an HMAC-SHA256 signature
//! over function, version and expiry.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac as _};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer as _;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use sha2::Sha256;

use crate::clock::now_ms;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("object not found")]
    NotFound,
    #[error("artifact store error: {0}")]
    Store(String),
    /// An object larger than the reader's limit (it was not read whole).
    #[error("artifact is {size} bytes, over the limit of {limit}")]
    TooLarge { size: u64, limit: usize },
    /// The client's body broke off before its end (nothing was stored).
    #[error("the upload broke off: {0}")]
    Incomplete(String),
}

impl From<object_store::Error> for ArtifactError {
    fn from(error: object_store::Error) -> Self {
        match error {
            object_store::Error::NotFound { .. } => Self::NotFound,
            other => Self::Store(other.to_string()),
        }
    }
}

enum Signer {
    /// Key of the HMAC over local upload URLs.
    Local([u8; 32]),
    S3(Arc<AmazonS3>),
}

pub struct Artifacts {
    store: Arc<dyn ObjectStore>,
    signer: Signer,
    /// Base URL under which this control plane is reached (`http://host:port`).
    public_url: String,
}

pub fn upload_path(function_id: &str, version: u64) -> ObjectPath {
    ObjectPath::from(format!("uploads/{function_id}/{version}"))
}

pub fn artifact_path(sha256: &str) -> ObjectPath {
    ObjectPath::from(format!("artifacts/sha256/{sha256}"))
}

/// S3 settings. Credentials and region left `None` come from the usual AWS environment
/// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`).
#[derive(Clone, Debug, Default)]
pub struct S3Settings {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub region: Option<String>,
}

/// A client of the bucket `settings` names (path-style addressing, HTTP allowed for local
/// servers); the artifact store and the audit checkpoints share it.
pub fn s3_store(settings: &S3Settings) -> Result<AmazonS3, ArtifactError> {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(&settings.bucket);
    if let Some(endpoint) = &settings.endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false);
    }
    if let (Some(key), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
        builder = builder
            .with_access_key_id(key)
            .with_secret_access_key(secret);
    }
    if let Some(region) = &settings.region {
        builder = builder.with_region(region);
    } else if std::env::var_os("AWS_REGION").is_none()
        && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        builder = builder.with_region("us-east-1");
    }
    Ok(builder.build()?)
}

impl Artifacts {
    /// A store in a local directory; `signing_key` signs upload URLs.
    pub fn local(
        dir: &std::path::Path,
        signing_key: [u8; 32],
        public_url: String,
    ) -> Result<Self, ArtifactError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ArtifactError::Store(format!("cannot create {}: {e}", dir.display())))?;
        let store = LocalFileSystem::new_with_prefix(dir)?;
        Ok(Self {
            store: Arc::new(store),
            signer: Signer::Local(signing_key),
            public_url,
        })
    }

    /// A store in an S3-compatible bucket (path-style addressing, HTTP allowed for local
    /// servers). Fails when the bucket cannot be reached.
    pub async fn s3(settings: &S3Settings, public_url: String) -> Result<Self, ArtifactError> {
        let s3 = Arc::new(s3_store(settings)?);
        let artifacts = Self {
            store: s3.clone(),
            signer: Signer::S3(s3),
            public_url,
        };
        // Reachability and credentials: a HEAD on a key that need not exist.
        match artifacts
            .store
            .head(&ObjectPath::from("edgefn-probe"))
            .await
        {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(artifacts),
            Err(error) => Err(ArtifactError::Store(format!(
                "bucket {:?} is not reachable: {error}",
                settings.bucket
            ))),
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self.signer, Signer::Local(_))
    }

    fn mac(key: &[u8; 32], function_id: &str, version: u64, expires: i64) -> Hmac<Sha256> {
        // A 32-byte key is always a valid HMAC key; `new_from_slice` cannot fail here.
        let mut mac = <Hmac<Sha256>>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(format!("upload\n{function_id}\n{version}\n{expires}").as_bytes());
        mac
    }

    /// A URL the client `PUT`s the artifact to, valid for `ttl`, and its expiry (Unix ms).
    pub async fn upload_url(
        &self,
        function_id: &str,
        version: u64,
        ttl: Duration,
    ) -> Result<(String, i64), ArtifactError> {
        let expires = now_ms() + ttl.as_millis() as i64;
        let url = match &self.signer {
            Signer::Local(key) => {
                let signature = hex::encode(
                    Self::mac(key, function_id, version, expires)
                        .finalize()
                        .into_bytes(),
                );
                format!(
                    "{}/api/v1/uploads/{function_id}/{version}?expires={expires}&signature={signature}",
                    self.public_url.trim_end_matches('/')
                )
            }
            Signer::S3(s3) => s3
                .signed_url(http::Method::PUT, &upload_path(function_id, version), ttl)
                .await?
                .to_string(),
        };
        Ok((url, expires))
    }

    /// Whether a local upload URL's signature is genuine and unexpired.
    pub fn verify_upload(
        &self,
        function_id: &str,
        version: u64,
        expires: i64,
        signature: &str,
    ) -> bool {
        let Signer::Local(key) = &self.signer else {
            return false;
        };
        let Ok(signature) = hex::decode(signature) else {
            return false;
        };
        expires > now_ms()
            && Self::mac(key, function_id, version, expires)
                .verify_slice(&signature)
                .is_ok()
    }

    /// Where nodes download an accepted artifact.
    pub fn artifact_url(&self, sha256: &str) -> String {
        format!(
            "{}/api/v1/artifacts/{sha256}",
            self.public_url.trim_end_matches('/')
        )
    }

    /// Stores an upload as it arrives, at most `limit` bytes, and answers its size. The
    /// store stages it (the local store in a temporary file beside the target, S3 as a
    /// multipart upload) and it appears only once whole; over the limit, or when the body
    /// breaks off, the staged part is dropped and nothing is stored. Memory holds one
    /// part (5 MiB) at most, whatever the client sends.
    pub async fn put_upload_stream<S, E>(
        &self,
        function_id: &str,
        version: u64,
        mut body: S,
        limit: usize,
    ) -> Result<u64, ArtifactError>
    where
        S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures_util::StreamExt as _;
        let staged = self
            .store
            .put_multipart(&upload_path(function_id, version))
            .await?;
        let mut upload = object_store::WriteMultipart::new(staged);
        let mut size = 0u64;
        let failure = loop {
            match body.next().await {
                None => break None,
                Some(Err(error)) => break Some(ArtifactError::Incomplete(error.to_string())),
                Some(Ok(chunk)) => {
                    size += chunk.len() as u64;
                    if size > limit as u64 {
                        break Some(ArtifactError::TooLarge { size, limit });
                    }
                    // One part in flight at a time: the body is read no faster than the
                    // store takes it.
                    if let Err(error) = upload.wait_for_capacity(1).await {
                        break Some(error.into());
                    }
                    upload.put(chunk);
                }
            }
        };
        match failure {
            None => {
                upload.finish().await?;
                Ok(size)
            }
            Some(error) => {
                if let Err(abort) = upload.abort().await {
                    tracing::warn!(%abort, "could not drop a refused upload's staged part");
                }
                Err(error)
            }
        }
    }

    pub async fn read(&self, path: &ObjectPath) -> Result<Bytes, ArtifactError> {
        Ok(self.store.get(path).await?.bytes().await?)
    }

    /// Reads an object of at most `limit` bytes: its size is checked before reading (an
    /// S3 presigned PUT cannot be limited in size, so an upload may be anything), and the
    /// stream is cut as soon as it passes the limit.
    pub async fn read_limited(
        &self,
        path: &ObjectPath,
        limit: usize,
    ) -> Result<Bytes, ArtifactError> {
        use futures_util::StreamExt as _;
        let size = self.store.head(path).await?.size;
        if size > limit as u64 {
            return Err(ArtifactError::TooLarge { size, limit });
        }
        let mut stream = self.store.get(path).await?.into_stream();
        let mut bytes = Vec::with_capacity(size as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if bytes.len() + chunk.len() > limit {
                return Err(ArtifactError::TooLarge {
                    size: (bytes.len() + chunk.len()) as u64,
                    limit,
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(bytes))
    }

    pub async fn delete(&self, path: &ObjectPath) -> Result<(), ArtifactError> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Writes (or replaces) an object.
    pub async fn put(&self, path: &ObjectPath, bytes: Bytes) -> Result<(), ArtifactError> {
        self.store.put(path, PutPayload::from(bytes)).await?;
        Ok(())
    }

    /// Stores an accepted artifact under its hash, unless an identical one is there.
    pub async fn store_artifact(&self, sha256: &str, bytes: Bytes) -> Result<(), ArtifactError> {
        let path = artifact_path(sha256);
        match self.store.head(&path).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => {
                self.store.put(&path, PutPayload::from(bytes)).await?;
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }
}
