//! Frames in: a folder of images, or a video file sampled at a fixed rate, as `image::RgbImage`s (the
//! workspace's frame type).
//!
//! Video sampling rule (LeRobot's TOPReward port feeds frames sampled at 2 fps): time 0 is the first decoded
//! frame's presentation time; for k = 0, 1, ... while k / fps is at most the last frame's time, the frame whose
//! presentation time is nearest to k / fps is taken (the earlier one on a tie). A source slower than `fps`
//! therefore repeats frames; a faster one skips them.

use std::path::{Path, PathBuf};
#[cfg(feature = "video")]
use std::sync::Once;

#[cfg(feature = "video")]
use ff::format::Pixel;
#[cfg(feature = "video")]
use ff::software::scaling::{context::Context as Scaler, flag::Flags};
#[cfg(feature = "video")]
use ffmpeg_next as ff;
use image::RgbImage;

/// What can go wrong reading frames.
#[derive(Debug, thiserror::Error)]
pub enum FramesError {
    #[error("cannot read folder {path}: {source}")]
    ReadDir { path: PathBuf, source: std::io::Error },
    #[error("{0} holds no .png, .jpg or .jpeg images")]
    EmptyFolder(PathBuf),
    #[error("cannot read image {path}: {source}")]
    Image {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error(
        "{path} is {width}x{height} but {first} is {expected_width}x{expected_height}; frames must share a size"
    )]
    MixedSizes {
        path: PathBuf,
        width: u32,
        height: u32,
        first: PathBuf,
        expected_width: u32,
        expected_height: u32,
    },
    #[error("{path} is not a readable video: {reason}")]
    NotVideo { path: PathBuf, reason: String },
    #[error("cannot decode video {path}: {reason}")]
    Decode { path: PathBuf, reason: String },
    #[error("{0} decoded to no frames")]
    NoFrames(PathBuf),
    #[error("sampling fps must be positive and finite, got {0}")]
    BadFps(f64),
    #[error(
        "{path}: sampling {duration_s:.3} s of video at {fps} fps gives {samples} frames, more than the limit of \
         {limit}; lower the sampling fps"
    )]
    TooManySamples {
        path: PathBuf,
        fps: f64,
        duration_s: f64,
        /// Frames the sampling rule would produce (at least; more when the container understates its length).
        samples: f64,
        limit: usize,
    },
    #[error("keep_last must be at least 1")]
    BadKeepLast,
    #[error(
        "cannot decode video {0}: toprl-rewards was built without its `video` feature (FFmpeg); rebuild with \
         it, or pass a folder of frames"
    )]
    NoVideoSupport(PathBuf),
}

/// Bounds applied before and while frames are read, so a request can never make memory or time grow
/// without bound: the sample count is computed from the video's duration before anything is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Refuse a sampling that would produce more frames than this (before decoding, from the duration
    /// the container declares, and again while decoding in case it understates it).
    pub max_samples: usize,
    /// Keep only the last N frames; earlier ones are dropped as they are read (memory stays O(N)).
    pub keep_last: Option<usize>,
}

/// Default [`FrameLimits::max_samples`]: 83 minutes at the paper's 2 fps, far beyond any model's context.
pub const DEFAULT_MAX_SAMPLES: usize = 10_000;

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            max_samples: DEFAULT_MAX_SAMPLES,
            keep_last: None,
        }
    }
}

/// Image files of `dir` (`.png`, `.jpg`, `.jpeg`, any case), sorted by file name (so number them with leading
/// zeros), decoded to RGB. All must have the same size; the first that differs is named.
pub fn load_image_folder(dir: &Path) -> Result<Vec<RgbImage>, FramesError> {
    load_image_folder_last(dir, None)
}

/// [`load_image_folder`] decoding only the last `keep_last` images (by name) when given.
pub fn load_image_folder_last(dir: &Path, keep_last: Option<usize>) -> Result<Vec<RgbImage>, FramesError> {
    if keep_last == Some(0) {
        return Err(FramesError::BadKeepLast);
    }
    let read_err = |source| FramesError::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if path.is_file() && matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg")) {
            paths.push(path);
        }
    }
    paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    let first = paths
        .first()
        .cloned()
        .ok_or_else(|| FramesError::EmptyFolder(dir.to_path_buf()))?;
    if let Some(n) = keep_last {
        paths.drain(..paths.len().saturating_sub(n));
    }
    let first = paths.first().cloned().unwrap_or(first);
    let mut frames: Vec<RgbImage> = Vec::with_capacity(paths.len());
    for path in paths {
        let img = image::open(&path)
            .map_err(|source| FramesError::Image {
                path: path.clone(),
                source,
            })?
            .to_rgb8();
        if let Some(f0) = frames.first()
            && f0.dimensions() != img.dimensions()
        {
            return Err(FramesError::MixedSizes {
                path,
                width: img.width(),
                height: img.height(),
                first,
                expected_width: f0.width(),
                expected_height: f0.height(),
            });
        }
        frames.push(img);
    }
    Ok(frames)
}

/// Frames sampled from a video file.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledVideo {
    /// One frame per sample time `k / fps`.
    pub frames: Vec<RgbImage>,
    /// Presentation time (seconds from the first frame) of the frame taken for each sample.
    pub source_times: Vec<f64>,
    /// Index in decode order of the frame taken for each sample.
    pub source_indices: Vec<usize>,
    /// The sampling rate asked for: frame k stands for time k / fps (pass it to the video processor's metadata).
    pub fps: f64,
    /// The stream's declared average frame rate, when it has one.
    pub source_fps: Option<f64>,
}

#[cfg(feature = "video")]
fn init_ffmpeg() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // registration cannot fail on FFmpeg >= 4; keep FFmpeg's own logging to errors
        let _ = ff::init();
        ff::log::set_level(ff::log::Level::Error);
    });
}

/// Decode `path` with FFmpeg and sample it at `fps` (see the module docs for the rule), within the
/// default [`FrameLimits`].
pub fn load_video(path: &Path, fps: f64) -> Result<SampledVideo, FramesError> {
    load_video_limited(path, fps, FrameLimits::default())
}

/// [`load_video`] within `limits`: the number of samples is computed from the declared duration and
/// refused before decoding when above `max_samples`; with `keep_last` only the last frames are kept.
pub fn load_video_limited(path: &Path, fps: f64, limits: FrameLimits) -> Result<SampledVideo, FramesError> {
    if !(fps.is_finite() && fps > 0.0) {
        return Err(FramesError::BadFps(fps));
    }
    if limits.keep_last == Some(0) {
        return Err(FramesError::BadKeepLast);
    }
    #[cfg(feature = "video")]
    return decode_video(path, fps, limits);
    #[cfg(not(feature = "video"))]
    Err(FramesError::NoVideoSupport(path.to_path_buf()))
}

/// The FFmpeg half of [`load_video_limited`], after its arguments are checked.
#[cfg(feature = "video")]
fn decode_video(path: &Path, fps: f64, limits: FrameLimits) -> Result<SampledVideo, FramesError> {
    init_ffmpeg();
    let not_video = |reason: String| FramesError::NotVideo {
        path: path.to_path_buf(),
        reason,
    };
    let decode_err = |e: ff::Error| FramesError::Decode {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut ictx = ff::format::input(path).map_err(|e| not_video(e.to_string()))?;
    let (stream_index, time_base, params, rate) = {
        let stream = ictx
            .streams()
            .best(ff::media::Type::Video)
            .ok_or_else(|| not_video("no video stream".into()))?;
        (
            stream.index(),
            f64::from(stream.time_base()),
            stream.parameters(),
            stream.avg_frame_rate(),
        )
    };
    let source_fps = (rate.numerator() > 0 && rate.denominator() > 0).then(|| f64::from(rate));
    // Samples are k / fps for k = 0.. up to the last frame's time: about duration * fps + 1.
    let stream_duration = ictx
        .stream(stream_index)
        .map(|st| st.duration() as f64 * time_base)
        .filter(|d| d.is_finite() && *d > 0.0);
    let container_duration =
        Some(ictx.duration() as f64 / 1e6 /* AV_TIME_BASE */).filter(|d| d.is_finite() && *d > 0.0);
    if let Some(duration_s) = stream_duration.or(container_duration) {
        let samples = (duration_s * fps).floor() + 1.0;
        if samples > limits.max_samples as f64 {
            return Err(FramesError::TooManySamples {
                path: path.to_path_buf(),
                fps,
                duration_s,
                samples,
                limit: limits.max_samples,
            });
        }
    }
    let ctx = ff::codec::context::Context::from_parameters(params).map_err(|e| not_video(e.to_string()))?;
    let mut decoder = ctx.decoder().video().map_err(|e| not_video(e.to_string()))?;

    let mut sampler = Sampler {
        fps,
        limits,
        taken: 0,
        out: SampledVideo {
            frames: Vec::new(),
            source_times: Vec::new(),
            source_indices: Vec::new(),
            fps,
            source_fps,
        },
        prev: None,
        origin: None,
        decoded: 0,
        scaler: None,
    };
    for (stream, packet) in ictx.packets() {
        if stream.index() != stream_index {
            continue;
        }
        decoder.send_packet(&packet).map_err(decode_err)?;
        sampler.drain(&mut decoder, time_base, path)?;
    }
    decoder.send_eof().map_err(decode_err)?;
    sampler.drain(&mut decoder, time_base, path)?;
    if sampler.decoded == 0 {
        return Err(FramesError::NoFrames(path.to_path_buf()));
    }
    sampler.keep_tail(0);
    Ok(sampler.out)
}

#[cfg(feature = "video")]
/// Streaming nearest-frame sampler: frames arrive in presentation order; the previous frame is kept
/// undecoded-to-RGB until the next one shows which of the two is nearer to each pending sample time.
struct Sampler {
    fps: f64,
    limits: FrameLimits,
    /// Samples taken so far (kept or already dropped by `keep_last`): sample k stands for time k / fps.
    taken: usize,
    out: SampledVideo,
    /// (time, decode index, frame) of the last frame seen.
    prev: Option<(f64, usize, ff::frame::Video)>,
    origin: Option<f64>,
    decoded: usize,
    scaler: Option<(Scaler, Pixel, u32, u32)>,
}

#[cfg(feature = "video")]
impl Sampler {
    fn drain(
        &mut self,
        decoder: &mut ff::decoder::Video,
        time_base: f64,
        path: &Path,
    ) -> Result<(), FramesError> {
        loop {
            let mut frame = ff::frame::Video::empty();
            if decoder.receive_frame(&mut frame).is_err() {
                return Ok(());
            }
            let index = self.decoded;
            self.decoded += 1;
            // frames without a timestamp are placed one nominal period after the previous one
            let t = match frame.timestamp().or(frame.pts()) {
                Some(pts) => pts as f64 * time_base,
                None => self
                    .prev
                    .as_ref()
                    .map_or(0.0, |p| p.0 + 1.0 / self.out.source_fps.unwrap_or(self.fps)),
            };
            let origin = *self.origin.get_or_insert(t);
            let t = t - origin;
            // every pending sample time up to t is decided between prev and this frame
            loop {
                let target = self.taken as f64 / self.fps;
                if target > t {
                    break;
                }
                if self.taken >= self.limits.max_samples {
                    return Err(FramesError::TooManySamples {
                        path: path.to_path_buf(),
                        fps: self.fps,
                        duration_s: t,
                        samples: (t * self.fps).floor() + 1.0,
                        limit: self.limits.max_samples,
                    });
                }
                let take_prev = self.prev.as_ref().is_some_and(|p| target - p.0 <= t - target);
                match self.prev.take() {
                    Some((pt, pi, pf)) if take_prev => {
                        let img = self.rgb_of(&pf, pi, path)?;
                        self.prev = Some((pt, pi, pf));
                        self.push(img, pt, pi);
                    }
                    prev => {
                        self.prev = prev;
                        let img = self.rgb_of(&frame, index, path)?;
                        self.push(img, t, index);
                    }
                }
            }
            self.prev = Some((t, index, frame));
        }
    }

    fn push(&mut self, img: RgbImage, t: f64, index: usize) {
        self.taken += 1;
        self.out.frames.push(img);
        self.out.source_times.push(t);
        self.out.source_indices.push(index);
        // Dropping in batches keeps the cost linear; at most 2 * keep_last frames are ever held.
        self.keep_tail(1);
    }

    /// With `keep_last = n`, drop all but the last n samples once more than `n + slack * n` are held.
    fn keep_tail(&mut self, slack: usize) {
        if let Some(n) = self.limits.keep_last
            && self.out.frames.len() > n + slack * n
        {
            // The last kept frame stays, so `rgb_of` can still reuse it for a repeated source frame.
            let drop = self.out.frames.len() - n;
            self.out.frames.drain(..drop);
            self.out.source_times.drain(..drop);
            self.out.source_indices.drain(..drop);
        }
    }

    /// RGB of decoded frame `index`: reused when the previous sample took the same frame.
    fn rgb_of(
        &mut self,
        frame: &ff::frame::Video,
        index: usize,
        path: &Path,
    ) -> Result<RgbImage, FramesError> {
        match (self.out.source_indices.last(), self.out.frames.last()) {
            (Some(&last), Some(img)) if last == index => Ok(img.clone()),
            _ => self.convert_rgb(frame, path),
        }
    }

    /// swscale the decoded frame to packed RGB24 at its own size.
    fn convert_rgb(&mut self, frame: &ff::frame::Video, path: &Path) -> Result<RgbImage, FramesError> {
        let (fmt, w, h) = (frame.format(), frame.width(), frame.height());
        let stale = !matches!(&self.scaler, Some((_, f, sw, sh)) if *f == fmt && *sw == w && *sh == h);
        if stale {
            let s = Scaler::get(fmt, w, h, Pixel::RGB24, w, h, Flags::BILINEAR).map_err(|e| {
                FramesError::Decode {
                    path: path.to_path_buf(),
                    reason: format!("swscale: {e}"),
                }
            })?;
            self.scaler = Some((s, fmt, w, h));
        }
        let mut rgb = ff::frame::Video::empty();
        if let Some((scaler, ..)) = self.scaler.as_mut() {
            scaler.run(frame, &mut rgb).map_err(|e| FramesError::Decode {
                path: path.to_path_buf(),
                reason: format!("swscale: {e}"),
            })?;
        }
        let stride = rgb.stride(0);
        let data = rgb.data(0);
        let row = w as usize * 3;
        let mut buf = Vec::with_capacity(row * h as usize);
        for y in 0..h as usize {
            buf.extend_from_slice(&data[y * stride..y * stride + row]);
        }
        RgbImage::from_raw(w, h, buf).ok_or_else(|| FramesError::Decode {
            path: path.to_path_buf(),
            reason: "RGB buffer has an unexpected size".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join("frames")
            .join(name)
    }

    #[cfg(feature = "video")]
    /// Source index of a frame of the grey-ramp fixture (level 10 + 12 i, lossless).
    fn grey_index(img: &RgbImage) -> usize {
        let p = img.get_pixel(img.width() / 2, img.height() / 2).0;
        assert!(
            p[0] == p[1] && p[1] == p[2] && (p[0] - 10).is_multiple_of(12),
            "unexpected pixel {p:?}"
        );
        ((p[0] - 10) / 12) as usize
    }

    #[cfg(feature = "video")]
    #[test]
    fn video_sampled_at_2fps_takes_every_fifth_frame_of_a_10fps_source() {
        let v = load_video(&fixture("grey_ramp_10fps.mkv"), 2.0).unwrap();
        let got: Vec<usize> = v.frames.iter().map(grey_index).collect();
        assert_eq!(got, vec![0, 5, 10, 15]);
        assert_eq!(v.source_indices, got);
        assert_eq!(v.source_fps, Some(10.0));
        assert_eq!((v.frames[0].width(), v.frames[0].height()), (64, 48));
    }

    #[cfg(feature = "video")]
    #[test]
    fn video_sampling_takes_the_nearest_frame_and_repeats_when_faster_than_the_source() {
        // targets k/3: 0, .333, .667, 1, 1.333, 1.667 -> nearest of frames at i/10
        let v = load_video(&fixture("grey_ramp_10fps.mkv"), 3.0).unwrap();
        assert_eq!(
            v.frames.iter().map(grey_index).collect::<Vec<_>>(),
            vec![0, 3, 7, 10, 13, 17]
        );
        // 25 fps over a 10 fps source: every target up to 1.9 s, frames repeat
        let v = load_video(&fixture("grey_ramp_10fps.mkv"), 25.0).unwrap();
        let idx: Vec<usize> = v.frames.iter().map(grey_index).collect();
        assert_eq!(idx.len(), 48); // k = 0..=47 (47 / 25 = 1.88 <= 1.9)
        for (k, &i) in idx.iter().enumerate() {
            let t = k as f64 / 25.0;
            let best = (0..20).min_by(|&a, &b| {
                (a as f64 / 10.0 - t)
                    .abs()
                    .total_cmp(&(b as f64 / 10.0 - t).abs())
            });
            assert_eq!(Some(i), best, "sample {k} at {t}");
        }
    }

    #[cfg(feature = "video")]
    #[test]
    fn the_sample_count_is_refused_before_decoding_and_keep_last_bounds_memory() {
        let path = fixture("grey_ramp_10fps.mkv");
        // 1e9 fps over 2 s would be 2e9 frames: refused from the declared duration, at once.
        let started = std::time::Instant::now();
        let err = load_video(&path, 1e9).unwrap_err();
        assert!(matches!(err, FramesError::TooManySamples { .. }), "{err}");
        assert!(err.to_string().contains("lower the sampling fps"), "{err}");
        assert!(started.elapsed().as_secs_f64() < 5.0);
        // A limit below the count is enforced the same way.
        let limits = FrameLimits {
            max_samples: 10,
            keep_last: None,
        };
        assert!(matches!(
            load_video_limited(&path, 25.0, limits),
            Err(FramesError::TooManySamples { limit: 10, .. })
        ));
        // keep_last keeps exactly the tail of the full sampling.
        let full = load_video(&path, 25.0).unwrap();
        for n in [1, 3, 16, 100] {
            let limits = FrameLimits {
                keep_last: Some(n),
                ..FrameLimits::default()
            };
            let tail = load_video_limited(&path, 25.0, limits).unwrap();
            let skip = full.frames.len().saturating_sub(n);
            assert_eq!(tail.frames, full.frames[skip..], "keep_last {n}");
            assert_eq!(tail.source_indices, full.source_indices[skip..]);
            assert_eq!(tail.source_times, full.source_times[skip..]);
        }
        assert!(matches!(
            load_video_limited(
                &path,
                2.0,
                FrameLimits {
                    keep_last: Some(0),
                    ..FrameLimits::default()
                }
            ),
            Err(FramesError::BadKeepLast)
        ));
    }

    #[cfg(feature = "video")]
    #[test]
    fn a_file_that_is_not_a_video_is_a_typed_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.mp4");
        std::fs::write(&path, "this is text, not a video").unwrap();
        let err = load_video(&path, 2.0).unwrap_err();
        assert!(matches!(err, FramesError::NotVideo { .. }), "{err}");
        assert!(err.to_string().contains("notes.mp4"), "{err}");
        assert!(matches!(load_video(&path, 0.0), Err(FramesError::BadFps(_))));
        let missing = dir.path().join("missing.mkv");
        assert!(
            load_video(&missing, 2.0)
                .unwrap_err()
                .to_string()
                .contains("missing.mkv")
        );
    }

    #[test]
    fn image_folders_load_in_name_order_and_report_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        for (name, level) in [
            ("frame_002.png", 30u8),
            ("frame_000.jpg", 200),
            ("frame_001.PNG", 90),
        ] {
            let img = RgbImage::from_pixel(20, 10, image::Rgb([level, level, level]));
            img.save_with_format(
                dir.path().join(name),
                if name.ends_with("jpg") {
                    image::ImageFormat::Jpeg
                } else {
                    image::ImageFormat::Png
                },
            )
            .unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let frames = load_image_folder(dir.path()).unwrap();
        let levels: Vec<u8> = frames.iter().map(|f| f.get_pixel(5, 5).0[0]).collect();
        assert_eq!(levels.len(), 3);
        assert!(
            (levels[0] as i32 - 200).abs() <= 2 && levels[1] == 90 && levels[2] == 30,
            "{levels:?}"
        );

        // a differently sized frame is named
        RgbImage::new(8, 8)
            .save(dir.path().join("frame_003.png"))
            .unwrap();
        let err = load_image_folder(dir.path()).unwrap_err();
        assert!(
            matches!(err, FramesError::MixedSizes { .. }) && err.to_string().contains("frame_003.png"),
            "{err}"
        );

        // an unreadable image is named
        std::fs::write(dir.path().join("frame_003.png"), "not a png").unwrap();
        let err = load_image_folder(dir.path()).unwrap_err();
        assert!(
            matches!(err, FramesError::Image { .. }) && err.to_string().contains("frame_003.png"),
            "{err}"
        );

        // an empty folder is named
        let empty = tempfile::tempdir().unwrap();
        let err = load_image_folder(empty.path()).unwrap_err();
        assert!(matches!(err, FramesError::EmptyFolder(_)), "{err}");
        assert!(matches!(
            load_image_folder(&empty.path().join("nope")),
            Err(FramesError::ReadDir { .. })
        ));
    }
}
