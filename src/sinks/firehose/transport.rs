//! The PutRecordBatch call, behind a trait so the retry logic is tested without a network.

use std::future::Future;

use aws_sdk_firehose::Client;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;

use crate::sinks::error::{ErrorClass, SendError};

/// The result of one entry of a PutRecordBatch call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryResult {
    Delivered,
    Failed { code: String, message: String },
}

pub trait Transport: Send + Sync {
    /// Send `records` in one call; on success, one result per record, in order.
    fn put_record_batch(
        &self,
        records: &[bytes::Bytes],
    ) -> impl Future<Output = Result<Vec<EntryResult>, SendError>> + Send;
}

/// PutRecordBatch through the AWS SDK.
#[derive(Debug, Clone)]
pub struct SdkTransport {
    client: Client,
    delivery_stream: String,
}

impl SdkTransport {
    pub fn new(client: Client, delivery_stream: String) -> Self {
        SdkTransport {
            client,
            delivery_stream,
        }
    }

    /// Fails when Firehose says the delivery stream does not exist or cannot be used (a clear
    /// start-up error). An answer the SDK cannot read (LocalStack leaves out fields the SDK
    /// requires, such as the S3 destination's CompressionFormat) still shows that it exists.
    pub async fn check_delivery_stream(&self) -> Result<(), SendError> {
        match self
            .client
            .describe_delivery_stream()
            .delivery_stream_name(&self.delivery_stream)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(aws_sdk_firehose::error::SdkError::ResponseError(error)) => {
                tracing::debug!(error = ?error, "describedeliverystream answered in a shape the sdk cannot read");
                Ok(())
            }
            Err(error) => Err(SendError::from_sdk(&error)),
        }
    }
}

impl Transport for SdkTransport {
    async fn put_record_batch(
        &self,
        records: &[bytes::Bytes],
    ) -> Result<Vec<EntryResult>, SendError> {
        let mut entries = Vec::with_capacity(records.len());
        for data in records {
            let record = Record::builder()
                .data(Blob::new(data.to_vec()))
                .build()
                .map_err(|error| SendError {
                    class: ErrorClass::Permanent,
                    code: "InvalidArgumentException".into(),
                    message: error.to_string(),
                })?;
            entries.push(record);
        }
        let output = self
            .client
            .put_record_batch()
            .delivery_stream_name(&self.delivery_stream)
            .set_records(Some(entries))
            .send()
            .await
            .map_err(|error| SendError::from_sdk(&error))?;
        let responses = output.request_responses();
        if responses.len() != records.len() {
            // Never seen from Firehose; retrying the whole call is the safe reading.
            return Err(SendError {
                class: ErrorClass::Transient,
                code: "ResponseMismatch".into(),
                message: format!("{} results for {} records", responses.len(), records.len()),
            });
        }
        // Every entry is read; FailedPutCount is not trusted.
        Ok(responses
            .iter()
            .map(|entry| match entry.error_code() {
                Some(code) => EntryResult::Failed {
                    code: code.to_string(),
                    message: entry.error_message().unwrap_or_default().to_string(),
                },
                None => EntryResult::Delivered,
            })
            .collect())
    }
}
