//! Hot instances: a pool per function version, and the node-wide memory budget that evicts
//! idle instances least recently used first, across all pools.
//!
//! Each pool belongs to a tenant with a share of the node's instance slots
//! ([`PoolShare`]). When an instantiation finds every slot taken, [`PoolRegistry::evict_for`]
//! frees one: an idle instance of another tenant that holds more than its share first, any
//! idle instance otherwise — so one tenant's idle instances never keep another's requests
//! out. A tenant that already holds its share evicts only its own.
//!
//! The pool is a policy over pre-instantiated code: instances are created from the version's
//! `ProxyPre`, serve up to `instance_reuse` requests, wait idle for at most `idle_timeout`,
//! and are destroyed — never reused — after a trap, a timeout or a limit.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::Proxy;

use crate::state::ComponentState;

/// Linear memory held by all hot instances of the node.
pub(crate) struct MemoryBudget {
    pub(crate) limit: u64,
    pub(crate) high_watermark: u64,
    used: AtomicU64,
}

impl MemoryBudget {
    pub(crate) fn new(limit: u64, fraction: f64) -> Self {
        let high_watermark = (limit as f64 * fraction.clamp(0.0, 1.0)) as u64;
        Self {
            limit,
            high_watermark,
            used: AtomicU64::new(0),
        }
    }

    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub(crate) fn over_watermark(&self) -> bool {
        self.used() > self.high_watermark
    }
}

/// One live component instance with its store.
pub(crate) struct HotInstance {
    pub(crate) store: Store<ComponentState>,
    pub(crate) proxy: Proxy,
    /// Requests served so far.
    pub(crate) uses: u32,
    pub(crate) last_used: Instant,
    /// Bytes this instance has added to the budget.
    accounted: u64,
    budget: Arc<MemoryBudget>,
    /// Its pool's count of live instances (idle or busy).
    live: Arc<AtomicUsize>,
}

impl HotInstance {
    pub(crate) fn new(
        store: Store<ComponentState>,
        proxy: Proxy,
        budget: Arc<MemoryBudget>,
        pool: &VersionPool,
    ) -> Self {
        pool.live.fetch_add(1, Ordering::Relaxed);
        let mut instance = Self {
            store,
            proxy,
            uses: 0,
            last_used: Instant::now(),
            accounted: 0,
            budget,
            live: pool.live.clone(),
        };
        instance.account_memory();
        instance
    }

    /// Brings the budget up to date with the instance's current linear memory.
    pub(crate) fn account_memory(&mut self) {
        let now = self.store.data().limits.memory_bytes as u64;
        if now > self.accounted {
            self.budget
                .used
                .fetch_add(now - self.accounted, Ordering::Relaxed);
        } else {
            self.budget
                .used
                .fetch_sub(self.accounted - now, Ordering::Relaxed);
        }
        self.accounted = now;
    }

    pub(crate) fn memory_bytes(&self) -> u64 {
        self.accounted
    }
}

impl Drop for HotInstance {
    fn drop(&mut self) {
        self.budget
            .used
            .fetch_sub(self.accounted, Ordering::Relaxed);
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One pool as eviction sees it.
struct Candidate<'a> {
    tenant: &'a str,
    /// The tenant's share of the node's slots.
    slots: u32,
    /// The pool's live instances, idle or busy.
    live: usize,
    oldest_idle: Option<Instant>,
}

/// The pool that gives up its least recently used idle instance so that `tenant` gets a
/// slot. A tenant already holding its share takes only from itself: it can never cost
/// another tenant an instance. Any other tenant takes first from a tenant over its share,
/// then from anyone idle.
fn victim(tenant: &str, pools: &[Candidate<'_>]) -> Option<usize> {
    let mut held: HashMap<&str, (usize, u32)> = HashMap::new();
    for pool in pools {
        let entry = held.entry(pool.tenant).or_insert((0, 0));
        entry.0 += pool.live;
        entry.1 = entry.1.max(pool.slots);
    }
    let holds = |t: &str, more_than: fn(usize, usize) -> bool| {
        held.get(t)
            .is_some_and(|(live, slots)| more_than(*live, *slots as usize))
    };
    let oldest = |eligible: &dyn Fn(&Candidate<'_>) -> bool| {
        pools
            .iter()
            .enumerate()
            .filter(|(_, pool)| eligible(pool))
            .filter_map(|(index, pool)| pool.oldest_idle.map(|at| (at, index)))
            .min()
            .map(|(_, index)| index)
    };
    if holds(tenant, |live, slots| live >= slots) {
        return oldest(&|pool| pool.tenant == tenant);
    }
    oldest(&|pool| pool.tenant != tenant && holds(pool.tenant, |live, slots| live > slots))
        .or_else(|| oldest(&|_| true))
}

/// Whose a pool's instances are, and how many instance slots that tenant is entitled to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolShare {
    pub tenant: Arc<str>,
    pub slots: u32,
}

impl Default for PoolShare {
    /// One tenant with the whole node (a runtime used on its own).
    fn default() -> Self {
        Self {
            tenant: "".into(),
            slots: u32::MAX,
        }
    }
}

/// The instances of one function version.
pub(crate) struct VersionPool {
    /// Idle instances, least recently used at the front.
    idle: Mutex<VecDeque<HotInstance>>,
    /// One permit per instance that may run at once (`max_hot_instances`).
    pub(crate) permits: tokio::sync::Semaphore,
    pub(crate) min_hot: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) cold_starts: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) reused_instance_failures: AtomicU64,
    share: PoolShare,
    /// Live instances, idle or busy.
    live: Arc<AtomicUsize>,
}

impl VersionPool {
    pub(crate) fn new(
        max_hot: u32,
        min_hot: u32,
        idle_timeout: Duration,
        share: PoolShare,
    ) -> Self {
        Self {
            idle: Mutex::new(VecDeque::new()),
            permits: tokio::sync::Semaphore::new(max_hot.max(1) as usize),
            min_hot: min_hot as usize,
            idle_timeout,
            cold_starts: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            reused_instance_failures: AtomicU64::new(0),
            share,
            live: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub(crate) fn tenant(&self) -> &str {
        &self.share.tenant
    }

    /// Destroys this pool's least recently used idle instance, if it has one.
    fn evict_oldest(&self) -> bool {
        let instance = self.idle().pop_front();
        let evicted = instance.is_some();
        if evicted {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        // Dropped outside the lock; dropping the store gives its slot back.
        drop(instance);
        evicted
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, VecDeque<HotInstance>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle instance: its memory is the likeliest to be in cache.
    pub(crate) fn take_idle(&self) -> Option<HotInstance> {
        self.idle().pop_back()
    }

    pub(crate) fn put_idle(&self, mut instance: HotInstance) {
        instance.last_used = Instant::now();
        self.idle().push_back(instance);
    }

    pub(crate) fn idle_count(&self) -> usize {
        self.idle().len()
    }

    pub(crate) fn idle_memory(&self) -> u64 {
        self.idle().iter().map(HotInstance::memory_bytes).sum()
    }

    fn oldest_idle(&self) -> Option<Instant> {
        self.idle().front().map(|i| i.last_used)
    }

    /// Destroys idle instances unused for `idle_timeout`, keeping the `min_hot` most recent.
    pub(crate) fn expire_idle(&self, now: Instant) -> usize {
        let expired: Vec<HotInstance> = {
            let mut idle = self.idle();
            let mut expired = Vec::new();
            while idle.len() > self.min_hot
                && idle
                    .front()
                    .is_some_and(|i| now.duration_since(i.last_used) >= self.idle_timeout)
            {
                expired.extend(idle.pop_front());
            }
            expired
        };
        // Drop outside the lock: destroying a store returns its slot to the allocator.
        let count = expired.len();
        drop(expired);
        self.evictions.fetch_add(count as u64, Ordering::Relaxed);
        count
    }

    pub(crate) fn clear(&self) {
        let all: Vec<HotInstance> = self.idle().drain(..).collect();
        drop(all);
    }
}

/// All pools of the node, for node-wide eviction and the idle sweeper.
#[derive(Default)]
pub(crate) struct PoolRegistry {
    pools: Mutex<Vec<Weak<VersionPool>>>,
}

impl PoolRegistry {
    pub(crate) fn register(&self, pool: &Arc<VersionPool>) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(pool));
    }

    fn live(&self) -> Vec<Arc<VersionPool>> {
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Destroys idle instances, least recently used first across all pools, until the
    /// budget is back under its watermark. Returns how many were destroyed.
    pub(crate) fn enforce(&self, budget: &MemoryBudget) -> usize {
        let mut evicted = 0;
        while budget.over_watermark() {
            let pools = self.live();
            let Some(victim) = pools
                .iter()
                .filter_map(|p| p.oldest_idle().map(|t| (t, p)))
                .min_by_key(|(t, _)| *t)
            else {
                break;
            };
            if victim.1.evict_oldest() {
                evicted += 1;
            }
        }
        evicted
    }

    /// Frees one instance slot for a new instance of `tenant` (see [`victim`]). False when
    /// no instance may be destroyed for it.
    pub(crate) fn evict_for(&self, tenant: &str) -> bool {
        let pools = self.live();
        let candidates: Vec<Candidate<'_>> = pools
            .iter()
            .map(|pool| Candidate {
                tenant: &pool.share.tenant,
                slots: pool.share.slots,
                live: pool.live.load(Ordering::Relaxed),
                oldest_idle: pool.oldest_idle(),
            })
            .collect();
        victim(tenant, &candidates).is_some_and(|index| pools[index].evict_oldest())
    }

    pub(crate) fn expire_idle(&self, now: Instant) -> usize {
        self.live().iter().map(|p| p.expire_idle(now)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(tenant: &str, slots: u32, live: usize, idle_since_s: Option<u64>) -> Candidate<'_> {
        let origin = Instant::now();
        Candidate {
            tenant,
            slots,
            live,
            oldest_idle: idle_since_s.map(|s| origin + Duration::from_secs(s)),
        }
    }

    #[test]
    fn a_tenant_within_its_share_takes_from_one_over_its_share_first() {
        let pools = [
            pool("b", 4, 1, Some(0)),
            pool("a", 4, 3, Some(5)),
            pool("a", 4, 3, Some(9)),
        ];
        assert_eq!(victim("c", &pools), Some(1), "a holds 6 of its 4");
        assert_eq!(victim("b", &pools), Some(1));
    }

    #[test]
    fn a_tenant_within_its_share_takes_anyone_idle_when_none_is_over() {
        let pools = [pool("a", 4, 2, Some(7)), pool("b", 4, 1, Some(3))];
        assert_eq!(victim("c", &pools), Some(1), "the least recently used");
    }

    #[test]
    fn a_tenant_at_its_share_takes_only_from_itself() {
        let pools = [
            pool("b", 4, 1, Some(0)),
            pool("a", 4, 3, None),
            pool("a", 4, 1, Some(9)),
        ];
        assert_eq!(victim("a", &pools), Some(2));
        let busy = [pool("b", 4, 1, Some(0)), pool("a", 4, 4, None)];
        assert_eq!(victim("a", &busy), None, "b's instance is not a's to take");
    }
}
