//! SiLU and GELU (tanh approximation) for f32 CPU tensors, vectorisable and spread over threads.
//!
//! candle's CPU unary ops run one libm call per element on one thread; in TOPReward scoring the vision tower's
//! GELU and the decoder's SiLU then take a visible share of the time. Here both are written through one
//! branch-free `exp` (Cody-Waite range reduction and a degree-7 polynomial, within 2 ulp of the exact value),
//! which the compiler vectorises, on rayon's threads. In the numerically stable forms
//!
//! - `silu(x) = x / (1 + exp(-x))` (`torch.nn.functional.silu`),
//! - `gelu_tanh(x) = 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u))`, `u = sqrt(2/pi) (x + 0.044715 x^3)`
//!   (`gelu(approximate="tanh")`, Qwen3-VL's `gelu_pytorch_tanh`),
//!
//! they agree with transformers' functions to a few f32 ulp (tested below against f64). Other dtypes and
//! devices use candle's own ops.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `exp(x)` for f32 without libm: `2^n * p(r)` with `x = n ln 2 + r`, `|r| <= ln 2 / 2`. Inputs are clamped to
/// the finite range (`exp(-87.3)` is the smallest normal, `exp(88.7)` just below `f32::MAX`).
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in a part exact in f32 and the rest (Cody-Waite), so n * LN2_HI has no rounding error.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.7);
    // Round to nearest through the 1.5 * 2^23 trick (vectorises, unlike f32::round).
    const SHIFT: f32 = 12_582_912.0;
    let n = (x * LOG2E + SHIFT) - SHIFT;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Taylor coefficients 1/k! to degree 7: truncation below 1e-8 relative on |r| <= 0.347.
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // 2^n as two factors, so that n = 128 (x near the top of the range) does not overflow the exponent field.
    let n = n as i32;
    let half = n >> 1;
    let two_to = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    p * two_to(half) * two_to(n - half)
}

#[inline(always)]
fn silu_f32(x: f32) -> f32 {
    x / (1.0 + exp_f32(-x))
}

#[inline(always)]
fn gelu_tanh_f32(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
    x / (1.0 + exp_f32(-2.0 * u))
}

/// Elements per rayon task: large enough that scheduling is negligible, small enough to spread a layer.
const TASK: usize = 16 * 1024;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Silu,
    GeluTanh,
}

impl CustomOp1 for Kind {
    fn name(&self) -> &'static str {
        match self {
            Self::Silu => "toprl-silu-f32",
            Self::GeluTanh => "toprl-gelu-tanh-f32",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("{}: f32 only", self.name());
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{}: contiguous input only", self.name());
        };
        let src = &data[start..end];
        let mut out = vec![0f32; src.len()];
        // One monomorphised loop per function, so that it inlines and vectorises.
        fn map(src: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
            out.par_chunks_mut(TASK)
                .zip(src.par_chunks(TASK))
                .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, &x)| *o = f(x)));
        }
        match self {
            Self::Silu => map(src, &mut out, silu_f32),
            Self::GeluTanh => map(src, &mut out, gelu_tanh_f32),
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// Whether the fast path applies: f32 on the CPU (made contiguous if needed).
fn fast(xs: &Tensor) -> bool {
    xs.dtype() == DType::F32 && matches!(xs.device(), Device::Cpu)
}

/// `x * sigmoid(x)`.
pub fn silu(xs: &Tensor) -> Result<Tensor> {
    if fast(xs) {
        xs.contiguous()?.apply_op1_no_bwd(&Kind::Silu)
    } else {
        candle_nn::ops::silu(xs)
    }
}

/// GELU with the tanh approximation (`gelu_pytorch_tanh`).
pub fn gelu_tanh(xs: &Tensor) -> Result<Tensor> {
    if fast(xs) {
        xs.contiguous()?.apply_op1_no_bwd(&Kind::GeluTanh)
    } else {
        xs.gelu()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Distance in units in the last place between two f32 (same sign assumed near zero is fine here).
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    fn grid() -> Vec<f32> {
        // Dense near zero, then out to the clamped ends.
        (-4000..=4000)
            .map(|i| i as f32 / 100.0)
            .chain([-1e-30, 1e-30, -100.0, 100.0, 1e6, -1e6])
            .collect()
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64() {
        for x in (-8700..=8870).map(|i| i as f32 / 100.0) {
            let want = (x as f64).exp() as f32;
            assert!(ulps(exp_f32(x), want) <= 2, "exp({x}) = {} vs {want}", exp_f32(x));
        }
    }

    #[test]
    fn silu_and_gelu_match_f64_formulas() {
        for x in grid() {
            let xd = x as f64;
            let silu = (xd / (1.0 + (-xd).exp())) as f32;
            let u = (2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd * xd * xd);
            // 0.5 x (1 + tanh u) in its stable form: for x below about -9 the textbook form rounds to 0 even
            // in f64 (as transformers' f32 does); the two differ there by less than 1e-30.
            let gelu = (xd / (1.0 + (-2.0 * u).exp())) as f32;
            assert!((gelu as f64 - 0.5 * xd * (1.0 + u.tanh())).abs() < 1e-6 * xd.abs().max(1.0));
            let (s, g) = (silu_f32(x), gelu_tanh_f32(x));
            // A few ulp where the value is not tiny. Near zero (large negative x) f32 evaluation of the
            // argument alone moves the result by a few 1e-6 relative; transformers' own f32 formula is off by
            // up to an ulp of 1 there, so an absolute 1e-7 is the fair bound.
            let close = |got: f32, want: f32| ulps(got, want) <= 8 || (got - want).abs() <= 1e-7;
            assert!(close(s, silu), "silu({x}) = {s} vs {silu}");
            assert!(close(g, gelu), "gelu({x}) = {g} vs {gelu}");
        }
    }

    #[test]
    fn tensor_ops_equal_candle_ops_and_keep_shape() {
        let v: Vec<f32> = grid().into_iter().filter(|x| x.abs() < 50.0).collect();
        let n = v.len();
        let xs = Tensor::from_vec(v, (1, n), &Device::Cpu).unwrap();
        // A strided view takes the contiguous copy first.
        let xs = Tensor::cat(&[&xs, &xs], 0).unwrap().t().unwrap();
        for (ours, theirs) in [
            (silu(&xs).unwrap(), candle_nn::ops::silu(&xs).unwrap()),
            (gelu_tanh(&xs).unwrap(), xs.gelu().unwrap()),
        ] {
            assert_eq!(ours.dims(), &[n, 2]);
            let d = (ours - theirs)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-5, "{d}");
        }
    }
}
