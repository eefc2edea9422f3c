//! Compiles Fabric's protos with prost-build on top of protox (pure Rust: no
//! system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(
        ["proto/gossip/message.proto", "proto/common/common.proto"],
        ["proto"],
    )?;
    prost_build::Config::new()
        .bytes(["."])
        .btree_map(["."])
        .compile_fds(files)?;
    Ok(())
}
