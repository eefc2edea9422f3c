//! The committed protobuf code (`src/wire/gen/`) is exactly what prost-build
//! makes of `proto/`, and the gRPC service code (`src/fabric/gen/`, feature
//! `fabric-grpc`) exactly what tonic-prost-build makes of its `service`:
//! users build without protox, so nothing regenerates them for them, and
//! this test is what keeps the two in step.
//!
//! After changing a `.proto` file (or upgrading prost-build), regenerate:
//!
//! ```sh
//! ANTIENTROPY_REGENERATE=1 cargo test --test generated_code
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The schema's entry points; their imports (Google's `Timestamp`) follow.
const PROTOS: [&str; 2] = ["proto/gossip/message.proto", "proto/common/common.proto"];

/// How the code is generated: the only place that says it.
fn generate(out_dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let protos = PROTOS.map(|proto| root.join(proto));
    let files = protox::compile(protos, [root.join("proto")]).expect("the schema compiles");
    prost_build::Config::new()
        // Zero-copy decoding: a block's bytes are slices of the received buffer.
        .bytes(["."])
        // Deterministic iteration (clippy.toml bans HashMap iteration).
        .btree_map(["."])
        // `google.protobuf.Timestamp` generated here too, instead of a
        // dependency on prost-types for one two-field message.
        .compile_well_known_types()
        .out_dir(out_dir)
        .compile_fds(files)
        .expect("prost-build generates the code");
}

/// How the service code is generated: `gossip.Gossip`'s client and server
/// only. Every message is an extern path into `crate::wire`, so
/// tonic-prost-build emits no second copy of them.
fn generate_grpc(out_dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let protos = PROTOS.map(|proto| root.join(proto));
    let files = protox::compile(protos, [root.join("proto")]).expect("the schema compiles");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        // Timestamp is ours too (crate::wire::google), not prost-types.
        .compile_well_known_types(true)
        .extern_path(".gossip", "crate::wire::gossip")
        .extern_path(".common", "crate::wire::common")
        .extern_path(".google.protobuf", "crate::wire::google::protobuf")
        .out_dir(out_dir)
        .compile_fds(files)
        .expect("tonic-prost-build generates the service code");
}

/// Every file of `dir`, by name.
fn files(dir: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("the directory is readable") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).expect("a generated file is UTF-8");
        files.insert(name, text);
    }
    files
}

#[test]
fn committed_code_is_what_the_protos_generate() {
    check(
        "src/wire/gen",
        "prost-build",
        generate,
        &["gossip.rs", "common.rs"],
    );
}

#[test]
fn committed_service_code_is_what_the_protos_generate() {
    check(
        "src/fabric/gen",
        "tonic-prost-build",
        generate_grpc,
        &["gossip.rs"],
    );
}

/// Generates into a scratch directory and compares with `committed` (or
/// rewrites it, with `ANTIENTROPY_REGENERATE=1`). Files the generator leaves
/// empty (packages without a service) are not kept.
fn check(committed: &str, generator: &str, generate: fn(&Path), expected: &[&str]) {
    let committed_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(committed);
    let scratch: PathBuf = std::env::temp_dir().join(format!(
        "antientropy-generated-code-{}-{generator}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    generate(&scratch);
    let mut fresh = files(&scratch);
    std::fs::remove_dir_all(&scratch).unwrap();
    fresh.retain(|_, text| !text.trim().is_empty());
    assert!(
        expected.iter().all(|name| fresh.contains_key(*name)),
        "{generator} made {:?}",
        fresh.keys().collect::<Vec<_>>()
    );

    if std::env::var_os("ANTIENTROPY_REGENERATE").is_some_and(|v| v == "1") {
        let _ = std::fs::remove_dir_all(&committed_dir);
        std::fs::create_dir_all(&committed_dir).unwrap();
        for (name, text) in &fresh {
            std::fs::write(committed_dir.join(name), text).unwrap();
        }
        eprintln!(
            "regenerated {} files in {}",
            fresh.len(),
            committed_dir.display()
        );
        return;
    }

    let committed_files = files(&committed_dir);
    let names = |files: &BTreeMap<String, String>| files.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&committed_files),
        names(&fresh),
        "{committed}/ has other files than {generator} makes of proto/; \
         regenerate with `ANTIENTROPY_REGENERATE=1 cargo test --test generated_code`"
    );
    for (name, text) in &fresh {
        assert!(
            committed_files[name] == *text,
            "{committed}/{name} differs from what {generator} makes of proto/; \
             regenerate with `ANTIENTROPY_REGENERATE=1 cargo test --test generated_code`"
        );
    }
}
