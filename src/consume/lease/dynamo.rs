//! The lease table in DynamoDB: one item per shard, keyed by `leaseKey`, in the KCL's schema, so
//! an operator's KCL tooling can read it. Every write is an UpdateItem (or PutItem, DeleteItem)
//! with a condition on `leaseCounter`; throttling, 5xx and timeouts are retried with backoff
//! within a time budget, so a renewal never outlasts the hold limit. A write whose condition fails
//! after a retry is checked with a consistent read: the first attempt may have landed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ScalarAttributeType, TableStatus,
};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use tokio::time::Instant;
use tracing::{debug, info};

use super::{Lease, LeaseCheckpoint, LeaseStore, StoreError};
use crate::sinks::error::{ErrorClass, SendError};
use crate::sinks::kinesis::client::{ClientError, load_shared};
use crate::sinks::retry::RetryPolicy;
use crate::telemetry::consume::ConsumeMetrics;

const KEY: &str = "leaseKey";
const OWNER: &str = "leaseOwner";
const COUNTER: &str = "leaseCounter";
const CHECKPOINT: &str = "checkpoint";
const SUB_SEQUENCE: &str = "checkpointSubSequenceNumber";
const OWNER_SWITCHES: &str = "ownerSwitchesSinceCheckpoint";
const PARENTS: &str = "parentShardId";
const REQUESTED_BY: &str = "leaseRequestedBy";

/// Lease calls are small: a call that has not answered within this is retried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long start-up retries an unavailable table.
const STARTUP_BUDGET: Duration = Duration::from_secs(60);
/// How long a new table may take to become ACTIVE.
const CREATE_TIMEOUT: Duration = Duration::from_secs(120);

/// A DynamoDB client for the lease table: the standard AWS chain; `endpoint_url` wins over
/// AWS_ENDPOINT_URL_DYNAMODB and AWS_ENDPOINT_URL, which aws-config reads itself. The SDK's own
/// retries are off: [`DynamoStore`] retries.
pub async fn client(
    region: Option<&str>,
    endpoint_url: Option<&str>,
) -> Result<Client, ClientError> {
    let shared = load_shared(region, endpoint_url).await?;
    let config = aws_sdk_dynamodb::config::Builder::from(&shared)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(ATTEMPT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        )
        .build();
    Ok(Client::from_conf(config))
}

#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    retry: RetryPolicy,
    /// How long one operation may retry before it fails.
    budget: Duration,
    metrics: Arc<ConsumeMetrics>,
}

impl DynamoStore {
    pub fn new(
        client: Client,
        table: &str,
        budget: Duration,
        metrics: Arc<ConsumeMetrics>,
    ) -> Self {
        DynamoStore {
            client,
            table: table.to_string(),
            retry: RetryPolicy {
                min_delay: Duration::from_millis(50),
                max_delay: Duration::from_secs(1),
            },
            budget,
            metrics,
        }
    }

    /// The same table, with another time budget per operation.
    pub fn with_budget(&self, budget: Duration) -> DynamoStore {
        DynamoStore {
            budget,
            ..self.clone()
        }
    }

    /// Check that the table exists; create it (on-demand billing) when `create` and it does not.
    /// Unavailability is retried for up to a minute (the endpoint may be starting too).
    pub async fn ensure_table(&self, create: bool) -> Result<(), StoreError> {
        self.with_budget(STARTUP_BUDGET)
            .ensure_table_now(create)
            .await
    }

    async fn ensure_table_now(&self, create: bool) -> Result<(), StoreError> {
        match self.table_status().await? {
            Some(_) => return self.wait_active().await,
            None if !create => return Err(StoreError::NoTable(self.table.clone())),
            None => {}
        }
        info!(table = %self.table, "creating the lease table (on-demand billing)");
        let key = KeySchemaElement::builder()
            .attribute_name(KEY)
            .key_type(KeyType::Hash)
            .build()
            .map_err(|e| StoreError::Refused(e.to_string()))?;
        let attribute = AttributeDefinition::builder()
            .attribute_name(KEY)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|e| StoreError::Refused(e.to_string()))?;
        ConsumeMetrics::add(&self.metrics.lease_table_calls_total, 1);
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .key_schema(key)
            .attribute_definitions(attribute)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        if let Err(error) = created {
            let error = classify(&self.table, &error);
            // Another replica created it at the same moment.
            if !error.to_string().contains("ResourceInUseException") {
                return Err(error);
            }
        }
        self.wait_active().await
    }

    async fn table_status(&self) -> Result<Option<TableStatus>, StoreError> {
        let described = self
            .retrying(|| async {
                self.client
                    .describe_table()
                    .table_name(&self.table)
                    .send()
                    .await
                    .map_err(|e| classify(&self.table, &e))
            })
            .await;
        match described {
            Ok(output) => Ok(output
                .table()
                .and_then(|t| t.table_status())
                .cloned()
                .or(Some(TableStatus::Active))),
            Err(StoreError::NoTable(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn wait_active(&self) -> Result<(), StoreError> {
        let deadline = Instant::now() + CREATE_TIMEOUT;
        loop {
            match self.table_status().await? {
                Some(TableStatus::Active) => return Ok(()),
                status if Instant::now() >= deadline => {
                    return Err(StoreError::Refused(format!(
                        "lease table {} is not ACTIVE after {CREATE_TIMEOUT:?} ({status:?})",
                        self.table
                    )));
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// Run `call` until it succeeds, fails for good, or the budget is spent.
    async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let deadline = Instant::now() + self.budget;
        let mut backoff = self.retry.backoff();
        loop {
            ConsumeMetrics::add(&self.metrics.lease_table_calls_total, 1);
            match call().await {
                Err(error) if error.is_retriable() => {
                    let delay = backoff.next_delay();
                    if Instant::now() + delay >= deadline {
                        return Err(error);
                    }
                    debug!(%error, "lease table call failed; retrying");
                    ConsumeMetrics::add(&self.metrics.lease_table_errors_total, 1);
                    tokio::time::sleep(delay).await;
                }
                result => return result,
            }
        }
    }

    /// An UpdateItem that writes `counter + 1` (as `:next`) on `key` under `condition`, returning
    /// the item as written. A refused condition after a retried attempt is checked against the
    /// item: when it shows `expect_owner` at `counter + 1`, the first attempt landed.
    async fn update(
        &self,
        key: &str,
        counter: u64,
        expect_owner: Option<&str>,
        build: impl Fn(UpdateItemFluentBuilder) -> UpdateItemFluentBuilder,
    ) -> Result<Lease, StoreError> {
        let mut attempts = 0;
        let result = self
            .retrying(|| {
                attempts += 1;
                let request = build(
                    self.client
                        .update_item()
                        .table_name(&self.table)
                        .key(KEY, s(key))
                        .expression_attribute_values(":counter", n(counter))
                        .expression_attribute_values(":next", n(counter + 1))
                        .return_values(ReturnValue::AllNew),
                );
                async move {
                    let output = request.send().await.map_err(|e| classify(key, &e))?;
                    output.attributes().and_then(parse).ok_or_else(|| {
                        StoreError::Refused(format!("lease {key}: no item returned"))
                    })
                }
            })
            .await;
        match result {
            Err(StoreError::Conflict(_)) if attempts > 1 => {
                let current = self.get(key).await?;
                match current {
                    Some(lease)
                        if lease.counter == counter + 1
                            && lease.owner.as_deref() == expect_owner =>
                    {
                        Ok(lease)
                    }
                    _ => Err(StoreError::Conflict(key.to_string())),
                }
            }
            result => result,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Lease>, StoreError> {
        self.retrying(|| async {
            let output = self
                .client
                .get_item()
                .table_name(&self.table)
                .key(KEY, s(key))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| classify(key, &e))?;
            Ok(output.item().and_then(parse))
        })
        .await
    }
}

fn s(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_string())
}

fn n(number: u64) -> AttributeValue {
    AttributeValue::N(number.to_string())
}

fn classify<E, R>(subject: &str, error: &SdkError<E, R>) -> StoreError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let error = SendError::from_sdk(error);
    match error.code.as_str() {
        "ConditionalCheckFailedException" => StoreError::Conflict(subject.to_string()),
        "ResourceNotFoundException" => StoreError::NoTable(subject.to_string()),
        _ => match error.class {
            ErrorClass::Throttled | ErrorClass::Transient => {
                StoreError::Unavailable(error.to_string())
            }
            ErrorClass::Credentials | ErrorClass::Permanent => {
                StoreError::Refused(error.to_string())
            }
        },
    }
}

/// An item as a lease; `None` when it has no key.
fn parse(item: &HashMap<String, AttributeValue>) -> Option<Lease> {
    let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
    let number = |name: &str| {
        item.get(name)
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_default()
    };
    let checkpoint = text(CHECKPOINT).unwrap_or_default();
    Some(Lease {
        key: text(KEY)?,
        owner: text(OWNER),
        counter: number(COUNTER),
        checkpoint: LeaseCheckpoint::from_attributes(&checkpoint, number(SUB_SEQUENCE)),
        owner_switches: number(OWNER_SWITCHES),
        parents: item
            .get(PARENTS)
            .and_then(|v| v.as_ss().ok())
            .cloned()
            .unwrap_or_default(),
        requested_by: text(REQUESTED_BY),
    })
}

fn checkpoint_values(
    request: UpdateItemFluentBuilder,
    checkpoint: &LeaseCheckpoint,
) -> UpdateItemFluentBuilder {
    let (text, sub) = checkpoint.to_attributes();
    request
        .expression_attribute_values(":checkpoint", s(text))
        .expression_attribute_values(":sub", n(sub))
}

impl LeaseStore for DynamoStore {
    async fn list(&self) -> Result<Vec<Lease>, StoreError> {
        let mut leases = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let output = self
                .retrying(|| async {
                    self.client
                        .scan()
                        .table_name(&self.table)
                        .consistent_read(true)
                        .set_exclusive_start_key(start.clone())
                        .send()
                        .await
                        .map_err(|e| classify(&self.table, &e))
                })
                .await?;
            leases.extend(output.items().iter().filter_map(parse));
            match output.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(leases),
            }
        }
    }

    async fn create(&self, lease: &Lease) -> Result<(), StoreError> {
        let (checkpoint, sub) = lease.checkpoint.to_attributes();
        let mut item = HashMap::from([
            (KEY.to_string(), s(&lease.key)),
            (COUNTER.to_string(), n(lease.counter)),
            (CHECKPOINT.to_string(), s(checkpoint)),
            (SUB_SEQUENCE.to_string(), n(sub)),
            (OWNER_SWITCHES.to_string(), n(lease.owner_switches)),
        ]);
        if let Some(owner) = &lease.owner {
            item.insert(OWNER.to_string(), s(owner));
        }
        if !lease.parents.is_empty() {
            item.insert(
                PARENTS.to_string(),
                AttributeValue::Ss(lease.parents.clone()),
            );
        }
        self.retrying(|| async {
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item.clone()))
                .condition_expression("attribute_not_exists(leaseKey)")
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify(&lease.key, &e))
        })
        .await
    }

    async fn take(&self, key: &str, counter: u64, owner: &str) -> Result<Lease, StoreError> {
        self.update(key, counter, Some(owner), |request| {
            request
                .update_expression(
                    "SET leaseOwner = :owner, leaseCounter = :next, \
                     ownerSwitchesSinceCheckpoint = if_not_exists(ownerSwitchesSinceCheckpoint, :zero) + :one \
                     REMOVE leaseRequestedBy",
                )
                .condition_expression("leaseCounter = :counter")
                .expression_attribute_values(":owner", s(owner))
                .expression_attribute_values(":zero", n(0))
                .expression_attribute_values(":one", n(1))
        })
        .await
    }

    async fn renew(
        &self,
        key: &str,
        owner: &str,
        counter: u64,
        checkpoint: Option<&LeaseCheckpoint>,
    ) -> Result<Lease, StoreError> {
        self.update(key, counter, Some(owner), |request| {
            let request = request
                .condition_expression("leaseCounter = :counter AND leaseOwner = :owner")
                .expression_attribute_values(":owner", s(owner));
            match checkpoint {
                Some(checkpoint) => checkpoint_values(request, checkpoint)
                    .update_expression(
                        "SET leaseCounter = :next, checkpoint = :checkpoint, \
                         checkpointSubSequenceNumber = :sub, ownerSwitchesSinceCheckpoint = :zero",
                    )
                    .expression_attribute_values(":zero", n(0)),
                None => request.update_expression("SET leaseCounter = :next"),
            }
        })
        .await
    }

    async fn request(
        &self,
        key: &str,
        counter: u64,
        holder: &str,
        requester: &str,
    ) -> Result<(), StoreError> {
        self.retrying(|| async {
            self.client
                .update_item()
                .table_name(&self.table)
                .key(KEY, s(key))
                .update_expression("SET leaseRequestedBy = :requester")
                .condition_expression("leaseCounter = :counter AND leaseOwner = :holder")
                .expression_attribute_values(":counter", n(counter))
                .expression_attribute_values(":holder", s(holder))
                .expression_attribute_values(":requester", s(requester))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify(key, &e))
        })
        .await
    }

    async fn release(
        &self,
        key: &str,
        owner: &str,
        counter: u64,
        checkpoint: &LeaseCheckpoint,
        to: Option<&str>,
    ) -> Result<Lease, StoreError> {
        self.update(key, counter, to, |request| {
            let request = checkpoint_values(request, checkpoint)
                .condition_expression("leaseCounter = :counter AND leaseOwner = :owner")
                .expression_attribute_values(":owner", s(owner));
            match to {
                Some(to) => request
                    .update_expression(
                        "SET leaseOwner = :to, leaseCounter = :next, checkpoint = :checkpoint, \
                         checkpointSubSequenceNumber = :sub, ownerSwitchesSinceCheckpoint = :one \
                         REMOVE leaseRequestedBy",
                    )
                    .expression_attribute_values(":to", s(to))
                    .expression_attribute_values(":one", n(1)),
                None => request
                    .update_expression(
                        "SET leaseCounter = :next, checkpoint = :checkpoint, \
                         checkpointSubSequenceNumber = :sub, ownerSwitchesSinceCheckpoint = :zero \
                         REMOVE leaseOwner, leaseRequestedBy",
                    )
                    .expression_attribute_values(":zero", n(0)),
            }
        })
        .await
    }

    async fn delete(&self, key: &str, counter: u64) -> Result<(), StoreError> {
        self.retrying(|| async {
            self.client
                .delete_item()
                .table_name(&self.table)
                .key(KEY, s(key))
                .condition_expression("leaseCounter = :counter")
                .expression_attribute_values(":counter", n(counter))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify(key, &e))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_read_back_as_leases() {
        let item = HashMap::from([
            (KEY.to_string(), s("shardId-000000000003")),
            (OWNER.to_string(), s("pod-a")),
            (COUNTER.to_string(), n(42)),
            (
                CHECKPOINT.to_string(),
                s("4959033827149025660855969253836157"),
            ),
            (SUB_SEQUENCE.to_string(), n(3)),
            (OWNER_SWITCHES.to_string(), n(1)),
            (
                PARENTS.to_string(),
                AttributeValue::Ss(vec!["shardId-000000000001".into()]),
            ),
        ]);
        let lease = parse(&item).unwrap();
        assert_eq!(lease.owner.as_deref(), Some("pod-a"));
        assert_eq!(lease.counter, 42);
        assert_eq!(
            lease.checkpoint.to_attributes(),
            ("4959033827149025660855969253836157", 3)
        );
        assert_eq!(lease.parents, ["shardId-000000000001"]);
        // A KCL sentinel, and a row written by a KCL application without our attributes.
        let item = HashMap::from([
            (KEY.to_string(), s("shardId-000000000004")),
            (CHECKPOINT.to_string(), s("SHARD_END")),
        ]);
        let lease = parse(&item).unwrap();
        assert!(lease.checkpoint.is_shard_end() && lease.owner.is_none());
        assert_eq!(
            LeaseCheckpoint::from_attributes("AT_TIMESTAMP", 0),
            LeaseCheckpoint::TrimHorizon
        );
    }
}
