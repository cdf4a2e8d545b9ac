//! A bounded cache of values that take long to build (the detector's plans, one per canvas size,
//! ~40 ms of one core each here, more on slower CPUs): least-recently-used eviction (the `lru`
//! crate) and single-flight building.
//!
//! Each key holds a cell that is filled once. The first caller for a key that is not cached puts an
//! empty cell in the cache and builds the value outside the cache's lock; callers for the same key
//! meanwhile find that cell and wait on it (`OnceLock::get_or_init`) instead of building again, while
//! keys already built are served, and other keys built, in parallel. A failed build is handed to every
//! caller that waited on it and then removed, so the next caller tries again. A builder that panics
//! leaves its cell empty, and one of the waiters builds in its stead.
//!
//! The bound counts the cells being built too: only when more keys than the capacity are being
//! built at once can one in flight be evicted (its waiters still get its value, which is then not
//! kept).

use lru::LruCache;
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// A key's value once built: the value, or the build's error shared by everyone who waited for it.
type Cell<V, E> = Arc<OnceLock<Result<V, Arc<E>>>>;

pub struct PlanCache<K: Hash + Eq, V, E> {
    cells: Mutex<LruCache<K, Cell<V, E>>>,
    builds: AtomicUsize,
}

impl<K: Hash + Eq + Clone, V: Clone, E> PlanCache<K, V, E> {
    /// A cache holding at most `capacity` values (at least 1).
    pub fn new(capacity: usize) -> Self {
        PlanCache {
            cells: Mutex::new(LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN))),
            builds: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LruCache<K, Cell<V, E>>> {
        self.cells.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value of `key`, built with `build` unless it is cached or being built by another caller
    /// (then this one waits for that build, and shares its result or its error).
    pub fn get_or_build(&self, key: &K, build: impl FnOnce() -> Result<V, E>) -> Result<V, Arc<E>> {
        let cell = {
            let mut cells = self.lock();
            match cells.get(key) {
                // `get` made the key the most recently used.
                Some(c) if !matches!(c.get(), Some(Err(_))) => c.clone(),
                // Absent, or a failed build whose builder has not removed it yet: build anew.
                _ => {
                    let c = Cell::default();
                    cells.push(key.clone(), c.clone());
                    c
                }
            }
        };
        // The build runs without the cache's lock held.
        let mut built_here = false;
        let result = cell.get_or_init(|| {
            built_here = true;
            self.builds.fetch_add(1, Ordering::Relaxed);
            build().map_err(Arc::new)
        });
        match result {
            Ok(v) => Ok(v.clone()),
            Err(e) => {
                if built_here {
                    let mut cells = self.lock();
                    if cells.peek(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                        cells.pop(key);
                    }
                }
                Err(e.clone())
            }
        }
    }

    /// The number of builds started (successful or not) since the cache was made.
    pub fn builds(&self) -> usize {
        self.builds.load(Ordering::Relaxed)
    }

    /// The number of values held (built, not being built).
    pub fn len(&self) -> usize {
        self.lock()
            .iter()
            .filter(|(_, c)| matches!(c.get(), Some(Ok(_))))
            .count()
    }

    /// The most values the cache holds.
    pub fn capacity(&self) -> usize {
        self.lock().cap().get()
    }

    /// The keys whose values are held, least recently used first (the next to be evicted).
    #[cfg(test)]
    pub fn keys_lru_first(&self) -> Vec<K> {
        let cells = self.lock();
        let mut keys: Vec<K> = cells
            .iter()
            .filter(|(_, c)| matches!(c.get(), Some(Ok(_))))
            .map(|(k, _)| k.clone())
            .collect();
        // `iter` visits the most recently used first.
        keys.reverse();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Barrier;
    use std::thread;
    use std::time::Duration;

    #[test]
    fn callers_asking_at_once_for_one_key_build_it_once() {
        let cache: PlanCache<u32, Arc<u32>, String> = PlanCache::new(4);
        let barrier = Barrier::new(8);
        let got: Vec<Arc<u32>> = thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        cache
                            .get_or_build(&7, || {
                                thread::sleep(Duration::from_millis(200));
                                Ok(Arc::new(7))
                            })
                            .unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(cache.builds(), 1);
        assert!(got.iter().all(|v| Arc::ptr_eq(v, &got[0])));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_failed_build_reaches_every_waiter_and_is_not_kept() {
        let cache: PlanCache<u32, u32, String> = PlanCache::new(4);
        let barrier = Barrier::new(4);
        let errs: Vec<Arc<String>> = thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        cache
                            .get_or_build(&1, || {
                                thread::sleep(Duration::from_millis(200));
                                Err("no plan".to_string())
                            })
                            .unwrap_err()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(cache.builds(), 1);
        assert!(errs.iter().all(|e| Arc::ptr_eq(e, &errs[0]) && e.as_str() == "no plan"));
        assert_eq!(cache.len(), 0);
        // The next caller builds again.
        assert_eq!(cache.get_or_build(&1, || Ok(5)), Ok(5));
        assert_eq!(cache.builds(), 2);
        assert_eq!(cache.get_or_build(&1, || Ok(6)), Ok(5));
        assert_eq!(cache.builds(), 2);
    }

    #[test]
    fn the_lock_is_not_held_while_a_value_builds() {
        // Key 1 builds until the main thread has been served key 2 and built key 3; if either waited
        // for key 1's build, that build would time out and fail.
        let cache: PlanCache<u32, u32, String> = PlanCache::new(4);
        cache.get_or_build(&2, || Ok(20)).unwrap();
        let (started_tx, started_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        thread::scope(|s| {
            let slow = s.spawn(|| {
                cache.get_or_build(&1, move || {
                    started_tx.send(()).unwrap();
                    go_rx
                        .recv_timeout(Duration::from_secs(20))
                        .map(|_| 10)
                        .map_err(|e| e.to_string())
                })
            });
            started_rx.recv().unwrap();
            assert_eq!(cache.get_or_build(&2, || Err("rebuilt".into())), Ok(20));
            assert_eq!(cache.get_or_build(&3, || Ok(30)), Ok(30));
            go_tx.send(()).unwrap();
            assert_eq!(slow.join().unwrap(), Ok(10));
        });
        assert_eq!(cache.builds(), 3);
    }

    #[test]
    fn the_least_recently_used_value_is_evicted() {
        let cache: PlanCache<char, u32, String> = PlanCache::new(3);
        for k in ['a', 'b', 'c'] {
            cache.get_or_build(&k, || Ok(0)).unwrap();
        }
        assert_eq!(cache.keys_lru_first(), ['a', 'b', 'c']);
        cache.get_or_build(&'a', || Err("rebuilt".into())).unwrap();
        assert_eq!(cache.keys_lru_first(), ['b', 'c', 'a']);
        cache.get_or_build(&'d', || Ok(0)).unwrap();
        assert_eq!(cache.keys_lru_first(), ['c', 'a', 'd']);
        assert_eq!(cache.builds(), 4);
        cache.get_or_build(&'b', || Ok(0)).unwrap();
        assert_eq!(cache.keys_lru_first(), ['a', 'd', 'b']);
        assert_eq!((cache.builds(), cache.len(), cache.capacity()), (5, 3, 3));
    }
}
