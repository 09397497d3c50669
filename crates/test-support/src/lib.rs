//! Test harness shared by edgefn's crates: builds the example guests in `examples/` with
//! cargo (once per test process) and hands out the paths of their `.wasm` files; gives
//! each test a PostgreSQL schema of its own (`postgres`) and the real S3 server (`s3`).
#![forbid(unsafe_code)]

pub mod postgres;
pub mod s3;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root (the folder holding `examples/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root exists")
}

fn guests_target_dir() -> PathBuf {
    // Beside the host build, so CI's cache keeps the guests too; a separate directory so the
    // nested cargo never waits on the lock the outer `cargo test` holds.
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    base.join("guests")
}

fn build(target: &str, packages: &[&str]) {
    // A toolchain installed before rust-toolchain.toml named the wasm targets lacks them.
    let _ = Command::new("rustup")
        .current_dir(workspace_root().join("examples"))
        .args(["--quiet", "target", "add", target])
        .status();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace_root().join("examples"))
        .args([
            "build",
            "--release",
            "--quiet",
            "--target",
            target,
            "--target-dir",
        ])
        .arg(guests_target_dir())
        // Flags meant for the host build must not leak into the guest build.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    for package in packages {
        command.args(["-p", package]);
    }
    let status = command
        .status()
        .expect("run cargo to build the example guests");
    assert!(
        status.success(),
        "building example guests for {target} failed"
    );
}

/// Guests that are `wasi:http` components (`wasm32-wasip2`).
pub const COMPONENT_GUESTS: &[&str] = &[
    "hello", "echo", "cpu", "spin", "memhog", "sandbox", "fetch", "logflood",
];

/// The built `.wasm` of example guest `name` (`cgi` is the preview 1 module).
pub fn guest_wasm(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        build("wasm32-wasip2", COMPONENT_GUESTS);
        build("wasm32-wasip1", &["cgi"]);
    });
    let target = if name == "cgi" {
        "wasm32-wasip1"
    } else {
        "wasm32-wasip2"
    };
    let path = guests_target_dir()
        .join(target)
        .join("release")
        .join(format!("{name}.wasm"));
    assert!(path.exists(), "no guest named {name} at {}", path.display());
    path
}

/// Copies guest `name` into `dir` as `{name}.wasm` (tests load artifacts from their own cache
/// directories, where precompiled code is written beside them).
pub fn guest_in(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::copy(guest_wasm(name), &path).expect("copy guest into the test directory");
    path
}

/// Threads that keep `cores` CPU cores busy until dropped, to test and measure behaviour
/// under load.
pub struct BusyCores {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl BusyCores {
    pub fn start(cores: usize) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let threads = (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for BusyCores {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
