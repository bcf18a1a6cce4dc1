//! The one PutRecords call, behind a trait so the retry logic is tested without a network.

use std::future::Future;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;

use super::error::{ErrorClass, SendError};
use crate::record::Record;
use crate::shard_map::ShardRange;

/// The result of one entry of a PutRecords call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryResult {
    Delivered,
    /// Delivered, but to another shard than the record expected: the shard map is out of date.
    DeliveredElsewhere {
        shard_id: String,
    },
    Failed {
        code: String,
        message: String,
    },
}

pub trait Transport: Send + Sync {
    /// Send `records` in one call; on success, one result per record, in order.
    fn put_records(
        &self,
        records: &[Record],
    ) -> impl Future<Output = Result<Vec<EntryResult>, SendError>> + Send;

    /// The stream's open shards and their hash key ranges.
    fn list_shards(&self) -> impl Future<Output = Result<Vec<ShardRange>, SendError>> + Send;
}

/// PutRecords through the AWS SDK.
#[derive(Debug, Clone)]
pub struct SdkTransport {
    client: Client,
    stream: String,
}

impl SdkTransport {
    pub fn new(client: Client, stream: String) -> Self {
        SdkTransport { client, stream }
    }

    fn is_arn(&self) -> bool {
        self.stream.starts_with("arn:")
    }
}

impl Transport for SdkTransport {
    async fn list_shards(&self) -> Result<Vec<ShardRange>, SendError> {
        self.open_shards().await
    }

    async fn put_records(&self, records: &[Record]) -> Result<Vec<EntryResult>, SendError> {
        let mut entries = Vec::with_capacity(records.len());
        for record in records {
            let entry = PutRecordsRequestEntry::builder()
                .data(Blob::new(record.data.clone()))
                .partition_key(record.partition_key.clone())
                .build()
                .map_err(|error| SendError {
                    class: ErrorClass::Permanent,
                    code: "InvalidArgumentException".into(),
                    message: error.to_string(),
                })?;
            entries.push(entry);
        }
        let request = self.client.put_records().set_records(Some(entries));
        let request = if self.is_arn() {
            request.stream_arn(&self.stream)
        } else {
            request.stream_name(&self.stream)
        };
        let output = request
            .send()
            .await
            .map_err(|error| SendError::from_sdk(&error))?;
        let results = output.records();
        if results.len() != records.len() {
            return Err(SendError {
                class: ErrorClass::Transient,
                code: "MalformedResponse".into(),
                message: format!("{} results for {} records", results.len(), records.len()),
            });
        }
        Ok(results
            .iter()
            .zip(records)
            .map(|(result, record)| match result.error_code() {
                None => match (&record.shard, result.shard_id()) {
                    (Some(expected), Some(actual)) if **expected != *actual => {
                        EntryResult::DeliveredElsewhere {
                            shard_id: actual.to_string(),
                        }
                    }
                    _ => EntryResult::Delivered,
                },
                Some(code) => EntryResult::Failed {
                    code: code.to_string(),
                    message: result.error_message().unwrap_or_default().to_string(),
                },
            })
            .collect())
    }
}

impl SdkTransport {
    async fn list_shards_page(
        &self,
        next_token: Option<String>,
    ) -> Result<aws_sdk_kinesis::operation::list_shards::ListShardsOutput, SendError> {
        let request = self.client.list_shards();
        // A paging call names only the token; the first one names the stream.
        let request = match next_token {
            Some(token) => request.next_token(token),
            None if self.is_arn() => request.stream_arn(&self.stream),
            None => request.stream_name(&self.stream),
        };
        request
            .send()
            .await
            .map_err(|error| SendError::from_sdk(&error))
    }

    /// Every open shard (closed shards, left by resharding, have an ending sequence number).
    pub async fn open_shards(&self) -> Result<Vec<ShardRange>, SendError> {
        let mut shards = Vec::new();
        let mut next_token = None;
        loop {
            let page = self.list_shards_page(next_token.take()).await?;
            for shard in page.shards() {
                let closed = shard
                    .sequence_number_range()
                    .and_then(|r| r.ending_sequence_number())
                    .is_some();
                if closed {
                    continue;
                }
                let Some(range) = shard.hash_key_range() else {
                    continue;
                };
                let parsed = ShardRange::from_decimal(
                    shard.shard_id(),
                    range.starting_hash_key(),
                    range.ending_hash_key(),
                )
                .map_err(|error| SendError {
                    class: ErrorClass::Transient,
                    code: "MalformedResponse".into(),
                    message: error.to_string(),
                })?;
                shards.push(parsed);
            }
            match page.next_token() {
                Some(token) => next_token = Some(token.to_string()),
                None => return Ok(shards),
            }
        }
    }
}

/// Check at start-up that the stream exists, so a typo is a clear error rather than a dead-letter
/// file filling up. Only a definite "not found" is an error: a missing permission to describe, or
/// an unreachable endpoint, is logged and the shipper starts (and retries sending).
pub async fn check_stream(client: &Client, stream: &str) -> Result<(), SendError> {
    let request = client.describe_stream_summary();
    let request = if stream.starts_with("arn:") {
        request.stream_arn(stream)
    } else {
        request.stream_name(stream)
    };
    match request.send().await {
        Ok(_) => Ok(()),
        Err(error) => {
            let error = SendError::from_sdk(&error);
            if error.code == "ResourceNotFoundException" {
                Err(error)
            } else {
                tracing::warn!(stream, error = %error, "cannot describe the stream; starting anyway");
                Ok(())
            }
        }
    }
}
