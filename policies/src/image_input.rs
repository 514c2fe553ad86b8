//! The resolution a policy sees. A checkpoint records the image size it was trained at
//! ([`crate::checkpoint::CheckpointMeta::image_size`]); the trainer resizes dataset frames to it while
//! decoding, and [`crate::LoadedPolicy`] resizes whatever a camera delivers (a 640x480 arm camera, a
//! simulator at another size) to it before acting. Both go through [`resize_frame`], so a policy acts on
//! frames filtered exactly as the ones it was trained on.

use image::RgbImage;
use image::imageops::{FilterType, resize};

use crate::CameraImage;
use crate::error::{PolicyError, Result};

/// Resize an RGB frame to `width x height` with a triangle (bilinear, area-aware when shrinking) filter.
/// The aspect ratio follows the target: policies here take square inputs from square simulator cameras,
/// and a real camera's frame is stretched the same way in training and acting. A frame already at the
/// size is returned as is.
pub fn resize_frame(frame: &RgbImage, width: u32, height: u32) -> RgbImage {
    if frame.width() == width && frame.height() == height {
        return frame.clone();
    }
    resize(frame, width, height, FilterType::Triangle)
}

/// [`resize_frame`] for the policies' own image type; `size` is `[height, width]`.
pub(crate) fn resize_camera_image(image: &CameraImage, size: [usize; 2]) -> Result<CameraImage> {
    let [height, width] = size;
    if image.height == height && image.width == width {
        return Ok(image.clone());
    }
    let too_big = |v: usize| u32::try_from(v).map_err(|_| invalid(image, "is too large"));
    let frame = RgbImage::from_raw(too_big(image.width)?, too_big(image.height)?, image.rgb.clone())
        .ok_or_else(|| invalid(image, "does not hold height x width x 3 bytes"))?;
    let resized = resize_frame(&frame, too_big(width)?, too_big(height)?);
    Ok(CameraImage {
        key: image.key.clone(),
        height,
        width,
        rgb: resized.into_raw(),
    })
}

fn invalid(image: &CameraImage, what: &str) -> PolicyError {
    PolicyError::Invalid {
        field: "observation.images",
        reason: format!(
            "camera `{}` image of {} x {} with {} bytes {what}",
            image.key,
            image.height,
            image.width,
            image.rgb.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resizing_keeps_flat_colour_and_reaches_the_size() {
        let frame = RgbImage::from_pixel(64, 48, image::Rgb([10, 200, 30]));
        let small = resize_frame(&frame, 16, 16);
        assert_eq!((small.width(), small.height()), (16, 16));
        assert!(
            small.pixels().all(|p| p.0 == [10, 200, 30]),
            "a flat frame stays flat"
        );
    }

    #[test]
    fn camera_images_are_resized_and_bad_buffers_refused() {
        let image = CameraImage {
            key: "observation.images.front".into(),
            height: 4,
            width: 6,
            rgb: (0..4 * 6 * 3).map(|v| v as u8).collect(),
        };
        let out = resize_camera_image(&image, [2, 3]).unwrap();
        assert_eq!((out.height, out.width, out.rgb.len()), (2, 3, 18));
        let same = resize_camera_image(&image, [4, 6]).unwrap();
        assert_eq!(same.rgb, image.rgb, "an image at the size is untouched");
        let broken = CameraImage {
            rgb: vec![0; 5],
            ..image
        };
        let err = resize_camera_image(&broken, [2, 2]).unwrap_err().to_string();
        assert!(
            err.contains("observation.images") && err.contains("5 bytes"),
            "{err}"
        );
    }
}
