//! Building the Firehose client: the standard AWS credential and region chain, our endpoint
//! override, the SDK's own retries off (the sink retries, per entry), and bounded timeouts.

use aws_sdk_firehose::Client;
use aws_smithy_types::retry::RetryConfig;

use crate::sinks::kinesis::client::{ClientError, load_shared, timeouts};

/// Load the AWS configuration and build a Firehose client. `endpoint_url` wins over
/// AWS_ENDPOINT_URL_FIREHOSE / AWS_ENDPOINT_URL, which aws-config reads itself.
pub async fn build(
    region: Option<&str>,
    endpoint_url: Option<&str>,
) -> Result<Client, ClientError> {
    let shared = load_shared(region, endpoint_url).await?;
    let config = aws_sdk_firehose::config::Builder::from(&shared)
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts())
        .build();
    Ok(Client::from_conf(config))
}
