//! The stream's shards and their lineage: which shards may be read now.
//!
//! A shard starts only once each of its parents is finished (read to its end and checkpointed as
//! such), so for every partition key a parent's records reach Firehose before its child's, across
//! splits and merges. A parent that is no longer listed (trimmed by retention) does not block.

use std::collections::{HashMap, HashSet};

use aws_sdk_kinesis::Client;

use crate::sinks::error::SendError;

/// One shard as ListShards describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub shard_id: String,
    pub parents: Vec<String>,
    /// The shard has an ending sequence number: a split or merge closed it.
    pub closed: bool,
}

/// Every shard of `stream`, closed ones included (they may hold unread records), in ListShards
/// order, following pages.
pub async fn list(client: &Client, stream: &str) -> Result<Vec<ShardInfo>, SendError> {
    let mut shards = Vec::new();
    let mut next_token: Option<String> = None;
    loop {
        let request = client.list_shards();
        let request = match &next_token {
            // With a token, the stream must not be named again.
            Some(token) => request.next_token(token),
            None if stream.starts_with("arn:") => request.stream_arn(stream),
            None => request.stream_name(stream),
        };
        let output = request
            .send()
            .await
            .map_err(|error| SendError::from_sdk(&error))?;
        for shard in output.shards() {
            let parents = [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
                .into_iter()
                .flatten()
                .map(str::to_string)
                .collect();
            shards.push(ShardInfo {
                shard_id: shard.shard_id().to_string(),
                parents,
                closed: shard
                    .sequence_number_range()
                    .and_then(|range| range.ending_sequence_number())
                    .is_some(),
            });
        }
        match output.next_token() {
            Some(token) if !output.shards().is_empty() => next_token = Some(token.to_string()),
            _ => return Ok(shards),
        }
    }
}

/// The shards to start now: neither finished nor running, and every listed parent finished.
pub fn startable<'a>(
    listing: &'a [ShardInfo],
    finished: &HashSet<String>,
    running: &HashSet<String>,
) -> Vec<&'a ShardInfo> {
    let listed: HashMap<&str, &ShardInfo> = listing
        .iter()
        .map(|shard| (shard.shard_id.as_str(), shard))
        .collect();
    listing
        .iter()
        .filter(|shard| !finished.contains(&shard.shard_id) && !running.contains(&shard.shard_id))
        .filter(|shard| {
            shard
                .parents
                .iter()
                .all(|parent| finished.contains(parent) || !listed.contains_key(parent.as_str()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parents: &[&str], closed: bool) -> ShardInfo {
        ShardInfo {
            shard_id: id.into(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
            closed,
        }
    }

    fn ids(shards: Vec<&ShardInfo>) -> Vec<&str> {
        shards.iter().map(|s| s.shard_id.as_str()).collect()
    }

    #[test]
    fn children_wait_for_every_parent() {
        // 0 split into 1 and 2, then 1 and 2 merged into 3; 9 lost its parent to retention.
        let listing = vec![
            shard("0", &[], true),
            shard("1", &["0"], true),
            shard("2", &["0"], true),
            shard("3", &["1", "2"], false),
            shard("9", &["8"], false),
        ];
        let set = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
        assert_eq!(ids(startable(&listing, &set(&[]), &set(&[]))), ["0", "9"]);
        assert_eq!(
            ids(startable(&listing, &set(&["0"]), &set(&["9"]))),
            ["1", "2"]
        );
        assert!(startable(&listing, &set(&["0", "1"]), &set(&["2", "9"])).is_empty());
        assert_eq!(
            ids(startable(&listing, &set(&["0", "1", "2"]), &set(&["9"]))),
            ["3"]
        );
    }
}
