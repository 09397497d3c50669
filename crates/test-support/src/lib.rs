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
    "hello", "echo", "cpu", "spin", "memhog", "sandbox", "fetch", "logflood", "items", "todo",
];

/// Guests built by the toolchains users use for other languages, each by its own
/// `examples/{name}/build.sh` (which installs its pinned compiler): `js` with
/// componentize-js, `python` with componentize-py.
pub const TOOLCHAIN_GUESTS: &[&str] = &["js", "python"];

/// The built `.wasm` of example guest `name` (`cgi` is the preview 1 module; `js` and
/// `python` are [`TOOLCHAIN_GUESTS`]).
pub fn guest_wasm(name: &str) -> PathBuf {
    if TOOLCHAIN_GUESTS.contains(&name) {
        return toolchain_guest(name);
    }
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

/// Builds `examples/{name}` with its `build.sh`, once per set of inputs: the output is kept
/// beside the Rust guests under a name that carries the hash of the example's files and the
/// shared WIT, so an unchanged example is not rebuilt (the toolchains take 10–20 s).
fn toolchain_guest(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = built.iter().find(|(n, _)| n == name) {
        return path.clone();
    }
    let examples = workspace_root().join("examples");
    let inputs = [examples.join(name), examples.join("wit")];
    let path = guests_target_dir()
        .join("toolchains")
        .join(format!("{name}-{}.wasm", inputs_hash(&inputs)));
    if !path.exists() {
        let status = Command::new("bash")
            .arg(examples.join(name).join("build.sh"))
            .arg(&path)
            .status()
            .expect("run bash to build a toolchain guest");
        assert!(
            status.success() && path.exists(),
            "building example guest {name} with examples/{name}/build.sh failed (it needs \
             node/npm for js, python3 for python, and the package registries)"
        );
    }
    built.push((name.to_string(), path.clone()));
    path
}

/// A short hash of the files under `roots` (names and contents), skipping installed
/// dependencies.
fn inputs_hash(roots: &[PathBuf]) -> String {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name == "node_modules" || name == "__pycache__" {
                continue;
            }
            if path.is_dir() {
                walk(&path, files);
            } else {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    for root in roots {
        walk(root, &mut files);
    }
    files.sort();
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    for file in files {
        hasher.update(file.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(std::fs::read(&file).unwrap_or_default());
    }
    hex::encode(&hasher.finalize()[..8])
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
