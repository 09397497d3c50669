//! Generates the gRPC service of node sync from `proto/sync.proto` with `protox` (a protobuf
//! compiler in Rust), so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/sync.proto");
    let descriptors = protox::compile(["sync.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
