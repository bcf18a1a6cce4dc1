//! Keeping the shard map current: loaded at start, read again every minute, and at once when
//! the sink sees a record land on a shard the map did not predict.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::shard_map::{ShardMap, SharedShardMap};
use crate::sinks::kinesis::{RetryPolicy, SdkTransport, Transport};

/// How often the shard map is read again when nothing asks for it sooner (resharding takes
/// seconds to minutes; a record landing on an unexpected shard asks at once).
const SHARD_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

pub async fn refresh(transport: &SdkTransport, shards: &SharedShardMap) -> bool {
    let listed = transport.list_shards().await;
    match listed.map(ShardMap::new) {
        Ok(Ok(map)) => {
            info!(shards = map.len(), "shard map loaded");
            shards.set(map);
            true
        }
        Ok(Err(map_error)) => {
            warn!(error = %map_error, "listshards returned an unusable shard map; keeping the old one");
            false
        }
        Err(list_error) => {
            warn!(error = %list_error, "cannot list the stream's shards; retrying");
            false
        }
    }
}

/// Keep the shard map current: on a timer, and whenever the sink marks it stale.
pub async fn refresher(
    transport: SdkTransport,
    shards: Arc<SharedShardMap>,
    stop: CancellationToken,
) {
    let mut backoff = RetryPolicy::default().backoff();
    loop {
        tokio::select! {
            () = tokio::time::sleep(SHARD_REFRESH_INTERVAL) => {}
            () = shards.stale() => {}
            () = stop.cancelled() => return,
        }
        while !refresh(&transport, &shards).await {
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                () = stop.cancelled() => return,
            }
        }
        backoff = RetryPolicy::default().backoff();
    }
}
