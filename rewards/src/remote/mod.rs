//! TOPReward beyond one process: the wire format of toprl's reward server ([`server`]) and a client
//! ([`client`]) that scores episodes on toprl servers or OpenAI-compatible ones (vLLM; SGLang untested).
//!
//! Native endpoint `POST /v1/topreward/score` takes lossless frames (PNG or raw RGB, base64) and returns the
//! JSON `topreward score --json` prints ([`episode_json`]). The OpenAI-compatible `POST /v1/chat/completions`
//! takes what vLLM users send for log-probs (see [`server`]).

pub mod client;
pub mod server;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::score::EpisodeScore;
use crate::topreward::Mode;

/// Path of the native scoring endpoint.
pub const SCORE_PATH: &str = "/v1/topreward/score";
/// Path of the OpenAI-compatible chat endpoint.
pub const CHAT_PATH: &str = "/v1/chat/completions";
/// Prefixes averaged by the success detector (paper v1: the last 3).
pub const SUCCESS_PREFIXES: usize = 3;

/// One frame on the wire: `png` (base64 PNG) or `rgb` (base64 of `width * height * 3` bytes, row-major).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WireFrame {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub png: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rgb: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
}

/// Body of `POST /v1/topreward/score`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    pub instruction: String,
    /// Frame rate of `frames` (default 2.0, the paper's).
    #[serde(default = "default_fps")]
    pub fps: f64,
    /// `exact` or `incremental` (default: the server's `--mode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Frames already sampled at `fps`, in time order.
    pub frames: Vec<WireFrame>,
    /// Adds `success` (success score >= threshold) to the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<f64>,
    /// Also score the first frame repeated and add `static_voc`.
    #[serde(default)]
    pub static_check: bool,
}

fn default_fps() -> f64 {
    2.0
}

/// A frame that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame {index}: {reason}")]
    Bad { index: usize, reason: String },
}

impl WireFrame {
    /// Lossless PNG of `img`.
    pub fn png(img: &RgbImage) -> Self {
        Self {
            png: Some(BASE64.encode(encode_png(img))),
            ..Default::default()
        }
    }

    /// Raw RGB bytes of `img`.
    pub fn rgb(img: &RgbImage) -> Self {
        Self {
            rgb: Some(BASE64.encode(img.as_raw())),
            width: Some(img.width()),
            height: Some(img.height()),
            png: None,
        }
    }

    pub fn decode(&self, index: usize) -> Result<RgbImage, FrameError> {
        let bad = |reason: String| FrameError::Bad { index, reason };
        match (&self.png, &self.rgb) {
            (Some(p), None) => {
                let bytes = BASE64
                    .decode(p)
                    .map_err(|e| bad(format!("png is not base64: {e}")))?;
                decode_image(&bytes).map_err(bad)
            }
            (None, Some(r)) => {
                let (Some(w), Some(h)) = (self.width, self.height) else {
                    return Err(bad("rgb needs width and height".into()));
                };
                let bytes = BASE64
                    .decode(r)
                    .map_err(|e| bad(format!("rgb is not base64: {e}")))?;
                let want = w as usize * h as usize * 3;
                if bytes.len() != want || w == 0 || h == 0 {
                    return Err(bad(format!(
                        "rgb has {} bytes, expected width * height * 3 = {want}",
                        bytes.len()
                    )));
                }
                RgbImage::from_raw(w, h, bytes).ok_or_else(|| bad("rgb buffer size".into()))
            }
            _ => Err(bad("give exactly one of png or rgb".into())),
        }
    }
}

/// PNG bytes of an image (lossless).
pub fn encode_png(img: &RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    // Writing a valid RgbImage to memory cannot fail.
    let _ = img.write_to(&mut out, image::ImageFormat::Png);
    out.into_inner()
}

/// Decode PNG/JPEG/BMP bytes (format sniffed from the content) to RGB.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage, String> {
    image::load_from_memory(bytes)
        .map(|i| i.to_rgb8())
        .map_err(|e| format!("not a decodable image: {e}"))
}

/// What `topreward score --json` prints for an episode: the [`EpisodeScore`] fields, `success_score` (mean
/// log p(" True") of the last 3 prefixes), `success` when a threshold is given, `static_voc` when the
/// static-video check ran.
pub fn episode_json(
    score: &EpisodeScore,
    success_threshold: Option<f64>,
    static_voc: Option<Option<f64>>,
) -> serde_json::Value {
    let success_score = crate::metrics::success_score(&score.log_probs, SUCCESS_PREFIXES);
    let mut json = serde_json::to_value(score).unwrap_or_default();
    if let Some(object) = json.as_object_mut() {
        object.insert("success_score".into(), serde_json::json!(success_score));
        if let Some(theta) = success_threshold {
            let success = success_score.map(|s| s >= theta);
            object.insert("success".into(), serde_json::json!(success));
        }
        if let Some(voc) = static_voc {
            object.insert("static_voc".into(), serde_json::json!(voc));
        }
    }
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_losslessly_and_bad_frames_say_why() {
        let mut img = RgbImage::new(5, 3);
        for (i, p) in img.pixels_mut().enumerate() {
            *p = image::Rgb([i as u8, (i * 7) as u8, 255 - i as u8]);
        }
        assert_eq!(WireFrame::png(&img).decode(0).unwrap(), img);
        assert_eq!(WireFrame::rgb(&img).decode(0).unwrap(), img);
        let mut short = WireFrame::rgb(&img);
        short.width = Some(6);
        let err = short.decode(4).unwrap_err().to_string();
        assert!(
            err.contains("frame 4") && err.contains("expected width * height * 3 = 54"),
            "{err}"
        );
        assert!(WireFrame::default().decode(0).is_err());
        let garbage = WireFrame {
            png: Some(BASE64.encode(b"nope")),
            ..Default::default()
        };
        assert!(
            garbage
                .decode(1)
                .unwrap_err()
                .to_string()
                .contains("not a decodable image")
        );
    }

    #[test]
    fn episode_json_has_the_score_fields() {
        let s = EpisodeScore {
            prefix_lengths: vec![1, 2, 3, 4],
            log_probs: vec![-4.0, -3.0, -2.0, -1.0],
            progress: vec![0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0],
            num_tokens: vec![1, 2, 3, 4],
            voc: Some(1.0),
        };
        let j = episode_json(&s, Some(-2.5), Some(None));
        assert_eq!(j["success_score"], -2.0);
        assert_eq!(j["success"], true);
        assert!(j["static_voc"].is_null());
        let back: EpisodeScore = serde_json::from_value(j).unwrap();
        assert_eq!(back, s);
        assert!(episode_json(&s, None, None).get("success").is_none());
    }
}
