//! A LeRobot (>= 0.4) SmolVLA checkpoint folder, everything in it but the weights: `config.json`
//! (`SmolVLAConfig`), the processor pipelines `policy_preprocessor.json` / `policy_postprocessor.json` and
//! their normaliser statistics (`*_normalizer_processor.safetensors`, `*_unnormalizer_processor.safetensors`).
//!
//! Files are read as LeRobot 0.4.4 reads them (`PreTrainedConfig.from_pretrained`,
//! `DataProcessorPipeline.from_pretrained`): unknown fields are ignored, missing ones take LeRobot's
//! defaults, and the original JSON is kept so that saving writes back every field LeRobot wrote.
//! Saving writes a sibling temporary folder and renames it into place.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{PolicyError, Result, config_err};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const PREPROCESSOR_FILE: &str = "policy_preprocessor.json";
pub const POSTPROCESSOR_FILE: &str = "policy_postprocessor.json";
/// LeRobot's feature names (`lerobot.utils.constants`).
pub const STATE_KEY: &str = "observation.state";
pub const ACTION_KEY: &str = "action";
pub const IMAGES_PREFIX: &str = "observation.images.";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PolicyError + '_ {
    move |source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn missing_file(path: &Path, what: &str) -> PolicyError {
    PolicyError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, format!("missing {what}")),
    }
}

/// Read and parse a JSON file, naming it on failure.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    if !path.is_file() {
        return Err(missing_file(path, "file"));
    }
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| config_err(path, format!("not valid JSON: {e}")))
}

/// `FeatureType` of `lerobot.configs.types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FeatureType {
    State,
    Visual,
    Env,
    Action,
    Reward,
    Language,
}

/// `NormalizationMode` of `lerobot.configs.types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NormMode {
    Identity,
    MeanStd,
    MinMax,
    Quantiles,
    Quantile10,
}

/// One `PolicyFeature`: its name, type and shape (images `[3, H, W]`, vectors `[dim]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    pub key: String,
    pub kind: FeatureType,
    pub shape: Vec<usize>,
}

#[derive(Deserialize)]
struct FeatureBody {
    #[serde(rename = "type")]
    kind: FeatureType,
    shape: Vec<usize>,
}

/// A JSON object of features kept in file order (LeRobot's camera order is the dict order of
/// `input_features`, and the model's image tokens follow it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features(pub Vec<Feature>);

impl<'de> Deserialize<'de> for Features {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct OrderedVisitor;
        impl<'de> Visitor<'de> for OrderedVisitor {
            type Value = Features;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of {\"type\": ..., \"shape\": [...]} features")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Features, A::Error> {
                let mut out = Vec::new();
                while let Some((key, body)) = map.next_entry::<String, FeatureBody>()? {
                    out.push(Feature {
                        key,
                        kind: body.kind,
                        shape: body.shape,
                    });
                }
                Ok(Features(out))
            }
        }
        d.deserialize_map(OrderedVisitor)
    }
}

/// Written back as LeRobot writes it: `{"key": {"type": ..., "shape": [...]}, ...}` in order.
impl Serialize for Features {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for f in &self.0 {
            map.serialize_entry(&f.key, &json!({"type": f.kind, "shape": f.shape}))?;
        }
        map.end()
    }
}

impl Features {
    pub fn get(&self, key: &str) -> Option<&Feature> {
        self.0.iter().find(|f| f.key == key)
    }
    pub fn of_kind(&self, kind: FeatureType) -> impl Iterator<Item = &Feature> {
        self.0.iter().filter(move |f| f.kind == kind)
    }
}

fn d_chunk() -> usize {
    50
}
fn d_max_dim() -> usize {
    32
}
fn d_resize() -> Option<(usize, usize)> {
    Some((512, 512))
}
fn d_tok_len() -> usize {
    48
}
fn d_steps() -> usize {
    10
}
fn d_true() -> bool {
    true
}
fn d_pad_to() -> String {
    "longest".into()
}
fn d_vlm() -> String {
    "HuggingFaceTB/SmolVLM2-500M-Video-Instruct".into()
}
fn d_norm_map() -> BTreeMap<FeatureType, NormMode> {
    BTreeMap::from([
        (FeatureType::Visual, NormMode::Identity),
        (FeatureType::State, NormMode::MeanStd),
        (FeatureType::Action, NormMode::MeanStd),
    ])
}

/// The fields of LeRobot 0.4.4's `SmolVLAConfig` that inference and fine-tuning read, with its defaults.
/// Model-shape fields (`num_vlm_layers`, `expert_width_multiplier`, ...) are read by the model's own
/// config from the same file.
#[derive(Debug, Clone, Deserialize)]
pub struct SmolVlaIoConfig {
    #[serde(default)]
    pub input_features: Features,
    #[serde(default)]
    pub output_features: Features,
    #[serde(default = "d_chunk")]
    pub chunk_size: usize,
    #[serde(default = "d_chunk")]
    pub n_action_steps: usize,
    #[serde(default = "d_norm_map")]
    pub normalization_mapping: BTreeMap<FeatureType, NormMode>,
    #[serde(default = "d_max_dim")]
    pub max_state_dim: usize,
    #[serde(default = "d_max_dim")]
    pub max_action_dim: usize,
    /// `(width, height)` as `resize_with_pad(img, *resize_imgs_with_padding)` takes it; `null`: no resize.
    #[serde(default = "d_resize")]
    pub resize_imgs_with_padding: Option<(usize, usize)>,
    #[serde(default)]
    pub empty_cameras: usize,
    #[serde(default)]
    pub adapt_to_pi_aloha: bool,
    #[serde(default = "d_tok_len")]
    pub tokenizer_max_length: usize,
    #[serde(default = "d_pad_to")]
    pub pad_language_to: String,
    #[serde(default = "d_steps")]
    pub num_steps: usize,
    #[serde(default = "d_true")]
    pub freeze_vision_encoder: bool,
    #[serde(default = "d_true")]
    pub train_expert_only: bool,
    #[serde(default = "d_true")]
    pub train_state_proj: bool,
    #[serde(default = "d_vlm")]
    pub vlm_model_name: String,
}

/// `config.json` of a LeRobot SmolVLA checkpoint: the typed view and the file as written.
#[derive(Debug, Clone)]
pub struct LeRobotConfig {
    pub path: PathBuf,
    pub io: SmolVlaIoConfig,
    /// The whole file, unknown fields included, written back on save.
    pub raw: Value,
}

/// The policy type a LeRobot `config.json` declares (its `type` key), without further checks.
pub fn policy_type(dir: &Path) -> Result<String> {
    let path = dir.join(CONFIG_FILE);
    let raw = read_json(&path)?;
    match raw.get("type") {
        Some(Value::String(t)) => Ok(t.clone()),
        Some(other) => Err(config_err(
            &path,
            format!("key `type` is {other}, expected a string"),
        )),
        None => Err(config_err(
            &path,
            "key `type` is missing (a LeRobot policy config names its type)",
        )),
    }
}

/// Whether `name`, not an existing folder, names a Hugging Face Hub repository (`owner/name`).
pub(crate) fn looks_like_hub_id(name: &str) -> bool {
    name.split('/').count() == 2 && !name.starts_with('.') && !name.starts_with('/')
}

/// Refuse a `config.json` whose `type` is not `expected` (LeRobot's registry key: `smolvla`, `act`).
pub(crate) fn expect_policy_type(path: &Path, raw: &Value, expected: &str) -> Result<()> {
    match raw.get("type").and_then(Value::as_str) {
        Some(t) if t == expected => Ok(()),
        Some(other) => Err(config_err(
            path,
            format!("key `type` is \"{other}\", expected \"{expected}\""),
        )),
        None => Err(config_err(
            path,
            format!("key `type` is missing, expected \"{expected}\""),
        )),
    }
}

impl LeRobotConfig {
    /// Read `dir/config.json`, refusing any policy type but `smolvla`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let raw = read_json(&path)?;
        expect_policy_type(&path, &raw, "smolvla")?;
        let io: SmolVlaIoConfig =
            serde_json::from_value(raw.clone()).map_err(|e| config_err(&path, e.to_string()))?;
        let cfg = Self { path, io, raw };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let io = &self.io;
        let state = self.state_feature()?;
        let action = self.action_feature()?;
        let vector = |f: &Feature, max: usize, max_key: &str| {
            if f.shape.len() != 1 || f.shape[0] == 0 || f.shape[0] > max {
                Err(config_err(
                    &self.path,
                    format!(
                        "key `{}.shape` is {:?}, expected [n] with 0 < n <= {max_key} ({max})",
                        f.key, f.shape
                    ),
                ))
            } else {
                Ok(())
            }
        };
        vector(state, io.max_state_dim, "max_state_dim")?;
        vector(action, io.max_action_dim, "max_action_dim")?;
        if self.camera_keys().is_empty() {
            return Err(config_err(
                &self.path,
                "key `input_features` has no VISUAL feature; SmolVLA needs at least one camera",
            ));
        }
        for f in io.input_features.of_kind(FeatureType::Visual) {
            if f.shape.len() != 3 || f.shape[0] != 3 {
                return Err(config_err(
                    &self.path,
                    format!(
                        "key `input_features.{}.shape` is {:?}, expected [3, H, W]",
                        f.key, f.shape
                    ),
                ));
            }
        }
        if io.n_action_steps == 0 || io.n_action_steps > io.chunk_size {
            return Err(config_err(
                &self.path,
                format!(
                    "key `n_action_steps` is {}, expected 1..=chunk_size ({})",
                    io.n_action_steps, io.chunk_size
                ),
            ));
        }
        if io.adapt_to_pi_aloha {
            return Err(config_err(
                &self.path,
                "key `adapt_to_pi_aloha` is true; toprl supports false only",
            ));
        }
        if io.empty_cameras != 0 {
            return Err(config_err(
                &self.path,
                format!(
                    "key `empty_cameras` is {}; toprl supports 0 only",
                    io.empty_cameras
                ),
            ));
        }
        if !matches!(io.pad_language_to.as_str(), "longest" | "max_length") {
            return Err(config_err(
                &self.path,
                format!(
                    "key `pad_language_to` is \"{}\", expected \"longest\" or \"max_length\"",
                    io.pad_language_to
                ),
            ));
        }
        Ok(())
    }

    pub fn state_feature(&self) -> Result<&Feature> {
        self.io
            .input_features
            .get(STATE_KEY)
            .ok_or_else(|| config_err(&self.path, format!("key `input_features.{STATE_KEY}` is missing")))
    }

    pub fn action_feature(&self) -> Result<&Feature> {
        self.io.output_features.get(ACTION_KEY).ok_or_else(|| {
            config_err(
                &self.path,
                format!("key `output_features.{ACTION_KEY}` is missing"),
            )
        })
    }

    pub fn state_dim(&self) -> usize {
        self.state_feature().map(|f| f.shape[0]).unwrap_or(0)
    }

    pub fn action_dim(&self) -> usize {
        self.action_feature().map(|f| f.shape[0]).unwrap_or(0)
    }

    /// The camera features (`observation.images.*`) in the order the model sees them.
    pub fn camera_keys(&self) -> Vec<String> {
        self.io
            .input_features
            .of_kind(FeatureType::Visual)
            .map(|f| f.key.clone())
            .collect()
    }

    /// Set a top-level field of the file as written (the typed view is not re-read).
    pub fn set_raw(&mut self, key: &str, value: Value) {
        if let Value::Object(map) = &mut self.raw {
            map.insert(key.to_string(), value);
        }
    }
}

/// Statistics of one normaliser step: `feature -> stat -> values` (`observation.state -> mean -> [..]`).
pub type Stats = BTreeMap<String, BTreeMap<String, Vec<f32>>>;

/// `NormalizerProcessorStep` / `UnnormalizerProcessorStep` (`lerobot.processor.normalize_processor`).
#[derive(Debug, Clone)]
pub struct NormalizerStep {
    pub eps: f64,
    pub features: Features,
    pub norm_map: BTreeMap<FeatureType, NormMode>,
    pub stats: Stats,
}

impl NormalizerStep {
    /// The statistic `stat` of `key`, with the file to name when it is missing.
    pub fn stat(&self, key: &str, stat: &str) -> Option<&[f32]> {
        self.stats.get(key).and_then(|s| s.get(stat)).map(Vec::as_slice)
    }

    /// `_apply_transform` of LeRobot 0.4.4 for one feature vector, in place: the mode comes from the
    /// feature's type; a feature without statistics, or an IDENTITY one, passes through unchanged.
    pub fn apply(
        &self,
        key: &str,
        kind: FeatureType,
        x: &mut [f32],
        inverse: bool,
    ) -> std::result::Result<(), String> {
        let mode = self.norm_map.get(&kind).copied().unwrap_or(NormMode::Identity);
        let Some(stats) = self.stats.get(key) else {
            return Ok(());
        };
        if mode == NormMode::Identity {
            return Ok(());
        }
        let (lo_name, hi_name) = match mode {
            NormMode::MeanStd => ("mean", "std"),
            NormMode::MinMax => ("min", "max"),
            NormMode::Quantiles => ("q01", "q99"),
            NormMode::Quantile10 => ("q10", "q90"),
            NormMode::Identity => unreachable!("handled above"),
        };
        let get = |name: &str| {
            let v = stats
                .get(name)
                .ok_or_else(|| format!("{mode:?} normalisation of `{key}` needs statistic `{key}.{name}`"))?;
            if v.len() == x.len() {
                Ok(v)
            } else {
                Err(format!(
                    "statistic `{key}.{name}` has {} values, the feature {}",
                    v.len(),
                    x.len()
                ))
            }
        };
        let (a, b) = (get(lo_name)?, get(hi_name)?);
        let eps = self.eps as f32;
        for ((v, &a), &b) in x.iter_mut().zip(a).zip(b) {
            *v = match (mode, inverse) {
                (NormMode::MeanStd, false) => (*v - a) / (b + eps),
                (NormMode::MeanStd, true) => *v * b + a,
                (_, _) => {
                    // MIN_MAX and the quantile modes map [a, b] to [-1, 1]; a zero range becomes eps.
                    let denom = if b - a == 0.0 { eps } else { b - a };
                    if inverse {
                        (*v + 1.0) / 2.0 * denom + a
                    } else {
                        2.0 * (*v - a) / denom - 1.0
                    }
                }
            };
        }
        Ok(())
    }
}

/// The JSON of a `NormalizerProcessorStep` config, as LeRobot writes it.
#[derive(Deserialize)]
struct NormalizerConfigJson {
    #[serde(default = "d_eps")]
    eps: f64,
    #[serde(default)]
    features: Features,
    #[serde(default)]
    norm_map: BTreeMap<FeatureType, NormMode>,
}

fn d_eps() -> f64 {
    1e-8
}

/// `TokenizerProcessorStep` settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TokenizerStep {
    #[serde(default = "d_max_len")]
    pub max_length: usize,
    #[serde(default = "d_task_key")]
    pub task_key: String,
    #[serde(default = "d_side")]
    pub padding_side: String,
    #[serde(default = "d_padding")]
    pub padding: String,
    #[serde(default = "d_true")]
    pub truncation: bool,
    #[serde(default)]
    pub tokenizer_name: Option<String>,
}

fn d_max_len() -> usize {
    512
}
fn d_task_key() -> String {
    "task".into()
}
fn d_side() -> String {
    "right".into()
}
fn d_padding() -> String {
    "max_length".into()
}

/// One processor step as a pipeline JSON lists it.
#[derive(Debug, Clone)]
pub enum Step {
    Rename(BTreeMap<String, String>),
    AddBatchDim,
    NewLine,
    Tokenizer(TokenizerStep),
    Device,
    Normalizer(NormalizerStep),
    Unnormalizer(NormalizerStep),
}

/// Give a policy's pre- and postprocessor the statistics of a new dataset: all of them to the
/// preprocessor's normaliser, and to the postprocessor's unnormaliser those of the features it handles.
pub(crate) fn replace_pipeline_stats(pre: &mut Pipeline, post: &mut Pipeline, stats: &Stats) {
    if let Some(n) = pre.normalizer_mut() {
        n.stats = stats.clone();
    }
    if let Some(n) = post.normalizer_mut() {
        n.stats = stats
            .iter()
            .filter(|(k, _)| n.features.get(k).is_some())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }
}

/// `policy_preprocessor.json` or `policy_postprocessor.json` with the statistics files it names.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub path: PathBuf,
    pub raw: Value,
    pub steps: Vec<Step>,
}

impl Pipeline {
    /// Read `dir/file_name` and the `state_file` of every stateful step.
    pub fn read(dir: &Path, file_name: &str) -> Result<Self> {
        let path = dir.join(file_name);
        let raw = read_json(&path)?;
        let list = raw
            .get("steps")
            .and_then(Value::as_array)
            .ok_or_else(|| config_err(&path, "key `steps` is missing or not a list"))?;
        let mut steps = Vec::with_capacity(list.len());
        for (i, entry) in list.iter().enumerate() {
            let name = entry
                .get("registry_name")
                .or_else(|| entry.get("class"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    config_err(
                        &path,
                        format!("key `steps[{i}]` has no `registry_name` or `class`"),
                    )
                })?;
            let config = entry.get("config").cloned().unwrap_or_else(|| json!({}));
            let bad =
                |e: serde_json::Error| config_err(&path, format!("key `steps[{i}].config` ({name}): {e}"));
            let step = match name {
                "rename_observations_processor" => Step::Rename(
                    config
                        .get("rename_map")
                        .map(|m| serde_json::from_value(m.clone()))
                        .transpose()
                        .map_err(bad)?
                        .unwrap_or_default(),
                ),
                "to_batch_processor" => Step::AddBatchDim,
                "smolvla_new_line_processor" => Step::NewLine,
                "device_processor" => Step::Device,
                "tokenizer_processor" => Step::Tokenizer(serde_json::from_value(config).map_err(bad)?),
                "normalizer_processor" | "unnormalizer_processor" => {
                    let c: NormalizerConfigJson = serde_json::from_value(config).map_err(bad)?;
                    let stats = match entry.get("state_file").and_then(Value::as_str) {
                        Some(file) => read_stats(&dir.join(file))?,
                        None => Stats::new(),
                    };
                    let step = NormalizerStep {
                        eps: c.eps,
                        features: c.features,
                        norm_map: c.norm_map,
                        stats,
                    };
                    if name == "normalizer_processor" {
                        Step::Normalizer(step)
                    } else {
                        Step::Unnormalizer(step)
                    }
                }
                other => {
                    return Err(config_err(
                        &path,
                        format!(
                            "key `steps[{i}]` is processor step `{other}`, which toprl does not implement"
                        ),
                    ));
                }
            };
            steps.push(step);
        }
        Ok(Self { path, raw, steps })
    }

    pub fn tokenizer(&self) -> Option<&TokenizerStep> {
        self.steps.iter().find_map(|s| match s {
            Step::Tokenizer(t) => Some(t),
            _ => None,
        })
    }

    pub fn normalizer(&self) -> Option<&NormalizerStep> {
        self.steps.iter().find_map(|s| match s {
            Step::Normalizer(n) | Step::Unnormalizer(n) => Some(n),
            _ => None,
        })
    }

    pub(crate) fn normalizer_mut(&mut self) -> Option<&mut NormalizerStep> {
        self.steps.iter_mut().find_map(|s| match s {
            Step::Normalizer(n) | Step::Unnormalizer(n) => Some(n),
            _ => None,
        })
    }

    pub fn rename_map(&self) -> BTreeMap<String, String> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Rename(m) => Some(m.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    pub fn adds_newline(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::NewLine))
    }

    /// Write this pipeline into `dir` as LeRobot's `_save_pretrained` does: the JSON (named `file_name`),
    /// and for each normaliser step with statistics `<name>_step_<i>_<registry>.safetensors`.
    pub(crate) fn write(&self, dir: &Path, file_name: &str) -> Result<()> {
        let mut raw = self.raw.clone();
        let pipeline_name = raw
            .get("name")
            .and_then(Value::as_str)
            .map(sanitize)
            .unwrap_or_else(|| file_name.trim_end_matches(".json").to_string());
        let entries = raw
            .get_mut("steps")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| config_err(&self.path, "key `steps` is missing or not a list"))?;
        for (i, (entry, step)) in entries.iter_mut().zip(&self.steps).enumerate() {
            let (registry, norm) = match step {
                Step::Normalizer(n) => ("normalizer_processor", n),
                Step::Unnormalizer(n) => ("unnormalizer_processor", n),
                _ => continue,
            };
            // The step's config (eps, features, norm_map) is written back as read; only its statistics change.
            let Value::Object(obj) = entry else { continue };
            if norm.stats.is_empty() {
                obj.remove("state_file");
            } else {
                let file = format!("{pipeline_name}_step_{i}_{registry}.safetensors");
                write_stats_shaped(&dir.join(&file), &norm.stats, &norm.features)?;
                obj.insert("state_file".into(), Value::String(file));
            }
        }
        let text = serde_json::to_string_pretty(&raw).map_err(|e| config_err(&self.path, e.to_string()))?;
        let out = dir.join(file_name);
        std::fs::write(&out, text).map_err(io_err(&out))
    }
}

/// `re.sub(r"[^a-zA-Z0-9_]", "_", name.lower())`, as LeRobot names state files.
fn sanitize(name: &str) -> String {
    name.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Read a safetensors file of statistics (`feature.stat` keys, split at the last dot as LeRobot's
/// `load_state_dict` does) as f32.
pub fn read_stats(path: &Path) -> Result<Stats> {
    let mut stats = Stats::new();
    for (name, (_, values)) in read_f32_tensors(path)? {
        let (key, stat) = name
            .rsplit_once('.')
            .ok_or_else(|| config_err(path, format!("tensor `{name}` is not named `feature.stat`")))?;
        stats
            .entry(key.to_string())
            .or_default()
            .insert(stat.to_string(), values);
    }
    Ok(stats)
}

/// Write statistics as f32 tensors named `feature.stat`, each of shape `[len]`.
pub fn write_stats(path: &Path, stats: &Stats) -> Result<()> {
    write_stats_shaped(path, stats, &Features::default())
}

/// Write statistics with the shapes LeRobot's normaliser broadcasts: an image feature's per-channel
/// statistics as `[C, 1, 1]` (what LeRobot's dataset statistics hold; a flat `[C]` would broadcast
/// against the image width), statistics the size of a feature in its shape, anything else `[len]`.
pub fn write_stats_shaped(path: &Path, stats: &Stats, features: &Features) -> Result<()> {
    let mut bytes: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (key, by_stat) in stats {
        let feature = features.get(key);
        for (stat, values) in by_stat {
            let n = values.len();
            let shape = match feature {
                Some(f) if f.kind == FeatureType::Visual && f.shape.first() == Some(&n) => vec![n, 1, 1],
                Some(f) if f.shape.len() > 1 && f.shape.iter().product::<usize>() == n => f.shape.clone(),
                _ => vec![n],
            };
            let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            bytes.push((format!("{key}.{stat}"), shape, data));
        }
    }
    write_f32_tensors(path, &bytes)
}

/// Write `(name, shape, little-endian f32 bytes)` tensors as one safetensors file.
pub fn write_f32_tensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<u8>)]) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| config_err(path, format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, None, path).map_err(|e| config_err(path, e.to_string()))
}

/// Tensors by name: `(shape, row-major f32 values)`.
pub type NamedTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Every tensor of a safetensors file as `name -> (shape, f32 values)`; f64, f16, bf16, i64 and i32 are
/// converted.
pub fn read_f32_tensors(path: &Path) -> Result<NamedTensors> {
    if !path.is_file() {
        return Err(missing_file(path, "safetensors file"));
    }
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| config_err(path, format!("not a safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            // Integer tensors (token ids, masks in fixtures) are exact in f32 below 2^24.
            Dtype::I64 => data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
                .collect(),
            Dtype::I32 => data
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
                .collect(),
            other => {
                return Err(config_err(
                    path,
                    format!("tensor `{name}` has dtype {other:?}, expected a float or integer type"),
                ));
            }
        };
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
}

/// Everything of a LeRobot SmolVLA folder except `model.safetensors`.
#[derive(Debug, Clone)]
pub struct LeRobotFolder {
    pub dir: PathBuf,
    pub config: LeRobotConfig,
    pub preprocessor: Pipeline,
    pub postprocessor: Pipeline,
}

impl LeRobotFolder {
    /// Read `config.json` and both processor pipelines of `dir`, and check that they agree: the
    /// preprocessor normalises the state and the postprocessor un-normalises the action with the
    /// statistics their modes need, and a tokenizer step is present.
    pub fn read(dir: &Path) -> Result<Self> {
        let config = LeRobotConfig::read(dir)?;
        let weights = dir.join(WEIGHTS_FILE);
        if !weights.is_file() {
            return Err(missing_file(&weights, "model weights"));
        }
        let preprocessor = Pipeline::read(dir, PREPROCESSOR_FILE)?;
        let postprocessor = Pipeline::read(dir, POSTPROCESSOR_FILE)?;
        let folder = Self {
            dir: dir.to_path_buf(),
            config,
            preprocessor,
            postprocessor,
        };
        folder.check()?;
        Ok(folder)
    }

    fn check(&self) -> Result<()> {
        let pre = &self.preprocessor;
        if pre.tokenizer().is_none() {
            return Err(config_err(
                &pre.path,
                "no `tokenizer_processor` step; SmolVLA needs one",
            ));
        }
        let norm = pre
            .normalizer()
            .ok_or_else(|| config_err(&pre.path, "no `normalizer_processor` step"))?;
        let unnorm = self
            .postprocessor
            .normalizer()
            .ok_or_else(|| config_err(&self.postprocessor.path, "no `unnormalizer_processor` step"))?;
        let state = self.config.state_feature()?;
        require_stats(norm, state, &pre.path)?;
        let action = self.config.action_feature()?;
        require_stats(norm, action, &pre.path)?;
        require_stats(unnorm, action, &self.postprocessor.path)
    }

    /// The tokenizer step of the preprocessor (present: checked on read).
    pub fn tokenizer_step(&self) -> &TokenizerStep {
        // `check` guarantees the step exists; fall back to the config's values otherwise.
        self.preprocessor.tokenizer().unwrap_or(&FALLBACK_TOKENIZER)
    }

    /// Replace the state and action statistics of both pipelines (what fine-tuning on a new dataset
    /// does): `stats` maps a feature name to its statistics (`mean`, `std`, ...).
    pub fn replace_stats(&mut self, stats: &Stats) {
        replace_pipeline_stats(&mut self.preprocessor, &mut self.postprocessor, stats);
    }

    /// Point the tokenizer step at another tokenizer (`tokenizer_name` in `policy_preprocessor.json`).
    pub fn set_tokenizer_name(&mut self, name: Value) {
        let Some(steps) = self
            .preprocessor
            .raw
            .get_mut("steps")
            .and_then(Value::as_array_mut)
        else {
            return;
        };
        for (entry, step) in steps.iter_mut().zip(self.preprocessor.steps.iter_mut()) {
            if let Step::Tokenizer(t) = step {
                t.tokenizer_name = name.as_str().map(String::from);
                if let Some(Value::Object(cfg)) = entry.get_mut("config") {
                    cfg.insert("tokenizer_name".into(), name.clone());
                }
            }
        }
    }

    /// Write `config.json`, both pipelines and their statistics into `dir` (an existing folder).
    pub fn write_into(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.config.raw)
            .map_err(|e| config_err(&self.config.path, e.to_string()))?;
        let out = dir.join(CONFIG_FILE);
        std::fs::write(&out, text).map_err(io_err(&out))?;
        self.preprocessor.write(dir, PREPROCESSOR_FILE)?;
        self.postprocessor.write(dir, POSTPROCESSOR_FILE)
    }
}

/// LeRobot passes a feature without statistics through unchanged; for the state and the action that
/// would silently feed the model wrong units, so here it is an error naming the statistics file's step.
pub(crate) fn require_stats(step: &NormalizerStep, f: &Feature, path: &Path) -> Result<()> {
    let mode = step.norm_map.get(&f.kind).copied().unwrap_or(NormMode::Identity);
    if mode == NormMode::Identity {
        return Ok(());
    }
    if !step.stats.contains_key(&f.key) {
        return Err(config_err(
            path,
            format!(
                "the {mode:?} step has no statistics for `{}` in its state_file",
                f.key
            ),
        ));
    }
    // A dry run surfaces a missing or mis-sized statistic (`action.std`), naming it.
    step.apply(&f.key, f.kind, &mut vec![0.0; f.shape[0]], false)
        .map_err(|r| config_err(path, r))
}

static FALLBACK_TOKENIZER: TokenizerStep = TokenizerStep {
    max_length: 48,
    task_key: String::new(),
    padding_side: String::new(),
    padding: String::new(),
    truncation: true,
    tokenizer_name: None,
};

/// The atomic folder write every policy checkpoint uses, here for LeRobot folders too.
pub use crate::checkpoint::write_dir_atomically;
