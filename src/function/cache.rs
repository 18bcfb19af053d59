//! Function records for the request path (job admission above all), kept in
//! memory so that no request waits on a cache refresh:
//! - a fresh record is served as is;
//! - a stale one is served too, while one background read refreshes it
//!   (stale-while-revalidate);
//! - a missing one is read once however many requests want it at that
//!   moment (single flight); the others wait for that read.
//!
//! Changes made anywhere reach the cache through the change feed, so a record
//! stays fresh for `FRESH_LIVE`; while the feed is down (or absent) the short
//! `FRESH_FALLBACK` bounds staleness instead. Unknown ids are remembered as
//! absent the same way, so a flood of bad ids does not become a flood of reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::{self, FunctionRegistry};
use crate::model::FunctionRecord;

/// How long a record is served without a refresh while changes are being
/// received. Writers outside this platform (e.g. the original controller on
/// the same table) are seen within it.
pub const FRESH_LIVE: Duration = Duration::from_secs(10);
/// The same without change notifications.
pub const FRESH_FALLBACK: Duration = Duration::from_secs(2);
/// A stale record older than this is not served: the request reads it.
pub const KEEP_STALE: Duration = Duration::from_secs(60);
/// Beyond this many ids the cache starts over (ids are cheap to read back).
const MAX_ENTRIES: usize = 10_000;

/// What a lookup found, by age (pure; see `judge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it.
    Fresh,
    /// Serve it, and refresh it in the background.
    StaleRefresh,
    /// Serve it; a refresh is already under way.
    Stale,
    /// Read it before answering.
    Miss,
}

/// Decides what to do with an entry of age `age`.
pub fn judge(age: Duration, live: bool, refreshing: bool) -> Verdict {
    let fresh_for = if live { FRESH_LIVE } else { FRESH_FALLBACK };
    if age < fresh_for {
        Verdict::Fresh
    } else if age >= KEEP_STALE {
        Verdict::Miss
    } else if refreshing {
        Verdict::Stale
    } else {
        Verdict::StaleRefresh
    }
}

/// `None`: known not to exist.
type Value = Option<Arc<FunctionRecord>>;

struct Entry {
    value: Value,
    fetched: Instant,
    refreshing: bool,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// One lock per id being read, so concurrent misses wait for one read.
    loading: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Bumped by every invalidation: a read that started before one must not
    /// store what it read.
    generation: u64,
}

pub struct RecordCache {
    registry: Arc<dyn FunctionRegistry>,
    state: Mutex<State>,
}

impl RecordCache {
    pub fn new(registry: Arc<dyn FunctionRegistry>) -> Self {
        RecordCache {
            registry,
            state: Mutex::new(State::default()),
        }
    }

    /// The record (`None` when it does not exist), served from memory when
    /// possible. `live`: whether changes are being received right now.
    pub async fn get(self: &Arc<Self>, id: &str, live: bool) -> backend::Result<Value> {
        if let Some(value) = self.cached(id, live) {
            return Ok(value);
        }
        let lock = self.load_lock(id);
        let _turn = lock.lock().await;
        // Whoever held the lock before us may have just read it.
        if let Some(value) = self.cached(id, live) {
            return Ok(value);
        }
        let generation = self.generation();
        let read = self.read(id).await;
        if let Ok(mut state) = self.state.lock() {
            state.loading.remove(id);
        }
        let value = read?;
        self.store(id, value.clone(), generation);
        Ok(value)
    }

    /// Forgets `id` (it changed).
    pub fn invalidate(&self, id: &str) {
        if let Ok(mut state) = self.state.lock() {
            state.entries.remove(id);
            state.generation += 1;
        }
    }

    /// Forgets everything (changes may have been missed).
    pub fn clear(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.entries.clear();
            state.generation += 1;
        }
    }

    /// A servable cached value, starting a background refresh when it is
    /// stale; `None` when the record must be read first.
    fn cached(self: &Arc<Self>, id: &str, live: bool) -> Option<Value> {
        let mut state = self.state.lock().ok()?;
        let generation = state.generation;
        let entry = state.entries.get_mut(id)?;
        match judge(entry.fetched.elapsed(), live, entry.refreshing) {
            Verdict::Fresh | Verdict::Stale => Some(entry.value.clone()),
            Verdict::StaleRefresh => {
                entry.refreshing = true;
                let value = entry.value.clone();
                drop(state);
                self.refresh(id.to_string(), generation);
                Some(value)
            }
            Verdict::Miss => None,
        }
    }

    fn refresh(self: &Arc<Self>, id: String, generation: u64) {
        let cache = self.clone();
        tokio::spawn(async move {
            match cache.read(&id).await {
                Ok(value) => cache.store(&id, value, generation),
                Err(e) => {
                    // Keep serving what we have; the next request tries again.
                    tracing::warn!(function_id = id, error = %e, "could not refresh a function record");
                    if let Ok(mut state) = cache.state.lock() {
                        if let Some(entry) = state.entries.get_mut(&id) {
                            entry.refreshing = false;
                        }
                    }
                }
            }
        });
    }

    async fn read(&self, id: &str) -> backend::Result<Value> {
        match self.registry.get(id).await {
            Ok(record) => Ok(Some(Arc::new(record))),
            Err(backend::Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn generation(&self) -> u64 {
        self.state.lock().map(|s| s.generation).unwrap_or(0)
    }

    fn load_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        match self.state.lock() {
            Ok(mut state) => state.loading.entry(id.to_string()).or_default().clone(),
            // A poisoned map only costs the single flight.
            Err(_) => Arc::default(),
        }
    }

    fn store(&self, id: &str, value: Value, read_at_generation: u64) {
        let Ok(mut state) = self.state.lock() else { return };
        if state.generation != read_at_generation {
            // Changed while it was being read: what was read may be older.
            if let Some(entry) = state.entries.get_mut(id) {
                entry.refreshing = false;
            }
            return;
        }
        if state.entries.len() >= MAX_ENTRIES && !state.entries.contains_key(id) {
            state.entries.clear();
        }
        state.entries.insert(
            id.to_string(),
            Entry {
                value,
                fetched: Instant::now(),
                refreshing: false,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::conformance::sample_function;
    use crate::model::UsageDelta;
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn verdicts_by_age() {
        let s = Duration::from_secs;
        assert_eq!(judge(s(1), false, false), Verdict::Fresh);
        assert_eq!(judge(s(3), false, false), Verdict::StaleRefresh);
        assert_eq!(
            judge(s(3), true, false),
            Verdict::Fresh,
            "a live feed keeps records fresh longer"
        );
        assert_eq!(judge(s(11), true, false), Verdict::StaleRefresh);
        assert_eq!(judge(s(11), true, true), Verdict::Stale, "one refresh at a time");
        assert_eq!(judge(s(61), true, false), Verdict::Miss);
        assert_eq!(judge(s(61), false, true), Verdict::Miss);
    }

    /// A registry whose reads take `delay` and are counted.
    struct Slow {
        reads: AtomicUsize,
        delay: Duration,
        record: Mutex<Option<FunctionRecord>>,
    }

    #[async_trait]
    impl FunctionRegistry for Slow {
        async fn put(&self, record: &FunctionRecord) -> backend::Result<()> {
            *self.record.lock().unwrap() = Some(record.clone());
            Ok(())
        }
        async fn get(&self, id: &str) -> backend::Result<FunctionRecord> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let answer = self.record.lock().unwrap().clone();
            tokio::time::sleep(self.delay).await;
            answer.ok_or_else(|| backend::Error::NotFound(id.to_string()))
        }
        async fn list(&self) -> backend::Result<Vec<FunctionRecord>> {
            Ok(vec![])
        }
        async fn delete(&self, _: &str) -> backend::Result<()> {
            *self.record.lock().unwrap() = None;
            Ok(())
        }
        async fn add_usage(&self, _: &str, _: &UsageDelta) -> backend::Result<()> {
            Ok(())
        }
        async fn ping(&self) -> backend::Result<()> {
            Ok(())
        }
    }

    fn slow(delay_ms: u64) -> Arc<Slow> {
        Arc::new(Slow {
            reads: AtomicUsize::new(0),
            delay: Duration::from_millis(delay_ms),
            record: Mutex::new(Some(sample_function("f"))),
        })
    }

    #[tokio::test]
    async fn concurrent_misses_read_once() {
        let registry = slow(50);
        let cache = Arc::new(RecordCache::new(registry.clone()));
        let gets = (0..50).map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get("f", true).await })
        });
        for got in futures::future::join_all(gets).await {
            assert_eq!(got.unwrap().unwrap().unwrap().function_id, "f");
        }
        assert_eq!(registry.reads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_record_is_served_at_once_and_refreshed_once() {
        let registry = slow(500);
        let cache = Arc::new(RecordCache::new(registry.clone()));
        cache.get("f", false).await.unwrap();
        let mut changed = sample_function("f");
        changed.memory_mb = 1024;
        registry.put(&changed).await.unwrap();
        // Instant is tokio's clock here only for sleeps; age the entry by hand.
        cache.state.lock().unwrap().entries.get_mut("f").unwrap().fetched -= FRESH_FALLBACK;
        for _ in 0..20 {
            let started = tokio::time::Instant::now();
            let got = cache.get("f", false).await.unwrap().unwrap();
            assert_eq!(got.memory_mb, 128, "the stale record, without waiting");
            assert_eq!(started.elapsed(), Duration::ZERO);
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(registry.reads.load(Ordering::SeqCst), 2, "one background refresh");
        assert_eq!(cache.get("f", false).await.unwrap().unwrap().memory_mb, 1024);
    }

    #[tokio::test]
    async fn absence_is_remembered_until_invalidated() {
        let registry = slow(0);
        registry.delete("f").await.unwrap();
        let cache = Arc::new(RecordCache::new(registry.clone()));
        assert!(cache.get("f", true).await.unwrap().is_none());
        assert!(cache.get("f", true).await.unwrap().is_none());
        assert_eq!(registry.reads.load(Ordering::SeqCst), 1);
        registry.put(&sample_function("f")).await.unwrap();
        cache.invalidate("f");
        assert!(cache.get("f", true).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_read_overtaken_by_a_change_is_not_kept() {
        let registry = slow(100);
        let cache = Arc::new(RecordCache::new(registry.clone()));
        let reading = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get("f", true).await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        registry.delete("f").await.unwrap();
        cache.invalidate("f");
        // The read that started before the change still answers its caller…
        assert!(reading.await.unwrap().unwrap().is_some());
        // …but the cache does not keep it.
        assert!(cache.get("f", true).await.unwrap().is_none());
    }
}
