//! Camera videos through the system FFmpeg (libavformat/libavcodec/libswscale via `ffmpeg-next`).
//!
//! Decoding mirrors LeRobot's `decode_video_frames`: a frame is looked up by its presentation time
//! (`from_timestamp + timestamp` in the episode's file), the nearest decoded frame is taken and a frame
//! further away than the tolerance is an error (a truncated or out-of-sync video), never a silent
//! substitute. Encoding mirrors LeRobot's `encode_video_frames`: yuv420p, GOP 2, CRF 30; AV1 through
//! libsvtav1 (LeRobot's default; Debian's SVT-AV1 1.4 needs frames of at least 64x64) or libaom-av1,
//! H.264 through libx264 when the linked FFmpeg has no AV1 encoder.

use std::path::{Path, PathBuf};
use std::sync::Once;

use ff::format::Pixel;
use ff::software::scaling::{context::Context as Scaler, flag::Flags};
use ffmpeg_next as ff;
use image::RgbImage;

use super::error::{DatasetError, Result};

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // Registration cannot fail on FFmpeg >= 4; keep FFmpeg's own logging to errors only.
        let _ = ff::init();
        ff::log::set_level(ff::log::Level::Error);
    });
}

fn fferr(path: &Path, context: &str) -> impl FnOnce(ff::Error) -> DatasetError {
    let path = path.to_path_buf();
    let context = context.to_string();
    move |source| DatasetError::Ffmpeg {
        path,
        context,
        source,
    }
}

/// Facts about a video file's first video stream.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoProbe {
    /// Codec name as FFmpeg calls it (`av1`, `h264`, ...).
    pub codec: String,
    pub width: u32,
    pub height: u32,
    /// Average frame rate, when the container declares one.
    pub fps: Option<f64>,
    /// Number of frames, when the container declares it.
    pub frames: Option<i64>,
}

/// Read a video's codec, resolution and frame rate without decoding.
pub fn probe(path: &Path) -> Result<VideoProbe> {
    init();
    let ictx = ff::format::input(path).map_err(fferr(path, "open"))?;
    let stream = ictx
        .streams()
        .best(ff::media::Type::Video)
        .ok_or_else(|| DatasetError::Video {
            path: path.to_path_buf(),
            reason: "no video stream".into(),
        })?;
    let params = stream.parameters();
    let ctx =
        ff::codec::context::Context::from_parameters(params).map_err(fferr(path, "codec parameters"))?;
    let dec = ctx.decoder().video().map_err(fferr(path, "video decoder"))?;
    let rate = stream.avg_frame_rate();
    Ok(VideoProbe {
        codec: ff::codec::decoder::find(dec.id())
            .map(|c| c.name().to_string())
            .unwrap_or_else(|| format!("{:?}", dec.id())),
        width: dec.width(),
        height: dec.height(),
        fps: (rate.denominator() != 0 && rate.numerator() != 0).then(|| f64::from(rate)),
        frames: (stream.frames() > 0).then(|| stream.frames()),
    })
}

/// Count a video's packets and its key-frame packets (the points a seek can land on), without decoding.
pub fn key_frame_count(path: &Path) -> Result<(usize, usize)> {
    init();
    let mut ictx = ff::format::input(path).map_err(fferr(path, "open"))?;
    let index = ictx
        .streams()
        .best(ff::media::Type::Video)
        .ok_or_else(|| DatasetError::Video {
            path: path.to_path_buf(),
            reason: "no video stream".into(),
        })?
        .index();
    let (mut packets, mut keys) = (0, 0);
    for (stream, packet) in ictx.packets() {
        if stream.index() == index {
            packets += 1;
            keys += usize::from(packet.is_key());
        }
    }
    Ok((packets, keys))
}

/// Decode the frames shown at `timestamps` (seconds, increasing) from `path`, as RGB8.
///
/// Seeks to the key frame before the first timestamp and decodes forward; each requested time gets the
/// nearest decoded frame, which must lie within `tolerance_s` (LeRobot: `tolerance_s`, default 1e-4 s;
/// callers pass a fraction of a frame period).
pub fn decode_frames(path: &Path, timestamps: &[f64], tolerance_s: f64) -> Result<Vec<RgbImage>> {
    decode_frames_with(path, timestamps, tolerance_s, |frame| frame)
}

/// [`decode_frames`] with `map` applied to each kept frame as soon as it is decoded (e.g. a resize to
/// the policy's input), so no more than one native-size frame per requested time is ever held: a long
/// episode of a large camera streams through at the size the caller keeps. Only frames that are the
/// nearest to a requested time are converted to RGB at all.
pub fn decode_frames_with(
    path: &Path,
    timestamps: &[f64],
    tolerance_s: f64,
    mut map: impl FnMut(RgbImage) -> RgbImage,
) -> Result<Vec<RgbImage>> {
    init();
    if timestamps.is_empty() {
        return Ok(Vec::new());
    }
    if !path.exists() {
        return Err(DatasetError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "video file is missing"),
        });
    }
    let mut ictx = ff::format::input(path).map_err(fferr(path, "open"))?;
    let (stream_index, time_base, params) = {
        let stream = ictx
            .streams()
            .best(ff::media::Type::Video)
            .ok_or_else(|| DatasetError::Video {
                path: path.to_path_buf(),
                reason: "no video stream".into(),
            })?;
        (stream.index(), stream.time_base(), stream.parameters())
    };
    let first = timestamps[0];
    let last = timestamps[timestamps.len() - 1];
    if first > 0.0 {
        // avformat_seek_file in AV_TIME_BASE units with max_ts = target: the key frame at or before it.
        let target = (first * f64::from(ff::ffi::AV_TIME_BASE)) as i64;
        ictx.seek(target, ..target).map_err(fferr(path, "seek"))?;
    }
    let ctx =
        ff::codec::context::Context::from_parameters(params).map_err(fferr(path, "codec parameters"))?;
    let mut decoder = ctx.decoder().video().map_err(fferr(path, "video decoder"))?;
    let tb = f64::from(time_base);

    // Per requested time: the nearest decoded frame so far (distance, mapped image). Times of every
    // decoded frame in the window are kept (cheap) to name the nearest one when a frame is missing.
    let mut best: Vec<Option<(f64, RgbImage)>> = vec![None; timestamps.len()];
    let mut decoded_times: Vec<f64> = Vec::new();
    let mut scaler: Option<(Scaler, Pixel, u32, u32)> = None;
    let mut done = false;
    let mut receive = |decoder: &mut ff::decoder::Video,
                       best: &mut Vec<Option<(f64, RgbImage)>>,
                       decoded_times: &mut Vec<f64>|
     -> Result<bool> {
        let mut frame = ff::frame::Video::empty();
        while decoder.receive_frame(&mut frame).is_ok() {
            let Some(pts) = frame.timestamp().or(frame.pts()) else {
                continue;
            };
            let t = pts as f64 * tb;
            if t < first - tolerance_s {
                continue;
            }
            if t > last + tolerance_s {
                return Ok(true);
            }
            decoded_times.push(t);
            // The requested times this frame is within tolerance of, where it beats the frame kept so far.
            let lo = timestamps.partition_point(|&r| r < t - tolerance_s);
            let hi = timestamps.partition_point(|&r| r <= t + tolerance_s);
            let wins: Vec<usize> = (lo..hi)
                .filter(|&i| {
                    best[i]
                        .as_ref()
                        .is_none_or(|(d, _)| (timestamps[i] - t).abs() < *d)
                })
                .collect();
            if let Some((&last_win, rest)) = wins.split_last() {
                let image = map(to_rgb(path, &frame, &mut scaler)?);
                for &i in rest {
                    best[i] = Some(((timestamps[i] - t).abs(), image.clone()));
                }
                best[last_win] = Some(((timestamps[last_win] - t).abs(), image));
            }
        }
        Ok(false)
    };
    for (stream, packet) in ictx.packets() {
        if stream.index() != stream_index {
            continue;
        }
        decoder.send_packet(&packet).map_err(fferr(path, "decode"))?;
        if receive(&mut decoder, &mut best, &mut decoded_times)? {
            done = true;
            break;
        }
    }
    if !done {
        decoder.send_eof().map_err(fferr(path, "decode"))?;
        receive(&mut decoder, &mut best, &mut decoded_times)?;
    }

    let mut out = Vec::with_capacity(timestamps.len());
    for (slot, &t) in best.into_iter().zip(timestamps) {
        match slot {
            Some((_, image)) => out.push(image),
            None => {
                let nearest = decoded_times
                    .iter()
                    .min_by(|a, b| (*a - t).abs().total_cmp(&(*b - t).abs()));
                return Err(DatasetError::MissingVideoFrame {
                    path: path.to_path_buf(),
                    timestamp: t,
                    nearest: nearest.map_or_else(|| "none".to_string(), |ft| format!("at {ft:.4} s")),
                });
            }
        }
    }
    Ok(out)
}

fn to_rgb(
    path: &Path,
    frame: &ff::frame::Video,
    scaler: &mut Option<(Scaler, Pixel, u32, u32)>,
) -> Result<RgbImage> {
    let (w, h, fmt) = (frame.width(), frame.height(), frame.format());
    if !matches!(scaler, Some((_, f, sw, sh)) if *f == fmt && *sw == w && *sh == h) {
        let ctx =
            Scaler::get(fmt, w, h, Pixel::RGB24, w, h, Flags::BILINEAR).map_err(fferr(path, "scaler"))?;
        *scaler = Some((ctx, fmt, w, h));
    }
    let Some((ctx, ..)) = scaler.as_mut() else {
        unreachable!("scaler set above")
    };
    let mut rgb = ff::frame::Video::empty();
    ctx.run(frame, &mut rgb).map_err(fferr(path, "convert to RGB"))?;
    let stride = rgb.stride(0);
    let data = rgb.data(0);
    let row = 3 * w as usize;
    let mut buf = Vec::with_capacity(row * h as usize);
    for y in 0..h as usize {
        buf.extend_from_slice(&data[y * stride..y * stride + row]);
    }
    RgbImage::from_raw(w, h, buf).ok_or_else(|| DatasetError::Video {
        path: path.to_path_buf(),
        reason: "decoded frame has an unexpected size".into(),
    })
}

/// Video codec family to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    /// AV1 (LeRobot's default), else H.264 when the linked FFmpeg has no usable AV1 encoder.
    Auto,
    Av1,
    H264,
}

/// An FFmpeg encoder with LeRobot's settings for it.
struct EncoderChoice {
    codec: ff::Codec,
    name: &'static str,
    options: &'static [(&'static str, &'static str)],
}

/// The FFmpeg encoder for a codec family and frame size: libsvtav1 (LeRobot's default; Debian's SVT-AV1 1.4
/// needs at least 64x64), libaom-av1, then libx264, whichever the linked FFmpeg has first.
fn pick_encoder(codec: VideoCodec, width: u32, height: u32) -> Option<EncoderChoice> {
    const SVT: &[(&str, &str)] = &[("g", "2"), ("crf", "30"), ("preset", "12")];
    const AOM: &[(&str, &str)] = &[("g", "2"), ("crf", "30"), ("cpu-used", "8"), ("row-mt", "1")];
    const X264: &[(&str, &str)] = &[("g", "2"), ("crf", "30"), ("preset", "medium")];
    let mut candidates: Vec<(&'static str, &'static [(&'static str, &'static str)])> = Vec::new();
    if matches!(codec, VideoCodec::Auto | VideoCodec::Av1) {
        if width >= 64 && height >= 64 {
            candidates.push(("libsvtav1", SVT));
        }
        candidates.push(("libaom-av1", AOM));
    }
    if matches!(codec, VideoCodec::Auto | VideoCodec::H264) {
        candidates.push(("libx264", X264));
    }
    candidates.into_iter().find_map(|(name, options)| {
        ff::encoder::find_by_name(name).map(|codec| EncoderChoice { codec, name, options })
    })
}

/// Writes RGB frames to an mp4 file at a constant frame rate.
pub struct VideoEncoder {
    path: PathBuf,
    octx: ff::format::context::Output,
    encoder: ff::encoder::Video,
    scaler: Scaler,
    width: u32,
    height: u32,
    frames: i64,
    enc_time_base: ff::Rational,
    stream_time_base: ff::Rational,
    /// FFmpeg encoder name used (`libsvtav1`, `libaom-av1`, `libx264`).
    pub encoder_name: &'static str,
    /// Codec name stored in info.json (`av1`, `h264`).
    pub codec_name: &'static str,
}

impl VideoEncoder {
    /// Create `path` (mp4) for frames of `width` x `height` at `fps` (a whole number of frames per second).
    pub fn create(path: &Path, width: u32, height: u32, fps: u32, codec: VideoCodec) -> Result<Self> {
        init();
        if !width.is_multiple_of(2) || !height.is_multiple_of(2) || width == 0 || height == 0 {
            return Err(DatasetError::Video {
                path: path.to_path_buf(),
                reason: format!("yuv420p needs even frame sizes, got {width}x{height}"),
            });
        }
        let EncoderChoice {
            codec: enc_codec,
            name: encoder_name,
            options: opts,
        } = pick_encoder(codec, width, height).ok_or_else(|| DatasetError::Video {
            path: path.to_path_buf(),
            reason: format!("the linked FFmpeg has no encoder for {codec:?} at {width}x{height}"),
        })?;
        let codec_name = if encoder_name == "libx264" { "h264" } else { "av1" };
        let mut octx = ff::format::output_as(path, "mp4").map_err(fferr(path, "create mp4"))?;
        let global_header = octx.format().flags().contains(ff::format::Flags::GLOBAL_HEADER);
        let enc_time_base = ff::Rational(1, fps as i32);
        let mut enc = ff::codec::context::Context::new_with_codec(enc_codec)
            .encoder()
            .video()
            .map_err(fferr(path, "video encoder"))?;
        enc.set_width(width);
        enc.set_height(height);
        enc.set_format(Pixel::YUV420P);
        enc.set_gop(2);
        enc.set_time_base(enc_time_base);
        enc.set_frame_rate(Some(ff::Rational(fps as i32, 1)));
        // Closed GOPs: every GOP starts with a real key frame that the mp4 index marks as a sync sample
        // (Debian's FFmpeg 5.1 + SVT-AV1 1.4 otherwise emit "forward" key frames that are not marked, and
        // seeking falls back to the start of the file).
        let mut flags = ff::codec::Flags::CLOSED_GOP;
        if global_header {
            flags |= ff::codec::Flags::GLOBAL_HEADER;
        }
        enc.set_flags(flags);
        let mut dict = ff::Dictionary::new();
        for &(k, v) in opts {
            dict.set(k, v);
        }
        let encoder = enc
            .open_as_with(enc_codec, dict)
            .map_err(fferr(path, encoder_name))?;
        {
            let mut ost = octx.add_stream(enc_codec).map_err(fferr(path, "add stream"))?;
            ost.set_parameters(&encoder);
            ost.set_time_base(enc_time_base);
            ost.set_avg_frame_rate(ff::Rational(fps as i32, 1));
        }
        octx.write_header().map_err(fferr(path, "write header"))?;
        let stream_time_base = octx.stream(0).map(|s| s.time_base()).unwrap_or(enc_time_base);
        let scaler = Scaler::get(
            Pixel::RGB24,
            width,
            height,
            Pixel::YUV420P,
            width,
            height,
            Flags::BILINEAR,
        )
        .map_err(fferr(path, "scaler"))?;
        Ok(Self {
            path: path.to_path_buf(),
            octx,
            encoder,
            scaler,
            width,
            height,
            frames: 0,
            enc_time_base,
            stream_time_base,
            encoder_name,
            codec_name,
        })
    }

    /// Number of frames pushed so far.
    pub fn frames(&self) -> i64 {
        self.frames
    }

    /// Encode one frame; it must have the size the encoder was created with.
    pub fn push(&mut self, img: &RgbImage) -> Result<()> {
        if img.width() != self.width || img.height() != self.height {
            return Err(DatasetError::Video {
                path: self.path.clone(),
                reason: format!(
                    "frame {} is {}x{}, the video is {}x{}",
                    self.frames,
                    img.width(),
                    img.height(),
                    self.width,
                    self.height
                ),
            });
        }
        let mut rgb = ff::frame::Video::new(Pixel::RGB24, self.width, self.height);
        let stride = rgb.stride(0);
        let row = 3 * self.width as usize;
        let src = img.as_raw();
        let dst = rgb.data_mut(0);
        for y in 0..self.height as usize {
            dst[y * stride..y * stride + row].copy_from_slice(&src[y * row..(y + 1) * row]);
        }
        let mut yuv = ff::frame::Video::empty();
        self.scaler
            .run(&rgb, &mut yuv)
            .map_err(fferr(&self.path, "convert to yuv420p"))?;
        yuv.set_pts(Some(self.frames));
        self.encoder
            .send_frame(&yuv)
            .map_err(fferr(&self.path, "encode"))?;
        self.frames += 1;
        self.drain()
    }

    fn drain(&mut self) -> Result<()> {
        let mut packet = ff::Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(0);
            packet.rescale_ts(self.enc_time_base, self.stream_time_base);
            packet
                .write_interleaved(&mut self.octx)
                .map_err(fferr(&self.path, "write packet"))?;
        }
        Ok(())
    }

    /// Flush the encoder and write the file's index.
    pub fn finish(mut self) -> Result<()> {
        self.encoder
            .send_eof()
            .map_err(fferr(&self.path, "flush encoder"))?;
        self.drain()?;
        self.octx
            .write_trailer()
            .map_err(fferr(&self.path, "write trailer"))?;
        Ok(())
    }
}
