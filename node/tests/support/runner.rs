//! The property tests' runner: a fixed seed and no failure files, so
//! `cargo test` is deterministic; `PUBMESH_FUZZ_CASES` overrides the number
//! of cases.

use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};

pub fn runner(cases: u32, seed: u8) -> TestRunner {
    let cases = std::env::var("PUBMESH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    let config = RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    };
    TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]),
    )
}
