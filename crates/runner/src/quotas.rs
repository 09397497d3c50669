//! Per-tenant quotas: concurrent executions and invocations per minute. Over either, a
//! request is refused with 429 and a `Retry-After`.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

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

pub struct TenantQuotas {
    limits: QuotaLimits,
    rate: DefaultKeyedRateLimiter<String>,
    running: Mutex<HashMap<String, u32>>,
}

/// Holds one concurrent-execution slot of a tenant until dropped.
pub struct QuotaGuard {
    quotas: Arc<TenantQuotas>,
    tenant: String,
}

impl Drop for QuotaGuard {
    fn drop(&mut self) {
        let mut running = self
            .quotas
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = running.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                running.remove(&self.tenant);
            }
        }
    }
}

impl TenantQuotas {
    pub fn new(limits: QuotaLimits) -> Arc<Self> {
        // GCRA with a burst of the whole minute's allowance: a quiet tenant may spend its
        // minute at once, a busy one is held to the average.
        let quota = Quota::per_minute(limits.per_minute);
        Arc::new(Self {
            limits,
            rate: RateLimiter::keyed(quota),
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Admits one invocation of `tenant`, or says which quota is exhausted.
    pub fn admit(self: &Arc<Self>, tenant: &str) -> Result<QuotaGuard, QuotaExceeded> {
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            let count = running.entry(tenant.to_string()).or_insert(0);
            if *count >= self.limits.max_concurrent {
                return Err(QuotaExceeded::Concurrency);
            }
            *count += 1;
        }
        let guard = QuotaGuard {
            quotas: self.clone(),
            tenant: tenant.to_string(),
        };
        match self.rate.check_key(&tenant.to_string()) {
            Ok(()) => Ok(guard),
            Err(not_until) => {
                drop(guard);
                Err(QuotaExceeded::Rate {
                    retry_after: not_until.wait_time_from(DefaultClock::default().now()),
                })
            }
        }
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
        assert!(quotas.running.lock().unwrap().is_empty());
    }
}
