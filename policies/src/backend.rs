//! Choosing where policies run: a Burn backend (`flex`, pure Rust on the CPU, or `tch`, LibTorch) and a
//! device of that backend (`cpu`, `cuda:N`, `mps`). Every binary and the experiment config go through
//! [`device`], so the rules (and the error messages) are the same everywhere.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{PolicyError, Result};
use burn::tensor::Device;

/// How to build toprl with the LibTorch backend; quoted by every error about a missing `tch` feature.
pub const TCH_BUILD_HINT: &str = "rebuild with the LibTorch backend: `LIBTORCH_USE_PYTORCH=1 \
     LIBTORCH_BYPASS_VERSION_CHECK=1 PATH=$PWD/.venv-lerobot/bin:$PATH cargo build --release \
     --features toprl-trainer/tch`, and run it with torch/lib on LD_LIBRARY_PATH (README, \"LibTorch and GPUs\")";

/// The Burn backend that runs the policy networks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Burn's pure-Rust CPU backend (`burn-flex`); always built.
    #[default]
    Flex,
    /// LibTorch through `burn-tch`; needs the `tch` cargo feature and a PyTorch install.
    Tch,
}

impl Backend {
    pub const NAMES: [&'static str; 2] = ["flex", "tch"];

    /// Whether this binary was built with the backend.
    pub fn is_built(self) -> bool {
        match self {
            Backend::Flex => true,
            Backend::Tch => cfg!(feature = "tch"),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Flex => "flex",
            Backend::Tch => "tch",
        })
    }
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "flex" => Ok(Backend::Flex),
            "tch" => Ok(Backend::Tch),
            other => Err(format!("unknown backend `{other}`, expected \"flex\" or \"tch\"")),
        }
    }
}

/// A device of the chosen backend, written `cpu`, `cuda:N` or `mps`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceKind {
    #[default]
    Cpu,
    /// The CUDA device with this index (as `torch.device("cuda:N")`).
    Cuda(usize),
    /// Apple's Metal Performance Shaders.
    Mps,
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceKind::Cpu => f.write_str("cpu"),
            DeviceKind::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceKind::Mps => f.write_str("mps"),
        }
    }
}

impl FromStr for DeviceKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let expected = "expected \"cpu\", \"cuda:N\" (N the device index, e.g. \"cuda:0\") or \"mps\"";
        match s {
            "cpu" => Ok(DeviceKind::Cpu),
            "mps" => Ok(DeviceKind::Mps),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(index)) => Ok(DeviceKind::Cuda(index)),
                _ => Err(format!("unknown device `{s}`, {expected}")),
            },
        }
    }
}

impl Serialize for DeviceKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The Burn device for `backend` on `device`, or an error saying what to change: `flex` runs on the CPU
/// only; `tch` needs this crate's `tch` feature, and a CUDA (or MPS) device needs a LibTorch that sees
/// one. Checking here turns LibTorch's panics on a missing GPU into errors.
pub fn device(backend: Backend, device: DeviceKind) -> Result<Device> {
    match (backend, device) {
        (Backend::Flex, DeviceKind::Cpu) => Ok(Device::flex()),
        (Backend::Flex, other) => Err(PolicyError::Invalid {
            field: "device",
            reason: format!(
                "`{other}` needs backend \"tch\" (LibTorch); backend \"flex\" runs on \"cpu\" only"
            ),
        }),
        (Backend::Tch, kind) => libtorch(kind),
    }
}

#[cfg(feature = "tch")]
#[allow(deprecated)] // burn-tch is deprecated in Burn 0.22 but is the LibTorch backend this crate offers
fn libtorch(kind: DeviceKind) -> Result<Device> {
    match kind {
        DeviceKind::Cpu => Ok(Device::libtorch()),
        DeviceKind::Cuda(index) => {
            let loaded = load_libtorch_cuda();
            let count = if tch::Cuda::is_available() {
                tch::Cuda::device_count().max(0) as usize
            } else {
                0
            };
            if index >= count {
                let library = match loaded {
                    Ok(()) => "libtorch_cuda.so is loaded, so the GPU or its NVIDIA driver is missing".into(),
                    Err(why) => format!(
                        "{why} (a CPU-only PyTorch, or its torch/lib folder is not on LD_LIBRARY_PATH)"
                    ),
                };
                return Err(PolicyError::Invalid {
                    field: "device",
                    reason: format!(
                        "`cuda:{index}` requested but LibTorch sees {count} CUDA device(s): {library}; \
                         see README \"LibTorch and GPUs\", or use device \"cpu\""
                    ),
                });
            }
            Ok(Device::libtorch_cuda(index))
        }
        DeviceKind::Mps => {
            if !tch::utils::has_mps() {
                return Err(PolicyError::Invalid {
                    field: "device",
                    reason: "`mps` requested but this LibTorch has no Metal (MPS) device; MPS needs \
                             macOS on Apple silicon"
                        .into(),
                });
            }
            Ok(Device::libtorch_mps())
        }
    }
}

/// Load LibTorch's CUDA library into the process. Rust links with `--as-needed`, so a binary that calls
/// no symbol of `libtorch_cuda.so` does not load it, and LibTorch then has no CUDA kernels ("Could not
/// run ... with arguments from the 'CUDA' backend"); PyTorch's Python package loads it at import, and
/// this does the same. Loading it twice is harmless (the loader counts references).
#[cfg(all(feature = "tch", target_os = "linux"))]
fn load_libtorch_cuda() -> std::result::Result<(), String> {
    let name = c"libtorch_cuda.so";
    // SAFETY: `name` is a NUL-terminated string; the handle is deliberately never closed, so the
    // library (whose static constructors register LibTorch's CUDA kernels) stays loaded.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns NULL or a NUL-terminated message valid until the next dl* call.
        let message = unsafe {
            let e = libc::dlerror();
            if e.is_null() {
                "unknown error".to_string()
            } else {
                std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
            }
        };
        return Err(format!("libtorch_cuda.so could not be loaded: {message}"));
    }
    Ok(())
}

/// Elsewhere (Windows, macOS) LibTorch is used as linked.
#[cfg(all(feature = "tch", not(target_os = "linux")))]
fn load_libtorch_cuda() -> std::result::Result<(), String> {
    Ok(())
}

#[cfg(not(feature = "tch"))]
fn libtorch(_kind: DeviceKind) -> Result<Device> {
    Err(PolicyError::Invalid {
        field: "backend",
        reason: format!("\"tch\" is not built into this binary; {TCH_BUILD_HINT}"),
    })
}

/// Splittable 64-bit mixer (SplitMix64's finaliser); used to derive per-step seeds.
pub(crate) fn mix_seed(seed: u64, salt: u64) -> u64 {
    let mut z = seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_devices() {
        for text in ["cpu", "cuda:0", "cuda:3", "mps"] {
            let kind: DeviceKind = text.parse().unwrap();
            assert_eq!(kind.to_string(), text);
        }
        for bad in ["gpu", "cuda", "cuda:", "cuda:-1", "cuda:x", "CPU", ""] {
            let err = bad.parse::<DeviceKind>().unwrap_err();
            assert!(err.contains("cuda:N"), "{bad}: {err}");
        }
        assert_eq!("tch".parse::<Backend>(), Ok(Backend::Tch));
        assert!(
            "torch"
                .parse::<Backend>()
                .unwrap_err()
                .contains("\"flex\" or \"tch\"")
        );
    }

    #[test]
    fn flex_is_cpu_only() {
        assert!(device(Backend::Flex, DeviceKind::Cpu).is_ok());
        let err = device(Backend::Flex, DeviceKind::Cuda(0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("backend \"tch\""), "{err}");
    }

    #[cfg(not(feature = "tch"))]
    #[test]
    fn tch_without_the_feature_says_how_to_build_it() {
        let err = device(Backend::Tch, DeviceKind::Cpu).unwrap_err().to_string();
        assert!(err.contains("--features toprl-trainer/tch"), "{err}");
    }

    #[test]
    fn step_seeds_differ() {
        let a: Vec<u64> = (0..100).map(|s| mix_seed(7, s)).collect();
        let mut b = a.clone();
        b.sort();
        b.dedup();
        assert_eq!(a.len(), b.len());
        assert_ne!(mix_seed(7, 1), mix_seed(8, 1));
    }
}
