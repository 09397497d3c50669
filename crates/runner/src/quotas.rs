//! Per-tenant quotas: concurrent executions and invocations per minute. Over either, a
//! request is refused with 429 and a `Retry-After`.

use std::collections::HashMap;
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
}

/// One tenant's counters. Resolved once per function version, so that admitting a request
/// takes no lock and allocates nothing.
pub struct TenantQuota {
    max_concurrent: u32,
    running: AtomicU32,
    rate: DefaultDirectRateLimiter,
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
        })
    }

    /// The counters of `tenant`, created on first use.
    pub fn tenant(&self, tenant: &str) -> Arc<TenantQuota> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        tenants
            .entry(tenant.to_string())
            .or_insert_with(|| {
                // GCRA with a burst of the whole minute's allowance: a quiet tenant may spend
                // its minute at once, a busy one is held to the average.
                Arc::new(TenantQuota {
                    max_concurrent: self.limits.max_concurrent,
                    running: AtomicU32::new(0),
                    rate: RateLimiter::direct(Quota::per_minute(self.limits.per_minute)),
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

    /// Admits one invocation of `tenant`, or says which quota is exhausted.
    pub fn admit(&self, tenant: &str) -> Result<QuotaGuard, QuotaExceeded> {
        self.tenant(tenant).admit()
    }
}

impl TenantQuota {
    /// Admits one invocation, or says which quota is exhausted. A refused request holds
    /// nothing.
    pub fn admit(self: &Arc<Self>) -> Result<QuotaGuard, QuotaExceeded> {
        let max = self.max_concurrent;
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
        match self.rate.check() {
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
}
