//! What a replica takes in one round, from a consistent read of the lease table: pure functions,
//! no I/O.
//!
//! Expiry ([`Observer`]): a lease whose counter has not moved for the failover time, as this
//! replica's own clock saw it; a lease seen for the first time counts as just renewed.
//!
//! Balancing ([`plan`]): the fair share is `ceil(active leases / replicas)`, replicas being the
//! owners of unexpired leases and this one. Below it, a replica takes free and expired leases
//! first; when there are none, it asks the most loaded replica for one lease (at most one per
//! round), and only when that replica holds more than the fair share, or exactly the fair share
//! while this one needs more than one. Once every replica holds the fair share or one less,
//! nothing moves: no lease-stealing storms.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::Lease;

/// When this replica last saw each lease's counter move.
#[derive(Debug, Default)]
pub struct Observer {
    seen: HashMap<String, (u64, Instant)>,
}

impl Observer {
    /// Record a table read made at `now`; forget leases no longer in it.
    pub fn observe(&mut self, leases: &[Lease], now: Instant) {
        let keys: HashSet<&str> = leases.iter().map(|l| l.key.as_str()).collect();
        self.seen.retain(|key, _| keys.contains(key.as_str()));
        for lease in leases {
            match self.seen.get_mut(&lease.key) {
                Some((counter, since)) if *counter != lease.counter => {
                    *counter = lease.counter;
                    *since = now;
                }
                Some(_) => {}
                None => {
                    self.seen.insert(lease.key.clone(), (lease.counter, now));
                }
            }
        }
    }

    /// The owned leases whose counter stood still for `failover` or longer.
    pub fn expired(&self, leases: &[Lease], failover: Duration, now: Instant) -> HashSet<String> {
        leases
            .iter()
            .filter(|lease| lease.owner.is_some())
            .filter(|lease| {
                self.seen.get(&lease.key).is_some_and(|(counter, since)| {
                    *counter == lease.counter && now.saturating_duration_since(*since) >= failover
                })
            })
            .map(|lease| lease.key.clone())
            .collect()
    }
}

/// One move a replica makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Take a free or expired lease (`from`: the replica whose lease expired).
    Take {
        key: String,
        counter: u64,
        from: Option<String>,
    },
    /// Ask `holder` to hand the lease over.
    Request {
        key: String,
        counter: u64,
        holder: String,
    },
    /// Take a lease its holder did not hand over when asked.
    Steal {
        key: String,
        counter: u64,
        from: String,
    },
}

/// A request this replica made and is waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub key: String,
    pub holder: String,
    /// The holder did not hand it over within the handoff time.
    pub overdue: bool,
}

/// Whether a lease may be read now: not finished, and every parent still in the table finished
/// (a parent no longer in the table was finished and cleaned up, or trimmed).
pub fn startable(lease: &Lease, by_key: &HashMap<&str, &Lease>) -> bool {
    !lease.checkpoint.is_shard_end()
        && lease.parents.iter().all(|parent| {
            by_key
                .get(parent.as_str())
                .is_none_or(|p| p.checkpoint.is_shard_end())
        })
}

/// The moves of `me` in this round.
pub fn plan(
    leases: &[Lease],
    expired: &HashSet<String>,
    me: &str,
    pending: Option<&Pending>,
) -> Vec<Action> {
    let by_key: HashMap<&str, &Lease> = leases.iter().map(|l| (l.key.as_str(), l)).collect();
    let active: Vec<&Lease> = leases
        .iter()
        .filter(|l| !l.checkpoint.is_shard_end())
        .collect();
    // Replicas and what they hold, as far as this replica can tell.
    let mut held: BTreeMap<&str, usize> = BTreeMap::new();
    held.insert(me, 0);
    for lease in &active {
        if let Some(owner) = lease.owner.as_deref()
            && !expired.contains(&lease.key)
        {
            *held.entry(owner).or_default() += 1;
        }
    }
    let target = active.len().div_ceil(held.len());
    let mine = held.get(me).copied().unwrap_or_default();
    let need = target.saturating_sub(mine);
    if need == 0 {
        return Vec::new();
    }
    // Free and expired leases, expired ones first (their shards are not being read at all).
    let mut available: Vec<&Lease> = active
        .iter()
        .copied()
        .filter(|l| l.owner.as_deref() != Some(me))
        .filter(|l| l.owner.is_none() || expired.contains(&l.key))
        .filter(|l| startable(l, &by_key))
        .collect();
    available.sort_by_key(|l| (l.owner.is_none(), l.key.clone()));
    if !available.is_empty() {
        return available
            .into_iter()
            .take(need)
            .map(|l| Action::Take {
                key: l.key.clone(),
                counter: l.counter,
                from: l.owner.clone(),
            })
            .collect();
    }
    if let Some(pending) = pending {
        let still_held = by_key
            .get(pending.key.as_str())
            .filter(|l| l.owner.as_deref() == Some(pending.holder.as_str()));
        return match still_held {
            Some(lease) if pending.overdue => vec![Action::Steal {
                key: lease.key.clone(),
                counter: lease.counter,
                from: pending.holder.clone(),
            }],
            // Still waiting; or it moved, and the next round starts afresh.
            _ => Vec::new(),
        };
    }
    let Some((holder, count)) = held
        .iter()
        .filter(|(owner, _)| **owner != me)
        .max_by_key(|(owner, count)| (**count, std::cmp::Reverse(**owner)))
        .map(|(owner, count)| (*owner, *count))
    else {
        return Vec::new();
    };
    if count > target || (count == target && need > 1) {
        let candidate = active
            .iter()
            .filter(|l| l.owner.as_deref() == Some(holder) && l.requested_by.is_none())
            .filter(|l| startable(l, &by_key))
            .max_by_key(|l| l.key.clone());
        if let Some(lease) = candidate {
            return vec![Action::Request {
                key: lease.key.clone(),
                counter: lease.counter,
                holder: holder.to_string(),
            }];
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consume::lease::LeaseCheckpoint;

    fn lease(key: &str, owner: Option<&str>) -> Lease {
        Lease {
            owner: owner.map(str::to_string),
            ..Lease::new(key, Vec::new(), LeaseCheckpoint::TrimHorizon)
        }
    }

    fn owned(counts: &[(&str, usize)]) -> Vec<Lease> {
        let mut leases = Vec::new();
        for (owner, count) in counts {
            for _ in 0..*count {
                leases.push(lease(&format!("s{:02}", leases.len()), Some(owner)));
            }
        }
        leases
    }

    #[test]
    fn a_balanced_fleet_moves_nothing() {
        // 8 leases over 3 replicas: 3, 3, 2 is as fair as it gets.
        let leases = owned(&[("a", 3), ("b", 3), ("c", 2)]);
        for me in ["a", "b", "c"] {
            assert_eq!(plan(&leases, &HashSet::new(), me, None), []);
        }
    }

    #[test]
    fn a_newcomer_asks_the_most_loaded_for_one_lease() {
        let leases = owned(&[("a", 5), ("b", 3)]);
        let actions = plan(&leases, &HashSet::new(), "c", None);
        assert!(
            matches!(actions.as_slice(), [Action::Request { holder, .. }] if holder == "a"),
            "{actions:?}"
        );
        // Waiting for the answer, it asks nothing more; once overdue, it takes the lease.
        let Action::Request { key, .. } = &actions[0] else {
            unreachable!()
        };
        let mut pending = Pending {
            key: key.clone(),
            holder: "a".into(),
            overdue: false,
        };
        assert_eq!(plan(&leases, &HashSet::new(), "c", Some(&pending)), []);
        pending.overdue = true;
        assert!(matches!(
            plan(&leases, &HashSet::new(), "c", Some(&pending)).as_slice(),
            [Action::Steal { from, .. }] if from == "a"
        ));
    }

    #[test]
    fn expired_and_free_leases_come_first() {
        let mut leases = owned(&[("a", 2), ("dead", 2)]);
        leases.push(lease("free", None));
        let expired: HashSet<String> = ["s02".to_string(), "s03".to_string()].into();
        // a, b: 5 leases over 2 live replicas, target 3; b holds none and takes expired first.
        let actions = plan(&leases, &expired, "b", None);
        let keys: Vec<&str> = actions
            .iter()
            .map(|a| match a {
                Action::Take { key, .. } => key.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(keys, ["s02", "s03", "free"]);
    }

    #[test]
    fn children_wait_for_their_parents() {
        let mut parent = lease("p", None);
        let child = Lease {
            parents: vec!["p".into()],
            ..lease("c", None)
        };
        let actions = plan(&[parent.clone(), child.clone()], &HashSet::new(), "a", None);
        assert_eq!(
            actions,
            [Action::Take {
                key: "p".into(),
                counter: 0,
                from: None
            }]
        );
        parent.checkpoint = LeaseCheckpoint::ShardEnd;
        let actions = plan(&[parent, child], &HashSet::new(), "a", None);
        assert_eq!(
            actions,
            [Action::Take {
                key: "c".into(),
                counter: 0,
                from: None
            }]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_is_judged_on_the_observers_clock() {
        let failover = Duration::from_secs(10);
        let mut observer = Observer::default();
        let mut leases = vec![lease("s", Some("a"))];
        observer.observe(&leases, Instant::now());
        tokio::time::advance(Duration::from_secs(9)).await;
        observer.observe(&leases, Instant::now());
        assert!(
            observer
                .expired(&leases, failover, Instant::now())
                .is_empty()
        );
        // The counter moved: the clock starts again.
        leases[0].counter = 1;
        observer.observe(&leases, Instant::now());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(
            observer
                .expired(&leases, failover, Instant::now())
                .is_empty()
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            observer.expired(&leases, failover, Instant::now()),
            HashSet::from(["s".to_string()])
        );
    }
}
