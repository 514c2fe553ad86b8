//! Cameras of the real arm: a name (the feature key is `observation.images.{name}`), a device, and a
//! frame on demand. V4L2 capture needs the `v4l` cargo feature (off by default); without it a configured
//! camera is refused with a clear message, never replaced by a blank image.

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// Why a camera could not give a frame.
#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    #[error(
        "camera `{name}` ({path}): this build has no camera capture; rebuild with `--features toprl-envs/v4l` (V4L2, Linux)"
    )]
    NotBuilt { name: String, path: String },
    #[error("camera `{name}` ({path}): {reason}")]
    Device {
        name: String,
        path: String,
        reason: String,
    },
}

/// One camera as an experiment's `[[robot.cameras]]` names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Short name: the frames are `observation.images.{name}` (e.g. `front`, `wrist`).
    pub name: String,
    /// V4L2 device path, e.g. `/dev/video0`.
    pub path: String,
    /// Requested frame width in pixels. Default 640.
    #[serde(default = "default_width")]
    pub width: u32,
    /// Requested frame height in pixels. Default 480.
    #[serde(default = "default_height")]
    pub height: u32,
}

fn default_width() -> u32 {
    640
}
fn default_height() -> u32 {
    480
}

/// A source of RGB frames.
pub trait Camera: Send {
    /// The camera's short name (the feature key is `observation.images.{name}`).
    fn name(&self) -> &str;
    /// The latest frame.
    fn capture(&mut self) -> Result<RgbImage, CameraError>;
}

/// Opens the camera `cfg` describes: a V4L2 device with the `v4l` cargo feature; without it every camera
/// is refused with a clear error rather than faked.
pub fn open_camera(cfg: &CameraConfig) -> Result<Box<dyn Camera>, CameraError> {
    #[cfg(feature = "v4l")]
    {
        Ok(Box::new(v4l2::V4lCamera::open(cfg)?))
    }
    #[cfg(not(feature = "v4l"))]
    {
        Err(CameraError::NotBuilt {
            name: cfg.name.clone(),
            path: cfg.path.clone(),
        })
    }
}

/// Converts a packed YUYV 4:2:2 frame (`Y0 U Y1 V` per two pixels, BT.601 limited range, what most UVC
/// webcams send) to RGB. `None` when the buffer is shorter than `width * height * 2` or `width` is odd.
pub fn yuyv_to_rgb(buf: &[u8], width: u32, height: u32) -> Option<RgbImage> {
    let (w, h) = (width as usize, height as usize);
    if !w.is_multiple_of(2) || buf.len() < w * h * 2 {
        return None;
    }
    let mut rgb = Vec::with_capacity(w * h * 3);
    // ITU-R BT.601 integer conversion: C = Y - 16, D = U - 128, E = V - 128.
    let pixel = |y: u8, d: i32, e: i32, out: &mut Vec<u8>| {
        let c = i32::from(y) - 16;
        let clip = |v: i32| ((v + 128) >> 8).clamp(0, 255) as u8;
        out.extend_from_slice(&[
            clip(298 * c + 409 * e),
            clip(298 * c - 100 * d - 208 * e),
            clip(298 * c + 516 * d),
        ]);
    };
    for quad in buf[..w * h * 2].chunks_exact(4) {
        let (d, e) = (i32::from(quad[1]) - 128, i32::from(quad[3]) - 128);
        pixel(quad[0], d, e, &mut rgb);
        pixel(quad[2], d, e, &mut rgb);
    }
    RgbImage::from_raw(width, height, rgb)
}

#[cfg(feature = "v4l")]
mod v4l2 {
    use image::RgbImage;
    use v4l::buffer::Type;
    use v4l::io::mmap::Stream;
    use v4l::io::traits::CaptureStream;
    use v4l::video::Capture;
    use v4l::{Device, FourCC};

    use super::{Camera, CameraConfig, CameraError};

    /// A V4L2 capture device streaming through memory-mapped buffers.
    pub struct V4lCamera {
        name: String,
        path: String,
        width: u32,
        height: u32,
        fourcc: [u8; 4],
        stream: Stream<'static>,
        _device: Device,
    }

    impl V4lCamera {
        /// Opens the device and asks for `width` x `height` in YUYV, else MJPG; RGB3 is taken as is.
        pub fn open(cfg: &CameraConfig) -> Result<Self, CameraError> {
            let err = |reason: String| CameraError::Device {
                name: cfg.name.clone(),
                path: cfg.path.clone(),
                reason,
            };
            let device = Device::with_path(&cfg.path).map_err(|e| err(format!("cannot open: {e}")))?;
            let mut format = None;
            for fourcc in [b"YUYV", b"MJPG", b"RGB3"] {
                let mut f = device
                    .format()
                    .map_err(|e| err(format!("reading the format: {e}")))?;
                f.width = cfg.width;
                f.height = cfg.height;
                f.fourcc = FourCC::new(fourcc);
                let got = device
                    .set_format(&f)
                    .map_err(|e| err(format!("setting the format: {e}")))?;
                if got.fourcc.repr == *fourcc {
                    format = Some(got);
                    break;
                }
            }
            let format = format.ok_or_else(|| err("the device offers none of YUYV, MJPG, RGB3".into()))?;
            let stream = Stream::with_buffers(&device, Type::VideoCapture, 4)
                .map_err(|e| err(format!("starting the stream: {e}")))?;
            Ok(V4lCamera {
                name: cfg.name.clone(),
                path: cfg.path.clone(),
                width: format.width,
                height: format.height,
                fourcc: format.fourcc.repr,
                stream,
                _device: device,
            })
        }
    }

    impl Camera for V4lCamera {
        fn name(&self) -> &str {
            &self.name
        }

        fn capture(&mut self) -> Result<RgbImage, CameraError> {
            let err = |reason: String| CameraError::Device {
                name: self.name.clone(),
                path: self.path.clone(),
                reason,
            };
            let (buf, meta) = self
                .stream
                .next()
                .map_err(|e| err(format!("capturing a frame: {e}")))?;
            let used = (meta.bytesused as usize).min(buf.len());
            let data = &buf[..used];
            let (w, h) = (self.width, self.height);
            let image = match &self.fourcc {
                b"YUYV" => super::yuyv_to_rgb(data, w, h),
                b"MJPG" => image::load_from_memory_with_format(data, image::ImageFormat::Jpeg)
                    .ok()
                    .map(|i| i.to_rgb8()),
                _ => RgbImage::from_raw(
                    w,
                    h,
                    data.get(..(w * h * 3) as usize)
                        .map(<[u8]>::to_vec)
                        .unwrap_or_default(),
                ),
            };
            image.ok_or_else(|| {
                err(format!(
                    "a {used}-byte {} frame does not decode to {w}x{h}",
                    String::from_utf8_lossy(&self.fourcc)
                ))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuyv_converts_with_bt601_limited_range() {
        // Black (16), white (235), and a saturated red (Y 81, U 90, V 240) pair.
        let buf = [16, 128, 235, 128, 81, 90, 81, 240];
        let img = yuyv_to_rgb(&buf, 2, 2).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(1, 0).0, [255, 255, 255]);
        let red = img.get_pixel(0, 1).0;
        assert!(red[0] > 250 && red[1] < 5 && red[2] < 5, "{red:?}");
        assert!(yuyv_to_rgb(&buf[..6], 2, 2).is_none(), "short buffer");
        assert!(yuyv_to_rgb(&buf, 1, 2).is_none(), "odd width");
    }

    #[test]
    fn a_camera_is_refused_without_a_backend() {
        let cfg = CameraConfig {
            name: "front".into(),
            path: "/dev/no-such-video".into(),
            width: 64,
            height: 48,
        };
        let err = open_camera(&cfg).err().unwrap().to_string();
        assert!(
            err.contains("front") && err.contains("/dev/no-such-video"),
            "{err}"
        );
    }
}
