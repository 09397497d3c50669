//! Compiling untrusted artifacts to native code, bounded in time and memory.
//!
//! Wasmtime treats denial of service during compilation as out of scope, so a huge or
//! pathologically nested module could hold a node's CPU or memory. With a worker program
//! configured, each compilation runs in a child process that caps its own address space and
//! CPU time with rlimits and is killed at the wall-clock limit; the parent only ever
//! receives bytes, which Wasmtime checks again when it loads them.

mod incremental;

use std::process::{ExitCode, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

use crate::RuntimeError;
use crate::artifact::ArtifactKind;
use crate::config::CompilerConfig;
use crate::wasmtime_config::{EngineSettings, wasmtime_config};

/// Exit code of the worker for an artifact Wasmtime refused (invalid WebAssembly).
const EXIT_INVALID: u8 = 2;
/// Exit code of the worker for bad arguments.
const EXIT_USAGE: u8 = 64;

/// Compiles `bytes` to Wasmtime's serialized native code.
pub(crate) async fn precompile(
    compiler: &CompilerConfig,
    engine: &wasmtime::Engine,
    settings: EngineSettings,
    kind: ArtifactKind,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, RuntimeError> {
    let (timeout, max_memory_bytes) = compiler.limits_for(bytes.len() as u64);
    match &compiler.worker_program {
        Some(program) => {
            let limits = WorkerLimits {
                timeout,
                max_memory_bytes,
            };
            precompile_in_worker(compiler, program, limits, settings, kind, bytes).await
        }
        None => {
            let engine = engine.clone();
            let work = tokio::task::spawn_blocking(move || compile(&engine, kind, &bytes));
            match tokio::time::timeout(timeout, work).await {
                Ok(Ok(result)) => result,
                Ok(Err(join)) => Err(RuntimeError::internal(format!(
                    "compiler thread failed: {join}"
                ))),
                Err(_) => Err(too_slow(timeout)),
            }
        }
    }
}

/// The limits of one compilation, scaled to its artifact.
struct WorkerLimits {
    timeout: Duration,
    max_memory_bytes: u64,
}

fn too_slow(limit: Duration) -> RuntimeError {
    RuntimeError::invalid(format!(
        "compilation took longer than the limit of {limit:?}"
    ))
}

fn compile(
    engine: &wasmtime::Engine,
    kind: ArtifactKind,
    bytes: &[u8],
) -> Result<Vec<u8>, RuntimeError> {
    let compiled = match kind {
        ArtifactKind::Component => engine.precompile_component(bytes),
        ArtifactKind::Module => engine.precompile_module(bytes),
    };
    compiled.map_err(|e| RuntimeError::invalid(format!("{e:#}")))
}

async fn precompile_in_worker(
    compiler: &CompilerConfig,
    program: &std::path::Path,
    limits: WorkerLimits,
    settings: EngineSettings,
    kind: ArtifactKind,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, RuntimeError> {
    let WorkerLimits {
        timeout,
        max_memory_bytes,
    } = limits;
    let cpu_seconds = timeout.as_secs().max(1) + 1;
    let mut child = tokio::process::Command::new(program)
        .args(&compiler.worker_args)
        .arg("compile-worker")
        .arg(kind.as_str())
        .arg(settings.max_memory_pages.to_string())
        .arg(settings.flags())
        .arg(max_memory_bytes.to_string())
        .arg(cpu_seconds.to_string())
        .args(compiler.incremental_cache.iter().flat_map(|dir| {
            [
                dir.as_os_str().to_owned(),
                compiler.incremental_cache_bytes.to_string().into(),
            ]
        }))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            RuntimeError::internal(format!(
                "failed to start compile worker {}: {e}",
                program.display()
            ))
        })?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| RuntimeError::internal("compile worker has no stdin"))?;
    let feed = async move {
        // A worker that dies early closes its stdin; its exit status tells why.
        let _ = stdin.write_all(&bytes).await;
        drop(stdin);
    };
    let run = async {
        let (_, output) = tokio::join!(feed, child.wait_with_output());
        output
    };
    let output = match tokio::time::timeout(timeout, run).await {
        Ok(output) => {
            output.map_err(|e| RuntimeError::internal(format!("compile worker failed: {e}")))?
        }
        // Dropping the future kills the child (kill_on_drop).
        Err(_) => return Err(too_slow(timeout)),
    };
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    match output.status.code() {
        Some(0) => Ok(output.stdout),
        Some(code) if code == i32::from(EXIT_INVALID) => Err(RuntimeError::invalid(stderr)),
        Some(code) if code == i32::from(EXIT_USAGE) => Err(RuntimeError::internal(format!(
            "compile worker refused its arguments: {stderr}"
        ))),
        _ => Err(RuntimeError::invalid(format!(
            "compilation exceeded its limits ({} of address space, {cpu_seconds} s of CPU): {}",
            human_bytes(max_memory_bytes),
            if stderr.is_empty() {
                output.status.to_string()
            } else {
                stderr
            },
        ))),
    }
}

fn human_bytes(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// Entry point of the compile worker: `compile-worker KIND MAX_MEMORY_PAGES FUEL
/// MAX_MEMORY_BYTES CPU_SECONDS [CACHE_DIR CACHE_BYTES]` (the last two: Cranelift's
/// incremental cache), WebAssembly on stdin, native code on stdout, errors on
/// stderr; or `compile-worker engine-hash MAX_MEMORY_PAGES FUEL`, the hash of the code it
/// makes for those settings on stdout (what a control plane compares with a node's). A
/// binary that embeds the runtime dispatches its hidden subcommand here.
pub fn compile_worker_main(args: &[String]) -> ExitCode {
    use std::io::{Read as _, Write as _};
    if let [mode, pages, fuel] = args
        && mode == "engine-hash"
    {
        let Ok(max_memory_pages) = pages.parse::<u64>() else {
            eprintln!("compile-worker: invalid arguments {args:?}");
            return ExitCode::from(EXIT_USAGE);
        };
        let settings = EngineSettings::from_flags(max_memory_pages, fuel);
        return match wasmtime::Engine::new(&wasmtime_config(settings, None)) {
            Ok(engine) => {
                println!("{}", crate::wasmtime_config::engine_hash(&engine));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("compile-worker: cannot create engine: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let (kind, pages, fuel, max_memory, cpu_seconds, cache) = match args {
        [kind, pages, fuel, max_memory, cpu_seconds] => {
            (kind, pages, fuel, max_memory, cpu_seconds, None)
        }
        [kind, pages, fuel, max_memory, cpu_seconds, dir, bytes] => {
            let Ok(bytes) = bytes.parse::<u64>() else {
                eprintln!("compile-worker: invalid cache size {bytes:?}");
                return ExitCode::from(EXIT_USAGE);
            };
            (
                kind,
                pages,
                fuel,
                max_memory,
                cpu_seconds,
                Some((dir, bytes)),
            )
        }
        _ => {
            eprintln!(
                "usage: compile-worker KIND MAX_MEMORY_PAGES fuel|no-fuel[,winch] MAX_MEMORY_BYTES CPU_SECONDS [CACHE_DIR CACHE_BYTES]"
            );
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let (Some(kind), Ok(max_memory_pages), Ok(max_memory), Ok(cpu_seconds)) = (
        ArtifactKind::parse(kind),
        pages.parse::<u64>(),
        max_memory.parse::<u64>(),
        cpu_seconds.parse::<u64>(),
    ) else {
        eprintln!("compile-worker: invalid arguments {args:?}");
        return ExitCode::from(EXIT_USAGE);
    };
    use nix::sys::resource::{Resource, setrlimit};
    if let Err(e) = setrlimit(Resource::RLIMIT_AS, max_memory, max_memory)
        .and_then(|()| setrlimit(Resource::RLIMIT_CPU, cpu_seconds, cpu_seconds))
    {
        eprintln!("compile-worker: cannot set resource limits: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let settings = EngineSettings::from_flags(max_memory_pages, fuel);
    let mut config = wasmtime_config(settings, None);
    // The incremental cache is Cranelift's.
    if let Some((dir, max_bytes)) = cache.filter(|_| !settings.winch) {
        // A cache that cannot be opened costs a full compilation, nothing more.
        match incremental::DiskCacheStore::open(std::path::Path::new(dir), max_bytes) {
            Ok(store) => {
                if let Err(e) = config.enable_incremental_compilation(std::sync::Arc::new(store)) {
                    eprintln!("compile-worker: incremental cache not used: {e:#}");
                }
            }
            Err(e) => eprintln!("compile-worker: incremental cache {dir} not used: {e}"),
        }
    }
    let engine = match wasmtime::Engine::new(&config) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("compile-worker: cannot create engine: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("compile-worker: cannot read input: {e}");
        return ExitCode::FAILURE;
    }
    match compile(&engine, kind, &bytes) {
        Ok(native) => match std::io::stdout().lock().write_all(&native) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("compile-worker: cannot write output: {e}");
                ExitCode::FAILURE
            }
        },
        Err(RuntimeError::InvalidArtifact { reason }) => {
            eprintln!("{reason}");
            ExitCode::from(EXIT_INVALID)
        }
        Err(other) => {
            eprintln!("{other}");
            ExitCode::FAILURE
        }
    }
}
