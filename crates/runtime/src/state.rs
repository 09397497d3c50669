//! What each store holds: the WASI contexts (deny by default), outbound hooks, logging and
//! limits. One type for components, one for preview 1 modules.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::limits::{GuestLimits, HasLimits};
use crate::logging::{GuestLogger, LogSource};
use crate::outbound::{OutboundHooks, OutboundPolicy};

/// Store data of a `wasi:http` component instance.
pub(crate) struct ComponentState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutboundHooks,
    pub(crate) logger: GuestLogger,
    pub(crate) limits: GuestLimits,
    sql: Arc<crate::sql::SqlGrants>,
}

/// The WASI context every guest gets: only the configured environment, empty stdin,
/// stdout/stderr captured as logs, no preopened directories (so no file access), and no
/// sockets, UDP or name lookup (the builder's defaults, kept explicit here). Clocks and
/// random are allowed.
fn sandboxed_wasi(env: &[(String, String)], logger: &GuestLogger) -> WasiCtxBuilder {
    let mut builder = WasiCtxBuilder::new();
    builder
        .envs(env)
        .stdout(logger.stream(LogSource::Stdout))
        .stderr(logger.stream(LogSource::Stderr))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }));
    builder
}

impl ComponentState {
    pub(crate) fn new(
        env: &[(String, String)],
        logger: GuestLogger,
        outbound: Arc<OutboundPolicy>,
        limits: GuestLimits,
        sql: Arc<crate::sql::SqlGrants>,
    ) -> Self {
        Self {
            sql,
            wasi: sandboxed_wasi(env, &logger).build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: OutboundHooks {
                connections: outbound.instance_connections(),
                policy: outbound,
            },
            logger,
            limits,
        }
    }
}

impl ComponentState {
    /// What `edgefn:sql` sees of the store.
    pub(crate) fn sql_view(&mut self) -> crate::sql::SqlView<'_> {
        crate::sql::SqlView {
            table: &mut self.table,
            grants: &self.sql,
            deadline: self.limits.deadline,
        }
    }
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl HasLimits for ComponentState {
    fn limits(&mut self) -> &mut GuestLimits {
        &mut self.limits
    }
}

/// Store data of a preview 1 CGI module instance (one request each).
pub(crate) struct CgiState {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) limits: GuestLimits,
}

impl CgiState {
    /// `env` holds the function's variables followed by the CGI request variables.
    pub(crate) fn new(
        env: &[(String, String)],
        stdin: bytes::Bytes,
        stdout: MemoryOutputPipe,
        logger: &GuestLogger,
        limits: GuestLimits,
    ) -> Self {
        let mut builder = sandboxed_wasi(env, logger);
        builder
            .stdin(MemoryInputPipe::new(stdin))
            .stdout(stdout)
            .arg("handler");
        Self {
            wasi: builder.build_p1(),
            limits,
        }
    }
}

impl HasLimits for CgiState {
    fn limits(&mut self) -> &mut GuestLimits {
        &mut self.limits
    }
}
