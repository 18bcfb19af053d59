use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;

use super::{sdk_config, unavailable, AwsSettings};
use crate::backend::{ArtifactStore, Error, RecordStore, Result};

/// Artifacts as S3 objects in one bucket.
pub struct S3ArtifactStore {
    client: Client,
    bucket: String,
}

async fn client(settings: &AwsSettings) -> Client {
    let sdk = sdk_config(settings).await;
    // Path-style addressing works with every emulator and with real S3.
    let mut conf = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(true);
    if let Some(url) = &settings.s3_endpoint_url {
        conf = conf.endpoint_url(url);
    }
    Client::from_conf(conf.build())
}

impl S3ArtifactStore {
    pub async fn new(settings: &AwsSettings, bucket: &str) -> Self {
        S3ArtifactStore {
            client: client(settings).await,
            bucket: bucket.to_string(),
        }
    }

    /// Creates the bucket if it does not exist (tests and local setups).
    pub async fn ensure_bucket(&self) -> Result<()> {
        if self.client.head_bucket().bucket(&self.bucket).send().await.is_ok() {
            return Ok(());
        }
        match self.client.create_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_bucket_already_owned_by_you()) => Ok(()),
            Err(e) => Err(unavailable("create bucket", e)),
        }
    }
}

#[async_trait]
impl ArtifactStore for S3ArtifactStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/zip")
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| unavailable("s3 put_object", e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        get_object(&self.client, &self.bucket, key)
            .await?
            .ok_or_else(|| Error::NotFound(format!("artifact {key}")))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        delete_object(&self.client, &self.bucket, key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        list_keys(&self.client, &self.bucket, prefix, usize::MAX).await
    }

    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn ping(&self) -> Result<()> {
        head_bucket(&self.client, &self.bucket).await
    }
}

/// Durable records as S3 objects under a prefix of the artifacts bucket
/// (`records/`): no table to provision, no item size limit, and S3's
/// conditional writes (`If-None-Match: *`) make `create` atomic across
/// processes. Expiry is the bucket's lifecycle rules' (see docs/operations.md).
pub struct S3RecordStore {
    client: Client,
    bucket: String,
    prefix: String,
}

impl S3RecordStore {
    pub async fn new(settings: &AwsSettings, bucket: &str, prefix: &str) -> Self {
        S3RecordStore {
            client: client(settings).await,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait]
impl RecordStore for S3RecordStore {
    async fn create(&self, key: &str, value: Bytes) -> Result<Option<Bytes>> {
        let put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .content_type("application/json")
            .if_none_match("*")
            .body(ByteStream::from(value))
            .send()
            .await;
        match put {
            Ok(_) => Ok(None),
            // 412: the key exists. (409 when a concurrent conditional write is in progress.)
            Err(e) if matches!(e.raw_response().map(|r| r.status().as_u16()), Some(412 | 409)) => {
                match self.get(key).await? {
                    Some(existing) => Ok(Some(existing)),
                    None => Err(Error::Conflict(format!("record {key} is being written"))),
                }
            }
            Err(e) => Err(unavailable("s3 put_object (if-none-match)", e)),
        }
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .content_type("application/json")
            .body(ByteStream::from(value))
            .send()
            .await
            .map_err(|e| unavailable("s3 put_object", e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        get_object(&self.client, &self.bucket, &self.key(key)).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        delete_object(&self.client, &self.bucket, &self.key(key)).await
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<String>> {
        let keys = list_keys(&self.client, &self.bucket, &self.key(prefix), limit).await?;
        Ok(keys
            .into_iter()
            .filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_string))
            .collect())
    }

    async fn ping(&self) -> Result<()> {
        head_bucket(&self.client, &self.bucket).await
    }
}

/// The object's bytes; `None` when there is none.
async fn get_object(client: &Client, bucket: &str, key: &str) -> Result<Option<Bytes>> {
    let out = match client.get_object().bucket(bucket).key(key).send().await {
        Ok(o) => o,
        Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
        Err(e) => return Err(unavailable("s3 get_object", e)),
    };
    let body = out
        .body
        .collect()
        .await
        .map_err(|e| Error::unavailable("s3 object body", e))?;
    Ok(Some(body.into_bytes()))
}

/// S3 deletes are idempotent: a missing key is not an error.
async fn delete_object(client: &Client, bucket: &str, key: &str) -> Result<()> {
    client
        .delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| unavailable("s3 delete_object", e))?;
    Ok(())
}

/// Up to `limit` keys starting with `prefix`, sorted.
async fn list_keys(client: &Client, bucket: &str, prefix: &str, limit: usize) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut token = None;
    while keys.len() < limit {
        let out = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .max_keys((limit - keys.len()).min(1000) as i32)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| unavailable("s3 list_objects_v2", e))?;
        keys.extend(out.contents().iter().filter_map(|o| o.key().map(str::to_string)));
        match out.next_continuation_token() {
            Some(t) if out.is_truncated().unwrap_or(false) => token = Some(t.to_string()),
            _ => break,
        }
    }
    keys.sort();
    keys.truncate(limit);
    Ok(keys)
}

async fn head_bucket(client: &Client, bucket: &str) -> Result<()> {
    client
        .head_bucket()
        .bucket(bucket)
        .send()
        .await
        .map_err(|e| unavailable("s3 head_bucket", e))?;
    Ok(())
}
