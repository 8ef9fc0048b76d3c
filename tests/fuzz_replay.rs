//! The fuzz target's interpreter (`tests/calls/mod.rs`) run by `cargo test`, without a fuzzer:
//! inputs from a seeded generator, so that every build checks the argument-validation layer a
//! little, and the fuzzer's findings stay fixed.

mod calls;
mod common;

use common::Rng;

/// Random inputs of up to 600 bytes from fixed seeds: about 25,000 calls.
#[test]
fn random_call_sequences_get_only_documented_codes() {
    let mut rng = Rng::new(5);
    for _ in 0..1000 {
        let len = rng.below(600) as usize;
        let input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        calls::run(&input);
    }
    let (_, calls) = common::contract::calls();
    assert!(calls > 10_000, "only {calls} checked calls");
}
