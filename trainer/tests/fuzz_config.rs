//! Property tests of the experiment config parser on hostile input (see scripts/FUZZING.md): any TOML
//! text either is refused with an error or gives a config every later stage can use: its numbers are
//! finite and in range, its arm names are plain folder names, its policy resolves, and its resolved
//! form (what the run folder records and `--resume` compares) parses back to itself.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

#[path = "../../tests/fuzz_support.rs"]
mod fuzz_support;

use std::path::Path;

use fuzz_support::{Damage, apply, damage_strategy, fuzz};
use proptest::prelude::*;
use toprl_trainer::config::{DataConfig, ExperimentConfig, MAX_BATCH_SIZE, MAX_IMAGE_SIZE};

const BASE: &str = r#"
name = "fuzz"
seeds = [0, 1]
[task]
name = "reach"
image_size = 64
cameras = ["front", "wrist"]
[data]
source = "sim"
episodes = 4
noise_levels = [0.0, 0.5]
[policy]
kind = "act"
chunk = 4
[policy.network]
d_model = 32
[reward_model]
model = "Qwen/Qwen3-VL-8B-Instruct"
fps = 2.0
camera = "observation.images.front"
[train]
steps = 10
batch_size = 8
lr = 0.001
tau = 2.0
delta_max = 2.0
min_weight = 0.0
eval_every = 5
[eval]
episodes = 2
[awr]
iterations = 2
beta = 0.1
gamma = 0.99
[[arms]]
name = "bc"
reward = "none"
[[arms]]
name = "top"
reward = "topreward"
algorithm = "awr"
"#;

/// Keys the fuzzer overwrites (dotted; `arms.N` is an array element), plus unknown ones.
const KEYS: &[&str] = &[
    "name",
    "seeds",
    "task.name",
    "task.image_size",
    "task.max_steps",
    "task.cameras",
    "data.source",
    "data.episodes",
    "data.noise_levels",
    "data.path",
    "data.camera",
    "policy.kind",
    "policy.chunk",
    "policy.init",
    "policy.environment_state",
    "policy.network",
    "policy.network.d_model",
    "policy.network.n_heads",
    "reward_model.model",
    "reward_model.mode",
    "reward_model.fps",
    "reward_model.camera",
    "reward_model.prompt_suffix",
    "train.steps",
    "train.batch_size",
    "train.lr",
    "train.tau",
    "train.delta_max",
    "train.min_weight",
    "train.eval_every",
    "eval.episodes",
    "awr.iterations",
    "awr.rollouts",
    "awr.policy_steps",
    "awr.value_steps",
    "awr.beta",
    "awr.max_weight",
    "awr.gamma",
    "awr.action_noise",
    "arms.0.name",
    "arms.0.reward",
    "arms.1.name",
    "arms.1.algorithm",
    "arms.1.reward",
    "arms",
    "train.unknown_key",
    "task",
];

fn hostile_toml() -> impl Strategy<Value = toml::Value> {
    use toml::Value;
    let leaf = prop_oneof![
        any::<bool>().prop_map(Value::Boolean),
        proptest::sample::select(vec![
            0i64,
            -1,
            1,
            2,
            i64::MAX,
            i64::MIN,
            u32::MAX as i64,
            100_000_000
        ])
        .prop_map(Value::Integer),
        any::<i64>().prop_map(Value::Integer),
        proptest::sample::select(vec![
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -0.0,
            -1.0,
            5.0,
            1e308,
            1e-320
        ])
        .prop_map(Value::Float),
        any::<f64>().prop_map(Value::Float),
        proptest::sample::select(vec![
            "",
            " ",
            "../../escape",
            "/etc/passwd",
            ".hidden",
            "a/b",
            "reach",
            "pick_place",
            "gaussian",
            "flow",
            "topreward",
            "oracle",
            "sparse",
            "awr",
            "exact",
            "top",
            "lerobot",
            "observation.images.top",
            "{instruction} The answer is: True"
        ])
        .prop_map(|s| Value::String(s.to_string())),
        "[ -~]{0,10}".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 6, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..3)
                .prop_map(|m| Value::Table(m.into_iter().collect())),
        ]
    })
}

/// Set `dotted` in `doc` to `value`, creating tables on the way (a number segment indexes an array).
fn set(doc: &mut toml::Value, dotted: &str, value: toml::Value) {
    let mut slot = doc;
    let parts: Vec<&str> = dotted.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let next = match slot {
            toml::Value::Table(t) => {
                if last {
                    t.insert(part.to_string(), value);
                    return;
                }
                t.entry(part.to_string())
                    .or_insert_with(|| toml::Value::Table(Default::default()))
            }
            toml::Value::Array(a) => match part.parse::<usize>() {
                Ok(n) if n < a.len() => {
                    if last {
                        a[n] = value;
                        return;
                    }
                    &mut a[n]
                }
                _ => return,
            },
            _ => return,
        };
        slot = next;
    }
}

#[derive(Debug, Clone)]
enum Edit {
    Set(usize, toml::Value),
    Remove(usize),
}

fn check(text: &str) -> Result<(), TestCaseError> {
    let path = Path::new("fuzz.toml");
    let Ok(c) = ExperimentConfig::parse(text, path) else {
        return Ok(());
    };
    // Whatever parses is usable: the invariants the run relies on hold.
    let t = &c.train;
    prop_assert!(t.steps >= 1 && t.eval_every >= 1 && c.eval.episodes >= 1);
    prop_assert!(t.batch_size >= 1 && t.batch_size <= MAX_BATCH_SIZE);
    prop_assert!(t.lr.is_finite() && t.lr > 0.0, "lr {}", t.lr);
    prop_assert!(t.tau.is_finite() && t.delta_max.is_finite() && t.min_weight.is_finite());
    prop_assert!(0.0 <= t.min_weight && t.min_weight <= t.delta_max);
    prop_assert!(c.task.image_size >= 1 && c.task.image_size <= MAX_IMAGE_SIZE);
    prop_assert!(!c.seeds.is_empty());
    for (i, s) in c.seeds.iter().enumerate() {
        prop_assert!(!c.seeds[..i].contains(s), "duplicate seed {s}");
    }
    for arm in &c.arms {
        prop_assert!(
            toprl_envs::safe_path::safe_component(&arm.name, "arm").is_ok(),
            "{:?}",
            arm.name
        );
    }
    if let DataConfig::Sim {
        noise_levels,
        episodes,
    } = &c.data
    {
        prop_assert!(*episodes >= 1);
        prop_assert!(noise_levels.iter().all(|v| v.is_finite() && *v >= 0.0));
    }
    let _ = toprl_trainer::experiment::policy_config(&c);
    let _ = c.check_resources(path);
    // The resolved config (recorded in the run folder, compared by --resume) parses back to itself.
    let resolved = toml::to_string_pretty(&c).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let again = ExperimentConfig::parse(&resolved, path)
        .map_err(|e| TestCaseError::fail(format!("{e}\n{resolved}")))?;
    let resolved_again = toml::to_string_pretty(&again).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(resolved, resolved_again);
    Ok(())
}

#[test]
fn the_base_config_is_valid() {
    ExperimentConfig::parse(BASE, Path::new("fuzz.toml")).unwrap();
}

#[test]
fn hostile_config_values_are_refused_or_usable() {
    let base: toml::Value = toml::from_str(BASE).unwrap();
    let edit = prop_oneof![
        (any::<usize>(), hostile_toml()).prop_map(|(k, v)| Edit::Set(k, v)),
        any::<usize>().prop_map(Edit::Remove),
    ];
    fuzz(
        "experiment config values",
        proptest::collection::vec(edit, 1..5),
        |edits| {
            let mut doc = base.clone();
            for e in edits {
                match e {
                    Edit::Set(k, v) => set(&mut doc, KEYS[k % KEYS.len()], v),
                    Edit::Remove(k) => {
                        let key = KEYS[k % KEYS.len()];
                        let (table, leaf) = key.rsplit_once('.').unwrap_or(("", key));
                        let mut slot = Some(&mut doc);
                        for part in table.split('.').filter(|p| !p.is_empty()) {
                            slot = slot.and_then(|s| match s {
                                toml::Value::Table(t) => t.get_mut(part),
                                toml::Value::Array(a) => {
                                    part.parse::<usize>().ok().and_then(|n| a.get_mut(n))
                                }
                                _ => None,
                            });
                        }
                        if let Some(toml::Value::Table(t)) = slot {
                            t.remove(leaf);
                        }
                    }
                }
            }
            let Ok(text) = toml::to_string(&doc) else {
                return Ok(());
            };
            check(&text)
        },
    );
}

#[test]
fn damaged_config_text_is_refused_or_usable() {
    fuzz(
        "experiment config text",
        damage_strategy(),
        |damage: Vec<Damage>| {
            let bytes = apply(BASE.as_bytes(), &damage);
            match std::str::from_utf8(&bytes) {
                Ok(text) => check(text),
                Err(_) => Ok(()),
            }
        },
    );
}
