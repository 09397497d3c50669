//! What a heartbeat reports of the node's use: this process's CPU and memory
//! ([`UsageSampler`]: CPU time from `/proc/self/stat` over wall time since the previous
//! sample, resident memory from `/proc/self/statm`), and the invocations, errors and guest
//! CPU time since the previous heartbeat ([`UsageTotals`]).

use std::collections::BTreeMap;
use std::time::Instant;

use edgefn_proto::sync::{FunctionUsage, NodeUsage, TenantUsage};

use crate::node::Node;

/// Clock ticks per second of `/proc` CPU times (`USER_HZ`, 100 on every Linux ABI).
const TICKS_PER_SECOND: f64 = 100.0;

pub struct UsageSampler {
    last: Option<(Instant, u64)>,
}

impl Default for UsageSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl UsageSampler {
    pub fn new() -> Self {
        Self {
            last: cpu_ticks().map(|t| (Instant::now(), t)),
        }
    }

    /// CPU % since the previous sample (100 = one core busy) and resident bytes now; zeros
    /// where `/proc` cannot be read.
    pub fn sample(&mut self) -> (f64, u64) {
        let now = Instant::now();
        let ticks = cpu_ticks();
        let percent = match (self.last, ticks) {
            (Some((then, before)), Some(after)) => {
                let wall = now.duration_since(then).as_secs_f64();
                if wall > 0.0 {
                    (after.saturating_sub(before) as f64 / TICKS_PER_SECOND) / wall * 100.0
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        if let Some(ticks) = ticks {
            self.last = Some((now, ticks));
        }
        (percent.clamp(0.0, 100_000.0), resident_bytes().unwrap_or(0))
    }
}

/// User plus system time of this process, in clock ticks.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain numbers.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Cumulative per-function (invocations, errors) and per-tenant guest microseconds.
#[derive(Clone, Default)]
pub(crate) struct UsageTotals {
    functions: BTreeMap<String, (u64, u64)>,
    tenants: BTreeMap<String, u64>,
}

impl UsageTotals {
    pub(crate) fn now(node: &Node) -> Self {
        let functions = node
            .functions()
            .iter()
            .filter_map(|(id, versions)| {
                // Every version of a function shares its counters (labelled by function id).
                let slot = versions.values().next()?;
                Some((
                    id.clone(),
                    (slot.hot.invocations.get(), slot.hot.failures.get()),
                ))
            })
            .collect();
        Self {
            functions,
            tenants: node.quotas.cpu_micros().into_iter().collect(),
        }
    }

    /// What happened between `before` and `self`; only what changed.
    pub(crate) fn since(&self, before: &Self) -> NodeUsage {
        let functions = self
            .functions
            .iter()
            .filter_map(|(id, (invocations, errors))| {
                let (was_invocations, was_errors) =
                    before.functions.get(id).copied().unwrap_or_default();
                let usage = FunctionUsage {
                    function_id: id.clone(),
                    invocations: invocations.saturating_sub(was_invocations),
                    errors: errors.saturating_sub(was_errors),
                };
                (usage.invocations > 0 || usage.errors > 0).then_some(usage)
            })
            .collect();
        let tenants = self
            .tenants
            .iter()
            .filter_map(|(tenant, micros)| {
                let spent = micros.saturating_sub(before.tenants.get(tenant).copied().unwrap_or(0));
                (spent >= 1000).then(|| TenantUsage {
                    tenant: tenant.clone(),
                    cpu_ms: spent / 1000,
                })
            })
            .collect();
        NodeUsage { functions, tenants }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_process_reports_cpu_and_memory() {
        let mut sampler = UsageSampler::new();
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 200 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let (cpu, memory) = sampler.sample();
        assert!(cpu > 20.0, "cpu {cpu}");
        assert!(memory > 1 << 20, "memory {memory}");
    }

    #[test]
    fn usage_reports_only_what_changed_since_the_last_heartbeat() {
        let before = UsageTotals {
            functions: [("a".to_string(), (10, 1)), ("b".to_string(), (5, 0))].into(),
            tenants: [("t".to_string(), 1_000_000)].into(),
        };
        let now = UsageTotals {
            functions: [
                ("a".to_string(), (15, 3)),
                ("b".to_string(), (5, 0)),
                ("c".to_string(), (2, 0)),
            ]
            .into(),
            tenants: [("t".to_string(), 1_250_000), ("u".to_string(), 10)].into(),
        };
        let usage = now.since(&before);
        assert_eq!(
            usage.functions,
            vec![
                FunctionUsage {
                    function_id: "a".into(),
                    invocations: 5,
                    errors: 2
                },
                FunctionUsage {
                    function_id: "c".into(),
                    invocations: 2,
                    errors: 0
                },
            ]
        );
        assert_eq!(
            usage.tenants,
            vec![TenantUsage {
                tenant: "t".into(),
                cpu_ms: 250
            }]
        );
    }
}
