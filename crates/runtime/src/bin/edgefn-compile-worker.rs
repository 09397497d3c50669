//! The compile worker as a program of its own, for embedders and tests that do not re-exec
//! their own binary: `edgefn-compile-worker compile-worker KIND ...`.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.split_first() {
        Some((command, rest)) if command == "compile-worker" => {
            edgefn_runtime::compile_worker_main(rest)
        }
        _ => {
            eprintln!("usage: edgefn-compile-worker compile-worker KIND ...");
            std::process::ExitCode::from(64)
        }
    }
}
