//! cargo-fuzz target: `harness::requester_events` (see `tests/fuzz_harness/mod.rs`).
#![no_main]

#[path = "../../tests/fuzz_harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::requester_events(data));
