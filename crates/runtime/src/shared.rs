//! What every function of a runtime shares (`RuntimeInner`): the engine, the linkers, the
//! node-wide memory budget and instance pools, each function's log budget and outbound
//! connection allowance, the compile slots. `engine.rs` makes it; `function.rs` uses it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use wasmtime::component::Linker as ComponentLinker;
use wasmtime::{Engine, Linker};

use crate::config::RuntimeConfig;
use crate::logging::LogBudget;
use crate::pool::{MemoryBudget, PoolRegistry};
use crate::state::{CgiState, ComponentState};
use crate::wasmtime_config::EngineSettings;

pub(crate) struct RuntimeInner {
    pub(crate) engine: Engine,
    pub(crate) config: RuntimeConfig,
    pub(crate) settings: EngineSettings,
    pub(crate) engine_hash: String,
    pub(crate) component_linker: ComponentLinker<ComponentState>,
    pub(crate) module_linker: Linker<CgiState>,
    pub(crate) budget: Arc<MemoryBudget>,
    pub(crate) pools: PoolRegistry,
    /// What all versions of one function share: their log budget and open outbound
    /// connections (a new version does not get a fresh allowance of either).
    pub(crate) per_function: Mutex<HashMap<String, PerFunction>>,
    pub(crate) stop_ticker: Arc<AtomicBool>,
    /// Compilations running at once (`CompilerConfig::max_concurrent`).
    pub(crate) compilations: tokio::sync::Semaphore,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

#[derive(Clone)]
pub(crate) struct PerFunction {
    pub(crate) log_budget: Arc<LogBudget>,
    pub(crate) connections: Arc<tokio::sync::Semaphore>,
}

impl RuntimeInner {
    pub(crate) fn per_function(&self, function_id: &str) -> PerFunction {
        let mut shared = self.per_function.lock().unwrap_or_else(|e| e.into_inner());
        shared
            .entry(function_id.to_string())
            .or_insert_with(|| PerFunction {
                log_budget: Arc::new(LogBudget::new(self.config.log_records_per_second)),
                connections: Arc::new(tokio::sync::Semaphore::new(
                    self.config.outbound_connections_per_function.max(1),
                )),
            })
            .clone()
    }
}
