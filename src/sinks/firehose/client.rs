//! Building the Firehose client: the standard AWS credential and region chain, our endpoint
//! override, the SDK's own retries off (the sink retries, per entry), and bounded timeouts.

use aws_config::{BehaviorVersion, Region};
use aws_sdk_firehose::Client;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

use crate::sinks::kinesis::client::{ATTEMPT_TIMEOUT, CONNECT_TIMEOUT, ClientError};

/// Load the AWS configuration and build a Firehose client. `endpoint_url` wins over
/// AWS_ENDPOINT_URL_FIREHOSE / AWS_ENDPOINT_URL, which aws-config reads itself.
pub async fn build(
    region: Option<&str>,
    endpoint_url: Option<&str>,
) -> Result<Client, ClientError> {
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
    let config = aws_sdk_firehose::config::Builder::from(&shared)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        )
        .build();
    Ok(Client::from_conf(config))
}
