//! `so101 policy predict`: run any toprl policy (a native `policy.json` checkpoint, or a LeRobot SmolVLA
//! or ACT folder, dispatched on its `config.json` `type`) on one raw observation and print the
//! un-normalised action chunk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use toprl_policies::lerobot_act::LeRobotActPolicy;
use toprl_policies::lerobot_act::policy::resolve_policy_dir;
use toprl_policies::smolvla::lerobot::{IMAGES_PREFIX, policy_type, read_f32_tensors};
use toprl_policies::smolvla::processor::{ChwImage, RawSample};
use toprl_policies::smolvla::{SmolVlaPolicy, is_lerobot_folder};
use toprl_policies::{CameraImage, Observation, Policy, load_policy};

use crate::driver::camera_key;

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Predict the action chunk for one observation (any toprl policy, or a LeRobot SmolVLA or ACT folder).
    Predict(PredictArgs),
}

/// Run a policy on one raw observation.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// A toprl checkpoint folder (`policy.json`: gaussian, act, flow) or a LeRobot policy folder
    /// (`config.json` with `"type": "smolvla"` or `"act"`); a LeRobot folder may also be given as a
    /// Hugging Face Hub id (owner/name), fetched once into the hub cache.
    #[arg(long)]
    pub policy: PathBuf,
    /// A safetensors file of LeRobot features: `observation.state` [state_dim] and
    /// `observation.images.<camera>` [3, H, W] floats in [0, 1].
    #[arg(long)]
    pub observation: PathBuf,
    /// The task instruction (SmolVLA requires one; the flow policy reads it too).
    #[arg(long)]
    pub task: Option<String>,
    /// SmolVLA only: a safetensors file holding `noise` [chunk_size, max_action_dim], the flow-matching
    /// start point (default: drawn from --seed).
    #[arg(long)]
    pub noise: Option<PathBuf>,
    /// Seed of the sampling noise when --noise is not given (flow and SmolVLA policies).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print `{"actions": [[...], ...]}` on stdout (the chunk in dataset units, first action first).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub compute: crate::cli::PolicyDeviceArgs,
}

#[derive(Debug, Serialize)]
struct Prediction {
    actions: Vec<Vec<f32>>,
}

pub fn run(args: PolicyArgs) -> anyhow::Result<()> {
    match args.command {
        PolicyCommand::Predict(a) => predict(a),
    }
}

/// Tensors of the observation file as `name -> (shape, values)`.
type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn predict(args: PredictArgs) -> anyhow::Result<()> {
    let given = args.policy.to_string_lossy().into_owned();
    let dir = if args.policy.is_dir() {
        args.policy.clone()
    } else if looks_like_hub_id(&given) {
        resolve_policy_dir(&given)
            .with_context(|| format!("--policy {given}: fetching from the Hugging Face Hub"))?
    } else {
        bail!("--policy {}: no such checkpoint folder", args.policy.display());
    };
    let tensors = read_f32_tensors(&args.observation)
        .with_context(|| format!("--observation {}", args.observation.display()))?;
    let actions = if is_lerobot_folder(&dir) {
        let kind = policy_type(&dir).with_context(|| format!("--policy {}", dir.display()))?;
        match kind.as_str() {
            "smolvla" => predict_smolvla(&args, &dir, tensors)?,
            "act" => predict_lerobot_act(&args, &dir, &tensors)?,
            other => bail!(
                "--policy {}: config.json has `type` \"{other}\"; toprl runs LeRobot's \"smolvla\" and \"act\"",
                dir.display()
            ),
        }
    } else {
        if args.noise.is_some() {
            bail!(
                "--noise applies to SmolVLA folders only; {} is a native toprl checkpoint (use --seed)",
                dir.display()
            );
        }
        predict_native(&args, &tensors)?
    };
    if args.json {
        println!("{}", serde_json::to_string(&Prediction { actions })?);
    } else {
        for (i, a) in actions.iter().enumerate() {
            let row: Vec<String> = a.iter().map(|v| format!("{v:+.4}")).collect();
            println!("{i:>3}  {}", row.join(" "));
        }
    }
    Ok(())
}

fn vector<'a>(tensors: &'a Tensors, key: &str, file: &Path) -> anyhow::Result<&'a [f32]> {
    let (shape, values) = tensors
        .get(key)
        .with_context(|| format!("--observation {}: no tensor `{key}`", file.display()))?;
    if shape.len() != 1 {
        bail!(
            "--observation {}: tensor `{key}` has shape {shape:?}, expected [dim]",
            file.display()
        );
    }
    Ok(values)
}

/// The `observation.images.*` tensors as `[3, H, W]` images.
fn images(tensors: &Tensors, file: &Path) -> anyhow::Result<BTreeMap<String, ChwImage>> {
    let mut out = BTreeMap::new();
    for (key, (shape, values)) in tensors.iter().filter(|(k, _)| k.starts_with(IMAGES_PREFIX)) {
        if shape.len() != 3 || shape[0] != 3 || shape[1] == 0 || shape[2] == 0 {
            bail!(
                "--observation {}: tensor `{key}` has shape {shape:?}, expected [3, H, W]",
                file.display()
            );
        }
        if let Some(v) = values.iter().find(|v| !v.is_finite() || **v < 0.0 || **v > 1.0) {
            bail!(
                "--observation {}: tensor `{key}` holds {v}, expected floats in [0, 1]",
                file.display()
            );
        }
        out.insert(
            key.clone(),
            ChwImage {
                height: shape[1],
                width: shape[2],
                data: values.clone(),
            },
        );
    }
    Ok(out)
}

/// `owner/name`, not an existing path: what a Hugging Face Hub model id looks like.
fn looks_like_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2 && parts.iter().all(|p| !p.is_empty() && *p != "." && *p != "..") && !s.starts_with('.')
}

/// A LeRobot ACT folder: LeRobot's preprocessor, `predict_action_chunk` (deterministic: the latent is
/// zero at inference) and postprocessor on the observation's `observation.*` tensors.
fn predict_lerobot_act(args: &PredictArgs, dir: &Path, tensors: &Tensors) -> anyhow::Result<Vec<Vec<f32>>> {
    if args.noise.is_some() {
        bail!(
            "--noise applies to SmolVLA folders only; {} is a LeRobot ACT folder (deterministic at inference)",
            dir.display()
        );
    }
    let file = &args.observation;
    let dir_text = dir.to_string_lossy();
    let policy = LeRobotActPolicy::load(&dir_text, &args.compute.device()?)
        .with_context(|| format!("--policy {}: loading the LeRobot ACT folder", dir.display()))?;
    let mut sample = RawSample {
        images: images(tensors, file)?,
        ..RawSample::default()
    };
    for (key, (shape, values)) in tensors {
        if !key.starts_with(IMAGES_PREFIX) && shape.len() == 1 {
            sample.vectors.insert(key.clone(), values.clone());
        }
    }
    let chunk = policy
        .predict_chunks(&[sample])
        .with_context(|| format!("--policy {}: predicting", dir.display()))?;
    chunk
        .into_iter()
        .next()
        .context("the policy returned no action chunk")
}

fn predict_smolvla(args: &PredictArgs, dir: &Path, tensors: Tensors) -> anyhow::Result<Vec<Vec<f32>>> {
    let file = &args.observation;
    let task = args.task.clone().with_context(|| {
        format!(
            "--policy {} is a SmolVLA policy, which needs the instruction: pass --task TEXT",
            args.policy.display()
        )
    })?;
    let mut policy = SmolVlaPolicy::load(dir, &args.compute.device()?)
        .with_context(|| format!("--policy {}: loading the SmolVLA folder", dir.display()))?;
    let mut sample = RawSample {
        images: images(&tensors, file)?,
        task,
        ..RawSample::default()
    };
    for (key, (shape, values)) in &tensors {
        if !key.starts_with(IMAGES_PREFIX) && shape.len() == 1 {
            sample.vectors.insert(key.clone(), values.clone());
        }
    }
    vector(&tensors, toprl_policies::smolvla::lerobot::STATE_KEY, file)?;
    let noise = match &args.noise {
        Some(path) => {
            let noise = read_f32_tensors(path).with_context(|| format!("--noise {}", path.display()))?;
            let (shape, values) = noise
                .get("noise")
                .with_context(|| format!("--noise {}: no tensor `noise`", path.display()))?;
            let want = [policy.chunk_size(), policy.max_action_dim()];
            let ok = shape.as_slice() == want || shape.as_slice() == [1, want[0], want[1]];
            if !ok {
                bail!(
                    "--noise {}: tensor `noise` has shape {shape:?}, expected [chunk_size, max_action_dim] = {want:?}",
                    path.display()
                );
            }
            Some(values.clone())
        }
        None => None,
    };
    let chunk = policy
        .predict(&[sample], noise.as_deref(), args.seed)
        .with_context(|| format!("--policy {}: predicting", args.policy.display()))?;
    chunk
        .into_iter()
        .next()
        .context("the policy returned no action chunk")
}

fn predict_native(args: &PredictArgs, tensors: &Tensors) -> anyhow::Result<Vec<Vec<f32>>> {
    let file = &args.observation;
    let mut policy = load_policy(&args.policy, &args.compute.device()?)
        .with_context(|| format!("--policy {}: loading the checkpoint", args.policy.display()))?
        .with_seed(args.seed);
    let mut state = Vec::new();
    for feature in policy.state_features() {
        state.extend_from_slice(vector(tensors, feature, file)?);
    }
    // Native image policies see the simulator's cameras in training order: front, then wrist.
    let cameras = policy.config().cameras();
    let keys: Vec<String> = ["front", "wrist"]
        .iter()
        .take(cameras)
        .map(|c| camera_key(c))
        .collect();
    let imgs = images(tensors, file)?;
    if let Some(extra) = imgs.keys().find(|k| !keys.contains(k)) {
        bail!(
            "--observation {}: tensor `{extra}` is a camera this policy does not use (it reads {keys:?})",
            file.display()
        );
    }
    let mut camera_images = Vec::with_capacity(keys.len());
    for key in &keys {
        let img = imgs.get(key).with_context(|| {
            format!(
                "--observation {}: no tensor `{key}` (the policy reads {keys:?})",
                file.display()
            )
        })?;
        let plane = img.height * img.width;
        let mut rgb = Vec::with_capacity(plane * 3);
        for p in 0..plane {
            for c in 0..3 {
                rgb.push((img.data[c * plane + p] * 255.0).round() as u8);
            }
        }
        camera_images.push(CameraImage {
            key: key.clone(),
            height: img.height,
            width: img.width,
            rgb,
        });
    }
    let observation = Observation {
        state,
        images: camera_images,
        instruction: args.task.clone().unwrap_or_default(),
    };
    Ok(policy.act(&observation)?)
}
