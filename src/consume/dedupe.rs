//! Dropping user records resent by a producer: a record with a JSON `id` (the json and celery
//! formats of `shipper tail` give every record one that survives a resend) that was already
//! forwarded within the window is dropped. Records without an `id` pass untouched.
//!
//! Memory is bounded per shard: at most [`MAX_IDS_PER_SHARD`] ids, each kept as a 64-bit hash
//! with the time it was seen; the oldest are forgotten first.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use tokio::time::Instant;

/// Ids remembered per shard, about 40 bytes each (2.5 MiB per shard at most).
pub const MAX_IDS_PER_SHARD: usize = 65_536;

#[derive(Debug)]
pub struct Dedupe {
    window: Duration,
    hasher: RandomState,
    seen: HashMap<u64, Instant>,
    order: VecDeque<(Instant, u64)>,
}

impl Dedupe {
    pub fn new(window: Duration) -> Dedupe {
        Dedupe {
            window,
            hasher: RandomState::new(),
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether `data` repeats a record seen within the window; remembers its id otherwise.
    pub fn is_duplicate(&mut self, data: &[u8], now: Instant) -> bool {
        if self.window.is_zero() {
            return false;
        }
        let Some(id) = record_id(data) else {
            return false;
        };
        self.forget_before(now);
        let hash = self.hasher.hash_one(id.as_bytes());
        if self.seen.contains_key(&hash) {
            return true;
        }
        if self.order.len() >= MAX_IDS_PER_SHARD
            && let Some((_, oldest)) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        self.seen.insert(hash, now);
        self.order.push_back((now, hash));
        false
    }

    fn forget_before(&mut self, now: Instant) {
        while let Some(&(seen_at, hash)) = self.order.front() {
            if now.duration_since(seen_at) <= self.window {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&hash);
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[derive(serde::Deserialize)]
struct WithId<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
}

/// The top-level string `id` of a JSON object record.
pub fn record_id(data: &[u8]) -> Option<Cow<'_, str>> {
    let first = data.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    serde_json::from_slice::<WithId<'_>>(data).ok()?.id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_top_level_strings_of_json_objects() {
        assert_eq!(
            record_id(br#"{"a": {"id": "inner"}, "id": "x-1"}"#).as_deref(),
            Some("x-1")
        );
        assert_eq!(record_id(br#"{"a": 1}"#), None);
        assert_eq!(record_id(br#"{"id": 5}"#), None);
        assert_eq!(record_id(b"plain text id"), None);
        assert_eq!(record_id(br#"{"id": "tr"#), None);
    }

    #[tokio::test(start_paused = true)]
    async fn drops_repeats_within_the_window_only() {
        let mut dedupe = Dedupe::new(Duration::from_secs(60));
        let now = Instant::now();
        assert!(!dedupe.is_duplicate(br#"{"id": "a"}"#, now));
        assert!(dedupe.is_duplicate(br#"{"id": "a", "msg": "resent"}"#, now));
        assert!(!dedupe.is_duplicate(b"no id", now));
        assert!(!dedupe.is_duplicate(b"no id", now));
        let later = now + Duration::from_secs(61);
        assert!(!dedupe.is_duplicate(br#"{"id": "a"}"#, later));
        assert_eq!(dedupe.len(), 1);
        let mut off = Dedupe::new(Duration::ZERO);
        assert!(!off.is_duplicate(br#"{"id": "a"}"#, now));
        assert!(!off.is_duplicate(br#"{"id": "a"}"#, now));
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded() {
        let mut dedupe = Dedupe::new(Duration::from_secs(3600));
        let now = Instant::now();
        for i in 0..MAX_IDS_PER_SHARD + 10 {
            let record = format!("{{\"id\": \"{i}\"}}");
            assert!(!dedupe.is_duplicate(record.as_bytes(), now));
        }
        assert_eq!(dedupe.len(), MAX_IDS_PER_SHARD);
        assert!(
            !dedupe.is_duplicate(br#"{"id": "0"}"#, now),
            "the oldest were forgotten"
        );
    }
}
