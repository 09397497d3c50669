//! The Wasmtime configuration of the runtime and of the compile worker, which must agree
//! on everything that changes generated code.

use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::WASM_PAGE;

/// The engine settings that change generated code; the compile worker must use the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EngineSettings {
    pub(crate) max_memory_pages: u64,
    pub(crate) fuel: bool,
    /// Winch, Wasmtime's baseline compiler, instead of Cranelift.
    pub(crate) winch: bool,
}

impl EngineSettings {
    /// The worker's `FLAGS` argument: `fuel` or `no-fuel`, then `,winch` for Winch.
    pub(crate) fn flags(self) -> String {
        let fuel = if self.fuel { "fuel" } else { "no-fuel" };
        if self.winch {
            format!("{fuel},winch")
        } else {
            fuel.to_string()
        }
    }

    pub(crate) fn from_flags(max_memory_pages: u64, flags: &str) -> Self {
        let flags: Vec<&str> = flags.split(',').collect();
        Self {
            max_memory_pages,
            fuel: flags.contains(&"fuel"),
            winch: flags.contains(&"winch"),
        }
    }
}

/// What names the code an engine produces and accepts: a hash of Wasmtime's compatibility
/// key (version, target and CPU features, settings that change code). Precompiled code is
/// filed and requested under it; a control plane compiles for a node only when its own
/// compiler's hash for the node's settings is the node's.
pub(crate) fn engine_hash(engine: &wasmtime::Engine) -> String {
    use std::hash::{Hash as _, Hasher as _};
    // SipHash with fixed keys: the same in every process of this build.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Wasmtime configuration shared by the runtime and the compile worker. `pool_instances` is
/// `None` in the worker, which only compiles and so needs no instance slots.
pub(crate) fn wasmtime_config(settings: EngineSettings, pool: Option<(u32, usize)>) -> Config {
    let mut config = Config::new();
    // Deadlines: epochs cost one load and compare per loop header and function entry; fuel
    // costs a counter update per basic block, so it is opt-in.
    config.epoch_interruption(true);
    config.consume_fuel(settings.fuel);
    if settings.winch {
        // About 4× faster to compile than Cranelift (bench/RESULTS.md), slower code: what a
        // node runs while the Cranelift code of a new version is being made.
        config.strategy(wasmtime::Strategy::Winch);
    }
    config.wasm_component_model(true);
    config.parallel_compilation(true);
    if let Some((instances, memory_keep_resident)) = pool {
        let mut pool = PoolingAllocationConfig::new();
        // One component instance per hot instance; Rust components have one memory and a
        // handful of core instances and tables, so the totals below leave headroom.
        pool.total_component_instances(instances);
        pool.total_core_instances(instances.saturating_mul(8));
        pool.total_memories(instances.saturating_mul(2));
        pool.total_tables(instances.saturating_mul(4));
        pool.total_stacks(instances);
        pool.max_memory_size((settings.max_memory_pages * WASM_PAGE) as usize);
        // Memory kept resident in each slot is zeroed with memset when an instance is
        // destroyed, instead of being returned to the kernel; see
        // `RuntimeConfig::pool_memory_keep_resident_bytes` for the measured trade-off.
        pool.linear_memory_keep_resident(memory_keep_resident);
        pool.table_keep_resident(memory_keep_resident.min(64 << 10));
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

#[cfg(test)]
mod tests {
    use super::EngineSettings;

    #[test]
    fn worker_flags_name_fuel_and_the_compiler() {
        for fuel in [false, true] {
            for winch in [false, true] {
                let settings = EngineSettings {
                    max_memory_pages: 7,
                    fuel,
                    winch,
                };
                assert_eq!(EngineSettings::from_flags(7, &settings.flags()), settings);
            }
        }
        assert_eq!(EngineSettings::from_flags(1, "no-fuel").flags(), "no-fuel");
        assert_eq!(
            EngineSettings::from_flags(1, "fuel,winch").flags(),
            "fuel,winch"
        );
    }
}
