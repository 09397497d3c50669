//! Fair share of the node's instance slots (`--pool-instances`) among tenants (projects):
//! pure, applied to every manifest or desired state before anything loads.
//!
//! - A tenant's pre-warmed instances (the sum of its functions' `min_hot_instances`) and any
//!   one function's `max_hot_instances` are capped at the tenant's share of the slots
//!   (`--pool-share-percent`, or the project's `pool_share_percent` from the control plane).
//! - Pre-warming never takes the last free slots: all tenants' pre-warmed instances
//!   together stay within `--prewarm-percent` of the slots, so on-demand instances of
//!   every tenant always find room.
//!
//! - When an instantiation finds no free slot, the runtime destroys an idle instance of a
//!   tenant holding more than its share first (`edgefn_runtime::PoolShare`).
//!
//! Reductions are made in the order functions are listed, so they are stable from one
//! reconcile to the next (a function keeps its slot, and its pool, across reconciles).

use std::collections::HashMap;

use crate::spec::FunctionEntry;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareLimits {
    /// Instance slots of the node.
    pub slots: u32,
    /// A tenant's share when the control plane sets none, in percent.
    pub default_share_percent: u8,
    /// All pre-warmed instances together, in percent of the slots.
    pub prewarm_percent: u8,
}

fn percent_of(slots: u32, percent: u8) -> u32 {
    (u64::from(slots) * u64::from(percent.min(100)) / 100) as u32
}

/// The instance slots a tenant with `share` percent (or the default) is entitled to.
pub fn tenant_slots(limits: ShareLimits, share: Option<u8>) -> u32 {
    percent_of(limits.slots, share.unwrap_or(limits.default_share_percent)).max(1)
}

/// `entries` with their hot-instance settings capped to the tenants' shares.
pub fn apply(
    entries: &[FunctionEntry],
    limits: ShareLimits,
    share_of: impl Fn(&str) -> Option<u8>,
) -> Vec<FunctionEntry> {
    let mut prewarm_left = percent_of(limits.slots, limits.prewarm_percent);
    let mut tenant_left: HashMap<&str, u32> = HashMap::new();
    entries
        .iter()
        .map(|entry| {
            let tenant_slots = tenant_slots(limits, share_of(&entry.tenant));
            let left = tenant_left.entry(&entry.tenant).or_insert(tenant_slots);
            let mut capped = entry.clone();
            let settings = &mut capped.settings;
            settings.max_hot_instances = settings.max_hot_instances.clamp(1, tenant_slots);
            let min_hot = settings
                .min_hot_instances
                .min(settings.max_hot_instances)
                .min(*left)
                .min(prewarm_left);
            *left -= min_hot;
            prewarm_left -= min_hot;
            settings.min_hot_instances = min_hot;
            capped
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::spec::ArtifactSource;

    fn entry(id: usize, tenant: &str, min: u32, max: u32) -> FunctionEntry {
        FunctionEntry {
            id: format!("f{id}"),
            version: 1,
            source: ArtifactSource::Path("x.wasm".into()),
            sha256: None,
            tenant: tenant.into(),
            settings: edgefn_runtime::FunctionSettings {
                min_hot_instances: min,
                max_hot_instances: max,
                ..Default::default()
            },
            retry: 0,
        }
    }

    const LIMITS: ShareLimits = ShareLimits {
        slots: 1000,
        default_share_percent: 50,
        prewarm_percent: 75,
    };

    #[test]
    fn one_project_asking_for_900_prewarmed_instances_gets_its_share() {
        let capped = apply(
            &[entry(0, "a", 900, 900), entry(1, "b", 1, 16)],
            LIMITS,
            |_| None,
        );
        assert_eq!(capped[0].settings.min_hot_instances, 500);
        assert_eq!(capped[0].settings.max_hot_instances, 500);
        assert_eq!(capped[1].settings.min_hot_instances, 1);
        // With a share of 10% set by the control plane:
        let capped = apply(&[entry(0, "a", 900, 900)], LIMITS, |t| {
            (t == "a").then_some(10)
        });
        assert_eq!(capped[0].settings.min_hot_instances, 100);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Whatever the settings: a tenant's pre-warmed total and each function's maximum
        /// stay within its share, all pre-warming within the pre-warm part of the slots,
        /// and every function keeps at least one instance.
        #[test]
        fn shares_hold(
            asks in prop::collection::vec((0usize..3, 0u32..2000, 0u32..2000), 0..20),
            slots in 1u32..2000,
            share in 1u8..=100,
            prewarm in 0u8..=100,
        ) {
            let tenants = ["a", "b", "c"];
            let entries: Vec<FunctionEntry> = asks
                .iter()
                .enumerate()
                .map(|(i, (t, min, max))| entry(i, tenants[*t], *min, *max))
                .collect();
            let limits = ShareLimits { slots, default_share_percent: share, prewarm_percent: prewarm };
            let capped = apply(&entries, limits, |_| None);
            let tenant_slots = percent_of(slots, share).max(1);
            let mut total = 0;
            for tenant in tenants {
                let prewarmed: u32 = capped.iter().filter(|e| e.tenant == tenant).map(|e| e.settings.min_hot_instances).sum();
                prop_assert!(prewarmed <= tenant_slots);
                total += prewarmed;
            }
            prop_assert!(total <= percent_of(slots, prewarm));
            for (before, after) in entries.iter().zip(&capped) {
                prop_assert!(after.settings.max_hot_instances >= 1);
                prop_assert!(after.settings.max_hot_instances <= tenant_slots);
                prop_assert!(after.settings.min_hot_instances <= after.settings.max_hot_instances);
                prop_assert!(after.settings.min_hot_instances <= before.settings.min_hot_instances);
            }
        }
    }
}
