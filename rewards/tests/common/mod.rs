//! Shared helpers for the Qwen3-VL / TOPReward parity tests: fixture paths, the reference JSON, and the
//! processor's patch layout rebuilt from the reference's resized uint8 frames (checked bit-exact against
//! transformers' `pixel_values_videos` by the fixture script).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::Deserialize;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

pub fn tiny_model_dir() -> PathBuf {
    fixtures().join("qwen3vl-tiny")
}

#[derive(Debug, Deserialize)]
pub struct Reference {
    pub fps: f64,
    pub true_token_id: u32,
    pub episodes: std::collections::BTreeMap<String, RefEpisode>,
}

#[derive(Debug, Deserialize)]
pub struct RefEpisode {
    pub instruction: String,
    pub num_frames: usize,
    pub prefixes: Vec<RefPrefix>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RefPrefix {
    pub prefix_length: usize,
    pub frame_indices: Vec<usize>,
    pub video_grid_thw: [usize; 3],
    pub resized_hw: [usize; 2],
    pub num_tokens: usize,
    pub input_ids: Vec<u32>,
    pub log_prob_true: f64,
}

pub fn reference() -> Reference {
    let text = std::fs::read_to_string(fixtures().join("topreward_reference.json")).expect("reference json");
    serde_json::from_str(&text).expect("parse reference json")
}

pub fn load_rgb(path: &Path) -> image::RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

/// The episode's original frames.
pub fn episode_frames(name: &str, n: usize) -> Vec<image::RgbImage> {
    (0..n)
        .map(|i| load_rgb(&fixtures().join(format!("episodes/{name}/frame_{i:02}.png"))))
        .collect()
}

/// The reference's resized frames for `prefix`, in its padded frame order.
pub fn resized_frames(name: &str, prefix: &RefPrefix) -> Vec<image::RgbImage> {
    let [h, w] = prefix.resized_hw;
    prefix
        .frame_indices
        .iter()
        .map(|i| load_rgb(&fixtures().join(format!("episodes/{name}/resized_{h}x{w}_{i:02}.png"))))
        .collect()
}

/// Qwen3-VL video patches of already-resized frames (even count): value (x - 127.5) / 127.5, rows in
/// (t, h/32, w/32, 2, 2) order, columns (C, 2, 16, 16).
pub fn patchify(frames: &[image::RgbImage]) -> Tensor {
    let (w, h) = frames[0].dimensions();
    let (h, w) = (h as usize, w as usize);
    let (p, m, tp) = (16usize, 2usize, 2usize);
    let (gh, gw) = (h / p, w / p);
    let mut out = Vec::with_capacity(frames.len() * h * w * 3);
    for t in 0..frames.len() / tp {
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for ih in 0..m {
                    for iw in 0..m {
                        let (py0, px0) = ((bh * m + ih) * p, (bw * m + iw) * p);
                        for c in 0..3 {
                            for tt in 0..tp {
                                let f = &frames[t * tp + tt];
                                for y in 0..p {
                                    for x in 0..p {
                                        let v = f.get_pixel((px0 + x) as u32, (py0 + y) as u32)[c] as f32;
                                        out.push((v - 127.5) / 127.5);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let rows = frames.len() / tp * gh * gw;
    Tensor::from_vec(out, (rows, 3 * tp * p * p), &Device::Cpu).expect("patch tensor")
}
