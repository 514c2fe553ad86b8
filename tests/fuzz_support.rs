//! The driver every property test of an untrusted-input reader uses (included with `#[path]` by the
//! crates' fuzz tests; see scripts/FUZZING.md).
//!
//! In CI a property runs a fixed number of cases from a fixed seed (`TOPRL_FUZZ_CASES`, default 48), so
//! the suite is fast and repeatable. For a long fuzzing session set `TOPRL_FUZZ_SECONDS`: the property
//! then runs with fresh random seeds until that many seconds have passed, and the number of cases run
//! is printed (`fuzz NAME: N cases in S s`).
#![allow(dead_code)]

use std::time::Instant;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Run `property` on values of `strategy`; panics with the minimal failing input if one fails (a panic
/// inside the property counts as a failure).
pub fn fuzz<S>(name: &str, strategy: S, property: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let batch = env_number("TOPRL_FUZZ_CASES").unwrap_or(48) as u32;
    let config = Config {
        cases: batch,
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..Config::default()
    };
    let started = Instant::now();
    let mut cases = 0u64;
    match env_number("TOPRL_FUZZ_SECONDS") {
        None => {
            let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
            let mut runner = TestRunner::new_with_rng(config, rng);
            if let Err(e) = runner.run(&strategy, &property) {
                panic!("fuzz {name}: {e}");
            }
            cases += u64::from(batch);
        }
        Some(seconds) => {
            // A runner runs `cases` cases once; each batch gets a new runner with its own seed (printed
            // on failure, so a failing batch can be replayed).
            let base = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let mut batch_index = 0u64;
            while started.elapsed().as_secs() < seconds {
                let mut seed = [0u8; 32];
                seed[..8].copy_from_slice(&base.to_le_bytes());
                seed[8..16].copy_from_slice(&batch_index.to_le_bytes());
                let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
                let mut runner = TestRunner::new_with_rng(config.clone(), rng);
                if let Err(e) = runner.run(&strategy, &property) {
                    panic!("fuzz {name}: failed after {cases} cases (seed {seed:?}): {e}");
                }
                cases += u64::from(batch);
                batch_index += 1;
            }
        }
    }
    eprintln!(
        "fuzz {name}: {cases} cases in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Byte-level damage to a file's contents: flips, truncation, insertion of bytes, a copied run.
#[derive(Debug, Clone)]
pub enum Damage {
    Flip { at: usize, xor: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Overwrite { at: usize, bytes: Vec<u8> },
}

pub fn damage_strategy() -> impl Strategy<Value = Vec<Damage>> {
    use proptest::prelude::*;
    let one = prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, xor)| Damage::Flip { at, xor }),
        any::<usize>().prop_map(|at| Damage::Truncate { at }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Damage::Insert { at, bytes }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Damage::Overwrite { at, bytes }),
    ];
    proptest::collection::vec(one, 1..4)
}

/// `bytes` with `damage` applied (positions are taken modulo the length).
pub fn apply(bytes: &[u8], damage: &[Damage]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for d in damage {
        let len = out.len().max(1);
        match d {
            Damage::Flip { at, xor } => {
                if !out.is_empty() {
                    out[at % len] ^= xor;
                }
            }
            Damage::Truncate { at } => out.truncate(at % len),
            Damage::Insert { at, bytes } => {
                let at = (at % len).min(out.len());
                out.splice(at..at, bytes.iter().copied());
            }
            Damage::Overwrite { at, bytes } => {
                let at = at % len;
                for (i, b) in bytes.iter().enumerate() {
                    if let Some(slot) = out.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
        }
    }
    out
}

/// JSON values that stress a reader: wrong types, extremes, path escapes, nesting.
pub fn hostile_json() -> impl Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    use serde_json::{Value, json};
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|v| json!(v)),
        proptest::sample::select(vec![0i64, -1, 1, i64::MAX, i64::MIN, 1 << 40]).prop_map(|v| json!(v)),
        any::<u64>().prop_map(|v| json!(v)),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |v| v.is_finite())
            .prop_map(|v| json!(v)),
        proptest::sample::select(vec![
            "",
            "/etc/passwd",
            "../../escape",
            "data/../../x.parquet",
            "v2.1",
            "v3.0",
            "{chunk_index:03d}",
            "{",
            "video",
            "float32"
        ])
        .prop_map(|s| Value::String(s.to_string())),
        "[ -~]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replace the value at a random path of `doc` (objects and arrays walked by `choices`) with `value`.
pub fn replace_somewhere(doc: &mut serde_json::Value, choices: &[usize], value: serde_json::Value) {
    use serde_json::Value;
    let Some((&c, rest)) = choices.split_first() else {
        *doc = value;
        return;
    };
    match doc {
        Value::Object(m) if !m.is_empty() => {
            let key = m.keys().nth(c % m.len()).cloned();
            if let Some(child) = key.and_then(|k| m.get_mut(&k)) {
                replace_somewhere(child, rest, value);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let n = a.len();
            replace_somewhere(&mut a[c % n], rest, value);
        }
        _ => *doc = value,
    }
}
