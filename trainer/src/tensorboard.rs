//! A minimal TensorBoard event-file writer: scalars and PNG images, readable by `tensorboard --logdir`.
//!
//! The format is TensorFlow's TFRecord stream of `Event` protocol buffers (tensorflow/core/util/event.proto).
//! Each record is `u64 length | u32 masked crc32c(length) | data | u32 masked crc32c(data)`, little endian.
//! The few protobuf fields we need are encoded by hand, which keeps a protobuf toolchain out of the build.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Errors writing event files; they name the file.
#[derive(Debug, thiserror::Error)]
pub enum TensorboardError {
    #[error("cannot write TensorBoard events to {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot encode image `{tag}` as PNG: {source}")]
    Png { tag: String, source: image::ImageError },
}

/// Appends events to one `events.out.tfevents.*` file in a log directory.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Create `logdir` if needed and start a new event file in it.
    pub fn create(logdir: &Path) -> Result<Self, TensorboardError> {
        let io = |source| TensorboardError::Io {
            path: logdir.to_owned(),
            source,
        };
        std::fs::create_dir_all(logdir).map_err(io)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "toprl".into());
        let path = logdir.join(format!("events.out.tfevents.{}.{host}", now.as_secs()));
        let file = File::create(&path).map_err(|source| TensorboardError::Io {
            path: path.clone(),
            source,
        })?;
        let mut writer = Self {
            path,
            out: BufWriter::new(file),
        };
        // The first event of every file declares the format version.
        let mut event = event_header(wall_time(), 0);
        put_bytes(&mut event, 3, b"brain.Event:2");
        writer.write_record(&event)?;
        writer.flush()?;
        Ok(writer)
    }

    /// The event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Log a scalar under `tag` at `step`.
    pub fn scalar(&mut self, tag: &str, step: u64, value: f32) -> Result<(), TensorboardError> {
        let mut summary_value = Vec::new();
        put_bytes(&mut summary_value, 1, tag.as_bytes());
        put_key(&mut summary_value, 2, WIRE_FIXED32);
        summary_value.extend_from_slice(&value.to_le_bytes());
        self.write_summary(step, &summary_value)
    }

    /// Log an RGB image under `tag` at `step` (PNG-encoded, as TensorBoard's image plugin expects).
    pub fn image(&mut self, tag: &str, step: u64, image: &image::RgbImage) -> Result<(), TensorboardError> {
        let mut png = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|source| TensorboardError::Png {
                tag: tag.to_string(),
                source,
            })?;
        let mut img = Vec::new();
        put_varint_field(&mut img, 1, u64::from(image.height()));
        put_varint_field(&mut img, 2, u64::from(image.width()));
        put_varint_field(&mut img, 3, 3); // colorspace: RGB
        put_bytes(&mut img, 4, &png);
        let mut summary_value = Vec::new();
        put_bytes(&mut summary_value, 1, tag.as_bytes());
        put_bytes(&mut summary_value, 4, &img);
        self.write_summary(step, &summary_value)
    }

    /// Push buffered events to disk so a running TensorBoard sees them.
    pub fn flush(&mut self) -> Result<(), TensorboardError> {
        self.out.flush().map_err(|source| TensorboardError::Io {
            path: self.path.clone(),
            source,
        })
    }

    fn write_summary(&mut self, step: u64, summary_value: &[u8]) -> Result<(), TensorboardError> {
        let mut summary = Vec::new();
        put_bytes(&mut summary, 1, summary_value);
        let mut event = event_header(wall_time(), step);
        put_bytes(&mut event, 5, &summary);
        self.write_record(&event)
    }

    fn write_record(&mut self, data: &[u8]) -> Result<(), TensorboardError> {
        let len = (data.len() as u64).to_le_bytes();
        let io = |source| TensorboardError::Io {
            path: self.path.clone(),
            source,
        };
        self.out.write_all(&len).map_err(io)?;
        self.out
            .write_all(&masked_crc32c(&len).to_le_bytes())
            .map_err(io)?;
        self.out.write_all(data).map_err(io)?;
        self.out.write_all(&masked_crc32c(data).to_le_bytes()).map_err(io)
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_BYTES: u8 = 2;
const WIRE_FIXED32: u8 = 5;

/// `Event { wall_time = 1 (double), step = 2 (int64) }`.
fn event_header(wall_time: f64, step: u64) -> Vec<u8> {
    let mut event = Vec::new();
    put_key(&mut event, 1, WIRE_FIXED64);
    event.extend_from_slice(&wall_time.to_le_bytes());
    put_varint_field(&mut event, 2, step);
    event
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_key(out, field, WIRE_VARINT);
    put_varint(out, v);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, WIRE_BYTES);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// CRC-32C (Castagnoli), bitwise; event files are small enough that a table buys nothing measurable.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// TFRecord's masked CRC: rotate right by 15 and add a constant (tensorflow/core/lib/hash/crc32c.h).
fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    /// Read the records back, checking both CRCs, as TensorBoard's reader does.
    fn read_records(path: &Path) -> Vec<Vec<u8>> {
        let bytes = std::fs::read(path).unwrap();
        let mut records = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len_bytes = &bytes[at..at + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            assert_eq!(
                u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()),
                masked_crc32c(len_bytes)
            );
            let data = &bytes[at + 12..at + 12 + len];
            let crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
            assert_eq!(crc, masked_crc32c(data));
            records.push(data.to_vec());
            at += 16 + len;
        }
        records
    }

    #[test]
    fn scalars_and_images_round_trip_through_the_record_format() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = EventWriter::create(dir.path()).unwrap();
        writer.scalar("loss/train", 7, 0.25).unwrap();
        let img = image::RgbImage::from_pixel(4, 3, image::Rgb([10, 20, 30]));
        writer.image("rollout/frames", 7, &img).unwrap();
        writer.flush().unwrap();
        let records = read_records(writer.path());
        assert_eq!(records.len(), 3);
        assert!(records[0].windows(13).any(|w| w == b"brain.Event:2"));
        // The scalar event carries the tag, step 7 (field 2 varint) and the f32 bits of 0.25.
        let scalar = &records[1];
        assert!(scalar.windows(10).any(|w| w == b"loss/train"));
        assert!(scalar.windows(2).any(|w| w == [0x10, 7]));
        assert!(
            scalar
                .windows(5)
                .any(|w| w[0] == 0x15 && w[1..] == 0.25f32.to_le_bytes())
        );
        // The image event embeds a PNG.
        assert!(records[2].windows(4).any(|w| w == b"\x89PNG"));
    }
}
