//! Where and in which precision the model runs: `--device cpu|cuda[:N]|metal[:N]`, `--dtype auto|f32|bf16|f16`.
//!
//! GPUs need candle built with its `cuda` or `metal` backend: the `cuda` / `metal` cargo features of
//! toprl-rewards (and toprl-trainer), off by default. Asking for a GPU in a build without the feature is a
//! clear error, not a silent CPU fallback.

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

/// A compute device, parsed from `cpu`, `cuda`, `cuda:N`, `metal` or `metal:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
    Metal(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, index) = match s.split_once(':') {
            Some((k, i)) => (
                k,
                i.parse::<usize>().map_err(|_| {
                    format!("device {s:?}: {i:?} is not a device index (expected e.g. cuda:0)")
                })?,
            ),
            None => (s, 0),
        };
        match kind {
            "cpu" if !s.contains(':') => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(index)),
            "metal" => Ok(Self::Metal(index)),
            _ => Err(format!(
                "unknown device {s:?}: expected cpu, cuda, cuda:N, metal or metal:N"
            )),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
            Self::Metal(i) => write!(f, "metal:{i}"),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> Self {
        d.to_string()
    }
}

/// Which cargo features this build has, for error messages.
fn built_with(feature: &str) -> bool {
    match feature {
        "cuda" => cfg!(feature = "cuda"),
        "metal" => cfg!(feature = "metal"),
        _ => false,
    }
}

impl DeviceSpec {
    pub fn is_cpu(&self) -> bool {
        matches!(self, Self::Cpu)
    }

    /// Open the device. A GPU in a build without its cargo feature, or one that fails to open, is an error
    /// saying how to build with it.
    pub fn open(&self) -> Result<Device, String> {
        let (feature, result) = match self {
            Self::Cpu => return Ok(Device::Cpu),
            Self::Cuda(i) => ("cuda", Device::new_cuda(*i)),
            Self::Metal(i) => ("metal", Device::new_metal(*i)),
        };
        result.map_err(|e| {
            if built_with(feature) {
                format!("cannot open {self}: {e}")
            } else {
                format!(
                    "{self} requested but this binary was built without GPU support: rebuild with \
                     `cargo build --release --features {feature}` (see README, \"GPUs\")"
                )
            }
        })
    }
}

/// Precision of weights and activations. `auto` keeps a GPU model in the checkpoint's stored dtype (no
/// conversion) and computes in f32 on the CPU, where candle has no bf16/f16 matrix kernels (it widens to f32
/// on every product) and where parity with the f32 reference is tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "f32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f16" | "float16" => Ok(Self::F16),
            _ => Err(format!("unknown dtype {s:?}: expected auto, f32, bf16 or f16")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        })
    }
}

impl Precision {
    /// The dtype to run in on `device`, given the checkpoint's stored float dtype.
    pub fn resolve(&self, device: &DeviceSpec, stored: DType) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
            Self::Auto if device.is_cpu() => DType::F32,
            Self::Auto => match stored {
                DType::BF16 | DType::F16 | DType::F32 => stored,
                _ => DType::F32,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn devices_parse_and_print() {
        assert_eq!("cpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(3)));
        assert_eq!("metal".parse::<DeviceSpec>(), Ok(DeviceSpec::Metal(0)));
        assert_eq!(DeviceSpec::Cuda(1).to_string(), "cuda:1");
        for bad in ["gpu", "cuda:x", "cpu:0", ""] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_gpu_without_its_feature_says_how_to_build() {
        if !cfg!(feature = "cuda") {
            let err = DeviceSpec::Cuda(0).open().unwrap_err();
            assert!(err.contains("--features cuda"), "{err}");
        }
        if !cfg!(feature = "metal") {
            let err = DeviceSpec::Metal(0).open().unwrap_err();
            assert!(err.contains("--features metal"), "{err}");
        }
    }

    #[test]
    fn auto_precision_is_f32_on_cpu_and_the_stored_dtype_on_gpus() {
        assert_eq!(Precision::Auto.resolve(&DeviceSpec::Cpu, DType::BF16), DType::F32);
        assert_eq!(
            Precision::Auto.resolve(&DeviceSpec::Cuda(0), DType::BF16),
            DType::BF16
        );
        assert_eq!(Precision::Bf16.resolve(&DeviceSpec::Cpu, DType::F32), DType::BF16);
        assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
        assert!("fp8".parse::<Precision>().is_err());
    }

    #[test]
    fn the_tiny_fixture_is_stored_in_bf16() {
        let w =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/qwen3vl-tiny/model.safetensors");
        let reader = crate::qwen3_vl::weights::SafetensorsReader::open(&[w]).unwrap();
        assert_eq!(reader.stored_dtype(), DType::BF16);
    }
}
