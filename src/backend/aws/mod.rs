//! AWS implementations: S3 artifacts, DynamoDB registry, SQS queue. Endpoints
//! can be overridden (`AWS_ENDPOINT_URL`) for local emulators such as moto.

mod dynamodb;
mod logs;
mod s3;
mod sqs;

pub use dynamodb::DynamoRegistry;
pub use logs::DynamoLogStore;
pub use s3::{S3ArtifactStore, S3RecordStore};
pub use sqs::SqsQueue;

use aws_config::{BehaviorVersion, Region, SdkConfig};

use super::{BoxError, Error};

/// Where the AWS services are.
#[derive(Debug, Clone)]
pub struct AwsSettings {
    pub region: String,
    /// Overrides every service endpoint (local emulators).
    pub endpoint_url: Option<String>,
    /// Per-service overrides, winning over `endpoint_url` (AWS's
    /// `AWS_ENDPOINT_URL_S3`, `_DYNAMODB`, `_SQS` convention).
    pub s3_endpoint_url: Option<String>,
    pub dynamodb_endpoint_url: Option<String>,
    pub sqs_endpoint_url: Option<String>,
    /// Fixed credentials (tests against emulators); otherwise the default chain.
    pub static_credentials: Option<(String, String)>,
}

pub async fn sdk_config(settings: &AwsSettings) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(Region::new(settings.region.clone()));
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some((id, secret)) = &settings.static_credentials {
        loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(id, secret, None, None, "static"));
    }
    loader.load().await
}

/// A DynamoDB client honouring the DynamoDB-specific endpoint override.
async fn dynamodb_client(settings: &AwsSettings) -> aws_sdk_dynamodb::Client {
    let sdk = sdk_config(settings).await;
    let mut conf = aws_sdk_dynamodb::config::Builder::from(&sdk);
    if let Some(url) = &settings.dynamodb_endpoint_url {
        conf = conf.endpoint_url(url);
    }
    aws_sdk_dynamodb::Client::from_conf(conf.build())
}

/// Succeeds when the DynamoDB table exists and answers.
async fn describe_table(client: &aws_sdk_dynamodb::Client, table: &str) -> Result<(), Error> {
    client
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| unavailable("dynamodb describe_table", e))?;
    Ok(())
}

/// Any SDK failure the caller does not match itself means "unavailable".
/// (`SdkError` is one type shared by every AWS SDK crate.)
fn unavailable<E, R>(what: &str, e: aws_sdk_s3::error::SdkError<E, R>) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    Error::Unavailable {
        message: format!("{what}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)),
        source: Some(Box::new(e) as BoxError),
    }
}
