//! Building the Kinesis client: the standard AWS credential and region chain, our endpoint
//! override, the SDK's own retries off (the sink retries, per entry), and bounded timeouts.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_kinesis::Client;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

/// A connection that does not open within this is a transient failure, retried by the sink.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A PutRecords attempt of up to 5 MiB that has not answered within this is retried.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no AWS region: set --region or AWS_REGION")]
    NoRegion,
}

/// Load the AWS configuration (env, profile, web identity, container credentials, IMDS) and build
/// a Kinesis client. `endpoint_url` wins over AWS_ENDPOINT_URL_KINESIS / AWS_ENDPOINT_URL, which
/// aws-config reads itself.
pub async fn build(
    region: Option<&str>,
    endpoint_url: Option<&str>,
) -> Result<Client, ClientError> {
    let shared = load_shared(region, endpoint_url).await?;
    let config = aws_sdk_kinesis::config::Builder::from(&shared)
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts())
        .build();
    Ok(Client::from_conf(config))
}

/// The AWS configuration every client starts from: the standard chain, with `region` and
/// `endpoint_url` overriding it when given. A region is required.
pub async fn load_shared(
    region: Option<&str>,
    endpoint_url: Option<&str>,
) -> Result<aws_config::SdkConfig, ClientError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_string()));
    }
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let shared = loader.load().await;
    if shared.region().is_none() {
        return Err(ClientError::NoRegion);
    }
    Ok(shared)
}

/// Bounded connect and attempt times: a hung call becomes a transient failure the sink retries.
pub fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .build()
}
