//! Compiles `proto/spaceraft/v1/*.proto` (and `proto/etcd/kv.proto`, for
//! the peer benchmark) with protox (a pure-Rust protobuf
//! compiler), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/spaceraft/v1/client.proto",
        "proto/spaceraft/v1/admin.proto",
        "proto/spaceraft/v1/raft.proto",
        "proto/spaceraft/v1/gateway.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let file_descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().compile_fds(file_descriptors)?;
    // The part of etcd's API `spaceraft bench peers` drives (client only).
    let etcd = "proto/etcd/kv.proto";
    println!("cargo:rerun-if-changed={etcd}");
    let file_descriptors = protox::compile([etcd], ["proto"])?;
    tonic_prost_build::configure().build_server(false).compile_fds(file_descriptors)?;
    Ok(())
}
