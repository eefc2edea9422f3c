//! The committed protobuf code (`src/wire/gen/`) is exactly what prost-build
//! makes of `proto/`: users build without protox, so nothing regenerates it
//! for them, and this test is what keeps the two in step.
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
    let committed_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/wire/gen");
    let scratch: PathBuf =
        std::env::temp_dir().join(format!("antientropy-generated-code-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    generate(&scratch);
    let fresh = files(&scratch);
    std::fs::remove_dir_all(&scratch).unwrap();
    assert!(
        fresh.contains_key("gossip.rs") && fresh.contains_key("common.rs"),
        "prost-build made {:?}",
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

    let committed = files(&committed_dir);
    let names = |files: &BTreeMap<String, String>| files.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&committed),
        names(&fresh),
        "src/wire/gen/ has other files than prost-build makes of proto/; \
         regenerate with `ANTIENTROPY_REGENERATE=1 cargo test --test generated_code`"
    );
    for (name, text) in &fresh {
        assert!(
            committed[name] == *text,
            "src/wire/gen/{name} differs from what prost-build makes of proto/; \
             regenerate with `ANTIENTROPY_REGENERATE=1 cargo test --test generated_code`"
        );
    }
}
