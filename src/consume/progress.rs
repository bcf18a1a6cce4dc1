//! Per-shard acknowledgement tracking: the checkpoint advances only over a contiguous prefix of
//! forwarded user records.
//!
//! The reader registers segments in read order (each a Firehose record's worth of user records,
//! identified by the position of its last user record) and gets a ticket for each; the forwarder
//! acknowledges tickets in any order once Firehose accepted them (or they were dead-lettered). The
//! committed position is the last position of the longest acknowledged prefix.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::position::Position;

/// A segment's place in its shard's queue.
pub type Ticket = u64;

#[derive(Debug)]
pub struct Progress {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Ticket of `queue[0]`.
    base: Ticket,
    queue: VecDeque<(Position, bool)>,
    committed: Option<Position>,
    /// The reader reached the end of a closed shard: once `queue` drains, the shard is finished.
    ended: bool,
}

/// What the checkpoint of one shard is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub committed: Option<Position>,
    pub finished: bool,
    pub in_flight: usize,
}

impl Progress {
    /// Tracking that starts from `committed` (the checkpoint loaded at start-up).
    pub fn new(committed: Option<Position>) -> Progress {
        Progress {
            inner: Mutex::new(Inner {
                base: 0,
                queue: VecDeque::new(),
                committed,
                ended: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register the next segment, ending at `last`. `done` registers it already acknowledged
    /// (user records dropped as duplicates or dead-lettered).
    pub fn register(&self, last: Position, done: bool) -> Ticket {
        let mut inner = self.lock();
        let ticket = inner.base + inner.queue.len() as u64;
        inner.queue.push_back((last, done));
        if done {
            inner.advance();
        }
        ticket
    }

    /// Acknowledge `tickets` (in any order).
    pub fn ack(&self, tickets: impl IntoIterator<Item = Ticket>) {
        let mut inner = self.lock();
        for ticket in tickets {
            let Some(index) = ticket.checked_sub(inner.base) else {
                continue;
            };
            if let Some(slot) = inner.queue.get_mut(index as usize) {
                slot.1 = true;
            }
        }
        inner.advance();
    }

    /// The reader read the closed shard to its end.
    pub fn end(&self) {
        self.lock().ended = true;
    }

    pub fn snapshot(&self) -> Snapshot {
        let inner = self.lock();
        Snapshot {
            committed: inner.committed.clone(),
            finished: inner.ended && inner.queue.is_empty(),
            in_flight: inner.queue.len(),
        }
    }
}

impl Inner {
    fn advance(&mut self) {
        while self.queue.front().is_some_and(|(_, done)| *done) {
            if let Some((position, _)) = self.queue.pop_front() {
                self.committed = Some(position);
                self.base += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consume::position::SequenceNumber;
    use proptest::prelude::*;

    fn position(n: u64) -> Position {
        Position {
            sequence: SequenceNumber::new(&(1000 + n / 3).to_string()),
            sub_sequence: n % 3,
        }
    }

    proptest! {
        /// Whatever order the acknowledgements come in, the committed position is the last of the
        /// longest acknowledged prefix, and it never moves backwards.
        #[test]
        fn commits_the_contiguous_acknowledged_prefix(
            (count, order) in (1usize..60).prop_flat_map(|n| (Just(n), Just((0..n as u64).collect::<Vec<_>>()).prop_shuffle())),
            pre_acked in prop::collection::vec(any::<bool>(), 60),
        ) {
            let progress = Progress::new(None);
            for i in 0..count as u64 {
                prop_assert_eq!(progress.register(position(i), pre_acked[i as usize]), i);
            }
            let mut acked: Vec<bool> = pre_acked[..count].to_vec();
            let mut previous = None;
            for ticket in order {
                progress.ack([ticket]);
                acked[ticket as usize] = true;
                let prefix = acked.iter().take_while(|a| **a).count();
                let expected = prefix.checked_sub(1).map(|i| position(i as u64));
                let snapshot = progress.snapshot();
                prop_assert_eq!(&snapshot.committed, &expected);
                prop_assert!(snapshot.committed >= previous);
                prop_assert_eq!(snapshot.in_flight, count - prefix);
                previous = snapshot.committed;
            }
        }
    }

    #[test]
    fn finished_only_once_ended_and_drained() {
        let progress = Progress::new(Some(position(0)));
        let ticket = progress.register(position(1), false);
        progress.end();
        assert!(!progress.snapshot().finished);
        progress.ack([ticket, ticket + 7]);
        let snapshot = progress.snapshot();
        assert!(snapshot.finished);
        assert_eq!(snapshot.committed, Some(position(1)));
    }
}
