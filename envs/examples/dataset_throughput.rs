//! Throughput of LeRobotDataset writing and reading at recording size: episodes of two 640x480 cameras
//! at 30 fps (SO-101 front + wrist), encoded with the codec `--codec` picks (auto: AV1 via libsvtav1),
//! then read back (parquet rows + decode of both cameras).
//!
//!     cargo run --release -p toprl-envs --example dataset_throughput -- [EPISODES] [FRAMES] [auto|av1|h264]

use std::collections::BTreeMap;
use std::time::Instant;

use image::RgbImage;
use toprl_envs::dataset::{DatasetSpec, DatasetWriter, LeRobotDataset, VideoCodec};
use toprl_envs::episode::Episode;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let episodes: usize = args.get(1).map_or(Ok(2), |s| s.parse())?;
    let frames: usize = args.get(2).map_or(Ok(90), |s| s.parse())?;
    let codec = match args.get(3).map(String::as_str) {
        None | Some("auto") => VideoCodec::Auto,
        Some("av1") => VideoCodec::Av1,
        Some("h264") => VideoCodec::H264,
        Some(other) => return Err(format!("unknown codec {other:?}").into()),
    };
    let (w, h) = (640u32, 480u32);
    let cams = ["observation.images.front", "observation.images.wrist"];
    let mut spec = DatasetSpec::so101(30, &[(cams[0], w, h), (cams[1], w, h)]);
    spec.codec = codec;
    let tmp = tempfile::tempdir()?;
    let path = match std::env::var_os("KEEP") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => tmp.path().join("bench"),
    };

    // A moving gradient: cheap to make, not trivially compressible.
    let make = |e: usize, c: usize| -> Vec<RgbImage> {
        (0..frames)
            .map(|f| {
                RgbImage::from_fn(w, h, |x, y| {
                    let t = (f * 3 + e * 7 + c * 11) as u32;
                    image::Rgb([
                        ((x + t) % 256) as u8,
                        ((y + 2 * t) % 256) as u8,
                        ((x ^ y) % 256) as u8,
                    ])
                })
            })
            .collect()
    };
    let eps: Vec<Episode> = (0..episodes)
        .map(|e| Episode {
            index: e,
            instruction: "Pick up the cube.".into(),
            fps: 30.0,
            states: vec![vec![0.5; 6]; frames],
            actions: vec![vec![0.25; 6]; frames],
            cameras: cams
                .iter()
                .enumerate()
                .map(|(c, k)| (k.to_string(), make(e, c)))
                .collect::<BTreeMap<_, _>>(),
            success: None,
            true_progress: None,
            environment_states: Vec::new(),
        })
        .collect();

    let start = Instant::now();
    let mut writer = DatasetWriter::create(&path, spec)?;
    for ep in &eps {
        writer.add_episode(ep)?;
    }
    let written = writer.finish()?;
    let write_s = start.elapsed().as_secs_f64();
    let images = (episodes * frames * cams.len()) as f64;

    let start = Instant::now();
    let ds = LeRobotDataset::open(&path)?;
    let mut decoded = 0;
    for e in 0..ds.num_episodes() {
        decoded += ds.episode(e)?.cameras.values().map(Vec::len).sum::<usize>();
    }
    let read_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let probes = 10.min(frames);
    for i in 0..probes {
        ds.frame(episodes - 1, i * frames / probes)?;
    }
    let random_s = start.elapsed().as_secs_f64() / probes as f64;
    if std::env::var_os("PROBE").is_some() {
        for (e, f) in [(0, 0), (0, 45), (episodes - 1, 0), (episodes - 1, 80)] {
            let t = Instant::now();
            ds.frame(e, f)?;
            eprintln!("frame({e},{f}): {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let bytes: u64 = walk(&path)?;
    println!(
        "{episodes} episodes x {frames} frames x 2 cameras {w}x{h} ({:?})\n\
         write: {write_s:.2} s, {:.1} images/s ({:.2}x real time)\n\
         read:  {read_s:.2} s, {:.1} images/s decoded ({decoded} images)\n\
         random access frame (both cameras): {:.1} ms\n\
         dataset size: {:.2} MB",
        written.encoders,
        images / write_s,
        (episodes * frames) as f64 / 30.0 / write_s,
        images / read_s,
        random_s * 1e3,
        bytes as f64 / 1e6
    );
    Ok(())
}

fn walk(p: &std::path::Path) -> std::io::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(p)? {
        let e = e?;
        total += if e.file_type()?.is_dir() {
            walk(&e.path())?
        } else {
            e.metadata()?.len()
        };
    }
    Ok(total)
}
