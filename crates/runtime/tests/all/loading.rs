//! What `Runtime::load` refuses, and the precompiled-code cache.

use std::time::{Duration, Instant};

use edgefn_runtime::{CompilerConfig, FunctionSettings, LoadSpec, RuntimeError};

use crate::{Fixture, artifact, call};

fn write_artifact(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

async fn load_bytes(
    fixture: &Fixture,
    bytes: &[u8],
    settings: FunctionSettings,
) -> Result<edgefn_runtime::Function, RuntimeError> {
    fixture
        .runtime
        .load(LoadSpec {
            function_id: "f".into(),
            version: 1,
            artifact: write_artifact("f.wasm", bytes),
            sha256: None,
            settings,
            share: Default::default(),
        })
        .await
}

fn reason(result: Result<edgefn_runtime::Function, RuntimeError>) -> String {
    match result {
        Err(RuntimeError::InvalidArtifact { reason }) => reason,
        Err(other) => panic!("expected InvalidArtifact, got {other}"),
        Ok(_) => panic!("expected InvalidArtifact, the artifact loaded"),
    }
}

#[tokio::test]
async fn refuses_bytes_that_are_not_webassembly() {
    let fixture = Fixture::new();
    let why = reason(
        load_bytes(
            &fixture,
            b"#!/bin/sh\necho hi\n",
            FunctionSettings::default(),
        )
        .await,
    );
    assert!(why.contains("not a WebAssembly binary"), "{why}");
}

#[tokio::test]
async fn refuses_a_truncated_component() {
    let fixture = Fixture::new();
    let bytes = std::fs::read(artifact("hello")).unwrap();
    let why = reason(
        load_bytes(
            &fixture,
            &bytes[..bytes.len() / 2],
            FunctionSettings::default(),
        )
        .await,
    );
    assert!(!why.is_empty());
}

#[tokio::test]
async fn refuses_a_component_with_imports_the_host_lacks_and_names_them() {
    let fixture = Fixture::new();
    let component = wat::parse_str(
        r#"(component
            (import "acme:missing/api@1.0.0" (instance (export "f" (func))))
        )"#,
    )
    .unwrap();
    let why = reason(load_bytes(&fixture, &component, FunctionSettings::default()).await);
    assert!(why.contains("acme:missing/api@1.0.0"), "{why}");
}

#[tokio::test]
async fn refuses_a_component_without_the_http_handler() {
    let fixture = Fixture::new();
    let component = wat::parse_str("(component)").unwrap();
    let why = reason(load_bytes(&fixture, &component, FunctionSettings::default()).await);
    assert!(why.contains("wasi:http/incoming-handler"), "{why}");
}

#[tokio::test]
async fn refuses_a_module_without_its_entrypoint() {
    let fixture = Fixture::new();
    let module = wat::parse_str(r#"(module (func (export "main")))"#).unwrap();
    let why = reason(load_bytes(&fixture, &module, FunctionSettings::default()).await);
    assert!(why.contains("\"_start\""), "{why}");
    // The same module with its export named as the entrypoint loads.
    let settings = FunctionSettings {
        entrypoint: Some("main".into()),
        ..FunctionSettings::default()
    };
    load_bytes(&fixture, &module, settings).await.unwrap();
}

#[tokio::test]
async fn refuses_a_module_whose_initial_memory_exceeds_memory_pages() {
    let fixture = Fixture::new();
    let settings = FunctionSettings {
        memory_pages: 2,
        ..FunctionSettings::default()
    };
    let why = reason(fixture.load("hello", settings).await);
    assert!(why.contains("memory_pages (2)"), "{why}");
}

#[tokio::test]
async fn refuses_a_sha256_mismatch() {
    let fixture = Fixture::new();
    let result = fixture
        .runtime
        .load(LoadSpec {
            function_id: "hello".into(),
            version: 1,
            artifact: artifact("hello"),
            sha256: Some("00".repeat(32)),
            settings: FunctionSettings::default(),
            share: Default::default(),
        })
        .await;
    assert!(
        matches!(result, Err(RuntimeError::Sha256Mismatch { ref expected, .. }) if *expected == "00".repeat(32)),
        "{:?}",
        result.err()
    );
}

#[tokio::test]
async fn refuses_out_of_range_settings_with_every_problem() {
    let fixture = Fixture::new();
    let settings = FunctionSettings {
        memory_pages: 0,
        max_execution_ms: 0,
        instance_reuse: Some(0),
        ..FunctionSettings::default()
    };
    match fixture.load("hello", settings).await {
        Err(RuntimeError::InvalidSettings { reason }) => {
            assert!(reason.contains("memory_pages"), "{reason}");
            assert!(reason.contains("max_execution_ms"), "{reason}");
            assert!(reason.contains("instance_reuse"), "{reason}");
        }
        other => panic!("expected InvalidSettings, got {:?}", other.err()),
    }
    let too_big = FunctionSettings {
        memory_pages: 1 << 20,
        ..FunctionSettings::default()
    };
    assert!(matches!(
        fixture.load("hello", too_big).await,
        Err(RuntimeError::InvalidSettings { .. })
    ));
}

#[tokio::test]
async fn refuses_an_artifact_over_the_size_limit_without_reading_it() {
    let fixture = Fixture::new();
    let path = write_artifact("huge.wasm", b"\0asm\x01\0\0\0");
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    let result = fixture
        .runtime
        .load(LoadSpec {
            function_id: "huge".into(),
            version: 1,
            artifact: path,
            sha256: None,
            settings: FunctionSettings::default(),
            share: Default::default(),
        })
        .await;
    assert!(reason(result).contains("over the limit"));
}

/// A module whose `_start` has `body` as its code (no locals, `end` appended).
fn module_with_body(body_instructions: &[u8]) -> Vec<u8> {
    fn leb(mut value: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn section(id: u8, payload: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(payload.len(), out);
        out.extend_from_slice(payload);
    }
    let mut body = vec![0u8]; // no locals
    body.extend_from_slice(body_instructions);
    body.push(0x0b);
    let mut code = vec![1u8];
    leb(body.len(), &mut code);
    code.extend_from_slice(&body);
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 0, 0], &mut module); // type: [] -> []
    section(3, &[1, 0], &mut module); // one function of type 0
    section(
        7,
        &[1, 6, b'_', b's', b't', b'a', b'r', b't', 0, 0],
        &mut module,
    ); // export _start
    section(10, &code, &mut module);
    module
}

#[tokio::test]
async fn a_pathological_module_is_stopped_by_the_compile_limits_while_others_keep_serving() {
    let fixture = Fixture::with(|config| {
        config.compiler = CompilerConfig {
            timeout: Duration::from_secs(2),
            // Far too little address space for compiling millions of instructions.
            max_memory_bytes: 512 << 20,
            ..config.compiler.clone()
        };
    });
    let hello = fixture
        .load("hello", FunctionSettings::default())
        .await
        .unwrap();
    // One function of three million `i32.const 1; drop` pairs.
    let module = module_with_body(&[0x41, 0x01, 0x1a].repeat(3_000_000));
    let started = Instant::now();
    let compile = load_bytes(&fixture, &module, FunctionSettings::default());
    let serve = async {
        let mut served = 0;
        let mut slowest = Duration::ZERO;
        while started.elapsed() < Duration::from_millis(1500) {
            let call_started = Instant::now();
            call(&hello, "/").await.unwrap();
            slowest = slowest.max(call_started.elapsed());
            served += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (served, slowest)
    };
    let (result, (served, slowest)) = tokio::join!(compile, serve);
    let why = reason(result);
    assert!(why.contains("limit"), "{why}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the compile limit did not hold"
    );
    assert!(served > 10, "only {served} requests served while compiling");
    assert!(
        slowest < Duration::from_millis(500),
        "a request took {slowest:?} while compiling"
    );
}

#[tokio::test]
async fn precompiled_code_is_cached_beside_the_artifact_and_survives_tampering() {
    let fixture = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let path = edgefn_test_support::guest_in(dir.path(), "hello");
    let spec = LoadSpec {
        function_id: "hello".into(),
        version: 1,
        artifact: path.clone(),
        sha256: None,
        settings: FunctionSettings::default(),
        share: Default::default(),
    };
    fixture.runtime.load(spec.clone()).await.unwrap();
    let cached: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(cached.len(), 1, "one precompiled file beside the artifact");
    let sha = edgefn_runtime::sha256_hex(&std::fs::read(&path).unwrap());
    assert!(
        cached[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&sha)
    );

    // A second load maps the cached code instead of compiling.
    let modified = std::fs::metadata(&cached[0]).unwrap().modified().unwrap();
    let started = Instant::now();
    fixture.runtime.load(spec.clone()).await.unwrap();
    let warm_load = started.elapsed();
    assert_eq!(
        std::fs::metadata(&cached[0]).unwrap().modified().unwrap(),
        modified
    );

    // Corrupt the cached code: it is detected, thrown away and rebuilt, never executed.
    let mut bytes = std::fs::read(&cached[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&cached[0], &bytes).unwrap();
    let hello = fixture.runtime.load(spec).await.unwrap();
    assert_eq!(
        crate::body_text(&call(&hello, "/").await.unwrap()),
        "Hello, edgefn!\n"
    );
    assert_ne!(
        std::fs::read(&cached[0]).unwrap(),
        bytes,
        "the corrupt file was replaced"
    );
    assert!(
        warm_load < Duration::from_secs(1),
        "loading from the cache took {warm_load:?}"
    );
}

#[tokio::test]
async fn a_deeply_nested_module_is_handled_without_harming_the_node() {
    let fixture = Fixture::with(|config| {
        config.compiler = CompilerConfig {
            timeout: Duration::from_secs(5),
            ..config.compiler.clone()
        };
    });
    let hello = fixture
        .load("hello", FunctionSettings::default())
        .await
        .unwrap();
    // 200,000 nested `block`s, then as many `end`s.
    let depth = 200_000;
    let mut body = [0x02, 0x40].repeat(depth);
    body.extend(std::iter::repeat_n(0x0b, depth));
    let result = load_bytes(
        &fixture,
        &module_with_body(&body),
        FunctionSettings::default(),
    )
    .await;
    // Whether Wasmtime accepts this depth is its business; ours is a clean answer either way.
    match result {
        Ok(_) | Err(RuntimeError::InvalidArtifact { .. }) => {}
        Err(other) => panic!("unexpected error: {other}"),
    }
    assert_eq!(
        crate::body_text(&call(&hello, "/").await.unwrap()),
        "Hello, edgefn!\n"
    );
}

/// Native code made by another process's compile worker (a control plane's) is what this
/// runtime maps: the worker names it with the runtime's own engine hash, and code installed
/// under its checked hash loads without compiling here.
#[tokio::test]
async fn code_compiled_by_a_separate_worker_is_installed_and_mapped() {
    let fixture = Fixture::new();
    let identity = fixture.runtime.engine_identity();
    let worker = env!("CARGO_BIN_EXE_edgefn-compile-worker");
    let fuel = if identity.fuel { "fuel" } else { "no-fuel" };
    let pages = identity.max_memory_pages.to_string();
    let hash = std::process::Command::new(worker)
        .args(["compile-worker", "engine-hash", &pages, fuel])
        .output()
        .unwrap();
    assert!(hash.status.success());
    assert_eq!(
        String::from_utf8(hash.stdout).unwrap().trim(),
        identity.hash
    );

    let dir = tempfile::tempdir().unwrap();
    let path = edgefn_test_support::guest_in(dir.path(), "hello");
    let wasm = std::fs::read(&path).unwrap();
    let sha = edgefn_runtime::sha256_hex(&wasm);
    let mut child = std::process::Command::new(worker)
        .args([
            "compile-worker",
            "component",
            &pages,
            fuel,
            &(4u64 << 30).to_string(),
            "60",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(&wasm).unwrap();
    let native = child.wait_with_output().unwrap();
    assert!(native.status.success());
    let native = native.stdout;
    let native_sha = edgefn_runtime::sha256_hex(&native);

    assert!(!fixture.runtime.has_precompiled(&path, &sha));
    let wrong = fixture
        .runtime
        .install_precompiled(&path, &sha, &native[1..], &native_sha);
    assert!(matches!(wrong, Err(RuntimeError::Sha256Mismatch { .. })));
    assert!(!fixture.runtime.has_precompiled(&path, &sha));
    fixture
        .runtime
        .install_precompiled(&path, &sha, &native, &native_sha)
        .unwrap();
    assert!(fixture.runtime.has_precompiled(&path, &sha));
    let installed = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .unwrap();
    let modified = std::fs::metadata(&installed).unwrap().modified().unwrap();
    let hello = fixture
        .runtime
        .load(LoadSpec {
            function_id: "hello".into(),
            version: 1,
            artifact: path.clone(),
            sha256: Some(sha),
            settings: FunctionSettings::default(),
            share: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(
        crate::body_text(&call(&hello, "/").await.unwrap()),
        "Hello, edgefn!\n"
    );
    assert_eq!(
        std::fs::metadata(&installed).unwrap().modified().unwrap(),
        modified,
        "the installed code was mapped, not recompiled"
    );
}

/// A runtime that compiles with Winch (the `--winch-first` tier) runs the same guests, and
/// files its code under an engine hash of its own, never mistaken for Cranelift code.
#[tokio::test]
async fn winch_code_answers_and_is_filed_apart_from_cranelift_code() {
    let cranelift = Fixture::new();
    let winch = Fixture::with(|config| config.winch = true);
    assert_ne!(
        cranelift.runtime.engine_identity().hash,
        winch.runtime.engine_identity().hash
    );
    let dir = tempfile::tempdir().unwrap();
    let path = edgefn_test_support::guest_in(dir.path(), "hello");
    let spec = LoadSpec {
        function_id: "hello".into(),
        version: 1,
        artifact: path.clone(),
        sha256: None,
        settings: FunctionSettings::default(),
        share: Default::default(),
    };
    let fast = winch.runtime.load(spec.clone()).await.unwrap();
    assert_eq!(
        crate::body_text(&call(&fast, "/").await.unwrap()),
        "Hello, edgefn!\n"
    );
    let sha = edgefn_runtime::sha256_hex(&std::fs::read(&path).unwrap());
    assert!(!cranelift.runtime.has_precompiled(&path, &sha));
    let optimized = cranelift.runtime.load(spec).await.unwrap();
    assert_eq!(
        crate::body_text(&call(&optimized, "/").await.unwrap()),
        "Hello, edgefn!\n"
    );
    let files = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "cwasm")
        })
        .count();
    assert_eq!(files, 2, "one file per compiler");
}
