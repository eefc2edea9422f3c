//! The fuzz targets of `fuzz/` on stable Rust: every input of the committed
//! corpus (`tests/fuzz_corpus/<target>/`) and a fixed-seed stream of random
//! inputs go through the same harness as the cargo-fuzz targets
//! (`tests/fuzz_harness/mod.rs`). A panic is a finding; see `fuzz/README.md`.

#[path = "fuzz_harness/mod.rs"]
mod fuzz_harness;

use std::path::{Path, PathBuf};

/// The corpus files of `target`, sorted; a missing or empty corpus fails,
/// except in the published package, which leaves the corpus out (Cargo.toml's
/// `exclude`): there it replays nothing and the random inputs still run.
fn corpus(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/fuzz_corpus").join(target);
    // `cargo package` writes Cargo.toml.orig; a git checkout has none.
    if !dir.exists() && root.join("Cargo.toml.orig").is_file() {
        eprintln!("fuzz_replay: no corpus in the published package; replayed in the git checkout");
        return Vec::new();
    }
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("cannot read corpus {}: {error}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
}

/// Names the input being run if the harness panics on it.
struct OnPanic(String);

impl Drop for OnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("fuzz_replay: failing input: {}", self.0);
        }
    }
}

fn replay(target: &str, harness: fn(&[u8])) {
    for path in corpus(target) {
        let data = std::fs::read(&path)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
        let _context = OnPanic(format!("{target}: {}", path.display()));
        harness(&data);
    }
}

/// xorshift64*: a fixed-seed generator, so every run checks the same inputs.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// `count` random inputs of up to `max_len` bytes. Small byte values are
/// favoured now and then, which the harness's programs read as common
/// operations and offsets.
fn random(target: &str, harness: fn(&[u8]), seed: u64, count: usize, max_len: usize) {
    let mut rng = XorShift(seed);
    for case in 0..count {
        let len = (rng.next() % (max_len as u64 + 1)) as usize;
        let mask = if rng.next().is_multiple_of(2) {
            0xff
        } else {
            0x1f
        };
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8 & mask).collect();
        let hex: String = data.iter().map(|byte| format!("{byte:02x}")).collect();
        let _context = OnPanic(format!("{target}: random case {case}: {hex}"));
        harness(&data);
    }
}

#[test]
fn wire_decode_corpus() {
    replay("wire_decode", fuzz_harness::wire_decode);
}

#[test]
fn wire_decode_random() {
    random(
        "wire_decode",
        fuzz_harness::wire_decode,
        0x9e37_79b9_7f4a_7c15,
        16_000,
        256,
    );
}

#[test]
fn requester_events_corpus() {
    replay("requester_events", fuzz_harness::requester_events);
}

#[test]
fn requester_events_random() {
    random(
        "requester_events",
        fuzz_harness::requester_events,
        0xd1b5_4a32_d192_ed03,
        8_000,
        384,
    );
}

#[test]
fn responder_requests_corpus() {
    replay("responder_requests", fuzz_harness::responder_requests);
}

#[test]
fn responder_requests_random() {
    random(
        "responder_requests",
        fuzz_harness::responder_requests,
        0x94d0_49bb_1331_11eb,
        8_000,
        384,
    );
}
