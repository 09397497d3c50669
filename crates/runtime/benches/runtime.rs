//! In-process costs of the hello component, each beside the same operation done with plain
//! Wasmtime defaults (on-demand allocator, fresh store) in the same run:
//!
//! - `hot_call`: a request served by a reused instance;
//! - `hot_query`: a request served by a reused instance of the `items` guest that runs one
//!   query (`SELECT id, name FROM items ORDER BY id`, one row) on an edge database
//!   through `edgefn:sql` (goal ≤ 15 µs), beside the hot hello request without a query;
//! - `fresh_call`: a request served by a new instance (`instance_reuse = 1`);
//! - `instantiate`: creating (and destroying) one instance;
//! - `cold_start_cached`: from nothing loaded to one ready instance, native code mapped from
//!   the precompiled cache;
//! - `cold_start_raw`: the same from the raw `.wasm` (compiling).
//!
//! Run with `cargo bench -p edgefn-runtime --bench runtime`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use edgefn_runtime::{
    DiscardLogs, FunctionSettings, InvokeContext, LoadSpec, Runtime, RuntimeConfig, SqlGrant,
};
use http_body_util::{BodyExt as _, Full};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

fn request() -> http::Request<Bytes> {
    http::Request::get("http://example.com/")
        .body(Bytes::new())
        .unwrap()
}

/// The peer: what an embedder gets from Wasmtime's defaults.
struct PeerState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
}

impl WasiView for PeerState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for PeerState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: Default::default(),
        }
    }
}

struct Peer {
    engine: Engine,
    linker: Linker<PeerState>,
}

impl Peer {
    fn new() -> Self {
        let engine = Engine::default();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).unwrap();
        Self { engine, linker }
    }

    fn store(&self) -> Store<PeerState> {
        Store::new(
            &self.engine,
            PeerState {
                wasi: WasiCtx::builder().build(),
                http: WasiHttpCtx::new(),
                table: ResourceTable::new(),
            },
        )
    }

    fn pre(&self, component: &Component) -> ProxyPre<PeerState> {
        ProxyPre::new(self.linker.instantiate_pre(component).unwrap()).unwrap()
    }

    async fn fresh_call(&self, pre: &ProxyPre<PeerState>) {
        let mut store = self.store();
        let proxy = pre.instantiate_async(&mut store).await.unwrap();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let request = request().map(|b| {
            Full::new(b)
                .map_err(|n: std::convert::Infallible| -> wasmtime_wasi_http::Error { match n {} })
        });
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .unwrap();
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .unwrap();
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, incoming, out)
            .await
            .unwrap();
        let response = receiver.await.unwrap().unwrap();
        response.into_body().collect().await.unwrap();
    }
}

fn hello_in(dir: &Path) -> PathBuf {
    edgefn_test_support::guest_in(dir, "hello")
}

fn settings(reuse: u32, min_hot: u32) -> FunctionSettings {
    FunctionSettings {
        instance_reuse: Some(reuse),
        min_hot_instances: min_hot,
        ..FunctionSettings::default()
    }
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let artifact = hello_in(dir.path());
    let runtime =
        rt.block_on(async { Runtime::new(RuntimeConfig::new(Arc::new(DiscardLogs))).unwrap() });
    let spec = |reuse, min_hot| LoadSpec {
        function_id: "hello".into(),
        version: 1,
        artifact: artifact.clone(),
        sha256: None,
        settings: settings(reuse, min_hot),
        share: Default::default(),
    };
    let hot = rt.block_on(runtime.load(spec(1_000_000, 1))).unwrap();
    let fresh = rt.block_on(runtime.load(spec(1, 0))).unwrap();
    let peer = Peer::new();
    let peer_component = Component::from_file(&peer.engine, &artifact).unwrap();
    let peer_pre = peer.pre(&peer_component);
    let peer_native = dir.path().join("peer.cwasm");
    std::fs::write(
        &peer_native,
        peer.engine
            .precompile_component(&std::fs::read(&artifact).unwrap())
            .unwrap(),
    )
    .unwrap();

    let mut group = c.benchmark_group("hot_call");
    group.bench_function("edgefn", |b| {
        b.to_async(&rt).iter(|| async {
            hot.handle(request(), InvokeContext::default())
                .await
                .unwrap()
        })
    });
    group.finish();

    // One query per request: the items guest on a database of one row.
    let mut config = RuntimeConfig::new(Arc::new(DiscardLogs));
    config.database_dir = Some(dir.path().to_path_buf());
    let with_databases = rt.block_on(async { Runtime::new(config).unwrap() });
    let shop = edgefn_edgedb::open_node_database(&dir.path().join("shop.sqlite")).unwrap();
    shop.execute_batch(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL); \
         INSERT INTO items (name) VALUES ('pen');",
    )
    .unwrap();
    let items = rt
        .block_on(with_databases.load(LoadSpec {
            function_id: "items".into(),
            version: 1,
            artifact: edgefn_test_support::guest_in(dir.path(), "items"),
            sha256: None,
            settings: FunctionSettings {
                databases: vec![SqlGrant {
                    name: "shop".into(),
                    file: "shop.sqlite".into(),
                    read_only: true,
                    required_seq: 0,
                }],
                ..settings(1_000_000, 1)
            },
            share: Default::default(),
        }))
        .unwrap();
    let items_request = || {
        http::Request::get("http://example.com/items")
            .body(Bytes::new())
            .unwrap()
    };
    let listed = rt
        .block_on(items.handle(items_request(), InvokeContext::default()))
        .unwrap();
    assert_eq!(listed.response.status(), 200);
    let mut group = c.benchmark_group("hot_query");
    group.bench_function("edgefn-items-one-query", |b| {
        b.to_async(&rt).iter(|| async {
            items
                .handle(items_request(), InvokeContext::default())
                .await
                .unwrap()
        })
    });
    group.bench_function("edgefn-hello-no-query", |b| {
        b.to_async(&rt).iter(|| async {
            hot.handle(request(), InvokeContext::default())
                .await
                .unwrap()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("fresh_call");
    group.bench_function("edgefn", |b| {
        b.to_async(&rt).iter(|| async {
            fresh
                .handle(request(), InvokeContext::default())
                .await
                .unwrap()
        })
    });
    group.bench_function("wasmtime-defaults", |b| {
        b.to_async(&rt).iter(|| peer.fresh_call(&peer_pre))
    });
    group.finish();

    let mut group = c.benchmark_group("instantiate");
    group.bench_function("edgefn-pooling", |b| {
        b.to_async(&rt)
            .iter(|| async { fresh.instantiate_once().await.unwrap() })
    });
    // The same with other amounts of memory kept resident per slot (see RuntimeConfig).
    for keep in [0usize, 64 << 10, 256 << 10] {
        let mut config = RuntimeConfig::new(Arc::new(DiscardLogs));
        config.pool_memory_keep_resident_bytes = keep;
        config.pool_instances = 100;
        let variant = rt.block_on(async { Runtime::new(config).unwrap() });
        let loaded = rt.block_on(variant.load(spec(1, 0))).unwrap();
        group.bench_function(format!("edgefn-pooling-keep-{}k", keep >> 10), |b| {
            b.to_async(&rt)
                .iter(|| async { loaded.instantiate_once().await.unwrap() })
        });
        group.bench_function(format!("edgefn-fresh-call-keep-{}k", keep >> 10), |b| {
            b.to_async(&rt).iter(|| async {
                loaded
                    .handle(request(), InvokeContext::default())
                    .await
                    .unwrap()
            })
        });
    }
    group.bench_function("wasmtime-on-demand", |b| {
        b.to_async(&rt).iter(|| async {
            let mut store = peer.store();
            peer_pre.instantiate_async(&mut store).await.unwrap();
        })
    });
    group.finish();

    let mut group = c.benchmark_group("cold_start_cached");
    group.bench_function("edgefn", |b| {
        b.to_async(&rt)
            .iter(|| async { runtime.load(spec(1, 1)).await.unwrap() })
    });
    group.bench_function("wasmtime-deserialize-file", |b| {
        b.to_async(&rt).iter(|| async {
            // SAFETY: written above by `precompile_component` of this engine.
            #[expect(unsafe_code, reason = "benchmark peer of our precompiled cache")]
            let component =
                unsafe { Component::deserialize_file(&peer.engine, &peer_native).unwrap() };
            let pre = peer.pre(&component);
            let mut store = peer.store();
            pre.instantiate_async(&mut store).await.unwrap();
        })
    });
    group.finish();

    let mut group = c.benchmark_group("cold_start_raw");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("edgefn", |b| {
        b.to_async(&rt).iter(|| async {
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                let path = entry.unwrap().path();
                if path.to_string_lossy().contains(".cwasm") && !path.ends_with("peer.cwasm") {
                    std::fs::remove_file(path).unwrap();
                }
            }
            runtime.load(spec(1, 1)).await.unwrap()
        })
    });
    group.bench_function("wasmtime-compile", |b| {
        b.to_async(&rt).iter(|| async {
            let component = Component::from_file(&peer.engine, &artifact).unwrap();
            let pre = peer.pre(&component);
            let mut store = peer.store();
            pre.instantiate_async(&mut store).await.unwrap();
        })
    });
    group.finish();
}

criterion_group!(name = runtime; config = Criterion::default().measurement_time(Duration::from_secs(5)); targets = benches);
criterion_main!(runtime);
