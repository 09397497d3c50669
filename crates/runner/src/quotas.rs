//! Per-tenant quotas: concurrent executions and invocations per minute. Over either, a
//! request is refused with 429 and a `Retry-After`. A tenant is a project (a manifest's
//! functions name theirs); the node's flags give every tenant its defaults, and the control
//! plane's desired state may set other values per project, applied at each reconcile.

use std::collections::{BTreeMap, HashMap};

use arc_swap::ArcSwap;
use edgefn_proto::sync::ProjectQuota;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Quota settings applied to every tenant.
#[derive(Clone, Copy, Debug)]
pub struct QuotaLimits {
    pub max_concurrent: u32,
    pub per_minute: NonZeroU32,
}

impl Default for QuotaLimits {
    fn default() -> Self {
        Self {
            max_concurrent: 100,
            per_minute: NonZeroU32::new(10_000).unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// Which quota refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaExceeded {
    Concurrency,
    Rate { retry_after: Duration },
}

impl QuotaExceeded {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Concurrency => "concurrency",
            Self::Rate { .. } => "rate",
        }
    }

    /// Whole seconds for the `Retry-After` header (at least 1).
    pub fn retry_after_seconds(self) -> u64 {
        match self {
            Self::Concurrency => 1,
            Self::Rate { retry_after } => retry_after.as_secs_f64().ceil().max(1.0) as u64,
        }
    }
}

/// The quotas of every tenant of the node.
pub struct TenantQuotas {
    limits: QuotaLimits,
    tenants: Mutex<HashMap<String, Arc<TenantQuota>>>,
    /// Per-tenant values that differ from `limits`.
    overrides: Mutex<BTreeMap<String, ProjectQuota>>,
}

/// One tenant's counters. Resolved once per function version, so that admitting a request
/// takes no lock and allocates nothing; its limits can change in place.
pub struct TenantQuota {
    max_concurrent: AtomicU32,
    running: AtomicU32,
    per_minute: AtomicU32,
    rate: ArcSwap<DefaultDirectRateLimiter>,
    /// Guest time of all invocations so far, in microseconds (reported in heartbeats).
    cpu_micros: std::sync::atomic::AtomicU64,
}

/// Holds one concurrent-execution slot of a tenant until dropped.
pub struct QuotaGuard {
    tenant: Arc<TenantQuota>,
}

impl Drop for QuotaGuard {
    fn drop(&mut self) {
        self.tenant.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl TenantQuotas {
    pub fn new(limits: QuotaLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            tenants: Mutex::new(HashMap::new()),
            overrides: Mutex::new(BTreeMap::new()),
        })
    }

    /// The limits of `tenant`: its override's fields, else the node's defaults.
    fn limits_of(&self, tenant: &str, overrides: &BTreeMap<String, ProjectQuota>) -> QuotaLimits {
        let set = overrides.get(tenant);
        QuotaLimits {
            max_concurrent: set
                .and_then(|q| q.max_concurrent)
                .unwrap_or(self.limits.max_concurrent),
            per_minute: set
                .and_then(|q| q.per_minute)
                .and_then(NonZeroU32::new)
                .unwrap_or(self.limits.per_minute),
        }
    }

    /// Sets the per-tenant values (the desired state's quotas); tenants left out go back
    /// to the node's defaults. Counters of running invocations are kept.
    pub fn apply(&self, overrides: &BTreeMap<String, ProjectQuota>) {
        let mut current = self.overrides.lock().unwrap_or_else(|e| e.into_inner());
        if *current == *overrides {
            return;
        }
        *current = overrides.clone();
        let tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        for (name, quota) in tenants.iter() {
            quota.set_limits(self.limits_of(name, &current));
        }
    }

    /// The share of the node's instance slots the control plane gave `tenant`, if any.
    pub fn pool_share(&self, tenant: &str) -> Option<u8> {
        self.overrides
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .and_then(|q| q.pool_share_percent)
    }

    /// The counters of `tenant`, created on first use.
    pub fn tenant(&self, tenant: &str) -> Arc<TenantQuota> {
        let overrides = self.overrides.lock().unwrap_or_else(|e| e.into_inner());
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        tenants
            .entry(tenant.to_string())
            .or_insert_with(|| {
                let limits = self.limits_of(tenant, &overrides);
                Arc::new(TenantQuota {
                    max_concurrent: AtomicU32::new(limits.max_concurrent),
                    running: AtomicU32::new(0),
                    per_minute: AtomicU32::new(limits.per_minute.get()),
                    rate: ArcSwap::from_pointee(rate_limiter(limits.per_minute)),
                    cpu_micros: std::sync::atomic::AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// Every tenant's guest time so far, in microseconds.
    pub fn cpu_micros(&self) -> Vec<(String, u64)> {
        let tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        tenants
            .iter()
            .map(|(name, quota)| (name.clone(), quota.cpu_micros.load(Ordering::Relaxed)))
            .collect()
    }

    /// Admits one invocation of `tenant`, or says which quota is exhausted. (The front
    /// admits through the tenant's quota its function holds; this is for tests.)
    #[cfg(test)]
    pub fn admit(&self, tenant: &str) -> Result<QuotaGuard, QuotaExceeded> {
        self.tenant(tenant).admit()
    }
}

/// GCRA with a burst of the whole minute's allowance: a quiet tenant may spend its minute
/// at once, a busy one is held to the average.
fn rate_limiter(per_minute: NonZeroU32) -> DefaultDirectRateLimiter {
    RateLimiter::direct(Quota::per_minute(per_minute))
}

impl TenantQuota {
    fn set_limits(&self, limits: QuotaLimits) {
        self.max_concurrent
            .store(limits.max_concurrent, Ordering::Release);
        if self
            .per_minute
            .swap(limits.per_minute.get(), Ordering::AcqRel)
            != limits.per_minute.get()
        {
            self.rate.store(Arc::new(rate_limiter(limits.per_minute)));
        }
    }

    /// Admits one invocation, or says which quota is exhausted. A refused request holds
    /// nothing.
    pub fn admit(self: &Arc<Self>) -> Result<QuotaGuard, QuotaExceeded> {
        let max = self.max_concurrent.load(Ordering::Acquire);
        if self
            .running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(QuotaExceeded::Concurrency);
        }
        let guard = QuotaGuard {
            tenant: self.clone(),
        };
        match self.rate.load().check() {
            Ok(()) => Ok(guard),
            Err(not_until) => {
                drop(guard);
                Err(QuotaExceeded::Rate {
                    retry_after: not_until.wait_time_from(DefaultClock::default().now()),
                })
            }
        }
    }

    /// Counts guest time spent by one invocation.
    pub fn add_cpu(&self, time: std::time::Duration) {
        self.cpu_micros
            .fetch_add(time.as_micros() as u64, Ordering::Relaxed);
    }

    /// Invocations of this tenant running now.
    #[cfg(test)]
    pub fn running(&self) -> u32 {
        self.running.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_is_capped_per_tenant_and_released_on_drop() {
        let quotas = TenantQuotas::new(QuotaLimits {
            max_concurrent: 2,
            ..QuotaLimits::default()
        });
        let a = quotas.admit("acme").unwrap();
        let _b = quotas.admit("acme").unwrap();
        assert_eq!(quotas.admit("acme").err(), Some(QuotaExceeded::Concurrency));
        assert!(quotas.admit("other").is_ok(), "tenants are independent");
        drop(a);
        assert!(quotas.admit("acme").is_ok());
    }

    #[test]
    fn invocations_per_minute_are_capped_with_a_retry_after() {
        let quotas = TenantQuotas::new(QuotaLimits {
            max_concurrent: 100,
            per_minute: NonZeroU32::new(3).unwrap(),
        });
        for _ in 0..3 {
            drop(quotas.admit("acme").unwrap());
        }
        let refused = quotas.admit("acme").err().unwrap();
        assert!(matches!(refused, QuotaExceeded::Rate { .. }));
        assert!(
            (1..=20).contains(&refused.retry_after_seconds()),
            "{refused:?}"
        );
        // A refused request does not hold a concurrency slot.
        assert_eq!(quotas.tenant("acme").running(), 0);
    }

    #[test]
    fn a_project_quota_from_the_control_plane_overrides_the_defaults_in_place() {
        let quotas = TenantQuotas::new(QuotaLimits {
            max_concurrent: 1,
            ..QuotaLimits::default()
        });
        let shop = quotas.tenant("shop");
        let held = shop.admit().unwrap();
        assert_eq!(shop.admit().err(), Some(QuotaExceeded::Concurrency));
        quotas.apply(&BTreeMap::from([(
            "shop".to_string(),
            ProjectQuota {
                max_concurrent: Some(2),
                per_minute: Some(1),
                pool_share_percent: None,
            },
        )]));
        // The handle a function version resolved earlier sees the new values.
        let second = shop.admit().unwrap();
        assert_eq!(shop.admit().err(), Some(QuotaExceeded::Concurrency));
        drop((held, second));
        assert!(matches!(
            shop.admit().err(),
            Some(QuotaExceeded::Rate { .. })
        ));
        // Another tenant keeps the defaults; an empty set restores them.
        assert!(quotas.tenant("blog").admit().is_ok());
        quotas.apply(&BTreeMap::new());
        assert!(shop.admit().is_ok());
    }
}
