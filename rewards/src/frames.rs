//! Frames in: a folder of images, or a video file sampled at a fixed rate, as `image::RgbImage`s (the
//! workspace's frame type).
//!
//! Video sampling rule (LeRobot's TOPReward port feeds frames sampled at 2 fps): time 0 is the first decoded
//! frame's presentation time; for k = 0, 1, ... while k / fps is at most the last frame's time, the frame whose
//! presentation time is nearest to k / fps is taken (the earlier one on a tie). A source slower than `fps`
//! therefore repeats frames; a faster one skips them.

use std::path::{Path, PathBuf};
use std::sync::Once;

use ff::format::Pixel;
use ff::software::scaling::{context::Context as Scaler, flag::Flags};
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
}

/// Image files of `dir` (`.png`, `.jpg`, `.jpeg`, any case), sorted by file name (so number them with leading
/// zeros), decoded to RGB. All must have the same size; the first that differs is named.
pub fn load_image_folder(dir: &Path) -> Result<Vec<RgbImage>, FramesError> {
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

fn init_ffmpeg() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // registration cannot fail on FFmpeg >= 4; keep FFmpeg's own logging to errors
        let _ = ff::init();
        ff::log::set_level(ff::log::Level::Error);
    });
}

/// Decode `path` with FFmpeg and sample it at `fps` (see the module docs for the rule).
pub fn load_video(path: &Path, fps: f64) -> Result<SampledVideo, FramesError> {
    if !(fps.is_finite() && fps > 0.0) {
        return Err(FramesError::BadFps(fps));
    }
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
    let ctx = ff::codec::context::Context::from_parameters(params).map_err(|e| not_video(e.to_string()))?;
    let mut decoder = ctx.decoder().video().map_err(|e| not_video(e.to_string()))?;

    let mut sampler = Sampler {
        fps,
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
    Ok(sampler.out)
}

/// Streaming nearest-frame sampler: frames arrive in presentation order; the previous frame is kept
/// undecoded-to-RGB until the next one shows which of the two is nearer to each pending sample time.
struct Sampler {
    fps: f64,
    out: SampledVideo,
    /// (time, decode index, frame) of the last frame seen.
    prev: Option<(f64, usize, ff::frame::Video)>,
    origin: Option<f64>,
    decoded: usize,
    scaler: Option<(Scaler, Pixel, u32, u32)>,
}

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
                let target = self.out.frames.len() as f64 / self.fps;
                if target > t {
                    break;
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
        self.out.frames.push(img);
        self.out.source_times.push(t);
        self.out.source_indices.push(index);
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

    /// Source index of a frame of the grey-ramp fixture (level 10 + 12 i, lossless).
    fn grey_index(img: &RgbImage) -> usize {
        let p = img.get_pixel(img.width() / 2, img.height() / 2).0;
        assert!(
            p[0] == p[1] && p[1] == p[2] && (p[0] - 10).is_multiple_of(12),
            "unexpected pixel {p:?}"
        );
        ((p[0] - 10) / 12) as usize
    }

    #[test]
    fn video_sampled_at_2fps_takes_every_fifth_frame_of_a_10fps_source() {
        let v = load_video(&fixture("grey_ramp_10fps.mkv"), 2.0).unwrap();
        let got: Vec<usize> = v.frames.iter().map(grey_index).collect();
        assert_eq!(got, vec![0, 5, 10, 15]);
        assert_eq!(v.source_indices, got);
        assert_eq!(v.source_fps, Some(10.0));
        assert_eq!((v.frames[0].width(), v.frames[0].height()), (64, 48));
    }

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
