//! How a shard counts its writes against the per-shard limits: in fixed one-second windows, or in
//! a sliding one-second window of ten 100 ms slots. AWS documents the limits "per second" without
//! saying how it counts; a sender that keeps to the limits under both models holds under either.

use crate::state::{SHARD_BYTES_PER_SECOND, SHARD_RECORDS_PER_SECOND};

/// Slots per second: the clock of both models ticks in tenths of a second.
pub const SLOTS_PER_SECOND: u64 = 10;

/// How a shard counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowModel {
    /// Each second since start counts alone: a sender may put the limit at the end of one second
    /// and the limit again at the start of the next.
    #[default]
    Fixed,
    /// The current 100 ms slot and the nine before it count together: no second-long span, however
    /// placed (to the slot), holds more than the limit.
    Sliding,
}

/// Writes in one slot.
#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    /// The slot's number (tenths of a second since start); a ring entry with an older number is
    /// stale.
    number: u64,
    records: u64,
    bytes: u64,
}

/// One shard's recent writes: a ring of the last second's slots.
#[derive(Debug, Default)]
pub struct Window {
    slots: [Slot; SLOTS_PER_SECOND as usize],
}

impl Window {
    /// Takes room for one record of `bytes` at slot `now` (tenths of a second since start), or says
    /// the window it falls in is full. `share` of the limits is the caller's (another writer
    /// takes the rest).
    pub fn admit(&mut self, model: WindowModel, now: u64, bytes: u64, share: f64) -> bool {
        let oldest = match model {
            WindowModel::Fixed => now - now % SLOTS_PER_SECOND,
            WindowModel::Sliding => now.saturating_sub(SLOTS_PER_SECOND - 1),
        };
        let (records, used) = self
            .slots
            .iter()
            .filter(|slot| (oldest..=now).contains(&slot.number))
            .fold((0, 0), |(records, used), slot| {
                (records + slot.records, used + slot.bytes)
            });
        let (most_records, most_bytes) = (
            (SHARD_RECORDS_PER_SECOND as f64 * share) as u64,
            (SHARD_BYTES_PER_SECOND as f64 * share) as u64,
        );
        if records + 1 > most_records || used + bytes > most_bytes {
            return false;
        }
        let slot = &mut self.slots[(now % SLOTS_PER_SECOND) as usize];
        if slot.number != now {
            *slot = Slot {
                number: now,
                ..Slot::default()
            };
        }
        slot.records += 1;
        slot.bytes += bytes;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Admits `count` records of `bytes` at slot `now`; returns how many went in.
    fn fill(window: &mut Window, model: WindowModel, now: u64, count: u64, bytes: u64) -> u64 {
        (0..count)
            .filter(|_| window.admit(model, now, bytes, 1.0))
            .count() as u64
    }

    #[test]
    fn fixed_windows_start_afresh_each_second() {
        let mut window = Window::default();
        // 900 records late in second 0, then 1,000 more at the start of second 1: all admitted.
        assert_eq!(fill(&mut window, WindowModel::Fixed, 9, 900, 10), 900);
        assert_eq!(fill(&mut window, WindowModel::Fixed, 10, 1000, 10), 1000);
        assert_eq!(fill(&mut window, WindowModel::Fixed, 19, 1, 10), 0);
        assert_eq!(fill(&mut window, WindowModel::Fixed, 20, 1, 10), 1);
    }

    #[test]
    fn sliding_window_counts_the_last_ten_slots() {
        let mut window = Window::default();
        // 900 records at slot 9; at slot 10 that second still holds them: only 100 more.
        assert_eq!(fill(&mut window, WindowModel::Sliding, 9, 900, 10), 900);
        assert_eq!(fill(&mut window, WindowModel::Sliding, 10, 1000, 10), 100);
        // Slot 18 still sees slots 9 and 10; slot 19 no longer sees slot 9.
        assert_eq!(fill(&mut window, WindowModel::Sliding, 18, 1, 10), 0);
        assert_eq!(fill(&mut window, WindowModel::Sliding, 19, 1000, 10), 900);
        // Long after, the ring's stale slots count for nothing.
        assert_eq!(fill(&mut window, WindowModel::Sliding, 500, 1000, 10), 1000);
    }

    #[test]
    fn bytes_bind_in_both_models() {
        for model in [WindowModel::Fixed, WindowModel::Sliding] {
            let mut window = Window::default();
            let half = SHARD_BYTES_PER_SECOND / 2;
            assert_eq!(fill(&mut window, model, 5, 3, half), 2, "{model:?}");
            // A slot later: a new second for neither model.
            assert_eq!(fill(&mut window, model, 6, 1, 1), 0, "{model:?}");
        }
        // At slot 10 the fixed model starts a new second, the sliding one still holds slot 5.
        let mut fixed = Window::default();
        let mut sliding = Window::default();
        assert!(fixed.admit(WindowModel::Fixed, 5, SHARD_BYTES_PER_SECOND, 1.0));
        assert!(sliding.admit(WindowModel::Sliding, 5, SHARD_BYTES_PER_SECOND, 1.0));
        assert!(fixed.admit(WindowModel::Fixed, 10, SHARD_BYTES_PER_SECOND, 1.0));
        assert!(!sliding.admit(WindowModel::Sliding, 10, 1, 1.0));
        assert!(!sliding.admit(WindowModel::Sliding, 14, 1, 1.0));
        assert!(sliding.admit(WindowModel::Sliding, 15, SHARD_BYTES_PER_SECOND, 1.0));
    }

    /// Whatever the arrival pattern, no ten consecutive slots hold more than the limit under the
    /// sliding model.
    #[test]
    fn another_writer_leaves_the_rest() {
        let mut window = Window::default();
        let admitted = (0..1000)
            .filter(|_| window.admit(WindowModel::Sliding, 3, 10, 0.4))
            .count();
        assert_eq!(admitted, 400);
        assert!(!window.admit(WindowModel::Sliding, 12, 10, 0.4));
        assert!(window.admit(WindowModel::Sliding, 12, 10, 1.0));
    }

    #[test]
    fn sliding_never_admits_more_than_the_limit_in_any_ten_slots() {
        let mut window = Window::default();
        let mut admitted = vec![0u64; 200];
        let mut seed = 7u64;
        for now in 0..200u64 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let count = (seed >> 33) % 700;
            admitted[now as usize] = fill(&mut window, WindowModel::Sliding, now, count, 10);
        }
        for end in 9..200 {
            let second: u64 = admitted[end - 9..=end].iter().sum();
            assert!(
                second <= SHARD_RECORDS_PER_SECOND,
                "slots ..={end}: {second}"
            );
        }
        assert!(admitted.iter().sum::<u64>() > 15 * SHARD_RECORDS_PER_SECOND);
    }
}
